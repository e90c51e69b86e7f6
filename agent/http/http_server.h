// The agent's HTTP endpoints on libmicrohttpd (Debian 12's, TLS by GnuTLS):
//   GET /metrics    Prometheus text format 0.0.4 (prometheus::TextSerializer over `collect`)
//   GET /healthz    200 "ok" while the process runs
//   GET /readyz     200 "ready" when `readiness` returns "", else 503 and that reason
//   GET /incidents  live incident stream, JSON lines (format: stream_format.h). Optional query:
//                   since=VALUE  first replay the history's incidents with ts >= VALUE: an RFC 3339
//                                time ("2026-12-06T02:00:00Z"; "+" of an offset as %2B) or a
//                                duration back from now ("90s", "30m", "2h", "1h30m")
//                   last=N       first replay only the last N of the history (of those since,
//                                with both)
//                   The replay (oldest first, possibly empty) comes before the live lines, with
//                   no gap and no line twice between them, and is sent whole whatever its size.
//                   A bad value: 400, one line naming the parameter ("since: expected an RFC
//                   3339 time or a duration like 30m", "last: expected a non-negative
//                   integer"). Without either: live only. History bounds: HttpServerOptions.
//   GET /diagnose   inferred idle timeouts and keepalive verdicts per pair (JSON, diagnosis.h)
// Any other method: 405. Every answer closes its connection.
//
// One libmicrohttpd thread serves every connection from an epoll loop; sockets are non-blocking
// and no callback waits, so neither a follower nor a slow client holds up a scrape.
// Followers of /incidents. Each follower owns a bounded queue. publish() formats the line once,
// then for each follower takes that follower's mutex just long enough to push a shared pointer
// (or count a drop when the queue is full) and, if its connection is parked waiting for lines,
// resumes it (libmicrohttpd's resume: a flag and an eventfd write); it never waits for a network
// write. The server thread takes the queue out under the mutex and copies it into the
// connection's buffer without it; with nothing to send the connection is suspended, so idle
// followers cost no polling. A follower that stops reading loses lines of its own only: it is
// told {"dropped":N} where the gap is once it catches up, and a connection that makes no
// progress for write_timeout (whole seconds, rounded up) is closed. Followers are limited to
// max_followers (then 503); the connection limit is max_followers plus room for 64 scrapes,
// probes and /diagnose requests at once (beyond it, new connections wait in the listen queue).
// Lines go out as soon as the server thread wakes (a burst is coalesced into chunks of up to
// ~32 KiB, never held back). Heartbeats: an empty line to a follower idle for `heartbeat`.
//
// Listen address: "IPv4:PORT" ("0.0.0.0:9090", "127.0.0.1:0"), ":PORT" (all IPv4 addresses) or
// "[IPv6]:PORT" ("[::1]:9090"; "[::]:PORT" takes IPv4 too, as ::ffff:a.b.c.d). The agent binds
// the socket itself and hands it to libmicrohttpd, so a bind error is reported as the kernel
// gave it. Port 0 picks a free port; port() reports it.
//
// Protection (HttpAuthOptions): when a token file and/or a basic-auth file is configured,
// /metrics, /incidents and /diagnose answer 401 unless the request carries
// "Authorization: Bearer TOKEN" with a token of the token file or "Authorization: Basic ..."
// with a user:password of the basic-auth file. Credentials are compared in constant time
// (constant_time_equal) against every configured entry. /healthz and /readyz stay open
// (kubelet probes carry no credentials; they reveal nothing but "ok"/"ready"). Both files are
// re-read when they change (stat checked at most once a second, on requests), so a rotated
// Kubernetes Secret takes effect without a restart; a file that becomes unreadable or empty
// keeps the previous credentials (logged).
//
// TLS (tls_cert_file + tls_key_file): both PEM files are read into memory, checked with GnuTLS
// (errors name --tls-cert / --tls-key), and given to libmicrohttpd from memory: the key is
// never written anywhere, and the copies are wiped once the server holds its credentials.
// TLS 1.2 and 1.3 only (GnuTLS priority string); a plain http request on the TLS port fails
// its handshake and is closed.
//
// Files: credentials.h (HttpAuthOptions, constant_time_equal, the token and basic-auth files),
// tls.h (tls_support, certificate and key loading), listen_address.h (is_loopback_listen,
// listen_address_error, binding), history.h (IncidentHistoryOptions, the kept lines and the
// since/last parsing), followers.h (the /incidents followers); this header includes the first
// four, so it declares everything a caller of the server uses.
#pragma once

#include <prometheus/metric_family.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "credentials.h"
#include "history.h"
#include "listen_address.h"
#include "stream_format.h"
#include "tls.h"

struct MHD_Daemon;

namespace rstwatch {

class FollowerHub;

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
    // (the callback gets the query arguments as "key=value&key=value", percent-decoded). Empty: 404.
    std::function<std::string(const std::string& query)> diagnose;
    size_t follower_queue_lines = 1024;
    size_t max_followers = 8;
    std::chrono::milliseconds heartbeat{15000};      // empty line to idle followers
    // A connection that makes no progress this long (a follower that stops reading, a client
    // that sends half a request) is closed. Whole seconds, rounded up.
    std::chrono::milliseconds write_timeout{30000};
    // The incidents kept for ?since= and ?last= (in memory; lost on restart). max_incidents 0:
    // none kept, and publish() formats nothing while nobody follows.
    IncidentHistoryOptions history;
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

    // Sends the incident to every follower and keeps it in the history (stamped with its ts in
    // Unix ns); never blocks on the network.
    void publish(const StreamedIncident& incident, int64_t monotonic_to_unix_offset_ns);
    // Same with a preformatted line (no newline), stamped unix_ns (default: now).
    void publish_line(std::string line);
    void publish_line(std::string line, int64_t unix_ns);

    // Followers currently connected to /incidents.
    size_t follower_count() const;
    // Lines not delivered because a follower's queue was full, over all followers.
    uint64_t dropped_lines_total() const;
    // Requests refused with 401 (missing or wrong credentials).
    uint64_t unauthorized_total() const;

    // Ends all follower streams (a follower that reads gets what was queued for it, then a
    // clean end of the chunked body), then closes every connection and stops the server
    // thread. A follower stuck in a write is given at most 500 ms and then closed with the
    // rest: stop() never waits for a client. Idempotent; call it from one thread.
    void stop();

    struct Endpoints;  // request handling on the server thread (http_server.cpp)
    struct DaemonStop {
        void operator()(MHD_Daemon* daemon) const;
    };

private:
    // Parts of start() (each sets *error on failure).
    bool load_credentials(std::string* error);
    // Hands the bound listener to libmicrohttpd; tls nullptr: plain http.
    bool start_daemon(UniqueFd listener, int family, const TlsKeyPair* tls, std::string* error);

    HttpServerOptions options_;
    std::shared_ptr<FollowerHub> hub_;
    std::shared_ptr<HttpCredentials> credentials_;
    std::unique_ptr<MHD_Daemon, DaemonStop> daemon_;
    uint16_t port_ = 0;
    bool stopped_ = false;
};

}  // namespace rstwatch
