// Turns ring-buffer records into incidents and observations. Pure: no kernel, no clock, no I/O.
#include "correlator.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <tuple>

namespace rstwatch {

namespace {

bool has(uint16_t flags, unsigned bit) { return (flags & bit) != 0; }

// A fixed-size char array that may lack its terminating NUL.
std::string bounded_string(const char* s, size_t max) {
    size_t n = 0;
    while (n < max && s[n] != '\0') ++n;
    return std::string(s, n);
}

// A RST before the handshake completed (connection refused, SYN answered by RST) ends no
// established connection: counted as a reset, never an incident.
bool is_handshake_state(uint8_t state) {
    return state == RW_TCP_SYN_SENT || state == RW_TCP_SYN_RECV || state == RW_TCP_NEW_SYN_RECV ||
           state == RW_TCP_LISTEN;
}

bool is_known_role(uint8_t role) { return role == RW_ROLE_CLIENT || role == RW_ROLE_SERVER; }

// A request on the connection when the reset came, as the observing socket sees it: a client's
// data unacknowledged or sent after the last data received (awaiting its answer); a server's
// data unread, or received after its last send (not yet answered). Resets with nothing in
// flight cost no request: counted as resets, never incidents.
bool request_in_flight(const rw_record& r, uint8_t role) {
    if (role == RW_ROLE_CLIENT) return r.unacked_bytes > 0 || r.send_after_recv > 0;
    return r.unread_bytes > 0 || r.send_after_recv < 0;
}

// Bytes that are one TLS alert record (a close_notify) rather than a request.
bool is_tls_alert_size(uint32_t bytes) {
    return bytes >= RW_TLS_ALERT_MIN_BYTES && bytes <= RW_TLS_ALERT_MAX_BYTES;
}

bool is_loopback(const uint8_t addr[RW_ADDR_LEN]) {
    in6_addr a;
    std::memcpy(&a, addr, sizeof(a));
    return IN6_IS_ADDR_LOOPBACK(&a) || (IN6_IS_ADDR_V4MAPPED(&a) && addr[12] == 127);
}

bool is_after_own_close_state(uint8_t state) {
    return state == RW_TCP_FIN_WAIT1 || state == RW_TCP_FIN_WAIT2 || state == RW_TCP_CLOSING ||
           state == RW_TCP_CLOSE;
}

}  // namespace

std::string format_address(const uint8_t addr[RW_ADDR_LEN]) {
    static constexpr uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    char buf[INET6_ADDRSTRLEN] = {};
    if (std::memcmp(addr, kV4MappedPrefix, sizeof(kV4MappedPrefix)) == 0) {
        // Every reset and incident formats two addresses: to_chars, not snprintf (5x faster).
        char* p = buf;
        for (int i = 12; i < 16; ++i) {
            if (i > 12) *p++ = '.';
            p = std::to_chars(p, buf + sizeof(buf), addr[i]).ptr;
        }
        return std::string(buf, p);
    }
    if (inet_ntop(AF_INET6, addr, buf, sizeof(buf)) == nullptr) return "?";
    return buf;
}

std::string tcp_state_name(uint8_t state) {
    switch (state) {
    case RW_TCP_ESTABLISHED: return "ESTABLISHED";
    case RW_TCP_SYN_SENT: return "SYN_SENT";
    case RW_TCP_SYN_RECV: return "SYN_RECV";
    case RW_TCP_FIN_WAIT1: return "FIN_WAIT1";
    case RW_TCP_FIN_WAIT2: return "FIN_WAIT2";
    case RW_TCP_TIME_WAIT: return "TIME_WAIT";
    case RW_TCP_CLOSE: return "CLOSE";
    case RW_TCP_CLOSE_WAIT: return "CLOSE_WAIT";
    case RW_TCP_LAST_ACK: return "LAST_ACK";
    case RW_TCP_LISTEN: return "LISTEN";
    case RW_TCP_CLOSING: return "CLOSING";
    case RW_TCP_NEW_SYN_RECV: return "NEW_SYN_RECV";
    default: return "UNKNOWN(" + std::to_string(state) + ")";
    }
}

Correlator::ServerKey Correlator::server_key(const rw_record& r, uint8_t role) {
    ServerKey key;
    const uint8_t* addr = role == RW_ROLE_SERVER ? r.saddr : r.daddr;
    std::memcpy(key.addr, addr, RW_ADDR_LEN);
    key.port = role == RW_ROLE_SERVER ? r.sport : r.dport;
    key.netns = is_loopback(addr) ? r.netns : 0;
    return key;
}

void Correlator::learn_tls_server(const rw_record& r, uint8_t role) {
    if (tls_servers_.size() >= kMaxTlsServers) return;  // bounded: on_raw takes untrusted input
    tls_servers_.insert(server_key(r, role));
}

bool Correlator::speaks_tls(const rw_record& r, uint8_t role, uint16_t flags) const {
    return has(flags, RW_F_TLS_ALERT_SENT) || tls_servers_.contains(server_key(r, role));
}

Correlator::Correlator(CorrelatorOptions options) : options_(std::move(options)) {}

size_t Correlator::remembered_connections() const { return conns_.size(); }

void Correlator::on_records_lost(uint64_t count) { stats_.records_lost += count; }

void Correlator::on_raw(const void* data, size_t size, CorrelatorOutput& out) {
    if (data == nullptr || size != sizeof(rw_record)) {
        ++stats_.malformed;
        return;
    }
    rw_record record;
    std::memcpy(&record, data, sizeof(record));  // ring-buffer bytes need not be aligned
    on_record(record, out);
}

void Correlator::forget(ConnMap::iterator it) {
    auto t = by_tuple_.find(it->second.tuple);
    if (t != by_tuple_.end() && t->second == it->first) by_tuple_.erase(t);
    conns_.erase(it);
}

void Correlator::expire(uint64_t now_ns) {
    // order_ is oldest-seen first (touched entries move back when met): walk from the front
    // until the first connection seen within linger, instead of scanning every connection.
    while (!order_.empty()) {
        auto [key, seen] = order_.front();
        auto it = conns_.find(key);
        if (it == conns_.end()) {
            order_.pop_front();  // forgotten already
            continue;
        }
        const uint64_t last_seen = it->second.last_seen_ns;
        if (last_seen > seen) {
            order_.pop_front();
            order_.emplace_back(key, last_seen);
            continue;
        }
        if (!(now_ns > last_seen && now_ns - last_seen > options_.linger_ns)) break;
        order_.pop_front();
        forget(it);
    }
    if (order_.size() > 2 * conns_.size() + 1024) compact_order();
}

bool Correlator::make_room() {
    bool forgot = false;
    while (conns_.size() >= kMaxRemembered && !order_.empty()) {
        auto [key, seen] = order_.front();
        order_.pop_front();
        auto it = conns_.find(key);
        if (it == conns_.end()) continue;  // forgotten already
        if (it->second.last_seen_ns > seen) {
            order_.emplace_back(key, it->second.last_seen_ns);  // seen since: a second chance
            continue;
        }
        forget(it);
        forgot = true;
    }
    return forgot;
}

void Correlator::compact_order() {
    // Rebuilt from what is remembered, oldest first: drops forgotten and duplicate keys.
    order_.clear();
    for (const auto& [key, mem] : conns_) order_.emplace_back(key, mem.last_seen_ns);
    // Ties broken by key: the map's iteration order depends on its per-process hash seed.
    std::sort(order_.begin(), order_.end(), [](const auto& a, const auto& b) {
        return std::tie(a.second, a.first.sock_id, a.first.start_ns) <
               std::tie(b.second, b.first.sock_id, b.first.start_ns);
    });
}

Correlator::TupleKey Correlator::tuple_of(const rw_record& r) {
    TupleKey tuple;
    std::memcpy(tuple.saddr, r.saddr, RW_ADDR_LEN);
    std::memcpy(tuple.daddr, r.daddr, RW_ADDR_LEN);
    tuple.sport = r.sport;
    tuple.dport = r.dport;
    tuple.netns = r.netns;
    return tuple;
}

Correlator::Resolved Correlator::resolve(const rw_record& r, bool remember_new) {
    Resolved res;
    const uint64_t start = r.conn.start_ns;
    const bool timewait = has(r.conn.flags, RW_F_FROM_TIMEWAIT);
    res.flags = r.conn.flags;
    if (start != 0 && is_known_role(r.conn.role)) res.role = r.conn.role;

    const TupleKey tuple = tuple_of(r);
    ConnKey key{r.sock_id, start};
    ConnMemory* mem = nullptr;
    // At scale every lookup below is a cache miss (the tables are megabytes): start the
    // independent ones together, make_room()'s first candidate included (RST churn: +30%).
    conns_.prefetch(key);
    by_tuple_.prefetch(tuple);
    if (remember_new && conns_.size() >= kMaxRemembered && !order_.empty()) conns_.prefetch(order_.front().first);
    if (start != 0) {
        auto it = conns_.find(key);
        if (it != conns_.end()) mem = &it->second;
    }
    auto t = by_tuple_.end();
    if (mem == nullptr) {
        // Another socket of the same connection (its timewait socket, or the full
        // socket's late record after the timewait one) is found by 4-tuple: the same
        // start_ns names the same connection; a timewait record without a snapshot
        // belongs to the latest connection on that 4-tuple.
        t = by_tuple_.find(tuple);
        if (t != by_tuple_.end() && ((start != 0 && t->second.start_ns == start) ||
                                     (start == 0 && timewait))) {
            auto it = conns_.find(t->second);
            if (it != conns_.end()) {
                mem = &it->second;
                key = t->second;
            }
        }
    }
    if (mem != nullptr) {
        if (res.role == RW_ROLE_UNKNOWN) {
            // Tied timewait record without its own snapshot: history comes from memory.
            res.role = mem->role;
            res.flags |= mem->flags & (RW_F_APP_CLOSED | RW_F_PEER_FIN | RW_F_TLS_ALERT_SENT);
        }
        touch(*mem, r);
    } else if (res.role != RW_ROLE_UNKNOWN) {
        if (!remember_new) {
            res.unremembered = true;  // remember() on demand
            return res;
        }
        mem = insert_memory(r, key, tuple, t);
    }
    res.mem = mem;
    return res;
}

void Correlator::touch(ConnMemory& mem, const rw_record& r) {
    mem.last_seen_ns = std::max<uint64_t>(mem.last_seen_ns, r.ts_ns);
    if (r.conn.start_ns != 0) mem.flags |= r.conn.flags & (RW_F_APP_CLOSED | RW_F_PEER_FIN | RW_F_TLS_ALERT_SENT);
}

Correlator::ConnMemory* Correlator::insert_memory(const rw_record& r, const ConnKey& key, const TupleKey& tuple,
                                                  TupleMap::iterator t) {
    if (make_room()) t = by_tuple_.find(tuple);  // the evicted one may have owned it
    // conns_'s only insert: it may move every ConnMemory, so mem is taken after it (t is
    // into by_tuple_, which it leaves alone).
    auto [it, inserted] = conns_.try_emplace(key);
    ConnMemory* mem = &it->second;
    mem->role = r.conn.role;
    mem->tuple = tuple;
    order_.emplace_back(key, r.ts_ns);
    // The newest connection on a 4-tuple owns it (a late record of an older one
    // must not take it back).
    if (t == by_tuple_.end())
        by_tuple_.emplace(tuple, key);
    else if (t->second.start_ns <= key.start_ns || conns_.find(t->second) == conns_.end())
        t->second = key;
    touch(*mem, r);
    return mem;
}

Correlator::ConnMemory* Correlator::remember(const rw_record& r, Resolved& conn) {
    if (conn.mem == nullptr && conn.unremembered) {
        const TupleKey tuple = tuple_of(r);
        conn.mem = insert_memory(r, ConnKey{r.sock_id, r.conn.start_ns}, tuple, by_tuple_.find(tuple));
        conn.unremembered = false;
    }
    return conn.mem;
}

namespace {

void fill_endpoints(const rw_record& r, uint8_t role, Endpoint& client, Endpoint& server) {
    Endpoint local{format_address(r.saddr), r.sport};
    Endpoint remote{format_address(r.daddr), r.dport};
    if (role == RW_ROLE_SERVER) {
        server = std::move(local);
        client = std::move(remote);
    } else {
        client = std::move(local);
        server = std::move(remote);
    }
}

}  // namespace

void Correlator::emit_incident(const rw_record& r, Resolved& conn, Cause cause,
                               CorrelatorOutput& out) {
    if (!is_known_role(conn.role) || remember(r, conn) == nullptr) return;
    const Observer observer = conn.role == RW_ROLE_CLIENT ? Observer::client : Observer::server;
    bool& reported =
        observer == Observer::client ? conn.mem->incident_client : conn.mem->incident_server;
    if (reported) return;
    reported = true;

    Incident inc;
    inc.ts_ns = r.ts_ns;
    inc.cause = cause;
    inc.observer = observer;
    fill_endpoints(r, conn.role, inc.client, inc.server);
    // The snapshot is only trustworthy when the record carries one (start_ns != 0).
    const bool armed = r.conn.start_ns != 0 && has(r.conn.flags, RW_F_ARMED);
    if (r.conn.start_ns != 0 && r.conn.writer_pid != 0) {
        // The writer owns the connection; its write is the failing one only for the
        // stale-keepalive causes (for others it may have been answered long ago).
        inc.pid = r.conn.writer_pid;
        inc.comm = bounded_string(r.conn.writer_comm, RW_COMM_LEN);
    }
    // Inferred after the peer's unread TLS alert: the idle before the request is unknown.
    const bool idle_unknown = has(r.conn.flags, RW_F_ARMED_INFERRED) && is_tls_alert_size(r.unread_bytes);
    if (armed && !idle_unknown && (cause == Cause::write_after_fin || cause == Cause::idle_close_race)) {
        inc.idle_before_write_ms = static_cast<double>(r.conn.armed_idle_ns) / 1e6;
        inc.idle_precision_ms = static_cast<double>(options_.jiffy_ns) / 1e6;
        if (r.conn.armed_write_ns != 0 && r.ts_ns >= r.conn.armed_write_ns)
            inc.write_to_reset_ms = static_cast<double>(r.ts_ns - r.conn.armed_write_ns) / 1e6;
    }
    if (cause == Cause::reset_other) {
        ResetFacts facts;
        facts.history = r.conn.start_ns != 0 || is_known_role(conn.role);
        if (has(conn.flags, RW_F_PEER_FIN) && has(conn.flags, RW_F_APP_CLOSED))
            facts.closed_first =
                r.conn.peer_fin_ns != 0 && r.conn.app_close_ns != 0 && r.conn.app_close_ns < r.conn.peer_fin_ns
                    ? "self"
                    : "peer";
        else if (has(conn.flags, RW_F_PEER_FIN))
            facts.closed_first = "peer";
        else if (has(conn.flags, RW_F_APP_CLOSED))
            facts.closed_first = "self";
        facts.unacked_bytes = r.unacked_bytes;
        facts.request_unanswered = conn.role == RW_ROLE_CLIENT ? r.send_after_recv > 0 : r.send_after_recv < 0;
        inc.facts = facts;
    }
    inc.state = tcp_state_name(r.state);
    if (r.rst_reason != RW_RST_REASON_NONE && options_.reset_reason_name)
        inc.reset_reason = options_.reset_reason_name(r.rst_reason);
    inc.requests = r.conn.requests;
    inc.netns = r.netns;
    ++stats_.incidents;
    out.incidents.push_back(std::move(inc));
}

void Correlator::count_tls_close_notify(const rw_record& r, Resolved& conn) {
    // Once per connection and side, like an incident (the reset and the close both report it).
    if (!is_known_role(conn.role) || remember(r, conn) == nullptr) return;
    bool& reported = conn.role == RW_ROLE_CLIENT ? conn.mem->incident_client : conn.mem->incident_server;
    if (reported) return;
    reported = true;
    ++stats_.tls_close_notify;
}

void Correlator::emit_reset(const rw_record& r, uint8_t role, CorrelatorOutput& out) {
    ResetEvent reset;
    reset.ts_ns = r.ts_ns;
    reset.sent = r.type == RW_REC_RST_SENT;
    reset.role_known = is_known_role(role);
    if (!reset.role_known) {
        // No history: the side with the lower port is most likely the server (ephemeral ports are high).
        role = r.sport < r.dport ? RW_ROLE_SERVER : RW_ROLE_CLIENT;
    }
    fill_endpoints(r, role, reset.client, reset.server);
    reset.netns = r.netns;
    out.resets.push_back(std::move(reset));
}

void Correlator::emit_observation(const rw_record& r, const Resolved& conn, ObservationKind kind,
                                  double idle_s, CorrelatorOutput& out) {
    if (!is_known_role(conn.role)) return;
    Observation obs;
    obs.ts_ns = r.ts_ns;
    obs.kind = kind;
    obs.observer = conn.role == RW_ROLE_CLIENT ? Observer::client : Observer::server;
    fill_endpoints(r, conn.role, obs.client, obs.server);
    obs.idle_s = idle_s;
    obs.netns = r.netns;
    if (r.type == RW_REC_IDLE_WRITE || r.type == RW_REC_CLOSE_WAIT_WRITE)
        obs.comm = bounded_string(r.comm, RW_COMM_LEN);
    else if (r.conn.start_ns != 0 && conn.role == RW_ROLE_CLIENT)
        obs.comm = bounded_string(r.conn.writer_comm, RW_COMM_LEN);
    out.observations.push_back(std::move(obs));
}

void Correlator::on_record(const rw_record& r, CorrelatorOutput& out) {
    if (r.type < RW_REC_IDLE_WRITE || r.type >= RW_REC_TYPE_MAX ||
        (r.family != AF_INET && r.family != AF_INET6)) {
        ++stats_.malformed;
        return;
    }
    ++stats_.records;
    ++stats_.records_by_type[r.type];

    const bool is_reset = r.type == RW_REC_RST_SENT || r.type == RW_REC_RST_RECEIVED;
    // A RST answering a packet for no socket: no connection, nothing to classify.
    if (has(r.conn.flags, RW_F_NO_SOCKET)) {
        if (is_reset) emit_reset(r, RW_ROLE_UNKNOWN, out);
        return;
    }

    // A reset that reports nothing (nothing in flight) leaves no memory of its connection: in a
    // storm (a backend dying with its pool) every record is such a reset on a new socket, and
    // remembering each one evicted connections still of interest and took most of the agent's
    // time in these tables. Nothing depends on it: a later record of that socket remembers it
    // as a first record would, and dedupe is only against incidents and teardowns (remembered).
    Resolved conn = resolve(r, /*remember_new=*/!is_reset);
    if (is_reset) emit_reset(r, conn.role, out);
    if (is_reset && is_handshake_state(r.state)) return;
    const uint8_t role = conn.role;
    const uint16_t flags = conn.flags;
    const bool armed = r.conn.start_ns != 0 && has(flags, RW_F_ARMED);
    const bool write_in_close_wait = armed && has(flags, RW_F_WRITE_IN_CLOSE_WAIT);
    // An idle write (before any FIN) that got no response byte so far.
    // A TLS server's close_notify is no answer: unread, or read by a client's TLS stack from a
    // server known to speak TLS (no HTTP answer fits in one alert-sized record).
    const uint64_t received_since_armed = r.bytes_received - r.conn.armed_bytes_received;
    const bool armed_unanswered =
        armed && !write_in_close_wait &&
        (received_since_armed == 0 ||
         (is_tls_alert_size(static_cast<uint32_t>(received_since_armed)) &&
          (received_since_armed == r.unread_bytes || speaks_tls(r, role, flags))));
    // The armed write was a TLS stack's close_notify (after the peer's FIN, an answer to the
    // peer's; after idle, our own idle close), not a request: its reset loses nothing.
    const bool tls_close_notify = armed && r.conn.armed_tls != 0;
    // A client's TLS close_notify answering the server's, written before the server's FIN was
    // processed (the write hook looks only at writes after idle or after the FIN): armed at the
    // FIN from the socket's counters, one alert record unacknowledged, no idle before it. No
    // request is that small over TLS, and a stale-keepalive request follows an idle gap.
    const bool close_notify_crossing_fin =
        role == RW_ROLE_CLIENT && armed && has(flags, RW_F_ARMED_INFERRED) && !write_in_close_wait &&
        r.conn.armed_idle_ns < RW_IDLE_CLOSE_FLOOR_MS * 1'000'000ULL && is_tls_alert_size(r.unacked_bytes);
    if (r.conn.start_ns != 0 && r.conn.armed_tls != 0 && is_known_role(role)) learn_tls_server(r, role);
    const bool idle = r.idle_ns >= options_.idle_threshold_ns;
    const double idle_s = static_cast<double>(r.idle_ns) / 1e9;

    switch (r.type) {
    case RW_REC_IDLE_WRITE:
        if (role == RW_ROLE_CLIENT && conn.mem != nullptr) {
            const uint64_t write_ns = armed ? r.conn.armed_write_ns : r.ts_ns;
            if (conn.mem->observed_reuse_write_ns == write_ns) break;  // duplicate
            conn.mem->observed_reuse_write_ns = write_ns;
            const double s = armed ? static_cast<double>(r.conn.armed_idle_ns) / 1e9 : idle_s;
            emit_observation(r, conn, ObservationKind::reuse_idle, s, out);
        }
        break;

    case RW_REC_CLOSE_WAIT_WRITE:
        break;  // decided later by the peer's answer (RST, ack, or nothing)

    case RW_REC_PEER_FIN:
        if (role == RW_ROLE_CLIENT && armed_unanswered && !tls_close_notify && !close_notify_crossing_fin) {
            emit_incident(r, conn, Cause::idle_close_race, out);
        } else if (idle && !armed_unanswered && conn.mem != nullptr &&
                   !conn.mem->observed_peer_fin) {
            conn.mem->observed_peer_fin = true;
            emit_observation(r, conn,
                             role == RW_ROLE_CLIENT ? ObservationKind::server_idle_close
                                                    : ObservationKind::client_idle_close,
                             idle_s, out);
        }
        break;

    case RW_REC_OWN_CLOSE:
        if (r.old_state == RW_TCP_ESTABLISHED && idle && conn.mem != nullptr &&
            !conn.mem->observed_own_close) {
            conn.mem->observed_own_close = true;
            emit_observation(r, conn,
                             role == RW_ROLE_CLIENT ? ObservationKind::client_idle_close
                                                    : ObservationKind::server_idle_close,
                             idle_s, out);
        }
        break;

    case RW_REC_CLOSED:
        // The write after the peer's FIN was never acknowledged (the peer had gone), or never
        // answered before we closed (a half-closed peer took it and did not read it).
        if (role == RW_ROLE_CLIENT && write_in_close_wait &&
            (static_cast<int32_t>(r.snd_una - r.conn.armed_write_seq) <= 0 ||
             r.bytes_received == r.conn.armed_bytes_received)) {
            if (tls_close_notify)
                count_tls_close_notify(r, conn);
            else
                emit_incident(r, conn, Cause::write_after_fin, out);
        }
        break;

    case RW_REC_UNREAD_AT_DESTROY:
        // A request reached a socket our server had closed (or half-closed) and was never
        // read; on a TLS server, bytes of one alert record are the client's close_notify.
        if (role == RW_ROLE_SERVER) {
            if (is_tls_alert_size(r.unread_bytes) && speaks_tls(r, role, flags))
                count_tls_close_notify(r, conn);
            else
                emit_incident(r, conn, Cause::data_after_close, out);
        }
        break;

    case RW_REC_RST_RECEIVED:
        if (role == RW_ROLE_CLIENT) {
            // Our close_notify (all that is unacknowledged, answered or not) reset by a TLS
            // server that closed with it unread: a teardown.
            if (tls_close_notify || close_notify_crossing_fin ||
                ((!armed || has(flags, RW_F_ARMED_INFERRED)) && is_tls_alert_size(r.unacked_bytes) &&
                 speaks_tls(r, role, flags)))
                count_tls_close_notify(r, conn);
            else if (has(flags, RW_F_APP_CLOSED) && !write_in_close_wait &&
                     (is_after_own_close_state(r.state) || is_after_own_close_state(r.old_state)))
                ++stats_.idle_resets;  // reset after our own close: nothing of ours awaited an answer
            else if (write_in_close_wait)
                emit_incident(r, conn, Cause::write_after_fin, out);
            else if (armed_unanswered)
                emit_incident(r, conn, Cause::idle_close_race, out);
            // A TLS server's close_notify, unread, then its reset: it closed with our request
            // unread (acknowledged or not; the idle before it is unknown here).
            else if (r.state == RW_TCP_ESTABLISHED && is_tls_alert_size(r.unread_bytes))
                emit_incident(r, conn, Cause::idle_close_race, out);
            else if (request_in_flight(r, role))
                emit_incident(r, conn, Cause::reset_other, out);
            else
                ++stats_.idle_resets;  // the peer reset a connection with nothing in flight
        } else if (role == RW_ROLE_SERVER) {
            // After our own close: the peer's reset loses nothing of ours. (Data arriving
            // after our close also calls tcp_reset() here; the RST the kernel then sends in
            // reply is the record that tells data_after_close.)
            if (has(flags, RW_F_APP_CLOSED) &&
                (is_after_own_close_state(r.state) || is_after_own_close_state(r.old_state)))
                ++stats_.idle_resets;
            else if (has(flags, RW_F_TLS_ALERT_SENT))
                count_tls_close_notify(r, conn);  // our close_notify (or answer to the peer's) was reset
            // A TLS client's close: its close_notify unread here, then its reset.
            else if (is_tls_alert_size(r.unread_bytes) && speaks_tls(r, role, flags))
                count_tls_close_notify(r, conn);
            else if (request_in_flight(r, role))
                emit_incident(r, conn, Cause::reset_other, out);
            else
                ++stats_.idle_resets;
        } else {
            ++stats_.unknown_history;
        }
        break;

    case RW_REC_RST_SENT:
        if (role == RW_ROLE_SERVER) {
            std::string reason;
            if (r.rst_reason != RW_RST_REASON_NONE && options_.reset_reason_name)
                reason = options_.reset_reason_name(r.rst_reason);
            const bool app_closed = has(flags, RW_F_APP_CLOSED);
            // Before 6.10 the kernel gives no reason: closing with unread data is the abort.
            // Unread data after the peer's own close awaits no answer (e.g. its TLS
            // close_notify): not a lost request.
            const bool aborted_unread = reason == "TCP_ABORT_ON_CLOSE" || (reason.empty() && app_closed && r.unread_bytes > 0);
            // On a TLS server, one alert record's bytes (unread, or arriving after our close)
            // are the client's close_notify: the teardown, not a request.
            const bool tls_teardown =
                speaks_tls(r, role, flags) && (aborted_unread ? is_tls_alert_size(r.unread_bytes)
                                                        : is_tls_alert_size(r.segment_bytes));
            if (tls_teardown && app_closed)
                count_tls_close_notify(r, conn);
            else if (aborted_unread && !has(flags, RW_F_PEER_FIN))
                emit_incident(r, conn, Cause::abort_on_close, out);
            else if (aborted_unread)
                ++stats_.idle_resets;
            // Before 6.10 a reset answering a segment after our close is data after close
            // (an orphan that got data with the ACK of its FIN is done before it answers).
            else if (reason == "TCP_ABORT_ON_DATA" || reason == "TCP_TIMEWAIT_SOCKET" ||
                     (has(flags, RW_F_FROM_TIMEWAIT) && app_closed) ||
                     (reason.empty() && has(flags, RW_F_REPLY_RST) && app_closed))
                emit_incident(r, conn, Cause::data_after_close, out);
            else if (request_in_flight(r, role))
                emit_incident(r, conn, Cause::reset_other, out);
            else
                ++stats_.idle_resets;  // we aborted a connection with nothing in flight
        } else if (role == RW_ROLE_CLIENT) {
            // Our own abort (SO_LINGER 0, or close() with the peer's last bytes unread, e.g. a
            // TLS upstream's close_notify): an incident only if it cut a request short. Our own
            // close_notify unacknowledged and the server's unread (one alert record each) is a
            // TLS teardown that crossed, no request.
            // The server's close_notify arriving after our close, answered by our kernel
            // (TCP_ABORT_ON_DATA), with nothing of ours unacknowledged but one alert record
            // (our own close_notify): the same teardown crossing the other way. Our close came
            // after our own close_notify, which can follow the answer by a jiffy and so looks
            // like an unanswered request in the socket's times; the application had left.
            const bool peer_alert_after_our_close =
                has(flags, RW_F_APP_CLOSED) && has(flags, RW_F_REPLY_RST) && r.unread_bytes == 0 &&
                is_tls_alert_size(r.segment_bytes) && (r.unacked_bytes == 0 || is_tls_alert_size(r.unacked_bytes));
            if ((is_tls_alert_size(r.unacked_bytes) && is_tls_alert_size(r.unread_bytes)) || peer_alert_after_our_close)
                count_tls_close_notify(r, conn);
            else if (request_in_flight(r, role))
                emit_incident(r, conn, Cause::reset_other, out);
            else
                ++stats_.idle_resets;
        } else {
            ++stats_.unknown_history;
        }
        break;

    default:
        break;
    }
}

}  // namespace rstwatch
