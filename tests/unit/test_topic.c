/* test_topic.c - topic trie: RabbitMQ tutorial cases, word-boundary edge cases, add/remove and
 * pruning, callback de-duplication, and a randomized comparison with a naive reference matcher. */
#include <setjmp.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "broker/topic.h"

/* Collects callback arguments so tests can check what matched and how often. */
typedef struct { void *hits[4096]; size_t n; } hits_t;

static void collect(void *ctx, void *binding) {
    hits_t *h = ctx;
    assert_true(h->n < 4096);
    h->hits[h->n++] = binding;
}

static size_t count_of(const hits_t *h, void *b) {
    size_t c = 0;
    for (size_t i = 0; i < h->n; i++) c += h->hits[i] == b;
    return c;
}

static hits_t *match(topic_trie_t *t, const char *rk) {
    static hits_t h;
    h.n = 0;
    topic_trie_match(t, rk, strlen(rk), collect, &h);
    return &h;
}

static void add(topic_trie_t *t, const char *pattern, void *b) {
    assert_int_equal(topic_trie_add(t, pattern, strlen(pattern), b), 0);
}

/* True when a trie holding only `pattern` matches `rk`. */
static bool matches1(const char *pattern, const char *rk) {
    topic_trie_t *t = topic_trie_new();
    int tag;
    add(t, pattern, &tag);
    hits_t *h = match(t, rk);
    bool hit = h->n == 1 && h->hits[0] == &tag;
    assert_true(h->n <= 1);
    topic_trie_free(t);
    return hit;
}

static void test_tutorial(void **state) {
    (void)state;
    /* RabbitMQ tutorial 5: Q1 *.orange.*, Q2 *.*.rabbit and lazy.# */
    topic_trie_t *t = topic_trie_new();
    int q1, q2;
    add(t, "*.orange.*", &q1);
    add(t, "*.*.rabbit", &q2);
    add(t, "lazy.#", &q2);
    hits_t *h = match(t, "quick.orange.rabbit");
    assert_int_equal(h->n, 2);
    assert_int_equal(count_of(h, &q1), 1);
    assert_int_equal(count_of(h, &q2), 1);
    h = match(t, "lazy.orange.elephant");
    assert_int_equal(h->n, 2);
    h = match(t, "quick.orange.fox");
    assert_int_equal(h->n, 1); assert_ptr_equal(h->hits[0], &q1);
    h = match(t, "lazy.brown.fox");
    assert_int_equal(h->n, 1); assert_ptr_equal(h->hits[0], &q2);
    h = match(t, "lazy.pink.rabbit");          /* two patterns, one queue: delivered once */
    assert_int_equal(h->n, 1); assert_ptr_equal(h->hits[0], &q2);
    assert_int_equal(match(t, "quick.brown.fox")->n, 0);
    assert_int_equal(match(t, "orange")->n, 0);
    assert_int_equal(match(t, "quick.orange.male.rabbit")->n, 0);
    h = match(t, "lazy.orange.male.rabbit");
    assert_int_equal(h->n, 1); assert_ptr_equal(h->hits[0], &q2);
    assert_int_equal(topic_trie_count(t), 3);
    topic_trie_free(t);
}

static void test_edge_cases(void **state) {
    (void)state;
    assert_true(matches1("#", ""));
    assert_true(matches1("#", "a"));
    assert_true(matches1("#", "a.b.c"));
    assert_true(matches1("#", "."));
    assert_true(matches1("#.#", ""));
    assert_true(matches1("#.#", "a.b"));
    assert_true(matches1("a.#.b", "a.b"));
    assert_true(matches1("a.#.b", "a.x.y.b"));
    assert_false(matches1("a.#.b", "a.x.y"));
    assert_false(matches1("a.#.b", "b.a.b.x"));
    assert_true(matches1("#.a", "a"));
    assert_true(matches1("#.a", "x.y.a"));
    assert_false(matches1("#.a", "a.x"));
    assert_true(matches1("a.#", "a"));
    assert_true(matches1("a.#", "a.b.c"));
    assert_false(matches1("a.#", "b.a"));
    assert_false(matches1("a.#", ""));
    /* Empty patterns and keys: "" is one empty word. */
    assert_true(matches1("", ""));
    assert_false(matches1("", "a"));
    assert_true(matches1("*", ""));
    assert_true(matches1("*", "a"));
    assert_false(matches1("*", "a.b"));
    assert_false(matches1("*", "."));
    assert_true(matches1("*.*", "."));
    assert_true(matches1(".", "."));
    assert_false(matches1(".", ""));
    assert_true(matches1("a..b", "a..b"));
    assert_true(matches1("a.*.b", "a..b"));
    assert_false(matches1("a..b", "a.x.b"));
    assert_true(matches1("a.*.b", "a.x.b"));
    assert_true(matches1("a.", "a."));
    assert_true(matches1("a.*", "a."));
    assert_false(matches1("a.", "a"));
    assert_true(matches1("#.", "a."));
    assert_true(matches1("#.", "."));
    assert_true(matches1("#.", ""));     /* '#' eats nothing, "" is the one empty word */
    /* Only whole words are wildcards. */
    assert_false(matches1("a*", "ab"));
    assert_true(matches1("a*", "a*"));
    assert_false(matches1("#a", "xa"));
    assert_true(matches1("*.#.*", "a.b"));
    assert_false(matches1("*.#.*", "a"));
    assert_true(matches1("#.*.#", "a"));
    assert_false(matches1("#.*.#.*.#", "a"));
    assert_true(matches1("#.*.#.*.#", "a.b"));
}

static void test_add_remove_prune(void **state) {
    (void)state;
    topic_trie_t *t = topic_trie_new();
    int a, b, c;
    add(t, "x.y.z", &a);
    add(t, "x.y.z", &a);                      /* duplicate: no-op */
    assert_int_equal(topic_trie_count(t), 1);
    add(t, "x.y.z", &b);
    add(t, "x.*.z", &c);
    add(t, "x.#", &a);                        /* same pointer under another pattern */
    assert_int_equal(topic_trie_count(t), 4);
    hits_t *h = match(t, "x.y.z");
    assert_int_equal(h->n, 3);
    assert_int_equal(count_of(h, &a), 1);

    assert_int_equal(topic_trie_remove(t, "x.y.z", 5, &c), -1);   /* wrong pattern */
    assert_int_equal(topic_trie_remove(t, "x.y", 3, &a), -1);     /* interior node, no entry */
    assert_int_equal(topic_trie_remove(t, "nope", 4, &a), -1);
    assert_int_equal(topic_trie_remove(t, "x.y.z", 5, &a), 0);
    assert_int_equal(topic_trie_remove(t, "x.y.z", 5, &a), -1);
    h = match(t, "x.y.z");
    assert_int_equal(h->n, 3);                /* b, c, and a via x.# */
    assert_int_equal(topic_trie_remove(t, "x.#", 3, &a), 0);
    h = match(t, "x.y.z");
    assert_int_equal(h->n, 2);
    assert_int_equal(count_of(h, &a), 0);
    assert_int_equal(topic_trie_remove(t, "x.y.z", 5, &b), 0);
    assert_int_equal(topic_trie_remove(t, "x.*.z", 5, &c), 0);
    assert_int_equal(topic_trie_count(t), 0);
    assert_int_equal(match(t, "x.y.z")->n, 0);
    /* Everything was pruned, so re-adding works from a clean root. */
    add(t, "x.y.z", &a);
    assert_int_equal(match(t, "x.y.z")->n, 1);
    topic_trie_free(t);

    /* Many siblings exercise the sorted child array; remove them in a scrambled order. */
    t = topic_trie_new();
    static int tags[500];
    char buf[32];
    for (int i = 0; i < 500; i++) {
        snprintf(buf, sizeof buf, "s.%d.q", (i * 7919) % 500);
        add(t, buf, &tags[(i * 7919) % 500]);
    }
    for (int i = 0; i < 500; i++) {
        snprintf(buf, sizeof buf, "s.%d.q", i);
        h = match(t, buf);
        assert_int_equal(h->n, 1);
        assert_ptr_equal(h->hits[0], &tags[i]);
    }
    for (int i = 0; i < 500; i++) {
        int k = (i * 263) % 500;
        snprintf(buf, sizeof buf, "s.%d.q", k);
        assert_int_equal(topic_trie_remove(t, buf, strlen(buf), &tags[k]), 0);
    }
    assert_int_equal(topic_trie_count(t), 0);
    /* Many distinct bindings exercise growth and deletion of the record set. */
    for (int i = 0; i < 500; i++) add(t, "#", &tags[i]);
    assert_int_equal(match(t, "any.thing")->n, 500);
    for (int i = 0; i < 500; i += 2) assert_int_equal(topic_trie_remove(t, "#", 1, &tags[i]), 0);
    h = match(t, "any.thing");
    assert_int_equal(h->n, 250);
    for (int i = 1; i < 500; i += 2) assert_int_equal(count_of(h, &tags[i]), 1);
    topic_trie_free(t);
}

static void test_dedup_and_limits(void **state) {
    (void)state;
    topic_trie_t *t = topic_trie_new();
    int a;
    /* Many '#' routes reach the same entry; it must be reported once per call. */
    add(t, "#.#.#.#", &a);
    add(t, "#.a.#", &a);
    add(t, "a.#.a", &a);
    add(t, "#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.a.#", &a);
    const char *rk = "a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a";
    hits_t *h = match(t, rk);
    assert_int_equal(h->n, 1);
    h = match(t, rk);                          /* the next call reports it again */
    assert_int_equal(h->n, 1);
    /* Binding keys are shortstrs. */
    char big[300];
    memset(big, 'x', sizeof big);
    assert_int_equal(topic_trie_add(t, big, 256, &a), -1);
    assert_int_equal(topic_trie_add(t, big, 255, &a), 0);
    assert_int_equal(topic_trie_add(t, NULL, 0, &a), 0);   /* NULL with len 0 is "" */
    h = match(t, "");
    assert_int_equal(h->n, 1);
    topic_trie_match(t, NULL, 0, collect, h);              /* NULL key with len 0 is "" too */
    topic_trie_free(t);
    topic_trie_free(NULL);
    assert_int_equal(topic_trie_count(NULL), 0);
}

/* ---- randomized comparison against a naive matcher ---------------------------------- */

typedef struct { const char *p; size_t len; } word_t;

static size_t split(const char *s, word_t *out) {
    size_t n = 0;
    const char *start = s;
    for (const char *c = s;; c++) {
        if (*c == '.' || *c == '\0') {
            out[n].p = start;
            out[n].len = (size_t)(c - start);
            n++;
            if (*c == '\0') return n;
            start = c + 1;
        }
    }
}

static bool word_is(const word_t *w, const char *lit) {
    return w->len == strlen(lit) && memcmp(w->p, lit, w->len) == 0;
}

static bool ref_match(const word_t *pw, size_t np, const word_t *kw, size_t nk) {
    if (np == 0) return nk == 0;
    if (word_is(&pw[0], "#")) {
        for (size_t skip = 0; skip <= nk; skip++)
            if (ref_match(pw + 1, np - 1, kw + skip, nk - skip)) return true;
        return false;
    }
    if (nk == 0) return false;
    if (word_is(&pw[0], "*") || (pw[0].len == kw[0].len && memcmp(pw[0].p, kw[0].p, pw[0].len) == 0))
        return ref_match(pw + 1, np - 1, kw + 1, nk - 1);
    return false;
}

static void random_words(char *buf, int max_words, const char *const *alphabet, int n_alpha) {
    int n = 1 + rand() % max_words;
    buf[0] = '\0';
    for (int i = 0; i < n; i++) {
        if (i) strcat(buf, ".");
        strcat(buf, alphabet[rand() % n_alpha]);
    }
}

static void test_randomized(void **state) {
    (void)state;
    static const char *const pat_alpha[] = { "a", "b", "", "*", "#", "#", "*" };
    static const char *const key_alpha[] = { "a", "b", "", "c" };
    enum { N_PAT = 300, N_KEY = 3000 };
    static char pats[N_PAT][64];
    static int ids[N_PAT];
    srand(12345);
    topic_trie_t *t = topic_trie_new();
    for (int i = 0; i < N_PAT; i++) {
        random_words(pats[i], 6, pat_alpha, 7);
        add(t, pats[i], &ids[i]);             /* one distinct pointer per pattern slot */
    }
    assert_int_equal(topic_trie_count(t), N_PAT);
    word_t pw[64], kw[64];
    char key[64];
    for (int k = 0; k < N_KEY; k++) {
        random_words(key, 7, key_alpha, 4);
        if (k % 50 == 0) key[0] = '\0';
        hits_t *h = match(t, key);
        size_t nk = split(key, kw);
        size_t expected = 0;
        for (int i = 0; i < N_PAT; i++) {
            size_t np = split(pats[i], pw);
            bool want = ref_match(pw, np, kw, nk);
            size_t got = count_of(h, &ids[i]);
            if (got != (want ? 1u : 0u))
                fail_msg("pattern '%s' key '%s': trie %zu, reference %d", pats[i], key, got, want);
            expected += want;
        }
        assert_int_equal(h->n, expected);
        /* Periodically remove and re-add to exercise pruning under the same comparison. */
        if (k % 100 == 99) {
            int i = rand() % N_PAT;
            assert_int_equal(topic_trie_remove(t, pats[i], strlen(pats[i]), &ids[i]), 0);
            random_words(pats[i], 6, pat_alpha, 7);
            add(t, pats[i], &ids[i]);
        }
    }
    assert_int_equal(topic_trie_count(t), N_PAT);
    for (int i = 0; i < N_PAT; i++)
        assert_int_equal(topic_trie_remove(t, pats[i], strlen(pats[i]), &ids[i]), 0);
    assert_int_equal(topic_trie_count(t), 0);
    topic_trie_free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tutorial),
        cmocka_unit_test(test_edge_cases),
        cmocka_unit_test(test_add_remove_prune),
        cmocka_unit_test(test_dedup_and_limits),
        cmocka_unit_test(test_randomized),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
