/* raftwire.h - the node-to-node wire format: Frames of broker/cluster.proto, length-prefixed.
 *
 * On the wire a frame is a big-endian u32 length followed by that many bytes of a protobuf
 * Frame. Encoders append one whole frame (prefix included) to a growable struct rw_buf;
 * rw_decode() turns the bytes after the prefix into a struct rw_frame. Everything protobuf-c
 * lives behind this header: callers see struct raft_msg and plain C structs.
 *
 * Decoding validates everything a peer could get wrong or forge (unknown frame kinds, Raft
 * message and entry types, ids, counts, sizes, membership lists, nonce and MAC lengths, name
 * lengths and characters) and returns an error with a short reason instead of passing on
 * something the Raft library or the transport would choke on. Encoding checks outgoing Raft
 * messages with the same rules, so what one node sends the other accepts.
 *
 * Ownership: a decoded frame, and everything it points to (raft_msg entries, snapshot meta and
 * bytes, names, payloads), is one arena; it all stays valid until rw_frame_free(). Nothing
 * points into the input buffer, which the caller may reuse as soon as rw_decode returns. */
#ifndef WARREN_RAFTWIRE_H
#define WARREN_RAFTWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "raft/raft.h"

#define RW_VERSION 1                 /* wire protocol version carried in Hello */
#define RW_PREFIX_LEN 4              /* the big-endian u32 length before each frame */
#define RW_NONCE_LEN 32
#define RW_MAC_LEN 32                /* HMAC-SHA256 */
#define RW_MAX_NAME 255              /* node and cluster names, bytes */
#define RW_MAX_METHOD 255            /* call method names, bytes */
#define RW_MAX_ERROR 4096            /* call reply error texts, bytes */
#define RW_MAX_MSGS 65536            /* Raft messages per batch */
#define RW_MAX_ENTRIES 65536         /* entries per Raft message */
#define RW_FRAME_LIMIT 0x7fffffffu   /* no frame may be larger, whatever max_frame says */

enum rw_error {
    RW_OK = 0,
    RW_EMALFORMED = -1,  /* not a protobuf Frame */
    RW_EINVAL = -2,      /* a well-formed Frame with content we refuse */
    RW_ETOOBIG = -3,     /* larger than the frame limit given */
    RW_ENOMEM = -4,
};
const char *rw_strerror(int err);

/* A growable byte buffer; zero-initialise it. The owner frees it with rw_buf_free. */
struct rw_buf {
    uint8_t *data;
    size_t len, cap;
};
void rw_buf_free(struct rw_buf *b);
bool rw_buf_reserve(struct rw_buf *b, size_t extra); /* room for extra more bytes after len */

/* The length prefix: 0 when fewer than RW_PREFIX_LEN bytes are available, 1 with *len set, or
 * RW_ETOOBIG when the announced length exceeds max_frame. */
int rw_frame_length(const uint8_t *buf, size_t avail, size_t max_frame, size_t *len);

/* ---- what goes out ---------------------------------------------------------------------- */

/* One Raft message for one group; the message and what it points to are only read. */
struct rw_out {
    uint64_t group_id;
    const struct raft_msg *msg;
};

/* A node's identity as sent in Hello and HelloChallenge. */
struct rw_ident {
    uint32_t version;
    uint32_t node_id;
    const char *node_name;    /* <= RW_MAX_NAME bytes of printable ASCII */
    const char *cluster_name; /* same rule, may be empty */
    uint8_t nonce[RW_NONCE_LEN];
    uint32_t max_frame;       /* the largest frame the sender accepts, 0 = unspecified */
};

struct rw_call {
    uint64_t id;
    const char *method;       /* 1..RW_MAX_METHOD bytes */
    const void *payload;
    size_t len;
};

struct rw_call_reply {
    uint64_t id;
    int32_t status;
    const char *error;        /* "" when none; <= RW_MAX_ERROR bytes */
    const void *payload;
    size_t len;
};

/* Each encoder appends one frame (prefix included) to b and returns RW_OK; on any error b is
 * left as it was. max_frame bounds the frame without its prefix (RW_ETOOBIG beyond it). */
int rw_encode_raft(struct rw_buf *b, const struct rw_out *msgs, size_t n, size_t max_frame);
int rw_encode_hello(struct rw_buf *b, const struct rw_ident *id);
int rw_encode_challenge(struct rw_buf *b, const struct rw_ident *id, const uint8_t mac[RW_MAC_LEN]);
int rw_encode_response(struct rw_buf *b, const uint8_t mac[RW_MAC_LEN]);
int rw_encode_ping(struct rw_buf *b, uint64_t seq);
int rw_encode_pong(struct rw_buf *b, uint64_t seq);
int rw_encode_call(struct rw_buf *b, const struct rw_call *c, size_t max_frame);
int rw_encode_call_reply(struct rw_buf *b, const struct rw_call_reply *r, size_t max_frame);

/* RW_OK when msg is something this format carries and a peer would accept; else RW_EINVAL with
 * the reason in err (may be NULL). */
int rw_check_msg(const struct raft_msg *msg, char *err, size_t errlen);

/* ---- what comes in ---------------------------------------------------------------------- */

enum rw_frame_type {
    RW_FRAME_HELLO = 1,
    RW_FRAME_CHALLENGE,
    RW_FRAME_RESPONSE,
    RW_FRAME_RAFT,
    RW_FRAME_PING,
    RW_FRAME_PONG,
    RW_FRAME_CALL,
    RW_FRAME_CALL_REPLY,
};
const char *rw_frame_name(enum rw_frame_type t);

struct rw_raft_item {
    uint64_t group_id;
    struct raft_msg msg; /* entries, snap and data point into the frame's arena */
};

/* A decoded frame; only the members named for its type are set. */
struct rw_frame {
    enum rw_frame_type type;
    struct rw_ident ident;        /* HELLO, CHALLENGE */
    uint8_t mac[RW_MAC_LEN];      /* CHALLENGE, RESPONSE */
    size_t n_raft;                /* RAFT: n_raft >= 0 items */
    struct rw_raft_item *raft;
    uint64_t seq;                 /* PING, PONG */
    struct rw_call call;          /* CALL */
    struct rw_call_reply reply;   /* CALL_REPLY */
    struct rw_arena *arena;       /* private: owns this frame and all it points to */
};

/* Decodes one frame payload (the bytes after the length prefix). On success *out is a frame
 * the caller frees with rw_frame_free; on failure *out is NULL and err says why. */
int rw_decode(const void *payload, size_t len, struct rw_frame **out, char *err, size_t errlen);
void rw_frame_free(struct rw_frame *f);

/* Field-by-field equality of two Raft messages, entries, snapshot meta and bytes included
 * (for tests and the fuzzer). */
bool rw_msg_equal(const struct raft_msg *a, const struct raft_msg *b);

#endif
