/* recovery.c - rebuilding the node's durable state from the store at boot.
 *
 * Order matters: vhosts, then exchanges and queues, then bindings (both ends must exist),
 * then messages and finally each durable queue's index ('i' uid seq -> msg id), replayed in
 * key order so every queue comes back in its original FIFO order. Message records no index
 * points to (their queues were deleted, or they were acked while the index delete and the
 * record delete landed in different batches) are removed. Bodies are not kept in memory:
 * recovered messages are paged out and loaded on delivery, so a large backlog boots small. */
#include "broker/broker.h"
#include "broker/qq.h"
#include "broker/topicperm.h"
#include "broker/log.h"

#include <stdlib.h>
#include <string.h>

int ex_type_parse(const char *t, size_t len);
exchange_t *ex_new(vhost_t *vh, const char *name, size_t len, ex_type_t type, bool durable, bool auto_delete,
                   bool internal, amqp_bytes_t args);
binding_t *ex_find_binding(exchange_t *x, bool dest_is_queue, void *dest, const char *key, size_t klen,
                           amqp_bytes_t args);
binding_t *ex_binding_add(exchange_t *x, bool dest_is_queue, void *dest, const char *key, size_t klen,
                          amqp_bytes_t args, bool persist);

/* Splits "vhost \0 name" after the tag byte. */
static bool split_name_key(const uint8_t *k, size_t klen, const char **vh, size_t *vhl, const char **name,
                           size_t *nl)
{
    const uint8_t *z = memchr(k + 1, 0, klen - 1);
    if (!z) return false;
    *vh = (const char *)k + 1;
    *vhl = (size_t)(z - (k + 1));
    *name = (const char *)z + 1;
    *nl = klen - (size_t)(z + 1 - k);
    return true;
}

static vhost_t *vhost_for(broker_t *b, const char *name, size_t len)
{
    vhost_t *vh = br_vhost(b, name, len);
    if (vh) return vh;
    char *n = strndup(name, len);
    vh = br_vhost_add(b, n);
    free(n);
    return vh;
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void recover_vhosts(broker_t *b)
{
    uint8_t prefix = KEY_VHOST;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    while (store_iter_next(it, &k, &kl, &v, &vl)) vhost_for(b, (const char *)k + 1, kl - 1);
    store_iter_free(it);
}

/* Reads a u16-length-prefixed string; NULL when the record is short. */
static char *rec_get_str(const uint8_t **p, const uint8_t *end)
{
    if (end - *p < 2) return NULL;
    size_t n = ((size_t)(*p)[0] << 8) | (*p)[1];
    if ((size_t)(end - *p - 2) < n) return NULL;
    char *s = strndup((const char *)*p + 2, n);
    *p += 2 + n;
    return s;
}

static int recover_users(broker_t *b)
{
    uint8_t prefix = KEY_USER;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const uint8_t *p = v, *end = p + vl;
        if (vl < 1 || kl < 2) continue;
        uint8_t alg = *p++;
        char *hash = rec_get_str(&p, end), *tags = rec_get_str(&p, end);
        char *name = strndup((const char *)k + 1, kl - 1);
        if (hash && tags && alg <= AUTH_HASH_MD5) {
            br_user_add(b, name, (auth_hash_alg_t)alg, hash[0] ? hash : NULL, tags);
            n++;
        }
        free(name);
        free(hash);
        free(tags);
    }
    store_iter_free(it);
    prefix = KEY_PERM;
    it = store_iter_prefix(b->store, &prefix, 1);
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *vhn, *un;
        size_t vhl, ul;
        if (!split_name_key(k, kl, &vhn, &vhl, &un, &ul)) continue;
        user_t *u = br_user(b, un, ul);
        vhost_t *vh = br_vhost(b, vhn, vhl);
        const uint8_t *p = v, *end = p + vl;
        char *c = rec_get_str(&p, end), *w = rec_get_str(&p, end), *r = rec_get_str(&p, end);
        char err[256];
        if (u && vh && c && w && r && br_set_permissions(b, u, vh, c, w, r, err, sizeof err))
            log_warn("stored permissions of user '%s' skipped: %s", u->name, err);
        free(c);
        free(w);
        free(r);
    }
    store_iter_free(it);
    return n;
}

static int recover_exchanges(broker_t *b)
{
    uint8_t prefix = KEY_EXCHANGE;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *vhn, *name;
        size_t vhl, nl;
        const uint8_t *val = v;
        if (!split_name_key(k, kl, &vhn, &vhl, &name, &nl) || vl < 6) continue;
        vhost_t *vh = vhost_for(b, vhn, vhl);
        if (br_exchange(vh, name, nl)) continue; /* a standard exchange */
        uint32_t al = be32(val + 2);
        if (6 + (size_t)al > vl || val[0] > EX_HEADERS) continue;
        exchange_t *x = ex_new(vh, name, nl, (ex_type_t)val[0], true, val[1] & 1, val[1] & 2,
                               (amqp_bytes_t){val + 6, al});
        x->delayed = (val[1] & 4) != 0;
        n++;
    }
    store_iter_free(it);
    return n;
}

static int recover_queues(broker_t *b)
{
    uint8_t prefix = KEY_QUEUE;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *vhn, *name;
        size_t vhl, nl;
        const uint8_t *val = v;
        if (!split_name_key(k, kl, &vhn, &vhl, &name, &nl) || vl < 13) continue;
        uint32_t al = be32(val + 9);
        if (13 + (size_t)al > vl) continue;
        vhost_t *vh = vhost_for(b, vhn, vhl);
        queue_t *q = q_new(vh, name, nl, true, false, val[8] & 1, 0, (amqp_bytes_t){val + 13, al});
        q->uid = store_get_be64(val);
        if (q->uid >= b->next_queue_uid) b->next_queue_uid = q->uid + 1;
        if (vl >= 13 + (size_t)al + 4) q->home = be32(val + 13 + al);
        if (qq_args_quorum(&q->args)) { /* [u8 n][n x u32 members] after the home */
            size_t at = 13 + (size_t)al + 4;
            size_t nm = vl > at ? val[at] : 0;
            if (at + 1 + 4 * nm > vl) nm = 0;
            qq_attach(q, (amqp_bytes_t){val + at + 1, 4 * nm});
        }
        n++;
    }
    store_iter_free(it);
    return n;
}

static const char *next_field(const char *p, const char *end, size_t *len)
{
    const char *z = memchr(p, 0, (size_t)(end - p));
    if (!z) return NULL;
    *len = (size_t)(z - p);
    return z + 1;
}

static int recover_bindings(broker_t *b)
{
    uint8_t prefix = KEY_BINDING;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *p = (const char *)k + 1, *end = (const char *)k + kl;
        const char *vhn = p, *src, *dst, *key;
        size_t vhl, sl, dl, keyl;
        if (!(p = next_field(p, end, &vhl))) continue;
        src = p;
        if (!(p = next_field(p, end, &sl))) continue;
        if (p >= end) continue;
        bool to_queue = *p == 'q';
        dst = p + 1;
        if (!(p = next_field(dst, end, &dl))) continue;
        key = p;
        if (!(p = next_field(p, end, &keyl))) continue;
        amqp_bytes_t args = {(const uint8_t *)p, (size_t)(end - p)};
        vhost_t *vh = br_vhost(b, vhn, vhl);
        exchange_t *x = vh ? br_exchange(vh, src, sl) : NULL;
        void *d = !vh ? NULL : to_queue ? (void *)br_queue(vh, dst, dl) : (void *)br_exchange(vh, dst, dl);
        if (!x || !d) {
            store_del(b->store, k, kl);
            continue;
        }
        if (!ex_find_binding(x, to_queue, d, key, keyl, args)) ex_binding_add(x, to_queue, d, key, keyl, args, false);
        n++;
    }
    store_iter_free(it);
    return n;
}

/* Queues by uid, for replaying the index. */
static queue_t *queue_by_uid(dict_t *by_uid, uint64_t uid) { return dict_get(by_uid, &uid, sizeof uid); }

static uint64_t recover_messages(broker_t *b)
{
    dict_t msgs, by_uid;
    dict_init(&msgs);
    dict_init(&by_uid);
    size_t pos = 0;
    void *v;
    while (dict_next(&b->vhosts, &pos, NULL, NULL, &v)) {
        size_t qp = 0;
        void *qv;
        while (dict_next(&((vhost_t *)v)->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            dict_set(&by_uid, &q->uid, sizeof q->uid, q);
        }
    }
    uint8_t prefix = KEY_MSG;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *val;
    size_t kl, vl;
    while (store_iter_next(it, &k, &kl, &val, &vl)) {
        if (kl != 9) continue;
        uint64_t id = store_get_be64((const uint8_t *)k + 1);
        msg_t *m = msg_from_record(val, vl, false);
        if (!m) continue;
        m->id = id;
        m->persistent = true;
        m->stored = true;
        if (id >= b->next_msg_id) b->next_msg_id = id + 1;
        dict_set(&msgs, &id, sizeof id, m);
    }
    store_iter_free(it);

    uint64_t restored = 0;
    prefix = KEY_QINDEX;
    it = store_iter_prefix(b->store, &prefix, 1);
    while (store_iter_next(it, &k, &kl, &val, &vl)) {
        if (kl != 17 || vl != 8) continue;
        uint64_t uid = store_get_be64((const uint8_t *)k + 1);
        uint64_t id = store_get_be64(val);
        queue_t *q = queue_by_uid(&by_uid, uid);
        msg_t *m = dict_get(&msgs, &id, sizeof id);
        if (!q || !m) {
            store_del(b->store, k, kl);
            continue;
        }
        /* Re-enqueue under a fresh index entry in the same order; drop the old one. */
        store_del(b->store, k, kl);
        uint32_t before = m->durable_refs;
        q_publish(q, m);
        (void)before;
        q->stat_publish--;
        restored++;
    }
    store_iter_free(it);

    /* Delayed messages: 'D' due seq -> vhost \0 msg id. */
    prefix = KEY_DELAY;
    it = store_iter_prefix(b->store, &prefix, 1);
    while (store_iter_next(it, &k, &kl, &val, &vl)) {
        const uint8_t *vv = val;
        const uint8_t *z = vl >= 9 ? memchr(vv, 0, vl - 8) : NULL;
        msg_t *m = NULL;
        if (kl == 17 && z && (size_t)(vv + vl - (z + 1)) == 8) {
            uint64_t id = store_get_be64(z + 1);
            m = dict_get(&msgs, &id, sizeof id);
        }
        vhost_t *vh = m ? vhost_for(b, (const char *)vv, (size_t)(z - vv)) : NULL;
        if (!m || !vh) {
            store_del(b->store, k, kl);
            continue;
        }
        m->durable_refs++;
        br_delay_restore(b, vh, m, (int64_t)store_get_be64((const uint8_t *)k + 1), store_get_be64((const uint8_t *)k + 9));
        restored++;
    }
    store_iter_free(it);

    pos = 0;
    while (dict_next(&msgs, &pos, NULL, NULL, &v)) {
        msg_t *m = v;
        /* q_publish counted one durable ref per index entry it rewrote. */
        if (m->durable_refs == 0) {
            uint8_t key[9];
            key[0] = KEY_MSG;
            store_put_be64(key + 1, m->id);
            store_del(b->store, key, sizeof key);
        }
        msg_unref(m);
    }
    dict_free(&msgs);
    dict_free(&by_uid);
    return restored;
}

int broker_recover(broker_t *b, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    if (!b->store) return 0;
    recover_vhosts(b);
    br_vhosts_recover_metadata(b); /* vhost metadata and runtime parameters (limits) */
    int nu = recover_users(b);
    tperm_recover(b); /* after the users and vhosts they belong to */
    br_policies_recover(b); /* before the queues, which pick their policy when created */
    int nx = recover_exchanges(b);
    int nq = recover_queues(b);
    int nb = recover_bindings(b);
    uint64_t nm = recover_messages(b);
    store_flush_sync(b->store);
    log_info("recovered %d users, %d exchanges, %d queues, %d bindings, %llu messages", nu, nx, nq, nb,
             (unsigned long long)nm);
    return 0;
}
