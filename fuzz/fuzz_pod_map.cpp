// Fuzzes the pod map parser (agent/attribution.h: PodMap::parse, `--pod-map FILE` and its SIGHUP
// reload) and the address/CIDR parsers it rests on.
//
// Input: the pod map file's text. Also, each line of it is parsed as an address and as a CIDR.
// Invariants checked (documented in attribution.h):
//   - parse never throws; an error is one line "line N: ...", N >= 1;
//   - every entry's range is a network address (no host bits) and lookup(entry network) finds an
//     entry at least as specific;
//   - Cidr::parse(c.str()) == c and IpAddr::parse(a.str()) == a.
#include <cstdint>
#include <string>
#include <string_view>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>
#include <yaml-cpp/exceptions.h>

#include <sstream>

#include "attribution.h"
#include "fuzz_common.h"

using namespace rstwatch;

namespace {

// Counts documents the way YAML::LoadAll iterates them, without building nodes.
struct NullHandler : YAML::EventHandler {
    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
};

// Known: fuzz/crashes/pod_map_yaml_cpp_memory_exhaustion*.yaml. yaml-cpp 0.7's parser can report
// documents forever without consuming input; YAML::LoadAll then grows its vector until memory
// runs out. True when the text has more documents than it could possibly hold.
bool yaml_runaway(std::string_view text) {
    try {
        std::istringstream in{std::string(text)};
        YAML::Parser parser(in);
        NullHandler handler;
        size_t docs = 0;
        while (parser.HandleNextDocument(handler))
            if (++docs > text.size() + 1) return true;
    } catch (const YAML::Exception&) {
    }
    return false;
}

void check_address_text(std::string_view text) {
    if (auto addr = IpAddr::parse(text)) {
        const std::string s = addr->str();
        auto again = IpAddr::parse(s);
        RSTWATCH_FUZZ_CHECK(again.has_value() && *again == *addr, s);
        RSTWATCH_FUZZ_CHECK(addr->is_v4() == (s.find(':') == std::string::npos), s);
    }
    if (auto cidr = Cidr::parse(text)) {
        RSTWATCH_FUZZ_CHECK(cidr->prefix_len >= 0 && cidr->prefix_len <= 128, std::string(text));
        RSTWATCH_FUZZ_CHECK(!cidr->has_host_bits(cidr->base), std::string(text));
        RSTWATCH_FUZZ_CHECK(cidr->contains(cidr->base), std::string(text));
        const std::string s = cidr->str();
        auto again = Cidr::parse(s);
        RSTWATCH_FUZZ_CHECK(again.has_value() && *again == *cidr, std::string(text) + " -> " + s);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    if (fuzz::skip_known() && yaml_runaway(text)) return 0;

    std::string error;
    auto map = PodMap::parse(text, &error);
    if (!map) {
        RSTWATCH_FUZZ_CHECK(error.rfind("line ", 0) == 0, error);
        RSTWATCH_FUZZ_CHECK(error.size() > 5 && error[5] >= '1' && error[5] <= '9', error);
        RSTWATCH_FUZZ_CHECK(fuzz::one_line(error), error);
    } else {
        for (const PodMapEntry& e : map->entries()) {
            RSTWATCH_FUZZ_CHECK(e.line >= 1, e.range.str());
            RSTWATCH_FUZZ_CHECK(!e.range.has_host_bits(e.range.base), e.range.str());
            RSTWATCH_FUZZ_CHECK(!e.identity.workload.empty(), e.range.str());
            const PodMapEntry* hit = map->lookup(e.range.base);
            RSTWATCH_FUZZ_CHECK(hit != nullptr && hit->range.prefix_len >= e.range.prefix_len,
                                e.range.str());
        }
        for (const char* probe : {"10.244.1.2", "10.0.0.1", "fd00::1", "::ffff:192.168.10.7", "::"})
            (void)map->lookup(*IpAddr::parse(probe));
    }

    // Each line also as an address and a CIDR (the values of `ip:` and `cidr:`).
    size_t start = 0;
    while (start <= text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string_view::npos) end = text.size();
        check_address_text(text.substr(start, end - start));
        start = end + 1;
    }
    return 0;
}
