// Pod map file tests: shape, most specific entry wins, IPv4/IPv6, strict validation with line numbers.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <fstream>
#include <string>
#include <unistd.h>

#include "attribution.h"
#include "attribute_test_support.h"

using namespace rstwatch;
using rstwatch::test::ip;

namespace {

// Parses text that must be valid.
PodMap parse_ok(const std::string& text) {
    std::string error = "unset";
    auto map = PodMap::parse(text, &error);
    EXPECT_TRUE(map) << error << "\n--- input:\n" << text;
    EXPECT_EQ(error, "");
    return map ? std::move(*map) : PodMap{};
}

// Parses text that must be rejected; returns the error.
std::string parse_error(const std::string& text) {
    std::string error;
    auto map = PodMap::parse(text, &error);
    EXPECT_FALSE(map) << "accepted:\n" << text;
    EXPECT_EQ(error.find('\n'), std::string::npos) << "error is not one line: " << error;
    return error;
}

std::string workload_of(const PodMap& map, const char* addr) {
    const PodMapEntry* e = map.lookup(ip(addr));
    return e ? e->identity.workload : "<none>";
}

}  // namespace

TEST(PodMap, IssueExampleParses) {
    auto map = parse_ok(R"(endpoints:
  - ip: 10.244.0.10                  # or cidr: 10.244.1.0/24
    namespace: ingress-nginx
    pod: ingress-nginx-controller-5d88c
    workload: ingress-nginx-controller
  - cidr: 192.168.10.0/24
    name: office-vpn                 # a non-pod endpoint
)");
    ASSERT_EQ(map.size(), 2u);
    const PodMapEntry* pod = map.lookup(ip("10.244.0.10"));
    ASSERT_NE(pod, nullptr);
    EXPECT_EQ(pod->identity,
              (Identity{"ingress-nginx", "ingress-nginx-controller-5d88c", "ingress-nginx-controller"}));
    EXPECT_EQ(pod->line, 2);
    EXPECT_EQ(pod->range.prefix_len, 128);

    const PodMapEntry* vpn = map.lookup(ip("192.168.10.77"));
    ASSERT_NE(vpn, nullptr);
    EXPECT_EQ(vpn->identity, (Identity{"", "", "office-vpn"}));
    EXPECT_EQ(vpn->line, 6);
    EXPECT_EQ(vpn->range.prefix_len, 96 + 24);

    EXPECT_EQ(map.lookup(ip("10.244.0.11")), nullptr);
    EXPECT_EQ(map.lookup(ip("192.168.11.1")), nullptr);
}

TEST(PodMap, WorkloadDefaultsToPodName) {
    auto map = parse_ok("endpoints:\n  - ip: 10.0.0.5\n    namespace: default\n    pod: standalone\n");
    const PodMapEntry* e = map.lookup(ip("10.0.0.5"));
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->identity, (Identity{"default", "standalone", "standalone"}));
}

TEST(PodMap, MostSpecificWinsInAnyFileOrder) {
    const std::array<std::string, 3> entries = {
        "  - cidr: 10.1.0.0/16\n    name: sixteen\n",
        "  - cidr: 10.1.2.0/24\n    name: twentyfour\n",
        "  - ip: 10.1.2.3\n    name: host\n",
    };
    std::array<int, 3> order = {0, 1, 2};
    int permutations = 0;
    do {
        std::string text = "endpoints:\n";
        for (int i : order) text += entries[i];
        SCOPED_TRACE(text);
        auto map = parse_ok(text);
        ASSERT_EQ(map.size(), 3u);
        EXPECT_EQ(workload_of(map, "10.1.2.3"), "host");
        EXPECT_EQ(workload_of(map, "10.1.2.4"), "twentyfour");
        EXPECT_EQ(workload_of(map, "10.1.2.255"), "twentyfour");
        EXPECT_EQ(workload_of(map, "10.1.3.3"), "sixteen");
        EXPECT_EQ(workload_of(map, "10.1.255.255"), "sixteen");
        EXPECT_EQ(workload_of(map, "10.2.0.0"), "<none>");
        // entries() is longest prefix first.
        EXPECT_EQ(map.entries().front().identity.workload, "host");
        EXPECT_EQ(map.entries().back().identity.workload, "sixteen");
        ++permutations;
    } while (std::next_permutation(order.begin(), order.end()));
    EXPECT_EQ(permutations, 6);
}

TEST(PodMap, Ipv4AndIpv6AreSeparate) {
    auto map = parse_ok(R"(endpoints:
  - cidr: 0.0.0.0/0
    name: any-v4
  - cidr: fd00:10:244::/48
    name: pods-v6
  - ip: fd00:10:244::5
    namespace: web
    pod: web-0
    workload: web
  - ip: "::1"
    name: loopback-v6
  - cidr: 10.96.0.0/12
    name: services
)");
    EXPECT_EQ(workload_of(map, "fd00:10:244::5"), "web");
    EXPECT_EQ(workload_of(map, "fd00:10:244:1::9"), "pods-v6");
    EXPECT_EQ(workload_of(map, "::1"), "loopback-v6");
    EXPECT_EQ(workload_of(map, "fd00:10:245::1"), "<none>");  // 0.0.0.0/0 covers IPv4 only
    EXPECT_EQ(workload_of(map, "10.100.0.1"), "services");
    EXPECT_EQ(workload_of(map, "10.112.0.1"), "any-v4");  // just past 10.96.0.0/12
    EXPECT_EQ(workload_of(map, "127.0.0.1"), "any-v4");
    EXPECT_EQ(workload_of(map, "::ffff:127.0.0.1"), "any-v4");  // v4-mapped is IPv4
}

TEST(PodMap, Ipv6ZeroPrefixCoversEverything) {
    auto map = parse_ok("endpoints:\n  - cidr: ::/0\n    name: all\n  - cidr: 10.0.0.0/8\n    name: ten\n");
    EXPECT_EQ(workload_of(map, "10.1.1.1"), "ten");
    EXPECT_EQ(workload_of(map, "11.1.1.1"), "all");  // the 128-bit space holds v4-mapped addresses too
    EXPECT_EQ(workload_of(map, "2001:db8::1"), "all");
}

TEST(PodMap, EmptyListIsFine) {
    EXPECT_EQ(parse_ok("endpoints: []\n").size(), 0u);
    EXPECT_EQ(parse_ok("endpoints:\n").size(), 0u);
    EXPECT_EQ(parse_ok("# nothing mapped yet\nendpoints: []\n").lookup(ip("10.0.0.1")), nullptr);
}

TEST(PodMap, FlowStyleIsFine) {
    auto map = parse_ok("endpoints: [{ip: 10.0.0.1, name: a}, {cidr: 10.0.0.0/8, name: b}]\n");
    EXPECT_EQ(workload_of(map, "10.0.0.1"), "a");
    EXPECT_EQ(workload_of(map, "10.9.9.9"), "b");
}

// ---- malformed files: each error names the right line -------------------------------------

struct BadCase {
    const char* label;
    const char* yaml;
    const char* error_prefix;  // "line N: " and the start of the message
    const char* also;          // another substring that must appear ("" for none)
};

class PodMapMalformed : public ::testing::TestWithParam<BadCase> {};

TEST_P(PodMapMalformed, NamesTheLine) {
    const BadCase& c = GetParam();
    std::string error = parse_error(c.yaml);
    EXPECT_EQ(error.rfind(c.error_prefix, 0), 0u) << "error: " << error;
    EXPECT_NE(error.find(c.also), std::string::npos) << "error: " << error;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, PodMapMalformed,
    ::testing::Values(
        BadCase{"yaml_unclosed_flow", "endpoints:\n  - ip: 10.0.0.1\n    name: [a\n",
                "line 3: ", "end of sequence flow"},
        BadCase{"yaml_unclosed_quote", "endpoints:\n  - ip: 10.0.0.1\n    name: \"a\n\n\n",
                "line 3: ", "line break"},
        BadCase{"control_character", "endpoints:\n  - ip: 10.0.0.1\n    name: \"tab\\there\"\n",
                "line 3: ", "control character"},
        BadCase{"yaml_bad_map_value", "endpoints:\n  - ip: 10.0.0.1\n    name: a: b\n",
                "line 3: ", "illegal map value"},
        BadCase{"yaml_tab", "endpoints:\n  - ip: 10.0.0.1\n\tname: a\n", "line 3: ", "tab"},
        BadCase{"yaml_bad_indent", "endpoints:\n  - ip: 10.0.0.1\n     name: a\n", "line 3: ", ""},
        BadCase{"empty_file", "", "line 1: ", "endpoints"},
        BadCase{"comment_only", "# just a comment\n", "line 1: ", "endpoints"},
        BadCase{"top_level_list", "- ip: 10.0.0.1\n  name: a\n", "line 1: ", "must be a map"},
        BadCase{"top_level_scalar", "\n\nendpoints\n", "line 3: ", "must be a map"},
        BadCase{"missing_endpoints", "{}\n", "line 1: ", "endpoints"},
        BadCase{"unknown_top_key", "endpoints: []\n\nendpionts: []\n", "line 3: ", "'endpionts'"},
        BadCase{"duplicate_endpoints", "endpoints: []\nendpoints: []\n", "line 2: ", "first at line 1"},
        BadCase{"endpoints_map", "\nendpoints:\n  ip: 10.0.0.1\n", "line 2: ", "must be a list"},
        BadCase{"endpoints_scalar", "endpoints: 10.0.0.1\n", "line 1: ", "must be a list"},
        BadCase{"two_documents", "endpoints: []\n---\nendpoints: []\n", "line 3: ", "one YAML document"},
        BadCase{"entry_scalar", "endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - 10.0.0.2\n",
                "line 4: ", "must be a map"},
        BadCase{"unknown_key",
                "endpoints:\n  - ip: 10.0.0.1\n    namespace: a\n    pod: b\n    workloads: c\n",
                "line 5: ", "unknown key 'workloads'"},
        BadCase{"duplicate_key", "endpoints:\n  - ip: 10.0.0.1\n    name: a\n    name: b\n",
                "line 4: ", "duplicate key 'name' (first at line 3)"},
        BadCase{"no_range", "endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - name: b\n",
                "line 4: ", "'ip' or 'cidr'"},
        BadCase{"ip_and_cidr", "endpoints:\n  - ip: 10.0.0.1\n    cidr: 10.0.0.0/24\n    name: a\n",
                "line 3: ", "not both"},
        BadCase{"invalid_ip", "endpoints:\n  - name: a\n    ip: 10.0.0.256\n",
                "line 3: ", "invalid ip '10.0.0.256'"},
        BadCase{"ip_with_prefix", "endpoints:\n  - name: a\n    ip: 10.0.0.0/24\n", "line 3: ", "use 'cidr'"},
        BadCase{"ip_hostname", "endpoints:\n  - name: a\n    ip: db.internal\n", "line 3: ", "invalid ip"},
        BadCase{"cidr_no_prefix", "endpoints:\n  - name: a\n    cidr: 10.0.0.0\n",
                "line 3: ", "invalid cidr '10.0.0.0'"},
        BadCase{"cidr_v4_prefix_33", "endpoints:\n  - name: a\n    cidr: 10.0.0.0/33\n",
                "line 3: ", "invalid cidr"},
        BadCase{"cidr_v6_prefix_129", "endpoints:\n  - name: a\n    cidr: fd00::/129\n",
                "line 3: ", "invalid cidr"},
        BadCase{"cidr_negative", "endpoints:\n  - name: a\n    cidr: 10.0.0.0/-1\n",
                "line 3: ", "invalid cidr"},
        BadCase{"cidr_host_bits_v4", "endpoints:\n  - name: a\n    cidr: 10.244.1.5/24\n",
                "line 3: ", "host bits set (network is 10.244.1.0/24"},
        BadCase{"cidr_host_bits_v6", "endpoints:\n  - name: a\n    cidr: fd00::1/64\n",
                "line 3: ", "network is fd00::/64"},
        BadCase{"pod_without_namespace", "endpoints:\n  - ip: 10.0.0.1\n    pod: web-0\n",
                "line 3: ", "'pod' requires 'namespace'"},
        BadCase{"namespace_without_pod", "endpoints:\n  - ip: 10.0.0.1\n    namespace: web\n",
                "line 3: ", "'namespace' needs 'pod'"},
        BadCase{"workload_without_pod", "endpoints:\n  - ip: 10.0.0.1\n\n    workload: web\n",
                "line 4: ", "'workload' needs 'pod'"},
        BadCase{"name_and_pod", "endpoints:\n  - ip: 10.0.0.1\n    name: vpn\n    namespace: a\n    pod: b\n",
                "line 5: ", "cannot be combined with 'name'"},
        BadCase{"name_and_workload", "endpoints:\n  - ip: 10.0.0.1\n    workload: w\n    name: vpn\n",
                "line 3: ", "'workload' cannot be combined"},
        BadCase{"no_identity", "endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - ip: 10.0.0.2\n",
                "line 4: ", "'name' or 'pod'"},
        BadCase{"empty_value", "endpoints:\n  - ip: 10.0.0.1\n    name: \"\"\n",
                "line 3: ", "'name' is empty"},
        BadCase{"null_value", "endpoints:\n  - ip: 10.0.0.1\n    name:\n", "line 3: ", "'name' has no value"},
        BadCase{"list_value", "endpoints:\n  - ip: [10.0.0.1, 10.0.0.2]\n    name: a\n",
                "line 2: ", "single value"},
        BadCase{"duplicate_range",
                "endpoints:\n  - cidr: 10.0.0.0/24\n    name: a\n  - ip: 10.0.1.1\n    name: b\n"
                "  - cidr: 10.0.0.0/24\n    name: c\n",
                "line 6: ", "already mapped by the entry at line 2"},
        BadCase{"duplicate_ip_as_cidr32",
                "endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - cidr: 10.0.0.1/32\n    name: b\n",
                "line 4: ", "line 2"},
        BadCase{"duplicate_v4_mapped",
                "endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - ip: \"::ffff:10.0.0.1\"\n    name: b\n",
                "line 4: ", "line 2"},
        BadCase{"duplicate_v6",
                "endpoints:\n  - cidr: fd00::/64\n    name: a\n  - cidr: \"fd00:0::/64\"\n    name: b\n",
                "line 4: ", "line 2"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return std::string(info.param.label); });

TEST(PodMap, ErrorIsExactlyLineAndWhat) {
    EXPECT_EQ(parse_error("endpoints:\n  - ip: 10.0.0.1\n    nmae: a\n"),
              "line 3: unknown key 'nmae' (expected ip, cidr, name, namespace, pod, workload)");
    EXPECT_EQ(parse_error("endpoints:\n  - ip: 10.0.0.1\n    name: a\n  - ip: 10.0.0.1\n    name: b\n"),
              "line 4: range 10.0.0.1/32 is already mapped by the entry at line 2");
}

TEST(PodMap, OverlappingDifferentRangesAreFine) {
    // Same network, different prefix lengths: not duplicates.
    auto map = parse_ok("endpoints:\n  - cidr: 10.0.0.0/8\n    name: a\n  - cidr: 10.0.0.0/9\n    name: b\n");
    EXPECT_EQ(workload_of(map, "10.1.0.0"), "b");
    EXPECT_EQ(workload_of(map, "10.200.0.0"), "a");
}

TEST(PodMap, LoadFilePrefixesThePath) {
    char dir_template[] = "/tmp/rstwatch-podmap-XXXXXX";
    ASSERT_NE(mkdtemp(dir_template), nullptr);
    const std::string dir = dir_template;
    const std::string good = dir + "/good.yaml";
    const std::string bad = dir + "/bad.yaml";
    std::ofstream(good) << "endpoints:\n  - cidr: 10.0.0.0/8\n    name: ten\n";
    std::ofstream(bad) << "endpoints:\n  - cidr: 10.0.0.0/8\n    name: ten\n    color: blue\n";

    std::string error = "unset";
    auto map = PodMap::load_file(good, &error);
    ASSERT_TRUE(map) << error;
    EXPECT_EQ(error, "");
    EXPECT_EQ(workload_of(*map, "10.9.8.7"), "ten");

    EXPECT_FALSE(PodMap::load_file(bad, &error));
    EXPECT_EQ(error,
              bad + ": line 4: unknown key 'color' (expected ip, cidr, name, namespace, pod, workload)");

    EXPECT_FALSE(PodMap::load_file(dir + "/missing.yaml", &error));
    EXPECT_EQ(error, dir + "/missing.yaml: cannot read: No such file or directory");

    EXPECT_FALSE(PodMap::load_file(dir, &error));
    EXPECT_EQ(error, dir + ": cannot read: Is a directory");

    std::remove(good.c_str());
    std::remove(bad.c_str());
    rmdir(dir.c_str());
}

TEST(PodMap, NullErrorPointerIsAllowed) {
    EXPECT_FALSE(PodMap::parse("endpoints: 1\n", nullptr));
    EXPECT_TRUE(PodMap::parse("endpoints: []\n", nullptr));
}

// Regression seeds from fuzz/crashes: yaml-cpp's document loop ran away on these, and its
// messages may echo a newline; the parser must fail cleanly with one line.
TEST(PodMapFuzzRegressions, MalformedInputsFailCleanlyOnOneLine) {
    for (const char* name : {"pod_map_yaml_cpp_memory_exhaustion.yaml", "pod_map_yaml_cpp_memory_exhaustion_2.yaml",
                             "pod_map_error_has_newline.yaml"}) {
        std::ifstream in(std::string(RSTWATCH_SOURCE_DIR) + "/fuzz/corpus/fuzz_pod_map/" + name, std::ios::binary);
        ASSERT_TRUE(in) << name;
        std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        std::string error;
        auto map = rstwatch::PodMap::parse(text, &error);
        EXPECT_FALSE(map) << name;
        EXPECT_EQ(error.find('\n'), std::string::npos) << name << ": " << error;
        EXPECT_EQ(error.rfind("line ", 0), 0u) << name << ": " << error;
    }
}
