/* api_message.c - publishing and getting messages through the API, as RabbitMQ's management UI
 * and rabbitmqadmin do (POST /api/exchanges/{vhost}/{name}/publish, POST
 * /api/queues/{vhost}/{name}/get). Meant for inspection and tests, not throughput.
 *
 * Publish: the JSON properties become the AMQP property list (amqp091/codec.h), the message is
 * routed by the broker (br_publish_target checks the exchange and write permission, br_route
 * finds the queues) and handed to each queue the way its kind takes it (classic here, quorum
 * through its Raft group, classic homed elsewhere forwarded to its home); the answer is
 * {"routed": bool} at once, without waiting for confirms.
 *
 * Get: up to count messages are taken one after the other (quorum queues and queues on other
 * nodes answer asynchronously: the request is answered from the last callback), then all are
 * settled as ackmode says - ack_requeue_true / reject_requeue_true put them back (redelivered),
 * ack_requeue_false removes them, reject_requeue_false dead-letters them - and returned with
 * their properties and payload (encoding auto: a UTF-8 payload as a string, else base64).
 * Invariant: every message taken is settled exactly once, also when the client is gone. */
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp091/codec.h"
#include "broker/admin.h"
#include "broker/qq.h"
#include "broker/remote.h"
#include "mgmt/internal.h"

#define MGMT_GET_MAX 10000

/* publish and get need a body: an empty one is 400 "not_json" too, as RabbitMQ answers. */
static cJSON *message_request(mgmt_req_t *r)
{
    if (r->body_len) return mgmt_body_object(r);
    mgmt_reply_error(r, 400, "bad_request", "not_json");
    return NULL;
}

static vhost_t *req_vhost(mgmt_req_t *r) { return br_vhost(r->m->b, r->params[0], strlen(r->params[0])); }

/* ---- properties: JSON <-> AMQP ---- */

static const struct {
    const char *name;
    uint16_t flag;
    size_t off;
} str_props[] = {
    {"content_type", AMQP_P_CONTENT_TYPE, offsetof(amqp_props_t, content_type)},
    {"content_encoding", AMQP_P_CONTENT_ENCODING, offsetof(amqp_props_t, content_encoding)},
    {"correlation_id", AMQP_P_CORRELATION_ID, offsetof(amqp_props_t, correlation_id)},
    {"reply_to", AMQP_P_REPLY_TO, offsetof(amqp_props_t, reply_to)},
    {"expiration", AMQP_P_EXPIRATION, offsetof(amqp_props_t, expiration)},
    {"message_id", AMQP_P_MESSAGE_ID, offsetof(amqp_props_t, message_id)},
    {"type", AMQP_P_TYPE, offsetof(amqp_props_t, type)},
    {"user_id", AMQP_P_USER_ID, offsetof(amqp_props_t, user_id)},
    {"app_id", AMQP_P_APP_ID, offsetof(amqp_props_t, app_id)},
    {"cluster_id", AMQP_P_CLUSTER_ID, offsetof(amqp_props_t, cluster_id)},
};
#define N_STR_PROPS (sizeof str_props / sizeof str_props[0])

static amqp_bytes_t *str_prop(amqp_props_t *p, size_t i) { return (amqp_bytes_t *)((char *)p + str_props[i].off); }

static bool digits_only(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9') return false;
    return true;
}

/* JSON properties -> encoded property list in out. NULL, or the reason it is refused. */
static const char *props_from_json(const cJSON *j, const user_t *u, amqp_buf_t *out, amqp_buf_t *headers)
{
    amqp_props_t p = {0};
    for (size_t i = 0; i < N_STR_PROPS; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, str_props[i].name);
        if (!v) continue;
        if (!cJSON_IsString(v) || strlen(v->valuestring) > 255) return "string properties must be short strings";
        p.flags |= str_props[i].flag;
        *str_prop(&p, i) = AMQP_BYTES_CSTR(v->valuestring);
    }
    if ((p.flags & AMQP_P_EXPIRATION) && !digits_only(cJSON_GetObjectItem(j, "expiration")->valuestring))
        return "expiration must be a non-negative integer (milliseconds) as a string";
    if ((p.flags & AMQP_P_USER_ID) && strcmp(cJSON_GetObjectItem(j, "user_id")->valuestring, u->name) != 0)
        return "user_id property set to a user other than the one publishing";
    const cJSON *dm = cJSON_GetObjectItemCaseSensitive(j, "delivery_mode");
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "priority");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "timestamp");
    const cJSON *hd = cJSON_GetObjectItemCaseSensitive(j, "headers");
    if (dm && (!cJSON_IsNumber(dm) || dm->valuedouble < 0 || dm->valuedouble > 255)) return "invalid delivery_mode";
    if (pr && (!cJSON_IsNumber(pr) || pr->valuedouble < 0 || pr->valuedouble > 255)) return "invalid priority";
    if (ts && (!cJSON_IsNumber(ts) || ts->valuedouble < 0)) return "invalid timestamp";
    if (hd && !cJSON_IsObject(hd)) return "headers must be an object";
    if (dm) p.flags |= AMQP_P_DELIVERY_MODE, p.delivery_mode = (uint8_t)dm->valuedouble;
    if (pr) p.flags |= AMQP_P_PRIORITY, p.priority = (uint8_t)pr->valuedouble;
    if (ts) p.flags |= AMQP_P_TIMESTAMP, p.timestamp = (uint64_t)ts->valuedouble;
    if (hd) p.flags |= AMQP_P_HEADERS, p.headers = definitions_json_table(headers, hd);
    amqp_props_encode(out, &p);
    return NULL;
}

static cJSON *props_to_json(const msg_t *m)
{
    cJSON *o = cJSON_CreateObject();
    amqp_props_t p;
    if (amqp_props_decode(m->props, m->props_len, &p) != 0) return o;
    for (size_t i = 0; i < N_STR_PROPS; i++) {
        if (!(p.flags & str_props[i].flag)) continue;
        amqp_bytes_t b = *str_prop(&p, i);
        char *s = strndup((const char *)b.ptr, b.len);
        if (!s) abort();
        cJSON_AddStringToObject(o, str_props[i].name, s);
        free(s);
    }
    if (p.flags & AMQP_P_DELIVERY_MODE) cJSON_AddNumberToObject(o, "delivery_mode", p.delivery_mode);
    if (p.flags & AMQP_P_PRIORITY) cJSON_AddNumberToObject(o, "priority", p.priority);
    if (p.flags & AMQP_P_TIMESTAMP) cJSON_AddNumberToObject(o, "timestamp", (double)p.timestamp);
    if (p.flags & AMQP_P_HEADERS) cJSON_AddItemToObject(o, "headers", mgmt_json_table_raw(p.headers));
    return o;
}

/* ---- publish ---- */

static const char *code_name(int code)
{
    switch (code) {
    case BR_ACCESS_REFUSED: return "ACCESS_REFUSED";
    case BR_NOT_FOUND: return "NOT_FOUND";
    case BR_RESOURCE_LOCKED: return "RESOURCE_LOCKED";
    case BR_PRECONDITION_FAILED: return "PRECONDITION_FAILED";
    case BR_NOT_ALLOWED: return "NOT_ALLOWED";
    default: return "INTERNAL_ERROR";
    }
}

/* A publish refused by the broker: RabbitMQ answers 400 with the channel error's text. */
static void reply_channel_error(mgmt_req_t *r, const br_err_t *err)
{
    char reason[1200];
    snprintf(reason, sizeof reason, "%d %s - %s", err->code, code_name(err->code), err->text);
    mgmt_reply_error(r, 400, "bad_request", reason);
}

static bool deliver(broker_t *b, exchange_t *x, msg_t *m)
{
    if (x->delayed && br_delay_of(m) > 0) {
        b->stat_publish++;
        br_delay_publish(x, m, br_delay_of(m));
        return true;
    }
    ptrvec_t qs = {0};
    br_route(x, m, &qs);
    b->stat_publish++;
    msg_t *stripped = br_strip_bcc(m);
    if (stripped) m = stripped; /* BCC routes but is never delivered */
    size_t taken = 0;
    for (size_t i = 0; i < qs.n; i++) {
        queue_t *q = qs.items[i];
        if (q->qq) taken += qq_publish(q, m, 0, NULL, NULL, 0);
        else if (!rq_remote(q)) taken += (q_publish(q, m), 1);
        else taken += rq_publish(q, m, NULL, NULL, 0);
    }
    if (!taken) b->stat_unroutable++;
    ptrvec_free(&qs);
    if (stripped) msg_unref(stripped);
    return taken > 0;
}

/* The payload as bytes: "string" as is, "base64" decoded. NULL when it is not valid base64. */
static uint8_t *payload_bytes(const char *payload, const char *encoding, size_t *len)
{
    size_t n = strlen(payload);
    uint8_t *out = malloc(n ? n : 1);
    if (!out) abort();
    if (strcmp(encoding, "string") == 0) {
        memcpy(out, payload, n);
        *len = n;
        return out;
    }
    if (sodium_base642bin(out, n ? n : 1, payload, n, " \r\n", len, NULL, sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

void mgmt_post_publish(mgmt_req_t *r)
{
    vhost_t *vh = req_vhost(r);
    const char *name = strcmp(r->params[1], "amq.default") == 0 ? "" : r->params[1];
    cJSON *body = message_request(r);
    if (!body) return;
    const cJSON *rk = cJSON_GetObjectItemCaseSensitive(body, "routing_key");
    const cJSON *payload = cJSON_GetObjectItemCaseSensitive(body, "payload");
    const cJSON *enc = cJSON_GetObjectItemCaseSensitive(body, "payload_encoding");
    const cJSON *props = cJSON_GetObjectItemCaseSensitive(body, "properties");
    const char *why = NULL;
    if (!cJSON_IsString(rk) || !cJSON_IsString(payload) || !cJSON_IsString(enc) || !cJSON_IsObject(props))
        why = "routing_key, payload, payload_encoding and properties are required";
    else if (strcmp(enc->valuestring, "string") != 0 && strcmp(enc->valuestring, "base64") != 0)
        why = "payload_encoding must be string or base64";
    else if (strlen(rk->valuestring) > 255)
        why = "routing_key longer than 255 bytes";
    br_err_t err;
    exchange_t *x = NULL;
    if (!why && br_publish_target(vh, r->user, name, strlen(name), &x, &err)) {
        cJSON_Delete(body);
        return reply_channel_error(r, &err);
    }
    amqp_buf_t raw = {0}, headers = {0};
    if (!why) why = props_from_json(props, r->user, &raw, &headers);
    size_t blen = 0;
    uint8_t *bytes = why ? NULL : payload_bytes(payload->valuestring, enc->valuestring, &blen);
    if (!why && !bytes) why = "payload is not valid base64";
    if (!why && blen > r->m->cfg->max_message_size) why = "message larger than max_message_size";
    if (why) {
        mgmt_reply_error(r, 400, "bad_request", why);
    } else {
        msg_t *m = msg_new(x->name, x->name_len, rk->valuestring, strlen(rk->valuestring), raw.data, raw.len, blen);
        memcpy(m->body, bytes, blen);
        amqp_props_t p;
        if (amqp_props_decode(raw.data, raw.len, &p) == 0) {
            m->persistent = (p.flags & AMQP_P_DELIVERY_MODE) && p.delivery_mode == 2;
            m->priority = (p.flags & AMQP_P_PRIORITY) ? p.priority : 0;
        }
        m->id = r->m->b->next_msg_id++;
        bool routed = deliver(r->m->b, x, m);
        msg_unref(m);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "routed", routed);
        mgmt_reply_json(r, 200, o);
    }
    free(bytes);
    amqp_buf_free(&raw);
    amqp_buf_free(&headers);
    cJSON_Delete(body);
}

/* ---- get ---- */

enum ackmode { ACK_REQUEUE, ACK_REMOVE, REJECT_REQUEUE, REJECT_DISCARD };

struct get_req {
    mgmt_req_t *r;
    queue_t *q; /* referenced */
    enum ackmode mode;
    bool base64;
    long truncate; /* -1: whole payload */
    long want;
    size_t n, cap;
    qentry_t *got;
    uint32_t *counts; /* message_count after each */
};

static cJSON *message_json(const struct get_req *g, const qentry_t *e, uint32_t count)
{
    const msg_t *m = e->m;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "payload_bytes", (double)m->body_len);
    cJSON_AddBoolToObject(o, "redelivered", e->redelivered);
    cJSON_AddStringToObject(o, "exchange", m->exchange);
    cJSON_AddStringToObject(o, "routing_key", m->rk);
    cJSON_AddNumberToObject(o, "message_count", count);
    cJSON_AddItemToObject(o, "properties", props_to_json(m));
    size_t n = m->body ? (size_t)m->body_len : 0;
    if (g->truncate >= 0 && (size_t)g->truncate < n) n = (size_t)g->truncate;
    char *text = NULL;
    bool utf8 = !g->base64 && m->body && memchr(m->body, 0, n) == NULL;
    if (utf8) {
        text = strndup((const char *)m->body, n);
        if (!text) abort();
    }
    if (utf8) { /* valid UTF-8? */
        const unsigned char *p = (const unsigned char *)text;
        for (size_t i = 0; i < n && utf8;) {
            unsigned c = p[i];
            size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
            if (!len || i + len > n) utf8 = false;
            for (size_t k = 1; k < len && utf8; k++) utf8 = (p[i + k] & 0xC0) == 0x80;
            i += len ? len : 1;
        }
    }
    if (utf8) {
        cJSON_AddStringToObject(o, "payload", text);
        cJSON_AddStringToObject(o, "payload_encoding", "string");
    } else {
        size_t cap = sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL);
        char *b64 = malloc(cap);
        if (!b64) abort();
        sodium_bin2base64(b64, cap, m->body ? m->body : (const uint8_t *)"", n, sodium_base64_VARIANT_ORIGINAL);
        cJSON_AddStringToObject(o, "payload", b64);
        cJSON_AddStringToObject(o, "payload_encoding", "base64");
        free(b64);
    }
    free(text);
    return o;
}

/* Settles everything taken, answers (when the client is still there) and frees g. */
static void get_finish(struct get_req *g, const br_err_t *err)
{
    cJSON *arr = err ? NULL : cJSON_CreateArray();
    for (size_t i = 0; i < g->n; i++) {
        if (arr) cJSON_AddItemToArray(arr, message_json(g, &g->got[i], g->counts[i]));
        qentry_t *e = &g->got[i];
        if (g->mode == ACK_REMOVE) q_ack(g->q, e);
        else if (g->mode == REJECT_DISCARD) q_discard(g->q, e);
        else q_requeue(g->q, e);
    }
    if (err) mgmt_reply_br_error(g->r, err);
    else mgmt_reply_json(g->r, 200, arr);
    q_unref(g->q);
    free(g->got);
    free(g->counts);
    free(g);
}

static void get_next(struct get_req *g);

static void took(struct get_req *g, const qentry_t *e, uint32_t count)
{
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 8;
        g->got = realloc(g->got, g->cap * sizeof *g->got);
        g->counts = realloc(g->counts, g->cap * sizeof *g->counts);
        if (!g->got || !g->counts) abort();
    }
    g->got[g->n] = *e;
    g->counts[g->n++] = count;
    g->q->vh->broker->stat_deliver++;
}

static void got_async(void *arg, const br_err_t *err, const qentry_t *e, uint32_t message_count)
{
    struct get_req *g = arg;
    if (err || !e) return get_finish(g, g->n ? NULL : err);
    took(g, e, message_count);
    get_next(g);
}

static void get_next(struct get_req *g)
{
    queue_t *q = g->q;
    while ((long)g->n < g->want) {
        if (q->deleted) return get_finish(g, NULL);
        if (q->qq) return qq_get(q, false, mgmt_qq_channel(g->r->m), got_async, g);
        if (rq_remote(q)) return rq_get(q, false, got_async, g);
        qentry_t e;
        if (!q_get(q, &e)) break;
        took(g, &e, q_message_count(q));
    }
    get_finish(g, NULL);
}

uint64_t mgmt_qq_channel(mgmt_t *m)
{
    if (!m->qq_chan) m->qq_chan = qq_channel_id(m->b);
    return m->qq_chan;
}

/* A number, or a string of digits (rabbitmqadmin sends "count": "1"); -1 when neither. */
static double number_of(const cJSON *v)
{
    if (cJSON_IsNumber(v)) return v->valuedouble;
    if (cJSON_IsString(v) && digits_only(v->valuestring) && strlen(v->valuestring) < 10) return atof(v->valuestring);
    return -1;
}

static bool parse_ackmode(const char *s, enum ackmode *out)
{
    static const char *const names[] = {"ack_requeue_true", "ack_requeue_false", "reject_requeue_true",
                                        "reject_requeue_false"};
    static const enum ackmode modes[] = {ACK_REQUEUE, ACK_REMOVE, REJECT_REQUEUE, REJECT_DISCARD};
    for (size_t i = 0; i < 4; i++)
        if (strcmp(s, names[i]) == 0) return *out = modes[i], true;
    return false;
}

void mgmt_post_get(mgmt_req_t *r)
{
    vhost_t *vh = req_vhost(r);
    const char *name = r->params[1];
    if (!br_queue(vh, name, strlen(name))) {
        char reason[600];
        snprintf(reason, sizeof reason, "NOT_FOUND - no queue '%s' in vhost '%s'", name, vh->name);
        return mgmt_reply_error(r, 404, "not_found", reason);
    }
    cJSON *body = message_request(r);
    if (!body) return;
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(body, "count");
    const cJSON *ackmode = cJSON_GetObjectItemCaseSensitive(body, "ackmode");
    const cJSON *enc = cJSON_GetObjectItemCaseSensitive(body, "encoding");
    const cJSON *trunc = cJSON_GetObjectItemCaseSensitive(body, "truncate");
    enum ackmode mode = ACK_REQUEUE;
    const char *why = NULL;
    double want = number_of(count), cut = trunc && !cJSON_IsNull(trunc) ? number_of(trunc) : -2;
    if (want < 1 || want > MGMT_GET_MAX)
        why = "count must be a number from 1 to 10000";
    else if (!cJSON_IsString(ackmode) || !parse_ackmode(ackmode->valuestring, &mode))
        why = "ackmode must be ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false";
    else if (!cJSON_IsString(enc) || (strcmp(enc->valuestring, "auto") != 0 && strcmp(enc->valuestring, "base64") != 0))
        why = "encoding must be auto or base64";
    else if (cut == -1)
        why = "truncate must be a non-negative number";
    if (why) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request", why);
    }
    br_err_t err;
    queue_t *q;
    if (br_queue_for_read(vh, r->user, 0, name, strlen(name), &q, &err)) {
        cJSON_Delete(body);
        return mgmt_reply_br_error(r, &err);
    }
    if (q->qq && q->sac) {
        cJSON_Delete(body);
        return mgmt_reply_error(r, 400, "bad_request",
                                "basic.get operations are not supported by quorum queues with single active consumer");
    }
    if (rq_remote(q) && rq_unavailable(q, &err)) {
        cJSON_Delete(body);
        return mgmt_reply_br_error(r, &err);
    }
    struct get_req *g = calloc(1, sizeof *g);
    if (!g) abort();
    g->r = r;
    g->q = q;
    q_ref(q);
    g->mode = mode;
    g->base64 = strcmp(enc->valuestring, "base64") == 0;
    g->truncate = cut >= 0 ? (long)cut : -1;
    g->want = (long)want;
    cJSON_Delete(body);
    get_next(g);
}
