/* cluster.c - node identity, cluster formation and the metadata Raft group (see cluster.h and
 * docs/cluster.md).
 *
 * Pieces, in the order they appear:
 *   - identity and configuration: node ids are FNV-1a hashes of node names; the configured nodes
 *     (cluster_formation) are kept in c->cfgnodes, sorted by their N (the first one founds);
 *   - local records in the store under CL_KEY_LOCAL ('C'): the boot counter (request ids never
 *     repeat across restarts), the "member" flag (this node once was a voter: absent from the
 *     configuration later means it was removed) and "founder" (the bootstrap members the founder
 *     opened the group with, which raft does not persist);
 *   - the replicated state this file keeps inside the metadata group, next to the broker's:
 *     the registry (id -> name, address of every member) and the dedupe sessions (per origin
 *     node: the requests whose outcome is kept for retries). Both are in every snapshot;
 *   - the glue: the mesh (peer.c) carries Raft batches to the host (multiraft.c) and calls;
 *   - requests: cl_meta_submit wraps the command as [CMD][origin][request id][acked below][cmd]
 *     and proposes it (leader) or forwards it ("cl.propose") to the leader, retrying until
 *     submit_timeout. The callback runs from the apply wrapper, when this node applies the entry;
 *   - formation: discovery ("cl.status" to the configured peers), founding, joining ("cl.join",
 *     served by the leader: registry entry, then ADD_VOTER), and forgetting ("cl.forget");
 *   - status and its JSON form (the CLI's cluster_status).
 *
 * Log entries of the metadata group (RAFT_ENTRY_NORMAL data), all integers big-endian:
 *   CMD    [u8 1][u32 origin][u64 request id][u64 acked_below][command bytes]
 *   MEMBER [u8 2][u32 id][u16 len][name][u16 len][host][u16 port]     registry upsert
 *   FORGET [u8 3][u32 id]                                              registry delete
 * Dedupe (Raft dissertation 6.3): per origin, results of requests >= floor are kept; acked_below
 * says that every request of the origin below it has been answered, so the floor rises to it and
 * older results are dropped. A CMD whose id has a kept result is a retry: not applied again, its
 * kept result is returned. Request ids are (boot << 32 | counter): unique across restarts.
 *
 * Invariants:
 *   - Every ops->apply of a command happens in the apply wrapper, in log order, once per entry
 *     that is not a duplicate: the state machine never sees retries.
 *   - A request is on c->reqs until its callback has run; its memory lives on while a local
 *     proposal's done callback is outstanding (local_inflight). A forwarded call is cancelled
 *     when the request completes, so a reply never reaches a freed request.
 *   - Leader-side operations (join, forget, forwarded proposals, relays) are on c->ops until they
 *     have answered; cl_free frees what is left after the host and mesh are gone.
 *   - Nothing here calls a user callback after cl_free began (c->closing).
 */
#include "broker/cluster.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/err.h>
#include <sodium.h>
#include <unistd.h>

#include "broker/log.h"
#include "broker/raftlog.h"

#define CL_TEXT_MAX 256
#define CL_CALL_TIMEOUT 5.0
#define CL_JOIN_REPEAT 1.0     /* seconds between join calls once one succeeded (promotion) */
#define CL_WAIT_LOG_EVERY 10.0 /* how often a waiting node says what it waits for */
#define CL_PROBE_AFTER 3.0     /* leaderless this long: ask a peer whether we were removed */

enum cl_state { CL_STANDALONE, CL_DISCOVER, CL_JOINING, CL_MEMBER, CL_REMOVED };
enum cl_entry_kind { E_CMD = 1, E_MEMBER = 2, E_FORGET = 3 };

static const char *const state_names[] = {"standalone", "discovering", "joining", "member", "removed"};

/* ---- byte buffers -------------------------------------------------------------------------- */

struct wbuf {
    uint8_t *p;
    size_t len, cap;
    bool oom;
};

static void w_bytes(struct wbuf *w, const void *d, size_t n)
{
    if (w->oom) return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 64;
        while (cap < w->len + n) cap *= 2;
        uint8_t *p = realloc(w->p, cap);
        if (!p) {
            w->oom = true;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    if (n) memcpy(w->p + w->len, d, n);
    w->len += n;
}

static void w_u8(struct wbuf *w, uint8_t v) { w_bytes(w, &v, 1); }
static void w_u16(struct wbuf *w, uint16_t v) { w_bytes(w, (uint8_t[]){(uint8_t)(v >> 8), (uint8_t)v}, 2); }
static void w_u32(struct wbuf *w, uint32_t v)
{
    w_bytes(w, (uint8_t[]){(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v}, 4);
}
static void w_u64(struct wbuf *w, uint64_t v)
{
    w_u32(w, (uint32_t)(v >> 32));
    w_u32(w, (uint32_t)v);
}
static void w_str(struct wbuf *w, const char *s)
{
    size_t n = strlen(s);
    w_u16(w, (uint16_t)n);
    w_bytes(w, s, n);
}

struct rbuf {
    const uint8_t *p;
    size_t left;
    bool bad;
};

static const uint8_t *r_take(struct rbuf *r, size_t n)
{
    if (r->bad || r->left < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= n;
    return p;
}

static uint8_t r_u8(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 1);
    return p ? p[0] : 0;
}
static uint16_t r_u16(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 2);
    return p ? (uint16_t)(p[0] << 8 | p[1]) : 0;
}
static uint32_t r_u32(struct rbuf *r)
{
    const uint8_t *p = r_take(r, 4);
    return p ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
}
static uint64_t r_u64(struct rbuf *r)
{
    uint64_t hi = r_u32(r);
    return hi << 32 | r_u32(r);
}
/* A u16-prefixed string into dst (NUL-terminated); longer than dstlen-1 is malformed. */
static void r_str(struct rbuf *r, char *dst, size_t dstlen)
{
    uint16_t n = r_u16(r);
    const uint8_t *p = r_take(r, n);
    if (!p || n >= dstlen) {
        r->bad = true;
        dst[0] = '\0';
        return;
    }
    memcpy(dst, p, n);
    dst[n] = '\0';
}

/* ---- objects ------------------------------------------------------------------------------- */

/* One node of cluster_formation.classic_config. */
struct cl_cfgnode {
    cl_t *c;
    uint32_t id;
    char name[CL_NAME_MAX];
    char host[64];
    int port;
    bool status_pending; /* a discovery cl.status call is outstanding */
    bool answered_fresh; /* it said it is not a member of a formed cluster */
};

/* Registry entry (replicated): a node the cluster knows, with the address to dial. */
struct cl_node {
    uint32_t id;
    char name[CL_NAME_MAX];
    char host[CL_NAME_MAX];
    int port;
};

struct cl_result {
    uint64_t req;
    int code;
    char *text; /* NULL when code is 0 */
};

/* Dedupe session of one origin node (replicated). */
struct cl_session {
    uint32_t origin;
    uint64_t floor;
    struct cl_result *res;
    size_t n, cap;
};

enum req_state { REQ_WAIT, REQ_PROPOSED, REQ_FORWARDED, REQ_COMMITTED };

/* One metadata change submitted on this node. */
struct cl_req {
    cl_t *c;
    struct cl_req *prev, *next;
    uint64_t id;
    uint8_t *entry;
    size_t len;
    cl_submit_cb cb;
    void *arg;
    ev_tstamp deadline;
    enum req_state state;
    uint64_t call_id;    /* REQ_FORWARDED: the cl.propose call */
    bool local_inflight; /* a local proposal's done callback is outstanding */
    bool finished;       /* cb has run */
    bool boot;           /* submitted by the founded hook: the founder's boot state */
};

/* Where an operation's answer goes: a peer's call or a local callback. */
struct cl_sink {
    bool local;
    struct peer_reply_to to;
    cl_op_cb cb;
    void *arg;
};

enum op_kind { OP_JOIN, OP_FORGET, OP_PROPOSE, OP_RELAY };

/* A leader-side operation in progress, or a call relayed to the leader. */
struct cl_op {
    cl_t *c;
    struct cl_op *prev, *next;
    enum op_kind kind;
    struct cl_sink sink;
    struct cl_node node; /* OP_JOIN, OP_FORGET: the node concerned */
};

struct cl {
    struct ev_loop *loop;
    store_t *store;
    struct cl_options opt;
    bool clustered;
    char self_name[CL_NAME_MAX];
    uint32_t self_id;
    char self_host[64];
    int self_port;
    char cluster_name[CL_NAME_MAX];
    struct cl_cfgnode cfgnodes[CFG_MAX_CLUSTER_NODES];
    int n_cfgnodes;
    int self_index; /* in cfgnodes; 0 = the founder */

    peer_mesh_t *mesh;
    mr_host_t *host;
    mr_group_t *g;
    struct mr_sm_ops sm;
    const struct cl_meta_ops *ops;
    void *ud;

    enum cl_state state;
    bool started;
    ev_tstamp t_start, next_wait_log, next_refusal_log;
    bool join_pending;
    ev_tstamp next_join;
    uint32_t join_hint;     /* a node that said it is a member of the cluster */
    bool join_refused_logged, join_ok_logged;
    bool member_flag;       /* stored: this node was a voter once */
    bool self_reg_pending;  /* leader: our own registry entry is being proposed */
    ev_tstamp leaderless_since; /* member without a known leader since (0: has one) */
    ev_tstamp next_probe;
    bool probe_pending;     /* asking a peer whether we are still a member */
    bool probe_dialing;     /* dial_always set for the configured nodes while leaderless */

    uint64_t boot, next_seq;
    struct cl_req *reqs, *reqs_tail;
    size_t n_reqs;
    struct cl_op *ops_list;

    struct cl_node *reg;
    size_t n_reg, cap_reg;
    struct cl_session *sess;
    size_t n_sess, cap_sess;

    ev_timer timer;
    ev_timer kick_w;
    struct rw_out *out;
    size_t out_cap;
    void (*fallback)(void *ud, uint32_t from, const struct peer_call_in *in);
    void *fallback_ud;
    void (*watch_up)(void *ud, uint32_t node), (*watch_down)(void *ud, uint32_t node);
    void *watch_ud;
    void (*admin)(void *ud, uint32_t from, const struct peer_call_in *in);
    void *admin_ud;
    void (*founded)(void *ud);
    void *founded_ud;
    /* The founder's boot state (ops->founded): commands submitted, not yet finished; whether one
     * failed (submitted again later); whether they are all applied (stored as "booted"). */
    unsigned boot_pending;
    bool boot_submitting, boot_failed, booted;
    bool closing;
};

static void reqs_kick(cl_t *c);
static void formation_step(cl_t *c);

/* ---- identity ------------------------------------------------------------------------------ */

uint32_t cl_node_id(const char *name)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h == 0 || h == PEER_CLIENT_ID ? 1 : h;
}

void cl_options_defaults(struct cl_options *o)
{
    memset(o, 0, sizeof *o);
    o->submit_timeout = 5.0;
    o->retry_interval = 0.2;
    o->discovery_window = 5.0;
    o->tick_seconds = 0.1;
    o->election_ticks = 10;
    o->heartbeat_ticks = 2;
    o->snapshot_threshold = 4096;
    o->backoff_min = 0.1;
    o->backoff_max = 5.0;
}

static void options_fill(struct cl_options *o, const struct cl_options *given, const cfg_t *cfg)
{
    struct cl_options d;
    cl_options_defaults(&d);
    *o = given ? *given : d;
#define DEF(f) if (!(o->f > 0)) o->f = d.f
    DEF(submit_timeout);
    DEF(retry_interval);
    DEF(discovery_window);
    DEF(tick_seconds);
    DEF(election_ticks);
    DEF(heartbeat_ticks);
    DEF(snapshot_threshold);
    DEF(backoff_min);
    DEF(backoff_max);
#undef DEF
    if (!(o->down_after > 0)) o->down_after = cfg->cluster_peer_timeout / 1000.0;
    if (!(o->ping_interval > 0)) o->ping_interval = o->down_after / 5;
}

static const char *node_display_name(cl_t *c, uint32_t id);

/* ---- local records ------------------------------------------------------------------------- */

static void local_key(uint8_t *key, size_t *klen, const char *what)
{
    key[0] = CL_KEY_LOCAL;
    size_t n = strlen(what);
    memcpy(key + 1, what, n);
    *klen = 1 + n;
}

static int local_get(cl_t *c, const char *what, void **val, size_t *len)
{
    uint8_t key[32];
    size_t klen;
    local_key(key, &klen, what);
    return store_get(c->store, key, klen, val, len);
}

static void local_put(cl_t *c, const char *what, const void *val, size_t len)
{
    uint8_t key[32];
    size_t klen;
    local_key(key, &klen, what);
    store_put(c->store, key, klen, val, len);
}

/* Bumps the boot counter durably (at startup, so blocking is fine): request ids of this run
 * start at boot << 32 and can never repeat those of an earlier run. The counter is also at
 * least the wall clock in seconds, so a node whose store was wiped (and which the cluster may
 * still remember by its dedupe session) does not start below its old ids either. */
static int boot_bump(cl_t *c)
{
    void *val = NULL;
    size_t len = 0;
    int rc = local_get(c, "boot", &val, &len);
    if (rc < 0) return -1;
    uint64_t boot = rc == 1 && len == 8 ? store_get_be64(val) : 0;
    free(val);
    uint64_t now = (uint64_t)time(NULL);
    c->boot = boot + 1 > now ? boot + 1 : now;
    uint8_t buf[8];
    store_put_be64(buf, c->boot);
    local_put(c, "boot", buf, sizeof buf);
    store_flush_sync(c->store);
    return 0;
}

static void member_flag_set(cl_t *c)
{
    if (c->member_flag) return;
    c->member_flag = true;
    local_put(c, "member", "1", 1);
}

/* ---- registry (replicated) ----------------------------------------------------------------- */

static struct cl_node *reg_find(cl_t *c, uint32_t id)
{
    for (size_t i = 0; i < c->n_reg; i++)
        if (c->reg[i].id == id) return &c->reg[i];
    return NULL;
}

static struct cl_node *reg_find_name(cl_t *c, const char *name)
{
    for (size_t i = 0; i < c->n_reg; i++)
        if (strcmp(c->reg[i].name, name) == 0) return &c->reg[i];
    return NULL;
}

/* Tells the mesh where a registry node is (the mesh dials it if its id is larger than ours). */
static void reg_dial(cl_t *c, const struct cl_node *n)
{
    if (n->id == c->self_id || !c->mesh || !n->host[0] || n->port <= 0) return;
    if (peer_add_node(c->mesh, n->id, n->host, n->port) != PEER_OK)
        log_warn("cluster: cannot add node %s (%s:%d) to the mesh", n->name, n->host, n->port);
}

static void reg_set(cl_t *c, const struct cl_node *n)
{
    struct cl_node *e = reg_find(c, n->id);
    if (!e) {
        if (c->n_reg == c->cap_reg) {
            size_t cap = c->cap_reg ? c->cap_reg * 2 : 8;
            struct cl_node *r = realloc(c->reg, cap * sizeof *r);
            if (!r) {
                log_error("cluster: out of memory growing the node registry");
                abort(); /* replicated state must not diverge */
            }
            c->reg = r;
            c->cap_reg = cap;
        }
        e = &c->reg[c->n_reg++];
    }
    *e = *n;
    reg_dial(c, e);
}

static void reg_del(cl_t *c, uint32_t id)
{
    struct cl_node *e = reg_find(c, id);
    if (!e) return;
    *e = c->reg[--c->n_reg];
}

/* ---- dedupe sessions (replicated) ---------------------------------------------------------- */

static struct cl_session *sess_get(cl_t *c, uint32_t origin, bool create)
{
    for (size_t i = 0; i < c->n_sess; i++)
        if (c->sess[i].origin == origin) return &c->sess[i];
    if (!create) return NULL;
    if (c->n_sess == c->cap_sess) {
        size_t cap = c->cap_sess ? c->cap_sess * 2 : 8;
        struct cl_session *s = realloc(c->sess, cap * sizeof *s);
        if (!s) {
            log_error("cluster: out of memory growing the dedupe sessions");
            abort();
        }
        c->sess = s;
        c->cap_sess = cap;
    }
    struct cl_session *s = &c->sess[c->n_sess++];
    memset(s, 0, sizeof *s);
    s->origin = origin;
    return s;
}

static void sess_clear(struct cl_session *s)
{
    for (size_t i = 0; i < s->n; i++) free(s->res[i].text);
    free(s->res);
    s->res = NULL;
    s->n = s->cap = 0;
}

static void sess_del(cl_t *c, uint32_t origin)
{
    struct cl_session *s = sess_get(c, origin, false);
    if (!s) return;
    sess_clear(s);
    *s = c->sess[--c->n_sess];
}

static void sess_free_all(cl_t *c)
{
    for (size_t i = 0; i < c->n_sess; i++) sess_clear(&c->sess[i]);
    c->n_sess = 0;
}

/* Raises the floor: results below it will never be asked for again. */
static void sess_raise_floor(struct cl_session *s, uint64_t floor)
{
    if (floor <= s->floor) return;
    s->floor = floor;
    size_t kept = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (s->res[i].req < floor) free(s->res[i].text);
        else s->res[kept++] = s->res[i];
    }
    s->n = kept;
}

static struct cl_result *sess_find(struct cl_session *s, uint64_t req)
{
    for (size_t i = s->n; i-- > 0;)
        if (s->res[i].req == req) return &s->res[i];
    return NULL;
}

static void sess_add(struct cl_session *s, uint64_t req, int code, const char *text)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        struct cl_result *r = realloc(s->res, cap * sizeof *r);
        if (!r) {
            log_error("cluster: out of memory growing a dedupe session");
            abort();
        }
        s->res = r;
        s->cap = cap;
    }
    char *t = code && text && *text ? strdup(text) : NULL;
    s->res[s->n++] = (struct cl_result){req, code, t};
}

/* ---- requests (this node's submissions) ---------------------------------------------------- */

static void req_unlink(cl_t *c, struct cl_req *r)
{
    if (r->prev) r->prev->next = r->next;
    else c->reqs = r->next;
    if (r->next) r->next->prev = r->prev;
    else c->reqs_tail = r->prev;
    r->prev = r->next = NULL;
    c->n_reqs--;
}

static void req_free(struct cl_req *r)
{
    free(r->entry);
    free(r);
}

/* ---- the founder's boot state ------------------------------------------------------------- */

/* The node that founds the cluster puts its boot state (default vhost and user, definitions)
 * into the log through the founded hook, so every node gets it from the log or a snapshot; no other
 * node applies boot state locally (cmd/warren-server.c). The node counts as formed only once
 * those commands have applied (await_startup), and remembers ("booted") that they did: a founder
 * that crashed before they committed submits them again when it restarts. */
static void boot_submit(cl_t *c)
{
    if (!c->founded || c->boot_pending || c->booted) return;
    c->boot_failed = false;
    c->boot_submitting = true;
    c->founded(c->founded_ud);
    c->boot_submitting = false;
    if (!c->boot_pending) {
        c->booted = true;
        local_put(c, "booted", "1", 1);
    }
}

static void boot_done(cl_t *c, int code)
{
    if (code == CL_UNAVAILABLE) c->boot_failed = true; /* other codes are the commands' own outcome */
    if (--c->boot_pending || c->closing) return;
    if (c->boot_failed) {
        log_warn("cluster: the boot definitions did not commit; submitting them again");
        return; /* member_step retries */
    }
    c->booted = true;
    local_put(c, "booted", "1", 1);
}

/* Runs the callback once; the memory stays while a local proposal still refers to it. */
static void req_finish(struct cl_req *r, int code, const char *text)
{
    cl_t *c = r->c;
    if (r->finished) return;
    r->finished = true;
    req_unlink(c, r);
    if (r->call_id) peer_call_cancel(c->mesh, r->call_id);
    r->call_id = 0;
    if (!c->closing) r->cb(r->arg, code, code ? (text ? text : "") : NULL);
    if (r->boot) boot_done(c, code);
    if (!r->local_inflight) req_free(r);
}

static struct cl_req *req_find(cl_t *c, uint64_t id)
{
    for (struct cl_req *r = c->reqs; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

/* The smallest request id still waiting here: every earlier one has been answered. The list is
 * in id order (appended as ids are handed out), so that is its head. */
static uint64_t reqs_acked_below(cl_t *c, uint64_t fallback)
{
    return c->reqs ? c->reqs->id : fallback;
}

static void schedule_kick(cl_t *c)
{
    if (!c->closing && !ev_is_active(&c->kick_w)) ev_timer_start(c->loop, &c->kick_w);
}

static void req_on_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct cl_req *r = arg;
    r->local_inflight = false;
    if (r->finished) {
        req_free(r);
        return;
    }
    if (status == MR_OK) {
        r->state = REQ_COMMITTED; /* applied: the apply wrapper has normally finished it */
        return;
    }
    r->state = REQ_WAIT; /* lost or outcome unknown: retry (the dedupe keeps it at most once) */
    schedule_kick(r->c);
}

static void req_on_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)payload, (void)len;
    struct cl_req *r = arg;
    r->call_id = 0;
    if (status == 0) {
        r->state = REQ_COMMITTED; /* applied on the leader: waits for our own apply */
        return;
    }
    log_debug("cluster: forwarded metadata change %llu: %s", (unsigned long long)r->id,
              error && *error ? error : peer_strerror(status));
    r->state = REQ_WAIT; /* retried by the timer, not at once: the leader may be changing */
}

static void req_kick(cl_t *c, struct cl_req *r)
{
    if (r->state != REQ_WAIT || !c->g || c->state == CL_REMOVED) return;
    raft_id leader = mr_group_leader(c->g);
    if (leader == c->self_id) {
        if (mr_propose(c->g, r->entry, r->len, req_on_done, r) == MR_OK) {
            r->state = REQ_PROPOSED;
            r->local_inflight = true;
        }
        return;
    }
    if (!leader || !peer_is_up(c->mesh, leader)) return;
    double left = r->deadline - ev_now(c->loop);
    if (left <= 0) return;
    if (peer_call(c->mesh, leader, "cl.propose", r->entry, r->len, left, req_on_reply, r, &r->call_id) == PEER_OK)
        r->state = REQ_FORWARDED;
}

static void reqs_kick(cl_t *c)
{
    for (struct cl_req *r = c->reqs; r; r = r->next) req_kick(c, r);
}

/* Something changed (a peer came up, a leader is known): make progress now, not at the next
 * timer tick. */
static void on_kick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    cl_t *c = w->data;
    formation_step(c);
    reqs_kick(c);
}

/* Why a metadata change cannot go through right now. */
static void unavailable_text(cl_t *c, char *buf, size_t len)
{
    if (c->state == CL_REMOVED) {
        snprintf(buf, len, "metadata store unavailable: this node was removed from the cluster");
        return;
    }
    if (!c->g || c->state != CL_MEMBER) {
        snprintf(buf, len, "metadata store unavailable: this node has not joined the cluster yet");
        return;
    }
    const struct raft_conf *conf = raft_get_conf(mr_group_raft(c->g));
    unsigned reachable = 0;
    for (unsigned i = 0; i < conf->n_voters; i++)
        reachable += conf->voters[i] == c->self_id || peer_is_up(c->mesh, conf->voters[i]);
    if (reachable < conf->n_voters / 2 + 1)
        snprintf(buf, len, "metadata store unavailable: no quorum (%u of %u nodes reachable)", reachable,
                 conf->n_voters);
    else
        snprintf(buf, len, "metadata store unavailable: no metadata leader elected yet (%u of %u nodes reachable)",
                 reachable, conf->n_voters);
}

static void reqs_expire(cl_t *c)
{
    ev_tstamp now = ev_now(c->loop);
    for (struct cl_req *r = c->reqs, *next; r; r = next) {
        next = r->next;
        if (now < r->deadline) continue;
        char text[CL_TEXT_MAX];
        unavailable_text(c, text, sizeof text);
        if (now >= c->next_refusal_log) { /* one line a second, not one per client */
            c->next_refusal_log = now + 1.0;
            log_warn("cluster: metadata change refused: %s", text);
        }
        req_finish(r, CL_UNAVAILABLE, text);
    }
}

/* ---- the replicated state machine (apply wrapper) ------------------------------------------ */

static void apply_cmd(cl_t *c, raft_index index, struct rbuf *rd)
{
    uint32_t origin = r_u32(rd);
    uint64_t req = r_u64(rd);
    uint64_t acked = r_u64(rd);
    if (rd->bad) {
        log_warn("cluster: malformed command at index %llu ignored", (unsigned long long)index);
        return;
    }
    struct cl_session *s = sess_get(c, origin, true);
    sess_raise_floor(s, acked);
    if (req < s->floor) return; /* a retry of something already answered */
    int code = 0;
    char text[CL_TEXT_MAX] = "";
    struct cl_result *res = sess_find(s, req);
    if (res) {
        code = res->code;
        snprintf(text, sizeof text, "%s", res->text ? res->text : "");
    } else {
        if (c->ops && c->ops->apply) c->ops->apply(c->ud, index, rd->p, rd->left, &code, text, sizeof text);
        text[sizeof text - 1] = '\0';
        sess_add(s, req, code, text);
    }
    if (origin != c->self_id) return;
    struct cl_req *r = req_find(c, req);
    if (r) req_finish(r, code, text);
}

static void apply_member(cl_t *c, struct rbuf *rd)
{
    struct cl_node n = {0};
    n.id = r_u32(rd);
    r_str(rd, n.name, sizeof n.name);
    r_str(rd, n.host, sizeof n.host);
    n.port = r_u16(rd);
    if (rd->bad || n.id == 0) {
        log_warn("cluster: malformed member entry ignored");
        return;
    }
    bool known = reg_find(c, n.id) != NULL;
    reg_set(c, &n);
    if (!known) log_info("cluster: node %s (id %u) is now known to the cluster", n.name, n.id);
}

static void apply_forget(cl_t *c, struct rbuf *rd)
{
    uint32_t id = r_u32(rd);
    if (rd->bad) return;
    log_info("cluster: node %s (id %u) was removed from the cluster", node_display_name(c, id), id);
    reg_del(c, id);
    sess_del(c, id);
    if (id != c->self_id && c->mesh) peer_remove_node(c->mesh, id);
}

static void sm_apply(mr_group_t *g, raft_index index, const struct raft_entry *e)
{
    cl_t *c = mr_group_user(g);
    struct rbuf rd = {e->data, e->len, false};
    switch (r_u8(&rd)) {
    case E_CMD: apply_cmd(c, index, &rd); break;
    case E_MEMBER: apply_member(c, &rd); break;
    case E_FORGET: apply_forget(c, &rd); break;
    default: log_warn("cluster: unknown entry kind at index %llu ignored", (unsigned long long)index); break;
    }
}

/* A snapshot replaced entries this node never applied: requests of ours among them are answered
 * from our session (their results are in it), since the apply wrapper will not see them. */
static void reqs_finish_from_snapshot(cl_t *c)
{
    struct cl_session *s = sess_get(c, c->self_id, false);
    if (!s) return;
    for (struct cl_req *r = c->reqs, *next; r; r = next) {
        next = r->next;
        struct cl_result *res = sess_find(s, r->id);
        if (res) req_finish(r, res->code, res->text);
    }
}

/* Snapshot: [u32 'WCS1'][u32 n]{u32 id, str name, str host, u16 port}
 *           [u32 n]{u32 origin, u64 floor, u32 n{u64 req, i32 code, str text}}[user bytes] */
#define CL_SNAP_MAGIC 0x57435331u

static int sm_snapshot_take(mr_group_t *g, raft_index index, void **bytes, size_t *len)
{
    cl_t *c = mr_group_user(g);
    if (c->ops && c->ops->apply && !c->ops->snapshot_take) return -1; /* the log must keep it all */
    void *user = NULL;
    size_t ulen = 0;
    if (c->ops && c->ops->snapshot_take && c->ops->snapshot_take(c->ud, index, &user, &ulen) != 0) {
        free(user);
        return -1;
    }
    struct wbuf w = {0};
    w_u32(&w, CL_SNAP_MAGIC);
    w_u32(&w, (uint32_t)c->n_reg);
    for (size_t i = 0; i < c->n_reg; i++) {
        w_u32(&w, c->reg[i].id);
        w_str(&w, c->reg[i].name);
        w_str(&w, c->reg[i].host);
        w_u16(&w, (uint16_t)c->reg[i].port);
    }
    w_u32(&w, (uint32_t)c->n_sess);
    for (size_t i = 0; i < c->n_sess; i++) {
        const struct cl_session *s = &c->sess[i];
        w_u32(&w, s->origin);
        w_u64(&w, s->floor);
        w_u32(&w, (uint32_t)s->n);
        for (size_t k = 0; k < s->n; k++) {
            w_u64(&w, s->res[k].req);
            w_u32(&w, (uint32_t)s->res[k].code);
            w_str(&w, s->res[k].text ? s->res[k].text : "");
        }
    }
    w_bytes(&w, user, ulen);
    free(user);
    if (w.oom) {
        free(w.p);
        return -1;
    }
    *bytes = w.p;
    *len = w.len;
    return 0;
}

static void sm_snapshot_install(mr_group_t *g, raft_index index, const void *bytes, size_t len)
{
    cl_t *c = mr_group_user(g);
    struct rbuf rd = {bytes, len, false};
    if (r_u32(&rd) != CL_SNAP_MAGIC) {
        log_error("cluster: metadata snapshot at index %llu is not ours: ignored", (unsigned long long)index);
        return;
    }
    c->n_reg = 0;
    sess_free_all(c);
    uint32_t n = r_u32(&rd);
    for (uint32_t i = 0; i < n && !rd.bad; i++) {
        struct cl_node node = {0};
        node.id = r_u32(&rd);
        r_str(&rd, node.name, sizeof node.name);
        r_str(&rd, node.host, sizeof node.host);
        node.port = r_u16(&rd);
        if (!rd.bad) reg_set(c, &node);
    }
    n = r_u32(&rd);
    for (uint32_t i = 0; i < n && !rd.bad; i++) {
        struct cl_session *s = sess_get(c, r_u32(&rd), true);
        s->floor = r_u64(&rd);
        uint32_t k = r_u32(&rd);
        for (uint32_t j = 0; j < k && !rd.bad; j++) {
            uint64_t req = r_u64(&rd);
            int code = (int)r_u32(&rd);
            char text[CL_TEXT_MAX];
            r_str(&rd, text, sizeof text);
            if (!rd.bad) sess_add(s, req, code, text);
        }
    }
    if (rd.bad) log_error("cluster: metadata snapshot at index %llu is truncated", (unsigned long long)index);
    if (c->ops && c->ops->snapshot_install) c->ops->snapshot_install(c->ud, index, rd.bad ? NULL : rd.p, rd.bad ? 0 : rd.left);
    reqs_finish_from_snapshot(c);
}

static void sm_role_changed(mr_group_t *g, enum raft_role role, raft_id leader)
{
    cl_t *c = mr_group_user(g);
    if (role == RAFT_LEADER) log_info("cluster: this node is now the metadata leader");
    else if (leader) log_debug("cluster: metadata leader is %s", node_display_name(c, leader));
    if (leader) schedule_kick(c); /* waiting requests and formation can proceed now */
}

/* ---- transport glue ------------------------------------------------------------------------ */

static void tr_send(void *ctx, raft_id node, const struct mr_outmsg *msgs, size_t n)
{
    cl_t *c = ctx;
    if (n > c->out_cap) {
        struct rw_out *o = realloc(c->out, n * sizeof *o);
        if (!o) return; /* Raft tolerates the loss */
        c->out = o;
        c->out_cap = n;
    }
    for (size_t i = 0; i < n; i++) c->out[i] = (struct rw_out){msgs[i].group_id, msgs[i].msg};
    peer_send_raft(c->mesh, node, c->out, n);
}

static void mesh_up(void *ud, uint32_t node)
{
    cl_t *c = ud;
    mr_host_peer_up(c->host, node);
    schedule_kick(c);
    if (c->watch_up) c->watch_up(c->watch_ud, node);
}

static void mesh_down(void *ud, uint32_t node)
{
    cl_t *c = ud;
    mr_host_peer_down(c->host, node);
    if (c->watch_down) c->watch_down(c->watch_ud, node);
}

static bool mesh_raft(void *ud, uint32_t from, struct rw_frame *batch)
{
    cl_t *c = ud;
    for (size_t i = 0; i < batch->n_raft; i++)
        mr_host_receive(c->host, from, batch->raft[i].group_id, &batch->raft[i].msg);
    return false;
}

/* ---- operations: answers ------------------------------------------------------------------- */

static struct cl_op *op_new(cl_t *c, enum op_kind kind, const struct cl_sink *sink)
{
    struct cl_op *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->c = c;
    op->kind = kind;
    op->sink = *sink;
    op->next = c->ops_list;
    if (c->ops_list) c->ops_list->prev = op;
    c->ops_list = op;
    return op;
}

static void sink_reply(cl_t *c, const struct cl_sink *s, int status, const char *text, const void *payload,
                       size_t len)
{
    if (s->local) {
        if (!c->closing && s->cb) s->cb(s->arg, status, text ? text : "");
        return;
    }
    if (c->mesh) peer_reply(c->mesh, &s->to, status, text, payload, len);
}

static void op_unlink(struct cl_op *op)
{
    cl_t *c = op->c;
    if (op->prev) op->prev->next = op->next;
    else c->ops_list = op->next;
    if (op->next) op->next->prev = op->prev;
}

/* Answers and frees op. */
static void op_finish(struct cl_op *op, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void op_finish(struct cl_op *op, int status, const char *fmt, ...)
{
    char text[CL_TEXT_MAX] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
    }
    op_unlink(op);
    sink_reply(op->c, &op->sink, status, text, NULL, 0);
    free(op);
}

static void sink_fail(cl_t *c, const struct cl_sink *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void sink_fail(cl_t *c, const struct cl_sink *s, int status, const char *fmt, ...)
{
    char text[CL_TEXT_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    sink_reply(c, s, status, text, NULL, 0);
}

/* ---- operations: relaying to the leader ---------------------------------------------------- */

static void relay_on_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    struct cl_op *op = arg;
    if (status < 0) {
        op_finish(op, CL_OP_RETRY, "metadata leader unreachable: %s", peer_strerror(status));
        return;
    }
    op_unlink(op);
    sink_reply(op->c, &op->sink, status, error, payload, len);
    free(op);
}

/* Sends a JSON request on to the leader with "relayed" set (one hop only). */
static void relay_to_leader(cl_t *c, const struct cl_sink *sink, const char *method, cJSON *req)
{
    raft_id leader = c->g ? mr_group_leader(c->g) : 0;
    if (!leader || leader == c->self_id || !peer_is_up(c->mesh, leader)) {
        sink_fail(c, sink, CL_OP_RETRY, "no metadata leader is reachable from %s", c->self_name);
        return;
    }
    cJSON_DeleteItemFromObject(req, "relayed");
    cJSON_AddBoolToObject(req, "relayed", 1);
    char *text = cJSON_PrintUnformatted(req);
    struct cl_op *op = text ? op_new(c, OP_RELAY, sink) : NULL;
    if (!op) {
        free(text);
        sink_fail(c, sink, CL_OP_RETRY, "out of memory");
        return;
    }
    int rc = peer_call(c->mesh, leader, method, text, strlen(text), CL_CALL_TIMEOUT, relay_on_reply, op, NULL);
    free(text);
    if (rc != PEER_OK) op_finish(op, CL_OP_RETRY, "metadata leader unreachable: %s", peer_strerror(rc));
}

/* ---- leader: join -------------------------------------------------------------------------- */

static void encode_member(struct wbuf *w, const struct cl_node *n)
{
    w_u8(w, E_MEMBER);
    w_u32(w, n->id);
    w_str(w, n->name);
    w_str(w, n->host);
    w_u16(w, (uint16_t)n->port);
}

static void join_on_conf(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct cl_op *op = arg;
    if (status == MR_OK) {
        log_info("cluster: node %s added to the metadata group", op->node.name);
        op_finish(op, CL_OP_OK, "added");
    } else {
        op_finish(op, CL_OP_RETRY, "membership change did not complete: %s", mr_status_name(status));
    }
}

static void join_conf(struct cl_op *op)
{
    cl_t *c = op->c;
    const struct raft_conf *conf = raft_get_conf(mr_group_raft(c->g));
    if (raft_conf_is_voter(conf, op->node.id)) {
        op_finish(op, CL_OP_OK, "already a member");
        return;
    }
    int rc = mr_conf_change(c->g, RAFT_CC_ADD_VOTER, op->node.id, join_on_conf, op);
    if (rc != MR_OK)
        op_finish(op, CL_OP_RETRY, "%s", rc == MR_EBUSY ? "another membership change is in progress" : mr_status_name(rc));
}

static void join_on_member(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct cl_op *op = arg;
    if (status != MR_OK) {
        op_finish(op, CL_OP_RETRY, "registering the node failed: %s", mr_status_name(status));
        return;
    }
    join_conf(op);
}

static void leader_join(cl_t *c, const struct cl_sink *sink, const struct cl_node *n, bool fresh)
{
    struct cl_node *known = reg_find(c, n->id);
    if (known && strcmp(known->name, n->name) != 0) {
        sink_fail(c, sink, CL_OP_REFUSED, "node %s has the same id (%u) as member %s: rename one of them", n->name,
                  n->id, known->name);
        return;
    }
    const struct raft_conf *conf = raft_get_conf(mr_group_raft(c->g));
    if (fresh && raft_conf_is_voter(conf, n->id)) {
        /* A voter whose state is gone could vote twice in a term: it must leave first. */
        sink_fail(c, sink, CL_OP_REFUSED,
                  "node %s lost its metadata state but is still a voting member: stop it, run "
                  "forget_cluster_node %s on another node, then start it again",
                  n->name, n->name);
        return;
    }
    if (!raft_conf_has(conf, n->id) && conf->n_voters + conf->n_learners >= RAFT_MAX_NODES) {
        sink_fail(c, sink, CL_OP_REFUSED, "the cluster is full (%d nodes)", RAFT_MAX_NODES);
        return;
    }
    struct cl_op *op = op_new(c, OP_JOIN, sink);
    if (!op) {
        sink_fail(c, sink, CL_OP_RETRY, "out of memory");
        return;
    }
    op->node = *n;
    if (known && strcmp(known->host, n->host) == 0 && known->port == n->port) {
        join_conf(op);
        return;
    }
    /* First every node learns the name and address (so they can dial it), then the group grows. */
    struct wbuf w = {0};
    encode_member(&w, n);
    int rc = w.oom ? MR_ENOMEM : mr_propose(c->g, w.p, w.len, join_on_member, op);
    free(w.p);
    if (rc != MR_OK) op_finish(op, CL_OP_RETRY, "cannot register the node: %s", mr_status_name(rc));
}

static bool json_get_str(const cJSON *o, const char *key, char *dst, size_t len)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsString(v) || strlen(v->valuestring) >= len) return false;
    snprintf(dst, len, "%s", v->valuestring);
    return true;
}

static bool json_get_num(const cJSON *o, const char *key, double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsNumber(v)) return false;
    *out = v->valuedouble;
    return true;
}

static void handle_join(cl_t *c, const struct cl_sink *sink, uint32_t from, const void *payload, size_t len)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    struct cl_node n = {0};
    double id = 0, port = 0;
    if (!req || !json_get_str(req, "name", n.name, sizeof n.name) || !json_get_str(req, "host", n.host, sizeof n.host) ||
        !json_get_num(req, "id", &id) || !json_get_num(req, "port", &port) || port < 1 || port > 65535) {
        sink_fail(c, sink, CL_OP_REFUSED, "malformed join request");
        cJSON_Delete(req);
        return;
    }
    n.id = (uint32_t)id;
    n.port = (int)port;
    bool relayed = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "relayed"));
    if (n.id != cl_node_id(n.name) || (!relayed && n.id != from)) {
        sink_fail(c, sink, CL_OP_REFUSED, "join request for node %s (id %u) does not match its sender", n.name, n.id);
    } else if (!c->g || c->state != CL_MEMBER) {
        sink_fail(c, sink, CL_OP_RETRY, "node %s is not a cluster member yet", c->self_name);
    } else if (mr_group_role(c->g) != RAFT_LEADER) {
        if (relayed) sink_fail(c, sink, CL_OP_RETRY, "node %s is not the metadata leader", c->self_name);
        else relay_to_leader(c, sink, "cl.join", req);
    } else {
        leader_join(c, sink, &n, cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "fresh")));
    }
    cJSON_Delete(req);
}

/* ---- leader: forget ------------------------------------------------------------------------ */

static void forget_on_entry(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct cl_op *op = arg;
    if (status == MR_OK) op_finish(op, CL_OP_OK, "node %s removed from the cluster", op->node.name);
    else op_finish(op, CL_OP_RETRY, "removal not confirmed: %s", mr_status_name(status));
}

static void forget_entry(struct cl_op *op)
{
    cl_t *c = op->c;
    struct wbuf w = {0};
    w_u8(&w, E_FORGET);
    w_u32(&w, op->node.id);
    int rc = w.oom ? MR_ENOMEM : mr_propose(c->g, w.p, w.len, forget_on_entry, op);
    free(w.p);
    if (rc != MR_OK) op_finish(op, CL_OP_RETRY, "cannot complete the removal: %s", mr_status_name(rc));
}

static void forget_on_conf(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct cl_op *op = arg;
    if (status != MR_OK) {
        op_finish(op, CL_OP_RETRY, "membership change did not complete: %s", mr_status_name(status));
        return;
    }
    log_info("cluster: node %s removed from the metadata group", op->node.name);
    forget_entry(op);
}

static void leader_forget(cl_t *c, const struct cl_sink *sink, const char *name)
{
    struct cl_node *known = reg_find_name(c, name);
    uint32_t id = known ? known->id : cl_node_id(name);
    const struct raft_conf *conf = raft_get_conf(mr_group_raft(c->g));
    bool in_conf = raft_conf_has(conf, id);
    if (!in_conf && !known) {
        sink_fail(c, sink, CL_OP_REFUSED, "node %s is not a member of the cluster", name);
        return;
    }
    if (id == c->self_id || peer_is_up(c->mesh, id)) {
        sink_fail(c, sink, CL_OP_REFUSED, "node %s is running: it must be stopped before it can be forgotten", name);
        return;
    }
    struct cl_op *op = op_new(c, OP_FORGET, sink);
    if (!op) {
        sink_fail(c, sink, CL_OP_RETRY, "out of memory");
        return;
    }
    op->node.id = id;
    snprintf(op->node.name, sizeof op->node.name, "%s", name);
    if (!in_conf) { /* an earlier forget removed it from the group but not from the registry */
        forget_entry(op);
        return;
    }
    int rc = mr_conf_change(c->g, RAFT_CC_REMOVE, id, forget_on_conf, op);
    if (rc == MR_EINVAL) op_finish(op, CL_OP_REFUSED, "node %s cannot be removed (the last voter?)", name);
    else if (rc != MR_OK)
        op_finish(op, CL_OP_RETRY, "%s", rc == MR_EBUSY ? "another membership change is in progress" : mr_status_name(rc));
}

static void handle_forget(cl_t *c, const struct cl_sink *sink, const void *payload, size_t len)
{
    cJSON *req = cJSON_ParseWithLength(payload, len);
    char name[CL_NAME_MAX];
    if (!req || !json_get_str(req, "name", name, sizeof name) || !name[0]) {
        sink_fail(c, sink, CL_OP_REFUSED, "malformed forget request");
    } else if (!c->g || c->state != CL_MEMBER) {
        sink_fail(c, sink, CL_OP_RETRY, "node %s is not a cluster member", c->self_name);
    } else if (mr_group_role(c->g) != RAFT_LEADER) {
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "relayed")))
            sink_fail(c, sink, CL_OP_RETRY, "node %s is not the metadata leader", c->self_name);
        else relay_to_leader(c, sink, "cl.forget", req);
    } else {
        leader_forget(c, sink, name);
    }
    cJSON_Delete(req);
}

/* ---- leader: forwarded proposals ----------------------------------------------------------- */

static void propose_on_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index;
    struct cl_op *op = arg;
    if (status == MR_OK) op_finish(op, CL_OP_OK, NULL);
    else op_finish(op, CL_OP_RETRY, "%s", mr_status_name(status));
}

static void handle_propose(cl_t *c, const struct cl_sink *sink, uint32_t from, const void *payload, size_t len)
{
    struct rbuf rd = {payload, len, false};
    uint8_t kind = r_u8(&rd);
    uint32_t origin = r_u32(&rd);
    if (rd.bad || kind != E_CMD || origin != from) {
        sink_fail(c, sink, CL_OP_REFUSED, "malformed proposal");
        return;
    }
    if (!c->g || mr_group_role(c->g) != RAFT_LEADER) {
        sink_fail(c, sink, CL_OP_RETRY, "node %s is not the metadata leader", c->self_name);
        return;
    }
    struct cl_op *op = op_new(c, OP_PROPOSE, sink);
    if (!op) {
        sink_fail(c, sink, CL_OP_RETRY, "out of memory");
        return;
    }
    int rc = mr_propose(c->g, payload, len, propose_on_done, op);
    if (rc != MR_OK) op_finish(op, CL_OP_RETRY, "%s", mr_status_name(rc));
}

/* ---- calls --------------------------------------------------------------------------------- */

static void handle_status(cl_t *c, const struct cl_sink *sink)
{
    char *json = cl_status_json(c);
    if (!json) {
        sink_fail(c, sink, CL_OP_RETRY, "out of memory");
        return;
    }
    sink_reply(c, sink, CL_OP_OK, NULL, json, strlen(json));
    free(json);
}

static void mesh_call(void *ud, uint32_t from, const struct peer_call_in *in)
{
    cl_t *c = ud;
    struct cl_sink sink = {.local = false, .to = in->reply_to};
    if (strncmp(in->method, "cl.", 3) != 0 && strncmp(in->method, "admin.", 6) != 0) {
        if (c->fallback) c->fallback(c->fallback_ud, from, in);
        else sink_fail(c, &sink, CL_OP_REFUSED, "unknown method %s", in->method);
        return;
    }
    if (strncmp(in->method, "admin.", 6) == 0) {
        /* warrenctl's admin commands (broker/admin.c), from clients and nodes alike */
        if (c->admin) c->admin(c->admin_ud, from, in);
        else sink_fail(c, &sink, CL_OP_REFUSED, "this node serves no admin commands");
        return;
    }
    if (strcmp(in->method, "cl.status") == 0) handle_status(c, &sink);
    else if (strcmp(in->method, "cl.forget") == 0) handle_forget(c, &sink, in->payload, in->len);
    else if (from == PEER_CLIENT_ID) sink_fail(c, &sink, CL_OP_REFUSED, "%s is not for command-line clients", in->method);
    else if (strcmp(in->method, "cl.join") == 0) handle_join(c, &sink, from, in->payload, in->len);
    else if (strcmp(in->method, "cl.propose") == 0) handle_propose(c, &sink, from, in->payload, in->len);
    else sink_fail(c, &sink, CL_OP_REFUSED, "unknown method %s", in->method);
}

/* ---- formation ----------------------------------------------------------------------------- */

static bool self_is_voter(cl_t *c)
{
    return c->g && raft_conf_is_voter(raft_get_conf(mr_group_raft(c->g)), c->self_id);
}

static void set_dial_always(cl_t *c, bool always)
{
    for (int i = 0; i < c->n_cfgnodes; i++)
        if (i != c->self_index) peer_set_dial_always(c->mesh, c->cfgnodes[i].id, always);
}

static int group_open(cl_t *c, const raft_id *members, unsigned n, char *err, size_t errlen)
{
    int rc;
    c->g = mr_group_open(c->host, CL_META_GROUP, members, n, &c->sm, c, &rc);
    if (!c->g) {
        snprintf(err, errlen, "cluster: cannot open the metadata group: %s", mr_status_name(rc));
        return -1;
    }
    return 0;
}

static void become_member(cl_t *c)
{
    c->state = CL_MEMBER;
    member_flag_set(c);
    set_dial_always(c, false);
    log_info("cluster: node %s is a member of the cluster (%u voters)", c->self_name,
             raft_get_conf(mr_group_raft(c->g))->n_voters);
    schedule_kick(c);
}

/* No cluster exists and this is the first configured node: found it, alone. */
static void found_cluster(cl_t *c)
{
    char err[256];
    raft_id self = c->self_id;
    uint8_t buf[4] = {(uint8_t)(self >> 24), (uint8_t)(self >> 16), (uint8_t)(self >> 8), (uint8_t)self};
    local_put(c, "founder", buf, sizeof buf); /* raft does not persist bootstrap members */
    if (group_open(c, &self, 1, err, sizeof err) != 0) {
        log_error("%s", err);
        return;
    }
    log_info("cluster: no existing cluster found: node %s founds cluster '%s'", c->self_name, c->cluster_name);
    become_member(c);
    boot_submit(c);
}

static void start_joining(cl_t *c, uint32_t hint)
{
    char err[256];
    if (!c->g && group_open(c, NULL, 0, err, sizeof err) != 0) {
        log_error("%s", err);
        return;
    }
    c->state = CL_JOINING;
    c->join_hint = hint;
    c->next_join = 0;
    log_info("cluster: joining the cluster through node %s", node_display_name(c, hint));
    formation_step(c);
}

static void disc_on_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    struct cl_cfgnode *n = arg;
    cl_t *c = n->c;
    n->status_pending = false;
    if (status != 0 || c->state != CL_DISCOVER) return;
    cJSON *st = cJSON_ParseWithLength(payload, len);
    const cJSON *state = st ? cJSON_GetObjectItemCaseSensitive(st, "state") : NULL;
    bool member = cJSON_IsString(state) && strcmp(state->valuestring, "member") == 0;
    cJSON_Delete(st);
    if (member) start_joining(c, n->id);
    else n->answered_fresh = true;
}

static void discovery_step(cl_t *c)
{
    ev_tstamp now = ev_now(c->loop);
    bool all_fresh = true;
    for (int i = 0; i < c->n_cfgnodes; i++) {
        struct cl_cfgnode *n = &c->cfgnodes[i];
        if (i == c->self_index) continue;
        if (!n->answered_fresh) all_fresh = false;
        if (n->status_pending || !peer_is_up(c->mesh, n->id)) continue;
        if (peer_call(c->mesh, n->id, "cl.status", NULL, 0, CL_CALL_TIMEOUT, disc_on_reply, n, NULL) == PEER_OK)
            n->status_pending = true;
    }
    if (c->self_index == 0 && (all_fresh || now - c->t_start >= c->opt.discovery_window)) {
        found_cluster(c);
        return;
    }
    if (now >= c->next_wait_log) {
        c->next_wait_log = now + CL_WAIT_LOG_EVERY;
        if (c->self_index == 0)
            log_info("cluster: looking for an existing cluster before founding one (%.0f s at most)",
                     c->opt.discovery_window);
        else
            log_info("cluster: waiting for a cluster to join (node %s founds it if none exists)", c->cfgnodes[0].name);
    }
}

static void join_on_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)payload, (void)len;
    cl_t *c = arg;
    c->join_pending = false;
    ev_tstamp now = ev_now(c->loop);
    if (status == CL_OP_OK) {
        if (!c->join_ok_logged) log_info("cluster: join accepted; catching up before promotion to voter");
        c->join_ok_logged = true;
        c->next_join = now + CL_JOIN_REPEAT;
    } else if (status == CL_OP_REFUSED) {
        if (!c->join_refused_logged) log_error("cluster: join refused: %s", error && *error ? error : "?");
        c->join_refused_logged = true;
        c->next_join = now + 5.0;
    } else {
        log_debug("cluster: join not done yet: %s", error && *error ? error : peer_strerror(status));
        c->next_join = now + c->opt.retry_interval;
    }
}

/* A node to send cl.join to: our group's leader if known, the node that said it is a member,
 * else any reachable configured or registered node (it relays to its leader). */
static uint32_t join_target(cl_t *c)
{
    raft_id leader = mr_group_leader(c->g);
    if (leader && leader != c->self_id && peer_is_up(c->mesh, leader)) return leader;
    if (c->join_hint && peer_is_up(c->mesh, c->join_hint)) return c->join_hint;
    for (int i = 0; i < c->n_cfgnodes; i++)
        if (i != c->self_index && peer_is_up(c->mesh, c->cfgnodes[i].id)) return c->cfgnodes[i].id;
    for (size_t i = 0; i < c->n_reg; i++)
        if (c->reg[i].id != c->self_id && peer_is_up(c->mesh, c->reg[i].id)) return c->reg[i].id;
    return 0;
}

static void join_step(cl_t *c)
{
    if (self_is_voter(c)) {
        become_member(c);
        return;
    }
    ev_tstamp now = ev_now(c->loop);
    if (c->join_pending || now < c->next_join) return;
    uint32_t to = join_target(c);
    if (!to) {
        if (now >= c->next_wait_log) {
            c->next_wait_log = now + CL_WAIT_LOG_EVERY;
            log_info("cluster: waiting for a cluster member to be reachable to join");
        }
        return;
    }
    cJSON *req = cJSON_CreateObject();
    cJSON_AddNumberToObject(req, "id", c->self_id);
    cJSON_AddStringToObject(req, "name", c->self_name);
    cJSON_AddStringToObject(req, "host", c->self_host);
    cJSON_AddNumberToObject(req, "port", c->self_port);
    /* No log at all: a voter that says so has lost its state (see leader_join). */
    cJSON_AddBoolToObject(req, "fresh", raft_last_index(mr_group_raft(c->g)) == 0);
    char *text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (text && peer_call(c->mesh, to, "cl.join", text, strlen(text), CL_CALL_TIMEOUT, join_on_reply, c, NULL) == PEER_OK)
        c->join_pending = true;
    free(text);
}

static void self_reg_on_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g, (void)index, (void)status;
    cl_t *c = arg;
    c->self_reg_pending = false;
}

/* The leader makes sure the registry names it with its current address (the founder is in
 * the group before anything could register it; a node may also move to another address). */
static void leader_duties(cl_t *c)
{
    if (!c->g || mr_group_role(c->g) != RAFT_LEADER || c->self_reg_pending) return;
    struct cl_node *me = reg_find(c, c->self_id);
    if (me && strcmp(me->host, c->self_host) == 0 && me->port == c->self_port) return;
    struct cl_node n = {.id = c->self_id, .port = c->self_port};
    snprintf(n.name, sizeof n.name, "%s", c->self_name);
    snprintf(n.host, sizeof n.host, "%s", c->self_host);
    struct wbuf w = {0};
    encode_member(&w, &n);
    if (!w.oom && mr_propose(c->g, w.p, w.len, self_reg_on_done, c) == MR_OK) c->self_reg_pending = true;
    free(w.p);
}

static void become_removed(cl_t *c)
{
    c->state = CL_REMOVED;
    log_error("cluster: node %s is no longer a member of the cluster (forgotten); delete its data "
              "directory to add it again",
              c->self_name);
}

/* A peer's status: if it is in a formed cluster that does not list us, we were forgotten while
 * stopped (the removal never reached our log, so only the others can tell us). */
static void probe_on_reply(void *arg, int status, const char *error, const void *payload, size_t len)
{
    (void)error;
    cl_t *c = arg;
    c->probe_pending = false;
    if (status != 0 || c->state != CL_MEMBER) return;
    cJSON *st = cJSON_ParseWithLength(payload, len);
    const cJSON *state = st ? cJSON_GetObjectItemCaseSensitive(st, "state") : NULL;
    bool listed = false, formed = st && cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(st, "formed"));
    const cJSON *nodes = st ? cJSON_GetObjectItemCaseSensitive(st, "nodes") : NULL, *n;
    cJSON_ArrayForEach(n, nodes)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(n, "id");
        listed |= cJSON_IsNumber(id) && (uint32_t)id->valuedouble == c->self_id;
    }
    bool member = cJSON_IsString(state) && strcmp(state->valuestring, "member") == 0;
    cJSON_Delete(st);
    if (member && formed && !listed) become_removed(c);
}

static void probe_membership(cl_t *c)
{
    ev_tstamp now = ev_now(c->loop);
    if (mr_group_leader(c->g)) {
        if (c->leaderless_since && c->probe_dialing) set_dial_always(c, false);
        c->probe_dialing = false;
        c->leaderless_since = 0;
        return;
    }
    if (!c->leaderless_since) c->leaderless_since = now;
    if (now - c->leaderless_since < CL_PROBE_AFTER || c->probe_pending || now < c->next_probe) return;
    c->next_probe = now + CL_PROBE_AFTER;
    if (!c->probe_dialing) { /* nodes that forgot us no longer dial us: reach out ourselves */
        c->probe_dialing = true;
        set_dial_always(c, true);
    }
    uint32_t to = 0;
    for (int i = 0; i < c->n_cfgnodes && !to; i++)
        if (i != c->self_index && peer_is_up(c->mesh, c->cfgnodes[i].id)) to = c->cfgnodes[i].id;
    for (size_t i = 0; i < c->n_reg && !to; i++)
        if (c->reg[i].id != c->self_id && peer_is_up(c->mesh, c->reg[i].id)) to = c->reg[i].id;
    if (to && peer_call(c->mesh, to, "cl.status", NULL, 0, CL_CALL_TIMEOUT, probe_on_reply, c, NULL) == PEER_OK)
        c->probe_pending = true;
}

static void member_step(cl_t *c)
{
    if (!raft_conf_has(raft_get_conf(mr_group_raft(c->g)), c->self_id)) {
        become_removed(c);
        return;
    }
    if (!c->member_flag && self_is_voter(c)) member_flag_set(c);
    if (c->boot_failed && !c->boot_pending) boot_submit(c);
    leader_duties(c);
    probe_membership(c);
}

static void formation_step(cl_t *c)
{
    switch (c->state) {
    case CL_DISCOVER: discovery_step(c); break;
    case CL_JOINING: join_step(c); break;
    case CL_MEMBER: member_step(c); break;
    default: break;
    }
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    cl_t *c = w->data;
    formation_step(c);
    reqs_expire(c);
    reqs_kick(c);
}

/* ---- names --------------------------------------------------------------------------------- */

const char *cl_node_name(cl_t *c, uint32_t id)
{
    if (id == c->self_id) return c->self_name;
    const struct cl_node *r = reg_find(c, id);
    if (r) return r->name;
    for (int i = 0; i < c->n_cfgnodes; i++)
        if (c->cfgnodes[i].id == id) return c->cfgnodes[i].name;
    return c->mesh ? peer_node_name(c->mesh, id) : NULL;
}

static const char *node_display_name(cl_t *c, uint32_t id)
{
    const char *n = cl_node_name(c, id);
    return n ? n : "(unknown node)";
}

/* ---- life cycle ---------------------------------------------------------------------------- */

static int read_cookie(const cfg_t *cfg, char *out, size_t outlen, char *err, size_t errlen)
{
    if (cfg->cluster_cookie[0]) {
        snprintf(out, outlen, "%s", cfg->cluster_cookie);
        return 0;
    }
    if (!cfg->cluster_cookie_file[0]) {
        snprintf(err, errlen, "cluster: clustering needs a shared secret: set cluster.cookie or cluster.cookie_file");
        return -1;
    }
    FILE *f = fopen(cfg->cluster_cookie_file, "r");
    if (!f) {
        snprintf(err, errlen, "cluster: cannot read cluster.cookie_file %s", cfg->cluster_cookie_file);
        return -1;
    }
    size_t n = fread(out, 1, outlen - 1, f);
    fclose(f);
    out[n] = '\0';
    char *s = out;
    while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r') s++;
    memmove(out, s, strlen(s) + 1);
    n = strlen(out);
    while (n && (out[n - 1] == ' ' || out[n - 1] == '\t' || out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = '\0';
    if (!out[0]) {
        snprintf(err, errlen, "cluster: cluster.cookie_file %s is empty", cfg->cluster_cookie_file);
        return -1;
    }
    return 0;
}

/* Fills the configured nodes and finds this one among them. */
static int config_nodes(cl_t *c, const cfg_t *cfg, char *err, size_t errlen)
{
    c->self_index = -1;
    c->n_cfgnodes = cfg->n_cluster_nodes;
    for (int i = 0; i < cfg->n_cluster_nodes; i++) {
        struct cl_cfgnode *n = &c->cfgnodes[i];
        n->c = c;
        n->id = cl_node_id(cfg->cluster_nodes[i].name);
        snprintf(n->name, sizeof n->name, "%s", cfg->cluster_nodes[i].name);
        snprintf(n->host, sizeof n->host, "%s", cfg->cluster_nodes[i].host);
        n->port = cfg->cluster_nodes[i].port ? cfg->cluster_nodes[i].port : cfg->cluster_listener.port;
        if (strcmp(n->name, cfg->node_name) == 0) c->self_index = i;
        for (int j = 0; j < i; j++)
            if (c->cfgnodes[j].id == n->id) {
                snprintf(err, errlen, "cluster: node names %s and %s map to the same node id %u: rename one",
                         c->cfgnodes[j].name, n->name, n->id);
                return -1;
            }
    }
    if (c->self_index < 0) {
        size_t off = (size_t)snprintf(err, errlen, "cluster: node_name '%s' is not one of the "
                                      "cluster_formation.classic_config.nodes (", cfg->node_name);
        for (int i = 0; i < c->n_cfgnodes && off < errlen; i++)
            off += (size_t)snprintf(err + off, errlen - off, "%s%s", i ? ", " : "", c->cfgnodes[i].name);
        if (off < errlen) snprintf(err + off, errlen - off, ")");
        return -1;
    }
    const struct cl_cfgnode *me = &c->cfgnodes[c->self_index];
    snprintf(c->self_host, sizeof c->self_host, "%s", me->host);
    c->self_port = cfg->cluster_nodes[c->self_index].port ? me->port : cfg->cluster_listener.port;
    return 0;
}

/* ---- inter-node TLS (cluster.ssl keys) ---------------------------------------------------- */

static SSL_CTX *tls_fail(SSL_CTX *ctx, char *err, size_t errlen, const char *what, const char *path)
{
    unsigned long e = ERR_get_error();
    char why[256] = "";
    if (e) ERR_error_string_n(e, why, sizeof why);
    ERR_clear_error();
    snprintf(err, errlen, "cluster: %s %s%s%s", what, path ? path : "", why[0] ? ": " : "", why);
    SSL_CTX_free(ctx);
    return NULL;
}

/* One side's context: every node presents its certificate as server and as client (so peers that
 * verify_peer see one both ways); verify_peer checks the other side against cacertfile, and the
 * dialing side also checks the dialed host name or address (peer.c). The cookie handshake runs
 * inside TLS and still proves membership; TLS adds confidentiality and certificate checks. */
static SSL_CTX *tls_ctx(const cfg_t *cfg, bool server, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!ctx) return tls_fail(NULL, err, errlen, "cannot create a TLS context", NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (cfg->cluster_ssl_certfile[0] && SSL_CTX_use_certificate_chain_file(ctx, cfg->cluster_ssl_certfile) != 1)
        return tls_fail(ctx, err, errlen, "cannot load cluster.ssl_options.certfile", cfg->cluster_ssl_certfile);
    if (cfg->cluster_ssl_keyfile[0] &&
        SSL_CTX_use_PrivateKey_file(ctx, cfg->cluster_ssl_keyfile, SSL_FILETYPE_PEM) != 1)
        return tls_fail(ctx, err, errlen, "cannot load cluster.ssl_options.keyfile", cfg->cluster_ssl_keyfile);
    if (cfg->cluster_ssl_certfile[0] && SSL_CTX_check_private_key(ctx) != 1)
        return tls_fail(ctx, err, errlen, "cluster.ssl_options.keyfile does not match the certificate", NULL);
    if (cfg->cluster_ssl_cacertfile[0] && SSL_CTX_load_verify_locations(ctx, cfg->cluster_ssl_cacertfile, NULL) != 1)
        return tls_fail(ctx, err, errlen, "cannot load cluster.ssl_options.cacertfile", cfg->cluster_ssl_cacertfile);
    int mode = SSL_VERIFY_NONE;
    if (cfg->cluster_ssl_verify_peer) {
        mode = SSL_VERIFY_PEER;
        if (server && cfg->cluster_ssl_fail_if_no_peer_cert) mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
    }
    SSL_CTX_set_verify(ctx, mode, NULL);
    return ctx;
}

/* Fills o's TLS contexts from the cluster.ssl keys unless the caller gave its own (tests).
 * *made says whether they are ours to release once the mesh holds its references. */
static int tls_from_config(struct cl_options *o, const cfg_t *cfg, bool *made, char *err, size_t errlen)
{
    *made = false;
    if (!cfg->cluster_ssl || o->tls_server || o->tls_client) return 0;
    if (!cfg->cluster_ssl_certfile[0] || !cfg->cluster_ssl_keyfile[0]) {
        snprintf(err, errlen, "cluster: cluster.ssl = true needs cluster.ssl_options.certfile and keyfile");
        return -1;
    }
    o->tls_server = tls_ctx(cfg, true, err, errlen);
    o->tls_client = o->tls_server ? tls_ctx(cfg, false, err, errlen) : NULL;
    if (!o->tls_client) {
        SSL_CTX_free(o->tls_server);
        o->tls_server = NULL;
        return -1;
    }
    *made = true;
    return 0;
}

static void tls_release(struct cl_options *o, bool made)
{
    if (!made) return;
    SSL_CTX_free(o->tls_server);
    SSL_CTX_free(o->tls_client);
    o->tls_server = o->tls_client = NULL;
}

static int mesh_start(cl_t *c, const cfg_t *cfg, char *err, size_t errlen)
{
    char cookie[256];
    if (read_cookie(cfg, cookie, sizeof cookie, err, errlen) != 0) return -1;
    bool tls_made;
    if (tls_from_config(&c->opt, cfg, &tls_made, err, errlen) != 0) return -1;
    struct peer_config pc;
    peer_config_defaults(&pc);
    pc.node_id = c->self_id;
    pc.node_name = c->self_name;
    pc.cluster_name = c->cluster_name;
    pc.cookie = cookie;
    pc.listen_host = cfg->cluster_listener.host;
    pc.listen_port = c->opt.listen_port > 0 ? c->opt.listen_port : c->self_port;
    pc.ping_interval = c->opt.ping_interval;
    pc.down_after = c->opt.down_after;
    pc.backoff_min = c->opt.backoff_min;
    pc.backoff_max = c->opt.backoff_max;
    pc.tls_server = c->opt.tls_server;
    pc.tls_client = c->opt.tls_client;
    pc.cb = (struct peer_callbacks){.up = mesh_up, .down = mesh_down, .raft = mesh_raft, .call = mesh_call};
    pc.ud = c;
    c->mesh = peer_mesh_new(c->loop, &pc, err, errlen);
    memset(cookie, 0, sizeof cookie);
    tls_release(&c->opt, tls_made); /* the mesh holds its own references */
    if (!c->mesh) return -1;
    if (cfg->cluster_ssl) log_info("cluster: inter-node connections use TLS");
    if (c->opt.listen_port > 0) c->self_port = c->opt.listen_port;
    for (int i = 0; i < c->n_cfgnodes; i++)
        if (i != c->self_index) peer_add_node(c->mesh, c->cfgnodes[i].id, c->cfgnodes[i].host, c->cfgnodes[i].port);
    return 0;
}

static int host_start(cl_t *c, char *err, size_t errlen)
{
    struct mr_host_config hc = {
        .node_id = c->self_id,
        .tick_seconds = c->opt.tick_seconds,
        .election_ticks = c->opt.election_ticks,
        .heartbeat_ticks = c->opt.heartbeat_ticks,
        .snapshot_threshold = c->opt.snapshot_threshold,
        .trailing = c->opt.snapshot_threshold / 4 < 1024 ? c->opt.snapshot_threshold / 4 : 1024,
    };
    struct mr_transport tr = {.send = tr_send, .ctx = c};
    c->host = mr_host_new(c->loop, c->store, &hc, &tr);
    if (!c->host) {
        snprintf(err, errlen, "cluster: cannot create the Raft host (bad timing options?)");
        return -1;
    }
    return 0;
}

cl_t *cl_new(struct ev_loop *loop, const cfg_t *cfg, store_t *store, const struct cl_options *opt, char *err,
             size_t errlen)
{
    cl_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "cluster: out of memory");
        return NULL;
    }
    c->loop = loop;
    c->store = store;
    options_fill(&c->opt, opt, cfg);
    snprintf(c->self_name, sizeof c->self_name, "%s", cfg->node_name);
    snprintf(c->cluster_name, sizeof c->cluster_name, "%s", cfg->cluster_name);
    c->self_id = cl_node_id(c->self_name);
    c->clustered = cfg->n_cluster_nodes > 0;
    c->state = CL_STANDALONE;
    if (!c->clustered) return c;
    ev_timer_init(&c->timer, on_timer, c->opt.retry_interval, c->opt.retry_interval);
    c->timer.data = c;
    ev_timer_init(&c->kick_w, on_kick, 0, 0);
    c->kick_w.data = c;
    c->sm = (struct mr_sm_ops){.apply = sm_apply, .snapshot_take = sm_snapshot_take,
                               .snapshot_install = sm_snapshot_install, .role_changed = sm_role_changed};
    if (config_nodes(c, cfg, err, errlen) != 0 || boot_bump(c) != 0 || host_start(c, err, errlen) != 0 ||
        mesh_start(c, cfg, err, errlen) != 0) {
        if (!err[0]) snprintf(err, errlen, "cluster: cannot read this node's records from the store");
        cl_free(c);
        return NULL;
    }
    log_info("cluster: node %s (id %u) of cluster '%s', %d configured nodes, cluster port %d", c->self_name,
             c->self_id, c->cluster_name, c->n_cfgnodes, peer_listen_port(c->mesh));
    return c;
}

/* ---- the control listener of a single node -------------------------------------------------- */

/* A single node's cookie when none is configured: generated once into the data directory. */
static int control_cookie(const cfg_t *cfg, char *out, size_t outlen, char *err, size_t errlen)
{
    if (cfg->cluster_cookie[0] || cfg->cluster_cookie_file[0]) return read_cookie(cfg, out, outlen, err, errlen);
    char path[sizeof cfg->cluster_cookie_file];
    snprintf(path, sizeof path, "%.480s/.warren.cookie", cfg->data_dir);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        uint8_t rnd[24];
        char text[64];
        randombytes_buf(rnd, sizeof rnd);
        sodium_bin2base64(text, sizeof text, rnd, sizeof rnd, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        size_t n = strlen(text);
        bool ok = write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
        close(fd);
        if (!ok) {
            unlink(path);
            snprintf(err, errlen, "cluster: cannot write %s: %s", path, strerror(errno));
            return -1;
        }
        log_info("cluster: generated the cookie for warrenctl in %s", path);
    } else if (errno != EEXIST) {
        snprintf(err, errlen, "cluster: cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    cfg_t tmp;
    memset(&tmp, 0, sizeof tmp);
    snprintf(tmp.cluster_cookie_file, sizeof tmp.cluster_cookie_file, "%s", path);
    return read_cookie(&tmp, out, outlen, err, errlen);
}

/* Calls on the control listener: only command-line clients, only status and admin commands. */
static void control_call(void *ud, uint32_t from, const struct peer_call_in *in)
{
    cl_t *c = ud;
    struct cl_sink sink = {.local = false, .to = in->reply_to};
    if (from != PEER_CLIENT_ID) sink_fail(c, &sink, CL_OP_REFUSED, "node %s is not clustered", c->self_name);
    else if (strcmp(in->method, "cl.status") == 0 || strncmp(in->method, "admin.", 6) == 0) mesh_call(ud, from, in);
    else sink_fail(c, &sink, CL_OP_REFUSED, "%s: node %s is not clustered", in->method, c->self_name);
}

int cl_control_listen(cl_t *c, const cfg_t *cfg, char *err, size_t errlen)
{
    if (c->clustered || c->mesh) return 0;
    char cookie[256];
    if (control_cookie(cfg, cookie, sizeof cookie, err, errlen) != 0) return -1;
    bool tls_made;
    if (tls_from_config(&c->opt, cfg, &tls_made, err, errlen) != 0) return -1;
    struct peer_config pc;
    peer_config_defaults(&pc);
    pc.node_id = c->self_id;
    pc.node_name = c->self_name;
    pc.cluster_name = c->cluster_name;
    pc.cookie = cookie;
    pc.listen_host = "127.0.0.1"; /* a single node's admin port is for local tools only */
    pc.listen_port = c->opt.listen_port > 0 ? c->opt.listen_port : cfg->cluster_listener.port;
    pc.tls_server = c->opt.tls_server;
    pc.tls_client = c->opt.tls_client;
    pc.cb = (struct peer_callbacks){.call = control_call};
    pc.ud = c;
    c->mesh = peer_mesh_new(c->loop, &pc, err, errlen);
    memset(cookie, 0, sizeof cookie);
    tls_release(&c->opt, tls_made);
    if (!c->mesh) return -1;
    log_info("cluster: not clustered; warrenctl control port 127.0.0.1:%d", peer_listen_port(c->mesh));
    return 0;
}

/* The founder's bootstrap members, if this node founded the cluster. */
static unsigned founder_members(cl_t *c, raft_id *members)
{
    void *val = NULL;
    size_t len = 0;
    unsigned n = 0;
    if (local_get(c, "founder", &val, &len) == 1)
        for (size_t off = 0; off + 4 <= len && n < RAFT_MAX_NODES; off += 4) {
            const uint8_t *p = (const uint8_t *)val + off;
            members[n++] = (raft_id)p[0] << 24 | (raft_id)p[1] << 16 | (raft_id)p[2] << 8 | p[3];
        }
    free(val);
    return n;
}

int cl_start(cl_t *c, const struct cl_meta_ops *ops, void *ud, char *err, size_t errlen)
{
    c->ops = ops;
    c->ud = ud;
    if (!c->clustered || c->started) return 0;
    c->started = true;
    c->t_start = ev_now(c->loop);
    void *val = NULL;
    size_t len = 0;
    c->member_flag = local_get(c, "member", &val, &len) == 1;
    free(val);
    uint64_t *gids = NULL;
    size_t n_gids = 0;
    if (mr_host_stored_groups(c->host, &gids, &n_gids) != 0) {
        snprintf(err, errlen, "cluster: cannot list the stored Raft groups");
        return -1;
    }
    bool stored = false;
    for (size_t i = 0; i < n_gids; i++) stored |= gids[i] == CL_META_GROUP;
    free(gids);
    raft_id members[RAFT_MAX_NODES];
    unsigned n_members = founder_members(c, members);
    c->booted = local_get(c, "booted", &val, &len) == 1;
    free(val);
    val = NULL;
    ev_timer_start(c->loop, &c->timer);
    if (!stored && n_members == 0) {
        c->state = CL_DISCOVER;
        set_dial_always(c, true);
        log_info("cluster: fresh node: asking the configured nodes whether a cluster exists");
        return 0;
    }
    if (group_open(c, members, n_members, err, errlen) != 0) return -1;
    const struct raft_conf *conf = raft_get_conf(mr_group_raft(c->g));
    if (raft_conf_has(conf, c->self_id) && (c->member_flag || raft_conf_is_voter(conf, c->self_id))) {
        log_info("cluster: rejoining the cluster with stored metadata state (%u voters)", conf->n_voters);
        become_member(c);
        if (n_members) boot_submit(c); /* the founder, if its boot state never committed */
    } else if (c->member_flag) {
        become_removed(c);
    } else {
        c->state = CL_JOINING; /* an interrupted join, or a learner not yet promoted */
        set_dial_always(c, true);
        log_info("cluster: resuming an interrupted join");
    }
    return 0;
}

void cl_free(cl_t *c)
{
    if (!c) return;
    c->closing = true;
    if (c->clustered) {
        ev_timer_stop(c->loop, &c->timer);
        ev_timer_stop(c->loop, &c->kick_w);
    }
    /* The host first: closing the group completes outstanding proposals (their callbacks see
     * closing and only free), while the mesh can still carry the answers. */
    mr_host_free(c->host);
    c->host = NULL;
    c->g = NULL;
    peer_mesh_free(c->mesh); /* drops pending calls without their callbacks */
    c->mesh = NULL;
    while (c->reqs) {
        struct cl_req *r = c->reqs;
        req_unlink(c, r);
        req_free(r);
    }
    while (c->ops_list) {
        struct cl_op *op = c->ops_list;
        c->ops_list = op->next;
        free(op);
    }
    sess_free_all(c);
    free(c->sess);
    free(c->reg);
    free(c->out);
    free(c);
}

/* ---- public API ---------------------------------------------------------------------------- */

bool cl_clustered(const cl_t *c) { return c->clustered; }
uint32_t cl_self_id(const cl_t *c) { return c->self_id; }
const char *cl_self_name(const cl_t *c) { return c->self_name; }
int cl_listen_port(const cl_t *c) { return c->mesh ? peer_listen_port(c->mesh) : 0; }
peer_mesh_t *cl_mesh(cl_t *c) { return c->mesh; }
mr_host_t *cl_host(cl_t *c) { return c->host; }

void cl_set_call_fallback(cl_t *c, void (*fn)(void *ud, uint32_t from, const struct peer_call_in *in), void *ud)
{
    c->fallback = fn;
    c->fallback_ud = ud;
}

void cl_set_founded_hook(cl_t *c, void (*fn)(void *ud), void *ud)
{
    c->founded = fn;
    c->founded_ud = ud;
}

void cl_set_admin_handler(cl_t *c, void (*fn)(void *ud, uint32_t from, const struct peer_call_in *in), void *ud)
{
    c->admin = fn;
    c->admin_ud = ud;
}

void cl_set_peer_watch(cl_t *c, void (*up)(void *ud, uint32_t node), void (*down)(void *ud, uint32_t node),
                       void *ud)
{
    c->watch_up = up;
    c->watch_down = down;
    c->watch_ud = ud;
}

bool cl_formed(const cl_t *c)
{
    if (!c->clustered) return true;
    return c->state == CL_MEMBER && c->g && mr_group_leader(c->g) != 0 && c->boot_pending == 0 &&
           raft_conf_is_voter(raft_get_conf(mr_group_raft(c->g)), c->self_id);
}

int cl_meta_submit(cl_t *c, const void *cmd, size_t len, cl_submit_cb cb, void *arg)
{
    if (!c->clustered) {
        int code = 0;
        char text[CL_TEXT_MAX] = "";
        if (c->ops && c->ops->apply) c->ops->apply(c->ud, 0, cmd, len, &code, text, sizeof text);
        text[sizeof text - 1] = '\0';
        cb(arg, code, code ? text : NULL);
        return 0;
    }
    if (len > (32u << 20)) return -1; /* a metadata command is small; keep frames sane */
    struct cl_req *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->c = c;
    r->id = c->boot << 32 | ++c->next_seq;
    r->cb = cb;
    r->arg = arg;
    r->deadline = ev_now(c->loop) + c->opt.submit_timeout;
    struct wbuf w = {0};
    w_u8(&w, E_CMD);
    w_u32(&w, c->self_id);
    w_u64(&w, r->id);
    w_u64(&w, reqs_acked_below(c, r->id));
    w_bytes(&w, cmd, len);
    if (w.oom) {
        free(w.p);
        free(r);
        return -1;
    }
    r->entry = w.p;
    r->len = w.len;
    r->prev = c->reqs_tail;
    if (c->reqs_tail) c->reqs_tail->next = r;
    else c->reqs = r;
    c->reqs_tail = r;
    c->n_reqs++;
    r->boot = c->boot_submitting;
    if (r->boot) c->boot_pending++;
    req_kick(c, r);
    return 0;
}

static void member_fill(cl_t *c, struct cl_member *m, uint32_t id, bool voter)
{
    snprintf(m->name, sizeof m->name, "%s", node_display_name(c, id));
    m->id = id;
    m->voter = voter;
    m->running = id == c->self_id || peer_is_up(c->mesh, id);
}

void cl_status(cl_t *c, struct cl_status *out)
{
    memset(out, 0, sizeof *out);
    out->clustered = c->clustered;
    out->state = state_names[c->state];
    out->formed = cl_formed(c);
    snprintf(out->node, sizeof out->node, "%s", c->self_name);
    out->node_id = c->self_id;
    snprintf(out->cluster_name, sizeof out->cluster_name, "%s", c->cluster_name);
    if (!c->clustered) {
        snprintf(out->leader, sizeof out->leader, "%s", c->self_name);
        out->leader_id = c->self_id;
        out->n_members = 1;
        out->members[0] = (struct cl_member){.id = c->self_id, .voter = true, .running = true};
        snprintf(out->members[0].name, sizeof out->members[0].name, "%s", c->self_name);
        return;
    }
    if (!c->g) return;
    const struct raft *r = mr_group_raft(c->g);
    const struct raft_conf *conf = raft_get_conf(r);
    for (unsigned i = 0; i < conf->n_voters; i++) member_fill(c, &out->members[out->n_members++], conf->voters[i], true);
    for (unsigned i = 0; i < conf->n_learners; i++)
        member_fill(c, &out->members[out->n_members++], conf->learners[i], false);
    out->leader_id = mr_group_leader(c->g);
    if (out->leader_id) snprintf(out->leader, sizeof out->leader, "%s", node_display_name(c, out->leader_id));
    out->term = r->term;
    out->commit = r->commit;
    out->applied = mr_group_applied(c->g);
}

char *cl_status_json(cl_t *c)
{
    struct cl_status st;
    cl_status(c, &st);
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "node", st.node);
    cJSON_AddNumberToObject(o, "node_id", st.node_id);
    cJSON_AddStringToObject(o, "cluster_name", st.cluster_name);
    cJSON_AddBoolToObject(o, "clustered", st.clustered);
    cJSON_AddStringToObject(o, "state", st.state);
    cJSON_AddBoolToObject(o, "formed", st.formed);
    if (st.leader_id) cJSON_AddStringToObject(o, "metadata_leader", st.leader);
    else cJSON_AddNullToObject(o, "metadata_leader");
    cJSON *nodes = cJSON_AddArrayToObject(o, "nodes");
    cJSON *running = cJSON_AddArrayToObject(o, "running_nodes");
    for (unsigned i = 0; i < st.n_members; i++) {
        const struct cl_member *m = &st.members[i];
        cJSON *n = cJSON_CreateObject();
        cJSON_AddStringToObject(n, "name", m->name);
        cJSON_AddNumberToObject(n, "id", m->id);
        cJSON_AddStringToObject(n, "role", m->voter ? "voter" : "learner");
        cJSON_AddBoolToObject(n, "running", m->running);
        cJSON_AddBoolToObject(n, "leader", m->id == st.leader_id);
        cJSON_AddItemToArray(nodes, n);
        if (m->running) cJSON_AddItemToArray(running, cJSON_CreateString(m->name));
    }
    cJSON_AddNumberToObject(o, "term", (double)st.term);
    cJSON_AddNumberToObject(o, "commit_index", (double)st.commit);
    cJSON_AddNumberToObject(o, "applied_index", (double)st.applied);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

int cl_forget_node(cl_t *c, const char *name, cl_op_cb cb, void *arg)
{
    if (!c->clustered) return -1;
    struct cl_sink sink = {.local = true, .cb = cb, .arg = arg};
    cJSON *req = cJSON_CreateObject();
    cJSON_AddStringToObject(req, "name", name);
    char *text = cJSON_PrintUnformatted(req);
    cJSON_Delete(req);
    if (!text) return -1;
    handle_forget(c, &sink, text, strlen(text));
    free(text);
    return 0;
}
