#include "loader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <algorithm>
#include <cstring>
#include <vector>

#include "rstwatch.h"
#include "rstwatch.skel.h"

namespace rstwatch {

void BpfSession::SkeletonDeleter::operator()(rstwatch_bpf* skel) const { rstwatch_bpf__destroy(skel); }
void BpfSession::RingBufferDeleter::operator()(ring_buffer* rb) const { ring_buffer__free(rb); }

namespace {

int libbpf_to_spdlog(libbpf_print_level level, const char* format, va_list args) {
    char line[1024];
    vsnprintf(line, sizeof(line), format, args);
    size_t len = strlen(line);
    while (len > 0 && line[len - 1] == '\n') line[--len] = '\0';
    if (level == LIBBPF_DEBUG)
        spdlog::trace("libbpf: {}", line);
    else
        spdlog::debug("libbpf: {}", line);
    return 0;
}

bpf_program* write_program(rstwatch_bpf* skel, WriteMode mode) {
    switch (mode) {
        case WriteMode::tp_btf: return skel->progs.rw_write_tp;
        case WriteMode::fentry: return skel->progs.rw_write_fentry;
        case WriteMode::kprobe: return skel->progs.rw_write_kprobe;
    }
    return nullptr;
}

uint32_t round_up_pow2(uint32_t v) {
    uint32_t p = 4096;
    while (p < v && p < (1U << 30)) p <<= 1;
    return p;
}

}  // namespace

void route_libbpf_logs() { libbpf_set_print(libbpf_to_spdlog); }

std::unique_ptr<BpfSession> BpfSession::open(const LoaderOptions& options, const KernelFeatures& features,
                                             RecordSink sink, std::string* error,
                                             WriteModeChoice* choice_out) {
    if (std::string problem = features.blocking_problem(); !problem.empty()) {
        *error = problem;
        return nullptr;
    }
    auto session = std::make_unique<BpfSession>(Token{});
    session->sink_ = std::move(sink);
    const uint64_t jiffy_ns = 1'000'000'000ULL / (features.hz ? features.hz : 250);
    session->idle_threshold_jiffies_ = static_cast<uint32_t>(
        std::max(1.0, std::ceil(options.idle_threshold_s * 1e9 / static_cast<double>(jiffy_ns) - 1e-9)));

    std::string last_error;
    // One load with the given write hook and per-socket store.
    auto load_with = [&](WriteMode mode, bool socket_storage) -> int {
        std::unique_ptr<rstwatch_bpf, SkeletonDeleter> skel(rstwatch_bpf__open());
        if (!skel) {
            last_error = std::string("cannot open BPF object: ") + strerror(errno);
            return -errno;
        }
        skel->rodata->idle_threshold_jiffies = session->idle_threshold_jiffies_;
        skel->rodata->close_idle_threshold_jiffies = std::max<uint32_t>(1, session->idle_threshold_jiffies_ / 2);
        skel->rodata->jiffy_ns = jiffy_ns;
        skel->rodata->use_sk_storage = socket_storage;
        skel->rodata->typed_reads = features.typed_socket_reads;
        bpf_map__set_max_entries(skel->maps.events, round_up_pow2(options.ringbuf_bytes));
        // With socket storage the hash stays unused: keep it at one entry (it is preallocated).
        bpf_map__set_max_entries(skel->maps.conns, socket_storage ? 1 : options.max_connections);
        for (WriteMode m : {WriteMode::tp_btf, WriteMode::fentry, WriteMode::kprobe})
            bpf_program__set_autoload(write_program(skel.get(), m), m == mode);
        bpf_program__set_autoload(skel->progs.rw_rst_sent, features.send_reset_has_reason);
        bpf_program__set_autoload(skel->progs.rw_rst_sent_noreason, !features.send_reset_has_reason);

        int err = rstwatch_bpf__load(skel.get());
        if (err) {
            last_error = std::string("loading BPF programs failed: ") + strerror(-err);
            return err;
        }
        err = rstwatch_bpf__attach(skel.get());
        if (err) {
            last_error = std::string("attaching BPF programs failed: ") + strerror(-err);
            return err;
        }
        session->skel_ = std::move(skel);
        session->socket_storage_ = socket_storage;
        return 0;
    };
    // Socket storage where BTF-typed programs can use it (Linux >= 5.11), else the LRU hash.
    auto attempt = [&](WriteMode mode) -> int {
        if (mode != WriteMode::kprobe) {
            if (load_with(mode, true) == 0) return 0;
            spdlog::debug("{} with socket storage: {}; trying the LRU hash", write_mode_name(mode), last_error);
        }
        return load_with(mode, false);
    };
    auto on_refused = [&](WriteMode mode, int err, std::optional<WriteMode> next) {
        if (next)
            spdlog::warn("write hook {} refused by the kernel ({}): falling back to {}", write_mode_name(mode),
                         strerror(-err), write_mode_name(*next));
        else
            spdlog::warn("write hook {} refused by the kernel ({})", write_mode_name(mode), strerror(-err));
    };
    std::vector<WriteMode> candidates = write_mode_candidates(features.write, options.write_mode);
    if (candidates.empty()) {
        *error = "no write hook available on this kernel";
        return nullptr;
    }
    WriteModeChoice choice = choose_write_mode(candidates, attempt, on_refused);
    if (choice_out) *choice_out = choice;
    if (!choice.chosen) {
        *error = last_error.empty() ? "no write hook could be attached" : last_error;
        return nullptr;
    }
    session->write_mode_ = *choice.chosen;
    session->max_connections_ = options.max_connections;

    session->ring_.reset(
        ring_buffer__new(bpf_map__fd(session->skel_->maps.events), &BpfSession::on_ring_record, session.get(), nullptr));
    if (!session->ring_) {
        *error = std::string("cannot open the BPF ring buffer: ") + strerror(errno);
        return nullptr;  // the skeleton's destructor detaches everything
    }
    return session;
}

BpfSession::~BpfSession() {
    ring_.reset();
    skel_.reset();
}

int BpfSession::on_ring_record(void* ctx, void* data, size_t size) {
    auto* self = static_cast<BpfSession*>(ctx);
    if (self->sink_) self->sink_(data, size);
    return 0;
}

int BpfSession::poll(int timeout_ms) {
    const int woken = ring_buffer__poll(ring_.get(), timeout_ms);
    if (woken < 0) return woken;
    // Records submitted without a wakeup (bpf/rstwatch.bpf.c: submit_flags) are read here.
    const int unannounced = ring_buffer__consume(ring_.get());
    return unannounced < 0 ? unannounced : woken + unannounced;
}

uint64_t BpfSession::counter(uint32_t index) const {
    int cpus = libbpf_num_possible_cpus();
    if (cpus <= 0) return 0;
    std::vector<uint64_t> values(static_cast<size_t>(cpus));
    if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.counters), &index, values.data()) != 0) return 0;
    uint64_t total = 0;
    for (uint64_t v : values) total += v;
    return total;
}

uint64_t BpfSession::lost_records() const { return counter(RW_CNT_LOST); }
uint64_t BpfSession::track_failures() const { return counter(RW_CNT_TRACK_FAILED); }

uint64_t BpfSession::tracked_connections() const {
    uint64_t added = counter(RW_CNT_TRACK_ADDED);
    uint64_t removed = counter(RW_CNT_TRACK_REMOVED);
    uint64_t live = added > removed ? added - removed : 0;
    return socket_storage_ ? live : std::min<uint64_t>(live, max_connections_);
}

}  // namespace rstwatch
