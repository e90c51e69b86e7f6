// The agent's incident history: the most recent /incidents lines, kept in memory so that a
// follower who arrives after the incident can ask for it (GET /incidents?since=...&last=N, see
// http_server.h). Lost when the agent restarts.
//
// Contract:
//   - An entry is the published line itself (the shared string the followers get: nothing is
//     copied for the history) and its wall-clock time in Unix ns (the incident's ts, as in the
//     line).
//   - Bounded three ways, oldest published entries dropped first: at most max_incidents entries,
//     none older than max_age (dropped on add() and on select()), and at most max_bytes as
//     counted by entry_bytes() (a line alone larger than max_bytes is not kept).
//   - Entries stay in publish order; select() never returns one older than max_age, even one that
//     was published late (an incident held back for attribution) and is not at the front yet.
//   - Not synchronized: the owner (FollowerHub) calls it under the lock that also orders the
//     followers' registration, so a replay and the live lines meet without a gap or a duplicate.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rstwatch {

struct IncidentHistoryOptions {
    size_t max_incidents = 10000;  // 0: no history (only live followers)
    std::chrono::seconds max_age{3600};
    // Hard cap on held_bytes(): ~1.7 KiB a line on average at 10000 lines, well above a real
    // line, so it only binds for pathological lines (long pod names in every field).
    size_t max_bytes = 16 * 1024 * 1024;
};

// The part of the history a new follower asks for. Neither set: none (live only).
struct HistoryQuery {
    std::optional<int64_t> since_unix_ns;  // entries with ts >= since
    std::optional<size_t> last;            // only the last N (of those since, when both)
    bool wants_replay() const { return since_unix_ns.has_value() || last.has_value(); }
};

// GET /incidents query values. since: an RFC 3339 time ("2026-12-06T02:00:00Z") or a duration
// back from now_unix_ns: one or more of <digits>h, <digits>m, <digits>s in that order ("90s",
// "30m", "2h", "1h30m"). last: a non-negative decimal integer. A parameter that is absent is
// nullptr; present without a value it is "". nullopt with *error set to the one-line answer
// naming the parameter ("since: expected an RFC 3339 time or a duration like 30m").
std::optional<HistoryQuery> parse_history_query(const char* since, const char* last, int64_t now_unix_ns,
                                                std::string* error);

class IncidentHistory {
public:
    using Line = std::shared_ptr<const std::string>;

    // A published line as it is shared and kept: its buffer trimmed to its size (the JSON
    // formatter leaves up to twice the size allocated, which the history would hold for an hour).
    static Line make_line(std::string text);

    explicit IncidentHistory(IncidentHistoryOptions options);

    bool enabled() const { return options_.max_incidents > 0; }
    // Appends `line` (no newline) stamped `unix_ns`, then drops from the oldest end what the
    // bounds exclude at now_unix_ns. No-op when disabled.
    void add(Line line, int64_t unix_ns, int64_t now_unix_ns);
    // The lines `query` selects, oldest first, after dropping the expired ones.
    std::vector<Line> select(const HistoryQuery& query, int64_t now_unix_ns);

    size_t size() const { return entries_.size(); }
    // What the entries hold, as entry_bytes() counts it.
    size_t held_bytes() const { return held_bytes_; }
    // One entry's memory: the string's capacity plus a fixed overhead (the deque slot, the
    // std::string and the shared_ptr's control block of make_shared, malloc's headers of both
    // allocations). An estimate, checked against malloc's own count in history_test.cpp.
    static size_t entry_bytes(const std::string& line);

private:
    struct Entry {
        int64_t unix_ns;
        Line line;
        size_t bytes;  // entry_bytes(*line)
    };
    void drop_front();
    void expire(int64_t now_unix_ns);

    const IncidentHistoryOptions options_;
    std::deque<Entry> entries_;
    size_t held_bytes_ = 0;
};

}  // namespace rstwatch
