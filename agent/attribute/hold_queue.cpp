#include "hold_queue.h"

#include "clock.h"

namespace rstwatch {

HoldQueue::HoldQueue(std::chrono::nanoseconds hold, Resolvable resolvable, Deliver deliver,
                     std::function<int64_t()> clock)
    : hold_ns_(hold.count()),
      resolvable_(std::move(resolvable)),
      deliver_(std::move(deliver)),
      clock_(clock ? std::move(clock) : std::function<int64_t()>(monotonic_ns)) {}

bool HoldQueue::resolvable(const HeldEvent& event) const {
    return std::visit([&](const auto& e) { return resolvable_(e.client, e.server); }, event);
}

void HoldQueue::add(HeldEvent event) {
    if (resolvable(event)) {
        deliver_(event);
        return;
    }
    held_.push_back(Held{clock_() + hold_ns_, std::move(event)});
}

void HoldQueue::flush(int64_t now_ns, bool force) {
    for (auto it = held_.begin(); it != held_.end();) {
        if (force || it->deadline_ns <= now_ns || resolvable(it->event)) {
            deliver_(it->event);
            it = held_.erase(it);
        } else {
            ++it;
        }
    }
}

}  // namespace rstwatch
