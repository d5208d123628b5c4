"""Message properties and headers round-trip unchanged.

Checked three ways: through pika's and py-amqp's own encoders, and byte-for-byte with
the raw client (the content-header frame a consumer receives must carry exactly the
property bytes the publisher sent). Also the two properties RabbitMQ validates on
publish: user_id and expiration.
"""
import datetime
import decimal
import struct

import amqp
import pika
import pytest

from helpers import amqp_raw as R
from helpers.clients import amqp_drain, pika_channel_error, pika_drain, pika_process_until

ALL_PIKA_PROPERTIES = dict(
    content_type="application/json",
    content_encoding="gzip",
    headers={"h": "v"},
    delivery_mode=2,
    priority=7,
    correlation_id="corr-123",
    reply_to="reply-queue",
    expiration="600000",
    message_id="msg-456",
    timestamp=1700000000,
    type="order.created",
    user_id="guest",
    app_id="warren-tests",
    cluster_id="cluster-x",
)


def pika_round_trip(ch, properties, body=b"payload"):
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", queue, body, properties)
    method, props, got = ch.basic_get(queue, auto_ack=True)
    assert got == body
    return props


# ---------------------------------------------------------------------------
# pika
# ---------------------------------------------------------------------------

def test_all_basic_properties_round_trip_pika(ch):
    props = pika_round_trip(ch, pika.BasicProperties(**ALL_PIKA_PROPERTIES))
    for name, value in ALL_PIKA_PROPERTIES.items():
        assert getattr(props, name) == value, name


def test_properties_round_trip_through_consume_pika(conn, ch):
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", queue, b"c", pika.BasicProperties(**ALL_PIKA_PROPERTIES))
    (method, props, body), = pika_drain(ch, queue, 1)
    for name, value in ALL_PIKA_PROPERTIES.items():
        assert getattr(props, name) == value, name


@pytest.mark.parametrize("name", sorted(ALL_PIKA_PROPERTIES))
def test_each_property_alone_round_trips_pika(ch, name):
    props = pika_round_trip(ch, pika.BasicProperties(**{name: ALL_PIKA_PROPERTIES[name]}))
    assert getattr(props, name) == ALL_PIKA_PROPERTIES[name]
    for other in ALL_PIKA_PROPERTIES:
        if other != name:
            assert getattr(props, other) is None, other


def test_no_properties_round_trip_pika(ch):
    props = pika_round_trip(ch, None)
    for name in ALL_PIKA_PROPERTIES:
        assert getattr(props, name) is None, name


def test_header_value_types_round_trip_pika(ch):
    headers = {
        "str": "hello",
        "unicode": "héllo wörld ✓",
        "empty": "",
        "int_small": 7,
        "int_negative": -42,
        "int32_max": 2 ** 31 - 1,
        "int32_min": -2 ** 31,
        "int64_big": 2 ** 62,
        "int64_negative": -2 ** 62,
        "true": True,
        "false": False,
        "decimal": decimal.Decimal("123.45"),
        # pika decodes timestamps as aware UTC datetimes (and cannot encode floats).
        "datetime": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "nested": {"a": 1, "b": {"c": "deep"}, "l": [1, "two", True]},
        "list": [1, "two", False, None, {"k": "v"}, [1, [2]]],
        "empty_list": [],
        "empty_table": {},
        "void": None,
        "bytes": b"\x00\x01\xffbinary",
    }
    props = pika_round_trip(ch, pika.BasicProperties(headers=headers))
    got = props.headers
    assert set(got) == set(headers)
    for key, value in headers.items():
        assert got[key] == value, (key, got[key], value)


def test_many_headers_and_long_values_pika(ch):
    headers = {f"h{i:03d}": "v" * i for i in range(200)}
    headers["big"] = "x" * 60000
    assert pika_round_trip(ch, pika.BasicProperties(headers=headers)).headers == headers


def test_timestamp_extremes_pika(ch):
    for ts in (0, 2 ** 32 + 5, 2 ** 62):
        assert pika_round_trip(ch, pika.BasicProperties(timestamp=ts)).timestamp == ts


@pytest.mark.parametrize("mode", [1, 2])
def test_delivery_mode_round_trip(ch, mode):
    assert pika_round_trip(ch, pika.BasicProperties(delivery_mode=mode)).delivery_mode == mode


def test_properties_survive_fanout_to_two_queues(ch):
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, "amq.fanout")
    ch.queue_bind(q2, "amq.fanout")
    try:
        props = pika.BasicProperties(message_id="fan", headers={"n": 1}, priority=3)
        ch.basic_publish("amq.fanout", "", b"both", props)
        for q in (q1, q2):
            _, got, body = ch.basic_get(q, auto_ack=True)
            assert (body, got.message_id, got.headers, got.priority) == (b"both", "fan", {"n": 1}, 3)
    finally:
        ch.queue_unbind(q1, "amq.fanout")
        ch.queue_unbind(q2, "amq.fanout")


def test_properties_kept_on_redelivery(conn, ch):
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", queue, b"again", pika.BasicProperties(**ALL_PIKA_PROPERTIES))
    method, _, _ = ch.basic_get(queue)
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert method.redelivered
    for name, value in ALL_PIKA_PROPERTIES.items():
        assert getattr(props, name) == value, name


def test_returned_message_keeps_properties(conn, ch, uniq):
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append(p))
    ch.basic_publish("amq.direct", uniq("nobody"), b"r",
                     pika.BasicProperties(**ALL_PIKA_PROPERTIES), mandatory=True)
    assert pika_process_until(conn, lambda: returned)
    for name, value in ALL_PIKA_PROPERTIES.items():
        assert getattr(returned[0], name) == value, name


# ---------------------------------------------------------------------------
# Validated properties
# ---------------------------------------------------------------------------

def test_user_id_must_match_authenticated_user(ch):
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", queue, b"x", pika.BasicProperties(user_id="mallory"))
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert (code, text) == (406, "PRECONDITION_FAILED - user_id property set to 'mallory' "
                                 "but authenticated user was 'guest'")


def test_invalid_expiration_is_406(ch):
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", queue, b"x", pika.BasicProperties(expiration="soon"))
    code, text = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert code == 406
    assert text.startswith("PRECONDITION_FAILED - invalid expiration 'soon'")


# ---------------------------------------------------------------------------
# py-amqp
# ---------------------------------------------------------------------------

AMQP_PROPERTIES = dict(
    content_type="text/plain",
    content_encoding="utf-8",
    delivery_mode=2,
    priority=3,
    correlation_id="c-1",
    reply_to="r-1",
    expiration="100000",
    message_id="m-1",
    timestamp=1683356889,
    type="t-1",
    user_id="guest",
    app_id="a-1",
)


def test_all_basic_properties_round_trip_py_amqp(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    ch.basic_publish(amqp.Message(b"body", application_headers={"k": "v"}, **AMQP_PROPERTIES), "", queue)
    msg = ch.basic_get(queue, no_ack=True)
    for name, value in AMQP_PROPERTIES.items():
        assert msg.properties[name] == value, name
    assert msg.properties["application_headers"] == {"k": "v"}


def test_header_value_types_round_trip_py_amqp(amqp_conn):
    ch = amqp_conn.channel()
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    headers = {
        "str": "text ✓",
        "int": 12345,
        "negative": -7,
        "big": 2 ** 40,
        "bool": True,
        "float": 2.25,
        "decimal": decimal.Decimal("-0.001"),
        "datetime": datetime.datetime(2020, 2, 29, 23, 59, 59),
        "table": {"inner": {"x": 1}},
        "array": [1, "a", [True, None]],
        "void": None,
    }
    ch.basic_publish(amqp.Message(b"h", application_headers=headers), "", queue)
    got = amqp_drain(amqp_conn, ch, queue, 1)[0].properties["application_headers"]
    assert got == headers


def test_py_amqp_to_pika_interop(amqp_conn, conn):
    amqp_ch = amqp_conn.channel()
    queue, _, _ = amqp_ch.queue_declare("", exclusive=False, auto_delete=False)
    try:
        amqp_ch.basic_publish(amqp.Message(b"interop", message_id="i-1", priority=5,
                                           application_headers={"n": 10}), "", queue)
        ch = conn.channel()
        _, props, body = ch.basic_get(queue, auto_ack=True)
        assert (body, props.message_id, props.priority, props.headers) == (b"interop", "i-1", 5, {"n": 10})
    finally:
        amqp_ch.queue_delete(queue)


# ---------------------------------------------------------------------------
# Byte-exact passthrough (raw client)
# ---------------------------------------------------------------------------

def raw_field_table():
    """A headers table using every field type RabbitMQ understands, encoded by hand."""
    def field(name, kind, data):
        return R.shortstr(name) + kind + data
    items = [
        field("bool", b"t", b"\x01"),
        field("int8", b"b", struct.pack(">b", -5)),
        field("uint8", b"B", struct.pack(">B", 250)),
        field("int16", b"s", struct.pack(">h", -300)),
        field("uint16", b"u", struct.pack(">H", 65000)),
        field("int32", b"I", struct.pack(">i", -70000)),
        field("uint32", b"i", struct.pack(">I", 4000000000)),
        field("int64", b"l", struct.pack(">q", -2 ** 40)),
        field("float", b"f", struct.pack(">f", 1.5)),
        field("double", b"d", struct.pack(">d", -2.75)),
        field("decimal", b"D", b"\x02" + struct.pack(">i", 12345)),
        field("longstr", b"S", R.longstr("long string")),
        field("bytes", b"x", R.longstr(b"\x00\xff\x10")),
        field("array", b"A", R.longstr(b"I" + struct.pack(">i", 1) + b"S" + R.longstr("two"))),
        field("timestamp", b"T", struct.pack(">Q", 1700000000)),
        field("table", b"F", R.longstr(R.shortstr("k") + b"S" + R.longstr("v"))),
        field("void", b"V", b""),
    ]
    body = b"".join(items)
    return R.long_(len(body)) + body


def test_content_header_bytes_pass_through_unchanged(broker, uniq):
    queue = uniq()
    # flags: content-type(15) content-encoding(14) headers(13) delivery-mode(12) priority(11)
    # correlation-id(10) reply-to(9) expiration(8) message-id(7) timestamp(6) type(5)
    # user-id(4) app-id(3) cluster-id(2)
    flags = 0
    props = b""
    for bit, encoded in [
        (15, R.shortstr("application/octet-stream")),
        (14, R.shortstr("identity")),
        (13, raw_field_table()),
        (12, R.octet(2)),
        (11, R.octet(9)),
        (10, R.shortstr("corr")),
        (9, R.shortstr("reply")),
        (8, R.shortstr("999999")),
        (7, R.shortstr("mid")),
        (6, R.longlong(1234567890)),
        (5, R.shortstr("kind")),
        (4, R.shortstr("guest")),
        (3, R.shortstr("app")),
        (2, R.shortstr("cluster")),
    ]:
        flags |= 1 << bit
        props += encoded
    body = b"raw body"
    with R.connect(broker) as client:
        client.handshake()
        client.open_channel(1)
        client.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args(queue, exclusive=True))
        client.expect(R.QUEUE_DECLARE_OK)
        client.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", queue))
        client.send(R.header_frame(1, len(body), property_flags=flags, properties=props))
        client.send(R.body_frame(1, body))
        client.send_method(1, R.BASIC_GET, R.basic_get_args(queue))
        got = client.recv_method()
        assert got.key == R.BASIC_GET_OK, got
        frame_type, channel, payload = client.recv_frame()
        assert frame_type == R.FRAME_HEADER
        assert payload[:4] == R.short(60) + R.short(0)
        assert payload[4:12] == R.longlong(len(body))
        assert struct.unpack(">H", payload[12:14])[0] == flags
        assert payload[14:] == props
        frame_type, channel, payload = client.recv_frame()
        assert (frame_type, payload) == (R.FRAME_BODY, body)


def test_raw_headers_decoded_by_pika(broker, conn, uniq):
    queue = uniq()
    ch = conn.channel()
    ch.queue_declare(queue)
    try:
        with R.connect(broker) as client:
            client.handshake()
            client.open_channel(1)
            client.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", queue))
            client.send(R.header_frame(1, 1, property_flags=1 << 13, properties=raw_field_table()))
            client.send(R.body_frame(1, b"!"))
            client.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args(queue, passive=True))
            client.expect(R.QUEUE_DECLARE_OK)
        _, props, _ = ch.basic_get(queue, auto_ack=True)
        headers = props.headers
        assert headers["bool"] is True
        assert headers["int8"] == -5 and headers["uint8"] == 250
        assert headers["int16"] == -300 and headers["uint16"] == 65000
        assert headers["int32"] == -70000 and headers["uint32"] == 4000000000
        assert headers["int64"] == -2 ** 40
        assert int(headers["double"]) == -2   # pika truncates doubles to int when decoding
        assert headers["decimal"] == decimal.Decimal("123.45")
        assert headers["longstr"] == "long string"
        assert headers["array"] == [1, "two"]
        assert headers["table"] == {"k": "v"}
        assert headers["void"] is None
    finally:
        ch.queue_delete(queue)
