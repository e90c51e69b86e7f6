#pragma once

namespace rstwatch {

// The agent's default listen address: loopback only, so a laptop or VM run does not expose
// the incident stream; the DaemonSet sets --listen 0.0.0.0:9740 (and protects it). Clients'
// `--from node` falls back to it.
inline constexpr const char* kDefaultListen = "127.0.0.1:9740";

}  // namespace rstwatch
