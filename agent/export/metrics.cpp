// Prometheus metrics of the agent; see metrics.h for the label-order step.
#include "metrics.h"

#include <prometheus/text_serializer.h>

#include <algorithm>
#include <unordered_map>
#include <utility>

namespace rstwatch {

namespace {

using prometheus::ClientMetric;
using prometheus::Labels;

constexpr const char* kIncidents = "rstwatch_incidents_total";
constexpr const char* kResets = "rstwatch_resets_total";
constexpr const char* kIdleBeforeFailure = "rstwatch_idle_before_failure_seconds";
constexpr const char* kReuseIdle = "rstwatch_connection_reuse_idle_seconds";
constexpr const char* kServerIdleClose = "rstwatch_server_idle_close_seconds";
constexpr const char* kClientIdleClose = "rstwatch_client_idle_close_seconds";
constexpr const char* kRecordsLost = "rstwatch_records_lost_total";
constexpr const char* kRecords = "rstwatch_records_total";
constexpr const char* kTracked = "rstwatch_tracked_connections";
constexpr const char* kAttributionSynced = "rstwatch_attribution_synced";
constexpr const char* kBuildInfo = "rstwatch_build_info";
constexpr const char* kIncidentLogLinesSuppressed = "rstwatch_incident_log_lines_suppressed_total";

prometheus::Histogram::BucketBoundaries idle_buckets() {
    return {kIdleBucketsSeconds.begin(), kIdleBucketsSeconds.end()};
}

std::vector<std::string> with_pair(std::initializer_list<const char*> leading) {
    std::vector<std::string> names(leading.begin(), leading.end());
    for (auto name : kPairLabelNames) names.emplace_back(name);
    return names;
}

size_t incident_slot(Cause cause, Observer observer) {
    return static_cast<size_t>(cause) * 2 + static_cast<size_t>(observer);
}

// Values of `metric`'s labels; labels are already in the declared order.
bool labels_less(const ClientMetric& a, const ClientMetric& b) {
    return std::lexicographical_compare(
        a.label.begin(), a.label.end(), b.label.begin(), b.label.end(),
        [](const ClientMetric::Label& x, const ClientMetric::Label& y) {
            if (x.name != y.name) return x.name < y.name;
            return x.value < y.value;
        });
}

}  // namespace

Metrics::Metrics(MetricsOptions options)
    : options_(std::move(options)),
      registry_(std::make_shared<prometheus::Registry>()),
      incidents_(prometheus::BuildCounter()
                     .Name(kIncidents)
                     .Help("Connection resets explained by rstwatch, by cause, observing side and "
                           "client/server pair.")
                     .Register(*registry_)),
      resets_(prometheus::BuildCounter()
                  .Name(kResets)
                  .Help("TCP resets sent or received on connections between the pair.")
                  .Register(*registry_)),
      idle_before_failure_(prometheus::BuildHistogram()
                               .Name(kIdleBeforeFailure)
                               .Help("Idle age of the connection when the failing request was "
                                     "written, in seconds.")
                               .Register(*registry_)),
      reuse_idle_(prometheus::BuildHistogram()
                      .Name(kReuseIdle)
                      .Help("Idle age of a connection each time the client reused it after being "
                            "idle, in seconds.")
                      .Register(*registry_)),
      server_idle_close_(prometheus::BuildHistogram()
                             .Name(kServerIdleClose)
                             .Help("Idle age of connections closed by the server side, in "
                                   "seconds.")
                             .Register(*registry_)),
      client_idle_close_(prometheus::BuildHistogram()
                             .Name(kClientIdleClose)
                             .Help("Idle age of connections closed by the client side, in "
                                   "seconds.")
                             .Register(*registry_)),
      server_idle_timeout_(prometheus::BuildGauge()
                               .Name("rstwatch_server_idle_timeout_seconds")
                               .Help("The server's idle timeout inferred from its closes of idle "
                                     "connections, in seconds.")
                               .Register(*registry_)),
      client_idle_timeout_(prometheus::BuildGauge()
                               .Name("rstwatch_client_idle_timeout_seconds")
                               .Help("The client's idle timeout inferred from its closes of idle "
                                     "connections, in seconds.")
                               .Register(*registry_)),
      keepalive_mismatch_(prometheus::BuildGauge()
                              .Name("rstwatch_keepalive_mismatch")
                              .Help("1 when the client keeps or reuses idle connections up to the "
                                    "server's idle timeout (stale keepalive 502s ahead), else 0.")
                              .Register(*registry_)),
      records_lost_family_(prometheus::BuildCounter()
                               .Name(kRecordsLost)
                               .Help("Kernel records lost because the ring buffer was full.")
                               .Register(*registry_)),
      records_(prometheus::BuildCounter()
                   .Name(kRecords)
                   .Help("Kernel records processed, by type.")
                   .Register(*registry_)),
      tracked_family_(prometheus::BuildGauge()
                          .Name(kTracked)
                          // Read from the BPF side's counters, not the correlator: socket storage
                          // has no size limit, so the value can exceed --max-connections.
                          .Help("TCP sockets connected or accepted on this node since the agent started "
                                "and not yet destroyed, each with rstwatch state in the kernel (BPF "
                                "counters). Socket storage (the default) is not bounded by "
                                "--max-connections; the LRU hash fallback holds at most --max-connections.")
                          .Register(*registry_)),
      attribution_synced_(prometheus::BuildGauge()
                              .Name(kAttributionSynced)
                              .Help("1 when the attribution source has synced, else 0.")
                              .Register(*registry_)),
      build_info_(prometheus::BuildGauge()
                      .Name(kBuildInfo)
                      .Help("rstwatch version and the kernel hook used for writes; always 1.")
                      .Register(*registry_)),
      records_lost_(records_lost_family_.Add({})),
      incident_log_lines_suppressed_(prometheus::BuildCounter()
                                         .Name(kIncidentLogLinesSuppressed)
                                         .Help("Incidents whose log line was left out by the agent's log rate "
                                               "limits, so that a storm does not flood the log; a summary line says "
                                               "how many at most every 10 s. Every incident is still counted in "
                                               "rstwatch_incidents_total and streamed on /incidents.")
                                         .Register(*registry_)
                                         .Add({})),
      tracked_connections_(tracked_family_.Add({})) {
    label_order_[kIncidents] = with_pair({"cause", "observer"});
    label_order_[kResets] = with_pair({"direction"});
    for (auto name : {kIdleBeforeFailure, kReuseIdle, kServerIdleClose, kClientIdleClose,
                      "rstwatch_server_idle_timeout_seconds", "rstwatch_client_idle_timeout_seconds",
                      "rstwatch_keepalive_mismatch"})
        label_order_[name] = with_pair({});
    label_order_[kRecords] = {"type"};
    label_order_["rstwatch_kube_event_writes_total"] = {"verb", "result"};
    label_order_[kAttributionSynced] = {"source"};
    label_order_[kBuildInfo] = {"version", "write_hook"};

    for (auto type : kRecordTypeNames) records_.Add({{"type", std::string(type)}});
    set_build_info(options_.version, options_.write_hook);
}

bool Metrics::labels_pair(const PairKey& labeled, const PairKey& pair) const {
    if (options_.mode == PairLabelMode::pod) return labeled == pair;
    auto same = [](const Identity& l, const Identity& e) { return l.namespace_ == e.namespace_ && l.workload == e.workload; };
    return labeled.server_port == pair.server_port && same(labeled.client, pair.client) && same(labeled.server, pair.server);
}

Metrics::Series& Metrics::series_locked(const PairKey& pair) {
    // Found by the pair itself, without a copy in pod mode: in a reset storm this runs for every
    // record (building seven labels to find the series by them was a third of the agent's time),
    // and the last series found is tried first (a storm is on one pair or a few: walking the
    // map compared seven labels at every step, a fifth of the agent's time in one).
    if (last_series_ != series_.end() && labels_pair(last_series_->first, pair)) return last_series_->second;
    std::optional<PairKey> workload;
    const PairKey& key = options_.mode == PairLabelMode::workload ? workload.emplace(workload_pair(pair)) : pair;
    auto [it, inserted] = series_.try_emplace(key);
    last_series_ = it;
    Series& s = it->second;
    if (!inserted) return s;
    s.labels = {
        {"client_namespace", key.client.namespace_},
        {"client_pod", key.client.pod},
        {"client_workload", key.client.workload},
        {"server_namespace", key.server.namespace_},
        {"server_pod", key.server.pod},
        {"server_workload", key.server.workload},
        {"server_port", std::to_string(key.server_port)},
    };
    s.client = key.client;
    s.server = key.server;
    return s;
}

prometheus::Histogram& Metrics::histogram_locked(prometheus::Family<prometheus::Histogram>& family,
                                                 prometheus::Histogram*& slot,
                                                 const Labels& labels) {
    if (slot == nullptr) slot = &family.Add(labels, idle_buckets());
    return *slot;
}

void Metrics::count_incident(const PairKey& pair, Cause cause, Observer observer,
                             std::optional<double> idle_before_write_s) {
    std::lock_guard lock(mutex_);
    Series& s = series_locked(pair);
    const Labels& labels = s.labels;
    auto*& counter = s.incidents[incident_slot(cause, observer)];
    if (counter == nullptr) {
        Labels with = labels;
        with.emplace("cause", std::string(to_string(cause)));
        with.emplace("observer", std::string(to_string(observer)));
        counter = &incidents_.Add(with);
    }
    counter->Increment();
    if (idle_before_write_s)
        histogram_locked(idle_before_failure_, s.idle_before_failure, labels)
            .Observe(*idle_before_write_s);
}

void Metrics::count_reset(const PairKey& pair, bool sent) {
    std::lock_guard lock(mutex_);
    Series& s = series_locked(pair);
    const Labels& labels = s.labels;
    auto*& counter = sent ? s.resets_sent : s.resets_received;
    if (counter == nullptr) {
        Labels with = labels;
        with.emplace("direction", sent ? "sent" : "received");
        counter = &resets_.Add(with);
    }
    counter->Increment();
}

void Metrics::set_inferred(const PairKey& pair, std::optional<double> server_timeout_s,
                           std::optional<double> client_timeout_s, std::optional<bool> mismatch) {
    std::lock_guard lock(mutex_);
    Series& s = series_locked(pair);
    const Labels& labels = s.labels;
    auto apply = [&](prometheus::Family<prometheus::Gauge>& family, prometheus::Gauge*& slot,
                     std::optional<double> value) {
        if (!value) {
            if (slot != nullptr) family.Remove(std::exchange(slot, nullptr));
            return;
        }
        if (slot == nullptr) slot = &family.Add(labels);
        slot->Set(*value);
    };
    apply(server_idle_timeout_, s.server_idle_timeout, server_timeout_s);
    apply(client_idle_timeout_, s.client_idle_timeout, client_timeout_s);
    std::optional<double> mismatch_value;
    if (mismatch) mismatch_value = *mismatch ? 1.0 : 0.0;
    apply(keepalive_mismatch_, s.keepalive_mismatch, mismatch_value);
}

void Metrics::observe_reuse_idle(const PairKey& pair, double seconds) {
    std::lock_guard lock(mutex_);
    Series& s = series_locked(pair);
    const Labels& labels = s.labels;
    histogram_locked(reuse_idle_, s.reuse_idle, labels).Observe(seconds);
}

void Metrics::observe_server_idle_close(const PairKey& pair, double seconds) {
    std::lock_guard lock(mutex_);
    Series& s = series_locked(pair);
    const Labels& labels = s.labels;
    histogram_locked(server_idle_close_, s.server_idle_close, labels).Observe(seconds);
}

void Metrics::observe_client_idle_close(const PairKey& pair, double seconds) {
    std::lock_guard lock(mutex_);
    Series& s = series_locked(pair);
    const Labels& labels = s.labels;
    histogram_locked(client_idle_close_, s.client_idle_close, labels).Observe(seconds);
}

void Metrics::observe(const PairKey& pair, ObservationKind kind, double seconds) {
    switch (kind) {
        case ObservationKind::reuse_idle:
            observe_reuse_idle(pair, seconds);
            break;
        case ObservationKind::server_idle_close:
            observe_server_idle_close(pair, seconds);
            break;
        case ObservationKind::client_idle_close:
            observe_client_idle_close(pair, seconds);
            break;
    }
}

void Metrics::count_records(std::string_view type_name, uint64_t n) {
    if (n == 0) return;
    // Family::Add returns the existing series for known labels.
    records_.Add({{"type", std::string(type_name)}}).Increment(static_cast<double>(n));
}

namespace {

// Raises a cumulative counter to `total` (counters never go down).
void raise_to(prometheus::Counter& counter, uint64_t total) {
    const double target = static_cast<double>(total);
    if (target > counter.Value()) counter.Increment(target - counter.Value());
}

}  // namespace

void Metrics::set_records_lost_total(uint64_t total) {
    std::lock_guard lock(mutex_);  // read-modify-write of the counter
    raise_to(records_lost_, total);
}

void Metrics::enable_kube_events() {
    std::lock_guard lock(mutex_);
    if (kube_event_writes_) return;
    kube_event_writes_ = &prometheus::BuildCounter()
                              .Name("rstwatch_kube_event_writes_total")
                              .Help("Kubernetes Event writes (--kube-events) by verb (create, patch) and result: "
                                    "ok, or why not (forbidden, throttled, unavailable, invalid, conflict, "
                                    "not_found). Failed writes are retried with the counts gathered meanwhile.")
                              .Register(*registry_);
    kube_events_pending_ = &prometheus::BuildGauge()
                                .Name("rstwatch_kube_events_pending")
                                .Help("Kubernetes Events with occurrences not written yet (rate limits, API "
                                      "errors); they are written when the budget and the API allow.")
                                .Register(*registry_)
                                .Add({});
    kube_event_occurrences_dropped_ =
        &prometheus::BuildCounter()
             .Name("rstwatch_kube_event_occurrences_dropped_total")
             .Help("Occurrences never written to a Kubernetes Event: more Events pending than the agent holds, "
                   "or refused by the API as invalid. Incidents stay counted in rstwatch_incidents_total.")
             .Register(*registry_)
             .Add({});
}

void Metrics::set_kube_event_writes_total(const std::string& verb, const std::string& result, uint64_t total) {
    std::lock_guard lock(mutex_);
    if (kube_event_writes_) raise_to(kube_event_writes_->Add({{"verb", verb}, {"result", result}}), total);
}

void Metrics::set_kube_events_state(size_t pending, uint64_t dropped_total) {
    std::lock_guard lock(mutex_);
    if (!kube_events_pending_) return;
    kube_events_pending_->Set(static_cast<double>(pending));
    raise_to(*kube_event_occurrences_dropped_, dropped_total);
}

void Metrics::set_tracked_connections(double n) { tracked_connections_.Set(n); }

void Metrics::count_incident_log_line_suppressed() { incident_log_lines_suppressed_.Increment(); }

void Metrics::set_attribution_synced(const std::string& source, bool synced) {
    attribution_synced_.Add({{"source", source}}).Set(synced ? 1 : 0);
}

void Metrics::set_build_info(const std::string& version, const std::string& write_hook) {
    std::lock_guard lock(mutex_);
    auto& series = build_info_.Add({{"version", version}, {"write_hook", write_hook}});
    if (build_info_series_ != nullptr && build_info_series_ != &series)
        build_info_.Remove(build_info_series_);
    build_info_series_ = &series;
    series.Set(1);
}

void Metrics::remove_series_locked(Series& s) {
    for (auto*& counter : s.incidents)
        if (counter != nullptr) incidents_.Remove(std::exchange(counter, nullptr));
    if (s.resets_sent != nullptr) resets_.Remove(std::exchange(s.resets_sent, nullptr));
    if (s.resets_received != nullptr) resets_.Remove(std::exchange(s.resets_received, nullptr));
    if (s.idle_before_failure != nullptr)
        idle_before_failure_.Remove(std::exchange(s.idle_before_failure, nullptr));
    if (s.reuse_idle != nullptr) reuse_idle_.Remove(std::exchange(s.reuse_idle, nullptr));
    if (s.server_idle_close != nullptr)
        server_idle_close_.Remove(std::exchange(s.server_idle_close, nullptr));
    if (s.client_idle_close != nullptr)
        client_idle_close_.Remove(std::exchange(s.client_idle_close, nullptr));
    if (s.server_idle_timeout != nullptr)
        server_idle_timeout_.Remove(std::exchange(s.server_idle_timeout, nullptr));
    if (s.client_idle_timeout != nullptr)
        client_idle_timeout_.Remove(std::exchange(s.client_idle_timeout, nullptr));
    if (s.keepalive_mismatch != nullptr)
        keepalive_mismatch_.Remove(std::exchange(s.keepalive_mismatch, nullptr));
}

size_t Metrics::expire(Clock::time_point now,
                       const std::function<bool(const Identity&)>& endpoint_alive) {
    // Snapshot the ends, ask the callback without holding the lock, then apply.
    std::vector<PairKey> pairs;
    {
        std::lock_guard lock(mutex_);
        pairs.reserve(series_.size());
        for (const auto& entry : series_) pairs.push_back(entry.first);
    }
    auto key = [](const Identity& id) {
        return id.namespace_ + '\0' + id.pod + '\0' + id.workload;
    };
    std::unordered_map<std::string, bool> alive_cache;
    auto alive = [&](const Identity& id) {
        auto [it, inserted] = alive_cache.try_emplace(key(id), true);
        if (inserted) it->second = endpoint_alive(id);
        return it->second;
    };
    std::vector<bool> verdicts;
    verdicts.reserve(pairs.size());
    for (const PairKey& pair : pairs) verdicts.push_back(alive(pair.client) && alive(pair.server));

    size_t removed = 0;
    std::lock_guard lock(mutex_);
    for (size_t i = 0; i < pairs.size(); ++i) {
        auto it = series_.find(pairs[i]);
        if (it == series_.end()) continue;
        Series& s = it->second;
        if (verdicts[i]) {
            s.dead_since.reset();
        } else if (!s.dead_since) {
            s.dead_since = now;
        } else if (now - *s.dead_since >= options_.series_ttl) {
            remove_series_locked(s);
            if (it == last_series_) last_series_ = series_.end();
            series_.erase(it);
            ++removed;
        }
    }
    return removed;
}

size_t Metrics::pair_count() const {
    std::lock_guard lock(mutex_);
    return series_.size();
}

void Metrics::order_labels(std::vector<prometheus::MetricFamily>& families) const {
    for (auto& family : families) {
        auto order = label_order_.find(family.name);
        if (order == label_order_.end()) continue;
        const auto& names = order->second;
        auto rank = [&](const ClientMetric::Label& l) {
            auto at = std::find(names.begin(), names.end(), l.name);
            return static_cast<size_t>(at - names.begin());  // undeclared: names.size(), last
        };
        for (auto& metric : family.metric)
            std::stable_sort(metric.label.begin(), metric.label.end(),
                             [&](const auto& a, const auto& b) { return rank(a) < rank(b); });
        std::stable_sort(family.metric.begin(), family.metric.end(), labels_less);
    }
}

std::vector<prometheus::MetricFamily> Metrics::collect() const {
    auto families = registry_->Collect();
    order_labels(families);
    return families;
}

std::string Metrics::exposition() const {
    return prometheus::TextSerializer().Serialize(collect());
}

}  // namespace rstwatch
