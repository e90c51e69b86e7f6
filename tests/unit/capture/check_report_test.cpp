// `rstwatch check`'s text from probe results: every hook's line says what happened and, when
// rstwatch runs anyway, why that is fine; the chosen setup and the verdict come last.
#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <string>

#include "check_report.h"

using rstwatch::CheckProbes;
using rstwatch::HookOutcome;
using rstwatch::WriteHookProbe;
using rstwatch::WriteMode;

namespace {

// A kernel that offers everything rstwatch needs (Linux 6.18 here).
rstwatch::KernelFeatures healthy() {
    rstwatch::KernelFeatures f;
    f.release = "6.18.44";
    f.btf = true;
    f.ringbuf = true;
    f.privileges = true;
    f.privileges_summary = "CAP_BPF, CAP_PERFMON";
    f.write = {true, true, false};
    f.send_reset_has_reason = true;
    f.state_tracepoint = f.reset_tracepoints = f.destroy_tracepoint = true;
    f.typed_socket_reads = true;
    f.hz = 250;
    f.hz_source = "/proc/config.gz";
    return f;
}

WriteHookProbe hook(WriteMode mode, HookOutcome outcome, int error = 0) {
    WriteHookProbe probe;
    probe.mode = mode;
    probe.outcome = outcome;
    probe.error = error;
    return probe;
}

// The probes of the CI host: tp_btf attaches, fentry refused with EPERM, no kprobes.
CheckProbes ci_host() {
    CheckProbes p;
    p.features = healthy();
    p.write_hooks = {hook(WriteMode::tp_btf, HookOutcome::attached),
                     hook(WriteMode::fentry, HookOutcome::refused, -EPERM),
                     hook(WriteMode::kprobe, HookOutcome::not_offered)};
    p.chosen = WriteMode::tp_btf;
    p.socket_storage = true;
    p.max_connections = 131072;
    return p;
}

std::string text(const rstwatch::CheckReport& report) {
    std::string all;
    for (const auto& line : report.lines) all += line + "\n";
    return all;
}

// The line naming `what` followed by a colon (a write hook's line), trimmed.
std::string line_of(const rstwatch::CheckReport& report, const std::string& what) {
    for (const auto& line : report.lines)
        if (auto at = line.find(what + ":"); at != std::string::npos) return line.substr(at);
    return "(no line for " + what + ")";
}

}  // namespace

TEST(CheckReport, HealthyHostExplainsEachRefusalAndWhatWasChosen) {
    const auto report = rstwatch::format_check_report(ci_host());
    EXPECT_TRUE(report.can_run);
    EXPECT_EQ(text(report),
              "kernel         6.18.44\n"
              "privileges     yes: CAP_BPF, CAP_PERFMON\n"
              "BTF            yes (/sys/kernel/btf/vmlinux)\n"
              "ring buffer    yes\n"
              "HZ             250 (/proc/config.gz)\n"
              "state hook     tp_btf/inet_sock_set_state: supported\n"
              "reset hooks    tp_btf/tcp_receive_reset, tp_btf/tcp_send_reset: supported (kernel reset reason: yes)\n"
              "destroy hook   tp_btf/tcp_destroy_sock: supported\n"
              "write hooks    each loaded and attached alone, then detached; the first to attach is used:\n"
              "               tp_btf/tcp_sendmsg_locked: supported, chosen\n"
              "               fentry/tcp_sendmsg: refused by the kernel (EPERM) -- fine: tp_btf/tcp_sendmsg_locked is used\n"
              "               kprobe/tcp_sendmsg: not offered by this kernel (no kprobe PMU) -- fine: "
              "tp_btf/tcp_sendmsg_locked is used\n"
              "FIN hook       tcp_fin: optional, not used (the ESTABLISHED->CLOSE_WAIT transition is the portable "
              "signal)\n"
              "chosen         write hook tp_btf/tcp_sendmsg_locked\n"
              "               per-socket state: socket storage (one entry per TCP socket, freed with it; "
              "--max-connections unused)\n"
              "               socket fields read with plain loads (bpf_skc_to_tcp_sock)\n"
              "               idle times in jiffies of 4 ms (HZ 250)\n"
              "result: rstwatch can run here (write hook tp_btf/tcp_sendmsg_locked)\n");
}

TEST(CheckReport, KernelsWithoutTheTypedSocketHelperReadWithProbeReads) {
    auto probes = ci_host();
    probes.features.typed_socket_reads = false;
    const auto report = rstwatch::format_check_report(probes);
    EXPECT_TRUE(report.can_run);
    EXPECT_NE(text(report).find("socket fields read with probe reads (no bpf_skc_to_tcp_sock: Linux < 5.9)"),
              std::string::npos);
}

TEST(CheckReport, RowsAreOneAlignedBlock) {
    for (const auto& line : rstwatch::format_check_report(ci_host()).lines) {
        if (line.rfind("result: ", 0) == 0) continue;
        ASSERT_GT(line.size(), 15U) << line;
        EXPECT_EQ(line[14], ' ') << line;
        EXPECT_NE(line[15], ' ') << line;
    }
}

TEST(CheckReport, OlderKernelFallbackIsFineAndTheSpareHookIsNotNeeded) {
    // Debian 12's 6.1: no tcp_sendmsg_locked tracepoint, fentry and kprobe both attach, no reset reason.
    CheckProbes p = ci_host();
    p.features.write = {false, true, true};
    p.features.send_reset_has_reason = false;
    p.write_hooks = {hook(WriteMode::tp_btf, HookOutcome::not_offered),
                     hook(WriteMode::fentry, HookOutcome::attached),
                     hook(WriteMode::kprobe, HookOutcome::attached)};
    p.chosen = WriteMode::fentry;
    const auto report = rstwatch::format_check_report(p);
    EXPECT_TRUE(report.can_run);
    EXPECT_EQ(line_of(report, "tp_btf/tcp_sendmsg_locked"),
              "tp_btf/tcp_sendmsg_locked: not offered by this kernel (no tcp_sendmsg_locked tracepoint: Linux < "
              "6.16) -- fine: fentry/tcp_sendmsg is used");
    EXPECT_EQ(line_of(report, "fentry/tcp_sendmsg"), "fentry/tcp_sendmsg: supported, chosen");
    EXPECT_EQ(line_of(report, "kprobe/tcp_sendmsg"),
              "kprobe/tcp_sendmsg: supported -- not needed: fentry/tcp_sendmsg comes first");
    EXPECT_NE(text(report).find("(kernel reset reason: no -- fine: reset_reason stays null, the socket state "
                                "classifies)"),
              std::string::npos);
    EXPECT_EQ(report.lines.back(), "result: rstwatch can run here (write hook fentry/tcp_sendmsg)");
}

TEST(CheckReport, LruHashFallbackSaysWhyAndItsSize) {
    CheckProbes p = ci_host();
    p.socket_storage = false;
    p.max_connections = 65536;
    EXPECT_NE(text(rstwatch::format_check_report(p))
                  .find("per-socket state: LRU hash of 65536 entries (--max-connections; socket storage refused "
                        "by this kernel: needs Linux >= 5.11)"),
              std::string::npos);
    p.forced = WriteMode::kprobe;
    p.features.write.kprobe = true;
    p.write_hooks = {hook(WriteMode::tp_btf, HookOutcome::not_tried_forced),
                     hook(WriteMode::fentry, HookOutcome::not_tried_forced),
                     hook(WriteMode::kprobe, HookOutcome::attached)};
    p.chosen = WriteMode::kprobe;
    const auto report = rstwatch::format_check_report(p);
    EXPECT_EQ(line_of(report, "tp_btf/tcp_sendmsg_locked"), "tp_btf/tcp_sendmsg_locked: not tried (--write-hook)");
    EXPECT_NE(text(report).find("(--max-connections; kprobe programs cannot use socket storage)"), std::string::npos);
}

TEST(CheckReport, ForcedHookRefusedCannotRun) {
    CheckProbes p = ci_host();
    p.forced = WriteMode::kprobe;
    p.write_hooks = {hook(WriteMode::tp_btf, HookOutcome::not_tried_forced),
                     hook(WriteMode::fentry, HookOutcome::not_tried_forced),
                     hook(WriteMode::kprobe, HookOutcome::refused, -ENOENT)};
    p.chosen.reset();
    const auto report = rstwatch::format_check_report(p);
    EXPECT_FALSE(report.can_run);
    EXPECT_EQ(line_of(report, "kprobe/tcp_sendmsg"),
              "kprobe/tcp_sendmsg: refused by the kernel (ENOENT) -- not offered by this kernel: no kprobe PMU");
    EXPECT_EQ(report.lines.back(),
              "result: rstwatch cannot run here: no write hook attached: kprobe/tcp_sendmsg refused by the kernel "
              "(ENOENT)");
    EXPECT_EQ(text(report).find("chosen  "), std::string::npos);
}

TEST(CheckReport, BlockingProblemIsTheVerdictAndNoHookIsTried) {
    CheckProbes p = ci_host();
    p.features.btf = false;
    p.features.btf_error = "kernel BTF not available (/sys/kernel/btf/vmlinux missing: needs CONFIG_DEBUG_INFO_BTF=y)";
    for (auto& h : p.write_hooks) h.outcome = HookOutcome::not_tried_blocked;
    p.chosen.reset();
    auto report = rstwatch::format_check_report(p);
    EXPECT_FALSE(report.can_run);
    EXPECT_EQ(line_of(report, "fentry/tcp_sendmsg"), "fentry/tcp_sendmsg: not tried (cannot run, see result)");
    EXPECT_EQ(report.lines.back(), "result: rstwatch cannot run here: " + p.features.btf_error);

    p.features = healthy();
    p.features.privileges = false;
    p.features.privileges_error = "missing CAP_BPF: not in the capability bounding set";
    report = rstwatch::format_check_report(p);
    EXPECT_EQ(line_of(report, "fentry/tcp_sendmsg"), "fentry/tcp_sendmsg: not tried (no privileges, above)");
    EXPECT_EQ(report.lines[1], "privileges     no: missing CAP_BPF: not in the capability bounding set");
    EXPECT_EQ(report.lines.back(), "result: rstwatch cannot run here: missing CAP_BPF: not in the capability bounding set");
}

TEST(CheckReport, AssumedHzIsFlagged) {
    CheckProbes p = ci_host();
    p.features.hz = 1000;
    p.features.hz_source = "assumed (no kernel config, no /proc/timer_list)";
    const auto report = rstwatch::format_check_report(p);
    EXPECT_NE(text(report).find("HZ             1000 (assumed (no kernel config, no /proc/timer_list)) -- idle times "
                                "are wrong unless"),
              std::string::npos);
    EXPECT_NE(text(report).find("idle times in jiffies of 1 ms (HZ 1000)"), std::string::npos);
}

TEST(CheckReport, ErrnoText) {
    EXPECT_EQ(rstwatch::errno_text(-EPERM), "EPERM");
    EXPECT_EQ(rstwatch::errno_text(-ESRCH), "ESRCH");
    EXPECT_EQ(rstwatch::errno_text(-4095), "errno 4095");
}
