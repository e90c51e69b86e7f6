// The agent's HTTP endpoints on civetweb:
//   GET /metrics    Prometheus text format 0.0.4 (prometheus::TextSerializer over `collect`)
//   GET /healthz    200 "ok" while the process runs
//   GET /readyz     200 "ready" when `readiness` returns "", else 503 and that reason
//   GET /incidents  live incident stream, JSON lines (format: stream_client.h)
//   GET /diagnose   inferred idle timeouts and keepalive verdicts per pair (JSON, diagnosis.h)
//
// Followers of /incidents. Each follower is served by its own civetweb worker thread and owns a
// bounded queue. publish() formats the line once, then for each follower takes that follower's
// mutex just long enough to push a shared pointer (or count a drop when the queue is full) and
// returns: it never waits for a network write. The worker takes its follower's mutex only to
// swap the queue out and writes with no lock held, so a follower that stops reading blocks
// only its own worker (until write_timeout, after which it is disconnected) and loses lines
// of its own; it is told {"dropped":N} where the gap is once it catches up. Followers are
// limited to max_followers (then 503) and civetweb gets max_followers + 4 worker threads, so
// scrapes and probes always find a thread. Lines are written as soon as the worker wakes (a burst
// is coalesced into writes of up to 64 KiB of whole lines, never held back; TCP_NODELAY on).
//
// Listen address: "IPv4:PORT" ("0.0.0.0:9090", "127.0.0.1:0"), ":PORT" (all IPv4 addresses) or
// "[IPv6]:PORT". Port 0 picks a free port; port() reports it. IPv6 needs a civetweb built with
// USE_IPV6 (Debian 12's is not): otherwise start() fails with a clear error.
//
// Protection (HttpAuthOptions): when a token file and/or a basic-auth file is configured,
// /metrics, /incidents and /diagnose answer 401 unless the request carries
// "Authorization: Bearer TOKEN" with a token of the token file or "Authorization: Basic ..."
// with a user:password of the basic-auth file. Credentials are compared in constant time
// (constant_time_equal) against every configured entry. /healthz and /readyz stay open
// (kubelet probes carry no credentials; they reveal nothing but "ok"/"ready"). Both files are
// re-read when they change (stat checked at most once a second, on requests), so a rotated
// Kubernetes Secret takes effect without a restart; a file that becomes unreadable or empty
// keeps the previous credentials (logged). TLS (tls_cert_file + tls_key_file) uses civetweb's
// OpenSSL support: see tls_support().
#pragma once

#include <prometheus/metric_family.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "stream_client.h"

class CivetServer;

namespace rstwatch {

class HttpHandler;

// Credentials for the protected endpoints. Both empty: no authentication.
struct HttpAuthOptions {
    // Bearer tokens, one per non-empty line (several lines: rotation); surrounding blanks ignored.
    std::string token_file;
    // "user:password" per line; empty lines and lines starting with '#' are ignored.
    std::string basic_auth_file;
    bool enabled() const { return !token_file.empty() || !basic_auth_file.empty(); }
};

// True when a and b are equal; the time taken depends only on the lengths, never on where
// they differ. (The length of a secret is not hidden; the tokens' bytes are.)
bool constant_time_equal(std::string_view a, std::string_view b);

// Whether a listen address ("IPv4:PORT", ":PORT", "[IPv6]:PORT") is loopback only
// (127.0.0.0/8 or ::1). ":PORT", 0.0.0.0, :: and any other address are not.
bool is_loopback_listen(const std::string& listen);
// "" when `listen` is a usable listen address, else why not (one line, as start() reports it).
std::string listen_address_error(const std::string& listen);

// Whether TLS can be served: civetweb built with TLS (mg_check_feature(2)) and the OpenSSL
// library civetweb loads at run time ("libssl.so", "libcrypto.so": Debian's civetweb dlopens
// these unversioned names, which only libssl-dev installs) present with the API civetweb was
// built for. Else false and *why. On Debian 12 this is false: its civetweb 1.15 is built for
// the OpenSSL 1.1 API (needs SSL_get_peer_certificate) and Debian 12 ships only OpenSSL 3.
bool tls_support(std::string* why);

struct HttpServerOptions {
    std::string listen = "0.0.0.0:9090";
    HttpAuthOptions auth;
    // PEM files; both or neither. The certificate file may hold the chain (leaf first).
    // Read once at start(): rotate by restarting.
    std::string tls_cert_file;
    std::string tls_key_file;
    // /metrics content, e.g. [&]{ return metrics.collect(); }. Empty: /metrics answers 404.
    std::function<std::vector<prometheus::MetricFamily>()> collect;
    // /readyz: "" = ready, else the reason it is not. Empty function: always ready.
    std::function<std::string()> readiness;
    // /diagnose?level=pod|workload: the inferred timeouts and verdicts as one JSON document
    // (the callback gets the raw query string). Empty: 404.
    std::function<std::string(const std::string& query)> diagnose;
    size_t follower_queue_lines = 1024;
    size_t max_followers = 8;
    std::chrono::milliseconds heartbeat{15000};      // empty line to idle followers
    std::chrono::milliseconds write_timeout{30000};  // a follower write stuck this long: drop it
};

class HttpServer {
public:
    explicit HttpServer(HttpServerOptions options);
    ~HttpServer();  // stop()
    HttpServer(const HttpServer&) = delete;
    HttpServer& operator=(const HttpServer&) = delete;

    // Binds and starts serving. On failure returns false and sets *error to one line, e.g.
    // "cannot listen on 127.0.0.1:9090: address already in use". Call once.
    bool start(std::string* error);
    // The bound port (after start()).
    uint16_t port() const { return port_; }

    // Sends the incident to every follower; never blocks on the network.
    void publish(const StreamedIncident& incident, int64_t monotonic_to_unix_offset_ns);
    // Same with a preformatted line (no newline).
    void publish_line(std::string line);

    // Followers currently connected to /incidents.
    size_t follower_count() const;
    // Lines not delivered because a follower's queue was full, over all followers.
    uint64_t dropped_lines_total() const;
    // Requests refused with 401 (missing or wrong credentials).
    uint64_t unauthorized_total() const;

    // Ends all follower streams (a follower that is idle gets a clean end of the chunked body)
    // and stops the server. Returns within a few ms, or up to ~2 s when a follower is stuck in a
    // write (civetweb re-checks its stop flag every 2 s while waiting to write). Idempotent;
    // call it from one thread.
    void stop();

    struct Hub;          // followers and their queues (http_server.cpp)
    struct Credentials;  // loaded token / basic-auth files (http_server.cpp)

private:
    HttpServerOptions options_;
    std::shared_ptr<Hub> hub_;
    std::shared_ptr<Credentials> credentials_;
    std::vector<std::unique_ptr<HttpHandler>> handlers_;
    std::unique_ptr<CivetServer> server_;  // destroyed first
    uint16_t port_ = 0;
    std::string wake_ip_;  // where stop() connects to wake civetweb's accept loop
    bool stopped_ = false;
};

}  // namespace rstwatch
