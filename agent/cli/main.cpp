// rstwatch: explains TCP resets caused by stale keepalive connections.
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "commands.h"
#include "usage.h"

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
    {"trace", "print incidents live: from this node's kernel, or from an agent (--from) with pod names and history",
     rstwatch::define_trace},
    {"agent", "run on the node: metrics per pod pair, incident stream", rstwatch::define_agent},
    {"diagnose", "inferred idle timeouts per pair, keepalive mismatches and the setting to change",
     rstwatch::define_diagnose},
    {"status", "one agent's readiness, write hook, lost records and incident count (from its /readyz and /metrics)",
     rstwatch::define_status},
    {"check", "report which hooks this kernel supports; exit 0 if rstwatch can run", rstwatch::define_check},
};

// The command named on the line (after the global options), or "" when none is.
std::string command_named(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        if (arg == "--log-level" || arg == "--log-format") {
            ++i;  // its value
            continue;
        }
        if (!arg.empty() && arg[0] == '-') continue;
        return std::string(arg);
    }
    return {};
}

std::string command_list() {
    std::string names;
    for (const Command& command : kCommands) names += std::string(command.name) + ", ";
    return names + "help, version";
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"rstwatch: see and explain TCP resets from stale keepalive connections"};
    app.require_subcommand(1);
    app.fallthrough();
    // Every --help shows each option's default (options added below inherit this).
    app.option_defaults()->always_capture_default();
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
    // `rstwatch help [COMMAND]` and `rstwatch version`, as kubectl and hubble have them.
    std::string help_topic;
    CLI::App* help = app.add_subcommand("help", "show the commands, or one command's flags: help [COMMAND]");
    help->add_option("command", help_topic, "a command")
        ->check(CLI::IsMember([] {
            std::vector<std::string> names;
            for (const Command& command : kCommands) names.emplace_back(command.name);
            return names;
        }()));
    CLI::App* version = app.add_subcommand("version", "print rstwatch's version");

    const std::string named = command_named(argc, argv);
    if (named.empty()) {
        bool asks_help = false, asks_version = false;
        for (int i = 1; i < argc; ++i) {
            std::string_view arg = argv[i];
            asks_help |= arg == "-h" || arg == "--help";
            asks_version |= arg == "--version";
        }
        if (!asks_help && !asks_version) {
            std::fprintf(stderr, "rstwatch: command: missing, one of %s (see 'rstwatch help')\n", command_list().c_str());
            return rstwatch::kExitUsage;
        }
    } else if (const auto all = app.get_subcommands([](const CLI::App*) { return true; });
               std::none_of(all.begin(), all.end(), [&](const CLI::App* cmd) { return cmd->get_name() == named; })) {
        std::fprintf(stderr, "rstwatch: %s: unknown command; commands: %s (see 'rstwatch help')\n", named.c_str(),
                     command_list().c_str());
        return rstwatch::kExitUsage;
    }

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
        std::fprintf(stderr, "%s\n", rstwatch::usage_line_for(e, named).c_str());
        return rstwatch::kExitUsage;
    }
    if (*help) {
        // The formatter directly: App::help() would describe the `help` command itself.
        CLI::App* topic = help_topic.empty() ? &app : app.get_subcommand(help_topic);
        const std::string name = help_topic.empty() ? "rstwatch" : "rstwatch " + help_topic;
        std::fputs(app.get_formatter()->make_help(topic, name, CLI::AppFormatMode::Normal).c_str(), stdout);
        return rstwatch::kExitOk;
    }
    if (*version) {
        std::printf("rstwatch %s\n", RSTWATCH_VERSION);
        return rstwatch::kExitOk;
    }
    setup_logging(log_level, log_format);
    for (auto& [cmd, run] : commands)
        if (*cmd) return run();
    return rstwatch::kExitUsage;  // unreachable: require_subcommand(1)
}
