/* table.c - byte strings, the growable output buffer and AMQP field tables.
 *
 * Field tables arrive as raw bytes inside method arguments and message headers. Most of the time
 * the broker never looks inside them (message headers are stored and re-sent as received), so
 * the parsed form is built only on demand and is zero-copy: keys and string values point into
 * the raw bytes, and only the field/item arrays of each table or array level are malloc'd.
 *
 * One walker serves both amqp_table_validate() and amqp_table_parse(): called with a NULL output
 * it only checks structure, so validation and parsing can never disagree about what is
 * well-formed. Invariants enforced on input:
 *   - every length (key, longstr, byte array, nested table, array) fits in its enclosing bytes;
 *   - a nested table/array consumes exactly its declared length (trailing junk inside is a
 *     malformed field, not silently skipped);
 *   - nesting is at most AMQP_TABLE_MAX_DEPTH deep, so recursion is bounded on hostile input.
 *
 * Encoding reproduces the wire bytes of a parsed table exactly (every type keeps its own width
 * and signedness), except that a bool octet other than 0 or 1 is written back as 1. */
#include "broker/table.h"

#include <stdlib.h>
#include <string.h>

#include "broker/log.h"

/* ---- Byte strings ------------------------------------------------------------------------- */

bool amqp_bytes_eq(amqp_bytes_t a, amqp_bytes_t b) {
  if (a.len != b.len) return false;
  return a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0;
}

bool amqp_bytes_eq_cstr(amqp_bytes_t a, const char *s) {
  return amqp_bytes_eq(a, AMQP_BYTES_CSTR(s));
}

/* Orders byte strings like memcmp, shorter first on a common prefix (Erlang binary order). */
static int bytes_cmp(amqp_bytes_t a, amqp_bytes_t b) {
  size_t common = a.len < b.len ? a.len : b.len;
  int c = common ? memcmp(a.ptr, b.ptr, common) : 0;
  if (c != 0) return c;
  return (a.len > b.len) - (a.len < b.len);
}

/* ---- Growable output buffer --------------------------------------------------------------- */

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (!q) {
    log_error("out of memory (%zu bytes)", n);
    abort();
  }
  return q;
}

void amqp_buf_reserve(amqp_buf_t *b, size_t extra) {
  if (extra > SIZE_MAX - b->len) {
    log_error("buffer size overflow");
    abort();
  }
  size_t need = b->len + extra;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  b->data = xrealloc(b->data, cap);
  b->cap = cap;
}

void amqp_buf_append(amqp_buf_t *b, const void *p, size_t n) {
  if (n == 0) return;
  amqp_buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

void amqp_buf_put_u8(amqp_buf_t *b, uint8_t v) {
  amqp_buf_append(b, &v, 1);
}

void amqp_buf_put_u16(amqp_buf_t *b, uint16_t v) {
  uint8_t be[2] = {(uint8_t)(v >> 8), (uint8_t)v};
  amqp_buf_append(b, be, sizeof be);
}

void amqp_buf_put_u32(amqp_buf_t *b, uint32_t v) {
  uint8_t be[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
  amqp_buf_append(b, be, sizeof be);
}

void amqp_buf_put_u64(amqp_buf_t *b, uint64_t v) {
  amqp_buf_put_u32(b, (uint32_t)(v >> 32));
  amqp_buf_put_u32(b, (uint32_t)v);
}

void amqp_buf_put_shortstr(amqp_buf_t *b, amqp_bytes_t s) {
  size_t n = s.len > 255 ? 255 : s.len;
  amqp_buf_put_u8(b, (uint8_t)n);
  amqp_buf_append(b, s.ptr, n);
}

void amqp_buf_put_longstr(amqp_buf_t *b, amqp_bytes_t s) {
  size_t n = s.len > UINT32_MAX ? UINT32_MAX : s.len;
  amqp_buf_put_u32(b, (uint32_t)n);
  amqp_buf_append(b, s.ptr, n);
}

void amqp_buf_patch_u32(amqp_buf_t *b, size_t pos, uint32_t v) {
  if (pos > b->len || b->len - pos < 4) {
    log_error("amqp_buf_patch_u32 out of range (pos %zu, len %zu)", pos, b->len);
    abort();
  }
  uint8_t *p = b->data + pos;
  p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

void amqp_buf_free(amqp_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- Parsing and validation --------------------------------------------------------------- */

static int walk_table(amqp_bytes_t raw, int depth, amqp_table_t *out);
static int walk_array(amqp_bytes_t raw, int depth, amqp_array_t *out);

/* Reads a u32-length-prefixed nested table or array body and walks it one level deeper. */
static int walk_nested(amqp_reader_t *r, char type, int depth, amqp_value_t *out) {
  amqp_bytes_t body = amqp_read_longstr(r);
  if (r->bad || depth + 1 > AMQP_TABLE_MAX_DEPTH) return -AMQP_TABLE_SYNTAX_ERROR;
  if (type == 'F') return walk_table(body, depth + 1, out ? &out->v.table : NULL);
  return walk_array(body, depth + 1, out ? &out->v.array : NULL);
}

/* Reads one value of the given wire type. out may be NULL (validation only). On success the
 * value (if any) is stored in *out; on failure *out owns nothing. */
static int walk_value(amqp_reader_t *r, char type, int depth, amqp_value_t *out) {
  amqp_value_t v;
  memset(&v, 0, sizeof v);
  v.type = type;
  switch (type) {
  case 't': v.v.b = amqp_read_u8(r) != 0; break;
  case 'b': v.v.i = (int8_t)amqp_read_u8(r); break;
  case 'B': v.v.u = amqp_read_u8(r); break;
  case 's': v.v.i = (int16_t)amqp_read_u16(r); break;
  case 'u': v.v.u = amqp_read_u16(r); break;
  case 'I': v.v.i = (int32_t)amqp_read_u32(r); break;
  case 'i': v.v.u = amqp_read_u32(r); break;
  case 'l': case 'L': v.v.i = (int64_t)amqp_read_u64(r); break;
  case 'T': v.v.u = amqp_read_u64(r); break;
  case 'f': { uint32_t bits = amqp_read_u32(r); memcpy(&v.v.f, &bits, sizeof bits); break; }
  case 'd': { uint64_t bits = amqp_read_u64(r); memcpy(&v.v.d, &bits, sizeof bits); break; }
  case 'D': v.v.dec.scale = amqp_read_u8(r); v.v.dec.value = amqp_read_u32(r); break;
  case 'S': case 'x': v.v.str = amqp_read_longstr(r); break;
  case 'V': break;
  case 'F': case 'A': {
    int rc = walk_nested(r, type, depth, out ? &v : NULL);
    if (rc < 0) return rc;
    break;
  }
  default: return -AMQP_TABLE_SYNTAX_ERROR;
  }
  if (r->bad) return -AMQP_TABLE_SYNTAX_ERROR;
  if (out) *out = v;   /* in validation mode nothing was allocated, so nothing leaks */
  return 0;
}

/* Appends a zeroed slot to a growable array of elem_size elements; returns the slot. */
static void *grow_slot(void **items, size_t *n, size_t *cap, size_t elem_size) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 4;
    *items = xrealloc(*items, *cap * elem_size);
  }
  void *slot = (char *)*items + (*n)++ * elem_size;
  memset(slot, 0, elem_size);
  return slot;
}

static int walk_table(amqp_bytes_t raw, int depth, amqp_table_t *out) {
  amqp_reader_t r = amqp_reader(raw.ptr, raw.len);
  amqp_table_t t = {NULL, 0};
  size_t cap = 0;
  while (r.left > 0) {
    amqp_bytes_t key = amqp_read_shortstr(&r);
    char type = (char)amqp_read_u8(&r);
    if (r.bad) goto fail;
    amqp_field_t scratch, *f = &scratch;
    if (out) f = grow_slot((void **)&t.fields, &t.n, &cap, sizeof *t.fields);
    f->key = key;
    if (walk_value(&r, type, depth, out ? &f->value : NULL) < 0) {
      if (out) t.n--;   /* the slot holds nothing to free */
      goto fail;
    }
  }
  if (out) *out = t;
  return 0;
fail:
  amqp_table_free(&t);
  return -AMQP_TABLE_SYNTAX_ERROR;
}

static int walk_array(amqp_bytes_t raw, int depth, amqp_array_t *out) {
  amqp_reader_t r = amqp_reader(raw.ptr, raw.len);
  amqp_value_t arr;
  memset(&arr, 0, sizeof arr);
  arr.type = 'A';
  size_t cap = 0;
  while (r.left > 0) {
    char type = (char)amqp_read_u8(&r);
    amqp_value_t scratch, *item = &scratch;
    if (out) item = grow_slot((void **)&arr.v.array.items, &arr.v.array.n, &cap, sizeof *item);
    if (walk_value(&r, type, depth, out ? item : NULL) < 0) {
      if (out) arr.v.array.n--;
      amqp_value_free(&arr);
      return -AMQP_TABLE_SYNTAX_ERROR;
    }
  }
  if (out) *out = arr.v.array;
  return 0;
}

int amqp_table_parse(amqp_bytes_t raw, amqp_table_t *out) {
  out->fields = NULL;
  out->n = 0;
  return walk_table(raw, 0, out);
}

int amqp_table_validate(amqp_bytes_t raw) {
  return walk_table(raw, 0, NULL);
}

void amqp_value_free(amqp_value_t *v) {
  if (v->type == 'F') {
    amqp_table_free(&v->v.table);
  } else if (v->type == 'A') {
    for (size_t i = 0; i < v->v.array.n; i++) amqp_value_free(&v->v.array.items[i]);
    free(v->v.array.items);
    v->v.array.items = NULL;
    v->v.array.n = 0;
  }
}

void amqp_table_free(amqp_table_t *t) {
  for (size_t i = 0; i < t->n; i++) amqp_value_free(&t->fields[i].value);
  free(t->fields);
  t->fields = NULL;
  t->n = 0;
}

/* ---- Lookup and comparison ---------------------------------------------------------------- */

const amqp_value_t *amqp_table_get(const amqp_table_t *t, const char *key) {
  amqp_bytes_t k = AMQP_BYTES_CSTR(key);
  for (size_t i = 0; i < t->n; i++)
    if (amqp_bytes_eq(t->fields[i].key, k)) return &t->fields[i].value;
  return NULL;
}

bool amqp_value_int(const amqp_value_t *v, int64_t *out) {
  switch (v->type) {
  case 'b': case 's': case 'I': case 'l': case 'L':
    *out = v->v.i;
    return true;
  case 'B': case 'u': case 'i': case 'T':
    if (v->v.u > (uint64_t)INT64_MAX) return false;
    *out = (int64_t)v->v.u;
    return true;
  default:
    return false;
  }
}

bool amqp_value_equal(const amqp_value_t *a, const amqp_value_t *b) {
  if (a->type != b->type) return false;
  switch (a->type) {
  case 't': return a->v.b == b->v.b;
  case 'b': case 's': case 'I': case 'l': case 'L': return a->v.i == b->v.i;
  case 'B': case 'u': case 'i': case 'T': return a->v.u == b->v.u;
  /* Bit patterns, so that a value (even NaN) always equals itself. */
  case 'f': return memcmp(&a->v.f, &b->v.f, sizeof a->v.f) == 0;
  case 'd': return memcmp(&a->v.d, &b->v.d, sizeof a->v.d) == 0;
  case 'D': return a->v.dec.scale == b->v.dec.scale && a->v.dec.value == b->v.dec.value;
  case 'S': case 'x': return amqp_bytes_eq(a->v.str, b->v.str);
  case 'V': return true;
  case 'F': return amqp_table_equal(&a->v.table, &b->v.table);
  case 'A':
    if (a->v.array.n != b->v.array.n) return false;
    for (size_t i = 0; i < a->v.array.n; i++)
      if (!amqp_value_equal(&a->v.array.items[i], &b->v.array.items[i])) return false;
    return true;
  default: return false;
  }
}

/* Sort key for table comparison: by key bytes, then by position, so duplicate keys keep their
 * relative order (a stable key sort, as RabbitMQ sorts tables before comparing them). */
static int field_ptr_cmp(const void *pa, const void *pb) {
  const amqp_field_t *a = *(const amqp_field_t *const *)pa, *b = *(const amqp_field_t *const *)pb;
  int c = bytes_cmp(a->key, b->key);
  if (c != 0) return c;
  return (a > b) - (a < b);
}

static const amqp_field_t **sorted_fields(const amqp_table_t *t) {
  const amqp_field_t **v = xrealloc(NULL, t->n * sizeof *v);
  for (size_t i = 0; i < t->n; i++) v[i] = &t->fields[i];
  qsort(v, t->n, sizeof *v, field_ptr_cmp);
  return v;
}

bool amqp_table_equal(const amqp_table_t *a, const amqp_table_t *b) {
  if (a->n != b->n) return false;
  if (a->n == 0) return true;
  const amqp_field_t **sa = sorted_fields(a), **sb = sorted_fields(b);
  bool equal = true;
  for (size_t i = 0; i < a->n && equal; i++)
    equal = amqp_bytes_eq(sa[i]->key, sb[i]->key) && amqp_value_equal(&sa[i]->value, &sb[i]->value);
  free(sa);
  free(sb);
  return equal;
}

/* ---- Encoding ----------------------------------------------------------------------------- */

size_t amqp_table_open(amqp_buf_t *out) {
  size_t pos = out->len;
  amqp_buf_put_u32(out, 0);   /* patched by amqp_table_close */
  return pos;
}

void amqp_table_close(amqp_buf_t *out, size_t pos) {
  amqp_buf_patch_u32(out, pos, (uint32_t)(out->len - pos - 4));
}

void amqp_table_encode(amqp_buf_t *out, const amqp_table_t *t) {
  size_t pos = amqp_table_open(out);
  for (size_t i = 0; i < t->n; i++) {
    amqp_buf_put_shortstr(out, t->fields[i].key);
    amqp_value_encode(out, &t->fields[i].value);
  }
  amqp_table_close(out, pos);
}

void amqp_value_encode(amqp_buf_t *out, const amqp_value_t *v) {
  amqp_buf_put_u8(out, (uint8_t)v->type);
  switch (v->type) {
  case 't': amqp_buf_put_u8(out, v->v.b ? 1 : 0); break;
  case 'b': amqp_buf_put_u8(out, (uint8_t)v->v.i); break;
  case 'B': amqp_buf_put_u8(out, (uint8_t)v->v.u); break;
  case 's': amqp_buf_put_u16(out, (uint16_t)v->v.i); break;
  case 'u': amqp_buf_put_u16(out, (uint16_t)v->v.u); break;
  case 'I': amqp_buf_put_u32(out, (uint32_t)v->v.i); break;
  case 'i': amqp_buf_put_u32(out, (uint32_t)v->v.u); break;
  case 'l': case 'L': amqp_buf_put_u64(out, (uint64_t)v->v.i); break;
  case 'T': amqp_buf_put_u64(out, v->v.u); break;
  case 'f': { uint32_t bits; memcpy(&bits, &v->v.f, sizeof bits); amqp_buf_put_u32(out, bits); break; }
  case 'd': { uint64_t bits; memcpy(&bits, &v->v.d, sizeof bits); amqp_buf_put_u64(out, bits); break; }
  case 'D': amqp_buf_put_u8(out, v->v.dec.scale); amqp_buf_put_u32(out, v->v.dec.value); break;
  case 'S': case 'x': amqp_buf_put_longstr(out, v->v.str); break;
  case 'V': break;
  case 'F': amqp_table_encode(out, &v->v.table); break;
  case 'A': {
    size_t pos = amqp_table_open(out);   /* arrays share the u32 length prefix layout */
    for (size_t i = 0; i < v->v.array.n; i++) amqp_value_encode(out, &v->v.array.items[i]);
    amqp_table_close(out, pos);
    break;
  }
  default:
    /* A programming error: never emit a type octet a peer cannot parse. */
    log_error("amqp_value_encode: unknown field type 0x%02x, writing void", (unsigned)(uint8_t)v->type);
    out->data[out->len - 1] = 'V';
    break;
  }
}

void amqp_table_put_key(amqp_buf_t *out, const char *key) {
  amqp_buf_put_shortstr(out, AMQP_BYTES_CSTR(key));
}

void amqp_table_put_longstr(amqp_buf_t *out, const char *key, amqp_bytes_t val) {
  amqp_table_put_key(out, key);
  amqp_buf_put_u8(out, 'S');
  amqp_buf_put_longstr(out, val);
}

void amqp_table_put_bool(amqp_buf_t *out, const char *key, bool val) {
  amqp_table_put_key(out, key);
  amqp_buf_put_u8(out, 't');
  amqp_buf_put_u8(out, val ? 1 : 0);
}

void amqp_table_put_i64(amqp_buf_t *out, const char *key, int64_t val) {
  amqp_table_put_key(out, key);
  amqp_buf_put_u8(out, 'l');
  amqp_buf_put_u64(out, (uint64_t)val);
}

void amqp_table_put_timestamp(amqp_buf_t *out, const char *key, uint64_t val) {
  amqp_table_put_key(out, key);
  amqp_buf_put_u8(out, 'T');
  amqp_buf_put_u64(out, val);
}

size_t amqp_table_put_table_open(amqp_buf_t *out, const char *key) {
  amqp_table_put_key(out, key);
  amqp_buf_put_u8(out, 'F');
  return amqp_table_open(out);
}
