// Fuzzes the ring-buffer record decoding and the correlator (agent/correlator.h), then formats
// what it produced as `trace` does (agent/output.h).
//
// Input: first byte selects the mode.
//   even: raw ring-buffer bytes. The rest is cut into sizeof(rw_record) chunks fed to
//         Correlator::on_raw, the truncated tail included (must count as malformed); arbitrary
//         field values, unaligned.
//   odd:  a structured sequence of operations (FuzzedDataProvider): records with valid types and
//         families, drawn from a few sockets/connections/addresses/ports so that the correlator's
//         connection memory, timewait tuple matching, linger/expiry and classification are
//         reached; interleaved with on_records_lost() and expire().
#include <fuzzer/FuzzedDataProvider.h>
#include <sys/socket.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "correlator.h"
#include "fuzz_common.h"
#include "output.h"

using namespace rstwatch;

namespace {

CorrelatorOptions options() {
    CorrelatorOptions o;
    o.reset_reason_name = [](uint32_t raw) -> std::string {
        if (raw == RW_RST_REASON_NONE) return "";
        if (raw % 5 == 0) return "";  // unknown to BTF
        return "REASON_" + std::to_string(raw % 7);
    };
    o.idle_threshold_ns = 500'000'000;
    o.linger_ns = 10'000'000'000ULL;  // short, so that expiry happens within an input
    return o;
}

constexpr int64_t kUnixOffset = 1'700'000'000'000'000'000LL;

void consume(Correlator& correlator, CorrelatorOutput& out) {
    for (const Incident& inc : out.incidents) {
        RSTWATCH_FUZZ_CHECK(static_cast<int>(inc.cause) < kCauseCount, "cause out of range");
        // Known: fuzz/crashes/records_wall_ns_signed_overflow.bin (output.cpp wall_ns overflows).
        if (fuzz::skip_known() && inc.ts_ns > static_cast<uint64_t>(INT64_MAX - kUnixOffset)) continue;
        const std::string line = format_incident_json_line(inc, kUnixOffset);
        const std::string row = format_incident_row(inc, kUnixOffset);
        (void)row;
        // What `trace -o json` prints must read back (the agent's stream and `trace --from`);
        // raw mode's ts_ns is arbitrary: only a CLOCK_MONOTONIC-sized one (< 100 years) maps to a
        // wall time after 1970 with this offset.
        if (inc.ts_ns > 3'000'000'000'000'000'000ULL) continue;
        auto json = nlohmann::json::parse(line, nullptr, false);
        RSTWATCH_FUZZ_CHECK(json.is_object(), line);
        auto back = incident_from_json(json, 0);
        RSTWATCH_FUZZ_CHECK(back.has_value(), line);
        RSTWATCH_FUZZ_CHECK(back->cause == inc.cause && back->client == inc.client &&
                                back->server == inc.server && back->pid == inc.pid,
                            line);
        IncidentFilter filter;
        filter.port = inc.client.port;
        RSTWATCH_FUZZ_CHECK(filter.matches(inc), line);
    }
    for (const Observation& obs : out.observations) {
        RSTWATCH_FUZZ_CHECK(obs.idle_s >= 0, "negative idle age in an observation");
    }
    (void)correlator.stats();
    out.clear();
}

void raw_mode(const uint8_t* data, size_t size) {
    Correlator correlator(options());
    CorrelatorOutput out;
    uint64_t fed = 0;
    size_t off = 0;
    while (size - off >= sizeof(rw_record)) {
        correlator.on_raw(data + off, sizeof(rw_record), out);
        ++fed;
        off += sizeof(rw_record);
        consume(correlator, out);
    }
    const uint64_t malformed_before = correlator.stats().malformed;
    // The truncated tail (possibly empty) is not a record.
    correlator.on_raw(data + off, size - off, out);
    correlator.on_raw(nullptr, 0, out);
    RSTWATCH_FUZZ_CHECK(correlator.stats().malformed == malformed_before + 2,
                        "a truncated record was not counted as malformed");
    RSTWATCH_FUZZ_CHECK(out.incidents.empty() && out.observations.empty() && out.resets.empty(),
                        "a truncated record produced output");
    // Every record is counted once: valid ones by type, the rest as malformed.
    uint64_t by_type = 0;
    for (uint64_t n : correlator.stats().records_by_type) by_type += n;
    RSTWATCH_FUZZ_CHECK(by_type + correlator.stats().malformed == fed + 2,
                        "records_by_type + malformed != records fed");
    correlator.expire(~0ULL);  // arbitrary ts_ns: connections seen "at" ~0 stay, by design
}

void fill_addr(uint8_t out[RW_ADDR_LEN], unsigned which) {
    static const uint8_t kAddrs[4][RW_ADDR_LEN] = {
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 1, 2},
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 244, 2, 2},
        {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1},
        {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
    };
    std::memcpy(out, kAddrs[which % 4], RW_ADDR_LEN);
}

void fill_comm(FuzzedDataProvider& fdp, char out[RW_COMM_LEN]) {
    static const char* kComms[] = {"nginx", "envoy", "curl", "python3", "java", "node"};
    std::memset(out, 0, RW_COMM_LEN);
    const unsigned pick = fdp.ConsumeIntegralInRange<unsigned>(0, 7);
    if (pick < 6) {
        std::strncpy(out, kComms[pick], RW_COMM_LEN);
    } else if (pick == 6) {
        std::memset(out, 'x', RW_COMM_LEN);  // no terminating NUL
    } else {
        auto bytes = fdp.ConsumeBytes<char>(RW_COMM_LEN);
        if (!bytes.empty()) std::memcpy(out, bytes.data(), bytes.size());
    }
}

// A time before `now` (or 0), as the kernel's snapshot holds them.
uint64_t before(FuzzedDataProvider& fdp, uint64_t now) {
    if (fdp.ConsumeBool()) return 0;
    const uint64_t delta = fdp.ConsumeIntegralInRange<uint64_t>(0, 40'000'000'000ULL);
    return fdp.ConsumeIntegralInRange<int>(0, 15) == 0 ? now + delta : now - delta;  // rarely in the future
}

rw_record make_record(FuzzedDataProvider& fdp, uint64_t now) {
    rw_record r;
    std::memset(&r, 0, sizeof(r));
    r.ts_ns = now;
    r.type = fdp.ConsumeIntegralInRange<uint8_t>(RW_REC_IDLE_WRITE, RW_REC_TYPE_MAX - 1);
    r.family = fdp.ConsumeBool() ? AF_INET : AF_INET6;
    const unsigned conn = fdp.ConsumeIntegralInRange<unsigned>(0, 3);
    r.sock_id = 0xffff888100000000ULL + 0x1000 * fdp.ConsumeIntegralInRange<unsigned>(0, 4);
    const unsigned ends = fdp.ConsumeIntegralInRange<unsigned>(0, 7);
    fill_addr(r.saddr, ends & 3);
    fill_addr(r.daddr, (ends >> 1) & 3);
    static const uint16_t kPorts[] = {80, 8080, 41862, 41863, 0, 65535};
    r.sport = kPorts[fdp.ConsumeIntegralInRange<unsigned>(0, 5)];
    r.dport = kPorts[fdp.ConsumeIntegralInRange<unsigned>(0, 5)];
    r.netns = fdp.ConsumeBool() ? 4026531840u : 4026532316u;
    r.state = fdp.ConsumeIntegralInRange<uint8_t>(0, 13);
    r.old_state = fdp.ConsumeIntegralInRange<uint8_t>(0, 13);
    r.idle_ns = fdp.ConsumeIntegralInRange<uint64_t>(0, 30'000'000'000ULL);
    r.bytes_received = fdp.ConsumeIntegralInRange<uint64_t>(0, 1 << 20);
    r.bytes_acked = fdp.ConsumeIntegralInRange<uint64_t>(0, 1 << 20);
    r.snd_una = fdp.ConsumeIntegral<uint32_t>();
    r.unread_bytes = fdp.ConsumeIntegralInRange<uint32_t>(0, 4096);
    r.pid = fdp.ConsumeIntegralInRange<uint32_t>(0, 70000);
    r.tid = r.pid;
    r.rst_reason = fdp.ConsumeBool() ? RW_RST_REASON_NONE : fdp.ConsumeIntegralInRange<uint32_t>(0, 40);
    r.send_after_recv = fdp.ConsumeIntegralInRange<int32_t>(-100000, 100000);
    r.unacked_bytes = fdp.ConsumeIntegralInRange<uint32_t>(0, 1 << 20);
    fill_comm(fdp, r.comm);

    rw_conn_snapshot& c = r.conn;
    static const uint64_t kStarts[] = {0, 1'000'000'000ULL, 2'000'000'000ULL, 3'000'000'000ULL};
    c.start_ns = kStarts[conn];
    c.role = fdp.ConsumeIntegralInRange<uint8_t>(0, 3);
    c.flags = fdp.ConsumeIntegral<uint16_t>();
    c.armed_tls = fdp.ConsumeBool() ? 0 : fdp.PickValueInArray<uint8_t>({0x15, 0x17, 0xff});
    c.armed_state = fdp.ConsumeIntegralInRange<uint8_t>(0, 13);
    c.idle_closed = fdp.ConsumeIntegralInRange<uint8_t>(0, 1);
    c.armed_write_ns = before(fdp, now);
    c.armed_idle_ns = fdp.ConsumeIntegralInRange<uint64_t>(0, 30'000'000'000ULL);
    c.armed_bytes_received = fdp.ConsumeIntegralInRange<uint64_t>(0, 1 << 20);
    c.peer_fin_ns = before(fdp, now);
    c.app_close_ns = before(fdp, now);
    c.armed_write_seq = fdp.ConsumeIntegral<uint32_t>();
    c.requests = fdp.ConsumeIntegralInRange<uint32_t>(0, 100);
    c.writer_pid = fdp.ConsumeIntegralInRange<uint32_t>(0, 70000);
    c.writer_tid = c.writer_pid;
    fill_comm(fdp, c.writer_comm);
    if (fdp.ConsumeIntegralInRange<int>(0, 31) == 0) {
        // Now and then a raw overwrite of a few bytes: anything the kernel could send.
        auto* bytes = reinterpret_cast<uint8_t*>(&r);
        const size_t at = fdp.ConsumeIntegralInRange<size_t>(0, sizeof(r) - 1);
        bytes[at] = fdp.ConsumeIntegral<uint8_t>();
    }
    return r;
}

void structured_mode(const uint8_t* data, size_t size) {
    FuzzedDataProvider fdp(data, size);
    Correlator correlator(options());
    CorrelatorOutput out;
    uint64_t now = 5'000'000'000ULL;
    std::vector<uint8_t> buf(sizeof(rw_record) + 1);
    while (fdp.remaining_bytes() > 0) {
        const unsigned op = fdp.ConsumeIntegralInRange<unsigned>(0, 31);
        now += fdp.ConsumeIntegralInRange<uint64_t>(0, op == 0 ? 200'000'000'000ULL : 3'000'000'000ULL);
        if (op == 0) {
            correlator.expire(now);
        } else if (op == 1) {
            correlator.on_records_lost(fdp.ConsumeIntegralInRange<uint64_t>(0, 1000));
        } else if (op == 2) {
            // A short or long read: never a record.
            correlator.on_raw(buf.data(), fdp.ConsumeBool() ? sizeof(rw_record) - 1 : sizeof(rw_record) + 1,
                              out);
        } else {
            const rw_record r = make_record(fdp, now);
            if (fdp.ConsumeBool()) {
                correlator.on_record(r, out);
            } else {
                std::memcpy(buf.data() + 1, &r, sizeof(r));  // unaligned, as in the ring buffer
                correlator.on_raw(buf.data() + 1, sizeof(r), out);
            }
            // Duplicates happen (out-of-order, replayed records): feed the same record again.
            if (fdp.ConsumeIntegralInRange<int>(0, 15) == 0) correlator.on_record(r, out);
        }
        consume(correlator, out);
    }
    correlator.expire(~0ULL);
    RSTWATCH_FUZZ_CHECK(correlator.remembered_connections() == 0, "expire(max) left connections");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    if ((data[0] & 1) == 0)
        raw_mode(data + 1, size - 1);
    else
        structured_mode(data + 1, size - 1);
    return 0;
}
