// Writes the binary seeds of the fuzz corpus: ring-buffer record timelines (fuzz/corpus/fuzz_records)
// and a /diagnose answer (fuzz/corpus/fuzz_diagnosis). The text seeds come from make_corpus.py.
//
//   cmake --build build/fuzz --target fuzz_gen_corpus && build/fuzz/fuzz_gen_corpus fuzz/corpus
//
// The record timelines follow what the BPF side emits for the README's failure modes; the
// generator checks that the correlator classifies each as expected, so the seeds stay deep.
#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "correlator.h"
#include "diagnosis.h"

using namespace rstwatch;

namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSec = 1'000'000'000;

void set_addr(uint8_t out[RW_ADDR_LEN], const char* ip, uint8_t& family) {
    std::memset(out, 0, RW_ADDR_LEN);
    in_addr v4{};
    if (inet_pton(AF_INET, ip, &v4) == 1) {
        out[10] = out[11] = 0xff;
        std::memcpy(out + 12, &v4, 4);
        family = AF_INET;
    } else {
        inet_pton(AF_INET6, ip, out);
        family = AF_INET6;
    }
}

// One socket: the snapshot evolves as the kernel's per-socket state would.
struct Sock {
    rw_record base{};
    std::vector<rw_record> records;

    Sock(uint8_t role, const char* local, uint16_t lport, const char* remote, uint16_t rport,
         uint64_t start, uint64_t id, const char* comm) {
        std::memset(&base, 0, sizeof(base));
        base.sock_id = id;
        set_addr(base.saddr, local, base.family);
        uint8_t f;
        set_addr(base.daddr, remote, f);
        base.sport = lport;
        base.dport = rport;
        base.netns = 4026532316u;
        base.rst_reason = RW_RST_REASON_NONE;
        base.conn.start_ns = start;
        base.conn.role = role;
        base.conn.writer_pid = base.conn.writer_tid = 5120;
        std::strncpy(base.conn.writer_comm, comm, RW_COMM_LEN - 1);
    }
    rw_record& emit(uint8_t type, uint64_t ts, uint8_t state, uint8_t old_state = 0) {
        rw_record r = base;
        r.type = type;
        r.ts_ns = ts;
        r.state = state;
        r.old_state = old_state;
        r.idle_ns = base.conn.armed_write_ns && ts > base.conn.armed_write_ns ? ts - base.conn.armed_write_ns : 0;
        records.push_back(r);
        return records.back();
    }
    void idle_write(uint64_t ts, uint64_t idle, uint8_t state = RW_TCP_ESTABLISHED) {
        base.conn.flags |= RW_F_ARMED;
        if (state == RW_TCP_CLOSE_WAIT) base.conn.flags |= RW_F_WRITE_IN_CLOSE_WAIT;
        base.conn.armed_write_ns = ts;
        base.conn.armed_idle_ns = idle;
        base.conn.armed_state = state;
        base.conn.armed_write_seq = 1000;
        base.conn.armed_bytes_received = base.bytes_received;
        base.conn.requests += 1;
        base.pid = base.tid = 5120;
        std::strncpy(base.comm, base.conn.writer_comm, RW_COMM_LEN);
        auto& r = emit(state == RW_TCP_CLOSE_WAIT ? RW_REC_CLOSE_WAIT_WRITE : RW_REC_IDLE_WRITE, ts, state);
        r.idle_ns = idle;
        base.pid = base.tid = 0;
        std::memset(base.comm, 0, RW_COMM_LEN);
    }
    void peer_fin(uint64_t ts) {
        base.conn.flags |= RW_F_PEER_FIN;
        base.conn.peer_fin_ns = ts;
        emit(RW_REC_PEER_FIN, ts, RW_TCP_CLOSE_WAIT, RW_TCP_ESTABLISHED);
    }
    void own_close(uint64_t ts, uint64_t idle) {
        base.conn.flags |= RW_F_APP_CLOSED;
        base.conn.app_close_ns = ts;
        base.conn.idle_closed = 1;
        auto& r = emit(RW_REC_OWN_CLOSE, ts, RW_TCP_FIN_WAIT1, RW_TCP_ESTABLISHED);
        r.idle_ns = idle;
    }
    void rst(bool sent, uint64_t ts, uint8_t state, uint32_t reason = RW_RST_REASON_NONE) {
        if (!sent) base.conn.flags |= RW_F_RST_RECEIVED;
        auto& r = emit(sent ? RW_REC_RST_SENT : RW_REC_RST_RECEIVED, ts, state);
        r.rst_reason = reason;
    }
    void closed(uint64_t ts, uint8_t old_state) { emit(RW_REC_CLOSED, ts, RW_TCP_CLOSE, old_state); }
};

CorrelatorOptions opts() {
    CorrelatorOptions o;
    o.idle_threshold_ns = 500 * kMs;
    o.linger_ns = 10 * kSec;
    return o;
}

bool write_file(const std::string& path, const void* data, size_t size) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    return static_cast<bool>(f);
}

// Raw-mode seed: a 0 byte, then the records back to back.
bool write_records(const std::string& dir, const char* name, const std::vector<rw_record>& records) {
    std::string bytes(1, '\0');
    bytes.append(reinterpret_cast<const char*>(records.data()), records.size() * sizeof(rw_record));
    Correlator c(opts());
    CorrelatorOutput out;
    for (const auto& r : records) c.on_record(r, out);
    std::printf("%-28s %zu records -> %zu incidents, %zu observations, %zu resets\n", name,
                records.size(), out.incidents.size(), out.observations.size(), out.resets.size());
    return write_file(dir + "/fuzz_records/" + name, bytes.data(), bytes.size());
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const uint64_t t0 = 100 * kSec;
    bool ok = true;

    {  // nginx reuses a connection the upstream closed after 2 s idle: FIN crosses the request.
        Sock s(RW_ROLE_CLIENT, "10.244.1.2", 41862, "10.244.2.2", 8080, t0, 0xffff888112340000ULL, "nginx");
        s.idle_write(t0 + 2 * kSec, 2 * kSec);
        s.peer_fin(t0 + 2 * kSec + kMs / 2);
        s.rst(false, t0 + 2 * kSec + 700'000, RW_TCP_CLOSE_WAIT);
        s.closed(t0 + 2 * kSec + 800'000, RW_TCP_CLOSE_WAIT);
        ok &= write_records(dir, "idle_close_race_fin", s.records);
    }
    {  // Same, RST only (ESTABLISHED), IPv6.
        Sock s(RW_ROLE_CLIENT, "fd00::2", 41863, "fd00::3", 80, t0, 0xffff888112350000ULL, "envoy");
        s.idle_write(t0 + 5 * kSec, 5 * kSec);
        s.rst(false, t0 + 5 * kSec + 300'000, RW_TCP_ESTABLISHED);
        ok &= write_records(dir, "idle_close_race_rst_v6", s.records);
    }
    {  // The client writes after the peer's FIN (write_after_fin).
        Sock s(RW_ROLE_CLIENT, "10.244.1.2", 41870, "10.244.2.2", 8080, t0, 0xffff888112360000ULL, "python3");
        s.peer_fin(t0 + 1 * kSec);
        s.idle_write(t0 + 3 * kSec, 3 * kSec, RW_TCP_CLOSE_WAIT);
        s.rst(false, t0 + 3 * kSec + 900 * kMs, RW_TCP_CLOSE_WAIT);
        ok &= write_records(dir, "write_after_fin", s.records);
    }
    {  // Server side: idle close, then data arrives after the close: RST sent.
        Sock s(RW_ROLE_SERVER, "10.244.2.2", 8080, "10.244.1.2", 41862, t0, 0xffff888112370000ULL, "node");
        s.idle_write(t0 + 10 * kMs, 0);
        s.own_close(t0 + 2 * kSec, 2 * kSec);
        s.rst(true, t0 + 2 * kSec + kMs, RW_TCP_FIN_WAIT1, 18);
        // The timewait socket of the same tuple (another sock_id).
        rw_record tw = s.base;
        tw.sock_id = 0xffff8881deadbeefULL;
        tw.conn.flags = RW_F_FROM_TIMEWAIT;
        tw.conn.start_ns = 0;
        tw.type = RW_REC_RST_SENT;
        tw.ts_ns = t0 + 2 * kSec + 5 * kMs;
        tw.state = RW_TCP_TIME_WAIT;
        tw.rst_reason = 19;
        s.records.push_back(tw);
        ok &= write_records(dir, "server_data_after_close", s.records);
    }
    {  // A request written 0.3 s after the last response (below the write threshold: no write
       // record); the server's FIN crosses it: the state hook infers the waiting request.
        Sock s(RW_ROLE_CLIENT, "10.244.1.2", 41880, "10.244.2.2", 8080, t0, 0xffff888112380000ULL, "node");
        s.base.conn.flags |= RW_F_ARMED | RW_F_ARMED_INFERRED;
        s.base.conn.armed_write_ns = t0 + 300 * kMs;
        s.base.conn.armed_idle_ns = 300 * kMs;
        s.base.conn.armed_state = RW_TCP_ESTABLISHED;
        s.base.send_after_recv = 75;
        s.base.unacked_bytes = 120;
        s.peer_fin(t0 + 300 * kMs + kMs / 4);
        s.rst(false, t0 + 300 * kMs + kMs / 2, RW_TCP_CLOSE_WAIT);
        ok &= write_records(dir, "idle_close_race_inferred", s.records);
    }
    {  // Server half-closed at its keepalive timeout; the request arrived, was never read.
        Sock s(RW_ROLE_SERVER, "10.244.2.2", 8080, "10.244.1.2", 41890, t0, 0xffff888112390000ULL, "java");
        s.own_close(t0 + 2 * kSec, 2 * kSec);
        s.base.unread_bytes = 300;
        s.emit(RW_REC_UNREAD_AT_DESTROY, t0 + 2 * kSec + 5 * kMs, RW_TCP_CLOSE);
        ok &= write_records(dir, "server_unread_at_destroy", s.records);
    }
    {  // A RST sent with no socket (connection refused / unknown port) and a handshake RST.
        Sock s(RW_ROLE_UNKNOWN, "10.244.2.2", 9999, "10.244.1.2", 41999, 0, 0, "");
        s.base.conn.flags = RW_F_NO_SOCKET;
        s.rst(true, t0, RW_TCP_CLOSE);
        s.base.conn.flags = 0;
        s.rst(false, t0 + kMs, RW_TCP_SYN_SENT);
        ok &= write_records(dir, "no_socket_resets", s.records);
    }
    {  // Structured-mode seeds (odd first byte): deterministic pseudo-random operation streams.
        std::mt19937 rng(42);
        for (int i = 0; i < 4; ++i) {
            std::string bytes(1, '\x01');
            const size_t n = 200 + 300 * i;
            for (size_t j = 0; j < n; ++j) bytes.push_back(static_cast<char>(rng()));
            ok &= write_file(dir + "/fuzz_records/structured_" + std::to_string(i), bytes.data(), bytes.size());
        }
    }
    {  // A /diagnose answer with one pair of each verdict shape.
        PairVerdict a;
        a.pair.client = {"ingress-nginx", "ingress-nginx-controller-5d88c", "ingress-nginx-controller"};
        a.pair.server = {"shop", "api-7d4b9c6f5d-abcde", "api"};
        a.pair.server_port = 8080;
        a.server_timeout = TimeoutEstimate{2.0, 12};
        a.client_timeout = TimeoutEstimate{60.0, 7};
        a.max_reuse_idle_s = 2.4;
        a.reuses = 40;
        a.server_closes = 12;
        a.client_closes = 7;
        a.incidents[static_cast<size_t>(Cause::idle_close_race)] = 3;
        a.mismatch = true;
        a.reason = "the client reuses connections idle up to 2.4 s; the server closes after ~2.0 s";
        a.fix = KeepaliveFix{"nginx", 1.5, "nginx upstream keepalive_timeout 1.5s;"};
        a.client_comm = "nginx";
        a.reuse_hist[3] = 30;
        a.reuse_hist[5] = 10;
        a.server_close_hist[4] = 12;
        a.client_close_hist[9] = 7;
        PairVerdict b;
        b.pair.client = {"", "", "office-vpn"};
        b.pair.server = {"", "", "world"};
        b.pair.server_port = 443;
        b.reason = "not enough evidence";
        const std::string text = diagnosis_to_json({a, b}, "workload").dump();
        ok &= write_file(dir + "/fuzz_diagnosis/workload.json", text.data(), text.size());
        const std::string pod = diagnosis_to_json({a}, "pod").dump(2);
        ok &= write_file(dir + "/fuzz_diagnosis/pod_pretty.json", pod.data(), pod.size());
        const std::string empty = diagnosis_to_json({}, "pod").dump();
        ok &= write_file(dir + "/fuzz_diagnosis/empty.json", empty.data(), empty.size());
    }
    return ok ? 0 : 1;
}
