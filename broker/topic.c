/* topic.c - topic exchange matching with a word trie.
 *
 * Role: the topic exchange keeps one trie of binding patterns; publishing walks the trie once
 * per message instead of testing every binding. Each trie node is "the pattern so far"; an
 * edge is one pattern word. Literal words live in a sorted child array (binary search), while
 * '*' and '#' have dedicated slots because every walk must try them. A node holds the list of
 * bindings whose pattern ends there.
 *
 * Bindings are opaque caller pointers. Each distinct pointer has one shared record (in a small
 * open-addressing set) that counts how many patterns use it and carries the generation stamp
 * that de-duplicates callbacks within one match call: a binding reachable through several
 * patterns or '#' expansions is reported once.
 *
 * Matching works on byte offsets into the routing key rather than a split word array, so it
 * allocates nothing. A position is the offset where a word starts; END (len + 1) means "all
 * words consumed". '#' is the only source of branching, so '#' nodes remember (per call, via
 * the same generation counter) the lowest position from which they were expanded: entering
 * again at a later position is already covered, and entering earlier only needs the gap. That
 * keeps a match polynomial even for patterns like "#.a.#.a.#".
 *
 * Invariants: a node other than the root exists only while it has bindings or children
 * (remove prunes bottom-up); the record set holds exactly the pointers present in some node.
 * match() writes only the generation stamps, so it is not safe to run concurrently with
 * itself on one trie, and callbacks must neither modify nor re-match the same trie. */
#include "broker/topic.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum topic_kind { TOPIC_ROOT, TOPIC_WORD, TOPIC_STAR, TOPIC_HASH };

/* One distinct binding pointer. */
typedef struct topic_rec {
    void *binding;
    size_t refs;          /* number of patterns holding this pointer */
    uint64_t seen_gen;    /* last match call that reported it */
} topic_rec_t;

typedef struct topic_node {
    struct topic_node *parent;
    struct topic_node **words;   /* literal children, sorted by (bytes, length) */
    size_t n_words, cap_words;
    struct topic_node *star, *hash;
    topic_rec_t **recs;          /* bindings whose pattern ends here */
    size_t n_recs, cap_recs;
    uint64_t hash_gen;           /* '#' nodes: call in which hash_from is valid */
    size_t hash_from;            /* '#' nodes: lowest position expanded in that call */
    uint8_t kind;
    size_t wlen;
    char word[];                 /* literal word (TOPIC_WORD only) */
} topic_node_t;

struct topic_trie {
    topic_node_t *root;
    size_t n_entries;
    uint64_t gen;
    topic_rec_t **set;           /* open addressing, linear probing, NULL = empty */
    size_t set_cap, set_used;    /* set_cap is a power of two (or 0) */
};

/* ---- binding record set ------------------------------------------------------------- */

static size_t rec_slot(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;  /* mix: pointers share low bits */
    return (size_t)x & (cap - 1);
}

static topic_rec_t *set_find(const topic_trie_t *t, const void *binding) {
    if (t->set_cap == 0) return NULL;
    for (size_t i = rec_slot(binding, t->set_cap);; i = (i + 1) & (t->set_cap - 1)) {
        if (!t->set[i]) return NULL;
        if (t->set[i]->binding == binding) return t->set[i];
    }
}

static void set_place(topic_rec_t **set, size_t cap, topic_rec_t *r) {
    size_t i = rec_slot(r->binding, cap);
    while (set[i]) i = (i + 1) & (cap - 1);
    set[i] = r;
}

static int set_grow(topic_trie_t *t) {
    size_t cap = t->set_cap ? t->set_cap * 2 : 16;
    topic_rec_t **set = calloc(cap, sizeof *set);
    if (!set) return -1;
    for (size_t i = 0; i < t->set_cap; i++)
        if (t->set[i]) set_place(set, cap, t->set[i]);
    free(t->set);
    t->set = set;
    t->set_cap = cap;
    return 0;
}

/* Returns the record for binding, creating it (refs 0) if needed. */
static topic_rec_t *set_get(topic_trie_t *t, void *binding) {
    topic_rec_t *r = set_find(t, binding);
    if (r) return r;
    if ((t->set_used + 1) * 4 > t->set_cap * 3 && set_grow(t) != 0) return NULL;
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->binding = binding;
    set_place(t->set, t->set_cap, r);
    t->set_used++;
    return r;
}

/* Deletes r from the set and frees it; backward-shift keeps probe chains intact. */
static void set_delete(topic_trie_t *t, topic_rec_t *r) {
    size_t mask = t->set_cap - 1, i = rec_slot(r->binding, t->set_cap);
    while (t->set[i] != r) i = (i + 1) & mask;
    t->set[i] = NULL;
    for (size_t j = (i + 1) & mask; t->set[j]; j = (j + 1) & mask) {
        size_t home = rec_slot(t->set[j]->binding, t->set_cap);
        /* Move set[j] into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            t->set[i] = t->set[j];
            t->set[j] = NULL;
            i = j;
        }
    }
    t->set_used--;
    free(r);
}

/* ---- nodes ------------------------------------------------------------------------- */

static topic_node_t *node_new(topic_node_t *parent, enum topic_kind kind, const char *w, size_t wlen) {
    topic_node_t *n = calloc(1, sizeof *n + wlen);
    if (!n) return NULL;
    n->parent = parent;
    n->kind = (uint8_t)kind;
    n->wlen = wlen;
    if (wlen) memcpy(n->word, w, wlen);
    return n;
}

static void node_free(topic_node_t *n) {
    if (!n) return;
    for (size_t i = 0; i < n->n_words; i++) node_free(n->words[i]);
    node_free(n->star);
    node_free(n->hash);
    free(n->words);
    free(n->recs);
    free(n);
}

static int word_cmp(const char *a, size_t alen, const char *b, size_t blen) {
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c) return c;
    return (alen > blen) - (alen < blen);
}

/* Binary search for a literal child; *at receives the insertion index when absent. */
static topic_node_t *node_find_word(const topic_node_t *n, const char *w, size_t wlen, size_t *at) {
    size_t lo = 0, hi = n->n_words;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const topic_node_t *c = n->words[mid];
        int cmp = word_cmp(c->word, c->wlen, w, wlen);
        if (cmp == 0) { if (at) *at = mid; return n->words[mid]; }
        if (cmp < 0) lo = mid + 1; else hi = mid;
    }
    if (at) *at = lo;
    return NULL;
}

static enum topic_kind word_kind(const char *w, size_t wlen) {
    if (wlen == 1 && w[0] == '*') return TOPIC_STAR;
    if (wlen == 1 && w[0] == '#') return TOPIC_HASH;
    return TOPIC_WORD;
}

/* Finds the child of n for pattern word w; creates it when create is set. */
static topic_node_t *node_child(topic_node_t *n, const char *w, size_t wlen, bool create) {
    enum topic_kind kind = word_kind(w, wlen);
    if (kind != TOPIC_WORD) {
        topic_node_t **slot = kind == TOPIC_STAR ? &n->star : &n->hash;
        if (!*slot && create) *slot = node_new(n, kind, NULL, 0);
        return *slot;
    }
    size_t at;
    topic_node_t *c = node_find_word(n, w, wlen, &at);
    if (c || !create) return c;
    if (n->n_words == n->cap_words) {
        size_t cap = n->cap_words ? n->cap_words * 2 : 4;
        topic_node_t **words = realloc(n->words, cap * sizeof *words);
        if (!words) return NULL;
        n->words = words;
        n->cap_words = cap;
    }
    c = node_new(n, TOPIC_WORD, w, wlen);
    if (!c) return NULL;
    memmove(n->words + at + 1, n->words + at, (n->n_words - at) * sizeof *n->words);
    n->words[at] = c;
    n->n_words++;
    return c;
}

static bool node_is_empty(const topic_node_t *n) {
    return n->n_recs == 0 && n->n_words == 0 && !n->star && !n->hash;
}

/* Unlinks and frees empty nodes from n upwards, stopping at the root. */
static void node_prune(topic_node_t *n) {
    while (n->kind != TOPIC_ROOT && node_is_empty(n)) {
        topic_node_t *p = n->parent;
        if (n->kind == TOPIC_STAR) p->star = NULL;
        else if (n->kind == TOPIC_HASH) p->hash = NULL;
        else {
            size_t at;
            node_find_word(p, n->word, n->wlen, &at);
            memmove(p->words + at, p->words + at + 1, (p->n_words - at - 1) * sizeof *p->words);
            p->n_words--;
        }
        free(n->words);
        free(n->recs);
        free(n);
        n = p;
    }
}

/* Index of binding in n->recs, or n->n_recs when absent. */
static size_t node_rec_index(const topic_node_t *n, const void *binding) {
    size_t i = 0;
    while (i < n->n_recs && n->recs[i]->binding != binding) i++;
    return i;
}

/* Walks (create) or looks up the node for a whole pattern; NULL when absent or on OOM.
 * *deepest receives the last node reached, so a failed create can prune what it built. */
static topic_node_t *pattern_node(topic_trie_t *t, const char *pattern, size_t len, bool create,
                                  topic_node_t **deepest) {
    topic_node_t *n = t->root;
    size_t pos = 0;
    for (;;) {
        *deepest = n;
        const char *dot = memchr(pattern + pos, '.', len - pos);
        size_t end = dot ? (size_t)(dot - pattern) : len;
        n = node_child(n, pattern + pos, end - pos, create);
        if (!n || !dot) return n;
        pos = end + 1;
    }
}

/* ---- public API: maintenance ------------------------------------------------------- */

topic_trie_t *topic_trie_new(void) {
    topic_trie_t *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->root = node_new(NULL, TOPIC_ROOT, NULL, 0);
    if (!t->root) { free(t); return NULL; }
    return t;
}

void topic_trie_free(topic_trie_t *t) {
    if (!t) return;
    node_free(t->root);
    for (size_t i = 0; i < t->set_cap; i++) free(t->set[i]);
    free(t->set);
    free(t);
}

int topic_trie_add(topic_trie_t *t, const char *pattern, size_t len, void *binding) {
    if (!t || (!pattern && len) || len > TOPIC_MAX_KEY) return -1;
    if (!pattern) pattern = "";
    topic_node_t *deepest;
    topic_node_t *n = pattern_node(t, pattern, len, true, &deepest);
    if (!n) goto fail;
    deepest = n;
    if (node_rec_index(n, binding) < n->n_recs) return 0;
    if (n->n_recs == n->cap_recs) {
        size_t cap = n->cap_recs ? n->cap_recs * 2 : 2;
        topic_rec_t **recs = realloc(n->recs, cap * sizeof *recs);
        if (!recs) goto fail;
        n->recs = recs;
        n->cap_recs = cap;
    }
    topic_rec_t *r = set_get(t, binding);
    if (!r) goto fail;
    r->refs++;
    n->recs[n->n_recs++] = r;
    t->n_entries++;
    return 0;
fail:
    /* An allocation failed part way: drop the nodes created for this pattern that hold nothing. */
    node_prune(deepest);
    return -1;
}

int topic_trie_remove(topic_trie_t *t, const char *pattern, size_t len, void *binding) {
    if (!t || (!pattern && len) || len > TOPIC_MAX_KEY) return -1;
    if (!pattern) pattern = "";
    topic_node_t *deepest;
    topic_node_t *n = pattern_node(t, pattern, len, false, &deepest);
    if (!n) return -1;
    size_t i = node_rec_index(n, binding);
    if (i == n->n_recs) return -1;
    topic_rec_t *r = n->recs[i];
    n->recs[i] = n->recs[--n->n_recs];  /* order within a node carries no meaning */
    if (--r->refs == 0) set_delete(t, r);
    t->n_entries--;
    node_prune(n);
    return 0;
}

size_t topic_trie_count(const topic_trie_t *t) {
    return t ? t->n_entries : 0;
}

/* ---- public API: matching ---------------------------------------------------------- */

typedef struct {
    const char *rk;
    size_t len;        /* routing key length; END = len + 1 */
    uint64_t gen;
    topic_match_cb cb;
    void *ctx;
} topic_walk_t;

static size_t word_end(const topic_walk_t *w, size_t pos) {
    const char *dot = memchr(w->rk + pos, '.', w->len - pos);
    return dot ? (size_t)(dot - w->rk) : w->len;
}

static void walk_node(const topic_walk_t *w, topic_node_t *n, size_t pos);

/* '#' node h expanded at pos: try h's continuation after swallowing 0, 1, 2... words. */
static void walk_hash(const topic_walk_t *w, topic_node_t *h, size_t pos) {
    size_t stop = w->len + 2;                 /* one past END: "nothing explored yet" */
    if (h->hash_gen == w->gen) {
        if (h->hash_from <= pos) return;      /* everything from pos on is already done */
        stop = h->hash_from;
    }
    h->hash_gen = w->gen;
    h->hash_from = pos;
    for (size_t p = pos; p < stop; p = word_end(w, p) + 1) {
        walk_node(w, h, p);
        if (p > w->len) break;                /* just handled END */
    }
}

static void emit_all(const topic_walk_t *w, const topic_node_t *n) {
    for (size_t i = 0; i < n->n_recs; i++) {
        topic_rec_t *r = n->recs[i];
        if (r->seen_gen == w->gen) continue;
        r->seen_gen = w->gen;
        w->cb(w->ctx, r->binding);
    }
}

/* Node n has matched the key up to pos; continue with the word at pos (or finish at END). */
static void walk_node(const topic_walk_t *w, topic_node_t *n, size_t pos) {
    if (pos > w->len) {                       /* END: pattern must be finished or be '#'s */
        emit_all(w, n);
        if (n->hash) walk_hash(w, n->hash, pos);
        return;
    }
    size_t end = word_end(w, pos);
    if (n->n_words) {
        topic_node_t *c = node_find_word(n, w->rk + pos, end - pos, NULL);
        if (c) walk_node(w, c, end + 1);
    }
    if (n->star) walk_node(w, n->star, end + 1);
    if (n->hash) walk_hash(w, n->hash, pos);
}

void topic_trie_match(const topic_trie_t *t, const char *rk, size_t len, topic_match_cb cb, void *ctx) {
    if (!t || !cb || (!rk && len)) return;
    /* Matching mutates only per-call stamps; the trie's shape is untouched. */
    topic_trie_t *mt = (topic_trie_t *)t;
    topic_walk_t w = { rk ? rk : "", len, ++mt->gen, cb, ctx };
    walk_node(&w, mt->root, 0);
}
