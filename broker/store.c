/* store.c - the durable store: RocksDB behind one storage thread, with group commit.
 *
 * Role: everything the broker must not lose (durable queues, persistent messages, bindings) goes
 * through this file. The event loop must never wait for a disk, so the fsync happens on a
 * dedicated storage thread, and the loop only learns about it afterwards.
 *
 * Data flow:
 *
 *   loop thread                          storage thread
 *   -----------                          --------------
 *   store_put/del/... -> current batch
 *   store_on_synced   -> current batch's waiter list
 *   ev_prepare (before the loop blocks):
 *     if nothing in flight and current
 *     is non-empty: current -> inflight,
 *     hand it over, start a new current   rocksdb_write(sync=true)  (one WAL fsync)
 *                                          mark done, ev_async_send
 *   ev_async: collect inflight, run its
 *     waiters in registration order
 *
 * Because at most one batch is in flight, everything that arrives during an fsync lands in the
 * next batch and shares the next fsync: the batch size adapts to the disk's latency (group
 * commit). Batches are written strictly in submission order, so "batch N is durable" implies
 * "every batch before N is durable", which is what makes a waiter's promise hold.
 *
 * Invariants:
 *   - current, inflight, spare, the seq counters and the stats belong to the loop thread.
 *   - handoff/handoff_done/handoff_err/stopping are shared and guarded by lock.
 *   - inflight != NULL exactly while the storage thread owns that batch (from hand-over until
 *     the loop collects the completion); the loop never touches its contents meanwhile.
 *   - Waiters only run from store_collect(), which runs from the ev_async watcher, from
 *     store_flush_sync() or from store_close() - never from a put/del/on_synced/kick call.
 *   - completed_seq <= submitted_seq; batch seq numbers increase by one per submission.
 *
 * Key spaces (store.h) are RocksDB column families of the one database: a batch may write to
 * both, and RocksDB's one write-ahead log keeps it atomic. (With more than one column family,
 * RocksDB also syncs a closed WAL before flushing a memtable, so without fsync per batch
 * (store_set_sync(false)) the log still reaches the disk at each memtable switch.)
 *
 * A failed synced write is fatal (logged, then abort()): after a failed fsync the state of the
 * WAL is unknown, and running the waiters would confirm data that may be gone. Restarting
 * recovers from the WAL, which is the only safe path.
 */
#include "broker/store.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <rocksdb/c.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "broker/log.h"

/* Memory budget: the node must stay small. */
#define STORE_WRITE_BUFFER_BYTES (16u << 20)
#define STORE_BLOCK_CACHE_BYTES (16u << 20)
#define STORE_MAX_OPEN_FILES 256
#define STORE_MAX_TOTAL_WAL_BYTES (128u << 20)
#define STORE_INFO_LOG_BYTES (4u << 20)
#define STORE_INFO_LOG_KEEP 3
/* STORE_LOG: a Raft group deletes its log records once a snapshot covers them, typically a few
 * thousand entries behind the head. A memtable several times that size holds mostly deleted
 * records when it fills, so its flush writes little, and compaction has little to merge: with
 * 16 MB memtables, a third of the Raft data still reached table files (compressed, checksummed,
 * compacted and deleted again); with 64 MB, under a tenth. Three of them (one filling, two
 * flushing) keep a flush that waits for the disk from stalling writes: with two, the p99 commit
 * latency of tests/bench/raft_bench tripled. Memory is only used as records arrive: a node
 * without busy Raft groups never fills them. */
#define STORE_LOG_WRITE_BUFFER_BYTES (64u << 20)
#define STORE_LOG_WRITE_BUFFERS 3
#define STORE_DB_WRITE_BUFFER_BYTES (40u << 20)
/* But a queue with a deep backlog snapshots only every few tens of MB of log (qq.c), and the
 * node-wide memtable cap (STORE_DB_WRITE_BUFFER_BYTES) or the WAL limit then flushed its log
 * memtable while most of it was still live: nearly every Raft record of a 1M-message backlog
 * reached a table file and was compacted away later (about 2 GB written per GB of log).
 * Flushing STORE_LOG right after a batch that deleted log records (a snapshot's compaction),
 * once its memtable holds this much, writes only what survived the deletion. */
#define STORE_LOG_FLUSH_AFTER_TRIM_BYTES (8u << 20)
/* How long writes that no one waits for (no sync callback) may wait before going to disk: the
 * acknowledgements arriving meanwhile cancel deferred message writes (store_set_presubmit), and
 * more writes share one fsync. A persistent message published without confirms, or a deletion,
 * reaches the disk at most this much later. */
#define STORE_DEFER_SECONDS 0.02

/* One callback waiting for its batch to become durable. */
struct store_waiter {
    store_cb cb;
    void *arg;
};

/* A group of writes committed with one synced rocksdb_write, plus the waiters it will release. */
struct store_batch {
    rocksdb_writebatch_t *writes;
    uint64_t ops;   /* put/del/del_range calls queued */
    uint64_t bytes; /* key + value bytes queued */
    struct store_waiter *waiters;
    size_t nwaiters, waiters_cap;
    uint64_t seq; /* assigned at submission */
    bool log_trimmed; /* it deletes a range of STORE_LOG (see STORE_LOG_FLUSH_AFTER_TRIM_BYTES) */
};

struct store {
    struct ev_loop *loop;
    char *dir;

    rocksdb_t *db;
    rocksdb_column_family_handle_t *cf[STORE_SPACES]; /* indexed by enum store_space */
    rocksdb_options_t *options;     /* the database's and STORE_MAIN's */
    rocksdb_options_t *log_options; /* STORE_LOG's */
    rocksdb_flushoptions_t *flush_nowait; /* storage thread: schedules a flush, returns at once */
    uint64_t log_trim_flushes; /* flushes store_flush_trimmed_log scheduled (atomic) */
    rocksdb_block_based_table_options_t *table_options;
    rocksdb_block_based_table_options_t *log_table_options;
    rocksdb_cache_t *block_cache;
    rocksdb_writeoptions_t *sync_write;
    rocksdb_readoptions_t *read_committed;

    ev_prepare submit_watcher;
    ev_async done_watcher;
    ev_timer defer_timer; /* a batch of only deferred writes that nobody waits for yet */

    /* Loop thread only. */
    struct store_batch *current;  /* collecting new writes */
    struct store_batch *inflight; /* owned by the storage thread until collected */
    struct store_batch *spare;    /* recycled batch, saves an allocation per round */
    uint64_t submitted_seq, completed_seq;
    bool running_waiters;
    bool nosync; /* store_set_sync(false): benchmark mode, writes are not fsynced */
    store_stats_t stats;
    store_cb presubmit;     /* adds deferred writes to the batch about to be handed over */
    void *presubmit_arg;
    bool presubmit_wanted;  /* it has some: the batch is not empty even without other writes */

    /* Shared with the storage thread, guarded by lock. */
    pthread_mutex_t lock;
    pthread_cond_t work_ready; /* handoff set or stopping */
    pthread_cond_t work_done;  /* handoff_done set */
    struct store_batch *handoff;
    bool handoff_done;
    char *handoff_err;
    bool stopping;

    pthread_t thread;
    bool thread_started;

    /* store_compact_range_in: one background compaction at a time, on its own thread. */
    pthread_t compact_thread;
    bool compact_started; /* a thread was started and not joined yet (loop thread only) */
    bool compact_busy;    /* guarded by lock */
};

/* ---- small helpers ----------------------------------------------------------------------- */

static void store_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void store_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* Allocation failure inside the store cannot be reported through the void write API, and
 * silently dropping a write or a waiter would break the durability contract: stop loudly. */
static void *store_xalloc(void *ptr, size_t size)
{
    void *p = realloc(ptr, size);
    if (p == NULL && size > 0) {
        log_error("store: out of memory allocating %zu bytes", size);
        abort();
    }
    return p;
}

void store_put_be64(uint8_t *dst, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        dst[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

uint64_t store_get_be64(const uint8_t *src)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | src[i];
    return v;
}

/* RocksDB slices may not be built from a NULL pointer; zero-length input may legally be NULL. */
static const char *store_bytes(const void *p)
{
    return p != NULL ? (const char *)p : "";
}

/* ---- batches ----------------------------------------------------------------------------- */

static struct store_batch *batch_new(void)
{
    struct store_batch *b = store_xalloc(NULL, sizeof(*b));
    memset(b, 0, sizeof(*b));
    b->writes = rocksdb_writebatch_create();
    return b;
}

static void batch_free(struct store_batch *b)
{
    if (b == NULL)
        return;
    rocksdb_writebatch_destroy(b->writes);
    free(b->waiters);
    free(b);
}

static bool batch_is_empty(const struct store_batch *b)
{
    return b->ops == 0 && b->nwaiters == 0;
}

static void batch_add_waiter(struct store_batch *b, store_cb cb, void *arg)
{
    if (b->nwaiters == b->waiters_cap) {
        size_t cap = b->waiters_cap ? b->waiters_cap * 2 : 16;
        b->waiters = store_xalloc(b->waiters, cap * sizeof(*b->waiters));
        b->waiters_cap = cap;
    }
    b->waiters[b->nwaiters++] = (struct store_waiter){cb, arg};
}

/* Empties a collected batch for reuse; keeps the waiter array's capacity. */
static void batch_reset(struct store_batch *b)
{
    rocksdb_writebatch_clear(b->writes);
    b->ops = 0;
    b->bytes = 0;
    b->nwaiters = 0;
    b->seq = 0;
    b->log_trimmed = false;
}

/* ---- storage thread ---------------------------------------------------------------------- */

/* Storage thread: schedules a flush of STORE_LOG's memtable after a log deletion, once it is
 * big enough (STORE_LOG_FLUSH_AFTER_TRIM_BYTES); the flush itself runs in RocksDB's background. */
static void store_flush_trimmed_log(store_t *s)
{
    uint64_t active = 0;
    if (rocksdb_property_int_cf(s->db, s->cf[STORE_LOG], "rocksdb.cur-size-active-mem-table", &active) != 0 ||
        active < STORE_LOG_FLUSH_AFTER_TRIM_BYTES)
        return;
    char *err = NULL;
    rocksdb_flush_cf(s->db, s->flush_nowait, s->cf[STORE_LOG], &err);
    if (err == NULL) {
        __atomic_fetch_add(&s->log_trim_flushes, 1, __ATOMIC_RELAXED);
    } else {
        log_warn("store: flushing the log key space failed: %s", err);
        rocksdb_free(err);
    }
}

/* Waits for a batch, writes it with one fsync, reports back; exits once stopping is set and
 * no batch is pending (a pending batch is always written first, so close never loses one). */
static void *store_thread_main(void *arg)
{
    store_t *s = arg;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->handoff == NULL && !s->stopping)
            pthread_cond_wait(&s->work_ready, &s->lock);
        if (s->handoff == NULL)
            break;
        struct store_batch *b = s->handoff;
        s->handoff = NULL;
        pthread_mutex_unlock(&s->lock);

        char *err = NULL;
        if (b->ops > 0) /* a waiter-only batch needs no write: earlier batches are durable */
            rocksdb_write(s->db, s->sync_write, b->writes, &err);
        bool trimmed = err == NULL && b->log_trimmed; /* b is the loop's once reported */

        pthread_mutex_lock(&s->lock);
        s->handoff_done = true;
        s->handoff_err = err;
        pthread_cond_broadcast(&s->work_done);
        pthread_mutex_unlock(&s->lock);
        ev_async_send(s->loop, &s->done_watcher);
        if (trimmed) /* after the report: the waiters need not wait for it */
            store_flush_trimmed_log(s);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* Signals are for the loop thread (libev's signal watchers); the storage thread blocks them all. */
static int store_thread_start(store_t *s)
{
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    int rc = pthread_create(&s->thread, NULL, store_thread_main, s);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (rc != 0)
        return rc;
    pthread_setname_np(s->thread, "warren-store");
    s->thread_started = true;
    return 0;
}

/* ---- loop side: submission and completion ------------------------------------------------ */

/* Hands the current batch to the (idle) storage thread and starts a fresh current batch. */
static void store_submit(store_t *s)
{
    struct store_batch *b = s->current;
    b->seq = ++s->submitted_seq;
    s->inflight = b;
    s->current = s->spare != NULL ? s->spare : batch_new();
    s->spare = NULL;

    pthread_mutex_lock(&s->lock);
    s->handoff = b;
    pthread_cond_signal(&s->work_ready);
    pthread_mutex_unlock(&s->lock);
}

/* Deferred writes join the current batch now (store_set_presubmit). */
static void store_run_presubmit(store_t *s)
{
    if (!s->presubmit_wanted)
        return;
    s->presubmit_wanted = false;
    if (s->presubmit != NULL)
        s->presubmit(s->presubmit_arg);
}

static void store_maybe_submit(store_t *s)
{
    if (s->inflight != NULL)
        return;
    if (s->current->nwaiters == 0 && (s->presubmit_wanted || s->current->ops != 0)) {
        /* No one waits for these writes (no confirm, no sync): they may wait a little
         * (STORE_DEFER_SECONDS), so that acknowledgements arriving meanwhile cancel deferred
         * ones (store_set_presubmit) and more writes share the fsync. A sync callback sends
         * the batch at once. */
        if (!ev_is_active(&s->defer_timer)) {
            ev_timer_set(&s->defer_timer, STORE_DEFER_SECONDS, 0.0);
            ev_timer_start(s->loop, &s->defer_timer);
        }
        return;
    }
    if (ev_is_active(&s->defer_timer))
        ev_timer_stop(s->loop, &s->defer_timer);
    store_run_presubmit(s);
    if (!batch_is_empty(s->current))
        store_submit(s);
}

static void store_on_defer_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    store_t *s = w->data;
    if (s->inflight != NULL)
        return; /* the completion submits, and re-arms this if still only deferred writes */
    store_run_presubmit(s);
    if (!batch_is_empty(s->current))
        store_submit(s);
}

/* Blocks the calling (loop) thread until the in-flight batch is written. */
static void store_wait_inflight(store_t *s)
{
    pthread_mutex_lock(&s->lock);
    while (!s->handoff_done)
        pthread_cond_wait(&s->work_done, &s->lock);
    pthread_mutex_unlock(&s->lock);
}

/* Runs a finished batch's waiters in registration order. The waiter array is detached from the
 * batch first so that waiters may freely queue writes or waiters (they land in current). */
static void store_run_waiters(store_t *s, struct store_waiter *waiters, size_t n)
{
    s->running_waiters = true;
    for (size_t i = 0; i < n; i++)
        waiters[i].cb(waiters[i].arg);
    s->running_waiters = false;
}

/* If the storage thread finished the in-flight batch: account for it, recycle it, run its
 * waiters. A no-op otherwise, so a late ev_async after a synchronous collect is harmless. */
static void store_collect(store_t *s)
{
    pthread_mutex_lock(&s->lock);
    bool done = s->handoff_done;
    char *err = s->handoff_err;
    s->handoff_done = false;
    s->handoff_err = NULL;
    pthread_mutex_unlock(&s->lock);
    if (!done || s->inflight == NULL)
        return;

    struct store_batch *b = s->inflight;
    if (err != NULL) {
        log_error("store: synced write of %llu operations to %s failed: %s; "
                  "stopping, restart to recover from the write-ahead log",
                  (unsigned long long)b->ops, s->dir, err);
        abort();
    }
    s->inflight = NULL;
    s->completed_seq = b->seq;
    s->stats.batches++;
    if (b->ops > 0 && !s->nosync)
        s->stats.syncs++;
    s->stats.writes += b->ops;
    s->stats.bytes += b->bytes;

    struct store_waiter *waiters = b->waiters;
    size_t nwaiters = b->nwaiters;
    b->waiters = NULL;
    b->waiters_cap = 0;
    batch_reset(b);
    if (s->spare == NULL)
        s->spare = b;
    else
        batch_free(b);

    store_run_waiters(s, waiters, nwaiters);
    free(waiters);
}

/* ev_prepare: the last moment before the loop blocks, so the batch holds all of this iteration's
 * writes. Runs at minimum priority so other prepare watchers' writes are included too. */
static void store_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    store_maybe_submit(w->data);
}

static void store_on_done(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    store_t *s = w->data;
    store_collect(s);
    store_maybe_submit(s); /* start the next fsync right away; the prepare would do it soon */
}

/* ---- open / close ------------------------------------------------------------------------ */

/* mkdir -p: creates every missing component of dir. Returns 0 or an errno value. */
static int store_mkdir_p(const char *dir)
{
    size_t len = strlen(dir);
    char *path = store_xalloc(NULL, len + 1);
    memcpy(path, dir, len + 1);
    int rc = 0;
    for (size_t i = 1; i <= len && rc == 0; i++) {
        if (path[i] != '/' && path[i] != '\0')
            continue;
        char saved = path[i];
        path[i] = '\0';
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            rc = errno;
        path[i] = saved;
    }
    free(path);
    if (rc != 0)
        return rc;
    struct stat st;
    if (stat(dir, &st) != 0)
        return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

/* Write-heavy, log-like workload in a small memory budget. */
static void store_configure(store_t *s, int compression)
{
    s->block_cache = rocksdb_cache_create_lru(STORE_BLOCK_CACHE_BYTES);
    s->table_options = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(s->table_options, s->block_cache);
    /* Index and filter blocks stay with their open table, outside the LRU cache: when message
     * bodies stream through a small cache they would be evicted and re-read (and decompressed)
     * on every lookup, which made draining a large backlog crawl. */
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(s->table_options, 0);
    rocksdb_block_based_options_set_filter_policy(s->table_options,
                                                  rocksdb_filterpolicy_create_bloom_full(10));

    s->options = rocksdb_options_create();
    rocksdb_options_set_create_if_missing(s->options, 1);
    rocksdb_options_set_block_based_table_factory(s->options, s->table_options);
    rocksdb_options_set_write_buffer_size(s->options, STORE_WRITE_BUFFER_BYTES);
    rocksdb_options_set_max_write_buffer_number(s->options, 2);
    rocksdb_options_set_compression(s->options, compression);
    rocksdb_options_set_max_open_files(s->options, STORE_MAX_OPEN_FILES);
    rocksdb_options_set_max_background_jobs(s->options, 2);
    rocksdb_options_set_level_compaction_dynamic_level_bytes(s->options, 1);
    /* Bounds WAL growth (and so recovery time) by forcing memtable flushes. */
    rocksdb_options_set_max_total_wal_size(s->options, STORE_MAX_TOTAL_WAL_BYTES);
    rocksdb_options_set_max_log_file_size(s->options, STORE_INFO_LOG_BYTES);
    rocksdb_options_set_keep_log_file_num(s->options, STORE_INFO_LOG_KEEP);
    rocksdb_options_set_create_missing_column_families(s->options, 1);
    /* All memtables together (both key spaces): past this, the largest is flushed early. A Raft
     * log that streams through STORE_LOG would otherwise hold all of its buffers in memory. */
    rocksdb_options_set_db_write_buffer_size(s->options, STORE_DB_WRITE_BUFFER_BYTES);
    /* Quorum queue bodies and classic messages are deleted one key at a time once consumed: a
     * table file that flushes mostly deletions is compacted soon, so that a drained backlog
     * gives its disk space back instead of waiting for unrelated writes to trigger compaction. */
    rocksdb_options_add_compact_on_deletion_collector_factory(s->options, 4096, 2048);

    /* STORE_LOG (see store.h and STORE_LOG_WRITE_BUFFER_BYTES): the same block cache, no bloom
     * filter (its records are only scanned, at startup) and no compression (what reaches a
     * table file is deleted again soon; compressing it was pure cost). */
    s->log_table_options = rocksdb_block_based_options_create();
    rocksdb_block_based_options_set_block_cache(s->log_table_options, s->block_cache);
    rocksdb_block_based_options_set_cache_index_and_filter_blocks(s->log_table_options, 0);
    s->log_options = rocksdb_options_create();
    rocksdb_options_set_block_based_table_factory(s->log_options, s->log_table_options);
    rocksdb_options_set_write_buffer_size(s->log_options, STORE_LOG_WRITE_BUFFER_BYTES);
    rocksdb_options_set_max_write_buffer_number(s->log_options, STORE_LOG_WRITE_BUFFERS);
    rocksdb_options_set_compression(s->log_options, rocksdb_no_compression);
    rocksdb_options_set_level_compaction_dynamic_level_bytes(s->log_options, 1);

    s->sync_write = rocksdb_writeoptions_create();
    rocksdb_writeoptions_set_sync(s->sync_write, 1);
    s->flush_nowait = rocksdb_flushoptions_create();
    rocksdb_flushoptions_set_wait(s->flush_nowait, 0);
    s->read_committed = rocksdb_readoptions_create();
}

static void store_unconfigure(store_t *s)
{
    if (s->read_committed)
        rocksdb_readoptions_destroy(s->read_committed);
    if (s->sync_write)
        rocksdb_writeoptions_destroy(s->sync_write);
    if (s->flush_nowait)
        rocksdb_flushoptions_destroy(s->flush_nowait);
    if (s->options)
        rocksdb_options_destroy(s->options);
    if (s->log_options)
        rocksdb_options_destroy(s->log_options);
    if (s->table_options)
        rocksdb_block_based_options_destroy(s->table_options);
    if (s->log_table_options)
        rocksdb_block_based_options_destroy(s->log_table_options);
    if (s->block_cache)
        rocksdb_cache_destroy(s->block_cache);
    s->read_committed = NULL;
    s->sync_write = NULL;
    s->flush_nowait = NULL;
    s->options = NULL;
    s->log_options = NULL;
    s->table_options = NULL;
    s->log_table_options = NULL;
    s->block_cache = NULL;
}

/* Opens the database and both key spaces (STORE_LOG is created on first use). */
static rocksdb_t *store_open_cfs(store_t *s, char **err)
{
    const char *names[STORE_SPACES] = {"default", "log"};
    const rocksdb_options_t *opts[STORE_SPACES] = {s->options, s->log_options};
    return rocksdb_open_column_families(s->options, s->dir, STORE_SPACES, names, opts, s->cf,
                                        err);
}

/* Opens the database with LZ4, falling back to no compression if this RocksDB build lacks it.
 * Returns NULL and a RocksDB error string (free with rocksdb_free) on failure. */
static rocksdb_t *store_open_db(store_t *s, char **err)
{
    store_configure(s, rocksdb_lz4_compression);
    rocksdb_t *db = store_open_cfs(s, err);
    if (db == NULL && *err != NULL && strstr(*err, "ompression") != NULL) {
        rocksdb_free(*err);
        *err = NULL;
        store_unconfigure(s);
        store_configure(s, rocksdb_no_compression);
        db = store_open_cfs(s, err);
    }
    return db;
}

/* RocksDB reports a held LOCK file as "While lock file: ..." (another process) or "lock hold by
 * current process" (this one). */
static bool store_err_is_lock(const char *err)
{
    return strstr(err, "lock file") != NULL || strstr(err, "lock hold") != NULL;
}

static void store_free(store_t *s)
{
    for (int i = 0; i < STORE_SPACES; i++)
        if (s->cf[i] != NULL)
            rocksdb_column_family_handle_destroy(s->cf[i]); /* before the close, as RocksDB asks */
    if (s->db)
        rocksdb_close(s->db);
    store_unconfigure(s);
    batch_free(s->current);
    batch_free(s->inflight);
    batch_free(s->spare);
    free(s->dir);
    free(s);
}

store_t *store_open(const char *dir, struct ev_loop *loop, char *err, size_t errlen)
{
    if (dir == NULL || dir[0] == '\0' || loop == NULL) {
        store_set_err(err, errlen, "store: no data directory or event loop given");
        return NULL;
    }
    /* Before RocksDB starts its threads: at most two malloc arenas (the loop's and one for the
     * storage and background threads), and a fixed mmap threshold, so that large buffers
     * (memtable blocks, snapshots, ring arrays) are mapped and unmapped rather than carved from
     * an arena whose freed space glibc keeps; broker/qq.c also trims after dropping bodies. */
    mallopt(M_ARENA_MAX, 2);
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    int mkrc = store_mkdir_p(dir);
    if (mkrc != 0) {
        store_set_err(err, errlen, "cannot create data directory %s: %s", dir, strerror(mkrc));
        return NULL;
    }

    store_t *s = store_xalloc(NULL, sizeof(*s));
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->dir = strdup(dir);
    if (s->dir == NULL) {
        free(s);
        store_set_err(err, errlen, "store: out of memory");
        return NULL;
    }

    char *dberr = NULL;
    s->db = store_open_db(s, &dberr);
    if (s->db == NULL) {
        const char *why = dberr != NULL ? dberr : "unknown error";
        if (store_err_is_lock(why))
            store_set_err(err, errlen, "data directory %s is in use by another process", dir);
        else
            store_set_err(err, errlen, "cannot open store in %s: %s", dir, why);
        rocksdb_free(dberr);
        store_free(s);
        return NULL;
    }

    s->current = batch_new();
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work_ready, NULL);
    pthread_cond_init(&s->work_done, NULL);
    int rc = store_thread_start(s);
    if (rc != 0) {
        store_set_err(err, errlen, "cannot start storage thread for %s: %s", dir, strerror(rc));
        pthread_cond_destroy(&s->work_done);
        pthread_cond_destroy(&s->work_ready);
        pthread_mutex_destroy(&s->lock);
        store_free(s);
        return NULL;
    }

    ev_prepare_init(&s->submit_watcher, store_on_prepare);
    s->submit_watcher.data = s;
    ev_set_priority(&s->submit_watcher, EV_MINPRI);
    ev_prepare_start(loop, &s->submit_watcher);
    ev_unref(loop); /* the store alone must not keep the loop alive */

    ev_timer_init(&s->defer_timer, store_on_defer_timer, STORE_DEFER_SECONDS, 0.0);
    s->defer_timer.data = s;
    ev_async_init(&s->done_watcher, store_on_done);
    s->done_watcher.data = s;
    ev_async_start(loop, &s->done_watcher);
    ev_unref(loop);

    log_info("store: opened %s", dir);
    return s;
}

struct compact_req {
    store_t *s;
    rocksdb_column_family_handle_t *cf;
    size_t blen, elen;
    char keys[]; /* begin, then end */
};

static void *store_compact_main(void *arg)
{
    struct compact_req *r = arg;
    rocksdb_compact_range_cf(r->s->db, r->cf, r->keys, r->blen, r->keys + r->blen, r->elen);
    pthread_mutex_lock(&r->s->lock);
    r->s->compact_busy = false;
    pthread_mutex_unlock(&r->s->lock);
    free(r);
    return NULL;
}

void store_compact_range_in(store_t *s, enum store_space sp, const void *begin, size_t blen, const void *end,
                            size_t elen)
{
    pthread_mutex_lock(&s->lock);
    bool busy = s->compact_busy;
    pthread_mutex_unlock(&s->lock);
    if (busy)
        return;
    if (s->compact_started) {
        pthread_join(s->compact_thread, NULL); /* finished: it cleared compact_busy */
        s->compact_started = false;
    }
    struct compact_req *r = store_xalloc(NULL, sizeof *r + blen + elen);
    r->s = s;
    r->cf = s->cf[sp];
    r->blen = blen;
    r->elen = elen;
    memcpy(r->keys, begin, blen);
    memcpy(r->keys + blen, end, elen);
    s->compact_busy = true; /* no compaction thread runs now: no lock needed */
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &saved);
    int rc = pthread_create(&s->compact_thread, NULL, store_compact_main, r);
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    if (rc != 0) {
        s->compact_busy = false;
        free(r);
        return;
    }
    s->compact_started = true;
}

void store_close(store_t *s)
{
    if (s == NULL)
        return;
    store_flush_sync(s);
    if (s->compact_started)
        pthread_join(s->compact_thread, NULL);

    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->work_ready);
    pthread_mutex_unlock(&s->lock);
    if (s->thread_started)
        pthread_join(s->thread, NULL);

    /* Watchers were unref'd at start; libev wants the reference back before stopping them. */
    ev_ref(s->loop);
    ev_prepare_stop(s->loop, &s->submit_watcher);
    ev_ref(s->loop);
    ev_async_stop(s->loop, &s->done_watcher);
    ev_timer_stop(s->loop, &s->defer_timer);

    pthread_cond_destroy(&s->work_done);
    pthread_cond_destroy(&s->work_ready);
    pthread_mutex_destroy(&s->lock);
    log_info("store: closed %s", s->dir);
    store_free(s);
}

/* ---- writes ------------------------------------------------------------------------------ */

void store_put_in(store_t *s, enum store_space sp, const void *key, size_t klen, const void *val,
                  size_t vlen)
{
    rocksdb_writebatch_put_cf(s->current->writes, s->cf[sp], store_bytes(key), klen,
                              store_bytes(val), vlen);
    s->current->ops++;
    s->current->bytes += klen + vlen;
}

void store_putv_in(store_t *s, enum store_space sp, const void *key, size_t klen, int nparts,
                   const void *const *parts, const size_t *lens)
{
    const char *k = store_bytes(key);
    size_t vlen = 0;
    for (int i = 0; i < nparts; i++)
        vlen += lens[i];
    rocksdb_writebatch_putv_cf(s->current->writes, s->cf[sp], 1, &k, &klen, nparts,
                               (const char *const *)parts, lens);
    s->current->ops++;
    s->current->bytes += klen + vlen;
}

void store_del_in(store_t *s, enum store_space sp, const void *key, size_t klen)
{
    rocksdb_writebatch_delete_cf(s->current->writes, s->cf[sp], store_bytes(key), klen);
    s->current->ops++;
    s->current->bytes += klen;
}

void store_del_range_in(store_t *s, enum store_space sp, const void *begin, size_t blen,
                        const void *end, size_t elen)
{
    rocksdb_writebatch_delete_range_cf(s->current->writes, s->cf[sp], store_bytes(begin), blen,
                                       store_bytes(end), elen);
    if (sp == STORE_LOG)
        s->current->log_trimmed = true;
    s->current->ops++;
    s->current->bytes += blen + elen;
}

void store_put(store_t *s, const void *key, size_t klen, const void *val, size_t vlen)
{
    store_put_in(s, STORE_MAIN, key, klen, val, vlen);
}

void store_del(store_t *s, const void *key, size_t klen)
{
    store_del_in(s, STORE_MAIN, key, klen);
}

void store_del_range(store_t *s, const void *begin, size_t blen, const void *end, size_t elen)
{
    store_del_range_in(s, STORE_MAIN, begin, blen, end, elen);
}

void store_set_sync(store_t *s, bool sync)
{
    /* Only before the first write: the storage thread reads sync_write while it writes. */
    if (s->submitted_seq != 0) {
        log_error("store: store_set_sync after writes began; ignored");
        return;
    }
    s->nosync = !sync;
    rocksdb_writeoptions_set_sync(s->sync_write, sync ? 1 : 0);
}

void store_on_synced(store_t *s, store_cb cb, void *arg)
{
    if (cb == NULL)
        return;
    batch_add_waiter(s->current, cb, arg);
}

void store_set_presubmit(store_t *s, store_cb fn, void *arg)
{
    s->presubmit = fn;
    s->presubmit_arg = arg;
}

void store_want_presubmit(store_t *s)
{
    s->presubmit_wanted = true;
}

void store_kick(store_t *s)
{
    if (s->inflight != NULL)
        return; /* the completion submits what came meanwhile */
    if (ev_is_active(&s->defer_timer))
        ev_timer_stop(s->loop, &s->defer_timer);
    store_run_presubmit(s);
    if (!batch_is_empty(s->current))
        store_submit(s);
}

void store_flush_sync(store_t *s)
{
    if (s->running_waiters) {
        /* Flushing here would run later waiters before the rest of this batch's waiters. */
        log_error("store: store_flush_sync called from a store callback; ignored");
        return;
    }
    store_run_presubmit(s);
    uint64_t target = s->submitted_seq + (batch_is_empty(s->current) ? 0 : 1);
    while (s->completed_seq < target) {
        if (s->inflight != NULL) {
            store_wait_inflight(s);
            store_collect(s);
        } else if (!batch_is_empty(s->current)) {
            store_submit(s);
        } else {
            break; /* cannot happen: batches complete in order */
        }
    }
}

/* ---- reads ------------------------------------------------------------------------------- */

int store_get(store_t *s, const void *key, size_t klen, void **val, size_t *vlen)
{
    return store_get_in(s, STORE_MAIN, key, klen, val, vlen);
}

int store_get_in(store_t *s, enum store_space sp, const void *key, size_t klen, void **val,
                 size_t *vlen)
{
    char *err = NULL;
    *val = NULL;
    *vlen = 0;
    rocksdb_pinnableslice_t *found = rocksdb_get_pinned_cf(s->db, s->read_committed, s->cf[sp],
                                                           store_bytes(key), klen, &err);
    if (err != NULL) {
        log_error("store: read from %s failed: %s", s->dir, err);
        rocksdb_free(err);
        return -1;
    }
    if (found == NULL)
        return 0;
    size_t len = 0;
    const char *bytes = rocksdb_pinnableslice_value(found, &len);
    /* One spare byte so that even an empty value is a non-NULL, NUL-terminated buffer. */
    char *copy = malloc(len + 1);
    if (copy == NULL) {
        rocksdb_pinnableslice_destroy(found);
        log_error("store: out of memory reading a %zu byte value", len);
        return -1;
    }
    if (len > 0)
        memcpy(copy, bytes, len);
    copy[len] = '\0';
    rocksdb_pinnableslice_destroy(found);
    *val = copy;
    *vlen = len;
    return 1;
}

struct store_iter {
    store_t *store;
    rocksdb_iterator_t *it;
    rocksdb_readoptions_t *options;
    bool started, finished, at_seek;
    size_t plen, upper_len;
    uint8_t *prefix; /* points into bytes[] */
    uint8_t *upper;  /* exclusive upper bound, points into bytes[]; NULL if none */
    uint8_t bytes[];
};

/* The smallest key greater than every key starting with prefix: drop trailing 0xff bytes and
 * increment the last one. Returns its length, 0 if there is none (prefix is empty or all 0xff).
 * Giving RocksDB the bound lets it stop at the prefix's end instead of wading through
 * tombstones of the next prefix. */
static size_t store_prefix_successor(const uint8_t *prefix, size_t plen, uint8_t *out)
{
    while (plen > 0 && prefix[plen - 1] == 0xff)
        plen--;
    if (plen == 0)
        return 0;
    memcpy(out, prefix, plen);
    out[plen - 1]++;
    return plen;
}

store_iter_t *store_iter_prefix(store_t *s, const void *prefix, size_t plen)
{
    return store_iter_prefix_in(s, STORE_MAIN, prefix, plen);
}

store_iter_t *store_iter_prefix_in(store_t *s, enum store_space sp, const void *prefix,
                                   size_t plen)
{
    store_iter_t *it = malloc(sizeof(*it) + 2 * plen);
    if (it == NULL) {
        log_error("store: out of memory creating an iterator");
        return NULL;
    }
    memset(it, 0, sizeof(*it));
    it->store = s;
    it->plen = plen;
    it->prefix = it->bytes;
    if (plen > 0)
        memcpy(it->prefix, prefix, plen);
    it->upper_len = store_prefix_successor(it->prefix, plen, it->bytes + plen);
    it->upper = it->upper_len > 0 ? it->bytes + plen : NULL;

    it->options = rocksdb_readoptions_create();
    if (it->upper != NULL)
        rocksdb_readoptions_set_iterate_upper_bound(it->options, (const char *)it->upper,
                                                    it->upper_len);
    it->it = rocksdb_create_iterator_cf(s->db, it->options, s->cf[sp]);
    return it;
}

void store_iter_seek(store_iter_t *it, const void *key, size_t klen)
{
    if (it == NULL)
        return;
    rocksdb_iter_seek(it->it, (const char *)key, klen);
    it->started = true;
    it->finished = false;
    it->at_seek = true;
}

bool store_iter_next(store_iter_t *it, const void **key, size_t *klen, const void **val, size_t *vlen)
{
    if (it == NULL || it->finished)
        return false;
    if (it->at_seek) {
        it->at_seek = false;
    } else if (!it->started) {
        rocksdb_iter_seek(it->it, (const char *)it->prefix, it->plen);
        it->started = true;
    } else {
        rocksdb_iter_next(it->it);
    }

    if (!rocksdb_iter_valid(it->it)) {
        char *err = NULL;
        rocksdb_iter_get_error(it->it, &err);
        if (err != NULL) {
            log_error("store: iteration over %s failed: %s", it->store->dir, err);
            rocksdb_free(err);
        }
        it->finished = true;
        return false;
    }
    size_t kl = 0, vl = 0;
    const char *k = rocksdb_iter_key(it->it, &kl);
    if (kl < it->plen || (it->plen > 0 && memcmp(k, it->prefix, it->plen) != 0)) {
        it->finished = true;
        return false;
    }
    const char *v = rocksdb_iter_value(it->it, &vl);
    *key = k;
    *klen = kl;
    *val = v;
    *vlen = vl;
    return true;
}

void store_iter_free(store_iter_t *it)
{
    if (it == NULL)
        return;
    rocksdb_iter_destroy(it->it);
    rocksdb_readoptions_destroy(it->options);
    free(it);
}

/* ---- stats ------------------------------------------------------------------------------- */

void store_get_stats(const store_t *s, store_stats_t *out)
{
    *out = s->stats;
    out->pending_ops = s->current->ops + (s->inflight != NULL ? s->inflight->ops : 0);
    out->log_trim_flushes = __atomic_load_n(&s->log_trim_flushes, __ATOMIC_RELAXED);
}
