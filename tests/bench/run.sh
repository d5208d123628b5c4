#!/usr/bin/env bash
# run.sh: Warren versus RabbitMQ 3.10, same machine, same client, same scenarios, one run.
#
# Usage: tests/bench/run.sh [--rabbitmq-only] [--quick] [--raft-only|--no-raft]   (`make bench`)
#
# It builds nothing: `make bench` builds build/warren-server, build/warren_bench and
# build/pipeline_bench first.
# It starts Warren (build/warren-server --config <tmp>/warren.conf, private port and data
# dir, no TLS listener) and a private RabbitMQ node (tests/bench/rabbitmq.sh), runs every
# scenario against both - alternating which broker goes first - and writes the figures to
# docs/performance.md. Scenarios (see tests/bench/README.md for the reasoning):
#   (a) 1 producer / 1 consumer, 16 B transient, auto-ack, no confirms, BENCH_DURATION s;
#   (b) 1 KB persistent, confirm window 100, manual ack, prefetch 100, durable queue;
#   (c) backlog: BENCH_BACKLOG x 1 KB persistent published with confirms into a durable
#       queue, then drained with manual acks; peak RSS of the broker sampled every 100 ms;
#   (d) idle RSS 2 s after start, and time from launch to the first successful AMQP login
#       (polled every 5 ms);
#   (e) retry pipeline (issue 3): BENCH_RETRY_COUNT unique ids, 256 B transient, published
#       with confirms to queue "work" (dead-letters to exchange "retry"); queue "retry.q"
#       (x-message-ttl BENCH_RETRY_TTL ms) dead-letters back to "work"; 2 consumers reject
#       each id until x-death says it was rejected BENCH_RETRY_K times, then ack it;
#       completed ids/s from the first publish to the last final ack;
#   (f) priority queue (issue 3): x-max-priority 10, BENCH_PRIORITY_COUNT unique ids with
#       random priorities 0..9, 256 B transient, confirm window 100, 1 consumer with
#       prefetch 50 and manual ack; msg/s and latency per priority class.
#   (e) and (f) run tests/bench/pipeline_bench, which checks every id completed exactly
#   once and the queues ended empty; a failed check is shown in the report.
#   (raft) the multi-Raft host (issue 4), no broker involved: tests/bench/raft_bench runs 3
#       nodes in one process on RocksDB (1 group with and without fsync, the raw fdatasync
#       rate, 1,000 groups, 1,000 idle groups); its figures replace the "Multi-Raft host"
#       section of docs/performance.md, which the other parts keep when they rewrite the file.
# (a), (b), (d), (e), (f) are the median of BENCH_RUNS runs; (c) runs once per broker.
#
# --rabbitmq-only   validation mode: "ours" is a second RabbitMQ node, and the report goes
#                   to the work directory unless BENCH_OUT is set (docs/ keeps real figures).
# --quick           a smoke run: BENCH_DURATION=3, BENCH_RUNS=1, BENCH_BACKLOG=20000,
#                   BENCH_RETRY_COUNT=20000, BENCH_PRIORITY_COUNT=50000 (raft_bench --quick).
# --raft-only       only the raft part (no brokers, no client library needed).
# --no-raft         everything but the raft part.
# Environment: BENCH_DURATION (10), BENCH_RUNS (3), BENCH_BACKLOG (1000000),
#   BENCH_BACKLOG_WINDOW (100), BENCH_BACKLOG_TIMEOUT (300 s per phase),
#   BENCH_RETRY_COUNT (100000), BENCH_RETRY_K (2), BENCH_RETRY_TTL (50 ms),
#   BENCH_PRIORITY_COUNT (300000), BENCH_PIPELINE_TIMEOUT (120 s per (e)/(f) run),
#   WARREN_BIN (build/warren-server), BENCH_BIN (build/warren_bench),
#   PIPELINE_BIN (build/pipeline_bench),
#   BENCH_WARREN_CMD (start "ours" with this shell command instead; it must stay in the
#   foreground and listen on $BENCH_PORT, with $BENCH_DIR as scratch space),
#   BENCH_WARREN_CONF_EXTRA (lines appended to warren.conf), BENCH_OUT (report path),
#   BENCH_WARREN_VERSION (how the report names the Warren build; default: the repo's commit),
#   BENCH_SKIP_DEPS=1 (do not run scripts/deps.sh bench), BENCH_KEEP=1 (keep the work dir),
#   BENCH_MAX_SECONDS (1800: hard limit for the whole script),
#   RAFT_BIN (build/raft_bench), BENCH_RAFT_TIMEOUT (900 s), BENCH_RAFT_ARGS (extra
#   raft_bench arguments, e.g. "--dir /some/disk").
set -Eeuo pipefail
trap 'echo "[bench] error: \"$BASH_COMMAND\" failed (line $LINENO)" >&2' ERR

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"

mode=warren
raft=run
raft_quick=""
for arg in "$@"; do
  case "$arg" in
    --rabbitmq-only) mode=rabbitmq-only ;;
    --raft-only) raft=only ;;
    --no-raft) raft=skip ;;
    --quick) BENCH_DURATION=${BENCH_DURATION:-3} BENCH_RUNS=${BENCH_RUNS:-1}
             BENCH_BACKLOG=${BENCH_BACKLOG:-20000} BENCH_RETRY_COUNT=${BENCH_RETRY_COUNT:-20000}
             BENCH_PRIORITY_COUNT=${BENCH_PRIORITY_COUNT:-50000} raft_quick=--quick ;;
    -h|--help) sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
[ -n "${BENCH_WARREN_CMD:-}" ] && [ $mode = warren ] && mode=command

DURATION=${BENCH_DURATION:-10}
RUNS=${BENCH_RUNS:-3}
BACKLOG=${BENCH_BACKLOG:-1000000}
BACKLOG_WINDOW=${BENCH_BACKLOG_WINDOW:-100}
BACKLOG_TIMEOUT=${BENCH_BACKLOG_TIMEOUT:-300}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}
RETRY_COUNT=${BENCH_RETRY_COUNT:-100000}
RETRY_K=${BENCH_RETRY_K:-2}
RETRY_TTL=${BENCH_RETRY_TTL:-50}
PRIORITY_COUNT=${BENCH_PRIORITY_COUNT:-300000}
PIPELINE_TIMEOUT=${BENCH_PIPELINE_TIMEOUT:-120}
WARREN_BIN=${WARREN_BIN:-$REPO/build/warren-server}
BENCH_BIN=${BENCH_BIN:-$REPO/build/warren_bench}
PIPELINE_BIN=${PIPELINE_BIN:-$REPO/build/pipeline_bench}
RABBITMQ_SH=$REPO/tests/bench/rabbitmq.sh
IDLE_SETTLE_S=2

for v in DURATION RUNS BACKLOG BACKLOG_WINDOW BACKLOG_TIMEOUT MAX_SECONDS RETRY_COUNT \
         RETRY_K RETRY_TTL PRIORITY_COUNT PIPELINE_TIMEOUT; do
  case "${!v}" in ''|*[!0-9]*|0) echo "run.sh: BENCH_$v must be a positive integer" >&2; exit 2;; esac
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$REPO/tests/bench/lib.sh"

# ------------------------------------------------------------------------------------------
# The raft part: tests/bench/raft_bench, written into the "Multi-Raft host" section.

RAFT_BIN=${RAFT_BIN:-$REPO/build/raft_bench}
RAFT_TIMEOUT=${BENCH_RAFT_TIMEOUT:-900}
RAFT_HEADING="## Multi-Raft host"

# raft_section get FILE > SECTION | raft_section put FILE SECTION_FILE: reads or replaces
# (appends when absent) the section from RAFT_HEADING to the next "## " heading.
raft_section() {
  RAFT_HEADING=$RAFT_HEADING python3 - "$@" <<'PY'
import os, sys
op, path = sys.argv[1], sys.argv[2]
head = os.environ["RAFT_HEADING"]
lines = open(path).read().split("\n") if os.path.exists(path) else []
start = next((i for i, l in enumerate(lines) if l.startswith(head)), None)
end = None
if start is not None:
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
if op == "get":
    if start is not None:
        sys.stdout.write("\n".join(lines[start:end]).rstrip("\n") + "\n")
    sys.exit(0)
section = open(sys.argv[3]).read().rstrip("\n").split("\n")
if not section or section == [""]:
    sys.exit(0)
if start is None:
    while lines and lines[-1] == "":
        lines.pop()
    lines += [""] + section + [""]
else:
    lines[start:end] = section + [""]
with open(path, "w") as f:
    f.write("\n".join(lines).rstrip("\n") + "\n")
PY
}

raft_part() {   # raft_part OUT: runs raft_bench, writes its section into OUT
  local out=$1 txt section rc=0
  if [ ! -x "$RAFT_BIN" ]; then
    log "(raft) $RAFT_BIN not found: run 'make build'; raft part skipped"
    return 1
  fi
  txt=$(mktemp "${TMPDIR:-/tmp}/warren-raft-bench.XXXXXX")
  section=$txt.md
  log "(raft) multi-Raft host: 3 in-process nodes on RocksDB, 1 and 1,000 groups, 1 KB entries"
  # shellcheck disable=SC2086  # BENCH_RAFT_ARGS is a list of arguments
  timeout "$RAFT_TIMEOUT" "$RAFT_BIN" $raft_quick ${BENCH_RAFT_ARGS:-} >"$txt" || rc=$?
  [ $rc -eq 0 ] || log "(raft) raft_bench failed (exit $rc); the section shows what it printed"
  sed 's/^/[raft] /' "$txt" >&2
  RAFT_VERSION=${BENCH_WARREN_VERSION:-"git $(git -C "$REPO" log -1 --format='%h, %cd' --date=short 2>/dev/null || echo unknown)"} \
  RAFT_RC=$rc RAFT_HEADING=$RAFT_HEADING python3 - "$txt" "$section" <<'PY'
import os, platform, sys, time
txt, out = sys.argv[1], sys.argv[2]
m, header = {}, ""
for line in open(txt):
    if line.startswith("#"):
        header = line[1:].strip()
        continue
    parts = line.split(None, 2)
    if len(parts) >= 2:
        try:
            m[parts[0]] = float(parts[1])
        except ValueError:
            pass
groups = int(m.get("idle.groups", 1000))
gname = next((k.split(".")[0] for k in m if k.startswith("groups_")), f"groups_{groups}")


def g(key):
    return m.get(key)


def num(v, unit=""):
    if v is None:
        return "n/a"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 100 else f"{v:,.0f} ms"
    if unit == "B":
        return f"{v:,.0f} B"
    if unit == "%":
        return f"{v:.3f} %"
    if unit == "x":
        return f"{v:.4f}"
    if unit == "us":
        return f"{v:.2f} µs"
    if unit == "cores":
        return f"{v:.2f}"
    return f"{v:,.0f}"


def met(ok):
    return "" if ok is None else ("yes" if ok else "NO")


rows = []


def row(metric, value, target="", ok=None):
    rows.append((metric, value, target, met(ok)))


ns, sy, raw = g("one_group.nosync.committed_per_s"), g("one_group.sync.committed_per_s"), g("raw_fsync.records_per_s")
row("1 group, no fsync: committed entries/s", num(ns), ">= 200,000", None if ns is None else ns >= 200000)
row("1 group, no fsync: commit latency p50 / p99",
    f"{num(g('one_group.nosync.p50_commit_ms'), 'ms')} / {num(g('one_group.nosync.p99_commit_ms'), 'ms')}")
row("1 group, fsync: committed entries/s", num(sy),
    "within 2x of the raw rate", None if sy is None or raw is None else sy * 2 >= raw)
row(f"raw: {num(g('raw_fsync.batch'))} x 1 KB appended per fdatasync, one file (records/s)", num(raw))
row("raw: the same, three files at once (records/s, sum)", num(g("raw_fsync_3files.records_per_s")))
row("1 group, fsync: fsyncs per committed entry (3 nodes)", num(g("one_group.sync.fsyncs_per_entry"), "x"))
row("1 group, fsync: entries per fsync (busiest node)", num(g("one_group.sync.leader_entries_per_fsync")))
row("1 group, fsync: commit latency p50 / p99",
    f"{num(g('one_group.sync.p50_commit_ms'), 'ms')} / {num(g('one_group.sync.p99_commit_ms'), 'ms')}")
row(f"{groups:,} groups, fsync: committed entries/s", num(g(f"{gname}.sync.committed_per_s")))
row(f"{groups:,} groups, fsync: fsyncs per committed entry (3 nodes)", num(g(f"{gname}.sync.fsyncs_per_entry"), "x"))
row(f"{groups:,} groups, fsync: commit latency p50 / p99",
    f"{num(g(f'{gname}.sync.p50_commit_ms'), 'ms')} / {num(g(f'{gname}.sync.p99_commit_ms'), 'ms')}")
heap = g("idle.heap_per_group")
row("idle group: heap bytes (malloc in use, freed by closing it)", num(heap, "B"), "<= 4 KB",
    None if heap is None else heap <= 4096)
row("idle group: bytes by the host's own accounting", num(g("idle.accounted_per_group"), "B"))
row("idle group: RSS growth per group (includes RocksDB)", num(g("idle.rss_growth_per_group"), "B"))
cpu = g("idle.cpu_percent")
row(f"{groups:,} idle groups: CPU (whole process, % of one core)", num(cpu, "%"), "< 1 %",
    None if cpu is None else cpu < 1)
row(f"{groups:,} idle groups: group ticks / timer wake-ups while idle",
    f"{num(g('idle.group_ticks'))} / {num(g('idle.timer_fires'))}", "0", None if g("idle.group_ticks") is None else g("idle.group_ticks") == 0)
row("event-loop CPU per committed entry: 1 group no fsync / fsync / many groups",
    f"{num(g('one_group.nosync.loop_cpu_per_entry'), 'us')} / {num(g('one_group.sync.loop_cpu_per_entry'), 'us')} / "
    f"{num(g(f'{gname}.sync.loop_cpu_per_entry'), 'us')}")
row("CPU per committed entry, all threads: 1 group no fsync / fsync / many groups",
    f"{num(g('one_group.nosync.cpu_per_entry'), 'us')} / {num(g('one_group.sync.cpu_per_entry'), 'us')} / "
    f"{num(g(f'{gname}.sync.cpu_per_entry'), 'us')}")
row("process CPU during load (cores): 1 group no fsync / fsync / many groups",
    f"{num(g('one_group.nosync.process_cpu'), 'cores')} / {num(g('one_group.sync.process_cpu'), 'cores')} / "
    f"{num(g(f'{gname}.sync.process_cpu'), 'cores')}")

cpu_model, ncpu = "unknown", os.cpu_count()
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
try:
    load = open("/proc/loadavg").read().split()[0]
except OSError:
    load = "?"
md = [os.environ["RAFT_HEADING"] + " (issue 4, `tests/bench/raft_bench`)", ""]
md.append("Written by `tests/bench/run.sh` (its raft part; `--raft-only` runs just this); do not "
          "edit the figures by hand.")
md.append("")
md.append(f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}; machine: {ncpu} CPUs ({cpu_model}), "
          f"Linux {platform.release()}, load average {load} at the end")
md.append(f"- Build: {os.environ['RAFT_VERSION']}")
md.append(f"- Run: {header}")
if os.environ.get("RAFT_RC", "0") != "0":
    md.append(f"- **raft_bench failed (exit {os.environ['RAFT_RC']})**: figures missing below are n/a")
md.append("")
md.append("| Metric | Value | Target | Met |")
md.append("|---|---|---|---|")
for r in rows:
    md.append("| " + " | ".join(r) + " |")
md.append("")
md.append("""### Method

Three nodes run in one process on one libev loop; the loopback transport deep-copies each
coalesced batch of messages and delivers it on the next loop iteration. Each node has its own
RocksDB store (`broker/store.c`, group commit on a writer thread) in a temporary directory on
the same disk; Raft logs live in its log column family, one record per group per loop
iteration (`broker/raftlog.h`). Entries are 1 KB of pseudo-random bytes; load is a closed loop
keeping a fixed number of proposals outstanding (`--window`), spread round-robin over the
groups; latency is from `mr_propose` to its done callback on the leader (committed and applied
there). Groups snapshot every 1,024 applied entries and compact their logs, as a queue with a
small state would (every 8,192 measured no better). "No fsync" writes the same RocksDB batches
without syncing the WAL (`store_set_sync`); RocksDB still syncs each closed WAL before flushing
a memtable (it does so with more than one column family), so the log reaches the disk anyway,
as it would under sustained load. The raw baseline
appends batches of the size the fsync run achieved (entries per fsync on the busiest node) to
a plain file with one `write` + `fdatasync` per batch; the three-file variant is what three
nodes sharing one disk compete for. Idle: 1,000 groups on each node elect, apply a few entries,
take a snapshot and hibernate; heap per group is malloc'd bytes in use before minus after
closing every group, divided by the 3,000 group instances; CPU is `getrusage` of the whole
process over an idle period. All nodes share the machine's CPUs with each other (and with
anything else running), so absolute rates vary with the load average shown above.

Reading the figures: every committed entry is written by three RocksDB instances in this one
process (WAL append and its software CRC32C, which this RocksDB build computes without SSE4.2,
memtable insert, and for entries not yet compacted when a memtable fills, flush and
compaction), so the run is CPU-bound once "process CPU" nears the machine's core count; the
rate is then about cores / "CPU per committed entry". The event loop (Raft, the host, the
loopback copies) is the smaller share; the rest is RocksDB on the three writer threads and its
flush/compaction threads. With fsync, the three nodes also share one disk: each committed
entry is written three times (about 3.3 KB with table files), so the rate is held to roughly
a third of the three-file raw rate (the disk's aggregate), while the target compares it with
one writer's rate; the fsync run is disk-bound rather than CPU-bound (its process CPU stays
well below the core count). Both raw rates vary by tens of percent from run to run on this shared virtual disk.
With many groups each group's log stays below its snapshot threshold, so nothing is compacted
before flushes, and the per-group work (ticks of active groups, heartbeats, one message per
group per round) adds to the event loop's share.
""")
with open(out, "w") as f:
    f.write("\n".join(md))
PY
  raft_section put "$out" "$section"
  log "(raft) section \"$RAFT_HEADING\" written to $out"
  rm -f "$txt" "$section"
  return $rc
}

if [ $raft = only ]; then
  raft_part "${BENCH_OUT:-$REPO/docs/performance.md}"
  exit $?
fi

if [ "${BENCH_SKIP_DEPS:-0}" != 1 ]; then
  scripts/deps.sh bench
fi
[ -x "$BENCH_BIN" ] || die "$BENCH_BIN not found: run 'make build' (needs librabbitmq-dev)"
[ -x "$PIPELINE_BIN" ] || die "$PIPELINE_BIN not found: run 'make build' (needs librabbitmq-dev)"
if [ $mode = warren ]; then
  [ -x "$WARREN_BIN" ] || die "$WARREN_BIN not found: run 'make build'"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warren-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK/logs"
: >"$RESULTS"

# ------------------------------------------------------------------------------------------
# Cleanup: both brokers, samplers and the watchdog go, whatever way the script ends.

SAMPLER_PID=""
WATCHDOG_PID=""
CLIENT_PID=""
declare -A SIDE_KIND SIDE_PORT SIDE_DIST_PORT SIDE_DIR SIDE_PID SIDE_LABEL

stop_side() {
  local side=$1 pid=${SIDE_PID[$1]:-}
  case "${SIDE_KIND[$side]}" in
    rabbitmq)
      RABBITMQ_DIST_PORT=${SIDE_DIST_PORT[$side]} \
        "$RABBITMQ_SH" stop "${SIDE_DIR[$side]}" "${SIDE_PORT[$side]}" >/dev/null 2>&1 || true ;;
    *)
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      fi ;;
  esac
  SIDE_PID[$side]=""
}

# Each broker is measured alone: while a client runs against one side, the other side's
# broker process is paused (SIGSTOP) and resumed (SIGCONT) right after. Both brokers stay up
# for the whole run, but neither pays for the other's background work after its own turn -
# RabbitMQ's schedulers spin and collect garbage for seconds after a load, which showed up
# in the tail latency of whichever broker ran next. BENCH_PAUSE_OTHER=0 keeps both running.
PAUSED_PIDS=()
pause_others() {
  local side=$1 other pid
  [ "${BENCH_PAUSE_OTHER:-1}" = 1 ] || return 0
  for other in "${!SIDE_PID[@]}"; do
    pid=${SIDE_PID[$other]}
    [ "$other" != "$side" ] && [ -n "$pid" ] || continue
    kill -STOP "$pid" 2>/dev/null && PAUSED_PIDS+=("$pid")
  done
  return 0
}
resume_others() {
  local pid
  for pid in "${PAUSED_PIDS[@]}"; do kill -CONT "$pid" 2>/dev/null || true; done
  PAUSED_PIDS=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  resume_others
  [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null || true
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  for side in "${!SIDE_KIND[@]}"; do stop_side "$side"; done
  [ -n "$WATCHDOG_PID" ] && kill "$WATCHDOG_PID" 2>/dev/null || true
  if [ $rc -ne 0 ] || [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# The whole script is bounded: past MAX_SECONDS the watchdog interrupts it, and the trap
# above still stops both brokers.
# (Long client runs are waited for in the background, so the trap runs at once; other
# steps are short and have their own time limits.)
start_watchdog "$MAX_SECONDS" bench

# ------------------------------------------------------------------------------------------
# Brokers


rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

define_side() {   # define_side SIDE KIND LABEL
  SIDE_KIND[$1]=$2
  SIDE_LABEL[$1]=$3
  pick_port; SIDE_PORT[$1]=$PICKED_PORT
  pick_port; SIDE_DIST_PORT[$1]=$PICKED_PORT   # Erlang distribution, RabbitMQ sides only
  SIDE_DIR[$1]=$WORK/$1
  SIDE_PID[$1]=""
  mkdir -p "${SIDE_DIR[$1]}"
}

write_warren_conf() {
  local dir=$1 port=$2
  mkdir -p "$dir/data"
  {
    echo "# written by tests/bench/run.sh"
    echo "listeners.tcp.default = 127.0.0.1:$port"
    echo "listeners.ssl = none"
    echo "data_dir = $dir/data"
    if [ -n "${BENCH_WARREN_CONF_EXTRA:-}" ]; then printf '%s\n' "$BENCH_WARREN_CONF_EXTRA"; fi
  } >"$dir/warren.conf"
}

# Starts a side; sets READY_MS to the milliseconds from launch to the first AMQP login that
# succeeded, and SIDE_PID to the process whose RSS counts (warren-server / beam.smp).
# Must not run in a subshell: it sets globals and may exit the script.
READY_MS=null
start_side() {
  local side=$1 dir=${SIDE_DIR[$1]} port=${SIDE_PORT[$1]} t0 ready launcher="" pid=""
  case "${SIDE_KIND[$side]}" in
    warren)
      write_warren_conf "$dir" "$port"
      t0=$(date +%s%N)
      setsid "$WARREN_BIN" --config "$dir/warren.conf" >>"$dir/broker.log" 2>&1 </dev/null &
      pid=$! ;;
    command)
      t0=$(date +%s%N)
      BENCH_PORT=$port BENCH_DIR=$dir setsid bash -c "exec $BENCH_WARREN_CMD" \
        >>"$dir/broker.log" 2>&1 </dev/null &
      pid=$! ;;
    rabbitmq)
      t0=$(date +%s%N)
      RABBITMQ_DIST_PORT=${SIDE_DIST_PORT[$side]} "$RABBITMQ_SH" start "$dir" "$port" \
        >"$dir/start.out" 2>&1 &
      launcher=$! ;;
  esac
  # For a directly started broker, --pid stops the wait as soon as the process dies.
  if ! ready=$("$BENCH_BIN" --port "$port" --wait-ready 90 --since-ns "$t0" \
                 ${pid:+--pid "$pid"} 2>>"$dir/broker.log"); then
    [ -n "$launcher" ] && wait "$launcher" 2>/dev/null || true
    for f in "$dir/broker.log" "$dir/start.out"; do
      if [ -s "$f" ]; then echo "--- $f" >&2; tail -n 20 "$f" >&2; fi
    done
    die "${SIDE_LABEL[$side]} did not accept AMQP on port $port"
  fi
  if [ -n "$launcher" ]; then
    wait "$launcher" || { cat "$dir/start.out" >&2; die "rabbitmq.sh start failed"; }
    pid=$(tail -n 1 "$dir/start.out")
  fi
  kill -0 "$pid" 2>/dev/null || die "${SIDE_LABEL[$side]} exited right after start"
  SIDE_PID[$side]=$pid
  READY_MS=$(sed -n 's/^{"ready_ms":\([0-9.]*\)}$/\1/p' <<<"$ready")
  [ -n "$READY_MS" ] || READY_MS=null
}

# ------------------------------------------------------------------------------------------
# Measurements. Every result is one JSON object per line in $RESULTS, tagged with the side.

record() {   # record SIDE JSON-OBJECT-WITHOUT-BRACES
  echo "{\"side\":\"$1\",$2}" >>"$RESULTS"
}

# Runs warren_bench (or, with CLIENT_BIN=..., pipeline_bench) against a side; keeps its
# JSON line (with side and run number), or an error record when it failed, so one bad run
# does not abort the whole benchmark. Exit 4 (count not reached in time) and 5 (a
# pipeline_bench verification failed) still come with figures and are kept as such.
bench() {   # bench SIDE RUN SCENARIO TIMEOUT ARGS...
  local side=$1 run=$2 scenario=$3 limit=$4; shift 4
  local out=$WORK/logs/$side-$scenario-$run.log rc=0 json bin=${CLIENT_BIN:-$BENCH_BIN}
  # In the background plus `wait`, so that a signal to this script is handled at once
  # (bash delays traps until a foreground command returns) and cleanup can stop the client.
  pause_others "$side"
  timeout --kill-after=10 "$limit" "$bin" --port "${SIDE_PORT[$side]}" \
    --scenario "$scenario" "$@" >"$out" 2>&1 &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  resume_others
  json=$(grep '^{' "$out" | tail -n 1 || true)
  json=${json#\{}
  json=${json%\}}
  if [ -n "$json" ] && { [ $rc -eq 0 ] || [ $rc -eq 4 ] || [ $rc -eq 5 ]; }; then
    record "$side" "\"run\":$run,\"exit\":$rc,$json"
    [ $rc -ne 4 ] || log "  ${SIDE_LABEL[$side]}: $scenario incomplete (see $out)"
    [ $rc -ne 5 ] || log "  ${SIDE_LABEL[$side]}: $scenario VERIFICATION FAILED (see $out)"
  else
    record "$side" "\"run\":$run,\"scenario\":\"$scenario\",\"error\":$rc"
    log "  ${SIDE_LABEL[$side]}: $scenario failed with status $rc:"
    tail -n 5 "$out" >&2
  fi
  grep -E '^  (published|consumed|completed|verify|latency +(p50|e2e|all|high|low))' "$out" |
    sed "s/^/    [${SIDE_LABEL[$side]}] /" >&2 || true
}

start_sampler() {   # samples VmRSS of PID every 100 ms, keeps the maximum in FILE
  local pid=$1 file=$2
  echo 0 >"$file"
  (
    max=0
    while kill -0 "$pid" 2>/dev/null; do
      rss=0
      while read -r key value _; do
        [ "$key" = VmRSS: ] && { rss=$value; break; }
      done 2>/dev/null <"/proc/$pid/status" || true
      if [ "${rss:-0}" -gt "$max" ]; then max=$rss; echo "$max" >"$file"; fi
      sleep 0.1
    done
  ) &
  SAMPLER_PID=$!
}

stop_sampler() {
  [ -n "$SAMPLER_PID" ] && { kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; }
  SAMPLER_PID=""
}

# Which side goes first alternates from run to run, so warm caches and background noise do
# not always favour the same broker.
order_for_run() { if [ $(($1 % 2)) -eq 1 ]; then echo "ours rabbitmq"; else echo "rabbitmq ours"; fi; }

scenario_start() {   # (d)
  local run side rss
  for run in $(seq "$RUNS"); do
    for side in $(order_for_run "$run"); do
      start_side "$side"
      sleep "$IDLE_SETTLE_S"
      rss=$(rss_kb "${SIDE_PID[$side]}")
      record "$side" "\"run\":$run,\"scenario\":\"d\",\"ready_ms\":$READY_MS,\"idle_rss_kb\":${rss:-0}"
      log "  ${SIDE_LABEL[$side]}: ready after $READY_MS ms, idle RSS $((${rss:-0} / 1024)) MB"
      stop_side "$side"
    done
  done
}

scenario_throughput() {   # (a) and (b)
  local id=$1 run side; shift
  for run in $(seq "$RUNS"); do
    for side in $(order_for_run "$run"); do
      bench "$side" "$run" "$id" $((DURATION + 150)) --duration "$DURATION" "$@"
    done
  done
}

scenario_pipeline() {   # (e) and (f): pipeline_bench --scenario retry|priority
  local id=$1 run side; shift
  for run in $(seq "$RUNS"); do
    for side in $(order_for_run "$run"); do
      CLIENT_BIN=$PIPELINE_BIN bench "$side" "$run" "$id" $((PIPELINE_TIMEOUT + 150)) \
        --label "$id" --duration "$PIPELINE_TIMEOUT" "$@"
    done
  done
}

scenario_backlog() {   # (c)
  local side peak_pub peak stored
  local common=(--size 1024 --durable --queue bench-backlog --duration "$BACKLOG_TIMEOUT")
  for side in ours rabbitmq; do
    start_sampler "${SIDE_PID[$side]}" "$WORK/rss-$side"
    bench "$side" 1 c-publish $((BACKLOG_TIMEOUT + 150)) "${common[@]}" --publish-only \
      --count "$BACKLOG" --persistent --confirm "$BACKLOG_WINDOW"
    peak_pub=$(cat "$WORK/rss-$side")
    # Drain what the broker confirmed, so a short publish phase does not leave the drain
    # waiting for messages that were never stored.
    stored=$(tail -n 1 "$RESULTS" | sed -n 's/.*"acked":\([0-9]*\).*/\1/p')
    if [ "${stored:-0}" -gt 0 ]; then
      bench "$side" 1 c-drain $((BACKLOG_TIMEOUT + 150)) "${common[@]}" --consume-only \
        --count "$stored" --ack manual --prefetch 100
    else
      log "  ${SIDE_LABEL[$side]}: nothing confirmed, drain skipped"
    fi
    stop_sampler
    peak=$(cat "$WORK/rss-$side")
    record "$side" "\"run\":1,\"scenario\":\"c-rss\",\"peak_rss_publish_kb\":$peak_pub,\"peak_rss_kb\":$peak"
    log "  ${SIDE_LABEL[$side]}: peak RSS $((peak / 1024)) MB"
  done
}

# ------------------------------------------------------------------------------------------

case $mode in
  warren) define_side ours warren "Warren" ;;
  command) define_side ours command "Warren (BENCH_WARREN_CMD)" ;;
  rabbitmq-only) define_side ours rabbitmq "RabbitMQ-B" ;;
esac
define_side rabbitmq rabbitmq "RabbitMQ"
started_at=$SECONDS
log "mode $mode; work dir $WORK; ports ${SIDE_PORT[ours]} (${SIDE_LABEL[ours]}), ${SIDE_PORT[rabbitmq]} (RabbitMQ)"
log "duration ${DURATION}s x $RUNS runs, backlog $BACKLOG, retry $RETRY_COUNT ids, priority $PRIORITY_COUNT ids, hard limit ${MAX_SECONDS}s"

log "(d) start time and idle RSS, $RUNS start(s) each"
scenario_start

log "starting both brokers for the load scenarios"
start_side ours
start_side rabbitmq

log "(a) 1p/1c, 16 B transient, auto-ack, no confirms"
scenario_throughput a --producers 1 --consumers 1 --size 16 --ack auto --queue bench-a

log "(b) 1p/1c, 1 KB persistent, confirm window 100, manual ack, prefetch 100, durable"
scenario_throughput b --producers 1 --consumers 1 --size 1024 --persistent --confirm 100 \
  --ack manual --prefetch 100 --durable --queue bench-b

# The pipelines run before (c): an incomplete drain can leave (c)'s backlog in the broker.
log "(e) retry pipeline: $RETRY_COUNT ids, 256 B transient, confirms, reject x$RETRY_K via retry.q (TTL $RETRY_TTL ms)"
scenario_pipeline e --count "$RETRY_COUNT" --retries "$RETRY_K" --ttl "$RETRY_TTL" \
  --producers 1 --consumers 2 --size 256 --confirm 100 --prefetch 50 --prefix bench-e-

log "(f) priority queue: $PRIORITY_COUNT ids, random priority 0..9, 256 B transient, 1 consumer prefetch 50"
scenario_pipeline f --count "$PRIORITY_COUNT" --max-priority 10 --producers 1 --consumers 1 \
  --size 256 --confirm 100 --prefetch 50 --prefix bench-f-

log "(c) backlog of $BACKLOG x 1 KB persistent, then drain"
scenario_backlog

stop_side ours
stop_side rabbitmq
log "measurements done in $((SECONDS - started_at)) s"

# ------------------------------------------------------------------------------------------
# Report: a table on stdout and the markdown file.

OUT=${BENCH_OUT:-}
if [ -z "$OUT" ]; then
  if [ $mode = rabbitmq-only ]; then OUT=$WORK/performance.md; BENCH_KEEP=1; else OUT=$REPO/docs/performance.md; fi
fi
# The tree's commit identifies the Warren build (warren-server has no --version to ask);
# BENCH_WARREN_VERSION says otherwise when WARREN_BIN was built from another tree.
warren_version=${BENCH_WARREN_VERSION:-"git $(git -C "$REPO" log -1 --format='%h, %cd' --date=short 2>/dev/null || echo unknown)"}
[ $mode = rabbitmq-only ] && warren_version="(not measured: second RabbitMQ node in its place)"
[ $mode = command ] && warren_version="$warren_version via BENCH_WARREN_CMD"

# The report below rewrites OUT: keep the raft section it does not know about, and every
# section the other benchmark scripts write after it (cluster_run.sh's, raft, qq_run.sh's,
# docker_bench.sh's, mgmt_bench.sh's: from the Cluster heading to the end of the file).
raft_section get "$OUT" >"$WORK/raft-section.md" 2>/dev/null || : >"$WORK/raft-section.md"
cluster_section_get() {
  [ -f "$1" ] || return 0
  sed -n '/^## Cluster (issue 5)/,$p' "$1"
}
cluster_section_get "$OUT" >"$WORK/cluster-section.md" || : >"$WORK/cluster-section.md"

BENCH_MODE=$mode BENCH_OURS_LABEL=${SIDE_LABEL[ours]} WARREN_VERSION=$warren_version \
RABBITMQ_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown) \
ERLANG_VERSION=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown) \
LIBRABBITMQ_VERSION=$(pkg-config --modversion librabbitmq 2>/dev/null || echo unknown) \
BENCH_DURATION=$DURATION BENCH_RUNS=$RUNS BENCH_BACKLOG=$BACKLOG BENCH_BACKLOG_WINDOW=$BACKLOG_WINDOW \
BENCH_RETRY_COUNT=$RETRY_COUNT BENCH_RETRY_K=$RETRY_K BENCH_RETRY_TTL=$RETRY_TTL \
BENCH_PRIORITY_COUNT=$PRIORITY_COUNT \
BENCH_ELAPSED=$((SECONDS - started_at)) \
python3 - "$RESULTS" "$OUT" <<'PY'
import json, os, platform, statistics, sys, time

results_path, out_path = sys.argv[1], sys.argv[2]
env = os.environ
rows = [json.loads(line) for line in open(results_path) if line.strip()]
ours_label = env["BENCH_OURS_LABEL"]


def values(side, scenario, key):
    return [r[key] for r in rows
            if r["side"] == side and r["scenario"] == scenario and "error" not in r
            and r.get(key) is not None]


def median(side, scenario, key):
    v = values(side, scenario, key)
    return statistics.median(v) if v else None


def failures(scenario):
    return sum(1 for r in rows if r["scenario"] == scenario and "error" in r)


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "msg/s":
        return f"{v:,.0f} msg/s"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 100 else f"{v:,.0f} ms"
    if unit == "MB":
        return f"{v / 1024:,.1f} MB"
    return str(v)


def ratio(o, r):
    return o / r if o is not None and r not in (None, 0) else None


# Each line: scenario, metric, ours, rabbitmq, unit, target text, target check.
lines = []


def add(scen, metric, key, unit, target="", check=None, ours_value=None, rmq_value=None):
    o = ours_value if ours_value is not None else median("ours", scen, key)
    r = rmq_value if rmq_value is not None else median("rabbitmq", scen, key)
    q = ratio(o, r)
    met = ""
    if check is not None and o is not None:
        try:
            met = "yes" if check(o, r, q) else "NO"
        except TypeError:   # the RabbitMQ side or the ratio is missing
            met = "n/a"
    shown = "n/a" if q is None else f"{q:.2f}x" if q >= 0.1 else f"{q:.2g}x"
    lines.append((scen, metric, fmt(o, unit), fmt(r, unit), shown, target, met))


add("a", "consumed (end-to-end)", "consumed_per_s", "msg/s", ">= 3x", lambda o, r, q: q >= 3)
add("a", "published", "published_per_s", "msg/s")
add("a", "latency p50", "p50_ms", "ms")
add("a", "latency p99", "p99_ms", "ms", "below RabbitMQ", lambda o, r, q: o < r)
add("b", "consumed (end-to-end)", "consumed_per_s", "msg/s", ">= 2x", lambda o, r, q: q >= 2)
add("b", "published (with confirms)", "published_per_s", "msg/s")
add("b", "latency p50", "p50_ms", "ms")
add("b", "latency p99", "p99_ms", "ms", "below RabbitMQ", lambda o, r, q: o < r)


def verification(scen):
    """Lost / duplicated ids over all runs of a pipeline scenario, per side, as shown."""
    shown, clean = {}, {}
    for side in ("ours", "rabbitmq"):
        runs_ = [r for r in rows if r["side"] == side and r["scenario"] == scen]
        ok = [r for r in runs_ if "error" not in r]
        if not runs_:
            shown[side], clean[side] = "n/a", None
            continue
        lost = sum(r.get("missing", 0) for r in ok if r.get("complete"))
        dup = sum(r.get("duplicates", 0) for r in ok)
        verified = sum(1 for r in ok if r.get("verified"))
        shown[side] = f"{lost} / {dup} ({verified}/{len(runs_)} runs verified)"
        clean[side] = verified == len(runs_)
    met = "" if clean["ours"] is None else "yes" if clean["ours"] else "NO"
    return shown, met


def add_verification(scen):
    shown, met = verification(scen)
    lines.append((scen, "lost / duplicated ids", shown["ours"], shown["rabbitmq"], "",
                  "0 / 0, all verified", met))


add("e", "completed ids (end-to-end)", "completed_per_s", "msg/s", ">= 2x",
    lambda o, r, q: q >= 2)
add("e", "published (with confirms)", "published_per_s", "msg/s")
add("e", "latency p50 (publish to final ack)", "p50_ms", "ms")
add("e", "latency p99 (publish to final ack)", "p99_ms", "ms")
add_verification("e")
add("f", "consumed (end-to-end)", "consumed_per_s", "msg/s", ">= 2x", lambda o, r, q: q >= 2)
add("f", "published (with confirms)", "published_per_s", "msg/s")
add("f", "latency p50, high (7-9)", "high_p50_ms", "ms")
add("f", "latency p99, high (7-9)", "high_p99_ms", "ms")
add("f", "latency p50, low (0-2)", "low_p50_ms", "ms")
add("f", "latency p99, low (0-2)", "low_p99_ms", "ms")
add_verification("f")
add("c-publish", "publish with confirms", "published_per_s", "msg/s")
add("c-drain", "drain with manual ack", "consumed_per_s", "msg/s")
add("c-rss", "peak RSS (publish phase)", "peak_rss_publish_kb", "MB")
add("c-rss", "peak RSS (whole scenario)", "peak_rss_kb", "MB", "<= 1/3 (0.33x)",
    lambda o, r, q: q <= 1 / 3)
add("d", "idle RSS after start", "idle_rss_kb", "MB", "<= 10 MB (abs)",
    lambda o, r, q: o <= 10 * 1024)
add("d", "start to first AMQP login", "ready_ms", "ms", "< 200 ms (abs)",
    lambda o, r, q: o < 200)

headers = ("Scenario", "Metric", ours_label, "RabbitMQ", "Ratio", "Target", "Met")
widths = [max(len(str(x[i])) for x in [headers] + lines) for i in range(len(headers))]
print()
for row in [headers] + lines:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
print()

cpu_model = "unknown"
mem_gb = 0.0
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            mem_gb = int(line.split()[1]) / 1024 / 1024
except OSError:
    pass

runs, duration, backlog = env["BENCH_RUNS"], env["BENCH_DURATION"], int(env["BENCH_BACKLOG"])
side_label = {"ours": ours_label, "rabbitmq": "RabbitMQ"}
incomplete = [f"{side_label[r['side']]} {r['scenario']} stopped after "
              f"{max(r.get('consumed', 0), r.get('published', 0), r.get('completed', 0)):,} "
              "messages at the time limit"
              for r in rows if r.get("exit") == 4]
unverified = [f"{side_label[r['side']]} {r['scenario']} run {r['run']}: verification failed "
              f"(missing {r.get('missing')}, duplicates {r.get('duplicates')}, "
              f"left in queues {r.get('left')}"
              + (f"/{r.get('left_retry')}, x-death mismatches {r.get('xdeath_mismatch')}"
                 if r["scenario"] == "e" else
                 f", priority mismatches {r.get('priority_mismatch')}") + ")"
              for r in rows if r.get("exit") == 5]
failed = sorted({f"{side_label[r['side']]} {r['scenario']}" for r in rows if "error" in r})
md = []
md.append("# Warren performance\n")
md.append("Written by `tests/bench/run.sh` (`make bench`); do not edit the figures by hand.\n")
if env["BENCH_MODE"] == "rabbitmq-only":
    md.append("> **Validation run:** both columns are RabbitMQ nodes (`--rabbitmq-only`); "
              "Warren was not measured.\n")
md.append("## Setup\n")
md.append(f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
md.append(f"- Machine: {os.cpu_count()} CPUs ({cpu_model}), {mem_gb:.0f} GB RAM, "
          f"Linux {platform.release()}")
md.append(f"- {ours_label}: {env['WARREN_VERSION']}")
md.append(f"- RabbitMQ: {env['RABBITMQ_VERSION']} (Debian package, stock configuration, "
          f"no plugins), Erlang {env['ERLANG_VERSION']}")
md.append(f"- Client: `tests/bench/warren_bench.c` over librabbitmq {env['LIBRABBITMQ_VERSION']}, "
          "on the same machine as the broker (they share the CPUs)")
md.append(f"- (a), (b): {duration} s per run; (a), (b), (d): median of {runs} run(s), "
          "alternating which broker goes first; (c): one run of "
          f"{backlog:,} messages per broker, confirm window {env['BENCH_BACKLOG_WINDOW']}")
md.append(f"- (e): {int(env['BENCH_RETRY_COUNT']):,} ids, K = {env['BENCH_RETRY_K']} "
          f"rejections, retry TTL {env['BENCH_RETRY_TTL']} ms; (f): "
          f"{int(env['BENCH_PRIORITY_COUNT']):,} ids; both median of {runs} run(s), "
          "alternating, client `tests/bench/pipeline_bench.c`")
md.append(f"- Total measuring time: {env['BENCH_ELAPSED']} s\n")
if incomplete or failed or unverified:
    md.append("**Caveats:** " + "; ".join(
        incomplete + unverified
        + [f"{s}: at least one run failed (see the run log)" for s in failed]) + ".\n")
md.append("## Results\n")
md.append("| " + " | ".join(headers) + " |")
md.append("|" + "|".join("---" for _ in headers) + "|")
for row in lines:
    md.append("| " + " | ".join(row) + " |")
md.append("")
md.append("Ratio is ours / RabbitMQ. \"Met\" compares against the target; targets marked "
          "(abs) are absolute limits on Warren alone.\n")
md.append("## Method\n")
md.append("""Both brokers run on 127.0.0.1 with private data directories under /tmp, on
ports chosen at random below the ephemeral range; RabbitMQ is the Debian package started by
`tests/bench/rabbitmq.sh` with its defaults (no management plugin). Warren is started as
`warren-server --config warren.conf` with only `listeners.tcp.default`,
`listeners.ssl = none` and `data_dir` set. Every scenario uses one connection per producer
and per consumer thread; (a) to (d) use the default exchange and a single queue. Both brokers
stay up for the whole run, but while a client measures one, the other's process is paused
(SIGSTOP, resumed right after), so neither pays for the other's background work after its own
turn (`BENCH_PAUSE_OTHER=0` keeps both running). The client shares the
CPUs with the broker under test (and with anything else running on the machine), so
compare ratios within one run rather than absolute figures across runs.

- **(a) transient throughput**: 1 producer, 1 consumer, 16-byte transient messages,
  auto-ack, no confirms, for the run duration. The producer is not throttled, so when the
  consumer falls behind the queue grows and latency measures that backlog.
- **(b) durable throughput**: 1 KB persistent messages into a durable queue; the producer
  keeps at most 100 unconfirmed publishes in flight (publisher confirms, sliding window);
  the consumer uses prefetch 100 and acks each message.
- **(c) backlog**: the configured number of 1 KB persistent messages are published with
  confirms into a durable queue with no consumer, then a separate client drains it with
  manual acks (prefetch 100). Rates are per phase; the broker's resident set (VmRSS of
  warren-server, of beam.smp for RabbitMQ) is sampled every 100 ms across both phases.
- **(d) start-up**: the broker is launched and a client attempts a full AMQP login every
  5 ms; the time is from launch to the first successful login. Idle RSS is read 2 s later.
  RabbitMQ's time includes its launcher scripts, as a user would experience it.
- **(e) retry pipeline** (issue 3): queue `work` (bound to direct exchange `work`,
  `x-dead-letter-exchange` = `retry`) and queue `retry.q` (bound to fanout exchange
  `retry`, `x-message-ttl`, `x-dead-letter-exchange` = `work`). One producer publishes
  unique ids (256-byte transient bodies, publisher confirms, window 100) to `work`; two
  consumers (prefetch 50, manual ack) reject a delivery with requeue=false while its
  x-death entry {queue `work`, reason `rejected`} has a count below K, so it waits in
  `retry.q` for the TTL and comes back, and ack it at count K. The rate is ids completed
  (final ack) per second from the first publish to the last final ack; latency is per id,
  first publish to final ack, so it includes K x TTL of waiting by design.
- **(f) priority queue** (issue 3): one queue with `x-max-priority` 10; one producer
  publishes unique ids with a random priority 0..9 (256-byte transient bodies, publisher
  confirms, window 100) while one consumer (prefetch 50, manual ack) drains. The rate is
  ids consumed per second from the first publish to the last delivery; latency is publish
  to delivery, for the classes high (priorities 7-9) and low (0-2). Priorities only act on
  a backlog: a low-priority latency above RabbitMQ's means the broker took publishes faster
  than its consumer drained them (a deeper queue), not worse ordering.
- **(e), (f) verification**: every id must complete (be consumed) exactly once; the
  consumers keep reading for a settle period after the last id to catch late duplicates,
  then the queues must be empty, every publish confirmed, and (e) every x-death count
  must equal the number of rejections the client made for that id. "lost / duplicated"
  sums over all runs; a run failing any check is listed under Caveats.

Latency is end to end: the producer writes a CLOCK_MONOTONIC timestamp into the first 8
bytes of each body and the consumer subtracts it on delivery (on the final ack for (e));
percentiles come from a log-linear histogram (~3 % resolution). Throughput targets use the
consumed / completed (end-to-end) rate.
""")
md.append("## Reproduce\n")
md.append("""```sh
make bench                          # full run, about 15 minutes, rewrites this file
tests/bench/run.sh --quick          # smoke run (3 s, 1 run, 20k backlog)
BENCH_BACKLOG=100000 make bench     # smaller backlog
build/pipeline_bench --port 5673 --scenario retry      # (e) by hand against one broker
build/pipeline_bench --port 5673 --scenario priority   # (f)
```
See `tests/bench/README.md` for all knobs and for running `warren_bench` and
`pipeline_bench` by hand.
""")
os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
with open(out_path, "w") as f:
    f.write("\n".join(md))
print(f"report written to {out_path}")
PY

if [ -s "$WORK/cluster-section.md" ] && ! grep -q '^## Cluster (issue 5)' "$OUT"; then
  { echo; cat "$WORK/cluster-section.md"; } >>"$OUT"
fi
if [ $raft = run ] && [ $mode != rabbitmq-only ]; then
  raft_part "$OUT" || log "(raft) part failed; see above"
else
  raft_section put "$OUT" "$WORK/raft-section.md"
fi
