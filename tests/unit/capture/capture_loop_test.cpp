// The one capture loop against a fake record source: what every command (agent, trace,
// diagnose) gets from it without repeating it.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <cerrno>
#include <deque>
#include <vector>

#include "capture_loop.h"
#include "rstwatch.h"

namespace rstwatch {
namespace {

constexpr int64_t kSec = 1'000'000'000LL;

// A client connection's peer-FIN record: enough for the correlator to remember the connection.
rw_record peer_fin(uint64_t sock_id, int64_t ts_ns) {
    rw_record r{};
    r.type = RW_REC_PEER_FIN;
    r.family = AF_INET;
    r.ts_ns = static_cast<uint64_t>(ts_ns);
    r.sock_id = sock_id;
    r.conn.start_ns = static_cast<uint64_t>(ts_ns) - 1000;
    r.conn.role = RW_ROLE_CLIENT;
    r.saddr[10] = r.saddr[11] = 0xff;
    r.saddr[12] = 10, r.saddr[15] = 1;
    r.daddr[10] = r.daddr[11] = 0xff;
    r.daddr[12] = 10, r.daddr[15] = 2;
    r.sport = static_cast<uint16_t>(40000 + sock_id);
    r.dport = 80;
    r.state = RW_TCP_CLOSE_WAIT;
    r.old_state = RW_TCP_ESTABLISHED;
    return r;
}

// Each poll: advances the fake clock by a second, hands over the next batch, adds lost records.
class FakeSource : public RecordSource {
public:
    struct Poll {
        std::vector<rw_record> records;
        uint64_t newly_lost = 0;
        int result = 0;  // < 0: returned as -errno instead of delivering
    };
    FakeSource(int64_t* clock, std::deque<Poll> polls) : clock_(clock), polls_(std::move(polls)) {}
    void set_sink(RecordSink sink) { sink_ = std::move(sink); }

    int poll(int timeout_ms) override {
        timeouts.push_back(timeout_ms);
        if (polls_.empty()) return 0;
        Poll next = std::move(polls_.front());
        polls_.pop_front();
        if (timeout_ms > 0) *clock_ += kSec;
        lost_ += next.newly_lost;
        if (next.result < 0) return next.result;
        for (const rw_record& r : next.records) sink_(&r, sizeof(r));
        return static_cast<int>(next.records.size());
    }
    uint64_t lost_records() const override { return lost_; }

    std::vector<int> timeouts;

private:
    int64_t* clock_;
    std::deque<Poll> polls_;
    uint64_t lost_ = 0;
    RecordSink sink_;
};

struct LoopHarness {
    int64_t clock = 100 * kSec;
    int polls_before_stop = 1000;
    Correlator correlator{[] {
        CorrelatorOptions o;
        o.linger_ns = 5 * kSec;
        return o;
    }()};
    CaptureHooks hooks;
    CaptureLoopOptions options;
    std::vector<std::pair<uint64_t, uint64_t>> lost_calls;
    size_t records_seen = 0;

    CaptureResult run(FakeSource& source) {
        hooks.on_output = [&](CorrelatorOutput&) { ++records_seen; };
        hooks.on_lost = [&](uint64_t fresh, uint64_t total) { lost_calls.emplace_back(fresh, total); };
        options.now_ns = [&] { return clock; };
        options.stop = [&, polls = 0]() mutable { return ++polls > polls_before_stop; };
        CaptureLoop loop(correlator, hooks, options);
        source.set_sink(loop.sink());
        return loop.run(source);
    }
};

TEST(CaptureLoop, LostRecordsReachTheCorrelatorAndTheHook) {
    LoopHarness h;
    h.polls_before_stop = 3;
    FakeSource source(&h.clock, {{{}, 3}, {{}, 0}, {{}, 2}, {{}, 4}});  // the last one at the drain
    CaptureResult result = h.run(source);
    EXPECT_TRUE(result.ok);
    EXPECT_EQ(result.lost_records, 9u);
    EXPECT_EQ(h.correlator.stats().records_lost, 9u);
    EXPECT_EQ(h.lost_calls, (std::vector<std::pair<uint64_t, uint64_t>>{{3, 3}, {2, 5}, {4, 9}}));
}

// The kernel's count is read once per lost_check_ns (a syscall), not after every poll; what was
// lost meanwhile is still counted, all of it by the end.
TEST(CaptureLoop, LostRecordsAreReadOncePerCheckIntervalAndAllCounted) {
    LoopHarness h;
    h.polls_before_stop = 7;
    h.options.lost_check_ns = 3 * kSec;  // polls are a second apart here
    std::deque<FakeSource::Poll> polls(7, FakeSource::Poll{{}, 1});
    polls.push_back({{}, 10});  // at the drain
    FakeSource source(&h.clock, std::move(polls));
    CaptureResult result = h.run(source);
    EXPECT_EQ(result.lost_records, 17u);
    EXPECT_EQ(h.correlator.stats().records_lost, 17u);
    EXPECT_EQ(h.lost_calls, (std::vector<std::pair<uint64_t, uint64_t>>{{1, 1}, {3, 4}, {3, 7}, {10, 17}}));
}

TEST(CaptureLoop, FinishedConnectionsAreForgottenAfterTheirLinger) {
    LoopHarness h;
    h.polls_before_stop = 10;
    std::deque<FakeSource::Poll> polls;
    polls.push_back({{peer_fin(1, h.clock), peer_fin(2, h.clock)}});
    for (int i = 0; i < 9; ++i) polls.push_back({});
    FakeSource source(&h.clock, std::move(polls));
    h.run(source);
    EXPECT_EQ(h.records_seen, 2u);
    EXPECT_EQ(h.correlator.stats().records, 2u);
    // 10 s of fake time against a 5 s linger: expire() ran and both are gone.
    EXPECT_EQ(h.correlator.remembered_connections(), 0u);
}

TEST(CaptureLoop, WithoutTicksNothingIsForgotten) {
    // The control for the test above: a tick longer than the run never expires.
    LoopHarness h;
    h.polls_before_stop = 10;
    h.options.tick_ns = 3600 * kSec;
    std::deque<FakeSource::Poll> polls;
    polls.push_back({{peer_fin(1, h.clock)}});
    FakeSource source(&h.clock, std::move(polls));
    h.run(source);
    EXPECT_EQ(h.correlator.remembered_connections(), 1u);
}

TEST(CaptureLoop, DeadlineStopsThenDrainsTheBuffer) {
    LoopHarness h;
    h.options.deadline_ns = h.clock + 2 * kSec;
    std::deque<FakeSource::Poll> polls;
    for (int i = 0; i < 5; ++i) polls.push_back({{peer_fin(10 + i, h.clock)}});
    FakeSource source(&h.clock, std::move(polls));
    int ticks = 0;
    h.hooks.on_tick = [&](int64_t) { ++ticks; };
    CaptureResult result = h.run(source);
    EXPECT_TRUE(result.ok);
    // Two polls reach the deadline, the third delivers what the buffer still holds (timeout 0).
    const int timeout_ms = CaptureLoopOptions{}.poll_timeout_ms;
    EXPECT_EQ(source.timeouts, (std::vector<int>{timeout_ms, timeout_ms, 0}));
    EXPECT_EQ(h.records_seen, 3u);
    EXPECT_EQ(ticks, 2);  // one per second of fake time
}

TEST(CaptureLoop, InterruptedPollContinuesAReadErrorEndsTheLoop) {
    LoopHarness h;
    FakeSource source(&h.clock, {{{}, 0, -EINTR}, {{peer_fin(1, h.clock)}}, {{}, 0, -EIO}, {{peer_fin(2, h.clock)}}});
    CaptureResult result = h.run(source);
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "reading the BPF ring buffer failed: Input/output error");
    EXPECT_EQ(h.records_seen, 2u) << "one before the error, one drained after it";
}

TEST(CaptureLoop, CorrelatorOptionsFollowTheKernel) {
    LoaderOptions loader;
    loader.idle_threshold_s = 2.0;
    KernelFeatures features;
    features.hz = 1000;
    features.rst_reason_names = {{2, "NO_SOCKET"}};
    CorrelatorOptions options = correlator_options_for(loader, features);
    EXPECT_EQ(options.idle_threshold_ns, 1'000'000'000u);  // closes from half the write threshold
    EXPECT_EQ(options.jiffy_ns, 1'000'000u);
    ASSERT_TRUE(options.reset_reason_name);
    EXPECT_EQ(options.reset_reason_name(2), "NO_SOCKET");
    EXPECT_EQ(options.reset_reason_name(7), "");
    features.hz = 0;  // unknown: the common 250
    EXPECT_EQ(correlator_options_for(loader, features).jiffy_ns, 4'000'000u);
}

}  // namespace
}  // namespace rstwatch
