"""Queue and exchange declaration, deletion, binding and routing topology.

Error texts are RabbitMQ 3.10's, byte for byte, because client code and operators match
on them (e.g. "inequivalent arg" to detect a redeclare with other flags).
"""
import re
import time

import amqp
import pika
import pika.exceptions
import pytest

from helpers.clients import (pika_bodies, pika_channel_error, pika_connect,
                             pika_connection_error, pika_get_all, rabbit_reply_text,
                             wait_queue_counts)


def still_exists_queue(conn, queue):
    ch = conn.channel()
    try:
        ch.queue_declare(queue, passive=True)
        ch.close()
        return True
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 405:   # exclusive to another connection: it exists
            return True
        assert e.reply_code == 404
        return False


def still_exists_exchange(conn, exchange):
    ch = conn.channel()
    try:
        ch.exchange_declare(exchange, passive=True)
        ch.close()
        return True
    except pika.exceptions.ChannelClosedByBroker as e:
        assert e.reply_code == 404
        return False


def wait_gone(check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------
# Passive declares
# ---------------------------------------------------------------------------

def test_passive_declare_missing_queue_is_404(ch, uniq):
    queue = uniq("missing")
    code, text = pika_channel_error(lambda: ch.queue_declare(queue, passive=True))
    assert code == 404
    assert text == f"NOT_FOUND - no queue '{queue}' in vhost '/'"


def test_passive_declare_missing_exchange_is_404(ch, uniq):
    exchange = uniq("x")
    code, text = pika_channel_error(lambda: ch.exchange_declare(exchange, passive=True))
    assert code == 404
    assert text == f"NOT_FOUND - no exchange '{exchange}' in vhost '/'"


def test_passive_declare_missing_queue_py_amqp(amqp_ch, uniq):
    queue = uniq("missing")
    with pytest.raises(amqp.exceptions.NotFound) as info:
        amqp_ch.queue_declare(queue, passive=True)
    assert info.value.reply_code == 404
    assert info.value.reply_text == f"NOT_FOUND - no queue '{queue}' in vhost '/'"


def test_passive_declare_existing_queue_ignores_other_flags(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, durable=True)
    try:
        ok = ch.queue_declare(queue, passive=True, durable=False, auto_delete=True)
        assert ok.method.queue == queue
    finally:
        ch.queue_delete(queue)


def test_passive_declare_existing_exchange_ignores_type(ch, uniq):
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct", auto_delete=False)
    try:
        ch.exchange_declare(exchange, "fanout", passive=True)
    finally:
        ch.exchange_delete(exchange)


# ---------------------------------------------------------------------------
# Queue declare
# ---------------------------------------------------------------------------

def test_server_named_queue(ch):
    ok = ch.queue_declare("", exclusive=True)
    assert ok.method.queue.startswith("amq.gen-")
    assert len(ok.method.queue) > len("amq.gen-")
    other = ch.queue_declare("", exclusive=True)
    assert other.method.queue != ok.method.queue


def test_server_named_queue_py_amqp(amqp_ch):
    name, message_count, consumer_count = amqp_ch.queue_declare("", exclusive=True)
    assert name.startswith("amq.gen-")
    assert (message_count, consumer_count) == (0, 0)


def test_declare_ok_reports_message_and_consumer_counts(ch, conn, uniq):
    ch.confirm_delivery()   # publishes are enqueued once confirmed
    queue = uniq()
    ch.queue_declare(queue)
    try:
        for i in range(3):
            ch.basic_publish("", queue, b"m%d" % i)
        other = conn.channel()
        other.basic_qos(prefetch_count=1)
        other.basic_consume(queue, lambda *a: None)
        conn.process_data_events(time_limit=0.2)
        # One message is unacked at the consumer: it does not count as ready.
        assert wait_queue_counts(ch, queue, (2, 1)) == (2, 1)
    finally:
        ch.queue_delete(queue)


def test_redeclare_is_idempotent(ch, uniq):
    ch.confirm_delivery()   # publishes are enqueued once confirmed
    queue = uniq()
    ch.queue_declare(queue, durable=True, arguments={"x-max-length": 10})
    try:
        ch.basic_publish("", queue, b"kept")
        ok = ch.queue_declare(queue, durable=True, arguments={"x-max-length": 10})
        assert ok.method.message_count == 1
    finally:
        ch.queue_delete(queue)


def test_inequivalent_durable_redeclare_is_406(ch, conn, uniq):
    queue = uniq()
    ch.queue_declare(queue, durable=True)
    try:
        code, text = pika_channel_error(lambda: ch.queue_declare(queue, durable=False))
        assert code == 406
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{queue}' "
                        "in vhost '/': received 'false' but current is 'true'")
    finally:
        conn.channel().queue_delete(queue)


def test_inequivalent_auto_delete_redeclare_is_406(ch, conn, uniq):
    queue = uniq()
    ch.queue_declare(queue)
    try:
        code, text = pika_channel_error(lambda: ch.queue_declare(queue, auto_delete=True))
        assert code == 406
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'auto_delete' for queue "
                        f"'{queue}' in vhost '/': received 'true' but current is 'false'")
    finally:
        conn.channel().queue_delete(queue)


def test_inequivalent_queue_argument_is_406(ch, conn, uniq):
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-message-ttl": 100})
    try:
        code, text = pika_channel_error(
            lambda: ch.queue_declare(queue, arguments={"x-message-ttl": 200}))
        assert code == 406
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' for queue "
                        f"'{queue}' in vhost '/': received '200' but current is '100'")
    finally:
        conn.channel().queue_delete(queue)


def test_reserved_queue_name_prefix_is_403(ch):
    code, text = pika_channel_error(lambda: ch.queue_declare("amq.mine"))
    assert code == 403
    assert text == "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'"


def test_exclusive_queue_is_locked_to_its_connection(broker, ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    other = pika_connect(broker)
    try:
        for attempt in (lambda c: c.queue_declare(queue, exclusive=True),
                        lambda c: c.queue_declare(queue, passive=True),
                        lambda c: c.basic_consume(queue, lambda *a: None),
                        lambda c: c.basic_get(queue),
                        lambda c: c.queue_delete(queue),
                        lambda c: c.queue_purge(queue)):
            other_ch = other.channel()
            code, text = pika_channel_error(lambda: attempt(other_ch))
            assert code == 405
            assert text == rabbit_reply_text(f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue "
                            f"'{queue}' in vhost '/'. It could be originally declared on another "
                            "connection or the exclusive property value does not match that of "
                            "the original declaration.")
    finally:
        other.close()


def test_exclusive_queue_usable_from_other_channel_same_connection(conn, uniq):
    queue = uniq()
    conn.channel().queue_declare(queue, exclusive=True)
    other = conn.channel()
    other.basic_publish("", queue, b"same connection")
    assert other.basic_get(queue, auto_ack=True)[2] == b"same connection"


def test_exclusive_queue_deleted_when_connection_closes(broker, conn, uniq):
    queue = uniq()
    owner = pika_connect(broker)
    owner.channel().queue_declare(queue, exclusive=True)
    assert still_exists_queue(conn, queue)
    owner.close()
    assert wait_gone(lambda: still_exists_queue(conn, queue))


def test_exclusive_queue_survives_channel_close(conn, uniq):
    queue = uniq()
    ch1 = conn.channel()
    ch1.queue_declare(queue, exclusive=True)
    ch1.close()
    assert still_exists_queue(conn, queue)


def test_auto_delete_queue_deleted_after_last_consumer_cancels(broker, conn, uniq):
    queue = uniq()
    ch = conn.channel()
    ch.queue_declare(queue, auto_delete=True)
    # No consumer has ever subscribed: the queue stays.
    time.sleep(0.2)
    assert still_exists_queue(conn, queue)
    tag1 = ch.basic_consume(queue, lambda *a: None)
    tag2 = ch.basic_consume(queue, lambda *a: None)
    ch.basic_cancel(tag1)
    assert still_exists_queue(conn, queue)
    ch.basic_cancel(tag2)
    assert wait_gone(lambda: still_exists_queue(conn, queue))


def test_auto_delete_queue_deleted_when_consumer_connection_closes(broker, conn, uniq):
    queue = uniq()
    consumer = pika_connect(broker)
    cch = consumer.channel()
    cch.queue_declare(queue, auto_delete=True)
    cch.basic_consume(queue, lambda *a: None)
    assert still_exists_queue(conn, queue)
    consumer.close()
    assert wait_gone(lambda: still_exists_queue(conn, queue))


def test_durable_queue_declare_ok(ch, uniq):
    queue = uniq()
    ok = ch.queue_declare(queue, durable=True)
    assert ok.method.queue == queue
    ch.queue_delete(queue)


def test_queue_name_of_255_bytes(ch, uniq):
    queue = (uniq() + "-" + "n" * 255)[:255]
    assert ch.queue_declare(queue, exclusive=True).method.queue == queue


def test_queue_name_utf8(ch, uniq):
    queue = uniq() + "-çà-日本"
    assert ch.queue_declare(queue, exclusive=True).method.queue == queue
    ch.basic_publish("", queue, b"unicode")
    assert ch.basic_get(queue, auto_ack=True)[2] == b"unicode"


# ---------------------------------------------------------------------------
# Queue delete and purge
# ---------------------------------------------------------------------------

def test_queue_delete_returns_message_count(ch, uniq):
    ch.confirm_delivery()   # publishes are enqueued once confirmed
    queue = uniq()
    ch.queue_declare(queue)
    for i in range(4):
        ch.basic_publish("", queue, b"x")
    assert ch.queue_delete(queue).method.message_count == 4


def test_queue_delete_missing_queue_is_ok(ch, uniq):
    assert ch.queue_delete(uniq("never")).method.message_count == 0


def test_queue_delete_if_unused_refused_with_consumer(ch, conn, uniq):
    queue = uniq()
    ch.queue_declare(queue)
    ch.basic_consume(queue, lambda *a: None)
    try:
        code, text = pika_channel_error(lambda: conn.channel().queue_delete(queue, if_unused=True))
        assert code == 406
        assert text == f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' in use"
    finally:
        conn.channel().queue_delete(queue)


def test_queue_delete_if_empty_refused_with_messages(ch, conn, uniq):
    ch.confirm_delivery()   # publishes are enqueued once confirmed
    queue = uniq()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"x")
    try:
        code, text = pika_channel_error(lambda: ch.queue_delete(queue, if_empty=True))
        assert code == 406
        assert text == f"PRECONDITION_FAILED - queue '{queue}' in vhost '/' not empty"
    finally:
        conn.channel().queue_delete(queue)


def test_queue_delete_if_unused_and_if_empty_succeed_when_true(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue)
    assert ch.queue_delete(queue, if_unused=True, if_empty=True).method.message_count == 0


def test_queue_delete_cancels_consumers(ch, conn, uniq):
    queue = uniq()
    ch.queue_declare(queue)
    cancelled = []
    consumer_ch = conn.channel()
    consumer_ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = consumer_ch.basic_consume(queue, lambda *a: None)
    ch.queue_delete(queue)
    deadline = time.monotonic() + 5
    while not cancelled and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.1)
    # consumer_cancel_notify: the broker tells the consumer with basic.cancel.
    assert cancelled == [tag]


def test_purge_returns_count_and_empties_queue(ch, uniq):
    ch.confirm_delivery()   # publishes are enqueued once confirmed
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    for i in range(7):
        ch.basic_publish("", queue, b"x")
    assert ch.queue_purge(queue).method.message_count == 7
    assert wait_queue_counts(ch, queue, (0, 0)) == (0, 0)
    assert ch.queue_purge(queue).method.message_count == 0


def test_purge_does_not_touch_unacked_messages(ch, conn, uniq):
    ch.confirm_delivery()   # publishes are enqueued once confirmed
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    for i in range(3):
        ch.basic_publish("", queue, b"%d" % i)
    method, _, _ = ch.basic_get(queue, auto_ack=False)
    assert ch.queue_purge(queue).method.message_count == 2
    ch.basic_nack(method.delivery_tag, requeue=True)
    assert wait_queue_counts(ch, queue, (1, 0)) == (1, 0)


def test_purge_missing_queue_is_404(ch, uniq):
    queue = uniq("never")
    code, text = pika_channel_error(lambda: ch.queue_purge(queue))
    assert code == 404
    assert text == f"NOT_FOUND - no queue '{queue}' in vhost '/'"


# ---------------------------------------------------------------------------
# Exchange declare and delete
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
def test_exchange_types_can_be_declared(ch, uniq, kind):
    exchange = uniq("x")
    ch.exchange_declare(exchange, kind)
    ch.exchange_declare(exchange, kind)
    ch.exchange_delete(exchange)


def test_exchange_type_mismatch_is_406(ch, conn, uniq):
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct")
    try:
        code, text = pika_channel_error(lambda: ch.exchange_declare(exchange, "fanout"))
        assert code == 406
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{exchange}' "
                        "in vhost '/': received 'fanout' but current is 'direct'")
    finally:
        conn.channel().exchange_delete(exchange)


def test_exchange_durable_mismatch_is_406(ch, conn, uniq):
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct")
    try:
        code, text = pika_channel_error(lambda: ch.exchange_declare(exchange, "direct", durable=True))
        assert code == 406
        assert text == (f"PRECONDITION_FAILED - inequivalent arg 'durable' for exchange "
                        f"'{exchange}' in vhost '/': received 'true' but current is 'false'")
    finally:
        conn.channel().exchange_delete(exchange)


def test_reserved_exchange_prefix_is_403(ch):
    code, text = pika_channel_error(lambda: ch.exchange_declare("amq.foo", "direct"))
    assert code == 403
    assert text == "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'"


@pytest.mark.parametrize("name,kind", [("amq.direct", "direct"), ("amq.fanout", "fanout"),
                                       ("amq.topic", "topic"), ("amq.headers", "headers"),
                                       ("amq.match", "headers")])
def test_predeclared_exchanges_exist_and_are_durable(ch, name, kind):
    ch.exchange_declare(name, passive=True)
    ch.exchange_declare(name, kind, durable=True)   # equivalent redeclare is fine


def test_predeclared_exchange_cannot_be_deleted(ch):
    code, text = pika_channel_error(lambda: ch.exchange_delete("amq.direct"))
    assert code == 403
    assert text == "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' not allowed"


def test_unknown_exchange_type_closes_connection_503(conn, uniq):
    ch = conn.channel()
    exchange = uniq("x")
    code, text = pika_connection_error(lambda: ch.exchange_declare(exchange, "foo"))
    assert code == 503
    # RabbitMQ 3.10: "invalid exchange type 'foo'"; newer wording says "unknown".
    assert re.fullmatch(r"COMMAND_INVALID - (invalid|unknown) exchange type 'foo'", text), text


def test_unknown_exchange_type_py_amqp(amqp_conn, uniq):
    ch = amqp_conn.channel()
    with pytest.raises(amqp.exceptions.InvalidCommand) as info:
        ch.exchange_declare(uniq("x"), "foo")
    assert info.value.reply_code == 503


def test_default_exchange_cannot_be_declared_or_deleted(conn):
    for action in (lambda c: c.exchange_declare("", "direct"),
                   lambda c: c.exchange_delete("")):
        ch = conn.channel()
        code, text = pika_channel_error(lambda: action(ch))
        assert (code, text) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_exchange_delete_missing_is_ok(ch, uniq):
    ch.exchange_delete(uniq("never"))


def test_exchange_delete_if_unused_refused_when_bound(ch, conn, uniq):
    exchange, queue = uniq("x"), uniq()
    ch.exchange_declare(exchange, "direct")
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, exchange, "k")
    try:
        code, text = pika_channel_error(lambda: ch.exchange_delete(exchange, if_unused=True))
        assert code == 406
        assert text == f"PRECONDITION_FAILED - exchange '{exchange}' in vhost '/' in use"
    finally:
        conn.channel().exchange_delete(exchange)


def test_exchange_delete_if_unused_succeeds_when_unbound(ch, conn, uniq):
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct")
    ch.exchange_delete(exchange, if_unused=True)
    assert not still_exists_exchange(conn, exchange)


def test_exchange_delete_removes_its_bindings(ch, uniq):
    exchange, queue = uniq("x"), uniq()
    ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, exchange)
    ch.exchange_delete(exchange)
    ch.exchange_declare(exchange, "fanout")
    ch.basic_publish(exchange, "", b"after re-create")
    assert ch.basic_get(queue)[0] is None   # the old binding did not come back
    ch.exchange_delete(exchange)


def test_auto_delete_exchange_deleted_when_last_binding_goes(ch, conn, uniq):
    exchange, q1, q2 = uniq("x"), uniq(), uniq()
    ch.exchange_declare(exchange, "direct", auto_delete=True)
    ch.queue_declare(q1, exclusive=True)
    ch.queue_declare(q2, exclusive=True)
    ch.queue_bind(q1, exchange, "a")
    ch.queue_bind(q2, exchange, "b")
    ch.queue_unbind(q1, exchange, "a")
    assert still_exists_exchange(conn, exchange)
    ch.queue_delete(q2)   # deleting the queue removes the last binding
    assert wait_gone(lambda: still_exists_exchange(conn, exchange))


def test_auto_delete_exchange_without_bindings_stays(ch, conn, uniq):
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct", auto_delete=True)
    time.sleep(0.2)
    assert still_exists_exchange(conn, exchange)
    ch.exchange_delete(exchange)


# ---------------------------------------------------------------------------
# Bindings
# ---------------------------------------------------------------------------

def test_default_exchange_cannot_be_bound(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    code, text = pika_channel_error(lambda: ch.queue_bind(queue, "", "k"))
    assert (code, text) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_default_exchange_cannot_be_unbound(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    code, text = pika_channel_error(lambda: ch.queue_unbind(queue, "", queue))
    assert (code, text) == (403, "ACCESS_REFUSED - operation not permitted on the default exchange")


def test_bind_missing_queue_is_404(ch, uniq):
    queue = uniq("never")
    code, text = pika_channel_error(lambda: ch.queue_bind(queue, "amq.direct", "k"))
    assert (code, text) == (404, f"NOT_FOUND - no queue '{queue}' in vhost '/'")


def test_bind_missing_exchange_is_404(ch, uniq):
    queue, exchange = uniq(), uniq("never")
    ch.queue_declare(queue, exclusive=True)
    code, text = pika_channel_error(lambda: ch.queue_bind(queue, exchange, "k"))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'")


def test_unbind_stops_routing(ch, uniq):
    exchange, queue = uniq("x"), uniq()
    ch.exchange_declare(exchange, "direct")
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, exchange, "k")
    ch.basic_publish(exchange, "k", b"bound")
    ch.queue_unbind(queue, exchange, "k")
    ch.basic_publish(exchange, "k", b"unbound")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"bound"]
    ch.exchange_delete(exchange)


def test_unbind_nonexistent_binding_is_ok(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    ch.queue_unbind(queue, "amq.direct", "never-bound")


def test_duplicate_bindings_deliver_once(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, "amq.direct", queue)
    ch.queue_bind(queue, "amq.direct", queue)
    ch.queue_bind(queue, "amq.topic", "#")
    ch.basic_publish("amq.direct", queue, b"once")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"once"]


def test_exchange_to_exchange_binding_routes(ch, uniq):
    source, dest, queue = uniq("src"), uniq("dst"), uniq()
    ch.exchange_declare(source, "topic")
    ch.exchange_declare(dest, "direct")
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, dest, "orders.new")
    ch.exchange_bind(dest, source, "orders.*")
    ch.basic_publish(source, "orders.new", b"routed via two exchanges")
    ch.basic_publish(source, "orders.old", b"matches e2e binding but not queue binding")
    ch.basic_publish(source, "users.new", b"no match")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"routed via two exchanges"]
    ch.exchange_unbind(dest, source, "orders.*")
    ch.basic_publish(source, "orders.new", b"after unbind")
    assert pika_get_all(ch, queue) == []
    ch.exchange_delete(source)
    ch.exchange_delete(dest)


def test_exchange_to_exchange_cycle_delivers_once(ch, uniq):
    a, b, queue = uniq("a"), uniq("b"), uniq()
    ch.exchange_declare(a, "fanout")
    ch.exchange_declare(b, "fanout")
    ch.exchange_bind(b, a)
    ch.exchange_bind(a, b)
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, b)
    ch.basic_publish(a, "", b"no loops")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"no loops"]
    ch.exchange_delete(a)
    ch.exchange_delete(b)


def test_exchange_bind_missing_source_is_404(ch, uniq):
    source = uniq("never")
    code, text = pika_channel_error(lambda: ch.exchange_bind("amq.fanout", source, "k"))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{source}' in vhost '/'")


def test_auto_delete_exchange_deleted_when_e2e_binding_removed(ch, conn, uniq):
    source, dest = uniq("src"), uniq("dst")
    ch.exchange_declare(source, "fanout", auto_delete=True)
    ch.exchange_declare(dest, "fanout")
    ch.exchange_bind(dest, source)
    ch.exchange_unbind(dest, source)
    assert wait_gone(lambda: still_exists_exchange(conn, source))
    ch.exchange_delete(dest)


# ---------------------------------------------------------------------------
# Publishing to exchanges
# ---------------------------------------------------------------------------

def test_publish_to_missing_exchange_is_404(ch, uniq):
    exchange = uniq("never")
    ch.basic_publish(exchange, "k", b"x")
    # The error is asynchronous: the next synchronous call reports it.
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (404, f"NOT_FOUND - no exchange '{exchange}' in vhost '/'")


def test_internal_exchange_cannot_be_published_to(ch, uniq):
    exchange = uniq("int")
    ch.exchange_declare(exchange, "direct", internal=True)
    ch.basic_publish(exchange, "k", b"x")
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert code == 403
    assert text == f"ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '/'"


def test_internal_exchange_receives_via_exchange_binding(conn, uniq):
    ch = conn.channel()
    public, internal, queue = uniq("pub"), uniq("int"), uniq()
    ch.exchange_declare(public, "fanout")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(internal, public)
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, internal)
    ch.basic_publish(public, "", b"through internal")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"through internal"]
    ch.exchange_delete(public)
    ch.exchange_delete(internal)


# ---------------------------------------------------------------------------
# Routing semantics of the exchange types
# ---------------------------------------------------------------------------

def test_default_exchange_routes_by_queue_name(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, exclusive=True)
    ch.basic_publish("", queue, b"direct to queue")
    ch.basic_publish("", queue + "-nope", b"nowhere")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"direct to queue"]


def test_fanout_ignores_routing_key(ch, uniq):
    exchange, q1, q2 = uniq("fan"), uniq(), uniq()
    ch.exchange_declare(exchange, "fanout")
    for q in (q1, q2):
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, exchange, "ignored-" + q)
    ch.basic_publish(exchange, "anything", b"all")
    assert pika_bodies(pika_get_all(ch, q1)) == [b"all"]
    assert pika_bodies(pika_get_all(ch, q2)) == [b"all"]
    ch.exchange_delete(exchange)


@pytest.mark.parametrize("pattern,key,matches", [
    ("a.b.c", "a.b.c", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.*", "a", False),
    ("a.#", "a", True),
    ("a.#", "a.b.c.d", True),
    ("#", "", True),
    ("#", "x.y", True),
    ("*", "", False),
    ("*", "a.b", False),
    ("#.c", "c", True),
    ("#.c", "a.b.c", True),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.x.c", True),
    ("a.#.c", "a.b.x.d", False),
    ("*.b.#", "a.b", True),
    ("a.b", "a.b.c", False),
    ("a..b", "a..b", True),
    ("a.*.b", "a..b", True),
])
def test_topic_matching(ch, uniq, pattern, key, matches):
    exchange, queue = uniq("topic"), uniq()
    ch.exchange_declare(exchange, "topic")
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, exchange, pattern)
    ch.basic_publish(exchange, key, b"m")
    got = pika_get_all(ch, queue)
    ch.exchange_delete(exchange)
    assert (len(got) == 1) == matches


def test_headers_exchange_all_and_any(ch, uniq):
    exchange, q_all, q_any = uniq("hdr"), uniq(), uniq()
    ch.exchange_declare(exchange, "headers")
    ch.queue_declare(q_all, exclusive=True)
    ch.queue_declare(q_any, exclusive=True)
    ch.queue_bind(q_all, exchange, "", arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, exchange, "", arguments={"x-match": "any", "format": "pdf", "type": "report"})

    def publish(body, headers):
        ch.basic_publish(exchange, "", body, pika.BasicProperties(headers=headers))

    publish(b"both", {"format": "pdf", "type": "report", "extra": 1})
    publish(b"one", {"format": "pdf", "type": "log"})
    publish(b"none", {"format": "zip"})
    publish(b"no headers", None)
    assert pika_bodies(pika_get_all(ch, q_all)) == [b"both"]
    assert pika_bodies(pika_get_all(ch, q_any)) == [b"both", b"one"]
    ch.exchange_delete(exchange)


def test_headers_exchange_default_is_all(ch, uniq):
    exchange, queue = uniq("hdr"), uniq()
    ch.exchange_declare(exchange, "headers")
    ch.queue_declare(queue, exclusive=True)
    ch.queue_bind(queue, exchange, "", arguments={"a": 1, "b": 2})
    ch.basic_publish(exchange, "", b"a only", pika.BasicProperties(headers={"a": 1}))
    ch.basic_publish(exchange, "", b"a and b", pika.BasicProperties(headers={"a": 1, "b": 2}))
    assert pika_bodies(pika_get_all(ch, queue)) == [b"a and b"]
    ch.exchange_delete(exchange)
