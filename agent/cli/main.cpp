// rstwatch: explains TCP resets caused by stale keepalive connections.
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "stream_client.h"

#ifndef RSTWATCH_VERSION
#define RSTWATCH_VERSION "dev"
#endif

namespace {

// %j: the log message as a JSON string (escaped), for --log-format json.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        std::string text =
            nlohmann::json(std::string(msg.payload.data(), msg.payload.size()))
                .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        dest.append(text.data(), text.data() + text.size());
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonMessageFlag>(); }
};

void setup_logging(const std::string& level, const std::string& format) {
    auto logger = spdlog::stderr_color_mt("rstwatch");
    if (format == "json") {
        auto formatter = std::make_unique<spdlog::pattern_formatter>();
        formatter->add_flag<JsonMessageFlag>('j').set_pattern(
            R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":%j})");
        logger->set_formatter(std::move(formatter));
    } else {
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
    }
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
    spdlog::flush_on(spdlog::level::trace);
    rstwatch::route_libbpf_logs();
}

// Accepts "tp_btf", "fentry", "kprobe" or "auto" for --write-hook.
std::string validate_write_hook(const std::string& value) {
    if (value == "auto" || rstwatch::parse_write_mode(value)) return {};
    return "must be auto, tp_btf, fentry or kprobe";
}

// --ring-buffer-size: the kernel wants a power-of-two multiple of the page size.
std::string validate_ring_buffer_size(const std::string& value) {
    uint64_t bytes = 0;
    try {
        size_t used = 0;
        bytes = std::stoull(value, &used);
        if (used != value.size()) return "must be a number of bytes";
    } catch (const std::exception&) {
        return "must be a number of bytes";
    }
    if (bytes < 4096 || bytes > (1ULL << 30) || (bytes & (bytes - 1)) != 0)
        return "must be a power of two from 4096 to 1073741824 bytes";
    return {};
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"rstwatch: see and explain TCP resets from stale keepalive connections"};
    app.require_subcommand(1);
    app.fallthrough();
    app.set_version_flag("--version", RSTWATCH_VERSION);
    std::string log_level = "info";
    std::string log_format = "text";
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.add_option("--log-format", log_format, "text or json (one object per line)")
        ->check(CLI::IsMember({"text", "json"}));

    rstwatch::TraceOptions trace;
    std::string output = "table";
    std::string write_hook = "auto";
    std::vector<std::string> causes;
    CLI::App* trace_cmd = app.add_subcommand("trace", "load the BPF programs and print incidents live");
    trace_cmd->add_option("-o,--output", output, "table or json (one object per line)")
        ->check(CLI::IsMember({"table", "json"}));
    trace_cmd->add_option("--idle-threshold", trace.loader.idle_threshold_s,
                          "seconds of idleness after which a write is watched (default 1)")
        ->check(CLI::Range(0.01, 86400.0));
    trace_cmd->add_option("--port", trace.port, "only incidents with this port on either side")
        ->check(CLI::Range(1, 65535));
    trace_cmd->add_option("--pid", trace.pid, "only incidents of this writing process");
    trace_cmd->add_option("--comm", trace.comm, "only incidents of this process name");
    trace_cmd->add_option("--cause", causes, "only these causes (comma-separated)")
        ->delimiter(',')
        ->check([](const std::string& value) -> std::string {
            return rstwatch::parse_cause(value)
                       ? std::string()
                       : "unknown cause '" + value +
                             "' (write_after_fin, idle_close_race, reset_other, abort_on_close, data_after_close)";
        });
    trace_cmd->add_option("--duration", trace.duration_s, "stop after this many seconds")
        ->check(CLI::PositiveNumber);
    trace_cmd->add_option("--write-hook", write_hook, "auto, tp_btf, fentry or kprobe")
        ->check(validate_write_hook);
    auto* from_opt = trace_cmd->add_option("--from", trace.from_url,
                                           "follow a running agent's stream (http[s]://HOST:PORT, or node: this node's agent, "
                                           "$RSTWATCH_AGENT_URL or http://127.0.0.1:9740) instead of loading BPF");
    trace_cmd->add_option("--namespace", trace.namespace_, "with --from: only incidents with an end in this namespace")
        ->needs(from_opt);
    trace_cmd->add_option("--pod", trace.pod, "with --from: only incidents with this pod at either end")
        ->needs(from_opt);
    trace_cmd->add_option("--token-file", trace.token_file,
                          "with --from: bearer token file for a protected agent (default $RSTWATCH_TOKEN_FILE)")
        ->needs(from_opt);
    trace_cmd->add_option("--ca-file", trace.ca_file, "with --from https://...: CA bundle that signed the agent's certificate (default $RSTWATCH_CA_FILE)")
        ->needs(from_opt);

    rstwatch::AgentOptions agent;
    std::string agent_write_hook = "auto";
    std::string pair_labels = "pod";
    std::string kube_mode = "auto";
    double series_ttl_s = 300;
    CLI::App* agent_cmd = app.add_subcommand("agent", "run on the node: metrics per pod pair, incident stream");
    agent_cmd->add_option("--listen", agent.listen, std::string("ADDR:PORT for /metrics, /healthz, /readyz, /incidents (default ") +
                                                        rstwatch::kDefaultListen +
                                                        "; not loopback: needs --auth-token-file, "
                                                        "--basic-auth-file or --allow-unauthenticated)");
    agent_cmd->add_option("--pod-map", agent.pod_map_path, "YAML file naming endpoints (SIGHUP reloads it)")
        ->check(CLI::ExistingFile);
    agent_cmd->add_option("--kube", kube_mode, "auto (in-cluster when KUBERNETES_SERVICE_HOST is set, or --kube-api) or off")
        ->check(CLI::IsMember({"auto", "off"}));
    agent_cmd->add_option("--kube-api", agent.kube_api, "Kubernetes API URL, for use outside the cluster");
    agent_cmd->add_option("--kube-token-file", agent.kube_token_file, "bearer token file for --kube-api");
    agent_cmd->add_option("--kube-ca-file", agent.kube_ca_file, "CA bundle for --kube-api");
    agent_cmd->add_option("--series-ttl", series_ttl_s, "seconds a gone pod's series are kept (default 300)")
        ->check(CLI::Range(1.0, 86400.0 * 7));
    agent_cmd->add_option("--pair-labels", pair_labels, "pod or workload (drops pod labels on large clusters)")
        ->check(CLI::IsMember({"pod", "workload"}));
    agent_cmd->add_option("--idle-threshold", agent.loader.idle_threshold_s,
                          "seconds of idleness after which a write is watched (default 1)")
        ->check(CLI::Range(0.01, 86400.0));
    agent_cmd->add_option("--max-connections", agent.loader.max_connections,
                          "connections tracked in the kernel (LRU, default 131072)")
        ->check(CLI::Range(1024U, 16U << 20));
    agent_cmd->add_option("--ring-buffer-size", agent.loader.ringbuf_bytes,
                          "bytes of the kernel-to-agent ring buffer: a power of two, 4096 to 1 GiB (default 4 MiB, "
                          "~20k records); records that do not fit are counted as lost")
        ->check(validate_ring_buffer_size);
    agent_cmd->add_option("--write-hook", agent_write_hook, "auto, tp_btf, fentry or kprobe")->check(validate_write_hook);
    agent_cmd->add_option("--auth-token-file", agent.auth_token_file,
                          "require Authorization: Bearer TOKEN (a token per line; re-read when it changes) on /metrics, "
                          "/incidents, /diagnose");
    agent_cmd->add_option("--basic-auth-file", agent.basic_auth_file,
                          "require basic auth, USER:PASSWORD per line (re-read when it changes), on the same endpoints");
    auto* tls_cert = agent_cmd->add_option("--tls-cert", agent.tls_cert_file, "serve https: PEM certificate (chain) file");
    auto* tls_key = agent_cmd->add_option("--tls-key", agent.tls_key_file, "serve https: PEM private key file");
    tls_cert->needs(tls_key);
    tls_key->needs(tls_cert);
    agent_cmd->add_flag("--allow-unauthenticated", agent.allow_unauthenticated,
                        "serve /metrics and /incidents without credentials on a non-loopback --listen address");

    rstwatch::DiagnoseOptions diagnose;
    std::string diagnose_output = "table";
    CLI::App* diagnose_cmd = app.add_subcommand(
        "diagnose", "inferred idle timeouts per pair, keepalive mismatches and the setting to change");
    auto* diagnose_from = diagnose_cmd->add_option("--from", diagnose.from_url, "a running agent (http[s]://HOST:PORT, or node: this node's agent)");
    auto* diagnose_duration = diagnose_cmd->add_option("--duration", diagnose.duration_s,
                                                       "without --from: watch this node for this many seconds")
                                  ->check(CLI::PositiveNumber);
    diagnose_from->excludes(diagnose_duration);
    diagnose_cmd->add_option("-o,--output", diagnose_output, "table or json")->check(CLI::IsMember({"table", "json"}));
    diagnose_cmd->add_option("--token-file", diagnose.token_file,
                             "with --from: bearer token file for a protected agent (default $RSTWATCH_TOKEN_FILE)")
        ->needs(diagnose_from);
    diagnose_cmd->add_option("--ca-file", diagnose.ca_file,
                             "with --from https://...: CA bundle that signed the agent's certificate (default $RSTWATCH_CA_FILE)")
        ->needs(diagnose_from);
    diagnose_cmd->add_option("--level", diagnose.level, "workload (default) or pod")
        ->check(CLI::IsMember({"workload", "pod"}));
    diagnose_cmd->add_option("--pod-map", diagnose.pod_map_path, "without --from: YAML file naming endpoints")
        ->check(CLI::ExistingFile)
        ->excludes(diagnose_from);
    diagnose_cmd->add_option("--idle-threshold", diagnose.loader.idle_threshold_s,
                             "without --from: seconds of idleness after which a write is watched (default 1)")
        ->check(CLI::Range(0.01, 86400.0))
        ->excludes(diagnose_from);

    rstwatch::StatusOptions status;
    std::string status_output = "table";
    CLI::App* status_cmd = app.add_subcommand(
        "status", "one agent's readiness, write hook, lost records and incident count (from its /readyz and /metrics)");
    status_cmd->add_option("--from", status.from_url,
                           "the agent (default node: this node's, $RSTWATCH_AGENT_URL or http://127.0.0.1:9740)");
    status_cmd->add_option("--token-file", status.token_file,
                           "bearer token file for a protected agent (default $RSTWATCH_TOKEN_FILE)");
    status_cmd->add_option("--ca-file", status.ca_file, "with --from https://...: CA bundle that signed the agent's certificate (default $RSTWATCH_CA_FILE)");
    status_cmd->add_option("-o,--output", status_output, "table or json")->check(CLI::IsMember({"table", "json"}));
    bool status_no_headers = false;
    status_cmd->add_flag("--no-headers", status_no_headers, "table without its header row (for scripts)");

    rstwatch::LoaderOptions check_loader;
    std::string check_write_hook = "auto";
    CLI::App* check_cmd = app.add_subcommand("check", "report which hooks this kernel supports; exit 0 if rstwatch can run");
    check_cmd->add_option("--write-hook", check_write_hook, "auto, tp_btf, fentry or kprobe")
        ->check(validate_write_hook);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
        std::fprintf(stderr, "rstwatch: %s\n", e.what());
        return rstwatch::kExitUsage;
    }

    setup_logging(log_level, log_format);
    if (trace.from_url) trace.from_url = rstwatch::resolve_agent_url(*trace.from_url);
    if (diagnose.from_url) diagnose.from_url = rstwatch::resolve_agent_url(*diagnose.from_url);
    status.from_url = rstwatch::resolve_agent_url(status.from_url);
    if (*agent_cmd) {
        agent.loader.write_mode = rstwatch::parse_write_mode(agent_write_hook);
        agent.kube_enabled = kube_mode != "off";
        agent.series_ttl = std::chrono::seconds(static_cast<int64_t>(series_ttl_s));
        agent.pair_labels = pair_labels == "workload" ? rstwatch::PairLabelMode::workload : rstwatch::PairLabelMode::pod;
        return rstwatch::run_agent(agent);
    }
    if (*diagnose_cmd) {
        if (!diagnose.from_url && !diagnose.duration_s) {
            std::fprintf(stderr, "rstwatch: diagnose needs --from URL (a running agent) or --duration SECONDS\n");
            return rstwatch::kExitUsage;
        }
        diagnose.json = diagnose_output == "json";
        return rstwatch::run_diagnose(diagnose);
    }
    if (*status_cmd) {
        status.json = status_output == "json";
        status.headers = !status_no_headers;
        return rstwatch::run_status(status);
    }
    if (*trace_cmd) {
        trace.json = output == "json";
        trace.loader.write_mode = rstwatch::parse_write_mode(write_hook);
        for (const std::string& cause : causes) trace.causes.push_back(*rstwatch::parse_cause(cause));
        return rstwatch::run_trace(trace);
    }
    check_loader.write_mode = rstwatch::parse_write_mode(check_write_hook);
    return rstwatch::run_check(check_loader);
}
