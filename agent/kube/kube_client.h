// Kubernetes API client: lists and watches all pods and services and keeps a
// ClusterState current. One thread per resource; libcurl over HTTPS (or plain HTTP).
//
// Per resource: LIST /api/v1/<resource>?limit=N (following metadata.continue) ->
// ClusterState::replace_*; then WATCH from the list's resourceVersion, applying
// ADDED/MODIFIED/DELETED, remembering the newest resourceVersion (BOOKMARK only moves it).
// A watch that ends normally is re-opened from the last resourceVersion; 410 Gone (an
// ERROR event with a Status of code 410, or an HTTP 410) relists; anything else (dropped
// connection, timeout, 401/403/5xx, garbage) logs one line and reconnects with exponential
// backoff. Malformed event lines are counted and skipped.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include <nlohmann/json.hpp>

#include "attribution.h"

namespace rstwatch {

struct KubeConfig {
    std::string api_url;     // "https://10.96.0.1:443", "http://127.0.0.1:8001"; no trailing path
    std::string token_file;  // "" = no Authorization header (e.g. kubectl proxy)
    std::string ca_file;     // "" = the system CA store
    bool insecure_skip_verify = false;

    static constexpr const char* kServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount";

    // From KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT and the service account's
    // token and ca.crt (an IPv6 host is bracketed). Validated. nullopt + a one-line error.
    static std::optional<KubeConfig> in_cluster(std::string* error,
                                                const std::string& service_account_dir = kServiceAccountDir);
    // From the flags --kube-api, --kube-token-file, --kube-ca-file. Without --kube-api: the
    // in-cluster config, with the token/CA files replaced by the flags that are given. With
    // --kube-api: exactly the flags (empty = none). Validated.
    static std::optional<KubeConfig> from_flags(const std::string& api_url, const std::string& token_file,
                                                const std::string& ca_file, std::string* error,
                                                const std::string& service_account_dir = kServiceAccountDir);
    // One-line error on failure: the URL is http(s)://host[:port] (no path, query, userinfo),
    // the token file (if any) is readable and not empty, the CA file (if any) is readable
    // and holds a PEM certificate.
    bool validate(std::string* error) const;
};

// The token in a token file, surrounding whitespace removed. nullopt + error when it cannot
// be read or is empty.
std::optional<std::string> read_token_file(const std::string& path, std::string* error);

// ---- wire format (pure, fuzzable) ---------------------------------------------
enum class WatchEventType { added, modified, deleted, bookmark, error };
std::string_view watch_event_type_name(WatchEventType type);  // "ADDED", ...

struct WatchEvent {
    WatchEventType type = WatchEventType::added;
    nlohmann::json object;         // the event's object (a Pod, a Service, a Status, ...)
    std::string resource_version;  // object.metadata.resourceVersion ("" when absent)
    // ERROR events: the Status object's fields (code 0 when absent).
    int status_code = 0;
    std::string status_reason;
    std::string status_message;
    // True for an ERROR whose Status says the resource version is gone (410 / Expired / Gone).
    bool gone() const;
};

// Parses one line of a watch stream: {"type": "...", "object": {...}}. A trailing "\r" and
// surrounding whitespace are ignored. nullopt + a one-line error for anything else: not JSON,
// not an object, unknown type, object missing or not an object, BOOKMARK without a
// resourceVersion, non-string resourceVersion. Never throws.
std::optional<WatchEvent> parse_watch_event(std::string_view line, std::string* error);

// One page of a LIST response (PodList/ServiceList).
struct ListPage {
    nlohmann::json items;  // an array
    std::string resource_version;
    std::string continue_token;  // "" on the last page
};
// nullopt + a one-line error when the body is not a list object with an items array and a
// string metadata.resourceVersion. Never throws.
std::optional<ListPage> parse_list_page(std::string_view body, std::string* error);

// "STATUS_MESSAGE (REASON)" from a Kubernetes Status body, or the body's first 200 bytes
// (one line) when it is not a Status. For log lines.
std::string describe_error_body(std::string_view body);

// Percent-encoding of a query parameter value (unreserved characters kept).
std::string url_encode(std::string_view text);

// ---- watcher -----------------------------------------------------------------------
enum class KubeResource { pods, services };
std::string_view kube_resource_name(KubeResource resource);  // "pods", "services"

struct KubeResourceStats {
    bool synced = false;          // the initial list is done
    uint64_t lists = 0;           // successful lists
    uint64_t relists = 0;         // successful lists after the first one
    uint64_t watches = 0;         // watch requests made
    uint64_t watch_restarts = 0;  // watches re-opened from a remembered resourceVersion
    uint64_t events = 0;          // ADDED/MODIFIED/DELETED applied
    uint64_t bookmarks = 0;
    uint64_t gone = 0;            // 410s that forced a relist
    uint64_t malformed = 0;       // event lines or objects skipped as unparsable
    uint64_t errors = 0;          // failed requests (transport, HTTP status, ERROR events, bad bodies)
    std::string resource_version; // the last one seen
    std::string last_error;       // "" when none yet
};

struct KubeWatcherStats {
    KubeResourceStats pods;
    KubeResourceStats services;
    uint64_t relists() const { return pods.relists + services.relists; }
    uint64_t watch_restarts() const { return pods.watch_restarts + services.watch_restarts; }
    uint64_t errors() const { return pods.errors + services.errors; }
    uint64_t malformed() const { return pods.malformed + services.malformed; }
    std::string last_error;  // the most recent of both, "" when none
};

struct KubeWatcherOptions {
    std::chrono::milliseconds initial_backoff{500};
    std::chrono::milliseconds max_backoff{30'000};
    double jitter = 0.2;              // each delay is scaled by a random factor in [1-j, 1+j]
    int page_limit = 500;             // LIST ?limit=
    int watch_timeout_seconds = 300;  // WATCH ?timeoutSeconds= (the server ends the watch)
    std::chrono::seconds connect_timeout{10};
    // No bytes for this long aborts a request (a watch allows timeoutSeconds more).
    std::chrono::seconds idle_timeout{60};
    size_t max_line_bytes = 64u << 20;   // a longer watch line aborts the watch
    size_t max_list_bytes = 1024u << 20; // a larger list page aborts the list
};

class KubeWatcher {
public:
    KubeWatcher(KubeConfig config, std::shared_ptr<ClusterState> state, KubeWatcherOptions options = {});
    ~KubeWatcher();  // stop()
    KubeWatcher(const KubeWatcher&) = delete;
    KubeWatcher& operator=(const KubeWatcher&) = delete;

    // Starts the pod and service threads; returns at once. Calling it while running does nothing.
    void start();
    // Interrupts requests and backoff sleeps and joins the threads (promptly: well under a second).
    void stop();
    // Both initial lists are done (stays true across later relists and errors).
    bool synced() const;
    KubeWatcherStats stats() const;

private:
    struct Worker;
    void run(Worker& worker);

    KubeConfig config_;
    std::shared_ptr<ClusterState> state_;
    KubeWatcherOptions options_;
    std::unique_ptr<Worker> pods_;
    std::unique_ptr<Worker> services_;
    std::atomic<bool> stopping_{false};
    std::mutex mutex_;  // guards the sleeps and start/stop
    std::condition_variable wake_;
    bool running_ = false;
};

}  // namespace rstwatch
