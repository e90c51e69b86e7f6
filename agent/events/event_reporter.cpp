#include "event_reporter.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "clock.h"

namespace rstwatch {

namespace {

constexpr std::chrono::milliseconds kFirstBackoff{1000};
constexpr std::chrono::milliseconds kMaxBackoff{60'000};
constexpr std::chrono::milliseconds kMaxRetryAfter{300'000};
// How often due() is asked when nothing wakes the thread: the limits are in seconds.
constexpr std::chrono::milliseconds kTick{1000};

int64_t unix_ns() { return clock_ns(CLOCK_REALTIME); }

}  // namespace

EventReporter::EventReporter(KubeConfig config, std::string node, EventLimits limits, PodUidLookup pod_uid,
                             std::chrono::milliseconds write_timeout)
    : writer_(std::move(config), write_timeout), pod_uid_(std::move(pod_uid)), policy_(limits, std::move(node)) {}

EventReporter::~EventReporter() { stop(); }

void EventReporter::start() {
    if (thread_.joinable()) return;
    thread_ = std::thread([this] { run(); });
}

void EventReporter::stop() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    writer_.stop();
    wake_.notify_all();
    if (thread_.joinable()) thread_.join();
}

void EventReporter::incident(const PodRef& client, const PairKey& pair, const Incident& incident) {
    std::lock_guard lock(mutex_);
    policy_.incident(client, pair, incident, monotonic_ns(), unix_ns());
}

void EventReporter::verdict(const std::vector<PodRef>& clients, const PairVerdict& verdict) {
    std::lock_guard lock(mutex_);
    policy_.verdict(clients, verdict, monotonic_ns(), unix_ns());
}

EventReporterStats EventReporter::stats() const {
    std::lock_guard lock(mutex_);
    EventReporterStats s = stats_;
    s.policy = policy_.stats();
    return s;
}

void EventReporter::run() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        wake_.wait_for(lock, std::max(kTick, backoff_), [this] { return stopping_; });
        if (stopping_) break;
        std::vector<EventWrite> writes = policy_.due(monotonic_ns(), unix_ns());
        for (size_t i = 0; i < writes.size(); ++i) {
            lock.unlock();  // incidents keep flowing while the API answers
            write(writes[i]);
            lock.lock();
            if (stopping_ || backoff_.count() > 0) {
                // The API failed: the rest wait for the backoff, still counted as in the policy.
                for (size_t j = i + 1; j < writes.size(); ++j)
                    policy_.completed(writes[j], KubeWriteResult::unavailable, monotonic_ns());
                break;
            }
        }
    }
}

// One write, outside the lock; its result goes back to the policy under it.
void EventReporter::write(EventWrite& write) {
    if (write.create && pod_uid_) {
        std::string uid = pod_uid_(write.body["regarding"]["namespace"].get<std::string>(),
                                   write.body["regarding"]["name"].get<std::string>());
        if (!uid.empty()) write.body["regarding"]["uid"] = uid;
    }
    const std::string body = write.body.dump();
    KubeWriteAnswer answer = write.create ? writer_.create(events_collection_path(write.namespace_), body)
                                          : writer_.merge_patch(event_path(write.namespace_, write.name), body);
    std::lock_guard lock(mutex_);
    policy_.completed(write, answer.result, monotonic_ns());
    if (answer.result != KubeWriteResult::stopped) note_result(write, answer);
}

// Counts, logs once per outage, and sets the backoff (under the lock).
void EventReporter::note_result(const EventWrite& write, const KubeWriteAnswer& answer) {
    ++stats_.writes[{write.create ? "create" : "patch", std::string(kube_write_result_name(answer.result))}];
    switch (answer.result) {
        case KubeWriteResult::ok:
            if (stats_.failing)
                spdlog::info("Kubernetes Events: the API accepts writes again ({} failed during the outage)",
                             failures_in_outage_);
            stats_.failing = false;
            failures_in_outage_ = 0;
            backoff_ = std::chrono::milliseconds(0);
            return;
        case KubeWriteResult::conflict:
        case KubeWriteResult::not_found:
            return;  // the policy renames or recreates: not an outage
        case KubeWriteResult::invalid:
            spdlog::error("Kubernetes Events: the API refused {} {}/{} as invalid, dropping it: {}", write.reason,
                          write.namespace_, write.name, answer.error);
            return;
        default:
            break;
    }
    ++failures_in_outage_;
    if (!stats_.failing)
        spdlog::warn("Kubernetes Events: {}{}; incidents are still counted in the metrics and streamed, Events are "
                     "retried with their counts (rstwatch_kube_event_writes_total)",
                     answer.error,
                     answer.result == KubeWriteResult::forbidden
                         ? " (the ClusterRole needs create and patch on events in the events.k8s.io group)"
                         : "");
    stats_.failing = true;
    backoff_ = backoff_.count() == 0 ? kFirstBackoff : std::min(backoff_ * 2, kMaxBackoff);
    if (answer.retry_after_s)
        backoff_ = std::min<std::chrono::milliseconds>(
            std::max<std::chrono::milliseconds>(backoff_, std::chrono::seconds(*answer.retry_after_s)), kMaxRetryAfter);
}

}  // namespace rstwatch
