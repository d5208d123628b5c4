/* test_codec.c - unit tests for the AMQP 0-9-1 wire codec and field tables.
 *
 * Two kinds of oracle are used. Round trips (encode -> frame parse -> decode) cover every method
 * with distinct, sign-bit-heavy values in every argument; they use a field list written here
 * independently of the codec's own table. Golden byte strings, written by hand from the spec's
 * grammar, pin down argument order, bit packing and table layout, which a symmetric round trip
 * alone could not catch. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "amqp091/codec.h"

/* ---- Helpers ------------------------------------------------------------------------------ */

#define BYTES(arr) ((amqp_bytes_t){(const uint8_t *)(arr), sizeof(arr)})

static void assert_bytes_equal(amqp_bytes_t a, amqp_bytes_t b) {
  assert_int_equal(a.len, b.len);
  if (a.len) assert_memory_equal(a.ptr, b.ptr, a.len);
}

/* Parses exactly one whole frame from buf and returns it. */
static amqp_frame_t one_frame(const amqp_buf_t *buf, uint32_t frame_max) {
  amqp_frame_t f;
  long n = amqp_frame_parse(buf->data, buf->len, frame_max, &f);
  assert_int_equal(n, (long)buf->len);
  return f;
}

/* Valid table content used wherever a method needs a table argument. */
static const uint8_t SAMPLE_TABLE[] = {
  12, 'x', '-', 'm', 'a', 'x', '-', 'l', 'e', 'n', 'g', 't', 'h', 'l', 0, 0, 0, 0, 0, 0, 0, 10,
  1, 'k', 'S', 0, 0, 0, 1, 'v',
};

/* ---- Every method: round trip ------------------------------------------------------------- */

enum { K_OCTET, K_SHORT, K_LONG, K_LONGLONG, K_SHORTSTR, K_LONGSTR, K_TABLE, K_BIT };
typedef struct { int kind; size_t off; } tfield_t;
typedef struct { uint32_t id; const char *name; int n; tfield_t f[9]; } tmethod_t;
#define F(kind, m, x) {K_##kind, offsetof(amqp_method_t, u.m.x)}
#define NF(...) (int)(sizeof((tfield_t[]){__VA_ARGS__}) / sizeof(tfield_t)), {__VA_ARGS__}
#define M0 0, {{0, 0}}

/* Argument lists as given by the 0-9-1 spec with RabbitMQ's extensions. */
static const tmethod_t ALL_METHODS[] = {
  {AMQP_CONNECTION_START, "connection.start", NF(F(OCTET, connection_start, version_major),
     F(OCTET, connection_start, version_minor), F(TABLE, connection_start, server_properties),
     F(LONGSTR, connection_start, mechanisms), F(LONGSTR, connection_start, locales))},
  {AMQP_CONNECTION_START_OK, "connection.start_ok", NF(F(TABLE, connection_start_ok, client_properties),
     F(SHORTSTR, connection_start_ok, mechanism), F(LONGSTR, connection_start_ok, response),
     F(SHORTSTR, connection_start_ok, locale))},
  {AMQP_CONNECTION_SECURE, "connection.secure", NF(F(LONGSTR, connection_secure, challenge))},
  {AMQP_CONNECTION_SECURE_OK, "connection.secure_ok", NF(F(LONGSTR, connection_secure_ok, response))},
  {AMQP_CONNECTION_TUNE, "connection.tune", NF(F(SHORT, connection_tune, channel_max),
     F(LONG, connection_tune, frame_max), F(SHORT, connection_tune, heartbeat))},
  {AMQP_CONNECTION_TUNE_OK, "connection.tune_ok", NF(F(SHORT, connection_tune_ok, channel_max),
     F(LONG, connection_tune_ok, frame_max), F(SHORT, connection_tune_ok, heartbeat))},
  {AMQP_CONNECTION_OPEN, "connection.open", NF(F(SHORTSTR, connection_open, virtual_host),
     F(SHORTSTR, connection_open, capabilities), F(BIT, connection_open, insist))},
  {AMQP_CONNECTION_OPEN_OK, "connection.open_ok", NF(F(SHORTSTR, connection_open_ok, known_hosts))},
  {AMQP_CONNECTION_CLOSE, "connection.close", NF(F(SHORT, connection_close, reply_code),
     F(SHORTSTR, connection_close, reply_text), F(SHORT, connection_close, class_id),
     F(SHORT, connection_close, method_id))},
  {AMQP_CONNECTION_CLOSE_OK, "connection.close_ok", M0},
  {AMQP_CONNECTION_BLOCKED, "connection.blocked", NF(F(SHORTSTR, connection_blocked, reason))},
  {AMQP_CONNECTION_UNBLOCKED, "connection.unblocked", M0},
  {AMQP_CONNECTION_UPDATE_SECRET, "connection.update_secret", NF(F(LONGSTR, connection_update_secret, new_secret),
     F(SHORTSTR, connection_update_secret, reason))},
  {AMQP_CONNECTION_UPDATE_SECRET_OK, "connection.update_secret_ok", M0},
  {AMQP_CHANNEL_OPEN, "channel.open", NF(F(SHORTSTR, channel_open, out_of_band))},
  {AMQP_CHANNEL_OPEN_OK, "channel.open_ok", NF(F(LONGSTR, channel_open_ok, channel_id))},
  {AMQP_CHANNEL_FLOW, "channel.flow", NF(F(BIT, channel_flow, active))},
  {AMQP_CHANNEL_FLOW_OK, "channel.flow_ok", NF(F(BIT, channel_flow_ok, active))},
  {AMQP_CHANNEL_CLOSE, "channel.close", NF(F(SHORT, channel_close, reply_code),
     F(SHORTSTR, channel_close, reply_text), F(SHORT, channel_close, class_id), F(SHORT, channel_close, method_id))},
  {AMQP_CHANNEL_CLOSE_OK, "channel.close_ok", M0},
  {AMQP_EXCHANGE_DECLARE, "exchange.declare", NF(F(SHORT, exchange_declare, ticket),
     F(SHORTSTR, exchange_declare, exchange), F(SHORTSTR, exchange_declare, type), F(BIT, exchange_declare, passive),
     F(BIT, exchange_declare, durable), F(BIT, exchange_declare, auto_delete), F(BIT, exchange_declare, internal),
     F(BIT, exchange_declare, nowait), F(TABLE, exchange_declare, arguments))},
  {AMQP_EXCHANGE_DECLARE_OK, "exchange.declare_ok", M0},
  {AMQP_EXCHANGE_DELETE, "exchange.delete", NF(F(SHORT, exchange_delete, ticket),
     F(SHORTSTR, exchange_delete, exchange), F(BIT, exchange_delete, if_unused), F(BIT, exchange_delete, nowait))},
  {AMQP_EXCHANGE_DELETE_OK, "exchange.delete_ok", M0},
  {AMQP_EXCHANGE_BIND, "exchange.bind", NF(F(SHORT, exchange_bind, ticket), F(SHORTSTR, exchange_bind, destination),
     F(SHORTSTR, exchange_bind, source), F(SHORTSTR, exchange_bind, routing_key), F(BIT, exchange_bind, nowait),
     F(TABLE, exchange_bind, arguments))},
  {AMQP_EXCHANGE_BIND_OK, "exchange.bind_ok", M0},
  {AMQP_EXCHANGE_UNBIND, "exchange.unbind", NF(F(SHORT, exchange_unbind, ticket),
     F(SHORTSTR, exchange_unbind, destination), F(SHORTSTR, exchange_unbind, source),
     F(SHORTSTR, exchange_unbind, routing_key), F(BIT, exchange_unbind, nowait), F(TABLE, exchange_unbind, arguments))},
  {AMQP_EXCHANGE_UNBIND_OK, "exchange.unbind_ok", M0},
  {AMQP_QUEUE_DECLARE, "queue.declare", NF(F(SHORT, queue_declare, ticket), F(SHORTSTR, queue_declare, queue),
     F(BIT, queue_declare, passive), F(BIT, queue_declare, durable), F(BIT, queue_declare, exclusive),
     F(BIT, queue_declare, auto_delete), F(BIT, queue_declare, nowait), F(TABLE, queue_declare, arguments))},
  {AMQP_QUEUE_DECLARE_OK, "queue.declare_ok", NF(F(SHORTSTR, queue_declare_ok, queue),
     F(LONG, queue_declare_ok, message_count), F(LONG, queue_declare_ok, consumer_count))},
  {AMQP_QUEUE_BIND, "queue.bind", NF(F(SHORT, queue_bind, ticket), F(SHORTSTR, queue_bind, queue),
     F(SHORTSTR, queue_bind, exchange), F(SHORTSTR, queue_bind, routing_key), F(BIT, queue_bind, nowait),
     F(TABLE, queue_bind, arguments))},
  {AMQP_QUEUE_BIND_OK, "queue.bind_ok", M0},
  {AMQP_QUEUE_PURGE, "queue.purge", NF(F(SHORT, queue_purge, ticket), F(SHORTSTR, queue_purge, queue),
     F(BIT, queue_purge, nowait))},
  {AMQP_QUEUE_PURGE_OK, "queue.purge_ok", NF(F(LONG, queue_purge_ok, message_count))},
  {AMQP_QUEUE_DELETE, "queue.delete", NF(F(SHORT, queue_delete, ticket), F(SHORTSTR, queue_delete, queue),
     F(BIT, queue_delete, if_unused), F(BIT, queue_delete, if_empty), F(BIT, queue_delete, nowait))},
  {AMQP_QUEUE_DELETE_OK, "queue.delete_ok", NF(F(LONG, queue_delete_ok, message_count))},
  {AMQP_QUEUE_UNBIND, "queue.unbind", NF(F(SHORT, queue_unbind, ticket), F(SHORTSTR, queue_unbind, queue),
     F(SHORTSTR, queue_unbind, exchange), F(SHORTSTR, queue_unbind, routing_key), F(TABLE, queue_unbind, arguments))},
  {AMQP_QUEUE_UNBIND_OK, "queue.unbind_ok", M0},
  {AMQP_BASIC_QOS, "basic.qos", NF(F(LONG, basic_qos, prefetch_size), F(SHORT, basic_qos, prefetch_count),
     F(BIT, basic_qos, global))},
  {AMQP_BASIC_QOS_OK, "basic.qos_ok", M0},
  {AMQP_BASIC_CONSUME, "basic.consume", NF(F(SHORT, basic_consume, ticket), F(SHORTSTR, basic_consume, queue),
     F(SHORTSTR, basic_consume, consumer_tag), F(BIT, basic_consume, no_local), F(BIT, basic_consume, no_ack),
     F(BIT, basic_consume, exclusive), F(BIT, basic_consume, nowait), F(TABLE, basic_consume, arguments))},
  {AMQP_BASIC_CONSUME_OK, "basic.consume_ok", NF(F(SHORTSTR, basic_consume_ok, consumer_tag))},
  {AMQP_BASIC_CANCEL, "basic.cancel", NF(F(SHORTSTR, basic_cancel, consumer_tag), F(BIT, basic_cancel, nowait))},
  {AMQP_BASIC_CANCEL_OK, "basic.cancel_ok", NF(F(SHORTSTR, basic_cancel_ok, consumer_tag))},
  {AMQP_BASIC_PUBLISH, "basic.publish", NF(F(SHORT, basic_publish, ticket), F(SHORTSTR, basic_publish, exchange),
     F(SHORTSTR, basic_publish, routing_key), F(BIT, basic_publish, mandatory), F(BIT, basic_publish, immediate))},
  {AMQP_BASIC_RETURN, "basic.return", NF(F(SHORT, basic_return, reply_code), F(SHORTSTR, basic_return, reply_text),
     F(SHORTSTR, basic_return, exchange), F(SHORTSTR, basic_return, routing_key))},
  {AMQP_BASIC_DELIVER, "basic.deliver", NF(F(SHORTSTR, basic_deliver, consumer_tag),
     F(LONGLONG, basic_deliver, delivery_tag), F(BIT, basic_deliver, redelivered),
     F(SHORTSTR, basic_deliver, exchange), F(SHORTSTR, basic_deliver, routing_key))},
  {AMQP_BASIC_GET, "basic.get", NF(F(SHORT, basic_get, ticket), F(SHORTSTR, basic_get, queue),
     F(BIT, basic_get, no_ack))},
  {AMQP_BASIC_GET_OK, "basic.get_ok", NF(F(LONGLONG, basic_get_ok, delivery_tag), F(BIT, basic_get_ok, redelivered),
     F(SHORTSTR, basic_get_ok, exchange), F(SHORTSTR, basic_get_ok, routing_key), F(LONG, basic_get_ok, message_count))},
  {AMQP_BASIC_GET_EMPTY, "basic.get_empty", NF(F(SHORTSTR, basic_get_empty, cluster_id))},
  {AMQP_BASIC_ACK, "basic.ack", NF(F(LONGLONG, basic_ack, delivery_tag), F(BIT, basic_ack, multiple))},
  {AMQP_BASIC_REJECT, "basic.reject", NF(F(LONGLONG, basic_reject, delivery_tag), F(BIT, basic_reject, requeue))},
  {AMQP_BASIC_RECOVER_ASYNC, "basic.recover_async", NF(F(BIT, basic_recover_async, requeue))},
  {AMQP_BASIC_RECOVER, "basic.recover", NF(F(BIT, basic_recover, requeue))},
  {AMQP_BASIC_RECOVER_OK, "basic.recover_ok", M0},
  {AMQP_BASIC_NACK, "basic.nack", NF(F(LONGLONG, basic_nack, delivery_tag), F(BIT, basic_nack, multiple),
     F(BIT, basic_nack, requeue))},
  {AMQP_CONFIRM_SELECT, "confirm.select", NF(F(BIT, confirm_select, nowait))},
  {AMQP_CONFIRM_SELECT_OK, "confirm.select_ok", M0},
  {AMQP_TX_SELECT, "tx.select", M0},
  {AMQP_TX_SELECT_OK, "tx.select_ok", M0},
  {AMQP_TX_COMMIT, "tx.commit", M0},
  {AMQP_TX_COMMIT_OK, "tx.commit_ok", M0},
  {AMQP_TX_ROLLBACK, "tx.rollback", M0},
  {AMQP_TX_ROLLBACK_OK, "tx.rollback_ok", M0},
};
#define N_ALL_METHODS (sizeof ALL_METHODS / sizeof ALL_METHODS[0])

/* Strings for the round trip; the 300-byte longstr checks lengths above one octet. */
static char shortstrs[9][32];
static uint8_t longstr_300[300];

/* Gives field j a distinctive value; `flip` inverts every bit so each bit is seen both ways. */
static void fill_field(amqp_method_t *m, const tfield_t *f, int j, bool flip) {
  void *p = (char *)m + f->off;
  switch (f->kind) {
  case K_OCTET: *(uint8_t *)p = (uint8_t)(0xA0 + j); break;
  case K_SHORT: *(uint16_t *)p = (uint16_t)(0xA100 + j); break;
  case K_LONG: *(uint32_t *)p = 0xA1B2C300u + (uint32_t)j; break;
  case K_LONGLONG: *(uint64_t *)p = 0xA1B2C3D4E5F60700ull + (uint64_t)j; break;
  case K_SHORTSTR:
    snprintf(shortstrs[j], sizeof shortstrs[j], "field-%d-\xc3\xa9", j);
    *(amqp_bytes_t *)p = AMQP_BYTES_CSTR(shortstrs[j]);
    break;
  case K_LONGSTR: *(amqp_bytes_t *)p = (amqp_bytes_t){longstr_300 + j, sizeof longstr_300 - (size_t)j}; break;
  case K_TABLE: *(amqp_bytes_t *)p = BYTES(SAMPLE_TABLE); break;
  case K_BIT: *(bool *)p = ((j & 1) != 0) != flip; break;
  }
}

static void assert_field_equal(const amqp_method_t *a, const amqp_method_t *b, const tfield_t *f) {
  const void *pa = (const char *)a + f->off, *pb = (const char *)b + f->off;
  switch (f->kind) {
  case K_OCTET: assert_int_equal(*(const uint8_t *)pa, *(const uint8_t *)pb); break;
  case K_SHORT: assert_int_equal(*(const uint16_t *)pa, *(const uint16_t *)pb); break;
  case K_LONG: assert_int_equal(*(const uint32_t *)pa, *(const uint32_t *)pb); break;
  case K_LONGLONG: assert_true(*(const uint64_t *)pa == *(const uint64_t *)pb); break;
  case K_SHORTSTR: case K_LONGSTR: case K_TABLE:
    assert_bytes_equal(*(const amqp_bytes_t *)pa, *(const amqp_bytes_t *)pb);
    break;
  case K_BIT: assert_int_equal(*(const bool *)pa, *(const bool *)pb); break;
  }
}

/* The payload the spec's grammar prescribes for m, built from this file's own field list, so
 * that argument order is checked independently of the codec's table. */
static void expected_payload(amqp_buf_t *out, const tmethod_t *tm, const amqp_method_t *m) {
  amqp_buf_put_u16(out, (uint16_t)(tm->id >> 16));
  amqp_buf_put_u16(out, (uint16_t)tm->id);
  int nbits = 0;
  for (int j = 0; j < tm->n; j++) {
    const void *p = (const char *)m + tm->f[j].off;
    if (tm->f[j].kind == K_BIT) {
      if (nbits == 0) amqp_buf_put_u8(out, 0);
      if (*(const bool *)p) out->data[out->len - 1] |= (uint8_t)(1u << nbits);
      nbits = (nbits + 1) % 8;
      continue;
    }
    nbits = 0;
    switch (tm->f[j].kind) {
    case K_OCTET: amqp_buf_put_u8(out, *(const uint8_t *)p); break;
    case K_SHORT: amqp_buf_put_u16(out, *(const uint16_t *)p); break;
    case K_LONG: amqp_buf_put_u32(out, *(const uint32_t *)p); break;
    case K_LONGLONG: amqp_buf_put_u64(out, *(const uint64_t *)p); break;
    case K_SHORTSTR: amqp_buf_put_shortstr(out, *(const amqp_bytes_t *)p); break;
    case K_LONGSTR: case K_TABLE: amqp_buf_put_longstr(out, *(const amqp_bytes_t *)p); break;
    }
  }
}

static void roundtrip_one(const tmethod_t *tm, bool flip) {
  amqp_method_t m, d;
  memset(&m, 0, sizeof m);
  m.id = tm->id;
  for (int j = 0; j < tm->n; j++) fill_field(&m, &tm->f[j], j, flip);

  amqp_buf_t buf = {0};
  amqp_encode_method(&buf, 0x1234, &m);
  amqp_frame_t fr = one_frame(&buf, 0);
  assert_int_equal(fr.type, AMQP_FRAME_METHOD);
  assert_int_equal(fr.channel, 0x1234);
  amqp_buf_t want = {0};
  expected_payload(&want, tm, &m);
  assert_int_equal(fr.size, want.len);
  assert_memory_equal(fr.payload, want.data, want.len);
  amqp_buf_free(&want);
  assert_int_equal(amqp_method_decode(fr.payload, fr.size, &d), 0);
  assert_int_equal(d.id, tm->id);
  for (int j = 0; j < tm->n; j++) assert_field_equal(&m, &d, &tm->f[j]);
  amqp_buf_free(&buf);
}

static void test_every_method_round_trips(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof longstr_300; i++) longstr_300[i] = (uint8_t)(i * 7);
  for (size_t i = 0; i < N_ALL_METHODS; i++) {
    const tmethod_t *tm = &ALL_METHODS[i];
    assert_string_equal(amqp_method_name(tm->id), tm->name);
    roundtrip_one(tm, false);
    roundtrip_one(tm, true);
  }
  assert_int_equal(N_ALL_METHODS, 64);
  assert_string_equal(amqp_method_name(AMQP_METHOD_ID(60, 41)), "unknown");
  assert_string_equal(amqp_method_name(0), "unknown");
}

static void test_method_has_content(void **state) {
  (void)state;
  for (size_t i = 0; i < N_ALL_METHODS; i++) {
    uint32_t id = ALL_METHODS[i].id;
    bool want = id == AMQP_BASIC_PUBLISH || id == AMQP_BASIC_RETURN || id == AMQP_BASIC_DELIVER ||
                id == AMQP_BASIC_GET_OK;
    assert_int_equal(amqp_method_has_content(id), want);
  }
}

/* ---- Golden bytes ------------------------------------------------------------------------- */

static void assert_encodes_to(const amqp_method_t *m, uint16_t channel, const uint8_t *want, size_t want_len) {
  amqp_buf_t buf = {0};
  amqp_encode_method(&buf, channel, m);
  assert_int_equal(buf.len, want_len);
  assert_memory_equal(buf.data, want, want_len);
  amqp_buf_free(&buf);
}

static void test_golden_queue_declare(void **state) {
  (void)state;
  amqp_method_t m = {.id = AMQP_QUEUE_DECLARE};
  m.u.queue_declare.queue = AMQP_BYTES_CSTR("q1");
  m.u.queue_declare.durable = true;
  m.u.queue_declare.auto_delete = true;
  m.u.queue_declare.arguments = AMQP_BYTES_EMPTY;
  /* bits: passive=bit0 durable=bit1 exclusive=bit2 auto_delete=bit3 nowait=bit4 -> 0x0A */
  static const uint8_t want[] = {1, 0, 1, 0, 0, 0, 14, 0, 50, 0, 10, 0, 0, 2, 'q', '1', 0x0A, 0, 0, 0, 0, 0xCE};
  assert_encodes_to(&m, 1, want, sizeof want);

  amqp_method_t d;
  assert_int_equal(amqp_method_decode(want + 7, 14, &d), 0);
  assert_true(amqp_bytes_eq_cstr(d.u.queue_declare.queue, "q1"));
  assert_false(d.u.queue_declare.passive);
  assert_true(d.u.queue_declare.durable);
  assert_false(d.u.queue_declare.exclusive);
  assert_true(d.u.queue_declare.auto_delete);
  assert_false(d.u.queue_declare.nowait);
  assert_int_equal(d.u.queue_declare.arguments.len, 0);
}

static void test_golden_exchange_declare_bits(void **state) {
  (void)state;
  amqp_method_t m = {.id = AMQP_EXCHANGE_DECLARE};
  m.u.exchange_declare.ticket = 0;
  m.u.exchange_declare.exchange = AMQP_BYTES_CSTR("e");
  m.u.exchange_declare.type = AMQP_BYTES_CSTR("topic");
  m.u.exchange_declare.passive = true;
  m.u.exchange_declare.auto_delete = true;
  m.u.exchange_declare.nowait = true;
  static const uint8_t want[] = {1, 0, 0, 0, 0, 0, 19, 0, 40, 0, 10, 0, 0, 1, 'e', 5, 't', 'o', 'p', 'i', 'c',
                                 0x15, 0, 0, 0, 0, 0xCE};
  assert_encodes_to(&m, 0, want, sizeof want);

  /* All 32 combinations of the five bits survive a round trip. */
  for (unsigned combo = 0; combo < 32; combo++) {
    amqp_method_t x = {.id = AMQP_EXCHANGE_DECLARE}, y;
    x.u.exchange_declare.passive = combo & 1;
    x.u.exchange_declare.durable = combo & 2;
    x.u.exchange_declare.auto_delete = combo & 4;
    x.u.exchange_declare.internal = combo & 8;
    x.u.exchange_declare.nowait = combo & 16;
    amqp_buf_t buf = {0};
    amqp_encode_method(&buf, 0, &x);
    amqp_frame_t f = one_frame(&buf, 0);
    assert_int_equal(f.payload[f.size - 5], combo);   /* the bit octet precedes the 4-byte table */
    assert_int_equal(amqp_method_decode(f.payload, f.size, &y), 0);
    assert_int_equal(y.u.exchange_declare.passive, x.u.exchange_declare.passive);
    assert_int_equal(y.u.exchange_declare.durable, x.u.exchange_declare.durable);
    assert_int_equal(y.u.exchange_declare.auto_delete, x.u.exchange_declare.auto_delete);
    assert_int_equal(y.u.exchange_declare.internal, x.u.exchange_declare.internal);
    assert_int_equal(y.u.exchange_declare.nowait, x.u.exchange_declare.nowait);
    amqp_buf_free(&buf);
  }
}

static void test_golden_basic_deliver_and_nack(void **state) {
  (void)state;
  amqp_method_t m = {.id = AMQP_BASIC_DELIVER};
  m.u.basic_deliver.consumer_tag = AMQP_BYTES_CSTR("ct");
  m.u.basic_deliver.delivery_tag = 0x0102030405060708ull;
  m.u.basic_deliver.redelivered = true;
  m.u.basic_deliver.exchange = AMQP_BYTES_CSTR("ex");
  m.u.basic_deliver.routing_key = AMQP_BYTES_CSTR("rk");
  static const uint8_t deliver[] = {1, 0, 7, 0, 0, 0, 22, 0, 60, 0, 60, 2, 'c', 't', 1, 2, 3, 4, 5, 6, 7, 8, 1,
                                    2, 'e', 'x', 2, 'r', 'k', 0xCE};
  assert_encodes_to(&m, 7, deliver, sizeof deliver);

  amqp_method_t n = {.id = AMQP_BASIC_NACK};
  n.u.basic_nack.delivery_tag = 5;
  n.u.basic_nack.requeue = true;
  static const uint8_t nack[] = {1, 0, 1, 0, 0, 0, 13, 0, 60, 0, 120, 0, 0, 0, 0, 0, 0, 0, 5, 0x02, 0xCE};
  assert_encodes_to(&n, 1, nack, sizeof nack);
}

static void test_golden_tune_and_start_ok(void **state) {
  (void)state;
  amqp_method_t t = {.id = AMQP_CONNECTION_TUNE};
  t.u.connection_tune.channel_max = 2047;
  t.u.connection_tune.frame_max = 131072;
  t.u.connection_tune.heartbeat = 60;
  static const uint8_t tune[] = {1, 0, 0, 0, 0, 0, 12, 0, 10, 0, 30, 0x07, 0xFF, 0, 2, 0, 0, 0, 60, 0xCE};
  assert_encodes_to(&t, 0, tune, sizeof tune);

  static const uint8_t start_ok[] = {
    0, 10, 0, 11,
    0, 0, 0, 14, 7, 'p', 'r', 'o', 'd', 'u', 'c', 't', 'S', 0, 0, 0, 1, 'x',
    5, 'P', 'L', 'A', 'I', 'N',
    0, 0, 0, 4, 0, 'u', 0, 'p',
    5, 'e', 'n', '_', 'U', 'S'};
  amqp_method_t d;
  assert_int_equal(amqp_method_decode(start_ok, sizeof start_ok, &d), 0);
  assert_int_equal(d.id, AMQP_CONNECTION_START_OK);
  assert_int_equal(d.u.connection_start_ok.client_properties.len, 14);
  assert_ptr_equal(d.u.connection_start_ok.client_properties.ptr, start_ok + 8);
  assert_true(amqp_bytes_eq_cstr(d.u.connection_start_ok.mechanism, "PLAIN"));
  assert_int_equal(d.u.connection_start_ok.response.len, 4);
  assert_memory_equal(d.u.connection_start_ok.response.ptr, "\0u\0p", 4);
  assert_true(amqp_bytes_eq_cstr(d.u.connection_start_ok.locale, "en_US"));

  amqp_table_t props;
  assert_int_equal(amqp_table_parse(d.u.connection_start_ok.client_properties, &props), 0);
  const amqp_value_t *product = amqp_table_get(&props, "product");
  assert_non_null(product);
  assert_int_equal(product->type, 'S');
  assert_true(amqp_bytes_eq_cstr(product->v.str, "x"));
  amqp_table_free(&props);
}

/* ---- Malformed method payloads ------------------------------------------------------------ */

static void test_method_malformed(void **state) {
  (void)state;
  static const uint8_t good[] = {0, 50, 0, 10, 0, 0, 2, 'q', '1', 0x0A, 0, 0, 0, 0};
  amqp_method_t d;
  assert_int_equal(amqp_method_decode(good, sizeof good, &d), 0);
  /* Every truncation fails cleanly. */
  for (size_t len = 0; len < sizeof good; len++) {
    int rc = amqp_method_decode(good, len, &d);
    assert_int_equal(rc, len < 4 ? -AMQP_FRAME_ERROR : -AMQP_SYNTAX_ERROR);
  }
  /* Trailing bytes are rejected, as RabbitMQ's exact-match decoder does. */
  static const uint8_t trailing[] = {0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0xFF};
  assert_int_equal(amqp_method_decode(trailing, sizeof trailing, &d), -AMQP_SYNTAX_ERROR);
  /* A bit argument's octet must be present. */
  static const uint8_t no_bits[] = {0, 60, 0, 80, 0, 0, 0, 0, 0, 0, 0, 1};
  assert_int_equal(amqp_method_decode(no_bits, sizeof no_bits, &d), -AMQP_SYNTAX_ERROR);
  /* Shortstr length running past the end. */
  static const uint8_t long_short[] = {0, 20, 0, 10, 9, 'a'};
  assert_int_equal(amqp_method_decode(long_short, sizeof long_short, &d), -AMQP_SYNTAX_ERROR);
  /* Longstr length running past the end (and wrapping a 32-bit size). */
  static const uint8_t long_long[] = {0, 10, 0, 21, 0xFF, 0xFF, 0xFF, 0xFF, 'a'};
  assert_int_equal(amqp_method_decode(long_long, sizeof long_long, &d), -AMQP_SYNTAX_ERROR);
  /* Unknown class, unknown method in a known class. */
  static const uint8_t unknown_class[] = {0, 99, 0, 10};
  assert_int_equal(amqp_method_decode(unknown_class, sizeof unknown_class, &d), -AMQP_COMMAND_INVALID);
  assert_int_equal(d.id, AMQP_METHOD_ID(99, 10));
  static const uint8_t unknown_method[] = {0, 60, 0, 41};
  assert_int_equal(amqp_method_decode(unknown_method, sizeof unknown_method, &d), -AMQP_COMMAND_INVALID);
  /* A table argument that is not a well-formed table: unknown field type 'Z'. */
  static const uint8_t bad_table[] = {0, 50, 0, 10, 0, 0, 1, 'q', 0, 0, 0, 0, 3, 1, 'k', 'Z'};
  assert_int_equal(amqp_method_decode(bad_table, sizeof bad_table, &d), -AMQP_SYNTAX_ERROR);
  /* Table length larger than what is left. */
  static const uint8_t short_table[] = {0, 50, 0, 10, 0, 0, 1, 'q', 0, 0, 0, 0, 9, 1, 'k', 'V'};
  assert_int_equal(amqp_method_decode(short_table, sizeof short_table, &d), -AMQP_SYNTAX_ERROR);
  /* Methods without arguments decode from just the ids. */
  static const uint8_t close_ok[] = {0, 20, 0, 41};
  assert_int_equal(amqp_method_decode(close_ok, sizeof close_ok, &d), 0);
  assert_int_equal(d.id, AMQP_CHANNEL_CLOSE_OK);
}

/* ---- Frames ------------------------------------------------------------------------------- */

static void test_frame_parse_edges(void **state) {
  (void)state;
  static const uint8_t frame[] = {1, 0, 5, 0, 0, 0, 4, 0, 90, 0, 10, 0xCE};
  amqp_frame_t f;
  for (size_t len = 0; len < sizeof frame; len++)
    assert_int_equal(amqp_frame_parse(frame, len, 0, &f), 0);
  assert_int_equal(amqp_frame_parse(frame, sizeof frame, 0, &f), (long)sizeof frame);
  assert_int_equal(f.type, AMQP_FRAME_METHOD);
  assert_int_equal(f.channel, 5);
  assert_int_equal(f.size, 4);
  assert_ptr_equal(f.payload, frame + 7);

  /* Exactly frame_max is fine; one byte less is an oversize frame. */
  assert_int_equal(amqp_frame_parse(frame, sizeof frame, 12, &f), 12);
  assert_int_equal(amqp_frame_parse(frame, sizeof frame, 11, &f), -AMQP_FRAME_ERROR);
  /* Oversize is detected from the header alone, before the payload arrives. */
  static const uint8_t huge[] = {3, 0, 1, 0x7F, 0xFF, 0xFF, 0xFF};
  assert_int_equal(amqp_frame_parse(huge, sizeof huge, 131072, &f), -AMQP_FRAME_ERROR);
  assert_int_equal(amqp_frame_parse(huge, sizeof huge, 0, &f), 0);
  /* Maximal 32-bit size must not overflow the arithmetic. */
  static const uint8_t max_size[] = {3, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF};
  assert_int_equal(amqp_frame_parse(max_size, sizeof max_size, 0, &f), 0);
  assert_int_equal(amqp_frame_parse(max_size, sizeof max_size, UINT32_MAX, &f), -AMQP_FRAME_ERROR);

  uint8_t bad_end[sizeof frame];
  memcpy(bad_end, frame, sizeof frame);
  bad_end[sizeof frame - 1] = 0xCD;
  assert_int_equal(amqp_frame_parse(bad_end, sizeof bad_end, 0, &f), -AMQP_FRAME_ERROR);

  uint8_t bad_type[sizeof frame];
  memcpy(bad_type, frame, sizeof frame);
  bad_type[0] = 4;
  assert_int_equal(amqp_frame_parse(bad_type, sizeof bad_type, 0, &f), -AMQP_FRAME_ERROR);
  /* The protocol header is not a frame. */
  assert_int_equal(amqp_frame_parse(AMQP_PROTOCOL_HEADER, 8, 0, &f), -AMQP_FRAME_ERROR);
}

static void test_frame_heartbeat_and_sequence(void **state) {
  (void)state;
  amqp_buf_t buf = {0};
  amqp_encode_heartbeat(&buf);
  static const uint8_t hb[] = {8, 0, 0, 0, 0, 0, 0, 0xCE};
  assert_int_equal(buf.len, sizeof hb);
  assert_memory_equal(buf.data, hb, sizeof hb);

  /* Several frames back to back are consumed one at a time. */
  amqp_method_t m = {.id = AMQP_BASIC_ACK};
  m.u.basic_ack.delivery_tag = 42;
  m.u.basic_ack.multiple = true;
  amqp_encode_method(&buf, 3, &m);
  amqp_encode_heartbeat(&buf);
  size_t off = 0;
  uint8_t types[3];
  int n = 0;
  while (off < buf.len) {
    amqp_frame_t f;
    long used = amqp_frame_parse(buf.data + off, buf.len - off, AMQP_FRAME_MIN_SIZE, &f);
    assert_true(used > 0);
    types[n++] = f.type;
    if (f.type == AMQP_FRAME_METHOD) {
      amqp_method_t d;
      assert_int_equal(amqp_method_decode(f.payload, f.size, &d), 0);
      assert_int_equal(d.id, AMQP_BASIC_ACK);
      assert_true(d.u.basic_ack.delivery_tag == 42);
      assert_true(d.u.basic_ack.multiple);
    } else {
      assert_int_equal(f.size, 0);
      assert_int_equal(f.channel, 0);
    }
    off += (size_t)used;
  }
  assert_int_equal(n, 3);
  assert_int_equal(types[0], AMQP_FRAME_HEARTBEAT);
  assert_int_equal(types[1], AMQP_FRAME_METHOD);
  assert_int_equal(types[2], AMQP_FRAME_HEARTBEAT);
  amqp_buf_free(&buf);
}

/* ---- Field tables ------------------------------------------------------------------------- */

/* One field of every type, written by hand from RabbitMQ's field-table grammar. */
static const uint8_t ALL_TYPES[] = {
  1, 't', 't', 1,
  1, 'b', 'b', 0x80,
  1, 'B', 'B', 0xFF,
  1, 's', 's', 0x80, 0x00,
  1, 'u', 'u', 0xFF, 0xFE,
  1, 'I', 'I', 0x80, 0, 0, 1,
  1, 'i', 'i', 0xFF, 0xFF, 0xFF, 0xFE,
  1, 'l', 'l', 0x80, 0, 0, 0, 0, 0, 0, 2,
  1, 'f', 'f', 0x3F, 0xC0, 0, 0,
  1, 'd', 'd', 0x40, 0x09, 0x21, 0xFB, 0x54, 0x44, 0x2D, 0x18,
  1, 'D', 'D', 2, 0, 0, 0x30, 0x39,
  1, 'S', 'S', 0, 0, 0, 3, 'a', 'b', 'c',
  1, 'x', 'x', 0, 0, 0, 2, 0x00, 0xFF,
  1, 'A', 'A', 0, 0, 0, 10, 'I', 0, 0, 0, 7, 'S', 0, 0, 0, 0,
  1, 'T', 'T', 0, 0, 0, 0, 0x65, 0, 0, 0,
  1, 'F', 'F', 0, 0, 0, 7, 1, 'k', 'V', 1, 'n', 't', 0,
  1, 'V', 'V',
  0, 'S', 0, 0, 0, 0,   /* an empty key is legal */
};

static void assert_reencodes_exactly(amqp_bytes_t raw) {
  amqp_table_t t;
  assert_int_equal(amqp_table_parse(raw, &t), 0);
  amqp_buf_t buf = {0};
  amqp_table_encode(&buf, &t);
  assert_int_equal(buf.len, raw.len + 4);
  assert_int_equal(amqp_get_u32(buf.data), raw.len);
  if (raw.len) assert_memory_equal(buf.data + 4, raw.ptr, raw.len);
  amqp_buf_free(&buf);
  amqp_table_free(&t);
}

static void test_table_every_type(void **state) {
  (void)state;
  amqp_bytes_t raw = BYTES(ALL_TYPES);
  assert_int_equal(amqp_table_validate(raw), 0);
  amqp_table_t t;
  assert_int_equal(amqp_table_parse(raw, &t), 0);
  assert_int_equal(t.n, 18);
  int64_t n;
  const amqp_value_t *v;
  assert_true(amqp_table_get(&t, "t")->v.b);
  assert_true(amqp_value_int(amqp_table_get(&t, "b"), &n) && n == -128);
  assert_true(amqp_value_int(amqp_table_get(&t, "B"), &n) && n == 255);
  assert_true(amqp_value_int(amqp_table_get(&t, "s"), &n) && n == -32768);
  assert_true(amqp_value_int(amqp_table_get(&t, "u"), &n) && n == 65534);
  assert_true(amqp_value_int(amqp_table_get(&t, "I"), &n) && n == -2147483647);
  assert_true(amqp_value_int(amqp_table_get(&t, "i"), &n) && n == 4294967294);
  assert_true(amqp_value_int(amqp_table_get(&t, "l"), &n) && n == INT64_MIN + 2);
  assert_true(amqp_value_int(amqp_table_get(&t, "T"), &n) && n == 0x65000000);
  assert_true(amqp_table_get(&t, "f")->v.f == 1.5f);
  assert_true(amqp_table_get(&t, "d")->v.d > 3.14159 && amqp_table_get(&t, "d")->v.d < 3.1416);
  v = amqp_table_get(&t, "D");
  assert_int_equal(v->v.dec.scale, 2);
  assert_int_equal(v->v.dec.value, 12345);
  assert_true(amqp_bytes_eq_cstr(amqp_table_get(&t, "S")->v.str, "abc"));
  v = amqp_table_get(&t, "x");
  assert_int_equal(v->type, 'x');
  assert_int_equal(v->v.str.len, 2);
  v = amqp_table_get(&t, "A");
  assert_int_equal(v->v.array.n, 2);
  assert_int_equal(v->v.array.items[0].type, 'I');
  assert_int_equal(v->v.array.items[0].v.i, 7);
  assert_int_equal(v->v.array.items[1].type, 'S');
  v = amqp_table_get(&t, "F");
  assert_int_equal(v->v.table.n, 2);
  assert_int_equal(amqp_table_get(&v->v.table, "k")->type, 'V');
  assert_false(amqp_table_get(&v->v.table, "n")->v.b);
  assert_int_equal(amqp_table_get(&t, "V")->type, 'V');
  assert_non_null(amqp_table_get(&t, ""));
  assert_null(amqp_table_get(&t, "missing"));
  assert_false(amqp_value_int(amqp_table_get(&t, "S"), &n));
  assert_false(amqp_value_int(amqp_table_get(&t, "t"), &n));
  amqp_table_free(&t);

  assert_reencodes_exactly(raw);
  /* Each field alone also round-trips byte-exact. */
  for (size_t off = 0; off < sizeof ALL_TYPES;) {
    /* The shortest prefix that parses is exactly one field. */
    size_t end = off + 1;
    for (;;) {
      amqp_table_t one;
      if (amqp_table_parse((amqp_bytes_t){ALL_TYPES + off, end - off}, &one) == 0) {
        size_t n = one.n;
        amqp_table_free(&one);
        assert_int_equal(n, 1);
        break;
      }
      end++;
      assert_true(end <= sizeof ALL_TYPES);
    }
    assert_reencodes_exactly((amqp_bytes_t){ALL_TYPES + off, end - off});
    off = end;
  }
  assert_reencodes_exactly(AMQP_BYTES_EMPTY);
}

/* Wraps inner content `depth` times: k -> F(k -> F(... inner)). */
static void build_nested(amqp_buf_t *out, int depth, bool use_arrays) {
  amqp_buf_t cur = {0};
  amqp_buf_append(&cur, "\x01kV", 3);
  for (int levels = 0; levels < depth;) {
    amqp_buf_t next = {0};
    if (use_arrays && depth - levels >= 2 && levels % 3 == 1) {
      /* An array holding a table: two levels (arrays carry values without keys). */
      amqp_buf_append(&next, "\x01" "a" "A", 3);
      amqp_buf_put_u32(&next, (uint32_t)(cur.len + 5));
      amqp_buf_put_u8(&next, 'F');
      amqp_buf_put_longstr(&next, (amqp_bytes_t){cur.data, cur.len});
      levels += 2;
    } else {
      levels++;
      amqp_buf_append(&next, "\x01kF", 3);
      amqp_buf_put_longstr(&next, (amqp_bytes_t){cur.data, cur.len});
    }
    amqp_buf_free(&cur);
    cur = next;
  }
  *out = cur;
}

static void test_table_nesting(void **state) {
  (void)state;
  amqp_buf_t b;
  amqp_table_t t;
  build_nested(&b, AMQP_TABLE_MAX_DEPTH, false);
  assert_int_equal(amqp_table_parse((amqp_bytes_t){b.data, b.len}, &t), 0);
  amqp_table_free(&t);
  assert_reencodes_exactly((amqp_bytes_t){b.data, b.len});
  amqp_buf_free(&b);

  build_nested(&b, AMQP_TABLE_MAX_DEPTH + 1, false);
  assert_int_equal(amqp_table_parse((amqp_bytes_t){b.data, b.len}, &t), -AMQP_SYNTAX_ERROR);
  assert_int_equal(amqp_table_validate((amqp_bytes_t){b.data, b.len}), -AMQP_SYNTAX_ERROR);
  amqp_buf_free(&b);

  build_nested(&b, AMQP_TABLE_MAX_DEPTH, true);
  assert_int_equal(amqp_table_parse((amqp_bytes_t){b.data, b.len}, &t), 0);
  amqp_table_free(&t);
  assert_reencodes_exactly((amqp_bytes_t){b.data, b.len});
  amqp_buf_free(&b);
  build_nested(&b, AMQP_TABLE_MAX_DEPTH + 1, true);
  assert_int_equal(amqp_table_parse((amqp_bytes_t){b.data, b.len}, &t), -AMQP_SYNTAX_ERROR);
  amqp_buf_free(&b);

  /* Arrays of arrays and tables, mixed. */
  static const uint8_t mixed[] = {
    1, 'a', 'A', 0, 0, 0, 21,
      'A', 0, 0, 0, 7, 'b', 1, 'A', 0, 0, 0, 0,
      'F', 0, 0, 0, 4, 1, 'z', 't', 1,
    1, 'e', 'A', 0, 0, 0, 0,
    1, 'f', 'F', 0, 0, 0, 0,
  };
  assert_int_equal(amqp_table_parse(BYTES(mixed), &t), 0);
  const amqp_value_t *a = amqp_table_get(&t, "a");
  assert_int_equal(a->v.array.n, 2);
  assert_int_equal(a->v.array.items[0].v.array.n, 2);
  assert_int_equal(a->v.array.items[0].v.array.items[1].v.array.n, 0);
  assert_true(amqp_table_get(&a->v.array.items[1].v.table, "z")->v.b);
  amqp_table_free(&t);
  assert_reencodes_exactly(BYTES(mixed));
}

static void test_table_malformed(void **state) {
  (void)state;
  amqp_table_t t;
  /* Every strict prefix of ALL_TYPES either fails or ends exactly on a field boundary. */
  for (size_t len = 0; len < sizeof ALL_TYPES; len++) {
    int rc = amqp_table_parse((amqp_bytes_t){ALL_TYPES, len}, &t);
    assert_int_equal(rc, amqp_table_validate((amqp_bytes_t){ALL_TYPES, len}));
    if (rc == 0) amqp_table_free(&t);
  }
  static const uint8_t key_past_end[] = {5, 'a', 'b'};
  assert_int_equal(amqp_table_parse(BYTES(key_past_end), &t), -AMQP_SYNTAX_ERROR);
  static const uint8_t no_type[] = {1, 'a'};
  assert_int_equal(amqp_table_parse(BYTES(no_type), &t), -AMQP_SYNTAX_ERROR);
  static const uint8_t unknown_type[] = {1, 'a', 'U', 0, 1};
  assert_int_equal(amqp_table_parse(BYTES(unknown_type), &t), -AMQP_SYNTAX_ERROR);
  static const uint8_t short_int[] = {1, 'a', 'I', 0, 1};
  assert_int_equal(amqp_table_parse(BYTES(short_int), &t), -AMQP_SYNTAX_ERROR);
  static const uint8_t str_past_end[] = {1, 'a', 'S', 0, 0, 0, 5, 'x'};
  assert_int_equal(amqp_table_parse(BYTES(str_past_end), &t), -AMQP_SYNTAX_ERROR);
  static const uint8_t nested_past_end[] = {1, 'a', 'F', 0, 0, 0, 9, 1, 'k', 'V'};
  assert_int_equal(amqp_table_parse(BYTES(nested_past_end), &t), -AMQP_SYNTAX_ERROR);
  /* Junk inside a nested table (a key with no type) is malformed, not skipped. */
  static const uint8_t nested_junk[] = {1, 'a', 'F', 0, 0, 0, 2, 1, 'k'};
  assert_int_equal(amqp_table_parse(BYTES(nested_junk), &t), -AMQP_SYNTAX_ERROR);
  /* Truncated value inside an array, after good items (exercises cleanup of partial arrays). */
  static const uint8_t array_bad[] = {1, 'a', 'A', 0, 0, 0, 8, 'F', 0, 0, 0, 0, 'l', 0, 0};
  assert_int_equal(amqp_table_parse(BYTES(array_bad), &t), -AMQP_SYNTAX_ERROR);
  /* Failure after several good fields with allocations. */
  static const uint8_t late_bad[] = {1, 'a', 'F', 0, 0, 0, 3, 1, 'k', 'V', 1, 'b', 'A', 0, 0, 0, 1, 'V', 1, 'c', '?'};
  assert_int_equal(amqp_table_parse(BYTES(late_bad), &t), -AMQP_SYNTAX_ERROR);
  assert_null(t.fields);
  assert_int_equal(t.n, 0);
}

static void test_table_bool_normalised(void **state) {
  (void)state;
  /* RabbitMQ reads any non-zero bool octet as true; re-encoding writes the canonical 1. */
  static const uint8_t odd_bool[] = {1, 'b', 't', 7};
  amqp_table_t t;
  assert_int_equal(amqp_table_parse(BYTES(odd_bool), &t), 0);
  assert_true(amqp_table_get(&t, "b")->v.b);
  amqp_buf_t buf = {0};
  amqp_table_encode(&buf, &t);
  static const uint8_t want[] = {0, 0, 0, 4, 1, 'b', 't', 1};
  assert_int_equal(buf.len, sizeof want);
  assert_memory_equal(buf.data, want, sizeof want);
  amqp_buf_free(&buf);
  amqp_table_free(&t);
}

static void test_table_equality(void **state) {
  (void)state;
  static const uint8_t ab[] = {1, 'a', 'l', 0, 0, 0, 0, 0, 0, 0, 1, 1, 'b', 'S', 0, 0, 0, 1, 'x'};
  static const uint8_t ba[] = {1, 'b', 'S', 0, 0, 0, 1, 'x', 1, 'a', 'l', 0, 0, 0, 0, 0, 0, 0, 1};
  static const uint8_t a_int[] = {1, 'a', 'I', 0, 0, 0, 1, 1, 'b', 'S', 0, 0, 0, 1, 'x'};
  static const uint8_t a_two[] = {1, 'a', 'l', 0, 0, 0, 0, 0, 0, 0, 2, 1, 'b', 'S', 0, 0, 0, 1, 'x'};
  static const uint8_t only_a[] = {1, 'a', 'l', 0, 0, 0, 0, 0, 0, 0, 1};
  static const uint8_t nested1[] = {1, 'n', 'F', 0, 0, 0, 8, 1, 'p', 't', 1, 1, 'q', 't', 0};
  static const uint8_t nested2[] = {1, 'n', 'F', 0, 0, 0, 8, 1, 'q', 't', 0, 1, 'p', 't', 1};
  static const uint8_t dup12[] = {1, 'k', 'b', 1, 1, 'k', 'b', 2};
  static const uint8_t dup21[] = {1, 'k', 'b', 2, 1, 'k', 'b', 1};
  static const uint8_t arr1[] = {1, 'r', 'A', 0, 0, 0, 4, 'b', 1, 'b', 2};
  static const uint8_t arr2[] = {1, 'r', 'A', 0, 0, 0, 4, 'b', 2, 'b', 1};
  struct { const uint8_t *a; size_t alen; const uint8_t *b; size_t blen; bool equal; } cases[] = {
    {ab, sizeof ab, ba, sizeof ba, true},
    {ab, sizeof ab, a_int, sizeof a_int, false},   /* same number, different type */
    {ab, sizeof ab, a_two, sizeof a_two, false},
    {ab, sizeof ab, only_a, sizeof only_a, false},
    {nested1, sizeof nested1, nested2, sizeof nested2, true},
    {arr1, sizeof arr1, arr2, sizeof arr2, false},   /* arrays are ordered */
    {arr1, sizeof arr1, arr1, sizeof arr1, true},
    {dup12, sizeof dup12, dup12, sizeof dup12, true},
    {dup12, sizeof dup12, dup21, sizeof dup21, false},   /* stable key sort keeps duplicates' order */
    {ALL_TYPES, sizeof ALL_TYPES, ALL_TYPES, sizeof ALL_TYPES, true},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    amqp_table_t x, y;
    assert_int_equal(amqp_table_parse((amqp_bytes_t){cases[i].a, cases[i].alen}, &x), 0);
    assert_int_equal(amqp_table_parse((amqp_bytes_t){cases[i].b, cases[i].blen}, &y), 0);
    assert_int_equal(amqp_table_equal(&x, &y), cases[i].equal);
    assert_int_equal(amqp_table_equal(&y, &x), cases[i].equal);
    amqp_table_free(&x);
    amqp_table_free(&y);
  }
  amqp_table_t empty1 = {0}, empty2 = {0};
  assert_true(amqp_table_equal(&empty1, &empty2));
}

static void test_table_writer(void **state) {
  (void)state;
  amqp_buf_t buf = {0};
  amqp_buf_put_u8(&buf, 0xEE);   /* the table need not start at offset 0 */
  size_t pos = amqp_table_open(&buf);
  amqp_table_put_longstr(&buf, "product", AMQP_BYTES_CSTR("Warren"));
  size_t caps = amqp_table_put_table_open(&buf, "capabilities");
  amqp_table_put_bool(&buf, "publisher_confirms", true);
  amqp_table_put_bool(&buf, "basic.nack", false);
  amqp_table_close(&buf, caps);
  amqp_table_put_i64(&buf, "x-count", -5);
  amqp_table_put_timestamp(&buf, "ts", 1700000000);
  amqp_table_put_key(&buf, "dec");
  amqp_value_t dec = {.type = 'D', .v.dec = {3, 1500}};
  amqp_value_encode(&buf, &dec);
  amqp_table_close(&buf, pos);

  assert_int_equal(amqp_get_u32(buf.data + 1), buf.len - 5);
  amqp_bytes_t content = {buf.data + 5, buf.len - 5};
  amqp_table_t t;
  assert_int_equal(amqp_table_parse(content, &t), 0);
  assert_int_equal(t.n, 5);
  assert_true(amqp_bytes_eq_cstr(amqp_table_get(&t, "product")->v.str, "Warren"));
  const amqp_value_t *c = amqp_table_get(&t, "capabilities");
  assert_int_equal(c->type, 'F');
  assert_true(amqp_table_get(&c->v.table, "publisher_confirms")->v.b);
  assert_false(amqp_table_get(&c->v.table, "basic.nack")->v.b);
  assert_int_equal(amqp_table_get(&t, "x-count")->type, 'l');
  assert_int_equal(amqp_table_get(&t, "x-count")->v.i, -5);
  assert_int_equal(amqp_table_get(&t, "ts")->type, 'T');
  assert_int_equal(amqp_table_get(&t, "ts")->v.u, 1700000000);
  assert_int_equal(amqp_table_get(&t, "dec")->v.dec.value, 1500);
  amqp_table_free(&t);
  assert_reencodes_exactly(content);
  amqp_buf_free(&buf);
}

/* ---- Content header and body -------------------------------------------------------------- */

static void test_content_header_all_properties(void **state) {
  (void)state;
  amqp_props_t p;
  memset(&p, 0, sizeof p);
  p.flags = AMQP_P_ALL;
  p.content_type = AMQP_BYTES_CSTR("application/json");
  p.content_encoding = AMQP_BYTES_CSTR("gzip");
  p.headers = BYTES(SAMPLE_TABLE);
  p.delivery_mode = 2;
  p.priority = 9;
  p.correlation_id = AMQP_BYTES_CSTR("corr");
  p.reply_to = AMQP_BYTES_CSTR("amq.rabbitmq.reply-to");
  p.expiration = AMQP_BYTES_CSTR("60000");
  p.message_id = AMQP_BYTES_CSTR("mid");
  p.timestamp = 0x8000000000000001ull;
  p.type = AMQP_BYTES_CSTR("t");
  p.user_id = AMQP_BYTES_CSTR("guest");
  p.app_id = AMQP_BYTES_CSTR("app");
  p.cluster_id = AMQP_BYTES_CSTR("cl");

  amqp_buf_t raw = {0};
  amqp_props_encode(&raw, &p);
  assert_int_equal(amqp_get_u16(raw.data), 0xFFFC);
  amqp_buf_t frame = {0};
  amqp_encode_content_header(&frame, 9, AMQP_CLASS_BASIC, 123456789012ull, raw.data, raw.len);
  amqp_frame_t f = one_frame(&frame, 0);
  assert_int_equal(f.type, AMQP_FRAME_HEADER);
  assert_int_equal(f.channel, 9);
  assert_int_equal(f.size, 12 + raw.len);

  uint16_t class_id;
  uint64_t body_size;
  amqp_bytes_t raw_props;
  amqp_props_t d;
  assert_int_equal(amqp_content_header_decode(f.payload, f.size, &class_id, &body_size, &raw_props, &d), 0);
  assert_int_equal(class_id, 60);
  assert_true(body_size == 123456789012ull);
  assert_bytes_equal(raw_props, (amqp_bytes_t){raw.data, raw.len});
  assert_int_equal(d.flags, p.flags);
  assert_bytes_equal(d.content_type, p.content_type);
  assert_bytes_equal(d.content_encoding, p.content_encoding);
  assert_bytes_equal(d.headers, p.headers);
  assert_int_equal(d.delivery_mode, 2);
  assert_int_equal(d.priority, 9);
  assert_bytes_equal(d.correlation_id, p.correlation_id);
  assert_bytes_equal(d.reply_to, p.reply_to);
  assert_bytes_equal(d.expiration, p.expiration);
  assert_bytes_equal(d.message_id, p.message_id);
  assert_true(d.timestamp == p.timestamp);
  assert_bytes_equal(d.type, p.type);
  assert_bytes_equal(d.user_id, p.user_id);
  assert_bytes_equal(d.app_id, p.app_id);
  assert_bytes_equal(d.cluster_id, p.cluster_id);

  /* Re-encoding the decoded properties reproduces the raw bytes. */
  amqp_buf_t again = {0};
  amqp_props_encode(&again, &d);
  assert_bytes_equal((amqp_bytes_t){again.data, again.len}, raw_props);
  amqp_buf_free(&again);

  /* Each property alone: flag word + just that field. */
  for (int bit = 15; bit >= 2; bit--) {
    amqp_props_t one = p, back;
    one.flags = (uint16_t)(1u << bit);
    amqp_buf_t b = {0};
    amqp_props_encode(&b, &one);
    assert_int_equal(amqp_props_decode(b.data, b.len, &back), 0);
    assert_int_equal(back.flags, one.flags);
    amqp_buf_t b2 = {0};
    amqp_props_encode(&b2, &back);
    assert_bytes_equal((amqp_bytes_t){b.data, b.len}, (amqp_bytes_t){b2.data, b2.len});
    amqp_buf_free(&b);
    amqp_buf_free(&b2);
  }
  amqp_buf_free(&raw);
  amqp_buf_free(&frame);
}

static void test_content_header_golden(void **state) {
  (void)state;
  /* Hand-written from the spec's basic property list, in flag order 15..2. */
  static const uint8_t payload[] = {
    0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,   /* class 60, weight 0, body size 256 */
    0xFF, 0xFC,
    1, 'c',                                      /* content-type */
    1, 'e',                                      /* content-encoding */
    0, 0, 0, 4, 1, 'h', 't', 1,                  /* headers */
    2,                                           /* delivery-mode */
    7,                                           /* priority */
    1, 'C',                                      /* correlation-id */
    1, 'R',                                      /* reply-to */
    1, 'X',                                      /* expiration */
    1, 'M',                                      /* message-id */
    0, 0, 0, 0, 0x65, 0x43, 0x21, 0x00,          /* timestamp */
    1, 'T',                                      /* type */
    1, 'U',                                      /* user-id */
    1, 'A',                                      /* app-id */
    1, 'L',                                      /* cluster-id */
  };
  uint16_t class_id;
  uint64_t body_size;
  amqp_bytes_t raw;
  amqp_props_t p;
  assert_int_equal(amqp_content_header_decode(payload, sizeof payload, &class_id, &body_size, &raw, &p), 0);
  assert_true(body_size == 256);
  assert_ptr_equal(raw.ptr, payload + 12);
  assert_int_equal(raw.len, sizeof payload - 12);
  assert_true(amqp_bytes_eq_cstr(p.content_type, "c"));
  assert_true(amqp_bytes_eq_cstr(p.content_encoding, "e"));
  assert_int_equal(p.headers.len, 4);
  assert_ptr_equal(p.headers.ptr, payload + 22);
  assert_int_equal(p.delivery_mode, 2);
  assert_int_equal(p.priority, 7);
  assert_true(amqp_bytes_eq_cstr(p.correlation_id, "C"));
  assert_true(amqp_bytes_eq_cstr(p.reply_to, "R"));
  assert_true(amqp_bytes_eq_cstr(p.expiration, "X"));
  assert_true(amqp_bytes_eq_cstr(p.message_id, "M"));
  assert_true(p.timestamp == 0x65432100);
  assert_true(amqp_bytes_eq_cstr(p.type, "T"));
  assert_true(amqp_bytes_eq_cstr(p.user_id, "U"));
  assert_true(amqp_bytes_eq_cstr(p.app_id, "A"));
  assert_true(amqp_bytes_eq_cstr(p.cluster_id, "L"));

  amqp_buf_t frame = {0};
  amqp_encode_content_header(&frame, 3, class_id, body_size, raw.ptr, raw.len);
  assert_int_equal(frame.len, sizeof payload + 8);
  assert_memory_equal(frame.data + 7, payload, sizeof payload);
  amqp_buf_free(&frame);

  /* Only some properties: delivery-mode and timestamp. */
  static const uint8_t some[] = {0x10, 0x40, 1, 0, 0, 0, 0, 0, 0, 0, 9};
  assert_int_equal(amqp_props_decode(some, sizeof some, &p), 0);
  assert_int_equal(p.flags, AMQP_P_DELIVERY_MODE | AMQP_P_TIMESTAMP);
  assert_int_equal(p.delivery_mode, 1);
  assert_true(p.timestamp == 9);
  assert_int_equal(p.content_type.len, 0);
}

static void test_content_header_zero_body_and_errors(void **state) {
  (void)state;
  /* Minimal header: no properties, zero-size body. */
  static const uint8_t empty[] = {0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  uint16_t class_id;
  uint64_t body_size;
  amqp_bytes_t raw;
  amqp_props_t p;
  assert_int_equal(amqp_content_header_decode(empty, sizeof empty, &class_id, &body_size, &raw, &p), 0);
  assert_int_equal(class_id, 60);
  assert_true(body_size == 0);
  assert_int_equal(raw.len, 2);
  assert_int_equal(p.flags, 0);

  assert_int_equal(amqp_content_header_decode(empty, 13, &class_id, &body_size, &raw, &p), -AMQP_FRAME_ERROR);
  static const uint8_t continuation[] = {0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  assert_int_equal(amqp_content_header_decode(continuation, sizeof continuation, &class_id, &body_size, &raw, &p),
                   -AMQP_SYNTAX_ERROR);
  /* content-type flagged but missing */
  static const uint8_t missing[] = {0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0};
  assert_int_equal(amqp_content_header_decode(missing, sizeof missing, &class_id, &body_size, &raw, &p),
                   -AMQP_SYNTAX_ERROR);
  /* headers flagged with a malformed table */
  static const uint8_t bad_headers[] = {0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0, 0, 0, 0, 2, 1, 'k'};
  assert_int_equal(amqp_content_header_decode(bad_headers, sizeof bad_headers, &class_id, &body_size, &raw, &p),
                   -AMQP_SYNTAX_ERROR);
  /* timestamp flagged but truncated */
  static const uint8_t short_ts[] = {0x00, 0x40, 0, 0, 0, 1};
  assert_int_equal(amqp_props_decode(short_ts, sizeof short_ts, &p), -AMQP_SYNTAX_ERROR);
  assert_int_equal(amqp_props_decode(short_ts, 1, &p), -AMQP_SYNTAX_ERROR);
  /* Non-basic class: properties are left alone for the caller to reject. */
  static const uint8_t other[] = {0, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};
  assert_int_equal(amqp_content_header_decode(other, sizeof other, &class_id, &body_size, &raw, &p), 0);
  assert_int_equal(class_id, 50);
}

static void check_body_split(size_t len, uint32_t frame_max, size_t want_frames) {
  uint8_t *body = malloc(len ? len : 1);
  for (size_t i = 0; i < len; i++) body[i] = (uint8_t)(i * 31 + 7);
  amqp_buf_t buf = {0};
  amqp_encode_body(&buf, 2, body, len, frame_max);
  uint32_t effective_max = frame_max == 0 ? 0 : frame_max <= 8 ? AMQP_FRAME_MIN_SIZE : frame_max;
  size_t off = 0, got = 0, frames = 0;
  while (off < buf.len) {
    amqp_frame_t f;
    long used = amqp_frame_parse(buf.data + off, buf.len - off, effective_max, &f);
    assert_true(used > 0);
    assert_int_equal(f.type, AMQP_FRAME_BODY);
    assert_int_equal(f.channel, 2);
    assert_true(f.size > 0);
    if (effective_max) assert_true(f.size + 8 <= effective_max);
    assert_memory_equal(f.payload, body + got, f.size);
    got += f.size;
    off += (size_t)used;
    frames++;
  }
  assert_int_equal(got, len);
  assert_int_equal(frames, want_frames);
  amqp_buf_free(&buf);
  free(body);
}

static void test_body_splitting(void **state) {
  (void)state;
  check_body_split(0, 4096, 0);
  check_body_split(1, 4096, 1);
  check_body_split(4088, 4096, 1);   /* exactly one full frame */
  check_body_split(4089, 4096, 2);
  check_body_split(4088 * 3, 4096, 3);
  check_body_split(4088 * 3 + 1, 4096, 4);
  check_body_split(100000, 0, 1);    /* no limit */
  check_body_split(100, 9, 100);     /* one byte per frame */
  check_body_split(5000, 4, 2);      /* nonsense frame_max falls back to 4096 */
}

/* ---- Small pieces ------------------------------------------------------------------------- */

static void test_buffer_and_bytes(void **state) {
  (void)state;
  amqp_buf_t b = {0};
  amqp_buf_put_u8(&b, 0x01);
  amqp_buf_put_u16(&b, 0x0203);
  amqp_buf_put_u32(&b, 0x04050607);
  amqp_buf_put_u64(&b, 0x08090A0B0C0D0E0Full);
  static const uint8_t want[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  assert_int_equal(b.len, sizeof want);
  assert_memory_equal(b.data, want, sizeof want);
  b.len = 0;
  char longname[300];
  memset(longname, 'n', sizeof longname - 1);
  longname[sizeof longname - 1] = 0;
  amqp_buf_put_shortstr(&b, AMQP_BYTES_CSTR(longname));
  assert_int_equal(b.len, 256);
  assert_int_equal(b.data[0], 255);
  b.len = 0;
  amqp_buf_put_longstr(&b, AMQP_BYTES_CSTR(longname));
  assert_int_equal(amqp_get_u32(b.data), 299);
  for (int i = 0; i < 100000; i++) amqp_buf_put_u8(&b, (uint8_t)i);   /* growth */
  assert_int_equal(b.len, 4 + 299 + 100000);
  amqp_buf_free(&b);
  assert_null(b.data);
  amqp_buf_free(&b);   /* idempotent */

  assert_true(amqp_bytes_eq(AMQP_BYTES_CSTR("abc"), AMQP_BYTES_CSTR("abc")));
  assert_false(amqp_bytes_eq(AMQP_BYTES_CSTR("abc"), AMQP_BYTES_CSTR("abd")));
  assert_false(amqp_bytes_eq(AMQP_BYTES_CSTR("ab"), AMQP_BYTES_CSTR("abc")));
  assert_true(amqp_bytes_eq(AMQP_BYTES_EMPTY, AMQP_BYTES_CSTR("")));
  assert_true(amqp_bytes_eq_cstr(AMQP_BYTES_CSTR("amq.direct"), "amq.direct"));
}

static void test_reply_names(void **state) {
  (void)state;
  assert_string_equal(amqp_reply_name(AMQP_NOT_FOUND), "NOT_FOUND");
  assert_string_equal(amqp_reply_name(AMQP_PRECONDITION_FAILED), "PRECONDITION_FAILED");
  assert_string_equal(amqp_reply_name(AMQP_ACCESS_REFUSED), "ACCESS_REFUSED");
  assert_string_equal(amqp_reply_name(AMQP_RESOURCE_LOCKED), "RESOURCE_LOCKED");
  assert_string_equal(amqp_reply_name(AMQP_NO_ROUTE), "NO_ROUTE");
  assert_string_equal(amqp_reply_name(AMQP_FRAME_ERROR), "FRAME_ERROR");
  assert_string_equal(amqp_reply_name(AMQP_COMMAND_INVALID), "COMMAND_INVALID");
  assert_string_equal(amqp_reply_name(AMQP_NOT_IMPLEMENTED), "NOT_IMPLEMENTED");
  assert_string_equal(amqp_reply_name(999), "UNKNOWN");
  static const int all[] = {200, 311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530, 540, 541};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) assert_string_not_equal(amqp_reply_name(all[i]), "UNKNOWN");
  assert_true(amqp_reply_is_connection_error(AMQP_FRAME_ERROR));
  assert_true(amqp_reply_is_connection_error(AMQP_CONNECTION_FORCED));
  assert_false(amqp_reply_is_connection_error(AMQP_NOT_FOUND));
  assert_false(amqp_reply_is_connection_error(AMQP_PRECONDITION_FAILED));
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_every_method_round_trips),
    cmocka_unit_test(test_method_has_content),
    cmocka_unit_test(test_golden_queue_declare),
    cmocka_unit_test(test_golden_exchange_declare_bits),
    cmocka_unit_test(test_golden_basic_deliver_and_nack),
    cmocka_unit_test(test_golden_tune_and_start_ok),
    cmocka_unit_test(test_method_malformed),
    cmocka_unit_test(test_frame_parse_edges),
    cmocka_unit_test(test_frame_heartbeat_and_sequence),
    cmocka_unit_test(test_table_every_type),
    cmocka_unit_test(test_table_nesting),
    cmocka_unit_test(test_table_malformed),
    cmocka_unit_test(test_table_bool_normalised),
    cmocka_unit_test(test_table_equality),
    cmocka_unit_test(test_table_writer),
    cmocka_unit_test(test_content_header_all_properties),
    cmocka_unit_test(test_content_header_golden),
    cmocka_unit_test(test_content_header_zero_body_and_errors),
    cmocka_unit_test(test_body_splitting),
    cmocka_unit_test(test_buffer_and_bytes),
    cmocka_unit_test(test_reply_names),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
