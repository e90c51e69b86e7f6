#include "hold_queue.h"

namespace rstwatch {

HoldQueue::HoldQueue(std::chrono::nanoseconds hold, Resolvable resolvable, Deliver deliver)
    : hold_ns_(hold.count()), resolvable_(std::move(resolvable)), deliver_(std::move(deliver)) {}

bool HoldQueue::resolvable(const HeldEvent& event) const {
    return std::visit([&](const auto& e) { return resolvable_(e.client, e.server); }, event);
}

void HoldQueue::add(HeldEvent event, int64_t now_ns) {
    if (resolvable(event)) {
        deliver_(event);
        return;
    }
    held_.push_back(Held{now_ns + hold_ns_, std::move(event)});
}

void HoldQueue::add_with_clock(HeldEvent event, int64_t (*now_ns)()) {
    if (resolvable(event)) {
        deliver_(event);
        return;
    }
    held_.push_back(Held{now_ns() + hold_ns_, std::move(event)});
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
