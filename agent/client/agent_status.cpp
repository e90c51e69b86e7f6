#include "agent_status.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>

namespace rstwatch {
namespace {

bool is_name_char(char c, bool first) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
           (!first && c >= '0' && c <= '9');
}

std::string_view take_name(std::string_view& rest) {
    size_t n = 0;
    while (n < rest.size() && is_name_char(rest[n], n == 0)) ++n;
    std::string_view name = rest.substr(0, n);
    rest.remove_prefix(n);
    return name;
}

void skip_blanks(std::string_view& rest) {
    while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
}

// A quoted label value at the start of `rest` (opening quote included); unescaped.
std::optional<std::string> take_quoted(std::string_view& rest) {
    if (rest.empty() || rest.front() != '"') return std::nullopt;
    std::string value;
    for (size_t i = 1; i < rest.size(); ++i) {
        const char c = rest[i];
        if (c == '"') {
            rest.remove_prefix(i + 1);
            return value;
        }
        if (c == '\\') {
            if (++i == rest.size()) return std::nullopt;
            const char escaped = rest[i];
            value.push_back(escaped == 'n' ? '\n' : escaped);
        } else {
            value.push_back(c);
        }
    }
    return std::nullopt;
}

std::optional<double> parse_value(std::string_view text) {
    if (text == "+Inf") return HUGE_VAL;
    if (text == "-Inf") return -HUGE_VAL;
    if (text == "NaN") return std::nan("");
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

std::string cell(const std::string& text) {
    if (text.empty()) return "-";
    std::string out = text;
    std::replace_if(out.begin(), out.end(), [](char c) { return c == ' ' || c == '\t' || c == '\n'; }, '_');
    return out;
}

std::string cell(const std::optional<double>& value) {
    if (!value) return "-";
    return fmt::format("{}", *value);
}

}  // namespace

const std::string* PrometheusSample::label(std::string_view key) const {
    for (const auto& [name, value] : labels)
        if (name == key) return &value;
    return nullptr;
}

std::optional<PrometheusSample> parse_prometheus_sample(std::string_view line) {
    skip_blanks(line);
    if (line.empty() || line.front() == '#') return std::nullopt;
    PrometheusSample sample;
    sample.name = std::string(take_name(line));
    if (sample.name.empty()) return std::nullopt;
    if (!line.empty() && line.front() == '{') {
        line.remove_prefix(1);
        for (;;) {
            skip_blanks(line);
            if (!line.empty() && line.front() == '}') {
                line.remove_prefix(1);
                break;
            }
            std::string label_name(take_name(line));
            skip_blanks(line);
            if (label_name.empty() || line.empty() || line.front() != '=') return std::nullopt;
            line.remove_prefix(1);
            skip_blanks(line);
            auto value = take_quoted(line);
            if (!value) return std::nullopt;
            sample.labels.emplace_back(std::move(label_name), std::move(*value));
            skip_blanks(line);
            if (!line.empty() && line.front() == ',') line.remove_prefix(1);
            else if (line.empty() || line.front() != '}') return std::nullopt;
        }
    }
    if (line.empty() || (line.front() != ' ' && line.front() != '\t')) return std::nullopt;
    skip_blanks(line);
    const size_t end = line.find_first_of(" \t\r");
    auto value = parse_value(line.substr(0, end));
    if (!value) return std::nullopt;
    sample.value = *value;
    return sample;
}

void read_agent_metrics(std::string_view text, AgentStatus* status) {
    bool any_sample = false;
    while (!text.empty()) {
        const size_t newline = text.find('\n');
        const std::string_view line = text.substr(0, newline);
        text.remove_prefix(newline == std::string_view::npos ? text.size() : newline + 1);
        // Cheap prefix test first: /metrics of a large cluster has many pair series.
        if (line.rfind("rstwatch_", 0) != 0) continue;
        auto sample = parse_prometheus_sample(line);
        if (!sample) continue;
        any_sample = true;
        if (sample->name == "rstwatch_build_info") {
            if (const auto* v = sample->label("version")) status->version = *v;
            if (const auto* v = sample->label("write_hook")) status->write_hook = *v;
        } else if (sample->name == "rstwatch_records_lost_total") {
            status->records_lost = sample->value;
        } else if (sample->name == "rstwatch_tracked_connections") {
            status->tracked_connections = sample->value;
        } else if (sample->name == "rstwatch_incidents_total") {
            status->incidents = status->incidents.value_or(0) + sample->value;
        } else if (sample->name == "rstwatch_attribution_synced" && sample->value == 0) {
            if (const auto* v = sample->label("source")) status->attribution_sources_unsynced.push_back(*v);
        }
    }
    // An agent that saw no incident exports no incident series: that is a count of 0.
    if (any_sample && !status->incidents) status->incidents = 0;
}

std::string render_agent_status(const AgentStatus& status, bool headers) {
    const std::array<std::string, 7> header = {"AGENT", "READY", "WRITE HOOK", "LOST RECORDS",
                                               "TRACKED", "INCIDENTS", "VERSION"};
    const std::array<std::string, 7> row = {cell(status.url),
                                            status.ready ? "yes" : "no",
                                            cell(status.write_hook),
                                            cell(status.records_lost),
                                            cell(status.tracked_connections),
                                            cell(status.incidents),
                                            cell(status.version)};
    std::string out;
    auto append_row = [&](const std::array<std::string, 7>& cells) {
        for (size_t i = 0; i < cells.size(); ++i) {
            const size_t width = headers ? std::max(header[i].size(), row[i].size()) : row[i].size();
            if (i + 1 < cells.size()) out += fmt::format("{:<{}}   ", cells[i], width);
            else out += cells[i];
        }
        out += '\n';
    };
    if (headers) append_row(header);
    append_row(row);
    return out;
}

nlohmann::json agent_status_to_json(const AgentStatus& status) {
    auto number_or_null = [](const std::optional<double>& v) -> nlohmann::json {
        if (!v || !std::isfinite(*v)) return nullptr;
        return *v;
    };
    nlohmann::json out = {
        {"agent", status.url},
        {"ready", status.ready},
        {"version", status.version},
        {"write_hook", status.write_hook},
        {"records_lost", number_or_null(status.records_lost)},
        {"tracked_connections", number_or_null(status.tracked_connections)},
        {"incidents", number_or_null(status.incidents)},
        {"attribution_unsynced", status.attribution_sources_unsynced},
    };
    if (!status.ready) out["not_ready_reason"] = status.not_ready_reason;
    return out;
}

}  // namespace rstwatch
