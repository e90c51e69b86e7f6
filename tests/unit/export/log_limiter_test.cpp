// Incident log limits: a storm logs a bounded number of lines and counts every other one, each
// distinct problem still gets its line, the budget refills, the summaries add up exactly and the
// last one is flushed at shutdown. Time is simulated (nanoseconds passed in).
#include "log_limiter.h"

#include <gtest/gtest.h>

#include <string>
#include <tuple>
#include <vector>

using namespace rstwatch;

namespace {

constexpr int64_t kSecond = 1'000'000'000LL;
constexpr int64_t kStart = 1000 * kSecond;  // an arbitrary CLOCK_MONOTONIC reading

PairKey client_pair(int client, uint16_t port = 8080) {
    return PairKey{Identity{"shop", "web-" + std::to_string(client), "web"}, Identity{"shop", "api-0", "api"}, port};
}

// The documented bound for a storm lasting `seconds`: 20 + 10 at once, then 5 + 1 a second.
double line_bound(const IncidentLogLimits& l, double seconds) {
    return l.burst_lines + l.first_line_reserve + (l.lines_per_second + l.first_lines_per_second) * seconds;
}

uint64_t sum(const std::array<uint64_t, kCauseCount>& counts) {
    uint64_t total = 0;
    for (uint64_t n : counts) total += n;
    return total;
}

}  // namespace

TEST(IncidentLogLimiter, StormOfOneHundredThousandOverTenSecondsLogsBoundedAndCountsTheRest) {
    IncidentLogLimiter limiter;
    constexpr int kIncidents = 100'000;
    constexpr int kPairs = 50;
    const Cause causes[] = {Cause::idle_close_race, Cause::write_after_fin};
    std::array<uint64_t, kCauseCount> suppressed_by_cause{};
    std::vector<SuppressedIncidentLines> summaries;
    int64_t next_tick = kStart + kSecond;
    uint64_t logged = 0;
    for (int i = 0; i < kIncidents; ++i) {
        const int64_t now = kStart + static_cast<int64_t>(i) * (10 * kSecond / kIncidents);
        while (now >= next_tick) {  // the agent's once-a-second tick
            if (auto s = limiter.take_summary(next_tick)) summaries.push_back(*s);
            next_tick += kSecond;
        }
        const Cause cause = causes[i % 3 == 0 ? 1 : 0];
        if (limiter.admit(client_pair(i % kPairs), cause, Observer::client, now))
            ++logged;
        else
            ++suppressed_by_cause[static_cast<size_t>(cause)];
    }
    if (auto s = limiter.flush(kStart + 10 * kSecond)) summaries.push_back(*s);

    EXPECT_LE(static_cast<double>(logged), line_bound(limiter.limits(), 10.0));
    EXPECT_GE(logged, 70u);  // the shared budget is used: 20 at once, then 5 a second
    const IncidentLogStats stats = limiter.stats();
    EXPECT_EQ(stats.logged, logged);
    EXPECT_EQ(stats.logged + stats.suppressed, static_cast<uint64_t>(kIncidents));
    // A summary at once, then every 10 s at most (here: the first tick, then the flush).
    ASSERT_EQ(summaries.size(), 2u);
    uint64_t summarized = 0;
    std::array<uint64_t, kCauseCount> summarized_by_cause{};
    for (const SuppressedIncidentLines& s : summaries) {
        EXPECT_EQ(sum(s.by_cause), s.total);
        summarized += s.total;
        for (size_t c = 0; c < kCauseCount; ++c) summarized_by_cause[c] += s.by_cause[c];
    }
    EXPECT_EQ(summarized, stats.suppressed);
    EXPECT_EQ(summarized_by_cause, suppressed_by_cause);
    EXPECT_NEAR(summaries[1].seconds, 9.0, 0.01);  // from the first line after the 1 s summary
}

TEST(IncidentLogLimiter, OneProblemStormingLogsOneLineASecond) {
    IncidentLogLimiter limiter;
    uint64_t logged = 0;
    for (int i = 0; i < 100'000; ++i)
        logged += limiter.admit(client_pair(1), Cause::idle_close_race, Observer::client, kStart + i * 100'000LL);
    EXPECT_EQ(logged, 10u);  // at 0, 1, ..., 9 s
    EXPECT_EQ(limiter.stats().suppressed, 100'000u - 10u);
}

TEST(IncidentLogLimiter, EachDistinctProblemGetsItsLineUnderLoad) {
    IncidentLogLimiter limiter;
    // One pair storms on 20 ports and spends the shared budget (20 lines) within 20 ms.
    int64_t now = kStart;
    for (int i = 0; i < 2000; ++i, now += 10'000)
        limiter.admit(client_pair(0, static_cast<uint16_t>(9000 + i % 20)), Cause::idle_close_race, Observer::client,
                      now);
    ASSERT_EQ(limiter.stats().logged, 20u);
    // Problems with no line yet draw on the reserve: each is seen once, whatever differs.
    const std::vector<std::tuple<PairKey, Cause, Observer>> distinct = {
        {client_pair(1), Cause::idle_close_race, Observer::client},
        {client_pair(2), Cause::idle_close_race, Observer::client},
        {client_pair(1), Cause::write_after_fin, Observer::client},
        {client_pair(1), Cause::abort_on_close, Observer::server},
        {client_pair(1), Cause::reset_other, Observer::client},
        {client_pair(1), Cause::reset_other, Observer::server},
        {client_pair(1, 8443), Cause::idle_close_race, Observer::client},
        {PairKey{Identity{"", "", "10.0.0.7"}, Identity{"shop", "api-0", "api"}, 8080}, Cause::data_after_close,
         Observer::server},
    };
    for (const auto& [pair, cause, observer] : distinct) {
        EXPECT_TRUE(limiter.admit(pair, cause, observer, now)) << pair.client.pod << " " << to_string(cause);
        // The same problem again within the second: counted, not logged.
        EXPECT_FALSE(limiter.admit(pair, cause, observer, now));
    }
    EXPECT_TRUE(limiter.admit(client_pair(4), Cause::idle_close_race, Observer::client, now));
    EXPECT_TRUE(limiter.admit(client_pair(5), Cause::idle_close_race, Observer::client, now));
    // The reserve (10) is spent too: a new problem now waits for the next token, 200 ms at most.
    const PairKey late = client_pair(3);
    EXPECT_FALSE(limiter.admit(late, Cause::idle_close_race, Observer::client, now));
    EXPECT_TRUE(limiter.admit(late, Cause::idle_close_race, Observer::client, now + kSecond / 5));
    EXPECT_EQ(limiter.stats().logged, 20u + 10u + 1u);
}

TEST(IncidentLogLimiter, BudgetRefillsAtItsRateUpToItsBurst) {
    IncidentLogLimits limits;
    limits.first_line_reserve = 0;  // the shared budget alone
    IncidentLogLimiter limiter(limits);
    int client = 0;
    auto admit_new = [&](int64_t at) { return limiter.admit(client_pair(client++), Cause::idle_close_race,
                                                            Observer::client, at); };
    for (int i = 0; i < 20; ++i) EXPECT_TRUE(admit_new(kStart)) << i;
    EXPECT_FALSE(admit_new(kStart));
    // 5 lines a second: one token every 200 ms.
    EXPECT_FALSE(admit_new(kStart + 190'000'000));
    EXPECT_TRUE(admit_new(kStart + 210'000'000));
    EXPECT_FALSE(admit_new(kStart + 210'000'000));
    // A long quiet period refills up to the burst, never beyond.
    int burst = 0;
    while (admit_new(kStart + 3600 * kSecond)) ++burst;
    EXPECT_EQ(burst, 20);
    // One problem: one line a second whatever the budget.
    const PairKey pair = client_pair(1000);
    const int64_t t = kStart + 7200 * kSecond;
    EXPECT_TRUE(limiter.admit(pair, Cause::write_after_fin, Observer::client, t));
    EXPECT_FALSE(limiter.admit(pair, Cause::write_after_fin, Observer::client, t + kSecond - 1));
    EXPECT_TRUE(limiter.admit(pair, Cause::write_after_fin, Observer::client, t + kSecond));
    EXPECT_EQ(limiter.stats().logged + limiter.stats().suppressed, static_cast<uint64_t>(client) + 3);
}

TEST(IncidentLogLimiter, SummariesAddUpExactlyAndComeAtMostEveryTenSeconds) {
    IncidentLogLimiter limiter;
    EXPECT_FALSE(limiter.take_summary(kStart).has_value());  // nothing suppressed: no line
    // Pair 1 storms with two causes, pair 2 less: 1 s of it.
    int64_t now = kStart;
    std::array<uint64_t, kCauseCount> suppressed{};
    uint64_t pair1 = 0;
    for (int i = 0; i < 1000; ++i, now += kSecond / 1000) {
        const int which = i % 4;  // 0, 1: pair 1 races; 2: pair 1 write_after_fin; 3: pair 2
        const Cause cause = which == 2 ? Cause::write_after_fin : Cause::idle_close_race;
        const PairKey pair = client_pair(which == 3 ? 2 : 1);
        if (!limiter.admit(pair, cause, Observer::client, now)) {
            ++suppressed[static_cast<size_t>(cause)];
            if (which != 3) ++pair1;
        }
    }
    std::optional<SuppressedIncidentLines> first = limiter.take_summary(now);
    ASSERT_TRUE(first.has_value());  // the first at once
    EXPECT_EQ(first->by_cause, suppressed);
    EXPECT_EQ(first->total, limiter.stats().suppressed);
    EXPECT_EQ(first->top_pair, "shop/web-1 -> shop/api-0:8080");
    EXPECT_EQ(first->top_pair_count, pair1);
    EXPECT_NEAR(first->seconds, 1.0, 0.01);

    // More within 10 s: held until the interval has passed.
    EXPECT_FALSE(limiter.admit(client_pair(2), Cause::idle_close_race, Observer::client, now + 1));
    EXPECT_FALSE(limiter.take_summary(now + 9 * kSecond).has_value());
    std::optional<SuppressedIncidentLines> second = limiter.take_summary(now + 10 * kSecond);
    ASSERT_TRUE(second.has_value());
    EXPECT_EQ(second->total, 1u);
    EXPECT_EQ(second->top_pair, "shop/web-2 -> shop/api-0:8080");
    EXPECT_EQ(first->total + second->total, limiter.stats().suppressed);
    EXPECT_FALSE(limiter.take_summary(now + 30 * kSecond).has_value());  // nothing new
}

TEST(IncidentLogLimiter, ShutdownFlushesWhatIsPendingOnce) {
    IncidentLogLimiter limiter;
    const PairKey pair = client_pair(1);
    EXPECT_FALSE(limiter.flush(kStart).has_value());
    EXPECT_TRUE(limiter.admit(pair, Cause::idle_close_race, Observer::client, kStart));
    EXPECT_FALSE(limiter.admit(pair, Cause::idle_close_race, Observer::client, kStart + 1));
    ASSERT_TRUE(limiter.take_summary(kStart + 2).has_value());
    for (int i = 0; i < 7; ++i) limiter.admit(pair, Cause::idle_close_race, Observer::client, kStart + 3 + i);
    EXPECT_FALSE(limiter.take_summary(kStart + 5 * kSecond).has_value());  // not due
    std::optional<SuppressedIncidentLines> last = limiter.flush(kStart + 5 * kSecond);
    ASSERT_TRUE(last.has_value());
    EXPECT_EQ(last->total, 7u);
    EXPECT_EQ(last->by_cause[static_cast<size_t>(Cause::idle_close_race)], 7u);
    EXPECT_FALSE(limiter.flush(kStart + 5 * kSecond).has_value());
    EXPECT_EQ(limiter.stats().suppressed, 8u);
}

TEST(IncidentLogLimiter, ForgetsQuietProblemsAndRemembersABoundedNumber) {
    IncidentLogLimits limits;
    limits.max_problems = 4;
    IncidentLogLimiter limiter(limits);
    for (int i = 0; i < 6; ++i)
        EXPECT_TRUE(limiter.admit(client_pair(i), Cause::idle_close_race, Observer::client, kStart));
    EXPECT_EQ(limiter.stats().problems, 4u);
    // Not remembered: only the shared budget limits it (no per-problem interval).
    EXPECT_TRUE(limiter.admit(client_pair(5), Cause::idle_close_race, Observer::client, kStart));
    EXPECT_FALSE(limiter.admit(client_pair(0), Cause::idle_close_race, Observer::client, kStart));

    limiter.take_summary(kStart + 599 * kSecond);
    EXPECT_EQ(limiter.stats().problems, 4u);
    limiter.take_summary(kStart + 600 * kSecond);  // 10 minutes unseen
    EXPECT_EQ(limiter.stats().problems, 0u);
    EXPECT_TRUE(limiter.admit(client_pair(0), Cause::idle_close_race, Observer::client, kStart + 600 * kSecond));
}

TEST(IncidentLogLimiter, SummaryLine) {
    SuppressedIncidentLines s;
    s.total = 12345;
    s.seconds = 10.04;
    s.by_cause[static_cast<size_t>(Cause::write_after_fin)] = 345;
    s.by_cause[static_cast<size_t>(Cause::idle_close_race)] = 12000;
    s.top_pair = "ns/a -> ns/b:8080";
    s.top_pair_count = 9000;
    EXPECT_EQ(format_suppressed_incident_lines(s),
              "incident log lines: 12345 not logged in the last 10.0 s (idle_close_race 12000, write_after_fin 345; "
              "top pair ns/a -> ns/b:8080 with 9000); every incident is counted in rstwatch_incidents_total and "
              "streamed on /incidents");
    s.top_pair.clear();  // all from problems beyond the remembered ones
    EXPECT_EQ(format_suppressed_incident_lines(s),
              "incident log lines: 12345 not logged in the last 10.0 s (idle_close_race 12000, write_after_fin 345); "
              "every incident is counted in rstwatch_incidents_total and streamed on /incidents");
}
