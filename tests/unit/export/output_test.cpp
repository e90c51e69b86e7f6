// Output tests: RFC 3339 time, filters, JSON lines (keys, nulls, round trip), table, summary.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "attribution.h"
#include "output.h"

using namespace rstwatch;
using nlohmann::json;

namespace {

constexpr int64_t kMs = 1'000'000;
constexpr int64_t kSec = 1'000'000'000;
// 2026-11-25T07:47:52Z (date -u -d @1795592872).
constexpr int64_t kWall = 1'795'592'872LL * kSec;

Incident sample_incident() {
    Incident inc;
    inc.ts_ns = 5'000 * static_cast<uint64_t>(kSec) + 123 * kMs;  // CLOCK_MONOTONIC
    inc.cause = Cause::idle_close_race;
    inc.observer = Observer::client;
    inc.client = {"10.244.1.5", 43210};
    inc.server = {"10.244.2.7", 8080};
    inc.pid = 4242;
    inc.comm = "nginx";
    inc.idle_before_write_ms = 2000.04;
    inc.write_to_reset_ms = 6.26;
    inc.state = "CLOSE_WAIT";
    inc.reset_reason = "";
    inc.requests = 17;
    inc.netns = 4026531840u;
    return inc;
}

// Offset that maps the sample's monotonic time to kWall + 123 ms.
constexpr int64_t kOffset = kWall - 5'000 * kSec;

}  // namespace

TEST(Rfc3339, Formats) {
    EXPECT_EQ(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
    EXPECT_EQ(format_rfc3339_ms(kWall + 123 * kMs), "2026-11-25T07:47:52.123Z");
    EXPECT_EQ(format_rfc3339_ms(kWall + 123 * kMs + 999'999), "2026-11-25T07:47:52.123Z");
    EXPECT_EQ(format_rfc3339_ms(951'782'400LL * kSec), "2000-02-29T00:00:00.000Z");  // leap day
    EXPECT_EQ(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    EXPECT_EQ(format_rfc3339_ms(1'704'067'199LL * kSec + 999 * kMs), "2023-12-31T23:59:59.999Z");
}

TEST(Rfc3339, ParsesWhatItFormats) {
    for (int64_t t : {int64_t{0}, kWall + 123 * kMs, int64_t{-kMs}, int64_t{951'782'400} * kSec}) {
        auto parsed = parse_rfc3339(format_rfc3339_ms(t));
        ASSERT_TRUE(parsed) << t;
        EXPECT_EQ(*parsed, t);
    }
    EXPECT_EQ(parse_rfc3339("2026-11-25T08:47:52.5+01:00"), kWall + 500 * kMs);
    EXPECT_EQ(parse_rfc3339("2026-11-25T07:47:52Z"), kWall);
    EXPECT_FALSE(parse_rfc3339(""));
    EXPECT_FALSE(parse_rfc3339("2026-11-25T07:47:52"));
    EXPECT_FALSE(parse_rfc3339("2026-13-25T07:47:52Z"));
    EXPECT_FALSE(parse_rfc3339("2026-11-25T07:47:52.Z"));
    EXPECT_FALSE(parse_rfc3339("2026-11-25T07:47:52Zjunk"));
    EXPECT_FALSE(parse_rfc3339("9999-11-25T07:47:52Z"));  // beyond int64 ns
}

TEST(Filter, Matches) {
    const Incident inc = sample_incident();
    EXPECT_TRUE(IncidentFilter{}.matches(inc));

    IncidentFilter f;
    f.port = 8080;  // server side
    EXPECT_TRUE(f.matches(inc));
    f.port = 43210;  // client side
    EXPECT_TRUE(f.matches(inc));
    f.port = 9090;
    EXPECT_FALSE(f.matches(inc));

    IncidentFilter p;
    p.pid = 4242;
    EXPECT_TRUE(p.matches(inc));
    p.pid = 1;
    EXPECT_FALSE(p.matches(inc));

    IncidentFilter c;
    c.comm = "nginx";
    EXPECT_TRUE(c.matches(inc));
    c.comm = "ngin";
    EXPECT_FALSE(c.matches(inc));

    IncidentFilter causes;
    causes.causes = {Cause::write_after_fin, Cause::idle_close_race};
    EXPECT_TRUE(causes.matches(inc));
    causes.causes = {Cause::abort_on_close};
    EXPECT_FALSE(causes.matches(inc));

    IncidentFilter all;  // every criterion must hold
    all.port = 8080;
    all.pid = 4242;
    all.comm = "nginx";
    all.causes = {Cause::idle_close_race};
    EXPECT_TRUE(all.matches(inc));
    all.comm = "envoy";
    EXPECT_FALSE(all.matches(inc));
}

TEST(Json, KeysAndValues) {
    const json j = incident_to_json(sample_incident(), kOffset);
    std::set<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.insert(k);
    EXPECT_EQ(keys, (std::set<std::string>{"ts", "cause", "observer", "client", "server", "pid",
                                           "comm", "idle_before_write_ms", "write_to_reset_ms",
                                           "idle_precision_ms", "state", "reset_reason", "requests",
                                           "netns"}));
    EXPECT_EQ(j["ts"], "2026-11-25T07:47:52.123Z");
    EXPECT_EQ(j["cause"], "idle_close_race");
    EXPECT_EQ(j["observer"], "client");
    EXPECT_EQ(j["client"], (json{{"ip", "10.244.1.5"}, {"port", 43210}}));
    EXPECT_EQ(j["server"], (json{{"ip", "10.244.2.7"}, {"port", 8080}}));
    EXPECT_EQ(j["pid"], 4242);
    EXPECT_EQ(j["comm"], "nginx");
    EXPECT_DOUBLE_EQ(j["idle_before_write_ms"].get<double>(), 2000.0);
    EXPECT_DOUBLE_EQ(j["write_to_reset_ms"].get<double>(), 6.3);
    EXPECT_EQ(j["state"], "CLOSE_WAIT");
    EXPECT_TRUE(j["reset_reason"].is_null());
    EXPECT_EQ(j["requests"], 17);
    EXPECT_EQ(j["netns"], 4026531840u);
    EXPECT_TRUE(j["idle_precision_ms"].is_null());  // unset in the sample
}

TEST(Json, ResetOtherCarriesItsFactsAndRoundTrips) {
    Incident inc = sample_incident();
    inc.cause = Cause::reset_other;
    inc.idle_before_write_ms.reset();
    inc.write_to_reset_ms.reset();
    inc.facts = ResetFacts{true, "peer", 300, true};
    Incident race = sample_incident();
    race.idle_precision_ms = 4.0;
    for (const Incident& original : {inc, race}) {
        const json j = incident_to_json(original, kOffset);
        EXPECT_EQ(j.contains("facts"), original.facts.has_value());
        auto back = incident_from_json(j, kOffset);
        ASSERT_TRUE(back) << j.dump();
        EXPECT_EQ(back->facts, original.facts);
        EXPECT_EQ(back->idle_precision_ms, original.idle_precision_ms);
    }
    const json j = incident_to_json(inc, kOffset);
    EXPECT_EQ(j["facts"], (json{{"history", true}, {"closed_first", "peer"}, {"unacked_bytes", 300},
                                {"request_unanswered", true}}));
    json bad = j;
    bad["facts"]["closed_first"] = "nobody";
    EXPECT_FALSE(incident_from_json(bad, kOffset));
    bad = j;
    bad["facts"] = "x";
    EXPECT_FALSE(incident_from_json(bad, kOffset));
}

TEST(Json, UnknownValuesAreNull) {
    Incident inc = sample_incident();
    inc.pid = 0;
    inc.comm.clear();
    inc.idle_before_write_ms.reset();
    inc.write_to_reset_ms.reset();
    inc.reset_reason = "TCP_ABORT_ON_CLOSE";
    const json j = incident_to_json(inc, kOffset);
    EXPECT_TRUE(j["pid"].is_null());
    EXPECT_TRUE(j["comm"].is_null());
    EXPECT_TRUE(j["idle_before_write_ms"].is_null());
    EXPECT_TRUE(j["write_to_reset_ms"].is_null());
    EXPECT_EQ(j["reset_reason"], "TCP_ABORT_ON_CLOSE");
}

TEST(Json, LineIsOneCompactLine) {
    const std::string line = format_incident_json_line(sample_incident(), kOffset);
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(line.front(), '{');
    EXPECT_EQ(line.back(), '}');
    EXPECT_EQ(json::parse(line), incident_to_json(sample_incident(), kOffset));

    Incident bad = sample_incident();
    bad.comm = std::string("ng\xff\xfe", 4);  // not UTF-8: must not throw
    EXPECT_NO_THROW(format_incident_json_line(bad, kOffset));
}

TEST(Json, RoundTrip) {
    Incident inc = sample_incident();
    inc.idle_before_write_ms = 2000.0;  // values at the JSON's 0.1 ms precision
    inc.write_to_reset_ms = 6.3;
    inc.reset_reason = "TCP_ABORT_ON_DATA";
    inc.cause = Cause::data_after_close;
    inc.observer = Observer::server;
    inc.client = {"2001:db8::1", 51000};
    const json j = json::parse(format_incident_json_line(inc, kOffset));
    auto back = incident_from_json(j, kOffset);
    ASSERT_TRUE(back);
    EXPECT_EQ(back->ts_ns, inc.ts_ns);
    EXPECT_EQ(back->cause, inc.cause);
    EXPECT_EQ(back->observer, inc.observer);
    EXPECT_EQ(back->client, inc.client);
    EXPECT_EQ(back->server, inc.server);
    EXPECT_EQ(back->pid, inc.pid);
    EXPECT_EQ(back->comm, inc.comm);
    EXPECT_EQ(back->idle_before_write_ms, inc.idle_before_write_ms);
    EXPECT_EQ(back->write_to_reset_ms, inc.write_to_reset_ms);
    EXPECT_EQ(back->state, inc.state);
    EXPECT_EQ(back->reset_reason, inc.reset_reason);
    EXPECT_EQ(back->requests, inc.requests);
    EXPECT_EQ(back->netns, inc.netns);

    // Nulls come back as unknown; default offset gives Unix ns.
    Incident unknown = sample_incident();
    unknown.pid = 0;
    unknown.comm.clear();
    unknown.idle_before_write_ms.reset();
    unknown.write_to_reset_ms.reset();
    auto u = incident_from_json(incident_to_json(unknown, kOffset));
    ASSERT_TRUE(u);
    EXPECT_EQ(u->ts_ns, static_cast<uint64_t>(kWall + 123 * kMs));
    EXPECT_EQ(u->pid, 0u);
    EXPECT_EQ(u->comm, "");
    EXPECT_FALSE(u->idle_before_write_ms);
    EXPECT_FALSE(u->write_to_reset_ms);
    EXPECT_EQ(format_incident_json_line(*u, 0), format_incident_json_line(unknown, kOffset));
}

TEST(Json, FromJsonToleratesExtraKeysAndRejectsWrongTypes) {
    const json good = incident_to_json(sample_incident(), kOffset);
    json extra = good;
    extra["future_field"] = {1, 2, 3};
    extra["client"]["pod"] = "nginx-abc";
    EXPECT_TRUE(incident_from_json(extra, kOffset));

    auto with = [&](const std::string& key, json value) {
        json j = good;
        j[key] = std::move(value);
        return incident_from_json(j, kOffset);
    };
    EXPECT_FALSE(with("ts", 12345));
    EXPECT_FALSE(with("ts", "yesterday"));
    EXPECT_FALSE(with("cause", "gremlins"));
    EXPECT_FALSE(with("cause", 1));
    EXPECT_FALSE(with("observer", "both"));
    EXPECT_FALSE(with("client", "10.0.0.1:80"));
    EXPECT_FALSE(with("client", json{{"ip", "10.0.0.1"}, {"port", 70000}}));
    EXPECT_FALSE(with("server", json{{"ip", 10}, {"port", 80}}));
    EXPECT_FALSE(with("server", json{{"ip", "10.0.0.1"}, {"port", -1}}));
    EXPECT_FALSE(with("pid", "4242"));
    EXPECT_FALSE(with("pid", -5));
    EXPECT_FALSE(with("pid", 1.5));
    EXPECT_FALSE(with("comm", 7));
    EXPECT_FALSE(with("idle_before_write_ms", "2s"));
    EXPECT_FALSE(with("write_to_reset_ms", json::array()));
    EXPECT_FALSE(with("state", nullptr));
    EXPECT_FALSE(with("reset_reason", false));
    EXPECT_FALSE(with("requests", 1e20));
    EXPECT_FALSE(with("netns", 5'000'000'000LL));
    EXPECT_TRUE(with("pid", nullptr));
    EXPECT_TRUE(with("idle_before_write_ms", 12));  // integers are numbers too

    json missing = good;
    missing.erase("cause");
    EXPECT_FALSE(incident_from_json(missing));
    EXPECT_FALSE(incident_from_json(json::array()));
    EXPECT_FALSE(incident_from_json(json("text")));
    EXPECT_FALSE(incident_from_json(json()));
}

TEST(Table, HeaderAndRowAlign) {
    const std::string header = format_table_header();
    const std::string row = format_incident_row(sample_incident(), kOffset);
    for (const char* col : {"TIME", "CAUSE", "OBSERVER", "CLIENT", "SERVER", "PID/COMM", "IDLE",
                            "WRITE->RST", "STATE", "REASON"})
        EXPECT_NE(header.find(col), std::string::npos) << col;
    EXPECT_EQ(row.rfind("07:47:52.123 ", 0), 0u) << row;
    // Each value starts under its column title.
    auto expect_under = [&](const char* title, const std::string& value) {
        EXPECT_EQ(row.find(" " + value + " ") + 1, header.find(std::string(" ") + title + " ") + 1)
            << title << "\n" << header << "\n" << row;
    };
    expect_under("CAUSE", "idle_close_race");
    expect_under("OBSERVER", "client");
    expect_under("CLIENT", "10.244.1.5:43210");
    expect_under("SERVER", "10.244.2.7:8080");
    expect_under("PID/COMM", "4242/nginx");
    expect_under("IDLE", "2.000s");
    expect_under("WRITE->RST", "6.3ms");
    expect_under("STATE", "CLOSE_WAIT");
    EXPECT_EQ(row.substr(row.size() - 2), " -");  // no reason
    EXPECT_EQ(row.find('\n'), std::string::npos);
}

TEST(Table, UnknownsAndIpv6) {
    Incident inc = sample_incident();
    inc.pid = 0;
    inc.comm.clear();
    inc.idle_before_write_ms.reset();
    inc.write_to_reset_ms.reset();
    inc.client = {"fd00::5", 40000};
    inc.reset_reason = "TCP_ABORT_ON_CLOSE";
    const std::string row = format_incident_row(inc, kOffset);
    EXPECT_NE(row.find("[fd00::5]:40000"), std::string::npos) << row;
    EXPECT_EQ(row.substr(row.size() - 18), "TCP_ABORT_ON_CLOSE");
    EXPECT_EQ(row.find("ms"), std::string::npos) << row;
    // A long IPv6 endpoint widens its cell but keeps a gap before the next one.
    inc.client = {"2001:db8:1234:5678:9abc:def0:1234:5678", 65535};
    const std::string wide = format_incident_row(inc, kOffset);
    EXPECT_NE(wide.find("[2001:db8:1234:5678:9abc:def0:1234:5678]:65535 10.244.2.7:8080"),
              std::string::npos)
        << wide;
}

TEST(Table, NamesPodsFromTheStreamAndWideAddsAddresses) {
    Incident inc = sample_incident();
    inc.netns = 4026532000;
    inc.requests = 3;
    const Identity client{"ingress", "ingress-nginx-controller-5d88c", "ingress-nginx-controller"};
    const Identity server{"shop", "tomcat-0", "tomcat"};
    TableOptions names;
    names.names = true;
    const std::string header = format_table_header(names);
    const std::string row = format_incident_row(inc, kOffset, names, &client, &server);
    auto expect_under = [&](const std::string& h, const std::string& r, const char* title, const std::string& value) {
        ASSERT_NE(r.find(" " + value + " "), std::string::npos) << value << "\n" << r;
        EXPECT_EQ(r.find(" " + value + " ") + 1, h.find(std::string(" ") + title + " ") + 1)
            << title << "\n" << h << "\n" << r;
    };
    expect_under(header, row, "CLIENT", "ingress/ingress-nginx-controller-5d88c");
    expect_under(header, row, "SERVER", "shop/tomcat-0:8080");  // the port: a pod may serve several
    EXPECT_EQ(row.find("10.244."), std::string::npos) << "addresses only with -o wide: " << row;
    EXPECT_EQ(header.find("NETNS"), std::string::npos);

    names.workload_level = true;
    const std::string by_workload = format_incident_row(inc, kOffset, names, &client, &server);
    EXPECT_NE(by_workload.find(" ingress/ingress-nginx-controller "), std::string::npos) << by_workload;
    EXPECT_NE(by_workload.find(" shop/tomcat:8080 "), std::string::npos) << by_workload;

    names.workload_level = false;
    names.wide = true;
    const std::string wide_header = format_table_header(names);
    const std::string wide = format_incident_row(inc, kOffset, names, &client, &server);
    expect_under(wide_header, wide, "CLIENT-ADDR", "10.244.1.5:43210");
    expect_under(wide_header, wide, "SERVER-ADDR", "10.244.2.7:8080");
    expect_under(wide_header, wide, "NETNS", "4026532000");
    expect_under(wide_header, wide, "REQUESTS", "3");

    // An end that is not a pod (a node, the world) keeps its address.
    const Identity world{"", "", "world"};
    const std::string unnamed = format_incident_row(inc, kOffset, TableOptions{false, true, false}, &world, &server);
    EXPECT_NE(unnamed.find(" 10.244.1.5:43210 "), std::string::npos) << unnamed;
}

TEST(Table, WideWithoutNamesAddsNetnsAndRequests) {
    Incident inc = sample_incident();
    inc.netns = 77;
    inc.requests = 12;
    TableOptions wide;
    wide.wide = true;
    const std::string header = format_table_header(wide);
    const std::string row = format_incident_row(inc, kOffset, wide);
    EXPECT_EQ(header.find("CLIENT-ADDR"), std::string::npos);
    EXPECT_NE(header.find(" NETNS "), std::string::npos);
    EXPECT_EQ(row.find(" 77 ") + 1, header.find(" NETNS ") + 1) << header << "\n" << row;
    EXPECT_EQ(row.find(" 12 ") + 1, header.find(" REQUESTS ") + 1) << header << "\n" << row;
}

TEST(Yaml, OneDocumentWithTheJsonKeys) {
    const json incident = incident_to_json(sample_incident(), kOffset);
    const std::string yaml = format_yaml_document(incident);
    EXPECT_EQ(yaml.rfind("---\n", 0), 0u) << yaml;
    for (const auto& [key, value] : incident.items())
        EXPECT_NE(yaml.find("\n" + key + ":"), std::string::npos) << key << "\n" << yaml;
    EXPECT_NE(yaml.find("cause: \"idle_close_race\""), std::string::npos) << yaml;
    EXPECT_NE(yaml.find("reset_reason: ~"), std::string::npos) << yaml;
    EXPECT_NE(yaml.find("  port: 8080"), std::string::npos) << yaml;
}

TEST(Summary, Formats) {
    std::array<uint64_t, kCauseCount> by_cause{};
    EXPECT_EQ(format_summary(by_cause, 0), "0 incidents, 0 records lost");
    by_cause[static_cast<size_t>(Cause::idle_close_race)] = 2;
    by_cause[static_cast<size_t>(Cause::write_after_fin)] = 1;
    EXPECT_EQ(format_summary(by_cause, 0),
              "3 incidents (idle_close_race=2 write_after_fin=1), 0 records lost");
    std::array<uint64_t, kCauseCount> one{};
    one[static_cast<size_t>(Cause::abort_on_close)] = 1;
    EXPECT_EQ(format_summary(one, 1), "1 incident (abort_on_close=1), 1 record lost");
    std::array<uint64_t, kCauseCount> tie{};
    tie[static_cast<size_t>(Cause::data_after_close)] = 4;
    tie[static_cast<size_t>(Cause::reset_other)] = 4;
    EXPECT_EQ(format_summary(tie, 12),
              "8 incidents (reset_other=4 data_after_close=4), 12 records lost");
}

TEST(OutputFuzzRegressions, TimestampsNearTheEndOfTimeDoNotOverflow) {
    // From fuzz/corpus/fuzz_records: a record's ts_ns near 2^63 plus the wall-clock offset.
    rstwatch::Incident incident;
    incident.ts_ns = 0x7fffffffffffff00ULL;
    incident.client = {"10.0.0.1", 40000};
    incident.server = {"10.0.0.2", 80};
    const std::string line = rstwatch::format_incident_json_line(incident, 1'700'000'000'000'000'000LL);
    EXPECT_NE(line.find("\"ts\""), std::string::npos);
    EXPECT_FALSE(rstwatch::format_incident_row(incident, INT64_MAX).empty());
}
