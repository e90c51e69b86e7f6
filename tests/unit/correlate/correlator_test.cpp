// Correlator tests: synthetic record timelines produced by a small kernel model (Sock)
// that keeps the live tcp_sock fields and the per-socket snapshot the way the BPF side
// does, so every expected result is driven by a real sequence of socket events.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "correlator.h"

using namespace rstwatch;

namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kThreshold = 1 * kSec;
constexpr uint64_t kLinger = 120 * kSec;
constexpr uint32_t kNetns = 4026531840u;

// Raw enum sk_rst_reason numbers shift between kernels: the namer resolves them.
constexpr uint32_t kReasonNotSpecified = 2;
constexpr uint32_t kReasonAbortOnClose = 17;
constexpr uint32_t kReasonAbortOnData = 18;
constexpr uint32_t kReasonTimewaitSocket = 19;

std::string test_reason_name(uint32_t raw) {
    switch (raw) {
    case kReasonNotSpecified: return "NOT_SPECIFIED";
    case kReasonAbortOnClose: return "TCP_ABORT_ON_CLOSE";
    case kReasonAbortOnData: return "TCP_ABORT_ON_DATA";
    case kReasonTimewaitSocket: return "TCP_TIMEWAIT_SOCKET";
    default: return "";
    }
}

constexpr uint64_t kJiffy = 4 * kMs;  // HZ=250

CorrelatorOptions test_options() {
    CorrelatorOptions o;
    o.reset_reason_name = test_reason_name;
    o.idle_threshold_ns = kThreshold;
    o.linger_ns = kLinger;
    o.jiffy_ns = kJiffy;
    return o;
}

uint8_t set_addr(uint8_t out[RW_ADDR_LEN], const std::string& ip) {
    std::memset(out, 0, RW_ADDR_LEN);
    in_addr v4{};
    if (inet_pton(AF_INET, ip.c_str(), &v4) == 1) {
        out[10] = 0xff;
        out[11] = 0xff;
        std::memcpy(out + 12, &v4, 4);
        return AF_INET;
    }
    EXPECT_EQ(inet_pton(AF_INET6, ip.c_str(), out), 1) << ip;
    return AF_INET6;
}

void set_comm(char out[RW_COMM_LEN], const char* comm) {
    std::memset(out, 0, RW_COMM_LEN);
    std::strncpy(out, comm, RW_COMM_LEN - 1);
}

// One socket as the kernel sees it; each event appends the records the BPF side emits.
class Sock {
public:
    Sock(uint8_t role, const std::string& local, uint16_t lport, const std::string& remote,
         uint16_t rport, uint64_t start_ns, uint64_t sock_id = 0xffff8880'12340000ULL) {
        base_.sock_id = sock_id;
        base_.family = set_addr(base_.saddr, local);
        set_addr(base_.daddr, remote);
        base_.sport = lport;
        base_.dport = rport;
        base_.netns = kNetns;
        base_.rst_reason = RW_RST_REASON_NONE;
        base_.conn.start_ns = start_ns;
        base_.conn.role = start_ns != 0 ? role : uint8_t{RW_ROLE_UNKNOWN};
        if (start_ns != 0 && role == RW_ROLE_CLIENT) {
            // connect() ran in the owning process: the kernel side names it from there.
            base_.conn.writer_pid = base_.conn.writer_tid = kConnectorPid;
            set_comm(base_.conn.writer_comm, "nginx");
        }
        last_data_ns_ = last_send_ns_ = last_recv_ns_ = start_ns;
    }

    static constexpr uint32_t kConnectorPid = 4242;

    std::vector<rw_record> records;
    uint8_t state() const { return state_; }

    // The application writes `len` bytes (sendmsg runs in its context): one data segment.
    // tls: the write is one TLS alert record (a close_notify): its content type, else 0.
    Sock& write(uint64_t ts, uint32_t len, uint32_t pid = 4242, const char* comm = "nginx", uint8_t tls = 0) {
        const bool in_close_wait = state_ == RW_TCP_CLOSE_WAIT;
        const bool idle = ts - last_data_ns_ >= kThreshold;
        if (base_.conn.role == RW_ROLE_CLIENT) ++base_.conn.requests;  // data_segs_out
        // A server's TLS alert after idle or in CLOSE_WAIT marks the connection (its teardown).
        if (base_.conn.role == RW_ROLE_SERVER && (idle || in_close_wait) && tls != 0) {
            base_.conn.armed_tls = tls;
            base_.conn.flags |= RW_F_TLS_ALERT_SENT;
        }
        // The write hook looks at the per-socket state only after idle or in CLOSE_WAIT.
        bool may_arm = base_.conn.role == RW_ROLE_CLIENT && (idle || in_close_wait);
        if (may_arm && armed()) {
            // An armed write stays armed until a response byte arrives (or forever
            // after the peer's FIN); once answered, the next armed write replaces it.
            if ((base_.conn.flags & RW_F_WRITE_IN_CLOSE_WAIT) ||
                bytes_received_ == base_.conn.armed_bytes_received)
                may_arm = false;
            else
                base_.conn.flags &= static_cast<uint16_t>(~RW_F_ARMED);
        }
        if (may_arm) {
            auto& c = base_.conn;
            c.flags |= RW_F_ARMED;
            c.flags &= static_cast<uint16_t>(~RW_F_ARMED_INFERRED);
            if (in_close_wait)
                c.flags |= RW_F_WRITE_IN_CLOSE_WAIT;
            else
                c.flags &= static_cast<uint16_t>(~RW_F_WRITE_IN_CLOSE_WAIT);
            c.armed_tls = tls;
            c.armed_write_ns = ts;
            c.armed_idle_ns = ts - last_data_ns_;
            c.armed_bytes_received = bytes_received_;
            c.armed_write_seq = write_seq_;
            c.armed_state = state_;
            c.writer_pid = pid;
            c.writer_tid = pid;
            set_comm(c.writer_comm, comm);
            rw_record r = make(in_close_wait ? RW_REC_CLOSE_WAIT_WRITE : RW_REC_IDLE_WRITE, ts);
            r.pid = pid;
            r.tid = pid;
            set_comm(r.comm, comm);
            records.push_back(r);
        }
        write_seq_ += len;
        last_data_ns_ = last_send_ns_ = ts;
        return *this;
    }
    // The peer's data arrives and acknowledges everything we sent.
    Sock& receive(uint64_t ts, uint32_t len, bool app_reads = true) {
        bytes_received_ += len;
        if (!app_reads) unread_ += len;
        snd_una_ = write_seq_;
        last_data_ns_ = last_recv_ns_ = ts;
        if (base_.conn.role == RW_ROLE_SERVER) ++base_.conn.requests;  // data_segs_in
        return *this;
    }
    // The peer's kernel takes our data into its buffer (acknowledges it) without answering.
    Sock& peer_acks_data() {
        snd_una_ = write_seq_;
        return *this;
    }
    // The peer acknowledges our data without sending any.
    Sock& ack() {
        snd_una_ = write_seq_;
        return *this;
    }
    // The peer's FIN is processed.
    Sock& peer_fin(uint64_t ts) {
        if (state_ == RW_TCP_ESTABLISHED) {
            base_.conn.flags |= RW_F_PEER_FIN;
            base_.conn.peer_fin_ns = ts;
            settle();
            infer(ts, /*at_fin=*/true);
            transition(ts, RW_TCP_CLOSE_WAIT, RW_REC_PEER_FIN, ts - last_data_ns_ >= kThreshold);
        } else if (state_ == RW_TCP_FIN_WAIT2) {
            // The full socket closes; a timewait socket takes over (see timewait_*).
            base_.conn.flags |= RW_F_PEER_FIN;
            transition(ts, RW_TCP_CLOSE, RW_REC_CLOSED);
        }
        return *this;
    }
    // The application closes the socket (FIN).
    Sock& own_close(uint64_t ts) {
        ++write_seq_;  // the FIN takes a sequence number (tcp_send_fin: write_seq++)
        base_.conn.flags |= RW_F_APP_CLOSED;
        base_.conn.app_close_ns = ts;
        if (state_ == RW_TCP_ESTABLISHED && ts - last_data_ns_ >= 10 * kMs)
            base_.conn.flags |= RW_F_CLOSED_WHILE_IDLE;
        const uint8_t next = state_ == RW_TCP_CLOSE_WAIT ? RW_TCP_LAST_ACK : RW_TCP_FIN_WAIT1;
        transition(ts, next, RW_REC_OWN_CLOSE, ts - last_data_ns_ >= kThreshold);
        return *this;
    }
    // The peer acknowledges our FIN (and so all our data).
    Sock& our_fin_acked(uint64_t ts) {
        snd_una_ = write_seq_;
        if (state_ == RW_TCP_FIN_WAIT1) {
            state_ = RW_TCP_FIN_WAIT2;  // no record for this change
            settle();
        } else if (state_ == RW_TCP_LAST_ACK)
            transition(ts, RW_TCP_CLOSE, RW_REC_CLOSED);
        return *this;
    }
    // Retransmissions gave up: the socket dies without an answer.
    Sock& retransmit_timeout(uint64_t ts) {
        transition(ts, RW_TCP_CLOSE, RW_REC_CLOSED);
        return *this;
    }
    // The application closes with unread data: the kernel sends RST instead of FIN.
    Sock& abort_close(uint64_t ts, uint32_t reason) {
        base_.conn.flags |= RW_F_APP_CLOSED;
        base_.conn.app_close_ns = ts;
        const uint8_t old = state_;
        state_ = RW_TCP_CLOSE;  // tcp_close() sets CLOSE before sending the active reset
        rw_record r = make(RW_REC_RST_SENT, ts);
        r.old_state = old;
        r.rst_reason = reason;
        records.push_back(r);
        settle();
        if (armed()) records.push_back(make(RW_REC_CLOSED, ts));
        return *this;
    }
    // tcp_send_reset on this (full) socket, state unchanged; reply: answering a received
    // segment (the tracepoint's skb), else an active reset.
    // segment: the payload bytes of the segment a reply answers.
    Sock& rst_sent(uint64_t ts, uint32_t reason, bool reply = false, uint32_t segment = 300) {
        rw_record r = make(RW_REC_RST_SENT, ts);
        r.rst_reason = reason;
        if (reply) {
            r.conn.flags |= RW_F_REPLY_RST;
            r.segment_bytes = segment;
        }
        records.push_back(r);
        return *this;
    }
    // An orphaned FIN_WAIT1 socket gets data carrying the ACK of its FIN: FIN_WAIT2, then
    // tcp_done() (CLOSE), and only then the RST in reply (reason as the kernel gives it).
    Sock& orphan_abort_on_data(uint64_t ts, uint32_t reason, uint32_t segment = 300) {
        our_fin_acked(ts);
        transition(ts, RW_TCP_CLOSE, RW_REC_CLOSED);
        return rst_sent(ts, reason, /*reply=*/true, segment);
    }
    // tcp_reset(): tcp_receive_reset in the current state, then the socket closes.
    Sock& rst_received(uint64_t ts) {
        base_.conn.flags |= RW_F_RST_RECEIVED;
        if (state_ == RW_TCP_ESTABLISHED) {
            settle();
            infer(ts, /*at_fin=*/false);
        }
        records.push_back(make(RW_REC_RST_RECEIVED, ts));
        transition(ts, RW_TCP_CLOSE, RW_REC_CLOSED);
        return *this;
    }
    // Data the peer sent after our own close (or half-close) with the FIN acked arrives at the
    // orphan: the kernel resets it (tcp_receive_reset), tears it down, answers RST.
    Sock& abort_on_data(uint64_t ts, uint32_t reason, uint32_t segment = 300) {
        rst_received(ts);
        return rst_sent(ts, reason, /*reply=*/true, segment);
    }
    // The socket is destroyed (tcp_destroy_sock) with `unread` bytes the application never read.
    Sock& destroy(uint64_t ts) {
        if (base_.conn.role == RW_ROLE_SERVER && (base_.conn.flags & RW_F_APP_CLOSED) && unread_ > 0 &&
            !no_history())
            records.push_back(make(RW_REC_UNREAD_AT_DESTROY, ts));
        return *this;
    }
    // Data arrives that the application does not read (e.g. after its shutdown(SHUT_WR)).
    Sock& receive_unread(uint64_t ts, uint32_t len) {
        bytes_received_ += len;
        unread_ += len;
        last_data_ns_ = last_recv_ns_ = ts;
        return *this;
    }

    // The timewait socket left behind answers a late segment with RST.
    Sock& timewait_rst_sent(uint64_t ts, uint64_t tw_sock_id, uint32_t reason,
                            bool with_snapshot = true) {
        rw_record r = make(RW_REC_RST_SENT, ts);
        r.sock_id = tw_sock_id;
        r.state = RW_TCP_TIME_WAIT;
        r.old_state = 0;
        r.bytes_received = r.bytes_acked = 0;
        r.unread_bytes = 0;
        r.idle_ns = 0;
        if (!with_snapshot) r.conn = rw_conn_snapshot{};
        r.conn.flags |= RW_F_FROM_TIMEWAIT;
        r.rst_reason = reason;
        records.push_back(r);
        return *this;
    }

private:
    bool armed() const { return (base_.conn.flags & RW_F_ARMED) != 0; }
    // At a state change the kernel side drops an idle write's wait once it was answered.
    // One alert-sized record (a TLS server's close_notify, read or not) keeps it.
    void settle() {
        const uint64_t answer = bytes_received_ - base_.conn.armed_bytes_received;
        if (armed() && !(base_.conn.flags & RW_F_WRITE_IN_CLOSE_WAIT) && answer != 0 && !alert_size(answer))
            base_.conn.flags &= static_cast<uint16_t>(~RW_F_ARMED);
    }
    static bool alert_size(uint64_t n) { return n >= RW_TLS_ALERT_MIN_BYTES && n <= RW_TLS_ALERT_MAX_BYTES; }
    int32_t send_after_recv() const {
        return static_cast<int32_t>(last_send_ns_ / kJiffy) - static_cast<int32_t>(last_recv_ns_ / kJiffy);
    }
    // The kernel side's infer_waiting_request(): a request the write hook did not record.
    void infer(uint64_t ts, bool at_fin) {
        if (base_.conn.role != RW_ROLE_CLIENT || armed() || no_history()) return;
        const int32_t gap = send_after_recv();
        const uint32_t unacked = write_seq_ - snd_una_;
        if (at_fin ? (unacked == 0 && gap <= 0) : (gap <= 0 || gap * kJiffy < 10 * kMs)) return;
        auto& c = base_.conn;
        c.flags = static_cast<uint16_t>((c.flags & ~RW_F_WRITE_IN_CLOSE_WAIT) | RW_F_ARMED | RW_F_ARMED_INFERRED);
        c.armed_idle_ns = gap > 0 && !alert_size(unread_) ? static_cast<uint64_t>(gap) * kJiffy : 0;
        c.armed_write_ns = ts - (ts / kJiffy - last_send_ns_ / kJiffy) * kJiffy;
        c.armed_bytes_received = bytes_received_;
        c.armed_write_seq = snd_una_;
        c.armed_state = RW_TCP_ESTABLISHED;
        c.armed_tls = 0;
    }
    bool no_history() const { return base_.conn.start_ns == 0; }

    // A state change (the kernel's state hook): settles an answered idle write, then emits a
    // record of `type` when the connection is armed or `also` holds.
    void transition(uint64_t ts, uint8_t next, uint8_t type, bool also = false) {
        const uint8_t old = state_;
        state_ = next;
        settle();
        if (!(armed() || also) || no_history()) return;
        rw_record r = make(type, ts);
        r.old_state = old;
        records.push_back(r);
    }

    rw_record make(uint8_t type, uint64_t ts) const {
        rw_record r = base_;
        r.type = type;
        r.ts_ns = ts;
        r.idle_ns = ts - last_data_ns_;
        r.state = state_;
        r.bytes_received = bytes_received_;
        r.bytes_acked = snd_una_ - 1000;
        r.snd_una = snd_una_;
        r.unread_bytes = unread_;
        r.send_after_recv = send_after_recv();
        r.unacked_bytes = write_seq_ - snd_una_;
        // Softirq context: whoever was interrupted. Never the writer.
        r.pid = 17;
        r.tid = 17;
        set_comm(r.comm, "ksoftirqd/1");
        if (no_history()) r.conn = rw_conn_snapshot{};  // no per-socket entry in the map
        return r;
    }

    rw_record base_{};
    uint8_t state_ = RW_TCP_ESTABLISHED;
    uint64_t last_data_ns_ = 0;
    uint64_t last_send_ns_ = 0;  // lsndtime
    uint64_t last_recv_ns_ = 0;  // icsk_ack.lrcvtime
    uint64_t bytes_received_ = 0;
    uint32_t write_seq_ = 1000;
    uint32_t snd_una_ = 1000;
    uint32_t unread_ = 0;
};

rw_record no_socket_rst(uint64_t ts) {
    rw_record r{};
    r.type = RW_REC_RST_SENT;
    r.ts_ns = ts;
    r.family = set_addr(r.saddr, "10.0.0.2");
    set_addr(r.daddr, "10.0.0.1");
    r.sport = 8080;
    r.dport = 40000;
    r.rst_reason = kReasonNotSpecified;
    r.conn.flags = RW_F_NO_SOCKET;
    return r;
}

struct Harness {
    Correlator c{test_options()};
    CorrelatorOutput out;
    void feed(const std::vector<rw_record>& records) {
        for (const auto& r : records) c.on_record(r, out);
    }
};

std::vector<rw_record> without(std::vector<rw_record> v, uint8_t type) {
    v.erase(std::remove_if(v.begin(), v.end(), [&](const rw_record& r) { return r.type == type; }),
            v.end());
    return v;
}

size_t count_type(const std::vector<rw_record>& v, uint8_t type) {
    return static_cast<size_t>(
        std::count_if(v.begin(), v.end(), [&](const rw_record& r) { return r.type == type; }));
}

// nginx (client) -> upstream (server) timelines.
constexpr uint64_t T0 = 1000 * kSec;  // connection start
const char* kProxyIp = "10.244.1.5";
const char* kUpstreamIp = "10.244.2.7";
constexpr uint16_t kProxyPort = 43210;
constexpr uint16_t kUpstreamPort = 8080;

Sock proxy_socket(uint64_t start = T0, uint64_t sock_id = 0xffff8880'aaaa0000ULL) {
    return Sock(RW_ROLE_CLIENT, kProxyIp, kProxyPort, kUpstreamIp, kUpstreamPort, start, sock_id);
}
Sock upstream_socket(uint64_t start = T0, uint64_t sock_id = 0xffff8880'bbbb0000ULL) {
    return Sock(RW_ROLE_SERVER, kUpstreamIp, kUpstreamPort, kProxyIp, kProxyPort, start, sock_id);
}

// One complete request/response exchange at `ts` (not idle: no record).
void exchange(Sock& s, uint64_t ts) { s.write(ts, 300).receive(ts + 5 * kMs, 1200); }
void serve(Sock& s, uint64_t ts) { s.receive(ts, 300).write(ts + 4 * kMs, 1200, 99, "java"); }

}  // namespace

// ---------------------------------------------------------------- client causes

TEST(CorrelatorClient, WriteAfterFinViaRst) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.peer_fin(last + 2 * kSec);                   // upstream idle-closes: CLOSE_WAIT
    s.write(last + 2 * kSec + 1 * kMs, 300);       // nginx reuses the pooled connection
    s.rst_received(last + 2 * kSec + 2 * kMs);     // upstream answers with RST
    ASSERT_EQ(count_type(s.records, RW_REC_CLOSE_WAIT_WRITE), 1u);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::write_after_fin);
    EXPECT_EQ(inc.observer, Observer::client);
    EXPECT_EQ(inc.ts_ns, last + 2 * kSec + 2 * kMs);
    EXPECT_EQ(inc.client, (Endpoint{kProxyIp, kProxyPort}));
    EXPECT_EQ(inc.server, (Endpoint{kUpstreamIp, kUpstreamPort}));
    EXPECT_EQ(inc.pid, 4242u);
    EXPECT_EQ(inc.comm, "nginx");
    ASSERT_TRUE(inc.idle_before_write_ms);
    EXPECT_DOUBLE_EQ(*inc.idle_before_write_ms, 2001.0);
    ASSERT_TRUE(inc.write_to_reset_ms);
    EXPECT_DOUBLE_EQ(*inc.write_to_reset_ms, 1.0);
    EXPECT_EQ(inc.state, "CLOSE_WAIT");
    EXPECT_EQ(inc.reset_reason, "");
    EXPECT_EQ(inc.requests, 2u);
    EXPECT_EQ(inc.netns, kNetns);
    // The upstream's idle close is also a healthy-traffic observation.
    ASSERT_EQ(h.out.observations.size(), 1u);
    EXPECT_EQ(h.out.observations[0].kind, ObservationKind::server_idle_close);
    EXPECT_DOUBLE_EQ(h.out.observations[0].idle_s, 2.0);
    EXPECT_EQ(h.c.stats().incidents, 1u);
}

TEST(CorrelatorClient, WriteAfterFinViaClosedUnacked) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.peer_fin(last + 3 * kSec);
    s.write(last + 3 * kSec + 1 * kMs, 300);
    s.own_close(last + 3 * kSec + 20 * kMs);            // nginx gives up: LAST_ACK
    s.retransmit_timeout(last + 3 * kSec + 900 * kMs);  // never acknowledged, no RST seen
    ASSERT_EQ(count_type(s.records, RW_REC_RST_RECEIVED), 0u);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::write_after_fin);
    EXPECT_EQ(h.out.incidents[0].state, "CLOSE");
    EXPECT_DOUBLE_EQ(*h.out.incidents[0].write_to_reset_ms, 899.0);
}

TEST(CorrelatorClient, IdleCloseRaceViaFin) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.write(last + 2 * kSec, 300);  // idle reuse, ESTABLISHED
    s.peer_fin(last + 2 * kSec + 500'000);  // FIN crosses the request: no response byte
    s.rst_received(last + 2 * kSec + 700'000);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::idle_close_race);
    EXPECT_EQ(inc.ts_ns, last + 2 * kSec + 500'000);
    EXPECT_EQ(inc.state, "CLOSE_WAIT");
    EXPECT_DOUBLE_EQ(*inc.idle_before_write_ms, 2000.0);
    EXPECT_DOUBLE_EQ(*inc.write_to_reset_ms, 0.5);
    EXPECT_EQ(inc.pid, 4242u);
    EXPECT_EQ(inc.comm, "nginx");
    ASSERT_EQ(h.out.observations.size(), 1u);
    EXPECT_EQ(h.out.observations[0].kind, ObservationKind::reuse_idle);
    EXPECT_EQ(h.out.observations[0].observer, Observer::client);
    EXPECT_DOUBLE_EQ(h.out.observations[0].idle_s, 2.0);
}

TEST(CorrelatorClient, IdleCloseRaceViaRst) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.write(last + 2 * kSec, 300);
    s.rst_received(last + 2 * kSec + 300'000);  // "104: Connection reset by peer"

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(h.out.incidents[0].state, "ESTABLISHED");
    EXPECT_DOUBLE_EQ(*h.out.incidents[0].write_to_reset_ms, 0.3);
}

TEST(CorrelatorClient, ResetOtherOnBusyConnection) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 20 * kMs, 300);      // not idle: nothing armed
    s.rst_received(T0 + 25 * kMs);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::reset_other);
    EXPECT_EQ(inc.pid, Sock::kConnectorPid);  // the process that connected, never the softirq's task
    EXPECT_EQ(inc.comm, "nginx");
    EXPECT_FALSE(inc.idle_before_write_ms);
    EXPECT_FALSE(inc.write_to_reset_ms);
}

TEST(CorrelatorClient, ResetWithNothingInFlightIsNoIncident) {
    // The idle write was answered; a later RST finds no request waiting: the peer aborted
    // an idle connection. Counted as a reset, not an incident.
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300);           // idle reuse
    s.receive(T0 + 3 * kSec + 4 * kMs, 1200);  // answered
    s.rst_received(T0 + 3 * kSec + 50 * kMs);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    ASSERT_EQ(h.out.resets.size(), 1u);
    EXPECT_EQ(h.c.stats().idle_resets, 1u);
}

TEST(CorrelatorClient, LaterBusyWriteDisarmsAnsweredIdleWrite) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300).receive(T0 + 3 * kSec + 4 * kMs, 1200);  // idle reuse, answered
    s.write(T0 + 3 * kSec + 10 * kMs, 300);  // busy: disarms, no record
    s.rst_received(T0 + 3 * kSec + 12 * kMs);
    ASSERT_EQ(count_type(s.records, RW_REC_CLOSED), 0u);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::reset_other);
    EXPECT_EQ(h.out.incidents[0].pid, 4242u);  // the process owning the connection is still named
    EXPECT_FALSE(h.out.incidents[0].write_to_reset_ms);
    EXPECT_FALSE(h.out.incidents[0].idle_before_write_ms);
    EXPECT_EQ(h.out.incidents[0].requests, 3u);
}

TEST(CorrelatorClient, WriteAfterFinOnAnUnansweredIdleWriteStaysIdleCloseRace) {
    // The idle write got no answer, the FIN came, nginx wrote again: the kernel keeps
    // the first arming (no new record); the race is what failed.
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300);
    s.peer_fin(T0 + 3 * kSec + kMs);
    s.write(T0 + 3 * kSec + 2 * kMs, 300);
    s.rst_received(T0 + 3 * kSec + 3 * kMs);
    ASSERT_EQ(count_type(s.records, RW_REC_CLOSE_WAIT_WRITE), 0u);

    Harness h;
    h.feed(without(s.records, RW_REC_PEER_FIN));  // even if the FIN record was lost
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(h.out.incidents[0].state, "CLOSE_WAIT");
}

TEST(CorrelatorClient, OwnAbortIsResetOtherOnlyWithARequestInFlight) {
    // nginx closes a pooled connection with the peer's last bytes unread (e.g. a TLS
    // upstream's close_notify): nothing of ours in flight, no incident.
    Sock idle = proxy_socket();
    exchange(idle, T0 + 10 * kMs);
    idle.abort_close(T0 + 3 * kSec, kReasonAbortOnClose);
    // A client giving up on a request (its own timeout) aborts with the request unanswered.
    Sock busy = proxy_socket(T0 + 1, 0xffff8880'aaaa2222ULL);
    exchange(busy, T0 + 10 * kMs);
    busy.write(T0 + 20 * kMs, 300);
    busy.abort_close(T0 + 5 * kSec, kReasonAbortOnClose);

    Harness h;
    h.feed(idle.records);
    EXPECT_TRUE(h.out.incidents.empty());
    h.feed(busy.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::reset_other);
    EXPECT_EQ(inc.observer, Observer::client);
    EXPECT_EQ(inc.reset_reason, "TCP_ABORT_ON_CLOSE");
    ASSERT_TRUE(inc.facts);
    EXPECT_TRUE(inc.facts->history);
    EXPECT_TRUE(inc.facts->request_unanswered);
    EXPECT_EQ(inc.facts->closed_first, "self");
}

// ------------------------------------------------ below the idle threshold (issue 16)
// Requests written within the write hook's idle threshold leave no write record; the FIN or
// RST finds them from the socket's counters, with the idle age from the kernel's timestamps.

TEST(CorrelatorClient, SubThresholdRaceFoundAtTheFinThatCrossedTheRequest) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.write(last + 300 * kMs, 300);  // 0.3 s idle: below the 1 s threshold, no record
    ASSERT_EQ(count_type(s.records, RW_REC_IDLE_WRITE), 0u);
    s.peer_fin(last + 300 * kMs + 200'000);  // the server's idle close crossed the request
    s.rst_received(last + 300 * kMs + 400'000);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::idle_close_race);
    EXPECT_EQ(inc.state, "CLOSE_WAIT");
    ASSERT_TRUE(inc.idle_before_write_ms);
    EXPECT_NEAR(*inc.idle_before_write_ms, 300.0, 4.0);  // one jiffy
    ASSERT_TRUE(inc.idle_precision_ms);
    EXPECT_DOUBLE_EQ(*inc.idle_precision_ms, 4.0);
    EXPECT_EQ(inc.pid, Sock::kConnectorPid);  // named at connect
    EXPECT_EQ(inc.comm, "nginx");
    EXPECT_EQ(inc.requests, 2u);
}

TEST(CorrelatorClient, SubThresholdRaceFoundAtTheRst) {
    // The request reached the server's buffer (acknowledged) and the server closed with it
    // unread: RST in ESTABLISHED ("104: Connection reset by peer").
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.write(last + 300 * kMs, 300).peer_acks_data();
    s.rst_received(last + 300 * kMs + 300'000);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(h.out.incidents[0].state, "ESTABLISHED");
    EXPECT_NEAR(*h.out.incidents[0].idle_before_write_ms, 300.0, 4.0);
}

TEST(CorrelatorClient, RstOnARequestSentRightAfterTheResponseIsResetOther) {
    // No idle gap worth the name before the request (< 10 ms): an abort, not an idle close.
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 20 * kMs, 300).peer_acks_data();
    s.rst_received(T0 + 25 * kMs);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::reset_other);
    ASSERT_TRUE(inc.facts);
    EXPECT_TRUE(inc.facts->history);
    EXPECT_TRUE(inc.facts->request_unanswered);
    EXPECT_EQ(inc.facts->unacked_bytes, 0u);
    EXPECT_EQ(inc.facts->closed_first, "");
    EXPECT_FALSE(inc.idle_before_write_ms);
}

TEST(CorrelatorClient, FinAfterTheServerTookTheRequestWithoutAnswerIsTheRace) {
    // The server's kernel acknowledged the request, then the server closed (its idle timer
    // fired as the request arrived) without answering: "upstream prematurely closed".
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 515 * kMs, 300).peer_acks_data();
    s.peer_fin(T0 + 516 * kMs);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_NEAR(*h.out.incidents[0].idle_before_write_ms, 500.0, 4.0);
}

TEST(CorrelatorClient, HealthyReuseBelowTheThresholdThenFinIsNoIncident) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 300 * kMs, 300).receive(T0 + 305 * kMs, 1200);  // answered
    s.peer_fin(T0 + 605 * kMs);  // idle close with nothing in flight
    s.own_close(T0 + 606 * kMs).our_fin_acked(T0 + 607 * kMs);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
}

TEST(CorrelatorClient, WriteAfterFinIntoAHalfClosedServerThatNeverAnswers) {
    // Tomcat's keepalive timeout half-closes (FIN); HAProxy writes the next request anyway;
    // the server's kernel acknowledges it, nobody reads it; HAProxy sees the EOF and closes
    // (502 "SH--"). No RST anywhere.
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 15 * kMs;
    s.peer_fin(last + 2 * kSec);
    s.write(last + 2 * kSec + 1 * kMs, 300).peer_acks_data();
    s.own_close(last + 2 * kSec + 2 * kMs).our_fin_acked(last + 2 * kSec + 3 * kMs);
    ASSERT_EQ(count_type(s.records, RW_REC_RST_RECEIVED), 0u);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::write_after_fin);
    EXPECT_EQ(h.out.incidents[0].state, "CLOSE");
}

TEST(CorrelatorClient, TlsCloseNotifyAfterTheFinIsNotAnIncident) {
    // The server closes an idle TLS connection (close_notify, FIN); the client's TLS stack
    // answers with its own close_notify on the half-closed socket; the closed server resets.
    Sock viaRst = proxy_socket();
    exchange(viaRst, T0 + 10 * kMs);
    viaRst.peer_fin(T0 + 2 * kSec);
    viaRst.write(T0 + 2 * kSec + 200'000, 31, 4242, "node", /*tls=*/0x15);
    viaRst.rst_received(T0 + 2 * kSec + 300'000);
    // ... or the client closes before the RST comes back.
    Sock viaClose = proxy_socket(T0 + 1, 0xffff8880'aaaa3333ULL);
    exchange(viaClose, T0 + 10 * kMs);
    viaClose.peer_fin(T0 + 2 * kSec);
    viaClose.write(T0 + 2 * kSec + 200'000, 24, 4242, "node", /*tls=*/0x17);
    viaClose.own_close(T0 + 2 * kSec + 300'000).retransmit_timeout(T0 + 3 * kSec);

    Harness h;
    h.feed(viaRst.records);
    h.feed(viaClose.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 2u);
    // The same write that is not a TLS alert is the failure it always was.
    Sock plain = proxy_socket(T0 + 2, 0xffff8880'aaaa4444ULL);
    exchange(plain, T0 + 10 * kMs);
    plain.peer_fin(T0 + 2 * kSec);
    plain.write(T0 + 2 * kSec + 200'000, 31);
    plain.rst_received(T0 + 2 * kSec + 300'000);
    h.feed(plain.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::write_after_fin);
}

TEST(CorrelatorClient, OurCloseNotifyResetByATlsServerIsNotAnIncident) {
    // Our pool closes an idle TLS connection: close_notify after idle (an armed write), and
    // the server, closing at the same moment with it unread, resets before our close().
    Sock idle = proxy_socket();
    exchange(idle, T0 + 10 * kMs);
    idle.write(T0 + 90 * kSec, 24, 4242, "prometheus", /*tls=*/0x17);
    idle.rst_received(T0 + 90 * kSec + 300'000);
    // The same within the idle threshold (no write record) to a server known to speak TLS:
    // all that is unacknowledged is one alert record.
    Sock learn = proxy_socket(T0 + 1, 0xffff8880'aaaa6666ULL);
    exchange(learn, T0 + 10 * kMs);
    learn.peer_fin(T0 + 2 * kSec);
    learn.write(T0 + 2 * kSec + 200'000, 24, 4242, "prometheus", /*tls=*/0x17);
    learn.own_close(T0 + 2 * kSec + 300'000).retransmit_timeout(T0 + 3 * kSec);
    Sock quick = proxy_socket(T0 + 2, 0xffff8880'aaaa7777ULL);
    exchange(quick, T0 + 10 * kMs);
    quick.write(T0 + 15 * kMs, 24, 4242, "prometheus");
    quick.rst_received(T0 + 16 * kMs);

    Harness h;
    h.feed(idle.records);
    h.feed(learn.records);
    h.feed(quick.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 3u);
    // A request of the same size to a server never seen to speak TLS is reset_other.
    Sock plain = Sock(RW_ROLE_CLIENT, kProxyIp, kProxyPort + 1, kUpstreamIp, kUpstreamPort + 1, T0 + 3,
                      0xffff8880'aaaa8888ULL);
    exchange(plain, T0 + 10 * kMs);
    plain.write(T0 + 15 * kMs, 24);
    plain.rst_received(T0 + 16 * kMs);
    h.feed(plain.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::reset_other);
}

TEST(CorrelatorClient, ATlsServersCloseNotifyIsNoAnswerToTheRacingRequest) {
    // Our request after idle crosses the TLS server's close: its close_notify arrives (our
    // application has not read it), then its RST. The request was never answered.
    Sock armed = proxy_socket();
    exchange(armed, T0 + 10 * kMs);
    armed.write(T0 + 2 * kSec, 300);
    armed.receive(T0 + 2 * kSec + 100'000, 24, /*app_reads=*/false);
    armed.rst_received(T0 + 2 * kSec + 200'000);
    // Within the idle threshold (no write record): the race still, its idle unknown (the
    // socket's last receive is the alert).
    Sock quick = proxy_socket(T0 + 1, 0xffff8880'aaaa9999ULL);
    exchange(quick, T0 + 10 * kMs);
    quick.write(T0 + 310 * kMs, 300);
    quick.receive(T0 + 310 * kMs + 100'000, 24, /*app_reads=*/false);
    quick.rst_received(T0 + 310 * kMs + 200'000);

    Harness h;
    h.feed(armed.records);
    h.feed(quick.records);
    ASSERT_EQ(h.out.incidents.size(), 2u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    ASSERT_TRUE(h.out.incidents[0].idle_before_write_ms.has_value());
    EXPECT_NEAR(*h.out.incidents[0].idle_before_write_ms, 1985.0, 0.001);
    EXPECT_EQ(h.out.incidents[1].cause, Cause::idle_close_race);
    EXPECT_FALSE(h.out.incidents[1].idle_before_write_ms.has_value());
    // A real answer of the same size that the application read ends the wait as always.
    Sock answered = proxy_socket(T0 + 2, 0xffff8880'aaaa0001ULL);
    exchange(answered, T0 + 10 * kMs);
    answered.write(T0 + 2 * kSec, 300);
    answered.receive(T0 + 2 * kSec + 100'000, 24);
    answered.rst_received(T0 + 2 * kSec + 200'000);
    h.feed(answered.records);
    EXPECT_EQ(h.out.incidents.size(), 2u);
}

TEST(CorrelatorClient, ACloseNotifyCrossingTheServersFinIsATeardownEvenFromAnUnknownServer) {
    // Seen with curl against the agent's own https port (ASan builds, a loaded machine): the
    // server's close_notify arrives, the client's TLS stack answers at once, and only then is the
    // server's FIN processed. No write record (busy write), armed at the FIN from the counters
    // with no idle before it; the closed server resets. First teardown: the server is not known
    // to speak TLS yet.
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.receive(T0 + 20 * kMs, 24);   // the server's close_notify
    s.write(T0 + 20 * kMs, 24, 4242, "curl", /*tls=*/0x15);
    s.peer_fin(T0 + 21 * kMs);
    s.rst_received(T0 + 22 * kMs);
    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 1u);

    // ... or the client closes with the server's close_notify unread and its own unacknowledged:
    // its kernel aborts (TCP_ABORT_ON_CLOSE), a teardown too.
    Sock aborts = proxy_socket(T0 + 2, 0xffff8880'aaab0004ULL);
    exchange(aborts, T0 + 10 * kMs);
    aborts.receive(T0 + 20 * kMs, 24, /*app_reads=*/false);
    aborts.write(T0 + 20 * kMs, 24, 4242, "curl", /*tls=*/0x15);
    aborts.abort_close(T0 + 21 * kMs, 7);
    h.feed(aborts.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 2u);

    // A request after idle that crosses the FIN stays the race, whatever its size.
    Sock race = proxy_socket(T0 + 1, 0xffff8880'aaab0003ULL);
    exchange(race, T0 + 10 * kMs);
    race.write(T0 + 300 * kMs, 27);  // "GET / HTTP/1.1\r\nHost: a\r\n\r\n": alert-sized, after idle
    race.peer_fin(T0 + 300 * kMs + 100'000);
    race.rst_received(T0 + 300 * kMs + 200'000);
    h.feed(race.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
}

TEST(CorrelatorClient, TheServersCloseNotifyAfterOurCloseIsATeardownEvenFromAnUnknownServer) {
    // Seen with curl scraping the agent's https port (CI of 2eee3bd): curl reads the answer,
    // writes its close_notify a jiffy later (so the socket's times show a send after the last
    // receive), closes; the server's close_notify arrives after that close and curl's kernel
    // answers it with RST (TCP_ABORT_ON_DATA). First teardown: the server is not known to speak
    // TLS yet. No request was lost: the application had its answer and left.
    const uint64_t answered = T0 + 10 * kMs + 5 * kMs;
    const uint64_t next_jiffy = (answered / kJiffy + 1) * kJiffy;
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(next_jiffy + 100'000, 24, 4242, "curl");  // curl's close_notify, acknowledged
    s.ack();
    s.own_close(next_jiffy + 200'000).our_fin_acked(next_jiffy + 300'000);
    s.abort_on_data(next_jiffy + 400'000, kReasonAbortOnData, /*segment=*/24);
    ASSERT_GT(s.records.back().send_after_recv, 0);  // what made it look like a request in flight
    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 1u);

    // Before 6.10 (no reason): the reply after our close says the same.
    Sock old_kernel = proxy_socket(T0 + 1, 0xffff8880'aaab0005ULL);
    exchange(old_kernel, T0 + 10 * kMs);
    old_kernel.write(next_jiffy + 100'000, 24, 4242, "curl");
    old_kernel.ack();
    old_kernel.own_close(next_jiffy + 200'000).our_fin_acked(next_jiffy + 300'000);
    old_kernel.abort_on_data(next_jiffy + 400'000, RW_RST_REASON_NONE, /*segment=*/24);
    h.feed(old_kernel.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 2u);

    // A client that gave up on its request (sent, acknowledged, unanswered) and closed: the
    // answer arriving after its close is reset; that cut a request short, as before.
    Sock gave_up = proxy_socket(T0 + 2, 0xffff8880'aaab0006ULL);
    exchange(gave_up, T0 + 10 * kMs);
    gave_up.write(T0 + 100 * kMs, 300).ack();
    gave_up.own_close(T0 + 5 * kSec).our_fin_acked(T0 + 5 * kSec + 100'000);
    gave_up.abort_on_data(T0 + 5 * kSec + 1 * kMs, kReasonAbortOnData, /*segment=*/1200);
    h.feed(gave_up.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::reset_other);
}

TEST(CorrelatorClient, AReadCloseNotifyOfAKnownTlsServerIsNoAnswer) {
    // Seen with nginx ssl and Node's https pool: the TLS stack reads the server's close_notify
    // that crossed our request, then the server's RST (it closed with the request unread).
    // Alert-sized and read: no answer when the server is known to speak TLS.
    Sock learn = proxy_socket(T0 + 1, 0xffff8880'aaab0001ULL);
    exchange(learn, T0 + 10 * kMs);
    learn.write(T0 + 90 * kSec, 24, 4242, "node", /*tls=*/0x17);  // our pool's close_notify
    learn.rst_received(T0 + 90 * kSec + 300'000);
    Sock racing = proxy_socket(T0 + 2, 0xffff8880'aaab0002ULL);
    exchange(racing, T0 + 10 * kMs);
    racing.write(T0 + 2 * kSec, 300);
    racing.receive(T0 + 2 * kSec + 100'000, 24);  // read by the TLS stack
    racing.rst_received(T0 + 2 * kSec + 200'000);

    Harness h;
    h.feed(learn.records);
    EXPECT_TRUE(h.out.incidents.empty());
    h.feed(racing.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    ASSERT_TRUE(h.out.incidents[0].idle_before_write_ms.has_value());
    EXPECT_NEAR(*h.out.incidents[0].idle_before_write_ms, 1985.0, 0.001);
}

TEST(CorrelatorClient, ResetAfterOurOwnCloseIsNoIncident) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.own_close(T0 + 2 * kSec);  // our pool's idle timeout
    s.rst_received(T0 + 2 * kSec + 1 * kMs);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
}

// ---------------------------------------------------------------- server causes

TEST(CorrelatorServer, AbortOnCloseWithReason) {
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    // Idle timeout fires just as the next request lands unread.
    s.receive(T0 + 2 * kSec, 300, /*app_reads=*/false);
    s.abort_close(T0 + 2 * kSec + 100'000, kReasonAbortOnClose);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::abort_on_close);
    EXPECT_EQ(inc.observer, Observer::server);
    EXPECT_EQ(inc.server, (Endpoint{kUpstreamIp, kUpstreamPort}));
    EXPECT_EQ(inc.client, (Endpoint{kProxyIp, kProxyPort}));
    EXPECT_EQ(inc.state, "CLOSE");
    EXPECT_EQ(inc.reset_reason, "TCP_ABORT_ON_CLOSE");
    EXPECT_EQ(inc.pid, 0u);
    EXPECT_FALSE(inc.write_to_reset_ms);
}

TEST(CorrelatorServer, AbortOnCloseWithoutReasonPre610) {
    for (bool with_namer : {true, false}) {
        Sock s = upstream_socket();
        serve(s, T0 + 10 * kMs);
        s.receive(T0 + 2 * kSec, 300, /*app_reads=*/false);
        s.abort_close(T0 + 2 * kSec + 100'000, RW_RST_REASON_NONE);

        CorrelatorOptions o = test_options();
        if (!with_namer) o.reset_reason_name = nullptr;
        Correlator c(o);
        CorrelatorOutput out;
        for (const auto& r : s.records) c.on_record(r, out);
        ASSERT_EQ(out.incidents.size(), 1u);
        EXPECT_EQ(out.incidents[0].cause, Cause::abort_on_close);
        EXPECT_EQ(out.incidents[0].reset_reason, "");
    }
}

TEST(CorrelatorServer, AbortOfAnIdleConnectionIsNoIncident) {
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.abort_close(T0 + 2 * kSec, RW_RST_REASON_NONE);  // SO_LINGER 0 on an idle connection

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.out.resets.size(), 1u);
}

TEST(CorrelatorServer, DataAfterCloseViaAbortOnDataInFinWait2) {
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    const uint64_t last = T0 + 14 * kMs;
    s.own_close(last + 2 * kSec);  // idle timeout: FIN_WAIT1
    s.our_fin_acked(last + 2 * kSec + 100'000);  // FIN_WAIT2
    ASSERT_EQ(s.state(), RW_TCP_FIN_WAIT2);
    // The request arrives: tcp_reset() (the receive tracepoint), then the RST in reply,
    // without a reason before 6.10.
    s.abort_on_data(last + 2 * kSec + 200'000, RW_RST_REASON_NONE);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);
    EXPECT_EQ(h.out.incidents[0].observer, Observer::server);
    ASSERT_EQ(h.out.observations.size(), 1u);
    EXPECT_EQ(h.out.observations[0].kind, ObservationKind::server_idle_close);
    EXPECT_EQ(h.out.observations[0].observer, Observer::server);
    EXPECT_DOUBLE_EQ(h.out.observations[0].idle_s, 2.0);
}

TEST(CorrelatorServer, PeerResetAfterOurCloseIsNoIncident) {
    // The client aborted (e.g. discarding our TLS close_notify) after we closed: a real RST
    // received in FIN_WAIT2, no RST of ours follows. Nothing was lost.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.own_close(T0 + 2 * kSec).our_fin_acked(T0 + 2 * kSec + 100'000);
    s.rst_received(T0 + 2 * kSec + 200'000);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.out.resets.size(), 1u);
}

TEST(CorrelatorServer, DataAfterCloseViaAbortOnDataReasonPlusReset) {
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.own_close(T0 + 3 * kSec);
    s.our_fin_acked(T0 + 3 * kSec + 100'000);
    s.rst_sent(T0 + 3 * kSec + 200'000, kReasonAbortOnData);
    s.rst_received(T0 + 3 * kSec + 200'000);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);  // both records name the same event
    EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);
    EXPECT_EQ(h.out.incidents[0].reset_reason, "TCP_ABORT_ON_DATA");
}

TEST(CorrelatorServer, DataAfterCloseViaReplyRstOfDoneOrphan) {
    // The nginx timing: the request carries the ACK of our FIN. With the reason (>= 6.10)
    // and without (< 6.10: found by the kernel matrix on Debian's 6.1, reset_other before).
    for (uint32_t reason : {kReasonAbortOnData, RW_RST_REASON_NONE}) {
        Sock s = upstream_socket();
        serve(s, T0 + 10 * kMs);
        s.own_close(T0 + 2 * kSec);
        s.orphan_abort_on_data(T0 + 2 * kSec + 300'000, reason);

        Harness h;
        h.feed(s.records);
        ASSERT_EQ(h.out.incidents.size(), 1u);
        EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);
        EXPECT_EQ(h.out.incidents[0].observer, Observer::server);
        EXPECT_EQ(h.out.incidents[0].state, "CLOSE");
        EXPECT_EQ(h.out.incidents[0].reset_reason,
                  reason == RW_RST_REASON_NONE ? "" : "TCP_ABORT_ON_DATA");
    }
}

TEST(CorrelatorServer, ActiveRstAfterOwnCloseWithoutReasonIsNoIncident) {
    // No reason, our FIN sent, then an active reset (no segment answered; e.g. an orphan
    // killed under memory pressure) with nothing unread: not data after close, no request.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.own_close(T0 + 2 * kSec);
    s.rst_sent(T0 + 2 * kSec + 300'000, RW_RST_REASON_NONE, /*reply=*/false);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
}

TEST(CorrelatorServer, DataAfterCloseViaTimewaitRst) {
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.own_close(T0 + 2 * kSec);
    s.our_fin_acked(T0 + 2 * kSec + 100'000);
    s.peer_fin(T0 + 2 * kSec + 200'000);  // full socket -> CLOSE, timewait takes over
    s.timewait_rst_sent(T0 + 2 * kSec + 300'000, 0xffff8880'cccc0000ULL, kReasonTimewaitSocket);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const Incident& inc = h.out.incidents[0];
    EXPECT_EQ(inc.cause, Cause::data_after_close);
    EXPECT_EQ(inc.state, "TIME_WAIT");
    EXPECT_EQ(inc.reset_reason, "TCP_TIMEWAIT_SOCKET");
    EXPECT_EQ(inc.server, (Endpoint{kUpstreamIp, kUpstreamPort}));
}

TEST(CorrelatorServer, TimewaitRstWithoutSnapshotTiedByFourTuple) {
    // Pre-6.10 style: no reason, and the timewait record carries no snapshot: the role
    // and the app close come from the remembered connection with the same 4-tuple.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.own_close(T0 + 2 * kSec);
    s.our_fin_acked(T0 + 2 * kSec + 100'000);
    s.peer_fin(T0 + 2 * kSec + 200'000);
    s.timewait_rst_sent(T0 + 2 * kSec + 300'000, 0xffff8880'cccc0000ULL, RW_RST_REASON_NONE,
                        /*with_snapshot=*/false);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);
    EXPECT_EQ(h.out.incidents[0].observer, Observer::server);
    EXPECT_EQ(h.c.stats().unknown_history, 0u);

    // Without the earlier records there is nothing to tie it to: no invented cause.
    Harness fresh;
    fresh.feed({s.records.back()});
    EXPECT_TRUE(fresh.out.incidents.empty());
    EXPECT_EQ(fresh.c.stats().unknown_history, 1u);
}

TEST(CorrelatorServer, TimewaitRecordsOfAReportedConnectionAddNothing) {
    for (bool with_snapshot : {true, false}) {
        Sock s = upstream_socket();
        serve(s, T0 + 10 * kMs);
        s.own_close(T0 + 2 * kSec);
        s.our_fin_acked(T0 + 2 * kSec + 100'000);
        s.rst_sent(T0 + 2 * kSec + 150'000, kReasonAbortOnData);  // reported here
        s.peer_fin(T0 + 2 * kSec + 200'000);
        s.timewait_rst_sent(T0 + 2 * kSec + 300'000, 0xffff8880'cccc0000ULL,
                            kReasonTimewaitSocket, with_snapshot);

        Harness h;
        h.feed(s.records);
        ASSERT_EQ(h.out.incidents.size(), 1u) << with_snapshot;
        EXPECT_EQ(h.out.incidents[0].reset_reason, "TCP_ABORT_ON_DATA");

        // And in the other order (timewait record first, with its snapshot): still one.
        if (with_snapshot) {
            Harness rev;
            std::vector<rw_record> v(s.records.rbegin(), s.records.rend());
            rev.feed(v);
            EXPECT_EQ(rev.out.incidents.size(), 1u);
        }
    }
}

TEST(CorrelatorServer, ResetOtherNeedsARequestInFlight) {
    // The client aborts while its request is being served (received, not yet answered).
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.receive(T0 + 40 * kMs, 300);  // read by the application, not answered yet
    s.rst_received(T0 + 50 * kMs);
    // The server aborts an idle connection: nothing in flight.
    Sock s2 = upstream_socket(T0 + 5 * kSec, 0xffff8880'bbbb1111ULL);
    serve(s2, T0 + 5 * kSec + 10 * kMs);
    s2.rst_sent(T0 + 5 * kSec + 20 * kMs, kReasonNotSpecified);
    // ... and one with a request unread: reset_other with the reason.
    Sock s3 = upstream_socket(T0 + 9 * kSec, 0xffff8880'bbbb2222ULL);
    serve(s3, T0 + 9 * kSec + 10 * kMs);
    s3.receive(T0 + 9 * kSec + 20 * kMs, 300, /*app_reads=*/false);
    s3.rst_sent(T0 + 9 * kSec + 30 * kMs, kReasonNotSpecified);

    Harness h;
    h.feed(s.records);
    h.feed(s2.records);
    h.feed(s3.records);
    ASSERT_EQ(h.out.incidents.size(), 2u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::reset_other);
    EXPECT_EQ(h.out.incidents[0].observer, Observer::server);
    ASSERT_TRUE(h.out.incidents[0].facts);
    EXPECT_TRUE(h.out.incidents[0].facts->request_unanswered);
    EXPECT_EQ(h.out.incidents[0].facts->closed_first, "");
    EXPECT_EQ(h.out.incidents[1].cause, Cause::reset_other);
    EXPECT_EQ(h.out.incidents[1].reset_reason, "NOT_SPECIFIED");
    EXPECT_EQ(h.out.resets.size(), 3u);
}

TEST(CorrelatorServer, RequestReachingAHalfClosedSocketThatIsNeverReadIsDataAfterClose) {
    // Tomcat: the keepalive timeout shuts down writing (FIN); the request arrives and is
    // acknowledged but never read; the client's FIN follows; the socket is destroyed with the
    // request unread and no RST ever sent.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.own_close(T0 + 2 * kSec).our_fin_acked(T0 + 2 * kSec + 100'000);
    s.receive_unread(T0 + 2 * kSec + 1 * kMs, 300);
    s.peer_fin(T0 + 2 * kSec + 2 * kMs);
    s.destroy(T0 + 2 * kSec + 3 * kMs);
    ASSERT_EQ(count_type(s.records, RW_REC_UNREAD_AT_DESTROY), 1u);

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);
    EXPECT_EQ(h.out.incidents[0].observer, Observer::server);
}

TEST(CorrelatorServer, AbortWithUnreadDataAfterThePeerClosedIsNoIncident) {
    // The client closed first, its last bytes (e.g. its TLS close_notify) unread when we
    // close: nothing awaits an answer.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.receive(T0 + 20 * kMs, 31, /*app_reads=*/false);
    s.peer_fin(T0 + 21 * kMs);
    s.abort_close(T0 + 22 * kMs, kReasonAbortOnClose);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
}

TEST(CorrelatorServer, TlsCloseNotifyAnsweringOurIdleCloseIsNoIncident) {
    // A TLS server closes an idle connection with its close_notify; the client's TLS stack
    // answers with its own (24 bytes, TLS 1.3) after our close: reset, nothing lost.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.write(T0 + 5 * kSec, 24, 99, "nginx", /*tls=*/0x17);
    s.own_close(T0 + 5 * kSec).our_fin_acked(T0 + 5 * kSec + 100'000);
    s.abort_on_data(T0 + 5 * kSec + 1 * kMs, kReasonAbortOnData, /*segment=*/24);
    // The orphan that is done before it answers, TLS 1.2 AES-GCM (31 bytes).
    Sock orphan = upstream_socket(T0 + 1, 0xffff8880'bbbb1111ULL);
    serve(orphan, T0 + 10 * kMs);
    orphan.write(T0 + 5 * kSec, 31, 99, "nginx", /*tls=*/0x15);
    orphan.own_close(T0 + 5 * kSec);
    orphan.orphan_abort_on_data(T0 + 5 * kSec + 1 * kMs, RW_RST_REASON_NONE, /*segment=*/31);

    Harness h;
    h.feed(s.records);
    h.feed(orphan.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 2u);
    // A request racing the same close (larger than any alert record) is still the failure.
    Sock racing = upstream_socket(T0 + 2, 0xffff8880'bbbb2222ULL);
    serve(racing, T0 + 10 * kMs);
    racing.write(T0 + 5 * kSec, 24, 99, "nginx", /*tls=*/0x17);
    racing.own_close(T0 + 5 * kSec).our_fin_acked(T0 + 5 * kSec + 100'000);
    racing.abort_on_data(T0 + 5 * kSec + 1 * kMs, kReasonAbortOnData, /*segment=*/517);
    h.feed(racing.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);
}

TEST(CorrelatorServer, AlertSizedDataAfterCloseIsAnIncidentUnlessTheServerIsKnownToSpeakTls) {
    // nginx closes idle TLS connections without a close_notify: its own socket shows no
    // TLS. 24 bytes after close on a plaintext server may be a request: an incident.
    Sock plain = upstream_socket();
    serve(plain, T0 + 10 * kMs);
    plain.own_close(T0 + 5 * kSec).our_fin_acked(T0 + 5 * kSec + 100'000);
    plain.abort_on_data(T0 + 5 * kSec + 1 * kMs, kReasonAbortOnData, /*segment=*/24);
    Harness h;
    h.feed(plain.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::data_after_close);

    // A client on this node wrote a TLS alert to that server: it speaks TLS. The next
    // alert-sized bytes after its close are a close_notify.
    Sock client = proxy_socket(T0 + 3, 0xffff8880'aaaa5555ULL);
    exchange(client, T0 + 10 * kMs);
    client.peer_fin(T0 + 6 * kSec);
    client.write(T0 + 6 * kSec + 200'000, 24, 4242, "node", /*tls=*/0x17);
    client.own_close(T0 + 6 * kSec + 300'000).retransmit_timeout(T0 + 7 * kSec);
    h.feed(client.records);
    Sock next = upstream_socket(T0 + 4, 0xffff8880'bbbb3333ULL);
    serve(next, T0 + 10 * kMs);
    next.own_close(T0 + 6 * kSec).our_fin_acked(T0 + 6 * kSec + 100'000);
    next.abort_on_data(T0 + 6 * kSec + 1 * kMs, kReasonAbortOnData, /*segment=*/24);
    // ... and unread at destruction the same.
    Sock unread = upstream_socket(T0 + 5, 0xffff8880'bbbb4444ULL);
    serve(unread, T0 + 10 * kMs);
    unread.own_close(T0 + 6 * kSec).our_fin_acked(T0 + 6 * kSec + 100'000);
    unread.receive_unread(T0 + 6 * kSec + 1 * kMs, 24);
    unread.peer_fin(T0 + 6 * kSec + 2 * kMs);
    unread.destroy(T0 + 6 * kSec + 3 * kMs);
    h.feed(next.records);
    h.feed(unread.records);
    EXPECT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.c.stats().tls_close_notify, 3u);  // the client's and the server's two
}

TEST(CorrelatorServer, ResetOfOurCloseNotifyAnsweringThePeersIsNoIncident) {
    // The client closes an idle TLS connection (close_notify, FIN); we answer with our own
    // close_notify in CLOSE_WAIT; the closed client resets it: reset_other before.
    Sock s = upstream_socket();
    serve(s, T0 + 10 * kMs);
    s.receive(T0 + 3 * kSec, 24);
    s.peer_fin(T0 + 3 * kSec);
    s.write(T0 + 3 * kSec + 100'000, 24, 99, "rstwatch", /*tls=*/0x17);
    s.rst_received(T0 + 3 * kSec + 200'000);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 1u);
}

TEST(CorrelatorServer, ATlsClientsCloseNotifyThenResetIsNoIncident) {
    // A client of a TLS server closes: its close_notify (unread here), then a RST instead of
    // its FIN. Nothing of the server's was lost; on a plaintext server the same bytes may be a
    // request.
    // A client on this node answered the server's close with a close_notify: it speaks TLS.
    Sock tls_learned = proxy_socket(T0 + 3, 0xffff8880'aaaa0002ULL);
    exchange(tls_learned, T0 + 10 * kMs);
    tls_learned.peer_fin(T0 + 3 * kSec);
    tls_learned.write(T0 + 3 * kSec + 200'000, 24, 4242, "node", /*tls=*/0x17);
    tls_learned.rst_received(T0 + 3 * kSec + 300'000);
    Sock s = upstream_socket(T0 + 1, 0xffff8880'bbbb5555ULL);
    serve(s, T0 + 10 * kMs);
    s.receive(T0 + 4 * kSec, 24, /*app_reads=*/false);
    s.rst_received(T0 + 4 * kSec + 100'000);

    Harness h;
    h.feed(tls_learned.records);
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().tls_close_notify, 2u);  // the client's answer and the server's reset
    Sock plain = Sock(RW_ROLE_SERVER, kUpstreamIp, kUpstreamPort + 1, kProxyIp, kProxyPort, T0 + 2,
                      0xffff8880'bbbb6666ULL);
    serve(plain, T0 + 10 * kMs);
    plain.receive(T0 + 4 * kSec, 24, /*app_reads=*/false);
    plain.rst_received(T0 + 4 * kSec + 100'000);
    h.feed(plain.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::reset_other);
}

// ---------------------------------------------------------------- negative cases

TEST(CorrelatorNegative, IdleWriteAnsweredThenFinGivesOnlyObservations) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 5 * kSec, 300);
    s.receive(T0 + 5 * kSec + 3 * kMs, 900);
    s.peer_fin(T0 + 7 * kSec + 3 * kMs);  // upstream idle-closes 2 s later
    s.own_close(T0 + 7 * kSec + 4 * kMs);
    s.our_fin_acked(T0 + 7 * kSec + 5 * kMs);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    ASSERT_EQ(h.out.observations.size(), 2u);
    EXPECT_EQ(h.out.observations[0].kind, ObservationKind::reuse_idle);
    EXPECT_NEAR(h.out.observations[0].idle_s, 4.985, 1e-9);
    EXPECT_EQ(h.out.observations[1].kind, ObservationKind::server_idle_close);
    EXPECT_DOUBLE_EQ(h.out.observations[1].idle_s, 2.0);
    EXPECT_EQ(h.c.stats().incidents, 0u);
}

TEST(CorrelatorNegative, HalfCloseAnsweredNormallyIsNoIncident) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.peer_fin(T0 + 30 * kMs);                 // peer half-closes (not idle: no record)
    s.write(T0 + 40 * kMs, 300);               // write in CLOSE_WAIT: armed
    s.receive(T0 + 45 * kMs, 800);             // answered and acknowledged
    s.own_close(T0 + 50 * kMs);                // LAST_ACK
    s.our_fin_acked(T0 + 51 * kMs);            // CLOSE: CLOSED record
    ASSERT_EQ(count_type(s.records, RW_REC_CLOSED), 1u);

    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_TRUE(h.out.observations.empty());
}

TEST(CorrelatorNegative, ClientClosingIdleConnectionIsObservation) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.own_close(T0 + 15 * kMs + 60 * kSec);  // nginx's keepalive_timeout 60 s
    Harness h;
    h.feed(s.records);
    EXPECT_TRUE(h.out.incidents.empty());
    ASSERT_EQ(h.out.observations.size(), 1u);
    EXPECT_EQ(h.out.observations[0].kind, ObservationKind::client_idle_close);
    EXPECT_DOUBLE_EQ(h.out.observations[0].idle_s, 60.0);

    Sock up = upstream_socket();
    serve(up, T0 + 10 * kMs);
    up.peer_fin(T0 + 14 * kMs + 60 * kSec);  // the client side closed it, seen by the server
    Harness h2;
    h2.feed(up.records);
    ASSERT_EQ(h2.out.observations.size(), 1u);
    EXPECT_EQ(h2.out.observations[0].kind, ObservationKind::client_idle_close);
    EXPECT_EQ(h2.out.observations[0].observer, Observer::server);
    EXPECT_EQ(h2.out.observations[0].client, (Endpoint{kProxyIp, kProxyPort}));
}

TEST(CorrelatorNegative, RstOnUnknownHistoryConnection) {
    Sock s(RW_ROLE_CLIENT, kProxyIp, kProxyPort, kUpstreamIp, kUpstreamPort, /*start_ns=*/0);
    s.write(T0 + 3 * kSec, 100);  // predates rstwatch: nothing armed, no write record
    s.rst_received(T0 + 3 * kSec + kMs);  // but every RST is reported
    ASSERT_EQ(s.records.size(), 1u);
    Sock srv(RW_ROLE_SERVER, kUpstreamIp, kUpstreamPort, kProxyIp, kProxyPort, 0, 77);
    srv.receive(T0, 10, false).abort_close(T0 + kMs, kReasonAbortOnClose);

    Harness h;
    h.feed(s.records);
    h.feed(srv.records);
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_TRUE(h.out.observations.empty());
    EXPECT_EQ(h.c.stats().unknown_history, 2u);
    EXPECT_EQ(h.c.remembered_connections(), 0u);
}

TEST(CorrelatorNegative, NoSocketRst) {
    Harness h;
    h.feed({no_socket_rst(T0)});
    EXPECT_TRUE(h.out.incidents.empty());
    EXPECT_EQ(h.c.stats().records, 1u);
    EXPECT_EQ(h.c.stats().unknown_history, 0u);
    EXPECT_EQ(h.c.stats().malformed, 0u);
}

// ---------------------------------------------------------------- ordering, gaps, dedupe

TEST(CorrelatorRobustness, RstBeforeFinOfSameConnection) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300);
    s.peer_fin(T0 + 3 * kSec + 100'000);
    s.rst_received(T0 + 3 * kSec + 200'000);
    std::vector<rw_record> reversed(s.records.rbegin(), s.records.rend());

    Harness h;
    h.feed(reversed);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(h.c.stats().incidents, 1u);
}

TEST(CorrelatorRobustness, DuplicateRecordsGiveOneIncidentAndOneObservation) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300);
    s.rst_received(T0 + 3 * kSec + 200'000);
    std::vector<rw_record> doubled;
    for (const auto& r : s.records) {
        doubled.push_back(r);
        doubled.push_back(r);
    }
    Harness h;
    h.feed(doubled);
    EXPECT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.observations.size(), 1u);
    EXPECT_EQ(h.c.stats().records, doubled.size());
}

TEST(CorrelatorRobustness, LostIdleWriteStillGivesIdleCloseRace) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300, 555, "envoy");
    s.rst_received(T0 + 3 * kSec + 200'000);
    ASSERT_EQ(count_type(s.records, RW_REC_IDLE_WRITE), 1u);

    Harness h;
    h.c.on_records_lost(1);
    h.feed(without(s.records, RW_REC_IDLE_WRITE));
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(h.out.incidents[0].pid, 555u);
    EXPECT_EQ(h.out.incidents[0].comm, "envoy");
    EXPECT_TRUE(h.out.observations.empty());
    EXPECT_EQ(h.c.stats().records_lost, 1u);
}

TEST(CorrelatorRobustness, LostRecordsDoNotInventACause) {
    // Healthy idle reuse, answered; later an unrelated RST. The IDLE_WRITE is lost.
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300);
    s.receive(T0 + 3 * kSec + 2 * kMs, 100);
    s.rst_received(T0 + 3 * kSec + 40 * kMs);

    Harness h;
    h.c.on_records_lost(5);
    h.feed(without(s.records, RW_REC_IDLE_WRITE));
    EXPECT_TRUE(h.out.incidents.empty());  // nothing was in flight at the RST

    // Half-close answered normally, the OWN_CLOSE lost: still nothing.
    Sock hc = proxy_socket(T0, 0xffff8880'dddd0000ULL);
    exchange(hc, T0 + 10 * kMs);
    hc.peer_fin(T0 + 30 * kMs).write(T0 + 40 * kMs, 300).receive(T0 + 45 * kMs, 800);
    hc.own_close(T0 + 50 * kMs).our_fin_acked(T0 + 51 * kMs);
    Harness h2;
    h2.c.on_records_lost(1);
    h2.feed(without(without(hc.records, RW_REC_OWN_CLOSE), RW_REC_CLOSE_WAIT_WRITE));
    EXPECT_TRUE(h2.out.incidents.empty());
}

TEST(CorrelatorRobustness, SockIdReusedByNewConnection) {
    const uint64_t sock_id = 0xffff8880'eeee0000ULL;
    Sock a = proxy_socket(T0, sock_id);
    exchange(a, T0 + 10 * kMs);
    a.write(T0 + 3 * kSec, 300).rst_received(T0 + 3 * kSec + kMs);
    // Same struct sock reallocated for a new connection (even the same 4-tuple).
    Sock b = proxy_socket(T0 + 4 * kSec, sock_id);
    exchange(b, T0 + 4 * kSec + 10 * kMs);
    b.write(T0 + 7 * kSec, 300).rst_received(T0 + 7 * kSec + kMs);

    Harness h;
    h.feed(a.records);
    h.feed(b.records);
    ASSERT_EQ(h.out.incidents.size(), 2u);
    EXPECT_EQ(h.out.incidents[0].ts_ns, T0 + 3 * kSec + kMs);
    EXPECT_EQ(h.out.incidents[1].ts_ns, T0 + 7 * kSec + kMs);
    EXPECT_EQ(h.c.remembered_connections(), 2u);
}

TEST(CorrelatorRobustness, DedupeWindowExpiry) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300).rst_received(T0 + 3 * kSec + kMs);
    const rw_record rst = s.records[1];
    ASSERT_EQ(rst.type, RW_REC_RST_RECEIVED);
    const uint64_t last = s.records.back().ts_ns;

    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.c.remembered_connections(), 1u);

    h.c.expire(last + kLinger);  // exactly linger old: still remembered
    EXPECT_EQ(h.c.remembered_connections(), 1u);
    h.feed({rst});  // a late duplicate inside the window is absorbed
    EXPECT_EQ(h.out.incidents.size(), 1u);

    h.c.expire(last + kLinger + 1);
    EXPECT_EQ(h.c.remembered_connections(), 0u);
    h.feed({rst});  // after the window the connection is forgotten
    EXPECT_EQ(h.out.incidents.size(), 2u);
}

TEST(CorrelatorRobustness, RememberedConnectionsAreBounded) {
    Harness h;
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300);
    rw_record r = s.records.at(0);
    const size_t n = 140'000;
    for (size_t i = 0; i < n; ++i) {
        r.sock_id = 0x1000 + i;
        r.conn.start_ns = T0 - i;  // distinct connections (ports repeat after 65536)
        r.ts_ns = T0 + i;
        r.sport = static_cast<uint16_t>(i);
        h.c.on_record(r, h.out);
    }
    EXPECT_LT(h.c.remembered_connections(), n);
    EXPECT_GT(h.c.remembered_connections(), 0u);
    EXPECT_EQ(h.out.observations.size(), n);
}

// A reset storm (a backend dying with its pool): every record a reset with nothing in flight
// on a new socket. Those report nothing and leave no memory, so a connection of interest
// remembered before the storm survives it (its late duplicate is still recognised).
TEST(CorrelatorRobustness, ResetsThatReportNothingLeaveNoMemoryAndEvictNothing) {
    Sock a = proxy_socket();
    exchange(a, T0 + 10 * kMs);
    a.write(T0 + 3 * kSec, 300).rst_received(T0 + 3 * kSec + kMs);
    rw_record a_reset{};
    for (const rw_record& r : a.records)
        if (r.type == RW_REC_RST_RECEIVED) a_reset = r;
    ASSERT_EQ(a_reset.type, RW_REC_RST_RECEIVED);

    Sock idle = proxy_socket(T0 + 1, 0xffff8880'dddd0000ULL);
    exchange(idle, T0 + 10 * kMs);
    idle.rst_received(T0 + 20 * kMs);  // answered long ago: nothing in flight
    rw_record storm = idle.records.at(0);
    ASSERT_EQ(storm.type, RW_REC_RST_RECEIVED);

    Harness h;
    h.feed(a.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    const size_t storm_size = 3 * Correlator::max_remembered();  // past any second chance
    for (size_t i = 0; i < storm_size; ++i) {
        storm.sock_id = 0x2'0000'0000ULL + i;
        storm.conn.start_ns = storm.ts_ns = T0 + 4 * kSec + i;
        storm.sport = static_cast<uint16_t>(i);
        storm.netns = static_cast<uint32_t>(i >> 16);  // distinct 4-tuples
        h.c.on_record(storm, h.out);
    }
    EXPECT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.resets.size(), storm_size + 1);  // every reset still counted
    EXPECT_EQ(h.c.stats().idle_resets, storm_size);
    EXPECT_EQ(h.c.remembered_connections(), 1u);  // only the connection with the incident
    h.feed({a_reset});                            // its late duplicate
    EXPECT_EQ(h.out.incidents.size(), 1u);

    // A socket whose first record was such a reset is remembered once a later record needs it:
    // a server after its own close gets data (tcp_reset here, idle), then answers it with RST.
    Sock u = upstream_socket(T0 + 2, 0xffff8880'dddd1111ULL);
    serve(u, T0 + 10 * kMs);
    u.own_close(T0 + 30 * kMs).our_fin_acked(T0 + 31 * kMs);
    u.abort_on_data(T0 + 40 * kMs, kReasonAbortOnData);
    std::vector<rw_record> resets;
    for (const rw_record& r : u.records)
        if (r.type == RW_REC_RST_RECEIVED || r.type == RW_REC_RST_SENT) resets.push_back(r);
    ASSERT_EQ(resets.size(), 2u);
    h.feed(resets);
    h.feed({resets.back()});  // a duplicate of the deciding record
    ASSERT_EQ(h.out.incidents.size(), 2u);
    EXPECT_EQ(h.out.incidents[1].cause, Cause::data_after_close);
    EXPECT_EQ(h.c.remembered_connections(), 2u);
}

// Memory at the cap: churning far past it, the remembered connections stay at the cap and
// their table never grows past the size that holds the cap (no doubling into half-empty slots).
TEST(CorrelatorRobustness, AtTheCapTheTableKeepsItsSizeUnderChurn) {
    Harness h;
    rw_record r = proxy_socket().write(T0 + 3 * kSec, 300).records.at(0);
    const size_t cap = Correlator::max_remembered();
    size_t capacity_at_cap = 0;
    for (size_t i = 0; i < 4 * cap; ++i) {
        r.sock_id = 0x1000 + i;
        r.conn.start_ns = T0 - i;
        r.ts_ns = T0 + i;
        r.sport = static_cast<uint16_t>(i);
        r.netns = static_cast<uint32_t>(i >> 16);  // distinct 4-tuples
        h.c.on_record(r, h.out);
        h.out.clear();
        if (i + 1 == cap) capacity_at_cap = h.c.remembered_capacity();
    }
    EXPECT_EQ(h.c.remembered_connections(), cap);
    EXPECT_EQ(h.c.remembered_capacity(), capacity_at_cap);
    // Filled as absl fills a table before it doubles (7/8), not left half empty.
    EXPECT_GE(static_cast<double>(cap) / static_cast<double>(h.c.remembered_capacity()), 0.7);
}

TEST(CorrelatorRobustness, RememberedStateSurvivesTheMapsGrowingAndEvicting) {
    // The maps move their entries when they grow (open addressing): a connection's remembered
    // state must survive hundreds of thousands of other connections arriving between its
    // records, through every growth and then eviction at the cap. (Under the ASan build a
    // pointer into a map held across an insert is a heap-use-after-free here.)
    Sock a = proxy_socket(T0);
    for (int k = 1; k <= 6; ++k) exchange(a, T0 + k * 2 * kSec);  // idle reuses, answered
    a.write(T0 + 14 * kSec, 300).rst_received(T0 + 14 * kSec + kMs);
    ASSERT_EQ(count_type(a.records, RW_REC_IDLE_WRITE), 7u);

    // A server connection (another 4-tuple) that ends in TIME_WAIT; its timewait socket's RST
    // without a snapshot is tied to it by the 4-tuple alone.
    const uint64_t tu = T0 + 15 * kSec;
    Sock u = upstream_socket(tu);
    serve(u, tu + 10 * kMs);
    u.own_close(tu + 2 * kSec).our_fin_acked(tu + 2 * kSec + 100'000).peer_fin(tu + 2 * kSec + 200'000);
    u.timewait_rst_sent(tu + 2 * kSec + 300'000, 0xffff8880'cccc0000ULL, RW_RST_REASON_NONE,
                        /*with_snapshot=*/false);

    Correlator c(test_options());
    CorrelatorOutput out, noise;
    rw_record other = proxy_socket().write(T0 + 3 * kSec, 300).records.at(0);
    size_t others = 0;
    // `n` new client connections (distinct 4-tuples), just before `ts`.
    auto churn = [&](size_t n, uint64_t ts) {
        for (size_t i = 0; i < n; ++i, ++others) {
            other.sock_id = 0x1'0000'0000ULL + others;
            other.conn.start_ns = other.ts_ns = ts - n + i;
            set_addr(other.saddr, "10.99." + std::to_string(others >> 16 & 0xff) + ".1");
            other.sport = static_cast<uint16_t>(others);
            c.on_record(other, noise);
            noise.clear();
        }
    };
    auto feed = [&](const rw_record& r) { c.on_record(r, out); };

    for (const rw_record& r : a.records) {
        churn(30'000, r.ts_ns);
        feed(r);
    }
    churn(30'000, tu);
    for (size_t i = 0; i + 1 < u.records.size(); ++i) feed(u.records[i]);
    churn(30'000, u.records.back().ts_ns);
    feed(u.records.back());  // the timewait RST: role and own close come from memory
    // Late duplicates after more growth and eviction are still recognised.
    churn(30'000, u.records.back().ts_ns + kMs);
    feed(a.records.at(6));  // the last idle write
    for (const rw_record& r : a.records)
        if (r.type == RW_REC_RST_RECEIVED) feed(r);
    feed(u.records.back());

    EXPECT_LT(c.remembered_connections(), others);  // the cap was reached: evictions happened
    EXPECT_EQ(c.stats().unknown_history, 0u);
    size_t reuses = 0;
    for (const Observation& o : out.observations) reuses += o.kind == ObservationKind::reuse_idle;
    EXPECT_EQ(reuses, 7u);
    ASSERT_EQ(out.incidents.size(), 2u);
    EXPECT_EQ(out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(out.incidents[0].client, (Endpoint{kProxyIp, kProxyPort}));
    EXPECT_EQ(out.incidents[1].cause, Cause::data_after_close);
    EXPECT_EQ(out.incidents[1].observer, Observer::server);
    EXPECT_EQ(out.incidents[1].state, "TIME_WAIT");
}

// ---------------------------------------------------------------- addresses

TEST(CorrelatorAddresses, Ipv6Connection) {
    Sock s(RW_ROLE_CLIENT, "fd00:10:244::5", 43210, "2001:db8::7", 8443, T0);
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300).rst_received(T0 + 3 * kSec + kMs);
    Harness h;
    h.feed(s.records);
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].client, (Endpoint{"fd00:10:244::5", 43210}));
    EXPECT_EQ(h.out.incidents[0].server, (Endpoint{"2001:db8::7", 8443}));
}

TEST(CorrelatorAddresses, FormatAddress) {
    uint8_t a[RW_ADDR_LEN];
    set_addr(a, "10.1.2.3");
    EXPECT_EQ(format_address(a), "10.1.2.3");
    ASSERT_EQ(inet_pton(AF_INET6, "::ffff:192.168.0.255", a), 1);
    EXPECT_EQ(format_address(a), "192.168.0.255");
    ASSERT_EQ(inet_pton(AF_INET6, "2001:db8::1", a), 1);
    EXPECT_EQ(format_address(a), "2001:db8::1");
    ASSERT_EQ(inet_pton(AF_INET6, "::1", a), 1);
    EXPECT_EQ(format_address(a), "::1");
    std::memset(a, 0, sizeof(a));
    EXPECT_EQ(format_address(a), "::");
}

TEST(CorrelatorNames, TcpStateName) {
    EXPECT_EQ(tcp_state_name(RW_TCP_ESTABLISHED), "ESTABLISHED");
    EXPECT_EQ(tcp_state_name(RW_TCP_CLOSE_WAIT), "CLOSE_WAIT");
    EXPECT_EQ(tcp_state_name(RW_TCP_FIN_WAIT2), "FIN_WAIT2");
    EXPECT_EQ(tcp_state_name(RW_TCP_TIME_WAIT), "TIME_WAIT");
    EXPECT_EQ(tcp_state_name(RW_TCP_NEW_SYN_RECV), "NEW_SYN_RECV");
    EXPECT_EQ(tcp_state_name(0), "UNKNOWN(0)");
    EXPECT_EQ(tcp_state_name(200), "UNKNOWN(200)");
}

TEST(CorrelatorNames, CauseNamesRoundTrip) {
    for (int i = 0; i < kCauseCount; ++i) {
        const auto cause = static_cast<Cause>(i);
        EXPECT_EQ(parse_cause(to_string(cause)), cause);
    }
    EXPECT_EQ(to_string(Cause::write_after_fin), "write_after_fin");
    EXPECT_EQ(to_string(Cause::data_after_close), "data_after_close");
    EXPECT_EQ(to_string(Observer::client), "client");
    EXPECT_EQ(to_string(Observer::server), "server");
    EXPECT_FALSE(parse_cause("nope"));
    EXPECT_FALSE(parse_cause(""));
}

// ---------------------------------------------------------------- raw input

TEST(CorrelatorRaw, ValidRecordThroughOnRaw) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300).rst_received(T0 + 3 * kSec + kMs);
    Harness h;
    for (const auto& r : s.records) {
        // Unaligned copy, as ring-buffer samples may be.
        std::vector<unsigned char> buf(sizeof(rw_record) + 1);
        std::memcpy(buf.data() + 1, &r, sizeof(r));
        h.c.on_raw(buf.data() + 1, sizeof(rw_record), h.out);
    }
    ASSERT_EQ(h.out.incidents.size(), 1u);
    EXPECT_EQ(h.out.incidents[0].cause, Cause::idle_close_race);
    EXPECT_EQ(h.c.stats().records, s.records.size());
    EXPECT_EQ(h.c.stats().records_by_type[RW_REC_IDLE_WRITE], 1u);
    EXPECT_EQ(h.c.stats().records_by_type[RW_REC_RST_RECEIVED], 1u);
    EXPECT_EQ(h.c.stats().records_by_type[RW_REC_CLOSED], 1u);
    EXPECT_EQ(h.c.stats().malformed, 0u);
}

TEST(CorrelatorRaw, WrongSizesAreMalformed) {
    Harness h;
    std::vector<unsigned char> buf(sizeof(rw_record) * 2, 0xab);
    h.c.on_raw(nullptr, 0, h.out);
    h.c.on_raw(nullptr, sizeof(rw_record), h.out);
    h.c.on_raw(buf.data(), 0, h.out);
    h.c.on_raw(buf.data(), 1, h.out);
    h.c.on_raw(buf.data(), sizeof(rw_record) - 1, h.out);
    h.c.on_raw(buf.data(), sizeof(rw_record) + 1, h.out);
    h.c.on_raw(buf.data(), sizeof(rw_record) * 2, h.out);
    EXPECT_EQ(h.c.stats().malformed, 7u);
    EXPECT_EQ(h.c.stats().records, 0u);
    EXPECT_TRUE(h.out.incidents.empty());
}

TEST(CorrelatorRaw, BadFieldsAreMalformed) {
    Sock s = proxy_socket();
    exchange(s, T0 + 10 * kMs);
    s.write(T0 + 3 * kSec, 300).rst_received(T0 + 3 * kSec + kMs);
    const rw_record good = s.records.at(1);
    Harness h;
    for (uint8_t type : {uint8_t{0}, uint8_t{RW_REC_TYPE_MAX}, uint8_t{255}}) {
        rw_record r = good;
        r.type = type;
        h.c.on_raw(&r, sizeof(r), h.out);
    }
    for (uint8_t family : {uint8_t{0}, uint8_t{1}, uint8_t{7}, uint8_t{255}}) {
        rw_record r = good;
        r.family = family;
        h.c.on_raw(&r, sizeof(r), h.out);
    }
    EXPECT_EQ(h.c.stats().malformed, 7u);
    EXPECT_EQ(h.c.stats().records, 0u);
    EXPECT_TRUE(h.out.incidents.empty());
    h.c.on_raw(&good, sizeof(good), h.out);  // still works afterwards
    EXPECT_EQ(h.out.incidents.size(), 1u);
}

TEST(CorrelatorRaw, RandomBytesNeverCrash) {
    Harness h;
    std::mt19937_64 rng(12345);
    const int n = 20000;
    std::vector<unsigned char> buf(sizeof(rw_record));
    for (int i = 0; i < n; ++i) {
        for (auto& b : buf) b = static_cast<unsigned char>(rng());
        if (i % 2 == 0) {  // make half of them pass decoding to reach the classifier
            rw_record r;
            std::memcpy(&r, buf.data(), sizeof(r));
            r.type = static_cast<uint8_t>(1 + rng() % (RW_REC_TYPE_MAX - 1));
            r.family = (rng() & 1) ? AF_INET : AF_INET6;
            r.conn.role = static_cast<uint8_t>(rng() % 4);
            r.conn.flags = static_cast<uint8_t>(rng() & ~RW_F_NO_SOCKET);
            std::memcpy(buf.data(), &r, sizeof(r));
        }
        h.c.on_raw(buf.data(), buf.size(), h.out);
        if (i % 1000 == 0) h.c.expire(rng());
    }
    EXPECT_EQ(h.c.stats().records + h.c.stats().malformed, static_cast<uint64_t>(n));
    EXPECT_GE(h.c.stats().records, static_cast<uint64_t>(n / 2));
    EXPECT_EQ(h.c.stats().incidents, h.out.incidents.size());
}

// ---------------------------------------------------------------- every RST is counted

TEST(CorrelatorResets, EveryRstIsAResetEventWithKnownRoles) {
    Sock proxy = proxy_socket();
    exchange(proxy, T0 + kSec);
    proxy.write(T0 + 4 * kSec, 300).rst_received(T0 + 4 * kSec + kMs);
    Sock upstream = upstream_socket();
    serve(upstream, T0 + kSec);
    upstream.receive(T0 + 4 * kSec, 300, false).abort_close(T0 + 4 * kSec + kMs, kReasonAbortOnClose);

    Harness h;
    h.feed(proxy.records);
    h.feed(upstream.records);
    ASSERT_EQ(h.out.resets.size(), 2u);
    size_t sent = 0;
    for (const ResetEvent& reset : h.out.resets) {
        EXPECT_TRUE(reset.role_known);
        EXPECT_EQ(reset.client, (Endpoint{kProxyIp, kProxyPort}));
        EXPECT_EQ(reset.server, (Endpoint{kUpstreamIp, kUpstreamPort}));
        sent += reset.sent ? 1 : 0;
    }
    EXPECT_EQ(sent, 1u);
}

TEST(CorrelatorResets, UnknownHistoryRstGuessesServerByLowerPort) {
    // Predates rstwatch: no incident, but the reset still counts.
    Sock s(RW_ROLE_CLIENT, kProxyIp, kProxyPort, kUpstreamIp, kUpstreamPort, /*start_ns=*/0);
    s.rst_received(T0 + kSec);
    Harness h;
    h.feed(s.records);
    h.feed({no_socket_rst(T0 + 2 * kSec)});
    EXPECT_TRUE(h.out.incidents.empty());
    ASSERT_EQ(h.out.resets.size(), 2u);
    EXPECT_FALSE(h.out.resets[0].role_known);
    EXPECT_FALSE(h.out.resets[0].sent);
    EXPECT_EQ(h.out.resets[0].server, (Endpoint{kUpstreamIp, kUpstreamPort}));
    EXPECT_EQ(h.out.resets[0].client, (Endpoint{kProxyIp, kProxyPort}));
    EXPECT_TRUE(h.out.resets[1].sent);
}

TEST(CorrelatorResets, NonResetRecordsGiveNoResetEvent) {
    Sock proxy = proxy_socket();
    exchange(proxy, T0 + kSec);
    proxy.write(T0 + 4 * kSec, 300).receive(T0 + 4 * kSec + kMs, 100);
    Harness h;
    h.feed(proxy.records);
    EXPECT_FALSE(proxy.records.empty());
    EXPECT_TRUE(h.out.resets.empty());
}

TEST(CorrelatorResets, RefusedConnectIsAResetButNoIncident) {
    // connect() answered by RST: the socket is still in SYN_SENT when tcp_reset runs.
    Sock s = proxy_socket();
    s.rst_received(T0 + kMs);
    ASSERT_EQ(s.records.size(), 1u);
    rw_record r = s.records[0];
    r.state = RW_TCP_SYN_SENT;
    Harness h;
    h.feed({r});
    EXPECT_TRUE(h.out.incidents.empty());
    ASSERT_EQ(h.out.resets.size(), 1u);
    EXPECT_FALSE(h.out.resets[0].sent);
}
