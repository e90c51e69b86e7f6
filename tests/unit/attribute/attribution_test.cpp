// Attribution tests: addresses, cluster state (IP reuse, host network, services, relist),
// Attributor precedence, concurrency smoke test. Decoding pods and services: kube_objects_test.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "attribution.h"
#include "attribute_test_support.h"

using namespace rstwatch;
using rstwatch::test::ip;

namespace {

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
    EXPECT_EQ(ip("0.0.0.0").str(), "0.0.0.0");  // IPv4 is formatted by hand (to_chars)
    EXPECT_EQ(ip("255.255.255.255").str(), "255.255.255.255");
    EXPECT_EQ(ip("1.20.100.9").str(), "1.20.100.9");
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

    // Another node's host-network pod (decoded from JSON in kube_objects_test).
    PodInfo ds = pod_info("kube-system", "node-exporter-abcde", "uid-ne", {"172.18.0.4"});
    ds.host_network = true;
    cluster.upsert_pod(ds);
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

// ---- naming events by when they happened ------------------------------------------------

// A settable CLOCK_MONOTONIC for the cluster state.
struct FakeClock {
    std::shared_ptr<int64_t> now = std::make_shared<int64_t>(1'000);
    std::function<int64_t()> fn() const {
        return [now = now] { return *now; };
    }
    void set(int64_t t) { *now = t; }
};

TEST(ClusterState, AnEventBeforeItsIpChangedHandsKeepsTheFormerHolder) {
    // Seen in CI (kernel_agent_kube): the client pod is replaced right after its incident, and
    // the agent reads the record a few ms after the watch applied the swap.
    FakeClock clock;
    ClusterState cluster(clock.fn());
    PodInfo old_pod = pod_info("shop", "frontend-1", "uid-old", {"10.244.1.5"});
    PodInfo new_pod = pod_info("batch", "reports-1", "uid-new", {"10.244.1.5"});
    clock.set(100);
    cluster.upsert_pod(old_pod);
    const int64_t incident_at = 150;
    clock.set(200);
    cluster.delete_pod(old_pod);
    clock.set(210);
    cluster.upsert_pod(new_pod);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), incident_at), (Identity{"shop", "frontend-1", "frontend-1"}));
    // Between the two the IP had no holder known: named as it is now (the hold queue's case:
    // a new pod the watch reports late).
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 205), (Identity{"batch", "reports-1", "reports-1"}));
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 220), (Identity{"batch", "reports-1", "reports-1"}));
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5")), (Identity{"batch", "reports-1", "reports-1"}));
    // The new pod taking the IP over directly (its ADDED before the old one's DELETED).
    PodInfo third = pod_info("batch", "reports-2", "uid-third", {"10.244.1.5"});
    clock.set(300);
    cluster.upsert_pod(third);
    clock.set(310);
    cluster.delete_pod(new_pod);  // no longer the holder: nothing changes hands
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), incident_at)->pod, "frontend-1");
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 250)->pod, "reports-1");
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 305)->pod, "reports-2");
    EXPECT_EQ(cluster.former_holder_count(), 2u);
}

TEST(ClusterState, AnIpFirstLearnedAfterTheEventIsNamedByItsHolderNow) {
    // The watch is late for a new pod: its first incident happened before the agent knew it.
    FakeClock clock;
    ClusterState cluster(clock.fn());
    clock.set(500);
    cluster.upsert_pod(pod_info("shop", "web-0", "uid-1", {"10.244.2.9"}));
    EXPECT_EQ(cluster.lookup(ip("10.244.2.9"), 400)->pod, "web-0");
    EXPECT_EQ(cluster.former_holder_count(), 0u);
    // A MODIFIED event of the same pod changes no hands either.
    clock.set(600);
    PodInfo moved = pod_info("shop", "web-0", "uid-1", {"10.244.2.9"});
    moved.node = "worker-2";
    cluster.upsert_pod(moved);
    EXPECT_EQ(cluster.former_holder_count(), 0u);
}

TEST(ClusterState, RelistsAndServicesKeepFormerHoldersToo) {
    FakeClock clock;
    ClusterState cluster(clock.fn());
    clock.set(100);
    cluster.replace_pods({pod_info("a", "old", "uid-old", {"10.244.1.5"})});
    cluster.upsert_service(service_info("default", "kubernetes", "svc-1", {"10.96.0.1"}));
    clock.set(200);  // the watch expired; the relist finds another pod on that IP
    cluster.replace_pods({pod_info("b", "new", "uid-new", {"10.244.1.5"}, "Running", "2024-05-02T10:00:00Z")});
    cluster.replace_services({service_info("default", "api", "svc-2", {"10.96.0.1"})});
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 150)->pod, "old");
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 250)->pod, "new");
    EXPECT_EQ(cluster.lookup(ip("10.96.0.1"), 150)->workload, "svc/kubernetes");
    EXPECT_EQ(cluster.lookup(ip("10.96.0.1"), 250)->workload, "svc/api");
    clock.set(300);
    cluster.delete_service(service_info("default", "api", "svc-2", {}));
    EXPECT_EQ(cluster.lookup(ip("10.96.0.1"), 250)->workload, "svc/api");
    EXPECT_EQ(cluster.lookup(ip("10.96.0.1"), 350), std::nullopt);
}

TEST(ClusterState, FormerHoldersExpireAndAreBounded) {
    FakeClock clock;
    ClusterState cluster(clock.fn());
    clock.set(1'000);
    cluster.upsert_pod(pod_info("a", "p0", "uid-0", {"10.244.1.5"}));
    clock.set(2'000);
    cluster.upsert_pod(pod_info("a", "p1", "uid-1", {"10.244.1.5"}));
    ASSERT_EQ(cluster.former_holder_count(), 1u);
    // Long after: the next change forgets it (no event is read that late).
    clock.set(2'000 + ClusterState::kFormerHolderKeepNs + 1);
    cluster.upsert_pod(pod_info("a", "p2", "uid-2", {"10.244.1.6"}));
    EXPECT_EQ(cluster.former_holder_count(), 0u);
    EXPECT_EQ(cluster.lookup(ip("10.244.1.5"), 1'500)->pod, "p1");  // the holder now
    // Pod churn on one IP faster than the expiry: bounded, the newest kept.
    const size_t churn = ClusterState::kMaxFormerHolders + 100;
    for (size_t i = 0; i < churn; ++i) {
        clock.set(static_cast<int64_t>(10'000'000'000'000 + i));
        cluster.upsert_pod(pod_info("c", "q" + std::to_string(i), "uid-q" + std::to_string(i), {"10.244.3.3"}));
    }
    EXPECT_EQ(cluster.former_holder_count(), ClusterState::kMaxFormerHolders);
    const auto before_last = static_cast<int64_t>(10'000'000'000'000 + churn - 2);
    EXPECT_EQ(cluster.lookup(ip("10.244.3.3"), before_last)->pod, "q" + std::to_string(churn - 2));
}

TEST(Attributor, NamesAnEventByTheHolderWhenItHappened) {
    FakeClock clock;
    auto cluster = std::make_shared<ClusterState>(clock.fn());
    PodInfo old_pod = pod_info("shop", "frontend-1", "uid-old", {"10.244.1.5"});
    clock.set(100);
    cluster->upsert_pod(old_pod);
    clock.set(200);
    cluster->delete_pod(old_pod);
    cluster->upsert_pod(pod_info("batch", "reports-1", "uid-new", {"10.244.1.5"}));
    Attributor attributor;
    attributor.set_cluster(cluster);
    EXPECT_EQ(attributor.identify(ip("10.244.1.5"), 150).pod, "frontend-1");
    EXPECT_EQ(attributor.identify(ip("10.244.1.5")).pod, "reports-1");
    // A pod map entry is not Kubernetes: it has no history and wins as before.
    std::string error;
    auto map = PodMap::parse("endpoints:\n  - ip: 10.244.1.5\n    name: pinned\n", &error);
    ASSERT_TRUE(map) << error;
    attributor.set_pod_map(std::make_shared<const PodMap>(*map));
    EXPECT_EQ(attributor.identify(ip("10.244.1.5"), 150).workload, "pinned");
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
