/*
 * cluster_bench.c - load generator for the issue 5 three-node cluster benchmark: Warren's
 * cluster versus a RabbitMQ 3.10 cluster, both measured through librabbitmq (a neutral
 * client). tests/bench/cluster_run.sh drives it; it can also be run by hand.
 *
 * The cluster is given as a list of AMQP addresses (--nodes host:port,host:port,...); node
 * numbers in the options (--queue-node, --publish-node, --consume-node) are 1-based
 * positions in that list. Pointing every entry at one broker is allowed (a smoke test of
 * the client against a single node).
 *
 * --mode meta: metadata operations. C connections (--connections, default one per node;
 *   connection i talks to node i mod N), each on its own thread with channel 1, repeat
 *   queue.declare (durable, a name unique to the process, thread and iteration) +
 *   queue.bind (to amq.direct, routing key = the queue name) + queue.delete, one RPC after
 *   the other. A "triple" counts when its delete-ok arrived; its latency is from sending the
 *   declare to receiving the delete-ok. In a cluster every one of these is a metadata
 *   change that all nodes must agree on (RabbitMQ: a Mnesia transaction; Warren: the
 *   metadata Raft group), so the rate measures the metadata path. Output: triples/s (the
 *   "ops/s" of the issue), p50/p99/max of a triple and p99 of each of the three RPCs.
 *
 * --mode xpub: cross-node publishing to a classic queue. A setup connection to the queue
 *   node (default 1) declares a durable queue with no arguments (classic; RabbitMQ places
 *   it on the node the client declared it on) and purges it. Producers connect to the
 *   publish node (default 2) and publish --size byte messages (1 KB, persistent unless
 *   --transient) to the default exchange, keeping at most --confirm W (100) unconfirmed
 *   (publisher confirms, sliding window; --confirm 0 turns confirms off); consumers connect
 *   to the consume node (default 1; 3 to cross the cluster twice) with basic.qos --prefetch
 *   (100) and ack each delivery (manual ack; --ack auto for the no-ack variant). So every
 *   message goes client -> publish node -> queue node -> consume node -> client.
 *   Messages are published mandatory, so one the publish node cannot route to the queue
 *   comes back as basic.return; it is counted and not treated as published.
 *   Output: msg/s published and confirmed (with confirms; else published), msg/s consumed
 *   (end to end), confirm latency (publish to basic.ack, p50/p99/max) and end-to-end latency
 *   (a CLOCK_MONOTONIC stamp in the first 8 bytes of the body, p50/p99/max).
 *
 *   Quorum queue options (issue 6, tests/bench/qq_run.sh): --queue-type quorum|classic puts
 *   x-queue-type in the declare; --queues N spreads the workers over queues <queue>-1..N;
 *   --rate R paces the producers to R msg/s in total (open loop: publish k is due at
 *   start + k/R, so a stalled broker is not "rewarded" with fewer samples); --publish-only
 *   (no consumers, the queue is kept) and --consume-only (no producers, no declare/purge:
 *   drain what is there; without --count the target is the queues' message count from a
 *   passive declare at start) split a backlog run into its two phases.
 *   --report-gaps measures confirm gaps for the failover scenario: the longest interval
 *   without any basic.ack, and, when the process gets SIGUSR1 (the script sends it right
 *   after killing the queue's leader), the time from that signal to the first confirm that
 *   ends the longest gap ending after it ("failover_ms": kill to first new confirm).
 *   At the end the number of messages left in the queue(s) is reported ("left": from the
 *   delete-ok, or a passive declare when the queue is kept), so confirmed = consumed + left
 *   can be checked; cleanup falls back to the other nodes when the queue node is down.
 *
 * --mode ready: tries a full AMQP login on every listed node until all succeeded or
 *   --duration seconds passed (exit 0 / 1); the scripts use it to wait for brokers.
 *
 * A run lasts --duration seconds or ends after --count units (triples, or messages
 *   published and consumed), whichever comes first. Worker threads connect first and wait
 *   at a start gate, so connection setup is not measured. Every blocking read has a
 *   timeout and re-checks the stop flag, every RPC is bounded by librabbitmq's RPC timeout,
 *   and the main thread gives up (exit 3) when threads ignore the stop for 60 s.
 * At the end the xpub queue is deleted (unless --keep-queue), and a meta queue a failed
 *   thread may have left behind is deleted too.
 *
 * Output: a human summary, then one JSON line (see tests/bench/README.md). Exit status:
 *   0 success; 1 broker or connection error; 2 bad usage; 3 threads stuck after the stop;
 *   4 --count not reached within --duration (figures still printed, "complete":false);
 *   5 xpub: some publishes came back unroutable (basic.return; they are published
 *   mandatory), i.e. the publish node did not route to the queue (figures still printed).
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_common.h"

#define CB_CHANNEL 1
#define CB_STAMP_BYTES 8
#define CB_MAX_NODES 16
#define CB_MAX_WORKERS 256
#define CB_MAX_SIZE (16u * 1024 * 1024)
#define CB_MAX_WINDOW 100000u
#define CB_POLL_MS 100            /* how often blocked readers re-check the stop flag */
#define CB_CONNECT_TIMEOUT_S 5
#define CB_CONFIRM_GRACE_S 30     /* wait for outstanding confirms after the stop */
#define CB_HARD_GRACE_S 60        /* after the stop, give up on stuck threads */
#define CB_NAME_MAX 200

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                    */

enum cb_mode { CB_META, CB_XPUB, CB_READY };

struct cb_node {
    char host[160];
    int port;
};

struct cb_options {
    enum cb_mode mode;
    struct cb_node nodes[CB_MAX_NODES];
    unsigned n_nodes;
    const char *user, *pass, *vhost;
    const char *scenario;
    uint64_t duration_s;
    uint64_t count;             /* 0 = run for the duration */
    bool progress;
    /* meta */
    unsigned connections;       /* 0 = one per node */
    const char *prefix;
    /* xpub */
    const char *queue;
    const char *queue_type;   /* x-queue-type at declare ("quorum"), NULL = none (classic) */
    unsigned queues;          /* xpub: queues <queue>-1..N when > 1 (worker i uses i mod N) */
    unsigned queue_node, publish_node, consume_node;   /* 1-based */
    unsigned producers, consumers;
    size_t size;
    bool persistent;
    unsigned confirm_window;    /* 0 = no confirms */
    unsigned prefetch;          /* 0 = no basic.qos */
    bool auto_ack;
    bool keep_queue;
    double rate;                /* total publish rate (msg/s), 0 = as fast as the window allows */
    bool publish_only, consume_only, report_gaps;
};

static void cb_usage(FILE *out)
{
    fprintf(out,
        "usage: cluster_bench --mode meta|xpub|ready --nodes H:P[,H:P...] [options]\n"
        "  --user U (guest) --pass P (guest) --vhost V (/)\n"
        "  --duration SECONDS (10)  run length (ready: how long to wait)\n"
        "  --count N                stop after N triples (meta) / messages (xpub)\n"
        "  --scenario NAME          label for the JSON line (default: the mode)\n"
        "  --progress               progress on stderr every second\n"
        " meta:\n"
        "  --connections C          connections, spread over the nodes (default: one per node)\n"
        "  --prefix P (cluster-bench-meta)   queue name prefix\n"
        " xpub:\n"
        "  --queue NAME (cluster-bench-xpub) --queue-node I (1) --publish-node I (2)\n"
        "  --queue-type quorum|classic (x-queue-type at declare; default: no argument)\n"
        "  --queues N (1)           N queues NAME-1..N; producer/consumer i uses queue i mod N\n"
        "  --consume-node I (1) --producers N (1) --consumers N (1) --size BYTES (1024)\n"
        "  --transient              delivery_mode 1 (default: persistent)\n"
        "  --confirm W (100)        at most W unconfirmed publishes; 0 = no confirms\n"
        "  --prefetch N (100)       basic.qos; 0 = none\n"
        "  --ack manual|auto (manual)\n"
        "  --keep-queue             do not delete the queue at the end\n"
        "  --rate R                 total publish rate (msg/s), paced; default: unpaced\n"
        "  --publish-only           no consumers; the queue is kept (backlog: phase 1)\n"
        "  --consume-only           no producers, no declare/purge; drain --count messages or,\n"
        "                           without --count, what a passive declare finds at start\n"
        "  --report-gaps            longest interval without a confirm; SIGUSR1 marks an\n"
        "                           event (a leader kill): failover_ms = mark to first confirm\n");
}

static bool cb_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
{
    if (text == NULL || *text == '\0' || *text == '-')
        return false;
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max)
        return false;
    *out = value;
    return true;
}

/* "host:port[,host:port...]"; the port follows the last ':' ("[::1]:5672" works too). */
static bool cb_parse_nodes(const char *text, struct cb_options *opt)
{
    opt->n_nodes = 0;
    const char *p = text;
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[160];
        if (len == 0 || len >= sizeof item || opt->n_nodes == CB_MAX_NODES)
            return false;
        memcpy(item, p, len);
        item[len] = '\0';
        char *colon = strrchr(item, ':');
        if (colon == NULL || colon == item)
            return false;
        *colon = '\0';
        uint64_t port;
        if (!cb_parse_u64(colon + 1, 1, 65535, &port))
            return false;
        char *host = item;
        size_t hlen = strlen(host);
        if (host[0] == '[' && hlen > 2 && host[hlen - 1] == ']') {
            host[hlen - 1] = '\0';
            host++;
        }
        struct cb_node *n = &opt->nodes[opt->n_nodes++];
        snprintf(n->host, sizeof n->host, "%s", host);
        n->port = (int)port;
        p += len;
        if (*p == ',')
            p++;
    }
    return opt->n_nodes > 0;
}

enum {
    OPT_MODE = 256, OPT_NODES, OPT_USER, OPT_PASS, OPT_VHOST, OPT_SCENARIO, OPT_DURATION,
    OPT_COUNT, OPT_PROGRESS, OPT_CONNECTIONS, OPT_PREFIX, OPT_QUEUE, OPT_QUEUE_NODE, OPT_QUEUE_TYPE, OPT_QUEUES,
    OPT_PUBLISH_NODE, OPT_CONSUME_NODE, OPT_PRODUCERS, OPT_CONSUMERS, OPT_SIZE, OPT_TRANSIENT,
    OPT_PERSISTENT, OPT_CONFIRM, OPT_PREFETCH, OPT_ACK, OPT_KEEP_QUEUE, OPT_RATE,
    OPT_PUBLISH_ONLY, OPT_CONSUME_ONLY, OPT_REPORT_GAPS, OPT_HELP
};

static const struct option cb_long_options[] = {
    {"mode", required_argument, NULL, OPT_MODE},
    {"nodes", required_argument, NULL, OPT_NODES},
    {"user", required_argument, NULL, OPT_USER},
    {"pass", required_argument, NULL, OPT_PASS},
    {"vhost", required_argument, NULL, OPT_VHOST},
    {"scenario", required_argument, NULL, OPT_SCENARIO},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"count", required_argument, NULL, OPT_COUNT},
    {"progress", no_argument, NULL, OPT_PROGRESS},
    {"connections", required_argument, NULL, OPT_CONNECTIONS},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"queue", required_argument, NULL, OPT_QUEUE},
    {"queue-node", required_argument, NULL, OPT_QUEUE_NODE},
    {"queue-type", required_argument, NULL, OPT_QUEUE_TYPE},
    {"queues", required_argument, NULL, OPT_QUEUES},
    {"publish-node", required_argument, NULL, OPT_PUBLISH_NODE},
    {"consume-node", required_argument, NULL, OPT_CONSUME_NODE},
    {"producers", required_argument, NULL, OPT_PRODUCERS},
    {"consumers", required_argument, NULL, OPT_CONSUMERS},
    {"size", required_argument, NULL, OPT_SIZE},
    {"transient", no_argument, NULL, OPT_TRANSIENT},
    {"persistent", no_argument, NULL, OPT_PERSISTENT},
    {"confirm", required_argument, NULL, OPT_CONFIRM},
    {"prefetch", required_argument, NULL, OPT_PREFETCH},
    {"ack", required_argument, NULL, OPT_ACK},
    {"keep-queue", no_argument, NULL, OPT_KEEP_QUEUE},
    {"rate", required_argument, NULL, OPT_RATE},
    {"publish-only", no_argument, NULL, OPT_PUBLISH_ONLY},
    {"consume-only", no_argument, NULL, OPT_CONSUME_ONLY},
    {"report-gaps", no_argument, NULL, OPT_REPORT_GAPS},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static bool cb_bad(const char *name, const char *value)
{
    fprintf(stderr, "cluster_bench: invalid value for --%s: '%s'\n", name, value ? value : "");
    return false;
}

static bool cb_apply_option(struct cb_options *opt, int id, const char *arg)
{
    uint64_t n = 0;
    switch (id) {
    case OPT_MODE:
        if (strcmp(arg, "meta") == 0) opt->mode = CB_META;
        else if (strcmp(arg, "xpub") == 0) opt->mode = CB_XPUB;
        else if (strcmp(arg, "ready") == 0) opt->mode = CB_READY;
        else return cb_bad("mode (meta|xpub|ready)", arg);
        return true;
    case OPT_NODES:
        if (!cb_parse_nodes(arg, opt)) return cb_bad("nodes (host:port,...)", arg);
        return true;
    case OPT_USER: opt->user = arg; return true;
    case OPT_PASS: opt->pass = arg; return true;
    case OPT_VHOST: opt->vhost = arg; return true;
    case OPT_SCENARIO: opt->scenario = arg; return true;
    case OPT_PROGRESS: opt->progress = true; return true;
    case OPT_TRANSIENT: opt->persistent = false; return true;
    case OPT_PERSISTENT: opt->persistent = true; return true;
    case OPT_KEEP_QUEUE: opt->keep_queue = true; return true;
    case OPT_PUBLISH_ONLY: opt->publish_only = true; return true;
    case OPT_CONSUME_ONLY: opt->consume_only = true; return true;
    case OPT_REPORT_GAPS: opt->report_gaps = true; return true;
    case OPT_RATE: {
        char *end = NULL;
        errno = 0;
        double r = strtod(arg, &end);
        if (errno != 0 || end == arg || *end != '\0' || !(r > 0) || r > 1e7) return cb_bad("rate", arg);
        opt->rate = r;
        return true;
    }
    case OPT_DURATION:
        if (!cb_parse_u64(arg, 1, 86400, &n)) return cb_bad("duration", arg);
        opt->duration_s = n;
        return true;
    case OPT_COUNT:
        if (!cb_parse_u64(arg, 1, UINT64_MAX / 2, &n)) return cb_bad("count", arg);
        opt->count = n;
        return true;
    case OPT_CONNECTIONS:
        if (!cb_parse_u64(arg, 1, CB_MAX_WORKERS, &n)) return cb_bad("connections", arg);
        opt->connections = (unsigned)n;
        return true;
    case OPT_PRODUCERS:
        if (!cb_parse_u64(arg, 0, CB_MAX_WORKERS, &n)) return cb_bad("producers", arg);
        opt->producers = (unsigned)n;
        return true;
    case OPT_CONSUMERS:
        if (!cb_parse_u64(arg, 0, CB_MAX_WORKERS, &n)) return cb_bad("consumers", arg);
        opt->consumers = (unsigned)n;
        return true;
    case OPT_PREFIX:
        if (strlen(arg) == 0 || strlen(arg) > 100) return cb_bad("prefix", arg);
        opt->prefix = arg;
        return true;
    case OPT_QUEUE:
        if (strlen(arg) == 0 || strlen(arg) > 255) return cb_bad("queue", arg);
        opt->queue = arg;
        return true;
    case OPT_QUEUE_TYPE:
        if (strcmp(arg, "quorum") != 0 && strcmp(arg, "classic") != 0) return cb_bad("queue-type", arg);
        opt->queue_type = arg;
        return true;
    case OPT_QUEUES:
        if (!cb_parse_u64(arg, 1, CB_MAX_WORKERS, &n)) return cb_bad("queues", arg);
        opt->queues = (unsigned)n;
        return true;
    case OPT_QUEUE_NODE:
    case OPT_PUBLISH_NODE:
    case OPT_CONSUME_NODE:
        if (!cb_parse_u64(arg, 1, CB_MAX_NODES, &n)) return cb_bad("*-node", arg);
        if (id == OPT_QUEUE_NODE) opt->queue_node = (unsigned)n;
        else if (id == OPT_PUBLISH_NODE) opt->publish_node = (unsigned)n;
        else opt->consume_node = (unsigned)n;
        return true;
    case OPT_SIZE:
        if (!cb_parse_u64(arg, CB_STAMP_BYTES, CB_MAX_SIZE, &n)) return cb_bad("size", arg);
        opt->size = (size_t)n;
        return true;
    case OPT_CONFIRM:
        if (!cb_parse_u64(arg, 0, CB_MAX_WINDOW, &n)) return cb_bad("confirm", arg);
        opt->confirm_window = (unsigned)n;
        return true;
    case OPT_PREFETCH:
        if (!cb_parse_u64(arg, 0, 65535, &n)) return cb_bad("prefetch", arg);
        opt->prefetch = (unsigned)n;
        return true;
    case OPT_ACK:
        if (strcmp(arg, "manual") == 0) opt->auto_ack = false;
        else if (strcmp(arg, "auto") == 0) opt->auto_ack = true;
        else return cb_bad("ack (manual|auto)", arg);
        return true;
    default:
        return false;
    }
}

static bool cb_validate(struct cb_options *opt)
{
    if (opt->n_nodes == 0) {
        fprintf(stderr, "cluster_bench: --nodes is required\n");
        return false;
    }
    if (opt->scenario == NULL)
        opt->scenario = opt->mode == CB_META ? "meta" : opt->mode == CB_XPUB ? "xpub" : "ready";
    if (opt->mode == CB_META && opt->connections == 0)
        opt->connections = opt->n_nodes;
    if (opt->mode == CB_XPUB) {
        const unsigned idx[3] = {opt->queue_node, opt->publish_node, opt->consume_node};
        const char *names[3] = {"queue-node", "publish-node", "consume-node"};
        for (int i = 0; i < 3; i++)
            if (idx[i] > opt->n_nodes) {
                fprintf(stderr, "cluster_bench: --%s %u, but --nodes lists %u node(s)\n",
                        names[i], idx[i], opt->n_nodes);
                return false;
            }
        if (opt->publish_only && opt->consume_only) {
            fprintf(stderr, "cluster_bench: --publish-only and --consume-only exclude each other\n");
            return false;
        }
        if (opt->publish_only) {
            opt->consumers = 0;
            opt->keep_queue = true;
        }
        if (opt->consume_only)
            opt->producers = 0;
        if (opt->report_gaps && opt->confirm_window == 0) {
            fprintf(stderr, "cluster_bench: --report-gaps needs confirms (--confirm W > 0)\n");
            return false;
        }
        if (opt->producers + opt->consumers == 0) {
            fprintf(stderr, "cluster_bench: no producers and no consumers\n");
            return false;
        }
    }
    return true;
}

/* Returns 0 to run, 1 on bad usage, 2 when --help was printed. */
static int cb_parse_args(int argc, char **argv, struct cb_options *opt)
{
    *opt = (struct cb_options){
        .mode = CB_META, .user = "guest", .pass = "guest", .vhost = "/", .duration_s = 10,
        .prefix = "cluster-bench-meta", .queue = "cluster-bench-xpub", .queues = 1, .queue_node = 1,
        .publish_node = 2, .consume_node = 1, .producers = 1, .consumers = 1, .size = 1024,
        .persistent = true, .confirm_window = 100, .prefetch = 100,
    };
    bool have_mode = false;
    int id;
    opterr = 0;
    while ((id = getopt_long(argc, argv, "", cb_long_options, NULL)) != -1) {
        if (id == OPT_HELP) {
            cb_usage(stdout);
            return 2;
        }
        if (id == '?' || id == ':') {
            fprintf(stderr, "cluster_bench: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            cb_usage(stderr);
            return 1;
        }
        if (!cb_apply_option(opt, id, optarg))
            return 1;
        if (id == OPT_MODE)
            have_mode = true;
    }
    if (optind < argc) {
        fprintf(stderr, "cluster_bench: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (!have_mode) {
        fprintf(stderr, "cluster_bench: --mode is required\n");
        cb_usage(stderr);
        return 1;
    }
    return cb_validate(opt) ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Clocks                                                                                     */

static uint64_t cb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void cb_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static double cb_ms(uint64_t ns) { return (double)ns / NS_PER_MS; }

/* ------------------------------------------------------------------------------------------ */
/* Run state                                                                                  */

static volatile sig_atomic_t cb_interrupted;
/* CLOCK_MONOTONIC time of the last SIGUSR1 (0: none): the failover script's "leader killed
 * now". Written by the handler (clock_gettime is async-signal-safe), read atomically. */
static uint64_t cb_mark_ns;

static void cb_on_signal(int sig)
{
    (void)sig;
    cb_interrupted = 1;
}

static void cb_on_mark(int sig)
{
    (void)sig;
    __atomic_store_n(&cb_mark_ns, cb_now_ns(), __ATOMIC_RELAXED);
}

struct cb_run {
    const struct cb_options *opt;
    atomic_bool stop;
    atomic_bool failed;
    atomic_bool go;
    atomic_uint ready;
    atomic_uint finished;
    atomic_uint_fast64_t claimed;        /* --count: units handed out */
    atomic_uint_fast64_t consumed_total; /* xpub --count: consumers stop at count */
    uint64_t start_ns;
    pthread_mutex_t error_lock;
    char error[512];
};

enum cb_role { CB_ROLE_META, CB_ROLE_PRODUCER, CB_ROLE_CONSUMER };

struct cb_worker {
    struct cb_run *run;
    enum cb_role role;
    unsigned index;
    unsigned node;                 /* 0-based index into opt->nodes */
    pthread_t thread;
    bool thread_started;
    /* Written by the worker only; the main thread reads them after the join (and, for the
     * progress line, racily through __atomic loads). */
    uint64_t done;                 /* triples / published / consumed */
    uint64_t acked, nacked;
    uint64_t returned;             /* xpub producer: basic.return (mandatory, unroutable) */
    uint64_t last_event_ns;
    /* --report-gaps (producers): arrival of the last basic.ack, the longest interval between
     * two (or from the start to the first), and the longest one ending after the mark. */
    uint64_t last_ack_ns, gap_ns, gap_end_ns, mark_gap_ns, mark_gap_end_ns;
    struct latency_hist *hist;     /* triple / confirm / end-to-end latency */
    struct latency_hist *op_hist[3];   /* meta: declare, bind, delete */
    char pending[CB_NAME_MAX];     /* meta: a queue that may exist if the thread failed */
};

static void cb_fail(struct cb_run *run, const char *fmt, ...)
{
    pthread_mutex_lock(&run->error_lock);
    if (run->error[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(run->error, sizeof run->error, fmt, ap);
        va_end(ap);
    }
    pthread_mutex_unlock(&run->error_lock);
    atomic_store(&run->failed, true);
    atomic_store(&run->stop, true);
}

static bool cb_stopping(struct cb_run *run) { return atomic_load(&run->stop); }

static bool cb_claim(struct cb_run *run)
{
    if (run->opt->count == 0)
        return true;
    return atomic_fetch_add(&run->claimed, 1) < run->opt->count;
}

/* ------------------------------------------------------------------------------------------ */
/* Connections                                                                                */

static amqp_connection_state_t cb_connect(const struct cb_options *opt, const struct cb_node *node,
                                          double timeout_s, char *err, size_t errlen)
{
    return bench_open(node->host, node->port, opt->vhost, opt->user, opt->pass, timeout_s, err, errlen);
}

static void cb_disconnect(amqp_connection_state_t conn, bool healthy) { bench_close(conn, healthy); }

static bool cb_wait_for_gate(struct cb_run *run)
{
    atomic_fetch_add(&run->ready, 1);
    while (!atomic_load(&run->go)) {
        if (cb_stopping(run))
            return false;
        cb_sleep_ms(1);
    }
    return !cb_stopping(run);
}

static const char *cb_role_name(enum cb_role role)
{
    return role == CB_ROLE_META ? "connection" : role == CB_ROLE_PRODUCER ? "producer"
                                                                          : "consumer";
}

static amqp_connection_state_t cb_worker_connect(struct cb_worker *w)
{
    char err[512];
    const struct cb_options *opt = w->run->opt;
    amqp_connection_state_t conn = cb_connect(opt, &opt->nodes[w->node], CB_CONNECT_TIMEOUT_S,
                                              err, sizeof err);
    if (conn == NULL)
        cb_fail(w->run, "%s %u (node %u): %s", cb_role_name(w->role), w->index, w->node + 1,
                err);
    return conn;
}

/* ------------------------------------------------------------------------------------------ */
/* meta: declare + bind + delete                                                              */

static bool meta_step(struct cb_worker *w, amqp_connection_state_t conn, int op,
                      const char *name, uint64_t *t)
{
    char err[512];
    amqp_bytes_t q = amqp_cstring_bytes(name);
    const char *what = "queue.declare";
    switch (op) {
    case 0:
        amqp_queue_declare(conn, CB_CHANNEL, q, 0, 1, 0, 0, amqp_empty_table);
        break;
    case 1:
        what = "queue.bind";
        amqp_queue_bind(conn, CB_CHANNEL, q, amqp_cstring_bytes("amq.direct"), q,
                        amqp_empty_table);
        break;
    default:
        what = "queue.delete";
        amqp_queue_delete(conn, CB_CHANNEL, q, 0, 0);
        break;
    }
    if (!bench_reply_ok(conn, what, err, sizeof err)) {
        cb_fail(w->run, "connection %u (node %u): %s %s", w->index, w->node + 1, name, err);
        return false;
    }
    uint64_t now = cb_now_ns();
    hist_record(w->op_hist[op], now - *t);
    *t = now;
    return true;
}

static void *meta_main(void *arg)
{
    struct cb_worker *w = arg;
    struct cb_run *run = w->run;
    amqp_connection_state_t conn = cb_worker_connect(w);
    bool ok = conn != NULL;
    if (ok && cb_wait_for_gate(run)) {
        uint64_t seq = 0;
        char name[CB_NAME_MAX];
        while (!cb_stopping(run) && cb_claim(run)) {
            snprintf(name, sizeof name, "%s-%ld-%u-%" PRIu64, run->opt->prefix, (long)getpid(),
                     w->index, seq++);
            /* Remember the name before the declare: if the declare times out the queue may
             * exist anyway. */
            memcpy(w->pending, name, sizeof name);
            uint64_t t0 = cb_now_ns(), t = t0;
            if (!meta_step(w, conn, 0, name, &t) || !meta_step(w, conn, 1, name, &t) ||
                !meta_step(w, conn, 2, name, &t)) {
                ok = false;
                break;
            }
            w->pending[0] = '\0';
            hist_record(w->hist, t - t0);
            __atomic_store_n(&w->done, w->done + 1, __ATOMIC_RELAXED);
            w->last_event_ns = t;
        }
    }
    cb_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* Deletes queues that failed threads may have left; best effort, bounded by the timeouts. */
static void meta_cleanup(const struct cb_options *opt, struct cb_worker *workers, unsigned n)
{
    amqp_connection_state_t conn = NULL;
    for (unsigned i = 0; i < n; i++) {
        if (workers[i].pending[0] == '\0')
            continue;
        char err[512];
        for (unsigned k = 0; conn == NULL && k < opt->n_nodes; k++)
            conn = cb_connect(opt, &opt->nodes[(workers[i].node + k) % opt->n_nodes],
                              CB_CONNECT_TIMEOUT_S, err, sizeof err);
        if (conn == NULL) {
            fprintf(stderr, "cluster_bench: cleanup: %s (queue %s may be left)\n", err,
                    workers[i].pending);
            return;
        }
        amqp_queue_delete(conn, CB_CHANNEL, amqp_cstring_bytes(workers[i].pending), 0, 0);
        if (!bench_reply_ok(conn, "queue.delete", err, sizeof err)) {
            fprintf(stderr, "cluster_bench: cleanup of %s: %s\n", workers[i].pending, err);
            cb_disconnect(conn, false);
            conn = NULL;
        }
    }
    cb_disconnect(conn, true);
}

/* ------------------------------------------------------------------------------------------ */
/* xpub producer: publish with a sliding confirm window                                       */

/* Tags [oldest, next_tag) are in flight; sent_ns / settled are rings indexed tag % capacity,
 * which cannot wrap onto a live tag because at most capacity tags are in flight. */
struct cb_window {
    uint64_t next_tag, oldest;
    size_t capacity;
    uint8_t *settled;
    uint64_t *sent_ns;
    uint64_t acked, nacked;
};

static bool window_init(struct cb_window *cw, unsigned capacity)
{
    *cw = (struct cb_window){.next_tag = 1, .oldest = 1, .capacity = capacity};
    cw->settled = calloc(capacity, 1);
    cw->sent_ns = calloc(capacity, sizeof *cw->sent_ns);
    return cw->settled != NULL && cw->sent_ns != NULL;
}

static void window_free(struct cb_window *cw)
{
    free(cw->settled);
    free(cw->sent_ns);
}

static bool window_full(const struct cb_window *cw)
{
    return cw->next_tag - cw->oldest >= cw->capacity;
}

static void window_settle_one(struct cb_window *cw, struct latency_hist *h, uint64_t tag,
                              bool ack, uint64_t now)
{
    if (tag < cw->oldest || tag >= cw->next_tag || cw->settled[tag % cw->capacity])
        return;
    cw->settled[tag % cw->capacity] = 1;
    if (ack) {
        cw->acked++;
        uint64_t sent = cw->sent_ns[tag % cw->capacity];
        if (now >= sent)
            hist_record(h, now - sent);
    } else {
        cw->nacked++;
    }
}

static void window_settle(struct cb_window *cw, struct latency_hist *h, uint64_t tag,
                          bool multiple, bool ack)
{
    uint64_t now = cb_now_ns();
    if (multiple) {
        uint64_t last = tag < cw->next_tag ? tag : cw->next_tag - 1;
        for (uint64_t t = cw->oldest; t <= last; t++)
            window_settle_one(cw, h, t, ack, now);
    } else {
        window_settle_one(cw, h, tag, ack, now);
    }
    while (cw->oldest < cw->next_tag && cw->settled[cw->oldest % cw->capacity]) {
        cw->settled[cw->oldest % cw->capacity] = 0;
        cw->oldest++;
    }
}

/* --report-gaps: a basic.ack that settled at least one publish has just arrived. */
static void note_confirm(struct cb_worker *w)
{
    uint64_t now = cb_now_ns();
    uint64_t gap = now - w->last_ack_ns;
    if (gap > w->gap_ns) {
        w->gap_ns = gap;
        w->gap_end_ns = now;
    }
    uint64_t mark = __atomic_load_n(&cb_mark_ns, __ATOMIC_RELAXED);
    if (mark != 0 && now > mark && gap > w->mark_gap_ns) {
        w->mark_gap_ns = gap;
        w->mark_gap_end_ns = now;
    }
    w->last_ack_ns = now;
}

/* 1 = a frame was handled, 0 = timeout, -1 = error (reported). */
static int producer_read(struct cb_worker *w, amqp_connection_state_t conn, struct cb_window *cw,
                         struct timeval *timeout)
{
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame_noblock(conn, &frame, timeout);
    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK) {
        cb_fail(w->run, "producer %u: reading confirms: %s", w->index, amqp_error_string2(rc));
        return -1;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return 1;   /* header / body of a basic.return */
    switch (frame.payload.method.id) {
    case AMQP_BASIC_RETURN_METHOD:
        w->returned++;
        return 1;
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = frame.payload.method.decoded;
        uint64_t before = cw->acked;
        window_settle(cw, w->hist, a->delivery_tag, a->multiple, true);
        if (w->run->opt->report_gaps && cw->acked > before)
            note_confirm(w);
        return 1;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *n = frame.payload.method.decoded;
        window_settle(cw, w->hist, n->delivery_tag, n->multiple, false);
        return 1;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = frame.payload.method.decoded;
        cb_fail(w->run, "producer %u: channel closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = frame.payload.method.decoded;
        cb_fail(w->run, "producer %u: connection closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return -1;
    }
    default:
        return 1;   /* connection.blocked/unblocked */
    }
}

/* The queue worker `index` uses (xpub). */
static void cb_queue_name(const struct cb_options *opt, unsigned index, char *out, size_t cap)
{
    if (opt->queues <= 1) snprintf(out, cap, "%s", opt->queue);
    else snprintf(out, cap, "%s-%u", opt->queue, index % opt->queues + 1);
}

static amqp_table_t cb_queue_args(const struct cb_options *opt, amqp_table_entry_t *entry)
{
    if (!opt->queue_type) return amqp_empty_table;
    entry->key = amqp_cstring_bytes("x-queue-type");
    entry->value.kind = AMQP_FIELD_KIND_UTF8;
    entry->value.value.bytes = amqp_cstring_bytes(opt->queue_type);
    return (amqp_table_t){.num_entries = 1, .entries = entry};
}

static bool producer_loop(struct cb_worker *w, amqp_connection_state_t conn)
{
    struct cb_run *run = w->run;
    const struct cb_options *opt = run->opt;
    bool confirming = opt->confirm_window > 0;
    struct cb_window cw = {0};
    uint8_t *body = malloc(opt->size);
    if (body == NULL || (confirming && !window_init(&cw, opt->confirm_window))) {
        free(body);
        window_free(&cw);
        cb_fail(run, "producer %u: out of memory", w->index);
        return false;
    }
    memset(body, 'c', opt->size);
    amqp_basic_properties_t props = {0};
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = opt->persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT;
    char qname[300];
    cb_queue_name(opt, w->index, qname, sizeof qname);
    amqp_bytes_t key = amqp_cstring_bytes(qname);
    amqp_bytes_t payload = {.len = opt->size, .bytes = body};
    bool ok = true;
    /* --rate: this producer's share is one publish every `interval` ns, staggered against
     * the other producers; publish k is due at next_due whatever happened before. */
    uint64_t interval = 0, next_due = 0;
    if (opt->rate > 0) {
        double total_ns = (double)NS_PER_S / opt->rate;
        interval = (uint64_t)(total_ns * opt->producers);
        if (interval == 0)
            interval = 1;
        next_due = run->start_ns + (uint64_t)(total_ns * w->index);
    }
    w->last_ack_ns = run->start_ns;

    while (ok && !cb_stopping(run)) {
        while (confirming && window_full(&cw) && !cb_stopping(run)) {
            struct timeval tv = {.tv_sec = 0, .tv_usec = CB_POLL_MS * 1000};
            if (producer_read(w, conn, &cw, &tv) < 0)
                ok = false;
            if (!ok)
                break;
        }
        /* Pacing: until the next publish is due, read confirms (or just sleep). */
        while (ok && interval != 0 && !cb_stopping(run)) {
            uint64_t now = cb_now_ns();
            if (now >= next_due)
                break;
            uint64_t wait_us = (next_due - now) / 1000;
            if (wait_us > CB_POLL_MS * 1000)
                wait_us = CB_POLL_MS * 1000;
            if (confirming) {
                struct timeval tv = {.tv_sec = 0, .tv_usec = (suseconds_t)wait_us};
                if (producer_read(w, conn, &cw, &tv) < 0)
                    ok = false;
            } else {
                struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(next_due - now)};
                if (ts.tv_nsec > (long)(CB_POLL_MS * NS_PER_MS))
                    ts.tv_nsec = (long)(CB_POLL_MS * NS_PER_MS);
                nanosleep(&ts, NULL);
            }
        }
        if (!ok || cb_stopping(run) || !cb_claim(run))
            break;
        if (interval != 0)
            next_due += interval;
        uint64_t stamp = cb_now_ns();
        memcpy(body, &stamp, sizeof stamp);
        /* mandatory: a message the cluster cannot route to the queue (say, the publish
         * node does not see a queue declared on another node) comes back as basic.return
         * and is counted, instead of vanishing while being confirmed. */
        int rc = amqp_basic_publish(conn, CB_CHANNEL, amqp_empty_bytes, key, 1, 0, &props,
                                    payload);
        if (rc != AMQP_STATUS_OK) {
            cb_fail(run, "producer %u: publish: %s", w->index, amqp_error_string2(rc));
            ok = false;
            break;
        }
        __atomic_store_n(&w->done, w->done + 1, __ATOMIC_RELAXED);
        w->last_event_ns = stamp;
        if (confirming) {
            cw.sent_ns[cw.next_tag % cw.capacity] = stamp;
            cw.next_tag++;
        }
        /* Settle whatever librabbitmq already buffered, without blocking; without confirms
         * look at the socket every 256 publishes so returns cannot pile up unread. */
        if (confirming || w->done % 256 == 0) {
            bool poll_socket = !confirming;
            while (ok && (poll_socket || amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn))) {
                poll_socket = false;
                struct timeval zero = {0, 0};
                int got = producer_read(w, conn, &cw, &zero);
                if (got < 0)
                    ok = false;
                if (got <= 0)
                    break;
            }
        }
    }
    /* Without confirms, returns for the last publishes may still be on their way. */
    for (uint64_t until = cb_now_ns() + 200 * NS_PER_MS; ok && !confirming && cb_now_ns() < until;) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = 20 * 1000};
        if (producer_read(w, conn, &cw, &tv) < 0)
            ok = false;
    }
    /* The confirms still in flight (at most one window) are collected, bounded. */
    uint64_t deadline = cb_now_ns() + CB_CONFIRM_GRACE_S * NS_PER_S;
    while (ok && confirming && cw.oldest != cw.next_tag) {
        if (atomic_load(&run->failed))
            break;
        if (cb_now_ns() > deadline) {
            cb_fail(run, "producer %u: %" PRIu64 " confirms missing %d s after the stop",
                    w->index, cw.next_tag - cw.oldest, CB_CONFIRM_GRACE_S);
            ok = false;
            break;
        }
        struct timeval tv = {.tv_sec = 0, .tv_usec = CB_POLL_MS * 1000};
        if (producer_read(w, conn, &cw, &tv) < 0)
            ok = false;
        else if (cw.oldest == cw.next_tag)
            w->last_event_ns = cb_now_ns();
    }
    w->acked = cw.acked;
    w->nacked = cw.nacked;
    window_free(&cw);
    free(body);
    return ok;
}

static void *producer_main(void *arg)
{
    struct cb_worker *w = arg;
    struct cb_run *run = w->run;
    amqp_connection_state_t conn = cb_worker_connect(w);
    bool ok = conn != NULL;
    if (ok && run->opt->confirm_window > 0) {
        char err[512];
        amqp_confirm_select(conn, CB_CHANNEL);
        if (!bench_reply_ok(conn, "confirm.select", err, sizeof err)) {
            cb_fail(run, "producer %u: %s", w->index, err);
            ok = false;
        }
    }
    if (ok && cb_wait_for_gate(run))
        ok = producer_loop(w, conn);
    cb_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* xpub consumer                                                                              */

static bool consumer_other_frame(struct cb_worker *w, amqp_connection_state_t conn)
{
    amqp_frame_t frame;
    struct timeval tv = {.tv_sec = 1};
    int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return true;
    if (rc != AMQP_STATUS_OK) {
        cb_fail(w->run, "consumer %u: %s", w->index, amqp_error_string2(rc));
        return false;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return true;
    switch (frame.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = frame.payload.method.decoded;
        cb_fail(w->run, "consumer %u: channel closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return false;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = frame.payload.method.decoded;
        cb_fail(w->run, "consumer %u: connection closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return false;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        cb_fail(w->run, "consumer %u: consumer cancelled by broker", w->index);
        return false;
    default:
        return true;
    }
}

static bool consumer_loop(struct cb_worker *w, amqp_connection_state_t conn)
{
    struct cb_run *run = w->run;
    const struct cb_options *opt = run->opt;
    while (!cb_stopping(run)) {
        if (opt->count > 0 && atomic_load(&run->consumed_total) >= opt->count)
            break;
        amqp_envelope_t env;
        struct timeval tv = {.tv_sec = 0, .tv_usec = CB_POLL_MS * 1000};
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t reply = amqp_consume_message(conn, &env, &tv, 0);
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            reply.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (!consumer_other_frame(w, conn))
                return false;
            continue;
        }
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            char detail[384];
            bench_describe_reply(reply, detail, sizeof detail);
            cb_fail(run, "consumer %u: %s", w->index, detail);
            return false;
        }
        uint64_t now = cb_now_ns();
        if (env.message.body.len >= CB_STAMP_BYTES) {
            uint64_t stamp;
            memcpy(&stamp, env.message.body.bytes, sizeof stamp);
            if (stamp <= now)
                hist_record(w->hist, now - stamp);
        }
        uint64_t tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (!opt->auto_ack) {
            int rc = amqp_basic_ack(conn, CB_CHANNEL, tag, 0);
            if (rc != AMQP_STATUS_OK) {
                cb_fail(run, "consumer %u: ack: %s", w->index, amqp_error_string2(rc));
                return false;
            }
        }
        __atomic_store_n(&w->done, w->done + 1, __ATOMIC_RELAXED);
        w->last_event_ns = now;
        if (opt->count > 0 && atomic_fetch_add(&run->consumed_total, 1) + 1 >= opt->count)
            atomic_store(&run->stop, true);
    }
    return true;
}

static void *consumer_main(void *arg)
{
    struct cb_worker *w = arg;
    struct cb_run *run = w->run;
    const struct cb_options *opt = run->opt;
    char err[512];
    amqp_connection_state_t conn = cb_worker_connect(w);
    bool ok = conn != NULL;
    if (ok && opt->prefetch > 0) {
        amqp_basic_qos(conn, CB_CHANNEL, 0, (uint16_t)opt->prefetch, 0);
        if (!bench_reply_ok(conn, "basic.qos", err, sizeof err)) {
            cb_fail(run, "consumer %u: %s", w->index, err);
            ok = false;
        }
    }
    if (ok) {
        char qname[300];
        cb_queue_name(opt, w->index, qname, sizeof qname);
        amqp_basic_consume(conn, CB_CHANNEL, amqp_cstring_bytes(qname), amqp_empty_bytes,
                           0, opt->auto_ack, 0, amqp_empty_table);
        if (!bench_reply_ok(conn, "basic.consume", err, sizeof err)) {
            cb_fail(run, "consumer %u: %s", w->index, err);
            ok = false;
        }
    }
    if (ok && cb_wait_for_gate(run))
        ok = consumer_loop(w, conn);
    cb_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* The xpub queue(s), through the queue node:
 *   XQ_DECLARE  declare (durable; x-queue-type from --queue-type, else no arguments) and purge;
 *   XQ_COUNT    passive declare, *count = the messages they hold;
 *   XQ_DELETE   delete, *count = the messages they held (from delete-ok).
 * XQ_COUNT and XQ_DELETE fall back to the other nodes when the queue node does not answer
 * (the failover scenario kills it). */
enum xq_action { XQ_DECLARE, XQ_COUNT, XQ_DELETE };

static bool xpub_queues(const struct cb_options *opt, enum xq_action action, uint64_t *count)
{
    char err[512] = "";
    amqp_connection_state_t conn = NULL;
    unsigned used = opt->queue_node - 1;
    unsigned tries = action == XQ_DECLARE ? 1 : opt->n_nodes;
    for (unsigned k = 0; conn == NULL && k < tries; k++) {
        used = (opt->queue_node - 1 + k) % opt->n_nodes;
        conn = cb_connect(opt, &opt->nodes[used], CB_CONNECT_TIMEOUT_S, err, sizeof err);
    }
    if (conn == NULL) {
        fprintf(stderr, "cluster_bench: %s\n", err);
        return false;
    }
    bool ok = true;
    uint64_t total = 0;
    for (unsigned i = 0; ok && i < opt->queues; i++) {
        char qname[300];
        cb_queue_name(opt, i, qname, sizeof qname);
        amqp_bytes_t q = amqp_cstring_bytes(qname);
        if (action == XQ_DELETE) {
            amqp_queue_delete_ok_t *d = amqp_queue_delete(conn, CB_CHANNEL, q, 0, 0);
            ok = bench_reply_ok(conn, "queue.delete", err, sizeof err);
            if (ok && d != NULL)
                total += d->message_count;
        } else if (action == XQ_COUNT) {
            amqp_queue_declare_ok_t *d =
                amqp_queue_declare(conn, CB_CHANNEL, q, 1, 0, 0, 0, amqp_empty_table);
            ok = bench_reply_ok(conn, "queue.declare (passive)", err, sizeof err);
            if (ok && d != NULL)
                total += d->message_count;
        } else {
            amqp_table_entry_t entry;
            amqp_queue_declare(conn, CB_CHANNEL, q, 0, 1, 0, 0, cb_queue_args(opt, &entry));
            ok = bench_reply_ok(conn, "queue.declare", err, sizeof err);
            if (ok) {
                amqp_queue_purge(conn, CB_CHANNEL, q);
                ok = bench_reply_ok(conn, "queue.purge", err, sizeof err);
            }
        }
    }
    if (!ok)
        fprintf(stderr, "cluster_bench: node %u: %s\n", used + 1, err);
    else if (count != NULL)
        *count = total;
    cb_disconnect(conn, ok);
    return ok;
}

/* ------------------------------------------------------------------------------------------ */
/* Orchestration and report                                                                    */

static bool cb_alloc_hists(struct cb_worker *w)
{
    w->hist = calloc(1, sizeof *w->hist);
    if (w->hist == NULL)
        return false;
    if (w->role == CB_ROLE_META)
        for (int i = 0; i < 3; i++)
            if ((w->op_hist[i] = calloc(1, sizeof *w->op_hist[i])) == NULL)
                return false;
    return true;
}

static void cb_print_hist_json(const char *prefix, const struct latency_hist *h)
{
    if (h->samples == 0) {
        printf(",\"%sp50_ms\":null,\"%sp99_ms\":null,\"%smax_ms\":null", prefix, prefix, prefix);
        return;
    }
    printf(",\"%sp50_ms\":%.3f,\"%sp99_ms\":%.3f,\"%smax_ms\":%.3f", prefix,
           cb_ms(hist_percentile(h, 0.50)), prefix, cb_ms(hist_percentile(h, 0.99)), prefix,
           cb_ms(h->max_ns));
}

static void cb_print_hist_line(const char *label, const struct latency_hist *h)
{
    if (h->samples == 0) {
        printf("  %-10s no samples\n", label);
        return;
    }
    printf("  %-10s p50 %.3f ms, p99 %.3f ms, max %.3f ms (%" PRIu64 " samples)\n", label,
           cb_ms(hist_percentile(h, 0.50)), cb_ms(hist_percentile(h, 0.99)), cb_ms(h->max_ns),
           h->samples);
}

static double cb_rate(uint64_t n, double s) { return s > 0 ? (double)n / s : 0.0; }

static void cb_print_nodes(const struct cb_options *opt)
{
    printf("nodes");
    for (unsigned i = 0; i < opt->n_nodes; i++)
        printf(" %u=%s:%d", i + 1, opt->nodes[i].host, opt->nodes[i].port);
    printf("\n");
}

static void meta_report(const struct cb_options *opt, struct cb_worker *workers, unsigned n,
                        double seconds, bool complete)
{
    struct latency_hist *all = calloc(4, sizeof *all);
    if (all == NULL)
        return;
    uint64_t triples = 0;
    for (unsigned i = 0; i < n; i++) {
        triples += workers[i].done;
        hist_merge(&all[0], workers[i].hist);
        for (int k = 0; k < 3; k++)
            hist_merge(&all[1 + k], workers[i].op_hist[k]);
    }
    printf("scenario %s: queue.declare (durable) + queue.bind (amq.direct) + queue.delete, "
           "%u connection(s) over %u node(s)\n", opt->scenario, n, opt->n_nodes);
    cb_print_nodes(opt);
    for (unsigned i = 0; i < n; i++)
        printf("  connection %u -> node %u: %" PRIu64 " triples\n", workers[i].index,
               workers[i].node + 1, workers[i].done);
    printf("  triples   %10" PRIu64 " in %7.2f s = %10.1f ops/s\n", triples, seconds,
           cb_rate(triples, seconds));
    cb_print_hist_line("triple", &all[0]);
    cb_print_hist_line("declare", &all[1]);
    cb_print_hist_line("bind", &all[2]);
    cb_print_hist_line("delete", &all[3]);
    if (!complete)
        printf("  INCOMPLETE: --count %" PRIu64 " not reached within %" PRIu64 " s\n",
               opt->count, opt->duration_s);
    printf("{\"scenario\":\"%s\",\"mode\":\"meta\",\"ops_per_s\":%.1f,\"triples\":%" PRIu64
           ",\"connections\":%u,\"nodes\":%u,\"seconds\":%.3f", opt->scenario,
           cb_rate(triples, seconds), triples, n, opt->n_nodes, seconds);
    cb_print_hist_json("", &all[0]);
    cb_print_hist_json("declare_", &all[1]);
    cb_print_hist_json("bind_", &all[2]);
    cb_print_hist_json("delete_", &all[3]);
    printf(",\"complete\":%s}\n", complete ? "true" : "false");
    fflush(stdout);
    free(all);
}

static uint64_t xpub_report(const struct cb_options *opt, struct cb_worker *workers,
                            unsigned n, double publish_s, double consume_s, bool complete,
                            uint64_t start_ns, int64_t left)
{
    struct latency_hist *h = calloc(2, sizeof *h);   /* 0: confirm, 1: end to end */
    if (h == NULL)
        return 0;
    uint64_t published = 0, acked = 0, nacked = 0, consumed = 0, returned = 0;
    for (unsigned i = 0; i < n; i++) {
        if (workers[i].role == CB_ROLE_PRODUCER) {
            published += workers[i].done;
            acked += workers[i].acked;
            nacked += workers[i].nacked;
            returned += workers[i].returned;
            hist_merge(&h[0], workers[i].hist);
        } else {
            consumed += workers[i].done;
            hist_merge(&h[1], workers[i].hist);
        }
    }
    /* --report-gaps: the longest confirm gap of any producer; failover = the earliest end,
     * over the producers, of their longest gap ending after the mark, minus the mark. */
    uint64_t gap = 0, gap_end = 0, fail_end = 0;
    for (unsigned i = 0; i < n; i++) {
        const struct cb_worker *w = &workers[i];
        if (w->role != CB_ROLE_PRODUCER)
            continue;
        if (w->gap_ns > gap) {
            gap = w->gap_ns;
            gap_end = w->gap_end_ns;
        }
        if (w->mark_gap_end_ns != 0 && (fail_end == 0 || w->mark_gap_end_ns < fail_end))
            fail_end = w->mark_gap_end_ns;
    }
    uint64_t mark = __atomic_load_n(&cb_mark_ns, __ATOMIC_RELAXED);
    bool confirming = opt->confirm_window > 0;
    /* A returned (unroutable) message is still confirmed; it does not count as published. */
    uint64_t good = confirming ? acked : published;
    good = good > returned ? good - returned : 0;
    double pub_rate = cb_rate(good, publish_s);
    printf("scenario %s: queue %s x%u (durable, %s) declared on node %u; %u producer(s) on "
           "node %u, %zu B %s, %s; %u consumer(s) on node %u, %s ack, prefetch %u\n",
           opt->scenario, opt->queue, opt->queues, opt->queue_type ? opt->queue_type : "classic",
           opt->queue_node, opt->producers, opt->publish_node,
           opt->size, opt->persistent ? "persistent" : "transient",
           confirming ? "confirms" : "no confirms", opt->consumers, opt->consume_node,
           opt->auto_ack ? "auto" : "manual", opt->prefetch);
    if (confirming)
        printf("  (confirm window %u)\n", opt->confirm_window);
    cb_print_nodes(opt);
    if (opt->producers > 0)
        printf("  published %10" PRIu64 " msg in %7.2f s = %10.1f msg/s %s (acked %" PRIu64
               ", nacked %" PRIu64 ")\n", published, publish_s, pub_rate,
               confirming ? "confirmed" : "sent", acked, nacked);
    if (opt->consumers > 0)
        printf("  consumed  %10" PRIu64 " msg in %7.2f s = %10.1f msg/s\n", consumed, consume_s,
               cb_rate(consumed, consume_s));
    if (opt->rate > 0)
        printf("  paced at %.1f msg/s in total\n", opt->rate);
    if (left >= 0)
        printf("  left      %10" PRId64 " msg in the queue(s) at the end\n", left);
    if (opt->report_gaps) {
        printf("  longest interval without a confirm: %.1f ms (ended %.3f s into the run)\n",
               cb_ms(gap), gap_end ? (double)(gap_end - start_ns) / NS_PER_S : 0.0);
        if (mark == 0)
            printf("  no SIGUSR1 mark received\n");
        else if (fail_end == 0)
            printf("  mark at %.3f s: NO confirm after it\n", (double)(mark - start_ns) / NS_PER_S);
        else
            printf("  failover  mark at %.3f s, first new confirm %.1f ms later\n",
                   (double)(mark - start_ns) / NS_PER_S, cb_ms(fail_end - mark));
    }
    if (returned > 0)
        printf("  UNROUTABLE: %" PRIu64 " publishes came back as basic.return (node %u does not "
               "route to the queue declared on node %u)\n", returned, opt->publish_node,
               opt->queue_node);
    if (confirming)
        cb_print_hist_line("confirm", &h[0]);
    cb_print_hist_line("e2e", &h[1]);
    if (!complete)
        printf("  INCOMPLETE: --count %" PRIu64 " not reached within %" PRIu64 " s\n",
               opt->count, opt->duration_s);
    printf("{\"scenario\":\"%s\",\"mode\":\"xpub\",\"published_per_s\":%.1f,\"sent_per_s\":%.1f"
           ",\"consumed_per_s\":%.1f,\"confirm_window\":%u,\"persistent\":%s",
           opt->scenario, pub_rate, cb_rate(published, publish_s), cb_rate(consumed, consume_s),
           opt->confirm_window, opt->persistent ? "true" : "false");
    cb_print_hist_json("confirm_", &h[0]);
    cb_print_hist_json("", &h[1]);
    printf(",\"published\":%" PRIu64 ",\"acked\":%" PRIu64 ",\"nacked\":%" PRIu64
           ",\"consumed\":%" PRIu64 ",\"returned\":%" PRIu64 ",\"publish_seconds\":%.3f"
           ",\"consume_seconds\":%.3f", published, acked, nacked, consumed, returned, publish_s,
           consume_s);
    printf(",\"queue_type\":\"%s\",\"queues\":%u,\"producers\":%u,\"consumers\":%u",
           opt->queue_type ? opt->queue_type : "classic", opt->queues, opt->producers,
           opt->consumers);
    if (opt->rate > 0)
        printf(",\"rate\":%.1f", opt->rate);
    if (left >= 0)
        printf(",\"left\":%" PRId64, left);
    else
        printf(",\"left\":null");
    if (opt->report_gaps) {
        printf(",\"max_gap_ms\":%.3f,\"max_gap_end_s\":%.3f", cb_ms(gap),
               gap_end ? (double)(gap_end - start_ns) / NS_PER_S : 0.0);
        if (mark != 0)
            printf(",\"mark_s\":%.3f", (double)(mark - start_ns) / NS_PER_S);
        else
            printf(",\"mark_s\":null");
        if (mark != 0 && fail_end != 0)
            printf(",\"failover_ms\":%.3f", cb_ms(fail_end - mark));
        else
            printf(",\"failover_ms\":null");
    }
    printf(",\"complete\":%s}\n", complete ? "true" : "false");
    fflush(stdout);
    free(h);
    return returned;
}

/* Waits until every worker is at the gate, opens it, supervises the run; returns the time
 * the stop was requested (0 if the run never started). Exits the process (status 3) when
 * workers ignore the stop for CB_HARD_GRACE_S. */
static uint64_t cb_supervise(struct cb_run *run, struct cb_worker *workers, unsigned n)
{
    const struct cb_options *opt = run->opt;
    uint64_t gate_deadline = cb_now_ns() + (CB_CONNECT_TIMEOUT_S * 3 + BENCH_CONN_RPC_S) *
                                               NS_PER_S;
    while (atomic_load(&run->ready) < n) {
        if (atomic_load(&run->failed) || cb_interrupted)
            return 0;
        if (cb_now_ns() > gate_deadline) {
            cb_fail(run, "workers did not connect in time");
            return 0;
        }
        cb_sleep_ms(1);
    }
    run->start_ns = cb_now_ns();
    atomic_store(&run->go, true);
    uint64_t deadline = run->start_ns + opt->duration_s * NS_PER_S;
    uint64_t stop_ns = 0, next_progress = run->start_ns + NS_PER_S;
    while (atomic_load(&run->finished) < n) {
        cb_sleep_ms(5);
        uint64_t now = cb_now_ns();
        if (cb_interrupted || now >= deadline)
            atomic_store(&run->stop, true);
        if (stop_ns == 0 && atomic_load(&run->stop))
            stop_ns = now;
        if (stop_ns != 0 && now > stop_ns + CB_HARD_GRACE_S * NS_PER_S) {
            fprintf(stderr, "cluster_bench: workers still blocked %d s after the stop "
                    "(broker not answering); giving up\n", CB_HARD_GRACE_S);
            fflush(NULL);
            _exit(3);
        }
        if (opt->progress && now >= next_progress) {
            uint64_t done = 0;
            for (unsigned i = 0; i < n; i++)
                done += __atomic_load_n(&workers[i].done, __ATOMIC_RELAXED);
            fprintf(stderr, "cluster_bench: %6.1f s %" PRIu64 " %s\n",
                    (double)(now - run->start_ns) / NS_PER_S, done,
                    opt->mode == CB_META ? "triples" : "published+consumed");
            next_progress += NS_PER_S;
        }
    }
    return stop_ns != 0 ? stop_ns : cb_now_ns();
}

static int cb_run_load(struct cb_options *opt)
{
    if (opt->mode == CB_XPUB && opt->consume_only) {
        /* Drain what is there: the queues must exist; nothing is declared or purged. */
        if (opt->count == 0) {
            uint64_t found = 0;
            if (!xpub_queues(opt, XQ_COUNT, &found))
                return 1;
            printf("consume-only: %" PRIu64 " message(s) in the queue(s) at start\n", found);
            if (found == 0) {
                fprintf(stderr, "cluster_bench: --consume-only: the queue(s) are empty\n");
                return 1;
            }
            opt->count = found;
        }
    } else if (opt->mode == CB_XPUB && !xpub_queues(opt, XQ_DECLARE, NULL)) {
        return 1;
    }
    unsigned n = opt->mode == CB_META ? opt->connections : opt->producers + opt->consumers;
    struct cb_worker *workers = calloc(n, sizeof *workers);
    if (workers == NULL) {
        fprintf(stderr, "cluster_bench: out of memory\n");
        return 1;
    }
    struct cb_run run = {.opt = opt};
    pthread_mutex_init(&run.error_lock, NULL);
    bool spawned = true;
    /* xpub: consumers first, so they are subscribed before the first message exists. */
    for (unsigned i = 0; i < n && spawned; i++) {
        struct cb_worker *w = &workers[i];
        w->run = &run;
        if (opt->mode == CB_META) {
            w->role = CB_ROLE_META;
            w->index = i;
            w->node = i % opt->n_nodes;
        } else if (i < opt->consumers) {
            w->role = CB_ROLE_CONSUMER;
            w->index = i;
            w->node = opt->consume_node - 1;
        } else {
            w->role = CB_ROLE_PRODUCER;
            w->index = i - opt->consumers;
            w->node = opt->publish_node - 1;
        }
        void *(*fn)(void *) = w->role == CB_ROLE_META ? meta_main
                              : w->role == CB_ROLE_PRODUCER ? producer_main : consumer_main;
        int rc = cb_alloc_hists(w) ? pthread_create(&w->thread, NULL, fn, w) : ENOMEM;
        if (rc != 0) {
            cb_fail(&run, "starting worker %u: %s", i, strerror(rc));
            spawned = false;
        } else {
            w->thread_started = true;
        }
    }
    uint64_t stop_ns = spawned ? cb_supervise(&run, workers, n) : 0;
    atomic_store(&run.stop, true);
    for (unsigned i = 0; i < n; i++)
        if (workers[i].thread_started)
            pthread_join(workers[i].thread, NULL);
    uint64_t end_ns = cb_now_ns();

    /* What is left in the queue(s): counted when kept, else from the delete. */
    int64_t left = -1;
    if (opt->mode == CB_XPUB) {
        uint64_t found = 0;
        if (xpub_queues(opt, opt->keep_queue ? XQ_COUNT : XQ_DELETE, &found))
            left = (int64_t)found;
    }

    int status = 0;
    if (atomic_load(&run.failed)) {
        fprintf(stderr, "cluster_bench: %s\n", run.error);
        status = 1;
    } else if (stop_ns == 0) {
        fprintf(stderr, "cluster_bench: interrupted before the run started\n");
        status = 1;
    }
    if (stop_ns != 0) {
        /* Rates over the run window; a --count run that finished early is timed to its
         * last event instead, so idle tail time does not dilute it. */
        uint64_t window_end = stop_ns < end_ns ? stop_ns : end_ns;
        uint64_t last_pub = run.start_ns, last_other = run.start_ns, units = 0, units2 = 0;
        for (unsigned i = 0; i < n; i++) {
            uint64_t *last = workers[i].role == CB_ROLE_PRODUCER ? &last_pub : &last_other;
            if (workers[i].last_event_ns > *last)
                *last = workers[i].last_event_ns;
            if (workers[i].role == CB_ROLE_CONSUMER)
                units2 += workers[i].done;
            else
                units += workers[i].done;
        }
        bool fixed = opt->count > 0;
        double pub_s = (double)((fixed ? last_pub : window_end) - run.start_ns) / NS_PER_S;
        double other_s = (double)((fixed ? last_other : window_end) - run.start_ns) / NS_PER_S;
        bool complete;
        if (opt->mode == CB_META) {
            complete = !fixed || units >= opt->count;
            meta_report(opt, workers, n, other_s, complete);
        } else {
            complete = !fixed || ((opt->producers == 0 || units >= opt->count) &&
                                  (opt->consumers == 0 || units2 >= opt->count));
            if (xpub_report(opt, workers, n, pub_s, other_s, complete, run.start_ns, left) > 0 &&
                status == 0)
                status = 5;
        }
        if (!complete && status == 0)
            status = 4;
    }
    if (opt->mode == CB_META)
        meta_cleanup(opt, workers, n);

    for (unsigned i = 0; i < n; i++) {
        free(workers[i].hist);
        for (int k = 0; k < 3; k++)
            free(workers[i].op_hist[k]);
    }
    free(workers);
    pthread_mutex_destroy(&run.error_lock);
    return status;
}

/* --mode ready: every node must accept a full login within --duration. */
static int cb_ready(const struct cb_options *opt)
{
    uint64_t start = cb_now_ns(), deadline = start + opt->duration_s * NS_PER_S;
    char err[512] = "";
    for (unsigned i = 0; i < opt->n_nodes; i++) {
        for (;;) {
            amqp_connection_state_t conn = cb_connect(opt, &opt->nodes[i], 0.5, err, sizeof err);
            if (conn != NULL) {
                cb_disconnect(conn, true);
                break;
            }
            if (cb_interrupted || cb_now_ns() >= deadline) {
                fprintf(stderr, "cluster_bench: node %u not ready after %" PRIu64 " s: %s\n",
                        i + 1, opt->duration_s, err);
                return 1;
            }
            cb_sleep_ms(50);
        }
    }
    printf("{\"ready_ms\":%.1f}\n", cb_ms(cb_now_ns() - start));
    return 0;
}

int main(int argc, char **argv)
{
    struct cb_options opt;
    int parsed = cb_parse_args(argc, argv, &opt);
    if (parsed == 2)
        return 0;
    if (parsed != 0)
        return 2;
    struct sigaction sa = {0};
    sa.sa_handler = cb_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    struct sigaction mark = {0};
    mark.sa_handler = cb_on_mark;
    sigemptyset(&mark.sa_mask);
    mark.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &mark, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (opt.mode == CB_READY)
        return cb_ready(&opt);
    return cb_run_load(&opt);
}
