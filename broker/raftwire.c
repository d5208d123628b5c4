/* raftwire.c - packing and unpacking the Frames of broker/cluster.proto (see raftwire.h).
 *
 * Role: the only place that touches protobuf-c. Outgoing: plain C values (struct raft_msg,
 * struct rw_ident, ...) are wrapped in the generated structs, which point at the caller's
 * memory (no copy of entry data or snapshot bytes), and packed straight into the caller's
 * buffer after a big-endian length prefix. Incoming: protobuf-c unpacks into an arena (its
 * allocator is ours), then the generated structs are translated into struct rw_frame, whose
 * raft_msg/entry/snapshot/name/payload pointers point into the same arena. One rw_frame_free
 * releases everything at once, and a decode that fails halfway just drops the arena.
 *
 * Invariants:
 *  - a frame handed out by rw_decode has passed the same checks (rw_check_msg and friends) that
 *    the encoders apply, so encode(decode(x)) always succeeds and decodes to an equal frame;
 *  - encoders never leave a partial frame in the output buffer;
 *  - nothing here logs or aborts on bad input: callers get an error code and a reason. */
#include "broker/raftwire.h"

#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.pb-c.h"

/* ---- arena -------------------------------------------------------------------------------- */

#define ARENA_ALIGN (alignof(max_align_t))
#define ARENA_FIRST_CHUNK 1024
#define ARENA_MAX_CHUNK (1024 * 1024)

struct rw_chunk {
    struct rw_chunk *next;
    size_t used, cap;
    alignas(max_align_t) unsigned char data[];
};

struct rw_arena {
    struct rw_chunk *head; /* the chunk being filled; older and dedicated chunks follow */
    size_t next_cap;       /* size of the next regular chunk (doubles up to ARENA_MAX_CHUNK) */
    bool failed;           /* an allocation failed: report ENOMEM rather than "malformed" */
};

static struct rw_arena *arena_new(void)
{
    struct rw_arena *a = calloc(1, sizeof *a);
    if (a) a->next_cap = ARENA_FIRST_CHUNK;
    return a;
}

static void arena_free(struct rw_arena *a)
{
    if (!a) return;
    for (struct rw_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    free(a);
}

/* Big requests get a chunk of their own, linked behind the head, so the head's free space is
 * not abandoned by one large bytes field. */
static void *arena_alloc(struct rw_arena *a, size_t size)
{
    if (size > SIZE_MAX - ARENA_ALIGN - sizeof(struct rw_chunk)) {
        a->failed = true;
        return NULL;
    }
    size = (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1);
    if (size == 0) size = ARENA_ALIGN;
    struct rw_chunk *h = a->head;
    if (h && h->cap - h->used >= size) {
        void *p = h->data + h->used;
        h->used += size;
        return p;
    }
    bool dedicated = size > a->next_cap / 4;
    size_t cap = dedicated ? size : a->next_cap;
    struct rw_chunk *c = malloc(sizeof *c + cap);
    if (!c) {
        a->failed = true;
        return NULL;
    }
    c->cap = cap;
    c->used = size;
    if (dedicated && h) {
        c->next = h->next;
        h->next = c;
    } else {
        c->next = h;
        a->head = c;
        if (!dedicated && a->next_cap < ARENA_MAX_CHUNK) a->next_cap *= 2;
    }
    return c->data;
}

static void *arena_pb_alloc(void *data, size_t size) { return arena_alloc(data, size); }
static void arena_pb_free(void *data, void *p) { (void)data, (void)p; /* freed with the arena */ }

/* ---- small helpers ------------------------------------------------------------------------ */

static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(int code, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* protobuf-c's structs are not const-correct; packing only reads through these pointers. */
static uint8_t *unconst(const void *p) { return (uint8_t *)(uintptr_t)p; }

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

const char *rw_strerror(int err)
{
    switch (err) {
    case RW_OK: return "ok";
    case RW_EMALFORMED: return "malformed frame";
    case RW_EINVAL: return "invalid frame content";
    case RW_ETOOBIG: return "frame too large";
    case RW_ENOMEM: return "out of memory";
    default: return "unknown error";
    }
}

const char *rw_frame_name(enum rw_frame_type t)
{
    static const char *const names[] = {"?", "hello", "challenge", "response", "raft", "ping",
                                        "pong", "call", "call_reply"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "?";
}

void rw_buf_free(struct rw_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

bool rw_buf_reserve(struct rw_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra) return true;
    if (extra > SIZE_MAX / 2 - b->len) return false;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) return false;
    b->data = p;
    b->cap = cap;
    return true;
}

int rw_frame_length(const uint8_t *buf, size_t avail, size_t max_frame, size_t *len)
{
    if (avail < RW_PREFIX_LEN) return 0;
    uint32_t n = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
    *len = n;
    if (n > max_frame || n > RW_FRAME_LIMIT) return RW_ETOOBIG;
    return 1;
}

/* Packs m after a length prefix at the end of b; b is untouched on failure. */
static int pack_frame(struct rw_buf *b, const Warren__Frame *fr, size_t max_frame)
{
    size_t size = warren__frame__get_packed_size(fr);
    if (size > max_frame || size > RW_FRAME_LIMIT) return RW_ETOOBIG;
    if (!rw_buf_reserve(b, RW_PREFIX_LEN + size)) return RW_ENOMEM;
    put_be32(b->data + b->len, (uint32_t)size);
    size_t packed = warren__frame__pack(fr, b->data + b->len + RW_PREFIX_LEN);
    if (packed != size) return RW_ENOMEM; /* cannot happen: protobuf-c sized it itself */
    b->len += RW_PREFIX_LEN + size;
    return RW_OK;
}

/* ---- validation --------------------------------------------------------------------------- */

/* Names appear in log lines and management listings: printable ASCII only, bounded. */
static bool name_ok(const char *s, size_t max, bool allow_empty)
{
    if (!s) return allow_empty;
    size_t n = strlen(s);
    if (n > max || (n == 0 && !allow_empty)) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 0x20 || s[i] > 0x7e) return false;
    return true;
}

static int check_ident(const struct rw_ident *id, char *err, size_t errlen)
{
    if (id->node_id == 0) return fail(RW_EINVAL, err, errlen, "hello: node id 0");
    if (!name_ok(id->node_name, RW_MAX_NAME, false))
        return fail(RW_EINVAL, err, errlen, "hello: node name empty, too long or not printable");
    if (!name_ok(id->cluster_name, RW_MAX_NAME, true))
        return fail(RW_EINVAL, err, errlen, "hello: cluster name too long or not printable");
    return RW_OK;
}

static int check_conf(const struct raft_conf *c, char *err, size_t errlen)
{
    if (c->n_voters > RAFT_MAX_NODES || c->n_learners > RAFT_MAX_NODES ||
        c->n_voters + c->n_learners > RAFT_MAX_NODES)
        return fail(RW_EINVAL, err, errlen, "snapshot membership of %u voters + %u learners exceeds %d",
                    c->n_voters, c->n_learners, RAFT_MAX_NODES);
    for (unsigned i = 0; i < c->n_voters + c->n_learners; i++) {
        raft_id id = i < c->n_voters ? c->voters[i] : c->learners[i - c->n_voters];
        if (id == 0) return fail(RW_EINVAL, err, errlen, "snapshot membership holds node id 0");
        for (unsigned j = 0; j < i; j++)
            if ((j < c->n_voters ? c->voters[j] : c->learners[j - c->n_voters]) == id)
                return fail(RW_EINVAL, err, errlen, "snapshot membership lists node %u twice", id);
    }
    return RW_OK;
}

static int check_entries(const struct raft_msg *m, char *err, size_t errlen)
{
    if (m->n_entries > RW_MAX_ENTRIES)
        return fail(RW_EINVAL, err, errlen, "%u entries (at most %d)", m->n_entries, RW_MAX_ENTRIES);
    if (m->n_entries && m->type != RAFT_MSG_APPEND)
        return fail(RW_EINVAL, err, errlen, "entries on a %s message", raft_msg_name(m->type));
    if (m->n_entries && !m->entries) return fail(RW_EINVAL, err, errlen, "entries missing");
    for (uint32_t i = 0; i < m->n_entries; i++) {
        const struct raft_entry *e = &m->entries[i];
        if (e->type > RAFT_ENTRY_CONF)
            return fail(RW_EINVAL, err, errlen, "entry %u: unknown type %u", i, e->type);
        if (e->len && !e->data) return fail(RW_EINVAL, err, errlen, "entry %u: data missing", i);
        struct raft_conf conf;
        if (e->type == RAFT_ENTRY_CONF && raft_conf_decode(&conf, e->data, e->len) != RAFT_OK)
            return fail(RW_EINVAL, err, errlen, "entry %u: malformed configuration", i);
    }
    return RW_OK;
}

int rw_check_msg(const struct raft_msg *m, char *err, size_t errlen)
{
    if (m->type < RAFT_MSG_APPEND || m->type > RAFT_MSG_TIMEOUT_NOW)
        return fail(RW_EINVAL, err, errlen, "unknown raft message type %u", m->type);
    if (m->from == 0 || m->to == 0 || m->from == m->to)
        return fail(RW_EINVAL, err, errlen, "%s from %u to %u: bad node ids", raft_msg_name(m->type),
                    m->from, m->to);
    int rc = check_entries(m, err, errlen);
    if (rc != RW_OK) return rc;
    bool snap = m->type == RAFT_MSG_SNAPSHOT;
    if (snap != (m->snap != NULL))
        return fail(RW_EINVAL, err, errlen, "%s %s snapshot meta", raft_msg_name(m->type),
                    snap ? "without" : "with");
    if (m->data_len && (!snap || !m->data))
        return fail(RW_EINVAL, err, errlen, "snapshot bytes on a %s message", raft_msg_name(m->type));
    if (snap && (m->index != m->snap->index || m->log_term != m->snap->term))
        return fail(RW_EINVAL, err, errlen, "snapshot message names (%llu, %llu) but carries (%llu, %llu)",
                    (unsigned long long)m->index, (unsigned long long)m->log_term,
                    (unsigned long long)m->snap->index, (unsigned long long)m->snap->term);
    return snap ? check_conf(&m->snap->conf, err, errlen) : RW_OK;
}

/* ---- encoding ----------------------------------------------------------------------------- */

static void fill_entry(Warren__Entry *pe, const struct raft_entry *e)
{
    warren__entry__init(pe);
    pe->term = e->term;
    pe->type = e->type;
    pe->data.len = e->len;
    pe->data.data = e->len ? e->data : NULL;
}

static void fill_snapshot(Warren__SnapshotMeta *ps, const struct raft_snapshot_meta *s)
{
    warren__snapshot_meta__init(ps);
    ps->index = s->index;
    ps->term = s->term;
    ps->n_voters = s->conf.n_voters;
    ps->voters = (uint32_t *)(uintptr_t)s->conf.voters;
    ps->n_learners = s->conf.n_learners;
    ps->learners = (uint32_t *)(uintptr_t)s->conf.learners;
}

/* Wraps one message; its entries take the next slots of ents/eptrs (*ei counts them). */
static void fill_msg(Warren__RaftMessage *pm, const struct rw_out *o, Warren__Entry *ents,
                     Warren__Entry **eptrs, size_t *ei, Warren__SnapshotMeta *snap)
{
    const struct raft_msg *m = o->msg;
    warren__raft_message__init(pm);
    pm->group_id = o->group_id;
    pm->type = m->type;
    pm->from = m->from;
    pm->to = m->to;
    pm->term = m->term;
    pm->index = m->index;
    pm->log_term = m->log_term;
    pm->commit = m->commit;
    pm->hint_index = m->hint_index;
    pm->ctx = m->ctx;
    pm->reject = m->reject;
    pm->transfer = m->transfer;
    pm->n_entries = m->n_entries;
    pm->entries = m->n_entries ? eptrs + *ei : NULL;
    for (uint32_t i = 0; i < m->n_entries; i++, (*ei)++) {
        fill_entry(&ents[*ei], &m->entries[i]);
        eptrs[*ei] = &ents[*ei];
    }
    if (m->snap) {
        fill_snapshot(snap, m->snap);
        pm->snapshot = snap;
    }
    pm->snapshot_data.len = m->data_len;
    pm->snapshot_data.data = m->data_len ? unconst(m->data) : NULL;
}

int rw_encode_raft(struct rw_buf *b, const struct rw_out *msgs, size_t n, size_t max_frame)
{
    if (n > RW_MAX_MSGS) return RW_EINVAL;
    size_t n_ents = 0, n_snaps = 0;
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].msg || rw_check_msg(msgs[i].msg, NULL, 0) != RW_OK) return RW_EINVAL;
        n_ents += msgs[i].msg->n_entries;
        n_snaps += msgs[i].msg->snap != NULL;
    }
    /* Every wrapper lives in one scratch arena, freed once packed. */
    struct rw_arena *a = arena_new();
    if (!a) return RW_ENOMEM;
    Warren__RaftMessage *pms = arena_alloc(a, n * sizeof *pms);
    Warren__RaftMessage **pptrs = arena_alloc(a, n * sizeof *pptrs);
    Warren__Entry *ents = arena_alloc(a, n_ents * sizeof *ents);
    Warren__Entry **eptrs = arena_alloc(a, n_ents * sizeof *eptrs);
    Warren__SnapshotMeta *snaps = arena_alloc(a, n_snaps * sizeof *snaps);
    int rc = RW_ENOMEM;
    if (!a->failed) {
        size_t ei = 0, si = 0;
        for (size_t i = 0; i < n; i++) {
            fill_msg(&pms[i], &msgs[i], ents, eptrs, &ei, &snaps[si]);
            si += msgs[i].msg->snap != NULL;
            pptrs[i] = &pms[i];
        }
        Warren__RaftBatch batch = WARREN__RAFT_BATCH__INIT;
        batch.n_messages = n;
        batch.messages = n ? pptrs : NULL;
        Warren__Frame fr = WARREN__FRAME__INIT;
        fr.msg_case = WARREN__FRAME__MSG_RAFT;
        fr.raft = &batch;
        rc = pack_frame(b, &fr, max_frame);
    }
    arena_free(a);
    return rc;
}

int rw_encode_hello(struct rw_buf *b, const struct rw_ident *id)
{
    if (check_ident(id, NULL, 0) != RW_OK) return RW_EINVAL;
    Warren__Hello h = WARREN__HELLO__INIT;
    h.version = id->version;
    h.node_id = id->node_id;
    h.node_name = (char *)unconst(id->node_name);
    h.cluster_name = (char *)unconst(id->cluster_name ? id->cluster_name : "");
    h.nonce.len = RW_NONCE_LEN;
    h.nonce.data = unconst(id->nonce);
    h.max_frame = id->max_frame;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_HELLO;
    fr.hello = &h;
    return pack_frame(b, &fr, RW_FRAME_LIMIT);
}

int rw_encode_challenge(struct rw_buf *b, const struct rw_ident *id, const uint8_t mac[RW_MAC_LEN])
{
    if (check_ident(id, NULL, 0) != RW_OK) return RW_EINVAL;
    Warren__HelloChallenge h = WARREN__HELLO_CHALLENGE__INIT;
    h.version = id->version;
    h.node_id = id->node_id;
    h.node_name = (char *)unconst(id->node_name);
    h.cluster_name = (char *)unconst(id->cluster_name ? id->cluster_name : "");
    h.nonce.len = RW_NONCE_LEN;
    h.nonce.data = unconst(id->nonce);
    h.mac.len = RW_MAC_LEN;
    h.mac.data = unconst(mac);
    h.max_frame = id->max_frame;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_CHALLENGE;
    fr.challenge = &h;
    return pack_frame(b, &fr, RW_FRAME_LIMIT);
}

int rw_encode_response(struct rw_buf *b, const uint8_t mac[RW_MAC_LEN])
{
    Warren__HelloResponse r = WARREN__HELLO_RESPONSE__INIT;
    r.mac.len = RW_MAC_LEN;
    r.mac.data = unconst(mac);
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_RESPONSE;
    fr.response = &r;
    return pack_frame(b, &fr, RW_FRAME_LIMIT);
}

int rw_encode_ping(struct rw_buf *b, uint64_t seq)
{
    Warren__Ping p = WARREN__PING__INIT;
    p.seq = seq;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_PING;
    fr.ping = &p;
    return pack_frame(b, &fr, RW_FRAME_LIMIT);
}

int rw_encode_pong(struct rw_buf *b, uint64_t seq)
{
    Warren__Pong p = WARREN__PONG__INIT;
    p.seq = seq;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_PONG;
    fr.pong = &p;
    return pack_frame(b, &fr, RW_FRAME_LIMIT);
}

int rw_encode_call(struct rw_buf *b, const struct rw_call *c, size_t max_frame)
{
    if (!name_ok(c->method, RW_MAX_METHOD, false) || (c->len && !c->payload)) return RW_EINVAL;
    Warren__Call pc = WARREN__CALL__INIT;
    pc.id = c->id;
    pc.method = (char *)unconst(c->method);
    pc.payload.len = c->len;
    pc.payload.data = c->len ? unconst(c->payload) : NULL;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_CALL;
    fr.call = &pc;
    return pack_frame(b, &fr, max_frame);
}

int rw_encode_call_reply(struct rw_buf *b, const struct rw_call_reply *r, size_t max_frame)
{
    const char *error = r->error ? r->error : "";
    if (strlen(error) > RW_MAX_ERROR || (r->len && !r->payload)) return RW_EINVAL;
    Warren__CallReply pr = WARREN__CALL_REPLY__INIT;
    pr.id = r->id;
    pr.status = r->status;
    pr.error = (char *)unconst(error);
    pr.payload.len = r->len;
    pr.payload.data = r->len ? unconst(r->payload) : NULL;
    Warren__Frame fr = WARREN__FRAME__INIT;
    fr.msg_case = WARREN__FRAME__MSG_CALL_REPLY;
    fr.call_reply = &pr;
    return pack_frame(b, &fr, max_frame);
}

/* ---- decoding ----------------------------------------------------------------------------- */

static int take_bytes32(uint8_t dst[32], const ProtobufCBinaryData *src, const char *what, char *err,
                        size_t errlen)
{
    if (src->len != 32 || !src->data)
        return fail(RW_EINVAL, err, errlen, "%s of %zu bytes (expected 32)", what, src->len);
    memcpy(dst, src->data, 32);
    return RW_OK;
}

static int take_ident(struct rw_ident *id, uint32_t version, uint32_t node_id, char *node_name,
                      char *cluster_name, const ProtobufCBinaryData *nonce, uint32_t max_frame,
                      char *err, size_t errlen)
{
    id->version = version;
    id->node_id = node_id;
    id->node_name = node_name;
    id->cluster_name = cluster_name;
    id->max_frame = max_frame;
    int rc = take_bytes32(id->nonce, nonce, "nonce", err, errlen);
    return rc != RW_OK ? rc : check_ident(id, err, errlen);
}

static int take_snapshot(struct rw_arena *a, struct raft_msg *m, const Warren__SnapshotMeta *ps,
                         char *err, size_t errlen)
{
    if (ps->n_voters > RAFT_MAX_NODES || ps->n_learners > RAFT_MAX_NODES ||
        ps->n_voters + ps->n_learners > RAFT_MAX_NODES)
        return fail(RW_EINVAL, err, errlen, "snapshot membership of %zu voters + %zu learners exceeds %d",
                    ps->n_voters, ps->n_learners, RAFT_MAX_NODES);
    struct raft_snapshot_meta *s = arena_alloc(a, sizeof *s);
    if (!s) return RW_ENOMEM;
    memset(s, 0, sizeof *s);
    s->index = ps->index;
    s->term = ps->term;
    s->conf.n_voters = (unsigned)ps->n_voters;
    s->conf.n_learners = (unsigned)ps->n_learners;
    if (ps->n_voters) memcpy(s->conf.voters, ps->voters, ps->n_voters * sizeof(raft_id));
    if (ps->n_learners) memcpy(s->conf.learners, ps->learners, ps->n_learners * sizeof(raft_id));
    m->snap = s;
    return RW_OK;
}

static int take_entries(struct rw_arena *a, struct raft_msg *m, const Warren__RaftMessage *pm,
                        char *err, size_t errlen)
{
    if (pm->n_entries > RW_MAX_ENTRIES)
        return fail(RW_EINVAL, err, errlen, "%zu entries (at most %d)", pm->n_entries, RW_MAX_ENTRIES);
    struct raft_entry *es = arena_alloc(a, pm->n_entries * sizeof *es);
    if (!es) return RW_ENOMEM;
    for (size_t i = 0; i < pm->n_entries; i++) {
        const Warren__Entry *pe = pm->entries[i];
        if (pe->data.len > UINT32_MAX)
            return fail(RW_EINVAL, err, errlen, "entry %zu of %zu bytes", i, pe->data.len);
        es[i] = (struct raft_entry){.term = pe->term, .type = pe->type, .len = (uint32_t)pe->data.len,
                                    .data = pe->data.len ? pe->data.data : NULL};
    }
    m->n_entries = (uint32_t)pm->n_entries;
    m->entries = pm->n_entries ? es : NULL;
    return RW_OK;
}

static int take_msg(struct rw_arena *a, struct rw_raft_item *it, const Warren__RaftMessage *pm,
                    char *err, size_t errlen)
{
    struct raft_msg *m = &it->msg;
    memset(it, 0, sizeof *it);
    it->group_id = pm->group_id;
    m->type = pm->type;
    m->from = pm->from;
    m->to = pm->to;
    m->term = pm->term;
    m->index = pm->index;
    m->log_term = pm->log_term;
    m->commit = pm->commit;
    m->hint_index = pm->hint_index;
    m->ctx = pm->ctx;
    m->reject = pm->reject;
    m->transfer = pm->transfer;
    int rc = take_entries(a, m, pm, err, errlen);
    if (rc == RW_OK && pm->snapshot) rc = take_snapshot(a, m, pm->snapshot, err, errlen);
    if (rc != RW_OK) return rc;
    m->data_len = pm->snapshot_data.len;
    m->data = pm->snapshot_data.len ? pm->snapshot_data.data : NULL;
    return rw_check_msg(m, err, errlen);
}

static int take_raft(struct rw_arena *a, struct rw_frame *f, const Warren__RaftBatch *pb, char *err,
                     size_t errlen)
{
    if (pb->n_messages > RW_MAX_MSGS)
        return fail(RW_EINVAL, err, errlen, "raft batch of %zu messages (at most %d)", pb->n_messages,
                    RW_MAX_MSGS);
    f->raft = arena_alloc(a, pb->n_messages * sizeof *f->raft);
    if (!f->raft) return RW_ENOMEM;
    f->n_raft = pb->n_messages;
    for (size_t i = 0; i < pb->n_messages; i++) {
        char why[160];
        int rc = take_msg(a, &f->raft[i], pb->messages[i], why, sizeof why);
        if (rc == RW_ENOMEM) return rc;
        if (rc != RW_OK) return fail(rc, err, errlen, "raft message %zu: %s", i, why);
    }
    return RW_OK;
}

static int take_call(struct rw_frame *f, const Warren__Call *pc, char *err, size_t errlen)
{
    if (!name_ok(pc->method, RW_MAX_METHOD, false))
        return fail(RW_EINVAL, err, errlen, "call: method name empty, too long or not printable");
    f->call = (struct rw_call){.id = pc->id, .method = pc->method, .payload = pc->payload.data,
                               .len = pc->payload.len};
    return RW_OK;
}

static int take_reply(struct rw_frame *f, const Warren__CallReply *pr, char *err, size_t errlen)
{
    if (strlen(pr->error) > RW_MAX_ERROR)
        return fail(RW_EINVAL, err, errlen, "call reply: error text over %d bytes", RW_MAX_ERROR);
    f->reply = (struct rw_call_reply){.id = pr->id, .status = pr->status, .error = pr->error,
                                      .payload = pr->payload.data, .len = pr->payload.len};
    return RW_OK;
}

/* Translates the unpacked Frame into f (both in arena a). */
static int take_frame(struct rw_arena *a, struct rw_frame *f, const Warren__Frame *pf, char *err,
                      size_t errlen)
{
    switch (pf->msg_case) {
    case WARREN__FRAME__MSG_HELLO:
        f->type = RW_FRAME_HELLO;
        return take_ident(&f->ident, pf->hello->version, pf->hello->node_id, pf->hello->node_name,
                          pf->hello->cluster_name, &pf->hello->nonce, pf->hello->max_frame, err, errlen);
    case WARREN__FRAME__MSG_CHALLENGE: {
        const Warren__HelloChallenge *c = pf->challenge;
        f->type = RW_FRAME_CHALLENGE;
        int rc = take_ident(&f->ident, c->version, c->node_id, c->node_name, c->cluster_name, &c->nonce,
                            c->max_frame, err, errlen);
        return rc != RW_OK ? rc : take_bytes32(f->mac, &c->mac, "mac", err, errlen);
    }
    case WARREN__FRAME__MSG_RESPONSE:
        f->type = RW_FRAME_RESPONSE;
        return take_bytes32(f->mac, &pf->response->mac, "mac", err, errlen);
    case WARREN__FRAME__MSG_RAFT:
        f->type = RW_FRAME_RAFT;
        return take_raft(a, f, pf->raft, err, errlen);
    case WARREN__FRAME__MSG_PING:
        f->type = RW_FRAME_PING;
        f->seq = pf->ping->seq;
        return RW_OK;
    case WARREN__FRAME__MSG_PONG:
        f->type = RW_FRAME_PONG;
        f->seq = pf->pong->seq;
        return RW_OK;
    case WARREN__FRAME__MSG_CALL:
        f->type = RW_FRAME_CALL;
        return take_call(f, pf->call, err, errlen);
    case WARREN__FRAME__MSG_CALL_REPLY:
        f->type = RW_FRAME_CALL_REPLY;
        return take_reply(f, pf->call_reply, err, errlen);
    default:
        return fail(RW_EINVAL, err, errlen, "unknown or missing frame kind");
    }
}

int rw_decode(const void *payload, size_t len, struct rw_frame **out, char *err, size_t errlen)
{
    *out = NULL;
    if (len > RW_FRAME_LIMIT) return fail(RW_ETOOBIG, err, errlen, "frame of %zu bytes", len);
    struct rw_arena *a = arena_new();
    if (!a) return fail(RW_ENOMEM, err, errlen, "out of memory");
    ProtobufCAllocator alloc = {.alloc = arena_pb_alloc, .free = arena_pb_free, .allocator_data = a};
    Warren__Frame *pf = warren__frame__unpack(&alloc, len, len ? payload : (const uint8_t *)"");
    struct rw_frame *f = pf ? arena_alloc(a, sizeof *f) : NULL;
    int rc;
    if (!f) {
        rc = a->failed ? fail(RW_ENOMEM, err, errlen, "out of memory")
                       : fail(RW_EMALFORMED, err, errlen, "not a protobuf Frame");
    } else {
        memset(f, 0, sizeof *f);
        f->arena = a;
        rc = take_frame(a, f, pf, err, errlen);
        if (rc != RW_OK && a->failed) rc = fail(RW_ENOMEM, err, errlen, "out of memory");
    }
    if (rc != RW_OK) {
        arena_free(a);
        return rc;
    }
    *out = f;
    return RW_OK;
}

void rw_frame_free(struct rw_frame *f)
{
    if (f) arena_free(f->arena);
}

/* ---- comparison --------------------------------------------------------------------------- */

static bool bytes_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static bool conf_equal(const struct raft_conf *a, const struct raft_conf *b)
{
    return a->n_voters == b->n_voters && a->n_learners == b->n_learners &&
           memcmp(a->voters, b->voters, a->n_voters * sizeof(raft_id)) == 0 &&
           memcmp(a->learners, b->learners, a->n_learners * sizeof(raft_id)) == 0;
}

bool rw_msg_equal(const struct raft_msg *a, const struct raft_msg *b)
{
    if (a->type != b->type || a->from != b->from || a->to != b->to || a->term != b->term ||
        a->index != b->index || a->log_term != b->log_term || a->commit != b->commit ||
        a->hint_index != b->hint_index || a->ctx != b->ctx || a->reject != b->reject ||
        a->transfer != b->transfer || a->n_entries != b->n_entries ||
        !bytes_equal(a->data, a->data_len, b->data, b->data_len) || (a->snap == NULL) != (b->snap == NULL))
        return false;
    for (uint32_t i = 0; i < a->n_entries; i++) {
        const struct raft_entry *x = &a->entries[i], *y = &b->entries[i];
        if (x->term != y->term || x->type != y->type || !bytes_equal(x->data, x->len, y->data, y->len))
            return false;
    }
    return !a->snap || (a->snap->index == b->snap->index && a->snap->term == b->snap->term &&
                        conf_equal(&a->snap->conf, &b->snap->conf));
}
