#!/usr/bin/env bash
# tests/bench/docker_bench.sh - issue 8's deployment figures (make bench-docker):
#   - image size (on disk, as `docker images` shows it, and gzip-compressed as a registry would
#     transfer it: `docker save | gzip`), and how long the image takes to build;
#   - time from `docker compose up -d` to a cluster of three nodes that take AMQP logins, and to
#     three containers Docker reports healthy;
#   - the longest pause between two publisher confirms during a rolling restart of the three
#     nodes under a steady confirmed publish + consume load (quorum queue).
# It runs tests/docker/test_compose.py (which measures all of this while it tests) and writes
# the "Deployment (issue 8)" section of docs/performance.md (BENCH_OUT to write elsewhere).
#
#   BENCH_NOCACHE=1   also time a build without Docker's layer cache (apt + compile; minutes)
#   BENCH_RUNS=N      run the compose suite N times (default 1); the report gives each run
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${BENCH_OUT:-$REPO/docs/performance.md}
RUNS=${BENCH_RUNS:-1}
IMAGE=${WARREN_TEST_IMAGE:-warren:test}
work=$(mktemp -d "${TMPDIR:-/tmp}/warren-docker-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
log() { echo "docker-bench: $*" >&2; }

docker info >/dev/null 2>&1 || { log "no Docker engine answers: nothing to measure"; exit 1; }
cd "$REPO"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)

"$REPO/deploy/build-base.sh"
nocache_s=""
if [ "${BENCH_NOCACHE:-0}" = 1 ]; then
  log "building $IMAGE without the layer cache"
  t=$(date +%s.%N)
  docker build -q --no-cache -f deploy/Dockerfile -t "$IMAGE" . >/dev/null
  nocache_s=$(echo "$(date +%s.%N) - $t" | bc)
fi
t=$(date +%s.%N)
docker build -q -f deploy/Dockerfile -t "$IMAGE" . >/dev/null
cached_s=$(echo "$(date +%s.%N) - $t" | bc)
docker image prune -f --filter label=org.warren.stage --filter until=2h >/dev/null || true  # old stage images
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
gz=$(docker save "$IMAGE" | gzip -6 | wc -c)
base_size=$(docker image inspect -f '{{.Size}}' debian:bookworm-slim)
log "image $IMAGE: $size bytes on disk, $gz bytes gzip-compressed"

for i in $(seq 1 "$RUNS"); do
  log "compose suite run $i/$RUNS"
  WARREN_TEST_NO_BUILD=1 WARREN_TEST_IMAGE="$IMAGE" WARREN_DOCKER_FIGURES="$work/run$i" \
    python3 -m pytest -q -s -p no:cacheprovider tests/docker/test_compose.py 2>&1 | tee "$work/log$i" | grep '^\[docker\]' >&2 || true
  [ -s "$work/run$i" ] || { tail -40 "$work/log$i" >&2; log "run $i produced no figures"; exit 1; }
  grep -q ' passed' "$work/log$i" && ! grep -qE ' (failed|error)' "$work/log$i" || { tail -40 "$work/log$i" >&2; log "run $i failed"; exit 1; }
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$OUT" "$work" "$RUNS" "$size" "$gz" "$base_size" "$cached_s" "$nocache_s" "$load_start" "$load_end" \
  "$(git -C "$REPO" rev-parse --short HEAD)" "$(docker version -f '{{.Server.Version}}' 2>/dev/null)" \
  "$( (docker compose version --short 2>/dev/null || docker-compose version --short 2>/dev/null) | head -1)" \
  "$(( $(date +%s) - t_start ))" <<'PY'
import os, sys, time
(out, work, runs, size, gz, base_size, cached_s, nocache_s, load_start, load_end, rev, engine,
 compose, total_s) = sys.argv[1:]
runs = int(runs)
figs = []
for i in range(1, runs + 1):
    d = {}
    for line in open(os.path.join(work, f"run{i}")):
        k, _, v = line.strip().partition("=")
        d[k] = float(v)
    figs.append(d)
size, gz, base_size = int(size), int(gz), int(base_size)
mb = lambda b: f"{b / 1e6:.1f} MB"
def col(key, fmt="{:.1f} s"):
    return ", ".join(fmt.format(f[key]) for f in figs)
worst = lambda key: max(f[key] for f in figs)
ncpu = os.cpu_count()

HEADING = "## Deployment (issue 8)"
BEGIN = "<!-- docker_bench.sh: begin (this section is rewritten by tests/bench/docker_bench.sh) -->"
END = "<!-- docker_bench.sh: end -->"
md = [HEADING, BEGIN, "",
      "Written by `tests/bench/docker_bench.sh` (`make bench-docker`), which replaces only this section; "
      "do not edit the figures by hand.", "",
      "### Setup", "",
      f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; Warren git {rev}",
      f"- Machine: {ncpu} CPUs shared with other work (load average {load_start} at the start, {load_end} at the end); "
      f"Docker Engine {engine} (fuse-overlayfs storage), compose {compose}",
      "- Image: `deploy/Dockerfile` (multi-stage from `debian:bookworm-slim`; the final image holds the two "
      "binaries, the shared libraries they load, dash and the entrypoint); the base image here was made by "
      "`deploy/build-base.sh` (no registry reachable)",
      "- Cluster: `deploy/docker-compose.yml`, three nodes, inter-node TLS with peer verification, health check "
      "`warrenctl await_startup` every 3 s; runs of `tests/docker/test_compose.py` measure it "
      f"({runs} run(s); all figures per run)", "",
      "### Results", "",
      "| Metric | Warren | RabbitMQ (documented) | Target | Met |",
      "|---|---|---|---|---|",
      f"| image size on disk (`docker images`) | {mb(size)} | rabbitmq:3.11.5 216.6 MB, 3.11.5-alpine 127.9 MB (on disk, `docker image inspect`) | < 60 MB | {'yes' if size < 60e6 else 'NO'} |",
      f"| image size compressed (`docker save \\| gzip`) | {mb(gz)} | rabbitmq:3.10-management 111.1 MB, rabbitmq:4-management (4.3.5) 118.4 MB (linux/amd64, compressed transfer size) |  |  |",
      f"| `docker compose up -d` (the command itself) | {col('compose_up_s')} |  |  |  |",
      f"| last container started -> three nodes take AMQP logins | {col('started_to_ready_s')} | single node, Debian package, start to first login: 5,477 ms (scenario d above); not measured in containers here |  |  |",
      f"| last container started -> three containers pass Docker's health check | {col('started_to_healthy_s')} | the official image defines no HEALTHCHECK | < 5 s | {'yes' if worst('started_to_healthy_s') < 5 else 'NO'} |",
      f"| `docker compose up -d` run -> three healthy containers | {col('up_to_healthy_s')} |  |  |  |",
      f"| longest pause between confirms, rolling restart of 3 nodes | {col('rolling_max_pause_s', '{:.2f} s')} | not published | < 2 s | {'yes' if worst('rolling_max_pause_s') < 2 else 'NO'} |",
      f"| messages confirmed during the rolling restart, all consumed | {col('rolling_confirmed', '{:,.0f}')} |  | none lost | yes |",
      f"| image build as the bench ran it (layer cache on: apt layers reused, compile reruns when sources changed) | {float(cached_s):.0f} s |  |  |  |",
      ]
if nocache_s:
    md.append(f"| image build without cache, as on a fresh machine (apt-get + compile) | {float(nocache_s):.0f} s |  |  |  |")
md += ["", f"`debian:bookworm-slim` as built here by `deploy/build-base.sh`: {mb(base_size)} on disk (the "
       "official one is about 75 MB); the Warren image does not contain it, only the files the binaries load.", "",
       "- Start-up: Docker's own timestamps: from the last container's `StartedAt` to the end of each node's "
       "first successful health check (`warrenctl await_startup`: a voting member of a formed cluster that knows "
       "its leader); Docker runs the first check one interval (3 s) after the start, so this figure cannot be "
       "below 3 s. AMQP logins: the host polls each node every 50 ms with the cluster's administrator (a fresh "
       "node refuses logins until it has joined). `compose up -d` itself (docker-compose creating networks, "
       "volumes and containers) is listed apart: on a loaded machine it takes longer than the nodes do.",
       "- Rolling restart: one publisher (confirms, one message in flight, 200 msg/s at most) and one consumer "
       "(manual acks) on a three-member quorum queue, each reconnecting to the next node when its node goes; "
       "each node in turn gets `docker compose stop` (SIGTERM: the node hands its quorum queue leaderships to "
       "the other members before it closes its clients; `warrenctl drain` first when the CLI has it), then "
       "`start`, and the next node waits until it is ready again. The pause is the longest time between two "
       "confirms the publisher received, reconnects included.",
       "- RabbitMQ's sizes are the official images' figures (docker-library/repo-info for the compressed "
       "transfer sizes; `docker image inspect` output quoted in a public pull request for the on-disk sizes); "
       "no RabbitMQ image can be pulled on this machine, so its container start-up and rolling-restart pause "
       "are not measured here.", "",
       f"Reproduce: `make bench-docker` (about {max(1, round(int(total_s) / 60))} minute(s) with a warm build cache; "
       "`BENCH_NOCACHE=1` adds a cold build); the figures of one run on a shared machine vary with its load.", END]
section = md


def replace_section(lines, section):
    start = next((i for i, l in enumerate(lines) if l.startswith(HEADING)), None)
    if start is None:
        while lines and lines[-1] == "":
            lines.pop()
        return lines + [""] + section + [""]
    nxt = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    end = next((i for i in range(start, nxt) if lines[i].startswith(END)), None)
    stop = end + 1 if end is not None else nxt
    while stop < len(lines) and lines[stop] == "":
        stop += 1
    rest = lines[stop:]
    return lines[:start] + section + ([""] + rest if rest else [""])


text = open(out).read() if os.path.exists(out) else "# Warren performance\n"
text = "\n".join(replace_section(text.split("\n"), section)).rstrip("\n") + "\n"
with open(out, "w") as f:
    f.write(text)
print(f"Deployment section written to {out}")
print("\n".join(md[md.index("### Results"):]))
PY
