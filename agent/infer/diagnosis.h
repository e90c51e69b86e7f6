// `rstwatch diagnose` output: verdicts as JSON (the agent's /diagnose and `-o json`) and as a
// terminal report with small idle-age histograms per pair.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "timeout_inference.h"

namespace rstwatch {

nlohmann::json verdict_to_json(const PairVerdict& verdict);
std::optional<PairVerdict> verdict_from_json(const nlohmann::json& json, std::string* error);

// {"level": "pod"|"workload", "pairs": [...]}
nlohmann::json diagnosis_to_json(const std::vector<PairVerdict>& verdicts, const std::string& level);
std::optional<std::vector<PairVerdict>> diagnosis_from_json(const nlohmann::json& json, std::string* error);

// The terminal report: per pair the inferred timeouts with evidence, incidents by cause, the
// verdict, the fix, and the idle-age distributions side by side.
std::string render_diagnosis(const std::vector<PairVerdict>& verdicts);

// Which pairs a diagnosis shows (-n/--namespace, --workload): pairs with an end in the namespace
// and, with a workload, that end being the workload. Nothing set: every pair.
struct PairFilter {
    std::optional<std::string> namespace_;
    std::optional<std::string> workload;
    bool matches(const PairKey& pair) const;
};
void filter_verdicts(std::vector<PairVerdict>& verdicts, const PairFilter& filter);

// One node of a cluster-wide diagnosis (`rstwatch diagnose --merge`, the document that
// `kubectl rstwatch diagnose` assembles): its agent's diagnosis, or why there is none.
struct NodeDiagnosis {
    std::string node;
    std::string agent;  // the agent's pod
    bool ready = false;
    bool answered = false;  // the document holds its diagnosis (else `error` says why not)
    std::string level;      // of that diagnosis
    std::vector<PairVerdict> verdicts;
    std::string error;
};

// {"nodes": [{"node", "agent", "ready", "diagnosis": {<diagnosis_to_json>}} | {..., "error": "why"}]}
std::optional<std::vector<NodeDiagnosis>> node_diagnoses_from_json(const nlohmann::json& json, std::string* error);

// The nodes' verdicts as one per pair: every agent sees only its own node's clients, so the
// same pair seen on several nodes is the sum of what each saw (see diagnosis.cpp for how
// estimates and verdicts combine). Each merged verdict lists its nodes; pairs keep the order in
// which they first appear.
std::vector<PairVerdict> merge_verdicts(const std::vector<NodeDiagnosis>& nodes);

// {"level", "pairs": [... with "nodes"], "nodes": [{"node", "agent", "ready", "pairs": N | "error"}]}
nlohmann::json merged_diagnosis_to_json(const std::vector<PairVerdict>& merged, const std::vector<NodeDiagnosis>& nodes,
                                        const std::string& level);
// render_diagnosis of the merged pairs, then which nodes were merged and one line per node
// whose clients are missing.
std::string render_merged_diagnosis(const std::vector<PairVerdict>& merged, const std::vector<NodeDiagnosis>& nodes);

}  // namespace rstwatch
