"""Message TTL (x-message-ttl, the expiration property) and queue TTL (x-expires).

What RabbitMQ 3.10 does, and these tests pin down:
  - x-message-ttl (queue argument, ms) and expiration (per message, a decimal string of
    ms) both apply; the lower one wins. The clock starts when the message is enqueued.
  - An expired message is never delivered: not by basic.get, not to a consumer, not
    after a requeue (a requeued message keeps its original expiry).
  - TTL 0 means "deliver now or never": the message reaches a consumer that is waiting
    with prefetch capacity, otherwise it expires at once.
  - A message with a per-message TTL that expires behind unexpired ones is dropped when
    it reaches the head (RabbitMQ does not scan the queue), so message_count may still
    include it until then; it is never delivered either way.
  - The expiration property is delivered unchanged to consumers.
  - An invalid expiration closes the channel with 406 and an Erlang-formatted reason;
    the largest accepted value is 315360000000 ms (ten years), for x-message-ttl and
    x-expires too.
  - x-expires deletes the queue once it has been unused for that long: no consumers, no
    basic.get, no declare - a passive declare also renews the lease in 3.10. Ready
    messages do not keep a queue alive.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import pytest  # noqa: E402

from helpers.clients import (pika_bodies, pika_channel_error, pika_connect,  # noqa: E402
                             pika_drain, pika_get_all, pika_process_until, queue_counts)


def confirmed_channel(conn):
    """A channel in confirm mode: basic_publish returns once the queues have the message."""
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, queue, body, **props):
    channel.basic_publish("", queue, body, pika.BasicProperties(**props))


def queue_exists(conn, queue):
    """Passive declare on a throwaway channel. Note: in RabbitMQ 3.10 this renews an
    x-expires lease, so tests call it only where that does not matter."""
    channel = conn.channel()
    try:
        channel.queue_declare(queue, passive=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404, (e.reply_code, e.reply_text)
        return False
    channel.close()
    return True


# ---------------------------------------------------------------------------
# x-message-ttl
# ---------------------------------------------------------------------------

def test_queue_ttl_message_is_delivered_before_it_expires(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 60000})
    publish(ch, queue, b"fresh")
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"fresh"
    # The queue's TTL is not written into the message.
    assert props.expiration is None


def test_queue_ttl_expired_message_is_not_returned_by_basic_get(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 200})
    publish(ch, queue, b"short-lived")
    time.sleep(0.6)
    assert ch.basic_get(queue, auto_ack=True)[0] is None
    assert queue_counts(ch, queue) == (0, 0)


def test_queue_ttl_expired_messages_are_not_consumed(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 200})
    for i in range(3):
        publish(ch, queue, f"m{i}".encode())
    time.sleep(0.6)
    assert pika_drain(ch, queue, 3, timeout=0.5) == []


def test_queue_ttl_counts_from_enqueue_of_each_message(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 1000})
    publish(ch, queue, b"old")
    time.sleep(0.7)
    publish(ch, queue, b"new")
    time.sleep(0.6)   # "old" is 1.3 s old, "new" 0.6 s
    assert pika_bodies(pika_get_all(ch, queue)) == [b"new"]


def test_queue_ttl_expires_messages_waiting_behind_a_full_prefetch(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 300})
    ch.basic_qos(prefetch_count=1)
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    publish(ch, queue, b"first")
    publish(ch, queue, b"second")
    assert pika_process_until(conn, lambda: len(got) == 1, timeout=2)
    conn.process_data_events(time_limit=0.8)   # "second" expires while "first" is unacked
    ch.basic_ack(got[0][0])
    conn.process_data_events(time_limit=0.4)
    assert [body for _, body in got] == [b"first"]


# ---------------------------------------------------------------------------
# Per-message expiration
# ---------------------------------------------------------------------------

def test_per_message_expiration_expires_message(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"short", expiration="200")
    publish(ch, queue, b"long", expiration="60000")
    publish(ch, queue, b"forever")
    time.sleep(0.6)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"long", b"forever"]


def test_per_message_expiration_is_delivered_unchanged(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"x", expiration="60000")
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert props.expiration == "60000"


def test_per_message_expiration_applies_to_consumers(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"gone", expiration="200")
    publish(ch, queue, b"kept", expiration="60000")
    time.sleep(0.6)
    assert pika_bodies(pika_drain(ch, queue, 2, timeout=0.8)) == [b"kept"]


def test_lower_ttl_wins_when_queue_ttl_is_lower(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 200})
    publish(ch, queue, b"x", expiration="60000")
    time.sleep(0.6)
    assert ch.basic_get(queue, auto_ack=True)[0] is None


def test_lower_ttl_wins_when_message_ttl_is_lower(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 60000})
    publish(ch, queue, b"short", expiration="200")
    publish(ch, queue, b"queue-ttl")
    time.sleep(0.6)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"queue-ttl"]


def test_message_expiring_behind_others_is_never_delivered(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"A")
    publish(ch, queue, b"B", expiration="100")
    publish(ch, queue, b"C")
    time.sleep(0.5)
    # RabbitMQ only drops expired messages at the head of the queue, so B may still be
    # counted here; dropping it eagerly (2) is just as good.
    assert queue_counts(ch, queue)[0] in (2, 3)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"A", b"C"]
    assert queue_counts(ch, queue) == (0, 0)


def test_message_expiring_behind_others_is_skipped_by_consumer(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"A")
    publish(ch, queue, b"B", expiration="100")
    publish(ch, queue, b"C", expiration="60000")
    publish(ch, queue, b"D")
    time.sleep(0.5)
    assert pika_bodies(pika_drain(ch, queue, 3, timeout=1.0)) == [b"A", b"C", b"D"]


def test_requeued_message_keeps_its_original_expiry(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 400})
    publish(ch, queue, b"x")
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    assert method is not None
    time.sleep(0.7)   # past its expiry while unacked: that does not expire it yet ...
    ch.basic_reject(method.delivery_tag, requeue=True)
    time.sleep(0.2)   # ... but back in the queue it is expired and dropped
    assert ch.basic_get(queue, auto_ack=True)[0] is None
    assert queue_counts(ch, queue) == (0, 0)


def test_unacked_message_is_not_expired_while_delivered(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 200})
    publish(ch, queue, b"x")
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    time.sleep(0.5)
    ch.basic_ack(method.delivery_tag)   # still a valid delivery tag: no channel error
    assert queue_counts(ch, queue) == (0, 0)


# ---------------------------------------------------------------------------
# TTL 0: deliver now or never
# ---------------------------------------------------------------------------

def test_queue_ttl_zero_without_consumer_drops_message(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 0})
    publish(ch, queue, b"x")
    assert ch.basic_get(queue, auto_ack=True)[0] is None
    assert queue_counts(ch, queue) == (0, 0)


def test_queue_ttl_zero_reaches_a_waiting_consumer(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 0})
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    publish(ch, queue, b"live")
    assert pika_process_until(conn, lambda: got, timeout=2)
    assert got == [b"live"]


def test_queue_ttl_zero_expires_when_consumer_has_no_prefetch_capacity(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 0})
    ch.basic_qos(prefetch_count=1)
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((m.delivery_tag, b)))
    publish(ch, queue, b"a")
    publish(ch, queue, b"b")   # the consumer is full: b expires immediately
    assert pika_process_until(conn, lambda: got, timeout=2)
    ch.basic_ack(got[0][0])
    conn.process_data_events(time_limit=0.4)
    assert [body for _, body in got] == [b"a"]
    assert queue_counts(ch, queue) == (0, 1)


def test_expiration_zero_without_consumer_drops_message(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"x", expiration="0")
    assert ch.basic_get(queue, auto_ack=True)[0] is None
    assert queue_counts(ch, queue) == (0, 0)


def test_expiration_zero_reaches_a_waiting_consumer(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append((b, p.expiration)), auto_ack=True)
    publish(ch, queue, b"live", expiration="0")
    assert pika_process_until(conn, lambda: got, timeout=2)
    assert got == [(b"live", "0")]


# ---------------------------------------------------------------------------
# Expiration property validation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("expiration, reason", [
    ("abc", "no_integer"),
    ("", "no_integer"),
    (" 100", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("1.5", '{leftover_string,".5"}'),
    ("100 ", '{leftover_string," "}'),
    ("0x10", '{leftover_string,"x10"}'),
    ("315360000001", "{value_too_large,315360000001}"),
])
def test_invalid_expiration_closes_channel_with_406(conn, uniq, expiration, reason):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    code, text = pika_channel_error(lambda: publish(ch, queue, b"x", expiration=expiration))
    assert code == 406
    assert text == f"PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}"
    # Only the channel is closed.
    assert conn.is_open
    assert queue_counts(conn.channel(), queue) == (0, 0)


@pytest.mark.parametrize("expiration", ["315360000000", "00100000", "+100000"])
def test_unusual_but_valid_expirations_are_accepted(conn, uniq, expiration):
    """RabbitMQ parses with Erlang's string:to_integer: leading zeros and a plus sign
    are fine; ten years is the maximum."""
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue)
    publish(ch, queue, b"x", expiration=expiration)
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"x"
    assert props.expiration == expiration


@pytest.mark.parametrize("arg", ["x-message-ttl", "x-expires"])
def test_ttl_arguments_above_ten_years_are_rejected(ch, uniq, arg):
    queue = uniq()
    code, text = pika_channel_error(
        lambda: ch.queue_declare(queue, arguments={arg: 315360000001}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost "
                    f"'/': {{value_too_large,315360000001}}")


@pytest.mark.parametrize("arg, value, reason", [
    ("x-message-ttl", -1, "{value_negative,-1}"),
    ("x-message-ttl", "100", '"expected integer, got longstr"'),
    ("x-message-ttl", True, '"expected integer, got bool"'),
    ("x-expires", 0, "{value_zero,0}"),
    ("x-expires", -1, "{value_negative,-1}"),
    ("x-expires", "a", '"expected integer, got longstr"'),
])
def test_invalid_ttl_arguments_are_rejected(ch, uniq, arg, value, reason):
    queue = uniq()
    code, text = pika_channel_error(lambda: ch.queue_declare(queue, arguments={arg: value}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost "
                    f"'/': {reason}")


def test_zero_message_ttl_and_ten_year_ttls_are_valid(ch, uniq):
    ch.queue_declare(uniq(), arguments={"x-message-ttl": 0})
    ch.queue_declare(uniq(), arguments={"x-message-ttl": 315360000000,
                                        "x-expires": 315360000000})


# ---------------------------------------------------------------------------
# x-expires
# ---------------------------------------------------------------------------

def test_unused_queue_is_deleted_after_x_expires(conn, uniq):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 300})
    time.sleep(1.0)
    assert not queue_exists(conn, queue)


def test_ready_messages_do_not_keep_a_queue_alive(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 300})
    publish(ch, queue, b"x")
    time.sleep(1.0)
    assert not queue_exists(conn, queue)


def test_redeclare_renews_x_expires(conn, uniq):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 1000})
    time.sleep(0.6)
    ch.queue_declare(queue, arguments={"x-expires": 1000})
    time.sleep(0.7)   # 1.3 s after the first declare, 0.7 s after the second
    assert queue_exists(conn, queue)
    time.sleep(1.6)
    assert not queue_exists(conn, queue)


def test_passive_declare_renews_x_expires(conn, uniq):
    """RabbitMQ 3.10 resets the expiry timer on any declare, passive ones included."""
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 1000})
    for _ in range(4):
        time.sleep(0.5)
        ch.queue_declare(queue, passive=True)
    # 2 s after creation, still there thanks to the passive declares
    assert queue_exists(conn, queue)
    time.sleep(1.6)
    assert not queue_exists(conn, queue)


def test_basic_get_renews_x_expires(conn, uniq):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 1000})
    for _ in range(4):
        time.sleep(0.5)
        assert ch.basic_get(queue, auto_ack=True)[0] is None
    assert queue_exists(conn, queue)
    time.sleep(1.6)
    assert not queue_exists(conn, queue)


@pytest.mark.timeout(30)
def test_consumer_keeps_queue_alive_and_cancel_restarts_the_timer(broker, conn, uniq):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 500})
    tag = ch.basic_consume(queue, lambda *a: None, auto_ack=True)
    conn.process_data_events(time_limit=1.2)
    # Checked from another connection, after more than twice the expiry.
    other = pika_connect(broker)
    try:
        assert queue_exists(other, queue)
    finally:
        other.close()
    ch.basic_cancel(tag)
    time.sleep(1.2)
    assert not queue_exists(conn, queue)


@pytest.mark.timeout(30)
def test_consumer_connection_closing_restarts_the_timer(broker, conn, uniq):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-expires": 500})
    consumer_conn = pika_connect(broker)
    consumer_conn.channel().basic_consume(queue, lambda *a: None, auto_ack=True)
    consumer_conn.process_data_events(time_limit=1.0)
    assert queue_exists(conn, queue)
    consumer_conn.close()
    time.sleep(1.2)
    assert not queue_exists(conn, queue)


def test_expired_queue_with_messages_does_not_dead_letter(conn, uniq):
    """Deleting a queue, by x-expires or queue.delete, never dead-letters its messages."""
    ch = confirmed_channel(conn)
    queue, dlq = uniq("q"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(queue, arguments={"x-expires": 300, "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": dlq})
    publish(ch, queue, b"x")
    time.sleep(1.0)
    assert not queue_exists(conn, queue)
    assert queue_counts(ch, dlq) == (0, 0)


def test_plus_signed_expiration_still_expires(ch, uniq):
    """"+200" is a valid expiration (Erlang's string:to_integer) and means 200 ms."""
    queue = uniq()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"x", pika.BasicProperties(expiration="+200"))
    time.sleep(0.6)
    assert ch.basic_get(queue, auto_ack=True)[0] is None
