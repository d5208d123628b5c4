/* headers_match.c - headers exchange matching, as rabbit_exchange_type_headers (3.10+).
 *
 * RabbitMQ sorts both the binding arguments and the message headers by key (a stable sort, so
 * duplicate keys keep their order) and then merges the two lists, tracking two flags: "all
 * matched so far" and "some entry matched". This file reproduces that merge exactly, so
 * corner cases (duplicate keys, messages without headers) behave like RabbitMQ:
 *
 *   - "x-match" itself never takes part; other "x-" keys take part only in the -with-x modes.
 *   - A binding entry of type void ('V') matches when the header key is present at all.
 *   - Otherwise the values are compared like Erlang's ==, which is what RabbitMQ does: the
 *     wire type is NOT compared at the top level, integers of any width compare numerically,
 *     integers and floats compare by value (1 == 1.0), and longstr equals a byte array with
 *     the same bytes. Inside nested tables and arrays the element types are compared exactly
 *     (they are part of the Erlang tuples there) while values still compare numerically.
 *   - all: true when every considered entry matched; no considered entries -> true.
 *     any: true when at least one matched; no considered entries -> false.
 *   - A message without headers behaves as an empty header table.
 *   - An x-match that is not a known longstr means "all" (RabbitMQ's legacy behaviour for
 *     bindings created before validation existed); headers_validate_binding rejects them for
 *     new bindings.
 *
 * Data flow: the caller passes parsed tables; we sort arrays of field pointers (on the stack
 * for typical sizes) and merge. Nothing is retained between calls. */
#include "broker/headers_match.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum { XM_ALL, XM_ANY, XM_ALL_WITH_X, XM_ANY_WITH_X, XM_INVALID } xmatch_t;

#define HM_STACK_FIELDS 32   /* tables up to this size are sorted without allocating */

/* ---- keys ------------------------------------------------------------------------------ */

static bool key_is(amqp_bytes_t k, const char *s) {
    size_t n = strlen(s);
    return k.len == n && (n == 0 || memcmp(k.ptr, s, n) == 0);
}

static bool key_has_x_prefix(amqp_bytes_t k) {
    return k.len >= 2 && k.ptr[0] == 'x' && k.ptr[1] == '-';
}

/* Erlang binary ordering: bytewise, a proper prefix sorts first. */
static int key_cmp(amqp_bytes_t a, amqp_bytes_t b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c) return c;
    return (a.len > b.len) - (a.len < b.len);
}

/* Orders field pointers by key; the pointer (= original index, since fields are one array)
 * breaks ties, which makes qsort behave like the stable lists:keysort RabbitMQ uses. */
static int field_ptr_cmp(const void *pa, const void *pb) {
    const amqp_field_t *a = *(const amqp_field_t *const *)pa;
    const amqp_field_t *b = *(const amqp_field_t *const *)pb;
    int c = key_cmp(a->key, b->key);
    if (c) return c;
    return (a > b) - (a < b);
}

static const amqp_value_t *table_lookup(const amqp_table_t *t, const char *key) {
    if (!t) return NULL;
    for (size_t i = 0; i < t->n; i++)
        if (key_is(t->fields[i].key, key)) return &t->fields[i].value;
    return NULL;
}

/* ---- Erlang-style value equality -------------------------------------------------------- */

/* A number as Erlang sees it: an exact integer (sign + magnitude covers int64 and uint64) or a
 * float. */
typedef struct { bool is_float, neg; uint64_t mag; double d; } erl_num_t;

static bool value_as_number(const amqp_value_t *v, erl_num_t *out) {
    memset(out, 0, sizeof *out);
    switch (v->type) {
    case 'b': case 's': case 'I': case 'l': case 'L':
        out->neg = v->v.i < 0;
        out->mag = out->neg ? (uint64_t)0 - (uint64_t)v->v.i : (uint64_t)v->v.i;
        return true;
    case 'B': case 'u': case 'i': case 'T':
        out->mag = v->v.u;
        return true;
    case 'f': out->is_float = true; out->d = (double)v->v.f; return true;
    case 'd': out->is_float = true; out->d = v->v.d; return true;
    default: return false;
    }
}

/* Exact comparison of an integer with a double (no rounding of the integer). */
static bool int_equals_double(bool neg, uint64_t mag, double d) {
    if (!isfinite(d) || d != floor(d)) return false;
    if ((d < 0) != neg && !(d == 0 && mag == 0)) return false;
    double ad = fabs(d);
    if (ad >= 18446744073709551616.0) return false;     /* 2^64: beyond any wire integer */
    return (uint64_t)ad == mag;
}

static bool numbers_equal(const erl_num_t *a, const erl_num_t *b) {
    if (a->is_float && b->is_float) return a->d == b->d;
    if (a->is_float) return int_equals_double(b->neg, b->mag, a->d);
    if (b->is_float) return int_equals_double(a->neg, a->mag, b->d);
    if (a->mag == 0 && b->mag == 0) return true;
    return a->neg == b->neg && a->mag == b->mag;
}

static bool is_binary_type(char t) { return t == 'S' || t == 'x'; }

static bool erl_equal(const amqp_value_t *a, const amqp_value_t *b);

static bool tables_erl_equal(const amqp_table_t *a, const amqp_table_t *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        const amqp_field_t *fa = &a->fields[i], *fb = &b->fields[i];
        if (key_cmp(fa->key, fb->key) != 0 || fa->value.type != fb->value.type) return false;
        if (!erl_equal(&fa->value, &fb->value)) return false;
    }
    return true;
}

static bool arrays_erl_equal(const amqp_array_t *a, const amqp_array_t *b) {
    if (a->n != b->n) return false;
    for (size_t i = 0; i < a->n; i++) {
        if (a->items[i].type != b->items[i].type) return false;
        if (!erl_equal(&a->items[i], &b->items[i])) return false;
    }
    return true;
}

/* Compares two values the way Erlang's == compares their decoded terms. */
static bool erl_equal(const amqp_value_t *a, const amqp_value_t *b) {
    erl_num_t na, nb;
    bool a_num = value_as_number(a, &na), b_num = value_as_number(b, &nb);
    if (a_num || b_num) return a_num && b_num && numbers_equal(&na, &nb);
    if (is_binary_type(a->type) && is_binary_type(b->type))
        return a->v.str.len == b->v.str.len &&
               (a->v.str.len == 0 || memcmp(a->v.str.ptr, b->v.str.ptr, a->v.str.len) == 0);
    /* Tables and arrays are both Erlang lists; two empty lists are equal whatever they were. */
    if ((a->type == 'F' || a->type == 'A') && (b->type == 'F' || b->type == 'A')) {
        size_t an = a->type == 'F' ? a->v.table.n : a->v.array.n;
        size_t bn = b->type == 'F' ? b->v.table.n : b->v.array.n;
        if (an == 0 && bn == 0) return true;
        if (a->type != b->type) return false;
        return a->type == 'F' ? tables_erl_equal(&a->v.table, &b->v.table)
                              : arrays_erl_equal(&a->v.array, &b->v.array);
    }
    if (a->type != b->type) return false;
    switch (a->type) {
    case 't': return a->v.b == b->v.b;
    case 'D': return a->v.dec.scale == b->v.dec.scale && a->v.dec.value == b->v.dec.value;
    case 'V': return true;
    default: return false;      /* unknown type octets never match */
    }
}

/* ---- x-match --------------------------------------------------------------------------- */

static xmatch_t xmatch_parse(const amqp_value_t *v) {
    if (!v) return XM_ALL;
    if (v->type != 'S') return XM_INVALID;
    amqp_bytes_t s = v->v.str;
    if (key_is(s, "all")) return XM_ALL;
    if (key_is(s, "any")) return XM_ANY;
    if (key_is(s, "all-with-x")) return XM_ALL_WITH_X;
    if (key_is(s, "any-with-x")) return XM_ANY_WITH_X;
    return XM_INVALID;
}

/* ---- matching -------------------------------------------------------------------------- */

/* Fills out[] with pointers to t's fields sorted by key. */
static void sort_fields(const amqp_table_t *t, const amqp_field_t **out) {
    for (size_t i = 0; i < t->n; i++) out[i] = &t->fields[i];
    if (t->n > 1) qsort(out, t->n, sizeof *out, field_ptr_cmp);
}

/* The merge over sorted pattern p[0..np) and data d[0..nd). */
static bool merge_match(const amqp_field_t **p, size_t np, const amqp_field_t **d, size_t nd,
                        xmatch_t kind) {
    bool want_all = kind == XM_ALL || kind == XM_ALL_WITH_X;
    bool with_x = kind == XM_ALL_WITH_X || kind == XM_ANY_WITH_X;
    bool all = true, any = false;
    size_t i = 0, j = 0;
    for (;;) {
        if (want_all && !all) return false;
        if (!want_all && any) return true;
        if (i == np) return want_all ? all : any;
        const amqp_field_t *pf = p[i];
        if (key_is(pf->key, "x-match") || (!with_x && key_has_x_prefix(pf->key))) {
            i++;
            continue;
        }
        if (j == nd) return want_all ? false : any;   /* entries left but no headers */
        int c = key_cmp(pf->key, d[j]->key);
        if (c > 0) { j++; continue; }                 /* header not in the binding */
        if (c < 0) { all = false; i++; continue; }    /* binding key not in the headers */
        if (pf->value.type == 'V' || erl_equal(&pf->value, &d[j]->value)) any = true;
        else all = false;
        i++;
        j++;
    }
}

bool headers_match(const amqp_table_t *binding_args, const amqp_table_t *headers) {
    static const amqp_table_t empty = { NULL, 0 };
    if (!binding_args) binding_args = &empty;
    if (!headers) headers = &empty;
    xmatch_t kind = xmatch_parse(table_lookup(binding_args, "x-match"));
    if (kind == XM_INVALID) kind = XM_ALL;

    const amqp_field_t *p_stack[HM_STACK_FIELDS], *d_stack[HM_STACK_FIELDS];
    const amqp_field_t **p = p_stack, **d = d_stack;
    if (binding_args->n > HM_STACK_FIELDS) p = malloc(binding_args->n * sizeof *p);
    if (headers->n > HM_STACK_FIELDS) d = malloc(headers->n * sizeof *d);
    bool ok = false;
    if (p && d) {
        sort_fields(binding_args, p);
        sort_fields(headers, d);
        ok = merge_match(p, binding_args->n, d, headers->n, kind);
    }
    /* On allocation failure we route nowhere rather than guess. */
    if (p != p_stack) free(p);
    if (d != d_stack) free(d);
    return ok;
}

/* ---- validation and Erlang-style formatting for error messages ------------------------- */

typedef struct { char *buf; size_t cap, len; } fmt_t;

static void fmt_put(fmt_t *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fmt_put(fmt_t *f, const char *fmt, ...) {
    if (f->len + 1 >= f->cap) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(f->buf + f->len, f->cap - f->len, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    f->len += (size_t)n < f->cap - f->len ? (size_t)n : f->cap - f->len - 1;
}

/* RabbitMQ's name for a field type, as printed in its error messages. */
static const char *type_name(char t) {
    switch (t) {
    case 't': return "bool";        case 'b': return "byte";
    case 'B': return "unsignedbyte"; case 's': return "short";
    case 'u': return "unsignedshort"; case 'I': return "signedint";
    case 'i': return "unsignedint"; case 'l': return "long";
    case 'f': return "float";       case 'd': return "double";
    case 'D': return "decimal";     case 'S': return "longstr";
    case 'x': return "binary";      case 'A': return "array";
    case 'T': return "timestamp";   case 'F': return "table";
    case 'V': return "void";        default: return "unknown";
    }
}

/* Erlang ~tp of a binary: <<"text">> when printable ASCII, else <<1,2,3>>. */
static void fmt_binary(fmt_t *f, amqp_bytes_t s) {
    bool printable = true;
    for (size_t i = 0; i < s.len; i++)
        if (s.ptr[i] < 0x20 || s.ptr[i] > 0x7e) { printable = false; break; }
    fmt_put(f, "<<");
    if (printable) {
        fmt_put(f, "\"");
        for (size_t i = 0; i < s.len; i++) {
            char c = (char)s.ptr[i];
            fmt_put(f, (c == '"' || c == '\\') ? "\\%c" : "%c", c);
        }
        fmt_put(f, "\"");
    } else {
        for (size_t i = 0; i < s.len; i++) fmt_put(f, i ? ",%u" : "%u", s.ptr[i]);
    }
    fmt_put(f, ">>");
}

/* Shortest representation that reads back to d, with a ".0" like Erlang floats. */
static void fmt_double(fmt_t *f, double d) {
    char tmp[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d) break;
    }
    fmt_put(f, "%s%s", tmp, strpbrk(tmp, ".eni") ? "" : ".0");
}

static void fmt_value(fmt_t *f, const amqp_value_t *v, int depth) {
    if (depth > 8) { fmt_put(f, "..."); return; }
    switch (v->type) {
    case 't': fmt_put(f, "%s", v->v.b ? "true" : "false"); break;
    case 'b': case 's': case 'I': case 'l': case 'L': fmt_put(f, "%lld", (long long)v->v.i); break;
    case 'B': case 'u': case 'i': case 'T': fmt_put(f, "%llu", (unsigned long long)v->v.u); break;
    case 'f': fmt_double(f, (double)v->v.f); break;
    case 'd': fmt_double(f, v->v.d); break;
    case 'D': fmt_put(f, "{%u,%u}", v->v.dec.scale, (unsigned)v->v.dec.value); break;
    case 'S': case 'x': fmt_binary(f, v->v.str); break;
    case 'V': fmt_put(f, "undefined"); break;
    case 'A':
        fmt_put(f, "[");
        for (size_t i = 0; i < v->v.array.n; i++) {
            fmt_put(f, "%s{%s,", i ? "," : "", type_name(v->v.array.items[i].type));
            fmt_value(f, &v->v.array.items[i], depth + 1);
            fmt_put(f, "}");
        }
        fmt_put(f, "]");
        break;
    case 'F':
        fmt_put(f, "[");
        for (size_t i = 0; i < v->v.table.n; i++) {
            const amqp_field_t *fl = &v->v.table.fields[i];
            fmt_put(f, "%s{", i ? "," : "");
            fmt_binary(f, fl->key);
            fmt_put(f, ",%s,", type_name(fl->value.type));
            fmt_value(f, &fl->value, depth + 1);
            fmt_put(f, "}");
        }
        fmt_put(f, "]");
        break;
    default: fmt_put(f, "?"); break;
    }
}

int headers_validate_binding(const amqp_table_t *binding_args, char *err, size_t errlen) {
    const amqp_value_t *xm = table_lookup(binding_args, "x-match");
    if (xmatch_parse(xm) != XM_INVALID) return 0;
    if (err && errlen) {
        fmt_t f = { err, errlen, 0 };
        err[0] = '\0';
        if (xm->type == 'S') {
            fmt_put(&f, "Invalid x-match field value ");
            fmt_value(&f, xm, 0);
            fmt_put(&f, "; expected all, any, all-with-x, or any-with-x");
        } else {
            fmt_put(&f, "Invalid x-match field type %s (value ", type_name(xm->type));
            fmt_value(&f, xm, 0);
            fmt_put(&f, "); expected longstr");
        }
    }
    return -1;
}
