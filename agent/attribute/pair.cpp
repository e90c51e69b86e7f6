#include "pair.h"

namespace rstwatch {

PairKey name_pair(const Attributor& attributor, const Endpoint& client, const Endpoint& server) {
    auto identify = [&](const Endpoint& end) {
        std::optional<IpAddr> addr = IpAddr::parse(end.ip);
        return addr ? attributor.identify(*addr) : Identity{"", "", end.ip};
    };
    return PairKey{identify(client), identify(server), server.port};
}

}  // namespace rstwatch
