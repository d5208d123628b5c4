"""AMQPS: the TLS listener with the test CA (conftest's pki fixture).

Clients verify the server certificate against the test CA and the name "localhost", as a
production client would. Both TLS 1.2 and 1.3 must work; plain AMQP on the TLS port and
TLS on the plain port must fail without hurting the broker.
"""
import os
import socket
import ssl

import amqp
import pika
import pytest

from helpers import amqp_raw as R
from helpers.clients import (amqp_connect, amqp_drain, pika_connect, pika_drain, tls_context)


def tls_socket(broker, context):
    tls_context(broker)   # skips when the broker has no TLS port / CA
    raw = socket.create_connection((broker.host, broker.tls_port), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


def test_pika_publish_and_consume_over_tls(broker):
    conn = pika_connect(broker, tls=True)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        for i in range(10):
            ch.basic_publish("", queue, b"secret %d" % i, pika.BasicProperties(message_id=str(i)))
        got = pika_drain(ch, queue, 10)
        assert [b for _, _, b in got] == [b"secret %d" % i for i in range(10)]
        assert [p.message_id for _, p, _ in got] == [str(i) for i in range(10)]
    finally:
        conn.close()


def test_py_amqp_publish_and_consume_over_tls(broker):
    conn = amqp_connect(broker, tls=True)
    try:
        ch = conn.channel()
        queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
        ch.basic_publish(amqp.Message(b"over tls", message_id="t1"), "", queue)
        got = amqp_drain(conn, ch, queue, 1)
        assert got[0].body == b"over tls"
        assert got[0].properties["message_id"] == "t1"
    finally:
        conn.close()


def test_large_message_over_tls_is_byte_exact(broker):
    conn = pika_connect(broker, tls=True)
    try:
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        body = os.urandom(3 * 1024 * 1024 + 11)
        ch.confirm_delivery()
        ch.basic_publish("", queue, body)
        assert ch.basic_get(queue, auto_ack=True)[2] == body
    finally:
        conn.close()


def test_tls_and_plain_clients_share_queues(broker):
    tls_conn = pika_connect(broker, tls=True)
    plain_conn = pika_connect(broker)
    try:
        tls_ch = tls_conn.channel()
        queue = tls_ch.queue_declare("", exclusive=False, auto_delete=True).method.queue
        plain_ch = plain_conn.channel()
        plain_ch.basic_publish("", queue, b"from plain")
        assert pika_drain(tls_ch, queue, 1)[0][2] == b"from plain"
    finally:
        tls_conn.close()
        plain_conn.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
def test_tls_versions(broker, version):
    context = tls_context(broker)
    context.minimum_version = version
    context.maximum_version = version
    with tls_socket(broker, context) as sock:
        assert sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        sock.sendall(R.PROTOCOL_HEADER)
        header = sock.recv(7)
        assert header[:1] == b"\x01"   # a method frame: connection.start


def test_server_certificate_is_the_configured_one(broker):
    context = tls_context(broker)
    with tls_socket(broker, context) as sock:
        cert = sock.getpeercert()
        subject = dict(item[0] for item in cert["subject"])
        issuer = dict(item[0] for item in cert["issuer"])
        assert subject["commonName"] == "localhost"
        assert issuer["commonName"] == "Warren Test CA" or broker.flavour == "external"


def test_untrusted_client_rejects_server(broker):
    tls_context(broker)
    context = ssl.create_default_context()   # system CAs only: the test CA is unknown
    raw = socket.create_connection((broker.host, broker.tls_port), timeout=5)
    with pytest.raises(ssl.SSLCertVerificationError):
        context.wrap_socket(raw, server_hostname="localhost")
    raw.close()


def test_plain_amqp_on_tls_port_gets_no_connection_start(broker, conn):
    tls_context(broker)
    with R.RawClient(broker.host, broker.tls_port) as raw:
        raw.send(R.PROTOCOL_HEADER)
        try:
            data = raw.recv_exact(7, timeout=3)
        except (R.BrokerClosed, socket.timeout):
            data = b""
        assert not data.startswith(b"\x01\x00\x00"), "TLS port spoke plain AMQP"
    assert conn.channel().is_open   # broker unaffected


def test_tls_on_plain_port_fails(broker, conn):
    context = tls_context(broker)
    raw = socket.create_connection((broker.host, broker.port), timeout=5)
    with pytest.raises((ssl.SSLError, ConnectionError, socket.timeout, OSError)):
        context.wrap_socket(raw, server_hostname="localhost")
    raw.close()
    assert conn.channel().is_open


def test_abrupt_tls_disconnects_do_not_hurt_broker(broker):
    context = tls_context(broker)
    for i in range(10):
        raw = socket.create_connection((broker.host, broker.tls_port), timeout=5)
        if i % 2:
            raw.sendall(os.urandom(64))   # not a ClientHello
        else:
            sock = context.wrap_socket(raw, server_hostname="localhost")
            sock.sendall(R.PROTOCOL_HEADER[:3])
            raw = sock
        raw.close()
    conn = pika_connect(broker, tls=True)
    assert conn.channel().is_open
    conn.close()
