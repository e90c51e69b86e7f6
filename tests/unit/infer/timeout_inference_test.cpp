// Idle-timeout inference and keepalive-mismatch verdicts on synthetic observation streams.
#include <gtest/gtest.h>

#include <random>

#include "diagnosis.h"
#include "timeout_inference.h"

using namespace rstwatch;

namespace {

constexpr uint64_t kSec = 1'000'000'000ULL;

PairKey proxy_to_tomcat() {
    return PairKey{{"ingress-nginx", "ingress-nginx-controller-5d88c", "ingress-nginx-controller"},
                   {"shop", "tomcat-0", "tomcat"},
                   8080};
}

// A stream of observations of one pair; each connection gets its own client port.
struct Feed {
    TimeoutInference& inference;
    PairKey pair = proxy_to_tomcat();
    uint64_t now = 1000 * kSec;
    uint16_t port = 40000;

    void add(ObservationKind kind, double idle_s, Observer observer = Observer::client,
             const std::string& comm = "nginx") {
        Observation o;
        o.ts_ns = now;
        o.kind = kind;
        o.observer = observer;
        o.client = {"10.244.1.5", port++};
        o.server = {"10.244.2.7", 8080};
        o.idle_s = idle_s;
        o.comm = comm;
        now += 3 * kSec;
        inference.observe(pair, o);
    }
};

}  // namespace

TEST(RobustTimeout, MedianOfTheBulkIgnoresOutliers) {
    // 20 closes at the server's 20 s timeout (jiffy noise) and a few early closes (restarts).
    std::vector<double> samples;
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> jitter(0.0, 0.012);
    for (int i = 0; i < 20; ++i) samples.push_back(20.0 + jitter(rng));
    samples.insert(samples.end(), {1.2, 3.5, 7.0, 140.0});
    auto estimate = robust_timeout(samples);
    ASSERT_TRUE(estimate);
    EXPECT_NEAR(estimate->seconds, 20.0, 0.02);
    EXPECT_EQ(estimate->evidence, 20u);
}

TEST(RobustTimeout, EmptyGivesNothing) { EXPECT_FALSE(robust_timeout({})); }

TEST(TimeoutInference, ServerTimeoutAppearsAfterMinimumEvidence) {
    TimeoutInference inference({.min_evidence = 5});
    Feed feed{inference};
    for (int i = 0; i < 4; ++i) feed.add(ObservationKind::server_idle_close, 2.004);
    EXPECT_FALSE(inference.verdict(feed.pair).server_timeout);
    EXPECT_FALSE(inference.verdict(feed.pair).mismatch);  // absent, not "no"
    feed.add(ObservationKind::server_idle_close, 2.008);
    PairVerdict v = inference.verdict(feed.pair);
    ASSERT_TRUE(v.server_timeout);
    EXPECT_NEAR(v.server_timeout->seconds, 2.004, 0.005);
    EXPECT_EQ(v.server_timeout->evidence, 5u);
    // The server closed connections the client kept idle until the server's timeout.
    ASSERT_TRUE(v.mismatch);
    EXPECT_TRUE(*v.mismatch);
    ASSERT_TRUE(v.fix);
    EXPECT_EQ(v.fix->client_kind, "ingress-nginx");
    EXPECT_DOUBLE_EQ(v.fix->value_s, 1.5);
    EXPECT_EQ(v.fix->setting, "ingress-nginx ConfigMap: upstream-keepalive-timeout: \"1.5\"");
}

TEST(TimeoutInference, ClientClosingFirstIsNoMismatch) {
    TimeoutInference inference;
    Feed feed{inference};
    for (int i = 0; i < 12; ++i) {
        feed.add(ObservationKind::reuse_idle, 0.6 + 0.02 * i);
        feed.add(ObservationKind::client_idle_close, 1.0 + 0.004 * (i % 2));
    }
    PairVerdict v = inference.verdict(feed.pair);
    EXPECT_FALSE(v.server_timeout);
    ASSERT_TRUE(v.client_timeout);
    EXPECT_NEAR(v.client_timeout->seconds, 1.0, 0.05);
    ASSERT_TRUE(v.mismatch);
    EXPECT_FALSE(*v.mismatch);
    EXPECT_FALSE(v.fix);
}

TEST(TimeoutInference, ReuseAtTheServersTimeoutIsAMismatch) {
    TimeoutInference inference;
    Feed feed{inference};
    for (int i = 0; i < 6; ++i) feed.add(ObservationKind::server_idle_close, 20.0);
    for (int i = 0; i < 6; ++i) feed.add(ObservationKind::client_idle_close, 60.0);
    feed.add(ObservationKind::reuse_idle, 19.5);
    PairVerdict v = inference.verdict(feed.pair);
    ASSERT_TRUE(v.mismatch);
    EXPECT_TRUE(*v.mismatch);
    EXPECT_NE(v.reason.find("keeps idle connections 60.00 s"), std::string::npos) << v.reason;
    ASSERT_TRUE(v.fix);
    // The incident's numbers: Tomcat 20 s, nginx should give up at 15 s.
    EXPECT_DOUBLE_EQ(v.fix->value_s, 15);
    EXPECT_EQ(v.fix->setting, "ingress-nginx ConfigMap: upstream-keepalive-timeout: \"15\"");
}

TEST(TimeoutInference, ConfirmedIncidentsAreAMismatchWhateverTheEstimate) {
    TimeoutInference inference;
    Feed feed{inference};
    Incident incident;
    incident.cause = Cause::idle_close_race;
    incident.observer = Observer::client;
    incident.comm = "nginx";
    inference.incident(feed.pair, incident);
    PairVerdict v = inference.verdict(feed.pair);
    ASSERT_TRUE(v.mismatch);
    EXPECT_TRUE(*v.mismatch);
    EXPECT_EQ(v.incidents[static_cast<size_t>(Cause::idle_close_race)], 1u);
    // reset_other alone proves nothing about keepalive timeouts.
    TimeoutInference other;
    incident.cause = Cause::reset_other;
    other.incident(feed.pair, incident);
    EXPECT_FALSE(other.verdict(feed.pair).mismatch);
}

TEST(TimeoutInference, BusyConnectionsDoNotMoveTheEstimate) {
    // Mixed traffic: busy connections produce no idle observations at all; idle ones do.
    TimeoutInference inference;
    Feed feed{inference};
    for (int i = 0; i < 10; ++i) feed.add(ObservationKind::server_idle_close, 5.0 + 0.004 * (i % 3));
    double before = inference.verdict(feed.pair).server_timeout->seconds;
    for (int i = 0; i < 200; ++i) feed.add(ObservationKind::reuse_idle, 1.1 + 0.01 * (i % 50));
    double after = inference.verdict(feed.pair).server_timeout->seconds;
    EXPECT_DOUBLE_EQ(before, after);
}

TEST(TimeoutInference, TheSameCloseSeenFromBothEndsCountsOnce) {
    TimeoutInference inference;
    PairKey pair = proxy_to_tomcat();
    Observation o;
    o.ts_ns = 50 * kSec;
    o.kind = ObservationKind::server_idle_close;
    o.client = {"10.244.1.5", 41000};
    o.server = {"10.244.2.7", 8080};
    o.idle_s = 2.0;
    o.observer = Observer::client;
    inference.observe(pair, o);
    o.observer = Observer::server;  // the server's own close record
    o.ts_ns += 1'000'000;
    inference.observe(pair, o);
    EXPECT_EQ(inference.verdict(pair).server_closes, 1u);
    o.client.port = 41001;  // another connection
    inference.observe(pair, o);
    EXPECT_EQ(inference.verdict(pair).server_closes, 2u);
}

TEST(TimeoutInference, ChangesAreReportedOnce) {
    TimeoutInference inference;
    Feed feed{inference};
    for (int i = 0; i < 5; ++i) feed.add(ObservationKind::server_idle_close, 2.0);
    auto first = inference.take_changes();
    ASSERT_EQ(first.size(), 1u);
    EXPECT_TRUE(inference.take_changes().empty());
    for (int i = 0; i < 5; ++i) feed.add(ObservationKind::server_idle_close, 2.0);
    EXPECT_TRUE(inference.take_changes().empty());  // same verdict, same value
}

TEST(TimeoutInference, AMismatchThatClearsIsReportedOnceAsResolved) {
    TimeoutInference inference;
    Feed feed{inference};
    for (int i = 0; i < 5; ++i) feed.add(ObservationKind::server_idle_close, 2.0);
    auto first = inference.take_changes();
    ASSERT_EQ(first.size(), 1u);
    ASSERT_TRUE(*first[0].mismatch);
    // The client was fixed: it now closes its idle connections well before the server.
    for (int i = 0; i < 5; ++i) feed.add(ObservationKind::client_idle_close, 1.0);
    ASSERT_EQ(inference.verdict(feed.pair).mismatch, std::optional<bool>(false)) << inference.verdict(feed.pair).reason;
    auto resolved = inference.take_changes();
    ASSERT_EQ(resolved.size(), 1u);
    EXPECT_FALSE(*resolved[0].mismatch);
    EXPECT_TRUE(inference.take_changes().empty());
    ASSERT_EQ(inference.pairs().size(), 1u);
    EXPECT_EQ(inference.pairs()[0], feed.pair);
}

TEST(TimeoutInference, HistogramsCountEachObservation) {
    TimeoutInference inference;
    Feed feed{inference};
    feed.add(ObservationKind::reuse_idle, 0.3);
    feed.add(ObservationKind::reuse_idle, 1.5);
    feed.add(ObservationKind::server_idle_close, 400);
    PairVerdict v = inference.verdict(feed.pair);
    EXPECT_EQ(v.reuse_hist[2], 1u);  // (0.25, 0.5]
    EXPECT_EQ(v.reuse_hist[4], 1u);  // (1, 2]
    EXPECT_EQ(v.server_close_hist.back(), 1u);  // +Inf
}

TEST(RecommendFix, RecognisesClientKinds) {
    Identity plain{"shop", "frontend-1", "frontend"};
    EXPECT_EQ(recommend_fix("nginx", plain, 20, 0.75).setting, "nginx upstream block: keepalive_timeout 15s;");
    EXPECT_EQ(recommend_fix("envoy", plain, 60, 0.75).client_kind, "envoy");
    EXPECT_EQ(recommend_fix("node", plain, 5, 0.75).setting,
              "Node.js: agentkeepalive freeSocketTimeout: 3700 (or http.Agent keepAlive sockets with timeout: 3700)");
    EXPECT_EQ(recommend_fix("java", plain, 20, 0.75).client_kind, "java");
    EXPECT_EQ(recommend_fix("python3", plain, 20, 0.75).client_kind, "python");
    EXPECT_EQ(recommend_fix("haproxy", plain, 20, 0.75).client_kind, "haproxy");
    KeepaliveFix unknown = recommend_fix("checkout-svc", plain, 1, 0.75);
    EXPECT_EQ(unknown.client_kind, "");
    EXPECT_DOUBLE_EQ(unknown.value_s, 0.7);
    EXPECT_NE(unknown.setting.find("IdleConnTimeout"), std::string::npos);
}

TEST(TimeoutInference, HealthyPairsAreNeverReportedAsChanges) {
    TimeoutInference inference;
    Feed feed{inference};
    for (int i = 0; i < 8; ++i) feed.add(ObservationKind::client_idle_close, 1.0);
    ASSERT_TRUE(inference.verdict(feed.pair).mismatch);
    EXPECT_FALSE(*inference.verdict(feed.pair).mismatch);
    EXPECT_TRUE(inference.take_changes().empty());
}

TEST(TimeoutInference, ClientNameFromTheDuplicateCloseRecordIsKept) {
    // Client and server on one node: the server's own close record (no client name) arrives
    // first, the client's record of the same close (comm "nginx") is the duplicate.
    TimeoutInference inference;
    PairKey pair = proxy_to_tomcat();
    pair.client = Identity{"shop", "web-proxy-1", "web-proxy"};
    for (uint16_t i = 0; i < 5; ++i) {
        Observation o;
        o.ts_ns = (100 + 3 * i) * kSec;
        o.kind = ObservationKind::server_idle_close;
        o.client = {"10.244.1.5", static_cast<uint16_t>(42000 + i)};
        o.server = {"10.244.2.7", 8080};
        o.idle_s = 2.0;
        o.observer = Observer::server;
        inference.observe(pair, o);
        o.observer = Observer::client;
        o.comm = "nginx";
        o.ts_ns += 1'000'000;
        inference.observe(pair, o);
    }
    PairVerdict v = inference.verdict(pair);
    EXPECT_EQ(v.server_closes, 5u);
    ASSERT_TRUE(v.fix);
    EXPECT_EQ(v.fix->setting, "nginx upstream block: keepalive_timeout 1.5s;");
    auto changes = inference.take_changes();
    ASSERT_EQ(changes.size(), 1u);
    EXPECT_EQ(changes[0].fix->client_kind, "nginx");
}

TEST(DiagnosisJson, FloatsAndNegativeCountsAreRejected) {
    PairVerdict v;
    v.pair = proxy_to_tomcat();
    auto j = verdict_to_json(v);
    std::string error;
    ASSERT_TRUE(verdict_from_json(j, &error)) << error;
    j["server_closes"] = 1.2e120;  // from fuzz/corpus/fuzz_diagnosis: was undefined behaviour
    EXPECT_FALSE(verdict_from_json(j, &error));
    EXPECT_NE(error.find("server_closes"), std::string::npos) << error;
    j = verdict_to_json(v);
    j["server_port"] = -1;
    EXPECT_FALSE(verdict_from_json(j, &error));
    j = verdict_to_json(v);
    j["server_port"] = 70000;
    EXPECT_FALSE(verdict_from_json(j, &error));
}
