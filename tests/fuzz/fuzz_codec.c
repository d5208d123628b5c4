/* fuzz_codec.c - libFuzzer target for the AMQP 0-9-1 codec and field tables.
 *
 * The input is treated the way a connection treats socket bytes: an optional protocol header,
 * then frames cut by amqp_frame_parse() until it needs more bytes or reports an error. Each
 * frame is decoded according to its type, and every table found is parsed and re-encoded. The
 * whole input is also fed to the table parser directly, which reaches deep table shapes faster.
 *
 * Properties checked (abort() on violation, so libFuzzer reports it):
 *   - nothing crashes, leaks or reads out of bounds (ASan/UBSan);
 *   - validation and parsing agree on every table;
 *   - a parsed table re-encodes byte-exact, except a bool octet other than 0/1 becomes 1;
 *   - a decoded method re-encodes to a frame of the same size that decodes to the same bytes;
 *   - decoded basic properties re-encode to a prefix of the raw property bytes (the unused
 *     flag bit 1 is dropped; bytes after the property list are ignored by the decoder). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "amqp091/codec.h"

#define FUZZ_FRAME_MAX 131072

/* True when out (a re-encoding) differs from raw only where raw held a non-canonical bool. */
static bool same_modulo_bools(const uint8_t *raw, const uint8_t *out, size_t len) {
  for (size_t i = 0; i < len; i++) {
    if (raw[i] == out[i]) continue;
    if (!(out[i] == 1 && raw[i] > 1 && i > 0 && raw[i - 1] == 't')) return false;
  }
  return true;
}

static void check_table(amqp_bytes_t raw) {
  amqp_table_t t;
  int parsed = amqp_table_parse(raw, &t);
  if (parsed != amqp_table_validate(raw)) abort();
  if (parsed < 0) return;

  amqp_buf_t out = {0};
  amqp_table_encode(&out, &t);
  if (out.len != raw.len + 4 || amqp_get_u32(out.data) != raw.len) abort();
  if (!same_modulo_bools(raw.ptr, out.data + 4, raw.len)) abort();
  if (!amqp_table_equal(&t, &t)) abort();

  amqp_table_t again;
  if (amqp_table_parse((amqp_bytes_t){out.data + 4, out.len - 4}, &again) != 0) abort();
  if (!amqp_table_equal(&t, &again)) abort();
  for (size_t i = 0; i < t.n; i++) {
    int64_t n;
    (void)amqp_value_int(&t.fields[i].value, &n);
  }
  amqp_table_free(&again);
  amqp_table_free(&t);
  amqp_buf_free(&out);
}

/* Every table argument of a decoded method, found by its position in the union. */
static void check_method_tables(const amqp_method_t *m) {
  switch (m->id) {
  case AMQP_CONNECTION_START: check_table(m->u.connection_start.server_properties); break;
  case AMQP_CONNECTION_START_OK: check_table(m->u.connection_start_ok.client_properties); break;
  case AMQP_EXCHANGE_DECLARE: check_table(m->u.exchange_declare.arguments); break;
  case AMQP_EXCHANGE_BIND: check_table(m->u.exchange_bind.arguments); break;
  case AMQP_EXCHANGE_UNBIND: check_table(m->u.exchange_unbind.arguments); break;
  case AMQP_QUEUE_DECLARE: check_table(m->u.queue_declare.arguments); break;
  case AMQP_QUEUE_BIND: check_table(m->u.queue_bind.arguments); break;
  case AMQP_QUEUE_UNBIND: check_table(m->u.queue_unbind.arguments); break;
  case AMQP_BASIC_CONSUME: check_table(m->u.basic_consume.arguments); break;
  default: break;
  }
}

static void check_method(const amqp_frame_t *f) {
  amqp_method_t m;
  if (amqp_method_decode(f->payload, f->size, &m) != 0) return;
  if (strcmp(amqp_method_name(m.id), "unknown") == 0) abort();   /* decoded, so it must be known */
  check_method_tables(&m);

  /* Re-encoding keeps the size (only unused bits in a bit octet may change) and is stable. */
  amqp_buf_t first = {0}, second = {0};
  amqp_encode_method(&first, f->channel, &m);
  if (first.len != (size_t)f->size + AMQP_FRAME_OVERHEAD) abort();
  amqp_frame_t g;
  if (amqp_frame_parse(first.data, first.len, 0, &g) != (long)first.len) abort();
  amqp_method_t m2;
  if (amqp_method_decode(g.payload, g.size, &m2) != 0) abort();
  amqp_encode_method(&second, f->channel, &m2);
  if (second.len != first.len || memcmp(first.data, second.data, first.len) != 0) abort();
  amqp_buf_free(&first);
  amqp_buf_free(&second);
}

static void check_content_header(const amqp_frame_t *f) {
  uint16_t class_id;
  uint64_t body_size;
  amqp_bytes_t raw;
  amqp_props_t props;
  if (amqp_content_header_decode(f->payload, f->size, &class_id, &body_size, &raw, &props) != 0) return;
  if (class_id != AMQP_CLASS_BASIC) return;
  if (props.flags & AMQP_P_HEADERS) check_table(props.headers);

  /* The property list is re-encoded exactly; bytes after it and the unused flag bit are not kept. */
  amqp_buf_t out = {0};
  amqp_props_encode(&out, &props);
  if (out.len > raw.len) abort();
  if (amqp_get_u16(out.data) != (amqp_get_u16(raw.ptr) & AMQP_P_ALL)) abort();
  if (memcmp(out.data + 2, raw.ptr + 2, out.len - 2) != 0) abort();
  amqp_props_t again;
  if (amqp_props_decode(out.data, out.len, &again) != 0) abort();
  amqp_buf_free(&out);

  amqp_buf_t frame = {0};
  amqp_encode_content_header(&frame, f->channel, class_id, body_size, raw.ptr, raw.len);
  if (frame.len != (size_t)f->size + AMQP_FRAME_OVERHEAD) abort();
  amqp_buf_free(&frame);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t off = 0;
  if (size >= sizeof AMQP_PROTOCOL_HEADER && memcmp(data, AMQP_PROTOCOL_HEADER, sizeof AMQP_PROTOCOL_HEADER) == 0)
    off = sizeof AMQP_PROTOCOL_HEADER;
  while (off < size) {
    amqp_frame_t f;
    long used = amqp_frame_parse(data + off, size - off, FUZZ_FRAME_MAX, &f);
    if (used <= 0) break;
    if ((size_t)used > size - off || f.size + AMQP_FRAME_OVERHEAD != (size_t)used) abort();
    if (f.type == AMQP_FRAME_METHOD) check_method(&f);
    else if (f.type == AMQP_FRAME_HEADER) check_content_header(&f);
    off += (size_t)used;
  }
  check_table((amqp_bytes_t){data, size});

  /* Body framing of the input at a small frame size reassembles to the input. */
  amqp_buf_t body = {0};
  amqp_encode_body(&body, 1, data, size, 64);
  size_t got = 0;
  for (size_t pos = 0; pos < body.len;) {
    amqp_frame_t f;
    long used = amqp_frame_parse(body.data + pos, body.len - pos, 64, &f);
    if (used <= 0 || f.type != AMQP_FRAME_BODY || memcmp(f.payload, data + got, f.size) != 0) abort();
    got += f.size;
    pos += (size_t)used;
  }
  if (got != size) abort();
  amqp_buf_free(&body);
  return 0;
}
