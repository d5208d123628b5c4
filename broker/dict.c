/* dict.c - see dict.h. FNV-1a hashing, linear probing, tombstones on delete, growth at 70%
 * fill (counting tombstones) so probe chains stay short. */
#include "broker/dict.h"

#include <stdlib.h>
#include <string.h>

static char tombstone_marker;
#define DICT_TOMBSTONE (&tombstone_marker)

uint64_t dict_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

void dict_init(dict_t *d) { memset(d, 0, sizeof *d); }

void dict_free(dict_t *d)
{
    for (size_t i = 0; i < d->cap; i++)
        if (d->slots[i].key && d->slots[i].key != DICT_TOMBSTONE) free(d->slots[i].key);
    free(d->slots);
    memset(d, 0, sizeof *d);
}

static dict_slot_t *find_slot(const dict_t *d, const void *key, size_t klen, uint64_t h)
{
    if (d->cap == 0) return NULL;
    size_t mask = d->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        dict_slot_t *s = &d->slots[i];
        if (s->key == NULL) return NULL;
        if (s->key != DICT_TOMBSTONE && s->hash == h && s->klen == klen &&
            memcmp(s->key, key, klen) == 0)
            return s;
    }
}

void *dict_get(const dict_t *d, const void *key, size_t klen)
{
    dict_slot_t *s = find_slot(d, key, klen, dict_hash(key, klen));
    return s ? s->val : NULL;
}

static void grow(dict_t *d)
{
    size_t ncap = d->cap ? d->cap * 2 : 16;
    while (d->used * 10 >= ncap * 5) ncap *= 2;
    dict_slot_t *old = d->slots;
    size_t ocap = d->cap;
    d->slots = calloc(ncap, sizeof *d->slots);
    if (!d->slots) abort();
    d->cap = ncap;
    d->filled = d->used;
    for (size_t i = 0; i < ocap; i++) {
        dict_slot_t *s = &old[i];
        if (!s->key || s->key == DICT_TOMBSTONE) continue;
        size_t j = s->hash & (ncap - 1);
        while (d->slots[j].key) j = (j + 1) & (ncap - 1);
        d->slots[j] = *s;
    }
    free(old);
}

void *dict_set(dict_t *d, const void *key, size_t klen, void *val)
{
    uint64_t h = dict_hash(key, klen);
    dict_slot_t *s = find_slot(d, key, klen, h);
    if (s) {
        void *prev = s->val;
        s->val = val;
        return prev;
    }
    if ((d->filled + 1) * 10 >= d->cap * 7) grow(d);
    size_t mask = d->cap - 1, i = h & mask;
    while (d->slots[i].key && d->slots[i].key != DICT_TOMBSTONE) i = (i + 1) & mask;
    s = &d->slots[i];
    if (s->key == NULL) d->filled++;
    s->key = malloc(klen + 1);
    if (!s->key) abort();
    memcpy(s->key, key, klen);
    s->key[klen] = '\0';
    s->klen = klen;
    s->hash = h;
    s->val = val;
    d->used++;
    return NULL;
}

void *dict_del(dict_t *d, const void *key, size_t klen)
{
    dict_slot_t *s = find_slot(d, key, klen, dict_hash(key, klen));
    if (!s) return NULL;
    void *prev = s->val;
    free(s->key);
    s->key = DICT_TOMBSTONE;
    s->val = NULL;
    d->used--;
    return prev;
}

int dict_next(const dict_t *d, size_t *pos, const char **key, size_t *klen, void **val)
{
    while (*pos < d->cap) {
        dict_slot_t *s = &d->slots[(*pos)++];
        if (s->key && s->key != DICT_TOMBSTONE) {
            if (key) *key = s->key;
            if (klen) *klen = s->klen;
            if (val) *val = s->val;
            return 1;
        }
    }
    return 0;
}
