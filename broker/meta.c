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
 *   - Registry records other than topology (vhosts with their metadata, users, permissions,
 *     policies, runtime parameters - vhost limits among them - and global parameters) are
 *     commands too (apply_registry): a user's password hash and its random salt are computed by
 *     the requesting node and carried in the command, so every node stores the same hash.
 *     Deleted users and vhosts stay allocated for the connections pointing at them (broker.c).
 *   - Limits are checked by the requesting node, not by apply: a snapshot or an import must
 *     recreate what exists even above a limit set later (as RabbitMQ, limits stop new queues and
 *     connections only).
 *
 * Snapshot (meta_snapshot_take/install): u8 version=2, u64 applied index, u32 count, then count
 * records of [u64 queue uid][u32 length][command] - vhosts (VHOST_SET, with their metadata)
 * each followed by its parameters, global parameters, users, permissions, policies, then
 * exchange declares, queue declares and bindings - that rebuild the registry. Installing prunes
 * whatever the snapshot does not hold. A version 1 snapshot (topology only, written before the
 * registry records were replicated) prunes and rebuilds topology only; a version 2 snapshot of
 * a node from before vhost metadata (VHOST_ADD records) installs too.
 *
 * Command encoding (big-endian): u8 version=1, u8 op, u8 flags, u32 home, u64 conn,
 * shortstr vhost, shortstr name, shortstr name2, shortstr key, longstr args.
 */
#include "broker/meta.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/log.h"
#include "broker/params.h"
#include "broker/qq.h"
#include "broker/topicperm.h"

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
    if (c->op < META_X_DECLARE || c->op > META_OP_LAST) return -1;
    if (c->args.len && amqp_table_validate(c->args) != 0) return -1;
    return 0;
}

/* ---- registry command builders ------------------------------------------------------------ */

static void put_str(amqp_buf_t *t, const char *key, const char *val)
{
    if (val) amqp_table_put_longstr(t, key, AMQP_BYTES_CSTR(val));
}

/* Closes the args table opened at pos 0 of buf and points c->args at its content. */
static void args_close(struct meta_cmd *c, amqp_buf_t *buf)
{
    amqp_table_close(buf, 0);
    c->args = (amqp_bytes_t){buf->data + 4, buf->len - 4};
}

void meta_user_cmd(struct meta_cmd *c, amqp_buf_t *buf, uint8_t op, const char *user, const char *hash, int alg,
                   const char *tags)
{
    *c = (struct meta_cmd){.op = op, .name = AMQP_BYTES_CSTR(user)};
    buf->len = 0;
    amqp_table_open(buf);
    put_str(buf, "password_hash", hash);
    if (alg >= 0) put_str(buf, "hashing_algorithm", auth_hash_alg_name((auth_hash_alg_t)alg));
    put_str(buf, "tags", tags);
    args_close(c, buf);
}

void meta_perm_cmd(struct meta_cmd *c, amqp_buf_t *buf, const char *vhost, const char *user, const char *configure,
                   const char *write, const char *read)
{
    *c = (struct meta_cmd){.op = META_PERM_SET, .vhost = AMQP_BYTES_CSTR(vhost), .name = AMQP_BYTES_CSTR(user)};
    buf->len = 0;
    amqp_table_open(buf);
    put_str(buf, "configure", configure);
    put_str(buf, "write", write);
    put_str(buf, "read", read);
    args_close(c, buf);
}

void meta_topic_perm_cmd(struct meta_cmd *c, amqp_buf_t *buf, const char *vhost, const char *user,
                         const char *exchange, const char *write, const char *read)
{
    *c = (struct meta_cmd){.op = META_TOPIC_PERM_SET, .vhost = AMQP_BYTES_CSTR(vhost), .name = AMQP_BYTES_CSTR(user),
                           .key = AMQP_BYTES_CSTR(exchange)};
    buf->len = 0;
    amqp_table_open(buf);
    put_str(buf, "write", write);
    put_str(buf, "read", read);
    args_close(c, buf);
}

void meta_vhost_cmd(struct meta_cmd *c, amqp_buf_t *buf, uint8_t op, const char *vhost, const char *description,
                    const char *tags, const char *default_queue_type)
{
    *c = (struct meta_cmd){.op = op, .vhost = AMQP_BYTES_CSTR(vhost)};
    buf->len = 0;
    amqp_table_open(buf);
    put_str(buf, "description", description);
    put_str(buf, "tags", tags);
    put_str(buf, "default_queue_type", default_queue_type);
    args_close(c, buf);
}

void meta_param_cmd(struct meta_cmd *c, amqp_buf_t *buf, uint8_t op, const char *vhost, const char *component,
                    const char *name, const char *value)
{
    *c = (struct meta_cmd){.op = op, .vhost = AMQP_BYTES_CSTR(vhost ? vhost : ""),
                           .name2 = AMQP_BYTES_CSTR(vhost && component ? component : ""), .name = AMQP_BYTES_CSTR(name)};
    buf->len = 0;
    amqp_table_open(buf);
    put_str(buf, "value", value);
    args_close(c, buf);
}

void meta_policy_cmd(struct meta_cmd *c, amqp_buf_t *buf, const char *vhost, bool is_operator, const char *name,
                     const char *pattern, const char *apply_to, int priority, amqp_bytes_t definition)
{
    *c = (struct meta_cmd){.op = META_POLICY_SET, .flags = is_operator ? META_F_OPERATOR : 0,
                           .vhost = AMQP_BYTES_CSTR(vhost), .name = AMQP_BYTES_CSTR(name)};
    buf->len = 0;
    amqp_table_open(buf);
    put_str(buf, "pattern", pattern);
    put_str(buf, "apply-to", apply_to);
    amqp_table_put_i64(buf, "priority", priority);
    amqp_table_put_key(buf, "definition");
    amqp_buf_put_u8(buf, 'F');
    amqp_buf_put_longstr(buf, definition);
    args_close(c, buf);
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
    if (!meta_clustered(b)) { /* a single node: the change applies now */
        amqp_buf_t buf = {0};
        meta_encode(&buf, c);
        br_err_t err;
        int rc = meta_apply(b, 0, buf.data, buf.len, &err);
        amqp_buf_free(&buf);
        done(arg, rc ? &err : NULL);
        return;
    }
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

/* ---- apply: vhosts, users, permissions, policies ----------------------------------------- */

/* A string argument of a registry command as a C string (malloc'd), or NULL when absent. */
static char *arg_str(const amqp_table_t *t, const char *key)
{
    const amqp_value_t *v = amqp_table_get(t, key);
    if (!v || v->type != 'S') return NULL;
    return strndup((const char *)v->v.str.ptr, v->v.str.len);
}

static int no_user(br_err_t *err, amqp_bytes_t name)
{
    return br_fail(err, BR_NOT_FOUND, "User \"%.*s\" does not exist", (int)name.len, (const char *)name.ptr);
}

static int no_vhost(br_err_t *err, amqp_bytes_t name)
{
    return br_fail(err, BR_NOT_FOUND, "Virtual host \"%.*s\" does not exist", (int)name.len,
                   (const char *)name.ptr);
}

static int apply_user(broker_t *b, const struct meta_cmd *c, const amqp_table_t *a, br_err_t *err)
{
    char *name = strndup((const char *)c->name.ptr, c->name.len);
    user_t *u = br_user(b, STR(c->name));
    int rc = 0;
    if (c->op == META_USER_ADD && u) {
        rc = br_fail(err, BR_PRECONDITION_FAILED, "User \"%s\" already exists", name);
    } else if ((c->op == META_USER_UPDATE || c->op == META_USER_DELETE) && !u) {
        rc = no_user(err, c->name);
    } else if (c->op == META_USER_DELETE) {
        br_user_delete(b, u);
    } else {
        char *hash = arg_str(a, "password_hash"), *alg_name = arg_str(a, "hashing_algorithm"), *tags = arg_str(a, "tags");
        int alg = auth_hash_alg_parse(alg_name);
        if (alg < 0) {
            rc = br_fail(err, BR_PRECONDITION_FAILED, "unknown hashing algorithm '%s'", alg_name);
        } else if (c->op == META_USER_UPDATE) { /* only what the command names changes */
            if (!hash) { /* keep the current password (copied: br_user_add replaces the fields) */
                hash = strdup(u->password_hash ? u->password_hash : "");
                alg = (int)u->hash_alg;
            }
            if (!tags) tags = strdup(u->tags ? u->tags : "");
            br_user_add(b, name, (auth_hash_alg_t)alg, *hash ? hash : NULL, tags);
        } else {
            br_user_add(b, name, (auth_hash_alg_t)alg, hash && *hash ? hash : NULL, tags ? tags : "");
        }
        free(hash);
        free(alg_name);
        free(tags);
    }
    free(name);
    return rc;
}

static int apply_perm(broker_t *b, const struct meta_cmd *c, const amqp_table_t *a, br_err_t *err)
{
    user_t *u = br_user(b, STR(c->name));
    vhost_t *vh = br_vhost(b, STR(c->vhost));
    if (!u) return no_user(err, c->name);
    if (!vh) return no_vhost(err, c->vhost);
    if (c->op == META_PERM_CLEAR) {
        br_clear_permissions(b, u, vh);
        return 0;
    }
    char *conf = arg_str(a, "configure"), *wr = arg_str(a, "write"), *rd = arg_str(a, "read");
    int rc = 0;
    if (br_set_permissions(b, u, vh, conf ? conf : "", wr ? wr : "", rd ? rd : "", err->text, sizeof err->text))
        rc = err->code = BR_PRECONDITION_FAILED;
    free(conf);
    free(wr);
    free(rd);
    return rc;
}

/* Topic permissions: like permissions, for one exchange (CLEAR without one: all in the vhost). */
static int apply_topic_perm(broker_t *b, const struct meta_cmd *c, const amqp_table_t *a, br_err_t *err)
{
    user_t *u = br_user(b, STR(c->name));
    vhost_t *vh = br_vhost(b, STR(c->vhost));
    if (!u) return no_user(err, c->name);
    if (!vh) return no_vhost(err, c->vhost);
    char *exchange = strndup(c->key.len ? (const char *)c->key.ptr : "", c->key.len);
    if (!exchange) abort();
    int rc = 0;
    if (c->op == META_TOPIC_PERM_CLEAR) {
        if (!tperm_clear(b, u, vh->name, c->key.len ? exchange : NULL))
            rc = br_fail(err, BR_NOT_FOUND, "no topic permissions for user '%s' in vhost '%s'", u->name, vh->name);
        free(exchange);
        return rc;
    }
    char *wr = arg_str(a, "write"), *rd = arg_str(a, "read");
    if (tperm_set(b, u, vh, exchange, wr ? wr : "", rd ? rd : "", err->text, sizeof err->text))
        rc = err->code = BR_PRECONDITION_FAILED;
    free(exchange);
    free(wr);
    free(rd);
    return rc;
}

static int apply_policy(broker_t *b, const struct meta_cmd *c, const amqp_table_t *a, br_err_t *err)
{
    vhost_t *vh = br_vhost(b, STR(c->vhost));
    if (!vh) return no_vhost(err, c->vhost);
    bool op = c->flags & META_F_OPERATOR;
    char *name = strndup((const char *)c->name.ptr, c->name.len);
    int rc = 0;
    if (c->op == META_POLICY_CLEAR) {
        if (br_policy_clear(vh, op, name) != 0) rc = br_fail(err, BR_NOT_FOUND, "Parameter does not exist");
        free(name);
        return rc;
    }
    char *pattern = arg_str(a, "pattern"), *apply_to = arg_str(a, "apply-to");
    const amqp_value_t *prio = amqp_table_get(a, "priority"), *def = amqp_table_get(a, "definition");
    int64_t priority = 0;
    if (prio) amqp_value_int(prio, &priority);
    amqp_buf_t raw = {0};
    if (def && def->type == 'F') amqp_table_encode(&raw, &def->v.table);
    amqp_bytes_t def_bytes = raw.len > 4 ? (amqp_bytes_t){raw.data + 4, raw.len - 4} : AMQP_BYTES_EMPTY;
    if (br_policy_set(vh, op, name, pattern ? pattern : "", apply_to ? apply_to : "all", (int)priority, def_bytes,
                      err->text, sizeof err->text))
        rc = err->code = BR_PRECONDITION_FAILED;
    amqp_buf_free(&raw);
    free(name);
    free(pattern);
    free(apply_to);
    return rc;
}

/* VHOST_ADD (metadata only for a vhost it creates) and VHOST_SET. */
static void apply_vhost(broker_t *b, const struct meta_cmd *c, const amqp_table_t *a)
{
    vhost_t *vh = br_vhost(b, STR(c->vhost));
    if (vh && c->op == META_VHOST_ADD) return;
    if (!vh) {
        char *name = strndup((const char *)c->vhost.ptr, c->vhost.len);
        if (!name) abort();
        vh = br_vhost_add(b, name);
        free(name);
    }
    char *d = arg_str(a, "description"), *t = arg_str(a, "tags"), *q = arg_str(a, "default_queue_type");
    if (d || t || q) br_vhost_set_metadata(vh, d, t, q);
    free(d);
    free(t);
    free(q);
}

/* Runtime parameters: a vhost's (vhost named) or global ones (vhost ""). */
static int apply_param(broker_t *b, const struct meta_cmd *c, const amqp_table_t *a, br_err_t *err)
{
    char *comp = strndup((const char *)c->name2.ptr, c->name2.len), *name = strndup((const char *)c->name.ptr, c->name.len);
    char *value = arg_str(a, "value");
    if (!comp || !name) abort();
    vhost_t *vh = c->vhost.len ? br_vhost(b, STR(c->vhost)) : NULL;
    int rc = 0;
    if (c->vhost.len && !vh) {
        rc = no_vhost(err, c->vhost);
    } else if (c->op == META_PARAM_CLEAR) {
        if (!(vh ? rp_clear(vh, comp, name) : rp_global_clear(b, name))) rc = br_fail(err, BR_NOT_FOUND, "Parameter does not exist");
    } else if (!vh) {
        rp_global_set(b, name, value ? value : "null");
    } else if (rp_set(vh, comp, name, value ? value : "null", err->text, sizeof err->text) != 0) {
        rc = err->code = BR_PRECONDITION_FAILED;
    }
    free(comp);
    free(name);
    free(value);
    return rc;
}

/* The registry commands (op >= META_VHOST_ADD). */
static int apply_registry(broker_t *b, const struct meta_cmd *c, br_err_t *err)
{
    amqp_table_t a = {0};
    if (c->args.len && amqp_table_parse(c->args, &a) != 0) return br_fail(err, BR_INTERNAL_ERROR, "malformed arguments");
    int rc = 0;
    switch (c->op) {
    case META_VHOST_ADD:
    case META_VHOST_SET: apply_vhost(b, c, &a); break;
    case META_PARAM_SET:
    case META_PARAM_CLEAR: rc = apply_param(b, c, &a, err); break;
    case META_VHOST_DELETE: {
        vhost_t *vh = br_vhost(b, STR(c->vhost));
        if (vh) br_vhost_delete(b, vh);
        else rc = no_vhost(err, c->vhost);
        break;
    }
    case META_USER_ADD:
    case META_USER_PUT:
    case META_USER_UPDATE:
    case META_USER_DELETE: rc = apply_user(b, c, &a, err); break;
    case META_PERM_SET:
    case META_PERM_CLEAR: rc = apply_perm(b, c, &a, err); break;
    case META_POLICY_SET:
    case META_POLICY_CLEAR: rc = apply_policy(b, c, &a, err); break;
    case META_TOPIC_PERM_SET:
    case META_TOPIC_PERM_CLEAR: rc = apply_topic_perm(b, c, &a, err); break;
    default: rc = br_fail(err, BR_COMMAND_INVALID, "unknown metadata command %u", c->op);
    }
    amqp_table_free(&a);
    return rc;
}

/* ---- apply: topology ---------------------------------------------------------------------- */

static int apply_cmd(broker_t *b, const struct meta_cmd *c, br_err_t *err)
{
    if (c->op >= META_VHOST_ADD && c->op != META_Q_MEMBERS) return apply_registry(b, c, err);
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
    case META_Q_MEMBERS:
        q = br_queue(vh, STR(c->name));
        if (!q || !q->qq) return br_fail(err, BR_NOT_FOUND, "no quorum queue '%.*s' in vhost '%s'", (int)c->name.len,
                                         (const char *)c->name.ptr, vh->name);
        qq_set_members(q, c->key);
        q_persist_definition(q);
        return 0;
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
        b->meta_members = c.op == META_Q_DECLARE ? c.key : (amqp_bytes_t){0};
        rc = apply_cmd(b, &c, err);
        b->meta_members = (amqp_bytes_t){0};
        b->meta_applying = false;
        b->meta_uid = 0;
        b->meta_home = 0;
    }
    if (index) store_applied(b, index);
    return rc;
}

/* ---- snapshots ------------------------------------------------------------------------- */

const char *ex_type_name(ex_type_t t); /* exchange.c */
void ex_delete(exchange_t *x);          /* exchange.c */
void br_binding_remove(binding_t *bd);  /* exchange.c */

static bool is_builtin_exchange(const exchange_t *x)
{
    return x->name_len == 0 || (x->name_len >= 4 && memcmp(x->name, "amq.", 4) == 0);
}

static void snap_record(amqp_buf_t *out, uint64_t uid, const struct meta_cmd *c, uint32_t *count)
{
    amqp_buf_put_u64(out, uid);
    size_t at = out->len;
    amqp_buf_put_u32(out, 0);
    meta_encode(out, c);
    amqp_buf_patch_u32(out, at, (uint32_t)(out->len - at - 4));
    (*count)++;
}

static struct meta_cmd exchange_cmd(const exchange_t *x)
{
    struct meta_cmd c = {.op = META_X_DECLARE, .vhost = AMQP_BYTES_CSTR(x->vh->name)};
    c.flags = (x->durable ? META_F_DURABLE : 0) | (x->auto_delete ? META_F_AUTO_DELETE : 0) |
              (x->internal ? META_F_INTERNAL : 0);
    c.name = (amqp_bytes_t){(const uint8_t *)x->name, x->name_len};
    c.name2 = AMQP_BYTES_CSTR(x->delayed ? "x-delayed-message" : ex_type_name(x->type));
    c.args = x->args_raw;
    return c;
}

/* members: a quorum queue's member ids (u32 each), carried in the key field (kept by caller). */
static struct meta_cmd queue_cmd(const queue_t *q, amqp_buf_t *members)
{
    struct meta_cmd c = {.op = META_Q_DECLARE, .vhost = AMQP_BYTES_CSTR(q->vh->name), .conn = q->owner_conn,
                         .home = q->home};
    c.flags = (q->durable ? META_F_DURABLE : 0) | (q->auto_delete ? META_F_AUTO_DELETE : 0) |
              (q->exclusive ? META_F_EXCLUSIVE : 0);
    c.name = (amqp_bytes_t){(const uint8_t *)q->name, q->name_len};
    c.args = q->args_raw;
    members->len = 0;
    qq_members_encode(q, members);
    c.key = (amqp_bytes_t){members->data, members->len};
    return c;
}

static struct meta_cmd binding_cmd(const binding_t *bd)
{
    struct meta_cmd c = {.op = META_BIND, .vhost = AMQP_BYTES_CSTR(bd->src->vh->name)};
    if (bd->dest_is_queue) {
        const queue_t *q = bd->dest;
        c.flags = META_F_DEST_QUEUE;
        c.name = (amqp_bytes_t){(const uint8_t *)q->name, q->name_len};
        c.conn = q->owner_conn; /* binding an exclusive queue is its owner's right */
    } else {
        const exchange_t *x = bd->dest;
        c.name = (amqp_bytes_t){(const uint8_t *)x->name, x->name_len};
    }
    c.name2 = (amqp_bytes_t){(const uint8_t *)bd->src->name, bd->src->name_len};
    c.key = (amqp_bytes_t){(const uint8_t *)bd->key, bd->key_len};
    c.args = bd->args_raw;
    return c;
}

#define SNAP_VERSION 2 /* 1: topology only */

static const char *apply_to_text(apply_to_t at)
{
    return at == APPLY_QUEUES ? "queues" : at == APPLY_EXCHANGES ? "exchanges" : "all";
}

/* The snapshot records of vhosts, users, permissions and policies (before the topology, which
 * needs the vhosts). */
static void snap_registry(broker_t *b, amqp_buf_t *out, uint32_t *count)
{
    amqp_buf_t args = {0};
    struct meta_cmd c;
    size_t p = 0;
    void *v;
    while (dict_next(&b->vhosts, &p, NULL, NULL, &v)) {
        const vhost_t *vh = v;
        meta_vhost_cmd(&c, &args, META_VHOST_SET, vh->name, vh->description, vh->tags,
                       vh->default_queue_type ? vh->default_queue_type : "");
        snap_record(out, 0, &c, count);
        for (size_t i = 0; i < vh->params.n; i++) {
            const rparam_t *rp = vh->params.items[i];
            meta_param_cmd(&c, &args, META_PARAM_SET, vh->name, rp->component, rp->name, rp->value);
            snap_record(out, 0, &c, count);
        }
    }
    for (size_t i = 0; i < b->global_params.n; i++) {
        const rparam_t *rp = b->global_params.items[i];
        meta_param_cmd(&c, &args, META_PARAM_SET, NULL, NULL, rp->name, rp->value);
        snap_record(out, 0, &c, count);
    }
    p = 0;
    while (dict_next(&b->users, &p, NULL, NULL, &v)) {
        user_t *u = v;
        meta_user_cmd(&c, &args, META_USER_PUT, u->name, u->password_hash, (int)u->hash_alg, u->tags);
        snap_record(out, 0, &c, count);
        size_t pp = 0;
        const char *vname;
        size_t vlen;
        void *pv;
        while (dict_next(&u->perms, &pp, &vname, &vlen, &pv)) {
            perm_t *perm = pv;
            char *vn = strndup(vname, vlen);
            meta_perm_cmd(&c, &args, vn, u->name, auth_regex_pattern(perm->configure), auth_regex_pattern(perm->write),
                          auth_regex_pattern(perm->read));
            snap_record(out, 0, &c, count);
            free(vn);
        }
        for (size_t i = 0; i < u->topic_perms.n; i++) {
            const tperm_t *tp = u->topic_perms.items[i];
            meta_topic_perm_cmd(&c, &args, tp->vhost, u->name, tp->exchange, tp->write_text, tp->read_text);
            snap_record(out, 0, &c, count);
        }
    }
    p = 0;
    while (dict_next(&b->vhosts, &p, NULL, NULL, &v)) {
        vhost_t *vh = v;
        for (int op = 0; op < 2; op++) {
            const ptrvec_t *list = op ? &vh->operator_policies : &vh->policies;
            for (size_t i = 0; i < list->n; i++) {
                const policy_t *pol = list->items[i];
                meta_policy_cmd(&c, &args, vh->name, op, pol->name, pol->pattern_text, apply_to_text(pol->apply_to),
                                pol->priority, pol->def_raw);
                snap_record(out, 0, &c, count);
            }
        }
    }
    amqp_buf_free(&args);
}

int meta_snapshot_take(broker_t *b, void **bytes, size_t *len)
{
    amqp_buf_t out = {0};
    amqp_buf_put_u8(&out, SNAP_VERSION);
    amqp_buf_put_u64(&out, b->meta_applied);
    size_t count_at = out.len;
    amqp_buf_put_u32(&out, 0);
    uint32_t count = 0;
    snap_registry(b, &out, &count);
    for (int pass = 0; pass < 3; pass++) {
        size_t vp = 0;
        void *vv;
        while (dict_next(&b->vhosts, &vp, NULL, NULL, &vv)) {
            vhost_t *vh = vv;
            size_t p = 0;
            void *v;
            if (pass == 1) {
                amqp_buf_t members = {0};
                while (dict_next(&vh->queues, &p, NULL, NULL, &v)) {
                    struct meta_cmd c = queue_cmd(v, &members);
                    snap_record(&out, ((queue_t *)v)->uid, &c, &count);
                }
                amqp_buf_free(&members);
                continue;
            }
            while (dict_next(&vh->exchanges, &p, NULL, NULL, &v)) {
                exchange_t *x = v;
                if (pass == 0 && !is_builtin_exchange(x)) {
                    struct meta_cmd c = exchange_cmd(x);
                    snap_record(&out, 0, &c, &count);
                }
                for (size_t i = 0; pass == 2 && i < x->bindings.n; i++) {
                    struct meta_cmd c = binding_cmd(x->bindings.items[i]);
                    snap_record(&out, 0, &c, &count);
                }
            }
        }
    }
    amqp_buf_patch_u32(&out, count_at, count);
    *bytes = out.data;
    *len = out.len;
    return 0;
}

struct snap_entry {
    uint64_t uid;
    struct meta_cmd cmd;
};

/* Identity of a binding, for matching the registry against the snapshot. */
static size_t binding_identity(const struct meta_cmd *c, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%.*s%c%.*s%c%c%.*s%c%.*s%c", (int)c->vhost.len, (const char *)c->vhost.ptr, 0,
                     (int)c->name2.len, (const char *)c->name2.ptr, 0, (c->flags & META_F_DEST_QUEUE) ? 'q' : 'x',
                     (int)c->name.len, (const char *)c->name.ptr, 0, (int)c->key.len, (const char *)c->key.ptr, 0);
    size_t used = n < 0 ? 0 : (size_t)n >= cap ? cap - 1 : (size_t)n;
    size_t a = c->args.len < cap - used ? c->args.len : cap - used;
    if (a) memcpy(out + used, c->args.ptr, a);
    return used + a;
}

static int snap_parse(const void *bytes, size_t len, int *version, uint64_t *index, struct snap_entry **out,
                      uint32_t *n)
{
    amqp_reader_t r = amqp_reader(bytes, len);
    *version = amqp_read_u8(&r);
    if (*version != 1 && *version != SNAP_VERSION) return -1;
    *index = amqp_read_u64(&r);
    uint32_t count = amqp_read_u32(&r);
    if (r.bad || count > r.left / 12) return -1;
    struct snap_entry *e = calloc(count ? count : 1, sizeof *e);
    if (!e) abort();
    for (uint32_t i = 0; i < count; i++) {
        e[i].uid = amqp_read_u64(&r);
        amqp_bytes_t rec = amqp_read_longstr(&r);
        if (r.bad || meta_decode(rec.ptr, rec.len, &e[i].cmd) != 0) {
            free(e);
            return -1;
        }
    }
    *out = e;
    *n = count;
    return 0;
}

/* Removes what the snapshot does not hold: bindings, then queues (or ones with another uid),
 * then exchanges (or inequivalent ones). */
static void snap_prune(broker_t *b, const struct snap_entry *e, uint32_t n)
{
    dict_t keep;
    dict_init(&keep);
    char id[2048];
    for (uint32_t i = 0; i < n; i++) {
        const struct meta_cmd *c = &e[i].cmd;
        if (c->op >= META_VHOST_ADD) continue; /* snap_prune_registry's */
        if (c->op == META_BIND) {
            dict_set(&keep, id, binding_identity(c, id, sizeof id), (void *)&e[i]);
        } else {
            int k = snprintf(id, sizeof id, "%c%.*s%c%.*s", c->op == META_Q_DECLARE ? 'Q' : 'X', (int)c->vhost.len,
                             (const char *)c->vhost.ptr, 0, (int)c->name.len, (const char *)c->name.ptr);
            dict_set(&keep, id, (size_t)k, (void *)&e[i]);
        }
    }
    size_t vp = 0;
    void *vv;
    while (dict_next(&b->vhosts, &vp, NULL, NULL, &vv)) {
        vhost_t *vh = vv;
        ptrvec_t doomed = {0};
        size_t p = 0;
        void *v;
        while (dict_next(&vh->exchanges, &p, NULL, NULL, &v)) {
            exchange_t *x = v;
            for (size_t i = 0; i < x->bindings.n; i++) {
                struct meta_cmd c = binding_cmd(x->bindings.items[i]);
                if (!dict_get(&keep, id, binding_identity(&c, id, sizeof id))) ptrvec_push(&doomed, x->bindings.items[i]);
            }
        }
        for (size_t i = 0; i < doomed.n; i++) br_binding_remove(doomed.items[i]);
        doomed.n = 0;
        p = 0;
        while (dict_next(&vh->queues, &p, NULL, NULL, &v)) {
            queue_t *q = v;
            int k = snprintf(id, sizeof id, "Q%s%c%s", vh->name, 0, q->name);
            const struct snap_entry *se = dict_get(&keep, id, (size_t)k);
            if (!se || se->uid != q->uid) ptrvec_push(&doomed, q);
        }
        for (size_t i = 0; i < doomed.n; i++) q_delete(doomed.items[i]);
        doomed.n = 0;
        p = 0;
        while (dict_next(&vh->exchanges, &p, NULL, NULL, &v)) {
            exchange_t *x = v;
            if (is_builtin_exchange(x)) continue;
            int k = snprintf(id, sizeof id, "X%s%c%s", vh->name, 0, x->name);
            if (!dict_get(&keep, id, (size_t)k)) ptrvec_push(&doomed, x);
        }
        for (size_t i = 0; i < doomed.n; i++) ex_delete(doomed.items[i]);
        ptrvec_free(&doomed);
    }
    dict_free(&keep);
}

/* Identity of a registry record for pruning: kind letter, vhost, name. */
static size_t registry_identity(char kind, amqp_bytes_t vhost, amqp_bytes_t name, char *out, size_t cap)
{
    const char *v = vhost.len ? (const char *)vhost.ptr : "", *n = name.len ? (const char *)name.ptr : "";
    int k = snprintf(out, cap, "%c%.*s%c%.*s", kind, (int)vhost.len, v, 0, (int)name.len, n);
    return k < 0 ? 0 : (size_t)k >= cap ? cap - 1 : (size_t)k;
}

/* Identity of a runtime parameter: 'r', vhost, component, name. */
static size_t param_identity(amqp_bytes_t vhost, amqp_bytes_t component, amqp_bytes_t name, char *out, size_t cap)
{
    int k = snprintf(out, cap, "r%.*s%c%.*s%c%.*s", (int)vhost.len, vhost.len ? (const char *)vhost.ptr : "", 0,
                     (int)component.len, component.len ? (const char *)component.ptr : "", 0, (int)name.len,
                     name.len ? (const char *)name.ptr : "");
    return k < 0 ? 0 : (size_t)k >= cap ? cap - 1 : (size_t)k;
}

/* Clears the runtime parameters (of every vhost, and global) that keep does not name. */
static void snap_prune_params(broker_t *b, dict_t *keep)
{
    char id[1024];
    ptrvec_t doomed = {0};
    size_t p = 0;
    void *v;
    while (dict_next(&b->vhosts, &p, NULL, NULL, &v)) {
        vhost_t *vh = v;
        doomed.n = 0;
        for (size_t i = 0; i < vh->params.n; i++) {
            const rparam_t *rp = vh->params.items[i];
            if (!dict_get(keep, id, param_identity(AMQP_BYTES_CSTR(vh->name), AMQP_BYTES_CSTR(rp->component),
                                                   AMQP_BYTES_CSTR(rp->name), id, sizeof id)))
                ptrvec_push(&doomed, vh->params.items[i]);
        }
        for (size_t i = 0; i < doomed.n; i++) {
            const rparam_t *rp = doomed.items[i];
            rp_clear(vh, rp->component, rp->name);
        }
    }
    doomed.n = 0;
    for (size_t i = 0; i < b->global_params.n; i++) {
        const rparam_t *rp = b->global_params.items[i];
        if (!dict_get(keep, id, param_identity(AMQP_BYTES_EMPTY, AMQP_BYTES_EMPTY, AMQP_BYTES_CSTR(rp->name), id, sizeof id)))
            ptrvec_push(&doomed, rp->name);
    }
    for (size_t i = 0; i < doomed.n; i++) rp_global_clear(b, doomed.items[i]);
    ptrvec_free(&doomed);
}

/* Removes the vhosts, users, permissions and policies the snapshot does not hold. */
static void snap_prune_registry(broker_t *b, const struct snap_entry *e, uint32_t n)
{
    dict_t keep;
    dict_init(&keep);
    char id[1024];
    for (uint32_t i = 0; i < n; i++) {
        const struct meta_cmd *c = &e[i].cmd;
        char kind = c->op == META_VHOST_ADD || c->op == META_VHOST_SET ? 'V' : c->op == META_USER_PUT ? 'U'
                  : c->op == META_PERM_SET ? 'P'
                  : c->op == META_POLICY_SET ? ((c->flags & META_F_OPERATOR) ? 'o' : 'p') : 0;
        if (kind) dict_set(&keep, id, registry_identity(kind, c->vhost, c->name, id, sizeof id), (void *)&e[i]);
        if (c->op == META_PARAM_SET)
            dict_set(&keep, id, param_identity(c->vhost, c->name2, c->name, id, sizeof id), (void *)&e[i]);
    }
    snap_prune_params(b, &keep);
    ptrvec_t doomed = {0};
    size_t p = 0;
    void *v;
    while (dict_next(&b->vhosts, &p, NULL, NULL, &v))
        if (!dict_get(&keep, id, registry_identity('V', AMQP_BYTES_CSTR(((vhost_t *)v)->name), AMQP_BYTES_EMPTY, id, sizeof id)))
            ptrvec_push(&doomed, v);
    for (size_t i = 0; i < doomed.n; i++) br_vhost_delete(b, doomed.items[i]);
    doomed.n = 0;
    p = 0;
    while (dict_next(&b->users, &p, NULL, NULL, &v)) {
        user_t *u = v;
        if (!dict_get(&keep, id, registry_identity('U', AMQP_BYTES_EMPTY, AMQP_BYTES_CSTR(u->name), id, sizeof id))) {
            ptrvec_push(&doomed, u);
            continue;
        }
        size_t vp = 0;
        void *vv;
        while (dict_next(&b->vhosts, &vp, NULL, NULL, &vv)) {
            vhost_t *vh = vv;
            if (!dict_get(&keep, id, registry_identity('P', AMQP_BYTES_CSTR(vh->name), AMQP_BYTES_CSTR(u->name), id, sizeof id)))
                br_clear_permissions(b, u, vh);
        }
    }
    for (size_t i = 0; i < doomed.n; i++) br_user_delete(b, doomed.items[i]);
    p = 0; /* topic permissions: all cleared, the snapshot's records set them again */
    while (dict_next(&b->users, &p, NULL, NULL, &v)) tperm_clear(b, v, NULL, NULL);
    p = 0;
    while (dict_next(&b->vhosts, &p, NULL, NULL, &v)) {
        vhost_t *vh = v;
        for (int op = 0; op < 2; op++) {
            doomed.n = 0;
            const ptrvec_t *list = op ? &vh->operator_policies : &vh->policies;
            for (size_t i = 0; i < list->n; i++) {
                const policy_t *pol = list->items[i];
                if (!dict_get(&keep, id, registry_identity(op ? 'o' : 'p', AMQP_BYTES_CSTR(vh->name),
                                                           AMQP_BYTES_CSTR(pol->name), id, sizeof id)))
                    ptrvec_push(&doomed, pol->name);
            }
            for (size_t i = 0; i < doomed.n; i++) br_policy_clear(vh, op, doomed.items[i]);
        }
    }
    ptrvec_free(&doomed);
    dict_free(&keep);
}

void meta_snapshot_install(broker_t *b, const void *bytes, size_t len)
{
    uint64_t index;
    struct snap_entry *e;
    uint32_t n;
    int version;
    if (snap_parse(bytes, len, &version, &index, &e, &n) != 0) {
        log_error("metadata: malformed snapshot ignored");
        return;
    }
    if (index > b->meta_applied) {
        b->meta_applying = true;
        if (version >= 2) snap_prune_registry(b, e, n);
        snap_prune(b, e, n);
        for (uint32_t i = 0; i < n; i++) {
            br_err_t err;
            b->meta_uid = e[i].uid;
            b->meta_home = e[i].cmd.home;
            b->meta_members = e[i].cmd.op == META_Q_DECLARE ? e[i].cmd.key : (amqp_bytes_t){0};
            if (apply_cmd(b, &e[i].cmd, &err) == BR_PRECONDITION_FAILED && e[i].cmd.op == META_X_DECLARE) {
                /* the exchange exists with other properties: the snapshot's wins */
                vhost_t *vh = br_vhost(b, STR(e[i].cmd.vhost));
                exchange_t *x = vh ? br_exchange(vh, STR(e[i].cmd.name)) : NULL;
                if (x) ex_delete(x);
                apply_cmd(b, &e[i].cmd, &err);
            }
        }
        b->meta_applying = false;
        b->meta_uid = 0;
        b->meta_home = 0;
        b->meta_members = (amqp_bytes_t){0};
        store_applied(b, index);
        log_info("metadata: installed snapshot at index %llu (%u records)", (unsigned long long)index, n);
    }
    free(e);
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

static int cl_submit(void *ctx, const void *cmd, size_t len, meta_submit_cb cb, void *arg);

/* ---- nodes leaving --------------------------------------------------------------------- */

static bool is_metadata_leader(broker_t *b)
{
    mr_host_t *h = cl_host(b->meta_submit_ctx);
    mr_group_t *g = h ? mr_host_group(h, CL_META_GROUP) : NULL;
    return g && mr_group_role(g) == RAFT_LEADER;
}

size_t meta_running_peers(broker_t *b, uint32_t *ids, size_t cap)
{
    if (b->meta_submit != cl_submit) return 0;
    struct cl_status *st = calloc(1, sizeof *st);
    if (!st) abort();
    cl_status(b->meta_submit_ctx, st);
    size_t n = 0;
    for (unsigned i = 0; i < st->n_members && n < cap; i++)
        if (st->members[i].id != st->node_id && st->members[i].running) ids[n++] = st->members[i].id;
    free(st);
    return n;
}

void meta_node_down(broker_t *b, uint32_t node)
{
    /* (only when the changes go through a cl_t: unit tests wire other transports) */
    if (b->meta_submit != cl_submit || !is_metadata_leader(b)) return;
    size_t vp = 0;
    void *vv;
    unsigned n = 0;
    while (dict_next(&b->vhosts, &vp, NULL, NULL, &vv)) {
        vhost_t *vh = vv;
        size_t p = 0;
        void *v;
        while (dict_next(&vh->queues, &p, NULL, NULL, &v)) {
            queue_t *q = v;
            if (q->home != node || (q->durable && !q->exclusive) || q->delete_pending) continue;
            meta_intercept_queue_delete(q); /* submits the replicated delete */
            n++;
        }
    }
    if (n) log_info("metadata: node %u is down: deleting its %u transient or exclusive queue(s)", node, n);
}

/* ---- wiring to the cluster --------------------------------------------------------------- */

static void cl_apply(void *ud, uint64_t index, const void *cmd, size_t len, int *code, char *text, size_t textlen)
{
    br_err_t err;
    *code = meta_apply(ud, index, cmd, len, &err);
    if (*code) snprintf(text, textlen, "%s", err.text);
}

static int cl_snapshot_take(void *ud, uint64_t index, void **bytes, size_t *len)
{
    (void)index; /* the registry is at the group's applied index: meta_applied says so */
    return meta_snapshot_take(ud, bytes, len);
}

static void cl_snapshot_install(void *ud, uint64_t index, const void *bytes, size_t len)
{
    (void)index; /* the snapshot names its own index */
    if (len) meta_snapshot_install(ud, bytes, len);
}

const struct cl_meta_ops meta_cl_ops = {
    .apply = cl_apply,
    .snapshot_take = cl_snapshot_take,
    .snapshot_install = cl_snapshot_install,
};

static int cl_submit(void *ctx, const void *cmd, size_t len, meta_submit_cb cb, void *arg)
{
    return cl_meta_submit(ctx, cmd, len, cb, arg);
}

/* The founder's boot state goes through the log (see broker_boot_submit). */
static void founded(void *ud)
{
    char err[512];
    if (broker_boot_submit(ud, err, sizeof err) != 0) log_error("cluster boot definitions: %s", err);
}

void meta_attach(broker_t *b, cl_t *c)
{
    if (!c || !cl_clustered(c)) return;
    meta_recover(b); /* the stored registry already reflects the commands up to here */
    b->self_node = cl_self_id(c);
    b->meta_submit = cl_submit;
    b->meta_submit_ctx = c;
    cl_set_founded_hook(c, founded, b);
}
