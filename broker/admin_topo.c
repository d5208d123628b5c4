/* admin_topo.c - warrenctl's topology commands (prefix topo_): list_exchanges, list_bindings,
 * list_connections, delete_queue, purge_queue, export_definitions, import_definitions.
 *
 * Lists are answered from this node's applied registry (the metadata log keeps every node's copy
 * the same). delete_queue goes the way of a client's queue.delete: unclustered it runs at once;
 * clustered it is a dry run of br_queue_delete here (RabbitMQ's errors, if-empty / if-unused
 * checked on this node, as the channel does) and then a META_Q_DELETE through the log, answered
 * once applied here. purge_queue is served where the messages are: quorum queues through their
 * group, queues homed on another node by that node, local ones at once.
 *
 * Definitions: export is broker/defexport.c's document; import hands the JSON to
 * broker_import_definitions (the same loader as the boot-time definitions file), answered once
 * every command it produced has applied on this node. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "broker/admin_int.h"
#include "broker/connreg.h"
#include "broker/defexport.h"
#include "broker/qq.h"
#include "broker/remote.h"

const char *ex_type_name(ex_type_t t); /* exchange.c */

/* The vhost named by the request, or NULL after answering 404. */
static vhost_t *req_vhost(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *vh = admin_field(req, "vhost", "/");
    vhost_t *v = br_vhost(a->b, vh, strlen(vh));
    if (!v) admin_reply_error(a, to, BR_NOT_FOUND, "Virtual host \"%s\" does not exist", vh);
    return v;
}

/* Arguments (raw table content) as a JSON object; {} when empty or unreadable. */
static cJSON *args_json(amqp_bytes_t raw)
{
    amqp_table_t t = {0};
    if (!raw.len || amqp_table_parse(raw, &t) != 0) return cJSON_CreateObject();
    cJSON *o = admin_table_json(&t);
    amqp_table_free(&t);
    return o;
}

/* ---- lists -------------------------------------------------------------------------------- */

void topo_list_exchanges(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    vhost_t *v = req_vhost(a, to, req);
    if (!v) return;
    cJSON *out = cJSON_CreateArray();
    size_t pos = 0;
    void *val;
    while (dict_next(&v->exchanges, &pos, NULL, NULL, &val)) {
        const exchange_t *x = val;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", x->name);
        cJSON_AddStringToObject(o, "vhost", v->name);
        cJSON_AddStringToObject(o, "type", x->delayed ? "x-delayed-message" : ex_type_name(x->type));
        cJSON_AddBoolToObject(o, "durable", x->durable);
        cJSON_AddBoolToObject(o, "auto_delete", x->auto_delete);
        cJSON_AddBoolToObject(o, "internal", x->internal);
        cJSON_AddItemToObject(o, "arguments", args_json(x->args_raw));
        cJSON_AddItemToArray(out, o);
    }
    admin_reply_json(a, to, out);
}

static cJSON *binding_json(const char *src, const char *dest, bool to_queue, const char *key, size_t key_len,
                           amqp_bytes_t args)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "source", src);
    cJSON_AddStringToObject(o, "destination", dest);
    cJSON_AddStringToObject(o, "destination_type", to_queue ? "queue" : "exchange");
    char *k = strndup(key, key_len);
    cJSON_AddStringToObject(o, "routing_key", k ? k : "");
    free(k);
    cJSON_AddItemToObject(o, "arguments", args_json(args));
    return o;
}

/* As rabbitmqctl list_bindings: the default exchange's implicit bindings first, then every
 * exchange's bindings. */
void topo_list_bindings(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    vhost_t *v = req_vhost(a, to, req);
    if (!v) return;
    cJSON *out = cJSON_CreateArray();
    size_t pos = 0;
    void *val;
    while (dict_next(&v->queues, &pos, NULL, NULL, &val)) {
        const queue_t *q = val;
        cJSON_AddItemToArray(out, binding_json("", q->name, true, q->name, q->name_len, (amqp_bytes_t){0}));
    }
    pos = 0;
    while (dict_next(&v->exchanges, &pos, NULL, NULL, &val)) {
        const exchange_t *x = val;
        for (size_t i = 0; i < x->bindings.n; i++) {
            const binding_t *bd = x->bindings.items[i];
            const char *dest = bd->dest_is_queue ? ((queue_t *)bd->dest)->name : ((exchange_t *)bd->dest)->name;
            cJSON_AddItemToArray(out, binding_json(x->name, dest, bd->dest_is_queue, bd->key, bd->key_len, bd->args_raw));
        }
    }
    admin_reply_json(a, to, out);
}

/* This node's client connections (broker/connreg.h), as rabbitmqctl list_connections shows
 * them. */
static void local_connections(struct admin *a, cJSON *out)
{
    for (const connreg_entry_t *e = connreg_refresh(); e; e = e->next) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", e->name);
        cJSON_AddItemToObject(o, "node", admin_node_name_json(a, 0));
        cJSON_AddStringToObject(o, "user", e->user);
        cJSON_AddStringToObject(o, "vhost", e->vhost);
        cJSON_AddStringToObject(o, "peer_host", e->peer_host);
        cJSON_AddNumberToObject(o, "peer_port", e->peer_port);
        cJSON_AddStringToObject(o, "host", e->host);
        cJSON_AddNumberToObject(o, "port", e->port);
        cJSON_AddStringToObject(o, "state", e->state);
        cJSON_AddNumberToObject(o, "channels", e->channels);
        cJSON_AddStringToObject(o, "protocol", e->protocol);
        cJSON_AddBoolToObject(o, "ssl", e->tls);
        cJSON_AddStringToObject(o, "client_product", e->client_product);
        cJSON_AddNumberToObject(o, "connected_at", (double)(int64_t)(e->connected_at * 1000));
        cJSON_AddItemToArray(out, o);
    }
}

/* Cluster-wide, as rabbitmqctl's: this node's list plus every running member's (asked with
 * "local": true); a member that does not answer in time is left out. */
struct conn_gather {
    struct admin *a;
    struct peer_reply_to to;
    cJSON *out;
    unsigned waiting;
};

static void gather_done_if_complete(struct conn_gather *g)
{
    if (g->waiting) return;
    admin_reply_json(g->a, &g->to, g->out);
    free(g);
}

static void gathered(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    struct conn_gather *g = arg;
    cJSON *arr = status == 0 ? cJSON_ParseWithLength(payload, len) : NULL;
    cJSON *e;
    while (cJSON_IsArray(arr) && (e = cJSON_DetachItemFromArray(arr, 0)) != NULL) cJSON_AddItemToArray(g->out, e);
    cJSON_Delete(arr);
    g->waiting--;
    gather_done_if_complete(g);
}

void topo_list_connections(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    struct conn_gather *g = calloc(1, sizeof *g);
    if (!g) abort();
    *g = (struct conn_gather){.a = a, .to = *to, .out = cJSON_CreateArray(), .waiting = 1};
    local_connections(a, g->out);
    if (cl_clustered(a->c) && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "local"))) {
        static struct cl_status st; /* large; the loop thread only */
        cl_status(a->c, &st);
        static const char ask[] = "{\"local\":true}";
        for (unsigned i = 0; i < st.n_members; i++) {
            const struct cl_member *m = &st.members[i];
            if (m->id == st.node_id || !m->running) continue;
            if (peer_call(cl_mesh(a->c), m->id, "admin.list_connections", ask, sizeof ask - 1, 5.0, gathered, g, NULL) ==
                PEER_OK)
                g->waiting++;
        }
    }
    g->waiting--;
    gather_done_if_complete(g);
}

/* close_connection NAME REASON (rabbitmqctl's): the node holding it closes it with 320
 * CONNECTION_FORCED and the reason; this node asks the other running members ("local": true)
 * when it is not one of its own. */
struct conn_close {
    struct admin *a;
    struct peer_reply_to to;
    char name[160];
    unsigned waiting;
    bool found;
};

static void close_done_if_complete(struct conn_close *cc)
{
    if (cc->waiting) return;
    if (cc->found) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "result", "ok");
        admin_reply_json(cc->a, &cc->to, o);
    } else {
        admin_reply_error(cc->a, &cc->to, BR_NOT_FOUND, "connection \"%s\" not found", cc->name);
    }
    free(cc);
}

static void closed_elsewhere(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error, (void)payload, (void)len;
    struct conn_close *cc = arg;
    cc->found |= status == 0;
    cc->waiting--;
    close_done_if_complete(cc);
}

void topo_close_connection(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const char *name = admin_field(req, "name", ""), *reason = admin_field(req, "reason", "Closed via warrenctl");
    bool local = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "local"));
    if (connreg_close(name, reason)) return admin_reply_json(a, to, cJSON_CreateObject());
    if (local || !cl_clustered(a->c))
        return admin_reply_error(a, to, BR_NOT_FOUND, "connection \"%s\" not found", name);
    struct conn_close *cc = calloc(1, sizeof *cc);
    if (!cc) abort();
    *cc = (struct conn_close){.a = a, .to = *to, .waiting = 1};
    snprintf(cc->name, sizeof cc->name, "%s", name);
    cJSON *ask = cJSON_CreateObject();
    cJSON_AddStringToObject(ask, "name", name);
    cJSON_AddStringToObject(ask, "reason", reason);
    cJSON_AddBoolToObject(ask, "local", true);
    char *text = cJSON_PrintUnformatted(ask);
    cJSON_Delete(ask);
    static struct cl_status st; /* large; the loop thread only */
    cl_status(a->c, &st);
    for (unsigned i = 0; text && i < st.n_members; i++) {
        const struct cl_member *m = &st.members[i];
        if (m->id == st.node_id || !m->running) continue;
        if (peer_call(cl_mesh(a->c), m->id, "admin.close_connection", text, strlen(text), 5.0, closed_elsewhere, cc,
                      NULL) == PEER_OK)
            cc->waiting++;
    }
    free(text);
    cc->waiting--;
    close_done_if_complete(cc);
}

/* ---- delete_queue / purge_queue --------------------------------------------------------- */

static cJSON *count_reply(uint32_t messages)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "result", "ok");
    cJSON_AddNumberToObject(o, "messages", messages);
    return o;
}

/* The queue named by the request, or NULL after answering 404 (RabbitMQ's text). */
static queue_t *req_queue(struct admin *a, const struct peer_reply_to *to, vhost_t *v, const char *name)
{
    queue_t *q = br_queue(v, name, strlen(name));
    if (!q) admin_reply_error(a, to, BR_NOT_FOUND, "NOT_FOUND - no queue '%s' in vhost '%s'", name, v->name);
    return q;
}

/* A clustered deletion waiting for its META_Q_DELETE to apply here. */
struct deletion {
    struct admin *a;
    struct peer_reply_to to;
    uint32_t messages;
};

static void deleted(void *arg, const br_err_t *err)
{
    struct deletion *d = arg;
    if (err) admin_reply_error(d->a, &d->to, err->code ? err->code : BR_INTERNAL_ERROR, "%s", err->text);
    else admin_reply_json(d->a, &d->to, count_reply(d->messages));
    free(d);
}

static uint32_t queue_messages(queue_t *q)
{
    if (q->qq) return qq_message_count(q);
    return rq_remote(q) ? 0 : (uint32_t)q_message_count(q);
}

void topo_delete_queue(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    vhost_t *v = req_vhost(a, to, req);
    if (!v) return;
    const char *name = admin_field(req, "queue", "");
    bool if_unused = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "if_unused"));
    bool if_empty = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "if_empty"));
    queue_t *q = req_queue(a, to, v, name);
    if (!q) return;
    if (rq_remote(q) && (if_unused || if_empty))
        return admin_reply_error(a, to, BR_PRECONDITION_FAILED,
                                 "--if-unused / --if-empty of a queue homed on another node are not supported yet");
    uint32_t messages = queue_messages(q), n = 0;
    broker_t *b = a->b;
    br_err_t err;
    bool clustered = meta_clustered(b);
    if (clustered) meta_dry_begin(b);
    int rc = br_queue_delete(v, NULL, q->exclusive ? q->owner_conn : 0, name, strlen(name), if_unused, if_empty, &n, &err);
    bool mutates = clustered && meta_dry_end(b);
    if (rc) return admin_reply_error(a, to, rc, "%s", err.text);
    if (!mutates) return admin_reply_json(a, to, count_reply(messages));
    struct deletion *d = malloc(sizeof *d);
    if (!d) abort();
    *d = (struct deletion){.a = a, .to = *to, .messages = messages};
    struct meta_cmd c = {.op = META_Q_DELETE, .vhost = AMQP_BYTES_CSTR(v->name), .name = AMQP_BYTES_CSTR(name),
                         .conn = q->exclusive ? q->owner_conn : 0};
    meta_submit(b, &c, deleted, d);
}

struct purge {
    struct admin *a;
    struct peer_reply_to to;
};

static void purged(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    (void)consumers;
    struct purge *p = arg;
    if (err) admin_reply_error(p->a, &p->to, err->code ? err->code : BR_INTERNAL_ERROR, "%s", err->text);
    else admin_reply_json(p->a, &p->to, count_reply(messages));
    free(p);
}

void topo_purge_queue(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    vhost_t *v = req_vhost(a, to, req);
    if (!v) return;
    const char *name = admin_field(req, "queue", "");
    queue_t *q = req_queue(a, to, v, name);
    if (!q) return;
    br_err_t err;
    if (q->qq || rq_remote(q)) {
        if (rq_remote(q) && rq_unavailable(q, &err)) return admin_reply_error(a, to, err.code, "%s", err.text);
        struct purge *p = malloc(sizeof *p);
        if (!p) abort();
        *p = (struct purge){.a = a, .to = *to};
        return q->qq ? qq_purge(q, purged, p) : rq_purge(q, purged, p);
    }
    uint32_t n = 0;
    uint64_t owner = q->exclusive ? q->owner_conn : 0; /* the operator may purge an exclusive queue */
    if (br_queue_purge(v, NULL, owner, name, strlen(name), &n, &err)) return admin_reply_error(a, to, err.code, "%s", err.text);
    admin_reply_json(a, to, count_reply(n));
}

/* ---- definitions -------------------------------------------------------------------------- */

void topo_export_definitions(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    (void)req;
    admin_reply_json(a, to, defx_export(a->b));
}

struct import_req {
    struct admin *a;
    struct peer_reply_to to;
};

static void imported(void *arg, unsigned applied, unsigned failed, const char *first_error)
{
    struct import_req *r = arg;
    if (failed) {
        admin_reply_error(r->a, &r->to, BR_PRECONDITION_FAILED, "%u of %u definitions could not be imported; the first: %s",
                          failed, applied + failed, first_error ? first_error : "?");
    } else {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "result", "ok");
        cJSON_AddNumberToObject(o, "applied", applied);
        admin_reply_json(r->a, &r->to, o);
    }
    free(r);
}

void topo_import_definitions(struct admin *a, const struct peer_reply_to *to, const cJSON *req)
{
    const cJSON *defs = cJSON_GetObjectItemCaseSensitive(req, "definitions");
    struct import_req *r = malloc(sizeof *r);
    if (!r) abort();
    *r = (struct import_req){.a = a, .to = *to};
    char err[512];
    if (broker_import_definitions(a->b, defs, imported, r, err, sizeof err) != 0) {
        free(r);
        admin_reply_error(a, to, BR_PRECONDITION_FAILED, "%s", err);
    }
}
