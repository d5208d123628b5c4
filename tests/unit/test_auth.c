/* test_auth.c - password hashes against vectors computed independently (Python hashlib, and
 * the worked examples in RabbitMQ's passwords guide), verification, and permission regexes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "broker/auth.h"

static const uint8_t salt_908d[AUTH_SALT_LEN] = { 0x90, 0x8d, 0xc6, 0x0a };
static const uint8_t salt_cad5[AUTH_SALT_LEN] = { 0xca, 0xd5, 0x08, 0x9b };

static void expect_hash(auth_hash_alg_t alg, const uint8_t *salt, const char *pw, const char *want) {
    char *got = auth_hash_password_with_salt(alg, salt, pw, strlen(pw));
    assert_non_null(got);
    assert_string_equal(got, want);
    assert_true(auth_check_password(alg, want, pw, strlen(pw)));
    free(got);
}

static void test_alg_names(void **state) {
    (void)state;
    assert_int_equal(auth_hash_alg_parse(NULL), AUTH_HASH_SHA256);
    assert_int_equal(auth_hash_alg_parse(""), AUTH_HASH_SHA256);
    assert_int_equal(auth_hash_alg_parse("rabbit_password_hashing_sha256"), AUTH_HASH_SHA256);
    assert_int_equal(auth_hash_alg_parse("rabbit_password_hashing_sha512"), AUTH_HASH_SHA512);
    assert_int_equal(auth_hash_alg_parse("rabbit_password_hashing_md5"), AUTH_HASH_MD5);
    assert_int_equal(auth_hash_alg_parse("sha256"), -1);
    assert_int_equal(auth_hash_alg_parse("rabbit_password_hashing_sha1"), -1);
    for (int a = AUTH_HASH_SHA256; a <= AUTH_HASH_MD5; a++)
        assert_int_equal(auth_hash_alg_parse(auth_hash_alg_name((auth_hash_alg_t)a)), a);
}

static void test_known_vectors(void **state) {
    (void)state;
    /* RabbitMQ passwords guide, "Computing Password Hash": salt 908DC60A, password test12. */
    expect_hash(AUTH_HASH_SHA256, salt_908d, "test12", "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR");
    /* Legacy MD5 example: salt CAD5089B, password simon. */
    expect_hash(AUTH_HASH_MD5, salt_cad5, "simon", "ytUIm8s3AnKsXQjptplKFytfVxI=");
    /* Computed with python3: base64(salt + hashlib.<alg>(salt + pw).digest()). */
    expect_hash(AUTH_HASH_SHA256, salt_908d, "guest", "kI3GCrswBLNZQzHJJ95QLoyfAVooYhnvf7jbqiW9BjOYUloe");
    expect_hash(AUTH_HASH_SHA256, salt_908d, "", "kI3GCrTX798KLXnBt/mFM97t8TbDJzaewEU/2YfqeB4xLGFr");
    expect_hash(AUTH_HASH_SHA256, salt_908d, "p\xc3\xa4ssw\xc3\xb6rd", "kI3GClsOFtopbKwdov4/ENvEWw/B0G8pjpMDaFMO74PDffqF");
    expect_hash(AUTH_HASH_SHA512, salt_908d, "guest",
                "kI3GCrf65LdSkFyP8BVa8fB/67dDZ7ljrRF4WEjLDwWuHFxFQjgE88vc4EqLc8+dW4j5onKsGl4Ty32Icokl1iJrRxk=");
    expect_hash(AUTH_HASH_SHA512, salt_908d, "",
                "kI3GCvyCec/Gr5k2Fifa4h+FjLjfMAg14SHWvrL/mOiLrbH3rIml5+S7/ZTirLd7W0PNHmq0AsTyhk6MZQjjTdFpFSA=");
    expect_hash(AUTH_HASH_MD5, salt_908d, "guest", "kI3GCsLphS59YDqYemSoxQGij64=");
    expect_hash(AUTH_HASH_MD5, salt_908d, "", "kI3GCla7xDeqFCEXCaArjRyXUa4=");
}

static void test_check_password(void **state) {
    (void)state;
    const char *h256 = "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR";   /* test12 */
    assert_true(auth_check_password(AUTH_HASH_SHA256, h256, "test12", 6));
    assert_false(auth_check_password(AUTH_HASH_SHA256, h256, "test13", 6));
    assert_false(auth_check_password(AUTH_HASH_SHA256, h256, "test1", 5));
    assert_false(auth_check_password(AUTH_HASH_SHA256, h256, "test12x", 7));
    assert_false(auth_check_password(AUTH_HASH_SHA256, h256, "", 0));
    /* Explicit length: an embedded NUL is part of the password. */
    assert_false(auth_check_password(AUTH_HASH_SHA256, h256, "test12\0", 7));
    /* Wrong algorithm for the stored hash: length mismatch, no match. */
    assert_false(auth_check_password(AUTH_HASH_SHA512, h256, "test12", 6));
    assert_false(auth_check_password(AUTH_HASH_MD5, h256, "test12", 6));
    /* Malformed hashes are rejected, never crash. */
    assert_false(auth_check_password(AUTH_HASH_SHA256, "", "test12", 6));
    assert_false(auth_check_password(AUTH_HASH_SHA256, "not base64 !!", "test12", 6));
    assert_false(auth_check_password(AUTH_HASH_SHA256, "kI3GCqW5JLMJa4iX1lo7X4D6", "test12", 6));
    assert_false(auth_check_password(AUTH_HASH_SHA256, "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"
                                     "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR", "test12", 6));
    assert_false(auth_check_password(AUTH_HASH_SHA256, NULL, "test12", 6));
    assert_false(auth_check_password((auth_hash_alg_t)7, h256, "test12", 6));
    assert_null(auth_hash_password_with_salt((auth_hash_alg_t)7, salt_908d, "x", 1));
}

static void test_random_salt(void **state) {
    (void)state;
    for (int a = AUTH_HASH_SHA256; a <= AUTH_HASH_MD5; a++) {
        char *h1 = auth_hash_password((auth_hash_alg_t)a, "s3cret", 6);
        char *h2 = auth_hash_password((auth_hash_alg_t)a, "s3cret", 6);
        assert_non_null(h1);
        assert_non_null(h2);
        assert_string_not_equal(h1, h2);    /* fresh salts (2^-32 chance of a false failure) */
        assert_true(auth_check_password((auth_hash_alg_t)a, h1, "s3cret", 6));
        assert_true(auth_check_password((auth_hash_alg_t)a, h2, "s3cret", 6));
        assert_false(auth_check_password((auth_hash_alg_t)a, h1, "s3creT", 6));
        free(h1);
        free(h2);
    }
    char *h = auth_hash_password(AUTH_HASH_SHA256, NULL, 0);   /* NULL with len 0 is "" */
    assert_non_null(h);
    assert_true(auth_check_password(AUTH_HASH_SHA256, h, "", 0));
    free(h);
}

static bool re_match(const char *pattern, const char *name) {
    char err[256];
    auth_regex_t *re = auth_regex_compile(pattern, err, sizeof err);
    assert_non_null(re);
    assert_string_equal(auth_regex_pattern(re), pattern);
    bool m = auth_regex_match(re, name, strlen(name));
    auth_regex_free(re);
    return m;
}

static void test_regex(void **state) {
    (void)state;
    assert_true(re_match(".*", "anything"));
    assert_true(re_match(".*", ""));
    assert_true(re_match(".*", "amq.gen-JzTY20BRgKO-HjmUJj0wLg"));
    /* Empty pattern: RabbitMQ rewrites it to ^$, so only an empty name could match. */
    assert_false(re_match("", "q"));
    assert_false(re_match("", "amq.default"));
    assert_true(re_match("", ""));
    /* Unanchored like re:run. */
    assert_true(re_match("^amq\\.gen", "amq.gen-abc"));
    assert_false(re_match("^amq\\.gen", "x.amq.gen"));
    assert_false(re_match("^amq\\.gen", "amqxgen"));
    assert_true(re_match("orders", "eu.orders.v1"));
    assert_true(re_match("^(orders|audit)$", "audit"));
    assert_false(re_match("^(orders|audit)$", "audits"));
    assert_true(re_match("^user-.*", "user-bob"));
    /* UTF-8 aware: '.' is one code point. */
    assert_true(re_match("^caf.$", "caf\xc3\xa9"));
    /* Invalid UTF-8 in a name fails to match instead of erroring. */
    assert_false(re_match("^abc$", "ab\xff"));
    assert_true(re_match("b", "\xff" "b"));
    /* Explicit length: bytes after len are not part of the name. */
    char err[256];
    auth_regex_t *re = auth_regex_compile("^ab$", err, sizeof err);
    assert_true(auth_regex_match(re, "abc", 2));
    assert_false(auth_regex_match(re, "abc", 3));
    assert_false(auth_regex_match(re, NULL, 3));
    auth_regex_free(re);
    assert_false(auth_regex_match(NULL, "x", 1));
    auth_regex_free(NULL);
}

static void test_regex_invalid(void **state) {
    (void)state;
    char err[256];
    assert_null(auth_regex_compile("(unclosed", err, sizeof err));
    assert_non_null(strstr(err, "invalid regular expression '(unclosed'"));
    assert_null(auth_regex_compile("[z-a]", err, sizeof err));
    assert_true(strlen(err) > 0);
    assert_null(auth_regex_compile("\xff", err, sizeof err));
    assert_null(auth_regex_compile("*", NULL, 0));   /* no error buffer: still safe */
    char tiny[8];
    assert_null(auth_regex_compile("(", tiny, sizeof tiny));
    assert_int_equal(strlen(tiny), 7);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alg_names),
        cmocka_unit_test(test_known_vectors),
        cmocka_unit_test(test_check_password),
        cmocka_unit_test(test_random_salt),
        cmocka_unit_test(test_regex),
        cmocka_unit_test(test_regex_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
