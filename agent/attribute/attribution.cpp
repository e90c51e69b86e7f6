// Endpoint attribution: addresses, the pod map file, Kubernetes pods/services, precedence.
#include "attribution.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "clock.h"

namespace rstwatch {

// ---- addresses -------------------------------------------------------------------

namespace {

constexpr uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

// NUL-terminated copy for inet_pton; false if text cannot be an address at all.
bool to_cstr(std::string_view text, char (&buf)[INET6_ADDRSTRLEN + 1]) {
    if (text.empty() || text.size() > INET6_ADDRSTRLEN) return false;
    if (text.find('\0') != std::string_view::npos) return false;
    std::memcpy(buf, text.data(), text.size());
    buf[text.size()] = '\0';
    return true;
}

}  // namespace

std::optional<IpAddr> IpAddr::parse(std::string_view text) {
    char buf[INET6_ADDRSTRLEN + 1];
    if (!to_cstr(text, buf)) return std::nullopt;
    IpAddr addr;
    uint8_t v4[4];
    if (inet_pton(AF_INET, buf, v4) == 1) {
        std::memcpy(addr.bytes.data(), kV4MappedPrefix, 12);
        std::memcpy(addr.bytes.data() + 12, v4, 4);
        return addr;
    }
    if (inet_pton(AF_INET6, buf, addr.bytes.data()) == 1) return addr;
    return std::nullopt;
}

IpAddr IpAddr::from_bytes(const uint8_t bytes[16]) {
    IpAddr addr;
    std::memcpy(addr.bytes.data(), bytes, 16);
    return addr;
}

bool IpAddr::is_v4() const {
    return std::memcmp(bytes.data(), kV4MappedPrefix, 12) == 0;
}

std::string IpAddr::str() const {
    char buf[INET6_ADDRSTRLEN];
    if (is_v4()) {
        // Every reset names both ends: to_chars, not inet_ntop's sprintf (a tenth of the
        // agent's time in a reset storm without Kubernetes).
        char* p = buf;
        for (size_t i = 12; i < 16; ++i) {
            if (i > 12) *p++ = '.';
            p = std::to_chars(p, buf + sizeof buf, bytes[i]).ptr;
        }
        return std::string(buf, p);
    }
    const char* out = inet_ntop(AF_INET6, bytes.data(), buf, sizeof buf);
    return out ? std::string(out) : std::string();
}

size_t IpAddrHash::operator()(const IpAddr& a) const noexcept {
    uint64_t hi, lo;
    std::memcpy(&hi, a.bytes.data(), 8);
    std::memcpy(&lo, a.bytes.data() + 8, 8);
    uint64_t h = hi * 0x9E3779B97F4A7C15ULL ^ lo;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 29;
    return static_cast<size_t>(h);
}

IpAddr mask_address(const IpAddr& addr, int prefix_len) {
    IpAddr out = addr;
    prefix_len = std::clamp(prefix_len, 0, 128);
    for (int i = 0; i < 16; ++i) {
        int bits = std::clamp(prefix_len - 8 * i, 0, 8);
        out.bytes[i] &= static_cast<uint8_t>(0xff00u >> bits);
    }
    return out;
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
    size_t slash = text.rfind('/');
    if (slash == std::string_view::npos) return std::nullopt;
    std::string_view addr_text = text.substr(0, slash);
    std::string_view len_text = text.substr(slash + 1);
    if (len_text.empty() || len_text.size() > 3) return std::nullopt;
    int len = 0;
    for (char c : len_text) {
        if (c < '0' || c > '9') return std::nullopt;
        len = len * 10 + (c - '0');
    }
    auto addr = IpAddr::parse(addr_text);
    if (!addr) return std::nullopt;
    bool ipv6_notation = addr_text.find(':') != std::string_view::npos;
    if (ipv6_notation) {
        if (len > 128) return std::nullopt;
    } else {
        if (len > 32) return std::nullopt;
        len += 96;
    }
    return Cidr{mask_address(*addr, len), len};
}

bool Cidr::contains(const IpAddr& addr) const {
    return mask_address(addr, prefix_len) == base;
}

bool Cidr::has_host_bits(const IpAddr& addr) const {
    return mask_address(addr, prefix_len) != addr;
}

std::string Cidr::str() const {
    if (base.is_v4() && prefix_len >= 96) return base.str() + "/" + std::to_string(prefix_len - 96);
    char buf[INET6_ADDRSTRLEN];
    const char* out = inet_ntop(AF_INET6, base.bytes.data(), buf, sizeof buf);
    return std::string(out ? out : "") + "/" + std::to_string(prefix_len);
}

// ---- pod map file ------------------------------------------------------------------

namespace {

int line_of(const YAML::Node& node) {
    const YAML::Mark mark = node.Mark();
    return mark.is_null() ? 1 : mark.line + 1;
}

// "line N: what", always one line: control characters in `what` (yaml-cpp quotes the offending
// character, which may be a newline) are escaped.
std::string at_line(int line, const std::string& what) {
    std::string text = "line " + std::to_string(line) + ": ";
    for (unsigned char c : what) {
        if (c < 0x20 || c == 0x7f) {
            char escaped[8];
            std::snprintf(escaped, sizeof(escaped), "\\x%02x", c);
            text += escaped;
        } else {
            text += static_cast<char>(c);
        }
    }
    return text;
}

// Counts the documents of a YAML stream, at most `limit` of them: yaml-cpp 0.7 can report
// documents without end on some malformed inputs (LoadAll then allocates without bound).
class DocumentCounter : public YAML::EventHandler {
public:
    void OnDocumentStart(const YAML::Mark& mark) override {
        ++documents_;
        if (documents_ == 2) second_line_ = mark.line + 1;
        first_content_pending_ = documents_ == 2;
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { content(mark); }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { content(mark); }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t, const std::string&) override {
        content(mark);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {
        content(mark);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
        content(mark);
    }
    void OnMapEnd() override {}
    // Where the second document's content starts (its "---" line if it has none).
    int second_line() const { return second_line_; }

private:
    void content(const YAML::Mark& mark) {
        if (!first_content_pending_) return;
        first_content_pending_ = false;
        second_line_ = mark.line + 1;
    }
    int documents_ = 0;
    int second_line_ = 1;
    bool first_content_pending_ = false;
};

// The line of the second document, or 0 when there is at most one.
int second_document_line(std::string_view yaml_text) {
    std::istringstream in{std::string(yaml_text)};
    YAML::Parser parser(in);
    DocumentCounter counter;
    if (!parser.HandleNextDocument(counter)) return 0;
    if (!parser.HandleNextDocument(counter)) return 0;
    return std::max(counter.second_line(), 1);
}

// One-line form of a YAML scalar for messages.
std::string q(const std::string& s) {
    std::string out = "'";
    for (char c : s) {
        if (c == '\n' || c == '\r') out += ' ';
        else out += c;
    }
    return out + "'";
}

struct CidrHash {
    size_t operator()(const Cidr& c) const noexcept {
        return IpAddrHash{}(c.base) ^ (static_cast<size_t>(c.prefix_len) * 0x9E3779B97F4A7C15ULL);
    }
};

struct EntryFields {
    // key -> (value, line of the key)
    std::optional<std::pair<std::string, int>> ip, cidr, name, namespace_, pod, workload;
};

bool parse_entry(const YAML::Node& node, PodMapEntry* entry, std::string* error) {
    const int entry_line = line_of(node);
    if (!node.IsMap()) {
        *error = at_line(entry_line, "an endpoint must be a map with 'ip' or 'cidr'");
        return false;
    }
    EntryFields f;
    for (auto it = node.begin(); it != node.end(); ++it) {
        // Copies: the iterator's pair is a temporary (references into it would dangle).
        const YAML::Node key = it->first;
        const YAML::Node value = it->second;
        const int key_line = line_of(key);
        if (!key.IsScalar()) {
            *error = at_line(key_line, "endpoint keys must be plain names");
            return false;
        }
        const std::string& k = key.Scalar();
        std::optional<std::pair<std::string, int>>* slot = nullptr;
        if (k == "ip") slot = &f.ip;
        else if (k == "cidr") slot = &f.cidr;
        else if (k == "name") slot = &f.name;
        else if (k == "namespace") slot = &f.namespace_;
        else if (k == "pod") slot = &f.pod;
        else if (k == "workload") slot = &f.workload;
        else {
            *error = at_line(key_line, "unknown key " + q(k) +
                                           " (expected ip, cidr, name, namespace, pod, workload)");
            return false;
        }
        if (*slot) {
            *error = at_line(key_line, "duplicate key " + q(k) + " (first at line " +
                                           std::to_string((*slot)->second) + ")");
            return false;
        }
        if (!value.IsScalar()) {
            *error = at_line(key_line, q(k) + (value.IsNull() || !value.IsDefined()
                                                        ? " has no value"
                                                        : " must be a single value, not a list or map"));
            return false;
        }
        if (value.Scalar().empty()) {
            *error = at_line(key_line, q(k) + " is empty");
            return false;
        }
        if (std::any_of(value.Scalar().begin(), value.Scalar().end(),
                        [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
            // Also catches an unterminated quote, which yaml-cpp 0.7 lets run to the end of the file.
            *error = at_line(key_line, q(k) + " contains a line break or control character");
            return false;
        }
        *slot = std::make_pair(value.Scalar(), key_line);
    }

    // Range: exactly one of ip / cidr.
    if (f.ip && f.cidr) {
        *error = at_line(f.cidr->second, "an endpoint has either 'ip' or 'cidr', not both (ip at line " +
                                             std::to_string(f.ip->second) + ")");
        return false;
    }
    if (!f.ip && !f.cidr) {
        *error = at_line(entry_line, "endpoint needs 'ip' or 'cidr'");
        return false;
    }
    if (f.ip) {
        auto addr = IpAddr::parse(f.ip->first);
        if (!addr) {
            std::string what = "invalid ip " + q(f.ip->first);
            if (f.ip->first.find('/') != std::string::npos) what += " (use 'cidr' for a range)";
            *error = at_line(f.ip->second, what);
            return false;
        }
        entry->range = Cidr::host(*addr);
    } else {
        const std::string& text = f.cidr->first;
        auto range = Cidr::parse(text);
        if (!range) {
            *error = at_line(f.cidr->second, "invalid cidr " + q(text) +
                                                 " (expected ADDRESS/PREFIX, e.g. 10.244.1.0/24 or fd00::/64)");
            return false;
        }
        // Cidr::parse masks; the original address tells whether host bits were set.
        auto written = IpAddr::parse(text.substr(0, text.rfind('/')));
        if (written && range->has_host_bits(*written)) {
            *error = at_line(f.cidr->second, "cidr " + q(text) + " has host bits set (network is " +
                                                 range->str() + "; use 'ip' for one address)");
            return false;
        }
        entry->range = *range;
    }

    // Identity: `name`, or `pod` + `namespace` (+ `workload`).
    if (f.name) {
        for (const auto* other : {&f.pod, &f.namespace_, &f.workload}) {
            if (*other) {
                const char* key = other == &f.pod ? "pod" : other == &f.namespace_ ? "namespace" : "workload";
                *error = at_line((*other)->second, std::string("'") + key +
                                                       "' cannot be combined with 'name' (line " +
                                                       std::to_string(f.name->second) +
                                                       "): 'name' is for non-pod endpoints");
                return false;
            }
        }
        entry->identity = Identity{"", "", f.name->first};
        return true;
    }
    if (!f.pod) {
        if (f.namespace_ || f.workload) {
            int line = f.namespace_ ? f.namespace_->second : f.workload->second;
            *error = at_line(line, std::string("'") + (f.namespace_ ? "namespace" : "workload") +
                                       "' needs 'pod' (or use 'name' for a non-pod endpoint)");
        } else {
            *error = at_line(entry_line, "endpoint needs 'name' or 'pod' + 'namespace'");
        }
        return false;
    }
    if (!f.namespace_) {
        *error = at_line(f.pod->second, "'pod' requires 'namespace'");
        return false;
    }
    entry->identity = Identity{f.namespace_->first, f.pod->first,
                               f.workload ? f.workload->first : f.pod->first};
    return true;
}

}  // namespace

std::optional<PodMap> PodMap::parse(std::string_view yaml_text, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    std::vector<YAML::Node> docs;
    try {
        if (int second = second_document_line(yaml_text)) {
            *error = at_line(second, "expected one YAML document, found more");
            return std::nullopt;
        }
        YAML::Node doc = YAML::Load(std::string(yaml_text));
        if (doc.IsDefined() && !doc.IsNull()) docs.push_back(doc);
    } catch (const std::bad_alloc&) {
        *error = at_line(1, "the YAML parser ran out of memory on this file");
        return std::nullopt;
    } catch (const YAML::Exception& e) {
        // At the end of input yaml-cpp points past the last line: name the last line instead.
        int last_line = static_cast<int>(std::count(yaml_text.begin(), yaml_text.end(), '\n'));
        if (yaml_text.empty() || yaml_text.back() != '\n') ++last_line;
        int line = e.mark.is_null() ? 1 : e.mark.line + 1;
        *error = at_line(std::clamp(line, 1, std::max(last_line, 1)), e.msg);
        return std::nullopt;
    }
    if (docs.size() > 1) {
        *error = at_line(line_of(docs[1]), "expected one YAML document, found more");
        return std::nullopt;
    }
    const char* shape = "the pod map must be a map with 'endpoints' (a list)";
    if (docs.empty() || !docs[0].IsMap()) {
        *error = at_line(docs.empty() ? 1 : line_of(docs[0]), shape);
        return std::nullopt;
    }
    const YAML::Node& root = docs[0];
    std::optional<YAML::Node> endpoints;
    int endpoints_line = 0;
    for (auto it = root.begin(); it != root.end(); ++it) {
        const int key_line = line_of(it->first);
        if (!it->first.IsScalar() || it->first.Scalar() != "endpoints") {
            *error = at_line(key_line, "unknown key " +
                                           (it->first.IsScalar() ? q(it->first.Scalar()) : "(not a name)") +
                                           " (expected 'endpoints')");
            return std::nullopt;
        }
        if (endpoints) {
            *error = at_line(key_line, "duplicate key 'endpoints' (first at line " +
                                           std::to_string(endpoints_line) + ")");
            return std::nullopt;
        }
        endpoints = it->second;
        endpoints_line = key_line;
    }
    if (!endpoints) {
        *error = at_line(line_of(root), shape);
        return std::nullopt;
    }
    if (!endpoints->IsNull() && !endpoints->IsSequence()) {
        *error = at_line(endpoints_line, "'endpoints' must be a list");
        return std::nullopt;
    }

    PodMap map;
    if (endpoints->IsSequence()) {
        std::unordered_map<Cidr, int, CidrHash> seen;  // range -> line
        for (const auto& node : *endpoints) {  // a temporary iterator_value, lifetime-extended
            PodMapEntry entry;
            entry.line = line_of(node);
            if (!parse_entry(node, &entry, error)) return std::nullopt;
            auto [it, inserted] = seen.emplace(entry.range, entry.line);
            if (!inserted) {
                *error = at_line(entry.line, "range " + entry.range.str() +
                                                 " is already mapped by the entry at line " +
                                                 std::to_string(it->second));
                return std::nullopt;
            }
            map.entries_.push_back(std::move(entry));
        }
    }
    std::stable_sort(map.entries_.begin(), map.entries_.end(),
                     [](const PodMapEntry& a, const PodMapEntry& b) {
                         return a.range.prefix_len > b.range.prefix_len;
                     });
    for (size_t i = 0; i < map.entries_.size(); ++i) {
        const Cidr& range = map.entries_[i].range;
        if (map.tables_.empty() || map.tables_.back().prefix_len != range.prefix_len)
            map.tables_.push_back(PrefixTable{range.prefix_len, {}});
        map.tables_.back().by_network.emplace(range.base, i);
    }
    error->clear();
    return map;
}

std::optional<PodMap> PodMap::load_file(const std::string& path, std::string* error) {
    std::string scratch;
    if (!error) error = &scratch;
    std::string text;
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *error = path + ": cannot read: " + std::strerror(errno);
        return std::nullopt;
    }
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            *error = path + ": cannot read: " + std::strerror(errno);  // e.g. a directory
            ::close(fd);
            return std::nullopt;
        }
        if (n == 0) break;
        text.append(buf, static_cast<size_t>(n));
    }
    ::close(fd);
    auto map = parse(text, error);
    if (!map) *error = path + ": " + *error;
    return map;
}

const PodMapEntry* PodMap::lookup(const IpAddr& addr) const {
    for (const PrefixTable& table : tables_) {
        auto it = table.by_network.find(mask_address(addr, table.prefix_len));
        if (it != table.by_network.end()) return &entries_[it->second];
    }
    return nullptr;
}

// ---- cluster state ---------------------------------------------------------------------

void ClusterState::IpClaims::claim(const IpAddr& ip, const std::string& uid) {
    auto& uids = claims_[ip];
    if (std::find(uids.begin(), uids.end(), uid) == uids.end()) uids.push_back(uid);
}

void ClusterState::IpClaims::release(const IpAddr& ip, const std::string& uid) {
    auto it = claims_.find(ip);
    if (it == claims_.end()) return;
    auto& uids = it->second;
    uids.erase(std::remove(uids.begin(), uids.end(), uid), uids.end());
    if (uids.empty()) claims_.erase(it);
}

const std::string* ClusterState::IpClaims::holder(const IpAddr& ip) const {
    auto it = claims_.find(ip);
    return it == claims_.end() ? nullptr : &it->second.back();
}

namespace {

std::string name_key(const std::string& namespace_, const std::string& name) {
    return namespace_ + "/" + name;
}

bool contains_ip(const std::vector<IpAddr>& ips, const IpAddr& ip) {
    return std::find(ips.begin(), ips.end(), ip) != ips.end();
}

}  // namespace

ClusterState::ClusterState(std::function<int64_t()> clock)
    : clock_(clock ? std::move(clock) : std::function<int64_t()>(monotonic_ns)) {}

ClusterState::Holders ClusterState::holders_locked(const std::vector<IpAddr>& ips) const {
    Holders holders;
    holders.reserve(ips.size());
    for (const IpAddr& ip : ips) holders.emplace_back(ip, lookup_locked(ip));
    return holders;
}

void ClusterState::note_changes_locked(const Holders& before) {
    const int64_t now = clock_();
    bool changed = false;
    for (const auto& [ip, was] : before) {
        if (lookup_locked(ip) == was) continue;
        changed = true;
        // An IP first learned now has no former holder: the pod likely held it already when an
        // event on it happened (the watch is late), so that event gets the pod known now.
        if (!was) continue;
        auto& formers = former_holders_[ip];
        if (!formers.empty() && formers.back().until_ns == now && formers.back().identity == *was) continue;
        formers.push_back(FormerHolder{*was, now});
        former_order_.emplace_back(ip, now);
    }
    // Only changes of what lookups answer count (a pod's status updates change no name).
    if (changed) {
        ++version_.generation;
        version_.changed_ns = now;
    }
    // Expired or beyond the bound: the oldest go first (the front of their IP's list too).
    while (!former_order_.empty() &&
           (former_order_.front().second + kFormerHolderKeepNs < now || former_order_.size() > kMaxFormerHolders)) {
        auto it = former_holders_.find(former_order_.front().first);
        if (it != former_holders_.end()) {
            it->second.pop_front();
            if (it->second.empty()) former_holders_.erase(it);
        }
        former_order_.pop_front();
    }
}

namespace {

void append_ips(std::vector<IpAddr>& out, const std::vector<IpAddr>& ips) {
    out.insert(out.end(), ips.begin(), ips.end());
}

}  // namespace

void ClusterState::upsert_pod_locked(PodInfo pod) {
    static const std::vector<IpAddr> kNone;
    const std::vector<IpAddr>& held = pod.holds_ips() ? pod.ips : kNone;
    auto it = pods_by_uid_.find(pod.uid);
    if (it != pods_by_uid_.end()) {
        const PodInfo& old = it->second;
        if (old.holds_ips())
            for (const IpAddr& ip : old.ips)
                if (!contains_ip(held, ip)) pod_uid_by_ip_.release(ip, old.uid);
        if (old.namespace_ != pod.namespace_ || old.name != pod.name) {  // not expected; keep counts right
            auto n = pod_uids_by_name_.find(name_key(old.namespace_, old.name));
            if (n != pod_uids_by_name_.end() && --n->second == 0) pod_uids_by_name_.erase(n);
            ++pod_uids_by_name_[name_key(pod.namespace_, pod.name)];
        }
    } else {
        ++pod_uids_by_name_[name_key(pod.namespace_, pod.name)];
    }
    for (const IpAddr& ip : held) pod_uid_by_ip_.claim(ip, pod.uid);
    std::string uid = pod.uid;
    pods_by_uid_.insert_or_assign(std::move(uid), std::move(pod));
}

void ClusterState::replace_pods(std::vector<PodInfo> pods) {
    // Oldest first, so that when two listed pods report the same IP the newest holds it.
    std::stable_sort(pods.begin(), pods.end(),
                     [](const PodInfo& a, const PodInfo& b) { return a.created < b.created; });
    std::lock_guard lock(mutex_);
    std::vector<IpAddr> affected;
    for (const auto& [uid, old] : pods_by_uid_) append_ips(affected, old.ips);
    for (const PodInfo& pod : pods) append_ips(affected, pod.ips);
    const Holders before = holders_locked(affected);
    pods_by_uid_.clear();
    pod_uid_by_ip_.clear();
    pod_uids_by_name_.clear();
    for (PodInfo& pod : pods) upsert_pod_locked(std::move(pod));
    note_changes_locked(before);
}

void ClusterState::upsert_pod(PodInfo pod) {
    std::lock_guard lock(mutex_);
    std::vector<IpAddr> affected = pod.ips;
    if (auto it = pods_by_uid_.find(pod.uid); it != pods_by_uid_.end()) append_ips(affected, it->second.ips);
    const Holders before = holders_locked(affected);
    upsert_pod_locked(std::move(pod));
    note_changes_locked(before);
}

void ClusterState::delete_pod(const PodInfo& pod) {
    std::lock_guard lock(mutex_);
    std::vector<IpAddr> affected = pod.ips;
    auto it = pods_by_uid_.find(pod.uid);
    if (it != pods_by_uid_.end()) append_ips(affected, it->second.ips);
    const Holders before = holders_locked(affected);
    // Release what the event's object claims too (harmless if it claims nothing).
    for (const IpAddr& ip : pod.ips) pod_uid_by_ip_.release(ip, pod.uid);
    if (it != pods_by_uid_.end()) {
        const PodInfo& stored = it->second;
        for (const IpAddr& ip : stored.ips) pod_uid_by_ip_.release(ip, stored.uid);
        auto n = pod_uids_by_name_.find(name_key(stored.namespace_, stored.name));
        if (n != pod_uids_by_name_.end() && --n->second == 0) pod_uids_by_name_.erase(n);
        pods_by_uid_.erase(it);
    }
    note_changes_locked(before);
}

void ClusterState::upsert_service_locked(ServiceInfo service) {
    auto it = services_by_uid_.find(service.uid);
    if (it != services_by_uid_.end())
        for (const IpAddr& ip : it->second.cluster_ips)
            if (!contains_ip(service.cluster_ips, ip)) service_uid_by_ip_.release(ip, service.uid);
    for (const IpAddr& ip : service.cluster_ips) service_uid_by_ip_.claim(ip, service.uid);
    std::string uid = service.uid;
    services_by_uid_.insert_or_assign(std::move(uid), std::move(service));
}

void ClusterState::replace_services(std::vector<ServiceInfo> services) {
    std::lock_guard lock(mutex_);
    std::vector<IpAddr> affected;
    for (const auto& [uid, old] : services_by_uid_) append_ips(affected, old.cluster_ips);
    for (const ServiceInfo& svc : services) append_ips(affected, svc.cluster_ips);
    const Holders before = holders_locked(affected);
    services_by_uid_.clear();
    service_uid_by_ip_.clear();
    for (ServiceInfo& svc : services) upsert_service_locked(std::move(svc));
    note_changes_locked(before);
}

void ClusterState::upsert_service(ServiceInfo service) {
    std::lock_guard lock(mutex_);
    std::vector<IpAddr> affected = service.cluster_ips;
    if (auto it = services_by_uid_.find(service.uid); it != services_by_uid_.end())
        append_ips(affected, it->second.cluster_ips);
    const Holders before = holders_locked(affected);
    upsert_service_locked(std::move(service));
    note_changes_locked(before);
}

void ClusterState::delete_service(const ServiceInfo& service) {
    std::lock_guard lock(mutex_);
    std::vector<IpAddr> affected = service.cluster_ips;
    auto it = services_by_uid_.find(service.uid);
    if (it != services_by_uid_.end()) append_ips(affected, it->second.cluster_ips);
    const Holders before = holders_locked(affected);
    for (const IpAddr& ip : service.cluster_ips) service_uid_by_ip_.release(ip, service.uid);
    if (it != services_by_uid_.end()) {
        for (const IpAddr& ip : it->second.cluster_ips) service_uid_by_ip_.release(ip, service.uid);
        services_by_uid_.erase(it);
    }
    note_changes_locked(before);
}

std::optional<Identity> ClusterState::lookup(const IpAddr& addr, std::optional<int64_t> at_ns) const {
    std::lock_guard lock(mutex_);
    if (at_ns) {
        // Former holders in the order they let the IP go: the first let go after at_ns held it then.
        if (auto it = former_holders_.find(addr); it != former_holders_.end())
            for (const FormerHolder& former : it->second)
                if (former.until_ns > *at_ns) return former.identity;
    }
    return lookup_locked(addr);
}

ClusterState::Version ClusterState::version() const {
    std::lock_guard lock(mutex_);
    return version_;
}

size_t ClusterState::former_holder_count() const {
    std::lock_guard lock(mutex_);
    return former_order_.size();
}

std::optional<Identity> ClusterState::lookup_locked(const IpAddr& addr) const {
    if (const std::string* uid = pod_uid_by_ip_.holder(addr)) {
        auto it = pods_by_uid_.find(*uid);
        if (it != pods_by_uid_.end()) {
            const PodInfo& pod = it->second;
            if (pod.host_network) return Identity{"", "", "node"};
            return Identity{pod.namespace_, pod.name, pod.workload};
        }
    }
    if (const std::string* uid = service_uid_by_ip_.holder(addr)) {
        auto it = services_by_uid_.find(*uid);
        if (it != services_by_uid_.end()) return Identity{it->second.namespace_, "", "svc/" + it->second.name};
    }
    return std::nullopt;
}

bool ClusterState::pod_exists(const std::string& namespace_, const std::string& pod) const {
    std::lock_guard lock(mutex_);
    return pod_uids_by_name_.count(name_key(namespace_, pod)) != 0;
}

std::string ClusterState::pod_uid(const std::string& namespace_, const std::string& pod) const {
    std::lock_guard lock(mutex_);
    if (pod_uids_by_name_.count(name_key(namespace_, pod)) == 0) return {};
    // A scan: called once per Event written (a few a minute), not per incident.
    std::string newest, newest_created;
    for (const auto& [uid, info] : pods_by_uid_) {
        if (info.namespace_ == namespace_ && info.name == pod && info.created >= newest_created) {
            newest = uid;
            newest_created = info.created;
        }
    }
    return newest;
}

size_t ClusterState::pod_count() const {
    std::lock_guard lock(mutex_);
    return pods_by_uid_.size();
}

size_t ClusterState::service_count() const {
    std::lock_guard lock(mutex_);
    return services_by_uid_.size();
}

// ---- attributor ------------------------------------------------------------------------

void Attributor::set_pod_map(std::shared_ptr<const PodMap> map) {
    std::lock_guard lock(mutex_);
    pod_map_ = std::move(map);
    ++sources_changed_;
}

void Attributor::set_cluster(std::shared_ptr<const ClusterState> cluster) {
    std::lock_guard lock(mutex_);
    cluster_ = std::move(cluster);
    ++sources_changed_;
}

std::optional<Attributor::Epoch> Attributor::naming_epoch(std::optional<int64_t> at_ns) const {
    std::shared_ptr<const ClusterState> cluster;
    Epoch epoch;
    {
        std::lock_guard lock(mutex_);
        cluster = cluster_;
        epoch.sources = sources_changed_;
    }
    if (!cluster) return epoch;
    const ClusterState::Version version = cluster->version();
    // Pod maps name by address alone; the cluster by time as well (former holders).
    if (at_ns && *at_ns < version.changed_ns) return std::nullopt;
    epoch.cluster = version.generation;
    return epoch;
}

bool Attributor::has_source() const {
    std::lock_guard lock(mutex_);
    return pod_map_ || cluster_;
}

namespace {

std::optional<Identity> resolve(const PodMap* map, const ClusterState* cluster, const IpAddr& addr,
                                std::optional<int64_t> at_ns = std::nullopt) {
    if (map)
        if (const PodMapEntry* entry = map->lookup(addr)) return entry->identity;
    if (cluster) return cluster->lookup(addr, at_ns);
    return std::nullopt;
}

}  // namespace

Identity Attributor::identify(const IpAddr& addr, std::optional<int64_t> at_ns) const {
    std::shared_ptr<const PodMap> map;
    std::shared_ptr<const ClusterState> cluster;
    {
        std::lock_guard lock(mutex_);
        map = pod_map_;
        cluster = cluster_;
    }
    if (auto id = resolve(map.get(), cluster.get(), addr, at_ns)) return *id;
    if (map || cluster) return Identity{"", "", "world"};
    return Identity{"", "", addr.str()};
}

bool Attributor::known(const IpAddr& addr) const {
    std::shared_ptr<const PodMap> map;
    std::shared_ptr<const ClusterState> cluster;
    {
        std::lock_guard lock(mutex_);
        map = pod_map_;
        cluster = cluster_;
    }
    return resolve(map.get(), cluster.get(), addr).has_value();
}

}  // namespace rstwatch
