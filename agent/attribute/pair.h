// A named connection pair: what metrics, inference and diagnosis are keyed by.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

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

// name_pair() remembered per pair of address texts and server port while the attributor's
// naming epoch stays the same: a reset storm names the same few pairs for every record (parsing
// the addresses back and copying the names was a quarter of the agent's time in one). Events
// from before the last change of the cluster are named without the memory. One thread only.
class PairNamer {
public:
    static constexpr size_t kDefaultCapacity = 4096;  // pairs; all are forgotten when full
    explicit PairNamer(const Attributor& attributor, size_t capacity = kDefaultCapacity);
    // Valid until the next call.
    const PairKey& name(const Endpoint& client, const Endpoint& server, std::optional<int64_t> at_ns);
    // Whether a source names both ends now (an end that is not an IP address counts as named):
    // what the agent holds an event for while Kubernetes may still be learning a pod.
    bool known_ends(const Endpoint& client, const Endpoint& server);
    size_t remembered() const { return named_.size(); }

private:
    struct Key {
        std::string client_ip;
        std::string server_ip;
        uint16_t server_port = 0;
    };
    struct KeyView {
        std::string_view client_ip;
        std::string_view server_ip;
        uint16_t server_port = 0;
        KeyView(const Key& k) : client_ip(k.client_ip), server_ip(k.server_ip), server_port(k.server_port) {}
        KeyView(std::string_view c, std::string_view s, uint16_t p) : client_ip(c), server_ip(s), server_port(p) {}
        bool operator==(const KeyView&) const = default;
    };
    // Transparent: found by views of the event's texts, without copying them.
    struct KeyHash {
        using is_transparent = void;
        size_t operator()(const KeyView& k) const noexcept;
    };
    struct KeyEqual {
        using is_transparent = void;
        bool operator()(const KeyView& a, const KeyView& b) const noexcept { return a == b; }
    };
    struct Named {
        PairKey pair;
        std::optional<bool> known_ends;  // asked for the first time then
    };
    using NamedMap = std::unordered_map<Key, Named, KeyHash, KeyEqual>;
    // The pair's entry, named as at at_ns; nullptr when not to be remembered (see name()).
    Named* remembered_entry(const Endpoint& client, const Endpoint& server, std::optional<int64_t> at_ns);

    const Attributor& attributor_;
    const size_t capacity_;
    std::optional<Attributor::Epoch> epoch_;
    NamedMap named_;
    NamedMap::value_type* last_ = nullptr;  // tried first: storms repeat one pair
    PairKey unremembered_;
};

}  // namespace rstwatch
