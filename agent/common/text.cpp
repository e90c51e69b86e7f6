#include "text.h"

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace rstwatch {

std::string_view trim(std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) text.remove_prefix(1);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.remove_suffix(1);
    return text;
}

std::string one_line(std::string_view text, size_t max_bytes) {
    const bool cut = text.size() > max_bytes;
    if (cut) text = text.substr(0, max_bytes);
    std::string out;
    out.reserve(text.size() + 3);
    for (char c : text) out.push_back(static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? ' ' : c);
    while (!out.empty() && out.back() == ' ') out.pop_back();
    if (cut) out += "...";
    return out;
}

std::optional<std::string> read_small_file(const std::string& path, size_t max_bytes, std::string* reason) {
    struct Closer {
        void operator()(std::FILE* f) const { std::fclose(f); }
    };
    std::unique_ptr<std::FILE, Closer> file(std::fopen(path.c_str(), "rb"));
    if (!file) {
        *reason = std::strerror(errno);
        return std::nullopt;
    }
    std::string data;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, file.get())) > 0) {
        data.append(buf, n);
        if (data.size() > max_bytes) {
            *reason = max_bytes >= 1024 ? "larger than " + std::to_string(max_bytes / 1024) + " KiB"
                                        : "larger than " + std::to_string(max_bytes) + " bytes";
            return std::nullopt;
        }
    }
    if (std::ferror(file.get())) {
        // A directory opens but does not read: EISDIR.
        *reason = std::strerror(errno);
        return std::nullopt;
    }
    return data;
}

}  // namespace rstwatch
