// Owns the BPF programs, maps and links for one rstwatch run, and the ring
// buffer that carries their records. Everything is released in the destructor.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "kernel_features.h"
#include "write_mode.h"

struct rstwatch_bpf;
struct ring_buffer;

namespace rstwatch {

struct LoaderOptions {
    double idle_threshold_s = 1.0;
    uint32_t ringbuf_bytes = 4U << 20;  // power of two
    uint32_t max_connections = 131072;  // LRU: oldest forgotten beyond this
    std::optional<WriteMode> write_mode;  // forced; otherwise probed
};

// Called for every ring-buffer record, with the raw bytes.
using RecordSink = std::function<void(const void* data, size_t size)>;

// Where records come from: the kernel's ring buffer (BpfSession), or a test's fake.
class RecordSource {
public:
    virtual ~RecordSource() = default;
    // Waits up to timeout_ms for a wakeup, then hands every record in the buffer to the sink
    // (also those the kernel side submitted without waking us); returns the count or -errno.
    virtual int poll(int timeout_ms) = 0;
    // Records dropped so far because the buffer was full.
    virtual uint64_t lost_records() const = 0;
};

class BpfSession final : public RecordSource {
    struct Token {};  // only open() constructs sessions

public:
    explicit BpfSession(Token) {}
    // Loads and attaches, choosing the write hook by trying the candidates in order.
    // Returns nullptr with *error set (one line) when nothing can be attached.
    // `choice`, if given, receives every write-hook refusal and the mode chosen.
    static std::unique_ptr<BpfSession> open(const LoaderOptions& options, const KernelFeatures& features,
                                            RecordSink sink, std::string* error,
                                            WriteModeChoice* choice = nullptr);
    ~BpfSession() override;
    BpfSession(const BpfSession&) = delete;
    BpfSession& operator=(const BpfSession&) = delete;

    WriteMode write_mode() const { return write_mode_; }
    // Per-socket state in socket local storage (else in the LRU hash of max_connections).
    bool socket_storage() const { return socket_storage_; }
    uint32_t idle_threshold_jiffies() const { return idle_threshold_jiffies_; }
    // Waits up to timeout_ms for records and delivers them; returns the count or -errno.
    int poll(int timeout_ms) override;
    // Records dropped because the ring buffer was full, summed over CPUs.
    uint64_t lost_records() const override;
    uint64_t track_failures() const;
    // Connections with per-socket state in the kernel now (with the LRU hash: bounded by
    // max_connections, evictions unseen, so an upper estimate).
    uint64_t tracked_connections() const;

private:
    uint32_t max_connections_ = 0;
    bool socket_storage_ = false;
    struct SkeletonDeleter {
        void operator()(rstwatch_bpf* skel) const;
    };
    struct RingBufferDeleter {
        void operator()(ring_buffer* rb) const;
    };

    uint64_t counter(uint32_t index) const;
    static int on_ring_record(void* ctx, void* data, size_t size);

    std::unique_ptr<rstwatch_bpf, SkeletonDeleter> skel_;
    std::unique_ptr<ring_buffer, RingBufferDeleter> ring_;
    RecordSink sink_;
    WriteMode write_mode_ = WriteMode::tp_btf;
    uint32_t idle_threshold_jiffies_ = 0;
};

// Routes libbpf's own messages into spdlog (debug level: probing failures are expected).
void route_libbpf_logs();

}  // namespace rstwatch
