// `rstwatch status`: is the agent on this node (or at --from) ready, which write hook did it
// attach, has it lost records. The kubectl plugin runs it inside each agent pod.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <cstdio>

#include "agent_status.h"
#include "commands.h"
#include "usage.h"
#include "flags.h"
#include "stream_client.h"

namespace rstwatch {

int run_status(const StatusOptions& options) {
    std::string error;
    ClientAuth auth;
    if (!load_client_auth(token_file_or_env(options.token_file), ca_file_or_env(options.ca_file), &auth, &error))
        return usage_error(options.token_file ? "--token-file" : "$RSTWATCH_TOKEN_FILE", error);
    constexpr std::chrono::seconds kTimeout{10};
    auto readyz = get_from_agent(options.from_url, "/readyz", auth, kTimeout, &error);
    if (!readyz) return command_failed("cannot reach the agent: " + error);
    auto metrics = get_from_agent(options.from_url, "/metrics", auth, kTimeout, &error);
    if (!metrics) return command_failed("cannot reach the agent: " + error);
    if (metrics->status != 200)
        return command_failed(fmt::format(
            "cannot read the agent's metrics: {}: HTTP {}{}", metrics->url, metrics->status,
            metrics->status == 401 ? " (the agent needs credentials: --token-file FILE or $RSTWATCH_TOKEN_FILE)" : ""));

    AgentStatus status;
    status.url = readyz->url.substr(0, readyz->url.size() - std::string_view("/readyz").size());
    status.ready = readyz->status == 200;
    if (!status.ready) {
        std::string reason = readyz->body;
        while (!reason.empty() && (reason.back() == '\n' || reason.back() == ' ')) reason.pop_back();
        status.not_ready_reason = fmt::format("HTTP {}{}{}", readyz->status, reason.empty() ? "" : ": ", reason);
    }
    read_agent_metrics(metrics->body, &status);
    const std::string text =
        options.json ? agent_status_to_json(status).dump() + "\n" : render_agent_status(status, options.headers);
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::fflush(stdout);
    return kExitOk;
}

CommandRunner define_status(CLI::App& cmd) {
    struct Flags {
        StatusOptions status;
        std::string output = "table";
        bool no_headers = false;
    };
    auto flags = std::make_shared<Flags>();
    StatusOptions& status = flags->status;
    cmd.add_option("--from", status.from_url,
                   "the agent (node: this node's, $RSTWATCH_AGENT_URL or http://127.0.0.1:9740)")
        ->check(CLI::Validator(agent_url_error, "URL|node"));
    add_agent_credential_flags(cmd, status.token_file, status.ca_file, nullptr);
    add_output_flag(cmd, flags->output, {"table", "json"}, "table or json");
    cmd.add_flag("--no-headers", flags->no_headers, "table without its header row (for scripts)");
    return [flags] {
        StatusOptions& status = flags->status;
        status.from_url = resolve_agent_url(status.from_url);
        status.json = flags->output == "json";
        status.headers = !flags->no_headers;
        return run_status(status);
    };
}

}  // namespace rstwatch
