// The text of `rstwatch check`, from what was probed: pure (no kernel, no I/O), so every
// wording, including why a refusal is harmless, is unit-tested without a kernel.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kernel_features.h"
#include "write_mode.h"

namespace rstwatch {

// What happened when one write hook was loaded and attached on its own.
enum class HookOutcome {
    attached,           // loaded and attached (then detached)
    refused,            // the kernel refused it (load or attach), errno in WriteHookProbe::error
    failed,             // something else failed, message in WriteHookProbe::message
    not_offered,        // the kernel does not offer it (BTF, kprobe PMU): not tried
    not_tried_forced,   // --write-hook asked for another one
    not_tried_blocked,  // rstwatch cannot run here anyway (privileges, BTF, ...): not tried
};

struct WriteHookProbe {
    WriteMode mode = WriteMode::tp_btf;
    HookOutcome outcome = HookOutcome::not_offered;
    int error = 0;        // negative errno, for `refused`
    std::string message;  // one line, for `failed`
};

struct CheckProbes {
    KernelFeatures features;
    std::vector<WriteHookProbe> write_hooks;  // preference order: tp_btf, fentry, kprobe
    std::optional<WriteMode> forced;          // --write-hook
    std::optional<WriteMode> chosen;          // the first hook that attached
    bool socket_storage = false;              // the chosen session keeps per-socket state in sk_storage
    uint32_t max_connections = 0;             // the LRU hash's size when socket storage is not used
};

struct CheckReport {
    std::vector<std::string> lines;  // each without its newline; the last one is the verdict
    bool can_run = false;
};

CheckReport format_check_report(const CheckProbes& probes);

// "EPERM" for -EPERM ("errno N" when it has no name): short, and what kernel docs and logs use.
std::string errno_text(int negative_errno);

}  // namespace rstwatch
