/* connreg_api.c - the management API's view of the connection registry (see connreg.h):
 * RabbitMQ 3.10's connection, channel and consumer objects, the byte rates, and the calls
 * through which one node's API lists and closes the connections of every other node.
 *
 * Data flow: every listing first refreshes the registry (connreg_refresh: the adapters describe
 * their connections now), then builds JSON from the entries and, for channels and consumers,
 * from the adapters' each_channel / each_consumer callbacks. Nothing is cached except the
 * previous byte counters of each entry, which the rates need (connreg_sample, called by the
 * management API's 5 s sampling timer).
 *
 * Shapes (field names, types, nulls) follow RabbitMQ 3.10.8: a connection's name is
 * "peer_host:peer_port -> host:port" and connected_at is in ms; a channel is named
 * "<connection> (<number>)"; a consumer names its queue {name, vhost} and its channel. */
#include "broker/connreg.h"
#include "broker/nodeinfo.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"

size_t connreg_channel_count(void)
{
    size_t n = 0;
    for (const connreg_entry_t *e = connreg_refresh(); e; e = e->next) n += e->channels;
    return n;
}

/* A channel's message_stats counters at the previous sample, and the rates between samples. */
enum { CR_PUBLISH, CR_CONFIRM, CR_DELIVER, CR_DELIVER_NO_ACK, CR_GET, CR_GET_NO_ACK, CR_ACK, CR_REDELIVER, CR_N };
struct connreg_chan_rates {
    uint16_t number;
    uint64_t prev[CR_N];
    double rate[CR_N];
};

static void chan_counters(const struct connreg_chan_info *ch, uint64_t out[CR_N])
{
    out[CR_PUBLISH] = ch->publish, out[CR_CONFIRM] = ch->confirmed, out[CR_DELIVER] = ch->deliver;
    out[CR_DELIVER_NO_ACK] = ch->deliver_no_ack, out[CR_GET] = ch->get, out[CR_GET_NO_ACK] = ch->get_no_ack;
    out[CR_ACK] = ch->ack, out[CR_REDELIVER] = ch->redeliver;
}

static struct connreg_chan_rates *chan_rates_of(const connreg_entry_t *e, uint16_t number)
{
    for (size_t i = 0; i < e->n_chan_rates; i++)
        if (e->chan_rates[i].number == number) return &e->chan_rates[i];
    return NULL;
}

/* One sampling pass over a connection's channels: the new table replaces the old one, so
 * closed channels drop out. */
struct chan_pass {
    const connreg_entry_t *e;
    struct connreg_chan_rates *next;
    size_t n, cap;
    double dt;
};

static void sample_channel(void *arg, const struct connreg_chan_info *ch)
{
    struct chan_pass *p = arg;
    if (p->n == p->cap) {
        p->cap = p->cap ? p->cap * 2 : 4;
        p->next = realloc(p->next, p->cap * sizeof *p->next);
        if (!p->next) abort();
    }
    struct connreg_chan_rates *s = &p->next[p->n++], *old = chan_rates_of(p->e, ch->number);
    s->number = ch->number;
    chan_counters(ch, s->prev);
    for (int i = 0; i < CR_N; i++)
        s->rate[i] = old && p->dt > 0 && s->prev[i] >= old->prev[i] ? (double)(s->prev[i] - old->prev[i]) / p->dt : 0;
}

void connreg_sample(double now)
{
    for (connreg_entry_t *e = connreg_refresh(); e; e = e->next) {
        double dt = now - e->sampled_at;
        bool first = e->sampled_at == 0;
        e->recv_rate = first || dt <= 0 ? 0 : (double)(e->recv_oct - e->prev_recv) / dt;
        e->send_rate = first || dt <= 0 ? 0 : (double)(e->send_oct - e->prev_send) / dt;
        e->prev_recv = e->recv_oct, e->prev_send = e->send_oct;
        e->sampled_at = now;
        if (!e->each_channel) continue;
        struct chan_pass p = {.e = e, .dt = first ? 0 : dt};
        e->each_channel(e->ctx, sample_channel, &p);
        free(e->chan_rates);
        e->chan_rates = p.next;
        e->n_chan_rates = p.n;
    }
}

/* ---- JSON ---- */

static cJSON *value_json(const amqp_value_t *v);

static cJSON *bytes_json(amqp_bytes_t s)
{
    char *t = strndup((const char *)s.ptr, s.len);
    if (!t) abort();
    cJSON *j = cJSON_CreateString(t);
    free(t);
    return j;
}

static cJSON *table_json(const amqp_table_t *t)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; i < t->n; i++) {
        char *key = strndup((const char *)t->fields[i].key.ptr, t->fields[i].key.len);
        if (!key) abort();
        cJSON_AddItemToObject(o, key, value_json(&t->fields[i].value));
        free(key);
    }
    return o;
}

/* AMQP values as RabbitMQ renders them in JSON (numbers, strings, booleans, objects, lists). */
static cJSON *value_json(const amqp_value_t *v)
{
    int64_t n;
    switch (v->type) {
    case 't': return cJSON_CreateBool(v->v.b);
    case 'd': return cJSON_CreateNumber(v->v.d);
    case 'f': return cJSON_CreateNumber(v->v.f);
    case 'S':
    case 'x': return bytes_json(v->v.str);
    case 'F': return table_json(&v->v.table);
    case 'A': {
        cJSON *arr = cJSON_CreateArray();
        for (size_t k = 0; k < v->v.array.n; k++) cJSON_AddItemToArray(arr, value_json(&v->v.array.items[k]));
        return arr;
    }
    default: return amqp_value_int(v, &n) ? cJSON_CreateNumber((double)n) : cJSON_CreateNull();
    }
}

static cJSON *props_json(amqp_bytes_t raw)
{
    amqp_table_t t = {0};
    if (!raw.len || amqp_table_parse(raw, &t) != 0) return cJSON_CreateObject();
    cJSON *o = table_json(&t);
    amqp_table_free(&t);
    return o;
}

static void add_str_or_null(cJSON *o, const char *key, const char *v)
{
    if (v) cJSON_AddStringToObject(o, key, v);
    else cJSON_AddNullToObject(o, key);
}

static void add_rate(cJSON *o, const char *key, uint64_t n, double rate)
{
    char name[64];
    cJSON_AddNumberToObject(o, key, (double)n);
    snprintf(name, sizeof name, "%s_details", key);
    cJSON *d = cJSON_AddObjectToObject(o, name);
    cJSON_AddNumberToObject(d, "rate", rate);
}

static cJSON *conn_json(const connreg_entry_t *e, const char *node)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", e->name);
    cJSON_AddStringToObject(o, "node", node);
    cJSON_AddStringToObject(o, "type", "network");
    cJSON_AddStringToObject(o, "protocol", e->protocol ? e->protocol : "AMQP 0-9-1");
    cJSON_AddStringToObject(o, "state", e->state);
    add_str_or_null(o, "user", *e->user ? e->user : NULL);
    add_str_or_null(o, "user_who_performed_action", *e->user ? e->user : NULL);
    add_str_or_null(o, "vhost", *e->vhost ? e->vhost : NULL);
    cJSON_AddStringToObject(o, "auth_mechanism", e->auth_mechanism ? e->auth_mechanism : "PLAIN");
    cJSON_AddStringToObject(o, "peer_host", e->peer_host);
    cJSON_AddNumberToObject(o, "peer_port", e->peer_port);
    cJSON_AddStringToObject(o, "host", e->host);
    cJSON_AddNumberToObject(o, "port", e->port);
    cJSON_AddBoolToObject(o, "ssl", e->tls);
    add_str_or_null(o, "ssl_protocol", e->tls ? e->ssl_protocol : NULL);
    cJSON_AddNullToObject(o, "ssl_cipher");
    cJSON_AddNullToObject(o, "ssl_hash");
    cJSON_AddNullToObject(o, "ssl_key_exchange");
    cJSON_AddNullToObject(o, "peer_cert_issuer");
    cJSON_AddNullToObject(o, "peer_cert_subject");
    cJSON_AddNullToObject(o, "peer_cert_validity");
    cJSON_AddNumberToObject(o, "channels", e->channels);
    cJSON_AddNumberToObject(o, "channel_max", e->channel_max);
    cJSON_AddNumberToObject(o, "frame_max", e->frame_max);
    cJSON_AddNumberToObject(o, "timeout", e->heartbeat);
    cJSON_AddNumberToObject(o, "connected_at", (double)(int64_t)(e->connected_at * 1000));
    cJSON *props = props_json(e->client_properties);
    const cJSON *upn = cJSON_GetObjectItemCaseSensitive(props, "connection_name");
    if (cJSON_IsString(upn)) cJSON_AddStringToObject(o, "user_provided_name", upn->valuestring);
    cJSON_AddItemToObject(o, "client_properties", props);
    add_rate(o, "recv_oct", e->recv_oct, e->recv_rate);
    add_rate(o, "send_oct", e->send_oct, e->send_rate);
    cJSON_AddNumberToObject(o, "recv_cnt", (double)e->recv_cnt);
    cJSON_AddNumberToObject(o, "send_cnt", (double)e->send_cnt);
    cJSON_AddNumberToObject(o, "send_pend", (double)e->send_pend);
    cJSON_AddNumberToObject(o, "reductions", 0);
    cJSON_AddObjectToObject(o, "garbage_collection");
    return o;
}

cJSON *connreg_connections_json(const char *node)
{
    cJSON *arr = cJSON_CreateArray();
    for (const connreg_entry_t *e = connreg_refresh(); e; e = e->next) cJSON_AddItemToArray(arr, conn_json(e, node));
    return arr;
}

/* What channel and consumer objects repeat of their connection. */
struct conn_ctx {
    const connreg_entry_t *e;
    cJSON *arr;
    const char *node, *vhost, *user, *peer_host;
    int peer_port;
    char name[300];
};

static void ctx_init(struct conn_ctx *x, cJSON *arr, const char *node, const connreg_entry_t *e)
{
    x->e = e;
    x->arr = arr;
    x->node = node;
    x->vhost = e->vhost;
    x->user = e->user;
    x->peer_host = e->peer_host;
    x->peer_port = e->peer_port;
    snprintf(x->name, sizeof x->name, "%s", e->name);
}

/* The counters with the rates of the last sample (0 for a channel not sampled yet). */
static void add_message_stats(cJSON *o, const connreg_entry_t *e, const struct connreg_chan_info *ch)
{
    static const char *const names[CR_N] = {"publish", "confirm", "deliver", "deliver_no_ack",
                                            "get", "get_no_ack", "ack", "redeliver"};
    const struct connreg_chan_rates *r = chan_rates_of(e, ch->number);
    uint64_t n[CR_N];
    chan_counters(ch, n);
    cJSON *s = cJSON_AddObjectToObject(o, "message_stats");
    for (int i = 0; i < CR_N; i++) add_rate(s, names[i], n[i], r ? r->rate[i] : 0);
    double dg = r ? r->rate[CR_DELIVER] + r->rate[CR_DELIVER_NO_ACK] + r->rate[CR_GET] + r->rate[CR_GET_NO_ACK] : 0;
    add_rate(s, "deliver_get", n[CR_DELIVER] + n[CR_DELIVER_NO_ACK] + n[CR_GET] + n[CR_GET_NO_ACK], dg);
}

static void add_channel(void *arg, const struct connreg_chan_info *ch)
{
    struct conn_ctx *x = arg;
    char name[320];
    snprintf(name, sizeof name, "%s (%u)", x->name, (unsigned)ch->number);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddNumberToObject(o, "number", ch->number);
    cJSON_AddStringToObject(o, "node", x->node);
    cJSON_AddStringToObject(o, "state", "running");
    cJSON_AddStringToObject(o, "user", x->user);
    cJSON_AddStringToObject(o, "user_who_performed_action", x->user);
    cJSON_AddStringToObject(o, "vhost", x->vhost);
    cJSON *cd = cJSON_AddObjectToObject(o, "connection_details");
    cJSON_AddStringToObject(cd, "name", x->name);
    cJSON_AddStringToObject(cd, "peer_host", x->peer_host);
    cJSON_AddNumberToObject(cd, "peer_port", x->peer_port);
    cJSON_AddNumberToObject(o, "consumer_count", ch->consumers);
    cJSON_AddNumberToObject(o, "prefetch_count", ch->prefetch);
    cJSON_AddNumberToObject(o, "global_prefetch_count", ch->global_prefetch);
    cJSON_AddBoolToObject(o, "confirm", ch->confirm);
    cJSON_AddBoolToObject(o, "transactional", ch->transactional);
    cJSON_AddNumberToObject(o, "messages_unacknowledged", ch->unacked);
    cJSON_AddNumberToObject(o, "messages_unconfirmed", ch->unconfirmed);
    cJSON_AddNumberToObject(o, "messages_uncommitted", ch->uncommitted);
    cJSON_AddNumberToObject(o, "acks_uncommitted", 0);
    cJSON_AddNumberToObject(o, "pending_raft_commands", 0);
    cJSON_AddNumberToObject(o, "reductions", 0);
    cJSON_AddObjectToObject(o, "garbage_collection");
    add_message_stats(o, x->e, ch);
    cJSON_AddItemToArray(x->arr, o);
}

cJSON *connreg_channels_json(const char *node)
{
    cJSON *arr = cJSON_CreateArray();
    for (const connreg_entry_t *e = connreg_refresh(); e; e = e->next) {
        if (!e->each_channel) continue;
        struct conn_ctx x;
        ctx_init(&x, arr, node, e);
        e->each_channel(e->ctx, add_channel, &x);
    }
    return arr;
}

static void add_consumer(void *arg, uint16_t channel, const struct connreg_consumer_info *ci)
{
    struct conn_ctx *x = arg;
    if (!ci->queue) return;
    char name[320];
    snprintf(name, sizeof name, "%s (%u)", x->name, (unsigned)channel);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "consumer_tag", ci->tag);
    cJSON *q = cJSON_AddObjectToObject(o, "queue");
    cJSON_AddStringToObject(q, "name", ci->queue);
    cJSON_AddStringToObject(q, "vhost", ci->vhost);
    cJSON *cd = cJSON_AddObjectToObject(o, "channel_details");
    cJSON_AddStringToObject(cd, "name", name);
    cJSON_AddNumberToObject(cd, "number", channel);
    cJSON_AddStringToObject(cd, "node", x->node);
    cJSON_AddStringToObject(cd, "connection_name", x->name);
    cJSON_AddStringToObject(cd, "peer_host", x->peer_host);
    cJSON_AddNumberToObject(cd, "peer_port", x->peer_port);
    cJSON_AddStringToObject(cd, "user", x->user);
    cJSON_AddBoolToObject(o, "ack_required", ci->ack_required);
    cJSON_AddNumberToObject(o, "prefetch_count", ci->prefetch);
    cJSON_AddBoolToObject(o, "exclusive", ci->exclusive);
    cJSON_AddBoolToObject(o, "active", ci->active);
    cJSON_AddStringToObject(o, "activity_status", ci->active ? "up" : "waiting");
    cJSON *args = cJSON_AddObjectToObject(o, "arguments");
    if (ci->priority) cJSON_AddNumberToObject(args, "x-priority", ci->priority);
    cJSON_AddItemToArray(x->arr, o);
}

cJSON *connreg_consumers_json(const char *node)
{
    cJSON *arr = cJSON_CreateArray();
    for (const connreg_entry_t *e = connreg_refresh(); e; e = e->next) {
        if (!e->each_consumer) continue;
        struct conn_ctx x;
        ctx_init(&x, arr, node, e);
        e->each_consumer(e->ctx, add_consumer, &x);
    }
    return arr;
}

/* ---- calls from other nodes (the management API gathering cluster-wide lists) ---- */

static const char *self_name(broker_t *b)
{
    const char *n = b->node_name ? b->node_name(b->node_ctx, b->self_node) : NULL;
    return n ? n : b->cfg->node_name;
}

static void reply_json(broker_t *b, const struct peer_reply_to *to, cJSON *o)
{
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text) b->node_reply(b->node_ctx, to, 0, NULL, text, strlen(text));
    else b->node_reply(b->node_ctx, to, BR_INTERNAL_ERROR, "out of memory", NULL, 0);
    free(text);
}

static connreg_share_fn share_fn; /* one management plugin per process */
static void *share_ctx;

void connreg_set_share_fn(connreg_share_fn fn, void *ctx)
{
    share_fn = fn;
    share_ctx = ctx;
}

static void add_share(cJSON *o, const char *key)
{
    cJSON *share = share_fn ? share_fn(share_ctx, key) : NULL;
    if (share) cJSON_AddItemToObject(o, key, share);
}

static bool want(const cJSON *req, const char *key) { return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, key)); }

cJSON *connreg_lists_json(broker_t *b, const cJSON *req)
{
    const char *node = self_name(b);
    cJSON *o = cJSON_CreateObject();
    if (want(req, "connections")) cJSON_AddItemToObject(o, "connections", connreg_connections_json(node));
    if (want(req, "channels")) cJSON_AddItemToObject(o, "channels", connreg_channels_json(node));
    if (want(req, "consumers")) cJSON_AddItemToObject(o, "consumers", connreg_consumers_json(node));
    if (want(req, "node")) { /* /api/nodes: this node's figures */
        cJSON *n = cJSON_AddObjectToObject(o, "node");
        cJSON_AddStringToObject(n, "name", node);
        ni_add_figures(b, n);
    }
    if (want(req, "counts")) { /* the overview's object_totals, without the lists */
        cJSON *n = cJSON_AddObjectToObject(o, "counts");
        cJSON_AddNumberToObject(n, "connections", (double)connreg_count());
        cJSON_AddNumberToObject(n, "channels", (double)connreg_channel_count());
        add_share(o, "overview");
    }
    if (want(req, "objstats")) add_share(o, "objstats");
    return o;
}

void connreg_handle_call(broker_t *b, uint32_t from, const char *method, const void *payload, size_t len,
                    const struct peer_reply_to *to)
{
    (void)from;
    cJSON *req = len ? cJSON_ParseWithLength(payload, len) : NULL;
    if (!cJSON_IsObject(req)) {
        cJSON_Delete(req);
        b->node_reply(b->node_ctx, to, BR_COMMAND_INVALID, "malformed request", NULL, 0);
        return;
    }
    if (strcmp(method, CONNREG_CALL_LIST) == 0) {
        reply_json(b, to, connreg_lists_json(b, req));
    } else if (strcmp(method, CONNREG_CALL_CLOSE) == 0) {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(req, "name");
        const cJSON *reason = cJSON_GetObjectItemCaseSensitive(req, "reason");
        bool closed = cJSON_IsString(name) &&
                      connreg_close(name->valuestring, cJSON_IsString(reason) && *reason->valuestring
                                                           ? reason->valuestring
                                                           : "Closed via management plugin");
        if (closed) b->node_reply(b->node_ctx, to, 0, NULL, "{}", 2);
        else b->node_reply(b->node_ctx, to, BR_NOT_FOUND, "no such connection", NULL, 0);
    } else {
        b->node_reply(b->node_ctx, to, BR_NOT_IMPLEMENTED, "no handler for this call", NULL, 0);
    }
    cJSON_Delete(req);
}
