// Attribution tests: addresses, Kubernetes pod/service parsing and owner chains, cluster state
// (IP reuse, host network, services, relist), Attributor precedence, concurrency smoke test.
#include <gtest/gtest.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "attribution.h"

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

PodInfo pod_info(const std::string& ns, const std::string& name, const std::string& uid,
                 std::vector<const char*> ips, const std::string& phase = "Running",
                 const std::string& created = "2024-05-02T09:00:00Z") {
    PodInfo p;
    p.uid = uid;
    p.namespace_ = ns;
    p.name = name;
    p.workload = name;
    p.phase = phase;
    p.created = created;
    for (const char* a : ips) p.ips.push_back(ip(a));
    return p;
}

ServiceInfo service_info(const std::string& ns, const std::string& name, const std::string& uid,
                         std::vector<const char*> ips) {
    ServiceInfo s;
    s.uid = uid;
    s.namespace_ = ns;
    s.name = name;
    for (const char* a : ips) s.cluster_ips.push_back(ip(a));
    return s;
}

std::shared_ptr<PodMap> pod_map(const std::string& yaml) {
    std::string error;
    auto map = PodMap::parse(yaml, &error);
    EXPECT_TRUE(map) << error;
    return std::make_shared<PodMap>(map ? std::move(*map) : PodMap{});
}

}  // namespace

// ---- addresses ----------------------------------------------------------------------------

TEST(IpAddr, ParsesAndPrints) {
    auto v4 = IpAddr::parse("10.244.0.10");
    ASSERT_TRUE(v4);
    EXPECT_TRUE(v4->is_v4());
    EXPECT_EQ(v4->str(), "10.244.0.10");
    const uint8_t mapped[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 0, 10};
    EXPECT_EQ(*v4, IpAddr::from_bytes(mapped));

    auto v4m = IpAddr::parse("::ffff:10.244.0.10");
    ASSERT_TRUE(v4m);
    EXPECT_EQ(*v4m, *v4);
    EXPECT_EQ(v4m->str(), "10.244.0.10");

    auto v6 = IpAddr::parse("2001:DB8:0:0:0:0:0:1");
    ASSERT_TRUE(v6);
    EXPECT_FALSE(v6->is_v4());
    EXPECT_EQ(v6->str(), "2001:db8::1");                                 // RFC 5952: lower case, ::
    EXPECT_EQ(ip("2001:db8:0:1:1:1:1:1").str(), "2001:db8:0:1:1:1:1:1");  // no :: for one zero field
    EXPECT_EQ(ip("2001:0:0:1:0:0:0:1").str(), "2001:0:0:1::1");          // longest run
    EXPECT_EQ(ip("::1").str(), "::1");
    EXPECT_EQ(ip("::").str(), "::");
    EXPECT_FALSE(ip("::1").is_v4());
    EXPECT_TRUE(ip("0.0.0.0").is_v4());
}

TEST(IpAddr, RejectsGarbage) {
    for (const char* bad : {"", "10.0.0", "10.0.0.256", "10.0.0.1 ", " 10.0.0.1", "10.0.0.1/32", "fd00::1%eth0",
                            "fd00:::1", "localhost", "1.2.3.4.5", "01.2.3.4", "fd00::g"}) {
        EXPECT_FALSE(IpAddr::parse(bad)) << bad;
    }
    EXPECT_FALSE(IpAddr::parse(std::string_view("10.0.0.1\0junk", 13)));
    EXPECT_FALSE(IpAddr::parse(std::string(100, '1')));
}

TEST(IpAddr, HashDistinguishesAddresses) {
    IpAddrHash h;
    EXPECT_EQ(h(ip("10.0.0.1")), h(ip("::ffff:10.0.0.1")));
    EXPECT_NE(h(ip("10.0.0.1")), h(ip("10.0.0.2")));
    EXPECT_NE(h(ip("fd00::1")), h(ip("fd00::2")));
}

TEST(Cidr, ParseMapsIpv4PrefixInto128BitSpace) {
    auto c = Cidr::parse("10.244.1.0/24");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->prefix_len, 96 + 24);
    EXPECT_EQ(c->base, ip("10.244.1.0"));
    EXPECT_EQ(c->str(), "10.244.1.0/24");
    EXPECT_TRUE(c->contains(ip("10.244.1.0")));
    EXPECT_TRUE(c->contains(ip("10.244.1.255")));
    EXPECT_FALSE(c->contains(ip("10.244.2.0")));
    EXPECT_FALSE(c->contains(ip("fd00::10.244.1.1")));

    auto all4 = Cidr::parse("0.0.0.0/0");
    ASSERT_TRUE(all4);
    EXPECT_EQ(all4->prefix_len, 96);
    EXPECT_TRUE(all4->contains(ip("255.255.255.255")));
    EXPECT_FALSE(all4->contains(ip("::1")));

    auto host = Cidr::parse("10.0.0.7/32");
    ASSERT_TRUE(host);
    EXPECT_EQ(host->prefix_len, 128);
    EXPECT_TRUE(host->contains(ip("10.0.0.7")));
    EXPECT_FALSE(host->contains(ip("10.0.0.6")));
}

TEST(Cidr, ParsesIpv6AndMasksHostBits) {
    auto c = Cidr::parse("fd00:10:244::/48");
    ASSERT_TRUE(c);
    EXPECT_EQ(c->prefix_len, 48);
    EXPECT_TRUE(c->contains(ip("fd00:10:244:ffff::1")));
    EXPECT_FALSE(c->contains(ip("fd00:10:245::1")));
    EXPECT_EQ(c->str(), "fd00:10:244::/48");

    auto odd = Cidr::parse("fd00::ff/121");  // /121 keeps the top bit of the last byte
    ASSERT_TRUE(odd);
    EXPECT_EQ(odd->base, ip("fd00::80"));
    EXPECT_TRUE(odd->has_host_bits(ip("fd00::ff")));
    EXPECT_FALSE(odd->has_host_bits(ip("fd00::80")));
    EXPECT_TRUE(odd->contains(ip("fd00::81")));
    EXPECT_FALSE(odd->contains(ip("fd00::7f")));

    auto masked = Cidr::parse("10.244.1.5/23");
    ASSERT_TRUE(masked);
    EXPECT_EQ(masked->base, ip("10.244.0.0"));

    auto mapped = Cidr::parse("::ffff:10.0.0.0/120");  // ':' notation: a 128-bit prefix
    ASSERT_TRUE(mapped);
    EXPECT_EQ(mapped->prefix_len, 120);
    EXPECT_EQ(mapped->str(), "10.0.0.0/24");

    for (const char* bad : {"10.0.0.0", "10.0.0.0/", "10.0.0.0/33", "fd00::/129", "10.0.0.0/x", "10.0.0.0/+8",
                            "10.0.0.0/-8", "/8", "10.0.0/8", "10.0.0.0/8/8", "10.0.0.0/0008"}) {
        EXPECT_FALSE(Cidr::parse(bad)) << bad;
    }
}

// ---- Kubernetes objects -----------------------------------------------------------------

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

TEST(ClusterState, IpReuseOldPodDeletedAfterNewPodAdded) {
    ClusterState cluster;
    PodInfo old_pod = pod_info("a", "old", "uid-old", {"10.244.1.5"});
    PodInfo new_pod = pod_info("b", "new", "uid-new", {"10.244.1.5"});
    cluster.upsert_pod(old_pod);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"))->pod, "old");
    cluster.upsert_pod(new_pod);  // newest upsert wins
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"))->pod, "new");
    // The old pod's late MODIFIED event does not take the IP back.
    PodInfo old_terminating = old_pod;
    old_terminating.node = "worker-9";
    cluster.upsert_pod(old_terminating);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"))->pod, "new");
    // Deleting the old pod keeps the new pod's mapping.
    cluster.delete_pod(old_pod);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), (Identity{"b", "new", "new"}));
    EXPECT_FALSE(cluster.pod_exists("a", "old"));
    EXPECT_TRUE(cluster.pod_exists("b", "new"));
    cluster.delete_pod(new_pod);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), std::nullopt);
    EXPECT_EQ(cluster.pod_count(), 0u);
}

TEST(ClusterState, IpReuseOldPodDeletedBeforeNewPodAdded) {
    ClusterState cluster;
    PodInfo old_pod = pod_info("a", "old", "uid-old", {"10.244.1.5"});
    PodInfo new_pod = pod_info("b", "new", "uid-new", {"10.244.1.5"});
    cluster.upsert_pod(old_pod);
    cluster.delete_pod(old_pod);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), std::nullopt);
    cluster.upsert_pod(new_pod);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), (Identity{"b", "new", "new"}));
    cluster.delete_pod(old_pod);  // a duplicate DELETED for the old uid: still harmless
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), (Identity{"b", "new", "new"}));
}

TEST(ClusterState, DeleteEventWithoutIpsStillReleasesStoredIps) {
    ClusterState cluster;
    cluster.upsert_pod(pod_info("a", "web", "uid-1", {"10.244.1.5"}));
    PodInfo final_state = pod_info("a", "web", "uid-1", {});  // DELETED object may lack status IPs
    cluster.delete_pod(final_state);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), std::nullopt);
    EXPECT_EQ(cluster.pod_count(), 0u);
}

TEST(ClusterState, CompletedPodsDoNotHoldIps) {
    ClusterState cluster;
    cluster.upsert_pod(pod_info("batch", "job-a", "uid-a", {"10.244.1.7"}, "Succeeded"));
    EXPECT_EQ(cluster.lookup(ip("10.244.1.7")), std::nullopt);
    EXPECT_TRUE(cluster.pod_exists("batch", "job-a"));  // the object still exists

    cluster.upsert_pod(pod_info("batch", "job-b", "uid-b", {"10.244.1.8"}));
    EXPECT_EQ(cluster.lookup(ip("10.244.1.8"))->pod, "job-b");
    cluster.upsert_pod(pod_info("batch", "job-b", "uid-b", {"10.244.1.8"}, "Failed"));  // MODIFIED
    EXPECT_EQ(cluster.lookup(ip("10.244.1.8")), std::nullopt);

    // A Running pod that got the IP of a completed pod keeps it when the completed pod is updated.
    cluster.upsert_pod(pod_info("web", "web-1", "uid-w", {"10.244.1.7"}));
    cluster.upsert_pod(pod_info("batch", "job-a", "uid-a", {"10.244.1.7"}, "Succeeded"));
    EXPECT_EQ(cluster.lookup(ip("10.244.1.7"))->pod, "web-1");

    // The newer holder completing lets an older claimant have the IP back.
    cluster.upsert_pod(pod_info("x", "older", "uid-o", {"10.244.1.9"}));
    cluster.upsert_pod(pod_info("x", "newer", "uid-n", {"10.244.1.9"}));
    cluster.upsert_pod(pod_info("x", "newer", "uid-n", {"10.244.1.9"}, "Succeeded"));
    EXPECT_EQ(cluster.lookup(ip("10.244.1.9"))->pod, "older");
}

TEST(ClusterState, HostNetworkPodsAreTheNode) {
    ClusterState cluster;
    PodInfo proxy = pod_info("kube-system", "kube-proxy-7xk2q", "uid-proxy", {"172.18.0.3"});
    proxy.host_network = true;
    proxy.workload = "kube-proxy";
    PodInfo cni = pod_info("kube-system", "kindnet-4x9zd", "uid-cni", {"172.18.0.3"});
    cni.host_network = true;
    cni.workload = "kindnet";
    cluster.upsert_pod(proxy);
    cluster.upsert_pod(cni);
    EXPECT_EQ(cluster.lookup(ip("172.18.0.3")), (Identity{"", "", "node"}));
    // One host-network pod going away leaves the node IP attributed.
    cluster.delete_pod(cni);
    EXPECT_EQ(cluster.lookup(ip("172.18.0.3")), (Identity{"", "", "node"}));
    cluster.delete_pod(proxy);
    EXPECT_EQ(cluster.lookup(ip("172.18.0.3")), std::nullopt);

    // Parsed from JSON.
    json ds = make_pod("kube-system", "node-exporter-abcde", "uid-ne", "172.18.0.4");
    set_owner(ds, "DaemonSet", "node-exporter");
    ds["spec"]["hostNetwork"] = true;
    cluster.upsert_pod(parse_pod(ds));
    EXPECT_EQ(cluster.lookup(ip("172.18.0.4")), (Identity{"", "", "node"}));
    EXPECT_TRUE(cluster.pod_exists("kube-system", "node-exporter-abcde"));
}

TEST(ClusterState, ServicesIncludingDualStack) {
    ClusterState cluster;
    cluster.upsert_service(service_info("shop", "checkout", "svc-1", {"10.96.14.201", "fd00:10:96::e1c"}));
    cluster.upsert_service(service_info("default", "kubernetes", "svc-2", {"10.96.0.1"}));
    cluster.upsert_service(service_info("shop", "checkout-headless", "svc-3", {}));
    EXPECT_EQ(cluster.service_count(), 3u);
    EXPECT_EQ(cluster.lookup(ip("10.96.14.201")), (Identity{"shop", "", "svc/checkout"}));
    EXPECT_EQ(cluster.lookup(ip("fd00:10:96::e1c")), (Identity{"shop", "", "svc/checkout"}));
    EXPECT_EQ(cluster.lookup(ip("10.96.0.1")), (Identity{"default", "", "svc/kubernetes"}));
    EXPECT_FALSE(cluster.pod_exists("shop", "checkout"));  // services are not pods

    // Service recreated with the same ClusterIP (new uid): old delete must not remove it.
    ServiceInfo old_api = service_info("default", "kubernetes", "svc-2", {"10.96.0.1"});
    cluster.upsert_service(service_info("default", "api", "svc-4", {"10.96.0.1"}));
    cluster.delete_service(old_api);
    EXPECT_EQ(cluster.lookup(ip("10.96.0.1")), (Identity{"default", "", "svc/api"}));

    // Single-stack update drops the IPv6 address.
    cluster.upsert_service(service_info("shop", "checkout", "svc-1", {"10.96.14.201"}));
    EXPECT_EQ(cluster.lookup(ip("fd00:10:96::e1c")), std::nullopt);
    EXPECT_EQ(cluster.lookup(ip("10.96.14.201")), (Identity{"shop", "", "svc/checkout"}));

    cluster.delete_service(service_info("shop", "checkout", "svc-1", {}));
    EXPECT_EQ(cluster.lookup(ip("10.96.14.201")), std::nullopt);
    EXPECT_EQ(cluster.service_count(), 2u);
}

TEST(ClusterState, PodWinsOverServiceForTheSameIp) {
    ClusterState cluster;
    cluster.upsert_service(service_info("ns", "svc", "s1", {"10.0.0.1"}));
    cluster.upsert_pod(pod_info("ns", "pod", "p1", {"10.0.0.1"}));
    EXPECT_EQ(cluster.lookup(ip("10.0.0.1")), (Identity{"ns", "pod", "pod"}));
}

TEST(ClusterState, ReplaceSwapsTheWholeSet) {
    ClusterState cluster;
    cluster.upsert_pod(pod_info("a", "gone", "uid-gone", {"10.0.0.1"}));
    cluster.upsert_pod(pod_info("a", "stays", "uid-stays", {"10.0.0.2"}));
    cluster.upsert_service(service_info("a", "gone-svc", "s-gone", {"10.96.0.10"}));

    cluster.replace_pods({pod_info("a", "stays", "uid-stays", {"10.0.0.2"}),
                          pod_info("a", "fresh", "uid-fresh", {"10.0.0.3"})});
    EXPECT_EQ(cluster.pod_count(), 2u);
    EXPECT_EQ(cluster.lookup(ip("10.0.0.1")), std::nullopt);
    EXPECT_FALSE(cluster.pod_exists("a", "gone"));
    EXPECT_TRUE(cluster.pod_exists("a", "stays"));
    EXPECT_EQ(cluster.lookup(ip("10.0.0.3"))->pod, "fresh");
    EXPECT_EQ(cluster.lookup(ip("10.96.0.10"))->workload, "svc/gone-svc");  // services untouched

    cluster.replace_services({service_info("a", "new-svc", "s-new", {"10.96.0.11"})});
    EXPECT_EQ(cluster.service_count(), 1u);
    EXPECT_EQ(cluster.lookup(ip("10.96.0.10")), std::nullopt);
    EXPECT_EQ(cluster.lookup(ip("10.96.0.11"))->workload, "svc/new-svc");
    EXPECT_EQ(cluster.pod_count(), 2u);  // pods untouched

    cluster.replace_pods({});
    EXPECT_EQ(cluster.pod_count(), 0u);
    EXPECT_EQ(cluster.lookup(ip("10.0.0.2")), std::nullopt);
}

TEST(ClusterState, RelistGivesSharedIpToTheNewestPod) {
    // A terminating pod and its successor both report the IP: the newer creation wins, in any list order.
    PodInfo older = pod_info("a", "older", "uid-1", {"10.0.0.5"}, "Running", "2024-05-01T10:00:00Z");
    PodInfo newer = pod_info("a", "newer", "uid-2", {"10.0.0.5"}, "Running", "2024-05-02T08:00:00Z");
    for (bool newer_first : {false, true}) {
        ClusterState cluster;
        cluster.replace_pods(newer_first ? std::vector<PodInfo>{newer, older} : std::vector<PodInfo>{older, newer});
        EXPECT_EQ(cluster.lookup(ip("10.0.0.5"))->pod, "newer") << newer_first;
        cluster.delete_pod(older);
        EXPECT_EQ(cluster.lookup(ip("10.0.0.5"))->pod, "newer") << newer_first;
    }
}

TEST(ClusterState, PodExistsAcrossRecreationWithSameName) {
    ClusterState cluster;
    PodInfo first = pod_info("data", "postgres-0", "uid-1", {"10.0.0.5"});
    PodInfo second = pod_info("data", "postgres-0", "uid-2", {"10.0.0.6"});
    cluster.upsert_pod(first);
    cluster.upsert_pod(second);  // an out-of-order ADDED before the old DELETED
    cluster.delete_pod(first);
    EXPECT_TRUE(cluster.pod_exists("data", "postgres-0"));
    EXPECT_EQ(cluster.lookup(ip("10.0.0.5")), std::nullopt);
    EXPECT_EQ(cluster.lookup(ip("10.0.0.6"))->pod, "postgres-0");
    cluster.delete_pod(second);
    EXPECT_FALSE(cluster.pod_exists("data", "postgres-0"));
}

// ---- attributor ----------------------------------------------------------------------------

TEST(Attributor, NoSourceGivesTheAddress) {
    Attributor attr;
    EXPECT_FALSE(attr.has_source());
    EXPECT_EQ(attr.identify(ip("10.244.1.5")), (Identity{"", "", "10.244.1.5"}));
    EXPECT_EQ(attr.identify(ip("::ffff:10.244.1.5")), (Identity{"", "", "10.244.1.5"}));
    EXPECT_EQ(attr.identify(ip("fd00:0:0::1")), (Identity{"", "", "fd00::1"}));
    EXPECT_FALSE(attr.known(ip("10.244.1.5")));
}

TEST(Attributor, AnySourceMakesUnknownAddressesWorld) {
    Attributor attr;
    attr.set_pod_map(pod_map("endpoints: []\n"));  // configured, even if empty
    EXPECT_TRUE(attr.has_source());
    EXPECT_EQ(attr.identify(ip("203.0.113.9")), (Identity{"", "", "world"}));
    EXPECT_FALSE(attr.known(ip("203.0.113.9")));

    Attributor cluster_only;
    cluster_only.set_cluster(std::make_shared<ClusterState>());
    EXPECT_TRUE(cluster_only.has_source());
    EXPECT_EQ(cluster_only.identify(ip("2001:db8::9")), (Identity{"", "", "world"}));

    attr.set_pod_map(nullptr);  // removing the only source
    EXPECT_FALSE(attr.has_source());
    EXPECT_EQ(attr.identify(ip("203.0.113.9")), (Identity{"", "", "203.0.113.9"}));
}

TEST(Attributor, PrecedencePodMapThenPodThenService) {
    auto cluster = std::make_shared<ClusterState>();
    cluster->upsert_pod(pod_info("shop", "checkout-abc-1", "p1", {"10.244.2.17"}));
    cluster->upsert_pod(pod_info("shop", "cart-abc-1", "p2", {"10.244.2.18"}));
    cluster->upsert_service(service_info("shop", "checkout", "s1", {"10.96.14.201"}));
    cluster->upsert_service(service_info("shop", "cart", "s2", {"10.96.14.202"}));

    Attributor attr;
    attr.set_cluster(cluster);
    attr.set_pod_map(pod_map(R"(endpoints:
  - ip: 10.244.2.17
    namespace: override
    pod: from-map
    workload: mapped
  - cidr: 10.96.14.200/30
    name: svc-range
  - cidr: 10.244.0.0/16
    name: pod-network
  - cidr: 192.168.10.0/24
    name: office-vpn
)"));

    // Pod map first, its most specific entry.
    EXPECT_EQ(attr.identify(ip("10.244.2.17")), (Identity{"override", "from-map", "mapped"}));
    EXPECT_EQ(attr.identify(ip("10.244.2.18")), (Identity{"", "", "pod-network"}));  // the /16 beats the cluster pod
    EXPECT_EQ(attr.identify(ip("10.96.14.201")), (Identity{"", "", "svc-range"}));
    EXPECT_EQ(attr.identify(ip("192.168.10.4")), (Identity{"", "", "office-vpn"}));
    EXPECT_TRUE(attr.known(ip("192.168.10.4")));

    // Without the pod map: cluster pods, then services, then world.
    attr.set_pod_map(nullptr);
    EXPECT_EQ(attr.identify(ip("10.244.2.17")), (Identity{"shop", "checkout-abc-1", "checkout-abc-1"}));
    EXPECT_EQ(attr.identify(ip("10.96.14.202")), (Identity{"shop", "", "svc/cart"}));
    EXPECT_EQ(attr.identify(ip("192.168.10.4")), (Identity{"", "", "world"}));
    EXPECT_TRUE(attr.known(ip("10.96.14.202")));
    EXPECT_FALSE(attr.known(ip("192.168.10.4")));

    // The cluster is shared: later watch events are visible through the attributor.
    cluster->delete_pod(pod_info("shop", "checkout-abc-1", "p1", {"10.244.2.17"}));
    EXPECT_EQ(attr.identify(ip("10.244.2.17")), (Identity{"", "", "world"}));
}

// ---- concurrency ----------------------------------------------------------------------------

// Smoke test for data races (run under -fsanitize=thread): writers upsert/delete/relist while
// readers look up through the attributor and swap the pod map.
TEST(Concurrency, UpsertsAndLookupsInParallel) {
    auto cluster = std::make_shared<ClusterState>();
    Attributor attr;
    attr.set_cluster(cluster);
    std::atomic<bool> stop{false};
    std::atomic<uint64_t> lookups{0}, bad{0};

    auto addr = [](int i) { return "10.1." + std::to_string(i / 250) + "." + std::to_string(i % 250 + 1); };
    std::vector<std::thread> threads;
    for (int w = 0; w < 2; ++w) {
        threads.emplace_back([&, w] {
            for (int round = 0; round < 200; ++round) {
                for (int i = w; i < 100; i += 2) {
                    std::string uid = "uid-" + std::to_string(i) + "-" + std::to_string(round % 3);
                    PodInfo p = pod_info("ns", "pod-" + std::to_string(i), uid, {addr(i).c_str()});
                    cluster->upsert_pod(p);
                    if (round % 2) cluster->delete_pod(p);
                }
                cluster->upsert_service(service_info("ns", "svc", "svc-" + std::to_string(w), {"10.96.0.1"}));
                if (w == 0 && round % 50 == 49) cluster->replace_pods({});
            }
        });
    }
    threads.emplace_back([&] {
        for (int round = 0; round < 50; ++round)
            attr.set_pod_map(round % 2 ? pod_map("endpoints:\n  - cidr: 10.2.0.0/16\n    name: ten-two\n") : nullptr);
    });
    for (int r = 0; r < 2; ++r) {
        threads.emplace_back([&] {
            do {
                for (int i = 0; i < 100; ++i) {
                    Identity id = attr.identify(ip(addr(i).c_str()));
                    if (id.workload != "world" && id.workload != "pod-" + std::to_string(i)) ++bad;
                    ++lookups;
                }
                cluster->pod_exists("ns", "pod-7");
                cluster->pod_count();
                if (attr.identify(ip("10.2.3.4")).workload == "10.2.3.4") ++bad;  // a source is always set
            } while (!stop.load());
        });
    }
    for (size_t i = 0; i < threads.size() - 2; ++i) threads[i].join();
    stop = true;
    threads[threads.size() - 2].join();
    threads.back().join();
    EXPECT_EQ(bad.load(), 0u);
    EXPECT_GT(lookups.load(), 0u);
    EXPECT_EQ(cluster->lookup(ip("10.96.0.1"))->namespace_, "ns");
}
