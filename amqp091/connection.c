/* connection.c - one AMQP 0-9-1 connection: protocol header, handshake, frame parsing,
 * heartbeats, connection exceptions, and the listener that accepts connections.
 *
 * Data flow: net.c hands decrypted bytes to conn_on_data(), which appends them to the input
 * buffer and parses whole frames. Frames on channel 0 drive the handshake state machine
 * (CS_HEADER -> CS_START_OK -> CS_TUNE_OK -> CS_OPEN -> CS_RUNNING); frames on other channels
 * go to channel.c. Output is encoded into conn->out and handed to net.c in one write per
 * batch (conn_flush), which is called after each input burst and after each delivery.
 *
 * A connection exception sends connection.close and moves to CS_CLOSING, where everything but
 * close/close-ok is discarded (as the spec requires); the socket closes on close-ok or after
 * a short grace period. */
#include "amqp091/session.h"
#include "broker/connreg.h"
#include "broker/log.h"
#include "broker/meta.h"
#include "broker/remote.h"

#include <cjson/cJSON.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PRODUCT "Warren"
#define VERSION "0.1.0"
#define INPUT_BUDGET (256 * 1024) /* bytes parsed per wakeup before yielding */

static const uint8_t protocol_header[8] = {'A', 'M', 'Q', 'P', 0, 0, 9, 1};

/* ---- output ---- */

void conn_flush(conn_t *c)
{
    if (!c->out.len || !c->net) return;
    net_write(c->net, c->out.data, c->out.len);
    c->send_oct += c->out.len, c->send_cnt++;
    c->out.len = 0;
    c->last_send = ev_now(c->srv->loop);
    /* Don't keep a huge buffer around after a large message. */
    if (c->out.cap > (1u << 20)) amqp_buf_free(&c->out);
}

void conn_send_method(conn_t *c, uint16_t channel, const amqp_method_t *m)
{
    amqp_encode_method(&c->out, channel, m);
    if (c->out.len > 64 * 1024) conn_flush(c);
}

bool conn_output_blocked(const conn_t *c)
{
    return !c->net || c->state != CS_RUNNING || net_out_pending(c->net) + c->out.len > (128u << 10);
}

/* ---- publisher flow control ----
 * A publisher faster than a queue's consumers would grow the queue without bound and every
 * message's latency with it. Like RabbitMQ's credit flow, we stop reading from a publishing
 * connection while a consumed queue it published to is deep, and resume when the backlog
 * halves. The pause is bounded (a few ms at a time) so a connection that both publishes and
 * acks can never deadlock itself. Queues without consumers never throttle (backlogs are fine).
 * A queue homed on another node throttles on what its home said about its depth (the same rule,
 * evaluated there), and on the bytes forwarded there and not yet answered (remote.h) until they
 * fall low again: that only depends on the home node, not on this connection, so that pause
 * needs no time bound (the home going down clears the backlog). */
#define THROTTLE_HIGH 2000
#define THROTTLE_LOW 1000
#define THROTTLE_MAX_PAUSE 0.05
#define THROTTLE_MAX_PAUSE_REMOTE 0.25 /* the home says when the queue drained */

void conn_throttle(conn_t *c, queue_t *q)
{
    if (c->throttled_by || !c->net) return;
    if (rq_remote(q) ? !q->remote_deep && rq_backlog(q) < RQ_BACKLOG_HIGH
                     : q->consumers.n == 0 || q->ready_len < THROTTLE_HIGH)
        return;
    q_ref(q);
    c->throttled_by = q;
    c->throttled_at = ev_now(c->srv->loop);
    net_pause_reading(c->net, true);
}

static void conn_unthrottle_check(conn_t *c)
{
    queue_t *q = c->throttled_by;
    if (!q) return;
    if (rq_remote(q)) {
        bool up = !q->deleted && rq_available(q);
        if (up && rq_backlog(q) > RQ_BACKLOG_LOW) return;
        if (up && q->remote_deep && ev_now(c->srv->loop) - c->throttled_at < THROTTLE_MAX_PAUSE_REMOTE) return;
    } else if (!q->deleted && q->ready_len > THROTTLE_LOW && q->consumers.n &&
               ev_now(c->srv->loop) - c->throttled_at < THROTTLE_MAX_PAUSE) {
        return;
    }
    c->throttled_by = NULL;
    q_unref(q);
    if (c->net && !c->alarm_blocked) net_pause_reading(c->net, false);
}

/* ---- resource alarms ----
 * As RabbitMQ: while a memory or disk alarm is in effect, a connection that publishes is
 * blocked: it gets connection.blocked (when it announced the capability) and is no longer read
 * until every alarm clears, then connection.unblocked. Consumers keep consuming, which is what
 * frees memory. */

void conn_alarm_check_publisher(conn_t *c)
{
    unsigned alarms = c->srv->broker->alarms;
    if (!alarms || c->alarm_blocked || !c->net) return;
    c->alarm_blocked = true;
    if (c->cap_blocked) {
        amqp_method_t m = {.id = AMQP_CONNECTION_BLOCKED};
        m.u.connection_blocked.reason = AMQP_BYTES_CSTR(br_alarm_reason(alarms));
        conn_send_method(c, 0, &m);
        conn_flush(c);
    }
    net_pause_reading(c->net, true);
}

static void alarm_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    amqp_server_t *s = w->data;
    if (br_check_alarms(s->broker)) return;
    for (conn_t *c = s->conns; c; c = c->next) {
        if (!c->alarm_blocked || !c->net) continue;
        c->alarm_blocked = false;
        if (c->cap_blocked) {
            amqp_method_t m = {.id = AMQP_CONNECTION_UNBLOCKED};
            conn_send_method(c, 0, &m);
            conn_flush(c);
        }
        if (!c->throttled_by) net_pause_reading(c->net, false);
    }
}

/* ---- closing ---- */

/* Releases everything the connection holds in the broker: channels (requeueing their unacked
 * messages) and exclusive queues. Done as soon as the connection is known to be finished, so a
 * client that reconnects right after close-ok sees its exclusive queues gone, as in RabbitMQ. */
static void conn_free_channels(conn_t *c)
{
    if (c->chans)
        for (uint32_t i = 0; i <= c->channel_max; i++)
            if (c->chans[i]) {
                chan_t *ch = c->chans[i];
                c->chans[i] = NULL;
                chan_destroy(ch);
            }
    br_connection_closed(c->srv->broker, c->id);
}

static void conn_close_socket(conn_t *c)
{
    if (c->net) net_close(c->net, true);
}

static void close_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_t *c = w->data;
    ev_timer_stop(c->srv->loop, &c->close_timer);
    conn_close_socket(c);
}

/* reply-text is a shortstr: RabbitMQ cuts longer texts to 252 bytes and appends "...". */
void amqp_reply_text_fit(char *text)
{
    if (strlen(text) > 255) memcpy(text + 252, "...", 4);
}

static void conn_start_closing(conn_t *c, int code, const char *reply, uint32_t method_id)
{
    char text[1200];
    snprintf(text, sizeof text, "%s", reply);
    amqp_reply_text_fit(text);
    amqp_method_t m = {.id = AMQP_CONNECTION_CLOSE};
    m.u.connection_close.reply_code = (uint16_t)code;
    m.u.connection_close.reply_text = AMQP_BYTES_CSTR(text);
    m.u.connection_close.class_id = AMQP_METHOD_CLASS(method_id);
    m.u.connection_close.method_id = AMQP_METHOD_INDEX(method_id);
    conn_send_method(c, 0, &m);
    conn_flush(c);
    c->state = CS_CLOSING;
    /* The spec says to discard everything until close-ok; channels are gone already. */
    conn_free_channels(c);
    ev_timer_set(&c->close_timer, 1.0, 0);
    ev_timer_start(c->srv->loop, &c->close_timer);
}

void conn_exception(conn_t *c, int code, uint32_t method_id, const char *fmt, ...)
{
    if (c->state == CS_CLOSING || c->state == CS_CLOSED) return;
    char text[1200], detail[1100];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    snprintf(text, sizeof text, "%s - %s", amqp_reply_name(code), detail);
    log_warn("connection %s:%d: closing with %d %s", net_peer_host(c->net), net_peer_port(c->net), code, text);
    if (c->state == CS_HEADER || c->state == CS_START_OK) {
        /* Before tune there is no negotiated channel to talk on for most clients, but RabbitMQ
         * still sends connection.close for authentication failures. */
    }
    conn_start_closing(c, code, text, method_id);
}

/* ---- handshake ---- */

static void send_start(conn_t *c)
{
    amqp_buf_t props = {0};
    size_t pos = amqp_table_open(&props);
    size_t cap = amqp_table_put_table_open(&props, "capabilities");
    static const char *const caps[] = {"publisher_confirms", "exchange_exchange_bindings", "basic.nack",
                                       "consumer_cancel_notify", "connection.blocked", "consumer_priorities",
                                       "authentication_failure_close", "per_consumer_qos", "direct_reply_to"};
    for (size_t i = 0; i < sizeof caps / sizeof caps[0]; i++) amqp_table_put_bool(&props, caps[i], true);
    amqp_table_close(&props, cap);
    const char *cluster = c->srv->cfg->cluster_name[0] ? c->srv->cfg->cluster_name : c->srv->cfg->node_name;
    amqp_table_put_longstr(&props, "cluster_name", AMQP_BYTES_CSTR(cluster));
    amqp_table_put_longstr(&props, "copyright", AMQP_BYTES_CSTR("Copyright (c) Warren authors"));
    amqp_table_put_longstr(&props, "information", AMQP_BYTES_CSTR("Warren, a RabbitMQ-compatible broker"));
    amqp_table_put_longstr(&props, "platform", AMQP_BYTES_CSTR("C11/libev"));
    amqp_table_put_longstr(&props, "product", AMQP_BYTES_CSTR(PRODUCT));
    amqp_table_put_longstr(&props, "version", AMQP_BYTES_CSTR(VERSION));
    amqp_table_close(&props, pos);
    amqp_method_t m = {.id = AMQP_CONNECTION_START};
    m.u.connection_start.version_major = 0;
    m.u.connection_start.version_minor = 9;
    m.u.connection_start.server_properties = (amqp_bytes_t){props.data + 4, props.len - 4};
    m.u.connection_start.mechanisms = AMQP_BYTES_CSTR("PLAIN AMQPLAIN");
    m.u.connection_start.locales = AMQP_BYTES_CSTR("en_US");
    conn_send_method(c, 0, &m);
    amqp_buf_free(&props);
}

static void read_client_capabilities(conn_t *c, amqp_bytes_t client_props)
{
    amqp_table_t t;
    if (amqp_table_parse(client_props, &t) != 0) return;
    const amqp_value_t *caps = amqp_table_get(&t, "capabilities");
    if (caps && caps->type == 'F') {
        const amqp_value_t *v = amqp_table_get(&caps->v.table, "consumer_cancel_notify");
        c->cap_cancel_notify = v && v->type == 't' && v->v.b;
        v = amqp_table_get(&caps->v.table, "authentication_failure_close");
        c->cap_auth_failure_close = v && v->type == 't' && v->v.b;
        v = amqp_table_get(&caps->v.table, "connection.blocked");
        c->cap_blocked = v && v->type == 't' && v->v.b;
    }
    const amqp_value_t *p = amqp_table_get(&t, "product");
    if (p && p->type == 'S')
        snprintf(c->client_product, sizeof c->client_product, "%.*s", (int)p->v.str.len, (const char *)p->v.str.ptr);
    amqp_table_free(&t);
}

/* Extracts user and password from a SASL response. */
static bool sasl_credentials(amqp_bytes_t mech, amqp_bytes_t resp, amqp_bytes_t *user, amqp_bytes_t *pass,
                             amqp_table_t *holder)
{
    if (amqp_bytes_eq_cstr(mech, "PLAIN")) {
        /* [authzid] \0 authcid \0 passwd */
        const uint8_t *z1 = memchr(resp.ptr, 0, resp.len);
        if (!z1) return false;
        const uint8_t *rest = z1 + 1;
        size_t rlen = resp.len - (size_t)(rest - resp.ptr);
        const uint8_t *z2 = memchr(rest, 0, rlen);
        if (!z2) return false;
        *user = (amqp_bytes_t){rest, (size_t)(z2 - rest)};
        *pass = (amqp_bytes_t){z2 + 1, rlen - (size_t)(z2 + 1 - rest)};
        return true;
    }
    if (amqp_bytes_eq_cstr(mech, "AMQPLAIN")) {
        if (amqp_table_parse(resp, holder) != 0) return false;
        const amqp_value_t *l = amqp_table_get(holder, "LOGIN"), *p = amqp_table_get(holder, "PASSWORD");
        if (!l || !p || (l->type != 'S' && l->type != 'x') || (p->type != 'S' && p->type != 'x')) return false;
        *user = l->v.str;
        *pass = p->v.str;
        return true;
    }
    return false;
}

static void handle_start_ok(conn_t *c, const amqp_method_t *m)
{
    read_client_capabilities(c, m->u.connection_start_ok.client_properties);
    c->client_props.len = 0; /* kept for the management API's client_properties */
    if (m->u.connection_start_ok.client_properties.len)
        amqp_buf_append(&c->client_props, m->u.connection_start_ok.client_properties.ptr,
                        m->u.connection_start_ok.client_properties.len);
    amqp_bytes_t mech = m->u.connection_start_ok.mechanism;
    snprintf(c->auth_mechanism, sizeof c->auth_mechanism, "%.*s", (int)mech.len, (const char *)mech.ptr);
    if (!amqp_bytes_eq_cstr(mech, "PLAIN") && !amqp_bytes_eq_cstr(mech, "AMQPLAIN")) {
        /* Like RabbitMQ, no connection.close before tune: the client just sees the socket go. */
        log_warn("connection %s:%d: unknown authentication mechanism '%.*s'", net_peer_host(c->net),
                 net_peer_port(c->net), (int)mech.len, (const char *)mech.ptr);
        c->state = CS_CLOSED;
        conn_close_socket(c);
        return;
    }
    amqp_bytes_t user = {0}, pass = {0};
    amqp_table_t holder = {0};
    bool parsed = sasl_credentials(mech, m->u.connection_start_ok.response, &user, &pass, &holder);
    user_t *u = parsed ? br_authenticate(c->srv->broker, (const char *)user.ptr, user.len, (const char *)pass.ptr,
                                         pass.len)
                       : NULL;
    bool loopback_refused = u && br_user_is_loopback_only(c->srv->broker, u) && !net_peer_is_loopback(c->net);
    if (!u || loopback_refused) {
        if (loopback_refused)
            log_warn("user '%s' can only connect via localhost", u->name);
        else
            log_warn("login failed for user '%.*s' from %s", (int)user.len, (const char *)user.ptr,
                     net_peer_host(c->net));
        amqp_table_free(&holder);
        conn_exception(c, AMQP_ACCESS_REFUSED, m->id,
                       "Login was refused using authentication mechanism %.*s. For details see the broker logfile.",
                       (int)mech.len, (const char *)mech.ptr);
        return;
    }
    amqp_table_free(&holder);
    c->user = u;
    amqp_method_t t = {.id = AMQP_CONNECTION_TUNE};
    t.u.connection_tune.channel_max = (uint16_t)c->srv->cfg->channel_max;
    t.u.connection_tune.frame_max = c->srv->cfg->frame_max;
    t.u.connection_tune.heartbeat = (uint16_t)c->srv->cfg->heartbeat;
    conn_send_method(c, 0, &t);
    c->state = CS_TUNE_OK;
}

static void heartbeat_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    conn_t *c = w->data;
    ev_tstamp now = ev_now(loop);
    if (now - c->last_recv > 2.0 * c->heartbeat) {
        log_warn("missed heartbeats from client %s:%d, timeout: %ds", net_peer_host(c->net), net_peer_port(c->net),
                 c->heartbeat);
        ev_timer_stop(loop, &c->hb_timer);
        c->state = CS_CLOSED;
        conn_free_channels(c);
        conn_close_socket(c);
        return;
    }
    if (now - c->last_send >= c->heartbeat / 2.0) {
        amqp_encode_heartbeat(&c->out);
        conn_flush(c);
    }
}

static void handle_tune_ok(conn_t *c, const amqp_method_t *m)
{
    uint32_t fm = m->u.connection_tune_ok.frame_max;
    uint16_t cm = m->u.connection_tune_ok.channel_max;
    uint32_t server_fm = c->srv->cfg->frame_max;
    uint16_t server_cm = (uint16_t)c->srv->cfg->channel_max;
    if (fm != 0 && fm < AMQP_FRAME_MIN_SIZE) {
        conn_exception(c, AMQP_NOT_ALLOWED, m->id, "frame_max=%u < %d min size", fm, AMQP_FRAME_MIN_SIZE);
        return;
    }
    if (server_fm && (fm == 0 || fm > server_fm)) {
        conn_exception(c, AMQP_NOT_ALLOWED, m->id, "frame_max=%u > %u max size", fm, server_fm);
        return;
    }
    if (server_cm && (cm == 0 || cm > server_cm)) {
        conn_exception(c, AMQP_NOT_ALLOWED, m->id, "channel_max=%u > %u max size", cm, server_cm);
        return;
    }
    c->frame_max = fm ? fm : server_fm;
    c->channel_max = cm ? cm : (server_cm ? server_cm : 65535);
    c->heartbeat = m->u.connection_tune_ok.heartbeat;
    c->chans = calloc((size_t)c->channel_max + 1, sizeof *c->chans);
    if (!c->chans) abort();
    if (c->heartbeat) {
        double period = c->heartbeat / 2.0;
        ev_timer_set(&c->hb_timer, period, period);
        ev_timer_start(c->srv->loop, &c->hb_timer);
    }
    c->state = CS_OPEN;
}

static void open_finish(conn_t *c)
{
    c->vh->connections++;
    c->vh_counted = true;
    amqp_method_t ok = {.id = AMQP_CONNECTION_OPEN_OK};
    conn_send_method(c, 0, &ok);
    c->state = CS_RUNNING;
}

/* ---- a vhost's max-connections, counted cluster-wide ----
 *
 * br_check_vhost_connection_limit counts this node's connections. When the vhost has a limit
 * and the node is clustered, connection.open then asks every other running member for its
 * connections (connreg.list, the call the management API lists them with) and counts those in
 * the vhost; the connection's frames wait meanwhile (conn_pause). A member that fails to answer
 * counts for none. Two opens racing on two nodes may both pass, as with RabbitMQ's tracking. */

#define OPEN_CHECK_TIMEOUT 5.0
#define OPEN_CHECK_MAX_PEERS 16

struct open_check {
    conn_t *c;       /* NULL once the connection is gone */
    unsigned waiting; /* answers still due, plus one while the calls go out */
    uint64_t remote; /* the vhost's connections on the other nodes */
};

static void open_check_done(struct open_check *oc)
{
    conn_t *c = oc->c;
    uint64_t remote = oc->remote;
    free(oc);
    if (!c) return;
    c->open_check = NULL;
    const vhost_t *vh = c->vh;
    if (c->state == CS_OPEN) {
        if (vh->max_connections != BR_NO_LIMIT && vh->connections + remote >= (uint64_t)vh->max_connections)
            conn_exception(c, BR_NOT_ALLOWED, AMQP_CONNECTION_OPEN,
                           "access to vhost '%s' refused for user '%s': connection limit (%lld) is reached", vh->name,
                           c->user->name, (long long)vh->max_connections);
        else
            open_finish(c);
    }
    conn_flush(c);
    conn_resume(c); /* last: it may parse frames that close the connection */
}

/* One member's answer: {"connections": [{..., "vhost": ...}, ...]}. */
static void open_counted(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    struct open_check *oc = arg;
    cJSON *doc = status == 0 && len ? cJSON_ParseWithLength(payload, len) : NULL;
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(doc, "connections"))
    {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "vhost");
        if (oc->c && cJSON_IsString(v) && strcmp(v->valuestring, oc->c->vh->name) == 0) oc->remote++;
    }
    cJSON_Delete(doc);
    if (--oc->waiting == 0) open_check_done(oc);
}

/* Starts the cluster-wide count when it is needed; true when the open now waits for it. */
static bool open_check_start(conn_t *c)
{
    broker_t *b = c->srv->broker;
    uint32_t peers[OPEN_CHECK_MAX_PEERS];
    size_t n = c->vh->max_connections > 0 && b->node_call ? meta_running_peers(b, peers, OPEN_CHECK_MAX_PEERS) : 0;
    if (n == 0) return false;
    struct open_check *oc = calloc(1, sizeof *oc);
    if (!oc) abort();
    oc->c = c;
    oc->waiting = 1;
    c->open_check = oc;
    conn_pause(c);
    static const char req[] = "{\"connections\":true}";
    for (size_t i = 0; i < n; i++) {
        oc->waiting++; /* before the call: a call that fails never calls back */
        if (b->node_call(b->node_ctx, peers[i], CONNREG_CALL_LIST, req, sizeof req - 1, OPEN_CHECK_TIMEOUT,
                         open_counted, oc) != 0)
            oc->waiting--;
    }
    if (--oc->waiting == 0) open_check_done(oc);
    return true;
}

static void handle_open(conn_t *c, const amqp_method_t *m)
{
    amqp_bytes_t vh = m->u.connection_open.virtual_host;
    br_err_t err;
    /* RabbitMQ checks the vhost's connection limit before the user's access to it: this node's
     * count first, then (clustered) the others' (open_check_start). */
    if (br_check_vhost_connection_limit(c->srv->broker, c->user, (const char *)vh.ptr, vh.len, &err) ||
        br_check_vhost_access(c->srv->broker, c->user, (const char *)vh.ptr, vh.len, &c->vh, &err)) {
        conn_exception(c, err.code, m->id, "%s", err.text);
        return;
    }
    if (!open_check_start(c)) open_finish(c);
}


static void handle_channel0(conn_t *c, const amqp_method_t *m)
{
    if (m->id == AMQP_CONNECTION_CLOSE) {
        amqp_method_t ok = {.id = AMQP_CONNECTION_CLOSE_OK};
        conn_free_channels(c);
        conn_send_method(c, 0, &ok);
        conn_flush(c);
        c->state = CS_CLOSED;
        conn_close_socket(c);
        return;
    }
    if (m->id == AMQP_CONNECTION_CLOSE_OK) {
        if (c->state == CS_CLOSING) {
            c->state = CS_CLOSED;
            conn_close_socket(c);
        }
        return;
    }
    if (c->state == CS_CLOSING) return;
    if (m->id == AMQP_CONNECTION_START_OK && c->state == CS_START_OK) return handle_start_ok(c, m);
    if (m->id == AMQP_CONNECTION_TUNE_OK && c->state == CS_TUNE_OK) return handle_tune_ok(c, m);
    if (m->id == AMQP_CONNECTION_OPEN && c->state == CS_OPEN) return handle_open(c, m);
    if (m->id == AMQP_CONNECTION_UPDATE_SECRET && c->state == CS_RUNNING) {
        amqp_method_t ok = {.id = AMQP_CONNECTION_UPDATE_SECRET_OK};
        conn_send_method(c, 0, &ok);
        return;
    }
    if (m->id == AMQP_CONNECTION_BLOCKED || m->id == AMQP_CONNECTION_UNBLOCKED) return;
    conn_exception(c, AMQP_COMMAND_INVALID, m->id, "unexpected method %s on channel 0 in this state",
                   amqp_method_name(m->id));
}

/* ---- frames ---- */

static void handle_frame(conn_t *c, const amqp_frame_t *f)
{
    c->last_recv = ev_now(c->srv->loop);
    if (f->type == AMQP_FRAME_HEARTBEAT) {
        if (f->channel != 0)
            conn_exception(c, AMQP_UNEXPECTED_FRAME, 0, "heartbeat frame on channel %u", f->channel);
        return;
    }
    if (c->state == CS_CLOSING) {
        if (f->type != AMQP_FRAME_METHOD || f->channel != 0) return;
    }
    if (f->channel == 0) {
        if (f->type != AMQP_FRAME_METHOD) {
            conn_exception(c, AMQP_UNEXPECTED_FRAME, 0, "expected method frame on channel 0, got frame type %d",
                           f->type);
            return;
        }
        amqp_method_t m;
        int rc = amqp_method_decode(f->payload, f->size, &m);
        if (rc) {
            conn_exception(c, rc == -AMQP_COMMAND_INVALID ? AMQP_COMMAND_INVALID : -rc, m.id,
                           "cannot decode method frame on channel 0");
            return;
        }
        handle_channel0(c, &m);
        return;
    }
    if (c->state != CS_RUNNING) {
        conn_exception(c, AMQP_UNEXPECTED_FRAME, 0, "channel %u used before connection.open", f->channel);
        return;
    }
    if (f->channel > c->channel_max) {
        uint32_t open = 0;
        for (uint32_t i = 1; i <= c->channel_max; i++) open += c->chans[i] != NULL;
        conn_exception(c, AMQP_NOT_ALLOWED, 0,
                       "number of channels opened (%u) has reached the negotiated channel_max (%u)", open,
                       c->channel_max);
        return;
    }
    chan_t *ch = c->chans[f->channel];
    if (f->type == AMQP_FRAME_METHOD) {
        amqp_method_t m;
        int rc = amqp_method_decode(f->payload, f->size, &m);
        if (rc) {
            if (rc == -AMQP_COMMAND_INVALID)
                conn_exception(c, AMQP_NOT_IMPLEMENTED, m.id, "unknown method %u.%u", AMQP_METHOD_CLASS(m.id),
                               AMQP_METHOD_INDEX(m.id));
            else
                conn_exception(c, -rc, m.id, "cannot decode arguments of %s", amqp_method_name(m.id));
            return;
        }
        if (!ch) {
            if (m.id != AMQP_CHANNEL_OPEN) {
                conn_exception(c, AMQP_CHANNEL_ERROR, m.id, "expected 'channel.open'");
                return;
            }
            ch = chan_new(c, f->channel);
            c->chans[f->channel] = ch;
            amqp_method_t ok = {.id = AMQP_CHANNEL_OPEN_OK};
            conn_send_method(c, f->channel, &ok);
            return;
        }
        if (m.id == AMQP_CHANNEL_OPEN && ch->state == CH_OPEN) {
            conn_exception(c, AMQP_CHANNEL_ERROR, m.id, "second 'channel.open' seen");
            return;
        }
        chan_handle_method(ch, &m);
        return;
    }
    if (!ch) {
        conn_exception(c, AMQP_CHANNEL_ERROR, 0, "expected 'channel.open'");
        return;
    }
    if (f->type == AMQP_FRAME_HEADER)
        chan_handle_header(ch, f);
    else if (f->type == AMQP_FRAME_BODY)
        chan_handle_body(ch, f);
    else
        conn_exception(c, AMQP_FRAME_ERROR, 0, "unknown frame type %d", f->type);
}

static void conn_parse(conn_t *c)
{
    size_t off = 0;
    c->in_parse = true;
    while (c->state != CS_CLOSED && c->net && !c->meta_wait) {
        if (c->state == CS_HEADER) {
            if (c->in_len - off < 8) break;
            if (memcmp(c->in + off, protocol_header, 8) != 0) {
                net_write(c->net, protocol_header, 8);
                c->state = CS_CLOSED;
                conn_close_socket(c);
                break;
            }
            off += 8;
            c->state = CS_START_OK;
            send_start(c);
            continue;
        }
        amqp_frame_t f;
        /* Before tune-ok the limit is the spec's minimum frame size... but start-ok may carry
         * a larger client-properties table, so allow the server's frame_max then too. */
        uint32_t limit = c->frame_max ? c->frame_max : c->srv->cfg->frame_max;
        long n = amqp_frame_parse(c->in + off, c->in_len - off, limit, &f);
        if (n == 0) break;
        if (n < 0) {
            conn_exception(c, AMQP_FRAME_ERROR, 0, "malformed frame (bad frame end or size over frame_max %u)",
                           limit);
            off = c->in_len;
            break;
        }
        off += (size_t)n;
        handle_frame(c, &f);
    }
    if (off) {
        memmove(c->in, c->in + off, c->in_len - off);
        c->in_len -= off;
    }
    c->in_parse = false;
}

void conn_pause(conn_t *c) { c->meta_wait++; }

void conn_resume(conn_t *c)
{
    if (c->meta_wait && --c->meta_wait == 0 && !c->in_parse && c->in_len) {
        conn_parse(c); /* frames that arrived meanwhile */
        conn_flush(c);
    }
}

static void conn_on_data(void *ud, const uint8_t *data, size_t len)
{
    conn_t *c = ud;
    if (c->state == CS_CLOSED) return;
    if (c->in_len + len > c->in_cap) {
        size_t ncap = c->in_cap ? c->in_cap : 16384;
        while (ncap < c->in_len + len) ncap *= 2;
        c->in = realloc(c->in, ncap);
        if (!c->in) abort();
        c->in_cap = ncap;
    }
    memcpy(c->in + c->in_len, data, len);
    c->in_len += len;
    c->recv_oct += len, c->recv_cnt++;
    c->last_recv = ev_now(c->srv->loop);
    conn_parse(c);
    conn_flush(c);
    /* Shrink the input buffer after a large frame went through. */
    if (c->in_len == 0 && c->in_cap > (1u << 20)) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

static void conn_on_drain(void *ud)
{
    conn_t *c = ud;
    if (!c->chans) return;
    for (uint32_t i = 1; i <= c->channel_max; i++)
        if (c->chans[i]) chan_on_drain(c->chans[i]);
}

static void conn_on_close(void *ud)
{
    conn_t *c = ud;
    amqp_server_t *s = c->srv;
    c->net = NULL;
    c->state = CS_CLOSED;
    ev_timer_stop(s->loop, &c->hb_timer);
    ev_timer_stop(s->loop, &c->close_timer);
    if (c->throttled_by) q_unref(c->throttled_by);
    c->throttled_by = NULL;
    conn_free_channels(c);
    connreg_remove(&c->reg);
    s->broker->stat_conn_closed++;
    br_connection_closed(s->broker, c->id);
    if (c->vh_counted) c->vh->connections--;
    if (c->open_check) c->open_check->c = NULL; /* its answers come to nothing */
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    free(c->chans);
    free(c->in);
    amqp_buf_free(&c->out);
    amqp_buf_free(&c->client_props);
    free(c);
}

static const net_handler_t conn_handler = {
    .on_data = conn_on_data,
    .on_drain = conn_on_drain,
    .on_close = conn_on_close,
};

/* ---- the connection registry (broker/connreg.h) ---- */

static void conn_describe(void *ctx, connreg_entry_t *e)
{
    conn_t *c = ctx;
    e->user = c->user ? c->user->name : "";
    e->vhost = c->vh ? c->vh->name : "";
    e->state = c->state >= CS_CLOSING ? "closing" : c->state != CS_RUNNING ? "starting"
             : c->alarm_blocked       ? "blocked"
                                      : "running";
    for (uint32_t i = 1; c->chans && i <= c->channel_max; i++) e->channels += c->chans[i] != NULL;
    snprintf(e->client_product, sizeof e->client_product, "%s", c->client_product);
    e->auth_mechanism = c->auth_mechanism[0] ? c->auth_mechanism : NULL;
    e->ssl_protocol = c->net ? net_tls_version(c->net) : NULL;
    e->frame_max = c->frame_max, e->channel_max = c->channel_max, e->heartbeat = c->heartbeat;
    e->recv_oct = c->recv_oct, e->send_oct = c->send_oct;
    e->recv_cnt = c->recv_cnt, e->send_cnt = c->send_cnt;
    e->send_pend = c->net ? net_out_pending(c->net) : 0;
    e->client_properties = (amqp_bytes_t){c->client_props.data, c->client_props.len};
}

/* The management API's channel list (connreg_api.c): each open channel's figures. */
static void conn_each_channel(void *ctx, void (*fn)(void *arg, const struct connreg_chan_info *ch), void *arg)
{
    conn_t *c = ctx;
    for (uint32_t i = 1; c->chans && i <= c->channel_max; i++) {
        const chan_t *ch = c->chans[i];
        if (!ch || ch->state != CH_OPEN) continue;
        struct connreg_chan_info info = {
            .number = ch->id, .consumers = (uint32_t)ch->consumers.n, .prefetch = ch->prefetch,
            .global_prefetch = ch->global_prefetch, .unacked = ch->unacked, .unconfirmed = (uint32_t)ch->pend_len,
            .uncommitted = (uint32_t)ch->txp_len, .confirm = ch->confirm, .transactional = ch->tx,
            .publish = ch->st_publish, .deliver = ch->st_deliver, .deliver_no_ack = ch->st_deliver_no_ack,
            .get = ch->st_get, .get_no_ack = ch->st_get_no_ack, .ack = ch->st_ack, .redeliver = ch->st_redeliver,
            .confirmed = ch->st_confirm};
        fn(arg, &info);
    }
}

/* A single-active-consumer queue served here delivers to its first consumer only; elsewhere
 * (quorum, other nodes) the serving side decides, and the consumer is reported active. */
static bool consumer_active(const consumer_t *k)
{
    queue_t *q = k->q;
    if (!q || !q->sac || q->qq || rq_remote(q)) return true;
    return q->consumers.n && q->consumers.items[0] == k;
}

/* The management API's consumer list: every consumer of every open channel. */
static void conn_each_consumer(void *ctx,
                               void (*fn)(void *arg, uint16_t channel, const struct connreg_consumer_info *ci),
                               void *arg)
{
    conn_t *c = ctx;
    for (uint32_t i = 1; c->chans && i <= c->channel_max; i++) {
        const chan_t *ch = c->chans[i];
        if (!ch || ch->state != CH_OPEN) continue;
        for (size_t k = 0; k < ch->consumers.n; k++) {
            const consumer_t *con = ch->consumers.items[k];
            if (!con->q || (ch->reply_ctag && strcmp(con->tag, ch->reply_ctag) == 0)) continue;
            struct connreg_consumer_info info = {
                .tag = con->tag, .queue = con->q->name, .vhost = con->q->vh->name, .ack_required = !con->no_ack,
                .exclusive = con->exclusive, .active = consumer_active(con), .prefetch = con->prefetch,
                .priority = con->priority};
            fn(arg, ch->id, &info);
        }
    }
}

static void conn_force_close(void *ctx, const char *reason)
{
    conn_t *c = ctx;
    if (c->state >= CS_CLOSING) return;
    if (c->state < CS_TUNE_OK) {
        c->state = CS_CLOSED;
        conn_close_socket(c);
        return;
    }
    char text[512];
    snprintf(text, sizeof text, "CONNECTION_FORCED - %s", reason);
    conn_start_closing(c, AMQP_CONNECTION_FORCED, text, 0);
}

static void conn_register(conn_t *c)
{
    connreg_entry_t *e = &c->reg;
    e->id = c->id;
    e->protocol = "AMQP 0-9-1";
    snprintf(e->peer_host, sizeof e->peer_host, "%s", net_peer_host(c->net));
    snprintf(e->host, sizeof e->host, "%s", net_local_host(c->net));
    e->peer_port = net_peer_port(c->net);
    e->port = net_local_port(c->net);
    snprintf(e->name, sizeof e->name, "%s:%d -> %s:%d", e->peer_host, e->peer_port, e->host, e->port);
    e->tls = net_is_tls(c->net);
    e->connected_at = ev_time();
    e->describe = conn_describe;
    e->close = conn_force_close;
    e->each_channel = conn_each_channel;
    e->each_consumer = conn_each_consumer;
    e->ctx = c;
    connreg_add(e);
    c->srv->broker->stat_conn_opened++;
}

static void on_accept(void *arg, net_conn_t *nc)
{
    amqp_server_t *s = arg;
    conn_t *c = calloc(1, sizeof *c);
    if (!c) abort();
    c->srv = s;
    c->net = nc;
    uint32_t node = s->broker ? s->broker->self_node : 0;
    if (node) {
        /* Clustered: ids are cluster-wide (exclusive queues name their owner in replicated
         * records); the counter starts from the clock so ids are not reused after a restart. */
        if (!s->next_conn_id) s->next_conn_id = (uint64_t)time(NULL) << 12;
        c->id = (uint64_t)node << 32 | (uint32_t)++s->next_conn_id;
    } else {
        c->id = ++s->next_conn_id;
    }
    c->state = CS_HEADER;
    c->last_recv = c->last_send = ev_now(s->loop);
    ev_timer_init(&c->hb_timer, heartbeat_cb, 0, 0);
    c->hb_timer.data = c;
    ev_timer_init(&c->close_timer, close_timeout_cb, 1.0, 0);
    c->close_timer.data = c;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    net_conn_set_handler(nc, &conn_handler, c);
    /* Must agree with conn_output_blocked(): on_drain resumes deliveries stopped there. */
    net_set_watermarks(nc, 128u << 10, 32u << 10);
    conn_register(c);
    if (s->shutting_down) net_close(nc, false);
}

/* ---- server ---- */

static void ack_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    amqp_server_t *s = w->data;
    ev_tstamp now = ev_now(loop);
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->state != CS_RUNNING || !c->chans) continue;
        for (uint32_t i = 1; i <= c->channel_max; i++)
            if (c->chans[i]) chan_check_ack_timeout(c->chans[i], now, s->cfg->consumer_timeout);
        conn_flush(c);
    }
}

static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    amqp_server_t *s = w->data;
    chan_register_syncs(s);
    for (conn_t *c = s->conns; c; c = c->next) {
        conn_unthrottle_check(c);
        conn_flush(c);
    }
}

/* Opens every configured listener (at start, and again when maintenance mode ends). */
static int open_listeners(amqp_server_t *s, char *err, size_t errlen)
{
    cfg_t *cfg = s->cfg;
    for (int i = 0; i < cfg->n_tcp; i++) {
        net_listener_t *l = net_listen(s->loop, cfg->tcp[i].host, cfg->tcp[i].port, NULL, on_accept, s, err, errlen);
        if (!l) return -1;
        s->listeners[s->n_listeners++] = l;
        log_info("AMQP 0-9-1 listening on %s:%d", cfg->tcp[i].host[0] ? cfg->tcp[i].host : "[::]",
                 net_listener_port(l));
    }
    for (int i = 0; i < cfg->n_ssl; i++) {
        net_listener_t *l = net_listen(s->loop, cfg->ssl[i].host, cfg->ssl[i].port, s->tls, on_accept, s, err, errlen);
        if (!l) return -1;
        s->listeners[s->n_listeners++] = l;
        log_info("AMQP 0-9-1 over TLS listening on %s:%d", cfg->ssl[i].host[0] ? cfg->ssl[i].host : "[::]",
                 net_listener_port(l));
    }
    return 0;
}

amqp_server_t *amqp_server_start(struct ev_loop *loop, broker_t *b, cfg_t *cfg, char *err, size_t errlen)
{
    amqp_server_t *s = calloc(1, sizeof *s);
    if (!s) abort();
    s->loop = loop;
    s->broker = b;
    s->cfg = cfg;
    dict_init(&s->reply_to);
    if (cfg->n_ssl > 0) {
        char certfile[600], keyfile[600];
        snprintf(certfile, sizeof certfile, "%s", cfg->ssl_certfile);
        snprintf(keyfile, sizeof keyfile, "%s", cfg->ssl_keyfile);
        if (!certfile[0] || !keyfile[0]) {
            snprintf(certfile, sizeof certfile, "%s/tls/server_certificate.pem", cfg->data_dir);
            snprintf(keyfile, sizeof keyfile, "%s/tls/server_key.pem", cfg->data_dir);
            if (net_tls_make_self_signed(certfile, keyfile, err, errlen)) goto fail;
            log_info("AMQPS: using the self-signed certificate %s", certfile);
        }
        s->tls = net_tls_server_ctx(certfile, keyfile, cfg->ssl_cacertfile[0] ? cfg->ssl_cacertfile : NULL,
                                    cfg->ssl_verify_peer, cfg->ssl_fail_if_no_peer_cert, err, errlen);
        if (!s->tls) goto fail;
    }
    if (open_listeners(s, err, errlen) != 0) goto fail;
    /* consumer_timeout is checked about ten times per period, at most once a second (also the
     * resolution of per-queue x-consumer-timeout). */
    double period = (double)cfg->consumer_timeout / 10000.0;
    if (period > 0.25) period = 0.25;
    if (period < 0.05) period = 0.05;
    ev_timer_init(&s->ack_timeout_timer, ack_timeout_cb, period, period);
    s->ack_timeout_timer.data = s;
    ev_timer_start(loop, &s->ack_timeout_timer);
    ev_unref(loop);
    br_check_alarms(b);
    ev_timer_init(&s->alarm_timer, alarm_timer_cb, 1.0, 1.0);
    s->alarm_timer.data = s;
    ev_timer_start(loop, &s->alarm_timer);
    ev_unref(loop);
    ev_prepare_init(&s->prepare, prepare_cb);
    s->prepare.data = s;
    ev_prepare_start(loop, &s->prepare);
    ev_unref(loop);
    return s;
fail:
    for (int i = 0; i < s->n_listeners; i++) net_listener_close(s->listeners[i]);
    if (s->tls) SSL_CTX_free(s->tls);
    free(s);
    return NULL;
}

int amqp_server_port(const amqp_server_t *s, bool tls)
{
    int tcp_n = s->cfg->n_tcp;
    if (!tls) return tcp_n > 0 && s->n_listeners > 0 ? net_listener_port(s->listeners[0]) : 0;
    return s->cfg->n_ssl > 0 && s->n_listeners > tcp_n ? net_listener_port(s->listeners[tcp_n]) : 0;
}

size_t amqp_server_connection_count(const amqp_server_t *s)
{
    size_t n = 0;
    for (const conn_t *c = s->conns; c; c = c->next) n++;
    return n;
}

/* Stops listening and closes every client connection with 320 CONNECTION_FORCED and text. */
static void close_clients(amqp_server_t *s, const char *text)
{
    for (int i = 0; i < s->n_listeners; i++) net_listener_close(s->listeners[i]);
    s->n_listeners = 0;
    for (conn_t *c = s->conns; c; c = c->next) {
        if (c->state == CS_RUNNING || c->state == CS_OPEN || c->state == CS_TUNE_OK) {
            conn_start_closing(c, AMQP_CONNECTION_FORCED, text, 0);
        } else if (c->state != CS_CLOSED && c->state != CS_CLOSING) {
            c->state = CS_CLOSED;
            conn_close_socket(c);
        }
    }
}

void amqp_server_shutdown(amqp_server_t *s)
{
    s->shutting_down = true;
    close_clients(s, "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'");
}

size_t amqp_server_suspend(amqp_server_t *s)
{
    size_t n = amqp_server_connection_count(s);
    s->suspended = true;
    close_clients(s, "CONNECTION_FORCED - Node was put into maintenance mode");
    return n;
}

int amqp_server_resume(amqp_server_t *s, char *err, size_t errlen)
{
    if (s->shutting_down || !s->suspended) return 0;
    if (open_listeners(s, err, errlen) != 0) {
        for (int i = 0; i < s->n_listeners; i++) net_listener_close(s->listeners[i]);
        s->n_listeners = 0;
        return -1;
    }
    s->suspended = false;
    return 0;
}

void amqp_server_free(amqp_server_t *s)
{
    ev_ref(s->loop);
    ev_prepare_stop(s->loop, &s->prepare);
    ev_ref(s->loop);
    ev_timer_stop(s->loop, &s->ack_timeout_timer);
    ev_ref(s->loop);
    ev_timer_stop(s->loop, &s->alarm_timer);
    if (s->tls) SSL_CTX_free(s->tls);
    dict_free(&s->reply_to);
    free(s);
}
