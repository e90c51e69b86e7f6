// `rstwatch check`: what this kernel offers, which hooks attach, and whether rstwatch can run.
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "commands.h"
#include "flags.h"

namespace rstwatch {
namespace {

void row(const char* what, const std::string& value) { std::printf("%-14s %s\n", what, value.c_str()); }

const char* yes_no(bool value) { return value ? "yes" : "no"; }

}  // namespace

int run_check(const LoaderOptions& options) {
    KernelFeatures features = probe_kernel_features();
    row("kernel", features.release);
    row("privileges", features.privileges ? "yes: " + features.privileges_summary : "no: " + features.privileges_error);
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

    // Every write hook is really tried (load + attach, then detach), so the report shows
    // what this kernel refuses, not only what its BTF mentions.
    std::string error;
    std::optional<WriteMode> chosen;
    auto try_mode = [&](WriteMode mode, bool offered) -> std::string {
        if (options.write_mode && *options.write_mode != mode) return "not tried (--write-hook)";
        if (!offered && !options.write_mode) return "not offered by this kernel";
        if (!features.privileges) return "not tried (no privileges, above)";
        LoaderOptions single = options;
        single.write_mode = mode;
        std::string mode_error;
        WriteModeChoice choice;
        auto session = BpfSession::open(single, features, {}, &mode_error, &choice);
        if (session) {
            if (!chosen) chosen = mode;
            return chosen == mode ? "supported, chosen" : "supported";
        }
        if (error.empty()) error = mode_error;
        if (!choice.refused.empty())
            return std::string("refused by the kernel (") + strerror(-choice.refused.front().second) + ")";
        return "failed: " + mode_error;
    };
    row("write hooks", std::string(write_mode_name(WriteMode::tp_btf)) + ": " +
                           try_mode(WriteMode::tp_btf, features.write.tp_btf));
    row("", std::string(write_mode_name(WriteMode::fentry)) + ": " +
                try_mode(WriteMode::fentry, features.write.fentry));
    row("", std::string(write_mode_name(WriteMode::kprobe)) + ": " +
                try_mode(WriteMode::kprobe, features.write.kprobe));
    row("FIN hook", std::string("tcp_fin: optional, not used (the ESTABLISHED->CLOSE_WAIT transition is "
                                "the portable signal)"));
    if (std::string problem = features.blocking_problem(); !problem.empty()) error = problem;
    if (!chosen) {
        std::printf("result: rstwatch cannot run here: %s\n", error.c_str());
        return kExitFailure;
    }
    std::printf("result: rstwatch can run here (write hook %s)\n", std::string(write_mode_name(*chosen)).c_str());
    return kExitOk;
}

CommandRunner define_check(CLI::App& cmd) {
    struct Flags {
        LoaderOptions loader;
        std::string write_hook = "auto";
    };
    auto flags = std::make_shared<Flags>();
    add_write_hook_flag(cmd, flags->write_hook);
    return [flags] {
        flags->loader.write_mode = parse_write_mode(flags->write_hook);
        return run_check(flags->loader);
    };
}

}  // namespace rstwatch
