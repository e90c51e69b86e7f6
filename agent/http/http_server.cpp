// HTTP endpoints of the agent on libmicrohttpd; see http_server.h for the design.
#include "http_server.h"
#include "text.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

namespace rstwatch {

namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kTextContentType = "text/plain; charset=utf-8";
constexpr const char* kStreamContentType = "application/x-ndjson";
constexpr size_t kMaxCredentialFileBytes = 64 * 1024;
constexpr size_t kMaxPemFileBytes = 1024 * 1024;
// Connections beyond the followers: scrapes, probes and /diagnose at the same time.
constexpr unsigned kRequestConnections = 64;
// TLS 1.2 and 1.3, GnuTLS's default ("NORMAL") ciphers and groups otherwise.
constexpr const char* kTlsPriorities = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";
// How long stop() lets followers finish their stream before every connection is closed.
constexpr auto kStopGrace = std::chrono::milliseconds(500);

using Line = std::shared_ptr<const std::string>;
using Clock = std::chrono::steady_clock;

std::optional<uint16_t> parse_port(std::string_view text) {
    unsigned value = 0;
    if (text.empty() || text.size() > 5) return std::nullopt;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > 65535) return std::nullopt;
    return static_cast<uint16_t>(value);
}

struct ListenAddress {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family = AF_INET;
};

// "ADDR:PORT" -> the socket address to bind.
std::optional<ListenAddress> parse_listen(const std::string& listen, std::string* error) {
    auto bad = [&](const std::string& why) {
        *error = "bad listen address \"" + listen + "\": " + why;
        return std::nullopt;
    };
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return bad("expected IPv4:PORT, [IPv6]:PORT or :PORT");
    auto port = parse_port(std::string_view(listen).substr(colon + 1));
    if (!port) return bad("port must be a number from 0 to 65535");
    const std::string host = listen.substr(0, colon);
    ListenAddress out;
    if (!host.empty() && host.front() == '[') {
        if (host.size() < 3 || host.back() != ']') return bad("unterminated [IPv6] address");
        auto* a6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(*port);
        if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1)
            return bad("not an IPv6 address");
        out.family = AF_INET6;
        out.length = sizeof *a6;
        return out;
    }
    auto* a4 = reinterpret_cast<sockaddr_in*>(&out.storage);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(*port);
    if (host.empty()) {
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1) {
        return bad("not an IPv4 address (use [ADDR]:PORT for IPv6; host names are not resolved)");
    }
    out.length = sizeof *a4;
    return out;
}

// strerror() with a lower-case first letter, to follow "cannot listen on ADDR: ".
std::string errno_text(int err) {
    std::string text = std::strerror(err);
    if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
    return text;
}

// A file descriptor closed with its owner unless released.
class UniqueFd {
public:
    explicit UniqueFd(int fd = -1) : fd_(fd) {}
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    UniqueFd& operator=(UniqueFd&& other) noexcept {
        if (this != &other) {
            if (fd_ >= 0) close(fd_);
            fd_ = other.release();
        }
        return *this;
    }
    ~UniqueFd() {
        if (fd_ >= 0) close(fd_);
    }
    int get() const { return fd_; }
    int release() { return std::exchange(fd_, -1); }

private:
    int fd_;
};

// The listening socket, bound here rather than by libmicrohttpd: errors as the kernel gives them.
// "[::]:PORT" also takes IPv4 (IPV6_V6ONLY off, whatever net.ipv6.bindv6only says).
bool bind_listener(const std::string& listen, const ListenAddress& address, UniqueFd* out, uint16_t* port,
                   std::string* error) {
    auto fail = [&](int err) {
        *error = "cannot listen on " + listen + ": " + errno_text(err);
        return false;
    };
    UniqueFd fd(socket(address.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return fail(errno);
    const int on = 1, off = 0;
    if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) return fail(errno);
    if (address.family == AF_INET6 && setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) != 0)
        return fail(errno);
    if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) return fail(errno);
    if (::listen(fd.get(), SOMAXCONN) != 0) return fail(errno);
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length) != 0) return fail(errno);
    *port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    *out = std::move(fd);
    return true;
}

std::string dropped_line(uint64_t n) { return "{\"dropped\":" + std::to_string(n) + "}"; }

// RFC 4648 base64 (padding optional); nullopt on any other character.
std::optional<std::string> base64_decode(std::string_view in) {
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else if (c == '=') break;
        else return std::nullopt;
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    return out;
}

bool iequals_prefix(std::string_view text, std::string_view prefix) {
    if (text.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(text[i])) != std::tolower(static_cast<unsigned char>(prefix[i])))
            return false;
    return true;
}

// read_small_file with the path in the error: "cannot read PATH: why".
bool read_file(const std::string& path, size_t max_bytes, std::string* out, std::string* error) {
    std::string why;
    auto data = read_small_file(path, max_bytes, &why);
    if (!data) {
        *error = "cannot read " + path + ": " + why;
        return false;
    }
    *out = std::move(*data);
    return true;
}

struct FileStamp {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    bool operator==(const FileStamp&) const = default;
};

// stat() follows symlinks: a Kubernetes Secret volume swaps its ..data symlink on update.
std::optional<FileStamp> stamp_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return FileStamp{st.st_dev, st.st_ino, st.st_size,
                     st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec,
                     st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec};
}

// Token file: one token per non-empty line.
bool parse_tokens(const std::string& path, std::vector<std::string>* tokens, std::string* error) {
    std::string text;
    if (!read_file(path, kMaxCredentialFileBytes, &text, error)) return false;
    tokens->clear();
    size_t start = 0;
    while (start <= text.size()) {
        size_t nl = text.find('\n', start);
        if (nl == std::string::npos) nl = text.size();
        std::string_view line = trim(std::string_view(text).substr(start, nl - start));
        if (!line.empty()) tokens->emplace_back(line);
        start = nl + 1;
    }
    explicit_bzero(text.data(), text.size());
    if (tokens->empty()) {
        *error = "no token in " + path + " (the file is empty)";
        return false;
    }
    return true;
}

// Basic-auth file: "user:password" lines, '#' comments.
bool parse_basic(const std::string& path, std::vector<std::string>* entries, std::string* error) {
    std::string text;
    if (!read_file(path, kMaxCredentialFileBytes, &text, error)) return false;
    entries->clear();
    size_t start = 0;
    int number = 0;
    bool ok = true;
    while (ok && start <= text.size()) {
        size_t nl = text.find('\n', start);
        if (nl == std::string::npos) nl = text.size();
        ++number;
        std::string_view line = std::string_view(text).substr(start, nl - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        start = nl + 1;
        if (trim(line).empty() || trim(line).front() == '#') continue;
        const size_t colon = line.find(':');
        if (colon == 0 || colon == std::string_view::npos || colon + 1 == line.size()) {
            *error = path + " line " + std::to_string(number) + ": expected user:password";
            ok = false;
            break;
        }
        entries->emplace_back(line);
    }
    explicit_bzero(text.data(), text.size());
    if (ok && entries->empty()) {
        *error = "no user:password line in " + path;
        ok = false;
    }
    return ok;
}

// Wipes a string holding key material when it goes.
struct Secret {
    std::string text;
    Secret() = default;
    Secret(const Secret&) = delete;
    Secret& operator=(const Secret&) = delete;
    ~Secret() { explicit_bzero(text.data(), text.size()); }
};

// The certificate chain and key, read and checked with GnuTLS so that an error names the flag
// and file it comes from (libmicrohttpd only says that its TLS setup failed).
bool load_tls(const std::string& cert_file, const std::string& key_file, Secret* cert, Secret* key,
              std::string* error) {
    if (!read_file(cert_file, kMaxPemFileBytes, &cert->text, error) ||
        !read_file(key_file, kMaxPemFileBytes, &key->text, error))
        return false;
    auto datum = [](Secret* s) {
        return gnutls_datum_t{reinterpret_cast<unsigned char*>(s->text.data()),
                              static_cast<unsigned>(s->text.size())};
    };
    gnutls_datum_t cert_pem = datum(cert), key_pem = datum(key);

    gnutls_x509_crt_t* chain = nullptr;
    unsigned chain_length = 0;
    int rc = gnutls_x509_crt_list_import2(&chain, &chain_length, &cert_pem, GNUTLS_X509_FMT_PEM, 0);
    for (unsigned i = 0; i < chain_length; ++i) gnutls_x509_crt_deinit(chain[i]);
    gnutls_free(chain);
    if (rc < 0) {
        *error = "--tls-cert " + cert_file + ": no PEM certificate (" + gnutls_strerror(rc) + ")";
        return false;
    }

    gnutls_x509_privkey_t parsed = nullptr;
    rc = gnutls_x509_privkey_init(&parsed);
    if (rc >= 0) rc = gnutls_x509_privkey_import2(parsed, &key_pem, GNUTLS_X509_FMT_PEM, nullptr, 0);
    if (parsed != nullptr) gnutls_x509_privkey_deinit(parsed);
    if (rc < 0) {
        *error = "--tls-key " + key_file + ": no usable PEM private key (" + gnutls_strerror(rc) +
                 "; an encrypted key is not supported)";
        return false;
    }

    gnutls_certificate_credentials_t credentials = nullptr;
    rc = gnutls_certificate_allocate_credentials(&credentials);
    if (rc >= 0)
        rc = gnutls_certificate_set_x509_key_mem2(credentials, &cert_pem, &key_pem, GNUTLS_X509_FMT_PEM, nullptr, 0);
    if (credentials != nullptr) gnutls_certificate_free_credentials(credentials);
    if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH) {
        *error = "--tls-key " + key_file + ": the key does not match the certificate of --tls-cert " + cert_file;
        return false;
    }
    if (rc < 0) {
        *error = "--tls-cert " + cert_file + " / --tls-key " + key_file + ": " + gnutls_strerror(rc);
        return false;
    }
    return true;
}

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

// One follower of /incidents. `queue`, `dropped_pending`, `closed` and `suspended` are shared
// with publish() and stop() under `mutex`; `out`, `current` and `offset` belong to the server
// thread (the content reader) alone.
struct Follower {
    std::mutex mutex;
    std::deque<Line> queue;
    uint64_t dropped_pending = 0;  // dropped since the last line queued
    bool closed = false;           // stop(): end the stream once what is queued is written
    bool suspended = false;        // the connection waits for lines (libmicrohttpd: suspended)
    bool gone = false;             // the connection is over: `connection` is no longer valid
    MHD_Connection* connection = nullptr;
    std::atomic<int64_t> last_output_ns{0};  // steady clock, when bytes were last handed over

    std::deque<Line> out;
    Line current;
    size_t offset = 0;  // into *current + '\n'

    // Under `mutex`, with the connection suspended: back into the server's loop.
    void resume_locked() {
        suspended = false;
        MHD_resume_connection(connection);
    }
};

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

}  // namespace

struct HttpServer::Hub {
    size_t capacity = 1024;
    size_t max_followers = 8;
    std::chrono::milliseconds heartbeat{15000};

    std::mutex mutex;
    std::vector<std::shared_ptr<Follower>> followers;
    bool stopping = false;
    std::atomic<uint64_t> dropped_total{0};
    std::condition_variable changed;  // a follower went, or stopping

    std::thread heartbeat_thread;
    std::mutex heartbeat_mutex;
    std::condition_variable heartbeat_wake;
    bool heartbeat_stop = false;

    std::shared_ptr<Follower> add(MHD_Connection* connection) {
        std::lock_guard lock(mutex);
        if (stopping || followers.size() >= max_followers) return nullptr;
        auto f = std::make_shared<Follower>();
        f->connection = connection;
        f->last_output_ns = now_ns();
        followers.push_back(f);
        return f;
    }

    // The connection is over (its response released by libmicrohttpd).
    void remove(const std::shared_ptr<Follower>& f) {
        {
            std::lock_guard follower_lock(f->mutex);
            f->gone = true;
            f->suspended = false;
            f->connection = nullptr;
        }
        std::lock_guard lock(mutex);
        std::erase(followers, f);
        changed.notify_all();
    }

    size_t count() {
        std::lock_guard lock(mutex);
        return followers.size();
    }

    void publish(const Line& line) {
        std::lock_guard lock(mutex);
        for (const auto& f : followers) {
            std::lock_guard follower_lock(f->mutex);
            if (f->closed || f->gone) continue;
            const size_t needed = f->dropped_pending > 0 ? 2 : 1;
            if (f->queue.size() + needed > capacity) {
                ++f->dropped_pending;
                dropped_total.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            if (f->dropped_pending > 0) {
                f->queue.push_back(std::make_shared<const std::string>(dropped_line(f->dropped_pending)));
                f->dropped_pending = 0;
            }
            f->queue.push_back(line);
            if (f->suspended) f->resume_locked();
        }
    }

    // Every stream ends once what is queued for it is written; no follower is accepted after.
    void close_all() {
        std::lock_guard lock(mutex);
        stopping = true;
        for (const auto& f : followers) {
            std::lock_guard follower_lock(f->mutex);
            f->closed = true;
            if (f->suspended) f->resume_locked();
        }
        changed.notify_all();
    }

    // After close_all(): until every follower's connection is over, at most `limit` (a follower
    // stuck in a write stays; stopping the daemon closes it).
    void wait_for_followers(std::chrono::milliseconds limit) {
        std::unique_lock lock(mutex);
        changed.wait_for(lock, limit, [&] { return followers.empty(); });
    }

    // Wakes suspended followers that have been idle for `heartbeat`: their content reader then
    // sends an empty line.
    void start_heartbeats() {
        heartbeat_thread = std::thread([this] {
            const auto tick = std::max(heartbeat / 2, std::chrono::milliseconds(10));
            std::unique_lock wait_lock(heartbeat_mutex);
            while (!heartbeat_wake.wait_for(wait_lock, tick, [&] { return heartbeat_stop; })) {
                const int64_t due = now_ns() - std::chrono::nanoseconds(heartbeat).count();
                std::lock_guard lock(mutex);
                for (const auto& f : followers) {
                    std::lock_guard follower_lock(f->mutex);
                    if (f->suspended && f->last_output_ns.load() <= due) f->resume_locked();
                }
            }
        });
    }

    void stop_heartbeats() {
        {
            std::lock_guard lock(heartbeat_mutex);
            heartbeat_stop = true;
        }
        heartbeat_wake.notify_all();
        if (heartbeat_thread.joinable()) heartbeat_thread.join();
    }
};

namespace {

// What a stream's response carries: its follower, and the hub to leave when it is released.
struct Stream {
    std::shared_ptr<HttpServer::Hub> hub;
    std::shared_ptr<Follower> follower;
};

// libmicrohttpd's content reader for /incidents, on the server thread: whole queued lines (the
// last one may continue in the next call), a heartbeat, the end of the stream, or nothing for
// now (the connection is suspended until publish(), a heartbeat or stop() resumes it).
ssize_t read_stream(void* cls, uint64_t, char* buf, size_t max) {
    auto& stream = *static_cast<Stream*>(cls);
    Follower& f = *stream.follower;
    if (f.out.empty() && !f.current) {
        std::lock_guard lock(f.mutex);
        f.out.swap(f.queue);
        if (f.dropped_pending > 0) {
            // The drops happened after everything queued: the gap is here.
            f.out.push_back(std::make_shared<const std::string>(dropped_line(f.dropped_pending)));
            f.dropped_pending = 0;
        }
        if (f.out.empty()) {
            if (f.closed) return MHD_CONTENT_READER_END_OF_STREAM;
            const int64_t now = now_ns();
            if (now - f.last_output_ns.load() >= std::chrono::nanoseconds(stream.hub->heartbeat).count()) {
                f.last_output_ns = now;
                buf[0] = '\n';
                return 1;
            }
            f.suspended = true;
            MHD_suspend_connection(f.connection);
            return 0;
        }
    }
    size_t written = 0;
    while (written < max) {
        if (!f.current) {
            if (f.out.empty()) break;
            f.current = std::move(f.out.front());
            f.out.pop_front();
            f.offset = 0;
        }
        const std::string& line = *f.current;
        if (f.offset < line.size()) {
            const size_t n = std::min(line.size() - f.offset, max - written);
            std::memcpy(buf + written, line.data() + f.offset, n);
            written += n;
            f.offset += n;
        }
        if (f.offset == line.size() && written < max) {
            buf[written++] = '\n';
            f.current.reset();
        }
    }
    f.last_output_ns = now_ns();
    return static_cast<ssize_t>(written);
}

void release_stream(void* cls) {
    std::unique_ptr<Stream> stream(static_cast<Stream*>(cls));
    stream->hub->remove(stream->follower);
}

}  // namespace

struct HttpServer::Credentials {
    HttpAuthOptions options;
    std::mutex mutex;
    std::vector<std::string> tokens;
    std::vector<std::string> basic;  // "user:password"
    std::optional<FileStamp> token_stamp;
    std::optional<FileStamp> basic_stamp;
    std::chrono::steady_clock::time_point next_check{};
    std::atomic<uint64_t> unauthorized{0};

    ~Credentials() {
        for (auto& t : tokens) explicit_bzero(t.data(), t.size());
        for (auto& b : basic) explicit_bzero(b.data(), b.size());
    }

    // Start: every configured file must be valid.
    bool load(std::string* error) {
        std::lock_guard lock(mutex);
        if (!options.token_file.empty()) {
            token_stamp = stamp_of(options.token_file);
            if (!parse_tokens(options.token_file, &tokens, error)) return false;
        }
        if (!options.basic_auth_file.empty()) {
            basic_stamp = stamp_of(options.basic_auth_file);
            if (!parse_basic(options.basic_auth_file, &basic, error)) return false;
        }
        next_check = std::chrono::steady_clock::now() + std::chrono::seconds(1);
        return true;
    }

    // Under `mutex`: re-reads a file whose stat changed; a bad file keeps the old credentials.
    void reload_changed() {
        const auto now = std::chrono::steady_clock::now();
        if (now < next_check) return;
        next_check = now + std::chrono::seconds(1);
        auto reload = [](const std::string& path, std::optional<FileStamp>& stamp, auto parse,
                         std::vector<std::string>& current, const char* what) {
            if (path.empty()) return;
            auto now_stamp = stamp_of(path);
            if (now_stamp == stamp) return;
            std::vector<std::string> fresh;
            std::string error;
            if (!parse(path, &fresh, &error)) {
                spdlog::error("{} changed but is not usable, keeping the previous credentials: {}", what,
                              one_line(error));
                stamp = now_stamp;  // logged once per change
                return;
            }
            for (auto& c : current) explicit_bzero(c.data(), c.size());
            current = std::move(fresh);
            stamp = now_stamp;
            spdlog::info("{} {} reloaded: {} entries", what, path, current.size());
        };
        reload(options.token_file, token_stamp, &parse_tokens, tokens, "auth token file");
        reload(options.basic_auth_file, basic_stamp, &parse_basic, basic, "basic auth file");
    }

    // The Authorization header's value (nullptr when absent) -> allowed?
    bool check(const char* header) {
        if (header == nullptr) return false;
        std::string_view value = trim(header);
        std::lock_guard lock(mutex);
        reload_changed();
        bool ok = false;
        if (iequals_prefix(value, "Bearer ")) {
            std::string_view token = trim(value.substr(7));
            // Every entry is compared: the time does not tell which (or whether one) matched.
            for (const auto& t : tokens) ok |= constant_time_equal(token, t);
        } else if (iequals_prefix(value, "Basic ")) {
            auto decoded = base64_decode(trim(value.substr(6)));
            if (decoded) {
                for (const auto& b : basic) ok |= constant_time_equal(*decoded, b);
                explicit_bzero(decoded->data(), decoded->size());
            }
        }
        return ok;
    }
};


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

    static MHD_Result unauthorized(Credentials& credentials, MHD_Connection* connection) {
        credentials.unauthorized.fetch_add(1, std::memory_order_relaxed);
        std::vector<std::pair<const char*, const char*>> challenges;
        if (!credentials.options.token_file.empty())
            challenges.emplace_back(MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"rstwatch\"");
        if (!credentials.options.basic_auth_file.empty())
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
        auto follower = server.hub_->add(connection);
        if (!follower)
            return respond(connection, MHD_HTTP_SERVICE_UNAVAILABLE, kTextContentType,
                           "too many followers of /incidents (or shutting down)\n");
        auto stream = std::make_unique<Stream>(Stream{server.hub_, follower});
        ResponsePtr response(
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, &read_stream, stream.get(), &release_stream));
        if (!response) {
            server.hub_->remove(follower);
            return MHD_NO;
        }
        stream.release();  // the response owns it now: release_stream()
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CONTENT_TYPE, kStreamContentType);
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_X_CONTENT_TYPE_OPTIONS, "nosniff");
        MHD_add_response_header(response.get(), MHD_HTTP_HEADER_CONNECTION, "close");
        return MHD_queue_response(connection, MHD_HTTP_OK, response.get());
    }
};

bool constant_time_equal(std::string_view a, std::string_view b) {
    // Walks the longer length every time; a length mismatch is folded in at the end.
    const size_t n = std::max(a.size(), b.size());
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff = static_cast<unsigned char>(diff | (x ^ y));
    }
    return (diff == 0) & (a.size() == b.size());
}

bool is_loopback_listen(const std::string& listen) {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return false;
    std::string host = listen.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        in6_addr a6{};
        if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6) != 1) return false;
        if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
        // ::ffff:127.x.y.z
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    in_addr a4{};
    if (inet_pton(AF_INET, host.c_str(), &a4) != 1) return false;
    return (ntohl(a4.s_addr) >> 24) == 127;
}


std::string listen_address_error(const std::string& listen) {
    std::string error;
    return parse_listen(listen, &error) ? std::string() : error;
}

bool tls_support(std::string* why) {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES) return true;
    if (why != nullptr) *why = "this libmicrohttpd was built without TLS (GnuTLS)";
    return false;
}

void HttpServer::DaemonStop::operator()(MHD_Daemon* daemon) const { MHD_stop_daemon(daemon); }

HttpServer::HttpServer(HttpServerOptions options)
    : options_(std::move(options)), hub_(std::make_shared<Hub>()) {
    hub_->capacity = std::max<size_t>(options_.follower_queue_lines, 2);
    hub_->max_followers = options_.max_followers;
    hub_->heartbeat = options_.heartbeat;
}

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

    if (options_.auth.enabled()) {
        credentials_ = std::make_shared<Credentials>();
        credentials_->options = options_.auth;
        if (!credentials_->load(error)) {
            credentials_.reset();
            return false;
        }
    }

    const bool tls = !options_.tls_cert_file.empty() || !options_.tls_key_file.empty();
    Secret cert, key;  // wiped on return: the daemon holds its own GnuTLS credentials by then
    if (tls) {
        if (options_.tls_cert_file.empty() || options_.tls_key_file.empty()) {
            *error = "TLS needs both a certificate and a key file";
            return false;
        }
        std::string why;
        if (!tls_support(&why)) {
            *error = "TLS is not available: " + why;
            return false;
        }
        std::string reason;
        if (!load_tls(options_.tls_cert_file, options_.tls_key_file, &cert, &key, &reason)) {
            *error = "cannot serve TLS on " + options_.listen + ": " + one_line(reason);
            return false;
        }
    }

    UniqueFd listener;
    if (!bind_listener(options_.listen, *address, &listener, &port_, error)) return false;

    static std::once_flag panic_handler;
    std::call_once(panic_handler, [] { MHD_set_panic_func(&mhd_panic, nullptr); });

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (tls) flags |= MHD_USE_TLS;
    if (address->family == AF_INET6) flags |= MHD_USE_IPv6;
    const auto timeout_s = static_cast<unsigned>(
        std::max<int64_t>(1, (options_.write_timeout.count() + 999) / 1000));
    MHD_OptionItem tls_options[] = {
        {MHD_OPTION_HTTPS_MEM_CERT, 0, cert.text.data()},
        {MHD_OPTION_HTTPS_MEM_KEY, 0, key.text.data()},
        {MHD_OPTION_HTTPS_PRIORITIES, 0, const_cast<char*>(kTlsPriorities)},
        {MHD_OPTION_END, 0, nullptr},
    };
    MHD_OptionItem no_options[] = {{MHD_OPTION_END, 0, nullptr}};

    // libmicrohttpd owns the listener from here (and closes it on some of its failure paths).
    struct stat listener_stat {};
    fstat(listener.get(), &listener_stat);
    const int listen_fd = listener.release();
    std::string start_log;
    t_start_log = &start_log;
    MHD_Daemon* daemon = MHD_start_daemon(
        flags, 0, nullptr, nullptr, &Endpoints::handle, this,
        MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, static_cast<unsigned>(options_.max_followers + kRequestConnections),
        MHD_OPTION_CONNECTION_TIMEOUT, timeout_s,
        MHD_OPTION_EXTERNAL_LOGGER, &log_mhd, nullptr,
        MHD_OPTION_ARRAY, tls ? tls_options : no_options,
        MHD_OPTION_END);
    t_start_log = nullptr;
    if (daemon == nullptr) {
        // Close the listener unless libmicrohttpd did (same descriptor, same socket).
        struct stat now {};
        if (fstat(listen_fd, &now) == 0 && now.st_ino == listener_stat.st_ino && now.st_dev == listener_stat.st_dev)
            close(listen_fd);
        *error = std::string(tls ? "cannot serve TLS on " : "cannot listen on ") + options_.listen + ": " +
                 (start_log.empty() ? "libmicrohttpd did not start" : start_log);
        return false;
    }
    daemon_.reset(daemon);
    hub_->start_heartbeats();
    return true;
}

void HttpServer::publish(const StreamedIncident& incident, int64_t monotonic_to_unix_offset_ns) {
    if (hub_->count() == 0) return;  // nobody listens: skip formatting
    publish_line(format_streamed_incident_line(incident, monotonic_to_unix_offset_ns));
}

void HttpServer::publish_line(std::string line) {
    hub_->publish(std::make_shared<const std::string>(std::move(line)));
}

size_t HttpServer::follower_count() const { return hub_->count(); }

uint64_t HttpServer::dropped_lines_total() const { return hub_->dropped_total.load(); }

uint64_t HttpServer::unauthorized_total() const {
    return credentials_ ? credentials_->unauthorized.load() : 0;
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
