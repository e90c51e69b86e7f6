// `rstwatch diagnose`: inferred idle timeouts per pair, the keepalive verdict and the fix,
// from a running agent (--from), by watching this node for --duration, or merged from several
// agents' diagnoses (--merge: each agent sees only its own node's clients).
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "attribution.h"
#include "capture_loop.h"
#include "clock.h"
#include "commands.h"
#include "usage.h"
#include "flags.h"
#include "correlator.h"
#include "diagnosis.h"
#include "pair.h"
#include "signals.h"
#include "stream_client.h"
#include "timeout_inference.h"

namespace rstwatch {
namespace {

// GET URL/diagnose?level=LEVEL from a running agent.
std::optional<std::string> fetch_diagnosis(const std::string& url, const std::string& level, const ClientAuth& auth,
                                           std::string* error) {
    auto response = get_from_agent(url, "/diagnose?level=" + level, auth, std::chrono::seconds(30), error);
    if (!response) return std::nullopt;
    if (response->status != 200) {
        *error = fmt::format("{}: HTTP {}{}", response->url, response->status,
                             response->status == 401 ? " (the agent needs credentials: --token-file FILE)" : "");
        return std::nullopt;
    }
    return std::move(response->body);
}

int write_out(const std::string& text) {
    fwrite(text.data(), 1, text.size(), stdout);
    fflush(stdout);
    return kExitOk;
}

PairFilter filter_of(const DiagnoseOptions& options) { return {options.namespace_, options.workload}; }

int print(std::vector<PairVerdict> verdicts, const DiagnoseOptions& options) {
    filter_verdicts(verdicts, filter_of(options));
    return write_out(options.json ? diagnosis_to_json(verdicts, options.level).dump() + "\n" : render_diagnosis(verdicts));
}

// The whole of PATH ("-": stdin), or false with errno's text in *error.
bool read_all(const std::string& path, std::string* text, std::string* error) {
    FILE* file = path == "-" ? stdin : std::fopen(path.c_str(), "rb");
    if (!file) {
        *error = std::strerror(errno);
        return false;
    }
    char buffer[65536];
    while (size_t n = std::fread(buffer, 1, sizeof buffer, file)) text->append(buffer, n);
    const bool ok = !std::ferror(file);
    if (!ok) *error = std::strerror(errno);
    if (file != stdin) std::fclose(file);
    return ok;
}

// --merge: the agents' diagnoses, each filtered, merged into one report. The input is what the
// user (or the kubectl plugin) handed over, so any flaw in it is a usage error naming --merge.
int run_merge(const DiagnoseOptions& options) {
    const std::string& path = *options.merge_file;
    const std::string name = path == "-" ? "stdin" : path;
    std::string text, error;
    if (!read_all(path, &text, &error)) return usage_error("--merge", name + ": " + error);
    nlohmann::json document;
    try {
        document = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        return usage_error("--merge", fmt::format("{}: not a JSON document (syntax error at byte {})", name, e.byte));
    }
    auto nodes = node_diagnoses_from_json(document, &error);
    if (!nodes) return usage_error("--merge", name + ": " + error);
    for (NodeDiagnosis& node : *nodes) {
        if (node.answered && node.level != options.level)
            return usage_error("--merge", fmt::format("{}: node {}'s diagnosis is at {} level, not {} (--level)", name,
                                                      node.node, node.level, options.level));
        filter_verdicts(node.verdicts, filter_of(options));
    }
    const auto merged = merge_verdicts(*nodes);
    return write_out(options.json ? merged_diagnosis_to_json(merged, *nodes, options.level).dump() + "\n"
                                  : render_merged_diagnosis(merged, *nodes));
}

CLI::Validator not_empty(const std::string& what) {
    return CLI::Validator([what](std::string& value) { return value.empty() ? "needs " + what : std::string(); }, "");
}

}  // namespace

int run_diagnose(const DiagnoseOptions& options) {
    if (options.merge_file) return run_merge(options);
    if (options.from_url) {
        std::string error;
        ClientAuth auth;
        if (!load_client_auth(token_file_or_env(options.token_file), ca_file_or_env(options.ca_file), &auth, &error))
            return usage_error(options.token_file ? "--token-file" : "$RSTWATCH_TOKEN_FILE", error);
        auto body = fetch_diagnosis(*options.from_url, options.level, auth, &error);
        if (!body) return command_failed("cannot read the diagnosis: " + error);
        nlohmann::json document = nlohmann::json::parse(*body, nullptr, false);
        auto verdicts = diagnosis_from_json(document, &error);
        if (!verdicts) return command_failed(*options.from_url + ": " + error);
        return print(std::move(*verdicts), options);
    }

    // Standalone: watch this node for --duration.
    Attributor attributor;
    if (options.pod_map_path) {
        std::string error;
        auto map = PodMap::load_file(*options.pod_map_path, &error);
        if (!map) return usage_error("--pod-map", error);
        attributor.set_pod_map(std::make_shared<const PodMap>(std::move(*map)));
    }
    install_signal_handlers(SignalUse::command);

    const KernelFeatures features = probe_kernel_features();
    Correlator correlator(correlator_options_for(options.loader, features));
    TimeoutInference inference;
    const bool workload_level = options.level == "workload";
    auto pair_of = [&](const Endpoint& client, const Endpoint& server) {
        PairKey pair = name_pair(attributor, client, server);
        return workload_level ? workload_pair(pair) : pair;
    };
    CaptureHooks hooks;
    hooks.on_output = [&](CorrelatorOutput& produced) {
        for (const Incident& incident : produced.incidents)
            inference.incident(pair_of(incident.client, incident.server), incident);
        for (const Observation& observation : produced.observations)
            inference.observe(pair_of(observation.client, observation.server), observation);
    };
    CaptureLoopOptions loop_options;
    loop_options.deadline_ns = monotonic_ns() + static_cast<int64_t>(*options.duration_s * 1e9);
    CaptureLoop loop(correlator, std::move(hooks), std::move(loop_options));
    std::string error;
    auto session = BpfSession::open(options.loader, features, loop.sink(), &error);
    if (!session) return command_failed("cannot attach: " + error);
    spdlog::info("watching this node for {:.0f} s (write hook {})", *options.duration_s,
                 write_mode_name(session->write_mode()));
    const CaptureResult captured = loop.run(*session);
    session.reset();
    if (!captured.ok) return command_failed(captured.error);
    spdlog::info("watched: {} records, {} incidents, {} records lost", correlator.stats().records,
                 correlator.stats().incidents, captured.lost_records);
    return print(inference.verdicts(), options);
}

CommandRunner define_diagnose(CLI::App& cmd) {
    struct Flags {
        DiagnoseOptions diagnose;
        std::string output = "table";
    };
    auto flags = std::make_shared<Flags>();
    DiagnoseOptions& diagnose = flags->diagnose;
    auto* from = add_from_flag(cmd, diagnose.from_url, "a running agent (http[s]://HOST:PORT, or node: this node's agent)");
    auto* duration = cmd.add_option("--duration", diagnose.duration_s, "without --from: watch this node for this many seconds")
                         ->check(positive_seconds(30 * 86400.0));
    from->excludes(duration);
    auto* merge = cmd.add_option("--merge", diagnose.merge_file,
                                 "several agents' diagnoses as one report, from a JSON file (- for stdin) as kubectl "
                                 "rstwatch diagnose sends it: {\"nodes\": [{\"node\", \"agent\", \"ready\", "
                                 "\"diagnosis\" (diagnose -o json) or \"error\"}]}")
                      ->check(CLI::Validator(
                          [](std::string& path) { return path == "-" ? std::string() : readable_file()(path); }, "FILE|-"));
    merge->excludes(from);
    merge->excludes(duration);
    add_output_flag(cmd, flags->output, {"table", "json"}, "table or json");
    add_agent_credential_flags(cmd, diagnose.token_file, diagnose.ca_file, from);
    cmd.add_option("--level", diagnose.level, "name pairs by workload or by pod")->check(CLI::IsMember({"workload", "pod"}));
    cmd.add_option("-n,--namespace", diagnose.namespace_, "only pairs with an end in this namespace")
        ->check(not_empty("a namespace"));
    cmd.add_option("--workload", diagnose.workload, "only pairs with this workload at an end (with -n: in that namespace)")
        ->check(not_empty("a workload name"));
    cmd.add_option("--pod-map", diagnose.pod_map_path, "with --duration: YAML file naming endpoints")
        ->check(readable_file())
        ->excludes(from)
        ->excludes(merge);
    add_idle_threshold_flag(cmd, diagnose.loader.idle_threshold_s, "with --duration: ")->excludes(from)->excludes(merge);
    return [flags]() -> int {
        DiagnoseOptions& diagnose = flags->diagnose;
        if (!diagnose.from_url && !diagnose.duration_s && !diagnose.merge_file)
            return usage_error("--from", "diagnose needs --from URL (a running agent), --duration SECONDS (watch this "
                                         "node) or --merge FILE (several agents' diagnoses)");
        if (diagnose.from_url) diagnose.from_url = resolve_agent_url(*diagnose.from_url);
        diagnose.json = flags->output == "json";
        return run_diagnose(diagnose);
    };
}

}  // namespace rstwatch
