// The process's stop and reload signals, installed once by the command that runs.
// SIGINT/SIGTERM request a stop; no SA_RESTART, so a blocking poll() returns EINTR at once and
// the loop sees the request.
#pragma once

namespace rstwatch {

enum class SignalUse {
    // The agent: SIGHUP reloads (the pod map), SIGPIPE is ignored (a follower going away must
    // not kill it).
    daemon,
    // trace and diagnose: SIGHUP (the terminal closed) stops like SIGTERM, SIGPIPE keeps its
    // default (`rstwatch trace | head` ends when head does).
    command,
};

void install_signal_handlers(SignalUse use);

bool stop_requested();
void request_stop();  // as if SIGTERM arrived (a deadline, a fatal error in another thread)
// True once per SIGHUP received since the last call.
bool take_reload_request();

}  // namespace rstwatch
