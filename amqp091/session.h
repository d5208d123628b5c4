/* session.h - AMQP 0-9-1 connections and channels (private to amqp091/).
 *
 * connection.c owns the socket side: protocol header, handshake (start/tune/open), frame
 * parsing, heartbeats, connection exceptions and shutdown. channel.c owns everything that
 * happens on a channel: declares, publishes (method + header + body assembly), consumers,
 * deliveries and their acknowledgements, confirms and transactions.
 *
 * Lifetime: a conn_t lives until its net_conn reports on_close; channels are freed when
 * closed, except that pending confirm callbacks and the server keep a reference (refs) so a
 * late store callback never touches freed memory. */
#ifndef WARREN_AMQP_SESSION_H
#define WARREN_AMQP_SESSION_H

#include "amqp091/codec.h"
#include "amqp091/net.h"
#include "amqp091/server.h"
#include "broker/broker.h"
#include "broker/connreg.h"

typedef struct conn conn_t;
typedef struct chan chan_t;

enum conn_state { CS_HEADER, CS_START_OK, CS_TUNE_OK, CS_OPEN, CS_RUNNING, CS_CLOSING, CS_CLOSED };
enum chan_state { CH_OPEN, CH_CLOSING };
enum pub_state { PUB_IDLE, PUB_HEADER, PUB_BODY };

typedef struct {
    uint64_t tag;
    queue_t *q;       /* holds a queue reference */
    qentry_t e;       /* holds the message reference */
    consumer_t *c;    /* NULL for basic.get or a cancelled consumer */
    ev_tstamp at;     /* when it was delivered (consumer_timeout) */
    bool settled;
} delivery_t;

typedef struct {
    msg_t *m;
    exchange_t *x_unused;
    bool mandatory;
} tx_publish_t;

typedef struct {
    uint64_t tag;
    bool multiple, requeue, is_ack;
} tx_ack_t;

/* A publish awaiting its confirm: confirmed (in order) once its store sync and every queue on
 * another node have answered. */
typedef struct {
    uint64_t seq;
    uint32_t remote; /* forwarded to queues on other nodes, not answered yet */
    bool sync;       /* waits for the store to sync */
    bool nack;       /* a queue refused it (or its node was unreachable): basic.nack */
} pend_t;

struct chan {
    conn_t *conn;
    uint16_t id;
    enum chan_state state;
    uint32_t refs;

    /* content assembly of the publish in progress */
    enum pub_state pub;
    exchange_t *pub_x;
    bool pub_mandatory;
    msg_t *pub_msg;   /* set once the header frame arrived */
    uint64_t pub_got;
    char pub_exchange[256], pub_rk[256];
    uint8_t pub_exchange_len, pub_rk_len;

    /* deliveries awaiting ack, ordered by tag */
    delivery_t *dl;
    size_t dl_head, dl_len, dl_cap;
    uint64_t next_tag;
    uint32_t unacked;

    uint16_t prefetch;        /* basic.qos global=false: applies to consumers created later */
    uint16_t global_prefetch; /* basic.qos global=true: shared by the channel */
    bool flow_active;
    ptrvec_t consumers; /* consumer_t* */
    char *last_queue;   /* the channel's most recently declared queue ("" in later methods) */

    uint64_t qq_chan; /* node-unique id of this channel for quorum queues (qq_channel_id) */
    bool confirm;
    uint64_t pub_seq;
    pend_t *pending;    /* publishes awaiting their confirm, by seq (FIFO) */
    size_t pend_head, pend_len, pend_cap;
    bool sync_wanted;   /* registered in the server's list for a sync callback */
    chan_t *next_sync;

    char *reply_key;  /* direct reply-to: "amq.rabbitmq.reply-to.<token>" while consuming */
    char *reply_ctag;

    /* per-channel counters for the management API's message_stats (broker/connreg.h) */
    uint64_t st_publish, st_deliver, st_deliver_no_ack, st_get, st_get_no_ack, st_ack, st_redeliver, st_confirm;

    bool tx;
    tx_publish_t *txp;
    size_t txp_len, txp_cap;
    tx_ack_t *txa;
    size_t txa_len, txa_cap;
};

struct conn {
    amqp_server_t *srv;
    net_conn_t *net;
    uint64_t id;
    enum conn_state state;
    uint8_t *in;
    size_t in_len, in_cap;
    amqp_buf_t out;

    user_t *user;
    vhost_t *vh;
    bool vh_counted; /* counted in vh->connections (the vhost's max-connections) */
    struct open_check *open_check; /* connection.open waiting for the other nodes' counts */
    uint32_t frame_max;
    uint16_t channel_max;
    uint16_t heartbeat;
    bool cap_cancel_notify, cap_auth_failure_close, cap_blocked;
    bool alarm_blocked; /* reading paused by a resource alarm (connection.blocked sent if supported) */
    char client_product[64];
    amqp_buf_t client_props; /* start-ok's client-properties (table content), for the API */
    char auth_mechanism[16];
    uint64_t recv_oct, send_oct, recv_cnt, send_cnt; /* bytes and socket reads / writes */

    chan_t **chans; /* indexed by channel id, channel_max + 1 slots */
    ev_timer hb_timer;
    ev_tstamp last_recv, last_send;
    ev_timer close_timer;
    queue_t *throttled_by; /* reading paused while this queue's backlog is too deep */
    unsigned meta_wait;    /* clustered metadata changes in flight: frames wait until they apply */
    bool in_parse;
    ev_tstamp throttled_at;
    connreg_entry_t reg;   /* this connection in the node's registry (list_connections) */
    conn_t *prev, *next;
};

/* connection.c */
void conn_send_method(conn_t *c, uint16_t channel, const amqp_method_t *m);
void conn_flush(conn_t *c);
void conn_exception(conn_t *c, int code, uint32_t method_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
bool conn_output_blocked(const conn_t *c);
/* Stop / restart handling this connection's frames (a metadata change is being replicated; the
 * methods after it must not overtake its reply). Calls nest. */
void conn_pause(conn_t *c);
void conn_resume(conn_t *c);
void amqp_reply_text_fit(char *text);
void conn_throttle(conn_t *c, queue_t *q);
/* A publish arrived: while a resource alarm is in effect, stop reading from this connection. */
void conn_alarm_check_publisher(conn_t *c);

/* channel.c */
chan_t *chan_new(conn_t *c, uint16_t id);
void chan_handle_method(chan_t *ch, const amqp_method_t *m);
void chan_handle_header(chan_t *ch, const amqp_frame_t *f);
void chan_handle_body(chan_t *ch, const amqp_frame_t *f);
/* Closes the channel's state: requeues unacked deliveries, cancels consumers, frees it (or drops
 * the connection's reference when confirms are still pending). */
void chan_destroy(chan_t *ch);
void chan_exception(chan_t *ch, int code, uint32_t method_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void chan_on_drain(chan_t *ch);
void chan_register_syncs(amqp_server_t *s);
/* Closes the channel with 406 when its oldest unacked delivery is older than timeout_ms. */
void chan_check_ack_timeout(chan_t *ch, ev_tstamp now, uint64_t timeout_ms);

struct amqp_server {
    struct ev_loop *loop;
    broker_t *broker;
    cfg_t *cfg;
    net_listener_t *listeners[2 * CFG_MAX_LISTENERS];
    int n_listeners;
    SSL_CTX *tls;
    conn_t *conns;
    uint64_t next_conn_id;
    chan_t *sync_list;
    ev_timer ack_timeout_timer; /* consumer_timeout: checks the oldest unacked delivery */
    ev_timer alarm_timer;       /* polls resource alarms */
    dict_t reply_to; /* direct reply-to name -> chan_t* */
    ev_prepare prepare;
    bool shutting_down;
    bool suspended; /* maintenance mode: listeners closed until amqp_server_resume */
};

#endif
