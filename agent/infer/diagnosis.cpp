#include "diagnosis.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>

namespace rstwatch {
namespace {

using nlohmann::json;

constexpr size_t kBuckets = kIdleBucketsSeconds.size() + 1;

json identity_json(const Identity& who) {
    return {{"namespace", who.namespace_}, {"pod", who.pod}, {"workload", who.workload}};
}

Identity identity_from(const json& j) {
    return Identity{j.value("namespace", ""), j.value("pod", ""), j.value("workload", "")};
}

template <typename T>
json optional_json(const std::optional<T>& value) {
    return value ? json(*value) : json(nullptr);
}

json histogram_json(const std::array<uint64_t, kBuckets>& counts) { return json(counts); }

bool histogram_from(const json& j, std::array<uint64_t, kBuckets>& out) {
    if (!j.is_array() || j.size() != kBuckets) return false;
    for (size_t i = 0; i < kBuckets; ++i) {
        if (!j[i].is_number_unsigned()) return false;  // no floats, no negatives
        out[i] = j[i].get<uint64_t>();
    }
    return true;
}

std::string bucket_label(size_t bucket) {
    if (bucket >= kIdleBucketsSeconds.size()) return fmt::format(">{:g}s", kIdleBucketsSeconds.back());
    return fmt::format("<={:g}s", kIdleBucketsSeconds[bucket]);
}

std::string bar(uint64_t count, uint64_t max, size_t width) {
    if (count == 0) return std::string(width, ' ');
    // The bar and its count together fit the column, so columns stay aligned.
    const std::string number = fmt::format(" {}", count);
    const size_t room = width > number.size() + 1 ? width - number.size() : 1;
    size_t filled = std::max<size_t>(1, static_cast<size_t>(count * room / std::max<uint64_t>(max, 1)));
    std::string out(std::min(filled, room), '#');
    out += number;
    out.resize(std::max(out.size(), width), ' ');
    return out;
}

std::string describe_end(const Identity& who) {
    if (!who.pod.empty()) return fmt::format("{}/{} ({})", who.namespace_, who.workload, who.pod);
    if (!who.namespace_.empty()) return who.namespace_ + "/" + who.workload;
    return who.workload.empty() ? "?" : who.workload;
}

std::string joined(const std::vector<std::string>& items) {
    std::string out;
    for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
    return out;
}

}  // namespace

json verdict_to_json(const PairVerdict& v) {
    json incidents = json::object();
    for (size_t c = 0; c < kCauseCount; ++c)
        if (v.incidents[c]) incidents[std::string(to_string(static_cast<Cause>(c)))] = v.incidents[c];
    json j = {
        {"client", identity_json(v.pair.client)},
        {"server", identity_json(v.pair.server)},
        {"server_port", v.pair.server_port},
        {"server_idle_timeout_s", v.server_timeout ? json(v.server_timeout->seconds) : json(nullptr)},
        {"server_idle_timeout_evidence", v.server_timeout ? v.server_timeout->evidence : 0},
        {"client_idle_timeout_s", v.client_timeout ? json(v.client_timeout->seconds) : json(nullptr)},
        {"client_idle_timeout_evidence", v.client_timeout ? v.client_timeout->evidence : 0},
        {"max_reuse_idle_s", optional_json(v.max_reuse_idle_s)},
        {"reuses", v.reuses},
        {"server_closes", v.server_closes},
        {"client_closes", v.client_closes},
        {"incidents", incidents},
        {"mismatch", optional_json(v.mismatch)},
        {"reason", v.reason},
        {"client_comm", v.client_comm},
        {"fix", v.fix ? json{{"client_kind", v.fix->client_kind}, {"value_s", v.fix->value_s}, {"setting", v.fix->setting}}
                      : json(nullptr)},
        {"histograms",
         {{"buckets_s", kIdleBucketsSeconds},
          {"reuse", histogram_json(v.reuse_hist)},
          {"server_close", histogram_json(v.server_close_hist)},
          {"client_close", histogram_json(v.client_close_hist)}}},
    };
    // Only in merged diagnoses: one agent's own JSON stays as it was.
    if (!v.nodes.empty()) j["nodes"] = v.nodes;
    return j;
}

// A non-negative integer that fits T, or an exception naming the field (nlohmann's get<>
// would convert floats and wrap negatives: undefined behaviour on untrusted input).
template <typename T>
T whole(const json& j, const char* field) {
    const json& v = j.at(field);
    if (!v.is_number_unsigned()) throw std::runtime_error(std::string(field) + " is not a non-negative integer");
    const uint64_t value = v.get<uint64_t>();
    if (value > std::numeric_limits<T>::max()) throw std::runtime_error(std::string(field) + " is out of range");
    return static_cast<T>(value);
}

double number(const json& j, const char* field) {
    const json& v = j.at(field);
    if (!v.is_number()) throw std::runtime_error(std::string(field) + " is not a number");
    return v.get<double>();
}

std::optional<PairVerdict> verdict_from_json(const json& j, std::string* error) {
    try {
        PairVerdict v;
        v.pair.client = identity_from(j.at("client"));
        v.pair.server = identity_from(j.at("server"));
        v.pair.server_port = whole<uint16_t>(j, "server_port");
        if (!j.at("server_idle_timeout_s").is_null())
            v.server_timeout = TimeoutEstimate{number(j, "server_idle_timeout_s"),
                                               whole<size_t>(j, "server_idle_timeout_evidence")};
        if (!j.at("client_idle_timeout_s").is_null())
            v.client_timeout = TimeoutEstimate{number(j, "client_idle_timeout_s"),
                                               whole<size_t>(j, "client_idle_timeout_evidence")};
        if (!j.at("max_reuse_idle_s").is_null()) v.max_reuse_idle_s = number(j, "max_reuse_idle_s");
        v.reuses = whole<size_t>(j, "reuses");
        v.server_closes = whole<size_t>(j, "server_closes");
        v.client_closes = whole<size_t>(j, "client_closes");
        const json& incidents = j.at("incidents");
        if (!incidents.is_object()) throw std::runtime_error("incidents is not an object");
        for (const auto& [name, count] : incidents.items()) {
            auto cause = parse_cause(name);
            if (!cause) throw std::runtime_error("unknown cause " + json(name).dump());  // quoted: may hold control characters
            if (!count.is_number_unsigned()) throw std::runtime_error("incident count is not a non-negative integer");
            v.incidents[static_cast<size_t>(*cause)] = count.get<uint64_t>();
        }
        if (!j.at("mismatch").is_null()) v.mismatch = j["mismatch"].get<bool>();
        v.reason = j.at("reason").get<std::string>();
        v.client_comm = j.value("client_comm", "");
        if (!j.at("fix").is_null()) {
            const json& f = j["fix"];
            v.fix = KeepaliveFix{f.at("client_kind").get<std::string>(), number(f, "value_s"),
                                 f.at("setting").get<std::string>()};
        }
        const json& h = j.at("histograms");
        if (!histogram_from(h.at("reuse"), v.reuse_hist) || !histogram_from(h.at("server_close"), v.server_close_hist) ||
            !histogram_from(h.at("client_close"), v.client_close_hist))
            throw std::runtime_error("histograms do not match this rstwatch's buckets");
        if (j.contains("nodes")) {
            if (!j["nodes"].is_array()) throw std::runtime_error("nodes is not an array of strings");
            for (const json& node : j["nodes"]) {
                if (!node.is_string()) throw std::runtime_error("nodes is not an array of strings");
                v.nodes.push_back(node.get<std::string>());
            }
        }
        return v;
    } catch (const std::exception& e) {
        if (error) *error = std::string("malformed diagnosis: ") + e.what();
        return std::nullopt;
    }
}

json diagnosis_to_json(const std::vector<PairVerdict>& verdicts, const std::string& level) {
    json pairs = json::array();
    for (const PairVerdict& v : verdicts) pairs.push_back(verdict_to_json(v));
    return {{"level", level}, {"pairs", pairs}};
}

std::optional<std::vector<PairVerdict>> diagnosis_from_json(const json& j, std::string* error) {
    if (!j.is_object() || !j.contains("pairs") || !j["pairs"].is_array()) {
        if (error) *error = "malformed diagnosis: no \"pairs\" array";
        return std::nullopt;
    }
    std::vector<PairVerdict> verdicts;
    for (const json& pair : j["pairs"]) {
        auto v = verdict_from_json(pair, error);
        if (!v) return std::nullopt;
        verdicts.push_back(std::move(*v));
    }
    return verdicts;
}

std::string render_diagnosis(const std::vector<PairVerdict>& verdicts) {
    std::string out;
    if (verdicts.empty()) return "no client/server pairs with idle connections observed yet\n";
    for (const PairVerdict& v : verdicts) {
        out += fmt::format("{} -> {}:{}{}\n", describe_end(v.pair.client), describe_end(v.pair.server), v.pair.server_port,
                           v.nodes.empty() ? "" : "   (seen on " + joined(v.nodes) + ")");
        if (!v.mismatch)
            out += "  verdict:  not enough evidence yet\n";
        else
            out += fmt::format("  verdict:  {}: {}\n", *v.mismatch ? "MISMATCH" : "ok", v.reason);
        out += fmt::format("  server idle timeout: {}   client idle timeout: {}   reuse: up to {} ({} reuses)\n",
                           v.server_timeout ? fmt::format("{:.2f} s ({} closes)", v.server_timeout->seconds,
                                                          v.server_timeout->evidence)
                                            : fmt::format("unknown ({} closes)", v.server_closes),
                           v.client_timeout ? fmt::format("{:.2f} s ({} closes)", v.client_timeout->seconds,
                                                          v.client_timeout->evidence)
                                            : fmt::format("unknown ({} closes)", v.client_closes),
                           v.max_reuse_idle_s ? fmt::format("{:.2f} s", *v.max_reuse_idle_s) : std::string("-"),
                           v.reuses);
        std::string incidents;
        for (size_t c = 0; c < kCauseCount; ++c)
            if (v.incidents[c])
                incidents += fmt::format(" {}={}", to_string(static_cast<Cause>(c)), v.incidents[c]);
        out += fmt::format("  incidents:{}\n", incidents.empty() ? " none" : incidents);
        if (v.fix && v.mismatch.value_or(false))
            out += fmt::format("  fix{}: {}\n", v.fix->client_kind.empty() ? "" : " (" + v.fix->client_kind + ")",
                               v.fix->setting);

        uint64_t max = 1;
        for (size_t b = 0; b < kBuckets; ++b)
            max = std::max({max, v.reuse_hist[b], v.server_close_hist[b], v.client_close_hist[b]});
        constexpr size_t kWidth = 22;
        out += fmt::format("  {:>8}  {:<{}}  {:<{}}  {:<{}}\n", "idle", "client reuses", kWidth, "server closes", kWidth,
                           "client closes", kWidth);
        for (size_t b = 0; b < kBuckets; ++b) {
            if (!v.reuse_hist[b] && !v.server_close_hist[b] && !v.client_close_hist[b]) continue;
            out += fmt::format("  {:>8}  {}  {}  {}\n", bucket_label(b), bar(v.reuse_hist[b], max, kWidth),
                               bar(v.server_close_hist[b], max, kWidth), bar(v.client_close_hist[b], max, kWidth));
        }
        out += "\n";
    }
    return out;
}

// ---- a cluster-wide diagnosis: several nodes' agents merged ---------------------------------

bool PairFilter::matches(const PairKey& pair) const {
    auto end_matches = [&](const Identity& end) {
        return (!namespace_ || end.namespace_ == *namespace_) && (!workload || end.workload == *workload);
    };
    return end_matches(pair.client) || end_matches(pair.server);
}

void filter_verdicts(std::vector<PairVerdict>& verdicts, const PairFilter& filter) {
    std::erase_if(verdicts, [&](const PairVerdict& v) { return !filter.matches(v.pair); });
}

std::optional<std::vector<NodeDiagnosis>> node_diagnoses_from_json(const json& j, std::string* error) {
    auto fail = [&](const std::string& why) -> std::optional<std::vector<NodeDiagnosis>> {
        if (error) *error = why;
        return std::nullopt;
    };
    if (!j.is_object() || !j.contains("nodes") || !j["nodes"].is_array())
        return fail("not a cluster diagnosis: no \"nodes\" array");
    std::vector<NodeDiagnosis> nodes;
    for (const json& entry : j["nodes"]) {
        const std::string where = fmt::format("nodes[{}]", nodes.size());
        if (!entry.is_object() || !entry.contains("node") || !entry["node"].is_string() || !entry.contains("agent") ||
            !entry["agent"].is_string() || !entry.contains("ready") || !entry["ready"].is_boolean())
            return fail(where + ": needs \"node\" and \"agent\" (strings) and \"ready\" (true or false)");
        NodeDiagnosis node;
        node.node = entry["node"].get<std::string>();
        node.agent = entry["agent"].get<std::string>();
        node.ready = entry["ready"].get<bool>();
        const std::string who = where + " (node " + json(node.node).dump() + ")";  // quoted: untrusted text
        node.answered = entry.contains("diagnosis");
        if (node.answered == entry.contains("error")) return fail(who + ": needs either \"diagnosis\" or \"error\"");
        if (node.answered) {
            const json& diagnosis = entry["diagnosis"];
            if (!diagnosis.is_object() || !diagnosis.contains("level") || !diagnosis["level"].is_string())
                return fail(who + ": the diagnosis has no \"level\"");
            node.level = diagnosis["level"].get<std::string>();
            std::string why;
            auto verdicts = diagnosis_from_json(diagnosis, &why);
            if (!verdicts) return fail(who + ": " + why);
            node.verdicts = std::move(*verdicts);
        } else {
            if (!entry["error"].is_string()) return fail(who + ": \"error\" is not a string");
            node.error = entry["error"].get<std::string>();
        }
        nodes.push_back(std::move(node));
    }
    return nodes;
}

namespace {

// What a verdict rests on: every observation and incident its agent counted for the pair.
uint64_t evidence(const PairVerdict& v) {
    uint64_t total = v.reuses + v.server_closes + v.client_closes;
    for (uint64_t count : v.incidents) total += count;
    return total;
}

// Of two estimates, the one resting on more observations (the first on a tie). Not an average:
// agents on different nodes may watch different server pods, and the mean of two timeouts is one
// that nobody configured.
void keep_better(std::optional<TimeoutEstimate>& kept, const std::optional<TimeoutEstimate>& other) {
    if (other && (!kept || other->evidence > kept->evidence)) kept = other;
}

template <size_t N>
void add(std::array<uint64_t, N>& sum, const std::array<uint64_t, N>& more) {
    for (size_t i = 0; i < N; ++i) sum[i] += more[i];
}

struct Seen {
    const std::string* node;
    const PairVerdict* verdict;
};

PairVerdict merge_pair(const std::vector<Seen>& seen) {
    PairVerdict m;
    m.pair = seen.front().verdict->pair;
    for (const auto& [node, v] : seen) {
        m.reuses += v->reuses;
        m.server_closes += v->server_closes;
        m.client_closes += v->client_closes;
        add(m.incidents, v->incidents);
        add(m.reuse_hist, v->reuse_hist);
        add(m.server_close_hist, v->server_close_hist);
        add(m.client_close_hist, v->client_close_hist);
        keep_better(m.server_timeout, v->server_timeout);
        keep_better(m.client_timeout, v->client_timeout);
        if (v->max_reuse_idle_s) m.max_reuse_idle_s = std::max(m.max_reuse_idle_s.value_or(0), *v->max_reuse_idle_s);
        // One node's mismatch is the cluster's: its clients get the 502s whatever the others see.
        if (v->mismatch.value_or(false) || m.mismatch.value_or(false))
            m.mismatch = true;
        else if (v->mismatch)
            m.mismatch = false;
        if (std::find(m.nodes.begin(), m.nodes.end(), *node) == m.nodes.end()) m.nodes.push_back(*node);
    }
    // The words (reason, fix) of a node that reached the merged verdict, the one with the most
    // evidence: there always is one, and its fix is the one the verdict asks for.
    const PairVerdict* voice = nullptr;
    for (const auto& [node, v] : seen)
        if (v->mismatch == m.mismatch && (!voice || evidence(*v) > evidence(*voice))) voice = v;
    m.reason = voice->reason;
    m.fix = voice->fix;
    m.client_comm = voice->client_comm;
    return m;
}

}  // namespace

std::vector<PairVerdict> merge_verdicts(const std::vector<NodeDiagnosis>& nodes) {
    std::vector<std::vector<Seen>> pairs;  // in order of first appearance
    std::map<PairKey, size_t, PairKeyLess> index;
    for (const NodeDiagnosis& node : nodes)
        for (const PairVerdict& v : node.verdicts) {
            auto [at, added] = index.try_emplace(v.pair, pairs.size());
            if (added) pairs.emplace_back();
            pairs[at->second].push_back({&node.node, &v});
        }
    std::vector<PairVerdict> merged;
    for (const auto& seen : pairs) merged.push_back(merge_pair(seen));
    return merged;
}

json merged_diagnosis_to_json(const std::vector<PairVerdict>& merged, const std::vector<NodeDiagnosis>& nodes,
                              const std::string& level) {
    json j = diagnosis_to_json(merged, level);
    json list = json::array();
    for (const NodeDiagnosis& node : nodes) {
        json entry = {{"node", node.node}, {"agent", node.agent}, {"ready", node.ready}};
        if (node.answered)
            entry["pairs"] = node.verdicts.size();
        else
            entry["error"] = node.error;
        list.push_back(std::move(entry));
    }
    j["nodes"] = std::move(list);
    return j;
}

std::string render_merged_diagnosis(const std::vector<PairVerdict>& merged, const std::vector<NodeDiagnosis>& nodes) {
    std::string out = render_diagnosis(merged);
    std::vector<std::string> answered;
    for (const NodeDiagnosis& node : nodes)
        if (node.answered)
            answered.push_back(fmt::format("{} ({} pair{})", node.node, node.verdicts.size(),
                                           node.verdicts.size() == 1 ? "" : "s"));
    out += fmt::format("merged the diagnoses of {} of {} agents{}{}\n", answered.size(), nodes.size(),
                       answered.empty() ? "" : ": ", joined(answered));
    for (const NodeDiagnosis& node : nodes)
        if (!node.answered)
            out += fmt::format("node {}: agent {} {}: {}; its clients are not in this report\n", node.node, node.agent,
                               node.ready ? "failed" : "not ready", node.error);
    return out;
}

}  // namespace rstwatch
