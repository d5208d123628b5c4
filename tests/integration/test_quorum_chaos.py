"""Randomized faults on a three-node cluster with quorum queues (issue 6): kill -9, SIGSTOP and
graceful restarts of random nodes while producers and consumers run, then a checker:

  - every confirmed message is delivered at least once (nothing confirmed is lost);
  - every delivered message was published (confirmed, or in flight when its connection broke);
  - duplicates (and redeliveries) are counted, and allowed only when a fault happened.

Clients reconnect to the next node of their list when their node goes away, as a client with
a failover list does. The fault schedule comes from a seeded PRNG: the seed is printed, and
WARREN_CHAOS_SEED replays a run; WARREN_CHAOS_SECONDS sets its length (default 30). At most one
node is down or paused at a time, so a majority always remains. Every loop is bounded in time.
"""
import os
import random
import signal
import threading
import time

import pika
import pytest

from conftest import EXTERNAL, RABBITMQ_MODE
from helpers.cluster import WarrenCluster, running_names, warrenctl_bin
from helpers.clients import pika_params

pytestmark = pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="starts its own Warren processes")

NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]
Q = {"x-queue-type": "quorum"}


def connect(nodes, start):
    """A connection to the first node from `start` on that answers; (connection, index)."""
    for k in range(len(nodes)):
        i = (start + k) % len(nodes)
        try:
            return pika.BlockingConnection(pika_params(nodes[i], socket_timeout=2, blocked_connection_timeout=10,
                                                       connection_attempts=1)), i
        except Exception:
            continue
    return None, start


class Producer(threading.Thread):
    def __init__(self, name, nodes, start, queue, deadline):
        super().__init__(daemon=True)
        self.name_, self.nodes, self.at, self.queue, self.deadline = name, nodes, start, queue, deadline
        self.confirmed, self.uncertain, self.nacked = set(), set(), set()
        self.longest = 0.0
        self.reconnects = 0

    def run(self):
        seq = 0
        while time.monotonic() < self.deadline:
            conn, self.at = connect(self.nodes, self.at)
            if conn is None:
                time.sleep(0.2)
                continue
            try:
                ch = conn.channel()
                ch.confirm_delivery()
                while time.monotonic() < self.deadline:
                    body = f"{self.name_}-{seq}"
                    seq += 1
                    t = time.monotonic()
                    try:
                        ch.basic_publish("", self.queue, body.encode(), pika.BasicProperties(delivery_mode=2))
                        self.confirmed.add(body)
                    except pika.exceptions.NackError:
                        self.nacked.add(body)
                    except Exception:
                        self.uncertain.add(body)  # its confirm never came: may or may not be there
                        raise
                    self.longest = max(self.longest, time.monotonic() - t)
            except Exception:
                self.reconnects += 1
                self.at += 1
            finally:
                try:
                    conn.close()
                except Exception:
                    pass


class Consumer(threading.Thread):
    def __init__(self, nodes, start, queue, deadline):
        super().__init__(daemon=True)
        self.nodes, self.at, self.queue, self.deadline = nodes, start, queue, deadline
        self.got = []
        self.redelivered = 0
        self.reconnects = 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            conn, self.at = connect(self.nodes, self.at)
            if conn is None:
                time.sleep(0.2)
                continue
            try:
                ch = conn.channel()
                ch.basic_qos(prefetch_count=50)

                def on_msg(chn, method, props, body):
                    self.got.append(body.decode())
                    if method.redelivered:
                        self.redelivered += 1
                    chn.basic_ack(method.delivery_tag)

                ch.basic_consume(self.queue, on_msg)
                while not self.stop.is_set() and time.monotonic() < self.deadline:
                    conn.process_data_events(time_limit=0.1)
            except Exception:
                self.reconnects += 1
                self.at += 1
            finally:
                try:
                    conn.close()
                except Exception:
                    pass


def wait_formed(c, node, timeout=40):
    c.wait_status(node, lambda st: st.get("formed") is True and running_names(st) == sorted(NAMES),
                  timeout=timeout, what="the cluster formed again")


@pytest.mark.timeout(300)
def test_random_faults_lose_no_confirmed_message(tmp_path, pki, uniq):
    if not os.access(warrenctl_bin(), os.X_OK):
        pytest.fail(f"warrenctl not found at {warrenctl_bin()}")
    seed = int(os.environ.get("WARREN_CHAOS_SEED", str(random.randrange(1 << 30))))
    seconds = float(os.environ.get("WARREN_CHAOS_SECONDS", "30"))
    rng = random.Random(seed)
    print(f"chaos seed {seed} ({seconds:.0f} s)")
    c = WarrenCluster(str(tmp_path / "cluster"), pki, size=3).start()
    try:
        for node in c.nodes:
            wait_formed(c, node)
        q = uniq("qq-chaos")
        conn = pika.BlockingConnection(pika_params(c.nodes[0]))
        conn.channel().queue_declare(q, durable=True, arguments=Q)
        conn.close()
        time.sleep(0.5)  # the declare reaches the other nodes
        t_end = time.monotonic() + seconds
        producers = [Producer(f"p{i}", c.nodes, i, q, t_end) for i in range(2)]
        consumers = [Consumer(c.nodes, i + 1, q, t_end + 60) for i in range(2)]
        for t in producers + consumers:
            t.start()
        faults = []
        while time.monotonic() < t_end - 4:
            time.sleep(rng.uniform(2.0, 4.0))
            node = rng.choice(c.nodes)
            kind = rng.choice(os.environ.get("WARREN_CHAOS_KINDS", "kill,pause,restart").split(","))
            faults.append(f"{kind} {node.name}")
            if kind == "kill":
                node.kill9()
                time.sleep(rng.uniform(1.0, 3.0))
                node.start()
            elif kind == "pause":
                os.kill(node.proc.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(1.0, 3.0))
                os.kill(node.proc.pid, signal.SIGCONT)
            else:
                node.stop()
                node.start()
            for n in c.nodes:
                wait_formed(c, n)
        for p in producers:
            p.join(60)
        confirmed = set().union(*(p.confirmed for p in producers))
        published = confirmed.union(*(p.uncertain | p.nacked for p in producers))
        # drain: every confirmed message must arrive (bounded)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = set().union(*(set(k.got) for k in consumers))
            if confirmed <= got:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates, if any, are counted too
        for k in consumers:
            k.stop.set()
        for k in consumers:
            k.join(20)
        delivered = [m for k in consumers for m in k.got]
        got = set(delivered)
        missing = confirmed - got
        invented = got - published
        duplicates = len(delivered) - len(got)
        longest = max(p.longest for p in producers)
        print(f"chaos seed {seed}: faults {len(faults)} ({', '.join(faults)}); published {len(published)}, "
              f"confirmed {len(confirmed)}, uncertain {sum(len(p.uncertain) for p in producers)}, "
              f"delivered {len(delivered)}, duplicates {duplicates}, redelivered "
              f"{sum(k.redelivered for k in consumers)}, longest confirm wait {longest:.2f} s, reconnects "
              f"{sum(p.reconnects for p in producers)}/{sum(k.reconnects for k in consumers)}")
        if missing:  # where are they? (each node's view of the queue)
            for n in c.nodes:
                r = c.ctl(n, "--json", "list_queues")
                print(n.name, r.stdout.strip()[:600], r.stderr.strip()[:200])
        assert confirmed, "nothing was confirmed"
        assert not missing, f"seed {seed}: {len(missing)} confirmed messages lost, e.g. {sorted(missing)[:5]}"
        assert not invented, f"seed {seed}: delivered but never published: {sorted(invented)[:5]}"
        assert duplicates == 0 or faults
    finally:
        for node in c.nodes:
            try:
                if node.proc and node.proc.poll() is None:
                    os.kill(node.proc.pid, signal.SIGCONT)
            except Exception:
                pass
        c.stop()
