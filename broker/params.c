/* params.c - runtime parameters: storage, validation, and the vhost limits they set.
 *
 * Role: the registry's store of RabbitMQ "parameters" (per vhost: component, name, value) and
 * "global_parameters" (name, value); see params.h. Only the vhost-limits component has an
 * effect: its value is read into vhost_t.max_connections / max_queues whenever it changes, so
 * the checks on the hot paths (connection.open, queue.declare) read two integers.
 *
 * Invariants: a vhost holds at most one parameter per (component, name), a broker one global
 * parameter per name; every change writes or deletes the matching record in the same store
 * batch (the metadata apply's), so recovery (rp_recover) rebuilds exactly the applied state.
 * Values are validated before they are submitted (rp_validate) and applied as given: apply is
 * deterministic, it only parses the JSON the command carries. */
#include "broker/params.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/log.h"

static char *xstrdup(const char *s)
{
    char *d = strdup(s ? s : "");
    if (!d) abort();
    return d;
}

static void param_free(rparam_t *p)
{
    free(p->component);
    free(p->name);
    free(p->value);
    free(p);
}

/* ---- vhost-limits ------------------------------------------------------------------------ */

static const char *const limit_keys[] = {"max-connections", "max-queues"};

static bool is_limit_key(const char *k)
{
    return strcmp(k, limit_keys[0]) == 0 || strcmp(k, limit_keys[1]) == 0;
}

static bool json_integer(const cJSON *j, long long *out)
{
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || fabs(j->valuedouble) > 9e15) return false;
    *out = (long long)j->valuedouble;
    return true;
}

/* A JSON value the way RabbitMQ prints the Erlang term in its messages (<<"text">> for
 * strings). */
void rp_erl_term(const cJSON *j, char *out, size_t cap)
{
    if (cJSON_IsString(j)) {
        snprintf(out, cap, "<<\"%s\">>", j->valuestring);
        return;
    }
    char *text = cJSON_PrintUnformatted(j);
    snprintf(out, cap, "%s", text ? text : "undefined");
    free(text);
}

static int validate_limits(const char *name, const cJSON *v, char *err, size_t errlen)
{
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 0) return 0; /* [] : no limits (RabbitMQ's empty list) */
    if (!cJSON_IsObject(v)) return snprintf(err, errlen, "%s is not a JSON object", name), -1;
    char unknown[512] = "";
    size_t n = 0;
    for (const cJSON *c = v->child; c; c = c->next) {
        if (is_limit_key(c->string)) continue;
        char term[128];
        rp_erl_term(c, term, sizeof term);
        if (n < sizeof unknown)
            n += (size_t)snprintf(unknown + n, sizeof unknown - n, "%s{<<\"%s\">>,%s}", n ? "," : "", c->string, term);
    }
    if (n) return snprintf(err, errlen, "Unrecognised terms [%s] in %s", unknown, name), -1;
    for (const cJSON *c = v->child; c; c = c->next) {
        long long i;
        if (json_integer(c, &i)) continue;
        char term[128];
        rp_erl_term(c, term, sizeof term);
        return snprintf(err, errlen, "%s should be a number, actually was %s", c->string, term), -1;
    }
    return 0;
}

/* Reads the limits of a vhost-limits value into vh (absent or negative: no limit). */
static void apply_limits(vhost_t *vh, const char *value)
{
    vh->max_connections = vh->max_queues = BR_NO_LIMIT;
    cJSON *v = value ? cJSON_Parse(value) : NULL;
    long long i;
    if (json_integer(cJSON_GetObjectItemCaseSensitive(v, "max-connections"), &i) && i >= 0) vh->max_connections = i;
    if (json_integer(cJSON_GetObjectItemCaseSensitive(v, "max-queues"), &i) && i >= 0) vh->max_queues = i;
    cJSON_Delete(v);
}

static bool is_limits(const rparam_t *p)
{
    return p->component && strcmp(p->component, RP_VHOST_LIMITS) == 0 && strcmp(p->name, RP_LIMITS_NAME) == 0;
}

int rp_validate(const char *component, const char *name, const char *value, char *err, size_t errlen)
{
    cJSON *v = cJSON_Parse(value ? value : "");
    int rc = 0;
    if (!v) {
        snprintf(err, errlen, "value is not valid JSON");
        rc = -1;
    } else if (component && strcmp(component, RP_VHOST_LIMITS) == 0) rc = validate_limits(name, v, err, errlen);
    cJSON_Delete(v);
    return rc;
}

char *rp_limits_with(const char *current, const char *key, long long value, bool remove)
{
    cJSON *cur = current ? cJSON_Parse(current) : NULL;
    cJSON *out = cJSON_CreateObject();
    if (!remove) cJSON_AddNumberToObject(out, key, (double)value);
    for (const cJSON *c = cJSON_IsObject(cur) ? cur->child : NULL; c; c = c->next)
        if (strcmp(c->string, key) != 0) cJSON_AddItemToObject(out, c->string, cJSON_Duplicate(c, true));
    cJSON_Delete(cur);
    char *text = out->child ? cJSON_PrintUnformatted(out) : xstrdup("[]");
    cJSON_Delete(out);
    if (!text) abort();
    return text;
}

/* ---- records ----------------------------------------------------------------------------- */

static void param_key(amqp_buf_t *key, const char *vhost, const rparam_t *p)
{
    key->len = 0;
    if (!p->component) {
        amqp_buf_put_u8(key, KEY_GLOBAL_PARAM);
        amqp_buf_append(key, p->name, strlen(p->name));
        return;
    }
    amqp_buf_put_u8(key, KEY_PARAM);
    amqp_buf_append(key, vhost, strlen(vhost) + 1);
    amqp_buf_append(key, p->component, strlen(p->component) + 1);
    amqp_buf_append(key, p->name, strlen(p->name));
}

static void param_persist(broker_t *b, const char *vhost, const rparam_t *p, bool del)
{
    if (!b->store) return;
    amqp_buf_t key = {0};
    param_key(&key, vhost, p);
    if (del) store_del(b->store, key.data, key.len);
    else store_put(b->store, key.data, key.len, p->value, strlen(p->value));
    amqp_buf_free(&key);
}

/* ---- the lists --------------------------------------------------------------------------- */

static rparam_t *find_in(const ptrvec_t *list, const char *component, const char *name)
{
    for (size_t i = 0; i < list->n; i++) {
        rparam_t *p = list->items[i];
        bool same_comp = component ? p->component && strcmp(p->component, component) == 0 : !p->component;
        if (same_comp && strcmp(p->name, name) == 0) return p;
    }
    return NULL;
}

/* Adds or replaces; returns the parameter. */
static rparam_t *put_in(ptrvec_t *list, const char *component, const char *name, const char *value)
{
    rparam_t *p = find_in(list, component, name);
    if (!p) {
        p = calloc(1, sizeof *p);
        if (!p) abort();
        p->component = component ? xstrdup(component) : NULL;
        p->name = xstrdup(name);
        ptrvec_push(list, p);
    }
    free(p->value);
    p->value = xstrdup(value);
    return p;
}

const rparam_t *rp_find(const vhost_t *vh, const char *component, const char *name)
{
    return find_in(&vh->params, component, name);
}

int rp_set(vhost_t *vh, const char *component, const char *name, const char *value, char *err, size_t errlen)
{
    if (rp_validate(component, name, value, err, errlen) != 0) return -1;
    rparam_t *p = put_in(&vh->params, component, name, value);
    if (is_limits(p)) apply_limits(vh, p->value);
    param_persist(vh->broker, vh->name, p, false);
    return 0;
}

bool rp_clear(vhost_t *vh, const char *component, const char *name)
{
    rparam_t *p = find_in(&vh->params, component, name);
    if (!p) return false;
    ptrvec_remove(&vh->params, p);
    if (is_limits(p)) apply_limits(vh, NULL);
    param_persist(vh->broker, vh->name, p, true);
    param_free(p);
    return true;
}

void rp_delete_all(vhost_t *vh)
{
    for (size_t i = 0; i < vh->params.n; i++) {
        param_persist(vh->broker, vh->name, vh->params.items[i], true);
        param_free(vh->params.items[i]);
    }
    vh->params.n = 0;
    apply_limits(vh, NULL);
}

void rp_global_set(broker_t *b, const char *name, const char *value)
{
    param_persist(b, NULL, put_in(&b->global_params, NULL, name, value), false);
}

bool rp_global_clear(broker_t *b, const char *name)
{
    rparam_t *p = find_in(&b->global_params, NULL, name);
    if (!p) return false;
    ptrvec_remove(&b->global_params, p);
    param_persist(b, NULL, p, true);
    param_free(p);
    return true;
}

const rparam_t *rp_global_find(const broker_t *b, const char *name) { return find_in(&b->global_params, NULL, name); }

void rp_free_all(ptrvec_t *list)
{
    for (size_t i = 0; i < list->n; i++) param_free(list->items[i]);
    ptrvec_free(list);
}

/* ---- recovery ---------------------------------------------------------------------------- */

static void recover_vhost_params(broker_t *b)
{
    uint8_t prefix = KEY_PARAM;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    while (it && store_iter_next(it, &k, &kl, &v, &vl)) {
        const char *key = (const char *)k + 1, *end = (const char *)k + kl;
        const char *z1 = memchr(key, 0, (size_t)(end - key));
        const char *z2 = z1 ? memchr(z1 + 1, 0, (size_t)(end - z1 - 1)) : NULL;
        if (!z2) continue;
        char *comp = strndup(z1 + 1, (size_t)(z2 - z1 - 1)), *name = strndup(z2 + 1, (size_t)(end - z2 - 1));
        char *value = strndup(v, vl);
        vhost_t *vh = br_vhost(b, key, (size_t)(z1 - key));
        if (vh && comp && name && value) {
            rparam_t *p = put_in(&vh->params, comp, name, value);
            if (is_limits(p)) apply_limits(vh, p->value);
        }
        free(comp);
        free(name);
        free(value);
    }
    store_iter_free(it);
}

static void recover_global_params(broker_t *b)
{
    uint8_t prefix = KEY_GLOBAL_PARAM;
    store_iter_t *it = store_iter_prefix(b->store, &prefix, 1);
    const void *k, *v;
    size_t kl, vl;
    while (it && store_iter_next(it, &k, &kl, &v, &vl)) {
        char *name = strndup((const char *)k + 1, kl - 1), *value = strndup(v, vl);
        if (name && value) put_in(&b->global_params, NULL, name, value);
        free(name);
        free(value);
    }
    store_iter_free(it);
}

void rp_recover(broker_t *b)
{
    if (!b->store) return;
    recover_vhost_params(b);
    recover_global_params(b);
}
