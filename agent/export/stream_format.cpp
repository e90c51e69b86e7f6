// The /incidents line format: an incident with the names of both ends.
#include "stream_format.h"

#include "output.h"

namespace rstwatch {
namespace {

void add_identity(nlohmann::json& end, const Identity& id) {
    end["namespace"] = id.namespace_;
    end["pod"] = id.pod;
    end["workload"] = id.workload;
}

bool read_identity(const nlohmann::json& end, Identity& id) {
    auto field = [&](const char* key, std::string& out) {
        auto it = end.find(key);
        if (it == end.end() || it->is_null()) return true;
        if (!it->is_string()) return false;
        out = it->get<std::string>();
        return true;
    };
    return field("namespace", id.namespace_) && field("pod", id.pod) &&
           field("workload", id.workload);
}

}  // namespace

nlohmann::json streamed_incident_to_json(const StreamedIncident& s, int64_t offset_ns) {
    auto json = incident_to_json(s.incident, offset_ns);
    add_identity(json["client"], s.client);
    add_identity(json["server"], s.server);
    return json;
}

std::optional<StreamedIncident> streamed_incident_from_json(const nlohmann::json& json,
                                                            int64_t offset_ns) {
    auto incident = incident_from_json(json, offset_ns);
    if (!incident) return std::nullopt;
    StreamedIncident s;
    s.incident = std::move(*incident);
    // incident_from_json accepted "client" and "server" as objects.
    if (!read_identity(json.at("client"), s.client) || !read_identity(json.at("server"), s.server))
        return std::nullopt;
    return s;
}

std::string format_streamed_incident_line(const StreamedIncident& s, int64_t offset_ns) {
    return streamed_incident_to_json(s, offset_ns)
        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace rstwatch
