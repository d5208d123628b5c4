/* tls.c - TLS material for the listeners: the server SSL_CTX and a self-signed certificate for first runs.
 *
 * The per-connection TLS work (handshake, SSL_read/SSL_write on non-blocking sockets) lives in net.c; this file
 * only builds what a listener is given. Policy: TLS 1.2 and newer, server cipher preference, no renegotiation
 * (a classic way for a client to make the server burn CPU), optional client certificates checked against a CA
 * file. Everything uses the OpenSSL 3 API; nothing deprecated is called, so -Werror builds stay clean.
 *
 * The self-signed certificate exists so that a fresh broker can offer TLS out of the box (and so tests need no
 * fixtures). Files are written to a temporary name and renamed into place, so a crash never leaves half a key;
 * the key is created with mode 0600 from the start. */
#include "amqp091/net.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define TLS_CERT_DAYS 3650
#define TLS_SESSION_CONTEXT "warren"

void net_tls_error_string(char *buf, size_t len)
{
    unsigned long first = ERR_get_error();
    while (ERR_get_error() != 0) {
    }
    if (len == 0) return;
    if (first == 0) {
        snprintf(buf, len, "unknown TLS error");
        return;
    }
    const char *reason = ERR_reason_error_string(first);
    if (reason) snprintf(buf, len, "%s", reason);
    else ERR_error_string_n(first, buf, len);
}

/* ---------------------------------------------------------------- server context */

static SSL_CTX *tls_fail(SSL_CTX *ctx, char *err, size_t errlen, const char *what, const char *path)
{
    char reason[256];
    net_tls_error_string(reason, sizeof reason);
    snprintf(err, errlen, "%s %s: %s", what, path ? path : "", reason);
    SSL_CTX_free(ctx);
    return NULL;
}

static bool tls_load_client_cas(SSL_CTX *ctx, const char *cacertfile)
{
    if (SSL_CTX_load_verify_locations(ctx, cacertfile, NULL) != 1) return false;
    /* Tell clients which CAs we accept, so a client holding several certificates picks the right one. */
    STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cacertfile);
    if (names) SSL_CTX_set_client_CA_list(ctx, names);
    ERR_clear_error();
    return true;
}

SSL_CTX *net_tls_server_ctx(const char *certfile, const char *keyfile, const char *cacertfile,
                            bool verify_peer, bool fail_if_no_peer_cert, char *err, size_t errlen)
{
    if (!certfile || !*certfile || !keyfile || !*keyfile) {
        snprintf(err, errlen, "TLS needs both a certificate file and a key file");
        return NULL;
    }
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) return tls_fail(NULL, err, errlen, "cannot create TLS context", NULL);
    if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
        return tls_fail(ctx, err, errlen, "cannot set the minimum TLS version", NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, certfile) != 1)
        return tls_fail(ctx, err, errlen, "cannot load certificate", certfile);
    if (SSL_CTX_use_PrivateKey_file(ctx, keyfile, SSL_FILETYPE_PEM) != 1)
        return tls_fail(ctx, err, errlen, "cannot load private key", keyfile);
    if (SSL_CTX_check_private_key(ctx) != 1)
        return tls_fail(ctx, err, errlen, "private key does not match the certificate; key", keyfile);
    if (cacertfile && *cacertfile && !tls_load_client_cas(ctx, cacertfile))
        return tls_fail(ctx, err, errlen, "cannot load CA certificates", cacertfile);

    /* Refusing clients without a certificate only works if one is asked for, so fail_if_no_peer_cert implies
     * verify_peer. */
    if (verify_peer || fail_if_no_peer_cert) {
        int mode = SSL_VERIFY_PEER | (fail_if_no_peer_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
        if ((!cacertfile || !*cacertfile) && SSL_CTX_set_default_verify_paths(ctx) != 1)
            return tls_fail(ctx, err, errlen, "cannot load the system CA certificates", NULL);
        SSL_CTX_set_verify(ctx, mode, NULL);
    }
    /* Session resumption with client certificates requires a session id context. */
    SSL_CTX_set_session_id_context(ctx, (const unsigned char *)TLS_SESSION_CONTEXT,
                                   (unsigned int)strlen(TLS_SESSION_CONTEXT));
    return ctx;
}

/* ---------------------------------------------------------------- self-signed certificate */

/* mkdir -p of the directory part of path (new directories get mode 0700: they may hold the key). */
static int tls_make_parent_dirs(const char *path, char *err, size_t errlen)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) {
        snprintf(err, errlen, "path too long: %s", path);
        return -1;
    }
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return 0;
    *slash = '\0';
    for (char *p = dir + 1; ; p++) {
        if (*p != '/' && *p != '\0') continue;
        char saved = *p;
        *p = '\0';
        if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
            snprintf(err, errlen, "cannot create directory %s: %s", dir, strerror(errno));
            return -1;
        }
        *p = saved;
        if (saved == '\0') break;
    }
    return 0;
}

/* The hostname for the CN, or "localhost". Truncated to the 64-character limit RFC 5280 puts on a CN. */
static void tls_hostname(char *buf, size_t len)
{
    if (gethostname(buf, len) != 0 || !*buf) snprintf(buf, len, "localhost");
    buf[len - 1] = '\0';
    if (strlen(buf) > 63) buf[63] = '\0';
}

/* Only a name made of DNS characters may go into the SAN text, where a comma would start a new entry. */
static bool tls_is_dns_name(const char *name)
{
    if (!*name) return false;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '-' ||
              *p == '.'))
            return false;
    return true;
}

static bool tls_add_ext(X509 *cert, X509V3_CTX *v3, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, v3, nid, value);
    if (!ext) return false;
    bool ok = X509_add_ext(cert, ext, -1) == 1;
    X509_EXTENSION_free(ext);
    return ok;
}

static bool tls_random_serial(X509 *cert)
{
    BIGNUM *bn = BN_new();
    bool ok = bn && BN_rand(bn, 63, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) == 1 &&
              BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok;
}

/* Builds and signs the certificate for key; NULL on failure (reason on the OpenSSL error queue). */
static X509 *tls_build_cert(EVP_PKEY *key)
{
    char host[256], san[400];
    tls_hostname(host, sizeof host);
    if (tls_is_dns_name(host) && strcmp(host, "localhost") != 0)
        snprintf(san, sizeof san, "DNS:localhost,IP:127.0.0.1,IP:::1,DNS:%s", host);
    else
        snprintf(san, sizeof san, "DNS:localhost,IP:127.0.0.1,IP:::1");

    X509 *cert = X509_new();
    if (!cert) return NULL;
    X509_NAME *name = X509_get_subject_name(cert);
    X509V3_CTX v3;
    bool ok = X509_set_version(cert, X509_VERSION_3) == 1 && tls_random_serial(cert) &&
              X509_gmtime_adj(X509_getm_notBefore(cert), -300) != NULL &&   /* tolerate some clock skew */
              X509_time_adj_ex(X509_getm_notAfter(cert), TLS_CERT_DAYS, 0, NULL) != NULL &&
              X509_set_pubkey(cert, key) == 1 &&
              X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"Warren", -1, -1, 0) &&
              X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)host, -1, -1, 0) &&
              X509_set_issuer_name(cert, name) == 1;
    if (ok) {
        X509V3_set_ctx(&v3, cert, cert, NULL, NULL, 0);
        ok = tls_add_ext(cert, &v3, NID_basic_constraints, "critical,CA:FALSE") &&
             tls_add_ext(cert, &v3, NID_key_usage, "critical,digitalSignature") &&
             tls_add_ext(cert, &v3, NID_ext_key_usage, "serverAuth,clientAuth") &&
             tls_add_ext(cert, &v3, NID_subject_key_identifier, "hash") &&
             tls_add_ext(cert, &v3, NID_subject_alt_name, san) &&
             X509_sign(cert, key, EVP_sha256()) > 0;
    }
    if (!ok) {
        X509_free(cert);
        return NULL;
    }
    return cert;
}

/* Writes a PEM file via path.tmp + rename. is_key: mode 0600 and the private key; else the certificate. */
static int tls_write_pem(const char *path, bool is_key, EVP_PKEY *key, X509 *cert, char *err, size_t errlen)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp) {
        snprintf(err, errlen, "path too long: %s", path);
        return -1;
    }
    mode_t mode = is_key ? 0600 : 0644;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    (void)fchmod(fd, mode);     /* the umask may have taken bits away from the certificate */
    FILE *fp = fdopen(fd, "w");
    if (!fp) {
        snprintf(err, errlen, "cannot open %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return -1;
    }
    ERR_clear_error();
    errno = 0;
    bool ok = is_key ? PEM_write_PrivateKey(fp, key, NULL, NULL, 0, NULL, NULL) == 1 : PEM_write_X509(fp, cert) == 1;
    ok = fflush(fp) == 0 && ok;
    ok = fsync(fileno(fp)) == 0 && ok;
    ok = fclose(fp) == 0 && ok;
    if (!ok) {
        char reason[256];
        net_tls_error_string(reason, sizeof reason);
        snprintf(err, errlen, "cannot write %s: %s", tmp, errno ? strerror(errno) : reason);
        unlink(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int net_tls_make_self_signed(const char *certfile, const char *keyfile, char *err, size_t errlen)
{
    if (!certfile || !*certfile || !keyfile || !*keyfile) {
        snprintf(err, errlen, "self-signed certificate: certificate and key paths are required");
        return -1;
    }
    if (access(certfile, F_OK) == 0 && access(keyfile, F_OK) == 0) return 0;
    if (tls_make_parent_dirs(certfile, err, errlen) != 0 || tls_make_parent_dirs(keyfile, err, errlen) != 0)
        return -1;

    ERR_clear_error();
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = key ? tls_build_cert(key) : NULL;
    if (!cert) {
        char reason[256];
        net_tls_error_string(reason, sizeof reason);
        snprintf(err, errlen, "cannot generate a self-signed certificate: %s", reason);
        EVP_PKEY_free(key);
        return -1;
    }
    int rc = tls_write_pem(keyfile, true, key, NULL, err, errlen);
    if (rc == 0) rc = tls_write_pem(certfile, false, NULL, cert, err, errlen);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}
