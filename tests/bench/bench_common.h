/* bench_common.h - what the benchmark programs (warren_bench, pipeline_bench, cluster_bench)
 * share: the latency histogram, the description of librabbitmq replies, and opening and closing
 * a connection. The histogram has log-linear
 * buckets, 32 per power of two, so any reported percentile is within ~3% of the true sample
 * while the table stays a fixed 15 KB; values below 64 ns get exact buckets, above that a
 * value's bucket is its binary exponent plus its next 5 significant bits. Header-only (static
 * inline) because every .c file under tests/bench builds into its own program. */
#ifndef WARREN_BENCH_COMMON_H
#define WARREN_BENCH_COMMON_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <sys/time.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#define HIST_SUB_BITS 5u
#define HIST_SUB (1u << HIST_SUB_BITS)
#define HIST_BUCKETS ((64u - HIST_SUB_BITS + 1u) * HIST_SUB)

struct latency_hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t samples;
    uint64_t max_ns;
};

static inline unsigned hist_bucket_of(uint64_t ns)
{
    if (ns < 2u * HIST_SUB)
        return (unsigned)ns;
    unsigned msb = 63u - (unsigned)__builtin_clzll(ns);
    unsigned shift = msb - HIST_SUB_BITS;
    return (msb - HIST_SUB_BITS) * HIST_SUB + (unsigned)(ns >> shift);
}

static inline uint64_t hist_bucket_low(unsigned bucket)
{
    if (bucket < 2u * HIST_SUB)
        return bucket;
    unsigned group = bucket / HIST_SUB;
    uint64_t mantissa = (uint64_t)(bucket % HIST_SUB + HIST_SUB);
    return mantissa << (group - 1u);
}

static inline void hist_record(struct latency_hist *h, uint64_t ns)
{
    h->counts[hist_bucket_of(ns)]++;
    h->samples++;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

static inline void hist_merge(struct latency_hist *into, const struct latency_hist *from)
{
    for (unsigned i = 0; i < HIST_BUCKETS; i++)
        into->counts[i] += from->counts[i];
    into->samples += from->samples;
    if (from->max_ns > into->max_ns)
        into->max_ns = from->max_ns;
}

/* The value below which a fraction q of the samples lie (bucket midpoint, capped by the
 * observed maximum). */
static inline uint64_t hist_percentile(const struct latency_hist *h, double q)
{
    if (h->samples == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->samples + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t low = hist_bucket_low(i);
            uint64_t high = i + 1 < HIST_BUCKETS ? hist_bucket_low(i + 1) - 1 : UINT64_MAX;
            uint64_t mid = low + (high - low) / 2;
            return mid < h->max_ns ? mid : h->max_ns;
        }
    }
    return h->max_ns;
}

/* librabbitmq RPC replies described for error messages. */
static inline void bench_describe_reply(amqp_rpc_reply_t reply, char *buf, size_t len)
{
    switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, len, "ok");
        return;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, len, "no reply from broker");
        return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, len, "%s", amqp_error_string2(reply.library_error));
        return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *c = reply.reply.decoded;
            snprintf(buf, len, "connection closed by broker: %u %.*s", c->reply_code,
                     (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        } else if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *c = reply.reply.decoded;
            snprintf(buf, len, "channel closed by broker: %u %.*s", c->reply_code,
                     (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        } else {
            snprintf(buf, len, "unexpected broker method 0x%08x", reply.reply.id);
        }
        return;
    }
    snprintf(buf, len, "unknown reply type %d", (int)reply.reply_type);
}

/* Checks the reply of the last synchronous call; on failure writes why into err. */
static inline bool bench_reply_ok(amqp_connection_state_t conn, const char *what, char *err,
                           size_t errlen)
{
    amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn);
    if (reply.reply_type == AMQP_RESPONSE_NORMAL)
        return true;
    char detail[384];
    bench_describe_reply(reply, detail, sizeof detail);
    snprintf(err, errlen, "%s: %s", what, detail);
    return false;
}

/* Every program uses channel 1 of its connections, the default frame_max, and these bounds. */
#define BENCH_CONN_CHANNEL 1
#define BENCH_CONN_FRAME_MAX 131072
#define BENCH_CONN_HANDSHAKE_S 10
#define BENCH_CONN_RPC_S 30

/* Opens a connection (PLAIN login) with channel BENCH_CONN_CHANNEL open; the TCP connect is
 * bounded by connect_s, the handshake and every RPC by the limits above. NULL with err filled
 * on failure. */
static inline amqp_connection_state_t bench_open(const char *host, int port, const char *vhost, const char *user,
                                                 const char *pass, double connect_s, char *err, size_t errlen)
{
    amqp_connection_state_t conn = amqp_new_connection();
    if (conn == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    amqp_socket_t *socket = amqp_tcp_socket_new(conn);
    if (socket == NULL) {
        snprintf(err, errlen, "cannot create socket");
        amqp_destroy_connection(conn);
        return NULL;
    }
    struct timeval connect_tv = {.tv_sec = (time_t)connect_s,
                                 .tv_usec = (suseconds_t)((connect_s - (double)(time_t)connect_s) * 1e6)};
    int rc = amqp_socket_open_noblock(socket, host, port, &connect_tv);
    if (rc != AMQP_STATUS_OK) {
        snprintf(err, errlen, "connect to %s:%d: %s", host, port, amqp_error_string2(rc));
        amqp_destroy_connection(conn);
        return NULL;
    }
    struct timeval handshake_tv = {.tv_sec = BENCH_CONN_HANDSHAKE_S};
    struct timeval rpc_tv = {.tv_sec = BENCH_CONN_RPC_S};
    amqp_set_handshake_timeout(conn, &handshake_tv);
    amqp_set_rpc_timeout(conn, &rpc_tv);
    amqp_rpc_reply_t reply = amqp_login(conn, vhost, 0, BENCH_CONN_FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN, user, pass);
    if (reply.reply_type != AMQP_RESPONSE_NORMAL) {
        char detail[384];
        bench_describe_reply(reply, detail, sizeof detail);
        snprintf(err, errlen, "login to %s:%d: %s", host, port, detail);
        amqp_destroy_connection(conn);
        return NULL;
    }
    amqp_channel_open(conn, BENCH_CONN_CHANNEL);
    if (!bench_reply_ok(conn, "channel.open", err, errlen)) {
        amqp_destroy_connection(conn);
        return NULL;
    }
    return conn;
}

/* Closes politely when the connection is healthy; after an error the close may fail, which does
 * not matter because the socket is torn down either way. */
static inline void bench_close(amqp_connection_state_t conn, bool healthy)
{
    if (conn == NULL)
        return;
    if (healthy) {
        amqp_channel_close(conn, BENCH_CONN_CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(conn);
}

#endif
