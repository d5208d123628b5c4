/* test_headers.c - headers exchange matching against RabbitMQ's rules: x-match modes, x- key
 * handling, void presence entries, Erlang-style value equality, missing headers, duplicate
 * keys, and the binding validator's messages. Tables are built by hand so the test does not
 * depend on the wire parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "broker/headers_match.h"

static amqp_bytes_t B(const char *s) { return (amqp_bytes_t){ (const uint8_t *)s, strlen(s) }; }
static amqp_value_t S(const char *s) { amqp_value_t v = { .type = 'S' }; v.v.str = B(s); return v; }
static amqp_value_t X(const char *s) { amqp_value_t v = { .type = 'x' }; v.v.str = B(s); return v; }
static amqp_value_t INT(char type, int64_t n) { amqp_value_t v = { .type = type }; v.v.i = n; return v; }
static amqp_value_t UINT(char type, uint64_t n) { amqp_value_t v = { .type = type }; v.v.u = n; return v; }
static amqp_value_t DBL(double d) { amqp_value_t v = { .type = 'd' }; v.v.d = d; return v; }
static amqp_value_t FLT(float f) { amqp_value_t v = { .type = 'f' }; v.v.f = f; return v; }
static amqp_value_t BOOL(bool b) { amqp_value_t v = { .type = 't' }; v.v.b = b; return v; }
static amqp_value_t VOID(void) { amqp_value_t v = { .type = 'V' }; return v; }
static amqp_value_t DEC(uint8_t scale, uint32_t val) {
    amqp_value_t v = { .type = 'D' }; v.v.dec.scale = scale; v.v.dec.value = val; return v;
}

/* A small fixed-capacity table for building test fixtures. */
typedef struct { amqp_field_t f[40]; amqp_table_t t; } tbl_t;

static amqp_table_t *tbl(tbl_t *s, int n, ...) {
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        s->f[i].key = B(va_arg(ap, const char *));
        s->f[i].value = va_arg(ap, amqp_value_t);
    }
    va_end(ap);
    s->t.fields = s->f;
    s->t.n = (size_t)n;
    return &s->t;
}

static void test_all_any(void **state) {
    (void)state;
    tbl_t a, h;
    /* all (default): every entry must match. */
    amqp_table_t *bind = tbl(&a, 2, "format", S("pdf"), "type", S("report"));
    assert_true(headers_match(bind, tbl(&h, 2, "type", S("report"), "format", S("pdf"))));
    assert_true(headers_match(bind, tbl(&h, 3, "type", S("report"), "extra", S("x"), "format", S("pdf"))));
    assert_false(headers_match(bind, tbl(&h, 1, "format", S("pdf"))));
    assert_false(headers_match(bind, tbl(&h, 2, "format", S("pdf"), "type", S("log"))));
    assert_false(headers_match(bind, NULL));
    /* explicit all */
    bind = tbl(&a, 3, "x-match", S("all"), "format", S("pdf"), "type", S("report"));
    assert_true(headers_match(bind, tbl(&h, 2, "format", S("pdf"), "type", S("report"))));
    assert_false(headers_match(bind, tbl(&h, 1, "type", S("report"))));
    /* any: one entry is enough */
    bind = tbl(&a, 3, "x-match", S("any"), "format", S("pdf"), "type", S("report"));
    assert_true(headers_match(bind, tbl(&h, 1, "type", S("report"))));
    assert_true(headers_match(bind, tbl(&h, 2, "format", S("pdf"), "type", S("zzz"))));
    assert_false(headers_match(bind, tbl(&h, 2, "format", S("zip"), "type", S("zzz"))));
    assert_false(headers_match(bind, tbl(&h, 0)));
    assert_false(headers_match(bind, NULL));
}

static void test_empty_and_no_headers(void **state) {
    (void)state;
    tbl_t a, h;
    /* all with nothing to check matches everything, even messages without headers. */
    assert_true(headers_match(tbl(&a, 0), NULL));
    assert_true(headers_match(NULL, NULL));
    assert_true(headers_match(tbl(&a, 0), tbl(&h, 1, "k", S("v"))));
    assert_true(headers_match(tbl(&a, 1, "x-match", S("all")), NULL));
    assert_true(headers_match(tbl(&a, 2, "x-match", S("all"), "x-foo", S("bar")), NULL));
    /* any with nothing to check matches nothing. */
    assert_false(headers_match(tbl(&a, 1, "x-match", S("any")), tbl(&h, 1, "k", S("v"))));
    assert_false(headers_match(tbl(&a, 1, "x-match", S("any")), NULL));
    assert_false(headers_match(tbl(&a, 2, "x-match", S("any"), "x-k", S("v")), tbl(&h, 1, "x-k", S("v"))));
    /* all-with-x with only x-match is vacuous too. */
    assert_true(headers_match(tbl(&a, 1, "x-match", S("all-with-x")), NULL));
}

static void test_x_keys(void **state) {
    (void)state;
    tbl_t a, h;
    /* Plain all/any ignore x- binding keys. */
    amqp_table_t *bind = tbl(&a, 3, "x-match", S("all"), "x-tenant", S("t1"), "k", S("v"));
    assert_true(headers_match(bind, tbl(&h, 1, "k", S("v"))));
    assert_true(headers_match(bind, tbl(&h, 2, "k", S("v"), "x-tenant", S("other"))));
    bind = tbl(&a, 2, "x-match", S("any"), "x-tenant", S("t1"));
    assert_false(headers_match(bind, tbl(&h, 1, "x-tenant", S("t1"))));
    /* -with-x modes include them. */
    bind = tbl(&a, 3, "x-match", S("all-with-x"), "x-tenant", S("t1"), "k", S("v"));
    assert_false(headers_match(bind, tbl(&h, 1, "k", S("v"))));
    assert_true(headers_match(bind, tbl(&h, 2, "x-tenant", S("t1"), "k", S("v"))));
    assert_false(headers_match(bind, tbl(&h, 2, "x-tenant", S("t2"), "k", S("v"))));
    assert_false(headers_match(bind, NULL));
    bind = tbl(&a, 3, "x-match", S("any-with-x"), "x-tenant", S("t1"), "k", S("v"));
    assert_true(headers_match(bind, tbl(&h, 1, "x-tenant", S("t1"))));
    assert_false(headers_match(bind, tbl(&h, 1, "x-tenant", S("t2"))));
    /* x-match itself is never compared, even in -with-x modes. */
    bind = tbl(&a, 2, "x-match", S("all-with-x"), "k", S("v"));
    assert_true(headers_match(bind, tbl(&h, 2, "k", S("v"), "x-match", S("any"))));
    /* "x" alone and "x_" are not x- prefixed. */
    bind = tbl(&a, 2, "x", S("1"), "x_y", S("2"));
    assert_false(headers_match(bind, tbl(&h, 1, "x", S("1"))));
    assert_true(headers_match(bind, tbl(&h, 2, "x_y", S("2"), "x", S("1"))));
}

static void test_void_presence(void **state) {
    (void)state;
    tbl_t a, h;
    amqp_table_t *bind = tbl(&a, 2, "flag", VOID(), "k", S("v"));
    assert_true(headers_match(bind, tbl(&h, 2, "flag", INT('l', 7), "k", S("v"))));
    assert_true(headers_match(bind, tbl(&h, 2, "flag", VOID(), "k", S("v"))));
    assert_false(headers_match(bind, tbl(&h, 1, "k", S("v"))));
    bind = tbl(&a, 2, "x-match", S("any"), "flag", VOID());
    assert_true(headers_match(bind, tbl(&h, 1, "flag", S(""))));
    assert_false(headers_match(bind, tbl(&h, 1, "flagg", S(""))));
    /* A void header value only equals a void binding value. */
    bind = tbl(&a, 1, "k", S(""));
    assert_false(headers_match(bind, tbl(&h, 1, "k", VOID())));
}

static void test_value_equality(void **state) {
    (void)state;
    tbl_t a, h;
    /* Integers of any width compare by value, as Erlang's == does. */
    amqp_table_t *bind = tbl(&a, 1, "n", INT('I', 42));
    assert_true(headers_match(bind, tbl(&h, 1, "n", INT('l', 42))));
    assert_true(headers_match(bind, tbl(&h, 1, "n", UINT('B', 42))));
    assert_true(headers_match(bind, tbl(&h, 1, "n", UINT('T', 42))));
    assert_true(headers_match(bind, tbl(&h, 1, "n", DBL(42.0))));
    assert_true(headers_match(bind, tbl(&h, 1, "n", FLT(42.0f))));
    assert_false(headers_match(bind, tbl(&h, 1, "n", DBL(42.5))));
    assert_false(headers_match(bind, tbl(&h, 1, "n", INT('l', -42))));
    assert_false(headers_match(bind, tbl(&h, 1, "n", S("42"))));
    bind = tbl(&a, 1, "n", INT('l', -1));
    assert_false(headers_match(bind, tbl(&h, 1, "n", UINT('T', UINT64_MAX))));
    assert_true(headers_match(bind, tbl(&h, 1, "n", DBL(-1.0))));
    bind = tbl(&a, 1, "n", UINT('T', UINT64_MAX));
    assert_true(headers_match(bind, tbl(&h, 1, "n", UINT('T', UINT64_MAX))));
    bind = tbl(&a, 1, "n", INT('l', 0));
    assert_true(headers_match(bind, tbl(&h, 1, "n", DBL(-0.0))));
    /* Integer/float comparison is exact: 2^53 + 1 is not 2^53. */
    bind = tbl(&a, 1, "n", INT('l', 9007199254740993LL));
    assert_false(headers_match(bind, tbl(&h, 1, "n", DBL(9007199254740992.0))));
    bind = tbl(&a, 1, "n", DBL(0.5));
    assert_true(headers_match(bind, tbl(&h, 1, "n", FLT(0.5f))));
    /* longstr and byte array are both binaries. */
    bind = tbl(&a, 1, "s", S("abc"));
    assert_true(headers_match(bind, tbl(&h, 1, "s", X("abc"))));
    assert_false(headers_match(bind, tbl(&h, 1, "s", S("abd"))));
    assert_false(headers_match(bind, tbl(&h, 1, "s", S("ab"))));
    /* booleans and decimals */
    bind = tbl(&a, 1, "b", BOOL(true));
    assert_true(headers_match(bind, tbl(&h, 1, "b", BOOL(true))));
    assert_false(headers_match(bind, tbl(&h, 1, "b", BOOL(false))));
    assert_false(headers_match(bind, tbl(&h, 1, "b", INT('l', 1))));
    bind = tbl(&a, 1, "d", DEC(2, 150));
    assert_true(headers_match(bind, tbl(&h, 1, "d", DEC(2, 150))));
    assert_false(headers_match(bind, tbl(&h, 1, "d", DEC(1, 15))));
}

static void test_nested_values(void **state) {
    (void)state;
    tbl_t a, h, n1, n2;
    amqp_value_t items1[2] = { S("a"), INT('l', 1) }, items2[2] = { S("a"), INT('I', 1) };
    amqp_value_t items3[2] = { X("a"), INT('l', 1) };
    amqp_value_t arr1 = { .type = 'A' }, arr2 = { .type = 'A' }, arr3 = { .type = 'A' };
    arr1.v.array = (amqp_array_t){ items1, 2 };
    arr2.v.array = (amqp_array_t){ items2, 2 };
    arr3.v.array = (amqp_array_t){ items3, 2 };
    amqp_value_t arr1b = arr1;
    /* Arrays: same types and values in order. Element types are part of the Erlang term. */
    amqp_table_t *bind = tbl(&a, 1, "arr", arr1);
    assert_true(headers_match(bind, tbl(&h, 1, "arr", arr1b)));
    assert_false(headers_match(bind, tbl(&h, 1, "arr", arr2)));
    assert_false(headers_match(bind, tbl(&h, 1, "arr", arr3)));
    /* Nested tables compare in field order. */
    amqp_value_t t1 = { .type = 'F' }, t2 = { .type = 'F' }, t3 = { .type = 'F' };
    t1.v.table = *tbl(&n1, 2, "a", S("1"), "b", S("2"));
    t2.v.table = *tbl(&n2, 2, "b", S("2"), "a", S("1"));
    t3.v.table = t1.v.table;
    bind = tbl(&a, 1, "t", t1);
    assert_true(headers_match(bind, tbl(&h, 1, "t", t3)));
    assert_false(headers_match(bind, tbl(&h, 1, "t", t2)));
    /* Empty table and empty array are both the empty list. */
    amqp_value_t et = { .type = 'F' }, ea = { .type = 'A' };
    bind = tbl(&a, 1, "e", et);
    assert_true(headers_match(bind, tbl(&h, 1, "e", ea)));
    assert_false(headers_match(bind, tbl(&h, 1, "e", arr1)));
}

static void test_duplicates_and_size(void **state) {
    (void)state;
    tbl_t a, h;
    /* Binding entry a=1 twice against one header: the merge consumes the header once. */
    amqp_table_t *bind = tbl(&a, 2, "a", INT('l', 1), "a", INT('l', 1));
    assert_false(headers_match(bind, tbl(&h, 1, "a", INT('l', 1))));
    assert_true(headers_match(bind, tbl(&h, 2, "a", INT('l', 1), "a", INT('l', 1))));
    /* Duplicate headers: the first one (in message order) is compared. */
    bind = tbl(&a, 1, "a", INT('l', 1));
    assert_false(headers_match(bind, tbl(&h, 2, "a", INT('l', 2), "a", INT('l', 1))));
    assert_true(headers_match(bind, tbl(&h, 2, "a", INT('l', 1), "a", INT('l', 2))));
    /* Tables larger than the on-stack sort buffers. */
    static char keys[40][16];
    tbl_t big_b, big_h;
    for (int i = 0; i < 40; i++) {
        snprintf(keys[i], sizeof keys[i], "k%02d", i);
        big_b.f[i].key = B(keys[i]);
        big_b.f[i].value = INT('l', i);
        big_h.f[39 - i].key = B(keys[i]);
        big_h.f[39 - i].value = INT('I', i);
    }
    big_b.t = (amqp_table_t){ big_b.f, 40 };
    big_h.t = (amqp_table_t){ big_h.f, 40 };
    assert_true(headers_match(&big_b.t, &big_h.t));
    big_h.f[7].value = INT('I', 1000);
    assert_false(headers_match(&big_b.t, &big_h.t));
}

static void test_invalid_xmatch_legacy(void **state) {
    (void)state;
    tbl_t a, h;
    /* Invalid x-match values already stored behave as "all". */
    amqp_table_t *bind = tbl(&a, 3, "x-match", S("foo"), "k", S("v"), "j", S("w"));
    assert_false(headers_match(bind, tbl(&h, 1, "k", S("v"))));
    assert_true(headers_match(bind, tbl(&h, 2, "k", S("v"), "j", S("w"))));
    bind = tbl(&a, 2, "x-match", INT('l', 1), "k", S("v"));
    assert_true(headers_match(bind, tbl(&h, 1, "k", S("v"))));
}

static void test_validate(void **state) {
    (void)state;
    tbl_t a;
    char err[256];
    assert_int_equal(headers_validate_binding(NULL, err, sizeof err), 0);
    assert_int_equal(headers_validate_binding(tbl(&a, 0), err, sizeof err), 0);
    const char *ok[] = { "all", "any", "all-with-x", "any-with-x" };
    for (int i = 0; i < 4; i++)
        assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", S(ok[i])), err, sizeof err), 0);
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", S("foo")), err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field value <<\"foo\">>; expected all, any, all-with-x, or any-with-x");
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", S("ALL")), err, sizeof err), -1);
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", INT('l', 5)), err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field type long (value 5); expected longstr");
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", X("\x01\x02")), err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field type binary (value <<1,2>>); expected longstr");
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", DBL(1.5)), err, sizeof err), -1);
    assert_string_equal(err, "Invalid x-match field type double (value 1.5); expected longstr");
    /* Truncation is safe, and a NULL buffer is allowed. */
    char tiny[10];
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", S("foo")), tiny, sizeof tiny), -1);
    assert_int_equal(strlen(tiny), 9);
    assert_int_equal(headers_validate_binding(tbl(&a, 1, "x-match", S("foo")), NULL, 0), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_any),
        cmocka_unit_test(test_empty_and_no_headers),
        cmocka_unit_test(test_x_keys),
        cmocka_unit_test(test_void_presence),
        cmocka_unit_test(test_value_equality),
        cmocka_unit_test(test_nested_values),
        cmocka_unit_test(test_duplicates_and_size),
        cmocka_unit_test(test_invalid_xmatch_legacy),
        cmocka_unit_test(test_validate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
