#include "event_policy.h"

#include <fmt/format.h>

#include <algorithm>

namespace rstwatch {

namespace {

constexpr int64_t kNsPerSecond = 1'000'000'000;

int64_t ns(std::chrono::seconds s) { return static_cast<int64_t>(s.count()) * kNsPerSecond; }

std::string workload_name(const Identity& who) {
    return who.namespace_.empty() ? who.workload : who.namespace_ + "/" + who.workload;
}

std::string server_name(const PairKey& pair) { return fmt::format("{}:{}", workload_name(pair.server), pair.server_port); }

// Why the incident's request failed, in the words of the person who owns the client.
std::string explain(const Incident& incident) {
    switch (incident.cause) {
        case Cause::write_after_fin:
        case Cause::idle_close_race:
            if (incident.idle_before_write_ms)
                return fmt::format("a request was written on a keepalive connection idle {:.1f} s that the server had "
                                   "just closed (its idle timeout): the server reset it and the request failed (a "
                                   "proxy answers 502)",
                                   *incident.idle_before_write_ms / 1000.0);
            return "a request was written on a keepalive connection the server had just closed: the server reset it "
                   "and the request failed (a proxy answers 502)";
        default: break;  // server-side causes and reset_other make no Event
    }
    return "connection reset";
}

std::string diagnose_hint(const std::string& namespace_) {
    return fmt::format(" `kubectl rstwatch diagnose -n {}` shows the server's inferred idle timeout and the setting "
                       "to change.",
                       namespace_);
}

}  // namespace

EventPolicy::EventPolicy(EventLimits limits, std::string node)
    : limits_(limits), node_(std::move(node)), tokens_(static_cast<double>(limits.node_burst)) {}

EventPolicy::Aggregate& EventPolicy::upsert(const std::string& key, EventFields fields, int64_t mono_ns,
                                            int64_t unix_ns, bool* fresh) {
    auto [it, inserted] = aggregates_.try_emplace(key);
    Aggregate& a = it->second;
    *fresh = inserted;
    if (inserted) {
        a.id = next_id_++;
        a.fields = std::move(fields);
        a.fields.reporting_instance = node_;
        a.fields.event_time_unix_ns = unix_ns;
        a.fields.name = event_name(a.fields.regarding.name, unix_ns);
        a.fields.count = 0;
    }
    ++a.fields.count;
    ++stats_.occurrences;
    a.fields.last_observed_unix_ns = unix_ns;
    a.last_seen_mono = mono_ns;
    if (inserted && aggregates_.size() > limits_.max_events) evict_oldest();
    return a;
}

void EventPolicy::incident(const PodRef& client, const PairKey& pair, const Incident& incident, int64_t mono_ns,
                           int64_t unix_ns) {
    // One Event occurrence per failed request: the client's own record of it. The server's record
    // of the same race (abort_on_close, data_after_close), on this node or the server's, would
    // count it twice or put a second Event on the client's pod from another node.
    if (incident.cause == Cause::reset_other || incident.observer != Observer::client) return;
    const std::string key =
        fmt::format("{}|{}/{}|{}", kReasonStaleReset, client.namespace_, client.name, server_name(pair));
    if (auto it = aggregates_.find(key); it != aggregates_.end()) {
        Aggregate& a = it->second;  // the common case in a storm: count it, nothing else
        if (a.rejected) ++stats_.dropped;
        ++a.fields.count;
        ++stats_.occurrences;
        a.fields.last_observed_unix_ns = unix_ns;
        a.last_seen_mono = mono_ns;
        return;
    }
    EventFields fields;
    fields.regarding = client;
    if (!pair.server.pod.empty()) fields.related = PodRef{pair.server.namespace_, pair.server.pod, ""};
    fields.type = "Warning";
    fields.reason = kReasonStaleReset;
    fields.action = "Reset";
    fields.note = fmt::format("{} -> {}{}: {} ({}).{}", client.namespace_ + "/" + client.name, server_name(pair),
                              pair.server.pod.empty() ? "" : " (pod " + pair.server.pod + ")", explain(incident),
                              to_string(incident.cause), diagnose_hint(client.namespace_));
    bool fresh = false;
    upsert(key, std::move(fields), mono_ns, unix_ns, &fresh);
}

void EventPolicy::verdict(const std::vector<PodRef>& clients, const PairVerdict& verdict, int64_t mono_ns,
                          int64_t unix_ns) {
    if (!verdict.mismatch) return;
    const std::string pair_name = workload_name(verdict.pair.client) + " -> " + server_name(verdict.pair);
    const std::string setting = verdict.fix ? verdict.fix->setting : std::string();
    for (const PodRef& client : clients) {
        const std::string suffix = fmt::format("|{}/{}|{}", client.namespace_, client.name, server_name(verdict.pair));
        const std::string mismatch_key = kReasonMismatch + suffix;
        const std::string resolved_key = kReasonMismatchResolved + suffix;
        auto standing = aggregates_.find(mismatch_key);
        EventFields fields;
        fields.regarding = client;
        fields.action = "Predict";
        if (*verdict.mismatch) {
            if (standing != aggregates_.end() && standing->second.setting == setting) continue;
            if (standing != aggregates_.end()) aggregates_.erase(standing);  // a new fix: a new Event
            aggregates_.erase(resolved_key);
            fields.type = "Warning";
            fields.reason = kReasonMismatch;
            fields.note = fmt::format("{}: {}.{}{}", pair_name, verdict.reason,
                                      verdict.fix ? fmt::format(" Fix{}: {}.",
                                                                verdict.fix->client_kind.empty()
                                                                    ? ""
                                                                    : " (" + verdict.fix->client_kind + ")",
                                                                verdict.fix->setting)
                                                  : std::string(),
                                      diagnose_hint(client.namespace_));
            bool fresh = false;
            upsert(mismatch_key, std::move(fields), mono_ns, unix_ns, &fresh).setting = setting;
        } else {
            if (standing == aggregates_.end()) continue;  // never reported here: nothing to clear
            aggregates_.erase(standing);
            fields.type = "Normal";
            fields.reason = kReasonMismatchResolved;
            fields.note = fmt::format("{}: no longer a keepalive timeout mismatch: {}.", pair_name, verdict.reason);
            aggregates_.erase(resolved_key);
            bool fresh = false;
            upsert(resolved_key, std::move(fields), mono_ns, unix_ns, &fresh);
        }
    }
}

bool EventPolicy::take_token(int64_t mono_ns) {
    const double per_ns = limits_.node_writes_per_minute / (60.0 * kNsPerSecond);
    if (tokens_at_mono_ != 0 && mono_ns > tokens_at_mono_)
        tokens_ = std::min<double>(static_cast<double>(limits_.node_burst),
                                   tokens_ + static_cast<double>(mono_ns - tokens_at_mono_) * per_ns);
    tokens_at_mono_ = mono_ns;
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
}

void EventPolicy::evict_oldest() {
    auto oldest = aggregates_.end();
    for (auto it = aggregates_.begin(); it != aggregates_.end(); ++it) {
        if (it->second.in_flight) continue;
        if (oldest == aggregates_.end() || it->second.last_seen_mono < oldest->second.last_seen_mono) oldest = it;
    }
    if (oldest == aggregates_.end()) return;
    stats_.dropped += oldest->second.fields.count - oldest->second.written;
    aggregates_.erase(oldest);
}

void EventPolicy::forget_stale(int64_t mono_ns) {
    std::erase_if(aggregates_, [&](const auto& entry) {
        const Aggregate& a = entry.second;
        return !a.in_flight && a.written == a.fields.count && mono_ns - a.last_seen_mono >= ns(limits_.forget_after);
    });
}

std::vector<EventWrite> EventPolicy::due(int64_t mono_ns, int64_t unix_ns) {
    forget_stale(mono_ns);
    std::vector<Aggregate*> ready;
    for (auto& [key, a] : aggregates_) {
        if (a.in_flight || a.rejected) continue;
        // A standing mismatch is observed again every refresh period.
        if (a.fields.reason == kReasonMismatch && a.created && a.written == a.fields.count &&
            mono_ns - a.last_write_mono >= ns(limits_.mismatch_refresh)) {
            ++a.fields.count;
            a.fields.last_observed_unix_ns = unix_ns;
            a.last_seen_mono = mono_ns;
        }
        if (a.fields.count == a.written) continue;
        if (a.created && mono_ns - a.last_write_mono < ns(limits_.per_event_interval)) continue;
        ready.push_back(&a);
    }
    // New Events first, then the longest waiting.
    std::sort(ready.begin(), ready.end(), [](const Aggregate* x, const Aggregate* y) {
        if (x->created != y->created) return !x->created;
        return x->last_write_mono != y->last_write_mono ? x->last_write_mono < y->last_write_mono : x->id < y->id;
    });
    std::vector<EventWrite> writes;
    for (Aggregate* a : ready) {
        if (!take_token(mono_ns)) {
            stats_.deferred += ready.size() - writes.size();
            break;
        }
        EventWrite write;
        write.id = a->id;
        write.create = !a->created;
        write.namespace_ = a->fields.regarding.namespace_;
        write.name = a->fields.name;
        write.count = a->fields.count;
        write.reason = a->fields.reason;
        write.body = write.create ? event_object(a->fields)
                                  : series_patch(a->fields.count, a->fields.last_observed_unix_ns);
        a->in_flight = true;
        writes.push_back(std::move(write));
    }
    return writes;
}

void EventPolicy::completed(const EventWrite& write, KubeWriteResult result, int64_t mono_ns) {
    auto it = std::find_if(aggregates_.begin(), aggregates_.end(),
                           [&](const auto& entry) { return entry.second.id == write.id; });
    if (it == aggregates_.end()) return;  // replaced meanwhile (a new fix)
    Aggregate& a = it->second;
    a.in_flight = false;
    switch (result) {
        case KubeWriteResult::ok:
            a.created = true;
            a.written = std::max(a.written, write.count);
            a.last_write_mono = mono_ns;
            break;
        case KubeWriteResult::conflict:   // the name is taken: another name, created next time
        case KubeWriteResult::not_found:  // expired (--event-ttl): a new Event with the whole count
            a.created = false;
            a.written = 0;
            a.fields.name = event_name(a.fields.regarding.name, a.fields.last_observed_unix_ns + a.id);
            if (a.fields.name == write.name)
                a.fields.name = event_name(a.fields.regarding.name, a.fields.last_observed_unix_ns + a.id + 1);
            break;
        case KubeWriteResult::invalid:  // retrying cannot help: counted as dropped from here on
            stats_.dropped += a.fields.count - a.written;
            a.written = a.fields.count;
            a.rejected = true;
            break;
        default:  // forbidden, throttled, unavailable, stopped: the reporter backs off, then retries
            break;
    }
}

EventPolicyStats EventPolicy::stats() const {
    EventPolicyStats s = stats_;
    s.tracked = aggregates_.size();
    s.pending = static_cast<size_t>(std::count_if(aggregates_.begin(), aggregates_.end(), [](const auto& entry) {
        return entry.second.fields.count != entry.second.written;
    }));
    return s;
}

}  // namespace rstwatch
