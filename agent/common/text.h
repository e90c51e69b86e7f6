// Small text and file helpers shared by every stage (one copy each).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace rstwatch {

// Without leading and trailing whitespace (isspace).
std::string_view trim(std::string_view text);

// Safe for one log or error line: control characters (CR, LF, tabs, ...) become spaces,
// trailing spaces go, and text beyond max_bytes is cut and marked with "...".
std::string one_line(std::string_view text, size_t max_bytes = std::string_view::npos);

// A whole file of at most max_bytes (credentials, certificates, tokens). On failure nullopt
// and *reason says why without the path ("No such file or directory", "larger than 64 KiB"),
// for the caller to name the file and the flag.
std::optional<std::string> read_small_file(const std::string& path, size_t max_bytes, std::string* reason);

}  // namespace rstwatch
