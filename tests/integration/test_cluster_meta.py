"""Replicated metadata through AMQP (issue 5): exchanges, queues and bindings declared through
any node of a three-node cluster are the same on every node, errors are RabbitMQ's, a change
acknowledged to a client survives the loss of any node, a node that was down catches up, and a
node cut off from the majority refuses changes with a clear error.

Every check goes through pika against real warren-server processes (helpers/cluster.py).
Queues here are used on their home node only; cross-node publish/consume has its own tests.
Warren only (skipped with WARREN_TEST_EXTERNAL or WARREN_TEST_RABBITMQ). Every wait is bounded.
"""
import threading
import time

import pika
import pytest

from conftest import EXTERNAL, RABBITMQ_MODE
from helpers.clients import pika_connect
from test_cluster import NAMES, make_cluster, wait_formed  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="starts its own Warren processes"),
              pytest.mark.timeout(180)]


def channel_error(ch, action):
    """Runs action(ch); it must close the channel. Returns (code, text)."""
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        action(ch)
    return info.value.reply_code, info.value.reply_text


def eventually(action, retry_on=(), timeout=5.0):
    """Runs action until it stops raising retry_on (bounded): a change made through another
    node becomes visible here once this node has applied it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except retry_on:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def converges(check, expected=True, timeout=5.0):
    """True once check() returns expected (polled, bounded)."""
    deadline = time.monotonic() + timeout
    while check() != expected:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def passive_error(node, name, kind="queue"):
    """(code, text) of a passive declare of a queue or exchange through node; (None, None) when
    it succeeds. One connection per call: a refused declare closes its channel."""
    conn = pika_connect(node)
    try:
        ch = conn.channel()
        if kind == "queue":
            ch.queue_declare(name, passive=True)
        else:
            ch.exchange_declare(name, passive=True)
        return None, None
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    finally:
        if conn.is_open:
            conn.close()


def exists(node, queue):
    """True when node knows the queue (405: it exists, owned by another connection)."""
    code, text = passive_error(node, queue)
    assert code in (None, 404, 405), text
    return code in (None, 405)


def exchange_exists(node, exchange):
    code, text = passive_error(node, exchange, kind="exchange")
    assert code in (None, 404), text
    return code is None


def test_declarations_are_visible_on_every_node(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    x, q = uniq("x"), uniq("q")
    conn1, conn2, conn3 = pika_connect(n1), pika_connect(n2), pika_connect(n3)
    try:
        ch1, ch2, ch3 = conn1.channel(), conn2.channel(), conn3.channel()
        ch3.exchange_declare(x, "topic", durable=True)  # exchange through node 3
        ch2.queue_declare(q, durable=True)  # queue through node 2: its home
        ch1.queue_bind(q, x, routing_key="eu.#")  # binding through node 1
        # Every node sees all three: declare-ok waits for the change to apply on the node that
        # answers; the others apply the same log a moment later (as with RabbitMQ 4's Khepri,
        # reads are served from the local copy), so other nodes are given a bounded moment.
        for node in c.nodes:
            assert converges(lambda: exists(node, q))
            assert converges(lambda: exchange_exists(node, x))
        # The binding routes on the queue's home node.
        ch2.confirm_delivery()
        eventually(lambda: ch2.basic_publish(x, "eu.paris", b"bonjour", mandatory=True),
                   retry_on=pika.exceptions.UnroutableError)
        ch2.basic_publish(x, "us.nyc", b"hello")  # no binding matches: dropped
        deadline = time.monotonic() + 10
        got = []
        while len(got) < 1 and time.monotonic() < deadline:
            method, _p, body = ch2.basic_get(q, auto_ack=True)
            if method:
                got.append(body)
            else:
                time.sleep(0.05)
        assert got == [b"bonjour"]
        # A redeclare with the same properties is fine on any node; another type is refused
        # with RabbitMQ's text on every node.
        ch1.exchange_declare(x, "topic", durable=True)
        code, text = channel_error(ch1, lambda ch: ch.exchange_declare(x, "direct", durable=True))
        assert code == 406
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': "
                        "received 'direct' but current is 'topic'")
        code, _ = channel_error(ch3, lambda ch: ch.queue_declare(q, durable=False))
        assert code == 406
        # Unbind through node 3, delete through node 1: gone everywhere.
        ch2 = conn2.channel()
        ch2.queue_unbind(q, x, routing_key="eu.#")
        ch2.confirm_delivery()
        with pytest.raises(pika.exceptions.UnroutableError):
            ch2.basic_publish(x, "eu.paris", b"nobody", mandatory=True)
        ch1 = conn1.channel()
        ch1.queue_delete(q)
        ch1.exchange_delete(x)
        for node in c.nodes:
            assert converges(lambda: exists(node, q), False)
            assert converges(lambda: exchange_exists(node, x), False)
    finally:
        for conn in (conn1, conn2, conn3):
            if conn.is_open:
                conn.close()


def test_exclusive_and_server_named_queues(make_cluster):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, _ = c.nodes
    owner = pika_connect(n2)
    ch = owner.channel()
    name = ch.queue_declare("", exclusive=True).method.queue
    assert name.startswith("amq.gen-")
    # Another connection, on another node, sees it but may not use it.
    assert converges(lambda: exists(n1, name))
    other = pika_connect(n1)
    try:
        code, text = channel_error(other.channel(), lambda c2: c2.queue_declare(name, passive=True))
        assert code == 405
        assert "cannot obtain exclusive access to locked queue" in text
    finally:
        other.close()
    owner.close()  # the owner's node deletes the queue through the metadata group
    for node in c.nodes:
        assert converges(lambda: exists(node, name), False, timeout=15)


def test_acknowledged_changes_survive_a_killed_node(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    prefix = uniq("k")
    acked = []
    errors = []
    stop = threading.Event()

    def declare_loop():
        conn = pika_connect(n1)
        try:
            ch = conn.channel()
            i = 0
            while not stop.is_set() and i < 2000:
                name = f"{prefix}-{i}"
                try:
                    ch.queue_declare(name, durable=True)
                    acked.append(name)
                except pika.exceptions.ChannelClosedByBroker as e:
                    errors.append((e.reply_code, e.reply_text))
                    ch = conn.channel()
                i += 1
        finally:
            if conn.is_open:
                conn.close()

    t = threading.Thread(target=declare_loop)
    t.start()
    time.sleep(1.0)
    n3.kill9()  # a follower or the leader, whichever it is
    time.sleep(1.5)
    stop.set()
    t.join(timeout=60)
    assert not t.is_alive()
    assert len(acked) > 10, (acked, errors)
    # While a leader is elected a change may time out with 541; none may be acknowledged and lost.
    assert all(code == 541 for code, _ in errors), errors
    n3.start()
    c.await_startup(n3)
    for node in (n1, n2, n3):
        assert converges(lambda: exists(node, acked[-1]), timeout=15), node.name
        conn = pika_connect(node)
        try:
            ch = conn.channel()
            for name in acked:
                ch.queue_declare(name, passive=True)
        finally:
            conn.close()


def test_minority_refuses_changes_but_serves_reads(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    q = uniq("q")
    conn = pika_connect(n3)
    conn.channel().queue_declare(q, durable=True)
    conn.close()
    n1.stop()
    n2.stop()
    conn = pika_connect(n3)
    try:
        ch = conn.channel()
        ch.queue_declare(q, passive=True)  # reads come from the applied state
        started = time.monotonic()
        # 541 INTERNAL_ERROR is a connection-level error in AMQP 0-9-1.
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            ch.queue_declare(uniq("new"), durable=True)
        assert time.monotonic() - started < 20
        assert info.value.reply_code == 541
        assert "metadata store unavailable: no quorum" in info.value.reply_text
    finally:
        if conn.is_open:
            conn.close()
    n1.start()
    c.await_startup(n3)
    conn = pika_connect(n3)
    try:
        conn.channel().queue_declare(uniq("after"), durable=True)
    finally:
        conn.close()


def test_durable_topology_and_messages_survive_a_full_restart(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    x, q = uniq("x"), uniq("q")
    conn = pika_connect(n2)
    ch = conn.channel()
    ch.exchange_declare(x, "direct", durable=True)
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, x, routing_key="k")
    ch.confirm_delivery()
    for i in range(20):
        ch.basic_publish(x, "k", f"m{i}".encode(), properties=pika.BasicProperties(delivery_mode=2))
    conn.close()
    for node in c.nodes:
        node.stop()
    for node in c.nodes:
        node.start()
    for node in c.nodes:
        c.await_startup(node)
    for node in (n1, n3):
        assert converges(lambda: exists(node, q))
    conn = pika_connect(n2)
    try:
        ch = conn.channel()
        assert ch.queue_declare(q, passive=True).method.message_count == 20
        ch.confirm_delivery()
        ch.basic_publish(x, "k", b"again", mandatory=True)  # the binding came back too
        assert ch.queue_declare(q, passive=True).method.message_count == 21
    finally:
        conn.close()


def test_transient_queues_of_a_lost_node_are_deleted(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    transient, durable = uniq("transient"), uniq("durable")
    conn = pika_connect(n2)
    ch = conn.channel()
    ch.queue_declare(transient, durable=False)
    ch.queue_declare(durable, durable=True)
    conn.close()
    assert converges(lambda: exists(n1, transient))
    n2.kill9()
    # As RabbitMQ: the lost node's non-durable queues are deleted cluster-wide; its durable ones
    # stay, unavailable until it returns.
    for node in (n1, n3):
        # gone from the metadata, not merely unavailable (which is a 404 naming the home node)
        assert converges(lambda: passive_error(node, transient)[1] == f"NOT_FOUND - no queue '{transient}' in vhost '/'",
                         timeout=30), node.name
    conn = pika_connect(n1)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().queue_declare(durable, passive=True)
        assert info.value.reply_code == 404
        assert info.value.reply_text == (f"NOT_FOUND - home node '{NAMES[1]}' of durable queue '{durable}' "
                                         "in vhost '/' is down or inaccessible")
    finally:
        conn.close()
    n2.start()
    c.await_startup(n2)
    assert converges(lambda: exists(n1, durable) and not exists(n2, transient), timeout=15)
