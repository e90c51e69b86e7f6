// Choice of the application-write hook: the preferred attach mode the kernel
// offers, falling back to the next when the kernel refuses one. Pure logic.
#pragma once

#include <functional>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace rstwatch {

enum class WriteMode { tp_btf, fentry, kprobe };

// "tp_btf/tcp_sendmsg_locked", "fentry/tcp_sendmsg", "kprobe/tcp_sendmsg".
std::string_view write_mode_name(WriteMode mode);
// Accepts "tp_btf", "fentry", "kprobe" (and the full names above).
std::optional<WriteMode> parse_write_mode(std::string_view text);

// What the running kernel offers at all (from BTF and the kernel's interfaces).
struct WriteHookSupport {
    bool tp_btf = false;  // tracepoint tcp_sendmsg_locked exists (Linux >= 6.16)
    bool fentry = false;  // BTF knows tcp_sendmsg (fentry may still be refused)
    bool kprobe = false;  // the kprobe perf PMU exists

    bool offers(WriteMode mode) const {
        switch (mode) {
            case WriteMode::tp_btf: return tp_btf;
            case WriteMode::fentry: return fentry;
            case WriteMode::kprobe: return kprobe;
        }
        return false;
    }
};

// Modes to try, best first. A forced mode is tried alone, even if it looks unsupported,
// so the kernel's own refusal is what the user sees.
std::vector<WriteMode> write_mode_candidates(const WriteHookSupport& support,
                                             std::optional<WriteMode> forced);

struct WriteModeChoice {
    std::optional<WriteMode> chosen;
    std::vector<std::pair<WriteMode, int>> refused;  // mode and negative errno, in order tried
};

// Tries each candidate with `attempt` (returns 0 or a negative errno) until one succeeds.
// `on_refused(mode, err, next)` is called once per refusal (next = the mode tried next, if any).
WriteModeChoice choose_write_mode(
    const std::vector<WriteMode>& candidates, const std::function<int(WriteMode)>& attempt,
    const std::function<void(WriteMode, int, std::optional<WriteMode>)>& on_refused = {});

}  // namespace rstwatch
