"""Quorum queues (issue 6) on one node: declaration rules and texts as RabbitMQ gives them,
confirms, consumers, acks, requeues with delivery counts, the delivery limit with
dead-lettering, length limits, TTL, purge, basic.get, and durability across a restart.

The error texts were taken from RabbitMQ 3.10 (Debian's rabbitmq-server) running the same
declarations; x-delivery-count follows RabbitMQ 4.0-4.2 (present once a message was returned).
Runs against the session broker (or RabbitMQ with WARREN_TEST_RABBITMQ), except the restart
test, which needs a private Warren.
"""
import os
import threading
import time

import pika
import pytest

from conftest import EXTERNAL, RABBITMQ_MODE
from helpers.clients import pika_connect, pika_process_until

Q = {"x-queue-type": "quorum"}


def qargs(**extra):
    a = dict(Q)
    a.update({k.replace("_", "-"): v for k, v in extra.items()})
    return a


def declare_error(broker, **kwargs):
    conn = pika_connect(broker)
    ch = conn.channel()
    try:
        ch.queue_declare(**kwargs)
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    finally:
        if conn.is_open:
            conn.close()
    return None


@pytest.mark.parametrize("kwargs,text", [
    (dict(durable=False), "invalid property 'non-durable' for queue '{q}' in vhost '/'"),
    (dict(durable=True, auto_delete=True), "invalid property 'auto-delete' for queue '{q}' in vhost '/'"),
    (dict(durable=True, exclusive=True), "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
    (dict(durable=False, exclusive=True), "invalid property 'exclusive-owner' for queue '{q}' in vhost '/'"),
    (dict(durable=True, arguments=qargs(x_max_priority=5)),
     "invalid arg 'x-max-priority' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
    (dict(durable=True, arguments=qargs(x_queue_mode="lazy")),
     "invalid arg 'x-queue-mode' for queue '{q}' in vhost '/' of queue type rabbit_quorum_queue"),
    (dict(durable=True, arguments=qargs(x_dead_letter_strategy="foo")),
     "invalid arg 'x-dead-letter-strategy' for queue '{q}' in vhost '/': invalid_dlx_strategy"),
    (dict(durable=True, arguments=qargs(x_quorum_initial_group_size=0)),
     "invalid arg 'x-quorum-initial-group-size' for queue '{q}' in vhost '/': {{value_zero,0}}"),
    (dict(durable=True, arguments=qargs(x_queue_leader_locator="foo")),
     "invalid arg 'x-queue-leader-locator' for queue '{q}' in vhost '/': invalid_queue_locator_arg"),
])
def test_declare_refusals(broker, uniq, kwargs, text):
    q = uniq("qq-refused")
    kwargs = dict(kwargs)
    kwargs.setdefault("arguments", Q)
    got = declare_error(broker, queue=q, **kwargs)
    assert got == (406, "PRECONDITION_FAILED - " + text.format(q=q))


def test_server_named_refused(broker):
    got = declare_error(broker, queue="", durable=True, arguments=Q)
    assert got == (406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue")


def test_unknown_arguments_accepted_and_redeclare_equivalence(ch, broker, uniq):
    q = uniq("qq-args")
    ch.queue_declare(q, durable=True, arguments=qargs(x_foo=5, x_delivery_limit=-1))
    ch.queue_declare(q, durable=True, arguments=qargs(x_foo=5, x_delivery_limit=-1))
    got = declare_error(broker, queue=q, durable=True)
    assert got == (406, f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}' in vhost '/': "
                        "received none but current is the value 'quorum' of type 'longstr'")
    ch.queue_delete(q)


def test_global_qos_refused_with_540(broker, uniq):
    q = uniq("qq-gqos")
    conn = pika_connect(broker)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.basic_qos(prefetch_count=5, global_qos=True)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 540
    assert e.value.reply_text == f"NOT_IMPLEMENTED - queue '{q}' in vhost '/' does not support global qos"
    conn = pika_connect(broker)
    conn.channel().queue_delete(q)
    conn.close()


def test_get_refused_on_single_active_consumer_queue(broker, uniq):
    q = uniq("qq-sac-get")
    conn = pika_connect(broker)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=qargs(x_single_active_consumer=True))
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_get(q)
    assert e.value.reply_code == 405
    assert e.value.reply_text == (f"RESOURCE_LOCKED - cannot obtain access to locked queue '{q}' in vhost '/'. "
                                  "basic.get operations are not supported by quorum queues with single active consumer")
    conn.channel().queue_delete(q)
    conn.close()


def test_confirmed_publish_then_consume_in_order(ch, uniq):
    q = uniq("qq-fifo")
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()
    for i in range(200):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    assert ch.queue_declare(q, passive=True).method.message_count == 200
    got = []
    ch.basic_qos(prefetch_count=10)

    def on_msg(chn, method, props, body):
        got.append(int(body))
        chn.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(q, on_msg)
    assert pika_process_until(ch.connection, lambda: len(got) == 200, timeout=20)
    ch.basic_cancel(tag)
    assert got == list(range(200))
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


def test_requeue_counts_and_redelivered_flag(ch, uniq):
    q = uniq("qq-count")
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"m", pika.BasicProperties(headers={"keep": "me"}))
    m, p, _ = ch.basic_get(q)
    # RabbitMQ 4 adds x-delivery-count once a message was returned (3.10 sends 0 at first)
    assert not m.redelivered and (p.headers or {}).get("x-delivery-count", 0) == 0
    assert p.headers["keep"] == "me"
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, p, _ = ch.basic_get(q)
    assert m.redelivered and p.headers["x-delivery-count"] == 1 and p.headers["keep"] == "me"
    ch.basic_reject(m.delivery_tag, requeue=True)
    m, p, _ = ch.basic_get(q)
    assert m.redelivered and p.headers["x-delivery-count"] == 2
    ch.basic_ack(m.delivery_tag)
    assert ch.basic_get(q) == (None, None, None)
    ch.queue_delete(q)


def test_delivery_limit_dead_letters_with_reason(ch, uniq):
    q, dlq = uniq("qq-poison"), uniq("qq-poison-dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(q, durable=True, arguments=qargs(x_delivery_limit=2, x_dead_letter_exchange="",
                                                       x_dead_letter_routing_key=dlq))
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison")
    deliveries = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m, _p, _b = ch.basic_get(q)
        if m is None:
            if ch.queue_declare(dlq, passive=True).method.message_count:
                break
            time.sleep(0.02)
            continue
        deliveries += 1
        ch.basic_reject(m.delivery_tag, requeue=True)
    assert deliveries == 3  # limit 2: the third return exceeds it
    m, p, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"poison"
    death = p.headers["x-death"][0]
    assert death["reason"] == "delivery_limit" and death["queue"] == q and death["count"] == 1
    assert p.headers["x-first-death-reason"] == "delivery_limit"
    assert ch.basic_get(q) == (None, None, None)
    ch.queue_delete(q)
    ch.queue_delete(dlq)


def test_reject_without_requeue_dead_letters(ch, uniq):
    q, dlq = uniq("qq-rej"), uniq("qq-rej-dlq")
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(q, durable=True, arguments=qargs(x_dead_letter_exchange="", x_dead_letter_routing_key=dlq))
    ch.confirm_delivery()
    ch.basic_publish("", q, b"bad")
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    got = None
    deadline = time.monotonic() + 5
    while got is None and time.monotonic() < deadline:
        m, p, body = ch.basic_get(dlq, auto_ack=True)
        got = (p.headers["x-death"][0]["reason"], body) if m else None
        time.sleep(0.01 if got is None else 0)
    assert got == ("rejected", b"bad")
    ch.queue_delete(q)
    ch.queue_delete(dlq)


def test_channel_close_returns_unacked(broker, uniq):
    q = uniq("qq-close")
    conn = pika_connect(broker)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    for _ in range(3):
        m, _p, _b = ch.basic_get(q)
        assert m is not None
    conn.close()
    conn = pika_connect(broker)
    ch = conn.channel()
    deadline = time.monotonic() + 5
    while ch.queue_declare(q, passive=True).method.message_count < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    bodies = []
    for _ in range(3):
        m, p, body = ch.basic_get(q, auto_ack=True)
        assert m.redelivered and p.headers["x-delivery-count"] == 1
        bodies.append(body)
    assert bodies == [b"0", b"1", b"2"]
    ch.queue_delete(q)
    conn.close()


def test_max_length_drop_head_and_reject_publish(ch, uniq):
    q1, q2 = uniq("qq-drop"), uniq("qq-rejectpub")
    ch.queue_declare(q1, durable=True, arguments=qargs(x_max_length=2))
    ch.queue_declare(q2, durable=True, arguments=qargs(x_max_length=2, x_overflow="reject-publish"))
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q1, str(i).encode())
    assert [ch.basic_get(q1, auto_ack=True)[2] for _ in range(2)] == [b"3", b"4"]
    ch.basic_publish("", q2, b"a")
    ch.basic_publish("", q2, b"b")
    nacked = 0
    for body in (b"c", b"d", b"e"):
        try:
            ch.basic_publish("", q2, body)
        except pika.exceptions.NackError:
            nacked += 1
    # Warren refuses exactly what is over the limit; RabbitMQ may let one through first.
    exact = not RABBITMQ_MODE
    assert nacked == 3 if exact else nacked >= 2
    assert ch.queue_declare(q2, passive=True).method.message_count == (2 if exact else 5 - nacked)
    ch.queue_delete(q1)
    ch.queue_delete(q2)


def test_message_ttl_and_purge(ch, uniq):
    q = uniq("qq-ttl")
    ch.queue_declare(q, durable=True, arguments=qargs(x_message_ttl=200))
    ch.confirm_delivery()
    ch.basic_publish("", q, b"old")
    time.sleep(0.5)
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    for i in range(4):
        ch.basic_publish("", q, b"x", pika.BasicProperties(expiration="60000"))
    assert ch.queue_purge(q).method.message_count == 4
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


def test_consumer_priority_and_cancel_keeps_unacked(ch, uniq):
    q = uniq("qq-prio")
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()
    low, high = [], []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, b: low.append(m), arguments={"x-priority": 1})
    t_high = ch.basic_consume(q, lambda c, m, p, b: high.append(m), arguments={"x-priority": 10})
    ch.basic_publish("", q, b"1")
    ch.basic_publish("", q, b"2")
    assert pika_process_until(ch.connection, lambda: len(low) + len(high) == 2, timeout=5)
    assert len(high) == 1 and len(low) == 1  # prefetch 1 each: the high one first, then the next
    ch.basic_cancel(t_high)
    ch.basic_ack(high[0].delivery_tag)  # a cancelled consumer's message can still be acked
    ch.basic_ack(low[0].delivery_tag)
    time.sleep(0.2)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)


@pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="restarts a private Warren")
def test_messages_survive_restart_with_counts(fresh_broker, uniq):
    b = fresh_broker()
    q = uniq("qq-restart")
    conn = pika_connect(b)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))
    m, _p, _b = ch.basic_get(q)
    ch.basic_nack(m.delivery_tag, requeue=True)
    conn.close()
    b.restart(kill9=True)  # kill -9: only what was confirmed must be there
    conn = pika_connect(b)
    ch = conn.channel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        n = ch.queue_declare(q, durable=True, arguments=Q).method.message_count
        if n == 100:
            break
        time.sleep(0.05)
    assert n == 100
    m, p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"0" and p.headers["x-delivery-count"] == 1
    conn.close()


def test_single_active_consumer_fails_over_to_the_next(broker, uniq):
    q = uniq("qq-sac")
    conn = pika_connect(broker)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=qargs(x_single_active_consumer=True))
    ch.confirm_delivery()
    first, second = [], []
    ch.basic_qos(prefetch_count=10)
    t1 = ch.basic_consume(q, lambda c, m, p, b: (first.append(b), c.basic_ack(m.delivery_tag)))
    ch.basic_consume(q, lambda c, m, p, b: (second.append(b), c.basic_ack(m.delivery_tag)))
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    assert pika_process_until(conn, lambda: len(first) == 5, timeout=5)
    assert second == []  # only the active (first registered) consumer receives
    ch.basic_cancel(t1)
    for i in range(5, 8):
        ch.basic_publish("", q, str(i).encode())
    assert pika_process_until(conn, lambda: len(second) == 3, timeout=5)
    assert second == [b"5", b"6", b"7"] and len(first) == 5
    ch.queue_delete(q)
    conn.close()


def test_unused_queue_expires(ch, uniq):
    q = uniq("qq-expires")
    ch.queue_declare(q, durable=True, arguments=qargs(x_expires=300))
    deadline = time.monotonic() + 5
    gone = False
    while not gone and time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            ch.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            assert e.reply_code == 404
            gone = True
            ch = ch.connection.channel()
    assert gone


def test_at_least_once_dead_lettering_waits_for_a_route(ch, uniq):
    q, dlx, dlq = uniq("qq-alo"), uniq("qq-alo-dlx"), uniq("qq-alo-dlq")
    ch.exchange_declare(dlx, "direct", durable=True)
    ch.queue_declare(q, durable=True, arguments=qargs(x_dead_letter_exchange=dlx, x_dead_letter_routing_key="k",
                                                       x_dead_letter_strategy="at-least-once",
                                                       x_overflow="reject-publish"))
    ch.confirm_delivery()
    ch.basic_publish("", q, b"keep-me")
    m, _p, _b = ch.basic_get(q)
    ch.basic_reject(m.delivery_tag, requeue=False)
    # No queue is bound to the DLX yet: the message stays in the source queue (not ready).
    time.sleep(0.5)
    assert ch.basic_get(q) == (None, None, None)
    if RABBITMQ_MODE:  # RabbitMQ's dlx worker retries on a much longer timer (minutes)
        ch.queue_delete(q)
        ch.exchange_delete(dlx)
        return
    # Once a route exists it is delivered there (retried every few seconds), and leaves the
    # source queue.
    ch.queue_declare(dlq, durable=True, arguments=Q)
    ch.queue_bind(dlq, dlx, "k")
    deadline = time.monotonic() + 15
    got = None
    while got is None and time.monotonic() < deadline:
        m, p, body = ch.basic_get(dlq, auto_ack=True)
        if m:
            got = (body, p.headers["x-death"][0]["reason"])
        else:
            time.sleep(0.1)
    assert got == (b"keep-me", "rejected")
    ch.queue_delete(q)
    ch.queue_delete(dlq)
    ch.exchange_delete(dlx)


def _dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


@pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="measures a private Warren's data directory")
@pytest.mark.timeout(600)
def test_disk_stays_bounded_behind_one_unacked_message(fresh_broker, uniq):
    """One message stays unacked while 1,000,000 x 1 KB flow past it (published and consumed):
    the log is compacted behind the live messages (snapshots hold the stuck one), so the data
    directory stays far below the ~1 GB that went through. RabbitMQ before 4.3 keeps the whole
    log behind such a message."""
    total = int(os.environ.get("WARREN_QQ_DISK_MESSAGES", "1000000"))
    b = fresh_broker()
    q = uniq("qq-disk")
    conn = pika_connect(b)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"stuck", pika.BasicProperties(delivery_mode=2))
    held = []
    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, lambda c, m, p, body: held.append(m))
    assert pika_process_until(conn, lambda: len(held) == 1, timeout=5)
    consumed = [0]
    stop = threading.Event()

    def consume():
        cc = pika_connect(b)
        cch = cc.channel()
        cch.basic_qos(prefetch_count=1000)
        cch.basic_consume(q, lambda c, m, p, body: consumed.__setitem__(0, consumed[0] + 1), auto_ack=True)
        deadline = time.monotonic() + 500
        while consumed[0] < total and not stop.is_set() and time.monotonic() < deadline:
            cc.process_data_events(time_limit=0.1)
        cc.close()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    pc = pika_connect(b)
    pch = pc.channel()
    body = b"x" * 1024
    peak = 0
    deadline = time.monotonic() + 500
    try:
        for i in range(total):
            pch.basic_publish("", q, body)
            if i % 50000 == 0:
                pc.process_data_events(time_limit=0)
                # the holder's connection must answer heartbeats, or the broker closes it after
                # two silent intervals and its message goes back to the queue
                conn.process_data_events(time_limit=0)
                peak = max(peak, _dir_bytes(b.data_dir))
                assert time.monotonic() < deadline, f"only {i} published in time"
        t.join(500)
    finally:
        stop.set()
        pc.close()
    peak = max(peak, _dir_bytes(b.data_dir))
    assert consumed[0] == total
    flowed = total * 1024
    print(f"{total} x 1 KB past one unacked message: data directory peak {peak >> 20} MB "
          f"({flowed >> 20} MB flowed)")
    # RocksDB's write-ahead log and memtables account for ~100 MB whatever flows; the log of
    # the queue itself is what must not grow with what flowed.
    assert peak < 300 << 20, f"data directory grew to {peak >> 20} MB"
    if flowed >= 900 << 20:
        assert peak < flowed / 3, f"data directory grew to {peak >> 20} MB"
    # the stuck message is still there, still unacked, and goes once acked
    ch.basic_ack(held[0].delivery_tag)
    time.sleep(0.2)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    conn.close()


@pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="drives a private Warren with warrenctl")
def test_policies_reach_quorum_queues_and_list_queues(fresh_broker, uniq):
    import json
    import subprocess
    from conftest import free_port
    from helpers.cluster import warrenctl_bin
    port = free_port()
    b = fresh_broker(config={"cluster.listener.port": port})
    cookie_file = os.path.join(b.data_dir, ".warren.cookie")

    def ctl(*args):
        r = subprocess.run([warrenctl_bin(), "--node", f"127.0.0.1:{port}", "--cookie-file", cookie_file, *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    q = uniq("qq-policy")
    conn = pika_connect(b)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    # a policy set after the declare: the leader proposes the new settings to the replicas
    ctl("set_policy", "--apply-to", "queues", "lim", f"^{q}$", '{"max-length": 2, "delivery-limit": 1}')
    time.sleep(0.3)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    m, _p, body = ch.basic_get(q)
    assert body == b"3"
    ch.basic_nack(m.delivery_tag, requeue=True)
    m, p, body = ch.basic_get(q)
    assert body == b"3" and p.headers["x-delivery-count"] == 1
    ch.basic_nack(m.delivery_tag, requeue=True)  # over delivery-limit 1: dropped
    m, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"4"
    ch.basic_publish("", q, b"5")
    rows = {r["name"]: r for r in json.loads(ctl("--json", "list_queues"))}
    row = rows[q]
    assert row["type"] == "quorum" and row["messages"] == 1 and row["consumers"] == 0
    assert row["leader"] and row["members"] == [row["leader"]] == row["online"]
    conn.close()


def _queue_info(b, q):
    import requests
    r = requests.get(f"http://127.0.0.1:{b.mgmt_port}/api/queues/%2F/{q}", auth=("guest", "guest"), timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="sets a private Warren's body memory")
def test_backlog_bodies_leave_memory_and_survive_restart(fresh_broker, uniq, monkeypatch):
    """A backlog much larger than the body memory (here 2 MB) keeps its bodies in the replica's
    body store, not in memory (message_bytes_ram stays near the budget while message_bytes
    holds the whole backlog); after kill -9 and a restart from the body-less snapshot plus the
    log's tail, every message comes back byte-exact and in order."""
    monkeypatch.setenv("WARREN_QQ_BODY_MEMORY", str(2 << 20))
    b = fresh_broker()
    q = uniq("qq-paged")
    n, size = 1000, 64 * 1024
    conn = pika_connect(b)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments=Q)
    ch.confirm_delivery()

    def body(i):
        return (b"%08d" % i) * (size // 8)

    for i in range(n):
        ch.basic_publish("", q, body(i), pika.BasicProperties(delivery_mode=2))
    conn.close()
    info = {}
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        info = _queue_info(b, q)
        if info.get("messages") == n and info.get("message_bytes_ram", 1 << 40) <= (2 << 20) + size:
            break
        time.sleep(0.2)
    assert info.get("messages") == n and info.get("message_bytes") == n * size
    assert info.get("message_bytes_ram", 1 << 40) <= (2 << 20) + size, info.get("message_bytes_ram")

    b.restart(kill9=True)
    conn = pika_connect(b)
    ch = conn.channel()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ch.queue_declare(q, durable=True, arguments=Q).method.message_count == n:
            break
        time.sleep(0.1)
    got = []
    ch.basic_qos(prefetch_count=50)
    ch.basic_consume(q, lambda c, m, p, bd: (got.append(bd), c.basic_ack(m.delivery_tag)))
    assert pika_process_until(conn, lambda: len(got) == n, timeout=60), len(got)
    assert all(got[i] == body(i) for i in range(n))
    conn.close()
    # what was read back to deliver left memory again
    assert _queue_info(b, q).get("message_bytes_ram", 1 << 40) <= (2 << 20) + size
