// Capability drop on every thread of the process; see privileges.h.
#include "privileges.h"

#include <dirent.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <pthread.h>
#include <set>
#include <thread>
#include <vector>

#ifndef CAP_BPF
#define CAP_BPF 39
#endif
#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif

namespace rstwatch {
namespace {

constexpr int kMaxThreads = 4096;

struct Caps {
    uint64_t effective = 0;
    uint64_t permitted = 0;
    uint64_t inheritable = 0;
};

bool get_caps(Caps* out) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    if (syscall(SYS_capget, &header, data) != 0) return false;
    out->effective = data[0].effective | (static_cast<uint64_t>(data[1].effective) << 32);
    out->permitted = data[0].permitted | (static_cast<uint64_t>(data[1].permitted) << 32);
    out->inheritable = data[0].inheritable | (static_cast<uint64_t>(data[1].inheritable) << 32);
    return true;
}

// Only raw system calls: runs in a signal handler.
int set_caps(const Caps& caps) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};  // pid 0: this thread
    __user_cap_data_struct data[2]{};
    data[0].effective = static_cast<uint32_t>(caps.effective);
    data[1].effective = static_cast<uint32_t>(caps.effective >> 32);
    data[0].permitted = static_cast<uint32_t>(caps.permitted);
    data[1].permitted = static_cast<uint32_t>(caps.permitted >> 32);
    data[0].inheritable = static_cast<uint32_t>(caps.inheritable);
    data[1].inheritable = static_cast<uint32_t>(caps.inheritable >> 32);
    return syscall(SYS_capset, &header, data) == 0 ? 0 : errno;
}

// What every thread is switched to (written before any thread is signalled).
Caps g_target;
bool g_drop_bounding = false;
std::atomic<int> g_ack_count{0};
std::array<std::atomic<pid_t>, kMaxThreads> g_acked{};
std::atomic<int> g_failed_errno{0};

// Async-signal-safe: prctl, capset and errno only.
void apply_on_this_thread() {
    const int saved = errno;
    int error = 0;
    if (g_drop_bounding) {
        for (int cap = 0; cap < 64; ++cap) {
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) error = errno;
        }
    }
    (void)prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);  // EINVAL before 4.3: none to clear
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) error = errno;
    if (int e = set_caps(g_target); e != 0) error = e;
    if (error != 0) g_failed_errno.store(error);
    errno = saved;
}

void on_drop_signal(int) {
    apply_on_this_thread();
    const int slot = g_ack_count.fetch_add(1);
    if (slot < kMaxThreads) g_acked[static_cast<size_t>(slot)].store(static_cast<pid_t>(syscall(SYS_gettid)));
}

std::vector<pid_t> thread_ids() {
    std::vector<pid_t> out;
    DIR* dir = opendir("/proc/self/task");
    if (dir == nullptr) return out;
    while (dirent* entry = readdir(dir)) {
        if (entry->d_name[0] < '0' || entry->d_name[0] > '9') continue;
        out.push_back(static_cast<pid_t>(std::atoi(entry->d_name)));
    }
    closedir(dir);
    return out;
}

bool acked(pid_t tid) {
    const int n = std::min(g_ack_count.load(), kMaxThreads);
    for (int i = 0; i < n; ++i)
        if (g_acked[static_cast<size_t>(i)].load() == tid) return true;
    return false;
}

bool thread_gone(pid_t tid) { return access(("/proc/self/task/" + std::to_string(tid)).c_str(), F_OK) != 0; }

struct ThreadCreds {
    uint64_t eff = 0, prm = 0, inh = 0, bnd = 0, amb = 0;
    int no_new_privs = -1;
};

std::optional<ThreadCreds> read_thread_creds(pid_t tid) {
    std::ifstream in("/proc/self/task/" + std::to_string(tid) + "/status");
    if (!in) return std::nullopt;
    ThreadCreds c;
    std::string line;
    auto hex = [](const std::string& l) { return std::strtoull(l.c_str() + l.find(':') + 1, nullptr, 16); };
    while (std::getline(in, line)) {
        if (line.rfind("CapEff:", 0) == 0) c.eff = hex(line);
        else if (line.rfind("CapPrm:", 0) == 0) c.prm = hex(line);
        else if (line.rfind("CapInh:", 0) == 0) c.inh = hex(line);
        else if (line.rfind("CapBnd:", 0) == 0) c.bnd = hex(line);
        else if (line.rfind("CapAmb:", 0) == 0) c.amb = hex(line);
        else if (line.rfind("NoNewPrivs:", 0) == 0) c.no_new_privs = std::atoi(line.c_str() + 11);
    }
    return c;
}

}  // namespace

std::string capability_names(uint64_t mask) {
    static const char* const kNames[] = {
        "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
        "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
        "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
        "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
        "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
        "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore"};
    if (mask == 0) return "none";
    std::string out;
    for (int cap = 0; cap < 64; ++cap) {
        if ((mask & (1ULL << cap)) == 0) continue;
        if (!out.empty()) out += ',';
        out += cap < static_cast<int>(std::size(kNames)) ? std::string("cap_") + kNames[cap]
                                                          : "cap_" + std::to_string(cap);
    }
    return out;
}

bool bpf_commands_need_capability() {
    int error = 0;
    std::thread probe([&] {
        Caps caps;
        if (!get_caps(&caps)) return;
        caps.effective = 0;  // this thread only; it ends right after
        if (set_caps(caps) != 0) return;
        union bpf_attr attr;
        std::memset(&attr, 0, sizeof attr);
        attr.map_fd = static_cast<__u32>(-1);
        // A bad fd: EBADF when the command is let through, EPERM when bpf() itself is gated.
        if (syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, sizeof attr) != 0) error = errno;
    });
    probe.join();
    return error == EPERM;
}

PrivilegeDrop drop_privileges() {
    PrivilegeDrop result;
    Caps now;
    if (!get_caps(&now)) {
        result.error = std::string("capget: ") + std::strerror(errno);
        return result;
    }
    uint64_t keep = 0;
    if (bpf_commands_need_capability()) {
        if (now.permitted & (1ULL << CAP_BPF))
            keep = 1ULL << CAP_BPF;
        else if (now.permitted & (1ULL << CAP_SYS_ADMIN))
            keep = 1ULL << CAP_SYS_ADMIN;
    }
    g_target = Caps{keep & now.permitted, keep & now.permitted, 0};
    g_drop_bounding = (now.effective & (1ULL << CAP_SETPCAP)) != 0;
    g_ack_count.store(0);
    g_failed_errno.store(0);

    const int signo = SIGRTMIN + 5;
    struct sigaction action {}, previous {};
    action.sa_handler = on_drop_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    if (sigaction(signo, &action, &previous) != 0) {
        result.error = std::string("sigaction: ") + std::strerror(errno);
        return result;
    }
    sigset_t unblock;
    sigemptyset(&unblock);
    sigaddset(&unblock, signo);
    pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);

    const pid_t self = static_cast<pid_t>(syscall(SYS_gettid));
    std::set<pid_t> signalled{self};
    std::string stuck;
    // Threads may start while we go: repeat until a pass finds none new.
    for (int pass = 0; pass < 20; ++pass) {
        std::vector<pid_t> fresh;
        for (pid_t tid : thread_ids())
            if (signalled.insert(tid).second) fresh.push_back(tid);
        if (fresh.empty()) break;
        for (pid_t tid : fresh) syscall(SYS_tgkill, getpid(), tid, signo);
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
        for (;;) {
            bool waiting = false;
            for (pid_t tid : fresh) waiting = waiting || (!acked(tid) && !thread_gone(tid));
            if (!waiting) break;
            if (std::chrono::steady_clock::now() >= deadline) {
                for (pid_t tid : fresh)
                    if (!acked(tid) && !thread_gone(tid)) stuck += (stuck.empty() ? "" : ",") + std::to_string(tid);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    }
    apply_on_this_thread();
    sigaction(signo, &previous, nullptr);

    result.dropped = now.permitted & ~g_target.permitted;
    result.kept = g_target.permitted;
    result.bounding_emptied = g_drop_bounding;
    if (!stuck.empty()) {
        result.error = "threads " + stuck + " did not take the capability change";
        return result;
    }
    if (int e = g_failed_errno.load(); e != 0) {
        result.error = std::string("prctl/capset failed: ") + std::strerror(e);
        return result;
    }
    // Check every thread as the kernel reports it.
    for (pid_t tid : thread_ids()) {
        auto creds = read_thread_creds(tid);
        if (!creds) continue;  // ended meanwhile
        ++result.threads;
        if (creds->eff != g_target.effective || creds->prm != g_target.permitted || creds->inh != 0 ||
            creds->amb != 0 || (g_drop_bounding && creds->bnd != 0) || creds->no_new_privs != 1) {
            char text[200];
            std::snprintf(text, sizeof text,
                          "thread %d still has CapEff %016llx CapPrm %016llx CapBnd %016llx NoNewPrivs %d", tid,
                          static_cast<unsigned long long>(creds->eff), static_cast<unsigned long long>(creds->prm),
                          static_cast<unsigned long long>(creds->bnd), creds->no_new_privs);
            result.error = text;
            return result;
        }
    }
    result.ok = true;
    return result;
}

}  // namespace rstwatch
