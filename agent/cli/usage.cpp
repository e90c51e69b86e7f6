#include "usage.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "commands.h"

namespace rstwatch {
namespace {

bool starts_with(std::string_view text, std::string_view prefix) { return text.substr(0, prefix.size()) == prefix; }

std::string help_hint(std::string_view command) {
    return command.empty() ? std::string("rstwatch help") : fmt::format("rstwatch help {}", command);
}

// "1e+06" -> "1000000": bounds in words people read.
std::string number_text(double value) {
    if (value == std::floor(value) && std::fabs(value) < 1e15) return fmt::format("{:.0f}", value);
    return fmt::format("{}", value);
}

}  // namespace

int usage_error(std::string_view flag, std::string_view problem) {
    std::fprintf(stderr, "rstwatch: %.*s: %.*s\n", static_cast<int>(flag.size()), flag.data(),
                 static_cast<int>(problem.size()), problem.data());
    return kExitUsage;
}

int command_failed(std::string_view message) {
    std::fprintf(stderr, "rstwatch: %.*s\n", static_cast<int>(message.size()), message.data());
    return kExitFailure;
}

std::string usage_line_for(const CLI::Error& error, std::string_view command) {
    std::string message = error.what();
    // CLI11 2.1's wordings, rewritten so that each line starts with what the user typed.
    constexpr std::string_view kExtra1 = "The following argument was not expected: ";
    constexpr std::string_view kExtras = "The following arguments were not expected: ";
    for (std::string_view prefix : {kExtra1, kExtras}) {
        if (!starts_with(message, prefix)) continue;
        std::string extra = message.substr(prefix.size());
        // rjoin lists the extras last-first; name the first one typed.
        if (auto space = extra.rfind(' '); space != std::string::npos) extra = extra.substr(space + 1);
        const bool is_option = starts_with(extra, "-");
        return fmt::format("rstwatch: {}: {} (see '{}')", extra,
                           is_option ? (command.empty() ? std::string("unknown option")
                                                        : fmt::format("unknown option for '{}'", command))
                                     : std::string("unexpected argument"),
                           help_hint(command));
    }
    constexpr std::string_view kNotAllowed = "The value ";
    if (starts_with(message, kNotAllowed)) {
        if (auto at = message.find(" is not an allowed value for "); at != std::string::npos) {
            std::string value = message.substr(kNotAllowed.size(), at - kNotAllowed.size());
            std::string flag = message.substr(at + std::strlen(" is not an allowed value for "));
            return fmt::format("rstwatch: {}: '{}' is not an allowed value", flag, value);
        }
    }
    constexpr std::string_view kConvert = "Could not convert: ";
    if (starts_with(message, kConvert)) {
        std::string rest = message.substr(kConvert.size());
        if (auto eq = rest.find(" = "); eq != std::string::npos)
            return fmt::format("rstwatch: {}: '{}' is not a valid value", rest.substr(0, eq), rest.substr(eq + 3));
    }
    if (auto at = message.find(" requires "); at != std::string::npos && message.find(' ') == at)
        return fmt::format("rstwatch: {}: needs {}", message.substr(0, at), message.substr(at + 10));
    if (auto at = message.find(" excludes "); at != std::string::npos && message.find(' ') == at)
        return fmt::format("rstwatch: {}: cannot be used with {}", message.substr(0, at), message.substr(at + 10));
    if (auto at = message.find(" is required"); at != std::string::npos && starts_with(message, "-"))
        return fmt::format("rstwatch: {}: is required", message.substr(0, at));
    constexpr std::string_view kExpected = "Expected exactly 1 arguments to ";
    if (starts_with(message, kExpected)) {
        std::string flag = message.substr(kExpected.size());
        if (auto comma = flag.find(','); comma != std::string::npos) flag.resize(comma);
        return fmt::format("rstwatch: {}: needs a value", flag);
    }
    if (message.find(": ") != std::string::npos && starts_with(message, "-")) {
        // "--flag: problem" (validators, missing values): already in the format.
        if (message.find("required") != std::string::npos && message.find("missing") != std::string::npos)
            return fmt::format("rstwatch: {}: needs a value", message.substr(0, message.find(": ")));
        return "rstwatch: " + message;
    }
    return fmt::format("rstwatch: {} (see '{}')", message, help_hint(command));
}

CLI::Validator finite_range(double min, double max, std::string_view unit) {
    std::string problem = fmt::format("must be a number of {} from {} to {}", unit, number_text(min), number_text(max));
    return CLI::Validator(
        [min, max, problem](std::string& input) -> std::string {
            char* end = nullptr;
            errno = 0;
            const double value = std::strtod(input.c_str(), &end);
            if (input.empty() || end != input.c_str() + input.size() || errno == ERANGE || !std::isfinite(value) ||
                value < min || value > max)
                return fmt::format("'{}': {}", input, problem);
            return {};
        },
        fmt::format("{}..{}", number_text(min), number_text(max)));
}

CLI::Validator positive_seconds(double max_seconds) {
    std::string problem = fmt::format("must be a number of seconds above 0, at most {}", number_text(max_seconds));
    return CLI::Validator(
        [max_seconds, problem](std::string& input) -> std::string {
            char* end = nullptr;
            errno = 0;
            const double value = std::strtod(input.c_str(), &end);
            if (input.empty() || end != input.c_str() + input.size() || errno == ERANGE || !std::isfinite(value) ||
                value <= 0 || value > max_seconds)
                return fmt::format("'{}': {}", input, problem);
            return {};
        },
        "SECONDS");
}

CLI::Validator readable_file() {
    return CLI::Validator(
        [](std::string& path) -> std::string {
            struct stat st {};
            if (::stat(path.c_str(), &st) != 0) return fmt::format("{}: {}", path, std::strerror(errno));
            if (S_ISDIR(st.st_mode)) return fmt::format("{}: is a directory, not a file", path);
            const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0) return fmt::format("{}: {}", path, std::strerror(errno));
            ::close(fd);
            return {};
        },
        "FILE");
}

}  // namespace rstwatch
