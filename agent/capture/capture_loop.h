// The one capture loop every command runs: ring buffer -> correlator -> the command's handler.
// It owns what each command used to repeat (and diagnose had forgotten): polling until a stop
// or a deadline, telling the correlator about lost records, expiring what it remembers, the
// trace-level record log, and draining the buffer before returning.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "correlator.h"
#include "kernel_features.h"
#include "loader.h"

namespace rstwatch {

// The correlator's settings for this kernel and these loader options: the close threshold, one
// jiffy of this kernel's HZ, and the names of its reset reasons (from BTF).
CorrelatorOptions correlator_options_for(const LoaderOptions& loader, const KernelFeatures& features);

struct CaptureLoopOptions {
    // Also the longest a record submitted without a wakeup waits to be read (the kernel side
    // wakes us at most once per CPU per 10 ms).
    int poll_timeout_ms = 10;
    // How often the correlator forgets finished connections (and on_second hooks run).
    int64_t tick_ns = 1'000'000'000LL;
    // How often the kernel's count of dropped records is read (a map lookup syscall: after
    // every poll it was an eighth of the agent's time in a reset storm); always at the end.
    int64_t lost_check_ns = 100'000'000LL;
    std::optional<int64_t> deadline_ns;  // CLOCK_MONOTONIC; none: until stop
    // Injected in tests; default CLOCK_MONOTONIC and the process's stop signals.
    std::function<int64_t()> now_ns;
    std::function<bool()> stop;
};

// What a command adds to the loop; every hook is optional.
struct CaptureHooks {
    std::function<void(CorrelatorOutput& produced)> on_output;  // after each record
    std::function<void(int64_t now_ns)> after_poll;             // after each poll
    std::function<void(int64_t now_ns)> on_tick;                // once per tick_ns, before expiry
    // Records the kernel dropped since the last call (the correlator is told already).
    std::function<void(uint64_t newly_lost, uint64_t total_lost)> on_lost;
};

struct CaptureResult {
    bool ok = true;     // false: reading the ring buffer failed (error says how)
    std::string error;
    uint64_t lost_records = 0;
};

class CaptureLoop {
public:
    CaptureLoop(Correlator& correlator, CaptureHooks hooks, CaptureLoopOptions options = {});

    // The sink to open the record source with: decodes and correlates each record, then
    // hands what it produced to hooks.on_output.
    RecordSink sink();
    // Polls until stop, the deadline or a read error, then takes in what the buffer still holds.
    CaptureResult run(RecordSource& source);

private:
    void on_record(const void* data, size_t size);
    void account_lost(RecordSource& source, CaptureResult& result);

    Correlator& correlator_;
    CaptureHooks hooks_;
    CaptureLoopOptions options_;
    CorrelatorOutput produced_;
};

}  // namespace rstwatch
