#!/usr/bin/env bash
# qq_run.sh: issue 6's quorum queue benchmark - Warren's three-node cluster versus a RabbitMQ
# 3.10 three-node cluster, both on this machine, same client (librabbitmq), same run.
#
# Usage: tests/bench/qq_run.sh [--quick]        (normally `make bench-qq`)
#
# It builds nothing: `make bench-qq` builds build/warren-server, build/warrenctl and
# build/cluster_bench first. The Warren binary is copied into the work dir at start, so a
# rebuild during the run does not change what is measured.
# The clusters are started as tests/bench/cluster_run.sh starts them: RabbitMQ through
# tests/bench/rabbitmq_cluster.sh (three nodes, consecutive AMQP ports, fresh mnesia), Warren
# as three warren-server processes with classic_config cluster formation, waited for with
# `warrenctl cluster_status --json` (3 running nodes and a metadata leader).
# Every queue is a quorum queue (x-queue-type: quorum, three members) declared through node 1
# (the leader: Warren's preferred leader is the declaring node, RabbitMQ's default locator is
# client-local); messages are 1 KB persistent, published through node 2 with confirms (window
# 100), consumed through node 3 with prefetch 100 and manual acks.
# Scenarios (BENCH_SCENARIOS selects; default all, in this order):
#   qq-1        one queue, 1 publisher / 1 consumer          } BENCH_DURATION s each,
#   qq-4        one queue, 4 publishers / 4 consumers         } median of BENCH_RUNS runs,
#   qq-10       10 queues, 10 publishers / 10 consumers       } alternating which side goes
#   qq-lat      one queue 1/1, publisher paced at BENCH_LAT_RATE } first
#               (1000 msg/s): confirm and end-to-end latency p50/p99 (BENCH_LAT_DURATION s)
#   qq-backlog  BENCH_BACKLOG (1,000,000; --quick 100,000) messages published with no consumer,
#               then drained by one consumer: both rates, peak VmRSS of every node (sampled
#               every 0.5 s over both phases), disk used (du of each node's data dir) after
#               the publish phase and after the drain. Once per side.
#   qq-catchup  a follower of a quorum queue is paused (SIGSTOP) while BENCH_CATCHUP (200,000)
#               messages are published through the other follower with no consumer, then resumed
#               (SIGCONT): catch-up time = resume to the moment that member's own commit index
#               reaches the leader's (Warren: `warrenctl list_queues` on that node, polled every
#               0.1 s; RabbitMQ: rabbit_quorum_queue:status/2 polled every 50 ms by a
#               `rabbitmqctl eval` on the leader node, started before the resume), and the peak
#               VmRSS of the leader and of the follower from the pause to the catch-up (0.25 s
#               samples). Warren's follower is past the leader's compacted log: it catches up
#               through a snapshot plus the bodies it lacks. Once per side; the queue is deleted.
#   qq-failover a paced (BENCH_FAILOVER_RATE, 1000 msg/s) confirmed publish stream through a
#               node that does not lead the queue, a consumer on the third node; after
#               BENCH_FAILOVER_BEFORE s the leader node is killed with SIGKILL and the client
#               gets SIGUSR1; failover = kill to the first new confirm. Warren's leader is the
#               node whose log has the highest-term "quorum queue '<q>' in vhost '/': leader
#               on this node (term N)"; RabbitMQ's comes from `rabbitmqctl list_queues name
#               leader`. Runs last on each side (the killed node is not restarted).
# Results replace the "Quorum queues (issue 6)" section of docs/performance.md (between its
# markers) and nothing else.
#
# --quick   a smoke run of a few minutes: BENCH_DURATION=3, BENCH_RUNS=1, BENCH_LAT_DURATION=5,
#           BENCH_BACKLOG=100000.
# Environment: BENCH_DURATION (10), BENCH_RUNS (3), BENCH_LAT_RATE (1000), BENCH_LAT_DURATION
#   (15), BENCH_BACKLOG (1000000), BENCH_BACKLOG_TIMEOUT (480 s per phase),
#   BENCH_CATCHUP (200000; --quick 50000), BENCH_FAILOVER_RATE (1000), BENCH_FAILOVER_BEFORE (5),
#   BENCH_FAILOVER_AFTER (15),
#   BENCH_SCENARIOS, BENCH_CLUSTER_TIMEOUT (90), WARREN_BIN (build/warren-server),
#   WARRENCTL_BIN (build/warrenctl), CLUSTER_BENCH_BIN (build/cluster_bench),
#   BENCH_WARREN_CONF_EXTRA (lines appended to every warren.conf), BENCH_WARREN_VERSION,
#   BENCH_OUT (report path), BENCH_SKIP_DEPS=1, BENCH_KEEP=1 (keep the work dir),
#   BENCH_SIDES ("ours rabbitmq"; "ours" measures Warren alone, for tuning - with BENCH_OUT),
#   BENCH_MAX_SECONDS (1800: hard limit for the whole script).
set -Eeuo pipefail
trap 'echo "[qq-bench] error: \"$BASH_COMMAND\" failed (line $LINENO)" >&2' ERR

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,/^set -Eeuo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "qq_run.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done
if [ $quick = 1 ]; then
  BENCH_DURATION=${BENCH_DURATION:-3} BENCH_RUNS=${BENCH_RUNS:-1}
  BENCH_LAT_DURATION=${BENCH_LAT_DURATION:-5} BENCH_BACKLOG=${BENCH_BACKLOG:-100000}
  BENCH_CATCHUP=${BENCH_CATCHUP:-50000}
fi

DURATION=${BENCH_DURATION:-10}
RUNS=${BENCH_RUNS:-3}
LAT_RATE=${BENCH_LAT_RATE:-1000}
LAT_DURATION=${BENCH_LAT_DURATION:-15}
BACKLOG=${BENCH_BACKLOG:-1000000}
BACKLOG_TIMEOUT=${BENCH_BACKLOG_TIMEOUT:-480}
CATCHUP=${BENCH_CATCHUP:-200000}
FAILOVER_RATE=${BENCH_FAILOVER_RATE:-1000}
FAILOVER_BEFORE=${BENCH_FAILOVER_BEFORE:-5}
FAILOVER_AFTER=${BENCH_FAILOVER_AFTER:-15}
SCENARIOS=${BENCH_SCENARIOS:-"qq-1 qq-4 qq-10 qq-lat qq-backlog qq-catchup qq-failover"}
CLUSTER_TIMEOUT=${BENCH_CLUSTER_TIMEOUT:-90}
MAX_SECONDS=${BENCH_MAX_SECONDS:-1800}
WARREN_BIN=${WARREN_BIN:-$REPO/build/warren-server}
WARRENCTL_BIN=${WARRENCTL_BIN:-$REPO/build/warrenctl}
CLUSTER_BENCH_BIN=${CLUSTER_BENCH_BIN:-$REPO/build/cluster_bench}
RABBITMQ_CLUSTER_SH=$REPO/tests/bench/rabbitmq_cluster.sh
RMQ_SCRIPTS=${RABBITMQ_SCRIPTS:-/usr/lib/rabbitmq/bin}

for v in DURATION RUNS LAT_RATE LAT_DURATION BACKLOG BACKLOG_TIMEOUT CATCHUP FAILOVER_RATE FAILOVER_BEFORE \
         FAILOVER_AFTER CLUSTER_TIMEOUT MAX_SECONDS; do
  case "${!v}" in ''|*[!0-9]*|0) echo "qq_run.sh: BENCH_$v must be a positive integer" >&2; exit 2;; esac
done
for s in $SCENARIOS; do
  case "$s" in qq-1|qq-4|qq-10|qq-lat|qq-backlog|qq-catchup|qq-failover) ;;
    *) echo "qq_run.sh: unknown scenario '$s' in BENCH_SCENARIOS" >&2; exit 2 ;; esac
done

log() { printf '[qq-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$REPO/tests/bench/lib.sh"

if [ "${BENCH_SKIP_DEPS:-0}" != 1 ]; then
  scripts/deps.sh bench
fi
[ -x "$CLUSTER_BENCH_BIN" ] || die "$CLUSTER_BENCH_BIN not found: run 'make build' (needs librabbitmq-dev)"
command -v python3 >/dev/null || die "python3 is needed for the report"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/warren-qq-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
mkdir -p "$WORK/logs" "$WORK/bin"
: >"$RESULTS"
if [ -x "$WARREN_BIN" ]; then
  cp -p "$WARREN_BIN" "$WORK/bin/warren-server"
  WARREN_BIN=$WORK/bin/warren-server
fi

# ------------------------------------------------------------------------------------------
# Sides: "ours" is Warren's cluster, "rabbitmq" the RabbitMQ cluster; three AMQP addresses each.

declare -A SIDE_KIND SIDE_LABEL SIDE_DIR SIDE_BASE SIDE_AUX SIDE_MGMT SIDE_NODES SIDE_UP SIDE_NOTE SIDE_PIDS SIDE_STARTED
WATCHDOG_PID=""
CLIENT_PID=""
COOKIE=""
RSS_SAMPLER_PID=""

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
  [ -n "$CLIENT_PID" ] && kill -TERM "$CLIENT_PID" 2>/dev/null || true
  stop_rss_sampler
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

start_watchdog "$MAX_SECONDS" qq-bench

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
  if [ "$2" = warren ]; then pick_block 3; SIDE_MGMT[$side]=$PICKED_PORT; fi   # management HTTP
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
    echo "# written by tests/bench/qq_run.sh"
    echo "listeners.tcp.default = 127.0.0.1:$((SIDE_BASE[$side] + i - 1))"
    echo "listeners.ssl = none"
    echo "data_dir = $dir/data"
    echo "node_name = warren$i@127.0.0.1"
    echo "cluster_name = bench"
    echo "cluster.listener.port = $((SIDE_AUX[$side] + i - 1))"
    echo "cluster.cookie = $COOKIE"
    # The management API cannot be turned off; a private port per node keeps it from taking
    # (or failing on) 15672, which other brokers on the machine may use.
    echo "management.tcp.ip = 127.0.0.1"
    echo "management.tcp.port = $((SIDE_MGMT[$side] + i - 1))"
    for k in 1 2 3; do
      echo "cluster_formation.classic_config.nodes.$k = warren$k@127.0.0.1:$((SIDE_AUX[$side] + k - 1))"
    done
    if [ -n "${BENCH_WARREN_CONF_EXTRA:-}" ]; then printf '%s\n' "$BENCH_WARREN_CONF_EXTRA"; fi
  } >"$dir/warren.conf"
}

# "ok" when `warrenctl cluster_status --json` (stdin) lists 3 running nodes and a metadata
# leader, else what is missing (the shapes cluster_run.sh accepts).
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

# Starts Warren's three nodes and waits until they form a cluster. When they cannot,
# SIDE_NOTE says why and only RabbitMQ is measured.
start_warren_side() {
  local side=$1 i pid dir deadline st state="" note="" rc
  if [ ! -x "$WARREN_BIN" ]; then
    SIDE_NOTE[$side]="not available: warren-server not found (run 'make build')"; return 0
  fi
  if [ ! -x "$WARRENCTL_BIN" ]; then
    SIDE_NOTE[$side]="not available: ${WARRENCTL_BIN#$REPO/} does not exist"; return 0
  fi
  SIDE_STARTED[$side]=1
  for i in 1 2 3; do
    write_warren_conf "$side" "$i"
    dir=${SIDE_DIR[$side]}/warren$i
    setsid "$WARREN_BIN" --config "$dir/warren.conf" >>"$dir/broker.log" 2>&1 </dev/null &
    SIDE_PIDS[$side]="${SIDE_PIDS[$side]} $!"
    disown $!    # no job notice when the failover scenario kills it
  done
  SIDE_PIDS[$side]=${SIDE_PIDS[$side]# }
  deadline=$((SECONDS + CLUSTER_TIMEOUT))
  i=1
  for pid in ${SIDE_PIDS[$side]}; do
    dir=${SIDE_DIR[$side]}/warren$i
    until "$CLUSTER_BENCH_BIN" --mode ready --nodes "127.0.0.1:$((SIDE_BASE[$side] + i - 1))" \
            --duration 1 >/dev/null 2>&1; do
      if ! kill -0 "$pid" 2>/dev/null; then
        note=$(grep -v '^[[:space:]]*$' "$dir/broker.log" | tail -n 1 | cut -c1-200)
        SIDE_NOTE[$side]="not available: node $i exited at start-up: ${note:-no output}"
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
      SIDE_NOTE[$side]="not available: no 3-node cluster within ${CLUSTER_TIMEOUT}s; last cluster_status: $state"
      stop_side "$side"; return 0
    fi
    i=$((i + 1))
    sleep 0.5
  done
  SIDE_UP[$side]=1
  log "  ${SIDE_LABEL[$side]}: 3 nodes clustered on ports ${SIDE_NODES[$side]//127.0.0.1:/} (PIDs ${SIDE_PIDS[$side]})"
}

node_pid() { echo "${SIDE_PIDS[$1]}" | awk -v i="$2" '{print $i}'; }   # node_pid SIDE I

node_data_dir() {   # node_data_dir SIDE I
  case "${SIDE_KIND[$1]}" in
    rabbitmq) echo "${SIDE_DIR[$1]}/node$2/mnesia" ;;
    warren) echo "${SIDE_DIR[$1]}/warren$2/data" ;;
  esac
}

# rabbitmqctl against node I of a RabbitMQ side (node 1's HOME: the shared cookie), bounded.
rmq_ctl() {   # rmq_ctl SIDE I ARGS...
  local side=$1 i=$2; shift 2
  HOME=${SIDE_DIR[$side]}/node1 RABBITMQ_CONF_ENV_FILE=${SIDE_DIR[$side]}/node1/rabbitmq-env.conf \
    RABBITMQ_USE_LONGNAME=false \
    timeout --kill-after=5 60 "$RMQ_SCRIPTS/rabbitmqctl" -n "bench-$((SIDE_BASE[$side] + i - 1))@localhost" "$@"
}

# Prints the node number (1..3) leading quorum queue Q, or nothing. ASK is a node to ask
# (RabbitMQ) - one that is up.
queue_leader() {   # queue_leader SIDE Q [ASK]
  local side=$1 q=$2 ask=${3:-1} i out best=0 bt=-1 t
  case "${SIDE_KIND[$side]}" in
    warren)
      for i in 1 2 3; do
        t=$(grep -F "quorum queue '$q' in vhost '/': leader on this node (term " \
              "${SIDE_DIR[$side]}/warren$i/broker.log" 2>/dev/null |
            sed -n 's/.*leader on this node (term \([0-9]*\)).*/\1/p' | sort -n | tail -n 1 || true)
        if [ -n "$t" ] && [ "$t" -gt "$bt" ]; then bt=$t; best=$i; fi
      done
      [ "$best" = 0 ] || echo "$best" ;;
    rabbitmq)
      out=$(rmq_ctl "$side" "$ask" list_queues name leader --formatter json 2>/dev/null) || return 0
      python3 -c '
import json, sys
q, base = sys.argv[2], int(sys.argv[3])
try:
    rows = json.loads(sys.argv[1])
except Exception:
    sys.exit(0)
for r in rows:
    if r.get("name") == q:
        leader = str(r.get("leader", ""))
        for i in (1, 2, 3):
            if leader == f"bench-{base + i - 1}@localhost":
                print(i)
' "$out" "$q" "${SIDE_BASE[$side]}" ;;
  esac
}

# Warren: "node term" of the highest-term leader line for Q (the failover's new leader).
warren_leader_term() {   # warren_leader_term SIDE Q
  local side=$1 q=$2 i t best="" bt=-1
  for i in 1 2 3; do
    t=$(grep -F "quorum queue '$q' in vhost '/': leader on this node (term " \
          "${SIDE_DIR[$side]}/warren$i/broker.log" 2>/dev/null |
        sed -n 's/.*leader on this node (term \([0-9]*\)).*/\1/p' | sort -n | tail -n 1 || true)
    if [ -n "$t" ] && [ "$t" -gt "$bt" ]; then bt=$t; best="node $i, term $t"; fi
  done
  echo "$best"
}

# ------------------------------------------------------------------------------------------
# Measurements: one JSON object per line in $RESULTS, tagged with side and run.

record() { echo "{\"side\":\"$1\",$2}" >>"$RESULTS"; }

# run_client SIDE RUN SCENARIO TIMEOUT ARGS...: one cluster_bench run, its JSON line recorded
# (or an error). Returns the client's status.
run_client() {
  local side=$1 run=$2 scenario=$3 limit=$4 rc=0 json out t0; shift 4
  out=$WORK/logs/$side-$scenario-$run.log
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$CLUSTER_BENCH_BIN" --nodes "${SIDE_NODES[$side]}" \
    --scenario "$scenario" "$@" >"$out" 2>&1 &
  CLIENT_PID=$!
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  record_client "$side" "$run" "$scenario" "$rc" "$out" "$t0"
  return $rc
}

# T0 (epoch seconds, the client's launch) and now are kept as the run's time window, so the
# report can tell which scenario the events in Warren's logs (peers silent, elections) fell in.
record_client() {   # record_client SIDE RUN SCENARIO STATUS LOG T0
  local side=$1 run=$2 scenario=$3 rc=$4 out=$5 win json
  win="\"t0\":$6,\"t1\":$(date +%s.%N)"
  json=$(grep '^{' "$out" | tail -n 1 || true)
  json=${json#\{}
  json=${json%\}}
  if [ -n "$json" ] && { [ "$rc" -eq 0 ] || [ "$rc" -eq 4 ] || [ "$rc" -eq 5 ]; }; then
    record "$side" "\"run\":$run,\"exit\":$rc,$win,$json"
    [ "$rc" -ne 4 ] || log "  ${SIDE_LABEL[$side]}: $scenario incomplete (see $out)"
    [ "$rc" -ne 5 ] || log "  ${SIDE_LABEL[$side]}: $scenario: publishes came back UNROUTABLE (see $out)"
  else
    record "$side" "\"run\":$run,\"scenario\":\"$scenario\",$win,\"error\":$rc"
    log "  ${SIDE_LABEL[$side]}: $scenario failed with status $rc:"
    tail -n 5 "$out" >&2
  fi
  grep -E '^  (published|consumed|confirm |e2e|left|longest|failover|mark|UNROUTABLE|INCOMPLETE)' "$out" |
    sed "s/^/    [${SIDE_LABEL[$side]}] /" >&2 || true
}

order_for_run() { if [ $(($1 % 2)) -eq 1 ]; then echo "ours rabbitmq"; else echo "rabbitmq ours"; fi; }

QQ_ARGS=(--mode xpub --queue-type quorum --queue-node 1 --publish-node 2 --consume-node 3
         --size 1024 --confirm 100 --prefetch 100 --ack manual)

scenario() {   # scenario NAME DURATION ARGS...
  local name=$1 dur=$2 run side; shift 2
  for run in $(seq "$RUNS"); do
    for side in $(order_for_run "$run"); do
      [ "${SIDE_UP[$side]}" = 1 ] || continue
      run_client "$side" "$run" "$name" $((dur + 150)) "${QQ_ARGS[@]}" --duration "$dur" "$@" || true
    done
  done
}

disk_record() {   # disk_record SIDE PHASE
  local side=$1 phase=$2 i bytes
  for i in 1 2 3; do
    bytes=$(du -sb "$(node_data_dir "$side" "$i")" 2>/dev/null | cut -f1)
    record "$side" "\"scenario\":\"qq-backlog-disk\",\"phase\":\"$phase\",\"node\":$i,\"bytes\":${bytes:-null}"
  done
}

backlog() {   # backlog SIDE
  local side=$1 q=bench-qq-backlog rss=$WORK/logs/$1-backlog-rss.txt t0 t1 t2 rc
  : >"$rss"
  # shellcheck disable=SC2046
  start_rss_sampler "$rss" 0.5 ${SIDE_PIDS[$side]}
  t0=$(date +%s.%N)
  rc=0
  run_client "$side" 1 qq-backlog-publish $((BACKLOG_TIMEOUT + 150)) "${QQ_ARGS[@]}" --queue "$q" \
    --publish-only --count "$BACKLOG" --duration "$BACKLOG_TIMEOUT" || rc=$?
  t1=$(date +%s.%N)
  disk_record "$side" publish
  if [ $rc -eq 0 ] || [ $rc -eq 4 ]; then
    run_client "$side" 1 qq-backlog-drain $((BACKLOG_TIMEOUT + 150)) "${QQ_ARGS[@]}" --queue "$q" \
      --consume-only --duration "$BACKLOG_TIMEOUT" || true
  else
    log "  ${SIDE_LABEL[$side]}: publish phase failed; no drain"
  fi
  t2=$(date +%s.%N)
  stop_rss_sampler
  disk_record "$side" drain
  python3 - "$rss" "$t0" "$t1" "$t2" <<'PY' >>"$RESULTS.$side.rss"
import json, sys
path, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:5])
peak_all, peak_pub = {}, {}
for line in open(path):
    p = line.split()
    if len(p) != 3:
        continue
    t, n, kb = float(p[0]), int(p[1]), int(p[2])
    peak_all[n] = max(peak_all.get(n, 0), kb)
    if t <= t1:
        peak_pub[n] = max(peak_pub.get(n, 0), kb)
print(json.dumps({"scenario": "qq-backlog-rss", "peak_kb": {str(k): v for k, v in sorted(peak_all.items())},
                  "peak_publish_kb": {str(k): v for k, v in sorted(peak_pub.items())},
                  "publish_s": round(t1 - t0, 3), "total_s": round(t2 - t0, 3)}))
PY
  record "$side" "$(sed 's/^{//; s/}$//' "$RESULTS.$side.rss" | tail -n 1)"
  rm -f "$RESULTS.$side.rss"
  log "    [${SIDE_LABEL[$side]}] peak RSS per node: $(tail -n 1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print(", ".join(f"node {k} {v / 1024:.0f} MB" for k, v in r.get("peak_kb", {}).items()))')"
}

# Creates quorum queue Q (one message published through node 1) and prints the node leading it;
# fails (with a log line and, once it exists, an error recorded for SCENARIO) otherwise.
create_and_lead() {   # create_and_lead SIDE Q SCENARIO
  local side=$1 q=$2 sc=$3 leader="" i
  run_client "$side" 1 "$sc-setup" 60 "${QQ_ARGS[@]}" --queue "$q" --publish-only --count 1 \
    --duration 30 >/dev/null 2>&1 || { log "  ${SIDE_LABEL[$side]}: $sc: could not create $q"; return 1; }
  sed -i '$d' "$RESULTS"    # the setup run is not a result
  for i in $(seq 20); do
    leader=$(queue_leader "$side" "$q" 1)
    [ -n "$leader" ] && break
    sleep 0.5
  done
  if [ -z "$leader" ]; then
    record "$side" "\"scenario\":\"$sc\",\"error\":\"leader of $q not found\""
    log "  ${SIDE_LABEL[$side]}: $sc: the leader of $q was not found"; return 1
  fi
  echo "$leader"
}

# Warren: the commit index of quorum queue Q in node I's own replica, or nothing. (Text tools,
# not python: it is polled every 0.1 s on a 2-core machine while the nodes catch up.)
warren_member_commit() {   # warren_member_commit SIDE Q I
  timeout --kill-after=2 10 "$WARRENCTL_BIN" --node "127.0.0.1:$((SIDE_AUX[$1] + $3 - 1))" --cookie "$COOKIE" \
    --json list_queues 2>/dev/null | tr -d '\n ' | grep -o "\"name\":\"$2\"[^}]*" |
    sed -n 's/.*"commit_index":\([0-9][0-9]*\).*/\1/p' | head -n 1 || true
}

# RabbitMQ: an Erlang expression for `rabbitmqctl eval` that polls rabbit_quorum_queue:status/2
# every 50 ms until member NODE's commit index and log index are both >= TARGET (TARGET -1:
# prints the leader's commit index at once), then prints the wall clock (ms) it saw it at. Polls
# for at most 400 s. (Both: a Ra follower takes the leader's commit index as soon as it hears
# from it - 100,009 with its log at 4,229 - so its commit index alone says nothing.)
rmq_catchup_expr() {   # rmq_catchup_expr Q NODE TARGET
  cat <<ERL
Q = <<"$1">>, F = '$2', Target = $3,
Row = fun(Want) -> case catch rabbit_quorum_queue:status(<<"/">>, Q) of
  Rows when is_list(Rows) -> lists:foldl(fun(R, Acc) ->
      N = proplists:get_value(<<"Node Name">>, R), S = proplists:get_value(<<"Raft State">>, R),
      C = proplists:get_value(<<"Commit Index">>, R), L = proplists:get_value(<<"Log Index">>, R),
      Hit = case Want of leader -> S =:= leader; _ -> N =:= F orelse N =:= atom_to_binary(F, utf8) end,
      case Hit andalso is_integer(C) of true -> {C, L}; false -> Acc end end, {-1, -1}, Rows);
  _ -> {-1, -1} end end,
Idx = fun(Want) -> element(1, Row(Want)) end,
Loop = fun Loop(K) -> {C, L} = Row(member),
  if C >= Target, is_integer(L), L >= Target -> {caught_up_at_ms, os:system_time(millisecond), C, L};
     K =< 0 -> {gave_up, C, L};
     true -> timer:sleep(50), Loop(K - 1) end end,
case Target of -1 -> {leader_commit, Idx(leader)}; _ -> Loop(8000) end.
ERL
}

# rabbitmqctl eval on node I without rmq_ctl's 60 s bound.
rmq_eval() {   # rmq_eval SIDE I EXPR
  HOME=${SIDE_DIR[$1]}/node1 RABBITMQ_CONF_ENV_FILE=${SIDE_DIR[$1]}/node1/rabbitmq-env.conf \
    RABBITMQ_USE_LONGNAME=false \
    timeout --kill-after=5 460 "$RMQ_SCRIPTS/rabbitmqctl" -n "bench-$((SIDE_BASE[$1] + $2 - 1))@localhost" eval "$3"
}

catchup() {   # catchup SIDE
  local side=$1 q=bench-qq-catchup leader="" follower other fpid rss=$WORK/logs/$1-catchup-rss.txt out
  local target="" seen="" c t_pause t_cont t_end rc=0 limit evpid fnode
  out=$WORK/logs/$side-qq-catchup-eval.txt
  leader=$(create_and_lead "$side" "$q" qq-catchup) || return 0
  follower=$((leader % 3 + 1))
  other=$((follower % 3 + 1))
  fpid=$(node_pid "$side" "$follower")
  fnode="bench-$((SIDE_BASE[$side] + follower - 1))@localhost"
  log "  ${SIDE_LABEL[$side]}: $q led by node $leader; pausing node $follower, publishing $CATCHUP via node $other"
  : >"$rss"
  # shellcheck disable=SC2046
  start_rss_sampler "$rss" 0.25 ${SIDE_PIDS[$side]}
  t_pause=$(date +%s.%N)
  kill -STOP "$fpid"
  run_client "$side" 1 qq-catchup-publish $((BACKLOG_TIMEOUT + 150)) "${QQ_ARGS[@]}" --queue "$q" \
    --queue-node "$leader" --publish-node "$other" --consume-node "$other" \
    --publish-only --count "$CATCHUP" --duration "$BACKLOG_TIMEOUT" || rc=$?
  case "${SIDE_KIND[$side]}" in
    warren) target=$(warren_member_commit "$side" "$q" "$leader") ;;
    rabbitmq) target=$(rmq_eval "$side" "$leader" "$(rmq_catchup_expr "$q" "$fnode" -1)" 2>/dev/null |
                       sed -n 's/.*leader_commit, *\([0-9][0-9]*\).*/\1/p') ;;
  esac
  if [ -z "$target" ]; then
    kill -CONT "$fpid"
    stop_rss_sampler
    record "$side" "\"scenario\":\"qq-catchup\",\"error\":\"the leader's commit index was not found\""
    log "  ${SIDE_LABEL[$side]}: catch-up: the leader's commit index was not found"; return 0
  fi
  evpid=""
  if [ "${SIDE_KIND[$side]}" = rabbitmq ]; then
    rmq_eval "$side" "$leader" "$(rmq_catchup_expr "$q" "$fnode" "$target")" >"$out" 2>&1 &
    evpid=$!
    sleep 3    # the CLI is up and polling (the paused member answers nothing yet)
  fi
  t_cont=$(date +%s.%N)
  kill -CONT "$fpid"
  case "${SIDE_KIND[$side]}" in
    warren)
      limit=$((SECONDS + 400))
      while [ $SECONDS -lt $limit ]; do
        c=$(warren_member_commit "$side" "$q" "$follower")
        if [ -n "$c" ] && [ "$c" -ge "$target" ]; then seen=$(date +%s.%N); break; fi
        sleep 0.1
      done ;;
    rabbitmq)
      wait "$evpid" || true
      c=$(sed -n 's/.*caught_up_at_ms, *\([0-9][0-9]*\).*/\1/p' "$out")
      [ -z "$c" ] || seen=$(python3 -c "print($c / 1000)") ;;
  esac
  t_end=$(date +%s.%N)
  sleep 0.5
  stop_rss_sampler
  python3 - "$rss" "$t_pause" "$t_cont" "$t_end" "${seen:-}" "$leader" "$follower" "$CATCHUP" "$target" <<'PY' >>"$RESULTS.$side.cu"
import json, sys
path, t_pause, t_cont, t_end = sys.argv[1], *map(float, sys.argv[2:5])
seen = float(sys.argv[5]) if sys.argv[5] else None
leader, follower, n, target = (int(x) for x in sys.argv[6:10])
peak = {}
for line in open(path):
    p = line.split()
    if len(p) == 3 and t_pause <= float(p[0]) <= t_end + 0.5:
        peak[int(p[1])] = max(peak.get(int(p[1]), 0), int(p[2]))
print(json.dumps({"scenario": "qq-catchup", "messages": n, "leader": leader, "follower": follower,
                  "target_commit": target, "paused_s": round(t_cont - t_pause, 3),
                  "catchup_s": round(seen - t_cont, 3) if seen is not None else None,
                  "leader_peak_kb": peak.get(leader), "follower_peak_kb": peak.get(follower)}))
PY
  record "$side" "$(sed 's/^{//; s/}$//' "$RESULTS.$side.cu" | tail -n 1)"
  rm -f "$RESULTS.$side.cu"
  log "    [${SIDE_LABEL[$side]}] $(tail -n 1 "$RESULTS")"
  case "${SIDE_KIND[$side]}" in
    warren) timeout 60 "$WARRENCTL_BIN" --node "127.0.0.1:$((SIDE_AUX[$side] + leader - 1))" --cookie "$COOKIE" \
              delete_queue "$q" >/dev/null 2>&1 || true ;;
    rabbitmq) rmq_ctl "$side" "$leader" delete_queue "$q" >/dev/null 2>&1 || true ;;
  esac
}

failover() {   # failover SIDE
  local side=$1 q=bench-qq-failover leader pub con out rc=0 pid kill_ns i limit new t0
  # Create the queue first so that its leader is known before the stream starts, then
  # publish through one non-leader and consume through the other.
  leader=$(create_and_lead "$side" "$q" qq-failover) || return 0
  case $leader in 1) pub=2 con=3 ;; 2) pub=3 con=1 ;; 3) pub=1 con=2 ;; esac
  pid=$(node_pid "$side" "$leader")
  [ -n "$pid" ] || { log "  ${SIDE_LABEL[$side]}: failover: no PID for node $leader"; return 0; }
  log "  ${SIDE_LABEL[$side]}: $q led by node $leader (PID $pid); publishing via node $pub at $FAILOVER_RATE msg/s, consuming via node $con"
  out=$WORK/logs/$side-qq-failover-1.log
  t0=$(date +%s.%N)
  # No `timeout` wrapper: the client must receive SIGUSR1 itself. It ends by its own --duration
  # (+ at most 30 s for missing confirms + 60 s for stuck threads); bounded below as well.
  "$CLUSTER_BENCH_BIN" --nodes "${SIDE_NODES[$side]}" --scenario qq-failover --mode xpub \
    --queue-type quorum --queue "$q" --queue-node "$leader" --publish-node "$pub" \
    --consume-node "$con" --size 1024 --confirm 100 --prefetch 100 --ack manual \
    --rate "$FAILOVER_RATE" --report-gaps --keep-queue --duration $((FAILOVER_BEFORE + FAILOVER_AFTER)) \
    >"$out" 2>&1 &
  CLIENT_PID=$!
  sleep "$FAILOVER_BEFORE"
  if ! kill -0 "$CLIENT_PID" 2>/dev/null; then
    wait "$CLIENT_PID" || rc=$?
    CLIENT_PID=""
    record_client "$side" 1 qq-failover "$rc" "$out" "$t0"
    return 0
  fi
  kill -KILL "$pid"
  kill -USR1 "$CLIENT_PID" 2>/dev/null || true
  kill_ns=$(date +%s%N)
  log "  ${SIDE_LABEL[$side]}: killed node $leader (SIGKILL) at $(date -d @"${kill_ns:0:10}" +%H:%M:%S).${kill_ns:10:3}"
  limit=$((SECONDS + FAILOVER_AFTER + 120))
  while kill -0 "$CLIENT_PID" 2>/dev/null && [ $SECONDS -lt $limit ]; do sleep 0.2; done
  kill -KILL "$CLIENT_PID" 2>/dev/null || true
  wait "$CLIENT_PID" || rc=$?
  CLIENT_PID=""
  record_client "$side" 1 qq-failover "$rc" "$out" "$t0"
  new=""
  case "${SIDE_KIND[$side]}" in
    warren) new=$(warren_leader_term "$side" "$q") ;;
    rabbitmq)
      for i in 1 2 3; do
        [ "$i" = "$leader" ] && continue
        new=$(queue_leader "$side" "$q" "$i")
        if [ -n "$new" ]; then new="node $new"; break; fi
      done ;;
  esac
  record "$side" "\"scenario\":\"qq-failover-nodes\",\"killed\":$leader,\"publish_node\":$pub,\"consume_node\":$con,\"new_leader\":\"${new:-unknown}\""
  log "    [${SIDE_LABEL[$side]}] new leader: ${new:-unknown}"
}

# ------------------------------------------------------------------------------------------

COOKIE=$(head -c 24 /dev/urandom | od -An -tx1 | tr -dc 0-9a-f)
define_side ours warren "Warren"
warren_version=${BENCH_WARREN_VERSION:-"git $(git -C "$REPO" log -1 --format='%h, %cd' --date=short 2>/dev/null || echo unknown)"}
if [ -n "$(git -C "$REPO" status --porcelain -- broker amqp091 raft cmd mgmt 2>/dev/null | head -n 1)" ]; then
  warren_version="$warren_version, with uncommitted changes in the working tree"
fi
[ -x "$WARREN_BIN" ] && warren_version="$warren_version; binary built $(date -r "$WARREN_BIN" '+%Y-%m-%d %H:%M %Z')"
define_side rabbitmq rabbitmq "RabbitMQ"
started_at=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "work dir $WORK; scenarios: $SCENARIOS; ${RUNS} run(s) of ${DURATION}s; backlog $BACKLOG; hard limit ${MAX_SECONDS}s; load $LOAD_START"

log "starting the clusters"
# BENCH_SIDES=ours: Warren alone (tuning runs; write the report elsewhere with BENCH_OUT).
case " ${BENCH_SIDES:-ours rabbitmq} " in *" rabbitmq "*) start_rabbitmq_side rabbitmq ;; esac
start_warren_side ours
if [ "${SIDE_UP[ours]}" != 1 ]; then
  log "  ${SIDE_LABEL[ours]}: ${SIDE_NOTE[ours]}"
  log "  measuring RabbitMQ alone"
fi

for s in $SCENARIOS; do
  case $s in
    qq-1) log "qq-1: one quorum queue, 1 publisher (node 2) / 1 consumer (node 3)"
          scenario qq-1 "$DURATION" --queue bench-qq1 ;;
    qq-4) log "qq-4: one quorum queue, 4 publishers / 4 consumers"
          scenario qq-4 "$DURATION" --queue bench-qq4 --producers 4 --consumers 4 ;;
    qq-10) log "qq-10: 10 quorum queues, 10 publishers / 10 consumers (one of each per queue)"
           scenario qq-10 "$DURATION" --queue bench-qq10 --queues 10 --producers 10 --consumers 10 ;;
    qq-lat) log "qq-lat: one quorum queue 1/1, publisher paced at $LAT_RATE msg/s"
            scenario qq-lat "$LAT_DURATION" --queue bench-qq-lat --rate "$LAT_RATE" ;;
  esac
done
# Once per cluster, each scenario on both before the next: run_per_side SCENARIO FUNCTION TEXT.
run_per_side() {
  local sc=$1 fn=$2 text=$3 side
  case " $SCENARIOS " in *" $sc "*) ;; *) return 0 ;; esac
  for side in ours rabbitmq; do
    [ "${SIDE_UP[$side]}" = 1 ] || continue
    log "$sc (${SIDE_LABEL[$side]}): $text"
    "$fn" "$side"
  done
}
run_per_side qq-backlog backlog "$BACKLOG messages published with no consumer, then drained"
run_per_side qq-catchup catchup "a follower paused while $CATCHUP messages are published, then resumed"
run_per_side qq-failover failover "kill -9 of the queue's leader under a confirmed stream"

# Keep the node logs of interest (Warren's) before the clusters go.
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
stop_side ours
stop_side rabbitmq
log "measurements done in $((SECONDS - started_at)) s; load average $LOAD_END"

# ------------------------------------------------------------------------------------------
# Report: a table on stdout and the "Quorum queues (issue 6)" section of the markdown file.

OUT=${BENCH_OUT:-$REPO/docs/performance.md}

OURS_LABEL=${SIDE_LABEL[ours]} OURS_NOTE=${SIDE_NOTE[ours]} WARREN_VERSION=$warren_version \
RABBITMQ_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown) \
ERLANG_VERSION=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown) \
LIBRABBITMQ_VERSION=$(pkg-config --modversion librabbitmq 2>/dev/null || echo unknown) \
BENCH_DURATION=$DURATION BENCH_RUNS=$RUNS BENCH_LAT_RATE=$LAT_RATE BENCH_LAT_DURATION=$LAT_DURATION \
BENCH_BACKLOG=$BACKLOG BENCH_CATCHUP=$CATCHUP BENCH_FAILOVER_RATE=$FAILOVER_RATE BENCH_FAILOVER_BEFORE=$FAILOVER_BEFORE \
WARREN_DIR=${SIDE_DIR[ours]} BENCH_QUICK=$quick BENCH_ELAPSED=$((SECONDS - started_at)) LOAD_START=$LOAD_START LOAD_END=$LOAD_END \
python3 - "$RESULTS" "$OUT" <<'PY'
import json, os, platform, statistics, sys, time

results_path, out_path = sys.argv[1], sys.argv[2]
env = os.environ
rows = [json.loads(line) for line in open(results_path) if line.strip()]
ours_label = env["OURS_LABEL"]
ours_note = env.get("OURS_NOTE", "")
HEADING = "## Quorum queues (issue 6)"
BEGIN = "<!-- qq_run.sh: begin (this section is rewritten by tests/bench/qq_run.sh) -->"
END = "<!-- qq_run.sh: end -->"
SIDES = ("ours", "rabbitmq")


def ok_runs(side, scenario):
    return [r for r in rows if r["side"] == side and r.get("scenario") == scenario
            and "error" not in r]


def median(side, scenario, key):
    vals = [r[key] for r in ok_runs(side, scenario) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def one(side, scenario):
    runs = ok_runs(side, scenario)
    return runs[-1] if runs else None


def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit == "MB":
        return f"{v:,.1f} MB"
    if unit == "ms" and v >= 100:
        return f"{v:,.0f} ms"
    if unit == "ms":
        return f"{v:.2f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    return f"{v:,.0f} {unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(r):
    if r is None:
        return ""
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


lines = []


def row(scenario, metric, ours, theirs, unit, target="", check=None):
    r = ratio(ours, theirs)
    met = ""
    if check is not None:
        met = "n/a" if (ours is None or (theirs is None and check.__code__.co_argcount > 1)) else (
            "yes" if check(ours, theirs) else "NO")
    lines.append([scenario, metric, fmt(ours, unit), fmt(theirs, unit), fmt_ratio(r), target, met])


for sc, label in (("qq-1", "1 queue, 1/1"), ("qq-4", "1 queue, 4/4"), ("qq-10", "10 queues, 10/10")):
    if not any(r.get("scenario") == sc for r in rows):
        continue
    m = {s: {k: median(s, sc, k) for k in ("consumed_per_s", "published_per_s", "confirm_p99_ms", "p99_ms")}
         for s in SIDES}
    row(sc, f"{label}: consumed (end-to-end)", m["ours"]["consumed_per_s"], m["rabbitmq"]["consumed_per_s"],
        "msg/s", ">= 3x", lambda a, b: a >= 3 * b)
    row(sc, f"{label}: published and confirmed", m["ours"]["published_per_s"], m["rabbitmq"]["published_per_s"], "msg/s")
    row(sc, "confirm latency p99", m["ours"]["confirm_p99_ms"], m["rabbitmq"]["confirm_p99_ms"], "ms")
    row(sc, "end-to-end latency p99", m["ours"]["p99_ms"], m["rabbitmq"]["p99_ms"], "ms")

if any(r.get("scenario") == "qq-lat" for r in rows):
    m = {s: {k: median(s, "qq-lat", k) for k in ("published_per_s", "confirm_p50_ms", "confirm_p99_ms", "p50_ms", "p99_ms")}
         for s in SIDES}
    rate = env["BENCH_LAT_RATE"]
    row("qq-lat", f"confirmed rate (paced at {int(rate):,} msg/s)", m["ours"]["published_per_s"], m["rabbitmq"]["published_per_s"], "msg/s")
    row("qq-lat", "confirm latency p50", m["ours"]["confirm_p50_ms"], m["rabbitmq"]["confirm_p50_ms"], "ms")
    row("qq-lat", "confirm latency p99", m["ours"]["confirm_p99_ms"], m["rabbitmq"]["confirm_p99_ms"], "ms",
        "<= 0.5x", lambda a, b: a <= 0.5 * b)
    row("qq-lat", "end-to-end latency p50", m["ours"]["p50_ms"], m["rabbitmq"]["p50_ms"], "ms")
    row("qq-lat", "end-to-end latency p99", m["ours"]["p99_ms"], m["rabbitmq"]["p99_ms"], "ms",
        "<= 0.5x", lambda a, b: a <= 0.5 * b)

backlog_n = int(env["BENCH_BACKLOG"])
if any(r.get("scenario", "").startswith("qq-backlog") for r in rows):
    pub = {s: one(s, "qq-backlog-publish") for s in SIDES}
    drn = {s: one(s, "qq-backlog-drain") for s in SIDES}
    rss = {s: one(s, "qq-backlog-rss") for s in SIDES}
    row("qq-backlog", f"publish {backlog_n:,} with confirms, no consumer",
        *(pub[s]["published_per_s"] if pub[s] else None for s in SIDES), "msg/s", ">= 3x", lambda a, b: a >= 3 * b)
    row("qq-backlog", "drain with manual ack", *(drn[s]["consumed_per_s"] if drn[s] else None for s in SIDES), "msg/s",
        ">= 3x", lambda a, b: a >= 3 * b)

    def peak(s, key, node=None):
        d = (rss[s] or {}).get(key) or {}
        v = max(d.values()) if node is None and d else d.get(str(node))
        return v / 1024 if v is not None else None

    for node in (1, 2, 3):
        row("qq-backlog", f"peak RSS node {node}" + (" (leader)" if node == 1 else ""),
            peak("ours", "peak_kb", node), peak("rabbitmq", "peak_kb", node), "MB")
    row("qq-backlog", "peak RSS, largest node", peak("ours", "peak_kb"), peak("rabbitmq", "peak_kb"), "MB",
        "<= 1/3 (0.33x)", lambda a, b: a <= b / 3)

    def disk(s, phase, node=None):
        v = [r["bytes"] for r in rows if r["side"] == s and r.get("scenario") == "qq-backlog-disk"
             and r["phase"] == phase and (node is None or r["node"] == node) and r.get("bytes") is not None]
        return sum(v) / 1e6 if v else None

    for node in (1, 2, 3):
        row("qq-backlog", f"disk used after publishing, node {node}", disk("ours", "publish", node),
            disk("rabbitmq", "publish", node), "MB")
    row("qq-backlog", "disk used after publishing, 3 nodes", disk("ours", "publish"), disk("rabbitmq", "publish"), "MB")
    row("qq-backlog", "disk used after the drain, 3 nodes", disk("ours", "drain"), disk("rabbitmq", "drain"), "MB")

cu = {s: one(s, "qq-catchup") for s in SIDES}
if any(cu.values()):
    n = next(r["messages"] for r in cu.values() if r)
    row("qq-catchup", f"follower paused for {n:,} publishes: resume to caught up",
        *((cu[s] or {}).get("catchup_s") for s in SIDES), "s")
    for who in ("leader", "follower"):
        row("qq-catchup", f"peak RSS from the pause to caught up, {who}",
            *(((cu[s] or {}).get(f"{who}_peak_kb") or 0) / 1024 or None for s in SIDES), "MB")

fo = {s: one(s, "qq-failover") for s in SIDES}
fo_err = {s: [r for r in rows if r["side"] == s and r.get("scenario") == "qq-failover" and "error" in r] for s in SIDES}
fo_nodes = {s: next((r for r in rows if r["side"] == s and r.get("scenario") == "qq-failover-nodes"), None) for s in SIDES}
if any(fo.values()) or any(fo_err.values()):
    f = {s: (fo[s] or {}).get("failover_ms") for s in SIDES}
    row("qq-failover", "leader kill to first new confirm", f["ours"], f["rabbitmq"], "ms",
        "<= 2 s and < RabbitMQ", lambda a, b: a <= 2000 and a < b)
    row("qq-failover", "longest interval without a confirm", *((fo[s] or {}).get("max_gap_ms") for s in SIDES), "ms")
    cells = []
    for s in SIDES:
        r = fo[s]
        if not r:
            cells.append("failed" if fo_err[s] else "n/a")
            continue
        left = r.get("left")
        verdict = "ok" if left is not None and r["consumed"] + left >= r["acked"] else "CHECK"
        cells.append(f"{r['acked']:,} confirmed, {r['consumed']:,} consumed + {left if left is not None else '?'} left, "
                     f"{r['nacked']} nacked: {verdict}")
    lines.append(["qq-failover", "confirmed <= consumed + left (count check)", cells[0], cells[1], "", "", ""])

headers = ["Scenario", "Metric", ours_label, "RabbitMQ", "Ratio", "Target", "Met"]
widths = [max(len(str(x[i])) for x in [headers] + lines) for i in range(len(headers))]
print()
for r in [headers] + lines:
    print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
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
caveats = []
for r in rows:
    if "error" in r:
        caveats.append(f"{side_label[r['side']]} {r.get('scenario')}: failed ({r['error']})")
    elif r.get("exit") == 4:
        caveats.append(f"{side_label[r['side']]} {r.get('scenario')}: incomplete (count not reached in time)")
    elif r.get("exit") == 5:
        caveats.append(f"{side_label[r['side']]} {r.get('scenario')}: publishes came back unroutable")
caveats = sorted(set(caveats))

# Warren's node logs: peers found silent / down and elections, by the scenario they fell in
# (the failover scenario's own kill excepted).
import re
windows = [(r["t0"], r["t1"], r.get("scenario")) for r in rows if r["side"] == "ours" and "t0" in r]
events = {}
wdir = env.get("WARREN_DIR", "")
for i in (1, 2, 3):
    try:
        f = open(os.path.join(wdir, f"warren{i}", "broker.log"), errors="replace")
    except OSError:
        continue
    for line in f:
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d+)? ", line)
        if not m:
            continue
        t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + float(m.group(2) or 0)
        sc = next((w[2] for w in windows if w[0] <= t <= w[1] + 2), None)
        if sc is None or sc in ("qq-failover", "qq-catchup-publish"):  # a node killed / paused on purpose
            continue
        e = events.setdefault(sc, {"silent": [], "down": 0, "elections": 0, "meta": 0})
        s_ = re.search(r"silent for ([0-9.]+) s", line)
        if s_:
            e["silent"].append(float(s_.group(1)))
        if re.search(r"peer node .* is down", line):
            e["down"] += 1
        t_ = re.search(r"leader on this node \(term (\d+)\)", line)
        if t_ and int(t_.group(1)) > 1:
            e["elections"] += 1
        if "is now the metadata leader" in line:
            e["meta"] += 1
for sc, e in sorted(events.items()):
    if not (e["silent"] or e["down"] or e["elections"] or e["meta"]):
        continue
    parts = []
    if e["silent"]:
        parts.append(f"peers found silent for {min(e['silent']):.1f}-{max(e['silent']):.1f} s "
                     f"({len(e['silent'])} time(s))")
    if e["down"]:
        parts.append(f"{e['down']} peer-down event(s)")
    if e["elections"]:
        parts.append(f"{e['elections']} quorum queue re-election(s)")
    if e["meta"]:
        parts.append("a new metadata leader")
    caveats.append(f"{ours_label} {sc}: node logs show " + ", ".join(parts) + " (no node was killed)")

md = [HEADING, BEGIN, ""]
md.append("Written by `tests/bench/qq_run.sh` (`make bench-qq`), which replaces only this section; "
          "do not edit the figures by hand.\n")
if env.get("BENCH_QUICK") == "1":
    md.append("> **Quick run** (`--quick`): short scenarios, one run each, smaller backlog; "
              "the full run is `make bench-qq`.\n")
if ours_note:
    md.append(f"> **Warren: {ours_note}.** Only RabbitMQ's figures were measured.\n")
md.append("### Setup\n")
md.append(f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}")
md.append(f"- Machine: {os.cpu_count()} CPUs ({cpu_model}), {mem_gb:.0f} GB RAM, "
          f"Linux {platform.release()}; six broker nodes and the client share it; load average "
          f"(1/5/15 min) {env['LOAD_START']} at the start, {env['LOAD_END']} at the end (other "
          "work on the machine included)")
md.append(f"- {ours_label}: {env['WARREN_VERSION']}" + (" (not measured)" if ours_note else
          ", three `warren-server` processes clustered through `cluster_formation.classic_config`"))
md.append(f"- RabbitMQ: {env['RABBITMQ_VERSION']} (Debian package, stock configuration, no "
          f"plugins), Erlang {env['ERLANG_VERSION']}; three nodes joined with "
          "`rabbitmqctl join_cluster` (`tests/bench/rabbitmq_cluster.sh`)")
md.append(f"- Client: `tests/bench/cluster_bench.c` over librabbitmq {env['LIBRABBITMQ_VERSION']}")
md.append(f"- qq-1/4/10: {env['BENCH_DURATION']} s per run, median of {env['BENCH_RUNS']} run(s); "
          f"qq-lat: {env['BENCH_LAT_DURATION']} s per run, median of {env['BENCH_RUNS']}; "
          f"alternating which cluster goes first; qq-backlog ({backlog_n:,} messages), qq-catchup and "
          f"qq-failover once per cluster; total {env['BENCH_ELAPSED']} s\n")
if caveats:
    md.append("**Caveats:** " + "; ".join(caveats) + ".\n")
md.append("### Results\n")
md.append("| " + " | ".join(headers) + " |")
md.append("|" + "|".join("---" for _ in headers) + "|")
for r in lines:
    md.append("| " + " | ".join(r) + " |")
md.append("")
nodes_note = []
for s in SIDES:
    n = fo_nodes[s]
    if n:
        nodes_note.append(f"{side_label[s]}: killed node {n['killed']} (the leader), published via node "
                          f"{n['publish_node']}, consumed via node {n['consume_node']}, new leader "
                          f"{n['new_leader']}")
md.append("Ratio is Warren / RabbitMQ; \"Met\" compares it with issue 6's target." +
          (" Failover: " + "; ".join(nodes_note) + "." if nodes_note else "") + "\n")
md.append("### Method\n")
md.append(f"""- Every queue is a quorum queue (`x-queue-type: quorum`, three members: both brokers'
  default initial group size) declared through node 1, which leads it (Warren places the
  leader on the declaring node; RabbitMQ 3.10's default leader locator is client-local).
  Messages are 1 KB, persistent, published through node 2 with publisher confirms (at most
  100 unconfirmed per publisher) and consumed through node 3 with prefetch 100 and one
  basic.ack per message, so every message crosses the cluster twice and a confirm needs it
  on a majority of the members. Throughput targets use the end-to-end (consumed) rate.
- **qq-1 / qq-4 / qq-10**: one queue with 1 publisher and 1 consumer; one queue with 4 and 4;
  ten queues with one publisher and one consumer each. Not paced: publishers keep their
  confirm window full.
- **qq-lat**: one queue, one publisher paced at {int(env['BENCH_LAT_RATE']):,} msg/s (open loop:
  message k is due at start + k/rate), one consumer. Confirm latency is publish to basic.ack;
  end-to-end latency is publish to delivery (a CLOCK_MONOTONIC stamp in the body).
- **qq-backlog**: {backlog_n:,} messages published by one publisher with no consumer
  (`--publish-only`), then drained by one consumer (`--consume-only`, until the count the
  passive declare found). VmRSS of each node's process (`warren-server`, `beam.smp`) is read
  from `/proc/<pid>/status` every 0.5 s over both phases; disk used is `du -sb` of each node's
  data directory (Warren's `data_dir`, RabbitMQ's mnesia directory) right after the publish
  phase and right after the drain.
- **qq-catchup**: the queue's leader is found as in qq-failover; the next node (a follower) is
  paused with SIGSTOP while {int(env['BENCH_CATCHUP']):,} messages are published through the
  third node (no consumer), then resumed with SIGCONT. Caught up = that follower's own commit
  index reaches the leader's at the resume: Warren's from `warrenctl --json list_queues` on
  that node (polled every 0.1 s; Warren's commit index never passes the member's own log),
  RabbitMQ's commit index and log index from `rabbit_quorum_queue:status/2` (the rows of
  `rabbitmq-queues quorum_status`) polled every 50 ms by a `rabbitmqctl eval` on the leader
  node (a Ra follower's commit index is the leader's as soon as it hears from it, whatever its
  log holds). RabbitMQ's log is not compacted while nothing is consumed, so its follower gets
  the log; Warren's leader compacted past the follower, which gets a snapshot without bodies,
  fetches the bodies it lacks and writes them durably before it installs the snapshot. Peak VmRSS is sampled every 0.25 s from the pause to the catch-up.
- **qq-failover** (run last on each cluster; the killed node stays down): one publisher paced
  at {int(env['BENCH_FAILOVER_RATE']):,} msg/s (window 100) through a node that does not lead
  the queue, one consumer on the third node. After {env['BENCH_FAILOVER_BEFORE']} s the
  leader's process gets SIGKILL and the client SIGUSR1; the figure is the time from that
  signal to the first basic.ack that ends the longest confirm gap after it (the first new
  confirm). Warren's leader is the node whose log has the highest-term "quorum queue '<q>' in
  vhost '/': leader on this node (term N)"; RabbitMQ's is `rabbitmqctl list_queues name
  leader`. The count check only says no confirmed message is missing in total (confirmed <=
  consumed + left in the queue at the end); it does not identify messages.
- The nodes listen on 127.0.0.1 with private data directories; the client and both clusters
  share the CPUs, so compare ratios within one run. Warren's nodes serve their management API
  on private ports (it cannot be switched off); RabbitMQ's nodes run without plugins.
""")
md.append("Reproduce: `make bench-qq` (full, about 20 minutes) or `tests/bench/qq_run.sh --quick`; "
          "`BENCH_SCENARIOS=\"qq-1 qq-lat\" tests/bench/qq_run.sh` runs a subset; see `tests/bench/README.md`.")
md.append(END)
section = "\n".join(md).split("\n")


def replace_section(lines, section):
    """Replaces our section (heading .. end marker; without an end marker, up to the next
    "## " heading) or appends it; drops stray markers of ours elsewhere."""
    begin_tag, end_tag = BEGIN.split(" (")[0], END
    start = next((i for i, l in enumerate(lines) if l.startswith(HEADING)), None)
    if start is not None:
        nxt = next((i for i in range(start + 2, len(lines)) if lines[i].startswith("## ")), len(lines))
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
lines_out = replace_section(text.split("\n"), section)
text = "\n".join(lines_out).rstrip("\n") + "\n"
os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
with open(out_path, "w") as f:
    f.write(text)
print(f"Quorum queues section written to {out_path}")
PY
