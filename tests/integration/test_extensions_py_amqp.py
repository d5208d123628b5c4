"""RabbitMQ's queue and routing extensions through py-amqp (the other test files use pika):
TTL and dead-lettering, length limits with reject-publish nacks, priorities, alternate
exchanges, sender-selected distribution, consumer priorities and single active consumer."""
import time

import amqp
import pytest

from helpers.clients import amqp_connect

pytestmark = pytest.mark.timeout(60)


def count(ch, queue):
    _, n, _ = ch.queue_declare(queue, passive=True)
    return n


def wait_count(ch, queue, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while count(ch, queue) < want and time.monotonic() < deadline:
        time.sleep(0.02)
    return count(ch, queue)


def test_ttl_dead_letters_with_x_death(amqp_conn, uniq):
    ch = amqp_conn.channel()
    src, dlq, dlx = uniq("src"), uniq("dlq"), uniq("dlx")
    ch.exchange_declare(dlx, "fanout", auto_delete=False)
    ch.queue_declare(dlq, auto_delete=False)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(src, auto_delete=False, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    ch.basic_publish(amqp.Message(b"ttl", application_headers={"k": "v"}), "", src)
    assert wait_count(ch, dlq, 1) == 1
    msg = ch.basic_get(dlq, no_ack=True)
    death = msg.headers["x-death"][0]
    assert (death["reason"], death["queue"], death["count"]) == ("expired", src, 1)
    assert death["routing-keys"] == [src]
    assert msg.headers["x-first-death-reason"] == "expired"
    assert msg.headers["k"] == "v"
    assert msg.delivery_info["exchange"] == dlx


def test_reject_publish_nacks_publisher(broker, uniq):
    conn = amqp_connect(broker, confirm_publish=True)
    ch = conn.channel()
    q = uniq()
    ch.queue_declare(q, auto_delete=False, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish(amqp.Message(b"1"), "", q)
    with pytest.raises(amqp.exceptions.MessageNacked):
        ch.basic_publish(amqp.Message(b"2"), "", q)
    assert count(ch, q) == 1
    conn.close()


def test_drop_head_keeps_newest(amqp_conn, uniq):
    ch = amqp_conn.channel()
    q = uniq()
    ch.queue_declare(q, auto_delete=False, arguments={"x-max-length": 2})
    for i in range(5):
        ch.basic_publish(amqp.Message(str(i).encode()), "", q)
    assert [ch.basic_get(q, no_ack=True).body for _ in range(2)] == [b"3", b"4"]


def test_priorities_order(amqp_conn, uniq):
    ch = amqp_conn.channel()
    q = uniq()
    ch.queue_declare(q, auto_delete=False, arguments={"x-max-priority": 5})
    for p in (1, 5, 3, 5, 0):
        ch.basic_publish(amqp.Message(str(p).encode(), priority=p), "", q)
    assert [ch.basic_get(q, no_ack=True).body for _ in range(5)] == [b"5", b"5", b"3", b"1", b"0"]


def test_alternate_exchange(amqp_conn, uniq):
    ch = amqp_conn.channel()
    ae, x, q = uniq("ae"), uniq("x"), uniq("aeq")
    ch.exchange_declare(ae, "fanout", auto_delete=False)
    ch.queue_declare(q, auto_delete=False)
    ch.queue_bind(q, ae)
    ch.exchange_declare(x, "direct", auto_delete=False, arguments={"alternate-exchange": ae})
    ch.basic_publish(amqp.Message(b"lost?"), x, "nobody")
    assert wait_count(ch, q, 1) == 1


def test_cc_and_bcc(amqp_conn, uniq):
    ch = amqp_conn.channel()
    main, cc, bcc = uniq("main"), uniq("cc"), uniq("bcc")
    for q in (main, cc, bcc):
        ch.queue_declare(q, auto_delete=False)
    ch.basic_publish(amqp.Message(b"m", application_headers={"CC": [cc], "BCC": [bcc]}), "", main)
    got = {q: ch.basic_get(q, no_ack=True) for q in (main, cc, bcc)}
    assert all(m is not None and m.body == b"m" for m in got.values())
    for m in got.values():
        assert m.headers.get("CC") == [cc] and "BCC" not in m.headers


def test_consumer_priority_prefers_higher(amqp_conn, uniq):
    ch = amqp_conn.channel()
    q = uniq()
    ch.queue_declare(q, auto_delete=False)
    got = {"low": 0, "high": 0}
    ch.basic_consume(q, callback=lambda m: got.__setitem__("low", got["low"] + 1), no_ack=True,
                     arguments={"x-priority": 1})
    ch.basic_consume(q, callback=lambda m: got.__setitem__("high", got["high"] + 1), no_ack=True,
                     arguments={"x-priority": 10})
    for i in range(10):
        ch.basic_publish(amqp.Message(b"x"), "", q)
    deadline = time.monotonic() + 5
    while got["low"] + got["high"] < 10 and time.monotonic() < deadline:
        try:
            amqp_conn.drain_events(timeout=0.2)
        except Exception:
            pass
    assert got == {"low": 0, "high": 10}


def test_single_active_consumer_hand_over(amqp_conn, uniq):
    ch = amqp_conn.channel()
    q = uniq()
    ch.queue_declare(q, auto_delete=False, arguments={"x-single-active-consumer": True})
    seen = []
    first = ch.basic_consume(q, callback=lambda m: seen.append("first"), no_ack=True)
    ch.basic_consume(q, callback=lambda m: seen.append("second"), no_ack=True)
    ch.basic_publish(amqp.Message(b"1"), "", q)
    amqp_drain_events(amqp_conn, lambda: len(seen) >= 1)
    ch.basic_cancel(first)
    ch.basic_publish(amqp.Message(b"2"), "", q)
    amqp_drain_events(amqp_conn, lambda: len(seen) >= 2)
    assert seen == ["first", "second"]


def amqp_drain_events(conn, done, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        try:
            conn.drain_events(timeout=0.2)
        except Exception:
            pass
