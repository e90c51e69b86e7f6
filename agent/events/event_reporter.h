// Writes the Events that EventPolicy decides, from a thread of its own: the capture loop only
// hands incidents and verdicts over (a map update under a mutex) and never waits for the API.
// When the API is down or refuses, writes back off (Retry-After when given) and are retried
// with the counts accumulated meanwhile; failures are counted per verb and result, and logged
// once per outage (a warning when it starts, a line when writes succeed again).
#pragma once

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "event_policy.h"
#include "kube_writer.h"

namespace rstwatch {

struct EventReporterStats {
    EventPolicyStats policy;
    std::map<std::pair<std::string, std::string>, uint64_t> writes;  // (create|patch, result) -> writes
    bool failing = false;  // the last write failed (an outage in progress)
};

class EventReporter {
public:
    // The uid of a pod (namespace, name), "" when unknown: set on each Event's `regarding` so
    // `kubectl describe pod` finds it.
    using PodUidLookup = std::function<std::string(const std::string&, const std::string&)>;

    EventReporter(KubeConfig config, std::string node, EventLimits limits, PodUidLookup pod_uid,
                  std::chrono::milliseconds write_timeout = std::chrono::seconds(10));
    ~EventReporter();  // stop()
    EventReporter(const EventReporter&) = delete;
    EventReporter& operator=(const EventReporter&) = delete;

    void start();
    // Interrupts a write in flight and joins the thread; what was not written yet is not.
    void stop();

    void incident(const PodRef& client, const PairKey& pair, const Incident& incident);
    void verdict(const std::vector<PodRef>& clients, const PairVerdict& verdict);

    EventReporterStats stats() const;

private:
    void run();
    void write(EventWrite& write);
    void note_result(const EventWrite& write, const KubeWriteAnswer& answer);

    KubeWriter writer_;
    PodUidLookup pod_uid_;
    mutable std::mutex mutex_;  // guards policy_, stats_, stopping_
    std::condition_variable wake_;
    EventPolicy policy_;
    EventReporterStats stats_;
    bool stopping_ = false;
    std::thread thread_;
    // Backoff after a failed write (the reporter's thread only).
    std::chrono::milliseconds backoff_{0};
    uint64_t failures_in_outage_ = 0;
};

}  // namespace rstwatch
