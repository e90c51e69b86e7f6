// A named connection pair: what metrics, inference and diagnosis are keyed by.
#pragma once

#include <cstdint>
#include <optional>

#include "attribution.h"
#include "incident.h"

namespace rstwatch {

struct PairKey {
    Identity client;
    Identity server;
    uint16_t server_port = 0;
    bool operator==(const PairKey&) const = default;
};

// Orders pairs (maps keyed by pair: the inference's, the merge of several nodes' verdicts, the
// incident log limiter's problems).
struct PairKeyLess {
    bool operator()(const PairKey& a, const PairKey& b) const;
};

enum class PairLabelMode {
    pod,       // one series per pod pair
    workload,  // client_pod/server_pod are "": one series per workload pair
};

// The same pair at workload level: pod names dropped.
inline PairKey workload_pair(PairKey pair) {
    pair.client.pod.clear();
    pair.server.pod.clear();
    return pair;
}

// Both ends named with what the attributor knows (at_ns: as it knew them at the event's
// CLOCK_MONOTONIC time, see ClusterState::lookup; nullopt: now); an end whose address is not IP
// text keeps that text as its workload.
PairKey name_pair(const Attributor& attributor, const Endpoint& client, const Endpoint& server,
                  std::optional<int64_t> at_ns = std::nullopt);

}  // namespace rstwatch
