// Metrics tests: exact exposition text (names, label order, buckets), per-pair counts, workload
// mode, expiry of deleted pods' series, self metrics, concurrent updates while scraping.
#include "metrics.h"

#include <gtest/gtest.h>

#include <atomic>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace rstwatch;
using namespace std::chrono_literals;

namespace {

const Identity kWebA{"shop", "web-7d9f-abcde", "web"};
const Identity kWebB{"shop", "web-7d9f-fghij", "web"};
const Identity kApi{"shop", "api-0", "api"};
const Identity kIngress{"ingress-nginx", "ingress-nginx-controller-5d88c",
                        "ingress-nginx-controller"};

const PairKey kWebToApi{kWebA, kApi, 8080};
const PairKey kWebBToApi{kWebB, kApi, 8080};
const PairKey kIngressToWeb{kIngress, kWebA, 80};

constexpr const char* kWebToApiLabels =
    R"(client_namespace="shop",client_pod="web-7d9f-abcde",client_workload="web",)"
    R"(server_namespace="shop",server_pod="api-0",server_workload="api",server_port="8080")";
constexpr const char* kIngressToWebLabels =
    R"(client_namespace="ingress-nginx",client_pod="ingress-nginx-controller-5d88c",)"
    R"(client_workload="ingress-nginx-controller",server_namespace="shop",)"
    R"(server_pod="web-7d9f-abcde",server_workload="web",server_port="80")";

MetricsOptions options(PairLabelMode mode = PairLabelMode::pod) {
    MetricsOptions o;
    o.mode = mode;
    o.series_ttl = 300s;
    o.version = "0.1.0";
    o.write_hook = "fexit";
    return o;
}

// Sample lines of one metric (name{...} value or name value), in exposition order.
std::vector<std::string> samples(const std::string& text, const std::string& name) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.rfind(name, 0) != 0) continue;
        const char next = line.size() > name.size() ? line[name.size()] : '\0';
        if (next == '{' || next == ' ') out.push_back(line);
    }
    return out;
}

std::string bucket_lines(const std::string& name, const std::string& labels,
                         const std::vector<int>& cumulative) {
    static const char* les[] = {"0.1", "0.25", "0.5", "1",  "2",  "5",   "10",  "15",  "20",
                                "30",  "60",   "65",  "75", "90", "120", "300", "+Inf"};
    std::string out;
    for (size_t i = 0; i < 17; ++i)
        out += name + "_bucket{" + labels + ",le=\"" + les[i] + "\"} " +
               std::to_string(cumulative.at(i)) + "\n";
    return out;
}

std::string join(const std::vector<std::string>& lines) {
    std::string out;
    for (const auto& l : lines) out += l + "\n";
    return out;
}

}  // namespace

TEST(Metrics, IncidentsPerPairAndCauseInDeclaredLabelOrder) {
    Metrics m(options());
    m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, 4.2);
    m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, 5.0);
    m.count_incident(kWebToApi, Cause::write_after_fin, Observer::server, std::nullopt);
    m.count_incident(kIngressToWeb, Cause::reset_other, Observer::client, std::nullopt);

    const std::string text = m.exposition();
    EXPECT_NE(text.find("# TYPE rstwatch_incidents_total counter\n"), std::string::npos);
    EXPECT_EQ(
        join(samples(text, "rstwatch_incidents_total")),
        std::string("rstwatch_incidents_total{cause=\"idle_close_race\",observer=\"client\",") +
            kWebToApiLabels + "} 2\n" +
            "rstwatch_incidents_total{cause=\"reset_other\",observer=\"client\"," +
            kIngressToWebLabels + "} 1\n" +
            "rstwatch_incidents_total{cause=\"write_after_fin\",observer=\"server\"," +
            kWebToApiLabels + "} 1\n");
}

TEST(Metrics, RegistryAloneSortsLabelsAlphabetically) {
    // Why collect() exists: prometheus-cpp stores labels in a std::map.
    Metrics m(options());
    m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, std::nullopt);
    const auto raw = m.registry().Collect();
    const auto ordered = m.collect();
    auto labels_of = [](const std::vector<prometheus::MetricFamily>& families) {
        std::vector<std::string> names;
        for (const auto& f : families)
            if (f.name == "rstwatch_incidents_total")
                for (const auto& l : f.metric.at(0).label) names.push_back(l.name);
        return names;
    };
    EXPECT_EQ(labels_of(raw).front(), "cause");
    EXPECT_EQ(labels_of(raw).at(1), "client_namespace");  // alphabetical
    EXPECT_EQ(labels_of(ordered),
              (std::vector<std::string>{"cause", "observer", "client_namespace", "client_pod",
                                        "client_workload", "server_namespace", "server_pod",
                                        "server_workload", "server_port"}));
}

TEST(Metrics, ResetsDirectionFirst) {
    Metrics m(options());
    m.count_reset(kWebToApi, true);
    m.count_reset(kWebToApi, false);
    m.count_reset(kWebToApi, false);
    EXPECT_EQ(join(samples(m.exposition(), "rstwatch_resets_total")),
              std::string("rstwatch_resets_total{direction=\"received\",") + kWebToApiLabels +
                  "} 2\n" + "rstwatch_resets_total{direction=\"sent\"," + kWebToApiLabels +
                  "} 1\n");
}

TEST(Metrics, HistogramBucketsExact) {
    Metrics m(options());
    m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, 64.5);
    m.observe_reuse_idle(kWebToApi, 0.2);
    m.observe_reuse_idle(kWebToApi, 0.25);  // le is inclusive
    m.observe_reuse_idle(kWebToApi, 61);
    m.observe_reuse_idle(kWebToApi, 500);
    m.observe(kWebToApi, ObservationKind::server_idle_close, 60);
    m.observe(kWebToApi, ObservationKind::client_idle_close, 89);
    const std::string text = m.exposition();

    const std::string labels = kWebToApiLabels;
    auto expect_histogram = [&](const std::string& name, int count, const std::string& sum,
                                const std::vector<int>& cumulative) {
        SCOPED_TRACE(name);
        EXPECT_NE(text.find("# TYPE " + name + " histogram\n"), std::string::npos);
        EXPECT_EQ(join(samples(text, name + "_count")),
                  name + "_count{" + labels + "} " + std::to_string(count) + "\n");
        EXPECT_EQ(join(samples(text, name + "_sum")), name + "_sum{" + labels + "} " + sum + "\n");
        EXPECT_EQ(join(samples(text, name + "_bucket")), bucket_lines(name, labels, cumulative));
    };
    //                 0.1 .25 .5  1  2  5 10 15 20 30 60 65 75 90 120 300 +Inf
    expect_histogram("rstwatch_idle_before_failure_seconds", 1, "64.5",
                     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1});
    expect_histogram("rstwatch_connection_reuse_idle_seconds", 4, "561.45",
                     {0, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 4});
    expect_histogram("rstwatch_server_idle_close_seconds", 1, "60",
                     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1});
    expect_histogram("rstwatch_client_idle_close_seconds", 1, "89",
                     {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1});
}

TEST(Metrics, NoSeriesBeforeFirstUse) {
    Metrics m(options());
    const std::string text = m.exposition();
    EXPECT_TRUE(samples(text, "rstwatch_incidents_total").empty());
    EXPECT_TRUE(samples(text, "rstwatch_idle_before_failure_seconds_count").empty());
    // An incident without idle age creates no histogram series.
    m.count_incident(kWebToApi, Cause::write_after_fin, Observer::client, std::nullopt);
    EXPECT_TRUE(samples(m.exposition(), "rstwatch_idle_before_failure_seconds_count").empty());
}

TEST(Metrics, WorkloadModeDropsPodLabels) {
    Metrics m(options(PairLabelMode::workload));
    m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, 3.0);
    m.count_incident(kWebBToApi, Cause::idle_close_race, Observer::client, 4.0);  // same workloads
    m.observe_reuse_idle(kWebBToApi, 1.5);
    EXPECT_EQ(m.pair_count(), 1u);
    const std::string labels =
        R"(client_namespace="shop",client_pod="",client_workload="web",)"
        R"(server_namespace="shop",server_pod="",server_workload="api",server_port="8080")";
    const std::string text = m.exposition();
    EXPECT_EQ(join(samples(text, "rstwatch_incidents_total")),
              "rstwatch_incidents_total{cause=\"idle_close_race\",observer=\"client\"," + labels +
                  "} 2\n");
    EXPECT_EQ(join(samples(text, "rstwatch_idle_before_failure_seconds_count")),
              "rstwatch_idle_before_failure_seconds_count{" + labels + "} 2\n");
    EXPECT_EQ(text.find("web-7d9f"), std::string::npos);
}

TEST(Metrics, DifferentServerPortsAreDifferentSeries) {
    Metrics m(options());
    PairKey other = kWebToApi;
    other.server_port = 9090;
    m.count_reset(kWebToApi, true);
    m.count_reset(other, true);
    EXPECT_EQ(samples(m.exposition(), "rstwatch_resets_total").size(), 2u);
    EXPECT_EQ(m.pair_count(), 2u);
}

TEST(Metrics, ExpiresDeletedPodSeriesAfterTtlOnly) {
    Metrics m(options());
    m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, 4.0);
    m.count_reset(kWebToApi, false);
    m.observe_reuse_idle(kWebToApi, 2);
    m.observe_server_idle_close(kWebToApi, 60);
    m.observe_client_idle_close(kWebToApi, 60);
    m.count_incident(kIngressToWeb, Cause::reset_other, Observer::server, std::nullopt);

    // api-0 is deleted; web and ingress live. kIngressToWeb is idle but both ends live.
    auto alive = [](const Identity& id) { return id.pod != "api-0"; };
    const auto t0 = Metrics::Clock::time_point{} + 1000s;
    EXPECT_EQ(m.expire(t0, alive), 0u);         // first seen dead
    EXPECT_EQ(m.expire(t0 + 299s, alive), 0u);  // not yet
    EXPECT_NE(m.exposition().find("api-0"), std::string::npos);
    EXPECT_EQ(m.expire(t0 + 300s, alive), 1u);
    EXPECT_EQ(m.pair_count(), 1u);

    const std::string text = m.exposition();
    EXPECT_EQ(text.find("api-0"), std::string::npos);  // every family's series gone
    EXPECT_EQ(join(samples(text, "rstwatch_incidents_total")),
              std::string("rstwatch_incidents_total{cause=\"reset_other\",observer=\"server\",") +
                  kIngressToWebLabels + "} 1\n");
    EXPECT_TRUE(samples(text, "rstwatch_connection_reuse_idle_seconds_count").empty());

    // Live pairs never expire, however long they stay idle.
    EXPECT_EQ(m.expire(t0 + 100000s, alive), 0u);
    EXPECT_EQ(m.pair_count(), 1u);

    // A new event re-creates the series from zero.
    m.count_reset(kWebToApi, false);
    EXPECT_EQ(
        join(samples(m.exposition(), "rstwatch_resets_total")),
        std::string("rstwatch_resets_total{direction=\"received\",") + kWebToApiLabels + "} 1\n");
}

// The series found last is tried first: it must never stand for another pair, nor outlive its
// removal.
TEST(Metrics, TheLastSeriesFoundIsOnlyItsOwnPairsAndGoesWithIt) {
    Metrics m(options());
    for (int i = 0; i < 3; ++i) {
        m.count_reset(kWebToApi, false);
        m.count_reset(kWebBToApi, false);
        m.count_reset(kWebBToApi, false);
    }
    std::string received = "rstwatch_resets_total{direction=\"received\",";
    std::string web_b_labels = kWebToApiLabels;
    web_b_labels.replace(web_b_labels.find("abcde"), 5, "fghij");
    EXPECT_EQ(join(samples(m.exposition(), "rstwatch_resets_total")),
              received + kWebToApiLabels + "} 3\n" + received + web_b_labels + "} 6\n");
    // kWebBToApi, the series found last, expires; counted again, it starts from zero.
    auto alive = [](const Identity& id) { return id.pod != "web-7d9f-fghij"; };
    const auto t0 = Metrics::Clock::time_point{} + 1000s;
    m.expire(t0, alive);
    EXPECT_EQ(m.expire(t0 + 300s, alive), 1u);
    m.count_reset(kWebBToApi, false);
    EXPECT_EQ(join(samples(m.exposition(), "rstwatch_resets_total")),
              received + kWebToApiLabels + "} 3\n" + received + web_b_labels + "} 1\n");

    // In workload mode two pods of one workload are one series, found last or not.
    Metrics workloads(options(PairLabelMode::workload));
    workloads.count_reset(kWebToApi, true);
    workloads.count_reset(kWebBToApi, true);
    workloads.count_reset(kIngressToWeb, true);
    workloads.count_reset(kWebToApi, true);
    EXPECT_EQ(workloads.pair_count(), 2u);
    const std::vector<std::string> lines = samples(workloads.exposition(), "rstwatch_resets_total");
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_NE(lines[1].find("client_workload=\"web\""), std::string::npos) << lines[1];
    EXPECT_EQ(lines[1].substr(lines[1].rfind(' ')), " 3");
}

TEST(Metrics, EndpointSeenAliveAgainResetsTheClock) {
    Metrics m(options());
    m.count_reset(kWebToApi, true);
    bool api_alive = false;
    auto alive = [&](const Identity& id) { return id.pod != "api-0" || api_alive; };
    const auto t0 = Metrics::Clock::time_point{} + 1000s;
    m.expire(t0, alive);
    api_alive = true;
    m.expire(t0 + 200s, alive);
    api_alive = false;
    EXPECT_EQ(m.expire(t0 + 400s, alive), 0u);  // dead again since 400 s only
    EXPECT_EQ(m.expire(t0 + 699s, alive), 0u);
    EXPECT_EQ(m.expire(t0 + 700s, alive), 1u);
}

TEST(Metrics, ClientEndDeadExpiresToo) {
    Metrics m(options());
    m.count_reset(kWebToApi, true);
    auto alive = [](const Identity& id) { return id.pod != "web-7d9f-abcde"; };
    const auto t0 = Metrics::Clock::time_point{} + 1000s;
    m.expire(t0, alive);
    EXPECT_EQ(m.expire(t0 + 300s, alive), 1u);
    EXPECT_EQ(m.pair_count(), 0u);
}

TEST(Metrics, SelfMetrics) {
    Metrics m(options());
    m.count_records("peer_fin", 3);
    m.count_records("rst_sent");
    m.set_records_lost_total(5);
    m.set_records_lost_total(3);  // never goes down
    m.set_records_lost_total(7);
    m.set_tracked_connections(42);
    m.set_attribution_synced("kubernetes", false);
    m.set_attribution_synced("pod_map", true);
    m.set_attribution_synced("kubernetes", true);
    m.set_attribution_synced("pod_map", false);

    const std::string text = m.exposition();
    EXPECT_NE(text.find("# TYPE rstwatch_records_lost_total counter\n"), std::string::npos);
    EXPECT_EQ(join(samples(text, "rstwatch_records_lost_total")),
              "rstwatch_records_lost_total 7\n");
    EXPECT_EQ(join(samples(text, "rstwatch_records_total")),
              "rstwatch_records_total{type=\"close_wait_write\"} 0\n"
              "rstwatch_records_total{type=\"closed\"} 0\n"
              "rstwatch_records_total{type=\"idle_write\"} 0\n"
              "rstwatch_records_total{type=\"own_close\"} 0\n"
              "rstwatch_records_total{type=\"peer_fin\"} 3\n"
              "rstwatch_records_total{type=\"rst_received\"} 0\n"
              "rstwatch_records_total{type=\"rst_sent\"} 1\n");
    EXPECT_NE(text.find("# TYPE rstwatch_tracked_connections gauge\n"), std::string::npos);
    EXPECT_EQ(join(samples(text, "rstwatch_tracked_connections")),
              "rstwatch_tracked_connections 42\n");
    EXPECT_EQ(join(samples(text, "rstwatch_attribution_synced")),
              "rstwatch_attribution_synced{source=\"kubernetes\"} 1\n"
              "rstwatch_attribution_synced{source=\"pod_map\"} 0\n");
    EXPECT_EQ(join(samples(text, "rstwatch_build_info")),
              "rstwatch_build_info{version=\"0.1.0\",write_hook=\"fexit\"} 1\n");

    m.set_build_info("0.1.0", "kprobe");  // replaces the series
    m.set_build_info("0.1.0", "kprobe");
    EXPECT_EQ(join(samples(m.exposition(), "rstwatch_build_info")),
              "rstwatch_build_info{version=\"0.1.0\",write_hook=\"kprobe\"} 1\n");
}

TEST(Metrics, IncidentLogLinesSuppressedFromTheStart) {
    Metrics m(options());
    std::string text = m.exposition();
    EXPECT_NE(text.find("# HELP rstwatch_incident_log_lines_suppressed_total Incidents whose log line was left out"),
              std::string::npos);
    EXPECT_NE(text.find("# TYPE rstwatch_incident_log_lines_suppressed_total counter\n"), std::string::npos);
    EXPECT_EQ(join(samples(text, "rstwatch_incident_log_lines_suppressed_total")),
              "rstwatch_incident_log_lines_suppressed_total 0\n");
    for (int i = 0; i < 3; ++i) m.count_incident_log_line_suppressed();
    EXPECT_EQ(join(samples(m.exposition(), "rstwatch_incident_log_lines_suppressed_total")),
              "rstwatch_incident_log_lines_suppressed_total 3\n");
}

TEST(Metrics, ConcurrentUpdatesExpiryAndScrapes) {
    Metrics m(options());
    std::atomic<bool> done{false};
    std::thread scraper([&] {
        while (!done) {
            auto text = m.exposition();
            ASSERT_NE(text.find("rstwatch_build_info"), std::string::npos);
        }
    });
    std::thread expirer([&] {
        auto t = Metrics::Clock::time_point{};
        // Only "gone-*" pods are dead.
        while (!done)
            m.expire(t += 1000s, [](const Identity& id) { return id.pod.rfind("gone", 0) != 0; });
    });
    std::vector<std::thread> writers;
    for (int w = 0; w < 4; ++w) {
        writers.emplace_back([&, w] {
            for (int i = 0; i < 2000; ++i) {
                m.count_incident(kWebToApi, Cause::idle_close_race, Observer::client, 1.0);
                PairKey gone{{"shop", "gone-" + std::to_string(w * 10 + i % 10), "gone"}, kApi, 80};
                m.count_reset(gone, true);
                m.observe_reuse_idle(gone, 3);
                m.count_records("idle_write");
            }
        });
    }
    for (auto& t : writers) t.join();
    done = true;
    scraper.join();
    expirer.join();
    const std::string text = m.exposition();
    EXPECT_EQ(
        join(samples(text, "rstwatch_incidents_total")),
        std::string("rstwatch_incidents_total{cause=\"idle_close_race\",observer=\"client\",") +
            kWebToApiLabels + "} 8000\n");
    EXPECT_NE(text.find("rstwatch_records_total{type=\"idle_write\"} 8000\n"), std::string::npos);
}
