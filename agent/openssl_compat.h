#pragma once
#include <string>

namespace rstwatch {

// Makes civetweb's run-time OpenSSL load (dlopen "libssl.so"/"libcrypto.so", OpenSSL 1.1 API)
// find OpenSSL 3: loads two small objects embedded in this binary whose SONAMEs are those names
// (see agent/openssl_compat/). Must run before anything dlopens "libssl.so". Loads once; later
// calls return the first result. False (with the reason) when OpenSSL 3 is not installed.
bool load_openssl_compat(std::string* error);

}  // namespace rstwatch
