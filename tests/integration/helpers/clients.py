"""Client factories and bounded wait loops for pika, py-amqp and aio-pika.

Every factory sets connect/socket timeouts so a broker that never answers turns into a
test failure, not a hang. Every consume helper takes a deadline and returns what it got,
so the test asserts on counts instead of looping forever.
"""
import socket
import ssl
import time

import amqp
import pika
import pika.exceptions

CONNECT_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# pika
# ---------------------------------------------------------------------------

def pika_params(broker, user="guest", password="guest", vhost="/", tls=False, **kwargs):
    kwargs.setdefault("socket_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("stack_timeout", CONNECT_TIMEOUT * 2)
    kwargs.setdefault("blocked_connection_timeout", 30)
    kwargs.setdefault("connection_attempts", 1)
    port = broker.port
    if tls:
        port = broker.tls_port
        kwargs.setdefault("ssl_options", pika.SSLOptions(tls_context(broker), "localhost"))
    return pika.ConnectionParameters(
        host=broker.host, port=port, virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password), **kwargs)


def pika_connect(broker, **kwargs):
    return pika.BlockingConnection(pika_params(broker, **kwargs))


def pika_drain(channel, queue, count, timeout=5.0, auto_ack=True):
    """Consume up to count messages from queue within timeout.

    Returns [(method, properties, body)] in delivery order; cancels the consumer.
    """
    got = []
    deadline = time.monotonic() + timeout
    for method, props, body in channel.consume(queue, auto_ack=auto_ack, inactivity_timeout=0.1):
        if method is not None:
            got.append((method, props, body))
        if len(got) >= count or time.monotonic() >= deadline:
            break
    channel.cancel()
    return got


def pika_get_all(channel, queue, limit=10000, auto_ack=True):
    """basic.get until get-empty; returns [(method, properties, body)]."""
    got = []
    for _ in range(limit):
        method, props, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is None:
            break
        got.append((method, props, body))
    return got


def pika_bodies(messages):
    return [body for _, _, body in messages]


def pika_process_until(connection, predicate, timeout=5.0, step=0.05):
    """Run pika's I/O loop until predicate() is true or the timeout passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        connection.process_data_events(time_limit=min(step, remaining))
    return True


# ---------------------------------------------------------------------------
# py-amqp
# ---------------------------------------------------------------------------

def amqp_connect(broker, user="guest", password="guest", vhost="/", tls=False, **kwargs):
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT)
    kwargs.setdefault("read_timeout", 10)
    kwargs.setdefault("write_timeout", 10)
    port = broker.tls_port if tls else broker.port
    if tls:
        tls_context(broker)   # skips the test when TLS is not available
        # py-amqp 5.4 builds the SSLContext itself from create_default_context() options.
        kwargs["ssl"] = {"context": {"cafile": broker.ca, "check_hostname": True},
                         "server_hostname": "localhost"}
    conn = amqp.Connection(host=f"{broker.host}:{port}", userid=user, password=password,
                           virtual_host=vhost, **kwargs)
    conn.connect()
    return conn


def amqp_drain(connection, channel, queue, count, timeout=5.0, no_ack=True):
    """Consume up to count messages within timeout; returns the amqp.Message list."""
    got = []

    def on_message(message):
        got.append(message)

    tag = channel.basic_consume(queue, callback=on_message, no_ack=no_ack)
    amqp_drain_until(connection, lambda: len(got) >= count, timeout)
    channel.basic_cancel(tag)
    return got


def amqp_drain_until(connection, predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        try:
            connection.drain_events(timeout=min(0.2, remaining))
        except socket.timeout:
            pass
    return True


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------

def tls_context(broker):
    """Client context that trusts only the test CA and checks the server name."""
    if broker.ca is None:
        import pytest
        pytest.skip("no CA for the broker's TLS certificate (set WARREN_TEST_EXTERNAL_CA)")
    if broker.tls_port is None:
        import pytest
        pytest.skip("the broker has no TLS port (WARREN_TEST_EXTERNAL has no :tlsport)")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=broker.ca)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def amqp_url(broker, user="guest", password="guest", vhost="/"):
    from urllib.parse import quote
    return f"amqp://{quote(user)}:{quote(password)}@{broker.host}:{broker.port}/{quote(vhost, safe='')}"


# ---------------------------------------------------------------------------
# Expected errors
# ---------------------------------------------------------------------------

def pika_channel_error(action):
    """Run action(); it must make the broker close the channel. Returns (code, text)."""
    import pytest
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        action()
    return info.value.reply_code, info.value.reply_text


def pika_connection_error(action):
    """Run action(); it must make the broker close the connection. Returns (code, text)."""
    import pytest
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        action()
    return info.value.reply_code, info.value.reply_text


# ---------------------------------------------------------------------------
# Eventual state (RabbitMQ applies publishes and acks asynchronously to a queue, so a
# declare-ok right after a publish may not count it yet)
# ---------------------------------------------------------------------------

def wait_for(predicate, timeout=5.0, step=0.05):
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def queue_counts(channel, queue):
    """(message_count, consumer_count) from a passive declare."""
    ok = channel.queue_declare(queue, passive=True).method
    return ok.message_count, ok.consumer_count


def wait_queue_counts(channel, queue, expected, timeout=5.0):
    """Polls until the passive declare reports expected; returns the last counts."""
    last = [None]

    def check():
        last[0] = queue_counts(channel, queue)
        return last[0] == expected
    wait_for(check, timeout)
    return last[0]


def rabbit_reply_text(text):
    """A reply-text as RabbitMQ sends it: a shortstr, so cut to 255 bytes ending in '...'."""
    data = text.encode()
    if len(data) <= 255:
        return text
    return data[:252].decode("utf-8", "ignore") + "..."
