/* fuzz_qqsm.c - libFuzzer target for the quorum queue state machine (broker/qq_sm.c).
 *
 * Three uses of each input:
 *   1. the whole input as one encoded command (qsm_decode);
 *   2. the whole input as a snapshot (qsm_restore);
 *   3. the input as a command stream applied to a fresh state. The first byte picks how the
 *      rest is read: even - length-prefixed ([u16 len][bytes]) encoded commands, the malformed
 *      ones skipped; odd - 4 bytes per command, mapped onto a valid command whose ids come from
 *      recent deliveries and dead letters, so mutations reach deep states (returns, SAC hand-
 *      overs, delivery limits, at-least-once) instead of dying in the decoder.
 *
 * Properties checked (abort() on violation, so libFuzzer reports it):
 *   - nothing crashes, leaks or touches freed memory (ASan/UBSan), whatever the bytes; effects
 *     read every lent message body;
 *   - whatever decodes re-encodes to the same bytes; whatever restores snapshots to the same bytes
 *     (in the kind it came in: bodies inline or by length);
 *   - during a stream, snapshot -> restore -> snapshot is byte-identical, and a copy restored
 *     half way and fed the rest of the stream ends byte-identical to the original and produces
 *     the same effects;
 *   - the counters add up: live = ready + unacked + dlx, and (odd mode, where every purge
 *     reports its count) enqueued = ready + unacked + settled + purged + dead-lettered. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/qq_sm.h"

#define MAX_CMDS 2048
#define RING 32

struct seen_dlv {
    uint32_t node;
    uint64_t chan;
    uint8_t tag[255];
    size_t tag_len;
    uint64_t id;
};

struct fuzz_fx {
    uint64_t hash;
    uint8_t op;          /* the command being applied */
    uint64_t purged;     /* from purge results */
    bool purge_unknown;  /* a purge without a request id happened: its count is unknown */
    struct seen_dlv dlv[RING];
    unsigned n_dlv;
    uint64_t dlx_ids[RING];
    unsigned n_dlx;
};

static void mix(struct fuzz_fx *f, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) f->hash = (f->hash ^ b[i]) * 1099511628211ULL;
}

static void remember(struct fuzz_fx *f, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t id)
{
    struct seen_dlv *d = &f->dlv[f->n_dlv++ % RING];
    d->node = node;
    d->chan = chan;
    d->tag_len = tag.len > sizeof d->tag ? sizeof d->tag : tag.len;
    if (d->tag_len) memcpy(d->tag, tag.ptr, d->tag_len);
    d->id = id;
}

static void on_deliver(void *ud, uint32_t node, uint64_t chan, amqp_bytes_t tag, uint64_t msg_id, msg_t *m,
                       uint32_t dc, bool redelivered)
{
    struct fuzz_fx *f = ud;
    if (redelivered != (dc > 0)) abort();
    mix(f, "D", 1);
    mix(f, &node, sizeof node);
    mix(f, &chan, sizeof chan);
    mix(f, tag.ptr, tag.len);
    mix(f, &msg_id, sizeof msg_id);
    mix(f, m->body, m->body_len);
    mix(f, &dc, sizeof dc);
    remember(f, node, chan, tag, msg_id);
}

static void on_result(void *ud, uint32_t node, uint64_t req, const struct qsm_result *r)
{
    struct fuzz_fx *f = ud;
    if (req == 0) abort(); /* results only for commands that asked */
    mix(f, "R", 1);
    mix(f, &node, sizeof node);
    mix(f, &r->status, sizeof r->status);
    mix(f, &r->count, sizeof r->count);
    if (f->op == QSM_PURGE) f->purged += r->count;
    if (r->m) {
        mix(f, r->m->body, r->m->body_len);
        mix(f, &r->msg_id, sizeof r->msg_id);
        remember(f, node, 0, (amqp_bytes_t){(const uint8_t *)"", 0}, r->msg_id);
    }
}

static void on_dead_letter(void *ud, msg_t *m, const char *reason, uint32_t dc, uint64_t dlx_id)
{
    struct fuzz_fx *f = ud;
    mix(f, "X", 1);
    mix(f, reason, strlen(reason));
    mix(f, m->body, m->body_len);
    mix(f, &dc, sizeof dc);
    mix(f, &dlx_id, sizeof dlx_id);
    if (dlx_id) f->dlx_ids[f->n_dlx++ % RING] = dlx_id;
}

static uint64_t ready_count(const qsm_t *s)
{
    struct qsm_stats st;
    qsm_stats(s, &st);
    return st.ready;
}

static void snapshot_of(const qsm_t *s, amqp_buf_t *out)
{
    out->len = 0;
    qsm_snapshot(s, out);
}

static void check_roundtrip(const qsm_t *s)
{
    amqp_buf_t a = {0}, b = {0};
    snapshot_of(s, &a);
    qsm_t *t = qsm_restore(a.data, a.len);
    if (!t) abort();
    snapshot_of(t, &b);
    if (a.len != b.len || memcmp(a.data, b.data, a.len)) abort();
    qsm_free(t);
    /* META (bodies by length): restores with every body absent, and snapshots back the same. */
    a.len = b.len = 0;
    if (qsm_snapshot_ex(s, &a, QSM_SNAP_META, NULL, NULL) != 0) abort();
    t = qsm_restore(a.data, a.len);
    if (!t || qsm_snapshot_ex(t, &b, QSM_SNAP_META, NULL, NULL) != 0) abort();
    if (a.len != b.len || memcmp(a.data, b.data, a.len)) abort();
    qsm_free(t);
    /* s's META encodings kept since its earlier snapshots give what encoding it all now gives. */
    b.len = 0;
    if (qsm_snapshot_ex(s, &b, QSM_SNAP_META | QSM_SNAP_UNCACHED, NULL, NULL) != 0) abort();
    if (a.len != b.len || memcmp(a.data, b.data, a.len)) abort();
    amqp_buf_free(&a);
    amqp_buf_free(&b);
}

static void check_counts(const qsm_t *s, const struct fuzz_fx *f)
{
    struct qsm_stats st;
    qsm_stats(s, &st);
    if (qsm_live(s) != st.ready + st.unacked + st.dlx) abort();
    if (!f->purge_unknown &&
        st.enqueued_total != st.ready + st.unacked + st.settled_total + f->purged + st.dead_lettered_total)
        abort();
}

/* ---- odd mode: 4 bytes -> one valid command ---- */

static const char *const TAGS[] = {"a", "b", "c", ""};
static const int64_t EXPIRATIONS[] = {-1, 0, 10, 100};

static void make_cmd(const uint8_t b[4], struct fuzz_fx *f, int64_t now, struct qsm_cmd *c, uint64_t *ids,
                     amqp_buf_t *rec)
{
    memset(c, 0, sizeof *c);
    c->op = (uint8_t)(1 + b[0] % 12);
    c->now_ms = now;
    c->node = 1 + (b[1] & 1);
    c->chan = ((uint64_t)(1 + ((b[1] >> 3) & 1)) << 32) | (1 + ((b[1] >> 1) & 3));
    c->tag = AMQP_BYTES_CSTR(TAGS[(b[1] >> 4) & 3]);
    c->expiration_ms = -1;
    switch (c->op) {
    case QSM_ENQUEUE: {
        uint8_t props[3] = {0x08, 0x00, 9};
        msg_t *m = msg_new("x", 1, "k", 1, props, (b[3] & 1) ? 3 : 0, b[2] % 8);
        memset(m->body, 'a' + b[2] % 26, m->body_len);
        rec->len = 0;
        amqp_buf_reserve(rec, msg_record_size(m));
        msg_record_write(m, rec->data);
        rec->len = msg_record_size(m);
        msg_unref(m);
        c->msg = (amqp_bytes_t){rec->data, rec->len};
        c->seq = b[2] % 16;
        c->req = 1;
        c->expiration_ms = EXPIRATIONS[(b[3] >> 1) & 3];
        break;
    }
    case QSM_CHECKOUT:
        c->prefetch = b[2] % 4;
        c->priority = b[3] % 3;
        c->flags = (b[3] & 4) ? QSM_F_NO_ACK : 0;
        break;
    case QSM_SETTLE:
    case QSM_RETURN:
    case QSM_DISCARD:
        if (f->n_dlv) {
            const struct seen_dlv *d = &f->dlv[(f->n_dlv - 1 - b[2] % RING) % RING];
            c->node = d->node;
            c->chan = d->chan ? d->chan : c->chan; /* basic.get: the channel is not recorded */
            c->tag = (amqp_bytes_t){d->tag, d->tag_len};
            ids[0] = d->id;
            ids[1] = f->dlv[(f->n_dlv - 1) % RING].id;
            c->n_ids = 1 + (b[3] & 1);
            c->ids_in = ids;
        }
        break;
    case QSM_DEQUEUE:
        c->req = 1;
        c->flags = (b[2] & 1) ? QSM_F_NO_ACK : 0;
        break;
    case QSM_DOWN:
        if (b[2] & 1) c->chan = 0;
        c->seq = (b[2] >> 1) & 3;
        break;
    case QSM_PURGE: c->req = 1; break;
    case QSM_CONFIG:
        qsm_config_defaults(&c->config);
        c->config.delivery_limit = (int64_t)(b[2] & 3) - 1;
        c->config.max_length = (b[2] & 4) ? (b[3] & 7) : -1;
        c->config.max_bytes = (b[2] & 8) ? (b[3] & 31) : -1;
        c->config.msg_ttl = (b[2] & 16) ? EXPIRATIONS[(b[3] >> 5) & 3] : -1;
        c->config.overflow = (b[2] >> 5) & 1;
        c->config.dlx_strategy = (b[2] >> 6) & 1;
        c->config.dead_letter = (b[2] >> 7) & 1;
        c->config.single_active = (b[3] >> 7) & 1;
        break;
    case QSM_DLX_SETTLE:
        if (f->n_dlx) {
            ids[0] = f->dlx_ids[(f->n_dlx - 1 - b[2] % RING) % RING];
            c->n_ids = 1;
            c->ids_in = ids;
        }
        break;
    default: break;
    }
}

/* Applies one command to s (and to the restored copy, once there is one). */
static void step(qsm_t *s, struct fuzz_fx *f, qsm_t *copy, struct fuzz_fx *fc, const struct qsm_cmd *c)
{
    struct qsm_effects fx = {.ud = f, .deliver = on_deliver, .result = on_result, .dead_letter = on_dead_letter};
    f->op = c->op;
    if (c->op == QSM_PURGE && !c->req) f->purge_unknown = true;
    qsm_apply(s, c, &fx);
    if (c->op == QSM_PURGE && ready_count(s)) abort(); /* purge leaves nothing ready */
    if (copy) {
        struct qsm_effects fxc = {.ud = fc, .deliver = on_deliver, .result = on_result, .dead_letter = on_dead_letter};
        fc->op = c->op;
        qsm_apply(copy, c, &fxc);
    }
}

static void run_stream(const uint8_t *data, size_t size)
{
    bool gen = data[0] & 1;
    data++;
    size--;
    qsm_t *s = qsm_new(NULL), *copy = NULL;
    struct fuzz_fx *f = calloc(1, sizeof *f), *fc = calloc(1, sizeof *fc);
    if (!f || !fc) abort();
    size_t total = gen ? size / 4 : 0, n = 0;
    int64_t now = 0;
    amqp_buf_t rec = {0}, enc = {0};
    uint64_t ids[2];
    size_t off = 0;
    while (n < MAX_CMDS) {
        struct qsm_cmd c;
        if (gen) {
            if (off + 4 > size) break;
            now += (data[off + 2] ^ data[off + 3]) % 50;
            make_cmd(data + off, f, now, &c, ids, &rec);
            off += 4;
            /* through the codec, as the host does */
            enc.len = 0;
            qsm_encode(&enc, &c);
            if (qsm_decode(enc.data, enc.len, &c) != 0) abort();
        } else {
            if (off + 2 > size) break;
            size_t len = (size_t)data[off] << 8 | data[off + 1];
            off += 2;
            if (len > size - off) break;
            int rc = qsm_decode(data + off, len, &c);
            off += len;
            if (rc != 0) continue;
        }
        step(s, f, copy, fc, &c);
        n++;
        check_counts(s, f);
        if (n % 16 == 0) check_roundtrip(s);
        if (!copy && gen && n == total / 2) {
            amqp_buf_t snap = {0};
            qsm_snapshot(s, &snap);
            copy = qsm_restore(snap.data, snap.len);
            if (!copy) abort();
            amqp_buf_free(&snap);
            fc->hash = f->hash;
        }
    }
    check_roundtrip(s);
    if (copy) {
        amqp_buf_t a = {0}, b = {0};
        qsm_snapshot(s, &a);
        qsm_snapshot(copy, &b);
        if (a.len != b.len || memcmp(a.data, b.data, a.len) || f->hash != fc->hash) abort();
        amqp_buf_free(&a);
        amqp_buf_free(&b);
    }
    amqp_buf_free(&rec);
    amqp_buf_free(&enc);
    qsm_free(s);
    qsm_free(copy);
    free(f);
    free(fc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qsm_cmd c;
    if (qsm_decode(data, size, &c) == 0) {
        amqp_buf_t out = {0};
        qsm_encode(&out, &c);
        if (out.len != size || memcmp(out.data, data, size)) abort();
        amqp_buf_free(&out);
    }
    qsm_t *s = qsm_restore(data, size);
    if (s) {
        amqp_buf_t out = {0};
        if (qsm_snapshot_ex(s, &out, data[0], NULL, NULL) != 0) abort(); /* the kind it came in */
        if (out.len != size || memcmp(out.data, data, size)) abort();
        amqp_buf_free(&out);
        qsm_free(s);
    }
    if (size) run_stream(data, size);
    return 0;
}
