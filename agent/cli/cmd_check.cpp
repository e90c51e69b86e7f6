// `rstwatch check`: what this kernel offers, which hooks attach, and whether rstwatch can run.
// Probing is here; the wording (and why a refusal is fine) is check_report.cpp's, unit-tested.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <string>

#include "check_report.h"
#include "commands.h"
#include "flags.h"

namespace rstwatch {
namespace {

// The loader warns when a write hook is refused, for the agent's log; here the report says it
// with the reason it is harmless, so the warning would only repeat it, out of context. Kept
// at debug level and below, where the user asked for everything.
class QuietRefusals {
public:
    QuietRefusals() : saved_(spdlog::get_level()) {
        if (saved_ > spdlog::level::debug) spdlog::set_level(spdlog::level::err);
    }
    ~QuietRefusals() { spdlog::set_level(saved_); }
    QuietRefusals(const QuietRefusals&) = delete;
    QuietRefusals& operator=(const QuietRefusals&) = delete;

private:
    spdlog::level::level_enum saved_;
};

// Every write hook is really tried (load + attach, then detach), so the report shows what
// this kernel refuses, not only what its BTF mentions.
CheckProbes probe(const LoaderOptions& options) {
    CheckProbes probes;
    probes.features = probe_kernel_features();
    probes.forced = options.write_mode;
    probes.max_connections = options.max_connections;
    const bool blocked = !probes.features.blocking_problem().empty();
    QuietRefusals quiet;
    for (WriteMode mode : {WriteMode::tp_btf, WriteMode::fentry, WriteMode::kprobe}) {
        WriteHookProbe result;
        result.mode = mode;
        if (options.write_mode && *options.write_mode != mode) {
            result.outcome = HookOutcome::not_tried_forced;
        } else if (!probes.features.write.offers(mode) && !options.write_mode) {
            result.outcome = HookOutcome::not_offered;
        } else if (blocked) {
            result.outcome = HookOutcome::not_tried_blocked;
        } else {
            LoaderOptions single = options;
            single.write_mode = mode;
            std::string error;
            WriteModeChoice choice;
            auto session = BpfSession::open(single, probes.features, {}, &error, &choice);
            if (session) {
                result.outcome = HookOutcome::attached;
                if (!probes.chosen) {
                    probes.chosen = mode;
                    probes.socket_storage = session->socket_storage();
                }
            } else if (!choice.refused.empty()) {
                result.outcome = HookOutcome::refused;
                result.error = choice.refused.front().second;
            } else {
                result.outcome = HookOutcome::failed;
                result.message = error;
            }
        }
        probes.write_hooks.push_back(std::move(result));
    }
    return probes;
}

}  // namespace

int run_check(const LoaderOptions& options) {
    const CheckReport report = format_check_report(probe(options));
    for (const std::string& line : report.lines) std::printf("%s\n", line.c_str());
    return report.can_run ? kExitOk : kExitFailure;
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
