#include "agent_status.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>

namespace rstwatch {
namespace {

std::string read_file(const std::string& relative) {
    std::ifstream in(std::string(RSTWATCH_SOURCE_DIR) + "/" + relative, std::ios::binary);
    EXPECT_TRUE(in) << relative;
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST(PrometheusSample, NameLabelsValue) {
    auto sample = parse_prometheus_sample(R"(rstwatch_build_info{version="0.1.0",write_hook="tp_btf/x"} 1)");
    ASSERT_TRUE(sample);
    EXPECT_EQ(sample->name, "rstwatch_build_info");
    ASSERT_EQ(sample->labels.size(), 2u);
    EXPECT_EQ(*sample->label("write_hook"), "tp_btf/x");
    EXPECT_EQ(sample->label("missing"), nullptr);
    EXPECT_EQ(sample->value, 1);
}

TEST(PrometheusSample, EscapesTimestampsAndSpecialValues) {
    auto sample = parse_prometheus_sample(R"(m{a="say \"hi\"\\n",b="x\ny", } 2.5e3 1700000000000)");
    ASSERT_TRUE(sample);
    EXPECT_EQ(*sample->label("a"), "say \"hi\"\\n");
    EXPECT_EQ(*sample->label("b"), "x\ny");
    EXPECT_EQ(sample->value, 2500);
    auto inf = parse_prometheus_sample("h_bucket{le=\"+Inf\"} +Inf");
    ASSERT_TRUE(inf);
    EXPECT_TRUE(std::isinf(inf->value));
    auto plain = parse_prometheus_sample("rstwatch_records_lost_total 17");
    ASSERT_TRUE(plain);
    EXPECT_TRUE(plain->labels.empty());
    EXPECT_EQ(plain->value, 17);
}

TEST(PrometheusSample, RejectsWhatIsNotASample) {
    for (const char* line : {"", "# HELP x y", "   ", "{a=\"b\"} 1", "m{a=\"b} 1", "m{a=b} 1", "m{a=\"b\"}1",
                             "m 1x", "m", "m{a=\"b\" c=\"d\"} 1", "9m 1", "m{a=\"b\\"}) {
        EXPECT_FALSE(parse_prometheus_sample(line)) << line;
    }
}

// The rows tests/deploy/fake-kubectl answers for `rstwatch status --no-headers` inside each agent
// pod are what this code prints for that pod's /metrics fixture.
TEST(AgentStatus, PluginFixturesAreWhatStatusPrints) {
    for (const char* node : {"node-a", "node-b"}) {
        AgentStatus status;
        status.url = "http://127.0.0.1:9740";
        status.ready = true;
        read_agent_metrics(read_file(std::string("tests/deploy/fixtures/metrics-") + node + ".txt"), &status);
        EXPECT_EQ(render_agent_status(status, false),
                  read_file(std::string("tests/deploy/fixtures/status-") + node + ".txt"))
            << node;
    }
}

TEST(AgentStatus, ReadsTheAgentsMetrics) {
    AgentStatus status;
    status.url = "http://10.0.0.7:9740";
    status.ready = true;
    read_agent_metrics(read_file("tests/deploy/fixtures/metrics-node-b.txt"), &status);
    EXPECT_EQ(status.version, "0.1.0");
    EXPECT_EQ(status.write_hook, "kprobe/tcp_sendmsg");
    EXPECT_EQ(status.records_lost, 17);
    EXPECT_EQ(status.tracked_connections, 1204);
    EXPECT_EQ(status.incidents, 2);
    EXPECT_TRUE(status.attribution_sources_unsynced.empty());
    EXPECT_EQ(render_agent_status(status, true),
              "AGENT                  READY   WRITE HOOK           LOST RECORDS   TRACKED   INCIDENTS   VERSION\n"
              "http://10.0.0.7:9740   yes     kprobe/tcp_sendmsg   17             1204      2           0.1.0\n");
    const auto json = agent_status_to_json(status);
    EXPECT_EQ(json["records_lost"], 17);
    EXPECT_EQ(json["write_hook"], "kprobe/tcp_sendmsg");
    EXPECT_FALSE(json.contains("not_ready_reason"));
}

TEST(AgentStatus, NothingExportedYetAndNotReady) {
    AgentStatus status;
    status.url = "http://127.0.0.1:9740";
    status.not_ready_reason = "HTTP 503: attribution not synced: kubernetes";
    read_agent_metrics("# nothing\nprocess_cpu_seconds_total 3\nrstwatch_attribution_synced{source=\"kubernetes\"} 0\n",
                       &status);
    EXPECT_EQ(status.incidents, 0);  // the agent answered: no incident series means none
    EXPECT_EQ(status.attribution_sources_unsynced, std::vector<std::string>{"kubernetes"});
    EXPECT_EQ(render_agent_status(status, false), "http://127.0.0.1:9740   no   -   -   -   0   -\n");
    EXPECT_EQ(agent_status_to_json(status)["not_ready_reason"], "HTTP 503: attribution not synced: kubernetes");

    AgentStatus empty;
    read_agent_metrics("", &empty);
    EXPECT_FALSE(empty.incidents);
}

}  // namespace
}  // namespace rstwatch
