// What the running kernel offers rstwatch, found from BTF and the kernel's
// interfaces (never from the version number: distributions backport).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "write_mode.h"

namespace rstwatch {

struct KernelFeatures {
    std::string release;               // uname -r, for messages only
    bool btf = false;                  // /sys/kernel/btf/vmlinux loads
    std::string btf_error;
    bool ringbuf = false;              // BPF_MAP_TYPE_RINGBUF (Linux >= 5.8)
    bool privileges = false;           // CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) effective, bpf() allowed
    std::string privileges_error;      // one line: what is missing, why, and what grants it
    std::string privileges_summary;    // what is effective (and what was raised)
    WriteHookSupport write;            // candidate write hooks
    bool send_reset_has_reason = false;  // tcp_send_reset carries enum sk_rst_reason (Linux >= 6.10)
    bool state_tracepoint = false;     // sock:inet_sock_set_state
    bool reset_tracepoints = false;    // tcp:tcp_receive_reset and tcp:tcp_send_reset
    bool destroy_tracepoint = false;   // tcp:tcp_destroy_sock
    bool tcp_fin_function = false;     // tcp_fin in BTF (optional FIN hook where fentry/kprobe work)
    bool typed_socket_reads = false;   // bpf_skc_to_tcp_sock (Linux >= 5.9): hooks read sockets with plain loads
    bool probe_reads_forced = false;   // RSTWATCH_BPF_PROBE_READS=1: probe reads although the helper is there
    uint32_t hz = 0;                   // kernel CONFIG_HZ (jiffy length)
    std::string hz_source;
    std::map<uint32_t, std::string> rst_reason_names;  // enum sk_rst_reason, prefix stripped

    // Empty when rstwatch can run here; otherwise the reason it cannot.
    std::string blocking_problem() const;
};

// Raises the BPF capabilities from the permitted set first (capabilities.h): call before
// starting threads.
KernelFeatures probe_kernel_features();

// CONFIG_HZ from /proc/config.gz or /boot/config-RELEASE, else measured from /proc/timer_list.
uint32_t detect_hz(std::string* source);

}  // namespace rstwatch
