// Kubernetes Events as rstwatch writes them: events.k8s.io/v1 objects (what `kubectl get events`
// and `kubectl describe pod` show) and the merge patches that advance their series. Pure.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace rstwatch {

inline constexpr const char* kReportingController = "rstwatch";
// The API server's limits (pkg/apis/core/validation/events.go): a longer note or name is refused.
inline constexpr size_t kMaxEventNoteBytes = 1024;
inline constexpr size_t kMaxObjectNameBytes = 253;

struct PodRef {
    std::string namespace_;
    std::string name;
    std::string uid;  // "" when unknown: `kubectl describe pod` matches Events by uid
    bool operator==(const PodRef&) const = default;
};

struct EventFields {
    std::string name;  // metadata.name, in regarding's namespace
    PodRef regarding;
    std::optional<PodRef> related;
    std::string type;    // "Warning" or "Normal"
    std::string reason;  // "StaleKeepaliveReset", ...
    std::string action;
    std::string note;
    std::string reporting_instance;  // the node
    int64_t event_time_unix_ns = 0;  // the first occurrence
    uint64_t count = 1;              // occurrences; a series from 2 on
    int64_t last_observed_unix_ns = 0;
};

// MicroTime: RFC 3339 UTC with exactly six fractional digits ("2026-12-06T07:10:57.123456Z").
std::string micro_time(int64_t unix_ns);

// The Event to POST. The note is cut at kMaxEventNoteBytes on a UTF-8 boundary.
nlohmann::json event_object(const EventFields& fields);
// The merge patch that records `count` occurrences up to last_observed (count >= 2).
nlohmann::json series_patch(uint64_t count, int64_t last_observed_unix_ns);

// "POD.HEX": client-go's naming (the object's name and the time in hex), cut to fit 253 bytes.
std::string event_name(const std::string& object_name, int64_t unix_ns);

// API paths below the API server's URL.
std::string events_collection_path(const std::string& namespace_);
std::string event_path(const std::string& namespace_, const std::string& name);

}  // namespace rstwatch
