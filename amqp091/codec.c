/* codec.c - AMQP 0-9-1 frames, methods and content on the wire.
 *
 * Data flow: the connection layer hands raw socket bytes to amqp_frame_parse(), which slices off
 * one frame at a time without copying. Method payloads go to amqp_method_decode(), content
 * header payloads to amqp_content_header_decode(); body payloads are used as they are. Replies
 * are appended to an amqp_buf_t by the amqp_encode_* functions and written out by the caller.
 *
 * Methods are described by data, not code: every method of RabbitMQ's 0-9-1 definition has one
 * row in method_descs[] listing its argument types and where each lives in amqp_method_t. One
 * decoder and one encoder walk those rows, so decoding and encoding cannot drift apart and bit
 * packing is handled in exactly one place. Bit packing rule (spec 4.2.5.2): consecutive bit
 * arguments share octets, first bit in the least significant position, a new octet after 8
 * bits or after any non-bit argument.
 *
 * Invariants: decoders never read past the given length, never allocate and never copy: every
 * amqp_bytes_t they return points into the caller's buffer. Every table argument and the headers
 * property is validated as a well-formed field table before it is handed out, so later code can
 * parse it without expecting failure. Errors are negated AMQP reply codes. */
#include "amqp091/codec.h"

#include <stdlib.h>
#include <string.h>

const uint8_t AMQP_PROTOCOL_HEADER[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};

/* ---- Reply codes -------------------------------------------------------------------------- */

const char *amqp_reply_name(int code) {
  switch (code) {
  case AMQP_REPLY_SUCCESS: return "REPLY_SUCCESS";
  case AMQP_CONTENT_TOO_LARGE: return "CONTENT_TOO_LARGE";
  case AMQP_NO_ROUTE: return "NO_ROUTE";
  case AMQP_NO_CONSUMERS: return "NO_CONSUMERS";
  case AMQP_CONNECTION_FORCED: return "CONNECTION_FORCED";
  case AMQP_INVALID_PATH: return "INVALID_PATH";
  case AMQP_ACCESS_REFUSED: return "ACCESS_REFUSED";
  case AMQP_NOT_FOUND: return "NOT_FOUND";
  case AMQP_RESOURCE_LOCKED: return "RESOURCE_LOCKED";
  case AMQP_PRECONDITION_FAILED: return "PRECONDITION_FAILED";
  case AMQP_FRAME_ERROR: return "FRAME_ERROR";
  case AMQP_SYNTAX_ERROR: return "SYNTAX_ERROR";
  case AMQP_COMMAND_INVALID: return "COMMAND_INVALID";
  case AMQP_CHANNEL_ERROR: return "CHANNEL_ERROR";
  case AMQP_UNEXPECTED_FRAME: return "UNEXPECTED_FRAME";
  case AMQP_RESOURCE_ERROR: return "RESOURCE_ERROR";
  case AMQP_NOT_ALLOWED: return "NOT_ALLOWED";
  case AMQP_NOT_IMPLEMENTED: return "NOT_IMPLEMENTED";
  case AMQP_INTERNAL_ERROR: return "INTERNAL_ERROR";
  default: return "UNKNOWN";
  }
}

/* The spec classes these as hard errors (connection close); the 3xx/4xx others are soft errors
 * that close only the channel, except CONNECTION_FORCED and INVALID_PATH. */
bool amqp_reply_is_connection_error(int code) {
  switch (code) {
  case AMQP_CONNECTION_FORCED: case AMQP_INVALID_PATH: case AMQP_FRAME_ERROR: case AMQP_SYNTAX_ERROR:
  case AMQP_COMMAND_INVALID: case AMQP_CHANNEL_ERROR: case AMQP_UNEXPECTED_FRAME:
  case AMQP_RESOURCE_ERROR: case AMQP_NOT_ALLOWED: case AMQP_NOT_IMPLEMENTED: case AMQP_INTERNAL_ERROR:
    return true;
  default:
    return false;
  }
}

/* ---- Frames ------------------------------------------------------------------------------- */

static bool frame_type_known(uint8_t type) {
  return type == AMQP_FRAME_METHOD || type == AMQP_FRAME_HEADER || type == AMQP_FRAME_BODY ||
         type == AMQP_FRAME_HEARTBEAT;
}

long amqp_frame_parse(const uint8_t *buf, size_t len, uint32_t frame_max, amqp_frame_t *out) {
  enum { HEADER_LEN = 7 };
  if (len < HEADER_LEN) return 0;
  uint8_t type = buf[0];
  uint32_t size = amqp_get_u32(buf + 3);
  if (!frame_type_known(type)) return -AMQP_FRAME_ERROR;
  /* Checked before the payload arrives, so a peer cannot make us buffer an oversized frame. */
  if (frame_max != 0 && (uint64_t)size + AMQP_FRAME_OVERHEAD > frame_max) return -AMQP_FRAME_ERROR;
  uint64_t total = (uint64_t)size + AMQP_FRAME_OVERHEAD;
  if (len < total) return 0;
  if (buf[HEADER_LEN + size] != AMQP_FRAME_END) return -AMQP_FRAME_ERROR;
  out->type = type;
  out->channel = amqp_get_u16(buf + 1);
  out->size = size;
  out->payload = buf + HEADER_LEN;
  return (long)total;
}

/* Starts a frame and returns the position of its size field, patched by frame_end(). */
static size_t frame_begin(amqp_buf_t *out, uint8_t type, uint16_t channel) {
  amqp_buf_put_u8(out, type);
  amqp_buf_put_u16(out, channel);
  size_t pos = out->len;
  amqp_buf_put_u32(out, 0);
  return pos;
}

static void frame_end(amqp_buf_t *out, size_t size_pos) {
  amqp_buf_patch_u32(out, size_pos, (uint32_t)(out->len - size_pos - 4));
  amqp_buf_put_u8(out, AMQP_FRAME_END);
}

void amqp_encode_heartbeat(amqp_buf_t *out) {
  frame_end(out, frame_begin(out, AMQP_FRAME_HEARTBEAT, 0));
}

/* ---- Method descriptions ------------------------------------------------------------------ */

enum arg_kind { ARG_OCTET, ARG_SHORT, ARG_LONG, ARG_LONGLONG, ARG_SHORTSTR, ARG_LONGSTR, ARG_TABLE, ARG_BIT };

typedef struct {
  uint8_t kind;       /* enum arg_kind */
  uint16_t offset;    /* of the field inside amqp_method_t */
} method_arg_t;

#define MAX_ARGS 9    /* exchange.declare has the most */
typedef struct {
  uint32_t id;
  const char *name;
  bool has_content;
  uint8_t nargs;
  method_arg_t args[MAX_ARGS];
} method_desc_t;

#define ARG(kind, member, field) {ARG_##kind, (uint16_t)offsetof(amqp_method_t, u.member.field)}
#define NOARGS(id, name) {id, name, false, 0, {{0, 0}}}
#define COUNT(...) (uint8_t)(sizeof((method_arg_t[]){__VA_ARGS__}) / sizeof(method_arg_t))
#define METHOD(id, name, ...) {id, name, false, COUNT(__VA_ARGS__), {__VA_ARGS__}}
#define CONTENT_METHOD(id, name, ...) {id, name, true, COUNT(__VA_ARGS__), {__VA_ARGS__}}

/* Sorted by id so lookups can binary-search (test_codec checks every id resolves). */
static const method_desc_t method_descs[] = {
  METHOD(AMQP_CONNECTION_START, "connection.start",
         ARG(OCTET, connection_start, version_major), ARG(OCTET, connection_start, version_minor),
         ARG(TABLE, connection_start, server_properties), ARG(LONGSTR, connection_start, mechanisms),
         ARG(LONGSTR, connection_start, locales)),
  METHOD(AMQP_CONNECTION_START_OK, "connection.start_ok",
         ARG(TABLE, connection_start_ok, client_properties), ARG(SHORTSTR, connection_start_ok, mechanism),
         ARG(LONGSTR, connection_start_ok, response), ARG(SHORTSTR, connection_start_ok, locale)),
  METHOD(AMQP_CONNECTION_SECURE, "connection.secure", ARG(LONGSTR, connection_secure, challenge)),
  METHOD(AMQP_CONNECTION_SECURE_OK, "connection.secure_ok", ARG(LONGSTR, connection_secure_ok, response)),
  METHOD(AMQP_CONNECTION_TUNE, "connection.tune",
         ARG(SHORT, connection_tune, channel_max), ARG(LONG, connection_tune, frame_max),
         ARG(SHORT, connection_tune, heartbeat)),
  METHOD(AMQP_CONNECTION_TUNE_OK, "connection.tune_ok",
         ARG(SHORT, connection_tune_ok, channel_max), ARG(LONG, connection_tune_ok, frame_max),
         ARG(SHORT, connection_tune_ok, heartbeat)),
  METHOD(AMQP_CONNECTION_OPEN, "connection.open",
         ARG(SHORTSTR, connection_open, virtual_host), ARG(SHORTSTR, connection_open, capabilities),
         ARG(BIT, connection_open, insist)),
  METHOD(AMQP_CONNECTION_OPEN_OK, "connection.open_ok", ARG(SHORTSTR, connection_open_ok, known_hosts)),
  METHOD(AMQP_CONNECTION_CLOSE, "connection.close",
         ARG(SHORT, connection_close, reply_code), ARG(SHORTSTR, connection_close, reply_text),
         ARG(SHORT, connection_close, class_id), ARG(SHORT, connection_close, method_id)),
  NOARGS(AMQP_CONNECTION_CLOSE_OK, "connection.close_ok"),
  METHOD(AMQP_CONNECTION_BLOCKED, "connection.blocked", ARG(SHORTSTR, connection_blocked, reason)),
  NOARGS(AMQP_CONNECTION_UNBLOCKED, "connection.unblocked"),
  METHOD(AMQP_CONNECTION_UPDATE_SECRET, "connection.update_secret",
         ARG(LONGSTR, connection_update_secret, new_secret), ARG(SHORTSTR, connection_update_secret, reason)),
  NOARGS(AMQP_CONNECTION_UPDATE_SECRET_OK, "connection.update_secret_ok"),

  METHOD(AMQP_CHANNEL_OPEN, "channel.open", ARG(SHORTSTR, channel_open, out_of_band)),
  METHOD(AMQP_CHANNEL_OPEN_OK, "channel.open_ok", ARG(LONGSTR, channel_open_ok, channel_id)),
  METHOD(AMQP_CHANNEL_FLOW, "channel.flow", ARG(BIT, channel_flow, active)),
  METHOD(AMQP_CHANNEL_FLOW_OK, "channel.flow_ok", ARG(BIT, channel_flow_ok, active)),
  METHOD(AMQP_CHANNEL_CLOSE, "channel.close",
         ARG(SHORT, channel_close, reply_code), ARG(SHORTSTR, channel_close, reply_text),
         ARG(SHORT, channel_close, class_id), ARG(SHORT, channel_close, method_id)),
  NOARGS(AMQP_CHANNEL_CLOSE_OK, "channel.close_ok"),

  METHOD(AMQP_EXCHANGE_DECLARE, "exchange.declare",
         ARG(SHORT, exchange_declare, ticket), ARG(SHORTSTR, exchange_declare, exchange),
         ARG(SHORTSTR, exchange_declare, type), ARG(BIT, exchange_declare, passive),
         ARG(BIT, exchange_declare, durable), ARG(BIT, exchange_declare, auto_delete),
         ARG(BIT, exchange_declare, internal), ARG(BIT, exchange_declare, nowait),
         ARG(TABLE, exchange_declare, arguments)),
  NOARGS(AMQP_EXCHANGE_DECLARE_OK, "exchange.declare_ok"),
  METHOD(AMQP_EXCHANGE_DELETE, "exchange.delete",
         ARG(SHORT, exchange_delete, ticket), ARG(SHORTSTR, exchange_delete, exchange),
         ARG(BIT, exchange_delete, if_unused), ARG(BIT, exchange_delete, nowait)),
  NOARGS(AMQP_EXCHANGE_DELETE_OK, "exchange.delete_ok"),
  METHOD(AMQP_EXCHANGE_BIND, "exchange.bind",
         ARG(SHORT, exchange_bind, ticket), ARG(SHORTSTR, exchange_bind, destination),
         ARG(SHORTSTR, exchange_bind, source), ARG(SHORTSTR, exchange_bind, routing_key),
         ARG(BIT, exchange_bind, nowait), ARG(TABLE, exchange_bind, arguments)),
  NOARGS(AMQP_EXCHANGE_BIND_OK, "exchange.bind_ok"),
  METHOD(AMQP_EXCHANGE_UNBIND, "exchange.unbind",
         ARG(SHORT, exchange_unbind, ticket), ARG(SHORTSTR, exchange_unbind, destination),
         ARG(SHORTSTR, exchange_unbind, source), ARG(SHORTSTR, exchange_unbind, routing_key),
         ARG(BIT, exchange_unbind, nowait), ARG(TABLE, exchange_unbind, arguments)),
  NOARGS(AMQP_EXCHANGE_UNBIND_OK, "exchange.unbind_ok"),

  METHOD(AMQP_QUEUE_DECLARE, "queue.declare",
         ARG(SHORT, queue_declare, ticket), ARG(SHORTSTR, queue_declare, queue),
         ARG(BIT, queue_declare, passive), ARG(BIT, queue_declare, durable),
         ARG(BIT, queue_declare, exclusive), ARG(BIT, queue_declare, auto_delete),
         ARG(BIT, queue_declare, nowait), ARG(TABLE, queue_declare, arguments)),
  METHOD(AMQP_QUEUE_DECLARE_OK, "queue.declare_ok",
         ARG(SHORTSTR, queue_declare_ok, queue), ARG(LONG, queue_declare_ok, message_count),
         ARG(LONG, queue_declare_ok, consumer_count)),
  METHOD(AMQP_QUEUE_BIND, "queue.bind",
         ARG(SHORT, queue_bind, ticket), ARG(SHORTSTR, queue_bind, queue),
         ARG(SHORTSTR, queue_bind, exchange), ARG(SHORTSTR, queue_bind, routing_key),
         ARG(BIT, queue_bind, nowait), ARG(TABLE, queue_bind, arguments)),
  NOARGS(AMQP_QUEUE_BIND_OK, "queue.bind_ok"),
  METHOD(AMQP_QUEUE_PURGE, "queue.purge",
         ARG(SHORT, queue_purge, ticket), ARG(SHORTSTR, queue_purge, queue), ARG(BIT, queue_purge, nowait)),
  METHOD(AMQP_QUEUE_PURGE_OK, "queue.purge_ok", ARG(LONG, queue_purge_ok, message_count)),
  METHOD(AMQP_QUEUE_DELETE, "queue.delete",
         ARG(SHORT, queue_delete, ticket), ARG(SHORTSTR, queue_delete, queue),
         ARG(BIT, queue_delete, if_unused), ARG(BIT, queue_delete, if_empty), ARG(BIT, queue_delete, nowait)),
  METHOD(AMQP_QUEUE_DELETE_OK, "queue.delete_ok", ARG(LONG, queue_delete_ok, message_count)),
  METHOD(AMQP_QUEUE_UNBIND, "queue.unbind",
         ARG(SHORT, queue_unbind, ticket), ARG(SHORTSTR, queue_unbind, queue),
         ARG(SHORTSTR, queue_unbind, exchange), ARG(SHORTSTR, queue_unbind, routing_key),
         ARG(TABLE, queue_unbind, arguments)),
  NOARGS(AMQP_QUEUE_UNBIND_OK, "queue.unbind_ok"),

  METHOD(AMQP_BASIC_QOS, "basic.qos",
         ARG(LONG, basic_qos, prefetch_size), ARG(SHORT, basic_qos, prefetch_count), ARG(BIT, basic_qos, global)),
  NOARGS(AMQP_BASIC_QOS_OK, "basic.qos_ok"),
  METHOD(AMQP_BASIC_CONSUME, "basic.consume",
         ARG(SHORT, basic_consume, ticket), ARG(SHORTSTR, basic_consume, queue),
         ARG(SHORTSTR, basic_consume, consumer_tag), ARG(BIT, basic_consume, no_local),
         ARG(BIT, basic_consume, no_ack), ARG(BIT, basic_consume, exclusive),
         ARG(BIT, basic_consume, nowait), ARG(TABLE, basic_consume, arguments)),
  METHOD(AMQP_BASIC_CONSUME_OK, "basic.consume_ok", ARG(SHORTSTR, basic_consume_ok, consumer_tag)),
  METHOD(AMQP_BASIC_CANCEL, "basic.cancel",
         ARG(SHORTSTR, basic_cancel, consumer_tag), ARG(BIT, basic_cancel, nowait)),
  METHOD(AMQP_BASIC_CANCEL_OK, "basic.cancel_ok", ARG(SHORTSTR, basic_cancel_ok, consumer_tag)),
  CONTENT_METHOD(AMQP_BASIC_PUBLISH, "basic.publish",
         ARG(SHORT, basic_publish, ticket), ARG(SHORTSTR, basic_publish, exchange),
         ARG(SHORTSTR, basic_publish, routing_key), ARG(BIT, basic_publish, mandatory),
         ARG(BIT, basic_publish, immediate)),
  CONTENT_METHOD(AMQP_BASIC_RETURN, "basic.return",
         ARG(SHORT, basic_return, reply_code), ARG(SHORTSTR, basic_return, reply_text),
         ARG(SHORTSTR, basic_return, exchange), ARG(SHORTSTR, basic_return, routing_key)),
  CONTENT_METHOD(AMQP_BASIC_DELIVER, "basic.deliver",
         ARG(SHORTSTR, basic_deliver, consumer_tag), ARG(LONGLONG, basic_deliver, delivery_tag),
         ARG(BIT, basic_deliver, redelivered), ARG(SHORTSTR, basic_deliver, exchange),
         ARG(SHORTSTR, basic_deliver, routing_key)),
  METHOD(AMQP_BASIC_GET, "basic.get",
         ARG(SHORT, basic_get, ticket), ARG(SHORTSTR, basic_get, queue), ARG(BIT, basic_get, no_ack)),
  CONTENT_METHOD(AMQP_BASIC_GET_OK, "basic.get_ok",
         ARG(LONGLONG, basic_get_ok, delivery_tag), ARG(BIT, basic_get_ok, redelivered),
         ARG(SHORTSTR, basic_get_ok, exchange), ARG(SHORTSTR, basic_get_ok, routing_key),
         ARG(LONG, basic_get_ok, message_count)),
  METHOD(AMQP_BASIC_GET_EMPTY, "basic.get_empty", ARG(SHORTSTR, basic_get_empty, cluster_id)),
  METHOD(AMQP_BASIC_ACK, "basic.ack",
         ARG(LONGLONG, basic_ack, delivery_tag), ARG(BIT, basic_ack, multiple)),
  METHOD(AMQP_BASIC_REJECT, "basic.reject",
         ARG(LONGLONG, basic_reject, delivery_tag), ARG(BIT, basic_reject, requeue)),
  METHOD(AMQP_BASIC_RECOVER_ASYNC, "basic.recover_async", ARG(BIT, basic_recover_async, requeue)),
  METHOD(AMQP_BASIC_RECOVER, "basic.recover", ARG(BIT, basic_recover, requeue)),
  NOARGS(AMQP_BASIC_RECOVER_OK, "basic.recover_ok"),
  METHOD(AMQP_BASIC_NACK, "basic.nack",
         ARG(LONGLONG, basic_nack, delivery_tag), ARG(BIT, basic_nack, multiple), ARG(BIT, basic_nack, requeue)),

  METHOD(AMQP_CONFIRM_SELECT, "confirm.select", ARG(BIT, confirm_select, nowait)),
  NOARGS(AMQP_CONFIRM_SELECT_OK, "confirm.select_ok"),

  NOARGS(AMQP_TX_SELECT, "tx.select"),
  NOARGS(AMQP_TX_SELECT_OK, "tx.select_ok"),
  NOARGS(AMQP_TX_COMMIT, "tx.commit"),
  NOARGS(AMQP_TX_COMMIT_OK, "tx.commit_ok"),
  NOARGS(AMQP_TX_ROLLBACK, "tx.rollback"),
  NOARGS(AMQP_TX_ROLLBACK_OK, "tx.rollback_ok"),
};
#define N_METHODS (sizeof method_descs / sizeof method_descs[0])

static int desc_cmp(const void *key, const void *elem) {
  uint32_t id = *(const uint32_t *)key, other = ((const method_desc_t *)elem)->id;
  return (id > other) - (id < other);
}

static const method_desc_t *method_desc(uint32_t id) {
  return bsearch(&id, method_descs, N_METHODS, sizeof method_descs[0], desc_cmp);
}

const char *amqp_method_name(uint32_t id) {
  const method_desc_t *d = method_desc(id);
  return d ? d->name : "unknown";
}

bool amqp_method_has_content(uint32_t id) {
  const method_desc_t *d = method_desc(id);
  return d && d->has_content;
}

/* ---- Method decoding ---------------------------------------------------------------------- */

/* Reads one argument into the struct field at dst. Tables are validated and handed out as their
 * content bytes. Returns false on malformed input. */
static bool decode_arg(amqp_reader_t *r, uint8_t kind, void *dst) {
  switch (kind) {
  case ARG_OCTET: *(uint8_t *)dst = amqp_read_u8(r); break;
  case ARG_SHORT: *(uint16_t *)dst = amqp_read_u16(r); break;
  case ARG_LONG: *(uint32_t *)dst = amqp_read_u32(r); break;
  case ARG_LONGLONG: *(uint64_t *)dst = amqp_read_u64(r); break;
  case ARG_SHORTSTR: *(amqp_bytes_t *)dst = amqp_read_shortstr(r); break;
  case ARG_LONGSTR: *(amqp_bytes_t *)dst = amqp_read_longstr(r); break;
  case ARG_TABLE: {
    amqp_bytes_t content = amqp_read_longstr(r);
    if (r->bad || amqp_table_validate(content) < 0) return false;
    *(amqp_bytes_t *)dst = content;
    break;
  }
  default: return false;
  }
  return !r->bad;
}

int amqp_method_decode(const uint8_t *payload, size_t len, amqp_method_t *out) {
  memset(out, 0, sizeof *out);
  if (len < 4) return -AMQP_FRAME_ERROR;
  amqp_reader_t r = amqp_reader(payload, len);
  uint16_t class_id = amqp_read_u16(&r);
  uint16_t method_index = amqp_read_u16(&r);
  out->id = AMQP_METHOD_ID(class_id, method_index);
  const method_desc_t *d = method_desc(out->id);
  if (!d) return -AMQP_COMMAND_INVALID;

  uint8_t bits = 0;
  int bit_pos = 8;   /* 8 = no partially consumed bit octet */
  for (int i = 0; i < d->nargs; i++) {
    const method_arg_t *a = &d->args[i];
    void *dst = (char *)out + a->offset;
    if (a->kind == ARG_BIT) {
      if (bit_pos == 8) {
        bits = amqp_read_u8(&r);
        if (r.bad) return -AMQP_SYNTAX_ERROR;
        bit_pos = 0;
      }
      *(bool *)dst = (bits >> bit_pos++) & 1;
      continue;
    }
    bit_pos = 8;
    if (!decode_arg(&r, a->kind, dst)) return -AMQP_SYNTAX_ERROR;
  }
  /* RabbitMQ's decoder matches the argument list exactly; extra bytes are malformed too. */
  if (r.left != 0) return -AMQP_SYNTAX_ERROR;
  return 0;
}

/* ---- Method encoding ---------------------------------------------------------------------- */

static void encode_arg(amqp_buf_t *out, uint8_t kind, const void *src) {
  switch (kind) {
  case ARG_OCTET: amqp_buf_put_u8(out, *(const uint8_t *)src); break;
  case ARG_SHORT: amqp_buf_put_u16(out, *(const uint16_t *)src); break;
  case ARG_LONG: amqp_buf_put_u32(out, *(const uint32_t *)src); break;
  case ARG_LONGLONG: amqp_buf_put_u64(out, *(const uint64_t *)src); break;
  case ARG_SHORTSTR: amqp_buf_put_shortstr(out, *(const amqp_bytes_t *)src); break;
  case ARG_LONGSTR: case ARG_TABLE: amqp_buf_put_longstr(out, *(const amqp_bytes_t *)src); break;
  default: break;
  }
}

void amqp_encode_method(amqp_buf_t *out, uint16_t channel, const amqp_method_t *m) {
  size_t size_pos = frame_begin(out, AMQP_FRAME_METHOD, channel);
  amqp_buf_put_u16(out, AMQP_METHOD_CLASS(m->id));
  amqp_buf_put_u16(out, AMQP_METHOD_INDEX(m->id));
  const method_desc_t *d = method_desc(m->id);
  uint8_t bits = 0;
  int nbits = 0;
  for (int i = 0; d && i < d->nargs; i++) {
    const method_arg_t *a = &d->args[i];
    const void *src = (const char *)m + a->offset;
    if (a->kind == ARG_BIT) {
      if (nbits == 8) { amqp_buf_put_u8(out, bits); bits = 0; nbits = 0; }
      if (*(const bool *)src) bits |= (uint8_t)(1u << nbits);
      nbits++;
      continue;
    }
    if (nbits) { amqp_buf_put_u8(out, bits); bits = 0; nbits = 0; }
    encode_arg(out, a->kind, src);
  }
  if (nbits) amqp_buf_put_u8(out, bits);
  frame_end(out, size_pos);
}

/* ---- Content header and properties -------------------------------------------------------- */

enum { CONTENT_HEADER_FIXED = 14 };   /* class u16 + weight u16 + body size u64 + flags u16 */

typedef struct {
  uint16_t flag;
  uint8_t kind;       /* ARG_SHORTSTR, ARG_OCTET, ARG_LONGLONG (timestamp) or ARG_TABLE */
  uint16_t offset;    /* of the field inside amqp_props_t */
} prop_desc_t;

#define PROP(flag, kind, field) {flag, ARG_##kind, (uint16_t)offsetof(amqp_props_t, field)}
/* In wire order: the property list carries present properties from flag bit 15 down. */
static const prop_desc_t prop_descs[] = {
  PROP(AMQP_P_CONTENT_TYPE, SHORTSTR, content_type),
  PROP(AMQP_P_CONTENT_ENCODING, SHORTSTR, content_encoding),
  PROP(AMQP_P_HEADERS, TABLE, headers),
  PROP(AMQP_P_DELIVERY_MODE, OCTET, delivery_mode),
  PROP(AMQP_P_PRIORITY, OCTET, priority),
  PROP(AMQP_P_CORRELATION_ID, SHORTSTR, correlation_id),
  PROP(AMQP_P_REPLY_TO, SHORTSTR, reply_to),
  PROP(AMQP_P_EXPIRATION, SHORTSTR, expiration),
  PROP(AMQP_P_MESSAGE_ID, SHORTSTR, message_id),
  PROP(AMQP_P_TIMESTAMP, LONGLONG, timestamp),
  PROP(AMQP_P_TYPE, SHORTSTR, type),
  PROP(AMQP_P_USER_ID, SHORTSTR, user_id),
  PROP(AMQP_P_APP_ID, SHORTSTR, app_id),
  PROP(AMQP_P_CLUSTER_ID, SHORTSTR, cluster_id),
};
#define N_PROPS (sizeof prop_descs / sizeof prop_descs[0])

int amqp_props_decode(const uint8_t *raw, size_t len, amqp_props_t *props) {
  memset(props, 0, sizeof *props);
  amqp_reader_t r = amqp_reader(raw, len);
  uint16_t flags = amqp_read_u16(&r);
  if (r.bad) return -AMQP_SYNTAX_ERROR;
  /* Bit 0 announces a second flags word; basic has only 14 properties, so it is never valid. */
  if (flags & 1) return -AMQP_SYNTAX_ERROR;
  props->flags = flags;
  for (size_t i = 0; i < N_PROPS; i++) {
    if (!(flags & prop_descs[i].flag)) continue;
    if (!decode_arg(&r, prop_descs[i].kind, (char *)props + prop_descs[i].offset)) return -AMQP_SYNTAX_ERROR;
  }
  return 0;
}

void amqp_props_encode(amqp_buf_t *out, const amqp_props_t *props) {
  uint16_t flags = props->flags & AMQP_P_ALL;
  amqp_buf_put_u16(out, flags);
  for (size_t i = 0; i < N_PROPS; i++)
    if (flags & prop_descs[i].flag) encode_arg(out, prop_descs[i].kind, (const char *)props + prop_descs[i].offset);
}

int amqp_content_header_decode(const uint8_t *payload, size_t len, uint16_t *class_id, uint64_t *body_size,
                               amqp_bytes_t *raw_props, amqp_props_t *props) {
  memset(props, 0, sizeof *props);
  *raw_props = AMQP_BYTES_EMPTY;
  if (len < CONTENT_HEADER_FIXED) return -AMQP_FRAME_ERROR;
  *class_id = amqp_get_u16(payload);
  /* payload + 2: weight, unused and always 0 in 0-9-1. */
  *body_size = amqp_get_u64(payload + 4);
  *raw_props = (amqp_bytes_t){payload + 12, len - 12};
  if (*class_id != AMQP_CLASS_BASIC) return 0;
  return amqp_props_decode(raw_props->ptr, raw_props->len, props);
}

void amqp_encode_content_header(amqp_buf_t *out, uint16_t channel, uint16_t class_id, uint64_t body_size,
                                const uint8_t *raw_props, size_t raw_len) {
  size_t size_pos = frame_begin(out, AMQP_FRAME_HEADER, channel);
  amqp_buf_put_u16(out, class_id);
  amqp_buf_put_u16(out, 0);   /* weight */
  amqp_buf_put_u64(out, body_size);
  amqp_buf_append(out, raw_props, raw_len);
  frame_end(out, size_pos);
}

/* ---- Body --------------------------------------------------------------------------------- */

void amqp_encode_body(amqp_buf_t *out, uint16_t channel, const uint8_t *body, size_t len, uint32_t frame_max) {
  if (frame_max != 0 && frame_max <= AMQP_FRAME_OVERHEAD) frame_max = AMQP_FRAME_MIN_SIZE;
  size_t chunk_max = frame_max ? frame_max - AMQP_FRAME_OVERHEAD : UINT32_MAX;
  if (len == 0) return;
  amqp_buf_reserve(out, len + (len / chunk_max + 1) * AMQP_FRAME_OVERHEAD);
  for (size_t off = 0; off < len;) {
    size_t n = len - off < chunk_max ? len - off : chunk_max;
    size_t size_pos = frame_begin(out, AMQP_FRAME_BODY, channel);
    amqp_buf_append(out, body + off, n);
    frame_end(out, size_pos);
    off += n;
  }
}
