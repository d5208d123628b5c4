/* json.c - broker objects as the JSON objects of RabbitMQ's management API.
 *
 * Field names and types follow RabbitMQ 3.10's responses (checked against a running 3.10.8):
 * queues (name, vhost, type, durable, auto_delete, exclusive, arguments, node, state, policy,
 * consumers, messages*, message_stats; quorum queues add leader, members, online), exchanges,
 * bindings (with properties_key), users. AMQP field tables become JSON the way RabbitMQ renders
 * them: integers as numbers, strings as strings, tables as objects, arrays as arrays.
 *
 * Rates (*_details.rate) come from rates.c's samples; a queue's figures and rates from
 * qgather.c's mgmt_qfig (the home's for classic queues homed on another node). Read-only: nothing here changes the registry (q_message_count
 * drops expired heads, as any count does). */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/qq.h"
#include "mgmt/internal.h"
#include "mgmt/qgather.h"

const char *ex_type_name(ex_type_t t); /* broker/exchange.c */

/* ---- values ---- */

static cJSON *json_value(const amqp_value_t *v);

cJSON *mgmt_json_table(const amqp_table_t *t)
{
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; t && i < t->n; i++) {
        char *key = strndup((const char *)t->fields[i].key.ptr, t->fields[i].key.len);
        if (!key) abort();
        cJSON_AddItemToObject(o, key, json_value(&t->fields[i].value));
        free(key);
    }
    return o;
}

cJSON *mgmt_json_table_raw(amqp_bytes_t raw)
{
    amqp_table_t t = {0};
    if (!raw.len || amqp_table_parse(raw, &t) != 0) return cJSON_CreateObject();
    cJSON *o = mgmt_json_table(&t);
    amqp_table_free(&t);
    return o;
}

static cJSON *json_bytes(amqp_bytes_t b)
{
    char *s = strndup((const char *)b.ptr, b.len);
    if (!s) abort();
    cJSON *j = cJSON_CreateString(s);
    free(s);
    return j;
}

static cJSON *json_value(const amqp_value_t *v)
{
    int64_t i;
    switch (v->type) {
    case 't': return cJSON_CreateBool(v->v.b);
    case 'd': return cJSON_CreateNumber(v->v.d);
    case 'f': return cJSON_CreateNumber(v->v.f);
    case 'S':
    case 'x': return json_bytes(v->v.str);
    case 'F': return mgmt_json_table(&v->v.table);
    case 'A': {
        cJSON *arr = cJSON_CreateArray();
        for (size_t k = 0; k < v->v.array.n; k++) cJSON_AddItemToArray(arr, json_value(&v->v.array.items[k]));
        return arr;
    }
    case 'V': return cJSON_CreateNull();
    default:
        if (amqp_value_int(v, &i)) return cJSON_CreateNumber((double)i);
        return cJSON_CreateNull();
    }
}

cJSON *mgmt_json_tags(const char *tags)
{
    cJSON *arr = cJSON_CreateArray();
    const char *p = tags ? tags : "";
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && p[m - 1] == ' ') m--;
        if (m) cJSON_AddItemToArray(arr, json_bytes((amqp_bytes_t){(const uint8_t *)p, m}));
        p += n;
    }
    return arr;
}

/* ---- nodes ---- */

const char *mgmt_node_name(mgmt_t *m, uint32_t id, char *buf, size_t len)
{
    const char *name = m->cl && id ? cl_node_name(m->cl, id) : NULL;
    uint32_t self = m->b->self_node ? m->b->self_node : 1; /* unclustered quorum queues: node 1 */
    if (!name && (id == 0 || id == self)) name = m->cl ? cl_self_name(m->cl) : m->cfg->node_name;
    if (name) return name;
    snprintf(buf, len, "node-%u", id);
    return buf;
}

cJSON *mgmt_json_node_name(mgmt_t *m, uint32_t id)
{
    char buf[32];
    return cJSON_CreateString(mgmt_node_name(m, id, buf, sizeof buf));
}

static bool node_online(mgmt_t *m, uint32_t id)
{
    broker_t *b = m->b;
    return id == b->self_node || !b->node_is_up || b->node_is_up(b->node_ctx, id);
}

/* ---- queues ---- */

void mgmt_json_count(cJSON *o, const char *name, uint64_t n, double rate)
{
    cJSON_AddNumberToObject(o, name, (double)n);
    char key[80];
    snprintf(key, sizeof key, "%s_details", name);
    cJSON *d = cJSON_AddObjectToObject(o, key);
    cJSON_AddNumberToObject(d, "rate", rate);
}

/* message_stats from the figures' counters and rates (the home's, or the cluster's sum). */
static cJSON *queue_message_stats(const struct qs_fig *f)
{
    cJSON *s = cJSON_CreateObject();
    mgmt_json_count(s, "publish", f->publish, f->rate[QS_RATE_PUBLISH]);
    mgmt_json_count(s, "deliver", f->deliver, f->rate[QS_RATE_DELIVER]);
    mgmt_json_count(s, "get", f->get, f->rate[QS_RATE_GET]);
    mgmt_json_count(s, "deliver_get", f->deliver + f->get, f->rate[QS_RATE_DELIVER_GET]);
    mgmt_json_count(s, "ack", f->ack, f->rate[QS_RATE_ACK]);
    mgmt_json_count(s, "redeliver", f->redeliver, f->rate[QS_RATE_REDELIVER]);
    return s;
}

static void add_policy(cJSON *o, const char *key, const policy_t *p)
{
    if (p) cJSON_AddStringToObject(o, key, p->name);
    else cJSON_AddNullToObject(o, key);
}

static void add_depth(cJSON *o, const struct qs_fig *f)
{
    mgmt_json_count(o, "messages", f->ready + f->unacked, f->rate[QS_RATE_MESSAGES]);
    mgmt_json_count(o, "messages_ready", f->ready, f->rate[QS_RATE_READY]);
    mgmt_json_count(o, "messages_unacknowledged", f->unacked, f->rate[QS_RATE_UNACKED]);
    cJSON_AddNumberToObject(o, "message_bytes", (double)(f->ready_bytes + f->unacked_bytes));
    cJSON_AddNumberToObject(o, "message_bytes_ready", (double)f->ready_bytes);
    cJSON_AddNumberToObject(o, "message_bytes_unacknowledged", (double)f->unacked_bytes);
}

/* Quorum queues: depth and consumers from a replica (this node's, or one gathered from a member
 * when this node holds none), membership from the replicated record. */
static void add_quorum_fields(mgmt_t *m, cJSON *o, queue_t *q, const struct mgmt_qfig *fig)
{
    struct qq_info info;
    qq_info(q, &info);
    if (fig->known) add_depth(o, &fig->f);
    cJSON_AddNumberToObject(o, "consumers", fig->known ? fig->f.consumers : 0);
    cJSON *members = cJSON_AddArrayToObject(o, "members"), *online = cJSON_AddArrayToObject(o, "online");
    for (unsigned i = 0; i < info.n_members && i < 16; i++) {
        cJSON_AddItemToArray(members, mgmt_json_node_name(m, info.members[i]));
        if (node_online(m, info.members[i])) cJSON_AddItemToArray(online, mgmt_json_node_name(m, info.members[i]));
    }
    if (info.leader) {
        cJSON_AddItemToObject(o, "leader", mgmt_json_node_name(m, info.leader));
        cJSON_AddItemToObject(o, "node", mgmt_json_node_name(m, info.leader));
    } else {
        cJSON_AddNullToObject(o, "leader");
        cJSON_AddItemToObject(o, "node", mgmt_json_node_name(m, q->home));
    }
    if (info.member) {
        cJSON_AddNumberToObject(o, "messages_dlx", (double)info.dlx);
        cJSON_AddNumberToObject(o, "message_bytes_ram", (double)info.bytes_ram);
    }
}

/* Figures come from mgmt_qfig (qgather.c): this node's for its own queues, the home's for a
 * classic queue homed elsewhere (when the request gathered them), the cluster's sums for quorum
 * counters. A classic queue whose home is down or silent is "down", without figures. */
cJSON *mgmt_json_queue(mgmt_t *m, queue_t *q)
{
    struct mgmt_qfig fig;
    mgmt_qfig(m, q, &fig);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", q->name);
    cJSON_AddStringToObject(o, "vhost", q->vh->name);
    cJSON_AddStringToObject(o, "type", q->qq ? "quorum" : "classic");
    cJSON_AddBoolToObject(o, "durable", q->durable);
    cJSON_AddBoolToObject(o, "auto_delete", q->auto_delete);
    cJSON_AddBoolToObject(o, "exclusive", q->exclusive);
    cJSON_AddItemToObject(o, "arguments", mgmt_json_table(&q->args));
    cJSON_AddStringToObject(o, "state", fig.down ? "down" : "running");
    add_policy(o, "policy", q->policy);
    add_policy(o, "operator_policy", q->operator_policy);
    cJSON_AddItemToObject(o, "effective_policy_definition",
                          q->policy ? mgmt_json_table(&q->policy->def) : cJSON_CreateObject());
    if (q->qq) {
        add_quorum_fields(m, o, q, &fig);
    } else {
        if (fig.known) {
            add_depth(o, &fig.f);
            cJSON_AddNumberToObject(o, "consumers", fig.f.consumers);
        }
        cJSON_AddItemToObject(o, "node", mgmt_json_node_name(m, q->home));
    }
    if (fig.stats) cJSON_AddItemToObject(o, "message_stats", queue_message_stats(&fig.f));
    return o;
}

/* ---- exchanges and bindings ---- */

const char *mgmt_exchange_type_name(const exchange_t *x)
{
    return x->delayed ? "x-delayed-message" : ex_type_name(x->type);
}

/* The cluster's message_stats of vhosts and exchanges while a request built from a gather of
 * every node's share is answered (api_conns.c mgmt_gather_objstats); NULL: this node's own. */
static const cJSON *objstats;

void mgmt_objstats_use(const cJSON *sums) { objstats = sums; }

static const cJSON *objstats_at(const char *vhost, const char *exchange)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(objstats, exchange ? "exchanges" : "vhosts");
    o = cJSON_GetObjectItemCaseSensitive(o, vhost);
    return exchange ? cJSON_GetObjectItemCaseSensitive(o, exchange) : o;
}

/* The cluster's figures when gathered: present when any node counted something. */
static bool add_gathered_stats(cJSON *o, const char *vhost, const char *exchange)
{
    if (!objstats) return false;
    const cJSON *s = objstats_at(vhost, exchange);
    if (cJSON_IsObject(s)) cJSON_AddItemToObject(o, "message_stats", cJSON_Duplicate(s, true));
    return true;
}

void mgmt_json_exchange_stats_local(mgmt_t *m, cJSON *o, const exchange_t *x)
{
    if (!x->stat_in) return;
    cJSON *s = cJSON_AddObjectToObject(o, "message_stats");
    mgmt_json_count(s, "publish_in", x->stat_in, mgmt_rate_exchange(m, x, MGMT_RATE_PUBLISH_IN));
    mgmt_json_count(s, "publish_out", x->stat_out, mgmt_rate_exchange(m, x, MGMT_RATE_PUBLISH_OUT));
}

void mgmt_json_exchange_stats(mgmt_t *m, cJSON *o, const exchange_t *x)
{
    if (!add_gathered_stats(o, x->vh->name, x->name)) mgmt_json_exchange_stats_local(m, o, x);
}

void mgmt_json_vhost_stats(mgmt_t *m, cJSON *o, const vhost_t *vh)
{
    if (!add_gathered_stats(o, vh->name, NULL)) mgmt_json_vhost_stats_local(m, o, vh);
}

void mgmt_json_vhost_stats_local(mgmt_t *m, cJSON *o, const vhost_t *vh)
{
    uint64_t c[MGMT_RATE_N];
    mgmt_vhost_counters(vh, c);
    if (!c[MGMT_RATE_PUBLISH] && !c[MGMT_RATE_DELIVER_GET] && !c[MGMT_RATE_ACK]) return;
    static const struct { const char *name; int which; } fields[] = {
        {"publish", MGMT_RATE_PUBLISH},         {"confirm", MGMT_RATE_CONFIRM}, {"deliver", MGMT_RATE_DELIVER},
        {"get", MGMT_RATE_GET},                 {"deliver_get", MGMT_RATE_DELIVER_GET},
        {"ack", MGMT_RATE_ACK},                 {"redeliver", MGMT_RATE_REDELIVER},
    };
    cJSON *s = cJSON_AddObjectToObject(o, "message_stats");
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        mgmt_json_count(s, fields[i].name, c[fields[i].which], mgmt_rate_vhost(m, vh, fields[i].which));
}

cJSON *mgmt_json_exchange(const exchange_t *x)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", x->name);
    cJSON_AddStringToObject(o, "vhost", x->vh->name);
    cJSON_AddStringToObject(o, "type", mgmt_exchange_type_name(x));
    cJSON_AddBoolToObject(o, "durable", x->durable);
    cJSON_AddBoolToObject(o, "auto_delete", x->auto_delete);
    cJSON_AddBoolToObject(o, "internal", x->internal);
    cJSON_AddItemToObject(o, "arguments", mgmt_json_table_raw(x->args_raw));
    return o;
}

void mgmt_url_encode(const char *s, size_t len, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (size_t i = 0; i < len && k + 4 < cap; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (isalnum(ch) || ch == '.' || ch == '-' || ch == '_' || ch == '~') {
            out[k++] = (char)ch;
        } else if (ch == ' ') {
            out[k++] = '+';
        } else {
            out[k++] = '%';
            out[k++] = hex[ch >> 4];
            out[k++] = hex[ch & 15];
        }
    }
    out[k] = '\0';
}

void mgmt_properties_key(const char *key, size_t klen, amqp_bytes_t args, char *out, size_t cap)
{
    mgmt_url_encode(key, klen, out, cap);
    size_t n = strlen(out);
    if (args.len) snprintf(out + n, cap - n, "~%016llx", (unsigned long long)dict_hash(args.ptr, args.len));
    else if (n == 0) snprintf(out, cap, "~");
}

static cJSON *properties_key(const char *key, size_t klen, amqp_bytes_t args)
{
    char buf[1600];
    mgmt_properties_key(key, klen, args, buf, sizeof buf);
    return cJSON_CreateString(buf);
}

static cJSON *binding_json(const char *vhost, const char *src, const char *dest, bool to_queue, const char *key,
                           size_t klen, amqp_bytes_t args)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "source", src);
    cJSON_AddStringToObject(o, "vhost", vhost);
    cJSON_AddStringToObject(o, "destination", dest);
    cJSON_AddStringToObject(o, "destination_type", to_queue ? "queue" : "exchange");
    cJSON_AddItemToObject(o, "routing_key", json_bytes((amqp_bytes_t){(const uint8_t *)key, klen}));
    cJSON_AddItemToObject(o, "arguments", mgmt_json_table_raw(args));
    cJSON_AddItemToObject(o, "properties_key", properties_key(key, klen, args));
    return o;
}

void mgmt_json_bindings(cJSON *arr, vhost_t *vh)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&vh->queues, &pos, NULL, NULL, &v)) { /* the default exchange's */
        queue_t *q = v;
        cJSON_AddItemToArray(arr, binding_json(vh->name, "", q->name, true, q->name, q->name_len, (amqp_bytes_t){0}));
    }
    pos = 0;
    while (dict_next(&vh->exchanges, &pos, NULL, NULL, &v)) {
        exchange_t *x = v;
        for (size_t i = 0; i < x->bindings.n; i++) {
            binding_t *bd = x->bindings.items[i];
            const char *dest = bd->dest_is_queue ? ((queue_t *)bd->dest)->name : ((exchange_t *)bd->dest)->name;
            cJSON_AddItemToArray(arr, binding_json(vh->name, x->name, dest, bd->dest_is_queue, bd->key, bd->key_len,
                                                   bd->args_raw));
        }
    }
}

/* ---- users ---- */

cJSON *mgmt_json_user(const user_t *u)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", u->name);
    cJSON_AddStringToObject(o, "password_hash", u->password_hash ? u->password_hash : "");
    cJSON_AddStringToObject(o, "hashing_algorithm", auth_hash_alg_name(u->hash_alg));
    cJSON_AddItemToObject(o, "tags", mgmt_json_tags(u->tags));
    cJSON_AddItemToObject(o, "limits", cJSON_CreateObject());
    return o;
}
