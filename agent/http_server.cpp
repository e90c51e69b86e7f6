// HTTP endpoints of the agent on civetweb; see http_server.h for the follower design.
#include "http_server.h"

#include "openssl_compat.h"

#include <CivetServer.h>
#include <arpa/inet.h>
#include <civetweb.h>
#include <netinet/in.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

namespace rstwatch {

namespace {

constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";
constexpr const char* kStreamContentType = "application/x-ndjson";
constexpr size_t kMaxChunkBytes = 64 * 1024;
constexpr unsigned kFeatureTls = 2;   // mg_check_feature bits
constexpr unsigned kFeatureIpv6 = 8;
constexpr size_t kMaxCredentialFileBytes = 64 * 1024;

using Line = std::shared_ptr<const std::string>;

// Messages civetweb logs while the server starts on this thread (bind errors come this way).
thread_local std::vector<std::string>* t_start_log = nullptr;

int log_message(const mg_connection*, const char* message) {
    if (t_start_log != nullptr) {
        t_start_log->emplace_back(message != nullptr ? message : "");
    } else {
        spdlog::debug("http: {}", message != nullptr ? message : "");
    }
    return 1;  // handled: civetweb prints nothing itself
}

std::optional<uint16_t> parse_port(std::string_view text) {
    unsigned value = 0;
    if (text.empty() || text.size() > 5) return std::nullopt;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > 65535) return std::nullopt;
    return static_cast<uint16_t>(value);
}

// "ADDR:PORT" -> civetweb's listening_ports value.
std::optional<std::string> civet_listen_spec(const std::string& listen, std::string* error) {
    auto bad = [&](const std::string& why) {
        *error = "bad listen address \"" + listen + "\": " + why;
        return std::nullopt;
    };
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return bad("expected IPv4:PORT, [IPv6]:PORT or :PORT");
    auto port = parse_port(std::string_view(listen).substr(colon + 1));
    if (!port) return bad("port must be a number from 0 to 65535");
    const std::string host = listen.substr(0, colon);
    if (host.empty()) return "0.0.0.0:" + std::to_string(*port);
    if (host.front() == '[') {
        if (host.size() < 3 || host.back() != ']') return bad("unterminated [IPv6] address");
        const std::string addr = host.substr(1, host.size() - 2);
        in6_addr a6{};
        if (inet_pton(AF_INET6, addr.c_str(), &a6) != 1) return bad("not an IPv6 address");
        if (mg_check_feature(kFeatureIpv6) == 0)
            return bad("this build's civetweb has no IPv6 support; listen on an IPv4 address");
        return "[" + addr + "]:" + std::to_string(*port);
    }
    in_addr a4{};
    if (inet_pton(AF_INET, host.c_str(), &a4) != 1)
        return bad("not an IPv4 address (use [ADDR]:PORT for IPv6; host names are not resolved)");
    return host + ":" + std::to_string(*port);
}

// civetweb's "cannot bind to 127.0.0.1:9090: 98 (Address already in use)" -> the reason.
std::string bind_error_reason(const std::vector<std::string>& log) {
    for (const auto& message : log) {
        if (message.rfind("Failed to setup server ports", 0) == 0) continue;
        const size_t open = message.rfind('(');
        const size_t close = message.rfind(')');
        if (message.find("cannot bind") != std::string::npos && open != std::string::npos &&
            close != std::string::npos && close > open) {
            std::string reason = message.substr(open + 1, close - open - 1);
            if (!reason.empty()) reason[0] = static_cast<char>(std::tolower(reason[0]));
            return reason;
        }
        return message;
    }
    return log.empty() ? "civetweb could not start" : log.front();
}

std::string one_line(std::string text) {
    for (char& c : text)
        if (c == '\n' || c == '\r') c = ' ';
    return text;
}

void respond(mg_connection* conn, int status, const char* status_text, const char* content_type,
             const std::string& body) {
    mg_printf(conn,
              "HTTP/1.1 %d %s\r\n"
              "Content-Type: %s\r\n"
              "Content-Length: %zu\r\n"
              "Cache-Control: no-cache\r\n"
              "Connection: close\r\n\r\n",
              status, status_text, content_type, body.size());
    if (!body.empty()) mg_write(conn, body.data(), body.size());
}

// A connection attempt that wakes civetweb's master thread out of its accept poll.
void poke(const std::string& ip, uint16_t port) {
    sockaddr_storage storage{};
    socklen_t len = 0;
    int family = AF_INET;
    if (ip.find(':') != std::string::npos) {
        auto* a6 = reinterpret_cast<sockaddr_in6*>(&storage);
        a6->sin6_family = family = AF_INET6;
        a6->sin6_port = htons(port);
        if (inet_pton(AF_INET6, ip.c_str(), &a6->sin6_addr) != 1) return;
        len = sizeof *a6;
    } else {
        auto* a4 = reinterpret_cast<sockaddr_in*>(&storage);
        a4->sin_family = AF_INET;
        a4->sin_port = htons(port);
        if (inet_pton(AF_INET, ip.c_str(), &a4->sin_addr) != 1) return;
        len = sizeof *a4;
    }
    const int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return;
    (void)connect(fd, reinterpret_cast<sockaddr*>(&storage), len);
    close(fd);
}

std::string dropped_line(uint64_t n) { return "{\"dropped\":" + std::to_string(n) + "}"; }

// Appends one HTTP chunk holding `data`.
void append_chunk(std::string& out, std::string_view data) {
    char size[20];
    const int len = std::snprintf(size, sizeof size, "%zx\r\n", data.size());
    out.append(size, static_cast<size_t>(len));
    out.append(data);
    out.append("\r\n");
}

bool write_all(mg_connection* conn, const std::string& data) {
    return mg_write(conn, data.data(), data.size()) == static_cast<int>(data.size());
}

std::string_view trim(std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
    return text;
}

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

bool read_small_file(const std::string& path, std::string* out, std::string* error) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        *error = "cannot read " + path + ": " + std::strerror(errno);
        return false;
    }
    out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    if (in.bad()) {
        *error = "cannot read " + path;
        return false;
    }
    if (out->size() > kMaxCredentialFileBytes) {
        *error = path + " is larger than 64 KiB";
        return false;
    }
    return true;
}

// Token file: one token per non-empty line.
bool parse_tokens(const std::string& path, std::vector<std::string>* tokens, std::string* error) {
    std::string text;
    if (!read_small_file(path, &text, error)) return false;
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
    if (!read_small_file(path, &text, error)) return false;
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

struct Follower {
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Line> queue;
    uint64_t dropped_pending = 0;  // dropped since the last line queued
    bool closed = false;
};

}  // namespace

struct HttpServer::Hub {
    size_t capacity = 1024;
    size_t max_followers = 8;
    std::chrono::milliseconds heartbeat{15000};

    std::mutex mutex;
    std::vector<std::shared_ptr<Follower>> followers;
    bool stopping = false;
    std::atomic<uint64_t> dropped_total{0};

    std::shared_ptr<Follower> add() {
        std::lock_guard lock(mutex);
        if (stopping || followers.size() >= max_followers) return nullptr;
        followers.push_back(std::make_shared<Follower>());
        return followers.back();
    }

    void remove(const std::shared_ptr<Follower>& follower) {
        std::lock_guard lock(mutex);
        std::erase(followers, follower);
    }

    size_t count() {
        std::lock_guard lock(mutex);
        return followers.size();
    }

    void publish(const Line& line) {
        std::lock_guard lock(mutex);
        for (const auto& f : followers) {
            std::lock_guard follower_lock(f->mutex);
            if (f->closed) continue;
            const size_t needed = f->dropped_pending > 0 ? 2 : 1;
            if (f->queue.size() + needed > capacity) {
                ++f->dropped_pending;
                dropped_total.fetch_add(1, std::memory_order_relaxed);
                continue;
            }
            if (f->dropped_pending > 0) {
                f->queue.push_back(
                    std::make_shared<const std::string>(dropped_line(f->dropped_pending)));
                f->dropped_pending = 0;
            }
            f->queue.push_back(line);
            f->wake.notify_one();
        }
    }

    void close_all() {
        std::lock_guard lock(mutex);
        stopping = true;
        for (const auto& f : followers) {
            std::lock_guard follower_lock(f->mutex);
            f->closed = true;
            f->wake.notify_one();
        }
    }

    // After close_all(): waits until every follower has written the end of its stream and gone
    // (civetweb refuses writes once it is stopping), at most `limit`: a follower inside a data
    // write usually finishes it at once, but a stuck client keeps it there, and mg_stop() then
    // aborts it. (Not waiting for writers at all lost the end of a stream whose last write was
    // just finishing when stop() came.)
    void wait_for_idle_followers(std::chrono::milliseconds limit) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        for (;;) {
            {
                std::lock_guard lock(mutex);
                if (followers.empty()) return;
            }
            if (std::chrono::steady_clock::now() >= deadline) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
    }

    // Runs on the follower's civetweb worker thread until the follower goes or the server stops.
    void serve(mg_connection* conn, const std::shared_ptr<Follower>& f) {
        mg_printf(conn,
                  "HTTP/1.1 200 OK\r\n"
                  "Content-Type: %s\r\n"
                  "Transfer-Encoding: chunked\r\n"
                  "Cache-Control: no-cache\r\n"
                  "X-Content-Type-Options: nosniff\r\n"
                  "Connection: close\r\n\r\n",
                  kStreamContentType);
        std::deque<Line> batch;
        std::string out;
        bool ok = true;
        bool closed = false;
        while (ok) {
            batch.clear();
            {
                std::unique_lock lock(f->mutex);
                f->wake.wait_for(lock, heartbeat, [&] {
                    return f->closed || !f->queue.empty() || f->dropped_pending > 0;
                });
                if (f->closed) {
                    closed = true;
                    break;
                }
                batch.swap(f->queue);
                if (f->dropped_pending > 0) {
                    // The drops happened after everything queued: the gap is here.
                    batch.push_back(
                        std::make_shared<const std::string>(dropped_line(f->dropped_pending)));
                    f->dropped_pending = 0;
                }
            }
            // No lock held from here: a stuck client blocks only this thread.
            out.clear();
            if (batch.empty()) append_chunk(out, "\n");  // heartbeat
            for (const auto& line : batch) {
                std::string data = *line + '\n';
                append_chunk(out, data);
                if (out.size() >= kMaxChunkBytes) {
                    ok = write_all(conn, out);
                    out.clear();
                    if (!ok) break;
                }
            }
            if (ok && !out.empty()) ok = write_all(conn, out);
        }
        if (closed) mg_write(conn, "0\r\n\r\n", 5);  // end of the chunked body
        remove(f);                                   // after the last write: stop() waits for this
    }
};

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

class HttpHandler : public CivetHandler {
public:
    using Fn = std::function<void(mg_connection*)>;
    explicit HttpHandler(Fn fn) : fn_(std::move(fn)) {}
    bool handleGet(CivetServer*, mg_connection* conn) override {
        fn_(conn);
        return true;
    }

private:
    Fn fn_;
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
    return civet_listen_spec(listen, &error) ? std::string() : error;
}

namespace {

// civetweb names the memory file it was given ("ssl_use_pem_file: cannot open private key file
// /proc/self/fd/N: error:...key values mismatch"): name the user's files instead.
std::string name_pem_files(std::string reason, const std::string& pem_path, const std::string& cert_file,
                           const std::string& key_file) {
    const std::pair<std::string, std::string> rewrites[] = {
        {"ssl_use_pem_file: cannot open private key file " + pem_path, "--tls-key " + key_file},
        {"ssl_use_pem_file: cannot open certificate file " + pem_path, "--tls-cert " + cert_file},
        {pem_path, "--tls-cert " + cert_file + " / --tls-key " + key_file},
    };
    for (const auto& [from, to] : rewrites) {
        for (size_t at = reason.find(from); at != std::string::npos; at = reason.find(from, at + to.size()))
            reason.replace(at, from.size(), to);
    }
    return reason;
}

}  // namespace

bool tls_support(std::string* why) {
    std::string ignored;
    if (why == nullptr) why = &ignored;
    if (mg_check_feature(kFeatureTls) == 0) {
        *why = "this build's civetweb has no TLS support";
        return false;
    }
    // Before anything opens "libssl.so": afterwards that name would stay bound to the system's.
    std::string compat_error;
    const bool compat = load_openssl_compat(&compat_error);
    for (const char* lib : {"libssl.so", "libcrypto.so"}) {
        void* handle = dlopen(lib, RTLD_LAZY | RTLD_LOCAL);
        if (handle == nullptr) {
            *why = std::string("civetweb loads OpenSSL as ") + lib + " at run time and cannot open it (" +
                   (compat ? std::string("unknown reason") : compat_error) + ")";
            return false;
        }
        // civetweb 1.15 uses the OpenSSL 1.1 API: SSL_get_peer_certificate must resolve.
        if (std::string(lib) == "libssl.so" && dlsym(handle, "SSL_get_peer_certificate") == nullptr) {
            *why = "this civetweb uses the OpenSSL 1.1 API (SSL_get_peer_certificate), the installed libssl.so "
                   "lacks it and the OpenSSL 3 shim did not load (" + compat_error + ")";
            dlclose(handle);
            return false;
        }
        // Left loaded: civetweb opens the same library when the server starts.
    }
    return true;
}

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
    if (server_ || stopped_) {
        *error = "http server already started";
        return false;
    }
    auto spec = civet_listen_spec(options_.listen, error);
    if (!spec) return false;

    if (options_.auth.enabled()) {
        credentials_ = std::make_shared<Credentials>();
        credentials_->options = options_.auth;
        if (!credentials_->load(error)) {
            credentials_.reset();
            return false;
        }
    }

    const bool tls = !options_.tls_cert_file.empty() || !options_.tls_key_file.empty();
    // civetweb reads one PEM file holding both key and certificate(s): give it an anonymous
    // memory file (memfd) with both, so the key is never written to disk; closed after start.
    int pem_fd = -1;
    struct PemFdCloser {
        int& fd;
        ~PemFdCloser() {
            if (fd >= 0) close(fd);
        }
    } pem_closer{pem_fd};
    std::string pem_path;
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
        std::string cert, key;
        if (!read_small_file(options_.tls_cert_file, &cert, error) ||
            !read_small_file(options_.tls_key_file, &key, error)) {
            explicit_bzero(key.data(), key.size());
            return false;
        }
        pem_fd = memfd_create("rstwatch-tls", MFD_CLOEXEC);
        std::string pem = cert + "\n" + key + "\n";
        explicit_bzero(key.data(), key.size());
        const bool written = pem_fd >= 0 && ::write(pem_fd, pem.data(), pem.size()) ==
                                                static_cast<ssize_t>(pem.size());
        explicit_bzero(pem.data(), pem.size());
        if (!written) {
            *error = std::string("cannot prepare the TLS key for civetweb: ") + std::strerror(errno);
            return false;
        }
        pem_path = "/proc/self/fd/" + std::to_string(pem_fd);
    }

    std::vector<std::string> civet_options = {
        "listening_ports",    tls ? *spec + "s" : *spec,
        "num_threads",        std::to_string(options_.max_followers + 4),
        "request_timeout_ms", std::to_string(options_.write_timeout.count()),
        "enable_keep_alive",  "no",
        "tcp_nodelay",        "1",
    };
    if (tls) {
        civet_options.insert(civet_options.end(), {
                                                      "ssl_certificate", pem_path,
                                                      "ssl_certificate_chain", pem_path,
                                                      "ssl_protocol_version", "4",  // TLS 1.2 and later
                                                  });
    }
    CivetCallbacks callbacks;
    callbacks.log_message = &log_message;

    std::vector<std::string> start_log;
    t_start_log = &start_log;
    try {
        server_ = std::make_unique<CivetServer>(civet_options, &callbacks);
    } catch (const std::exception&) {
        server_.reset();
    }
    t_start_log = nullptr;
    if (!server_ || server_->getContext() == nullptr) {
        server_.reset();
        std::string reason = one_line(bind_error_reason(start_log));
        if (tls) reason = name_pem_files(reason, pem_path, options_.tls_cert_file, options_.tls_key_file);
        *error = (tls ? "cannot serve TLS on " : "cannot listen on ") + options_.listen + ": " + reason;
        return false;
    }
    const auto ports = server_->getListeningPorts();
    port_ = ports.empty() ? 0 : static_cast<uint16_t>(ports.front());
    wake_ip_ = spec->substr(0, spec->rfind(':'));
    if (wake_ip_.front() == '[') wake_ip_ = wake_ip_.substr(1, wake_ip_.size() - 2);
    if (wake_ip_ == "0.0.0.0") wake_ip_ = "127.0.0.1";
    if (wake_ip_ == "::") wake_ip_ = "::1";

    // /metrics, /diagnose and /incidents (it reveals peer addresses) need credentials when
    // any are configured; /healthz and /readyz never do.
    std::shared_ptr<Credentials> credentials = credentials_;
    auto protect = [credentials](HttpHandler::Fn fn) -> HttpHandler::Fn {
        if (!credentials) return fn;
        return [credentials, fn = std::move(fn)](mg_connection* conn) {
            if (credentials->check(mg_get_header(conn, "Authorization"))) {
                fn(conn);
                return;
            }
            credentials->unauthorized.fetch_add(1, std::memory_order_relaxed);
            const std::string body = "unauthorized: send Authorization: Bearer TOKEN (or Basic)\n";
            std::string challenge;
            if (!credentials->options.token_file.empty()) challenge += "WWW-Authenticate: Bearer realm=\"rstwatch\"\r\n";
            if (!credentials->options.basic_auth_file.empty())
                challenge += "WWW-Authenticate: Basic realm=\"rstwatch\", charset=\"UTF-8\"\r\n";
            mg_printf(conn,
                      "HTTP/1.1 401 Unauthorized\r\n"
                      "%s"
                      "Content-Type: text/plain; charset=utf-8\r\n"
                      "Content-Length: %zu\r\n"
                      "Cache-Control: no-cache\r\n"
                      "Connection: close\r\n\r\n",
                      challenge.c_str(), body.size());
            mg_write(conn, body.data(), body.size());
        };
    };

    handlers_.push_back(std::make_unique<HttpHandler>(protect([this](mg_connection* conn) {
        if (!options_.collect) {
            respond(conn, 404, "Not Found", "text/plain; charset=utf-8", "no metrics\n");
            return;
        }
        std::string body;
        try {
            body = prometheus::TextSerializer().Serialize(options_.collect());
        } catch (const std::exception& e) {
            respond(conn, 500, "Internal Server Error", "text/plain; charset=utf-8",
                    std::string("collecting metrics failed: ") + e.what() + "\n");
            return;
        }
        respond(conn, 200, "OK", kMetricsContentType, body);
    })));
    server_->addHandler("/metrics$", handlers_.back().get());

    handlers_.push_back(std::make_unique<HttpHandler>([](mg_connection* conn) {
        respond(conn, 200, "OK", "text/plain; charset=utf-8", "ok\n");
    }));
    server_->addHandler("/healthz$", handlers_.back().get());

    handlers_.push_back(std::make_unique<HttpHandler>([this](mg_connection* conn) {
        std::string reason;
        if (options_.readiness) {
            try {
                reason = options_.readiness();
            } catch (const std::exception& e) {
                reason = std::string("readiness check failed: ") + e.what();
            }
        }
        if (reason.empty())
            respond(conn, 200, "OK", "text/plain; charset=utf-8", "ready\n");
        else
            respond(conn, 503, "Service Unavailable", "text/plain; charset=utf-8",
                    one_line(reason) + "\n");
    }));
    server_->addHandler("/readyz$", handlers_.back().get());

    handlers_.push_back(std::make_unique<HttpHandler>(protect([this](mg_connection* conn) {
        if (!options_.diagnose) {
            respond(conn, 404, "Not Found", "text/plain; charset=utf-8", "no diagnosis\n");
            return;
        }
        const mg_request_info* info = mg_get_request_info(conn);
        std::string query = info && info->query_string ? info->query_string : "";
        respond(conn, 200, "OK", "application/json", options_.diagnose(query) + "\n");
    })));
    server_->addHandler("/diagnose$", handlers_.back().get());

    std::shared_ptr<Hub> hub = hub_;
    handlers_.push_back(std::make_unique<HttpHandler>(protect([hub](mg_connection* conn) {
        auto follower = hub->add();
        if (!follower) {
            respond(conn, 503, "Service Unavailable", "text/plain; charset=utf-8",
                    "too many followers of /incidents (or shutting down)\n");
            return;
        }
        hub->serve(conn, follower);
    })));
    server_->addHandler("/incidents$", handlers_.back().get());
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
    hub_->close_all();
    if (server_) {
        hub_->wait_for_idle_followers(std::chrono::milliseconds(500));
        // mg_stop() sets civetweb's stop flag, then waits for its master thread, which polls the
        // listener in 2 s quanta: keep poking the listener until mg_stop() returns.
        std::atomic<bool> stopped{false};
        std::thread waker([&] {
            for (int i = 0; i < 400 && !stopped.load(); ++i) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
                if (!stopped.load() && port_ != 0) poke(wake_ip_, port_);
            }
        });
        server_->close();  // mg_stop: aborts writes in progress, joins the workers
        stopped = true;
        waker.join();
        server_.reset();
    }
    handlers_.clear();
}

}  // namespace rstwatch
