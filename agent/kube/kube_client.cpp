#include "kube_client.h"
#include "kube_http.h"
#include "kube_objects.h"
#include "text.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <random>
#include <utility>
#include <vector>

namespace rstwatch {

namespace {

using Clock = std::chrono::steady_clock;

KubeRequest make_request(const KubeWatcherOptions& options, std::string url, long idle_seconds) {
    KubeRequest req;
    req.url = std::move(url);
    req.idle_seconds = idle_seconds;
    req.connect_timeout = options.connect_timeout;
    req.max_line_bytes = options.max_line_bytes;
    req.max_body_bytes = options.max_list_bytes;
    return req;
}

// The objects of a LIST's pages; unparsable items are counted, the first one's error kept.
struct ListedObjects {
    std::vector<PodInfo> pods;
    std::vector<ServiceInfo> services;
    size_t skipped = 0;
    std::string first_skip;

    void add(const nlohmann::json& items, bool is_pods) {
        for (const auto& item : items) {
            std::string error;
            if (is_pods) {
                if (auto p = pod_from_json(item, &error)) {
                    pods.push_back(std::move(*p));
                    continue;
                }
            } else {
                if (auto s = service_from_json(item, &error)) {
                    services.push_back(std::move(*s));
                    continue;
                }
            }
            if (skipped++ == 0) first_skip = error;
        }
    }
};

bool apply_pod_event(ClusterState& state, const WatchEvent& ev, std::string* error) {
    auto pod = pod_from_json(ev.object, error);
    if (!pod) return false;
    if (ev.type == WatchEventType::deleted)
        state.delete_pod(*pod);
    else
        state.upsert_pod(std::move(*pod));
    return true;
}

bool apply_service_event(ClusterState& state, const WatchEvent& ev, std::string* error) {
    auto svc = service_from_json(ev.object, error);
    if (!svc) return false;
    if (ev.type == WatchEventType::deleted)
        state.delete_service(*svc);
    else
        state.upsert_service(std::move(*svc));
    return true;
}

// An ERROR event's log line; true when it means the resourceVersion is gone (relist).
bool describe_error_event(std::string_view resource, const std::string& rv, const WatchEvent& ev,
                          std::string* message) {
    std::string status = ev.status_message.empty() ? std::string("no message") : one_line(ev.status_message, 300);
    if (!ev.status_reason.empty()) status += " (" + ev.status_reason + ")";
    if (ev.gone()) {
        *message = "watch " + std::string(resource) + " from resourceVersion " + rv + ": " + status;
        return true;
    }
    *message = "watch " + std::string(resource) + ": ERROR event, code " + std::to_string(ev.status_code) + ": " +
               status;
    return false;
}

}  // namespace

std::string_view kube_resource_name(KubeResource resource) {
    return resource == KubeResource::pods ? "pods" : "services";
}

// ---- workers ---------------------------------------------------------------------------

enum class KubeWatcher::Outcome { ok, ended, gone, error, stopped };

struct KubeWatcher::Worker {
    KubeResource resource;
    CURLM* multi = nullptr;
    std::thread thread;
    std::mt19937_64 rng{std::random_device{}()};
    mutable std::mutex stats_mutex;
    KubeResourceStats stats;
    Clock::time_point last_error_at{};

    explicit Worker(KubeResource r) : resource(r) { multi = curl_multi_init(); }
    ~Worker() {
        if (multi) curl_multi_cleanup(multi);
    }
    std::string_view name() const { return kube_resource_name(resource); }

    template <typename F>
    void update(F&& f) {
        std::lock_guard lock(stats_mutex);
        f(stats);
    }
    void record_error(const std::string& message, bool count = true) {
        std::lock_guard lock(stats_mutex);
        if (count) ++stats.errors;
        stats.last_error = message;
        last_error_at = Clock::now();
    }
    // Counted always; logged for the first ten and then every thousandth, not to flood the log.
    void note_malformed(const std::string& what) {
        uint64_t n = 0;
        {
            std::lock_guard lock(stats_mutex);
            n = ++stats.malformed;
            stats.last_error = what;
            last_error_at = Clock::now();
        }
        if (n <= 10 || n % 1000 == 0)
            spdlog::warn("kubernetes: {} ({} skipped so far)", what, n);
    }
};

// Lives for one run() (a start() .. stop()), touched only by the worker's thread.
struct KubeWatcher::RunState {
    Worker& w;
    std::string base;  // <api>/api/v1/<resource>
    std::chrono::milliseconds backoff;
    std::string rv;  // where the next watch starts: the list's, then the newest event's
    bool need_list = true;
    bool rewatch = false;  // the next watch re-opens from a remembered resourceVersion
    int quick_ends = 0;    // consecutive watches that ended cleanly at once without events

    RunState(Worker& worker, std::string url, std::chrono::milliseconds initial_backoff)
        : w(worker), base(std::move(url)), backoff(initial_backoff) {}
    bool is_pods() const { return w.resource == KubeResource::pods; }
    std::string name() const { return std::string(w.name()); }
};

KubeWatcher::KubeWatcher(KubeConfig config, std::shared_ptr<ClusterState> state, KubeWatcherOptions options)
    : config_(std::move(config)), state_(std::move(state)), options_(options) {
    while (config_.api_url.size() > 1 && config_.api_url.back() == '/') config_.api_url.pop_back();
    kube_http_global_init();
    pods_ = std::make_unique<Worker>(KubeResource::pods);
    services_ = std::make_unique<Worker>(KubeResource::services);
}

KubeWatcher::~KubeWatcher() { stop(); }

void KubeWatcher::start() {
    std::lock_guard lock(mutex_);
    if (running_) return;
    running_ = true;
    stopping_ = false;
    pods_->thread = std::thread([this] { run(*pods_); });
    services_->thread = std::thread([this] { run(*services_); });
}

void KubeWatcher::stop() {
    {
        std::lock_guard lock(mutex_);
        if (!running_) return;
        stopping_ = true;
    }
    wake_.notify_all();
    for (Worker* w : {pods_.get(), services_.get()}) {
        if (w->multi) curl_multi_wakeup(w->multi);
    }
    for (Worker* w : {pods_.get(), services_.get()}) {
        if (w->thread.joinable()) w->thread.join();
    }
    std::lock_guard lock(mutex_);
    running_ = false;
}

bool KubeWatcher::synced() const {
    std::lock_guard a(pods_->stats_mutex);
    std::lock_guard b(services_->stats_mutex);
    return pods_->stats.synced && services_->stats.synced;
}

KubeWatcherStats KubeWatcher::stats() const {
    KubeWatcherStats out;
    Clock::time_point pods_at, services_at;
    {
        std::lock_guard lock(pods_->stats_mutex);
        out.pods = pods_->stats;
        pods_at = pods_->last_error_at;
    }
    {
        std::lock_guard lock(services_->stats_mutex);
        out.services = services_->stats;
        services_at = services_->last_error_at;
    }
    out.last_error = pods_at >= services_at ? out.pods.last_error : out.services.last_error;
    if (out.last_error.empty()) out.last_error = out.pods.last_error.empty() ? out.services.last_error : out.pods.last_error;
    return out;
}

// ---- the loop --------------------------------------------------------------------------

void KubeWatcher::run(Worker& w) {
    RunState rs(w, config_.api_url + "/api/v1/" + std::string(w.name()), options_.initial_backoff);
    while (!stopping_) {
        if (rs.need_list) {
            if (!list_step(rs)) break;
            if (rs.need_list) continue;  // the list failed (its backoff slept): list again
        }
        if (!watch_step(rs)) break;
    }
}

bool KubeWatcher::list_step(RunState& rs) {
    std::string message;
    Outcome o = list(rs, &message);
    if (o == Outcome::stopped) return false;
    if (o != Outcome::ok) {
        rs.w.record_error(message);
        return sleep_backoff(rs, message);
    }
    rs.need_list = false;
    rs.rewatch = false;
    rs.backoff = options_.initial_backoff;
    return true;
}

bool KubeWatcher::watch_step(RunState& rs) {
    rs.w.update([&](KubeResourceStats& s) {
        ++s.watches;
        if (rs.rewatch) ++s.watch_restarts;
    });
    rs.rewatch = true;
    std::string message;
    bool progress = false;
    auto started = Clock::now();
    Outcome o = watch(rs, &message, &progress);
    if (o == Outcome::stopped) return false;
    if (progress) rs.backoff = options_.initial_backoff;
    if (o != Outcome::ended) rs.quick_ends = 0;
    switch (o) {
        case Outcome::ended:
            return on_watch_ended(rs, progress, started);
        case Outcome::gone:
            return on_watch_gone(rs, message, progress);
        case Outcome::error:
            rs.w.record_error(message);
            return sleep_backoff(rs, message);
        default:
            return true;
    }
}

bool KubeWatcher::on_watch_ended(RunState& rs, bool progress, Clock::time_point started) {
    // Empty watches that end at once, again and again: back off instead of spinning.
    if (!progress && Clock::now() - started < std::chrono::seconds(1)) {
        if (++rs.quick_ends >= 2)
            return sleep_backoff(rs, "watch " + rs.name() + " keeps ending at once without events");
    } else {
        rs.quick_ends = 0;
    }
    spdlog::debug("kubernetes: watch {} ended; re-watching from resourceVersion {}", rs.w.name(), rs.rv);
    return true;
}

bool KubeWatcher::on_watch_gone(RunState& rs, const std::string& message, bool progress) {
    rs.w.update([&](KubeResourceStats& s) { ++s.gone; });
    rs.w.record_error(message, false);
    rs.need_list = true;
    // A watch that moved on before its version expired relists at once; one that expired
    // straight away backs off, or a server that keeps answering 410 would be hammered.
    if (progress) {
        spdlog::info("kubernetes: {}; relisting", message);
        return true;
    }
    return sleep_backoff(rs, message + "; relisting");
}

bool KubeWatcher::sleep_backoff(RunState& rs, const std::string& why) {
    double factor = 1.0;
    if (options_.jitter > 0) {
        std::uniform_real_distribution<double> dist(1.0 - options_.jitter, 1.0 + options_.jitter);
        factor = dist(rs.w.rng);
    }
    auto delay = std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(rs.backoff.count()) * factor));
    spdlog::warn("kubernetes: {}; retrying in {:.1f} s", why, static_cast<double>(delay.count()) / 1000.0);
    rs.backoff = std::min(rs.backoff * 2, options_.max_backoff);
    std::unique_lock lock(mutex_);
    return !wake_.wait_for(lock, delay, [this] { return stopping_.load(); });
}

// ---- list ------------------------------------------------------------------------------

KubeWatcher::Outcome KubeWatcher::list(RunState& rs, std::string* message) {
    // The state is replaced only once every page is in: a failed page leaves it as it was.
    ListedObjects listed;
    std::string cont;
    std::string list_rv;
    for (;;) {
        ListPage page;
        Outcome o = fetch_list_page(rs, cont, &page, message);
        if (o != Outcome::ok) return o;
        listed.add(page.items, rs.is_pods());
        list_rv = std::move(page.resource_version);
        cont = std::move(page.continue_token);
        if (cont.empty()) break;
    }
    size_t count = rs.is_pods() ? listed.pods.size() : listed.services.size();
    if (rs.is_pods())
        state_->replace_pods(std::move(listed.pods));
    else
        state_->replace_services(std::move(listed.services));
    rs.rv = list_rv;
    bool first = false;
    rs.w.update([&](KubeResourceStats& s) {
        ++s.lists;
        if (s.lists > 1) ++s.relists;
        first = !s.synced;
        s.synced = true;
        s.resource_version = rs.rv;
        s.malformed += listed.skipped;
    });
    if (listed.skipped) {
        std::string what = "list " + rs.name() + ": skipped " + std::to_string(listed.skipped) +
                           " unparsable item(s), first: " + listed.first_skip;
        rs.w.record_error(what, false);
        spdlog::warn("kubernetes: {}", what);
    }
    spdlog::info("kubernetes: {} {} {} at resourceVersion {}", first ? "listed" : "relisted", count, rs.w.name(),
                 rs.rv);
    return Outcome::ok;
}

KubeWatcher::Outcome KubeWatcher::fetch_list_page(RunState& rs, const std::string& continue_token, ListPage* page,
                                                  std::string* message) {
    std::string url = rs.base + "?limit=" + std::to_string(options_.page_limit);
    if (!continue_token.empty()) url += "&continue=" + url_encode(continue_token);
    KubeRequest req = make_request(options_, std::move(url), static_cast<long>(options_.idle_timeout.count()));
    std::string terr;
    if (!read_request_token(config_, &req.token, &terr)) {
        *message = "list " + rs.name() + ": " + terr;
        return Outcome::error;
    }
    KubeResponse r = perform_kube_request(rs.w.multi, req, config_, stopping_);
    if (r.stopped) return Outcome::stopped;
    if (r.curl != CURLE_OK || r.http_code != 200 || r.handler_aborted) {
        *message = "list " + rs.name() + ": " + describe_kube_failure(r);
        // A continue token expired between pages: the next list starts from the first page.
        if (r.curl == CURLE_OK && r.http_code == 410) *message += " (list expired, listing again)";
        return Outcome::error;
    }
    std::string perr;
    auto parsed = parse_list_page(r.body, &perr);
    if (!parsed) {
        *message = "list " + rs.name() + ": " + perr;
        return Outcome::error;
    }
    *page = std::move(*parsed);
    return Outcome::ok;
}

// ---- watch -----------------------------------------------------------------------------

KubeWatcher::Outcome KubeWatcher::watch(RunState& rs, std::string* message, bool* progress) {
    KubeRequest req = make_request(options_,
                                   rs.base + "?watch=1&allowWatchBookmarks=true&resourceVersion=" + url_encode(rs.rv) +
                                       "&timeoutSeconds=" + std::to_string(options_.watch_timeout_seconds),
                                   static_cast<long>(options_.idle_timeout.count()) + options_.watch_timeout_seconds);
    req.stream = true;
    std::string terr;
    if (!read_request_token(config_, &req.token, &terr)) {
        *message = "watch " + rs.name() + ": " + terr;
        return Outcome::error;
    }
    Outcome event_outcome = Outcome::ended;
    req.on_line = [&](std::string_view line) { return on_watch_line(rs, line, message, progress, &event_outcome); };
    KubeResponse r = perform_kube_request(rs.w.multi, req, config_, stopping_);
    if (r.stopped) return Outcome::stopped;
    if (event_outcome != Outcome::ended) return event_outcome;
    // rs.rv may have moved during the watch: the message names the version that expired.
    if (r.curl == CURLE_OK && r.http_code == 410) {
        *message = "watch " + rs.name() + " from resourceVersion " + rs.rv + ": " + describe_kube_failure(r);
        return Outcome::gone;
    }
    if (r.curl != CURLE_OK || r.http_code != 200 || r.handler_aborted) {
        std::string what = describe_kube_failure(r);
        if (r.curl == CURLE_OPERATION_TIMEDOUT) what = "no data for too long: " + what;
        *message = "watch " + rs.name() + ": " + what;
        return Outcome::error;
    }
    return Outcome::ended;
}

bool KubeWatcher::on_watch_line(RunState& rs, std::string_view line, std::string* message, bool* progress,
                                Outcome* outcome) {
    line = trim(line);
    if (line.empty()) return true;
    std::string perr;
    auto ev = parse_watch_event(line, &perr);
    if (!ev) {
        rs.w.note_malformed("watch " + rs.name() + ": skipped a malformed event: " + one_line(perr, 200));
        return true;
    }
    if (ev->type == WatchEventType::error) {
        *outcome = describe_error_event(rs.w.name(), rs.rv, *ev, message) ? Outcome::gone : Outcome::error;
        return false;
    }
    *progress = true;
    if (!ev->resource_version.empty()) rs.rv = ev->resource_version;
    if (ev->type == WatchEventType::bookmark) {
        rs.w.update([&](KubeResourceStats& s) {
            ++s.bookmarks;
            s.resource_version = rs.rv;
        });
        return true;
    }
    apply_event(rs, *ev);
    return true;
}

void KubeWatcher::apply_event(RunState& rs, const WatchEvent& ev) {
    std::string error;
    bool applied = rs.is_pods() ? apply_pod_event(*state_, ev, &error) : apply_service_event(*state_, ev, &error);
    if (!applied) {
        rs.w.note_malformed("watch " + rs.name() + ": skipped a " + std::string(watch_event_type_name(ev.type)) +
                             " event: " + one_line(error, 200));
        return;
    }
    rs.w.update([&](KubeResourceStats& s) {
        ++s.events;
        s.resource_version = rs.rv;
    });
}

}  // namespace rstwatch
