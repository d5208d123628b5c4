"""Queue figures in the management API are cluster-wide: any node of a 3-node cluster reports a
classic queue's depth, consumers and message_stats as its home node does (mgmt/qgather.c,
broker/qstats.c), and a quorum queue's figures (depth from a replica, counters summed over the
nodes that counted them) the same way, also from a node without a replica. The overview's
queue_totals / object_totals.consumers and the vhosts' message counts follow. A home node that
is down or silent does not hold a request up: its queues show state "down".

Warren only (starts its own cluster); every connection is on 127.0.0.1, every wait bounded.
"""
import signal
import time
import urllib.parse

import pika
import pytest
import requests

import conftest
from helpers.clients import pika_connect, wait_for

pytestmark = pytest.mark.timeout(180)

NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]
AUTH = ("guest", "guest")


def q(name):
    return urllib.parse.quote(name, safe="")


class Api:
    def __init__(self, node):
        self.base = f"http://{node.host}:{node.mgmt_port}/api"
        self.session = requests.Session()

    def get(self, path, timeout=15):
        r = self.session.get(self.base + path, auth=AUTH, timeout=timeout)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pki):
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("starts its own Warren cluster")
    from helpers.cluster import WarrenCluster
    c = WarrenCluster(str(tmp_path_factory.mktemp("cluster")), pki, size=3).start()
    try:
        c.wait_formed()
        yield c
    finally:
        c.stop()


@pytest.fixture
def apis(cluster):
    a = [Api(n) for n in cluster.nodes]
    yield a
    for x in a:
        x.session.close()


FIELDS = ("messages", "messages_ready", "messages_unacknowledged", "consumers")


def figures(o):
    """The figures every node must agree on, from a queue object."""
    stats = o.get("message_stats", {})
    return {**{k: o.get(k) for k in FIELDS}, "state": o.get("state"),
            "publish": stats.get("publish"), "deliver": stats.get("deliver"), "ack": stats.get("ack")}


def find(items, name):
    for o in items:
        if o["name"] == name:
            return o
    return None


def views(api, name):
    """The queue as each listing path shows it: the object, a page (fast path, filtered by
    name), the unpaged vhost list and the general path (sorted by messages)."""
    one = api.get(f"/queues/%2F/{q(name)}")
    page = api.get(f"/queues?page=1&page_size=100&name={q(name)}")["items"]
    vhost = api.get("/queues/%2F")
    general = api.get("/queues?sort=messages&sort_reverse=true")
    return [figures(one), figures(find(page, name)), figures(find(vhost, name)), figures(find(general, name))]


def all_agree(apis, name, expected):
    seen = []
    for api in apis:
        for v in views(api, name):
            seen.append(v)
            if any(v[k] != want for k, want in expected.items()):
                return False, seen
    return True, seen


def assert_agree(apis, name, expected, timeout=15):
    last = {}

    def check():
        ok, last["seen"] = all_agree(apis, name, expected)
        return ok
    assert wait_for(check, timeout, step=0.3), (expected, last.get("seen"))


def confirmed_publish(node, queue, n, prefix=b"m"):
    """n persistent messages, confirmed (so the home has them, and keeps them over a restart)."""
    conn = pika_connect(node)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        props = pika.BasicProperties(delivery_mode=2)
        for i in range(n):
            ch.basic_publish("", queue, prefix + str(i).encode(), properties=props)
    finally:
        conn.close()


def test_classic_queue_figures_from_every_node(cluster, apis):
    """Homed on node 1, published to through nodes 1 and 2, consumed from node 3 with unacked
    deliveries: every node reports what node 1 holds."""
    name = f"cs-classic-{time.monotonic_ns()}"
    home = pika_connect(cluster.nodes[0])
    consumer = None
    try:
        home.channel().queue_declare(name, durable=True)
        confirmed_publish(cluster.nodes[0], name, 5)
        confirmed_publish(cluster.nodes[1], name, 10)
        consumer = pika_connect(cluster.nodes[2])
        cch = consumer.channel()
        cch.basic_qos(prefetch_count=3)
        got = []
        cch.basic_consume(name, lambda c, m, p, b: got.append(m.delivery_tag), auto_ack=False)
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            consumer.process_data_events(time_limit=0.1)
        assert len(got) == 3
        assert views(apis[0], name)[0]["state"] == "running"
        assert_agree(apis, name, {"messages": 15, "messages_ready": 12, "messages_unacknowledged": 3,
                                  "consumers": 1, "publish": 15, "deliver": 3, "state": "running"})
        # acks reach the home; every node sees them
        cch.basic_ack(got[-1], multiple=True)
        deadline = time.monotonic() + 10
        while len(got) < 6 and time.monotonic() < deadline:
            consumer.process_data_events(time_limit=0.1)
        assert_agree(apis, name, {"messages": 12, "messages_ready": 9, "messages_unacknowledged": 3,
                                  "consumers": 1, "publish": 15, "deliver": 6, "ack": 3})
        # rates are the home's: the same on every node, and not 0 once a 5 s sample of the home
        # saw publishes (a queue's first sample has rate 0, so keep publishing until then)
        trickle = pika_connect(cluster.nodes[1])
        try:
            tch = trickle.channel()
            seen = {}

            def rates_agree():
                tch.basic_publish("", name, b"t")
                rates = set()
                for api in apis:
                    o = api.get(f"/queues/%2F/{q(name)}")
                    rates.add((o["message_stats"]["publish_details"]["rate"],
                               o["message_stats"]["deliver_get_details"]["rate"]))
                seen["rates"] = rates
                return len(rates) == 1 and next(iter(rates))[0] > 0
            assert wait_for(rates_agree, 20, step=0.3), seen
        finally:
            trickle.close()
        # the overview and the vhost count it on every node alike
        def totals_agree():
            seen = set()
            for api in apis:
                ov = api.get("/overview")
                vh = api.get("/vhosts/%2F")
                seen.add((ov["queue_totals"]["messages"], ov["queue_totals"]["messages_unacknowledged"],
                          ov["object_totals"]["consumers"], vh["messages"], vh["messages_ready"]))
            return len(seen) == 1 and next(iter(seen))[0] >= 12 and next(iter(seen))[2] >= 1
        assert wait_for(totals_agree, 15, step=0.3)
    finally:
        if consumer and consumer.is_open:
            consumer.close()
        ch = home.channel()
        ch.queue_delete(name)
        home.close()


def test_quorum_queue_figures_from_a_node_without_replica(cluster, apis):
    """A quorum queue with one replica (node 1): node 3 reports its depth too, and publishes
    counted on the nodes whose clients made them add up (three replicas, three publishers)."""
    single = f"cs-qq1-{time.monotonic_ns()}"
    triple = f"cs-qq3-{time.monotonic_ns()}"
    conn = pika_connect(cluster.nodes[0])
    try:
        ch = conn.channel()
        ch.queue_declare(single, durable=True, arguments={"x-queue-type": "quorum",
                                                          "x-quorum-initial-group-size": 1})
        ch.queue_declare(triple, durable=True, arguments={"x-queue-type": "quorum"})
        confirmed_publish(cluster.nodes[0], single, 4)
        for node in cluster.nodes:
            confirmed_publish(node, triple, 2)
        assert_agree(apis, single, {"messages": 4, "messages_ready": 4, "messages_unacknowledged": 0,
                                    "consumers": 0, "publish": 4})
        assert_agree(apis, triple, {"messages": 6, "messages_ready": 6, "publish": 6})
    finally:
        ch = conn.channel()
        ch.queue_delete(single)
        ch.queue_delete(triple)
        conn.close()


def timed(api, path, limit):
    t0 = time.monotonic()
    body = api.get(path, timeout=limit + 5)
    took = time.monotonic() - t0
    assert took < limit, (path, took)
    return body


def test_silent_or_stopped_home_does_not_hold_requests(cluster, apis):
    """Node 2 paused (SIGSTOP): listings on node 1 answer within the gather timeout, its queue
    "down"; node 3 stopped: every queue endpoint answers at once, its durable queue "down"."""
    on2, on3 = f"cs-on2-{time.monotonic_ns()}", f"cs-on3-{time.monotonic_ns()}"
    for node, name in ((cluster.nodes[1], on2), (cluster.nodes[2], on3)):
        conn = pika_connect(node)
        try:
            conn.channel().queue_declare(name, durable=True)
        finally:
            conn.close()
        confirmed_publish(node, name, 2)
    assert_agree(apis[:1], on2, {"messages": 2, "state": "running"})
    node2, node3 = cluster.nodes[1], cluster.nodes[2]
    node2.send_signal(signal.SIGSTOP)
    try:
        page = timed(apis[0], f"/queues?page=1&page_size=100&name={q(on2)}", 4.0)["items"]
        assert page[0]["state"] == "down" and "messages" not in page[0], page
        listed = find(timed(apis[0], "/queues", 4.0), on2)
        assert listed["state"] == "down", listed
        # queues homed on the running nodes keep their figures
        assert find(timed(apis[0], "/queues/%2F", 4.0), on3)["messages"] == 2
    finally:
        node2.send_signal(signal.SIGCONT)
    assert_agree(apis[:1], on2, {"messages": 2, "state": "running"}, timeout=30)
    node3.stop()
    try:
        one = timed(apis[0], f"/queues/%2F/{q(on3)}", 3.0)
        assert one["state"] == "down" and "messages" not in one, one
        assert find(timed(apis[0], "/queues", 3.0), on3)["state"] == "down"
        assert find(timed(apis[1], f"/queues?page=1&name={q(on3)}", 3.0)["items"], on3)["state"] == "down"
        timed(apis[0], "/overview", 3.0)
        timed(apis[0], "/vhosts", 3.0)
        assert find(timed(apis[0], "/queues/%2F", 3.0), on2)["messages"] == 2
    finally:
        node3.start()
    assert_agree(apis[:2], on3, {"messages": 2, "state": "running"}, timeout=40)


def test_quorum_publish_through_a_node_without_replica_is_counted(cluster, apis):
    name = f"cs-qqnm-{time.monotonic_ns()}"
    conn = pika_connect(cluster.nodes[0])
    try:
        conn.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "quorum",
                                                                   "x-quorum-initial-group-size": 1})
        confirmed_publish(cluster.nodes[2], name, 3)
        assert_agree(apis, name, {"messages": 3, "publish": 3}, timeout=8)
    finally:
        conn.channel().queue_delete(name)
        conn.close()


def test_overview_message_stats_and_listeners_cover_the_cluster(cluster, apis):
    """/api/overview's message_stats sum every node's counters and its listeners list every
    node's, whichever node is asked (RabbitMQ's overview is the cluster's)."""
    name = f"cs-ov-{time.monotonic_ns()}"
    conn = pika_connect(cluster.nodes[0])
    try:
        conn.channel().queue_declare(name, durable=True)
        before = [api.get("/overview").get("message_stats", {}).get("publish", 0) for api in apis]
        assert len(set(before)) == 1, before
        # publishes through nodes 2 and 3 only: node 1's own counter does not move
        confirmed_publish(cluster.nodes[1], name, 4)
        confirmed_publish(cluster.nodes[2], name, 6)
        seen = {}

        def publish_agrees():
            seen["p"] = [api.get("/overview")["message_stats"].get("publish") for api in apis]
            return seen["p"] == [before[0] + 10] * 3
        assert wait_for(publish_agrees, 15, step=0.3), (before, seen)
        for api in apis:
            ov = api.get("/overview")
            amqp = {(l["node"], l["port"]) for l in ov["listeners"] if l["protocol"] == "amqp"}
            assert amqp == {(NAMES[i], n.port) for i, n in enumerate(cluster.nodes)}, ov["listeners"]
            assert "rate" in ov["message_stats"]["publish_details"]
    finally:
        conn.channel().queue_delete(name)
        conn.close()


def test_vhost_and_exchange_message_stats_cover_the_cluster(cluster, apis):
    """An exchange's publish_in / publish_out and a vhost's publish / deliver_get are the
    cluster's: publishes through nodes 2 and 3, read from any node, add up alike."""
    vhost = f"cs-vh-{time.monotonic_ns()}"
    for api in apis[:1]:
        r = api.session.put(f"{api.base}/vhosts/{q(vhost)}", auth=AUTH, timeout=15)
        assert r.status_code in (201, 204), r.text
        r = api.session.put(f"{api.base}/permissions/{q(vhost)}/guest", auth=AUTH, timeout=15,
                            json={"configure": ".*", "write": ".*", "read": ".*"})
        assert r.status_code in (201, 204), r.text
    params = [pika.ConnectionParameters(n.host, n.port, vhost) for n in cluster.nodes]
    assert wait_for(lambda: all(api.get(f"/vhosts/{q(vhost)}")["name"] == vhost for api in apis), 15)

    def open_on(i):
        deadline = time.monotonic() + 15
        while True:
            try:
                return pika.BlockingConnection(params[i])
            except pika.exceptions.AMQPConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    setup = open_on(0)
    try:
        ch = setup.channel()
        ch.exchange_declare("cs-x", "direct", durable=True)
        ch.queue_declare("cs-q", durable=True)
        ch.queue_bind("cs-q", "cs-x", "k")
        for i, n in ((1, 3), (2, 5)):
            c = open_on(i)
            try:
                pch = c.channel()
                pch.confirm_delivery()
                for _ in range(n):
                    pch.basic_publish("cs-x", "k", b"m")
                pch.basic_publish("cs-x", "nowhere", b"u")  # in, not out
            finally:
                c.close()
        seen = {}

        def agree():
            xs = [api.get(f"/exchanges/{q(vhost)}/cs-x").get("message_stats", {}) for api in apis]
            listed = [find(api.get(f"/exchanges/{q(vhost)}"), "cs-x").get("message_stats", {}) for api in apis]
            vs = [api.get(f"/vhosts/{q(vhost)}").get("message_stats", {}) for api in apis]
            vl = [find(api.get("/vhosts"), vhost).get("message_stats", {}) for api in apis]
            seen["x"] = [(s.get("publish_in"), s.get("publish_out")) for s in xs + listed]
            seen["v"] = [s.get("publish") for s in vs + vl]
            return seen["x"] == [(10, 8)] * 6 and seen["v"] == [10] * 6
        assert wait_for(agree, 20, step=0.3), seen
        x = apis[0].get(f"/exchanges/{q(vhost)}/cs-x")["message_stats"]
        assert "rate" in x["publish_in_details"]
    finally:
        setup.close()
        apis[0].session.delete(f"{apis[0].base}/vhosts/{q(vhost)}", auth=AUTH, timeout=15)
