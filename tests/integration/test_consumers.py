"""Consumer priorities (the x-priority argument of basic.consume) and single active
consumer (the x-single-active-consumer queue argument).

What RabbitMQ 3.10 does, and these tests pin down:
  - Consumer priorities: a message goes to the highest-priority consumer that can take
    it (prefetch capacity left); lower ones get messages only while all higher ones are
    full. Consumers of equal priority take turns. The default priority is 0; negative
    priorities are allowed. x-priority must be an integer.
  - Single active consumer: only one consumer of the queue receives messages (the
    first registered; in 3.10 consumer priorities play no part in the choice - RabbitMQ
    3.12+ quorum queues pick by priority, which classic queues do not). When it is
    cancelled or its channel/connection goes away, the next one in registration order
    takes over, receiving the requeued unacked messages as redeliveries. While the
    active consumer is full, messages wait in the queue. queue.declare-ok counts all
    consumers, active or waiting. basic.get still works. The argument must be a bool.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pytest  # noqa: E402

from helpers.clients import (pika_channel_error, pika_connect,  # noqa: E402
                             pika_process_until, queue_counts, wait_queue_counts)


class Consumer:
    """A consumer on its own channel that records (delivery_tag, body, redelivered)."""

    def __init__(self, conn, queue, priority=None, prefetch=0, auto_ack=False):
        self.channel = conn.channel()
        if prefetch:
            self.channel.basic_qos(prefetch_count=prefetch)
        self.got = []
        arguments = {} if priority is None else {"x-priority": priority}
        self.tag = self.channel.basic_consume(queue, self._on_message, auto_ack=auto_ack,
                                              arguments=arguments)

    def _on_message(self, channel, method, props, body):
        self.got.append((method.delivery_tag, body, method.redelivered))

    @property
    def bodies(self):
        return [body for _, body, _ in self.got]

    def ack_all(self):
        if self.got:
            self.channel.basic_ack(self.got[-1][0], multiple=True)

    def cancel(self):
        self.channel.basic_cancel(self.tag)


def confirmed_channel(conn):
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish_all(channel, queue, bodies):
    for body in bodies:
        channel.basic_publish("", queue, body)


def settle(conn, seconds=0.3):
    """Let deliveries arrive (used where the expectation is that nothing more comes)."""
    conn.process_data_events(time_limit=seconds)


def total(consumers):
    return sum(len(c.got) for c in consumers)


# ---------------------------------------------------------------------------
# Consumer priorities
# ---------------------------------------------------------------------------

def test_highest_priority_consumer_gets_everything_while_it_has_capacity(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    low = Consumer(conn, queue, priority=0, auto_ack=True)
    high = Consumer(conn, queue, priority=10, auto_ack=True)
    publish_all(ch, queue, [f"m{i}".encode() for i in range(6)])
    assert pika_process_until(conn, lambda: total([low, high]) == 6, timeout=3)
    settle(conn, 0.1)
    assert high.bodies == [f"m{i}".encode() for i in range(6)]
    assert low.got == []


def test_lower_priority_consumer_gets_messages_when_higher_is_full(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    high = Consumer(conn, queue, priority=10, prefetch=1)
    low = Consumer(conn, queue, priority=1, prefetch=10)
    publish_all(ch, queue, [b"1", b"2", b"3", b"4"])
    assert pika_process_until(conn, lambda: total([low, high]) == 4, timeout=3)
    assert high.bodies == [b"1"]
    assert low.bodies == [b"2", b"3", b"4"]


def test_higher_priority_consumer_resumes_once_it_has_capacity(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    high = Consumer(conn, queue, priority=10, prefetch=1)
    low = Consumer(conn, queue, priority=0, prefetch=1)
    publish_all(ch, queue, [b"1", b"2", b"3"])
    assert pika_process_until(conn, lambda: total([low, high]) == 2, timeout=3)
    settle(conn, 0.2)
    assert (high.bodies, low.bodies) == ([b"1"], [b"2"])
    assert queue_counts(ch, queue) == (1, 2)
    high.ack_all()
    assert pika_process_until(conn, lambda: len(high.got) == 2, timeout=3)
    assert high.bodies == [b"1", b"3"]
    assert low.bodies == [b"2"]


def test_equal_priority_consumers_take_turns(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    first = Consumer(conn, queue, priority=5, auto_ack=True)
    second = Consumer(conn, queue, priority=5, auto_ack=True)
    lower = Consumer(conn, queue, priority=4, auto_ack=True)
    publish_all(ch, queue, [f"m{i}".encode() for i in range(6)])
    assert pika_process_until(conn, lambda: total([first, second, lower]) == 6, timeout=3)
    settle(conn, 0.1)
    assert len(first.got) == 3 and len(second.got) == 3
    assert sorted(first.bodies + second.bodies) == sorted(f"m{i}".encode() for i in range(6))
    assert lower.got == []


def test_default_priority_is_zero_and_negative_priorities_are_lower(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    negative = Consumer(conn, queue, priority=-5, auto_ack=True)
    default = Consumer(conn, queue, auto_ack=True)
    publish_all(ch, queue, [b"a", b"b", b"c"])
    assert pika_process_until(conn, lambda: total([negative, default]) == 3, timeout=3)
    settle(conn, 0.1)
    assert default.bodies == [b"a", b"b", b"c"]
    assert negative.got == []


def test_cancelled_high_priority_consumer_hands_over_to_lower(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    high = Consumer(conn, queue, priority=10, auto_ack=True)
    low = Consumer(conn, queue, priority=0, auto_ack=True)
    publish_all(ch, queue, [b"1"])
    assert pika_process_until(conn, lambda: high.got, timeout=3)
    high.cancel()
    publish_all(ch, queue, [b"2"])
    assert pika_process_until(conn, lambda: low.got, timeout=3)
    assert (high.bodies, low.bodies) == ([b"1"], [b"2"])


def test_backlog_is_shared_by_priority_when_consumers_register(conn, uniq):
    """Messages waiting in the queue go to the high-priority consumer once it appears."""
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    low = Consumer(conn, queue, priority=0, prefetch=1)
    publish_all(ch, queue, [b"1", b"2", b"3"])
    assert pika_process_until(conn, lambda: low.got, timeout=3)
    high = Consumer(conn, queue, priority=10, prefetch=5)
    assert pika_process_until(conn, lambda: len(high.got) == 2, timeout=3)
    settle(conn, 0.1)
    assert low.bodies == [b"1"]
    assert high.bodies == [b"2", b"3"]


@pytest.mark.parametrize("value, reason", [
    ("high", '"expected integer, got longstr"'),
    (True, '"expected integer, got bool"'),
])
def test_invalid_consumer_priority_is_rejected(conn, uniq, value, reason):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue)
    code, text = pika_channel_error(lambda: ch.basic_consume(
        queue, lambda *a: None, arguments={"x-priority": value}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{queue}' "
                    f"in vhost '/': {reason}")


# ---------------------------------------------------------------------------
# Single active consumer
# ---------------------------------------------------------------------------

def sac_queue(ch, uniq):
    queue = uniq("sac")
    ch.queue_declare(queue, arguments={"x-single-active-consumer": True})
    return queue


def test_only_the_first_consumer_receives(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    first, second, third = (Consumer(conn, queue, auto_ack=True) for _ in range(3))
    publish_all(ch, queue, [f"m{i}".encode() for i in range(5)])
    assert pika_process_until(conn, lambda: len(first.got) == 5, timeout=3)
    settle(conn, 0.2)
    assert first.bodies == [f"m{i}".encode() for i in range(5)]
    assert second.got == [] and third.got == []


def test_declare_ok_counts_all_consumers(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    consumers = [Consumer(conn, queue) for _ in range(3)]
    ok = ch.queue_declare(queue, arguments={"x-single-active-consumer": True}).method
    assert ok.consumer_count == 3
    consumers[0].cancel()
    assert wait_queue_counts(ch, queue, (0, 2)) == (0, 2)


def test_cancel_hands_over_to_next_in_registration_order(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    first, second, third = (Consumer(conn, queue, auto_ack=True) for _ in range(3))
    publish_all(ch, queue, [b"1"])
    assert pika_process_until(conn, lambda: first.got, timeout=3)
    first.cancel()
    publish_all(ch, queue, [b"2", b"3"])
    assert pika_process_until(conn, lambda: len(second.got) == 2, timeout=3)
    settle(conn, 0.2)
    assert (first.bodies, second.bodies, third.bodies) == ([b"1"], [b"2", b"3"], [])
    second.cancel()
    publish_all(ch, queue, [b"4"])
    assert pika_process_until(conn, lambda: third.got, timeout=3)
    assert third.bodies == [b"4"]


def test_cancelling_a_waiting_consumer_changes_nothing(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    first, second, third = (Consumer(conn, queue, auto_ack=True) for _ in range(3))
    second.cancel()
    publish_all(ch, queue, [b"1", b"2"])
    assert pika_process_until(conn, lambda: len(first.got) == 2, timeout=3)
    settle(conn, 0.2)
    assert second.got == [] and third.got == []


@pytest.mark.timeout(30)
def test_connection_loss_hands_over_with_redelivery(broker, conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    active_conn = pika_connect(broker)
    try:
        active = Consumer(active_conn, queue)
        # Registered after the active one (its basic.consume-ok has been received).
        standby = Consumer(conn, queue)
        publish_all(ch, queue, [b"1", b"2", b"3"])
        assert pika_process_until(active_conn, lambda: len(active.got) == 3, timeout=3)
        active.channel.basic_ack(active.got[0][0])
        settle(conn, 0.2)
        assert standby.got == []
    finally:
        active_conn.close()
    assert pika_process_until(conn, lambda: len(standby.got) == 2, timeout=5)
    assert [(body, redelivered) for _, body, redelivered in standby.got] == [
        (b"2", True), (b"3", True)]
    publish_all(ch, queue, [b"4"])
    assert pika_process_until(conn, lambda: len(standby.got) == 3, timeout=3)
    assert standby.got[-1][1:] == (b"4", False)


def test_channel_close_hands_over(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    active = Consumer(conn, queue)
    standby = Consumer(conn, queue)
    publish_all(ch, queue, [b"1"])
    assert pika_process_until(conn, lambda: active.got, timeout=3)
    active.channel.close()
    assert pika_process_until(conn, lambda: standby.got, timeout=3)
    assert standby.got[0][1:] == (b"1", True)


def test_unacked_messages_of_a_cancelled_consumer_go_to_the_new_one_when_requeued(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    active = Consumer(conn, queue)
    standby = Consumer(conn, queue)
    publish_all(ch, queue, [b"1"])
    assert pika_process_until(conn, lambda: active.got, timeout=3)
    active.cancel()
    # Still unacked on the old channel: nothing for the new active consumer yet.
    settle(conn, 0.2)
    assert standby.got == []
    active.channel.basic_nack(active.got[0][0], requeue=True)
    assert pika_process_until(conn, lambda: standby.got, timeout=3)
    assert standby.got[0][1:] == (b"1", True)


def test_messages_wait_while_the_active_consumer_is_full(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    active = Consumer(conn, queue, prefetch=1)
    standby = Consumer(conn, queue, prefetch=10)
    publish_all(ch, queue, [b"1", b"2", b"3"])
    assert pika_process_until(conn, lambda: active.got, timeout=3)
    settle(conn, 0.3)
    assert active.bodies == [b"1"]
    assert standby.got == []
    assert queue_counts(ch, queue) == (2, 2)
    active.ack_all()
    assert pika_process_until(conn, lambda: len(active.got) == 2, timeout=3)
    assert active.bodies == [b"1", b"2"]


def test_consumer_priority_does_not_pick_the_active_consumer(conn, uniq):
    """RabbitMQ 3.10 classic queues: the first registered consumer is active, whatever
    the x-priority of later ones."""
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    first = Consumer(conn, queue, priority=0, auto_ack=True)
    later = Consumer(conn, queue, priority=10, auto_ack=True)
    publish_all(ch, queue, [b"1", b"2"])
    assert pika_process_until(conn, lambda: len(first.got) == 2, timeout=3)
    settle(conn, 0.2)
    assert later.got == []


def test_basic_get_works_on_a_single_active_consumer_queue(conn, uniq):
    ch = confirmed_channel(conn)
    queue = sac_queue(ch, uniq)
    publish_all(ch, queue, [b"g"])
    assert ch.basic_get(queue, auto_ack=True)[2] == b"g"


def test_single_active_consumer_false_is_a_normal_queue(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-single-active-consumer": False})
    first, second = Consumer(conn, queue, auto_ack=True), Consumer(conn, queue, auto_ack=True)
    publish_all(ch, queue, [b"1", b"2", b"3", b"4"])
    assert pika_process_until(conn, lambda: total([first, second]) == 4, timeout=3)
    assert len(first.got) == 2 and len(second.got) == 2


@pytest.mark.parametrize("value, reason", [
    ("yes", "{unacceptable_type,longstr}"),
    (1, "{unacceptable_type,signedint}"),
])
def test_invalid_single_active_consumer_argument_is_rejected(ch, uniq, value, reason):
    queue = uniq()
    code, text = pika_channel_error(lambda: ch.queue_declare(
        queue, arguments={"x-single-active-consumer": value}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg 'x-single-active-consumer' for queue "
                    f"'{queue}' in vhost '/': {reason}")


def test_redeclare_with_other_single_active_consumer_fails(conn, uniq):
    ch = conn.channel()
    queue = sac_queue(ch, uniq)
    code, text = pika_channel_error(lambda: ch.queue_declare(queue))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for "
                    f"queue '{queue}' in vhost '/': received none but current is the value "
                    f"'true' of type 'bool'")
    ch = conn.channel()
    code, text = pika_channel_error(lambda: ch.queue_declare(
        queue, arguments={"x-single-active-consumer": False}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-single-active-consumer' for "
                    f"queue '{queue}' in vhost '/': received 'false' but current is 'true'")
