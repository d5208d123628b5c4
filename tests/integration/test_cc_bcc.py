"""Sender-selected distribution: the CC and BCC message headers.

What RabbitMQ 3.10 does, and these tests pin down:
  - A "CC" or "BCC" header holding an array of longstr adds routing keys: the message is
    routed by the exchange it is published to with its routing key plus each of them.
    A queue matched several times gets one copy.
  - BCC is removed from the message before it is enqueued; CC is delivered as sent.
    The delivery's routing key is the one from basic.publish.
  - The header names are case-sensitive ("cc" is an ordinary header). Array elements
    that are not strings are ignored; a CC/BCC that is not an array closes the channel
    with 406 "invalid message: {unacceptable_type_in_header,...}".
  - A message routed only by its CC keys is routed: mandatory does not return it.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402
import pytest  # noqa: E402

from helpers.clients import (pika_bodies, pika_channel_error, pika_get_all,  # noqa: E402
                             queue_counts)


def confirmed_channel(conn):
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish(channel, exchange, routing_key, body=b"x", mandatory=False, **props):
    channel.basic_publish(exchange, routing_key, body, pika.BasicProperties(**props),
                          mandatory=mandatory)


def direct_with_queues(ch, uniq, *keys):
    """A direct exchange with one queue per key (bound with that key)."""
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct")
    queues = {}
    for key in keys:
        queue = uniq(key)
        ch.queue_declare(queue)
        ch.queue_bind(queue, exchange, key)
        queues[key] = queue
    return exchange, queues


def test_cc_routes_to_extra_keys_and_is_kept(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main", "copy1", "copy2", "other")
    publish(ch, exchange, "main", b"memo", headers={"CC": ["copy1", "copy2"], "h": 1})
    for key in ("main", "copy1", "copy2"):
        [(method, props, body)] = pika_get_all(ch, queues[key])
        assert body == b"memo"
        assert method.routing_key == "main"
        assert method.exchange == exchange
        assert props.headers == {"CC": ["copy1", "copy2"], "h": 1}
    assert queue_counts(ch, queues["other"]) == (0, 0)


def test_bcc_routes_to_extra_keys_and_is_removed(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main", "secret")
    publish(ch, exchange, "main", headers={"BCC": ["secret"], "h": "v"})
    for key in ("main", "secret"):
        [(method, props, _)] = pika_get_all(ch, queues[key])
        assert method.routing_key == "main"
        assert props.headers == {"h": "v"}


def test_bcc_only_header_leaves_an_empty_table(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main", "secret")
    publish(ch, exchange, "main", headers={"BCC": ["secret"]})
    [(_, props, _)] = pika_get_all(ch, queues["secret"])
    assert not props.headers   # {} or absent: no BCC either way
    [(_, props, _)] = pika_get_all(ch, queues["main"])
    assert not props.headers


def test_cc_and_bcc_together(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "to", "cc", "bcc")
    publish(ch, exchange, "to", headers={"CC": ["cc"], "BCC": ["bcc"]})
    for key in ("to", "cc", "bcc"):
        [(_, props, _)] = pika_get_all(ch, queues[key])
        assert props.headers == {"CC": ["cc"]}


def test_cc_on_the_default_exchange_names_queues(conn, uniq):
    ch = confirmed_channel(conn)
    first, second, third = uniq("a"), uniq("b"), uniq("c")
    for queue in (first, second, third):
        ch.queue_declare(queue)
    publish(ch, "", first, b"m", headers={"CC": [second], "BCC": [third]})
    for queue in (first, second, third):
        assert pika_bodies(pika_get_all(ch, queue)) == [b"m"]


def test_cc_keys_are_matched_by_topic_patterns(conn, uniq):
    ch = confirmed_channel(conn)
    exchange = uniq("topic")
    ch.exchange_declare(exchange, "topic")
    eu, us, all_ = uniq("eu"), uniq("us"), uniq("all")
    for queue, pattern in ((eu, "orders.eu.*"), (us, "orders.us.*"), (all_, "orders.#")):
        ch.queue_declare(queue)
        ch.queue_bind(queue, exchange, pattern)
    publish(ch, exchange, "orders.eu.new", headers={"CC": ["orders.us.new"]})
    assert queue_counts(ch, eu) == (1, 0)
    assert queue_counts(ch, us) == (1, 0)
    # Matched by the routing key and by the CC key: still one copy.
    assert queue_counts(ch, all_) == (1, 0)


def test_queue_matched_by_several_keys_gets_one_copy(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "k")
    ch.queue_bind(queues["k"], exchange, "alias")
    publish(ch, exchange, "k", headers={"CC": ["k", "alias"], "BCC": ["alias", "k"]})
    assert queue_counts(ch, queues["k"]) == (1, 0)


def test_mandatory_message_routed_only_by_cc_is_not_returned(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "copy")
    publish(ch, exchange, "unbound", mandatory=True, headers={"CC": ["copy"]})
    assert queue_counts(ch, queues["copy"]) == (1, 0)


def test_mandatory_message_routed_only_by_bcc_is_not_returned(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "copy")
    publish(ch, exchange, "unbound", mandatory=True, headers={"BCC": ["copy"]})
    assert queue_counts(ch, queues["copy"]) == (1, 0)


def test_mandatory_message_with_unroutable_cc_is_returned(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, _ = direct_with_queues(ch, uniq)
    with pytest.raises(pika.exceptions.UnroutableError) as info:
        publish(ch, exchange, "unbound", mandatory=True,
                headers={"CC": ["nowhere"], "BCC": ["nowhere"]})
    [returned] = info.value.messages
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    # The returned message is the one as enqueued would be: BCC already removed.
    assert returned.properties.headers == {"CC": ["nowhere"]}


def test_header_names_are_case_sensitive(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main", "copy")
    publish(ch, exchange, "main", headers={"cc": ["copy"], "bcc": ["copy"], "Cc": ["copy"]})
    assert queue_counts(ch, queues["copy"]) == (0, 0)
    [(_, props, _)] = pika_get_all(ch, queues["main"])
    assert props.headers == {"cc": ["copy"], "bcc": ["copy"], "Cc": ["copy"]}


def test_non_string_array_elements_are_ignored(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main", "copy")
    publish(ch, exchange, "main", headers={"CC": [5, "copy", True]})
    assert queue_counts(ch, queues["main"]) == (1, 0)
    assert queue_counts(ch, queues["copy"]) == (1, 0)


def test_empty_cc_array_is_fine(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main")
    publish(ch, exchange, "main", headers={"CC": [], "BCC": []})
    [(_, props, _)] = pika_get_all(ch, queues["main"])
    assert props.headers == {"CC": []}


@pytest.mark.parametrize("header, value, kind", [
    ("CC", "copy", "longstr"),
    ("BCC", "copy", "longstr"),
    ("CC", 5, "signedint"),
    ("BCC", {"k": "copy"}, "table"),
])
def test_non_array_cc_or_bcc_closes_the_channel(conn, uniq, header, value, kind):
    ch = confirmed_channel(conn)
    exchange, queues = direct_with_queues(ch, uniq, "main", "copy")
    code, text = pika_channel_error(
        lambda: publish(ch, exchange, "main", headers={header: value}))
    assert code == 406
    assert text == (f'PRECONDITION_FAILED - invalid message: '
                    f'{{unacceptable_type_in_header,"{header}",{kind}}}')
    assert conn.is_open
    check = conn.channel()
    assert queue_counts(check, queues["main"]) == (0, 0)
    assert queue_counts(check, queues["copy"]) == (0, 0)


def test_cc_on_fanout_exchange_does_not_duplicate(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, queue = uniq("fan"), uniq("q")
    ch.exchange_declare(exchange, "fanout")
    ch.queue_declare(queue)
    ch.queue_bind(queue, exchange)
    publish(ch, exchange, "a", headers={"CC": ["b", "c"], "BCC": ["d"]})
    assert queue_counts(ch, queue) == (1, 0)
