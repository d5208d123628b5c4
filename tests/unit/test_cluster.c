/* test_cluster.c - cluster formation and the metadata group (broker/cluster.c) with real sockets.
 *
 * Up to four nodes run in this process on one libev loop, each a cl_t with its own store in a
 * temporary directory and its own cluster port on 127.0.0.1, configured the way warren-server
 * configures them (a cfg_t with node_name, cluster.cookie and cluster_formation nodes). Each
 * node's state machine is a toy key/value map: "set K V" sets, "inc K" adds one to K (so a
 * command applied twice shows), "err K" fails with 404. Snapshots serialize the map.
 *
 * Timing is compressed (20 ms Raft ticks, 50 ms retries, pings every 50 ms and peers down after
 * 500 ms of silence) and every wait is bounded by WAIT_SECS, so a bug fails an assertion
 * instead of hanging. Stopping a node is cl_free + store_close, which from the other nodes looks
 * like a process that exited (its connections close). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "broker/cluster.h"
#include "broker/config.h"
#include "broker/log.h"
#include "broker/peer.h"
#include "broker/raftwire.h"
#include "broker/store.h"

#define WAIT_SECS 20.0
#define MAX_NODES 4
#define MAX_KEYS 64
#define COOKIE "test-cluster-cookie"

static struct ev_loop *loop;

/* ---- the toy state machine ------------------------------------------------------------------ */

struct kv {
    int n;
    char key[MAX_KEYS][32];
    char val[MAX_KEYS][64];
    unsigned installs;
    uint64_t last_index;
};

static int kv_find(struct kv *kv, const char *k)
{
    for (int i = 0; i < kv->n; i++)
        if (strcmp(kv->key[i], k) == 0) return i;
    return -1;
}

static const char *kv_get(struct kv *kv, const char *k)
{
    int i = kv_find(kv, k);
    return i < 0 ? NULL : kv->val[i];
}

static void kv_set(struct kv *kv, const char *k, const char *v)
{
    int i = kv_find(kv, k);
    if (i < 0) {
        assert_true(kv->n < MAX_KEYS);
        i = kv->n++;
        snprintf(kv->key[i], sizeof kv->key[i], "%s", k);
    }
    snprintf(kv->val[i], sizeof kv->val[i], "%s", v);
}

static void kv_apply(void *ud, uint64_t index, const void *cmd, size_t len, int *code, char *text, size_t textlen)
{
    struct kv *kv = ud;
    char buf[160], op[16] = "", k[32] = "", v[64] = "";
    assert_true(len < sizeof buf);
    memcpy(buf, cmd, len);
    buf[len] = '\0';
    assert_true(sscanf(buf, "%15s %31s %63s", op, k, v) >= 2);
    if (index) { /* clustered: log order, each index once */
        assert_true(index > kv->last_index);
        kv->last_index = index;
    }
    if (strcmp(op, "set") == 0) {
        kv_set(kv, k, v);
    } else if (strcmp(op, "inc") == 0) {
        const char *old = kv_get(kv, k);
        char n[32];
        snprintf(n, sizeof n, "%d", old ? atoi(old) + 1 : 1);
        kv_set(kv, k, n);
    } else {
        *code = 404;
        snprintf(text, textlen, "NOT_FOUND - no key '%s'", k);
    }
}

static int kv_snapshot_take(void *ud, uint64_t index, void **bytes, size_t *len)
{
    (void)index;
    struct kv *kv = ud;
    size_t cap = (size_t)kv->n * 100 + 1, off = 0;
    char *p = malloc(cap);
    for (int i = 0; i < kv->n; i++) off += (size_t)snprintf(p + off, cap - off, "%s=%s\n", kv->key[i], kv->val[i]);
    *bytes = p;
    *len = off;
    return 0;
}

static void kv_snapshot_install(void *ud, uint64_t index, const void *bytes, size_t len)
{
    struct kv *kv = ud;
    kv->n = 0;
    kv->installs++;
    kv->last_index = index;
    char *text = calloc(1, len + 1);
    if (len) memcpy(text, bytes, len);
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *eq = strchr(line, '=');
        assert_non_null(eq);
        *eq = '\0';
        kv_set(kv, line, eq + 1);
    }
    free(text);
}

static const struct cl_meta_ops kv_ops = {kv_apply, kv_snapshot_take, kv_snapshot_install};

/* ---- nodes ---------------------------------------------------------------------------------- */

struct node {
    int idx;
    char name[64];
    int port;
    char dir[128];
    store_t *store;
    cl_t *c;
    struct kv kv;
};

struct fx {
    char tmp[64];
    int n; /* nodes in the cluster_formation list */
    struct node nodes[MAX_NODES];
    const char *cookie[MAX_NODES]; /* NULL: COOKIE */
    unsigned snapshot_threshold;
    double submit_timeout;
};

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    close(fd);
    return ntohs(sa.sin_port);
}

static void fx_init(struct fx *f, int n)
{
    memset(f, 0, sizeof *f);
    snprintf(f->tmp, sizeof f->tmp, "/tmp/test_cluster.XXXXXX");
    assert_non_null(mkdtemp(f->tmp));
    f->n = n;
    f->submit_timeout = 1.5;
    for (int i = 0; i < MAX_NODES; i++) {
        struct node *nd = &f->nodes[i];
        nd->idx = i;
        snprintf(nd->name, sizeof nd->name, "warren%d@127.0.0.1", i + 1);
        nd->port = free_port();
        snprintf(nd->dir, sizeof nd->dir, "%s/n%d", f->tmp, i + 1);
    }
}

static void cfg_put(cfg_t *c, const char *k, const char *v)
{
    char err[256];
    if (cfg_set(c, k, v, err, sizeof err) != 0) fail_msg("cfg_set %s: %s", k, err);
}

/* The config of node i: the first n nodes are listed, plus node i itself if beyond them. */
static void node_cfg(struct fx *f, int i, cfg_t *cfg)
{
    cfg_defaults(cfg);
    cfg_put(cfg, "node_name", f->nodes[i].name);
    cfg_put(cfg, "cluster_name", "test");
    cfg_put(cfg, "cluster.cookie", f->cookie[i] ? f->cookie[i] : COOKIE);
    cfg_put(cfg, "cluster.listener.ip", "127.0.0.1");
    for (int k = 0; k < MAX_NODES; k++) {
        if (k >= f->n && k != i) continue;
        char key[80], val[128];
        snprintf(key, sizeof key, "cluster_formation.classic_config.nodes.%d", k + 1);
        snprintf(val, sizeof val, "%s:%d", f->nodes[k].name, f->nodes[k].port);
        cfg_put(cfg, key, val);
    }
}

static void test_options(struct fx *f, struct cl_options *o)
{
    cl_options_defaults(o);
    o->submit_timeout = f->submit_timeout;
    o->retry_interval = 0.05;
    o->discovery_window = 1.0;
    o->tick_seconds = 0.02;
    o->election_ticks = 10;
    o->heartbeat_ticks = 2;
    o->snapshot_threshold = f->snapshot_threshold ? f->snapshot_threshold : 4096;
    o->ping_interval = 0.05;
    o->down_after = 0.5;
    o->backoff_min = 0.05;
    o->backoff_max = 0.4;
}

static void node_start(struct fx *f, int i)
{
    struct node *nd = &f->nodes[i];
    assert_null(nd->c);
    char err[512] = "";
    nd->store = store_open(nd->dir, loop, err, sizeof err);
    if (!nd->store) fail_msg("store_open: %s", err);
    static cfg_t cfg;
    node_cfg(f, i, &cfg);
    struct cl_options o;
    test_options(f, &o);
    memset(&nd->kv, 0, sizeof nd->kv);
    nd->c = cl_new(loop, &cfg, nd->store, &o, err, sizeof err);
    if (!nd->c) fail_msg("cl_new %s: %s", nd->name, err);
    if (cl_start(nd->c, &kv_ops, &nd->kv, err, sizeof err) != 0) fail_msg("cl_start: %s", err);
}

static void node_stop(struct fx *f, int i)
{
    struct node *nd = &f->nodes[i];
    if (!nd->c) return;
    cl_free(nd->c);
    nd->c = NULL;
    store_close(nd->store);
    nd->store = NULL;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    remove(path);
    return 0;
}

static void fx_free(struct fx *f)
{
    for (int i = 0; i < MAX_NODES; i++) node_stop(f, i);
    nftw(f->tmp, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- running the loop ----------------------------------------------------------------------- */

static double now_secs(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pump(void)
{
    ev_run(loop, EVRUN_NOWAIT);
    poll(NULL, 0, 1);
}

typedef bool (*cond_fn)(struct fx *f, void *arg);

static bool run_until(struct fx *f, cond_fn cond, void *arg, double secs)
{
    double deadline = now_secs() + secs;
    while (!cond(f, arg)) {
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

/* Every running node among mask is a formed member, all agree on one leader, and each sees
 * exactly `members` voters, all running. */
struct formed_arg {
    unsigned mask;
    unsigned members;
};

static bool all_formed(struct fx *f, void *arg)
{
    struct formed_arg *a = arg;
    uint32_t leader = 0;
    for (int i = 0; i < MAX_NODES; i++) {
        if (!(a->mask & (1u << i))) continue;
        if (!f->nodes[i].c || !cl_formed(f->nodes[i].c)) return false;
        struct cl_status st;
        cl_status(f->nodes[i].c, &st);
        if (st.n_members != a->members) return false;
        for (unsigned k = 0; k < st.n_members; k++)
            if (!st.members[k].voter || !st.members[k].running) return false;
        if (leader && st.leader_id != leader) return false;
        leader = st.leader_id;
    }
    return true;
}

static void dump_status(struct fx *f)
{
    for (int i = 0; i < MAX_NODES; i++)
        if (f->nodes[i].c) {
            char *j = cl_status_json(f->nodes[i].c);
            print_message("node %d: %s\n", i + 1, j);
            free(j);
        }
}

static void wait_formed(struct fx *f, unsigned mask, unsigned members)
{
    struct formed_arg a = {mask, members};
    if (!run_until(f, all_formed, &a, WAIT_SECS)) {
        dump_status(f);
        fail_msg("cluster (mask %x) did not form with %u members", mask, members);
    }
}

/* ---- submissions ---------------------------------------------------------------------------- */

struct sub {
    struct node *nd;
    bool done;
    int code;
    char text[300];
    char key[32];
    char seen[64]; /* the key's value on the submitting node when cb ran */
};

static void sub_cb(void *arg, int code, const char *text)
{
    struct sub *s = arg;
    assert_false(s->done);
    s->done = true;
    s->code = code;
    snprintf(s->text, sizeof s->text, "%s", text ? text : "");
    const char *v = kv_get(&s->nd->kv, s->key);
    snprintf(s->seen, sizeof s->seen, "%s", v ? v : "");
}

static bool sub_done(struct fx *f, void *arg)
{
    (void)f;
    return ((struct sub *)arg)->done;
}

static void submit(struct node *nd, struct sub *s, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void submit(struct node *nd, struct sub *s, const char *fmt, ...)
{
    char cmd[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    memset(s, 0, sizeof *s);
    s->nd = nd;
    char op[16];
    assert_true(sscanf(cmd, "%15s %31s", op, s->key) == 2);
    assert_int_equal(cl_meta_submit(nd->c, cmd, strlen(cmd), sub_cb, s), 0);
}

static void submit_wait(struct fx *f, struct node *nd, struct sub *s, double secs)
{
    if (!run_until(f, sub_done, s, secs)) fail_msg("submission on %s got no answer in %.1f s", nd->name, secs);
}

struct kv_arg {
    unsigned mask;
    const char *key, *val;
};

static bool kv_everywhere(struct fx *f, void *arg)
{
    struct kv_arg *a = arg;
    for (int i = 0; i < MAX_NODES; i++) {
        if (!(a->mask & (1u << i))) continue;
        const char *v = f->nodes[i].c ? kv_get(&f->nodes[i].kv, a->key) : NULL;
        if (!v || strcmp(v, a->val) != 0) return false;
    }
    return true;
}

static void wait_kv(struct fx *f, unsigned mask, const char *key, const char *val)
{
    struct kv_arg a = {mask, key, val};
    if (!run_until(f, kv_everywhere, &a, WAIT_SECS)) fail_msg("%s=%s did not reach every node of %x", key, val, mask);
}

/* ---- capturing log lines -------------------------------------------------------------------- */

static int saved_stderr = -1;
static FILE *log_file;

static void capture_start(void)
{
    fflush(stderr);
    log_file = tmpfile();
    saved_stderr = dup(2);
    dup2(fileno(log_file), 2);
}

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

/* ---- tests: configuration ------------------------------------------------------------------- */

static void test_standalone(void **state)
{
    (void)state;
    cfg_t cfg;
    cfg_defaults(&cfg);
    cfg_put(&cfg, "node_name", "solo@localhost");
    char err[256] = "";
    cl_t *c = cl_new(loop, &cfg, NULL, NULL, err, sizeof err); /* no store, no network needed */
    assert_non_null(c);
    static struct node nd;
    memset(&nd, 0, sizeof nd);
    assert_int_equal(cl_start(c, &kv_ops, &nd.kv, err, sizeof err), 0);
    assert_false(cl_clustered(c));
    assert_true(cl_formed(c));
    assert_int_equal(cl_listen_port(c), 0);
    /* Synchronous: the callback has run when submit returns, with the state applied. */
    struct sub s;
    memset(&s, 0, sizeof s);
    s.nd = &nd;
    snprintf(s.key, sizeof s.key, "a");
    assert_int_equal(cl_meta_submit(c, "set a 1", 7, sub_cb, &s), 0);
    assert_true(s.done);
    assert_int_equal(s.code, 0);
    assert_string_equal(s.seen, "1");
    memset(&s, 0, sizeof s);
    s.nd = &nd;
    assert_int_equal(cl_meta_submit(c, "err b", 5, sub_cb, &s), 0);
    assert_true(s.done);
    assert_int_equal(s.code, 404);
    assert_string_equal(s.text, "NOT_FOUND - no key 'b'");
    struct cl_status st;
    cl_status(c, &st);
    assert_string_equal(st.state, "standalone");
    assert_int_equal(st.n_members, 1);
    assert_string_equal(st.leader, "solo@localhost");
    assert_int_equal(cl_forget_node(c, "x@y", NULL, NULL), -1);
    cl_free(c);
}

static void test_config_errors(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    char err[512];
    store_t *s = store_open(f.nodes[0].dir, loop, err, sizeof err);
    assert_non_null(s);
    cfg_t cfg;

    node_cfg(&f, 0, &cfg);
    cfg_put(&cfg, "node_name", "stranger@127.0.0.1");
    err[0] = '\0';
    assert_null(cl_new(loop, &cfg, s, NULL, err, sizeof err));
    assert_non_null(strstr(err, "node_name 'stranger@127.0.0.1' is not one of"));
    assert_non_null(strstr(err, "warren2@127.0.0.1"));

    node_cfg(&f, 0, &cfg);
    cfg.cluster_cookie[0] = '\0';
    assert_null(cl_new(loop, &cfg, s, NULL, err, sizeof err));
    assert_non_null(strstr(err, "cluster.cookie"));

    /* The cookie from a file, trimmed; an empty file is an error. */
    char path[200];
    snprintf(path, sizeof path, "%s/cookie", f.tmp);
    FILE *fp = fopen(path, "w");
    fputs("  \n", fp);
    fclose(fp);
    snprintf(cfg.cluster_cookie_file, sizeof cfg.cluster_cookie_file, "%s", path);
    assert_null(cl_new(loop, &cfg, s, NULL, err, sizeof err));
    assert_non_null(strstr(err, "is empty"));
    fp = fopen(path, "w");
    fputs(COOKIE "\n", fp);
    fclose(fp);
    cl_t *c = cl_new(loop, &cfg, s, NULL, err, sizeof err);
    if (!c) fail_msg("%s", err);
    cl_free(c);

    /* Two names with the same FNV-1a id (found by a search over n<i>@h). */
    const char *name_a = "n512789@h", *name_b = "n749192@h";
    assert_int_equal(cl_node_id(name_a), cl_node_id(name_b));
    cfg_defaults(&cfg);
    char val[128];
    cfg_put(&cfg, "node_name", name_a);
    cfg_put(&cfg, "cluster.cookie", COOKIE);
    snprintf(val, sizeof val, "%s:1", name_a);
    cfg_put(&cfg, "cluster_formation.classic_config.nodes.1", val);
    snprintf(val, sizeof val, "%s:2", name_b);
    cfg_put(&cfg, "cluster_formation.classic_config.nodes.2", val);
    assert_null(cl_new(loop, &cfg, s, NULL, err, sizeof err));
    assert_non_null(strstr(err, "map to the same node id"));

    /* cl_node_id never yields 0 or the client id. */
    assert_int_not_equal(cl_node_id(""), 0);
    assert_int_equal(cl_node_id("warren1@127.0.0.1"), cl_node_id("warren1@127.0.0.1"));
    assert_int_not_equal(cl_node_id("warren1@127.0.0.1"), cl_node_id("warren2@127.0.0.1"));

    store_close(s);
    fx_free(&f);
}

/* ---- tests: formation ----------------------------------------------------------------------- */

static void formation_in_order(const int order[3], double gap)
{
    struct fx f;
    fx_init(&f, 3);
    for (int k = 0; k < 3; k++) {
        node_start(&f, order[k]);
        run_for(gap);
    }
    wait_formed(&f, 0x7, 3);
    /* Every node knows every name (the registry), and a submission works from each. */
    for (int i = 0; i < 3; i++) {
        struct cl_status st;
        cl_status(f.nodes[i].c, &st);
        for (unsigned k = 0; k < st.n_members; k++) assert_non_null(strstr(st.members[k].name, "@127.0.0.1"));
        assert_non_null(strstr(st.leader, "@127.0.0.1"));
    }
    fx_free(&f);
}

static void test_formation_orders(void **state)
{
    (void)state;
    formation_in_order((const int[]){0, 1, 2}, 0.0);
    formation_in_order((const int[]){2, 1, 0}, 0.3);
    formation_in_order((const int[]){1, 0, 2}, 0.0);
    formation_in_order((const int[]){0, 2, 1}, 1.5); /* the founder waits its discovery window alone */
}

/* ---- tests: submissions --------------------------------------------------------------------- */

static void test_submit_from_every_node(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    for (int i = 0; i < 3; i++) {
        struct sub s;
        submit(&f.nodes[i], &s, "set k%d v%d", i, i);
        submit_wait(&f, &f.nodes[i], &s, WAIT_SECS);
        assert_int_equal(s.code, 0);
        char want[16];
        snprintf(want, sizeof want, "v%d", i);
        assert_string_equal(s.seen, want); /* applied on the submitting node before its callback */
        char key[16];
        snprintf(key, sizeof key, "k%d", i);
        wait_kv(&f, 0x7, key, want);
    }
    /* The state machine's failure comes back with its code and text, on any node. */
    struct sub s;
    submit(&f.nodes[1], &s, "err nothing");
    submit_wait(&f, &f.nodes[1], &s, WAIT_SECS);
    assert_int_equal(s.code, 404);
    assert_string_equal(s.text, "NOT_FOUND - no key 'nothing'");
    /* Many at once from every node: all applied once, in the same order everywhere. */
    struct sub many[3][20];
    for (int k = 0; k < 20; k++)
        for (int i = 0; i < 3; i++) submit(&f.nodes[i], &many[i][k], "inc counter");
    for (int i = 0; i < 3; i++)
        for (int k = 0; k < 20; k++) {
            submit_wait(&f, &f.nodes[i], &many[i][k], WAIT_SECS);
            assert_int_equal(many[i][k].code, 0);
        }
    wait_kv(&f, 0x7, "counter", "60");
    fx_free(&f);
}

/* Sends a hand-made CMD entry (cluster.c's documented format) from node `from` to the leader. */
struct raw_reply {
    bool done;
    int status;
};

static void raw_reply_cb(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error, (void)payload, (void)len;
    struct raw_reply *r = arg;
    r->done = true;
    r->status = status;
}

static bool raw_done(struct fx *f, void *arg)
{
    (void)f;
    return ((struct raw_reply *)arg)->done;
}

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

static int propose_raw(struct fx *f, struct node *from, uint32_t leader, uint64_t req, uint64_t acked, const char *cmd)
{
    uint8_t buf[256];
    size_t n = strlen(cmd);
    buf[0] = 1;
    put_be(buf + 1, cl_self_id(from->c), 4);
    put_be(buf + 5, req, 8);
    put_be(buf + 13, acked, 8);
    memcpy(buf + 21, cmd, n);
    /* Connections may still be settling (a restart): retry what did not reach a leader. */
    struct raw_reply r = {0};
    for (int attempt = 0; attempt < 100; attempt++) {
        memset(&r, 0, sizeof r);
        if (peer_call(cl_mesh(from->c), leader, "cl.propose", buf, 21 + n, 5.0, raw_reply_cb, &r, NULL) == PEER_OK)
            assert_true(run_until(f, raw_done, &r, WAIT_SECS));
        else
            r.status = PEER_EDOWN;
        if (r.status >= 0 && r.status != CL_OP_RETRY) break;
        run_for(0.05);
    }
    return r.status;
}

static struct node *leader_node(struct fx *f)
{
    for (int i = 0; i < MAX_NODES; i++)
        if (f->nodes[i].c && cl_formed(f->nodes[i].c)) {
            struct cl_status st;
            cl_status(f->nodes[i].c, &st);
            for (int k = 0; k < MAX_NODES; k++)
                if (f->nodes[k].c && cl_self_id(f->nodes[k].c) == st.leader_id) return &f->nodes[k];
        }
    return NULL;
}

static void test_dedupe(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    f.snapshot_threshold = 8; /* the table must survive snapshots too */
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    struct node *leader = leader_node(&f);
    assert_non_null(leader);
    struct node *from = &f.nodes[(leader->idx + 1) % 3];
    uint32_t lid = cl_self_id(leader->c);
    uint64_t base = 100; /* below the node's own ids (boot << 32 | n), which come later */
    /* The same request three times (a retry after a lost reply, a retry via a new leader...). */
    for (int k = 0; k < 3; k++) assert_int_equal(propose_raw(&f, from, lid, base + 1, base + 1, "inc dup"), 0);
    wait_kv(&f, 0x7, "dup", "1");
    /* Another request of the same origin goes through; the first one repeated still does not. */
    assert_int_equal(propose_raw(&f, from, lid, base + 2, base + 1, "inc dup"), 0);
    wait_kv(&f, 0x7, "dup", "2");
    /* Enough traffic (from the other nodes, so the origin's floor stays) for several
     * snapshots, then the retries again: the kept results are in the snapshots. */
    struct sub s;
    for (int k = 0; k < 30; k++) {
        struct node *nd = &f.nodes[(from->idx + 1 + k % 2) % 3];
        submit(nd, &s, "set fill%d x", k % 5);
        submit_wait(&f, nd, &s, WAIT_SECS);
        assert_int_equal(s.code, 0);
    }
    /* Restarted, the nodes rebuild the table from their stored snapshot (the early entries are
     * compacted away by now). */
    for (int i = 0; i < 3; i++) node_stop(&f, i);
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    for (int i = 0; i < 3; i++) assert_true(f.nodes[i].kv.installs >= 1);
    /* The origin must reach the leader over the mesh: if it leads now, make someone else lead. */
    for (int k = 0; k < 10 && (leader = leader_node(&f)) == from; k++) {
        node_stop(&f, from->idx);
        run_for(0.6);
        node_start(&f, from->idx);
        wait_formed(&f, 0x7, 3);
    }
    assert_ptr_not_equal(leader, from);
    lid = cl_self_id(leader->c);
    assert_int_equal(propose_raw(&f, from, lid, base + 2, base + 1, "inc dup"), 0);
    assert_int_equal(propose_raw(&f, from, lid, base + 1, base + 1, "inc dup"), 0);
    run_for(0.3);
    for (int i = 0; i < 3; i++) assert_string_equal(kv_get(&f.nodes[i].kv, "dup"), "2");
    /* The floor: once the origin says everything below base+3 is answered, base+2 is forgotten
     * and a straggler copy of it is dropped, not applied. */
    assert_int_equal(propose_raw(&f, from, lid, base + 3, base + 3, "inc dup"), 0);
    assert_int_equal(propose_raw(&f, from, lid, base + 2, base + 1, "inc dup"), 0);
    wait_kv(&f, 0x7, "dup", "3");
    run_for(0.3);
    for (int i = 0; i < 3; i++) assert_string_equal(kv_get(&f.nodes[i].kv, "dup"), "3");
    /* The origin's own submissions (higher ids) still go through. */
    submit(from, &s, "inc dup");
    submit_wait(&f, from, &s, WAIT_SECS);
    assert_int_equal(s.code, 0);
    assert_string_equal(s.seen, "4");
    /* A proposal claiming another origin is refused. */
    uint8_t bogus[21] = {1};
    put_be(bogus + 1, 12345, 4);
    struct raw_reply r = {0};
    assert_int_equal(peer_call(cl_mesh(from->c), lid, "cl.propose", bogus, sizeof bogus, 5.0, raw_reply_cb, &r, NULL),
                     PEER_OK);
    assert_true(run_until(&f, raw_done, &r, WAIT_SECS));
    assert_int_equal(r.status, CL_OP_REFUSED);
    fx_free(&f);
}

/* ---- tests: failures ------------------------------------------------------------------------ */

static void test_minority_refuses(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    struct sub s;
    submit(&f.nodes[2], &s, "set before x");
    submit_wait(&f, &f.nodes[2], &s, WAIT_SECS);
    assert_int_equal(s.code, 0);
    node_stop(&f, 0);
    node_stop(&f, 1);
    double t0 = now_secs();
    submit(&f.nodes[2], &s, "set after y");
    submit_wait(&f, &f.nodes[2], &s, f.submit_timeout + 2.0);
    double took = now_secs() - t0;
    assert_int_equal(s.code, CL_UNAVAILABLE);
    assert_string_equal(s.text, "metadata store unavailable: no quorum (1 of 3 nodes reachable)");
    assert_true(took >= f.submit_timeout - 0.1 && took < f.submit_timeout + 1.0);
    assert_null(kv_get(&f.nodes[2].kv, "after"));
    /* Reads still work from the applied state, and the status says who is running. */
    assert_string_equal(kv_get(&f.nodes[2].kv, "before"), "x");
    struct cl_status st;
    cl_status(f.nodes[2].c, &st);
    assert_int_equal(st.n_members, 3);
    unsigned running = 0;
    for (unsigned k = 0; k < st.n_members; k++) running += st.members[k].running;
    assert_int_equal(running, 1);
    /* A majority comes back: changes go through again. */
    node_start(&f, 0);
    submit(&f.nodes[2], &s, "set after z");
    submit_wait(&f, &f.nodes[2], &s, WAIT_SECS);
    for (int k = 0; k < 20 && s.code != 0; k++) {
        submit(&f.nodes[2], &s, "set after z");
        submit_wait(&f, &f.nodes[2], &s, WAIT_SECS);
    }
    assert_int_equal(s.code, 0);
    assert_string_equal(s.seen, "z");
    fx_free(&f);
}

static void test_restart_rejoins(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    f.snapshot_threshold = 16;
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    struct sub s;
    submit(&f.nodes[1], &s, "set a 1");
    submit_wait(&f, &f.nodes[1], &s, WAIT_SECS);
    wait_kv(&f, 0x7, "a", "1");
    /* Stop node 2 (maybe the leader); the others keep a quorum and keep changing things. */
    node_stop(&f, 1);
    for (int k = 0; k < 40; k++) {
        submit(&f.nodes[k % 2 ? 2 : 0], &s, "set b%d %d", k % 4, k);
        submit_wait(&f, &f.nodes[k % 2 ? 2 : 0], &s, WAIT_SECS);
        assert_int_equal(s.code, 0);
    }
    /* It comes back with its stored state and catches up (by log or snapshot). */
    node_start(&f, 1);
    wait_formed(&f, 0x7, 3);
    wait_kv(&f, 0x7, "b3", "39");
    wait_kv(&f, 0x7, "a", "1");
    submit(&f.nodes[1], &s, "set c 3");
    submit_wait(&f, &f.nodes[1], &s, WAIT_SECS);
    assert_int_equal(s.code, 0);
    assert_string_equal(s.seen, "3");
    /* All three restart: the cluster forms again from stored state alone. */
    for (int i = 0; i < 3; i++) node_stop(&f, i);
    for (int i = 2; i >= 0; i--) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    wait_kv(&f, 0x7, "c", "3");
    fx_free(&f);
}

struct op_result {
    bool done;
    int status;
    char text[300];
};

static void op_cb(void *arg, int status, const char *text)
{
    struct op_result *r = arg;
    r->done = true;
    r->status = status;
    snprintf(r->text, sizeof r->text, "%s", text ? text : "");
}

static bool op_done(struct fx *f, void *arg)
{
    (void)f;
    return ((struct op_result *)arg)->done;
}

static struct op_result forget(struct fx *f, struct node *on, const char *name)
{
    struct op_result r = {0};
    for (int attempt = 0; attempt < 50; attempt++) {
        memset(&r, 0, sizeof r);
        assert_int_equal(cl_forget_node(on->c, name, op_cb, &r), 0);
        assert_true(run_until(f, op_done, &r, WAIT_SECS));
        if (r.status != CL_OP_RETRY) break;
        run_for(0.1);
    }
    return r;
}

static void test_forget_and_add(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    f.snapshot_threshold = 8; /* the new node gets a snapshot */
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    struct sub s;
    for (int k = 0; k < 20; k++) {
        submit(&f.nodes[k % 3], &s, "set x%d %d", k % 3, k);
        submit_wait(&f, &f.nodes[k % 3], &s, WAIT_SECS);
    }
    /* A running node is refused, from any node (forwarded to the leader). */
    struct op_result r = forget(&f, &f.nodes[0], f.nodes[2].name);
    assert_int_equal(r.status, CL_OP_REFUSED);
    assert_non_null(strstr(r.text, "must be stopped"));
    r = forget(&f, &f.nodes[0], "nobody@nowhere");
    assert_int_equal(r.status, CL_OP_REFUSED);
    assert_non_null(strstr(r.text, "not a member"));
    /* Stopped, it is forgotten. */
    node_stop(&f, 2);
    r = forget(&f, &f.nodes[1], f.nodes[2].name);
    assert_int_equal(r.status, CL_OP_OK);
    wait_formed(&f, 0x3, 2);
    submit(&f.nodes[0], &s, "set after-forget 1");
    submit_wait(&f, &f.nodes[0], &s, WAIT_SECS);
    assert_int_equal(s.code, 0);
    /* A new node (its config lists the cluster and itself) joins and gets the state. */
    node_start(&f, 3);
    wait_formed(&f, 0xb, 3);
    wait_kv(&f, 0xb, "after-forget", "1");
    wait_kv(&f, 0xb, "x2", "17");
    assert_true(f.nodes[3].kv.installs >= 1); /* it came as a snapshot */
    submit(&f.nodes[3], &s, "set from-new 4");
    submit_wait(&f, &f.nodes[3], &s, WAIT_SECS);
    assert_int_equal(s.code, 0);
    wait_kv(&f, 0xb, "from-new", "4");
    struct cl_status st;
    cl_status(f.nodes[0].c, &st);
    for (unsigned k = 0; k < st.n_members; k++) assert_string_not_equal(st.members[k].name, f.nodes[2].name);
    /* The forgotten node comes back with its old state: it knows it was removed and stays out. */
    node_start(&f, 2);
    for (double t0 = now_secs(); now_secs() - t0 < WAIT_SECS;) {
        cl_status(f.nodes[2].c, &st);
        if (strcmp(st.state, "removed") == 0) break;
        pump();
    }
    assert_string_equal(st.state, "removed");
    assert_false(cl_formed(f.nodes[2].c));
    submit(&f.nodes[2], &s, "set zombie 1");
    submit_wait(&f, &f.nodes[2], &s, WAIT_SECS);
    assert_int_equal(s.code, CL_UNAVAILABLE);
    assert_string_equal(s.text, "metadata store unavailable: this node was removed from the cluster");
    cl_status(f.nodes[0].c, &st);
    assert_int_equal(st.n_members, 3);
    for (unsigned k = 0; k < st.n_members; k++) assert_string_not_equal(st.members[k].name, f.nodes[2].name);
    fx_free(&f);
}

static void test_wrong_cookie(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    f.cookie[2] = "not-the-cookie";
    capture_start();
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x3, 2);
    run_for(1.0);
    char *text = capture_stop();
    assert_non_null(strstr(text, "failed cookie authentication"));
    free(text);
    assert_false(cl_formed(f.nodes[2].c));
    struct cl_status st;
    cl_status(f.nodes[0].c, &st);
    assert_int_equal(st.n_members, 2);
    for (unsigned k = 0; k < st.n_members; k++) assert_string_not_equal(st.members[k].name, f.nodes[2].name);
    assert_false(peer_is_up(cl_mesh(f.nodes[0].c), cl_self_id(f.nodes[2].c)));
    struct peer_stats ps;
    peer_get_stats(cl_mesh(f.nodes[0].c), &ps);
    struct peer_stats ps1;
    peer_get_stats(cl_mesh(f.nodes[1].c), &ps1);
    assert_true(ps.auth_failures + ps1.auth_failures > 0);
    fx_free(&f);
}

/* ---- tests: command-line clients ------------------------------------------------------------ */

struct raw {
    int fd;
    struct rw_buf in;
};

static void raw_send(struct raw *r, struct rw_buf *b)
{
    size_t off = 0;
    double deadline = now_secs() + WAIT_SECS;
    while (off < b->len && now_secs() < deadline) {
        ssize_t n = send(r->fd, b->data + off, b->len - off, MSG_NOSIGNAL);
        if (n > 0) off += (size_t)n;
        pump();
    }
    b->len = 0;
}

static struct rw_frame *raw_recv(struct raw *r)
{
    double deadline = now_secs() + WAIT_SECS;
    while (now_secs() < deadline) {
        uint8_t buf[65536];
        ssize_t n = recv(r->fd, buf, sizeof buf, 0);
        if (n > 0) {
            assert_true(rw_buf_reserve(&r->in, (size_t)n));
            memcpy(r->in.data + r->in.len, buf, (size_t)n);
            r->in.len += (size_t)n;
        } else if (n == 0) {
            return NULL;
        }
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
        pump();
    }
    return NULL;
}

/* Connects as a command-line client; returns false if the node's proof did not match cookie. */
static bool raw_client(struct raw *r, int port, const char *cookie)
{
    memset(r, 0, sizeof *r);
    r->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    fcntl(r->fd, F_SETFL, fcntl(r->fd, F_GETFL) | O_NONBLOCK);
    struct rw_ident me = {.version = RW_VERSION, .node_id = PEER_CLIENT_ID, .node_name = "warrenctl@test",
                          .cluster_name = "", .max_frame = 1 << 20};
    for (int i = 0; i < RW_NONCE_LEN; i++) me.nonce[i] = (uint8_t)(i * 7 + 3);
    struct rw_buf b = {0};
    assert_int_equal(rw_encode_hello(&b, &me), RW_OK);
    raw_send(r, &b);
    struct rw_frame *f = raw_recv(r);
    assert_non_null(f);
    assert_int_equal(f->type, RW_FRAME_CHALLENGE);
    uint8_t want[RW_MAC_LEN], mac[RW_MAC_LEN];
    peer_auth_mac(cookie, true, me.nonce, f->ident.nonce, PEER_CLIENT_ID, f->ident.node_id, want);
    bool ok = memcmp(want, f->mac, RW_MAC_LEN) == 0;
    peer_auth_mac(cookie, false, me.nonce, f->ident.nonce, PEER_CLIENT_ID, f->ident.node_id, mac);
    rw_frame_free(f);
    assert_int_equal(rw_encode_response(&b, mac), RW_OK);
    raw_send(r, &b);
    rw_buf_free(&b);
    return ok;
}

static struct rw_frame *raw_call(struct raw *r, uint64_t id, const char *method, const char *payload)
{
    struct rw_buf b = {0};
    struct rw_call call = {.id = id, .method = method, .payload = payload, .len = payload ? strlen(payload) : 0};
    assert_int_equal(rw_encode_call(&b, &call, 1 << 20), RW_OK);
    raw_send(r, &b);
    rw_buf_free(&b);
    struct rw_frame *f = raw_recv(r);
    assert_non_null(f);
    assert_int_equal(f->type, RW_FRAME_CALL_REPLY);
    assert_int_equal(f->reply.id, id);
    return f;
}

static void raw_close(struct raw *r)
{
    close(r->fd);
    rw_buf_free(&r->in);
}

static void test_cli_client(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    struct raw r;
    assert_true(raw_client(&r, cl_listen_port(f.nodes[1].c), COOKIE));
    struct rw_frame *rep = raw_call(&r, 1, "cl.status", NULL);
    assert_int_equal(rep->reply.status, 0);
    cJSON *st = cJSON_ParseWithLength(rep->reply.payload, rep->reply.len);
    assert_non_null(st);
    assert_string_equal(cJSON_GetObjectItem(st, "node")->valuestring, f.nodes[1].name);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItem(st, "formed")));
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(st, "running_nodes")), 3);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(st, "metadata_leader")));
    cJSON_Delete(st);
    rw_frame_free(rep);
    /* Clients may not make node-to-node calls; they are not nodes. */
    rep = raw_call(&r, 2, "cl.propose", "x");
    assert_int_equal(rep->reply.status, CL_OP_REFUSED);
    rw_frame_free(rep);
    struct peer_stats ps;
    peer_get_stats(cl_mesh(f.nodes[1].c), &ps);
    assert_int_equal(ps.clients, 1);
    assert_int_equal(ps.nodes_up, 2);
    /* forget of a running node, from a client */
    char req[200];
    snprintf(req, sizeof req, "{\"name\":\"%s\"}", f.nodes[0].name);
    rep = raw_call(&r, 3, "cl.forget", req);
    assert_int_equal(rep->reply.status, CL_OP_REFUSED);
    assert_non_null(strstr(rep->reply.error, "must be stopped"));
    rw_frame_free(rep);
    raw_close(&r);
    /* A client with the wrong cookie sees the node's proof fail, and the node refuses it. */
    capture_start();
    bool ok = raw_client(&r, cl_listen_port(f.nodes[1].c), "wrong");
    run_for(0.2);
    char *text = capture_stop();
    assert_false(ok);
    assert_non_null(strstr(text, "failed cookie authentication"));
    free(text);
    raw_close(&r);
    fx_free(&f);
}

/* ---- tests: hooks for other users of the mesh --------------------------------------------- */

struct hooks {
    peer_mesh_t *mesh;
    int calls, ups, downs;
    uint32_t last_down;
};

static void hook_call(void *ud, uint32_t from, const struct peer_call_in *in)
{
    (void)from;
    struct hooks *h = ud;
    h->calls++;
    assert_string_equal(in->method, "q.echo");
    assert_int_equal(peer_reply(h->mesh, &in->reply_to, 0, NULL, in->payload, in->len), PEER_OK);
}

static void hook_up(void *ud, uint32_t node)
{
    (void)node;
    ((struct hooks *)ud)->ups++;
}

static void hook_down(void *ud, uint32_t node)
{
    struct hooks *h = ud;
    h->downs++;
    h->last_down = node;
}

static bool hook_downed(struct fx *f, void *arg)
{
    (void)f;
    return ((struct hooks *)arg)->downs > 0;
}

static void test_hooks(void **state)
{
    (void)state;
    struct fx f;
    fx_init(&f, 3);
    for (int i = 0; i < 3; i++) node_start(&f, i);
    wait_formed(&f, 0x7, 3);
    struct hooks h = {.mesh = cl_mesh(f.nodes[0].c)};
    cl_set_call_fallback(f.nodes[0].c, hook_call, &h);
    cl_set_peer_watch(f.nodes[0].c, hook_up, hook_down, &h);
    struct raw_reply r = {0};
    assert_int_equal(peer_call(cl_mesh(f.nodes[1].c), cl_self_id(f.nodes[0].c), "q.echo", "x", 1, 5.0, raw_reply_cb,
                               &r, NULL),
                     PEER_OK);
    assert_true(run_until(&f, raw_done, &r, WAIT_SECS));
    assert_int_equal(r.status, 0);
    assert_int_equal(h.calls, 1);
    uint32_t gone = cl_self_id(f.nodes[2].c);
    assert_string_equal(cl_node_name(f.nodes[0].c, gone), f.nodes[2].name);
    assert_null(cl_node_name(f.nodes[0].c, 12345));
    node_stop(&f, 2);
    assert_true(run_until(&f, hook_downed, &h, WAIT_SECS));
    assert_int_equal(h.last_down, gone);
    assert_false(peer_is_up(cl_mesh(f.nodes[0].c), gone));
    fx_free(&f);
}

int main(void)
{
    loop = EV_DEFAULT;
    log_set_level(getenv("TEST_CLUSTER_DEBUG") ? LOG_DEBUG : LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_standalone),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_formation_orders),
        cmocka_unit_test(test_submit_from_every_node),
        cmocka_unit_test(test_dedupe),
        cmocka_unit_test(test_minority_refuses),
        cmocka_unit_test(test_restart_rejoins),
        cmocka_unit_test(test_forget_and_add),
        cmocka_unit_test(test_wrong_cookie),
        cmocka_unit_test(test_cli_client),
        cmocka_unit_test(test_hooks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
