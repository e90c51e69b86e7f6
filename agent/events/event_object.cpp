#include "event_object.h"

#include <fmt/format.h>

#include <algorithm>
#include <ctime>

namespace rstwatch {

std::string micro_time(int64_t unix_ns) {
    const int64_t seconds = unix_ns >= 0 ? unix_ns / 1'000'000'000 : (unix_ns - 999'999'999) / 1'000'000'000;
    const int64_t micros = (unix_ns - seconds * 1'000'000'000) / 1000;
    std::time_t t = static_cast<std::time_t>(seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:06d}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                       tm.tm_hour, tm.tm_min, tm.tm_sec, micros);
}

namespace {

// At most max bytes, not splitting a UTF-8 sequence.
std::string cut_utf8(const std::string& text, size_t max) {
    if (text.size() <= max) return text;
    size_t end = max;
    while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    return text.substr(0, end);
}

nlohmann::json pod_reference(const PodRef& pod) {
    nlohmann::json ref = {{"apiVersion", "v1"}, {"kind", "Pod"}, {"namespace", pod.namespace_}, {"name", pod.name}};
    if (!pod.uid.empty()) ref["uid"] = pod.uid;
    return ref;
}

}  // namespace

nlohmann::json event_object(const EventFields& f) {
    nlohmann::json event = {
        {"apiVersion", "events.k8s.io/v1"},
        {"kind", "Event"},
        {"metadata", {{"name", f.name}, {"namespace", f.regarding.namespace_}}},
        {"eventTime", micro_time(f.event_time_unix_ns)},
        {"reportingController", kReportingController},
        {"reportingInstance", f.reporting_instance},
        {"action", f.action},
        {"reason", f.reason},
        {"type", f.type},
        {"regarding", pod_reference(f.regarding)},
        {"note", cut_utf8(f.note, kMaxEventNoteBytes)},
    };
    if (f.related) event["related"] = pod_reference(*f.related);
    if (f.count >= 2) event["series"] = series_patch(f.count, f.last_observed_unix_ns)["series"];
    return event;
}

nlohmann::json series_patch(uint64_t count, int64_t last_observed_unix_ns) {
    constexpr uint64_t kMaxCount = 2147483647;  // the API's series.count is an int32
    return {{"series",
             {{"count", std::min(count, kMaxCount)}, {"lastObservedTime", micro_time(last_observed_unix_ns)}}}};
}

std::string event_name(const std::string& object_name, int64_t unix_ns) {
    std::string suffix = fmt::format(".{:x}", static_cast<uint64_t>(unix_ns));
    return object_name.substr(0, kMaxObjectNameBytes - suffix.size()) + suffix;
}

std::string events_collection_path(const std::string& namespace_) {
    return "apis/events.k8s.io/v1/namespaces/" + namespace_ + "/events";
}

std::string event_path(const std::string& namespace_, const std::string& name) {
    return events_collection_path(namespace_) + "/" + name;
}

}  // namespace rstwatch
