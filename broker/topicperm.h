/* topicperm.h - RabbitMQ's topic permissions (prefix tperm_): per user, vhost and topic
 * exchange, a write and a read regex matched against routing keys.
 *
 * Semantics (RabbitMQ's access-control guide): a publish to a topic exchange is refused with
 * 403 ACCESS_REFUSED unless the user has no topic permission for that exchange in that vhost,
 * or the routing key matches its write pattern; binding to or unbinding from a topic exchange
 * (queue.bind / exchange.bind as source) likewise checks the binding key against the read
 * pattern. "{username}" and "{vhost}" in a pattern stand for the user's and the vhost's names.
 *
 * Changes are metadata commands (META_TOPIC_PERM_SET / _CLEAR, broker/meta.h) applied on every
 * node with these functions; records 'T' vhost \0 user \0 exchange -> [str write][str read]
 * make them durable. Threading: the loop thread only. */
#ifndef WARREN_TOPICPERM_H
#define WARREN_TOPICPERM_H

#include <stdbool.h>
#include <stddef.h>

#include "broker/broker.h"

#define TPERM_KEY 'T' /* store key prefix of topic permission records */

typedef struct tperm {
    char *vhost, *exchange;
    auth_regex_t *write, *read; /* compiled with the variables left in (checked for syntax) */
    char *write_text, *read_text;
} tperm_t;

/* Sets u's topic permission for exchange in vh (replacing one for the same exchange). Returns
 * 0, or -1 with err for a pattern that does not compile. */
int tperm_set(broker_t *b, user_t *u, const vhost_t *vh, const char *exchange, const char *write, const char *read,
              char *err, size_t errlen);
/* Clears u's topic permissions in vh: the one for exchange, or all when exchange is NULL.
 * Returns how many were cleared. */
size_t tperm_clear(broker_t *b, user_t *u, const char *vhost, const char *exchange);
/* Frees u's topic permissions (the user struct is being freed; records stay). */
void tperm_free_user(user_t *u);

/* Calls fn for each of u's topic permissions (vhost NULL: every vhost), in set order. */
void tperm_each(const user_t *u, const char *vhost, void (*fn)(void *arg, const user_t *u, const tperm_t *p),
                void *arg);
size_t tperm_count(const user_t *u, const char *vhost);

/* A publish by u to x with routing key rk: 0, or BR_ACCESS_REFUSED with RabbitMQ's text. */
int tperm_check_write(const user_t *u, const vhost_t *vh, const exchange_t *x, const char *rk, size_t rklen,
                      br_err_t *err);

/* Binding to / unbinding from x with key rk: the same against the read pattern. */
int tperm_check_read(const user_t *u, const vhost_t *vh, const exchange_t *x, const char *rk, size_t rklen,
                     br_err_t *err);

/* Recovery: the stored 'T' records (after users and vhosts). Returns how many. */
int tperm_recover(broker_t *b);

#endif
