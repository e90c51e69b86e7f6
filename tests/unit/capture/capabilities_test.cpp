// The capability planner: what is raised from the permitted set, and the one line that names a
// missing capability, why it is missing and the field that grants it.
#include "capabilities.h"

#include <gtest/gtest.h>

#include <cerrno>

#include <string>

using namespace rstwatch;

namespace {

constexpr uint64_t kBpf = cap_bit(kCapBpf);
constexpr uint64_t kPerfmon = cap_bit(kCapPerfmon);
constexpr uint64_t kSysAdmin = cap_bit(kCapSysAdmin);
constexpr uint64_t kSysResource = cap_bit(kCapSysResource);
constexpr uint64_t kAllCaps = (1ULL << 41) - 1;

// The DaemonSet: uid 65532, bounding set BPF + PERFMON (+ SYS_RESOURCE where granted), file
// capabilities "=p" so the permitted set is file & bounding, nothing effective at start.
ProcessCapabilities daemonset(uint64_t bounding) {
    ProcessCapabilities p;
    p.bounding = bounding;
    p.permitted = bounding & (kBpf | kPerfmon | kSysResource);
    p.effective = 0;
    p.euid = 65532;
    p.seccomp_mode = 2;
    p.binary = "/usr/local/bin/rstwatch";
    return p;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(Capabilities, PermittedOnlyFileCapabilitiesAreRaised) {
    const auto plan = plan_capabilities(daemonset(kBpf | kPerfmon), kBpf | kPerfmon);
    EXPECT_EQ(plan.raise, kBpf | kPerfmon);
    EXPECT_EQ(plan.missing, 0u);
    EXPECT_TRUE(plan.problem.empty()) << plan.problem;
}

TEST(Capabilities, AlreadyEffectiveNeedsNothing) {
    ProcessCapabilities root;
    root.effective = root.permitted = root.bounding = kAllCaps;
    const auto plan = plan_capabilities(root, kBpf | kPerfmon);
    EXPECT_EQ(plan.raise, 0u);
    EXPECT_EQ(plan.missing, 0u);
}

TEST(Capabilities, MissingFromTheBoundingSetNamesCapabilitiesAdd) {
    const auto plan = plan_capabilities(daemonset(kPerfmon), kBpf | kPerfmon);
    EXPECT_EQ(plan.missing, kBpf);
    EXPECT_EQ(plan.raise, kPerfmon);
    EXPECT_TRUE(contains(plan.problem, "missing CAP_BPF: not in the capability bounding set")) << plan.problem;
    EXPECT_TRUE(contains(plan.problem, "add BPF to securityContext.capabilities.add")) << plan.problem;
    EXPECT_TRUE(contains(plan.problem, "--cap-add BPF")) << plan.problem;
    EXPECT_FALSE(contains(plan.problem, "\n"));
}

TEST(Capabilities, NoNewPrivsNamesAllowPrivilegeEscalation) {
    auto p = daemonset(kBpf | kPerfmon);
    p.no_new_privs = true;
    p.permitted = 0;  // execve ignored the file capabilities
    const auto plan = plan_capabilities(p, kBpf | kPerfmon);
    EXPECT_EQ(plan.missing, kBpf | kPerfmon);
    EXPECT_TRUE(contains(plan.problem, "missing CAP_BPF, CAP_PERFMON: no_new_privs is set")) << plan.problem;
    EXPECT_TRUE(contains(plan.problem, "securityContext.allowPrivilegeEscalation: true")) << plan.problem;
    EXPECT_TRUE(contains(plan.problem, "/usr/local/bin/rstwatch")) << plan.problem;
}

TEST(Capabilities, UnprivilegedUserWithoutFileCapabilitiesNamesSetcap) {
    ProcessCapabilities p;
    p.bounding = kAllCaps;
    p.euid = 1000;
    p.binary = "/opt/rstwatch";
    const auto plan = plan_capabilities(p, kBpf | kPerfmon);
    EXPECT_EQ(plan.missing, kBpf | kPerfmon);
    EXPECT_TRUE(contains(plan.problem, "uid 1000")) << plan.problem;
    EXPECT_TRUE(contains(plan.problem, "setcap cap_bpf,cap_perfmon=p /opt/rstwatch")) << plan.problem;
}

TEST(Capabilities, MixedReasonsStayOneLine) {
    auto p = daemonset(kPerfmon);
    p.no_new_privs = true;
    p.permitted = 0;
    const auto plan = plan_capabilities(p, kBpf | kPerfmon);
    EXPECT_EQ(plan.missing, kBpf | kPerfmon);
    EXPECT_TRUE(contains(plan.problem, "missing CAP_BPF, CAP_PERFMON: CAP_BPF: not in the capability bounding set"))
        << plan.problem;
    EXPECT_TRUE(contains(plan.problem, "; CAP_PERFMON: no_new_privs")) << plan.problem;
    EXPECT_FALSE(contains(plan.problem, "\n"));
}

TEST(Capabilities, SysAdminStandsInForBpfAndPerfmon) {
    // A runtime that predates CAP_BPF: privileged containers get CAP_SYS_ADMIN only.
    ProcessCapabilities p;
    p.bounding = p.permitted = kSysAdmin;
    const auto plan = plan_capabilities(p, kBpf | kPerfmon);
    EXPECT_EQ(plan.missing, 0u) << plan.problem;
    EXPECT_EQ(plan.raise, kSysAdmin);
}

TEST(Capabilities, SysResourceOnlyWhenAskedAndNamesTheComponent) {
    // Not granted (the default DaemonSet): planning BPF + PERFMON does not mention it.
    auto p = daemonset(kBpf | kPerfmon);
    EXPECT_EQ(plan_capabilities(p, kBpf | kPerfmon).missing, 0u);
    const auto plan = plan_capabilities(p, kSysResource);
    EXPECT_EQ(plan.missing, kSysResource);
    EXPECT_TRUE(contains(plan.problem, "add SYS_RESOURCE to securityContext.capabilities.add")) << plan.problem;
    // Granted: raised.
    EXPECT_EQ(plan_capabilities(daemonset(kBpf | kPerfmon | kSysResource), kSysResource).raise, kSysResource);
}

TEST(Capabilities, SeccompRefusalNamesTheProfile) {
    auto p = daemonset(kBpf | kPerfmon);
    p.effective = kBpf | kPerfmon;
    const std::string with_filter = explain_bpf_refusal(p, EPERM);
    EXPECT_TRUE(contains(with_filter, "seccomp profile")) << with_filter;
    EXPECT_TRUE(contains(with_filter, "CAP_BPF")) << with_filter;
    EXPECT_TRUE(contains(with_filter, "docs/deploy.md#seccomp")) << with_filter;
    p.seccomp_mode = 0;
    EXPECT_TRUE(contains(explain_bpf_refusal(p, ENOSYS), "bpf() refused with ENOSYS"));
    const std::string without = explain_bpf_refusal(p, EPERM);
    EXPECT_TRUE(contains(without, "no seccomp filter")) << without;
}

TEST(Capabilities, ThisProcessIsReadConsistently) {
    const auto now = read_process_capabilities();
    EXPECT_EQ(now.effective & ~now.permitted, 0u) << "effective must be a subset of permitted";
    EXPECT_NE(now.bounding, 0u);
    EXPECT_FALSE(now.binary.empty());
}
