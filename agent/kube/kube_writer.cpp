#include "kube_writer.h"
#include "kube_http.h"

#include <curl/curl.h>

#include <algorithm>

namespace rstwatch {

std::string_view kube_write_result_name(KubeWriteResult result) {
    switch (result) {
        case KubeWriteResult::ok: return "ok";
        case KubeWriteResult::conflict: return "conflict";
        case KubeWriteResult::not_found: return "not_found";
        case KubeWriteResult::forbidden: return "forbidden";
        case KubeWriteResult::throttled: return "throttled";
        case KubeWriteResult::invalid: return "invalid";
        case KubeWriteResult::unavailable: return "unavailable";
        case KubeWriteResult::stopped: return "stopped";
    }
    return "unknown";
}

namespace {

KubeWriteResult classify(const KubeResponse& response) {
    if (response.stopped) return KubeWriteResult::stopped;
    if (response.curl != CURLE_OK || response.http_code == 0) return KubeWriteResult::unavailable;
    switch (response.http_code) {
        case 200:
        case 201: return KubeWriteResult::ok;
        case 409: return KubeWriteResult::conflict;
        case 404: return KubeWriteResult::not_found;
        case 401:
        case 403: return KubeWriteResult::forbidden;
        case 429: return KubeWriteResult::throttled;
        case 400:
        case 415:
        case 422: return KubeWriteResult::invalid;
        default: return KubeWriteResult::unavailable;
    }
}

}  // namespace

struct KubeWriter::Multi {
    CURLM* handle = curl_multi_init();
    ~Multi() {
        if (handle) curl_multi_cleanup(handle);
    }
};

KubeWriter::KubeWriter(KubeConfig config, std::chrono::milliseconds timeout)
    : config_(std::move(config)), timeout_(timeout), multi_(std::make_unique<Multi>()) {
    kube_http_global_init();
}

KubeWriter::~KubeWriter() = default;

void KubeWriter::stop() {
    stopping_ = true;
    if (multi_->handle) curl_multi_wakeup(multi_->handle);
}

KubeWriteAnswer KubeWriter::create(const std::string& collection_path, const std::string& json_body) {
    return perform("POST", collection_path, json_body, "application/json");
}

KubeWriteAnswer KubeWriter::merge_patch(const std::string& object_path, const std::string& json_patch) {
    return perform("PATCH", object_path, json_patch, "application/merge-patch+json");
}

KubeWriteAnswer KubeWriter::perform(const std::string& method, const std::string& path, const std::string& body,
                                    const char* content_type) {
    KubeWriteAnswer answer;
    if (stopping_ || !multi_->handle) {
        answer.result = KubeWriteResult::stopped;
        answer.error = "stopping";
        return answer;
    }
    KubeRequest request;
    request.url = config_.api_url + "/" + path;
    request.method = method;
    request.body = body;
    request.content_type = content_type;
    request.total_timeout = timeout_;
    request.idle_seconds = std::max<long>(1, static_cast<long>(timeout_.count() / 1000));
    request.connect_timeout = std::chrono::duration_cast<std::chrono::seconds>(timeout_);
    request.max_body_bytes = 1u << 20;
    std::string token_error;
    if (!read_request_token(config_, &request.token, &token_error)) {
        answer.result = KubeWriteResult::forbidden;
        answer.error = token_error;
        return answer;
    }
    KubeResponse response = perform_kube_request(multi_->handle, request, config_, stopping_);
    answer.result = classify(response);
    answer.http_code = response.http_code;
    answer.retry_after_s = response.retry_after_s;
    if (answer.result != KubeWriteResult::ok) answer.error = method + " " + path + ": " + describe_kube_failure(response);
    return answer;
}

}  // namespace rstwatch
