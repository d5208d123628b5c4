/* warrenctl - command-line tool for a Warren node (rabbitmqctl's cluster and admin commands).
 *
 * It connects to a node's cluster port as a command-line client of the inter-node protocol
 * (broker/peer.h: a Hello claiming PEER_CLIENT_ID, then the cookie handshake), makes one or a
 * few calls ("cl.status", "cl.forget", served by broker/cluster.c; "admin.*" - users, vhosts,
 * permissions, policies - served by broker/admin.c) and prints the answer. A single
 * (unclustered) node serves the same calls on 127.0.0.1 at its cluster.listener.port. With
 * --tls the connection is TLS (the cluster's cluster.ssl = true), as the nodes' own.
 * The node proves the cookie first (HelloChallenge), so a wrong cookie is detected here and
 * reported as such (exit status 2) before we prove anything ourselves.
 *
 * Everything is blocking with one overall deadline per command (--timeout); pings from the node
 * are answered while waiting so a slow call does not get the connection declared dead.
 *
 * Exit status: 0 done, 1 failed (unreachable, refused, timed out), 2 authentication failed
 * (wrong cookie), 64 usage error. Errors go to stderr. */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sodium.h>

#include "broker/cluster.h"
#include "broker/peer.h"
#include "broker/raftwire.h"

#define EXIT_FAIL 1
#define EXIT_AUTH 2
#define EXIT_USAGE 64
#define MAX_FRAME (64u << 20)

struct opts {
    char host[256];
    int port;
    char cookie[256];
    bool json;
    double timeout;
    bool tls;                 /* --tls: the cluster port speaks TLS (cluster.ssl = true) */
    char cacert[512], cert[512], key[512]; /* --cacert: verify the node; --cert/--key: ours */
};

/* One connection to the node. */
struct conn {
    int fd;
    struct rw_buf in;
    uint64_t next_id;
    char node_name[RW_MAX_NAME + 1];
    char err[512];  /* why the last operation failed */
    bool auth_failed;
    SSL_CTX *ctx;   /* --tls */
    SSL *ssl;
};

static double now_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail_msg(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fail_msg(struct conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

/* Waits for fd to be ready for events; false with c->err set on timeout or error. */
static bool wait_fd(struct conn *c, short events, double deadline)
{
    for (;;) {
        double left = deadline - now_secs();
        if (left <= 0) {
            fail_msg(c, "timed out");
            return false;
        }
        struct pollfd p = {.fd = c->fd, .events = events};
        int r = poll(&p, 1, (int)(left * 1000) + 1);
        if (r > 0) return true;
        if (r < 0 && errno != EINTR) {
            fail_msg(c, "poll: %s", strerror(errno));
            return false;
        }
    }
}

static bool conn_open(struct conn *c, const struct opts *o, double deadline)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int g = getaddrinfo(o->host, port, &hints, &res);
    if (g != 0) {
        fail_msg(c, "cannot resolve %s: %s", o->host, gai_strerror(g));
        return false;
    }
    c->fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0) {
        fail_msg(c, "socket: %s", strerror(errno));
        freeaddrinfo(res);
        return false;
    }
    int rc = connect(c->fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc != 0 && errno != EINPROGRESS) {
        fail_msg(c, "cannot connect to %s:%d: %s", o->host, o->port, strerror(errno));
        return false;
    }
    if (!wait_fd(c, POLLOUT, deadline)) return false;
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fail_msg(c, "cannot connect to %s:%d: %s", o->host, o->port, strerror(err));
        return false;
    }
    return true;
}

static void conn_close(struct conn *c)
{
    if (c->ssl) SSL_free(c->ssl);
    if (c->ctx) SSL_CTX_free(c->ctx);
    c->ssl = NULL;
    c->ctx = NULL;
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    rw_buf_free(&c->in);
}

/* TLS: waits for what OpenSSL asked for; false with c->err on a real error. */
static bool tls_retry(struct conn *c, int rc, double deadline, const char *what)
{
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) return wait_fd(c, POLLIN, deadline);
    if (e == SSL_ERROR_WANT_WRITE) return wait_fd(c, POLLOUT, deadline);
    char why[256] = "connection closed";
    unsigned long code = ERR_get_error();
    if (code) ERR_error_string_n(code, why, sizeof why);
    fail_msg(c, "TLS %s failed: %s", what, why);
    return false;
}

static bool conn_tls(struct conn *c, const struct opts *o, double deadline)
{
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx) {
        fail_msg(c, "cannot create a TLS context");
        return false;
    }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    if (o->cacert[0]) {
        if (SSL_CTX_load_verify_locations(c->ctx, o->cacert, NULL) != 1) {
            fail_msg(c, "cannot load --cacert %s", o->cacert);
            return false;
        }
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    }
    if (o->cert[0] && (SSL_CTX_use_certificate_chain_file(c->ctx, o->cert) != 1 ||
                       SSL_CTX_use_PrivateKey_file(c->ctx, o->key[0] ? o->key : o->cert, SSL_FILETYPE_PEM) != 1)) {
        fail_msg(c, "cannot load --cert %s / --key %s", o->cert, o->key);
        return false;
    }
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        fail_msg(c, "cannot start TLS");
        return false;
    }
    for (;;) {
        int rc = SSL_connect(c->ssl);
        if (rc == 1) return true;
        if (!tls_retry(c, rc, deadline, "handshake")) return false;
    }
}

static bool send_all(struct conn *c, const struct rw_buf *b, double deadline)
{
    size_t off = 0;
    while (off < b->len) {
        if (c->ssl) {
            int n = SSL_write(c->ssl, b->data + off, (int)(b->len - off));
            if (n > 0) off += (size_t)n;
            else if (!tls_retry(c, n, deadline, "write")) return false;
            continue;
        }
        ssize_t n = send(c->fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(c, POLLOUT, deadline)) return false;
        } else {
            fail_msg(c, "send: %s", n < 0 ? strerror(errno) : "connection closed");
            return false;
        }
    }
    return true;
}

/* The next frame other than a ping (pings are answered here); NULL with c->err on failure. */
static struct rw_frame *recv_frame(struct conn *c, double deadline)
{
    for (;;) {
        size_t len = 0;
        int r = rw_frame_length(c->in.data, c->in.len, MAX_FRAME, &len);
        if (r == RW_ETOOBIG) {
            fail_msg(c, "the node sent a frame that is too large");
            return NULL;
        }
        if (r == 1 && c->in.len - RW_PREFIX_LEN >= len) {
            struct rw_frame *f = NULL;
            char why[256];
            int rc = rw_decode(c->in.data + RW_PREFIX_LEN, len, &f, why, sizeof why);
            memmove(c->in.data, c->in.data + RW_PREFIX_LEN + len, c->in.len - RW_PREFIX_LEN - len);
            c->in.len -= RW_PREFIX_LEN + len;
            if (rc != RW_OK) {
                fail_msg(c, "the node sent an invalid frame: %s", why);
                return NULL;
            }
            if (f->type != RW_FRAME_PING) return f;
            struct rw_buf pong = {0};
            bool ok = rw_encode_pong(&pong, f->seq) == RW_OK && send_all(c, &pong, deadline);
            rw_buf_free(&pong);
            rw_frame_free(f);
            if (!ok) return NULL;
            continue;
        }
        if (!rw_buf_reserve(&c->in, 65536)) {
            fail_msg(c, "out of memory");
            return NULL;
        }
        if (c->ssl) {
            int n = SSL_read(c->ssl, c->in.data + c->in.len, 65536);
            if (n > 0) c->in.len += (size_t)n;
            else if (!tls_retry(c, n, deadline, "read")) return NULL;
            continue;
        }
        ssize_t n = recv(c->fd, c->in.data + c->in.len, 65536, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!wait_fd(c, POLLIN, deadline)) return NULL;
        } else {
            if (n == 0) fail_msg(c, "the node closed the connection");
            else fail_msg(c, "recv: %s", strerror(errno));
            return NULL;
        }
    }
}

/* The cookie handshake as a client (see broker/cluster.proto). */
static bool conn_auth(struct conn *c, const struct opts *o, double deadline)
{
    char host[128] = "localhost";
    gethostname(host, sizeof host - 1);
    char me_name[200];
    snprintf(me_name, sizeof me_name, "warrenctl@%.150s", host);
    for (char *p = me_name; *p; p++)
        if (*p < 0x21 || *p > 0x7e) *p = '_';
    struct rw_ident me = {.version = RW_VERSION, .node_id = PEER_CLIENT_ID, .node_name = me_name,
                          .cluster_name = "", .max_frame = MAX_FRAME};
    randombytes_buf(me.nonce, sizeof me.nonce);
    struct rw_buf b = {0};
    bool ok = rw_encode_hello(&b, &me) == RW_OK && send_all(c, &b, deadline);
    rw_buf_free(&b);
    if (!ok) return false;
    struct rw_frame *f = recv_frame(c, deadline);
    if (!f) {
        fail_msg(c, "the node at %s:%d closed the connection during the handshake (%s)", o->host, o->port, c->err);
        return false;
    }
    if (f->type != RW_FRAME_CHALLENGE) {
        fail_msg(c, "unexpected %s frame during the handshake", rw_frame_name(f->type));
        rw_frame_free(f);
        return false;
    }
    snprintf(c->node_name, sizeof c->node_name, "%s", f->ident.node_name);
    uint32_t their_id = f->ident.node_id;
    uint8_t want[RW_MAC_LEN], mac[RW_MAC_LEN];
    peer_auth_mac(o->cookie, true, me.nonce, f->ident.nonce, PEER_CLIENT_ID, their_id, want);
    bool match = sodium_memcmp(want, f->mac, RW_MAC_LEN) == 0;
    uint8_t their_nonce[RW_NONCE_LEN];
    memcpy(their_nonce, f->ident.nonce, RW_NONCE_LEN);
    rw_frame_free(f);
    if (!match) {
        c->auth_failed = true;
        fail_msg(c, "authentication failed: node %s at %s:%d has a different cluster cookie", c->node_name,
                 o->host, o->port);
        return false;
    }
    peer_auth_mac(o->cookie, false, me.nonce, their_nonce, PEER_CLIENT_ID, their_id, mac);
    ok = rw_encode_response(&b, mac) == RW_OK && send_all(c, &b, deadline);
    rw_buf_free(&b);
    return ok;
}

/* One call. On success *reply is the CALL_REPLY frame (caller frees). */
static bool conn_call(struct conn *c, const char *method, const char *payload, double deadline,
                      struct rw_frame **reply)
{
    struct rw_call call = {.id = ++c->next_id, .method = method, .payload = payload,
                           .len = payload ? strlen(payload) : 0};
    struct rw_buf b = {0};
    bool ok = rw_encode_call(&b, &call, MAX_FRAME) == RW_OK && send_all(c, &b, deadline);
    rw_buf_free(&b);
    if (!ok) return false;
    for (;;) {
        struct rw_frame *f = recv_frame(c, deadline);
        if (!f) return false;
        if (f->type == RW_FRAME_CALL_REPLY && f->reply.id == call.id) {
            *reply = f;
            return true;
        }
        rw_frame_free(f); /* pongs, stale replies */
    }
}

/* Connects, authenticates and calls: the common path of every command. */
static bool call_once(struct conn *c, const struct opts *o, const char *method, const char *payload,
                      double deadline, struct rw_frame **reply)
{
    if (c->fd < 0) {
        if (!conn_open(c, o, deadline) || (o->tls && !conn_tls(c, o, deadline)) || !conn_auth(c, o, deadline)) {
            char saved[sizeof c->err];
            snprintf(saved, sizeof saved, "%s", c->err);
            bool auth = c->auth_failed;
            conn_close(c);
            snprintf(c->err, sizeof c->err, "%s", saved);
            c->auth_failed = auth;
            return false;
        }
    }
    if (conn_call(c, method, payload, deadline, reply)) return true;
    char saved[sizeof c->err];
    snprintf(saved, sizeof saved, "%s", c->err);
    conn_close(c);
    snprintf(c->err, sizeof c->err, "%s", saved);
    return false;
}

static void sleep_secs(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* ---- commands ------------------------------------------------------------------------------ */

static void print_table(const cJSON *st)
{
    const cJSON *node = cJSON_GetObjectItemCaseSensitive(st, "node");
    const cJSON *cname = cJSON_GetObjectItemCaseSensitive(st, "cluster_name");
    const cJSON *state = cJSON_GetObjectItemCaseSensitive(st, "state");
    const cJSON *leader = cJSON_GetObjectItemCaseSensitive(st, "metadata_leader");
    printf("Cluster status of node %s\n", cJSON_IsString(node) ? node->valuestring : "?");
    if (cJSON_IsString(cname) && cname->valuestring[0]) printf("Cluster name: %s\n", cname->valuestring);
    printf("State: %s\n", cJSON_IsString(state) ? state->valuestring : "?");
    printf("Metadata leader: %s\n", cJSON_IsString(leader) ? leader->valuestring : "(none)");
    printf("\nMembers\n");
    printf("  %-40s %-8s %-8s %s\n", "NAME", "ROLE", "RUNNING", "LEADER");
    const cJSON *n;
    cJSON_ArrayForEach(n, cJSON_GetObjectItemCaseSensitive(st, "nodes"))
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(n, "name");
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(n, "role");
        printf("  %-40s %-8s %-8s %s\n", cJSON_IsString(name) ? name->valuestring : "?",
               cJSON_IsString(role) ? role->valuestring : "?",
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "running")) ? "yes" : "no",
               cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(n, "leader")) ? "yes" : "");
    }
}

static int cmd_cluster_status(const struct opts *o)
{
    struct conn c = {.fd = -1};
    struct rw_frame *f = NULL;
    double deadline = now_secs() + o->timeout;
    if (!call_once(&c, o, "cl.status", NULL, deadline, &f)) {
        fprintf(stderr, "warrenctl: %s\n", c.err);
        return c.auth_failed ? EXIT_AUTH : EXIT_FAIL;
    }
    conn_close(&c);
    int rc = 0;
    if (f->reply.status != 0) {
        fprintf(stderr, "warrenctl: %s\n", f->reply.error);
        rc = EXIT_FAIL;
    } else if (o->json) {
        printf("%.*s\n", (int)f->reply.len, (const char *)f->reply.payload);
    } else {
        cJSON *st = cJSON_ParseWithLength(f->reply.payload, f->reply.len);
        if (st) print_table(st);
        else fprintf(stderr, "warrenctl: the node sent an unreadable status\n"), rc = EXIT_FAIL;
        cJSON_Delete(st);
    }
    rw_frame_free(f);
    return rc;
}

static int cmd_forget(const struct opts *o, const char *name)
{
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "name", name);
    char *payload = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!o->json) printf("Removing node %s from the cluster\n", name);
    struct conn c = {.fd = -1};
    double deadline = now_secs() + o->timeout;
    char last[600] = "no answer";
    int rc = EXIT_FAIL;
    while (now_secs() < deadline) {
        struct rw_frame *f = NULL;
        if (!call_once(&c, o, "cl.forget", payload, deadline, &f)) {
            if (c.auth_failed) {
                rc = EXIT_AUTH;
                snprintf(last, sizeof last, "%s", c.err);
                break;
            }
            snprintf(last, sizeof last, "%s", c.err);
            sleep_secs(0.3);
            continue;
        }
        int status = f->reply.status;
        snprintf(last, sizeof last, "%s", f->reply.error);
        rw_frame_free(f);
        if (status == CL_OP_OK) {
            rc = 0;
            break;
        }
        if (status != CL_OP_RETRY) break; /* refused for good */
        sleep_secs(0.3);
    }
    conn_close(&c);
    free(payload);
    if (rc != 0) fprintf(stderr, "warrenctl: cannot forget node %s: %s\n", name, last);
    else if (o->json) {
        cJSON *out = cJSON_CreateObject();
        cJSON_AddStringToObject(out, "result", "ok");
        cJSON_AddStringToObject(out, "node", name);
        char *text = cJSON_PrintUnformatted(out);
        if (text) printf("%s\n", text);
        free(text);
        cJSON_Delete(out);
    }
    return rc;
}

static int cmd_await_startup(const struct opts *o)
{
    double deadline = now_secs() + o->timeout;
    char last[600] = "no answer";
    struct conn c = {.fd = -1};
    while (now_secs() < deadline) {
        struct rw_frame *f = NULL;
        if (!call_once(&c, o, "cl.status", NULL, deadline, &f)) {
            snprintf(last, sizeof last, "%s", c.err);
            if (c.auth_failed) {
                fprintf(stderr, "warrenctl: %s\n", last);
                return EXIT_AUTH;
            }
            sleep_secs(0.2);
            continue;
        }
        cJSON *st = f->reply.status == 0 ? cJSON_ParseWithLength(f->reply.payload, f->reply.len) : NULL;
        bool formed = st && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "formed"));
        const cJSON *state = st ? cJSON_GetObjectItemCaseSensitive(st, "state") : NULL;
        snprintf(last, sizeof last, "node state: %s", cJSON_IsString(state) ? state->valuestring : "unknown");
        cJSON_Delete(st);
        rw_frame_free(f);
        if (formed) {
            conn_close(&c);
            return 0;
        }
        sleep_secs(0.2);
    }
    conn_close(&c);
    fprintf(stderr, "warrenctl: node at %s:%d did not finish starting within %.0f s (%s)\n", o->host, o->port,
            o->timeout, last);
    return EXIT_FAIL;
}

/* ---- admin commands (users, vhosts, permissions, policies) ---------------------------------- */

/* One admin call: prints info (rabbitmqctl's "Adding user ..." line) unless --json, then the
 * node's error ("Error:" and its text, on stderr) or *out = the reply's JSON (caller frees). */
static int admin_call(const struct opts *o, const char *method, cJSON *req, const char *info, cJSON **out)
{
    char *payload = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (info && !o->json) printf("%s\n", info);
    fflush(stdout); /* before any error on stderr, also when both go to one pipe */
    struct conn c = {.fd = -1};
    struct rw_frame *f = NULL;
    bool ok = payload && call_once(&c, o, method, payload, now_secs() + o->timeout, &f);
    free(payload);
    conn_close(&c);
    if (!ok) {
        fprintf(stderr, "warrenctl: %s\n", c.err[0] ? c.err : "out of memory");
        return c.auth_failed ? EXIT_AUTH : EXIT_FAIL;
    }
    int rc = 0;
    if (f->reply.status != 0) {
        fprintf(stderr, "Error:\n%s\n", f->reply.error[0] ? f->reply.error : "the node refused the command");
        rc = EXIT_FAIL;
    } else {
        *out = cJSON_ParseWithLength(f->reply.payload, f->reply.len);
        if (!*out) {
            fprintf(stderr, "warrenctl: the node sent an unreadable answer\n");
            rc = EXIT_FAIL;
        }
    }
    rw_frame_free(f);
    return rc;
}

/* A change: success prints nothing more (or {"result":"ok"} with --json). */
static int admin_change(const struct opts *o, const char *method, cJSON *req, const char *info)
{
    cJSON *out = NULL;
    int rc = admin_call(o, method, req, info, &out);
    if (rc == 0 && o->json) {
        char *text = cJSON_PrintUnformatted(out);
        if (text) printf("%s\n", text);
        free(text);
    }
    cJSON_Delete(out);
    return rc;
}

/* A list: --json prints the node's array; otherwise a header and tab-separated columns
 * (rabbitmqctl's layout). cols are the JSON keys; arrays print as [a, b], objects as JSON. */
static int admin_list(const struct opts *o, const char *method, cJSON *req, const char *info, const char *const *cols,
                      int ncols)
{
    cJSON *out = NULL;
    int rc = admin_call(o, method, req, info, &out);
    if (rc != 0) return rc;
    if (o->json) {
        char *text = cJSON_PrintUnformatted(out);
        if (text) printf("%s\n", text);
        free(text);
    } else {
        for (int i = 0; i < ncols; i++) printf("%s%s", i ? "\t" : "", cols[i]);
        printf("\n");
        const cJSON *row;
        cJSON_ArrayForEach(row, out)
        {
            for (int i = 0; i < ncols; i++) {
                const cJSON *v = cJSON_GetObjectItemCaseSensitive(row, cols[i]);
                printf("%s", i ? "\t" : "");
                if (cJSON_IsString(v)) {
                    printf("%s", v->valuestring);
                } else if (cJSON_IsArray(v)) {
                    printf("[");
                    const cJSON *e;
                    int k = 0;
                    cJSON_ArrayForEach(e, v) printf("%s%s", k++ ? ", " : "", cJSON_IsString(e) ? e->valuestring : "?");
                    printf("]");
                } else if (v) {
                    char *text = cJSON_PrintUnformatted(v);
                    printf("%s", text ? text : "");
                    free(text);
                }
            }
            printf("\n");
        }
    }
    cJSON_Delete(out);
    return 0;
}

/* ---- node commands (status, drain, revive) ------------------------------------------------ */

static void print_json(const cJSON *j)
{
    char *text = cJSON_PrintUnformatted(j);
    if (text) printf("%s\n", text);
    free(text);
}

static const char *jstr(const cJSON *o, const char *key, const char *dflt)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(j) ? j->valuestring : dflt;
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(j) ? j->valuedouble : 0;
}

/* rabbitmq-diagnostics status's sections, for the figures Warren has. */
static void print_status(const cJSON *st)
{
    printf("Status of node %s ...\nRuntime\n\n", jstr(st, "node", "?"));
    printf("OS PID: %.0f\nProduct name: %s\nProduct version: %s\nUptime (seconds): %.0f\n\n", jnum(st, "pid"),
           jstr(st, "product_name", "?"), jstr(st, "product_version", "?"), jnum(st, "uptime"));
    printf("Data directory\n\nNode data directory: %s\n\n", jstr(st, "data_directory", "?"));
    printf("Maintenance status\n\nIs under maintenance?: %s\n\n",
           cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "is_under_maintenance")) ? "true" : "false");
    printf("Alarms\n\n");
    const cJSON *e, *alarms = cJSON_GetObjectItemCaseSensitive(st, "alarms");
    if (cJSON_GetArraySize(alarms) == 0) printf("(none)\n");
    cJSON_ArrayForEach(e, alarms) printf("resource alarm: %s\n", cJSON_IsString(e) ? e->valuestring : "?");
    const cJSON *mem = cJSON_GetObjectItemCaseSensitive(st, "memory");
    printf("\nMemory\n\nTotal memory used: %.4f gb\nMemory high watermark setting: %.4f gb\n\n",
           jnum(mem, "used") / 1e9, jnum(mem, "limit") / 1e9);
    printf("Quorum queues\n\nLeaders on this node: %.0f\n\nListeners\n\n", jnum(st, "quorum_queue_leaders"));
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(st, "listeners"))
        printf("Interface: %s, port: %.0f, protocol: %s, purpose: %s\n", jstr(e, "interface", "?"), jnum(e, "port"),
               jstr(e, "protocol", "?"), jstr(e, "purpose", ""));
}

static int cmd_status(const struct opts *o)
{
    cJSON *out = NULL;
    int rc = admin_call(o, "admin.status", cJSON_CreateObject(), NULL, &out);
    if (rc == 0) o->json ? print_json(out) : print_status(out);
    cJSON_Delete(out);
    return rc;
}

/* The node's name, for rabbitmq-upgrade's texts (one status call). Returns admin_call's status
 * (its error already printed). */
static int node_name_of(const struct opts *o, char *out, size_t cap)
{
    struct opts quiet = *o;
    quiet.json = true; /* no info line */
    cJSON *st = NULL;
    int rc = admin_call(&quiet, "admin.status", cJSON_CreateObject(), NULL, &st);
    if (rc == 0) snprintf(out, cap, "%s", jstr(st, "node", "?"));
    cJSON_Delete(st);
    return rc;
}

/* drain: the node waits (bounded by --timeout, less a margin for the answer) for its quorum
 * queue leaderships to move before it answers. */
static int cmd_drain(const struct opts *o)
{
    cJSON *req = cJSON_CreateObject();
    cJSON_AddNumberToObject(req, "timeout", o->timeout > 6 ? o->timeout - 5 : o->timeout / 2);
    char node[300], info[600];
    int rc = node_name_of(o, node, sizeof node);
    if (rc != 0) {
        cJSON_Delete(req);
        return rc;
    }
    snprintf(info, sizeof info, "Will put node %s into maintenance mode. The node will no longer serve any client "
             "traffic!", node);
    cJSON *out = NULL;
    rc = admin_call(o, "admin.drain", req, info, &out);
    if (rc == 0 && o->json) print_json(out);
    else if (rc == 0)
        printf("Node %s is in maintenance mode: %.0f client connection(s) closed, %.0f quorum queue leadership "
               "transfer(s), %.0f leadership(s) still on this node\n", jstr(out, "node", "?"),
               jnum(out, "connections_closed"), jnum(out, "leader_transfers"), jnum(out, "leaders_remaining"));
    cJSON_Delete(out);
    return rc;
}

static int cmd_revive(const struct opts *o)
{
    char node[300], info[600];
    int rc = node_name_of(o, node, sizeof node);
    if (rc != 0) return rc;
    snprintf(info, sizeof info, "Will put node %s back into service. The node will again serve client traffic!", node);
    cJSON *out = NULL;
    rc = admin_call(o, "admin.revive", cJSON_CreateObject(), info, &out);
    if (rc == 0 && o->json) print_json(out);
    cJSON_Delete(out);
    return rc;
}

/* delete_queue / purge_queue: the count of messages the node reports. */
static int queue_op(const struct opts *o, const char *method, cJSON *req, const char *info, const char *done_fmt)
{
    cJSON *out = NULL;
    int rc = admin_call(o, method, req, info, &out);
    if (rc == 0 && o->json) print_json(out);
    else if (rc == 0 && done_fmt) printf(done_fmt, jnum(out, "messages"));
    cJSON_Delete(out);
    return rc;
}

/* ---- definitions (export_definitions / import_definitions) ------------------------------- */

/* export_definitions PATH|-: the node's document, pretty-printed to the file or stdout. */
static int cmd_export(const struct opts *o, const char *path)
{
    bool to_stdout = strcmp(path, "-") == 0;
    if (!to_stdout && !o->json) printf("Exporting definitions in JSON to a file at \"%s\" ...\n", path);
    cJSON *out = NULL;
    int rc = admin_call(o, "admin.export_definitions", cJSON_CreateObject(), NULL, &out);
    if (rc != 0) return rc;
    char *text = cJSON_Print(out);
    cJSON_Delete(out);
    if (!text) {
        fprintf(stderr, "warrenctl: out of memory\n");
        return EXIT_FAIL;
    }
    FILE *f = to_stdout ? stdout : fopen(path, "w");
    if (!f) {
        fprintf(stderr, "warrenctl: cannot write %s: %s\n", path, strerror(errno));
        free(text);
        return EXIT_FAIL;
    }
    bool written = fprintf(f, "%s\n", text) >= 0;
    if (!to_stdout) written = fclose(f) == 0 && written;
    free(text);
    if (!written) {
        fprintf(stderr, "warrenctl: cannot write %s\n", path);
        return EXIT_FAIL;
    }
    if (o->json && !to_stdout) printf("{\"result\":\"ok\",\"path\":\"%s\"}\n", path);
    return 0;
}

/* The whole of f (NUL-terminated, caller frees); NULL on a read error. */
static char *read_all(FILE *f)
{
    size_t len = 0, cap = 65536;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len - 1, f);
        if (ferror(f)) break;
        if (feof(f)) {
            buf[len] = '\0';
            return buf;
        }
        char *bigger = cap < (64u << 20) ? realloc(buf, cap *= 2) : NULL;
        if (!bigger) break;
        buf = bigger;
    }
    free(buf);
    return NULL;
}

/* import_definitions PATH|-: the document is checked to be JSON here, then the node submits its
 * objects and answers once they have applied. */
static int cmd_import(const struct opts *o, const char *path)
{
    bool from_stdin = strcmp(path, "-") == 0;
    FILE *f = from_stdin ? stdin : fopen(path, "r");
    if (!f) {
        fprintf(stderr, "warrenctl: cannot read %s: %s\n", path, strerror(errno));
        return EXIT_FAIL;
    }
    char *text = read_all(f);
    if (!from_stdin) fclose(f);
    cJSON *defs = text ? cJSON_Parse(text) : NULL;
    free(text);
    if (!cJSON_IsObject(defs)) {
        cJSON_Delete(defs);
        fprintf(stderr, "warrenctl: %s is not a JSON definitions document\n", from_stdin ? "standard input" : path);
        return EXIT_FAIL;
    }
    cJSON *req = cJSON_CreateObject();
    cJSON_AddItemToObject(req, "definitions", defs);
    char info[600];
    snprintf(info, sizeof info, "Importing definitions in JSON from a file at \"%s\" ...", path);
    cJSON *out = NULL;
    int rc = admin_call(o, "admin.import_definitions", req, from_stdin ? "Importing definitions in JSON from standard input ..." : info, &out);
    if (rc == 0 && o->json) print_json(out);
    else if (rc == 0) printf("Imported %.0f definitions\n", jnum(out, "applied"));
    cJSON_Delete(out);
    return rc;
}

/* Per-command options (after the command name, as rabbitmqctl takes them): -p/--vhost VHOST,
 * --priority N, --apply-to WHAT; the rest are positional. Returns the positional count, -1 on a
 * usage error. */
struct cmd_args {
    const char *vhost;
    const char *apply_to;
    int priority;
    bool if_empty, if_unused; /* delete_queue --if-empty / --if-unused (-e / -u) */
    const char *pos[16];
};

static int parse_cmd_args(int argc, char **argv, struct cmd_args *a)
{
    a->vhost = "/";
    a->apply_to = "all";
    a->priority = 0;
    a->if_empty = a->if_unused = false;
    int n = 0;
    for (int i = 0; i < argc; i++) {
        bool next = i + 1 < argc;
        if ((strcmp(argv[i], "-p") == 0 || strcmp(argv[i], "--vhost") == 0) && next) {
            a->vhost = argv[++i];
        } else if (strcmp(argv[i], "--priority") == 0 && next) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || !*argv[i]) return -1;
            a->priority = (int)v;
        } else if (strcmp(argv[i], "--if-empty") == 0 || strcmp(argv[i], "-e") == 0) {
            a->if_empty = true;
        } else if (strcmp(argv[i], "--if-unused") == 0 || strcmp(argv[i], "-u") == 0) {
            a->if_unused = true;
        } else if (strcmp(argv[i], "--apply-to") == 0 && next) {
            a->apply_to = argv[++i];
        } else if (strcmp(argv[i], "--") == 0) {
            while (++i < argc && n < 16) a->pos[n++] = argv[i];
        } else if (argv[i][0] == '-' && argv[i][1] && strcmp(argv[i], "-") != 0 && argv[i][1] != '.' &&
                   argv[i][1] != '^') {
            return -1; /* an unknown option (regexes like "^x" or ".*" pass as positionals) */
        } else if (n < 16) {
            a->pos[n++] = argv[i];
        } else {
            return -1;
        }
    }
    return n;
}

/* Returns the exit status, or -1 when cmd is not an admin command or has the wrong arguments. */
static int admin_command(const struct opts *o, const char *cmd, int argc, char **argv)
{
    struct cmd_args a;
    int n = parse_cmd_args(argc, argv, &a);
    if (n < 0) return -1;
    char info[1024];
    cJSON *req = cJSON_CreateObject();
#define STR(k, v) cJSON_AddStringToObject(req, k, v)
    if (strcmp(cmd, "add_vhost") == 0 && n == 1) {
        STR("vhost", a.pos[0]);
        snprintf(info, sizeof info, "Adding vhost \"%s\" ...", a.pos[0]);
        return admin_change(o, "admin.add_vhost", req, info);
    }
    if (strcmp(cmd, "delete_vhost") == 0 && n == 1) {
        STR("vhost", a.pos[0]);
        snprintf(info, sizeof info, "Deleting vhost \"%s\" ...", a.pos[0]);
        return admin_change(o, "admin.delete_vhost", req, info);
    }
    if (strcmp(cmd, "list_vhosts") == 0 && n == 0) {
        static const char *const cols[] = {"name"};
        return admin_list(o, "admin.list_vhosts", req, "Listing vhosts ...", cols, 1);
    }
    if (strcmp(cmd, "add_user") == 0 && n == 2) {
        STR("user", a.pos[0]);
        STR("password", a.pos[1]);
        snprintf(info, sizeof info, "Adding user \"%s\" ...", a.pos[0]);
        return admin_change(o, "admin.add_user", req, info);
    }
    if (strcmp(cmd, "delete_user") == 0 && n == 1) {
        STR("user", a.pos[0]);
        snprintf(info, sizeof info, "Deleting user \"%s\" ...", a.pos[0]);
        return admin_change(o, "admin.delete_user", req, info);
    }
    if (strcmp(cmd, "change_password") == 0 && n == 2) {
        STR("user", a.pos[0]);
        STR("password", a.pos[1]);
        snprintf(info, sizeof info, "Changing password for user \"%s\" ...", a.pos[0]);
        return admin_change(o, "admin.change_password", req, info);
    }
    if (strcmp(cmd, "set_user_tags") == 0 && n >= 1) {
        STR("user", a.pos[0]);
        cJSON *tags = cJSON_AddArrayToObject(req, "tags");
        size_t off = 0;
        info[0] = '\0';
        for (int i = 1; i < n; i++) {
            cJSON_AddItemToArray(tags, cJSON_CreateString(a.pos[i]));
            if (off < sizeof info) off += (size_t)snprintf(info + off, sizeof info - off, "%s%s", i > 1 ? ", " : "", a.pos[i]);
        }
        char line[1200];
        snprintf(line, sizeof line, "Setting tags for user \"%s\" to [%s] ...", a.pos[0], info);
        return admin_change(o, "admin.set_user_tags", req, line);
    }
    if (strcmp(cmd, "list_users") == 0 && n == 0) {
        static const char *const cols[] = {"user", "tags"};
        return admin_list(o, "admin.list_users", req, "Listing users ...", cols, 2);
    }
    if (strcmp(cmd, "set_permissions") == 0 && n == 4) {
        STR("vhost", a.vhost);
        STR("user", a.pos[0]);
        STR("configure", a.pos[1]);
        STR("write", a.pos[2]);
        STR("read", a.pos[3]);
        snprintf(info, sizeof info, "Setting permissions for user \"%s\" in vhost \"%s\" ...", a.pos[0], a.vhost);
        return admin_change(o, "admin.set_permissions", req, info);
    }
    if (strcmp(cmd, "clear_permissions") == 0 && n == 1) {
        STR("vhost", a.vhost);
        STR("user", a.pos[0]);
        snprintf(info, sizeof info, "Clearing permissions for user \"%s\" in vhost \"%s\" ...", a.pos[0], a.vhost);
        return admin_change(o, "admin.clear_permissions", req, info);
    }
    if (strcmp(cmd, "list_permissions") == 0 && n == 0) {
        static const char *const cols[] = {"user", "configure", "write", "read"};
        STR("vhost", a.vhost);
        snprintf(info, sizeof info, "Listing permissions for vhost \"%s\" ...", a.vhost);
        return admin_list(o, "admin.list_permissions", req, info, cols, 4);
    }
    if (strcmp(cmd, "set_policy") == 0 && n == 3) {
        STR("vhost", a.vhost);
        STR("name", a.pos[0]);
        STR("pattern", a.pos[1]);
        STR("definition", a.pos[2]);
        STR("apply_to", a.apply_to);
        cJSON_AddNumberToObject(req, "priority", a.priority);
        snprintf(info, sizeof info, "Setting policy \"%s\" for pattern \"%s\" to \"%s\" with priority \"%d\" for vhost \"%s\" ...",
                 a.pos[0], a.pos[1], a.pos[2], a.priority, a.vhost);
        return admin_change(o, "admin.set_policy", req, info);
    }
    if (strcmp(cmd, "set_vhost_limits") == 0 && n == 1) {
        STR("vhost", a.vhost);
        STR("definition", a.pos[0]);
        snprintf(info, sizeof info, "Setting vhost limits to \"%s\" for vhost \"%s\" ...", a.pos[0], a.vhost);
        return admin_change(o, "admin.set_vhost_limits", req, info);
    }
    if (strcmp(cmd, "clear_vhost_limits") == 0 && n == 0) {
        STR("vhost", a.vhost);
        snprintf(info, sizeof info, "Clearing vhost \"%s\" limits ...", a.vhost);
        return admin_change(o, "admin.clear_vhost_limits", req, info);
    }
    if (strcmp(cmd, "clear_policy") == 0 && n == 1) {
        STR("vhost", a.vhost);
        STR("name", a.pos[0]);
        snprintf(info, sizeof info, "Clearing policy \"%s\" on vhost \"%s\" ...", a.pos[0], a.vhost);
        return admin_change(o, "admin.clear_policy", req, info);
    }
    if (strcmp(cmd, "list_queues") == 0 && n == 0) {
        static const char *const cols[] = {"name", "type", "messages", "consumers", "leader", "members", "online"};
        STR("vhost", a.vhost);
        snprintf(info, sizeof info, "Timeout: 60.0 seconds ...\nListing queues for vhost %s ...", a.vhost);
        return admin_list(o, "admin.list_queues", req, info, cols, 7);
    }
    if ((strcmp(cmd, "add_member") == 0 || strcmp(cmd, "delete_member") == 0) && n == 2) {
        bool add = cmd[0] == 'a';
        STR("vhost", a.vhost);
        STR("queue", a.pos[0]);
        STR("node", a.pos[1]);
        snprintf(info, sizeof info, "%s node %s %s quorum queue %s in vhost %s ...", add ? "Adding" : "Removing",
                 a.pos[1], add ? "to" : "from", a.pos[0], a.vhost);
        return admin_change(o, add ? "admin.add_member" : "admin.delete_member", req, info);
    }
    if (strcmp(cmd, "grow") == 0 && n == 2) {
        static const char *const cols[] = {"vhost", "name", "result"};
        STR("node", a.pos[0]);
        STR("which", a.pos[1]);
        snprintf(info, sizeof info, "Growing %s quorum queues onto %s ...", a.pos[1], a.pos[0]);
        return admin_list(o, "admin.grow", req, info, cols, 3);
    }
    if (strcmp(cmd, "list_exchanges") == 0 && n == 0) {
        static const char *const cols[] = {"name", "type", "durable", "auto_delete", "internal"};
        STR("vhost", a.vhost);
        snprintf(info, sizeof info, "Listing exchanges for vhost %s ...", a.vhost);
        return admin_list(o, "admin.list_exchanges", req, info, cols, 5);
    }
    if (strcmp(cmd, "list_bindings") == 0 && n == 0) {
        static const char *const cols[] = {"source", "destination", "destination_type", "routing_key", "arguments"};
        STR("vhost", a.vhost);
        snprintf(info, sizeof info, "Listing bindings for vhost %s...", a.vhost);
        return admin_list(o, "admin.list_bindings", req, info, cols, 5);
    }
    if (strcmp(cmd, "list_connections") == 0 && n == 0) {
        static const char *const cols[] = {"name", "user", "vhost", "peer_host", "peer_port", "state", "channels"};
        return admin_list(o, "admin.list_connections", req, "Listing connections ...", cols, 7);
    }
    if (strcmp(cmd, "close_connection") == 0 && n == 2) {
        STR("name", a.pos[0]);
        STR("reason", a.pos[1]);
        snprintf(info, sizeof info, "Closing connection %s, reason: %s...", a.pos[0], a.pos[1]);
        return admin_change(o, "admin.close_connection", req, info);
    }
    if (strcmp(cmd, "delete_queue") == 0 && n == 1) {
        STR("vhost", a.vhost);
        STR("queue", a.pos[0]);
        cJSON_AddBoolToObject(req, "if_empty", a.if_empty);
        cJSON_AddBoolToObject(req, "if_unused", a.if_unused);
        snprintf(info, sizeof info, "Deleting queue '%s' on vhost '%s' ...", a.pos[0], a.vhost);
        return queue_op(o, "admin.delete_queue", req, info, "Queue was successfully deleted with %.0f messages\n");
    }
    if (strcmp(cmd, "purge_queue") == 0 && n == 1) {
        STR("vhost", a.vhost);
        STR("queue", a.pos[0]);
        snprintf(info, sizeof info, "Purging queue '%s' in vhost '%s' ...", a.pos[0], a.vhost);
        return queue_op(o, "admin.purge_queue", req, info, NULL);
    }
    if (strcmp(cmd, "list_policies") == 0 && n == 0) {
        static const char *const cols[] = {"vhost", "name", "pattern", "apply-to", "definition", "priority"};
        STR("vhost", a.vhost);
        snprintf(info, sizeof info, "Listing policies for vhost \"%s\" ...", a.vhost);
        return admin_list(o, "admin.list_policies", req, info, cols, 6);
    }
#undef STR
    cJSON_Delete(req);
    return -1;
}

/* ---- options ------------------------------------------------------------------------------- */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: warrenctl [--node HOST:PORT] [--cookie SECRET | --cookie-file FILE] [--json]\n"
            "                 [--timeout SECONDS] COMMAND [ARGS]\n"
            "\n"
            "                 [--tls [--cacert FILE] [--cert FILE --key FILE]]\n"
            "\n"
            "Commands:\n"
            "  status                     node name, version, uptime, memory, listeners, alarms, maintenance\n"
            "  cluster_status             members, which are running, and the metadata leader\n"
            "  forget_cluster_node NAME   remove a stopped node from the cluster for good\n"
            "  await_startup              wait until the node answers and the cluster is formed\n"
            "  add_vhost VHOST | delete_vhost VHOST | list_vhosts\n"
            "  add_user USER PASSWORD | delete_user USER | change_password USER PASSWORD\n"
            "  set_user_tags USER [TAG ...] | list_users\n"
            "  set_permissions [-p VHOST] USER CONF WRITE READ | clear_permissions [-p VHOST] USER\n"
            "  list_permissions [-p VHOST]\n"
            "  set_policy [-p VHOST] [--priority N] [--apply-to queues|exchanges|all] NAME PATTERN JSON\n"
            "  clear_policy [-p VHOST] NAME | list_policies [-p VHOST]\n"
            "  set_vhost_limits [-p VHOST] JSON ('{\"max-connections\": N, \"max-queues\": N}', -1: none)\n"
            "  clear_vhost_limits [-p VHOST]\n"
            "  list_queues [-p VHOST]     name, type, messages, consumers, leader, members, online\n"
            "  add_member [-p VHOST] QUEUE NODE | delete_member [-p VHOST] QUEUE NODE\n"
            "  grow NODE all|even         add NODE to every quorum queue (even: with an even count)\n"
            "  list_exchanges [-p VHOST] | list_bindings [-p VHOST] | list_connections\n"
            "  close_connection NAME REASON  (NAME as list_connections shows it)\n"
            "  delete_queue [-p VHOST] QUEUE [--if-empty] [--if-unused] | purge_queue [-p VHOST] QUEUE\n"
            "  export_definitions FILE|-  users, vhosts, permissions, policies, queues, exchanges, bindings\n"
            "  import_definitions FILE|-  (RabbitMQ's JSON format)\n"
            "  drain                      maintenance mode: close and refuse AMQP clients, move quorum\n"
            "                             queue leaders to other nodes (waits up to --timeout, 30 s)\n"
            "  revive                     leave maintenance mode: accept clients again\n"
            "\n"
            "--node is the node's cluster port (default 127.0.0.1:25672; a single node listens on\n"
            "127.0.0.1 there). The cookie defaults to $WARREN_COOKIE (a single node without one\n"
            "generates <data_dir>/.warren.cookie). Changes go through the cluster's metadata log.\n"
            "Exit status: 0 ok, 1 failed, 2 authentication failed, 64 usage.\n");
}

static bool parse_node(const char *s, struct opts *o)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof o->host) return false;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 1 || port > 65535) return false;
    size_t n = (size_t)(colon - s);
    if (s[0] == '[' && s[n - 1] == ']') { /* [v6]:port */
        s++;
        n -= 2;
    }
    memcpy(o->host, s, n);
    o->host[n] = '\0';
    o->port = (int)port;
    return true;
}

static bool read_cookie_file(const char *path, struct opts *o)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(o->cookie, 1, sizeof o->cookie - 1, f);
    fclose(f);
    o->cookie[n] = '\0';
    while (n && (o->cookie[n - 1] == '\n' || o->cookie[n - 1] == '\r' || o->cookie[n - 1] == ' ' ||
                 o->cookie[n - 1] == '\t'))
        o->cookie[--n] = '\0';
    char *s = o->cookie;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    memmove(o->cookie, s, strlen(s) + 1);
    return true;
}

int main(int argc, char **argv)
{
    struct opts o = {.host = "127.0.0.1", .port = 25672, .timeout = 0};
    const char *env = getenv("WARREN_COOKIE");
    if (env) snprintf(o.cookie, sizeof o.cookie, "%s", env);
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        bool has_arg = i + 1 < argc;
        if (strcmp(a, "--node") == 0 && has_arg) {
            if (!parse_node(argv[++i], &o)) {
                fprintf(stderr, "warrenctl: --node expects HOST:PORT, got '%s'\n", argv[i]);
                return EXIT_USAGE;
            }
        } else if (strcmp(a, "--cookie") == 0 && has_arg) {
            snprintf(o.cookie, sizeof o.cookie, "%s", argv[++i]);
        } else if (strcmp(a, "--cookie-file") == 0 && has_arg) {
            if (!read_cookie_file(argv[++i], &o)) {
                fprintf(stderr, "warrenctl: cannot read cookie file %s: %s\n", argv[i], strerror(errno));
                return EXIT_USAGE;
            }
        } else if (strcmp(a, "--tls") == 0) {
            o.tls = true;
        } else if ((strcmp(a, "--cacert") == 0 || strcmp(a, "--cert") == 0 || strcmp(a, "--key") == 0) && has_arg) {
            char *dst = a[2] == 'c' && a[3] == 'a' ? o.cacert : a[2] == 'c' ? o.cert : o.key;
            snprintf(dst, sizeof o.cacert, "%s", argv[++i]);
            o.tls = true;
        } else if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "--timeout") == 0 && has_arg) {
            o.timeout = atof(argv[++i]);
            if (!(o.timeout > 0)) {
                fprintf(stderr, "warrenctl: --timeout expects a positive number of seconds\n");
                return EXIT_USAGE;
            }
        } else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "warrenctl: unknown option %s\n", a);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!o.cookie[0]) {
        fprintf(stderr, "warrenctl: no cookie: use --cookie, --cookie-file or $WARREN_COOKIE\n");
        return EXIT_USAGE;
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "warrenctl: libsodium failed to initialise\n");
        return EXIT_FAIL;
    }
    const char *cmd = argv[i];
    int nargs = argc - i - 1;
    if (strcmp(cmd, "cluster_status") == 0 && nargs == 0) {
        if (!(o.timeout > 0)) o.timeout = 10;
        return cmd_cluster_status(&o);
    }
    if (strcmp(cmd, "forget_cluster_node") == 0 && nargs == 1) {
        if (!(o.timeout > 0)) o.timeout = 30;
        return cmd_forget(&o, argv[i + 1]);
    }
    if (strcmp(cmd, "await_startup") == 0 && nargs == 0) {
        if (!(o.timeout > 0)) o.timeout = 60;
        return cmd_await_startup(&o);
    }
    if ((strcmp(cmd, "export_definitions") == 0 || strcmp(cmd, "import_definitions") == 0) && nargs == 1) {
        if (!(o.timeout > 0)) o.timeout = 60;
        return cmd[0] == 'e' ? cmd_export(&o, argv[i + 1]) : cmd_import(&o, argv[i + 1]);
    }
    if ((strcmp(cmd, "status") == 0 || strcmp(cmd, "drain") == 0 || strcmp(cmd, "revive") == 0) && nargs == 0) {
        if (!(o.timeout > 0)) o.timeout = cmd[0] == 'd' ? 30 : 15;
        return cmd[0] == 's' ? cmd_status(&o) : cmd[0] == 'd' ? cmd_drain(&o) : cmd_revive(&o);
    }
    if (!(o.timeout > 0)) o.timeout = 15; /* a refused change takes up to 5 s (no quorum) */
    int rc = admin_command(&o, cmd, nargs, argv + i + 1);
    if (rc >= 0) return rc;
    fprintf(stderr, "warrenctl: unknown command or wrong arguments: %s\n", cmd);
    usage(stderr);
    return EXIT_USAGE;
}
