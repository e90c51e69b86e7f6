// Listen address parsing and the listening socket; see listen_address.h.
#include "listen_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>
#include <utility>

namespace rstwatch {

namespace {

std::optional<uint16_t> parse_port(std::string_view text) {
    unsigned value = 0;
    if (text.empty() || text.size() > 5) return std::nullopt;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value > 65535) return std::nullopt;
    return static_cast<uint16_t>(value);
}

// strerror() with a lower-case first letter, to follow "cannot listen on ADDR: ".
std::string errno_text(int err) {
    std::string text = std::strerror(err);
    if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
    return text;
}

}  // namespace

std::optional<ListenAddress> parse_listen(const std::string& listen, std::string* error) {
    auto bad = [&](const std::string& why) {
        *error = "bad listen address \"" + listen + "\": " + why;
        return std::nullopt;
    };
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return bad("expected IPv4:PORT, [IPv6]:PORT or :PORT");
    auto port = parse_port(std::string_view(listen).substr(colon + 1));
    if (!port) return bad("port must be a number from 0 to 65535");
    const std::string host = listen.substr(0, colon);
    ListenAddress out;
    if (!host.empty() && host.front() == '[') {
        if (host.size() < 3 || host.back() != ']') return bad("unterminated [IPv6] address");
        auto* a6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons(*port);
        if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6->sin6_addr) != 1)
            return bad("not an IPv6 address");
        out.family = AF_INET6;
        out.length = sizeof *a6;
        return out;
    }
    auto* a4 = reinterpret_cast<sockaddr_in*>(&out.storage);
    a4->sin_family = AF_INET;
    a4->sin_port = htons(*port);
    if (host.empty()) {
        a4->sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (inet_pton(AF_INET, host.c_str(), &a4->sin_addr) != 1) {
        return bad("not an IPv4 address (use [ADDR]:PORT for IPv6; host names are not resolved)");
    }
    out.length = sizeof *a4;
    return out;
}

bool is_loopback_listen(const std::string& listen) {
    const size_t colon = listen.rfind(':');
    if (colon == std::string::npos) return false;
    std::string host = listen.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        in6_addr a6{};
        if (inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a6) != 1) return false;
        if (IN6_IS_ADDR_LOOPBACK(&a6)) return true;
        // ::ffff:127.x.y.z
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    in_addr a4{};
    if (inet_pton(AF_INET, host.c_str(), &a4) != 1) return false;
    return (ntohl(a4.s_addr) >> 24) == 127;
}

std::string listen_address_error(const std::string& listen) {
    std::string error;
    return parse_listen(listen, &error) ? std::string() : error;
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
        if (fd_ >= 0) close(fd_);
        fd_ = other.release();
    }
    return *this;
}

UniqueFd::~UniqueFd() {
    if (fd_ >= 0) close(fd_);
}

int UniqueFd::release() { return std::exchange(fd_, -1); }

bool bind_listener(const std::string& listen, const ListenAddress& address, UniqueFd* out, uint16_t* port,
                   std::string* error) {
    auto fail = [&](int err) {
        *error = "cannot listen on " + listen + ": " + errno_text(err);
        return false;
    };
    UniqueFd fd(socket(address.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) return fail(errno);
    const int on = 1, off = 0;
    if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0) return fail(errno);
    if (address.family == AF_INET6 && setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off) != 0)
        return fail(errno);
    if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&address.storage), address.length) != 0) return fail(errno);
    if (::listen(fd.get(), SOMAXCONN) != 0) return fail(errno);
    sockaddr_storage bound{};
    socklen_t length = sizeof bound;
    if (getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &length) != 0) return fail(errno);
    *port = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    *out = std::move(fd);
    return true;
}

}  // namespace rstwatch
