// Flags shared by several commands, each defined once: the loader's (--write-hook,
// --idle-threshold), the remote agent's credentials (--token-file, --ca-file) and --output.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <string_view>

#include "loader.h"

namespace rstwatch {

// --write-hook auto|tp_btf|fentry|kprobe into `value` (parse_write_mode() once parsed: "auto"
// leaves the choice to the loader).
CLI::Option* add_write_hook_flag(CLI::App& cmd, std::string& value);

// --idle-threshold SECONDS. `scope` prefixes the help ("without --from: ").
CLI::Option* add_idle_threshold_flag(CLI::App& cmd, double& seconds, std::string_view scope = {});

// --ring-buffer-size BYTES and --max-connections N (the agent's kernel-side sizes).
void add_kernel_size_flags(CLI::App& cmd, LoaderOptions& loader);

// --token-file and --ca-file for a running agent that needs credentials or serves https.
// With `from` (the command's --from), both need it.
void add_agent_credential_flags(CLI::App& cmd, std::optional<std::string>& token_file,
                                std::optional<std::string>& ca_file, CLI::Option* from);

// -o,--output FORMAT among `formats` ("table" first), with `help` as its description.
CLI::Option* add_output_flag(CLI::App& cmd, std::string& format, std::initializer_list<const char*> formats,
                             const std::string& help);

// --from URL|node: a running agent (agent_url_error() checks the form at parse time, so a typo is a
// usage error, not a failed connection).
CLI::Option* add_from_flag(CLI::App& cmd, std::optional<std::string>& url, const std::string& help);
std::string agent_url_error(const std::string& value);

// Which pod's incidents: -n/--namespace NS, --pod NAME or NS/NAME, or the pod as the positional
// argument (as in `kubectl rstwatch trace -n NS POD`). With `from`, all three need it.
struct PodSelection {
    std::optional<std::string> namespace_;
    std::optional<std::string> pod;
    std::optional<std::string> positional_pod;
};
void add_pod_flags(CLI::App& cmd, PodSelection& selection, CLI::Option* from);
// Folds the positional pod and NS/NAME into namespace_ and pod; "" or "--pod: <problem>".
std::string resolve_pod_selection(PodSelection& selection);

}  // namespace rstwatch
