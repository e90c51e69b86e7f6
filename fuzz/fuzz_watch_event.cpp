// Fuzzes the Kubernetes wire format (agent/kube/kube_wire.h): watch stream lines (parse_watch_event)
// and LIST pages (parse_list_page), and the objects they carry (pod_from_json/service_from_json)
// applied to a ClusterState as the watcher does.
//
// Input: a LIST body and a watch stream at once: the whole input goes to parse_list_page and
// describe_error_body; each line goes to parse_watch_event, and the events are applied in order
// (an arbitrary event sequence: ADDED/MODIFIED/DELETED of pods and services, BOOKMARK, ERROR).
// Invariants: nothing throws; errors are one line.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "attribution.h"
#include "fuzz_common.h"
#include "kube_client.h"
#include "kube_objects.h"

using namespace rstwatch;

namespace {

bool is_kind(const nlohmann::json& object, const char* kind) {
    auto it = object.find("kind");
    return it != object.end() && it->is_string() && it->get_ref<const std::string&>() == kind;
}

void probe(const ClusterState& cluster) {
    for (const char* ip : {"10.244.1.5", "10.96.100.10", "172.18.0.2", "fd00::5"})
        (void)cluster.lookup(*IpAddr::parse(ip));
    (void)cluster.pod_exists("default", "web-7d4b9c6f5d-abcde");
    (void)cluster.pod_count();
    (void)cluster.service_count();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    std::string error;
    ClusterState cluster;

    // The whole input as a LIST page (PodList or ServiceList).
    if (auto page = parse_list_page(text, &error)) {
        RSTWATCH_FUZZ_CHECK(page->items.is_array(), "items is not an array");
        std::vector<PodInfo> pods;
        std::vector<ServiceInfo> services;
        for (const auto& item : page->items) {
            std::string item_error;
            if (auto pod = pod_from_json(item, &item_error)) pods.push_back(std::move(*pod));
            else RSTWATCH_FUZZ_CHECK(fuzz::one_line(item_error), item_error);
            if (auto svc = service_from_json(item, &item_error)) services.push_back(std::move(*svc));
            else RSTWATCH_FUZZ_CHECK(fuzz::one_line(item_error), item_error);
        }
        cluster.replace_pods(std::move(pods));
        cluster.replace_services(std::move(services));
        probe(cluster);
    } else {
        RSTWATCH_FUZZ_CHECK(fuzz::one_line(error), error);
    }
    (void)describe_error_body(text);
    (void)url_encode(text.substr(0, 256));

    // Each line as a watch event, applied in order.
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        const std::string_view line = text.substr(start, end - start);
        start = end + 1;
        error.clear();
        auto event = parse_watch_event(line, &error);
        if (!event) {
            RSTWATCH_FUZZ_CHECK(fuzz::one_line(error), error);
            continue;
        }
        RSTWATCH_FUZZ_CHECK(event->object.is_object(), "event object is not an object");
        (void)watch_event_type_name(event->type);
        if (event->type == WatchEventType::error) {
            (void)event->gone();
            continue;
        }
        if (event->type == WatchEventType::bookmark) {
            RSTWATCH_FUZZ_CHECK(!event->resource_version.empty(), "BOOKMARK without a resourceVersion");
            continue;
        }
        std::string object_error;
        if (!is_kind(event->object, "Service")) {
            if (auto pod = pod_from_json(event->object, &object_error)) {
                if (event->type == WatchEventType::deleted) cluster.delete_pod(*pod);
                else cluster.upsert_pod(std::move(*pod));
            } else {
                RSTWATCH_FUZZ_CHECK(fuzz::one_line(object_error), object_error);
            }
        }
        if (!is_kind(event->object, "Pod")) {
            if (auto svc = service_from_json(event->object, &object_error)) {
                if (event->type == WatchEventType::deleted) cluster.delete_service(*svc);
                else cluster.upsert_service(std::move(*svc));
            } else {
                RSTWATCH_FUZZ_CHECK(fuzz::one_line(object_error), object_error);
            }
        }
        probe(cluster);
    }
    return 0;
}
