// Subcommands of the rstwatch binary.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "incident.h"
#include "loader.h"

namespace rstwatch {

struct TraceOptions {
    LoaderOptions loader;
    bool json = false;
    std::optional<double> duration_s;
    std::optional<uint16_t> port;
    std::optional<uint32_t> pid;
    std::optional<std::string> comm;
    std::vector<Cause> causes;
};

int run_trace(const TraceOptions& options);
int run_check(const LoaderOptions& options);

// Exit codes shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // rstwatch cannot run here / runtime failure
inline constexpr int kExitUsage = 2;    // bad flags, values or configuration

}  // namespace rstwatch
