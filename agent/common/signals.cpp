#include "signals.h"

#include <csignal>

namespace rstwatch {
namespace {

volatile std::sig_atomic_t g_stop_requested = 0;
volatile std::sig_atomic_t g_reload_requested = 0;

void on_stop_signal(int) { g_stop_requested = 1; }
void on_reload_signal(int) { g_reload_requested = 1; }

}  // namespace

void install_signal_handlers(SignalUse use) {
    struct sigaction action {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;
    action.sa_handler = on_stop_signal;
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
    action.sa_handler = use == SignalUse::daemon ? on_reload_signal : on_stop_signal;
    sigaction(SIGHUP, &action, nullptr);
    signal(SIGPIPE, use == SignalUse::daemon ? SIG_IGN : SIG_DFL);
}

bool stop_requested() { return g_stop_requested != 0; }
void request_stop() { g_stop_requested = 1; }

bool take_reload_request() {
    if (!g_reload_requested) return false;
    g_reload_requested = 0;
    return true;
}

}  // namespace rstwatch
