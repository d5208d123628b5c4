/* policy.c - policies and operator policies, as RabbitMQ defines them.
 *
 * A policy has a name, a regex pattern matched (unanchored) against queue or exchange names, an
 * apply-to (queues, exchanges, all), a priority and a definition (keys such as message-ttl,
 * max-length, dead-letter-exchange, alternate-exchange). For each object the matching policy
 * with the highest priority is in effect (one user policy and one operator policy at most).
 * How a policy combines with the object's own x-arguments is decided where the setting is used
 * (queue.c: numeric limits take the lowest value, other keys prefer the argument), following
 * RabbitMQ's resolution rules. Setting or clearing a policy re-applies them to every queue.
 *
 * Durability: each policy is an 'O' record (vhost, kind, name -> pattern, apply-to, priority,
 * definition), written when set and deleted when cleared, so policies set at run time (warrenctl
 * set_policy, replicated through the metadata log in a cluster) survive restarts. */
#include "broker/broker.h"
#include "broker/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void policy_free(policy_t *p)
{
    free(p->name);
    free(p->pattern_text);
    auth_regex_free(p->pattern);
    amqp_table_free(&p->def);
    free((void *)p->def_raw.ptr);
    free(p);
}

static ptrvec_t *policy_list(vhost_t *vh, bool is_operator)
{
    return is_operator ? &vh->operator_policies : &vh->policies;
}

static void reapply_all(vhost_t *vh)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) q_apply_settings(v);
}

static policy_t *find(ptrvec_t *list, const char *name)
{
    for (size_t i = 0; i < list->n; i++)
        if (strcmp(((policy_t *)list->items[i])->name, name) == 0) return list->items[i];
    return NULL;
}

/* A policy object from its parts, validated; NULL with err (bad apply-to, pattern, definition). */
static policy_t *policy_build(const char *name, const char *pattern, const char *apply_to, int priority,
                              amqp_bytes_t definition, char *err, size_t errlen)
{
    apply_to_t at;
    if (!apply_to || !*apply_to || strcmp(apply_to, "all") == 0) at = APPLY_ALL;
    else if (strcmp(apply_to, "queues") == 0 || strcmp(apply_to, "classic_queues") == 0) at = APPLY_QUEUES;
    else if (strcmp(apply_to, "exchanges") == 0) at = APPLY_EXCHANGES;
    else {
        snprintf(err, errlen, "'%s' is not a valid apply-to value", apply_to);
        return NULL;
    }
    policy_t *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->pattern = auth_regex_compile(pattern, err, errlen);
    if (!p->pattern) {
        free(p);
        return NULL;
    }
    p->name = strdup(name);
    p->pattern_text = strdup(pattern);
    p->apply_to = at;
    p->priority = priority;
    if (definition.len) {
        uint8_t *copy = malloc(definition.len);
        if (!copy) abort();
        memcpy(copy, definition.ptr, definition.len);
        p->def_raw = (amqp_bytes_t){copy, definition.len};
        if (amqp_table_parse(p->def_raw, &p->def) != 0) {
            snprintf(err, errlen, "policy '%s': malformed definition", name);
            policy_free(p);
            return NULL;
        }
    }
    if (amqp_table_get(&p->def, "max-priority")) {
        /* As RabbitMQ: priorities are fixed at declare time, never by policy. */
        snprintf(err, errlen, "policy '%s': max-priority cannot be set by a policy", name);
        policy_free(p);
        return NULL;
    }
    return p;
}

int br_policy_check(const char *name, const char *pattern, const char *apply_to, amqp_bytes_t definition, char *err,
                    size_t errlen)
{
    policy_t *p = policy_build(name, pattern, apply_to, 0, definition, err, errlen);
    if (!p) return -1;
    policy_free(p);
    return 0;
}

static const char *apply_to_name(apply_to_t at)
{
    return at == APPLY_QUEUES ? "queues" : at == APPLY_EXCHANGES ? "exchanges" : "all";
}

/* Store key of a policy: 'O' vhost \0 kind ('p' policy, 'o' operator policy) name. */
static void policy_key(amqp_buf_t *key, const vhost_t *vh, bool is_operator, const char *name)
{
    amqp_buf_put_u8(key, KEY_POLICY);
    amqp_buf_append(key, vh->name, strlen(vh->name) + 1);
    amqp_buf_put_u8(key, is_operator ? 'o' : 'p');
    amqp_buf_append(key, name, strlen(name));
}

/* Record: [longstr pattern][shortstr apply-to][u32 priority (two's complement)][longstr definition]. */
static void policy_persist(const vhost_t *vh, bool is_operator, const policy_t *p)
{
    store_t *s = vh->broker->store;
    if (!s) return;
    amqp_buf_t key = {0}, val = {0};
    policy_key(&key, vh, is_operator, p->name);
    amqp_buf_put_longstr(&val, AMQP_BYTES_CSTR(p->pattern_text));
    amqp_buf_put_shortstr(&val, AMQP_BYTES_CSTR(apply_to_name(p->apply_to)));
    amqp_buf_put_u32(&val, (uint32_t)p->priority);
    amqp_buf_put_longstr(&val, p->def_raw);
    store_put(s, key.data, key.len, val.data, val.len);
    amqp_buf_free(&key);
    amqp_buf_free(&val);
}

static void policy_unpersist(const vhost_t *vh, bool is_operator, const char *name)
{
    store_t *s = vh->broker->store;
    if (!s) return;
    amqp_buf_t key = {0};
    policy_key(&key, vh, is_operator, name);
    store_del(s, key.data, key.len);
    amqp_buf_free(&key);
}

int br_policy_set(vhost_t *vh, bool is_operator, const char *name, const char *pattern, const char *apply_to,
                  int priority, amqp_bytes_t definition, char *err, size_t errlen)
{
    policy_t *p = policy_build(name, pattern, apply_to, priority, definition, err, errlen);
    if (!p) return -1;
    ptrvec_t *list = policy_list(vh, is_operator);
    policy_t *old = find(list, name);
    if (old) ptrvec_remove(list, old);
    ptrvec_push(list, p);
    reapply_all(vh); /* queues still point at the old one until re-applied */
    if (old) policy_free(old);
    policy_persist(vh, is_operator, p);
    return 0;
}

int br_policy_clear(vhost_t *vh, bool is_operator, const char *name)
{
    ptrvec_t *list = policy_list(vh, is_operator);
    policy_t *p = find(list, name);
    if (!p) return -1;
    ptrvec_remove(list, p);
    reapply_all(vh);
    policy_unpersist(vh, is_operator, name);
    policy_free(p);
    return 0;
}

void br_policies_delete_all(vhost_t *vh)
{
    for (int op = 0; op < 2; op++) {
        ptrvec_t *list = policy_list(vh, op);
        while (list->n) br_policy_clear(vh, op, ((policy_t *)list->items[list->n - 1])->name);
    }
}

int br_policies_recover(broker_t *b)
{
    if (!b->store) return 0;
    uint8_t prefix = KEY_POLICY;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    int n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *key = k;
        const char *z = memchr(key + 1, 0, kl - 1);
        if (!z || (size_t)(z + 2 - key) > kl) continue;
        vhost_t *vh = br_vhost(b, key + 1, (size_t)(z - key - 1));
        amqp_reader_t r = amqp_reader(v, vl);
        amqp_bytes_t pattern = amqp_read_longstr(&r), apply_to = amqp_read_shortstr(&r);
        int32_t priority = (int32_t)amqp_read_u32(&r);
        amqp_bytes_t def = amqp_read_longstr(&r);
        if (!vh || r.bad) continue;
        char *name = strndup(z + 2, kl - (size_t)(z + 2 - key));
        char *pat = strndup((const char *)pattern.ptr, pattern.len);
        char *at = strndup((const char *)apply_to.ptr, apply_to.len);
        char err[256];
        if (br_policy_set(vh, z[1] == 'o', name, pat, at, priority, def, err, sizeof err) == 0) n++;
        else log_warn("stored policy '%s' in vhost '%s' skipped: %s", name, vh->name, err);
        free(name);
        free(pat);
        free(at);
    }
    store_iter_free(it);
    return n;
}

const policy_t *br_policy_match(const vhost_t *vh, bool is_operator, bool is_queue, const char *name, size_t len)
{
    const ptrvec_t *list = is_operator ? &vh->operator_policies : &vh->policies;
    const policy_t *best = NULL;
    for (size_t i = 0; i < list->n; i++) {
        const policy_t *p = list->items[i];
        if (p->apply_to == (is_queue ? APPLY_EXCHANGES : APPLY_QUEUES)) continue;
        if (!auth_regex_match(p->pattern, name, len)) continue;
        if (!best || p->priority > best->priority) best = p;
    }
    return best;
}

const amqp_value_t *br_policy_value(const policy_t *p, const char *key)
{
    return p ? amqp_table_get(&p->def, key) : NULL;
}

void br_policies_free(vhost_t *vh)
{
    for (size_t i = 0; i < vh->policies.n; i++) policy_free(vh->policies.items[i]);
    for (size_t i = 0; i < vh->operator_policies.n; i++) policy_free(vh->operator_policies.items[i]);
    ptrvec_free(&vh->policies);
    ptrvec_free(&vh->operator_policies);
}
