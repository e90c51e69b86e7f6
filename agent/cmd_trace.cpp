// `rstwatch trace`: load the BPF programs, correlate, print incidents live.
#include <spdlog/spdlog.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "commands.h"
#include "correlator.h"
#include "output.h"
#include "rstwatch.h"
#include "stream_client.h"

#include <atomic>
#include <chrono>
#include <thread>

namespace rstwatch {
namespace {

volatile std::sig_atomic_t g_stop_requested = 0;

void request_stop(int) { g_stop_requested = 1; }

void install_stop_handlers() {
    struct sigaction action {};
    action.sa_handler = request_stop;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: poll() returns EINTR at once
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
}

int64_t clock_ns(clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

// Records carry CLOCK_MONOTONIC; refreshed every poll so wall-clock steps are followed.
int64_t monotonic_to_unix_offset_ns() { return clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC); }

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
            if (g_stop_requested) stop = true;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    });
    const int64_t started_ns = clock_ns(CLOCK_MONOTONIC);
    std::thread deadline;
    if (options.duration_s) {
        deadline = std::thread([&] {
            const int64_t end = started_ns + static_cast<int64_t>(*options.duration_s * 1e9);
            while (!stop && clock_ns(CLOCK_MONOTONIC) < end) std::this_thread::sleep_for(std::chrono::milliseconds(20));
            g_stop_requested = 1;
        });
    }
    if (!options.json) {
        std::string header = format_table_header() + "\n";
        fwrite(header.data(), 1, header.size(), stdout);
        fflush(stdout);
    }
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
            std::string line = options.json ? format_streamed_incident_line(streamed, 0)
                                            : format_incident_row(streamed.incident, 0);
            line.push_back('\n');
            fwrite(line.data(), 1, line.size(), stdout);
            fflush(stdout);
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
    install_stop_handlers();
    if (options.from_url) {
        IncidentFilter filter;
        filter.port = options.port;
        filter.pid = options.pid;
        filter.comm = options.comm;
        filter.causes = options.causes;
        return run_trace_from(options, filter);
    }
    KernelFeatures features = probe_kernel_features();

    CorrelatorOptions correlator_options;
    correlator_options.idle_threshold_ns = close_threshold_ns(options.loader.idle_threshold_s);
    correlator_options.jiffy_ns = 1'000'000'000ULL / (features.hz ? features.hz : 250);
    correlator_options.reset_reason_name = [names = features.rst_reason_names](uint32_t raw) {
        auto it = names.find(raw);
        return it == names.end() ? std::string() : it->second;
    };
    Correlator correlator(correlator_options);
    CorrelatorOutput produced;

    IncidentFilter filter;
    filter.port = options.port;
    filter.pid = options.pid;
    filter.comm = options.comm;
    filter.causes = options.causes;

    std::array<uint64_t, kCauseCount> incidents_by_cause{};
    int64_t unix_offset_ns = monotonic_to_unix_offset_ns();

    auto sink = [&](const void* data, size_t size) {
        produced.clear();
        if (size == sizeof(rw_record) && spdlog::should_log(spdlog::level::trace)) {
            const auto* r = static_cast<const rw_record*>(data);
            spdlog::trace("record type={} sock={:#x} start={} role={} flags={:#x} state={} old={} {}:{}->{}:{} "
                          "netns={} idle_ns={} rcvd={} armed_rcvd={} reason={}",
                          r->type, r->sock_id, r->conn.start_ns, r->conn.role, r->conn.flags, r->state,
                          r->old_state, format_address(r->saddr), r->sport, format_address(r->daddr), r->dport,
                          r->netns, r->idle_ns, r->bytes_received, r->conn.armed_bytes_received, r->rst_reason);
        }
        correlator.on_raw(data, size, produced);
        for (const Incident& incident : produced.incidents) {
            if (!filter.matches(incident)) continue;
            incidents_by_cause[static_cast<size_t>(incident.cause)]++;
            std::string line = options.json ? format_incident_json_line(incident, unix_offset_ns)
                                            : format_incident_row(incident, unix_offset_ns);
            line.push_back('\n');
            fwrite(line.data(), 1, line.size(), stdout);
            fflush(stdout);  // usable in a pipe: one line as it happens
        }
    };

    std::string error;
    std::unique_ptr<BpfSession> session = BpfSession::open(options.loader, features, sink, &error);
    if (!session) {
        spdlog::error("cannot trace: {}", error);
        return kExitFailure;
    }
    spdlog::info("tracing TCP resets and stale keepalive writes: write hook {}, idle threshold {:.3f} s (HZ={})",
                 write_mode_name(session->write_mode()), options.loader.idle_threshold_s, features.hz);
    if (!options.json) {
        std::string header = format_table_header() + "\n";
        fwrite(header.data(), 1, header.size(), stdout);
        fflush(stdout);
    }

    const int64_t started_ns = clock_ns(CLOCK_MONOTONIC);
    const int64_t deadline_ns =
        options.duration_s ? started_ns + static_cast<int64_t>(*options.duration_s * 1e9) : INT64_MAX;
    uint64_t lost_seen = 0;
    int64_t next_expiry_ns = started_ns + 1'000'000'000LL;
    int rc = kExitOk;
    while (!g_stop_requested) {
        int n = session->poll(100);
        if (n < 0 && n != -EINTR) {
            spdlog::error("reading the BPF ring buffer failed: {}", strerror(-n));
            rc = kExitFailure;
            break;
        }
        unix_offset_ns = monotonic_to_unix_offset_ns();
        if (uint64_t lost = session->lost_records(); lost > lost_seen) {
            correlator.on_records_lost(lost - lost_seen);
            spdlog::warn("{} records lost: the ring buffer was full", lost - lost_seen);
            lost_seen = lost;
        }
        int64_t now_ns = clock_ns(CLOCK_MONOTONIC);
        if (now_ns >= next_expiry_ns) {
            correlator.expire(static_cast<uint64_t>(now_ns));
            next_expiry_ns = now_ns + 1'000'000'000LL;
        }
        if (now_ns >= deadline_ns) break;
    }
    session->poll(0);  // what is already in the buffer still counts
    lost_seen = std::max(lost_seen, session->lost_records());
    session.reset();  // detach before the summary: nothing stays attached
    // What was seen and is not an incident, so that a quiet summary is not mistaken for blindness.
    spdlog::info("summary: {}; not incidents: {} TLS close_notify teardowns, {} resets with nothing in flight",
                 format_summary(incidents_by_cause, lost_seen), correlator.stats().tls_close_notify,
                 correlator.stats().idle_resets);
    return rc;
}

}  // namespace rstwatch
