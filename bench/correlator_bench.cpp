// Correlator throughput (Google Benchmark): Correlator::on_raw over realistic record mixes
// as the BPF side emits them, across many concurrent connections. Reports items/s
// (records per second on one core). Target: >= 2M records/s.
//
// Mixes (pre-generated, time-ordered, fed as raw ring-buffer bytes; the agent's periodic
// expire() is included once per 100k records, as the agent calls it about once a second):
//   IdleKeepalive  pooled keepalive connections: idle reuse writes, the upstream's idle
//                  FIN, the pool's own idle closes (healthy traffic: observations only)
//   RstChurn       connection churn ending in RSTs: one RST sent (client socket) and one
//                  RST received (server socket) per connection (the storm of bench/run.py)
//   Incidents      stale keepalive races: peer FIN, write in CLOSE_WAIT, RST received
//   Mixed          60% IdleKeepalive, 30% RstChurn, 10% Incidents lifecycles, interleaved
// Arg: number of concurrently open connections the records are spread over.
//
// Memory (BM_BytesPerConnection/N): heap bytes the correlator holds per remembered connection
// after N distinct connections (counter bytes_per_conn; N above the cap churns through it).
#include <arpa/inet.h>
#include <benchmark/benchmark.h>
#include <malloc.h>
#include <sys/socket.h>

#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "correlator.h"

using namespace rstwatch;

namespace {

constexpr uint64_t kMs = 1'000'000;
constexpr uint64_t kSec = 1'000'000'000;
constexpr uint64_t kThreshold = 1 * kSec;
constexpr uint32_t kNetns = 4026531840u;
constexpr size_t kRecords = 200'000;  // per generated mix (~40 MB of records)
constexpr size_t kExpireEvery = 100'000;

void v4(uint8_t out[RW_ADDR_LEN], uint32_t host_order) {
    std::memset(out, 0, RW_ADDR_LEN);
    out[10] = 0xff;
    out[11] = 0xff;
    const uint32_t be = htonl(host_order);
    std::memcpy(out + 12, &be, 4);
}

void comm(char out[RW_COMM_LEN], const char* name) {
    std::memset(out, 0, RW_COMM_LEN);
    std::memcpy(out, name, strnlen(name, RW_COMM_LEN - 1));
}

// One socket (one end of a connection) with the per-socket snapshot the BPF side keeps.
struct End {
    rw_record base{};
    uint64_t bytes_received = 0;
};

End make_end(uint64_t sock_id, uint8_t role, uint32_t local_ip, uint16_t lport, uint32_t remote_ip,
             uint16_t rport, uint64_t start_ns) {
    End e;
    e.base.sock_id = sock_id;
    e.base.family = AF_INET;
    v4(e.base.saddr, local_ip);
    v4(e.base.daddr, remote_ip);
    e.base.sport = lport;
    e.base.dport = rport;
    e.base.netns = kNetns;
    e.base.rst_reason = RW_RST_REASON_NONE;
    e.base.conn.start_ns = start_ns;
    e.base.conn.role = role;
    e.base.conn.writer_pid = role == RW_ROLE_CLIENT ? 5120 : 77;
    e.base.conn.writer_tid = e.base.conn.writer_pid;
    comm(e.base.conn.writer_comm, role == RW_ROLE_CLIENT ? "nginx" : "java");
    return e;
}

rw_record rec(const End& e, uint8_t type, uint64_t ts, uint8_t state, uint8_t old_state,
              uint64_t idle_ns) {
    rw_record r = e.base;
    r.type = type;
    r.ts_ns = ts;
    r.state = state;
    r.old_state = old_state;
    r.idle_ns = idle_ns;
    r.bytes_received = e.bytes_received;
    r.bytes_acked = e.bytes_received / 4;
    r.snd_una = 1000 + static_cast<uint32_t>(r.bytes_acked);
    // Softirq context for everything but writes.
    r.pid = 17;
    r.tid = 17;
    comm(r.comm, "ksoftirqd/0");
    return r;
}

void arm_write(End& e, uint64_t ts, uint64_t idle_ns, bool in_close_wait) {
    auto& c = e.base.conn;
    c.flags |= RW_F_ARMED;
    if (in_close_wait) c.flags |= RW_F_WRITE_IN_CLOSE_WAIT;
    c.armed_write_ns = ts;
    c.armed_idle_ns = idle_ns;
    c.armed_bytes_received = e.bytes_received;
    c.armed_state = in_close_wait ? RW_TCP_CLOSE_WAIT : RW_TCP_ESTABLISHED;
    c.requests += 1;
}

rw_record write_rec(const End& e, uint8_t type, uint64_t ts, uint8_t state, uint64_t idle_ns) {
    rw_record r = rec(e, type, ts, state, state, idle_ns);
    r.pid = r.conn.writer_pid;
    r.tid = r.conn.writer_tid;
    comm(r.comm, r.conn.writer_comm);
    return r;
}

enum class Mix { idle_keepalive, rst_churn, incidents, mixed };

// Generates kRecords records in time order: `concurrency` connections are open at a time,
// each runs one lifecycle of its kind (chosen by the mix) and is then replaced.
class Generator {
public:
    Generator(Mix mix, size_t concurrency, uint32_t seed) : mix_(mix), rng_(seed) {
        for (size_t i = 0; i < concurrency; ++i) open_.push_back(new_lifecycle());
    }

    std::vector<rw_record> run() {
        std::vector<rw_record> out;
        out.reserve(kRecords + 8);
        while (out.size() < kRecords) {
            // Round robin over the open connections: interleaves their records.
            Lifecycle& l = open_[cursor_ % open_.size()];
            now_ += 10'000;  // 10 us between records (~100k records/s)
            if (!step(l, out)) l = new_lifecycle();
            ++cursor_;
        }
        out.resize(kRecords);
        return out;
    }

private:
    enum class Kind { idle_keepalive, rst_churn, incident };
    struct Lifecycle {
        Kind kind;
        int stage = 0;
        End client, server;
    };

    Kind pick() {
        switch (mix_) {
        case Mix::idle_keepalive: return Kind::idle_keepalive;
        case Mix::rst_churn: return Kind::rst_churn;
        case Mix::incidents: return Kind::incident;
        case Mix::mixed: {
            const unsigned p = rng_() % 10;
            return p < 6 ? Kind::idle_keepalive : p < 9 ? Kind::rst_churn : Kind::incident;
        }
        }
        return Kind::rst_churn;
    }

    Lifecycle new_lifecycle() {
        Lifecycle l;
        l.kind = pick();
        const uint64_t id = ++next_id_;
        const uint32_t client_ip = 0x0af40100 + static_cast<uint32_t>(id % 200) + 1;  // 10.244.1.x
        const uint32_t server_ip = 0x0af40200 + static_cast<uint32_t>(id % 50) + 1;   // 10.244.2.x
        const uint16_t cport = static_cast<uint16_t>(20000 + id % 40000);
        const uint16_t sport = static_cast<uint16_t>(8080 + id % 4);
        l.client = make_end(0xffff888000000000ULL + id * 0x1000, RW_ROLE_CLIENT, client_ip, cport,
                            server_ip, sport, now_);
        l.server = make_end(0xffff889000000000ULL + id * 0x1000, RW_ROLE_SERVER, server_ip, sport,
                            client_ip, cport, now_);
        return l;
    }

    // Appends the lifecycle's next record(s); false when it has ended.
    bool step(Lifecycle& l, std::vector<rw_record>& out) {
        End& c = l.client;
        End& s = l.server;
        const uint64_t idle = kThreshold + (rng_() % 20) * 100 * kMs;  // 1 .. 3 s idle
        switch (l.kind) {
        case Kind::rst_churn:
            if (l.stage++ == 0) {
                rw_record r = rec(c, RW_REC_RST_SENT, now_, RW_TCP_CLOSE, RW_TCP_ESTABLISHED, 0);
                r.rst_reason = 17;  // TCP_ABORT_ON_CLOSE
                out.push_back(r);
                return true;
            }
            out.push_back(rec(s, RW_REC_RST_RECEIVED, now_, RW_TCP_ESTABLISHED, RW_TCP_ESTABLISHED, 0));
            return false;
        case Kind::idle_keepalive:
            // Three idle reuses, each answered; then the upstream idle-closes (FIN seen by
            // both ends), the pool closes its end.
            if (l.stage < 3) {
                c.bytes_received += 1200;
                c.base.conn.flags &= static_cast<uint8_t>(~RW_F_ARMED);
                arm_write(c, now_, idle, false);
                out.push_back(write_rec(c, RW_REC_IDLE_WRITE, now_, RW_TCP_ESTABLISHED, idle));
                c.bytes_received += 1200;  // the response arrives: the next write disarms
                ++l.stage;
                return true;
            }
            if (l.stage == 3) {
                s.base.conn.flags |= RW_F_APP_CLOSED;
                s.base.conn.app_close_ns = now_;
                s.base.conn.idle_closed = 1;
                out.push_back(rec(s, RW_REC_OWN_CLOSE, now_, RW_TCP_FIN_WAIT1, RW_TCP_ESTABLISHED, idle));
                ++l.stage;
                return true;
            }
            if (l.stage == 4) {
                c.base.conn.flags = static_cast<uint8_t>((c.base.conn.flags & ~RW_F_ARMED) | RW_F_PEER_FIN);
                c.base.conn.peer_fin_ns = now_;
                out.push_back(rec(c, RW_REC_PEER_FIN, now_, RW_TCP_CLOSE_WAIT, RW_TCP_ESTABLISHED, idle));
                ++l.stage;
                return true;
            }
            c.base.conn.flags |= RW_F_APP_CLOSED;
            c.base.conn.app_close_ns = now_;
            out.push_back(rec(c, RW_REC_OWN_CLOSE, now_, RW_TCP_LAST_ACK, RW_TCP_CLOSE_WAIT, 0));
            return false;
        case Kind::incident:
            // The upstream idle-closes, nginx writes on the CLOSE_WAIT connection, RST.
            if (l.stage == 0) {
                c.bytes_received += 1200;
                s.base.conn.flags |= RW_F_APP_CLOSED;
                s.base.conn.app_close_ns = now_;
                out.push_back(rec(s, RW_REC_OWN_CLOSE, now_, RW_TCP_FIN_WAIT1, RW_TCP_ESTABLISHED, idle));
                ++l.stage;
                return true;
            }
            if (l.stage == 1) {
                c.base.conn.flags |= RW_F_PEER_FIN;
                c.base.conn.peer_fin_ns = now_;
                out.push_back(rec(c, RW_REC_PEER_FIN, now_, RW_TCP_CLOSE_WAIT, RW_TCP_ESTABLISHED, idle));
                ++l.stage;
                return true;
            }
            if (l.stage == 2) {
                arm_write(c, now_, idle, true);
                out.push_back(write_rec(c, RW_REC_CLOSE_WAIT_WRITE, now_, RW_TCP_CLOSE_WAIT, idle));
                ++l.stage;
                return true;
            }
            if (l.stage == 3) {
                rw_record r = rec(s, RW_REC_RST_SENT, now_, RW_TCP_FIN_WAIT2, RW_TCP_FIN_WAIT2, 0);
                r.rst_reason = 18;  // TCP_ABORT_ON_DATA
                out.push_back(r);
                ++l.stage;
                return true;
            }
            out.push_back(rec(c, RW_REC_RST_RECEIVED, now_, RW_TCP_CLOSE_WAIT, RW_TCP_CLOSE_WAIT, 0));
            return false;
        }
        return false;
    }

    Mix mix_;
    std::mt19937 rng_;
    std::vector<Lifecycle> open_;
    size_t cursor_ = 0;
    uint64_t next_id_ = 0;
    uint64_t now_ = 1000 * kSec;
};

std::string reason_name(uint32_t raw) {
    switch (raw) {
    case 17: return "TCP_ABORT_ON_CLOSE";
    case 18: return "TCP_ABORT_ON_DATA";
    default: return "";
    }
}

void run_mix(benchmark::State& state, Mix mix) {
    const auto records = Generator(mix, static_cast<size_t>(state.range(0)), 42).run();
    CorrelatorOptions options;
    options.reset_reason_name = reason_name;
    options.idle_threshold_ns = close_threshold_ns(1.0);
    size_t incidents = 0, observations = 0, resets = 0;
    uint64_t passes = 0;
    for (auto _ : state) {
        // A fresh correlator per pass over the records (their timestamps restart).
        state.PauseTiming();
        Correlator correlator(options);
        CorrelatorOutput out;
        state.ResumeTiming();
        size_t since_expire = 0;
        for (const rw_record& r : records) {
            correlator.on_raw(&r, sizeof r, out);
            incidents += out.incidents.size();
            observations += out.observations.size();
            resets += out.resets.size();
            out.clear();  // the agent consumes the output after every record
            if (++since_expire == kExpireEvery) {
                correlator.expire(r.ts_ns);
                since_expire = 0;
            }
        }
        benchmark::DoNotOptimize(correlator.stats().records);
        ++passes;
        state.PauseTiming();
        // Destroying the correlator (its maps) is not part of the per-record cost.
        {
            Correlator dropped = std::move(correlator);
        }
        state.ResumeTiming();
    }
    state.SetItemsProcessed(static_cast<int64_t>(passes * records.size()));
    const double p = passes ? static_cast<double>(passes) : 1.0;
    state.counters["incidents_per_pass"] = static_cast<double>(incidents) / p;
    state.counters["observations_per_pass"] = static_cast<double>(observations) / p;
    state.counters["resets_per_pass"] = static_cast<double>(resets) / p;
}

// Heap bytes in use (mallinfo2: small chunks plus mmap()ed blocks, where large tables go).
// Allocated minus freed bytes, not RSS: memory malloc keeps after a free is not counted.
size_t heap_in_use() {
    const struct mallinfo2 m = mallinfo2();
    return m.uordblks + m.hblkhd;
}

// Feeds `state.range(0)` distinct client connections (one idle-write record each) and divides
// the heap bytes the correlator then holds (its maps, their slack and the eviction queue: all
// it allocated) by the connections it remembers.
void BM_BytesPerConnection(benchmark::State& state) {
    const size_t n = static_cast<size_t>(state.range(0));
    CorrelatorOptions options;
    options.idle_threshold_ns = close_threshold_ns(1.0);
    End c = make_end(0, RW_ROLE_CLIENT, 0x0af40101, 20000, 0x0af40201, 8080, 1000 * kSec);
    arm_write(c, 1001 * kSec, 2 * kSec, false);
    rw_record r = write_rec(c, RW_REC_IDLE_WRITE, 1001 * kSec, RW_TCP_ESTABLISHED, 2 * kSec);
    double bytes_per_conn = 0, remembered = 0;
    for (auto _ : state) {
        CorrelatorOutput out;
        const size_t before = heap_in_use();
        Correlator correlator(options);
        for (size_t i = 0; i < n; ++i) {
            r.sock_id = 0xffff888000000000ULL + i * 0x1000;
            r.conn.start_ns = 1000 * kSec + i;
            r.ts_ns = r.conn.armed_write_ns = 1001 * kSec + i;
            v4(r.saddr, 0x0af40100 + static_cast<uint32_t>(i >> 16));  // distinct 4-tuples
            r.sport = static_cast<uint16_t>(i);
            correlator.on_record(r, out);
            out.clear();
        }
        remembered = static_cast<double>(correlator.remembered_connections());
        bytes_per_conn = static_cast<double>(heap_in_use() - before) / remembered;
    }
    state.counters["bytes_per_conn"] = bytes_per_conn;
    state.counters["remembered"] = remembered;
}

void BM_IdleKeepalive(benchmark::State& s) { run_mix(s, Mix::idle_keepalive); }
void BM_RstChurn(benchmark::State& s) { run_mix(s, Mix::rst_churn); }
void BM_Incidents(benchmark::State& s) { run_mix(s, Mix::incidents); }
void BM_Mixed(benchmark::State& s) { run_mix(s, Mix::mixed); }

}  // namespace

BENCHMARK(BM_IdleKeepalive)->Arg(1000)->Arg(50000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_RstChurn)->Arg(1000)->Arg(50000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Incidents)->Arg(1000)->Arg(50000)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Mixed)->Arg(1000)->Arg(50000)->Unit(benchmark::kMillisecond);
// 100k connections (the memory budget's), and 1M churned through the cap of 131,072.
BENCHMARK(BM_BytesPerConnection)->Arg(100000)->Arg(1000000)->Iterations(1)->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
