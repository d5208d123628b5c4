/* api_read.c - the read-only endpoints of the management API (GET).
 *
 * Every answer is built from this node's copy of the registry (in a cluster the metadata log
 * keeps every node's copy the same, so any node answers for the cluster, as RabbitMQ 4 reads
 * its local Khepri copy), and from the counters the broker keeps (broker_t and queue_t stat_*).
 * Queue figures (depth, consumers, message_stats) are node-local, so the queue endpoints, the
 * overview and the vhosts first gather the other nodes' (qgather.c) and build in its callback.
 * Listings are filtered to what the user may see (router.c: mgmt_vhost_visible); the router
 * has already checked the vhost of vhost-scoped paths. Nothing here changes the registry,
 * except the aliveness test, which declares its queue as RabbitMQ's does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/connreg.h"
#include "broker/defexport.h"
#include "broker/topicperm.h"
#include "mgmt/internal.h"
#include "mgmt/qgather.h"

#define MGMT_COMPAT_VERSION "3.10.8" /* the RabbitMQ release whose API this one follows */
#define WARREN_VERSION "0.1.0"

static vhost_t *param_vhost(mgmt_req_t *r) { return br_vhost(r->m->b, r->params[0], strlen(r->params[0])); }

/* Calls fn on every vhost r's user may see (only params[0] when the path names one). */
enum { OBJECTS = 0, VHOSTS = 1 }; /* what a listing shows: monitoring users see every vhost */

static void each_vhost(mgmt_req_t *r, bool scoped, int what, void (*fn)(mgmt_req_t *r, vhost_t *vh, void *arg),
                       void *arg)
{
    if (scoped) {
        vhost_t *vh = param_vhost(r);
        if (vh) fn(r, vh, arg);
        return;
    }
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->vhosts, &pos, NULL, NULL, &v))
        if (mgmt_vhost_visible(r, v, what == VHOSTS)) fn(r, v, arg);
}

/* ---- overview ---- */

struct totals {
    uint64_t queues, exchanges, consumers, ready, unacked;
};

/* A queue's figures as the cluster knows them (qgather.c: the home's for a classic queue homed
 * elsewhere, when the request gathered them; nothing for one whose home is down). */
static void queue_depth(mgmt_t *m, queue_t *q, uint64_t *ready, uint64_t *unacked, uint32_t *consumers)
{
    struct mgmt_qfig fig;
    mgmt_qfig(m, q, &fig);
    *ready = fig.known ? fig.f.ready : 0;
    *unacked = fig.known ? fig.f.unacked : 0;
    *consumers = fig.known ? fig.f.consumers : 0;
}

static void add_totals(mgmt_req_t *r, vhost_t *vh, void *arg)
{
    struct totals *t = arg;
    t->exchanges += dict_size(&vh->exchanges);
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) {
        uint64_t ready, unacked;
        uint32_t consumers;
        queue_depth(r->m, v, &ready, &unacked, &consumers);
        t->queues++;
        t->ready += ready, t->unacked += unacked, t->consumers += consumers;
    }
}

/* Depth rates are summed from the queues' own (the home's for queues homed elsewhere). */
struct depth_rates {
    double messages, ready, unacked;
};

static void add_depth_rates(mgmt_req_t *r, vhost_t *vh, void *arg)
{
    struct depth_rates *d = arg;
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) {
        struct mgmt_qfig fig;
        mgmt_qfig(r->m, v, &fig);
        if (!fig.known) continue;
        d->messages += fig.f.rate[QS_RATE_MESSAGES];
        d->ready += fig.f.rate[QS_RATE_READY];
        d->unacked += fig.f.rate[QS_RATE_UNACKED];
    }
}

static void add_listener(cJSON *arr, mgmt_t *m, const char *protocol, const char *host, int port)
{
    cJSON *l = cJSON_CreateObject();
    cJSON_AddItemToObject(l, "node", mgmt_json_node_name(m, 0));
    cJSON_AddStringToObject(l, "protocol", protocol);
    cJSON_AddStringToObject(l, "ip_address", host && host[0] ? host : "::");
    cJSON_AddNumberToObject(l, "port", port);
    cJSON_AddItemToArray(arr, l);
}

static cJSON *listeners_json(mgmt_t *m)
{
    const cfg_t *cfg = m->cfg;
    cJSON *arr = cJSON_CreateArray();
    for (int i = 0; i < cfg->n_tcp; i++) add_listener(arr, m, "amqp", cfg->tcp[i].host, cfg->tcp[i].port);
    for (int i = 0; i < cfg->n_ssl; i++) add_listener(arr, m, "amqp/ssl", cfg->ssl[i].host, cfg->ssl[i].port);
    if (m->cl && cl_listen_port(m->cl)) add_listener(arr, m, "clustering", cfg->cluster_listener.host, cl_listen_port(m->cl));
    if (m->port) add_listener(arr, m, "http", cfg->mgmt_ip, m->port);
    if (m->tls_port) add_listener(arr, m, "https", cfg->mgmt_ssl_ip, m->tls_port);
    return arr;
}

static cJSON *exchange_types_json(void)
{
    static const char *const types[][2] = {
        {"direct", "AMQP direct exchange, as per the AMQP specification"},
        {"fanout", "AMQP fanout exchange, as per the AMQP specification"},
        {"headers", "AMQP headers exchange, as per the AMQP specification"},
        {"topic", "AMQP topic exchange, as per the AMQP specification"},
        {"x-delayed-message", "Delayed Message Exchange"},
    };
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "name", types[i][0]);
        cJSON_AddStringToObject(t, "description", types[i][1]);
        cJSON_AddBoolToObject(t, "enabled", true);
        cJSON_AddItemToArray(arr, t);
    }
    return arr;
}

static const char *cluster_name(mgmt_t *m)
{
    if (m->cfg->cluster_name[0]) return m->cfg->cluster_name;
    char buf[32];
    const char *n = mgmt_node_name(m, 0, buf, sizeof buf);
    return n == buf ? m->cfg->node_name : n;
}

/* This node's share of the overview: its message counters with rates and its listeners. */
static cJSON *node_overview(mgmt_t *m)
{
    broker_t *b = m->b;
    cJSON *o = cJSON_CreateObject();
    cJSON *ms = cJSON_AddObjectToObject(o, "message_stats");
    mgmt_json_count(ms, "publish", b->stat_publish, mgmt_rate_node(m, MGMT_RATE_PUBLISH));
    mgmt_json_count(ms, "confirm", b->stat_confirm, mgmt_rate_node(m, MGMT_RATE_CONFIRM));
    mgmt_json_count(ms, "deliver_get", b->stat_deliver, mgmt_rate_node(m, MGMT_RATE_DELIVER_GET));
    mgmt_json_count(ms, "ack", b->stat_ack, mgmt_rate_node(m, MGMT_RATE_ACK));
    mgmt_json_count(ms, "drop_unroutable", b->stat_unroutable, mgmt_rate_node(m, MGMT_RATE_UNROUTABLE));
    cJSON_AddItemToObject(o, "listeners", listeners_json(m));
    return o;
}

/* This node's message_stats of vhosts and exchanges (those it counted anything for): each
 * node counts its own clients' publishes and its queues' deliveries and acks, so the sums over
 * the members are the cluster's. */
static cJSON *node_objstats(mgmt_t *m)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *vhosts = cJSON_AddObjectToObject(o, "vhosts"), *exchanges = cJSON_AddObjectToObject(o, "exchanges");
    size_t pos = 0;
    void *v;
    while (dict_next(&m->b->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        cJSON *holder = cJSON_CreateObject(), *xs = NULL;
        mgmt_json_vhost_stats_local(m, holder, vh);
        cJSON *ms = cJSON_DetachItemFromObjectCaseSensitive(holder, "message_stats");
        if (ms) cJSON_AddItemToObject(vhosts, vh->name, ms);
        size_t xp = 0;
        void *xv;
        while (dict_next(&vh->exchanges, &xp, NULL, NULL, &xv)) {
            exchange_t *x = xv;
            if (!x->stat_in) continue;
            mgmt_json_exchange_stats_local(m, holder, x);
            ms = cJSON_DetachItemFromObjectCaseSensitive(holder, "message_stats");
            if (!ms) continue;
            if (!xs) xs = cJSON_AddObjectToObject(exchanges, vh->name);
            cJSON_AddItemToObject(xs, x->name, ms);
        }
        cJSON_Delete(holder);
    }
    return o;
}

cJSON *mgmt_node_share(void *ctx, const char *share)
{
    if (strcmp(share, "overview") == 0) return node_overview(ctx);
    if (strcmp(share, "objstats") == 0) return node_objstats(ctx);
    return NULL;
}

/* Built once the other nodes' queue figures are in (qgather.c), so queue_totals and
 * object_totals.consumers count every node's queues. */
static void overview_gathered(mgmt_req_t *r, void *arg)
{
    (void)arg;
    mgmt_t *m = r->m;
    struct totals t = {0};
    struct depth_rates dr = {0};
    each_vhost(r, false, VHOSTS, add_totals, &t);
    each_vhost(r, false, VHOSTS, add_depth_rates, &dr);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "management_version", MGMT_COMPAT_VERSION);
    cJSON_AddStringToObject(o, "rates_mode", "basic");
    cJSON_AddItemToObject(o, "exchange_types", exchange_types_json());
    cJSON_AddStringToObject(o, "product_version", WARREN_VERSION);
    cJSON_AddStringToObject(o, "product_name", "Warren");
    cJSON_AddStringToObject(o, "rabbitmq_version", MGMT_COMPAT_VERSION);
    cJSON_AddStringToObject(o, "cluster_name", cluster_name(m));
    cJSON_AddBoolToObject(o, "disable_stats", false);
    cJSON_AddBoolToObject(o, "enable_queue_totals", true);
    /* message_stats and listeners: every node's, added by mgmt_reply_overview (this node's
     * come through the same mgmt_node_overview as the others') */
    cJSON *qt = cJSON_AddObjectToObject(o, "queue_totals");
    mgmt_json_count(qt, "messages", t.ready + t.unacked, dr.messages);
    mgmt_json_count(qt, "messages_ready", t.ready, dr.ready);
    mgmt_json_count(qt, "messages_unacknowledged", t.unacked, dr.unacked);
    cJSON *ot = cJSON_AddObjectToObject(o, "object_totals");
    cJSON_AddNumberToObject(ot, "channels", m->count_channels ? (double)m->count_channels(m->count_ctx)
                                                              : (double)connreg_channel_count());
    cJSON_AddNumberToObject(ot, "connections", m->count_connections ? (double)m->count_connections(m->count_ctx) : 0);
    cJSON_AddNumberToObject(ot, "consumers", (double)t.consumers);
    cJSON_AddNumberToObject(ot, "exchanges", (double)t.exchanges);
    cJSON_AddNumberToObject(ot, "queues", (double)t.queues);
    cJSON_AddNumberToObject(o, "statistics_db_event_queue", 0);
    cJSON_AddItemToObject(o, "node", mgmt_json_node_name(m, 0));
    cJSON *ctx = cJSON_AddArrayToObject(o, "contexts");
    cJSON *c0 = cJSON_CreateObject();
    cJSON_AddItemToObject(c0, "node", mgmt_json_node_name(m, 0));
    cJSON_AddStringToObject(c0, "description", "RabbitMQ Management");
    cJSON_AddStringToObject(c0, "path", "/");
    char port[16];
    snprintf(port, sizeof port, "%d", m->port);
    cJSON_AddStringToObject(c0, "port", port);
    cJSON_AddItemToArray(ctx, c0);
    mgmt_reply_overview(r, o); /* with every node's connections and channels (api_conns.c) */
}

void mgmt_get_overview(mgmt_req_t *r) { mgmt_qg_all(r, NULL, overview_gathered, NULL); }

void mgmt_get_whoami(mgmt_req_t *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", r->user->name);
    cJSON_AddItemToObject(o, "tags", mgmt_json_tags(r->user->tags));
    mgmt_reply_json(r, 200, o);
}

/* ---- vhosts ---- */

static cJSON *vhost_json(mgmt_req_t *r, vhost_t *vh)
{
    struct totals t = {0};
    struct depth_rates dr = {0};
    add_totals(r, vh, &t);
    add_depth_rates(r, vh, &dr);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", vh->name);
    /* RabbitMQ 4's shape: the metadata flat and as "metadata"; an unset default queue type is
     * "undefined" and absent from "metadata" */
    cJSON_AddStringToObject(o, "description", vh->description ? vh->description : "");
    cJSON_AddItemToObject(o, "tags", defx_tags_json(vh->tags));
    cJSON_AddStringToObject(o, "default_queue_type", vh->default_queue_type ? vh->default_queue_type : "undefined");
    cJSON_AddItemToObject(o, "metadata", defx_vhost_metadata(vh));
    cJSON_AddBoolToObject(o, "tracing", false);
    cJSON *cs = cJSON_AddObjectToObject(o, "cluster_state");
    char buf[32];
    cJSON_AddStringToObject(cs, mgmt_node_name(r->m, 0, buf, sizeof buf), "running");
    mgmt_json_count(o, "messages", t.ready + t.unacked, dr.messages);
    mgmt_json_count(o, "messages_ready", t.ready, dr.ready);
    mgmt_json_count(o, "messages_unacknowledged", t.unacked, dr.unacked);
    mgmt_json_vhost_stats(r->m, o, vh);
    return o;
}

static void add_vhost(mgmt_req_t *r, vhost_t *vh, void *arg) { cJSON_AddItemToArray(arg, vhost_json(r, vh)); }

/* The vhosts' message counts include queues homed on other nodes: built once their figures
 * are in (qgather.c). */
static void vhosts_gathered(mgmt_req_t *r, void *arg)
{
    cJSON *sums = arg;
    mgmt_objstats_use(sums);
    cJSON *arr = cJSON_CreateArray();
    each_vhost(r, false, VHOSTS, add_vhost, arr);
    mgmt_objstats_use(NULL);
    cJSON_Delete(sums);
    mgmt_reply_list(r, arr);
}

/* The members' message_stats shares first (api_conns.c), then the queue figures (qgather.c);
 * the sums are kept for the second step. */
static void vhosts_objstats(mgmt_req_t *r, cJSON *sums, void *arg)
{
    (void)arg;
    mgmt_qg_all(r, NULL, vhosts_gathered, sums);
}

void mgmt_get_vhosts(mgmt_req_t *r) { mgmt_gather_objstats(r, vhosts_objstats, NULL); }

static void vhost_gathered(mgmt_req_t *r, void *arg)
{
    cJSON *sums = arg;
    vhost_t *vh = param_vhost(r); /* looked up again: it may have gone while the figures came */
    if (!vh) {
        cJSON_Delete(sums);
        return mgmt_reply_not_found(r);
    }
    mgmt_objstats_use(sums);
    cJSON *o = vhost_json(r, vh);
    mgmt_objstats_use(NULL);
    cJSON_Delete(sums);
    mgmt_reply_json(r, 200, o);
}

static void vhost_objstats(mgmt_req_t *r, cJSON *sums, void *arg)
{
    (void)arg;
    vhost_t *vh = param_vhost(r);
    if (!vh) {
        cJSON_Delete(sums);
        return mgmt_reply_not_found(r);
    }
    mgmt_qg_all(r, vh->name, vhost_gathered, sums);
}

void mgmt_get_vhost(mgmt_req_t *r)
{
    if (!param_vhost(r)) return mgmt_reply_not_found(r);
    mgmt_gather_objstats(r, vhost_objstats, NULL);
}

/* ---- users and permissions (administrators) ---- */

void mgmt_get_users(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    size_t pos = 0;
    void *v;
    while (dict_next(&r->m->b->users, &pos, NULL, NULL, &v)) cJSON_AddItemToArray(arr, mgmt_json_user(v));
    mgmt_reply_list(r, arr);
}

void mgmt_get_user(mgmt_req_t *r)
{
    user_t *u = br_user(r->m->b, r->params[0], strlen(r->params[0]));
    if (!u) return mgmt_reply_not_found(r);
    mgmt_reply_json(r, 200, mgmt_json_user(u));
}

static cJSON *permissions_json(broker_t *b)
{
    cJSON *arr = cJSON_CreateArray();
    size_t pos = 0;
    void *v;
    while (dict_next(&b->users, &pos, NULL, NULL, &v)) {
        user_t *u = v;
        size_t pp = 0;
        const char *vname;
        size_t vlen;
        void *pv;
        while (dict_next(&u->perms, &pp, &vname, &vlen, &pv)) {
            perm_t *p = pv;
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "user", u->name);
            char *vn = strndup(vname, vlen);
            if (!vn) abort();
            cJSON_AddStringToObject(o, "vhost", vn);
            free(vn);
            cJSON_AddStringToObject(o, "configure", auth_regex_pattern(p->configure));
            cJSON_AddStringToObject(o, "write", auth_regex_pattern(p->write));
            cJSON_AddStringToObject(o, "read", auth_regex_pattern(p->read));
            cJSON_AddItemToArray(arr, o);
        }
    }
    return arr;
}

void mgmt_get_permissions(mgmt_req_t *r) { mgmt_reply_list(r, permissions_json(r->m->b)); }

/* ---- exchanges ---- */

static void add_exchanges(mgmt_req_t *r, vhost_t *vh, void *arg)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->exchanges, &pos, NULL, NULL, &v)) {
        cJSON *o = mgmt_json_exchange(v);
        mgmt_json_exchange_stats(r->m, o, v);
        cJSON_AddItemToArray(arg, o);
    }
}

/* Exchanges' message_stats are the cluster's: every node counts its own publishers' (built once
 * the members' shares are in, api_conns.c). */
static void exchanges_gathered(mgmt_req_t *r, cJSON *sums, void *arg)
{
    (void)arg;
    mgmt_objstats_use(sums);
    cJSON *arr = cJSON_CreateArray();
    each_vhost(r, r->params[0] != NULL, OBJECTS, add_exchanges, arr);
    mgmt_objstats_use(NULL);
    cJSON_Delete(sums);
    mgmt_reply_list(r, arr);
}

void mgmt_get_exchanges(mgmt_req_t *r) { mgmt_gather_objstats(r, exchanges_gathered, NULL); }

static void exchange_gathered(mgmt_req_t *r, cJSON *sums, void *arg)
{
    (void)arg;
    /* looked up again: it may have gone while the figures came */
    const char *name = strcmp(r->params[1], "amq.default") == 0 ? "" : r->params[1];
    vhost_t *vh = param_vhost(r);
    exchange_t *x = vh ? br_exchange(vh, name, strlen(name)) : NULL;
    if (!x) {
        cJSON_Delete(sums);
        return mgmt_reply_not_found(r);
    }
    cJSON *o = mgmt_json_exchange(x);
    mgmt_objstats_use(sums);
    mgmt_json_exchange_stats(r->m, o, x);
    mgmt_objstats_use(NULL);
    cJSON_Delete(sums);
    mgmt_reply_json(r, 200, o);
}

void mgmt_get_exchange(mgmt_req_t *r)
{
    const char *name = strcmp(r->params[1], "amq.default") == 0 ? "" : r->params[1];
    vhost_t *vh = param_vhost(r);
    if (!vh || !br_exchange(vh, name, strlen(name))) return mgmt_reply_not_found(r);
    mgmt_gather_objstats(r, exchange_gathered, NULL);
}

/* ---- queues ---- */

static void add_queues(mgmt_req_t *r, vhost_t *vh, void *arg)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) cJSON_AddItemToArray(arg, mgmt_json_queue(r->m, v));
}

/* The general path: every queue's object built, then sorted / filtered / paged by paginate.c;
 * called with every shown queue's figures gathered. */
void mgmt_queues_general(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    each_vhost(r, r->params[0] != NULL, OBJECTS, add_queues, arr);
    mgmt_reply_list(r, arr);
}

/* qlist.c decides what to gather (one page's queues, or all) and answers (fast path or general). */
void mgmt_get_queues(mgmt_req_t *r) { mgmt_qlist_get(r, r->params[0] != NULL); }

static void queue_gathered(mgmt_req_t *r, void *arg)
{
    (void)arg;
    queue_t *q = br_queue(param_vhost(r), r->params[1], strlen(r->params[1])); /* it may be gone by now */
    if (!q) return mgmt_reply_not_found(r);
    mgmt_reply_queue(r, mgmt_json_queue(r->m, q)); /* with its consumers on every node (api_conns.c) */
}

void mgmt_get_queue(mgmt_req_t *r)
{
    queue_t *q = br_queue(param_vhost(r), r->params[1], strlen(r->params[1]));
    if (!q) return mgmt_reply_not_found(r);
    mgmt_qg_named(r, &q, 1, queue_gathered, NULL);
}

/* ---- bindings ---- */

static void add_bindings(mgmt_req_t *r, vhost_t *vh, void *arg)
{
    (void)r;
    mgmt_json_bindings(arg, vh);
}

void mgmt_get_bindings(mgmt_req_t *r)
{
    cJSON *arr = cJSON_CreateArray();
    each_vhost(r, r->params[0] != NULL, OBJECTS, add_bindings, arr);
    mgmt_reply_list(r, arr);
}

/* ---- definitions (export) ---- */

/* The one exporter (broker/defexport.c), which warrenctl export_definitions uses too. */
void mgmt_get_definitions(mgmt_req_t *r) { mgmt_reply_json(r, 200, defx_export(r->m->b)); }

/* ---- health ---- */

void mgmt_get_health_alarms(mgmt_req_t *r)
{
    unsigned alarms = r->m->b->alarms;
    if (!alarms) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "status", "ok");
        return mgmt_reply_json(r, 200, o);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "failed");
    cJSON_AddStringToObject(o, "reason", "resource alarm(s) in effect in the cluster");
    cJSON *list = cJSON_AddArrayToObject(o, "alarms");
    static const struct { unsigned bit; const char *resource; } kinds[] = {{BR_ALARM_MEMORY, "memory"},
                                                                           {BR_ALARM_DISK, "disk"}};
    for (size_t i = 0; i < 2; i++) {
        if (!(alarms & kinds[i].bit)) continue;
        cJSON *a = cJSON_CreateObject();
        cJSON_AddStringToObject(a, "resource", kinds[i].resource);
        cJSON_AddItemToObject(a, "node", mgmt_json_node_name(r->m, 0));
        cJSON_AddItemToArray(list, a);
    }
    mgmt_reply_json(r, 503, o);
}
