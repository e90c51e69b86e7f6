// The incident history on its own (history.h): its three bounds, what since= and last= select,
// the query's parsing and errors, and the memory 10000 realistic stream lines take (printed, and
// the estimate checked against malloc's own count).
#include "history.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <cstdio>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "output.h"
#include "stream_format.h"

using namespace rstwatch;

namespace {

// Under AddressSanitizer malloc is not glibc's: mallinfo2() does not see the allocations.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kGlibcMalloc = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kGlibcMalloc = false;
#else
constexpr bool kGlibcMalloc = true;
#endif
#else
constexpr bool kGlibcMalloc = true;
#endif

constexpr int64_t kSec = 1'000'000'000;
constexpr int64_t kNow = 1'796'522'400LL * kSec;  // 2026-12-06T02:00:00Z

IncidentHistory::Line line(const std::string& text) { return std::make_shared<const std::string>(text); }

std::vector<std::string> texts(const std::vector<IncidentHistory::Line>& lines) {
    std::vector<std::string> out;
    for (const auto& l : lines) out.push_back(*l);
    return out;
}

IncidentHistoryOptions options(size_t max_incidents, std::chrono::seconds max_age = std::chrono::hours(1),
                               size_t max_bytes = 16 << 20) {
    IncidentHistoryOptions o;
    o.max_incidents = max_incidents;
    o.max_age = max_age;
    o.max_bytes = max_bytes;
    return o;
}

HistoryQuery since(int64_t unix_ns) { return HistoryQuery{unix_ns, std::nullopt}; }
HistoryQuery last(size_t n) { return HistoryQuery{std::nullopt, n}; }

std::optional<HistoryQuery> parse(const char* since_value, const char* last_value, std::string* error) {
    return parse_history_query(since_value, last_value, kNow, error);
}

}  // namespace

TEST(IncidentHistory, KeepsTheLastMaxIncidentsInPublishOrder) {
    IncidentHistory history(options(3));
    for (int i = 0; i < 5; ++i) history.add(line("l" + std::to_string(i)), kNow - (5 - i) * kSec, kNow);
    EXPECT_EQ(history.size(), 3u);
    EXPECT_EQ(texts(history.select(last(100), kNow)), (std::vector<std::string>{"l2", "l3", "l4"}));
}

TEST(IncidentHistory, SharesThePublishedStringInsteadOfCopyingIt) {
    IncidentHistory history(options(10));
    auto published = line("incident");
    history.add(published, kNow, kNow);
    const auto selected = history.select(last(1), kNow);
    ASSERT_EQ(selected.size(), 1u);
    EXPECT_EQ(selected[0].get(), published.get());
}

TEST(IncidentHistory, DropsWhatIsOlderThanMaxAgeOnAddAndOnSelect) {
    IncidentHistory history(options(100, std::chrono::seconds(60)));
    history.add(line("old"), kNow - 120 * kSec, kNow);  // already too old when published
    EXPECT_EQ(history.size(), 0u);
    history.add(line("a"), kNow - 50 * kSec, kNow);
    history.add(line("b"), kNow - 10 * kSec, kNow);
    EXPECT_EQ(texts(history.select(last(10), kNow)), (std::vector<std::string>{"a", "b"}));
    // 20 s later "a" is 70 s old: gone on read, without a publish.
    EXPECT_EQ(texts(history.select(last(10), kNow + 20 * kSec)), (std::vector<std::string>{"b"}));
    EXPECT_EQ(history.size(), 1u);
    // 60 s later on publish.
    history.add(line("c"), kNow + 60 * kSec, kNow + 60 * kSec);
    EXPECT_EQ(texts(history.select(last(10), kNow + 60 * kSec)), (std::vector<std::string>{"c"}));
}

TEST(IncidentHistory, AnOldIncidentPublishedLateIsNeverReplayed) {
    // Held back for attribution, an incident can be published after a newer one; it cannot be
    // dropped from the front yet, but select() does not return it once it is too old.
    IncidentHistory history(options(100, std::chrono::seconds(60)));
    history.add(line("new"), kNow - 10 * kSec, kNow);
    history.add(line("late"), kNow - 55 * kSec, kNow);
    EXPECT_EQ(texts(history.select(last(10), kNow)), (std::vector<std::string>{"new", "late"}));
    EXPECT_EQ(texts(history.select(last(10), kNow + 10 * kSec)), (std::vector<std::string>{"new"}));
}

TEST(IncidentHistory, HoldsAtMostMaxBytes) {
    const std::string text(1000, 'x');
    const size_t one = IncidentHistory::entry_bytes(text);
    IncidentHistory history(options(1000, std::chrono::hours(1), 3 * one + one / 2));
    for (int i = 0; i < 10; ++i) history.add(line(text), kNow, kNow);
    EXPECT_EQ(history.size(), 3u);
    EXPECT_EQ(history.held_bytes(), 3 * one);
    // A line larger than the whole cap is not kept (and evicts nothing).
    history.add(line(std::string(4 * one, 'y')), kNow, kNow);
    EXPECT_EQ(history.size(), 3u);
    EXPECT_EQ(history.held_bytes(), 3 * one);
}

TEST(IncidentHistory, ZeroIncidentsDisablesIt) {
    IncidentHistory history(options(0));
    EXPECT_FALSE(history.enabled());
    history.add(line("a"), kNow, kNow);
    EXPECT_EQ(history.size(), 0u);
    EXPECT_TRUE(history.select(last(10), kNow).empty());
}

TEST(IncidentHistory, SinceLastAndBoth) {
    IncidentHistory history(options(100));
    for (int i = 0; i < 10; ++i) history.add(line("m" + std::to_string(i)), kNow - (10 - i) * 60 * kSec, kNow);
    // m0 is 10 min old, m9 1 min old.
    EXPECT_EQ(texts(history.select(since(kNow - 3 * 60 * kSec), kNow)),
              (std::vector<std::string>{"m7", "m8", "m9"}));  // since is inclusive
    EXPECT_EQ(texts(history.select(last(2), kNow)), (std::vector<std::string>{"m8", "m9"}));
    EXPECT_EQ(texts(history.select(HistoryQuery{kNow - 5 * 60 * kSec, 2}, kNow)),
              (std::vector<std::string>{"m8", "m9"}));
    EXPECT_EQ(texts(history.select(HistoryQuery{kNow - 2 * 60 * kSec, 5}, kNow)),
              (std::vector<std::string>{"m8", "m9"}));
    EXPECT_TRUE(history.select(last(0), kNow).empty());
    EXPECT_TRUE(history.select(since(kNow), kNow).empty());
    EXPECT_TRUE(history.select(HistoryQuery{}, kNow).empty());  // no replay asked
    EXPECT_EQ(history.select(since(std::numeric_limits<int64_t>::min()), kNow).size(), 10u);
}

TEST(HistoryQueryParsing, SinceAsRfc3339OrDuration) {
    std::string error;
    EXPECT_EQ(parse("2026-12-06T01:00:00Z", nullptr, &error)->since_unix_ns, kNow - 3600 * kSec);
    EXPECT_EQ(parse("2026-12-06T02:30:00+01:00", nullptr, &error)->since_unix_ns, kNow - 1800 * kSec);
    EXPECT_EQ(parse("2026-12-06T01:59:59.5Z", nullptr, &error)->since_unix_ns, kNow - kSec / 2);
    EXPECT_EQ(parse("90s", nullptr, &error)->since_unix_ns, kNow - 90 * kSec);
    EXPECT_EQ(parse("30m", nullptr, &error)->since_unix_ns, kNow - 1800 * kSec);
    EXPECT_EQ(parse("2h", nullptr, &error)->since_unix_ns, kNow - 7200 * kSec);
    EXPECT_EQ(parse("1h30m", nullptr, &error)->since_unix_ns, kNow - 5400 * kSec);
    EXPECT_EQ(parse("1h0m5s", nullptr, &error)->since_unix_ns, kNow - 3605 * kSec);
    EXPECT_EQ(parse("0s", nullptr, &error)->since_unix_ns, kNow);
    // Further back than int64 reaches: everything.
    EXPECT_EQ(parse("999999999h", nullptr, &error)->since_unix_ns, std::numeric_limits<int64_t>::min());
    const auto none = parse(nullptr, nullptr, &error);
    ASSERT_TRUE(none);
    EXPECT_FALSE(none->wants_replay());
}

TEST(HistoryQueryParsing, LastAndBoth) {
    std::string error;
    EXPECT_EQ(parse(nullptr, "50", &error)->last, 50u);
    EXPECT_EQ(parse(nullptr, "0", &error)->last, 0u);
    const auto both = parse("30m", "5", &error);
    ASSERT_TRUE(both);
    EXPECT_EQ(both->since_unix_ns, kNow - 1800 * kSec);
    EXPECT_EQ(both->last, 5u);
}

TEST(HistoryQueryParsing, BadValuesNameTheParameter) {
    const std::string since_error = "since: expected an RFC 3339 time or a duration like 30m";
    const std::string last_error = "last: expected a non-negative integer";
    for (const char* bad : {"abc", "", "30", "m", "30x", "1.5h", "-30m", "+30m", "30m1h", "1h1h", "1h 30m", "30m ",
                            "2026-12-06", "2026-12-06T02:00:00", "1234567890h"}) {
        std::string error;
        EXPECT_FALSE(parse(bad, nullptr, &error)) << bad;
        EXPECT_EQ(error, since_error) << bad;
    }
    for (const char* bad : {"-1", "x", "", "1.5", " 5", "5 ", "+5", "99999999999999999999999"}) {
        std::string error;
        EXPECT_FALSE(parse(nullptr, bad, &error)) << bad;
        EXPECT_EQ(error, last_error) << bad;
    }
    std::string error;
    EXPECT_FALSE(parse("abc", "x", &error));
    EXPECT_EQ(error, since_error);  // the first bad one
}

// Memory: 10000 realistic stream lines (pods with generated names at both ends), as the agent
// keeps them by default. Reports what the history counts (held_bytes: string capacities plus the
// per-entry overhead) and what malloc says the same lines and entries take; the figure in
// docs/reliability.md ("Incident history") comes from here.
TEST(IncidentHistory, MemoryForTenThousandRealisticIncidents) {
    constexpr size_t kIncidents = 10000;
    StreamedIncident s;
    s.incident.cause = Cause::idle_close_race;
    s.incident.observer = Observer::client;
    s.incident.pid = 2817364;
    s.incident.comm = "nginx";
    s.incident.idle_before_write_ms = 60012.5;
    s.incident.write_to_reset_ms = 0.31;
    s.incident.idle_precision_ms = 4;
    s.incident.state = "CLOSE_WAIT";
    s.incident.reset_reason = "TCP_CLOSE";
    s.incident.netns = 4026532841u;
    s.client = {"payments", "checkout-gateway-7d9f8b6c5d-x2k4p", "checkout-gateway"};
    s.server = {"inventory", "inventory-service-6b8c9d7f4-qwz8r", "inventory-service"};
    const int64_t offset = kNow - 900'000 * kSec;

    const size_t malloc_before = mallinfo2().uordblks;
    IncidentHistory history(IncidentHistoryOptions{});
    size_t line_bytes = 0;
    for (size_t i = 0; i < kIncidents; ++i) {
        s.incident.ts_ns = static_cast<uint64_t>(900'000 * kSec - 3000 * kSec + static_cast<int64_t>(i) * 300'000'000);
        s.incident.client = {"10.244." + std::to_string(i % 250) + "." + std::to_string(i % 200 + 2),
                             static_cast<uint16_t>(32768 + i % 28000)};
        s.incident.server = {"10.96." + std::to_string(i % 100) + "." + std::to_string(i % 250 + 1), 8080};
        s.incident.requests = static_cast<uint32_t>(i % 1000);
        // As HttpServer::publish does: format once, trim, share the string.
        auto published = IncidentHistory::make_line(format_streamed_incident_line(s, offset));
        line_bytes += published->size();
        history.add(std::move(published), static_cast<int64_t>(s.incident.ts_ns) + offset, kNow);
    }
    const size_t malloc_after = mallinfo2().uordblks;

    ASSERT_EQ(history.size(), kIncidents);  // all within the default age and byte cap
    const size_t held = history.held_bytes();
    const double average_line = static_cast<double>(line_bytes) / kIncidents;
    std::printf("incident history: %zu incidents, lines %.0f bytes on average, held_bytes %zu (%.2f MiB, %.0f bytes an "
                "incident), malloc in use %+zd bytes (%.2f MiB)\n",
                kIncidents, average_line, held, held / 1048576.0, static_cast<double>(held) / kIncidents,
                static_cast<ssize_t>(malloc_after - malloc_before), (malloc_after - malloc_before) / 1048576.0);
    RecordProperty("held_bytes", std::to_string(held));
    RecordProperty("malloc_bytes", std::to_string(malloc_after - malloc_before));
    EXPECT_GT(average_line, 400);  // a realistic line, not a stub
    EXPECT_LT(held, IncidentHistoryOptions{}.max_bytes / 2);  // the byte cap leaves room for longer lines
    // The estimate within 25% of malloc's count.
    if (kGlibcMalloc) {
        const double ratio = static_cast<double>(held) / static_cast<double>(malloc_after - malloc_before);
        EXPECT_GT(ratio, 0.75) << "held_bytes underestimates";
        EXPECT_LT(ratio, 1.25) << "held_bytes overestimates";
    }
}
