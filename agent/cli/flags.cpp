#include "flags.h"

#include <vector>

#include "usage.h"

namespace rstwatch {
namespace {

// --ring-buffer-size: the kernel wants a power-of-two multiple of the page size.
std::string validate_ring_buffer_size(const std::string& value) {
    uint64_t bytes = 0;
    try {
        size_t used = 0;
        bytes = std::stoull(value, &used);
        if (used != value.size()) return "must be a number of bytes";
    } catch (const std::exception&) {
        return "must be a number of bytes";
    }
    if (bytes < 4096 || bytes > (1ULL << 30) || (bytes & (bytes - 1)) != 0)
        return "must be a power of two from 4096 to 1073741824 bytes";
    return {};
}

}  // namespace

CLI::Option* add_write_hook_flag(CLI::App& cmd, std::string& value) {
    return cmd.add_option("--write-hook", value, "auto, tp_btf, fentry or kprobe")
        ->check([](const std::string& v) -> std::string {
            if (v == "auto" || parse_write_mode(v)) return {};
            return "must be auto, tp_btf, fentry or kprobe";
        });
}

CLI::Option* add_idle_threshold_flag(CLI::App& cmd, double& seconds, std::string_view scope) {
    return cmd
        .add_option("--idle-threshold", seconds,
                    std::string(scope) + "seconds of idleness after which a write is watched")
        ->check(finite_range(0.01, 86400.0, "seconds"));
}

void add_kernel_size_flags(CLI::App& cmd, LoaderOptions& loader) {
    cmd.add_option("--max-connections", loader.max_connections, "connections tracked in the kernel (with the LRU hash fallback; socket storage has no fixed size)")
        ->check(CLI::Range(1024U, 16U << 20));
    cmd.add_option("--ring-buffer-size", loader.ringbuf_bytes,
                   "bytes of the kernel-to-agent ring buffer: a power of two, 4096 to 1 GiB (~20k records "
                   "per 4 MiB); records that do not fit are counted as lost")
        ->check(validate_ring_buffer_size);
}

void add_agent_credential_flags(CLI::App& cmd, std::optional<std::string>& token_file,
                                std::optional<std::string>& ca_file, CLI::Option* from) {
    auto* token = cmd.add_option("--token-file", token_file,
                                 std::string(from ? "with --from: " : "") +
                                     "bearer token file for a protected agent (default $RSTWATCH_TOKEN_FILE)")
                      ->check(readable_file());
    auto* ca = cmd.add_option(
        "--ca-file", ca_file,
        "with --from https://...: CA bundle that signed the agent's certificate (default $RSTWATCH_CA_FILE)")
                   ->check(readable_file());
    if (from) {
        token->needs(from);
        ca->needs(from);
    }
}

CLI::Option* add_output_flag(CLI::App& cmd, std::string& format, std::initializer_list<const char*> formats,
                             const std::string& help) {
    return cmd.add_option("-o,--output", format, help)
        ->check(CLI::IsMember(std::vector<std::string>(formats.begin(), formats.end())));
}

CLI::Option* add_from_flag(CLI::App& cmd, std::optional<std::string>& url, const std::string& help) {
    return cmd.add_option("--from", url, help)->check(CLI::Validator(
        [](std::string& value) -> std::string {
            if (std::string error = agent_url_error(value); !error.empty()) return error;
            return {};
        },
        "URL|node"));
}

std::string agent_url_error(const std::string& value) {
    if (value == "node") return {};
    std::string rest = value;
    for (const char* scheme : {"http://", "https://"})
        if (rest.rfind(scheme, 0) == 0) rest = rest.substr(std::string(scheme).size());
    if (auto at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
    if (auto slash = rest.find('/'); slash != std::string::npos) rest.resize(slash);
    const auto colon = rest.rfind(':');
    const bool has_port = colon != std::string::npos && colon + 1 < rest.size() && colon > 0 &&
                          rest.find_first_not_of("0123456789", colon + 1) == std::string::npos;
    if (!has_port)
        return "'" + value + "' is not an agent address: http[s]://HOST:PORT, HOST:PORT or node (this node's agent)";
    return {};
}

void add_pod_flags(CLI::App& cmd, PodSelection& selection, CLI::Option* from) {
    auto* ns = cmd.add_option("-n,--namespace", selection.namespace_, "only incidents with an end in this namespace");
    auto* pod = cmd.add_option("--pod", selection.pod, "only incidents with this pod at either end: NAME or NAMESPACE/NAME");
    auto* positional = cmd.add_option("pod", selection.positional_pod, "the same as --pod");
    if (from) {
        ns->needs(from);
        pod->needs(from);
        positional->needs(from);
    }
    positional->excludes(pod);
}

std::string resolve_pod_selection(PodSelection& selection) {
    if (selection.positional_pod) selection.pod = selection.positional_pod;
    if (!selection.pod) return {};
    std::string& pod = *selection.pod;
    if (pod.empty()) return "--pod: needs a pod name";
    if (auto slash = pod.find('/'); slash != std::string::npos) {
        std::string ns = pod.substr(0, slash);
        std::string name = pod.substr(slash + 1);
        if (ns.empty() || name.empty() || name.find('/') != std::string::npos)
            return "--pod: '" + pod + "' is not NAME or NAMESPACE/NAME";
        if (selection.namespace_ && *selection.namespace_ != ns)
            return "--pod: '" + pod + "' is in namespace " + ns + ", not " + *selection.namespace_ + " (--namespace)";
        selection.namespace_ = ns;
        pod = name;
    }
    return {};
}

}  // namespace rstwatch
