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


def rss_of(broker):
    with open(f"/proc/{broker.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_memory_alarm_clears_and_unblocks(fresh_broker, monkeypatch):
    """Publishing 1 MiB messages pushes the node over its watermark: the publisher is blocked;
    deleting the queue frees the memory, the alarm clears and connection.unblocked follows."""
    monkeypatch.setenv("ASAN_OPTIONS", "quarantine_size_mb=0:abort_on_error=0:detect_leaks=1")
    probe = fresh_broker()
    if not hasattr(probe, "proc"):
        pytest.skip("needs a broker this suite starts")
    time.sleep(1.0)
    idle = rss_of(probe)
    probe.extra_config["vm_memory_high_watermark.absolute"] = str(idle + 48 * 1024 * 1024)
    probe._write_config()
    probe.restart()
    events = []
    c = pika_connect(probe)
    c.add_on_connection_blocked_callback(lambda conn, frame: events.append("blocked"))
    c.add_on_connection_unblocked_callback(lambda conn, frame: events.append("unblocked"))
    ch = c.channel()
    ch.queue_declare("ballast")
    body = b"m" * (1024 * 1024)
    deadline = time.monotonic() + 30
    while "blocked" not in events and time.monotonic() < deadline:
        ch.basic_publish("", "ballast", body)
        c.process_data_events(0.05)
    assert events == ["blocked"]
    other = pika_connect(probe)  # never published: not blocked
    other.channel().queue_delete("ballast")
    other.close()
    deadline = time.monotonic() + 15
    while "unblocked" not in events and time.monotonic() < deadline:
        c.process_data_events(0.1)
    assert events == ["blocked", "unblocked"]
    c.channel().queue_declare("after-unblock")  # the connection is read again
    c.close()
