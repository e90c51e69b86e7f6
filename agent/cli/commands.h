// Subcommands of the rstwatch binary.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <chrono>

#include "default_listen.h"
#include "incident.h"
#include "loader.h"
#include "pair.h"

namespace CLI {
class App;
}

namespace rstwatch {

// A command adds its flags to its subcommand and returns what runs it once they are parsed
// (main.cpp's table of commands).
using CommandRunner = std::function<int()>;
CommandRunner define_trace(CLI::App& cmd);
CommandRunner define_agent(CLI::App& cmd);
CommandRunner define_diagnose(CLI::App& cmd);
CommandRunner define_status(CLI::App& cmd);
CommandRunner define_check(CLI::App& cmd);

// How incidents are printed: -o table|wide|json|yaml.
enum class OutputFormat { table, wide, json, yaml };

struct TraceOptions {
    LoaderOptions loader;
    OutputFormat output = OutputFormat::table;
    std::optional<double> duration_s;
    std::optional<uint16_t> port;
    std::optional<uint32_t> pid;
    std::optional<std::string> comm;
    std::vector<Cause> causes;
    // Follow a running agent's stream instead of loading BPF (`--from URL`).
    std::optional<std::string> from_url;
    std::optional<std::string> namespace_;  // only with --from: an end in this namespace
    std::optional<std::string> pod;         // only with --from: this pod (in namespace_ if set) at an end
    bool workload_level = false;            // only with --from: tables name workloads, not pods
    // Only with --from: first replay the agent's history (since a time or duration, the last N).
    std::optional<std::string> since;
    std::optional<uint64_t> last;
    // With --from: bearer token file (else $RSTWATCH_TOKEN_FILE) and CA bundle for https.
    std::optional<std::string> token_file;
    std::optional<std::string> ca_file;
};


struct AgentOptions {
    LoaderOptions loader;
    std::string listen = kDefaultListen;
    std::optional<std::string> pod_map_path;
    // Kubernetes: --kube-api (out of cluster) or the in-cluster service account when
    // KUBERNETES_SERVICE_HOST is set; --kube=off disables it.
    bool kube_enabled = true;
    std::string kube_api;
    std::string kube_token_file;
    std::string kube_ca_file;
    // --kube-events: Kubernetes Events (events.k8s.io/v1) on the client pods of mismatched
    // pairs and of stale-keepalive resets (agent/events). Needs Kubernetes attribution.
    bool kube_events = false;
    // --node-name: this node, the Events' reportingInstance (default $NODE_NAME, else the host name).
    std::string node_name;
    std::chrono::seconds series_ttl{300};
    PairLabelMode pair_labels = PairLabelMode::pod;
    // How long an incident waits for its pod to become known before it is labelled anyway.
    std::chrono::milliseconds attribution_hold{2000};
    // Protection of /metrics, /incidents and /diagnose (http_server.h). A listen address
    // that is not loopback needs one of the two files, or allow_unauthenticated.
    std::string auth_token_file;
    std::string basic_auth_file;
    std::string tls_cert_file;
    std::string tls_key_file;
    bool allow_unauthenticated = false;
};

int run_agent(const AgentOptions& options);

struct DiagnoseOptions {
    std::optional<std::string> from_url;  // a running agent; else watch this node
    std::optional<double> duration_s;     // standalone: how long to watch
    // Several agents' diagnoses as one report: {"nodes": [...]} (diagnosis.h) from this file, "-"
    // for stdin (what `kubectl rstwatch diagnose` pipes in).
    std::optional<std::string> merge_file;
    // Every mode: only pairs with an end in this namespace / of this workload (PairFilter).
    std::optional<std::string> namespace_;
    std::optional<std::string> workload;
    bool json = false;
    std::string level = "workload";       // "workload" or "pod"
    LoaderOptions loader;
    std::optional<std::string> pod_map_path;
    // With --from: bearer token file (else $RSTWATCH_TOKEN_FILE) and CA bundle for https.
    std::optional<std::string> token_file;
    std::optional<std::string> ca_file;
};

int run_diagnose(const DiagnoseOptions& options);

struct StatusOptions {
    std::string from_url = "node";  // this node's agent (resolve_agent_url)
    // Bearer token file (else $RSTWATCH_TOKEN_FILE) and CA bundle for https.
    std::optional<std::string> token_file;
    std::optional<std::string> ca_file;
    bool json = false;
    bool headers = true;
};

int run_status(const StatusOptions& options);

int run_trace(const TraceOptions& options);
int run_check(const LoaderOptions& options);

// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // rstwatch cannot run here / runtime failure
inline constexpr int kExitUsage = 2;    // bad flags, values or configuration

}  // namespace rstwatch
