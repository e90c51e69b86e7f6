#include "write_mode.h"

namespace rstwatch {

std::string_view write_mode_name(WriteMode mode) {
    switch (mode) {
        case WriteMode::tp_btf: return "tp_btf/tcp_sendmsg_locked";
        case WriteMode::fentry: return "fentry/tcp_sendmsg";
        case WriteMode::kprobe: return "kprobe/tcp_sendmsg";
    }
    return "unknown";
}

std::optional<WriteMode> parse_write_mode(std::string_view text) {
    for (WriteMode mode : {WriteMode::tp_btf, WriteMode::fentry, WriteMode::kprobe}) {
        std::string_view full = write_mode_name(mode);
        if (text == full || text == full.substr(0, full.find('/'))) return mode;
    }
    return std::nullopt;
}

std::vector<WriteMode> write_mode_candidates(const WriteHookSupport& support,
                                             std::optional<WriteMode> forced) {
    if (forced) return {*forced};
    std::vector<WriteMode> modes;
    if (support.tp_btf) modes.push_back(WriteMode::tp_btf);
    if (support.fentry) modes.push_back(WriteMode::fentry);
    if (support.kprobe) modes.push_back(WriteMode::kprobe);
    return modes;
}

WriteModeChoice choose_write_mode(
    const std::vector<WriteMode>& candidates, const std::function<int(WriteMode)>& attempt,
    const std::function<void(WriteMode, int, std::optional<WriteMode>)>& on_refused) {
    WriteModeChoice choice;
    for (size_t i = 0; i < candidates.size(); ++i) {
        int err = attempt(candidates[i]);
        if (err == 0) {
            choice.chosen = candidates[i];
            return choice;
        }
        choice.refused.emplace_back(candidates[i], err);
        if (on_refused) {
            std::optional<WriteMode> next;
            if (i + 1 < candidates.size()) next = candidates[i + 1];
            on_refused(candidates[i], err, next);
        }
    }
    return choice;
}

}  // namespace rstwatch
