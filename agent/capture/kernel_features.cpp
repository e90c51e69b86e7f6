#include "kernel_features.h"

#include "capabilities.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdlib>
#include <cmath>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

namespace rstwatch {
namespace {

struct BtfDeleter {
    void operator()(btf* b) const { btf__free(b); }
};
using BtfPtr = std::unique_ptr<btf, BtfDeleter>;

bool has_typedef(const btf* b, const char* name) {
    return btf__find_by_name_kind(b, name, BTF_KIND_TYPEDEF) > 0;
}

// Parameter count of a tracepoint's BTF prototype (btf_trace_NAME), excluding the
// leading context pointer; -1 if the tracepoint is unknown.
int tracepoint_arity(const btf* b, const char* tracepoint) {
    std::string name = std::string("btf_trace_") + tracepoint;
    int id = btf__find_by_name_kind(b, name.c_str(), BTF_KIND_TYPEDEF);
    if (id <= 0) return -1;
    const btf_type* t = btf__type_by_id(b, id);
    t = btf__type_by_id(b, t->type);  // pointer
    if (!t || !btf_is_ptr(t)) return -1;
    t = btf__type_by_id(b, t->type);  // function prototype
    if (!t || !btf_is_func_proto(t)) return -1;
    return btf_vlen(t) - 1;
}

// Does the kernel know BPF helper `name` (an enumerator of enum bpf_func_id)?
bool has_helper(const btf* b, std::string_view name) {
    int id = btf__find_by_name_kind(b, "bpf_func_id", BTF_KIND_ENUM);
    if (id <= 0) return false;
    const btf_type* t = btf__type_by_id(b, id);
    const struct btf_enum* values = btf_enum(t);
    for (int i = 0; i < btf_vlen(t); ++i)
        if (name == btf__name_by_offset(b, values[i].name_off)) return true;
    return false;
}

std::map<uint32_t, std::string> reset_reason_names(const btf* b) {
    std::map<uint32_t, std::string> names;
    int id = btf__find_by_name_kind(b, "sk_rst_reason", BTF_KIND_ENUM);
    if (id <= 0) return names;
    const btf_type* t = btf__type_by_id(b, id);
    const struct btf_enum* values = btf_enum(t);
    constexpr std::string_view prefix = "SK_RST_REASON_";
    for (int i = 0; i < btf_vlen(t); ++i) {
        std::string name = btf__name_by_offset(b, values[i].name_off);
        if (name.rfind(prefix, 0) == 0) name.erase(0, prefix.size());
        names[static_cast<uint32_t>(values[i].val)] = name;
    }
    return names;
}

std::optional<uint32_t> hz_from_config_text(const std::string& text) {
    std::istringstream lines(text);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.rfind("CONFIG_HZ=", 0) == 0) return static_cast<uint32_t>(std::stoul(line.substr(10)));
    }
    return std::nullopt;
}

std::optional<uint32_t> hz_from_gzip(const char* path) {
    gzFile file = gzopen(path, "rb");
    if (!file) return std::nullopt;
    std::string text;
    char buffer[65536];
    int n;
    while ((n = gzread(file, buffer, sizeof(buffer))) > 0) text.append(buffer, static_cast<size_t>(n));
    gzclose(file);
    return hz_from_config_text(text);
}

// Samples jiffies and the monotonic clock from /proc/timer_list twice.
std::optional<uint32_t> hz_from_timer_list() {
    auto sample = []() -> std::optional<std::pair<double, double>> {
        std::ifstream in("/proc/timer_list");
        std::string line;
        std::optional<double> now_ns, jiffies;
        while (std::getline(in, line) && !(now_ns && jiffies)) {
            if (!now_ns && line.rfind("now at ", 0) == 0) now_ns = std::stod(line.substr(7));
            if (!jiffies && line.rfind("jiffies: ", 0) == 0) jiffies = std::stod(line.substr(9));
        }
        if (!now_ns || !jiffies) return std::nullopt;
        return std::make_pair(*now_ns, *jiffies);
    };
    auto first = sample();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    auto second = sample();
    if (!first || !second || second->first <= first->first) return std::nullopt;
    double measured = (second->second - first->second) / ((second->first - first->first) / 1e9);
    uint32_t best = 0;
    for (uint32_t hz : {100U, 250U, 300U, 1000U}) {
        if (best == 0 || std::fabs(measured - hz) < std::fabs(measured - best)) best = hz;
    }
    return best;
}

}  // namespace

uint32_t detect_hz(std::string* source) {
    if (auto hz = hz_from_gzip("/proc/config.gz")) {
        *source = "/proc/config.gz";
        return *hz;
    }
    utsname u{};
    uname(&u);
    std::string boot_config = std::string("/boot/config-") + u.release;
    std::ifstream boot(boot_config);
    if (boot) {
        std::stringstream text;
        text << boot.rdbuf();
        if (auto hz = hz_from_config_text(text.str())) {
            *source = boot_config;
            return *hz;
        }
    }
    if (auto hz = hz_from_timer_list()) {
        *source = "measured from /proc/timer_list";
        return *hz;
    }
    *source = "assumed (no kernel config, no /proc/timer_list)";
    return 250;
}

KernelFeatures probe_kernel_features() {
    KernelFeatures f;
    utsname u{};
    if (uname(&u) == 0) f.release = u.release;

    // First: the probes below already need CAP_BPF.
    const CapabilityResult caps = acquire_bpf_capabilities();
    f.privileges = caps.ok;
    f.privileges_error = caps.problem;
    if (caps.ok)
        f.privileges_summary =
            capability_list(caps.effective) +
            (caps.raised == 0 ? std::string()
             : caps.raised == caps.effective
                 ? " (raised from the permitted set: the binary's file capabilities)"
                 : " (" + capability_list(caps.raised) + " raised from the permitted set)");
    f.ringbuf = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_RINGBUF, nullptr) == 1;

    BtfPtr vmlinux(btf__load_vmlinux_btf());
    if (!vmlinux) {
        f.btf_error = "kernel BTF not available (/sys/kernel/btf/vmlinux missing: needs CONFIG_DEBUG_INFO_BTF=y)";
    } else {
        f.btf = true;
        const btf* b = vmlinux.get();
        f.write.tp_btf = has_typedef(b, "btf_trace_tcp_sendmsg_locked");
        f.write.fentry = btf__find_by_name_kind(b, "tcp_sendmsg", BTF_KIND_FUNC) > 0;
        f.tcp_fin_function = btf__find_by_name_kind(b, "tcp_fin", BTF_KIND_FUNC) > 0;
        f.typed_socket_reads = has_helper(b, "BPF_FUNC_skc_to_tcp_sock");
        // The path of kernels before 5.9, on demand: to test it, or if a kernel's verifier
        // refused the typed reads.
        if (const char* forced = std::getenv("RSTWATCH_BPF_PROBE_READS"); forced && std::string(forced) == "1") {
            f.probe_reads_forced = f.typed_socket_reads;
            f.typed_socket_reads = false;
        }
        f.state_tracepoint = has_typedef(b, "btf_trace_inet_sock_set_state");
        f.reset_tracepoints =
            has_typedef(b, "btf_trace_tcp_receive_reset") && has_typedef(b, "btf_trace_tcp_send_reset");
        f.destroy_tracepoint = has_typedef(b, "btf_trace_tcp_destroy_sock");
        f.send_reset_has_reason = tracepoint_arity(b, "tcp_send_reset") >= 3;
        f.rst_reason_names = reset_reason_names(b);
    }
    // libbpf attaches kprobes through the kprobe perf PMU.
    f.write.kprobe = access("/sys/bus/event_source/devices/kprobe/type", R_OK) == 0;
    f.hz = detect_hz(&f.hz_source);
    return f;
}

std::string KernelFeatures::blocking_problem() const {
    if (!privileges) return privileges_error;
    if (!btf) return btf_error;
    if (!ringbuf) return "kernel too old: no BPF ring buffer (needs Linux >= 5.8), kernel " + release;
    if (!state_tracepoint || !reset_tracepoints || !destroy_tracepoint)
        return "kernel too old: TCP tracepoints missing (needs Linux >= 5.8), kernel " + release;
    if (!write.tp_btf && !write.fentry && !write.kprobe)
        return "no way to observe application writes: neither tcp_sendmsg_locked tracepoint, fentry nor kprobes";
    return {};
}

}  // namespace rstwatch
