// Holds what the correlator produced until both of its ends can be named, so that labels are
// those of the moment it happened even when Kubernetes learns a new pod a little later.
// Each event waits only for its own ends, or until its deadline: one address that never
// becomes known (loopback, outside the cluster) holds up nothing else. Not thread-safe: the
// capture loop's thread owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <variant>

#include "incident.h"

namespace rstwatch {

using HeldEvent = std::variant<Incident, Observation, ResetEvent>;

class HoldQueue {
public:
    // True when both ends can be named now.
    using Resolvable = std::function<bool(const Endpoint& client, const Endpoint& server)>;
    using Deliver = std::function<void(const HeldEvent& event)>;

    // clock: CLOCK_MONOTONIC in ns (tests give their own), read only when an event is held (most
    // are not: in a reset storm a clock read per record was a twelfth of the agent's time).
    HoldQueue(std::chrono::nanoseconds hold, Resolvable resolvable, Deliver deliver,
              std::function<int64_t()> clock = {});

    // Delivers at once when both ends are known, else holds until they are or until now + hold.
    void add(HeldEvent event);
    // Delivers, in arrival order, what became resolvable or reached its deadline; everything
    // with force (at shutdown: nothing counted is lost).
    void flush(int64_t now_ns, bool force = false);
    size_t held() const { return held_.size(); }

private:
    struct Held {
        int64_t deadline_ns;
        HeldEvent event;
    };
    bool resolvable(const HeldEvent& event) const;

    int64_t hold_ns_;
    Resolvable resolvable_;
    Deliver deliver_;
    std::function<int64_t()> clock_;
    std::deque<Held> held_;
};

}  // namespace rstwatch
