// `rstwatch status`: one agent's health at a glance, read from its /readyz and /metrics.
// Pure functions here (the HTTP part is get_from_agent in stream_client.h), so the parsing
// is tested against the metrics a real agent serves.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace rstwatch {

// One sample line of the Prometheus text exposition format (version 0.0.4):
// `name{label="value",...} value [timestamp]`. Label values are unescaped (\\, \", \n).
struct PrometheusSample {
    std::string name;
    std::vector<std::pair<std::string, std::string>> labels;
    double value = 0;

    const std::string* label(std::string_view key) const;
};
// nullopt for comments, blank lines and lines that are not a well-formed sample.
std::optional<PrometheusSample> parse_prometheus_sample(std::string_view line);

struct AgentStatus {
    std::string url;              // the agent asked, without credentials
    bool ready = false;           // GET /readyz answered 200
    std::string not_ready_reason; // /readyz's body when it did not
    // From /metrics; empty / nullopt when the agent does not export them (yet).
    std::string version;
    std::string write_hook;
    std::optional<double> records_lost;
    std::optional<double> tracked_connections;
    std::optional<double> incidents;  // sum over every pair, cause and observer
    std::vector<std::string> attribution_sources_unsynced;
};

// Fills the /metrics part of *status from the exposition text.
void read_agent_metrics(std::string_view metrics_text, AgentStatus* status);

// A table like `kubectl get`: a header row (unless !headers) and one row whose cells never
// contain blanks ("-" for unknown), so scripts can split it on whitespace:
//   AGENT READY WRITE-HOOK LOST-RECORDS TRACKED INCIDENTS VERSION
std::string render_agent_status(const AgentStatus& status, bool headers);
nlohmann::json agent_status_to_json(const AgentStatus& status);

}  // namespace rstwatch
