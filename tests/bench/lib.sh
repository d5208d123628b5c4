# lib.sh - shell helpers shared by tests/bench/run.sh and tests/bench/cluster_run.sh (sourced;
# the caller defines die and log).

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Ports come from 20000-31999, below Linux's ephemeral range (32768+), so an outgoing
# connection elsewhere on the machine cannot be holding a port we are about to listen on; no
# port is handed out twice in one run.
USED_PORTS=" "
pick_block() {   # pick_block N -> PICKED_PORT, the first of N consecutive free ports
  local n=$1 p i k ok
  for i in $(seq 500); do
    p=$((20000 + RANDOM % (12000 - n)))
    ok=1
    for k in $(seq 0 $((n - 1))); do
      case "$USED_PORTS" in *" $((p + k)) "*) ok=0; break ;; esac
      if port_in_use $((p + k)); then ok=0; break; fi
    done
    if [ $ok = 1 ]; then
      for k in $(seq 0 $((n - 1))); do USED_PORTS="$USED_PORTS$((p + k)) "; done
      PICKED_PORT=$p
      return 0
    fi
  done
  die "no block of $n free ports found"
}
pick_port() { pick_block 1; }

# start_watchdog SECONDS LABEL: past SECONDS, SIGTERM this script (its traps then stop what it
# started). Sets WATCHDOG_PID; kill it on the way out.
start_watchdog() {
  local limit=$1 label=$2 main_pid=$$
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$limit" & sleeper=$!
    wait "$sleeper"
    echo "[$label] hard limit of ${limit}s reached, stopping" >&2
    kill -TERM "$main_pid"
  ) &
  WATCHDOG_PID=$!
}

# start_rss_sampler OUT INTERVAL PID...: every INTERVAL seconds appends one line
# "<epoch seconds> <n> <VmRSS kB>" per PID still alive (n: its 1-based position in the list)
# to OUT, until killed (stop_rss_sampler). Sets RSS_SAMPLER_PID.
start_rss_sampler() {
  local out=$1 interval=$2
  shift 2
  (
    trap 'exit 0' TERM
    while :; do
      now=$(date +%s.%N)
      n=0
      for pid in "$@"; do
        n=$((n + 1))
        kb=$(awk '/^VmRSS:/ {print $2; exit}' "/proc/$pid/status" 2>/dev/null || true)
        [ -z "$kb" ] || echo "$now $n $kb"
      done >>"$out"
      sleep "$interval"
    done
  ) &
  RSS_SAMPLER_PID=$!
}
stop_rss_sampler() {
  [ -n "${RSS_SAMPLER_PID:-}" ] || return 0
  kill "$RSS_SAMPLER_PID" 2>/dev/null || true
  wait "$RSS_SAMPLER_PID" 2>/dev/null || true
  RSS_SAMPLER_PID=""
}
