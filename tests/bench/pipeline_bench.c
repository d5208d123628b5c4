/*
 * pipeline_bench.c - load generator for the two pipeline scenarios of issue 3, run against
 * Warren and RabbitMQ alike through librabbitmq (the same neutral client as warren_bench).
 *
 *   --scenario retry     (e) a retry pipeline built from dead-lettering and TTL:
 *
 *        producers --> exchange "work" (direct) --> queue "work" (x-dead-letter-exchange "retry")
 *                           ^                           |  consumers reject (requeue=false)
 *                           |                           v  the first K times they see an id
 *                  x-dead-letter-exchange "work"    exchange "retry" (fanout)
 *                           |                           |
 *                           +---- queue "retry.q" <-----+   x-message-ttl T ms
 *
 *        A consumer reads the x-death entry {queue "work", reason "rejected"} of each
 *        delivery: while its count is below K it rejects the message, which goes to
 *        retry.q, expires there after T ms and comes back to "work"; at count K it acks.
 *        The measured rate is completed ids (final acks) per second from the first publish
 *        to the last final ack; latency is per id, first publish to final ack (so at least
 *        K x T).
 *
 *   --scenario priority  (f) a queue with x-max-priority 10; producers publish with random
 *        priorities 0..9 while consumers (prefetch, manual ack) drain; the rate is
 *        consumed ids per second from the first publish to the last delivery; latency is
 *        publish to delivery, per priority and for the classes high (7..9) and low (0..2).
 *
 * Every message carries a unique id, so both scenarios verify delivery exactly once: after
 * the last id completed the consumers keep reading for a settle period (duplicates arriving
 * late are caught), then the queues are checked to be empty. Checks reported:
 *   missing      ids published but never completed / consumed
 *   duplicates   an id completed (or delivered, for priority) more than once
 *   xdeath_mismatch (retry)   the x-death count differed from the number of rejections
 *                the benchmark actually made for that id
 *   priority_mismatch (priority)  the delivered priority property was not the published one
 *   left_*       messages still in the queues at the end
 *   nacked       publishes the broker refused (basic.nack)
 *
 * Body layout (--size >= 32): [0,8) CLOCK_MONOTONIC publish time in ns, [8,16) id,
 * [16,24) run nonce, [24] priority, rest filler. Messages are transient.
 *
 * Boundedness: --count ids at most, --duration seconds at most (then the figures are
 * printed with "complete":false); every read has a timeout; threads that ignore the stop
 * for 60 s make the program exit with status 3.
 *
 * Exit status: 0 complete and verified; 1 broker or connection error; 2 bad usage;
 * 3 threads stuck after the stop; 4 --count not completed within --duration (figures
 * printed); 5 complete but verification failed (lost, duplicated or inconsistent messages;
 * figures printed).
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

#define PB_CHANNEL 1
#define PB_HEADER_BYTES 32
#define PB_MAX_WORKERS 256
#define PB_MAX_SIZE (16u * 1024 * 1024)
#define PB_MAX_COUNT 100000000ull
#define PB_MAX_WINDOW 100000u
#define PB_POLL_MS 100
#define PB_CONNECT_TIMEOUT_S 5
#define PB_CONFIRM_GRACE_S 30
#define PB_HARD_GRACE_S 60
#define PB_PRIORITIES 10
#define PB_HIGH_MIN 7      /* priorities 7..9 form the "high" class */
#define PB_LOW_MAX 2       /* priorities 0..2 form the "low" class */

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

enum pb_scenario { PB_RETRY, PB_PRIORITY };

struct pb_options {
    const char *host;
    int port;
    const char *user;
    const char *pass;
    const char *vhost;
    const char *prefix;
    const char *label;          /* scenario label in the JSON line */
    enum pb_scenario scenario;
    bool scenario_set;
    unsigned producers;
    unsigned consumers;
    size_t size;
    unsigned confirm_window;    /* 0 = no publisher confirms */
    unsigned prefetch;
    uint64_t count;
    uint64_t duration_s;
    unsigned retries;           /* K */
    unsigned ttl_ms;
    unsigned max_priority;
    unsigned settle_ms;
    bool settle_set;
    uint64_t seed;
    bool keep;
    bool progress;
};

static void pb_usage(FILE *out)
{
    fprintf(out,
        "usage: pipeline_bench --scenario retry|priority [options]   (e|f are aliases)\n"
        "  --host H (127.0.0.1) --port P (5672) --user U (guest) --pass P (guest) --vhost V (/)\n"
        "  --count N            ids to publish and complete (retry 20000, priority 100000)\n"
        "  --duration SECONDS   upper bound of the run (60)\n"
        "  --producers N (1) --consumers N (retry 2, priority 1)\n"
        "  --size BYTES (256, >= 32)  transient messages\n"
        "  --confirm WINDOW     publisher confirms, at most WINDOW unconfirmed (100; 0 = off)\n"
        "  --prefetch N         basic.qos per consumer (50)\n"
        "  --retries K          retry: reject an id K times, ack it the K+1th time (2)\n"
        "  --ttl MS             retry: x-message-ttl of retry.q (50)\n"
        "  --max-priority N     priority: x-max-priority of the queue (10)\n"
        "  --settle-ms MS       keep consuming this long after the last id to catch\n"
        "                       duplicates (retry: max(500, 4 x ttl); priority: 500)\n"
        "  --prefix P           prepended to every queue and exchange name ('')\n"
        "  --seed N             priority: random seed (default: from the clock)\n"
        "  --label NAME         scenario label in the JSON line (retry: e, priority: f)\n"
        "  --keep               do not delete queues and exchanges at the end\n"
        "  --progress           print progress to stderr every second\n"
        "exit: 0 ok and verified, 1 broker error, 2 usage, 3 stuck, 4 incomplete,\n"
        "      5 verification failed\n");
}

static bool pb_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
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

enum {
    OPT_HOST = 256, OPT_PORT, OPT_USER, OPT_PASS, OPT_VHOST, OPT_SCENARIO, OPT_COUNT,
    OPT_DURATION, OPT_PRODUCERS, OPT_CONSUMERS, OPT_SIZE, OPT_CONFIRM, OPT_PREFETCH,
    OPT_RETRIES, OPT_TTL, OPT_MAX_PRIORITY, OPT_SETTLE, OPT_PREFIX, OPT_SEED, OPT_LABEL,
    OPT_KEEP, OPT_PROGRESS, OPT_HELP
};

static const struct option pb_long_options[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"user", required_argument, NULL, OPT_USER},
    {"pass", required_argument, NULL, OPT_PASS},
    {"vhost", required_argument, NULL, OPT_VHOST},
    {"scenario", required_argument, NULL, OPT_SCENARIO},
    {"count", required_argument, NULL, OPT_COUNT},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"producers", required_argument, NULL, OPT_PRODUCERS},
    {"consumers", required_argument, NULL, OPT_CONSUMERS},
    {"size", required_argument, NULL, OPT_SIZE},
    {"confirm", required_argument, NULL, OPT_CONFIRM},
    {"prefetch", required_argument, NULL, OPT_PREFETCH},
    {"retries", required_argument, NULL, OPT_RETRIES},
    {"ttl", required_argument, NULL, OPT_TTL},
    {"max-priority", required_argument, NULL, OPT_MAX_PRIORITY},
    {"settle-ms", required_argument, NULL, OPT_SETTLE},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"seed", required_argument, NULL, OPT_SEED},
    {"label", required_argument, NULL, OPT_LABEL},
    {"keep", no_argument, NULL, OPT_KEEP},
    {"progress", no_argument, NULL, OPT_PROGRESS},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static bool pb_option_error(const char *name, const char *value)
{
    fprintf(stderr, "pipeline_bench: invalid value for --%s: '%s'\n", name, value ? value : "");
    return false;
}

static bool pb_apply_option(struct pb_options *opt, int id, const char *arg)
{
    uint64_t n = 0;
    switch (id) {
    case OPT_HOST: opt->host = arg; return true;
    case OPT_USER: opt->user = arg; return true;
    case OPT_PASS: opt->pass = arg; return true;
    case OPT_VHOST: opt->vhost = arg; return true;
    case OPT_LABEL: opt->label = arg; return true;
    case OPT_KEEP: opt->keep = true; return true;
    case OPT_PROGRESS: opt->progress = true; return true;
    case OPT_PREFIX:
        if (strlen(arg) > 200)
            return pb_option_error("prefix", arg);
        opt->prefix = arg;
        return true;
    case OPT_SCENARIO:
        /* "e" and "f" are the names for the two, as run.sh passes them. */
        if (strcmp(arg, "retry") == 0 || strcmp(arg, "e") == 0) opt->scenario = PB_RETRY;
        else if (strcmp(arg, "priority") == 0 || strcmp(arg, "f") == 0)
            opt->scenario = PB_PRIORITY;
        else return pb_option_error("scenario (retry|priority, or e|f)", arg);
        opt->scenario_set = true;
        return true;
    case OPT_PORT:
        if (!pb_parse_u64(arg, 1, 65535, &n)) return pb_option_error("port", arg);
        opt->port = (int)n;
        return true;
    case OPT_COUNT:
        if (!pb_parse_u64(arg, 1, PB_MAX_COUNT, &n)) return pb_option_error("count", arg);
        opt->count = n;
        return true;
    case OPT_DURATION:
        if (!pb_parse_u64(arg, 1, 86400, &n)) return pb_option_error("duration", arg);
        opt->duration_s = n;
        return true;
    case OPT_PRODUCERS:
        if (!pb_parse_u64(arg, 1, PB_MAX_WORKERS, &n)) return pb_option_error("producers", arg);
        opt->producers = (unsigned)n;
        return true;
    case OPT_CONSUMERS:
        if (!pb_parse_u64(arg, 1, PB_MAX_WORKERS, &n)) return pb_option_error("consumers", arg);
        opt->consumers = (unsigned)n;
        return true;
    case OPT_SIZE:
        if (!pb_parse_u64(arg, PB_HEADER_BYTES, PB_MAX_SIZE, &n))
            return pb_option_error("size (32 .. 16 MiB)", arg);
        opt->size = (size_t)n;
        return true;
    case OPT_CONFIRM:
        if (!pb_parse_u64(arg, 0, PB_MAX_WINDOW, &n)) return pb_option_error("confirm", arg);
        opt->confirm_window = (unsigned)n;
        return true;
    case OPT_PREFETCH:
        if (!pb_parse_u64(arg, 1, 65535, &n)) return pb_option_error("prefetch", arg);
        opt->prefetch = (unsigned)n;
        return true;
    case OPT_RETRIES:
        if (!pb_parse_u64(arg, 0, 100, &n)) return pb_option_error("retries", arg);
        opt->retries = (unsigned)n;
        return true;
    case OPT_TTL:
        if (!pb_parse_u64(arg, 0, 3600000, &n)) return pb_option_error("ttl", arg);
        opt->ttl_ms = (unsigned)n;
        return true;
    case OPT_MAX_PRIORITY:
        if (!pb_parse_u64(arg, 1, 255, &n)) return pb_option_error("max-priority", arg);
        opt->max_priority = (unsigned)n;
        return true;
    case OPT_SETTLE:
        if (!pb_parse_u64(arg, 0, 600000, &n)) return pb_option_error("settle-ms", arg);
        opt->settle_ms = (unsigned)n;
        opt->settle_set = true;
        return true;
    case OPT_SEED:
        if (!pb_parse_u64(arg, 0, UINT64_MAX, &n)) return pb_option_error("seed", arg);
        opt->seed = n;
        return true;
    default:
        return false;
    }
}

/* Returns 0 to run, 1 on bad usage, 2 when --help was printed. */
static int pb_parse_args(int argc, char **argv, struct pb_options *opt)
{
    *opt = (struct pb_options){
        .host = "127.0.0.1", .port = 5672, .user = "guest", .pass = "guest", .vhost = "/",
        .prefix = "", .producers = 1, .size = 256, .confirm_window = 100, .prefetch = 50,
        .duration_s = 60, .retries = 2, .ttl_ms = 50, .max_priority = 10,
    };
    unsigned consumers = 0;
    int id;
    opterr = 0;
    while ((id = getopt_long(argc, argv, "", pb_long_options, NULL)) != -1) {
        if (id == OPT_HELP) {
            pb_usage(stdout);
            return 2;
        }
        if (id == '?' || id == ':') {
            fprintf(stderr, "pipeline_bench: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            pb_usage(stderr);
            return 1;
        }
        if (!pb_apply_option(opt, id, optarg))
            return 1;
        if (id == OPT_CONSUMERS)
            consumers = opt->consumers;
    }
    if (optind < argc) {
        fprintf(stderr, "pipeline_bench: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (!opt->scenario_set) {
        fprintf(stderr, "pipeline_bench: --scenario retry|priority is required\n");
        return 1;
    }
    bool retry = opt->scenario == PB_RETRY;
    opt->consumers = consumers ? consumers : retry ? 2 : 1;
    if (opt->count == 0)
        opt->count = retry ? 20000 : 100000;
    if (opt->label == NULL)
        opt->label = retry ? "e" : "f";
    if (!opt->settle_set)
        opt->settle_ms = retry ? (opt->ttl_ms * 4 > 500 ? opt->ttl_ms * 4 : 500) : 500;
    if (!retry && opt->max_priority < PB_PRIORITIES - 1)
        fprintf(stderr, "pipeline_bench: note: priorities above %u are treated as %u by the "
                "broker\n", opt->max_priority, opt->max_priority);
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Clocks, random numbers                                                                      */

static uint64_t pb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static void pb_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static uint64_t pb_splitmix(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------------------------ */
/* Latency histogram: see bench_common.h. */

/* ------------------------------------------------------------------------------------------ */
/* Shared run state                                                                           */

struct pb_names {
    char work_exchange[256];    /* retry: producers publish here; retry.q dead-letters here */
    char work_queue[256];
    char retry_exchange[256];   /* work's dead-letter exchange */
    char retry_queue[256];
    char prio_queue[256];
};

struct pb_run {
    const struct pb_options *opt;
    struct pb_names names;
    uint64_t nonce;
    atomic_bool stop;
    atomic_bool failed;
    atomic_bool go;
    atomic_uint ready;
    atomic_uint finished;
    atomic_uint_fast64_t claimed;      /* ids handed out to producers */
    atomic_uint_fast64_t completed;    /* distinct ids completed (retry) or consumed */
    atomic_uint_fast64_t done_ns;      /* when the last id completed; 0 = not yet */
    _Atomic uint32_t *done;            /* per id: completions (retry) or deliveries */
    _Atomic uint32_t *rejects;         /* per id: rejections made (retry) */
    _Atomic uint8_t *priority;         /* per id: published priority (priority) */
    uint64_t start_ns;
    pthread_mutex_t error_lock;
    char error[512];
};

struct pb_worker {
    struct pb_run *run;
    unsigned index;
    bool is_producer;
    pthread_t thread;
    bool thread_started;
    uint64_t seed;
    /* producers */
    uint64_t published, acked, nacked, returned;
    /* consumers */
    uint64_t deliveries, rejects, completions, duplicates, foreign, redelivered;
    uint64_t xdeath_mismatch, priority_mismatch, guard_acks;
    uint64_t last_event_ns;
    struct latency_hist *hist;         /* retry: 1, priority: PB_PRIORITIES */
};

static volatile sig_atomic_t pb_interrupted;

static void pb_on_signal(int sig)
{
    (void)sig;
    pb_interrupted = 1;
}

static void pb_fail(struct pb_run *run, const char *fmt, ...)
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

static bool pb_stopping(struct pb_run *run) { return atomic_load(&run->stop); }

/* ------------------------------------------------------------------------------------------ */
/* Connections                                                                                */

/* bench_describe_reply() and bench_reply_ok(): see bench_common.h. */

static amqp_connection_state_t pb_connect(const struct pb_options *opt, char *err,
                                          size_t errlen)
{
    return bench_open(opt->host, opt->port, opt->vhost, opt->user, opt->pass, PB_CONNECT_TIMEOUT_S, err, errlen);
}

static void pb_disconnect(amqp_connection_state_t conn, bool healthy) { bench_close(conn, healthy); }

/* After the broker closed the channel (e.g. 404 on a delete), acknowledge the close and
 * open the channel again, so the setup connection can go on. */
static bool pb_reopen_channel(amqp_connection_state_t conn, char *err, size_t errlen)
{
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION &&
        reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_ok_t close_ok = {0};
        amqp_send_method(conn, PB_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
        amqp_channel_open(conn, PB_CHANNEL);
        return bench_reply_ok(conn, "channel.open", err, errlen);
    }
    char detail[384];
    bench_describe_reply(reply, detail, sizeof detail);
    snprintf(err, errlen, "%s", detail);
    return false;
}

/* Deletes a queue or an exchange that may not exist; only connection-level errors count. */
static bool pb_delete(amqp_connection_state_t conn, bool queue, const char *name, char *err,
                      size_t errlen)
{
    if (queue)
        amqp_queue_delete(conn, PB_CHANNEL, amqp_cstring_bytes(name), 0, 0);
    else
        amqp_exchange_delete(conn, PB_CHANNEL, amqp_cstring_bytes(name), 0);
    if (amqp_get_rpc_reply(conn).reply_type == AMQP_RESPONSE_NORMAL)
        return true;
    return pb_reopen_channel(conn, err, errlen);
}

static amqp_table_entry_t pb_int_arg(const char *key, int32_t value)
{
    amqp_table_entry_t e = {.key = amqp_cstring_bytes(key)};
    e.value.kind = AMQP_FIELD_KIND_I32;
    e.value.value.i32 = value;
    return e;
}

static amqp_table_entry_t pb_str_arg(const char *key, const char *value)
{
    amqp_table_entry_t e = {.key = amqp_cstring_bytes(key)};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(value);
    return e;
}

static bool pb_declare_queue(amqp_connection_state_t conn, const char *name,
                             amqp_table_entry_t *args, int nargs, char *err, size_t errlen)
{
    amqp_table_t table = {.num_entries = nargs, .entries = args};
    amqp_queue_declare(conn, PB_CHANNEL, amqp_cstring_bytes(name), 0, 0, 0, 0, table);
    char what[300];
    snprintf(what, sizeof what, "queue.declare %s", name);
    return bench_reply_ok(conn, what, err, errlen);
}

static bool pb_declare_exchange(amqp_connection_state_t conn, const char *name,
                                const char *type, char *err, size_t errlen)
{
    amqp_exchange_declare(conn, PB_CHANNEL, amqp_cstring_bytes(name), amqp_cstring_bytes(type),
                          0, 0, 0, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "exchange.declare %s", name);
    return bench_reply_ok(conn, what, err, errlen);
}

static bool pb_bind(amqp_connection_state_t conn, const char *queue, const char *exchange,
                    const char *key, char *err, size_t errlen)
{
    amqp_queue_bind(conn, PB_CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    char what[600];
    snprintf(what, sizeof what, "queue.bind %s -> %s", queue, exchange);
    return bench_reply_ok(conn, what, err, errlen);
}

static void pb_make_names(const struct pb_options *opt, struct pb_names *n)
{
    snprintf(n->work_exchange, sizeof n->work_exchange, "%swork", opt->prefix);
    snprintf(n->work_queue, sizeof n->work_queue, "%swork", opt->prefix);
    snprintf(n->retry_exchange, sizeof n->retry_exchange, "%sretry", opt->prefix);
    snprintf(n->retry_queue, sizeof n->retry_queue, "%sretry.q", opt->prefix);
    snprintf(n->prio_queue, sizeof n->prio_queue, "%sprio", opt->prefix);
}

/* Removes what an earlier run may have left (arguments could differ), then declares the
 * scenario's topology afresh. */
static bool pb_setup(const struct pb_run *run, char *err, size_t errlen)
{
    const struct pb_options *opt = run->opt;
    const struct pb_names *n = &run->names;
    amqp_connection_state_t conn = pb_connect(opt, err, errlen);
    if (conn == NULL)
        return false;
    bool ok;
    if (opt->scenario == PB_RETRY) {
        ok = pb_delete(conn, true, n->work_queue, err, errlen) &&
             pb_delete(conn, true, n->retry_queue, err, errlen) &&
             pb_delete(conn, false, n->work_exchange, err, errlen) &&
             pb_delete(conn, false, n->retry_exchange, err, errlen) &&
             pb_declare_exchange(conn, n->work_exchange, "direct", err, errlen) &&
             pb_declare_exchange(conn, n->retry_exchange, "fanout", err, errlen);
        if (ok) {
            amqp_table_entry_t work_args[] = {
                pb_str_arg("x-dead-letter-exchange", n->retry_exchange),
            };
            amqp_table_entry_t retry_args[] = {
                pb_int_arg("x-message-ttl", (int32_t)opt->ttl_ms),
                pb_str_arg("x-dead-letter-exchange", n->work_exchange),
            };
            ok = pb_declare_queue(conn, n->work_queue, work_args, 1, err, errlen) &&
                 pb_declare_queue(conn, n->retry_queue, retry_args, 2, err, errlen) &&
                 pb_bind(conn, n->work_queue, n->work_exchange, n->work_queue, err, errlen) &&
                 pb_bind(conn, n->retry_queue, n->retry_exchange, "", err, errlen);
        }
    } else {
        amqp_table_entry_t args[] = {pb_int_arg("x-max-priority", (int32_t)opt->max_priority)};
        ok = pb_delete(conn, true, n->prio_queue, err, errlen) &&
             pb_declare_queue(conn, n->prio_queue, args, 1, err, errlen);
    }
    pb_disconnect(conn, ok);
    return ok;
}

/* Messages ready in a queue (passive declare); -1 when it cannot be asked. */
static int64_t pb_queue_depth(amqp_connection_state_t conn, const char *name)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, PB_CHANNEL, amqp_cstring_bytes(name),
                                                     1, 0, 0, 0, amqp_empty_table);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL || ok == NULL) {
        char err[256];
        pb_reopen_channel(conn, err, sizeof err);
        return -1;
    }
    return ok->message_count;
}

static void pb_teardown(const struct pb_run *run)
{
    const struct pb_options *opt = run->opt;
    const struct pb_names *n = &run->names;
    char err[512];
    amqp_connection_state_t conn = pb_connect(opt, err, sizeof err);
    if (conn == NULL) {
        fprintf(stderr, "pipeline_bench: cleanup skipped: %s\n", err);
        return;
    }
    bool ok;
    if (opt->scenario == PB_RETRY)
        ok = pb_delete(conn, true, n->work_queue, err, sizeof err) &&
             pb_delete(conn, true, n->retry_queue, err, sizeof err) &&
             pb_delete(conn, false, n->work_exchange, err, sizeof err) &&
             pb_delete(conn, false, n->retry_exchange, err, sizeof err);
    else
        ok = pb_delete(conn, true, n->prio_queue, err, sizeof err);
    if (!ok)
        fprintf(stderr, "pipeline_bench: cleanup: %s\n", err);
    pb_disconnect(conn, ok);
}

static bool pb_wait_for_gate(struct pb_run *run)
{
    atomic_fetch_add(&run->ready, 1);
    while (!atomic_load(&run->go)) {
        if (pb_stopping(run))
            return false;
        pb_sleep_ms(1);
    }
    return !pb_stopping(run);
}

/* ------------------------------------------------------------------------------------------ */
/* Producers                                                                                  */

struct confirm_window {
    uint64_t next_tag;
    uint64_t oldest;
    size_t capacity;
    uint8_t *settled;
    uint64_t acked;
    uint64_t nacked;
};

static bool confirm_window_full(const struct confirm_window *cw)
{
    return cw->next_tag - cw->oldest >= cw->capacity;
}

static void confirm_settle_one(struct confirm_window *cw, uint64_t tag, bool ack)
{
    if (tag < cw->oldest || tag >= cw->next_tag || cw->settled[tag % cw->capacity])
        return;
    cw->settled[tag % cw->capacity] = 1;
    if (ack)
        cw->acked++;
    else
        cw->nacked++;
}

static void confirm_settle(struct confirm_window *cw, uint64_t tag, bool multiple, bool ack)
{
    if (multiple) {
        uint64_t last = tag < cw->next_tag ? tag : cw->next_tag - 1;
        for (uint64_t t = cw->oldest; t <= last; t++)
            confirm_settle_one(cw, t, ack);
    } else {
        confirm_settle_one(cw, tag, ack);
    }
    while (cw->oldest < cw->next_tag && cw->settled[cw->oldest % cw->capacity]) {
        cw->settled[cw->oldest % cw->capacity] = 0;
        cw->oldest++;
    }
}

/* 1 = a frame was handled, 0 = timeout, -1 = error (reported). */
static int producer_read_frame(struct pb_worker *w, amqp_connection_state_t conn,
                               struct confirm_window *cw, struct timeval *timeout)
{
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame_noblock(conn, &frame, timeout);
    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK) {
        pb_fail(w->run, "producer %u: reading confirms: %s", w->index, amqp_error_string2(rc));
        return -1;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return 1;
    switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *ack = frame.payload.method.decoded;
        if (cw != NULL)
            confirm_settle(cw, ack->delivery_tag, ack->multiple, true);
        return 1;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *nack = frame.payload.method.decoded;
        if (cw != NULL)
            confirm_settle(cw, nack->delivery_tag, nack->multiple, false);
        return 1;
    }
    case AMQP_BASIC_RETURN_METHOD:
        w->returned++;
        return 1;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = frame.payload.method.decoded;
        pb_fail(w->run, "producer %u: channel closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = frame.payload.method.decoded;
        pb_fail(w->run, "producer %u: connection closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return -1;
    }
    default:
        return 1;
    }
}

static bool producer_drain_buffered(struct pb_worker *w, amqp_connection_state_t conn,
                                    struct confirm_window *cw)
{
    while (amqp_frames_enqueued(conn) || amqp_data_in_buffer(conn)) {
        struct timeval zero = {0, 0};
        int got = producer_read_frame(w, conn, cw, &zero);
        if (got < 0)
            return false;
        if (got == 0)
            break;
    }
    return true;
}

static bool producer_loop(struct pb_worker *w, amqp_connection_state_t conn)
{
    struct pb_run *run = w->run;
    const struct pb_options *opt = run->opt;
    bool confirming = opt->confirm_window > 0;
    struct confirm_window cw = {.next_tag = 1, .oldest = 1, .capacity = opt->confirm_window};
    uint8_t *body = malloc(opt->size);
    if (confirming)
        cw.settled = calloc(cw.capacity, 1);
    if (body == NULL || (confirming && cw.settled == NULL)) {
        free(body);
        free(cw.settled);
        pb_fail(run, "producer %u: out of memory", w->index);
        return false;
    }
    memset(body, 'p', opt->size);
    memcpy(body + 16, &run->nonce, sizeof run->nonce);

    bool retry = opt->scenario == PB_RETRY;
    amqp_bytes_t exchange = amqp_cstring_bytes(retry ? run->names.work_exchange : "");
    amqp_bytes_t routing_key = amqp_cstring_bytes(retry ? run->names.work_queue
                                                        : run->names.prio_queue);
    amqp_basic_properties_t props = {0};
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = AMQP_DELIVERY_NONPERSISTENT;
    amqp_bytes_t payload = {.len = opt->size, .bytes = body};
    bool ok = true;

    while (ok && !pb_stopping(run)) {
        while (confirming && confirm_window_full(&cw) && !pb_stopping(run)) {
            struct timeval tv = {.tv_sec = 0, .tv_usec = PB_POLL_MS * 1000};
            if (producer_read_frame(w, conn, &cw, &tv) < 0) {
                ok = false;
                break;
            }
        }
        if (!ok || pb_stopping(run))
            break;
        uint64_t id = atomic_fetch_add(&run->claimed, 1);
        if (id >= opt->count)
            break;
        uint8_t prio = 0;
        if (!retry) {
            prio = (uint8_t)(pb_splitmix(&w->seed) % PB_PRIORITIES);
            atomic_store_explicit(&run->priority[id], prio, memory_order_relaxed);
            props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_PRIORITY_FLAG;
            props.priority = prio;
        }
        body[24] = prio;
        memcpy(body + 8, &id, sizeof id);
        uint64_t stamp = pb_now_ns();
        memcpy(body, &stamp, sizeof stamp);
        int rc = amqp_basic_publish(conn, PB_CHANNEL, exchange, routing_key, 0, 0, &props,
                                    payload);
        if (rc != AMQP_STATUS_OK) {
            pb_fail(run, "producer %u: publish: %s", w->index, amqp_error_string2(rc));
            ok = false;
            break;
        }
        w->published++;
        if (confirming)
            cw.next_tag++;
        ok = producer_drain_buffered(w, conn, confirming ? &cw : NULL);
    }
    if (ok && confirming) {
        uint64_t deadline = pb_now_ns() + PB_CONFIRM_GRACE_S * NS_PER_S;
        while (cw.next_tag != cw.oldest) {
            if (atomic_load(&run->failed)) {
                ok = false;
                break;
            }
            if (pb_now_ns() > deadline) {
                pb_fail(run, "producer %u: %" PRIu64 " confirms still missing after %d s",
                        w->index, cw.next_tag - cw.oldest, PB_CONFIRM_GRACE_S);
                ok = false;
                break;
            }
            struct timeval tv = {.tv_sec = 0, .tv_usec = PB_POLL_MS * 1000};
            if (producer_read_frame(w, conn, &cw, &tv) < 0)
                ok = false;
        }
    }
    w->last_event_ns = pb_now_ns();
    w->acked = cw.acked;
    w->nacked = cw.nacked;
    free(cw.settled);
    free(body);
    return ok;
}

static void *producer_main(void *arg)
{
    struct pb_worker *w = arg;
    struct pb_run *run = w->run;
    char err[512];
    amqp_connection_state_t conn = pb_connect(run->opt, err, sizeof err);
    bool ok = conn != NULL;
    if (!ok)
        pb_fail(run, "producer %u: %s", w->index, err);
    if (ok && run->opt->confirm_window > 0) {
        amqp_confirm_select(conn, PB_CHANNEL);
        if (!bench_reply_ok(conn, "confirm.select", err, sizeof err)) {
            pb_fail(run, "producer %u: %s", w->index, err);
            ok = false;
        }
    }
    if (ok && pb_wait_for_gate(run))
        ok = producer_loop(w, conn);
    pb_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Consumers                                                                                  */

static bool pb_bytes_is(amqp_bytes_t b, const char *s)
{
    size_t n = strlen(s);
    return b.len == n && memcmp(b.bytes, s, n) == 0;
}

static bool pb_field_int(const amqp_field_value_t *v, int64_t *out)
{
    switch (v->kind) {
    case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
    case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
    case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
    case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
    case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
    case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
    case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
    case AMQP_FIELD_KIND_U64: *out = (int64_t)v->value.u64; return true;
    default: return false;
    }
}

static const amqp_field_value_t *pb_table_get(const amqp_table_t *t, const char *key)
{
    for (int i = 0; i < t->num_entries; i++)
        if (pb_bytes_is(t->entries[i].key, key))
            return &t->entries[i].value;
    return NULL;
}

/* The count of the x-death entry {queue = work queue, reason = "rejected"}; 0 when the
 * message has no such entry. */
static int64_t pb_xdeath_rejected(const amqp_basic_properties_t *props, const char *queue)
{
    if (!(props->_flags & AMQP_BASIC_HEADERS_FLAG))
        return 0;
    const amqp_field_value_t *deaths = pb_table_get(&props->headers, "x-death");
    if (deaths == NULL || deaths->kind != AMQP_FIELD_KIND_ARRAY)
        return 0;
    for (int i = 0; i < deaths->value.array.num_entries; i++) {
        const amqp_field_value_t *e = &deaths->value.array.entries[i];
        if (e->kind != AMQP_FIELD_KIND_TABLE)
            continue;
        const amqp_field_value_t *q = pb_table_get(&e->value.table, "queue");
        const amqp_field_value_t *r = pb_table_get(&e->value.table, "reason");
        const amqp_field_value_t *c = pb_table_get(&e->value.table, "count");
        int64_t count;
        if (q == NULL || r == NULL || c == NULL ||
            (q->kind != AMQP_FIELD_KIND_UTF8 && q->kind != AMQP_FIELD_KIND_BYTES) ||
            (r->kind != AMQP_FIELD_KIND_UTF8 && r->kind != AMQP_FIELD_KIND_BYTES) ||
            !pb_field_int(c, &count))
            continue;
        if (pb_bytes_is(q->value.bytes, queue) && pb_bytes_is(r->value.bytes, "rejected"))
            return count;
    }
    return 0;
}

/* Marks one more id as completed; the consumer that completes the last one stamps the
 * end of the measured window. */
static void pb_count_completion(struct pb_worker *w, uint64_t now)
{
    struct pb_run *run = w->run;
    w->completions++;
    if (atomic_fetch_add(&run->completed, 1) + 1 == run->opt->count)
        atomic_store(&run->done_ns, now);
}

/* Handles one delivery; returns the settlement: 1 ack, 0 reject (requeue=false). */
static int consumer_handle(struct pb_worker *w, const amqp_envelope_t *env, uint64_t now)
{
    struct pb_run *run = w->run;
    const struct pb_options *opt = run->opt;
    const amqp_bytes_t *body = &env->message.body;
    uint64_t stamp, id, nonce;
    w->deliveries++;
    w->last_event_ns = now;
    if (env->redelivered)
        w->redelivered++;
    if (body->len < PB_HEADER_BYTES) {
        w->foreign++;
        return 1;
    }
    memcpy(&stamp, body->bytes, 8);
    memcpy(&id, (const uint8_t *)body->bytes + 8, 8);
    memcpy(&nonce, (const uint8_t *)body->bytes + 16, 8);
    uint8_t prio = ((const uint8_t *)body->bytes)[24];
    if (nonce != run->nonce || id >= opt->count) {
        w->foreign++;
        return 1;
    }
    uint64_t latency = stamp <= now ? now - stamp : 0;

    if (opt->scenario == PB_PRIORITY) {
        const amqp_basic_properties_t *p = &env->message.properties;
        uint8_t published = atomic_load_explicit(&run->priority[id], memory_order_relaxed);
        if (prio != published || !(p->_flags & AMQP_BASIC_PRIORITY_FLAG) ||
            p->priority != published)
            w->priority_mismatch++;
        if (atomic_fetch_add(&run->done[id], 1) == 0) {
            hist_record(&w->hist[prio < PB_PRIORITIES ? prio : PB_PRIORITIES - 1], latency);
            pb_count_completion(w, now);
        } else {
            w->duplicates++;
        }
        return 1;
    }

    int64_t xdeath = pb_xdeath_rejected(&env->message.properties, run->names.work_queue);
    uint32_t rejected = atomic_load(&run->rejects[id]);
    if (xdeath != (int64_t)rejected)
        w->xdeath_mismatch++;
    if (atomic_load(&run->done[id]) > 0) {
        /* A copy of an id that already completed: ack it so it does not cycle. */
        atomic_fetch_add(&run->done[id], 1);
        w->duplicates++;
        return 1;
    }
    bool final = xdeath >= (int64_t)opt->retries;
    if (!final && rejected >= opt->retries + 2u) {
        /* The broker's count is not advancing: stop the cycle (reported as mismatches). */
        final = true;
        w->guard_acks++;
    }
    if (!final) {
        atomic_fetch_add(&run->rejects[id], 1);
        w->rejects++;
        return 0;
    }
    if (atomic_fetch_add(&run->done[id], 1) == 0) {
        hist_record(&w->hist[0], latency);
        pb_count_completion(w, now);
    } else {
        w->duplicates++;
    }
    return 1;
}

static bool consumer_other_frame(struct pb_worker *w, amqp_connection_state_t conn)
{
    amqp_frame_t frame;
    struct timeval tv = {.tv_sec = 1};
    int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return true;
    if (rc != AMQP_STATUS_OK) {
        pb_fail(w->run, "consumer %u: %s", w->index, amqp_error_string2(rc));
        return false;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return true;
    switch (frame.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = frame.payload.method.decoded;
        pb_fail(w->run, "consumer %u: channel closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return false;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = frame.payload.method.decoded;
        pb_fail(w->run, "consumer %u: connection closed by broker: %u %.*s", w->index,
                c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return false;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        pb_fail(w->run, "consumer %u: consumer cancelled by broker", w->index);
        return false;
    default:
        return true;
    }
}

static bool consumer_loop(struct pb_worker *w, amqp_connection_state_t conn)
{
    struct pb_run *run = w->run;
    while (!pb_stopping(run)) {
        amqp_envelope_t env;
        struct timeval tv = {.tv_sec = 0, .tv_usec = PB_POLL_MS * 1000};
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
            pb_fail(run, "consumer %u: %s", w->index, detail);
            return false;
        }
        int settle = consumer_handle(w, &env, pb_now_ns());
        uint64_t tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        int rc = settle ? amqp_basic_ack(conn, PB_CHANNEL, tag, 0)
                        : amqp_basic_reject(conn, PB_CHANNEL, tag, 0);
        if (rc != AMQP_STATUS_OK) {
            pb_fail(run, "consumer %u: %s: %s", w->index, settle ? "ack" : "reject",
                    amqp_error_string2(rc));
            return false;
        }
    }
    return true;
}

static void *consumer_main(void *arg)
{
    struct pb_worker *w = arg;
    struct pb_run *run = w->run;
    const struct pb_options *opt = run->opt;
    char err[512];
    amqp_connection_state_t conn = pb_connect(opt, err, sizeof err);
    bool ok = conn != NULL;
    if (!ok)
        pb_fail(run, "consumer %u: %s", w->index, err);
    if (ok) {
        amqp_basic_qos(conn, PB_CHANNEL, 0, (uint16_t)opt->prefetch, 0);
        ok = bench_reply_ok(conn, "basic.qos", err, sizeof err);
    }
    if (ok) {
        const char *queue = opt->scenario == PB_RETRY ? run->names.work_queue
                                                      : run->names.prio_queue;
        amqp_basic_consume(conn, PB_CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0,
                           0, amqp_empty_table);
        ok = bench_reply_ok(conn, "basic.consume", err, sizeof err);
    }
    if (conn != NULL && !ok)
        pb_fail(run, "consumer %u: %s", w->index, err);
    if (ok && pb_wait_for_gate(run))
        ok = consumer_loop(w, conn);
    pb_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Results                                                                                    */

struct pb_totals {
    uint64_t published, acked, nacked, returned;
    uint64_t deliveries, rejects, completions, duplicates, foreign, redelivered;
    uint64_t xdeath_mismatch, priority_mismatch, guard_acks;
    uint64_t missing, multi;           /* ids never done; ids done more than once */
    uint64_t wrong_rejects;            /* retry: completed ids rejected != K times */
    int64_t left[2];                   /* queue depths after the run (-1 = unknown) */
    double seconds, publish_s;
    struct latency_hist all, high, low;
    struct latency_hist by_prio[PB_PRIORITIES];
};

static double pb_rate(uint64_t n, double s) { return s > 0 ? (double)n / s : 0; }

static void pb_collect(const struct pb_run *run, const struct pb_worker *workers,
                       unsigned nworkers, uint64_t end_ns, struct pb_totals *t)
{
    const struct pb_options *opt = run->opt;
    uint64_t last_pub = run->start_ns;
    for (unsigned i = 0; i < nworkers; i++) {
        const struct pb_worker *w = &workers[i];
        t->published += w->published;
        t->acked += w->acked;
        t->nacked += w->nacked;
        t->returned += w->returned;
        t->deliveries += w->deliveries;
        t->rejects += w->rejects;
        t->completions += w->completions;
        t->duplicates += w->duplicates;
        t->foreign += w->foreign;
        t->redelivered += w->redelivered;
        t->xdeath_mismatch += w->xdeath_mismatch;
        t->priority_mismatch += w->priority_mismatch;
        t->guard_acks += w->guard_acks;
        if (w->is_producer && w->last_event_ns > last_pub)
            last_pub = w->last_event_ns;
        if (w->hist == NULL)
            continue;
        unsigned nh = opt->scenario == PB_RETRY ? 1 : PB_PRIORITIES;
        for (unsigned p = 0; p < nh; p++) {
            hist_merge(&t->all, &w->hist[p]);
            if (opt->scenario == PB_PRIORITY) {
                hist_merge(&t->by_prio[p], &w->hist[p]);
                if (p >= PB_HIGH_MIN)
                    hist_merge(&t->high, &w->hist[p]);
                if (p <= PB_LOW_MAX)
                    hist_merge(&t->low, &w->hist[p]);
            }
        }
    }
    uint64_t published_ids = t->published;
    for (uint64_t id = 0; id < opt->count; id++) {
        uint32_t d = atomic_load(&run->done[id]);
        if (d == 0 && id < published_ids)
            t->missing++;
        if (d > 1)
            t->multi++;
        if (opt->scenario == PB_RETRY && d > 0 && atomic_load(&run->rejects[id]) != opt->retries)
            t->wrong_rejects++;
    }
    uint64_t done = atomic_load(&run->done_ns);
    uint64_t stop = done ? done : end_ns;
    t->seconds = (double)(stop - run->start_ns) / NS_PER_S;
    t->publish_s = (double)(last_pub - run->start_ns) / NS_PER_S;
}

static void pb_json_ms(const char *key, const struct latency_hist *h, double q)
{
    if (h->samples == 0)
        printf(",\"%s\":null", key);
    else
        printf(",\"%s\":%.3f", key, (double)hist_percentile(h, q) / NS_PER_MS);
}

static void pb_print_lat(const char *name, const struct latency_hist *h)
{
    if (h->samples == 0) {
        printf("  latency   %-9s no samples\n", name);
        return;
    }
    printf("  latency   %-9s p50 %9.3f ms, p99 %9.3f ms, max %9.3f ms (%" PRIu64 ")\n", name,
           (double)hist_percentile(h, 0.50) / NS_PER_MS,
           (double)hist_percentile(h, 0.99) / NS_PER_MS, (double)h->max_ns / NS_PER_MS,
           h->samples);
}

static void pb_report(const struct pb_run *run, const struct pb_totals *t, bool complete,
                      bool verified)
{
    const struct pb_options *opt = run->opt;
    bool retry = opt->scenario == PB_RETRY;
    uint64_t unique = t->completions;   /* distinct ids: each is counted once */
    if (retry)
        printf("scenario %s (retry): %u producer(s), %u consumer(s), %" PRIu64 " ids, %zu B "
               "transient, confirm window %u, prefetch %u, K=%u rejections, retry TTL %u ms\n",
               opt->label, opt->producers, opt->consumers, opt->count, opt->size,
               opt->confirm_window, opt->prefetch, opt->retries, opt->ttl_ms);
    else
        printf("scenario %s (priority): %u producer(s), %u consumer(s), %" PRIu64 " ids, %zu B "
               "transient, confirm window %u, prefetch %u, x-max-priority %u, priorities 0..9\n",
               opt->label, opt->producers, opt->consumers, opt->count, opt->size,
               opt->confirm_window, opt->prefetch, opt->max_priority);
    printf("  published %10" PRIu64 " msg in %7.2f s = %10.1f msg/s (acked %" PRIu64
           ", nacked %" PRIu64 ")\n", t->published, t->publish_s,
           pb_rate(t->published, t->publish_s), t->acked, t->nacked);
    printf("  %s %10" PRIu64 " ids in %7.2f s = %10.1f msg/s (%" PRIu64 " deliveries%s)\n",
           retry ? "completed" : "consumed ", unique, t->seconds, pb_rate(unique, t->seconds),
           t->deliveries, retry ? ", rejects counted below" : "");
    if (retry) {
        pb_print_lat("e2e", &t->all);
    } else {
        pb_print_lat("all", &t->all);
        pb_print_lat("high 7-9", &t->high);
        pb_print_lat("low 0-2", &t->low);
        for (unsigned p = PB_PRIORITIES; p-- > 0;) {
            char name[16];
            snprintf(name, sizeof name, "prio %u", p);
            pb_print_lat(name, &t->by_prio[p]);
        }
    }
    printf("  verify    missing %" PRIu64 ", duplicates %" PRIu64 " (ids %" PRIu64 ")",
           t->missing, t->duplicates, t->multi);
    if (retry)
        printf(", rejects %" PRIu64 " (expected %" PRIu64 "), x-death mismatches %" PRIu64
               ", ids with wrong reject count %" PRIu64, t->rejects,
               (uint64_t)opt->retries * unique, t->xdeath_mismatch, t->wrong_rejects);
    else
        printf(", priority mismatches %" PRIu64, t->priority_mismatch);
    printf(", redelivered %" PRIu64 ", foreign %" PRIu64 ", left in queues %" PRId64,
           t->redelivered, t->foreign, t->left[0]);
    if (retry)
        printf("/%" PRId64, t->left[1]);
    printf(" -> %s\n", verified ? "OK" : "FAILED");
    if (!complete)
        printf("  INCOMPLETE: %" PRIu64 " of %" PRIu64 " ids done within %" PRIu64 " s\n",
               unique, opt->count, opt->duration_s);

    printf("{\"scenario\":\"%s\",\"kind\":\"%s\"", opt->label, retry ? "retry" : "priority");
    printf(",\"%s\":%.1f,\"published_per_s\":%.1f", retry ? "completed_per_s" : "consumed_per_s",
           pb_rate(unique, t->seconds), pb_rate(t->published, t->publish_s));
    pb_json_ms("p50_ms", &t->all, 0.50);
    pb_json_ms("p99_ms", &t->all, 0.99);
    pb_json_ms("max_ms", &t->all, 1.0);
    if (!retry) {
        pb_json_ms("high_p50_ms", &t->high, 0.50);
        pb_json_ms("high_p99_ms", &t->high, 0.99);
        pb_json_ms("low_p50_ms", &t->low, 0.50);
        pb_json_ms("low_p99_ms", &t->low, 0.99);
        printf(",\"by_priority\":[");
        for (unsigned p = 0; p < PB_PRIORITIES; p++) {
            printf("%s{\"priority\":%u,\"n\":%" PRIu64, p ? "," : "", p, t->by_prio[p].samples);
            pb_json_ms("p50_ms", &t->by_prio[p], 0.50);
            pb_json_ms("p99_ms", &t->by_prio[p], 0.99);
            printf("}");
        }
        printf("]");
    }
    printf(",\"count\":%" PRIu64 ",\"published\":%" PRIu64 ",\"acked\":%" PRIu64
           ",\"nacked\":%" PRIu64 ",\"%s\":%" PRIu64 ",\"deliveries\":%" PRIu64,
           opt->count, t->published, t->acked, t->nacked, retry ? "completed" : "consumed",
           unique, t->deliveries);
    if (retry)
        printf(",\"rejects\":%" PRIu64 ",\"xdeath_mismatch\":%" PRIu64
               ",\"wrong_reject_ids\":%" PRIu64 ",\"retries\":%u,\"ttl_ms\":%u",
               t->rejects, t->xdeath_mismatch, t->wrong_rejects, opt->retries, opt->ttl_ms);
    else
        printf(",\"priority_mismatch\":%" PRIu64, t->priority_mismatch);
    printf(",\"missing\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"redelivered\":%" PRIu64
           ",\"foreign\":%" PRIu64 ",\"left\":%" PRId64,
           t->missing, t->duplicates, t->redelivered, t->foreign, t->left[0]);
    if (retry)
        printf(",\"left_retry\":%" PRId64, t->left[1]);
    printf(",\"seconds\":%.3f,\"publish_seconds\":%.3f,\"complete\":%s,\"verified\":%s}\n",
           t->seconds, t->publish_s, complete ? "true" : "false", verified ? "true" : "false");
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------ */
/* Orchestration                                                                              */

static bool pb_start_workers(struct pb_run *run, struct pb_worker *workers, unsigned nworkers)
{
    const struct pb_options *opt = run->opt;
    for (unsigned i = 0; i < nworkers; i++) {
        struct pb_worker *w = &workers[i];
        w->run = run;
        w->is_producer = i >= opt->consumers;
        w->index = w->is_producer ? i - opt->consumers : i;
        w->seed = opt->seed + 0x1000193ull * (i + 1);
        if (!w->is_producer) {
            w->hist = calloc(opt->scenario == PB_RETRY ? 1 : PB_PRIORITIES, sizeof *w->hist);
            if (w->hist == NULL) {
                pb_fail(run, "out of memory");
                return false;
            }
        }
        int rc = pthread_create(&w->thread, NULL, w->is_producer ? producer_main : consumer_main,
                                w);
        if (rc != 0) {
            pb_fail(run, "pthread_create: %s", strerror(rc));
            return false;
        }
        w->thread_started = true;
    }
    return true;
}

static bool pb_open_gate(struct pb_run *run, unsigned nworkers)
{
    uint64_t deadline = pb_now_ns() + (PB_CONNECT_TIMEOUT_S * 3 + BENCH_CONN_RPC_S) * NS_PER_S;
    while (atomic_load(&run->ready) < nworkers) {
        if (atomic_load(&run->failed) || pb_interrupted)
            return false;
        if (pb_now_ns() > deadline) {
            pb_fail(run, "workers did not connect in time");
            return false;
        }
        pb_sleep_ms(1);
    }
    run->start_ns = pb_now_ns();
    atomic_store(&run->go, true);
    return true;
}

static void pb_supervise(struct pb_run *run, struct pb_worker *workers, unsigned nworkers)
{
    const struct pb_options *opt = run->opt;
    uint64_t deadline = run->start_ns + opt->duration_s * NS_PER_S;
    uint64_t stop_ns = 0, next_progress = run->start_ns + NS_PER_S;
    while (atomic_load(&run->finished) < nworkers) {
        pb_sleep_ms(5);
        uint64_t now = pb_now_ns();
        uint64_t done = atomic_load(&run->done_ns);
        if (pb_interrupted || now >= deadline ||
            (done != 0 && now >= done + (uint64_t)opt->settle_ms * NS_PER_MS))
            atomic_store(&run->stop, true);
        if (stop_ns == 0 && atomic_load(&run->stop))
            stop_ns = now;
        if (stop_ns != 0 && now > stop_ns + PB_HARD_GRACE_S * NS_PER_S) {
            fprintf(stderr, "pipeline_bench: workers still blocked %d s after the stop "
                    "(broker not reading or not answering); giving up\n", PB_HARD_GRACE_S);
            fflush(NULL);
            _exit(3);
        }
        if (opt->progress && now >= next_progress) {
            uint64_t published = 0, deliveries = 0;
            for (unsigned i = 0; i < nworkers; i++) {
                published += __atomic_load_n(&workers[i].published, __ATOMIC_RELAXED);
                deliveries += __atomic_load_n(&workers[i].deliveries, __ATOMIC_RELAXED);
            }
            fprintf(stderr, "pipeline_bench: %6.1f s published %" PRIu64 " deliveries %" PRIu64
                    " done %" PRIu64 "\n", (double)(now - run->start_ns) / NS_PER_S, published,
                    deliveries, (uint64_t)atomic_load(&run->completed));
            next_progress += NS_PER_S;
        }
    }
}

static int pb_run_scenario(const struct pb_options *opt)
{
    struct pb_run *run = calloc(1, sizeof *run);
    if (run == NULL) {
        fprintf(stderr, "pipeline_bench: out of memory\n");
        return 1;
    }
    run->opt = opt;
    pb_make_names(opt, &run->names);
    uint64_t seed_state = pb_now_ns() ^ ((uint64_t)getpid() << 32);
    run->nonce = pb_splitmix(&seed_state);
    pthread_mutex_init(&run->error_lock, NULL);
    run->done = calloc(opt->count, sizeof *run->done);
    run->rejects = calloc(opt->count, sizeof *run->rejects);
    run->priority = calloc(opt->count, sizeof *run->priority);
    unsigned nworkers = opt->producers + opt->consumers;
    struct pb_worker *workers = calloc(nworkers, sizeof *workers);
    if (run->done == NULL || run->rejects == NULL || run->priority == NULL || workers == NULL) {
        fprintf(stderr, "pipeline_bench: out of memory\n");
        return 1;
    }

    char err[512];
    if (!pb_setup(run, err, sizeof err)) {
        fprintf(stderr, "pipeline_bench: setup: %s\n", err);
        return 1;
    }
    bool started = pb_start_workers(run, workers, nworkers) && pb_open_gate(run, nworkers);
    if (started)
        pb_supervise(run, workers, nworkers);
    atomic_store(&run->stop, true);
    for (unsigned i = 0; i < nworkers; i++)
        if (workers[i].thread_started)
            pthread_join(workers[i].thread, NULL);
    uint64_t end_ns = pb_now_ns();

    int status = 0;
    if (atomic_load(&run->failed)) {
        fprintf(stderr, "pipeline_bench: %s\n", run->error);
        status = 1;
    } else if (!started) {
        fprintf(stderr, "pipeline_bench: interrupted before the run started\n");
        status = 1;
    }
    if (started) {
        struct pb_totals *t = calloc(1, sizeof *t);
        if (t == NULL) {
            fprintf(stderr, "pipeline_bench: out of memory\n");
            return 1;
        }
        t->left[0] = t->left[1] = -1;
        /* The consumers' connections are closed, so anything unsettled is back in a queue. */
        amqp_connection_state_t conn = pb_connect(opt, err, sizeof err);
        if (conn != NULL) {
            /* Rejections and requeues of the closing consumers may still be on their way
             * (and retry.q hands messages back to work), so read until the total holds
             * still for one interval longer than the TTL, at most about 3 s. */
            unsigned interval = opt->scenario == PB_RETRY ? opt->ttl_ms + 50 : 100;
            int64_t previous = -2;
            for (unsigned i = 0; i * interval < 3000 + interval; i++) {
                if (i > 0)
                    pb_sleep_ms(interval);
                if (opt->scenario == PB_RETRY) {
                    t->left[0] = pb_queue_depth(conn, run->names.work_queue);
                    t->left[1] = pb_queue_depth(conn, run->names.retry_queue);
                } else {
                    t->left[0] = pb_queue_depth(conn, run->names.prio_queue);
                    t->left[1] = 0;
                }
                int64_t total = t->left[0] < 0 || t->left[1] < 0 ? -1 : t->left[0] + t->left[1];
                if (total == previous || total < 0)
                    break;
                previous = total;
            }
            pb_disconnect(conn, true);
        } else {
            fprintf(stderr, "pipeline_bench: queue check: %s\n", err);
        }
        pb_collect(run, workers, nworkers, end_ns, t);
        uint64_t completed = atomic_load(&run->completed);
        bool complete = completed >= opt->count && t->published >= opt->count;
        bool verified = complete && t->missing == 0 && t->duplicates == 0 && t->multi == 0 &&
                        t->nacked == 0 && t->returned == 0 && t->foreign == 0 &&
                        t->xdeath_mismatch == 0 && t->priority_mismatch == 0 &&
                        t->wrong_rejects == 0 && t->guard_acks == 0 && t->left[0] == 0 &&
                        t->left[1] == 0 && status == 0 &&
                        (opt->confirm_window == 0 || t->acked == t->published);
        pb_report(run, t, complete, verified);
        free(t);
        if (status == 0)
            status = !complete ? 4 : !verified ? 5 : 0;
    }
    if (!opt->keep && status != 1)
        pb_teardown(run);

    for (unsigned i = 0; i < nworkers; i++)
        free(workers[i].hist);
    free(workers);
    free((void *)run->done);
    free((void *)run->rejects);
    free((void *)run->priority);
    pthread_mutex_destroy(&run->error_lock);
    free(run);
    return status;
}

int main(int argc, char **argv)
{
    struct pb_options opt;
    int parsed = pb_parse_args(argc, argv, &opt);
    if (parsed == 2)
        return 0;
    if (parsed != 0)
        return 2;
    if (opt.seed == 0)
        opt.seed = pb_now_ns();

    struct sigaction sa = {0};
    sa.sa_handler = pb_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return pb_run_scenario(&opt);
}
