/* Loaded by the agent as "libssl.so" (its SONAME) before civetweb opens OpenSSL.
 *
 * civetweb 1.15 as Debian 12 builds it opens libssl.so at run time and resolves the OpenSSL 1.1
 * API by name. OpenSSL 3 (Debian 12's only libssl) keeps that API except one function, renamed
 * to SSL_get1_peer_certificate with the same meaning (a new reference the caller frees), so
 * civetweb's load fails. This object exports the old name and depends on libssl.so.3: dlsym on
 * its handle finds that one function here and every other in OpenSSL 3. */
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate  /* OpenSSL 3's header maps it to the new name */
__attribute__((visibility("default"))) X509* SSL_get_peer_certificate(const SSL* ssl);

X509* SSL_get_peer_certificate(const SSL* ssl) { return SSL_get1_peer_certificate(ssl); }
