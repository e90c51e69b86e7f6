#include "flags.h"

#include <vector>

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
                    std::string(scope) + "seconds of idleness after which a write is watched (default 1)")
        ->check(CLI::Range(0.01, 86400.0));
}

void add_kernel_size_flags(CLI::App& cmd, LoaderOptions& loader) {
    cmd.add_option("--max-connections", loader.max_connections, "connections tracked in the kernel (LRU, default 131072)")
        ->check(CLI::Range(1024U, 16U << 20));
    cmd.add_option("--ring-buffer-size", loader.ringbuf_bytes,
                   "bytes of the kernel-to-agent ring buffer: a power of two, 4096 to 1 GiB (default 4 MiB, "
                   "~20k records); records that do not fit are counted as lost")
        ->check(validate_ring_buffer_size);
}

void add_agent_credential_flags(CLI::App& cmd, std::optional<std::string>& token_file,
                                std::optional<std::string>& ca_file, CLI::Option* from) {
    auto* token = cmd.add_option("--token-file", token_file,
                                 std::string(from ? "with --from: " : "") +
                                     "bearer token file for a protected agent (default $RSTWATCH_TOKEN_FILE)");
    auto* ca = cmd.add_option(
        "--ca-file", ca_file,
        "with --from https://...: CA bundle that signed the agent's certificate (default $RSTWATCH_CA_FILE)");
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

}  // namespace rstwatch
