"""Resource alarms, as RabbitMQ: with free disk space below disk_free_limit or memory above the
high watermark, a connection that publishes gets connection.blocked with RabbitMQ's reason text
and is not read any more (its publishes do not reach queues); consuming keeps working."""
import time

import pika
import pytest

from helpers.clients import pika_connect

pytestmark = pytest.mark.timeout(60)


def blocked_reason_after_publish(broker, queue):
    reasons = []
    c = pika_connect(broker)
    c.add_on_connection_blocked_callback(lambda conn, frame: reasons.append(frame.method.reason))
    ch = c.channel()
    ch.queue_declare(queue)
    ch.basic_publish("", queue, b"during alarm")
    deadline = time.monotonic() + 5
    while not reasons and time.monotonic() < deadline:
        c.process_data_events(0.1)
    return c, ch, reasons


def queue_count(broker, queue):
    c = pika_connect(broker)
    try:
        return c.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        c.close()


def test_disk_alarm_blocks_publishers(fresh_broker):
    b = fresh_broker(config={"disk_free_limit.absolute": str(10 ** 18)})
    c, ch, reasons = blocked_reason_after_publish(b, "alarmed")
    assert reasons == ["low on disk"]
    # The socket is no longer read (as in RabbitMQ): later publishes never reach the queue.
    for _ in range(3):
        ch.basic_publish("", "alarmed", b"blocked")
    time.sleep(0.5)
    assert queue_count(b, "alarmed") <= 1


def test_memory_alarm_blocks_publishers(fresh_broker):
    b = fresh_broker(config={"vm_memory_high_watermark.absolute": "1"})
    c, ch, reasons = blocked_reason_after_publish(b, "alarmed-mem")
    assert reasons == ["low on memory"]


def test_both_alarms_are_named_together(fresh_broker):
    b = fresh_broker(config={"vm_memory_high_watermark.absolute": "1",
                             "disk_free_limit.absolute": str(10 ** 18)})
    c, ch, reasons = blocked_reason_after_publish(b, "alarmed-both")
    assert reasons == ["low on disk & memory"]


def test_consumers_are_not_blocked(fresh_broker):
    b = fresh_broker(config={"disk_free_limit.absolute": str(10 ** 18)})
    c = pika_connect(b)
    ch = c.channel()
    ch.queue_declare("drain-me")
    method, _, _ = ch.basic_get("drain-me")
    assert method is None  # reading, declaring and getting still work without publishing
    c.close()
