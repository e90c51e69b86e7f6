// Kubernetes Pod and Service objects -> PodInfo / ServiceInfo: owner chains, IPs, errors.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "attribution.h"
#include "kube_objects.h"

using namespace rstwatch;
using nlohmann::json;

namespace {

IpAddr ip(const char* text) {
    auto a = IpAddr::parse(text);
    EXPECT_TRUE(a) << text;
    return a.value_or(IpAddr{});
}

// A Deployment pod as `kubectl get pod -o json` prints it (trimmed of containers' detail).
const char* kDeploymentPod = R"({
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {
    "creationTimestamp": "2024-05-02T09:14:31Z",
    "generateName": "checkout-7c9d8f6b5d-",
    "labels": {
      "app.kubernetes.io/name": "checkout",
      "pod-template-hash": "7c9d8f6b5d"
    },
    "name": "checkout-7c9d8f6b5d-x2k8p",
    "namespace": "shop",
    "ownerReferences": [
      {
        "apiVersion": "apps/v1",
        "blockOwnerDeletion": true,
        "controller": true,
        "kind": "ReplicaSet",
        "name": "checkout-7c9d8f6b5d",
        "uid": "0d3e4f4b-1c55-4f3e-9a0e-6f1b1c2d3e4f"
      }
    ],
    "resourceVersion": "1234567",
    "uid": "5f1c2a7e-8d3b-4c61-9f0a-2b7e6d5c4a31"
  },
  "spec": {
    "containers": [
      {"image": "registry.example.com/shop/checkout:1.8.2", "name": "checkout",
       "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
    ],
    "dnsPolicy": "ClusterFirst",
    "nodeName": "worker-2",
    "restartPolicy": "Always",
    "serviceAccountName": "checkout"
  },
  "status": {
    "conditions": [{"lastTransitionTime": "2024-05-02T09:14:35Z", "status": "True", "type": "Ready"}],
    "hostIP": "172.18.0.3",
    "hostIPs": [{"ip": "172.18.0.3"}],
    "phase": "Running",
    "podIP": "10.244.2.17",
    "podIPs": [{"ip": "10.244.2.17"}, {"ip": "fd00:10:244:2::11"}],
    "qosClass": "Burstable",
    "startTime": "2024-05-02T09:14:31Z"
  }
})";

// A pod with the given name/owner, for owner-chain and state tests.
json make_pod(const std::string& ns, const std::string& name, const std::string& uid,
              const std::string& pod_ip, const std::string& phase = "Running") {
    json pod = {
        {"apiVersion", "v1"},
        {"kind", "Pod"},
        {"metadata",
         {{"name", name},
          {"namespace", ns},
          {"uid", uid},
          {"creationTimestamp", "2024-05-02T09:00:00Z"},
          {"labels", json::object()}}},
        {"spec", {{"containers", json::array({{{"name", "main"}, {"image", "busybox"}}})}, {"nodeName", "worker-1"}}},
        {"status", {{"phase", phase}}},
    };
    if (!pod_ip.empty()) {
        pod["status"]["podIP"] = pod_ip;
        pod["status"]["podIPs"] = json::array({{{"ip", pod_ip}}});
    }
    return pod;
}

void set_owner(json& pod, const std::string& kind, const std::string& name, bool controller = true) {
    pod["metadata"]["ownerReferences"] = json::array({{{"apiVersion", kind == "Job" ? "batch/v1" : "apps/v1"},
                                                       {"kind", kind},
                                                       {"name", name},
                                                       {"uid", "owner-" + name},
                                                       {"controller", controller},
                                                       {"blockOwnerDeletion", true}}});
}

PodInfo parse_pod(const json& object) {
    std::string error = "unset";
    auto pod = pod_from_json(object, &error);
    EXPECT_TRUE(pod) << error;
    EXPECT_EQ(error, "");
    return pod.value_or(PodInfo{});
}

std::string pod_error(const json& object) {
    std::string error;
    EXPECT_FALSE(pod_from_json(object, &error)) << object.dump();
    return error;
}

}  // namespace

TEST(PodFromJson, DeploymentPod) {
    PodInfo pod = parse_pod(json::parse(kDeploymentPod));
    EXPECT_EQ(pod.uid, "5f1c2a7e-8d3b-4c61-9f0a-2b7e6d5c4a31");
    EXPECT_EQ(pod.namespace_, "shop");
    EXPECT_EQ(pod.name, "checkout-7c9d8f6b5d-x2k8p");
    EXPECT_EQ(pod.workload, "checkout");
    EXPECT_EQ(pod.node, "worker-2");
    EXPECT_EQ(pod.phase, "Running");
    EXPECT_EQ(pod.created, "2024-05-02T09:14:31Z");
    EXPECT_FALSE(pod.host_network);
    ASSERT_EQ(pod.ips.size(), 2u);  // dual stack, podIP first, not repeated
    EXPECT_EQ(pod.ips[0], ip("10.244.2.17"));
    EXPECT_EQ(pod.ips[1], ip("fd00:10:244:2::11"));
}

TEST(PodFromJson, ReplicaSetWithoutHashLabelIsTheReplicaSet) {
    json pod = json::parse(kDeploymentPod);
    pod["metadata"]["labels"].erase("pod-template-hash");
    EXPECT_EQ(parse_pod(pod).workload, "checkout-7c9d8f6b5d");

    json mismatch = json::parse(kDeploymentPod);
    mismatch["metadata"]["labels"]["pod-template-hash"] = "6b5d";  // only the tail of the suffix
    EXPECT_EQ(parse_pod(mismatch).workload, "checkout-7c9d8f6b5d");

    json whole = make_pod("shop", "abc-x", "u1", "10.0.0.1");
    set_owner(whole, "ReplicaSet", "abc");
    whole["metadata"]["labels"]["pod-template-hash"] = "abc";  // nothing would be left
    EXPECT_EQ(parse_pod(whole).workload, "abc");

    json no_labels = json::parse(kDeploymentPod);
    no_labels["metadata"].erase("labels");
    EXPECT_EQ(parse_pod(no_labels).workload, "checkout-7c9d8f6b5d");
}

TEST(PodFromJson, StatefulSetDaemonSetAndOtherOwners) {
    json sts = make_pod("data", "postgres-0", "u-sts", "10.244.1.9");
    set_owner(sts, "StatefulSet", "postgres");
    sts["metadata"]["labels"]["controller-revision-hash"] = "postgres-6d4b8c9f7";
    EXPECT_EQ(parse_pod(sts).workload, "postgres");

    json ds = make_pod("kube-system", "kube-proxy-7xk2q", "u-ds", "172.18.0.3");
    set_owner(ds, "DaemonSet", "kube-proxy");
    ds["spec"]["hostNetwork"] = true;
    PodInfo proxy = parse_pod(ds);
    EXPECT_EQ(proxy.workload, "kube-proxy");
    EXPECT_TRUE(proxy.host_network);

    json rc = make_pod("legacy", "frontend-abcde", "u-rc", "10.244.1.10");
    set_owner(rc, "ReplicationController", "frontend");
    EXPECT_EQ(parse_pod(rc).workload, "frontend");
}

TEST(PodFromJson, CronJobAndPlainJob) {
    // CronJob "nightly-report" scheduled at minute 28578240 (2024-05-03T00:00Z) -> Job nightly-report-28578240.
    json scheduled = make_pod("reports", "nightly-report-28578240-5x7kq", "u-cj", "10.244.3.4", "Succeeded");
    set_owner(scheduled, "Job", "nightly-report-28578240");
    scheduled["metadata"]["labels"] = {{"batch.kubernetes.io/job-name", "nightly-report-28578240"},
                                       {"job-name", "nightly-report-28578240"}};
    EXPECT_EQ(parse_pod(scheduled).workload, "nightly-report");

    json plain = make_pod("reports", "db-migrate-v42-9kq2t", "u-job", "10.244.3.5");
    set_owner(plain, "Job", "db-migrate-v42");
    EXPECT_EQ(parse_pod(plain).workload, "db-migrate-v42");

    json short_digits = make_pod("reports", "backup-2024-abcde", "u-job2", "10.244.3.6");
    set_owner(short_digits, "Job", "backup-2024");  // fewer than 8 digits: not a CronJob's
    EXPECT_EQ(parse_pod(short_digits).workload, "backup-2024");

    json manual = make_pod("reports", "nightly-report-manual-x1-abcde", "u-job3", "10.244.3.7");
    set_owner(manual, "Job", "nightly-report-manual-x1");
    EXPECT_EQ(parse_pod(manual).workload, "nightly-report-manual-x1");

    json only_digits = make_pod("reports", "x", "u-job4", "10.244.3.8");
    set_owner(only_digits, "Job", "-28578240");
    EXPECT_EQ(parse_pod(only_digits).workload, "-28578240");
}

TEST(PodFromJson, BarePodAndNonControllerOwner) {
    json bare = make_pod("default", "debug-shell", "u-bare", "10.244.0.99");
    EXPECT_EQ(parse_pod(bare).workload, "debug-shell");

    json adopted = make_pod("default", "debug-shell-2", "u-bare2", "10.244.0.98");
    set_owner(adopted, "ReplicaSet", "someone-else", /*controller=*/false);
    EXPECT_EQ(parse_pod(adopted).workload, "debug-shell-2");

    json two = make_pod("default", "web-abc-123", "u-two", "10.244.0.97");
    two["metadata"]["ownerReferences"] = json::array(
        {{{"apiVersion", "v1"}, {"kind", "ConfigMap"}, {"name", "cfg"}, {"uid", "c"}},
         {{"apiVersion", "apps/v1"}, {"kind", "StatefulSet"}, {"name", "web"}, {"uid", "s"}, {"controller", true}}});
    EXPECT_EQ(parse_pod(two).workload, "web");
}

TEST(PodFromJson, PendingPodHasNoIps) {
    json pending = make_pod("default", "web-0", "u-pending", "", "Pending");
    pending["spec"].erase("nodeName");
    PodInfo pod = parse_pod(pending);
    EXPECT_TRUE(pod.ips.empty());
    EXPECT_EQ(pod.node, "");
    EXPECT_EQ(pod.phase, "Pending");

    json no_status = make_pod("default", "web-1", "u-nostatus", "");
    no_status.erase("status");
    EXPECT_TRUE(parse_pod(no_status).ips.empty());

    json only_pod_ip = make_pod("default", "web-2", "u-old", "10.1.1.1");
    only_pod_ip["status"].erase("podIPs");  // older API servers
    ASSERT_EQ(parse_pod(only_pod_ip).ips.size(), 1u);
}

TEST(PodFromJson, MissingOrMistypedFieldsAreErrors) {
    json no_uid = make_pod("shop", "web-0", "x", "10.0.0.1");
    no_uid["metadata"].erase("uid");
    EXPECT_EQ(pod_error(no_uid), "pod shop/web-0: metadata.uid is missing");

    json no_ns = make_pod("shop", "web-0", "x", "10.0.0.1");
    no_ns["metadata"].erase("namespace");
    EXPECT_EQ(pod_error(no_ns), "pod web-0: metadata.namespace is missing");

    json no_name = make_pod("shop", "web-0", "x", "10.0.0.1");
    no_name["metadata"].erase("name");
    EXPECT_EQ(pod_error(no_name), "pod: metadata.name is missing");

    json no_meta = make_pod("shop", "web-0", "x", "10.0.0.1");
    no_meta.erase("metadata");
    EXPECT_EQ(pod_error(no_meta), "pod: metadata is missing");

    EXPECT_EQ(pod_error(json::array()), "pod: not a JSON object");
    EXPECT_EQ(pod_error(json::parse(R"({"kind":"Status","apiVersion":"v1","status":"Failure","code":410})")),
              "pod: kind is Status, expected Pod");

    json bad_ip = make_pod("shop", "web-0", "x", "10.0.0.300");
    EXPECT_EQ(pod_error(bad_ip), "pod shop/web-0: status.podIP 10.0.0.300 is not an IP address");

    json bad_ips = make_pod("shop", "web-0", "x", "10.0.0.1");
    bad_ips["status"]["podIPs"] = "10.0.0.1";
    EXPECT_EQ(pod_error(bad_ips), "pod shop/web-0: status.podIPs is not a list");

    json bad_host = make_pod("shop", "web-0", "x", "10.0.0.1");
    bad_host["spec"]["hostNetwork"] = "true";
    EXPECT_EQ(pod_error(bad_host), "pod shop/web-0: spec.hostNetwork is not a boolean");

    json bad_owner = make_pod("shop", "web-0", "x", "10.0.0.1");
    set_owner(bad_owner, "ReplicaSet", "web");
    bad_owner["metadata"]["ownerReferences"][0].erase("name");
    EXPECT_EQ(pod_error(bad_owner), "pod shop/web-0: metadata.ownerReferences[0].name is missing");

    json uid_number = make_pod("shop", "web-0", "x", "10.0.0.1");
    uid_number["metadata"]["uid"] = 7;
    EXPECT_EQ(pod_error(uid_number), "pod shop/web-0: metadata.uid is not a string");

    std::string error;
    EXPECT_FALSE(pod_from_json(json(), nullptr));  // null error pointer is allowed
    EXPECT_FALSE(pod_from_json(json(), &error));
    EXPECT_NE(error, "");
}

TEST(ServiceFromJson, ClusterIpDualStackHeadlessExternalName) {
    json svc = json::parse(R"({
  "apiVersion": "v1",
  "kind": "Service",
  "metadata": {
    "creationTimestamp": "2024-04-11T08:00:12Z",
    "labels": {"app.kubernetes.io/name": "checkout"},
    "name": "checkout",
    "namespace": "shop",
    "resourceVersion": "998877",
    "uid": "a1b2c3d4-0000-4000-8000-111122223333"
  },
  "spec": {
    "clusterIP": "10.96.14.201",
    "clusterIPs": ["10.96.14.201", "fd00:10:96::e1c"],
    "internalTrafficPolicy": "Cluster",
    "ipFamilies": ["IPv4", "IPv6"],
    "ipFamilyPolicy": "PreferDualStack",
    "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
    "selector": {"app.kubernetes.io/name": "checkout"},
    "sessionAffinity": "None",
    "type": "ClusterIP"
  },
  "status": {"loadBalancer": {}}
})");
    std::string error = "unset";
    auto info = service_from_json(svc, &error);
    ASSERT_TRUE(info) << error;
    EXPECT_EQ(error, "");
    EXPECT_EQ(info->uid, "a1b2c3d4-0000-4000-8000-111122223333");
    EXPECT_EQ(info->namespace_, "shop");
    EXPECT_EQ(info->name, "checkout");
    ASSERT_EQ(info->cluster_ips.size(), 2u);
    EXPECT_EQ(info->cluster_ips[0], ip("10.96.14.201"));
    EXPECT_EQ(info->cluster_ips[1], ip("fd00:10:96::e1c"));

    json headless = svc;
    headless["spec"]["clusterIP"] = "None";
    headless["spec"]["clusterIPs"] = json::array({"None"});
    auto h = service_from_json(headless, &error);
    ASSERT_TRUE(h) << error;
    EXPECT_TRUE(h->cluster_ips.empty());

    json external = svc;
    external["spec"] = {{"type", "ExternalName"}, {"externalName", "db.example.com"}};
    auto e = service_from_json(external, &error);
    ASSERT_TRUE(e) << error;
    EXPECT_TRUE(e->cluster_ips.empty());

    json empty_ip = svc;
    empty_ip["spec"]["clusterIP"] = "";
    empty_ip["spec"].erase("clusterIPs");
    auto empty = service_from_json(empty_ip, &error);
    ASSERT_TRUE(empty) << error;
    EXPECT_TRUE(empty->cluster_ips.empty());

    json single = svc;  // clusterIP only (no clusterIPs: older API servers)
    single["spec"].erase("clusterIPs");
    auto s = service_from_json(single, &error);
    ASSERT_TRUE(s) << error;
    ASSERT_EQ(s->cluster_ips.size(), 1u);

    json bad = svc;
    bad["spec"]["clusterIPs"] = json::array({"10.96.14.201", "not-an-ip"});
    EXPECT_FALSE(service_from_json(bad, &error));
    EXPECT_EQ(error, "service shop/checkout: spec.clusterIPs[1] not-an-ip is not an IP address");

    json no_uid = svc;
    no_uid["metadata"].erase("uid");
    EXPECT_FALSE(service_from_json(no_uid, &error));
    EXPECT_EQ(error, "service shop/checkout: metadata.uid is missing");

    json a_pod = json::parse(kDeploymentPod);
    EXPECT_FALSE(service_from_json(a_pod, &error));
    EXPECT_EQ(error, "service shop/checkout-7c9d8f6b5d-x2k8p: kind is Pod, expected Service");
}

// ---- cluster state --------------------------------------------------------------------------

TEST(ClusterState, PodLookupFromParsedObject) {
    ClusterState cluster;
    cluster.upsert_pod(parse_pod(json::parse(kDeploymentPod)));
    const Identity want{"shop", "checkout-7c9d8f6b5d-x2k8p", "checkout"};
    EXPECT_EQ(cluster.lookup(ip("10.244.2.17")), want);
    EXPECT_EQ(cluster.lookup(ip("fd00:10:244:2::11")), want);
    EXPECT_EQ(cluster.lookup(ip("10.244.2.18")), std::nullopt);
    EXPECT_TRUE(cluster.pod_exists("shop", "checkout-7c9d8f6b5d-x2k8p"));
    EXPECT_FALSE(cluster.pod_exists("default", "checkout-7c9d8f6b5d-x2k8p"));
    EXPECT_EQ(cluster.pod_count(), 1u);
}
