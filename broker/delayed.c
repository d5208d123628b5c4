/* delayed.c - delayed messages: the x-delayed-message exchange type, compatible with the
 * rabbitmq-delayed-message-exchange plugin (x-delayed-type argument, x-delay header in ms).
 *
 * A message published to such an exchange with a positive x-delay waits in a node-wide
 * min-heap ordered by due time (then arrival, so equal delays keep publish order); one ev_timer
 * is armed for the earliest entry. When due, the message is routed through the exchange's
 * bindings as its x-delayed-type would route it; if the exchange is gone by then, the message
 * is dropped, as the plugin does.
 *
 * Durability: for a durable exchange and a persistent message, the message record ('m' id) is
 * stored and a 'D' due seq -> vhost \0 id record points to it (it counts as one of the
 * message's durable_refs); recovery rebuilds the heap from those records, so delays survive a
 * restart and fire at their original time (immediately if it has passed). Bodies of stored
 * delayed messages are paged out like queued ones, so a million pending delays cost an index
 * entry and a message header each, not their bodies. */
#include "broker/broker.h"
#include "broker/log.h"
#include "broker/props.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

struct delay_entry {
    int64_t due_ms; /* wall clock ms, so stored due times stay meaningful across restarts */
    uint64_t seq;
    msg_t *m;
    vhost_t *vh;
    bool stored;
};

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static bool earlier(const struct delay_entry *a, const struct delay_entry *b)
{
    return a->due_ms < b->due_ms || (a->due_ms == b->due_ms && a->seq < b->seq);
}

static void heap_push(broker_t *b, struct delay_entry e)
{
    if (b->ndelays == b->delays_cap) {
        b->delays_cap = b->delays_cap ? b->delays_cap * 2 : 64;
        b->delays = realloc(b->delays, b->delays_cap * sizeof *b->delays);
        if (!b->delays) abort();
    }
    size_t i = b->ndelays++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!earlier(&e, &b->delays[parent])) break;
        b->delays[i] = b->delays[parent];
        i = parent;
    }
    b->delays[i] = e;
}

static struct delay_entry heap_pop(broker_t *b)
{
    struct delay_entry top = b->delays[0], last = b->delays[--b->ndelays];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= b->ndelays) break;
        if (child + 1 < b->ndelays && earlier(&b->delays[child + 1], &b->delays[child])) child++;
        if (!earlier(&b->delays[child], &last)) break;
        b->delays[i] = b->delays[child];
        i = child;
    }
    if (b->ndelays) b->delays[i] = last;
    return top;
}

static void delay_key(uint8_t key[17], int64_t due_ms, uint64_t seq)
{
    key[0] = KEY_DELAY;
    store_put_be64(key + 1, (uint64_t)due_ms);
    store_put_be64(key + 9, seq);
}

static void arm_timer(broker_t *b);

/* Routes a due message through its exchange and drops the delay record. */
static void fire(broker_t *b, struct delay_entry *e)
{
    msg_t *m = e->m;
    exchange_t *x = br_exchange(e->vh, m->exchange, m->exchange_len);
    /* A paged-out body stays on disk: queues take stored messages without it. */
    if (x && x->delayed && (m->body || m->stored)) {
        ptrvec_t qs = {0};
        br_route(x, m, &qs);
        for (size_t i = 0; i < qs.n; i++) q_publish(qs.items[i], m);
        ptrvec_free(&qs);
    }
    if (e->stored && b->store) {
        uint8_t key[17];
        delay_key(key, e->due_ms, e->seq);
        store_del(b->store, key, sizeof key);
        if (m->durable_refs && --m->durable_refs == 0 && m->stored) {
            uint8_t mk[9];
            mk[0] = KEY_MSG;
            store_put_be64(mk + 1, m->id);
            store_del(b->store, mk, sizeof mk);
            m->stored = false;
        }
    }
    msg_unref(m);
}

static void delay_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    broker_t *b = w->data;
    int64_t now = wall_ms();
    /* Bounded per wakeup so a burst of due messages cannot starve the loop. */
    for (int n = 0; n < 4096 && b->ndelays && b->delays[0].due_ms <= now; n++) {
        struct delay_entry e = heap_pop(b);
        fire(b, &e);
    }
    arm_timer(b);
}

static void arm_timer(broker_t *b)
{
    if (!b->loop) return;
    if (!b->delay_timer.data) {
        ev_timer_init(&b->delay_timer, delay_timer_cb, 0, 0);
        b->delay_timer.data = b;
    }
    ev_timer_stop(b->loop, &b->delay_timer);
    if (!b->ndelays) return;
    int64_t wait = b->delays[0].due_ms - wall_ms();
    ev_timer_set(&b->delay_timer, wait > 0 ? (double)wait / 1000.0 : 0.0, 0);
    ev_timer_start(b->loop, &b->delay_timer);
}

int64_t br_delay_of(const msg_t *m)
{
    if (!memmem(m->props, m->props_len, "\x07x-delay", 8)) return 0;
    props_core_t p;
    amqp_table_t t;
    if (props_core_read(m->props, m->props_len, &p) != 0 || !p.has_headers || amqp_table_parse(p.headers, &t) != 0)
        return 0;
    int64_t delay = 0;
    const amqp_value_t *v = amqp_table_get(&t, "x-delay");
    if (v && !amqp_value_int(v, &delay)) delay = 0;
    amqp_table_free(&t);
    return delay;
}

int br_delay_publish(exchange_t *x, msg_t *m, int64_t delay_ms)
{
    broker_t *b = x->vh->broker;
    struct delay_entry e = {.due_ms = wall_ms() + delay_ms, .seq = ++b->delay_seq, .m = msg_ref(m), .vh = x->vh};
    int rc = Q_PUB_OK;
    if (x->durable && m->persistent && b->store) {
        if (!m->stored) {
            size_t n = msg_record_size(m);
            uint8_t *rec = malloc(n);
            if (!rec) abort();
            msg_record_write(m, rec);
            uint8_t mk[9];
            mk[0] = KEY_MSG;
            store_put_be64(mk + 1, m->id);
            store_put(b->store, mk, sizeof mk, rec, n);
            free(rec);
            m->stored = true;
        }
        size_t vl = strlen(x->vh->name);
        uint8_t key[17], *val = malloc(vl + 1 + 8);
        if (!val) abort();
        delay_key(key, e.due_ms, e.seq);
        memcpy(val, x->vh->name, vl + 1);
        store_put_be64(val + vl + 1, m->id);
        store_put(b->store, key, sizeof key, val, vl + 9);
        free(val);
        m->durable_refs++;
        e.stored = true;
        rc = Q_PUB_SYNC;
        q_pageout_candidate(m);
    }
    bool new_head = b->ndelays == 0 || earlier(&e, &b->delays[0]);
    heap_push(b, e);
    if (new_head) arm_timer(b);
    return rc;
}

void br_delay_restore(broker_t *b, vhost_t *vh, msg_t *m, int64_t due_ms, uint64_t seq)
{
    struct delay_entry e = {.due_ms = due_ms, .seq = seq, .m = msg_ref(m), .vh = vh, .stored = true};
    if (seq > b->delay_seq) b->delay_seq = seq;
    heap_push(b, e);
    arm_timer(b);
}

void br_delays_free(broker_t *b)
{
    if (b->loop && b->delay_timer.data) ev_timer_stop(b->loop, &b->delay_timer);
    for (size_t i = 0; i < b->ndelays; i++) msg_unref(b->delays[i].m);
    free(b->delays);
    b->delays = NULL;
    b->ndelays = b->delays_cap = 0;
}
