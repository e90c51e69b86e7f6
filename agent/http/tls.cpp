// Certificate and key loading for the server's TLS; see tls.h.
#include "tls.h"

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <microhttpd.h>

#include <cstring>

#include "credentials.h"

namespace rstwatch {

namespace {

constexpr size_t kMaxPemFileBytes = 1024 * 1024;

gnutls_datum_t datum(Secret* s) {
    return gnutls_datum_t{reinterpret_cast<unsigned char*>(s->text.data()), static_cast<unsigned>(s->text.size())};
}

// At least one PEM certificate in the file.
bool check_cert(const std::string& cert_file, const gnutls_datum_t& cert_pem, std::string* error) {
    gnutls_x509_crt_t* chain = nullptr;
    unsigned chain_length = 0;
    int rc = gnutls_x509_crt_list_import2(&chain, &chain_length, &cert_pem, GNUTLS_X509_FMT_PEM, 0);
    for (unsigned i = 0; i < chain_length; ++i) gnutls_x509_crt_deinit(chain[i]);
    gnutls_free(chain);
    if (rc < 0) {
        *error = "--tls-cert " + cert_file + ": no PEM certificate (" + gnutls_strerror(rc) + ")";
        return false;
    }
    return true;
}

// An unencrypted PEM private key.
bool check_key(const std::string& key_file, const gnutls_datum_t& key_pem, std::string* error) {
    gnutls_x509_privkey_t parsed = nullptr;
    int rc = gnutls_x509_privkey_init(&parsed);
    if (rc >= 0) rc = gnutls_x509_privkey_import2(parsed, &key_pem, GNUTLS_X509_FMT_PEM, nullptr, 0);
    if (parsed != nullptr) gnutls_x509_privkey_deinit(parsed);
    if (rc < 0) {
        *error = "--tls-key " + key_file + ": no usable PEM private key (" + gnutls_strerror(rc) +
                 "; an encrypted key is not supported)";
        return false;
    }
    return true;
}

// The key belongs to the certificate: GnuTLS accepts the pair as server credentials.
bool check_pair(const std::string& cert_file, const std::string& key_file, const gnutls_datum_t& cert_pem,
                const gnutls_datum_t& key_pem, std::string* error) {
    gnutls_certificate_credentials_t credentials = nullptr;
    int rc = gnutls_certificate_allocate_credentials(&credentials);
    if (rc >= 0)
        rc = gnutls_certificate_set_x509_key_mem2(credentials, &cert_pem, &key_pem, GNUTLS_X509_FMT_PEM, nullptr, 0);
    if (credentials != nullptr) gnutls_certificate_free_credentials(credentials);
    if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH) {
        *error = "--tls-key " + key_file + ": the key does not match the certificate of --tls-cert " + cert_file;
        return false;
    }
    if (rc < 0) {
        *error = "--tls-cert " + cert_file + " / --tls-key " + key_file + ": " + gnutls_strerror(rc);
        return false;
    }
    return true;
}

}  // namespace

bool tls_support(std::string* why) {
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES) return true;
    if (why != nullptr) *why = "this libmicrohttpd was built without TLS (GnuTLS)";
    return false;
}

Secret::~Secret() { explicit_bzero(text.data(), text.size()); }

bool load_tls(const std::string& cert_file, const std::string& key_file, TlsKeyPair* out, std::string* error) {
    if (!read_credential_file(cert_file, kMaxPemFileBytes, &out->cert.text, error) ||
        !read_credential_file(key_file, kMaxPemFileBytes, &out->key.text, error))
        return false;
    const gnutls_datum_t cert_pem = datum(&out->cert), key_pem = datum(&out->key);
    return check_cert(cert_file, cert_pem, error) && check_key(key_file, key_pem, error) &&
           check_pair(cert_file, key_file, cert_pem, key_pem, error);
}

}  // namespace rstwatch
