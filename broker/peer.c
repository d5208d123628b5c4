/* peer.c - the inter-node transport (see peer.h): sockets, TLS, handshake, liveness, calls.
 *
 * Objects:
 *   struct pnode   one other node: its address (if known), name, the authenticated connection
 *                  (up), our own dial in progress (dialing), reconnect timer and backoff.
 *   struct pconn   one TCP connection, in one of: CONNECTING (dialer, connect() pending),
 *                  HANDSHAKE (TLS and/or cookie authentication under way), UP, DEAD.
 *   struct pcall   one outgoing call awaiting its reply, in a hash by id, with its timer.
 *
 * Handshake (cluster.proto has the messages): the dialer queues Hello as soon as the socket
 * exists; the acceptor answers with HelloChallenge, proving the cookie over both nonces; the
 * dialer checks that proof, answers with HelloResponse and is up; the acceptor checks it and is
 * up. Before that only handshake frames of at most PEER_HANDSHAKE_FRAME bytes are accepted, so an
 * unauthenticated stranger can make us allocate almost nothing.
 *
 * A Hello claiming PEER_CLIENT_ID comes from a command-line client: same handshake (minus the
 * cluster-name check), then the connection is flagged client, belongs to no pnode, may only send
 * calls and pings, and its replies are found by connection generation (peer_reply).
 *
 * One connection per pair: the node with the smaller id dials (or both, for a node marked
 * dial_always: a joining node whose address the members do not know yet). If a second authenticated
 * connection to the same node appears anyway (a peer restarted before we noticed the old
 * connection die, or both sides dialed), both ends apply the same rule: keep the connection
 * dialed by the smaller id; between two dialed by the same node keep the newer one. Replacing an
 * up connection reports the node down, then up again: calls in flight on the old one are lost.
 *
 * Invariants:
 *  - n->up, if set, is in state UP and n->up->node == n; n->dialing is a dialer connection not
 *    yet up. A node is "up" exactly while n->up is set: up/down callbacks pair up.
 *  - a pconn is freed only by the reaper (an ev_prepare watcher, after every callback of the
 *    current loop iteration), so code holding a pconn may keep using it after conn_kill() and
 *    just checks c->state. Removed nodes go the same way.
 *  - public functions only queue bytes and start watchers; sockets are written from the loop.
 *  - c->out holds whole frames; out_off marks what the socket has taken.
 *
 * Data flow in: EV_READ -> read()/SSL_read straight into c->in, 64 KiB at a time (at most
 * PEER_READ_BUDGET per wakeup, so one busy peer cannot starve the loop) -> cut at length prefixes
 * -> rw_decode -> dispatch by frame type. */
#include "broker/peer.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <sodium.h>

#include "broker/log.h"

#define PEER_READ_CHUNK (64 * 1024)
#define PEER_READ_BUDGET (4 * PEER_READ_CHUNK)
#define PEER_HANDSHAKE_FRAME 4096     /* largest frame before authentication */
#define PEER_MAX_PENDING 64           /* unauthenticated incoming connections at once */
#define PEER_ACCEPT_BUDGET 16
#define PEER_OUT_KEEP_CAP (1024 * 1024) /* a drained output buffer above this is freed */
#define PEER_CALL_TIMEOUT 30.0
#define PEER_ADDR_LEN (INET6_ADDRSTRLEN + 300)
#define PEER_AUTH_LABEL "warren-cluster-auth-v1"

enum pc_state { PC_CONNECTING, PC_HANDSHAKE, PC_UP, PC_DEAD };
enum pc_auth { AUTH_WAIT_HELLO, AUTH_WAIT_CHALLENGE, AUTH_WAIT_RESPONSE, AUTH_DONE };

struct pnode;

struct pconn {
    peer_mesh_t *m;
    struct pconn *prev, *next;  /* m->conns while alive, m->dead after conn_kill */
    int fd;
    SSL *ssl;
    bool tls_done;
    bool tls_wants_write;       /* the TLS handshake or a read needs the socket writable */
    bool tls_write_wants_read;  /* SSL_write needs the socket readable */
    ev_io rio, wio;
    enum pc_state state;
    enum pc_auth auth;
    bool dialer;
    bool client;                /* an authenticated command-line client (PEER_CLIENT_ID) */
    struct pnode *node;         /* dialer: from the start; acceptor: once authenticated; never
                                   set for a client */
    uint32_t peer_id;           /* from the peer's Hello/HelloChallenge */
    char peer_name[RW_MAX_NAME + 1];
    size_t peer_max_frame;
    uint8_t my_nonce[RW_NONCE_LEN], their_nonce[RW_NONCE_LEN];
    struct rw_buf in;
    size_t in_off;
    struct rw_buf out;
    size_t out_off;
    ev_tstamp started, last_rx;
    uint64_t gen;
    char addr[PEER_ADDR_LEN];   /* host:port of the other end, for log lines */
};

struct pnode {
    peer_mesh_t *m;
    struct pnode *next;
    uint32_t id;
    char host[256];
    int port;                   /* 0: address unknown (the node dialed us), never dialed */
    char name[RW_MAX_NAME + 1];
    struct pconn *up, *dialing;
    ev_timer retry_w;
    double backoff;
    bool fail_logged;           /* a failed dial was logged at info since the last success */
    bool dial_always;           /* dial even though our id is larger (peer_set_dial_always) */
};

struct pcall {
    peer_mesh_t *m;
    struct pcall *hnext;        /* hash chain */
    uint64_t id;
    uint32_t node;
    peer_reply_cb cb;
    void *arg;
    ev_timer timer_w;
    struct pcall *fail_next;    /* scratch list while failing a node's calls */
};

struct peer_mesh {
    struct ev_loop *loop;
    struct peer_config cfg;     /* strings below point at the copies here */
    char node_name[RW_MAX_NAME + 1], cluster_name[RW_MAX_NAME + 1];
    char *cookie;
    int listen_fd, port;
    ev_io accept_w;
    ev_timer accept_pause_w;
    ev_timer tick_w;
    ev_prepare reap_w;
    struct pnode *nodes, *dead_nodes;
    struct pconn *conns, *dead;
    unsigned n_conns, n_pending;
    struct pcall **calls;       /* hash by id: n_buckets (a power of two) chains */
    size_t n_buckets, n_calls;
    uint64_t next_call_id, next_gen, ping_seq;
    bool freeing;               /* peer_mesh_free: no more callbacks */
    struct peer_stats stats;
};

static void conn_update(struct pconn *c);
static void conn_kill(struct pconn *c, enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void node_schedule_dial(struct pnode *n, bool now);

/* ---- small helpers ------------------------------------------------------------------------ */

const char *peer_strerror(int status)
{
    switch (status) {
    case PEER_OK: return "ok";
    case PEER_EDOWN: return "node is down";
    case PEER_ENODE: return "unknown node";
    case PEER_ETIMEDOUT: return "timed out";
    case PEER_ETOOBIG: return "too large";
    case PEER_EBUSY: return "send buffer full";
    case PEER_EINVAL: return "invalid argument";
    case PEER_ENOMEM: return "out of memory";
    case PEER_ENOHANDLER: return "no call handler";
    default: return status > 0 ? "application error" : "unknown error";
    }
}

static int from_rw(int rc)
{
    switch (rc) {
    case RW_OK: return PEER_OK;
    case RW_ETOOBIG: return PEER_ETOOBIG;
    case RW_ENOMEM: return PEER_ENOMEM;
    default: return PEER_EINVAL;
    }
}

static void tls_reason(char *buf, size_t len)
{
    unsigned long e = ERR_get_error();
    while (ERR_get_error() != 0) {
    }
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(buf, len, "%s", r ? r : (errno ? strerror(errno) : "unknown TLS error"));
}

static void addr_text(const struct sockaddr *sa, char *buf, size_t len)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        port = ntohs(s->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        /* IPv4 peers of a dual-stack listener are shown as plain IPv4, as operators expect. */
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s->sin6_addr)) inet_ntop(AF_INET, &s->sin6_addr.s6_addr[12], host, sizeof host);
        else inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
        port = ntohs(s->sin6_port);
    }
    snprintf(buf, len, "%s:%d", host, port);
}

static size_t send_limit(const struct pconn *c)
{
    size_t lim = c->m->cfg.max_frame;
    return c->peer_max_frame && c->peer_max_frame < lim ? c->peer_max_frame : lim;
}

void peer_auth_mac(const char *cookie, bool acceptor, const uint8_t dialer_nonce[RW_NONCE_LEN],
                   const uint8_t acceptor_nonce[RW_NONCE_LEN], uint32_t dialer_id, uint32_t acceptor_id,
                   uint8_t out[RW_MAC_LEN])
{
    /* The role label keeps one side's proof from ever being replayed as the other's. */
    const char *role = acceptor ? PEER_AUTH_LABEL " acceptor" : PEER_AUTH_LABEL " dialer";
    uint8_t ids[8] = {(uint8_t)(dialer_id >> 24), (uint8_t)(dialer_id >> 16), (uint8_t)(dialer_id >> 8),
                      (uint8_t)dialer_id, (uint8_t)(acceptor_id >> 24), (uint8_t)(acceptor_id >> 16),
                      (uint8_t)(acceptor_id >> 8), (uint8_t)acceptor_id};
    crypto_auth_hmacsha256_state st;
    crypto_auth_hmacsha256_init(&st, (const unsigned char *)cookie, strlen(cookie));
    crypto_auth_hmacsha256_update(&st, (const unsigned char *)role, strlen(role) + 1);
    crypto_auth_hmacsha256_update(&st, dialer_nonce, RW_NONCE_LEN);
    crypto_auth_hmacsha256_update(&st, acceptor_nonce, RW_NONCE_LEN);
    crypto_auth_hmacsha256_update(&st, ids, sizeof ids);
    crypto_auth_hmacsha256_final(&st, out);
    sodium_memzero(&st, sizeof st);
}

/* ---- nodes -------------------------------------------------------------------------------- */

static struct pnode *node_find(const peer_mesh_t *m, uint32_t id)
{
    for (struct pnode *n = m->nodes; n; n = n->next)
        if (n->id == id) return n;
    return NULL;
}

static void node_on_retry(struct ev_loop *loop, ev_timer *w, int revents);

static struct pnode *node_new(peer_mesh_t *m, uint32_t id)
{
    struct pnode *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->m = m;
    n->id = id;
    n->backoff = m->cfg.backoff_min;
    ev_timer_init(&n->retry_w, node_on_retry, 0, 0);
    n->retry_w.data = n;
    n->next = m->nodes;
    m->nodes = n;
    return n;
}

static bool node_should_dial(const struct pnode *n)
{
    return n->port > 0 && (n->m->cfg.node_id < n->id || n->dial_always) && !n->up && !n->dialing &&
           !n->m->freeing;
}

/* ---- calls -------------------------------------------------------------------------------- */

static size_t call_bucket(const peer_mesh_t *m, uint64_t id)
{
    return (size_t)(id * 0x9e3779b97f4a7c15ull >> 17) & (m->n_buckets - 1);
}

static bool calls_grow(peer_mesh_t *m)
{
    size_t nb = m->n_buckets ? m->n_buckets * 2 : 64;
    struct pcall **b = calloc(nb, sizeof *b);
    if (!b) return false;
    size_t old = m->n_buckets;
    struct pcall **ob = m->calls;
    m->calls = b;
    m->n_buckets = nb;
    for (size_t i = 0; i < old; i++)
        for (struct pcall *c = ob[i], *next; c; c = next) {
            next = c->hnext;
            size_t k = call_bucket(m, c->id);
            c->hnext = b[k];
            b[k] = c;
        }
    free(ob);
    return true;
}

/* Unlinks and returns the call with this id, or NULL. */
static struct pcall *call_take(peer_mesh_t *m, uint64_t id)
{
    if (!m->n_buckets) return NULL;
    for (struct pcall **pp = &m->calls[call_bucket(m, id)]; *pp; pp = &(*pp)->hnext)
        if ((*pp)->id == id) {
            struct pcall *c = *pp;
            *pp = c->hnext;
            m->n_calls--;
            ev_timer_stop(m->loop, &c->timer_w);
            return c;
        }
    return NULL;
}

static void call_on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct pcall *c = w->data;
    peer_mesh_t *m = c->m;
    if (call_take(m, c->id) != c) return;
    c->cb(c->arg, PEER_ETIMEDOUT, "call timed out", NULL, 0);
    free(c);
}

/* Completes every call pending on node with PEER_EDOWN. They are all unlinked before the first
 * callback runs, so callbacks may call, cancel or reply freely. */
static void calls_fail_node(peer_mesh_t *m, uint32_t node)
{
    struct pcall *list = NULL;
    for (size_t i = 0; i < m->n_buckets; i++)
        for (struct pcall **pp = &m->calls[i]; *pp;) {
            struct pcall *c = *pp;
            if (c->node != node) {
                pp = &c->hnext;
                continue;
            }
            *pp = c->hnext;
            m->n_calls--;
            ev_timer_stop(m->loop, &c->timer_w);
            c->fail_next = list;
            list = c;
        }
    while (list) {
        struct pcall *c = list;
        list = c->fail_next;
        if (!m->freeing) c->cb(c->arg, PEER_EDOWN, "connection to the node lost", NULL, 0);
        free(c);
    }
}

/* ---- output ------------------------------------------------------------------------------- */

static size_t out_pending(const struct pconn *c) { return c->out.len - c->out_off; }

/* Moves the unsent bytes to the front once the sent prefix is at least as large: amortised O(1)
 * per byte, and encoders can append at out.len. */
static void out_compact(struct pconn *c)
{
    size_t live = out_pending(c);
    if (c->out_off == 0 || c->out_off < live) return;
    memmove(c->out.data, c->out.data + c->out_off, live);
    c->out_off = 0;
    c->out.len = live;
}

/* Frames the caller appended after `before`: accept them if they fit the send bound (a lone frame
 * always fits), else take them back. Returns PEER_OK or PEER_EBUSY. */
static int out_admit(struct pconn *c, size_t before)
{
    size_t queued_before = before - c->out_off;
    if (queued_before > 0 && out_pending(c) > c->m->cfg.max_out) {
        c->out.len = before;
        return PEER_EBUSY;
    }
    c->m->stats.frames_out++;
    conn_update(c);
    return PEER_OK;
}

/* Handshake and ping frames: tiny, exempt from the bound. */
static void out_control(struct pconn *c, int rc)
{
    if (rc != RW_OK) {
        conn_kill(c, LOG_ERROR, "cannot encode a control frame: %s", rw_strerror(rc));
        return;
    }
    c->m->stats.frames_out++;
    conn_update(c);
}

/* ---- connection lifecycle ----------------------------------------------------------------- */

static void conn_on_io(struct ev_loop *loop, ev_io *w, int revents);

static struct pconn *conn_new(peer_mesh_t *m, int fd, bool dialer)
{
    struct pconn *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->m = m;
    c->fd = fd;
    c->dialer = dialer;
    c->gen = ++m->next_gen;
    c->started = c->last_rx = ev_now(m->loop);
    ev_io_init(&c->rio, conn_on_io, fd, EV_READ);
    ev_io_init(&c->wio, conn_on_io, fd, EV_WRITE);
    c->rio.data = c->wio.data = c;
    randombytes_buf(c->my_nonce, sizeof c->my_nonce);
    c->next = m->conns;
    if (m->conns) m->conns->prev = c;
    m->conns = c;
    m->n_conns++;
    if (!dialer) m->n_pending++;
    return c;
}

static void reap_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)revents;
    peer_mesh_t *m = w->data;
    while (m->dead) {
        struct pconn *c = m->dead;
        m->dead = c->next;
        free(c);
    }
    while (m->dead_nodes) {
        struct pnode *n = m->dead_nodes;
        m->dead_nodes = n->next;
        free(n);
    }
    ev_prepare_stop(loop, w);
}

/* The node lost its authenticated connection c: fail its calls, report it down, dial again. */
static void node_lost(struct pnode *n, struct pconn *c)
{
    peer_mesh_t *m = n->m;
    n->up = NULL;
    if (m->freeing) return;
    log_info("peer node %u (%s) at %s is down", n->id, n->name, c->addr);
    node_schedule_dial(n, false);
    uint32_t id = n->id; /* n may be removed by a callback below */
    calls_fail_node(m, id);
    if (m->cfg.cb.down) m->cfg.cb.down(m->cfg.ud, id);
}

/* Closes c now (socket, TLS, buffers) and detaches it from its node; c itself stays readable
 * until the reaper runs. Logs the reason at level. Safe to call twice. */
static void conn_kill(struct pconn *c, enum log_level level, const char *fmt, ...)
{
    if (c->state == PC_DEAD) return;
    peer_mesh_t *m = c->m;
    if (!m->freeing && level >= log_get_level()) {
        char why[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof why, fmt, ap);
        va_end(ap);
        log_msg(level, "peer %s: %s", c->addr, why);
    }
    bool was_up = c->state == PC_UP;
    if (!c->dialer && c->state != PC_UP) m->n_pending--;
    c->state = PC_DEAD;
    ev_io_stop(m->loop, &c->rio);
    ev_io_stop(m->loop, &c->wio);
    if (c->ssl) SSL_free(c->ssl);
    c->ssl = NULL;
    close(c->fd);
    c->fd = -1;
    rw_buf_free(&c->in);
    rw_buf_free(&c->out);
    c->in_off = c->out_off = 0;

    if (c->prev) c->prev->next = c->next;
    else m->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    m->n_conns--;
    c->prev = NULL;
    c->next = m->dead;
    m->dead = c;
    ev_prepare_start(m->loop, &m->reap_w);

    struct pnode *n = c->node;
    if (!n) return;
    if (n->dialing == c) {
        n->dialing = NULL;
        node_schedule_dial(n, false);
    }
    if (was_up && n->up == c) node_lost(n, c);
}

/* Listens for exactly what the state needs. */
static void conn_update(struct pconn *c)
{
    if (c->state == PC_DEAD) return;
    struct ev_loop *loop = c->m->loop;
    bool want_write;
    if (c->state == PC_CONNECTING) want_write = true;
    else if (c->ssl && !c->tls_done) want_write = c->tls_wants_write;
    else want_write = c->tls_wants_write || (out_pending(c) > 0 && !c->tls_write_wants_read);
    bool want_read = c->state != PC_CONNECTING;
    if (want_read && !ev_is_active(&c->rio)) ev_io_start(loop, &c->rio);
    if (!want_read && ev_is_active(&c->rio)) ev_io_stop(loop, &c->rio);
    if (want_write && !ev_is_active(&c->wio)) ev_io_start(loop, &c->wio);
    if (!want_write && ev_is_active(&c->wio)) ev_io_stop(loop, &c->wio);
}

/* ---- socket I/O (plain or TLS) ------------------------------------------------------------ */

/* One read: >0 bytes, 0 = nothing now, -1 = the connection was killed. */
static ssize_t io_read(struct pconn *c, uint8_t *buf, size_t cap)
{
    if (!c->ssl) {
        for (;;) {
            ssize_t r = recv(c->fd, buf, cap, 0);
            if (r > 0) return r;
            if (r == 0) {
                if (c->state == PC_UP) conn_kill(c, LOG_INFO, "closed the connection");
                else if (c->peer_id)
                    conn_kill(c, LOG_WARN, "node %u (%s) closed the connection during authentication",
                              c->peer_id, c->peer_name);
                else conn_kill(c, LOG_WARN, "closed the connection during authentication");
                return -1;
            }
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            conn_kill(c, LOG_INFO, "read failed: %s", strerror(errno));
            return -1;
        }
    }
    size_t n = 0;
    ERR_clear_error();
    errno = 0;
    int r = SSL_read_ex(c->ssl, buf, cap, &n);
    if (r == 1) return (ssize_t)n;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) return 0;
    if (e == SSL_ERROR_WANT_WRITE) {
        c->tls_wants_write = true;
        return 0;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        conn_kill(c, LOG_INFO, "closed the TLS session");
        return -1;
    }
    char why[256];
    tls_reason(why, sizeof why);
    conn_kill(c, LOG_INFO, "TLS read failed: %s", why);
    return -1;
}

/* One write of the pending output: >0 bytes taken, 0 = would block, -1 = killed. */
static ssize_t io_write(struct pconn *c)
{
    const uint8_t *p = c->out.data + c->out_off;
    size_t len = out_pending(c);
    if (!c->ssl) {
        for (;;) {
            ssize_t r = send(c->fd, p, len, MSG_NOSIGNAL);
            if (r >= 0) return r;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            conn_kill(c, LOG_INFO, "write failed: %s", strerror(errno));
            return -1;
        }
    }
    size_t n = 0;
    ERR_clear_error();
    errno = 0;
    c->tls_write_wants_read = false;
    int r = SSL_write_ex(c->ssl, p, len, &n);
    if (r == 1) return (ssize_t)n;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_WRITE) return 0;
    if (e == SSL_ERROR_WANT_READ) {
        c->tls_write_wants_read = true;
        return 0;
    }
    char why[256];
    tls_reason(why, sizeof why);
    conn_kill(c, LOG_INFO, "TLS write failed: %s", why);
    return -1;
}

static void conn_flush(struct pconn *c)
{
    while (c->state != PC_DEAD && out_pending(c) > 0) {
        ssize_t n = io_write(c);
        if (n <= 0) return;
        c->out_off += (size_t)n;
    }
    if (c->state == PC_DEAD) return;
    c->out_off = c->out.len = 0;
    if (c->out.cap > PEER_OUT_KEEP_CAP) rw_buf_free(&c->out); /* a burst should not pin memory */
}

/* Drives the TLS handshake; true once it is complete. */
static bool conn_tls_handshake(struct pconn *c)
{
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    c->tls_wants_write = false;
    if (r == 1) {
        c->tls_done = true;
        return true;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) return false;
    if (e == SSL_ERROR_WANT_WRITE) {
        c->tls_wants_write = true;
        return false;
    }
    char why[256];
    tls_reason(why, sizeof why);
    conn_kill(c, LOG_WARN, "TLS handshake failed: %s", why);
    return false;
}

/* ---- handshake ---------------------------------------------------------------------------- */

static void my_ident(const struct pconn *c, struct rw_ident *id)
{
    const peer_mesh_t *m = c->m;
    *id = (struct rw_ident){.version = RW_VERSION, .node_id = m->cfg.node_id, .node_name = m->node_name,
                            .cluster_name = m->cluster_name, .max_frame = (uint32_t)m->cfg.max_frame};
    memcpy(id->nonce, c->my_nonce, RW_NONCE_LEN);
}

/* Checks what both Hello and HelloChallenge carry; kills c and returns false if unacceptable. */
static bool check_peer_ident(struct pconn *c, const struct rw_ident *id)
{
    peer_mesh_t *m = c->m;
    if (id->version != RW_VERSION) {
        conn_kill(c, LOG_WARN, "node %u (%s) speaks cluster protocol version %u, we speak %u", id->node_id,
                  id->node_name, id->version, RW_VERSION);
        return false;
    }
    if (id->node_id == m->cfg.node_id) {
        conn_kill(c, LOG_WARN, "claims our own node id %u (%s): node ids must be unique", id->node_id,
                  id->node_name);
        return false;
    }
    bool client = !c->dialer && id->node_id == PEER_CLIENT_ID;
    if (c->dialer && id->node_id == PEER_CLIENT_ID) {
        conn_kill(c, LOG_WARN, "claims the client id %u: not a node", id->node_id);
        return false;
    }
    if (!client && strcmp(id->cluster_name, m->cluster_name) != 0) {
        conn_kill(c, LOG_WARN, "node %u (%s) belongs to cluster '%s', we are '%s'", id->node_id, id->node_name,
                  id->cluster_name, m->cluster_name);
        return false;
    }
    c->peer_id = id->node_id;
    snprintf(c->peer_name, sizeof c->peer_name, "%s", id->node_name);
    c->peer_max_frame = id->max_frame;
    memcpy(c->their_nonce, id->nonce, RW_NONCE_LEN);
    return true;
}

static void auth_failed(struct pconn *c)
{
    c->m->stats.auth_failures++;
    log_warn("peer %s failed cookie authentication (node %u, %s): the cluster cookies differ", c->addr,
             c->peer_id, c->peer_name);
    conn_kill(c, LOG_DEBUG, "authentication failed");
}

/* Of two authenticated connections to the same node, the one to keep (see the top comment). */
static bool keep_existing(const peer_mesh_t *m, const struct pconn *old, const struct pconn *new)
{
    uint32_t peer = new->peer_id;
    uint32_t smaller = m->cfg.node_id < peer ? m->cfg.node_id : peer;
    uint32_t old_dialer = old->dialer ? m->cfg.node_id : peer;
    uint32_t new_dialer = new->dialer ? m->cfg.node_id : peer;
    if (old_dialer == new_dialer) return false; /* the newer one wins */
    return old_dialer == smaller;
}

/* A command-line client passed authentication: it may make calls from now on. */
static void client_authenticated(struct pconn *c)
{
    c->m->n_pending--;
    c->client = true;
    c->state = PC_UP;
    c->auth = AUTH_DONE;
    log_debug("peer %s: command-line client %s authenticated", c->addr, c->peer_name);
}

/* c passed authentication: it becomes the node's connection, unless a better one exists. */
static void conn_authenticated(struct pconn *c)
{
    peer_mesh_t *m = c->m;
    if (c->peer_id == PEER_CLIENT_ID) {
        client_authenticated(c);
        return;
    }
    struct pnode *n = c->node ? c->node : node_find(m, c->peer_id);
    if (!n && !(n = node_new(m, c->peer_id))) {
        conn_kill(c, LOG_ERROR, "out of memory");
        return;
    }
    if (n->dialing == c) n->dialing = NULL;
    if (n->up && keep_existing(m, n->up, c)) {
        conn_kill(c, LOG_INFO, "duplicate connection to node %u closed (keeping the one dialed by node %u)",
                  n->id, n->up->dialer ? m->cfg.node_id : n->id);
        return;
    }
    if (!c->dialer) m->n_pending--;
    c->node = n;
    c->state = PC_UP;
    c->auth = AUTH_DONE;
    if (n->up) conn_kill(n->up, LOG_INFO, "replaced by another connection to node %u", n->id);
    if (c->state != PC_UP) return; /* a down callback removed the node (and closed c) */
    n->up = c;
    snprintf(n->name, sizeof n->name, "%s", c->peer_name);
    n->backoff = m->cfg.backoff_min;
    n->fail_logged = false;
    ev_timer_stop(m->loop, &n->retry_w);
    log_info("peer node %u (%s) at %s is up%s", n->id, n->name, c->addr, c->ssl ? " (TLS)" : "");
    if (m->cfg.cb.up) m->cfg.cb.up(m->cfg.ud, n->id);
}

static void on_hello(struct pconn *c, const struct rw_frame *f)
{
    if (!check_peer_ident(c, &f->ident)) return;
    uint8_t mac[RW_MAC_LEN];
    peer_auth_mac(c->m->cookie, true, c->their_nonce, c->my_nonce, c->peer_id, c->m->cfg.node_id, mac);
    struct rw_ident me;
    my_ident(c, &me);
    c->auth = AUTH_WAIT_RESPONSE;
    out_control(c, rw_encode_challenge(&c->out, &me, mac));
}

static void on_challenge(struct pconn *c, const struct rw_frame *f)
{
    if (!check_peer_ident(c, &f->ident)) return;
    if (c->peer_id != c->node->id) {
        conn_kill(c, LOG_WARN, "is node %u (%s), expected node %u", c->peer_id, c->peer_name, c->node->id);
        return;
    }
    uint8_t want[RW_MAC_LEN];
    peer_auth_mac(c->m->cookie, true, c->my_nonce, c->their_nonce, c->m->cfg.node_id, c->peer_id, want);
    if (sodium_memcmp(want, f->mac, RW_MAC_LEN) != 0) {
        auth_failed(c);
        return;
    }
    uint8_t mac[RW_MAC_LEN];
    peer_auth_mac(c->m->cookie, false, c->my_nonce, c->their_nonce, c->m->cfg.node_id, c->peer_id, mac);
    out_control(c, rw_encode_response(&c->out, mac));
    if (c->state != PC_DEAD) conn_authenticated(c);
}

static void on_response(struct pconn *c, const struct rw_frame *f)
{
    uint8_t want[RW_MAC_LEN];
    peer_auth_mac(c->m->cookie, false, c->their_nonce, c->my_nonce, c->peer_id, c->m->cfg.node_id, want);
    if (sodium_memcmp(want, f->mac, RW_MAC_LEN) != 0) {
        auth_failed(c);
        return;
    }
    conn_authenticated(c);
}

/* A frame before authentication: only the one the handshake expects next is acceptable. */
static void dispatch_handshake(struct pconn *c, const struct rw_frame *f)
{
    static const enum rw_frame_type expected[] = {
        [AUTH_WAIT_HELLO] = RW_FRAME_HELLO,
        [AUTH_WAIT_CHALLENGE] = RW_FRAME_CHALLENGE,
        [AUTH_WAIT_RESPONSE] = RW_FRAME_RESPONSE,
    };
    if (c->auth == AUTH_DONE || f->type != expected[c->auth]) {
        c->m->stats.refused++;
        conn_kill(c, LOG_WARN, "sent a %s frame before authenticating", rw_frame_name(f->type));
        return;
    }
    switch (f->type) {
    case RW_FRAME_HELLO: on_hello(c, f); break;
    case RW_FRAME_CHALLENGE: on_challenge(c, f); break;
    default: on_response(c, f); break;
    }
}

/* ---- frames from an authenticated peer ---------------------------------------------------- */

static int send_reply(struct pconn *c, const struct rw_call_reply *r)
{
    size_t before = (out_compact(c), c->out.len);
    int rc = rw_encode_call_reply(&c->out, r, send_limit(c));
    if (rc == RW_ETOOBIG) {
        struct rw_call_reply small = {.id = r->id, .status = PEER_ETOOBIG, .error = "reply too large"};
        if (rw_encode_call_reply(&c->out, &small, send_limit(c)) == RW_OK) out_admit(c, before);
        return PEER_ETOOBIG;
    }
    return rc == RW_OK ? out_admit(c, before) : from_rw(rc);
}

static void on_call(struct pconn *c, const struct rw_frame *f)
{
    peer_mesh_t *m = c->m;
    if (!m->cfg.cb.call) {
        struct rw_call_reply r = {.id = f->call.id, .status = PEER_ENOHANDLER, .error = "no call handler"};
        send_reply(c, &r);
        return;
    }
    uint32_t from = c->client ? PEER_CLIENT_ID : c->node->id;
    struct peer_call_in in = {.reply_to = {.node = from, .conn = c->gen, .id = f->call.id},
                              .method = f->call.method, .payload = f->call.payload, .len = f->call.len};
    m->cfg.cb.call(m->cfg.ud, from, &in);
}

static void on_call_reply(struct pconn *c, const struct rw_frame *f)
{
    peer_mesh_t *m = c->m;
    struct pcall *call = call_take(m, f->reply.id);
    if (!call) return; /* timed out or cancelled already */
    if (call->node != c->node->id) {
        log_warn("peer %s: node %u answered call %llu, which went to node %u", c->addr, c->node->id,
                 (unsigned long long)f->reply.id, call->node);
        call->cb(call->arg, PEER_EDOWN, "reply from the wrong node", NULL, 0);
    } else {
        call->cb(call->arg, f->reply.status, f->reply.error, f->reply.payload, f->reply.len);
    }
    free(call);
}

/* Takes ownership of f. */
static void dispatch(struct pconn *c, struct rw_frame *f)
{
    peer_mesh_t *m = c->m;
    m->stats.frames_in++;
    if (c->state != PC_UP) {
        dispatch_handshake(c, f);
        rw_frame_free(f);
        return;
    }
    if (c->client && f->type != RW_FRAME_CALL && f->type != RW_FRAME_PING && f->type != RW_FRAME_PONG) {
        m->stats.refused++;
        conn_kill(c, LOG_WARN, "command-line client sent a %s frame", rw_frame_name(f->type));
        rw_frame_free(f);
        return;
    }
    switch (f->type) {
    case RW_FRAME_RAFT:
        if (m->cfg.cb.raft && m->cfg.cb.raft(m->cfg.ud, c->node->id, f)) return; /* kept */
        break;
    case RW_FRAME_PING: out_control(c, rw_encode_pong(&c->out, f->seq)); break;
    case RW_FRAME_PONG: break;
    case RW_FRAME_CALL: on_call(c, f); break;
    case RW_FRAME_CALL_REPLY: on_call_reply(c, f); break;
    default:
        m->stats.refused++;
        conn_kill(c, LOG_WARN, "sent a %s frame after authentication", rw_frame_name(f->type));
        break;
    }
    rw_frame_free(f);
}

/* Cuts every complete frame out of c->in and dispatches it. */
static void conn_parse(struct pconn *c)
{
    peer_mesh_t *m = c->m;
    while (c->state != PC_DEAD) {
        size_t avail = c->in.len - c->in_off, len = 0;
        size_t limit = c->state == PC_UP ? m->cfg.max_frame : PEER_HANDSHAKE_FRAME;
        int r = rw_frame_length(c->in.data + c->in_off, avail, limit, &len);
        if (r == RW_ETOOBIG) {
            m->stats.refused++;
            conn_kill(c, LOG_WARN, "sent a frame of %zu bytes, more than the limit of %zu", len, limit);
            return;
        }
        if (r == 0 || avail - RW_PREFIX_LEN < len) break;
        struct rw_frame *f = NULL;
        char why[256];
        int rc = rw_decode(c->in.data + c->in_off + RW_PREFIX_LEN, len, &f, why, sizeof why);
        c->in_off += RW_PREFIX_LEN + len;
        if (rc != RW_OK) {
            m->stats.refused++;
            conn_kill(c, LOG_WARN, "sent an invalid frame: %s", why);
            return;
        }
        dispatch(c, f);
    }
    if (c->state == PC_DEAD) return;
    size_t rest = c->in.len - c->in_off;
    if (rest && c->in_off) memmove(c->in.data, c->in.data + c->in_off, rest);
    c->in.len = rest;
    c->in_off = 0;
    if (!rest && c->in.cap > PEER_OUT_KEEP_CAP) rw_buf_free(&c->in);
}

static void conn_read(struct pconn *c)
{
    size_t budget = PEER_READ_BUDGET;
    while (c->state != PC_DEAD && budget > 0) {
        if (!rw_buf_reserve(&c->in, PEER_READ_CHUNK)) {
            conn_kill(c, LOG_ERROR, "out of memory");
            return;
        }
        ssize_t n = io_read(c, c->in.data + c->in.len, PEER_READ_CHUNK);
        if (n <= 0) return;
        c->last_rx = ev_now(c->m->loop);
        c->in.len += (size_t)n;
        conn_parse(c);
        budget -= (size_t)n < budget ? (size_t)n : budget;
    }
    /* Plaintext already inside OpenSSL is invisible to poll: come back for it. */
    if (c->state != PC_DEAD && c->ssl && SSL_pending(c->ssl) > 0) ev_feed_event(c->m->loop, &c->rio, EV_READ);
}

static bool conn_finish_connect(struct pconn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err == EINPROGRESS || err == EALREADY) return false;
    if (err) {
        struct pnode *n = c->node;
        enum log_level level = n->fail_logged ? LOG_DEBUG : LOG_INFO;
        n->fail_logged = true;
        conn_kill(c, level, "cannot connect to node %u: %s (retrying)", n->id, strerror(err));
        return false;
    }
    c->state = PC_HANDSHAKE;
    return true;
}

static void conn_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct pconn *c = w->data;
    if (c->state == PC_CONNECTING && !((revents & EV_WRITE) && conn_finish_connect(c))) {
        conn_update(c);
        return;
    }
    if (c->ssl && !c->tls_done && !conn_tls_handshake(c)) {
        conn_update(c);
        return;
    }
    if (c->tls_wants_write || (revents & EV_WRITE) || c->tls_write_wants_read) {
        c->tls_wants_write = false;
        conn_flush(c);
    }
    if (c->state != PC_DEAD && ((revents & EV_READ) || c->ssl)) conn_read(c);
    if (c->state != PC_DEAD && out_pending(c) > 0) conn_flush(c);
    conn_update(c);
}

/* ---- dialing and accepting ---------------------------------------------------------------- */

static int set_socket_options(int fd)
{
    int one = 1;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) return -1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static bool conn_start_tls(struct pconn *c, const char *sni)
{
    peer_mesh_t *m = c->m;
    SSL_CTX *ctx = c->dialer ? m->cfg.tls_client : m->cfg.tls_server;
    if (!ctx) return true;
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) return false;
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (!c->dialer) {
        SSL_set_accept_state(c->ssl);
        return true;
    }
    SSL_set_connect_state(c->ssl);
    struct in6_addr a6;
    bool literal = inet_pton(AF_INET, sni, &a6) == 1 || inet_pton(AF_INET6, sni, &a6) == 1;
    if (!literal) (void)SSL_set_tlsext_host_name(c->ssl, sni);
    if ((SSL_CTX_get_verify_mode(ctx) & SSL_VERIFY_PEER) && SSL_set1_host(c->ssl, sni) != 1) return false;
    return true;
}

/* Connects to the first address of host:port (a blocking lookup, instant for address literals). */
static int dial_socket(const struct pnode *n, char *why, size_t whylen)
{
    char port[16];
    snprintf(port, sizeof port, "%d", n->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(n->host, port, &hints, &res);
    if (g != 0) {
        snprintf(why, whylen, "cannot resolve %s: %s", n->host, gai_strerror(g));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || set_socket_options(fd) != 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(res);
        return -1;
    }
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0 && errno != EINPROGRESS) {
        snprintf(why, whylen, "connect: %s", strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static void node_dial(struct pnode *n)
{
    peer_mesh_t *m = n->m;
    if (!node_should_dial(n)) return;
    char why[300];
    int fd = dial_socket(n, why, sizeof why);
    if (fd < 0) {
        log_msg(n->fail_logged ? LOG_DEBUG : LOG_INFO, "peer node %u at %s:%d: %s (retrying)", n->id, n->host,
                n->port, why);
        n->fail_logged = true;
        node_schedule_dial(n, false);
        return;
    }
    struct pconn *c = conn_new(m, fd, true);
    if (!c) {
        close(fd);
        node_schedule_dial(n, false);
        return;
    }
    c->node = n;
    n->dialing = c;
    snprintf(c->addr, sizeof c->addr, "%s:%d", n->host, n->port);
    c->state = PC_CONNECTING;
    c->auth = AUTH_WAIT_CHALLENGE;
    if (!conn_start_tls(c, n->host)) {
        char r[256];
        tls_reason(r, sizeof r);
        conn_kill(c, LOG_ERROR, "cannot set up TLS: %s", r);
        return;
    }
    struct rw_ident me;
    my_ident(c, &me);
    out_control(c, rw_encode_hello(&c->out, &me)); /* sent once connected */
}

static void node_on_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    node_dial(w->data);
}

/* Arms the reconnect timer: at once, or after the current backoff with jitter (half to all of
 * it, so restarted nodes do not all dial in step), doubling the backoff for next time. */
static void node_schedule_dial(struct pnode *n, bool now)
{
    peer_mesh_t *m = n->m;
    if (!node_should_dial(n) || ev_is_active(&n->retry_w)) return;
    double delay = 0;
    if (!now) {
        delay = n->backoff * (0.5 + 0.5 * randombytes_uniform(1000001) / 1e6);
        n->backoff = n->backoff * 2 < m->cfg.backoff_max ? n->backoff * 2 : m->cfg.backoff_max;
    }
    ev_timer_set(&n->retry_w, delay, 0);
    ev_timer_start(m->loop, &n->retry_w);
}

static void accept_one(peer_mesh_t *m, int fd, const struct sockaddr *sa)
{
    char addr[PEER_ADDR_LEN];
    addr_text(sa, addr, sizeof addr);
    if (m->n_pending >= PEER_MAX_PENDING || set_socket_options(fd) != 0) {
        log_warn("peer %s: connection refused: %u connections are already authenticating", addr, m->n_pending);
        close(fd);
        return;
    }
    struct pconn *c = conn_new(m, fd, false);
    if (!c) {
        close(fd);
        return;
    }
    snprintf(c->addr, sizeof c->addr, "%s", addr);
    c->state = PC_HANDSHAKE;
    c->auth = AUTH_WAIT_HELLO;
    if (!conn_start_tls(c, NULL)) {
        char r[256];
        tls_reason(r, sizeof r);
        conn_kill(c, LOG_ERROR, "cannot set up TLS: %s", r);
        return;
    }
    conn_update(c);
}

static void accept_on_pause(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    peer_mesh_t *m = w->data;
    ev_io_start(loop, &m->accept_w);
}

static void accept_on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    peer_mesh_t *m = w->data;
    for (int i = 0; i < PEER_ACCEPT_BUDGET; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(m->listen_fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC);
        if (fd >= 0) {
            accept_one(m, fd, (struct sockaddr *)&ss);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        /* Out of descriptors or memory: pause instead of spinning on a readable listener. */
        log_warn("cluster listener: accept failed: %s", strerror(errno));
        ev_io_stop(loop, &m->accept_w);
        ev_timer_set(&m->accept_pause_w, 0.1, 0);
        ev_timer_start(loop, &m->accept_pause_w);
        return;
    }
}

static int listen_on(peer_mesh_t *m, const char *host, char *err, size_t errlen)
{
    if (host && !*host) host = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", m->cfg.listen_port);
    struct addrinfo hints = {.ai_family = host ? AF_UNSPEC : AF_INET6, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0 && !host) {
        hints.ai_family = AF_INET; /* no IPv6 on this host */
        g = getaddrinfo(host, port, &hints, &res);
    }
    if (g != 0) {
        snprintf(err, errlen, "cluster listener: cannot resolve %s: %s", host ? host : "*", gai_strerror(g));
        return -1;
    }
    int fd = -1, saved = 0;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) continue;
        int one = 1, zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (a->ai_family == AF_INET6 && !host) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, a->ai_addr, a->ai_addrlen) != 0 || listen(fd, 128) != 0) {
            saved = errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cluster listener: cannot listen on %s:%d: %s", host ? host : "*",
                 m->cfg.listen_port, strerror(saved));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &len);
    m->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                            : ((struct sockaddr_in6 *)&ss)->sin6_port);
    m->listen_fd = fd;
    return 0;
}

/* ---- liveness ----------------------------------------------------------------------------- */

static void tick_on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    peer_mesh_t *m = w->data;
    ev_tstamp now = ev_now(loop);
    for (struct pconn *c = m->conns, *next; c; c = next) {
        next = c->next; /* c may move to the dead list */
        if (c->state != PC_UP) {
            if (now - c->started > m->cfg.handshake_timeout)
                conn_kill(c, LOG_WARN, "%s timed out after %.1f s",
                          c->state == PC_CONNECTING ? "connecting" : "authentication", now - c->started);
            continue;
        }
        if (now - c->last_rx > m->cfg.down_after) {
            conn_kill(c, LOG_WARN, "node %u (%s) silent for %.1f s", c->peer_id, c->peer_name, now - c->last_rx);
            continue;
        }
        out_control(c, rw_encode_ping(&c->out, ++m->ping_seq));
    }
}

/* ---- public API --------------------------------------------------------------------------- */

void peer_config_defaults(struct peer_config *c)
{
    memset(c, 0, sizeof *c);
    c->ping_interval = 1.0;
    c->down_after = 5.0;
    c->backoff_min = 0.1;
    c->backoff_max = 5.0;
    c->handshake_timeout = 5.0;
    c->max_frame = 64u << 20;
}

static int check_config(const struct peer_config *c, char *err, size_t errlen)
{
    const char *why = NULL;
    if (c->node_id == 0 || c->node_id == PEER_CLIENT_ID) why = "node id must be non-zero and not the client id";
    else if (!c->cookie || !*c->cookie) why = "the cluster cookie must not be empty";
    else if (!c->node_name || !*c->node_name || strlen(c->node_name) > RW_MAX_NAME) why = "bad node name";
    else if (c->cluster_name && strlen(c->cluster_name) > RW_MAX_NAME) why = "cluster name too long";
    else if (!(c->ping_interval > 0) || !(c->down_after >= 2 * c->ping_interval))
        why = "down_after must be at least two ping intervals";
    else if (!(c->backoff_min > 0) || !(c->backoff_max >= c->backoff_min)) why = "bad reconnect backoff";
    else if (!(c->handshake_timeout > 0)) why = "bad handshake timeout";
    else if (c->max_frame < PEER_HANDSHAKE_FRAME || c->max_frame > RW_FRAME_LIMIT) why = "bad max frame size";
    else if (!c->tls_server != !c->tls_client) why = "TLS needs both a server and a client context";
    if (!why) return 0;
    snprintf(err, errlen, "cluster transport: %s", why);
    return -1;
}

peer_mesh_t *peer_mesh_new(struct ev_loop *loop, const struct peer_config *cfg, char *err, size_t errlen)
{
    if (check_config(cfg, err, errlen) != 0) return NULL;
    if (sodium_init() < 0) {
        snprintf(err, errlen, "cluster transport: libsodium failed to initialise");
        return NULL;
    }
    peer_mesh_t *m = calloc(1, sizeof *m);
    if (!m || !(m->cookie = strdup(cfg->cookie))) {
        free(m);
        snprintf(err, errlen, "cluster transport: out of memory");
        return NULL;
    }
    m->loop = loop;
    m->cfg = *cfg;
    if (!m->cfg.max_out) m->cfg.max_out = 2 * m->cfg.max_frame;
    snprintf(m->node_name, sizeof m->node_name, "%s", cfg->node_name);
    snprintf(m->cluster_name, sizeof m->cluster_name, "%s", cfg->cluster_name ? cfg->cluster_name : "");
    m->cfg.node_name = m->node_name;
    m->cfg.cluster_name = m->cluster_name;
    m->cfg.cookie = NULL; /* only m->cookie holds it, wiped on free */
    m->cfg.listen_host = NULL;
    if (listen_on(m, cfg->listen_host, err, errlen) != 0) {
        sodium_memzero(m->cookie, strlen(m->cookie));
        free(m->cookie);
        free(m);
        return NULL;
    }
    if (m->cfg.tls_server) {
        SSL_CTX_up_ref(m->cfg.tls_server);
        SSL_CTX_up_ref(m->cfg.tls_client);
    }
    /* OpenSSL writes with write(2): a vanished peer must give EPIPE, not kill the process. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
    ev_io_init(&m->accept_w, accept_on_io, m->listen_fd, EV_READ);
    m->accept_w.data = m;
    ev_io_start(loop, &m->accept_w);
    ev_timer_init(&m->accept_pause_w, accept_on_pause, 0, 0);
    m->accept_pause_w.data = m;
    ev_timer_init(&m->tick_w, tick_on_timer, m->cfg.ping_interval, m->cfg.ping_interval);
    m->tick_w.data = m;
    ev_timer_start(loop, &m->tick_w);
    ev_prepare_init(&m->reap_w, reap_on_prepare);
    m->reap_w.data = m;
    log_info("cluster transport: node %u (%s) listening on port %d%s", cfg->node_id, m->node_name, m->port,
             m->cfg.tls_server ? " (TLS)" : "");
    return m;
}

void peer_mesh_free(peer_mesh_t *m)
{
    if (!m) return;
    m->freeing = true;
    while (m->conns) conn_kill(m->conns, LOG_DEBUG, "shutting down");
    for (size_t i = 0; i < m->n_buckets; i++)
        while (m->calls[i]) free(call_take(m, m->calls[i]->id));
    free(m->calls);
    while (m->nodes) {
        struct pnode *n = m->nodes;
        m->nodes = n->next;
        ev_timer_stop(m->loop, &n->retry_w);
        n->next = m->dead_nodes;
        m->dead_nodes = n;
    }
    reap_on_prepare(m->loop, &m->reap_w, 0);
    ev_io_stop(m->loop, &m->accept_w);
    ev_timer_stop(m->loop, &m->accept_pause_w);
    ev_timer_stop(m->loop, &m->tick_w);
    close(m->listen_fd);
    if (m->cfg.tls_server) {
        SSL_CTX_free(m->cfg.tls_server);
        SSL_CTX_free(m->cfg.tls_client);
    }
    sodium_memzero(m->cookie, strlen(m->cookie));
    free(m->cookie);
    free(m);
}

int peer_listen_port(const peer_mesh_t *m) { return m->port; }

int peer_add_node(peer_mesh_t *m, uint32_t id, const char *host, int port)
{
    if (id == 0 || id == PEER_CLIENT_ID || id == m->cfg.node_id || !host || !*host || strlen(host) >= sizeof m->nodes->host ||
        port <= 0 || port > 65535)
        return PEER_EINVAL;
    struct pnode *n = node_find(m, id);
    if (!n && !(n = node_new(m, id))) return PEER_ENOMEM;
    snprintf(n->host, sizeof n->host, "%s", host);
    n->port = port;
    node_schedule_dial(n, true);
    return PEER_OK;
}

int peer_remove_node(peer_mesh_t *m, uint32_t id)
{
    struct pnode **pp = &m->nodes;
    while (*pp && (*pp)->id != id) pp = &(*pp)->next;
    struct pnode *n = *pp;
    if (!n) return PEER_ENODE;
    *pp = n->next;
    n->port = 0; /* never dial it again */
    ev_timer_stop(m->loop, &n->retry_w);
    for (struct pconn *c = m->conns, *next; c; c = next) {
        next = c->next;
        if (c->node == n) conn_kill(c, LOG_INFO, "node %u removed", id);
    }
    n->next = m->dead_nodes;
    m->dead_nodes = n;
    ev_prepare_start(m->loop, &m->reap_w);
    return PEER_OK;
}

int peer_set_dial_always(peer_mesh_t *m, uint32_t id, bool always)
{
    struct pnode *n = node_find(m, id);
    if (!n) return PEER_ENODE;
    n->dial_always = always;
    node_schedule_dial(n, true);
    return PEER_OK;
}

bool peer_is_up(const peer_mesh_t *m, uint32_t id)
{
    const struct pnode *n = node_find(m, id);
    return n && n->up;
}

const char *peer_node_name(const peer_mesh_t *m, uint32_t id)
{
    const struct pnode *n = node_find(m, id);
    return n && n->name[0] ? n->name : NULL;
}

/* Queues msgs in one frame, or in halves recursively when one frame would be too large. */
static int send_raft_split(struct pconn *c, const struct rw_out *msgs, size_t n)
{
    size_t before = (out_compact(c), c->out.len);
    int rc = rw_encode_raft(&c->out, msgs, n, send_limit(c));
    if (rc == RW_OK) {
        rc = out_admit(c, before);
        if (rc != PEER_OK) c->m->stats.raft_dropped += n;
        return rc;
    }
    if (rc == RW_ETOOBIG && n > 1) {
        int a = send_raft_split(c, msgs, n / 2);
        if (c->state == PC_DEAD) return PEER_EDOWN;
        int b = send_raft_split(c, msgs + n / 2, n - n / 2);
        return a != PEER_OK ? a : b;
    }
    c->m->stats.raft_dropped += n;
    if (rc == RW_ETOOBIG)
        log_warn("peer %s: dropped a Raft %s of group %llu: larger than the %zu-byte frame limit", c->addr,
                 raft_msg_name(msgs[0].msg->type), (unsigned long long)msgs[0].group_id, send_limit(c));
    return from_rw(rc);
}

int peer_send_raft(peer_mesh_t *m, uint32_t node, const struct rw_out *msgs, size_t n)
{
    struct pnode *p = node_find(m, node);
    if (!p) return PEER_ENODE;
    if (!p->up) {
        m->stats.raft_dropped += n;
        return PEER_EDOWN;
    }
    if (n == 0) return PEER_OK;
    return send_raft_split(p->up, msgs, n);
}

int peer_call(peer_mesh_t *m, uint32_t node, const char *method, const void *payload, size_t len,
              double timeout, peer_reply_cb cb, void *arg, uint64_t *call_id)
{
    if (!cb || !method) return PEER_EINVAL;
    struct pnode *p = node_find(m, node);
    if (!p) return PEER_ENODE;
    if (!p->up) return PEER_EDOWN;
    if (m->n_calls >= m->n_buckets && !calls_grow(m)) return PEER_ENOMEM;
    struct pcall *call = calloc(1, sizeof *call);
    if (!call) return PEER_ENOMEM;
    struct pconn *c = p->up;
    struct rw_call wire = {.id = ++m->next_call_id, .method = method, .payload = payload, .len = len};
    size_t before = (out_compact(c), c->out.len);
    int rc = rw_encode_call(&c->out, &wire, send_limit(c));
    rc = rc == RW_OK ? out_admit(c, before) : from_rw(rc);
    if (rc != PEER_OK) {
        free(call);
        return rc;
    }
    *call = (struct pcall){.m = m, .id = wire.id, .node = node, .cb = cb, .arg = arg};
    size_t k = call_bucket(m, call->id);
    call->hnext = m->calls[k];
    m->calls[k] = call;
    m->n_calls++;
    ev_timer_init(&call->timer_w, call_on_timeout, timeout > 0 ? timeout : PEER_CALL_TIMEOUT, 0);
    call->timer_w.data = call;
    ev_timer_start(m->loop, &call->timer_w);
    if (call_id) *call_id = call->id;
    return PEER_OK;
}

bool peer_call_cancel(peer_mesh_t *m, uint64_t call_id)
{
    struct pcall *c = call_take(m, call_id);
    free(c);
    return c != NULL;
}

int peer_reply(peer_mesh_t *m, const struct peer_reply_to *to, int32_t status, const char *error,
               const void *payload, size_t len)
{
    if (status < 0) return PEER_EINVAL;
    struct pconn *c = NULL;
    if (to->node == PEER_CLIENT_ID) {
        for (c = m->conns; c && !(c->client && c->gen == to->conn); c = c->next) {
        }
    } else {
        struct pnode *n = node_find(m, to->node);
        if (n && n->up && n->up->gen == to->conn) c = n->up;
    }
    if (!c) return PEER_EDOWN;
    struct rw_call_reply r = {.id = to->id, .status = status, .error = error ? error : "",
                              .payload = payload, .len = len};
    return send_reply(c, &r);
}

void peer_get_stats(const peer_mesh_t *m, struct peer_stats *s)
{
    *s = m->stats;
    s->connections = m->n_conns;
    s->nodes_up = 0;
    s->clients = 0;
    for (const struct pnode *n = m->nodes; n; n = n->next) s->nodes_up += n->up != NULL;
    for (const struct pconn *c = m->conns; c; c = c->next) s->clients += c->client;
}
