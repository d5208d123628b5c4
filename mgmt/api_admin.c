/* api_admin.c - users, vhosts (with their metadata), permissions and policies: reads and
 * writes (vhost limits and other runtime parameters: api_params.c).
 *
 * Writes are metadata commands (broker/meta.h: META_USER_*, META_VHOST_*, META_PERM_*,
 * META_POLICY_*), as warrenctl's admin commands are (broker/admin.c): what can be checked here
 * is checked first (RabbitMQ's status and text without a round trip), then meta_submit sends the
 * command through the metadata log in a cluster, or applies it at once on a single node; the
 * request is answered from its callback, once the change has applied on this node. Passwords
 * are hashed here (rabbit_password_hashing_sha256, random salt); only the hash travels.
 *
 * Status codes and texts follow RabbitMQ 3.10.8: PUT answers 201 when it created and 204 when
 * it replaced; DELETE 204, or 404 when there was nothing; a vhost's creator gets full
 * permissions on it; a PUT of a user without password and password_hash leaves it without a
 * password (no login). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/admin.h"
#include "broker/meta.h"
#include "mgmt/internal.h"

/* ---- submissions ---- */

struct pending {
    mgmt_req_t *r;
    int status;        /* the reply once applied */
    char *grant_vhost; /* PUT vhost: then give the requesting user full permissions on it */
};

static void submitted(void *arg, const br_err_t *err);

static void submit(mgmt_req_t *r, const struct meta_cmd *c, int status, const char *grant_vhost)
{
    struct pending *p = calloc(1, sizeof *p);
    if (!p) abort();
    p->r = r;
    p->status = status;
    if (grant_vhost && !(p->grant_vhost = strdup(grant_vhost))) abort();
    meta_submit(r->m->b, c, submitted, p);
}

static void submitted(void *arg, const br_err_t *err)
{
    struct pending *p = arg;
    if (err) {
        mgmt_reply_br_error(p->r, err);
    } else if (p->grant_vhost) {
        amqp_buf_t args = {0};
        struct meta_cmd c;
        meta_perm_cmd(&c, &args, p->grant_vhost, p->r->user->name, ".*", ".*", ".*");
        submit(p->r, &c, p->status, NULL);
        amqp_buf_free(&args);
    } else {
        mgmt_reply_status(p->r, p->status);
    }
    free(p->grant_vhost);
    free(p);
}

/* ---- request bodies ---- */

static const char *body_str(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "tags": a comma-separated string (3.x) or a list of strings (newer clients). */
static void body_tags(const cJSON *o, char *out, size_t cap)
{
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "tags");
    out[0] = '\0';
    if (cJSON_IsString(t)) {
        snprintf(out, cap, "%s", t->valuestring);
        return;
    }
    if (!cJSON_IsArray(t)) return;
    size_t n = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, t)
    {
        if (cJSON_IsString(e) && n < cap) n += (size_t)snprintf(out + n, cap - n, "%s%s", n ? "," : "", e->valuestring);
    }
}

static bool name_ok(mgmt_req_t *r, const char *name)
{
    if (*name && strlen(name) <= 255) return true;
    mgmt_reply_error(r, 400, "bad_request", "names must be 1 to 255 bytes long");
    return false;
}

/* ---- users ---- */

void mgmt_put_user(mgmt_req_t *r)
{
    const char *name = r->params[0];
    if (!name_ok(r, name)) return;
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const char *password = body_str(body, "password"), *given_hash = body_str(body, "password_hash");
    const char *alg_name = body_str(body, "hashing_algorithm");
    int alg = AUTH_HASH_SHA256;
    if (!password && given_hash && (alg = auth_hash_alg_parse(alg_name)) < 0) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "unknown hashing_algorithm");
    }
    char tags[1024];
    body_tags(body, tags, sizeof tags);
    char *hash = password ? auth_hash_password(AUTH_HASH_SHA256, password, strlen(password))
                          : strdup(given_hash ? given_hash : "");
    cJSON_Delete(body);
    if (!hash) return mgmt_reply_error(r, 500, "internal_server_error", "cannot hash the password");
    int status = br_user(r->m->b, name, strlen(name)) ? 204 : 201;
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_user_cmd(&c, &args, META_USER_PUT, name, hash, alg, tags);
    submit(r, &c, status, NULL);
    amqp_buf_free(&args);
    free(hash);
}

void mgmt_delete_user(mgmt_req_t *r)
{
    const char *name = r->params[0];
    if (!br_user(r->m->b, name, strlen(name))) return mgmt_reply_not_found(r);
    struct meta_cmd c = {.op = META_USER_DELETE, .name = AMQP_BYTES_CSTR(name)};
    submit(r, &c, 204, NULL);
}

/* ---- vhosts ---- */

/* The queue types a vhost may default to (RabbitMQ 4 refuses unknown ones: invalid_queue_type). */
static bool queue_type_ok(const char *t)
{
    return strcmp(t, "classic") == 0 || strcmp(t, "quorum") == 0;
}

/* PUT creates the vhost or updates its metadata, as RabbitMQ 4 does: description and tags are
 * replaced ("" when not given), default_queue_type only when given. */
void mgmt_put_vhost(mgmt_req_t *r)
{
    const char *name = r->params[0];
    if (!name_ok(r, name)) return;
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    char tags[1024];
    body_tags(body, tags, sizeof tags);
    const char *desc = body_str(body, "description"), *dqt = body_str(body, "default_queue_type");
    if (dqt && strcmp(dqt, "undefined") == 0) dqt = NULL; /* what GET shows for "none" */
    if (dqt && !queue_type_ok(dqt)) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "invalid_queue_type");
    }
    bool exists = br_vhost(r->m->b, name, strlen(name)) != NULL;
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_vhost_cmd(&c, &args, META_VHOST_SET, name, desc ? desc : "", tags, dqt);
    submit(r, &c, exists ? 204 : 201, exists ? NULL : name);
    amqp_buf_free(&args);
    cJSON_Delete(body);
}

void mgmt_delete_vhost(mgmt_req_t *r)
{
    const char *name = r->params[0];
    if (!br_vhost(r->m->b, name, strlen(name))) return mgmt_reply_not_found(r);
    struct meta_cmd c = {.op = META_VHOST_DELETE, .vhost = AMQP_BYTES_CSTR(name)};
    submit(r, &c, 204, NULL);
}

/* ---- permissions ---- */

static cJSON *permission_json(const char *vhost, const user_t *u, const perm_t *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "user", u->name);
    cJSON_AddStringToObject(o, "vhost", vhost);
    cJSON_AddStringToObject(o, "configure", auth_regex_pattern(p->configure));
    cJSON_AddStringToObject(o, "write", auth_regex_pattern(p->write));
    cJSON_AddStringToObject(o, "read", auth_regex_pattern(p->read));
    return o;
}

void mgmt_get_permission(mgmt_req_t *r)
{
    const char *vh = r->params[0];
    user_t *u = br_user(r->m->b, r->params[1], strlen(r->params[1]));
    perm_t *p = u ? dict_get(&u->perms, vh, strlen(vh)) : NULL;
    if (!p || !br_vhost(r->m->b, vh, strlen(vh))) return mgmt_reply_not_found(r);
    mgmt_reply_json(r, 200, permission_json(vh, u, p));
}

void mgmt_get_user_permissions(mgmt_req_t *r)
{
    user_t *u = br_user(r->m->b, r->params[0], strlen(r->params[0]));
    if (!u) return mgmt_reply_not_found(r);
    cJSON *arr = cJSON_CreateArray();
    size_t pos = 0;
    const char *vname;
    size_t vlen;
    void *pv;
    while (dict_next(&u->perms, &pos, &vname, &vlen, &pv)) {
        char *vn = strndup(vname, vlen);
        if (!vn) abort();
        cJSON_AddItemToArray(arr, permission_json(vn, u, pv));
        free(vn);
    }
    mgmt_reply_list(r, arr);
}

void mgmt_get_vhost_permissions(mgmt_req_t *r)
{
    const char *vh = r->params[0];
    if (!br_vhost(r->m->b, vh, strlen(vh))) return mgmt_reply_not_found(r);
    cJSON *arr = cJSON_CreateArray();
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->users, &pos, NULL, NULL, &v)) {
        user_t *u = v;
        perm_t *p = dict_get(&u->perms, vh, strlen(vh));
        if (p) cJSON_AddItemToArray(arr, permission_json(vh, u, p));
    }
    mgmt_reply_list(r, arr);
}

static bool regex_ok(mgmt_req_t *r, const char *pattern)
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

void mgmt_put_permission(mgmt_req_t *r)
{
    const char *vh = r->params[0], *user = r->params[1];
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const char *conf = body_str(body, "configure"), *wr = body_str(body, "write"), *rd = body_str(body, "read");
    if (!conf || !wr || !rd) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "configure, write and read are required");
    }
    user_t *u = br_user(r->m->b, user, strlen(user));
    if (!u || !br_vhost(r->m->b, vh, strlen(vh))) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "vhost_or_user_not_found");
    }
    if (regex_ok(r, conf) && regex_ok(r, wr) && regex_ok(r, rd)) {
        int status = dict_get(&u->perms, vh, strlen(vh)) ? 204 : 201;
        amqp_buf_t args = {0};
        struct meta_cmd c;
        meta_perm_cmd(&c, &args, vh, user, conf, wr, rd);
        submit(r, &c, status, NULL);
        amqp_buf_free(&args);
    }
    cJSON_Delete(body);
}

void mgmt_delete_permission(mgmt_req_t *r)
{
    const char *vh = r->params[0], *user = r->params[1];
    user_t *u = br_user(r->m->b, user, strlen(user));
    if (!u || !dict_get(&u->perms, vh, strlen(vh)) || !br_vhost(r->m->b, vh, strlen(vh)))
        return mgmt_reply_not_found(r);
    struct meta_cmd c = {.op = META_PERM_CLEAR, .vhost = AMQP_BYTES_CSTR(vh), .name = AMQP_BYTES_CSTR(user)};
    submit(r, &c, 204, NULL);
}

/* ---- policies ---- */

static const char *apply_to_name(apply_to_t a)
{
    return a == APPLY_QUEUES ? "queues" : a == APPLY_EXCHANGES ? "exchanges" : "all";
}

static cJSON *policy_json(const vhost_t *vh, const policy_t *p)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "vhost", vh->name);
    cJSON_AddStringToObject(o, "name", p->name);
    cJSON_AddStringToObject(o, "pattern", p->pattern_text);
    cJSON_AddStringToObject(o, "apply-to", apply_to_name(p->apply_to));
    cJSON_AddItemToObject(o, "definition", mgmt_json_table(&p->def));
    cJSON_AddNumberToObject(o, "priority", p->priority);
    return o;
}

static const policy_t *find_policy(const vhost_t *vh, const char *name)
{
    for (size_t i = 0; vh && i < vh->policies.n; i++) {
        const policy_t *p = vh->policies.items[i];
        if (strcmp(p->name, name) == 0) return p;
    }
    return NULL;
}

static void add_policies(cJSON *arr, const vhost_t *vh)
{
    for (size_t i = 0; i < vh->policies.n; i++) cJSON_AddItemToArray(arr, policy_json(vh, vh->policies.items[i]));
}

/* All policies: administrators and policymakers see those of their visible vhosts; other
 * users get none (as RabbitMQ 3.10.8 answers them). */
void mgmt_get_policies(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    if (r->params[0]) {
        add_policies(arr, br_vhost(r->m->b, r->params[0], strlen(r->params[0])));
    } else if (mgmt_user_has_tag(r->user, "administrator") || mgmt_user_has_tag(r->user, "policymaker")) {
        size_t pos = 0;
        void *v;
        while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v))
            if (mgmt_vhost_visible(r, v, false)) add_policies(arr, v);
    }
    mgmt_reply_list(r, arr);
}

void mgmt_get_policy(mgmt_req_t *r)
{
    const vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    const policy_t *p = find_policy(vh, r->params[1]);
    if (!p) return mgmt_reply_not_found(r);
    mgmt_reply_json(r, 200, policy_json(vh, p));
}

void mgmt_put_policy(mgmt_req_t *r)
{
    const char *vh = r->params[0], *name = r->params[1];
    if (!name_ok(r, name)) return;
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    const char *pattern = body_str(body, "pattern"), *apply_to = body_str(body, "apply-to");
    const cJSON *def = cJSON_GetObjectItemCaseSensitive(body, "definition");
    const cJSON *prio = cJSON_GetObjectItemCaseSensitive(body, "priority");
    if (!pattern || !cJSON_IsObject(def)) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "pattern and definition are required");
    }
    if (!def->child) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", "Validation failed\n\nno policy provided\n");
    }
    amqp_buf_t table = {0}, args = {0};
    amqp_bytes_t d = definitions_json_table(&table, def);
    char err[512];
    if (br_policy_check(name, pattern, apply_to ? apply_to : "all", d, err, sizeof err) != 0) {
        char reason[600];
        snprintf(reason, sizeof reason, "Validation failed\n\n%s\n", err);
        mgmt_reply_error(r, 400, "bad_request", reason);
    } else {
        int status = find_policy(br_vhost(r->m->b, vh, strlen(vh)), name) ? 204 : 201;
        struct meta_cmd c;
        meta_policy_cmd(&c, &args, vh, false, name, pattern, apply_to ? apply_to : "all",
                        cJSON_IsNumber(prio) ? prio->valueint : 0, d);
        submit(r, &c, status, NULL);
    }
    cJSON_Delete(body);
    amqp_buf_free(&table);
    amqp_buf_free(&args);
}

void mgmt_delete_policy(mgmt_req_t *r)
{
    const char *vh = r->params[0], *name = r->params[1];
    if (!find_policy(br_vhost(r->m->b, vh, strlen(vh)), name)) return mgmt_reply_not_found(r);
    struct meta_cmd c = {.op = META_POLICY_CLEAR, .vhost = AMQP_BYTES_CSTR(vh), .name = AMQP_BYTES_CSTR(name)};
    submit(r, &c, 204, NULL);
}

