// A libcurl client for a running agent: its incident stream (GET /incidents, format in
// stream_format.h), followed by `rstwatch trace --from URL`, and one-shot GETs (status, diagnose).
//
// No reconnect: when the agent goes away or the stream breaks, follow_incidents() returns with
// an error and `trace --from` exits; rerun it to follow again.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "stream_format.h"

namespace rstwatch {

// Client credentials for an agent whose endpoints are protected (http_server.h).
struct ClientAuth {
    std::string bearer_token;  // sent as "Authorization: Bearer TOKEN"; "" = none
    std::string ca_file;       // CA bundle for https URLs; "" = the system's
};

// The token file to use: `flag` when given, else $RSTWATCH_TOKEN_FILE (the DaemonSet sets it,
// so `kubectl exec ... rstwatch trace --from node` authenticates), else "".
std::string token_file_or_env(const std::optional<std::string>& flag);
// The CA bundle for https agents: `flag` when given, else $RSTWATCH_CA_FILE (set by the
// DaemonSet's TLS component), else "" (the system's CAs).
std::string ca_file_or_env(const std::optional<std::string>& flag);
// `--from node` names this node's agent: $RSTWATCH_AGENT_URL (the DaemonSet sets it, https with
// the TLS component), else http://127.0.0.1:9740. Any other value is returned as given.
inline constexpr const char* kNodeAgent = "node";
std::string resolve_agent_url(const std::string& from);
// Reads a bearer token file (first non-empty line, blanks trimmed). "" path: empty token.
// False with a one-line *error when unreadable or empty.
bool load_client_auth(const std::string& token_file, const std::string& ca_file, ClientAuth* auth,
                      std::string* error);

// One plain GET of an agent endpoint: BASE_URL ("http://HOST:PORT", "HOST:PORT" or https) plus
// PATH ("/metrics", "/readyz", "/diagnose?level=pod"). Any HTTP status is an answer; nullopt
// with a one-line *error (the URL without credentials) when the agent cannot be reached or
// does not answer within `timeout`.
struct AgentResponse {
    long status = 0;
    std::string body;
    std::string url;  // what was asked, without credentials: for messages
};
std::optional<AgentResponse> get_from_agent(const std::string& base_url, const std::string& path,
                                            const ClientAuth& auth, std::chrono::seconds timeout,
                                            std::string* error);

struct StreamClientOptions {
    // "http://HOST:PORT/incidents". "http://HOST:PORT" or "HOST:PORT" get "/incidents" added.
    // Basic auth: put it in the URL (http://USER:PASSWORD@HOST:PORT).
    std::string url;
    ClientAuth auth;
    std::chrono::seconds connect_timeout{10};
    // The agent sends a heartbeat every 15 s: no byte for this long means it is gone.
    std::chrono::seconds idle_timeout{60};
    size_t max_line_bytes = 1 << 20;  // longer lines are counted malformed and skipped
    // Replay of the agent's incident history before the live lines (GET /incidents?since=&last=,
    // http_server.h); both may be combined (the last N of those since). since: an RFC 3339 time
    // or a duration back from now ("30m", "1h30m"), sent as given (URL-encoded): the agent
    // checks it, and a value it rejects ends the follow with its one-line answer in `error`.
    // An agent without history ignores both and streams live only.
    std::optional<std::string> since{};
    std::optional<uint64_t> last{};
};

struct StreamResult {
    enum class End {
        stopped,        // the stop flag was set: not an error
        server_closed,  // the agent ended the stream (e.g. it is shutting down)
        error,          // could not connect, HTTP status != 200, the connection broke or timed out
    };
    End end = End::error;
    std::string error;       // one line; "" when stopped
    uint64_t incidents = 0;  // lines passed to on_incident
    uint64_t dropped = 0;    // sum of {"dropped":N}
    uint64_t malformed = 0;  // lines that were neither; skipped
};

// Follows the stream until `stop` becomes true (checked at least every 100 ms), the agent
// closes it, or an error. Callbacks run on the calling thread; either may be empty.
// ts_ns of the delivered incidents holds Unix ns (offset 0, see incident_from_json).
StreamResult follow_incidents(const StreamClientOptions& options, const std::atomic<bool>& stop,
                              const std::function<void(const StreamedIncident&)>& on_incident,
                              const std::function<void(uint64_t dropped)>& on_dropped);

}  // namespace rstwatch
