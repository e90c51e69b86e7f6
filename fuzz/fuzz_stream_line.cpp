// Fuzzes the consumer of the agent's /incidents stream (`rstwatch trace --from`,
// agent/stream_client.h).
//
// The per-line handling of follow_incidents() (Follow::line in agent/stream_client.cpp) is not
// exposed: it lives in an anonymous namespace next to the libcurl callbacks. This harness
// reproduces it exactly (split the body on '\n', strip one trailing '\r', skip blank heartbeat
// lines, nlohmann::json::parse(line, nullptr, false), {"dropped": N}, else
// streamed_incident_from_json) and then does what `trace --from` does with an incident (filter,
// table row, JSON line). Lines longer than StreamClientOptions::max_line_bytes are skipped there
// before parsing; here the input size (-max_len) bounds them.
//
// Invariants: nothing throws; an accepted incident formats to a line that reads back
// (format_streamed_incident_line / streamed_incident_from_json are documented as inverses).
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.h"
#include "output.h"
#include "stream_format.h"

using namespace rstwatch;

namespace {

void on_incident(const StreamedIncident& s) {
    IncidentFilter filter;
    filter.port = s.incident.server.port;
    filter.comm = s.incident.comm;
    filter.causes = {s.incident.cause};
    RSTWATCH_FUZZ_CHECK(filter.matches(s.incident), s.incident.comm);
    (void)format_incident_row(s.incident, 0);
    (void)format_incident_json_line(s.incident, 0);

    const std::string line = format_streamed_incident_line(s, 0);
    RSTWATCH_FUZZ_CHECK(fuzz::one_line(line), line);
    auto json = nlohmann::json::parse(line, nullptr, false);
    RSTWATCH_FUZZ_CHECK(json.is_object(), line);
    auto back = streamed_incident_from_json(json, 0);
    RSTWATCH_FUZZ_CHECK(back.has_value(), line);
    RSTWATCH_FUZZ_CHECK(back->client == s.client && back->server == s.server &&
                            back->incident.cause == s.incident.cause &&
                            back->incident.client == s.incident.client &&
                            back->incident.server == s.incident.server,
                        line);
}

// Follow::line() of agent/stream_client.cpp.
void line(std::string_view text, uint64_t& malformed, uint64_t& dropped_total) {
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (text.find_first_not_of(" \t") == std::string_view::npos) return;  // heartbeat
    auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!json.is_object()) {
        ++malformed;
        return;
    }
    if (json.size() == 1 && json.contains("dropped")) {
        const auto& n = json["dropped"];
        if (!n.is_number_unsigned()) {
            ++malformed;
            return;
        }
        dropped_total += n.get<uint64_t>();
        return;
    }
    auto streamed = streamed_incident_from_json(json);
    if (!streamed) {
        ++malformed;
        return;
    }
    on_incident(*streamed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);
    uint64_t malformed = 0, dropped = 0;
    size_t start = 0;
    while (start < body.size()) {
        const size_t nl = body.find('\n', start);
        if (nl == std::string_view::npos) break;  // an incomplete last line is never parsed
        line(body.substr(start, nl - start), malformed, dropped);
        start = nl + 1;
    }
    // A body without a newline: still try it as one line, as if the agent had sent "\n".
    if (start == 0) line(body, malformed, dropped);
    return 0;
}
