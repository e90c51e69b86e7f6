// Where the Kubernetes API is and how to authenticate to it: the URL, the bearer token file
// and the CA file, from the flags or from the pod's service account. No network access.
#pragma once

#include <optional>
#include <string>

namespace rstwatch {

struct KubeConfig {
    // "https://10.96.0.1:443", "http://127.0.0.1:8001", or with a path prefix behind a proxy
    // ("https://rancher.example.com/k8s/clusters/c-abc"); no trailing "/".
    std::string api_url;
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
    // One-line error on failure: the URL is http(s)://host[:port][/path] (no query, fragment
    // or userinfo), the token file (if any) is readable, not empty and one line, the CA file
    // (if any) is readable and holds a PEM certificate.
    bool validate(std::string* error) const;
};

// The token in a token file, surrounding whitespace removed. nullopt + error when it cannot
// be read, is empty or holds more than one line.
std::optional<std::string> read_token_file(const std::string& path, std::string* error);

// The token for one request ("" without a token file). Read again for every request: a
// projected service account token is rotated on disk.
bool read_request_token(const KubeConfig& config, std::string* out, std::string* error);

}  // namespace rstwatch
