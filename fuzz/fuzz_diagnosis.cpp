// Fuzzes the /diagnose JSON reader (agent/diagnosis.h: diagnosis_from_json, as `rstwatch
// diagnose --from` reads the agent's answer) and the terminal report rendered from it.
//
// Invariants: nothing throws; a diagnosis that was read renders, and writes back to JSON that
// reads again with the same number of pairs.
#include <cstdint>
#include <string>
#include <string_view>

#include "diagnosis.h"
#include "fuzz_common.h"

using namespace rstwatch;

namespace {

// Known: fuzz/crashes/diagnosis_float_to_size_t.json (a float where an integer is read, out of
// the integer's range: UB). Floats in (-1, 65536) convert to every integer type read.
bool has_float(const nlohmann::json& j) {
    if (j.is_number_float()) {
        const double v = j.get<double>();
        return !(v > -1.0 && v < 65536.0);
    }
    if (j.is_structured())
        for (const auto& item : j)
            if (has_float(item)) return true;
    return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (json.is_discarded()) return 0;
    if (fuzz::skip_known() && has_float(json)) return 0;
    std::string error;
    auto verdicts = diagnosis_from_json(json, &error);
    if (!verdicts) {
        RSTWATCH_FUZZ_CHECK(fuzz::one_line(error), error);
    } else {
        (void)render_diagnosis(*verdicts);
        const auto again_json = diagnosis_to_json(*verdicts, "workload");
        std::string again_error;
        const auto again = diagnosis_from_json(
            nlohmann::json::parse(again_json.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)),
            &again_error);
        RSTWATCH_FUZZ_CHECK(again.has_value() && again->size() == verdicts->size(), again_error);
    }
    // A single pair, as verdict_from_json reads the items.
    std::string verdict_error;
    if (auto v = verdict_from_json(json, &verdict_error)) (void)render_diagnosis({*v});
    return 0;
}
