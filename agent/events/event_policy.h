// Which Kubernetes Events to write and when: the aggregation and the rate limits that keep a storm
// of 502s from becoming a storm of API writes. Pure (time is passed in), so the limits are tested
// without a clock or an API server; event_reporter.h does the writing.
//
// Events, each on a client pod (the end whose owners act on it):
//   StaleKeepaliveReset (Warning): stale-keepalive incidents as the client saw them (one per failed
//     request), one Event per client pod,
//     server workload and port; repeats only advance its series (count, lastObservedTime), as
//     client-go's event recorder aggregates.
//   KeepaliveTimeoutMismatch (Warning): a workload pair predicted to race, with the fix; a new
//     Event when the fix changes (an Event's note cannot change); refreshed while it stands.
//   KeepaliveTimeoutMismatchResolved (Normal): the prediction cleared.
// Limits (EventLimits): one write per Event per `per_event_interval`; all Events of the node
// share a token bucket (`node_burst`, then `node_writes_per_minute`). Occurrences that wait are
// kept as counts, so the series catches up once the budget allows: nothing counted is lost
// unless more than `max_events` Events are pending at once (then the oldest are dropped, counted).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "event_object.h"
#include "incident.h"
#include "kube_writer.h"
#include "pair.h"
#include "timeout_inference.h"

namespace rstwatch {

inline constexpr const char* kReasonStaleReset = "StaleKeepaliveReset";
inline constexpr const char* kReasonMismatch = "KeepaliveTimeoutMismatch";
inline constexpr const char* kReasonMismatchResolved = "KeepaliveTimeoutMismatchResolved";

struct EventLimits {
    std::chrono::seconds per_event_interval{60};
    double node_writes_per_minute = 12;
    size_t node_burst = 20;
    // A standing mismatch is refreshed (its series advanced) this often, so the API server's
    // --event-ttl (1 h by default) does not delete it while it is still true.
    std::chrono::seconds mismatch_refresh{1800};
    // An Event not observed again for this long is forgotten; a later incident starts a new one.
    std::chrono::seconds forget_after{3600};
    size_t max_events = 512;
};

struct EventWrite {
    uint64_t id = 0;     // the aggregation it belongs to
    bool create = true;  // POST the Event, else PATCH its series
    std::string namespace_;
    std::string name;
    nlohmann::json body;  // the Event, or the merge patch
    uint64_t count = 0;   // occurrences it records
    std::string reason;
};

struct EventPolicyStats {
    uint64_t occurrences = 0;  // incidents and verdict changes taken in
    uint64_t deferred = 0;     // due writes that waited for the node's budget
    uint64_t dropped = 0;      // occurrences never written: evicted from a full table, or refused as invalid
    size_t pending = 0;        // Events with occurrences not written yet
    size_t tracked = 0;        // Events held
};

class EventPolicy {
public:
    EventPolicy(EventLimits limits, std::string node);

    // An incident whose client end is the pod `client`: counts toward that pod's
    // StaleKeepaliveReset for the pair's server. Only the client's own records of stale-keepalive
    // causes count (one per failed request); the rest is ignored.
    void incident(const PodRef& client, const PairKey& pair, const Incident& incident, int64_t mono_ns,
                  int64_t unix_ns);
    // A workload pair's verdict changed (TimeoutInference::take_changes): `clients` are the
    // client workload's pods on this node that use the pair.
    void verdict(const std::vector<PodRef>& clients, const PairVerdict& verdict, int64_t mono_ns, int64_t unix_ns);
    // The writes to make now, within the limits; each is in flight until completed().
    std::vector<EventWrite> due(int64_t mono_ns, int64_t unix_ns);
    void completed(const EventWrite& write, KubeWriteResult result, int64_t mono_ns);

    EventPolicyStats stats() const;
    const EventLimits& limits() const { return limits_; }

private:
    struct Aggregate {
        uint64_t id = 0;
        EventFields fields;   // name, regarding, note, ...; count = occurrences observed
        std::string setting;  // a mismatch's fix: a different one is a new Event
        bool created = false;
        bool in_flight = false;
        bool rejected = false;  // the API refused it as invalid: not written again
        uint64_t written = 0;  // the count the API holds
        int64_t last_write_mono = 0;
        int64_t last_seen_mono = 0;
    };
    Aggregate& upsert(const std::string& key, EventFields fields, int64_t mono_ns, int64_t unix_ns, bool* fresh);
    bool take_token(int64_t mono_ns);
    void evict_oldest();
    void forget_stale(int64_t mono_ns);

    EventLimits limits_;
    std::string node_;
    std::map<std::string, Aggregate> aggregates_;  // by client pod, server and reason
    uint64_t next_id_ = 1;
    double tokens_;
    int64_t tokens_at_mono_ = 0;
    EventPolicyStats stats_;
};

}  // namespace rstwatch
