/* message.h - a published message, shared by reference among all queues it routes to.
 *
 * A msg_t is allocated once per publish: exchange name, routing key and the raw property
 * bytes (content-header flags + property list, exactly as the publisher sent them, so they
 * reach consumers byte-exact) live in the same block; the body is a separate allocation so a
 * stored message can drop it from memory (page out) and load it again on delivery.
 *
 * Ownership: msg_new() returns one reference; each queue entry and each outstanding delivery
 * holds one more; msg_unref() frees at zero. durable_refs counts the durable queues that have
 * an index entry for it on disk: the stored record is deleted when it reaches zero. */
#ifndef WARREN_MESSAGE_H
#define WARREN_MESSAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct msg {
    uint32_t refs;
    uint32_t durable_refs;
    uint64_t id;             /* unique per node, used as the storage key */
    bool persistent;         /* delivery-mode 2 */
    bool stored;             /* its record was queued to the store */
    bool has_expiration;     /* the expiration property is set (per-message TTL) */
    uint8_t priority;
    uint8_t exchange_len, rk_len;
    uint16_t bcc_len;        /* BCC routing keys kept after the header was stripped (after props) */
    uint32_t props_len;
    uint8_t qq_body;         /* quorum queues (broker/qq.c): is the body in the replica's body
                                store? QQ_BODY_NONE / _QUEUED (write in a batch) / _DURABLE */
    uint64_t body_len;
    uint8_t *body;           /* NULL while paged out (then stored is true) */
    char *exchange;          /* points into data[] */
    char *rk;                /* points into data[] */
    uint8_t *props;          /* points into data[] */
    char data[];
} msg_t;

msg_t *msg_new(const char *exchange, size_t exlen, const char *rk, size_t rklen, const uint8_t *props,
               size_t props_len, uint64_t body_len);
/* Same, also keeping BCC routing keys (a sequence of encoded longstr values, 'S' + u32 + bytes)
 * that are no longer in the headers but still route the message when it is dead-lettered. */
msg_t *msg_new_with_bcc(const char *exchange, size_t exlen, const char *rk, size_t rklen, const uint8_t *props,
                        size_t props_len, uint64_t body_len, const uint8_t *bcc, size_t bcc_len);
static inline const uint8_t *msg_bcc(const msg_t *m) { return m->props + m->props_len; }
static inline msg_t *msg_ref(msg_t *m) { m->refs++; return m; }
void msg_unref(msg_t *m);

/* Storage record: [u8 exlen][ex][u8 rklen][rk][u32 props_len][props][body]. */
size_t msg_record_size(const msg_t *m);
void msg_record_write(const msg_t *m, uint8_t *dst);
/* The record without its body (m->body may be NULL): what precedes the body bytes. */
size_t msg_record_header_size(const msg_t *m);
void msg_record_write_header(const msg_t *m, uint8_t *dst);
/* Rebuilds a message from a record; with_body false leaves body NULL (paged out). */
msg_t *msg_from_record(const uint8_t *rec, size_t len, bool with_body);
/* Extracts the body from a record into m->body; false if the record is malformed. */
bool msg_body_from_record(msg_t *m, const uint8_t *rec, size_t len);

#endif
