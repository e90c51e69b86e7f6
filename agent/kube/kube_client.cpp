#include "kube_client.h"
#include "kube_objects.h"
#include "text.h"

#include <curl/curl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <utility>
#include <vector>

namespace rstwatch {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

constexpr size_t kMaxErrorBody = 64 * 1024;

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

// The string at obj[key] if obj is an object and it is a string.
const std::string* string_at(const json& obj, const char* key) {
    if (!obj.is_object()) return nullptr;
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_string()) return nullptr;
    return it->get_ptr<const std::string*>();
}

}  // namespace

// ---- config --------------------------------------------------------------------

std::optional<std::string> read_token_file(const std::string& path, std::string* error) {
    std::string why;
    auto data = read_small_file(path, 1 << 20, &why);
    if (!data) {
        *error = "cannot read token file " + path + ": " + why;
        return std::nullopt;
    }
    std::string token(trim(*data));
    if (token.empty()) {
        *error = "token file " + path + " is empty";
        return std::nullopt;
    }
    if (token.find_first_of("\r\n") != std::string::npos) {
        *error = "token file " + path + " holds more than one line";
        return std::nullopt;
    }
    return token;
}

bool KubeConfig::validate(std::string* error) const {
    std::string_view url = api_url;
    std::string_view rest;
    if (url.empty()) {
        *error = "no Kubernetes API URL (use --kube-api or run in a pod)";
        return false;
    }
    if (url.starts_with("https://")) {
        rest = url.substr(8);
    } else if (url.starts_with("http://")) {
        rest = url.substr(7);
    } else {
        *error = "Kubernetes API URL " + api_url + ": must start with https:// or http://";
        return false;
    }
    if (rest.find_first_of("?#") != std::string_view::npos) {
        *error = "Kubernetes API URL " + api_url + ": must not have a query or fragment";
        return false;
    }
    std::string_view authority = rest.substr(0, rest.find('/'));
    if (authority.find('@') != std::string_view::npos) {
        *error = "Kubernetes API URL " + api_url + ": must not hold credentials (use --kube-token-file)";
        return false;
    }
    std::string_view host = authority;
    std::string_view port;
    if (host.starts_with("[")) {
        auto close = host.find(']');
        if (close == std::string_view::npos || close == 1) {
            *error = "Kubernetes API URL " + api_url + ": bad IPv6 host";
            return false;
        }
        std::string_view after = host.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':') {
                *error = "Kubernetes API URL " + api_url + ": bad host";
                return false;
            }
            port = after.substr(1);
            if (port.empty()) port = "x";  // "[::1]:" is an error below
        }
        host = host.substr(0, close + 1);
    } else {
        auto colon = host.find(':');
        if (colon != std::string_view::npos) {
            port = host.substr(colon + 1);
            if (port.empty()) port = "x";
            host = host.substr(0, colon);
        }
    }
    if (host.empty() || host.find_first_of(" \t\r\n") != std::string_view::npos) {
        *error = "Kubernetes API URL " + api_url + ": no host";
        return false;
    }
    if (!port.empty()) {
        bool digits = port.size() <= 5 && std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; });
        long p = digits ? std::strtol(std::string(port).c_str(), nullptr, 10) : 0;
        if (!digits || p < 1 || p > 65535) {
            *error = "Kubernetes API URL " + api_url + ": bad port";
            return false;
        }
    }
    if (!token_file.empty()) {
        std::string why;
        if (!read_token_file(token_file, &why)) {
            *error = why;
            return false;
        }
    }
    if (!ca_file.empty()) {
        std::string why;
        auto pem = read_small_file(ca_file, 16 << 20, &why);
        if (!pem) {
            *error = "cannot read CA file " + ca_file + ": " + why;
            return false;
        }
        if (pem->find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
            *error = "CA file " + ca_file + " holds no PEM certificate";
            return false;
        }
    }
    return true;
}

std::optional<KubeConfig> KubeConfig::in_cluster(std::string* error, const std::string& service_account_dir) {
    std::string host = env("KUBERNETES_SERVICE_HOST");
    std::string port = env("KUBERNETES_SERVICE_PORT");
    if (host.empty() || port.empty()) {
        *error = "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (use --kube-api)";
        return std::nullopt;
    }
    if (host.find(':') != std::string::npos && !host.starts_with("[")) host = "[" + host + "]";
    KubeConfig config;
    config.api_url = "https://" + host + ":" + port;
    config.token_file = service_account_dir + "/token";
    config.ca_file = service_account_dir + "/ca.crt";
    if (!config.validate(error)) return std::nullopt;
    return config;
}

std::optional<KubeConfig> KubeConfig::from_flags(const std::string& api_url, const std::string& token_file,
                                                 const std::string& ca_file, std::string* error,
                                                 const std::string& service_account_dir) {
    KubeConfig config;
    if (api_url.empty()) {
        std::string host = env("KUBERNETES_SERVICE_HOST");
        std::string port = env("KUBERNETES_SERVICE_PORT");
        if (host.empty() || port.empty()) {
            *error = "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (use --kube-api)";
            return std::nullopt;
        }
        if (host.find(':') != std::string::npos && !host.starts_with("[")) host = "[" + host + "]";
        config.api_url = "https://" + host + ":" + port;
        config.token_file = token_file.empty() ? service_account_dir + "/token" : token_file;
        config.ca_file = ca_file.empty() ? service_account_dir + "/ca.crt" : ca_file;
    } else {
        config.api_url = api_url;
        config.token_file = token_file;
        config.ca_file = ca_file;
    }
    while (config.api_url.size() > 1 && config.api_url.back() == '/') config.api_url.pop_back();
    if (!config.validate(error)) return std::nullopt;
    return config;
}

// ---- wire format -----------------------------------------------------------------

std::string_view watch_event_type_name(WatchEventType type) {
    switch (type) {
        case WatchEventType::added: return "ADDED";
        case WatchEventType::modified: return "MODIFIED";
        case WatchEventType::deleted: return "DELETED";
        case WatchEventType::bookmark: return "BOOKMARK";
        case WatchEventType::error: return "ERROR";
    }
    return "?";
}

bool WatchEvent::gone() const {
    return type == WatchEventType::error &&
           (status_code == 410 || status_reason == "Expired" || status_reason == "Gone");
}

std::optional<WatchEvent> parse_watch_event(std::string_view line, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    line = trim(line);
    if (line.empty()) {
        *error = "empty line";
        return std::nullopt;
    }
    json doc;
    try {
        doc = json::parse(line.begin(), line.end());
    } catch (const std::exception& e) {
        *error = std::string("not JSON: ") + e.what();
        return std::nullopt;
    }
    if (!doc.is_object()) {
        *error = "not a JSON object";
        return std::nullopt;
    }
    const std::string* type = string_at(doc, "type");
    if (!type) {
        *error = "no string \"type\"";
        return std::nullopt;
    }
    WatchEvent ev;
    if (*type == "ADDED") ev.type = WatchEventType::added;
    else if (*type == "MODIFIED") ev.type = WatchEventType::modified;
    else if (*type == "DELETED") ev.type = WatchEventType::deleted;
    else if (*type == "BOOKMARK") ev.type = WatchEventType::bookmark;
    else if (*type == "ERROR") ev.type = WatchEventType::error;
    else {
        *error = "unknown event type \"" + one_line(*type, 40) + "\"";
        return std::nullopt;
    }
    auto obj = doc.find("object");
    if (obj == doc.end() || !obj->is_object()) {
        *error = std::string(watch_event_type_name(ev.type)) + " event without an object";
        return std::nullopt;
    }
    ev.object = std::move(*obj);
    auto meta = ev.object.find("metadata");
    if (meta != ev.object.end() && !meta->is_null()) {
        if (!meta->is_object()) {
            *error = "object.metadata is not an object";
            return std::nullopt;
        }
        auto rv = meta->find("resourceVersion");
        if (rv != meta->end() && !rv->is_null()) {
            if (!rv->is_string()) {
                *error = "object.metadata.resourceVersion is not a string";
                return std::nullopt;
            }
            ev.resource_version = rv->get<std::string>();
        }
    }
    if (ev.type == WatchEventType::bookmark && ev.resource_version.empty()) {
        *error = "BOOKMARK event without a resourceVersion";
        return std::nullopt;
    }
    if (ev.type == WatchEventType::error) {
        auto code = ev.object.find("code");
        if (code != ev.object.end() && code->is_number_integer()) {
            if (code->is_number_unsigned()) {
                auto v = code->get<uint64_t>();
                ev.status_code = v <= 999 ? static_cast<int>(v) : 0;
            } else {
                auto v = code->get<int64_t>();
                ev.status_code = v >= 0 && v <= 999 ? static_cast<int>(v) : 0;
            }
        }
        if (auto* reason = string_at(ev.object, "reason")) ev.status_reason = *reason;
        if (auto* message = string_at(ev.object, "message")) ev.status_message = *message;
    }
    return ev;
}

std::optional<ListPage> parse_list_page(std::string_view body, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    json doc;
    try {
        doc = json::parse(body.begin(), body.end());
    } catch (const std::exception& e) {
        *error = std::string("list response is not JSON: ") + e.what();
        return std::nullopt;
    }
    if (!doc.is_object()) {
        *error = "list response is not a JSON object";
        return std::nullopt;
    }
    auto items = doc.find("items");
    if (items == doc.end() || !(items->is_array() || items->is_null())) {
        *error = "list response has no items array";
        return std::nullopt;
    }
    auto meta = doc.find("metadata");
    if (meta == doc.end() || !meta->is_object()) {
        *error = "list response has no metadata";
        return std::nullopt;
    }
    const std::string* rv = string_at(*meta, "resourceVersion");
    if (!rv || rv->empty()) {
        *error = "list response has no metadata.resourceVersion";
        return std::nullopt;
    }
    ListPage page;
    page.resource_version = *rv;
    if (auto it = meta->find("continue"); it != meta->end() && !it->is_null()) {
        if (!it->is_string()) {
            *error = "list response metadata.continue is not a string";
            return std::nullopt;
        }
        page.continue_token = it->get<std::string>();
    }
    page.items = items->is_null() ? json::array() : std::move(*items);
    return page;
}

std::string describe_error_body(std::string_view body) {
    try {
        json doc = json::parse(body.begin(), body.end());
        if (doc.is_object()) {
            const std::string* kind = string_at(doc, "kind");
            const std::string* message = string_at(doc, "message");
            const std::string* reason = string_at(doc, "reason");
            if (kind && *kind == "Status" && (message || reason)) {
                std::string out = message ? *message : std::string();
                if (reason && !reason->empty()) out += out.empty() ? *reason : " (" + *reason + ")";
                return one_line(out, 300);
            }
        }
    } catch (const std::exception&) {
    }
    body = trim(body);
    return body.empty() ? std::string("empty body") : one_line(body, 200);
}

std::string url_encode(std::string_view text) {
    static const char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(text.size());
    for (unsigned char c : text) {
        if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
            c == '.' || c == '~') {
            out.push_back(static_cast<char>(c));
        } else {
            out.push_back('%');
            out.push_back(hex[c >> 4]);
            out.push_back(hex[c & 15]);
        }
    }
    return out;
}

std::string_view kube_resource_name(KubeResource resource) {
    return resource == KubeResource::pods ? "pods" : "services";
}

// ---- HTTP ------------------------------------------------------------------------------

namespace {

struct Request {
    std::string url;
    std::string token;  // "" = no Authorization header
    bool stream = false;  // a watch: the body is fed line by line to on_line
    std::function<bool(std::string_view)> on_line;  // false aborts the transfer
    long idle_seconds = 60;
};

struct Response {
    CURLcode curl = CURLE_OK;
    long http_code = 0;
    std::string body;      // a non-streamed body (capped for non-200 answers)
    bool stopped = false;  // aborted because the watcher is stopping
    bool handler_aborted = false;
    std::string abort_reason;  // set when we aborted for a reason of our own (too long, ...)
    std::string curl_error;
};

struct TransferContext {
    CURL* easy = nullptr;
    const Request* request = nullptr;
    Response* response = nullptr;
    const std::atomic<bool>* stopping = nullptr;
    size_t max_line = 0;
    size_t max_body = 0;
    bool code_known = false;
    bool streaming = false;
    std::string buffer;
    size_t scanned = 0;  // bytes of buffer known to hold no newline
};

size_t on_write(char* data, size_t size, size_t count, void* user) {
    auto* ctx = static_cast<TransferContext*>(user);
    size_t len = size * count;
    if (ctx->stopping->load(std::memory_order_relaxed)) {
        ctx->response->stopped = true;
        return 0;
    }
    if (!ctx->code_known) {
        ctx->code_known = true;
        long code = 0;
        curl_easy_getinfo(ctx->easy, CURLINFO_RESPONSE_CODE, &code);
        ctx->response->http_code = code;
        ctx->streaming = ctx->request->stream && code == 200;
    }
    if (!ctx->streaming) {
        std::string& body = ctx->response->body;
        if (ctx->response->http_code != 200) {
            if (body.size() < kMaxErrorBody) body.append(data, std::min(len, kMaxErrorBody - body.size()));
            return len;
        }
        if (body.size() + len > ctx->max_body) {
            ctx->response->handler_aborted = true;
            ctx->response->abort_reason = "response larger than " + std::to_string(ctx->max_body) + " bytes";
            return 0;
        }
        body.append(data, len);
        return len;
    }
    std::string& buf = ctx->buffer;
    buf.append(data, len);
    size_t start = 0;
    size_t search = ctx->scanned;
    for (;;) {
        size_t nl = buf.find('\n', search);
        if (nl == std::string::npos) break;
        bool go_on = ctx->request->on_line(std::string_view(buf).substr(start, nl - start));
        start = nl + 1;
        search = start;
        if (!go_on) {
            ctx->response->handler_aborted = true;
            return 0;
        }
    }
    buf.erase(0, start);
    ctx->scanned = buf.size();
    if (buf.size() > ctx->max_line) {
        ctx->response->handler_aborted = true;
        ctx->response->abort_reason = "watch event line longer than " + std::to_string(ctx->max_line) + " bytes";
        return 0;
    }
    return len;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* ctx = static_cast<TransferContext*>(user);
    if (ctx->stopping->load(std::memory_order_relaxed)) {
        ctx->response->stopped = true;
        return 1;
    }
    return 0;
}

std::once_flag curl_init_once;

}  // namespace

// ---- watcher ---------------------------------------------------------------------------

struct KubeWatcher::Worker {
    KubeResource resource;
    CURLM* multi = nullptr;
    std::thread thread;
    std::mt19937_64 rng{std::random_device{}()};
    mutable std::mutex stats_mutex;
    KubeResourceStats stats;
    Clock::time_point last_error_at{};
    uint64_t malformed_logged = 0;

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
};

namespace {

// Runs one request on the worker's multi handle; interruptible by `stopping` and curl_multi_wakeup.
Response perform(CURLM* multi, const Request& request, const KubeConfig& config, const KubeWatcherOptions& options,
                 const std::atomic<bool>& stopping) {
    Response response;
    CURL* easy = curl_easy_init();
    if (!easy) {
        response.curl = CURLE_OUT_OF_MEMORY;
        response.curl_error = "curl_easy_init failed";
        return response;
    }
    TransferContext ctx;
    ctx.easy = easy;
    ctx.request = &request;
    ctx.response = &response;
    ctx.stopping = &stopping;
    ctx.max_line = options.max_line_bytes;
    ctx.max_body = options.max_list_bytes;
    char errbuf[CURL_ERROR_SIZE] = {0};

    curl_slist* headers = nullptr;
    headers = curl_slist_append(headers, "Accept: application/json");
    std::string auth;
    if (!request.token.empty()) {
        auth = "Authorization: Bearer " + request.token;
        headers = curl_slist_append(headers, auth.c_str());
    }
    curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(easy, CURLOPT_USERAGENT, "rstwatch");
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500  // 7.85
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS, static_cast<long>(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(options.connect_timeout.count() * 1000));
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, request.idle_seconds);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, 15L);
    if (!request.stream) curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");  // gzip lists when offered
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &ctx);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, &ctx);
    if (!config.ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, config.ca_file.c_str());
    if (config.insecure_skip_verify) {
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }

    curl_multi_add_handle(multi, easy);
    bool done = false;
    while (!done) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK) {
            response.curl = CURLE_FAILED_INIT;
            response.curl_error = curl_multi_strerror(mc);
            break;
        }
        int queued = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
                response.curl = msg->data.result;
                done = true;
            }
        }
        if (done) break;
        if (stopping.load()) {
            response.stopped = true;
            break;
        }
        mc = curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
        if (mc != CURLM_OK) {
            response.curl = CURLE_FAILED_INIT;
            response.curl_error = curl_multi_strerror(mc);
            break;
        }
    }
    long code = 0;
    if (curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code) == CURLE_OK && code != 0) response.http_code = code;
    if (response.curl != CURLE_OK && response.curl_error.empty())
        response.curl_error = errbuf[0] ? std::string(errbuf) : std::string(curl_easy_strerror(response.curl));
    // A last line without a newline at a clean end of the stream.
    if (done && response.curl == CURLE_OK && ctx.streaming && !ctx.buffer.empty() && !response.stopped)
        request.on_line(ctx.buffer);
    if (stopping.load()) response.stopped = true;
    curl_multi_remove_handle(multi, easy);
    curl_easy_cleanup(easy);
    curl_slist_free_all(headers);
    return response;
}

std::string describe_failure(const Response& r) {
    if (!r.abort_reason.empty()) return r.abort_reason;
    if (r.curl != CURLE_OK) {
        std::string msg = r.curl_error;
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
        return one_line(msg, 300) + " (curl " + std::to_string(static_cast<int>(r.curl)) + ")";
    }
    return "HTTP " + std::to_string(r.http_code) + ": " + describe_error_body(r.body);
}

}  // namespace

KubeWatcher::KubeWatcher(KubeConfig config, std::shared_ptr<ClusterState> state, KubeWatcherOptions options)
    : config_(std::move(config)), state_(std::move(state)), options_(options) {
    while (config_.api_url.size() > 1 && config_.api_url.back() == '/') config_.api_url.pop_back();
    std::call_once(curl_init_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
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

void KubeWatcher::run(Worker& w) {
    enum class Outcome { ok, ended, gone, error, stopped };
    const std::string base = config_.api_url + "/api/v1/" + std::string(w.name());
    const bool is_pods = w.resource == KubeResource::pods;
    std::string rv;
    bool need_list = true;
    bool rewatch = false;  // the next watch re-opens from a remembered resourceVersion
    auto backoff = options_.initial_backoff;
    int quick_ends = 0;  // consecutive watches that ended cleanly at once without events

    // Sleeps the current backoff (with jitter) unless stopping; doubles it. Returns false when stopping.
    auto sleep_backoff = [&](const std::string& why) {
        double factor = 1.0;
        if (options_.jitter > 0) {
            std::uniform_real_distribution<double> dist(1.0 - options_.jitter, 1.0 + options_.jitter);
            factor = dist(w.rng);
        }
        auto delay = std::chrono::milliseconds(static_cast<int64_t>(static_cast<double>(backoff.count()) * factor));
        spdlog::warn("kubernetes: {}; retrying in {:.1f} s", why, static_cast<double>(delay.count()) / 1000.0);
        backoff = std::min(backoff * 2, options_.max_backoff);
        std::unique_lock lock(mutex_);
        return !wake_.wait_for(lock, delay, [this] { return stopping_.load(); });
    };

    auto token = [&](std::string* out, std::string* error) {
        out->clear();
        if (config_.token_file.empty()) return true;
        auto t = read_token_file(config_.token_file, error);
        if (!t) return false;
        *out = std::move(*t);
        return true;
    };

    auto note_malformed = [&](const std::string& what) {
        uint64_t n = 0;
        {
            std::lock_guard lock(w.stats_mutex);
            n = ++w.stats.malformed;
            w.stats.last_error = what;
            w.last_error_at = Clock::now();
        }
        if (n <= 10 || n % 1000 == 0)
            spdlog::warn("kubernetes: {} ({} skipped so far)", what, n);
    };

    // LIST with pagination; replaces the state's pods/services. `message` is set on failure.
    auto do_list = [&](std::string* message) -> Outcome {
        std::vector<PodInfo> pods;
        std::vector<ServiceInfo> services;
        std::string cont;
        std::string list_rv;
        size_t skipped = 0;
        std::string first_skip;
        for (;;) {
            Request req;
            req.url = base + "?limit=" + std::to_string(options_.page_limit);
            if (!cont.empty()) req.url += "&continue=" + url_encode(cont);
            req.idle_seconds = static_cast<long>(options_.idle_timeout.count());
            std::string terr;
            if (!token(&req.token, &terr)) {
                *message = "list " + std::string(w.name()) + ": " + terr;
                return Outcome::error;
            }
            Response r = perform(w.multi, req, config_, options_, stopping_);
            if (r.stopped) return Outcome::stopped;
            if (r.curl != CURLE_OK || r.http_code != 200 || r.handler_aborted) {
                *message = "list " + std::string(w.name()) + ": " + describe_failure(r);
                if (r.curl == CURLE_OK && r.http_code == 410) *message += " (list expired, listing again)";
                return Outcome::error;
            }
            std::string perr;
            auto page = parse_list_page(r.body, &perr);
            if (!page) {
                *message = "list " + std::string(w.name()) + ": " + perr;
                return Outcome::error;
            }
            for (const auto& item : page->items) {
                std::string ierr;
                if (is_pods) {
                    if (auto p = pod_from_json(item, &ierr)) {
                        pods.push_back(std::move(*p));
                        continue;
                    }
                } else {
                    if (auto s = service_from_json(item, &ierr)) {
                        services.push_back(std::move(*s));
                        continue;
                    }
                }
                if (skipped++ == 0) first_skip = ierr;
            }
            list_rv = page->resource_version;
            cont = page->continue_token;
            if (cont.empty()) break;
        }
        size_t count = is_pods ? pods.size() : services.size();
        if (is_pods)
            state_->replace_pods(std::move(pods));
        else
            state_->replace_services(std::move(services));
        rv = list_rv;
        bool first = false;
        w.update([&](KubeResourceStats& s) {
            ++s.lists;
            if (s.lists > 1) ++s.relists;
            first = !s.synced;
            s.synced = true;
            s.resource_version = rv;
            s.malformed += skipped;
        });
        if (skipped) {
            std::string what = "list " + std::string(w.name()) + ": skipped " + std::to_string(skipped) +
                               " unparsable item(s), first: " + first_skip;
            w.record_error(what, false);
            spdlog::warn("kubernetes: {}", what);
        }
        spdlog::info("kubernetes: {} {} {} at resourceVersion {}", first ? "listed" : "relisted", count, w.name(), rv);
        return Outcome::ok;
    };

    // WATCH from rv. `progress` is set when a valid event arrived.
    auto do_watch = [&](std::string* message, bool* progress) -> Outcome {
        Request req;
        req.url = base + "?watch=1&allowWatchBookmarks=true&resourceVersion=" + url_encode(rv) +
                  "&timeoutSeconds=" + std::to_string(options_.watch_timeout_seconds);
        req.idle_seconds = static_cast<long>(options_.idle_timeout.count()) + options_.watch_timeout_seconds;
        req.stream = true;
        std::string terr;
        if (!token(&req.token, &terr)) {
            *message = "watch " + std::string(w.name()) + ": " + terr;
            return Outcome::error;
        }
        Outcome event_outcome = Outcome::ended;
        req.on_line = [&](std::string_view line) -> bool {
            line = trim(line);
            if (line.empty()) return true;
            std::string perr;
            auto ev = parse_watch_event(line, &perr);
            if (!ev) {
                note_malformed("watch " + std::string(w.name()) + ": skipped a malformed event: " + one_line(perr, 200));
                return true;
            }
            if (ev->type == WatchEventType::error) {
                std::string status = ev->status_message.empty() ? std::string("no message") : one_line(ev->status_message, 300);
                if (!ev->status_reason.empty()) status += " (" + ev->status_reason + ")";
                if (ev->gone()) {
                    *message = "watch " + std::string(w.name()) + " from resourceVersion " + rv + ": " + status;
                    event_outcome = Outcome::gone;
                } else {
                    *message = "watch " + std::string(w.name()) + ": ERROR event, code " +
                               std::to_string(ev->status_code) + ": " + status;
                    event_outcome = Outcome::error;
                }
                return false;
            }
            *progress = true;
            if (!ev->resource_version.empty()) rv = ev->resource_version;
            if (ev->type == WatchEventType::bookmark) {
                w.update([&](KubeResourceStats& s) {
                    ++s.bookmarks;
                    s.resource_version = rv;
                });
                return true;
            }
            std::string oerr;
            if (is_pods) {
                auto pod = pod_from_json(ev->object, &oerr);
                if (!pod) {
                    note_malformed("watch pods: skipped a " + std::string(watch_event_type_name(ev->type)) +
                                   " event: " + one_line(oerr, 200));
                    return true;
                }
                if (ev->type == WatchEventType::deleted)
                    state_->delete_pod(*pod);
                else
                    state_->upsert_pod(std::move(*pod));
            } else {
                auto svc = service_from_json(ev->object, &oerr);
                if (!svc) {
                    note_malformed("watch services: skipped a " + std::string(watch_event_type_name(ev->type)) +
                                   " event: " + one_line(oerr, 200));
                    return true;
                }
                if (ev->type == WatchEventType::deleted)
                    state_->delete_service(*svc);
                else
                    state_->upsert_service(std::move(*svc));
            }
            w.update([&](KubeResourceStats& s) {
                ++s.events;
                s.resource_version = rv;
            });
            return true;
        };
        Response r = perform(w.multi, req, config_, options_, stopping_);
        if (r.stopped) return Outcome::stopped;
        if (event_outcome != Outcome::ended) return event_outcome;
        if (r.curl == CURLE_OK && r.http_code == 410) {
            *message = "watch " + std::string(w.name()) + " from resourceVersion " + rv + ": " + describe_failure(r);
            return Outcome::gone;
        }
        if (r.curl != CURLE_OK || r.http_code != 200 || r.handler_aborted) {
            std::string what = describe_failure(r);
            if (r.curl == CURLE_OPERATION_TIMEDOUT) what = "no data for too long: " + what;
            *message = "watch " + std::string(w.name()) + ": " + what;
            return Outcome::error;
        }
        return Outcome::ended;
    };

    while (!stopping_) {
        std::string message;
        if (need_list) {
            Outcome o = do_list(&message);
            if (o == Outcome::stopped) break;
            if (o != Outcome::ok) {
                w.record_error(message);
                if (!sleep_backoff(message)) break;
                continue;
            }
            need_list = false;
            rewatch = false;
            backoff = options_.initial_backoff;
        }
        w.update([&](KubeResourceStats& s) {
            ++s.watches;
            if (rewatch) ++s.watch_restarts;
        });
        rewatch = true;
        bool progress = false;
        auto started = Clock::now();
        Outcome o = do_watch(&message, &progress);
        if (o == Outcome::stopped) break;
        if (progress) backoff = options_.initial_backoff;
        if (o != Outcome::ended) quick_ends = 0;
        switch (o) {
            case Outcome::ended:
                // Empty watches that end at once, again and again: back off instead of spinning.
                if (!progress && Clock::now() - started < std::chrono::seconds(1)) {
                    if (++quick_ends >= 2) {
                        std::string why = "watch " + std::string(w.name()) + " keeps ending at once without events";
                        if (!sleep_backoff(why)) return;
                        break;
                    }
                } else {
                    quick_ends = 0;
                }
                spdlog::debug("kubernetes: watch {} ended; re-watching from resourceVersion {}", w.name(), rv);
                break;
            case Outcome::gone:
                w.update([&](KubeResourceStats& s) { ++s.gone; });
                w.record_error(message, false);
                need_list = true;
                if (progress) {
                    spdlog::info("kubernetes: {}; relisting", message);
                } else if (!sleep_backoff(message + "; relisting")) {
                    return;
                }
                break;
            case Outcome::error:
                w.record_error(message);
                if (!sleep_backoff(message)) return;
                break;
            default:
                break;
        }
    }
}

}  // namespace rstwatch
