// rstwatch: explains TCP resets caused by stale keepalive connections.
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"

#ifndef RSTWATCH_VERSION
#define RSTWATCH_VERSION "dev"
#endif

namespace {

// %j: the log message as a JSON string (escaped), for --log-format json.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& msg, const std::tm&, spdlog::memory_buf_t& dest) override {
        std::string text =
            nlohmann::json(std::string(msg.payload.data(), msg.payload.size()))
                .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        dest.append(text.data(), text.data() + text.size());
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<JsonMessageFlag>(); }
};

void setup_logging(const std::string& level, const std::string& format) {
    auto logger = spdlog::stderr_color_mt("rstwatch");
    if (format == "json") {
        auto formatter = std::make_unique<spdlog::pattern_formatter>();
        formatter->add_flag<JsonMessageFlag>('j').set_pattern(
            R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":%j})");
        logger->set_formatter(std::move(formatter));
    } else {
        logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
    }
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(level));
    spdlog::flush_on(spdlog::level::trace);
    rstwatch::route_libbpf_logs();
}

// The commands, in --help order. Each adds its own flags (shared flag groups: flags.h) and
// returns what runs it.
struct Command {
    const char* name;
    const char* description;
    rstwatch::CommandRunner (*define)(CLI::App& cmd);
};
constexpr Command kCommands[] = {
    {"trace", "load the BPF programs and print incidents live", rstwatch::define_trace},
    {"agent", "run on the node: metrics per pod pair, incident stream", rstwatch::define_agent},
    {"diagnose", "inferred idle timeouts per pair, keepalive mismatches and the setting to change",
     rstwatch::define_diagnose},
    {"status", "one agent's readiness, write hook, lost records and incident count (from its /readyz and /metrics)",
     rstwatch::define_status},
    {"check", "report which hooks this kernel supports; exit 0 if rstwatch can run", rstwatch::define_check},
};

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"rstwatch: see and explain TCP resets from stale keepalive connections"};
    app.require_subcommand(1);
    app.fallthrough();
    app.set_version_flag("--version", RSTWATCH_VERSION);
    std::string log_level = "info";
    std::string log_format = "text";
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}));
    app.add_option("--log-format", log_format, "text or json (one object per line)")
        ->check(CLI::IsMember({"text", "json"}));

    std::vector<std::pair<CLI::App*, rstwatch::CommandRunner>> commands;
    for (const Command& command : kCommands) {
        CLI::App* cmd = app.add_subcommand(command.name, command.description);
        commands.emplace_back(cmd, command.define(*cmd));
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
        std::fprintf(stderr, "rstwatch: %s\n", e.what());
        return rstwatch::kExitUsage;
    }
    setup_logging(log_level, log_format);
    for (auto& [cmd, run] : commands)
        if (*cmd) return run();
    return rstwatch::kExitUsage;  // unreachable: require_subcommand(1)
}
