#include "kube_config.h"
#include "text.h"

#include <algorithm>
#include <cstdlib>
#include <string_view>
#include <utility>

namespace rstwatch {

namespace {

std::string env(const char* name) {
    const char* v = std::getenv(name);
    return v ? std::string(v) : std::string();
}

// "https://HOST:PORT" of the API server as a pod sees it (an IPv6 host is bracketed).
std::optional<std::string> in_cluster_api_url(std::string* error) {
    std::string host = env("KUBERNETES_SERVICE_HOST");
    std::string port = env("KUBERNETES_SERVICE_PORT");
    if (host.empty() || port.empty()) {
        *error = "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set (use --kube-api)";
        return std::nullopt;
    }
    if (host.find(':') != std::string::npos && !host.starts_with("[")) host = "[" + host + "]";
    return "https://" + host + ":" + port;
}

// Splits "host[:port]" / "[v6]:port" of api_url; a port that is there but empty becomes "x"
// so that the port check rejects it. False + error for a malformed bracketed host.
bool split_authority(std::string_view authority, const std::string& api_url, std::string_view* host,
                     std::string_view* port, std::string* error) {
    *host = authority;
    *port = {};
    if (host->starts_with("[")) {
        auto close = host->find(']');
        if (close == std::string_view::npos || close == 1) {
            *error = "Kubernetes API URL " + api_url + ": bad IPv6 host";
            return false;
        }
        std::string_view after = host->substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':') {
                *error = "Kubernetes API URL " + api_url + ": bad host";
                return false;
            }
            *port = after.substr(1);
            if (port->empty()) *port = "x";  // "[::1]:" is an error below
        }
        *host = host->substr(0, close + 1);
    } else {
        auto colon = host->find(':');
        if (colon != std::string_view::npos) {
            *port = host->substr(colon + 1);
            if (port->empty()) *port = "x";
            *host = host->substr(0, colon);
        }
    }
    return true;
}

// http(s)://host[:port][/path] without a query, fragment or credentials.
bool check_api_url(const std::string& api_url, std::string* error) {
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
    std::string_view host, port;
    if (!split_authority(authority, api_url, &host, &port, error)) return false;
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
    return true;
}

bool check_ca_file(const std::string& ca_file, std::string* error) {
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
    return true;
}

}  // namespace

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
    if (!check_api_url(api_url, error)) return false;
    if (!token_file.empty()) {
        std::string why;
        if (!read_token_file(token_file, &why)) {
            *error = why;
            return false;
        }
    }
    if (!ca_file.empty() && !check_ca_file(ca_file, error)) return false;
    return true;
}

std::optional<KubeConfig> KubeConfig::in_cluster(std::string* error, const std::string& service_account_dir) {
    auto url = in_cluster_api_url(error);
    if (!url) return std::nullopt;
    KubeConfig config;
    config.api_url = std::move(*url);
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
        auto url = in_cluster_api_url(error);
        if (!url) return std::nullopt;
        config.api_url = std::move(*url);
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

bool read_request_token(const KubeConfig& config, std::string* out, std::string* error) {
    out->clear();
    if (config.token_file.empty()) return true;
    auto token = read_token_file(config.token_file, error);
    if (!token) return false;
    *out = std::move(*token);
    return true;
}

}  // namespace rstwatch
