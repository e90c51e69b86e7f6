// Token and basic-auth files, loaded and re-read when they change; see credentials.h.
#include "credentials.h"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <utility>

#include "text.h"

namespace rstwatch {

namespace {

constexpr size_t kMaxCredentialFileBytes = 64 * 1024;

// RFC 4648 base64 (padding optional); nullopt on any other character.
std::optional<std::string> base64_decode(std::string_view in) {
    std::string out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : in) {
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else if (c == '=') break;
        else return std::nullopt;
        acc = (acc << 6) | static_cast<uint32_t>(v);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out.push_back(static_cast<char>((acc >> bits) & 0xff));
        }
    }
    return out;
}

bool iequals_prefix(std::string_view text, std::string_view prefix) {
    if (text.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(text[i])) != std::tolower(static_cast<unsigned char>(prefix[i])))
            return false;
    return true;
}

// Token file: one token per non-empty line.
bool parse_tokens(const std::string& path, std::vector<std::string>* tokens, std::string* error) {
    std::string text;
    if (!read_credential_file(path, kMaxCredentialFileBytes, &text, error)) return false;
    tokens->clear();
    size_t start = 0;
    while (start <= text.size()) {
        size_t nl = text.find('\n', start);
        if (nl == std::string::npos) nl = text.size();
        std::string_view line = trim(std::string_view(text).substr(start, nl - start));
        if (!line.empty()) tokens->emplace_back(line);
        start = nl + 1;
    }
    explicit_bzero(text.data(), text.size());
    if (tokens->empty()) {
        *error = "no token in " + path + " (the file is empty)";
        return false;
    }
    return true;
}

// Basic-auth file: "user:password" lines, '#' comments.
bool parse_basic(const std::string& path, std::vector<std::string>* entries, std::string* error) {
    std::string text;
    if (!read_credential_file(path, kMaxCredentialFileBytes, &text, error)) return false;
    entries->clear();
    size_t start = 0;
    int number = 0;
    bool ok = true;
    while (ok && start <= text.size()) {
        size_t nl = text.find('\n', start);
        if (nl == std::string::npos) nl = text.size();
        ++number;
        std::string_view line = std::string_view(text).substr(start, nl - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        start = nl + 1;
        if (trim(line).empty() || trim(line).front() == '#') continue;
        const size_t colon = line.find(':');
        if (colon == 0 || colon == std::string_view::npos || colon + 1 == line.size()) {
            *error = path + " line " + std::to_string(number) + ": expected user:password";
            ok = false;
            break;
        }
        entries->emplace_back(line);
    }
    explicit_bzero(text.data(), text.size());
    if (ok && entries->empty()) {
        *error = "no user:password line in " + path;
        ok = false;
    }
    return ok;
}

void wipe(std::vector<std::string>& entries) {
    for (auto& e : entries) explicit_bzero(e.data(), e.size());
}

}  // namespace

bool constant_time_equal(std::string_view a, std::string_view b) {
    // Walks the longer length every time; a length mismatch is folded in at the end.
    const size_t n = std::max(a.size(), b.size());
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < n; ++i) {
        const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
        const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
        diff = static_cast<unsigned char>(diff | (x ^ y));
    }
    return (diff == 0) & (a.size() == b.size());
}

bool read_credential_file(const std::string& path, size_t max_bytes, std::string* out, std::string* error) {
    std::string why;
    auto data = read_small_file(path, max_bytes, &why);
    if (!data) {
        *error = "cannot read " + path + ": " + why;
        return false;
    }
    *out = std::move(*data);
    return true;
}

HttpCredentials::HttpCredentials(HttpAuthOptions options) : options_(std::move(options)) {}

HttpCredentials::~HttpCredentials() {
    wipe(tokens_);
    wipe(basic_);
}

// stat() follows symlinks: a Kubernetes Secret volume swaps its ..data symlink on update.
std::optional<HttpCredentials::FileStamp> HttpCredentials::stamp_of(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return std::nullopt;
    return FileStamp{st.st_dev, st.st_ino, st.st_size,
                     st.st_mtim.tv_sec * 1'000'000'000LL + st.st_mtim.tv_nsec,
                     st.st_ctim.tv_sec * 1'000'000'000LL + st.st_ctim.tv_nsec};
}

bool HttpCredentials::load(std::string* error) {
    std::lock_guard lock(mutex_);
    if (!options_.token_file.empty()) {
        token_stamp_ = stamp_of(options_.token_file);
        if (!parse_tokens(options_.token_file, &tokens_, error)) return false;
    }
    if (!options_.basic_auth_file.empty()) {
        basic_stamp_ = stamp_of(options_.basic_auth_file);
        if (!parse_basic(options_.basic_auth_file, &basic_, error)) return false;
    }
    next_check_ = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    return true;
}

void HttpCredentials::reload_changed() {
    const auto now = std::chrono::steady_clock::now();
    if (now < next_check_) return;
    next_check_ = now + std::chrono::seconds(1);
    auto reload = [](const std::string& path, std::optional<FileStamp>& stamp, auto parse,
                     std::vector<std::string>& current, const char* what) {
        if (path.empty()) return;
        auto now_stamp = stamp_of(path);
        if (now_stamp == stamp) return;
        std::vector<std::string> fresh;
        std::string error;
        if (!parse(path, &fresh, &error)) {
            spdlog::error("{} changed but is not usable, keeping the previous credentials: {}", what,
                          one_line(error));
            stamp = now_stamp;  // logged once per change
            return;
        }
        wipe(current);
        current = std::move(fresh);
        stamp = now_stamp;
        spdlog::info("{} {} reloaded: {} entries", what, path, current.size());
    };
    reload(options_.token_file, token_stamp_, &parse_tokens, tokens_, "auth token file");
    reload(options_.basic_auth_file, basic_stamp_, &parse_basic, basic_, "basic auth file");
}

bool HttpCredentials::check(const char* header) {
    if (header == nullptr) return false;
    std::string_view value = trim(header);
    std::lock_guard lock(mutex_);
    reload_changed();
    bool ok = false;
    if (iequals_prefix(value, "Bearer ")) {
        std::string_view token = trim(value.substr(7));
        // Every entry is compared: the time does not tell which (or whether one) matched.
        for (const auto& t : tokens_) ok |= constant_time_equal(token, t);
    } else if (iequals_prefix(value, "Basic ")) {
        auto decoded = base64_decode(trim(value.substr(6)));
        if (decoded) {
            for (const auto& b : basic_) ok |= constant_time_equal(*decoded, b);
            explicit_bzero(decoded->data(), decoded->size());
        }
    }
    return ok;
}

}  // namespace rstwatch
