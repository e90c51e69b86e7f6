// GET /incidents?since=&last= on loopback: the history replayed before the live lines (read raw
// and with stream_client), the 400 answers, a replay larger than the follower's queue, and no
// gap and no duplicate between replay and live lines while incidents are published. Waits are
// watchdogs, never timing assertions.
#include <curl/curl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "http_server.h"
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
constexpr int64_t kMonotonicBase = 50'000 * kSec;

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// Incident `n`, `age` before now (the history keeps the line's wall-clock time).
struct Published {
    StreamedIncident incident;
    int64_t offset;
};
Published incident(uint32_t n, std::chrono::milliseconds age) {
    Published p;
    StreamedIncident& s = p.incident;
    s.incident.ts_ns = static_cast<uint64_t>(kMonotonicBase);
    s.incident.cause = Cause::idle_close_race;
    s.incident.observer = Observer::client;
    s.incident.client = {"10.244.1.5", 43210};
    s.incident.server = {"10.244.2.7", 8080};
    s.incident.comm = "nginx";
    s.incident.requests = n;  // sequence number
    s.client = {"shop", "web-7d9f-abcde", "web"};
    s.server = {"shop", "api-0", "api"};
    p.offset = unix_now() - std::chrono::duration_cast<std::chrono::nanoseconds>(age).count() - kMonotonicBase;
    return p;
}

void publish(HttpServer& server, uint32_t n, std::chrono::milliseconds age = 0ms) {
    const Published p = incident(n, age);
    server.publish(p.incident, p.offset);
}

StreamClientOptions follow(const HttpServer& server, std::optional<std::string> since = std::nullopt,
                           std::optional<uint64_t> last = std::nullopt) {
    StreamClientOptions o;
    o.url = base_url(server);
    o.since = std::move(since);
    o.last = last;
    return o;
}

std::vector<uint32_t> range(uint32_t from, uint32_t to) {  // [from, to)
    std::vector<uint32_t> out;
    for (uint32_t i = from; i < to; ++i) out.push_back(i);
    return out;
}

}  // namespace

TEST(IncidentReplay, SinceAndLastReplayTheHistoryThenLiveLines) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    // Incidents 0..9, 10 down to 1 minutes old; nobody follows yet.
    for (uint32_t i = 0; i < 10; ++i) publish(server, i, std::chrono::minutes(10 - i));

    Follower live(follow(server));
    Follower since_5m(follow(server, "5m30s"));
    Follower last_3(follow(server, std::nullopt, 3));
    Follower both(follow(server, "5m30s", 2));
    Follower zero(follow(server, std::nullopt, 0));
    // An RFC 3339 time with an offset: the client encodes its '+'.
    const time_t four_minutes_ago = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now() - 270s);
    char rfc3339[64];
    std::strftime(rfc3339, sizeof rfc3339, "%Y-%m-%dT%H:%M:%S+00:00", std::gmtime(&four_minutes_ago));
    Follower since_time(follow(server, std::string(rfc3339)));
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 6; }));
    ASSERT_TRUE(wait_until([&] { return since_5m.count() == 5 && last_3.count() == 3 && both.count() == 2; }));
    ASSERT_TRUE(wait_until([&] { return since_time.count() == 4; }));

    publish(server, 10);
    publish(server, 11);
    ASSERT_TRUE(wait_until([&] {
        return live.count() == 2 && since_5m.count() == 7 && last_3.count() == 5 && both.count() == 4 &&
               zero.count() == 2 && since_time.count() == 6;
    }));
    EXPECT_EQ(live.sequence(), range(10, 12));
    EXPECT_EQ(since_5m.sequence(), range(5, 12));
    EXPECT_EQ(last_3.sequence(), range(7, 12));
    EXPECT_EQ(both.sequence(), range(8, 12));
    EXPECT_EQ(zero.sequence(), range(10, 12));
    EXPECT_EQ(since_time.sequence(), range(6, 12));
    for (auto* f : {&live, &since_5m, &last_3, &both, &zero, &since_time}) EXPECT_EQ(f->dropped(), 0u);
    EXPECT_EQ(server.dropped_lines_total(), 0u);
}

TEST(IncidentReplay, BadValuesAnswer400NamingTheParameter) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const std::string since_error = "since: expected an RFC 3339 time or a duration like 30m\n";
    const std::string last_error = "last: expected a non-negative integer\n";
    for (const auto& [query, body] : std::vector<std::pair<std::string, std::string>>{
             {"since=abc", since_error},
             {"since=", since_error},
             {"since", since_error},
             {"since=30", since_error},
             {"last=-1", last_error},
             {"last=x", last_error},
             {"last=", last_error},
             {"since=30m&last=1.5", last_error},
         }) {
        const Response r = http_get(base_url(server) + "/incidents?" + query);
        EXPECT_EQ(r.status, 400) << query;
        EXPECT_EQ(r.body, body) << query;
        EXPECT_EQ(r.content_type, "text/plain; charset=utf-8") << query;
    }
    EXPECT_EQ(server.follower_count(), 0u);
}

TEST(IncidentReplay, StreamClientReportsTheAgentsRefusal) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    std::atomic<bool> stop{false};
    StreamResult result = follow_incidents(follow(server, "yesterday"), stop, {}, {});
    EXPECT_EQ(result.end, StreamResult::End::error);
    EXPECT_NE(result.error.find("HTTP 400: since: expected an RFC 3339 time or a duration like 30m"),
              std::string::npos)
        << result.error;
    EXPECT_EQ(result.error.find('\n'), std::string::npos);
}

TEST(IncidentReplay, AReplayLargerThanTheFollowerQueueIsSentWhole) {
    auto options = loopback_options();
    options.follower_queue_lines = 8;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    for (uint32_t i = 0; i < 500; ++i) publish(server, i, 10s);
    Follower f(follow(server, "1h"));
    ASSERT_TRUE(wait_until([&] { return f.count() == 500; }));
    publish(server, 500);
    ASSERT_TRUE(wait_until([&] { return f.count() == 501; }));
    EXPECT_EQ(f.sequence(), range(0, 501));
    EXPECT_EQ(f.dropped(), 0u);
}

TEST(IncidentReplay, NoGapNoDuplicateBetweenReplayAndLiveLines) {
    // Followers join while incidents are published: each must get 0, 1, 2, ... up to the end,
    // every number once, whichever of replay and queue a number came through.
    auto options = loopback_options();
    options.follower_queue_lines = 100000;  // no drop: a gap would be ours
    options.max_followers = 16;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    constexpr uint32_t kTotal = 6000;
    std::atomic<uint32_t> published{0};
    std::thread publisher([&] {
        for (uint32_t i = 0; i < kTotal; ++i) {
            publish(server, i);
            published = i + 1;
            if (i % 50 == 0) std::this_thread::sleep_for(1ms);
        }
    });
    std::vector<std::unique_ptr<Follower>> followers;
    for (int k = 0; k < 12; ++k) {
        const uint32_t target = kTotal * static_cast<uint32_t>(k) / 14;
        wait_until([&] { return published.load() >= target; });
        followers.push_back(std::make_unique<Follower>(follow(server, "1h")));
    }
    publisher.join();
    for (auto& f : followers) {
        ASSERT_TRUE(wait_until([&] { return f->count() >= kTotal || f->finished(); }));
        EXPECT_EQ(f->sequence(), range(0, kTotal));
        EXPECT_EQ(f->dropped(), 0u);
    }
}

TEST(IncidentReplay, WithoutHistoryTheQueryIsAcceptedAndOnlyLiveLinesCome) {
    auto options = loopback_options();
    options.history.max_incidents = 0;
    HttpServer server(options);
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    publish(server, 0);
    Follower f(follow(server, "1h", 10));
    ASSERT_TRUE(wait_until([&] { return server.follower_count() == 1; }));
    publish(server, 1);
    ASSERT_TRUE(wait_until([&] { return f.count() == 1; }));
    EXPECT_EQ(f.sequence(), range(1, 2));
}

TEST(IncidentReplay, TheReplayIsTheLinesAsPublished) {
    HttpServer server(loopback_options());
    std::string error;
    ASSERT_TRUE(server.start(&error)) << error;
    const Published p = incident(7, 2s);
    server.publish(p.incident, p.offset);
    server.publish_line("{\"custom\":1}");  // stamped now
    // Read the raw body: both lines, byte for byte, then stop.
    CURL* easy = curl_easy_init();
    std::string body;
    const std::string url = base_url(server) + "/incidents?last=2";
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, +[](char* data, size_t size, size_t n, void* out) -> size_t {
        auto& text = *static_cast<std::string*>(out);
        text.append(data, size * n);
        // Two lines are in: abort the transfer.
        return std::count(text.begin(), text.end(), '\n') >= 2 ? 0 : size * n;
    });
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, 60L);
    curl_easy_perform(easy);
    curl_easy_cleanup(easy);
    EXPECT_EQ(body, format_streamed_incident_line(p.incident, p.offset) + "\n{\"custom\":1}\n");
    const auto j = json::parse(body.substr(0, body.find('\n')));
    EXPECT_EQ(j["requests"], 7);
    EXPECT_EQ(j["client"]["pod"], "web-7d9f-abcde");
}
