// Which incidents get their own log line, so that a storm of resets does not become a storm of
// log lines. Only the agent's per-incident line is limited: every incident is still counted in
// the metrics, inferred from and streamed. Pure: the caller passes CLOCK_MONOTONIC nanoseconds.
//
// A "problem" is one pair (both ends as named, server port), cause and observing side: one
// rstwatch_incidents_total series at pod level. The defaults (IncidentLogLimits):
//   - the agent logs at most 20 incident lines at once, then 5 a second (a shared token bucket);
//   - a problem logs at most one line a second;
//   - a problem with no line yet may also draw on a reserve of 10 lines, refilled at one a second,
//     when the shared budget is spent: each distinct problem is seen once even in a storm;
//   - every line not logged is counted; take_summary() reports them at most every 10 s (cause,
//     and the pair with the most), flush() whatever is left at shutdown;
//   - a problem not seen for 10 minutes is forgotten (its next incident is new again); at most
//     4096 are remembered, beyond that new problems only get the shared budget.
// So a storm of any size logs at most 20 + 10 lines at once, then 6 a second, plus a summary line
// every 10 s.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <map>

#include "incident.h"
#include "pair.h"

namespace rstwatch {

struct IncidentLogLimits {
    double burst_lines = 20;
    double lines_per_second = 5;
    double first_line_reserve = 10;  // for problems with no line yet, once the shared budget is spent
    double first_lines_per_second = 1;
    int64_t per_problem_interval_ns = 1'000'000'000LL;
    int64_t summary_interval_ns = 10'000'000'000LL;
    int64_t forget_after_ns = 600'000'000'000LL;
    size_t max_problems = 4096;
};

// Lines not logged since the previous summary.
struct SuppressedIncidentLines {
    uint64_t total = 0;
    double seconds = 0;  // from the first of them to the summary
    std::array<uint64_t, kCauseCount> by_cause{};
    std::string top_pair;  // "client -> server:port" with the most of them; "" when none is known
    uint64_t top_pair_count = 0;
};

struct IncidentLogStats {
    uint64_t logged = 0;
    uint64_t suppressed = 0;
    size_t problems = 0;  // remembered now
};

class IncidentLogLimiter {
public:
    explicit IncidentLogLimiter(IncidentLogLimits limits = {});

    // Whether this incident's line is to be logged now; a line not logged is counted.
    bool admit(const PairKey& pair, Cause cause, Observer observer, int64_t now_ns);
    // The lines not logged since the last summary, once summary_interval has passed since it
    // (the first one at once); nullopt when nothing was suppressed or it is not due. Call it
    // periodically: it also forgets problems not seen for forget_after.
    std::optional<SuppressedIncidentLines> take_summary(int64_t now_ns);
    // The same whether due or not: at shutdown, so that no count is lost.
    std::optional<SuppressedIncidentLines> flush(int64_t now_ns);

    IncidentLogStats stats() const;
    const IncidentLogLimits& limits() const { return limits_; }

private:
    struct TokenBucket {
        double tokens;
        int64_t at_ns = 0;
        bool take(double capacity, double per_second, int64_t now_ns);
    };
    // One series of rstwatch_incidents_total at pod level: pair, cause and observing side.
    struct ProblemKey {
        PairKey pair;
        Cause cause;
        Observer observer;
    };
    struct ProblemKeyLess {
        bool operator()(const ProblemKey& a, const ProblemKey& b) const;
    };
    struct Problem {
        std::string pair_name;  // for the summary
        bool logged = false;    // has had a line since it was first seen (or seen again after being forgotten)
        int64_t last_logged_ns = 0;
        int64_t last_seen_ns = 0;
        uint64_t suppressed = 0;  // since the last summary
    };

    SuppressedIncidentLines summarize(int64_t now_ns);

    IncidentLogLimits limits_;
    TokenBucket shared_;
    TokenBucket first_lines_;
    std::map<ProblemKey, Problem, ProblemKeyLess> problems_;
    SuppressedIncidentLines pending_;
    int64_t pending_since_ns_ = 0;
    std::optional<int64_t> last_summary_ns_;
    IncidentLogStats stats_;
};

// The summary as one log line, e.g. "incident log lines: 12345 not logged in the last 10.0 s
// (idle_close_race 12000, write_after_fin 345; top pair shop/web-1 -> shop/api-0:8080 with 9000);
// every incident is counted in rstwatch_incidents_total and streamed on /incidents".
std::string format_suppressed_incident_lines(const SuppressedIncidentLines& summary);

}  // namespace rstwatch
