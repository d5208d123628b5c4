/* api_topic.c - topic permissions: GET /api/topic-permissions, GET/PUT/DELETE
 * /api/topic-permissions/{vhost}/{user}, GET /api/users/{user}/topic-permissions and
 * /api/vhosts/{vhost}/topic-permissions (administrators only, as RabbitMQ).
 *
 * Reads come from this node's registry (broker/topicperm.h). Writes are metadata commands
 * (META_TOPIC_PERM_SET / _CLEAR) through meta_submit, answered once applied on this node, like
 * the permissions endpoints (api_admin.c). A PUT sets the permission of one exchange
 * ({"exchange", "write", "read"}; 201 when the user had none in the vhost, else 204, as
 * RabbitMQ 3.10.8 answers); a DELETE clears all of the user's in the vhost. Objects are
 * {user, vhost, exchange, write, read}; the per-user/vhost GET answers a list. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/meta.h"
#include "broker/topicperm.h"
#include "mgmt/internal.h"

static void add_one(void *arg, const user_t *u, const tperm_t *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user", u->name);
    cJSON_AddStringToObject(o, "vhost", p->vhost);
    cJSON_AddStringToObject(o, "exchange", p->exchange);
    cJSON_AddStringToObject(o, "write", p->write_text);
    cJSON_AddStringToObject(o, "read", p->read_text);
    cJSON_AddItemToArray(arg, o);
}

/* Every user's topic permissions (vhost NULL: in every vhost) into a new array. */
static cJSON *all_json(broker_t *b, const char *vhost, const user_t *only)
{
    cJSON *arr = cJSON_CreateArray();
    size_t pos = 0;
    void *v;
    while (dict_next(&b->users, &pos, NULL, NULL, &v))
        if (!only || v == only) tperm_each(v, vhost, add_one, arr);
    return arr;
}

void mgmt_get_topic_permissions(mgmt_req_t *r) { mgmt_reply_list(r, all_json(r->m->b, NULL, NULL)); }

void mgmt_get_user_topic_permissions(mgmt_req_t *r)
{
    user_t *u = br_user(r->m->b, r->params[0], strlen(r->params[0]));
    if (!u) return mgmt_reply_not_found(r);
    mgmt_reply_list(r, all_json(r->m->b, NULL, u));
}

void mgmt_get_vhost_topic_permissions(mgmt_req_t *r) { mgmt_reply_list(r, all_json(r->m->b, r->params[0], NULL)); }

void mgmt_get_topic_permission(mgmt_req_t *r)
{
    user_t *u = br_user(r->m->b, r->params[1], strlen(r->params[1]));
    if (!u || !tperm_count(u, r->params[0])) return mgmt_reply_not_found(r);
    mgmt_reply_list(r, all_json(r->m->b, r->params[0], u));
}

/* ---- writes ---- */

static const char *body_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool pattern_ok(mgmt_req_t *r, const char *pattern)
{
    char err[256];
    auth_regex_t *re = auth_regex_compile(pattern, err, sizeof err);
    if (re) {
        auth_regex_free(re);
        return true;
    }
    char reason[400];
    snprintf(reason, sizeof reason, "invalid regular expression '%s': %s", pattern, err);
    mgmt_reply_error(r, 400, "bad_request", reason);
    return false;
}

void mgmt_put_topic_permission(mgmt_req_t *r)
{
    const char *vh = r->params[0], *user = r->params[1];
    cJSON *body = r->body_len ? cJSON_ParseWithLength(r->body, r->body_len) : NULL;
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "not_json");
    }
    const char *exchange = body_str(body, "exchange"), *wr = body_str(body, "write"), *rd = body_str(body, "read");
    user_t *u = br_user(r->m->b, user, strlen(user));
    if (!exchange || !wr || !rd) {
        mgmt_reply_error(r, 400, "bad_request", !exchange ? "[{key_missing,exchange}]" : !wr ? "[{key_missing,write}]"
                                                                                   : "[{key_missing,read}]");
    } else if (!u || !br_vhost(r->m->b, vh, strlen(vh))) {
        mgmt_reply_error(r, 400, "bad_request", "vhost_or_user_not_found");
    } else if (pattern_ok(r, wr) && pattern_ok(r, rd)) {
        amqp_buf_t args = {0};
        struct meta_cmd c;
        meta_topic_perm_cmd(&c, &args, vh, user, exchange, wr, rd);
        mgmt_submit(r, &c, tperm_count(u, vh) ? 204 : 201); /* as RabbitMQ: 201 for the user's first in vh */
        amqp_buf_free(&args);
    }
    cJSON_Delete(body);
}

void mgmt_delete_topic_permission(mgmt_req_t *r)
{
    const char *vh = r->params[0], *user = r->params[1];
    user_t *u = br_user(r->m->b, user, strlen(user));
    if (!u || !tperm_count(u, vh) || !br_vhost(r->m->b, vh, strlen(vh))) return mgmt_reply_not_found(r);
    struct meta_cmd c = {.op = META_TOPIC_PERM_CLEAR, .vhost = AMQP_BYTES_CSTR(vh), .name = AMQP_BYTES_CSTR(user)};
    mgmt_submit(r, &c, 204);
}
