// Pair naming: name_pair() and PairNamer, its memory per address pair, which must name every
// event exactly as name_pair() would (cluster changes, former holders, pod map reloads, bound).
#include "pair.h"
#include "attribute_test_support.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

using namespace rstwatch;
using rstwatch::test::ip;

namespace {

PodInfo pod(const std::string& name, const std::string& uid, const char* address) {
    PodInfo p;
    p.uid = uid;
    p.namespace_ = "shop";
    p.name = name;
    p.workload = name.substr(0, name.find('-'));
    p.phase = "Running";
    p.created = "2026-12-07T09:00:00Z";
    p.ips.push_back(ip(address));
    return p;
}

struct Clock {
    std::shared_ptr<int64_t> now = std::make_shared<int64_t>(1'000);
    std::function<int64_t()> fn() const {
        return [now = now] { return *now; };
    }
};

const Endpoint kClient{"10.244.1.5", 41000};
const Endpoint kServer{"10.244.2.9", 8080};

}  // namespace

TEST(PairNamer, NamesAsNamePairAndRemembersThePair) {
    Clock clock;
    auto cluster = std::make_shared<ClusterState>(clock.fn());
    cluster->upsert_pod(pod("web-1", "uid-web", "10.244.1.5"));
    cluster->upsert_pod(pod("api-1", "uid-api", "10.244.2.9"));
    Attributor attributor;
    attributor.set_cluster(cluster);
    PairNamer namer(attributor);
    *clock.now = 5'000;
    const PairKey first = namer.name(kClient, kServer, 4'000);
    EXPECT_EQ(first, name_pair(attributor, kClient, kServer, 4'000));
    EXPECT_EQ(first.client.pod, "web-1");
    EXPECT_EQ(first.server.pod, "api-1");
    EXPECT_EQ(first.server_port, 8080);
    // Other client ports of the same pods: the same pair, remembered once.
    EXPECT_EQ(namer.name(Endpoint{"10.244.1.5", 41001}, kServer, 4'100), first);
    EXPECT_EQ(namer.remembered(), 1u);
    // Another server port is another pair.
    EXPECT_EQ(namer.name(kClient, Endpoint{"10.244.2.9", 9090}, 4'200).server_port, 9090);
    EXPECT_EQ(namer.remembered(), 2u);
    // Not an address: its text is the workload, as name_pair() has it.
    EXPECT_EQ(namer.name(Endpoint{"?", 1}, kServer, 4'300).client.workload, "?");
}

TEST(PairNamer, AClusterChangeIsSeenAndEarlierEventsKeepTheFormerHolder) {
    Clock clock;
    auto cluster = std::make_shared<ClusterState>(clock.fn());
    const PodInfo old_client = pod("web-1", "uid-web-1", "10.244.1.5");
    cluster->upsert_pod(old_client);
    cluster->upsert_pod(pod("api-1", "uid-api", "10.244.2.9"));
    Attributor attributor;
    attributor.set_cluster(cluster);
    PairNamer namer(attributor);
    EXPECT_EQ(namer.name(kClient, kServer, 1'500).client.pod, "web-1");

    // The client pod is replaced on its IP at 2,000.
    *clock.now = 2'000;
    cluster->delete_pod(old_client);
    cluster->upsert_pod(pod("batch-7", "uid-batch", "10.244.1.5"));
    // An event after the change: the new holder (the memory from before is not used).
    EXPECT_EQ(namer.name(kClient, kServer, 2'100).client.pod, "batch-7");
    // An event from before it, read afterwards: the former holder, without disturbing what is
    // remembered for events now.
    EXPECT_EQ(namer.name(kClient, kServer, 1'900).client.pod, "web-1");
    EXPECT_EQ(namer.name(kClient, kServer, 2'200).client.pod, "batch-7");
    EXPECT_EQ(namer.name(kClient, kServer, 1'999), name_pair(attributor, kClient, kServer, 1'999));
    // Without a time: as known now.
    EXPECT_EQ(namer.name(kClient, kServer, std::nullopt).client.pod, "batch-7");
}

TEST(PairNamer, APodMapReloadIsSeen) {
    Attributor attributor;
    std::string error;
    auto first = PodMap::parse("endpoints:\n  - ip: 10.244.2.9\n    name: old-name\n", &error);
    ASSERT_TRUE(first) << error;
    attributor.set_pod_map(std::make_shared<const PodMap>(*first));
    PairNamer namer(attributor);
    EXPECT_EQ(namer.name(kClient, kServer, 10).server.workload, "old-name");
    EXPECT_EQ(namer.name(kClient, kServer, 10).client.workload, "world");
    auto second = PodMap::parse("endpoints:\n  - ip: 10.244.2.9\n    name: new-name\n", &error);
    ASSERT_TRUE(second) << error;
    attributor.set_pod_map(std::make_shared<const PodMap>(*second));
    EXPECT_EQ(namer.name(kClient, kServer, 10).server.workload, "new-name");
    EXPECT_EQ(namer.remembered(), 1u);
}

TEST(PairNamer, WithoutSourcesTheAddressesAreTheNames) {
    Attributor attributor;
    PairNamer namer(attributor);
    const PairKey pair = namer.name(kClient, kServer, 10);
    EXPECT_EQ(pair.client.workload, "10.244.1.5");
    EXPECT_EQ(pair.server.workload, "10.244.2.9");
    EXPECT_EQ(namer.name(Endpoint{"fd00::2", 1}, Endpoint{"fd00::1", 80}, 10).server.workload, "fd00::1");
}

TEST(PairNamer, RemembersAtMostItsCapacity) {
    Attributor attributor;
    PairNamer namer(attributor, 2);
    for (int i = 0; i < 10; ++i) {
        const std::string server = "10.0.0." + std::to_string(i);
        EXPECT_EQ(namer.name(kClient, Endpoint{server, 80}, 10).server.workload, server);
        EXPECT_LE(namer.remembered(), 2u);
    }
}

TEST(PairNamer, KnownEndsFollowTheCluster) {
    Clock clock;
    auto cluster = std::make_shared<ClusterState>(clock.fn());
    cluster->upsert_pod(pod("web-1", "uid-web", "10.244.1.5"));
    Attributor attributor;
    attributor.set_cluster(cluster);
    PairNamer namer(attributor);
    EXPECT_FALSE(namer.known_ends(kClient, kServer));  // the server pod is not listed yet
    EXPECT_FALSE(namer.known_ends(kClient, kServer));
    EXPECT_EQ(namer.name(kClient, kServer, std::nullopt).server.workload, "world");
    *clock.now = 2'000;
    cluster->upsert_pod(pod("api-1", "uid-api", "10.244.2.9"));
    EXPECT_TRUE(namer.known_ends(kClient, kServer));
    EXPECT_EQ(namer.name(kClient, kServer, 2'100).server.pod, "api-1");
    // An end that is no address holds nothing up.
    EXPECT_TRUE(namer.known_ends(Endpoint{"?", 1}, kServer));
    EXPECT_FALSE(namer.known_ends(Endpoint{"10.9.9.9", 1}, kServer));
}

TEST(PairNamer, APodsStatusUpdatesKeepWhatIsRemembered) {
    Clock clock;
    auto cluster = std::make_shared<ClusterState>(clock.fn());
    PodInfo api = pod("api-1", "uid-api", "10.244.2.9");
    api.phase = "Pending";  // its IP assigned, containers starting
    cluster->upsert_pod(pod("web-1", "uid-web", "10.244.1.5"));
    cluster->upsert_pod(api);
    const ClusterState::Version listed = cluster->version();
    Attributor attributor;
    attributor.set_cluster(cluster);
    PairNamer namer(attributor);
    namer.name(kClient, kServer, 1'500);
    namer.name(kClient, Endpoint{"10.244.2.9", 9090}, 1'500);
    ASSERT_EQ(namer.remembered(), 2u);

    // MODIFIED: the pod starts running at 2,000; its names and IP stay.
    *clock.now = 2'000;
    api.phase = "Running";
    cluster->upsert_pod(api);
    EXPECT_EQ(cluster->version().generation, listed.generation);
    EXPECT_EQ(cluster->version().changed_ns, listed.changed_ns);
    EXPECT_EQ(namer.name(kClient, kServer, 1'900).server.pod, "api-1");
    EXPECT_EQ(namer.remembered(), 2u);  // nothing forgotten

    // A change of a name is one.
    *clock.now = 3'000;
    api.workload = "api-v2";
    cluster->upsert_pod(api);
    EXPECT_EQ(cluster->version().generation, listed.generation + 1);
    EXPECT_EQ(cluster->version().changed_ns, 3'000);
    EXPECT_EQ(namer.name(kClient, kServer, 3'100).server.workload, "api-v2");
    EXPECT_EQ(namer.remembered(), 1u);
}
