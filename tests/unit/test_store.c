/* test_store.c - unit tests for the durable group-commit store (broker/store.c).
 *
 * Each test gets a fresh temporary directory (mkdtemp) with a store in <tmp>/db and its own
 * libev loop; teardown closes the store and removes the directory. Loops that wait for the
 * storage thread are bounded by TEST_DEADLINE_SEC so a bug shows up as a failure, not a hang.
 *
 * The "locked by another process" test re-executes this binary with --hold-store <dir>: the
 * child opens the store, prints "ready" and keeps it open until its stdin reaches EOF.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ev.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "broker/log.h"
#include "broker/store.h"

extern char **environ;

#define TEST_DEADLINE_SEC 20.0

struct fixture {
    char tmp[64];
    char db[128];
    struct ev_loop *loop;
    store_t *store;
};

/* ---- helpers ----------------------------------------------------------------------------- */

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs loop iterations until *count reaches want or the deadline passes. */
static void drive_until(struct ev_loop *loop, const int *count, int want)
{
    double deadline = now_sec() + TEST_DEADLINE_SEC;
    while (*count < want && now_sec() < deadline) {
        ev_run(loop, EVRUN_NOWAIT);
        if (*count < want)
            usleep(100);
    }
    assert_int_equal(*count, want);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static store_t *open_or_fail(struct fixture *f)
{
    char err[256] = "";
    store_t *s = store_open(f->db, f->loop, err, sizeof(err));
    if (s == NULL)
        fail_msg("store_open(%s): %s", f->db, err);
    return s;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->tmp, sizeof(f->tmp), "/tmp/warren-store-test-XXXXXX");
    assert_non_null(mkdtemp(f->tmp));
    snprintf(f->db, sizeof(f->db), "%s/nested/db", f->tmp); /* exercises mkdir -p */
    f->loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(f->loop);
    f->store = open_or_fail(f);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    store_close(f->store);
    ev_loop_destroy(f->loop);
    rm_rf(f->tmp);
    free(f);
    return 0;
}

static void key_u64(uint8_t out[9], char tag, uint64_t n)
{
    out[0] = (uint8_t)tag;
    store_put_be64(out + 1, n);
}

static void assert_value(store_t *s, const void *key, size_t klen, const char *want)
{
    void *val = NULL;
    size_t vlen = 0;
    assert_int_equal(store_get(s, key, klen, &val, &vlen), 1);
    assert_int_equal(vlen, strlen(want));
    assert_memory_equal(val, want, vlen);
    free(val);
}

static void assert_absent(store_t *s, const void *key, size_t klen)
{
    void *val = (void *)1;
    size_t vlen = 1;
    assert_int_equal(store_get(s, key, klen, &val, &vlen), 0);
    assert_null(val);
}

static size_t count_prefix(store_t *s, const void *prefix, size_t plen)
{
    store_iter_t *it = store_iter_prefix(s, prefix, plen);
    assert_non_null(it);
    const void *k, *v;
    size_t kl, vl, n = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl))
        n++;
    store_iter_free(it);
    return n;
}

/* ---- tests ------------------------------------------------------------------------------- */

static void test_be64_sorts_numerically(void **state)
{
    (void)state;
    static const uint64_t values[] = {0, 1, 255, 256, 65535, 65536, 1ull << 40, UINT64_MAX};
    uint8_t prev[8], cur[8];
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        store_put_be64(cur, values[i]);
        assert_true(store_get_be64(cur) == values[i]);
        if (i > 0)
            assert_true(memcmp(prev, cur, 8) < 0);
        memcpy(prev, cur, 8);
    }
    store_put_be64(cur, 0x0102030405060708ull);
    static const uint8_t want[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    assert_memory_equal(cur, want, 8);
}

static void test_put_get_del_roundtrip(void **state)
{
    struct fixture *f = *state;
    /* The store copies bytes on put: the caller's buffers can go away immediately. */
    char *key = strdup("queue/alpha");
    char *val = strdup("hello durable world");
    store_put(f->store, key, strlen(key), val, strlen(val));
    free(key);
    free(val);
    store_put(f->store, "empty", 5, NULL, 0);

    /* Reads see committed data only: not yet flushed. */
    assert_absent(f->store, "queue/alpha", 11);

    store_flush_sync(f->store);
    assert_value(f->store, "queue/alpha", 11, "hello durable world");
    assert_value(f->store, "empty", 5, "");
    assert_absent(f->store, "queue/beta", 10);

    store_put(f->store, "queue/alpha", 11, "v2", 2);
    store_flush_sync(f->store);
    assert_value(f->store, "queue/alpha", 11, "v2");

    store_del(f->store, "queue/alpha", 11);
    store_del(f->store, "never-existed", 13);
    store_flush_sync(f->store);
    assert_absent(f->store, "queue/alpha", 11);
    assert_value(f->store, "empty", 5, "");

    store_stats_t st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.writes, 5);
    assert_int_equal(st.pending_ops, 0);
    assert_true(st.syncs >= 3 && st.syncs <= st.batches);
    assert_true(st.bytes > 0);
}

static void test_prefix_iteration_in_key_order(void **state)
{
    struct fixture *f = *state;
    static const uint64_t shuffled[] = {70000, 5, UINT64_MAX, 256, 0, 65536, 255, 1};
    static const uint64_t sorted[] = {0, 1, 5, 255, 256, 65536, 70000, UINT64_MAX};
    const size_t n = sizeof(shuffled) / sizeof(shuffled[0]);
    uint8_t key[9];
    char val[32];
    for (size_t i = 0; i < n; i++) {
        key_u64(key, 'm', shuffled[i]);
        snprintf(val, sizeof(val), "%llu", (unsigned long long)shuffled[i]);
        store_put(f->store, key, sizeof(key), val, strlen(val));
        /* Neighbours on both sides must not leak into the 'm' scan. */
        key_u64(key, 'l', shuffled[i]);
        store_put(f->store, key, sizeof(key), "x", 1);
        key_u64(key, 'n', shuffled[i]);
        store_put(f->store, key, sizeof(key), "x", 1);
    }
    store_put(f->store, "\xff\xff" "a", 3, "ff1", 3);
    store_put(f->store, "\xff\xff" "b", 3, "ff2", 3);
    store_put(f->store, "\xff\xfe", 2, "fe", 2);
    store_flush_sync(f->store);

    store_iter_t *it = store_iter_prefix(f->store, "m", 1);
    assert_non_null(it);
    const void *k, *v;
    size_t kl, vl, seen = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        assert_true(seen < n);
        assert_int_equal(kl, 9);
        assert_int_equal(((const uint8_t *)k)[0], 'm');
        assert_true(store_get_be64((const uint8_t *)k + 1) == sorted[seen]);
        snprintf(val, sizeof(val), "%llu", (unsigned long long)sorted[seen]);
        assert_int_equal(vl, strlen(val));
        assert_memory_equal(v, val, vl);
        seen++;
    }
    assert_int_equal(seen, n);
    assert_false(store_iter_next(it, &k, &kl, &v, &vl)); /* stays finished */
    store_iter_free(it);

    /* A prefix of 0xff bytes has no upper-bound successor; the prefix check still stops it. */
    assert_int_equal(count_prefix(f->store, "\xff\xff", 2), 2);
    assert_int_equal(count_prefix(f->store, "\xff", 1), 3);
    assert_int_equal(count_prefix(f->store, "zzz", 3), 0);

    /* The empty prefix walks everything in memcmp order. */
    it = store_iter_prefix(f->store, NULL, 0);
    assert_non_null(it);
    uint8_t prev[16];
    size_t prev_len = 0, total = 0;
    while (store_iter_next(it, &k, &kl, &v, &vl)) {
        assert_true(kl <= sizeof(prev));
        if (total > 0) {
            size_t m = kl < prev_len ? kl : prev_len;
            int c = memcmp(prev, k, m);
            assert_true(c < 0 || (c == 0 && prev_len < kl));
        }
        memcpy(prev, k, kl);
        prev_len = kl;
        total++;
    }
    store_iter_free(it);
    assert_int_equal(total, 3 * n + 3);
    store_iter_free(NULL);
}

static void test_del_range_is_half_open(void **state)
{
    struct fixture *f = *state;
    uint8_t key[9], begin[9], end[9];
    for (uint64_t i = 0; i < 100; i++) {
        key_u64(key, 'r', i);
        store_put(f->store, key, sizeof(key), "v", 1);
    }
    key_u64(key, 's', 0);
    store_put(f->store, key, sizeof(key), "other", 5);
    store_flush_sync(f->store);
    assert_int_equal(count_prefix(f->store, "r", 1), 100);

    key_u64(begin, 'r', 10);
    key_u64(end, 'r', 20);
    store_del_range(f->store, begin, sizeof(begin), end, sizeof(end));
    store_flush_sync(f->store);

    assert_int_equal(count_prefix(f->store, "r", 1), 90);
    key_u64(key, 'r', 9);
    assert_value(f->store, key, sizeof(key), "v");
    key_u64(key, 'r', 10);
    assert_absent(f->store, key, sizeof(key));
    key_u64(key, 'r', 19);
    assert_absent(f->store, key, sizeof(key));
    key_u64(key, 'r', 20);
    assert_value(f->store, key, sizeof(key), "v");

    /* Everything of a prefix, the way a queue delete would do it. */
    store_del_range(f->store, "r", 1, "s", 1);
    store_flush_sync(f->store);
    assert_int_equal(count_prefix(f->store, "r", 1), 0);
    key_u64(key, 's', 0);
    assert_value(f->store, key, sizeof(key), "other");
}

/* Shared by the callback tests. */
struct cb_log {
    store_t *store;
    int calls;
    int order[64];
    bool inside_store_call;
    bool violated; /* a callback ran inside a store_* call or before its write was committed */
};

struct cb_ctx {
    struct cb_log *log;
    int index;
    uint8_t key[9];
};

static void record_cb(void *arg)
{
    struct cb_ctx *ctx = arg;
    struct cb_log *log = ctx->log;
    if (log->inside_store_call)
        log->violated = true;
    /* The write queued before this callback must already be committed. */
    void *val = NULL;
    size_t vlen = 0;
    if (store_get(log->store, ctx->key, sizeof(ctx->key), &val, &vlen) != 1)
        log->violated = true;
    free(val);
    if (log->calls < 64)
        log->order[log->calls] = ctx->index;
    log->calls++;
}

static void test_callbacks_in_order_after_durable(void **state)
{
    struct fixture *f = *state;
    enum { N = 40 };
    struct cb_log log = {.store = f->store};
    struct cb_ctx ctx[N];

    for (int i = 0; i < N; i++) {
        ctx[i].log = &log;
        ctx[i].index = i;
        key_u64(ctx[i].key, 'c', (uint64_t)i);
        log.inside_store_call = true;
        store_put(f->store, ctx[i].key, sizeof(ctx[i].key), "payload", 7);
        store_on_synced(f->store, record_cb, &ctx[i]);
        store_kick(f->store);
        log.inside_store_call = false;
        /* Spread registrations over several batches, some while one is in flight. */
        if (i % 7 == 3)
            ev_run(f->loop, EVRUN_NOWAIT);
    }
    drive_until(f->loop, &log.calls, N);
    assert_false(log.violated);
    for (int i = 0; i < N; i++)
        assert_int_equal(log.order[i], i);

    store_stats_t st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.writes, N);
    assert_int_equal(st.pending_ops, 0);
    assert_true(st.batches >= 2);
}

static void count_cb(void *arg)
{
    (*(int *)arg)++;
}

static void test_callback_without_writes(void **state)
{
    struct fixture *f = *state;
    int calls = 0;
    store_on_synced(f->store, count_cb, &calls);
    store_on_synced(f->store, NULL, NULL); /* ignored, not a crash */
    assert_int_equal(calls, 0);
    drive_until(f->loop, &calls, 1);

    store_stats_t st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.syncs, 0); /* nothing to write, nothing to fsync */
    assert_int_equal(st.batches, 1);
}

/* A callback that queues more work and tries an (illegal) nested flush. */
struct chain {
    store_t *store;
    int first, second;
    bool second_saw_write;
};

static void chain_second(void *arg)
{
    struct chain *c = arg;
    void *val = NULL;
    size_t vlen = 0;
    c->second_saw_write = store_get(c->store, "chained", 7, &val, &vlen) == 1;
    free(val);
    c->second++;
}

static void chain_first(void *arg)
{
    struct chain *c = arg;
    c->first++;
    store_put(c->store, "chained", 7, "yes", 3);
    store_on_synced(c->store, chain_second, c);
    store_flush_sync(c->store); /* refused from a callback: must neither crash nor reorder */
}

static void test_callback_may_queue_more(void **state)
{
    struct fixture *f = *state;
    struct chain c = {.store = f->store};
    store_put(f->store, "first", 5, "1", 1);
    store_on_synced(f->store, chain_first, &c);
    drive_until(f->loop, &c.second, 1);
    assert_int_equal(c.first, 1);
    assert_true(c.second_saw_write);
}

static void test_group_commit_coalesces(void **state)
{
    struct fixture *f = *state;
    enum { N = 10000 };
    uint8_t key[9];

    /* Batch 1 goes in flight; with no loop iteration nothing collects it, so everything queued
     * meanwhile must pile up in a single next batch, however fast the disk is. */
    store_put(f->store, "start", 5, "x", 1);
    store_kick(f->store);
    for (uint64_t i = 0; i < N; i++) {
        key_u64(key, 'g', i);
        store_put(f->store, key, sizeof(key), "message body", 12);
        store_kick(f->store);
    }
    store_stats_t st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.pending_ops, N + 1);
    store_flush_sync(f->store);
    store_get_stats(f->store, &st);
    assert_int_equal(st.writes, N + 1);
    assert_int_equal(st.batches, 2);
    assert_int_equal(st.syncs, 2);
    assert_int_equal(st.pending_ops, 0);
    assert_int_equal(count_prefix(f->store, "g", 1), N);

    /* Loop-driven: a few writes per iteration (a busy broker). Each iteration submits at most one
     * batch, and only when the previous fsync is done, so batches stay far below writes. */
    int acked = 0;
    for (uint64_t i = 0; i < N; i++) {
        key_u64(key, 'h', i);
        store_put(f->store, key, sizeof(key), "message body", 12);
        store_on_synced(f->store, count_cb, &acked);
        if (i % 4 == 3)
            ev_run(f->loop, EVRUN_NOWAIT);
    }
    drive_until(f->loop, &acked, N);
    store_stats_t st2;
    store_get_stats(f->store, &st2);
    uint64_t writes = st2.writes - st.writes, batches = st2.batches - st.batches;
    assert_int_equal(writes, N);
    print_message("loop-driven: %llu writes in %llu batches\n", (unsigned long long)writes,
                  (unsigned long long)batches);
    assert_true(batches * 4 <= writes);
}

static void test_reopen_sees_data(void **state)
{
    struct fixture *f = *state;
    int acked = 0;
    store_put(f->store, "persist", 7, "across restarts", 15);
    store_on_synced(f->store, count_cb, &acked);
    /* Close without driving the loop: close must flush and run the pending callback. */
    store_close(f->store);
    f->store = NULL;
    assert_int_equal(acked, 1);

    f->store = open_or_fail(f);
    assert_value(f->store, "persist", 7, "across restarts");
    assert_int_equal(count_prefix(f->store, "persist", 7), 1);
}

static void test_open_locked_same_process(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";
    store_t *again = store_open(f->db, f->loop, err, sizeof(err));
    assert_null(again);
    char want[256];
    snprintf(want, sizeof(want), "data directory %s is in use by another process", f->db);
    assert_string_equal(err, want);
    /* The first handle keeps working. */
    store_put(f->store, "k", 1, "v", 1);
    store_flush_sync(f->store);
    assert_value(f->store, "k", 1, "v");
}

static char self_path[4096];

/* Child mode: hold the store open until stdin closes. */
static int hold_store(const char *dir)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    char err[256] = "";
    store_t *s = store_open(dir, loop, err, sizeof(err));
    if (s == NULL) {
        fprintf(stderr, "child: %s\n", err);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    char buf[64];
    while (read(STDIN_FILENO, buf, sizeof(buf)) > 0) {
    }
    store_close(s);
    ev_loop_destroy(loop);
    return 0;
}

static void test_open_locked_other_process(void **state)
{
    struct fixture *f = *state;
    char other[160];
    snprintf(other, sizeof(other), "%s/other", f->tmp);

    int to_child[2], from_child[2];
    assert_int_equal(pipe2(to_child, O_CLOEXEC), 0);
    assert_int_equal(pipe2(from_child, O_CLOEXEC), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to_child[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&fa, from_child[1], STDOUT_FILENO);
    char *argv[] = {self_path, "--hold-store", other, NULL};
    pid_t pid;
    int rc = posix_spawn(&pid, self_path, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(to_child[0]);
    close(from_child[1]);
    assert_int_equal(rc, 0);

    struct pollfd pfd = {.fd = from_child[0], .events = POLLIN};
    char buf[16] = "";
    ssize_t got = 0;
    if (poll(&pfd, 1, (int)(TEST_DEADLINE_SEC * 1000)) == 1)
        got = read(from_child[0], buf, sizeof(buf) - 1);
    bool ready = got >= 5 && memcmp(buf, "ready", 5) == 0;

    char err[256] = "";
    store_t *s = ready ? store_open(other, f->loop, err, sizeof(err)) : NULL;

    close(to_child[1]); /* child closes its store and exits */
    close(from_child[0]);
    int status = 0;
    waitpid(pid, &status, 0);

    assert_true(ready);
    assert_null(s);
    char want[256];
    snprintf(want, sizeof(want), "data directory %s is in use by another process", other);
    assert_string_equal(err, want);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* Once the other process is gone the directory is free again. */
    s = store_open(other, f->loop, err, sizeof(err));
    assert_non_null(s);
    store_close(s);
}

static void test_open_errors(void **state)
{
    struct fixture *f = *state;
    char err[256] = "";
    char path[200];

    snprintf(path, sizeof(path), "%s/plainfile", f->tmp);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
    snprintf(path, sizeof(path), "%s/plainfile/db", f->tmp);
    assert_null(store_open(path, f->loop, err, sizeof(err)));
    assert_non_null(strstr(err, "cannot create data directory"));

    snprintf(path, sizeof(path), "%s/plainfile", f->tmp);
    assert_null(store_open(path, f->loop, err, sizeof(err)));
    assert_non_null(strstr(err, path));

    assert_null(store_open(NULL, f->loop, err, sizeof(err)));
    assert_null(store_open("", f->loop, err, sizeof(err)));
    assert_null(store_open(path, NULL, NULL, 0)); /* no error buffer: still no crash */
    store_close(NULL);
}

static void test_stats_pending_ops(void **state)
{
    struct fixture *f = *state;
    store_stats_t st;
    store_put(f->store, "a", 1, "1", 1);
    store_del(f->store, "b", 1);
    store_del_range(f->store, "c", 1, "d", 1);
    store_get_stats(f->store, &st);
    assert_int_equal(st.pending_ops, 3);
    assert_int_equal(st.writes, 0);
    store_flush_sync(f->store);
    store_get_stats(f->store, &st);
    assert_int_equal(st.pending_ops, 0);
    assert_int_equal(st.writes, 3);
    assert_int_equal(st.bytes, 2 + 1 + 2);
    store_flush_sync(f->store); /* nothing queued: returns at once */
}

static long long dir_bytes_total;
static int add_size(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)path, (void)ftw;
    if (flag == FTW_F) dir_bytes_total += st->st_size;
    return 0;
}

static long long dir_bytes(const char *dir)
{
    dir_bytes_total = 0;
    nftw(dir, add_size, 16, FTW_PHYS);
    return dir_bytes_total;
}

/* Deleted records leave the disk once their range is compacted (store_close waits for it). */
static void test_compact_range_reclaims_space(void **state)
{
    struct fixture *f = *state;
    enum { N = 6000, VLEN = 8192 };
    uint8_t *val = malloc(VLEN);
    assert_non_null(val);
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < VLEN; i++) { /* incompressible */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        val[i] = (uint8_t)x;
    }
    uint8_t key[9] = {'z'};
    for (int i = 0; i < N; i++) {
        store_put_be64(key + 1, (uint64_t)i);
        val[0] = (uint8_t)i;
        store_put(f->store, key, sizeof key, val, VLEN);
        if (i % 1000 == 999) store_flush_sync(f->store);
    }
    store_flush_sync(f->store);
    uint8_t begin[1] = {'z'}, end[1] = {'z' + 1};
    store_del_range(f->store, begin, 1, end, 1);
    uint8_t keep[9] = {'y', 0, 0, 0, 0, 0, 0, 0, 1};
    store_put(f->store, keep, sizeof keep, "kept", 4);
    store_flush_sync(f->store);
    long long before = dir_bytes(f->db);
    store_compact_range_in(f->store, STORE_MAIN, begin, 1, end, 1);
    store_compact_range_in(f->store, STORE_MAIN, begin, 1, end, 1); /* while one runs: dropped */
    store_close(f->store);
    f->store = open_or_fail(f);
    long long after = dir_bytes(f->db);
    void *v = NULL;
    size_t vl = 0;
    store_put_be64(key + 1, 5);
    assert_int_equal(store_get(f->store, key, sizeof key, &v, &vl), 0);
    assert_int_equal(store_get(f->store, keep, sizeof keep, &v, &vl), 1);
    assert_int_equal(vl, 4);
    free(v);
    free(val);
    assert_true(before > (long long)N * VLEN / 2);
    assert_true(after < before / 4);
}

/* A batch that deletes a range of STORE_LOG flushes the log memtable once it holds 8 MB or more
 * (so that what the deletion covers never reaches a table file); a small one is left alone. */
static uint64_t trim_flushes_after(store_t *s, uint64_t want)
{
    store_stats_t st;
    for (int i = 0; i < 2000; i++) { /* scheduled after the batch is reported: wait up to 2 s */
        store_get_stats(s, &st);
        if (st.log_trim_flushes >= want) break;
        usleep(1000);
    }
    return st.log_trim_flushes;
}

static void test_log_flushed_after_trim(void **state)
{
    struct fixture *f = *state;
    enum { VLEN = 8192 };
    uint8_t *val = calloc(1, VLEN);
    assert_non_null(val);
    uint8_t key[9] = {'L'};
    for (int i = 0; i < 64; i++) { /* 512 KB */
        store_put_be64(key + 1, (uint64_t)i);
        store_put_in(f->store, STORE_LOG, key, sizeof key, val, VLEN);
    }
    store_flush_sync(f->store);
    uint8_t begin[1] = {'L'}, end[1] = {'L' + 1};
    store_del_range_in(f->store, STORE_LOG, begin, 1, end, 1);
    store_flush_sync(f->store);
    assert_int_equal(trim_flushes_after(f->store, 1), 0);
    for (int i = 0; i < 1200; i++) { /* 9.6 MB */
        store_put_be64(key + 1, (uint64_t)(1000 + i));
        store_put_in(f->store, STORE_LOG, key, sizeof key, val, VLEN);
        if (i % 200 == 199) store_flush_sync(f->store);
    }
    store_flush_sync(f->store);
    store_stats_t st;
    store_get_stats(f->store, &st);
    assert_int_equal(st.log_trim_flushes, 0); /* writes alone do not */
    store_del_range_in(f->store, STORE_LOG, begin, 1, end, 1);
    store_flush_sync(f->store);
    assert_int_equal(trim_flushes_after(f->store, 1), 1);
    free(val);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--hold-store") == 0)
        return hold_store(argv[2]);
    ssize_t n = readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
    if (n <= 0)
        return 1;
    self_path[n] = '\0';
    log_set_level(LOG_WARN);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_be64_sorts_numerically),
        cmocka_unit_test_setup_teardown(test_put_get_del_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefix_iteration_in_key_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_del_range_is_half_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callbacks_in_order_after_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callback_without_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_callback_may_queue_more, setup, teardown),
        cmocka_unit_test_setup_teardown(test_group_commit_coalesces, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_sees_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_locked_same_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_locked_other_process, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_pending_ops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_compact_range_reclaims_space, setup, teardown),
        cmocka_unit_test_setup_teardown(test_log_flushed_after_trim, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
