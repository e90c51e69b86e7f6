#include <gtest/gtest.h>

#include <csignal>

#include "signals.h"

namespace rstwatch {
namespace {

// One test: the requests are process-wide and cannot be withdrawn, so the order matters.
TEST(Signals, DaemonReloadsOnHupCommandStopsOnHup) {
    install_signal_handlers(SignalUse::daemon);
    EXPECT_FALSE(take_reload_request());
    ASSERT_EQ(raise(SIGHUP), 0);
    EXPECT_TRUE(take_reload_request());
    EXPECT_FALSE(take_reload_request()) << "a reload request is taken once";
    EXPECT_FALSE(stop_requested()) << "SIGHUP reloads the agent, it does not stop it";
    ASSERT_EQ(raise(SIGPIPE), 0);  // ignored by the agent: still alive here
    EXPECT_FALSE(stop_requested());

    install_signal_handlers(SignalUse::command);
    ASSERT_EQ(raise(SIGHUP), 0);
    EXPECT_TRUE(stop_requested()) << "a closed terminal stops trace and diagnose";
    EXPECT_FALSE(take_reload_request());
    signal(SIGPIPE, SIG_DFL);
}

}  // namespace
}  // namespace rstwatch
