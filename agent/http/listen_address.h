// The server's listen address: "IPv4:PORT", ":PORT" or "[IPv6]:PORT" parsed, checked and bound
// (http_server.h describes the forms). The agent binds the socket itself, so errors are the
// kernel's.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>

namespace rstwatch {

// Whether a listen address ("IPv4:PORT", ":PORT", "[IPv6]:PORT") is loopback only
// (127.0.0.0/8 or ::1). ":PORT", 0.0.0.0, :: and any other address are not.
bool is_loopback_listen(const std::string& listen);
// "" when `listen` is a usable listen address, else why not (one line, as start() reports it).
std::string listen_address_error(const std::string& listen);

struct ListenAddress {
    sockaddr_storage storage{};
    socklen_t length = 0;
    int family = AF_INET;
};

// "ADDR:PORT" -> the socket address to bind; else nullopt and *error:
// "bad listen address \"ADDR:PORT\": why".
std::optional<ListenAddress> parse_listen(const std::string& listen, std::string* error);

// A file descriptor closed with its owner unless released.
class UniqueFd {
public:
    explicit UniqueFd(int fd = -1) : fd_(fd) {}
    UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
    UniqueFd(const UniqueFd&) = delete;
    UniqueFd& operator=(const UniqueFd&) = delete;
    UniqueFd& operator=(UniqueFd&& other) noexcept;
    ~UniqueFd();
    int get() const { return fd_; }
    int release();

private:
    int fd_;
};

// The listening socket for `address` (SO_REUSEADDR, listen backlog SOMAXCONN) into *out and
// the port it got into *port; else false and *error: "cannot listen on LISTEN: why" (strerror,
// lower case). "[::]:PORT" also takes IPv4 (IPV6_V6ONLY off, whatever net.ipv6.bindv6only says).
bool bind_listener(const std::string& listen, const ListenAddress& address, UniqueFd* out, uint16_t* port,
                   std::string* error);

}  // namespace rstwatch
