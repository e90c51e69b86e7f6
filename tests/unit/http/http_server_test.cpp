// HTTP server tests on loopback: /metrics, /healthz, /readyz, the /incidents stream with several
// followers, a stuck follower, dropped notices, stream_client end to end, bind errors, IPv6,
// credentials and TLS. Timing is never asserted (that is bench/'s job): waits are watchdogs,
// generous enough for an ASan build on a loaded 2-core host, that end a test which would
// otherwise hang.
#include "http_server.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <gnutls/gnutls.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "metrics.h"
#include "output.h"
#include "http_test_support.h"
#include "stream_client.h"

using namespace rstwatch;
using namespace rstwatch::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr int64_t kSec = 1'000'000'000;
constexpr int64_t kMs = 1'000'000;
constexpr int64_t kWall = 1'795'592'872LL * kSec;  // 2026-11-25T07:47:52Z
constexpr int64_t kOffset = kWall - 5'000 * kSec;

StreamedIncident sample(uint32_t n, std::string comm = "nginx") {
    StreamedIncident s;
    s.incident.ts_ns = 5'000 * static_cast<uint64_t>(kSec) + 123 * kMs;
    s.incident.cause = Cause::idle_close_race;
    s.incident.observer = Observer::client;
    s.incident.client = {"10.244.1.5", 43210};
    s.incident.server = {"10.244.2.7", 8080};
    s.incident.pid = 4242;
    s.incident.comm = std::move(comm);
    s.incident.idle_before_write_ms = 2000.5;
    s.incident.write_to_reset_ms = 6.3;
    s.incident.state = "CLOSE_WAIT";
    s.incident.requests = n;  // sequence number
    s.incident.netns = 4026531840u;
    s.client = {"shop", "web-7d9f-abcde", "web"};
    s.server = {"shop", "api-0", "api"};
    return s;
}

// Prometheus text -> {"name{labels}": value}; also checks every line is well-formed.
std::map<std::string, double> parse_exposition(const std::string& text) {
    std::map<std::string, double> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        if (line.empty() || line[0] == '#') continue;
        const size_t space = line.rfind(' ');
        EXPECT_NE(space, std::string::npos) << line;
        if (space == std::string::npos) continue;
        out[line.substr(0, space)] = std::stod(line.substr(space + 1));
    }
    return out;
}

// A follower on a raw socket with a tiny receive buffer that reads only when told to.
class RawFollower {
public:
    explicit RawFollower(uint16_t port, const std::string& path = "/incidents") {
        fd_ = socket(AF_INET, SOCK_STREAM, 0);
        int small = 1;  // the kernel rounds up to its minimum (~2 KiB)
        setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
        const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        if (connected_)
            connected_ = send(fd_, request.data(), request.size(), 0) == (ssize_t)request.size();
    }
    ~RawFollower() {
        if (fd_ >= 0) close(fd_);
    }
    bool connected() const { return connected_; }

    // Reads until `done(lines)` or the timeout / EOF; returns the decoded body's lines.
    template <typename Done>
    std::vector<std::string> read_lines(Done done, std::chrono::milliseconds timeout = 60000ms) {
        // Reading now: a normal buffer, else the tiny window makes the sender crawl on
        // zero-window probes.
        int normal = 1 << 20;
        setsockopt(fd_, SOL_SOCKET, SO_RCVBUF, &normal, sizeof normal);
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (!done(lines_) && std::chrono::steady_clock::now() < deadline) {
            pollfd p{fd_, POLLIN, 0};
            if (poll(&p, 1, 100) <= 0) continue;
            char buf[65536];
            const ssize_t n = recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) {
                eof_ = true;
                break;
            }
            raw_.append(buf, static_cast<size_t>(n));
            decode();
        }
        return lines_;
    }
    const std::string& headers() const { return headers_; }
    bool eof() const { return eof_; }
    bool saw_last_chunk() const { return last_chunk_; }

private:
    void decode() {
        if (headers_.empty()) {
            const size_t end = raw_.find("\r\n\r\n");
            if (end == std::string::npos) return;
            headers_ = raw_.substr(0, end + 4);
            raw_.erase(0, end + 4);
        }
        for (;;) {
            const size_t crlf = raw_.find("\r\n");
            if (crlf == std::string::npos) return;
            const size_t size = std::stoul(raw_.substr(0, crlf), nullptr, 16);
            if (raw_.size() < crlf + 2 + size + 2) return;
            if (size == 0) last_chunk_ = true;
            body_.append(raw_, crlf + 2, size);
            raw_.erase(0, crlf + 2 + size + 2);
            for (size_t nl; (nl = body_.find('\n')) != std::string::npos;) {
                lines_.push_back(body_.substr(0, nl));
                body_.erase(0, nl + 1);
            }
        }
    }

    int fd_ = -1;
    bool connected_ = false;
    bool eof_ = false;
    bool last_chunk_ = false;
    std::string raw_, headers_, body_;
    std::vector<std::string> lines_;
};

}  // namespace

TEST(HttpServer, MetricsHealthAndReadiness) {
    MetricsOptions mo;
    mo.version = "0.1.0";
    mo.write_hook = "fexit";
    Metrics metrics(mo);
    metrics.count_incident({{"shop", "web-1", "web"}, {"shop", "api-0", "api"}, 8080},
                           Cause::idle_close_race, Observer::client, 3.5);

    std::mutex reason_mutex;
    std::string reason = "waiting for the kubernetes pod list";
    auto options = loopback_options();
    options.collect = [&] { return metrics.collect(); };
    options.readiness = [&] {
        std::lock_guard lock(reason_mutex);
        return reason;
    };
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    ASSERT_NE(server.port(), 0);

    auto scrape = http_get(base_url(server) + "/metrics");
    ASSERT_EQ(scrape.status, 200) << scrape.error;
    EXPECT_EQ(scrape.content_type, "text/plain; version=0.0.4; charset=utf-8");
    EXPECT_EQ(scrape.body, metrics.exposition());
    auto samples = parse_exposition(scrape.body);
    EXPECT_EQ(samples.at("rstwatch_build_info{version=\"0.1.0\",write_hook=\"fexit\"}"), 1);
    EXPECT_EQ(samples.at("rstwatch_incidents_total{cause=\"idle_close_race\",observer=\"client\","
                         "client_namespace=\"shop\",client_pod=\"web-1\",client_workload=\"web\","
                         "server_namespace=\"shop\",server_pod=\"api-0\",server_workload=\"api\","
                         "server_port=\"8080\"}"),
              1);
    EXPECT_EQ(samples.at("rstwatch_idle_before_failure_seconds_bucket{client_namespace=\"shop\","
                         "client_pod=\"web-1\",client_workload=\"web\",server_namespace=\"shop\","
                         "server_pod=\"api-0\",server_workload=\"api\",server_port=\"8080\","
                         "le=\"5\"}"),
              1);
    EXPECT_EQ(samples.at("rstwatch_records_lost_total"), 0);

    auto health = http_get(base_url(server) + "/healthz");
    EXPECT_EQ(health.status, 200);
    EXPECT_EQ(health.body, "ok\n");

    auto not_ready = http_get(base_url(server) + "/readyz");
    EXPECT_EQ(not_ready.status, 503);
    EXPECT_EQ(not_ready.body, "waiting for the kubernetes pod list\n");
    {
        std::lock_guard lock(reason_mutex);
        reason.clear();
    }
    auto ready = http_get(base_url(server) + "/readyz");
    EXPECT_EQ(ready.status, 200);
    EXPECT_EQ(ready.body, "ready\n");

    EXPECT_EQ(http_get(base_url(server) + "/nothing").status, 404);
    EXPECT_EQ(http_get(base_url(server) + "/metricsx").status, 404);
    EXPECT_EQ(http_get(base_url(server) + "/metrics/").status, 404);
    auto post = http_get(base_url(server) + "/metrics", "POST");
    EXPECT_EQ(post.status, 405) << post.error;
    EXPECT_EQ(http_get(base_url(server) + "/incidents", "DELETE").status, 405);
    EXPECT_EQ(server.follower_count(), 0u);
}

TEST(HttpServer, DiagnoseGetsTheQuery) {
    std::mutex mutex;
    std::vector<std::string> queries;
    auto options = loopback_options();
    options.diagnose = [&](const std::string& query) {
        std::lock_guard lock(mutex);
        queries.push_back(query);
        return std::string(R"({"level":"x"})");
    };
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    auto r = http_get(base_url(server) + "/diagnose?level=pod");
    EXPECT_EQ(r.status, 200) << r.error;
    EXPECT_EQ(r.content_type, "application/json");
    EXPECT_EQ(r.body, "{\"level\":\"x\"}\n");
    EXPECT_EQ(http_get(base_url(server) + "/diagnose").status, 200);
    EXPECT_EQ(http_get(base_url(server) + "/diagnose?level=work%6Coad&x").status, 200);
    std::lock_guard lock(mutex);
    EXPECT_EQ(queries, (std::vector<std::string>{"level=pod", "", "level=workload&x"}));
}

TEST(HttpServer, StreamsToTwoFollowersInOrder) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    Follower a(base_url(server) + "/incidents");
    Follower b(base_url(server));  // "/incidents" added by the client
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 2; }));

    for (uint32_t i = 0; i < 50; ++i) server.publish(sample(i), kOffset);
    ASSERT_TRUE(wait_until([&] { return a.count() == 50 && b.count() == 50; }));
    for (auto* f : {&a, &b}) {
        auto got = f->incidents();
        for (uint32_t i = 0; i < 50; ++i) EXPECT_EQ(got[i].incident.requests, i);
        const auto& first = got.front();
        EXPECT_EQ(first.incident.ts_ns, static_cast<uint64_t>(kWall + 123 * kMs));
        EXPECT_EQ(first.incident.cause, Cause::idle_close_race);
        EXPECT_EQ(first.incident.client, (Endpoint{"10.244.1.5", 43210}));
        EXPECT_EQ(first.incident.comm, "nginx");
        EXPECT_EQ(first.client, (Identity{"shop", "web-7d9f-abcde", "web"}));
        EXPECT_EQ(first.server, (Identity{"shop", "api-0", "api"}));
        EXPECT_EQ(f->dropped(), 0u);
    }
    auto result = a.stop();
    EXPECT_EQ(result.end, StreamResult::End::stopped);
    EXPECT_EQ(result.error, "");
    EXPECT_EQ(result.incidents, 50u);
    EXPECT_EQ(result.malformed, 0u);
    EXPECT_EQ(server.dropped_lines_total(), 0u);
}

TEST(HttpServer, StreamWireFormat) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    RawFollower raw(server.port());
    ASSERT_TRUE(raw.connected());
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 1; }));
    server.publish(sample(7), kOffset);
    auto lines = raw.read_lines([](const auto& l) { return !l.empty(); });
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_NE(raw.headers().find("HTTP/1.1 200 OK\r\n"), std::string::npos);
    EXPECT_NE(raw.headers().find("Content-Type: application/x-ndjson\r\n"), std::string::npos);
    EXPECT_NE(raw.headers().find("Transfer-Encoding: chunked\r\n"), std::string::npos);
    auto j = json::parse(lines[0]);
    EXPECT_EQ(j["ts"], "2026-11-25T07:47:52.123Z");
    EXPECT_EQ(j["client"], json({{"ip", "10.244.1.5"},
                                 {"port", 43210},
                                 {"namespace", "shop"},
                                 {"pod", "web-7d9f-abcde"},
                                 {"workload", "web"}}));
    EXPECT_EQ(j["server"]["pod"], "api-0");
    EXPECT_EQ(j["requests"], 7);

    // stop() ends the chunked body properly.
    server.stop();
    raw.read_lines([&](const auto&) { return raw.saw_last_chunk(); });
    EXPECT_TRUE(raw.saw_last_chunk());
}

TEST(HttpServer, StuckFollowerBlocksNeitherPublishNorOthersAndGetsDroppedNotice) {
    // Behaviour, not speed (speed is bench/'s job): publish() completes while a follower never
    // reads, the good follower misses nothing without a notice, the stuck one gets its gap
    // announced in order. The write timeout is set far beyond any watchdog here, so that a slow
    // host (an ASan build on a loaded EPYC took 11-17 s for this burst) cannot turn "stuck" into
    // "cut by the write timeout", which FollowerThatNeverReadsIsDisconnectedAfterWriteTimeout
    // covers on its own.
    auto options = loopback_options();
    options.follower_queue_lines = 256;
    options.write_timeout = 30min;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;

    RawFollower stuck(server.port());  // connects, asks, never reads (for now)
    ASSERT_TRUE(stuck.connected());
    Follower good(base_url(server));
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 2; }, 60000ms));

    // ~8 MB: far beyond the stuck socket's buffers and the queue. Published on its own thread
    // under a watchdog: if publish() ever waited for the stuck follower it would never finish.
    constexpr uint32_t kBurst = 20000;
    const std::string pad(400, 'x');
    std::atomic<bool> published{false};
    std::thread publisher([&] {
        for (uint32_t i = 0; i < kBurst; ++i) server.publish(sample(i, pad), kOffset);
        published = true;
    });
    const bool publish_finished = wait_until([&] { return published.load(); }, 300000ms);
    if (!publish_finished) {
        // Unblock the publisher before failing so the test ends instead of hanging.
        stuck.read_lines([](const std::vector<std::string>&) { return false; }, 100ms);
        server.stop();
    }
    publisher.join();
    ASSERT_TRUE(publish_finished) << "publish() blocked on a follower that does not read";
    EXPECT_GT(server.dropped_lines_total(), 0u);
    EXPECT_EQ(server.follower_count(), 2u) << "the stuck follower was cut";

    // The good follower drains the burst (what it missed is announced), then still gets new
    // incidents promptly while the other follower is stuck.
    ASSERT_TRUE(wait_until([&] { return good.count() + good.dropped() == kBurst; }, 300000ms))
        << good.count() << " + " << good.dropped();
    server.publish(sample(kBurst, "final"), kOffset);
    ASSERT_TRUE(wait_until([&] { return good.last_comm() == "final"; }, 60000ms));
    EXPECT_EQ(good.count() + good.dropped(), kBurst + 1);

    // The stuck follower catches up: where its gap is it gets a {"dropped":N} notice, and the
    // lines it received plus the announced drops add up to everything published ("final" may
    // itself have been dropped: its queue was still full then).
    // Read incrementally (a full re-parse per read is quadratic and crawls under ASan). Each
    // notice must sit exactly at its gap: the next line received is the one after the announced
    // ones, so nothing is lost without a notice and order is kept.
    struct Tally {
        uint64_t received = 0, announced = 0, notices = 0, misplaced = 0;
        int64_t previous = -1;     // last sequence number received
        uint64_t pending = 0;      // announced since then
        size_t seen = 0;           // lines tallied so far
        bool in_order = true;
        void add(const std::vector<std::string>& lines) {
            for (; seen < lines.size(); ++seen) {
                const auto& line = lines[seen];
                if (line.empty()) continue;  // heartbeat
                auto j = json::parse(line);
                if (j.contains("dropped")) {
                    ++notices;
                    const auto n = j["dropped"].get<uint64_t>();
                    announced += n;
                    pending += n;
                    continue;
                }
                const auto seq = j["requests"].get<int64_t>();
                in_order = in_order && seq > previous;
                if (seq != previous + 1 + static_cast<int64_t>(pending)) ++misplaced;
                previous = seq;
                pending = 0;
                ++received;
            }
        }
    } t;
    auto lines = stuck.read_lines(
        [&](const std::vector<std::string>& l) {
            t.add(l);
            return t.received + t.announced == kBurst + 1;
        },
        300000ms);
    t.add(lines);
    EXPECT_EQ(t.received + t.announced, kBurst + 1)
        << lines.size() << " lines, received " << t.received << ", announced " << t.announced
        << " in " << t.notices << " notices, followers " << server.follower_count() << ", eof "
        << stuck.eof();
    EXPECT_GE(t.notices, 1u);
    EXPECT_GT(t.announced, 0u);
    EXPECT_GT(t.received, 0u);
    EXPECT_TRUE(t.in_order);
    EXPECT_EQ(t.misplaced, 0u) << "a gap without its notice";
    EXPECT_EQ(t.previous + 1 + static_cast<int64_t>(t.pending), int64_t{kBurst} + 1);
    EXPECT_EQ(server.dropped_lines_total(), t.announced + good.dropped());
}

TEST(HttpServer, FollowerThatNeverReadsIsDisconnectedAfterWriteTimeout) {
    auto options = loopback_options();
    options.follower_queue_lines = 16;
    options.write_timeout = 500ms;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    RawFollower stuck(server.port());
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 1; }));
    const std::string pad(4000, 'x');
    for (uint32_t i = 0; i < 2000; ++i) server.publish(sample(i, pad), kOffset);
    EXPECT_TRUE(wait_until([&] { return server.follower_count() == 0; }, 120000ms));
    // What it did get ends without the end chunk: the stream was cut, not finished.
    stuck.read_lines([&](const auto&) { return stuck.eof(); }, 120000ms);
    EXPECT_TRUE(stuck.eof());
    EXPECT_FALSE(stuck.saw_last_chunk());
}

TEST(HttpServer, StopEndsStreamsAndDoesNotWaitForAStuckFollower) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    RawFollower stuck(server.port());
    Follower good(base_url(server));
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 2; }));
    const std::string pad(4000, 'x');
    for (uint32_t i = 0; i < 2000; ++i) server.publish(sample(i, pad), kOffset);
    // The good follower drains; the stuck one's worker is blocked in a write.
    ASSERT_TRUE(wait_until([&] { return good.count() + good.dropped() == 2000; }, 120000ms));

    // stop() does not wait for the stuck client (bench/ measures how long it takes; here a
    // watchdog only ends the test if it never returns).
    std::atomic<bool> stopped{false};
    std::thread stopper([&] {
        server.stop();
        stopped = true;
    });
    const bool returned = wait_until([&] { return stopped.load(); }, 120000ms);
    if (!returned) stuck.read_lines([](const std::vector<std::string>&) { return false; }, 100ms);
    stopper.join();
    ASSERT_TRUE(returned) << "stop() waited for a follower that does not read";
    EXPECT_EQ(server.follower_count(), 0u);
    ASSERT_TRUE(wait_until([&] { return good.finished(); }));
    EXPECT_EQ(good.result().end, StreamResult::End::server_closed) << good.result().error;
    EXPECT_NE(good.result().error.find("closed the stream"), std::string::npos);
    // The stuck follower's connection was closed: reading it now ends (no end chunk promised).
    stuck.read_lines([&](const auto&) { return stuck.eof(); }, 120000ms);
    EXPECT_TRUE(stuck.eof());
}

TEST(HttpServer, HeartbeatsKeepAnIdleStreamAlive) {
    auto options = loopback_options();
    options.heartbeat = 50ms;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    Follower f(base_url(server), /*idle_timeout=*/2s);
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 1; }));
    std::this_thread::sleep_for(3500ms);
    EXPECT_FALSE(f.finished()) << f.result().error;
    server.publish(sample(1), kOffset);
    ASSERT_TRUE(wait_until([&] { return f.count() == 1; }));
    auto result = f.stop();
    EXPECT_EQ(result.end, StreamResult::End::stopped);
    EXPECT_EQ(result.malformed, 0u);
}

TEST(StreamClient, SilentAgentTimesOut) {
    auto options = loopback_options();
    options.heartbeat = 60s;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    std::atomic<bool> stop{false};
    auto result = follow_incidents({.url = base_url(server), .auth = {}, .idle_timeout = 1s}, stop, {}, {});
    EXPECT_EQ(result.end, StreamResult::End::error);
    EXPECT_NE(result.error.find("no data from the agent for 1 s"), std::string::npos)
        << result.error;
}

TEST(HttpServer, MalformedLinesAreCountedAndSkipped) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    Follower f(base_url(server));
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 1; }));
    server.publish_line("not json");
    server.publish_line(R"({"x":1})");
    server.publish_line(R"({"dropped":"many"})");
    server.publish_line(R"({"dropped":3})");
    server.publish(sample(1), kOffset);
    ASSERT_TRUE(wait_until([&] { return f.count() == 1; }));
    auto result = f.stop();
    EXPECT_EQ(result.malformed, 3u);
    EXPECT_EQ(result.dropped, 3u);
    EXPECT_EQ(result.incidents, 1u);
}

TEST(HttpServer, TooManyFollowersGet503) {
    auto options = loopback_options();
    options.max_followers = 1;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    Follower first(base_url(server));
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 1; }));
    std::atomic<bool> stop{false};
    auto result = follow_incidents({.url = base_url(server), .auth = {}}, stop, {}, {});
    EXPECT_EQ(result.end, StreamResult::End::error);
    EXPECT_NE(result.error.find("HTTP 503"), std::string::npos) << result.error;
    EXPECT_NE(result.error.find("too many followers"), std::string::npos) << result.error;
    // Scrapes still work.
    EXPECT_EQ(http_get(base_url(server) + "/healthz").status, 200);
}

TEST(StreamClient, ConnectionRefused) {
    // A port nobody listens on: bind, read the port, close.
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    const int port = ntohs(addr.sin_port);
    close(fd);

    std::atomic<bool> stop{false};
    auto result = follow_incidents({.url = "127.0.0.1:" + std::to_string(port), .auth = {}}, stop, {}, {});
    EXPECT_EQ(result.end, StreamResult::End::error);
    EXPECT_NE(
        result.error.find("cannot follow http://127.0.0.1:" + std::to_string(port) + "/incidents"),
        std::string::npos)
        << result.error;
    EXPECT_NE(result.error.find("onnect"), std::string::npos) << result.error;
    EXPECT_EQ(result.error.find('\n'), std::string::npos);
}

TEST(StreamClient, HttpStatusNot200) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    std::atomic<bool> stop{false};
    auto result = follow_incidents({.url = base_url(server) + "/nothing", .auth = {}}, stop, {}, {});
    EXPECT_EQ(result.end, StreamResult::End::error);
    EXPECT_NE(result.error.find("HTTP 404"), std::string::npos) << result.error;
}

TEST(StreamClient, JsonRoundTripWithPodFields) {
    auto s = sample(3);
    s.server = {"", "", "svc/api"};
    auto j = streamed_incident_to_json(s, kOffset);
    EXPECT_EQ(j["server"]["workload"], "svc/api");
    EXPECT_EQ(j["server"]["pod"], "");
    auto back = streamed_incident_from_json(j, kOffset);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->client, s.client);
    EXPECT_EQ(back->server, s.server);
    EXPECT_EQ(back->incident.ts_ns, s.incident.ts_ns);
    // Without pod fields (plain incident_to_json): empty identities.
    auto plain = streamed_incident_from_json(incident_to_json(s.incident, kOffset), kOffset);
    ASSERT_TRUE(plain);
    EXPECT_EQ(plain->client, Identity{});
    j["client"]["pod"] = 5;
    EXPECT_FALSE(streamed_incident_from_json(j, kOffset));
}

TEST(HttpServer, BindErrors) {
    // A port in use.
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(listen(fd, 1), 0);
    socklen_t len = sizeof addr;
    getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    const std::string in_use = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

    auto options = loopback_options();
    options.listen = in_use;
    HttpServer busy(options);
    std::string error;
    EXPECT_FALSE(busy.start(&error));
    EXPECT_EQ(error, "cannot listen on " + in_use + ": address already in use");
    close(fd);

    for (const char* bad : {"localhost:9090", "1.2.3:80", "127.0.0.1:70000", "127.0.0.1",
                            "127.0.0.1:http", "[::1:80"}) {
        options.listen = bad;
        HttpServer server(options);
        error.clear();
        EXPECT_FALSE(server.start(&error)) << bad;
        EXPECT_EQ(error.rfind(std::string("bad listen address \"") + bad + "\": ", 0), 0u) << error;
        EXPECT_EQ(error.find('\n'), std::string::npos);
    }

    // The same over IPv6.
    auto v6_options = loopback_options();
    v6_options.listen = "[::1]:0";
    HttpServer first(v6_options);
    ASSERT_TRUE(first.start(&error)) << error;
    v6_options.listen = "[::1]:" + std::to_string(first.port());
    HttpServer second(v6_options);
    error.clear();
    EXPECT_FALSE(second.start(&error));
    EXPECT_EQ(error, "cannot listen on " + v6_options.listen + ": address already in use");
}

TEST(HttpServer, ListensOnIPv6LoopbackAndOnEveryAddress) {
    auto options = loopback_options();
    options.listen = "[::1]:0";
    HttpServer loopback(options);
    std::string error;
    ASSERT_TRUE(loopback.start(&error)) << error;
    ASSERT_NE(loopback.port(), 0);
    const std::string v6_url = "http://[::1]:" + std::to_string(loopback.port());
    auto health = http_get(v6_url + "/healthz");
    EXPECT_EQ(health.status, 200) << health.error;
    EXPECT_EQ(health.body, "ok\n");
    EXPECT_NE(http_get("http://127.0.0.1:" + std::to_string(loopback.port()) + "/healthz").status, 200)
        << "[::1] must not take IPv4";

    // The stream over IPv6 too.
    Follower f(v6_url);
    ASSERT_TRUE(wait_until([&] { return loopback.follower_count() == 1; }));
    loopback.publish(sample(3), kOffset);
    ASSERT_TRUE(wait_until([&] { return f.count() == 1; }));
    EXPECT_EQ(f.incidents()[0].incident.requests, 3u);

    // [::]: every address, IPv4 included.
    options.listen = "[::]:0";
    HttpServer any(options);
    ASSERT_TRUE(any.start(&error)) << error;
    EXPECT_EQ(http_get("http://[::1]:" + std::to_string(any.port()) + "/healthz").status, 200);
    EXPECT_EQ(http_get("http://127.0.0.1:" + std::to_string(any.port()) + "/healthz").status, 200);
}

TEST(HttpServer, ScrapesAreServedWhileEveryFollowerIsStuck) {
    auto options = loopback_options();
    options.max_followers = 4;
    options.follower_queue_lines = 16;
    options.write_timeout = 30min;  // stuck for the whole test, never cut
    options.collect = [] { return std::vector<prometheus::MetricFamily>{}; };
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    std::vector<std::unique_ptr<RawFollower>> stuck;
    for (int i = 0; i < 4; ++i) {
        stuck.push_back(std::make_unique<RawFollower>(server.port()));
        ASSERT_TRUE(stuck.back()->connected());
    }
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 4; }));
    // Far beyond their socket buffers: every follower is blocked in a write.
    const std::string pad(4000, 'x');
    for (uint32_t i = 0; i < 2000; ++i) server.publish(sample(i, pad), kOffset);
    ASSERT_GT(server.dropped_lines_total(), 0u);

    // A fifth follower is refused; 32 scrapes and probes at once are all answered.
    std::atomic<bool> never{false};
    StreamClientOptions client;
    client.url = base_url(server);
    auto fifth = follow_incidents(client, never, {}, {});
    EXPECT_NE(fifth.error.find("HTTP 503"), std::string::npos) << fifth.error;
    std::vector<std::thread> scrapers;
    std::atomic<int> answered{0};
    for (int i = 0; i < 32; ++i) {
        scrapers.emplace_back([&, i] {
            auto r = http_get(base_url(server) + (i % 2 ? "/metrics" : "/healthz"));
            if (r.status == 200) ++answered;
        });
    }
    for (auto& t : scrapers) t.join();
    EXPECT_EQ(answered.load(), 32);
    EXPECT_EQ(server.follower_count(), 4u);
}

// ---------------------------------------------------------------- endpoint protection

namespace {

struct AuthResponse {
    long status = 0;
    std::string body;
    std::string headers;
};

size_t append_header_cb(char* data, size_t size, size_t nmemb, void* out) {
    static_cast<std::string*>(out)->append(data, size * nmemb);
    return size * nmemb;
}

// GET with an optional Authorization header value ("" = none); `userpwd` uses curl's basic auth.
AuthResponse http_get_auth(const std::string& url, const std::string& authorization,
                           const std::string& userpwd = "", const std::string& ca_file = "") {
    AuthResponse r;
    CURL* easy = curl_easy_init();
    curl_slist* headers = nullptr;
    if (!authorization.empty()) {
        headers = curl_slist_append(headers, ("Authorization: " + authorization).c_str());
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    }
    if (!userpwd.empty()) {
        curl_easy_setopt(easy, CURLOPT_HTTPAUTH, CURLAUTH_BASIC);
        curl_easy_setopt(easy, CURLOPT_USERPWD, userpwd.c_str());
    }
    if (!ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, ca_file.c_str());
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &append_to_string);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &append_header_cb);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, &r.headers);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(headers);
    curl_easy_cleanup(easy);
    return r;
}

// A file in a private temp directory, removed with the object.
class TempFile {
public:
    explicit TempFile(const std::string& text) {
        char dir[] = "/tmp/rw-auth-XXXXXX";
        dir_ = mkdtemp(dir);
        path_ = dir_ + "/secret";
        write(text);
    }
    ~TempFile() {
        unlink(path_.c_str());
        unlink((path_ + ".tmp").c_str());
        rmdir(dir_.c_str());
    }
    // Atomic replace, as a Kubernetes Secret update.
    void write(const std::string& text) {
        const std::string tmp = path_ + ".tmp";
        FILE* f = std::fopen(tmp.c_str(), "w");
        std::fwrite(text.data(), 1, text.size(), f);
        std::fclose(f);
        std::rename(tmp.c_str(), path_.c_str());
    }
    const std::string& path() const { return path_; }

private:
    std::string dir_;
    std::string path_;
};

HttpServerOptions protected_options(const std::string& token_file, const std::string& basic_file = "") {
    auto o = loopback_options();
    o.auth.token_file = token_file;
    o.auth.basic_auth_file = basic_file;
    o.collect = [] { return std::vector<prometheus::MetricFamily>{}; };
    o.diagnose = [](const std::string&) { return std::string("{}"); };
    return o;
}

}  // namespace

TEST(HttpAuth, ConstantTimeEqual) {
    EXPECT_TRUE(constant_time_equal("", ""));
    EXPECT_TRUE(constant_time_equal("s3cret-token", "s3cret-token"));
    EXPECT_FALSE(constant_time_equal("s3cret-token", "s3cret-tokeN"));
    EXPECT_FALSE(constant_time_equal("s3cret-token", "s3cret-token2"));
    EXPECT_FALSE(constant_time_equal("s3cret", ""));
    EXPECT_FALSE(constant_time_equal("", "x"));
    // A prefix is not a match, whichever side is longer; NUL bytes count.
    EXPECT_FALSE(constant_time_equal(std::string("abc\0", 4), "abc"));
    EXPECT_FALSE(constant_time_equal("abc", std::string("abc\0", 4)));
}

TEST(HttpAuth, LoopbackListen) {
    for (const char* loopback : {"127.0.0.1:9740", "127.1.2.3:0", "[::1]:9740", "[::ffff:127.0.0.1]:1"})
        EXPECT_TRUE(is_loopback_listen(loopback)) << loopback;
    for (const char* open : {"0.0.0.0:9740", ":9740", "[::]:9740", "10.0.0.1:9740", "[fd00::1]:9740",
                             "128.0.0.1:1", "localhost:9740", "garbage"})
        EXPECT_FALSE(is_loopback_listen(open)) << open;
    EXPECT_EQ(listen_address_error("0.0.0.0:9740"), "");
    EXPECT_NE(listen_address_error("localhost:9740"), "");
}

TEST(HttpAuth, BearerTokenProtectsMetricsDiagnoseAndIncidentsNotProbes) {
    TempFile token("  0123456789abcdef-token \n");
    HttpServer server(protected_options(token.path()));
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const std::string base = base_url(server);
    for (const char* path : {"/metrics", "/diagnose", "/incidents"}) {
        auto none = http_get_auth(base + path, "");
        EXPECT_EQ(none.status, 401) << path;
        EXPECT_NE(none.headers.find("WWW-Authenticate: Bearer realm=\"rstwatch\""), std::string::npos)
            << none.headers;
        EXPECT_EQ(http_get_auth(base + path, "Bearer wrong").status, 401) << path;
        EXPECT_EQ(http_get_auth(base + path, "Bearer 0123456789abcdef-toke").status, 401) << path;
        EXPECT_EQ(http_get_auth(base + path, "Bearer 0123456789abcdef-token2").status, 401) << path;
        EXPECT_EQ(http_get_auth(base + path, "Basic MDEyMzQ1Njc4OWFiY2RlZi10b2tlbg==").status, 401) << path;
        EXPECT_EQ(http_get_auth(base + path, "0123456789abcdef-token").status, 401) << path;
    }
    EXPECT_EQ(http_get_auth(base + "/metrics", "Bearer 0123456789abcdef-token").status, 200);
    EXPECT_EQ(http_get_auth(base + "/metrics", "bearer 0123456789abcdef-token").status, 200);  // scheme: any case
    EXPECT_EQ(http_get_auth(base + "/diagnose", "Bearer 0123456789abcdef-token").status, 200);
    // Probes stay open.
    EXPECT_EQ(http_get_auth(base + "/healthz", "").status, 200);
    EXPECT_EQ(http_get_auth(base + "/readyz", "").status, 200);
    EXPECT_EQ(http_get_auth(base + "/healthz", "Bearer wrong").status, 200);
    EXPECT_GE(server.unauthorized_total(), 18u);

    // The stream: stream_client with the token follows; without it, a one-line HTTP 401 error.
    StreamClientOptions client;
    client.url = base;
    client.auth.bearer_token = "0123456789abcdef-token";
    std::atomic<bool> stop{false};
    std::vector<StreamedIncident> got;
    std::thread publisher([&] {
        wait_until([&] { return server.follower_count() == 1; });
        server.publish(sample(1), kOffset);
        wait_until([&] { return !got.empty(); });
        stop = true;
    });
    auto result = follow_incidents(client, stop, [&](const StreamedIncident& s) { got.push_back(s); }, {});
    publisher.join();
    EXPECT_EQ(result.end, StreamResult::End::stopped) << result.error;
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].incident.requests, 1u);

    client.auth.bearer_token = "wrong";
    std::atomic<bool> never{false};
    auto refused = follow_incidents(client, never, {}, {});
    EXPECT_EQ(refused.end, StreamResult::End::error);
    EXPECT_NE(refused.error.find("HTTP 401"), std::string::npos) << refused.error;
    EXPECT_EQ(refused.error.find('\n'), std::string::npos);
}

TEST(HttpAuth, TokenFileRotationAndSeveralTokens) {
    TempFile token("old-token-aaaaaaaa\n");
    HttpServer server(protected_options(token.path()));
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const std::string url = base_url(server) + "/metrics";
    EXPECT_EQ(http_get_auth(url, "Bearer old-token-aaaaaaaa").status, 200);
    token.write("old-token-aaaaaaaa\nnew-token-bbbbbbbb\n");  // rotation: both valid
    EXPECT_TRUE(wait_until([&] { return http_get_auth(url, "Bearer new-token-bbbbbbbb").status == 200; }));
    EXPECT_EQ(http_get_auth(url, "Bearer old-token-aaaaaaaa").status, 200);
    token.write("new-token-bbbbbbbb\n");
    EXPECT_TRUE(wait_until([&] { return http_get_auth(url, "Bearer old-token-aaaaaaaa").status == 401; }));
    // An emptied file keeps the previous credentials (never opens the endpoints).
    token.write("");
    std::this_thread::sleep_for(1100ms);
    EXPECT_EQ(http_get_auth(url, "Bearer new-token-bbbbbbbb").status, 200);
    EXPECT_EQ(http_get_auth(url, "").status, 401);
}

TEST(HttpAuth, BasicAuth) {
    TempFile basic("# prometheus\nprometheus:pa:ss word\n\nalice:wonderland\n");
    HttpServer server(protected_options("", basic.path()));
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const std::string url = base_url(server) + "/metrics";
    auto none = http_get_auth(url, "");
    EXPECT_EQ(none.status, 401);
    EXPECT_NE(none.headers.find("WWW-Authenticate: Basic realm=\"rstwatch\""), std::string::npos);
    EXPECT_EQ(http_get_auth(url, "", "prometheus:pa:ss word").status, 200);  // password may hold ':'
    EXPECT_EQ(http_get_auth(url, "", "alice:wonderland").status, 200);
    EXPECT_EQ(http_get_auth(url, "", "alice:wonderlan").status, 401);
    EXPECT_EQ(http_get_auth(url, "", "bob:wonderland").status, 401);
    EXPECT_EQ(http_get_auth(url, "Basic !!!notbase64").status, 401);
    EXPECT_EQ(http_get_auth(url, "Bearer alice:wonderland").status, 401);  // no token file: no bearer
    EXPECT_EQ(http_get_auth(base_url(server) + "/healthz", "").status, 200);
}

TEST(HttpAuth, BadCredentialFilesFailStart) {
    TempFile empty("\n  \n");
    HttpServer a(protected_options(empty.path()));
    std::string error;
    EXPECT_FALSE(a.start(&error));
    EXPECT_NE(error.find("empty"), std::string::npos) << error;

    TempFile bad("alice\n");
    HttpServer b(protected_options("", bad.path()));
    error.clear();
    EXPECT_FALSE(b.start(&error));
    EXPECT_NE(error.find("line 1: expected user:password"), std::string::npos) << error;

    HttpServer c(protected_options("/nonexistent/rstwatch-token"));
    error.clear();
    EXPECT_FALSE(c.start(&error));
    EXPECT_EQ(error, "cannot read /nonexistent/rstwatch-token: No such file or directory");
}

namespace {

// A directory with self-signed certificates made by the openssl CLI, removed with the object.
class TlsFiles {
public:
    TlsFiles() {
        char dir[] = "/tmp/rw-tls-XXXXXX";
        dir_ = mkdtemp(dir) != nullptr ? dir : "";
        ok_ = !dir_.empty() && make("server") && make("other");
        std::FILE* f = std::fopen(path("garbage.pem").c_str(), "w");
        if (f != nullptr) {
            std::fputs("not a certificate\n", f);
            std::fclose(f);
        }
    }
    ~TlsFiles() { std::system(("rm -rf " + dir_).c_str()); }
    bool ok() const { return ok_; }
    std::string path(const std::string& name) const { return dir_ + "/" + name; }
    std::string cert(const std::string& name = "server") const { return path(name + ".crt"); }
    std::string key(const std::string& name = "server") const { return path(name + ".key"); }

private:
    bool make(const std::string& name) {
        const std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
                                "-addext subjectAltName=IP:127.0.0.1 -keyout " + key(name) + " -out " + cert(name) +
                                " >/dev/null 2>&1";
        return std::system(cmd.c_str()) == 0;
    }
    std::string dir_;
    bool ok_ = false;
};

// A TLS handshake with GnuTLS offering only what `priorities` allows: the negotiated version
// ("TLS1.2"), or "error: ..." with whether the server sent an alert.
std::string tls_handshake(uint16_t port, const char* priorities) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        close(fd);
        return "error: connect";
    }
    gnutls_session_t session = nullptr;
    gnutls_certificate_credentials_t credentials = nullptr;
    gnutls_init(&session, GNUTLS_CLIENT);
    gnutls_certificate_allocate_credentials(&credentials);
    gnutls_credentials_set(session, GNUTLS_CRD_CERTIFICATE, credentials);
    std::string result;
    const char* where = nullptr;
    int rc = gnutls_priority_set_direct(session, priorities, &where);
    if (rc == GNUTLS_E_SUCCESS) {
        gnutls_transport_set_int(session, fd);
        gnutls_handshake_set_timeout(session, 60000);
        do {
            rc = gnutls_handshake(session);
        } while (rc < 0 && gnutls_error_is_fatal(rc) == 0);
    }
    if (rc < 0) {
        result = std::string("error: ") + gnutls_strerror(rc);
        if (rc == GNUTLS_E_FATAL_ALERT_RECEIVED)
            result += std::string(" (") + gnutls_alert_get_name(gnutls_alert_get(session)) + ")";
    } else {
        result = gnutls_protocol_get_name(gnutls_protocol_get_version(session));
        gnutls_bye(session, GNUTLS_SHUT_RDWR);
    }
    gnutls_deinit(session);
    gnutls_certificate_free_credentials(credentials);
    close(fd);
    return result;
}

// Entries of /proc/self/fd and /proc/self/maps naming a memory file (memfd).
std::vector<std::string> memory_files() {
    std::vector<std::string> found;
    if (DIR* d = opendir("/proc/self/fd")) {
        while (dirent* e = readdir(d)) {
            char target[256] = {};
            const std::string link = std::string("/proc/self/fd/") + e->d_name;
            if (readlink(link.c_str(), target, sizeof target - 1) > 0 && std::strstr(target, "memfd:") != nullptr)
                found.push_back(link + " -> " + target);
        }
        closedir(d);
    }
    std::FILE* maps = std::fopen("/proc/self/maps", "r");
    char line[512];
    while (maps != nullptr && std::fgets(line, sizeof line, maps) != nullptr)
        if (std::strstr(line, "memfd:") != nullptr) found.emplace_back(line);
    if (maps != nullptr) std::fclose(maps);
    return found;
}

}  // namespace

TEST(HttpAuth, TlsWithBearerToken) {
    std::string why;
    ASSERT_TRUE(tls_support(&why)) << why;
    TlsFiles files;
    ASSERT_TRUE(files.ok()) << "openssl req failed (scripts/deps.sh --test installs openssl)";
    TempFile token("tls-token-cccccccc\n");
    auto options = protected_options(token.path());
    options.tls_cert_file = files.cert();
    options.tls_key_file = files.key();
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const std::string base = "https://127.0.0.1:" + std::to_string(server.port());
    auto refused = http_get_auth(base + "/metrics", "", "", files.cert());
    EXPECT_EQ(refused.status, 401);
    EXPECT_NE(refused.headers.find("WWW-Authenticate: Bearer realm=\"rstwatch\""), std::string::npos);
    EXPECT_EQ(http_get_auth(base + "/metrics", "Bearer tls-token-cccccccc", "", files.cert()).status, 200);
    EXPECT_EQ(http_get_auth(base + "/healthz", "", "", files.cert()).status, 200);
    // Plain http on the TLS port gets nothing useful.
    EXPECT_NE(http_get_auth("http://127.0.0.1:" + std::to_string(server.port()) + "/healthz", "").status, 200);

    // The stream over TLS, verified against the CA file.
    StreamClientOptions client;
    client.url = base;
    client.auth.bearer_token = "tls-token-cccccccc";
    client.auth.ca_file = files.cert();
    std::atomic<bool> stop{false};
    std::vector<StreamedIncident> got;
    std::thread publisher([&] {
        wait_until([&] { return server.follower_count() == 1; });
        server.publish(sample(9), kOffset);
        wait_until([&] { return !got.empty(); });
        stop = true;
    });
    auto result = follow_incidents(client, stop, [&](const StreamedIncident& s) { got.push_back(s); }, {});
    publisher.join();
    EXPECT_EQ(result.end, StreamResult::End::stopped) << result.error;
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[0].incident.requests, 9u);

    // The key went from its file to GnuTLS in memory: no memory file, nothing mapped from one.
    EXPECT_EQ(memory_files(), std::vector<std::string>{});
    server.stop();
}

TEST(HttpAuth, TlsOneDotTwoAndLaterOnly) {
    TlsFiles files;
    ASSERT_TRUE(files.ok()) << "openssl req failed (scripts/deps.sh --test installs openssl)";
    auto options = loopback_options();
    options.tls_cert_file = files.cert();
    options.tls_key_file = files.key();
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    EXPECT_EQ(tls_handshake(server.port(), "NORMAL:-VERS-ALL:+VERS-TLS1.3"), "TLS1.3");
    EXPECT_EQ(tls_handshake(server.port(), "NORMAL:-VERS-ALL:+VERS-TLS1.2"), "TLS1.2");
    // Older versions: the server ends the handshake. The refusal is the server's: this client
    // does negotiate TLS 1.1 and 1.0 with a server whose priorities allow them (checked once by
    // building this server with "NORMAL:+VERS-TLS1.1:+VERS-TLS1.0"), and the error is the
    // server's answer (closed or an alert), not a local "no protocol to offer".
    for (const char* old : {"NORMAL:-VERS-ALL:+VERS-TLS1.1", "NORMAL:-VERS-ALL:+VERS-TLS1.0"}) {
        const std::string outcome = tls_handshake(server.port(), old);
        EXPECT_TRUE(outcome.find("non-properly terminated") != std::string::npos ||
                    outcome.find("alert") != std::string::npos)
            << old << ": " << outcome;
    }
}

TEST(HttpAuth, TlsFileErrorsNameTheFlagAndFile) {
    TlsFiles files;
    ASSERT_TRUE(files.ok()) << "openssl req failed (scripts/deps.sh --test installs openssl)";
    struct Case {
        std::string cert, key, expected;
    };
    const Case cases[] = {
        {files.cert(), files.key("other"),
         "--tls-key " + files.key("other") + ": the key does not match the certificate of --tls-cert " + files.cert()},
        {files.path("garbage.pem"), files.key(), "--tls-cert " + files.path("garbage.pem") + ": no PEM certificate ("},
        {files.cert(), files.cert(), "--tls-key " + files.cert() + ": no usable PEM private key ("},
        {files.cert(), "/nonexistent/key.pem", "cannot read /nonexistent/key.pem: No such file or directory"},
        {files.cert(), "", "TLS needs both a certificate and a key file"},
    };
    for (const auto& c : cases) {
        auto options = loopback_options();
        options.tls_cert_file = c.cert;
        options.tls_key_file = c.key;
        HttpServer server(options);
        std::string error;
        EXPECT_FALSE(server.start(&error)) << c.expected;
        EXPECT_NE(error.find(c.expected), std::string::npos) << error;
        EXPECT_EQ(error.find('\n'), std::string::npos) << error;
    }
    // A failed start leaves nothing listening: the same port serves right after.
    const int probe = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(probe, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    socklen_t len = sizeof addr;
    getsockname(probe, reinterpret_cast<sockaddr*>(&addr), &len);
    close(probe);
    auto options = loopback_options();
    options.listen = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
    options.tls_cert_file = files.cert();
    options.tls_key_file = files.key("other");
    HttpServer failed(options);
    EXPECT_FALSE(failed.start(nullptr));
    options.tls_cert_file = options.tls_key_file = "";
    HttpServer plain(options);
    std::string error;
    EXPECT_TRUE(plain.start(&error)) << error;
    EXPECT_EQ(memory_files(), std::vector<std::string>{});
}

// How in-pod clients (kubectl rstwatch trace/status) find this node's agent and its CA.
TEST(ClientDefaults, NodeAgentAndCaFromTheEnvironment) {
    ::unsetenv("RSTWATCH_AGENT_URL");
    ::unsetenv("RSTWATCH_CA_FILE");
    EXPECT_EQ(resolve_agent_url("node"), "http://127.0.0.1:9740");
    EXPECT_EQ(ca_file_or_env(std::nullopt), "");
    ::setenv("RSTWATCH_AGENT_URL", "https://127.0.0.1:9740", 1);
    ::setenv("RSTWATCH_CA_FILE", "/etc/rstwatch/tls/ca.crt", 1);
    EXPECT_EQ(resolve_agent_url("node"), "https://127.0.0.1:9740");
    EXPECT_EQ(resolve_agent_url("https://10.0.0.7:9740"), "https://10.0.0.7:9740");  // explicit URL wins
    EXPECT_EQ(ca_file_or_env(std::nullopt), "/etc/rstwatch/tls/ca.crt");
    EXPECT_EQ(ca_file_or_env(std::string("/mine.pem")), "/mine.pem");
    ::setenv("RSTWATCH_AGENT_URL", "", 1);  // set but empty: the default
    EXPECT_EQ(resolve_agent_url("node"), "http://127.0.0.1:9740");
    ::unsetenv("RSTWATCH_AGENT_URL");
    ::unsetenv("RSTWATCH_CA_FILE");
}
