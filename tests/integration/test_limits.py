"""Queue length limits: x-max-length, x-max-length-bytes and x-overflow.

What RabbitMQ 3.10 does, and these tests pin down:
  - The limits count ready messages only (delivered-but-unacked ones do not count);
    x-max-length-bytes sums message bodies only, not properties or headers.
  - x-overflow drop-head (the default) drops - or dead-letters, reason "maxlen" - from
    the head until the queue is within its limits again, after each enqueue, including
    a requeue (a requeued message goes back to the head, so it is the one dropped). A
    message bigger than x-max-length-bytes on its own is therefore dropped too.
  - drop-head with x-max-length 0 still hands a message to a consumer that is waiting
    with prefetch capacity: the message never enters the queue.
  - reject-publish refuses a message that would not fit: basic.nack to a publisher in
    confirm mode (never a basic.return, even with mandatory), silence otherwise; the
    message is not dead-lettered. A message routed to several queues is nacked if any
    of them refuses it, and still enqueued in the others.
  - reject-publish-dlx is reject-publish plus dead-lettering of the refused message
    (reason "maxlen").
  - queue.declare-ok's message_count reflects the limit.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import pytest  # noqa: E402

from helpers.clients import (pika_bodies, pika_channel_error, pika_get_all,  # noqa: E402
                             pika_process_until, queue_counts, wait_queue_counts)


def confirmed_channel(conn):
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, queue, body, exchange="", **props):
    channel.basic_publish(exchange, queue, body, pika.BasicProperties(**props))


def publish_outcome(channel, queue, body, exchange="", mandatory=False):
    """Publish on a confirm channel: "ack", "nack" or "returned"."""
    try:
        channel.basic_publish(exchange, queue, body, mandatory=mandatory)
    except pika.exceptions.NackError as e:
        assert e.messages == [], "a nacked message must not also be returned"
        return "nack"
    except pika.exceptions.UnroutableError:
        return "returned"
    return "ack"


# ---------------------------------------------------------------------------
# drop-head (default)
# ---------------------------------------------------------------------------

def test_max_length_drops_oldest_by_default(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 2})
    for i in range(1, 6):
        assert publish_outcome(ch, queue, f"m{i}".encode()) == "ack"
    assert pika_bodies(pika_get_all(ch, queue)) == [b"m4", b"m5"]


def test_declare_ok_message_count_reflects_max_length(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ok = ch.queue_declare(queue, arguments={"x-max-length": 3}).method
    assert ok.message_count == 0
    for i in range(10):
        publish(ch, queue, b"x")
    ok = ch.queue_declare(queue, arguments={"x-max-length": 3}).method
    assert ok.message_count == 3


def test_explicit_drop_head_keeps_newest(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "drop-head"})
    publish(ch, queue, b"old")
    publish(ch, queue, b"new")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"new"]


def test_max_length_bytes_drops_oldest_until_it_fits(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaaa", b"bbbbb", b"ccccc"):
        publish(ch, queue, body)
    assert queue_counts(ch, queue) == (2, 0)
    publish(ch, queue, b"dddddddd")   # 8 bytes: only room for itself
    assert pika_bodies(pika_get_all(ch, queue)) == [b"dddddddd"]


def test_max_length_bytes_counts_bodies_not_headers(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    big_headers = {"padding": "p" * 2000}
    for body in (b"12345", b"67890"):
        publish(ch, queue, body, headers=big_headers, content_type="text/plain",
                message_id="m" * 200)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"12345", b"67890"]


def test_message_larger_than_max_length_bytes_is_dropped(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10})
    publish(ch, queue, b"small")
    assert publish_outcome(ch, queue, b"x" * 11) == "ack"
    # The newcomer alone exceeds the limit: the head is dropped, then the newcomer.
    assert queue_counts(ch, queue) == (0, 0)


def test_max_length_bytes_zero_keeps_empty_bodies_until_one_does_not_fit(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 0})
    publish(ch, queue, b"")
    publish(ch, queue, b"")
    assert queue_counts(ch, queue) == (2, 0)
    # Over the limit: drop from the head until within it - that takes all three.
    publish(ch, queue, b"x")
    assert queue_counts(ch, queue) == (0, 0)


def test_both_limits_apply_whichever_is_hit_first(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 3, "x-max-length-bytes": 100})
    for i in range(5):
        publish(ch, queue, f"{i}".encode())
    assert pika_bodies(pika_get_all(ch, queue)) == [b"2", b"3", b"4"]
    publish(ch, queue, b"a" * 60)
    publish(ch, queue, b"b" * 60)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"b" * 60]


def test_max_length_zero_keeps_nothing(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 0})
    publish(ch, queue, b"x")
    assert queue_counts(ch, queue) == (0, 0)


def test_max_length_zero_still_delivers_to_a_waiting_consumer(conn, uniq):
    """RabbitMQ 3.10 hands the message straight to a consumer with capacity; the queue
    limit only applies to what would be enqueued."""
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 0})
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    publish(ch, queue, b"direct")
    assert pika_process_until(conn, lambda: got, timeout=2)
    assert got == [b"direct"]


def test_unacked_messages_do_not_count_towards_max_length(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 2})
    publish(ch, queue, b"1")
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    publish(ch, queue, b"2")
    publish(ch, queue, b"3")
    assert queue_counts(ch, queue) == (2, 0)
    ch.basic_ack(method.delivery_tag)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"2", b"3"]


def test_requeue_beyond_max_length_drops_the_requeued_head(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 2})
    publish(ch, queue, b"1")
    publish(ch, queue, b"2")
    method, _, body = ch.basic_get(queue, auto_ack=False)
    assert body == b"1"
    publish(ch, queue, b"3")
    ch.basic_reject(method.delivery_tag, requeue=True)
    # "1" goes back to the head, making 3 ready messages; the head is dropped.
    assert wait_queue_counts(ch, queue, (2, 0)) == (2, 0)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"2", b"3"]


# ---------------------------------------------------------------------------
# reject-publish
# ---------------------------------------------------------------------------

def test_reject_publish_nacks_when_full(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    outcomes = [publish_outcome(ch, queue, f"m{i}".encode()) for i in range(1, 5)]
    assert outcomes == ["ack", "ack", "nack", "nack"]
    # The oldest are kept.
    assert pika_bodies(pika_get_all(ch, queue)) == [b"m1", b"m2"]


def test_reject_publish_accepts_again_once_there_is_room(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    assert publish_outcome(ch, queue, b"a") == "ack"
    assert publish_outcome(ch, queue, b"b") == "nack"
    assert ch.basic_get(queue, auto_ack=True)[2] == b"a"
    assert publish_outcome(ch, queue, b"c") == "ack"
    assert pika_bodies(pika_get_all(ch, queue)) == [b"c"]


def test_reject_publish_without_confirms_drops_silently(conn, uniq):
    ch = conn.channel()
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    for body in (b"kept", b"dropped1", b"dropped2"):
        publish(ch, queue, body)
    assert wait_queue_counts(ch, queue, (1, 0)) == (1, 0)
    assert ch.is_open and conn.is_open
    assert pika_bodies(pika_get_all(ch, queue)) == [b"kept"]


def test_reject_publish_max_length_bytes_refuses_what_does_not_fit(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length-bytes": 10,
                                       "x-overflow": "reject-publish"})
    outcomes = [publish_outcome(ch, queue, body)
                for body in (b"aaaaaa", b"bbbbbb", b"cccc", b"d")]
    assert outcomes == ["ack", "nack", "ack", "nack"]
    assert pika_bodies(pika_get_all(ch, queue)) == [b"aaaaaa", b"cccc"]


def test_reject_publish_counts_only_ready_messages(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    publish(ch, queue, b"1")
    publish(ch, queue, b"2")
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    assert publish_outcome(ch, queue, b"3") == "ack"
    assert publish_outcome(ch, queue, b"4") == "nack"
    # A requeue is never refused: the queue goes over its limit.
    ch.basic_reject(method.delivery_tag, requeue=True)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"1", b"2", b"3"]


def test_reject_publish_with_max_length_zero_nacks_even_with_a_consumer(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    got = []
    ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    assert publish_outcome(ch, queue, b"x") == "nack"
    conn.process_data_events(time_limit=0.3)
    assert got == []


def test_reject_publish_mandatory_is_nacked_not_returned(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    assert publish_outcome(ch, queue, b"x", mandatory=True) == "nack"


def test_reject_publish_by_one_of_several_queues_nacks(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, full, roomy = uniq("x"), uniq("full"), uniq("roomy")
    ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(full, arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    ch.queue_declare(roomy)
    ch.queue_bind(full, exchange)
    ch.queue_bind(roomy, exchange)
    assert publish_outcome(ch, "", b"x", exchange=exchange) == "nack"
    assert queue_counts(ch, roomy) == (1, 0)
    assert queue_counts(ch, full) == (0, 0)


def test_reject_publish_does_not_dead_letter(conn, uniq):
    ch = confirmed_channel(conn)
    queue, dlq = uniq("q"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish",
                                       "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": dlq})
    assert publish_outcome(ch, queue, b"1") == "ack"
    assert publish_outcome(ch, queue, b"2") == "nack"
    time.sleep(0.2)
    assert queue_counts(ch, dlq) == (0, 0)


# ---------------------------------------------------------------------------
# reject-publish-dlx
# ---------------------------------------------------------------------------

def test_reject_publish_dlx_nacks_and_dead_letters(conn, uniq):
    ch = confirmed_channel(conn)
    queue, dlq = uniq("q"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                       "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": dlq})
    assert publish_outcome(ch, queue, b"1") == "ack"
    assert publish_outcome(ch, queue, b"2") == "nack"
    assert wait_queue_counts(ch, dlq, (1, 0)) == (1, 0)
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"2"
    assert method.routing_key == dlq
    death = props.headers["x-death"]
    assert len(death) == 1
    assert death[0]["reason"] == "maxlen"
    assert death[0]["queue"] == queue
    assert death[0]["count"] == 1
    assert props.headers["x-first-death-reason"] == "maxlen"
    # The queue kept its oldest message.
    assert pika_bodies(pika_get_all(ch, queue)) == [b"1"]


def test_reject_publish_dlx_without_confirms_still_dead_letters(conn, uniq):
    ch = conn.channel()
    queue, dlq = uniq("q"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                       "x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": dlq})
    for body in (b"1", b"2", b"3"):
        publish(ch, queue, body)
    assert wait_queue_counts(ch, dlq, (2, 0)) == (2, 0)
    assert pika_bodies(pika_get_all(ch, dlq)) == [b"2", b"3"]


def test_reject_publish_dlx_without_a_dlx_just_nacks(conn, uniq):
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    assert publish_outcome(ch, queue, b"1") == "ack"
    assert publish_outcome(ch, queue, b"2") == "nack"
    assert pika_bodies(pika_get_all(ch, queue)) == [b"1"]


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, arg, reason", [
    ({"x-max-length": -1}, "x-max-length", "{value_negative,-1}"),
    ({"x-max-length": "10"}, "x-max-length", '"expected integer, got longstr"'),
    ({"x-max-length": True}, "x-max-length", '"expected integer, got bool"'),
    ({"x-max-length-bytes": -1}, "x-max-length-bytes", "{value_negative,-1}"),
    ({"x-max-length-bytes": "a"}, "x-max-length-bytes", '"expected integer, got longstr"'),
    ({"x-overflow": "drop-tail"}, "x-overflow", "invalid_overflow"),
    ({"x-overflow": 1}, "x-overflow", "{unacceptable_type,signedint}"),
])
def test_invalid_limit_arguments_are_rejected(ch, uniq, arguments, arg, reason):
    queue = uniq()
    code, text = pika_channel_error(lambda: ch.queue_declare(queue, arguments=arguments))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg '{arg}' for queue '{queue}' in vhost "
                    f"'/': {reason}")


@pytest.mark.parametrize("overflow", ["drop-head", "reject-publish", "reject-publish-dlx"])
def test_valid_overflow_values_are_accepted(ch, uniq, overflow):
    ch.queue_declare(uniq(), arguments={"x-max-length": 0, "x-max-length-bytes": 0,
                                        "x-overflow": overflow})


def test_large_max_length_is_accepted(ch, uniq):
    ch.queue_declare(uniq(), arguments={"x-max-length": 2 ** 63 - 1,
                                        "x-max-length-bytes": 2 ** 40})
