// Acquiring the capabilities rstwatch needs to load and attach its BPF programs, and saying
// exactly what is missing when it cannot.
//
// The image gives /usr/local/bin/rstwatch *permitted-only* file capabilities
// (`setcap cap_bpf,cap_perfmon,cap_sys_resource=p`): execve never fails because of them (with
// the effective bit set, the kernel refuses execve when any file capability is missing from the
// bounding set, so a container without CAP_SYS_RESOURCE could not even start the binary), and
// the process starts with whatever subset the container runtime's bounding set allows. rstwatch
// then raises into its effective set what it needs from what it was permitted, before any
// thread exists, and reports the first missing capability with the reason it is missing and the
// manifest field that grants it:
//   - not in the bounding set: the container was not granted it
//     (securityContext.capabilities.add);
//   - no_new_privs set: execve ignored the file capabilities
//     (securityContext.allowPrivilegeEscalation: false);
//   - otherwise: neither root nor file capabilities on the binary.
// CAP_SYS_RESOURCE is needed only where the kernel charges BPF memory to RLIMIT_MEMLOCK (before
// Linux 5.11; libbpf then raises the limit) and the limit is not already unlimited.
#pragma once

#include <cstdint>
#include <string>

namespace rstwatch {

inline constexpr int kCapSysAdmin = 21;
inline constexpr int kCapSysResource = 24;
inline constexpr int kCapPerfmon = 38;
inline constexpr int kCapBpf = 39;

constexpr uint64_t cap_bit(int cap) { return 1ULL << cap; }

// The calling thread's capability sets and what decides whether file capabilities apply.
struct ProcessCapabilities {
    uint64_t effective = 0;
    uint64_t permitted = 0;
    uint64_t bounding = 0;
    bool no_new_privs = false;
    uint32_t euid = 0;
    int seccomp_mode = 0;  // /proc/self/status Seccomp: 0 off, 1 strict, 2 filter
    std::string binary;    // /proc/self/exe, for messages
};

ProcessCapabilities read_process_capabilities();

struct CapabilityPlan {
    uint64_t raise = 0;    // permitted but not effective: to be raised
    uint64_t missing = 0;  // neither: cannot be had
    std::string problem;   // one line when missing != 0
};

// Pure: what to raise and what is missing (and why) for `required`, where `purpose` says why
// they are needed (appended to the problem line). CAP_SYS_ADMIN stands in for CAP_BPF +
// CAP_PERFMON when those cannot be had (runtimes that predate CAP_BPF).
CapabilityPlan plan_capabilities(const ProcessCapabilities& now, uint64_t required);

// "CAP_BPF, CAP_PERFMON".
std::string capability_list(uint64_t mask);

struct CapabilityResult {
    bool ok = false;
    uint64_t raised = 0;     // raised from permitted into effective
    uint64_t effective = 0;  // the relevant capabilities now effective
    std::string problem;     // one line when !ok
};

// Raises CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) on the calling thread, and
// CAP_SYS_RESOURCE where BPF memory is charged to a limited RLIMIT_MEMLOCK. Call before any
// other thread starts (threads inherit the calling thread's sets).
CapabilityResult acquire_bpf_capabilities();

// When a bpf() call failed with `error` (EPERM, or ENOSYS under a seccomp filter) although the
// capabilities are effective: the reason in one line (the seccomp profile when one is active,
// else a security module or sysctl).
std::string explain_bpf_refusal(const ProcessCapabilities& now, int error);

}  // namespace rstwatch
