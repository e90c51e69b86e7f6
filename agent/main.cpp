// rstwatch: explains TCP resets caused by stale keepalive connections.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"

#ifndef RSTWATCH_VERSION
#define RSTWATCH_VERSION "dev"
#endif

namespace {

void setup_logging(const std::string& level) {
    auto logger = spdlog::stderr_color_mt("rstwatch");
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
    spdlog::flush_on(spdlog::level::trace);
    rstwatch::route_libbpf_logs();
}

// Accepts "tp_btf", "fentry", "kprobe" or "auto" for --write-hook.
std::string validate_write_hook(const std::string& value) {
    if (value == "auto" || rstwatch::parse_write_mode(value)) return {};
    return "must be auto, tp_btf, fentry or kprobe";
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"rstwatch: see and explain TCP resets from stale keepalive connections"};
    app.require_subcommand(1);
    app.fallthrough();
    app.set_version_flag("--version", RSTWATCH_VERSION);
    std::string log_level = "info";
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));

    rstwatch::TraceOptions trace;
    std::string output = "table";
    std::string write_hook = "auto";
    std::vector<std::string> causes;
    CLI::App* trace_cmd = app.add_subcommand("trace", "load the BPF programs and print incidents live");
    trace_cmd->add_option("-o,--output", output, "table or json (one object per line)")
        ->check(CLI::IsMember({"table", "json"}));
    trace_cmd->add_option("--idle-threshold", trace.loader.idle_threshold_s,
                          "seconds of idleness after which a write is watched (default 1)")
        ->check(CLI::Range(0.01, 86400.0));
    trace_cmd->add_option("--port", trace.port, "only incidents with this port on either side")
        ->check(CLI::Range(1, 65535));
    trace_cmd->add_option("--pid", trace.pid, "only incidents of this writing process");
    trace_cmd->add_option("--comm", trace.comm, "only incidents of this process name");
    trace_cmd->add_option("--cause", causes, "only these causes (comma-separated)")
        ->delimiter(',')
        ->check([](const std::string& value) -> std::string {
            return rstwatch::parse_cause(value)
                       ? std::string()
                       : "unknown cause '" + value +
                             "' (write_after_fin, idle_close_race, reset_other, abort_on_close, data_after_close)";
        });
    trace_cmd->add_option("--duration", trace.duration_s, "stop after this many seconds")
        ->check(CLI::PositiveNumber);
    trace_cmd->add_option("--write-hook", write_hook, "auto, tp_btf, fentry or kprobe")
        ->check(validate_write_hook);

    rstwatch::LoaderOptions check_loader;
    std::string check_write_hook = "auto";
    CLI::App* check_cmd = app.add_subcommand("check", "report which hooks this kernel supports; exit 0 if rstwatch can run");
    check_cmd->add_option("--write-hook", check_write_hook, "auto, tp_btf, fentry or kprobe")
        ->check(validate_write_hook);

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
        std::fprintf(stderr, "rstwatch: %s\n", e.what());
        return rstwatch::kExitUsage;
    }

    setup_logging(log_level);
    if (*trace_cmd) {
        trace.json = output == "json";
        trace.loader.write_mode = rstwatch::parse_write_mode(write_hook);
        for (const std::string& cause : causes) trace.causes.push_back(*rstwatch::parse_cause(cause));
        return rstwatch::run_trace(trace);
    }
    check_loader.write_mode = rstwatch::parse_write_mode(check_write_hook);
    return rstwatch::run_check(check_loader);
}
