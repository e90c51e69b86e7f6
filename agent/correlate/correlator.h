// Turns ring-buffer records into incidents. Pure: no kernel, no clock, no I/O.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "incident.h"
#include "rstwatch.h"

namespace rstwatch {

// Maps the kernel's raw enum sk_rst_reason value to its name without the
// "SK_RST_REASON_" prefix (resolved through BTF by the loader); "" if unknown.
using ResetReasonNamer = std::function<std::string(uint32_t raw)>;

struct CorrelatorOptions {
    ResetReasonNamer reset_reason_name;  // may be empty: reasons then print as ""
    // Closes of connections idle at least this long become observations. The BPF side reports
    // closes from half the write threshold: callers pass that half (close_threshold_ns()).
    uint64_t idle_threshold_ns = 500'000'000;
    // How long a finished connection is remembered to absorb its late records
    // (out of order, duplicates) and to tie a timewait RST to its connection.
    uint64_t linger_ns = 120'000'000'000ULL;
    // One jiffy of the running kernel (1e9 / CONFIG_HZ): idle ages are measured in jiffies.
    uint64_t jiffy_ns = 4'000'000;
};

// The close-observation threshold for a write idle threshold (matches the BPF side).
inline uint64_t close_threshold_ns(double write_idle_threshold_s) {
    return static_cast<uint64_t>(write_idle_threshold_s * 1e9 / 2);
}

struct CorrelatorStats {
    uint64_t records = 0;
    uint64_t records_by_type[RW_REC_TYPE_MAX] = {};
    uint64_t records_lost = 0;      // as reported by on_records_lost()
    uint64_t malformed = 0;         // records rejected by decode
    uint64_t unknown_history = 0;   // RSTs on connections that predate rstwatch
    uint64_t incidents = 0;
    uint64_t tls_close_notify = 0;  // resets from a TLS close_notify after the peer's close: no request lost
    uint64_t idle_resets = 0;       // resets with no request in flight (aborts of idle connections): no incident
};

struct CorrelatorOutput {
    std::vector<Incident> incidents;
    std::vector<Observation> observations;
    std::vector<ResetEvent> resets;
    void clear() {
        incidents.clear();
        observations.clear();
        resets.clear();
    }
};

class Correlator {
public:
    explicit Correlator(CorrelatorOptions options);

    // Feeds one record; appends what it completes to `out`.
    void on_record(const rw_record& record, CorrelatorOutput& out);
    // Feeds raw ring-buffer bytes: validates size and fields, counts malformed input.
    void on_raw(const void* data, size_t size, CorrelatorOutput& out);
    // The kernel dropped `count` records: timelines may have gaps.
    void on_records_lost(uint64_t count);
    // Forgets finished connections older than linger (now = CLOCK_MONOTONIC ns).
    void expire(uint64_t now_ns);

    const CorrelatorStats& stats() const { return stats_; }
    size_t remembered_connections() const;
    // Slots of the remembered-connections table: what its memory is sized by.
    size_t remembered_capacity() const { return conns_.capacity(); }
    static constexpr size_t max_remembered() { return kMaxRemembered; }

private:
    // The maps are absl's open-addressing tables (absl::Hash through AbslHashValue): a node map
    // per connection was 42% of the RST-churn mix's time.
    struct ConnKey {
        uint64_t sock_id;
        uint64_t start_ns;
        bool operator==(const ConnKey&) const = default;
        template <typename H>
        friend H AbslHashValue(H h, const ConnKey& k) {
            return H::combine(std::move(h), k.sock_id, k.start_ns);
        }
    };
    // (local ip:port, remote ip:port, netns): ties a timewait socket's records
    // (another sock_id) to the connection they belong to.
    struct TupleKey {
        uint8_t saddr[RW_ADDR_LEN] = {};
        uint8_t daddr[RW_ADDR_LEN] = {};
        uint16_t sport = 0;
        uint16_t dport = 0;
        uint32_t netns = 0;
        bool operator==(const TupleKey&) const = default;
        // Hashed as its 40 bytes in one call (every new connection hashes its tuple twice).
        template <typename H>
        friend H AbslHashValue(H h, const TupleKey& k) {
            return H::combine_contiguous(std::move(h), reinterpret_cast<const unsigned char*>(&k), sizeof(k));
        }
    };
    static_assert(std::has_unique_object_representations_v<TupleKey>,
                  "TupleKey is hashed as bytes: it must have no padding");
    struct ConnMemory {
        uint64_t last_seen_ns = 0;
        bool incident_client = false;  // an incident was already reported for this observer
        bool incident_server = false;
        uint8_t role = RW_ROLE_UNKNOWN;   // only connections with a known role are remembered
        uint16_t flags = 0;               // RW_F_APP_CLOSED / RW_F_PEER_FIN seen in any snapshot
        bool observed_peer_fin = false;   // observation already emitted (duplicates)
        bool observed_own_close = false;
        uint64_t observed_reuse_write_ns = 0;  // armed_write_ns of the last reuse_idle observation
        TupleKey tuple;
    };
    // What a record resolves to: its remembered connection (null when the role is
    // unknown; valid until the next insert into conns_, i.e. the next resolve()) and the
    // role/flags to classify with.
    struct Resolved {
        ConnMemory* mem = nullptr;
        uint8_t role = RW_ROLE_UNKNOWN;
        uint16_t flags = 0;
        bool unremembered = false;  // a known role, no memory yet: remember() makes it when needed
    };
    // A server endpoint seen to speak TLS (a TLS alert record written on one of its
    // connections, by either end on this node). The netns counts for loopback addresses only:
    // elsewhere a client's view of the server (its remote address) has the client's netns.
    struct ServerKey {
        uint8_t addr[RW_ADDR_LEN] = {};
        uint16_t port = 0;
        uint32_t netns = 0;
        bool operator==(const ServerKey&) const = default;
        template <typename H>
        friend H AbslHashValue(H h, const ServerKey& k) {
            return H::combine(H::combine_contiguous(std::move(h), k.addr, RW_ADDR_LEN), k.port, k.netns);
        }
    };
    static constexpr size_t kMaxTlsServers = 1u << 16;
    // Hard bound on remembered connections (on_raw is fed untrusted input); at the bound the
    // least recently seen one makes room (second-chance FIFO: O(1) amortised per insert).
    // Below 7/8 of absl's 131,071-slot table with room for the tombstones of churn: at 131,072
    // both tables doubled to 262,143 slots, half empty (+8 MiB, agent RSS 74 MiB after 1M churned).
    static constexpr size_t kMaxRemembered = 102'400;

    using TupleMap = absl::flat_hash_map<TupleKey, ConnKey>;
    static TupleKey tuple_of(const rw_record& record);
    // remember_new: a connection with a known role and no memory gets one now (else later, by
    // remember(), if the record turns out to need it).
    Resolved resolve(const rw_record& record, bool remember_new = true);
    ConnMemory* remember(const rw_record& record, Resolved& conn);
    ConnMemory* insert_memory(const rw_record& record, const ConnKey& key, const TupleKey& tuple,
                              TupleMap::iterator owner);
    static void touch(ConnMemory& mem, const rw_record& record);
    void emit_incident(const rw_record& record, Resolved& conn, Cause cause, CorrelatorOutput& out);
    void emit_reset(const rw_record& record, uint8_t role, CorrelatorOutput& out);
    void count_tls_close_notify(const rw_record& record, Resolved& conn);
    static ServerKey server_key(const rw_record& record, uint8_t role);
    void learn_tls_server(const rw_record& record, uint8_t role);
    bool speaks_tls(const rw_record& record, uint8_t role, uint16_t flags) const;
    void emit_observation(const rw_record& record, const Resolved& conn, ObservationKind kind,
                          double idle_s, CorrelatorOutput& out);
    // flat_hash_map keeps its values in its slot array: an insert may move every ConnMemory
    // (rehash); an erase moves none. A ConnMemory* or iterator must not be held across an
    // insert into the same map (resolve() takes its pointer after its only insert).
    using ConnMap = absl::flat_hash_map<ConnKey, ConnMemory>;
    void forget(ConnMap::iterator it);
    bool make_room();  // true when it forgot a connection
    void compact_order();

    CorrelatorOptions options_;
    CorrelatorStats stats_;
    ConnMap conns_;
    TupleMap by_tuple_;
    // Remembered connections in insertion order with the last_seen_ns they had when queued;
    // may hold keys already forgotten (skipped when met).
    std::deque<std::pair<ConnKey, uint64_t>> order_;
    absl::flat_hash_set<ServerKey> tls_servers_;
};

// Formats an IPv6-or-v4-mapped 16-byte address as text (v4-mapped as dotted quad).
std::string format_address(const uint8_t addr[RW_ADDR_LEN]);
// "ESTABLISHED", "CLOSE_WAIT", ... for enum rw_tcp_state; "UNKNOWN(n)" otherwise.
std::string tcp_state_name(uint8_t state);

}  // namespace rstwatch
