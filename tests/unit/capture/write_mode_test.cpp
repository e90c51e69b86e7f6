// The write-hook selection: preference order, fallback on refusal, forced modes.
#include <gtest/gtest.h>

#include <cerrno>
#include <map>

#include "write_mode.h"

using rstwatch::WriteMode;

namespace {

// A fake kernel: each mode attaches or is refused with a given errno.
struct FakeKernel {
    std::map<WriteMode, int> result;  // 0 = attaches
    std::vector<WriteMode> tried;
    int attempt(WriteMode mode) {
        tried.push_back(mode);
        auto it = result.find(mode);
        return it == result.end() ? -ENOENT : it->second;
    }
};

}  // namespace

TEST(WriteMode, CandidatesFollowPreferenceOrder) {
    rstwatch::WriteHookSupport all{true, true, true};
    EXPECT_EQ(rstwatch::write_mode_candidates(all, std::nullopt),
              (std::vector<WriteMode>{WriteMode::tp_btf, WriteMode::fentry, WriteMode::kprobe}));
    rstwatch::WriteHookSupport old_kernel{false, true, true};  // before Linux 6.16
    EXPECT_EQ(rstwatch::write_mode_candidates(old_kernel, std::nullopt),
              (std::vector<WriteMode>{WriteMode::fentry, WriteMode::kprobe}));
    rstwatch::WriteHookSupport none{};
    EXPECT_TRUE(rstwatch::write_mode_candidates(none, std::nullopt).empty());
}

TEST(WriteMode, ForcedModeIsTriedAloneEvenIfUnsupported) {
    rstwatch::WriteHookSupport no_kprobes{true, true, false};
    EXPECT_EQ(rstwatch::write_mode_candidates(no_kprobes, WriteMode::kprobe),
              (std::vector<WriteMode>{WriteMode::kprobe}));
}

TEST(WriteMode, FallsBackWhenFentryIsRefused) {
    // Like a node where fentry is refused with EPERM (lockdown) but kprobes work.
    FakeKernel kernel{{{WriteMode::fentry, -EPERM}, {WriteMode::kprobe, 0}}, {}};
    std::vector<std::string> log;
    auto choice = rstwatch::choose_write_mode(
        {WriteMode::fentry, WriteMode::kprobe}, [&](WriteMode m) { return kernel.attempt(m); },
        [&](WriteMode m, int err, std::optional<WriteMode> next) {
            log.push_back(std::string(rstwatch::write_mode_name(m)) + " " + std::to_string(err) + " -> " +
                          (next ? std::string(rstwatch::write_mode_name(*next)) : "none"));
        });
    ASSERT_TRUE(choice.chosen);
    EXPECT_EQ(*choice.chosen, WriteMode::kprobe);
    ASSERT_EQ(choice.refused.size(), 1u);
    EXPECT_EQ(choice.refused[0].second, -EPERM);
    ASSERT_EQ(log.size(), 1u);  // one line per refusal
    EXPECT_EQ(log[0], "fentry/tcp_sendmsg " + std::to_string(-EPERM) + " -> kprobe/tcp_sendmsg");
}

TEST(WriteMode, StopsAtFirstSuccess) {
    FakeKernel kernel{{{WriteMode::tp_btf, 0}, {WriteMode::fentry, 0}}, {}};
    auto choice = rstwatch::choose_write_mode({WriteMode::tp_btf, WriteMode::fentry, WriteMode::kprobe},
                                              [&](WriteMode m) { return kernel.attempt(m); });
    EXPECT_EQ(choice.chosen, WriteMode::tp_btf);
    EXPECT_EQ(kernel.tried, (std::vector<WriteMode>{WriteMode::tp_btf}));
}

TEST(WriteMode, AllRefusedGivesNoChoiceAndEveryReason) {
    // This machine: no tcp_sendmsg_locked tracepoint forced off, fentry EPERM, no kprobes.
    FakeKernel kernel{{{WriteMode::fentry, -EPERM}, {WriteMode::kprobe, -ENOENT}}, {}};
    int refusals_logged = 0;
    auto choice = rstwatch::choose_write_mode({WriteMode::fentry, WriteMode::kprobe},
                                              [&](WriteMode m) { return kernel.attempt(m); },
                                              [&](WriteMode, int, std::optional<WriteMode>) { ++refusals_logged; });
    EXPECT_FALSE(choice.chosen);
    EXPECT_EQ(choice.refused.size(), 2u);
    EXPECT_EQ(refusals_logged, 2);
}

TEST(WriteMode, ParsesShortAndFullNames) {
    EXPECT_EQ(rstwatch::parse_write_mode("tp_btf"), WriteMode::tp_btf);
    EXPECT_EQ(rstwatch::parse_write_mode("fentry/tcp_sendmsg"), WriteMode::fentry);
    EXPECT_EQ(rstwatch::parse_write_mode("kprobe"), WriteMode::kprobe);
    EXPECT_FALSE(rstwatch::parse_write_mode("uprobe"));
    EXPECT_FALSE(rstwatch::parse_write_mode(""));
}
