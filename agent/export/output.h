// Formatting and filtering of incidents: JSON lines, a human table, a summary line.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "incident.h"

namespace rstwatch {

// "2026-11-25T07:47:52.123Z": UTC, millisecond precision (truncated toward the past).
std::string format_rfc3339_ms(int64_t unix_ns);
// Parses RFC 3339 ("...Z" or "...+hh:mm", any number of fraction digits) to Unix ns.
std::optional<int64_t> parse_rfc3339(std::string_view text);

struct IncidentFilter {
    std::optional<uint16_t> port;  // either side
    std::optional<uint32_t> pid;
    std::optional<std::string> comm;  // exact match
    std::vector<Cause> causes;        // empty = all
    bool matches(const Incident& incident) const;
};

// Keys: ts cause observer client{ip,port} server{ip,port} pid comm idle_before_write_ms
// write_to_reset_ms state reset_reason requests netns. Unknown values are null.
nlohmann::json incident_to_json(const Incident& incident, int64_t monotonic_to_unix_offset_ns);
// incident_to_json(...).dump(), no trailing newline.
std::string format_incident_json_line(const Incident& incident,
                                      int64_t monotonic_to_unix_offset_ns);
// Parses what incident_to_json wrote: extra keys are ignored, a wrong type gives nullopt.
// ts_ns = the "ts" wall time in Unix ns minus `monotonic_to_unix_offset_ns` (so with the
// default 0, ts_ns holds Unix ns at millisecond precision).
std::optional<Incident> incident_from_json(const nlohmann::json& json,
                                           int64_t monotonic_to_unix_offset_ns = 0);

struct Identity;

// How the human table names things.
struct TableOptions {
    bool wide = false;            // -o wide: also addresses, netns, requests
    bool names = false;           // CLIENT/SERVER name pods (incidents from an agent's stream)
    bool workload_level = false;  // with names: NAMESPACE/WORKLOAD instead of NAMESPACE/POD
};

// Fixed-width human table (times in UTC):
// TIME CAUSE OBSERVER CLIENT SERVER PID/COMM IDLE WRITE->RST STATE [CLIENT-ADDR SERVER-ADDR NETNS
// REQUESTS] REASON. With names, CLIENT is "NAMESPACE/POD" and SERVER "NAMESPACE/POD:PORT" when the
// end is a pod (else IP:PORT); without, both are IP:PORT and the wide columns are NETNS REQUESTS.
std::string format_table_header(const TableOptions& options = {});
std::string format_incident_row(const Incident& incident, int64_t monotonic_to_unix_offset_ns,
                                const TableOptions& options = {}, const Identity* client = nullptr,
                                const Identity* server = nullptr);

// One YAML document ("---" line first) with the same keys as the JSON: -o yaml.
std::string format_yaml_document(const nlohmann::json& json);

// One line: "3 incidents (idle_close_race=2 write_after_fin=1), 0 records lost".
// Causes with a count are listed, most frequent first (ties in enum order).
std::string format_summary(const std::array<uint64_t, kCauseCount>& incidents_by_cause,
                           uint64_t records_lost);

}  // namespace rstwatch
