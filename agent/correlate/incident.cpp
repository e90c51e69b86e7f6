// Names of causes and observers, as printed, exported and parsed back.
#include "incident.h"

#include <array>

namespace rstwatch {
namespace {

constexpr std::array<std::string_view, kCauseCount> kCauseNames = {
    "write_after_fin", "idle_close_race", "reset_other", "abort_on_close", "data_after_close",
};

}  // namespace

std::string_view to_string(Cause cause) {
    auto i = static_cast<size_t>(cause);
    return i < kCauseNames.size() ? kCauseNames[i] : std::string_view("unknown");
}

std::string_view to_string(Observer observer) {
    return observer == Observer::client ? "client" : "server";
}

std::optional<Cause> parse_cause(std::string_view name) {
    for (size_t i = 0; i < kCauseNames.size(); ++i)
        if (kCauseNames[i] == name) return static_cast<Cause>(i);
    return std::nullopt;
}

}  // namespace rstwatch
