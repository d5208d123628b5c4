/* fuzz_raftwire.c - libFuzzer target for the node-to-node wire format (broker/raftwire.c).
 *
 * The input is treated the way a peer connection treats socket bytes: length-prefixed frames,
 * cut by rw_frame_length() until a prefix is incomplete, too large or overruns the input. Each
 * frame is decoded; the whole input is also decoded as one frame payload, which reaches deep
 * protobuf shapes faster than mutations that must keep a prefix consistent.
 *
 * Properties checked (abort() on violation, so libFuzzer reports it):
 *   - nothing crashes, leaks or reads out of bounds (ASan/UBSan), whatever the bytes;
 *   - a failed decode hands out no frame, and a successful one has a known type;
 *   - whatever decodes re-encodes (the encoders accept everything the decoder does), the
 *     re-encoding decodes to an equal frame, and encoding that again is byte-identical. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/raftwire.h"

#define FUZZ_MAX_FRAME (1u << 20)

static int reencode(struct rw_buf *b, const struct rw_frame *f)
{
    switch (f->type) {
    case RW_FRAME_HELLO: return rw_encode_hello(b, &f->ident);
    case RW_FRAME_CHALLENGE: return rw_encode_challenge(b, &f->ident, f->mac);
    case RW_FRAME_RESPONSE: return rw_encode_response(b, f->mac);
    case RW_FRAME_PING: return rw_encode_ping(b, f->seq);
    case RW_FRAME_PONG: return rw_encode_pong(b, f->seq);
    case RW_FRAME_CALL: return rw_encode_call(b, &f->call, RW_FRAME_LIMIT);
    case RW_FRAME_CALL_REPLY: return rw_encode_call_reply(b, &f->reply, RW_FRAME_LIMIT);
    case RW_FRAME_RAFT: {
        struct rw_out *out = malloc((f->n_raft ? f->n_raft : 1) * sizeof *out);
        if (!out) abort();
        for (size_t i = 0; i < f->n_raft; i++) out[i] = (struct rw_out){f->raft[i].group_id, &f->raft[i].msg};
        int rc = rw_encode_raft(b, out, f->n_raft, RW_FRAME_LIMIT);
        free(out);
        return rc;
    }
    }
    abort(); /* a decoded frame of no known type */
}

static bool bytes_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static bool ident_equal(const struct rw_ident *a, const struct rw_ident *b)
{
    return a->version == b->version && a->node_id == b->node_id && a->max_frame == b->max_frame &&
           strcmp(a->node_name, b->node_name) == 0 && strcmp(a->cluster_name, b->cluster_name) == 0 &&
           memcmp(a->nonce, b->nonce, RW_NONCE_LEN) == 0;
}

static bool frame_equal(const struct rw_frame *a, const struct rw_frame *b)
{
    if (a->type != b->type) return false;
    switch (a->type) {
    case RW_FRAME_HELLO: return ident_equal(&a->ident, &b->ident);
    case RW_FRAME_CHALLENGE: return ident_equal(&a->ident, &b->ident) && !memcmp(a->mac, b->mac, RW_MAC_LEN);
    case RW_FRAME_RESPONSE: return memcmp(a->mac, b->mac, RW_MAC_LEN) == 0;
    case RW_FRAME_PING:
    case RW_FRAME_PONG: return a->seq == b->seq;
    case RW_FRAME_CALL:
        return a->call.id == b->call.id && strcmp(a->call.method, b->call.method) == 0 &&
               bytes_equal(a->call.payload, a->call.len, b->call.payload, b->call.len);
    case RW_FRAME_CALL_REPLY:
        return a->reply.id == b->reply.id && a->reply.status == b->reply.status &&
               strcmp(a->reply.error, b->reply.error) == 0 &&
               bytes_equal(a->reply.payload, a->reply.len, b->reply.payload, b->reply.len);
    case RW_FRAME_RAFT:
        if (a->n_raft != b->n_raft) return false;
        for (size_t i = 0; i < a->n_raft; i++)
            if (a->raft[i].group_id != b->raft[i].group_id || !rw_msg_equal(&a->raft[i].msg, &b->raft[i].msg))
                return false;
        return true;
    }
    return false;
}

/* Decodes b's single frame, checking its prefix; aborts if that fails. */
static struct rw_frame *decode_buf(const struct rw_buf *b)
{
    size_t len = 0;
    if (rw_frame_length(b->data, b->len, RW_FRAME_LIMIT, &len) != 1 || len + RW_PREFIX_LEN != b->len) abort();
    struct rw_frame *f = NULL;
    if (rw_decode(b->data + RW_PREFIX_LEN, len, &f, NULL, 0) != RW_OK || !f) abort();
    return f;
}

static void check_payload(const uint8_t *p, size_t n)
{
    struct rw_frame *f = (struct rw_frame *)&f; /* must be reset to NULL on failure */
    char err[256];
    int rc = rw_decode(p, n, &f, err, sizeof err);
    if (rc != RW_OK) {
        if (f != NULL || rc > 0 || err[0] == '\0') abort();
        return;
    }
    if (!f) abort();

    struct rw_buf first = {0}, second = {0};
    if (reencode(&first, f) != RW_OK) abort();
    struct rw_frame *again = decode_buf(&first);
    if (!frame_equal(f, again)) abort();
    if (reencode(&second, again) != RW_OK) abort();
    if (!bytes_equal(first.data, first.len, second.data, second.len)) abort();
    rw_frame_free(again);
    rw_frame_free(f);
    rw_buf_free(&first);
    rw_buf_free(&second);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_payload(data, size);
    size_t off = 0;
    while (off < size) {
        size_t len = 0;
        if (rw_frame_length(data + off, size - off, FUZZ_MAX_FRAME, &len) != 1) break;
        if (len > size - off - RW_PREFIX_LEN) break;
        check_payload(data + off + RW_PREFIX_LEN, len);
        off += RW_PREFIX_LEN + len;
    }
    return 0;
}
