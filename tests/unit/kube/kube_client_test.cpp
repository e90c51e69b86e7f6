// Kubernetes client tests: the pure wire-format parsers and config checks, then the watcher
// against tests/lib/fake_kube.py (a child process on loopback) through lists, watches,
// 410s, dropped connections, garbage, auth failures and stop().
#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>

#include "fake_kube_process.h"
#include "kube_client.h"
#include "kube_objects.h"

using namespace rstwatch;
using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

namespace {

// ---- real-shaped lines ---------------------------------------------------------------
const char* kAddedPod =
    R"({"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web-7d4b9c6f5d-x2k9p",)"
    R"("generateName":"web-7d4b9c6f5d-","namespace":"shop","uid":"0b7d4a9e-2c55-4f7e-9d3c-1f0e8a6b5c4d",)"
    R"("resourceVersion":"48213","creationTimestamp":"2024-05-01T10:00:00Z","labels":{"app":"web",)"
    R"("pod-template-hash":"7d4b9c6f5d"},"ownerReferences":[{"apiVersion":"apps/v1","kind":"ReplicaSet",)"
    R"("name":"web-7d4b9c6f5d","uid":"5e1f...","controller":true,"blockOwnerDeletion":true}]},)"
    R"("spec":{"containers":[{"name":"web","image":"nginx:1.25"}],"nodeName":"node-1"},)"
    R"("status":{"phase":"Running","hostIP":"172.18.0.2","podIP":"10.244.1.5","podIPs":[{"ip":"10.244.1.5"}]}}})";

const char* kBookmark =
    R"({"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"48999",)"
    R"("creationTimestamp":null},"spec":{"containers":null},"status":{}}})";

const char* kGone =
    R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
    R"x("message":"too old resource version: 1000 (1013)","reason":"Expired","code":410}})x";

const char* kInternal =
    R"({"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
    R"("message":"Internal error occurred: etcdserver: request timed out","reason":"InternalError","code":500}})";

// ---- helpers ---------------------------------------------------------------------------
bool eventually(const std::function<bool()>& cond, milliseconds timeout = milliseconds(10'000)) {
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
        if (cond()) return true;
        std::this_thread::sleep_for(milliseconds(10));
    }
    return cond();
}

std::optional<Identity> who(const ClusterState& state, const char* ip) {
    auto addr = IpAddr::parse(ip);
    if (!addr) return std::nullopt;
    return state.lookup(*addr);
}

std::string workload_of(const ClusterState& state, const char* ip) {
    auto id = who(state, ip);
    return id ? id->workload : std::string("<none>");
}

class TempDir {
public:
    TempDir() {
        char tmpl[] = "/tmp/kube_client_test.XXXXXX";
        path_ = mkdtemp(tmpl);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    std::string file(const std::string& name, const std::string& content) const {
        std::string p = path_ + "/" + name;
        std::ofstream(p) << content;
        return p;
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

const char* kPem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

}  // namespace

// ===================================================================================
// parse_watch_event
// ===================================================================================

TEST(ParseWatchEvent, AddedPod) {
    std::string err;
    auto ev = parse_watch_event(kAddedPod, &err);
    ASSERT_TRUE(ev) << err;
    EXPECT_EQ(ev->type, WatchEventType::added);
    EXPECT_EQ(ev->resource_version, "48213");
    EXPECT_EQ(ev->object["metadata"]["name"], "web-7d4b9c6f5d-x2k9p");
    EXPECT_FALSE(ev->gone());
    auto pod = pod_from_json(ev->object, &err);
    ASSERT_TRUE(pod) << err;
    EXPECT_EQ(pod->workload, "web");
}

TEST(ParseWatchEvent, ModifiedAndDeletedWithCrLf) {
    std::string line = kAddedPod;
    auto modified = line;
    modified.replace(modified.find("ADDED"), 5, "MODIFIED");
    auto ev = parse_watch_event(modified + "\r\n", nullptr);
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, WatchEventType::modified);
    auto deleted = line;
    deleted.replace(deleted.find("ADDED"), 5, "DELETED");
    ev = parse_watch_event("  " + deleted + "\r", nullptr);
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, WatchEventType::deleted);
    EXPECT_EQ(watch_event_type_name(ev->type), "DELETED");
}

TEST(ParseWatchEvent, Bookmark) {
    std::string err;
    auto ev = parse_watch_event(kBookmark, &err);
    ASSERT_TRUE(ev) << err;
    EXPECT_EQ(ev->type, WatchEventType::bookmark);
    EXPECT_EQ(ev->resource_version, "48999");
    // A bookmark without a resourceVersion is useless: rejected.
    EXPECT_FALSE(parse_watch_event(R"({"type":"BOOKMARK","object":{"kind":"Pod","metadata":{}}})", &err));
    EXPECT_NE(err.find("BOOKMARK"), std::string::npos) << err;
}

TEST(ParseWatchEvent, ErrorStatus) {
    auto ev = parse_watch_event(kGone, nullptr);
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->type, WatchEventType::error);
    EXPECT_EQ(ev->status_code, 410);
    EXPECT_EQ(ev->status_reason, "Expired");
    EXPECT_EQ(ev->status_message, "too old resource version: 1000 (1013)");
    EXPECT_TRUE(ev->gone());

    ev = parse_watch_event(kInternal, nullptr);
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->status_code, 500);
    EXPECT_FALSE(ev->gone());

    // Reason alone (some proxies drop the code), and a Status with a silly code.
    ev = parse_watch_event(R"({"type":"ERROR","object":{"kind":"Status","reason":"Gone"}})", nullptr);
    ASSERT_TRUE(ev);
    EXPECT_TRUE(ev->gone());
    ev = parse_watch_event(R"({"type":"ERROR","object":{"kind":"Status","code":1e400}})", nullptr);
    if (ev) {
        EXPECT_EQ(ev->status_code, 0);
    }
    ev = parse_watch_event(R"({"type":"ERROR","object":{"kind":"Status","code":-410}})", nullptr);
    ASSERT_TRUE(ev);
    EXPECT_EQ(ev->status_code, 0);
    EXPECT_FALSE(ev->gone());
}

TEST(ParseWatchEvent, Garbage) {
    const char* bad[] = {
        "",
        "   \r",
        "not json",
        "<html><body>502 Bad Gateway</body></html>",
        "[]",
        "null",
        "42",
        "\"ADDED\"",
        "{}",
        R"({"type":"ADDED"})",
        R"({"type":"ADDED","object":null})",
        R"({"type":"ADDED","object":[]})",
        R"({"type":"ADDED","object":"pod"})",
        R"({"type":"FOO","object":{}})",
        R"({"type":"added","object":{}})",
        R"({"type":7,"object":{}})",
        R"({"type":"ADDED","object":{"metadata":[]}})",
        R"({"type":"ADDED","object":{"metadata":{"resourceVersion":48213}}})",
        R"({"type":"ADDED","object":{"kind":"Pod","metadata":{"name":)",
        R"({"type":"ADDED","object":{}}} trailing)",
        "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"\xff\xfe\"}}}",
        "\x00\x01\x02",
    };
    for (const char* line : bad) {
        std::string err;
        EXPECT_FALSE(parse_watch_event(line, &err)) << "accepted: " << line;
        EXPECT_FALSE(err.empty()) << line;
        EXPECT_EQ(err.find('\n'), std::string::npos) << "multi-line error: " << err;
    }
    // Deep nesting and a long line: rejected or accepted, never a crash.
    std::string deep = R"({"type":"ADDED","object":{"x":)" + std::string(100000, '[') + std::string(100000, ']') + "}}";
    parse_watch_event(deep, nullptr);
    std::string open_only(200000, '{');
    EXPECT_FALSE(parse_watch_event(open_only, nullptr));
}

TEST(ParseWatchEvent, RandomMutationsNeverThrow) {
    std::mt19937 rng(1234);
    const std::string seeds[] = {kAddedPod, kBookmark, kGone, kInternal};
    int accepted = 0;
    for (int i = 0; i < 20000; ++i) {
        std::string s = seeds[i % 4];
        int edits = 1 + static_cast<int>(rng() % 4);
        for (int e = 0; e < edits && !s.empty(); ++e) {
            size_t pos = rng() % s.size();
            switch (rng() % 3) {
                case 0: s[pos] = static_cast<char>(rng() & 0xff); break;
                case 1: s.erase(pos, 1 + rng() % 8); break;
                default: s.insert(pos, 1, "{}[]\",:\\0n"[rng() % 10]); break;
            }
        }
        std::string err;
        EXPECT_NO_THROW({
            if (parse_watch_event(s, &err)) ++accepted;
        });
    }
    EXPECT_GT(accepted, 0);
}

TEST(ParseListPage, RealShape) {
    std::string err;
    auto page = parse_list_page(
        R"({"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1012","continue":"eyJ2Ijo-_x","remainingItemCount":5},"items":[{"metadata":{"name":"a"}},{"metadata":{"name":"b"}}]})",
        &err);
    ASSERT_TRUE(page) << err;
    EXPECT_EQ(page->resource_version, "1012");
    EXPECT_EQ(page->continue_token, "eyJ2Ijo-_x");
    EXPECT_EQ(page->items.size(), 2u);

    page = parse_list_page(R"({"kind":"ServiceList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":null})", &err);
    ASSERT_TRUE(page) << err;
    EXPECT_TRUE(page->continue_token.empty());
    EXPECT_TRUE(page->items.is_array());
    EXPECT_TRUE(page->items.empty());

    for (const char* bad : {"", "garbage", "[]", R"({"items":[]})", R"({"metadata":{"resourceVersion":"1"}})",
                            R"({"metadata":{"resourceVersion":1},"items":[]})",
                            R"({"metadata":{"resourceVersion":"1","continue":5},"items":[]})",
                            R"({"kind":"Status","code":410,"reason":"Expired"})"}) {
        EXPECT_FALSE(parse_list_page(bad, &err)) << bad;
        EXPECT_FALSE(err.empty());
    }
}

TEST(WireHelpers, DescribeErrorBodyAndUrlEncode) {
    EXPECT_EQ(describe_error_body(R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})"),
              "Unauthorized (Unauthorized)");
    EXPECT_EQ(describe_error_body("<html>\nbad gateway\n</html>"), "<html> bad gateway </html>");
    EXPECT_EQ(describe_error_body(""), "empty body");
    EXPECT_EQ(url_encode("abc-_.~XYZ09"), "abc-_.~XYZ09");
    EXPECT_EQ(url_encode("a+b/c=d&e f"), "a%2Bb%2Fc%3Dd%26e%20f");
}

// ===================================================================================
// KubeConfig
// ===================================================================================

TEST(KubeConfig, Validate) {
    TempDir dir;
    std::string token = dir.file("token", "  eyJhbGciOiJSUzI1NiJ9.payload.sig\n");
    std::string empty = dir.file("empty", "\n");
    std::string ca = dir.file("ca.crt", kPem);
    std::string notca = dir.file("notca", "hello");
    std::string err;

    KubeConfig c{"https://10.96.0.1:443", token, ca};
    EXPECT_TRUE(c.validate(&err)) << err;
    EXPECT_TRUE((KubeConfig{"http://127.0.0.1:8001", "", ""}.validate(&err))) << err;
    EXPECT_TRUE((KubeConfig{"https://[fd00::1]:6443", "", ""}.validate(&err))) << err;
    EXPECT_TRUE((KubeConfig{"https://rancher.example.com/k8s/clusters/c-abc", "", ""}.validate(&err))) << err;

    auto fails = [&](KubeConfig cfg, const char* needle) {
        std::string e;
        bool ok = cfg.validate(&e);
        EXPECT_FALSE(ok) << cfg.api_url;
        EXPECT_NE(e.find(needle), std::string::npos) << e;
        EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    };
    fails({"", "", ""}, "no Kubernetes API URL");
    fails({"ftp://x", "", ""}, "https://");
    fails({"10.96.0.1:443", "", ""}, "https://");
    fails({"https://", "", ""}, "no host");
    fails({"https://h:99999", "", ""}, "bad port");
    fails({"https://h:", "", ""}, "bad port");
    fails({"https://[fd00::1", "", ""}, "IPv6");
    fails({"https://u:p@h", "", ""}, "credentials");
    fails({"https://h/?a=b", "", ""}, "query");
    fails({"https://h", dir.path() + "/missing", ""}, "cannot read token file");
    fails({"https://h", empty, ""}, "is empty");
    fails({"https://h", "", dir.path() + "/missing.crt"}, "cannot read CA file");
    fails({"https://h", "", notca}, "no PEM certificate");

    auto t = read_token_file(token, &err);
    ASSERT_TRUE(t) << err;
    EXPECT_EQ(*t, "eyJhbGciOiJSUzI1NiJ9.payload.sig");
}

TEST(KubeConfig, InClusterAndFlags) {
    TempDir sa;
    sa.file("token", "tok\n");
    sa.file("ca.crt", kPem);
    std::string err;

    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
    EXPECT_FALSE(KubeConfig::in_cluster(&err, sa.path()));
    EXPECT_NE(err.find("KUBERNETES_SERVICE_HOST"), std::string::npos) << err;
    EXPECT_FALSE(KubeConfig::from_flags("", "", "", &err, sa.path()));

    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    auto c = KubeConfig::in_cluster(&err, sa.path());
    ASSERT_TRUE(c) << err;
    EXPECT_EQ(c->api_url, "https://10.96.0.1:443");
    EXPECT_EQ(c->token_file, sa.path() + "/token");
    EXPECT_EQ(c->ca_file, sa.path() + "/ca.crt");

    setenv("KUBERNETES_SERVICE_HOST", "fd00:10:96::1", 1);
    c = KubeConfig::in_cluster(&err, sa.path());
    ASSERT_TRUE(c) << err;
    EXPECT_EQ(c->api_url, "https://[fd00:10:96::1]:443");

    // In-cluster with a token file from the flag.
    std::string other = sa.file("other-token", "x");
    c = KubeConfig::from_flags("", other, "", &err, sa.path());
    ASSERT_TRUE(c) << err;
    EXPECT_EQ(c->token_file, other);
    EXPECT_EQ(c->ca_file, sa.path() + "/ca.crt");

    // Explicit URL: only the flags.
    c = KubeConfig::from_flags("http://127.0.0.1:8001/", "", "", &err, sa.path());
    ASSERT_TRUE(c) << err;
    EXPECT_EQ(c->api_url, "http://127.0.0.1:8001");
    EXPECT_TRUE(c->token_file.empty());
    EXPECT_FALSE(KubeConfig::from_flags("http://127.0.0.1:8001", sa.path() + "/nope", "", &err, sa.path()));
    EXPECT_NE(err.find("cannot read token file"), std::string::npos) << err;

    // Unreadable service account token in a pod.
    std::filesystem::remove(sa.path() + "/token");
    setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1", 1);
    EXPECT_FALSE(KubeConfig::in_cluster(&err, sa.path()));
    EXPECT_NE(err.find("token"), std::string::npos) << err;
    unsetenv("KUBERNETES_SERVICE_HOST");
    unsetenv("KUBERNETES_SERVICE_PORT");
}

// ===================================================================================
// KubeWatcher against fake_kube.py
// ===================================================================================

class KubeWatcherTest : public ::testing::Test {
protected:
    void SetUp() override {
        spdlog::set_level(spdlog::level::warn);
        token_file_ = dir_.file("token", "test-token\n");
    }
    void TearDown() override {
        if (watcher_) {
            auto t0 = Clock::now();
            watcher_->stop();
            EXPECT_LT(Clock::now() - t0, seconds(2)) << "stop() was slow";
        }
        watcher_.reset();
        kube_.reset();
        spdlog::set_level(spdlog::level::info);
    }

    void start_fake(std::vector<std::string> args = {}) {
        kube_ = std::make_unique<rstwatch::testing::FakeKubeProcess>(args);
        ASSERT_TRUE(kube_->ok()) << kube_->error();
    }

    KubeWatcherOptions fast_options() {
        KubeWatcherOptions o;
        o.initial_backoff = milliseconds(50);
        o.max_backoff = milliseconds(400);
        return o;
    }

    void start_watcher(KubeWatcherOptions options) {
        state_ = std::make_shared<ClusterState>();
        watcher_ = std::make_unique<KubeWatcher>(KubeConfig{kube_->url(), token_file_, ""}, state_, options);
        watcher_->start();
    }
    void start_watcher() { start_watcher(fast_options()); }

    void wait_synced() {
        ASSERT_TRUE(eventually([&] { return watcher_->synced(); })) << "not synced: " << watcher_->stats().last_error;
        ASSERT_TRUE(kube_->control({{"op", "wait_for_watches"}, {"count", 2}}).get<bool>()) << "no watches open";
    }

    // Waits until IP maps to the workload (or to nothing with "<none>").
    ::testing::AssertionResult maps_to(const char* ip, const std::string& workload, milliseconds timeout = milliseconds(10'000)) {
        if (eventually([&] { return workload_of(*state_, ip) == workload; }, timeout))
            return ::testing::AssertionSuccess();
        return ::testing::AssertionFailure() << ip << " maps to " << workload_of(*state_, ip) << ", expected " << workload
                                             << "; last error: " << watcher_->stats().last_error;
    }

    TempDir dir_;
    std::string token_file_;
    std::unique_ptr<rstwatch::testing::FakeKubeProcess> kube_;
    std::shared_ptr<ClusterState> state_;
    std::unique_ptr<KubeWatcher> watcher_;
};

TEST_F(KubeWatcherTest, InitialListFollowsContinue) {
    start_fake({"--seed", "demo"});  // 8 pods, 4 services
    auto options = fast_options();
    options.page_limit = 3;
    start_watcher(options);
    wait_synced();
    EXPECT_EQ(state_->pod_count(), 8u);
    EXPECT_EQ(state_->service_count(), 4u);
    EXPECT_GE(kube_->control({{"op", "request_count"}, {"verb", "list"}, {"resource", "pods"}}).get<int>(), 3);
    EXPECT_GE(kube_->control({{"op", "request_count"}, {"verb", "list"}, {"resource", "services"}}).get<int>(), 2);

    EXPECT_EQ(workload_of(*state_, "10.244.1.5"), "web");
    EXPECT_EQ(workload_of(*state_, "10.244.2.5"), "web");
    EXPECT_EQ(workload_of(*state_, "10.244.1.20"), "ingress-nginx-controller");
    EXPECT_EQ(workload_of(*state_, "10.244.2.6"), "postgres");
    EXPECT_EQ(workload_of(*state_, "10.244.1.7"), "node-exporter");
    EXPECT_EQ(workload_of(*state_, "10.244.1.9"), "backup");
    EXPECT_EQ(workload_of(*state_, "10.244.1.10"), "debug");
    EXPECT_EQ(workload_of(*state_, "172.18.0.2"), "node");  // hostNetwork kube-proxy
    auto id = who(*state_, "10.244.2.6");
    ASSERT_TRUE(id);
    EXPECT_EQ(id->namespace_, "shop");
    EXPECT_EQ(id->pod, "postgres-0");
    EXPECT_EQ(workload_of(*state_, "10.96.100.10"), "svc/web");
    EXPECT_EQ(workload_of(*state_, "10.96.0.1"), "svc/kubernetes");
    EXPECT_TRUE(state_->pod_exists("default", "debug"));

    auto stats = watcher_->stats();
    EXPECT_EQ(stats.pods.lists, 1u);
    EXPECT_EQ(stats.relists(), 0u);
    EXPECT_EQ(stats.errors(), 0u) << stats.last_error;
    EXPECT_FALSE(stats.pods.resource_version.empty());
}

TEST_F(KubeWatcherTest, AddedModifiedDeleted) {
    start_fake();
    start_watcher();
    wait_synced();
    EXPECT_EQ(state_->pod_count(), 0u);

    auto pod = kube_->add_pod("deployment_pod", {{"deployment", "api"}, {"namespace", "shop"}, {"ip", "10.244.3.4"}});
    std::string name = pod["metadata"]["name"];
    ASSERT_TRUE(maps_to("10.244.3.4", "api"));
    EXPECT_TRUE(state_->pod_exists("shop", name));

    // MODIFIED: the pod moves to a new IP (e.g. a sandbox restart).
    kube_->control({{"op", "update_pod"}, {"namespace", "shop"}, {"name", name},
                    {"patch", {{"status", {{"podIP", "10.244.3.99"}, {"podIPs", json::array({{{"ip", "10.244.3.99"}}})}}}}}});
    ASSERT_TRUE(maps_to("10.244.3.99", "api"));
    EXPECT_TRUE(maps_to("10.244.3.4", "<none>"));

    // A pending pod (no IP) then running.
    auto pending = kube_->add_pod("pending_pod", {{"deployment", "worker"}});
    std::string pname = pending["metadata"]["name"];
    ASSERT_TRUE(eventually([&] { return state_->pod_exists("default", pname); }));
    kube_->control({{"op", "update_pod"}, {"namespace", "default"}, {"name", pname},
                    {"patch", {{"status", {{"phase", "Running"}, {"podIP", "10.244.3.5"}, {"podIPs", json::array({{{"ip", "10.244.3.5"}}})}}}}}});
    ASSERT_TRUE(maps_to("10.244.3.5", "worker"));

    kube_->delete_pod("shop", name);
    ASSERT_TRUE(maps_to("10.244.3.99", "<none>"));
    EXPECT_FALSE(state_->pod_exists("shop", name));
    EXPECT_EQ(state_->pod_count(), 1u);

    auto stats = watcher_->stats();
    EXPECT_GE(stats.pods.events, 5u);
    EXPECT_EQ(stats.errors(), 0u) << stats.last_error;
    EXPECT_EQ(stats.pods.resource_version, kube_->state()["resourceVersion"].get<std::string>());
}

TEST_F(KubeWatcherTest, PodIpReusedByNewPod) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->add_pod("bare_pod", {{"name", "old"}, {"ip", "10.244.5.5"}});
    ASSERT_TRUE(maps_to("10.244.5.5", "old"));
    // The IP goes to a new pod before the old pod's DELETED event arrives.
    kube_->add_pod("statefulset_pod", {{"statefulset", "cache"}, {"ordinal", 2}, {"ip", "10.244.5.5"}});
    ASSERT_TRUE(maps_to("10.244.5.5", "cache"));
    kube_->delete_pod("default", "old");
    ASSERT_TRUE(eventually([&] { return !state_->pod_exists("default", "old"); }));
    EXPECT_EQ(workload_of(*state_, "10.244.5.5"), "cache");
    auto id = who(*state_, "10.244.5.5");
    ASSERT_TRUE(id);
    EXPECT_EQ(id->pod, "cache-2");
}

TEST_F(KubeWatcherTest, ServicesClusterIPs) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->add_service("service", {{"name", "dual"}, {"namespace", "shop"}, {"cluster_ips", {"10.96.7.7", "fd00:96::7"}}});
    kube_->add_service("headless_service", {{"name", "db"}});
    ASSERT_TRUE(maps_to("10.96.7.7", "svc/dual"));
    ASSERT_TRUE(maps_to("fd00:96::7", "svc/dual"));
    ASSERT_TRUE(eventually([&] { return state_->service_count() == 2; }));
    kube_->control({{"op", "delete_service"}, {"namespace", "shop"}, {"name", "dual"}});
    ASSERT_TRUE(maps_to("10.96.7.7", "<none>"));
    EXPECT_EQ(workload_of(*state_, "fd00:96::7"), "<none>");
    EXPECT_EQ(state_->service_count(), 1u);
}

TEST_F(KubeWatcherTest, BookmarkMovesResourceVersion) {
    start_fake();
    start_watcher();
    wait_synced();
    // Changes to other resources move the global RV; a bookmark tells the pod watch.
    kube_->add_service("service", {{"name", "a"}, {"cluster_ips", {"10.96.1.1"}}});
    ASSERT_TRUE(maps_to("10.96.1.1", "svc/a"));
    std::string rv = kube_->control({{"op", "send_bookmark"}, {"resource", "pods"}}).get<std::string>();
    ASSERT_TRUE(eventually([&] { return watcher_->stats().pods.resource_version == rv; }))
        << watcher_->stats().pods.resource_version << " != " << rv;
    auto stats = watcher_->stats();
    EXPECT_EQ(stats.pods.bookmarks, 1u);
    EXPECT_EQ(stats.pods.events, 0u);
    EXPECT_EQ(stats.malformed(), 0u);
    EXPECT_EQ(stats.errors(), 0u) << stats.last_error;
    // A rewatch after a clean end starts from the bookmarked RV.
    kube_->control({{"op", "end_watches"}, {"resource", "pods"}});
    ASSERT_TRUE(eventually([&] { return watcher_->stats().pods.watch_restarts >= 1; }));
    ASSERT_TRUE(eventually([&] { return kube_->control({{"op", "request_count"}, {"verb", "watch"}, {"resource", "pods"}}).get<int>() >= 2; }));
    EXPECT_EQ(watcher_->stats().pods.relists, 0u);
}

TEST_F(KubeWatcherTest, CleanWatchEndRewatchesWithoutLosingEvents) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->control({{"op", "end_watches"}});
    // Added while no watch may be open: replayed from the remembered RV.
    kube_->add_pod("daemonset_pod", {{"daemonset", "fluentd"}, {"ip", "10.244.6.6"}});
    ASSERT_TRUE(maps_to("10.244.6.6", "fluentd"));
    ASSERT_TRUE(eventually([&] { return watcher_->stats().watch_restarts() >= 2; }));
    auto stats = watcher_->stats();
    EXPECT_EQ(stats.relists(), 0u);
    EXPECT_EQ(stats.errors(), 0u) << stats.last_error;
}

TEST_F(KubeWatcherTest, WatchErrorEvent410Relists) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->add_pod("bare_pod", {{"name", "stays"}, {"ip", "10.244.7.1"}});
    kube_->add_pod("bare_pod", {{"name", "goes"}, {"ip", "10.244.7.2"}});
    ASSERT_TRUE(maps_to("10.244.7.2", "goes"));
    // Changes the watch never delivers (lost in a compaction): only a relist shows them.
    kube_->delete_pod("default", "goes", /*silent=*/true);
    kube_->add_pod("cronjob_pod", {{"cronjob", "report"}, {"scheduled", 29000000}, {"ip", "10.244.7.3"}}, /*silent=*/true);
    kube_->control({{"op", "expire_resource_versions"}});  // ERROR 410 Expired to open watches
    ASSERT_TRUE(maps_to("10.244.7.3", "report"));
    EXPECT_EQ(workload_of(*state_, "10.244.7.2"), "<none>");
    EXPECT_EQ(workload_of(*state_, "10.244.7.1"), "stays");
    EXPECT_EQ(state_->pod_count(), 2u);
    auto stats = watcher_->stats();
    EXPECT_GE(stats.pods.relists, 1u);
    EXPECT_GE(stats.pods.gone, 1u);
    EXPECT_EQ(stats.errors(), 0u) << stats.last_error;
    // And the new watch works.
    kube_->add_pod("bare_pod", {{"name", "after"}, {"ip", "10.244.7.4"}});
    ASSERT_TRUE(maps_to("10.244.7.4", "after"));
}

TEST_F(KubeWatcherTest, WatchHttp410Relists) {
    start_fake({"--gone-mode", "http"});
    start_watcher();
    wait_synced();
    kube_->add_pod("bare_pod", {{"name", "p"}, {"ip", "10.244.8.1"}, {"namespace", "ns1"}}, /*silent=*/false);
    ASSERT_TRUE(maps_to("10.244.8.1", "p"));
    kube_->add_pod("bare_pod", {{"name", "q"}, {"ip", "10.244.8.2"}}, /*silent=*/true);
    kube_->control({{"op", "expire_resource_versions"}, {"notify", false}});
    kube_->control({{"op", "end_watches"}});  // the rewatch from the old RV gets HTTP 410
    ASSERT_TRUE(maps_to("10.244.8.2", "q"));
    EXPECT_GE(kube_->control({{"op", "request_count"}, {"verb", "watch"}, {"status", 410}}).get<int>(), 1);
    auto stats = watcher_->stats();
    EXPECT_GE(stats.relists(), 1u);
    EXPECT_GE(stats.pods.gone, 1u);
    EXPECT_NE(stats.last_error.find("410"), std::string::npos) << stats.last_error;
}

TEST_F(KubeWatcherTest, DroppedConnectionReconnects) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->control({{"op", "drop_watches"}, {"partial", true}});  // half a line, then FIN without the last chunk
    ASSERT_TRUE(eventually([&] { return watcher_->stats().errors() >= 2; })) << watcher_->stats().last_error;
    kube_->add_pod("job_pod", {{"job", "migrate"}, {"ip", "10.244.9.1"}});
    ASSERT_TRUE(maps_to("10.244.9.1", "migrate"));
    ASSERT_TRUE(kube_->control({{"op", "wait_for_watches"}, {"count", 2}}).get<bool>());
    kube_->control({{"op", "drop_watches"}, {"rst", true}});  // TCP reset
    ASSERT_TRUE(eventually([&] { return watcher_->stats().errors() >= 4; })) << watcher_->stats().last_error;
    kube_->add_pod("bare_pod", {{"name", "later"}, {"ip", "10.244.9.2"}});
    ASSERT_TRUE(maps_to("10.244.9.2", "later"));
    ASSERT_TRUE(eventually([&] { return watcher_->stats().watch_restarts() >= 4; }));
    auto stats = watcher_->stats();
    EXPECT_EQ(stats.relists(), 0u);  // reconnects resume from the RV
    EXPECT_EQ(stats.malformed(), 0u);  // the half line at the drop is not an event
}

TEST_F(KubeWatcherTest, MalformedLinesAreSkipped) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->control({{"op", "send_malformed"}, {"resource", "pods"}});
    kube_->control({{"op", "send_raw"}, {"resource", "pods"}, {"text", "garbage\n{\"type\":\"SURPRISE\",\"object\":{}}\n\n"}});
    // A valid event whose object is not a pod (no metadata.name): skipped as well.
    kube_->control({{"op", "send_raw"}, {"resource", "pods"},
                    {"text", R"({"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"namespace":"x"}}})" "\n"}});
    kube_->control({{"op", "set_chunking"}, {"mode", "split"}});  // every line in two chunks
    kube_->add_pod("deployment_pod", {{"deployment", "split"}, {"ip", "10.244.10.1"}});
    ASSERT_TRUE(maps_to("10.244.10.1", "split"));
    auto stats = watcher_->stats();
    EXPECT_EQ(stats.pods.malformed, 4u) << stats.last_error;
    EXPECT_EQ(stats.errors(), 0u) << stats.last_error;
    EXPECT_FALSE(stats.last_error.empty());
    EXPECT_EQ(stats.pods.watches, 1u);  // skipped lines do not break the watch
}

TEST_F(KubeWatcherTest, UnauthorizedThenTokenRotation) {
    start_fake();
    start_watcher();
    wait_synced();
    // The server now wants a new token; the client still holds the old one.
    kube_->control({{"op", "set_token"}, {"token", "rotated-token"}});
    kube_->control({{"op", "end_watches"}});
    ASSERT_TRUE(eventually([&] { return watcher_->stats().last_error.find("401") != std::string::npos; }))
        << watcher_->stats().last_error;
    kube_->add_pod("bare_pod", {{"name", "x"}, {"ip", "10.244.11.1"}});
    dir_.file("token", "rotated-token\n");  // kubelet rotates the projected token
    ASSERT_TRUE(maps_to("10.244.11.1", "x"));
    auto stats = watcher_->stats();
    EXPECT_GE(stats.errors(), 1u);
    EXPECT_NE(stats.last_error.find("Unauthorized"), std::string::npos) << stats.last_error;
    EXPECT_GE(kube_->control({{"op", "request_count"}, {"status", 401}}).get<int>(), 1);
}

TEST_F(KubeWatcherTest, ForbiddenListThenRecovery) {
    start_fake();
    kube_->control({{"op", "fail_next"}, {"status", 403}, {"count", 2}, {"resource", "pods"}, {"verb", "list"}});
    kube_->add_pod("bare_pod", {{"name", "a"}, {"ip", "10.244.12.1"}});
    start_watcher();
    ASSERT_TRUE(eventually([&] { return watcher_->synced(); })) << watcher_->stats().last_error;
    EXPECT_EQ(workload_of(*state_, "10.244.12.1"), "a");
    auto stats = watcher_->stats();
    EXPECT_EQ(stats.pods.errors, 2u);
    EXPECT_NE(stats.pods.last_error.find("HTTP 403"), std::string::npos) << stats.pods.last_error;
    EXPECT_NE(stats.pods.last_error.find("forbidden"), std::string::npos) << stats.pods.last_error;
    EXPECT_EQ(stats.pods.lists, 1u);
}

TEST_F(KubeWatcherTest, ServerErrorsThenRecovery) {
    start_fake();
    start_watcher();
    wait_synced();
    kube_->control({{"op", "fail_next"}, {"status", 500}, {"count", 3}, {"verb", "watch"}, {"resource", "pods"}});
    kube_->control({{"op", "end_watches"}, {"resource", "pods"}});
    kube_->add_pod("bare_pod", {{"name", "y"}, {"ip", "10.244.13.1"}});
    ASSERT_TRUE(maps_to("10.244.13.1", "y"));
    auto stats = watcher_->stats();
    EXPECT_EQ(stats.pods.errors, 3u) << stats.pods.last_error;
    EXPECT_NE(stats.pods.last_error.find("HTTP 500"), std::string::npos) << stats.pods.last_error;
    EXPECT_EQ(stats.pods.relists, 0u);

    // A garbage 200 list, a dropped list connection and an ERROR 500 event: all recovered from.
    kube_->control({{"op", "fail_next"}, {"status", "garbage"}, {"verb", "list"}, {"resource", "services"}});
    kube_->control({{"op", "fail_next"}, {"status", "drop"}, {"verb", "list"}, {"resource", "services"}});
    kube_->control({{"op", "expire_resource_versions"}, {"resource", "services"}});
    kube_->add_service("service", {{"name", "s"}, {"cluster_ips", {"10.96.13.1"}}});
    ASSERT_TRUE(maps_to("10.96.13.1", "svc/s"));
    EXPECT_GE(watcher_->stats().services.errors, 2u);
    EXPECT_GE(watcher_->stats().services.relists, 1u);

    kube_->control({{"op", "send_error"}, {"code", 500}, {"reason", "InternalError"}, {"resource", "pods"}});
    ASSERT_TRUE(eventually([&] { return watcher_->stats().pods.errors >= 4; }));
    EXPECT_NE(watcher_->stats().pods.last_error.find("ERROR event, code 500"), std::string::npos)
        << watcher_->stats().pods.last_error;
    kube_->add_pod("bare_pod", {{"name", "z"}, {"ip", "10.244.13.2"}});
    ASSERT_TRUE(maps_to("10.244.13.2", "z"));
}

TEST_F(KubeWatcherTest, NotSyncedWhileListFails) {
    start_fake();
    kube_->control({{"op", "fail_next"}, {"status", 500}, {"count", 1000}, {"resource", "services"}});
    start_watcher();
    ASSERT_TRUE(eventually([&] { return watcher_->stats().services.errors >= 3; }));
    EXPECT_TRUE(watcher_->stats().pods.synced);
    EXPECT_FALSE(watcher_->synced());
    kube_->control({{"op", "clear_failures"}});
    ASSERT_TRUE(eventually([&] { return watcher_->synced(); })) << watcher_->stats().last_error;
}

TEST_F(KubeWatcherTest, StopIsPromptWhileBackingOff) {
    start_fake();
    kube_->control({{"op", "fail_next"}, {"status", 503}, {"count", 1000}});
    auto options = fast_options();
    options.initial_backoff = seconds(20);
    options.max_backoff = seconds(30);
    start_watcher(options);
    ASSERT_TRUE(eventually([&] { return watcher_->stats().pods.errors >= 1 && watcher_->stats().services.errors >= 1; }));
    std::this_thread::sleep_for(milliseconds(100));  // well inside the 20 s backoff
    auto t0 = Clock::now();
    watcher_->stop();
    EXPECT_LT(Clock::now() - t0, seconds(2));
    EXPECT_EQ(watcher_->stats().pods.errors, 1u);
    EXPECT_NE(watcher_->stats().last_error.find("HTTP 503"), std::string::npos) << watcher_->stats().last_error;
}

TEST_F(KubeWatcherTest, StopIsPromptDuringHangingRequestAndOpenWatch) {
    start_fake();
    kube_->control({{"op", "fail_next"}, {"status", "hang"}, {"resource", "pods"}, {"verb", "list"}});
    start_watcher();
    ASSERT_TRUE(eventually([&] { return watcher_->stats().services.synced; }));
    ASSERT_TRUE(kube_->control({{"op", "wait_for_watches"}, {"resource", "services"}}).get<bool>());
    EXPECT_FALSE(watcher_->stats().pods.synced);  // its list hangs
    auto t0 = Clock::now();
    watcher_->stop();
    EXPECT_LT(Clock::now() - t0, seconds(2));
    // Restartable.
    kube_->control({{"op", "release_hangs"}});
    watcher_->start();
    ASSERT_TRUE(eventually([&] { return watcher_->synced(); })) << watcher_->stats().last_error;
}

TEST_F(KubeWatcherTest, StopIsPromptWhenServerUnreachable) {
    start_fake();
    std::string url = kube_->url();
    kube_.reset();  // nothing listens there any more
    state_ = std::make_shared<ClusterState>();
    auto options = fast_options();
    options.initial_backoff = seconds(10);
    watcher_ = std::make_unique<KubeWatcher>(KubeConfig{url, "", ""}, state_, options);
    watcher_->start();
    ASSERT_TRUE(eventually([&] { return watcher_->stats().errors() >= 2; }));
    EXPECT_FALSE(watcher_->synced());
    EXPECT_NE(watcher_->stats().last_error.find("list"), std::string::npos) << watcher_->stats().last_error;
    auto t0 = Clock::now();
    watcher_->stop();
    EXPECT_LT(Clock::now() - t0, seconds(2));
}

// ---- HTTPS ------------------------------------------------------------------------------

namespace {
// A self-signed certificate for 127.0.0.1 made with the openssl CLI; false when unavailable.
bool make_cert(const TempDir& dir, const std::string& name) {
    std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
                      "-addext subjectAltName=IP:127.0.0.1 -keyout " + dir.path() + "/" + name + ".key -out " +
                      dir.path() + "/" + name + ".crt >/dev/null 2>&1";
    return std::system(cmd.c_str()) == 0;
}
}  // namespace

TEST_F(KubeWatcherTest, HttpsWithCaFile) {
    if (!make_cert(dir_, "server") || !make_cert(dir_, "other")) GTEST_SKIP() << "no openssl CLI";
    start_fake({"--seed", "demo", "--tls-cert", dir_.path() + "/server.crt", "--tls-key", dir_.path() + "/server.key"});
    ASSERT_EQ(kube_->url().rfind("https://", 0), 0u) << kube_->url();

    // Right CA: works.
    KubeConfig config{kube_->url(), token_file_, dir_.path() + "/server.crt"};
    std::string err;
    ASSERT_TRUE(config.validate(&err)) << err;
    state_ = std::make_shared<ClusterState>();
    watcher_ = std::make_unique<KubeWatcher>(config, state_, fast_options());
    watcher_->start();
    ASSERT_TRUE(eventually([&] { return watcher_->synced(); })) << watcher_->stats().last_error;
    EXPECT_EQ(state_->pod_count(), 8u);
    kube_->add_pod("bare_pod", {{"name", "tls"}, {"ip", "10.244.14.1"}});
    ASSERT_TRUE(maps_to("10.244.14.1", "tls"));
    watcher_->stop();

    // Wrong CA: refused, with the TLS error in the log line.
    auto wrong = std::make_shared<ClusterState>();
    KubeWatcher bad(KubeConfig{kube_->url(), token_file_, dir_.path() + "/other.crt"}, wrong, fast_options());
    bad.start();
    ASSERT_TRUE(eventually([&] { return bad.stats().errors() >= 2; }));
    EXPECT_FALSE(bad.synced());
    EXPECT_EQ(wrong->pod_count(), 0u);
    std::string last = bad.stats().last_error;
    EXPECT_TRUE(last.find("SSL") != std::string::npos || last.find("certificate") != std::string::npos) << last;
    bad.stop();

    // insecure_skip_verify: works without a CA.
    auto insecure = std::make_shared<ClusterState>();
    KubeConfig skip{kube_->url(), token_file_, ""};
    skip.insecure_skip_verify = true;
    KubeWatcher ok(skip, insecure, fast_options());
    ok.start();
    ASSERT_TRUE(eventually([&] { return ok.synced(); })) << ok.stats().last_error;
    EXPECT_EQ(insecure->pod_count(), 9u);
    ok.stop();
}
