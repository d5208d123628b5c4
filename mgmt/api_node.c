/* api_node.c - nodes, health checks, the cluster name, and per-object sub-resources (a queue's
 * bindings, an exchange's bindings as source or destination, a queue's contents).
 *
 * /api/nodes lists the cluster's members (broker/cluster.h: cl_status) with their running
 * state and resource figures (memory, disk, file descriptors, uptime: broker/nodeinfo.c): this
 * node's own, and every other running member's from its answer to a connreg.list call asking
 * for "node" (api_conns.c gathers them; a member that does not answer in time has none).
 *
 * Health checks answer 200 {"status":"ok"} or 503 {"status":"failed","reason":...} with
 * RabbitMQ 3.10.8's extra fields. Purging a queue (DELETE .../contents) may wait for its home
 * node or its Raft group; the request is answered from the callback. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "broker/cluster.h"
#include "broker/meta.h"
#include "broker/nodeinfo.h"
#include "broker/qq.h"
#include "broker/remote.h"
#include "mgmt/internal.h"

/* ---- nodes ---- */

static cJSON *node_json(mgmt_t *m, const char *name, bool self, bool running)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "type", "disc");
    cJSON_AddBoolToObject(o, "running", running);
    cJSON_AddItemToObject(o, "partitions", cJSON_CreateArray());
    if (self) ni_add_figures(m->b, o);
    return o;
}

/* Calls fn for every node of the cluster (this node alone when unclustered). */
static void each_node(mgmt_t *m, void (*fn)(mgmt_t *m, const char *name, bool self, bool running, void *arg), void *arg)
{
    char buf[32];
    const char *self = mgmt_node_name(m, 0, buf, sizeof buf);
    struct cl_status *st = m->cl ? calloc(1, sizeof *st) : NULL;
    if (st) cl_status(m->cl, st);
    if (!st || !st->clustered || !st->n_members) {
        fn(m, self, true, true, arg);
    } else {
        for (unsigned i = 0; i < st->n_members; i++)
            fn(m, st->members[i].name, strcmp(st->members[i].name, self) == 0, st->members[i].running, arg);
    }
    free(st);
}

static void add_node(mgmt_t *m, const char *name, bool self, bool running, void *arg)
{
    cJSON_AddItemToArray(arg, node_json(m, name, self, running));
}

void mgmt_get_nodes(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    each_node(r->m, add_node, arr);
    mgmt_reply_nodes(r, arr);
}

struct find_node {
    const char *name;
    cJSON *found;
};

static void match_node(mgmt_t *m, const char *name, bool self, bool running, void *arg)
{
    struct find_node *f = arg;
    if (!f->found && strcmp(name, f->name) == 0) f->found = node_json(m, name, self, running);
}

void mgmt_get_node(mgmt_req_t *r)
{
    struct find_node f = {r->params[0], NULL};
    each_node(r->m, match_node, &f);
    if (!f.found) return mgmt_reply_not_found(r);
    mgmt_reply_nodes(r, f.found);
}

void mgmt_get_cluster_name(mgmt_req_t *r)
{
    cJSON *o = cJSON_CreateObject();
    char buf[32];
    const char *n = r->m->cfg->cluster_name[0] ? r->m->cfg->cluster_name : mgmt_node_name(r->m, 0, buf, sizeof buf);
    cJSON_AddStringToObject(o, "name", n);
    mgmt_reply_json(r, 200, o);
}

void mgmt_get_extensions(mgmt_req_t *r) { mgmt_reply_json(r, 200, cJSON_CreateArray()); }

/* ---- health checks ---- */

static cJSON *ok_object(void)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    return o;
}

static cJSON *failed(const char *reason)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "failed");
    cJSON_AddStringToObject(o, "reason", reason);
    return o;
}

void mgmt_get_health_local_alarms(mgmt_req_t *r) { mgmt_get_health_alarms(r); }

void mgmt_get_health_vhosts(mgmt_req_t *r) { mgmt_reply_json(r, 200, ok_object()); }

/* The node's listeners as (protocol, port) pairs, as /api/overview lists them. */
static void each_listener(mgmt_t *m, void (*fn)(const char *protocol, int port, void *arg), void *arg)
{
    const cfg_t *cfg = m->cfg;
    for (int i = 0; i < cfg->n_tcp; i++) fn("amqp", cfg->tcp[i].port, arg);
    for (int i = 0; i < cfg->n_ssl; i++) fn("amqp/ssl", cfg->ssl[i].port, arg);
    if (m->cl && cl_listen_port(m->cl)) fn("clustering", cl_listen_port(m->cl), arg);
    if (m->port) fn("http", m->port, arg);
    if (m->tls_port) fn("https", m->tls_port, arg);
}

struct listener_check {
    const char *protocol; /* or NULL: match port */
    int port;
    bool found;
    cJSON *seen;
};

static void check_listener(const char *protocol, int port, void *arg)
{
    struct listener_check *c = arg;
    if (c->protocol ? strcmp(c->protocol, protocol) == 0 : c->port == port) c->found = true;
    cJSON_AddItemToArray(c->seen, c->protocol ? cJSON_CreateString(protocol) : cJSON_CreateNumber(port));
}

void mgmt_get_health_port(mgmt_req_t *r)
{
    char *end;
    long port = strtol(r->params[0], &end, 10);
    if (*end || port <= 0 || port > 65535) return mgmt_reply_error(r, 400, "bad_request", "invalid port");
    struct listener_check c = {.port = (int)port, .seen = cJSON_CreateArray()};
    each_listener(r->m, check_listener, &c);
    if (c.found) {
        cJSON_Delete(c.seen);
        cJSON *o = ok_object();
        cJSON_AddNumberToObject(o, "port", (double)port);
        return mgmt_reply_json(r, 200, o);
    }
    cJSON *o = failed("No active listener");
    cJSON_AddNumberToObject(o, "missing", (double)port);
    cJSON_AddItemToObject(o, "ports", c.seen);
    mgmt_reply_json(r, 503, o);
}

void mgmt_get_health_protocol(mgmt_req_t *r)
{
    struct listener_check c = {.protocol = r->params[0], .seen = cJSON_CreateArray()};
    each_listener(r->m, check_listener, &c);
    if (c.found) {
        cJSON_Delete(c.seen);
        cJSON *o = ok_object();
        cJSON_AddStringToObject(o, "protocol", r->params[0]);
        return mgmt_reply_json(r, 200, o);
    }
    cJSON *o = failed("No active listener");
    cJSON_AddStringToObject(o, "missing", r->params[0]);
    cJSON_AddItemToObject(o, "protocols", c.seen);
    mgmt_reply_json(r, 503, o);
}

/* Would stopping this node leave a quorum queue it is a member of without a majority of online
 * members? */
static bool quorum_critical(mgmt_t *m, queue_t *q)
{
    struct qq_info info;
    qq_info(q, &info);
    if (!info.member || info.n_members < 2) return false;
    unsigned online = 0;
    for (unsigned i = 0; i < info.n_members && i < 16; i++) {
        uint32_t id = info.members[i];
        if (id == m->b->self_node || !m->b->node_is_up || m->b->node_is_up(m->b->node_ctx, id)) online++;
    }
    return online - 1 < info.n_members / 2 + 1;
}

void mgmt_get_health_quorum_critical(mgmt_req_t *r)
{
    if (!meta_clustered(r->m->b)) {
        cJSON *o = ok_object();
        cJSON_AddStringToObject(o, "reason", "single node cluster");
        return mgmt_reply_json(r, 200, o);
    }
    cJSON *queues = cJSON_CreateArray();
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) {
            queue_t *q = qv;
            if (!q->qq || !quorum_critical(r->m, q)) continue;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", q->name);
            cJSON_AddStringToObject(o, "virtual_host", vh->name);
            cJSON_AddItemToArray(queues, o);
        }
    }
    if (!cJSON_GetArraySize(queues)) {
        cJSON_Delete(queues);
        return mgmt_reply_json(r, 200, ok_object());
    }
    cJSON *o = failed("There are quorum queues that would lose their quorum if the target node is shut down");
    cJSON_AddItemToObject(o, "queues", queues);
    mgmt_reply_json(r, 503, o);
}

/* ---- sub-resources of queues and exchanges ---- */

static cJSON *filtered_bindings(vhost_t *vh, const char *key, const char *value, const char *type)
{
    cJSON *all = cJSON_CreateArray(), *out = cJSON_CreateArray();
    mgmt_json_bindings(all, vh);
    for (cJSON *b = all->child; b;) {
        cJSON *next = b->next;
        const cJSON *v = cJSON_GetObjectItem(b, key), *t = cJSON_GetObjectItem(b, "destination_type");
        bool type_ok = !type || (cJSON_IsString(t) && strcmp(t->valuestring, type) == 0);
        if (cJSON_IsString(v) && strcmp(v->valuestring, value) == 0 && type_ok)
            cJSON_AddItemToArray(out, cJSON_DetachItemViaPointer(all, b));
        b = next;
    }
    cJSON_Delete(all);
    return out;
}

/* As RabbitMQ 3.10.8, the lists of an object that does not exist are answered too: an
 * exchange's are empty, a queue's holds the default exchange's implicit binding. */
void mgmt_get_queue_bindings(mgmt_req_t *r)
{
    vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    const char *name = r->params[1];
    if (br_queue(vh, name, strlen(name))) return mgmt_reply_list(r, filtered_bindings(vh, "destination", name, "queue"));
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "source", "");
    cJSON_AddStringToObject(b, "vhost", vh->name);
    cJSON_AddStringToObject(b, "destination", name);
    cJSON_AddStringToObject(b, "destination_type", "queue");
    cJSON_AddStringToObject(b, "routing_key", name);
    cJSON_AddItemToObject(b, "arguments", cJSON_CreateObject());
    cJSON_AddStringToObject(b, "properties_key", name);
    cJSON *arr = cJSON_CreateArray();
    cJSON_AddItemToArray(arr, b);
    mgmt_reply_list(r, arr);
}

static void exchange_bindings(mgmt_req_t *r, bool as_source)
{
    vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    const char *name = strcmp(r->params[1], "amq.default") == 0 ? "" : r->params[1];
    if (!br_exchange(vh, name, strlen(name))) return mgmt_reply_json(r, 200, cJSON_CreateArray());
    mgmt_reply_list(r, as_source ? filtered_bindings(vh, "source", name, NULL)
                                 : filtered_bindings(vh, "destination", name, "exchange"));
}

void mgmt_get_exchange_bindings_source(mgmt_req_t *r) { exchange_bindings(r, true); }
void mgmt_get_exchange_bindings_destination(mgmt_req_t *r) { exchange_bindings(r, false); }

static void purged(void *arg, const br_err_t *err, uint32_t messages, uint32_t consumers)
{
    (void)messages, (void)consumers;
    mgmt_req_t *r = arg;
    if (err) mgmt_reply_br_error(r, err);
    else mgmt_reply_status(r, 204);
}

void mgmt_delete_queue_contents(mgmt_req_t *r)
{
    vhost_t *vh = br_vhost(r->m->b, r->params[0], strlen(r->params[0]));
    const char *name = r->params[1];
    size_t len = strlen(name);
    br_err_t err;
    queue_t *q;
    if (!br_queue(vh, name, len)) return mgmt_reply_not_found(r);
    if (br_queue_for_read(vh, r->user, 0, name, len, &q, &err)) return mgmt_reply_br_error(r, &err);
    if (q->qq) return qq_purge(q, purged, r);
    if (rq_remote(q)) {
        if (rq_unavailable(q, &err)) return mgmt_reply_br_error(r, &err);
        return rq_purge(q, purged, r);
    }
    uint32_t n;
    if (br_queue_purge(vh, r->user, 0, name, len, &n, &err)) return mgmt_reply_br_error(r, &err);
    mgmt_reply_status(r, 204);
}
