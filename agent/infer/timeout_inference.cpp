#include "timeout_inference.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace rstwatch {
namespace {

double median_of_sorted(const std::vector<double>& sorted) {
    const size_t n = sorted.size();
    return n % 2 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0;
}

template <size_t N>
void fill_histogram(const std::deque<double>& samples, std::array<uint64_t, N>& out) {
    for (double s : samples) {
        size_t bucket = 0;
        while (bucket < kIdleBucketsSeconds.size() && s > kIdleBucketsSeconds[bucket]) ++bucket;
        out[bucket]++;
    }
}

bool contains(const std::string& haystack, std::string_view needle) {
    return haystack.find(needle) != std::string::npos;
}

// Whole seconds from 10 s up, tenths below: what a person would type into a config file.
double round_down_setting(double seconds) {
    return seconds >= 10 ? std::floor(seconds) : std::floor(seconds * 10 + 1e-9) / 10;
}

std::string seconds_text(double seconds) {
    return seconds == std::floor(seconds) ? fmt::format("{:.0f}", seconds) : fmt::format("{:.1f}", seconds);
}

bool is_stale_keepalive_cause(Cause cause) { return cause != Cause::reset_other; }

}  // namespace

std::optional<TimeoutEstimate> robust_timeout(std::vector<double> samples) {
    if (samples.empty()) return std::nullopt;
    std::sort(samples.begin(), samples.end());
    const double median = median_of_sorted(samples);
    std::vector<double> deviations;
    deviations.reserve(samples.size());
    for (double s : samples) deviations.push_back(std::fabs(s - median));
    std::sort(deviations.begin(), deviations.end());
    const double tolerance = std::max(0.05 * median, 3 * median_of_sorted(deviations));
    std::vector<double> inliers;
    for (double s : samples)
        if (std::fabs(s - median) <= tolerance) inliers.push_back(s);
    return TimeoutEstimate{median_of_sorted(inliers), inliers.size()};
}

KeepaliveFix recommend_fix(const std::string& comm, const Identity& client, double server_timeout_s,
                           double recommended_fraction) {
    KeepaliveFix fix;
    fix.value_s = round_down_setting(server_timeout_s * recommended_fraction);
    const std::string value = seconds_text(fix.value_s);
    const std::string value_ms = fmt::format("{:.0f}", fix.value_s * 1000);
    const std::string who = client.workload + " " + client.pod;
    if (comm == "nginx" && (contains(who, "ingress-nginx") || contains(who, "ingress"))) {
        fix.client_kind = "ingress-nginx";
        fix.setting = fmt::format("ingress-nginx ConfigMap: upstream-keepalive-timeout: \"{}\"", value);
    } else if (comm == "nginx") {
        fix.client_kind = "nginx";
        fix.setting = fmt::format("nginx upstream block: keepalive_timeout {}s;", value);
    } else if (comm == "envoy" || contains(comm, "envoy")) {
        fix.client_kind = "envoy";
        fix.setting = fmt::format("Envoy cluster: common_http_protocol_options: {{ idle_timeout: {}s }}", value);
    } else if (comm == "haproxy") {
        fix.client_kind = "haproxy";
        fix.setting = fmt::format("HAProxy backend: pool-purge-delay {}s (idle server connections)", value);
    } else if (comm == "node" || comm == "nodejs") {
        fix.client_kind = "nodejs";
        fix.setting = fmt::format(
            "Node.js: agentkeepalive freeSocketTimeout: {} (or http.Agent keepAlive sockets with timeout: {})",
            value_ms, value_ms);
    } else if (comm == "java" || contains(comm, "java")) {
        fix.client_kind = "java";
        fix.setting = fmt::format(
            "Java: Apache HttpClient evictIdleConnections({} s) / OkHttp ConnectionPool keepAliveDuration {} s",
            value, value);
    } else if (contains(comm, "python")) {
        fix.client_kind = "python";
        fix.setting = fmt::format("Python: aiohttp TCPConnector(keepalive_timeout={}) or close pooled "
                                  "connections idle longer than {} s",
                                  value, value);
    } else {
        // Go binaries and others carry their own names: say what to set in the common clients.
        fix.setting = fmt::format(
            "the client's idle connection timeout: {} s (Go http.Transport.IdleConnTimeout, Node.js "
            "freeSocketTimeout, nginx keepalive_timeout, Envoy idle_timeout)",
            value);
    }
    return fix;
}

TimeoutInference::TimeoutInference(InferenceOptions options) : options_(options) {}

void TimeoutInference::push(std::deque<double>& samples, double value) {
    samples.push_back(value);
    if (samples.size() > options_.window) samples.pop_front();
}

bool TimeoutInference::seen_recently(const Observation& observation) {
    constexpr uint64_t kWindowNs = 5'000'000'000ULL;
    if (observation.ts_ns > last_purge_ns_ + kWindowNs) {
        std::erase_if(recent_closes_, [&](const auto& entry) { return entry.second + kWindowNs < observation.ts_ns; });
        last_purge_ns_ = observation.ts_ns;
    }
    const std::string key = fmt::format("{}|{}|{}|{}|{}", static_cast<int>(observation.kind), observation.client.ip,
                                        observation.client.port, observation.server.ip, observation.server.port);
    auto [it, inserted] = recent_closes_.try_emplace(key, observation.ts_ns);
    if (inserted) return false;
    const bool duplicate = observation.ts_ns < it->second + kWindowNs && it->second < observation.ts_ns + kWindowNs;
    it->second = observation.ts_ns;
    return duplicate;
}

void TimeoutInference::observe(const PairKey& pair, const Observation& observation) {
    Evidence& evidence = pairs_[pair];
    // The client's name may come with either end's record of the same close: keep it first.
    if (!observation.comm.empty()) evidence.client_comm = observation.comm;
    if (observation.kind != ObservationKind::reuse_idle && seen_recently(observation)) return;
    switch (observation.kind) {
        case ObservationKind::reuse_idle:
            push(evidence.reuses, observation.idle_s);
            evidence.reuses_total++;
            break;
        case ObservationKind::server_idle_close:
            push(evidence.server_closes, observation.idle_s);
            evidence.server_closes_total++;
            evidence.client_closes_since_trouble = 0;
            break;
        case ObservationKind::client_idle_close:
            push(evidence.client_closes, observation.idle_s);
            evidence.client_closes_total++;
            evidence.client_closes_since_trouble++;
            break;
    }
}

void TimeoutInference::incident(const PairKey& pair, const Incident& incident) {
    Evidence& evidence = pairs_[pair];
    evidence.incidents[static_cast<size_t>(incident.cause)]++;
    if (is_stale_keepalive_cause(incident.cause)) evidence.client_closes_since_trouble = 0;
    if (!incident.comm.empty() && incident.observer == Observer::client) evidence.client_comm = incident.comm;
}

PairVerdict TimeoutInference::verdict(const PairKey& pair) const {
    PairVerdict v;
    v.pair = pair;
    auto it = pairs_.find(pair);
    if (it == pairs_.end()) return v;
    const Evidence& e = it->second;
    v.reuses = e.reuses_total;
    v.server_closes = e.server_closes_total;
    v.client_closes = e.client_closes_total;
    v.incidents = e.incidents;
    v.client_comm = e.client_comm;
    fill_histogram(e.reuses, v.reuse_hist);
    fill_histogram(e.server_closes, v.server_close_hist);
    fill_histogram(e.client_closes, v.client_close_hist);
    if (!e.reuses.empty()) v.max_reuse_idle_s = *std::max_element(e.reuses.begin(), e.reuses.end());

    auto estimate = [&](const std::deque<double>& samples) -> std::optional<TimeoutEstimate> {
        auto est = robust_timeout(std::vector<double>(samples.begin(), samples.end()));
        if (!est || est->evidence < options_.min_evidence) return std::nullopt;
        return est;
    };
    v.server_timeout = estimate(e.server_closes);
    v.client_timeout = estimate(e.client_closes);

    uint64_t stale_incidents = 0;
    for (size_t c = 0; c < kCauseCount; ++c)
        if (is_stale_keepalive_cause(static_cast<Cause>(c))) stale_incidents += e.incidents[c];

    // The client's own closes since the last trouble: its timeout as it is now.
    std::optional<TimeoutEstimate> client_now;
    if (e.client_closes_since_trouble >= options_.min_evidence) {
        const size_t recent = std::min(e.client_closes_since_trouble, e.client_closes.size());
        client_now = robust_timeout(std::vector<double>(e.client_closes.end() - static_cast<std::ptrdiff_t>(recent),
                                                        e.client_closes.end()));
    }

    if (v.server_timeout) {
        const double t = v.server_timeout->seconds;
        const double race_edge = t * (1 - options_.race_margin);
        if (client_now && client_now->seconds < race_edge) {
            v.mismatch = false;
            v.reason = fmt::format("the client now closes idle connections after {:.2f} s, before the server's "
                                   "{:.2f} s: no server idle close or stale keepalive incident since its last {} "
                                   "closes",
                                   client_now->seconds, t, e.client_closes_since_trouble);
        } else if (stale_incidents > 0) {
            v.mismatch = true;
            v.reason = fmt::format("{} stale keepalive incidents confirmed; the server closes idle connections "
                                   "after {:.2f} s",
                                   stale_incidents, t);
        } else if (v.client_timeout && v.client_timeout->seconds >= race_edge) {
            v.mismatch = true;
            v.reason = fmt::format("the client keeps idle connections {:.2f} s, the server closes them after {:.2f} s",
                                   v.client_timeout->seconds, t);
        } else if (v.max_reuse_idle_s && *v.max_reuse_idle_s >= race_edge) {
            v.mismatch = true;
            v.reason = fmt::format("the client reuses connections idle up to {:.2f} s, the server closes them "
                                   "after {:.2f} s",
                                   *v.max_reuse_idle_s, t);
        } else {
            // Every server idle close is a connection the client kept idle until the server's timeout.
            v.mismatch = true;
            v.reason = fmt::format("the server closed {} connections the client kept idle for {:.2f} s: the "
                                   "client keeps idle connections at least as long as the server",
                                   v.server_timeout->evidence, t);
        }
        v.fix = recommend_fix(e.client_comm, pair.client, t, options_.recommended_fraction);
    } else if (stale_incidents > 0 && !client_now) {
        v.mismatch = true;
        v.reason = fmt::format("{} stale keepalive incidents confirmed (server timeout not inferred yet)",
                               stale_incidents);
        double idle_hint = v.max_reuse_idle_s.value_or(0);
        if (idle_hint > 0) v.fix = recommend_fix(e.client_comm, pair.client, idle_hint, options_.recommended_fraction);
    } else if (v.client_timeout) {
        v.mismatch = false;
        v.reason = fmt::format("the client closes idle connections after {:.2f} s, before the server does",
                               v.client_timeout->seconds);
    }
    return v;
}

std::vector<PairVerdict> TimeoutInference::verdicts() const {
    std::vector<PairVerdict> out;
    out.reserve(pairs_.size());
    for (const auto& [pair, evidence] : pairs_) out.push_back(verdict(pair));
    return out;
}

std::vector<PairVerdict> TimeoutInference::take_changes() {
    std::vector<PairVerdict> changed;
    for (auto& [pair, evidence] : pairs_) {
        PairVerdict v = verdict(pair);
        if (!v.mismatch) continue;  // not enough evidence (or it aged out): nothing to say either way
        const bool was_mismatch = evidence.reported_mismatch.value_or(false);
        const std::string setting = v.fix ? v.fix->setting : std::string();
        const bool report = *v.mismatch ? !was_mismatch || setting != evidence.reported_setting : was_mismatch;
        evidence.reported_mismatch = v.mismatch;
        evidence.reported_setting = *v.mismatch ? setting : std::string();
        if (report) changed.push_back(std::move(v));
    }
    return changed;
}

std::vector<PairKey> TimeoutInference::pairs() const {
    std::vector<PairKey> keys;
    keys.reserve(pairs_.size());
    for (const auto& [pair, evidence] : pairs_) keys.push_back(pair);
    return keys;
}

void TimeoutInference::forget(const PairKey& pair) { pairs_.erase(pair); }

}  // namespace rstwatch
