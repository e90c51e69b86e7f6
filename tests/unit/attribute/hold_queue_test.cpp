#include <gtest/gtest.h>

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "hold_queue.h"

namespace rstwatch {
namespace {

constexpr int64_t kMs = 1'000'000;

Incident incident_between(const std::string& client, const std::string& server) {
    Incident i;
    i.client = {client, 40000};
    i.server = {server, 8080};
    return i;
}

struct Harness {
    int64_t now = 0;
    int clock_reads = 0;
    std::set<std::string> known;
    std::vector<std::string> delivered;  // "kind client->server"
    HoldQueue queue{std::chrono::milliseconds(2000),
                    [this](const Endpoint& c, const Endpoint& s) { return known.count(c.ip) && known.count(s.ip); },
                    [this](const HeldEvent& event) {
                        std::visit(
                            [&](const auto& e) {
                                const char* kind = std::is_same_v<std::decay_t<decltype(e)>, Incident>      ? "incident"
                                                   : std::is_same_v<std::decay_t<decltype(e)>, Observation> ? "observation"
                                                                                                            : "reset";
                                delivered.push_back(std::string(kind) + " " + e.client.ip + "->" + e.server.ip);
                            },
                            event);
                    },
                    [this] {
                        ++clock_reads;
                        return now;
                    }};
};

TEST(HoldQueue, KnownEndsAreDeliveredAtOnce) {
    Harness h;
    h.known = {"10.0.0.1", "10.0.0.2"};
    h.queue.add(incident_between("10.0.0.1", "10.0.0.2"));
    EXPECT_EQ(h.delivered, (std::vector<std::string>{"incident 10.0.0.1->10.0.0.2"}));
    EXPECT_EQ(h.queue.held(), 0u);
}

TEST(HoldQueue, WaitsForItsOwnEndsOnly) {
    Harness h;
    h.known = {"10.0.0.1", "10.0.0.2"};
    h.queue.add(incident_between("10.0.0.1", "10.0.0.9"));  // the server pod is not listed yet
    Observation observation;
    observation.client = {"10.0.0.7", 1};  // never becomes known
    observation.server = {"10.0.0.2", 80};
    h.now = 100 * kMs;
    h.queue.add(observation);
    EXPECT_TRUE(h.delivered.empty());
    EXPECT_EQ(h.queue.held(), 2u);

    h.known.insert("10.0.0.9");  // the watch caught up
    h.queue.flush(500 * kMs);
    EXPECT_EQ(h.delivered, (std::vector<std::string>{"incident 10.0.0.1->10.0.0.9"}));
    EXPECT_EQ(h.queue.held(), 1u);
}

TEST(HoldQueue, TheClockIsReadOnlyForWhatIsHeld) {
    Harness h;
    h.known = {"10.0.0.1", "10.0.0.2"};
    h.now = 100 * kMs;
    h.queue.add(incident_between("10.0.0.1", "10.0.0.2"));
    EXPECT_EQ(h.clock_reads, 0);
    h.queue.add(incident_between("10.0.0.1", "10.0.0.9"));
    EXPECT_EQ(h.clock_reads, 1);
    // Held from 100 ms: its deadline is 2,100 ms.
    h.queue.flush(2099 * kMs);
    EXPECT_EQ(h.queue.held(), 1u);
    h.queue.flush(2100 * kMs);
    EXPECT_EQ(h.delivered, (std::vector<std::string>{"incident 10.0.0.1->10.0.0.2", "incident 10.0.0.1->10.0.0.9"}));
}

TEST(HoldQueue, DeadlineDeliversUnnamed) {
    Harness h;
    ResetEvent reset;
    reset.client = {"127.0.0.1", 5};
    reset.server = {"127.0.0.1", 6};
    h.now = 1000 * kMs;
    h.queue.add(reset);
    h.queue.flush(2999 * kMs);
    EXPECT_TRUE(h.delivered.empty()) << "held for 2 s";
    h.queue.flush(3000 * kMs);
    EXPECT_EQ(h.delivered, (std::vector<std::string>{"reset 127.0.0.1->127.0.0.1"}));
}

TEST(HoldQueue, ForceDeliversEverythingInArrivalOrder) {
    Harness h;
    for (int i = 0; i < 3; ++i) {
        h.now = i * kMs;
        h.queue.add(incident_between("10.1.0." + std::to_string(i), "10.2.0.1"));
    }
    h.queue.flush(0, /*force=*/true);
    EXPECT_EQ(h.delivered, (std::vector<std::string>{"incident 10.1.0.0->10.2.0.1", "incident 10.1.0.1->10.2.0.1",
                                                     "incident 10.1.0.2->10.2.0.1"}));
    EXPECT_EQ(h.queue.held(), 0u);
}

}  // namespace
}  // namespace rstwatch
