// Writes to the Kubernetes API: create (POST) and merge-patch (PATCH) of one namespaced object,
// with the answer classified for the caller's retry policy. Used for Events (agent/events);
// one request at a time, from the caller's thread, interruptible by stop().
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kube_config.h"

namespace rstwatch {

// What the caller does next depends only on this.
enum class KubeWriteResult {
    ok,           // 200/201
    conflict,     // 409: the name is taken (create)
    not_found,    // 404: the object is gone (patch; e.g. an Event past the API server's --event-ttl)
    forbidden,    // 401/403: RBAC or credentials; retried after a backoff
    throttled,    // 429 (Retry-After honoured)
    invalid,      // 400/415/422: the API rejects this body; retrying it cannot help
    unavailable,  // 5xx, transport errors, timeouts
    stopped,      // stop() was called
};
std::string_view kube_write_result_name(KubeWriteResult result);  // "ok", "conflict", ...

struct KubeWriteAnswer {
    KubeWriteResult result = KubeWriteResult::ok;
    long http_code = 0;                 // 0 without an HTTP answer
    std::optional<long> retry_after_s;  // 429/503
    std::string error;                  // one line for logs when not ok
};

class KubeWriter {
public:
    explicit KubeWriter(KubeConfig config, std::chrono::milliseconds timeout = std::chrono::seconds(10));
    ~KubeWriter();
    KubeWriter(const KubeWriter&) = delete;
    KubeWriter& operator=(const KubeWriter&) = delete;

    // POST {api_url}/{collection_path} (e.g. "apis/events.k8s.io/v1/namespaces/shop/events").
    KubeWriteAnswer create(const std::string& collection_path, const std::string& json_body);
    // PATCH {api_url}/{object_path} with application/merge-patch+json.
    KubeWriteAnswer merge_patch(const std::string& object_path, const std::string& json_patch);
    // Interrupts the request in flight (from any thread); later requests answer `stopped`.
    void stop();

private:
    KubeWriteAnswer perform(const std::string& method, const std::string& path, const std::string& body,
                            const char* content_type);

    struct Multi;
    KubeConfig config_;
    std::chrono::milliseconds timeout_;
    std::unique_ptr<Multi> multi_;
    std::atomic<bool> stopping_{false};
};

}  // namespace rstwatch
