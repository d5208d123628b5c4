"""Users, vhosts and permissions loaded from a RabbitMQ definitions file.

The broker gets `load_definitions = <file>` with RabbitMQ's JSON format: users carry
password_hash (base64(salt4 + H(salt4 + password))) and hashing_algorithm; permissions
are regexes (unanchored, as Erlang's re:run) over resource names, checked as RabbitMQ
does: configure for declare/delete, write for publish and for the queue side of a bind,
read for get/consume/purge and for the exchange side of a bind.
All skipped with WARREN_TEST_EXTERNAL (the suite cannot configure that broker).
"""
import base64
import hashlib
import os

import amqp
import pika
import pika.exceptions
import pytest

from helpers import passwords
from helpers.clients import amqp_connect, pika_channel_error, pika_connect

pytestmark = pytest.mark.timeout(120)


def sha512_user(name, password):
    salt = os.urandom(4)
    digest = hashlib.sha512(salt + password.encode()).digest()
    return {"name": name, "password_hash": base64.b64encode(salt + digest).decode(),
            "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": ""}


DEFINITIONS = passwords.definitions(
    users=[
        passwords.user("admin", "admin-pw", tags="administrator"),
        passwords.user("limited", "limited-pw"),
        passwords.user("writer", "writer-pw"),
        passwords.user("reader", "reader-pw"),
        passwords.user("novhost", "novhost-pw"),
        passwords.user("otheronly", "otheronly-pw"),
        passwords.user("unanchored", "unanchored-pw"),
        passwords.user("ünïcode", "pässwörd ✓"),
        sha512_user("sha512user", "sha512-pw"),
    ],
    vhosts=["/", "other"],
    permissions=[
        passwords.permission("admin", "/"),
        passwords.permission("admin", "other"),
        passwords.permission("limited", "/", configure="^own\\.", write="^own\\.", read="^own\\."),
        passwords.permission("writer", "/", configure="", write=".*", read=""),
        passwords.permission("reader", "/", configure="", write="", read=".*"),
        passwords.permission("otheronly", "other"),
        passwords.permission("unanchored", "/", configure="tmp", write=".*", read=".*"),
        passwords.permission("ünïcode", "/"),
        passwords.permission("sha512user", "/"),
    ],
)


@pytest.fixture(scope="module")
def auth_broker(module_broker):
    b = module_broker(definitions=DEFINITIONS)
    conn = pika_connect(b, user="admin", password="admin-pw")
    ch = conn.channel()
    ch.queue_declare("shared")
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", "shared", b"s%d" % i)
    ch.exchange_declare("shared-ex", "direct")
    conn.close()
    return b


def connect(b, user, password, vhost="/"):
    return pika_connect(b, user=user, password=password, vhost=vhost)


def refused(user, resource, name, vhost="/"):
    return (403, f"ACCESS_REFUSED - access to {resource} '{name}' in vhost '{vhost}' "
                 f"refused for user '{user}'")


@pytest.fixture
def limited(auth_broker):
    conn = connect(auth_broker, "limited", "limited-pw")
    yield conn
    if conn.is_open:
        conn.close()


# ---------------------------------------------------------------------------
# Authentication with hashed passwords
# ---------------------------------------------------------------------------

def test_sha256_hash_matches_rabbitmq_documented_example():
    # The worked example of RabbitMQ's "Credentials and Passwords" guide.
    salt = bytes.fromhex("908DC60A")
    assert passwords.rabbit_sha256_hash("test12", salt) == "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR"


@pytest.mark.parametrize("user,password", [("admin", "admin-pw"), ("limited", "limited-pw"),
                                           ("sha512user", "sha512-pw"), ("ünïcode", "pässwörd ✓")])
def test_defined_users_can_log_in(auth_broker, user, password):
    conn = connect(auth_broker, user, password)
    assert conn.channel().is_open
    conn.close()


def test_defined_user_can_log_in_with_py_amqp(auth_broker):
    conn = amqp_connect(auth_broker, user="admin", password="admin-pw")
    conn.channel().queue_declare("", exclusive=True)
    conn.close()


def test_wrong_password_for_defined_user_is_refused(auth_broker):
    with pytest.raises(amqp.exceptions.AccessRefused) as info:
        amqp_connect(auth_broker, user="admin", password="admin-pw-wrong")
    assert info.value.reply_code == 403


def test_guest_is_not_created_when_definitions_define_users(auth_broker):
    # RabbitMQ skips creating the default user when it imports definitions at boot.
    with pytest.raises((pika.exceptions.ProbableAuthenticationError,
                        pika.exceptions.AuthenticationError)):
        connect(auth_broker, "guest", "guest")


# ---------------------------------------------------------------------------
# vhost access
# ---------------------------------------------------------------------------

def test_user_without_permissions_is_refused_vhost(auth_broker):
    with pytest.raises(amqp.exceptions.NotAllowed) as info:
        amqp_connect(auth_broker, user="novhost", password="novhost-pw")
    assert info.value.reply_code == 530
    assert info.value.reply_text == "NOT_ALLOWED - access to vhost '/' refused for user 'novhost'"


def test_user_without_permissions_is_refused_vhost_pika(auth_broker):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError):
        connect(auth_broker, "novhost", "novhost-pw")


def test_user_with_permissions_on_other_vhost_only(auth_broker):
    conn = connect(auth_broker, "otheronly", "otheronly-pw", vhost="other")
    assert conn.channel().is_open
    conn.close()
    with pytest.raises(amqp.exceptions.NotAllowed) as info:
        amqp_connect(auth_broker, user="otheronly", password="otheronly-pw", vhost="/")
    assert info.value.reply_text == "NOT_ALLOWED - access to vhost '/' refused for user 'otheronly'"


def test_vhosts_are_isolated(auth_broker):
    root = connect(auth_broker, "admin", "admin-pw", vhost="/")
    other = connect(auth_broker, "admin", "admin-pw", vhost="other")
    try:
        rch, och = root.channel(), other.channel()
        rch.queue_declare("same-name", auto_delete=False)
        och.queue_declare("same-name", auto_delete=False)
        rch.confirm_delivery()
        rch.basic_publish("", "same-name", b"in root")
        och.basic_publish("", "same-name", b"in other")
        assert och.basic_get("same-name", auto_ack=True)[2] == b"in other"
        assert rch.basic_get("same-name", auto_ack=True)[2] == b"in root"
        code, text = pika_channel_error(lambda: och.queue_declare("shared", passive=True))
        assert (code, text) == (404, "NOT_FOUND - no queue 'shared' in vhost 'other'")
        rch.queue_delete("same-name")
        other.channel().queue_delete("same-name")
    finally:
        root.close()
        other.close()


# ---------------------------------------------------------------------------
# configure
# ---------------------------------------------------------------------------

def test_configure_allows_matching_queue(limited):
    ch = limited.channel()
    assert ch.queue_declare("own.q1", auto_delete=True).method.queue == "own.q1"


def test_configure_refuses_other_queue(limited):
    ch = limited.channel()
    code, text = pika_channel_error(lambda: ch.queue_declare("x"))
    assert (code, text) == refused("limited", "queue", "x")


def test_configure_refuses_other_exchange(limited):
    ch = limited.channel()
    code, text = pika_channel_error(lambda: ch.exchange_declare("x", "direct"))
    assert (code, text) == refused("limited", "exchange", "x")


def test_configure_refuses_deleting_other_queue(limited):
    ch = limited.channel()
    code, text = pika_channel_error(lambda: ch.queue_delete("shared"))
    assert (code, text) == refused("limited", "queue", "shared")


def test_empty_configure_pattern_matches_nothing(auth_broker):
    conn = connect(auth_broker, "writer", "writer-pw")
    try:
        ch = conn.channel()
        code, text = pika_channel_error(lambda: ch.queue_declare("anything"))
        assert (code, text) == refused("writer", "queue", "anything")
    finally:
        conn.close()


def test_permission_patterns_are_unanchored(auth_broker):
    conn = connect(auth_broker, "unanchored", "unanchored-pw")
    try:
        ch = conn.channel()
        ch.queue_declare("a.tmp.b", auto_delete=True)        # "tmp" found inside the name
        code, text = pika_channel_error(lambda: ch.queue_declare("a.tm.b"))
        assert (code, text) == refused("unanchored", "queue", "a.tm.b")
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# write
# ---------------------------------------------------------------------------

def test_write_refused_on_default_exchange(limited):
    ch = limited.channel()
    ch.basic_publish("", "own.anything", b"x")
    code, text = pika_channel_error(lambda: ch.queue_declare("own.sync", auto_delete=True))
    assert (code, text) == refused("limited", "exchange", "amq.default")


def test_write_allowed_on_matching_exchange(limited):
    ch = limited.channel()
    ch.exchange_declare("own.ex", "direct", auto_delete=True)
    ch.queue_declare("own.target", exclusive=True)
    ch.queue_bind("own.target", "own.ex", "k")
    ch.confirm_delivery()
    ch.basic_publish("own.ex", "k", b"allowed")
    assert ch.basic_get("own.target", auto_ack=True)[2] == b"allowed"


def test_writer_can_publish_but_not_read(auth_broker):
    conn = connect(auth_broker, "writer", "writer-pw")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", "shared", b"from writer")
        code, text = pika_channel_error(lambda: ch.basic_get("shared"))
        assert (code, text) == refused("writer", "queue", "shared")
    finally:
        conn.close()


def test_reader_can_read_but_not_publish(auth_broker):
    conn = connect(auth_broker, "reader", "reader-pw")
    try:
        ch = conn.channel()
        method, _, body = ch.basic_get("shared", auto_ack=False)
        assert body is not None
        ch.basic_nack(method.delivery_tag, requeue=True)
        ch.basic_publish("", "shared", b"from reader")
        code, text = pika_channel_error(lambda: ch.queue_declare("shared", passive=True))
        assert (code, text) == refused("reader", "exchange", "amq.default")
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# read
# ---------------------------------------------------------------------------

def test_read_refused_for_get(limited):
    ch = limited.channel()
    code, text = pika_channel_error(lambda: ch.basic_get("shared"))
    assert (code, text) == refused("limited", "queue", "shared")


def test_read_refused_for_consume(limited):
    ch = limited.channel()
    code, text = pika_channel_error(lambda: ch.basic_consume("shared", lambda *a: None))
    assert (code, text) == refused("limited", "queue", "shared")


def test_read_refused_for_purge(limited):
    ch = limited.channel()
    code, text = pika_channel_error(lambda: ch.queue_purge("shared"))
    assert (code, text) == refused("limited", "queue", "shared")


# ---------------------------------------------------------------------------
# bind: write on the queue, read on the exchange
# ---------------------------------------------------------------------------

def test_bind_refused_without_read_on_exchange(limited):
    ch = limited.channel()
    ch.queue_declare("own.bindq", exclusive=True)
    code, text = pika_channel_error(lambda: ch.queue_bind("own.bindq", "amq.direct", "k"))
    assert (code, text) == refused("limited", "exchange", "amq.direct")


def test_bind_refused_without_write_on_queue(limited):
    ch = limited.channel()
    ch.exchange_declare("own.bindex", "fanout", auto_delete=True)
    code, text = pika_channel_error(lambda: ch.queue_bind("shared", "own.bindex"))
    assert (code, text) == refused("limited", "queue", "shared")


def test_bind_allowed_with_both_permissions(limited):
    ch = limited.channel()
    ch.exchange_declare("own.okex", "fanout", auto_delete=True)
    ch.queue_declare("own.okq", exclusive=True)
    ch.queue_bind("own.okq", "own.okex")
    ch.queue_unbind("own.okq", "own.okex")


# ---------------------------------------------------------------------------
# loopback_users
# ---------------------------------------------------------------------------

def test_guest_works_from_loopback_by_default(fresh_broker):
    b = fresh_broker()
    conn = pika_connect(b)
    assert conn.channel().is_open
    conn.close()


def test_loopback_users_none_guest_and_other_users_work(fresh_broker):
    definitions = passwords.definitions(
        users=[passwords.user("guest", "guest", tags="administrator"),
               passwords.user("app", "app-pw")],
        permissions=[passwords.permission("guest"), passwords.permission("app")])
    b = fresh_broker(config={"loopback_users": "none"}, definitions=definitions)
    for user, password in (("guest", "guest"), ("app", "app-pw")):
        conn = pika_connect(b, user=user, password=password)
        ch = conn.channel()
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", queue, user.encode())
        assert ch.basic_get(queue, auto_ack=True)[2] == user.encode()
        conn.close()
