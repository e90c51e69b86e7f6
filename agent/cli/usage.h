// How the CLI reports a problem: one line on stderr, "rstwatch: <flag>: <problem>" for usage and
// configuration errors (exit 2, before anything is attached), "rstwatch: <problem>" for runtime
// failures (exit 1). The same format for CLI11's parse errors and the commands' own checks.
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <string_view>

namespace rstwatch {

// Prints "rstwatch: FLAG: PROBLEM" and returns kExitUsage.
int usage_error(std::string_view flag, std::string_view problem);
// Prints "rstwatch: MESSAGE" and returns kExitFailure.
int command_failed(std::string_view message);

// CLI11's message for a parse error, as one "rstwatch: <flag>: <problem>" line naming the flag
// first; `command` ("trace", or "" before one was named) points to its help.
std::string usage_line_for(const CLI::Error& error, std::string_view command);

// Validators that reject nan and infinities (CLI::Range lets nan through) and say the bound in
// words, not as a 309-digit number.
CLI::Validator finite_range(double min, double max, std::string_view unit);
CLI::Validator positive_seconds(double max_seconds);
// A file that exists and can be read now: "PATH: No such file or directory".
CLI::Validator readable_file();

}  // namespace rstwatch
