/* meta.c - metadata commands: encoding, submission to the cluster, and deterministic apply.
 *
 * Role: the replicated state machine of the metadata Raft group, on top of the registry that
 * broker.c, exchange.c and queue.c keep (see meta.h for the request path).
 *
 * Invariants:
 *   - meta_apply is deterministic: its outcome depends only on the command and the registry,
 *     which every node builds from the same commands in the same order. So it never checks
 *     permissions (the requesting node did, against its users) nor looks at node-local state
 *     (message counts, consumers, clocks): if-empty / if-unused on queues are checked by the
 *     requesting node before it submits, and the replicated delete is unconditional.
 *   - A queue created by a command gets the command's log index as its uid, so its storage
 *     keys are the same on every node, and meta_home as its home node.
 *   - The registry's own durable records (X, Q, B keys) and the applied index (key 'A') are
 *     written in the same store batch, so after a crash the stored registry reflects exactly
 *     the commands up to the stored index; the group's replay skips those (meta_recover).
 *
 * Command encoding (big-endian): u8 version=1, u8 op, u8 flags, u32 home, u64 conn,
 * shortstr vhost, shortstr name, shortstr name2, shortstr key, longstr args.
 */
#include "broker/meta.h"

#include <stdlib.h>
#include <string.h>

#include "broker/log.h"

#define META_VERSION 1

/* ---- encoding ---------------------------------------------------------------------------- */

void meta_encode(amqp_buf_t *out, const struct meta_cmd *c)
{
    amqp_buf_put_u8(out, META_VERSION);
    amqp_buf_put_u8(out, c->op);
    amqp_buf_put_u8(out, c->flags);
    amqp_buf_put_u32(out, c->home);
    amqp_buf_put_u64(out, c->conn);
    amqp_buf_put_shortstr(out, c->vhost);
    amqp_buf_put_shortstr(out, c->name);
    amqp_buf_put_shortstr(out, c->name2);
    amqp_buf_put_shortstr(out, c->key);
    amqp_buf_put_longstr(out, c->args);
}

int meta_decode(const void *buf, size_t len, struct meta_cmd *c)
{
    amqp_reader_t r = amqp_reader(buf, len);
    memset(c, 0, sizeof *c);
    if (amqp_read_u8(&r) != META_VERSION) return -1;
    c->op = amqp_read_u8(&r);
    c->flags = amqp_read_u8(&r);
    c->home = amqp_read_u32(&r);
    c->conn = amqp_read_u64(&r);
    c->vhost = amqp_read_shortstr(&r);
    c->name = amqp_read_shortstr(&r);
    c->name2 = amqp_read_shortstr(&r);
    c->key = amqp_read_shortstr(&r);
    c->args = amqp_read_longstr(&r);
    if (r.bad || r.left != 0) return -1;
    if (c->op < META_X_DECLARE || c->op > META_UNBIND) return -1;
    if (c->args.len && amqp_table_validate(c->args) != 0) return -1;
    return 0;
}

/* ---- submission -------------------------------------------------------------------------- */

struct submission {
    meta_done_cb done;
    void *arg;
};

static void submitted(void *arg, int code, const char *text)
{
    struct submission *s = arg;
    if (code) {
        br_err_t err;
        br_fail(&err, code, "%s", text ? text : "metadata change failed");
        s->done(s->arg, &err);
    } else {
        s->done(s->arg, NULL);
    }
    free(s);
}

void meta_submit(broker_t *b, const struct meta_cmd *c, meta_done_cb done, void *arg)
{
    struct submission *s = malloc(sizeof *s);
    if (!s) abort();
    s->done = done;
    s->arg = arg;
    amqp_buf_t buf = {0};
    meta_encode(&buf, c);
    int rc = b->meta_submit(b->meta_submit_ctx, buf.data, buf.len, submitted, s);
    amqp_buf_free(&buf);
    if (rc) {
        br_err_t err;
        br_fail(&err, BR_INTERNAL_ERROR, "metadata store unavailable");
        done(arg, &err);
        free(s);
    }
}

/* ---- apply ------------------------------------------------------------------------------- */

static void store_applied(broker_t *b, uint64_t index)
{
    b->meta_applied = index;
    if (!b->store) return;
    uint8_t key = KEY_META_APPLIED, val[8];
    store_put_be64(val, index);
    store_put(b->store, &key, 1, val, sizeof val);
}

void meta_recover(broker_t *b)
{
    if (!b->store) return;
    uint8_t key = KEY_META_APPLIED;
    void *val;
    size_t vlen;
    if (store_get(b->store, &key, 1, &val, &vlen) == 1) {
        if (vlen == 8) b->meta_applied = store_get_be64(val);
        free(val);
    }
}

#define STR(bytes) (const char *)(bytes).ptr, (bytes).len

static int apply_cmd(broker_t *b, const struct meta_cmd *c, br_err_t *err)
{
    vhost_t *vh = br_vhost(b, STR(c->vhost));
    if (!vh) return br_fail(err, BR_NOT_FOUND, "no vhost '%.*s'", (int)c->vhost.len, (const char *)c->vhost.ptr);
    bool durable = c->flags & META_F_DURABLE, auto_delete = c->flags & META_F_AUTO_DELETE;
    bool dest_queue = c->flags & META_F_DEST_QUEUE;
    uint32_t count;
    queue_t *q;
    switch (c->op) {
    case META_X_DECLARE:
        return br_exchange_declare(vh, NULL, STR(c->name), STR(c->name2), false, durable, auto_delete,
                                   c->flags & META_F_INTERNAL, c->args, err);
    case META_X_DELETE:
        return br_exchange_delete(vh, NULL, STR(c->name), c->flags & META_F_IF_UNUSED, err);
    case META_Q_DECLARE:
        return br_queue_declare(vh, NULL, c->conn, STR(c->name), false, durable, c->flags & META_F_EXCLUSIVE,
                                auto_delete, c->args, &q, err);
    case META_Q_DELETE:
        return br_queue_delete(vh, NULL, c->conn, STR(c->name), false, false, &count, err);
    case META_BIND:
    case META_UNBIND:
        return (c->op == META_BIND ? br_bind : br_unbind)(vh, NULL, c->conn, dest_queue, STR(c->name), STR(c->name2),
                                                          STR(c->key), c->args, err);
    }
    return br_fail(err, BR_COMMAND_INVALID, "unknown metadata command %u", c->op);
}

int meta_apply(broker_t *b, uint64_t index, const void *cmd, size_t len, br_err_t *err)
{
    err->code = 0;
    err->text[0] = '\0';
    if (index && index <= b->meta_applied) return 0; /* already in the stored registry */
    struct meta_cmd c;
    int rc;
    if (meta_decode(cmd, len, &c) != 0) {
        log_warn("metadata: malformed command at index %llu ignored", (unsigned long long)index);
        rc = br_fail(err, BR_INTERNAL_ERROR, "malformed metadata command");
    } else {
        b->meta_applying = true;
        b->meta_uid = index;
        b->meta_home = c.home;
        rc = apply_cmd(b, &c, err);
        b->meta_applying = false;
        b->meta_uid = 0;
        b->meta_home = 0;
    }
    if (index) store_applied(b, index);
    return rc;
}

/* ---- node-decided deletions -------------------------------------------------------------- */

static void delete_submitted(void *arg, const br_err_t *err)
{
    queue_t *q = arg;
    if (err) {
        log_warn("queue '%s' in vhost '%s': replicated delete failed: %s", q->name, q->vh->name, err->text);
        q->delete_pending = false; /* the next trigger (or an operator) tries again */
    }
    q_unref(q);
}

bool meta_intercept_queue_delete(queue_t *q)
{
    broker_t *b = q->vh->broker;
    if (!meta_clustered(b) || b->meta_applying) return false;
    if (q->delete_pending) return true;
    q->delete_pending = true;
    struct meta_cmd c = {
        .op = META_Q_DELETE,
        .conn = q->owner_conn,
        .vhost = AMQP_BYTES_CSTR(q->vh->name),
        .name = {(const uint8_t *)q->name, q->name_len},
    };
    q_ref(q);
    meta_submit(b, &c, delete_submitted, q);
    return true;
}
