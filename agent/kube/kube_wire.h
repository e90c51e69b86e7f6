// The Kubernetes API's wire format as the watcher reads it: watch stream lines, LIST pages,
// Status error bodies, query parameter encoding. Pure and fuzzable (fuzz/fuzz_watch_event.cpp):
// nothing here does I/O or throws.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace rstwatch {

enum class WatchEventType { added, modified, deleted, bookmark, error };
std::string_view watch_event_type_name(WatchEventType type);  // "ADDED", ...

struct WatchEvent {
    WatchEventType type = WatchEventType::added;
    nlohmann::json object;         // the event's object (a Pod, a Service, a Status, ...)
    std::string resource_version;  // object.metadata.resourceVersion ("" when absent)
    // ERROR events: the Status object's fields (code 0 when absent).
    int status_code = 0;
    std::string status_reason;
    std::string status_message;
    // True for an ERROR whose Status says the resource version is gone (410 / Expired / Gone).
    bool gone() const;
};

// Parses one line of a watch stream: {"type": "...", "object": {...}}. A trailing "\r" and
// surrounding whitespace are ignored. nullopt + a one-line error for anything else: not JSON,
// not an object, unknown type, object missing or not an object, BOOKMARK without a
// resourceVersion, metadata not an object, non-string resourceVersion. Never throws.
std::optional<WatchEvent> parse_watch_event(std::string_view line, std::string* error);

// One page of a LIST response (PodList/ServiceList).
struct ListPage {
    nlohmann::json items;  // an array
    std::string resource_version;
    std::string continue_token;  // "" on the last page
};
// nullopt + a one-line error when the body is not a list object with an items array and a
// string metadata.resourceVersion. Never throws.
std::optional<ListPage> parse_list_page(std::string_view body, std::string* error);

// "STATUS_MESSAGE (REASON)" from a Kubernetes Status body, or the body's first 200 bytes
// (one line) when it is not a Status. For log lines.
std::string describe_error_body(std::string_view body);

// Percent-encoding of a query parameter value (unreserved characters kept).
std::string url_encode(std::string_view text);

}  // namespace rstwatch
