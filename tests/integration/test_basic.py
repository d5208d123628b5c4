"""The basic class: consume/cancel, get, acknowledgements, QoS, redelivery, returns,
transactions, channel.flow and message sizes.
"""
import os
import time

import amqp
import pika
import pika.exceptions
import pytest

from helpers.clients import (amqp_drain, amqp_drain_until, pika_bodies, pika_channel_error,
                             pika_connection_error, pika_get_all, pika_process_until,
                             wait_queue_counts)


def fill(ch, queue, count, prefix=b"m"):
    for i in range(count):
        ch.basic_publish("", queue, prefix + b"%d" % i)


def new_queue(ch, count=0):
    """An exclusive server-named queue holding count messages m0..m{count-1}."""
    queue = ch.queue_declare("", exclusive=True).method.queue
    if count:
        fill(ch, queue, count)
    return queue


class Collector:
    """pika on_message_callback that records deliveries and never acks by itself."""

    def __init__(self):
        self.deliveries = []

    def __call__(self, channel, method, properties, body):
        self.deliveries.append((method, properties, body))

    @property
    def bodies(self):
        return [body for _, _, body in self.deliveries]

    @property
    def tags(self):
        return [m.delivery_tag for m, _, _ in self.deliveries]


# ---------------------------------------------------------------------------
# Consume and cancel
# ---------------------------------------------------------------------------

def test_consume_receives_existing_and_new_messages(conn, ch):
    queue = new_queue(ch, 3)
    got = Collector()
    ch.basic_consume(queue, got, auto_ack=True)
    fill(ch, queue, 2, prefix=b"late")
    assert pika_process_until(conn, lambda: len(got.deliveries) == 5)
    assert got.bodies == [b"m0", b"m1", b"m2", b"late0", b"late1"]


def test_cancel_stops_deliveries(conn, ch):
    queue = new_queue(ch)
    got = Collector()
    tag = ch.basic_consume(queue, got, auto_ack=True)
    ch.basic_publish("", queue, b"before")
    assert pika_process_until(conn, lambda: len(got.deliveries) == 1)
    ch.basic_cancel(tag)
    ch.basic_publish("", queue, b"after")
    conn.process_data_events(time_limit=0.3)
    assert got.bodies == [b"before"]
    assert wait_queue_counts(ch, queue, (1, 0)) == (1, 0)
    assert pika_bodies(pika_get_all(ch, queue)) == [b"after"]


def test_server_generated_consumer_tag(amqp_ch):
    # pika invents tags client-side; py-amqp sends an empty tag and the broker names it.
    queue, _, _ = amqp_ch.queue_declare("", exclusive=True, auto_delete=False)
    tag1 = amqp_ch.basic_consume(queue, callback=lambda m: None)
    tag2 = amqp_ch.basic_consume(queue, callback=lambda m: None)
    assert tag1.startswith("amq.ctag-") and tag2.startswith("amq.ctag-")
    assert tag1 != tag2


def test_cancel_unknown_consumer_tag_is_ok(ch):
    ch.basic_cancel("never-used-tag")
    assert ch.is_open


def test_consumer_tag_reuse_on_channel_is_530(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    ch.basic_consume(queue, consumer_tag="dup", callback=lambda m: None)
    with pytest.raises(amqp.exceptions.NotAllowed) as info:
        ch.basic_consume(queue, consumer_tag="dup", callback=lambda m: None)
    assert info.value.reply_code == 530
    assert info.value.reply_text == "NOT_ALLOWED - attempt to reuse consumer tag 'dup'"


def test_same_consumer_tag_on_different_channels_is_fine(amqp_conn):
    ch1, ch2 = amqp_conn.channel(), amqp_conn.channel()
    queue, _, _ = ch1.queue_declare("", exclusive=True)
    assert ch1.basic_consume(queue, consumer_tag="same", callback=lambda m: None) == "same"
    assert ch2.basic_consume(queue, consumer_tag="same", callback=lambda m: None) == "same"


def test_consume_missing_queue_is_404(ch, uniq):
    queue = uniq("never")
    code, text = pika_channel_error(lambda: ch.basic_consume(queue, lambda *a: None))
    assert (code, text) == (404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")


def test_exclusive_consume_refused_when_queue_has_consumers(conn, ch):
    queue = new_queue(ch)
    ch.basic_consume(queue, lambda *a: None)
    other = conn.channel()
    code, text = pika_channel_error(lambda: other.basic_consume(queue, lambda *a: None, exclusive=True))
    assert (code, text) == (403, f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use")


def test_consume_refused_when_exclusive_consumer_exists(conn, ch):
    queue = new_queue(ch)
    ch.basic_consume(queue, lambda *a: None, exclusive=True)
    other = conn.channel()
    code, text = pika_channel_error(lambda: other.basic_consume(queue, lambda *a: None))
    assert (code, text) == (403, f"ACCESS_REFUSED - queue '{queue}' in vhost '/' in exclusive use")


def test_exclusive_consumer_gets_everything(conn, ch):
    queue = new_queue(ch, 5)
    got = Collector()
    ch.basic_consume(queue, got, auto_ack=True, exclusive=True)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 5)


def test_round_robin_between_consumers(conn, ch):
    queue = new_queue(ch)
    order = []
    ch.basic_consume(queue, lambda c, m, p, b: order.append("a"), auto_ack=True)
    ch.basic_consume(queue, lambda c, m, p, b: order.append("b"), auto_ack=True)
    fill(ch, queue, 10)
    assert pika_process_until(conn, lambda: len(order) == 10)
    assert order.count("a") == 5 and order.count("b") == 5
    assert all(order[i] != order[i + 1] for i in range(9)), order


def test_fifo_order_for_a_single_consumer(conn, ch):
    queue = new_queue(ch, 500)
    got = Collector()
    ch.basic_consume(queue, got, auto_ack=True)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 500, timeout=20)
    assert got.bodies == [b"m%d" % i for i in range(500)]


def test_delivery_tags_start_at_one_and_increase_per_channel(conn, ch):
    queue = new_queue(ch, 4)
    got = Collector()
    ch.basic_consume(queue, got)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 4)
    assert got.tags == [1, 2, 3, 4]
    method, _, _ = ch.basic_get(new_queue(ch, 1))
    assert method.delivery_tag == 5   # the channel's counter is shared by get and consume


def test_no_ack_consume_removes_messages(conn, ch):
    queue = new_queue(ch, 3)
    got = Collector()
    tag = ch.basic_consume(queue, got, auto_ack=True)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 3)
    ch.basic_cancel(tag)
    ch.close()
    ch2 = conn.channel()
    assert wait_queue_counts(ch2, queue, (0, 0)) == (0, 0)


def test_py_amqp_consume_and_cancel(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    for i in range(3):
        ch.basic_publish(amqp.Message(b"p%d" % i), "", queue)
    got = amqp_drain(amqp_conn, ch, queue, 3)
    assert [m.body for m in got] == [b"p0", b"p1", b"p2"]
    assert all(m.delivery_info["routing_key"] == queue for m in got)


# ---------------------------------------------------------------------------
# basic.get
# ---------------------------------------------------------------------------

def test_get_reports_remaining_message_count(ch):
    queue = new_queue(ch)
    ch.confirm_delivery()
    fill(ch, queue, 3)
    counts = []
    for _ in range(3):
        method, _, _ = ch.basic_get(queue, auto_ack=True)
        counts.append(method.message_count)
    assert counts == [2, 1, 0]
    assert ch.basic_get(queue) == (None, None, None)


def test_get_ok_fields(ch):
    queue = new_queue(ch)
    ch.basic_publish("", queue, b"x")
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    assert method.exchange == ""
    assert method.routing_key == queue
    assert method.redelivered is False
    assert method.delivery_tag == 1


def test_get_empty_py_amqp(amqp_ch):
    queue, _, _ = amqp_ch.queue_declare("", exclusive=True, auto_delete=False)
    assert amqp_ch.basic_get(queue) is None


def test_get_py_amqp_message_count(amqp_ch):
    queue, _, _ = amqp_ch.queue_declare("", exclusive=True, auto_delete=False)
    amqp_ch.confirm_select()
    for i in range(2):
        amqp_ch.basic_publish(amqp.Message(b"g%d" % i), "", queue)
    deadline = time.monotonic() + 5
    while amqp_ch.queue_declare(queue, passive=True)[1] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    msg = amqp_ch.basic_get(queue, no_ack=True)
    assert msg.body == b"g0"
    assert msg.delivery_info["message_count"] == 1


def test_get_missing_queue_is_404(ch, uniq):
    queue = uniq("never")
    code, text = pika_channel_error(lambda: ch.basic_get(queue))
    assert (code, text) == (404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")


# ---------------------------------------------------------------------------
# Acknowledgements
# ---------------------------------------------------------------------------

def test_ack_removes_message(conn, ch):
    queue = new_queue(ch, 1)
    method, _, _ = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    ch.close()
    assert wait_queue_counts(conn.channel(), queue, (0, 0)) == (0, 0)


def test_unacked_message_requeued_on_channel_close_with_redelivered(conn, ch):
    queue = new_queue(ch, 1)
    method, _, _ = ch.basic_get(queue)
    assert method.redelivered is False
    ch.close()
    ch2 = conn.channel()
    wait_queue_counts(ch2, queue, (1, 0))
    method, _, body = ch2.basic_get(queue, auto_ack=True)
    assert body == b"m0"
    assert method.redelivered is True


def test_ack_multiple(conn, ch):
    queue = new_queue(ch, 5)
    tags = [ch.basic_get(queue)[0].delivery_tag for _ in range(5)]
    ch.basic_ack(tags[2], multiple=True)   # acks m0, m1, m2
    ch.close()
    ch2 = conn.channel()
    wait_queue_counts(ch2, queue, (2, 0))
    assert pika_bodies(pika_get_all(ch2, queue)) == [b"m3", b"m4"]


def test_ack_zero_multiple_acks_everything(conn, ch):
    queue = new_queue(ch, 3)
    for _ in range(3):
        ch.basic_get(queue)
    ch.basic_ack(0, multiple=True)
    ch.close()
    assert wait_queue_counts(conn.channel(), queue, (0, 0)) == (0, 0)


def test_nack_requeue_sets_redelivered(ch):
    queue = new_queue(ch, 1)
    method, _, _ = ch.basic_get(queue)
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"m0", True)


def test_nack_multiple_requeue(ch):
    queue = new_queue(ch, 3)
    tags = [ch.basic_get(queue)[0].delivery_tag for _ in range(3)]
    ch.basic_nack(tags[-1], multiple=True, requeue=True)
    got = pika_get_all(ch, queue)
    assert pika_bodies(got) == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in got)


def test_nack_without_requeue_drops(conn, ch):
    queue = new_queue(ch, 2)
    tags = [ch.basic_get(queue)[0].delivery_tag for _ in range(2)]
    ch.basic_nack(tags[1], multiple=True, requeue=False)
    ch.close()
    assert wait_queue_counts(conn.channel(), queue, (0, 0)) == (0, 0)


def test_reject_requeue_and_drop(conn, ch):
    queue = new_queue(ch, 2)
    first, _, _ = ch.basic_get(queue)
    second, _, _ = ch.basic_get(queue)
    ch.basic_reject(first.delivery_tag, requeue=False)
    ch.basic_reject(second.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"m1", True)
    assert ch.basic_get(queue) == (None, None, None)


def test_requeued_messages_return_to_head_in_original_order(conn, ch):
    queue = new_queue(ch, 6)
    tags = [ch.basic_get(queue)[0].delivery_tag for _ in range(3)]   # m0 m1 m2 unacked
    # Requeue out of order: the queue still restores publication order.
    ch.basic_nack(tags[2], requeue=True)
    ch.basic_nack(tags[0], requeue=True)
    ch.basic_nack(tags[1], requeue=True)
    got = pika_get_all(ch, queue)
    assert pika_bodies(got) == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5"]
    assert [m.redelivered for m, _, _ in got] == [True, True, True, False, False, False]


def test_requeue_on_consumer_channel_close_preserves_order(conn, ch):
    queue = new_queue(ch, 5)
    consumer_ch = conn.channel()
    consumer_ch.basic_qos(prefetch_count=3)
    got = Collector()
    consumer_ch.basic_consume(queue, got)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 3)
    consumer_ch.close()
    wait_queue_counts(ch, queue, (5, 0))
    assert pika_bodies(pika_get_all(ch, queue)) == [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_unknown_delivery_tag_is_406(ch):
    new_queue(ch, 1)
    ch.basic_ack(42)
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 42")


def test_double_ack_is_406(ch):
    queue = new_queue(ch, 1)
    method, _, _ = ch.basic_get(queue)
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, f"PRECONDITION_FAILED - unknown delivery tag {method.delivery_tag}")


def test_ack_after_no_ack_get_is_406(ch):
    queue = new_queue(ch, 1)
    method, _, _ = ch.basic_get(queue, auto_ack=True)
    ch.basic_ack(method.delivery_tag)
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 1")


def test_reject_unknown_tag_is_406(ch):
    ch.basic_reject(7)
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 7")


def test_ack_single_tag_zero_is_406(ch):
    new_queue(ch, 1)
    ch.basic_ack(0, multiple=False)
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - unknown delivery tag 0")


def test_py_amqp_ack_and_reject(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    for i in range(3):
        ch.basic_publish(amqp.Message(b"a%d" % i), "", queue)
    got = amqp_drain(amqp_conn, ch, queue, 3, no_ack=False)
    assert [m.body for m in got] == [b"a0", b"a1", b"a2"]
    ch.basic_ack(got[0].delivery_tag)
    ch.basic_reject(got[1].delivery_tag, requeue=True)
    ch.basic_reject(got[2].delivery_tag, requeue=False)
    msg = ch.basic_get(queue, no_ack=True)
    assert msg.body == b"a1"
    assert msg.delivery_info["redelivered"] is True
    assert ch.basic_get(queue) is None


def test_py_amqp_unknown_delivery_tag(amqp_conn):
    ch = amqp_conn.channel()
    ch.basic_ack(42)
    with pytest.raises(amqp.exceptions.PreconditionFailed) as info:
        ch.queue_declare("", exclusive=True)
    assert info.value.reply_code == 406
    assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 42"


# ---------------------------------------------------------------------------
# basic.recover
# ---------------------------------------------------------------------------

def test_recover_requeues_unacked(conn, ch):
    queue = new_queue(ch, 2)
    got = Collector()
    ch.basic_consume(queue, got)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 2)
    ch.basic_recover(requeue=True)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 4)
    redelivered = got.deliveries[2:]
    assert [b for _, _, b in redelivered] == [b"m0", b"m1"]
    assert all(m.redelivered for m, _, _ in redelivered)
    for m, _, _ in redelivered:
        ch.basic_ack(m.delivery_tag)


def test_recover_without_requeue_is_not_implemented(ch):
    code, text = pika_connection_error(lambda: ch.basic_recover(requeue=False))
    assert (code, text) == (540, "NOT_IMPLEMENTED - requeue=false")


# ---------------------------------------------------------------------------
# QoS
# ---------------------------------------------------------------------------

def unacked_after(conn, consumers, expected_total, settle=0.4):
    """Delivery counts once expected_total deliveries arrived (or 5 s passed), plus a
    settle period in which a broker ignoring the limit would deliver more."""
    pika_process_until(conn, lambda: sum(len(c.deliveries) for c in consumers) >= expected_total)
    conn.process_data_events(time_limit=settle)
    return [len(c.deliveries) for c in consumers]


def test_prefetch_limits_unacked_deliveries(conn, ch):
    queue = new_queue(ch, 10)
    ch.basic_qos(prefetch_count=3)
    got = Collector()
    ch.basic_consume(queue, got)
    assert unacked_after(conn, [got], 3) == [3]
    ch.basic_ack(got.tags[0])
    assert unacked_after(conn, [got], 4) == [4]
    ch.basic_ack(got.tags[-1], multiple=True)
    assert unacked_after(conn, [got], 7) == [7]


def test_prefetch_is_per_consumer_by_default(conn, ch):
    q1, q2 = new_queue(ch, 5), new_queue(ch, 5)
    ch.basic_qos(prefetch_count=2)
    a, b = Collector(), Collector()
    ch.basic_consume(q1, a)
    ch.basic_consume(q2, b)
    assert unacked_after(conn, [a, b], 4) == [2, 2]


def test_global_prefetch_is_shared_by_the_channel(conn, ch):
    q1, q2 = new_queue(ch, 5), new_queue(ch, 5)
    ch.basic_qos(prefetch_count=2, global_qos=True)
    a, b = Collector(), Collector()
    ch.basic_consume(q1, a)
    ch.basic_consume(q2, b)
    counts = unacked_after(conn, [a, b], 2)
    assert sum(counts) == 2, counts
    ch.basic_ack(0, multiple=True)
    counts = unacked_after(conn, [a, b], 4)
    assert sum(counts) == 4, counts


def test_prefetch_zero_is_unlimited(conn, ch):
    queue = new_queue(ch, 50)
    ch.basic_qos(prefetch_count=0)
    got = Collector()
    ch.basic_consume(queue, got)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 50)


def test_prefetch_does_not_limit_no_ack_consumers(conn, ch):
    queue = new_queue(ch, 20)
    ch.basic_qos(prefetch_count=1)
    got = Collector()
    ch.basic_consume(queue, got, auto_ack=True)
    assert pika_process_until(conn, lambda: len(got.deliveries) == 20)


def test_prefetch_size_is_not_implemented(ch):
    code, text = pika_connection_error(lambda: ch.basic_qos(prefetch_size=10))
    assert (code, text) == (540, "NOT_IMPLEMENTED - prefetch_size!=0 (10)")


# ---------------------------------------------------------------------------
# Mandatory and returns
# ---------------------------------------------------------------------------

def test_mandatory_unroutable_is_returned_312(conn, ch, uniq):
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, props, body)))
    ch.basic_publish("amq.direct", uniq("nobody"), b"bounce", pika.BasicProperties(message_id="r1"),
                     mandatory=True)
    assert pika_process_until(conn, lambda: returned)
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert method.exchange == "amq.direct"
    assert body == b"bounce" and props.message_id == "r1"


def test_mandatory_to_missing_queue_on_default_exchange_is_returned(conn, ch, uniq):
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append(method))
    routing_key = uniq("nobody")
    ch.basic_publish("", routing_key, b"bounce", mandatory=True)
    assert pika_process_until(conn, lambda: returned)
    assert returned[0].reply_code == 312
    assert returned[0].routing_key == routing_key


def test_mandatory_routable_is_not_returned(conn, ch):
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    queue = new_queue(ch)
    ch.basic_publish("", queue, b"ok", mandatory=True)
    conn.process_data_events(time_limit=0.3)
    assert returned == []
    assert pika_bodies(pika_get_all(ch, queue)) == [b"ok"]


def test_unroutable_without_mandatory_is_dropped_silently(conn, ch, uniq):
    returned = []
    ch.add_on_return_callback(lambda *a: returned.append(a))
    ch.basic_publish("amq.direct", uniq("nobody"), b"gone")
    conn.process_data_events(time_limit=0.3)
    assert returned == []
    assert ch.is_open


def test_mandatory_unroutable_with_confirms_raises_unroutable(ch, uniq):
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        ch.basic_publish("amq.direct", uniq("nobody"), b"bounce", mandatory=True)
    assert info.value.messages[0].method.reply_code == 312


def test_py_amqp_basic_return(amqp_conn, uniq):
    ch = amqp_conn.channel()
    returned = []
    ch.events["basic_return"].add(lambda exc, exchange, routing_key, message:
                                  returned.append((exc.reply_code, routing_key, message.body)))
    key = uniq("nobody")
    ch.basic_publish(amqp.Message(b"bounce"), "amq.direct", key, mandatory=True)
    assert amqp_drain_until(amqp_conn, lambda: returned)
    assert returned[0] == (312, key, b"bounce")


# ---------------------------------------------------------------------------
# channel.flow
# ---------------------------------------------------------------------------

def test_channel_flow_active_true_is_ok(ch):
    assert ch.flow(True) is True


def test_channel_flow_active_false_is_not_implemented(ch):
    code, text = pika_connection_error(lambda: ch.flow(False))
    assert (code, text) == (540, "NOT_IMPLEMENTED - active=false")


# ---------------------------------------------------------------------------
# Transactions
# ---------------------------------------------------------------------------

def test_tx_publishes_visible_only_after_commit(conn, ch):
    queue = new_queue(ch)
    ch.tx_select()
    fill(ch, queue, 3)
    observer = conn.channel()
    time.sleep(0.2)
    assert observer.queue_declare(queue, passive=True).method.message_count == 0
    ch.tx_commit()
    assert wait_queue_counts(observer, queue, (3, 0)) == (3, 0)


def test_tx_rollback_discards_publishes(conn, ch):
    queue = new_queue(ch)
    ch.tx_select()
    fill(ch, queue, 3)
    ch.tx_rollback()
    ch.basic_publish("", queue, b"after rollback")
    ch.tx_commit()
    assert pika_bodies(pika_get_all(conn.channel(), queue)) == [b"after rollback"]


def test_tx_acks_apply_on_commit(conn, ch):
    queue = new_queue(ch, 2)
    ch.tx_select()
    first, _, _ = ch.basic_get(queue)
    ch.basic_ack(first.delivery_tag)
    ch.tx_rollback()     # the ack is discarded: m0 stays unacked on this channel
    second, _, _ = ch.basic_get(queue)
    ch.basic_ack(second.delivery_tag)
    ch.tx_commit()       # m1 acked for good
    ch.close()           # m0 (still unacked) is requeued
    observer = conn.channel()
    wait_queue_counts(observer, queue, (1, 0))
    method, _, body = observer.basic_get(queue, auto_ack=True)
    assert (body, method.redelivered) == (b"m0", True)
    assert observer.basic_get(queue) == (None, None, None)


def test_tx_is_chained(conn, ch):
    queue = new_queue(ch)
    ch.tx_select()
    ch.basic_publish("", queue, b"t1")
    ch.tx_commit()
    ch.basic_publish("", queue, b"t2")
    ch.tx_commit()
    ch.basic_publish("", queue, b"t3")
    ch.tx_rollback()
    assert pika_bodies(pika_get_all(conn.channel(), queue)) == [b"t1", b"t2"]


def test_tx_commit_without_select_is_406(ch):
    code, text = pika_channel_error(lambda: ch.tx_commit())
    assert (code, text) == (406, "PRECONDITION_FAILED - channel is not transactional")


def test_tx_rollback_without_select_is_406(ch):
    code, text = pika_channel_error(lambda: ch.tx_rollback())
    assert (code, text) == (406, "PRECONDITION_FAILED - channel is not transactional")


def test_confirm_select_on_tx_channel_is_406(ch):
    ch.tx_select()
    code, text = pika_channel_error(lambda: ch.confirm_delivery())
    assert (code, text) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")


def test_tx_select_on_confirm_channel_is_406(ch):
    ch.confirm_delivery()
    code, text = pika_channel_error(lambda: ch.tx_select())
    assert (code, text) == (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")


def test_py_amqp_tx(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    ch.tx_select()
    ch.basic_publish(amqp.Message(b"tx"), "", queue)
    assert amqp_conn.channel().basic_get(queue) is None
    ch.tx_commit()
    msg = ch.basic_get(queue, no_ack=True)
    assert msg is not None and msg.body == b"tx"


# ---------------------------------------------------------------------------
# Message sizes
# ---------------------------------------------------------------------------

def test_zero_size_body_pika(conn, ch):
    queue = new_queue(ch)
    ch.basic_publish("", queue, b"", pika.BasicProperties(message_id="empty"))
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert body == b"" and props.message_id == "empty"
    got = Collector()
    ch.basic_publish("", queue, b"")
    ch.basic_consume(queue, got, auto_ack=True)
    assert pika_process_until(conn, lambda: got.deliveries)
    assert got.bodies == [b""]


def test_zero_size_body_py_amqp(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    ch.basic_publish(amqp.Message(b""), "", queue)
    body = ch.basic_get(queue, no_ack=True).body
    assert body in (b"", "")   # py-amqp hands back an empty body as str


@pytest.mark.timeout(120)
def test_16_mib_message_round_trip_is_byte_exact(conn, ch):
    queue = new_queue(ch)
    body = os.urandom(16 * 1024 * 1024)
    ch.confirm_delivery()
    ch.basic_publish("", queue, body)
    method, _, got = ch.basic_get(queue, auto_ack=True)
    assert len(got) == len(body)
    assert got == body


@pytest.mark.timeout(120)
def test_large_message_consumed_py_amqp(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    body = os.urandom(4 * 1024 * 1024 + 17)
    ch.basic_publish(amqp.Message(body), "", queue)
    got = amqp_drain(amqp_conn, ch, queue, 1, timeout=30)
    assert got and got[0].body == body


def test_message_sizes_around_frame_boundaries(ch):
    queue = new_queue(ch)
    frame_payload = 131072 - 8
    sizes = [1, frame_payload - 1, frame_payload, frame_payload + 1, 2 * frame_payload, 3 * frame_payload + 5]
    bodies = [bytes([n % 251]) * n for n in sizes]
    for body in bodies:
        ch.basic_publish("", queue, body)
    assert pika_bodies(pika_get_all(ch, queue)) == bodies


def test_message_over_max_message_size_is_406(fresh_broker):
    from helpers.clients import pika_connect
    b = fresh_broker(config={"max_message_size": 1048576})
    conn = pika_connect(b)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, b"x" * 1048576)          # exactly the limit: accepted
        method, _, body = ch.basic_get(queue, auto_ack=True)
        assert len(body) == 1048576
        ch.basic_publish("", queue, b"y" * 2097152)
        code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
        assert (code, text) == (406, "PRECONDITION_FAILED - message size 2097152 is larger "
                                     "than configured max size 1048576")
        ch2 = conn.channel()
        assert ch2.basic_get(queue) == (None, None, None)
    finally:
        conn.close()
