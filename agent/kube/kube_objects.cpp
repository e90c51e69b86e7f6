// Kubernetes Pod and Service objects (list items, watch events) -> PodInfo / ServiceInfo.
#include "kube_objects.h"

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

namespace rstwatch {

namespace {

using nlohmann::json;

// A member that is present and not null, or nullptr.
const json* member(const json& object, const char* key) {
    if (!object.is_object()) return nullptr;
    auto it = object.find(key);
    if (it == object.end() || it->is_null()) return nullptr;
    return &*it;
}

// Reads an optional string field: absent/null leaves *out untouched; another type is an error.
bool opt_string(const json& object, const char* key, const std::string& path, std::string* out,
                std::string* what) {
    const json* v = member(object, key);
    if (!v) return true;
    if (!v->is_string()) {
        *what = path + " is not a string";
        return false;
    }
    *out = v->get<std::string>();
    return true;
}

bool opt_object(const json& object, const char* key, const std::string& path, const json** out,
                std::string* what) {
    const json* v = member(object, key);
    *out = v;
    if (v && !v->is_object()) {
        *what = path + " is not an object";
        return false;
    }
    return true;
}

struct Meta {
    std::string uid, namespace_, name;
    const json* metadata = nullptr;
};

// Checks kind and reads metadata.uid/namespace/name. *error gets "KIND NS/NAME: what".
bool read_meta(const json& object, const char* kind, const char* label, Meta* meta, std::string* error) {
    auto fail = [&](const std::string& what) {
        std::string who = label;
        if (!meta->name.empty())
            who += " " + (meta->namespace_.empty() ? "" : meta->namespace_ + "/") + meta->name;
        *error = who + ": " + what;
        return false;
    };
    if (!object.is_object()) return fail("not a JSON object");
    std::string what;
    if (!opt_object(object, "metadata", "metadata", &meta->metadata, &what)) return fail(what);
    if (meta->metadata) {
        const json& md = *meta->metadata;
        if (!opt_string(md, "name", "metadata.name", &meta->name, &what)) return fail(what);
        if (!opt_string(md, "namespace", "metadata.namespace", &meta->namespace_, &what)) return fail(what);
        if (!opt_string(md, "uid", "metadata.uid", &meta->uid, &what)) return fail(what);
    }
    std::string object_kind;
    if (!opt_string(object, "kind", "kind", &object_kind, &what)) return fail(what);
    if (!object_kind.empty() && object_kind != kind)
        return fail(std::string("kind is ") + object_kind + ", expected " + kind);
    if (!meta->metadata) return fail("metadata is missing");
    if (meta->name.empty()) return fail("metadata.name is missing");
    if (meta->namespace_.empty()) return fail("metadata.namespace is missing");
    if (meta->uid.empty()) return fail("metadata.uid is missing");
    return true;
}

bool all_digits(std::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string workload_from_owner(const std::string& kind, const std::string& owner,
                                const std::string& template_hash) {
    if (kind == "ReplicaSet") {
        // Deployment NAME owns ReplicaSet NAME-<pod-template-hash>.
        if (!template_hash.empty() && owner.size() > template_hash.size() + 1) {
            size_t cut = owner.size() - template_hash.size() - 1;
            if (owner[cut] == '-' && owner.compare(cut + 1, std::string::npos, template_hash) == 0)
                return owner.substr(0, cut);
        }
        return owner;
    }
    if (kind == "Job") {
        // CronJob NAME creates Jobs NAME-<scheduled time in minutes since the epoch>.
        size_t dash = owner.rfind('-');
        if (dash != std::string::npos && dash > 0) {
            std::string_view suffix = std::string_view(owner).substr(dash + 1);
            if (suffix.size() >= 8 && all_digits(suffix)) return owner.substr(0, dash);
        }
        return owner;
    }
    return owner;  // StatefulSet, DaemonSet, ReplicationController, operators' kinds
}

void add_unique(std::vector<IpAddr>* ips, const IpAddr& ip) {
    if (std::find(ips->begin(), ips->end(), ip) == ips->end()) ips->push_back(ip);
}

}  // namespace

std::optional<PodInfo> pod_from_json(const nlohmann::json& object, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    Meta meta;
    if (!read_meta(object, "Pod", "pod", &meta, error)) return std::nullopt;
    PodInfo pod;
    pod.uid = meta.uid;
    pod.namespace_ = meta.namespace_;
    pod.name = meta.name;
    const std::string who = "pod " + pod.namespace_ + "/" + pod.name + ": ";
    auto fail = [&](const std::string& what) {
        *error = who + what;
        return std::nullopt;
    };
    std::string what;
    const json& md = *meta.metadata;
    if (!opt_string(md, "creationTimestamp", "metadata.creationTimestamp", &pod.created, &what))
        return fail(what);

    // Workload from the controller owner.
    std::string template_hash;
    const json* labels = nullptr;
    if (!opt_object(md, "labels", "metadata.labels", &labels, &what)) return fail(what);
    if (labels && !opt_string(*labels, "pod-template-hash", "metadata.labels.pod-template-hash",
                              &template_hash, &what))
        return fail(what);
    pod.workload = pod.name;
    if (const json* owners = member(md, "ownerReferences")) {
        if (!owners->is_array()) return fail("metadata.ownerReferences is not a list");
        for (size_t i = 0; i < owners->size(); ++i) {
            const json& ref = (*owners)[i];
            const std::string path = "metadata.ownerReferences[" + std::to_string(i) + "]";
            if (!ref.is_object()) return fail(path + " is not an object");
            const json* controller = member(ref, "controller");
            if (controller && !controller->is_boolean()) return fail(path + ".controller is not a boolean");
            if (!controller || !controller->get<bool>()) continue;
            std::string kind, name;
            if (!opt_string(ref, "kind", path + ".kind", &kind, &what)) return fail(what);
            if (!opt_string(ref, "name", path + ".name", &name, &what)) return fail(what);
            if (kind.empty()) return fail(path + ".kind is missing");
            if (name.empty()) return fail(path + ".name is missing");
            pod.workload = workload_from_owner(kind, name, template_hash);
            break;  // at most one controller
        }
    }

    const json* spec = nullptr;
    if (!opt_object(object, "spec", "spec", &spec, &what)) return fail(what);
    if (spec) {
        if (!opt_string(*spec, "nodeName", "spec.nodeName", &pod.node, &what)) return fail(what);
        if (const json* host = member(*spec, "hostNetwork")) {
            if (!host->is_boolean()) return fail("spec.hostNetwork is not a boolean");
            pod.host_network = host->get<bool>();
        }
    }

    const json* status = nullptr;
    if (!opt_object(object, "status", "status", &status, &what)) return fail(what);
    if (status) {
        if (!opt_string(*status, "phase", "status.phase", &pod.phase, &what)) return fail(what);
        std::string pod_ip;
        if (!opt_string(*status, "podIP", "status.podIP", &pod_ip, &what)) return fail(what);
        if (!pod_ip.empty()) {
            auto ip = IpAddr::parse(pod_ip);
            if (!ip) return fail("status.podIP " + pod_ip + " is not an IP address");
            add_unique(&pod.ips, *ip);  // podIPs[0] by definition: keep it first
        }
        if (const json* ips = member(*status, "podIPs")) {
            if (!ips->is_array()) return fail("status.podIPs is not a list");
            for (size_t i = 0; i < ips->size(); ++i) {
                const std::string path = "status.podIPs[" + std::to_string(i) + "]";
                std::string text;
                if (!(*ips)[i].is_object()) return fail(path + " is not an object");
                if (!opt_string((*ips)[i], "ip", path + ".ip", &text, &what)) return fail(what);
                if (text.empty()) continue;
                auto ip = IpAddr::parse(text);
                if (!ip) return fail(path + ".ip " + text + " is not an IP address");
                add_unique(&pod.ips, *ip);
            }
        }
    }
    error->clear();
    return pod;
}

std::optional<ServiceInfo> service_from_json(const nlohmann::json& object, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    Meta meta;
    if (!read_meta(object, "Service", "service", &meta, error)) return std::nullopt;
    ServiceInfo svc;
    svc.uid = meta.uid;
    svc.namespace_ = meta.namespace_;
    svc.name = meta.name;
    auto fail = [&](const std::string& what) {
        *error = "service " + svc.namespace_ + "/" + svc.name + ": " + what;
        return std::nullopt;
    };
    std::string what;
    const json* spec = nullptr;
    if (!opt_object(object, "spec", "spec", &spec, &what)) return fail(what);
    if (spec) {
        auto add = [&](const std::string& text, const std::string& path) {
            if (text.empty() || text == "None") return true;  // headless / ExternalName
            auto ip = IpAddr::parse(text);
            if (!ip) {
                what = path + " " + text + " is not an IP address";
                return false;
            }
            add_unique(&svc.cluster_ips, *ip);
            return true;
        };
        std::string cluster_ip;
        if (!opt_string(*spec, "clusterIP", "spec.clusterIP", &cluster_ip, &what)) return fail(what);
        if (!add(cluster_ip, "spec.clusterIP")) return fail(what);
        if (const json* ips = member(*spec, "clusterIPs")) {
            if (!ips->is_array()) return fail("spec.clusterIPs is not a list");
            for (size_t i = 0; i < ips->size(); ++i) {
                const std::string path = "spec.clusterIPs[" + std::to_string(i) + "]";
                if (!(*ips)[i].is_string()) return fail(path + " is not a string");
                if (!add((*ips)[i].get<std::string>(), path)) return fail(what);
            }
        }
    }
    error->clear();
    return svc;
}


}  // namespace rstwatch
