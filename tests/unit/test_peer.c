/* test_peer.c - the inter-node transport (broker/peer.c) over real sockets on 127.0.0.1.
 *
 * Several peer meshes (nodes) live in this one process, each listening on its own port, all on
 * one libev loop (the silence test puts one node on a second loop that it stops running, which
 * is how a hung process looks from outside). A "raw" client speaks the protocol by hand with
 * raftwire and peer_auth_mac, to play a misbehaving or impostor node.
 *
 * Timing: the meshes use short intervals (pings every 50 ms, down after 300 ms, backoff
 * 50-400 ms), and every wait is bounded by WAIT_SECS so a bug fails an assertion instead of
 * hanging. Each node records what its callbacks saw (ups and downs per peer, Raft batches it
 * kept, calls) for the assertions. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "amqp091/net.h"
#include "broker/log.h"
#include "broker/peer.h"
#include "broker/raftwire.h"

#define WAIT_SECS 10.0
#define MAX_ID 16
#define MAX_BATCHES 512
#define COOKIE "test-cookie-0123456789"

static struct ev_loop *loop;

/* ---- a node under test -------------------------------------------------------------------- */

struct node {
    peer_mesh_t *m;
    struct ev_loop *loop;
    uint32_t id;
    int port;
    int ups[MAX_ID], downs[MAX_ID];
    bool up[MAX_ID];
    struct rw_frame *batches[MAX_BATCHES];
    uint32_t batch_from[MAX_BATCHES];
    int n_batches;
    int calls;
    bool deferred_valid;
    struct peer_reply_to deferred; /* the last "defer" call, answered by the test */
};

static void on_up(void *ud, uint32_t id)
{
    struct node *n = ud;
    assert_true(id < MAX_ID);
    assert_false(n->up[id]); /* up and down alternate */
    n->up[id] = true;
    n->ups[id]++;
}

static void on_down(void *ud, uint32_t id)
{
    struct node *n = ud;
    assert_true(id < MAX_ID);
    assert_true(n->up[id]);
    n->up[id] = false;
    n->downs[id]++;
}

static bool on_raft(void *ud, uint32_t from, struct rw_frame *f)
{
    struct node *n = ud;
    assert_int_equal(f->type, RW_FRAME_RAFT);
    if (n->n_batches == MAX_BATCHES) return false;
    n->batch_from[n->n_batches] = from;
    n->batches[n->n_batches++] = f;
    return true; /* kept: freed by node_free */
}

static void on_call(void *ud, uint32_t from, const struct peer_call_in *in)
{
    struct node *n = ud;
    (void)from;
    n->calls++;
    if (strcmp(in->method, "echo") == 0) {
        assert_int_equal(peer_reply(n->m, &in->reply_to, 0, NULL, in->payload, in->len), PEER_OK);
    } else if (strcmp(in->method, "fail") == 0) {
        assert_int_equal(peer_reply(n->m, &in->reply_to, 7, "no such queue", NULL, 0), PEER_OK);
    } else if (strcmp(in->method, "defer") == 0) {
        n->deferred = in->reply_to;
        n->deferred_valid = true;
    } else if (strcmp(in->method, "huge") == 0) {
        size_t len = 2 << 20; /* over the 1 MiB frame limit of these tests */
        void *big = calloc(1, len);
        assert_int_equal(peer_reply(n->m, &in->reply_to, 0, NULL, big, len), PEER_ETOOBIG);
        free(big);
    } else {
        assert_int_equal(peer_reply(n->m, &in->reply_to, 0, NULL, NULL, 0), PEER_OK);
    }
}

struct opts {
    const char *cookie;
    size_t max_frame, max_out;
    bool no_call_handler;
    int port;
    struct ev_loop *loop;
    SSL_CTX *tls_server, *tls_client;
};

static struct node *node_start(uint32_t id, const struct opts *o)
{
    struct node *n = calloc(1, sizeof *n);
    n->id = id;
    n->loop = o && o->loop ? o->loop : loop;
    struct peer_config c;
    peer_config_defaults(&c);
    char name[64];
    snprintf(name, sizeof name, "rabbit@node-%u", id);
    c.node_id = id;
    c.node_name = name;
    c.cluster_name = "test";
    c.cookie = o && o->cookie ? o->cookie : COOKIE;
    c.listen_host = "127.0.0.1";
    c.listen_port = o ? o->port : 0;
    c.ping_interval = 0.05;
    c.down_after = 0.3;
    c.backoff_min = 0.05;
    c.backoff_max = 0.4;
    c.handshake_timeout = 1.0;
    c.max_frame = o && o->max_frame ? o->max_frame : 1 << 20;
    c.max_out = o ? o->max_out : 0;
    c.tls_server = o ? o->tls_server : NULL;
    c.tls_client = o ? o->tls_client : NULL;
    c.cb = (struct peer_callbacks){.up = on_up, .down = on_down, .raft = on_raft,
                                   .call = o && o->no_call_handler ? NULL : on_call};
    c.ud = n;
    char err[256] = "";
    n->m = peer_mesh_new(n->loop, &c, err, sizeof err);
    if (!n->m) fail_msg("peer_mesh_new: %s", err);
    n->port = peer_listen_port(n->m);
    return n;
}

static void node_stop(struct node *n)
{
    peer_mesh_free(n->m);
    n->m = NULL;
    memset(n->up, 0, sizeof n->up);
}

static void node_free(struct node *n)
{
    if (n->m) peer_mesh_free(n->m);
    for (int i = 0; i < n->n_batches; i++) rw_frame_free(n->batches[i]);
    free(n);
}

static void introduce(struct node **nodes, int count)
{
    for (int i = 0; i < count; i++)
        for (int j = 0; j < count; j++)
            if (i != j && nodes[i]->m)
                assert_int_equal(peer_add_node(nodes[i]->m, nodes[j]->id, "127.0.0.1", nodes[j]->port), PEER_OK);
}

/* ---- running the loop --------------------------------------------------------------------- */

static double now_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct ev_loop *second_loop; /* run alongside loop when set and not frozen */
static bool second_frozen;

static void pump(void)
{
    ev_run(loop, EVRUN_NOWAIT);
    if (second_loop && !second_frozen) ev_run(second_loop, EVRUN_NOWAIT);
    poll(NULL, 0, 1);
}

typedef bool (*cond_fn)(void *arg);

static bool run_until(cond_fn cond, void *arg, double secs)
{
    double deadline = now_secs() + secs;
    while (!cond(arg)) {
        if (now_secs() > deadline) return false;
        pump();
    }
    return true;
}

static void run_for(double secs)
{
    double deadline = now_secs() + secs;
    while (now_secs() < deadline) pump();
}

struct pair {
    struct node *a, *b;
};

static bool pair_up(void *arg)
{
    struct pair *p = arg;
    return p->a->up[p->b->id] && p->b->up[p->a->id];
}

static bool pair_down(void *arg)
{
    struct pair *p = arg;
    return !p->a->up[p->b->id] && (!p->b->m || !p->b->up[p->a->id]);
}

static void wait_up(struct node *a, struct node *b)
{
    struct pair p = {a, b};
    if (!run_until(pair_up, &p, WAIT_SECS)) fail_msg("nodes %u and %u never came up", a->id, b->id);
}

static void wait_all_up(struct node **nodes, int count)
{
    for (int i = 0; i < count; i++)
        for (int j = i + 1; j < count; j++) wait_up(nodes[i], nodes[j]);
}

static unsigned conn_count(const struct node *n)
{
    struct peer_stats s;
    peer_get_stats(n->m, &s);
    return s.connections;
}

/* ---- capturing log lines ------------------------------------------------------------------ */

static int saved_stderr = -1;
static FILE *log_file;

static void capture_start(void)
{
    fflush(stderr);
    log_file = tmpfile();
    saved_stderr = dup(2);
    dup2(fileno(log_file), 2);
}

/* Stops capturing; returns what was logged (caller frees). The lines are echoed too. */
static char *capture_stop(void)
{
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    long len = ftell(log_file);
    char *text = calloc(1, (size_t)len + 1);
    rewind(log_file);
    size_t got = fread(text, 1, (size_t)len, log_file);
    text[got] = '\0';
    fclose(log_file);
    fputs(text, stderr);
    return text;
}

/* ---- raw protocol client ------------------------------------------------------------------ */

struct raw {
    int fd;
    struct rw_buf in;
    bool closed;
    uint8_t nonce[RW_NONCE_LEN];
};

static void raw_connect(struct raw *r, int port)
{
    memset(r, 0, sizeof *r);
    r->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK);
    for (int i = 0; i < RW_NONCE_LEN; i++) r->nonce[i] = (uint8_t)(i * 13 + 1);
}

static void raw_send(struct raw *r, const void *data, size_t len)
{
    const uint8_t *p = data;
    double deadline = now_secs() + WAIT_SECS;
    while (len > 0 && now_secs() < deadline) {
        ssize_t n = send(r->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n < 0 && errno != EAGAIN) {
            r->closed = true;
            return;
        }
        pump();
    }
}

static void raw_fill(struct raw *r)
{
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = recv(r->fd, buf, sizeof buf, 0);
        if (n > 0) {
            assert_true(rw_buf_reserve(&r->in, (size_t)n));
            memcpy(r->in.data + r->in.len, buf, (size_t)n);
            r->in.len += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EINTR)) r->closed = true;
        return;
    }
}

/* The next frame the node sent, skipping pings; NULL if the connection closed or time ran out. */
static struct rw_frame *raw_recv(struct raw *r, double secs)
{
    double deadline = now_secs() + secs;
    while (now_secs() < deadline) {
        raw_fill(r);
        size_t len;
        if (rw_frame_length(r->in.data, r->in.len, RW_FRAME_LIMIT, &len) == 1 && r->in.len - 4 >= len) {
            struct rw_frame *f = NULL;
            assert_int_equal(rw_decode(r->in.data + 4, len, &f, NULL, 0), RW_OK);
            memmove(r->in.data, r->in.data + 4 + len, r->in.len - 4 - len);
            r->in.len -= 4 + len;
            if (f->type != RW_FRAME_PING) return f;
            rw_frame_free(f);
            continue;
        }
        if (r->closed) return NULL;
        pump();
    }
    return NULL;
}

static bool raw_wait_closed(struct raw *r, double secs)
{
    double deadline = now_secs() + secs;
    while (now_secs() < deadline) {
        raw_fill(r);
        if (r->closed) return true;
        r->in.len = 0;
        pump();
    }
    return false;
}

static void raw_close(struct raw *r)
{
    close(r->fd);
    rw_buf_free(&r->in);
}

/* Authenticates as node my_id to the node listening on port (node their_id). */
static void raw_auth(struct raw *r, int port, uint32_t my_id, uint32_t their_id, const char *cookie)
{
    raw_connect(r, port);
    struct rw_buf b = {0};
    struct rw_ident me = {.version = RW_VERSION, .node_id = my_id, .node_name = "rabbit@raw",
                          .cluster_name = "test", .max_frame = 1 << 20};
    memcpy(me.nonce, r->nonce, RW_NONCE_LEN);
    assert_int_equal(rw_encode_hello(&b, &me), RW_OK);
    raw_send(r, b.data, b.len);
    struct rw_frame *f = raw_recv(r, WAIT_SECS);
    assert_non_null(f);
    assert_int_equal(f->type, RW_FRAME_CHALLENGE);
    assert_int_equal(f->ident.node_id, their_id);
    uint8_t want[RW_MAC_LEN], mac[RW_MAC_LEN];
    peer_auth_mac(cookie, true, r->nonce, f->ident.nonce, my_id, their_id, want);
    assert_memory_equal(want, f->mac, RW_MAC_LEN); /* the node proved the cookie to us */
    peer_auth_mac(cookie, false, r->nonce, f->ident.nonce, my_id, their_id, mac);
    rw_frame_free(f);
    b.len = 0;
    assert_int_equal(rw_encode_response(&b, mac), RW_OK);
    raw_send(r, b.data, b.len);
    rw_buf_free(&b);
}

/* ---- sample Raft traffic ------------------------------------------------------------------ */

static uint8_t payload[300 * 1024];
static struct raft_entry sample_entries[3];
static struct raft_snapshot_meta sample_snap = {.index = 50, .term = 3, .conf = {.n_voters = 3, .voters = {1, 2, 3}}};

static size_t sample_msgs(struct raft_msg *m, uint32_t from, uint32_t to)
{
    for (size_t i = 0; i < sizeof payload; i++) payload[i] = (uint8_t)(i * 7 + i / 251);
    sample_entries[0] = (struct raft_entry){.term = 3, .type = RAFT_ENTRY_NOOP};
    sample_entries[1] = (struct raft_entry){.term = 3, .type = RAFT_ENTRY_NORMAL, .len = 11, .data = "publish msg"};
    sample_entries[2] = (struct raft_entry){.term = 3, .type = RAFT_ENTRY_NORMAL, .len = 4000, .data = payload};
    size_t n = 0;
    m[n++] = (struct raft_msg){.type = RAFT_MSG_APPEND, .from = from, .to = to, .term = 3, .index = 10,
                               .log_term = 2, .commit = 9, .n_entries = 3, .entries = sample_entries};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_HEARTBEAT, .from = from, .to = to, .term = 3, .commit = 12, .ctx = 5};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_VOTE_RESP, .from = from, .to = to, .term = 4, .reject = true};
    m[n++] = (struct raft_msg){.type = RAFT_MSG_SNAPSHOT, .from = from, .to = to, .term = 3, .index = 50,
                               .log_term = 3, .snap = &sample_snap, .data = payload + 1, .data_len = 9000};
    return n;
}

static bool has_batches(void *arg)
{
    struct node *n = arg;
    return n->n_batches > 0;
}

static void check_batch(const struct rw_frame *f, const struct raft_msg *m, size_t n, uint64_t group0)
{
    assert_int_equal(f->n_raft, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(f->raft[i].group_id, group0 + i);
        assert_true(rw_msg_equal(&f->raft[i].msg, &m[i]));
    }
}

static void clear_batches(struct node *n)
{
    for (int i = 0; i < n->n_batches; i++) rw_frame_free(n->batches[i]);
    n->n_batches = 0;
}

/* ---- tests: connection set-up ------------------------------------------------------------- */

static void test_three_nodes_come_up(void **state)
{
    (void)state;
    struct node *nodes[3] = {node_start(1, NULL), node_start(2, NULL), node_start(3, NULL)};
    introduce(nodes, 3);
    wait_all_up(nodes, 3);
    /* Stay up well past down_after: pings keep idle connections alive, and nothing flaps. */
    run_for(1.0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(conn_count(nodes[i]), 2); /* exactly one TCP connection per pair */
        struct peer_stats s;
        peer_get_stats(nodes[i]->m, &s);
        assert_int_equal(s.nodes_up, 2);
        for (int j = 0; j < 3; j++) {
            if (i == j) continue;
            assert_int_equal(nodes[i]->ups[nodes[j]->id], 1);
            assert_int_equal(nodes[i]->downs[nodes[j]->id], 0);
            assert_true(peer_is_up(nodes[i]->m, nodes[j]->id));
        }
    }
    assert_string_equal(peer_node_name(nodes[0]->m, 3), "rabbit@node-3");
    assert_string_equal(peer_node_name(nodes[2]->m, 1), "rabbit@node-1");
    for (int i = 0; i < 3; i++) node_free(nodes[i]);
}

static void test_config_errors(void **state)
{
    (void)state;
    struct peer_config c;
    char err[256];
    peer_config_defaults(&c);
    c.node_id = 1;
    c.node_name = "a";
    c.cookie = "";
    assert_null(peer_mesh_new(loop, &c, err, sizeof err));
    assert_non_null(strstr(err, "cookie"));
    c.cookie = "x";
    c.down_after = c.ping_interval;
    assert_null(peer_mesh_new(loop, &c, err, sizeof err));
    assert_non_null(strstr(err, "down_after"));
    c.down_after = 5;
    c.node_id = 0;
    assert_null(peer_mesh_new(loop, &c, err, sizeof err));

    struct node *a = node_start(1, NULL);
    assert_int_equal(peer_add_node(a->m, 1, "127.0.0.1", 1), PEER_EINVAL); /* ourselves */
    assert_int_equal(peer_add_node(a->m, 2, "127.0.0.1", 0), PEER_EINVAL);
    assert_int_equal(peer_remove_node(a->m, 9), PEER_ENODE);
    /* Another mesh cannot take a port in use. */
    struct peer_config d;
    peer_config_defaults(&d);
    d.node_id = 2;
    d.node_name = "b";
    d.cookie = "x";
    d.listen_host = "127.0.0.1";
    d.listen_port = a->port;
    assert_null(peer_mesh_new(loop, &d, err, sizeof err));
    assert_non_null(strstr(err, "cannot listen"));
    node_free(a);
}

/* ---- tests: traffic ----------------------------------------------------------------------- */

static void test_raft_batches_both_ways(void **state)
{
    (void)state;
    struct node *nodes[3] = {node_start(1, NULL), node_start(2, NULL), node_start(3, NULL)};
    introduce(nodes, 3);
    wait_all_up(nodes, 3);

    /* 1 -> 2 (1 dialed), 3 -> 1 (1 accepted from its side's view: 1 dialed 3 too), 3 -> 2. */
    struct { int from, to; } routes[] = {{0, 1}, {2, 0}, {2, 1}, {1, 0}};
    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++) {
        struct node *src = nodes[routes[r].from], *dst = nodes[routes[r].to];
        struct raft_msg m[8];
        size_t n = sample_msgs(m, src->id, dst->id);
        struct rw_out out[8];
        for (size_t i = 0; i < n; i++) out[i] = (struct rw_out){.group_id = 100 * r + i, .msg = &m[i]};
        assert_int_equal(peer_send_raft(src->m, dst->id, out, n), PEER_OK);
        assert_true(run_until(has_batches, dst, WAIT_SECS));
        assert_int_equal(dst->n_batches, 1);
        assert_int_equal(dst->batch_from[0], src->id);
        check_batch(dst->batches[0], m, n, 100 * r);
        clear_batches(dst);
    }
    assert_int_equal(peer_send_raft(nodes[0]->m, 9, NULL, 0), PEER_ENODE);
    for (int i = 0; i < 3; i++) node_free(nodes[i]);
}

/* A batch larger than one frame is split, and everything arrives in order. */
static void test_raft_batch_split(void **state)
{
    (void)state;
    struct opts small = {.max_frame = 64 * 1024, .max_out = 1 << 20};
    struct node *a = node_start(1, &small), *b = node_start(2, &small);
    struct node *nodes[2] = {a, b};
    introduce(nodes, 2);
    wait_up(a, b);
    enum { N = 200 };
    static struct raft_msg m[N];
    static struct raft_entry e[N];
    static struct rw_out out[N];
    for (size_t i = 0; i < N; i++) {
        e[i] = (struct raft_entry){.term = 1, .type = RAFT_ENTRY_NORMAL, .len = 1000, .data = payload + i};
        m[i] = (struct raft_msg){.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .term = 1, .index = i,
                                 .n_entries = 1, .entries = &e[i]};
        out[i] = (struct rw_out){.group_id = i, .msg = &m[i]};
    }
    assert_int_equal(peer_send_raft(a->m, 2, out, N), PEER_OK);
    /* 200 KB in 64 KB frames: at least 4 batches, in order, nothing lost. */
    size_t seen = 0;
    double deadline = now_secs() + WAIT_SECS;
    while (seen < N && now_secs() < deadline) {
        pump();
        for (; b->n_batches > 0;) {
            struct rw_frame *f = b->batches[0];
            for (size_t i = 0; i < f->n_raft; i++, seen++) {
                assert_int_equal(f->raft[i].group_id, seen);
                assert_true(rw_msg_equal(&f->raft[i].msg, &m[seen]));
            }
            rw_frame_free(f);
            memmove(b->batches, b->batches + 1, (size_t)--b->n_batches * sizeof b->batches[0]);
        }
    }
    assert_int_equal(seen, N);
    node_free(a);
    node_free(b);
}

struct reply {
    int calls;
    int status;
    char error[128];
    uint8_t payload[64];
    size_t len;
};

static void reply_cb(void *arg, int status, const char *error, const void *p, size_t len)
{
    struct reply *r = arg;
    r->calls++;
    r->status = status;
    snprintf(r->error, sizeof r->error, "%s", error ? error : "");
    r->len = len;
    if (len <= sizeof r->payload && len) memcpy(r->payload, p, len);
}

static bool replied(void *arg) { return ((struct reply *)arg)->calls > 0; }

static bool deferred(void *arg) { return ((struct node *)arg)->deferred_valid; }

static void test_calls(void **state)
{
    (void)state;
    struct opts nohandler = {.no_call_handler = true};
    struct node *nodes[3] = {node_start(1, NULL), node_start(2, NULL), node_start(3, &nohandler)};
    introduce(nodes, 3);
    wait_all_up(nodes, 3);
    peer_mesh_t *m1 = nodes[0]->m;

    /* A reply with a payload, both directions. */
    struct reply r = {0};
    uint64_t id = 0;
    assert_int_equal(peer_call(m1, 2, "echo", "ping!", 5, 2.0, reply_cb, &r, &id), PEER_OK);
    assert_true(id != 0);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, 0);
    assert_int_equal(r.len, 5);
    assert_memory_equal(r.payload, "ping!", 5);
    memset(&r, 0, sizeof r);
    assert_int_equal(peer_call(nodes[1]->m, 1, "echo", "back", 4, 2.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_memory_equal(r.payload, "back", 4);

    /* An application error travels with its text. */
    memset(&r, 0, sizeof r);
    assert_int_equal(peer_call(m1, 2, "fail", NULL, 0, 2.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, 7);
    assert_string_equal(r.error, "no such queue");

    /* No handler on node 3. */
    memset(&r, 0, sizeof r);
    assert_int_equal(peer_call(m1, 3, "echo", NULL, 0, 2.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, PEER_ENOHANDLER);

    /* A reply too large to send becomes PEER_ETOOBIG at the caller rather than a timeout. */
    memset(&r, 0, sizeof r);
    struct node *n2 = nodes[1];
    n2->calls = 0;
    assert_int_equal(peer_call(m1, 2, "huge", NULL, 0, 5.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, PEER_ETOOBIG);

    /* A deferred reply, answered later from outside any callback. */
    memset(&r, 0, sizeof r);
    n2->deferred_valid = false;
    assert_int_equal(peer_call(m1, 2, "defer", NULL, 0, 5.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(deferred, n2, WAIT_SECS));
    run_for(0.1);
    assert_int_equal(r.calls, 0);
    assert_int_equal(peer_reply(n2->m, &n2->deferred, 0, NULL, "late", 4), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_memory_equal(r.payload, "late", 4);
    assert_int_equal(peer_reply(n2->m, &n2->deferred, -1, NULL, NULL, 0), PEER_EINVAL);

    /* Timeout: the callee never answers in time; its late reply is ignored. */
    memset(&r, 0, sizeof r);
    n2->deferred_valid = false;
    double t0 = now_secs();
    assert_int_equal(peer_call(m1, 2, "defer", NULL, 0, 0.2, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, PEER_ETIMEDOUT);
    assert_true(now_secs() - t0 >= 0.19);
    assert_true(n2->deferred_valid);
    assert_int_equal(peer_reply(n2->m, &n2->deferred, 0, NULL, NULL, 0), PEER_OK);
    run_for(0.1);
    assert_int_equal(r.calls, 1);

    /* Cancelled: the callback never runs. */
    memset(&r, 0, sizeof r);
    assert_int_equal(peer_call(m1, 2, "echo", NULL, 0, 2.0, reply_cb, &r, &id), PEER_OK);
    assert_true(peer_call_cancel(m1, id));
    assert_false(peer_call_cancel(m1, id));
    run_for(0.2);
    assert_int_equal(r.calls, 0);

    /* Many calls in flight at once (the pending-call table grows). */
    enum { MANY = 300 };
    static struct reply rs[MANY];
    memset(rs, 0, sizeof rs);
    for (int i = 0; i < MANY; i++) {
        char p[16];
        int len = snprintf(p, sizeof p, "%d", i);
        assert_int_equal(peer_call(m1, 2, "echo", p, (size_t)len, 5.0, reply_cb, &rs[i], NULL), PEER_OK);
    }
    double deadline = now_secs() + WAIT_SECS;
    int done = 0;
    while (done < MANY && now_secs() < deadline) {
        pump();
        done = 0;
        for (int i = 0; i < MANY; i++) done += rs[i].calls;
    }
    assert_int_equal(done, MANY);
    for (int i = 0; i < MANY; i++) {
        char p[16];
        int len = snprintf(p, sizeof p, "%d", i);
        assert_int_equal(rs[i].len, (size_t)len);
        assert_memory_equal(rs[i].payload, p, (size_t)len);
    }

    /* Unknown node, bad arguments. */
    assert_int_equal(peer_call(m1, 9, "echo", NULL, 0, 1, reply_cb, &r, NULL), PEER_ENODE);
    assert_int_equal(peer_call(m1, 2, "", NULL, 0, 1, reply_cb, &r, NULL), PEER_EINVAL);
    assert_int_equal(peer_call(m1, 2, "echo", NULL, 0, 1, NULL, &r, NULL), PEER_EINVAL);
    for (int i = 0; i < 3; i++) node_free(nodes[i]);
}

/* ---- tests: authentication ---------------------------------------------------------------- */

static void test_wrong_cookie(void **state)
{
    (void)state;
    capture_start();
    /* 1 dials 5 (so 1 checks 5's proof first); 5 dials 9 (so 5 checks 9's proof). */
    struct opts bad = {.cookie = "not-the-cookie"};
    struct node *nodes[3] = {node_start(1, NULL), node_start(5, &bad), node_start(9, NULL)};
    introduce(nodes, 3);
    wait_up(nodes[0], nodes[2]); /* the two with the right cookie get along */
    run_for(1.0);
    char *log = capture_stop();
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < MAX_ID; j++) {
            bool ok_pair = (nodes[i]->id == 1 && j == 9) || (nodes[i]->id == 9 && j == 1);
            if (!ok_pair) assert_int_equal(nodes[i]->ups[j], 0);
        }
    }
    struct peer_stats s1, s5;
    peer_get_stats(nodes[0]->m, &s1);
    peer_get_stats(nodes[1]->m, &s5);
    assert_true(s1.auth_failures >= 1);
    assert_true(s5.auth_failures >= 1);
    char want[128];
    snprintf(want, sizeof want, "peer 127.0.0.1:%d failed cookie authentication", nodes[1]->port);
    if (!strstr(log, want)) fail_msg("no '%s' in the log", want);
    snprintf(want, sizeof want, "peer 127.0.0.1:%d failed cookie authentication", nodes[2]->port);
    if (!strstr(log, want)) fail_msg("no '%s' in the log", want);
    assert_null(strstr(log, COOKIE));
    assert_null(strstr(log, "not-the-cookie"));
    free(log);
    for (int i = 0; i < 3; i++) node_free(nodes[i]);
}

/* An impostor that does not know the cookie gets nothing past the challenge. */
static void test_raw_wrong_cookie_refused(void **state)
{
    (void)state;
    struct node *a = node_start(2, NULL);
    capture_start();
    struct raw r;
    raw_connect(&r, a->port);
    struct rw_buf b = {0};
    struct rw_ident me = {.version = RW_VERSION, .node_id = 1, .node_name = "rabbit@evil", .cluster_name = "test"};
    memcpy(me.nonce, r.nonce, RW_NONCE_LEN);
    rw_encode_hello(&b, &me);
    raw_send(&r, b.data, b.len);
    struct rw_frame *f = raw_recv(&r, WAIT_SECS);
    assert_non_null(f);
    assert_int_equal(f->type, RW_FRAME_CHALLENGE);
    uint8_t mac[RW_MAC_LEN];
    peer_auth_mac("guess", false, r.nonce, f->ident.nonce, 1, 2, mac);
    rw_frame_free(f);
    b.len = 0;
    rw_encode_response(&b, mac);
    raw_send(&r, b.data, b.len);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    char *log = capture_stop();
    assert_non_null(strstr(log, "failed cookie authentication"));
    assert_int_equal(a->ups[1], 0);
    free(log);
    raw_close(&r);
    rw_buf_free(&b);
    node_free(a);
}

/* Frames other than the expected handshake step, and large ones, are refused before auth. */
static void test_handshake_violations(void **state)
{
    (void)state;
    struct node *a = node_start(2, NULL);
    struct peer_stats s;
    /* A Raft batch instead of Hello. */
    struct raw r;
    raw_connect(&r, a->port);
    struct rw_buf b = {0};
    struct raft_msg hb = {.type = RAFT_MSG_HEARTBEAT, .from = 1, .to = 2, .term = 1};
    struct rw_out o = {.group_id = 1, .msg = &hb};
    rw_encode_raft(&b, &o, 1, RW_FRAME_LIMIT);
    raw_send(&r, b.data, b.len);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    raw_close(&r);
    /* A length prefix far beyond the handshake limit: refused before the body arrives. */
    raw_connect(&r, a->port);
    uint8_t big[4] = {0x00, 0x10, 0x00, 0x00};
    raw_send(&r, big, sizeof big);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    raw_close(&r);
    /* Garbage. */
    raw_connect(&r, a->port);
    uint8_t junk[12] = {0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    raw_send(&r, junk, sizeof junk);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    raw_close(&r);
    /* Silence: the handshake timeout closes it. */
    raw_connect(&r, a->port);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    raw_close(&r);
    /* Our own node id, another cluster name. */
    struct rw_ident me = {.version = RW_VERSION, .node_id = 2, .node_name = "rabbit@clone", .cluster_name = "test"};
    raw_connect(&r, a->port);
    b.len = 0;
    rw_encode_hello(&b, &me);
    raw_send(&r, b.data, b.len);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    raw_close(&r);
    me.node_id = 1;
    me.cluster_name = "other";
    raw_connect(&r, a->port);
    b.len = 0;
    rw_encode_hello(&b, &me);
    raw_send(&r, b.data, b.len);
    assert_true(raw_wait_closed(&r, WAIT_SECS));
    raw_close(&r);

    peer_get_stats(a->m, &s);
    assert_true(s.refused >= 3);
    assert_int_equal(s.nodes_up, 0);
    run_for(0.1);
    assert_int_equal(conn_count(a), 0);
    rw_buf_free(&b);
    node_free(a);
}

/* ---- tests: failures and recovery --------------------------------------------------------- */

static void test_stopped_peer_down_and_back(void **state)
{
    (void)state;
    struct node *nodes[3] = {node_start(1, NULL), node_start(2, NULL), node_start(3, NULL)};
    introduce(nodes, 3);
    wait_all_up(nodes, 3);

    /* A call pending on node 2 fails when 2 goes away. */
    struct reply r = {0};
    assert_int_equal(peer_call(nodes[0]->m, 2, "defer", NULL, 0, 30.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(deferred, nodes[1], WAIT_SECS));

    int port2 = nodes[1]->port;
    node_stop(nodes[1]);
    struct pair p12 = {nodes[0], nodes[1]}, p32 = {nodes[2], nodes[1]};
    assert_true(run_until(pair_down, &p12, WAIT_SECS));
    assert_true(run_until(pair_down, &p32, WAIT_SECS));
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, PEER_EDOWN);
    assert_int_equal(nodes[0]->downs[2], 1);
    assert_int_equal(nodes[2]->downs[2], 1);

    /* Down: raft batches are dropped, calls fail at once. */
    struct raft_msg hb = {.type = RAFT_MSG_HEARTBEAT, .from = 1, .to = 2, .term = 1};
    struct rw_out o = {.group_id = 1, .msg = &hb};
    assert_int_equal(peer_send_raft(nodes[0]->m, 2, &o, 1), PEER_EDOWN);
    memset(&r, 0, sizeof r);
    assert_int_equal(peer_call(nodes[0]->m, 2, "echo", NULL, 0, 1.0, reply_cb, &r, NULL), PEER_EDOWN);
    run_for(0.8); /* node 1 keeps dialing the closed port, backing off */
    assert_int_equal(r.calls, 0);
    assert_false(peer_is_up(nodes[0]->m, 2));
    assert_true(peer_is_up(nodes[0]->m, 3)); /* the others are unaffected */

    /* Restarted on the same port: 1 dials it again, it dials 3; everyone is back. */
    struct node *old = nodes[1];
    struct opts same = {.port = port2};
    nodes[1] = node_start(2, &same);
    node_free(old);
    introduce(nodes, 3);
    double t0 = now_secs();
    wait_all_up(nodes, 3);
    assert_true(now_secs() - t0 < 0.4 * 2 + 1.0); /* within the backoff cap plus slack */
    run_for(0.3);
    for (int i = 0; i < 3; i++) assert_int_equal(conn_count(nodes[i]), 2);
    assert_int_equal(nodes[0]->ups[2], 2);
    assert_int_equal(nodes[2]->ups[2], 2);
    assert_int_equal(nodes[0]->ups[3], 1);

    /* Traffic flows on the new connection. */
    memset(&r, 0, sizeof r);
    assert_int_equal(peer_call(nodes[0]->m, 2, "echo", "x", 1, 2.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_int_equal(r.status, 0);
    for (int i = 0; i < 3; i++) node_free(nodes[i]);
}

static bool a_lost_2(void *arg) { return !((struct node *)arg)->up[2]; }

/* A peer whose process hangs (its loop stops running) is declared down after down_after; when
 * it runs again the connection is re-established. */
static void test_silent_peer(void **state)
{
    (void)state;
    second_loop = ev_loop_new(EVFLAG_AUTO);
    second_frozen = false;
    struct opts on2 = {.loop = second_loop};
    struct node *a = node_start(1, NULL), *b = node_start(2, &on2);
    struct node *nodes[2] = {a, b};
    introduce(nodes, 2);
    wait_up(a, b);

    capture_start();
    second_frozen = true;
    double t0 = now_secs();
    assert_true(run_until(a_lost_2, a, WAIT_SECS));
    double took = now_secs() - t0;
    assert_int_equal(a->downs[2], 1);
    assert_true(took >= 0.25);
    char *log = capture_stop();
    assert_non_null(strstr(log, "silent for"));
    free(log);

    second_frozen = false;
    wait_up(a, b);
    assert_int_equal(a->ups[2], 2);
    run_for(0.3);
    assert_int_equal(conn_count(a), 1);
    assert_int_equal(conn_count(b), 1);
    node_free(a);
    node_free(b);
    ev_loop_destroy(second_loop);
    second_loop = NULL;
}

static void test_remove_node(void **state)
{
    (void)state;
    struct node *nodes[2] = {node_start(1, NULL), node_start(2, NULL)};
    introduce(nodes, 2);
    wait_up(nodes[0], nodes[1]);
    assert_int_equal(peer_remove_node(nodes[0]->m, 2), PEER_OK);
    assert_false(nodes[0]->up[2]); /* reported down synchronously */
    assert_int_equal(nodes[0]->downs[2], 1);
    run_for(0.6);
    /* 1 no longer dials 2, and 2 (the larger id) never dials: they stay apart. */
    assert_int_equal(nodes[0]->ups[2], 1);
    assert_false(nodes[1]->up[1]);
    for (int i = 0; i < 2; i++) node_free(nodes[i]);
}

/* ---- tests: frame sizes ------------------------------------------------------------------- */

static void test_large_frames(void **state)
{
    (void)state;
    struct opts small = {.max_frame = 64 * 1024};
    struct node *a = node_start(1, NULL), *b = node_start(2, &small), *c = node_start(3, NULL);
    struct node *nodes[3] = {a, b, c};
    introduce(nodes, 3);
    wait_all_up(nodes, 3);

    /* The sender knows 2 accepts at most 64 KiB: a larger message is refused locally. */
    struct raft_entry e = {.term = 1, .type = RAFT_ENTRY_NORMAL, .len = 100 * 1024, .data = payload};
    struct raft_msg m = {.type = RAFT_MSG_APPEND, .from = 1, .to = 2, .term = 1, .n_entries = 1, .entries = &e};
    struct rw_out o = {.group_id = 1, .msg = &m};
    capture_start();
    assert_int_equal(peer_send_raft(a->m, 2, &o, 1), PEER_ETOOBIG);
    char *log = capture_stop();
    assert_non_null(strstr(log, "frame limit"));
    free(log);
    struct reply r = {0};
    assert_int_equal(peer_call(a->m, 2, "echo", payload, 100 * 1024, 1.0, reply_cb, &r, NULL), PEER_ETOOBIG);
    /* ... while node 3 takes it. */
    m.to = 3;
    assert_int_equal(peer_send_raft(a->m, 3, &o, 1), PEER_OK);
    assert_true(run_until(has_batches, c, WAIT_SECS));
    assert_int_equal(c->batches[0]->raft[0].msg.entries[0].len, 100 * 1024);
    assert_true(peer_is_up(a->m, 2));

    /* A node that ignores the announced limit has its connection closed. */
    capture_start();
    struct raw raw;
    raw_auth(&raw, b->port, 7, 2, COOKIE);
    double deadline = now_secs() + WAIT_SECS;
    while (!b->up[7] && now_secs() < deadline) pump();
    assert_true(b->up[7]); /* a node that knows the cookie may join */
    struct rw_buf buf = {0};
    m.to = 2;
    m.from = 7;
    assert_int_equal(rw_encode_raft(&buf, &o, 1, RW_FRAME_LIMIT), RW_OK);
    raw_send(&raw, buf.data, buf.len);
    assert_true(raw_wait_closed(&raw, WAIT_SECS));
    log = capture_stop();
    assert_non_null(strstr(log, "more than the limit of 65536"));
    free(log);
    run_for(0.05);
    assert_false(b->up[7]);
    assert_int_equal(b->n_batches, 0);
    struct peer_stats s;
    peer_get_stats(b->m, &s);
    assert_true(s.refused >= 1);
    raw_close(&raw);
    rw_buf_free(&buf);
    for (int i = 0; i < 3; i++) node_free(nodes[i]);
}

/* The send buffer is bounded: a peer that does not read gets its Raft traffic dropped and calls
 * refused instead of growing our memory. */
static void test_send_buffer_bounded(void **state)
{
    (void)state;
    struct node *a = node_start(2, NULL);
    struct raw raw;
    raw_auth(&raw, a->port, 1, 2, COOKIE); /* then never reads */
    double deadline = now_secs() + WAIT_SECS;
    while (!a->up[1] && now_secs() < deadline) pump();
    assert_true(a->up[1]);
    struct raft_entry e = {.term = 1, .type = RAFT_ENTRY_NORMAL, .len = 200 * 1024, .data = payload};
    struct raft_msg m = {.type = RAFT_MSG_APPEND, .from = 2, .to = 1, .term = 1, .n_entries = 1, .entries = &e};
    struct rw_out o = {.group_id = 1, .msg = &m};
    int busy = 0;
    struct reply r = {0};
    for (int i = 0; i < 200 && !busy; i++) {
        int rc = peer_send_raft(a->m, 1, &o, 1);
        if (rc == PEER_EBUSY) {
            busy = 1;
            /* Nothing was sent since: a call at least as large is refused too. */
            assert_int_equal(peer_call(a->m, 1, "echo", payload, 250 * 1024, 1.0, reply_cb, &r, NULL), PEER_EBUSY);
        } else {
            assert_int_equal(rc, PEER_OK);
        }
        ev_run(loop, EVRUN_NOWAIT);
    }
    assert_true(busy); /* 200 x 200 KiB = 40 MiB never fit in a 2 MiB bound plus socket buffers */
    struct peer_stats s;
    peer_get_stats(a->m, &s);
    assert_true(s.raft_dropped >= 1);
    raw_close(&raw);
    node_free(a);
}

/* ---- tests: duplicate connections --------------------------------------------------------- */

static void test_duplicate_connections(void **state)
{
    (void)state;
    struct node *a = node_start(1, NULL), *b = node_start(2, NULL);
    struct node *nodes[2] = {a, b};
    introduce(nodes, 2);
    wait_up(a, b);

    /* "Node 2" dials node 1 while 1's own connection to 2 is up: node 1 keeps the one it dialed
     * (the smaller id dials) and closes the newcomer, without a down/up. */
    struct raw raw;
    raw_auth(&raw, a->port, 2, 1, COOKIE);
    assert_true(raw_wait_closed(&raw, WAIT_SECS));
    raw_close(&raw);
    assert_int_equal(a->ups[2], 1);
    assert_int_equal(a->downs[2], 0);

    /* "Node 1" dials node 2 again (as after a restart node 2 has not noticed yet): the newer
     * connection from the same dialer wins at node 2, which reports 1 down and up again. */
    raw_auth(&raw, b->port, 1, 2, COOKIE);
    double deadline = now_secs() + WAIT_SECS;
    while (b->ups[1] < 2 && now_secs() < deadline) pump();
    assert_int_equal(b->ups[1], 2);
    assert_int_equal(b->downs[1], 1);
    /* The real node 1 lost its connection, redials, and that newer connection replaces ours. */
    assert_true(raw_wait_closed(&raw, WAIT_SECS));
    raw_close(&raw);
    wait_up(a, b);
    run_for(0.3);
    assert_int_equal(conn_count(a), 1);
    assert_int_equal(conn_count(b), 1);
    assert_true(a->up[2] && b->up[1]);
    node_free(a);
    node_free(b);
}

/* ---- tests: TLS --------------------------------------------------------------------------- */

static void test_tls(void **state)
{
    (void)state;
    char dir[] = "/tmp/warren-peer-tls-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert[128], key[128], err[256];
    snprintf(cert, sizeof cert, "%s/cert.pem", dir);
    snprintf(key, sizeof key, "%s/key.pem", dir);
    assert_int_equal(net_tls_make_self_signed(cert, key, err, sizeof err), 0);
    SSL_CTX *server = net_tls_server_ctx(cert, key, NULL, false, false, err, sizeof err);
    assert_non_null(server);
    SSL_CTX *client = SSL_CTX_new(TLS_client_method());
    assert_non_null(client);
    SSL_CTX_set_min_proto_version(client, TLS1_2_VERSION);
    SSL_CTX_set_verify(client, SSL_VERIFY_NONE, NULL); /* the cookie authenticates the peer */

    struct opts tls = {.tls_server = server, .tls_client = client};
    struct node *a = node_start(1, &tls), *b = node_start(2, &tls), *plain = node_start(3, NULL);
    struct node *nodes[3] = {a, b, plain};
    introduce(nodes, 3);
    wait_up(a, b);

    /* A batch far larger than a TLS record, both ways, and a call. */
    struct raft_msg m[8];
    size_t n = sample_msgs(m, 1, 2);
    struct raft_entry big = {.term = 3, .type = RAFT_ENTRY_NORMAL, .len = sizeof payload, .data = payload};
    m[0].entries = &big;
    m[0].n_entries = 1;
    struct rw_out out[8];
    for (size_t i = 0; i < n; i++) out[i] = (struct rw_out){.group_id = i, .msg = &m[i]};
    assert_int_equal(peer_send_raft(a->m, 2, out, n), PEER_OK);
    assert_true(run_until(has_batches, b, WAIT_SECS));
    check_batch(b->batches[0], m, n, 0);
    n = sample_msgs(m, 2, 1);
    assert_int_equal(peer_send_raft(b->m, 1, out, n), PEER_OK);
    assert_true(run_until(has_batches, a, WAIT_SECS));
    check_batch(a->batches[0], m, n, 0);
    struct reply r = {0};
    assert_int_equal(peer_call(b->m, 1, "echo", "tls", 3, 2.0, reply_cb, &r, NULL), PEER_OK);
    assert_true(run_until(replied, &r, WAIT_SECS));
    assert_memory_equal(r.payload, "tls", 3);

    /* A plain-TCP node cannot talk to TLS nodes. */
    run_for(0.5);
    assert_int_equal(plain->ups[1] + plain->ups[2] + a->ups[3] + b->ups[3], 0);

    for (int i = 0; i < 3; i++) node_free(nodes[i]);
    SSL_CTX_free(server);
    SSL_CTX_free(client);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

static int setup(void **state)
{
    (void)state;
    loop = ev_default_loop(0);
    return 0;
}

int main(void)
{
    log_set_level(LOG_INFO);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_three_nodes_come_up),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_raft_batches_both_ways),
        cmocka_unit_test(test_raft_batch_split),
        cmocka_unit_test(test_calls),
        cmocka_unit_test(test_wrong_cookie),
        cmocka_unit_test(test_raw_wrong_cookie_refused),
        cmocka_unit_test(test_handshake_violations),
        cmocka_unit_test(test_stopped_peer_down_and_back),
        cmocka_unit_test(test_silent_peer),
        cmocka_unit_test(test_remove_node),
        cmocka_unit_test(test_large_frames),
        cmocka_unit_test(test_send_buffer_bounded),
        cmocka_unit_test(test_duplicate_connections),
        cmocka_unit_test(test_tls),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
