"""RabbitMQ's seven tutorials, run with pika and with py-amqp (and aio-pika for two).

1 hello world, 2 work queues (fair dispatch with prefetch 1), 3 publish/subscribe
(fanout + exclusive server-named queues), 4 routing (direct), 5 topics, 6 RPC
(reply_to + correlation_id, plus direct reply-to), 7 publisher confirms (individual,
batch, asynchronous with the multiple flag). These are what real applications do first,
so they are the first thing Warren must get right.
"""
import asyncio
import threading
import time
import uuid

import amqp
import pika
import pika.spec
import pytest

from helpers.clients import (amqp_connect, amqp_drain, amqp_drain_until, pika_bodies,
                             pika_connect, pika_drain, pika_get_all, pika_params,
                             pika_process_until, amqp_url, wait_queue_counts)


# ---------------------------------------------------------------------------
# 1. Hello world
# ---------------------------------------------------------------------------

def test_hello_world_pika(broker, uniq):
    queue = uniq("hello")
    sender = pika_connect(broker)
    sender.channel().queue_declare(queue)
    sender.channel().basic_publish("", queue, b"Hello World!")
    sender.close()

    receiver = pika_connect(broker)
    try:
        ch = receiver.channel()
        ch.queue_declare(queue)
        got = pika_drain(ch, queue, 1)
        assert pika_bodies(got) == [b"Hello World!"]
        assert got[0][0].routing_key == queue
        ch.queue_delete(queue)
    finally:
        receiver.close()


def test_hello_world_py_amqp(broker, uniq):
    queue = uniq("hello")
    with amqp_connect(broker) as sender:
        ch = sender.channel()
        ch.queue_declare(queue, auto_delete=False)
        ch.basic_publish(amqp.Message(b"Hello World!"), "", queue)
    receiver = amqp_connect(broker)
    try:
        ch = receiver.channel()
        ch.queue_declare(queue, auto_delete=False)
        got = amqp_drain(receiver, ch, queue, 1)
        assert [m.body for m in got] == [b"Hello World!"]
        ch.queue_delete(queue)
    finally:
        receiver.close()


def test_hello_world_aio_pika(broker, uniq):
    import aio_pika
    queue_name = uniq("hello")

    async def scenario():
        connection = await aio_pika.connect(amqp_url(broker), timeout=5)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, auto_delete=True)
            await channel.default_exchange.publish(aio_pika.Message(b"Hello World!"), routing_key=queue_name)
            async with queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        return message.body

    assert asyncio.run(asyncio.wait_for(scenario(), 15)) == b"Hello World!"


# ---------------------------------------------------------------------------
# 2. Work queues: persistent tasks, manual acks, fair dispatch with prefetch 1
# ---------------------------------------------------------------------------

TASKS = 20
SLOW_ACK_DELAY = 0.4


def test_work_queue_fair_dispatch_pika(broker, uniq):
    queue = uniq("task")
    conn = pika_connect(broker)
    try:
        setup = conn.channel()
        setup.queue_declare(queue, durable=True)
        for i in range(TASKS):
            setup.basic_publish("", queue, b"task %d" % i,
                                pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
        done = {"fast": [], "slow": []}

        def worker(name, delay):
            ch = conn.channel()
            ch.basic_qos(prefetch_count=1)

            def on_message(channel, method, properties, body):
                def finish():
                    done[name].append(body)
                    channel.basic_ack(method.delivery_tag)
                if delay:
                    conn.call_later(delay, finish)
                else:
                    finish()
            ch.basic_consume(queue, on_message)

        worker("slow", SLOW_ACK_DELAY)
        worker("fast", 0)
        assert pika_process_until(conn, lambda: len(done["fast"]) + len(done["slow"]) == TASKS,
                                  timeout=15)
        assert sorted(done["fast"] + done["slow"]) == sorted(b"task %d" % i for i in range(TASKS))
        assert len(done["slow"]) < len(done["fast"])
        assert len(done["slow"]) <= 3, done
        conn.channel().queue_delete(queue)
    finally:
        conn.close()


def test_work_queue_fair_dispatch_py_amqp(broker, uniq):
    queue = uniq("task")
    publisher = amqp_connect(broker)
    fast_conn, slow_conn = amqp_connect(broker), amqp_connect(broker)
    try:
        ch = publisher.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        for i in range(TASKS):
            ch.basic_publish(amqp.Message(b"task %d" % i, delivery_mode=2), "", queue)
        done = {"fast": [], "slow": []}
        pending_slow = []

        fast_ch = fast_conn.channel()
        fast_ch.basic_qos(0, 1, False)

        def on_fast(message):
            done["fast"].append(message.body)
            fast_ch.basic_ack(message.delivery_tag)
        fast_tag = fast_ch.basic_consume(queue, callback=on_fast)

        slow_ch = slow_conn.channel()
        slow_ch.basic_qos(0, 1, False)
        slow_tag = slow_ch.basic_consume(queue, callback=lambda m: pending_slow.append((time.monotonic(), m)))

        deadline = time.monotonic() + 15
        while len(done["fast"]) + len(done["slow"]) < TASKS and time.monotonic() < deadline:
            for c in (slow_conn, fast_conn):
                try:
                    c.drain_events(timeout=0.02)
                except TimeoutError:
                    pass
            while pending_slow and time.monotonic() - pending_slow[0][0] >= SLOW_ACK_DELAY:
                _, message = pending_slow.pop(0)
                done["slow"].append(message.body)
                slow_ch.basic_ack(message.delivery_tag)
        assert sorted(done["fast"] + done["slow"]) == sorted(b"task %d" % i for i in range(TASKS))
        assert len(done["slow"]) <= 3, done
        fast_ch.basic_cancel(fast_tag)
        slow_ch.basic_cancel(slow_tag)
        ch.queue_delete(queue)
    finally:
        for c in (publisher, fast_conn, slow_conn):
            c.close()


def test_work_queue_tasks_survive_worker_crash(broker, uniq):
    """A worker that dies without acking: its task goes to the next worker."""
    queue = uniq("task")
    conn = pika_connect(broker)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True)
        ch.basic_publish("", queue, b"important", pika.BasicProperties(delivery_mode=2))
        crashing = pika_connect(broker)
        cch = crashing.channel()
        cch.basic_qos(prefetch_count=1)
        got = []
        cch.basic_consume(queue, lambda c, m, p, b: got.append(b))
        assert pika_process_until(crashing, lambda: got)
        crashing.close()        # dies with the task unacked
        redelivered = pika_drain(ch, queue, 1, auto_ack=False)
        assert pika_bodies(redelivered) == [b"important"]
        assert redelivered[0][0].redelivered is True
        ch.queue_delete(queue)
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# 3. Publish/subscribe
# ---------------------------------------------------------------------------

def test_publish_subscribe_pika(broker, uniq):
    exchange = uniq("logs")
    subscribers = []
    for _ in range(2):
        c = pika_connect(broker)
        ch = c.channel()
        ch.exchange_declare(exchange, "fanout")
        queue = ch.queue_declare("", exclusive=True).method.queue
        assert queue.startswith("amq.gen-")
        ch.queue_bind(queue, exchange)
        subscribers.append((c, ch, queue))
    assert subscribers[0][2] != subscribers[1][2]
    publisher = pika_connect(broker)
    try:
        pch = publisher.channel()
        for i in range(5):
            pch.basic_publish(exchange, "", b"log %d" % i)
        for c, ch, queue in subscribers:
            assert pika_bodies(pika_drain(ch, queue, 5)) == [b"log %d" % i for i in range(5)]
        pch.exchange_delete(exchange)
    finally:
        publisher.close()
        for c, _, _ in subscribers:
            c.close()


def test_publish_subscribe_py_amqp(broker, uniq):
    exchange = uniq("logs")
    conns = [amqp_connect(broker) for _ in range(3)]
    try:
        subscribers = []
        for c in conns[:2]:
            ch = c.channel()
            ch.exchange_declare(exchange, "fanout", auto_delete=False)
            queue, _, _ = ch.queue_declare("", exclusive=True)
            assert queue.startswith("amq.gen-")
            ch.queue_bind(queue, exchange)
            subscribers.append((c, ch, queue))
        pch = conns[2].channel()
        for i in range(5):
            pch.basic_publish(amqp.Message(b"log %d" % i), exchange)
        for c, ch, queue in subscribers:
            assert [m.body for m in amqp_drain(c, ch, queue, 5)] == [b"log %d" % i for i in range(5)]
        pch.exchange_delete(exchange)
    finally:
        for c in conns:
            c.close()


def test_messages_published_before_subscribe_are_not_seen(ch, uniq):
    exchange = uniq("logs")
    ch.exchange_declare(exchange, "fanout")
    ch.basic_publish(exchange, "", b"nobody listening")
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, exchange)
    ch.basic_publish(exchange, "", b"heard")
    assert pika_bodies(pika_get_all(ch, queue)) == [b"heard"]
    ch.exchange_delete(exchange)


# ---------------------------------------------------------------------------
# 4. Routing
# ---------------------------------------------------------------------------

SEVERITIES = ["info", "warning", "error"]


def test_routing_direct_pika(ch, uniq):
    exchange = uniq("direct_logs")
    ch.exchange_declare(exchange, "direct")
    errors = ch.queue_declare("", exclusive=True).method.queue
    everything = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(errors, exchange, "error")
    for severity in SEVERITIES:
        ch.queue_bind(everything, exchange, severity)
    for severity in SEVERITIES + ["debug"]:
        ch.basic_publish(exchange, severity, severity.encode())
    assert pika_bodies(pika_get_all(ch, errors)) == [b"error"]
    assert pika_bodies(pika_get_all(ch, everything)) == [b"info", b"warning", b"error"]
    ch.exchange_delete(exchange)


def test_routing_direct_py_amqp(amqp_conn, uniq):
    ch = amqp_conn.channel()
    exchange = uniq("direct_logs")
    ch.exchange_declare(exchange, "direct", auto_delete=False)
    queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
    ch.queue_bind(queue, exchange, "warning")
    ch.queue_bind(queue, exchange, "error")
    for severity in SEVERITIES:
        ch.basic_publish(amqp.Message(severity.encode()), exchange, severity)
    got = amqp_drain(amqp_conn, ch, queue, 2)
    assert [(m.body, m.delivery_info["routing_key"]) for m in got] == [
        (b"warning", "warning"), (b"error", "error")]
    assert amqp_drain(amqp_conn, ch, queue, 1, timeout=0.3) == []
    ch.exchange_delete(exchange)


# ---------------------------------------------------------------------------
# 5. Topics
# ---------------------------------------------------------------------------

TOPIC_CASES = [
    ("quick.orange.rabbit", {"q1", "q2"}),
    ("lazy.orange.elephant", {"q1", "q2"}),
    ("quick.orange.fox", {"q1"}),
    ("lazy.brown.fox", {"q2"}),
    ("lazy.pink.rabbit", {"q2"}),          # matches two q2 bindings, delivered once
    ("quick.brown.fox", set()),
    ("orange", set()),
    ("quick.orange.new.rabbit", set()),
    ("lazy.orange.new.rabbit", {"q2"}),
]


def topic_setup_pika(ch, exchange):
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, exchange, "*.orange.*")
    ch.queue_bind(q2, exchange, "*.*.rabbit")
    ch.queue_bind(q2, exchange, "lazy.#")
    return {"q1": q1, "q2": q2}


@pytest.mark.parametrize("own_exchange", [False, True], ids=["amq.topic", "own-exchange"])
def test_topics_pika(ch, uniq, own_exchange):
    exchange = uniq("topic_logs") if own_exchange else "amq.topic"
    if own_exchange:
        ch.exchange_declare(exchange, "topic")
    queues = topic_setup_pika(ch, exchange)
    for key, _ in TOPIC_CASES:
        ch.basic_publish(exchange, key, key.encode())
    for name, queue in queues.items():
        expected = [key.encode() for key, targets in TOPIC_CASES if name in targets]
        assert pika_bodies(pika_get_all(ch, queue)) == expected, name
    if own_exchange:
        ch.exchange_delete(exchange)
    else:
        for queue in queues.values():
            ch.queue_delete(queue)


def test_topics_py_amqp(amqp_conn, uniq):
    ch = amqp_conn.channel()
    exchange = uniq("topic_logs")
    ch.exchange_declare(exchange, "topic", auto_delete=False)
    queues = {}
    for name, patterns in (("q1", ["*.orange.*"]), ("q2", ["*.*.rabbit", "lazy.#"])):
        queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
        for pattern in patterns:
            ch.queue_bind(queue, exchange, pattern)
        queues[name] = queue
    for key, _ in TOPIC_CASES:
        ch.basic_publish(amqp.Message(key.encode()), exchange, key)
    for name, queue in queues.items():
        expected = [key.encode() for key, targets in TOPIC_CASES if name in targets]
        got = amqp_drain(amqp_conn, ch, queue, len(expected))
        assert [m.body for m in got] == expected, name
    ch.exchange_delete(exchange)


def test_topic_hash_alone_receives_everything(ch):
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "amq.topic", "#")
    try:
        keys = ["a", "a.b", "a.b.c", ""]
        for key in keys:
            ch.basic_publish("amq.topic", key, key.encode())
        assert pika_bodies(pika_get_all(ch, queue)) == [k.encode() for k in keys]
    finally:
        ch.queue_delete(queue)


# ---------------------------------------------------------------------------
# 6. RPC
# ---------------------------------------------------------------------------

def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def start_pika_rpc_server(conn, queue):
    server = conn.channel()
    server.queue_declare(queue)
    server.basic_qos(prefetch_count=1)

    def on_request(channel, method, props, body):
        response = str(fib(int(body))).encode()
        channel.basic_publish("", props.reply_to, response,
                              pika.BasicProperties(correlation_id=props.correlation_id))
        channel.basic_ack(method.delivery_tag)
    server.basic_consume(queue, on_request)
    return server


def test_rpc_pika(broker, uniq):
    queue = uniq("rpc_queue")
    conn = pika_connect(broker)
    try:
        server = start_pika_rpc_server(conn, queue)
        client = conn.channel()
        callback_queue = client.queue_declare("", exclusive=True).method.queue
        responses = {}
        client.basic_consume(callback_queue, lambda c, m, p, b: responses.__setitem__(p.correlation_id, b),
                             auto_ack=True)
        calls = {}
        for n in (1, 10, 30):
            corr = str(uuid.uuid4())
            calls[corr] = n
            client.basic_publish("", queue, str(n).encode(),
                                 pika.BasicProperties(reply_to=callback_queue, correlation_id=corr))
        assert pika_process_until(conn, lambda: len(responses) == 3)
        for corr, n in calls.items():
            assert responses[corr] == str(fib(n)).encode()
        server.queue_delete(queue)
    finally:
        conn.close()


def test_rpc_py_amqp(broker, uniq):
    queue = uniq("rpc_queue")
    server_conn, client_conn = amqp_connect(broker), amqp_connect(broker)
    try:
        server = server_conn.channel()
        server.queue_declare(queue, auto_delete=False)
        server.basic_qos(0, 1, False)

        def on_request(message):
            n = int(message.body)
            server.basic_publish(amqp.Message(str(fib(n)).encode(), correlation_id=message.correlation_id),
                                 "", message.reply_to)
            server.basic_ack(message.delivery_tag)
        server_tag = server.basic_consume(queue, callback=on_request)

        client = client_conn.channel()
        callback_queue, _, _ = client.queue_declare("", exclusive=True)
        responses = {}
        client.basic_consume(callback_queue, no_ack=True,
                             callback=lambda m: responses.__setitem__(m.correlation_id, m.body))
        corr = str(uuid.uuid4())
        client.basic_publish(amqp.Message(b"20", reply_to=callback_queue, correlation_id=corr), "", queue)
        deadline = time.monotonic() + 10
        while corr not in responses and time.monotonic() < deadline:
            for c in (server_conn, client_conn):
                try:
                    c.drain_events(timeout=0.05)
                except TimeoutError:
                    pass
        assert responses[corr] == str(fib(20)).encode()
        server.basic_cancel(server_tag)
        server.queue_delete(queue)
    finally:
        server_conn.close()
        client_conn.close()


def test_rpc_direct_reply_to_pika(broker, uniq):
    """RabbitMQ's direct reply-to pseudo-queue (capability direct_reply_to)."""
    queue = uniq("rpc_queue")
    conn = pika_connect(broker)
    try:
        seen_reply_to = []
        server = conn.channel()
        server.queue_declare(queue)

        def on_request(channel, method, props, body):
            seen_reply_to.append(props.reply_to)
            channel.basic_publish("", props.reply_to, b"pong",
                                  pika.BasicProperties(correlation_id=props.correlation_id))
            channel.basic_ack(method.delivery_tag)
        server.basic_consume(queue, on_request)

        client = conn.channel()
        replies = []
        client.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p.correlation_id, b)),
                             auto_ack=True)
        client.basic_publish("", queue, b"ping", pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id="c1"))
        assert pika_process_until(conn, lambda: replies)
        assert replies == [("c1", b"pong")]
        assert seen_reply_to[0].startswith("amq.rabbitmq.reply-to.")
        server.queue_delete(queue)
    finally:
        conn.close()


def test_rpc_aio_pika(broker, uniq):
    import aio_pika
    queue_name = uniq("rpc_queue")

    async def scenario():
        connection = await aio_pika.connect(amqp_url(broker), timeout=5)
        async with connection:
            channel = await connection.channel()
            requests = await channel.declare_queue(queue_name, auto_delete=True)

            async def serve(message):
                async with message.process():
                    n = int(message.body)
                    await channel.default_exchange.publish(
                        aio_pika.Message(str(fib(n)).encode(), correlation_id=message.correlation_id),
                        routing_key=message.reply_to)
            await requests.consume(serve)

            callback_queue = await channel.declare_queue(exclusive=True)
            future = asyncio.get_running_loop().create_future()

            async def on_response(message):
                async with message.process():
                    if message.correlation_id == "corr-aio":
                        future.set_result(message.body)
            await callback_queue.consume(on_response)
            await channel.default_exchange.publish(
                aio_pika.Message(b"15", reply_to=callback_queue.name, correlation_id="corr-aio"),
                routing_key=queue_name)
            return await future

    assert asyncio.run(asyncio.wait_for(scenario(), 15)) == str(fib(15)).encode()


# ---------------------------------------------------------------------------
# 7. Publisher confirms
# ---------------------------------------------------------------------------

CONFIRM_COUNT = 300


def test_confirms_individual_pika(ch, uniq):
    queue = uniq("confirms")
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    for i in range(50):
        ch.basic_publish("", queue, b"c%d" % i, pika.BasicProperties(delivery_mode=2))   # waits for ack
    assert wait_queue_counts(ch, queue, (50, 0)) == (50, 0)
    ch.queue_delete(queue)


def test_confirms_individual_py_amqp(broker, uniq):
    queue = uniq("confirms")
    conn = amqp_connect(broker, confirm_publish=True)
    try:
        ch = conn.channel()
        ch.queue_declare(queue, durable=True, auto_delete=False)
        for i in range(50):
            ch.basic_publish(amqp.Message(b"c%d" % i, delivery_mode=2), "", queue, confirm_timeout=5)
        assert ch.queue_declare(queue, passive=True)[1] == 50
        ch.queue_delete(queue)
    finally:
        conn.close()


def test_confirms_batch_py_amqp(amqp_conn, uniq):
    ch = amqp_conn.channel()
    queue = uniq("confirms")
    ch.queue_declare(queue, durable=True, auto_delete=False)
    ch.confirm_select()
    acked = set()

    def on_ack(delivery_tag, multiple):
        if multiple:
            acked.update(range(1, delivery_tag + 1))
        else:
            acked.add(delivery_tag)
    ch.events["basic_ack"].add(on_ack)
    ch.events["basic_nack"].add(lambda tag, multiple: pytest.fail(f"nack for {tag}"))
    batch = 50
    for start in range(0, 200, batch):
        for i in range(start, start + batch):
            ch.basic_publish(amqp.Message(b"b%d" % i, delivery_mode=2), "", queue)
        # Wait for the whole batch before publishing the next one.
        assert amqp_drain_until(amqp_conn, lambda: len(acked) >= start + batch)
    assert acked == set(range(1, 201))
    ch.queue_delete(queue)


def test_confirms_batch_pika_tx_style(ch, uniq):
    """pika's blocking channel confirms each publish; a batch is N publishes then a check."""
    queue = uniq("confirms")
    ch.queue_declare(queue, durable=True)
    ch.confirm_delivery()
    for i in range(100):
        ch.basic_publish("", queue, b"x", pika.BasicProperties(delivery_mode=2))
    assert wait_queue_counts(ch, queue, (100, 0)) == (100, 0)
    ch.queue_delete(queue)


def test_confirms_async_with_multiple_py_amqp(amqp_conn, uniq):
    ch = amqp_conn.channel()
    queue = uniq("confirms")
    ch.queue_declare(queue, durable=True, auto_delete=False)
    ch.confirm_select()
    outstanding = set()
    events = []

    def on_ack(delivery_tag, multiple):
        events.append((delivery_tag, multiple))
        covered = {t for t in outstanding if t <= delivery_tag} if multiple else {delivery_tag}
        assert covered <= outstanding, f"ack for unknown or already confirmed tag {delivery_tag}"
        outstanding.difference_update(covered)
    ch.events["basic_ack"].add(on_ack)
    for tag in range(1, CONFIRM_COUNT + 1):
        outstanding.add(tag)
        ch.basic_publish(amqp.Message(b"a", delivery_mode=2), "", queue)
    assert amqp_drain_until(amqp_conn, lambda: not outstanding, timeout=15)
    tags = [tag for tag, _ in events]
    assert tags == sorted(tags), "confirms must arrive in increasing tag order"
    assert tags[-1] == CONFIRM_COUNT
    ch.queue_delete(queue)


def test_confirms_async_with_multiple_pika(broker, uniq):
    queue = uniq("confirms")
    state = {"outstanding": set(), "acks": [], "nacks": [], "error": None, "published": False}

    def on_open(connection):
        connection.channel(on_open_callback=on_channel)

    def on_channel(channel):
        state["channel"] = channel
        channel.queue_declare(queue, durable=True, callback=lambda frame: channel.confirm_delivery(
            ack_nack_callback=on_confirm, callback=lambda frame: publish_all(channel)))

    def publish_all(channel):
        for tag in range(1, CONFIRM_COUNT + 1):
            state["outstanding"].add(tag)
            channel.basic_publish("", queue, b"async", pika.BasicProperties(delivery_mode=2))
        state["published"] = True

    def on_confirm(frame):
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            state["nacks"].append(method.delivery_tag)
        else:
            state["acks"].append((method.delivery_tag, method.multiple))
        outstanding = state["outstanding"]
        covered = {t for t in outstanding if t <= method.delivery_tag} if method.multiple else {method.delivery_tag}
        if not covered <= outstanding:
            state["error"] = f"confirm for unknown tag {method.delivery_tag}"
        outstanding.difference_update(covered)
        if state["published"] and not outstanding:
            state["channel"].queue_delete(queue, callback=lambda f: connection.close())

    connection = pika.SelectConnection(
        pika_params(broker), on_open_callback=on_open,
        on_open_error_callback=lambda c, err: (state.__setitem__("error", repr(err)), c.ioloop.stop()),
        on_close_callback=lambda c, reason: c.ioloop.stop())
    connection.ioloop.call_later(20, lambda: (state.__setitem__("error", "timed out"), connection.close()))
    connection.ioloop.start()
    assert state["error"] is None, state["error"]
    assert state["nacks"] == []
    assert not state["outstanding"]
    tags = [tag for tag, _ in state["acks"]]
    assert tags == sorted(tags) and tags[-1] == CONFIRM_COUNT


def test_confirms_aio_pika(broker, uniq):
    import aio_pika
    queue_name = uniq("confirms")

    async def scenario():
        connection = await aio_pika.connect(amqp_url(broker), timeout=5)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(queue_name, durable=True)
            confirmations = await asyncio.gather(*[
                channel.default_exchange.publish(
                    aio_pika.Message(b"m%d" % i, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue_name)
                for i in range(100)])
            declared = await channel.declare_queue(queue_name, passive=True)
            count = declared.declaration_result.message_count
            await queue.delete(if_unused=False, if_empty=False)
            return confirmations, count

    confirmations, count = asyncio.run(asyncio.wait_for(scenario(), 20))
    assert len(confirmations) == 100
    assert all(isinstance(c, pika.spec.Basic.Ack) or type(c).__name__ == "Ack" for c in confirmations)
    assert count == 100


def test_confirm_select_ok_and_tags_are_per_channel(broker, uniq):
    conn = amqp_connect(broker)
    try:
        tags = {}
        for name in ("a", "b"):
            ch = conn.channel()
            queue, _, _ = ch.queue_declare("", exclusive=True, auto_delete=False)
            ch.confirm_select()
            got = []
            ch.events["basic_ack"].add(lambda tag, multiple, got=got: got.append(tag))
            for _ in range(3):
                ch.basic_publish(amqp.Message(b"x"), "", queue)
            amqp_drain_until(conn, lambda: got and got[-1] == 3)
            tags[name] = got[-1]
        assert tags == {"a": 3, "b": 3}
    finally:
        conn.close()


def test_unroutable_publish_is_still_confirmed(amqp_conn, uniq):
    ch = amqp_conn.channel()
    ch.confirm_select()
    acked = []
    ch.events["basic_ack"].add(lambda tag, multiple: acked.append(tag))
    ch.basic_publish(amqp.Message(b"nowhere"), "amq.direct", uniq("nobody"))
    assert amqp_drain_until(amqp_conn, lambda: acked)
    assert acked == [1]


def test_threads_each_with_own_connection(broker, uniq):
    """Typical app shape: producer and consumer threads, one connection each."""
    queue = uniq("threads")
    setup = pika_connect(broker)
    setup.channel().queue_declare(queue)
    received, errors = [], []

    def producer():
        try:
            c = pika_connect(broker)
            ch = c.channel()
            ch.confirm_delivery()
            for i in range(100):
                ch.basic_publish("", queue, b"%d" % i)
            c.close()
        except Exception as e:   # reported by the main thread
            errors.append(e)

    def consumer():
        try:
            c = pika_connect(broker)
            received.extend(pika_bodies(pika_drain(c.channel(), queue, 100, timeout=15)))
            c.close()
        except Exception as e:   # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=consumer), threading.Thread(target=producer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    setup.channel().queue_delete(queue)
    setup.close()
    assert not errors
    assert received == [b"%d" % i for i in range(100)]
