/* api_conns.c - connections, channels and consumers: /api/connections[/{name}[/channels]],
 * /api/vhosts/{vhost}/connections|channels, /api/channels[/{name}], /api/consumers[/{vhost}];
 * also the overview's connection and channel totals and a queue's consumer_details, which
 * need the same cluster-wide gathering.
 *
 * Data flow: the objects come from the broker's connection registry (broker/connreg.h), which
 * the protocol adapters fill; mgmt never sees an adapter. Connections are node-local, so a
 * listing is gathered: this node's objects at once, and every other running member's through
 * one CONNREG_CALL_LIST call each (b->node_call, the mesh the classic queues use); the request is
 * answered when every node has answered or failed (a node that does not answer within
 * GATHER_TIMEOUT is left out, as RabbitMQ leaves out a node that does not answer in time).
 *
 * Visibility, as RabbitMQ's management plugin: administrators and monitoring users see every
 * connection and channel; other users only their own (same user name). Consumers are shown by
 * the vhost of their queue (vhosts the user has permissions on). Closing a connection (DELETE)
 * takes an administrator or the connection's own user; the reason comes from the X-Reason
 * header (default "Closed via management plugin") and the client gets 320 CONNECTION_FORCED
 * with "CONNECTION_FORCED - <reason>". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/connreg.h"
#include "mgmt/internal.h"

/* A member that has not answered a listing by then is left out (a paused node must not hold
 * /api/overview or /api/nodes for long; the queue figures wait 1.5 s, mgmt/qgather.c). */
#define GATHER_TIMEOUT 2.0
/* Closing a connection on another node: the answer says whether it was found. */
#define CLOSE_TIMEOUT 5.0

enum { G_CONNECTIONS = 1, G_CHANNELS = 2, G_CONSUMERS = 4, G_COUNTS = 8, G_NODE = 16, G_OBJSTATS = 32 };

/* One request's gathering of the cluster's lists. */
struct gather {
    mgmt_req_t *r;
    unsigned what;     /* G_* */
    unsigned waiting;  /* calls not answered yet */
    cJSON *lists;      /* {"connections": [...], "channels": [...], "consumers": [...]} */
    void (*done)(struct gather *g);
    int found;         /* DELETE: nodes that closed the connection */
    cJSON *doc;        /* the overview being completed (G_COUNTS) */
    mgmt_objstats_done objstats_done; /* G_OBJSTATS: the caller's continuation */
    void *objstats_arg;
};

static cJSON *list_of(struct gather *g, const char *key) { return cJSON_GetObjectItemCaseSensitive(g->lists, key); }

static void finish(struct gather *g)
{
    g->done(g);
    cJSON_Delete(g->lists);
    free(g);
}

/* Adds a node's counts to ours. */
static void merge_counts(struct gather *g, const cJSON *answer)
{
    const cJSON *from = cJSON_GetObjectItemCaseSensitive(answer, "counts");
    cJSON *to = cJSON_GetObjectItemCaseSensitive(g->lists, "counts");
    if (!cJSON_IsObject(from) || !to) return;
    for (cJSON *n = to->child; n; n = n->next) {
        const cJSON *add = cJSON_GetObjectItemCaseSensitive(from, n->string);
        if (cJSON_IsNumber(add)) cJSON_SetNumberValue(n, n->valuedouble + add->valuedouble);
    }
}

/* Moves the items of the arrays in a node's answer into ours. */
static void merge(struct gather *g, cJSON *answer)
{
    merge_counts(g, answer);
    static const char *const shares[][2] = {{"overview", "overviews"}, {"objstats", "objstats_shares"}};
    for (size_t i = 0; i < 2; i++) {
        cJSON *share = cJSON_DetachItemFromObjectCaseSensitive(answer, shares[i][0]);
        cJSON *to = list_of(g, shares[i][1]);
        if (cJSON_IsObject(share) && to) cJSON_AddItemToArray(to, share);
        else cJSON_Delete(share);
    }
    cJSON *node = cJSON_DetachItemFromObjectCaseSensitive(answer, "node");
    cJSON *nodes = list_of(g, "nodes");
    if (cJSON_IsObject(node) && nodes) cJSON_AddItemToArray(nodes, node);
    else cJSON_Delete(node);
    static const char *const keys[] = {"connections", "channels", "consumers"};
    for (size_t i = 0; i < 3; i++) {
        cJSON *from = cJSON_GetObjectItemCaseSensitive(answer, keys[i]), *to = list_of(g, keys[i]);
        if (!cJSON_IsArray(from) || !to) continue;
        cJSON *e;
        while ((e = from->child)) cJSON_AddItemToArray(to, cJSON_DetachItemViaPointer(from, e));
    }
}

static void answered(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    struct gather *g = arg;
    if (status == 0 && len) {
        cJSON *answer = cJSON_ParseWithLength(payload, len);
        merge(g, answer);
        cJSON_Delete(answer);
    }
    if (--g->waiting == 0) finish(g);
}

static cJSON *request_json(unsigned what)
{
    cJSON *req = cJSON_CreateObject();
    if (what & G_CONNECTIONS) cJSON_AddTrueToObject(req, "connections");
    if (what & G_CHANNELS) cJSON_AddTrueToObject(req, "channels");
    if (what & G_CONSUMERS) cJSON_AddTrueToObject(req, "consumers");
    if (what & G_COUNTS) cJSON_AddTrueToObject(req, "counts");
    if (what & G_NODE) cJSON_AddTrueToObject(req, "node");
    if (what & G_OBJSTATS) cJSON_AddTrueToObject(req, "objstats");
    return req;
}

/* Sends method with payload to every other running member (each answer goes to answered). */
static void call_others(mgmt_t *m, const char *method, const char *payload, struct gather *g)
{
    broker_t *b = m->b;
    if (!m->cl || !cl_clustered(m->cl) || !b->node_call) return;
    struct cl_status *st = calloc(1, sizeof *st);
    if (!st) abort();
    cl_status(m->cl, st);
    for (unsigned i = 0; i < st->n_members; i++) {
        uint32_t id = st->members[i].id;
        if (id == st->node_id || !st->members[i].running) continue;
        g->waiting++; /* before the call: a failed call never calls back */
        if (b->node_call(b->node_ctx, id, method, payload, strlen(payload), GATHER_TIMEOUT, answered, g) != 0)
            g->waiting--;
    }
    free(st);
}

static void collect_share(cJSON *lists, const char *key, const char *array)
{
    cJSON *all = cJSON_AddArrayToObject(lists, array);
    cJSON *ours = cJSON_DetachItemFromObjectCaseSensitive(lists, key);
    if (ours) cJSON_AddItemToArray(all, ours);
}

static void start_gather(struct gather *g, mgmt_req_t *r, unsigned what, void (*done)(struct gather *g), cJSON *doc)
{
    g->r = r;
    g->what = what;
    g->done = done;
    g->doc = doc;
    cJSON *req = request_json(what);
    g->lists = connreg_lists_json(r->m->b, req);
    /* every node's shares collect in arrays, ours first */
    if (what & G_COUNTS) collect_share(g->lists, "overview", "overviews");
    if (what & G_OBJSTATS) collect_share(g->lists, "objstats", "objstats_shares");
    if (what & G_NODE) { /* ours is added by the caller; the others' answers collect here */
        cJSON_DeleteItemFromObjectCaseSensitive(g->lists, "node");
        cJSON_AddArrayToObject(g->lists, "nodes");
    }
    char *payload = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    g->waiting = 1; /* this function's own share: nothing finishes while calls go out */
    call_others(r->m, CONNREG_CALL_LIST, payload ? payload : "{}", g);
    free(payload);
    if (--g->waiting == 0) finish(g);
}

static void gather_doc(mgmt_req_t *r, unsigned what, void (*done)(struct gather *g), cJSON *doc)
{
    struct gather *g = calloc(1, sizeof *g);
    if (!g) abort();
    start_gather(g, r, what, done, doc);
}

static void gather(mgmt_req_t *r, unsigned what, void (*done)(struct gather *g)) { gather_doc(r, what, done, NULL); }

/* ---- the overview's totals ---- */

/* Adds the numbers of from into to, recursively ("publish": N, "publish_details": {"rate": R}). */
static void sum_numbers(cJSON *to, const cJSON *from)
{
    for (const cJSON *f = from->child; f; f = f->next) {
        cJSON *t = cJSON_GetObjectItemCaseSensitive(to, f->string);
        if (cJSON_IsNumber(f)) {
            if (cJSON_IsNumber(t)) cJSON_SetNumberValue(t, t->valuedouble + f->valuedouble);
            else if (!t) cJSON_AddNumberToObject(to, f->string, f->valuedouble);
        } else if (cJSON_IsObject(f)) {
            if (!t) t = cJSON_AddObjectToObject(to, f->string);
            if (cJSON_IsObject(t)) sum_numbers(t, f);
        }
    }
}

/* message_stats summed over the nodes' shares, listeners of every node (ours first). */
static void overview_add_nodes(cJSON *doc, const cJSON *shares)
{
    cJSON *ms = cJSON_AddObjectToObject(doc, "message_stats");
    cJSON *listeners = cJSON_AddArrayToObject(doc, "listeners");
    const cJSON *share;
    cJSON_ArrayForEach(share, shares)
    {
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(share, "message_stats");
        if (cJSON_IsObject(s)) sum_numbers(ms, s);
        const cJSON *l = cJSON_GetObjectItemCaseSensitive(share, "listeners"), *e;
        cJSON_ArrayForEach(e, l) cJSON_AddItemToArray(listeners, cJSON_Duplicate(e, true));
    }
}

static void reply_overview(struct gather *g)
{
    cJSON *ot = cJSON_GetObjectItemCaseSensitive(g->doc, "object_totals");
    const cJSON *counts = cJSON_GetObjectItemCaseSensitive(g->lists, "counts");
    static const char *const keys[] = {"connections", "channels"};
    for (size_t i = 0; ot && i < 2; i++) {
        const cJSON *n = cJSON_GetObjectItemCaseSensitive(counts, keys[i]);
        cJSON_DeleteItemFromObjectCaseSensitive(ot, keys[i]);
        cJSON_AddNumberToObject(ot, keys[i], cJSON_IsNumber(n) ? n->valuedouble : 0);
    }
    overview_add_nodes(g->doc, list_of(g, "overviews"));
    mgmt_reply_json(g->r, 200, g->doc);
}

void mgmt_reply_overview(mgmt_req_t *r, cJSON *overview) { gather_doc(r, G_COUNTS, reply_overview, overview); }

/* ---- vhosts' and exchanges' message_stats: every node's share summed ---- */

static void reply_objstats(struct gather *g)
{
    cJSON *sums = cJSON_CreateObject();
    const cJSON *share;
    cJSON_ArrayForEach(share, list_of(g, "objstats_shares")) sum_numbers(sums, share);
    g->objstats_done(g->r, sums, g->objstats_arg);
}

void mgmt_gather_objstats(mgmt_req_t *r, mgmt_objstats_done done, void *arg)
{
    struct gather *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->objstats_done = done;
    g->objstats_arg = arg;
    start_gather(g, r, G_OBJSTATS, reply_objstats, NULL);
}

/* ---- /api/nodes: the other nodes' figures ---- */

static void add_figures_to(cJSON *node, const cJSON *figures)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(node, "name");
    const cJSON *fname = cJSON_GetObjectItemCaseSensitive(figures, "name");
    if (!cJSON_IsString(name) || !cJSON_IsString(fname) || strcmp(name->valuestring, fname->valuestring) ||
        cJSON_GetObjectItemCaseSensitive(node, "mem_used"))
        return;
    for (const cJSON *f = figures->child; f; f = f->next)
        if (strcmp(f->string, "name") != 0) cJSON_AddItemToObject(node, f->string, cJSON_Duplicate(f, true));
}

static void reply_nodes(struct gather *g)
{
    const cJSON *nodes = list_of(g, "nodes");
    const cJSON *f;
    cJSON_ArrayForEach(f, nodes)
    {
        if (cJSON_IsArray(g->doc)) {
            cJSON *n;
            cJSON_ArrayForEach(n, g->doc) add_figures_to(n, f);
        } else {
            add_figures_to(g->doc, f);
        }
    }
    if (cJSON_IsArray(g->doc)) mgmt_reply_list(g->r, g->doc);
    else mgmt_reply_json(g->r, 200, g->doc);
}

void mgmt_reply_nodes(mgmt_req_t *r, cJSON *nodes) { gather_doc(r, G_NODE, reply_nodes, nodes); }


/* ---- filters ---- */

static bool sees_all(const mgmt_req_t *r) { return mgmt_user_is_monitor(r->user); }

static const char *str_at(const cJSON *o, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool same(const char *a, const char *b) { return a && b && strcmp(a, b) == 0; }

/* Keeps the items of arr for which keep(r, item, arg) holds; returns arr. */
static cJSON *filter(cJSON *arr, mgmt_req_t *r, bool (*keep)(mgmt_req_t *r, const cJSON *o, const void *arg),
                     const void *arg)
{
    cJSON *e = arr ? arr->child : NULL;
    while (e) {
        cJSON *next = e->next;
        if (!keep(r, e, arg)) cJSON_Delete(cJSON_DetachItemViaPointer(arr, e));
        e = next;
    }
    return arr;
}

/* Connections and channels: the user's own, or all for monitors; vhost arg: only that vhost's. */
static bool keep_owned(mgmt_req_t *r, const cJSON *o, const void *vhost)
{
    if (vhost && !same(str_at(o, "vhost"), vhost)) return false;
    return sees_all(r) || same(str_at(o, "user"), r->user->name);
}

static cJSON *detach_list(struct gather *g, const char *key)
{
    cJSON *arr = cJSON_DetachItemFromObjectCaseSensitive(g->lists, key);
    return arr ? arr : cJSON_CreateArray();
}

/* Finds the item named name in arr (detached from it), or NULL. */
static cJSON *take_named(cJSON *arr, const char *name)
{
    for (cJSON *e = arr->child; e; e = e->next)
        if (same(str_at(e, "name"), name)) return cJSON_DetachItemViaPointer(arr, e);
    return NULL;
}

/* ---- connections ---- */

static void reply_connections(struct gather *g)
{
    mgmt_req_t *r = g->r;
    const char *vhost = r->params[0]; /* set for /api/vhosts/{vhost}/connections */
    mgmt_reply_list(r, filter(detach_list(g, "connections"), r, keep_owned, vhost));
}

void mgmt_get_connections(mgmt_req_t *r) { gather(r, G_CONNECTIONS, reply_connections); }
void mgmt_get_vhost_connections(mgmt_req_t *r) { gather(r, G_CONNECTIONS, reply_connections); }

/* A single object: 404 when it is not there, 401 when it is someone else's. */
static void reply_one(mgmt_req_t *r, cJSON *arr, const char *name)
{
    cJSON *o = take_named(arr, name);
    cJSON_Delete(arr);
    if (!o) return mgmt_reply_not_found(r);
    if (!keep_owned(r, o, NULL)) {
        cJSON_Delete(o);
        return mgmt_reply_error(r, 401, "not_authorised", "User not authorised to access object");
    }
    mgmt_reply_json(r, 200, o);
}

static void reply_connection(struct gather *g) { reply_one(g->r, detach_list(g, "connections"), g->r->params[0]); }

void mgmt_get_connection(mgmt_req_t *r) { gather(r, G_CONNECTIONS, reply_connection); }

static bool keep_of_connection(mgmt_req_t *r, const cJSON *o, const void *name)
{
    (void)r;
    return same(str_at(cJSON_GetObjectItemCaseSensitive(o, "connection_details"), "name"), name);
}

static void reply_connection_channels(struct gather *g)
{
    mgmt_req_t *r = g->r;
    cJSON *conns = detach_list(g, "connections");
    cJSON *conn = take_named(conns, r->params[0]);
    cJSON_Delete(conns);
    if (!conn) return mgmt_reply_not_found(r);
    bool allowed = keep_owned(r, conn, NULL);
    cJSON_Delete(conn);
    if (!allowed) return mgmt_reply_error(r, 401, "not_authorised", "User not authorised to access object");
    mgmt_reply_list(r, filter(detach_list(g, "channels"), r, keep_of_connection, r->params[0]));
}

void mgmt_get_connection_channels(mgmt_req_t *r) { gather(r, G_CONNECTIONS | G_CHANNELS, reply_connection_channels); }

/* DELETE: the owner's node closes it (this node at once, others through CONNREG_CALL_CLOSE). */
static void reply_closed(struct gather *g)
{
    if (g->found) mgmt_reply_status(g->r, 204);
    else mgmt_reply_not_found(g->r);
}

static void closed_answered(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error, (void)payload, (void)len;
    struct gather *g = arg;
    if (status == 0) g->found++;
    if (--g->waiting == 0) finish(g);
}

static void close_everywhere(mgmt_req_t *r, const char *reason)
{
    struct gather *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->r = r;
    g->done = reply_closed;
    g->lists = cJSON_CreateObject();
    broker_t *b = r->m->b;
    if (connreg_close(r->params[0], reason && *reason ? reason : "Closed via management plugin")) {
        g->found++;
        return finish(g);
    }
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "name", r->params[0]);
    if (reason) cJSON_AddStringToObject(req, "reason", reason);
    char *payload = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    g->waiting = 1;
    mgmt_t *m = r->m;
    if (payload && m->cl && cl_clustered(m->cl) && b->node_call) {
        struct cl_status *st = calloc(1, sizeof *st);
        if (!st) abort();
        cl_status(m->cl, st);
        for (unsigned i = 0; i < st->n_members; i++) {
            uint32_t id = st->members[i].id;
            if (id == st->node_id || !st->members[i].running) continue;
            g->waiting++;
            if (b->node_call(b->node_ctx, id, CONNREG_CALL_CLOSE, payload, strlen(payload), CLOSE_TIMEOUT,
                             closed_answered, g) != 0)
                g->waiting--;
        }
        free(st);
    }
    free(payload);
    if (--g->waiting == 0) finish(g);
}

/* Who may close it: an administrator, or its own user (checked on the listing first). */
static void delete_checked(struct gather *g)
{
    mgmt_req_t *r = g->r;
    cJSON *conns = detach_list(g, "connections");
    cJSON *conn = take_named(conns, r->params[0]);
    cJSON_Delete(conns);
    if (!conn) return mgmt_reply_not_found(r);
    bool allowed = mgmt_user_has_tag(r->user, "administrator") || same(str_at(conn, "user"), r->user->name);
    cJSON_Delete(conn);
    if (!allowed) return mgmt_reply_error(r, 401, "not_authorised", "User not authorised to access object");
    close_everywhere(r, r->x_reason);
}

void mgmt_delete_connection(mgmt_req_t *r) { gather(r, G_CONNECTIONS, delete_checked); }

/* ---- channels ---- */

static void reply_channels(struct gather *g)
{
    mgmt_req_t *r = g->r;
    mgmt_reply_list(r, filter(detach_list(g, "channels"), r, keep_owned, r->params[0]));
}

void mgmt_get_channels(mgmt_req_t *r) { gather(r, G_CHANNELS, reply_channels); }
void mgmt_get_vhost_channels(mgmt_req_t *r) { gather(r, G_CHANNELS, reply_channels); }

static void reply_channel(struct gather *g) { reply_one(g->r, detach_list(g, "channels"), g->r->params[0]); }

void mgmt_get_channel(mgmt_req_t *r) { gather(r, G_CHANNELS, reply_channel); }

/* ---- consumers ---- */

static bool keep_consumer(mgmt_req_t *r, const cJSON *o, const void *vhost)
{
    const char *vn = str_at(cJSON_GetObjectItemCaseSensitive(o, "queue"), "vhost");
    if (!vn || (vhost && strcmp(vn, vhost) != 0)) return false;
    const vhost_t *vh = br_vhost(r->m->b, vn, strlen(vn));
    return vh && mgmt_vhost_visible(r, vh, false);
}

static void reply_consumers(struct gather *g)
{
    mgmt_req_t *r = g->r;
    mgmt_reply_list(r, filter(detach_list(g, "consumers"), r, keep_consumer, r->params[0]));
}

/* /api/consumers/{vhost}: 404 for an unknown vhost, but (as RabbitMQ 3.10.8) no 401 for one
 * the user has no permissions on: its consumers are just not listed. */
void mgmt_get_consumers(mgmt_req_t *r)
{
    if (r->params[0] && !br_vhost(r->m->b, r->params[0], strlen(r->params[0]))) return mgmt_reply_not_found(r);
    gather(r, G_CONSUMERS, reply_consumers);
}

/* ---- a queue's consumer_details ---- */

static bool keep_queue_consumer(mgmt_req_t *r, const cJSON *o, const void *queue)
{
    (void)r;
    const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "queue"), *want = queue;
    return same(str_at(q, "name"), str_at(want, "name")) && same(str_at(q, "vhost"), str_at(want, "vhost"));
}

static void reply_queue(struct gather *g)
{
    cJSON *want = cJSON_CreateObject();
    cJSON_AddStringToObject(want, "name", g->r->params[1]);
    cJSON_AddStringToObject(want, "vhost", g->r->params[0]);
    cJSON *mine = filter(detach_list(g, "consumers"), g->r, keep_queue_consumer, want);
    cJSON_Delete(want);
    cJSON_DeleteItemFromObjectCaseSensitive(g->doc, "consumer_details");
    cJSON_AddItemToObject(g->doc, "consumer_details", mine);
    mgmt_reply_json(g->r, 200, g->doc);
}

void mgmt_reply_queue(mgmt_req_t *r, cJSON *queue) { gather_doc(r, G_CONSUMERS, reply_queue, queue); }
