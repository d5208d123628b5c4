/* api_write.c - the endpoints that change the registry: PUT / DELETE of queues and exchanges,
 * and the aliveness test.
 *
 * Data flow, as amqp091/channel.c does it for declares: unclustered, the br_* operation runs
 * with the request's user (permissions, equivalence, RabbitMQ's error texts) and the reply
 * follows at once. Clustered, the same br_* call runs first as a dry run (meta_dry_begin/end):
 * errors are answered without a round trip, a change that changes nothing (an equivalent
 * redeclare) is answered at once, and otherwise the change becomes a metadata command
 * (meta_submit) and the request is answered from its callback, once the change has applied on
 * this node - until then the connection reads nothing more (http.c).
 *
 * Status codes as RabbitMQ's: 201 created, 204 existed already / deleted, 400 bad_request with
 * the AMQP error text (inequivalent arguments, not empty, in use), 401 not_authorised "Access
 * refused." (permissions, reserved names), 404 not found. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/admin.h"
#include "broker/meta.h"
#include "broker/qq.h"
#include "broker/remote.h"
#include "mgmt/internal.h"

/* A change waiting for the metadata log. */
/* ---- request bodies ---- */

/* A boolean field: JSON true/false or the strings "true"/"false" (RabbitMQ accepts both). */
static bool body_bool(const cJSON *o, const char *key, bool dflt, bool *ok)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) return dflt;
    if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
    if (cJSON_IsString(v) && strcmp(v->valuestring, "true") == 0) return true;
    if (cJSON_IsString(v) && strcmp(v->valuestring, "false") == 0) return false;
    *ok = false;
    return dflt;
}

/* "arguments" as field-table content in buf; false when it is not an object. */
static bool body_arguments(const cJSON *o, amqp_buf_t *buf, amqp_bytes_t *out)
{
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "arguments");
    *out = (amqp_bytes_t){0};
    if (!a || cJSON_IsNull(a)) return true;
    if (!cJSON_IsObject(a)) return false;
    if (!a->child) return true;
    *out = definitions_json_table(buf, a);
    return true;
}

static bool query_true(const mgmt_req_t *r, const char *key)
{
    char buf[16];
    const char *v = mgmt_query(r, key, buf, sizeof buf);
    return v && strcmp(v, "true") == 0;
}

static vhost_t *req_vhost(mgmt_req_t *r) { return br_vhost(r->m->b, r->params[0], strlen(r->params[0])); }

static bool name_ok(mgmt_req_t *r, const char *name)
{
    if (strlen(name) <= 255) return true;
    mgmt_reply_error(r, 400, "bad_request", "name longer than 255 bytes");
    return false;
}

/* ---- queues ---- */

struct qdecl {
    bool durable, auto_delete;
    amqp_bytes_t args;
};

static void queue_declare_clustered(mgmt_req_t *r, vhost_t *vh, const char *name, const struct qdecl *d, int status)
{
    broker_t *b = r->m->b;
    br_err_t err;
    queue_t *q;
    meta_dry_begin(b);
    int rc = br_queue_declare(vh, r->user, 0, name, strlen(name), false, d->durable, false, d->auto_delete, d->args,
                              &q, &err);
    bool mutates = meta_dry_end(b);
    if (rc) return mgmt_reply_br_error(r, &err);
    if (!mutates) return mgmt_reply_status(r, 204);
    struct meta_cmd c = {.op = META_Q_DECLARE, .vhost = AMQP_BYTES_CSTR(vh->name), .name = AMQP_BYTES_CSTR(name),
                         .home = b->self_node, .args = d->args};
    c.flags = (d->durable ? META_F_DURABLE : 0) | (d->auto_delete ? META_F_AUTO_DELETE : 0);
    amqp_table_t t = {0};
    amqp_buf_t members = {0};
    if (d->args.len && amqp_table_parse(d->args, &t) == 0 && qq_args_quorum(&t)) {
        qq_choose_members(b, &t, &members);
        c.key = (amqp_bytes_t){members.data, members.len};
    }
    amqp_table_free(&t);
    mgmt_submit(r, &c, status);
    amqp_buf_free(&members);
}

void mgmt_put_queue(mgmt_req_t *r)
{
    vhost_t *vh = req_vhost(r);
    const char *name = r->params[1];
    if (!name_ok(r, name)) return;
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    bool ok = true;
    amqp_buf_t buf = {0};
    struct qdecl d = {.durable = body_bool(body, "durable", false, &ok),
                      .auto_delete = body_bool(body, "auto_delete", false, &ok)};
    if (!body_arguments(body, &buf, &d.args)) ok = false;
    cJSON_Delete(body);
    if (!ok) {
        amqp_buf_free(&buf);
        return mgmt_reply_error(r, 400, "bad_request", "invalid durable, auto_delete or arguments");
    }
    int status = br_queue(vh, name, strlen(name)) ? 204 : 201;
    if (meta_clustered(r->m->b)) {
        queue_declare_clustered(r, vh, name, &d, status);
    } else {
        br_err_t err;
        queue_t *q;
        if (br_queue_declare(vh, r->user, 0, name, strlen(name), false, d.durable, false, d.auto_delete, d.args, &q,
                             &err))
            mgmt_reply_br_error(r, &err);
        else
            mgmt_reply_status(r, status);
    }
    amqp_buf_free(&buf);
}

void mgmt_delete_queue(mgmt_req_t *r)
{
    vhost_t *vh = req_vhost(r);
    const char *name = r->params[1];
    size_t len = strlen(name);
    bool if_unused = query_true(r, "if-unused"), if_empty = query_true(r, "if-empty");
    broker_t *b = r->m->b;
    br_err_t err;
    uint32_t n;
    if (!br_queue(vh, name, len)) return mgmt_reply_not_found(r);
    bool clustered = meta_clustered(b);
    if (clustered) meta_dry_begin(b);
    int rc = br_queue_delete(vh, r->user, 0, name, len, if_unused, if_empty, &n, &err);
    bool mutates = clustered && meta_dry_end(b);
    if (rc) return mgmt_reply_br_error(r, &err);
    if (!mutates) return mgmt_reply_status(r, 204);
    queue_t *q = br_queue(vh, name, len);
    if (q && rq_remote(q) && (if_unused || if_empty))
        return mgmt_reply_error(r, 400, "bad_request",
                                "if-unused / if-empty of a queue homed on another node are not supported yet");
    struct meta_cmd c = {.op = META_Q_DELETE, .vhost = AMQP_BYTES_CSTR(vh->name), .name = AMQP_BYTES_CSTR(name)};
    mgmt_submit(r, &c, 204);
}

/* ---- exchanges ---- */

static const char *exchange_name(const char *param) { return strcmp(param, "amq.default") == 0 ? "" : param; }

void mgmt_put_exchange(mgmt_req_t *r)
{
    vhost_t *vh = req_vhost(r);
    const char *name = exchange_name(r->params[1]);
    if (!name_ok(r, name)) return;
    cJSON *body = mgmt_body_object(r);
    if (!body) return;
    bool ok = true;
    bool durable = body_bool(body, "durable", false, &ok), auto_delete = body_bool(body, "auto_delete", false, &ok);
    bool internal = body_bool(body, "internal", false, &ok);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(body, "type");
    char type[256] = "direct";
    if (cJSON_IsString(t) && strlen(t->valuestring) < sizeof type) snprintf(type, sizeof type, "%s", t->valuestring);
    else if (t && !cJSON_IsNull(t)) ok = false;
    amqp_buf_t buf = {0};
    amqp_bytes_t args;
    if (!body_arguments(body, &buf, &args)) ok = false;
    cJSON_Delete(body);
    if (!ok) {
        amqp_buf_free(&buf);
        return mgmt_reply_error(r, 400, "bad_request", "invalid type, durable, auto_delete, internal or arguments");
    }
    broker_t *b = r->m->b;
    int status = br_exchange(vh, name, strlen(name)) ? 204 : 201;
    bool clustered = meta_clustered(b);
    br_err_t err;
    if (clustered) meta_dry_begin(b);
    int rc = br_exchange_declare(vh, r->user, name, strlen(name), type, strlen(type), false, durable, auto_delete,
                                 internal, args, &err);
    bool mutates = clustered && meta_dry_end(b);
    if (rc) {
        mgmt_reply_br_error(r, &err);
    } else if (!mutates) {
        mgmt_reply_status(r, status);
    } else {
        struct meta_cmd c = {.op = META_X_DECLARE, .vhost = AMQP_BYTES_CSTR(vh->name), .name = AMQP_BYTES_CSTR(name),
                             .name2 = AMQP_BYTES_CSTR(type), .args = args};
        c.flags = (durable ? META_F_DURABLE : 0) | (auto_delete ? META_F_AUTO_DELETE : 0) |
                  (internal ? META_F_INTERNAL : 0);
        mgmt_submit(r, &c, status);
    }
    amqp_buf_free(&buf);
}

void mgmt_delete_exchange(mgmt_req_t *r)
{
    vhost_t *vh = req_vhost(r);
    const char *name = exchange_name(r->params[1]);
    bool if_unused = query_true(r, "if-unused");
    broker_t *b = r->m->b;
    if (!br_exchange(vh, name, strlen(name))) return mgmt_reply_not_found(r);
    bool clustered = meta_clustered(b);
    br_err_t err;
    if (clustered) meta_dry_begin(b);
    int rc = br_exchange_delete(vh, r->user, name, strlen(name), if_unused, &err);
    bool mutates = clustered && meta_dry_end(b);
    if (rc) return mgmt_reply_br_error(r, &err);
    if (!mutates) return mgmt_reply_status(r, 204);
    struct meta_cmd c = {.op = META_X_DELETE, .vhost = AMQP_BYTES_CSTR(vh->name), .name = AMQP_BYTES_CSTR(name),
                         .flags = if_unused ? META_F_IF_UNUSED : 0};
    mgmt_submit(r, &c, 204);
}

/* ---- aliveness ---- */

/* RabbitMQ 3.x declares a queue, publishes and gets a message; 4.1 made it a no-op that answers
 * ok for a vhost the user may use (checked by the router), which is what this does. */
void mgmt_get_aliveness(mgmt_req_t *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    mgmt_reply_json(r, 200, o);
}
