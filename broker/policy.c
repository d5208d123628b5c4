/* policy.c - policies and operator policies, as RabbitMQ defines them.
 *
 * A policy has a name, a regex pattern matched (unanchored) against queue or exchange names, an
 * apply-to (queues, exchanges, all), a priority and a definition (keys such as message-ttl,
 * max-length, dead-letter-exchange, alternate-exchange). For each object the matching policy
 * with the highest priority is in effect (one user policy and one operator policy at most).
 * How a policy combines with the object's own x-arguments is decided where the setting is used
 * (queue.c: numeric limits take the lowest value, other keys prefer the argument), following
 * RabbitMQ's resolution rules. Setting or clearing a policy re-applies them to every queue. */
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

int br_policy_set(vhost_t *vh, bool is_operator, const char *name, const char *pattern, const char *apply_to,
                  int priority, amqp_bytes_t definition, char *err, size_t errlen)
{
    apply_to_t at;
    if (!apply_to || !*apply_to || strcmp(apply_to, "all") == 0) at = APPLY_ALL;
    else if (strcmp(apply_to, "queues") == 0 || strcmp(apply_to, "classic_queues") == 0) at = APPLY_QUEUES;
    else if (strcmp(apply_to, "exchanges") == 0) at = APPLY_EXCHANGES;
    else {
        snprintf(err, errlen, "'%s' is not a valid apply-to value", apply_to);
        return -1;
    }
    policy_t *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->pattern = auth_regex_compile(pattern, err, errlen);
    if (!p->pattern) {
        free(p);
        return -1;
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
            return -1;
        }
    }
    if (amqp_table_get(&p->def, "max-priority")) {
        /* As RabbitMQ: priorities are fixed at declare time, never by policy. */
        snprintf(err, errlen, "policy '%s': max-priority cannot be set by a policy", name);
        policy_free(p);
        return -1;
    }
    ptrvec_t *list = policy_list(vh, is_operator);
    policy_t *old = find(list, name);
    if (old) {
        ptrvec_remove(list, old);
        /* Queues still point at the old one until re-applied below. */
        ptrvec_push(list, p);
        reapply_all(vh);
        policy_free(old);
    } else {
        ptrvec_push(list, p);
        reapply_all(vh);
    }
    return 0;
}

int br_policy_clear(vhost_t *vh, bool is_operator, const char *name)
{
    ptrvec_t *list = policy_list(vh, is_operator);
    policy_t *p = find(list, name);
    if (!p) return -1;
    ptrvec_remove(list, p);
    reapply_all(vh);
    policy_free(p);
    return 0;
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
