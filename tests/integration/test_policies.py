"""Policies from boot definitions, with RabbitMQ's precedence: the
highest-priority matching policy applies; numeric limits take the lowest of argument and
policy; other keys prefer the queue's own argument; apply-to restricts targets."""
import time

import pika
import pytest

from helpers import passwords
from helpers.clients import pika_connect

pytestmark = pytest.mark.timeout(120)


def policy(name, pattern, definition, priority=0, apply_to="all", vhost="/"):
    return {"vhost": vhost, "name": name, "pattern": pattern, "apply-to": apply_to,
            "definition": definition, "priority": priority}


DEFINITIONS = dict(passwords.definitions(
    users=[passwords.user("guest", "guest", tags="administrator")],
    vhosts=["/"],
    permissions=[passwords.permission("guest", "/")],
))
DEFINITIONS["policies"] = [
    policy("limit", "^limited\\.", {"max-length": 2}),
    policy("limit-strong", "^limited\\.strong", {"max-length": 1}, priority=5),
    policy("ttl", "^ttl\\.", {"message-ttl": 200, "dead-letter-exchange": "dlx"}),
    policy("ae", "^with-ae$", {"alternate-exchange": "ae"}, apply_to="exchanges"),
    policy("exchanges-only", "^exonly\\.", {"max-length": 1}, apply_to="exchanges"),
]
DEFINITIONS["exchanges"] = [
    {"name": "dlx", "vhost": "/", "type": "fanout", "durable": True, "auto_delete": False,
     "internal": False, "arguments": {}},
    {"name": "ae", "vhost": "/", "type": "fanout", "durable": True, "auto_delete": False,
     "internal": False, "arguments": {}},
    {"name": "with-ae", "vhost": "/", "type": "direct", "durable": True, "auto_delete": False,
     "internal": False, "arguments": {}},
]
DEFINITIONS["queues"] = [
    {"name": "dead", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}},
    {"name": "ae-q", "vhost": "/", "durable": True, "auto_delete": False, "arguments": {}},
]
DEFINITIONS["bindings"] = [
    {"source": "dlx", "vhost": "/", "destination": "dead", "destination_type": "queue",
     "routing_key": "", "arguments": {}},
    {"source": "ae", "vhost": "/", "destination": "ae-q", "destination_type": "queue",
     "routing_key": "", "arguments": {}},
]


@pytest.fixture(scope="module")
def policy_broker(module_broker):
    return module_broker(definitions=DEFINITIONS)


@pytest.fixture
def pch(policy_broker):
    c = pika_connect(policy_broker)
    ch = c.channel()
    ch.confirm_delivery()
    yield ch
    c.close()


def fill(ch, queue, n):
    for i in range(n):
        ch.basic_publish("", queue, str(i).encode())


def count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def test_policy_max_length_applies(pch):
    pch.queue_declare("limited.a", durable=False, auto_delete=True)
    fill(pch, "limited.a", 5)
    assert count(pch, "limited.a") == 2
    pch.queue_delete("limited.a")


def test_highest_priority_policy_wins(pch):
    pch.queue_declare("limited.strong", durable=False, auto_delete=True)
    fill(pch, "limited.strong", 5)
    assert count(pch, "limited.strong") == 1
    pch.queue_delete("limited.strong")


def test_lower_argument_beats_policy(pch):
    pch.queue_declare("limited.arg", arguments={"x-max-length": 1})
    fill(pch, "limited.arg", 5)
    assert count(pch, "limited.arg") == 1
    pch.queue_delete("limited.arg")


def test_lower_policy_beats_argument(pch):
    pch.queue_declare("limited.bigarg", arguments={"x-max-length": 10})
    fill(pch, "limited.bigarg", 5)
    assert count(pch, "limited.bigarg") == 2
    pch.queue_delete("limited.bigarg")


def test_apply_to_exchanges_does_not_touch_queues(pch):
    pch.queue_declare("exonly.q")
    fill(pch, "exonly.q", 3)
    assert count(pch, "exonly.q") == 3
    pch.queue_delete("exonly.q")


def test_policy_ttl_and_dead_letter_exchange(pch):
    pch.queue_purge("dead")
    pch.queue_declare("ttl.q")
    pch.basic_publish("", "ttl.q", b"old")
    deadline = time.monotonic() + 5
    while count(pch, "dead") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    method, props, body = pch.basic_get("dead", auto_ack=True)
    assert body == b"old"
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert props.headers["x-death"][0]["queue"] == "ttl.q"
    assert count(pch, "ttl.q") == 0
    pch.queue_delete("ttl.q")


def test_policy_alternate_exchange(pch):
    pch.queue_purge("ae-q")
    pch.basic_publish("with-ae", "nowhere", b"unroutable")
    deadline = time.monotonic() + 5
    while count(pch, "ae-q") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pch.basic_get("ae-q", auto_ack=True)[2] == b"unroutable"


def test_policy_applies_to_existing_queue_with_messages(fresh_broker, tmp_path):
    """A policy that appears while messages are queued applies at once: here a max-length
    policy loaded at the next boot trims the queue recovered from disk."""
    import json
    b = fresh_broker()
    if not hasattr(b, "definitions_path"):
        pytest.skip("needs a broker this suite starts and reconfigures")
    c = pika_connect(b)
    ch = c.channel()
    ch.confirm_delivery()
    ch.queue_declare("existing.q", durable=True)
    for i in range(5):
        ch.basic_publish("", "existing.q", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    c.close()
    defs = dict(DEFINITIONS)
    defs["policies"] = [policy("trim", "^existing\\.", {"max-length": 2})]
    path = tmp_path / "later-definitions.json"
    path.write_text(json.dumps(defs))
    b.definitions_path = str(path)
    b._write_config()
    b.restart()
    c = pika_connect(b)
    ch = c.channel()
    assert count(ch, "existing.q") == 2
    # drop-head: the oldest went, the newest stay
    assert [ch.basic_get("existing.q", auto_ack=True)[2] for _ in range(2)] == [b"3", b"4"]
    c.close()
