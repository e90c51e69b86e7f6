// `rstwatch trace`: load the BPF programs, correlate, print incidents live.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "capture_loop.h"
#include "clock.h"
#include "commands.h"
#include "flags.h"
#include "correlator.h"
#include "output.h"
#include "signals.h"
#include "stream_client.h"

namespace rstwatch {
namespace {

void print_line(std::string line) {
    line.push_back('\n');
    fwrite(line.data(), 1, line.size(), stdout);
    fflush(stdout);  // usable in a pipe: one line as it happens
}

}  // namespace

// `trace --from URL`: the same output from a running agent's stream, with pod names.
int run_trace_from(const TraceOptions& options, const IncidentFilter& filter) {
    ClientAuth auth;
    if (std::string error; !load_client_auth(token_file_or_env(options.token_file), ca_file_or_env(options.ca_file),
                                             &auth, &error)) {
        spdlog::error("{}", error);
        return kExitUsage;
    }
    std::array<uint64_t, kCauseCount> incidents_by_cause{};
    std::atomic<bool> stop{false};
    std::thread watchdog([&] {
        while (!stop) {
            if (stop_requested()) stop = true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    });
    const int64_t started_ns = monotonic_ns();
    std::thread deadline;
    if (options.duration_s) {
        deadline = std::thread([&] {
            const int64_t end = started_ns + static_cast<int64_t>(*options.duration_s * 1e9);
            while (!stop && monotonic_ns() < end) std::this_thread::sleep_for(std::chrono::milliseconds(20));
            request_stop();
        });
    }
    if (!options.json) print_line(format_table_header());
    auto matches_pod = [&](const StreamedIncident& streamed) {
        if (options.namespace_ && streamed.client.namespace_ != *options.namespace_ &&
            streamed.server.namespace_ != *options.namespace_)
            return false;
        if (options.pod && streamed.client.pod != *options.pod && streamed.server.pod != *options.pod) return false;
        return true;
    };
    StreamClientOptions client_options;
    client_options.url = *options.from_url;
    client_options.auth = auth;
    spdlog::info("following {}", client_options.url);
    StreamResult result = follow_incidents(
        client_options, stop,
        [&](const StreamedIncident& streamed) {
            if (!filter.matches(streamed.incident) || !matches_pod(streamed)) return;
            incidents_by_cause[static_cast<size_t>(streamed.incident.cause)]++;
            // Stream timestamps are already Unix time: offset 0.
            print_line(options.json ? format_streamed_incident_line(streamed, 0)
                                    : format_incident_row(streamed.incident, 0));
        },
        [&](uint64_t dropped) {
            spdlog::warn("the agent dropped {} incidents for this follower: it fell behind", dropped);
        });
    stop = true;
    watchdog.join();
    if (deadline.joinable()) deadline.join();
    spdlog::info("summary: {}, {} dropped by the agent for this follower", format_summary(incidents_by_cause, 0),
                 result.dropped);
    if (result.end == StreamResult::End::error) {
        spdlog::error("stream from {} failed: {}", client_options.url, result.error);
        return kExitFailure;
    }
    return kExitOk;
}

int run_trace(const TraceOptions& options) {
    install_signal_handlers(SignalUse::command);
    IncidentFilter filter;
    filter.port = options.port;
    filter.pid = options.pid;
    filter.comm = options.comm;
    filter.causes = options.causes;
    if (options.from_url) return run_trace_from(options, filter);

    const KernelFeatures features = probe_kernel_features();
    Correlator correlator(correlator_options_for(options.loader, features));
    std::array<uint64_t, kCauseCount> incidents_by_cause{};
    int64_t unix_offset_ns = monotonic_to_unix_offset_ns();

    CaptureHooks hooks;
    hooks.on_output = [&](CorrelatorOutput& produced) {
        for (const Incident& incident : produced.incidents) {
            if (!filter.matches(incident)) continue;
            incidents_by_cause[static_cast<size_t>(incident.cause)]++;
            print_line(options.json ? format_incident_json_line(incident, unix_offset_ns)
                                    : format_incident_row(incident, unix_offset_ns));
        }
    };
    hooks.after_poll = [&](int64_t) { unix_offset_ns = monotonic_to_unix_offset_ns(); };
    CaptureLoopOptions loop_options;
    if (options.duration_s) loop_options.deadline_ns = monotonic_ns() + static_cast<int64_t>(*options.duration_s * 1e9);
    CaptureLoop loop(correlator, std::move(hooks), std::move(loop_options));

    std::string error;
    std::unique_ptr<BpfSession> session = BpfSession::open(options.loader, features, loop.sink(), &error);
    if (!session) {
        spdlog::error("cannot trace: {}", error);
        return kExitFailure;
    }
    spdlog::info("tracing TCP resets and stale keepalive writes: write hook {}, idle threshold {:.3f} s (HZ={})",
                 write_mode_name(session->write_mode()), options.loader.idle_threshold_s, features.hz);
    if (!options.json) print_line(format_table_header());

    const CaptureResult captured = loop.run(*session);
    if (!captured.ok) spdlog::error("{}", captured.error);
    session.reset();  // detach before the summary: nothing stays attached
    // What was seen and is not an incident, so that a quiet summary is not mistaken for blindness.
    spdlog::info("summary: {}; not incidents: {} TLS close_notify teardowns, {} resets with nothing in flight",
                 format_summary(incidents_by_cause, captured.lost_records), correlator.stats().tls_close_notify,
                 correlator.stats().idle_resets);
    return captured.ok ? kExitOk : kExitFailure;
}

CommandRunner define_trace(CLI::App& cmd) {
    struct Flags {
        TraceOptions trace;
        std::string output = "table";
        std::string write_hook = "auto";
        std::vector<std::string> causes;
    };
    auto flags = std::make_shared<Flags>();
    TraceOptions& trace = flags->trace;
    add_output_flag(cmd, flags->output, {"table", "json"}, "table or json (one object per line)");
    add_idle_threshold_flag(cmd, trace.loader.idle_threshold_s);
    cmd.add_option("--port", trace.port, "only incidents with this port on either side")->check(CLI::Range(1, 65535));
    cmd.add_option("--pid", trace.pid, "only incidents of this writing process");
    cmd.add_option("--comm", trace.comm, "only incidents of this process name");
    cmd.add_option("--cause", flags->causes, "only these causes (comma-separated)")
        ->delimiter(',')
        ->check([](const std::string& value) -> std::string {
            return parse_cause(value) ? std::string()
                                      : "unknown cause '" + value +
                                            "' (write_after_fin, idle_close_race, reset_other, abort_on_close, "
                                            "data_after_close)";
        });
    cmd.add_option("--duration", trace.duration_s, "stop after this many seconds")->check(CLI::PositiveNumber);
    add_write_hook_flag(cmd, flags->write_hook);
    auto* from = cmd.add_option("--from", trace.from_url,
                                "follow a running agent's stream (http[s]://HOST:PORT, or node: this node's agent, "
                                "$RSTWATCH_AGENT_URL or http://127.0.0.1:9740) instead of loading BPF");
    cmd.add_option("--namespace", trace.namespace_, "with --from: only incidents with an end in this namespace")
        ->needs(from);
    cmd.add_option("--pod", trace.pod, "with --from: only incidents with this pod at either end")->needs(from);
    add_agent_credential_flags(cmd, trace.token_file, trace.ca_file, from);
    return [flags] {
        TraceOptions& trace = flags->trace;
        if (trace.from_url) trace.from_url = resolve_agent_url(*trace.from_url);
        trace.json = flags->output == "json";
        trace.loader.write_mode = parse_write_mode(flags->write_hook);
        for (const std::string& cause : flags->causes) trace.causes.push_back(*parse_cause(cause));
        return run_trace(trace);
    };
}

}  // namespace rstwatch
