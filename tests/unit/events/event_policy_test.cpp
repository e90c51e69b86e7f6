// Which Events are written and when: aggregation into series, the per-Event and per-node limits
// under an incident storm, the API's answers, and the mismatch lifecycle. No clock, no API.
#include <gtest/gtest.h>

#include <map>

#include "event_policy.h"

using namespace rstwatch;

namespace {

constexpr int64_t kSec = 1'000'000'000;
constexpr int64_t kUnix0 = 1'796'000'000LL * kSec;  // 2026-11-30

PairKey proxy_to(const std::string& server_workload, const std::string& client_pod = "ingress-7d4b9-x2x") {
    return PairKey{{"ingress-nginx", client_pod, "ingress-nginx-controller"},
                   {"shop", server_workload + "-0", server_workload},
                   8080};
}

PodRef client_of(const PairKey& pair) { return PodRef{pair.client.namespace_, pair.client.pod, ""}; }

Incident race(double idle_s = 15.2, Cause cause = Cause::idle_close_race) {
    Incident incident;
    incident.cause = cause;
    incident.observer = Observer::client;
    incident.idle_before_write_ms = idle_s * 1000;
    return incident;
}

PairVerdict mismatch(const std::string& setting, bool is_mismatch = true) {
    PairVerdict v;
    v.pair = workload_pair(proxy_to("tomcat"));
    v.mismatch = is_mismatch;
    v.reason = is_mismatch ? "the client reuses connections idle up to 15.20 s, the server closes them after 15.00 s"
                           : "the client closes idle connections after 11.00 s, before the server does";
    if (is_mismatch) v.fix = KeepaliveFix{"ingress-nginx", 11, setting};
    return v;
}

// Drives a policy over simulated time; every write succeeds unless `answer` says otherwise.
struct Driver {
    EventPolicy policy;
    int64_t mono = 1000 * kSec;
    std::vector<EventWrite> log;
    std::map<std::string, uint64_t> count_by_name;  // what the API holds
    std::function<KubeWriteResult(const EventWrite&)> answer = [](const EventWrite&) { return KubeWriteResult::ok; };

    explicit Driver(EventLimits limits = {}) : policy(limits, "node-a") {}
    int64_t unix_now() const { return kUnix0 + mono; }
    std::vector<EventWrite> step() {
        auto writes = policy.due(mono, unix_now());
        for (auto& w : writes) {
            KubeWriteResult result = answer(w);
            if (result == KubeWriteResult::ok) count_by_name[w.name] = w.count;
            policy.completed(w, result, mono);
            log.push_back(w);
        }
        return writes;
    }
    void advance(double seconds) { mono += static_cast<int64_t>(seconds * kSec); }
};

}  // namespace

TEST(EventObject, MicroTimeHasSixFractionalDigits) {
    EXPECT_EQ(micro_time(1'796'000'000LL * kSec + 123'456'789), "2026-11-30T00:53:20.123456Z");
    EXPECT_EQ(micro_time(0), "1970-01-01T00:00:00.000000Z");
}

TEST(EventObject, NameAndNoteFitTheApiLimits) {
    const std::string long_pod(250, 'p');
    const std::string name = event_name(long_pod, kUnix0);
    EXPECT_LE(name.size(), kMaxObjectNameBytes);
    EXPECT_NE(name.find('.'), std::string::npos);
    EventFields fields;
    fields.name = name;
    fields.regarding = {"shop", long_pod, ""};
    fields.note = std::string(1021, 'a') + "\xc3\xa9\xc3\xa9\xc3\xa9";  // a 2-byte character across the limit
    fields.type = "Warning";
    auto event = event_object(fields);
    const std::string note = event["note"];
    EXPECT_LE(note.size(), kMaxEventNoteBytes);
    EXPECT_EQ(note.size(), 1023u);  // cut before the character, not inside it
    EXPECT_FALSE(event.contains("series"));
    EXPECT_FALSE(event["regarding"].contains("uid"));
}

TEST(EventPolicy, FirstIncidentIsAnEventAtOnce) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    auto writes = d.step();
    ASSERT_EQ(writes.size(), 1u);
    const auto& e = writes[0].body;
    EXPECT_TRUE(writes[0].create);
    EXPECT_EQ(writes[0].namespace_, "ingress-nginx");
    EXPECT_EQ(e["apiVersion"], "events.k8s.io/v1");
    EXPECT_EQ(e["kind"], "Event");
    EXPECT_EQ(e["type"], "Warning");
    EXPECT_EQ(e["reason"], "StaleKeepaliveReset");
    EXPECT_EQ(e["reportingController"], "rstwatch");
    EXPECT_EQ(e["reportingInstance"], "node-a");
    EXPECT_EQ(e["regarding"]["kind"], "Pod");
    EXPECT_EQ(e["regarding"]["name"], "ingress-7d4b9-x2x");
    EXPECT_EQ(e["related"]["name"], "tomcat-0");
    EXPECT_EQ(e["metadata"]["namespace"], "ingress-nginx");
    EXPECT_EQ(e["eventTime"], micro_time(d.unix_now()));
    EXPECT_FALSE(e.contains("series"));
    const std::string note = e["note"];
    EXPECT_NE(note.find("shop/tomcat:8080"), std::string::npos) << note;
    EXPECT_NE(note.find("idle 15.2 s"), std::string::npos) << note;
    EXPECT_NE(note.find("kubectl rstwatch diagnose -n ingress-nginx"), std::string::npos) << note;
    EXPECT_TRUE(d.step().empty());
}

TEST(EventPolicy, RepeatsAdvanceTheSeriesAtMostOncePerInterval) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    ASSERT_EQ(d.step().size(), 1u);
    for (int second = 1; second < 60; ++second) {
        d.advance(1);
        d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
        d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
        EXPECT_TRUE(d.step().empty()) << "second " << second;
    }
    d.advance(1);
    auto writes = d.step();
    ASSERT_EQ(writes.size(), 1u);
    EXPECT_FALSE(writes[0].create);
    EXPECT_EQ(writes[0].body["series"]["count"], 1 + 59 * 2);
    EXPECT_EQ(writes[0].body["series"]["lastObservedTime"], micro_time(d.unix_now() - kSec));
    EXPECT_EQ(writes[0].body.size(), 1u);  // the patch touches the series only (the rest is immutable)
    EXPECT_EQ(d.policy.stats().pending, 0u);
}

TEST(EventPolicy, ResetsOutsideTheKeepaliveRaceAndTheServersRecordsAreNoStaleKeepaliveReset) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.policy.incident(client_of(pair), pair, race(0, Cause::reset_other), d.mono, d.unix_now());
    Incident server_side = race(0, Cause::abort_on_close);
    server_side.observer = Observer::server;  // the same race from the server's socket: counted once, by the client
    d.policy.incident(client_of(pair), pair, server_side, d.mono, d.unix_now());
    EXPECT_TRUE(d.step().empty());
    EXPECT_EQ(d.policy.stats().tracked, 0u);
}

// A storm: 300 client pods x 50 servers' worth of incidents for ten minutes, due() every second.
TEST(EventPolicy, AStormStaysWithinTheNodeBudgetAndLosesNoCount) {
    EventLimits limits;
    Driver d(limits);
    uint64_t incidents = 0;
    const int pods = 300;
    for (int second = 0; second < 600; ++second) {
        for (int i = 0; i < 100; ++i) {  // 100 incidents a second
            const int n = (second * 100 + i) % pods;
            const PairKey pair = proxy_to("tomcat", "client-" + std::to_string(n));
            d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
            ++incidents;
        }
        d.step();
        d.advance(1);
    }
    // Writes within the bucket: the burst plus the sustained rate over ten minutes.
    const double budget = static_cast<double>(limits.node_burst) + limits.node_writes_per_minute * 10;
    EXPECT_LE(static_cast<double>(d.log.size()), budget + 1);
    EXPECT_GE(static_cast<double>(d.log.size()), budget - 2);  // and the budget is used
    EXPECT_GT(d.policy.stats().deferred, 0u);
    // After the storm every Event catches up: the API holds every incident.
    for (int minute = 0; minute < 120 && d.policy.stats().pending > 0; ++minute) {
        d.advance(60);
        d.step();
    }
    uint64_t held = 0;
    for (const auto& [name, count] : d.count_by_name) held += count;
    EXPECT_EQ(d.policy.stats().pending, 0u);
    EXPECT_EQ(d.policy.stats().dropped, 0u);
    EXPECT_EQ(held, incidents);
    EXPECT_EQ(d.count_by_name.size(), static_cast<size_t>(pods));  // one Event per client pod and server
}

TEST(EventPolicy, MoreEventsThanHeldDropsTheOldestCounted) {
    EventLimits limits;
    limits.max_events = 10;
    limits.node_burst = 1;
    Driver d(limits);
    d.answer = [](const EventWrite&) { return KubeWriteResult::unavailable; };  // the API is down
    for (int n = 0; n < 15; ++n) {
        const PairKey pair = proxy_to("tomcat", "client-" + std::to_string(n));
        d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
        d.advance(1);
    }
    EXPECT_EQ(d.policy.stats().tracked, 10u);
    EXPECT_EQ(d.policy.stats().dropped, 5u);
}

TEST(EventPolicy, FailedWritesAreRetriedWithTheCountsGatheredMeanwhile) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.answer = [](const EventWrite&) { return KubeWriteResult::throttled; };
    d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    ASSERT_EQ(d.step().size(), 1u);
    for (int i = 0; i < 4; ++i) d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    d.answer = [](const EventWrite&) { return KubeWriteResult::ok; };
    d.advance(1);
    auto writes = d.step();
    ASSERT_EQ(writes.size(), 1u);
    EXPECT_TRUE(writes[0].create);  // still the first write: the create, with the whole count
    EXPECT_EQ(writes[0].body["series"]["count"], 5);
}

TEST(EventPolicy, ANameTakenIsRenamedAndAnExpiredEventRecreated) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.answer = [](const EventWrite&) { return KubeWriteResult::conflict; };
    d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    auto first = d.step();
    ASSERT_EQ(first.size(), 1u);
    d.answer = [](const EventWrite&) { return KubeWriteResult::ok; };
    auto second = d.step();
    ASSERT_EQ(second.size(), 1u);
    EXPECT_TRUE(second[0].create);
    EXPECT_NE(second[0].name, first[0].name);
    // The API server's --event-ttl deleted it: the next patch is a 404, then a create with all.
    for (int i = 0; i < 3; ++i) d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    d.advance(60);
    d.answer = [](const EventWrite& w) { return w.create ? KubeWriteResult::ok : KubeWriteResult::not_found; };
    auto patch = d.step();
    ASSERT_EQ(patch.size(), 1u);
    EXPECT_FALSE(patch[0].create);
    auto recreate = d.step();
    ASSERT_EQ(recreate.size(), 1u);
    EXPECT_TRUE(recreate[0].create);
    EXPECT_EQ(recreate[0].body["series"]["count"], 4);
}

TEST(EventPolicy, AnInvalidEventIsDroppedCountedAndNotRetried) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.answer = [](const EventWrite&) { return KubeWriteResult::invalid; };
    d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    ASSERT_EQ(d.step().size(), 1u);
    d.policy.incident(client_of(pair), pair, race(), d.mono, d.unix_now());
    d.advance(120);
    EXPECT_TRUE(d.step().empty());
    EXPECT_EQ(d.policy.stats().dropped, 2u);
}

TEST(EventPolicy, AMismatchIsAnEventWithTheFixRenewedWhenTheFixChangesAndResolved) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    const std::vector<PodRef> clients = {client_of(pair)};
    d.policy.verdict(clients, mismatch("ingress-nginx ConfigMap: upstream-keepalive-timeout: \"11\""), d.mono,
                     d.unix_now());
    auto writes = d.step();
    ASSERT_EQ(writes.size(), 1u);
    EXPECT_EQ(writes[0].body["reason"], "KeepaliveTimeoutMismatch");
    EXPECT_EQ(writes[0].body["type"], "Warning");
    EXPECT_EQ(writes[0].body["action"], "Predict");
    const std::string note = writes[0].body["note"];
    EXPECT_NE(note.find("ingress-nginx/ingress-nginx-controller -> shop/tomcat:8080"), std::string::npos) << note;
    EXPECT_NE(note.find("Fix (ingress-nginx): ingress-nginx ConfigMap: upstream-keepalive-timeout: \"11\""),
              std::string::npos)
        << note;
    // The same verdict again: nothing new.
    d.policy.verdict(clients, mismatch("ingress-nginx ConfigMap: upstream-keepalive-timeout: \"11\""), d.mono,
                     d.unix_now());
    EXPECT_TRUE(d.step().empty());
    // Standing: refreshed before the API server's event TTL would delete it.
    d.advance(1800);
    auto refresh = d.step();
    ASSERT_EQ(refresh.size(), 1u);
    EXPECT_FALSE(refresh[0].create);
    EXPECT_EQ(refresh[0].body["series"]["count"], 2);
    // A different fix: a new Event (a note cannot be patched).
    d.policy.verdict(clients, mismatch("ingress-nginx ConfigMap: upstream-keepalive-timeout: \"7\""), d.mono,
                     d.unix_now());
    auto renewed = d.step();
    ASSERT_EQ(renewed.size(), 1u);
    EXPECT_TRUE(renewed[0].create);
    EXPECT_NE(renewed[0].name, writes[0].name);
    // Cleared: a Normal Event says so, and the mismatch is no longer refreshed.
    d.policy.verdict(clients, mismatch("", false), d.mono, d.unix_now());
    auto resolved = d.step();
    ASSERT_EQ(resolved.size(), 1u);
    EXPECT_EQ(resolved[0].body["reason"], "KeepaliveTimeoutMismatchResolved");
    EXPECT_EQ(resolved[0].body["type"], "Normal");
    d.advance(3600);
    EXPECT_TRUE(d.step().empty());
    EXPECT_EQ(d.policy.stats().tracked, 0u);  // the resolved one forgotten after an hour
}

TEST(EventPolicy, AHealthyVerdictNeverReportedClearsNothing) {
    Driver d;
    const PairKey pair = proxy_to("tomcat");
    d.policy.verdict({client_of(pair)}, mismatch("", false), d.mono, d.unix_now());
    EXPECT_TRUE(d.step().empty());
}
