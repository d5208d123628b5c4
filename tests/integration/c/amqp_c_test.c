/*
 * amqp_c_test.c - the RabbitMQ tutorial patterns as checks, over librabbitmq (rabbitmq-c).
 *
 * Usage: amqp_c_test HOST PORT [TEST...]     or     amqp_c_test HOST:PORT [TEST...]
 *        credentials from AMQP_USER / AMQP_PASS (default guest / guest).
 *
 * Each test is one tutorial pattern, run against whatever broker is at HOST:PORT, so the
 * same binary checks Warren and, as a reference, real RabbitMQ:
 *   hello_world      publish to the default exchange, consume it back;
 *   work_queues      durable queue, persistent tasks, prefetch 1 fair dispatch between two
 *                    workers, manual acks, redelivery of an unacked task after a worker dies;
 *   publish_subscribe fanout to exclusive server-named queues, exclusivity enforced, the
 *                    queues vanish with their connection;
 *   routing          direct exchange, several bindings per queue;
 *   topics           topic exchange with the tutorial's * and # bindings;
 *   rpc              request/reply with reply_to and correlation_id;
 *   publisher_confirms  per-message, batch and windowed confirms, mandatory + basic.return;
 *   channel_errors   404s close the channel, not the connection, and the channel reopens.
 * Every name carries a per-run suffix so concurrent runs and leftovers never collide, and
 * every wait has a timeout, so a broker that drops a message fails a test instead of hanging.
 * Prints one line per test, then "N passed, N failed"; exits 1 if anything failed.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CT_CHANNEL 1
#define CT_WAIT_MS 3000          /* how long an expected message may take */
#define CT_SILENCE_MS 300        /* how long we listen to prove nothing more arrives */
#define CT_RPC_TIMEOUT_S 5
#define CT_MAX_TAGS 1024

struct ct_config {
    const char *host;
    int port;
    const char *user;
    const char *pass;
    char suffix[48];             /* makes every queue/exchange name unique to this run */
};

/* One running test: where it failed and why (first failure only). */
struct ct_test {
    const struct ct_config *cfg;
    bool failed;
    char why[512];
};

static void ct_note(struct ct_test *t, int line, const char *fmt, ...)
{
    if (t->failed)
        return;
    t->failed = true;
    int n = snprintf(t->why, sizeof t->why, "line %d: ", line);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->why + n, sizeof t->why - (size_t)n, fmt, ap);
    va_end(ap);
}

/* CT_EXPECT(condition, printf-style reason): on failure, record and jump to `out`. */
#define CT_EXPECT(cond, ...)                  \
    do {                                      \
        if (!(cond)) {                        \
            ct_note(t, __LINE__, __VA_ARGS__); \
            goto out;                         \
        }                                     \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Small helpers over librabbitmq                                                              */

static void ct_describe_reply(amqp_rpc_reply_t reply, char *buf, size_t len)
{
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, len, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, len, "no reply");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, len, "%s", amqp_error_string2(reply.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *c = reply.reply.decoded;
            snprintf(buf, len, "channel.close %u %.*s", c->reply_code, (int)c->reply_text.len,
                     (const char *)c->reply_text.bytes);
        } else if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *c = reply.reply.decoded;
            snprintf(buf, len, "connection.close %u %.*s", c->reply_code,
                     (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        } else {
            snprintf(buf, len, "server method 0x%08x", reply.reply.id);
        }
        break;
    default:
        snprintf(buf, len, "unknown reply");
    }
}

/* The reply of the last synchronous call as text ("ok" when it succeeded). */
static const char *ct_last_reply(amqp_connection_state_t conn)
{
    static char buf[384];
    ct_describe_reply(amqp_get_rpc_reply(conn), buf, sizeof buf);
    return buf;
}

static bool ct_rpc_ok(amqp_connection_state_t conn)
{
    return amqp_get_rpc_reply(conn).reply_type == AMQP_RESPONSE_NORMAL;
}

/* The reply code of a broker close in the last reply, 0 if it was not a close. */
static unsigned ct_close_code(amqp_connection_state_t conn)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
    if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION)
        return 0;
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
        return ((const amqp_channel_close_t *)r.reply.decoded)->reply_code;
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
        return ((const amqp_connection_close_t *)r.reply.decoded)->reply_code;
    return 0;
}

static bool ct_bytes_eq(amqp_bytes_t b, const char *s)
{
    size_t n = strlen(s);
    return b.len == n && (n == 0 || memcmp(b.bytes, s, n) == 0);
}

/* Copies AMQP bytes into a NUL-terminated buffer (truncating) for messages and lookups. */
static const char *ct_str(amqp_bytes_t b, char *buf, size_t len)
{
    size_t n = b.len < len - 1 ? b.len : len - 1;
    if (n > 0)
        memcpy(buf, b.bytes, n);
    buf[n] = '\0';
    return buf;
}

static void ct_name(const struct ct_test *t, const char *base, char *out, size_t len)
{
    snprintf(out, len, "%s.%s", base, t->cfg->suffix);
}

/* Opens a connection with channel 1 open, or records why not and returns NULL. */
static amqp_connection_state_t ct_open_at(struct ct_test *t, int line)
{
    const struct ct_config *cfg = t->cfg;
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = conn ? amqp_tcp_socket_new(conn) : NULL;
    if (sock == NULL) {
        ct_note(t, line, "cannot allocate a connection");
        if (conn)
            amqp_destroy_connection(conn);
        return NULL;
    }
    struct timeval tv = {.tv_sec = 5};
    int rc = amqp_socket_open_noblock(sock, cfg->host, cfg->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        ct_note(t, line, "connect %s:%d: %s", cfg->host, cfg->port, amqp_error_string2(rc));
        amqp_destroy_connection(conn);
        return NULL;
    }
    struct timeval rpc = {.tv_sec = CT_RPC_TIMEOUT_S};
    amqp_set_handshake_timeout(conn, &rpc);
    amqp_set_rpc_timeout(conn, &rpc);
    amqp_rpc_reply_t r = amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, cfg->user,
                                    cfg->pass);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char why[384];
        ct_describe_reply(r, why, sizeof why);
        ct_note(t, line, "login: %s", why);
        amqp_destroy_connection(conn);
        return NULL;
    }
    amqp_channel_open(conn, CT_CHANNEL);
    if (!ct_rpc_ok(conn)) {
        ct_note(t, line, "channel.open: %s", ct_last_reply(conn));
        amqp_destroy_connection(conn);
        return NULL;
    }
    return conn;
}

#define ct_open(t) ct_open_at((t), __LINE__)

static void ct_close(amqp_connection_state_t conn)
{
    if (conn == NULL)
        return;
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(conn);
}

/* After the broker closed channel 1: answer with close-ok and open the channel again. */
static bool ct_reopen_channel(amqp_connection_state_t conn)
{
    amqp_channel_close_ok_t close_ok = {0};
    if (amqp_send_method(conn, CT_CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok) !=
        AMQP_STATUS_OK)
        return false;
    amqp_channel_open(conn, CT_CHANNEL);
    return ct_rpc_ok(conn);
}

/* Declares a queue; an empty name asks the broker to generate one, which lands in `out`. */
static bool ct_declare_queue(amqp_connection_state_t conn, const char *name, bool durable,
                             bool exclusive, char *out, size_t outlen)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, CT_CHANNEL, amqp_cstring_bytes(name),
                                                     0, durable, exclusive, 0, amqp_empty_table);
    if (!ct_rpc_ok(conn) || ok == NULL)
        return false;
    if (out != NULL)
        ct_str(ok->queue, out, outlen);
    return true;
}

/* Ready-message count through a passive declare; -1 if the queue is missing or on error. */
static long ct_queue_count(amqp_connection_state_t conn, const char *name)
{
    amqp_queue_declare_ok_t *ok = amqp_queue_declare(conn, CT_CHANNEL, amqp_cstring_bytes(name),
                                                     1, 0, 0, 0, amqp_empty_table);
    if (!ct_rpc_ok(conn) || ok == NULL)
        return -1;
    return (long)ok->message_count;
}

static bool ct_bind(amqp_connection_state_t conn, const char *queue, const char *exchange,
                    const char *key)
{
    amqp_queue_bind(conn, CT_CHANNEL, amqp_cstring_bytes(queue), amqp_cstring_bytes(exchange),
                    amqp_cstring_bytes(key), amqp_empty_table);
    return ct_rpc_ok(conn);
}

static bool ct_declare_exchange(amqp_connection_state_t conn, const char *name, const char *type)
{
    amqp_exchange_declare(conn, CT_CHANNEL, amqp_cstring_bytes(name), amqp_cstring_bytes(type),
                          0, 0, 0, 0, amqp_empty_table);
    return ct_rpc_ok(conn);
}

static void ct_delete_exchange(amqp_connection_state_t conn, const char *name)
{
    if (conn != NULL)
        amqp_exchange_delete(conn, CT_CHANNEL, amqp_cstring_bytes(name), 0);
}

static void ct_delete_queue(amqp_connection_state_t conn, const char *name)
{
    if (conn != NULL)
        amqp_queue_delete(conn, CT_CHANNEL, amqp_cstring_bytes(name), 0, 0);
}

static int ct_publish(amqp_connection_state_t conn, const char *exchange, const char *key,
                      const amqp_basic_properties_t *props, const char *body)
{
    return amqp_basic_publish(conn, CT_CHANNEL, amqp_cstring_bytes(exchange),
                              amqp_cstring_bytes(key), 0, 0, props, amqp_cstring_bytes(body));
}

static bool ct_consume(amqp_connection_state_t conn, const char *queue, bool no_ack)
{
    amqp_basic_consume(conn, CT_CHANNEL, amqp_cstring_bytes(queue), amqp_empty_bytes, 0,
                       no_ack, 0, amqp_empty_table);
    return ct_rpc_ok(conn);
}

static bool ct_qos(amqp_connection_state_t conn, uint16_t prefetch)
{
    amqp_basic_qos(conn, CT_CHANNEL, 0, prefetch, 0);
    return ct_rpc_ok(conn);
}

/* Waits up to timeout_ms for one delivery. Returns 1 with *env filled (caller destroys it),
 * 0 on timeout, -1 on anything else (reason in why). */
static int ct_next_delivery(amqp_connection_state_t conn, int timeout_ms, amqp_envelope_t *env,
                            char *why, size_t whylen)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 1;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
        return 0;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
        amqp_frame_t frame;
        struct timeval one = {.tv_sec = 1};
        if (amqp_simple_wait_frame_noblock(conn, &frame, &one) == AMQP_STATUS_OK &&
            frame.frame_type == AMQP_FRAME_METHOD) {
            snprintf(why, whylen, "expected basic.deliver, got method 0x%08x",
                     frame.payload.method.id);
            return -1;
        }
    }
    ct_describe_reply(r, why, whylen);
    return -1;
}

/* basic.get: 1 with *msg filled (caller destroys it), 0 if the queue is empty, -1 on error. */
static int ct_get(amqp_connection_state_t conn, const char *queue, amqp_message_t *msg,
                  char *routing_key, size_t keylen)
{
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_basic_get(conn, CT_CHANNEL, amqp_cstring_bytes(queue), 1);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return -1;
    if (r.reply.id == AMQP_BASIC_GET_EMPTY_METHOD)
        return 0;
    if (r.reply.id != AMQP_BASIC_GET_OK_METHOD)
        return -1;
    const amqp_basic_get_ok_t *ok = r.reply.decoded;
    ct_str(ok->routing_key, routing_key, keylen);
    r = amqp_read_message(conn, CT_CHANNEL, msg, 0);
    return r.reply_type == AMQP_RESPONSE_NORMAL ? 1 : -1;
}

/* Drains a queue with basic.get into a "|"-separated list of routing keys, e.g. "a|b|c". */
static bool ct_drain_keys(amqp_connection_state_t conn, const char *queue, char *out,
                          size_t outlen)
{
    out[0] = '\0';
    for (int i = 0; i < 64; i++) {
        amqp_message_t msg;
        char key[256];
        int got = ct_get(conn, queue, &msg, key, sizeof key);
        if (got < 0)
            return false;
        if (got == 0)
            return true;
        amqp_destroy_message(&msg);
        size_t used = strlen(out);
        snprintf(out + used, outlen - used, "%s%s", used ? "|" : "", key);
    }
    return true;
}

/* ------------------------------------------------------------------------------------------ */
/* Publisher confirm bookkeeping shared by the confirm, routing and topic tests               */

struct ct_confirms {
    uint8_t settled[CT_MAX_TAGS + 1];   /* 0 open, 1 acked, 2 nacked */
    uint64_t published;                  /* highest delivery tag handed out */
    unsigned acks, nacks, returns;
    unsigned last_return_code;
};

static void ct_confirm_apply(struct ct_confirms *c, uint64_t tag, bool multiple, bool ack)
{
    uint64_t first = multiple ? 1 : tag;
    for (uint64_t t = first; t <= tag && t <= CT_MAX_TAGS; t++) {
        if (c->settled[t] != 0)
            continue;
        c->settled[t] = ack ? 1 : 2;
        if (ack)
            c->acks++;
        else
            c->nacks++;
    }
}

static bool ct_all_settled(const struct ct_confirms *c, uint64_t upto)
{
    for (uint64_t t = 1; t <= upto && t <= CT_MAX_TAGS; t++)
        if (c->settled[t] == 0)
            return false;
    return true;
}

/* Reads frames until tags 1..upto are settled. Returns false on timeout/error (why set). */
static bool ct_wait_confirms(amqp_connection_state_t conn, struct ct_confirms *c, uint64_t upto,
                             char *why, size_t whylen)
{
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!ct_all_settled(c, upto)) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed_ms = (now.tv_sec - start.tv_sec) * 1000 +
                          (now.tv_nsec - start.tv_nsec) / 1000000;
        if (elapsed_ms > CT_WAIT_MS) {
            snprintf(why, whylen, "confirms up to tag %llu not received in %d ms (%u acks)",
                     (unsigned long long)upto, CT_WAIT_MS, c->acks);
            return false;
        }
        amqp_frame_t frame;
        struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
        amqp_maybe_release_buffers(conn);
        int rc = amqp_simple_wait_frame_noblock(conn, &frame, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            continue;
        if (rc != AMQP_STATUS_OK) {
            snprintf(why, whylen, "waiting for confirms: %s", amqp_error_string2(rc));
            return false;
        }
        if (frame.frame_type != AMQP_FRAME_METHOD)
            continue;
        amqp_method_number_t id = frame.payload.method.id;
        if (id == AMQP_BASIC_ACK_METHOD) {
            const amqp_basic_ack_t *a = frame.payload.method.decoded;
            ct_confirm_apply(c, a->delivery_tag, a->multiple, true);
        } else if (id == AMQP_BASIC_NACK_METHOD) {
            const amqp_basic_nack_t *n = frame.payload.method.decoded;
            ct_confirm_apply(c, n->delivery_tag, n->multiple, false);
        } else if (id == AMQP_BASIC_RETURN_METHOD) {
            const amqp_basic_return_t *ret = frame.payload.method.decoded;
            c->last_return_code = ret->reply_code;
            c->returns++;
            amqp_message_t msg;   /* the returned content follows the method */
            if (amqp_read_message(conn, frame.channel, &msg, 0).reply_type !=
                AMQP_RESPONSE_NORMAL) {
                snprintf(why, whylen, "reading returned message failed");
                return false;
            }
            amqp_destroy_message(&msg);
        } else {
            snprintf(why, whylen, "unexpected method 0x%08x while waiting for confirms", id);
            return false;
        }
    }
    return true;
}

static bool ct_confirm_select(amqp_connection_state_t conn)
{
    amqp_confirm_select(conn, CT_CHANNEL);
    return ct_rpc_ok(conn);
}

/* Publishes with the next delivery tag accounted for; mandatory as asked. */
static int ct_publish_tracked(amqp_connection_state_t conn, struct ct_confirms *c,
                              const char *exchange, const char *key, bool mandatory,
                              const char *body)
{
    c->published++;
    return amqp_basic_publish(conn, CT_CHANNEL, amqp_cstring_bytes(exchange),
                              amqp_cstring_bytes(key), mandatory, 0, NULL,
                              amqp_cstring_bytes(body));
}

/* ------------------------------------------------------------------------------------------ */
/* Tutorial 1: hello world                                                                     */

static void test_hello_world(struct ct_test *t)
{
    amqp_connection_state_t conn = NULL;
    amqp_envelope_t env;
    bool have_env = false;
    char queue[128], declared[256], why[384], buf[256];
    ct_name(t, "hello", queue, sizeof queue);

    conn = ct_open(t);
    if (conn == NULL)
        goto out;
    CT_EXPECT(ct_declare_queue(conn, queue, false, false, declared, sizeof declared),
              "queue.declare: %s", ct_last_reply(conn));
    CT_EXPECT(strcmp(declared, queue) == 0, "declare-ok named '%s', want '%s'", declared, queue);
    CT_EXPECT(ct_publish(conn, "", queue, NULL, "Hello World!") == AMQP_STATUS_OK, "publish");
    CT_EXPECT(ct_consume(conn, queue, true), "basic.consume: %s", ct_last_reply(conn));
    int got = ct_next_delivery(conn, CT_WAIT_MS, &env, why, sizeof why);
    CT_EXPECT(got == 1, "no delivery: %s", got == 0 ? "timeout" : why);
    have_env = true;
    CT_EXPECT(ct_bytes_eq(env.message.body, "Hello World!"), "body '%s'",
              ct_str(env.message.body, buf, sizeof buf));
    CT_EXPECT(ct_bytes_eq(env.routing_key, queue), "routing key '%s'",
              ct_str(env.routing_key, buf, sizeof buf));
    CT_EXPECT(env.exchange.len == 0, "exchange '%s', want the default exchange",
              ct_str(env.exchange, buf, sizeof buf));
    CT_EXPECT(!env.redelivered, "first delivery flagged redelivered");
out:
    if (have_env)
        amqp_destroy_envelope(&env);
    ct_delete_queue(conn, queue);
    ct_close(conn);
}

/* ------------------------------------------------------------------------------------------ */
/* Tutorial 2: work queues                                                                     */

/* Worker side of the work queue: one delivery, checked to be a persistent task. Returns the
 * task number (1..N) or 0 after noting a failure. */
static int ct_take_task(struct ct_test *t, amqp_connection_state_t worker, uint64_t *tag,
                        bool *redelivered)
{
    amqp_envelope_t env;
    char why[384], body[64];
    int got = ct_next_delivery(worker, CT_WAIT_MS, &env, why, sizeof why);
    if (got != 1) {
        ct_note(t, __LINE__, "worker got no task: %s", got == 0 ? "timeout" : why);
        return 0;
    }
    int task = 0;
    ct_str(env.message.body, body, sizeof body);
    bool persistent = (env.message.properties._flags & AMQP_BASIC_DELIVERY_MODE_FLAG) &&
                      env.message.properties.delivery_mode == AMQP_DELIVERY_PERSISTENT;
    if (sscanf(body, "task %d", &task) != 1 || task < 1)
        ct_note(t, __LINE__, "unexpected task body '%s'", body);
    else if (!persistent)
        ct_note(t, __LINE__, "task '%s' lost delivery_mode 2", body);
    *tag = env.delivery_tag;
    if (redelivered)
        *redelivered = env.redelivered;
    amqp_destroy_envelope(&env);
    return t->failed ? 0 : task;
}

/* Proves prefetch 1: a worker holding an unacked task gets nothing more. */
static bool ct_expect_silence(struct ct_test *t, amqp_connection_state_t conn, const char *who)
{
    amqp_envelope_t env;
    char why[384], body[64];
    int got = ct_next_delivery(conn, CT_SILENCE_MS, &env, why, sizeof why);
    if (got == 0)
        return true;
    if (got == 1) {
        ct_note(t, __LINE__, "%s received '%s' beyond its prefetch/expectation", who,
                ct_str(env.message.body, body, sizeof body));
        amqp_destroy_envelope(&env);
    } else {
        ct_note(t, __LINE__, "%s: %s", who, why);
    }
    return false;
}

#define CT_TASKS 6

static void test_work_queues(struct ct_test *t)
{
    amqp_connection_state_t producer = NULL, a = NULL, b = NULL, c = NULL, d = NULL;
    struct ct_confirms *confirms = calloc(1, sizeof *confirms);
    char queue[128], body[32], why[384];
    int seen[CT_TASKS + 2] = {0};
    uint64_t tag_a = 0, tag_b = 0, tag = 0;
    bool redelivered = true;
    ct_name(t, "task_queue", queue, sizeof queue);

    CT_EXPECT(confirms != NULL, "out of memory");
    producer = ct_open(t);
    if (producer == NULL)
        goto out;
    CT_EXPECT(ct_declare_queue(producer, queue, true, false, NULL, 0), "declare: %s",
              ct_last_reply(producer));
    /* Confirms make the count below deterministic: a publish is asynchronous, and a
     * broker may answer the passive declare before the last task reached the queue. */
    CT_EXPECT(ct_confirm_select(producer), "confirm.select: %s", ct_last_reply(producer));
    amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                     .delivery_mode = AMQP_DELIVERY_PERSISTENT};
    for (int i = 1; i <= CT_TASKS; i++) {
        snprintf(body, sizeof body, "task %d", i);
        CT_EXPECT(ct_publish(producer, "", queue, &props, body) == AMQP_STATUS_OK, "publish");
    }
    CT_EXPECT(ct_wait_confirms(producer, confirms, CT_TASKS, why, sizeof why), "%s", why);
    long ready = ct_queue_count(producer, queue);
    CT_EXPECT(ready == CT_TASKS, "queue holds %ld tasks, want %d", ready, CT_TASKS);

    a = ct_open(t);
    b = ct_open(t);
    if (a == NULL || b == NULL)
        goto out;
    CT_EXPECT(ct_qos(a, 1) && ct_qos(b, 1), "basic.qos");
    CT_EXPECT(ct_consume(a, queue, false), "consume A: %s", ct_last_reply(a));
    int task = ct_take_task(t, a, &tag_a, NULL);
    if (task == 0)
        goto out;
    seen[task]++;
    CT_EXPECT(ct_consume(b, queue, false), "consume B: %s", ct_last_reply(b));
    if (!ct_expect_silence(t, a, "worker A (prefetch 1, one unacked)"))
        goto out;
    task = ct_take_task(t, b, &tag_b, NULL);
    if (task == 0)
        goto out;
    seen[task]++;
    /* Fair dispatch: each ack frees exactly one slot, refilled with the next task. */
    for (int round = 0; round < CT_TASKS - 2; round++) {
        amqp_connection_state_t w = round % 2 == 0 ? a : b;
        uint64_t *wtag = round % 2 == 0 ? &tag_a : &tag_b;
        CT_EXPECT(amqp_basic_ack(w, CT_CHANNEL, *wtag, 0) == AMQP_STATUS_OK, "ack");
        task = ct_take_task(t, w, wtag, NULL);
        if (task == 0)
            goto out;
        seen[task]++;
    }
    CT_EXPECT(amqp_basic_ack(a, CT_CHANNEL, tag_a, 0) == AMQP_STATUS_OK, "ack");
    CT_EXPECT(amqp_basic_ack(b, CT_CHANNEL, tag_b, 0) == AMQP_STATUS_OK, "ack");
    for (int i = 1; i <= CT_TASKS; i++)
        CT_EXPECT(seen[i] == 1, "task %d delivered %d times", i, seen[i]);
    if (!ct_expect_silence(t, a, "worker A (queue drained)") ||
        !ct_expect_silence(t, b, "worker B (queue drained)"))
        goto out;
    ct_close(a);
    ct_close(b);
    a = b = NULL;

    /* A worker that dies with an unacked task: the task comes back, flagged redelivered. */
    CT_EXPECT(ct_publish(producer, "", queue, &props, "task 7") == AMQP_STATUS_OK, "publish");
    CT_EXPECT(ct_wait_confirms(producer, confirms, CT_TASKS + 1, why, sizeof why), "%s", why);
    c = ct_open(t);
    if (c == NULL)
        goto out;
    CT_EXPECT(ct_qos(c, 1) && ct_consume(c, queue, false), "consume C: %s", ct_last_reply(c));
    task = ct_take_task(t, c, &tag, &redelivered);
    CT_EXPECT(task == 7, "worker C got task %d, want 7", task);
    CT_EXPECT(!redelivered, "first delivery of task 7 flagged redelivered");
    ct_close(c);   /* dies without acking */
    c = NULL;
    d = ct_open(t);
    if (d == NULL)
        goto out;
    CT_EXPECT(ct_qos(d, 1) && ct_consume(d, queue, false), "consume D: %s", ct_last_reply(d));
    task = ct_take_task(t, d, &tag, &redelivered);
    CT_EXPECT(task == 7, "worker D got task %d, want the requeued task 7", task);
    CT_EXPECT(redelivered, "requeued task 7 not flagged redelivered");
    CT_EXPECT(amqp_basic_ack(d, CT_CHANNEL, tag, 0) == AMQP_STATUS_OK, "ack");
    ready = ct_queue_count(producer, queue);
    CT_EXPECT(ready == 0, "queue still holds %ld messages", ready);
out:
    ct_close(a);
    ct_close(b);
    ct_close(c);
    ct_close(d);
    ct_delete_queue(producer, queue);
    ct_close(producer);
    free(confirms);
}

/* ------------------------------------------------------------------------------------------ */
/* Tutorial 3: publish/subscribe                                                               */

/* Expects exactly the given bodies, in order, then silence. */
static bool ct_expect_bodies(struct ct_test *t, amqp_connection_state_t conn, const char *who,
                             const char *const *bodies, int n)
{
    char why[384], body[256];
    for (int i = 0; i < n; i++) {
        amqp_envelope_t env;
        int got = ct_next_delivery(conn, CT_WAIT_MS, &env, why, sizeof why);
        if (got != 1) {
            ct_note(t, __LINE__, "%s: message %d missing: %s", who, i + 1,
                    got == 0 ? "timeout" : why);
            return false;
        }
        bool match = ct_bytes_eq(env.message.body, bodies[i]);
        ct_str(env.message.body, body, sizeof body);
        amqp_destroy_envelope(&env);
        if (!match) {
            ct_note(t, __LINE__, "%s: message %d is '%s', want '%s'", who, i + 1, body,
                    bodies[i]);
            return false;
        }
    }
    return ct_expect_silence(t, conn, who);
}

static void test_publish_subscribe(struct ct_test *t)
{
    amqp_connection_state_t pub = NULL, s1 = NULL, s2 = NULL;
    char exchange[128], q1[256] = "", q2[256] = "";
    static const char *const logs[] = {"log one", "log two", "log three"};
    ct_name(t, "logs", exchange, sizeof exchange);

    pub = ct_open(t);
    s1 = ct_open(t);
    s2 = ct_open(t);
    if (pub == NULL || s1 == NULL || s2 == NULL)
        goto out;
    CT_EXPECT(ct_declare_exchange(pub, exchange, "fanout"), "exchange.declare: %s",
              ct_last_reply(pub));
    CT_EXPECT(ct_declare_queue(s1, "", false, true, q1, sizeof q1), "declare 1: %s",
              ct_last_reply(s1));
    CT_EXPECT(ct_declare_queue(s2, "", false, true, q2, sizeof q2), "declare 2: %s",
              ct_last_reply(s2));
    CT_EXPECT(q1[0] != '\0' && q2[0] != '\0', "server-named queue came back without a name");
    CT_EXPECT(strcmp(q1, q2) != 0, "two server-named queues share the name '%s'", q1);
    CT_EXPECT(ct_bind(s1, q1, exchange, "") && ct_bind(s2, q2, exchange, ""), "bind: %s",
              ct_last_reply(s1));
    CT_EXPECT(ct_consume(s1, q1, true) && ct_consume(s2, q2, true), "consume");
    for (int i = 0; i < 3; i++)
        CT_EXPECT(ct_publish(pub, exchange, "ignored-by-fanout", NULL, logs[i]) ==
                      AMQP_STATUS_OK, "publish");
    if (!ct_expect_bodies(t, s1, "subscriber 1", logs, 3) ||
        !ct_expect_bodies(t, s2, "subscriber 2", logs, 3))
        goto out;

    /* Exclusive: another connection may not use the queue, even passively. */
    long n = ct_queue_count(pub, q1);
    CT_EXPECT(n < 0 && ct_close_code(pub) == AMQP_RESOURCE_LOCKED,
              "passive declare of another connection's exclusive queue: %s, want 405",
              n >= 0 ? "allowed" : ct_last_reply(pub));
    CT_EXPECT(ct_reopen_channel(pub), "channel reopen after 405: %s", ct_last_reply(pub));
    /* ... and it disappears with its connection. */
    ct_close(s1);
    s1 = NULL;
    n = ct_queue_count(pub, q1);
    CT_EXPECT(n < 0 && ct_close_code(pub) == AMQP_NOT_FOUND,
              "exclusive queue after its connection closed: %s, want 404",
              n >= 0 ? "still there" : ct_last_reply(pub));
    CT_EXPECT(ct_reopen_channel(pub), "channel reopen after 404: %s", ct_last_reply(pub));
out:
    ct_delete_exchange(pub, exchange);
    ct_close(s1);
    ct_close(s2);
    ct_close(pub);
}

/* ------------------------------------------------------------------------------------------ */
/* Tutorials 4 and 5: routing (direct) and topics                                              */

/* Publishes one message per routing key through a confirm channel, so that every message
 * has been routed (or dropped) before the queues are inspected with basic.get. */
static bool ct_publish_keys_confirmed(struct ct_test *t, amqp_connection_state_t conn,
                                      const char *exchange, const char *const *keys, int n)
{
    struct ct_confirms *c = calloc(1, sizeof *c);
    char why[384];
    bool ok = c != NULL;
    if (!ok)
        ct_note(t, __LINE__, "out of memory");
    for (int i = 0; ok && i < n; i++) {
        if (ct_publish_tracked(conn, c, exchange, keys[i], false, keys[i]) != AMQP_STATUS_OK) {
            ct_note(t, __LINE__, "publish '%s' failed", keys[i]);
            ok = false;
        }
    }
    if (ok && !ct_wait_confirms(conn, c, (uint64_t)n, why, sizeof why)) {
        ct_note(t, __LINE__, "%s", why);
        ok = false;
    }
    if (ok && c->nacks > 0) {
        ct_note(t, __LINE__, "%u publishes nacked", c->nacks);
        ok = false;
    }
    free(c);
    return ok;
}

/* Declares a server-named exclusive queue bound with each key in `keys` ("" terminated). */
static bool ct_bound_queue(struct ct_test *t, amqp_connection_state_t conn,
                           const char *exchange, const char *const *keys, char *queue,
                           size_t qlen)
{
    if (!ct_declare_queue(conn, "", false, true, queue, qlen)) {
        ct_note(t, __LINE__, "queue.declare: %s", ct_last_reply(conn));
        return false;
    }
    for (int i = 0; keys[i] != NULL; i++) {
        if (!ct_bind(conn, queue, exchange, keys[i])) {
            ct_note(t, __LINE__, "bind '%s': %s", keys[i], ct_last_reply(conn));
            return false;
        }
    }
    return true;
}

static bool ct_expect_keys(struct ct_test *t, amqp_connection_state_t conn, const char *queue,
                           const char *who, const char *want)
{
    char got[2048];
    if (!ct_drain_keys(conn, queue, got, sizeof got)) {
        ct_note(t, __LINE__, "%s: basic.get failed: %s", who, ct_last_reply(conn));
        return false;
    }
    if (strcmp(got, want) != 0) {
        ct_note(t, __LINE__, "%s received [%s], want [%s]", who, got, want);
        return false;
    }
    return true;
}

static void test_routing(struct ct_test *t)
{
    amqp_connection_state_t conn = NULL;
    char exchange[128], q_errors[256], q_all[256];
    static const char *const errors_only[] = {"error", NULL};
    static const char *const all_levels[] = {"info", "warning", "error", NULL};
    static const char *const published[] = {"info", "warning", "error", "debug", "error"};
    ct_name(t, "direct_logs", exchange, sizeof exchange);

    conn = ct_open(t);
    if (conn == NULL)
        goto out;
    CT_EXPECT(ct_declare_exchange(conn, exchange, "direct"), "exchange.declare: %s",
              ct_last_reply(conn));
    if (!ct_bound_queue(t, conn, exchange, errors_only, q_errors, sizeof q_errors) ||
        !ct_bound_queue(t, conn, exchange, all_levels, q_all, sizeof q_all))
        goto out;
    CT_EXPECT(ct_confirm_select(conn), "confirm.select: %s", ct_last_reply(conn));
    if (!ct_publish_keys_confirmed(t, conn, exchange, published, 5))
        goto out;
    if (!ct_expect_keys(t, conn, q_errors, "queue bound to error", "error|error") ||
        !ct_expect_keys(t, conn, q_all, "queue bound to info/warning/error",
                        "info|warning|error|error"))
        goto out;
out:
    ct_delete_exchange(conn, exchange);
    ct_close(conn);
}

static void test_topics(struct ct_test *t)
{
    amqp_connection_state_t conn = NULL;
    char exchange[128], q_orange[256], q_lazy[256], q_all[256];
    static const char *const orange[] = {"*.orange.*", NULL};
    static const char *const lazy_rabbit[] = {"*.*.rabbit", "lazy.#", NULL};
    static const char *const everything[] = {"#", NULL};
    static const char *const keys[] = {
        "quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox", "lazy.brown.fox",
        "lazy.pink.rabbit", "quick.brown.fox", "orange", "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit", "lazy",
    };
    ct_name(t, "topic_logs", exchange, sizeof exchange);

    conn = ct_open(t);
    if (conn == NULL)
        goto out;
    CT_EXPECT(ct_declare_exchange(conn, exchange, "topic"), "exchange.declare: %s",
              ct_last_reply(conn));
    if (!ct_bound_queue(t, conn, exchange, orange, q_orange, sizeof q_orange) ||
        !ct_bound_queue(t, conn, exchange, lazy_rabbit, q_lazy, sizeof q_lazy) ||
        !ct_bound_queue(t, conn, exchange, everything, q_all, sizeof q_all))
        goto out;
    CT_EXPECT(ct_confirm_select(conn), "confirm.select: %s", ct_last_reply(conn));
    if (!ct_publish_keys_confirmed(t, conn, exchange, keys, 10))
        goto out;
    /* lazy.pink.rabbit matches both bindings of the second queue but arrives once. */
    if (!ct_expect_keys(t, conn, q_orange, "*.orange.*",
                        "quick.orange.rabbit|lazy.orange.elephant|quick.orange.fox") ||
        !ct_expect_keys(t, conn, q_lazy, "*.*.rabbit + lazy.#",
                        "quick.orange.rabbit|lazy.orange.elephant|lazy.brown.fox|"
                        "lazy.pink.rabbit|lazy.orange.new.rabbit|lazy") ||
        !ct_expect_keys(t, conn, q_all, "#",
                        "quick.orange.rabbit|lazy.orange.elephant|quick.orange.fox|"
                        "lazy.brown.fox|lazy.pink.rabbit|quick.brown.fox|orange|"
                        "quick.orange.new.rabbit|lazy.orange.new.rabbit|lazy"))
        goto out;
out:
    ct_delete_exchange(conn, exchange);
    ct_close(conn);
}

/* ------------------------------------------------------------------------------------------ */
/* Tutorial 6: RPC                                                                             */

static unsigned long long ct_fib(unsigned n)
{
    unsigned long long a = 0, b = 1;
    for (unsigned i = 0; i < n; i++) {
        unsigned long long next = a + b;
        a = b;
        b = next;
    }
    return a;
}

/* The server half: takes one request, answers to its reply_to with its correlation_id. */
static bool ct_rpc_serve_one(struct ct_test *t, amqp_connection_state_t server)
{
    amqp_envelope_t env;
    char why[384], body[32], reply[32];
    int got = ct_next_delivery(server, CT_WAIT_MS, &env, why, sizeof why);
    if (got != 1) {
        ct_note(t, __LINE__, "server got no request: %s", got == 0 ? "timeout" : why);
        return false;
    }
    amqp_basic_properties_t *req = &env.message.properties;
    bool ok = (req->_flags & AMQP_BASIC_REPLY_TO_FLAG) &&
              (req->_flags & AMQP_BASIC_CORRELATION_ID_FLAG);
    if (!ok) {
        ct_note(t, __LINE__, "request lost reply_to/correlation_id (flags 0x%04x)",
                (unsigned)req->_flags);
    } else {
        unsigned n = (unsigned)strtoul(ct_str(env.message.body, body, sizeof body), NULL, 10);
        snprintf(reply, sizeof reply, "%llu", ct_fib(n));
        amqp_basic_properties_t props = {._flags = AMQP_BASIC_CORRELATION_ID_FLAG,
                                         .correlation_id = req->correlation_id};
        ok = amqp_basic_publish(server, CT_CHANNEL, amqp_empty_bytes, req->reply_to, 0, 0,
                                &props, amqp_cstring_bytes(reply)) == AMQP_STATUS_OK &&
             amqp_basic_ack(server, CT_CHANNEL, env.delivery_tag, 0) == AMQP_STATUS_OK;
        if (!ok)
            ct_note(t, __LINE__, "server failed to reply");
    }
    amqp_destroy_envelope(&env);
    return ok;
}

static void test_rpc(struct ct_test *t)
{
    amqp_connection_state_t server = NULL, client = NULL;
    char rpc_queue[128], callback[256], corr[96], body[64], why[384], want[32];
    static const unsigned inputs[] = {0, 1, 10, 30, 90};
    ct_name(t, "rpc_queue", rpc_queue, sizeof rpc_queue);

    server = ct_open(t);
    client = ct_open(t);
    if (server == NULL || client == NULL)
        goto out;
    CT_EXPECT(ct_declare_queue(server, rpc_queue, false, false, NULL, 0), "declare: %s",
              ct_last_reply(server));
    CT_EXPECT(ct_qos(server, 1) && ct_consume(server, rpc_queue, false), "server consume: %s",
              ct_last_reply(server));
    CT_EXPECT(ct_declare_queue(client, "", false, true, callback, sizeof callback),
              "callback queue: %s", ct_last_reply(client));
    CT_EXPECT(ct_consume(client, callback, true), "client consume: %s", ct_last_reply(client));

    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        snprintf(corr, sizeof corr, "call-%zu-%s", i, t->cfg->suffix);
        snprintf(body, sizeof body, "%u", inputs[i]);
        amqp_basic_properties_t props = {
            ._flags = AMQP_BASIC_REPLY_TO_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG,
            .reply_to = amqp_cstring_bytes(callback),
            .correlation_id = amqp_cstring_bytes(corr),
        };
        CT_EXPECT(ct_publish(client, "", rpc_queue, &props, body) == AMQP_STATUS_OK, "request");
        if (!ct_rpc_serve_one(t, server))
            goto out;
        amqp_envelope_t env;
        int got = ct_next_delivery(client, CT_WAIT_MS, &env, why, sizeof why);
        CT_EXPECT(got == 1, "no reply to fib(%u): %s", inputs[i], got == 0 ? "timeout" : why);
        bool corr_ok = (env.message.properties._flags & AMQP_BASIC_CORRELATION_ID_FLAG) &&
                       ct_bytes_eq(env.message.properties.correlation_id, corr);
        snprintf(want, sizeof want, "%llu", ct_fib(inputs[i]));
        bool body_ok = ct_bytes_eq(env.message.body, want);
        ct_str(env.message.body, body, sizeof body);
        amqp_destroy_envelope(&env);
        CT_EXPECT(corr_ok, "reply to call %zu lost its correlation_id", i);
        CT_EXPECT(body_ok, "fib(%u) replied '%s', want %s", inputs[i], body, want);
    }
out:
    ct_delete_queue(server, rpc_queue);
    ct_close(client);
    ct_close(server);
}

/* ------------------------------------------------------------------------------------------ */
/* Tutorial 7: publisher confirms                                                              */

static void test_publisher_confirms(struct ct_test *t)
{
    amqp_connection_state_t conn = NULL;
    struct ct_confirms *c = calloc(1, sizeof *c);
    char queue[128], unroutable[128], why[384], body[32];
    ct_name(t, "confirms", queue, sizeof queue);
    ct_name(t, "nobody-home", unroutable, sizeof unroutable);

    CT_EXPECT(c != NULL, "out of memory");
    conn = ct_open(t);
    if (conn == NULL)
        goto out;
    CT_EXPECT(ct_declare_queue(conn, queue, true, false, NULL, 0), "declare: %s",
              ct_last_reply(conn));
    CT_EXPECT(ct_confirm_select(conn), "confirm.select: %s", ct_last_reply(conn));

    /* Strategy 1: one at a time, each waited for. */
    for (int i = 0; i < 50; i++) {
        snprintf(body, sizeof body, "single %d", i);
        CT_EXPECT(ct_publish_tracked(conn, c, "", queue, false, body) == AMQP_STATUS_OK,
                  "publish");
        CT_EXPECT(ct_wait_confirms(conn, c, c->published, why, sizeof why), "single: %s", why);
    }
    /* Strategy 2: a batch of 100, then wait for all of it. */
    for (int i = 0; i < 100; i++) {
        snprintf(body, sizeof body, "batch %d", i);
        CT_EXPECT(ct_publish_tracked(conn, c, "", queue, false, body) == AMQP_STATUS_OK,
                  "publish");
    }
    CT_EXPECT(ct_wait_confirms(conn, c, c->published, why, sizeof why), "batch: %s", why);
    /* Strategy 3: a sliding window of 20 outstanding. */
    for (int i = 0; i < 150; i++) {
        if (c->published >= 20)   /* the next publish would be the 21st open one */
            CT_EXPECT(ct_wait_confirms(conn, c, c->published - 19, why, sizeof why),
                      "window: %s", why);
        snprintf(body, sizeof body, "window %d", i);
        CT_EXPECT(ct_publish_tracked(conn, c, "", queue, false, body) == AMQP_STATUS_OK,
                  "publish");
    }
    CT_EXPECT(ct_wait_confirms(conn, c, c->published, why, sizeof why), "window: %s", why);
    CT_EXPECT(c->acks == 300 && c->nacks == 0, "%u acks and %u nacks for 300 publishes",
              c->acks, c->nacks);
    long ready = ct_queue_count(conn, queue);
    CT_EXPECT(ready == 300, "queue holds %ld messages, want 300", ready);

    /* Mandatory and unroutable: basic.return (312 NO_ROUTE) first, then still an ack. */
    CT_EXPECT(ct_publish_tracked(conn, c, "", unroutable, true, "lost") == AMQP_STATUS_OK,
              "publish");
    CT_EXPECT(ct_wait_confirms(conn, c, c->published, why, sizeof why), "unroutable: %s", why);
    CT_EXPECT(c->returns == 1 && c->last_return_code == AMQP_NO_ROUTE,
              "%u basic.return (code %u) for an unroutable mandatory publish, want 1 (312)",
              c->returns, c->last_return_code);
    CT_EXPECT(c->settled[c->published] == 1, "unroutable publish was nacked, want acked");
out:
    ct_delete_queue(conn, queue);
    ct_close(conn);
    free(c);
}

/* ------------------------------------------------------------------------------------------ */
/* Errors every tutorial client eventually meets                                               */

static void test_channel_errors(struct ct_test *t)
{
    amqp_connection_state_t conn = NULL;
    char missing[128], queue[128];
    ct_name(t, "no-such-thing", missing, sizeof missing);
    ct_name(t, "after-errors", queue, sizeof queue);

    conn = ct_open(t);
    if (conn == NULL)
        goto out;
    /* Passive declare of a missing queue: 404 closes the channel only. */
    long n = ct_queue_count(conn, missing);
    CT_EXPECT(n < 0 && ct_close_code(conn) == AMQP_NOT_FOUND,
              "passive declare of a missing queue: %s, want 404",
              n >= 0 ? "succeeded" : ct_last_reply(conn));
    CT_EXPECT(ct_reopen_channel(conn), "reopen: %s", ct_last_reply(conn));
    /* Consuming from a missing queue: 404. */
    CT_EXPECT(!ct_consume(conn, missing, true) && ct_close_code(conn) == AMQP_NOT_FOUND,
              "consume from a missing queue: %s, want 404", ct_last_reply(conn));
    CT_EXPECT(ct_reopen_channel(conn), "reopen: %s", ct_last_reply(conn));
    /* Publishing to a missing exchange: the channel is closed asynchronously with 404, which
     * the next synchronous call on that channel reports. */
    CT_EXPECT(ct_publish(conn, missing, "k", NULL, "x") == AMQP_STATUS_OK, "publish");
    CT_EXPECT(!ct_declare_queue(conn, queue, false, false, NULL, 0) &&
                  ct_close_code(conn) == AMQP_NOT_FOUND,
              "publish to a missing exchange: %s, want channel.close 404",
              ct_last_reply(conn));
    CT_EXPECT(ct_reopen_channel(conn), "reopen: %s", ct_last_reply(conn));
    /* The connection survived all of it. */
    CT_EXPECT(ct_declare_queue(conn, queue, false, false, NULL, 0), "declare after errors: %s",
              ct_last_reply(conn));
out:
    ct_delete_queue(conn, queue);
    ct_close(conn);
}

/* ------------------------------------------------------------------------------------------ */
/* Runner                                                                                     */

struct ct_case {
    const char *name;
    void (*run)(struct ct_test *t);
};

static const struct ct_case ct_cases[] = {
    {"hello_world", test_hello_world},
    {"work_queues", test_work_queues},
    {"publish_subscribe", test_publish_subscribe},
    {"routing", test_routing},
    {"topics", test_topics},
    {"rpc", test_rpc},
    {"publisher_confirms", test_publisher_confirms},
    {"channel_errors", test_channel_errors},
};

#define CT_NCASES (sizeof ct_cases / sizeof ct_cases[0])

static bool ct_selected(const char *name, char **filters, int nfilters)
{
    if (nfilters == 0)
        return true;
    for (int i = 0; i < nfilters; i++)
        if (strcmp(filters[i], name) == 0)
            return true;
    return false;
}

/* Accepts "HOST PORT ..." and "HOST:PORT ..."; returns how many argv entries were used. */
static int ct_parse_target(int argc, char **argv, struct ct_config *cfg, char *hostbuf,
                           size_t hostlen)
{
    if (argc < 2)
        return -1;
    const char *colon = strrchr(argv[1], ':');
    const char *port_text;
    int used;
    if (colon != NULL) {
        size_t n = (size_t)(colon - argv[1]);
        if (n == 0 || n >= hostlen)
            return -1;
        memcpy(hostbuf, argv[1], n);
        hostbuf[n] = '\0';
        cfg->host = hostbuf;
        port_text = colon + 1;
        used = 2;
    } else {
        if (argc < 3)
            return -1;
        cfg->host = argv[1];
        port_text = argv[2];
        used = 3;
    }
    char *end = NULL;
    long port = strtol(port_text, &end, 10);
    if (*port_text == '\0' || *end != '\0' || port < 1 || port > 65535)
        return -1;
    cfg->port = (int)port;
    return used;
}

int main(int argc, char **argv)
{
    struct ct_config cfg = {0};
    char host[256];
    int used = ct_parse_target(argc, argv, &cfg, host, sizeof host);
    if (used < 0) {
        fprintf(stderr, "usage: %s HOST PORT [TEST...] | HOST:PORT [TEST...]\ntests:", argv[0]);
        for (size_t i = 0; i < CT_NCASES; i++)
            fprintf(stderr, " %s", ct_cases[i].name);
        fprintf(stderr, "\n(credentials: AMQP_USER, AMQP_PASS; default guest/guest)\n");
        return 2;
    }
    char **filters = argv + used;
    int nfilters = argc - used;
    for (int i = 0; i < nfilters; i++) {
        bool known = false;
        for (size_t j = 0; j < CT_NCASES; j++)
            known = known || strcmp(filters[i], ct_cases[j].name) == 0;
        if (!known) {
            fprintf(stderr, "unknown test '%s'\n", filters[i]);
            return 2;
        }
    }
    cfg.user = getenv("AMQP_USER") ? getenv("AMQP_USER") : "guest";
    cfg.pass = getenv("AMQP_PASS") ? getenv("AMQP_PASS") : "guest";
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(cfg.suffix, sizeof cfg.suffix, "ct%ld.%ld", (long)getpid(),
             (long)(now.tv_nsec / 1000));

    int passed = 0, failed = 0;
    for (size_t i = 0; i < CT_NCASES; i++) {
        if (!ct_selected(ct_cases[i].name, filters, nfilters))
            continue;
        struct ct_test t = {.cfg = &cfg};
        ct_cases[i].run(&t);
        if (t.failed) {
            failed++;
            printf("FAIL %s: %s\n", ct_cases[i].name, t.why);
        } else {
            passed++;
            printf("ok   %s\n", ct_cases[i].name);
        }
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
