#!/usr/bin/env bash
# cluster_run.sh: issue 5's cluster benchmark - Warren's three-node cluster versus a RabbitMQ
# 3.10 three-node cluster, both on this machine, same client, same run.
#
# Usage: tests/bench/cluster_run.sh [--rabbitmq-only] [--quick]   (normally `make bench-cluster`)
#
# It builds nothing: `make bench-cluster` builds build/warren-server, build/warrenctl (once it
# exists) and build/cluster_bench first.
# It starts a private RabbitMQ cluster (tests/bench/rabbitmq_cluster.sh: three nodes, AMQP on
# three consecutive ports) and Warren's cluster: three build/warren-server processes, each
# with --config <work>/warren<i>/warren.conf (private AMQP port, data dir, node name
# warren<i>@127.0.0.1, cluster_name bench, its own cluster.listener.port, a shared
# cluster.cookie, and the three nodes under cluster_formation.classic_config.nodes.*).
# Warren counts as clustered when every AMQP port accepts a login and
#   build/warrenctl --node 127.0.0.1:<cluster port> --cookie <secret> cluster_status --json
# reports 3 running nodes and a metadata leader. While warrenctl does not exist, a node
# refuses the configuration or the cluster does not form, the Warren side is reported as
# "not available" with the reason, and the RabbitMQ side is still measured and reported.
# Scenarios (tests/bench/cluster_bench.c; see tests/bench/README.md):
#   meta    queue.declare (durable) + queue.bind (amq.direct) + queue.delete, repeated over
#           BENCH_META_CONNECTIONS connections spread over the three nodes; triples/s and
#           p99 of a triple. Target: Warren >= 5x RabbitMQ's ops/s.
#   xpub    durable classic queue declared through node 1; 1 KB persistent messages
#           published through node 2 with confirms (window 100), consumed on node
#           BENCH_XPUB_CONSUME_NODE (1) with manual acks, prefetch 100.
#           Target: Warren >= 2x RabbitMQ's msg/s (end to end, consumed).
#   xpub-t  the same path, transient messages, no confirms (BENCH_XPUB_TRANSIENT=0: skip).
#   qq-1, qq-4, qq-10 (issue 6; BENCH_QUORUM=0: skip): quorum queues (3 members) declared on
#           node 1 (its leader), 1 KB persistent, confirms window 100, published through node 2,
#           consumed through node 3 with prefetch 100 and manual acks: one queue with 1
#           publisher and 1 consumer; one queue 4/4; 10 queues 10/10 (one of each per queue).
# Each is the median of BENCH_RUNS runs, alternating which cluster goes first. The results
# replace the "Cluster" section of docs/performance.md (between its markers) and nothing else.
#
# --rabbitmq-only   validation mode: a second RabbitMQ cluster plays "ours", and the report
#                   goes to a copy of docs/performance.md in the work dir unless BENCH_OUT is set.
# --quick           a smoke run: BENCH_DURATION=3, BENCH_RUNS=1.
# Environment: BENCH_DURATION (10 s per run), BENCH_RUNS (3), BENCH_META_CONNECTIONS (3),
#   BENCH_XPUB_CONSUME_NODE (1), BENCH_XPUB_TRANSIENT (1), BENCH_CLUSTER_TIMEOUT (90 s: bound
#   on each cluster's start-up and formation), WARREN_BIN (build/warren-server),
#   WARRENCTL_BIN (build/warrenctl), CLUSTER_BENCH_BIN (build/cluster_bench),
#   BENCH_WARREN_CONF_EXTRA (lines appended to every warren.conf), BENCH_WARREN_VERSION,
#   BENCH_OUT (report path), BENCH_SKIP_DEPS=1, BENCH_KEEP=1 (keep the work dir),
#   BENCH_MAX_SECONDS (1800: hard limit for the whole script).
set -Eeuo pipefail
trap 'echo "[cluster-bench] error: \"$BASH_COMMAND\" failed (line $LINENO)" >&2' ERR

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"

mode=warren
for arg in "$@"; do
  case "$arg" in
    --rabbitmq-only) mode=rabbitmq-only ;;
    --quick) BENCH_DURATION=${BENCH_DURATION:-3} BENCH_RUNS=${BENCH_RUNS:-1} ;;
    -h|--help) sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster_run.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

DURATION=${BENCH_DURATION:-10}
RUNS=${BENCH_RUNS:-3}
META_CONNECTIONS=${BENCH_META_CONNECTIONS:-3}
XPUB_CONSUME_NODE=${BENCH_XPUB_CONSUME_NODE:-1}
XPUB_TRANSIENT=${BENCH_XPUB_TRANSIENT:-1}
QUORUM=${BENCH_QUORUM:-1}
CLUSTER_TIMEOUT=${BENCH_CLUSTER_TIMEOUT:-90}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}
WARREN_BIN=${WARREN_BIN:-$REPO/build/warren-server}
WARRENCTL_BIN=${WARRENCTL_BIN:-$REPO/build/warrenctl}
CLUSTER_BENCH_BIN=${CLUSTER_BENCH_BIN:-$REPO/build/cluster_bench}
RABBITMQ_CLUSTER_SH=$REPO/tests/bench/rabbitmq_cluster.sh

for v in DURATION RUNS META_CONNECTIONS CLUSTER_TIMEOUT MAX_SECONDS; do
  case "${!v}" in ''|*[!0-9]*|0) echo "cluster_run.sh: BENCH_$v must be a positive integer" >&2; exit 2;; esac
done
case "$XPUB_CONSUME_NODE" in 1|2|3) ;; *) echo "cluster_run.sh: BENCH_XPUB_CONSUME_NODE must be 1, 2 or 3" >&2; exit 2;; esac
case "$XPUB_TRANSIENT" in 0|1) ;; *) echo "cluster_run.sh: BENCH_XPUB_TRANSIENT must be 0 or 1" >&2; exit 2;; esac

log() { printf '[cluster-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$REPO/tests/bench/lib.sh"

if [ "${BENCH_SKIP_DEPS:-0}" != 1 ]; then
  scripts/deps.sh bench
fi
[ -x "$CLUSTER_BENCH_BIN" ] || die "$CLUSTER_BENCH_BIN not found: run 'make build' (needs librabbitmq-dev)"
command -v python3 >/dev/null || die "python3 is needed for the report"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warren-cluster-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK/logs"
: >"$RESULTS"

# ------------------------------------------------------------------------------------------
# Sides. "ours" is Warren's cluster (or, with --rabbitmq-only, a second RabbitMQ cluster);
# "rabbitmq" is the RabbitMQ cluster. Each side has three AMQP addresses.

# SIDE_STARTED: a start was attempted and no stop has run since (what cleanup must stop);
# SIDE_UP: the cluster formed and is measured; SIDE_NOTE: why "ours" is not available.
declare -A SIDE_KIND SIDE_LABEL SIDE_DIR SIDE_BASE SIDE_AUX SIDE_NODES SIDE_UP SIDE_NOTE SIDE_PIDS SIDE_STARTED
WATCHDOG_PID=""
CLIENT_PID=""
COOKIE=""

stop_side() {
  local side=$1 pid i
  [ "${SIDE_STARTED[$side]:-0}" = 1 ] || return 0
  case "${SIDE_KIND[$side]}" in
    rabbitmq)
      timeout --kill-after=10 200 "$RABBITMQ_CLUSTER_SH" stop "${SIDE_DIR[$side]}" \
        "${SIDE_BASE[$side]}" >/dev/null 2>&1 || true ;;
    warren)
      for pid in ${SIDE_PIDS[$side]:-}; do kill -TERM "$pid" 2>/dev/null || true; done
      for pid in ${SIDE_PIDS[$side]:-}; do
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
      done ;;
  esac
  SIDE_PIDS[$side]=""
  SIDE_UP[$side]=0
  SIDE_STARTED[$side]=0
}

cleanup() {
  local rc=$? side
  trap - EXIT INT TERM
  [ -n "$CLIENT_PID" ] && kill "$CLIENT_PID" 2>/dev/null || true
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

start_watchdog "$MAX_SECONDS" cluster-bench


define_side() {   # define_side SIDE KIND LABEL
  local side=$1
  SIDE_KIND[$side]=$2
  SIDE_LABEL[$side]=$3
  SIDE_DIR[$side]=$WORK/$side
  SIDE_UP[$side]=0
  SIDE_NOTE[$side]=""
  SIDE_PIDS[$side]=""
  SIDE_STARTED[$side]=0
  pick_block 3; SIDE_BASE[$side]=$PICKED_PORT   # AMQP ports base..base+2
  pick_block 3; SIDE_AUX[$side]=$PICKED_PORT    # Erlang distribution / Warren cluster ports
  SIDE_NODES[$side]="127.0.0.1:${SIDE_BASE[$side]},127.0.0.1:$((SIDE_BASE[$side] + 1)),127.0.0.1:$((SIDE_BASE[$side] + 2))"
  mkdir -p "${SIDE_DIR[$side]}"
}

start_rabbitmq_side() {
  local side=$1 dir=${SIDE_DIR[$1]} out pid rc=0
  out=$dir/cluster-start.out
  SIDE_STARTED[$side]=1
  RABBITMQ_DIST_BASE_PORT=${SIDE_AUX[$side]} CLUSTER_TIMEOUT_S=$CLUSTER_TIMEOUT \
    timeout --kill-after=10 $((CLUSTER_TIMEOUT + 150)) \
    "$RABBITMQ_CLUSTER_SH" start "$dir" "${SIDE_BASE[$side]}" >"$out" 2>&1 &
  pid=$!
  wait "$pid" || rc=$?
  if [ $rc -ne 0 ]; then
    tail -n 30 "$out" >&2
    die "${SIDE_LABEL[$side]} cluster did not start (status $rc)"
  fi
  SIDE_PIDS[$side]=$(tail -n 1 "$out")
  SIDE_UP[$side]=1
  log "  ${SIDE_LABEL[$side]}: 3 nodes clustered on ports ${SIDE_NODES[$side]//127.0.0.1:/} (beam PIDs ${SIDE_PIDS[$side]})"
}

write_warren_conf() {   # write_warren_conf SIDE I
  local side=$1 i=$2 dir=${SIDE_DIR[$1]}/warren$2 k
  mkdir -p "$dir/data"
  {
    echo "# written by tests/bench/cluster_run.sh"
    echo "listeners.tcp.default = 127.0.0.1:$((SIDE_BASE[$side] + i - 1))"
    echo "listeners.ssl = none"
    echo "data_dir = $dir/data"
    echo "node_name = warren$i@127.0.0.1"
    echo "cluster_name = bench"
    echo "cluster.listener.port = $((SIDE_AUX[$side] + i - 1))"
    echo "cluster.cookie = $COOKIE"
    for k in 1 2 3; do
      echo "cluster_formation.classic_config.nodes.$k = warren$k@127.0.0.1:$((SIDE_AUX[$side] + k - 1))"
    done
    if [ -n "${BENCH_WARREN_CONF_EXTRA:-}" ]; then printf '%s\n' "$BENCH_WARREN_CONF_EXTRA"; fi
  } >"$dir/warren.conf"
}

# Judges `warrenctl cluster_status --json` (stdin): prints "ok" when it lists 3 running nodes
# and a metadata leader, else what is missing. Accepted shapes (the CLI is being written):
#   {"running_nodes": [...], "metadata_leader": "warren1@127.0.0.1", ...}     (preferred)
#   {"nodes": [{"name": ..., "running": true | "status"/"state": "running"|"up",
#               "leader": true | "role": "leader"}, ...], "leader": ...}
cluster_status_ok() {
  python3 -c '
import json, sys
try:
    s = json.load(sys.stdin)
except Exception as e:
    print(f"unreadable JSON ({e})"); sys.exit(0)
if not isinstance(s, dict):
    print("unexpected JSON"); sys.exit(0)
running = s.get("running_nodes")
nodes = s.get("nodes") if isinstance(s.get("nodes"), list) else []
if not isinstance(running, list):
    running = [n for n in nodes if isinstance(n, dict) and (
        n.get("running") is True or str(n.get("status", n.get("state", ""))).lower() in ("running", "up"))]
leader = None
for k in ("metadata_leader", "meta_leader", "leader", "raft_leader"):
    v = s.get(k)
    if isinstance(v, dict):
        v = v.get("name") or v.get("node")
    if v:
        leader = v; break
if leader is None:
    for n in nodes:
        if isinstance(n, dict) and (n.get("leader") is True or n.get("is_leader") is True
                                    or str(n.get("role", "")).lower() == "leader"):
            leader = n.get("name", "?"); break
if len(running) >= 3 and leader:
    print("ok")
else:
    print(f"{len(running)} running node(s), metadata leader: {leader or None}")
'
}

# Starts Warren's three nodes and waits until they form a cluster. Never exits the script:
# when Warren cannot cluster yet, SIDE_NOTE says why and the side is skipped.
start_warren_side() {
  local side=$1 i pid dir deadline st state="" note="" rc
  if [ ! -x "$WARREN_BIN" ]; then
    SIDE_NOTE[$side]="not available: $WARREN_BIN not found (run 'make build')"; return 0
  fi
  if [ ! -x "$WARRENCTL_BIN" ]; then
    SIDE_NOTE[$side]="not available (clustering not built yet: ${WARRENCTL_BIN#$REPO/} does not exist)"
    return 0
  fi
  SIDE_STARTED[$side]=1
  for i in 1 2 3; do
    write_warren_conf "$side" "$i"
    dir=${SIDE_DIR[$side]}/warren$i
    setsid "$WARREN_BIN" --config "$dir/warren.conf" >>"$dir/broker.log" 2>&1 </dev/null &
    SIDE_PIDS[$side]="${SIDE_PIDS[$side]} $!"
  done
  # 1. Every AMQP port answers a login; a node that exits meanwhile refused its config.
  deadline=$((SECONDS + CLUSTER_TIMEOUT))
  i=1
  for pid in ${SIDE_PIDS[$side]}; do
    dir=${SIDE_DIR[$side]}/warren$i
    until "$CLUSTER_BENCH_BIN" --mode ready --nodes "127.0.0.1:$((SIDE_BASE[$side] + i - 1))" \
            --duration 1 >/dev/null 2>&1; do
      if ! kill -0 "$pid" 2>/dev/null; then
        note=$(grep -v '^[[:space:]]*$' "$dir/broker.log" | tail -n 1 | cut -c1-200)
        SIDE_NOTE[$side]="not available (clustering not built yet: node $i exited at start-up: ${note:-no output})"
        log "  ${SIDE_LABEL[$side]} node $i exited; its log:"; tail -n 10 "$dir/broker.log" >&2 || true
        stop_side "$side"; return 0
      fi
      if [ $SECONDS -ge $deadline ]; then
        SIDE_NOTE[$side]="not available: node $i did not accept AMQP within ${CLUSTER_TIMEOUT}s"
        stop_side "$side"; return 0
      fi
    done
    i=$((i + 1))
  done
  # 2. The cluster is formed: 3 running nodes and a metadata leader, asked of each node in turn.
  i=0
  while :; do
    local cport=$((SIDE_AUX[$side] + i % 3))
    rc=0
    st=$(timeout --kill-after=2 10 "$WARRENCTL_BIN" --node "127.0.0.1:$cport" --cookie "$COOKIE" --json \
           cluster_status 2>"$WORK/logs/warrenctl.err") || rc=$?
    if [ $rc -eq 0 ]; then
      state=$(cluster_status_ok <<<"$st" 2>&1 | tail -n 1)
    else
      state="warrenctl exited with status $rc: $(tail -n 1 "$WORK/logs/warrenctl.err" | cut -c1-200)"
    fi
    [ "$state" = ok ] && break
    if [ $SECONDS -ge $deadline ]; then
      SIDE_NOTE[$side]="not available (clustering not built yet: no 3-node cluster within ${CLUSTER_TIMEOUT}s; last cluster_status: $state)"
      stop_side "$side"; return 0
    fi
    i=$((i + 1))
    sleep 0.5
  done
  SIDE_UP[$side]=1
  log "  ${SIDE_LABEL[$side]}: 3 nodes clustered on ports ${SIDE_NODES[$side]//127.0.0.1:/} (PIDs${SIDE_PIDS[$side]})"
}

# ------------------------------------------------------------------------------------------
# Measurements: one JSON object per line in $RESULTS, tagged with side and run.

record() { echo "{\"side\":\"$1\",$2}" >>"$RESULTS"; }

bench() {   # bench SIDE RUN SCENARIO ARGS...
  local side=$1 run=$2 scenario=$3 rc=0 json out; shift 3
  out=$WORK/logs/$side-$scenario-$run.log
  timeout --kill-after=10 $((DURATION + 150)) "$CLUSTER_BENCH_BIN" --nodes "${SIDE_NODES[$side]}" \
    --scenario "$scenario" --duration "$DURATION" "$@" >"$out" 2>&1 &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  json=$(grep '^{' "$out" | tail -n 1 || true)
  json=${json#\{}
  json=${json%\}}
  if [ -n "$json" ] && { [ $rc -eq 0 ] || [ $rc -eq 4 ] || [ $rc -eq 5 ]; }; then
    record "$side" "\"run\":$run,\"exit\":$rc,$json"
    [ $rc -ne 4 ] || log "  ${SIDE_LABEL[$side]}: $scenario incomplete (see $out)"
    [ $rc -ne 5 ] || log "  ${SIDE_LABEL[$side]}: $scenario: publishes came back UNROUTABLE (see $out)"
  else
    record "$side" "\"run\":$run,\"scenario\":\"$scenario\",\"error\":$rc"
    log "  ${SIDE_LABEL[$side]}: $scenario failed with status $rc:"
    tail -n 5 "$out" >&2
  fi
  grep -E '^  (triples|triple |published|consumed|confirm |e2e|UNROUTABLE)' "$out" |
    sed "s/^/    [${SIDE_LABEL[$side]}] /" >&2 || true
}

order_for_run() { if [ $(($1 % 2)) -eq 1 ]; then echo "ours rabbitmq"; else echo "rabbitmq ours"; fi; }

scenario() {   # scenario NAME ARGS...
  local name=$1 run side; shift
  for run in $(seq "$RUNS"); do
    for side in $(order_for_run "$run"); do
      [ "${SIDE_UP[$side]}" = 1 ] || continue
      bench "$side" "$run" "$name" "$@"
    done
  done
}

# ------------------------------------------------------------------------------------------

COOKIE=$(head -c 24 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f)
case $mode in
  warren) define_side ours warren "Warren" ;;
  rabbitmq-only) define_side ours rabbitmq "RabbitMQ-B" ;;
esac
define_side rabbitmq rabbitmq "RabbitMQ"
started_at=$SECONDS
log "mode $mode; work dir $WORK; ${RUNS} run(s) of ${DURATION}s per scenario, hard limit ${MAX_SECONDS}s"

log "starting the clusters"
start_rabbitmq_side rabbitmq
if [ "${SIDE_KIND[ours]}" = rabbitmq ]; then start_rabbitmq_side ours; else start_warren_side ours; fi
if [ "${SIDE_UP[ours]}" != 1 ]; then
  log "  ${SIDE_LABEL[ours]}: ${SIDE_NOTE[ours]}"
  log "  measuring RabbitMQ alone"
fi

log "meta: queue.declare + bind + delete, $META_CONNECTIONS connection(s) over 3 nodes"
scenario meta --mode meta --connections "$META_CONNECTIONS" --prefix bench-meta

log "xpub: 1 KB persistent via node 2 to a classic queue on node 1, confirms (100), consumer on node $XPUB_CONSUME_NODE (manual ack, prefetch 100)"
scenario xpub --mode xpub --queue bench-xpub --queue-node 1 --publish-node 2 \
  --consume-node "$XPUB_CONSUME_NODE" --size 1024 --confirm 100 --prefetch 100 --ack manual

if [ "$XPUB_TRANSIENT" = 1 ]; then
  log "xpub-t: the same path, 1 KB transient, no confirms"
  scenario xpub-t --mode xpub --queue bench-xpub-t --queue-node 1 --publish-node 2 \
    --consume-node "$XPUB_CONSUME_NODE" --size 1024 --transient --confirm 0 --prefetch 100 \
    --ack manual
fi

if [ "$QUORUM" = 1 ]; then
  qq_args=(--mode xpub --queue-type quorum --queue-node 1 --publish-node 2 --consume-node 3 --size 1024
           --confirm 100 --prefetch 100 --ack manual)
  log "qq-1: quorum queue on node 1 (3 members), 1 publisher via node 2, 1 consumer via node 3"
  scenario qq-1 "${qq_args[@]}" --queue bench-qq1
  log "qq-4: one quorum queue, 4 publishers / 4 consumers"
  scenario qq-4 "${qq_args[@]}" --queue bench-qq4 --producers 4 --consumers 4
  log "qq-10: 10 quorum queues, 10 publishers / 10 consumers"
  scenario qq-10 "${qq_args[@]}" --queue bench-qq10 --queues 10 --producers 10 --consumers 10
fi

stop_side ours
stop_side rabbitmq
log "measurements done in $((SECONDS - started_at)) s"

# ------------------------------------------------------------------------------------------
# Report: a table on stdout and the Cluster section of the markdown file.

OUT=${BENCH_OUT:-}
if [ -z "$OUT" ]; then
  if [ $mode = rabbitmq-only ]; then
    OUT=$WORK/performance.md; BENCH_KEEP=1
    [ -f "$REPO/docs/performance.md" ] && cp "$REPO/docs/performance.md" "$OUT"
  else
    OUT=$REPO/docs/performance.md
  fi
fi
warren_version=${BENCH_WARREN_VERSION:-"git $(git -C "$REPO" log -1 --format='%h, %cd' --date=short 2>/dev/null || echo unknown)"}
[ $mode = rabbitmq-only ] && warren_version="(not measured: a second RabbitMQ cluster in its place)"

BENCH_MODE=$mode OURS_LABEL=${SIDE_LABEL[ours]} OURS_NOTE=${SIDE_NOTE[ours]} WARREN_VERSION=$warren_version \
RABBITMQ_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown) \
ERLANG_VERSION=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown) \
LIBRABBITMQ_VERSION=$(pkg-config --modversion librabbitmq 2>/dev/null || echo unknown) \
BENCH_DURATION=$DURATION BENCH_RUNS=$RUNS BENCH_META_CONNECTIONS=$META_CONNECTIONS \
BENCH_XPUB_CONSUME_NODE=$XPUB_CONSUME_NODE BENCH_ELAPSED=$((SECONDS - started_at)) \
python3 - "$RESULTS" "$OUT" <<'PY'
import json, os, platform, re, statistics, sys, time

results_path, out_path = sys.argv[1], sys.argv[2]
env = os.environ
rows = [json.loads(line) for line in open(results_path) if line.strip()]
ours_label = env["OURS_LABEL"]
ours_note = env.get("OURS_NOTE", "")
# The section is its heading line, a begin marker, the text, and an end marker. Other
# writers of the file (tests/bench/run.sh) treat a section as "## heading" up to the next
# "## ", so the heading comes first and nothing of ours sits outside that span.
HEADING = "## Cluster (issue 5)"
BEGIN = "<!-- cluster_run.sh: begin (this section is rewritten by tests/bench/cluster_run.sh) -->"
END = "<!-- cluster_run.sh: end -->"


def values(side, scenario, key):
    return [r[key] for r in rows if r["side"] == side and r["scenario"] == scenario
            and "error" not in r and r.get(key) is not None]


def median(side, scenario, key):
    v = values(side, scenario, key)
    return statistics.median(v) if v else None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit in ("ops/s", "msg/s"):
        return f"{v:,.1f} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 100 else f"{v:,.0f} ms"
    return str(v)


lines = []


def add(scen, metric, key, unit, target="", check=None):
    o, r = median("ours", scen, key), median("rabbitmq", scen, key)
    q = o / r if o is not None and r not in (None, 0) else None
    met = ""
    if check is not None:
        met = "n/a" if q is None else ("yes" if check(o, r, q) else "NO")
    shown = "n/a" if q is None else f"{q:.2f}x" if q >= 0.1 else f"{q:.2g}x"
    ours = fmt(o, unit) if o is not None or not ours_note else "not available"
    lines.append((scen, metric, ours, fmt(r, unit), shown, target, met))


add("meta", "declare+bind+delete triples", "ops_per_s", "ops/s", ">= 5x", lambda o, r, q: q >= 5)
add("meta", "latency p50 (triple)", "p50_ms", "ms")
add("meta", "latency p99 (triple)", "p99_ms", "ms")
add("xpub", "consumed (end-to-end)", "consumed_per_s", "msg/s", ">= 2x", lambda o, r, q: q >= 2)
add("xpub", "published and confirmed", "published_per_s", "msg/s")
add("xpub", "confirm latency p99", "confirm_p99_ms", "ms")
add("xpub", "end-to-end latency p99", "p99_ms", "ms")
for scen in ("qq-1", "qq-4", "qq-10"):
    if any(r["scenario"] == scen for r in rows):
        add(scen, "quorum: consumed (end-to-end)", "consumed_per_s", "msg/s", ">= 3x", lambda o, r, q: q >= 3)
        add(scen, "quorum: confirm latency p99", "confirm_p99_ms", "ms", "<= 0.5x", lambda o, r, q: q <= 0.5)
        add(scen, "quorum: end-to-end latency p99", "p99_ms", "ms")
if any(r["scenario"] == "xpub-t" for r in rows):
    add("xpub-t", "consumed (end-to-end)", "consumed_per_s", "msg/s")
    add("xpub-t", "published (no confirms)", "published_per_s", "msg/s")
    add("xpub-t", "end-to-end latency p99", "p99_ms", "ms")

headers = ("Scenario", "Metric", ours_label, "RabbitMQ", "Ratio", "Target", "Met")
widths = [max(len(str(x[i])) for x in [headers] + lines) for i in range(len(headers))]
print()
for row in [headers] + lines:
    print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
if ours_note:
    print(f"\n{ours_label}: {ours_note}")
print()

cpu_model, mem_gb = "unknown", 0.0
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

side_label = {"ours": ours_label, "rabbitmq": "RabbitMQ"}
failed = sorted({f"{side_label[r['side']]} {r['scenario']}" for r in rows if "error" in r})
incomplete = sorted({f"{side_label[r['side']]} {r['scenario']}" for r in rows if r.get("exit") == 4})
unroutable = sorted({f"{side_label[r['side']]} {r['scenario']}" for r in rows if r.get("exit") == 5})
md = [HEADING + ": three nodes on one machine", BEGIN, ""]
md.append("Written by `tests/bench/cluster_run.sh` (`make bench-cluster`), which replaces only "
          "this section; do not edit the figures by hand.\n")
if env["BENCH_MODE"] == "rabbitmq-only":
    md.append("> **Validation run:** both columns are RabbitMQ clusters (`--rabbitmq-only`); "
              "Warren was not measured.\n")
elif ours_note:
    md.append(f"> **Warren: {ours_note}.** Only RabbitMQ's figures were measured; the targets "
              "are checked once Warren clusters.\n")
md.append("### Setup\n")
md.append(f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
md.append(f"- Machine: {os.cpu_count()} CPUs ({cpu_model}), {mem_gb:.0f} GB RAM, "
          f"Linux {platform.release()}; the brokers and the client share it")
md.append(f"- {ours_label}: {env['WARREN_VERSION']}" + (" (not measured)" if ours_note else "")
          + (", three `warren-server` processes clustered through "
             "`cluster_formation.classic_config`" if not ours_note and env["BENCH_MODE"] == "warren" else ""))
md.append(f"- RabbitMQ: {env['RABBITMQ_VERSION']} (Debian package, stock configuration, no "
          f"plugins), Erlang {env['ERLANG_VERSION']}; three nodes joined with "
          "`rabbitmqctl join_cluster` (`tests/bench/rabbitmq_cluster.sh`)")
md.append(f"- Client: `tests/bench/cluster_bench.c` over librabbitmq {env['LIBRABBITMQ_VERSION']}")
md.append(f"- {env['BENCH_DURATION']} s per run; median of {env['BENCH_RUNS']} run(s), alternating "
          f"which cluster goes first; total measuring time {env['BENCH_ELAPSED']} s\n")
if failed or incomplete or unroutable:
    md.append("**Caveats:** " + "; ".join(
        [f"{s}: at least one run failed" for s in failed]
        + [f"{s}: incomplete (count not reached)" for s in incomplete]
        + [f"{s}: publishes through node 2 came back unroutable (basic.return)" for s in unroutable])
        + ".\n")
md.append("### Results\n")
md.append("| " + " | ".join(headers) + " |")
md.append("|" + "|".join("---" for _ in headers) + "|")
for row in lines:
    md.append("| " + " | ".join(row) + " |")
md.append("")
md.append("Ratio is ours / RabbitMQ; \"Met\" compares it with the issue's target (5: meta, xpub; 6: qq).\n")
md.append("### Method\n")
md.append(f"""- **meta**: {env['BENCH_META_CONNECTIONS']} connection(s), spread round-robin over the
  three nodes, each on its own thread, repeat queue.declare (durable, unique name) +
  queue.bind (to `amq.direct`) + queue.delete, waiting for each reply before the next
  request. A triple counts when its delete-ok arrives; latency is declare sent to delete-ok.
  Every step changes cluster metadata (RabbitMQ: a Mnesia transaction on all nodes).
- **xpub**: a durable classic queue is declared through node 1, so it lives there
  (RabbitMQ places a classic queue on the declaring node). One producer publishes 1 KB
  persistent messages through node 2 with publisher confirms (at most 100 unconfirmed);
  one consumer on node {env['BENCH_XPUB_CONSUME_NODE']} acks each delivery (prefetch 100).
  Every message crosses from node 2 to node 1 before it is confirmed. The target uses the
  end-to-end (consumed) rate; confirm latency is publish to basic.ack, end-to-end latency is
  publish to delivery (a timestamp in the body).
""" + ("""- **xpub-t**: the same path with transient messages and no confirms; the producer is not
  throttled, so a consumer that falls behind shows as a lower consumed rate and a latency
  that is the age of the backlog.
""" if any(r["scenario"] == "xpub-t" for r in rows) else "") + ("""- **qq-1 / qq-4 / qq-10** (issue 6): quorum queues (`x-queue-type: quorum`, three members)
  declared through node 1, which leads them; 1 KB persistent messages published through
  node 2 with confirms (window 100), consumed through node 3 (prefetch 100, manual ack): one
  queue with 1 publisher and 1 consumer, one queue with 4 and 4, ten queues with one of each.
  A confirm needs the message on a majority of the queue's members; every message crosses
  the cluster twice.
""" if any(r["scenario"] == "qq-1" for r in rows) else "") + """- Nodes listen on 127.0.0.1 on private ports with private data directories; the client
  runs on the same CPUs, so compare ratios within one run.
""")
md.append("Reproduce: `make bench-cluster` (or `tests/bench/cluster_run.sh --quick`); "
          "see `tests/bench/README.md`.")
md.append(END)
section = "\n".join(md).split("\n")


def replace_section(lines, section):
    """Replaces our section (heading .. end marker; without an end marker, up to the next
    "## " heading) or appends it; drops stray markers of ours elsewhere."""
    begin_tag, end_tag = BEGIN.split(" (")[0], END
    start = next((i for i, l in enumerate(lines) if l.startswith(HEADING)), None)
    if start is not None:
        if start > 0 and lines[start - 1].startswith(begin_tag):
            start -= 1                       # an older layout had the marker first
        nxt = next((i for i in range(start + 2, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        end = next((i for i in range(start, nxt) if lines[i].startswith(end_tag)), None)
        stop = end + 1 if end is not None else nxt
        while stop < len(lines) and stop < nxt and lines[stop] == "":
            stop += 1
        lines = lines[:start] + section + [""] + lines[stop:]
    lines = [l for i, l in enumerate(lines)
             if not ((l.startswith(begin_tag) or l.startswith(end_tag))
                     and not (start is not None and start <= i < start + len(section)))]
    if start is None:
        while lines and lines[-1] == "":
            lines.pop()
        lines += [""] + section + [""]
    return lines


text = open(out_path).read() if os.path.exists(out_path) else "# Warren performance\n"
lines = replace_section(text.split("\n"), section)
text = "\n".join(lines).rstrip("\n") + "\n"
os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
with open(out_path, "w") as f:
    f.write(text)
print(f"Cluster section written to {out_path}")
PY
