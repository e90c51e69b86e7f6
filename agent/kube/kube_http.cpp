#include "kube_http.h"
#include "kube_wire.h"
#include "text.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <mutex>

namespace rstwatch {

namespace {

constexpr size_t kMaxErrorBody = 64 * 1024;

struct TransferContext {
    CURL* easy = nullptr;
    const KubeRequest* request = nullptr;
    KubeResponse* response = nullptr;
    const std::atomic<bool>* stopping = nullptr;
    bool code_known = false;
    bool streaming = false;
    std::string buffer;
    size_t scanned = 0;  // bytes of buffer known to hold no newline
};

// A non-streamed body: kept whole for a 200/201 (up to max_body_bytes), else its first 64 KiB.
size_t keep_body(TransferContext* ctx, const char* data, size_t len) {
    std::string& body = ctx->response->body;
    if (ctx->response->http_code != 200 && ctx->response->http_code != 201) {
        if (body.size() < kMaxErrorBody) body.append(data, std::min(len, kMaxErrorBody - body.size()));
        return len;
    }
    size_t max_body = ctx->request->max_body_bytes;
    if (body.size() + len > max_body) {
        ctx->response->handler_aborted = true;
        ctx->response->abort_reason = "response larger than " + std::to_string(max_body) + " bytes";
        return 0;
    }
    body.append(data, len);
    return len;
}

// A streamed body: each complete line to on_line; the rest waits for more data.
size_t feed_lines(TransferContext* ctx, const char* data, size_t len) {
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
    size_t max_line = ctx->request->max_line_bytes;
    if (buf.size() > max_line) {
        ctx->response->handler_aborted = true;
        ctx->response->abort_reason = "watch event line longer than " + std::to_string(max_line) + " bytes";
        return 0;
    }
    return len;
}

size_t on_write(char* data, size_t size, size_t count, void* user) {
    auto* ctx = static_cast<TransferContext*>(user);
    size_t len = size * count;
    if (ctx->stopping->load(std::memory_order_relaxed)) {
        ctx->response->stopped = true;
        return 0;
    }
    if (!ctx->code_known) {
        // Only a 200 watch streams; an error answer to a watch is kept like a list's.
        ctx->code_known = true;
        long code = 0;
        curl_easy_getinfo(ctx->easy, CURLINFO_RESPONSE_CODE, &code);
        ctx->response->http_code = code;
        ctx->streaming = ctx->request->stream && code == 200;
    }
    return ctx->streaming ? feed_lines(ctx, data, len) : keep_body(ctx, data, len);
}

// Retry-After: SECONDS (the API server's form; an HTTP date is not used by it).
size_t on_header(char* data, size_t size, size_t count, void* user) {
    auto* response = static_cast<KubeResponse*>(user);
    std::string_view line(data, size * count);
    constexpr std::string_view kName = "retry-after:";
    if (line.size() > kName.size()) {
        std::string name(line.substr(0, kName.size()));
        std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
        if (name == kName) {
            std::string value(trim(line.substr(kName.size())));
            char* end = nullptr;
            long seconds = std::strtol(value.c_str(), &end, 10);
            if (!value.empty() && end && *end == '\0' && seconds >= 0) response->retry_after_s = seconds;
        }
    }
    return size * count;
}

int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto* ctx = static_cast<TransferContext*>(user);
    if (ctx->stopping->load(std::memory_order_relaxed)) {
        ctx->response->stopped = true;
        return 1;
    }
    return 0;
}

curl_slist* request_headers(const KubeRequest& request) {
    curl_slist* headers = nullptr;
    headers = curl_slist_append(headers, "Accept: application/json");
    if (!request.token.empty()) {
        std::string auth = "Authorization: Bearer " + request.token;
        headers = curl_slist_append(headers, auth.c_str());  // copied
    }
    if (!request.content_type.empty()) {
        std::string type = "Content-Type: " + request.content_type;
        headers = curl_slist_append(headers, type.c_str());
    }
    return headers;
}

void set_options(CURL* easy, const KubeRequest& request, const KubeConfig& config, curl_slist* headers,
                 TransferContext* ctx, char* errbuf) {
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
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(request.connect_timeout.count() * 1000));
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, request.idle_seconds);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPINTVL, 15L);
    if (!request.stream) curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");  // gzip lists when offered
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, ctx);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(easy, CURLOPT_XFERINFODATA, ctx);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, ctx->response);
    if (request.total_timeout.count() > 0)
        curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(request.total_timeout.count()));
    if (request.method != "GET") {
        curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, request.method.c_str());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, request.body.c_str());
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE, static_cast<long>(request.body.size()));
    }
    if (!config.ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, config.ca_file.c_str());
    if (config.insecure_skip_verify) {
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
    }
}

// Drives `easy` (already added to `multi`) until it is done (true), the watcher stops or
// the multi interface fails (false). Polls at most a second at a time to see `stopping`.
bool drive(CURLM* multi, CURL* easy, const std::atomic<bool>& stopping, KubeResponse* response) {
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK) {
            response->curl = CURLE_FAILED_INIT;
            response->curl_error = curl_multi_strerror(mc);
            return false;
        }
        bool done = false;
        int queued = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
            if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
                response->curl = msg->data.result;
                done = true;
            }
        }
        if (done) return true;
        if (stopping.load()) {
            response->stopped = true;
            return false;
        }
        mc = curl_multi_poll(multi, nullptr, 0, 1000, nullptr);
        if (mc != CURLM_OK) {
            response->curl = CURLE_FAILED_INIT;
            response->curl_error = curl_multi_strerror(mc);
            return false;
        }
    }
}

std::once_flag curl_init_once;

}  // namespace

void kube_http_global_init() {
    std::call_once(curl_init_once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

KubeResponse perform_kube_request(CURLM* multi, const KubeRequest& request, const KubeConfig& config,
                                  const std::atomic<bool>& stopping) {
    KubeResponse response;
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
    char errbuf[CURL_ERROR_SIZE] = {0};
    curl_slist* headers = request_headers(request);
    set_options(easy, request, config, headers, &ctx, errbuf);

    curl_multi_add_handle(multi, easy);
    const bool done = drive(multi, easy, stopping, &response);
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

std::string describe_kube_failure(const KubeResponse& r) {
    if (!r.abort_reason.empty()) return r.abort_reason;
    if (r.curl != CURLE_OK) {
        std::string msg = r.curl_error;
        while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
        return one_line(msg, 300) + " (curl " + std::to_string(static_cast<int>(r.curl)) + ")";
    }
    return "HTTP " + std::to_string(r.http_code) + ": " + describe_error_body(r.body);
}

}  // namespace rstwatch
