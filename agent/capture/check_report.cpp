#include "check_report.h"

#include <cstdio>
#include <cstring>

namespace rstwatch {
namespace {

// "label          value": labels padded to one column so the block reads as a table.
std::string row(std::string_view label, std::string_view value) {
    constexpr size_t kLabelWidth = 14;
    std::string line(label);
    line.resize(kLabelWidth, ' ');
    line += ' ';
    line += value;
    return line;
}

std::string name(WriteMode mode) { return std::string(write_mode_name(mode)); }

// Why the kernel does not offer a write hook, from what probe_kernel_features() looks at.
const char* not_offered_reason(WriteMode mode) {
    switch (mode) {
        case WriteMode::tp_btf: return "no tcp_sendmsg_locked tracepoint: Linux < 6.16";
        case WriteMode::fentry: return "tcp_sendmsg not in BTF";
        case WriteMode::kprobe: return "no kprobe PMU";
    }
    return "";
}

std::string hook_line(const WriteHookProbe& probe, const CheckProbes& probes) {
    const std::string self = name(probe.mode);
    // A hook that did not attach is harmless once another one did: say which.
    const std::string fine =
        probes.chosen && *probes.chosen != probe.mode ? " -- fine: " + name(*probes.chosen) + " is used"
                                                      : std::string();
    switch (probe.outcome) {
        case HookOutcome::attached:
            if (probes.chosen == probe.mode) return self + ": supported, chosen";
            return self + ": supported -- not needed: " + name(*probes.chosen) + " comes first";
        case HookOutcome::refused: {
            std::string line = self + ": refused by the kernel (" + errno_text(probe.error) + ")";
            if (!probes.features.write.offers(probe.mode))
                line += std::string(" -- not offered by this kernel: ") + not_offered_reason(probe.mode);
            return line + fine;
        }
        case HookOutcome::failed: return self + ": failed: " + probe.message + fine;
        case HookOutcome::not_offered:
            return self + ": not offered by this kernel (" + not_offered_reason(probe.mode) + ")" + fine;
        case HookOutcome::not_tried_forced: return self + ": not tried (--write-hook)";
        case HookOutcome::not_tried_blocked:
            return self + (probes.features.privileges ? ": not tried (cannot run, see result)"
                                                      : ": not tried (no privileges, above)");
    }
    return self;
}

std::string reset_hooks_value(const KernelFeatures& f) {
    std::string value = "tp_btf/tcp_receive_reset, tp_btf/tcp_send_reset: ";
    value += f.reset_tracepoints ? "supported" : "missing (needs Linux >= 5.8)";
    if (f.send_reset_has_reason)
        return value + " (kernel reset reason: yes)";
    return value + " (kernel reset reason: no -- fine: reset_reason stays null, the socket state classifies)";
}

std::string hz_value(const KernelFeatures& f) {
    std::string value = std::to_string(f.hz) + " (" + f.hz_source + ")";
    // Idle times are counted in jiffies: a wrong HZ scales every idle figure.
    if (f.hz_source.rfind("assumed", 0) == 0)
        value += " -- idle times are wrong unless the kernel really has this HZ: give rstwatch "
                 "/proc/config.gz or /boot/config-RELEASE";
    return value;
}

std::string jiffy_text(uint32_t hz) {
    if (hz == 0) return "unknown";
    char text[32];
    std::snprintf(text, sizeof(text), "%g ms", 1000.0 / hz);
    return text;
}

std::string state_store(const CheckProbes& probes) {
    if (probes.socket_storage)
        return "per-socket state: socket storage (one entry per TCP socket, freed with it; "
               "--max-connections unused)";
    std::string why = probes.chosen == WriteMode::kprobe
                          ? "kprobe programs cannot use socket storage"
                          : "socket storage refused by this kernel: needs Linux >= 5.11";
    return "per-socket state: LRU hash of " + std::to_string(probes.max_connections) +
           " entries (--max-connections; " + why + ")";
}

// Why rstwatch cannot run, when no write hook attached.
std::string failure(const CheckProbes& probes) {
    if (std::string problem = probes.features.blocking_problem(); !problem.empty()) return problem;
    for (const WriteHookProbe& probe : probes.write_hooks) {
        if (probe.outcome == HookOutcome::refused)
            return "no write hook attached: " + name(probe.mode) + " refused by the kernel (" +
                   errno_text(probe.error) + ")";
        if (probe.outcome == HookOutcome::failed)
            return "no write hook attached: " + name(probe.mode) + ": " + probe.message;
    }
    return "no write hook available on this kernel";
}

}  // namespace

std::string errno_text(int negative_errno) {
    const int err = negative_errno < 0 ? -negative_errno : negative_errno;
    const char* symbol = strerrorname_np(err);
    return symbol ? symbol : "errno " + std::to_string(err);
}

CheckReport format_check_report(const CheckProbes& probes) {
    const KernelFeatures& f = probes.features;
    CheckReport report;
    auto& out = report.lines;
    out.push_back(row("kernel", f.release));
    out.push_back(row("privileges", f.privileges ? "yes: " + f.privileges_summary : "no: " + f.privileges_error));
    out.push_back(row("BTF", f.btf ? "yes (/sys/kernel/btf/vmlinux)" : "no: " + f.btf_error));
    out.push_back(row("ring buffer", f.ringbuf ? "yes" : "no (needs Linux >= 5.8)"));
    out.push_back(row("HZ", hz_value(f)));
    out.push_back(row("state hook", std::string("tp_btf/inet_sock_set_state: ") +
                                        (f.state_tracepoint ? "supported" : "missing (needs Linux >= 5.8)")));
    out.push_back(row("reset hooks", reset_hooks_value(f)));
    out.push_back(row("destroy hook", std::string("tp_btf/tcp_destroy_sock: ") +
                                          (f.destroy_tracepoint ? "supported" : "missing (needs Linux >= 5.8)")));
    // Each write hook is really loaded and attached on its own: the kernel's answer, not BTF's.
    out.push_back(row("write hooks", "each loaded and attached alone, then detached; the first to attach is used:"));
    for (const WriteHookProbe& probe : probes.write_hooks) out.push_back(row("", hook_line(probe, probes)));
    out.push_back(row("FIN hook", "tcp_fin: optional, not used (the ESTABLISHED->CLOSE_WAIT transition is "
                                  "the portable signal)"));

    const bool blocked = !f.blocking_problem().empty();
    report.can_run = probes.chosen.has_value() && !blocked;
    if (!report.can_run) {
        out.push_back("result: rstwatch cannot run here: " + failure(probes));
        return report;
    }
    out.push_back(row("chosen", "write hook " + name(*probes.chosen)));
    out.push_back(row("", state_store(probes)));
    out.push_back(row("", f.typed_socket_reads ? "socket fields read with plain loads (bpf_skc_to_tcp_sock)"
                          : f.probe_reads_forced
                              ? "socket fields read with probe reads (RSTWATCH_BPF_PROBE_READS=1)"
                              : "socket fields read with probe reads (no bpf_skc_to_tcp_sock: Linux < 5.9)"));
    out.push_back(row("", "idle times in jiffies of " + jiffy_text(f.hz) + " (HZ " + std::to_string(f.hz) + ")"));
    out.push_back("result: rstwatch can run here (write hook " + name(*probes.chosen) + ")");
    return report;
}

}  // namespace rstwatch
