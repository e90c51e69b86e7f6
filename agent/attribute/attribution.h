// Names the ends of a connection: Kubernetes pods and services, pod-map entries,
// or plain addresses. Thread-safe lookups; sources are replaced atomically.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>


namespace rstwatch {

// An IPv4 or IPv6 address; IPv4 is held v4-mapped (::ffff:a.b.c.d), as in the BPF records.
struct IpAddr {
    std::array<uint8_t, 16> bytes{};
    static std::optional<IpAddr> parse(std::string_view text);  // "10.0.0.1", "fd00::1", "::ffff:10.0.0.1"
    static IpAddr from_bytes(const uint8_t bytes[16]);
    bool is_v4() const;          // v4-mapped
    std::string str() const;     // dotted quad for IPv4
    bool operator==(const IpAddr&) const = default;
};
struct IpAddrHash {
    size_t operator()(const IpAddr& a) const noexcept;
};

struct Cidr {
    IpAddr base;
    int prefix_len = 128;  // in the 128-bit (v4-mapped) space: an IPv4 /24 is 96 + 24
    // "10.244.1.0/24", "fd00::/64". The prefix length is required. A dotted-quad address takes
    // an IPv4 prefix (0-32, stored as 96 + prefix); an address written with ':' (also
    // "::ffff:10.0.0.0/120") takes a 128-bit prefix (0-128). Host bits are masked off here:
    // base is always the network address (PodMap rejects them instead, see below).
    static std::optional<Cidr> parse(std::string_view text);
    static Cidr host(const IpAddr& addr) { return Cidr{addr, 128}; }  // a /32 or /128
    bool contains(const IpAddr& addr) const;
    bool has_host_bits(const IpAddr& addr) const;  // addr has bits set beyond prefix_len
    std::string str() const;  // "10.244.1.0/24" (IPv4 prefix back in 0-32), "fd00::/64"
    bool operator==(const Cidr&) const = default;
};
// addr with every bit beyond prefix_len (0-128) cleared.
IpAddr mask_address(const IpAddr& addr, int prefix_len);

// What a metric label or an incident says about one end.
struct Identity {
    std::string namespace_;  // "" when not a pod
    std::string pod;         // "" when not a pod
    std::string workload;    // Deployment/StatefulSet/DaemonSet/CronJob/Job/bare pod name, "svc/NAME",
                             // a pod-map `name`, "node", "world", or the IP address without any source
    bool operator==(const Identity&) const = default;
};

// ---- pod map file --------------------------------------------------------------
// endpoints:
//   - ip: 10.244.0.10            # or cidr: 10.244.1.0/24
//     namespace: ingress-nginx
//     pod: ingress-nginx-controller-5d88c
//     workload: ingress-nginx-controller
//   - cidr: 192.168.10.0/24
//     name: office-vpn           # a non-pod endpoint: becomes the workload, pod/namespace empty
//
// Validation is strict; every error names a 1-based line ("line N: what"):
//  - the file holds one YAML document: a map whose only key is `endpoints`, a sequence
//    (`endpoints: []` and a bare `endpoints:` both mean no entries);
//  - each entry is a map with exactly one of `ip` (one IPv4/IPv6 address) or `cidr`
//    (ADDR/PREFIX, IPv4 or IPv6); a `cidr` with host bits set (10.244.1.5/24) is an error,
//    not silently masked: it is usually a typo for a network or for `ip:`;
//  - then either `name` alone (a non-pod endpoint) or `pod` + `namespace` (+ optional
//    `workload`, default: the pod name); values are non-empty scalars;
//  - unknown or repeated keys are errors naming the key's line; two entries with the same
//    range (also `ip: X` vs `cidr: X/32`) are an error naming both lines.
// Overlapping ranges are fine: the longest prefix wins, regardless of file order.
struct PodMapEntry {
    Cidr range;          // an `ip:` entry is a /32 (/128)
    Identity identity;
    int line = 0;        // 1-based line in the file
};

class PodMap {
public:
    // On error returns nullopt and sets *error to one line: "line N: what is wrong".
    static std::optional<PodMap> parse(std::string_view yaml_text, std::string* error);
    // As parse(); the error is "PATH: line N: what is wrong" or "PATH: cannot read: ...".
    static std::optional<PodMap> load_file(const std::string& path, std::string* error);
    // The most specific entry (longest prefix) containing addr.
    const PodMapEntry* lookup(const IpAddr& addr) const;
    size_t size() const { return entries_.size(); }

    const std::vector<PodMapEntry>& entries() const { return entries_; }

private:
    std::vector<PodMapEntry> entries_;  // sorted by prefix length, longest first (stable: file order)
    // One exact-match table per distinct prefix length, longest first: network address ->
    // index in entries_. A lookup costs one hash probe per distinct prefix length.
    struct PrefixTable {
        int prefix_len;
        std::unordered_map<IpAddr, size_t, IpAddrHash> by_network;
    };
    std::vector<PrefixTable> tables_;
};

// ---- Kubernetes objects -------------------------------------------------------
struct PodInfo {
    std::string uid;
    std::string namespace_;
    std::string name;
    std::string workload;  // from ownerReferences, see pod_from_json
    std::string node;
    std::vector<IpAddr> ips;  // status.podIPs (or podIP)
    bool host_network = false;
    std::string phase;
    std::string created;  // metadata.creationTimestamp (RFC 3339 UTC): orders IP claims on relist
    // Whether the pod's IPs are in use: not in phase Succeeded/Failed (those pods' sandboxes
    // are gone and their IPs may already belong to another pod).
    bool holds_ips() const { return phase != "Succeeded" && phase != "Failed"; }
};
struct ServiceInfo {
    std::string uid;
    std::string namespace_;
    std::string name;
    std::vector<IpAddr> cluster_ips;  // spec.clusterIPs (or clusterIP), "None" skipped
};


// Pods and services as last listed/watched. Thread-safe.
// IP reuse: an IP belongs to the pod that most recently claimed it (an upsert of a pod that did
// not hold it before; on relist, the most recently created pod). A later update of the older
// pod does not take it back, and deleting the older pod leaves the newer one's mapping. When
// the holder goes away (deleted, Succeeded/Failed), the IP falls back to the latest remaining
// claimant (e.g. another host-network pod on the same node). Services: the same, by ClusterIP.
// An IP's former holders are kept for kFormerHolderKeepNs with the time this state learned they
// had let it go: an event is named by the holder known when it happened, not when it is read
// (a pod replaced within the agent's poll interval would otherwise take its predecessor's last
// incident).
class ClusterState {
public:
    static constexpr int64_t kFormerHolderKeepNs = 120'000'000'000;  // well past any hold or poll
    static constexpr size_t kMaxFormerHolders = 65'536;              // bounded under pod churn
    // clock: CLOCK_MONOTONIC in ns, the clock of the records' timestamps (tests give their own).
    explicit ClusterState(std::function<int64_t()> clock = {});
    void replace_pods(std::vector<PodInfo> pods);  // after a (re)list
    void upsert_pod(PodInfo pod);                  // ADDED / MODIFIED
    void delete_pod(const PodInfo& pod);           // DELETED: removes its IPs only if still held by this uid
    void replace_services(std::vector<ServiceInfo> services);
    void upsert_service(ServiceInfo service);
    void delete_service(const ServiceInfo& service);

    // Pod IP -> pod (host-network pods: workload "node", pod/namespace empty); ClusterIP -> "svc/NAME".
    // at_ns (CLOCK_MONOTONIC of the event): the holder as known at that time when the IP has
    // changed hands or been released since; an IP first learned later is named by its holder now.
    std::optional<Identity> lookup(const IpAddr& addr, std::optional<int64_t> at_ns = std::nullopt) const;
    size_t former_holder_count() const;
    // Which version of the state lookups see: `generation` grows with every change of what a
    // lookup answers for some IP (a pod's status updates are none), made at `changed_ns` (this
    // state's clock). A lookup at any at_ns >= changed_ns (or none) answers as it would now.
    struct Version {
        uint64_t generation = 0;
        int64_t changed_ns = 0;
    };
    Version version() const;
    // Whether a pod (namespace/name) currently exists: for expiring its metric series.
    bool pod_exists(const std::string& namespace_, const std::string& pod) const;
    // The uid of that pod ("" when not known; the newest when a name was reused).
    std::string pod_uid(const std::string& namespace_, const std::string& pod) const;
    size_t pod_count() const;
    size_t service_count() const;

private:
    // IP -> uids of the objects claiming it, in claim order; the last one holds it.
    class IpClaims {
    public:
        void claim(const IpAddr& ip, const std::string& uid);  // no-op if uid already claims ip
        void release(const IpAddr& ip, const std::string& uid);
        const std::string* holder(const IpAddr& ip) const;
        void clear() { claims_.clear(); }

    private:
        std::unordered_map<IpAddr, std::vector<std::string>, IpAddrHash> claims_;
    };
    void upsert_pod_locked(PodInfo pod);
    void upsert_service_locked(ServiceInfo service);
    std::optional<Identity> lookup_locked(const IpAddr& addr) const;
    // Who held each of `ips` before a change; after it, note_changes_locked() keeps the ones
    // that changed hands (or were released) as former holders until now.
    using Holders = std::vector<std::pair<IpAddr, std::optional<Identity>>>;
    Holders holders_locked(const std::vector<IpAddr>& ips) const;
    void note_changes_locked(const Holders& before);

    struct FormerHolder {
        Identity identity;
        int64_t until_ns = 0;  // when this state learned the IP was no longer theirs
    };
    std::function<int64_t()> clock_;
    mutable std::mutex mutex_;
    Version version_;
    std::unordered_map<IpAddr, std::deque<FormerHolder>, IpAddrHash> former_holders_;  // oldest first
    std::deque<std::pair<IpAddr, int64_t>> former_order_;  // (ip, until_ns) in time order: expiry
    std::unordered_map<std::string, PodInfo> pods_by_uid_;
    IpClaims pod_uid_by_ip_;  // newest pod holding the IP
    std::unordered_map<std::string, size_t> pod_uids_by_name_;  // "namespace/name" -> number of uids
    std::unordered_map<std::string, ServiceInfo> services_by_uid_;
    IpClaims service_uid_by_ip_;
};

// Combines the sources. Rules, first match wins:
//   pod map (most specific entry) -> Kubernetes pod -> Kubernetes service ->
//   with any source configured: "world"; with none: pod/namespace empty, workload = the IP address.
// A configured source counts even when empty (a pod map with no entries, a cluster not yet
// listed). identify() holds the lock only to copy the source pointers.
class Attributor {
public:
    void set_pod_map(std::shared_ptr<const PodMap> map);  // nullptr: none
    void set_cluster(std::shared_ptr<const ClusterState> cluster);
    // at_ns: the event's CLOCK_MONOTONIC time (see ClusterState::lookup).
    Identity identify(const IpAddr& addr, std::optional<int64_t> at_ns = std::nullopt) const;
    // True when addr is resolved by a source (not "world" or a bare IP).
    bool known(const IpAddr& addr) const;
    bool has_source() const;

    // What identify() answers as of: equal epochs give equal names for the same address. nullopt
    // when an event at at_ns may be named otherwise than one now (a source changed after it).
    struct Epoch {
        uint64_t sources = 0;  // set_pod_map / set_cluster calls
        uint64_t cluster = 0;  // ClusterState::Version::generation
        bool operator==(const Epoch&) const = default;
    };
    std::optional<Epoch> naming_epoch(std::optional<int64_t> at_ns) const;

private:
    mutable std::mutex mutex_;
    uint64_t sources_changed_ = 0;
    std::shared_ptr<const PodMap> pod_map_;
    std::shared_ptr<const ClusterState> cluster_;
};

}  // namespace rstwatch
