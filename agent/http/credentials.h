// Credentials of the protected endpoints (/metrics, /incidents, /diagnose): a bearer token file
// and a basic-auth file, re-read when they change. http_server.h describes the protection.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace rstwatch {

// Credentials for the protected endpoints. Both empty: no authentication.
struct HttpAuthOptions {
    // Bearer tokens, one per non-empty line (several lines: rotation); surrounding blanks ignored.
    std::string token_file;
    // "user:password" per line; empty lines and lines starting with '#' are ignored.
    std::string basic_auth_file;
    bool enabled() const { return !token_file.empty() || !basic_auth_file.empty(); }
};

// True when a and b are equal; the time taken depends only on the lengths, never on where
// they differ. (The length of a secret is not hidden; the tokens' bytes are.)
bool constant_time_equal(std::string_view a, std::string_view b);

// read_small_file (text.h) with the path in the error: "cannot read PATH: why". For the
// credential files and the TLS certificate and key.
bool read_credential_file(const std::string& path, size_t max_bytes, std::string* out, std::string* error);

// The loaded token and basic-auth files; thread-safe. Entries are wiped when replaced or gone.
class HttpCredentials {
public:
    explicit HttpCredentials(HttpAuthOptions options);
    ~HttpCredentials();
    HttpCredentials(const HttpCredentials&) = delete;
    HttpCredentials& operator=(const HttpCredentials&) = delete;

    // At start: every configured file must be valid; else false and *error.
    bool load(std::string* error);
    // The Authorization header's value (nullptr when absent) -> allowed? Re-reads a file whose
    // stat changed (checked at most once a second); a bad file keeps the old credentials (logged).
    bool check(const char* header);

    const HttpAuthOptions& options() const { return options_; }
    // Requests refused with 401.
    void count_unauthorized() { unauthorized_.fetch_add(1, std::memory_order_relaxed); }
    uint64_t unauthorized_total() const { return unauthorized_.load(); }

private:
    struct FileStamp {
        dev_t dev = 0;
        ino_t ino = 0;
        off_t size = 0;
        int64_t mtime_ns = 0;
        int64_t ctime_ns = 0;
        bool operator==(const FileStamp&) const = default;
    };
    static std::optional<FileStamp> stamp_of(const std::string& path);
    void reload_changed();  // under mutex_

    const HttpAuthOptions options_;
    std::mutex mutex_;
    std::vector<std::string> tokens_;
    std::vector<std::string> basic_;  // "user:password"
    std::optional<FileStamp> token_stamp_;
    std::optional<FileStamp> basic_stamp_;
    std::chrono::steady_clock::time_point next_check_{};
    std::atomic<uint64_t> unauthorized_{0};
};

}  // namespace rstwatch
