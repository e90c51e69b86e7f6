// The agent's HTTP server (agent/http_server.h) on its own, in one process on loopback, for
// bench/run.py --only httpserver. It uses only HttpServer's public interface, so the same file
// builds against another tree's server to compare them (docs/performance.md, "HTTP server").
//
//   httpserver_bench [--scrapes N] [--scrape-followers N] [--stream-followers N]
//                    [--stream-seconds S] [--pairs N]
//
// Prints one JSON object:
//   scrape_0, scrape_followers   GET /metrics (a realistic exposition: --pairs pod pairs with
//                                incidents, resets and histograms) over a fresh connection
//                                each, connect to end of body, in ms: median, p90, p99, max;
//                                first with no follower, then with --scrape-followers
//                                followers attached and receiving 1000 incidents/s
//   stream                       --stream-followers followers reading as fast as they can while
//                                one thread publishes incidents as fast as it can for
//                                --stream-seconds: incidents delivered per second per follower
//                                (median over followers), dropped (announced) per second, and
//                                publish() latency in us (median, p99, max)
//   stop_ms                      how long stop() takes with one follower that does not read
//                                (stuck in a write) and one that does
//   errors                       anything that went wrong (a status other than 200, a
//                                follower that ended early); non-empty -> exit 1
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "http_server.h"
#include "metrics.h"

using namespace rstwatch;
using Clock = std::chrono::steady_clock;
using nlohmann::json;

namespace {

double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

json distribution(std::vector<double> xs) {
    if (xs.empty()) return json{{"n", 0}};
    std::sort(xs.begin(), xs.end());
    auto at = [&](double q) { return xs[std::min(xs.size() - 1, static_cast<size_t>(q * (xs.size() - 1) + 0.5))]; };
    return json{{"n", xs.size()}, {"median", at(0.5)}, {"p90", at(0.9)}, {"p99", at(0.99)}, {"max", xs.back()}};
}

int connect_loopback(uint16_t port, int rcvbuf = 0) {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rcvbuf > 0) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    const int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

bool send_get(int fd, const std::string& path) {
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    return send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
}

// One GET over a fresh connection, read to the end: ms, or -1 (and *error) on failure.
double timed_get(uint16_t port, const std::string& path, size_t* body_bytes, std::string* error) {
    const auto start = Clock::now();
    const int fd = connect_loopback(port);
    if (fd < 0 || !send_get(fd, path)) {
        *error = "connect/send failed";
        if (fd >= 0) close(fd);
        return -1;
    }
    std::string response;
    char buf[65536];
    for (;;) {
        const ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n <= 0) break;
        response.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    const double ms = ms_since(start);
    if (response.rfind("HTTP/1.1 200", 0) != 0) {
        *error = "GET " + path + ": " + response.substr(0, response.find('\r'));
        return -1;
    }
    const size_t head = response.find("\r\n\r\n");
    *body_bytes = head == std::string::npos ? 0 : response.size() - head - 4;
    return ms;
}

// A follower on a raw socket: decodes the chunked body, counts incident lines and the drops
// announced by {"dropped":N} lines.
class Reader {
public:
    Reader(uint16_t port, bool read) : fd_(connect_loopback(port, read ? 0 : 1)) {
        ok_ = fd_ >= 0 && send_get(fd_, "/incidents");
        if (ok_ && read) thread_ = std::thread([this] { run(); });
    }
    ~Reader() { finish(); }
    void finish() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
        if (fd_ >= 0) close(fd_);
        fd_ = -1;
    }
    bool ok() const { return ok_; }
    uint64_t incidents() const { return incidents_.load(); }
    uint64_t dropped() const { return dropped_.load(); }
    bool ended() const { return ended_.load(); }

private:
    void run() {
        char buf[1 << 16];
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (poll(&p, 1, 50) <= 0) continue;
            const ssize_t n = recv(fd_, buf, sizeof buf, 0);
            if (n <= 0) {
                ended_ = true;
                return;
            }
            feed(buf, static_cast<size_t>(n));
        }
    }
    void feed(const char* data, size_t size) {
        for (size_t i = 0; i < size; ++i) {
            const char c = data[i];
            if (!headers_done_) {
                head_ = (head_ << 8) | static_cast<unsigned char>(c);
                if ((head_ & 0xffffffffu) == 0x0d0a0d0au) headers_done_ = true;
                continue;
            }
            if (chunk_left_ == 0) {  // chunk size line, then the CRLF ending the previous chunk
                if (c == '\n') {
                    if (!size_line_.empty()) {
                        chunk_left_ = std::strtoul(size_line_.c_str(), nullptr, 16);
                        size_line_.clear();
                    }
                } else if (c != '\r') {
                    size_line_ += c;
                }
                continue;
            }
            const size_t n = std::min(chunk_left_, size - i);
            for (size_t k = 0; k < n; ++k) line(data[i + k]);
            chunk_left_ -= n;
            i += n - 1;
        }
    }
    void line(char c) {
        if (c != '\n') {
            if (line_.size() < 32) line_ += c;
            ++line_bytes_;
            return;
        }
        if (line_.rfind("{\"dropped\":", 0) == 0)
            dropped_ += std::strtoull(line_.c_str() + 11, nullptr, 10);
        else if (line_bytes_ > 0)
            ++incidents_;
        line_.clear();
        line_bytes_ = 0;
    }

    int fd_;
    bool ok_ = false;
    std::atomic<bool> stop_{false};
    std::atomic<bool> ended_{false};
    std::atomic<uint64_t> incidents_{0}, dropped_{0};
    bool headers_done_ = false;
    uint32_t head_ = 0;
    std::string size_line_, line_;
    size_t chunk_left_ = 0, line_bytes_ = 0;
    std::thread thread_;
};

StreamedIncident sample(uint32_t n) {
    StreamedIncident s;
    s.incident.ts_ns = 5'000'000'000'000ULL + n;
    s.incident.cause = Cause::idle_close_race;
    s.incident.observer = Observer::client;
    s.incident.client = {"10.244.1.5", static_cast<uint16_t>(40000 + n % 20000)};
    s.incident.server = {"10.244.2.7", 8080};
    s.incident.pid = 4242;
    s.incident.comm = "nginx";
    s.incident.idle_before_write_ms = 2000.5;
    s.incident.write_to_reset_ms = 6.3;
    s.incident.state = "CLOSE_WAIT";
    s.incident.requests = n;
    s.incident.netns = 4026531840u;
    s.client = {"ingress-nginx", "ingress-nginx-controller-5d88c8b7f-x7k2p", "ingress-nginx-controller"};
    s.server = {"shop", "web-7d4b9c6f5d-q8r2m", "web"};
    return s;
}

// Registry content of a busy node: `pairs` pod pairs with incidents, resets and histograms.
void fill(Metrics& metrics, int pairs) {
    for (int i = 0; i < pairs; ++i) {
        PairKey pair{{"shop", "web-" + std::to_string(i), "web"}, {"shop", "api-" + std::to_string(i % 7), "api"},
                     8080};
        metrics.count_incident(pair, Cause::idle_close_race, Observer::client, 3.5);
        metrics.count_incident(pair, Cause::write_after_fin, Observer::server, std::nullopt);
        metrics.count_reset(pair, true);
        metrics.count_reset(pair, false);
        metrics.observe_reuse_idle(pair, 2.0);
        metrics.observe_server_idle_close(pair, 60.0);
    }
}

HttpServerOptions options_for(Metrics& metrics, size_t max_followers) {
    HttpServerOptions o;
    o.listen = "127.0.0.1:0";
    o.max_followers = max_followers;
    o.collect = [&metrics] { return metrics.collect(); };
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    int scrapes = 300, scrape_followers = 32, stream_followers = 8, pairs = 10;
    double stream_seconds = 5;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        const double value = std::atof(argv[i + 1]);
        if (flag == "--scrapes") scrapes = static_cast<int>(value);
        else if (flag == "--scrape-followers") scrape_followers = static_cast<int>(value);
        else if (flag == "--stream-followers") stream_followers = static_cast<int>(value);
        else if (flag == "--stream-seconds") stream_seconds = value;
        else if (flag == "--pairs") pairs = static_cast<int>(value);
        else {
            std::fprintf(stderr, "httpserver_bench: unknown flag %s\n", argv[i]);
            return 2;
        }
    }
    json out;
    std::vector<std::string> errors;
    MetricsOptions mo;
    mo.version = "bench";
    mo.write_hook = "tp_btf";
    Metrics metrics(mo);
    fill(metrics, pairs);

    // -- scrapes with 0 and with N followers (receiving a steady 1000 incidents/s)
    {
        HttpServer server(options_for(metrics, static_cast<size_t>(scrape_followers)));
        std::string error;
        if (!server.start(&error)) {
            std::fprintf(stderr, "httpserver_bench: %s\n", error.c_str());
            return 1;
        }
        auto scrape_round = [&](const char* name) {
            std::vector<double> ms;
            size_t bytes = 0;
            for (int i = 0; i < scrapes; ++i) {
                std::string why;
                const double t = timed_get(server.port(), "/metrics", &bytes, &why);
                if (t < 0) {
                    errors.push_back(std::string(name) + ": " + why);
                    break;
                }
                ms.push_back(t);
            }
            out[name] = distribution(ms);
            out[name]["body_bytes"] = bytes;
        };
        for (int i = 0; i < 20; ++i) {  // warm-up
            size_t bytes;
            std::string why;
            timed_get(server.port(), "/metrics", &bytes, &why);
        }
        scrape_round("scrape_0");

        std::vector<std::unique_ptr<Reader>> readers;
        for (int i = 0; i < scrape_followers; ++i) readers.push_back(std::make_unique<Reader>(server.port(), true));
        const auto deadline = Clock::now() + std::chrono::seconds(30);
        while (server.follower_count() < static_cast<size_t>(scrape_followers) && Clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        if (server.follower_count() != static_cast<size_t>(scrape_followers))
            errors.push_back("only " + std::to_string(server.follower_count()) + " followers attached");
        std::atomic<bool> publishing{true};
        std::thread publisher([&] {
            uint32_t n = 0;
            auto next = Clock::now();
            while (publishing) {
                server.publish(sample(n++), 0);
                next += std::chrono::milliseconds(1);
                std::this_thread::sleep_until(next);
            }
        });
        scrape_round("scrape_followers");
        out["scrape_followers"]["followers"] = scrape_followers;
        publishing = false;
        publisher.join();
        uint64_t got = 0;
        for (auto& r : readers) {
            got += r->incidents();
            if (r->ended()) errors.push_back("a follower's stream ended during the scrapes");
        }
        out["scrape_followers"]["incidents_delivered"] = got;
        server.stop();
    }

    // -- delivery to N followers under a publisher that never waits
    {
        HttpServer server(options_for(metrics, static_cast<size_t>(stream_followers)));
        std::string error;
        if (!server.start(&error)) {
            std::fprintf(stderr, "httpserver_bench: %s\n", error.c_str());
            return 1;
        }
        std::vector<std::unique_ptr<Reader>> readers;
        for (int i = 0; i < stream_followers; ++i) readers.push_back(std::make_unique<Reader>(server.port(), true));
        const auto deadline = Clock::now() + std::chrono::seconds(30);
        while (server.follower_count() < static_cast<size_t>(stream_followers) && Clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        std::vector<double> publish_us;
        publish_us.reserve(4'000'000);
        uint32_t published = 0;
        const auto start = Clock::now();
        const auto end = start + std::chrono::duration<double>(stream_seconds);
        while (Clock::now() < end) {
            const auto t = Clock::now();
            server.publish(sample(published++), 0);
            if ((published & 15) == 0)
                publish_us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t).count());
        }
        const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
        // Let what was queued arrive, then count.
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        std::vector<double> delivered, dropped;
        for (auto& r : readers) {
            delivered.push_back(static_cast<double>(r->incidents()) / seconds);
            dropped.push_back(static_cast<double>(r->dropped()) / seconds);
            if (r->ended()) errors.push_back("a follower's stream ended during the burst");
        }
        out["stream"] = {{"followers", stream_followers},
                         {"seconds", seconds},
                         {"published_per_s", published / seconds},
                         {"delivered_per_s", distribution(delivered)},
                         {"dropped_per_s", distribution(dropped)},
                         {"publish_us", distribution(publish_us)}};
        server.stop();
    }

    // -- stop() with a follower stuck in a write
    {
        auto options = options_for(metrics, 8);
        options.write_timeout = std::chrono::minutes(30);
        HttpServer server(options);
        std::string error;
        if (!server.start(&error)) {
            std::fprintf(stderr, "httpserver_bench: %s\n", error.c_str());
            return 1;
        }
        Reader stuck(server.port(), false);
        Reader reading(server.port(), true);
        const auto deadline = Clock::now() + std::chrono::seconds(30);
        while (server.follower_count() < 2 && Clock::now() < deadline)
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        for (uint32_t i = 0; i < 20000; ++i) server.publish(sample(i), 0);  // ~10 MB
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        const auto t = Clock::now();
        server.stop();
        out["stop_ms"] = ms_since(t);
        out["stop_followers_left"] = server.follower_count();
    }

    out["errors"] = errors;
    std::printf("%s\n", out.dump().c_str());
    return errors.empty() ? 0 : 1;
}
