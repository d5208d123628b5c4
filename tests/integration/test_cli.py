"""warrenctl as an operator's CLI (issue 8): rabbitmqctl / rabbitmq-diagnostics style commands.

A single node (its loopback control port): status, list_exchanges, list_bindings,
list_connections, delete_queue (--if-empty / --if-unused), purge_queue, errors on stderr with
exit 1, --json, export_definitions then import_definitions into a fresh node. A three-node
cluster: drain moves every quorum queue leadership off the node, closes its clients with 320
CONNECTION_FORCED and refuses new ones; revive accepts again; SIGTERM of a leader node hands
its leaderships over before the process exits (a publisher with confirms sees a short pause).

Warren only (skipped with WARREN_TEST_EXTERNAL or WARREN_TEST_RABBITMQ). Every wait is bounded.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pika
import pika.exceptions
import pytest

from conftest import EXTERNAL, RABBITMQ_MODE, free_port
from helpers.clients import pika_connect
from helpers.cluster import WarrenCluster, warrenctl_bin
from test_cluster import NAMES, wait_formed

pytestmark = [pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="starts its own Warren processes"),
              pytest.mark.timeout(90)]

QQ = {"x-queue-type": "quorum"}


def ok(result):
    assert result.returncode == 0, f"warrenctl exited {result.returncode}: {result.stderr}"
    return result


def wait_true(check, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.05)


# ---- a single node ----------------------------------------------------------------------------

class Solo:
    """A single node with warrenctl on its loopback control port."""

    def __init__(self, fresh_broker, **config):
        self.port = free_port()
        self.broker = fresh_broker(config={"cluster.listener.port": self.port, **config})
        self.cookie_file = os.path.join(self.broker.data_dir, ".warren.cookie")

    def ctl(self, *args, stdin=None):
        return subprocess.run([warrenctl_bin(), "--node", f"127.0.0.1:{self.port}", "--cookie-file",
                               self.cookie_file, *args], capture_output=True, text=True, timeout=30, input=stdin)

    def json(self, *args):
        return json.loads(ok(self.ctl("--json", *args)).stdout)


@pytest.fixture
def solo(fresh_broker):
    return Solo(fresh_broker)


def test_status(solo):
    st = solo.json("status")
    assert st["node"] and st["product_name"] == "Warren" and st["product_version"]
    assert st["uptime"] >= 0 and st["memory"]["used"] > 0 and st["memory"]["limit"] > 0
    assert st["alarms"] == [] and st["is_under_maintenance"] is False
    ports = {(l["protocol"], l["port"]) for l in st["listeners"]}
    assert ("amqp", solo.broker.port) in ports and ("amqp/ssl", solo.broker.tls_port) in ports
    assert ("http", solo.broker.mgmt_port) in ports
    text = ok(solo.ctl("status")).stdout
    assert f"Status of node {st['node']}" in text and "Is under maintenance?: false" in text
    assert f"port: {solo.broker.port}, protocol: amqp" in text
    # A single node drains too (nowhere to move its quorum queues' leaders) and revives.
    out = solo.json("drain")
    assert out["is_under_maintenance"] is True and out["leaders_remaining"] == 0
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_connect(solo.broker)
    assert "Is under maintenance?: true" in ok(solo.ctl("status")).stdout
    assert solo.json("revive")["is_under_maintenance"] is False
    pika_connect(solo.broker).close()


def test_exchanges_bindings_and_connections(solo, uniq):
    x, q = uniq("x"), uniq("q")
    conn = pika_connect(solo.broker)
    try:
        ch = conn.channel()
        ch.exchange_declare(x, "topic", durable=True)
        ch.exchange_declare(x + ".int", "fanout", auto_delete=True, internal=True)
        ch.queue_declare(q)
        ch.queue_bind(q, x, "a.*", arguments={"k": "v"})
        ch.exchange_bind(x + ".int", x, "b.#")
        xs = {e["name"]: e for e in solo.json("list_exchanges")}
        assert xs[x]["type"] == "topic" and xs[x]["durable"] is True and xs[x]["internal"] is False
        assert xs[x + ".int"]["auto_delete"] is True and xs[x + ".int"]["internal"] is True
        assert "amq.direct" in xs and "" in xs
        bindings = solo.json("list_bindings")
        assert {"source": "", "destination": q, "destination_type": "queue", "routing_key": q,
                "arguments": {}} in bindings
        assert {"source": x, "destination": q, "destination_type": "queue", "routing_key": "a.*",
                "arguments": {"k": "v"}} in bindings
        assert {"source": x, "destination": x + ".int", "destination_type": "exchange", "routing_key": "b.#",
                "arguments": {}} in bindings
        table = ok(solo.ctl("list_exchanges")).stdout.splitlines()
        assert table[0] == "Listing exchanges for vhost / ..."
        assert table[1].split("\t") == ["name", "type", "durable", "auto_delete", "internal"]
        assert f"{x}\ttopic\ttrue\tfalse\tfalse" in table
        conns = solo.json("list_connections")
        assert len(conns) == 1 and conns[0]["user"] == "guest" and conns[0]["vhost"] == "/"
        assert conns[0]["state"] == "running" and conns[0]["channels"] == 1
        assert "Listing connections ..." in ok(solo.ctl("list_connections")).stdout
        # close_connection: 320 with the reason, as rabbitmqctl's.
        ok(solo.ctl("close_connection", conns[0]["name"], "go away"))
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            conn.process_data_events(time_limit=2)
        assert closed.value.reply_code == 320 and "go away" in closed.value.reply_text
        r = solo.ctl("close_connection", "no such connection", "x")
        assert r.returncode == 1 and 'connection "no such connection" not found' in r.stderr
    finally:
        if conn.is_open:
            conn.close()


def test_delete_and_purge_queue(solo, uniq):
    q, qq = uniq("q"), uniq("qq")
    conn = pika_connect(solo.broker)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(q, durable=True)
        ch.queue_declare(qq, durable=True, arguments=QQ)
        for i in range(3):
            ch.basic_publish("", q, b"m%d" % i)
            ch.basic_publish("", qq, b"m%d" % i)
        # --if-empty refuses a queue with messages, as queue.delete does.
        refused = solo.ctl("delete_queue", q, "--if-empty")
        assert refused.returncode == 1 and f"queue '{q}' in vhost '/' not empty" in refused.stderr
        out = ok(solo.ctl("purge_queue", q)).stdout
        assert f"Purging queue '{q}' in vhost '/' ..." in out
        assert ch.queue_declare(q, passive=True).method.message_count == 0
        assert solo.json("purge_queue", qq) == {"result": "ok", "messages": 3}
        assert ch.queue_declare(qq, passive=True).method.message_count == 0
        # --if-unused refuses a queue with a consumer.
        ch.basic_consume(q, lambda *a: None)
        refused = solo.ctl("delete_queue", "--if-unused", q)
        assert refused.returncode == 1 and "in use" in refused.stderr
        out = ok(solo.ctl("delete_queue", q)).stdout
        assert f"Deleting queue '{q}' on vhost '/' ..." in out
        assert "Queue was successfully deleted with 0 messages" in out
        assert solo.json("delete_queue", qq)["result"] == "ok"
        names = [x["name"] for x in solo.json("list_queues")]
        assert q not in names and qq not in names
    finally:
        if conn.is_open:
            conn.close()


def test_errors_go_to_stderr_with_exit_1(solo, uniq):
    for args in (["delete_queue", "nope"], ["purge_queue", "nope"], ["delete_queue", "-p", "/", "nope"]):
        r = solo.ctl(*args)
        assert r.returncode == 1 and "NOT_FOUND - no queue 'nope' in vhost '/'" in r.stderr, r
    r = solo.ctl("--json", "list_exchanges", "-p", "no-such-vhost")
    assert r.returncode == 1 and r.stdout == "" and 'Virtual host "no-such-vhost" does not exist' in r.stderr
    r = solo.ctl("import_definitions", "/nonexistent/defs.json")
    assert r.returncode == 1 and "/nonexistent/defs.json" in r.stderr
    r = solo.ctl("import_definitions", "-", stdin="{not json")
    assert r.returncode == 1 and "JSON" in r.stderr
    # An invalid document is refused before anything is imported.
    bad = {"queues": [{"name": "fine", "vhost": "/"}], "vhosts": [{"name": ""}]}
    r = solo.ctl("import_definitions", "-", stdin=json.dumps(bad))
    assert r.returncode == 1 and 'vhosts name "" is empty' in r.stderr
    r = solo.ctl("import_definitions", "-", stdin=json.dumps({"queues": [{"name": "q" * 256}]}))
    assert r.returncode == 1 and "longer than 255 bytes" in r.stderr
    assert "fine" not in [q["name"] for q in solo.json("list_queues")]
    assert solo.ctl("delete_queue").returncode == 64  # usage


def test_export_then_import_into_a_fresh_node(fresh_broker, uniq):
    a = Solo(fresh_broker)
    vh, user, x, q, qq = uniq("vh"), uniq("u"), uniq("x"), uniq("q"), uniq("qq")
    ok(a.ctl("add_vhost", vh))
    ok(a.ctl("add_user", user, "secret"))
    ok(a.ctl("set_user_tags", user, "management"))
    ok(a.ctl("set_permissions", "-p", vh, user, "^c", "^w", ".*"))
    ok(a.ctl("set_policy", "-p", vh, "--priority", "3", "--apply-to", "queues", "lim", "^q", '{"max-length": 7}'))
    conn = pika_connect(a.broker, vhost=vh, user=user, password="secret")
    ok(a.ctl("set_permissions", "-p", vh, user, ".*", ".*", ".*"))
    conn.close()
    conn = pika_connect(a.broker, vhost=vh, user=user, password="secret")
    ch = conn.channel()
    ch.exchange_declare(x, "headers", durable=True, arguments={"alternate-exchange": "amq.fanout"})
    ch.queue_declare(q, durable=True, arguments={"x-max-priority": 5})
    ch.queue_declare(qq, durable=True, arguments=QQ)
    ch.queue_bind(q, x, "", arguments={"x-match": "any", "a": 1})
    conn.close()
    path = os.path.join(a.broker.data_dir, "..", "defs.json")
    out = ok(a.ctl("export_definitions", path)).stdout
    assert "Exporting definitions in JSON to a file at" in out
    defs = json.load(open(path))
    assert json.loads(ok(a.ctl("export_definitions", "-")).stdout)["queues"] == defs["queues"]
    assert {"name": vh} in [{"name": v["name"]} for v in defs["vhosts"]]

    b = Solo(fresh_broker)
    out = ok(b.ctl("import_definitions", path)).stdout
    assert "Importing definitions in JSON from a file at" in out
    again = json.loads(ok(b.ctl("export_definitions", "-")).stdout)
    for key in ("vhosts", "permissions", "policies", "queues", "exchanges", "bindings"):
        norm = lambda items: sorted(json.dumps(i, sort_keys=True) for i in items)  # noqa: E731
        assert norm(again[key]) == norm(defs[key]), key
    users = {u["name"]: u for u in again["users"]}
    assert users[user]["password_hash"] == {u["name"]: u for u in defs["users"]}[user]["password_hash"]
    # The imported user logs in with its password, and the quorum queue works.
    conn = pika_connect(b.broker, vhost=vh, user=user, password="secret")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", qq, b"x")
        assert ch.queue_declare(qq, passive=True).method.message_count == 1
        assert ch.queue_declare(q, passive=True).method.message_count == 0
    finally:
        conn.close()
    # From stdin, with --json.
    assert json.loads(ok(b.ctl("--json", "import_definitions", "-", stdin=json.dumps(defs))).stdout)["result"] == "ok"


def test_log_console_and_file_keys(fresh_broker, tmp_path):
    """RabbitMQ's log.console / log.file keys: console on with no file (a container's setting),
    and console off with a file at its own level."""
    b = fresh_broker(config={"log.console": "true", "log.file": "false"})
    assert "server startup complete" in b.log_text()
    path = str(tmp_path / "node.log")
    b2 = fresh_broker(config={"log.console": "false", "log.file": path, "log.file.level": "info",
                              "log.console.level": "debug"})
    conn = pika_connect(b2)
    conn.close()
    console = b2.log_text()
    assert "server startup complete" not in console and "[info]" not in console and "[debug]" not in console
    with open(path) as f:
        text = f.read()
    assert "server startup complete" in text and "[debug]" not in text


# ---- a three-node cluster ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pki):
    if not os.access(warrenctl_bin(), os.X_OK):
        pytest.fail(f"warrenctl not found at {warrenctl_bin()}")
    c = WarrenCluster(str(tmp_path_factory.mktemp("clicluster")), pki, size=3).start()
    try:
        wait_formed(c, c.nodes, NAMES)
        yield c
    finally:
        c.stop()


def queues_by_name(c, node):
    return {q["name"]: q for q in json.loads(ok(c.ctl(node, "--json", "list_queues")).stdout)}


def declare_led_by(c, node, names):
    """Quorum queues declared through node (their preferred leader), with a leader elected."""
    conn = pika_connect(node)
    try:
        ch = conn.channel()
        for n in names:
            ch.queue_declare(n, durable=True, arguments=QQ)
    finally:
        conn.close()
    wait_true(lambda: all(queues_by_name(c, node)[n]["leader"] == node.name for n in names),
              timeout=15, what=f"leaders on {node.name}")


def test_drain_and_revive(cluster, uniq):
    c = cluster
    n1, n2, _n3 = c.nodes
    names = [uniq("dq") for _ in range(4)]
    declare_led_by(c, n1, names)
    client = pika_connect(n1)
    closed = []
    # list_connections is cluster-wide: node 2 lists node 1's client too.
    conns = json.loads(ok(c.ctl(n2, "--json", "list_connections")).stdout)
    assert n1.name in [x["node"] for x in conns], conns
    # ... and closes it through node 2 (close_connection asks the node that holds it).
    names_on_n1 = lambda: {x["name"] for x in json.loads(ok(c.ctl(n2, "--json", "list_connections")).stdout)  # noqa: E731
                           if x["node"] == n1.name}
    before = names_on_n1()
    other = pika_connect(n1)
    (name,) = names_on_n1() - before
    ok(c.ctl(n2, "close_connection", name, "bye"))
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        other.process_data_events(time_limit=2)
    started = time.monotonic()
    out = json.loads(ok(c.ctl(n1, "--json", "drain")).stdout)
    assert time.monotonic() - started < 10
    assert out["is_under_maintenance"] is True and out["connections_closed"] >= 1
    assert out["leader_transfers"] >= len(names) and out["leaders_remaining"] == 0
    # Every leadership is elsewhere, as the other nodes see it too.
    for node in (n1, n2):
        qs = queues_by_name(c, node)
        assert all(qs[n]["leader"] not in ("", n1.name) for n in names), qs
    # The client got 320 CONNECTION_FORCED; new clients are refused.
    try:
        client.process_data_events(time_limit=2)
    except pika.exceptions.ConnectionClosedByBroker as e:
        closed.append((e.reply_code, e.reply_text))
    assert closed and closed[0][0] == 320 and "maintenance" in closed[0][1]
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika_connect(n1)
    wait_true(lambda: n1.name not in [x["node"] for x in json.loads(ok(c.ctl(n2, "--json", "list_connections")).stdout)],
              what="node 1's connections gone")
    st = json.loads(ok(c.ctl(n1, "--json", "status")).stdout)
    assert st["is_under_maintenance"] is True and st["quorum_queue_leaders"] == 0
    assert "amqp" not in {l["protocol"] for l in st["listeners"]}
    # Still quiet after a while: leaderships won later would be handed on too.
    time.sleep(0.5)
    assert json.loads(ok(c.ctl(n1, "--json", "status")).stdout)["quorum_queue_leaders"] == 0
    # The table form.
    assert f"Will put node {n1.name} into maintenance mode" in ok(c.ctl(n1, "drain")).stdout
    # revive: clients are served again.
    assert f"Will put node {n1.name} back into service" in ok(c.ctl(n1, "revive")).stdout
    conn = pika_connect(n1)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", names[0], b"after revive")
        # (confirmed by the leader elsewhere: this node's replica applies it a moment later)
        wait_true(lambda: ch.queue_declare(names[0], passive=True).method.message_count == 1,
                  what="the message on node 1's replica")
    finally:
        conn.close()
    assert json.loads(ok(c.ctl(n1, "--json", "status")).stdout)["is_under_maintenance"] is False


class ConfirmingPublisher(threading.Thread):
    """Publishes with confirms through the first of nodes that accepts it, moving to the next one
    when its node closes the connection (320 on drain or shutdown); records the longest gap
    between two confirms and what was confirmed."""

    def __init__(self, nodes, queue):
        super().__init__(daemon=True)
        self.nodes, self.queue = list(nodes), queue
        self.stop = threading.Event()
        self.confirmed = 0
        self.confirmed_ids = set()
        self.longest = 0.0
        self.reconnects = 0
        self.error = None

    def _connect(self, deadline):
        while True:
            for node in self.nodes:
                try:
                    conn = pika_connect(node)
                    ch = conn.channel()
                    ch.confirm_delivery()
                    return conn, ch
                except pika.exceptions.AMQPError:
                    continue
            if time.monotonic() > deadline:
                raise AssertionError("no node accepts the publisher")
            time.sleep(0.05)

    def run(self):
        try:
            conn, ch = self._connect(time.monotonic() + 10)
            last = time.monotonic()
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    ch.basic_publish("", self.queue, b"%d" % n, properties=pika.BasicProperties(delivery_mode=2))
                except (pika.exceptions.AMQPConnectionError, pika.exceptions.ChannelClosed,
                        pika.exceptions.StreamLostError):
                    self.reconnects += 1
                    conn, ch = self._connect(time.monotonic() + 10)
                    continue
                now = time.monotonic()
                self.longest = max(self.longest, now - last)
                last = now
                self.confirmed += 1
                self.confirmed_ids.add(n)
            conn.close()
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def test_sigterm_hands_leaderships_over_before_exit(cluster, uniq):
    c = cluster
    n1, n2, n3 = c.nodes
    names = [uniq("tq") for _ in range(3)]
    declare_led_by(c, n3, names)
    publisher = ConfirmingPublisher([n2], names[0])
    publisher.start()
    wait_true(lambda: publisher.confirmed > 50 or publisher.error, what="confirms")
    n3.send_signal(signal.SIGTERM)
    n3.proc.wait(timeout=10)
    # The node logged the hand-over, and the others show new leaders right away (no election
    # timeout had to pass: the leaders moved while n3 was still up).
    log = n3.log_text()
    assert re.search(r"handing [1-9][0-9]* quorum queue leadership\(s\) to other members", log)
    assert "quorum queue leaderships handed over" in log
    qs = queues_by_name(c, n1)
    assert all(qs[n]["leader"] in (n1.name, n2.name) for n in names), qs
    before = publisher.confirmed
    wait_true(lambda: publisher.confirmed > before + 50 or publisher.error, what="confirms after the stop")
    publisher.stop.set()
    publisher.join(timeout=10)
    assert publisher.error is None
    print(f"longest confirm pause around the SIGTERM: {publisher.longest:.3f} s")
    assert publisher.longest < 2.0, f"confirms paused {publisher.longest:.2f} s"
    n3.start()
    c.await_startup(n3)


def test_rolling_restart_with_drain(cluster, uniq):
    """drain, SIGTERM, start, await_startup, one node after the other, under a publisher with
    confirms: nothing confirmed is lost and confirms pause briefly (issue 8's target: < 2 s)."""
    c = cluster
    q = uniq("rq")
    declare_led_by(c, c.nodes[0], [q])
    publisher = ConfirmingPublisher(c.nodes, q)
    publisher.start()
    wait_true(lambda: publisher.confirmed > 50 or publisher.error, what="confirms")
    for node in c.nodes:
        ok(c.ctl(node, "drain"))
        node.send_signal(signal.SIGTERM)
        node.proc.wait(timeout=10)
        node.start()
        c.await_startup(node)
        before = publisher.confirmed
        wait_true(lambda: publisher.confirmed > before + 20 or publisher.error, what=f"confirms after {node.name}")
    publisher.stop.set()
    publisher.join(timeout=10)
    assert publisher.error is None, publisher.error
    print(f"rolling restart: {publisher.confirmed} confirmed, {publisher.reconnects} reconnect(s), "
          f"longest confirm pause {publisher.longest:.3f} s")
    assert publisher.longest < 2.0
    conn = pika_connect(c.nodes[1])
    try:
        ch = conn.channel()
        got = set()
        while True:
            method, _props, body = ch.basic_get(q, auto_ack=True)
            if method is None:
                break
            got.add(int(body))
        assert publisher.confirmed_ids <= got, sorted(publisher.confirmed_ids - got)[:10]
    finally:
        conn.close()
