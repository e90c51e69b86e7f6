#include "pair.h"

#include <tuple>

namespace rstwatch {

bool PairKeyLess::operator()(const PairKey& a, const PairKey& b) const {
    auto key = [](const PairKey& p) {
        return std::tie(p.client.namespace_, p.client.pod, p.client.workload, p.server.namespace_, p.server.pod,
                        p.server.workload, p.server_port);
    };
    return key(a) < key(b);
}

PairKey name_pair(const Attributor& attributor, const Endpoint& client, const Endpoint& server,
                  std::optional<int64_t> at_ns) {
    auto identify = [&](const Endpoint& end) {
        std::optional<IpAddr> addr = IpAddr::parse(end.ip);
        return addr ? attributor.identify(*addr, at_ns) : Identity{"", "", end.ip};
    };
    return PairKey{identify(client), identify(server), server.port};
}

}  // namespace rstwatch
