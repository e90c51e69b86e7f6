// A cluster-wide diagnosis: several nodes' verdicts merged per pair, the pair filters, the
// {"nodes": [...]} document read and the merged report written (rstwatch diagnose --merge).
#include <gtest/gtest.h>

#include "diagnosis.h"

using namespace rstwatch;
using nlohmann::json;

namespace {

PairKey ingress_to(const std::string& server_workload, const std::string& server_namespace = "shop") {
    return PairKey{{"ingress-nginx", "", "ingress-nginx-controller"}, {server_namespace, "", server_workload}, 8080};
}

PairVerdict verdict(const PairKey& pair, size_t server_closes, std::optional<bool> mismatch, const std::string& reason) {
    PairVerdict v;
    v.pair = pair;
    v.server_closes = server_closes;
    v.server_close_hist[4] = server_closes;
    v.mismatch = mismatch;
    v.reason = reason;
    return v;
}

NodeDiagnosis answered(const std::string& node, std::vector<PairVerdict> verdicts) {
    NodeDiagnosis n;
    n.node = node;
    n.agent = "rstwatch-" + node;
    n.ready = true;
    n.answered = true;
    n.level = "workload";
    n.verdicts = std::move(verdicts);
    return n;
}

NodeDiagnosis not_ready(const std::string& node, const std::string& why) {
    NodeDiagnosis n;
    n.node = node;
    n.agent = "rstwatch-" + node;
    n.error = why;
    return n;
}

}  // namespace

TEST(MergeVerdicts, TheSamePairFromSeveralNodesIsSummed) {
    PairVerdict a = verdict(ingress_to("tomcat"), 4, false, "a");
    a.reuses = 10;
    a.reuse_hist[3] = 10;
    a.incidents[static_cast<size_t>(Cause::idle_close_race)] = 1;
    a.max_reuse_idle_s = 1.5;
    PairVerdict b = verdict(ingress_to("tomcat"), 6, false, "b");
    b.reuses = 5;
    b.reuse_hist[3] = 5;
    b.client_closes = 2;
    b.incidents[static_cast<size_t>(Cause::idle_close_race)] = 2;
    b.incidents[static_cast<size_t>(Cause::write_after_fin)] = 1;
    b.max_reuse_idle_s = 2.5;
    auto merged = merge_verdicts({answered("n1", {a, verdict(ingress_to("cart"), 1, std::nullopt, "")}),
                                  answered("n2", {b})});
    ASSERT_EQ(merged.size(), 2u);
    const PairVerdict& m = merged[0];  // pairs keep the order in which they first appear
    EXPECT_EQ(m.pair, ingress_to("tomcat"));
    EXPECT_EQ(m.reuses, 15u);
    EXPECT_EQ(m.server_closes, 10u);
    EXPECT_EQ(m.client_closes, 2u);
    EXPECT_EQ(m.reuse_hist[3], 15u);
    EXPECT_EQ(m.server_close_hist[4], 10u);
    EXPECT_EQ(m.incidents[static_cast<size_t>(Cause::idle_close_race)], 3u);
    EXPECT_EQ(m.incidents[static_cast<size_t>(Cause::write_after_fin)], 1u);
    EXPECT_EQ(m.max_reuse_idle_s, 2.5);
    EXPECT_EQ(m.nodes, (std::vector<std::string>{"n1", "n2"}));
    EXPECT_EQ(merged[1].pair, ingress_to("cart"));
    EXPECT_EQ(merged[1].nodes, (std::vector<std::string>{"n1"}));
}

TEST(MergeVerdicts, EachEstimateIsTheOneWithTheMostEvidence) {
    PairVerdict a = verdict(ingress_to("tomcat"), 0, false, "");
    a.server_timeout = TimeoutEstimate{20.0, 30};
    a.client_timeout = TimeoutEstimate{10.0, 2};
    PairVerdict b = verdict(ingress_to("tomcat"), 0, false, "");
    b.server_timeout = TimeoutEstimate{60.0, 5};
    b.client_timeout = TimeoutEstimate{9.0, 8};
    PairVerdict c = verdict(ingress_to("tomcat"), 0, std::nullopt, "");  // no estimates at all
    auto merged = merge_verdicts({answered("n1", {a}), answered("n2", {b}), answered("n3", {c})});
    ASSERT_EQ(merged.size(), 1u);
    ASSERT_TRUE(merged[0].server_timeout);
    EXPECT_EQ(merged[0].server_timeout->seconds, 20.0);  // not an average of 20 and 60
    EXPECT_EQ(merged[0].server_timeout->evidence, 30u);
    ASSERT_TRUE(merged[0].client_timeout);
    EXPECT_EQ(merged[0].client_timeout->seconds, 9.0);
}

TEST(MergeVerdicts, OneNodesMismatchIsTheClustersAndSpeaksForIt) {
    PairVerdict ok = verdict(ingress_to("tomcat"), 50, false, "the client closes first");
    PairVerdict unknown = verdict(ingress_to("tomcat"), 0, std::nullopt, "not enough evidence");
    PairVerdict few = verdict(ingress_to("tomcat"), 6, true, "few");
    few.fix = KeepaliveFix{"nginx", 15, "nginx upstream keepalive_timeout 15s;"};
    PairVerdict many = verdict(ingress_to("tomcat"), 9, true, "many");
    many.fix = KeepaliveFix{"ingress-nginx", 15, "upstream-keepalive-timeout: \"15\""};
    many.client_comm = "nginx";
    auto merged = merge_verdicts(
        {answered("n1", {ok}), answered("n2", {unknown}), answered("n3", {few}), answered("n4", {many})});
    ASSERT_EQ(merged.size(), 1u);
    EXPECT_EQ(merged[0].mismatch, std::optional<bool>(true));
    // The words of the mismatched node with the most evidence, not of n1 (more evidence, but ok).
    EXPECT_EQ(merged[0].reason, "many");
    ASSERT_TRUE(merged[0].fix);
    EXPECT_EQ(merged[0].fix->client_kind, "ingress-nginx");
    EXPECT_EQ(merged[0].client_comm, "nginx");

    merged = merge_verdicts({answered("n2", {unknown}), answered("n1", {ok})});
    EXPECT_EQ(merged[0].mismatch, std::optional<bool>(false));
    EXPECT_EQ(merged[0].reason, "the client closes first");
    merged = merge_verdicts({answered("n2", {unknown}), answered("n5", {unknown})});
    EXPECT_EQ(merged[0].mismatch, std::nullopt);
    EXPECT_EQ(merged[0].reason, "not enough evidence");
}

TEST(MergeVerdicts, NodesWithoutADiagnosisAddNothing) {
    auto merged = merge_verdicts({not_ready("n2", "pod is Pending"), answered("n1", {verdict(ingress_to("web"), 1, {}, "")})});
    ASSERT_EQ(merged.size(), 1u);
    EXPECT_EQ(merged[0].nodes, (std::vector<std::string>{"n1"}));
    EXPECT_TRUE(merge_verdicts({}).empty());
}

TEST(PairFilter, NamespaceAndWorkloadAtEitherEnd) {
    const PairKey to_tomcat = ingress_to("tomcat");
    EXPECT_TRUE(PairFilter{}.matches(to_tomcat));
    EXPECT_TRUE((PairFilter{"shop", {}}.matches(to_tomcat)));
    EXPECT_TRUE((PairFilter{"ingress-nginx", {}}.matches(to_tomcat)));
    EXPECT_FALSE((PairFilter{"billing", {}}.matches(to_tomcat)));
    EXPECT_TRUE((PairFilter{{}, "tomcat"}.matches(to_tomcat)));
    EXPECT_TRUE((PairFilter{{}, "ingress-nginx-controller"}.matches(to_tomcat)));
    EXPECT_TRUE((PairFilter{"shop", "tomcat"}.matches(to_tomcat)));
    // Both conditions hold for the same end: tomcat is not in ingress-nginx.
    EXPECT_FALSE((PairFilter{"ingress-nginx", "tomcat"}.matches(to_tomcat)));
    EXPECT_FALSE((PairFilter{"shop", "cart"}.matches(to_tomcat)));

    std::vector<PairVerdict> verdicts{verdict(to_tomcat, 1, {}, ""), verdict(ingress_to("api", "billing"), 1, {}, "")};
    filter_verdicts(verdicts, PairFilter{"billing", {}});
    ASSERT_EQ(verdicts.size(), 1u);
    EXPECT_EQ(verdicts[0].pair.server.workload, "api");
}

TEST(DiagnosisJson, NodesRoundTripAndAreAbsentWhenEmpty) {
    PairVerdict v = verdict(ingress_to("tomcat"), 3, true, "r");
    EXPECT_FALSE(verdict_to_json(v).contains("nodes"));  // one agent's JSON stays as it was
    v.nodes = {"n1", "n2"};
    const json j = verdict_to_json(v);
    EXPECT_EQ(j["nodes"], json({"n1", "n2"}));
    std::string error;
    auto back = verdict_from_json(j, &error);
    ASSERT_TRUE(back) << error;
    EXPECT_EQ(back->nodes, v.nodes);
    json bad = j;
    bad["nodes"] = "n1";
    EXPECT_FALSE(verdict_from_json(bad, &error));
    bad["nodes"] = json::array({1});
    EXPECT_FALSE(verdict_from_json(bad, &error));
}

TEST(NodeDiagnoses, ReadsAnsweredAndFailedNodes) {
    const json document = {
        {"nodes",
         {{{"node", "n1"}, {"agent", "rstwatch-a"}, {"ready", true},
           {"diagnosis", diagnosis_to_json({verdict(ingress_to("tomcat"), 3, true, "r")}, "workload")}},
          {{"node", "n2"}, {"agent", "rstwatch-b"}, {"ready", false}, {"error", "pod is Pending"}}}}};
    std::string error;
    auto nodes = node_diagnoses_from_json(document, &error);
    ASSERT_TRUE(nodes) << error;
    ASSERT_EQ(nodes->size(), 2u);
    EXPECT_TRUE((*nodes)[0].answered);
    EXPECT_EQ((*nodes)[0].level, "workload");
    ASSERT_EQ((*nodes)[0].verdicts.size(), 1u);
    EXPECT_FALSE((*nodes)[1].answered);
    EXPECT_FALSE((*nodes)[1].ready);
    EXPECT_EQ((*nodes)[1].error, "pod is Pending");
}

TEST(NodeDiagnoses, WrongShapesSayWhere) {
    auto problem = [](const json& document) {
        std::string error;
        EXPECT_FALSE(node_diagnoses_from_json(document, &error)) << document.dump();
        return error;
    };
    EXPECT_NE(problem(json::array()).find("no \"nodes\" array"), std::string::npos);
    EXPECT_NE(problem({{"nodes", {{{"node", "n1"}}}}}).find("nodes[0]: needs \"node\""), std::string::npos);
    const json both = {{"node", "n1"}, {"agent", "a"}, {"ready", true}, {"error", "x"}, {"diagnosis", json::object()}};
    EXPECT_NE(problem({{"nodes", {both}}}).find("nodes[0] (node \"n1\"): needs either"), std::string::npos);
    const json neither = {{"node", "n1"}, {"agent", "a"}, {"ready", true}};
    EXPECT_NE(problem({{"nodes", {neither}}}).find("needs either"), std::string::npos);
    const json bad_pairs = {{"node", "n1"}, {"agent", "a"}, {"ready", true}, {"diagnosis", {{"level", "pod"}}}};
    EXPECT_NE(problem({{"nodes", {bad_pairs}}}).find("malformed diagnosis"), std::string::npos);
    const json no_level = {{"node", "n1"}, {"agent", "a"}, {"ready", true}, {"diagnosis", {{"pairs", json::array()}}}};
    EXPECT_NE(problem({{"nodes", {no_level}}}).find("no \"level\""), std::string::npos);
}

TEST(MergedDiagnosis, JsonListsNodesWithTheirPairsOrWhyNot) {
    std::vector<NodeDiagnosis> nodes{answered("n1", {verdict(ingress_to("tomcat"), 3, true, "r")}),
                                     not_ready("n2", "pod is Pending")};
    const json j = merged_diagnosis_to_json(merge_verdicts(nodes), nodes, "workload");
    EXPECT_EQ(j["level"], "workload");
    ASSERT_EQ(j["pairs"].size(), 1u);
    EXPECT_EQ(j["pairs"][0]["nodes"], json({"n1"}));
    EXPECT_EQ(j["nodes"][0], json({{"node", "n1"}, {"agent", "rstwatch-n1"}, {"ready", true}, {"pairs", 1}}));
    EXPECT_EQ(j["nodes"][1],
              json({{"node", "n2"}, {"agent", "rstwatch-n2"}, {"ready", false}, {"error", "pod is Pending"}}));
    std::string error;
    auto pairs = diagnosis_from_json(j, &error);  // still a diagnosis for diagnosis readers
    ASSERT_TRUE(pairs) << error;
    EXPECT_EQ((*pairs)[0].nodes, (std::vector<std::string>{"n1"}));
}

TEST(MergedDiagnosis, ReportSaysWhichNodesSawEachPairAndWhichAreMissing) {
    PairVerdict v = verdict(ingress_to("tomcat"), 3, true, "the server closes after ~20 s");
    v.fix = KeepaliveFix{"nginx", 15, "nginx upstream keepalive_timeout 15s;"};
    NodeDiagnosis failed = not_ready("n3", "rstwatch: cannot reach the agent");
    failed.ready = true;
    std::vector<NodeDiagnosis> nodes{answered("n1", {v}), answered("n2", {v}), not_ready("n4", "pod is Pending"), failed};
    const std::string report = render_merged_diagnosis(merge_verdicts(nodes), nodes);
    EXPECT_NE(report.find("ingress-nginx/ingress-nginx-controller -> shop/tomcat:8080   (seen on n1, n2)\n"),
              std::string::npos)
        << report;
    EXPECT_NE(report.find("  fix (nginx): nginx upstream keepalive_timeout 15s;\n"), std::string::npos) << report;
    EXPECT_NE(report.find("merged the diagnoses of 2 of 4 agents: n1 (1 pair), n2 (1 pair)\n"), std::string::npos)
        << report;
    EXPECT_NE(report.find("node n4: agent rstwatch-n4 not ready: pod is Pending; its clients are not in this report\n"),
              std::string::npos)
        << report;
    EXPECT_NE(report.find("node n3: agent rstwatch-n3 failed: rstwatch: cannot reach the agent; its clients are not "
                          "in this report\n"),
              std::string::npos)
        << report;
    // One agent's report (no nodes) is unchanged: no "seen on".
    EXPECT_EQ(render_diagnosis({v}).find("seen on"), std::string::npos);
}
