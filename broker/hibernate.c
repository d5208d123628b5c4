/* hibernate.c - an idle node gives back the memory it no longer touches (prefix hib_).
 *
 * Why: most of a freshly started node's resident set is not its own data (about 3 MB of heap)
 * but pages of its shared libraries that only start-up touched: the dynamic linker walks
 * RocksDB's symbol tables and relocations (a C++ library with tens of thousands of symbols),
 * RocksDB's and OpenSSL's initialisers run once, and the kernel maps whole page-cache folios
 * around each of those faults. They stay mapped - and counted as the node's RSS - although an
 * idle node never runs that code again. RabbitMQ hibernates idle Erlang processes for the same
 * reason (their heaps are compacted and the memory returned).
 *
 * What it does: once start-up is over, and again after each burst of traffic once the node has
 * been idle for HIB_IDLE_SECONDS, it (1) returns free heap to the system (malloc_trim) and
 * (2) drops from its page tables the clean, read-only, file-backed pages of the program and its
 * shared libraries (madvise MADV_DONTNEED). Those pages stay in the kernel's page cache,
 * shared with every other process using the same files; the code that runs again faults its
 * pages back in (a minor fault, no disk read while cached). Nothing of the node's state is
 * touched:
 *
 * Invariants: only mappings that are read-only in this process, backed by a regular file named
 * like a shared object or being the executable itself, and holding no anonymous (copy-on-write)
 * pages are dropped - for a private file mapping with no anonymous page, MADV_DONTNEED only
 * removes page-table entries and the next access reads the same bytes from the file. RELRO
 * segments (written by the dynamic linker, then made read-only) hold anonymous pages and are
 * skipped; so are writable data, heap, stacks and RocksDB's own file mappings. Those library
 * mappings are never unmapped while the process runs (nothing is dlclose'd), so the addresses
 * read from /proc/self/smaps are still the same mappings when madvise runs.
 *
 * Data flow: hib_start arms one libev timer on the node's loop; each tick compares the broker's
 * traffic counters with the previous tick; hib_trim is also callable directly. */

#include "broker/hibernate.h"

#include "broker/broker.h"
#include "broker/log.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HIB_FIRST_SECONDS 1.0 /* after start-up: the listeners are open, recovery is done */
#define HIB_IDLE_SECONDS 30.0 /* no traffic for this long after some traffic: trim again */

struct hib {
    broker_t *b;
    ev_timer timer;
    uint64_t last_activity; /* the traffic counters' sum at the previous tick */
    uint64_t trimmed_at;    /* ... and when the last trim ran */
    bool first_done;
};

static struct hib *hib_state; /* one node per process */

/* Whether a mapping's path names the executable or a shared object ("libx.so", "libx.so.3"). */
static bool hib_code_file(const char *path, const char *exe)
{
    if (path[0] != '/') return false;
    if (strcmp(path, exe) == 0) return true;
    const char *base = strrchr(path, '/') + 1;
    const char *so = strstr(base, ".so");
    return so && (so[3] == '\0' || so[3] == '.');
}

struct hib_map {
    unsigned long start, end;
    bool candidate; /* read-only, file-backed code or constants; decided on "Anonymous:" */
};

/* One smaps header line: "start-end perms offset dev inode   path". */
static bool hib_parse_header(const char *line, struct hib_map *m, const char *exe)
{
    char perms[8];
    int path_at = 0;
    unsigned long start, end; /* "Anonymous: ..." begins with a hex digit: parse into locals */
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %n", &start, &end, perms, &path_at) < 3) return false;
    m->start = start, m->end = end;
    char path[4096];
    snprintf(path, sizeof path, "%s", path_at > 0 ? line + path_at : "");
    path[strcspn(path, "\n")] = '\0';
    m->candidate = perms[0] == 'r' && perms[1] != 'w' && perms[3] == 'p' && hib_code_file(path, exe);
    return true;
}

size_t hib_drop_code_pages(void)
{
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return 0;
    char line[4096 + 128];
    struct hib_map m = {0};
    size_t dropped = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long anon_kb;
        if (hib_parse_header(line, &m, exe)) continue;
        if (!m.candidate || sscanf(line, "Anonymous: %lu kB", &anon_kb) != 1) continue;
        m.candidate = false;
        if (anon_kb == 0 && madvise((void *)m.start, m.end - m.start, MADV_DONTNEED) == 0) dropped += m.end - m.start;
    }
    fclose(f);
    return dropped;
}

void hib_trim(void)
{
    malloc_trim(0);
    size_t dropped = hib_drop_code_pages();
    log_debug("hibernate: heap trimmed, %zu KB of library mappings dropped from the resident set", dropped / 1024);
}

static uint64_t hib_activity(const broker_t *b)
{
    return b->stat_publish + b->stat_deliver + b->stat_ack + b->stat_confirm + b->stat_unroutable;
}

static void hib_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop, (void)revents;
    struct hib *h = w->data;
    uint64_t now = hib_activity(h->b);
    bool quiet = now == h->last_activity, moved_since_trim = now != h->trimmed_at;
    if (!h->first_done || (quiet && moved_since_trim)) {
        hib_trim();
        h->first_done = true;
        h->trimmed_at = now;
    }
    h->last_activity = now;
}

void hib_start(broker_t *b)
{
    if (hib_state || getenv("WARREN_NO_HIBERNATE")) return;
    struct hib *h = calloc(1, sizeof *h);
    if (!h) return;
    h->b = b;
    h->last_activity = h->trimmed_at = hib_activity(b);
    ev_timer_init(&h->timer, hib_tick, HIB_FIRST_SECONDS, HIB_IDLE_SECONDS);
    h->timer.data = h;
    ev_timer_start(b->loop, &h->timer);
    ev_unref(b->loop); /* the timer alone does not keep the loop running */
    hib_state = h;
}

void hib_stop(void)
{
    struct hib *h = hib_state;
    if (!h) return;
    ev_ref(h->b->loop);
    ev_timer_stop(h->b->loop, &h->timer);
    free(h);
    hib_state = NULL;
}
