#include "openssl_compat.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

// The two objects, built by CMake and embedded with .incbin (generated/openssl_compat_blobs.S).
extern "C" {
extern const unsigned char rstwatch_libssl_compat_start[];
extern const unsigned char rstwatch_libssl_compat_end[];
extern const unsigned char rstwatch_libcrypto_compat_start[];
extern const unsigned char rstwatch_libcrypto_compat_end[];
}

namespace rstwatch {
namespace {

// A memory file descriptor, closed when the loading is over.
struct MemFd {
    int fd = -1;
    MemFd() = default;
    MemFd(const MemFd&) = delete;
    MemFd& operator=(const MemFd&) = delete;
    ~MemFd() {
        if (fd >= 0) close(fd);
    }
};

// dlopen needs a file: an anonymous memory file, so nothing is written to a (read-only) disk.
// The handle stays open for the life of the process: civetweb's dlopen by SONAME returns it.
// The caller keeps `memfd` open until every object is loaded: dlopen matches an already loaded
// "/proc/self/fd/N" by name, so a reused descriptor number would return the first object again.
bool load_embedded(const char* name, const unsigned char* begin, const unsigned char* end, MemFd& memfd,
                   std::string* error) {
    memfd.fd = memfd_create(name, MFD_CLOEXEC);
    const int fd = memfd.fd;
    if (fd < 0) {
        *error = std::string("cannot create a memory file for ") + name + ": " + std::strerror(errno);
        return false;
    }
    const auto size = static_cast<size_t>(end - begin);
    size_t written = 0;
    while (written < size) {
        const ssize_t n = ::write(fd, begin + written, size - written);
        if (n <= 0) {
            *error = std::string("cannot write ") + name + " to a memory file: " + std::strerror(errno);
            return false;
        }
        written += static_cast<size_t>(n);
    }
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        const char* why = dlerror();
        *error = std::string("cannot load the OpenSSL 3 shim ") + name + ": " + (why ? why : "unknown error");
        return false;
    }
    return true;
}

}  // namespace

bool load_openssl_compat(std::string* error) {
    static std::once_flag once;
    static std::string load_error;
    std::call_once(once, [] {
        // libcrypto first: the libssl shim depends on libssl.so.3, which needs libcrypto.so.3.
        MemFd crypto_fd, ssl_fd;  // the mappings outlive the descriptors
        if (!load_embedded("libcrypto.so", rstwatch_libcrypto_compat_start, rstwatch_libcrypto_compat_end,
                           crypto_fd, &load_error))
            return;
        load_embedded("libssl.so", rstwatch_libssl_compat_start, rstwatch_libssl_compat_end, ssl_fd, &load_error);
    });
    if (!load_error.empty() && error != nullptr) *error = load_error;
    return load_error.empty();
}

}  // namespace rstwatch
