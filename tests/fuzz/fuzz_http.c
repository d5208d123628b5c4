/* fuzz_http.c - libFuzzer target for the management API's request path: HTTP parsing
 * (libhttp-parser driven by mgmt/http.c: limits, pipelining, keep-alive), URL decoding and
 * routing, Basic auth and tag checks (mgmt/router.c) and the endpoints themselves (mgmt/api_*.c)
 * on a real broker core (unclustered, no store), with the default guest user.
 *
 * The input is the byte stream of one connection, cut into chunks whose sizes come from the
 * input's first byte, so requests split across reads are covered. A sink transport collects the
 * responses. After each input what the input created (queues, exchanges, vhosts, users,
 * policies) is deleted again, so runs do not accumulate state.
 *
 * Properties checked (abort() on violation):
 *   - nothing crashes, leaks or reads out of bounds (ASan/UBSan);
 *   - the output is a sequence of responses, each starting with "HTTP/1.1 " and a 3-digit status
 *     and carrying a content-length, followed by that many body bytes (none after HEAD);
 *   - no bytes are written after the transport was asked to close. */
#include <ev.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/broker.h"
#include "broker/config.h"
#include "mgmt/internal.h"

struct sink {
    char *buf;
    size_t len, cap;
    bool closed;
};

static void sink_write(void *ud, const void *data, size_t len)
{
    struct sink *s = ud;
    if (s->closed) abort();
    if (s->len + len > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + len) cap *= 2;
        s->buf = realloc(s->buf, cap);
        if (!s->buf) abort();
        s->cap = cap;
    }
    memcpy(s->buf + s->len, data, len);
    s->len += len;
}

static void sink_close(void *ud) { ((struct sink *)ud)->closed = true; }

static const mgmt_io_t sink_io = {sink_write, sink_close, NULL, NULL};

static broker_t *broker;
static mgmt_t *mgmt;

static void setup(void)
{
    static cfg_t cfg;
    cfg_defaults(&cfg);
    cfg.log_level = 4; /* none */
    struct ev_loop *loop = ev_loop_new(0);
    broker = broker_new(loop, &cfg, NULL);
    br_vhost_add(broker, "/");
    char err[256];
    if (broker_boot_defaults(broker, err, sizeof err) != 0) abort();
    mgmt = mgmt_new(loop, broker, NULL, &cfg);
}

/* Checks that out is a sequence of well-formed responses. */
static void check_output(const char *out, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        if (len - pos < 13 || memcmp(out + pos, "HTTP/1.1 ", 9) != 0) abort();
        for (int i = 9; i < 12; i++)
            if (out[pos + i] < '0' || out[pos + i] > '9') abort();
        const char *end = memmem(out + pos, len - pos, "\r\n\r\n", 4);
        if (!end) abort();
        const char *cl = memmem(out + pos, (size_t)(end - (out + pos)), "content-length: ", 16);
        if (!cl) abort();
        size_t body = strtoul(cl + 16, NULL, 10);
        size_t start = (size_t)(end - out) + 4;
        /* a HEAD response announces the length of a body it does not carry */
        bool bodyless = start + body > len || (start + body < len && memcmp(out + start + body, "HTTP/1.1 ", 9) != 0);
        pos = bodyless ? start : start + body;
    }
}

/* Deletes the vhosts, users and policies the input created (a deleted user or vhost is only
 * unlinked: the broker keeps it until it is freed, so this grows a little per input). */
static void cleanup_registry(void)
{
    size_t pos = 0;
    void *v;
    while (dict_next(&broker->vhosts, &pos, NULL, NULL, &v))
        if (strcmp(((vhost_t *)v)->name, "/") != 0) br_vhost_delete(broker, v);
    pos = 0;
    while (dict_next(&broker->users, &pos, NULL, NULL, &v))
        if (strcmp(((user_t *)v)->name, "guest") != 0) br_user_delete(broker, v);
    vhost_t *root = br_vhost(broker, "/", 1);
    while (root->policies.n) br_policy_clear(root, false, ((policy_t *)root->policies.items[0])->name);
}

/* Deletes what the input declared (queues, non-default exchanges), as a fresh broker has none. */
static void cleanup(void)
{
    cleanup_registry();
    size_t pos = 0;
    void *v;
    while (dict_next(&broker->vhosts, &pos, NULL, NULL, &v)) {
        vhost_t *vh = v;
        size_t qp = 0;
        void *qv;
        while (dict_next(&vh->queues, &qp, NULL, NULL, &qv)) q_delete(qv);
        size_t xp = 0;
        void *xv;
        while (dict_next(&vh->exchanges, &xp, NULL, NULL, &xv)) {
            exchange_t *x = xv;
            if (x->name_len == 0 || (x->name_len >= 4 && memcmp(x->name, "amq.", 4) == 0)) continue;
            br_err_t err;
            (void)br_exchange_delete(vh, NULL, x->name, x->name_len, false, &err);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!broker) setup();
    if (size == 0) return 0;
    size_t chunk = (size_t)data[0] * 7 + 1; /* 1 .. 1786 bytes per read */
    data++, size--;
    struct sink s = {0};
    mgmt_conn_t *c = mgmt_conn_new(mgmt, &sink_io, &s, true);
    for (size_t off = 0; off < size && !s.closed; off += chunk)
        mgmt_conn_feed(c, data + off, size - off < chunk ? size - off : chunk);
    mgmt_conn_gone(c);
    check_output(s.buf, s.len);
    free(s.buf);
    cleanup();
    return 0;
}
