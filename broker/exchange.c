/* exchange.c - exchanges, bindings and routing.
 *
 * Each exchange keeps the bindings whose source it is, plus a per-type index so routing does
 * not scan every binding: direct exchanges hash the routing key, topic exchanges use a trie
 * (topic.c), fanout and headers exchanges walk their bindings (headers matching in
 * headers_match.c). Exchange-to-exchange bindings are followed recursively; a route mark per
 * exchange and per queue (broker->route_gen) makes each exchange visited and each queue
 * chosen at most once per publish, which also stops binding cycles.
 *
 * Durable bindings (durable source and durable destination) are stored as 'B' records so they
 * survive restarts together with their exchanges and queues. */
#include "broker/broker.h"
#include "broker/headers_match.h"
#include "broker/log.h"
#include "broker/props.h"

#include <stdlib.h>
#include <string.h>

void ptrvec_push(ptrvec_t *v, void *p)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4;
        v->items = realloc(v->items, v->cap * sizeof *v->items);
        if (!v->items) abort();
    }
    v->items[v->n++] = p;
}

bool ptrvec_remove(ptrvec_t *v, void *p)
{
    for (size_t i = 0; i < v->n; i++) {
        if (v->items[i] != p) continue;
        memmove(&v->items[i], &v->items[i + 1], (v->n - i - 1) * sizeof *v->items);
        v->n--;
        return true;
    }
    return false;
}

void ptrvec_free(ptrvec_t *v)
{
    free(v->items);
    memset(v, 0, sizeof *v);
}

int ex_type_parse(const char *t, size_t len)
{
    static const struct { const char *name; ex_type_t type; } types[] = {
        {"direct", EX_DIRECT}, {"fanout", EX_FANOUT}, {"topic", EX_TOPIC}, {"headers", EX_HEADERS},
        {"x-delayed-message", EX_DELAYED},
    };
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i].name) == len && memcmp(types[i].name, t, len) == 0) return (int)types[i].type;
    return -1;
}

const char *ex_type_name(ex_type_t t)
{
    static const char *const names[] = {"direct", "fanout", "topic", "headers", "x-delayed-message"};
    return names[t];
}

exchange_t *ex_new(vhost_t *vh, const char *name, size_t len, ex_type_t type, bool durable, bool auto_delete,
                   bool internal, amqp_bytes_t args)
{
    exchange_t *x = calloc(1, sizeof *x);
    if (!x) abort();
    x->vh = vh;
    x->name = malloc(len + 1);
    if (!x->name) abort();
    memcpy(x->name, name, len);
    x->name[len] = '\0';
    x->name_len = len;
    x->type = type;
    x->durable = durable;
    x->auto_delete = auto_delete;
    x->internal = internal;
    if (args.len) {
        uint8_t *copy = malloc(args.len);
        if (!copy) abort();
        memcpy(copy, args.ptr, args.len);
        x->args_raw = (amqp_bytes_t){copy, args.len};
    }
    if (type == EX_DIRECT) dict_init(&x->direct);
    if (type == EX_TOPIC) x->trie = topic_trie_new();
    dict_set(&vh->exchanges, x->name, len, x);
    return x;
}

static void ex_free(exchange_t *x)
{
    if (x->type == EX_DIRECT) {
        size_t pos = 0;
        void *v;
        while (dict_next(&x->direct, &pos, NULL, NULL, &v)) {
            ptrvec_free(v);
            free(v);
        }
        dict_free(&x->direct);
    }
    if (x->trie) topic_trie_free(x->trie);
    ptrvec_free(&x->bindings);
    ptrvec_free(&x->incoming);
    free((void *)x->args_raw.ptr);
    free(x->name);
    free(x);
}

/* ---- persistence of exchanges and bindings ---- */

static uint8_t *name_key(uint8_t tag, const char *vh, const char *name, size_t nlen, size_t *klen)
{
    size_t vl = strlen(vh);
    *klen = 1 + vl + 1 + nlen;
    uint8_t *k = malloc(*klen);
    if (!k) abort();
    k[0] = tag;
    memcpy(k + 1, vh, vl);
    k[1 + vl] = 0;
    memcpy(k + 2 + vl, name, nlen);
    return k;
}

/* Exchange record: [u8 type][u8 flags][u32 args_len][args]. */
void ex_persist(exchange_t *x)
{
    store_t *s = x->vh->broker->store;
    if (!s || !x->durable) return;
    size_t klen;
    uint8_t *key = name_key(KEY_EXCHANGE, x->vh->name, x->name, x->name_len, &klen);
    size_t vlen = 6 + x->args_raw.len;
    uint8_t *val = malloc(vlen);
    if (!val) abort();
    val[0] = (uint8_t)x->type;
    val[1] = (uint8_t)((x->auto_delete ? 1 : 0) | (x->internal ? 2 : 0) | (x->delayed ? 4 : 0));
    uint32_t al = (uint32_t)x->args_raw.len;
    val[2] = (uint8_t)(al >> 24); val[3] = (uint8_t)(al >> 16); val[4] = (uint8_t)(al >> 8); val[5] = (uint8_t)al;
    if (al) memcpy(val + 6, x->args_raw.ptr, al);
    store_put(s, key, klen, val, vlen);
    free(key);
    free(val);
}

static bool binding_durable(const binding_t *bd)
{
    if (!bd->src->durable) return false;
    if (bd->dest_is_queue) return ((queue_t *)bd->dest)->durable;
    return ((exchange_t *)bd->dest)->durable;
}

static const char *dest_name(const binding_t *bd, size_t *len)
{
    if (bd->dest_is_queue) {
        *len = ((queue_t *)bd->dest)->name_len;
        return ((queue_t *)bd->dest)->name;
    }
    *len = ((exchange_t *)bd->dest)->name_len;
    return ((exchange_t *)bd->dest)->name;
}

/* Binding key: 'B' vhost \0 src \0 kind dest \0 rk \0 args. Value: empty. */
static uint8_t *binding_key(const binding_t *bd, size_t *klen)
{
    const char *vh = bd->src->vh->name;
    size_t vl = strlen(vh), dl;
    const char *dn = dest_name(bd, &dl);
    *klen = 1 + vl + 1 + bd->src->name_len + 1 + 1 + dl + 1 + bd->key_len + 1 + bd->args_raw.len;
    uint8_t *k = malloc(*klen), *p = k;
    if (!k) abort();
    *p++ = KEY_BINDING;
    memcpy(p, vh, vl); p += vl; *p++ = 0;
    memcpy(p, bd->src->name, bd->src->name_len); p += bd->src->name_len; *p++ = 0;
    *p++ = bd->dest_is_queue ? 'q' : 'e';
    memcpy(p, dn, dl); p += dl; *p++ = 0;
    memcpy(p, bd->key, bd->key_len); p += bd->key_len; *p++ = 0;
    if (bd->args_raw.len) memcpy(p, bd->args_raw.ptr, bd->args_raw.len);
    return k;
}

static void binding_store(const binding_t *bd, bool put)
{
    store_t *s = bd->src->vh->broker->store;
    if (!s || !binding_durable(bd)) return;
    size_t klen;
    uint8_t *key = binding_key(bd, &klen);
    if (put)
        store_put(s, key, klen, "", 0);
    else
        store_del(s, key, klen);
    free(key);
}

/* ---- bindings ---- */

static bool args_equal(amqp_bytes_t a, const amqp_table_t *ta, amqp_bytes_t b)
{
    if (a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0)) return true;
    amqp_table_t tb;
    if (amqp_table_parse(b, &tb) != 0) return false;
    bool eq = amqp_table_equal(ta, &tb);
    amqp_table_free(&tb);
    return eq;
}

binding_t *ex_find_binding(exchange_t *x, bool dest_is_queue, void *dest, const char *key, size_t klen,
                           amqp_bytes_t args)
{
    for (size_t i = 0; i < x->bindings.n; i++) {
        binding_t *bd = x->bindings.items[i];
        if (bd->dest != dest || bd->dest_is_queue != dest_is_queue) continue;
        if (bd->key_len != klen || memcmp(bd->key, key, klen) != 0) continue;
        if (!args_equal(bd->args_raw, &bd->args, args)) continue;
        return bd;
    }
    return NULL;
}

binding_t *ex_binding_add(exchange_t *x, bool dest_is_queue, void *dest, const char *key, size_t klen,
                          amqp_bytes_t args, bool persist)
{
    binding_t *bd = calloc(1, sizeof *bd);
    if (!bd) abort();
    bd->src = x;
    bd->dest_is_queue = dest_is_queue;
    bd->dest = dest;
    bd->key = malloc(klen + 1);
    if (!bd->key) abort();
    memcpy(bd->key, key, klen);
    bd->key[klen] = '\0';
    bd->key_len = klen;
    if (args.len) {
        uint8_t *copy = malloc(args.len);
        if (!copy) abort();
        memcpy(copy, args.ptr, args.len);
        bd->args_raw = (amqp_bytes_t){copy, args.len};
        if (amqp_table_parse(bd->args_raw, &bd->args) != 0) memset(&bd->args, 0, sizeof bd->args);
    }
    ptrvec_push(&x->bindings, bd);
    if (x->type == EX_DIRECT) {
        ptrvec_t *v = dict_get(&x->direct, key, klen);
        if (!v) {
            v = calloc(1, sizeof *v);
            if (!v) abort();
            dict_set(&x->direct, key, klen, v);
        }
        ptrvec_push(v, bd);
    } else if (x->type == EX_TOPIC) {
        topic_trie_add(x->trie, key, klen, bd);
    }
    if (dest_is_queue)
        ptrvec_push(&((queue_t *)dest)->bindings_in, bd);
    else
        ptrvec_push(&((exchange_t *)dest)->incoming, bd);
    if (persist) binding_store(bd, true);
    return bd;
}

void ex_delete(exchange_t *x);

/* Unlinks a binding from both ends, deletes its record, and auto-deletes the source exchange
 * when this was its last binding. */
void br_binding_remove(binding_t *bd)
{
    exchange_t *x = bd->src;
    binding_store(bd, false);
    ptrvec_remove(&x->bindings, bd);
    if (x->type == EX_DIRECT) {
        ptrvec_t *v = dict_get(&x->direct, bd->key, bd->key_len);
        if (v) {
            ptrvec_remove(v, bd);
            if (v->n == 0) {
                dict_del(&x->direct, bd->key, bd->key_len);
                ptrvec_free(v);
                free(v);
            }
        }
    } else if (x->type == EX_TOPIC) {
        topic_trie_remove(x->trie, bd->key, bd->key_len, bd);
    }
    if (bd->dest_is_queue)
        ptrvec_remove(&((queue_t *)bd->dest)->bindings_in, bd);
    else
        ptrvec_remove(&((exchange_t *)bd->dest)->incoming, bd);
    amqp_table_free(&bd->args);
    free((void *)bd->args_raw.ptr);
    free(bd->key);
    free(bd);
    if (x->auto_delete && x->bindings.n == 0 && !x->deleted) ex_delete(x);
}

void ex_delete(exchange_t *x)
{
    if (x->deleted) return;
    x->deleted = true;
    dict_del(&x->vh->exchanges, x->name, x->name_len);
    store_t *s = x->vh->broker->store;
    if (s && x->durable) {
        size_t klen;
        uint8_t *key = name_key(KEY_EXCHANGE, x->vh->name, x->name, x->name_len, &klen);
        store_del(s, key, klen);
        free(key);
    }
    /* Its own auto-delete must not fire while we tear its bindings down. */
    x->auto_delete = false;
    while (x->bindings.n) br_binding_remove(x->bindings.items[x->bindings.n - 1]);
    while (x->incoming.n) br_binding_remove(x->incoming.items[x->incoming.n - 1]);
    ex_free(x);
}

/* ---- routing ---- */

typedef struct {
    broker_t *b;
    msg_t *m;
    const char *rk; /* the routing key being routed (the message's own, then CC/BCC ones) */
    size_t rklen;
    ptrvec_t *out;
    ptrvec_t *exchanges; /* exchange destinations still to route through */
    amqp_table_t headers;
    bool headers_parsed, has_headers;
} route_ctx_t;

static void route_to(route_ctx_t *rc, binding_t *bd)
{
    if (bd->dest_is_queue) {
        queue_t *q = bd->dest;
        if (q->route_mark == rc->b->route_gen || q->deleted) return;
        q->route_mark = rc->b->route_gen;
        ptrvec_push(rc->out, q);
    } else {
        exchange_t *x = bd->dest;
        if (x->route_mark == rc->b->route_gen) return;
        x->route_mark = rc->b->route_gen;
        ptrvec_push(rc->exchanges, x);
    }
}

static void topic_hit(void *ctx, void *binding) { route_to(ctx, binding); }

static bool topic_matches_no_words(const char *key, size_t len)
{
    if (len == 0) return true;
    for (size_t i = 0; i < len; i += 2) {
        if (key[i] != '#') return false;
        if (i + 1 < len && key[i + 1] != '.') return false;
        if (i + 1 == len - 1) return false; /* trailing '.' */
    }
    return true;
}

static const amqp_table_t *message_headers(route_ctx_t *rc)
{
    if (!rc->headers_parsed) {
        rc->headers_parsed = true;
        props_core_t props;
        if (props_core_read(rc->m->props, rc->m->props_len, &props) == 0 && props.has_headers &&
            amqp_table_parse(props.headers, &rc->headers) == 0)
            rc->has_headers = true;
    }
    return rc->has_headers ? &rc->headers : NULL;
}

static void route_exchange(route_ctx_t *rc, exchange_t *x)
{
    const char *rk = rc->rk;
    size_t rklen = rc->rklen;
    if (x->name_len == 0) {
        /* The default exchange is implicitly bound to every queue by its name. */
        queue_t *q = br_queue(x->vh, rk, rklen);
        if (q && !q->deleted && q->route_mark != rc->b->route_gen) {
            q->route_mark = rc->b->route_gen;
            ptrvec_push(rc->out, q);
        }
        return;
    }
    switch (x->type) {
    case EX_DIRECT: {
        ptrvec_t *v = dict_get(&x->direct, rk, rklen);
        if (v)
            for (size_t i = 0; i < v->n; i++) route_to(rc, v->items[i]);
        break;
    }
    case EX_FANOUT:
        for (size_t i = 0; i < x->bindings.n; i++) route_to(rc, x->bindings.items[i]);
        break;
    case EX_TOPIC:
        if (rklen == 0) {
            /* RabbitMQ reads an empty routing key as zero words: only "" and all-'#' patterns
             * match it (the trie would see one empty word, which '*' matches). */
            for (size_t i = 0; i < x->bindings.n; i++) {
                binding_t *bd = x->bindings.items[i];
                if (topic_matches_no_words(bd->key, bd->key_len)) route_to(rc, bd);
            }
            break;
        }
        topic_trie_match(x->trie, rk, rklen, topic_hit, rc);
        break;
    case EX_HEADERS:
        for (size_t i = 0; i < x->bindings.n; i++) {
            binding_t *bd = x->bindings.items[i];
            if (headers_match(&bd->args, message_headers(rc))) route_to(rc, bd);
        }
        break;
    case EX_DELAYED: /* never an exchange's routing type */
        break;
    }
}

/* Routes one key from x through exchange-to-exchange bindings. Exchanges are visited once per
 * key (marks), queues chosen once per publish. */
static void route_key(route_ctx_t *rc, exchange_t *x, const char *rk, size_t rklen)
{
    broker_t *b = rc->b;
    ptrvec_t pending = {0};
    rc->exchanges = &pending;
    rc->rk = rk;
    rc->rklen = rklen;
    /* Exchanges get a fresh mark per key; queues keep the publish-wide one. */
    b->route_gen++;
    uint64_t xgen = b->route_gen;
    for (size_t i = 0; i < rc->out->n; i++) ((queue_t *)rc->out->items[i])->route_mark = xgen;
    x->route_mark = xgen;
    route_exchange(rc, x);
    for (size_t i = 0; i < pending.n; i++) route_exchange(rc, pending.items[i]);
    ptrvec_free(&pending);
}

/* Sender-selected distribution: the longstr entries of the CC and BCC header arrays. */
/* Cheap pre-check on the raw property bytes: a table key is a shortstr, so the header can only
 * be present if its length byte and name appear. Saves parsing headers of every message. */
static bool props_may_have_key(const msg_t *m, const char *key)
{
    char pat[8];
    size_t n = strlen(key);
    pat[0] = (char)n;
    memcpy(pat + 1, key, n);
    return memmem(m->props, m->props_len, pat, n + 1) != NULL;
}

static void route_cc(route_ctx_t *rc, exchange_t *x, const char *header)
{
    if (!props_may_have_key(rc->m, header)) return;
    const amqp_table_t *h = message_headers(rc);
    const amqp_value_t *v = h ? amqp_table_get(h, header) : NULL;
    if (!v || v->type != 'A') return;
    for (size_t i = 0; i < v->v.array.n; i++) {
        const amqp_value_t *k = &v->v.array.items[i];
        if (k->type == 'S') route_key(rc, x, (const char *)k->v.str.ptr, k->v.str.len);
    }
}

/* The alternate exchange: the exchange's argument, else its policy's alternate-exchange. */
/* BCC keys kept inside the message after its header was stripped (see msg_new_with_bcc). */
static void route_kept_bcc(route_ctx_t *rc, exchange_t *x)
{
    const uint8_t *p = msg_bcc(rc->m), *end = p + rc->m->bcc_len;
    while (end - p >= 5 && p[0] == 'S') {
        uint32_t n = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
        if ((size_t)(end - p - 5) < n) break;
        route_key(rc, x, (const char *)p + 5, n);
        p += 5 + n;
    }
}

static exchange_t *alternate_of(exchange_t *x)
{
    amqp_table_t t = {0};
    if (x->args_raw.len && amqp_table_parse(x->args_raw, &t) != 0) return NULL;
    const amqp_value_t *v = amqp_table_get(&t, "alternate-exchange");
    if (!v) v = br_policy_value(br_policy_match(x->vh, false, false, x->name, x->name_len), "alternate-exchange");
    exchange_t *ae = NULL;
    if (v && v->type == 'S') ae = br_exchange(x->vh, (const char *)v->v.str.ptr, v->v.str.len);
    amqp_table_free(&t);
    return ae;
}

void br_route(exchange_t *x, msg_t *m, ptrvec_t *out)
{
    broker_t *b = x->vh->broker;
    route_ctx_t rc = {.b = b, .m = m, .out = out};
    /* Follow alternate exchanges while nothing routes, at most a few hops (loops stop too). */
    for (int hop = 0; x && hop < 8; hop++) {
        route_key(&rc, x, m->rk, m->rk_len);
        route_cc(&rc, x, "CC");
        route_cc(&rc, x, "BCC");
        route_kept_bcc(&rc, x);
        if (out->n) break;
        x = alternate_of(x);
    }
    if (rc.has_headers) amqp_table_free(&rc.headers);
}

msg_t *br_strip_bcc(msg_t *m)
{
    if (!props_may_have_key(m, "BCC")) return NULL;
    props_core_t p;
    if (props_core_read(m->props, m->props_len, &p) != 0 || !p.has_headers) return NULL;
    amqp_table_t t;
    if (amqp_table_parse(p.headers, &t) != 0) return NULL;
    msg_t *nm = NULL;
    const amqp_value_t *bcc = amqp_table_get(&t, "BCC");
    if (bcc) {
        amqp_buf_t h = {0}, props = {0}, keys = {0};
        if (bcc->type == 'A')
            for (size_t i = 0; i < bcc->v.array.n; i++)
                if (bcc->v.array.items[i].type == 'S') amqp_value_encode(&keys, &bcc->v.array.items[i]);
        size_t pos = amqp_table_open(&h);
        for (size_t i = 0; i < t.n; i++) {
            if (amqp_bytes_eq_cstr(t.fields[i].key, "BCC")) continue;
            amqp_buf_put_shortstr(&h, t.fields[i].key);
            amqp_value_encode(&h, &t.fields[i].value);
        }
        amqp_table_close(&h, pos);
        amqp_bytes_t hb = {h.data + 4, h.len - 4};
        if (props_rewrite(m->props, m->props_len, &hb, false, false, &props) == 0) {
            nm = msg_new_with_bcc(m->exchange, m->exchange_len, m->rk, m->rk_len, props.data, props.len, m->body_len,
                                  keys.data, keys.len);
            if (m->body_len) memcpy(nm->body, m->body, m->body_len);
            nm->id = m->id;
            nm->persistent = m->persistent;
            nm->priority = m->priority;
        }
        amqp_buf_free(&h);
        amqp_buf_free(&props);
        amqp_buf_free(&keys);
    }
    amqp_table_free(&t);
    return nm;
}
