// `rstwatch check`: what this kernel offers, which hooks attach, and whether rstwatch can run.
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.h"

namespace rstwatch {
namespace {

void row(const char* what, const std::string& value) { std::printf("%-14s %s\n", what, value.c_str()); }

const char* yes_no(bool value) { return value ? "yes" : "no"; }

}  // namespace

int run_check(const LoaderOptions& options) {
    KernelFeatures features = probe_kernel_features();
    row("kernel", features.release);
    row("privileges", features.privileges ? "yes" : "no: " + features.privileges_error);
    row("BTF", features.btf ? "yes" : "no: " + features.btf_error);
    row("ring buffer", yes_no(features.ringbuf));
    row("HZ", std::to_string(features.hz) + " (" + features.hz_source + ")");
    row("state hook", std::string("tp_btf/inet_sock_set_state: ") +
                          (features.state_tracepoint ? "supported" : "missing"));
    row("reset hooks", std::string("tp_btf/tcp_receive_reset, tp_btf/tcp_send_reset: ") +
                           (features.reset_tracepoints ? "supported" : "missing") +
                           (features.send_reset_has_reason ? " (kernel reset reason: yes)"
                                                           : " (kernel reset reason: no)"));
    row("destroy hook", std::string("tp_btf/tcp_destroy_sock: ") +
                            (features.destroy_tracepoint ? "supported" : "missing"));

    std::string error;
    WriteModeChoice choice;
    std::unique_ptr<BpfSession> session = BpfSession::open(options, features, {}, &error, &choice);

    auto status_of = [&](WriteMode mode, bool offered) -> std::string {
        if (choice.chosen == mode) return "supported, chosen";
        for (const auto& [refused, err] : choice.refused)
            if (refused == mode) return std::string("refused by the kernel (") + strerror(-err) + ")";
        if (!offered) return "not offered by this kernel";
        return "supported, not needed";
    };
    row("write hooks", std::string(write_mode_name(WriteMode::tp_btf)) + ": " +
                           status_of(WriteMode::tp_btf, features.write.tp_btf));
    row("", std::string(write_mode_name(WriteMode::fentry)) + ": " +
                status_of(WriteMode::fentry, features.write.fentry));
    row("", std::string(write_mode_name(WriteMode::kprobe)) + ": " +
                status_of(WriteMode::kprobe, features.write.kprobe));
    row("FIN hook", std::string("tcp_fin: optional, not used (the ESTABLISHED->CLOSE_WAIT transition is "
                                "the portable signal)"));
    if (!session) {
        std::printf("result: rstwatch cannot run here: %s\n", error.c_str());
        return kExitFailure;
    }
    std::printf("result: rstwatch can run here (write hook %s)\n",
                std::string(write_mode_name(session->write_mode())).c_str());
    return kExitOk;
}

}  // namespace rstwatch
