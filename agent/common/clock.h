// Clock readings in nanoseconds. Records carry CLOCK_MONOTONIC (bpf_ktime_get_ns), output
// carries Unix time: the offset between the two is read again at every poll, so wall-clock
// steps are followed.
#pragma once

#include <cstdint>
#include <ctime>

namespace rstwatch {

inline int64_t clock_ns(clockid_t clock) {
    timespec ts{};
    clock_gettime(clock, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

inline int64_t monotonic_ns() { return clock_ns(CLOCK_MONOTONIC); }

// Unix time minus CLOCK_MONOTONIC: add to a record's timestamp for wall-clock time.
inline int64_t monotonic_to_unix_offset_ns() { return clock_ns(CLOCK_REALTIME) - clock_ns(CLOCK_MONOTONIC); }

}  // namespace rstwatch
