// Kubernetes API client: lists and watches all pods and services and keeps a
// ClusterState current. One thread per resource; libcurl over HTTPS (or plain HTTP).
//
// Per resource: LIST /api/v1/<resource>?limit=N (following metadata.continue) ->
// ClusterState::replace_*; then WATCH from the list's resourceVersion, applying
// ADDED/MODIFIED/DELETED, remembering the newest resourceVersion (BOOKMARK only moves it).
// A watch that ends normally is re-opened from the last resourceVersion (watches that keep
// ending at once without events back off first); 410 Gone (an ERROR event whose Status says
// 410 / Expired / Gone, or an HTTP 410) relists, after a backoff unless the watch had made
// progress; anything else (dropped connection, timeout, 401/403/5xx, garbage) logs one line
// and reconnects with exponential backoff. Malformed event lines are counted and skipped.
//
// The pieces: kube_config.h (where the API is, credentials), kube_wire.h (the JSON wire
// format), kube_objects.h (pods and services), kube_http.h (one libcurl request; internal).
// This header includes the first two, so `#include "kube_client.h"` gives all of the API.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>

#include "attribution.h"
#include "kube_config.h"
#include "kube_wire.h"

namespace rstwatch {

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
    struct Worker;       // one resource: its thread, curl multi handle and stats
    struct RunState;     // one run() of a worker: where it is (resourceVersion, relist) and its backoff
    enum class Outcome;  // of one list or watch request: ok, ended, gone, error, stopped

    // The worker's thread: list, then watch and re-watch, relisting on 410, until stop().
    void run(Worker& worker);
    // One list (if needed) / one watch and what follows it. False when stopping.
    bool list_step(RunState& rs);
    bool watch_step(RunState& rs);
    // LIST, all pages, into the cluster state; *message on failure.
    Outcome list(RunState& rs, std::string* message);
    Outcome fetch_list_page(RunState& rs, const std::string& continue_token, ListPage* page,
                            std::string* message);
    // WATCH from rs.rv until the server ends it, an ERROR event, a failure or stop();
    // *progress when a valid event arrived.
    Outcome watch(RunState& rs, std::string* message, bool* progress);
    // One line of the watch stream; false (with *outcome and *message) ends the watch.
    bool on_watch_line(RunState& rs, std::string_view line, std::string* message, bool* progress,
                       Outcome* outcome);
    void apply_event(RunState& rs, const WatchEvent& event);  // ADDED/MODIFIED/DELETED
    bool on_watch_ended(RunState& rs, bool progress, std::chrono::steady_clock::time_point started);
    bool on_watch_gone(RunState& rs, const std::string& message, bool progress);
    // Logs why, sleeps the backoff (jittered), doubles it. False when stopping.
    bool sleep_backoff(RunState& rs, const std::string& why);

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
