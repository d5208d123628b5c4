"""The randomized fault test of issue 6: kills, pauses and restarts of random nodes of a
three-node cluster while producers and consumers run on two quorum queues, bounded in time,
then a checker:

  - every confirmed message is delivered at least once (nothing confirmed is lost);
  - every delivered message was published (confirmed, nacked, or in flight when its connection
    broke) to the queue it came from (nothing invented, nothing misrouted);
  - duplicates are counted (and how many of them carried the redelivered flag), and allowed
    only when at least one fault was injected;
  - once the consumers have drained, both queues are empty on every node (nothing stuck);
  - no node's log holds a sanitizer report ("AddressSanitizer", "runtime error"), no node died
    on its own, and a graceful stop exits with status 0.

Clients: two producers (home nodes 1 and 2, body "<producer>:<queue>:<seq>", persistent, with
confirms, one publish in flight) and two consumers (home nodes 2 and 3, manual ack, prefetch
20, each consuming both queues). A client whose connection breaks reconnects to the next node
of its failover list (every node, from its home on) and continues. A publish whose confirm did
not come (its connection broke) is "unconfirmed": it may or may not be delivered.

The fault driver draws from random.Random(seed): the seed is printed, WARREN_FAULT_SEED replays
a run (the same schedule of faults; timings vary), WARREN_FAULT_SECONDS sets how long faults are
injected (default 40), WARREN_FAULT_KINDS restricts the kinds (kill,pause,restart). Every 2-5 s
one fault: kill -9 a random node and start it again after 1-3 s; SIGSTOP one and SIGCONT it
after 1-3 s; or stop it gracefully and start it again. Only one node is ever down or paused (a
majority always remains), and the next fault waits until every node sees the cluster formed.

Every thread's loop ends by a deadline, every join has a timeout, the test has a deadline, and
a watchdog aborts a publish whose confirm has not come within CONFIRM_HANG seconds (reported as
a failure: a majority was up all along).
"""
import collections
import json
import os
import random
import signal
import socket
import threading
import time

import pika
import pika.exceptions
import pytest

from conftest import EXTERNAL, RABBITMQ_MODE
from helpers.cluster import WarrenCluster, running_names, warrenctl_bin
from helpers.clients import pika_params

pytestmark = pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="starts its own Warren processes")

NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]
QQ = {"x-queue-type": "quorum"}
PREFETCH = 20
CONFIRM_HANG = 45.0     # a confirm slower than this, with a majority up, is a hang
DRAIN_TIMEOUT = 90.0    # after the faults: every confirmed message must arrive within this
EMPTY_TIMEOUT = 30.0    # ... and then the queues must become empty within this
FORM_TIMEOUT = 45.0     # a restarted node back in the formed cluster
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "runtime error")


def fault_seconds():
    return float(os.environ.get("WARREN_FAULT_SECONDS", "40"))


def client_connect(nodes, at):
    """A connection to the first node of the failover list (from index `at` on) that answers,
    as a client with a list of hosts does; (connection, index) or (None, at)."""
    for k in range(len(nodes)):
        i = (at + k) % len(nodes)
        try:
            params = pika_params(nodes[i], socket_timeout=2, stack_timeout=4, heartbeat=4,
                                 blocked_connection_timeout=20, connection_attempts=1)
            return pika.BlockingConnection(params), i
        except Exception:
            continue
    return None, at


def close_quietly(conn):
    if conn is None:
        return
    try:
        if conn.is_open:
            conn.close()
    except Exception:
        pass


def abort_socket(conn):
    """Breaks conn's TCP stream from another thread (the watchdog): the blocked call in the
    owning thread then fails with a lost stream."""
    try:
        conn._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    except Exception:
        pass


class Producer(threading.Thread):
    def __init__(self, pid, nodes, home, queues, deadline):
        super().__init__(daemon=True, name=f"producer-{pid}")
        self.pid, self.nodes, self.at, self.queues, self.deadline = pid, nodes, home, queues, deadline
        self.confirmed, self.unconfirmed, self.nacked = set(), set(), set()
        self.longest = 0.0
        self.reconnects = 0
        self.errors = collections.Counter()
        self.conn = None
        self.waiting_since = None  # monotonic time the publish in flight was sent
        self.hung = []             # bodies whose confirm the watchdog gave up on
        self.lock = threading.Lock()

    def run(self):
        seq = 0
        while time.monotonic() < self.deadline:
            conn, self.at = client_connect(self.nodes, self.at)
            if conn is None:
                time.sleep(0.2)
                continue
            with self.lock:
                self.conn = conn
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                while time.monotonic() < self.deadline:
                    tag, queue = self.queues[seq % len(self.queues)]
                    body = f"{self.pid}:{tag}:{seq}"
                    seq += 1
                    t = time.monotonic()
                    self.waiting_since = t
                    try:
                        ch.basic_publish("", queue, body.encode(), pika.BasicProperties(delivery_mode=2))
                        self.confirmed.add(body)
                    except pika.exceptions.NackError:
                        self.nacked.add(body)
                    except Exception:
                        self.unconfirmed.add(body)  # the confirm never came: it may be there or not
                        raise
                    finally:
                        self.waiting_since = None
                        self.longest = max(self.longest, time.monotonic() - t)
            except Exception as e:
                self.errors[type(e).__name__] += 1
                self.reconnects += 1
                self.at += 1  # the next node of the list
            finally:
                with self.lock:
                    self.conn = None
                close_quietly(conn)

    def watchdog(self, now):
        since = self.waiting_since
        if since is not None and now - since > CONFIRM_HANG:
            with self.lock:
                if self.conn is not None and self.waiting_since == since:
                    self.hung.append((self.nodes[self.at % len(self.nodes)].name, now - since))
                    abort_socket(self.conn)


class Consumer(threading.Thread):
    def __init__(self, cid, nodes, home, queues, deadline):
        super().__init__(daemon=True, name=f"consumer-{cid}")
        self.cid, self.nodes, self.at, self.queues, self.deadline = cid, nodes, home, queues, deadline
        self.got = []  # (body, queue tag, redelivered, monotonic time)
        self.reconnects = 0
        self.cancels = 0
        self.errors = collections.Counter()
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            conn, self.at = client_connect(self.nodes, self.at)
            if conn is None:
                time.sleep(0.2)
                continue
            try:
                ch = conn.channel()
                ch.basic_qos(prefetch_count=PREFETCH)
                tags = {}  # consumer tag -> queue tag
                cancelled = []

                def on_cancel(frame):
                    cancelled.append(frame.method.consumer_tag)

                ch.add_on_cancel_callback(on_cancel)

                def subscribe(tag, queue):
                    def on_msg(chn, method, props, body, tag=tag):
                        self.got.append((body.decode(), tag, bool(method.redelivered), time.monotonic()))
                        chn.basic_ack(method.delivery_tag)
                    tags[ch.basic_consume(queue, on_msg)] = tag

                for tag, queue in self.queues:
                    subscribe(tag, queue)
                while not self.stop.is_set() and time.monotonic() < self.deadline:
                    conn.process_data_events(time_limit=0.1)
                    while cancelled:  # the broker cancelled a consumer: subscribe again
                        self.cancels += 1
                        tag = tags.pop(cancelled.pop(), None)
                        if tag is not None:
                            subscribe(tag, dict(self.queues)[tag])
            except Exception as e:
                self.errors[type(e).__name__] += 1
                self.reconnects += 1
                self.at += 1
            finally:
                close_quietly(conn)


def all_formed(c, timeout=FORM_TIMEOUT):
    for node in c.nodes:
        c.wait_status(node, lambda st: st.get("formed") is True and running_names(st) == sorted(NAMES),
                      timeout=timeout, what="a formed cluster of 3")


def check_alive(c, down=None):
    """Every node we did not take down is still running (none crashed on its own)."""
    for node in c.nodes:
        if node is down:
            continue
        if node.proc is None or node.proc.poll() is not None:
            code = node.proc.returncode if node.proc is not None else None
            raise AssertionError(f"{node.name} died on its own (status {code})\n" + node.log_tail(120))


def sanitizer_lines(c):
    out = []
    for node in c.nodes:
        for line in node.log_text().splitlines():
            if any(mark in line for mark in SANITIZER_MARKS):
                out.append(f"{node.name}: {line}")
    return out


def queue_rows(c, node, names):
    try:
        r = c.ctl(node, "--json", "list_queues", timeout=15)
        if r.returncode != 0:
            return None
        return {row["name"]: row for row in json.loads(r.stdout) if row["name"] in names}
    except Exception:
        return None


def leads(c, node, queues):
    """Which of queues (tag, name) node leads now, as its own list_queues says ("?" unknown)."""
    rows = queue_rows(c, node, {name for _t, name in queues})
    if rows is None:
        return "?"
    return "".join(t for t, name in queues if rows.get(name, {}).get("leader") == node.name) or "-"


def inject(c, rng, kind, node, log, base, queues):
    """One fault on node; returns once the node runs (or is resumed) again."""
    hold = rng.uniform(1.0, 3.0)
    check_alive(c)
    led = leads(c, node, queues)
    t0 = time.monotonic()
    if kind == "kill":
        node.kill9()
        time.sleep(hold)
        node.start()
    elif kind == "pause":
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(hold)
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
    else:
        code = node.stop()  # raises if it does not exit within 5 s of SIGTERM
        assert code == 0, f"{node.name} exited with status {code} on a graceful stop\n" + node.log_tail(120)
        node.start()
    log.append(f"{kind} {node.name[:7]} (leader of {led}) {hold:.1f}s at +{t0 - base:.1f}s")


@pytest.mark.timeout(int(fault_seconds()) + 560)
@pytest.mark.parametrize("body_memory,fixed_seed", [(None, None), (65536, None), (65536, 1274603665)],
                         ids=["bodies-in-memory", "bodies-paged", "bodies-paged-seed1274603665"])
def test_random_faults_checker(tmp_path, pki, uniq, monkeypatch, body_memory, fixed_seed):
    """bodies-paged: the nodes keep only 64 KB of message bodies in memory (WARREN_QQ_BODY_MEMORY),
    so nearly every body goes through the body store, snapshots to restarted followers are built
    from it, and deliveries read it back - under the same faults and the same checker.
    seed1274603665: a schedule that left a member behind the leader's compacted log while its
    consumers were being given messages: 40 confirmed messages were never delivered until the
    snapshot install learned to deliver what it checked out to this node's consumers."""
    if not os.access(warrenctl_bin(), os.X_OK):
        pytest.fail(f"warrenctl not found at {warrenctl_bin()} (build it, or set WARRENCTL_BIN)")
    if body_memory:
        monkeypatch.setenv("WARREN_QQ_BODY_MEMORY", str(body_memory))
    seed_env = os.environ.get("WARREN_FAULT_SEED", "").strip()
    seed = fixed_seed or (int(seed_env) if seed_env else random.SystemRandom().randrange(1 << 31))
    seconds = fault_seconds()
    kinds = [k for k in os.environ.get("WARREN_FAULT_KINDS", "kill,pause,restart").split(",") if k]
    rng = random.Random(seed)
    print(f"\nfault seed {seed} ({seconds:.0f} s of faults; replay with WARREN_FAULT_SEED={seed})", flush=True)

    c = WarrenCluster(str(tmp_path / "cluster"), pki, size=3).start()
    threads, consumers, producers = [], [], []
    faults = []
    stop_watchdog = threading.Event()
    try:
        all_formed(c)
        n1 = c.nodes[0]
        qa, qb = uniq("qq-faults-a"), uniq("qq-faults-b")
        conn = pika.BlockingConnection(pika_params(n1))
        ch = conn.channel()
        ch.queue_declare(qa, durable=True, arguments=QQ)
        ch.queue_declare(qb, durable=True, arguments=dict(QQ, **{"x-queue-leader-locator": "balanced"}))
        conn.close()
        for node in c.nodes:  # the declares reached every node
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                rows = queue_rows(c, node, {qa, qb})
                if rows and len(rows) == 2 and all(r.get("leader") for r in rows.values()):
                    break
                time.sleep(0.1)
            else:
                raise AssertionError(f"{qa}/{qb} not on {node.name} with a leader: {rows}")
        queues = [("a", qa), ("b", qb)]

        t_start = time.monotonic()
        t_end = t_start + seconds
        producers = [Producer(f"p{i + 1}", c.nodes, home, queues, t_end) for i, home in enumerate((0, 1))]
        consumer_deadline = t_end + FORM_TIMEOUT + DRAIN_TIMEOUT + EMPTY_TIMEOUT + 30
        consumers = [Consumer(f"c{i + 1}", c.nodes, home, queues, consumer_deadline)
                     for i, home in enumerate((1, 2))]
        threads = producers + consumers
        for t in consumers + producers:
            t.start()

        def watchdog():
            while not stop_watchdog.wait(0.5):
                now = time.monotonic()
                for p in producers:
                    p.watchdog(now)
        wd = threading.Thread(target=watchdog, daemon=True, name="watchdog")
        wd.start()

        # -- the fault driver -----------------------------------------------------------------
        while True:
            gap = rng.uniform(2.0, 5.0)
            kind = rng.choice(kinds)
            node = rng.choice(c.nodes)
            if time.monotonic() + gap + 3.0 > t_end:
                break
            time.sleep(gap)
            inject(c, rng, kind, node, faults, t_start, queues)
            all_formed(c)
            check_alive(c)
        remaining = t_end - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

        # -- drain ----------------------------------------------------------------------------
        for p in producers:
            p.join(CONFIRM_HANG + 15)
        stuck = [p.name for p in producers if p.is_alive()]
        assert not stuck, f"seed {seed}: producers still running after their deadline: {stuck}"
        all_formed(c)
        confirmed = set().union(*(p.confirmed for p in producers))
        unconfirmed = set().union(*(p.unconfirmed for p in producers))
        nacked = set().union(*(p.nacked for p in producers))
        published = confirmed | unconfirmed | nacked

        def seen():
            return {d[0] for k in consumers for d in list(k.got)}

        t_drain = time.monotonic()
        deadline = t_drain + DRAIN_TIMEOUT
        while time.monotonic() < deadline and not confirmed <= seen():
            time.sleep(0.2)
        drained_in = time.monotonic() - t_drain
        # then the queues empty out (the unconfirmed messages that made it are consumed too)
        deadline = time.monotonic() + EMPTY_TIMEOUT
        left = None
        while time.monotonic() < deadline:
            left = {}
            for node in c.nodes:
                rows = queue_rows(c, node, {qa, qb}) or {}
                for name in (qa, qb):
                    left[(node.name, name)] = rows.get(name, {}).get("messages", "?")
            if all(v == 0 for v in left.values()):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # late duplicates, if any, are counted too
        for k in consumers:
            k.stop.set()
        for k in consumers:
            k.join(15)
        stop_watchdog.set()
        wd.join(5)
        check_alive(c)

        # -- the checker ----------------------------------------------------------------------
        delivered = sorted((d for k in consumers for d in list(k.got)), key=lambda d: d[3])
        bodies = [d[0] for d in delivered]
        got = set(bodies)
        counts = collections.Counter(bodies)
        duplicates = len(bodies) - len(got)
        redelivered = sum(1 for d in delivered if d[2])
        # a second (third...) copy of a message that did not carry the redelivered flag
        first = set()
        unflagged = 0
        for b, _t, r, _at in delivered:
            if b in first and not r:
                unflagged += 1
            first.add(b)
        misrouted = [(b, t) for b, t, _r, _at in delivered if b.split(":")[1:2] != [t]]
        missing = confirmed - got
        invented = got - published
        longest = max(p.longest for p in producers)
        hung = [h for p in producers for h in p.hung]
        summary = (f"fault seed {seed}: faults {len(faults)}; published {len(published)}, "
                   f"confirmed {len(confirmed)}, unconfirmed {len(unconfirmed)}, nacked {len(nacked)}, "
                   f"delivered {len(bodies)} ({len(got)} distinct, {len(got & (unconfirmed | nacked))} of "
                   f"them unconfirmed), duplicates {duplicates} (max copies {max(counts.values(), default=0)}, "
                   f"{unflagged} without the redelivered flag), redelivered flags {redelivered}, "
                   f"longest confirm pause {longest:.2f} s, drained in {drained_in:.1f} s, reconnects "
                   f"producers {sum(p.reconnects for p in producers)} consumers "
                   f"{sum(k.reconnects for k in consumers)}, broker cancels {sum(k.cancels for k in consumers)}")
        print(summary)
        print("faults: " + "; ".join(faults))
        print("client errors: " + ", ".join(f"{t.name} {dict(t.errors)}" for t in threads if t.errors))
        if missing or invented or misrouted:
            for node in c.nodes:
                print(node.name, json.dumps(queue_rows(c, node, {qa, qb})))

        assert not sanitizer_lines(c), f"seed {seed}: sanitizer reports:\n" + "\n".join(sanitizer_lines(c)[:30])
        assert confirmed, f"seed {seed}: nothing was confirmed\n{summary}"
        assert not hung, f"seed {seed}: confirms that never came (node, seconds waited): {hung}\n{summary}"
        assert not missing, (f"seed {seed}: {len(missing)} confirmed messages never delivered, e.g. "
                             f"{sorted(missing)[:10]}\n{summary}")
        assert not invented, f"seed {seed}: delivered but never published: {sorted(invented)[:10]}\n{summary}"
        assert not misrouted, f"seed {seed}: delivered from the wrong queue: {misrouted[:10]}\n{summary}"
        assert duplicates == 0 or faults, f"seed {seed}: duplicates without any fault\n{summary}"
        assert all(v == 0 for v in left.values()), (f"seed {seed}: messages left in the queues after the "
                                                    f"drain (node, queue): {left}\n{summary}")
        alive = [t.name for t in threads if t.is_alive()]
        assert not alive, f"seed {seed}: client threads still running: {alive}"
    finally:
        for node in c.nodes:
            try:
                if node.proc is not None and node.proc.poll() is None:
                    os.kill(node.proc.pid, signal.SIGCONT)
            except Exception:
                pass
        stop_watchdog.set()
        for k in consumers:
            k.stop.set()
        c.stop()  # SIGTERM each: status 0, no sanitizer report (conftest._check_clean_exit)
        reports = sanitizer_lines(c)
        assert not reports, f"seed {seed}: sanitizer reports:\n" + "\n".join(reports[:30])
