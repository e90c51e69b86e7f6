// Predicts stale-keepalive 502s before they happen: infers each server's idle timeout from
// the idle ages at which it closes healthy connections, the client's from its own idle closes
// and reuses, and flags pairs where the client keeps or reuses connections up to the
// server's timeout. Pure: no clock, no I/O.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "incident.h"
#include "pair.h"

namespace rstwatch {

struct InferenceOptions {
    // Observations needed before an estimate is published (metrics stay absent until then).
    size_t min_evidence = 5;
    // Most recent observations kept per pair and kind.
    size_t window = 512;
    // Reuse at idle ages >= T * (1 - race_margin) counts as reuse at the server's timeout:
    // the request and the server's FIN cross on the wire within that window.
    double race_margin = 0.05;
    // The recommended client timeout is this fraction of the server's.
    double recommended_fraction = 0.75;
};

struct TimeoutEstimate {
    double seconds = 0;
    size_t evidence = 0;  // observations the estimate rests on (after outliers are set aside)
};

// The concrete change to make on the client.
struct KeepaliveFix {
    std::string client_kind;  // "nginx", "ingress-nginx", "envoy", "haproxy", "nodejs", "java", "python", "go", ""
    double value_s = 0;       // the value to set
    std::string setting;      // e.g. "nginx upstream keepalive_timeout 15s;"
};

struct PairVerdict {
    PairKey pair;
    std::optional<TimeoutEstimate> server_timeout;
    std::optional<TimeoutEstimate> client_timeout;
    std::optional<double> max_reuse_idle_s;  // the largest idle age at which the client reused a connection
    size_t reuses = 0;
    size_t server_closes = 0;
    size_t client_closes = 0;
    std::array<uint64_t, kCauseCount> incidents{};
    // nullopt: not enough evidence either way.
    std::optional<bool> mismatch;
    std::string reason;  // why, in one sentence
    std::optional<KeepaliveFix> fix;
    std::string client_comm;
    // Counts per idle bucket (kIdleBucketsSeconds, then +Inf) for the terminal histograms.
    std::array<uint64_t, kIdleBucketsSeconds.size() + 1> reuse_hist{};
    std::array<uint64_t, kIdleBucketsSeconds.size() + 1> server_close_hist{};
    std::array<uint64_t, kIdleBucketsSeconds.size() + 1> client_close_hist{};
    // The nodes whose agents saw this pair, when several agents' verdicts were merged
    // (merge_verdicts, diagnosis.h); empty for one agent's own verdicts.
    std::vector<std::string> nodes;
};

// Median of the samples that agree with the bulk: values farther than max(5 % of the median,
// 3 median absolute deviations) from the median are outliers. nullopt without samples.
std::optional<TimeoutEstimate> robust_timeout(std::vector<double> samples);

// Recognises the client kind from its process name and workload, and says what to set.
KeepaliveFix recommend_fix(const std::string& comm, const Identity& client, double server_timeout_s,
                           double recommended_fraction);

class TimeoutInference {
public:
    explicit TimeoutInference(InferenceOptions options = {});

    void observe(const PairKey& pair, const Observation& observation);
    void incident(const PairKey& pair, const Incident& incident);

    PairVerdict verdict(const PairKey& pair) const;
    std::vector<PairVerdict> verdicts() const;
    // Pairs that became a mismatch, whose recommended setting changed (e.g. the client was
    // recognised), or that were reported as a mismatch and are not one any more (mismatch ==
    // false), since the last call: the agent logs each once and turns them into Events.
    std::vector<PairVerdict> take_changes();
    // The pairs with evidence (e.g. to find the pods of a workload pair).
    std::vector<PairKey> pairs() const;
    void forget(const PairKey& pair);
    size_t pair_count() const { return pairs_.size(); }

private:
    struct Evidence {
        std::deque<double> reuses;
        std::deque<double> server_closes;
        std::deque<double> client_closes;
        size_t reuses_total = 0;
        size_t server_closes_total = 0;
        size_t client_closes_total = 0;
        std::array<uint64_t, kCauseCount> incidents{};
        // Client idle closes since the last server idle close or stale-keepalive incident: enough
        // of them, all below the server's timeout, mean the client was fixed.
        size_t client_closes_since_trouble = 0;
        std::string client_comm;
        // What was last reported through take_changes().
        std::optional<bool> reported_mismatch;
        std::string reported_setting;
    };
    void push(std::deque<double>& samples, double value);
    // The same close seen from both ends (client and server on this node) counts once.
    bool seen_recently(const Observation& observation);

    InferenceOptions options_;
    std::map<PairKey, Evidence, PairKeyLess> pairs_;
    std::map<std::string, uint64_t> recent_closes_;  // connection + kind -> ts_ns
    uint64_t last_purge_ns_ = 0;
};

}  // namespace rstwatch
