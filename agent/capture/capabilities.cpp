// Raising the BPF capabilities from the permitted set; see capabilities.h.
#include "capabilities.h"

#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>
#include <vector>

namespace rstwatch {
namespace {

const char* cap_name(int cap) {
    switch (cap) {
        case kCapSysAdmin: return "CAP_SYS_ADMIN";
        case kCapSysResource: return "CAP_SYS_RESOURCE";
        case kCapPerfmon: return "CAP_PERFMON";
        case kCapBpf: return "CAP_BPF";
        default: return nullptr;
    }
}

// Capability names as Kubernetes and docker/podman spell them ("BPF, PERFMON").
std::string short_list(uint64_t mask) {
    std::string out;
    for (int cap : {kCapBpf, kCapPerfmon, kCapSysResource, kCapSysAdmin}) {
        if ((mask & cap_bit(cap)) == 0) continue;
        if (!out.empty()) out += ", ";
        out += cap_name(cap) + 4;  // without "CAP_"
    }
    return out;
}

std::string lower_list(uint64_t mask) {
    std::string out;
    for (int cap : {kCapBpf, kCapPerfmon, kCapSysResource, kCapSysAdmin}) {
        if ((mask & cap_bit(cap)) == 0) continue;
        if (!out.empty()) out += ",";
        std::string name = cap_name(cap);
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        out += name;
    }
    return out;
}

bool set_effective(uint64_t effective, uint64_t permitted) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    __user_cap_data_struct current[2]{};
    if (syscall(SYS_capget, &header, current) != 0) return false;
    data[0].effective = static_cast<uint32_t>(effective);
    data[1].effective = static_cast<uint32_t>(effective >> 32);
    data[0].permitted = static_cast<uint32_t>(permitted);
    data[1].permitted = static_cast<uint32_t>(permitted >> 32);
    data[0].inheritable = current[0].inheritable;
    data[1].inheritable = current[1].inheritable;
    return syscall(SYS_capset, &header, data) == 0;
}

// A one-element array map: the smallest bpf() call that needs CAP_BPF (or an unprivileged
// BPF sysctl) and that a seccomp profile or LSM can refuse.
int probe_bpf_syscall() {
    union bpf_attr attr;
    std::memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_ARRAY;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = 1;
    const long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr);
    if (fd < 0) return errno;
    close(static_cast<int>(fd));
    return 0;
}

}  // namespace

std::string capability_list(uint64_t mask) {
    std::string out;
    for (int cap : {kCapBpf, kCapPerfmon, kCapSysResource, kCapSysAdmin}) {
        if ((mask & cap_bit(cap)) == 0) continue;
        if (!out.empty()) out += ", ";
        out += cap_name(cap);
    }
    return out;
}

ProcessCapabilities read_process_capabilities() {
    ProcessCapabilities now;
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (syscall(SYS_capget, &header, data) == 0) {
        now.effective = data[0].effective | (static_cast<uint64_t>(data[1].effective) << 32);
        now.permitted = data[0].permitted | (static_cast<uint64_t>(data[1].permitted) << 32);
    }
    for (int cap = 0; cap < 64; ++cap) {
        const int in = prctl(PR_CAPBSET_READ, cap, 0, 0, 0);
        if (in < 0) break;  // EINVAL: beyond the kernel's last capability
        if (in == 1) now.bounding |= cap_bit(cap);
    }
    now.no_new_privs = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1;
    now.euid = static_cast<uint32_t>(geteuid());
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("Seccomp:", 0) == 0) now.seccomp_mode = std::atoi(line.c_str() + 8);
    }
    char exe[PATH_MAX];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    now.binary = n > 0 ? std::string(exe, static_cast<size_t>(n)) : "rstwatch";
    return now;
}

CapabilityPlan plan_capabilities(const ProcessCapabilities& now, uint64_t required) {
    CapabilityPlan plan;
    const uint64_t bpf_pair = cap_bit(kCapBpf) | cap_bit(kCapPerfmon);
    auto obtainable = [&](uint64_t mask) { return (now.permitted & mask) == mask; };
    if ((required & bpf_pair) == bpf_pair && !obtainable(bpf_pair) && obtainable(cap_bit(kCapSysAdmin))) {
        // CAP_SYS_ADMIN implies both for bpf() and perf_event_open().
        required = (required & ~bpf_pair) | cap_bit(kCapSysAdmin);
    }
    plan.raise = required & now.permitted & ~now.effective;
    plan.missing = required & ~now.permitted;
    if (plan.missing == 0) return plan;

    // Group the missing ones by why they are missing; one line in all.
    const uint64_t not_bounded = plan.missing & ~now.bounding;
    const uint64_t ignored_by_nnp = now.no_new_privs ? plan.missing & now.bounding : 0;
    const uint64_t not_granted = plan.missing & now.bounding & ~ignored_by_nnp;
    auto them = [](uint64_t mask) { return __builtin_popcountll(mask) > 1 ? "them" : "it"; };
    std::vector<std::pair<uint64_t, std::string>> reasons;
    if (not_bounded)
        reasons.emplace_back(not_bounded, std::string("not in the capability bounding set: the container was not granted ") +
                                              them(not_bounded) + " (Kubernetes: add " + short_list(not_bounded) +
                                              " to securityContext.capabilities.add; docker/podman: --cap-add " +
                                              short_list(not_bounded) + ")");
    if (ignored_by_nnp)
        reasons.emplace_back(ignored_by_nnp, "no_new_privs is set, so execve ignored the file capabilities of " +
                                                 now.binary +
                                                 " (Kubernetes: set securityContext.allowPrivilegeEscalation: true; "
                                                 "docker/podman: drop --security-opt no-new-privileges)");
    if (not_granted)
        reasons.emplace_back(not_granted, "uid " + std::to_string(now.euid) + " holds none and " + now.binary +
                                              " carries no file capability for " + them(not_granted) +
                                              " (run as root, or setcap " + lower_list(not_granted) + "=p " +
                                              now.binary + " as deploy/Dockerfile does)");
    std::string why;
    for (const auto& [mask, text] : reasons) {
        if (!why.empty()) why += "; ";
        why += reasons.size() > 1 ? capability_list(mask) + ": " + text : text;
    }
    plan.problem = "missing " + capability_list(plan.missing) + ": " + why;
    return plan;
}

std::string explain_bpf_refusal(const ProcessCapabilities& now, int error) {
    const std::string refused = std::string("bpf() refused with ") + (error == ENOSYS ? "ENOSYS" : "EPERM");
    if (now.seccomp_mode == 2)
        return refused + " although " + capability_list(now.effective & (cap_bit(kCapBpf) | cap_bit(kCapSysAdmin))) +
               " is effective: the seccomp profile blocks it (the default profile of CRI-O and podman allows bpf() "
               "and perf_event_open() only with CAP_SYS_ADMIN; containerd's and Docker's allow them with CAP_BPF "
               "and CAP_PERFMON): use a profile that allows them, docs/deploy.md#seccomp";
    return refused + " although " +
           capability_list(now.effective & (cap_bit(kCapBpf) | cap_bit(kCapSysAdmin))) +
           " is effective and no seccomp filter is active: a security module (SELinux, AppArmor, lockdown) or "
           "kernel.unprivileged_bpf_disabled refuses it";
}

CapabilityResult acquire_bpf_capabilities() {
    CapabilityResult result;
    ProcessCapabilities now = read_process_capabilities();
    const CapabilityPlan plan = plan_capabilities(now, cap_bit(kCapBpf) | cap_bit(kCapPerfmon));
    if (!plan.problem.empty()) {
        result.problem = plan.problem;
        return result;
    }
    if (plan.raise != 0) {
        if (!set_effective(now.effective | plan.raise, now.permitted)) {
            result.problem = "cannot raise " + capability_list(plan.raise) + " from the permitted set: capset: " +
                             std::strerror(errno);
            return result;
        }
        result.raised |= plan.raise;
        now.effective |= plan.raise;
    }
    // ENOSYS from bpf() on a kernel with BTF can only be a seccomp profile's default action.
    if (const int refused = probe_bpf_syscall(); refused == EPERM || (refused == ENOSYS && now.seccomp_mode == 2)) {
        result.problem = explain_bpf_refusal(now, refused);
        return result;
    }

    // Before Linux 5.11 BPF maps are charged to RLIMIT_MEMLOCK; libbpf raises the limit to
    // unlimited (memcg accounting came with bpf_ktime_get_coarse_ns, which is how libbpf tells).
    rlimit memlock{};
    const bool memcg_accounting =
        libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SKB, BPF_FUNC_ktime_get_coarse_ns, nullptr) == 1;
    if (!memcg_accounting && getrlimit(RLIMIT_MEMLOCK, &memlock) == 0 && memlock.rlim_cur != RLIM_INFINITY) {
        const CapabilityPlan memlock_plan = plan_capabilities(now, cap_bit(kCapSysResource));
        if (!memlock_plan.problem.empty()) {
            result.problem = memlock_plan.problem + " (needed on this kernel: it charges BPF maps to RLIMIT_MEMLOCK, " +
                             std::to_string(memlock.rlim_cur / 1024) + " KiB here, as kernels before 5.11 do; "
                             "deploy/components/memlock grants it)";
            return result;
        }
        if (memlock_plan.raise != 0) {
            if (!set_effective(now.effective | memlock_plan.raise, now.permitted)) {
                result.problem = std::string("cannot raise CAP_SYS_RESOURCE: capset: ") + std::strerror(errno);
                return result;
            }
            result.raised |= memlock_plan.raise;
            now.effective |= memlock_plan.raise;
        }
    }
    result.ok = true;
    result.effective =
        now.effective & (cap_bit(kCapBpf) | cap_bit(kCapPerfmon) | cap_bit(kCapSysAdmin) | cap_bit(kCapSysResource));
    return result;
}

}  // namespace rstwatch
