/* broker.c - the node's registry (vhosts, users) and the operations adapters call: declare,
 * delete, bind, purge, lookups for publish and consume, with RabbitMQ's permission checks,
 * equivalence rules and reply texts.
 *
 * Order of checks follows RabbitMQ's channel: name validation, then permission, then
 * existence/equivalence, so the same bad request yields the same reply code here as there.
 * Durable definitions are written to the store as they change (exchange.c, queue.c); the
 * store's batches are ordered, so a message confirmed after a declare implies the declare is
 * durable too.
 *
 * Vhosts carry RabbitMQ 4's metadata (description, tags, default queue type: a declare without
 * x-queue-type gets that type, br_queue_args_with_default_type) in their 'V' record, and the
 * limits of their "vhost-limits" parameter (params.c): max-queues is checked by
 * br_queue_declare on the requesting node, max-connections by the adapter at connection.open
 * (br_check_vhost_connection_limit, this node's count; amqp091 adds the other nodes'). */
#include "broker/broker.h"
#include "broker/qq.h"
#include "broker/topicperm.h"
#include "broker/headers_match.h"
#include "broker/log.h"
#include "broker/params.h"
#include "broker/remote.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* exchange.c */
int ex_type_parse(const char *t, size_t len);
const char *ex_type_name(ex_type_t t);
exchange_t *ex_new(vhost_t *vh, const char *name, size_t len, ex_type_t type, bool durable, bool auto_delete,
                   bool internal, amqp_bytes_t args);
void ex_persist(exchange_t *x);
void ex_delete(exchange_t *x);
binding_t *ex_find_binding(exchange_t *x, bool dest_is_queue, void *dest, const char *key, size_t klen,
                           amqp_bytes_t args);
binding_t *ex_binding_add(exchange_t *x, bool dest_is_queue, void *dest, const char *key, size_t klen,
                          amqp_bytes_t args, bool persist);
void br_binding_remove(binding_t *bd);

int br_fail(br_err_t *err, int code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->text, sizeof err->text, fmt, ap);
    va_end(ap);
    return code;
}

static void dispatch_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    br_dispatch_pending(w->data);
}

broker_t *broker_new(struct ev_loop *loop, cfg_t *cfg, store_t *store)
{
    broker_t *b = calloc(1, sizeof *b);
    if (!b) abort();
    b->loop = loop;
    b->cfg = cfg;
    b->store = store;
    dict_init(&b->vhosts);
    dict_init(&b->users);
    /* Message and queue ids only need to be unique on this node, across restarts too:
     * recovery raises them past every stored id. */
    b->next_msg_id = 1;
    b->next_queue_uid = 1;
    b->page_out_threshold = 32u << 20;
    if (store) store_set_presubmit(store, q_write_deferred, b); /* write elision, queue.c */
    if (loop) {
        ev_prepare_init(&b->dispatch_watcher, dispatch_cb);
        b->dispatch_watcher.data = b;
        ev_prepare_start(loop, &b->dispatch_watcher);
        ev_unref(loop);
    }
    return b;
}

static void perm_free(perm_t *p)
{
    auth_regex_free(p->configure);
    auth_regex_free(p->write);
    auth_regex_free(p->read);
    free(p);
}

static void user_free(user_t *u)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&u->perms, &pos, NULL, NULL, &v)) perm_free(v);
    dict_free(&u->perms);
    tperm_free_user(u);
    free(u->name);
    free(u->password_hash);
    free(u->tags);
    free(u);
}

/* Frees a vhost whose queues and exchanges are gone already. */
static void vhost_free_shell(vhost_t *vh)
{
    dict_free(&vh->queues);
    dict_free(&vh->exchanges);
    br_policies_free(vh);
    rp_free_all(&vh->params);
    free(vh->description);
    free(vh->tags);
    free(vh->default_queue_type);
    free(vh->name);
    free(vh);
}

void broker_free(broker_t *b)
{
    /* Shutdown, not deletion: nothing of it may reach the cluster (which is freed first). */
    b->meta_submit = NULL;
    /* Deferred message writes join the store's current batch (store_close flushes it) while
     * their queues are still here. */
    q_deferred_free(b);
    if (b->store) store_set_presubmit(b->store, NULL, NULL);
    qq_free(b); /* quorum queues' groups close (their storage stays); a no-op when done already */
    rq_close(b);
    if (b->loop) {
        ev_ref(b->loop);
        ev_prepare_stop(b->loop, &b->dispatch_watcher);
    }
    br_dispatch_pending(b);
    br_delays_free(b);
    size_t pos = 0;
    void *v;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            /* Shutdown, not deletion: keep durable records on disk. */
            q->durable = false;
            q_delete(q);
        }
        size_t xp = 0;
        void *xv;
        while (dict_next(&vh->exchanges, &xp, NULL, NULL, &xv)) {
            exchange_t *x = xv;
            x->durable = false;
            ex_delete(x);
        }
    }
    /* After the queues: their deletion cancelled the remote consumers; what remains (unsettled
     * deliveries of other nodes' clients) only holds references. */
    rq_free(b);
    pos = 0;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) vhost_free_shell(v);
    dict_free(&b->vhosts);
    pos = 0;
    while (dict_next(&b->users, &pos, NULL, NULL, &v)) user_free(v);
    dict_free(&b->users);
    for (size_t i = 0; i < b->dead_users.n; i++) user_free(b->dead_users.items[i]);
    ptrvec_free(&b->dead_users);
    for (size_t i = 0; i < b->dead_vhosts.n; i++) vhost_free_shell(b->dead_vhosts.items[i]);
    ptrvec_free(&b->dead_vhosts);
    rp_free_all(&b->global_params);
    free(b);
}

/* ---- vhosts and users ---- */

vhost_t *br_vhost(broker_t *b, const char *name, size_t len) { return dict_get(&b->vhosts, name, len); }

static void rec_put_str(amqp_buf_t *r, const char *s);
static char *rec_get_str(const uint8_t **p, const uint8_t *end);

/* Vhost record 'V' name -> empty (written before vhosts had metadata), or [u8 1][str
 * description][str tags][str default queue type ("" = none)]. */
static void vhost_persist(const vhost_t *vh)
{
    broker_t *b = vh->broker;
    if (!b->store) return;
    amqp_buf_t key = {0}, val = {0};
    amqp_buf_put_u8(&key, KEY_VHOST);
    amqp_buf_append(&key, vh->name, strlen(vh->name));
    amqp_buf_put_u8(&val, 1);
    rec_put_str(&val, vh->description);
    rec_put_str(&val, vh->tags);
    rec_put_str(&val, vh->default_queue_type);
    store_put(b->store, key.data, key.len, val.data, val.len);
    amqp_buf_free(&key);
    amqp_buf_free(&val);
}

static void set_str(char **field, const char *val)
{
    free(*field);
    *field = strdup(val);
    if (!*field) abort();
}

void br_vhost_set_metadata(vhost_t *vh, const char *description, const char *tags, const char *default_queue_type)
{
    if (description) set_str(&vh->description, description);
    if (tags) set_str(&vh->tags, tags);
    if (default_queue_type && !*default_queue_type) {
        free(vh->default_queue_type);
        vh->default_queue_type = NULL;
    } else if (default_queue_type) {
        set_str(&vh->default_queue_type, default_queue_type);
    }
    vhost_persist(vh);
}

/* Reads one stored 'V' value into vh (an empty value: a record of the format before metadata). */
static void vhost_load_metadata(vhost_t *vh, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    if (len < 1 || *p++ != 1) return;
    char *d = rec_get_str(&p, end), *t = d ? rec_get_str(&p, end) : NULL, *q = t ? rec_get_str(&p, end) : NULL;
    if (q) {
        set_str(&vh->description, d);
        set_str(&vh->tags, t);
        if (*q) set_str(&vh->default_queue_type, q);
    }
    free(d);
    free(t);
    free(q);
}

void br_vhosts_recover_metadata(broker_t *b)
{
    if (!b->store) return;
    uint8_t prefix = KEY_VHOST;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    while (it && store_iter_next(it, &k, &kl, &v, &vl)) {
        vhost_t *vh = br_vhost(b, (const char *)k + 1, kl - 1);
        if (!vh) continue;
        vhost_load_metadata(vh, v, vl);
        vhost_persist(vh); /* recovery's br_vhost_add queued an empty record: keep the metadata */
    }
    store_iter_free(it);
    rp_recover(b);
}

vhost_t *br_vhost_add(broker_t *b, const char *name)
{
    vhost_t *vh = br_vhost(b, name, strlen(name));
    if (vh) return vh;
    vh = calloc(1, sizeof *vh);
    if (!vh) abort();
    vh->broker = b;
    vh->name = strdup(name);
    vh->description = strdup("");
    vh->tags = strdup("");
    if (!vh->name || !vh->description || !vh->tags) abort();
    vh->max_connections = vh->max_queues = BR_NO_LIMIT;
    dict_init(&vh->exchanges);
    dict_init(&vh->queues);
    dict_set(&b->vhosts, name, strlen(name), vh);
    /* The standard exchanges every RabbitMQ vhost has. */
    static const struct { const char *name; ex_type_t type; bool internal; } std[] = {
        {"", EX_DIRECT, false},         {"amq.direct", EX_DIRECT, false}, {"amq.fanout", EX_FANOUT, false},
        {"amq.topic", EX_TOPIC, false}, {"amq.headers", EX_HEADERS, false}, {"amq.match", EX_HEADERS, false},
        {"amq.rabbitmq.trace", EX_TOPIC, true},
    };
    for (size_t i = 0; i < sizeof std / sizeof std[0]; i++)
        ex_new(vh, std[i].name, strlen(std[i].name), std[i].type, true, false, std[i].internal, AMQP_BYTES_EMPTY);
    vhost_persist(vh);
    return vh;
}

user_t *br_user(broker_t *b, const char *name, size_t len) { return dict_get(&b->users, name, len); }

/* Appends a u16-length-prefixed string to a record being built. */
static void rec_put_str(amqp_buf_t *r, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > 65535) n = 65535;
    amqp_buf_put_u16(r, (uint16_t)n);
    if (n) amqp_buf_append(r, s, n);
}

/* Reads a u16-length-prefixed string (malloc'd); NULL when the record is short. */
static char *rec_get_str(const uint8_t **p, const uint8_t *end)
{
    if (end - *p < 2) return NULL;
    size_t n = ((size_t)(*p)[0] << 8) | (*p)[1];
    if ((size_t)(end - *p - 2) < n) return NULL;
    char *s = strndup((const char *)*p + 2, n);
    if (!s) abort();
    *p += 2 + n;
    return s;
}

/* User record 'U' name -> [u8 alg][str hash][str tags]. */
static void user_persist(broker_t *b, const user_t *u)
{
    if (!b->store) return;
    amqp_buf_t key = {0}, val = {0};
    amqp_buf_put_u8(&key, KEY_USER);
    amqp_buf_append(&key, u->name, strlen(u->name));
    amqp_buf_put_u8(&val, (uint8_t)u->hash_alg);
    rec_put_str(&val, u->password_hash);
    rec_put_str(&val, u->tags);
    store_put(b->store, key.data, key.len, val.data, val.len);
    amqp_buf_free(&key);
    amqp_buf_free(&val);
}

/* Permission record 'P' vhost \0 user -> [str configure][str write][str read]. */
static void perm_persist(broker_t *b, const user_t *u, const vhost_t *vh, const perm_t *p)
{
    if (!b->store) return;
    amqp_buf_t key = {0}, val = {0};
    amqp_buf_put_u8(&key, KEY_PERM);
    amqp_buf_append(&key, vh->name, strlen(vh->name) + 1);
    amqp_buf_append(&key, u->name, strlen(u->name));
    rec_put_str(&val, auth_regex_pattern(p->configure));
    rec_put_str(&val, auth_regex_pattern(p->write));
    rec_put_str(&val, auth_regex_pattern(p->read));
    store_put(b->store, key.data, key.len, val.data, val.len);
    amqp_buf_free(&key);
    amqp_buf_free(&val);
}

user_t *br_user_add(broker_t *b, const char *name, auth_hash_alg_t alg, const char *hash, const char *tags)
{
    user_t *u = br_user(b, name, strlen(name));
    if (!u) {
        u = calloc(1, sizeof *u);
        if (!u) abort();
        u->name = strdup(name);
        dict_init(&u->perms);
        dict_set(&b->users, name, strlen(name), u);
    }
    free(u->password_hash);
    free(u->tags);
    u->hash_alg = alg;
    u->password_hash = hash ? strdup(hash) : NULL;
    u->tags = strdup(tags ? tags : "");
    user_persist(b, u);
    return u;
}

int br_set_permissions(broker_t *b, user_t *u, vhost_t *vh, const char *configure, const char *write,
                       const char *read, char *err, size_t errlen)
{
    perm_t *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->configure = auth_regex_compile(configure, err, errlen);
    p->write = p->configure ? auth_regex_compile(write, err, errlen) : NULL;
    p->read = p->write ? auth_regex_compile(read, err, errlen) : NULL;
    if (!p->read) {
        perm_free(p);
        return -1;
    }
    perm_t *old = dict_set(&u->perms, vh->name, strlen(vh->name), p);
    if (old) perm_free(old);
    perm_persist(b, u, vh, p);
    return 0;
}

/* Deletes the 'P' record of u's permissions on the vhost named vname. */
static void perm_unpersist(broker_t *b, const char *uname, const char *vname)
{
    if (!b->store) return;
    amqp_buf_t key = {0};
    amqp_buf_put_u8(&key, KEY_PERM);
    amqp_buf_append(&key, vname, strlen(vname) + 1);
    amqp_buf_append(&key, uname, strlen(uname));
    store_del(b->store, key.data, key.len);
    amqp_buf_free(&key);
}

bool br_clear_permissions(broker_t *b, user_t *u, const vhost_t *vh)
{
    perm_t *p = dict_get(&u->perms, vh->name, strlen(vh->name));
    if (!p) return false;
    dict_del(&u->perms, vh->name, strlen(vh->name));
    perm_free(p);
    perm_unpersist(b, u->name, vh->name);
    return true;
}

void br_user_delete(broker_t *b, user_t *u)
{
    size_t pos = 0;
    const char *k;
    size_t kl;
    void *v;
    while (dict_next(&u->perms, &pos, &k, &kl, &v)) {
        char *vname = strndup(k, kl);
        perm_unpersist(b, u->name, vname);
        free(vname);
        perm_free(v);
    }
    dict_free(&u->perms);
    dict_init(&u->perms); /* live connections of the user now have no permissions at all */
    tperm_clear(b, u, NULL, NULL);
    dict_del(&b->users, u->name, strlen(u->name));
    if (b->store) {
        amqp_buf_t key = {0};
        amqp_buf_put_u8(&key, KEY_USER);
        amqp_buf_append(&key, u->name, strlen(u->name));
        store_del(b->store, key.data, key.len);
        amqp_buf_free(&key);
    }
    ptrvec_push(&b->dead_users, u);
}

void ex_delete(exchange_t *x); /* exchange.c */

void br_vhost_delete(broker_t *b, vhost_t *vh)
{
    ptrvec_t doomed = {0};
    size_t pos = 0;
    void *v;
    /* Queues first (they take their bindings and messages along), then exchanges. */
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) ptrvec_push(&doomed, v);
    for (size_t i = 0; i < doomed.n; i++) q_delete(doomed.items[i]);
    doomed.n = 0;
    pos = 0;
    while (dict_next(&vh->exchanges, &pos, NULL, NULL, &v)) ptrvec_push(&doomed, v);
    for (size_t i = 0; i < doomed.n; i++) ex_delete(doomed.items[i]);
    ptrvec_free(&doomed);
    br_policies_delete_all(vh);
    rp_delete_all(vh);
    pos = 0;
    while (dict_next(&b->users, &pos, NULL, NULL, &v)) {
        br_clear_permissions(b, v, vh);
        tperm_clear(b, v, vh->name, NULL);
    }
    dict_del(&b->vhosts, vh->name, strlen(vh->name));
    if (b->store) {
        amqp_buf_t key = {0};
        amqp_buf_put_u8(&key, KEY_VHOST);
        amqp_buf_append(&key, vh->name, strlen(vh->name));
        store_del(b->store, key.data, key.len);
        amqp_buf_free(&key);
    }
    vh->deleted = true;
    ptrvec_push(&b->dead_vhosts, vh);
}

user_t *br_authenticate(broker_t *b, const char *name, size_t nlen, const char *pw, size_t pwlen)
{
    user_t *u = br_user(b, name, nlen);
    if (!u || !u->password_hash) return NULL;
    return auth_check_password(u->hash_alg, u->password_hash, pw, pwlen) ? u : NULL;
}

bool br_user_is_loopback_only(broker_t *b, const user_t *u)
{
    for (int i = 0; i < b->cfg->n_loopback_users; i++)
        if (strcmp(b->cfg->loopback_users[i], u->name) == 0) return true;
    return false;
}

int br_check_vhost_access(broker_t *b, user_t *u, const char *vhost, size_t len, vhost_t **out, br_err_t *err)
{
    vhost_t *vh = br_vhost(b, vhost, len);
    if (!vh) return br_fail(err, BR_NOT_ALLOWED, "vhost %.*s not found", (int)len, vhost);
    if (!dict_get(&u->perms, vhost, len))
        return br_fail(err, BR_NOT_ALLOWED, "access to vhost '%.*s' refused for user '%s'", (int)len, vhost,
                       u->name);
    *out = vh;
    return 0;
}

int br_check_vhost_connection_limit(broker_t *b, const user_t *u, const char *vhost, size_t len, br_err_t *err)
{
    const vhost_t *vh = br_vhost(b, vhost, len);
    /* (0 admits no connection at all, as RabbitMQ's is_over_connection_limit) */
    if (!vh || vh->max_connections == BR_NO_LIMIT || vh->connections < vh->max_connections) return 0;
    return br_fail(err, BR_NOT_ALLOWED, "access to vhost '%s' refused for user '%s': connection limit (%lld) is reached",
                   vh->name, u->name, (long long)vh->max_connections);
}

int br_check_perm(user_t *u, vhost_t *vh, enum perm_kind kind, bool is_queue, const char *name, size_t len,
                  br_err_t *err)
{
    if (!u) return 0;
    perm_t *p = dict_get(&u->perms, vh->name, strlen(vh->name));
    const char *res = len ? name : "amq.default";
    size_t rlen = len ? len : strlen("amq.default");
    if (!is_queue && len == 0) {
        name = res;
        len = rlen;
    }
    const auth_regex_t *re = NULL;
    if (p) re = kind == PERM_CONFIGURE ? p->configure : kind == PERM_WRITE ? p->write : p->read;
    if (re && auth_regex_match(re, res, rlen)) return 0;
    return br_fail(err, BR_ACCESS_REFUSED, "access to %s '%.*s' in vhost '%s' refused for user '%s'",
                   is_queue ? "queue" : "exchange", (int)rlen, res, vh->name, u->name);
}

/* A connection's vhost was deleted under it: as RabbitMQ, its next operation closes it. */
static int vhost_gone(vhost_t *vh, br_err_t *err)
{
    return vh->deleted ? br_fail(err, 320, "vhost '%s' is deleted", vh->name) : 0;
}

/* ---- exchanges ---- */

exchange_t *br_exchange(vhost_t *vh, const char *name, size_t len) { return dict_get(&vh->exchanges, name, len); }

static bool has_amq_prefix(const char *name, size_t len) { return len >= 4 && memcmp(name, "amq.", 4) == 0; }

static const char *bool_text(bool v) { return v ? "true" : "false"; }

static void describe_arg(const amqp_value_t *v, bool short_form, char *out, size_t cap);
static const char *arg_type_name(char t);

/* RabbitMQ compares alternate-exchange on redeclare. */
static int check_exchange_args_equivalence(exchange_t *x, amqp_bytes_t args, br_err_t *err)
{
    amqp_table_t a = {0}, c = {0};
    if (args.len && amqp_table_parse(args, &a) != 0) return 0;
    if (x->args_raw.len && amqp_table_parse(x->args_raw, &c) != 0) {
        amqp_table_free(&a);
        return 0;
    }
    const amqp_value_t *av = amqp_table_get(&a, "alternate-exchange"), *cv = amqp_table_get(&c, "alternate-exchange");
    int rc = 0;
    if ((av || cv) && !(av && cv && amqp_value_equal(av, cv))) {
        char gs[400], cs[400];
        bool short_form = av && cv && arg_type_name(av->type) == arg_type_name(cv->type);
        describe_arg(av, short_form, gs, sizeof gs);
        describe_arg(cv, short_form, cs, sizeof cs);
        rc = br_fail(err, BR_PRECONDITION_FAILED,
                     "inequivalent arg 'alternate-exchange' for exchange '%s' in vhost '%s': received %s but current "
                     "is %s",
                     x->name, x->vh->name, gs, cs);
    }
    amqp_table_free(&a);
    amqp_table_free(&c);
    return rc;
}

static int validate_exchange_args(vhost_t *vh, const char *name, size_t len, amqp_bytes_t args, br_err_t *err)
{
    amqp_table_t t = {0};
    if (!args.len || amqp_table_parse(args, &t) != 0) return 0;
    const amqp_value_t *ae = amqp_table_get(&t, "alternate-exchange");
    int rc = 0;
    if (ae && ae->type != 'S')
        rc = br_fail(err, BR_PRECONDITION_FAILED, "invalid type '%s' for arg 'alternate-exchange' in exchange '%.*s' in "
                     "vhost '%s'", arg_type_name(ae->type), (int)len, name, vh->name);
    amqp_table_free(&t);
    return rc;
}

/* Dry run (meta.c): validation passed and the call would now change the registry. */
static int would_mutate(broker_t *b)
{
    b->meta_would_mutate = true;
    return 0;
}

int br_exchange_declare(vhost_t *vh, user_t *u, const char *name, size_t len, const char *type, size_t tlen,
                        bool passive, bool durable, bool auto_delete, bool internal, amqp_bytes_t args,
                        br_err_t *err)
{
    if (vhost_gone(vh, err)) return err->code;
    if (passive) {
        if (len == 0) return 0;
        if (!br_exchange(vh, name, len))
            return br_fail(err, BR_NOT_FOUND, "no exchange '%.*s' in vhost '%s'", (int)len, name, vh->name);
        return 0;
    }
    if (len == 0) return br_fail(err, BR_ACCESS_REFUSED, "operation not permitted on the default exchange");
    int t = ex_type_parse(type, tlen);
    if (t < 0) return br_fail(err, BR_COMMAND_INVALID, "invalid exchange type '%.*s'", (int)tlen, type);
    bool delayed = t == EX_DELAYED;
    if (delayed) {
        /* rabbitmq-delayed-message-exchange: routing follows x-delayed-type. */
        amqp_table_t at = {0};
        if (args.len) amqp_table_parse(args, &at);
        const amqp_value_t *dt = amqp_table_get(&at, "x-delayed-type");
        t = dt && dt->type == 'S' ? ex_type_parse((const char *)dt->v.str.ptr, dt->v.str.len) : -1;
        amqp_table_free(&at);
        if (t < 0 || t == EX_DELAYED)
            return br_fail(err, BR_PRECONDITION_FAILED,
                           "Invalid argument, 'x-delayed-type' must be an existing exchange type");
    }
    exchange_t *x = br_exchange(vh, name, len);
    if (!x && has_amq_prefix(name, len) && !vh->broker->meta_applying)
        return br_fail(err, BR_ACCESS_REFUSED, "exchange name '%.*s' contains reserved prefix 'amq.*'", (int)len,
                       name);
    if (br_check_perm(u, vh, PERM_CONFIGURE, false, name, len, err)) return err->code;
    if (x) {
        const char *what = NULL, *got = NULL, *cur = NULL;
        if ((int)x->type != t || x->delayed != delayed)
            what = "type", got = delayed ? "x-delayed-message" : ex_type_name((ex_type_t)t),
            cur = x->delayed ? "x-delayed-message" : ex_type_name(x->type);
        else if (x->durable != durable)
            what = "durable", got = bool_text(durable), cur = bool_text(x->durable);
        else if (x->auto_delete != auto_delete)
            what = "auto_delete", got = bool_text(auto_delete), cur = bool_text(x->auto_delete);
        else if (x->internal != internal)
            what = "internal", got = bool_text(internal), cur = bool_text(x->internal);
        if (what)
            return br_fail(err, BR_PRECONDITION_FAILED,
                           "inequivalent arg '%s' for exchange '%.*s' in vhost '%s': received '%s' but current is "
                           "'%s'",
                           what, (int)len, name, vh->name, got, cur);
        return check_exchange_args_equivalence(x, args, err);
    }
    if (validate_exchange_args(vh, name, len, args, err)) return err->code;
    if (vh->broker->meta_dry_run) return would_mutate(vh->broker);
    x = ex_new(vh, name, len, (ex_type_t)t, durable, auto_delete, internal, args);
    x->delayed = delayed;
    ex_persist(x);
    return 0;
}

int br_exchange_delete(vhost_t *vh, user_t *u, const char *name, size_t len, bool if_unused, br_err_t *err)
{
    if (vhost_gone(vh, err)) return err->code;
    if (len == 0 || (has_amq_prefix(name, len) && br_exchange(vh, name, len)))
        return len ? br_fail(err, BR_ACCESS_REFUSED, "deletion of system exchange '%.*s' in vhost '%s' not allowed",
                             (int)len, name, vh->name)
                   : br_fail(err, BR_ACCESS_REFUSED, "operation not permitted on the default exchange");
    if (br_check_perm(u, vh, PERM_CONFIGURE, false, name, len, err)) return err->code;
    exchange_t *x = br_exchange(vh, name, len);
    if (!x) return 0;
    if (if_unused && x->bindings.n)
        return br_fail(err, BR_PRECONDITION_FAILED, "exchange '%.*s' in vhost '%s' in use", (int)len, name, vh->name);
    if (vh->broker->meta_dry_run) return would_mutate(vh->broker);
    ex_delete(x);
    return 0;
}

/* ---- queues ---- */

queue_t *br_queue(vhost_t *vh, const char *name, size_t len) { return dict_get(&vh->queues, name, len); }

static int exclusive_locked(queue_t *q, br_err_t *err)
{
    return br_fail(err, BR_RESOURCE_LOCKED,
                   "cannot obtain exclusive access to locked queue '%s' in vhost '%s'. It could be originally "
                   "declared on another connection or the exclusive property value does not match that of the "
                   "original declaration.",
                   q->name, q->vh->name);
}

static const char *arg_type_name(char t)
{
    switch (t) {
    case 't': return "bool";
    case 'b': case 's': case 'I': case 'l': return "signedint";
    case 'B': case 'u': case 'i': return "unsignedint";
    case 'f': return "float";
    case 'd': return "double";
    case 'D': return "decimal";
    case 'S': return "longstr";
    case 'x': return "binary";
    case 'A': return "array";
    case 'T': return "timestamp";
    case 'F': return "table";
    case 'V': return "void";
    default: return "unknown";
    }
}

/* RabbitMQ prints both sides as '<value>' when both are present and of the same kind, else the
 * long "the value ... of type ..." / "none" form. */
static void describe_arg(const amqp_value_t *v, bool short_form, char *out, size_t cap)
{
    if (!v) {
        snprintf(out, cap, "none");
        return;
    }
    int64_t i;
    char val[300];
    if (amqp_value_int(v, &i))
        snprintf(val, sizeof val, "%lld", (long long)i);
    else if (v->type == 'S' || v->type == 'x')
        snprintf(val, sizeof val, "%.*s", (int)v->v.str.len, (const char *)v->v.str.ptr);
    else if (v->type == 't')
        snprintf(val, sizeof val, "%s", v->v.b ? "true" : "false");
    else
        snprintf(val, sizeof val, "?");
    if (short_form)
        snprintf(out, cap, "'%s'", val);
    else
        snprintf(out, cap, "the value '%s' of type '%s'", val, arg_type_name(v->type));
}

/* The queue arguments RabbitMQ compares on redeclare. */
static const char *const equivalence_args[] = {
    "x-dead-letter-exchange", "x-dead-letter-routing-key", "x-expires", "x-max-length", "x-max-length-bytes",
    "x-max-priority", "x-message-ttl", "x-overflow", "x-queue-mode", "x-queue-type", "x-single-active-consumer",
    "x-max-in-memory-length", "x-max-in-memory-bytes", "x-delivery-limit", "x-queue-version",
};

static int check_queue_equivalence(queue_t *q, bool durable, bool auto_delete, amqp_bytes_t args, br_err_t *err)
{
    const char *what = NULL;
    bool got = false, cur = false;
    if (q->durable != durable)
        what = "durable", got = durable, cur = q->durable;
    else if (q->auto_delete != auto_delete)
        what = "auto_delete", got = auto_delete, cur = q->auto_delete;
    if (what)
        return br_fail(err, BR_PRECONDITION_FAILED,
                       "inequivalent arg '%s' for queue '%s' in vhost '%s': received '%s' but current is '%s'",
                       what, q->name, q->vh->name, bool_text(got), bool_text(cur));
    amqp_table_t t = {0};
    if (args.len && amqp_table_parse(args, &t) != 0) return 0;
    int rc = 0;
    for (size_t i = 0; i < sizeof equivalence_args / sizeof equivalence_args[0] && !rc; i++) {
        const amqp_value_t *a = amqp_table_get(&t, equivalence_args[i]);
        const amqp_value_t *c = amqp_table_get(&q->args, equivalence_args[i]);
        if (!a && !c) continue;
        /* RabbitMQ treats numerically equal integers of different widths as equivalent. */
        int64_t ai, ci;
        if (a && c && amqp_value_int(a, &ai) && amqp_value_int(c, &ci) && ai == ci) continue;
        if (a && c && amqp_value_equal(a, c)) continue;
        /* x-queue-type "classic" is the default. */
        if (strcmp(equivalence_args[i], "x-queue-type") == 0) {
            const amqp_value_t *s = a ? a : c;
            if (!(a && c) && s->type == 'S' && amqp_bytes_eq_cstr(s->v.str, "classic")) continue;
        }
        char gs[400], cs[400];
        bool short_form = a && c && arg_type_name(a->type) == arg_type_name(c->type);
        describe_arg(a, short_form, gs, sizeof gs);
        describe_arg(c, short_form, cs, sizeof cs);
        rc = br_fail(err, BR_PRECONDITION_FAILED,
                     "inequivalent arg '%s' for queue '%s' in vhost '%s': received %s but current is %s",
                     equivalence_args[i], q->name, q->vh->name, gs, cs);
    }
    amqp_table_free(&t);
    return rc;
}

void br_server_queue_name(char *out)
{
    uint8_t rnd[16];
    randombytes_buf(rnd, sizeof rnd);
    char b64[32];
    sodium_bin2base64(b64, sizeof b64, rnd, sizeof rnd, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    snprintf(out, 48, "amq.gen-%s", b64);
}

/* Type and range rules of the queue arguments RabbitMQ validates at declare time. */
typedef enum { ARG_NONNEG_INT, ARG_POS_INT, ARG_TTL, ARG_POS_TTL, ARG_PRIORITY, ARG_STRING, ARG_BOOL, ARG_OVERFLOW } arg_rule_t;
static const struct { const char *name; arg_rule_t rule; } queue_arg_rules[] = {
    {"x-message-ttl", ARG_TTL},                {"x-expires", ARG_POS_TTL},
    {"x-max-length", ARG_NONNEG_INT},          {"x-max-length-bytes", ARG_NONNEG_INT},
    {"x-max-priority", ARG_PRIORITY},          {"x-dead-letter-exchange", ARG_STRING},
    {"x-dead-letter-routing-key", ARG_STRING}, {"x-overflow", ARG_OVERFLOW},
    {"x-queue-mode", ARG_STRING},              {"x-single-active-consumer", ARG_BOOL},
    {"x-consumer-timeout", ARG_POS_INT},
};

static int check_arg_rule(const amqp_value_t *v, arg_rule_t rule, char *why, size_t cap)
{
    int64_t i;
    bool is_int = amqp_value_int(v, &i) && v->type != 'T';
    switch (rule) {
    case ARG_NONNEG_INT:
    case ARG_POS_INT:
    case ARG_TTL:
    case ARG_POS_TTL:
    case ARG_PRIORITY:
        if (!is_int) return snprintf(why, cap, "\"expected integer, got %s\"", arg_type_name(v->type)), -1;
        if (i < 0) return snprintf(why, cap, "{value_negative,%lld}", (long long)i), -1;
        if ((rule == ARG_POS_INT || rule == ARG_POS_TTL) && i == 0) return snprintf(why, cap, "{value_zero,0}"), -1;
        /* TTLs are capped at ten years, as RabbitMQ does. */
        if ((rule == ARG_TTL || rule == ARG_POS_TTL) && i > 315360000000LL)
            return snprintf(why, cap, "{value_too_large,%lld}", (long long)i), -1;
        if (rule == ARG_PRIORITY && i > 255) return snprintf(why, cap, "{max_value_exceeded,%lld}", (long long)i), -1;
        return 0;
    case ARG_STRING:
        if (v->type != 'S') return snprintf(why, cap, "{unacceptable_type,%s}", arg_type_name(v->type)), -1;
        return 0;
    case ARG_OVERFLOW:
        if (v->type != 'S') return snprintf(why, cap, "{unacceptable_type,%s}", arg_type_name(v->type)), -1;
        if (!amqp_bytes_eq_cstr(v->v.str, "drop-head") && !amqp_bytes_eq_cstr(v->v.str, "reject-publish") &&
            !amqp_bytes_eq_cstr(v->v.str, "reject-publish-dlx"))
            return snprintf(why, cap, "invalid_overflow"), -1;
        return 0;
    case ARG_BOOL:
        if (v->type != 't') return snprintf(why, cap, "{unacceptable_type,%s}", arg_type_name(v->type)), -1;
        return 0;
    }
    return 0;
}

static int validate_queue_args(vhost_t *vh, const char *name, size_t len, amqp_bytes_t args, br_err_t *err)
{
    if (!args.len) return 0;
    amqp_table_t t;
    if (amqp_table_parse(args, &t) != 0)
        return br_fail(err, BR_PRECONDITION_FAILED, "invalid arguments for queue '%.*s' in vhost '%s'", (int)len,
                       name, vh->name);
    int rc = 0;
    const amqp_value_t *dlx = amqp_table_get(&t, "x-dead-letter-exchange");
    if (dlx && dlx->type != 'S')
        rc = br_fail(err, BR_PRECONDITION_FAILED,
                     "invalid type '%s' for arg 'x-dead-letter-exchange' in queue '%.*s' in vhost '%s'",
                     arg_type_name(dlx->type), (int)len, name, vh->name);
    else if (!dlx && amqp_table_get(&t, "x-dead-letter-routing-key"))
        rc = br_fail(err, BR_PRECONDITION_FAILED,
                     "invalid arg 'x-dead-letter-routing-key' for queue '%.*s' in vhost '%s': "
                     "routing_key_but_no_dlx_defined",
                     (int)len, name, vh->name);
    for (size_t i = 0; i < sizeof queue_arg_rules / sizeof queue_arg_rules[0] && !rc; i++) {
        const amqp_value_t *v = amqp_table_get(&t, queue_arg_rules[i].name);
        char why[128];
        if (v && check_arg_rule(v, queue_arg_rules[i].rule, why, sizeof why))
            rc = br_fail(err, BR_PRECONDITION_FAILED, "invalid arg '%s' for queue '%.*s' in vhost '%s': %s",
                         queue_arg_rules[i].name, (int)len, name, vh->name, why);
    }
    if (rc) {
        amqp_table_free(&t);
        return rc;
    }
    const amqp_value_t *qt = amqp_table_get(&t, "x-queue-type");
    if (qt) {
        if (qt->type != 'S')
            rc = br_fail(err, BR_PRECONDITION_FAILED, "invalid arg 'x-queue-type' for queue '%.*s' in vhost '%s'",
                         (int)len, name, vh->name);
        else if (!amqp_bytes_eq_cstr(qt->v.str, "classic") && !amqp_bytes_eq_cstr(qt->v.str, "quorum"))
            rc = br_fail(err, BR_PRECONDITION_FAILED,
                         "invalid arg 'x-queue-type' for queue '%.*s' in vhost '%s': queue type '%.*s' is not "
                         "supported yet",
                         (int)len, name, vh->name, (int)qt->v.str.len, (const char *)qt->v.str.ptr);
    }
    amqp_table_free(&t);
    return rc;
}

amqp_bytes_t br_queue_args_with_default_type(const vhost_t *vh, bool durable, bool exclusive, bool auto_delete,
                                             amqp_bytes_t args, amqp_buf_t *buf)
{
    const char *dqt = vh->default_queue_type;
    if (!dqt) return args;
    amqp_table_t t = {0};
    if (args.len && amqp_table_parse(args, &t) != 0) return args; /* refused later as invalid */
    bool has_type = amqp_table_get(&t, "x-queue-type") != NULL;
    amqp_table_free(&t);
    if (has_type) return args;
    /* A quorum queue must be durable, not exclusive, not auto-delete: other declares get the
     * fallback type, as RabbitMQ 4's augment_declare_args does. */
    if (strcmp(dqt, "quorum") == 0 && (!durable || exclusive || auto_delete)) dqt = "classic";
    buf->len = 0;
    amqp_buf_append(buf, args.ptr, args.len);
    amqp_table_put_longstr(buf, "x-queue-type", AMQP_BYTES_CSTR(dqt));
    return (amqp_bytes_t){buf->data, buf->len};
}

/* RabbitMQ's max-queues: a declare that would create one more queue than the vhost allows. */
static int check_queue_limit(vhost_t *vh, const char *name, size_t len, br_err_t *err)
{
    if (vh->max_queues == BR_NO_LIMIT || (int64_t)dict_size(&vh->queues) < vh->max_queues) return 0;
    return br_fail(err, BR_PRECONDITION_FAILED, "cannot declare queue '%.*s': queue limit in vhost '%s' (%lld) is reached",
                   (int)len, name, vh->name, (long long)vh->max_queues);
}

static int queue_declare(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, bool passive,
                         bool durable, bool exclusive, bool auto_delete, amqp_bytes_t args, queue_t **out,
                         br_err_t *err);

int br_queue_declare(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, bool passive,
                     bool durable, bool exclusive, bool auto_delete, amqp_bytes_t args, queue_t **out,
                     br_err_t *err)
{
    if (vhost_gone(vh, err)) return err->code;
    amqp_buf_t buf = {0};
    if (!passive) args = br_queue_args_with_default_type(vh, durable, exclusive, auto_delete, args, &buf);
    int rc = queue_declare(vh, u, conn_id, name, len, passive, durable, exclusive, auto_delete, args, out, err);
    amqp_buf_free(&buf);
    return rc;
}

/* The members of a quorum queue created by a replicated declare: the command's, or (a command
 * that named none, e.g. one whose quorum type came from the vhost's default) its home node, so
 * every node computes the same list. */
static amqp_bytes_t applied_members(broker_t *b, uint8_t home[4])
{
    if (b->meta_members.len || !b->meta_home) return b->meta_members;
    home[0] = (uint8_t)(b->meta_home >> 24), home[1] = (uint8_t)(b->meta_home >> 16);
    home[2] = (uint8_t)(b->meta_home >> 8), home[3] = (uint8_t)b->meta_home;
    return (amqp_bytes_t){home, 4};
}

static int queue_declare(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, bool passive,
                         bool durable, bool exclusive, bool auto_delete, amqp_bytes_t args, queue_t **out,
                         br_err_t *err)
{
    char gen[48];
    queue_t *q = NULL;
    bool server_named = len == 0;
    if (passive) {
        q = len ? br_queue(vh, name, len) : NULL;
        if (!q) return br_fail(err, BR_NOT_FOUND, "no queue '%.*s' in vhost '%s'", (int)len, name, vh->name);
        if (q->exclusive && q->owner_conn != conn_id) return exclusive_locked(q, err);
        if (!q->qq) q_touch(q); /* a passive declare is no use of a quorum queue (as RabbitMQ) */
        *out = q;
        return 0;
    }
    if (len == 0) {
        br_server_queue_name(gen);
        name = gen;
        len = strlen(gen);
    } else if (has_amq_prefix(name, len) && !br_queue(vh, name, len) && !vh->broker->meta_applying) {
        return br_fail(err, BR_ACCESS_REFUSED, "queue name '%.*s' contains reserved prefix 'amq.*'", (int)len, name);
    }
    if (br_check_perm(u, vh, PERM_CONFIGURE, true, name, len, err)) return err->code;
    q = br_queue(vh, name, len);
    if (q) {
        if (q->exclusive && q->owner_conn != conn_id) return exclusive_locked(q, err);
        if (q->exclusive != exclusive) return exclusive_locked(q, err);
        if (check_queue_equivalence(q, durable, auto_delete, args, err)) return err->code;
        q_touch(q);
        *out = q;
        return 0;
    }
    /* (apply does not check: the requesting node did, and a snapshot or an import recreates
     * what exists whatever the limit) */
    if (!vh->broker->meta_applying && check_queue_limit(vh, name, len, err)) return err->code;
    if (validate_queue_args(vh, name, len, args, err)) return err->code;
    amqp_table_t parsed = {0};
    bool quorum = args.len && amqp_table_parse(args, &parsed) == 0 && qq_args_quorum(&parsed);
    int qrc = quorum ? qq_check_declare(vh, name, len, server_named, durable, exclusive, auto_delete, &parsed, err) : 0;
    amqp_table_free(&parsed);
    if (qrc) return qrc;
    if (vh->broker->meta_dry_run) return would_mutate(vh->broker);
    q = q_new(vh, name, len, durable, exclusive, auto_delete, exclusive ? conn_id : 0, args);
    /* A quorum queue's replica and Raft group; members from the metadata command (clustered)
     * or this node alone. */
    uint8_t home[4];
    if (quorum) qq_attach(q, vh->broker->meta_applying ? applied_members(vh->broker, home) : (amqp_bytes_t){0});
    /* Exclusive queues die with their connection: never worth storing. */
    if (!exclusive) q_persist_definition(q);
    *out = q;
    return 0;
}

static int queue_for_op(vhost_t *vh, user_t *u, uint64_t conn_id, enum perm_kind kind, const char *name,
                        size_t len, queue_t **out, br_err_t *err)
{
    if (vhost_gone(vh, err)) return err->code;
    queue_t *q = br_queue(vh, name, len);
    if (!q) return br_fail(err, BR_NOT_FOUND, "no queue '%.*s' in vhost '%s'", (int)len, name, vh->name);
    if (br_check_perm(u, vh, kind, true, name, len, err)) return err->code;
    if (q->exclusive && q->owner_conn != conn_id) return exclusive_locked(q, err);
    *out = q;
    return 0;
}

int br_queue_delete(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, bool if_unused,
                    bool if_empty, uint32_t *msg_count, br_err_t *err)
{
    *msg_count = 0;
    if (vhost_gone(vh, err)) return err->code;
    if (br_check_perm(u, vh, PERM_CONFIGURE, true, name, len, err)) return err->code;
    queue_t *q = br_queue(vh, name, len);
    if (!q) return 0;
    if (q->exclusive && q->owner_conn != conn_id) return exclusive_locked(q, err);
    if (if_unused && (q->qq ? qq_consumer_count(q) : q->consumers.n))
        return br_fail(err, BR_PRECONDITION_FAILED, "queue '%s' in vhost '%s' in use", q->name, vh->name);
    if (if_empty && (q->qq ? qq_message_count(q) : q->ready_len))
        return br_fail(err, BR_PRECONDITION_FAILED, "queue '%s' in vhost '%s' not empty", q->name, vh->name);
    *msg_count = q_message_count(q);
    if (vh->broker->meta_dry_run) return would_mutate(vh->broker);
    q_delete(q);
    return 0;
}

int br_queue_purge(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, uint32_t *msg_count,
                   br_err_t *err)
{
    queue_t *q = NULL;
    if (queue_for_op(vh, u, conn_id, PERM_READ, name, len, &q, err)) return err->code;
    *msg_count = q_purge(q);
    return 0;
}

int br_queue_for_read(vhost_t *vh, user_t *u, uint64_t conn_id, const char *name, size_t len, queue_t **out,
                      br_err_t *err)
{
    return queue_for_op(vh, u, conn_id, PERM_READ, name, len, out, err);
}

/* ---- bindings ---- */

static int binding_ends(vhost_t *vh, user_t *u, uint64_t conn_id, bool dest_is_queue, const char *dest,
                        size_t dlen, const char *src, size_t slen, exchange_t **xs, void **d, br_err_t *err)
{
    if (vhost_gone(vh, err)) return err->code;
    if (slen == 0 || (!dest_is_queue && dlen == 0))
        return br_fail(err, BR_ACCESS_REFUSED, "operation not permitted on the default exchange");
    if (br_check_perm(u, vh, PERM_WRITE, dest_is_queue, dest, dlen, err)) return err->code;
    if (br_check_perm(u, vh, PERM_READ, false, src, slen, err)) return err->code;
    *xs = br_exchange(vh, src, slen);
    if (!*xs) return br_fail(err, BR_NOT_FOUND, "no exchange '%.*s' in vhost '%s'", (int)slen, src, vh->name);
    if (dest_is_queue) {
        queue_t *q = br_queue(vh, dest, dlen);
        if (!q) return br_fail(err, BR_NOT_FOUND, "no queue '%.*s' in vhost '%s'", (int)dlen, dest, vh->name);
        if (q->exclusive && q->owner_conn != conn_id) return exclusive_locked(q, err);
        *d = q;
    } else {
        exchange_t *x = br_exchange(vh, dest, dlen);
        if (!x) return br_fail(err, BR_NOT_FOUND, "no exchange '%.*s' in vhost '%s'", (int)dlen, dest, vh->name);
        *d = x;
    }
    return 0;
}

int br_bind(vhost_t *vh, user_t *u, uint64_t conn_id, bool dest_is_queue, const char *dest, size_t dlen,
            const char *src, size_t slen, const char *key, size_t klen, amqp_bytes_t args, br_err_t *err)
{
    exchange_t *x = NULL;
    void *d = NULL;
    if (binding_ends(vh, u, conn_id, dest_is_queue, dest, dlen, src, slen, &x, &d, err)) return err->code;
    if (x->type == EX_HEADERS && args.len) {
        amqp_table_t t;
        if (amqp_table_parse(args, &t) == 0) {
            char msg[256];
            int bad = headers_validate_binding(&t, msg, sizeof msg);
            amqp_table_free(&t);
            if (bad) return br_fail(err, BR_PRECONDITION_FAILED, "%s", msg);
        }
    }
    if (ex_find_binding(x, dest_is_queue, d, key, klen, args)) return 0;
    if (vh->broker->meta_dry_run) return would_mutate(vh->broker);
    ex_binding_add(x, dest_is_queue, d, key, klen, args, true);
    return 0;
}

int br_unbind(vhost_t *vh, user_t *u, uint64_t conn_id, bool dest_is_queue, const char *dest, size_t dlen,
              const char *src, size_t slen, const char *key, size_t klen, amqp_bytes_t args, br_err_t *err)
{
    exchange_t *x = NULL;
    void *d = NULL;
    if (binding_ends(vh, u, conn_id, dest_is_queue, dest, dlen, src, slen, &x, &d, err)) return err->code;
    binding_t *bd = ex_find_binding(x, dest_is_queue, d, key, klen, args);
    if (bd && vh->broker->meta_dry_run) return would_mutate(vh->broker);
    if (bd) br_binding_remove(bd);
    return 0;
}

/* ---- publish / connections ---- */

int br_publish_target(vhost_t *vh, user_t *u, const char *name, size_t len, exchange_t **out, br_err_t *err)
{
    if (vhost_gone(vh, err)) return err->code;
    exchange_t *x = br_exchange(vh, name, len);
    if (!x) return br_fail(err, BR_NOT_FOUND, "no exchange '%.*s' in vhost '%s'", (int)len, name, vh->name);
    if (x->internal)
        return br_fail(err, BR_ACCESS_REFUSED, "cannot publish to internal exchange '%.*s' in vhost '%s'", (int)len,
                       name, vh->name);
    if (br_check_perm(u, vh, PERM_WRITE, false, name, len, err)) return err->code;
    *out = x;
    return 0;
}

void br_connection_closed(broker_t *b, uint64_t conn_id)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        ptrvec_t doomed = {0};
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            if (q->exclusive && q->owner_conn == conn_id) ptrvec_push(&doomed, q);
        }
        for (size_t i = 0; i < doomed.n; i++) q_delete(doomed.items[i]);
        ptrvec_free(&doomed);
    }
}
