#include "capture_loop.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>

#include "clock.h"
#include "rstwatch.h"
#include "signals.h"

namespace rstwatch {

CorrelatorOptions correlator_options_for(const LoaderOptions& loader, const KernelFeatures& features) {
    CorrelatorOptions options;
    options.idle_threshold_ns = close_threshold_ns(loader.idle_threshold_s);
    options.jiffy_ns = 1'000'000'000ULL / (features.hz ? features.hz : 250);
    options.reset_reason_name = [names = features.rst_reason_names](uint32_t raw) {
        auto it = names.find(raw);
        return it == names.end() ? std::string() : it->second;
    };
    return options;
}

CaptureLoop::CaptureLoop(Correlator& correlator, CaptureHooks hooks, CaptureLoopOptions options)
    : correlator_(correlator), hooks_(std::move(hooks)), options_(std::move(options)) {
    if (!options_.now_ns) options_.now_ns = monotonic_ns;
    if (!options_.stop) options_.stop = stop_requested;
}

RecordSink CaptureLoop::sink() {
    return [this](const void* data, size_t size) { on_record(data, size); };
}

void CaptureLoop::on_record(const void* data, size_t size) {
    if (size == sizeof(rw_record) && spdlog::should_log(spdlog::level::trace)) {
        const auto* r = static_cast<const rw_record*>(data);
        spdlog::trace("record type={} sock={:#x} start={} role={} flags={:#x} state={} old={} {}:{}->{}:{} "
                      "netns={} idle_ns={} rcvd={} armed_rcvd={} reason={}",
                      r->type, r->sock_id, r->conn.start_ns, r->conn.role, r->conn.flags, r->state, r->old_state,
                      format_address(r->saddr), r->sport, format_address(r->daddr), r->dport, r->netns,
                      r->idle_ns, r->bytes_received, r->conn.armed_bytes_received, r->rst_reason);
    }
    produced_.clear();
    correlator_.on_raw(data, size, produced_);
    if (hooks_.on_output) hooks_.on_output(produced_);
}

void CaptureLoop::account_lost(RecordSource& source, CaptureResult& result) {
    const uint64_t lost = source.lost_records();
    if (lost <= result.lost_records) return;
    const uint64_t fresh = lost - result.lost_records;
    result.lost_records = lost;
    correlator_.on_records_lost(fresh);
    spdlog::warn("{} records lost: the ring buffer was full", fresh);
    if (hooks_.on_lost) hooks_.on_lost(fresh, lost);
}

CaptureResult CaptureLoop::run(RecordSource& source) {
    CaptureResult result;
    int64_t next_tick_ns = options_.now_ns() + options_.tick_ns;
    int64_t next_lost_check_ns = 0;
    while (!options_.stop()) {
        const int n = source.poll(options_.poll_timeout_ms);
        if (n < 0 && n != -EINTR) {
            result.ok = false;
            result.error = std::string("reading the BPF ring buffer failed: ") + std::strerror(-n);
            break;
        }
        const int64_t now = options_.now_ns();
        if (hooks_.after_poll) hooks_.after_poll(now);
        if (now >= next_lost_check_ns) {
            account_lost(source, result);
            next_lost_check_ns = now + options_.lost_check_ns;
        }
        if (now >= next_tick_ns) {
            if (hooks_.on_tick) hooks_.on_tick(now);
            correlator_.expire(static_cast<uint64_t>(now));
            next_tick_ns = now + options_.tick_ns;
        }
        if (options_.deadline_ns && now >= *options_.deadline_ns) break;
    }
    // What is already in the buffer still counts.
    source.poll(0);
    account_lost(source, result);
    return result;
}

}  // namespace rstwatch
