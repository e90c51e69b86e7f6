// One HTTP(S) request to the Kubernetes API over libcurl: a LIST (the body kept whole, up to a
// limit), a WATCH (the body fed line by line to a callback), or a write (POST/PATCH of a JSON
// body, kube_writer.h).
// Internal to rstwatch_kube (kube_client.cpp); not included by kube_client.h.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include <curl/curl.h>

#include "kube_config.h"

namespace rstwatch {

struct KubeRequest {
    std::string url;
    std::string token;  // "" = no Authorization header
    std::string method = "GET";  // GET, POST or PATCH
    std::string body;            // sent with POST/PATCH
    std::string content_type;    // of body ("application/json", "application/merge-patch+json")
    std::chrono::milliseconds total_timeout{0};  // the whole request, 0 = none (watches run long)
    bool stream = false;  // a watch: the body is fed line by line to on_line
    std::function<bool(std::string_view)> on_line;  // false aborts the transfer
    long idle_seconds = 60;  // no bytes for this long aborts the request
    std::chrono::seconds connect_timeout{10};
    size_t max_line_bytes = 0;  // a streamed line longer than this aborts
    size_t max_body_bytes = 0;  // a 200 body larger than this aborts (not streamed)
};

struct KubeResponse {
    CURLcode curl = CURLE_OK;
    long http_code = 0;
    std::string body;      // a non-streamed body (capped for non-200 answers)
    bool stopped = false;  // aborted because the watcher is stopping
    bool handler_aborted = false;
    std::string abort_reason;  // set when we aborted for a reason of our own (too long, ...)
    std::string curl_error;
    std::optional<long> retry_after_s;  // a 429/503's Retry-After header, in seconds
};

// curl_global_init, once per process.
void kube_http_global_init();

// Runs one request on `multi` (one per thread); interruptible by `stopping` and
// curl_multi_wakeup. A last streamed line without a newline is delivered at a clean end.
KubeResponse perform_kube_request(CURLM* multi, const KubeRequest& request, const KubeConfig& config,
                                  const std::atomic<bool>& stopping);

// One line for logs: our own abort reason, the curl error ("... (curl N)") or
// "HTTP N: " + describe_error_body.
std::string describe_kube_failure(const KubeResponse& response);

}  // namespace rstwatch
