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

}  // namespace rstwatch
