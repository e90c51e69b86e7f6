// Followers of /incidents: one bounded queue per connection, filled by publish() from any
// thread and drained by libmicrohttpd's content reader on the server thread, and the incident
// history replayed to a follower that asks for it. http_server.h describes the contract (drops,
// heartbeats, replay, stop).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "history.h"

struct MHD_Connection;
struct MHD_Response;

namespace rstwatch {

// One follower's queue and stream state (followers.cpp).
struct Follower;

class FollowerHub {
public:
    FollowerHub(size_t capacity, size_t max_followers, std::chrono::milliseconds heartbeat,
                IncidentHistoryOptions history);

    // A new follower on `connection`; nullptr when there are max_followers already or after
    // close_all(). It is first sent the history lines `replay` selects (outside its queue, so a
    // replay of any size is sent whole): taken under the lock publish() holds, so each line
    // published meanwhile is either in the replay or queued live, never both, never neither.
    std::shared_ptr<Follower> add(MHD_Connection* connection, const HistoryQuery& replay = {});
    // The connection is over (its response released by libmicrohttpd).
    void remove(const std::shared_ptr<Follower>& f);
    size_t count();
    // Keeps the line (no newline) in the history, stamped unix_ns (the incident's wall-clock
    // time), queues it for every follower, or counts a drop for a full queue, and resumes
    // followers that wait for lines. Never waits for the network.
    void publish(const std::shared_ptr<const std::string>& line, int64_t unix_ns);
    // Whether publish() keeps lines for later followers (else a line nobody follows is lost).
    bool history_enabled() const { return history_enabled_; }
    // Every stream ends once what is queued for it is written; no follower is accepted after.
    void close_all();
    // After close_all(): until every follower's connection is over, at most `limit` (a follower
    // stuck in a write stays; stopping the daemon closes it).
    void wait_for_followers(std::chrono::milliseconds limit);
    // Wakes suspended followers that have been idle for `heartbeat`: their content reader then
    // sends an empty line.
    void start_heartbeats();
    void stop_heartbeats();

    uint64_t dropped_total() const { return dropped_total_.load(); }
    std::chrono::milliseconds heartbeat() const { return heartbeat_; }

private:
    const size_t capacity_;
    const size_t max_followers_;
    const std::chrono::milliseconds heartbeat_;

    std::mutex mutex_;
    std::vector<std::shared_ptr<Follower>> followers_;
    IncidentHistory history_;  // under mutex_: replays and live lines are ordered by it
    const bool history_enabled_;
    bool stopping_ = false;
    std::atomic<uint64_t> dropped_total_{0};
    std::condition_variable changed_;  // a follower went, or stopping

    std::thread heartbeat_thread_;
    std::mutex heartbeat_mutex_;
    std::condition_variable heartbeat_wake_;
    bool heartbeat_stop_ = false;
};

// The chunked /incidents response for a follower just added: its content reader streams the
// follower's lines; releasing the response removes the follower from the hub. nullptr when
// libmicrohttpd cannot create it (the follower is removed then).
MHD_Response* create_stream_response(const std::shared_ptr<FollowerHub>& hub, const std::shared_ptr<Follower>& follower);

}  // namespace rstwatch
