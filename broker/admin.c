/* admin.c - warrenctl's admin commands on the node (see admin.h).
 *
 * Data flow: cluster.c hands every "admin.*" call to admin_call. A list command is answered at
 * once from this node's applied registry (as RabbitMQ 4 serves reads from its local Khepri copy).
 * A change is checked against the local registry first, for RabbitMQ's error without a round
 * trip; then it becomes one metadata command, goes through meta_submit (the metadata Raft group
 * when clustered, applied at once otherwise), and the call is answered from the submission's
 * callback, i.e. once the change has applied on this node, with the apply's outcome. The apply
 * itself re-checks what the registry decides (a user that exists, a vhost that is gone), so two
 * nodes racing on the same name get one success and one error, the same on every node.
 *
 * Replies: status 0 with a JSON payload, or status = the AMQP-style code (403, 404, 406, 541...)
 * with the error text, which warrenctl prints.
 *
 * Invariant: a password never leaves this file in clear: it is hashed here and only the hash is
 * put in the command. */
#include "broker/admin.h"
#include "broker/admin_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "broker/cluster.h"
#include "broker/log.h"
#include "broker/meta.h"
#include "broker/params.h"
#include "broker/qq.h"

/* A change waiting for its metadata command to apply. */
struct pending {
    struct admin *a;
    struct peer_reply_to to;
};

void admin_reply_json(struct admin *a, const struct peer_reply_to *to, cJSON *payload)
{
    char *text = cJSON_PrintUnformatted(payload);
    cJSON_Delete(payload);
    if (text) peer_reply(cl_mesh(a->c), to, 0, NULL, text, strlen(text));
    else peer_reply(cl_mesh(a->c), to, BR_INTERNAL_ERROR, "out of memory", NULL, 0);
    free(text);
}

void admin_reply_error(struct admin *a, const struct peer_reply_to *to, int code, const char *fmt, ...)
{
    char text[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    peer_reply(cl_mesh(a->c), to, code, text, NULL, 0);
}

static void submitted(void *arg, const br_err_t *err)
{
    struct pending *p = arg;
    if (err) admin_reply_error(p->a, &p->to, err->code ? err->code : BR_INTERNAL_ERROR, "%s", err->text);
    else {
        cJSON *ok = cJSON_CreateObject();
        cJSON_AddStringToObject(ok, "result", "ok");
        admin_reply_json(p->a, &p->to, ok);
    }
    free(p);
}

void admin_submit(struct admin *a, const struct peer_reply_to *to, const struct meta_cmd *c)
{
    struct pending *p = malloc(sizeof *p);
    if (!p) abort();
    p->a = a;
    p->to = *to;
    meta_submit(a->b, c, submitted, p);
}

/* ---- request fields ------------------------------------------------------------------------- */

const char *admin_field(const cJSON *req, const char *key, const char *dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(req, key);
    return cJSON_IsString(j) ? j->valuestring : dflt;
}

static bool too_long(const char *s) { return strlen(s) > 255; } /* names are AMQP shortstrs */

/* ---- vhosts --------------------------------------------------------------------------------- */

static void add_vhost(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "");
    if (!*vh || too_long(vh)) return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "invalid vhost name \"%s\"", vh);
    if (br_vhost(a->b, vh, strlen(vh)))
        return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "Virtual host \"%s\" already exists", vh);
    struct meta_cmd c = {.op = META_VHOST_ADD, .vhost = AMQP_BYTES_CSTR(vh)};
    admin_submit(a, to, &c);
}

/* set_vhost_limits: the whole vhost-limits value, as rabbitmqctl's ('{"max-queues": 10}'). */
static void set_vhost_limits(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/"), *def = admin_field(req, "definition", "");
    if (!br_vhost(a->b, vh, strlen(vh))) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    char err[512];
    if (rp_validate(RP_VHOST_LIMITS, RP_LIMITS_NAME, def, err, sizeof err) != 0)
        return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "Validation failed\n\n%s", err);
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_param_cmd(&c, &args, META_PARAM_SET, vh, RP_VHOST_LIMITS, RP_LIMITS_NAME, def);
    admin_submit(a, to, &c);
    amqp_buf_free(&args);
}

/* clear_vhost_limits: the vhost-limits parameter goes (none: nothing to do, as RabbitMQ). */
static void clear_vhost_limits(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    if (!rp_find(v, RP_VHOST_LIMITS, RP_LIMITS_NAME)) {
        cJSON *ok = cJSON_CreateObject();
        cJSON_AddStringToObject(ok, "result", "ok");
        return admin_reply_json(a, to, ok);
    }
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_param_cmd(&c, &args, META_PARAM_CLEAR, vh, RP_VHOST_LIMITS, RP_LIMITS_NAME, NULL);
    admin_submit(a, to, &c);
    amqp_buf_free(&args);
}

static void delete_vhost(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "");
    if (!br_vhost(a->b, vh, strlen(vh)))
        return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    struct meta_cmd c = {.op = META_VHOST_DELETE, .vhost = AMQP_BYTES_CSTR(vh)};
    admin_submit(a, to, &c);
}

static void list_vhosts(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    (void)req;
    cJSON *out = cJSON_CreateArray();
    size_t p = 0;
    void *v;
    while (dict_next(&a->b->vhosts, &p, NULL, NULL, &v)) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", ((vhost_t *)v)->name);
        cJSON_AddItemToArray(out, o);
    }
    admin_reply_json(a, to, out);
}

/* ---- users ---------------------------------------------------------------------------------- */

static void put_user(struct admin *a, const struct peer_reply_to *to, uint8_t op, const char *user,
                     const char *password, const char *tags)
{
    if (!*user || too_long(user)) return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "invalid user name \"%s\"", user);
    char *hash = password ? auth_hash_password(AUTH_HASH_SHA256, password, strlen(password)) : NULL;
    if (password && !hash) return admin_reply_error(a, to, BR_INTERNAL_ERROR, "cannot hash the password");
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_user_cmd(&c, &args, op, user, hash, hash ? AUTH_HASH_SHA256 : -1, tags);
    admin_submit(a, to, &c);
    amqp_buf_free(&args);
    free(hash);
}

static void add_user(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *user = admin_field(req, "user", ""), *pw = admin_field(req, "password", NULL);
    if (!pw) return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "a password is required");
    if (br_user(a->b, user, strlen(user)))
        return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "User \"%s\" already exists", user);
    put_user(a, to, META_USER_ADD, user, pw, "");
}

static void change_password(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *user = admin_field(req, "user", ""), *pw = admin_field(req, "password", NULL);
    if (!pw) return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "a password is required");
    if (!br_user(a->b, user, strlen(user))) return admin_reply_error(a, to, BR_NOT_FOUND, "User \"%s\" does not exist", user);
    put_user(a, to, META_USER_UPDATE, user, pw, NULL);
}

static void set_user_tags(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *user = admin_field(req, "user", "");
    if (!br_user(a->b, user, strlen(user))) return admin_reply_error(a, to, BR_NOT_FOUND, "User \"%s\" does not exist", user);
    char tags[1024] = "";
    size_t n = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(req, "tags"))
    {
        if (cJSON_IsString(t) && n < sizeof tags)
            n += (size_t)snprintf(tags + n, sizeof tags - n, "%s%s", n ? "," : "", t->valuestring);
    }
    put_user(a, to, META_USER_UPDATE, user, NULL, tags);
}

static void delete_user(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *user = admin_field(req, "user", "");
    if (!br_user(a->b, user, strlen(user))) return admin_reply_error(a, to, BR_NOT_FOUND, "User \"%s\" does not exist", user);
    struct meta_cmd c = {.op = META_USER_DELETE, .name = AMQP_BYTES_CSTR(user)};
    admin_submit(a, to, &c);
}

/* "a,b" -> ["a","b"] */
static cJSON *tags_array(const char *tags)
{
    cJSON *arr = cJSON_CreateArray();
    const char *p = tags ? tags : "";
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        char *t = strndup(p, n);
        if (n) cJSON_AddItemToArray(arr, cJSON_CreateString(t));
        free(t);
        p += n + (comma ? 1 : 0);
    }
    return arr;
}

static void list_users(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    (void)req;
    cJSON *out = cJSON_CreateArray();
    size_t p = 0;
    void *v;
    while (dict_next(&a->b->users, &p, NULL, NULL, &v)) {
        user_t *u = v;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "user", u->name);
        cJSON_AddItemToObject(o, "tags", tags_array(u->tags));
        cJSON_AddItemToArray(out, o);
    }
    admin_reply_json(a, to, out);
}

/* ---- permissions ---------------------------------------------------------------------------- */

static bool regex_ok(struct admin *a, const struct peer_reply_to *to, const char *pattern)
{
    char err[256];
    auth_regex_t *re = auth_regex_compile(pattern, err, sizeof err);
    if (!re) {
        admin_reply_error(a, to, BR_PRECONDITION_FAILED, "invalid regular expression \"%s\": %s", pattern, err);
        return false;
    }
    auth_regex_free(re);
    return true;
}

static bool user_and_vhost(struct admin *a, const struct peer_reply_to *to, const char *user, const char *vh)
{
    if (!br_user(a->b, user, strlen(user))) {
        admin_reply_error(a, to, BR_NOT_FOUND, "User \"%s\" does not exist", user);
        return false;
    }
    if (!br_vhost(a->b, vh, strlen(vh))) {
        admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
        return false;
    }
    return true;
}

static void set_permissions(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/"), *user = admin_field(req, "user", "");
    const char *conf = admin_field(req, "configure", ""), *wr = admin_field(req, "write", ""), *rd = admin_field(req, "read", "");
    if (!user_and_vhost(a, to, user, vh) || !regex_ok(a, to, conf) || !regex_ok(a, to, wr) || !regex_ok(a, to, rd))
        return;
    amqp_buf_t args = {0};
    struct meta_cmd c;
    meta_perm_cmd(&c, &args, vh, user, conf, wr, rd);
    admin_submit(a, to, &c);
    amqp_buf_free(&args);
}

static void clear_permissions(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/"), *user = admin_field(req, "user", "");
    if (!user_and_vhost(a, to, user, vh)) return;
    struct meta_cmd c = {.op = META_PERM_CLEAR, .vhost = AMQP_BYTES_CSTR(vh), .name = AMQP_BYTES_CSTR(user)};
    admin_submit(a, to, &c);
}

static void list_permissions(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    cJSON *out = cJSON_CreateArray();
    size_t p = 0;
    void *uv;
    while (dict_next(&a->b->users, &p, NULL, NULL, &uv)) {
        user_t *u = uv;
        perm_t *perm = dict_get(&u->perms, vh, strlen(vh));
        if (!perm) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "user", u->name);
        cJSON_AddStringToObject(o, "configure", auth_regex_pattern(perm->configure));
        cJSON_AddStringToObject(o, "write", auth_regex_pattern(perm->write));
        cJSON_AddStringToObject(o, "read", auth_regex_pattern(perm->read));
        cJSON_AddItemToArray(out, o);
    }
    admin_reply_json(a, to, out);
}

/* ---- policies ------------------------------------------------------------------------------- */

static cJSON *value_json(const amqp_value_t *v);

cJSON *admin_table_json(const amqp_table_t *t)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < t->n; i++) {
        char *key = strndup((const char *)t->fields[i].key.ptr, t->fields[i].key.len);
        cJSON_AddItemToObject(o, key, value_json(&t->fields[i].value));
        free(key);
    }
    return o;
}

/* The field-table value back as JSON (the inverse of definitions.c's conversion). */
static cJSON *value_json(const amqp_value_t *v)
{
    int64_t i;
    switch (v->type) {
    case 't': return cJSON_CreateBool(v->v.b);
    case 'd': return cJSON_CreateNumber(v->v.d);
    case 'f': return cJSON_CreateNumber(v->v.f);
    case 'S':
    case 'x': {
        char *s = strndup((const char *)v->v.str.ptr, v->v.str.len);
        cJSON *j = cJSON_CreateString(s);
        free(s);
        return j;
    }
    case 'F': return admin_table_json(&v->v.table);
    case 'A': {
        cJSON *arr = cJSON_CreateArray();
        for (size_t k = 0; k < v->v.array.n; k++) cJSON_AddItemToArray(arr, value_json(&v->v.array.items[k]));
        return arr;
    }
    default:
        if (amqp_value_int(v, &i)) return cJSON_CreateNumber((double)i);
        return cJSON_CreateNull();
    }
}

static void set_policy(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/"), *name = admin_field(req, "name", ""), *pattern = admin_field(req, "pattern", "");
    const char *apply_to = admin_field(req, "apply_to", "all");
    const cJSON *prio = cJSON_GetObjectItemCaseSensitive(req, "priority");
    const char *def_text = admin_field(req, "definition", "");
    if (!*name || too_long(name)) return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "invalid policy name \"%s\"", name);
    if (!br_vhost(a->b, vh, strlen(vh)))
        return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    cJSON *def = cJSON_Parse(def_text);
    if (!cJSON_IsObject(def) || !def->child) {
        cJSON_Delete(def);
        return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "Invalid policy definition: \"%s\" is not a JSON object with "
                           "at least one key", def_text);
    }
    amqp_buf_t table = {0}, args = {0};
    amqp_bytes_t d = definitions_json_table(&table, def);
    cJSON_Delete(def);
    char err[512];
    if (br_policy_check(name, pattern, apply_to, d, err, sizeof err) == 0) {
        struct meta_cmd c;
        meta_policy_cmd(&c, &args, vh, false, name, pattern, apply_to, cJSON_IsNumber(prio) ? prio->valueint : 0, d);
        admin_submit(a, to, &c);
    } else {
        admin_reply_error(a, to, BR_PRECONDITION_FAILED, "%s", err);
    }
    amqp_buf_free(&table);
    amqp_buf_free(&args);
}

static void clear_policy(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/"), *name = admin_field(req, "name", "");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    bool found = false;
    for (size_t i = 0; i < v->policies.n && !found; i++) found = strcmp(((policy_t *)v->policies.items[i])->name, name) == 0;
    if (!found) return admin_reply_error(a, to, BR_NOT_FOUND, "Parameter does not exist");
    struct meta_cmd c = {.op = META_POLICY_CLEAR, .vhost = AMQP_BYTES_CSTR(vh), .name = AMQP_BYTES_CSTR(name)};
    admin_submit(a, to, &c);
}

static void list_policies(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    cJSON *out = cJSON_CreateArray();
    for (size_t i = 0; i < v->policies.n; i++) {
        const policy_t *p = v->policies.items[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "vhost", vh);
        cJSON_AddStringToObject(o, "name", p->name);
        cJSON_AddStringToObject(o, "pattern", p->pattern_text);
        cJSON_AddStringToObject(o, "apply-to", p->apply_to == APPLY_QUEUES      ? "queues"
                                               : p->apply_to == APPLY_EXCHANGES ? "exchanges"
                                                                                : "all");
        cJSON_AddItemToObject(o, "definition", admin_table_json(&p->def));
        cJSON_AddNumberToObject(o, "priority", p->priority);
        cJSON_AddItemToArray(out, o);
    }
    admin_reply_json(a, to, out);
}

/* ---- queues (list_queues; quorum queue membership like rabbitmq-queues) ----------------------- */

cJSON *admin_node_name_json(struct admin *a, uint32_t id)
{
    const char *name = id ? cl_node_name(a->c, id) : NULL;
    uint32_t self = a->b->self_node ? a->b->self_node : 1; /* unclustered quorum queues: node 1 */
    if (!name && id && id == self) name = cl_self_name(a->c);
    if (!name && !id) name = cl_self_name(a->c);
    if (name) return cJSON_CreateString(name);
    char buf[32];
    snprintf(buf, sizeof buf, "node-%u", id);
    return cJSON_CreateString(buf);
}

static void list_queues(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    cJSON *out = cJSON_CreateArray();
    size_t pos = 0;
    void *val;
    while (dict_next(&v->queues, &pos, NULL, NULL, &val)) {
        queue_t *q = val;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", q->name);
        cJSON_AddStringToObject(o, "vhost", vh);
        cJSON_AddStringToObject(o, "type", q->qq ? "quorum" : "classic");
        cJSON_AddBoolToObject(o, "durable", q->durable);
        if (q->qq) {
            struct qq_info info;
            qq_info(q, &info);
            cJSON_AddNumberToObject(o, "messages", (double)(info.ready + info.unacked));
            cJSON_AddNumberToObject(o, "messages_ready", (double)info.ready);
            cJSON_AddNumberToObject(o, "messages_unacknowledged", (double)info.unacked);
            cJSON_AddNumberToObject(o, "consumers", info.consumers);
            cJSON_AddItemToObject(o, "leader", info.leader ? admin_node_name_json(a, info.leader) : cJSON_CreateString(""));
            cJSON *members = cJSON_CreateArray(), *online = cJSON_CreateArray();
            for (unsigned i = 0; i < info.n_members; i++) {
                cJSON_AddItemToArray(members, admin_node_name_json(a, info.members[i]));
                bool up = info.members[i] == a->b->self_node || !a->b->node_is_up ||
                          a->b->node_is_up(a->b->node_ctx, info.members[i]);
                if (up) cJSON_AddItemToArray(online, admin_node_name_json(a, info.members[i]));
            }
            cJSON_AddItemToObject(o, "members", members);
            cJSON_AddItemToObject(o, "online", online);
            cJSON_AddNumberToObject(o, "term", (double)info.term);
            cJSON_AddNumberToObject(o, "commit_index", (double)info.commit);
            cJSON_AddItemToObject(o, "node", info.leader ? admin_node_name_json(a, info.leader) : cJSON_CreateString(""));
        } else {
            bool here = !q->home || q->home == a->b->self_node;
            cJSON_AddNumberToObject(o, "messages", here ? q_message_count(q) + q->unacked : 0);
            cJSON_AddNumberToObject(o, "consumers", q->consumers.n);
            cJSON_AddStringToObject(o, "leader", "");
            cJSON_AddItemToObject(o, "members", cJSON_CreateArray());
            cJSON_AddItemToObject(o, "online", cJSON_CreateArray());
            cJSON_AddItemToObject(o, "node", admin_node_name_json(a, q->home));
        }
        cJSON_AddItemToArray(out, o);
    }
    admin_reply_json(a, to, out);
}

/* A membership change waiting for the queue's leader. Answers that say "try again" (no
 * leader yet, leadership moving, another change in progress) are retried for up to 10 s. */
struct member_req {
    struct admin *a;
    struct peer_reply_to to;
    char vhost[256], queue[256];
    uint32_t node;
    bool add;
    ev_tstamp deadline;
    ev_timer retry;
};

static void member_done(void *arg, int code, const char *text);

static void member_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct member_req *r = w->data;
    vhost_t *v = br_vhost(r->a->b, r->vhost, strlen(r->vhost));
    queue_t *q = v ? br_queue(v, r->queue, strlen(r->queue)) : NULL;
    if (!q || !q->qq) return member_done(r, BR_NOT_FOUND, "the queue was deleted");
    qq_member_change(q, r->node, r->add, member_done, r);
}

static void member_done(void *arg, int code, const char *text)
{
    struct member_req *r = arg;
    struct ev_loop *loop = r->a->b->loop;
    if (code && strstr(text, "try again") && ev_now(loop) < r->deadline) {
        ev_timer_init(&r->retry, member_retry, 0.2, 0);
        r->retry.data = r;
        ev_timer_start(loop, &r->retry);
        return;
    }
    if (code) admin_reply_error(r->a, &r->to, code, "%s", text);
    else admin_reply_json(r->a, &r->to, cJSON_CreateObject());
    free(r);
}

static bool member_target(struct admin *a, const struct peer_reply_to *to, const char *node, uint32_t *id)
{
    *id = cl_node_id(node);
    const char *known = cl_node_name(a->c, *id);
    if (!known || strcmp(known, node) != 0) {
        admin_reply_error(a, to, BR_NOT_FOUND, "node %s is not a member of the cluster", node);
        return false;
    }
    return true;
}

static void change_member(struct admin *a, const struct peer_reply_to *to, const cJSON *req, bool add)
{
    const char *vh = admin_field(req, "vhost", "/"), *name = admin_field(req, "queue", ""), *node = admin_field(req, "node", "");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) return admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    queue_t *q = br_queue(v, name, strlen(name));
    if (!q) return admin_reply_error(a, to, BR_NOT_FOUND, "queue '%s' in vhost '%s' does not exist", name, vh);
    if (!q->qq) return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "queue '%s' in vhost '%s' is not a quorum queue", name, vh);
    uint32_t id;
    if (!member_target(a, to, node, &id)) return;
    struct member_req *r = calloc(1, sizeof *r);
    if (!r) abort();
    r->a = a;
    r->to = *to;
    snprintf(r->vhost, sizeof r->vhost, "%s", vh);
    snprintf(r->queue, sizeof r->queue, "%s", name);
    r->node = id;
    r->add = add;
    r->deadline = ev_now(a->b->loop) + 10.0;
    qq_member_change(q, id, add, member_done, r);
}

static void add_member(struct admin *a, const struct peer_reply_to *to, const cJSON *req) { change_member(a, to, req, true); }
static void delete_member(struct admin *a, const struct peer_reply_to *to, const cJSON *req) { change_member(a, to, req, false); }

/* grow NODE all|even: adds NODE to every quorum queue (all) or to those with an even number of
 * members (even) that do not have it, one queue after the other. */
struct grow {
    struct admin *a;
    struct peer_reply_to to;
    uint32_t node;
    ptrvec_t queues; /* referenced queue_t* still to do */
    size_t next;
    cJSON *out;
    ev_tstamp deadline; /* "try again" answers are retried until then */
    ev_timer retry;
};

static void grow_next(struct grow *g);

static void grow_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct grow *g = w->data;
    g->next--; /* the same queue again */
    grow_next(g);
}

static void grow_one_done(void *arg, int code, const char *text)
{
    struct grow *g = arg;
    queue_t *q = g->queues.items[g->next - 1];
    struct ev_loop *loop = g->a->b->loop;
    if (code && strstr(text, "try again") && ev_now(loop) < g->deadline && !q->deleted) {
        ev_timer_init(&g->retry, grow_retry, 0.2, 0);
        g->retry.data = g;
        ev_timer_start(loop, &g->retry);
        return;
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "vhost", q->vh->name);
    cJSON_AddStringToObject(o, "name", q->name);
    cJSON_AddStringToObject(o, "result", code ? text : "ok");
    cJSON_AddItemToArray(g->out, o);
    grow_next(g);
}

static void grow_next(struct grow *g)
{
    while (g->next < g->queues.n) {
        queue_t *q = g->queues.items[g->next++];
        if (q->deleted || !q->qq) continue;
        qq_member_change(q, g->node, true, grow_one_done, g);
        return;
    }
    admin_reply_json(g->a, &g->to, g->out);
    for (size_t i = 0; i < g->queues.n; i++) q_unref(g->queues.items[i]);
    ptrvec_free(&g->queues);
    free(g);
}

static void grow(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *node = admin_field(req, "node", ""), *which = admin_field(req, "which", "all");
    bool even = strcmp(which, "even") == 0;
    if (!even && strcmp(which, "all") != 0)
        return admin_reply_error(a, to, BR_PRECONDITION_FAILED, "expected 'all' or 'even', got '%s'", which);
    uint32_t id;
    if (!member_target(a, to, node, &id)) return;
    struct grow *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->a = a;
    g->to = *to;
    g->node = id;
    g->out = cJSON_CreateArray();
    g->deadline = ev_now(a->b->loop) + 30.0;
    size_t vp = 0;
    void *vv;
    while (dict_next(&a->b->vhosts, &vp, NULL, NULL, &vv)) {
        vhost_t *v = vv;
        size_t qp = 0;
        void *qv;
        while (dict_next(&v->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            if (!q->qq) continue;
            struct qq_info info;
            qq_info(q, &info);
            bool has = false;
            for (unsigned i = 0; i < info.n_members; i++) has |= info.members[i] == id;
            if (has || (even && info.n_members % 2)) continue;
            q_ref(q);
            ptrvec_push(&g->queues, q);
        }
    }
    grow_next(g);
}

/* ---- dispatch ------------------------------------------------------------------------------- */

static const struct {
    const char *method;
    admin_handler_fn fn;
} commands[] = {
    {"admin.add_vhost", add_vhost},
    {"admin.delete_vhost", delete_vhost},
    {"admin.set_vhost_limits", set_vhost_limits},
    {"admin.clear_vhost_limits", clear_vhost_limits},
    {"admin.list_vhosts", list_vhosts},
    {"admin.add_user", add_user},
    {"admin.delete_user", delete_user},
    {"admin.change_password", change_password},
    {"admin.set_user_tags", set_user_tags},
    {"admin.list_users", list_users},
    {"admin.set_permissions", set_permissions},
    {"admin.clear_permissions", clear_permissions},
    {"admin.list_permissions", list_permissions},
    {"admin.set_policy", set_policy},
    {"admin.clear_policy", clear_policy},
    {"admin.list_policies", list_policies},
    {"admin.list_queues", list_queues},
    {"admin.add_member", add_member},
    {"admin.delete_member", delete_member},
    {"admin.grow", grow},
    {"admin.status", maint_status},
    {"admin.drain", maint_drain},
    {"admin.revive", maint_revive},
    {"admin.list_exchanges", topo_list_exchanges},
    {"admin.list_bindings", topo_list_bindings},
    {"admin.list_connections", topo_list_connections},
    {"admin.close_connection", topo_close_connection},
    {"admin.delete_queue", topo_delete_queue},
    {"admin.purge_queue", topo_purge_queue},
    {"admin.export_definitions", topo_export_definitions},
    {"admin.import_definitions", topo_import_definitions},
};

static void admin_call(void *ud, uint32_t from, const struct peer_call_in *in)
{
    (void)from;
    struct admin *a = ud;
    cJSON *req = in->len ? cJSON_ParseWithLength(in->payload, in->len) : cJSON_CreateObject();
    if (!cJSON_IsObject(req)) {
        cJSON_Delete(req);
        admin_reply_error(a, &in->reply_to, BR_COMMAND_INVALID, "malformed request");
        return;
    }
    size_t i = 0;
    while (i < sizeof commands / sizeof commands[0] && strcmp(commands[i].method, in->method) != 0) i++;
    if (i < sizeof commands / sizeof commands[0]) commands[i].fn(a, &in->reply_to, req);
    else admin_reply_error(a, &in->reply_to, BR_COMMAND_INVALID, "unknown command %s", in->method);
    cJSON_Delete(req);
}

static struct admin the_admin; /* one broker per process */

void admin_attach(broker_t *b, cl_t *c)
{
    if (!c) return;
    struct admin *a = &the_admin;
    a->b = b;
    a->c = c;
    a->started = ev_now(b->loop);
    cl_set_admin_handler(c, admin_call, a);
    char err[512];
    if (!cl_clustered(c) && cl_control_listen(c, b->cfg, err, sizeof err) != 0)
        log_warn("%s: warrenctl cannot reach this node", err);
}

void admin_set_node_ops(const struct admin_node_ops *ops, void *ctx)
{
    the_admin.ops = ops;
    the_admin.ops_ctx = ctx;
}

bool admin_in_maintenance(void) { return the_admin.maintenance; }

void admin_shutdown(void)
{
    if (the_admin.b) maint_shutdown(&the_admin);
}
