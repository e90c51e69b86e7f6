// Shared helpers of the libFuzzer targets (fuzz/*.cpp).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

namespace rstwatch::fuzz {

// A broken invariant of the code under test (not a memory error): report and abort so that
// libFuzzer records the input as a crash.
[[noreturn]] inline void invariant_failed(const char* what, std::string_view detail = {}) {
    std::string escaped;
    for (unsigned char c : detail) {
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            escaped.push_back(static_cast<char>(c));
        } else {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\x%02x", c);
            escaped += buf;
        }
    }
    std::fprintf(stderr, "rstwatch fuzz invariant failed: %s: %s\n", what, escaped.c_str());
    std::abort();
}

#define RSTWATCH_FUZZ_CHECK(cond, detail) \
    do {                                  \
        if (!(cond)) ::rstwatch::fuzz::invariant_failed(#cond, (detail)); \
    } while (0)

// RSTWATCH_FUZZ_SKIP_KNOWN=1: steer around the bugs listed in fuzz/crashes/README.md (reproducers
// there) so that a long run keeps looking for new ones. Off by default: CI fails until they are fixed.
inline bool skip_known() {
    static const bool skip = [] {
        const char* v = std::getenv("RSTWATCH_FUZZ_SKIP_KNOWN");
        return v != nullptr && std::string_view(v) == "1";
    }();
    return skip;
}

// An error message must be one line (they are logged as such).
// Known: fuzz/crashes/pod_map_error_has_newline.yaml.
inline bool one_line(const std::string& s) {
    return skip_known() || s.find_first_of("\r\n") == std::string::npos;
}

}  // namespace rstwatch::fuzz
