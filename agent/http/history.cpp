// The incident history and the /incidents query values; see history.h.
#include "history.h"

#include <algorithm>
#include <charconv>
#include <limits>
#include <utility>

#include "output.h"

namespace rstwatch {

namespace {

constexpr int64_t kNsPerSecond = 1'000'000'000;
// make_shared's control block besides the std::string (vtable pointer, two counts) and malloc's
// chunk header on each of the two allocations (control block, string buffer).
constexpr size_t kControlBlockBytes = 16;
constexpr size_t kMallocHeaderBytes = 8;

// "1h30m", "90s": seconds, or nullopt. Units h, m, s, each at most once and in that order.
std::optional<int64_t> parse_duration_seconds(std::string_view text) {
    constexpr std::string_view kUnits = "hms";
    constexpr int64_t kUnitSeconds[] = {3600, 60, 1};
    if (text.empty()) return std::nullopt;
    int64_t seconds = 0;
    size_t next_unit = 0;  // units before this one are used
    while (!text.empty()) {
        size_t digits = 0;
        while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
        // Nine digits of hours fit int64 seconds with room to add the rest.
        if (digits == 0 || digits > 9 || digits == text.size()) return std::nullopt;
        const size_t unit = kUnits.find(text[digits], next_unit);
        if (unit == std::string_view::npos) return std::nullopt;
        int64_t value = 0;
        std::from_chars(text.data(), text.data() + digits, value);
        seconds += value * kUnitSeconds[unit];
        next_unit = unit + 1;
        text.remove_prefix(digits + 1);
    }
    return seconds;
}

std::optional<int64_t> parse_since(std::string_view text, int64_t now_unix_ns) {
    if (auto at = parse_rfc3339(text)) return at;
    const auto seconds = parse_duration_seconds(text);
    if (!seconds) return std::nullopt;
    // Further back than int64 ns reaches: everything.
    int64_t back_ns = 0;
    int64_t since = 0;
    if (__builtin_mul_overflow(*seconds, kNsPerSecond, &back_ns) || __builtin_sub_overflow(now_unix_ns, back_ns, &since))
        return std::numeric_limits<int64_t>::min();
    return since;
}

std::optional<size_t> parse_count(std::string_view text) {
    size_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

}  // namespace

std::optional<HistoryQuery> parse_history_query(const char* since, const char* last, int64_t now_unix_ns,
                                                std::string* error) {
    HistoryQuery query;
    if (since != nullptr) {
        query.since_unix_ns = parse_since(since, now_unix_ns);
        if (!query.since_unix_ns) {
            *error = "since: expected an RFC 3339 time or a duration like 30m";
            return std::nullopt;
        }
    }
    if (last != nullptr) {
        query.last = parse_count(last);
        if (!query.last) {
            *error = "last: expected a non-negative integer";
            return std::nullopt;
        }
    }
    return query;
}

IncidentHistory::IncidentHistory(IncidentHistoryOptions options) : options_(options) {}

IncidentHistory::Line IncidentHistory::make_line(std::string text) {
    text.shrink_to_fit();
    return std::make_shared<const std::string>(std::move(text));
}

size_t IncidentHistory::entry_bytes(const std::string& line) {
    return sizeof(Entry) + kControlBlockBytes + sizeof(std::string) + line.capacity() + 1 + 2 * kMallocHeaderBytes;
}

void IncidentHistory::drop_front() {
    held_bytes_ -= entries_.front().bytes;
    entries_.pop_front();
}

void IncidentHistory::expire(int64_t now_unix_ns) {
    const int64_t oldest_kept = now_unix_ns - std::chrono::nanoseconds(options_.max_age).count();
    while (!entries_.empty() && entries_.front().unix_ns < oldest_kept) drop_front();
}

void IncidentHistory::add(Line line, int64_t unix_ns, int64_t now_unix_ns) {
    if (!enabled() || !line) return;
    const size_t bytes = entry_bytes(*line);
    if (bytes <= options_.max_bytes) {
        while (!entries_.empty() &&
               (entries_.size() >= options_.max_incidents || held_bytes_ + bytes > options_.max_bytes))
            drop_front();
        entries_.push_back(Entry{unix_ns, std::move(line), bytes});
        held_bytes_ += bytes;
    }
    expire(now_unix_ns);
}

std::vector<IncidentHistory::Line> IncidentHistory::select(const HistoryQuery& query, int64_t now_unix_ns) {
    expire(now_unix_ns);
    if (!query.wants_replay()) return {};
    const int64_t oldest_kept = now_unix_ns - std::chrono::nanoseconds(options_.max_age).count();
    const int64_t since = std::max(oldest_kept, query.since_unix_ns.value_or(oldest_kept));
    std::vector<Line> selected;
    for (const Entry& entry : entries_)
        if (entry.unix_ns >= since) selected.push_back(entry.line);
    if (query.last && *query.last < selected.size())
        selected.erase(selected.begin(), selected.end() - static_cast<std::ptrdiff_t>(*query.last));
    return selected;
}

}  // namespace rstwatch
