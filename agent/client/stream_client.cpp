// Incident stream lines and the libcurl follower of GET /incidents.
#include "stream_client.h"

#include "default_listen.h"

#include <curl/curl.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <string_view>

#include "output.h"
#include "text.h"

namespace rstwatch {

namespace {

std::string normalize_url(std::string url) {
    if (url.find("://") == std::string::npos) url = "http://" + url;
    const size_t host_start = url.find("://") + 3;
    const size_t slash = url.find('/', host_start);
    if (slash == std::string::npos) return url + "/incidents";
    if (slash == url.size() - 1) return url + "incidents";
    return url;
}

// `url` with the history query (since=, last=), each value URL-encoded.
std::string with_history_query(CURL* easy, std::string url, const StreamClientOptions& options) {
    auto add = [&](const char* key, const std::string& value) {
        std::unique_ptr<char, decltype(&curl_free)> escaped(
            curl_easy_escape(easy, value.data(), static_cast<int>(value.size())), &curl_free);
        url += url.find('?') == std::string::npos ? '?' : '&';
        url += key;
        url += '=';
        url += escaped ? escaped.get() : "";
    };
    if (options.since) add("since", *options.since);
    if (options.last) add("last", std::to_string(*options.last));
    return url;
}

// The URL without "user:password@", for messages.
std::string redact_url(const std::string& url) {
    const size_t scheme = url.find("://");
    const size_t host_start = scheme == std::string::npos ? 0 : scheme + 3;
    const size_t at = url.find('@', host_start);
    const size_t slash = url.find('/', host_start);
    if (at == std::string::npos || (slash != std::string::npos && at > slash)) return url;
    return url.substr(0, host_start) + url.substr(at + 1);
}

struct Follow {
    const StreamClientOptions* options = nullptr;
    const std::function<void(const StreamedIncident&)>* on_incident = nullptr;
    const std::function<void(uint64_t)>* on_dropped = nullptr;
    CURL* easy = nullptr;
    StreamResult result;
    long status = 0;
    std::string buffer;      // incomplete line
    bool skipping = false;   // inside an over-long line
    std::string error_body;  // body of a non-200 response (truncated)

    void line(std::string_view text) {
        if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
        if (text.find_first_not_of(" \t") == std::string_view::npos) return;  // heartbeat
        auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
        if (!json.is_object()) {
            ++result.malformed;
            return;
        }
        if (json.size() == 1 && json.contains("dropped")) {
            const auto& n = json["dropped"];
            if (!n.is_number_unsigned()) {
                ++result.malformed;
                return;
            }
            const auto dropped = n.get<uint64_t>();
            result.dropped += dropped;
            if (*on_dropped) (*on_dropped)(dropped);
            return;
        }
        auto streamed = streamed_incident_from_json(json);
        if (!streamed) {
            ++result.malformed;
            return;
        }
        ++result.incidents;
        if (*on_incident) (*on_incident)(*streamed);
    }

    size_t write(const char* data, size_t size) {
        if (status == 0) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
        if (status != 200) {
            if (error_body.size() < 512)
                error_body.append(data, std::min(size, 512 - error_body.size()));
            return size;
        }
        std::string_view chunk(data, size);
        while (!chunk.empty()) {
            const size_t nl = chunk.find('\n');
            const std::string_view part = chunk.substr(0, nl);
            if (!skipping) {
                if (buffer.size() + part.size() > options->max_line_bytes) {
                    ++result.malformed;
                    buffer.clear();
                    skipping = true;
                } else {
                    buffer.append(part);
                }
            }
            if (nl == std::string_view::npos) break;
            if (!skipping) line(buffer);
            buffer.clear();
            skipping = false;
            chunk.remove_prefix(nl + 1);
        }
        return size;
    }

    static size_t write_cb(char* data, size_t size, size_t nmemb, void* self) {
        return static_cast<Follow*>(self)->write(data, size * nmemb);
    }
};

using CurlHeaders = std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)>;

// The agent's credentials on a request: the bearer token (the returned header list must outlive
// the request) and the CA that verifies an https agent.
CurlHeaders apply_client_auth(CURL* easy, const ClientAuth& auth) {
    CurlHeaders headers(nullptr, &curl_slist_free_all);
    if (!auth.bearer_token.empty()) {
        const std::string authorization = "Authorization: Bearer " + auth.bearer_token;
        headers.reset(curl_slist_append(nullptr, authorization.c_str()));
        curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.get());
    }
    if (!auth.ca_file.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, auth.ca_file.c_str());
    return headers;
}

void global_init() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

}  // namespace

std::string token_file_or_env(const std::optional<std::string>& flag) {
    if (flag) return *flag;
    const char* env = std::getenv("RSTWATCH_TOKEN_FILE");
    return env != nullptr ? env : "";
}

std::string ca_file_or_env(const std::optional<std::string>& flag) {
    if (flag) return *flag;
    const char* env = std::getenv("RSTWATCH_CA_FILE");
    return env != nullptr ? env : "";
}

std::string resolve_agent_url(const std::string& from) {
    if (from != kNodeAgent) return from;
    const char* env = std::getenv("RSTWATCH_AGENT_URL");
    return env != nullptr && *env != '\0' ? env : std::string("http://") + kDefaultListen;
}

bool load_client_auth(const std::string& token_file, const std::string& ca_file, ClientAuth* auth,
                      std::string* error) {
    auth->bearer_token.clear();
    auth->ca_file = ca_file;
    if (token_file.empty()) return true;
    std::string why;
    std::optional<std::string> text = read_small_file(token_file, 64 * 1024, &why);
    if (!text) {
        *error = "cannot read the token file " + token_file + ": " + why;
        return false;
    }
    // The first non-empty line is the token.
    size_t start = 0;
    while (start < text->size()) {
        size_t nl = text->find('\n', start);
        if (nl == std::string::npos) nl = text->size();
        std::string_view line = trim(std::string_view(*text).substr(start, nl - start));
        if (!line.empty()) {
            auth->bearer_token = std::string(line);
            break;
        }
        start = nl + 1;
    }
    if (auth->bearer_token.empty()) {
        *error = "the token file " + token_file + " is empty";
        return false;
    }
    return true;
}

StreamResult follow_incidents(const StreamClientOptions& options, const std::atomic<bool>& stop,
                              const std::function<void(const StreamedIncident&)>& on_incident,
                              const std::function<void(uint64_t)>& on_dropped) {
    global_init();
    Follow follow;
    follow.options = &options;
    follow.on_incident = &on_incident;
    follow.on_dropped = &on_dropped;

    auto fail = [&](std::string message) {
        follow.result.end = StreamResult::End::error;
        follow.result.error = one_line(std::move(message));
        return follow.result;
    };

    CURL* easy = curl_easy_init();
    CURLM* multi = curl_multi_init();
    if (easy == nullptr || multi == nullptr) {
        if (easy) curl_easy_cleanup(easy);
        if (multi) curl_multi_cleanup(multi);
        return fail("cannot initialize libcurl");
    }
    follow.easy = easy;
    const std::string full_url = with_history_query(easy, normalize_url(options.url), options);
    const std::string url = redact_url(full_url);  // in messages
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_setopt(easy, CURLOPT_URL, full_url.c_str());
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &Follow::write_cb);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &follow);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT,
                     static_cast<long>(options.connect_timeout.count()));
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, static_cast<long>(options.idle_timeout.count()));
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    const CurlHeaders headers = apply_client_auth(easy, options.auth);
    curl_multi_add_handle(multi, easy);

    bool stopped = false;
    CURLcode code = CURLE_OK;
    bool done = false;
    while (!done) {
        if (stop.load()) {
            stopped = true;
            break;
        }
        int running = 0;
        CURLMcode mc = curl_multi_perform(multi, &running);
        if (mc != CURLM_OK) {
            curl_multi_remove_handle(multi, easy);
            curl_easy_cleanup(easy);
            curl_multi_cleanup(multi);
            return fail(std::string("libcurl: ") + curl_multi_strerror(mc));
        }
        int queued = 0;
        while (CURLMsg* msg = curl_multi_info_read(multi, &queued)) {
            if (msg->msg == CURLMSG_DONE) {
                code = msg->data.result;
                done = true;
            }
        }
        if (done || running == 0) break;
        curl_multi_poll(multi, nullptr, 0, 100, nullptr);
    }
    if (follow.status == 0) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &follow.status);
    curl_multi_remove_handle(multi, easy);
    curl_easy_cleanup(easy);
    curl_multi_cleanup(multi);

    if (stopped) {
        follow.result.end = StreamResult::End::stopped;
        follow.result.error.clear();
        return follow.result;
    }
    if (follow.status != 0 && follow.status != 200) {
        std::string body = one_line(follow.error_body);
        return fail("cannot follow " + url + ": HTTP " + std::to_string(follow.status) +
                    (body.empty() ? "" : ": " + body));
    }
    if (code != CURLE_OK) {
        std::string detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(code);
        if (code == CURLE_OPERATION_TIMEDOUT && follow.status == 200)
            detail =
                "no data from the agent for " + std::to_string(options.idle_timeout.count()) + " s";
        return fail((follow.status == 200 ? "lost the stream from " : "cannot follow ") + url +
                    ": " + detail);
    }
    follow.result.end = StreamResult::End::server_closed;
    follow.result.error = "the agent at " + url + " closed the stream";
    return follow.result;
}

namespace {
size_t append_body(char* data, size_t size, size_t count, void* body) {
    static_cast<std::string*>(body)->append(data, size * count);
    return size * count;
}
}  // namespace

std::optional<AgentResponse> get_from_agent(const std::string& base_url, const std::string& path,
                                            const ClientAuth& auth, std::chrono::seconds timeout,
                                            std::string* error) {
    global_init();
    std::string url = base_url.find("://") == std::string::npos ? "http://" + base_url : base_url;
    while (!url.empty() && url.back() == '/') url.pop_back();
    url += path;
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> easy(curl_easy_init(), &curl_easy_cleanup);
    if (!easy) {
        *error = "cannot initialize libcurl";
        return std::nullopt;
    }
    AgentResponse response;
    char errbuf[CURL_ERROR_SIZE] = {};
    curl_easy_setopt(easy.get(), CURLOPT_URL, url.c_str());
    curl_easy_setopt(easy.get(), CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(easy.get(), CURLOPT_WRITEFUNCTION, &append_body);
    curl_easy_setopt(easy.get(), CURLOPT_WRITEDATA, &response.body);
    curl_easy_setopt(easy.get(), CURLOPT_CONNECTTIMEOUT, static_cast<long>(std::min<int64_t>(timeout.count(), 10)));
    curl_easy_setopt(easy.get(), CURLOPT_TIMEOUT, static_cast<long>(timeout.count()));
    curl_easy_setopt(easy.get(), CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy.get(), CURLOPT_PROTOCOLS_STR, "http,https");
    const CurlHeaders headers = apply_client_auth(easy.get(), auth);
    const CURLcode rc = curl_easy_perform(easy.get());
    if (rc != CURLE_OK) {
        *error = fmt::format("{}: {}", redact_url(url), one_line(errbuf[0] != 0 ? errbuf : curl_easy_strerror(rc)));
        return std::nullopt;
    }
    curl_easy_getinfo(easy.get(), CURLINFO_RESPONSE_CODE, &response.status);
    response.url = redact_url(url);
    return response;
}

}  // namespace rstwatch
