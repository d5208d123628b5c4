"""consumer_timeout: a channel holding an unacknowledged delivery longer than the configured
time is closed with 406 PRECONDITION_FAILED and its messages go back to the queue, as in
RabbitMQ (the default is 30 minutes; the tests configure half a second). RabbitMQ 3.10 only
checks on its channel tick (about once a minute), so against it the first test needs longer
than its deadline; Warren checks ten times per timeout period, at most once a second."""
import time

import pika
import pika.exceptions
import pytest

from helpers.clients import pika_connect

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def quick_timeout_broker(fresh_broker):
    return fresh_broker(config={"consumer_timeout": 500})


def test_unacked_delivery_times_out_channel(quick_timeout_broker):
    c = pika_connect(quick_timeout_broker)
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"slow")
    ch.basic_consume(q, lambda *a: None)  # never acks
    deadline = time.monotonic() + 10
    while ch.is_open and time.monotonic() < deadline:
        c.process_data_events(0.1)
    assert ch.is_closed, "channel was not closed by the broker"
    reason = ch._closing_reason
    assert isinstance(reason, pika.exceptions.ChannelClosedByBroker)
    assert reason.reply_code == 406
    assert reason.reply_text.startswith(
        "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 500 ms")
    # The message is back in the queue, marked redelivered.
    ch2 = c.channel()
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"slow" and method.redelivered
    c.close()


def test_acked_in_time_keeps_channel_open(quick_timeout_broker):
    c = pika_connect(quick_timeout_broker)
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    for _ in range(3):
        ch.basic_publish("", q, b"x")
        method, _, _ = ch.basic_get(q)
        time.sleep(0.2)
        ch.basic_ack(method.delivery_tag)
    c.process_data_events(1.0)
    assert ch.is_open
    c.close()


def test_no_ack_consumers_never_time_out(quick_timeout_broker):
    c = pika_connect(quick_timeout_broker)
    ch = c.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"x")
    ch.basic_consume(q, lambda *a: None, auto_ack=True)
    c.process_data_events(1.5)
    assert ch.is_open
    c.close()


def test_queue_consumer_timeout_cancels_consumer_and_returns_messages(broker, uniq):
    """x-consumer-timeout (our per-queue extension, as RabbitMQ 4.3's): the stuck consumer is
    cancelled with basic.cancel and its messages go back; the channel stays open."""
    c = pika_connect(broker)
    ch = c.channel()
    q = uniq("ct")
    ch.queue_declare(q, arguments={"x-consumer-timeout": 400})
    ch.basic_publish("", q, b"stuck")
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    deadline = time.monotonic() + 10
    while not cancelled and time.monotonic() < deadline:
        c.process_data_events(0.1)
    assert cancelled == [tag]
    assert ch.is_open
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"stuck" and method.redelivered
    ch.queue_delete(q)
    c.close()


def test_invalid_queue_consumer_timeout_is_rejected(ch, uniq):
    from helpers.clients import pika_channel_error
    q = uniq("ct")
    code, text = pika_channel_error(lambda: ch.queue_declare(q, arguments={"x-consumer-timeout": 0}))
    assert code == 406
    assert text == f"PRECONDITION_FAILED - invalid arg 'x-consumer-timeout' for queue '{q}' in vhost '/': {{value_zero,0}}"
