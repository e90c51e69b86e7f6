// Followers of /incidents: one bounded queue per connection, filled by publish() from any
// thread and drained by libmicrohttpd's content reader on the server thread. http_server.h
// describes the contract (drops, heartbeats, stop).
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

struct MHD_Connection;
struct MHD_Response;

namespace rstwatch {

// One follower's queue and stream state (followers.cpp).
struct Follower;

class FollowerHub {
public:
    FollowerHub(size_t capacity, size_t max_followers, std::chrono::milliseconds heartbeat);

    // A new follower on `connection`; nullptr when there are max_followers already or after
    // close_all().
    std::shared_ptr<Follower> add(MHD_Connection* connection);
    // The connection is over (its response released by libmicrohttpd).
    void remove(const std::shared_ptr<Follower>& f);
    size_t count();
    // Queues the line (no newline) for every follower, or counts a drop for a full queue, and
    // resumes followers that wait for lines. Never waits for the network.
    void publish(const std::shared_ptr<const std::string>& line);
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
