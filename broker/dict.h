/* dict.h - a string-keyed hash map (open addressing, linear probing) used for every name
 * lookup in the core: vhosts, users, exchanges, queues, direct-exchange routing keys.
 *
 * Keys are byte strings copied into the map; values are borrowed pointers the caller owns. */
#ifndef WARREN_DICT_H
#define WARREN_DICT_H

#include <stddef.h>
#include <stdint.h>

typedef struct dict_slot {
    char *key;       /* NULL = empty; DICT_TOMBSTONE = deleted */
    size_t klen;
    uint64_t hash;
    void *val;
} dict_slot_t;

typedef struct dict {
    dict_slot_t *slots;
    size_t cap;      /* power of two */
    size_t used;     /* live entries */
    size_t filled;   /* live + tombstones */
} dict_t;

void dict_init(dict_t *d);
void dict_free(dict_t *d);                                   /* frees keys, not values */
void *dict_get(const dict_t *d, const void *key, size_t klen);
/* Inserts or replaces; returns the previous value or NULL. */
void *dict_set(dict_t *d, const void *key, size_t klen, void *val);
/* Removes; returns the removed value or NULL. */
void *dict_del(dict_t *d, const void *key, size_t klen);
static inline size_t dict_size(const dict_t *d) { return d->used; }
uint64_t dict_hash(const void *key, size_t len);

/* Iteration: for (size_t i = 0; dict_next(d, &i, &k, &kl, &v);) ... Deleting the current entry
 * while iterating is allowed; inserting is not. */
int dict_next(const dict_t *d, size_t *pos, const char **key, size_t *klen, void **val);

#endif
