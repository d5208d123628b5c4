/* api_bindings.c - bindings between one exchange and one queue or exchange:
 *   GET  /api/bindings/{vhost}/e/{source}/q|e/{destination}            the list
 *   POST /api/bindings/{vhost}/e/{source}/q|e/{destination}            bind (201, location)
 *   GET / DELETE .../{destination}/{properties_key}                    one binding
 *
 * A binding is named by its properties_key (json.c: the URL-encoded routing key, "~" when empty,
 * plus "~digest" of its arguments), as RabbitMQ names it; the location header of a 201 is that
 * key URL-encoded once more, relative to the list's path. A DELETE accepts the key in either
 * encoding. Binds and unbinds run like amqp091/channel.c's: br_bind / br_unbind with the user's
 * permissions; in a cluster a dry run first, then META_BIND / META_UNBIND through the log. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/admin.h"
#include "broker/meta.h"
#include "broker/topicperm.h"
#include "mgmt/internal.h"

struct ends {
    vhost_t *vh;
    const char *src, *dest;
    bool to_queue;
};

static struct ends ends_of(mgmt_req_t *r)
{
    struct ends e = {br_vhost(r->m->b, r->params[0], strlen(r->params[0])), r->params[1], r->params[2], false};
    e.to_queue = r->nsegs >= 6 && strcmp(r->segs[4], "q") == 0;
    if (strcmp(e.src, "amq.default") == 0) e.src = "";
    return e;
}

static bool dest_matches(const binding_t *bd, const struct ends *e)
{
    if (bd->dest_is_queue != e->to_queue) return false;
    const char *name = e->to_queue ? ((queue_t *)bd->dest)->name : ((exchange_t *)bd->dest)->name;
    return strcmp(name, e->dest) == 0;
}

/* The bindings between the two ends, as JSON objects (filtered from the vhost's list). */
static cJSON *between(const struct ends *e)
{
    cJSON *all = cJSON_CreateArray(), *out = cJSON_CreateArray();
    mgmt_json_bindings(all, e->vh);
    for (cJSON *b = all->child; b;) {
        cJSON *next = b->next;
        const cJSON *s = cJSON_GetObjectItem(b, "source"), *d = cJSON_GetObjectItem(b, "destination");
        const cJSON *t = cJSON_GetObjectItem(b, "destination_type");
        if (strcmp(s->valuestring, e->src) == 0 && strcmp(d->valuestring, e->dest) == 0 &&
            strcmp(t->valuestring, e->to_queue ? "queue" : "exchange") == 0)
            cJSON_AddItemToArray(out, cJSON_DetachItemViaPointer(all, b));
        b = next;
    }
    cJSON_Delete(all);
    return out;
}

/* Do both ends exist? Otherwise answers 404 as RabbitMQ does. */
static bool ends_exist(mgmt_req_t *r, const struct ends *e)
{
    char reason[700];
    if (!br_exchange(e->vh, e->src, strlen(e->src))) {
        snprintf(reason, sizeof reason, "no exchange '%s' in vhost '%s'", r->params[1], e->vh->name);
    } else if (e->to_queue ? !br_queue(e->vh, e->dest, strlen(e->dest)) : !br_exchange(e->vh, e->dest, strlen(e->dest))) {
        snprintf(reason, sizeof reason, "no %s '%s' in vhost '%s'", e->to_queue ? "queue" : "exchange", e->dest,
                 e->vh->name);
    } else {
        return true;
    }
    mgmt_reply_error(r, 404, "not_found", reason);
    return false;
}

void mgmt_get_bindings_between(mgmt_req_t *r)
{
    struct ends e = ends_of(r);
    if (!ends_exist(r, &e)) return;
    mgmt_reply_list(r, between(&e));
}

/* ---- bind ---- */

struct pending {
    mgmt_req_t *r;
    char location[6000]; /* destination (<= 700 bytes) / key encoded twice (<= 4800) */
};

static void bound(void *arg, const br_err_t *err)
{
    struct pending *p = arg;
    if (err) mgmt_reply_br_error(p->r, err);
    else mgmt_reply_created(p->r, p->location);
    free(p);
}

static void location_of(const struct ends *e, const char *key, amqp_bytes_t args, char *out, size_t cap)
{
    char pk[1600], enc[1600 * 3];
    mgmt_properties_key(key, strlen(key), args, pk, sizeof pk);
    mgmt_url_encode(pk, strlen(pk), enc, sizeof enc);
    snprintf(out, cap, "%.700s/%.4800s", e->dest, enc);
}

void mgmt_post_binding(mgmt_req_t *r)
{
    struct ends e = ends_of(r);
    if (!ends_exist(r, &e)) return;
    cJSON *body = r->body_len ? cJSON_ParseWithLength(r->body, r->body_len) : cJSON_CreateObject();
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "not_json");
    }
    const cJSON *rk = cJSON_GetObjectItemCaseSensitive(body, "routing_key");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(body, "arguments");
    const char *key = cJSON_IsString(rk) ? rk->valuestring : "";
    if ((rk && !cJSON_IsString(rk) && !cJSON_IsNull(rk)) || (a && !cJSON_IsObject(a) && !cJSON_IsNull(a)) ||
        strlen(key) > 255) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "routing_key must be a short string, arguments an object");
    }
    amqp_buf_t buf = {0};
    amqp_bytes_t args = cJSON_IsObject(a) && a->child ? definitions_json_table(&buf, a) : (amqp_bytes_t){0};
    broker_t *b = r->m->b;
    bool clustered = meta_clustered(b);
    br_err_t err;
    /* topic permissions: the key against the user's read pattern, as an AMQP bind is checked
     * (RabbitMQ 3.10.8's API answers a refusal with 401 "Access refused.") */
    exchange_t *src = br_exchange(e.vh, e.src, strlen(e.src));
    if (src && tperm_check_read(r->user, e.vh, src, key, strlen(key), &err)) {
        cJSON_Delete(body);
        amqp_buf_free(&buf);
        return mgmt_reply_error(r, 401, "not_authorised", "Access refused.");
    }
    if (clustered) meta_dry_begin(b);
    int rc = br_bind(e.vh, r->user, 0, e.to_queue, e.dest, strlen(e.dest), e.src, strlen(e.src), key, strlen(key), args,
                     &err);
    bool mutates = clustered && meta_dry_end(b);
    struct pending *p = malloc(sizeof *p);
    if (!p) abort();
    p->r = r;
    location_of(&e, key, args, p->location, sizeof p->location);
    if (rc) {
        free(p);
        mgmt_reply_br_error(r, &err);
    } else if (!mutates) {
        bound(p, NULL);
    } else {
        struct meta_cmd c = {.op = META_BIND, .flags = e.to_queue ? META_F_DEST_QUEUE : 0,
                             .vhost = AMQP_BYTES_CSTR(e.vh->name), .name = AMQP_BYTES_CSTR(e.dest),
                             .name2 = AMQP_BYTES_CSTR(e.src), .key = AMQP_BYTES_CSTR(key), .args = args};
        meta_submit(b, &c, bound, p);
    }
    amqp_buf_free(&buf);
    cJSON_Delete(body);
}

/* ---- one binding ---- */

/* The binding named by params[3] (its properties_key, in either encoding), or NULL. */
static binding_t *find_binding(mgmt_req_t *r, const struct ends *e)
{
    exchange_t *x = br_exchange(e->vh, e->src, strlen(e->src));
    const char *want = r->params[3];
    char alt[1600 * 3];
    mgmt_url_encode(want, strlen(want), alt, sizeof alt);
    for (size_t i = 0; x && i < x->bindings.n; i++) {
        binding_t *bd = x->bindings.items[i];
        if (!dest_matches(bd, e)) continue;
        char pk[1600];
        mgmt_properties_key(bd->key, bd->key_len, bd->args_raw, pk, sizeof pk);
        if (strcmp(pk, want) == 0 || strcmp(pk, alt) == 0) return bd;
    }
    return NULL;
}

void mgmt_get_binding(mgmt_req_t *r)
{
    struct ends e = ends_of(r);
    binding_t *bd = find_binding(r, &e);
    if (!bd) return mgmt_reply_not_found(r);
    char pk[1600];
    mgmt_properties_key(bd->key, bd->key_len, bd->args_raw, pk, sizeof pk);
    cJSON *list = between(&e), *found = NULL;
    for (cJSON *b = list->child; b && !found; b = b->next) {
        const cJSON *k = cJSON_GetObjectItem(b, "properties_key");
        if (cJSON_IsString(k) && strcmp(k->valuestring, pk) == 0) found = cJSON_DetachItemViaPointer(list, b);
    }
    cJSON_Delete(list);
    if (!found) return mgmt_reply_not_found(r);
    mgmt_reply_json(r, 200, found);
}

static void unbound(void *arg, const br_err_t *err)
{
    mgmt_req_t *r = arg;
    if (err) mgmt_reply_br_error(r, err);
    else mgmt_reply_status(r, 204);
}

void mgmt_delete_binding(mgmt_req_t *r)
{
    struct ends e = ends_of(r);
    binding_t *bd = find_binding(r, &e);
    if (!bd) return mgmt_reply_not_found(r);
    /* copies: the unbind frees the binding */
    size_t klen = bd->key_len;
    char *key = malloc(klen ? klen : 1);
    uint8_t *args = malloc(bd->args_raw.len ? bd->args_raw.len : 1);
    if (!key || !args) abort();
    if (klen) memcpy(key, bd->key, klen);
    if (bd->args_raw.len) memcpy(args, bd->args_raw.ptr, bd->args_raw.len);
    amqp_bytes_t a = {args, bd->args_raw.len};
    broker_t *b = r->m->b;
    bool clustered = meta_clustered(b);
    br_err_t err;
    exchange_t *src = br_exchange(e.vh, e.src, strlen(e.src));
    bool refused = src && tperm_check_read(r->user, e.vh, src, key, klen, &err); /* as for a bind */
    if (clustered && !refused) meta_dry_begin(b);
    int rc = refused ? 0 : br_unbind(e.vh, r->user, 0, e.to_queue, e.dest, strlen(e.dest), e.src, strlen(e.src), key,
                                     klen, a, &err);
    bool mutates = clustered && !refused && meta_dry_end(b);
    if (refused) {
        mgmt_reply_error(r, 401, "not_authorised", "Access refused.");
    } else if (rc) {
        mgmt_reply_br_error(r, &err);
    } else if (!mutates) {
        mgmt_reply_status(r, 204);
    } else {
        struct meta_cmd c = {.op = META_UNBIND, .flags = e.to_queue ? META_F_DEST_QUEUE : 0,
                             .vhost = AMQP_BYTES_CSTR(e.vh->name), .name = AMQP_BYTES_CSTR(e.dest),
                             .name2 = AMQP_BYTES_CSTR(e.src), .key = {(const uint8_t *)key, klen}, .args = a};
        meta_submit(b, &c, unbound, r);
    }
    free(key);
    free(args);
}
