/* net.c - TCP and TLS listeners and connections on a libev loop.
 *
 * The protocol layer sees a connection as plaintext bytes in (on_data), a queue of plaintext bytes out
 * (net_write), a back-pressure signal (on_drain) and one end-of-life call (on_close). This file turns that into
 * non-blocking socket and OpenSSL calls. It knows nothing about AMQP.
 *
 * Life of a connection (c->state):
 *   NET_OPEN      reading (unless paused) and writing. For TLS the handshake runs first (c->handshaking); until
 *                 it is done, writes are only queued. A handshake that takes more than 10 s is dropped.
 *   NET_FLUSHING  after net_close(c, true): no more reads; the queued output is sent.
 *   NET_LINGER    output sent, close_notify (TLS) and a FIN sent; whatever the peer still sends is read and
 *                 discarded until it closes. Closing a socket that has unread input makes the kernel answer with
 *                 a reset, which can destroy our last bytes in flight (e.g. connection.close-ok) before the peer
 *                 reads them. FLUSHING plus LINGER are bounded by one 1 s timer.
 *   NET_DEAD      the socket is closed and the SSL freed; on_close is due.
 *
 * Invariants:
 *  - on_close runs exactly once, and only from a loop callback of this file (conn_settle), never from inside a
 *    public function. So a net_conn_t stays valid for the whole of any callback that holds it, even if that
 *    callback closes it, and the read loop can re-check c->state after every on_data.
 *  - on_data is never called after the state left NET_OPEN, nor while reading is paused.
 *  - c->out[out_off, out_len) is the unsent output; out_len <= out_cap.
 *
 * Data flow out: net_write appends to c->out and schedules the pump: an ev_prepare, which libev runs right
 * before it polls again, i.e. after every callback of the current iteration had its chance to write. So many
 * small writes become one send() (or one SSL_write per 16 KiB record). An ev_idle is started alongside: while
 * active it keeps the loop from blocking in poll (and runs the pump itself), which matters when net_write was
 * called from some other prepare watcher, after this round of prepare callbacks. If the socket takes only part of the output, an EV_WRITE watcher takes over until
 * the buffer is empty; a large drained buffer is freed so idle connections stay small.
 *
 * Data flow in: EV_READ -> recv/SSL_read in 64 KiB chunks into a per-thread scratch buffer -> on_data. At most
 * NET_READ_BUDGET bytes per wakeup, so one busy client cannot starve the others; level-triggered libev brings us
 * back for the rest. Plaintext that OpenSSL already pulled from the socket is invisible to poll, so when the
 * budget runs out, or reading resumes after a pause, with SSL_has_pending(), the pump is scheduled to continue
 * (c->read_more).
 *
 * TLS key updates can make SSL_read need a writable socket and SSL_write a readable one; the *_wants_* flags
 * record that and conn_update_watchers listens for the right event. */
#include "amqp091/net.h"
#include "broker/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#define NET_READ_CHUNK (64 * 1024)
#define NET_READ_BUDGET (4 * NET_READ_CHUNK)
#define NET_ACCEPT_BUDGET 64            /* accepts per wakeup, so a connection storm does not stall the loop */
#define NET_OUT_MIN_CAP 4096
#define NET_OUT_KEEP_CAP (64 * 1024)    /* a drained output buffer larger than this is freed */
#define NET_DEFAULT_HIGH_WATER (1024 * 1024)
#define NET_DEFAULT_LOW_WATER (256 * 1024)
#define NET_CLOSE_TIMEOUT 1.0
#define NET_HANDSHAKE_TIMEOUT 10.0
#define NET_ACCEPT_BACKOFF 0.1          /* pause after EMFILE & co., instead of spinning on a readable listener */
#define NET_HOST_LEN INET6_ADDRSTRLEN
#define NET_MAX_LISTEN_SOCKS 8          /* addresses one listener host name may resolve to */

enum net_state { NET_OPEN, NET_FLUSHING, NET_LINGER, NET_DEAD };

struct net_conn {
    struct ev_loop *loop;
    int fd;
    enum net_state state;
    ev_io read_w, write_w;
    ev_prepare pump_w;
    ev_idle wake_w;
    ev_timer timer_w;                   /* TLS handshake deadline, then the close deadline */

    net_handler_t handler;
    void *ud;

    bool read_paused;
    bool read_more;                     /* TLS holds input that poll cannot see: the pump must read on */
    bool write_blocked;                 /* the socket took less than we offered: wait for EV_WRITE */
    bool above_high;                    /* output went above high_water; on_drain is owed below low_water */
    size_t high_water, low_water;
    uint8_t *out;
    size_t out_off, out_len, out_cap;

    SSL *ssl;
    bool is_tls;
    bool handshaking;
    bool handshake_wants_write;
    bool read_wants_write;
    bool write_wants_read;

    char peer_host[NET_HOST_LEN], local_host[NET_HOST_LEN];
    int peer_port, local_port;
    bool peer_loopback;
};

struct net_listener {
    struct ev_loop *loop;
    int nsocks;
    int socks[NET_MAX_LISTEN_SOCKS];
    ev_io accept_w[NET_MAX_LISTEN_SOCKS];
    int port;
    char shown_host[264];              /* as in log lines: "127.0.0.1", "[::1]", "*" */
    ev_timer backoff_w;
    SSL_CTX *tls_ctx;
    net_accept_cb cb;
    void *arg;
    bool in_accept;                     /* net_listener_close from inside cb must not free under our feet */
    bool close_requested;
    bool warned_fd_limit;
};

/* Only valid during one on_data call; one per thread since each loop runs on its own thread. */
static _Thread_local uint8_t net_scratch[NET_READ_CHUNK];

static void conn_schedule(net_conn_t *c);
static void conn_read(net_conn_t *c);
static void conn_flush(net_conn_t *c);

/* ---------------------------------------------------------------- addresses */

/* Fills host/port from a socket address. IPv4-mapped IPv6 addresses (dual-stack listener) are shown as plain
 * IPv4, which is what operators expect to see in logs and management listings. */
static void net_addr_text(const struct sockaddr_storage *ss, char *host, int *port, bool *loopback)
{
    *loopback = false;
    *port = 0;
    snprintf(host, NET_HOST_LEN, "unknown");
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, NET_HOST_LEN);
        *port = ntohs(sin->sin_port);
        *loopback = (ntohl(sin->sin_addr.s_addr) >> 24) == 127;
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        *port = ntohs(sin6->sin6_port);
        if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
            struct in_addr v4;
            memcpy(&v4, &sin6->sin6_addr.s6_addr[12], sizeof v4);
            inet_ntop(AF_INET, &v4, host, NET_HOST_LEN);
            *loopback = sin6->sin6_addr.s6_addr[12] == 127;
        } else {
            inet_ntop(AF_INET6, &sin6->sin6_addr, host, NET_HOST_LEN);
            *loopback = IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr);
        }
    }
}

static void conn_fill_addresses(net_conn_t *c)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    bool unused;
    memset(&ss, 0, sizeof ss);
    if (getpeername(c->fd, (struct sockaddr *)&ss, &len) != 0) ss.ss_family = AF_UNSPEC;
    net_addr_text(&ss, c->peer_host, &c->peer_port, &c->peer_loopback);
    len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    if (getsockname(c->fd, (struct sockaddr *)&ss, &len) != 0) ss.ss_family = AF_UNSPEC;
    net_addr_text(&ss, c->local_host, &c->local_port, &unused);
}

/* ---------------------------------------------------------------- output buffer */

/* Makes room for n more bytes at out_len. The unsent part is moved to the front only when the dead prefix is at
 * least as big as it, so the copying stays amortised O(1) per byte. */
static bool out_reserve(net_conn_t *c, size_t n)
{
    size_t live = c->out_len - c->out_off;
    if (c->out_cap - c->out_len >= n) return true;
    if (c->out_off > 0 && c->out_off >= live && c->out_cap - live >= n) {
        memmove(c->out, c->out + c->out_off, live);
        c->out_off = 0;
        c->out_len = live;
        return true;
    }
    if (n > SIZE_MAX / 2 - live) return false;
    size_t need = live + n;
    size_t cap = c->out_cap ? c->out_cap : NET_OUT_MIN_CAP;
    while (cap < need) cap *= 2;
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, live);
        c->out_off = 0;
        c->out_len = live;
    }
    uint8_t *grown = realloc(c->out, cap);
    if (!grown) return false;
    c->out = grown;
    c->out_cap = cap;
    return true;
}

/* Everything was sent: rewind, and give a big buffer back (a burst should not pin memory forever). */
static void out_reset(net_conn_t *c)
{
    c->out_off = c->out_len = 0;
    if (c->out_cap > NET_OUT_KEEP_CAP) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
}

static size_t out_pending(const net_conn_t *c) { return c->out_len - c->out_off; }

/* ---------------------------------------------------------------- lifecycle */

static void io_set_active(struct ev_loop *loop, ev_io *w, bool on)
{
    if (on && !ev_is_active(w)) ev_io_start(loop, w);
    else if (!on && ev_is_active(w)) ev_io_stop(loop, w);
}

/* Listens for exactly the events the current state needs (see the state list at the top). */
static void conn_update_watchers(net_conn_t *c)
{
    bool want_read = false, want_write = false;
    switch (c->state) {
    case NET_OPEN:
        if (c->handshaking) {
            want_write = c->handshake_wants_write;
            want_read = !want_write;
        } else {
            want_read = !c->read_paused || c->write_wants_read;
            want_write = c->write_blocked || c->read_wants_write;
        }
        break;
    case NET_FLUSHING:
        want_read = c->write_wants_read;
        want_write = c->write_blocked;
        break;
    case NET_LINGER:
        want_read = true;
        break;
    case NET_DEAD:
        break;
    }
    io_set_active(c->loop, &c->read_w, want_read);
    io_set_active(c->loop, &c->write_w, want_write);
}

/* Closes the socket now; on_close follows from the pump. Safe to call from anywhere, any number of times. */
static void conn_teardown(net_conn_t *c, const char *why)
{
    if (c->state == NET_DEAD) return;
    log_debug("connection %s:%d closed: %s", c->peer_host, c->peer_port, why);
    c->state = NET_DEAD;
    ev_io_stop(c->loop, &c->read_w);
    ev_io_stop(c->loop, &c->write_w);
    ev_timer_stop(c->loop, &c->timer_w);
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    close(c->fd);
    c->fd = -1;
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = c->out_cap = 0;
    conn_schedule(c);
}

/* Tears down after a failed OpenSSL call, with OpenSSL's reason in the debug log. */
static void conn_teardown_tls(net_conn_t *c, const char *what, int ssl_error)
{
    char reason[256];
    if (ssl_error == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        snprintf(reason, sizeof reason, "%s", errno ? strerror(errno) : "peer closed the connection");
    else
        net_tls_error_string(reason, sizeof reason);
    char why[320];
    snprintf(why, sizeof why, "%s: %s", what, reason);
    conn_teardown(c, why);
}

/* The end: tell the protocol layer, then free. Only called from this file's loop callbacks, as their last act. */
static void conn_finalize(net_conn_t *c)
{
    ev_prepare_stop(c->loop, &c->pump_w);
    ev_idle_stop(c->loop, &c->wake_w);
    if (c->handler.on_close) c->handler.on_close(c->ud);
    free(c);
}

/* Common tail of every loop callback: finalize a dead connection, or refresh the watchers. c may be freed. */
static void conn_settle(net_conn_t *c)
{
    if (c->state == NET_DEAD) conn_finalize(c);
    else conn_update_watchers(c);
}

static void conn_schedule(net_conn_t *c)
{
    ev_prepare_start(c->loop, &c->pump_w);
    ev_idle_start(c->loop, &c->wake_w);
}

static void conn_begin_linger(net_conn_t *c)
{
    if (c->ssl) {
        ERR_clear_error();
        (void)SSL_shutdown(c->ssl);     /* best effort close_notify; the peer's answer is not awaited */
        ERR_clear_error();
    }
    shutdown(c->fd, SHUT_WR);
    c->state = NET_LINGER;
}

static void conn_linger_read(net_conn_t *c)
{
    for (int i = 0; i < NET_READ_BUDGET / NET_READ_CHUNK; i++) {
        ssize_t n = recv(c->fd, net_scratch, sizeof net_scratch, 0);
        if (n > 0) continue;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        conn_teardown(c, n == 0 ? "closed after flush" : strerror(errno));
        return;
    }
}

/* ---------------------------------------------------------------- reading */

/* One chunk from the socket: 1 = got *n bytes, 0 = nothing now, -1 = connection torn down. */
static int conn_recv_tcp(net_conn_t *c, uint8_t *buf, size_t cap, size_t *n)
{
    for (;;) {
        ssize_t r = recv(c->fd, buf, cap, 0);
        if (r > 0) {
            *n = (size_t)r;
            return 1;
        }
        if (r == 0) {
            conn_teardown(c, "peer closed the connection");
            return -1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        conn_teardown(c, strerror(errno));
        return -1;
    }
}

static int conn_recv_tls(net_conn_t *c, uint8_t *buf, size_t cap, size_t *n)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_read_ex(c->ssl, buf, cap, n);
    if (r == 1) return 1;
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return 0;
    case SSL_ERROR_WANT_WRITE:
        c->read_wants_write = true;
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        conn_teardown(c, "peer sent TLS close_notify");
        return -1;
    default:
        conn_teardown_tls(c, "TLS read failed", e);
        return -1;
    }
}

static void conn_read(net_conn_t *c)
{
    size_t budget = NET_READ_BUDGET;
    while (c->state == NET_OPEN && !c->handshaking && !c->read_paused && budget > 0) {
        size_t n = 0;
        int r = c->ssl ? conn_recv_tls(c, net_scratch, sizeof net_scratch, &n)
                       : conn_recv_tcp(c, net_scratch, sizeof net_scratch, &n);
        if (r <= 0) return;
        budget -= n < budget ? n : budget;
        if (c->handler.on_data) c->handler.on_data(c->ud, net_scratch, n);
    }
    if (budget == 0 && c->ssl && c->state == NET_OPEN && !c->read_paused && SSL_has_pending(c->ssl)) {
        c->read_more = true;
        conn_schedule(c);
    }
}

/* ---------------------------------------------------------------- writing */

/* Offers the unsent output once: 1 = *sent bytes went out, 0 = would block (flags set), -1 = torn down. */
static int conn_send_tcp(net_conn_t *c, size_t *sent)
{
    size_t len = out_pending(c);
    for (;;) {
        ssize_t r = send(c->fd, c->out + c->out_off, len, MSG_NOSIGNAL);
        if (r >= 0) {
            *sent = (size_t)r;
            /* A short write means the socket buffer is full: another send() now would only say EAGAIN. */
            if ((size_t)r < len) c->write_blocked = true;
            return 1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            c->write_blocked = true;
            return 0;
        }
        conn_teardown(c, strerror(errno));
        return -1;
    }
}

/* With SSL_MODE_ENABLE_PARTIAL_WRITE, each call sends at most a record or so; ACCEPT_MOVING_WRITE_BUFFER lets
 * a retry after WANT_WRITE pass the same bytes at a new address (out_reserve may move them). */
static int conn_send_tls(net_conn_t *c, size_t *sent)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_write_ex(c->ssl, c->out + c->out_off, out_pending(c), sent);
    if (r == 1) return 1;
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_WRITE:
        c->write_blocked = true;
        return 0;
    case SSL_ERROR_WANT_READ:
        c->write_wants_read = true;
        return 0;
    default:
        conn_teardown_tls(c, "TLS write failed", e);
        return -1;
    }
}

static void conn_check_drain(net_conn_t *c)
{
    if (!c->above_high || out_pending(c) > c->low_water) return;
    c->above_high = false;
    if (c->state == NET_OPEN && c->handler.on_drain) c->handler.on_drain(c->ud);
}

/* Sends as much queued output as the socket takes; moves FLUSHING on to LINGER once all is out. */
static void conn_flush(net_conn_t *c)
{
    if ((c->state != NET_OPEN && c->state != NET_FLUSHING) || c->handshaking) return;
    c->write_blocked = false;
    c->write_wants_read = false;
    while (out_pending(c) > 0 && !c->write_blocked && !c->write_wants_read) {
        size_t sent = 0;
        int r = c->ssl ? conn_send_tls(c, &sent) : conn_send_tcp(c, &sent);
        if (r < 0) return;
        c->out_off += sent;
    }
    if (out_pending(c) == 0) {
        c->write_blocked = false;
        out_reset(c);
    }
    if (c->state == NET_FLUSHING) {
        if (out_pending(c) == 0) conn_begin_linger(c);
        return;
    }
    conn_check_drain(c);
}

/* ---------------------------------------------------------------- TLS handshake */

static void conn_handshake(net_conn_t *c)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->handshaking = false;
        ev_timer_stop(c->loop, &c->timer_w);
        log_debug("TLS handshake with %s:%d done: %s, %s", c->peer_host, c->peer_port, SSL_get_version(c->ssl),
                  SSL_get_cipher_name(c->ssl));
        conn_read(c);      /* application data may have come in the same packet as the Finished message */
        conn_flush(c);     /* and the protocol layer may have queued output already */
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->handshake_wants_write = e == SSL_ERROR_WANT_WRITE;
        return;
    }
    /* A peer that just hangs up (TCP health checks, port scanners) is routine: debug. Anything the peer said
     * wrong is worth an info line. */
    unsigned long first = ERR_peek_error();
    bool hung_up = (e == SSL_ERROR_SYSCALL && first == 0) ||
                   (ERR_GET_LIB(first) == ERR_LIB_SSL && ERR_GET_REASON(first) == SSL_R_UNEXPECTED_EOF_WHILE_READING);
    char reason[256];
    if (e == SSL_ERROR_SYSCALL && first == 0)
        snprintf(reason, sizeof reason, "%s", errno ? strerror(errno) : "peer closed the connection");
    else
        net_tls_error_string(reason, sizeof reason);
    if (hung_up) log_debug("TLS handshake with %s:%d failed: %s", c->peer_host, c->peer_port, reason);
    else log_info("TLS handshake with %s:%d failed: %s", c->peer_host, c->peer_port, reason);
    conn_teardown(c, "TLS handshake failed");
}

/* ---------------------------------------------------------------- loop callbacks */

static void conn_on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
    net_conn_t *c = w->data;
    (void)loop;
    (void)revents;
    if (c->state == NET_LINGER) {
        conn_linger_read(c);
    } else if (c->handshaking) {
        conn_handshake(c);
    } else {
        if (c->write_wants_read) conn_flush(c);
        conn_read(c);
    }
    conn_settle(c);
}

static void conn_on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
    net_conn_t *c = w->data;
    (void)loop;
    (void)revents;
    if (c->handshaking) {
        conn_handshake(c);
    } else {
        if (c->read_wants_write) {
            c->read_wants_write = false;
            conn_read(c);
        }
        conn_flush(c);
    }
    conn_settle(c);
}

static void conn_pump(net_conn_t *c)
{
    ev_prepare_stop(c->loop, &c->pump_w);
    ev_idle_stop(c->loop, &c->wake_w);
    if (c->read_more) {
        c->read_more = false;
        conn_read(c);
    }
    if (!c->write_blocked && !c->write_wants_read) conn_flush(c);
    conn_settle(c);
}

static void conn_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_pump(w->data);
}

static void conn_on_idle(struct ev_loop *loop, ev_idle *w, int revents)
{
    (void)loop;
    (void)revents;
    conn_pump(w->data);
}

static void conn_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    net_conn_t *c = w->data;
    (void)loop;
    (void)revents;
    if (c->state == NET_OPEN && c->handshaking) {
        log_info("TLS handshake with %s:%d timed out", c->peer_host, c->peer_port);
        conn_teardown(c, "TLS handshake timeout");
    } else if (c->state == NET_FLUSHING || c->state == NET_LINGER) {
        conn_teardown(c, "close timeout");
    }
    conn_settle(c);
}

/* ---------------------------------------------------------------- accepting */

static void listener_free(net_listener_t *l)
{
    if (l->tls_ctx) SSL_CTX_free(l->tls_ctx);
    free(l);
}

/* Wraps an accepted socket into a net_conn_t and hands it to the accept callback. */
static void listener_adopt(net_listener_t *l, int fd)
{
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    net_conn_t *c = calloc(1, sizeof *c);
    if (!c) {
        log_error("out of memory accepting a connection on port %d", l->port);
        close(fd);
        return;
    }
    c->loop = l->loop;
    c->fd = fd;
    c->state = NET_OPEN;
    c->high_water = NET_DEFAULT_HIGH_WATER;
    c->low_water = NET_DEFAULT_LOW_WATER;
    conn_fill_addresses(c);
    if (l->tls_ctx) {
        ERR_clear_error();
        c->ssl = SSL_new(l->tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
            char reason[256];
            net_tls_error_string(reason, sizeof reason);
            log_error("cannot start TLS for %s:%d: %s", c->peer_host, c->peer_port, reason);
            SSL_free(c->ssl);
            close(fd);
            free(c);
            return;
        }
        SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
        SSL_set_accept_state(c->ssl);
        /* Pull whole bursts of records per read() instead of header-then-body: half the syscalls for small
         * frames. The price is plaintext poll cannot see, which conn_read/read_more take care of. */
        SSL_set_read_ahead(c->ssl, 1);
        c->is_tls = true;
        c->handshaking = true;
    }
    ev_io_init(&c->read_w, conn_on_readable, fd, EV_READ);
    ev_io_init(&c->write_w, conn_on_writable, fd, EV_WRITE);
    ev_prepare_init(&c->pump_w, conn_on_prepare);
    ev_idle_init(&c->wake_w, conn_on_idle);
    ev_timer_init(&c->timer_w, conn_on_timer, NET_HANDSHAKE_TIMEOUT, 0.);
    c->read_w.data = c->write_w.data = c->pump_w.data = c->wake_w.data = c->timer_w.data = c;
    if (c->handshaking) ev_timer_start(c->loop, &c->timer_w);
    log_debug("accepted %s:%d on port %d%s", c->peer_host, c->peer_port, l->port, c->is_tls ? " (TLS)" : "");

    l->cb(l->arg, c);
    if (!c->handler.on_close && !c->handler.on_data && c->state == NET_OPEN)
        log_warn("connection %s:%d accepted without a handler", c->peer_host, c->peer_port);
    /* The callback may have closed it already; then the pump finishes the job. */
    if (c->state != NET_DEAD) conn_update_watchers(c);
}

static bool accept_error_is_transient(int err)
{
    return err == EINTR || err == ECONNABORTED || err == EPROTO || err == ENETDOWN || err == ENOPROTOOPT ||
           err == EHOSTDOWN || err == ENONET || err == EHOSTUNREACH || err == EOPNOTSUPP || err == ENETUNREACH;
}

static void listener_set_accepting(net_listener_t *l, bool on)
{
    for (int i = 0; i < l->nsocks; i++) io_set_active(l->loop, &l->accept_w[i], on);
}

static void listener_on_backoff(struct ev_loop *loop, ev_timer *w, int revents)
{
    net_listener_t *l = w->data;
    (void)loop;
    (void)revents;
    listener_set_accepting(l, true);
}

static void listener_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    net_listener_t *l = w->data;
    (void)revents;
    l->in_accept = true;
    for (int i = 0; i < NET_ACCEPT_BUDGET && !l->close_requested; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            l->warned_fd_limit = false;
            listener_adopt(l, fd);
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        if (accept_error_is_transient(errno)) continue;
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            if (!l->warned_fd_limit)
                log_warn("cannot accept on port %d: %s; retrying every %.0f ms", l->port, strerror(errno),
                         NET_ACCEPT_BACKOFF * 1000);
            l->warned_fd_limit = true;
            listener_set_accepting(l, false);
            ev_timer_set(&l->backoff_w, NET_ACCEPT_BACKOFF, 0.);
            ev_timer_start(loop, &l->backoff_w);
            break;
        }
        log_error("accept on port %d failed: %s", l->port, strerror(errno));
        break;
    }
    l->in_accept = false;
    if (l->close_requested) listener_free(l);
}

/* ---------------------------------------------------------------- listening */

static void net_ignore_sigpipe(void)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = SIG_IGN;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGPIPE, &sa, NULL);
    }
}

static void sockaddr_set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET6) ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
    else ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
}

/* socket+bind+listen on one address. dual_stack: an IPv6 socket that also takes IPv4 (for "listen on all").
 * Returns the fd, or -1 with errno. */
static int listen_socket(const struct sockaddr_storage *ss, socklen_t len, bool dual_stack)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1, zero = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        (dual_stack && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0) ||
        bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, SOMAXCONN) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    char host[NET_HOST_LEN];
    int port = 0;
    bool loopback;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return -1;
    net_addr_text(&ss, host, &port, &loopback);
    return port;
}

/* Errors that mean "this machine has no such address family or address": skipped when other addresses bind. */
static bool listen_error_is_absence(int err)
{
    return err == EAFNOSUPPORT || err == EPROTONOSUPPORT || err == EADDRNOTAVAIL;
}

/* "All interfaces": one dual-stack IPv6 socket, or plain IPv4 on a host without IPv6. */
static int listen_any(net_listener_t *l, int port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_any;
    sockaddr_set_port(&ss, port);
    snprintf(l->shown_host, sizeof l->shown_host, "[::]");
    int fd = listen_socket(&ss, sizeof *sin6, true);
    if (fd < 0 && listen_error_is_absence(errno)) {
        memset(&ss, 0, sizeof ss);
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sockaddr_set_port(&ss, port);
        snprintf(l->shown_host, sizeof l->shown_host, "0.0.0.0");
        fd = listen_socket(&ss, sizeof *sin, false);
    }
    if (fd < 0) return -1;
    l->socks[l->nsocks++] = fd;
    return 0;
}

/* A host name or address literal: every address it resolves to (a name like "localhost" often means both ::1
 * and 127.0.0.1). With port 0, the first socket picks the port and the others share it. Returns 0, or -1 with
 * errno, or with *gai_err when the name did not resolve. */
static int listen_host(net_listener_t *l, const char *host, int port, int *gai_err)
{
    char port_text[16];
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port_text, sizeof port_text, "%d", port);
    *gai_err = getaddrinfo(host, port_text, &hints, &res);
    if (*gai_err != 0) return -1;
    int failure = 0, absent = EADDRNOTAVAIL;
    struct sockaddr_storage bound[NET_MAX_LISTEN_SOCKS];
    for (struct addrinfo *ai = res; ai && !failure && l->nsocks < NET_MAX_LISTEN_SOCKS; ai = ai->ai_next) {
        struct sockaddr_storage ss;
        if (ai->ai_addrlen > sizeof ss) continue;
        memset(&ss, 0, sizeof ss);
        memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
        if (l->nsocks > 0) sockaddr_set_port(&ss, l->port);
        bool duplicate = false;
        for (int i = 0; i < l->nsocks; i++) duplicate |= memcmp(&bound[i], &ss, sizeof ss) == 0;
        if (duplicate) continue;
        int fd = listen_socket(&ss, ai->ai_addrlen, false);
        if (fd < 0) {
            if (listen_error_is_absence(errno)) absent = errno;
            else failure = errno;
            continue;
        }
        if (l->nsocks == 0) l->port = bound_port(fd);
        bound[l->nsocks] = ss;
        l->socks[l->nsocks++] = fd;
    }
    freeaddrinfo(res);
    if (failure || l->nsocks == 0) {
        errno = failure ? failure : absent;
        return -1;
    }
    return 0;
}

static void listener_close_sockets(net_listener_t *l)
{
    for (int i = 0; i < l->nsocks; i++) {
        ev_io_stop(l->loop, &l->accept_w[i]);
        close(l->socks[i]);
    }
    ev_timer_stop(l->loop, &l->backoff_w);
    l->nsocks = 0;
}

net_listener_t *net_listen(struct ev_loop *loop, const char *host, int port, SSL_CTX *tls_ctx,
                           net_accept_cb cb, void *arg, char *err, size_t errlen)
{
    bool any = !host || !*host;
    net_listener_t *l = calloc(1, sizeof *l);
    if (!l) {
        snprintf(err, errlen, "cannot listen on %s:%d: out of memory", any ? "*" : host, port);
        return NULL;
    }
    if (any) snprintf(l->shown_host, sizeof l->shown_host, "*");
    else snprintf(l->shown_host, sizeof l->shown_host, strchr(host, ':') ? "[%s]" : "%s", host);
    if (!loop || !cb || port < 0 || port > 65535) {
        snprintf(err, errlen, "cannot listen on %s:%d: invalid arguments", l->shown_host, port);
        free(l);
        return NULL;
    }
    net_ignore_sigpipe();

    l->loop = loop;
    l->port = port;
    int gai_err = 0;
    if ((any ? listen_any(l, port) : listen_host(l, host, port, &gai_err)) != 0) {
        int saved = errno;
        listener_close_sockets(l);
        snprintf(err, errlen, "cannot listen on %s:%d: %s", l->shown_host, port,
                 gai_err ? gai_strerror(gai_err) : strerror(saved));
        free(l);
        return NULL;
    }
    l->port = bound_port(l->socks[0]);
    l->cb = cb;
    l->arg = arg;
    if (tls_ctx) {
        SSL_CTX_up_ref(tls_ctx);
        l->tls_ctx = tls_ctx;
    }
    for (int i = 0; i < l->nsocks; i++) {
        ev_io_init(&l->accept_w[i], listener_on_accept, l->socks[i], EV_READ);
        l->accept_w[i].data = l;
        ev_io_start(loop, &l->accept_w[i]);
    }
    ev_timer_init(&l->backoff_w, listener_on_backoff, NET_ACCEPT_BACKOFF, 0.);
    l->backoff_w.data = l;
    log_debug("listening on %s:%d%s", l->shown_host, l->port, tls_ctx ? " (TLS)" : "");
    return l;
}

int net_listener_port(const net_listener_t *l) { return l ? l->port : -1; }

void net_listener_close(net_listener_t *l)
{
    if (!l || l->close_requested) return;
    listener_close_sockets(l);
    l->close_requested = true;
    if (!l->in_accept) listener_free(l);
}

/* ---------------------------------------------------------------- connection API */

void net_conn_set_handler(net_conn_t *c, const net_handler_t *h, void *ud)
{
    if (!c) return;
    if (h) c->handler = *h;
    else memset(&c->handler, 0, sizeof c->handler);
    c->ud = ud;
}

void net_write(net_conn_t *c, const void *data, size_t len)
{
    if (!c || c->state != NET_OPEN || len == 0) return;
    if (!out_reserve(c, len)) {
        log_error("out of memory queueing %zu bytes for %s:%d", len, c->peer_host, c->peer_port);
        conn_teardown(c, "out of memory");
        return;
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += len;
    if (out_pending(c) > c->high_water) c->above_high = true;
    /* When blocked, the EV_WRITE watcher (or the TLS read side) brings us back; no need to wake the pump. */
    if (!c->handshaking && !c->write_blocked && !c->write_wants_read) conn_schedule(c);
}

size_t net_out_pending(const net_conn_t *c) { return c ? out_pending(c) : 0; }

void net_set_watermarks(net_conn_t *c, size_t high, size_t low)
{
    if (!c) return;
    c->high_water = high;
    c->low_water = low <= high ? low : high;
}

void net_pause_reading(net_conn_t *c, bool paused)
{
    if (!c || c->state != NET_OPEN || c->read_paused == paused) return;
    c->read_paused = paused;
    /* Input already decrypted by OpenSSL would never wake poll again: have the pump deliver it. */
    if (!paused && c->ssl && !c->handshaking && SSL_has_pending(c->ssl)) {
        c->read_more = true;
        conn_schedule(c);
    }
    conn_update_watchers(c);
}

void net_close(net_conn_t *c, bool flush)
{
    if (!c || c->state == NET_DEAD) return;
    if (c->state != NET_OPEN) {
        if (!flush) conn_teardown(c, "closed without flush");
        return;
    }
    if (!flush || c->handshaking) {
        conn_teardown(c, "closed by the broker");
        return;
    }
    c->state = NET_FLUSHING;
    c->read_more = false;
    ev_timer_stop(c->loop, &c->timer_w);
    ev_timer_set(&c->timer_w, NET_CLOSE_TIMEOUT, 0.);
    ev_timer_start(c->loop, &c->timer_w);
    conn_update_watchers(c);
    conn_schedule(c);
}

const char *net_peer_host(const net_conn_t *c) { return c ? c->peer_host : "unknown"; }
int net_peer_port(const net_conn_t *c) { return c ? c->peer_port : 0; }
const char *net_local_host(const net_conn_t *c) { return c ? c->local_host : "unknown"; }
int net_local_port(const net_conn_t *c) { return c ? c->local_port : 0; }
bool net_peer_is_loopback(const net_conn_t *c) { return c && c->peer_loopback; }
bool net_is_tls(const net_conn_t *c) { return c && c->is_tls; }

const char *net_tls_version(const net_conn_t *c)
{
    if (!c || !c->ssl || c->handshaking) return NULL;
    return SSL_get_version(c->ssl);
}
