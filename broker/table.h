/* table.h - byte strings, the growable output buffer and AMQP field tables.
 *
 * These types live in broker/ because the protocol-independent core carries queue, exchange and
 * binding arguments and message headers as field tables, as RabbitMQ does. Nothing here knows
 * about frames or methods; amqp091/codec.h builds on it.
 *
 * Ownership rules:
 *   - amqp_bytes_t is always borrowed: it points into a frame buffer, a parsed table's source
 *     bytes or a static string, and is never freed through this API.
 *   - amqp_buf_t owns its data; release it with amqp_buf_free().
 *   - A parsed amqp_table_t owns only its field/item arrays (malloc'd); every string in it still
 *     points into the raw bytes it was parsed from, which must outlive the table.
 *
 * Field table wire types follow RabbitMQ (not the original 0-9-1 spec's list):
 *   t bool  b int8  B uint8  s int16  u uint16  I int32  i uint32  l int64  f float  d double
 *   D decimal (scale u8 + value u32)  S longstr  x byte array  A array  T timestamp (u64)
 *   F nested table  V void.  All multi-byte integers are big-endian. */
#ifndef WARREN_TABLE_H
#define WARREN_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Returned (negated) by the parsers below; equal to AMQP_SYNTAX_ERROR in amqp091/codec.h. */
enum { AMQP_TABLE_SYNTAX_ERROR = 502 };
/* Nested tables/arrays deeper than this are rejected, so hostile input cannot exhaust the stack. */
#define AMQP_TABLE_MAX_DEPTH 64

/* ---- Byte strings ------------------------------------------------------------------------- */

/* Borrowed byte string: points into a frame buffer or a static; never owned. */
typedef struct { const uint8_t *ptr; size_t len; } amqp_bytes_t;
#define AMQP_BYTES_CSTR(s) ((amqp_bytes_t){(const uint8_t *)(s), strlen(s)})
#define AMQP_BYTES_EMPTY ((amqp_bytes_t){NULL, 0})
bool amqp_bytes_eq(amqp_bytes_t a, amqp_bytes_t b);
bool amqp_bytes_eq_cstr(amqp_bytes_t a, const char *s);

/* ---- Growable output buffer --------------------------------------------------------------- */

/* Growable output buffer; all encoders append to one. A zeroed struct is an empty buffer. */
typedef struct { uint8_t *data; size_t len, cap; } amqp_buf_t;
void amqp_buf_reserve(amqp_buf_t *b, size_t extra);   /* aborts on OOM */
void amqp_buf_append(amqp_buf_t *b, const void *p, size_t n);
void amqp_buf_put_u8(amqp_buf_t *b, uint8_t v);
void amqp_buf_put_u16(amqp_buf_t *b, uint16_t v);     /* big-endian */
void amqp_buf_put_u32(amqp_buf_t *b, uint32_t v);     /* big-endian */
void amqp_buf_put_u64(amqp_buf_t *b, uint64_t v);     /* big-endian */
void amqp_buf_put_shortstr(amqp_buf_t *b, amqp_bytes_t s);   /* u8 length + bytes; truncates to 255 */
void amqp_buf_put_longstr(amqp_buf_t *b, amqp_bytes_t s);    /* u32 length + bytes */
/* Overwrites 4 bytes at pos (already written) with v, big-endian: for back-patching lengths. */
void amqp_buf_patch_u32(amqp_buf_t *b, size_t pos, uint32_t v);
void amqp_buf_free(amqp_buf_t *b);

/* Big-endian readers for callers that already checked the bounds. */
static inline uint16_t amqp_get_u16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t amqp_get_u32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t amqp_get_u64(const uint8_t *p) {
  return ((uint64_t)amqp_get_u32(p) << 32) | amqp_get_u32(p + 4);
}

/* Bounds-checked cursor over input bytes. A read past the end sets `bad`, consumes nothing and
 * yields zero/empty, so a decoder can read a whole structure and check `bad` once at the end. */
typedef struct { const uint8_t *p; size_t left; bool bad; } amqp_reader_t;
static inline amqp_reader_t amqp_reader(const uint8_t *p, size_t len) {
  return (amqp_reader_t){p, len, false};
}
/* Returns a pointer to the next n bytes and skips them, or NULL (and sets bad) if fewer remain. */
static inline const uint8_t *amqp_read_raw(amqp_reader_t *r, size_t n) {
  if (r->bad || r->left < n) { r->bad = true; return NULL; }
  const uint8_t *p = r->p;
  r->p += n; r->left -= n;
  return p;
}
static inline uint8_t amqp_read_u8(amqp_reader_t *r) { const uint8_t *p = amqp_read_raw(r, 1); return p ? p[0] : 0; }
static inline uint16_t amqp_read_u16(amqp_reader_t *r) { const uint8_t *p = amqp_read_raw(r, 2); return p ? amqp_get_u16(p) : 0; }
static inline uint32_t amqp_read_u32(amqp_reader_t *r) { const uint8_t *p = amqp_read_raw(r, 4); return p ? amqp_get_u32(p) : 0; }
static inline uint64_t amqp_read_u64(amqp_reader_t *r) { const uint8_t *p = amqp_read_raw(r, 8); return p ? amqp_get_u64(p) : 0; }
static inline amqp_bytes_t amqp_read_bytes(amqp_reader_t *r, size_t n) {
  const uint8_t *p = amqp_read_raw(r, n);
  return p ? (amqp_bytes_t){p, n} : AMQP_BYTES_EMPTY;
}
static inline amqp_bytes_t amqp_read_shortstr(amqp_reader_t *r) { size_t n = amqp_read_u8(r); return amqp_read_bytes(r, n); }
static inline amqp_bytes_t amqp_read_longstr(amqp_reader_t *r) { size_t n = amqp_read_u32(r); return amqp_read_bytes(r, n); }

/* ---- Field tables, parsed form ------------------------------------------------------------ */

/* Strings point into the source buffer (zero-copy); arrays/tables are malloc'd and released by
 * amqp_table_free / amqp_value_free. */
typedef struct amqp_value amqp_value_t;
typedef struct amqp_field amqp_field_t;
typedef struct { amqp_field_t *fields; size_t n; } amqp_table_t;
typedef struct { amqp_value_t *items; size_t n; } amqp_array_t;
struct amqp_value {
  char type;   /* the wire type octet: 't','b','B','s','u','I','i','l','f','d','D','S','x','A','T','F','V' */
  union {
    bool b;                                   /* t */
    int64_t i;                                /* b s I l */
    uint64_t u;                               /* B u i T */
    float f;                                  /* f */
    double d;                                 /* d */
    struct { uint8_t scale; uint32_t value; } dec;   /* D */
    amqp_bytes_t str;                         /* S x */
    amqp_array_t array;                       /* A */
    amqp_table_t table;                       /* F */
  } v;
};
struct amqp_field { amqp_bytes_t key; amqp_value_t value; };

/* Parses table content bytes (no length prefix). Returns 0 or -AMQP_TABLE_SYNTAX_ERROR (502).
 * On error *out is left empty (nothing to free). Nesting is limited to AMQP_TABLE_MAX_DEPTH. */
int amqp_table_parse(amqp_bytes_t raw, amqp_table_t *out);
/* Checks that raw is well-formed table content without allocating. Returns 0 or -502. */
int amqp_table_validate(amqp_bytes_t raw);
void amqp_table_free(amqp_table_t *t);
void amqp_value_free(amqp_value_t *v);
/* First field named key, or NULL. */
const amqp_value_t *amqp_table_get(const amqp_table_t *t, const char *key);
/* Numeric value of any integer type (b B s u I i l T) -> true and *out; else false
 * (also false for a T above INT64_MAX). */
bool amqp_value_int(const amqp_value_t *v, int64_t *out);
/* Semantic equality as RabbitMQ compares arguments (same type and value; tables compared as key
 * sets, i.e. field order does not matter; arrays in order; floats compared bit-for-bit). */
bool amqp_value_equal(const amqp_value_t *a, const amqp_value_t *b);
bool amqp_table_equal(const amqp_table_t *a, const amqp_table_t *b);

/* ---- Field tables, encoding --------------------------------------------------------------- */

/* Writes a table's u32 length prefix + content, byte-exact for a parsed table (except that a bool
 * octet other than 0/1, which RabbitMQ accepts as true, is written back as 1). */
void amqp_table_encode(amqp_buf_t *out, const amqp_table_t *t);
/* Writes the type octet and the value. */
void amqp_value_encode(amqp_buf_t *out, const amqp_value_t *v);

/* Incremental table writer for server-built tables: open writes a placeholder length and returns
 * its position; close patches it. Between them, append fields with the put functions.
 *   size_t pos = amqp_table_open(out);
 *   amqp_table_put_bool(out, "publisher_confirms", true);
 *   amqp_table_close(out, pos); */
size_t amqp_table_open(amqp_buf_t *out);
void amqp_table_close(amqp_buf_t *out, size_t pos);
void amqp_table_put_longstr(amqp_buf_t *out, const char *key, amqp_bytes_t val);   /* type 'S' */
void amqp_table_put_bool(amqp_buf_t *out, const char *key, bool val);              /* type 't' */
void amqp_table_put_i64(amqp_buf_t *out, const char *key, int64_t val);            /* type 'l' */
void amqp_table_put_timestamp(amqp_buf_t *out, const char *key, uint64_t val);     /* type 'T' */
void amqp_table_put_key(amqp_buf_t *out, const char *key);  /* then append a value with amqp_value_encode */
/* Starts a nested table value under key ('F'); returns the position to pass to amqp_table_close. */
size_t amqp_table_put_table_open(amqp_buf_t *out, const char *key);

#endif
