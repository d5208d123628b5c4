"""Priority queues: x-max-priority and the priority message property.

What RabbitMQ 3.10 does, and these tests pin down:
  - x-max-priority is an integer 0..255 (0 is accepted by 3.10 and behaves like a plain
    FIFO queue, since every priority is capped to 0); 256 and up, negatives and
    non-integers are refused with 406.
  - Ready messages are delivered highest priority first, FIFO within a priority. A
    message without priority has priority 0; a priority above the maximum counts as
    the maximum (the property itself is delivered unchanged).
  - Priorities only order what is still in the queue: messages already sent to a
    consumer (within its prefetch) are not taken back.
  - A requeued message goes back to the front of its priority.
  - drop-head (x-max-length) drops from the head, i.e. the highest-priority message.
  - Without x-max-priority the priority property is ignored.
Not pinned down (RabbitMQ 3.10 bug, not to be copied): a message with a per-message
TTL that is enqueued after a lower-priority message without one may be delivered after
it expired; only the case where the expiring message is first is tested below.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import pytest  # noqa: E402

from helpers.clients import (pika_bodies, pika_channel_error, pika_drain,  # noqa: E402
                             pika_get_all, pika_process_until, queue_counts)


def confirmed_channel(conn):
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, queue, body, priority=None, **props):
    channel.basic_publish("", queue, body, pika.BasicProperties(priority=priority, **props))


def priority_queue(ch, uniq, max_priority=10, **extra):
    queue = uniq("pq")
    ch.queue_declare(queue, arguments={"x-max-priority": max_priority, **extra})
    return queue


def test_higher_priority_is_delivered_first(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    for body, priority in ((b"low", 1), (b"high", 9), (b"mid", 5)):
        publish(ch, queue, body, priority)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"high", b"mid", b"low"]


def test_fifo_within_a_priority(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    for body, priority in ((b"a1", 3), (b"b1", 7), (b"a2", 3), (b"b2", 7), (b"a3", 3)):
        publish(ch, queue, body, priority)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"b1", b"b2", b"a1", b"a2", b"a3"]


def test_no_priority_counts_as_zero(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    publish(ch, queue, b"none")
    publish(ch, queue, b"zero", 0)
    publish(ch, queue, b"one", 1)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"one", b"none", b"zero"]


def test_priority_above_maximum_counts_as_maximum(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq, max_priority=5)
    publish(ch, queue, b"p4", 4)
    publish(ch, queue, b"p200", 200)
    publish(ch, queue, b"p5", 5)
    publish(ch, queue, b"p9", 9)
    got = pika_get_all(ch, queue)
    # 200, 5 and 9 all count as 5: FIFO among them, all before 4.
    assert pika_bodies(got) == [b"p200", b"p5", b"p9", b"p4"]
    assert [props.priority for _, props, _ in got] == [200, 5, 9, 4]


def test_max_priority_255_orders_the_full_range(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq, max_priority=255)
    for priority in (0, 255, 128, 254, 1):
        publish(ch, queue, str(priority).encode(), priority)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"255", b"254", b"128", b"1", b"0"]


def test_max_priority_zero_is_fifo(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq, max_priority=0)
    publish(ch, queue, b"a", 0)
    publish(ch, queue, b"b", 5)
    publish(ch, queue, b"c")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"a", b"b", b"c"]


def test_queue_without_max_priority_ignores_priority(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"low", 1)
    publish(ch, queue, b"high", 9)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"low", b"high"]


def test_message_count_includes_all_priorities(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    for priority in (0, 3, 3, 10, None):
        publish(ch, queue, b"x", priority)
    assert queue_counts(ch, queue) == (5, 0)


def test_consumer_receives_backlog_in_priority_order(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    for body, priority in ((b"low", 1), (b"high", 9), (b"mid", 5), (b"none", None)):
        publish(ch, queue, body, priority)
    got = pika_drain(ch, queue, 4, timeout=3)
    assert pika_bodies(got) == [b"high", b"mid", b"low", b"none"]


def test_messages_already_delivered_are_not_reordered(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    consumer = conn.channel()
    consumer.basic_qos(prefetch_count=2)
    got = []
    consumer.basic_consume(queue, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    publish(ch, queue, b"low1", 1)
    publish(ch, queue, b"low2", 1)
    assert pika_process_until(conn, lambda: len(got) == 2, timeout=3)
    # The consumer is full: these wait in the queue and get ordered there.
    publish(ch, queue, b"low3", 1)
    publish(ch, queue, b"high", 9)
    conn.process_data_events(time_limit=0.2)
    assert [body for _, body in got] == [b"low1", b"low2"]
    consumer.basic_ack(got[1][0], multiple=True)
    assert pika_process_until(conn, lambda: len(got) == 4, timeout=3)
    assert [body for _, body in got] == [b"low1", b"low2", b"high", b"low3"]


def test_requeued_message_returns_to_the_front_of_its_priority(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    publish(ch, queue, b"a", 5)
    publish(ch, queue, b"b", 1)
    method, _, body = ch.basic_get(queue, auto_ack=False)
    assert body == b"a"
    publish(ch, queue, b"c", 5)
    ch.basic_reject(method.delivery_tag, requeue=True)
    got = pika_get_all(ch, queue)
    assert pika_bodies(got) == [b"a", b"c", b"b"]
    assert got[0][0].redelivered is True


def test_drop_head_drops_the_highest_priority_message(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq, **{"x-max-length": 2})
    publish(ch, queue, b"low", 1)
    publish(ch, queue, b"high", 9)
    publish(ch, queue, b"mid", 5)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"mid", b"low"]


def test_queue_ttl_applies_to_all_priorities(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq, **{"x-message-ttl": 200})
    publish(ch, queue, b"low", 1)
    publish(ch, queue, b"high", 9)
    time.sleep(0.6)
    assert ch.basic_get(queue, auto_ack=True)[0] is None
    assert queue_counts(ch, queue) == (0, 0)


def test_expired_high_priority_message_at_the_head_is_not_delivered(conn, uniq):
    ch = confirmed_channel(conn)
    queue = priority_queue(ch, uniq)
    publish(ch, queue, b"high", 9, expiration="100")
    publish(ch, queue, b"low", 1)
    time.sleep(0.5)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"low"]


def test_priority_queue_dead_letters_with_priority_kept(conn, uniq):
    ch = confirmed_channel(conn)
    dlq = uniq("dlq")
    ch.queue_declare(dlq)
    queue = priority_queue(ch, uniq, **{"x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    publish(ch, queue, b"low", 1)
    publish(ch, queue, b"high", 9)
    for _ in range(2):
        method, _, _ = ch.basic_get(queue, auto_ack=False)
        ch.basic_reject(method.delivery_tag, requeue=False)
    time.sleep(0.2)
    got = pika_get_all(ch, dlq)
    assert [(body, props.priority) for _, props, body in got] == [(b"high", 9), (b"low", 1)]


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("value, reason", [
    (256, "{max_value_exceeded,256}"),
    (1000, "{max_value_exceeded,1000}"),
    (-1, "{value_negative,-1}"),
    ("5", '"expected integer, got longstr"'),
    (True, '"expected integer, got bool"'),
])
def test_invalid_max_priority_is_rejected(ch, uniq, value, reason):
    queue = uniq()
    code, text = pika_channel_error(
        lambda: ch.queue_declare(queue, arguments={"x-max-priority": value}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{queue}' "
                    f"in vhost '/': {reason}")


@pytest.mark.parametrize("value", [0, 1, 10, 255])
def test_valid_max_priorities_are_accepted(ch, uniq, value):
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-priority": value})
    ch.queue_declare(queue, arguments={"x-max-priority": value})


def test_redeclare_with_other_max_priority_fails(conn, uniq):
    queue = uniq()
    ch = conn.channel()
    ch.queue_declare(queue, arguments={"x-max-priority": 10})
    code, text = pika_channel_error(
        lambda: ch.queue_declare(queue, arguments={"x-max-priority": 5}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue "
                    f"'{queue}' in vhost '/': received '5' but current is '10'")
    ch = conn.channel()
    code, text = pika_channel_error(lambda: ch.queue_declare(queue))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue "
                    f"'{queue}' in vhost '/': received none but current is the value '10' "
                    f"of type 'signedint'")


def test_adding_max_priority_to_a_plain_queue_fails(conn, uniq):
    queue = uniq()
    ch = conn.channel()
    ch.queue_declare(queue)
    code, text = pika_channel_error(
        lambda: ch.queue_declare(queue, arguments={"x-max-priority": 5}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue "
                    f"'{queue}' in vhost '/': received the value '5' of type 'signedint' "
                    f"but current is none")
