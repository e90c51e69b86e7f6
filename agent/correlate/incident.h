// Incidents and healthy-traffic observations: what the correlator produces from records.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace rstwatch {

enum class Cause : uint8_t {
    write_after_fin,
    idle_close_race,
    reset_other,
    abort_on_close,
    data_after_close,
};
inline constexpr int kCauseCount = 5;

enum class Observer : uint8_t { client, server };

std::string_view to_string(Cause cause);
std::string_view to_string(Observer observer);
std::optional<Cause> parse_cause(std::string_view name);

struct Endpoint {
    std::string ip;  // textual; IPv4 (also v4-mapped) printed as dotted quad
    uint16_t port = 0;
    bool operator==(const Endpoint&) const = default;
};

// Why a reset stayed reset_other: the facts that stopped classification.
struct ResetFacts {
    bool history = false;          // the connection was seen from its start (role and events known)
    std::string closed_first;      // "peer", "self" or "" (neither had closed)
    uint32_t unacked_bytes = 0;    // our data in flight (written, not acknowledged) at the reset
    bool request_unanswered = false;  // our last data went out after the last data came in
    bool operator==(const ResetFacts&) const = default;
};

struct Incident {
    uint64_t ts_ns = 0;  // CLOCK_MONOTONIC of the decisive record
    Cause cause = Cause::reset_other;
    Observer observer = Observer::client;
    Endpoint client;
    Endpoint server;
    uint32_t pid = 0;  // writing process; 0 when unknown
    std::string comm;  // empty when unknown
    std::optional<double> idle_before_write_ms;  // idle age at the failing write
    std::optional<double> write_to_reset_ms;     // failing write -> FIN/RST
    std::optional<double> idle_precision_ms;     // one jiffy (1000/HZ): the step of idle_before_write_ms
    std::string state;                           // socket state at the decisive record, e.g. "CLOSE_WAIT"
    std::string reset_reason;                    // kernel sk_rst_reason name without prefix, "" if none
    uint32_t requests = 0;                       // exchanges the connection carried
    uint32_t netns = 0;                          // observing socket's network namespace inode
    std::optional<ResetFacts> facts;             // reset_other only
};

// Buckets of all idle-age histograms: the metrics' and the inference's (seconds; +Inf implicit).
inline constexpr std::array<double, 16> kIdleBucketsSeconds = {
    0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 20, 30, 60, 65, 75, 90, 120, 300};

// Idle ages seen in healthy traffic (input for the agent's histograms and timeout inference).
enum class ObservationKind : uint8_t {
    reuse_idle,         // the client wrote on a connection idle >= threshold
    server_idle_close,  // the server side closed a connection idle >= threshold
    client_idle_close,  // the client side closed a connection idle >= threshold
};

struct Observation {
    uint64_t ts_ns = 0;
    ObservationKind kind = ObservationKind::reuse_idle;
    Observer observer = Observer::client;  // which socket saw it
    Endpoint client;
    Endpoint server;
    double idle_s = 0;
    uint32_t netns = 0;
    // The client process when known (the writer of an idle reuse, or of the connection's
    // last armed write): recognises the client kind for a fix hint.
    std::string comm;
};

// Every RST on the node's TCP sockets (for the resets counter), classified or not.
struct ResetEvent {
    uint64_t ts_ns = 0;
    bool sent = false;          // sent by this node's socket, else received
    bool role_known = false;    // false: client/server guessed from the ports
    Endpoint client;
    Endpoint server;
    uint32_t netns = 0;
};

}  // namespace rstwatch
