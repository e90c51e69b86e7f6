#include "kube_wire.h"
#include "text.h"

#include <cstdint>
#include <exception>
#include <utility>

namespace rstwatch {

namespace {

using nlohmann::json;

// The string at obj[key] if obj is an object and it is a string.
const std::string* string_at(const json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_string()) return nullptr;
    return it->get_ptr<const std::string*>();
}

std::optional<WatchEventType> event_type_from_name(const std::string& name) {
    if (name == "ADDED") return WatchEventType::added;
    if (name == "MODIFIED") return WatchEventType::modified;
    if (name == "DELETED") return WatchEventType::deleted;
    if (name == "BOOKMARK") return WatchEventType::bookmark;
    if (name == "ERROR") return WatchEventType::error;
    return std::nullopt;
}

// ev->resource_version from object.metadata.resourceVersion; absent or null is "".
bool read_resource_version(WatchEvent* ev, std::string* error) {
    auto meta = ev->object.find("metadata");
    if (meta == ev->object.end() || meta->is_null()) return true;
    if (!meta->is_object()) {
        *error = "object.metadata is not an object";
        return false;
    }
    auto rv = meta->find("resourceVersion");
    if (rv == meta->end() || rv->is_null()) return true;
    if (!rv->is_string()) {
        *error = "object.metadata.resourceVersion is not a string";
        return false;
    }
    ev->resource_version = rv->get<std::string>();
    return true;
}

// An ERROR event's Status fields; a code outside 0..999 counts as absent.
void read_status(WatchEvent* ev) {
    auto code = ev->object.find("code");
    if (code != ev->object.end() && code->is_number_integer()) {
        if (code->is_number_unsigned()) {
            auto v = code->get<uint64_t>();
            ev->status_code = v <= 999 ? static_cast<int>(v) : 0;
        } else {
            auto v = code->get<int64_t>();
            ev->status_code = v >= 0 && v <= 999 ? static_cast<int>(v) : 0;
        }
    }
    if (auto* reason = string_at(ev->object, "reason")) ev->status_reason = *reason;
    if (auto* message = string_at(ev->object, "message")) ev->status_message = *message;
}

}  // namespace

std::string_view watch_event_type_name(WatchEventType type) {
    switch (type) {
        case WatchEventType::added: return "ADDED";
        case WatchEventType::modified: return "MODIFIED";
        case WatchEventType::deleted: return "DELETED";
        case WatchEventType::bookmark: return "BOOKMARK";
        case WatchEventType::error: return "ERROR";
    }
    return "?";
}

bool WatchEvent::gone() const {
    return type == WatchEventType::error &&
           (status_code == 410 || status_reason == "Expired" || status_reason == "Gone");
}

std::optional<WatchEvent> parse_watch_event(std::string_view line, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    line = trim(line);
    if (line.empty()) {
        *error = "empty line";
        return std::nullopt;
    }
    json doc;
    try {
        doc = json::parse(line.begin(), line.end());
    } catch (const std::exception& e) {
        *error = std::string("not JSON: ") + e.what();
        return std::nullopt;
    }
    if (!doc.is_object()) {
        *error = "not a JSON object";
        return std::nullopt;
    }
    const std::string* type = string_at(doc, "type");
    if (!type) {
        *error = "no string \"type\"";
        return std::nullopt;
    }
    WatchEvent ev;
    if (auto t = event_type_from_name(*type)) {
        ev.type = *t;
    } else {
        *error = "unknown event type \"" + one_line(*type, 40) + "\"";
        return std::nullopt;
    }
    auto obj = doc.find("object");
    if (obj == doc.end() || !obj->is_object()) {
        *error = std::string(watch_event_type_name(ev.type)) + " event without an object";
        return std::nullopt;
    }
    ev.object = std::move(*obj);
    if (!read_resource_version(&ev, error)) return std::nullopt;
    if (ev.type == WatchEventType::bookmark && ev.resource_version.empty()) {
        *error = "BOOKMARK event without a resourceVersion";
        return std::nullopt;
    }
    if (ev.type == WatchEventType::error) read_status(&ev);
    return ev;
}

std::optional<ListPage> parse_list_page(std::string_view body, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    json doc;
    try {
        doc = json::parse(body.begin(), body.end());
    } catch (const std::exception& e) {
        *error = std::string("list response is not JSON: ") + e.what();
        return std::nullopt;
    }
    if (!doc.is_object()) {
        *error = "list response is not a JSON object";
        return std::nullopt;
    }
    auto items = doc.find("items");
    if (items == doc.end() || !(items->is_array() || items->is_null())) {
        *error = "list response has no items array";
        return std::nullopt;
    }
    auto meta = doc.find("metadata");
    if (meta == doc.end() || !meta->is_object()) {
        *error = "list response has no metadata";
        return std::nullopt;
    }
    const std::string* rv = string_at(*meta, "resourceVersion");
    if (!rv || rv->empty()) {
        *error = "list response has no metadata.resourceVersion";
        return std::nullopt;
    }
    ListPage page;
    page.resource_version = *rv;
    if (auto it = meta->find("continue"); it != meta->end() && !it->is_null()) {
        if (!it->is_string()) {
            *error = "list response metadata.continue is not a string";
            return std::nullopt;
        }
        page.continue_token = it->get<std::string>();
    }
    page.items = items->is_null() ? json::array() : std::move(*items);
    return page;
}

std::string describe_error_body(std::string_view body) {
    try {
        json doc = json::parse(body.begin(), body.end());
        if (doc.is_object()) {
            const std::string* kind = string_at(doc, "kind");
            const std::string* message = string_at(doc, "message");
            const std::string* reason = string_at(doc, "reason");
            if (kind && *kind == "Status" && (message || reason)) {
                std::string out = message ? *message : std::string();
                if (reason && !reason->empty()) out += out.empty() ? *reason : " (" + *reason + ")";
                return one_line(out, 300);
            }
        }
    } catch (const std::exception&) {
    }
    body = trim(body);
    return body.empty() ? std::string("empty body") : one_line(body, 200);
}

std::string url_encode(std::string_view text) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(text.size());
    for (unsigned char c : text) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
            c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        }
    }
    return out;
}

}  // namespace rstwatch
