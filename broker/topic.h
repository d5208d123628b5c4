/* topic.h - topic exchange routing: a trie of binding patterns matched against routing keys.
 *
 * RabbitMQ semantics: keys and patterns are '.'-separated words (empty words count: "a..b" has
 * three words, "" is one empty word); in a pattern '*' matches exactly one word and '#' matches
 * zero or more words. A binding is an opaque pointer owned by the caller. */
#ifndef WARREN_TOPIC_H
#define WARREN_TOPIC_H

#include <stddef.h>

#define TOPIC_MAX_KEY 255  /* AMQP shortstr: routing keys and binding keys are at most 255 bytes */

typedef struct topic_trie topic_trie_t;

typedef void (*topic_match_cb)(void *ctx, void *binding);

topic_trie_t *topic_trie_new(void);
void topic_trie_free(topic_trie_t *t);
/* Adds binding under pattern. Adding the same (pattern, binding) twice is a no-op returning 0.
 * Returns -1 on allocation failure or a pattern longer than TOPIC_MAX_KEY. */
int topic_trie_add(topic_trie_t *t, const char *pattern, size_t len, void *binding);
/* Removes (pattern, binding); returns 0 if found, -1 if not. Prunes nodes left empty. */
int topic_trie_remove(topic_trie_t *t, const char *pattern, size_t len, void *binding);
/* Calls cb(ctx, binding) once per matching binding: each binding at most once per call, even
 * when several '#' paths (or several patterns holding the same pointer) reach it. cb must not
 * modify the trie. */
void topic_trie_match(const topic_trie_t *t, const char *rk, size_t len, topic_match_cb cb, void *ctx);
/* Number of (pattern, binding) entries. */
size_t topic_trie_count(const topic_trie_t *t);

#endif
