/* raft_bench.c - benchmark of the multi-Raft host (broker/multiraft.c) on real RocksDB storage.
 *
 * Three nodes run in this process on one libev loop, connected by the loopback transport
 * (messages deep-copied, delivered on the next loop iteration), each with its own store_t in a
 * temporary directory on disk. Phases (each prints its figures as "metric value unit" lines):
 *
 *   nosync  1 group, RocksDB writes without fsync: committed entries/s, p99 commit latency;
 *   sync    1 group with fsync: the same, plus fsyncs per committed entry and entries per
 *           leader fsync (the batch size group commit achieved);
 *   raw     the disk's baseline: 1 KB records appended to a file in batches of the size the
 *           sync phase achieved, fdatasync per batch: records/s (also with three files written
 *           at once, as three nodes on one disk do);
 *   groups  1,000 groups with fsync, proposals spread round-robin: entries/s, fsyncs/entry;
 *   idle    1,000 groups after a snapshot, hibernating: heap bytes per group (malloc in use
 *           before and after closing the groups, divided by the group instances), the host's
 *           own accounting (mr_group_memory), RSS growth per group, and the CPU the whole
 *           process uses (getrusage) over an idle period, as % of one core.
 *
 * Load is a closed loop: an ev_prepare watcher (before the host's, so its proposals join this
 * iteration's batch) tops the number of outstanding proposals up to the window; latency is
 * from mr_propose to the done callback on the leader (committed and applied there).
 *
 * Every wait is bounded in time, and alarm() ends the process if the whole run overruns.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#include "broker/log.h"
#include "broker/multiraft.h"
#include "broker/store.h"

#define NODES 3
#define ELECTION_DEADLINE_SEC 60.0
#define DRAIN_DEADLINE_SEC 20.0

struct opts {
    double duration, warmup, idle_seconds;
    unsigned groups, size, window, idle_entries;
    unsigned snapshot_every; /* load phases: snapshot_threshold (0: never) */
    const char *tmpdir;
    const char *phase; /* all, nosync, sync, raw, groups, idle */
};

/* ---- small helpers ----------------------------------------------------------------------- */

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void rm_rf(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double thread_cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return 0;
    char line[256];
    long kb = 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static void metric(const char *name, double value, const char *unit)
{
    printf("%s %.6g %s\n", name, value, unit);
    fflush(stdout);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- the cluster ------------------------------------------------------------------------- */

/* A node's state machines only count what they apply (all groups share the counter). */
struct node {
    raft_id id;
    char dir[512];
    store_t *store;
    mr_host_t *host;
    uint64_t applied;
};

struct cluster {
    struct ev_loop *loop;
    mr_loopback_t *lb;
    char base[400];
    struct node nodes[NODES + 1]; /* 1-based */
    unsigned n_groups;
    bool sync;
    ev_timer pacer; /* bounds EVRUN_ONCE while waiting */
};

static void sm_apply(mr_group_t *g, raft_index index, const struct raft_entry *e)
{
    (void)index;
    (void)e;
    struct node *nd = mr_group_user(g);
    nd->applied++;
}

/* The state is a counter: the snapshot is 8 bytes. */
static int sm_snapshot_take(mr_group_t *g, raft_index index, void **bytes, size_t *len)
{
    (void)g;
    *bytes = malloc(sizeof(uint64_t));
    if (*bytes == NULL)
        return -1;
    memcpy(*bytes, &index, sizeof index);
    *len = sizeof(uint64_t);
    return 0;
}

static void sm_snapshot_install(mr_group_t *g, raft_index index, const void *bytes, size_t len)
{
    (void)g;
    (void)index;
    (void)bytes;
    (void)len;
}

static const struct mr_sm_ops sm_ops = {
    .apply = sm_apply,
    .snapshot_take = sm_snapshot_take,
    .snapshot_install = sm_snapshot_install,
};

static void pacer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
}

static uint64_t gid_of(unsigned i) { return 1 + (uint64_t)i; }

static int cluster_start(struct cluster *c, const struct opts *o, unsigned n_groups, bool sync,
                         unsigned snapshot_threshold)
{
    memset(c, 0, sizeof *c);
    snprintf(c->base, sizeof c->base, "%s/warren-raft-bench-XXXXXX", o->tmpdir);
    if (mkdtemp(c->base) == NULL) {
        fprintf(stderr, "raft_bench: mkdtemp in %s: %s\n", o->tmpdir, strerror(errno));
        return -1;
    }
    c->loop = ev_loop_new(EVFLAG_AUTO);
    c->lb = mr_loopback_new(c->loop);
    c->n_groups = n_groups;
    c->sync = sync;
    ev_timer_init(&c->pacer, pacer_cb, 0.002, 0.002);
    raft_id members[NODES];
    for (unsigned i = 0; i < NODES; i++)
        members[i] = i + 1;
    for (raft_id id = 1; id <= NODES; id++) {
        struct node *nd = &c->nodes[id];
        char err[256] = "";
        nd->id = id;
        snprintf(nd->dir, sizeof nd->dir, "%s/node%u", c->base, id);
        nd->store = store_open(nd->dir, c->loop, err, sizeof err);
        if (nd->store == NULL) {
            fprintf(stderr, "raft_bench: %s\n", err);
            return -1;
        }
        store_set_sync(nd->store, sync);
        struct mr_host_config cfg = {
            .node_id = id,
            .tick_seconds = 0.1, /* the host default: heartbeats every 0.2 s */
            .election_ticks = 10,
            .heartbeat_ticks = 2,
            .snapshot_threshold = snapshot_threshold,
        };
        struct mr_transport t = mr_loopback_transport(c->lb, id);
        nd->host = mr_host_new(c->loop, nd->store, &cfg, &t);
        if (nd->host == NULL)
            return -1;
        mr_loopback_attach(c->lb, id, nd->host);
        for (unsigned i = 0; i < n_groups; i++) {
            int rc = 0;
            if (mr_group_open(nd->host, gid_of(i), members, NODES, &sm_ops, nd, &rc) == NULL) {
                fprintf(stderr, "raft_bench: mr_group_open: %s\n", mr_status_name(rc));
                return -1;
            }
        }
    }
    return 0;
}

static void cluster_stop(struct cluster *c)
{
    for (raft_id id = 1; id <= NODES; id++) {
        struct node *nd = &c->nodes[id];
        if (nd->host != NULL) {
            mr_loopback_detach(c->lb, id);
            mr_host_free(nd->host);
        }
        store_close(nd->store);
        nd->host = NULL;
        nd->store = NULL;
    }
    mr_loopback_free(c->lb);
    ev_timer_stop(c->loop, &c->pacer);
    ev_loop_destroy(c->loop);
    if (getenv("RAFT_BENCH_KEEP") == NULL)
        rm_rf(c->base);
}

/* The node leading group i, if it is the only one and the others follow it; else 0. */
static raft_id leader_of(struct cluster *c, unsigned i)
{
    raft_id leader = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        mr_group_t *g = mr_host_group(c->nodes[id].host, gid_of(i));
        if (mr_group_role(g) == RAFT_LEADER) {
            if (leader != 0)
                return 0;
            leader = id;
        }
    }
    for (raft_id id = 1; leader != 0 && id <= NODES; id++)
        if (mr_group_leader(mr_host_group(c->nodes[id].host, gid_of(i))) != leader)
            return 0;
    return leader;
}

/* Runs the loop until cond(c) or the deadline; returns whether cond holds. */
static bool run_until(struct cluster *c, bool (*cond)(struct cluster *), double secs)
{
    double deadline = now_sec() + secs;
    ev_timer_start(c->loop, &c->pacer);
    bool ok;
    double next_check = 0;
    for (;;) {
        double t = now_sec();
        if (t >= next_check) { /* cond may be O(groups): not on every iteration */
            if ((ok = cond(c)))
                break;
            next_check = t + 0.01;
        }
        if (t > deadline) {
            ok = false;
            break;
        }
        ev_run(c->loop, EVRUN_ONCE);
    }
    ev_timer_stop(c->loop, &c->pacer);
    return ok;
}

static bool all_elected(struct cluster *c)
{
    for (unsigned i = 0; i < c->n_groups; i++)
        if (leader_of(c, i) == 0)
            return false;
    return true;
}

static bool all_hibernating(struct cluster *c)
{
    for (raft_id id = 1; id <= NODES; id++) {
        struct mr_host_stats st;
        mr_host_get_stats(c->nodes[id].host, &st);
        if (st.active_groups != 0)
            return false;
    }
    return true;
}

/* ---- closed-loop load -------------------------------------------------------------------- */

struct load {
    struct cluster *c;
    unsigned window, size;
    unsigned outstanding;
    bool proposing, measuring;
    uint64_t committed, failed;
    uint64_t *lat_ns;
    size_t n_lat, cap_lat;
    unsigned next_group;
    mr_group_t **leader_group; /* per group: the leader's handle */
    uint8_t *pool; /* PAYLOAD_POOL pseudo-random bytes; payloads are slices of it */
    uint64_t rng;
    ev_prepare prepare;
};

static struct load L; /* the done callback's arg carries the start time, so L is global */

static uint64_t xorshift(void)
{
    L.rng ^= L.rng << 13;
    L.rng ^= L.rng >> 7;
    L.rng ^= L.rng << 17;
    return L.rng;
}

/* Pseudo-random bytes, nothing for a compressor to find: each payload is a slice of a pool of
 * random bytes at a random offset (two payloads share bytes only by a rare overlap). Generating
 * 1 KB afresh per entry was a tenth of the event loop's time: load generation, not the host. */
#define PAYLOAD_POOL (16u << 20)

static const uint8_t *next_payload(void)
{
    return L.pool + (xorshift() % (PAYLOAD_POOL - L.size)) / 8 * 8;
}

static void lat_record(uint64_t ns)
{
    if (L.n_lat == L.cap_lat) {
        size_t cap = L.cap_lat ? L.cap_lat * 2 : 1 << 16;
        uint64_t *p = realloc(L.lat_ns, cap * sizeof *p);
        if (p == NULL)
            return;
        L.lat_ns = p;
        L.cap_lat = cap;
    }
    L.lat_ns[L.n_lat++] = ns;
}

static void on_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g;
    (void)index;
    L.outstanding--;
    if (!L.measuring)
        return;
    if (status != MR_OK) {
        L.failed++;
        return;
    }
    L.committed++;
    lat_record(now_ns() - (uint64_t)(uintptr_t)arg);
}

static mr_group_t *leader_handle(unsigned i)
{
    mr_group_t *g = L.leader_group[i];
    if (g != NULL && mr_group_role(g) == RAFT_LEADER)
        return g;
    raft_id leader = leader_of(L.c, i);
    g = leader ? mr_host_group(L.c->nodes[leader].host, gid_of(i)) : NULL;
    L.leader_group[i] = g;
    return g;
}

/* Tops the outstanding proposals up to the window, spreading them over the groups. */
static void load_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    unsigned misses = 0;
    while (L.proposing && L.outstanding < L.window && misses < L.c->n_groups) {
        unsigned i = L.next_group;
        L.next_group = (L.next_group + 1) % L.c->n_groups;
        mr_group_t *g = leader_handle(i);
        if (g == NULL || mr_propose(g, next_payload(), L.size, on_done,
                                    (void *)(uintptr_t)now_ns()) != MR_OK) {
            misses++;
            continue;
        }
        L.outstanding++;
    }
}

struct load_result {
    double committed_per_s, p50_ms, p99_ms;
    double loop_us_per_entry;      /* event-loop thread CPU per committed entry */
    double process_cores;          /* process CPU (all threads) / wall time */
    double fsyncs_per_entry;        /* all nodes */
    double leader_entries_per_fsync; /* group commit batch size on the busiest leader */
    uint64_t committed, failed;
};

static void sum_syncs(struct cluster *c, uint64_t syncs[NODES + 1], uint64_t entries[NODES + 1])
{
    for (raft_id id = 1; id <= NODES; id++) {
        store_stats_t st;
        store_get_stats(c->nodes[id].store, &st);
        struct mr_host_stats hs;
        mr_host_get_stats(c->nodes[id].host, &hs);
        syncs[id] = st.syncs;
        entries[id] = hs.entries_written;
    }
}

static bool load_drained(struct cluster *c)
{
    (void)c;
    return L.outstanding == 0;
}

static int run_load(struct cluster *c, const struct opts *o, unsigned window,
                    struct load_result *res)
{
    memset(&L, 0, sizeof L);
    memset(res, 0, sizeof *res);
    L.c = c;
    L.window = window;
    L.size = o->size;
    if (o->size > PAYLOAD_POOL / 2) {
        fprintf(stderr, "raft_bench: --size must be at most %u\n", PAYLOAD_POOL / 2);
        return -1;
    }
    L.pool = malloc(PAYLOAD_POOL);
    L.leader_group = calloc(c->n_groups, sizeof *L.leader_group);
    if (L.pool == NULL || L.leader_group == NULL)
        return -1;
    L.rng = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < PAYLOAD_POOL; i += 8) {
        uint64_t x = xorshift();
        memcpy(L.pool + i, &x, 8);
    }
    ev_prepare_init(&L.prepare, load_on_prepare);
    ev_set_priority(&L.prepare, EV_MAXPRI);
    ev_prepare_start(c->loop, &L.prepare);

    L.proposing = true;
    double t0 = now_sec();
    while (now_sec() - t0 < o->warmup)
        ev_run(c->loop, EVRUN_ONCE);

    uint64_t syncs0[NODES + 1], entries0[NODES + 1], syncs1[NODES + 1], entries1[NODES + 1];
    sum_syncs(c, syncs0, entries0);
    L.measuring = true;
    t0 = now_sec();
    double elapsed = 0, loop_cpu0 = thread_cpu_seconds(), cpu0 = cpu_seconds();
    while ((elapsed = now_sec() - t0) < o->duration)
        ev_run(c->loop, EVRUN_ONCE);
    L.measuring = false;
    double loop_cpu = thread_cpu_seconds() - loop_cpu0, cpu = cpu_seconds() - cpu0;
    uint64_t committed = L.committed;
    sum_syncs(c, syncs1, entries1);

    if (getenv("RAFT_BENCH_DEBUG") != NULL) {
        for (raft_id id = 1; id <= NODES; id++) {
            store_stats_t st;
            store_get_stats(c->nodes[id].store, &st);
            struct mr_host_stats hs;
            mr_host_get_stats(c->nodes[id].host, &hs);
            fprintf(stderr, "node %u: batches %llu writes %llu syncs %llu | seals %llu sends %llu msgs %llu entries %llu persisted_steps %llu ticks %llu\n",
                    id, (unsigned long long)st.batches, (unsigned long long)st.writes,
                    (unsigned long long)st.syncs, (unsigned long long)hs.seals,
                    (unsigned long long)hs.sends, (unsigned long long)hs.msgs_sent,
                    (unsigned long long)hs.entries_written, (unsigned long long)hs.persisted_steps,
                    (unsigned long long)hs.group_ticks);
        }
    }
    L.proposing = false;
    if (!run_until(c, load_drained, DRAIN_DEADLINE_SEC))
        fprintf(stderr, "raft_bench: %u proposals still outstanding after the run\n",
                L.outstanding);
    ev_prepare_stop(c->loop, &L.prepare);

    uint64_t syncs = 0;
    double best_batch = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        uint64_t s = syncs1[id] - syncs0[id], e = entries1[id] - entries0[id];
        syncs += s;
        if (s > 0 && (double)e / (double)s > best_batch)
            best_batch = (double)e / (double)s;
    }
    res->committed = committed;
    res->failed = L.failed;
    res->committed_per_s = (double)committed / elapsed;
    res->loop_us_per_entry = committed ? loop_cpu * 1e6 / (double)committed : 0;
    res->process_cores = cpu / elapsed;
    res->fsyncs_per_entry = committed ? (double)syncs / (double)committed : 0;
    res->leader_entries_per_fsync = best_batch;
    if (L.n_lat > 0) {
        qsort(L.lat_ns, L.n_lat, sizeof *L.lat_ns, cmp_u64);
        res->p50_ms = (double)L.lat_ns[L.n_lat / 2] / 1e6;
        res->p99_ms = (double)L.lat_ns[(size_t)((double)L.n_lat * 0.99)] / 1e6;
    }
    free(L.lat_ns);
    free(L.pool);
    free(L.leader_group);
    memset(&L, 0, sizeof L);
    return 0;
}

static int elect(struct cluster *c)
{
    if (!run_until(c, all_elected, ELECTION_DEADLINE_SEC)) {
        fprintf(stderr, "raft_bench: not every group elected a leader in %.0f s\n",
                ELECTION_DEADLINE_SEC);
        return -1;
    }
    return 0;
}

/* A load phase: start the cluster, elect, run the closed loop, print, stop. */
static int phase_load(const struct opts *o, const char *name, unsigned groups, bool sync,
                      struct load_result *res)
{
    struct cluster c;
    int rc = cluster_start(&c, o, groups, sync, o->snapshot_every);
    if (rc == 0)
        rc = elect(&c);
    if (rc == 0)
        rc = run_load(&c, o, o->window, res);
    cluster_stop(&c);
    if (rc != 0)
        return rc;
    char key[128];
    snprintf(key, sizeof key, "%s.committed_per_s", name);
    metric(key, res->committed_per_s, "entries/s");
    snprintf(key, sizeof key, "%s.p50_commit_ms", name);
    metric(key, res->p50_ms, "ms");
    snprintf(key, sizeof key, "%s.p99_commit_ms", name);
    metric(key, res->p99_ms, "ms");
    snprintf(key, sizeof key, "%s.loop_cpu_per_entry", name);
    metric(key, res->loop_us_per_entry, "us");
    snprintf(key, sizeof key, "%s.process_cpu", name);
    metric(key, res->process_cores, "cores");
    snprintf(key, sizeof key, "%s.cpu_per_entry", name);
    metric(key, res->committed_per_s > 0 ? res->process_cores * 1e6 / res->committed_per_s : 0,
           "us (all threads)");
    if (sync) {
        snprintf(key, sizeof key, "%s.fsyncs_per_entry", name);
        metric(key, res->fsyncs_per_entry, "fsyncs/entry");
        snprintf(key, sizeof key, "%s.leader_entries_per_fsync", name);
        metric(key, res->leader_entries_per_fsync, "entries/fsync");
    }
    if (res->failed > 0) {
        snprintf(key, sizeof key, "%s.failed", name);
        metric(key, (double)res->failed, "proposals");
    }
    return 0;
}

/* ---- the disk's baseline ----------------------------------------------------------------- */

/* One writer of the baseline: appends batches of `batch` records of `size` bytes to its own
 * file, one write and one fdatasync per batch, until `until` (monotonic seconds). */
struct raw_writer {
    const struct opts *o;
    unsigned batch;
    double until;
    uint64_t records;
    int err;
    pthread_t thread;
};

static void *raw_write_main(void *arg)
{
    struct raw_writer *w = arg;
    char path[600];
    snprintf(path, sizeof path, "%s/warren-raft-bench-raw-XXXXXX", w->o->tmpdir);
    int fd = mkstemp(path);
    size_t len = (size_t)w->batch * w->o->size;
    char *buf = malloc(len);
    if (fd < 0 || buf == NULL) {
        w->err = errno ? errno : ENOMEM;
    } else {
        for (size_t i = 0; i < len; i++)
            buf[i] = (char)(i * 131 + 7);
        while (now_sec() < w->until) {
            if (write(fd, buf, len) != (ssize_t)len || fdatasync(fd) != 0) {
                w->err = errno;
                break;
            }
            w->records += w->batch;
        }
    }
    if (fd >= 0) {
        close(fd);
        unlink(path);
    }
    free(buf);
    return NULL;
}

/* Runs n writers at once for the phase duration; returns records/s over all, or -1. */
static double raw_rate(const struct opts *o, unsigned batch, unsigned n)
{
    struct raw_writer w[NODES];
    double t0 = now_sec();
    for (unsigned i = 0; i < n; i++) {
        w[i] = (struct raw_writer){.o = o, .batch = batch, .until = t0 + o->duration};
        if (pthread_create(&w[i].thread, NULL, raw_write_main, &w[i]) != 0)
            return -1;
    }
    uint64_t records = 0;
    int err = 0;
    for (unsigned i = 0; i < n; i++) {
        pthread_join(w[i].thread, NULL);
        records += w[i].records;
        if (w[i].err)
            err = w[i].err;
    }
    if (err) {
        fprintf(stderr, "raft_bench: raw write: %s\n", strerror(err));
        return -1;
    }
    return (double)records / (now_sec() - t0);
}

/* The disk's baseline: one file (as the brief compares against), and one file per node
 * written concurrently (what three nodes on one disk compete for). */
static int phase_raw(const struct opts *o, unsigned batch)
{
    if (batch == 0)
        batch = 1;
    double one = raw_rate(o, batch, 1);
    double three = one >= 0 ? raw_rate(o, batch, NODES) : -1;
    if (one < 0 || three < 0)
        return -1;
    metric("raw_fsync.batch", batch, "records/fdatasync");
    metric("raw_fsync.records_per_s", one, "records/s");
    metric("raw_fsync_3files.records_per_s", three, "records/s (sum of 3 writers)");
    return 0;
}

/* ---- idle groups ------------------------------------------------------------------------- */

static size_t heap_in_use(void)
{
    malloc_trim(0);
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks + mi.hblkhd;
}

static bool idle_done(struct cluster *c)
{
    (void)c;
    return L.outstanding == 0;
}

static void idle_on_done(mr_group_t *g, void *arg, int status, raft_index index)
{
    (void)g;
    (void)arg;
    (void)index;
    L.outstanding--;
    if (status != MR_OK)
        L.failed++;
}

static void stop_loop(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ONE);
}

static int phase_idle(const struct opts *o)
{
    struct cluster c;
    /* Created empty first, so that the heap and RSS baselines include the hosts and stores. */
    if (cluster_start(&c, o, 0, true, o->idle_entries) != 0)
        return -1;
    store_flush_sync(c.nodes[1].store);
    size_t heap0 = heap_in_use();
    long rss0 = rss_kb();
    raft_id members[NODES] = {1, 2, 3};
    c.n_groups = o->groups;
    for (raft_id id = 1; id <= NODES; id++)
        for (unsigned i = 0; i < o->groups; i++)
            if (mr_group_open(c.nodes[id].host, gid_of(i), members, NODES, &sm_ops,
                              &c.nodes[id], NULL) == NULL)
                return -1;
    if (elect(&c) != 0)
        return -1;
    /* Warm-up: enough entries per group for one snapshot (and compaction) each. */
    memset(&L, 0, sizeof L);
    char payload[64] = "idle warm-up";
    for (unsigned k = 0; k < o->idle_entries; k++) {
        for (unsigned i = 0; i < o->groups; i++) {
            raft_id leader = leader_of(&c, i);
            mr_group_t *g = leader ? mr_host_group(c.nodes[leader].host, gid_of(i)) : NULL;
            if (g != NULL && mr_propose(g, payload, sizeof payload, idle_on_done, NULL) == MR_OK)
                L.outstanding++;
        }
        if (!run_until(&c, idle_done, DRAIN_DEADLINE_SEC))
            fprintf(stderr, "raft_bench: idle warm-up did not complete\n");
    }
    if (!run_until(&c, all_hibernating, ELECTION_DEADLINE_SEC))
        fprintf(stderr, "raft_bench: not every group hibernated\n");

    uint64_t snapshots = 0, ticks0 = 0, ticks1 = 0, fires0 = 0, fires1 = 0;
    size_t accounted = 0;
    for (raft_id id = 1; id <= NODES; id++) {
        struct mr_host_stats st;
        mr_host_get_stats(c.nodes[id].host, &st);
        snapshots += st.snapshots_taken;
        ticks0 += st.group_ticks;
        fires0 += st.timer_fires;
        for (unsigned i = 0; i < o->groups; i++)
            accounted += mr_group_memory(mr_host_group(c.nodes[id].host, gid_of(i)));
    }

    /* CPU while idle: the loop runs freely (no pacer) for idle_seconds. */
    ev_timer stop;
    ev_timer_init(&stop, stop_loop, o->idle_seconds, 0);
    ev_timer_start(c.loop, &stop);
    double cpu0 = cpu_seconds(), t0 = now_sec();
    ev_run(c.loop, 0);
    double cpu = cpu_seconds() - cpu0, wall = now_sec() - t0;
    ev_timer_stop(c.loop, &stop);
    for (raft_id id = 1; id <= NODES; id++) {
        struct mr_host_stats st;
        mr_host_get_stats(c.nodes[id].host, &st);
        ticks1 += st.group_ticks;
        fires1 += st.timer_fires;
    }

    size_t heap1 = heap_in_use();
    long rss1 = rss_kb();
    for (raft_id id = 1; id <= NODES; id++)
        for (unsigned i = 0; i < o->groups; i++)
            mr_group_close(mr_host_group(c.nodes[id].host, gid_of(i)));
    size_t heap2 = heap_in_use();
    double instances = (double)o->groups * NODES;
    metric("idle.groups", o->groups, "groups x 3 nodes");
    metric("idle.snapshots_taken", (double)snapshots, "snapshots");
    metric("idle.heap_per_group", (double)(heap1 - heap2) / instances, "bytes");
    metric("idle.accounted_per_group", (double)accounted / instances, "bytes");
    metric("idle.heap_growth_per_group", ((double)heap1 - (double)heap0) / instances, "bytes");
    metric("idle.rss_growth_per_group", (double)(rss1 - rss0) * 1024.0 / instances, "bytes");
    metric("idle.cpu_percent", 100.0 * cpu / wall, "% of one core");
    metric("idle.group_ticks", (double)(ticks1 - ticks0), "ticks");
    metric("idle.timer_fires", (double)(fires1 - fires0), "fires");
    cluster_stop(&c);
    return 0;
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr,
            "usage: raft_bench [--phase all|nosync|sync|raw|groups|idle] [--duration S]\n"
            "                  [--warmup S] [--groups N] [--size BYTES] [--window N]\n"
            "                  [--idle-seconds S] [--idle-entries N] [--raw-batch N]\n"
            "                  [--snapshot-every N] [--dir TMPDIR] [--quick]\n");
}

static bool phase_on(const struct opts *o, const char *name)
{
    return strcmp(o->phase, "all") == 0 || strcmp(o->phase, name) == 0;
}

int main(int argc, char **argv)
{
    struct opts o = {
        .duration = 5,
        .warmup = 1,
        .idle_seconds = 5,
        .groups = 1000,
        .size = 1024,
        .window = 4096,
        .idle_entries = 4,
        .snapshot_every = 1024,
        .tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
        .phase = "all",
    };
    unsigned raw_batch = 0;
    static const struct option longopts[] = {
        {"phase", required_argument, NULL, 'p'},   {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, 'w'},  {"groups", required_argument, NULL, 'g'},
        {"size", required_argument, NULL, 's'},    {"window", required_argument, NULL, 'W'},
        {"idle-seconds", required_argument, NULL, 'i'},
        {"idle-entries", required_argument, NULL, 'e'},
        {"raw-batch", required_argument, NULL, 'b'}, {"dir", required_argument, NULL, 'D'},
        {"snapshot-every", required_argument, NULL, 'S'},
        {"quick", no_argument, NULL, 'q'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'p': o.phase = optarg; break;
        case 'd': o.duration = atof(optarg); break;
        case 'w': o.warmup = atof(optarg); break;
        case 'g': o.groups = (unsigned)atoi(optarg); break;
        case 's': o.size = (unsigned)atoi(optarg); break;
        case 'W': o.window = (unsigned)atoi(optarg); break;
        case 'i': o.idle_seconds = atof(optarg); break;
        case 'e': o.idle_entries = (unsigned)atoi(optarg); break;
        case 'b': raw_batch = (unsigned)atoi(optarg); break;
        case 'D': o.tmpdir = optarg; break;
        case 'S': o.snapshot_every = (unsigned)atoi(optarg); break;
        case 'q': o.duration = 2, o.warmup = 0.5, o.idle_seconds = 2; break;
        default: usage(); return 2;
        }
    }
    if (o.duration <= 0 || o.groups == 0 || o.size == 0 || o.window == 0 || o.idle_entries == 0) {
        usage();
        return 2;
    }
    log_set_level(LOG_WARN);
    /* Hard limit: every phase is bounded, this catches anything that is not. */
    alarm((unsigned)(5 * (o.duration + o.warmup) + 2 * o.idle_seconds + 600));

    printf("# raft_bench: 3 nodes in one process, loopback transport, RocksDB in %s, "
           "%u-byte entries, %u outstanding, snapshot every %u entries, %.0f s measured "
           "after %.0f s warm-up, idle %.0f s\n",
           o.tmpdir, o.size, o.window, o.snapshot_every, o.duration, o.warmup, o.idle_seconds);
    struct load_result nosync = {0}, sync = {0}, groups = {0};
    int rc = 0;
    if (rc == 0 && phase_on(&o, "nosync"))
        rc = phase_load(&o, "one_group.nosync", 1, false, &nosync);
    if (rc == 0 && phase_on(&o, "sync"))
        rc = phase_load(&o, "one_group.sync", 1, true, &sync);
    if (rc == 0 && phase_on(&o, "raw")) {
        unsigned batch = raw_batch ? raw_batch : (unsigned)(sync.leader_entries_per_fsync + 0.5);
        rc = phase_raw(&o, batch ? batch : 64);
    }
    if (rc == 0 && phase_on(&o, "groups")) {
        char name[64];
        snprintf(name, sizeof name, "groups_%u.sync", o.groups);
        rc = phase_load(&o, name, o.groups, true, &groups);
    }
    if (rc == 0 && phase_on(&o, "idle"))
        rc = phase_idle(&o);
    return rc == 0 ? 0 : 1;
}
