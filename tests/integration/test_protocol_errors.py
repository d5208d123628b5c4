"""Protocol-level errors, driven by a raw socket client (helpers/amqp_raw.py).

What RabbitMQ 3.10 does, and therefore what Warren must do:
  - a bad protocol header is answered with AMQP 0-9-1's header, then the socket closes;
  - framing errors (bad frame-end, oversized frame, unknown frame type) close the
    connection with 501 FRAME_ERROR;
  - content frames out of sequence close it with 505 UNEXPECTED_FRAME;
  - a method on a channel that is not open closes it with 504 CHANNEL_ERROR;
  - undecodable method arguments close it with 501 FRAME_ERROR "cannot decode"
    (the AMQP spec suggests 502 SYNTAX_ERROR; both are accepted here);
  - unknown class/method ids: RabbitMQ 3.10 drops the socket without a close frame
    (its connection process crashes); 540 NOT_IMPLEMENTED or 503 COMMAND_INVALID are
    also accepted, dropping the connection is the minimum.
After each, the broker must keep serving other connections.
"""
import random
import socket
import time

import pytest

from helpers import amqp_raw as R
from helpers.amqp_raw import BrokerClosed
from helpers.clients import pika_connect

AMQP_0_9_1_HEADER = b"AMQP\x00\x00\x09\x01"


def assert_broker_serves(broker, uniq):
    """A new connection can still declare, publish and get."""
    conn = pika_connect(broker)
    try:
        ch = conn.channel()
        queue = uniq("alive")
        ch.queue_declare(queue, auto_delete=False)
        ch.basic_publish("", queue, b"still alive")
        method, _, body = ch.basic_get(queue, auto_ack=True)
        assert body == b"still alive"
        ch.queue_delete(queue)
    finally:
        conn.close()


def connection_close_or_eof(client, timeout=5.0):
    """The (code, text, class, method) of the broker's connection.close, or None if the
    broker just dropped the socket."""
    try:
        return client.wait_connection_close(timeout)
    except BrokerClosed:
        return None


@pytest.fixture
def raw(broker):
    client = R.connect(broker)
    yield client
    client.close()


@pytest.fixture
def raw_open(raw):
    """A raw client past connection.open with channel 1 open."""
    raw.handshake()
    raw.open_channel(1)
    return raw


# ---------------------------------------------------------------------------
# Protocol header
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("header", [
    b"AMQP\x00\x00\x09\x00",          # 0-9-0
    b"AMQP\x00\x01\x00\x00",          # AMQP 1.0
    b"AMQP\x03\x01\x00\x00",          # AMQP 1.0 SASL
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"XXXXXXXX",
], ids=["0-9-0", "1-0", "1-0-sasl", "http", "garbage"])
def test_wrong_protocol_header_gets_091_header_and_close(raw, header, broker, uniq):
    raw.send(header)
    assert raw.recv_exact(8) == AMQP_0_9_1_HEADER
    assert raw.wait_eof(5), "broker must close the socket after replying with its header"
    assert_broker_serves(broker, uniq)


def test_correct_header_gets_connection_start(raw):
    raw.send(AMQP_0_9_1_HEADER)
    start = R.ConnectionStart(raw.expect(R.CONNECTION_START).args)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert "PLAIN" in start.mechanisms
    assert "en_US" in start.locales


def test_silence_after_header_is_not_a_crash(raw, broker, uniq):
    raw.send(AMQP_0_9_1_HEADER[:4])   # half a header, then nothing
    time.sleep(0.3)
    raw.close()
    assert_broker_serves(broker, uniq)


# ---------------------------------------------------------------------------
# Framing errors: 501 FRAME_ERROR
# ---------------------------------------------------------------------------

def test_bad_frame_end_is_frame_error(raw_open):
    raw_open.send(R.method_frame(1, R.QUEUE_DECLARE, R.queue_declare_args("x"), end=0x00))
    code, text, _, _ = raw_open.wait_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR")
    assert raw_open.wait_eof(10)


def test_frame_larger_than_negotiated_frame_max_is_frame_error(raw):
    raw.handshake(frame_max=4096)
    raw.open_channel(1)
    raw.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", "nowhere"))
    raw.send(R.header_frame(1, 10000))
    raw.send(R.body_frame(1, b"x" * 10000))   # 10000 > 4096 - 8
    code, text, _, _ = raw.wait_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR")
    assert raw.wait_eof(10)


def test_method_frame_larger_than_frame_max_is_frame_error(raw):
    raw.handshake(frame_max=4096)
    raw.open_channel(1)
    huge_args = R.queue_declare_args("q", arguments={"x-pad": "p" * 8000})
    raw.send_method(1, R.QUEUE_DECLARE, huge_args)
    code, text, _, _ = raw.wait_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR")


def test_unknown_frame_type_is_frame_error(raw_open):
    raw_open.send(R.frame(9, 1, b"abc"))
    code, text, _, _ = raw_open.wait_connection_close()
    assert code == 501
    assert text.startswith("FRAME_ERROR")


# ---------------------------------------------------------------------------
# Out-of-sequence frames: 505 UNEXPECTED_FRAME
# ---------------------------------------------------------------------------

def test_content_body_without_header_is_unexpected_frame(raw_open):
    raw_open.send(R.body_frame(1, b"hello"))
    code, text, _, _ = raw_open.wait_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME")
    assert raw_open.wait_eof(5)


def test_content_header_without_method_is_unexpected_frame(raw_open):
    raw_open.send(R.header_frame(1, 5))
    code, text, _, _ = raw_open.wait_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME")


def test_method_where_content_body_expected_is_unexpected_frame(raw_open):
    raw_open.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", "nowhere"))
    raw_open.send(R.header_frame(1, 10))
    raw_open.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args("q"))
    code, text, class_id, method_id = raw_open.wait_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME")
    assert (class_id, method_id) == (60, 40)


def test_content_header_for_wrong_class_is_unexpected_frame(raw_open):
    raw_open.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", "nowhere"))
    raw_open.send(R.header_frame(1, 5, class_id=50))
    code, text, _, _ = raw_open.wait_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME")


def test_heartbeat_on_nonzero_channel_is_unexpected_frame(raw_open):
    raw_open.send(R.frame(R.FRAME_HEARTBEAT, 1, b""))
    code, text, _, _ = raw_open.wait_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME")


def test_channel_method_before_connection_open_is_unexpected_frame(raw):
    raw.handshake(open_connection=False)
    raw.send_method(1, R.CHANNEL_OPEN, R.shortstr(""))
    code, text, _, _ = raw.wait_connection_close()
    assert code == 505
    assert text.startswith("UNEXPECTED_FRAME")


# ---------------------------------------------------------------------------
# Channel state: 504 CHANNEL_ERROR
# ---------------------------------------------------------------------------

def test_method_on_unopened_channel_is_channel_error(raw):
    raw.handshake()
    raw.send_method(5, R.QUEUE_DECLARE, R.queue_declare_args("x"))
    code, text, class_id, method_id = raw.wait_connection_close()
    assert code == 504
    assert text == "CHANNEL_ERROR - expected 'channel.open'"
    assert (class_id, method_id) == R.QUEUE_DECLARE
    assert raw.wait_eof(5)


def test_second_channel_open_is_channel_error(raw_open):
    raw_open.send_method(1, R.CHANNEL_OPEN, R.shortstr(""))
    code, text, class_id, method_id = raw_open.wait_connection_close()
    assert code == 504
    assert text == "CHANNEL_ERROR - second 'channel.open' seen"
    assert (class_id, method_id) == R.CHANNEL_OPEN


def test_channel_can_be_reopened_after_close(raw_open):
    raw_open.send_method(1, R.CHANNEL_CLOSE, R.short(200) + R.shortstr("bye") + R.short(0) + R.short(0))
    raw_open.expect(R.CHANNEL_CLOSE_OK)
    raw_open.open_channel(1)
    raw_open.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args("", exclusive=True))
    raw_open.expect(R.QUEUE_DECLARE_OK)


# ---------------------------------------------------------------------------
# Undecodable arguments and unknown methods
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    b"\x00\x00\x10ab",                                  # shortstr length beyond payload
    b"\x00\x00\xffabc",
    R.queue_declare_args("q") + b"trailing junk",       # bytes after the last argument
    b"\x00",                                            # truncated reserved short
], ids=["short-queue-name", "long-length", "trailing-junk", "truncated"])
def test_undecodable_method_arguments_close_connection(raw_open, args, broker, uniq):
    raw_open.send_method(1, R.QUEUE_DECLARE, args)
    code, text, class_id, method_id = raw_open.wait_connection_close()
    # RabbitMQ: 501 "FRAME_ERROR - cannot decode <<...>>"; the AMQP spec's 502 is accepted.
    assert code in (501, 502), (code, text)
    assert text.startswith("FRAME_ERROR") or text.startswith("SYNTAX_ERROR")
    assert (class_id, method_id) == R.QUEUE_DECLARE
    assert_broker_serves(broker, uniq)


@pytest.mark.parametrize("method", [(50, 99), (77, 10), (60, 255), (0, 0)],
                         ids=["unknown-queue-method", "unknown-class", "unknown-basic-method", "zero"])
def test_unknown_method_ends_connection(raw_open, method, broker, uniq):
    raw_open.send_method(1, method, b"")
    reason = connection_close_or_eof(raw_open)
    if reason is not None:
        code, text, _, _ = reason
        assert code in (503, 540), reason
    else:
        assert raw_open.wait_eof(1)
    assert_broker_serves(broker, uniq)


def test_invalid_argument_value_is_channel_error_not_crash(raw_open):
    raw_open.send_method(1, R.QUEUE_DECLARE,
                         R.queue_declare_args("q-bad-ttl", arguments={"x-message-ttl": "abc"}))
    got = raw_open.recv_method()
    assert got.key == R.CHANNEL_CLOSE
    code, text, class_id, method_id = got.close_reason()
    assert code == 406
    assert text.startswith("PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'q-bad-ttl'")
    assert (class_id, method_id) == R.QUEUE_DECLARE


# ---------------------------------------------------------------------------
# Garbage never crashes the broker
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_bytes_after_handshake_end_connection_only(raw_open, seed, broker, uniq):
    rng = random.Random(seed)
    try:
        raw_open.send(bytes(rng.getrandbits(8) for _ in range(4096)))
    except OSError:
        pass
    reason = connection_close_or_eof(raw_open, timeout=10)
    if reason is not None:
        assert 500 <= reason[0] < 600, reason
    assert raw_open.wait_eof(10), "broker must drop a connection that sent garbage"
    assert_broker_serves(broker, uniq)


@pytest.mark.timeout(120)
def test_random_method_arguments_never_crash_broker(broker, uniq):
    rng = random.Random(4242)
    methods = [(10, 40), (20, 20), (40, 10), (40, 20), (40, 30), (50, 10), (50, 20), (50, 30),
               (50, 40), (50, 50), (60, 10), (60, 20), (60, 30), (60, 40), (60, 70), (60, 80),
               (60, 90), (60, 100), (60, 110), (60, 120), (85, 10), (90, 10), (90, 20), (90, 30)]
    for i in range(60):
        method = methods[i % len(methods)]
        args = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        with R.connect(broker) as client:
            client.handshake()
            client.open_channel(1)
            try:
                client.send_method(1, method, args)
                deadline = time.monotonic() + 0.2
                while time.monotonic() < deadline:
                    client.recv_frame(timeout=max(0.01, deadline - time.monotonic()))
            except (BrokerClosed, socket.timeout, OSError, ValueError):
                pass
    assert_broker_serves(broker, uniq)


def test_many_abrupt_disconnects_mid_handshake(broker, uniq):
    for i in range(30):
        with R.connect(broker) as client:
            client.send(AMQP_0_9_1_HEADER)
            if i % 3:
                client.expect(R.CONNECTION_START)
            if i % 3 == 2:
                client.send_method(0, R.CONNECTION_START_OK, b"\x00\x00")
    assert_broker_serves(broker, uniq)


def test_client_connection_close_gets_close_ok(raw_open):
    raw_open.send_method(0, R.CONNECTION_CLOSE,
                         R.short(200) + R.shortstr("bye") + R.short(0) + R.short(0))
    raw_open.expect(R.CONNECTION_CLOSE_OK)


def test_frames_split_across_many_writes_are_reassembled(raw_open, uniq):
    queue = uniq("split")
    data = (R.method_frame(1, R.QUEUE_DECLARE, R.queue_declare_args(queue, exclusive=True))
            + R.method_frame(1, R.BASIC_PUBLISH, R.basic_publish_args("", queue))
            + R.header_frame(1, 5) + R.body_frame(1, b"hello")
            + R.method_frame(1, R.BASIC_GET, R.basic_get_args(queue)))
    for i in range(len(data)):
        raw_open.send(data[i:i + 1])
    raw_open.expect(R.QUEUE_DECLARE_OK)
    raw_open.expect(R.BASIC_GET_OK)
    frame_type, channel, payload = raw_open.recv_frame()
    assert frame_type == R.FRAME_HEADER
    frame_type, channel, payload = raw_open.recv_frame()
    assert (frame_type, payload) == (R.FRAME_BODY, b"hello")


def test_immediate_publish_is_not_implemented(raw_open):
    """RabbitMQ 3.x dropped the immediate flag: 540 NOT_IMPLEMENTED, connection closed."""
    raw_open.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", "q", immediate=True))
    raw_open.send(R.header_frame(1, 0))  # RabbitMQ looks at the flag once the content is complete
    code, text, class_id, method_id = raw_open.wait_connection_close()
    assert code == 540
    assert text == "NOT_IMPLEMENTED - immediate=true"
    assert (class_id, method_id) == (60, 40)
