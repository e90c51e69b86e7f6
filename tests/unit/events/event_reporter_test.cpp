// The reporter against the fake API server (tests/lib/fake_kube.py, the real wire format): Events
// created and their series patched, and the API refusing, throttling or hanging never blocking
// the caller nor losing a count.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>

#include "../kube/fake_kube_process.h"
#include "event_reporter.h"

using namespace rstwatch;
using namespace std::chrono_literals;
using rstwatch::testing::FakeKubeProcess;

namespace {

const PairKey kPair{{"ingress-nginx", "ingress-7d4b9-x2x", "ingress-nginx-controller"}, {"shop", "tomcat-0", "tomcat"}, 8080};
const PodRef kClient{"ingress-nginx", "ingress-7d4b9-x2x", ""};

Incident race() {
    Incident incident;
    incident.cause = Cause::idle_close_race;
    incident.idle_before_write_ms = 15200;
    return incident;
}

struct TokenFile {
    std::string path = "/tmp/rstwatch-events-token-" + std::to_string(getpid());
    TokenFile() { std::ofstream(path) << "t\n"; }
    ~TokenFile() { std::remove(path.c_str()); }
};

class EventReporterTest : public ::testing::Test {
protected:
    FakeKubeProcess kube{{"--token", "t"}};
    TokenFile token;

    std::unique_ptr<EventReporter> reporter(EventLimits limits = fast(), std::chrono::milliseconds timeout = 5s) {
        EXPECT_TRUE(kube.ok()) << kube.error();
        KubeConfig config{kube.url(), token.path, "", false};
        return std::make_unique<EventReporter>(
            config, "node-a", limits, [](const std::string&, const std::string& pod) { return "uid-of-" + pod; },
            timeout);
    }
    static EventLimits fast() {
        EventLimits limits;
        limits.per_event_interval = 1s;
        return limits;
    }
    nlohmann::json events() { return kube.control({{"op", "events"}}); }
    // Waits until the API holds one Event whose series count (1 without a series) is `count`.
    bool wait_for_count(uint64_t count, std::chrono::seconds limit = 20s) {
        auto deadline = std::chrono::steady_clock::now() + limit;
        while (std::chrono::steady_clock::now() < deadline) {
            auto list = events();
            if (list.size() == 1) {
                const auto& e = list[0];
                uint64_t held = e.contains("series") ? e["series"]["count"].get<uint64_t>() : 1;
                if (held == count) return true;
            }
            std::this_thread::sleep_for(100ms);
        }
        return false;
    }
    uint64_t writes(const EventReporter& r, const std::string& verb, const std::string& result) {
        auto stats = r.stats();
        auto it = stats.writes.find({verb, result});
        return it == stats.writes.end() ? 0 : it->second;
    }
};

}  // namespace

TEST_F(EventReporterTest, CreatesTheEventThenPatchesItsSeries) {
    auto r = reporter();
    r->start();
    r->incident(kClient, kPair, race());
    ASSERT_TRUE(wait_for_count(1)) << events().dump();
    auto event = events()[0];
    EXPECT_EQ(event["regarding"]["uid"], "uid-of-ingress-7d4b9-x2x");
    EXPECT_EQ(event["reason"], "StaleKeepaliveReset");
    for (int i = 0; i < 9; ++i) r->incident(kClient, kPair, race());
    ASSERT_TRUE(wait_for_count(10)) << events().dump();
    EXPECT_EQ(writes(*r, "create", "ok"), 1u);
    EXPECT_GE(writes(*r, "patch", "ok"), 1u);
    EXPECT_FALSE(r->stats().failing);
}

TEST_F(EventReporterTest, ForbiddenIsCountedRetriedAndLosesNoCount) {
    kube.control({{"op", "fail_next"}, {"status", 403}, {"count", 2}, {"verb", "create"}});
    auto r = reporter();
    r->start();
    const auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < 20000; ++i) r->incident(kClient, kPair, race());  // never waits for the API
    EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
    ASSERT_TRUE(wait_for_count(20000)) << events().dump();
    EXPECT_EQ(writes(*r, "create", "forbidden"), 2u);
    EXPECT_EQ(writes(*r, "create", "ok"), 1u);
    EXPECT_FALSE(r->stats().failing);
}

TEST_F(EventReporterTest, TooManyRequestsWaitsForRetryAfter) {
    kube.control({{"op", "fail_next"}, {"status", 429}, {"count", 1}, {"verb", "create"}, {"retry_after", 3}});
    auto r = reporter();
    r->start();
    r->incident(kClient, kPair, race());
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (writes(*r, "create", "throttled") == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    const auto throttled_at = std::chrono::steady_clock::now();
    ASSERT_EQ(writes(*r, "create", "throttled"), 1u);
    ASSERT_TRUE(wait_for_count(1));
    // Not before the server's Retry-After (a lower bound: a slow machine only makes it later).
    EXPECT_GE(std::chrono::steady_clock::now() - throttled_at, 2900ms);
}

TEST_F(EventReporterTest, AHungApiTimesOutAndStopIsPrompt) {
    kube.control({{"op", "fail_next"}, {"status", "hang"}, {"count", 1}, {"verb", "create"}, {"seconds", 30}});
    auto r = reporter(fast(), 1s);
    r->start();
    r->incident(kClient, kPair, race());
    r->incident(kClient, kPair, race());
    ASSERT_TRUE(wait_for_count(2)) << events().dump();  // timed out after 1 s, then retried with both
    EXPECT_EQ(writes(*r, "create", "unavailable"), 1u);
    kube.control({{"op", "fail_next"}, {"status", "hang"}, {"count", 5}, {"seconds", 30}});
    r->incident(kClient, kPair, race());
    std::this_thread::sleep_for(2500ms);  // a patch is now hanging
    const auto stopping = std::chrono::steady_clock::now();
    r->stop();
    EXPECT_LT(std::chrono::steady_clock::now() - stopping, 3s);
    kube.control({{"op", "release_hangs"}});
}

TEST_F(EventReporterTest, ATakenNameIsRenamedAndAnExpiredEventRecreatedWithEveryOccurrence) {
    kube.control({{"op", "fail_next"}, {"status", 409}, {"count", 1}, {"verb", "create"}});
    auto r = reporter();
    r->start();
    r->incident(kClient, kPair, race());
    ASSERT_TRUE(wait_for_count(1)) << events().dump();
    EXPECT_EQ(writes(*r, "create", "conflict"), 1u);
    const std::string first = events()[0]["metadata"]["name"];
    // The API server's --event-ttl deletes it: the next patch is a 404, then a create with all.
    kube.control({{"op", "clear_events"}});
    for (int i = 0; i < 4; ++i) r->incident(kClient, kPair, race());
    ASSERT_TRUE(wait_for_count(5)) << events().dump();
    EXPECT_EQ(writes(*r, "patch", "not_found"), 1u);
    EXPECT_EQ(writes(*r, "create", "ok"), 2u);
    EXPECT_NE(events()[0]["metadata"]["name"], first);
}

// A storm of incidents over many client pods: the API sees at most the node's budget of writes,
// and once the storm is over every pod's Event holds every one of its incidents.
TEST_F(EventReporterTest, AStormIsWithinTheNodeBudgetAndEveryCountArrives) {
    EventLimits limits = fast();
    limits.node_burst = 4;
    limits.node_writes_per_minute = 120;
    auto r = reporter(limits);
    r->start();
    constexpr int kPods = 12;
    constexpr int kPerPod = 500;
    const auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < kPods * kPerPod; ++i) {
        PairKey pair = kPair;
        pair.client.pod = "ingress-" + std::to_string(i % kPods);
        r->incident(PodRef{"ingress-nginx", pair.client.pod, ""}, pair, race());
    }
    std::this_thread::sleep_for(1500ms);
    const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    const size_t early = kube.control({{"op", "event_requests"}}).size();
    EXPECT_LE(static_cast<double>(early), limits.node_burst + elapsed_s * limits.node_writes_per_minute / 60 + 1);
    auto deadline = std::chrono::steady_clock::now() + 30s;
    uint64_t held = 0;
    while (std::chrono::steady_clock::now() < deadline) {
        held = 0;
        auto list = events();
        for (const auto& e : list) held += e.contains("series") ? e["series"]["count"].get<uint64_t>() : 1;
        if (list.size() == kPods && held == kPods * kPerPod) break;
        std::this_thread::sleep_for(200ms);
    }
    EXPECT_EQ(events().size(), static_cast<size_t>(kPods));
    EXPECT_EQ(held, static_cast<uint64_t>(kPods * kPerPod));
    EXPECT_EQ(r->stats().policy.dropped, 0u);
}
