// TLS for the server: whether libmicrohttpd can serve it, and the certificate chain and key,
// read from PEM files into memory and checked with GnuTLS. http_server.h describes the contract.
#pragma once

#include <string>

namespace rstwatch {

// Whether TLS can be served: the libmicrohttpd in use was built with GnuTLS (Debian's is).
// Else false and *why.
bool tls_support(std::string* why);

// TLS 1.2 and 1.3, GnuTLS's default ("NORMAL") ciphers and groups otherwise.
inline constexpr const char* kTlsPriorities = "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2";

// Wipes a string holding key material when it goes.
struct Secret {
    std::string text;
    Secret() = default;
    Secret(const Secret&) = delete;
    Secret& operator=(const Secret&) = delete;
    ~Secret();
};

// A certificate chain (leaf first) and its private key, PEM, as libmicrohttpd takes them.
struct TlsKeyPair {
    Secret cert;
    Secret key;
};

// Reads both files and checks them with GnuTLS, so that an error names the flag and file it
// comes from (libmicrohttpd only says that its TLS setup failed): "--tls-cert FILE: ...",
// "--tls-key FILE: ...", or "cannot read FILE: why".
bool load_tls(const std::string& cert_file, const std::string& key_file, TlsKeyPair* out, std::string* error);

}  // namespace rstwatch
