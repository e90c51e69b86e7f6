// Prometheus metrics of the agent: incidents, resets and idle-age histograms per client/server
// pod pair, plus the agent's own health. All state lives in a prometheus-cpp Registry.
//
// Label order. prometheus-cpp keeps labels in a std::map, so Registry::Collect() returns them
// sorted by name, and a Family keeps its series in an unordered_map. The exposition must list
// labels in the documented order (cause, observer, client_namespace, ...), so collect() runs the
// registry's output through one more step: every series' label vector is put into the order
// declared for its family (see kPairLabelNames and the per-metric lists in metrics.cpp) and the
// series of a family are sorted by their label values in that order (a stable, diffable
// exposition). prometheus::TextSerializer writes labels in vector order and appends "le" last,
// so serializing collect() gives the required text. Serialize collect(), not
// registry().Collect(), whenever the text is exposed.
//
// Thread safety: every method may be called from any thread. Updates take the object's mutex
// (held only for map lookups and atomic increments); collect() never takes it, only the
// registry's and families' own short mutexes.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/labels.h>
#include <prometheus/metric_family.h>
#include <prometheus/registry.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pair.h"
#include "incident.h"

namespace rstwatch {

// The labels naming a connection's two ends, in exposition order.
inline constexpr std::array<std::string_view, 7> kPairLabelNames = {
    "client_namespace", "client_pod",      "client_workload", "server_namespace",
    "server_pod",       "server_workload", "server_port"};

// Names of the record types counted by rstwatch_records_total{type}; all are exported from the
// start (value 0). Other names passed to count_records() get their own series.
inline constexpr std::array<std::string_view, 7> kRecordTypeNames = {
    "idle_write", "close_wait_write", "peer_fin", "own_close",
    "closed",     "rst_received",     "rst_sent"};

struct MetricsOptions {
    PairLabelMode mode = PairLabelMode::pod;
    // A pair's series are removed once one of its ends has been reported dead by
    // expire()'s callback for at least this long.
    std::chrono::seconds series_ttl{300};
    std::string version;     // rstwatch_build_info{version}
    std::string write_hook;  // rstwatch_build_info{write_hook}, e.g. "fexit" / "kprobe"
};

class Metrics {
public:
    using Clock = std::chrono::steady_clock;

    explicit Metrics(MetricsOptions options);
    Metrics(const Metrics&) = delete;
    Metrics& operator=(const Metrics&) = delete;

    // rstwatch_incidents_total{cause, observer, PAIR} += 1; when idle_before_write_s is set it is
    // also observed in rstwatch_idle_before_failure_seconds{PAIR}.
    void count_incident(const PairKey& pair, Cause cause, Observer observer,
                        std::optional<double> idle_before_write_s);
    // rstwatch_resets_total{direction="sent"|"received", PAIR} += 1.
    void count_reset(const PairKey& pair, bool sent);
    void observe_reuse_idle(const PairKey& pair, double seconds);
    void observe_server_idle_close(const PairKey& pair, double seconds);
    void observe_client_idle_close(const PairKey& pair, double seconds);
    // Routes an Observation to the matching histogram above.
    void observe(const PairKey& pair, ObservationKind kind, double seconds);

    // Inferred idle timeouts and the mismatch verdict of a pair; nullopt removes the series
    // (absent until there is enough evidence).
    void set_inferred(const PairKey& pair, std::optional<double> server_timeout_s,
                      std::optional<double> client_timeout_s, std::optional<bool> mismatch);

    // Self metrics.
    void count_records(std::string_view type_name, uint64_t n = 1);
    // The ring buffer's lost-record count is cumulative: the counter is raised to `total`
    // (a smaller value than already exported is ignored; counters never go down).
    void set_records_lost_total(uint64_t total);
    void set_tracked_connections(double n);
    // rstwatch_incident_log_lines_suppressed_total += 1: an incident whose log line the log
    // limits (log_limiter.h) left out.
    void count_incident_log_line_suppressed();
    void set_attribution_synced(const std::string& source, bool synced);
    // Kubernetes Events (--kube-events): registers the families below; before it they are absent.
    void enable_kube_events();
    // Raises rstwatch_kube_event_writes_total{verb, result} to `total` (cumulative, as counted by
    // the event reporter).
    void set_kube_event_writes_total(const std::string& verb, const std::string& result, uint64_t total);
    // Events with occurrences not written yet, and occurrences never to be written (dropped).
    void set_kube_events_state(size_t pending, uint64_t dropped_total);
    // Replaces rstwatch_build_info's series (e.g. once the write hook is known after attaching).
    void set_build_info(const std::string& version, const std::string& write_hook);

    // Removes the series of pairs whose client or server end has been dead (endpoint_alive
    // returned false) for at least series_ttl, measured from the first expire() call that saw it
    // dead; an end seen alive again resets that. Series of live ends stay however idle they are.
    // endpoint_alive receives the identity as labeled: in workload mode its pod is "", so it
    // should answer for the workload (or return true). Non-pod ends (services, "world", IPs)
    // should be reported alive. The callback runs without this object's lock held.
    // Returns the number of pairs removed. Call it periodically (e.g. every 30 s).
    size_t expire(Clock::time_point now,
                  const std::function<bool(const Identity&)>& endpoint_alive);

    // Number of pairs that currently have series.
    size_t pair_count() const;

    // The registry's families with labels in exposition order and series sorted (see top).
    std::vector<prometheus::MetricFamily> collect() const;
    // prometheus::TextSerializer().Serialize(collect()): text format 0.0.4.
    std::string exposition() const;

    // The underlying registry. Its own Collect() yields alphabetically sorted labels.
    prometheus::Registry& registry() { return *registry_; }
    const std::shared_ptr<prometheus::Registry>& registry_ptr() const { return registry_; }

    // Reorders labels and sorts series of `families` in place, by the declared label order of
    // each family name (names not declared keep their labels as they are).
    void order_labels(std::vector<prometheus::MetricFamily>& families) const;

private:
    struct Series {
        prometheus::Labels labels;  // the pair's labels, built once
        Identity client;  // as labeled (pod "" in workload mode)
        Identity server;
        std::array<prometheus::Counter*, kCauseCount * 2> incidents{};
        prometheus::Counter* resets_sent = nullptr;
        prometheus::Counter* resets_received = nullptr;
        prometheus::Histogram* idle_before_failure = nullptr;
        prometheus::Histogram* reuse_idle = nullptr;
        prometheus::Histogram* server_idle_close = nullptr;
        prometheus::Histogram* client_idle_close = nullptr;
        prometheus::Gauge* server_idle_timeout = nullptr;
        prometheus::Gauge* client_idle_timeout = nullptr;
        prometheus::Gauge* keepalive_mismatch = nullptr;
        std::optional<Clock::time_point> dead_since;
    };

    Series& series_locked(const PairKey& pair);
    // Whether `labeled` (a key of series_) is the series of `pair` in this label mode.
    bool labels_pair(const PairKey& labeled, const PairKey& pair) const;
    prometheus::Histogram& histogram_locked(prometheus::Family<prometheus::Histogram>& family,
                                            prometheus::Histogram*& slot,
                                            const prometheus::Labels& labels);
    void remove_series_locked(Series& series);

    const MetricsOptions options_;
    const std::shared_ptr<prometheus::Registry> registry_;
    std::map<std::string, std::vector<std::string>> label_order_;  // immutable after construction

    prometheus::Family<prometheus::Counter>& incidents_;
    prometheus::Family<prometheus::Counter>& resets_;
    prometheus::Family<prometheus::Histogram>& idle_before_failure_;
    prometheus::Family<prometheus::Histogram>& reuse_idle_;
    prometheus::Family<prometheus::Histogram>& server_idle_close_;
    prometheus::Family<prometheus::Histogram>& client_idle_close_;
    prometheus::Family<prometheus::Gauge>& server_idle_timeout_;
    prometheus::Family<prometheus::Gauge>& client_idle_timeout_;
    prometheus::Family<prometheus::Gauge>& keepalive_mismatch_;
    prometheus::Family<prometheus::Counter>& records_lost_family_;
    prometheus::Family<prometheus::Counter>& records_;
    prometheus::Family<prometheus::Gauge>& tracked_family_;
    prometheus::Family<prometheus::Gauge>& attribution_synced_;
    prometheus::Family<prometheus::Gauge>& build_info_;
    prometheus::Counter& records_lost_;
    prometheus::Counter& incident_log_lines_suppressed_;
    // --kube-events only (enable_kube_events).
    prometheus::Family<prometheus::Counter>* kube_event_writes_ = nullptr;
    prometheus::Gauge* kube_events_pending_ = nullptr;
    prometheus::Counter* kube_event_occurrences_dropped_ = nullptr;
    prometheus::Gauge& tracked_connections_;
    prometheus::Gauge* build_info_series_ = nullptr;  // guarded by mutex_

    mutable std::mutex mutex_;
    // The server port first: an integer tells most pairs apart before seven strings are compared.
    struct SeriesOrder {
        bool operator()(const PairKey& a, const PairKey& b) const {
            return a.server_port != b.server_port ? a.server_port < b.server_port : PairKeyLess{}(a, b);
        }
    };
    using SeriesMap = std::map<PairKey, Series, SeriesOrder>;
    SeriesMap series_;  // key: the pair as labeled (pods "" in workload mode)
    SeriesMap::iterator last_series_ = series_.end();  // the last found
};

}  // namespace rstwatch
