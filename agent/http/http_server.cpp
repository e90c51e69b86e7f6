// HTTP endpoints of the agent on libmicrohttpd; see http_server.h for the design.
#include "http_server.h"

#include <microhttpd.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string_view>
#include <utility>

#include "clock.h"
#include "followers.h"
#include "text.h"

namespace rstwatch {

namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";
constexpr const char* kStreamContentType = "application/x-ndjson";
// Connections beyond the followers: scrapes, probes and /diagnose at the same time.
constexpr unsigned kRequestConnections = 64;
// How long stop() lets followers finish their stream before every connection is closed.
constexpr auto kStopGrace = std::chrono::milliseconds(500);

// What libmicrohttpd logs: debug, except while start() collects its messages for an error.
thread_local std::string* t_start_log = nullptr;

void log_mhd(void*, const char* format, va_list args) {
    char text[512];
    std::vsnprintf(text, sizeof text, format, args);
    std::string message = one_line(text);
    while (!message.empty() && message.back() == ' ') message.pop_back();
    if (t_start_log != nullptr) {
        *t_start_log = message;
    } else {
        spdlog::debug("http: {}", message);
    }
}

[[noreturn]] void mhd_panic(void*, const char* file, unsigned int line, const char* reason) {
    spdlog::critical("libmicrohttpd: internal error at {}:{}: {}", file ? file : "?", line, reason ? reason : "");
    std::abort();
}

struct ResponseRelease {
    void operator()(MHD_Response* response) const { MHD_destroy_response(response); }
};
using ResponsePtr = std::unique_ptr<MHD_Response, ResponseRelease>;

MHD_Result respond(MHD_Connection* connection, unsigned status, const char* content_type, const std::string& body,
                   const std::vector<std::pair<const char*, const char*>>& headers = {}) {
    ResponsePtr response(MHD_create_response_from_buffer(body.size(), const_cast<char*>(body.data()),
                                                         MHD_RESPMEM_MUST_COPY));
    if (!response) return MHD_NO;
    MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CONNECTION, "close");
    for (const auto& [name, value] : headers) MHD_add_response_header(response.get(), name, value);
    return MHD_queue_response(connection, status, response.get());
}

bool uses_tls(const HttpServerOptions& options) {
    return !options.tls_cert_file.empty() || !options.tls_key_file.empty();
}

// Both TLS files, read and checked, when TLS is configured.
bool load_tls_files(const HttpServerOptions& options, TlsKeyPair* out, std::string* error) {
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
        *error = "TLS needs both a certificate and a key file";
        return false;
    }
    std::string why;
    if (!tls_support(&why)) {
        *error = "TLS is not available: " + why;
        return false;
    }
    std::string reason;
    if (!load_tls(options.tls_cert_file, options.tls_key_file, out, &reason)) {
        *error = "cannot serve TLS on " + options.listen + ": " + one_line(reason);
        return false;
    }
    return true;
}

unsigned daemon_flags(bool tls, int family) {
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (tls) flags |= MHD_USE_TLS;
    if (family == AF_INET6) flags |= MHD_USE_IPv6;
    return flags;
}

// write_timeout in whole seconds, rounded up, at least 1.
unsigned timeout_seconds(std::chrono::milliseconds write_timeout) {
    return static_cast<unsigned>(std::max<int64_t>(1, (write_timeout.count() + 999) / 1000));
}

// The TLS part of the daemon's options (only MHD_OPTION_END without TLS). libmicrohttpd reads
// the certificate and key while it starts.
std::array<MHD_OptionItem, 4> tls_option_items(const TlsKeyPair* tls) {
    if (tls == nullptr) return {{{MHD_OPTION_END, 0, nullptr}}};
    return {{
        {MHD_OPTION_HTTPS_MEM_CERT, 0, const_cast<char*>(tls->cert.text.data())},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, const_cast<char*>(tls->key.text.data())},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, const_cast<char*>(kTlsPriorities)},
        {MHD_OPTION_END, 0, nullptr},
    }};
}

// A query argument, percent-decoded: nullptr when absent, "" when given without a value.
const char* query_value(MHD_Connection* connection, const char* key) {
    const char* value = nullptr;
    size_t size = 0;
    if (MHD_lookup_connection_value_n(connection, MHD_GET_ARGUMENT_KIND, key, std::strlen(key), &value, &size) !=
        MHD_YES)
        return nullptr;
    return value != nullptr ? value : "";
}

// The identity of the socket behind a descriptor, to tell whether libmicrohttpd closed it.
struct SocketIdentity {
    dev_t dev = 0;
    ino_t ino = 0;
};

SocketIdentity identity_of(int fd) {
    struct stat st {};
    fstat(fd, &st);
    return {st.st_dev, st.st_ino};
}

// After a failed start: closes the listener unless libmicrohttpd did (same descriptor, same socket).
void close_listener_if_open(int fd, const SocketIdentity& listener) {
    struct stat now {};
    if (fstat(fd, &now) == 0 && now.st_ino == listener.ino && now.st_dev == listener.dev) close(fd);
}

}  // namespace

// Request handling, on the server thread. Every request is answered on the handler's first call
// (GET has no body to wait for); libmicrohttpd calls it no more once a response is queued.
struct HttpServer::Endpoints {
    static MHD_Result handle(void* cls, MHD_Connection* connection, const char* url, const char* method,
                             const char*, const char*, size_t* upload_size, void**) {
        auto& server = *static_cast<HttpServer*>(cls);
        *upload_size = 0;  // a body sent with a GET is ignored
        if (std::strcmp(method, MHD_HTTP_METHOD_GET) != 0)
            return respond(connection, MHD_HTTP_METHOD_NOT_ALLOWED, kTextContentType, "only GET is served\n",
                           {{MHD_HTTP_HEADER_ALLOW, MHD_HTTP_METHOD_GET}});
        const std::string_view path = url;
        if (path == "/healthz") return respond(connection, MHD_HTTP_OK, kTextContentType, "ok\n");
        if (path == "/readyz") return readyz(server, connection);
        const bool known = path == "/metrics" || path == "/diagnose" || path == "/incidents";
        if (!known) return respond(connection, MHD_HTTP_NOT_FOUND, kTextContentType, "not found\n");
        // /metrics, /diagnose and /incidents (it reveals peer addresses) need credentials when
        // any are configured; /healthz and /readyz never do.
        if (server.credentials_ && !server.credentials_->check(MHD_lookup_connection_value(
                                       connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION)))
            return unauthorized(*server.credentials_, connection);
        if (path == "/metrics") return metrics(server, connection);
        if (path == "/diagnose") return diagnose(server, connection);
        return incidents(server, connection);
    }

    static MHD_Result readyz(HttpServer& server, MHD_Connection* connection) {
        std::string reason;
        if (server.options_.readiness) {
            try {
                reason = server.options_.readiness();
            } catch (const std::exception& e) {
                reason = std::string("readiness check failed: ") + e.what();
            }
        }
        if (reason.empty()) return respond(connection, MHD_HTTP_OK, kTextContentType, "ready\n");
        return respond(connection, MHD_HTTP_SERVICE_UNAVAILABLE, kTextContentType, one_line(reason) + "\n");
    }

    static MHD_Result unauthorized(HttpCredentials& credentials, MHD_Connection* connection) {
        credentials.count_unauthorized();
        std::vector<std::pair<const char*, const char*>> challenges;
        if (!credentials.options().token_file.empty())
            challenges.emplace_back(MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"rstwatch\"");
        if (!credentials.options().basic_auth_file.empty())
            challenges.emplace_back(MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Basic realm=\"rstwatch\", charset=\"UTF-8\"");
        return respond(connection, MHD_HTTP_UNAUTHORIZED, kTextContentType,
                       "unauthorized: send Authorization: Bearer TOKEN (or Basic)\n", challenges);
    }

    static MHD_Result metrics(HttpServer& server, MHD_Connection* connection) {
        if (!server.options_.collect) return respond(connection, MHD_HTTP_NOT_FOUND, kTextContentType, "no metrics\n");
        std::string body;
        try {
            body = prometheus::TextSerializer().Serialize(server.options_.collect());
        } catch (const std::exception& e) {
            return respond(connection, MHD_HTTP_INTERNAL_SERVER_ERROR, kTextContentType,
                           std::string("collecting metrics failed: ") + e.what() + "\n");
        }
        return respond(connection, MHD_HTTP_OK, kMetricsContentType, body);
    }

    static MHD_Result diagnose(HttpServer& server, MHD_Connection* connection) {
        if (!server.options_.diagnose)
            return respond(connection, MHD_HTTP_NOT_FOUND, kTextContentType, "no diagnosis\n");
        std::string query;
        MHD_get_connection_values(
            connection, MHD_GET_ARGUMENT_KIND,
            [](void* cls, MHD_ValueKind, const char* key, const char* value) {
                auto& q = *static_cast<std::string*>(cls);
                if (!q.empty()) q += '&';
                q += key;
                if (value != nullptr) q += std::string("=") + value;
                return MHD_YES;
            },
            &query);
        return respond(connection, MHD_HTTP_OK, "application/json", server.options_.diagnose(query) + "\n");
    }

    static MHD_Result incidents(HttpServer& server, MHD_Connection* connection) {
        std::string error;
        const auto replay = parse_history_query(query_value(connection, "since"), query_value(connection, "last"),
                                                clock_ns(CLOCK_REALTIME), &error);
        if (!replay) return respond(connection, MHD_HTTP_BAD_REQUEST, kTextContentType, error + "\n");
        auto follower = server.hub_->add(connection, *replay);
        if (!follower)
            return respond(connection, MHD_HTTP_SERVICE_UNAVAILABLE, kTextContentType,
                           "too many followers of /incidents (or shutting down)\n");
        ResponsePtr response(create_stream_response(server.hub_, follower));
        if (!response) return MHD_NO;
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CONTENT_TYPE, kStreamContentType);
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_X_CONTENT_TYPE_OPTIONS, "nosniff");
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CONNECTION, "close");
        return MHD_queue_response(connection, MHD_HTTP_OK, response.get());
    }
};

void HttpServer::DaemonStop::operator()(MHD_Daemon* daemon) const { MHD_stop_daemon(daemon); }

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)),
      hub_(std::make_shared<FollowerHub>(std::max<size_t>(options_.follower_queue_lines, 2), options_.max_followers,
                                         options_.heartbeat, options_.history)) {}

HttpServer::~HttpServer() { stop(); }

bool HttpServer::start(std::string* error) {
    std::string ignored;
    if (error == nullptr) error = &ignored;
    if (daemon_ || stopped_) {
        *error = "http server already started";
        return false;
    }
    auto address = parse_listen(options_.listen, error);
    if (!address) return false;
    if (!load_credentials(error)) return false;
    const bool tls = uses_tls(options_);
    TlsKeyPair key_pair;  // wiped on return: the daemon holds its own GnuTLS credentials by then
    if (tls && !load_tls_files(options_, &key_pair, error)) return false;
    UniqueFd listener;
    if (!bind_listener(options_.listen, *address, &listener, &port_, error)) return false;
    if (!start_daemon(std::move(listener), address->family, tls ? &key_pair : nullptr, error)) return false;
    hub_->start_heartbeats();
    return true;
}

bool HttpServer::load_credentials(std::string* error) {
    if (!options_.auth.enabled()) return true;
    credentials_ = std::make_shared<HttpCredentials>(options_.auth);
    if (!credentials_->load(error)) {
        credentials_.reset();
        return false;
    }
    return true;
}

bool HttpServer::start_daemon(UniqueFd listener, int family, const TlsKeyPair* tls, std::string* error) {
    static std::once_flag panic_handler;
    std::call_once(panic_handler, [] { MHD_set_panic_func(&mhd_panic, nullptr); });
    auto tls_options = tls_option_items(tls);

    // libmicrohttpd owns the listener from here (and closes it on some of its failure paths).
    const SocketIdentity listener_identity = identity_of(listener.get());
    const int listen_fd = listener.release();
    std::string start_log;
    t_start_log = &start_log;
    MHD_Daemon* daemon = MHD_start_daemon(
        daemon_flags(tls != nullptr, family), 0, nullptr, nullptr, &Endpoints::handle, this,
        MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(options_.max_followers + kRequestConnections),
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_seconds(options_.write_timeout),
        MHD_OPTION_EXTERNAL_LOGGER, &log_mhd, nullptr,
        MHD_OPTION_ARRAY, tls_options.data(),
        MHD_OPTION_END);
    t_start_log = nullptr;
    if (daemon == nullptr) {
        close_listener_if_open(listen_fd, listener_identity);
        *error = std::string(tls != nullptr ? "cannot serve TLS on " : "cannot listen on ") + options_.listen + ": " +
                 (start_log.empty() ? "libmicrohttpd did not start" : start_log);
        return false;
    }
    daemon_.reset(daemon);
    return true;
}

void HttpServer::publish(const StreamedIncident& incident, int64_t monotonic_to_unix_offset_ns) {
    // Nobody listens and nothing is kept: skip formatting.
    if (!hub_->history_enabled() && hub_->count() == 0) return;
    // The wall-clock time the line's "ts" shows, for the history's since= and max age.
    const int64_t unix_ns = static_cast<int64_t>(incident.incident.ts_ns) + monotonic_to_unix_offset_ns;
    publish_line(format_streamed_incident_line(incident, monotonic_to_unix_offset_ns), unix_ns);
}

void HttpServer::publish_line(std::string line) { publish_line(std::move(line), clock_ns(CLOCK_REALTIME)); }

void HttpServer::publish_line(std::string line, int64_t unix_ns) {
    hub_->publish(IncidentHistory::make_line(std::move(line)), unix_ns);
}

size_t HttpServer::follower_count() const { return hub_->count(); }

uint64_t HttpServer::dropped_lines_total() const { return hub_->dropped_total(); }

uint64_t HttpServer::unauthorized_total() const {
    return credentials_ ? credentials_->unauthorized_total() : 0;
}

void HttpServer::stop() {
    if (stopped_) return;
    stopped_ = true;
    hub_->close_all();  // no follower stays suspended: libmicrohttpd cannot stop with one
    hub_->stop_heartbeats();
    if (daemon_) {
        hub_->wait_for_followers(kStopGrace);
        daemon_.reset();  // closes every connection, a stuck follower's too, and joins its thread
    }
}

}  // namespace rstwatch
