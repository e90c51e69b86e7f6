// What the HTTP server's tests share: a one-shot GET with libcurl, the loopback listen options,
// a watchdog wait, and a stream_client follower on its own thread. Waits are watchdogs that end
// a test which would otherwise hang, never timing assertions.
#pragma once

#include <curl/curl.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "http_server.h"
#include "stream_client.h"

namespace rstwatch::test {

struct Response {
    long status = 0;
    std::string content_type;
    std::string body;
    std::string error;  // libcurl's, when the request failed
};

inline size_t append_to_string(char* data, size_t size, size_t nmemb, void* out) {
    static_cast<std::string*>(out)->append(data, size * nmemb);
    return size * nmemb;
}

// One request (GET, or `method`) that ends: not for the /incidents stream without a query
// the server answers with an error.
inline Response http_get(const std::string& url, const char* method = nullptr) {
    Response r;
    CURL* easy = curl_easy_init();
    curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
    if (method != nullptr) curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, append_to_string);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    if (CURLcode code = curl_easy_perform(easy); code != CURLE_OK) r.error = curl_easy_strerror(code);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &r.status);
    char* type = nullptr;
    curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &type);
    if (type != nullptr) r.content_type = type;
    curl_easy_cleanup(easy);
    return r;
}

inline std::string base_url(const HttpServer& server) { return "http://127.0.0.1:" + std::to_string(server.port()); }

inline HttpServerOptions loopback_options() {
    HttpServerOptions o;
    o.listen = "127.0.0.1:0";
    return o;
}

// Watchdog: true as soon as pred() holds, false after `timeout`.
template <typename Pred>
bool wait_until(Pred pred, std::chrono::milliseconds timeout = std::chrono::milliseconds(60000)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
}

// A stream_client follower on its own thread, keeping what it got.
class Follower {
public:
    explicit Follower(StreamClientOptions options) : options_(std::move(options)) {
        thread_ = std::thread([this] {
            auto result = follow_incidents(
                options_, stop_,
                [this](const StreamedIncident& s) {
                    std::lock_guard lock(mutex_);
                    incidents_.push_back(s);
                },
                [this](uint64_t n) {
                    std::lock_guard lock(mutex_);
                    dropped_ += n;
                });
            std::lock_guard lock(mutex_);
            result_ = result;
            finished_ = true;
        });
    }
    explicit Follower(std::string url, std::chrono::seconds idle_timeout = std::chrono::seconds(60))
        : Follower(options_for(std::move(url), idle_timeout)) {}
    Follower(const Follower&) = delete;
    Follower& operator=(const Follower&) = delete;
    ~Follower() { stop(); }

    StreamResult stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
        return result_;
    }
    bool finished() {
        std::lock_guard lock(mutex_);
        return finished_;
    }
    StreamResult result() {
        std::lock_guard lock(mutex_);
        return result_;
    }
    std::vector<StreamedIncident> incidents() {
        std::lock_guard lock(mutex_);
        return incidents_;
    }
    // The `requests` field of each incident received: the tests' sequence numbers.
    std::vector<uint32_t> sequence() {
        std::lock_guard lock(mutex_);
        std::vector<uint32_t> numbers;
        for (const StreamedIncident& s : incidents_) numbers.push_back(s.incident.requests);
        return numbers;
    }
    size_t count() {
        std::lock_guard lock(mutex_);
        return incidents_.size();
    }
    std::string last_comm() {
        std::lock_guard lock(mutex_);
        return incidents_.empty() ? "" : incidents_.back().incident.comm;
    }
    uint64_t dropped() {
        std::lock_guard lock(mutex_);
        return dropped_;
    }

private:
    static StreamClientOptions options_for(std::string url, std::chrono::seconds idle_timeout) {
        StreamClientOptions o;
        o.url = std::move(url);
        o.idle_timeout = idle_timeout;
        return o;
    }

    StreamClientOptions options_;
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::vector<StreamedIncident> incidents_;
    uint64_t dropped_ = 0;
    StreamResult result_;
    bool finished_ = false;
    std::thread thread_;
};

}  // namespace rstwatch::test
