// Dropping the agent's capabilities once the BPF programs are attached and the HTTP server is
// bound. From then on the agent needs no privilege: the ring buffer is polled and the per-CPU
// counters map is read through file descriptors that are already open, and the HTTP sockets are
// bound. What stays possible is only what those open descriptors allow.
//
// Linux credentials are per thread (capset(2) changes only the calling thread), and the agent
// already runs the HTTP server's and the Kubernetes watcher's threads at that point. drop_privileges()
// therefore applies the change on every thread of the process, the way glibc's setuid() does:
// it signals each other thread (a real-time signal whose handler makes the raw system calls)
// and waits for each to confirm, then checks /proc/self/task/*/status. Threads created later
// inherit the dropped credentials.
//
// On each thread:
//   - the bounding set is emptied (prctl PR_CAPBSET_DROP), when the process holds CAP_SETPCAP
//     (root); a non-root agent with file capabilities (the DaemonSet) cannot and need not: the
//     container runtime already limits its bounding set to the capabilities it was given, and
//     with no_new_privs an execve can never raise the permitted set again;
//   - the ambient set is cleared;
//   - no_new_privs is set (execve never grants privileges again: setuid, file capabilities);
//   - the effective, permitted and inheritable sets are emptied (capset).
//
// The one exception: kernels before 6.5 refuse every bpf() command, including lookups in an
// already-open map, to a caller without CAP_BPF (or CAP_SYS_ADMIN) while
// kernel.unprivileged_bpf_disabled is set (the default on most distributions). The kernel's
// answer is probed first (bpf_commands_need_capability()); when the gate is there CAP_BPF (or
// CAP_SYS_ADMIN, whichever the process holds) is kept in the effective and permitted sets and
// everything else goes.
#pragma once

#include <cstdint>
#include <string>

namespace rstwatch {

struct PrivilegeDrop {
    bool ok = false;          // every thread reached the target credentials
    uint64_t dropped = 0;     // capabilities removed from the permitted set (bit = CAP_*)
    uint64_t kept = 0;        // capabilities left in the effective/permitted sets
    bool bounding_emptied = false;
    int threads = 0;          // threads changed (this one included)
    std::string error;        // when !ok: one line
};

// Whether bpf() on an already-open map fd needs a capability on this kernel (pre-6.5 kernels
// with kernel.unprivileged_bpf_disabled != 0). Probed on a short-lived thread that drops its
// own effective set, so the process is unchanged.
bool bpf_commands_need_capability();

// Drops every capability (see above) on every thread of the process.
PrivilegeDrop drop_privileges();

// "cap_bpf,cap_perfmon" ("none" for 0).
std::string capability_names(uint64_t mask);

}  // namespace rstwatch
