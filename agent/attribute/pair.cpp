#include "pair.h"

#include <functional>
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

PairNamer::PairNamer(const Attributor& attributor, size_t capacity) : attributor_(attributor), capacity_(capacity) {}

size_t PairNamer::KeyHash::operator()(const KeyView& k) const noexcept {
    const std::hash<std::string_view> text;
    size_t h = text(k.client_ip);
    h ^= text(k.server_ip) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h ^ (static_cast<size_t>(k.server_port) * 0x9e3779b97f4a7c15ULL);
}

PairNamer::Named* PairNamer::remembered_entry(const Endpoint& client, const Endpoint& server,
                                              std::optional<int64_t> at_ns) {
    const std::optional<Attributor::Epoch> epoch = attributor_.naming_epoch(at_ns);
    if (!epoch) return nullptr;
    if (epoch != epoch_) {
        named_.clear();
        last_ = nullptr;
        epoch_ = epoch;
    }
    const KeyView key{client.ip, server.ip, server.port};
    if (last_ != nullptr && KeyView(last_->first) == key) return &last_->second;
    auto it = named_.find(key);
    if (it == named_.end()) {
        if (named_.size() >= capacity_) named_.clear();
        it = named_.emplace(Key{client.ip, server.ip, server.port}, Named{name_pair(attributor_, client, server, at_ns), {}})
                 .first;
    }
    last_ = &*it;
    return &it->second;
}

const PairKey& PairNamer::name(const Endpoint& client, const Endpoint& server, std::optional<int64_t> at_ns) {
    if (Named* named = remembered_entry(client, server, at_ns)) return named->pair;
    return unremembered_ = name_pair(attributor_, client, server, at_ns);
}

bool PairNamer::known_ends(const Endpoint& client, const Endpoint& server) {
    auto known = [&](const Endpoint& end) {
        std::optional<IpAddr> addr = IpAddr::parse(end.ip);
        return !addr || attributor_.known(*addr);
    };
    Named* named = remembered_entry(client, server, std::nullopt);  // as known now: always remembered
    if (named == nullptr) return known(client) && known(server);
    if (!named->known_ends) named->known_ends = known(client) && known(server);
    return *named->known_ends;
}

}  // namespace rstwatch
