/* listener.c - the management listeners: TCP and TLS connections (amqp091/net.c) carrying HTTP
 * (management.tcp.*) and HTTPS (management.ssl.*).
 *
 * Role: mgmt_new / mgmt_listen / mgmt_shutdown / mgmt_free, and the glue between a net_conn_t
 * and an HTTP connection (http.c): net's on_data feeds the parser, on_drain resumes reading,
 * on_close tells the HTTP connection its transport is gone.
 *
 * A connection that sends nothing for MGMT_IDLE_TIMEOUT seconds is closed (cowboy's idle_timeout,
 * which RabbitMQ's management listener uses, is 60 s too): idle keep-alive connections and
 * requests that never complete do not hold a socket forever.
 *
 * Invariant: m->conns lists every HTTP connection whose transport is open; a connection leaves
 * the list in on_close (net.c calls it exactly once, from its own loop callbacks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp091/net.h"
#include "broker/log.h"
#include "broker/connreg.h"
#include "mgmt/internal.h"
#include "mgmt/metrics.h"

#define MGMT_IDLE_TIMEOUT 60.0

/* What a net connection's user data points to. */
struct mgmt_link {
    mgmt_t *m;
    net_conn_t *net;
    mgmt_conn_t *http;
    ev_timer idle;
};

static void io_write(void *ud, const void *data, size_t len) { net_write(((struct mgmt_link *)ud)->net, data, len); }
static void io_close(void *ud) { net_close(((struct mgmt_link *)ud)->net, true); }
static void io_pause(void *ud, bool paused) { net_pause_reading(((struct mgmt_link *)ud)->net, paused); }
static size_t io_pending(void *ud) { return net_out_pending(((struct mgmt_link *)ud)->net); }

static const mgmt_io_t net_io = {io_write, io_close, io_pause, io_pending};

static void on_data(void *ud, const uint8_t *data, size_t len)
{
    struct mgmt_link *l = ud;
    ev_timer_again(l->m->loop, &l->idle);
    mgmt_conn_feed(l->http, data, len);
}

static void on_drain(void *ud)
{
    struct mgmt_link *l = ud;
    mgmt_conn_drained(l->http);
}

static void unlink_conn(mgmt_t *m, mgmt_conn_t *c)
{
    if (m->conns == c) {
        m->conns = mgmt_conn_next(c);
        return;
    }
    for (mgmt_conn_t *p = m->conns; p; p = mgmt_conn_next(p)) {
        if (mgmt_conn_next(p) == c) {
            mgmt_conn_link(p, mgmt_conn_next(c));
            return;
        }
    }
}

static void on_close(void *ud)
{
    struct mgmt_link *l = ud;
    ev_timer_stop(l->m->loop, &l->idle);
    unlink_conn(l->m, l->http);
    mgmt_conn_gone(l->http);
    free(l);
}

static const net_handler_t handler = {on_data, on_drain, on_close};

static void on_idle(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct mgmt_link *l = w->data;
    ev_timer_stop(l->m->loop, w);
    net_close(l->net, true);
}

static void on_accept(void *arg, net_conn_t *net)
{
    mgmt_t *m = arg;
    struct mgmt_link *l = calloc(1, sizeof *l);
    if (!l) abort();
    l->m = m;
    l->net = net;
    l->http = mgmt_conn_new(m, &net_io, l, net_peer_is_loopback(net));
    mgmt_conn_link(l->http, m->conns);
    m->conns = l->http;
    net_conn_set_handler(net, &handler, l);
    net_set_watermarks(net, 4 * 1024 * 1024, 1024 * 1024);
    ev_init(&l->idle, on_idle);
    l->idle.repeat = MGMT_IDLE_TIMEOUT;
    l->idle.data = l;
    ev_timer_again(m->loop, &l->idle);
    if (m->shutting_down) net_close(net, false);
}

/* The metrics listener's connections: the same HTTP, answered by metrics.c. */
static void on_accept_prom(void *arg, net_conn_t *net)
{
    mgmt_t *m = arg;
    on_accept(m, net);
    mgmt_conn_set_prometheus(m->conns);
}

/* prometheus.tcp.*: a listener that fails to open disables the metrics only (logged). */
static void listen_prom(mgmt_t *m)
{
    char err[512];
    const char *host = m->cfg->prom_ip[0] ? m->cfg->prom_ip : NULL;
    m->prom_listener = net_listen(m->loop, host, m->cfg->prom_port, NULL, on_accept_prom, m, err, sizeof err);
    if (!m->prom_listener) {
        log_warn("Prometheus metrics disabled: %s", err);
        return;
    }
    m->prom_port = net_listener_port(m->prom_listener);
    log_info("Prometheus metrics listening on %s:%d", host ? host : "[::]", m->prom_port);
}

mgmt_t *mgmt_new(struct ev_loop *loop, broker_t *b, cl_t *cl, const cfg_t *cfg)
{
    mgmt_t *m = calloc(1, sizeof *m);
    if (!m) abort();
    m->loop = loop;
    m->b = b;
    m->cl = cl;
    m->cfg = cfg;
    m->started = loop ? ev_now(loop) : 0;
    mgmt_rates_start(m);
    connreg_set_share_fn(mgmt_node_share, m);
    return m;
}

/* HTTPS: management.ssl.certfile/keyfile, else the AMQPS ones (ssl_options.*), else the
 * node's self-signed certificate in <data_dir>/tls (made if missing, as for AMQPS). */
static int listen_tls(mgmt_t *m, char *err, size_t errlen)
{
    const cfg_t *cfg = m->cfg;
    char certfile[600], keyfile[600];
    if (cfg->mgmt_ssl_certfile[0] && cfg->mgmt_ssl_keyfile[0]) {
        snprintf(certfile, sizeof certfile, "%s", cfg->mgmt_ssl_certfile);
        snprintf(keyfile, sizeof keyfile, "%s", cfg->mgmt_ssl_keyfile);
    } else if (cfg->ssl_certfile[0] && cfg->ssl_keyfile[0]) {
        snprintf(certfile, sizeof certfile, "%s", cfg->ssl_certfile);
        snprintf(keyfile, sizeof keyfile, "%s", cfg->ssl_keyfile);
    } else {
        snprintf(certfile, sizeof certfile, "%s/tls/server_certificate.pem", cfg->data_dir);
        snprintf(keyfile, sizeof keyfile, "%s/tls/server_key.pem", cfg->data_dir);
        if (net_tls_make_self_signed(certfile, keyfile, err, errlen)) return -1;
    }
    const char *ca = cfg->mgmt_ssl_cacertfile[0] ? cfg->mgmt_ssl_cacertfile : NULL;
    m->tls = net_tls_server_ctx(certfile, keyfile, ca, false, false, err, errlen);
    if (!m->tls) return -1;
    const char *host = cfg->mgmt_ssl_ip[0] ? cfg->mgmt_ssl_ip : NULL;
    m->tls_listener = net_listen(m->loop, host, cfg->mgmt_ssl_port, m->tls, on_accept, m, err, errlen);
    if (!m->tls_listener) return -1;
    m->tls_port = net_listener_port(m->tls_listener);
    log_info("management API (HTTPS) listening on %s:%d", host ? host : "[::]", m->tls_port);
    return 0;
}

int mgmt_listen(mgmt_t *m, char *err, size_t errlen)
{
    const char *host = m->cfg->mgmt_ip[0] ? m->cfg->mgmt_ip : NULL;
    int rc = 0;
    m->listener = net_listen(m->loop, host, m->cfg->mgmt_port, NULL, on_accept, m, err, errlen);
    if (m->listener) {
        m->port = net_listener_port(m->listener);
        log_info("management API (HTTP) listening on %s:%d", host ? host : "[::]", m->port);
    } else {
        rc = -1;
    }
    listen_prom(m);
    char tls_err[512];
    if (m->cfg->mgmt_ssl_port && listen_tls(m, tls_err, sizeof tls_err)) {
        if (rc) snprintf(err + strlen(err), errlen - strlen(err), "; %s", tls_err);
        else snprintf(err, errlen, "%s", tls_err);
        rc = -1;
    }
    return rc;
}

int mgmt_port(const mgmt_t *m) { return m ? m->port : 0; }

void mgmt_set_counters(mgmt_t *m, size_t (*connections)(void *ctx), size_t (*channels)(void *ctx), void *ctx)
{
    m->count_connections = connections;
    m->count_channels = channels;
    m->count_ctx = ctx;
}

void mgmt_shutdown(mgmt_t *m)
{
    if (!m) return;
    m->shutting_down = true;
    if (m->listener) net_listener_close(m->listener);
    if (m->tls_listener) net_listener_close(m->tls_listener);
    if (m->prom_listener) net_listener_close(m->prom_listener);
    m->listener = m->tls_listener = m->prom_listener = NULL;
    for (mgmt_conn_t *c = m->conns; c; c = mgmt_conn_next(c))
        net_close(((struct mgmt_link *)mgmt_conn_ud(c))->net, false);
}

void mgmt_free(mgmt_t *m)
{
    if (!m) return;
    connreg_set_share_fn(NULL, NULL);
    mgmt_rates_stop(m);
    if (m->listener) net_listener_close(m->listener);
    if (m->tls_listener) net_listener_close(m->tls_listener);
    if (m->prom_listener) net_listener_close(m->prom_listener);
    if (m->tls) SSL_CTX_free(m->tls);
    free(m);
}
