/* test_raft_sim.c - runs the deterministic Raft simulator over many seeds (plain main, no cmocka).
 *
 *   test_raft_sim [--seeds N] [--first S]   run seeds S..S+N-1
 *   test_raft_sim --seed S [--trace]        replay one seed (--trace prints every step)
 *   test_raft_sim --expect-bug [--seeds N]  run the library built with RAFT_BUG_COMMIT_OLD_TERM and
 *                                           succeed only if some seed catches the bug
 * Options:
 *   --suite auto|mixed|membership|basic     which features each seed runs with (sim.h): auto
 *                                           (default) alternates mixed and membership by seed bit 1;
 *                                           --expect-bug defaults to basic
 *   --features a,b,...                      exactly these (torn, asym, snapshot, membership,
 *                                           transfer, reads, hibernate, replay; "none" for
 *                                           none, "all" for all)
 *   --nodes N, --steps N                    initial voters (default 3 for even seeds, 5 for odd)
 *                                           and fault steps (default 4000)
 * Without arguments (ctest): a short --expect-bug run, then DEFAULT_SEEDS seeds of the auto
 * suite (half mixed faults, half membership changes with snapshots, on 3 and 5 nodes). The last
 * line is always "N passed, M failed". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/sim/sim.h"

#define DEFAULT_SEEDS 4000
#define DEFAULT_BUG_SEEDS 5000

struct cfg {
    enum sim_suite suite;
    int features; /* -1: from the suite */
    unsigned nodes, steps;
};

static unsigned features_for(const struct cfg *c, uint64_t seed) {
    return c->features >= 0 ? (unsigned)c->features : sim_suite_features(c->suite, seed);
}

static const char *suite_name(enum sim_suite s) {
    static const char *names[] = {"basic", "mixed", "membership", "auto"};
    return names[s];
}

static void report_failure(uint64_t seed, const struct cfg *c, const struct sim_result *r) {
    char f[128];
    printf("seed %llu FAILED (%u nodes, %s): %s\nlast steps:\n%s", (unsigned long long)seed, r->n_nodes,
           sim_features_name(r->features, f, sizeof f), r->why, r->trace);
    if (c->features >= 0)
        printf("replay: test_raft_sim --seed %llu --features %s --trace\n", (unsigned long long)seed,
               r->features ? f : "none");
    else
        printf("replay: test_raft_sim --seed %llu --suite %s --trace\n", (unsigned long long)seed,
               suite_name(c->suite));
}

struct totals {
    uint64_t passed, failed, commits, elections, crashes, acked, torn, snapshots, installs,
        compactions, confs, added, transfers, reads, hibernations, partitions, replays;
};

static void add(struct totals *t, const struct sim_result *r) {
    t->commits += r->committed;
    t->elections += r->elections;
    t->crashes += r->crashes;
    t->acked += r->acked_enq + r->acked_deq + r->acked_ack;
    t->torn += r->torn;
    t->snapshots += r->snapshots;
    t->installs += r->installs;
    t->compactions += r->compactions;
    t->confs += r->conf_changes;
    t->added += r->nodes_added;
    t->transfers += r->transfers;
    t->reads += r->reads;
    t->hibernations += r->hibernations;
    t->partitions += r->partitions;
    t->replays += r->replays;
}

static int run_seeds(uint64_t first, uint64_t n, const struct sim_impl *impl, const struct cfg *c) {
    struct totals t;
    memset(&t, 0, sizeof t);
    uint64_t by_suite[4] = {0}, with_feature[8] = {0};
    clock_t t0 = clock();
    for (uint64_t seed = first; seed < first + n; seed++) {
        struct sim_opts o = {.seed = seed, .impl = impl, .features = features_for(c, seed),
                             .n_nodes = c->nodes, .fault_steps = c->steps};
        struct sim_result r;
        if (sim_run(&o, &r)) {
            t.passed++;
        } else {
            t.failed++;
            if (t.failed <= 3) report_failure(seed, c, &r);
        }
        add(&t, &r);
        by_suite[(o.features & SIM_F_MEMBERSHIP) ? 2 : o.features ? 1 : 0]++;
        for (unsigned k = 0; k < 8; k++) with_feature[k] += (o.features >> k) & 1;
        if (n >= 10000 && (seed - first + 1) % (n / 10) == 0)
            fprintf(stderr, "  %llu/%llu seeds, %llu failed\n", (unsigned long long)(seed - first + 1),
                    (unsigned long long)n, (unsigned long long)t.failed);
    }
    printf("%s: seeds %llu..%llu (%s suite: %llu basic, %llu mixed-fault, %llu membership; with "
           "snapshots %llu, hibernation %llu, torn writes %llu)\n",
           impl->name, (unsigned long long)first, (unsigned long long)(first + n - 1),
           c->features >= 0 ? "fixed" : suite_name(c->suite), (unsigned long long)by_suite[0],
           (unsigned long long)by_suite[1], (unsigned long long)by_suite[2],
           (unsigned long long)with_feature[2], (unsigned long long)with_feature[6],
           (unsigned long long)with_feature[0]);
    printf("  %llu committed entries, %llu acked client ops, %llu reads checked, %llu leaders, "
           "%llu transfers, %llu crashes (%llu torn records cut), %llu partitions, %llu replays\n",
           (unsigned long long)t.commits, (unsigned long long)t.acked, (unsigned long long)t.reads,
           (unsigned long long)t.elections, (unsigned long long)t.transfers, (unsigned long long)t.crashes,
           (unsigned long long)t.torn, (unsigned long long)t.partitions, (unsigned long long)t.replays);
    printf("  %llu snapshots, %llu installs, %llu compactions, %llu conf changes committed, "
           "%llu new nodes, %llu hibernations; %.1fs\n",
           (unsigned long long)t.snapshots, (unsigned long long)t.installs,
           (unsigned long long)t.compactions, (unsigned long long)t.confs, (unsigned long long)t.added,
           (unsigned long long)t.hibernations, (double)(clock() - t0) / CLOCKS_PER_SEC);
    printf("%llu passed, %llu failed\n", (unsigned long long)t.passed, (unsigned long long)t.failed);
    return t.failed ? 1 : 0;
}

/* The planted bug must be caught: returns 0 when some seed fails. */
static int expect_bug(uint64_t first, uint64_t n, const struct cfg *c) {
    for (uint64_t seed = first; seed < first + n; seed++) {
        struct sim_opts o = {.seed = seed, .impl = &sim_impl_buggy, .features = features_for(c, seed),
                             .n_nodes = c->nodes, .fault_steps = c->steps};
        struct sim_result r;
        if (!sim_run(&o, &r)) {
            printf("planted bug caught by seed %llu (%u nodes) after %llu seeds: %s\n",
                   (unsigned long long)seed, r.n_nodes, (unsigned long long)(seed - first + 1), r.why);
            return 0;
        }
    }
    printf("planted bug NOT caught in %llu seeds\n", (unsigned long long)n);
    return 1;
}

static int parse_features(const char *s) {
    static const char *names[] = {"torn", "asym", "snapshot", "membership", "transfer", "reads",
                                  "hibernate", "replay"};
    int f = 0;
    if (!strcmp(s, "none") || !strcmp(s, "basic")) return 0;
    if (!strcmp(s, "all")) return SIM_F_ALL;
    while (*s) {
        size_t n = strcspn(s, ",");
        unsigned k;
        for (k = 0; k < 8; k++)
            if (strlen(names[k]) == n && !strncmp(s, names[k], n)) break;
        if (k == 8) return -1;
        f |= 1 << k;
        s += n + (s[n] == ',');
    }
    return f;
}

int main(int argc, char **argv) {
    uint64_t seeds = DEFAULT_SEEDS, first = 1, one = 0;
    int have_one = 0, trace = 0, bug = 0, explicit_seeds = 0, explicit_suite = 0;
    struct cfg c = {SIM_SUITE_AUTO, -1, 0, 0};
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seeds") && i + 1 < argc) {
            seeds = strtoull(argv[++i], NULL, 10);
            explicit_seeds = 1;
        } else if (!strcmp(argv[i], "--first") && i + 1 < argc) {
            first = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--seed") && i + 1 < argc) {
            one = strtoull(argv[++i], NULL, 10);
            have_one = 1;
        } else if (!strcmp(argv[i], "--trace")) {
            trace = 1;
        } else if (!strcmp(argv[i], "--expect-bug")) {
            bug = 1;
        } else if (!strcmp(argv[i], "--suite") && i + 1 < argc) {
            const char *v = argv[++i];
            explicit_suite = 1;
            if (!strcmp(v, "basic")) c.suite = SIM_SUITE_BASIC;
            else if (!strcmp(v, "mixed")) c.suite = SIM_SUITE_MIXED;
            else if (!strcmp(v, "membership")) c.suite = SIM_SUITE_MEMBERSHIP;
            else if (!strcmp(v, "auto")) c.suite = SIM_SUITE_AUTO;
            else explicit_suite = -1;
        } else if (!strcmp(argv[i], "--features") && i + 1 < argc) {
            c.features = parse_features(argv[++i]);
            if (c.features < 0) explicit_suite = -1;
        } else if (!strcmp(argv[i], "--nodes") && i + 1 < argc) {
            c.nodes = (unsigned)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--steps") && i + 1 < argc) {
            c.steps = (unsigned)strtoul(argv[++i], NULL, 10);
        } else {
            explicit_suite = -1;
        }
        if (explicit_suite < 0) {
            fprintf(stderr, "usage: %s [--seeds N] [--first S] [--seed S [--trace]] [--expect-bug]\n"
                            "          [--suite auto|mixed|membership|basic] [--features a,b,..|none]\n"
                            "          [--nodes N] [--steps N]\n", argv[0]);
            return 2;
        }
    }
    if (bug && !explicit_suite) c.suite = SIM_SUITE_BASIC;
    if (have_one) {
        struct sim_opts o = {.seed = one, .impl = bug ? &sim_impl_buggy : &sim_impl_real, .trace_all = trace,
                             .features = features_for(&c, one), .n_nodes = c.nodes, .fault_steps = c.steps};
        struct sim_result r;
        char f[128];
        if (!sim_run(&o, &r)) {
            report_failure(one, &c, &r);
            printf("0 passed, 1 failed\n");
            return 1;
        }
        printf("seed %llu (%u nodes, %s): %llu steps, %llu committed, %llu leaders, max term %llu, "
               "%llu crashes, %llu torn, %llu partitions, %llu acked enqueues, %llu acked dequeues, "
               "%llu acked acks, %llu reads, %llu transfers, %llu snapshots, %llu installs, "
               "%llu compactions, %llu conf changes, %llu new nodes, %llu hibernations, %llu replays\n",
               (unsigned long long)one, r.n_nodes, sim_features_name(r.features, f, sizeof f),
               (unsigned long long)r.steps, (unsigned long long)r.committed,
               (unsigned long long)r.elections, (unsigned long long)r.max_term,
               (unsigned long long)r.crashes, (unsigned long long)r.torn,
               (unsigned long long)r.partitions, (unsigned long long)r.acked_enq,
               (unsigned long long)r.acked_deq, (unsigned long long)r.acked_ack, (unsigned long long)r.reads,
               (unsigned long long)r.transfers, (unsigned long long)r.snapshots,
               (unsigned long long)r.installs, (unsigned long long)r.compactions,
               (unsigned long long)r.conf_changes, (unsigned long long)r.nodes_added,
               (unsigned long long)r.hibernations, (unsigned long long)r.replays);
        printf("1 passed, 0 failed\n");
        return 0;
    }
    if (bug) return expect_bug(first, explicit_seeds ? seeds : DEFAULT_BUG_SEEDS, &c);
    /* ctest mode also proves the checker bites; the summary line stays last */
    if (!explicit_seeds) {
        struct cfg basic = {SIM_SUITE_BASIC, -1, 0, 0};
        if (expect_bug(1, DEFAULT_BUG_SEEDS, &basic) != 0) {
            printf("0 passed, 1 failed\n");
            return 1;
        }
    }
    return run_seeds(first, seeds, &sim_impl_real, &c);
}
