/* auth.c - RabbitMQ-compatible password hashes and permission regexes.
 *
 * Password hashes: RabbitMQ stores base64(salt || H(salt || password)) with a 4-byte random
 * salt and H chosen per user by hashing_algorithm (rabbit_password_hashing_sha256 is the
 * default, sha512 is available, md5 is the pre-3.6 legacy). Definitions files exported by
 * RabbitMQ carry exactly these strings, so users can be imported without knowing passwords.
 * SHA-2, random salts and base64 come from libsodium; MD5 comes from OpenSSL's EVP interface.
 * Verification recomputes the digest with the stored salt and compares in constant time.
 *
 * Permission regexes: each user has configure/write/read patterns per vhost, checked against
 * resource names with Erlang's re:run, i.e. an unanchored search. RabbitMQ replaces the empty
 * pattern with "^$" before matching, so "" grants nothing except a resource whose name is
 * itself empty; we compile it the same way. Patterns are compiled once (PCRE2, UTF-8 mode with
 * invalid-UTF tolerance so odd resource names simply fail to match instead of erroring). */
#include "broker/auth.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <openssl/evp.h>
#include <pcre2.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AUTH_MAX_DIGEST 64   /* SHA-512 */

static const char *const alg_names[] = {
    [AUTH_HASH_SHA256] = "rabbit_password_hashing_sha256",
    [AUTH_HASH_SHA512] = "rabbit_password_hashing_sha512",
    [AUTH_HASH_MD5] = "rabbit_password_hashing_md5",
};

static bool alg_valid(auth_hash_alg_t alg) {
    return (unsigned)alg <= AUTH_HASH_MD5;
}

int auth_hash_alg_parse(const char *name) {
    if (!name || !*name) return AUTH_HASH_SHA256;
    for (int i = 0; i <= AUTH_HASH_MD5; i++)
        if (strcmp(name, alg_names[i]) == 0) return i;
    return -1;
}

const char *auth_hash_alg_name(auth_hash_alg_t alg) {
    return alg_valid(alg) ? alg_names[alg] : "unknown";
}

static size_t digest_len(auth_hash_alg_t alg) {
    switch (alg) {
    case AUTH_HASH_SHA256: return crypto_hash_sha256_BYTES;
    case AUTH_HASH_SHA512: return crypto_hash_sha512_BYTES;
    case AUTH_HASH_MD5: return 16;
    }
    return 0;
}

/* out = H(salt || password); returns the digest length or 0 on failure. */
static size_t salted_digest(auth_hash_alg_t alg, const uint8_t salt[AUTH_SALT_LEN], const char *pw,
                            size_t pwlen, uint8_t out[AUTH_MAX_DIGEST]) {
    const unsigned char *p = (const unsigned char *)(pw ? pw : "");
    if (alg == AUTH_HASH_SHA256) {
        crypto_hash_sha256_state st;
        crypto_hash_sha256_init(&st);
        crypto_hash_sha256_update(&st, salt, AUTH_SALT_LEN);
        crypto_hash_sha256_update(&st, p, pwlen);
        crypto_hash_sha256_final(&st, out);
    } else if (alg == AUTH_HASH_SHA512) {
        crypto_hash_sha512_state st;
        crypto_hash_sha512_init(&st);
        crypto_hash_sha512_update(&st, salt, AUTH_SALT_LEN);
        crypto_hash_sha512_update(&st, p, pwlen);
        crypto_hash_sha512_final(&st, out);
    } else if (alg == AUTH_HASH_MD5) {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        unsigned int n = 0;
        bool ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) == 1 &&
                  EVP_DigestUpdate(ctx, salt, AUTH_SALT_LEN) == 1 &&
                  EVP_DigestUpdate(ctx, p, pwlen) == 1 && EVP_DigestFinal_ex(ctx, out, &n) == 1;
        EVP_MD_CTX_free(ctx);
        if (!ok || n != 16) return 0;
    } else {
        return 0;
    }
    return digest_len(alg);
}

char *auth_hash_password_with_salt(auth_hash_alg_t alg, const uint8_t salt[AUTH_SALT_LEN],
                                   const char *password, size_t pwlen) {
    if (!alg_valid(alg) || !salt || (!password && pwlen)) return NULL;
    uint8_t raw[AUTH_SALT_LEN + AUTH_MAX_DIGEST];
    memcpy(raw, salt, AUTH_SALT_LEN);
    size_t dlen = salted_digest(alg, salt, password, pwlen, raw + AUTH_SALT_LEN);
    if (dlen == 0) return NULL;
    size_t rawlen = AUTH_SALT_LEN + dlen;
    size_t b64len = sodium_base64_ENCODED_LEN(rawlen, sodium_base64_VARIANT_ORIGINAL);
    char *b64 = malloc(b64len);
    if (b64) sodium_bin2base64(b64, b64len, raw, rawlen, sodium_base64_VARIANT_ORIGINAL);
    sodium_memzero(raw, sizeof raw);
    return b64;
}

char *auth_hash_password(auth_hash_alg_t alg, const char *password, size_t pwlen) {
    if (sodium_init() < 0) return NULL;   /* idempotent; seeds the random generator */
    uint8_t salt[AUTH_SALT_LEN];
    randombytes_buf(salt, sizeof salt);
    return auth_hash_password_with_salt(alg, salt, password, pwlen);
}

bool auth_check_password(auth_hash_alg_t alg, const char *hash_b64, const char *password, size_t pwlen) {
    if (!alg_valid(alg) || !hash_b64 || (!password && pwlen)) return false;
    uint8_t stored[AUTH_SALT_LEN + AUTH_MAX_DIGEST + 1];
    size_t stored_len = 0;
    const char *end = NULL;
    /* One spare byte in stored makes an over-long hash fail the length check below. */
    if (sodium_base642bin(stored, sizeof stored, hash_b64, strlen(hash_b64), NULL, &stored_len, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || *end != '\0')
        return false;
    size_t dlen = digest_len(alg);
    if (stored_len != AUTH_SALT_LEN + dlen) return false;
    uint8_t computed[AUTH_MAX_DIGEST];
    if (salted_digest(alg, stored, password, pwlen, computed) != dlen) return false;
    bool same = sodium_memcmp(computed, stored + AUTH_SALT_LEN, dlen) == 0;
    sodium_memzero(computed, sizeof computed);
    return same;
}

/* ---- permission regexes ------------------------------------------------------------ */

struct auth_regex {
    pcre2_code *code;
    pcre2_match_data *md;   /* reused by every match: single-threaded use per regex */
    char pattern[];         /* the pattern as configured (before the "" -> "^$" rewrite) */
};

auth_regex_t *auth_regex_compile(const char *pattern, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!pattern) pattern = "";
    size_t plen = strlen(pattern);
    const char *effective = plen ? pattern : "^$";
    int errcode = 0;
    PCRE2_SIZE erroff = 0;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)effective, PCRE2_ZERO_TERMINATED,
                                     PCRE2_UTF | PCRE2_MATCH_INVALID_UTF, &errcode, &erroff, NULL);
    if (!code) {
        if (err && errlen) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(errcode, msg, sizeof msg);
            snprintf(err, errlen, "invalid regular expression '%s': %s at offset %zu", pattern,
                     (const char *)msg, (size_t)erroff);
        }
        return NULL;
    }
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);   /* best effort; interpreter otherwise */
    auth_regex_t *re = malloc(sizeof *re + plen + 1);
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(code, NULL);
    if (!re || !md) {
        free(re);
        pcre2_match_data_free(md);
        pcre2_code_free(code);
        if (err && errlen) snprintf(err, errlen, "out of memory compiling '%s'", pattern);
        return NULL;
    }
    re->code = code;
    re->md = md;
    memcpy(re->pattern, pattern, plen + 1);
    return re;
}

bool auth_regex_match(const auth_regex_t *re, const char *name, size_t len) {
    if (!re || (!name && len)) return false;
    int rc = pcre2_match(re->code, (PCRE2_SPTR)(name ? name : ""), len, 0, 0, re->md, NULL);
    return rc >= 0;   /* no match and any matching error both deny */
}

const char *auth_regex_pattern(const auth_regex_t *re) {
    return re ? re->pattern : "";
}

void auth_regex_free(auth_regex_t *re) {
    if (!re) return;
    pcre2_match_data_free(re->md);
    pcre2_code_free(re->code);
    free(re);
}
