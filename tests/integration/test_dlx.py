"""Dead-letter exchanges: x-dead-letter-exchange, x-dead-letter-routing-key, x-death.

What RabbitMQ 3.10 does, and these tests pin down:
  - A message is dead-lettered when it is rejected (basic.reject / basic.nack with
    requeue=false), expires (queue or message TTL), or is dropped by a length limit
    (drop-head, or refused by reject-publish-dlx): reasons "rejected", "expired",
    "maxlen". Requeues, channel closes, queue.delete/purge and x-expires never
    dead-letter.
  - It is republished to the DLX with x-dead-letter-routing-key if set, else with its
    original routing keys - including the CC and BCC keys it was published with. When
    x-dead-letter-routing-key is set the CC header is removed (BCC never reaches a
    queue at all). The delivered message's exchange is the DLX.
  - The properties are kept except expiration, which is removed and recorded in the
    x-death entry as original-expiration.
  - headers.x-death is an array of tables, most recent death first. A new entry is
      count (long, 1), reason (longstr), queue (longstr), time (timestamp, seconds),
      exchange (longstr: the exchange the message was published to), routing-keys
      (array of longstr: routing key + CC keys, no BCC), original-expiration (longstr,
      only if the message had an expiration)
    in that order. A death in a queue for a reason already in the array increments
    that entry's count and moves it to the front; its other fields (time included)
    stay those of the first such death (RabbitMQ rewrites the table with its fields
    sorted by name then, which no client should care about).
  - x-first-death-reason / -queue / -exchange (longstr) are set on the first death
    and never changed.
  - x-death headers that came with the published message count as earlier deaths
    (3.10: a republished dead letter keeps counting; 3.13/4.x changed this).
  - Cycles: a message is not dead-lettered into a queue already in its x-death when no
    death on the way was a rejection, so a queue dead-lettering to itself via TTL drops
    the message at its first expiry (the new x-death entry already names the queue).
    Cycles involving a rejection are allowed and loop with increasing counts.
  - A DLX that does not exist drops the message silently.
"""
import datetime
import os
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pika  # noqa: E402

from helpers import amqp_raw as raw  # noqa: E402
from helpers.clients import (pika_bodies, pika_channel_error, pika_drain,  # noqa: E402
                             pika_get_all, queue_counts, wait_queue_counts)

X_DEATH_KEYS = ["count", "reason", "queue", "time", "exchange", "routing-keys"]


def confirmed_channel(conn):
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, routing_key, body, exchange="", **props):
    channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(**props))


def dead_letter_setup(ch, uniq, **source_args):
    """A source queue dead-lettering through a fanout DLX into a queue; returns names."""
    source, dlx, dlq = uniq("src"), uniq("dlx"), uniq("dlq")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx, **source_args})
    return source, dlx, dlq


def get_dead_letter(ch, dlq, timeout=5.0):
    assert wait_queue_counts(ch, dlq, (1, 0), timeout=timeout) == (1, 0)
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert method is not None
    return method, props, body


def reject_from(ch, queue, requeue=False):
    method, props, body = ch.basic_get(queue, auto_ack=False)
    assert method is not None, f"no message in {queue}"
    ch.basic_reject(method.delivery_tag, requeue=requeue)
    return body


def assert_recent(timestamp):
    assert isinstance(timestamp, datetime.datetime)
    assert abs(timestamp.timestamp() - time.time()) < 10


# ---------------------------------------------------------------------------
# Reasons and the x-death entry
# ---------------------------------------------------------------------------

def test_rejected_message_is_dead_lettered_with_x_death(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"payload")
    reject_from(ch, source)
    method, props, body = get_dead_letter(ch, dlq)
    assert body == b"payload"
    assert method.exchange == dlx
    assert method.routing_key == source
    assert method.redelivered is False
    headers = props.headers
    assert set(headers) == {"x-death", "x-first-death-reason", "x-first-death-queue",
                            "x-first-death-exchange"}
    [death] = headers["x-death"]
    assert list(death) == X_DEATH_KEYS
    assert death["count"] == 1
    assert death["reason"] == "rejected"
    assert death["queue"] == source
    assert death["exchange"] == ""
    assert death["routing-keys"] == [source]
    assert_recent(death["time"])
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-queue"] == source
    assert headers["x-first-death-exchange"] == ""
    assert queue_counts(ch, source) == (0, 0)


def test_nack_without_requeue_dead_letters(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x")
    method, _, _ = ch.basic_get(source, auto_ack=False)
    ch.basic_nack(method.delivery_tag, multiple=False, requeue=False)
    _, props, body = get_dead_letter(ch, dlq)
    assert body == b"x"
    assert props.headers["x-death"][0]["reason"] == "rejected"


def test_nack_multiple_dead_letters_all_in_order(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    for i in range(5):
        publish(ch, source, f"m{i}".encode())
    last = None
    for _ in range(5):
        last, _, _ = ch.basic_get(source, auto_ack=False)
    ch.basic_nack(last.delivery_tag, multiple=True, requeue=False)
    assert wait_queue_counts(ch, dlq, (5, 0)) == (5, 0)
    assert pika_bodies(pika_get_all(ch, dlq)) == [f"m{i}".encode() for i in range(5)]


def test_consumer_reject_dead_letters(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x")
    [(method, _, _)] = pika_drain(ch, source, 1, timeout=2, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, body = get_dead_letter(ch, dlq)
    assert props.headers["x-death"][0]["reason"] == "rejected"


def test_requeue_does_not_dead_letter(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x")
    reject_from(ch, source, requeue=True)
    method, _, _ = ch.basic_get(source, auto_ack=False)
    ch.basic_nack(method.delivery_tag, requeue=True)
    time.sleep(0.2)
    assert queue_counts(ch, dlq) == (0, 0)
    assert queue_counts(ch, source) == (1, 0)


def test_unacked_messages_of_a_closed_channel_are_requeued_not_dead_lettered(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x")
    other = conn.channel()
    assert other.basic_get(source, auto_ack=False)[0] is not None
    other.close()
    assert wait_queue_counts(ch, source, (1, 0)) == (1, 0)
    assert queue_counts(ch, dlq) == (0, 0)


def test_queue_ttl_expiry_dead_letters_without_original_expiration(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq, **{"x-message-ttl": 100})
    publish(ch, source, b"x")
    # Nobody touches the source queue: expiry is proactive.
    _, props, body = get_dead_letter(ch, dlq)
    [death] = props.headers["x-death"]
    assert list(death) == X_DEATH_KEYS
    assert death["reason"] == "expired"
    assert death["queue"] == source
    assert props.headers["x-first-death-reason"] == "expired"
    assert props.expiration is None


def test_ttl_zero_without_consumer_dead_letters_at_once(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq, **{"x-message-ttl": 0})
    publish(ch, source, b"now-or-never")
    _, props, body = get_dead_letter(ch, dlq)
    assert body == b"now-or-never"
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert queue_counts(ch, source) == (0, 0)


def test_message_ttl_expiry_records_original_expiration(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x", expiration="100", content_type="text/plain")
    _, props, body = get_dead_letter(ch, dlq)
    [death] = props.headers["x-death"]
    assert list(death) == X_DEATH_KEYS + ["original-expiration"]
    assert death["reason"] == "expired"
    assert death["original-expiration"] == "100"
    # The expiration property itself is removed, so the message does not expire again.
    assert props.expiration is None
    assert props.content_type == "text/plain"


def test_rejected_message_with_expiration_also_records_original_expiration(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x", expiration="60000")
    reject_from(ch, source)
    _, props, _ = get_dead_letter(ch, dlq)
    death = props.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["original-expiration"] == "60000"
    assert props.expiration is None


def test_max_length_drop_head_dead_letters_oldest(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq, **{"x-max-length": 1})
    publish(ch, source, b"old")
    publish(ch, source, b"new")
    _, props, body = get_dead_letter(ch, dlq)
    assert body == b"old"
    [death] = props.headers["x-death"]
    assert list(death) == X_DEATH_KEYS
    assert death["reason"] == "maxlen"
    assert props.headers["x-first-death-reason"] == "maxlen"
    assert pika_bodies(pika_get_all(ch, source)) == [b"new"]


def test_x_death_wire_types(broker, conn, uniq):
    """Field types as RabbitMQ writes them: clients cast e.g. count to a 64-bit long."""
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x", expiration="100")
    assert wait_queue_counts(ch, dlq, (1, 0)) == (1, 0)
    headers = raw_get_typed_headers(broker, dlq)
    kind, deaths = headers["x-death"]
    assert kind == "A"
    [(entry_kind, entry)] = deaths
    assert entry_kind == "F"
    assert {key: value[0] for key, value in entry.items()} == {
        "count": "l", "reason": "S", "queue": "S", "time": "T", "exchange": "S",
        "routing-keys": "A", "original-expiration": "S"}
    assert entry["routing-keys"][1] == [("S", source)]
    assert entry["count"][1] == 1
    assert abs(entry["time"][1] - time.time()) < 10
    for key in ("x-first-death-reason", "x-first-death-queue", "x-first-death-exchange"):
        assert headers[key][0] == "S"


def raw_get_typed_headers(broker, queue):
    """basic.get over a raw connection; returns headers as {name: (type-char, value)}."""
    with raw.connect(broker) as client:
        client.handshake()
        client.open_channel()
        client.send_method(1, raw.BASIC_GET, raw.basic_get_args(queue))
        client.expect(raw.BASIC_GET_OK)
        frame_type, _, payload = client.recv_frame()
        assert frame_type == raw.FRAME_HEADER
        reader = raw.Reader(payload)
        _, _, _, flags = struct.unpack(">HHQH", reader.take(14))
        if flags & 0x8000:
            reader.shortstr()          # content-type
        if flags & 0x4000:
            reader.shortstr()          # content-encoding
        assert flags & 0x2000, "no headers"
        return typed_table(raw.Reader(reader.longstr()))


def typed_table(reader):
    result = {}
    while reader.pos < len(reader.data):
        key = reader.shortstr()
        result[key] = typed_value(reader)
    return result


def typed_value(reader):
    kind = reader.take(1)
    if kind == b"F":
        return ("F", typed_table(raw.Reader(reader.longstr())))
    if kind == b"A":
        inner = raw.Reader(reader.longstr())
        items = []
        while inner.pos < len(inner.data):
            items.append(typed_value(inner))
        return ("A", items)
    reader.pos -= 1
    return (kind.decode(), reader.field_value())


# ---------------------------------------------------------------------------
# Routing of dead letters
# ---------------------------------------------------------------------------

def test_original_routing_key_and_exchange_are_kept(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, dlx, source, dlq = uniq("x"), uniq("dlx"), uniq("src"), uniq("dlq")
    ch.exchange_declare(exchange, "direct")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(source, exchange, "orders.new")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "orders.new")
    publish(ch, "orders.new", b"x", exchange=exchange)
    reject_from(ch, source)
    method, props, _ = get_dead_letter(ch, dlq)
    assert method.exchange == dlx
    assert method.routing_key == "orders.new"
    death = props.headers["x-death"][0]
    assert death["exchange"] == exchange
    assert death["routing-keys"] == ["orders.new"]
    assert props.headers["x-first-death-exchange"] == exchange


def test_dead_letter_routing_key_replaces_routing_key(conn, uniq):
    ch = confirmed_channel(conn)
    dlx, source, dlq, decoy = uniq("dlx"), uniq("src"), uniq("dlq"), uniq("decoy")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx,
                                        "x-dead-letter-routing-key": "dead"})
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "dead")
    ch.queue_declare(decoy)
    ch.queue_bind(decoy, dlx, source)
    publish(ch, source, b"x")
    reject_from(ch, source)
    method, props, _ = get_dead_letter(ch, dlq)
    assert method.routing_key == "dead"
    # x-death records the keys the message was published with.
    assert props.headers["x-death"][0]["routing-keys"] == [source]
    assert queue_counts(ch, decoy) == (0, 0)


def test_default_exchange_as_dlx(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlq = uniq("src"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    publish(ch, source, b"x")
    reject_from(ch, source)
    method, props, body = get_dead_letter(ch, dlq)
    assert method.exchange == ""
    assert method.routing_key == dlq
    assert body == b"x"


def test_missing_dlx_drops_message_silently(conn, uniq):
    ch = confirmed_channel(conn)
    source = uniq("src")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": uniq("nonexistent")})
    publish(ch, source, b"x")
    reject_from(ch, source)
    time.sleep(0.2)
    assert ch.is_open and conn.is_open
    assert queue_counts(ch, source) == (0, 0)


def test_dead_letter_to_unbound_dlx_is_dropped(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx = uniq("src"), uniq("dlx")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    publish(ch, source, b"x")
    reject_from(ch, source)
    time.sleep(0.2)
    assert queue_counts(ch, source) == (0, 0)


def test_properties_are_preserved(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    props_in = dict(content_type="application/json", content_encoding="utf-8",
                    headers={"app": "warren", "n": 7}, delivery_mode=2, priority=3,
                    correlation_id="corr", reply_to="replies", message_id="id-1",
                    timestamp=1700000000, type="kind", user_id="guest", app_id="tests")
    publish(ch, source, b'{"a":1}', **props_in)
    reject_from(ch, source)
    _, props, body = get_dead_letter(ch, dlq)
    assert body == b'{"a":1}'
    for name, value in props_in.items():
        if name == "headers":
            continue
        assert getattr(props, name) == value, name
    assert props.headers["app"] == "warren"
    assert props.headers["n"] == 7


def test_cc_header_is_kept_and_cc_keys_are_routed(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, dlx = uniq("x"), uniq("dlx")
    source, main_dlq, cc_dlq = uniq("src"), uniq("main"), uniq("cc")
    ch.exchange_declare(exchange, "direct")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(source, exchange, "k")
    ch.queue_declare(main_dlq)
    ch.queue_bind(main_dlq, dlx, "k")
    ch.queue_declare(cc_dlq)
    ch.queue_bind(cc_dlq, dlx, "cc-key")
    publish(ch, "k", b"x", exchange=exchange, headers={"CC": ["cc-key"]})
    reject_from(ch, source)
    _, props, _ = get_dead_letter(ch, main_dlq)
    assert props.headers["CC"] == ["cc-key"]
    assert props.headers["x-death"][0]["routing-keys"] == ["k", "cc-key"]
    method, props, _ = get_dead_letter(ch, cc_dlq)
    assert method.routing_key == "k"


def test_bcc_keys_are_routed_but_not_recorded(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, dlx = uniq("x"), uniq("dlx")
    source, main_dlq, bcc_dlq = uniq("src"), uniq("main"), uniq("bcc")
    ch.exchange_declare(exchange, "direct")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx,
                                        "x-message-ttl": 100})
    ch.queue_bind(source, exchange, "k")
    ch.queue_declare(main_dlq)
    ch.queue_bind(main_dlq, dlx, "k")
    ch.queue_declare(bcc_dlq)
    ch.queue_bind(bcc_dlq, dlx, "bcc-key")
    publish(ch, "k", b"x", exchange=exchange, headers={"BCC": ["bcc-key"]})
    _, props, _ = get_dead_letter(ch, main_dlq)
    assert "BCC" not in props.headers
    assert props.headers["x-death"][0]["routing-keys"] == ["k"]
    _, props, _ = get_dead_letter(ch, bcc_dlq)
    assert "BCC" not in props.headers


def test_dead_letter_routing_key_removes_cc(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, dlx = uniq("x"), uniq("dlx")
    source, dlq, cc_dlq = uniq("src"), uniq("dlq"), uniq("cc")
    ch.exchange_declare(exchange, "direct")
    ch.exchange_declare(dlx, "direct")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx,
                                        "x-dead-letter-routing-key": "dead"})
    ch.queue_bind(source, exchange, "k")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx, "dead")
    ch.queue_declare(cc_dlq)
    ch.queue_bind(cc_dlq, dlx, "cc-key")
    publish(ch, "k", b"x", exchange=exchange, headers={"CC": ["cc-key"], "keep": "me"})
    reject_from(ch, source)
    method, props, _ = get_dead_letter(ch, dlq)
    assert method.routing_key == "dead"
    assert "CC" not in props.headers
    assert props.headers["keep"] == "me"
    assert props.headers["x-death"][0]["routing-keys"] == ["k", "cc-key"]
    time.sleep(0.1)
    assert queue_counts(ch, cc_dlq) == (0, 0)


def test_dead_letter_reaching_several_queues(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    second = uniq("dlq2")
    ch.queue_declare(second)
    ch.queue_bind(second, dlx)
    publish(ch, source, b"x")
    reject_from(ch, source)
    for queue in (dlq, second):
        _, props, body = get_dead_letter(ch, queue)
        assert body == b"x"
        assert props.headers["x-death"][0]["queue"] == source


# ---------------------------------------------------------------------------
# Repeated deaths and cycles
# ---------------------------------------------------------------------------

def test_count_increments_when_queue_and_reason_repeat(conn, uniq):
    """A queue dead-lettering to itself on rejection: one entry, count 1, 2, 3."""
    ch = confirmed_channel(conn)
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-dead-letter-exchange": "",
                                       "x-dead-letter-routing-key": queue})
    publish(ch, queue, b"x")
    first_time = None
    for expected_count in (1, 2, 3):
        reject_from(ch, queue)
        assert wait_queue_counts(ch, queue, (1, 0)) == (1, 0)
        method, props, _ = ch.basic_get(queue, auto_ack=False)
        [death] = props.headers["x-death"]
        assert death["count"] == expected_count
        assert death["reason"] == "rejected"
        assert death["queue"] == queue
        assert set(death) == set(X_DEATH_KEYS)
        assert method.redelivered is False
        if first_time is None:
            first_time = death["time"]
        ch.basic_reject(method.delivery_tag, requeue=True)
        if expected_count == 1:
            time.sleep(1.1)   # so a rewritten time would show (second resolution)
    # The entry keeps the time of the first death.
    assert death["time"] == first_time
    assert props.headers["x-first-death-reason"] == "rejected"


def test_x_death_entries_most_recent_first(conn, uniq):
    """q1 (TTL) -> q2, rejected there -> q1, expires again -> q2: a cycle with a
    rejection in it, so it is allowed; the entries are reordered and counted."""
    ch = confirmed_channel(conn)
    q1, q2 = uniq("q1"), uniq("q2")
    ch.queue_declare(q1, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": q2})
    ch.queue_declare(q2, arguments={"x-dead-letter-exchange": "",
                                    "x-dead-letter-routing-key": q1})
    publish(ch, q1, b"x", expiration="60000")

    _, props, _ = get_dead_letter_keep(ch, q2)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [(q1, "expired", 1)]
    assert deaths[0]["original-expiration"] == "60000"

    reject_from(ch, q2)
    _, props, _ = get_dead_letter_keep(ch, q2)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (q1, "expired", 2), (q2, "rejected", 1)]
    # Still the first death's original-expiration (the message has none any more).
    assert deaths[0]["original-expiration"] == "60000"
    assert "original-expiration" not in deaths[1]

    reject_from(ch, q2)
    _, props, _ = get_dead_letter_keep(ch, q2)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (q1, "expired", 3), (q2, "rejected", 2)]
    assert props.headers["x-first-death-queue"] == q1
    assert props.headers["x-first-death-reason"] == "expired"
    assert props.headers["x-first-death-exchange"] == ""


def test_republished_dead_letter_keeps_counting(conn, uniq):
    """The retry-counter pattern: a consumer republishes a dead letter with its headers;
    on its next death RabbitMQ 3.10 increments the count of the matching entry.
    (RabbitMQ 3.13/4.x changed how publisher-supplied x-death headers are treated; this
    is 3.10's behaviour.)"""
    ch = confirmed_channel(conn)
    source, dlq = uniq("src"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    publish(ch, source, b"x")
    reject_from(ch, source)
    _, props, _ = get_dead_letter(ch, dlq)
    publish(ch, source, b"x", headers=props.headers)
    reject_from(ch, source)
    _, props, _ = get_dead_letter(ch, dlq)
    [death] = props.headers["x-death"]
    assert (death["queue"], death["reason"], death["count"]) == (source, "rejected", 2)


def test_publisher_supplied_x_death_entries_are_kept(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlq = uniq("src"), uniq("dlq")
    ch.queue_declare(dlq)
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": "",
                                        "x-dead-letter-routing-key": dlq})
    earlier = {"count": 7, "reason": "expired", "queue": "elsewhere", "exchange": "",
               "routing-keys": ["elsewhere"]}
    publish(ch, source, b"x", headers={"x-death": [earlier],
                                       "x-first-death-reason": "expired",
                                       "x-first-death-queue": "elsewhere",
                                       "x-first-death-exchange": ""})
    reject_from(ch, source)
    _, props, _ = get_dead_letter(ch, dlq)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"], d["count"]) for d in deaths] == [
        (source, "rejected", 1), ("elsewhere", "expired", 7)]
    assert deaths[1] == earlier
    # The first death is the one the publisher said it was.
    assert props.headers["x-first-death-queue"] == "elsewhere"
    assert props.headers["x-first-death-reason"] == "expired"


def get_dead_letter_keep(ch, queue):
    """Peek at the single message of queue: get it and requeue it."""
    assert wait_queue_counts(ch, queue, (1, 0)) == (1, 0)
    method, props, body = ch.basic_get(queue, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=True)
    return method, props, body


def test_queue_dead_lettering_to_itself_via_ttl_drops_message(conn, uniq):
    """RabbitMQ 3.10: the x-death entry for this death already names the queue, no
    rejection is involved, so it is a cycle and the message is dropped at once."""
    ch = confirmed_channel(conn)
    queue, observer = uniq("q"), uniq("observer")
    dlx = uniq("dlx")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(queue, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    ch.queue_bind(queue, dlx)
    ch.queue_declare(observer)
    ch.queue_bind(observer, dlx)
    publish(ch, queue, b"x")
    # The observer (not in the cycle) gets the dead letter; the queue does not.
    _, props, _ = get_dead_letter(ch, observer)
    assert props.headers["x-death"][0]["queue"] == queue
    time.sleep(0.3)
    assert queue_counts(ch, queue) == (0, 0)
    assert queue_counts(ch, observer) == (0, 0)


def test_ttl_cycle_through_two_queues_stops_at_the_first_repeat(conn, uniq):
    ch = confirmed_channel(conn)
    q1, q2, obs1, obs2 = uniq("q1"), uniq("q2"), uniq("obs1"), uniq("obs2")
    x1, x2 = uniq("x1"), uniq("x2")
    for exchange in (x1, x2):
        ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(q1, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": x1})
    ch.queue_declare(q2, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": x2})
    ch.queue_declare(obs1)
    ch.queue_declare(obs2)
    ch.queue_bind(q2, x1)
    ch.queue_bind(obs1, x1)
    ch.queue_bind(q1, x2)
    ch.queue_bind(obs2, x2)
    publish(ch, q1, b"x")
    _, props, _ = get_dead_letter(ch, obs2)
    assert [(d["queue"], d["reason"]) for d in props.headers["x-death"]] == [
        (q2, "expired"), (q1, "expired")]
    time.sleep(0.4)
    # It went q1 -> q2 (seen by obs1) -> not back into q1 (seen by obs2).
    assert queue_counts(ch, obs1) == (1, 0)
    assert queue_counts(ch, q1) == (0, 0)
    assert queue_counts(ch, q2) == (0, 0)


# ---------------------------------------------------------------------------
# What does not dead-letter
# ---------------------------------------------------------------------------

def test_queue_delete_and_purge_do_not_dead_letter(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"1")
    ch.queue_purge(source)
    publish(ch, source, b"2")
    ch.queue_delete(source)
    time.sleep(0.2)
    assert queue_counts(ch, dlq) == (0, 0)


def test_auto_ack_deliveries_are_not_dead_lettered(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = dead_letter_setup(ch, uniq)
    publish(ch, source, b"x")
    assert ch.basic_get(source, auto_ack=True)[2] == b"x"
    time.sleep(0.1)
    assert queue_counts(ch, dlq) == (0, 0)


# ---------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------

def test_dead_letter_routing_key_without_dlx_is_rejected(ch, uniq):
    queue = uniq()
    code, text = pika_channel_error(
        lambda: ch.queue_declare(queue, arguments={"x-dead-letter-routing-key": "k"}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
                    f"'{queue}' in vhost '/': routing_key_but_no_dlx_defined")


def test_non_string_dead_letter_exchange_is_rejected(ch, uniq):
    queue = uniq()
    code, text = pika_channel_error(
        lambda: ch.queue_declare(queue, arguments={"x-dead-letter-exchange": 1}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid type 'signedint' for arg "
                    f"'x-dead-letter-exchange' in queue '{queue}' in vhost '/'")


def test_non_string_dead_letter_routing_key_is_rejected(ch, uniq):
    queue = uniq()
    code, text = pika_channel_error(lambda: ch.queue_declare(
        queue, arguments={"x-dead-letter-exchange": "x", "x-dead-letter-routing-key": 5}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid arg 'x-dead-letter-routing-key' for queue "
                    f"'{queue}' in vhost '/': {{unacceptable_type,signedint}}")


def test_dlx_need_not_exist_at_declare_time(ch, uniq):
    queue = uniq()
    ch.queue_declare(queue, arguments={"x-dead-letter-exchange": uniq("later"),
                                       "x-dead-letter-routing-key": "k"})


def test_dlx_declared_later_is_used(conn, uniq):
    ch = confirmed_channel(conn)
    source, dlx, dlq = uniq("src"), uniq("dlx"), uniq("dlq")
    ch.queue_declare(source, arguments={"x-dead-letter-exchange": dlx})
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    publish(ch, source, b"x")
    reject_from(ch, source)
    _, _, body = get_dead_letter(ch, dlq)
    assert body == b"x"
