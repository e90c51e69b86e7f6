// `rstwatch diagnose`: inferred idle timeouts per pair, the keepalive verdict and the fix,
// from a running agent (--from) or by watching this node for --duration.
#include <spdlog/spdlog.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>

#include "attribution.h"
#include "commands.h"
#include "correlator.h"
#include "diagnosis.h"
#include "stream_client.h"
#include "timeout_inference.h"

namespace rstwatch {
namespace {

volatile std::sig_atomic_t g_diagnose_stop = 0;

void on_stop(int) { g_diagnose_stop = 1; }

// GET URL/diagnose?level=LEVEL from a running agent.
std::optional<std::string> fetch_diagnosis(const std::string& url, const std::string& level, const ClientAuth& auth,
                                           std::string* error) {
    auto response = get_from_agent(url, "/diagnose?level=" + level, auth, std::chrono::seconds(30), error);
    if (!response) return std::nullopt;
    if (response->status != 200) {
        *error = fmt::format("{}: HTTP {}{}", response->url, response->status,
                             response->status == 401 ? " (the agent needs credentials: --token-file FILE)" : "");
        return std::nullopt;
    }
    return std::move(response->body);
}

int print(const std::vector<PairVerdict>& verdicts, const DiagnoseOptions& options) {
    std::string text = options.json ? diagnosis_to_json(verdicts, options.level).dump() + "\n"
                                    : render_diagnosis(verdicts);
    fwrite(text.data(), 1, text.size(), stdout);
    fflush(stdout);
    return kExitOk;
}

int64_t monotonic_ns() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

}  // namespace

int run_diagnose(const DiagnoseOptions& options) {
    if (options.from_url) {
        std::string error;
        ClientAuth auth;
        if (!load_client_auth(token_file_or_env(options.token_file), ca_file_or_env(options.ca_file), &auth, &error)) {
            spdlog::error("{}", error);
            return kExitUsage;
        }
        auto body = fetch_diagnosis(*options.from_url, options.level, auth, &error);
        if (!body) {
            spdlog::error("cannot read the diagnosis: {}", error);
            return kExitFailure;
        }
        nlohmann::json document = nlohmann::json::parse(*body, nullptr, false);
        auto verdicts = diagnosis_from_json(document, &error);
        if (!verdicts) {
            spdlog::error("{}: {}", *options.from_url, error);
            return kExitFailure;
        }
        return print(*verdicts, options);
    }

    // Standalone: watch this node for --duration.
    Attributor attributor;
    if (options.pod_map_path) {
        std::string error;
        auto map = PodMap::load_file(*options.pod_map_path, &error);
        if (!map) {
            spdlog::error("invalid --pod-map: {}", error);
            return kExitUsage;
        }
        attributor.set_pod_map(std::make_shared<const PodMap>(std::move(*map)));
    }
    struct sigaction action {};
    action.sa_handler = on_stop;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);

    KernelFeatures features = probe_kernel_features();
    CorrelatorOptions correlator_options;
    correlator_options.idle_threshold_ns = close_threshold_ns(options.loader.idle_threshold_s);
    correlator_options.jiffy_ns = 1'000'000'000ULL / (features.hz ? features.hz : 250);
    Correlator correlator(correlator_options);
    CorrelatorOutput produced;
    TimeoutInference inference;
    const bool workload_level = options.level == "workload";
    auto pair_of = [&](const Endpoint& client, const Endpoint& server) {
        PairKey key;
        for (auto [end, out] : {std::pair{&client, &key.client}, std::pair{&server, &key.server}}) {
            auto addr = IpAddr::parse(end->ip);
            *out = addr ? attributor.identify(*addr) : Identity{"", "", end->ip};
            if (workload_level) out->pod.clear();
        }
        key.server_port = server.port;
        return key;
    };
    auto sink = [&](const void* data, size_t size) {
        produced.clear();
        correlator.on_raw(data, size, produced);
        for (const Incident& incident : produced.incidents)
            inference.incident(pair_of(incident.client, incident.server), incident);
        for (const Observation& observation : produced.observations)
            inference.observe(pair_of(observation.client, observation.server), observation);
    };
    std::string error;
    auto session = BpfSession::open(options.loader, features, sink, &error);
    if (!session) {
        spdlog::error("cannot attach: {}", error);
        return kExitFailure;
    }
    spdlog::info("watching this node for {:.0f} s (write hook {})", *options.duration_s,
                 write_mode_name(session->write_mode()));
    const int64_t end = monotonic_ns() + static_cast<int64_t>(*options.duration_s * 1e9);
    while (!g_diagnose_stop && monotonic_ns() < end) {
        int n = session->poll(100);
        if (n < 0 && n != -EINTR) {
            spdlog::error("reading the BPF ring buffer failed: {}", strerror(-n));
            return kExitFailure;
        }
    }
    session->poll(0);
    if (uint64_t lost = session->lost_records()) spdlog::warn("{} records lost: the ring buffer was full", lost);
    session.reset();
    return print(inference.verdicts(), options);
}

}  // namespace rstwatch
