/* test_raftwire.c - the node-to-node wire format (broker/raftwire.c).
 *
 * Round trips: every Raft message type, each with the fields it uses set to distinctive values,
 * goes through rw_encode_raft -> rw_frame_length -> rw_decode and must come back equal
 * (rw_msg_equal, plus explicit checks of a few fields so a bug shared by the comparison cannot
 * hide). The other frame kinds (handshake, ping/pong, calls) round-trip the same way.
 *
 * Refusals: frames that protobuf accepts but we must not (unknown kinds and types, ids, counts,
 * membership lists, lengths, names) are built with the generated protobuf-c structs directly,
 * bypassing the encoder's own checks, and must be rejected with RW_EINVAL and a reason. Garbage
 * must give RW_EMALFORMED. The encoder refuses the same things and never leaves a partial frame. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.pb-c.h"
#include "broker/raftwire.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* Decodes the single frame in b (checking its prefix); the caller frees the result. */
static struct rw_frame *decode_one(const struct rw_buf *b)
{
    size_t len = 0;
    assert_int_equal(rw_frame_length(b->data, b->len, RW_FRAME_LIMIT, &len), 1);
    assert_int_equal(len + RW_PREFIX_LEN, b->len);
    /* Decode from a private copy that is freed at once: nothing may point into the input. */
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, b->data + RW_PREFIX_LEN, len);
    struct rw_frame *f = NULL;
    char err[200] = "";
    int rc = rw_decode(copy, len, &f, err, sizeof err);
    memset(copy, 0xa5, len);
    free(copy);
    if (rc != RW_OK) fail_msg("decode failed: %s (%s)", rw_strerror(rc), err);
    return f;
}

/* Packs a hand-built Frame (with its prefix stripped) and decodes it; returns the rc. */
static int decode_pb(const Warren__Frame *fr, char *err, size_t errlen)
{
    size_t len = warren__frame__get_packed_size(fr);
    uint8_t *buf = malloc(len ? len : 1);
    warren__frame__pack(fr, buf);
    struct rw_frame *f = NULL;
    int rc = rw_decode(buf, len, &f, err, errlen);
    free(buf);
    if (rc == RW_OK) assert_non_null(f);
    else assert_null(f);
    rw_frame_free(f);
    return rc;
}

/* ---- round trips of Raft messages --------------------------------------------------------- */

static uint8_t conf_bytes[RAFT_CONF_MAX_ENCODED];
static uint8_t big_data[70000];

/* One message of each type, filled the way the Raft library fills it. */
static size_t sample_msgs(struct raft_msg *m, struct raft_entry *ents, struct raft_snapshot_meta *snap)
{
    struct raft_conf conf = {.n_voters = 3, .n_learners = 1, .voters = {1, 2, 3}, .learners = {7}};
    size_t conf_len = raft_conf_encode(&conf, conf_bytes);
    for (size_t i = 0; i < sizeof big_data; i++) big_data[i] = (uint8_t)(i * 31 + 7);
    ents[0] = (struct raft_entry){.term = 5, .type = RAFT_ENTRY_NOOP, .len = 0, .data = NULL};
    ents[1] = (struct raft_entry){.term = 5, .type = RAFT_ENTRY_NORMAL, .len = 5, .data = "hello"};
    ents[2] = (struct raft_entry){.term = 6, .type = RAFT_ENTRY_CONF, .len = (uint32_t)conf_len,
                                  .data = conf_bytes};
    ents[3] = (struct raft_entry){.term = 6, .type = RAFT_ENTRY_NORMAL, .len = sizeof big_data,
                                  .data = big_data};
    *snap = (struct raft_snapshot_meta){.index = 1000, .term = 4, .conf = conf};

    size_t n = 0;
    m[n++] = (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .term = 6, .index = 99,
                               .log_term = 5, .commit = 98, .n_entries = 4, .entries = ents};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .to = 3, .term = 6, .index = 103,
                               .log_term = 6, .commit = 103}; /* empty append (probe) */
    m[n++] = (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 2, .to = 1, .term = 6, .index = 103};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_APPEND_RESP, .from = 3, .to = 1, .term = 6, .index = 103,
                               .reject = true, .hint_index = 50, .log_term = 3};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = 1, .to = 2, .term = 6, .commit = 100,
                               .ctx = UINT64_MAX};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_HEARTBEAT_RESP, .from = 2, .to = 1, .term = 6, .ctx = 17};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_VOTE, .from = 3, .to = 1, .term = 7, .index = 103,
                               .log_term = 6, .transfer = true};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = 1, .to = 3, .term = 7, .reject = true};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_PREVOTE, .from = 2, .to = 3, .term = 8, .index = 103,
                               .log_term = 6};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_PREVOTE_RESP, .from = 3, .to = 2, .term = 8};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = 1, .to = 7, .term = 6, .index = 1000,
                               .log_term = 4, .snap = snap, .data = "state machine bytes", .data_len = 19};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = 1, .to = 7, .term = 6, .index = 1000,
                               .log_term = 4, .snap = snap}; /* snapshot of an empty state machine */
    m[n++] = (struct raft_msg){.type = RAFT_MSG_TIMEOUT_NOW, .from = 1, .to = 2, .term = UINT64_MAX - 1};
    return n;
}

static void test_raft_roundtrip(void **state)
{
    (void)state;
    struct raft_msg m[16];
    struct raft_entry ents[4];
    struct raft_snapshot_meta snap;
    size_t n = sample_msgs(m, ents, &snap);
    struct rw_out out[16];
    for (size_t i = 0; i < n; i++) out[i] = (struct rw_out){.group_id = i == 0 ? UINT64_MAX : i * 1000, .msg = &m[i]};

    struct rw_buf b = {0};
    assert_int_equal(rw_encode_raft(&b, out, n, RW_FRAME_LIMIT), RW_OK);
    struct rw_frame *f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_RAFT);
    assert_int_equal(f->n_raft, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(f->raft[i].group_id, out[i].group_id);
        assert_true(rw_msg_equal(&f->raft[i].msg, &m[i]));
    }
    /* A few fields by hand, so a bug shared by encoder and comparison cannot hide. */
    const struct raft_msg *a = &f->raft[0].msg;
    assert_int_equal(a->n_entries, 4);
    assert_int_equal(a->entries[3].len, sizeof big_data);
    assert_memory_equal(a->entries[3].data, big_data, sizeof big_data);
    assert_memory_equal(a->entries[1].data, "hello", 5);
    assert_int_equal(a->entries[2].type, RAFT_ENTRY_CONF);
    const struct raft_msg *s = &f->raft[10].msg;
    assert_non_null(s->snap);
    assert_int_equal(s->snap->conf.n_voters, 3);
    assert_int_equal(s->snap->conf.learners[0], 7);
    assert_int_equal(s->data_len, 19);
    assert_memory_equal(s->data, "state machine bytes", 19);
    assert_null(f->raft[11].msg.data);
    assert_true(f->raft[3].msg.reject);
    assert_true(f->raft[6].msg.transfer);
    assert_int_equal(f->raft[4].msg.ctx, UINT64_MAX);
    rw_frame_free(f);
    rw_buf_free(&b);
}

static void test_raft_empty_batch(void **state)
{
    (void)state;
    struct rw_buf b = {0};
    assert_int_equal(rw_encode_raft(&b, NULL, 0, RW_FRAME_LIMIT), RW_OK);
    struct rw_frame *f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_RAFT);
    assert_int_equal(f->n_raft, 0);
    rw_frame_free(f);
    rw_buf_free(&b);
}

/* Several frames appended to one buffer are cut apart by their prefixes. */
static void test_prefix_and_concatenation(void **state)
{
    (void)state;
    struct rw_buf b = {0};
    struct raft_msg hb = {.type = RAFT_MSG_HEARTBEAT, .from = 1, .to = 2, .term = 3, .commit = 4};
    struct rw_out o = {.group_id = 42, .msg = &hb};
    assert_int_equal(rw_encode_ping(&b, 7), RW_OK);
    assert_int_equal(rw_encode_raft(&b, &o, 1, RW_FRAME_LIMIT), RW_OK);
    assert_int_equal(rw_encode_pong(&b, 8), RW_OK);

    size_t off = 0, len = 0;
    enum rw_frame_type want[] = {RW_FRAME_PING, RW_FRAME_RAFT, RW_FRAME_PONG};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(rw_frame_length(b.data + off, 3, RW_FRAME_LIMIT, &len), 0); /* partial */
        assert_int_equal(rw_frame_length(b.data + off, b.len - off, RW_FRAME_LIMIT, &len), 1);
        struct rw_frame *f = NULL;
        assert_int_equal(rw_decode(b.data + off + RW_PREFIX_LEN, len, &f, NULL, 0), RW_OK);
        assert_int_equal(f->type, want[i]);
        if (i == 1) assert_true(rw_msg_equal(&f->raft[0].msg, &hb));
        else assert_int_equal(f->seq, i == 0 ? 7 : 8);
        rw_frame_free(f);
        off += RW_PREFIX_LEN + len;
    }
    assert_int_equal(off, b.len);
    /* A prefix announcing more than the limit is refused before any byte of the body arrives. */
    uint8_t huge[4] = {0x01, 0x00, 0x00, 0x01};
    assert_int_equal(rw_frame_length(huge, 4, 1 << 20, &len), RW_ETOOBIG);
    assert_int_equal(len, 0x01000001);
    rw_buf_free(&b);
}

static void test_encode_limits(void **state)
{
    (void)state;
    struct rw_buf b = {0};
    assert_int_equal(rw_encode_ping(&b, 1), RW_OK);
    size_t before = b.len;
    struct raft_entry e = {.term = 1, .type = RAFT_ENTRY_NORMAL, .len = sizeof big_data, .data = big_data};
    struct raft_msg m = {.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .term = 1, .n_entries = 1, .entries = &e};
    struct rw_out o = {.group_id = 1, .msg = &m};
    assert_int_equal(rw_encode_raft(&b, &o, 1, 65536), RW_ETOOBIG);
    assert_int_equal(b.len, before);
    assert_int_equal(rw_encode_raft(&b, &o, 1, 80000), RW_OK);

    struct rw_call c = {.id = 1, .method = "queue.declare", .payload = big_data, .len = sizeof big_data};
    before = b.len;
    assert_int_equal(rw_encode_call(&b, &c, 1000), RW_ETOOBIG);
    assert_int_equal(b.len, before);
    rw_buf_free(&b);
}

/* The encoder applies the decoder's rules: nothing a peer would refuse is ever sent. */
static void test_encode_refuses_invalid(void **state)
{
    (void)state;
    struct rw_buf b = {0};
    struct raft_entry e = {.term = 1, .type = 9};
    struct raft_snapshot_meta snap = {.index = 5, .term = 1, .conf = {.n_voters = 1, .voters = {1}}};
    struct raft_msg bad[] = {
        {.type = 0, .from = 1, .to = 2},
        {.type = RAFT_MSG_TIMEOUT_NOW + 1, .from = 1, .to = 2},
        {.type = RAFT_MSG_VOTE, .from = 0, .to = 2},
        {.type = RAFT_MSG_VOTE, .from = 2, .to = 2},
        {.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .n_entries = 1, .entries = &e},
        {.type = RAFT_MSG_SNAPSHOT, .from = 1, .to = 2, .index = 5, .log_term = 1},
        {.type = RAFT_MSG_SNAPSHOT, .from = 1, .to = 2, .index = 6, .log_term = 1, .snap = &snap},
        {.type = RAFT_MSG_VOTE, .from = 1, .to = 2, .snap = &snap},
        {.type = RAFT_MSG_VOTE, .from = 1, .to = 2, .data = "x", .data_len = 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[200] = "";
        assert_int_equal(rw_check_msg(&bad[i], err, sizeof err), RW_EINVAL);
        assert_true(err[0] != '\0');
        struct rw_out o = {.group_id = 1, .msg = &bad[i]};
        assert_int_equal(rw_encode_raft(&b, &o, 1, RW_FRAME_LIMIT), RW_EINVAL);
        assert_int_equal(b.len, 0);
    }
    struct rw_ident id = {.version = 1, .node_id = 0, .node_name = "rabbit@a", .cluster_name = ""};
    assert_int_equal(rw_encode_hello(&b, &id), RW_EINVAL);
    id.node_id = 1;
    id.node_name = "bad\nname";
    assert_int_equal(rw_encode_hello(&b, &id), RW_EINVAL);
    struct rw_call c = {.id = 1, .method = ""};
    assert_int_equal(rw_encode_call(&b, &c, RW_FRAME_LIMIT), RW_EINVAL);
    assert_int_equal(b.len, 0);
    rw_buf_free(&b);
}

/* ---- round trips of the other frames ------------------------------------------------------ */

static void test_handshake_roundtrip(void **state)
{
    (void)state;
    struct rw_ident id = {.version = RW_VERSION, .node_id = 3, .node_name = "rabbit@node-3",
                          .cluster_name = "prod cluster", .max_frame = 1 << 20};
    for (int i = 0; i < RW_NONCE_LEN; i++) id.nonce[i] = (uint8_t)(i + 1);
    uint8_t mac[RW_MAC_LEN];
    for (int i = 0; i < RW_MAC_LEN; i++) mac[i] = (uint8_t)(200 - i);

    struct rw_buf b = {0};
    assert_int_equal(rw_encode_hello(&b, &id), RW_OK);
    struct rw_frame *f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_HELLO);
    assert_int_equal(f->ident.version, RW_VERSION);
    assert_int_equal(f->ident.node_id, 3);
    assert_string_equal(f->ident.node_name, "rabbit@node-3");
    assert_string_equal(f->ident.cluster_name, "prod cluster");
    assert_memory_equal(f->ident.nonce, id.nonce, RW_NONCE_LEN);
    assert_int_equal(f->ident.max_frame, 1 << 20);
    rw_frame_free(f);

    b.len = 0;
    id.cluster_name = "";
    assert_int_equal(rw_encode_challenge(&b, &id, mac), RW_OK);
    f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_CHALLENGE);
    assert_string_equal(f->ident.cluster_name, "");
    assert_memory_equal(f->mac, mac, RW_MAC_LEN);
    assert_memory_equal(f->ident.nonce, id.nonce, RW_NONCE_LEN);
    rw_frame_free(f);

    b.len = 0;
    assert_int_equal(rw_encode_response(&b, mac), RW_OK);
    f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_RESPONSE);
    assert_memory_equal(f->mac, mac, RW_MAC_LEN);
    rw_frame_free(f);
    rw_buf_free(&b);
}

static void test_call_roundtrip(void **state)
{
    (void)state;
    struct rw_buf b = {0};
    struct rw_call c = {.id = UINT64_MAX, .method = "queue.declare", .payload = "\0args\0", .len = 6};
    assert_int_equal(rw_encode_call(&b, &c, RW_FRAME_LIMIT), RW_OK);
    struct rw_frame *f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_CALL);
    assert_int_equal(f->call.id, UINT64_MAX);
    assert_string_equal(f->call.method, "queue.declare");
    assert_int_equal(f->call.len, 6);
    assert_memory_equal(f->call.payload, "\0args\0", 6);
    rw_frame_free(f);

    b.len = 0;
    struct rw_call_reply r = {.id = 9, .status = -404, .error = "NOT_FOUND - no queue 'q'",
                              .payload = "p", .len = 1};
    assert_int_equal(rw_encode_call_reply(&b, &r, RW_FRAME_LIMIT), RW_OK);
    f = decode_one(&b);
    assert_int_equal(f->type, RW_FRAME_CALL_REPLY);
    assert_int_equal(f->reply.id, 9);
    assert_int_equal(f->reply.status, -404);
    assert_string_equal(f->reply.error, "NOT_FOUND - no queue 'q'");
    assert_int_equal(f->reply.len, 1);
    rw_frame_free(f);

    b.len = 0;
    struct rw_call_reply ok = {.id = 10};
    assert_int_equal(rw_encode_call_reply(&b, &ok, RW_FRAME_LIMIT), RW_OK);
    f = decode_one(&b);
    assert_int_equal(f->reply.status, 0);
    assert_string_equal(f->reply.error, "");
    assert_int_equal(f->reply.len, 0);
    rw_frame_free(f);
    rw_buf_free(&b);
}

/* ---- refusals ----------------------------------------------------------------------------- */

static void test_garbage(void **state)
{
    (void)state;
    struct rw_frame *f = (struct rw_frame *)1;
    char err[200];
    /* An empty frame is a valid empty protobuf message, but carries no kind. */
    assert_int_equal(rw_decode("", 0, &f, err, sizeof err), RW_EINVAL);
    assert_null(f);
    const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(rw_decode(junk, sizeof junk, &f, err, sizeof err), RW_EMALFORMED);
    /* A truncated frame: the first bytes of a real one. */
    struct rw_buf b = {0};
    assert_int_equal(rw_encode_ping(&b, 123456789), RW_OK);
    assert_int_equal(rw_decode(b.data + RW_PREFIX_LEN, b.len - RW_PREFIX_LEN - 1, &f, err, sizeof err),
                     RW_EMALFORMED);
    /* A frame kind from the future (field 9, length-delimited, empty). */
    const uint8_t future[] = {0x4a, 0x00};
    assert_int_equal(rw_decode(future, sizeof future, &f, err, sizeof err), RW_EINVAL);
    assert_non_null(strstr(err, "frame kind"));
    rw_buf_free(&b);
}

/* Sets up a Frame holding one RaftMessage (pm) in a batch. */
#define RAFT_FRAME(fr, batch, pm, pptr)                  \
    Warren__RaftMessage pm = WARREN__RAFT_MESSAGE__INIT; \
    Warren__RaftMessage *pptr[1] = {&pm};                \
    Warren__RaftBatch batch = WARREN__RAFT_BATCH__INIT;  \
    batch.n_messages = 1;                                \
    batch.messages = pptr;                               \
    Warren__Frame fr = WARREN__FRAME__INIT;              \
    fr.msg_case = WARREN__FRAME__MSG_RAFT;               \
    fr.raft = &batch;                                    \
    pm.from = 1;                                         \
    pm.to = 2;                                           \
    pm.type = RAFT_MSG_HEARTBEAT

static void expect_refused(const Warren__Frame *fr, const char *reason_part)
{
    char err[200] = "";
    assert_int_equal(decode_pb(fr, err, sizeof err), RW_EINVAL);
    if (!strstr(err, reason_part)) fail_msg("reason '%s' lacks '%s'", err, reason_part);
}

static void test_refuse_raft_fields(void **state)
{
    (void)state;
    RAFT_FRAME(fr, batch, pm, pptr);
    char err[200];
    assert_int_equal(decode_pb(&fr, err, sizeof err), RW_OK);

    pm.type = 0;
    expect_refused(&fr, "unknown raft message type 0");
    pm.type = 99;
    expect_refused(&fr, "unknown raft message type 99");
    pm.type = RAFT_MSG_HEARTBEAT;
    pm.to = 0;
    expect_refused(&fr, "bad node ids");
    pm.to = 2;

    /* Entries: only on appends, known types, well-formed configurations. */
    Warren__Entry e = WARREN__ENTRY__INIT;
    Warren__Entry *eptr[1] = {&e};
    pm.n_entries = 1;
    pm.entries = eptr;
    expect_refused(&fr, "entries on a");
    pm.type = RAFT_MSG_APPEND;
    assert_int_equal(decode_pb(&fr, err, sizeof err), RW_OK);
    e.type = 3;
    expect_refused(&fr, "unknown type 3");
    e.type = RAFT_ENTRY_CONF;
    e.data.len = 3;
    e.data.data = (uint8_t *)"abc";
    expect_refused(&fr, "malformed configuration");
    pm.n_entries = 0;
    pm.entries = NULL;

    /* Snapshot bytes or meta on anything but a snapshot message. */
    pm.snapshot_data.len = 1;
    pm.snapshot_data.data = (uint8_t *)"x";
    expect_refused(&fr, "snapshot bytes");
    pm.snapshot_data.len = 0;
    pm.snapshot_data.data = NULL;
}

static void test_refuse_snapshot_meta(void **state)
{
    (void)state;
    RAFT_FRAME(fr, batch, pm, pptr);
    pm.type = RAFT_MSG_SNAPSHOT;
    pm.index = 10;
    pm.log_term = 2;
    expect_refused(&fr, "without snapshot meta");

    Warren__SnapshotMeta sm = WARREN__SNAPSHOT_META__INIT;
    uint32_t ids[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    sm.index = 10;
    sm.term = 2;
    sm.n_voters = 3;
    sm.voters = ids;
    pm.snapshot = &sm;
    char err[200];
    assert_int_equal(decode_pb(&fr, err, sizeof err), RW_OK);

    sm.n_voters = RAFT_MAX_NODES + 1; /* more ids than a group can have */
    expect_refused(&fr, "exceeds");
    sm.n_voters = 6;
    sm.n_learners = 4; /* 10 in all */
    sm.learners = ids + 6;
    expect_refused(&fr, "exceeds");
    sm.n_learners = 1;
    sm.learners = ids; /* node 1 is already a voter */
    expect_refused(&fr, "twice");
    uint32_t zero = 0;
    sm.learners = &zero;
    expect_refused(&fr, "node id 0");
    sm.n_learners = 0;
    sm.index = 11; /* meta disagrees with the message */
    expect_refused(&fr, "carries");
    sm.index = 10;

    pm.type = RAFT_MSG_VOTE; /* meta on a non-snapshot message */
    expect_refused(&fr, "with snapshot meta");
}

static void test_refuse_handshake_fields(void **state)
{
    (void)state;
    uint8_t nonce[33] = {0};
    Warren__Hello h = WARREN__HELLO__INIT;
    h.version = 1;
    h.node_id = 1;
    h.node_name = "rabbit@a";
    h.nonce.len = 32;
    h.nonce.data = nonce;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_HELLO;
    fr.hello = &h;
    char err[200];
    assert_int_equal(decode_pb(&fr, err, sizeof err), RW_OK);

    h.nonce.len = 33;
    expect_refused(&fr, "nonce of 33 bytes");
    h.nonce.len = 0;
    expect_refused(&fr, "nonce of 0 bytes");
    h.nonce.len = 32;
    h.node_id = 0;
    expect_refused(&fr, "node id 0");
    h.node_id = 1;
    h.node_name = "";
    expect_refused(&fr, "node name");
    h.node_name = "evil\x1b[2J";
    expect_refused(&fr, "node name");
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    h.node_name = "rabbit@a";
    h.cluster_name = longname;
    expect_refused(&fr, "cluster name");

    Warren__HelloResponse r = WARREN__HELLO_RESPONSE__INIT;
    r.mac.len = 31;
    r.mac.data = nonce;
    Warren__Frame fr2 = WARREN__FRAME__INIT;
    fr2.msg_case = WARREN__FRAME__MSG_RESPONSE;
    fr2.response = &r;
    expect_refused(&fr2, "mac of 31 bytes");

    Warren__Call c = WARREN__CALL__INIT;
    Warren__Frame fr3 = WARREN__FRAME__INIT;
    fr3.msg_case = WARREN__FRAME__MSG_CALL;
    fr3.call = &c;
    expect_refused(&fr3, "method");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_raft_roundtrip),
        cmocka_unit_test(test_raft_empty_batch),
        cmocka_unit_test(test_prefix_and_concatenation),
        cmocka_unit_test(test_encode_limits),
        cmocka_unit_test(test_encode_refuses_invalid),
        cmocka_unit_test(test_handshake_roundtrip),
        cmocka_unit_test(test_call_roundtrip),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_refuse_raft_fields),
        cmocka_unit_test(test_refuse_snapshot_meta),
        cmocka_unit_test(test_refuse_handshake_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
