// The agent's live incident stream (GET /incidents): the line format, written by the agent's
// HTTP server and read by the stream client (`rstwatch trace --from URL`).
//
// Stream format: HTTP/1.1 200, chunked, Content-Type application/x-ndjson. One JSON object per
// line, each written as soon as it is published:
//   - an incident: incident_to_json(...) whose "client" and "server" objects also carry
//     "namespace", "pod" and "workload" (strings, "" when unknown / not a pod);
//   - {"dropped": N}: N incidents were not sent to this follower because it fell behind (its
//     queue in the agent was full); sent once it catches up, where the gap is;
//   - an empty line: a heartbeat while nothing happens (lets both sides notice a dead peer).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "attribution.h"
#include "incident.h"

namespace rstwatch {

struct StreamedIncident {
    Incident incident;
    Identity client;
    Identity server;
};

// incident_to_json(incident, offset) plus client/server {"namespace","pod","workload"}.
nlohmann::json streamed_incident_to_json(const StreamedIncident& streamed,
                                         int64_t monotonic_to_unix_offset_ns);
// Inverse of the above (offset as in incident_from_json). Missing or null pod fields read as "";
// a pod field of another type, or anything incident_from_json rejects, gives nullopt.
std::optional<StreamedIncident> streamed_incident_from_json(
    const nlohmann::json& json, int64_t monotonic_to_unix_offset_ns = 0);
// One stream line without the newline; invalid UTF-8 is replaced, never thrown.
std::string format_streamed_incident_line(const StreamedIncident& streamed,
                                          int64_t monotonic_to_unix_offset_ns);

}  // namespace rstwatch
