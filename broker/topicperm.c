/* topicperm.c - topic permissions (see topicperm.h).
 *
 * Data: each user holds its topic permissions in u->topic_perms (tperm_t*, in the order they
 * were set; a user rarely has more than a few, so lookups are linear). A permission's patterns
 * are compiled once to reject bad syntax at set time; a pattern with "{username}" or "{vhost}"
 * is expanded and compiled again at check time (the names differ per user and vhost).
 *
 * Durability: every set writes its 'T' record and every clear deletes it, in the same store
 * batch as the metadata command's other effects (meta.c applies the commands); recovery reads
 * them back after users and vhosts. */
#include "broker/topicperm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/log.h"

/* ---- records ---- */

static void record_key(amqp_buf_t *key, const char *vhost, const char *user, const char *exchange)
{
    amqp_buf_put_u8(key, TPERM_KEY);
    amqp_buf_append(key, vhost, strlen(vhost) + 1);
    amqp_buf_append(key, user, strlen(user) + 1);
    amqp_buf_append(key, exchange, strlen(exchange));
}

static void put_str(amqp_buf_t *r, const char *s)
{
    size_t n = strlen(s) > 65535 ? 65535 : strlen(s);
    amqp_buf_put_u16(r, (uint16_t)n);
    if (n) amqp_buf_append(r, s, n);
}

static void persist(broker_t *b, const user_t *u, const tperm_t *p)
{
    if (!b->store) return;
    amqp_buf_t key = {0}, val = {0};
    record_key(&key, p->vhost, u->name, p->exchange);
    put_str(&val, p->write_text);
    put_str(&val, p->read_text);
    store_put(b->store, key.data, key.len, val.data, val.len);
    amqp_buf_free(&key);
    amqp_buf_free(&val);
}

static void unpersist(broker_t *b, const user_t *u, const tperm_t *p)
{
    if (!b->store) return;
    amqp_buf_t key = {0};
    record_key(&key, p->vhost, u->name, p->exchange);
    store_del(b->store, key.data, key.len);
    amqp_buf_free(&key);
}

/* ---- set, clear, free ---- */

static void tperm_free(tperm_t *p)
{
    auth_regex_free(p->write);
    auth_regex_free(p->read);
    free(p->vhost);
    free(p->exchange);
    free(p->write_text);
    free(p->read_text);
    free(p);
}

static char *str_dup(const char *s)
{
    char *d = strdup(s);
    if (!d) abort();
    return d;
}

int tperm_set(broker_t *b, user_t *u, const vhost_t *vh, const char *exchange, const char *write, const char *read,
              char *err, size_t errlen)
{
    tperm_t *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->write = auth_regex_compile(write, err, errlen);
    p->read = p->write ? auth_regex_compile(read, err, errlen) : NULL;
    if (!p->read) {
        tperm_free(p);
        return -1;
    }
    p->vhost = str_dup(vh->name);
    p->exchange = str_dup(exchange);
    p->write_text = str_dup(write);
    p->read_text = str_dup(read);
    tperm_clear(b, u, vh->name, exchange); /* its record is rewritten below */
    ptrvec_push(&u->topic_perms, p);
    persist(b, u, p);
    return 0;
}

size_t tperm_clear(broker_t *b, user_t *u, const char *vhost, const char *exchange)
{
    size_t n = 0;
    for (size_t i = 0; i < u->topic_perms.n;) {
        tperm_t *p = u->topic_perms.items[i];
        bool hit = (!vhost || strcmp(p->vhost, vhost) == 0) && (!exchange || strcmp(p->exchange, exchange) == 0);
        if (!hit) {
            i++;
            continue;
        }
        ptrvec_remove(&u->topic_perms, p);
        unpersist(b, u, p);
        tperm_free(p);
        n++;
    }
    return n;
}

void tperm_free_user(user_t *u)
{
    for (size_t i = 0; i < u->topic_perms.n; i++) tperm_free(u->topic_perms.items[i]);
    ptrvec_free(&u->topic_perms);
}

/* ---- reading ---- */

void tperm_each(const user_t *u, const char *vhost, void (*fn)(void *arg, const user_t *u, const tperm_t *p),
                void *arg)
{
    for (size_t i = 0; i < u->topic_perms.n; i++) {
        const tperm_t *p = u->topic_perms.items[i];
        if (!vhost || strcmp(p->vhost, vhost) == 0) fn(arg, u, p);
    }
}

size_t tperm_count(const user_t *u, const char *vhost)
{
    size_t n = 0;
    for (size_t i = 0; i < u->topic_perms.n; i++)
        n += !vhost || strcmp(((const tperm_t *)u->topic_perms.items[i])->vhost, vhost) == 0;
    return n;
}

/* ---- the check ---- */

/* pattern with {username} and {vhost} replaced (malloc'd), or NULL when it has neither. */
static char *expand(const char *pattern, const char *user, const char *vhost)
{
    if (!strstr(pattern, "{username}") && !strstr(pattern, "{vhost}")) return NULL;
    size_t cap = strlen(pattern) * (strlen(user) + strlen(vhost) + 2) + 1, n = 0;
    char *out = malloc(cap);
    if (!out) abort();
    for (const char *s = pattern; *s;) {
        const char *val = strncmp(s, "{username}", 10) == 0 ? user : strncmp(s, "{vhost}", 7) == 0 ? vhost : NULL;
        if (val) {
            n += (size_t)snprintf(out + n, cap - n, "%s", val);
            s += strncmp(s, "{username}", 10) == 0 ? 10 : 7;
        } else {
            out[n++] = *s++;
        }
    }
    out[n] = '\0';
    return out;
}

static bool allowed(const tperm_t *p, bool write, const user_t *u, const char *rk, size_t rklen)
{
    char *text = expand(write ? p->write_text : p->read_text, u->name, p->vhost);
    if (!text) return auth_regex_match(write ? p->write : p->read, rk, rklen);
    char err[256];
    auth_regex_t *re = auth_regex_compile(text, err, sizeof err);
    bool ok = re && auth_regex_match(re, rk, rklen);
    auth_regex_free(re);
    free(text);
    return ok;
}

static int check(const user_t *u, const vhost_t *vh, const exchange_t *x, bool write, const char *rk, size_t rklen,
                 br_err_t *err)
{
    if (!u || x->type != EX_TOPIC) return 0;
    for (size_t i = 0; i < u->topic_perms.n; i++) {
        const tperm_t *p = u->topic_perms.items[i];
        if (strcmp(p->vhost, vh->name) != 0 || strcmp(p->exchange, x->name) != 0) continue;
        if (allowed(p, write, u, rk, rklen)) return 0;
        return br_fail(err, BR_ACCESS_REFUSED,
                       "access to topic '%.*s' in exchange '%s' in vhost '%s' refused for user '%s'",
                       (int)rklen, rk, x->name, vh->name, u->name);
    }
    return 0;
}

int tperm_check_write(const user_t *u, const vhost_t *vh, const exchange_t *x, const char *rk, size_t rklen,
                      br_err_t *err)
{
    return check(u, vh, x, true, rk, rklen, err);
}

int tperm_check_read(const user_t *u, const vhost_t *vh, const exchange_t *x, const char *rk, size_t rklen,
                     br_err_t *err)
{
    return check(u, vh, x, false, rk, rklen, err);
}

/* ---- recovery ---- */

static char *get_str(const uint8_t **p, const uint8_t *end)
{
    if (end - *p < 2) return NULL;
    size_t n = amqp_get_u16(*p);
    if ((size_t)(end - *p - 2) < n) return NULL;
    char *s = strndup((const char *)*p + 2, n);
    if (!s) abort();
    *p += 2 + n;
    return s;
}

int tperm_recover(broker_t *b)
{
    if (!b->store) return 0;
    uint8_t prefix = TPERM_KEY;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *key = (const char *)k + 1, *end = (const char *)k + kl;
        const char *z1 = memchr(key, 0, (size_t)(end - key));
        const char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
        if (!z2) continue;
        vhost_t *vh = br_vhost(b, key, (size_t)(z1 - key));
        user_t *u = br_user(b, z1 + 1, (size_t)(z2 - z1 - 1));
        char *exchange = strndup(z2 + 1, (size_t)(end - z2 - 1));
        const uint8_t *p = v, *vend = p + vl;
        char *w = get_str(&p, vend), *r = get_str(&p, vend);
        char err[256];
        if (u && vh && exchange && w && r) {
            if (tperm_set(b, u, vh, exchange, w, r, err, sizeof err) == 0) n++;
            else log_warn("stored topic permissions of user '%s' skipped: %s", u->name, err);
        }
        free(exchange);
        free(w);
        free(r);
    }
    store_iter_free(it);
    return n;
}
