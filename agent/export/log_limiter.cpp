#include "log_limiter.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

namespace rstwatch {

namespace {

std::string end_name(const Identity& who) {
    if (!who.pod.empty()) return who.namespace_ + "/" + who.pod;
    if (who.workload.empty()) return "unknown";
    return who.namespace_.empty() ? who.workload : who.namespace_ + "/" + who.workload;
}

std::string pair_name(const PairKey& pair) {
    return fmt::format("{} -> {}:{}", end_name(pair.client), end_name(pair.server), pair.server_port);
}

}  // namespace

bool IncidentLogLimiter::ProblemKeyLess::operator()(const ProblemKey& a, const ProblemKey& b) const {
    if (PairKeyLess{}(a.pair, b.pair)) return true;
    if (PairKeyLess{}(b.pair, a.pair)) return false;
    return std::tie(a.cause, a.observer) < std::tie(b.cause, b.observer);
}

bool IncidentLogLimiter::TokenBucket::take(double capacity, double per_second, int64_t now_ns) {
    if (now_ns > at_ns) {
        tokens = std::min(capacity, tokens + static_cast<double>(now_ns - at_ns) * per_second / 1e9);
        at_ns = now_ns;
    }
    if (tokens < 1.0) return false;
    tokens -= 1.0;
    return true;
}

IncidentLogLimiter::IncidentLogLimiter(IncidentLogLimits limits)
    : limits_(limits), shared_{limits.burst_lines}, first_lines_{limits.first_line_reserve} {}

bool IncidentLogLimiter::admit(const PairKey& pair, Cause cause, Observer observer, int64_t now_ns) {
    Problem* problem = nullptr;
    const ProblemKey key{pair, cause, observer};
    if (auto it = problems_.find(key); it != problems_.end()) {
        problem = &it->second;
    } else if (problems_.size() < limits_.max_problems) {
        problem = &problems_[key];
        problem->pair_name = pair_name(pair);
    }
    if (problem) problem->last_seen_ns = now_ns;

    const bool first_line = problem && !problem->logged;
    const bool problem_due =
        !problem || first_line || now_ns - problem->last_logged_ns >= limits_.per_problem_interval_ns;
    // The reserve is only drawn on when the shared budget is spent.
    const bool log = problem_due && (shared_.take(limits_.burst_lines, limits_.lines_per_second, now_ns) ||
                                     (first_line && first_lines_.take(limits_.first_line_reserve,
                                                                      limits_.first_lines_per_second, now_ns)));
    if (log) {
        ++stats_.logged;
        if (problem) {
            problem->logged = true;
            problem->last_logged_ns = now_ns;
        }
        return true;
    }
    ++stats_.suppressed;
    if (pending_.total++ == 0) pending_since_ns_ = now_ns;
    ++pending_.by_cause[static_cast<size_t>(cause)];
    if (problem) ++problem->suppressed;
    return false;
}

SuppressedIncidentLines IncidentLogLimiter::summarize(int64_t now_ns) {
    SuppressedIncidentLines summary = pending_;
    summary.seconds = static_cast<double>(std::max<int64_t>(0, now_ns - pending_since_ns_)) / 1e9;
    // The pair with the most, over its causes and sides; ties go to the first name.
    std::map<std::string, uint64_t> by_pair;
    for (auto& [key, problem] : problems_) {
        if (problem.suppressed) by_pair[problem.pair_name] += problem.suppressed;
        problem.suppressed = 0;
    }
    for (const auto& [name, count] : by_pair) {
        if (count > summary.top_pair_count) {
            summary.top_pair = name;
            summary.top_pair_count = count;
        }
    }
    pending_ = {};
    last_summary_ns_ = now_ns;
    return summary;
}

std::optional<SuppressedIncidentLines> IncidentLogLimiter::take_summary(int64_t now_ns) {
    std::erase_if(problems_, [&](const auto& entry) {
        const Problem& problem = entry.second;
        return problem.suppressed == 0 && now_ns - problem.last_seen_ns >= limits_.forget_after_ns;
    });
    if (pending_.total == 0) return std::nullopt;
    if (last_summary_ns_ && now_ns - *last_summary_ns_ < limits_.summary_interval_ns) return std::nullopt;
    return summarize(now_ns);
}

std::optional<SuppressedIncidentLines> IncidentLogLimiter::flush(int64_t now_ns) {
    if (pending_.total == 0) return std::nullopt;
    return summarize(now_ns);
}

IncidentLogStats IncidentLogLimiter::stats() const {
    IncidentLogStats stats = stats_;
    stats.problems = problems_.size();
    return stats;
}

std::string format_suppressed_incident_lines(const SuppressedIncidentLines& summary) {
    std::vector<std::pair<uint64_t, Cause>> causes;
    for (size_t i = 0; i < summary.by_cause.size(); ++i)
        if (summary.by_cause[i]) causes.emplace_back(summary.by_cause[i], static_cast<Cause>(i));
    // Most first; equal counts in the enum's order.
    std::stable_sort(causes.begin(), causes.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::string detail;
    for (const auto& [count, cause] : causes)
        detail += fmt::format("{}{} {}", detail.empty() ? "" : ", ", to_string(cause), count);
    if (!summary.top_pair.empty())
        detail += fmt::format("; top pair {} with {}", summary.top_pair, summary.top_pair_count);
    return fmt::format("incident log lines: {} not logged in the last {:.1f} s ({}); every incident is counted in "
                       "rstwatch_incidents_total and streamed on /incidents",
                       summary.total, summary.seconds, detail);
}

}  // namespace rstwatch
