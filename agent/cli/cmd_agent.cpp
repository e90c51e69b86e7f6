// `rstwatch agent`: the DaemonSet's job. Loads the BPF programs once, names both ends of every
// incident, exports Prometheus metrics per pod pair and streams incidents to followers.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <unistd.h>
#include <variant>

#include "attribution.h"
#include "capture_loop.h"
#include "clock.h"
#include "commands.h"
#include "usage.h"
#include "flags.h"
#include "correlator.h"
#include "diagnosis.h"
#include "event_reporter.h"
#include "hold_queue.h"
#include "http_server.h"
#include "kube_client.h"
#include "log_limiter.h"
#include "metrics.h"
#include "pair.h"
#include "privileges.h"
#include "rstwatch.h"
#include "signals.h"
#include "stream_format.h"
#include "timeout_inference.h"

namespace rstwatch {
namespace {

constexpr std::array<const char*, RW_REC_TYPE_MAX> kRecordTypeByValue = {
    "", "idle_write", "close_wait_write", "peer_fin", "own_close", "closed", "rst_received", "rst_sent",
    "unread_at_destroy"};

// What to tell the user about an incident, in one clause.
std::string hint_for(const Incident& incident) {
    switch (incident.cause) {
        case Cause::write_after_fin:
        case Cause::idle_close_race: {
            if (!incident.idle_before_write_ms) break;
            double idle_s = *incident.idle_before_write_ms / 1000.0;
            return fmt::format(
                "client reuses connections idle {:.1f} s; server closed after ~{:.1f} s: set the client's "
                "upstream idle timeout below the server's",
                idle_s, idle_s);
        }
        case Cause::abort_on_close:
            return "server closed a connection with an unread request: a client reused it as it closed; set the "
                   "client's upstream idle timeout below the server's";
        case Cause::data_after_close:
            return "a request arrived after the server closed the connection: a client reused it; set the "
                   "client's upstream idle timeout below the server's";
        case Cause::reset_other:
            return "connection reset outside the keepalive race";
    }
    return "a stale keepalive connection was reused: set the client's upstream idle timeout below the server's";
}

std::string describe(const Identity& who, const Endpoint& at) {
    std::string name;
    if (!who.pod.empty())
        name = who.namespace_ + "/" + who.pod;
    else if (!who.workload.empty())
        name = who.workload;
    return name.empty() || name == at.ip ? fmt::format("{}:{}", at.ip, at.port)
                                         : fmt::format("{} ({}:{})", name, at.ip, at.port);
}

class Agent {
public:
    explicit Agent(const AgentOptions& options, const IncidentHistoryOptions& history = {})
        : options_(options), history_(history) {}

    int run();

private:
    bool check_configuration();
    bool start_serving();
    CaptureHooks capture_hooks();
    void on_attached();
    bool auth_configured() const;
    bool load_pod_map(bool initial);
    std::string readiness() const;
    void on_output(CorrelatorOutput& produced);
    bool resolvable(const Endpoint& client, const Endpoint& server);
    void deliver(const HeldEvent& event);
    void update_self_metrics();
    void log_suppressed_incident_lines(const std::optional<SuppressedIncidentLines>& summary);
    void update_inference();
    void report_verdict(const PairVerdict& verdict);
    std::string node_name() const;
    std::string diagnose(const std::string& query);
    bool endpoint_alive(const Identity& identity) const;

    const AgentOptions& options_;
    const IncidentHistoryOptions history_;  // --history-size, --history-age
    KernelFeatures features_;
    Attributor attributor_;
    PairNamer namer_{attributor_};  // capture thread only (deliver)
    std::shared_ptr<const PodMap> pod_map_;
    std::shared_ptr<ClusterState> cluster_;
    std::optional<KubeConfig> kube_config_;
    std::unique_ptr<KubeWatcher> kube_;
    std::unique_ptr<EventReporter> events_;  // --kube-events
    std::unique_ptr<Metrics> metrics_;
    std::unique_ptr<HttpServer> http_;
    std::unique_ptr<Correlator> correlator_;
    std::unique_ptr<BpfSession> bpf_;
    std::atomic<bool> bpf_attached_{false};
    // This agent's own HTTP port (the same on every node of a DaemonSet): connections to it are
    // the agent's scrapes, streams and probes, not what it watches. A TLS client's close_notify
    // after the agent's FIN (every answer closes its connection) would otherwise be an incident
    // on every scrape, and a follower stopped with Ctrl-C one more.
    uint16_t own_port_ = 0;
    uint64_t own_port_incidents_ = 0;
    // What waits for its ends to be named (up to options_.attribution_hold).
    HoldQueue held_{options_.attribution_hold, [this](const Endpoint& c, const Endpoint& s) { return resolvable(c, s); },
                    [this](const HeldEvent& event) { deliver(event); }};
    // Idle-timeout inference per pair, at pod and at workload level (/diagnose serves either;
    // the metrics use the --pair-labels level). Guarded: /diagnose runs on HTTP threads.
    std::mutex inference_mutex_;
    TimeoutInference pod_inference_;
    TimeoutInference workload_inference_;
    int64_t unix_offset_ns_ = 0;
    // Which incidents get their own log line (capture thread only); all are counted and streamed.
    IncidentLogLimiter incident_log_;
    std::array<uint64_t, RW_REC_TYPE_MAX> records_exported_{};
};

bool Agent::load_pod_map(bool initial) {
    if (!options_.pod_map_path) return true;
    std::string error;
    std::optional<PodMap> map = PodMap::load_file(*options_.pod_map_path, &error);
    if (!map) {
        if (initial)
            usage_error("--pod-map", error);
        else
            spdlog::error("pod map reload failed, keeping the previous map: {}", error);
        return false;
    }
    pod_map_ = std::make_shared<const PodMap>(std::move(*map));
    attributor_.set_pod_map(pod_map_);
    spdlog::info("pod map {}: {} entries", *options_.pod_map_path, pod_map_->size());
    if (metrics_) metrics_->set_attribution_synced("pod_map", true);
    return true;
}

std::string Agent::readiness() const {
    if (!bpf_attached_) return "BPF programs not attached";
    if (kube_ && !kube_->synced()) return "Kubernetes pods and services not listed yet";
    return {};
}

bool Agent::endpoint_alive(const Identity& identity) const {
    if (identity.pod.empty()) return true;  // services, map names, world, addresses
    if (cluster_ && cluster_->pod_exists(identity.namespace_, identity.pod)) return true;
    if (pod_map_) {
        for (const PodMapEntry& entry : pod_map_->entries())
            if (entry.identity.pod == identity.pod && entry.identity.namespace_ == identity.namespace_) return true;
    }
    return false;
}

// An event is held while Kubernetes may still be learning one of its ends.
bool Agent::resolvable(const Endpoint& client, const Endpoint& server) {
    return !kube_ || namer_.known_ends(client, server);
}

namespace {

// Events are named as Kubernetes was known when they happened (their record's time), so a pod
// replaced between the record and its reading does not take the event.
std::optional<int64_t> event_time(uint64_t ts_ns) {
    if (ts_ns == 0) return std::nullopt;
    return static_cast<int64_t>(ts_ns);
}

}  // namespace

void Agent::deliver(const HeldEvent& event) {
    if (const auto* incident = std::get_if<Incident>(&event)) {
        PairKey pair = namer_.name(incident->client, incident->server, event_time(incident->ts_ns));
        StreamedIncident streamed{*incident, pair.client, pair.server};
        std::optional<double> idle_s;
        if (incident->idle_before_write_ms) idle_s = *incident->idle_before_write_ms / 1000.0;
        metrics_->count_incident(pair, incident->cause, incident->observer, idle_s);
        {
            std::lock_guard lock(inference_mutex_);
            pod_inference_.incident(pair, *incident);
            workload_inference_.incident(workload_pair(pair), *incident);
        }
        // Events only for client ends that are pods Kubernetes knows (not pod-map names).
        if (events_ && !pair.client.pod.empty() && cluster_->pod_exists(pair.client.namespace_, pair.client.pod))
            events_->incident(PodRef{pair.client.namespace_, pair.client.pod, ""}, pair, *incident);
        if (incident_log_.admit(pair, incident->cause, incident->observer, monotonic_ns()))
            spdlog::warn("incident {} observed by {}: client {} -> server {}{}{}: {}", to_string(incident->cause),
                         to_string(incident->observer), describe(streamed.client, incident->client),
                         describe(streamed.server, incident->server),
                         incident->comm.empty() ? std::string()
                                                : fmt::format(", {} pid {}", incident->comm, incident->pid),
                         incident->idle_before_write_ms
                             ? fmt::format(", idle {:.1f} s before the write", *incident->idle_before_write_ms / 1000.0)
                             : std::string(),
                         hint_for(*incident));
        else
            metrics_->count_incident_log_line_suppressed();
        http_->publish(streamed, unix_offset_ns_);
    } else if (const auto* observation = std::get_if<Observation>(&event)) {
        const PairKey& pair = namer_.name(observation->client, observation->server, event_time(observation->ts_ns));
        metrics_->observe(pair, observation->kind, observation->idle_s);
        std::lock_guard lock(inference_mutex_);
        pod_inference_.observe(pair, *observation);
        workload_inference_.observe(workload_pair(pair), *observation);
    } else if (const auto* reset = std::get_if<ResetEvent>(&event)) {
        metrics_->count_reset(namer_.name(reset->client, reset->server, event_time(reset->ts_ns)), reset->sent);
    }
}

void Agent::on_output(CorrelatorOutput& produced) {
    // Connections to the agent's own port are its scrapes and followers, not what it watches.
    auto watched = [&](const auto& event) { return event.server.port != own_port_; };
    for (Incident& incident : produced.incidents) {
        if (watched(incident))
            held_.add(std::move(incident));
        else
            ++own_port_incidents_;
    }
    for (Observation& observation : produced.observations)
        if (watched(observation)) held_.add(std::move(observation));
    for (ResetEvent& reset : produced.resets)
        if (watched(reset)) held_.add(std::move(reset));
}

void Agent::update_inference() {
    std::vector<PairVerdict> verdicts;
    std::vector<PairVerdict> changes;
    {
        std::lock_guard lock(inference_mutex_);
        TimeoutInference& level =
            options_.pair_labels == PairLabelMode::workload ? workload_inference_ : pod_inference_;
        verdicts = level.verdicts();
        changes = workload_inference_.take_changes();
    }
    for (const PairVerdict& v : verdicts) {
        std::optional<double> server, client;
        if (v.server_timeout) server = v.server_timeout->seconds;
        if (v.client_timeout) client = v.client_timeout->seconds;
        metrics_->set_inferred(v.pair, server, client, v.mismatch);
    }
    // Logged once per workload pair when established, again when it changes or clears.
    for (const PairVerdict& v : changes) {
        if (*v.mismatch)
            spdlog::warn("keepalive timeout mismatch: {}/{} -> {}/{}:{}: {}{}", v.pair.client.namespace_,
                         v.pair.client.workload, v.pair.server.namespace_, v.pair.server.workload, v.pair.server_port,
                         v.reason, v.fix ? "; set " + v.fix->setting : std::string());
        else
            spdlog::info("keepalive timeout mismatch resolved: {}/{} -> {}/{}:{}: {}", v.pair.client.namespace_,
                         v.pair.client.workload, v.pair.server.namespace_, v.pair.server.workload,
                         v.pair.server_port, v.reason);
        if (events_) report_verdict(v);
    }
}

// The Event goes on the client workload's pods on this node that use the pair (a few at most:
// `kubectl describe pod` of any of them shows it).
void Agent::report_verdict(const PairVerdict& verdict) {
    constexpr size_t kMaxPods = 5;
    std::vector<PodRef> clients;
    {
        std::lock_guard lock(inference_mutex_);
        for (const PairKey& pair : pod_inference_.pairs()) {
            if (clients.size() == kMaxPods) break;
            if (pair.client.pod.empty() || !(workload_pair(pair) == verdict.pair)) continue;
            PodRef pod{pair.client.namespace_, pair.client.pod, ""};
            if (std::find(clients.begin(), clients.end(), pod) == clients.end() &&
                cluster_->pod_exists(pod.namespace_, pod.name))
                clients.push_back(std::move(pod));
        }
    }
    if (!clients.empty()) events_->verdict(clients, verdict);
}

std::string Agent::node_name() const {
    if (!options_.node_name.empty()) return options_.node_name;
    if (const char* env = std::getenv("NODE_NAME"); env && *env) return env;
    char host[256] = {0};
    return gethostname(host, sizeof(host) - 1) == 0 ? std::string(host) : std::string("unknown");
}

std::string Agent::diagnose(const std::string& query) {
    const bool pod_level = query.find("level=pod") != std::string::npos;
    std::lock_guard lock(inference_mutex_);
    const TimeoutInference& level = pod_level ? pod_inference_ : workload_inference_;
    return diagnosis_to_json(level.verdicts(), pod_level ? "pod" : "workload").dump();
}

void Agent::update_self_metrics() {
    const CorrelatorStats& stats = correlator_->stats();
    for (size_t type = RW_REC_IDLE_WRITE; type < RW_REC_TYPE_MAX; ++type) {
        uint64_t seen = stats.records_by_type[type];
        if (seen > records_exported_[type]) {
            metrics_->count_records(kRecordTypeByValue[type], seen - records_exported_[type]);
            records_exported_[type] = seen;
        }
    }
    metrics_->set_tracked_connections(static_cast<double>(bpf_->tracked_connections()));
    if (kube_) metrics_->set_attribution_synced("kubernetes", kube_->synced());
    if (events_) {
        const EventReporterStats events = events_->stats();
        for (const auto& [key, total] : events.writes) metrics_->set_kube_event_writes_total(key.first, key.second, total);
        metrics_->set_kube_events_state(events.policy.pending, events.policy.dropped);
    }
}

// At most one line every 10 s (IncidentLogLimits), and the last one at shutdown.
void Agent::log_suppressed_incident_lines(const std::optional<SuppressedIncidentLines>& summary) {
    if (summary) spdlog::warn("{}", format_suppressed_incident_lines(*summary));
}

bool Agent::auth_configured() const {
    return !options_.auth_token_file.empty() || !options_.basic_auth_file.empty();
}

// Flags that are wrong together, TLS without GnuTLS, the pod map and the Kubernetes settings:
// each is one error line, and the caller exits 2 before anything is attached.
bool Agent::check_configuration() {
    // The incident stream reveals peer addresses: never served beyond loopback without
    // credentials unless explicitly allowed.
    if (!auth_configured() && !options_.allow_unauthenticated && !is_loopback_listen(options_.listen) &&
        listen_address_error(options_.listen).empty()) {
        usage_error("--listen", fmt::format("refusing to serve /incidents and /metrics on {} without authentication: "
                                            "pass --auth-token-file or --basic-auth-file, or --allow-unauthenticated "
                                            "to accept that",
                                            options_.listen));
        return false;
    }
    if (!options_.tls_cert_file.empty() || !options_.tls_key_file.empty()) {
        std::string why;
        if (!tls_support(&why)) {
            usage_error("--tls-cert", "TLS is not available: " + why);
            return false;
        }
    }
    if (!load_pod_map(true)) return false;
    if (options_.kube_enabled) {
        std::string error;
        if (!options_.kube_api.empty()) {
            kube_config_ = KubeConfig::from_flags(options_.kube_api, options_.kube_token_file, options_.kube_ca_file,
                                                 &error);
        } else if (std::getenv("KUBERNETES_SERVICE_HOST")) {
            kube_config_ = KubeConfig::in_cluster(&error);
        } else if (!options_.kube_token_file.empty() || !options_.kube_ca_file.empty()) {
            error = "--kube-token-file/--kube-ca-file need --kube-api (or run in a cluster)";
        }
        const char* source = !options_.kube_api.empty() ? "--kube-api"
                             : std::getenv("KUBERNETES_SERVICE_HOST") ? "in-cluster Kubernetes configuration"
                                                                        : "--kube-token-file";
        if (!error.empty()) {
            usage_error(source, error);
            return false;
        }
        if (kube_config_ && !kube_config_->validate(&error)) {
            usage_error(source, error);
            return false;
        }
    }
    if (options_.kube_events && !kube_config_) {
        usage_error("--kube-events", "needs Kubernetes attribution: run in a cluster or pass --kube-api");
        return false;
    }
    return true;
}

// Metrics and the HTTP endpoints (bound now, served from here on).
bool Agent::start_serving() {
    MetricsOptions metrics_options;
    metrics_options.mode = options_.pair_labels;
    metrics_options.series_ttl = options_.series_ttl;
    metrics_options.version = RSTWATCH_VERSION;
    metrics_options.write_hook = "none";

    HttpServerOptions http_options;
    http_options.listen = options_.listen;
    http_options.auth.token_file = options_.auth_token_file;
    http_options.auth.basic_auth_file = options_.basic_auth_file;
    http_options.tls_cert_file = options_.tls_cert_file;
    http_options.tls_key_file = options_.tls_key_file;
    http_options.collect = [this] { return metrics_->collect(); };
    http_options.readiness = [this] { return readiness(); };
    http_options.diagnose = [this](const std::string& query) { return diagnose(query); };

    // Metrics need the write hook's name, known only after attaching; the HTTP server
    // binds first so a taken port fails before anything is attached.
    metrics_ = std::make_unique<Metrics>(metrics_options);
    if (pod_map_) metrics_->set_attribution_synced("pod_map", true);
    http_options.history = history_;
    http_ = std::make_unique<HttpServer>(http_options);
    std::string error;
    if (!http_->start(&error)) {
        // TLS file errors already start with their flag; anything else is about the address.
        if (error.rfind("--", 0) == 0)
            std::fprintf(stderr, "rstwatch: %s\n", error.c_str());
        else
            usage_error("--listen", error);
        return false;
    }
    own_port_ = http_->port();
    return true;
}

// What the agent adds to the capture loop: naming and counting, reloads, self metrics,
// inference, and the expiry of gone pods' series.
CaptureHooks Agent::capture_hooks() {
    CaptureHooks hooks;
    hooks.on_output = [this](CorrelatorOutput& produced) { on_output(produced); };
    hooks.after_poll = [this](int64_t now) {
        unix_offset_ns_ = monotonic_to_unix_offset_ns();
        if (take_reload_request()) {
            if (options_.pod_map_path) {
                spdlog::info("SIGHUP: reloading the pod map");
                load_pod_map(false);
            } else {
                spdlog::info("SIGHUP: no pod map to reload");
            }
        }
        held_.flush(now);
    };
    hooks.on_lost = [this](uint64_t, uint64_t total) { metrics_->set_records_lost_total(total); };
    hooks.on_tick = [this, next_series_expiry = monotonic_ns() + 30'000'000'000LL](int64_t now) mutable {
        update_self_metrics();
        update_inference();
        log_suppressed_incident_lines(incident_log_.take_summary(now));
        if (now >= next_series_expiry) {
            size_t removed =
                metrics_->expire(Metrics::Clock::now(), [this](const Identity& who) { return endpoint_alive(who); });
            if (removed) spdlog::info("removed the series of {} pairs whose pods are gone", removed);
            next_series_expiry = now + 30'000'000'000LL;
        }
    };
    return hooks;
}

// Attached: drop privileges before readiness (a ready agent is an unprivileged one), then say
// what runs.
void Agent::on_attached() {
    metrics_->set_build_info(RSTWATCH_VERSION, std::string(write_mode_name(bpf_->write_mode())));
    // Attached and bound: from here on only open file descriptors are used. Before readiness,
    // so a ready agent is an unprivileged one.
    const PrivilegeDrop dropped = drop_privileges();
    if (dropped.ok) {
        spdlog::info("dropped capabilities {} on {} threads; kept {}{}; bounding set {}; no_new_privs set",
                     capability_names(dropped.dropped), dropped.threads, capability_names(dropped.kept),
                     dropped.kept != 0 ? " (this kernel refuses bpf() map reads without it: "
                                         "kernel.unprivileged_bpf_disabled, kernel < 6.5)"
                                       : "",
                     dropped.bounding_emptied ? "emptied" : "left to the container runtime (no CAP_SETPCAP)");
    } else {
        spdlog::error("dropping capabilities failed, running with them: {}", dropped.error);
    }
    bpf_attached_ = true;
    spdlog::info("rstwatch agent {}: write hook {}, idle threshold {:.3f} s, kernel HZ {} ({}), capabilities {}, "
                 "attribution: {}{}{}",
                 RSTWATCH_VERSION, write_mode_name(bpf_->write_mode()), options_.loader.idle_threshold_s, features_.hz,
                 features_.hz_source, features_.privileges_summary,
                 pod_map_ ? "pod map " + *options_.pod_map_path : std::string("no pod map"),
                 kube_config_ ? ", Kubernetes API " + kube_config_->api_url : std::string(", no Kubernetes"),
                 options_.pair_labels == PairLabelMode::workload ? ", workload pair labels" : "");
    spdlog::info("serving http{}://{}/metrics, /healthz, /readyz and the incident stream /incidents (port {}){}; "
                 "connections to port {} are not counted",
                 options_.tls_cert_file.empty() ? "" : "s", options_.listen, http_->port(),
                 auth_configured() ? ", credentials required except on /healthz and /readyz"
                                 : ", no authentication",
                 http_->port());
}

int Agent::run() {
    install_signal_handlers(SignalUse::daemon);
    // Configuration first: nothing is attached or started when it is wrong.
    if (!check_configuration()) return kExitUsage;
    features_ = probe_kernel_features();
    correlator_ = std::make_unique<Correlator>(correlator_options_for(options_.loader, features_));
    // The HTTP server binds before anything is attached: a taken port fails first.
    if (!start_serving()) return kExitUsage;
    if (kube_config_) {
        cluster_ = std::make_shared<ClusterState>();
        attributor_.set_cluster(cluster_);
        kube_ = std::make_unique<KubeWatcher>(*kube_config_, cluster_);
        kube_->start();
        metrics_->set_attribution_synced("kubernetes", false);
    }
    if (options_.kube_events) {
        metrics_->enable_kube_events();
        events_ = std::make_unique<EventReporter>(
            *kube_config_, node_name(), EventLimits{},
            [cluster = cluster_](const std::string& ns, const std::string& pod) { return cluster->pod_uid(ns, pod); });
        events_->start();
    }

    CaptureLoop loop(*correlator_, capture_hooks());
    std::string error;
    bpf_ = BpfSession::open(options_.loader, features_, loop.sink(), &error);
    if (!bpf_) {
        spdlog::error("cannot attach: {}", error);
        return kExitFailure;  // destructors stop the watcher and the HTTP server
    }
    on_attached();

    const CaptureResult captured = loop.run(*bpf_);
    if (!captured.ok) spdlog::error("{}", captured.error);
    // Stopped: what the buffer held is in; name and count everything still held, then detach.
    held_.flush(monotonic_ns(), true);
    log_suppressed_incident_lines(incident_log_.flush(monotonic_ns()));
    update_self_metrics();
    bpf_.reset();
    bpf_attached_ = false;
    if (events_) events_->stop();
    if (kube_) kube_->stop();
    http_->stop();
    spdlog::info("stopped: {} incidents ({} more on this agent's own port, not counted), {} records, {} records lost",
                 correlator_->stats().incidents - own_port_incidents_, own_port_incidents_,
                 correlator_->stats().records, captured.lost_records);
    return captured.ok ? kExitOk : kExitFailure;
}

}  // namespace

int run_agent(const AgentOptions& options) {
    Agent agent(options);
    return agent.run();
}

CommandRunner define_agent(CLI::App& cmd) {
    struct Flags {
        AgentOptions agent;
        std::string write_hook = "auto";
        std::string pair_labels = "pod";
        std::string kube_mode = "auto";
        double series_ttl_s = 300;
        IncidentHistoryOptions history;
        double history_age_s = 3600;
    };
    auto flags = std::make_shared<Flags>();
    AgentOptions& agent = flags->agent;
    cmd.add_option("--listen", agent.listen,
                   std::string("ADDR:PORT for /metrics, /healthz, /readyz, /incidents (default ") + kDefaultListen +
                       "; not loopback: needs --auth-token-file, --basic-auth-file or --allow-unauthenticated)");
    cmd.add_option("--pod-map", agent.pod_map_path, "YAML file naming endpoints (SIGHUP reloads it)")
        ->check(readable_file());
    cmd.add_option("--kube", flags->kube_mode,
                   "auto (in-cluster when KUBERNETES_SERVICE_HOST is set, or --kube-api) or off")
        ->check(CLI::IsMember({"auto", "off"}));
    cmd.add_option("--kube-api", agent.kube_api, "Kubernetes API URL, for use outside the cluster");
    cmd.add_option("--kube-token-file", agent.kube_token_file, "bearer token file for --kube-api")->check(readable_file());
    cmd.add_option("--kube-ca-file", agent.kube_ca_file, "CA bundle for --kube-api")->check(readable_file());
    auto* kube_events = cmd.add_flag("--kube-events", agent.kube_events,
                                     "write Kubernetes Events on client pods: KeepaliveTimeoutMismatch (predicted, "
                                     "with the fix) and StaleKeepaliveReset (aggregated, rate-limited)");
    cmd.add_option("--node-name", agent.node_name, "this node, the Events' reporting instance (default: $NODE_NAME, "
                                                   "else the host name)")
        ->needs(kube_events);
    cmd.add_option("--series-ttl", flags->series_ttl_s, "seconds a gone pod's series are kept")
        ->check(finite_range(1.0, 86400.0 * 7, "seconds"));
    cmd.add_option("--pair-labels", flags->pair_labels, "pod or workload (drops pod labels on large clusters)")
        ->check(CLI::IsMember({"pod", "workload"}));
    add_idle_threshold_flag(cmd, agent.loader.idle_threshold_s);
    add_kernel_size_flags(cmd, agent.loader);
    add_write_hook_flag(cmd, flags->write_hook);
    cmd.add_option("--auth-token-file", agent.auth_token_file,
                   "require Authorization: Bearer TOKEN (a token per line; re-read when it changes) on /metrics, "
                   "/incidents, /diagnose")
        ->check(readable_file());
    cmd.add_option("--basic-auth-file", agent.basic_auth_file,
                   "require basic auth, USER:PASSWORD per line (re-read when it changes), on the same endpoints")
        ->check(readable_file());
    auto* tls_cert = cmd.add_option("--tls-cert", agent.tls_cert_file, "serve https: PEM certificate (chain) file")
                         ->check(readable_file());
    auto* tls_key = cmd.add_option("--tls-key", agent.tls_key_file, "serve https: PEM private key file")
                        ->check(readable_file());
    tls_cert->needs(tls_key);
    tls_key->needs(tls_cert);
    cmd.add_flag("--allow-unauthenticated", agent.allow_unauthenticated,
                 "serve /metrics and /incidents without credentials on a non-loopback --listen address");
    cmd.add_option("--history-size", flags->history.max_incidents,
                   "incidents kept in memory for /incidents?since=&last= (trace --from --since/--last); 0 keeps none")
        ->check(CLI::Range(size_t{0}, size_t{100000}));
    cmd.add_option("--history-age", flags->history_age_s, "seconds an incident stays in that history")
        ->check(finite_range(1.0, 7 * 86400.0, "seconds"));
    return [flags]() -> int {
        AgentOptions& agent = flags->agent;
        if (flags->kube_mode == "off") {
            // Kubernetes settings that would be ignored: say so instead.
            if (!agent.kube_api.empty()) return usage_error("--kube-api", "cannot be used with --kube off");
            if (!agent.kube_token_file.empty()) return usage_error("--kube-token-file", "cannot be used with --kube off");
            if (!agent.kube_ca_file.empty()) return usage_error("--kube-ca-file", "cannot be used with --kube off");
            if (agent.kube_events) return usage_error("--kube-events", "cannot be used with --kube off");
        }
        agent.loader.write_mode = parse_write_mode(flags->write_hook);
        agent.kube_enabled = flags->kube_mode != "off";
        agent.series_ttl = std::chrono::seconds(static_cast<int64_t>(flags->series_ttl_s));
        agent.pair_labels = flags->pair_labels == "workload" ? PairLabelMode::workload : PairLabelMode::pod;
        IncidentHistoryOptions history = flags->history;
        history.max_age = std::chrono::seconds(std::llround(flags->history_age_s));
        return Agent(agent, history).run();
    };
}

}  // namespace rstwatch
