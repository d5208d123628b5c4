"""x-delayed-message exchanges, compatible with rabbitmq-delayed-message-exchange: routing as
x-delayed-type says, messages held back by their x-delay header (ms), durable delays surviving a
restart. (RabbitMQ 3.10 from Debian has no such plugin, so these encode the plugin's documented
behaviour.)"""
import time

import pika
import pika.exceptions
import pytest

from helpers.clients import pika_channel_error, pika_connect

pytestmark = pytest.mark.timeout(60)


def setup_delayed(ch, name, queue, kind="direct", durable=False):
    ch.exchange_declare(name, "x-delayed-message", durable=durable,
                        arguments={"x-delayed-type": kind})
    ch.queue_declare(queue, durable=durable)
    ch.queue_bind(queue, name, "k")


def wait_count(ch, queue, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    n = -1
    while time.monotonic() < deadline:
        n = ch.queue_declare(queue, passive=True).method.message_count
        if n >= want:
            return n
        time.sleep(0.02)
    return n


def test_message_is_held_for_its_delay(ch, uniq):
    x, q = uniq("dx"), uniq("dq")
    setup_delayed(ch, x, q)
    start = time.monotonic()
    ch.basic_publish(x, "k", b"later", pika.BasicProperties(headers={"x-delay": 400}))
    time.sleep(0.2)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert wait_count(ch, q, 1) == 1
    assert time.monotonic() - start >= 0.38
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"later"
    assert method.exchange == x and method.routing_key == "k"
    assert props.headers["x-delay"] == 400


def test_no_or_non_positive_delay_routes_at_once(ch, uniq):
    x, q = uniq("dx"), uniq("dq")
    setup_delayed(ch, x, q)
    ch.basic_publish(x, "k", b"now")
    ch.basic_publish(x, "k", b"zero", pika.BasicProperties(headers={"x-delay": 0}))
    ch.basic_publish(x, "k", b"negative", pika.BasicProperties(headers={"x-delay": -500}))
    assert wait_count(ch, q, 3, timeout=1) == 3


def test_messages_come_out_in_due_order(ch, uniq):
    x, q = uniq("dx"), uniq("dq")
    setup_delayed(ch, x, q)
    for delay in (300, 100, 200, 100):
        ch.basic_publish(x, "k", str(delay).encode(), pika.BasicProperties(headers={"x-delay": delay}))
    assert wait_count(ch, q, 4) == 4
    bodies = [ch.basic_get(q, auto_ack=True)[2] for _ in range(4)]
    assert bodies == [b"100", b"100", b"200", b"300"]


def test_routing_follows_delayed_type(ch, uniq):
    x, q1, q2 = uniq("dx"), uniq("dq"), uniq("dq")
    ch.exchange_declare(x, "x-delayed-message", arguments={"x-delayed-type": "fanout"})
    for q in (q1, q2):
        ch.queue_declare(q)
        ch.queue_bind(q, x, "ignored")
    ch.basic_publish(x, "any", b"f", pika.BasicProperties(headers={"x-delay": 50}))
    assert wait_count(ch, q1, 1) == 1 and wait_count(ch, q2, 1) == 1


def test_missing_delayed_type_is_refused(ch, uniq):
    code, text = pika_channel_error(lambda: ch.exchange_declare(uniq("dx"), "x-delayed-message"))
    assert code == 406
    assert text == ("PRECONDITION_FAILED - Invalid argument, 'x-delayed-type' must be an existing "
                    "exchange type")


def test_confirms_arrive_before_delivery(conn, uniq):
    ch = conn.channel()
    ch.confirm_delivery()
    x, q = uniq("dx"), uniq("dq")
    setup_delayed(ch, x, q)
    ch.basic_publish(x, "k", b"c", pika.BasicProperties(headers={"x-delay": 300}))  # confirmed now
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_durable_delays_survive_restart(fresh_broker):
    b = fresh_broker()
    c = pika_connect(b)
    ch = c.channel()
    ch.confirm_delivery()
    setup_delayed(ch, "dur.dx", "dur.dq", durable=True)
    ch.basic_publish("dur.dx", "k", b"persisted",
                     pika.BasicProperties(delivery_mode=2, headers={"x-delay": 1500}))
    ch.basic_publish("dur.dx", "k", b"transient",
                     pika.BasicProperties(delivery_mode=1, headers={"x-delay": 1500}))
    c.close()
    b.restart(kill9=True)
    c = pika_connect(b)
    ch = c.channel()
    assert wait_count(ch, "dur.dq", 1, timeout=6) == 1
    time.sleep(0.3)
    assert ch.queue_declare("dur.dq", passive=True).method.message_count == 1
    assert ch.basic_get("dur.dq", auto_ack=True)[2] == b"persisted"
    c.close()


def test_deleted_exchange_drops_pending(ch, uniq):
    x, q = uniq("dx"), uniq("dq")
    setup_delayed(ch, x, q)
    ch.basic_publish(x, "k", b"gone", pika.BasicProperties(headers={"x-delay": 200}))
    ch.exchange_delete(x)
    time.sleep(0.5)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
