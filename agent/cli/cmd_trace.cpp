// `rstwatch trace`: load the BPF programs, correlate, print incidents live; or, with --from,
// follow a running agent's stream (pod names, its recent history first with --since/--last).
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
#include "correlator.h"
#include "flags.h"
#include "history.h"
#include "output.h"
#include "signals.h"
#include "stream_client.h"
#include "usage.h"

namespace rstwatch {
namespace {

void print_text(std::string text) {
    if (text.empty() || text.back() != '\n') text.push_back('\n');
    fwrite(text.data(), 1, text.size(), stdout);
    fflush(stdout);  // usable in a pipe: one incident as it happens
}

TableOptions table_options(const TraceOptions& options, bool names) {
    TableOptions table;
    table.wide = options.output == OutputFormat::wide;
    table.names = names;
    table.workload_level = options.workload_level;
    return table;
}

bool is_table(OutputFormat format) { return format == OutputFormat::table || format == OutputFormat::wide; }

// --namespace and --pod: NS/POD names one end; --namespace alone, an end in NS.
bool matches_pod(const TraceOptions& options, const StreamedIncident& streamed) {
    auto end_matches = [&](const Identity& end) {
        if (options.namespace_ && end.namespace_ != *options.namespace_) return false;
        if (options.pod && end.pod != *options.pod) return false;
        return true;
    };
    if (!options.namespace_ && !options.pod) return true;
    return end_matches(streamed.client) || end_matches(streamed.server);
}

// --since, checked here with the agent's own parser (history.h) so that a typo is a usage error
// and the CLI accepts exactly what the agent does.
std::string since_error(const std::string& value) {
    std::string error;
    if (parse_history_query(value.c_str(), nullptr, 0, &error)) return {};
    return "'" + value + "': expected an RFC 3339 time (2026-12-06T02:00:00Z) or a duration like 90s, 30m, 2h, 1h30m";
}

}  // namespace

// `trace --from URL`: the same output from a running agent's stream, with pod names.
int run_trace_from(const TraceOptions& options, const IncidentFilter& filter) {
    ClientAuth auth;
    if (std::string error; !load_client_auth(token_file_or_env(options.token_file), ca_file_or_env(options.ca_file),
                                             &auth, &error))
        return usage_error(options.token_file ? "--token-file" : "$RSTWATCH_TOKEN_FILE", error);
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
    const TableOptions table = table_options(options, true);
    // The header comes with the first incident: an agent that cannot be reached gets one line.
    bool header_printed = false;
    StreamClientOptions client_options;
    client_options.url = *options.from_url;
    client_options.auth = auth;
    client_options.since = options.since;
    client_options.last = options.last;
    spdlog::debug("following {}", client_options.url);
    StreamResult result = follow_incidents(
        client_options, stop,
        [&](const StreamedIncident& streamed) {
            if (!filter.matches(streamed.incident) || !matches_pod(options, streamed)) return;
            incidents_by_cause[static_cast<size_t>(streamed.incident.cause)]++;
            if (is_table(options.output) && !header_printed) {
                print_text(format_table_header(table));
                header_printed = true;
            }
            // Stream timestamps are already Unix time: offset 0.
            switch (options.output) {
                case OutputFormat::json: print_text(format_streamed_incident_line(streamed, 0)); break;
                case OutputFormat::yaml: print_text(format_yaml_document(streamed_incident_to_json(streamed, 0))); break;
                default:
                    print_text(format_incident_row(streamed.incident, 0, table, &streamed.client, &streamed.server));
            }
        },
        [&](uint64_t dropped) {
            spdlog::warn("the agent dropped {} incidents for this follower: it fell behind", dropped);
        });
    stop = true;
    watchdog.join();
    if (deadline.joinable()) deadline.join();
    if (result.end == StreamResult::End::error)
        return command_failed(result.error.rfind("cannot follow", 0) == 0
                                  ? result.error
                                  : fmt::format("cannot follow {}: {}", client_options.url, result.error));
    spdlog::info("summary: {}, {} dropped by the agent for this follower", format_summary(incidents_by_cause, 0),
                 result.dropped);
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
    const TableOptions table = table_options(options, false);

    CaptureHooks hooks;
    hooks.on_output = [&](CorrelatorOutput& produced) {
        for (const Incident& incident : produced.incidents) {
            if (!filter.matches(incident)) continue;
            incidents_by_cause[static_cast<size_t>(incident.cause)]++;
            switch (options.output) {
                case OutputFormat::json: print_text(format_incident_json_line(incident, unix_offset_ns)); break;
                case OutputFormat::yaml:
                    print_text(format_yaml_document(incident_to_json(incident, unix_offset_ns)));
                    break;
                default: print_text(format_incident_row(incident, unix_offset_ns, table));
            }
        }
    };
    hooks.after_poll = [&](int64_t) { unix_offset_ns = monotonic_to_unix_offset_ns(); };
    CaptureLoopOptions loop_options;
    if (options.duration_s) loop_options.deadline_ns = monotonic_ns() + static_cast<int64_t>(*options.duration_s * 1e9);
    CaptureLoop loop(correlator, std::move(hooks), std::move(loop_options));

    std::string error;
    std::unique_ptr<BpfSession> session = BpfSession::open(options.loader, features, loop.sink(), &error);
    if (!session) return command_failed("cannot trace: " + error);
    spdlog::info("tracing TCP resets and stale keepalive writes: write hook {}, idle threshold {:.3f} s (HZ={})",
                 write_mode_name(session->write_mode()), options.loader.idle_threshold_s, features.hz);
    if (is_table(options.output)) print_text(format_table_header(table));

    const CaptureResult captured = loop.run(*session);
    session.reset();  // detach before the summary: nothing stays attached
    if (!captured.ok) return command_failed(captured.error);
    // What was seen and is not an incident, so that a quiet summary is not mistaken for blindness.
    spdlog::info("summary: {}; not incidents: {} TLS close_notify teardowns, {} resets with nothing in flight",
                 format_summary(incidents_by_cause, captured.lost_records), correlator.stats().tls_close_notify,
                 correlator.stats().idle_resets);
    return kExitOk;
}

std::optional<OutputFormat> parse_output_format(const std::string& text) {
    if (text == "table") return OutputFormat::table;
    if (text == "wide") return OutputFormat::wide;
    if (text == "json") return OutputFormat::json;
    if (text == "yaml") return OutputFormat::yaml;
    return std::nullopt;
}

CommandRunner define_trace(CLI::App& cmd) {
    struct Flags {
        TraceOptions trace;
        std::string output = "table";
        std::string level = "pod";
        std::string write_hook = "auto";
        std::vector<std::string> causes;
        PodSelection pods;
    };
    auto flags = std::make_shared<Flags>();
    TraceOptions& trace = flags->trace;
    add_output_flag(cmd, flags->output, {"table", "wide", "json", "yaml"},
                    "table, wide (also addresses, netns, requests), json (one object per line) or yaml");
    auto* from = add_from_flag(cmd, trace.from_url,
                               "follow a running agent's stream (http[s]://HOST:PORT, or node: this node's agent, "
                               "$RSTWATCH_AGENT_URL or http://127.0.0.1:9740) instead of loading BPF");
    add_pod_flags(cmd, flags->pods, from);
    cmd.add_option("--level", flags->level, "with --from: tables name pods (pod) or workloads (workload)")
        ->check(CLI::IsMember({"pod", "workload"}))
        ->needs(from);
    cmd.add_option("--since", trace.since,
                   "with --from: first replay the agent's incidents since this time (RFC 3339) or for this long "
                   "(30s, 30m, 2h)")
        ->check(since_error)
        ->needs(from);
    cmd.add_option("--last", trace.last, "with --from: first replay the agent's last N incidents (with --since: of those)")
        ->check(CLI::Range(uint64_t{1}, uint64_t{1000000}))
        ->needs(from);
    cmd.add_option("--port", trace.port, "only incidents with this port on either side")->check(CLI::Range(1, 65535));
    cmd.add_option("--pid", trace.pid, "only incidents of this writing process");
    cmd.add_option("--comm", trace.comm, "only incidents of this process name");
    cmd.add_option("--cause", flags->causes,
                   "only these causes, comma-separated: write_after_fin, idle_close_race, reset_other, "
                   "abort_on_close, data_after_close")
        ->delimiter(',')
        ->check([](const std::string& value) -> std::string {
            return parse_cause(value) ? std::string()
                                      : "unknown cause '" + value +
                                            "' (write_after_fin, idle_close_race, reset_other, abort_on_close, "
                                            "data_after_close)";
        });
    cmd.add_option("--duration", trace.duration_s, "stop after this many seconds (default: until Ctrl-C)")
        ->check(positive_seconds(30 * 86400.0));
    // The local capture's settings: an agent's stream was captured with the agent's.
    add_idle_threshold_flag(cmd, trace.loader.idle_threshold_s, "without --from: ")->excludes(from);
    add_write_hook_flag(cmd, flags->write_hook)->excludes(from);
    add_agent_credential_flags(cmd, trace.token_file, trace.ca_file, from);
    return [flags]() -> int {
        TraceOptions& trace = flags->trace;
        if (std::string problem = resolve_pod_selection(flags->pods); !problem.empty())
            return usage_error("--pod", problem.substr(std::string("--pod: ").size()));
        trace.namespace_ = flags->pods.namespace_;
        trace.pod = flags->pods.pod;
        if (trace.from_url) trace.from_url = resolve_agent_url(*trace.from_url);
        trace.output = *parse_output_format(flags->output);
        trace.workload_level = flags->level == "workload";
        trace.loader.write_mode = parse_write_mode(flags->write_hook);
        for (const std::string& cause : flags->causes) trace.causes.push_back(*parse_cause(cause));
        return run_trace(trace);
    };
}

}  // namespace rstwatch
