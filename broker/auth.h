/* auth.h - password hashing compatible with RabbitMQ definitions, and permission regexes.
 *
 * Hash format (rabbit_password_hashing_*): base64(salt(4 bytes) || H(salt || password)) with
 * H = SHA-256 (default), SHA-512, or MD5 (legacy). Permission patterns are PCRE-compatible
 * regexes matched unanchored, as Erlang's re:run. As in RabbitMQ, the empty pattern is treated
 * as "^$": it matches no resource except one whose name is itself empty. */
#ifndef WARREN_AUTH_H
#define WARREN_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AUTH_SALT_LEN 4

typedef enum { AUTH_HASH_SHA256, AUTH_HASH_SHA512, AUTH_HASH_MD5 } auth_hash_alg_t;

/* Name like "rabbit_password_hashing_sha256"; NULL or "" means sha256 (RabbitMQ's default).
 * Returns the auth_hash_alg_t value, or -1 when unknown. */
int auth_hash_alg_parse(const char *name);
const char *auth_hash_alg_name(auth_hash_alg_t alg);
/* Returns a malloc'd NUL-terminated base64 string with a fresh random salt; NULL on failure. */
char *auth_hash_password(auth_hash_alg_t alg, const char *password, size_t pwlen);
/* Same with a caller-chosen salt (AUTH_SALT_LEN bytes): deterministic, for tests and tools. */
char *auth_hash_password_with_salt(auth_hash_alg_t alg, const uint8_t salt[AUTH_SALT_LEN],
                                   const char *password, size_t pwlen);
/* Constant-time check of password against a base64 hash made by alg. False on malformed hash. */
bool auth_check_password(auth_hash_alg_t alg, const char *hash_b64, const char *password, size_t pwlen);

typedef struct auth_regex auth_regex_t;
/* Compiles pattern (UTF-8). NULL with a message in err if invalid. */
auth_regex_t *auth_regex_compile(const char *pattern, char *err, size_t errlen);
/* Unanchored search of name (len bytes). Pattern "" behaves as "^$". NULL re matches nothing.
 * Uses per-regex scratch space: do not match one regex from two threads at once. */
bool auth_regex_match(const auth_regex_t *re, const char *name, size_t len);
const char *auth_regex_pattern(const auth_regex_t *re);
void auth_regex_free(auth_regex_t *re);

#endif
