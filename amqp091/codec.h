/* codec.h - the AMQP 0-9-1 wire codec: frames, methods, content headers and bodies.
 *
 * Pure functions over byte buffers: no I/O, no connection state, no allocation except the output
 * buffer (amqp_buf_t) and parsed tables. Decoders never copy: every amqp_bytes_t they produce
 * points into the caller's input, which must outlive the result. Errors are returned as negated
 * AMQP reply codes so the connection layer can close with the right code.
 *
 * Method ids, argument lists and the basic property list are those of RabbitMQ's
 * amqp-rabbitmq-0.9.1 definition (0-9-1 plus RabbitMQ's extensions: exchange.bind/unbind,
 * basic.nack, confirm.*, connection.blocked/unblocked/update-secret). */
#ifndef WARREN_AMQP_CODEC_H
#define WARREN_AMQP_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "broker/table.h"

/* ---- Frames ------------------------------------------------------------------------------- */

enum { AMQP_FRAME_METHOD = 1, AMQP_FRAME_HEADER = 2, AMQP_FRAME_BODY = 3, AMQP_FRAME_HEARTBEAT = 8 };
#define AMQP_FRAME_END 0xCE
#define AMQP_FRAME_MIN_SIZE 4096
#define AMQP_FRAME_OVERHEAD 8   /* type u8 + channel u16 + size u32 + frame-end u8 */

/* Reply codes (all of the spec's + RabbitMQ's) */
enum {
  AMQP_REPLY_SUCCESS = 200, AMQP_CONTENT_TOO_LARGE = 311, AMQP_NO_ROUTE = 312, AMQP_NO_CONSUMERS = 313,
  AMQP_CONNECTION_FORCED = 320, AMQP_INVALID_PATH = 402, AMQP_ACCESS_REFUSED = 403, AMQP_NOT_FOUND = 404,
  AMQP_RESOURCE_LOCKED = 405, AMQP_PRECONDITION_FAILED = 406, AMQP_FRAME_ERROR = 501, AMQP_SYNTAX_ERROR = 502,
  AMQP_COMMAND_INVALID = 503, AMQP_CHANNEL_ERROR = 504, AMQP_UNEXPECTED_FRAME = 505, AMQP_RESOURCE_ERROR = 506,
  AMQP_NOT_ALLOWED = 530, AMQP_NOT_IMPLEMENTED = 540, AMQP_INTERNAL_ERROR = 541
};
_Static_assert((int)AMQP_TABLE_SYNTAX_ERROR == (int)AMQP_SYNTAX_ERROR, "table parser error code");
/* "NOT_FOUND", "PRECONDITION_FAILED", ... as RabbitMQ prints them; "UNKNOWN" otherwise. */
const char *amqp_reply_name(int code);
/* True for the codes that are connection exceptions (close the connection, not the channel). */
bool amqp_reply_is_connection_error(int code);

typedef struct { uint8_t type; uint16_t channel; uint32_t size; const uint8_t *payload; } amqp_frame_t;
/* Parses one frame from buf. Returns bytes consumed (>0) when a whole frame is present, 0 when more
 * bytes are needed, -AMQP_FRAME_ERROR when the frame-end octet is wrong, the frame type is not one
 * of the four above, or size > frame_max (frame_max counts the whole frame incl. 8 bytes of
 * header+end; frame_max 0 = no limit; the size check happens as soon as the 7-byte header is in,
 * so an oversized frame is refused before it is buffered). payload points into buf.
 * Channel/heartbeat consistency (heartbeat on channel 0 only, ...) is the caller's business. */
long amqp_frame_parse(const uint8_t *buf, size_t len, uint32_t frame_max, amqp_frame_t *out);
void amqp_encode_heartbeat(amqp_buf_t *out);
/* The 8-byte protocol header a 0-9-1 client sends first: "AMQP" 0 0 9 1. */
extern const uint8_t AMQP_PROTOCOL_HEADER[8];

/* ---- Methods ------------------------------------------------------------------------------ */

enum { AMQP_CLASS_CONNECTION = 10, AMQP_CLASS_CHANNEL = 20, AMQP_CLASS_EXCHANGE = 40, AMQP_CLASS_QUEUE = 50,
       AMQP_CLASS_BASIC = 60, AMQP_CLASS_CONFIRM = 85, AMQP_CLASS_TX = 90 };
#define AMQP_METHOD_ID(c, m) (((uint32_t)(c) << 16) | (m))
#define AMQP_METHOD_CLASS(id) ((uint16_t)((id) >> 16))
#define AMQP_METHOD_INDEX(id) ((uint16_t)((id) & 0xFFFF))
enum amqp_method_id {
  AMQP_CONNECTION_START = AMQP_METHOD_ID(10, 10),
  AMQP_CONNECTION_START_OK = AMQP_METHOD_ID(10, 11),
  AMQP_CONNECTION_SECURE = AMQP_METHOD_ID(10, 20),
  AMQP_CONNECTION_SECURE_OK = AMQP_METHOD_ID(10, 21),
  AMQP_CONNECTION_TUNE = AMQP_METHOD_ID(10, 30),
  AMQP_CONNECTION_TUNE_OK = AMQP_METHOD_ID(10, 31),
  AMQP_CONNECTION_OPEN = AMQP_METHOD_ID(10, 40),
  AMQP_CONNECTION_OPEN_OK = AMQP_METHOD_ID(10, 41),
  AMQP_CONNECTION_CLOSE = AMQP_METHOD_ID(10, 50),
  AMQP_CONNECTION_CLOSE_OK = AMQP_METHOD_ID(10, 51),
  AMQP_CONNECTION_BLOCKED = AMQP_METHOD_ID(10, 60),
  AMQP_CONNECTION_UNBLOCKED = AMQP_METHOD_ID(10, 61),
  AMQP_CONNECTION_UPDATE_SECRET = AMQP_METHOD_ID(10, 70),
  AMQP_CONNECTION_UPDATE_SECRET_OK = AMQP_METHOD_ID(10, 71),

  AMQP_CHANNEL_OPEN = AMQP_METHOD_ID(20, 10),
  AMQP_CHANNEL_OPEN_OK = AMQP_METHOD_ID(20, 11),
  AMQP_CHANNEL_FLOW = AMQP_METHOD_ID(20, 20),
  AMQP_CHANNEL_FLOW_OK = AMQP_METHOD_ID(20, 21),
  AMQP_CHANNEL_CLOSE = AMQP_METHOD_ID(20, 40),
  AMQP_CHANNEL_CLOSE_OK = AMQP_METHOD_ID(20, 41),

  AMQP_EXCHANGE_DECLARE = AMQP_METHOD_ID(40, 10),
  AMQP_EXCHANGE_DECLARE_OK = AMQP_METHOD_ID(40, 11),
  AMQP_EXCHANGE_DELETE = AMQP_METHOD_ID(40, 20),
  AMQP_EXCHANGE_DELETE_OK = AMQP_METHOD_ID(40, 21),
  AMQP_EXCHANGE_BIND = AMQP_METHOD_ID(40, 30),
  AMQP_EXCHANGE_BIND_OK = AMQP_METHOD_ID(40, 31),
  AMQP_EXCHANGE_UNBIND = AMQP_METHOD_ID(40, 40),
  AMQP_EXCHANGE_UNBIND_OK = AMQP_METHOD_ID(40, 51),

  AMQP_QUEUE_DECLARE = AMQP_METHOD_ID(50, 10),
  AMQP_QUEUE_DECLARE_OK = AMQP_METHOD_ID(50, 11),
  AMQP_QUEUE_BIND = AMQP_METHOD_ID(50, 20),
  AMQP_QUEUE_BIND_OK = AMQP_METHOD_ID(50, 21),
  AMQP_QUEUE_PURGE = AMQP_METHOD_ID(50, 30),
  AMQP_QUEUE_PURGE_OK = AMQP_METHOD_ID(50, 31),
  AMQP_QUEUE_DELETE = AMQP_METHOD_ID(50, 40),
  AMQP_QUEUE_DELETE_OK = AMQP_METHOD_ID(50, 41),
  AMQP_QUEUE_UNBIND = AMQP_METHOD_ID(50, 50),
  AMQP_QUEUE_UNBIND_OK = AMQP_METHOD_ID(50, 51),

  AMQP_BASIC_QOS = AMQP_METHOD_ID(60, 10),
  AMQP_BASIC_QOS_OK = AMQP_METHOD_ID(60, 11),
  AMQP_BASIC_CONSUME = AMQP_METHOD_ID(60, 20),
  AMQP_BASIC_CONSUME_OK = AMQP_METHOD_ID(60, 21),
  AMQP_BASIC_CANCEL = AMQP_METHOD_ID(60, 30),
  AMQP_BASIC_CANCEL_OK = AMQP_METHOD_ID(60, 31),
  AMQP_BASIC_PUBLISH = AMQP_METHOD_ID(60, 40),
  AMQP_BASIC_RETURN = AMQP_METHOD_ID(60, 50),
  AMQP_BASIC_DELIVER = AMQP_METHOD_ID(60, 60),
  AMQP_BASIC_GET = AMQP_METHOD_ID(60, 70),
  AMQP_BASIC_GET_OK = AMQP_METHOD_ID(60, 71),
  AMQP_BASIC_GET_EMPTY = AMQP_METHOD_ID(60, 72),
  AMQP_BASIC_ACK = AMQP_METHOD_ID(60, 80),
  AMQP_BASIC_REJECT = AMQP_METHOD_ID(60, 90),
  AMQP_BASIC_RECOVER_ASYNC = AMQP_METHOD_ID(60, 100),
  AMQP_BASIC_RECOVER = AMQP_METHOD_ID(60, 110),
  AMQP_BASIC_RECOVER_OK = AMQP_METHOD_ID(60, 111),
  AMQP_BASIC_NACK = AMQP_METHOD_ID(60, 120),

  AMQP_CONFIRM_SELECT = AMQP_METHOD_ID(85, 10),
  AMQP_CONFIRM_SELECT_OK = AMQP_METHOD_ID(85, 11),

  AMQP_TX_SELECT = AMQP_METHOD_ID(90, 10),
  AMQP_TX_SELECT_OK = AMQP_METHOD_ID(90, 11),
  AMQP_TX_COMMIT = AMQP_METHOD_ID(90, 20),
  AMQP_TX_COMMIT_OK = AMQP_METHOD_ID(90, 21),
  AMQP_TX_ROLLBACK = AMQP_METHOD_ID(90, 30),
  AMQP_TX_ROLLBACK_OK = AMQP_METHOD_ID(90, 31)
};
/* RabbitMQ's spelling of the method, e.g. "queue.declare", "basic.publish", "connection.start_ok"
 * (underscores, as RabbitMQ prints method names in error texts); "unknown" otherwise. */
const char *amqp_method_name(uint32_t id);
/* True when the method carries content (header + body frames follow): basic.publish, basic.return,
 * basic.deliver, basic.get_ok. */
bool amqp_method_has_content(uint32_t id);

/* Decoded method: one struct per method, fields named as the spec (snake_case). Strings
 * (shortstr/longstr) and field tables are amqp_bytes_t pointing into the payload; a table field
 * holds the table's CONTENT bytes without its 4-byte length prefix. Bits are bool. */
typedef struct amqp_method {
  uint32_t id;
  union {
    struct { uint8_t version_major, version_minor; amqp_bytes_t server_properties, mechanisms, locales; } connection_start;
    struct { amqp_bytes_t client_properties, mechanism, response, locale; } connection_start_ok;
    struct { amqp_bytes_t challenge; } connection_secure;
    struct { amqp_bytes_t response; } connection_secure_ok;
    struct { uint16_t channel_max; uint32_t frame_max; uint16_t heartbeat; } connection_tune, connection_tune_ok;
    struct { amqp_bytes_t virtual_host, capabilities; bool insist; } connection_open;
    struct { amqp_bytes_t known_hosts; } connection_open_ok;
    struct { uint16_t reply_code; amqp_bytes_t reply_text; uint16_t class_id, method_id; } connection_close, channel_close;
    struct { amqp_bytes_t reason; } connection_blocked;
    struct { amqp_bytes_t new_secret, reason; } connection_update_secret;
    struct { amqp_bytes_t out_of_band; } channel_open;
    struct { amqp_bytes_t channel_id; } channel_open_ok;
    struct { bool active; } channel_flow, channel_flow_ok;
    struct { uint16_t ticket; amqp_bytes_t exchange, type; bool passive, durable, auto_delete, internal, nowait; amqp_bytes_t arguments; } exchange_declare;
    struct { uint16_t ticket; amqp_bytes_t exchange; bool if_unused, nowait; } exchange_delete;
    struct { uint16_t ticket; amqp_bytes_t destination, source, routing_key; bool nowait; amqp_bytes_t arguments; } exchange_bind, exchange_unbind;
    struct { uint16_t ticket; amqp_bytes_t queue; bool passive, durable, exclusive, auto_delete, nowait; amqp_bytes_t arguments; } queue_declare;
    struct { amqp_bytes_t queue; uint32_t message_count, consumer_count; } queue_declare_ok;
    struct { uint16_t ticket; amqp_bytes_t queue, exchange, routing_key; bool nowait; amqp_bytes_t arguments; } queue_bind;
    struct { uint16_t ticket; amqp_bytes_t queue, exchange, routing_key; amqp_bytes_t arguments; } queue_unbind;
    struct { uint16_t ticket; amqp_bytes_t queue; bool nowait; } queue_purge;
    struct { uint32_t message_count; } queue_purge_ok, queue_delete_ok;
    struct { uint16_t ticket; amqp_bytes_t queue; bool if_unused, if_empty, nowait; } queue_delete;
    struct { uint32_t prefetch_size; uint16_t prefetch_count; bool global; } basic_qos;
    struct { uint16_t ticket; amqp_bytes_t queue, consumer_tag; bool no_local, no_ack, exclusive, nowait; amqp_bytes_t arguments; } basic_consume;
    struct { amqp_bytes_t consumer_tag; } basic_consume_ok, basic_cancel_ok;
    struct { amqp_bytes_t consumer_tag; bool nowait; } basic_cancel;
    struct { uint16_t ticket; amqp_bytes_t exchange, routing_key; bool mandatory, immediate; } basic_publish;
    struct { uint16_t reply_code; amqp_bytes_t reply_text, exchange, routing_key; } basic_return;
    struct { amqp_bytes_t consumer_tag; uint64_t delivery_tag; bool redelivered; amqp_bytes_t exchange, routing_key; } basic_deliver;
    struct { uint16_t ticket; amqp_bytes_t queue; bool no_ack; } basic_get;
    struct { uint64_t delivery_tag; bool redelivered; amqp_bytes_t exchange, routing_key; uint32_t message_count; } basic_get_ok;
    struct { amqp_bytes_t cluster_id; } basic_get_empty;
    struct { uint64_t delivery_tag; bool multiple; } basic_ack;
    struct { uint64_t delivery_tag; bool requeue; } basic_reject;
    struct { bool requeue; } basic_recover, basic_recover_async;
    struct { uint64_t delivery_tag; bool multiple, requeue; } basic_nack;
    struct { bool nowait; } confirm_select;
  } u;
} amqp_method_t;
/* Methods with no arguments (declare-ok of exchange, bind-ok, qos-ok, tx.*, close-ok ...) just use id. */

/* Decodes a method frame payload (class id, method id, arguments). Returns 0, or:
 *   -AMQP_FRAME_ERROR (501)     payload shorter than the 4 bytes of class and method id;
 *   -AMQP_COMMAND_INVALID (503) unknown class/method id (out->id is still set);
 *   -AMQP_SYNTAX_ERROR (502)    truncated/malformed arguments, including a table argument that is
 *                               not a well-formed field table.
 * Bytes after the last argument are ignored. *out is zeroed first, so unused fields are 0/empty. */
int amqp_method_decode(const uint8_t *payload, size_t len, amqp_method_t *out);
/* Appends one whole method frame (type 1, channel, size, payload, 0xCE) for any method of the
 * spec. Shortstr fields longer than 255 bytes are truncated. An unknown id encodes just the ids. */
void amqp_encode_method(amqp_buf_t *out, uint16_t channel, const amqp_method_t *m);

/* ---- Content ------------------------------------------------------------------------------ */

/* Basic content properties (class 60), as the spec's property list, flags bit 15 = content_type ... */
enum { AMQP_P_CONTENT_TYPE = 1 << 15, AMQP_P_CONTENT_ENCODING = 1 << 14, AMQP_P_HEADERS = 1 << 13,
       AMQP_P_DELIVERY_MODE = 1 << 12, AMQP_P_PRIORITY = 1 << 11, AMQP_P_CORRELATION_ID = 1 << 10,
       AMQP_P_REPLY_TO = 1 << 9, AMQP_P_EXPIRATION = 1 << 8, AMQP_P_MESSAGE_ID = 1 << 7, AMQP_P_TIMESTAMP = 1 << 6,
       AMQP_P_TYPE = 1 << 5, AMQP_P_USER_ID = 1 << 4, AMQP_P_APP_ID = 1 << 3, AMQP_P_CLUSTER_ID = 1 << 2 };
#define AMQP_P_ALL 0xFFFC   /* the 14 defined property bits */
typedef struct {
  uint16_t flags;
  amqp_bytes_t content_type, content_encoding, headers /* table content bytes */, correlation_id, reply_to,
               expiration, message_id, type, user_id, app_id, cluster_id;
  uint8_t delivery_mode, priority; uint64_t timestamp;
} amqp_props_t;
/* Decodes a content header frame payload: class id, weight, body size, and the property flags+list.
 * raw_props is set to the property flags + property list bytes exactly as received (so they can be
 * re-sent byte-exact). Returns 0, -AMQP_FRAME_ERROR when the payload is shorter than the 14 fixed
 * bytes (class, weight, body size) or -AMQP_SYNTAX_ERROR for a malformed property list (truncated
 * field, bad headers table, or the continuation bit 0 of the flags set, which RabbitMQ rejects for
 * basic). Properties are decoded only for class 60 (the only content class); for any other class
 * *props is zeroed and the caller should reject the frame. */
int amqp_content_header_decode(const uint8_t *payload, size_t len, uint16_t *class_id, uint64_t *body_size,
                               amqp_bytes_t *raw_props, amqp_props_t *props);
/* Parse just raw property bytes (flags + list), as stored with a message. Returns 0 or -502. */
int amqp_props_decode(const uint8_t *raw, size_t len, amqp_props_t *props);
/* Encodes flags + property list of props into out (for rewritten properties). Only the 14 defined
 * flag bits are written; headers is written as a table (length prefix + the content bytes). */
void amqp_props_encode(amqp_buf_t *out, const amqp_props_t *props);
/* Appends a whole content header frame with the given raw property bytes (weight 0). */
void amqp_encode_content_header(amqp_buf_t *out, uint16_t channel, uint16_t class_id, uint64_t body_size,
                                const uint8_t *raw_props, size_t raw_len);
/* Appends body frames carrying body, split so no frame exceeds frame_max (frame_max includes 8
 * bytes overhead; 0 = no limit; values <= 8 are treated as AMQP_FRAME_MIN_SIZE).
 * A zero-length body emits no body frame. */
void amqp_encode_body(amqp_buf_t *out, uint16_t channel, const uint8_t *body, size_t len, uint32_t frame_max);

#endif
