"""Helpers for the Docker deployment tests and benchmark (tests/docker, tests/bench/docker_bench.sh).

Cluster: builds the image (deploy/Dockerfile) and brings up deploy/docker-compose.yml under a
project name of its own, with its own cookie, password, certificates and host ports (127.0.0.1,
free ports), so it never touches another project's containers, networks or volumes. down()
removes the project's containers, networks and volumes (`compose down -v`).

Load: a confirmed publisher and a consumer, each on its own pika connection in its own thread,
that reconnect to the next node whenever theirs fails; the publisher republishes a message whose
confirm it did not get (the consumer dedups by id), and records the longest gap between two
confirms.
"""
import datetime
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time

import pika
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COMPOSE_FILE = os.path.join(ROOT, "deploy", "docker-compose.yml")
NODES = ("warren1", "warren2", "warren3")
IMAGE = os.environ.get("WARREN_TEST_IMAGE", "warren:test")
BASE_IMAGE = "debian:bookworm-slim"


def run(cmd, timeout=120, check=True, env=None, capture=True):
    p = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or '')[-2000:]}{(p.stdout or '')[-1000:]}")
    return p


def docker_available():
    """None when a Docker engine answers, else why not."""
    if not shutil.which("docker"):
        return "no docker command"
    try:
        p = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker info timed out"
    if p.returncode != 0 or not p.stdout.strip():
        return "no Docker engine answers: " + (p.stderr.strip().splitlines() or ["docker info failed"])[-1]
    return None


def compose_command():
    """['docker', 'compose'] (the plugin) or ['docker-compose'], or None."""
    try:
        if subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20).returncode == 0:
            return ["docker", "compose"]
    except (OSError, subprocess.TimeoutExpired):
        pass
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def image_exists(tag):
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True, timeout=30).returncode == 0


def ensure_base_image(log=print):
    """Builds debian:bookworm-slim with deploy/build-base.sh when the engine has no such image."""
    if image_exists(BASE_IMAGE):
        return 0.0
    t = time.monotonic()
    log(f"docker: {BASE_IMAGE} missing, building it with deploy/build-base.sh")
    run([os.path.join(ROOT, "deploy", "build-base.sh")], timeout=900)
    return time.monotonic() - t


def build_image(tag=IMAGE, no_cache=False, log=print):
    t = time.monotonic()
    cmd = ["docker", "build", "-q", "-f", os.path.join(ROOT, "deploy", "Dockerfile"), "-t", tag]
    if no_cache:
        cmd.append("--no-cache")
    run(cmd + [ROOT], timeout=1500)
    took = time.monotonic() - t
    log(f"docker: built {tag} in {took:.1f} s")
    prune_stage_images()
    return took


def prune_stage_images(older_than="2h"):
    """The legacy builder keeps every build's stage images (untagged, about 0.9 GB a build): removes
    those of deploy/Dockerfile (label org.warren.stage) older than older_than; recent ones stay as
    the layer cache."""
    run(["docker", "image", "prune", "-f", "--filter", "label=org.warren.stage",
         "--filter", f"until={older_than}"], check=False, timeout=300)


def image_size(tag=IMAGE):
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout.strip())


def docker_time(ts):
    """Docker's RFC 3339 timestamps (nanoseconds, Z or an offset) as a Unix time."""
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", ts.strip())
    if not m:
        raise ValueError(f"unexpected Docker timestamp {ts!r}")
    tz = "+00:00" if m.group(3) == "Z" else m.group(3)
    base = datetime.datetime.fromisoformat(m.group(1) + tz).timestamp()
    return base + (float("0" + m.group(2)) if m.group(2) else 0.0)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, tmpdir, project=None, image=IMAGE):
        self.compose = compose_command()
        self.project = project or f"warrentest{os.getpid()}x{secrets.token_hex(2)}"
        self.tmp = str(tmpdir)
        self.user, self.password = "admin", secrets.token_hex(8)
        self.cookie = secrets.token_hex(24)
        self.certs = os.path.join(self.tmp, "certs")
        run([os.path.join(ROOT, "deploy", "gen-certs.sh"), self.certs], timeout=120)
        ports = free_ports(9)
        self.amqp, self.amqps, self.mgmt = {}, {}, {}
        env = dict(os.environ)
        for i, node in enumerate(NODES):
            self.amqp[node], self.amqps[node], self.mgmt[node] = ports[3 * i:3 * i + 3]
            n = i + 1
            env[f"WARREN{n}_AMQP_PORT"] = str(self.amqp[node])
            env[f"WARREN{n}_AMQPS_PORT"] = str(self.amqps[node])
            env[f"WARREN{n}_MGMT_PORT"] = str(self.mgmt[node])
        env.update(WARREN_IMAGE=image, WARREN_CERTS_DIR=self.certs, WARREN_PUBLISH_IP="127.0.0.1",
                   WARREN_COOKIE=self.cookie, WARREN_DEFAULT_USER=self.user,
                   WARREN_DEFAULT_PASS=self.password, WARREN_CLUSTER_NAME="warren-test",
                   COMPOSE_PROJECT_NAME=self.project)
        self.env = env
        self.up_started = None
        self._cids = {}

    # ---- compose ----
    def dc(self, *args, timeout=180, check=True):
        return run(self.compose + ["-p", self.project, "-f", COMPOSE_FILE] + list(args),
                   timeout=timeout, check=check, env=self.env)

    def up(self):
        self.up_wall = time.time()
        self.up_started = time.monotonic()
        self.dc("up", "-d", "--no-build", timeout=300)
        self.up_returned = time.monotonic()

    def down(self):
        try:
            self.dc("down", "-v", "--remove-orphans", "-t", "5", timeout=180, check=False)
        finally:
            # Anything compose did not remove (an interrupted up), by this project's label only.
            label = f"label=com.docker.compose.project={self.project}"
            for kind, ls in (("container", ["ps", "-aq"]), ("network", ["network", "ls", "-q"]),
                             ("volume", ["volume", "ls", "-q"])):
                ids = run(["docker"] + ls + ["--filter", label], check=False).stdout.split()
                if ids:
                    rm = ["docker", "rm", "-f"] if kind == "container" else ["docker", kind, "rm"]
                    run(rm + ids, check=False)

    def container(self, node):
        """The node's container id (kept: stop/start/kill keep the container)."""
        if node not in self._cids:
            cid = self.dc("ps", "-q", node).stdout.strip()
            if not cid:
                raise RuntimeError(f"no container for {node}")
            self._cids[node] = cid
        return self._cids[node]

    def network(self, name="cluster"):
        out = run(["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}",
                   "--filter", f"label=com.docker.compose.network={name}"]).stdout.split()
        if len(out) != 1:
            raise RuntimeError(f"network {name} of {self.project}: {out}")
        return run(["docker", "network", "inspect", "-f", "{{.Name}}", out[0]]).stdout.strip()

    def health(self, node):
        try:
            return run(["docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}",
                        self.container(node)], timeout=30).stdout.strip()
        except RuntimeError:
            return "missing"

    def wait_healthy(self, nodes=NODES, timeout=90):
        """Waits for Docker's health status of every node. Returns {node: (StartedAt, end of its first
        successful health check)} as Unix times from Docker's records (this machine's clock)."""
        deadline = time.monotonic() + timeout
        seen, states = {}, {}
        while time.monotonic() < deadline:
            for n in nodes:
                if n in seen:
                    continue
                try:
                    j = json.loads(run(["docker", "inspect", "-f", "{{json .State}}", self.container(n)],
                                       timeout=30).stdout)
                except (RuntimeError, ValueError):
                    states[n] = "missing"
                    continue
                h = j.get("Health") or {}
                states[n] = h.get("Status", "none")
                if states[n] == "healthy":
                    # Health.Log keeps the last 5 checks; polled this often, the first success is there.
                    ok = [e["End"] for e in h.get("Log") or [] if e.get("ExitCode") == 0]
                    seen[n] = (docker_time(j["StartedAt"]), docker_time(ok[0]) if ok else time.time())
            if len(seen) == len(nodes):
                return seen
            time.sleep(0.25)
        raise AssertionError(f"not healthy within {timeout} s: {states}\n{self.logs_tail()}")

    def ready(self, node):
        """The health check, run now (not at Docker's next interval)."""
        p = run(["docker", "exec", self.container(node), "/usr/local/bin/docker-entrypoint.sh", "healthcheck"],
                check=False, timeout=30)
        return p.returncode == 0

    def wait_ready(self, node, timeout=60):
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if self.ready(node) and self.amqp_login_ok(node):
                return time.monotonic() - t
            time.sleep(0.1)
        raise AssertionError(f"{node} not ready within {timeout} s\n{self.logs_tail(node)}")

    def wait_all_login(self, timeout=90):
        """Seconds from now until every node accepts an AMQP login."""
        t = time.monotonic()
        pending = set(NODES)
        while pending and time.monotonic() - t < timeout:
            pending = {n for n in pending if not self.amqp_login_ok(n)}
            if pending:
                time.sleep(0.05)
        if pending:
            raise AssertionError(f"{sorted(pending)} refused logins for {timeout} s\n{self.logs_tail()}")
        return time.monotonic() - t

    def amqp_login_ok(self, node):
        try:
            c = self.connect(node, attempts=1)
            c.close()
            return True
        except Exception:
            return False

    def ctl(self, node, *args, timeout=60, check=True):
        """warrenctl inside the node's container, against its own cluster port (TLS with its own
        certificate, as the compose file sets cluster.ssl; the cookie is in WARREN_COOKIE)."""
        tls = ["--tls", "--cert", f"/etc/warren/certs/{node}.pem", "--key", f"/etc/warren/certs/{node}.key"]
        return run(["docker", "exec", self.container(node), "warrenctl"] + tls + list(args),
                   timeout=timeout, check=check)

    def logs_tail(self, node=None, lines=40):
        nodes = [node] if node else list(NODES)
        out = []
        for n in nodes:
            p = self.dc("logs", "--no-color", "--tail", str(lines * 3), n, check=False, timeout=60)
            keep = [l for l in (p.stdout or "").splitlines() if "TLS read failed" not in l][-lines:]
            out.append(f"--- {n} ---\n" + "\n".join(keep))
        return "\n".join(out)

    # ---- clients ----
    def params(self, node, heartbeat=5):
        return pika.ConnectionParameters("127.0.0.1", self.amqp[node],
                                         credentials=pika.PlainCredentials(self.user, self.password),
                                         heartbeat=heartbeat, socket_timeout=5, blocked_connection_timeout=30,
                                         connection_attempts=1)

    def connect(self, node, attempts=1):
        last = None
        for _ in range(attempts):
            try:
                return pika.BlockingConnection(self.params(node))
            except Exception as e:  # noqa: BLE001 - any failure means "try again"
                last = e
                time.sleep(0.2)
        raise last

    def api(self, node, path, method="GET", user=None, password=None, **kw):
        auth = (user or self.user, password if password is not None else self.password)
        return requests.request(method, f"http://127.0.0.1:{self.mgmt[node]}{path}", auth=auth, timeout=10, **kw)

    def queue_info(self, node, queue):
        r = self.api(node, f"/api/queues/%2F/{queue}")
        return r.json() if r.status_code == 200 else {}


class Load:
    """Steady confirmed publishing and consuming on one queue, reconnecting across nodes."""

    def __init__(self, cluster, queue, pub_nodes, con_nodes, rate=200):
        self.c, self.queue = cluster, queue
        self.pub_nodes, self.con_nodes = list(pub_nodes), list(con_nodes)
        self.interval = 1.0 / rate
        self.stop_pub = threading.Event()
        self.stop_con = threading.Event()
        self.confirmed = set()
        self.received = set()
        self.next_id = 0
        self.last_confirm = None
        self.max_pause = 0.0
        self.pause_at = None
        self.pub_reconnects = self.con_reconnects = 0
        self.errors = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._publisher, daemon=True),
                        threading.Thread(target=self._consumer, daemon=True)]

    def start(self):
        for t in self.threads:
            t.start()

    def _conn(self, nodes, attempt):
        node = nodes[attempt % len(nodes)]
        return node, self.c.connect(node)

    def _publisher(self):
        attempt, conn = 0, None
        pending = None  # an id sent without a confirm: sent again after a reconnect
        while not self.stop_pub.is_set():
            try:
                if conn is None:
                    node, conn = self._conn(self.pub_nodes, attempt)
                    ch = conn.channel()
                    ch.confirm_delivery()
                mid = pending if pending is not None else self.next_id
                if pending is None:
                    self.next_id += 1
                pending = mid
                ch.basic_publish("", self.queue, str(mid).encode(), pika.BasicProperties(delivery_mode=2),
                                 mandatory=True)
                now = time.monotonic()
                with self.lock:
                    self.confirmed.add(mid)
                    if self.last_confirm is not None and now - self.last_confirm > self.max_pause:
                        self.max_pause = now - self.last_confirm
                        self.pause_at = time.time()
                    self.last_confirm = now
                pending = None
                time.sleep(self.interval)
            except Exception as e:  # noqa: BLE001 - reconnect on anything
                self.errors.append(f"publisher: {type(e).__name__}: {e}")
                try:
                    if conn is not None and conn.is_open:
                        conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
                attempt += 1
                self.pub_reconnects += 1
                time.sleep(0.05)
        try:
            if conn is not None:
                conn.close()
        except Exception:  # noqa: BLE001
            pass

    def _consumer(self):
        attempt, conn = 0, None
        while not self.stop_con.is_set():
            try:
                if conn is None:
                    node, conn = self._conn(self.con_nodes, attempt)
                    ch = conn.channel()
                    ch.basic_qos(prefetch_count=100)

                    def on_msg(chan, method, props, body):
                        with self.lock:
                            self.received.add(int(body))
                        chan.basic_ack(method.delivery_tag)

                    ch.basic_consume(self.queue, on_msg)
                conn.process_data_events(time_limit=0.2)
            except Exception as e:  # noqa: BLE001
                self.errors.append(f"consumer: {type(e).__name__}: {e}")
                try:
                    if conn is not None and conn.is_open:
                        conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
                attempt += 1
                self.con_reconnects += 1
                time.sleep(0.05)
        try:
            if conn is not None:
                conn.close()
        except Exception:  # noqa: BLE001
            pass

    def missing(self):
        with self.lock:
            return self.confirmed - self.received

    def finish(self, drain_timeout=60):
        """Stops publishing, waits (bounded) until every confirmed message was consumed."""
        self.stop_pub.set()
        self.threads[0].join(30)
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and self.missing():
            time.sleep(0.2)
        self.stop_con.set()
        self.threads[1].join(30)
        return self.missing()
