/*
 * warren_bench.c - AMQP 0-9-1 load generator used to compare Warren with RabbitMQ.
 *
 * It talks to the broker only through librabbitmq (Debian's rabbitmq-c), a client neither
 * broker was tuned for, so both are measured through the same neutral code path.
 *
 * Shape of a run:
 *   1. A setup connection declares the queue (default exchange, routing key = queue name) and
 *      purges it, unless --consume-only, which drains what an earlier --publish-only left.
 *   2. Every producer and consumer is a pthread with its own connection and channel 1. Each
 *      thread connects, reports ready, and waits at a start gate; the clock starts when the
 *      main thread opens the gate, so connection setup is not measured.
 *   3. Producers stamp CLOCK_MONOTONIC nanoseconds into the first 8 bytes of each body (the
 *      clock is system wide, so even a separate --consume-only process can compute latency),
 *      and, with --confirm W, keep at most W publishes unconfirmed (a sliding window settled
 *      by basic.ack / basic.nack, honouring the multiple flag).
 *   4. Consumers compute end-to-end latency per message into a per-thread log-linear
 *      histogram (merged at the end, so the hot path takes no lock), and ack per message or
 *      every K messages with multiple=true.
 *   5. The main thread ends the run at --duration, or when --count messages were published
 *      (and, if anyone consumes, consumed); it prints a human summary and one JSON line.
 *
 * Boundedness: every blocking read has a timeout and re-checks the stop flag; the main thread
 * additionally has a hard deadline (duration + grace) after which it reports and exits, so a
 * broker that stops reading cannot hang the benchmark. Broker or network errors end the run
 * with a message and a non-zero exit status.
 *
 * --wait-ready is a separate mode for the start-up measurement: it tries a full AMQP login
 * every 5 ms until one succeeds and prints how long that took since a given CLOCK_REALTIME
 * instant (the moment the script launched the broker).
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
#include <sys/types.h>
#include <time.h>

#include "bench_common.h"

#define BENCH_CHANNEL 1
#define BENCH_STAMP_BYTES 8
#define BENCH_MAX_WORKERS 1000
#define BENCH_MAX_SIZE (64u * 1024 * 1024)
#define BENCH_MAX_WINDOW 1000000u
#define BENCH_POLL_MS 100            /* how often blocked readers re-check the stop flag */
#define BENCH_CONNECT_TIMEOUT_S 5
#define BENCH_CONFIRM_GRACE_S 30     /* wait for outstanding confirms after the run */
#define BENCH_HARD_GRACE_S 60        /* after duration + this, give up on stuck threads */
#define BENCH_READY_POLL_MS 5

#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                    */

enum bench_ack_mode { BENCH_ACK_AUTO, BENCH_ACK_MANUAL };

struct bench_options {
    const char *host;
    int port;
    const char *user;
    const char *pass;
    const char *vhost;
    const char *queue;
    const char *scenario;
    unsigned producers;
    unsigned consumers;
    size_t size;
    bool persistent;
    bool durable;
    unsigned confirm_window;    /* 0 = no publisher confirms */
    unsigned prefetch;          /* 0 = no basic.qos */
    enum bench_ack_mode ack;
    unsigned multiple_ack;      /* manual ack: ack every K messages with multiple=true */
    uint64_t duration_s;
    uint64_t count;             /* 0 = unbounded, run for duration */
    bool publish_only;
    bool consume_only;
    bool keep_queue;
    bool progress;
    double wait_ready_s;        /* > 0: --wait-ready mode */
    uint64_t since_realtime_ns; /* --since-ns for --wait-ready */
    pid_t watch_pid;            /* --pid for --wait-ready: give up if it exits */
};

static void bench_usage(FILE *out)
{
    fprintf(out,
        "usage: warren_bench [options]\n"
        "  --host H (127.0.0.1) --port P (5672) --user U (guest) --pass P (guest) --vhost V (/)\n"
        "  --producers N (1) --consumers N (1) --size BYTES (16, >= 8)\n"
        "  --persistent            delivery_mode 2\n"
        "  --confirm WINDOW        publisher confirms, at most WINDOW unconfirmed (0 = off)\n"
        "  --prefetch N            basic.qos prefetch count (0 = unlimited)\n"
        "  --ack auto|manual       consumer acknowledgement mode (auto)\n"
        "  --multiple-ack K        manual ack: ack every K messages with multiple=true (1)\n"
        "  --queue NAME (warren-bench) --durable\n"
        "  --duration SECONDS (10) the run length, or the upper bound with --count\n"
        "  --count N               publish N messages in total; consumers stop after N\n"
        "  --publish-only | --consume-only   the two halves of a backlog test\n"
        "  --keep-queue            do not delete the queue at the end\n"
        "  --scenario NAME         label for the JSON line\n"
        "  --progress              print progress to stderr every second\n"
        "  --wait-ready SECONDS [--since-ns REALTIME_NS] [--pid PID]\n"
        "                          poll an AMQP login every 5 ms, print the time to ready;\n"
        "                          give up early if process PID (the broker) exits\n");
}

/* Parses a whole decimal number in [min, max]; anything else is an error, never a guess. */
static bool bench_parse_u64(const char *text, uint64_t min, uint64_t max, uint64_t *out)
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

static bool bench_parse_seconds(const char *text, double *out)
{
    if (text == NULL || *text == '\0')
        return false;
    errno = 0;
    char *end = NULL;
    double value = strtod(text, &end);
    if (errno != 0 || end == text || *end != '\0' || !(value > 0.0) || value > 86400.0)
        return false;
    *out = value;
    return true;
}

enum {
    OPT_HOST = 256, OPT_PORT, OPT_USER, OPT_PASS, OPT_VHOST, OPT_PRODUCERS, OPT_CONSUMERS,
    OPT_SIZE, OPT_PERSISTENT, OPT_CONFIRM, OPT_PREFETCH, OPT_ACK, OPT_MULTIPLE_ACK, OPT_QUEUE,
    OPT_DURABLE, OPT_DURATION, OPT_COUNT, OPT_PUBLISH_ONLY, OPT_CONSUME_ONLY, OPT_KEEP_QUEUE,
    OPT_SCENARIO, OPT_PROGRESS, OPT_WAIT_READY, OPT_SINCE_NS, OPT_PID, OPT_HELP
};

static const struct option bench_long_options[] = {
    {"host", required_argument, NULL, OPT_HOST},
    {"port", required_argument, NULL, OPT_PORT},
    {"user", required_argument, NULL, OPT_USER},
    {"pass", required_argument, NULL, OPT_PASS},
    {"vhost", required_argument, NULL, OPT_VHOST},
    {"producers", required_argument, NULL, OPT_PRODUCERS},
    {"consumers", required_argument, NULL, OPT_CONSUMERS},
    {"size", required_argument, NULL, OPT_SIZE},
    {"persistent", no_argument, NULL, OPT_PERSISTENT},
    {"confirm", required_argument, NULL, OPT_CONFIRM},
    {"prefetch", required_argument, NULL, OPT_PREFETCH},
    {"ack", required_argument, NULL, OPT_ACK},
    {"multiple-ack", required_argument, NULL, OPT_MULTIPLE_ACK},
    {"queue", required_argument, NULL, OPT_QUEUE},
    {"durable", no_argument, NULL, OPT_DURABLE},
    {"duration", required_argument, NULL, OPT_DURATION},
    {"count", required_argument, NULL, OPT_COUNT},
    {"publish-only", no_argument, NULL, OPT_PUBLISH_ONLY},
    {"consume-only", no_argument, NULL, OPT_CONSUME_ONLY},
    {"keep-queue", no_argument, NULL, OPT_KEEP_QUEUE},
    {"scenario", required_argument, NULL, OPT_SCENARIO},
    {"progress", no_argument, NULL, OPT_PROGRESS},
    {"wait-ready", required_argument, NULL, OPT_WAIT_READY},
    {"since-ns", required_argument, NULL, OPT_SINCE_NS},
    {"pid", required_argument, NULL, OPT_PID},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static bool bench_option_error(const char *name, const char *value)
{
    fprintf(stderr, "warren_bench: invalid value for --%s: '%s'\n", name, value ? value : "");
    return false;
}

/* Applies one parsed option; returns false (after printing why) on a bad value. */
static bool bench_apply_option(struct bench_options *opt, int id, const char *arg)
{
    uint64_t n = 0;
    switch (id) {
    case OPT_HOST: opt->host = arg; return true;
    case OPT_USER: opt->user = arg; return true;
    case OPT_PASS: opt->pass = arg; return true;
    case OPT_VHOST: opt->vhost = arg; return true;
    case OPT_SCENARIO: opt->scenario = arg; return true;
    case OPT_PERSISTENT: opt->persistent = true; return true;
    case OPT_DURABLE: opt->durable = true; return true;
    case OPT_PUBLISH_ONLY: opt->publish_only = true; return true;
    case OPT_CONSUME_ONLY: opt->consume_only = true; return true;
    case OPT_KEEP_QUEUE: opt->keep_queue = true; return true;
    case OPT_PROGRESS: opt->progress = true; return true;
    case OPT_QUEUE:
        if (strlen(arg) == 0 || strlen(arg) > 255)
            return bench_option_error("queue", arg);
        opt->queue = arg;
        return true;
    case OPT_PORT:
        if (!bench_parse_u64(arg, 1, 65535, &n)) return bench_option_error("port", arg);
        opt->port = (int)n;
        return true;
    case OPT_PRODUCERS:
        if (!bench_parse_u64(arg, 0, BENCH_MAX_WORKERS, &n))
            return bench_option_error("producers", arg);
        opt->producers = (unsigned)n;
        return true;
    case OPT_CONSUMERS:
        if (!bench_parse_u64(arg, 0, BENCH_MAX_WORKERS, &n))
            return bench_option_error("consumers", arg);
        opt->consumers = (unsigned)n;
        return true;
    case OPT_SIZE:
        if (!bench_parse_u64(arg, BENCH_STAMP_BYTES, BENCH_MAX_SIZE, &n))
            return bench_option_error("size (8 .. 64 MiB)", arg);
        opt->size = (size_t)n;
        return true;
    case OPT_CONFIRM:
        if (!bench_parse_u64(arg, 0, BENCH_MAX_WINDOW, &n))
            return bench_option_error("confirm", arg);
        opt->confirm_window = (unsigned)n;
        return true;
    case OPT_PREFETCH:
        if (!bench_parse_u64(arg, 0, 65535, &n)) return bench_option_error("prefetch", arg);
        opt->prefetch = (unsigned)n;
        return true;
    case OPT_ACK:
        if (strcmp(arg, "auto") == 0) opt->ack = BENCH_ACK_AUTO;
        else if (strcmp(arg, "manual") == 0) opt->ack = BENCH_ACK_MANUAL;
        else return bench_option_error("ack (auto|manual)", arg);
        return true;
    case OPT_MULTIPLE_ACK:
        if (!bench_parse_u64(arg, 1, BENCH_MAX_WINDOW, &n))
            return bench_option_error("multiple-ack", arg);
        opt->multiple_ack = (unsigned)n;
        return true;
    case OPT_DURATION:
        if (!bench_parse_u64(arg, 1, 86400, &n)) return bench_option_error("duration", arg);
        opt->duration_s = n;
        return true;
    case OPT_COUNT:
        if (!bench_parse_u64(arg, 1, UINT64_MAX / 2, &n)) return bench_option_error("count", arg);
        opt->count = n;
        return true;
    case OPT_WAIT_READY:
        if (!bench_parse_seconds(arg, &opt->wait_ready_s))
            return bench_option_error("wait-ready", arg);
        return true;
    case OPT_SINCE_NS:
        if (!bench_parse_u64(arg, 1, UINT64_MAX, &n)) return bench_option_error("since-ns", arg);
        opt->since_realtime_ns = n;
        return true;
    case OPT_PID:
        if (!bench_parse_u64(arg, 1, INT32_MAX, &n)) return bench_option_error("pid", arg);
        opt->watch_pid = (pid_t)n;
        return true;
    default:
        return false;
    }
}

/* Rejects combinations that cannot produce a meaningful run. */
static bool bench_validate_options(struct bench_options *opt)
{
    if (opt->publish_only && opt->consume_only) {
        fprintf(stderr, "warren_bench: --publish-only and --consume-only exclude each other\n");
        return false;
    }
    if (opt->publish_only)
        opt->consumers = 0;
    if (opt->consume_only)
        opt->producers = 0;
    if (opt->producers + opt->consumers == 0) {
        fprintf(stderr, "warren_bench: nothing to do: no producers and no consumers\n");
        return false;
    }
    if (opt->multiple_ack > 1 && opt->ack != BENCH_ACK_MANUAL) {
        fprintf(stderr, "warren_bench: --multiple-ack needs --ack manual\n");
        return false;
    }
    return true;
}

/* Returns 0 to run, 1 on bad usage, 2 when --help was printed. */
static int bench_parse_args(int argc, char **argv, struct bench_options *opt)
{
    *opt = (struct bench_options){
        .host = "127.0.0.1", .port = 5672, .user = "guest", .pass = "guest", .vhost = "/",
        .queue = "warren-bench", .scenario = "custom", .producers = 1, .consumers = 1,
        .size = 16, .ack = BENCH_ACK_AUTO, .multiple_ack = 1, .duration_s = 10,
    };
    int id;
    opterr = 0;
    while ((id = getopt_long(argc, argv, "", bench_long_options, NULL)) != -1) {
        if (id == OPT_HELP) {
            bench_usage(stdout);
            return 2;
        }
        if (id == '?' || id == ':') {
            fprintf(stderr, "warren_bench: unknown option or missing value: %s\n",
                    argv[optind - 1]);
            bench_usage(stderr);
            return 1;
        }
        if (!bench_apply_option(opt, id, optarg))
            return 1;
    }
    if (optind < argc) {
        fprintf(stderr, "warren_bench: unexpected argument '%s'\n", argv[optind]);
        return 1;
    }
    if (opt->wait_ready_s > 0)
        return 0;
    return bench_validate_options(opt) ? 0 : 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Clocks                                                                                     */

static uint64_t bench_clock_ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

static uint64_t bench_now_ns(void) { return bench_clock_ns(CLOCK_MONOTONIC); }

static void bench_sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Latency histogram: see bench_common.h. */

/* ------------------------------------------------------------------------------------------ */
/* Shared run state                                                                           */

struct bench_run {
    const struct bench_options *opt;
    atomic_bool stop;            /* set by main (deadline, signal) or by the last consumer */
    atomic_bool failed;
    atomic_bool go;              /* start gate */
    atomic_uint ready;           /* workers connected and waiting at the gate */
    atomic_uint finished;        /* workers that returned */
    atomic_uint_fast64_t publish_claimed;   /* --count: messages handed out to producers */
    atomic_uint_fast64_t consumed_total;
    uint64_t consume_target;     /* 0 = consume until stopped */
    uint64_t start_ns;           /* written before the gate opens */
    pthread_mutex_t error_lock;
    char error[512];
};

struct bench_worker {
    struct bench_run *run;
    unsigned index;
    bool is_producer;
    pthread_t thread;
    bool thread_started;
    uint64_t published;
    uint64_t acked;
    uint64_t nacked;
    uint64_t consumed;
    uint64_t last_event_ns;      /* last publish/confirm or last delivery */
    struct latency_hist *hist;   /* consumers only */
};

static volatile sig_atomic_t bench_interrupted;

static void bench_on_signal(int sig)
{
    (void)sig;
    bench_interrupted = 1;
}

/* Records the first error of the run and stops everyone; later errors are consequences. */
static void bench_fail(struct bench_run *run, const char *fmt, ...)
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

static bool bench_stopping(struct bench_run *run) { return atomic_load(&run->stop); }

/* ------------------------------------------------------------------------------------------ */
/* Connections                                                                                */

/* Turns a librabbitmq reply into one line of text. */
/* bench_describe_reply() and bench_reply_ok(): see bench_common.h. */

static amqp_connection_state_t bench_connect(const struct bench_options *opt, double timeout_s,
                                             char *err, size_t errlen)
{
    return bench_open(opt->host, opt->port, opt->vhost, opt->user, opt->pass, timeout_s, err, errlen);
}

/* Closes politely when the connection is healthy; after an error the close may fail,
 * which does not matter because the socket is torn down either way. */
static void bench_disconnect(amqp_connection_state_t conn, bool healthy) { bench_close(conn, healthy); }

/* Declares the benchmark queue and, for a fresh run, empties it. Returns false on error. */
static bool bench_prepare_queue(const struct bench_options *opt, char *err, size_t errlen)
{
    amqp_connection_state_t conn = bench_connect(opt, BENCH_CONNECT_TIMEOUT_S, err, errlen);
    if (conn == NULL)
        return false;
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, BENCH_CHANNEL,
                                                     amqp_cstring_bytes(opt->queue), 0,
                                                     opt->durable, 0, 0, amqp_empty_table);
    /* Check the reply before the pointer: a refused declare returns NULL, and only the
     * reply says why. */
    if (!bench_reply_ok(conn, "queue.declare", err, errlen) || ok == NULL) {
        bench_disconnect(conn, false);
        return false;
    }
    uint32_t ready = ok->message_count;
    if (!opt->consume_only) {
        amqp_queue_purge(conn, BENCH_CHANNEL, amqp_cstring_bytes(opt->queue));
        if (!bench_reply_ok(conn, "queue.purge", err, errlen)) {
            bench_disconnect(conn, false);
            return false;
        }
    } else {
        fprintf(stderr, "warren_bench: queue %s holds %" PRIu32 " messages\n", opt->queue,
                ready);
    }
    bench_disconnect(conn, true);
    return true;
}

static void bench_delete_queue(const struct bench_options *opt)
{
    char err[512];
    amqp_connection_state_t conn = bench_connect(opt, BENCH_CONNECT_TIMEOUT_S, err, sizeof err);
    if (conn == NULL) {
        fprintf(stderr, "warren_bench: queue cleanup skipped: %s\n", err);
        return;
    }
    amqp_queue_delete(conn, BENCH_CHANNEL, amqp_cstring_bytes(opt->queue), 0, 0);
    bool ok = bench_reply_ok(conn, "queue.delete", err, sizeof err);
    if (!ok)
        fprintf(stderr, "warren_bench: %s\n", err);
    bench_disconnect(conn, ok);
}

/* Connects, runs the per-role setup, then waits at the start gate. Returns the connection,
 * or NULL when the run failed or was stopped before it began. */
static amqp_connection_state_t bench_worker_connect(struct bench_worker *w)
{
    struct bench_run *run = w->run;
    char err[512];
    amqp_connection_state_t conn = bench_connect(run->opt, BENCH_CONNECT_TIMEOUT_S, err,
                                                 sizeof err);
    if (conn == NULL) {
        bench_fail(run, "%s %u: %s", w->is_producer ? "producer" : "consumer", w->index, err);
        return NULL;
    }
    return conn;
}

static bool bench_wait_for_gate(struct bench_run *run)
{
    atomic_fetch_add(&run->ready, 1);
    while (!atomic_load(&run->go)) {
        if (bench_stopping(run))
            return false;
        bench_sleep_ms(1);
    }
    return !bench_stopping(run);
}

/* ------------------------------------------------------------------------------------------ */
/* Producer: publish with an optional sliding confirm window                                   */

/* Delivery tags in [oldest, next_tag) are in flight; settled[tag % capacity] marks the ones
 * the broker already confirmed out of order. The window never spans more than capacity
 * tags, so the ring cannot wrap onto a live tag. */
struct confirm_window {
    uint64_t next_tag;
    uint64_t oldest;
    size_t capacity;
    uint8_t *settled;
    uint64_t acked;
    uint64_t nacked;
};

static bool confirm_window_init(struct confirm_window *cw, unsigned capacity)
{
    *cw = (struct confirm_window){.next_tag = 1, .oldest = 1, .capacity = capacity};
    cw->settled = calloc(capacity, 1);
    return cw->settled != NULL;
}

static bool confirm_window_full(const struct confirm_window *cw)
{
    return cw->next_tag - cw->oldest >= cw->capacity;
}

static bool confirm_window_empty(const struct confirm_window *cw)
{
    return cw->next_tag == cw->oldest;
}

static void confirm_settle_one(struct confirm_window *cw, uint64_t tag, bool ack)
{
    if (tag < cw->oldest || tag >= cw->next_tag || cw->settled[tag % cw->capacity])
        return;   /* duplicate or unknown tag: nothing in flight to settle */
    cw->settled[tag % cw->capacity] = 1;
    if (ack)
        cw->acked++;
    else
        cw->nacked++;
}

/* Applies a basic.ack / basic.nack; multiple=true settles every tag up to and including. */
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

/* Reads one frame for a producer. Returns 1 when a frame was handled, 0 on timeout, -1 on
 * error (already reported). */
static int producer_read_frame(struct bench_worker *w, amqp_connection_state_t conn,
                               struct confirm_window *cw, struct timeval *timeout)
{
    amqp_frame_t frame;
    int rc = amqp_simple_wait_frame_noblock(conn, &frame, timeout);
    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK) {
        bench_fail(w->run, "producer %u: reading confirms: %s", w->index,
                   amqp_error_string2(rc));
        return -1;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return 1;   /* content of an unexpected basic.return: nothing to do */
    switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *ack = frame.payload.method.decoded;
        confirm_settle(cw, ack->delivery_tag, ack->multiple, true);
        return 1;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *nack = frame.payload.method.decoded;
        confirm_settle(cw, nack->delivery_tag, nack->multiple, false);
        return 1;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = frame.payload.method.decoded;
        bench_fail(w->run, "producer %u: channel closed by broker: %u %.*s", w->index,
                   c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = frame.payload.method.decoded;
        bench_fail(w->run, "producer %u: connection closed by broker: %u %.*s", w->index,
                   c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return -1;
    }
    default:
        return 1;   /* connection.blocked/unblocked, basic.return: not fatal */
    }
}

/* Handles whatever librabbitmq already buffered (it reads incoming frames while it writes)
 * without blocking. */
static bool producer_drain_buffered(struct bench_worker *w, amqp_connection_state_t conn,
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

/* Blocks until the window has room, the run stops, or a deadline passes. */
static bool producer_wait_for_room(struct bench_worker *w, amqp_connection_state_t conn,
                                   struct confirm_window *cw)
{
    while (confirm_window_full(cw) && !bench_stopping(w->run)) {
        struct timeval tv = {.tv_sec = 0, .tv_usec = BENCH_POLL_MS * 1000};
        if (producer_read_frame(w, conn, cw, &tv) < 0)
            return false;
    }
    return true;
}

/* After the last publish, collects the outstanding confirms (bounded). */
static bool producer_wait_all_confirms(struct bench_worker *w, amqp_connection_state_t conn,
                                       struct confirm_window *cw)
{
    uint64_t deadline = bench_now_ns() + BENCH_CONFIRM_GRACE_S * NS_PER_S;
    while (!confirm_window_empty(cw)) {
        if (atomic_load(&w->run->failed))
            return false;
        if (bench_now_ns() > deadline) {
            bench_fail(w->run, "producer %u: %" PRIu64 " confirms still missing after %d s",
                       w->index, cw->next_tag - cw->oldest, BENCH_CONFIRM_GRACE_S);
            return false;
        }
        struct timeval tv = {.tv_sec = 0, .tv_usec = BENCH_POLL_MS * 1000};
        if (producer_read_frame(w, conn, cw, &tv) < 0)
            return false;
    }
    return true;
}

/* Takes the right to publish one more message: always without --count, else while the
 * shared budget lasts. */
static bool producer_claim(struct bench_run *run)
{
    if (run->opt->count == 0)
        return true;
    return atomic_fetch_add(&run->publish_claimed, 1) < run->opt->count;
}

static bool producer_loop(struct bench_worker *w, amqp_connection_state_t conn)
{
    struct bench_run *run = w->run;
    const struct bench_options *opt = run->opt;
    bool confirming = opt->confirm_window > 0;
    struct confirm_window cw = {0};
    if (confirming && !confirm_window_init(&cw, opt->confirm_window)) {
        bench_fail(run, "producer %u: out of memory", w->index);
        return false;
    }
    uint8_t *body = malloc(opt->size);
    if (body == NULL) {
        free(cw.settled);
        bench_fail(run, "producer %u: out of memory", w->index);
        return false;
    }
    memset(body, 'w', opt->size);

    amqp_basic_properties_t props = {0};
    if (opt->persistent) {
        props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
        props.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    }
    amqp_bytes_t routing_key = amqp_cstring_bytes(opt->queue);
    amqp_bytes_t payload = {.len = opt->size, .bytes = body};
    bool ok = true;

    while (ok && !bench_stopping(run)) {
        if (confirming && !producer_wait_for_room(w, conn, &cw)) {
            ok = false;
            break;
        }
        if (bench_stopping(run) || !producer_claim(run))
            break;
        uint64_t stamp = bench_now_ns();
        memcpy(body, &stamp, sizeof stamp);
        int rc = amqp_basic_publish(conn, BENCH_CHANNEL, amqp_empty_bytes, routing_key, 0, 0,
                                    &props, payload);
        if (rc != AMQP_STATUS_OK) {
            bench_fail(run, "producer %u: publish: %s", w->index, amqp_error_string2(rc));
            ok = false;
            break;
        }
        w->published++;
        if (confirming) {
            cw.next_tag++;
            ok = producer_drain_buffered(w, conn, &cw);
        }
    }
    if (ok && confirming)
        ok = producer_wait_all_confirms(w, conn, &cw);
    w->last_event_ns = bench_now_ns();
    w->acked = cw.acked;
    w->nacked = cw.nacked;
    free(cw.settled);
    free(body);
    return ok;
}

static void *producer_main(void *arg)
{
    struct bench_worker *w = arg;
    struct bench_run *run = w->run;
    amqp_connection_state_t conn = bench_worker_connect(w);
    bool ok = conn != NULL;
    if (ok && run->opt->confirm_window > 0) {
        char err[512];
        amqp_confirm_select(conn, BENCH_CHANNEL);
        if (!bench_reply_ok(conn, "confirm.select", err, sizeof err)) {
            bench_fail(run, "producer %u: %s", w->index, err);
            ok = false;
        }
    }
    if (ok && bench_wait_for_gate(run))
        ok = producer_loop(w, conn);
    bench_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Consumer: basic.consume, latency per delivery, acks per message or every K                  */

static void consumer_record(struct bench_worker *w, const amqp_envelope_t *env, uint64_t now)
{
    const amqp_bytes_t *body = &env->message.body;
    if (body->len >= BENCH_STAMP_BYTES) {
        uint64_t stamp;
        memcpy(&stamp, body->bytes, sizeof stamp);
        /* A stamp from the future is not ours (foreign message, other boot): skip it. */
        if (stamp <= now)
            hist_record(w->hist, now - stamp);
    }
    w->consumed++;
    w->last_event_ns = now;
}

/* A frame other than basic.deliver arrived; decide whether the consumer can go on. */
static bool consumer_handle_other_frame(struct bench_worker *w, amqp_connection_state_t conn)
{
    amqp_frame_t frame;
    struct timeval tv = {.tv_sec = 1};
    int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return true;
    if (rc != AMQP_STATUS_OK) {
        bench_fail(w->run, "consumer %u: %s", w->index, amqp_error_string2(rc));
        return false;
    }
    if (frame.frame_type != AMQP_FRAME_METHOD)
        return true;
    switch (frame.payload.method.id) {
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = frame.payload.method.decoded;
        bench_fail(w->run, "consumer %u: channel closed by broker: %u %.*s", w->index,
                   c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return false;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = frame.payload.method.decoded;
        bench_fail(w->run, "consumer %u: connection closed by broker: %u %.*s", w->index,
                   c->reply_code, (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        return false;
    }
    case AMQP_BASIC_CANCEL_METHOD:
        bench_fail(w->run, "consumer %u: consumer cancelled by broker (queue deleted?)",
                   w->index);
        return false;
    default:
        return true;
    }
}

static bool consumer_target_reached(struct bench_run *run)
{
    return run->consume_target > 0 &&
           atomic_load(&run->consumed_total) >= run->consume_target;
}

static bool consumer_loop(struct bench_worker *w, amqp_connection_state_t conn)
{
    struct bench_run *run = w->run;
    const struct bench_options *opt = run->opt;
    bool manual = opt->ack == BENCH_ACK_MANUAL;
    unsigned unacked = 0;
    uint64_t last_tag = 0;
    bool ok = true;

    while (!bench_stopping(run) && !consumer_target_reached(run)) {
        amqp_envelope_t env;
        struct timeval tv = {.tv_sec = 0, .tv_usec = BENCH_POLL_MS * 1000};
        amqp_maybe_release_buffers(conn);
        amqp_rpc_reply_t reply = amqp_consume_message(conn, &env, &tv, 0);
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            reply.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            reply.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (!consumer_handle_other_frame(w, conn)) {
                ok = false;
                break;
            }
            continue;
        }
        if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
            char detail[384];
            bench_describe_reply(reply, detail, sizeof detail);
            bench_fail(run, "consumer %u: %s", w->index, detail);
            ok = false;
            break;
        }
        consumer_record(w, &env, bench_now_ns());
        last_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (manual && ++unacked >= opt->multiple_ack) {
            int rc = amqp_basic_ack(conn, BENCH_CHANNEL, last_tag, opt->multiple_ack > 1);
            if (rc != AMQP_STATUS_OK) {
                bench_fail(run, "consumer %u: ack: %s", w->index, amqp_error_string2(rc));
                ok = false;
                break;
            }
            unacked = 0;
        }
        if (run->consume_target > 0 &&
            atomic_fetch_add(&run->consumed_total, 1) + 1 >= run->consume_target)
            atomic_store(&run->stop, true);
    }
    /* Settle what a multiple-ack batch left open, so nothing is redelivered later. */
    if (ok && manual && unacked > 0)
        ok = amqp_basic_ack(conn, BENCH_CHANNEL, last_tag, 1) == AMQP_STATUS_OK;
    return ok;
}

static bool consumer_subscribe(struct bench_worker *w, amqp_connection_state_t conn)
{
    const struct bench_options *opt = w->run->opt;
    char err[512];
    if (opt->prefetch > 0) {
        amqp_basic_qos(conn, BENCH_CHANNEL, 0, (uint16_t)opt->prefetch, 0);
        if (!bench_reply_ok(conn, "basic.qos", err, sizeof err)) {
            bench_fail(w->run, "consumer %u: %s", w->index, err);
            return false;
        }
    }
    amqp_basic_consume(conn, BENCH_CHANNEL, amqp_cstring_bytes(opt->queue), amqp_empty_bytes,
                       0, opt->ack == BENCH_ACK_AUTO, 0, amqp_empty_table);
    if (!bench_reply_ok(conn, "basic.consume", err, sizeof err)) {
        bench_fail(w->run, "consumer %u: %s", w->index, err);
        return false;
    }
    return true;
}

static void *consumer_main(void *arg)
{
    struct bench_worker *w = arg;
    struct bench_run *run = w->run;
    amqp_connection_state_t conn = bench_worker_connect(w);
    bool ok = conn != NULL && consumer_subscribe(w, conn);
    if (ok && bench_wait_for_gate(run))
        ok = consumer_loop(w, conn);
    bench_disconnect(conn, ok);
    atomic_fetch_add(&run->finished, 1);
    return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Results                                                                                    */

struct bench_totals {
    uint64_t published, acked, nacked, consumed;
    double publish_s, consume_s, total_s;
    struct latency_hist hist;
};

static double bench_rate(uint64_t n, double seconds) { return seconds > 0 ? n / seconds : 0; }

/* A side's rate is measured over the run window, or, when the run is a fixed amount of
 * work (--count), up to the side's last event, so idle tail time does not dilute it. */
static void bench_collect(const struct bench_run *run, struct bench_worker *workers,
                          unsigned nworkers, uint64_t stop_ns, uint64_t end_ns,
                          struct bench_totals *t)
{
    memset(t, 0, sizeof *t);
    uint64_t last_pub = run->start_ns, last_con = run->start_ns;
    for (unsigned i = 0; i < nworkers; i++) {
        struct bench_worker *w = &workers[i];
        t->published += w->published;
        t->acked += w->acked;
        t->nacked += w->nacked;
        t->consumed += w->consumed;
        if (w->is_producer && w->last_event_ns > last_pub)
            last_pub = w->last_event_ns;
        if (!w->is_producer && w->last_event_ns > last_con)
            last_con = w->last_event_ns;
        if (w->hist != NULL)
            hist_merge(&t->hist, w->hist);
    }
    bool fixed_work = run->opt->count > 0;
    uint64_t window_end = stop_ns < end_ns ? stop_ns : end_ns;
    t->publish_s = (double)((fixed_work ? last_pub : window_end) - run->start_ns) / NS_PER_S;
    t->consume_s = (double)((fixed_work ? last_con : window_end) - run->start_ns) / NS_PER_S;
    /* Teardown (closing connections that still hold buffered deliveries) is not part of
     * the measurement; end_ns only bounds runs that never reached their stop. */
    t->total_s = t->publish_s > t->consume_s ? t->publish_s : t->consume_s;
    if (t->total_s <= 0)
        t->total_s = (double)(end_ns - run->start_ns) / NS_PER_S;
}

static void bench_print_json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void bench_print_ms(const char *key, const struct latency_hist *h, double q)
{
    if (h->samples == 0)
        printf(",\"%s\":null", key);
    else
        printf(",\"%s\":%.3f", key, (double)hist_percentile(h, q) / NS_PER_MS);
}

static void bench_report(const struct bench_options *opt, const struct bench_totals *t,
                         bool complete)
{
    printf("scenario %s: queue %s%s, %u producer(s), %u consumer(s)", opt->scenario,
           opt->queue, opt->durable ? " (durable)" : "", opt->producers, opt->consumers);
    if (opt->producers > 0) {
        printf(", %zu B %s", opt->size, opt->persistent ? "persistent" : "transient");
        if (opt->confirm_window)
            printf(", confirm window %u", opt->confirm_window);
        else
            printf(", no confirms");
    }
    if (opt->consumers > 0) {
        printf(", %s ack", opt->ack == BENCH_ACK_AUTO ? "auto" : "manual");
        if (opt->multiple_ack > 1)
            printf(" (multiple, every %u)", opt->multiple_ack);
        if (opt->prefetch)
            printf(", prefetch %u", opt->prefetch);
    }
    printf("\n");
    if (opt->producers > 0)
        printf("  published %10" PRIu64 " msg in %7.2f s = %10.1f msg/s (acked %" PRIu64
               ", nacked %" PRIu64 ")\n",
               t->published, t->publish_s, bench_rate(t->published, t->publish_s), t->acked,
               t->nacked);
    if (opt->consumers > 0)
        printf("  consumed  %10" PRIu64 " msg in %7.2f s = %10.1f msg/s\n", t->consumed,
               t->consume_s, bench_rate(t->consumed, t->consume_s));
    if (t->hist.samples > 0)
        printf("  latency   p50 %.3f ms, p99 %.3f ms, max %.3f ms (%" PRIu64 " samples)\n",
               (double)hist_percentile(&t->hist, 0.50) / NS_PER_MS,
               (double)hist_percentile(&t->hist, 0.99) / NS_PER_MS,
               (double)t->hist.max_ns / NS_PER_MS, t->hist.samples);
    if (!complete)
        printf("  INCOMPLETE: --count %" PRIu64 " not reached within %" PRIu64 " s\n",
               opt->count, opt->duration_s);

    printf("{\"scenario\":");
    bench_print_json_string(opt->scenario);
    printf(",\"published_per_s\":%.1f,\"consumed_per_s\":%.1f",
           bench_rate(t->published, t->publish_s), bench_rate(t->consumed, t->consume_s));
    bench_print_ms("p50_ms", &t->hist, 0.50);
    bench_print_ms("p99_ms", &t->hist, 0.99);
    if (t->hist.samples == 0)
        printf(",\"max_ms\":null");
    else
        printf(",\"max_ms\":%.3f", (double)t->hist.max_ns / NS_PER_MS);
    printf(",\"published\":%" PRIu64 ",\"acked\":%" PRIu64 ",\"nacked\":%" PRIu64
           ",\"consumed\":%" PRIu64 ",\"seconds\":%.3f,\"publish_seconds\":%.3f"
           ",\"consume_seconds\":%.3f,\"complete\":%s}\n",
           t->published, t->acked, t->nacked, t->consumed, t->total_s, t->publish_s,
           t->consume_s, complete ? "true" : "false");
    fflush(stdout);
}

/* ------------------------------------------------------------------------------------------ */
/* Run orchestration                                                                          */

static bool bench_start_workers(struct bench_run *run, struct bench_worker *workers,
                                unsigned nworkers)
{
    const struct bench_options *opt = run->opt;
    /* Consumers first, so they are subscribed before the first message exists. */
    for (unsigned i = 0; i < nworkers; i++) {
        struct bench_worker *w = &workers[i];
        w->run = run;
        w->is_producer = i >= opt->consumers;
        w->index = w->is_producer ? i - opt->consumers : i;
        if (!w->is_producer) {
            w->hist = calloc(1, sizeof *w->hist);
            if (w->hist == NULL) {
                bench_fail(run, "out of memory");
                return false;
            }
        }
        int rc = pthread_create(&w->thread, NULL, w->is_producer ? producer_main : consumer_main,
                                w);
        if (rc != 0) {
            bench_fail(run, "pthread_create: %s", strerror(rc));
            return false;
        }
        w->thread_started = true;
    }
    return true;
}

/* Waits (bounded) until every worker is connected and at the gate, then opens it. */
static bool bench_open_gate(struct bench_run *run, unsigned nworkers)
{
    uint64_t deadline = bench_now_ns() + (BENCH_CONNECT_TIMEOUT_S * 3 + BENCH_CONN_RPC_S) *
                                             NS_PER_S;
    while (atomic_load(&run->ready) < nworkers) {
        if (atomic_load(&run->failed) || bench_interrupted)
            return false;
        if (bench_now_ns() > deadline) {
            bench_fail(run, "workers did not connect in time");
            return false;
        }
        bench_sleep_ms(1);
    }
    run->start_ns = bench_now_ns();
    atomic_store(&run->go, true);
    return true;
}

static void bench_print_progress(struct bench_run *run, struct bench_worker *workers,
                                 unsigned nworkers, uint64_t now)
{
    uint64_t published = 0, consumed = 0;
    for (unsigned i = 0; i < nworkers; i++) {
        /* Racy reads of counters only their own thread writes; fine for a progress line. */
        published += __atomic_load_n(&workers[i].published, __ATOMIC_RELAXED);
        consumed += __atomic_load_n(&workers[i].consumed, __ATOMIC_RELAXED);
    }
    fprintf(stderr, "warren_bench: %6.1f s published %" PRIu64 " consumed %" PRIu64 "\n",
            (double)(now - run->start_ns) / NS_PER_S, published, consumed);
}

/* Supervises the run: stops it at the deadline, on a signal or failure; returns the time
 * the stop was requested. Exits the process if workers ignore the stop for too long. */
static uint64_t bench_supervise(struct bench_run *run, struct bench_worker *workers,
                                unsigned nworkers)
{
    const struct bench_options *opt = run->opt;
    uint64_t deadline = run->start_ns + opt->duration_s * NS_PER_S;
    uint64_t hard_deadline = deadline + BENCH_HARD_GRACE_S * NS_PER_S;
    uint64_t stop_ns = 0, next_progress = run->start_ns + NS_PER_S;
    while (atomic_load(&run->finished) < nworkers) {
        bench_sleep_ms(5);
        uint64_t now = bench_now_ns();
        if (bench_interrupted)
            atomic_store(&run->stop, true);
        if (now >= deadline)
            atomic_store(&run->stop, true);
        if (stop_ns == 0 && atomic_load(&run->stop))
            stop_ns = now;
        if (stop_ns != 0 && now > stop_ns + BENCH_HARD_GRACE_S * NS_PER_S)
            hard_deadline = now;
        if (now >= hard_deadline) {
            fprintf(stderr, "warren_bench: workers still blocked %d s after the stop "
                    "(broker not reading or not answering); giving up\n", BENCH_HARD_GRACE_S);
            fflush(NULL);
            _exit(3);
        }
        if (opt->progress && now >= next_progress) {
            bench_print_progress(run, workers, nworkers, now);
            next_progress += NS_PER_S;
        }
    }
    return stop_ns != 0 ? stop_ns : bench_now_ns();
}

static int bench_run_load(const struct bench_options *opt)
{
    char err[512];
    if (!bench_prepare_queue(opt, err, sizeof err)) {
        fprintf(stderr, "warren_bench: %s\n", err);
        return 1;
    }
    struct bench_run run = {.opt = opt};
    pthread_mutex_init(&run.error_lock, NULL);
    if (opt->consumers > 0 && opt->count > 0)
        run.consume_target = opt->count;

    unsigned nworkers = opt->producers + opt->consumers;
    struct bench_worker *workers = calloc(nworkers, sizeof *workers);
    if (workers == NULL) {
        fprintf(stderr, "warren_bench: out of memory\n");
        return 1;
    }
    uint64_t stop_ns = 0;
    bool started = bench_start_workers(&run, workers, nworkers) &&
                   bench_open_gate(&run, nworkers);
    if (started)
        stop_ns = bench_supervise(&run, workers, nworkers);
    atomic_store(&run.stop, true);
    for (unsigned i = 0; i < nworkers; i++)
        if (workers[i].thread_started)
            pthread_join(workers[i].thread, NULL);
    uint64_t end_ns = bench_now_ns();

    int status = 0;
    if (atomic_load(&run.failed)) {
        fprintf(stderr, "warren_bench: %s\n", run.error);
        status = 1;
    } else if (!started) {
        fprintf(stderr, "warren_bench: interrupted before the run started\n");
        status = 1;
    }
    if (started) {
        struct bench_totals *totals = calloc(1, sizeof *totals);
        if (totals != NULL) {
            bench_collect(&run, workers, nworkers, stop_ns, end_ns, totals);
            bool complete = opt->count == 0 ||
                            ((opt->producers == 0 || totals->published >= opt->count) &&
                             (opt->consumers == 0 || totals->consumed >= opt->count));
            bench_report(opt, totals, complete);
            free(totals);
            if (!complete && status == 0)
                status = 4;
        }
    }
    if (!opt->publish_only && !opt->keep_queue && status == 0)
        bench_delete_queue(opt);

    for (unsigned i = 0; i < nworkers; i++)
        free(workers[i].hist);
    free(workers);
    pthread_mutex_destroy(&run.error_lock);
    return status;
}

/* --wait-ready: the broker counts as ready once a full AMQP login succeeds. */
static int bench_wait_ready(const struct bench_options *opt)
{
    uint64_t since = opt->since_realtime_ns ? opt->since_realtime_ns
                                            : bench_clock_ns(CLOCK_REALTIME);
    uint64_t deadline = bench_now_ns() + (uint64_t)(opt->wait_ready_s * NS_PER_S);
    char err[512] = "no attempt made";
    unsigned attempts = 0;
    while (!bench_interrupted) {
        uint64_t attempt_start = bench_now_ns();
        attempts++;
        amqp_connection_state_t conn = bench_connect(opt, 0.5, err, sizeof err);
        if (conn != NULL) {
            uint64_t ready_rt = bench_clock_ns(CLOCK_REALTIME);
            bench_disconnect(conn, true);
            double ms = ready_rt > since ? (double)(ready_rt - since) / NS_PER_MS : 0.0;
            printf("ready after %.1f ms (%u attempts)\n{\"ready_ms\":%.1f}\n", ms, attempts,
                   ms);
            return 0;
        }
        if (opt->watch_pid > 0 && kill(opt->watch_pid, 0) != 0 && errno == ESRCH) {
            fprintf(stderr, "warren_bench: process %d exited before %s:%d accepted a login\n",
                    (int)opt->watch_pid, opt->host, opt->port);
            return 1;
        }
        uint64_t next = attempt_start + BENCH_READY_POLL_MS * NS_PER_MS;
        uint64_t now = bench_now_ns();
        if (now >= deadline)
            break;
        if (next > now)
            bench_sleep_ms((unsigned)((next - now + NS_PER_MS - 1) / NS_PER_MS));
    }
    fprintf(stderr, "warren_bench: %s:%d not ready after %.1f s (%u attempts): %s\n",
            opt->host, opt->port, opt->wait_ready_s, attempts, err);
    return 1;
}

int main(int argc, char **argv)
{
    struct bench_options opt;
    int parsed = bench_parse_args(argc, argv, &opt);
    if (parsed == 2)
        return 0;
    if (parsed != 0)
        return 2;

    struct sigaction sa = {0};
    sa.sa_handler = bench_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (opt.wait_ready_s > 0)
        return bench_wait_ready(&opt);
    return bench_run_load(&opt);
}
