// Formatting and filtering of incidents.
#include "output.h"

#include <cstdint>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include <yaml-cpp/yaml.h>

#include "attribution.h"

namespace rstwatch {

namespace {

constexpr int64_t kNsPerMs = 1'000'000;
constexpr int64_t kNsPerSec = 1'000'000'000;
constexpr int64_t kSecPerDay = 86'400;

int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian, UTC, no time zone).
struct Civil {
    int64_t year;
    unsigned month;
    unsigned day;
};

Civil civil_from_days(int64_t z) {
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    return {static_cast<int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0), m, d};
}

int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
    y -= m <= 2 ? 1 : 0;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

// Saturates instead of overflowing: records are untrusted input (fuzzed).
int64_t wall_ns(uint64_t monotonic_ns, int64_t offset_ns) {
    const int64_t mono = monotonic_ns > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(monotonic_ns);
    int64_t sum;
    if (__builtin_add_overflow(mono, offset_ns, &sum)) return offset_ns < 0 ? INT64_MIN : INT64_MAX;
    return sum;
}

// nlohmann::json -> YAML, keys in the JSON's order; strings always quoted where YAML would
// read them as something else (yaml-cpp decides).
void emit_yaml(YAML::Emitter& out, const nlohmann::json& value) {
    switch (value.type()) {
        case nlohmann::json::value_t::object:
            out << YAML::BeginMap;
            for (const auto& [key, item] : value.items()) {
                out << YAML::Key << key << YAML::Value;
                emit_yaml(out, item);
            }
            out << YAML::EndMap;
            break;
        case nlohmann::json::value_t::array:
            out << YAML::BeginSeq;
            for (const auto& item : value) emit_yaml(out, item);
            out << YAML::EndSeq;
            break;
        case nlohmann::json::value_t::string: out << YAML::DoubleQuoted << value.get_ref<const std::string&>(); break;
        case nlohmann::json::value_t::boolean: out << value.get<bool>(); break;
        case nlohmann::json::value_t::number_unsigned: out << value.get<uint64_t>(); break;
        case nlohmann::json::value_t::number_integer: out << value.get<int64_t>(); break;
        case nlohmann::json::value_t::number_float: out << value.dump(); break;
        default: out << YAML::Null; break;
    }
}

double round_tenth(double v) { return std::round(v * 10.0) / 10.0; }

std::string endpoint_text(const Endpoint& e) {
    if (e.ip.find(':') != std::string::npos) return "[" + e.ip + "]:" + std::to_string(e.port);
    return e.ip + ":" + std::to_string(e.port);
}

// Appends `text` padded to `width`, then a column gap (always at least one space).
void column(std::string& line, std::string_view text, size_t width) {
    line += text;
    line.append(text.size() < width ? width - text.size() + 1 : 1, ' ');
}

constexpr size_t kWTime = 12, kWCause = 16, kWObserver = 8, kWEndpoint = 21, kWProcess = 22,
                 kWIdle = 9, kWWriteRst = 10, kWState = 11;

std::string fixed(double v, int decimals, const char* unit) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.*f%s", decimals, v, unit);
    return buf;
}

// JSON access helpers: nullopt when absent/null is allowed by the caller, `bad` on wrong type.
std::optional<uint64_t> as_unsigned(const nlohmann::json& v) {
    if (v.is_number_unsigned()) return v.get<uint64_t>();
    if (v.is_number_integer()) {
        const auto s = v.get<int64_t>();
        if (s >= 0) return static_cast<uint64_t>(s);
    }
    return std::nullopt;
}

bool read_endpoint(const nlohmann::json& v, Endpoint& out) {
    if (!v.is_object()) return false;
    auto ip = v.find("ip");
    auto port = v.find("port");
    if (ip == v.end() || !ip->is_string() || port == v.end()) return false;
    auto p = as_unsigned(*port);
    if (!p || *p > std::numeric_limits<uint16_t>::max()) return false;
    out.ip = ip->get<std::string>();
    out.port = static_cast<uint16_t>(*p);
    return true;
}

// Optional nullable field: absent or null -> true with `out` untouched; wrong type -> false.
template <typename F>
bool read_nullable(const nlohmann::json& obj, const char* key, F&& read) {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return true;
    return read(*it);
}

bool read_u32(const nlohmann::json& v, uint32_t& out) {
    auto n = as_unsigned(v);
    if (!n || *n > std::numeric_limits<uint32_t>::max()) return false;
    out = static_cast<uint32_t>(*n);
    return true;
}

bool read_ms(const nlohmann::json& v, std::optional<double>& out) {
    if (!v.is_number()) return false;
    const double d = v.get<double>();
    if (!std::isfinite(d)) return false;
    out = d;
    return true;
}

bool read_facts(const nlohmann::json& v, std::optional<ResetFacts>& out) {
    if (!v.is_object()) return false;
    ResetFacts f;
    auto flag = [&](const char* key, bool& dst) {
        auto it = v.find(key);
        if (it == v.end()) return true;
        if (!it->is_boolean()) return false;
        dst = it->get<bool>();
        return true;
    };
    auto closed = v.find("closed_first");
    if (closed != v.end() && !closed->is_null()) {
        if (!closed->is_string()) return false;
        f.closed_first = closed->get<std::string>();
        if (f.closed_first != "peer" && f.closed_first != "self") return false;
    }
    if (!flag("history", f.history) || !flag("request_unanswered", f.request_unanswered)) return false;
    auto unacked = v.find("unacked_bytes");
    if (unacked != v.end()) {
        auto n = as_unsigned(*unacked);
        if (!n || *n > std::numeric_limits<uint32_t>::max()) return false;
        f.unacked_bytes = static_cast<uint32_t>(*n);
    }
    out = f;
    return true;
}

bool read_string(const nlohmann::json& v, std::string& out) {
    if (!v.is_string()) return false;
    out = v.get<std::string>();
    return true;
}

bool parse_digits(std::string_view s, size_t pos, size_t n, int64_t& out) {
    if (pos + n > s.size()) return false;
    int64_t v = 0;
    for (size_t i = pos; i < pos + n; ++i) {
        if (s[i] < '0' || s[i] > '9') return false;
        v = v * 10 + (s[i] - '0');
    }
    out = v;
    return true;
}

}  // namespace

std::string format_rfc3339_ms(int64_t unix_ns) {
    const int64_t ms_total = floor_div(unix_ns, kNsPerMs);
    const int64_t secs = floor_div(ms_total, 1000);
    const auto ms = static_cast<int>(ms_total - secs * 1000);
    const int64_t days = floor_div(secs, kSecPerDay);
    const int64_t sod = secs - days * kSecPerDay;
    const Civil c = civil_from_days(days);
    char buf[48];
    std::snprintf(buf, sizeof(buf), "%04lld-%02u-%02uT%02d:%02d:%02d.%03dZ",
                  static_cast<long long>(c.year), c.month, c.day, static_cast<int>(sod / 3600),
                  static_cast<int>(sod / 60 % 60), static_cast<int>(sod % 60), ms);
    return buf;
}

std::optional<int64_t> parse_rfc3339(std::string_view s) {
    // YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm)
    int64_t year, month, day, hour, minute, second;
    if (!parse_digits(s, 0, 4, year) || s.size() < 19 || s[4] != '-' ||
        !parse_digits(s, 5, 2, month) || s[7] != '-' || !parse_digits(s, 8, 2, day) ||
        (s[10] != 'T' && s[10] != 't' && s[10] != ' ') || !parse_digits(s, 11, 2, hour) ||
        s[13] != ':' || !parse_digits(s, 14, 2, minute) || s[16] != ':' ||
        !parse_digits(s, 17, 2, second))
        return std::nullopt;
    if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 60)
        return std::nullopt;
    size_t pos = 19;
    int64_t frac_ns = 0;
    if (pos < s.size() && s[pos] == '.') {
        ++pos;
        int64_t scale = 100'000'000;
        const size_t digits_start = pos;
        while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
            frac_ns += (s[pos] - '0') * scale;
            scale /= 10;
            ++pos;
        }
        if (pos == digits_start) return std::nullopt;
    }
    int64_t offset_s = 0;
    if (pos < s.size() && (s[pos] == 'Z' || s[pos] == 'z')) {
        ++pos;
    } else if (pos < s.size() && (s[pos] == '+' || s[pos] == '-')) {
        int64_t oh, om;
        if (!parse_digits(s, pos + 1, 2, oh) || pos + 3 >= s.size() || s[pos + 3] != ':' ||
            !parse_digits(s, pos + 4, 2, om) || oh > 23 || om > 59)
            return std::nullopt;
        offset_s = (oh * 3600 + om * 60) * (s[pos] == '+' ? 1 : -1);
        pos += 6;
    } else {
        return std::nullopt;
    }
    if (pos != s.size()) return std::nullopt;
    const int64_t days =
        days_from_civil(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
    const int64_t secs = days * kSecPerDay + hour * 3600 + minute * 60 + second - offset_s;
    // int64 ns covers 1677..2262; the 4-digit year bound keeps this from overflowing
    // only partly, so check.
    if (secs > std::numeric_limits<int64_t>::max() / kNsPerSec - 1 ||
        secs < std::numeric_limits<int64_t>::min() / kNsPerSec + 1)
        return std::nullopt;
    return secs * kNsPerSec + frac_ns;
}

bool IncidentFilter::matches(const Incident& incident) const {
    if (port && incident.client.port != *port && incident.server.port != *port) return false;
    if (pid && incident.pid != *pid) return false;
    if (comm && incident.comm != *comm) return false;
    if (!causes.empty() && std::find(causes.begin(), causes.end(), incident.cause) == causes.end())
        return false;
    return true;
}

nlohmann::json incident_to_json(const Incident& inc, int64_t offset_ns) {
    using nlohmann::json;
    json j = json::object();
    j["ts"] = format_rfc3339_ms(wall_ns(inc.ts_ns, offset_ns));
    j["cause"] = std::string(to_string(inc.cause));
    j["observer"] = std::string(to_string(inc.observer));
    j["client"] = {{"ip", inc.client.ip}, {"port", inc.client.port}};
    j["server"] = {{"ip", inc.server.ip}, {"port", inc.server.port}};
    j["pid"] = inc.pid != 0 ? json(inc.pid) : json(nullptr);
    j["comm"] = !inc.comm.empty() ? json(inc.comm) : json(nullptr);
    j["idle_before_write_ms"] =
        inc.idle_before_write_ms ? json(round_tenth(*inc.idle_before_write_ms)) : json(nullptr);
    j["write_to_reset_ms"] =
        inc.write_to_reset_ms ? json(round_tenth(*inc.write_to_reset_ms)) : json(nullptr);
    j["idle_precision_ms"] =
        inc.idle_precision_ms ? json(round_tenth(*inc.idle_precision_ms)) : json(nullptr);
    j["state"] = inc.state;
    j["reset_reason"] = !inc.reset_reason.empty() ? json(inc.reset_reason) : json(nullptr);
    j["requests"] = inc.requests;
    j["netns"] = inc.netns;
    if (inc.facts) {
        j["facts"] = {{"history", inc.facts->history},
                      {"closed_first", inc.facts->closed_first.empty() ? json(nullptr) : json(inc.facts->closed_first)},
                      {"unacked_bytes", inc.facts->unacked_bytes},
                      {"request_unanswered", inc.facts->request_unanswered}};
    }
    return j;
}

std::string format_incident_json_line(const Incident& inc, int64_t offset_ns) {
    // Replace invalid UTF-8 (comm comes from the kernel) instead of throwing.
    return incident_to_json(inc, offset_ns).dump(-1, ' ', false,
                                                 nlohmann::json::error_handler_t::replace);
}

std::optional<Incident> incident_from_json(const nlohmann::json& j, int64_t offset_ns) {
    if (!j.is_object()) return std::nullopt;
    Incident inc;

    auto ts = j.find("ts");
    if (ts == j.end() || !ts->is_string()) return std::nullopt;
    auto unix_ns = parse_rfc3339(ts->get_ref<const std::string&>());
    if (!unix_ns) return std::nullopt;
    int64_t monotonic_ns = 0;
    if (__builtin_sub_overflow(*unix_ns, offset_ns, &monotonic_ns) || monotonic_ns < 0)
        return std::nullopt;
    inc.ts_ns = static_cast<uint64_t>(monotonic_ns);

    auto cause = j.find("cause");
    if (cause == j.end() || !cause->is_string()) return std::nullopt;
    auto c = parse_cause(cause->get_ref<const std::string&>());
    if (!c) return std::nullopt;
    inc.cause = *c;

    auto observer = j.find("observer");
    if (observer == j.end() || !observer->is_string()) return std::nullopt;
    const auto& obs = observer->get_ref<const std::string&>();
    if (obs == "client")
        inc.observer = Observer::client;
    else if (obs == "server")
        inc.observer = Observer::server;
    else
        return std::nullopt;

    auto client = j.find("client");
    auto server = j.find("server");
    if (client == j.end() || server == j.end() || !read_endpoint(*client, inc.client) ||
        !read_endpoint(*server, inc.server))
        return std::nullopt;

    auto state = j.find("state");
    if (state == j.end() || !state->is_string()) return std::nullopt;
    inc.state = state->get<std::string>();

    const bool ok =
        read_nullable(j, "pid", [&](const nlohmann::json& v) { return read_u32(v, inc.pid); }) &&
        read_nullable(j, "comm",
                      [&](const nlohmann::json& v) { return read_string(v, inc.comm); }) &&
        read_nullable(j, "idle_before_write_ms",
                      [&](const nlohmann::json& v) {
                          return read_ms(v, inc.idle_before_write_ms);
                      }) &&
        read_nullable(
            j, "write_to_reset_ms",
            [&](const nlohmann::json& v) { return read_ms(v, inc.write_to_reset_ms); }) &&
        read_nullable(
            j, "idle_precision_ms",
            [&](const nlohmann::json& v) { return read_ms(v, inc.idle_precision_ms); }) &&
        read_nullable(j, "reset_reason",
                      [&](const nlohmann::json& v) { return read_string(v, inc.reset_reason); }) &&
        read_nullable(j, "requests",
                      [&](const nlohmann::json& v) { return read_u32(v, inc.requests); }) &&
        read_nullable(j, "netns", [&](const nlohmann::json& v) { return read_u32(v, inc.netns); }) &&
        read_nullable(j, "facts", [&](const nlohmann::json& v) { return read_facts(v, inc.facts); });
    if (!ok) return std::nullopt;
    return inc;
}

namespace {

constexpr size_t kWName = 40, kWAddress = 21, kWNetns = 10, kWRequests = 8;

// "shop/tomcat-0" (or "shop/tomcat") for a pod, else the address; the server's port is kept
// because one pod may serve several.
std::string name_text(const Endpoint& endpoint, const Identity* identity, const TableOptions& options,
                      bool with_port) {
    if (identity == nullptr || identity->pod.empty()) return endpoint_text(endpoint);
    std::string name = identity->namespace_ + "/" +
                       (options.workload_level && !identity->workload.empty() ? identity->workload : identity->pod);
    if (with_port) name += ":" + std::to_string(endpoint.port);
    return name;
}

}  // namespace

std::string format_table_header(const TableOptions& options) {
    const size_t endpoint_width = options.names ? kWName : kWEndpoint;
    std::string line;
    column(line, "TIME", kWTime);
    column(line, "CAUSE", kWCause);
    column(line, "OBSERVER", kWObserver);
    column(line, "CLIENT", endpoint_width);
    column(line, "SERVER", endpoint_width);
    column(line, "PID/COMM", kWProcess);
    column(line, "IDLE", kWIdle);
    column(line, "WRITE->RST", kWWriteRst);
    column(line, "STATE", kWState);
    if (options.wide) {
        if (options.names) {
            column(line, "CLIENT-ADDR", kWAddress);
            column(line, "SERVER-ADDR", kWAddress);
        }
        column(line, "NETNS", kWNetns);
        column(line, "REQUESTS", kWRequests);
    }
    line += "REASON";
    return line;
}

std::string format_incident_row(const Incident& inc, int64_t offset_ns, const TableOptions& options,
                                const Identity* client, const Identity* server) {
    const std::string ts = format_rfc3339_ms(wall_ns(inc.ts_ns, offset_ns));
    // "YYYY-MM-DDTHH:MM:SS.mmmZ" -> "HH:MM:SS.mmm" (years are always 4 digits here).
    const std::string time = ts.size() >= 24 ? ts.substr(ts.size() - 13, 12) : ts;
    std::string process = "-";
    if (inc.pid != 0 || !inc.comm.empty())
        process = (inc.pid != 0 ? std::to_string(inc.pid) : std::string("?")) + "/" +
                  (inc.comm.empty() ? std::string("?") : inc.comm);
    const size_t endpoint_width = options.names ? kWName : kWEndpoint;
    std::string line;
    column(line, time, kWTime);
    column(line, to_string(inc.cause), kWCause);
    column(line, to_string(inc.observer), kWObserver);
    column(line, options.names ? name_text(inc.client, client, options, false) : endpoint_text(inc.client),
           endpoint_width);
    column(line, options.names ? name_text(inc.server, server, options, true) : endpoint_text(inc.server),
           endpoint_width);
    column(line, process, kWProcess);
    column(line,
           inc.idle_before_write_ms ? fixed(*inc.idle_before_write_ms / 1000.0, 3, "s") : "-",
           kWIdle);
    column(line, inc.write_to_reset_ms ? fixed(*inc.write_to_reset_ms, 1, "ms") : "-", kWWriteRst);
    column(line, inc.state.empty() ? "-" : inc.state, kWState);
    if (options.wide) {
        if (options.names) {
            column(line, endpoint_text(inc.client), kWAddress);
            column(line, endpoint_text(inc.server), kWAddress);
        }
        column(line, inc.netns != 0 ? std::to_string(inc.netns) : "-", kWNetns);
        column(line, std::to_string(inc.requests), kWRequests);
    }
    line += inc.reset_reason.empty() ? "-" : inc.reset_reason;
    return line;
}

std::string format_yaml_document(const nlohmann::json& json) {
    YAML::Emitter out;
    emit_yaml(out, json);
    return std::string("---\n") + out.c_str();
}

std::string format_summary(const std::array<uint64_t, kCauseCount>& by_cause,
                           uint64_t records_lost) {
    uint64_t total = 0;
    std::vector<int> order;
    for (int i = 0; i < kCauseCount; ++i) {
        total += by_cause[static_cast<size_t>(i)];
        if (by_cause[static_cast<size_t>(i)] != 0) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
        return by_cause[static_cast<size_t>(a)] > by_cause[static_cast<size_t>(b)];
    });
    std::string s = std::to_string(total) + (total == 1 ? " incident" : " incidents");
    if (!order.empty()) {
        s += " (";
        for (size_t k = 0; k < order.size(); ++k) {
            if (k != 0) s += ' ';
            s += to_string(static_cast<Cause>(order[k]));
            s += '=';
            s += std::to_string(by_cause[static_cast<size_t>(order[k])]);
        }
        s += ')';
    }
    s += ", " + std::to_string(records_lost) + (records_lost == 1 ? " record lost" : " records lost");
    return s;
}

}  // namespace rstwatch
