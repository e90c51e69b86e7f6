// Followers of /incidents and their content reader; see followers.h.
#include "followers.h"

#include <microhttpd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <iterator>
#include <optional>
#include <utility>

#include "clock.h"

namespace rstwatch {

namespace {

using Line = std::shared_ptr<const std::string>;
using Clock = std::chrono::steady_clock;

std::string dropped_line(uint64_t n) { return "{\"dropped\":" + std::to_string(n) + "}"; }

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

}  // namespace

// One follower of /incidents. `queue`, `dropped_pending`, `closed` and `suspended` are shared
// with publish() and stop() under `mutex`; `out`, `current` and `offset` belong to the server
// thread (the content reader) alone.
struct Follower {
    std::mutex mutex;
    std::deque<Line> queue;
    uint64_t dropped_pending = 0;  // dropped since the last line queued
    bool closed = false;           // stop(): end the stream once what is queued is written
    bool suspended = false;        // the connection waits for lines (libmicrohttpd: suspended)
    bool gone = false;             // the connection is over: `connection` is no longer valid
    MHD_Connection* connection = nullptr;
    std::atomic<int64_t> last_output_ns{0};  // steady clock, when bytes were last handed over

    std::deque<Line> out;  // starts with the replay, if any
    Line current;
    size_t offset = 0;  // into *current + '\n'

    // Under `mutex`, with the connection suspended: back into the server's loop.
    void resume_locked() {
        suspended = false;
        MHD_resume_connection(connection);
    }
};

FollowerHub::FollowerHub(size_t capacity, size_t max_followers, std::chrono::milliseconds heartbeat,
                         IncidentHistoryOptions history)
    : capacity_(capacity),
      max_followers_(max_followers),
      heartbeat_(heartbeat),
      history_(history),
      history_enabled_(history_.enabled()) {}

std::shared_ptr<Follower> FollowerHub::add(MHD_Connection* connection, const HistoryQuery& replay) {
    std::lock_guard lock(mutex_);
    if (stopping_ || followers_.size() >= max_followers_) return nullptr;
    auto f = std::make_shared<Follower>();
    // The content reader has not started: `out` is still ours to fill.
    if (replay.wants_replay()) {
        std::vector<Line> lines = history_.select(replay, clock_ns(CLOCK_REALTIME));
        f->out.assign(std::make_move_iterator(lines.begin()), std::make_move_iterator(lines.end()));
    }
    f->connection = connection;
    f->last_output_ns = now_ns();
    followers_.push_back(f);
    return f;
}

void FollowerHub::remove(const std::shared_ptr<Follower>& f) {
    {
        std::lock_guard follower_lock(f->mutex);
        f->gone = true;
        f->suspended = false;
        f->connection = nullptr;
    }
    std::lock_guard lock(mutex_);
    std::erase(followers_, f);
    changed_.notify_all();
}

size_t FollowerHub::count() {
    std::lock_guard lock(mutex_);
    return followers_.size();
}

void FollowerHub::publish(const Line& line, int64_t unix_ns) {
    std::lock_guard lock(mutex_);
    history_.add(line, unix_ns, clock_ns(CLOCK_REALTIME));  // the history's clock: wall time, as its entries
    for (const auto& f : followers_) {
        std::lock_guard follower_lock(f->mutex);
        if (f->closed || f->gone) continue;
        const size_t needed = f->dropped_pending > 0 ? 2 : 1;
        if (f->queue.size() + needed > capacity_) {
            ++f->dropped_pending;
            dropped_total_.fetch_add(1, std::memory_order_relaxed);
            continue;
        }
        if (f->dropped_pending > 0) {
            f->queue.push_back(std::make_shared<const std::string>(dropped_line(f->dropped_pending)));
            f->dropped_pending = 0;
        }
        f->queue.push_back(line);
        if (f->suspended) f->resume_locked();
    }
}

void FollowerHub::close_all() {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (const auto& f : followers_) {
        std::lock_guard follower_lock(f->mutex);
        f->closed = true;
        if (f->suspended) f->resume_locked();
    }
    changed_.notify_all();
}

void FollowerHub::wait_for_followers(std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex_);
    changed_.wait_for(lock, limit, [&] { return followers_.empty(); });
}

void FollowerHub::start_heartbeats() {
    heartbeat_thread_ = std::thread([this] {
        const auto tick = std::max(heartbeat_ / 2, std::chrono::milliseconds(10));
        std::unique_lock wait_lock(heartbeat_mutex_);
        while (!heartbeat_wake_.wait_for(wait_lock, tick, [&] { return heartbeat_stop_; })) {
            const int64_t due = now_ns() - std::chrono::nanoseconds(heartbeat_).count();
            std::lock_guard lock(mutex_);
            for (const auto& f : followers_) {
                std::lock_guard follower_lock(f->mutex);
                if (f->suspended && f->last_output_ns.load() <= due) f->resume_locked();
            }
        }
    });
}

void FollowerHub::stop_heartbeats() {
    {
        std::lock_guard lock(heartbeat_mutex_);
        heartbeat_stop_ = true;
    }
    heartbeat_wake_.notify_all();
    if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

namespace {

// What a stream's response carries: its follower, and the hub to leave when it is released.
struct Stream {
    std::shared_ptr<FollowerHub> hub;
    std::shared_ptr<Follower> follower;
};

// Under the follower's mutex, with nothing left to write: takes what publish() queued (and the
// drop notice, whose gap comes after it). With nothing queued returns the reader's answer: the
// end of the stream, a heartbeat (an empty line in buf) or 0 with the connection suspended until
// publish(), a heartbeat or stop() resumes it. nullopt: lines to write in f.out.
std::optional<ssize_t> take_queue_locked(Follower& f, std::chrono::milliseconds heartbeat, char* buf) {
    f.out.swap(f.queue);
    if (f.dropped_pending > 0) {
        // The drops happened after everything queued: the gap is here.
        f.out.push_back(std::make_shared<const std::string>(dropped_line(f.dropped_pending)));
        f.dropped_pending = 0;
    }
    if (!f.out.empty()) return std::nullopt;
    if (f.closed) return MHD_CONTENT_READER_END_OF_STREAM;
    const int64_t now = now_ns();
    if (now - f.last_output_ns.load() >= std::chrono::nanoseconds(heartbeat).count()) {
        f.last_output_ns = now;
        buf[0] = '\n';
        return 1;
    }
    f.suspended = true;
    MHD_suspend_connection(f.connection);
    return 0;
}

// Copies whole lines of f.out into buf, each with its newline; the last one may continue in
// the next call. Returns the bytes written.
size_t copy_lines(Follower& f, char* buf, size_t max) {
    size_t written = 0;
    while (written < max) {
        if (!f.current) {
            if (f.out.empty()) break;
            f.current = std::move(f.out.front());
            f.out.pop_front();
            f.offset = 0;
        }
        const std::string& line = *f.current;
        if (f.offset < line.size()) {
            const size_t n = std::min(line.size() - f.offset, max - written);
            std::memcpy(buf + written, line.data() + f.offset, n);
            written += n;
            f.offset += n;
        }
        if (f.offset == line.size() && written < max) {
            buf[written++] = '\n';
            f.current.reset();
        }
    }
    return written;
}

// libmicrohttpd's content reader for /incidents, on the server thread: whole queued lines (the
// last one may continue in the next call), a heartbeat, the end of the stream, or nothing for
// now (the connection is suspended until publish(), a heartbeat or stop() resumes it).
ssize_t read_stream(void* cls, uint64_t, char* buf, size_t max) {
    auto& stream = *static_cast<Stream*>(cls);
    Follower& f = *stream.follower;
    if (f.out.empty() && !f.current) {
        std::lock_guard lock(f.mutex);
        if (auto answer = take_queue_locked(f, stream.hub->heartbeat(), buf)) return *answer;
    }
    const size_t written = copy_lines(f, buf, max);
    f.last_output_ns = now_ns();
    return static_cast<ssize_t>(written);
}

void release_stream(void* cls) {
    std::unique_ptr<Stream> stream(static_cast<Stream*>(cls));
    stream->hub->remove(stream->follower);
}

}  // namespace

MHD_Response* create_stream_response(const std::shared_ptr<FollowerHub>& hub,
                                     const std::shared_ptr<Follower>& follower) {
    auto stream = std::make_unique<Stream>(Stream{hub, follower});
    MHD_Response* response =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, &read_stream, stream.get(), &release_stream);
    if (response == nullptr) {
        hub->remove(follower);
        return nullptr;
    }
    stream.release();  // the response owns it now: release_stream()
    return response;
}

}  // namespace rstwatch
