"""Alternate exchanges: the alternate-exchange argument of exchange.declare.

What RabbitMQ 3.10 does, and these tests pin down:
  - A message the exchange routes to no queue is republished to its alternate exchange
    (AE) with the same routing key, and so on along a chain of AEs (a cycle of AEs is
    walked once). The delivered message names the exchange it was published to.
  - Only when no exchange of the chain routes it is the message unroutable: returned
    with 312 NO_ROUTE if mandatory (then confirmed with basic.ack), else dropped. An
    AE that does not exist counts as routing nowhere.
  - mandatory + routed via the AE: no basic.return.
  - The AE may be internal, and need not exist when the exchange is declared. The
    argument must be a longstr; redeclaring with another AE fails with the usual
    inequivalent-arg error.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))

import pika  # noqa: E402
import pika.exceptions  # noqa: E402

from helpers.clients import (pika_bodies, pika_channel_error, pika_get_all,  # noqa: E402
                             pika_process_until, queue_counts)


def confirmed_channel(conn):
    channel = conn.channel()
    channel.confirm_delivery()
    return channel


def publish_outcome(channel, exchange, routing_key, body=b"x", mandatory=False):
    """Publish on a confirm channel: ("ack", None), ("returned", method) or ("nack", _)."""
    try:
        channel.basic_publish(exchange, routing_key, body, mandatory=mandatory)
    except pika.exceptions.UnroutableError as e:
        [returned] = e.messages
        return "returned", returned.method
    except pika.exceptions.NackError:
        return "nack", None
    return "ack", None


def exchange_with_ae(ch, uniq, kind="direct", ae_kind="fanout"):
    """An exchange (with one queue bound under "routed") and its AE (one queue bound
    to it, with an empty key). Returns (exchange, ae, main_queue, ae_queue)."""
    exchange, ae, main_queue, ae_queue = uniq("x"), uniq("ae"), uniq("main"), uniq("aeq")
    ch.exchange_declare(ae, ae_kind)
    ch.exchange_declare(exchange, kind, arguments={"alternate-exchange": ae})
    ch.queue_declare(main_queue)
    ch.queue_bind(main_queue, exchange, "routed")
    ch.queue_declare(ae_queue)
    ch.queue_bind(ae_queue, ae, "")
    return exchange, ae, main_queue, ae_queue


def test_unroutable_message_goes_to_alternate_exchange(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, main_queue, ae_queue = exchange_with_ae(ch, uniq)
    assert publish_outcome(ch, exchange, "unbound-key", b"lost")[0] == "ack"
    [(method, props, body)] = pika_get_all(ch, ae_queue)
    assert body == b"lost"
    # The delivery names the exchange it was published to, and its routing key.
    assert method.exchange == exchange
    assert method.routing_key == "unbound-key"
    assert queue_counts(ch, main_queue) == (0, 0)


def test_routable_message_does_not_go_to_alternate_exchange(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, main_queue, ae_queue = exchange_with_ae(ch, uniq)
    publish_outcome(ch, exchange, "routed", b"found")
    assert pika_bodies(pika_get_all(ch, main_queue)) == [b"found"]
    assert queue_counts(ch, ae_queue) == (0, 0)


def test_alternate_exchange_routes_by_the_original_routing_key(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, main_queue, _ = exchange_with_ae(ch, uniq, ae_kind="direct")
    red, blue = uniq("red"), uniq("blue")
    for queue, key in ((red, "red"), (blue, "blue")):
        ch.queue_declare(queue)
        ch.queue_bind(queue, ae, key)
    publish_outcome(ch, exchange, "red", b"r")
    publish_outcome(ch, exchange, "blue", b"b")
    assert pika_bodies(pika_get_all(ch, red)) == [b"r"]
    assert pika_bodies(pika_get_all(ch, blue)) == [b"b"]


def test_properties_are_kept_through_the_alternate_exchange(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, _, ae_queue = exchange_with_ae(ch, uniq)
    ch.basic_publish(exchange, "nowhere", b"x",
                     pika.BasicProperties(content_type="text/plain", headers={"h": "v"},
                                          priority=4, message_id="m1"))
    [(method, props, body)] = pika_get_all(ch, ae_queue)
    assert (props.content_type, props.headers, props.priority, props.message_id) == (
        "text/plain", {"h": "v"}, 4, "m1")


def test_mandatory_message_routed_by_alternate_exchange_is_not_returned(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, _, ae_queue = exchange_with_ae(ch, uniq)
    assert publish_outcome(ch, exchange, "nowhere", mandatory=True) == ("ack", None)
    assert queue_counts(ch, ae_queue) == (1, 0)


def test_mandatory_message_unroutable_by_alternate_exchange_is_returned(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae = uniq("x"), uniq("ae")
    ch.exchange_declare(ae, "direct")
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": ae})
    outcome, method = publish_outcome(ch, exchange, "nowhere", mandatory=True)
    assert outcome == "returned"
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == exchange
    assert method.routing_key == "nowhere"


def test_return_without_confirms(conn, uniq):
    ch = conn.channel()
    exchange, ae = uniq("x"), uniq("ae")
    ch.exchange_declare(ae, "direct")
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": ae})
    returned = []
    ch.add_on_return_callback(lambda c, method, props, body: returned.append((method, body)))
    ch.basic_publish(exchange, "k", b"back", mandatory=True)
    assert pika_process_until(conn, lambda: returned, timeout=3)
    [(method, body)] = returned
    assert (method.reply_code, method.reply_text, method.exchange, method.routing_key,
            body) == (312, "NO_ROUTE", exchange, "k", b"back")


def test_missing_alternate_exchange_drops_or_returns(conn, uniq):
    ch = confirmed_channel(conn)
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": uniq("ghost")})
    assert publish_outcome(ch, exchange, "k") == ("ack", None)
    outcome, method = publish_outcome(ch, exchange, "k", mandatory=True)
    assert outcome == "returned"
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert ch.is_open


def test_alternate_exchange_declared_later_is_used(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, ae_queue = uniq("x"), uniq("ae"), uniq("aeq")
    ch.exchange_declare(exchange, "topic", arguments={"alternate-exchange": ae})
    ch.exchange_declare(ae, "fanout")
    ch.queue_declare(ae_queue)
    ch.queue_bind(ae_queue, ae)
    publish_outcome(ch, exchange, "a.b")
    assert queue_counts(ch, ae_queue) == (1, 0)


def test_chain_of_alternate_exchanges(conn, uniq):
    ch = confirmed_channel(conn)
    first, second, third, queue = uniq("x1"), uniq("x2"), uniq("x3"), uniq("q")
    ch.exchange_declare(third, "fanout")
    ch.exchange_declare(second, "direct", arguments={"alternate-exchange": third})
    ch.exchange_declare(first, "direct", arguments={"alternate-exchange": second})
    ch.queue_declare(queue)
    ch.queue_bind(queue, third)
    assert publish_outcome(ch, first, "k", b"deep", mandatory=True) == ("ack", None)
    [(method, _, body)] = pika_get_all(ch, queue)
    assert (method.exchange, method.routing_key, body) == (first, "k", b"deep")


def test_cycle_of_alternate_exchanges_terminates(conn, uniq):
    ch = confirmed_channel(conn)
    one, two = uniq("x1"), uniq("x2")
    ch.exchange_declare(one, "direct", arguments={"alternate-exchange": two})
    ch.exchange_declare(two, "direct", arguments={"alternate-exchange": one})
    outcome, method = publish_outcome(ch, one, "k", mandatory=True)
    assert outcome == "returned"
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    # A queue reachable in the cycle gets exactly one copy.
    queue = uniq("q")
    ch.queue_declare(queue)
    ch.queue_bind(queue, two, "k")
    assert publish_outcome(ch, one, "k", mandatory=True) == ("ack", None)
    time.sleep(0.1)
    assert queue_counts(ch, queue) == (1, 0)


def test_exchange_that_is_its_own_alternate(conn, uniq):
    ch = confirmed_channel(conn)
    exchange = uniq("x")
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": exchange})
    outcome, method = publish_outcome(ch, exchange, "k", mandatory=True)
    assert outcome == "returned"
    assert method.reply_code == 312


def test_internal_exchange_can_be_an_alternate_exchange(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, queue = uniq("x"), uniq("ae"), uniq("q")
    ch.exchange_declare(ae, "fanout", internal=True)
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": ae})
    ch.queue_declare(queue)
    ch.queue_bind(queue, ae)
    assert publish_outcome(ch, exchange, "k", mandatory=True) == ("ack", None)
    assert queue_counts(ch, queue) == (1, 0)


def test_cc_key_that_routes_bypasses_the_alternate_exchange(conn, uniq):
    """CC keys count as routing: if a CC key reaches a queue the AE is not used."""
    ch = confirmed_channel(conn)
    exchange, ae, main_queue, ae_queue = exchange_with_ae(ch, uniq)
    ch.basic_publish(exchange, "nowhere", b"cc",
                     pika.BasicProperties(headers={"CC": ["routed"]}))
    assert queue_counts(ch, main_queue) == (1, 0)
    assert queue_counts(ch, ae_queue) == (0, 0)


def test_fanout_exchange_with_no_bindings_uses_alternate_exchange(conn, uniq):
    ch = confirmed_channel(conn)
    exchange, ae, queue = uniq("x"), uniq("ae"), uniq("q")
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(exchange, "fanout", arguments={"alternate-exchange": ae})
    ch.queue_declare(queue)
    ch.queue_bind(queue, ae)
    publish_outcome(ch, exchange, "")
    assert queue_counts(ch, queue) == (1, 0)


def test_non_string_alternate_exchange_is_rejected(ch, uniq):
    exchange = uniq("x")
    code, text = pika_channel_error(lambda: ch.exchange_declare(
        exchange, "direct", arguments={"alternate-exchange": 5}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - invalid type 'signedint' for arg "
                    f"'alternate-exchange' in exchange '{exchange}' in vhost '/'")


def test_redeclare_with_another_alternate_exchange_fails(conn, uniq):
    exchange = uniq("x")
    ch = conn.channel()
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": "ae-one"})
    ch.exchange_declare(exchange, "direct", arguments={"alternate-exchange": "ae-one"})
    code, text = pika_channel_error(lambda: ch.exchange_declare(
        exchange, "direct", arguments={"alternate-exchange": "ae-two"}))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange "
                    f"'{exchange}' in vhost '/': received 'ae-two' but current is 'ae-one'")
    ch = conn.channel()
    code, text = pika_channel_error(lambda: ch.exchange_declare(exchange, "direct"))
    assert code == 406
    assert text == (f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange "
                    f"'{exchange}' in vhost '/': received none but current is the value "
                    f"'ae-one' of type 'longstr'")
