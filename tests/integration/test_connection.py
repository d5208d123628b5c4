"""Connection lifecycle: authentication, vhost access, tuning (heartbeat, channel_max,
frame_max), server properties, and closing. Checked with pika, py-amqp and a raw socket.
"""
import socket
import threading
import time

import amqp
import pika
import pika.exceptions
import pytest

from helpers import amqp_raw as R
from helpers.amqp_raw import BrokerClosed
from helpers.clients import amqp_connect, pika_connect

CAPABILITIES = (
    "publisher_confirms", "exchange_exchange_bindings", "basic.nack", "consumer_cancel_notify",
    "connection.blocked", "consumer_priorities", "authentication_failure_close",
    "per_consumer_qos", "direct_reply_to",
)


# ---------------------------------------------------------------------------
# Authentication and vhosts
# ---------------------------------------------------------------------------

def test_guest_can_connect_with_pika(broker):
    conn = pika_connect(broker)
    assert conn.is_open
    conn.close()
    assert conn.is_closed


def test_guest_can_connect_with_py_amqp(broker):
    conn = amqp_connect(broker)
    assert conn.connected
    conn.close()


def test_amqplain_login_works(broker):
    # py-amqp (and so kombu/Celery) prefers AMQPLAIN when the broker offers it.
    conn = amqp_connect(broker, login_method="AMQPLAIN")
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    conn.close()


def test_plain_login_works_with_py_amqp(broker):
    conn = amqp_connect(broker, login_method="PLAIN")
    assert conn.connected
    conn.close()


def test_bad_password_is_refused_pika(broker):
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        pika_connect(broker, password="wrong")


def test_unknown_user_is_refused_pika(broker):
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        pika_connect(broker, user="nobody-here", password="guest")


def test_bad_password_is_refused_py_amqp(broker):
    with pytest.raises(amqp.exceptions.AccessRefused) as info:
        amqp_connect(broker, password="wrong")
    assert info.value.reply_code == 403
    assert info.value.reply_text.startswith("ACCESS_REFUSED - Login was refused using "
                                            "authentication mechanism")


def test_bad_password_raw_gets_403_connection_close(broker):
    # authentication_failure_close: the broker explains with connection.close 403.
    with R.connect(broker) as raw:
        raw.send(R.PROTOCOL_HEADER)
        raw.expect(R.CONNECTION_START)
        props = R.table({"capabilities": {"authentication_failure_close": True}})
        raw.send_method(0, R.CONNECTION_START_OK, props + R.shortstr("PLAIN")
                        + R.longstr(b"\x00guest\x00wrong") + R.shortstr("en_US"))
        code, text, _, _ = raw.wait_connection_close()
        assert code == 403
        assert text == ("ACCESS_REFUSED - Login was refused using authentication mechanism "
                        "PLAIN. For details see the broker logfile.")
        assert raw.wait_eof(5)


def test_unsupported_mechanism_is_refused(broker):
    with R.connect(broker) as raw:
        raw.send(R.PROTOCOL_HEADER)
        raw.expect(R.CONNECTION_START)
        raw.send_method(0, R.CONNECTION_START_OK, R.table({}) + R.shortstr("NOPE-MECH")
                        + R.longstr(b"x") + R.shortstr("en_US"))
        try:
            code, text, _, _ = raw.wait_connection_close()
        except BrokerClosed:
            return
        assert code in (403, 540, 530), (code, text)


def test_unknown_vhost_is_not_allowed_pika(broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        pika_connect(broker, vhost="nope")
    assert "530" in str(info.value)
    assert "NOT_ALLOWED" in str(info.value)


def test_unknown_vhost_is_not_allowed_py_amqp(broker):
    with pytest.raises(amqp.exceptions.NotAllowed) as info:
        amqp_connect(broker, vhost="nope")
    assert info.value.reply_code == 530
    # RabbitMQ 3.10 says "vhost nope not found"; access-refused wording is also fine.
    assert info.value.reply_text.startswith("NOT_ALLOWED - ")
    assert "nope" in info.value.reply_text


def test_unknown_vhost_raw_530_on_connection_open(broker):
    with R.connect(broker) as raw:
        raw.handshake(open_connection=False)
        raw.send_method(0, R.CONNECTION_OPEN, R.shortstr("nope") + R.shortstr("") + R.octet(0))
        code, text, class_id, method_id = raw.wait_connection_close()
        assert code == 530
        assert text.startswith("NOT_ALLOWED")
        assert (class_id, method_id) == R.CONNECTION_OPEN


# ---------------------------------------------------------------------------
# Server properties
# ---------------------------------------------------------------------------

def test_server_properties_raw(broker):
    with R.connect(broker) as raw:
        raw.handshake(open_connection=False)
        props = raw.start.server_properties
        assert isinstance(props.get("product"), str) and props["product"]
        assert isinstance(props.get("version"), str) and props["version"]
        assert isinstance(props.get("platform"), str)
        caps = props["capabilities"]
        for flag in CAPABILITIES:
            assert caps.get(flag) is True, f"capability {flag} missing or not true: {caps}"


def test_server_capabilities_seen_by_pika(broker):
    conn = pika_connect(broker)
    try:
        caps = conn._impl.server_capabilities
        assert all(caps.get(flag) is True for flag in CAPABILITIES), caps
        assert conn._impl.server_properties["product"]
    finally:
        conn.close()


def test_server_properties_seen_by_py_amqp(broker):
    conn = amqp_connect(broker)
    try:
        assert b"PLAIN" in conn.mechanisms
        assert conn.server_properties["version"]
        assert conn.server_capabilities["publisher_confirms"] is True
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Tuning: heartbeat, channel_max, frame_max
# ---------------------------------------------------------------------------

def test_default_tune_values(broker):
    with R.connect(broker) as raw:
        tune = raw.handshake(open_connection=False)
        assert tune.heartbeat == 60
        assert tune.channel_max == 2047
        assert tune.frame_max == 131072


def test_client_lower_heartbeat_is_used_pika(broker):
    conn = pika_connect(broker, heartbeat=5)
    try:
        assert conn._impl.params.heartbeat == 5
    finally:
        conn.close()


def test_client_lower_heartbeat_is_used_py_amqp(broker):
    conn = amqp_connect(broker, heartbeat=7)
    try:
        assert conn.heartbeat == 7
        assert conn.server_heartbeat == 60
    finally:
        conn.close()


def test_broker_sends_heartbeats_at_negotiated_interval(broker):
    with R.connect(broker) as raw:
        raw.handshake(heartbeat=1)
        start = time.monotonic()
        beats = 0
        while time.monotonic() - start < 3.0:
            frame_type, channel, payload = raw.recv_frame(timeout=2.0)
            if frame_type == R.FRAME_HEARTBEAT:
                assert (channel, payload) == (0, b"")
                beats += 1
            raw.send(R.heartbeat_frame())   # we are alive: keep the connection up
        assert beats >= 2, "heartbeat=1 must produce heartbeat frames at least every second"


def test_silent_client_is_disconnected_after_missed_heartbeats(broker):
    with R.connect(broker) as raw:
        raw.handshake(heartbeat=1)
        start = time.monotonic()
        assert raw.wait_eof(8), "broker kept a silent heartbeat=1 connection open"
        elapsed = time.monotonic() - start
        # RabbitMQ closes after ~2 missed intervals (3 s observed); not instantly either.
        assert 1.0 <= elapsed <= 4.5, elapsed


def test_heartbeats_from_client_keep_connection_alive(broker):
    with R.connect(broker) as raw:
        raw.handshake(heartbeat=1)
        raw.open_channel(1)
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            raw.send(R.heartbeat_frame())
            time.sleep(0.3)
        raw.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args("", exclusive=True))
        assert raw.recv_method().key == R.QUEUE_DECLARE_OK


def test_heartbeat_zero_disables_timeout(broker):
    with R.connect(broker) as raw:
        raw.handshake(heartbeat=0)
        raw.open_channel(1)
        assert not raw.wait_eof(3.5)
        raw.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args("", exclusive=True))
        assert raw.recv_method().key == R.QUEUE_DECLARE_OK


def test_configured_heartbeat_is_proposed(fresh_broker):
    b = fresh_broker(config={"heartbeat": 7})
    with R.connect(b) as raw:
        assert raw.handshake(open_connection=False).heartbeat == 7


def test_configured_channel_max_is_proposed(fresh_broker):
    b = fresh_broker(config={"channel_max": 16})
    with R.connect(b) as raw:
        assert raw.handshake(open_connection=False).channel_max == 16


def test_negotiated_channel_max_limits_open_channels(broker):
    with R.connect(broker) as raw:
        raw.handshake(channel_max=5)
        for n in range(1, 6):
            raw.open_channel(n)
        raw.send_method(6, R.CHANNEL_OPEN, R.shortstr(""))
        code, text, _, _ = raw.wait_connection_close()
        assert code == 530
        assert text == ("NOT_ALLOWED - number of channels opened (5) has reached the "
                        "negotiated channel_max (5)")


def test_pika_channel_max_negotiated(broker):
    conn = pika_connect(broker, channel_max=3)
    try:
        assert conn._impl.params.channel_max == 3
        channels = [conn.channel() for _ in range(3)]
        assert all(ch.is_open for ch in channels)
    finally:
        conn.close()


def test_frame_max_below_minimum_is_refused(broker):
    with R.connect(broker) as raw:
        try:
            raw.handshake(frame_max=1024)
        except BrokerClosed:
            return
        except AssertionError:
            return   # got connection.close instead of open-ok
        code, _, _, _ = raw.wait_connection_close()
        assert code in (501, 503, 530)


def test_negotiated_frame_max_splits_deliveries(broker, uniq):
    queue = uniq("fm")
    body = bytes(range(256)) * 40   # 10240 bytes > 4096
    with R.connect(broker) as raw:
        raw.handshake(frame_max=4096)
        raw.open_channel(1)
        raw.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args(queue, exclusive=True))
        raw.expect(R.QUEUE_DECLARE_OK)
        raw.send_method(1, R.BASIC_PUBLISH, R.basic_publish_args("", queue))
        raw.send(R.header_frame(1, len(body)))
        for i in range(0, len(body), 4000):
            raw.send(R.body_frame(1, body[i:i + 4000]))
        raw.send_method(1, R.BASIC_GET, R.basic_get_args(queue))
        raw.expect(R.BASIC_GET_OK)
        frame_type, _, payload = raw.recv_frame()
        assert frame_type == R.FRAME_HEADER
        received = b""
        while len(received) < len(body):
            frame_type, _, payload = raw.recv_frame()
            assert frame_type == R.FRAME_BODY
            assert len(payload) + 8 <= 4096, "body frame exceeds negotiated frame_max"
            received += payload
        assert received == body


def test_small_frame_max_pika_round_trip(broker, uniq):
    conn = pika_connect(broker, frame_max=4096)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        body = b"0123456789abcdef" * 8192   # 128 KiB in many frames
        ch.basic_publish("", queue, body)
        method, _, got = ch.basic_get(queue, auto_ack=True)
        assert got == body
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Channels and closing
# ---------------------------------------------------------------------------

def test_pika_close_is_clean(broker):
    conn = pika_connect(broker)
    conn.channel()
    conn.close()
    assert conn.is_closed
    with pytest.raises(pika.exceptions.ConnectionWrongStateError):
        conn.channel()


def test_py_amqp_close_is_clean(broker):
    conn = amqp_connect(broker)
    conn.channel()
    conn.close()
    assert not conn.connected


def test_channel_error_leaves_connection_and_other_channels_usable(broker, uniq):
    conn = pika_connect(broker)
    try:
        good = conn.channel()
        bad = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            bad.queue_declare(uniq("missing"), passive=True)
        assert info.value.reply_code == 404
        assert good.is_open
        queue = good.queue_declare("", exclusive=True).method.queue
        good.basic_publish("", queue, b"ok")
        assert good.basic_get(queue, auto_ack=True)[2] == b"ok"
        assert conn.channel().is_open
    finally:
        conn.close()


def test_many_channels_on_one_connection(broker):
    conn = pika_connect(broker)
    try:
        channels = [conn.channel() for _ in range(100)]
        queues = [ch.queue_declare("", exclusive=True).method.queue for ch in channels]
        for ch, queue in zip(channels, queues):
            ch.basic_publish("", queue, queue.encode())
        for ch, queue in zip(channels, queues):
            assert ch.basic_get(queue, auto_ack=True)[2] == queue.encode()
        for ch in channels[::2]:
            ch.close()
        assert all(ch.is_open for ch in channels[1::2])
    finally:
        conn.close()


def test_many_concurrent_connections(broker, uniq):
    queue = uniq("conc")
    errors = []

    def worker(n):
        try:
            conn = pika_connect(broker)
            ch = conn.channel()
            ch.queue_declare(queue, auto_delete=False)
            ch.basic_publish("", queue, str(n).encode())
            conn.close()
        except Exception as e:   # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    conn = pika_connect(broker)
    try:
        ch = conn.channel()
        assert ch.queue_declare(queue, passive=True).method.message_count == 40
        ch.queue_delete(queue)
    finally:
        conn.close()


def test_abrupt_client_disconnect_releases_resources(broker, uniq):
    """An exclusive queue of a connection whose socket just vanished is deleted."""
    queue = uniq("abrupt")
    raw = R.connect(broker)
    raw.handshake()
    raw.open_channel(1)
    raw.send_method(1, R.QUEUE_DECLARE, R.queue_declare_args(queue, exclusive=True))
    raw.expect(R.QUEUE_DECLARE_OK)
    raw.sock.shutdown(socket.SHUT_RDWR)
    raw.close()
    conn = pika_connect(broker)
    try:
        deadline = time.monotonic() + 5
        while True:
            ch = conn.channel()
            try:
                ch.queue_declare(queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                assert e.reply_code == 404
                break
            assert time.monotonic() < deadline, "exclusive queue outlived its connection"
            time.sleep(0.1)
    finally:
        conn.close()
