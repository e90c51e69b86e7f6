// `rstwatch diagnose`: inferred idle timeouts per pair, the keepalive verdict and the fix,
// from a running agent (--from) or by watching this node for --duration.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <cstdio>
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

int print(const std::vector<PairVerdict>& verdicts, const DiagnoseOptions& options) {
    std::string text = options.json ? diagnosis_to_json(verdicts, options.level).dump() + "\n"
                                    : render_diagnosis(verdicts);
    fwrite(text.data(), 1, text.size(), stdout);
    fflush(stdout);
    return kExitOk;
}

}  // namespace

int run_diagnose(const DiagnoseOptions& options) {
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
        return print(*verdicts, options);
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
    add_output_flag(cmd, flags->output, {"table", "json"}, "table or json");
    add_agent_credential_flags(cmd, diagnose.token_file, diagnose.ca_file, from);
    cmd.add_option("--level", diagnose.level, "name pairs by workload or by pod")->check(CLI::IsMember({"workload", "pod"}));
    cmd.add_option("--pod-map", diagnose.pod_map_path, "without --from: YAML file naming endpoints")
        ->check(readable_file())
        ->excludes(from);
    add_idle_threshold_flag(cmd, diagnose.loader.idle_threshold_s, "without --from: ")->excludes(from);
    return [flags]() -> int {
        DiagnoseOptions& diagnose = flags->diagnose;
        if (!diagnose.from_url && !diagnose.duration_s)
            return usage_error("--from", "diagnose needs --from URL (a running agent) or --duration SECONDS (watch this node)");
        if (diagnose.from_url) diagnose.from_url = resolve_agent_url(*diagnose.from_url);
        diagnose.json = flags->output == "json";
        return run_diagnose(diagnose);
    };
}

}  // namespace rstwatch
