"""Prometheus metrics (issue 7): rabbitmq_prometheus's endpoints on their own port
(prometheus.tcp.port), read with the official Python client's parser.

  /metrics             aggregated: queue and Raft families summed, no per-object labels
  /metrics/per-object  one sample per queue, labelled {vhost, queue}, and per channel, labelled
                       {channel}; rabbitmq_queue_info{vhost, queue, queue_type, membership} (4.1)
  /metrics/detailed    rabbitmq_detailed_* families chosen with ?family=, filtered by ?vhost=

Churn (connections / channels opened and closed) and the channel families are checked to move
with a connection's life: opened, channels used for publish / get / consume, closed.

No authentication, text format 0.0.4 with # TYPE / # HELP for every family. Values are
checked to move with AMQP traffic (publish, unroutable, consume, ack, quorum queue commits).

Checked against RabbitMQ 3.10.8 with rabbitmq_prometheus (WARREN_TEST_RABBITMQ=1: conftest
enables the plugin and sets prometheus.tcp.port). RabbitMQ refreshes its figures every few
seconds, so values are polled. RABBITMQ_3_10_NAMES is the set of family names RabbitMQ 3.10.8
served on /metrics (captured from a node with a classic and a quorum queue): every family
Warren serves must be one of them.
"""
import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import conftest
from helpers.clients import pika_connect, wait_for

WAIT = 20.0  # RabbitMQ's metrics lag by its statistics interval

# The rabbitmq_* names (and process_start_time_seconds) RabbitMQ 3.10.8 serves on /metrics,
# minus the Erlang VM's own families.
RABBITMQ_3_10_NAMES = {
    "process_start_time_seconds",
    "rabbitmq_alarms_file_descriptor_limit", "rabbitmq_alarms_free_disk_space_watermark",
    "rabbitmq_alarms_memory_used_watermark", "rabbitmq_connections_opened_total",
    "rabbitmq_connections_closed_total", "rabbitmq_channels_opened_total",
    "rabbitmq_channels_closed_total", "rabbitmq_queues_declared_total",
    "rabbitmq_queues_created_total", "rabbitmq_queues_deleted_total", "rabbitmq_process_open_fds",
    "rabbitmq_process_open_tcp_sockets", "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_disk_space_available_bytes", "rabbitmq_process_max_fds",
    "rabbitmq_process_max_tcp_sockets", "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_disk_space_available_limit_bytes", "rabbitmq_raft_term_total",
    "rabbitmq_raft_log_snapshot_index", "rabbitmq_raft_log_last_applied_index",
    "rabbitmq_raft_log_commit_index", "rabbitmq_raft_log_last_written_index",
    "rabbitmq_raft_entry_commit_latency_seconds", "rabbitmq_auth_attempts_total",
    "rabbitmq_auth_attempts_succeeded_total", "rabbitmq_auth_attempts_failed_total",
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages",
    "rabbitmq_queue_process_reductions_total", "rabbitmq_queue_consumers",
    "rabbitmq_queue_consumer_capacity", "rabbitmq_queue_consumer_utilisation",
    "rabbitmq_queue_process_memory_bytes", "rabbitmq_queue_messages_ram",
    "rabbitmq_queue_messages_ram_bytes", "rabbitmq_queue_messages_ready_ram",
    "rabbitmq_queue_messages_unacked_ram", "rabbitmq_queue_messages_persistent",
    "rabbitmq_queue_messages_persistent_bytes", "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_messages_ready_bytes", "rabbitmq_queue_messages_unacked_bytes",
    "rabbitmq_queue_messages_paged_out", "rabbitmq_queue_messages_paged_out_bytes",
    "rabbitmq_queue_head_message_timestamp", "rabbitmq_queue_disk_reads_total",
    "rabbitmq_queue_disk_writes_total", "rabbitmq_queue_messages_published_total",
    "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_consumers", "rabbitmq_queues",
    "rabbitmq_build_info", "rabbitmq_identity_info", "rabbitmq_global_consumers",
    "rabbitmq_global_messages_acknowledged_total", "rabbitmq_global_messages_confirmed_total",
    "rabbitmq_global_messages_delivered_total", "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_received_confirm_total", "rabbitmq_global_messages_redelivered_total",
    "rabbitmq_global_messages_routed_total", "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total", "rabbitmq_global_publishers",
}

# Families of rabbitmq_prometheus 3.10's collector (channel_metrics, channel_exchange_metrics,
# channel_queue_metrics; listed in its metrics-detailed.md) that the capture above did not hold,
# and RabbitMQ 4.1's rabbitmq_queue_info (per-object and detailed only).
RABBITMQ_MORE_NAMES = {
    "rabbitmq_channel_consumers", "rabbitmq_channel_messages_unacked",
    "rabbitmq_channel_messages_unconfirmed", "rabbitmq_channel_messages_uncommitted",
    "rabbitmq_consumer_prefetch", "rabbitmq_channel_prefetch",
    "rabbitmq_channel_messages_published_total", "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_channel_messages_unroutable_returned_total",
    "rabbitmq_channel_messages_unroutable_dropped_total", "rabbitmq_channel_get_ack_total",
    "rabbitmq_channel_get_total", "rabbitmq_channel_messages_delivered_ack_total",
    "rabbitmq_channel_messages_delivered_total", "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_acked_total", "rabbitmq_queue_info",
}

# The channel families, all on /metrics (aggregated) and per channel on /metrics/per-object.
CHANNEL_FAMILIES = RABBITMQ_MORE_NAMES - {"rabbitmq_queue_info"}

CHURN = {"rabbitmq_connections_opened_total", "rabbitmq_connections_closed_total",
         "rabbitmq_channels_opened_total", "rabbitmq_channels_closed_total"}

# Families whose type and HELP text must be rabbitmq_prometheus's (3.10 / 4.x collector source).
TYPES_AND_HELP = {
    "rabbitmq_connections_opened_total": ("counter", "Total number of connections opened"),
    "rabbitmq_connections_closed_total": ("counter", "Total number of connections closed or terminated"),
    "rabbitmq_channels_opened_total": ("counter", "Total number of channels opened"),
    "rabbitmq_channels_closed_total": ("counter", "Total number of channels closed"),
    "rabbitmq_connections": ("gauge", "Connections currently open"),
    "rabbitmq_channels": ("gauge", "Channels currently open"),
    "rabbitmq_queues": ("gauge", "Queues available"),
    "rabbitmq_channel_messages_published_total":
        ("counter", "Total number of messages published into an exchange on a channel"),
    "rabbitmq_channel_messages_confirmed_total":
        ("counter", "Total number of messages published into an exchange and confirmed on the channel"),
    "rabbitmq_channel_messages_unroutable_returned_total":
        ("counter", "Total number of messages published as mandatory into an exchange and returned to the "
                    "publisher as unroutable"),
    "rabbitmq_channel_messages_unroutable_dropped_total":
        ("counter", "Total number of messages published as non-mandatory into an exchange and dropped as "
                    "unroutable"),
    "rabbitmq_channel_get_ack_total":
        ("counter", "Total number of messages fetched with basic.get in manual acknowledgement mode"),
    "rabbitmq_channel_get_total":
        ("counter", "Total number of messages fetched with basic.get in automatic acknowledgement mode"),
    "rabbitmq_channel_messages_delivered_ack_total":
        ("counter", "Total number of messages delivered to consumers in manual acknowledgement mode"),
    "rabbitmq_channel_messages_delivered_total":
        ("counter", "Total number of messages delivered to consumers in automatic acknowledgement mode"),
    "rabbitmq_channel_messages_redelivered_total": ("counter", "Total number of messages redelivered to consumers"),
    "rabbitmq_channel_messages_acked_total": ("counter", "Total number of messages acknowledged by consumers"),
    "rabbitmq_process_open_fds": ("gauge", "Open file descriptors"),
    "rabbitmq_process_max_fds": ("gauge", "Open file descriptors limit"),
    "rabbitmq_process_resident_memory_bytes": ("gauge", "Memory used in bytes"),
    "rabbitmq_disk_space_available_bytes": ("gauge", "Disk space available in bytes"),
    "rabbitmq_resident_memory_limit_bytes": ("gauge", "Memory high watermark in bytes"),
    "rabbitmq_disk_space_available_limit_bytes": ("gauge", "Free disk space low watermark in bytes"),
    "rabbitmq_raft_term_total": ("counter", "Current Raft term number"),
    "rabbitmq_raft_log_commit_index": ("gauge", "Raft log commit index"),
    "rabbitmq_queue_messages": ("gauge", "Sum of ready and unacknowledged messages - total queue depth"),
}

# What Warren must serve on /metrics (the list and the figures it has).
REQUIRED = {
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages",
    "rabbitmq_queue_consumers", "rabbitmq_queue_messages_bytes",
    "rabbitmq_queue_messages_published_total", "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_delivered_total", "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_confirmed_total", "rabbitmq_global_messages_routed_total",
    "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total", "rabbitmq_global_consumers",
    "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_consumers", "rabbitmq_queues",
    "rabbitmq_process_resident_memory_bytes", "rabbitmq_resident_memory_limit_bytes",
    "rabbitmq_process_open_fds", "rabbitmq_process_max_fds", "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes", "rabbitmq_alarms_memory_used_watermark",
    "rabbitmq_alarms_free_disk_space_watermark", "rabbitmq_identity_info", "rabbitmq_build_info",
    "rabbitmq_raft_term_total", "rabbitmq_raft_log_commit_index",
    "rabbitmq_raft_log_last_applied_index", "rabbitmq_raft_log_last_written_index",
    "rabbitmq_raft_log_snapshot_index",
} | CHURN | CHANNEL_FAMILIES


@pytest.fixture(scope="module")
def node(module_broker):
    if conftest.EXTERNAL:
        pytest.skip("needs a broker whose metrics port the suite configured")
    return module_broker()


def scrape(node, path="/metrics", **params):
    r = requests.get(f"http://{node.host}:{node.prom_port}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r


def families(node, path="/metrics", **params):
    """{family name: [(labels, value), ...]} from the official parser."""
    text = scrape(node, path, **params).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_created"):  # the client's synthetic samples for counters
                continue
            out.setdefault(fam.name if fam.type != "counter" else fam.name + "_total", []).append(
                (s.labels, s.value))
    return out


def value(fams, name, **labels):
    """The sum of name's samples whose labels include labels (None when absent)."""
    if name not in fams:
        return None
    hits = [v for lab, v in fams[name] if all(lab.get(k) == w for k, w in labels.items())]
    return sum(hits) if hits else None


def poll(node, predicate, path="/metrics/per-object", **params):
    """Scrapes until predicate(families) holds; returns the last families."""
    last = {}

    def check():
        last.clear()
        last.update(families(node, path, **params))
        return predicate(last)

    assert wait_for(check, timeout=WAIT, step=0.25), f"metrics never matched; last: {sorted(last)}"
    return last


def test_format_and_names(node, uniq):
    conn = pika_connect(node)
    ch = conn.channel()
    ch.queue_declare(uniq("cq"), durable=True)
    ch.queue_declare(uniq("qq"), durable=True, arguments={"x-queue-type": "quorum"})
    r = scrape(node)
    assert r.headers["content-type"] == "text/plain; version=0.0.4"
    typed, helped = set(), set()
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
        elif line.startswith("# HELP "):
            helped.add(line.split()[2])
    assert typed == helped
    fams = poll(node, lambda f: REQUIRED <= set(f), path="/metrics")
    names = set(fams)
    assert REQUIRED <= names, sorted(REQUIRED - names)
    if conftest.RABBITMQ_MODE:
        return
    ours = {n for n in names if not n.startswith("erlang_")}
    known = RABBITMQ_3_10_NAMES | RABBITMQ_MORE_NAMES
    assert ours <= known, sorted(ours - known)
    assert "rabbitmq_queue_info" not in names  # per-object / detailed only, as in RabbitMQ 4.1
    # aggregated: no per-object labels
    for name in ("rabbitmq_queue_messages", "rabbitmq_raft_term_total"):
        assert all("queue" not in lab for lab, _ in fams[name])
    info = fams["rabbitmq_identity_info"][0][0]
    assert {"rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id"} <= set(info)
    assert info["rabbitmq_endpoint"] == "aggregated"
    for line in r.text.splitlines():  # types and HELP texts as rabbitmq_prometheus's
        parts = line.split(" ", 3)
        if line.startswith("# TYPE ") and parts[2] in TYPES_AND_HELP:
            assert parts[3] == TYPES_AND_HELP[parts[2]][0], line
        elif line.startswith("# HELP ") and parts[2] in TYPES_AND_HELP:
            assert parts[3] == TYPES_AND_HELP[parts[2]][1], line
    assert fams["rabbitmq_build_info"][0][0]["rabbitmq_version"].startswith("3.")
    conn.close()


def test_no_auth_and_other_paths(node):
    base = f"http://{node.host}:{node.prom_port}"
    assert requests.get(base + "/metrics", timeout=10).status_code == 200
    assert requests.get(base + "/metrics/per-object", auth=("nobody", "x"), timeout=10).status_code == 200
    assert requests.get(base + "/api/overview", auth=("guest", "guest"), timeout=10).status_code == 404
    if not conftest.RABBITMQ_MODE:
        assert requests.post(base + "/metrics", timeout=10).status_code == 405


def test_queue_depth_and_global_counters(node, uniq):
    q = uniq("depth")
    before = families(node)
    conn = pika_connect(node)
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, b"x" * 10, properties=pika.BasicProperties(delivery_mode=1))
    fams = poll(node, lambda f: value(f, "rabbitmq_queue_messages_ready", queue=q) == 5)
    assert value(fams, "rabbitmq_queue_messages", vhost="/", queue=q) == 5
    assert value(fams, "rabbitmq_queue_messages_unacked", queue=q) == 0
    assert value(fams, "rabbitmq_queue_consumers", queue=q) == 0

    # two delivered and left unacked, to a consumer
    ch2 = conn.channel()
    ch2.basic_qos(prefetch_count=2)
    tags = []
    ch2.basic_consume(q, lambda c, m, p, b: tags.append(m.delivery_tag))
    assert wait_for(lambda: conn.process_data_events(0.05) or len(tags) == 2, timeout=10)
    fams = poll(node, lambda f: value(f, "rabbitmq_queue_messages_unacked", queue=q) == 2)
    assert value(fams, "rabbitmq_queue_messages_ready", queue=q) == 3
    assert value(fams, "rabbitmq_queue_consumers", queue=q) == 1
    for t in tags:
        ch2.basic_ack(t)
    conn.process_data_events(0.2)

    def moved(f):
        return all(value(f, n, protocol="amqp091") - value(before, n, protocol="amqp091") >= d
                   for n, d in (("rabbitmq_global_messages_received_total", 5),
                                ("rabbitmq_global_messages_confirmed_total", 5),
                                ("rabbitmq_global_messages_routed_total", 5),
                                ("rabbitmq_global_messages_delivered_total", 2),
                                ("rabbitmq_global_messages_acknowledged_total", 2)))
    fams = poll(node, moved, path="/metrics")
    assert value(fams, "rabbitmq_consumers") >= 1
    assert value(fams, "rabbitmq_connections") >= 1
    assert value(fams, "rabbitmq_queue_messages") >= 3  # the sum over the queues
    conn.close()


def test_unroutable(node):
    before = families(node)
    conn = pika_connect(node)
    ch = conn.channel()
    ch.basic_publish("amq.direct", "no-such-binding", b"dropped")
    ch.basic_publish("amq.direct", "no-such-binding", b"returned", mandatory=True)
    conn.process_data_events(0.2)

    def delta(f, name):
        return value(f, name, protocol="amqp091") - value(before, name, protocol="amqp091")

    poll(node, lambda f: delta(f, "rabbitmq_global_messages_unroutable_dropped_total") == 1
         and delta(f, "rabbitmq_global_messages_unroutable_returned_total") == 1, path="/metrics")
    conn.close()


def test_quorum_queue_raft_metrics(node, uniq):
    q = uniq("qq")
    conn = pika_connect(node)
    ch = conn.channel()
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    fams = poll(node, lambda f: (value(f, "rabbitmq_raft_term_total", queue=q) or 0) >= 1)
    commit0 = value(fams, "rabbitmq_raft_log_commit_index", vhost="/", queue=q)
    ch.confirm_delivery()
    for _ in range(3):
        ch.basic_publish("", q, b"qq")
    fams = poll(node, lambda f: value(f, "rabbitmq_queue_messages_ready", queue=q) == 3
                and value(f, "rabbitmq_raft_log_commit_index", queue=q) >= commit0 + 3)
    commit = value(fams, "rabbitmq_raft_log_commit_index", queue=q)
    assert value(fams, "rabbitmq_raft_log_last_applied_index", queue=q) <= commit
    assert value(fams, "rabbitmq_raft_log_last_written_index", queue=q) >= commit
    assert value(fams, "rabbitmq_raft_log_snapshot_index", queue=q) <= commit
    conn.close()


def test_detailed(node, uniq):
    q = uniq("det")
    conn = pika_connect(node)
    conn.channel().queue_declare(q)
    only_info = families(node, "/metrics/detailed")
    assert {n for n in only_info if n.startswith("rabbitmq_detailed_")} == set()
    assert "rabbitmq_identity_info" in only_info
    fams = poll(node, lambda f: value(f, "rabbitmq_detailed_queue_consumers", queue=q) == 0,
                path="/metrics/detailed", family=["queue_coarse_metrics", "queue_consumer_count"],
                vhost="/")
    detailed = {n for n in fams if n.startswith("rabbitmq_detailed_")}
    assert {"rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_messages_unacked",
            "rabbitmq_detailed_queue_messages", "rabbitmq_detailed_queue_consumers"} <= detailed
    assert "rabbitmq_detailed_queue_messages_bytes" not in detailed  # queue_metrics not asked for
    other = families(node, "/metrics/detailed", family="queue_coarse_metrics", vhost="no-such-vhost")
    assert value(other, "rabbitmq_detailed_queue_messages", queue=q) is None
    conn.close()


def test_queue_info_labels(node, uniq):
    """Per-queue families keep {vhost, queue}; the queue type is on rabbitmq_queue_info (RabbitMQ
    4.1), with this node's membership."""
    cq, qq = uniq("info-cq"), uniq("info-qq")
    conn = pika_connect(node)
    ch = conn.channel()
    ch.queue_declare(cq)
    ch.queue_declare(qq, durable=True, arguments={"x-queue-type": "quorum"})
    fams = poll(node, lambda f: value(f, "rabbitmq_queue_info", queue=qq) == 1
                and value(f, "rabbitmq_queue_messages", queue=qq) is not None)
    for name in ("rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queue_messages",
                 "rabbitmq_queue_consumers"):
        labels = [lab for lab, _ in fams[name] if lab.get("queue") in (cq, qq)]
        assert len(labels) == 2 and all(set(lab) == {"vhost", "queue"} for lab in labels), (name, labels)
    infos = {lab["queue"]: lab for lab, v in fams["rabbitmq_queue_info"] if v == 1}
    assert infos[cq] == {"vhost": "/", "queue": cq, "queue_type": "rabbit_classic_queue", "membership": "leader"}
    assert infos[qq] == {"vhost": "/", "queue": qq, "queue_type": "rabbit_quorum_queue", "membership": "leader"}
    raft = [lab for lab, _ in fams["rabbitmq_raft_log_commit_index"] if lab.get("queue") == qq]
    assert raft == [{"vhost": "/", "queue": qq}]
    ident = fams["rabbitmq_identity_info"][0][0]
    assert ident["rabbitmq_endpoint"] == "per-object"
    # detailed: queue_info only when a queue family is asked for
    det = families(node, "/metrics/detailed", family="queue_coarse_metrics")
    assert value(det, "rabbitmq_detailed_queue_info", queue=cq, queue_type="rabbit_classic_queue") == 1
    assert families(node, "/metrics/detailed", family="ra_metrics").get("rabbitmq_detailed_queue_info") is None
    conn.close()


def test_churn_and_channel_metrics(node, uniq):
    """connections/channels opened and closed move with a connection's life; the channel families
    count publishes, confirms, gets and deliveries per channel (per-object) and in sum."""
    q = uniq("chan")
    before = families(node, "/metrics")
    conn = pika_connect(node)
    pub, getter, manual, auto = conn.channel(), conn.channel(), conn.channel(), conn.channel()
    pub.queue_declare(q)
    pub.confirm_delivery()
    for _ in range(5):
        pub.basic_publish("", q, b"m")
    method, _, _ = getter.basic_get(q, auto_ack=False)  # get_ack_total, then acked
    getter.basic_ack(method.delivery_tag)
    assert getter.basic_get(q, auto_ack=True)[0] is not None  # get_total
    manual.basic_qos(prefetch_count=7)
    got = []
    manual.basic_consume(q, lambda c, m, p, b: got.append(m.delivery_tag))  # delivered_ack_total, unacked
    assert wait_for(lambda: conn.process_data_events(0.05) or len(got) == 3, timeout=10)
    manual.basic_cancel(manual.consumer_tags[0])
    manual.basic_nack(got[-1], multiple=False, requeue=True)  # back to the queue: redelivered below
    auto_got = []
    auto.basic_consume(q, lambda c, m, p, b: auto_got.append(m.redelivered), auto_ack=True)
    assert wait_for(lambda: conn.process_data_events(0.05) or len(auto_got) == 1, timeout=10)

    def opened(f):
        return (value(f, "rabbitmq_connections_opened_total") - value(before, "rabbitmq_connections_opened_total") >= 1
                and value(f, "rabbitmq_channels_opened_total") - value(before, "rabbitmq_channels_opened_total") >= 4)
    fams = poll(node, opened, path="/metrics")
    assert value(fams, "rabbitmq_connections") >= 1 and value(fams, "rabbitmq_channels") >= 4
    for name in CHANNEL_FAMILIES:  # aggregated: one unlabelled sample each
        assert [lab for lab, _ in fams[name]] == [{}], name
    assert value(fams, "rabbitmq_channel_messages_published_total") >= 5

    per = families(node, "/metrics/per-object")
    names = [lab["channel"] for lab, v in per["rabbitmq_channel_messages_published_total"] if v == 5]
    assert len(names) == 1 and names[0].endswith(" (1)"), per["rabbitmq_channel_messages_published_total"]
    prefix = names[0][:-len("(1)")]

    def chan(name, n):
        return value(per, name, channel=f"{prefix}({n})")
    assert chan("rabbitmq_channel_messages_confirmed_total", 1) == 5
    assert chan("rabbitmq_channel_get_ack_total", 2) == 1
    assert chan("rabbitmq_channel_get_total", 2) == 1
    assert chan("rabbitmq_channel_messages_acked_total", 2) == 1
    assert chan("rabbitmq_channel_messages_delivered_ack_total", 3) == 3
    assert chan("rabbitmq_channel_messages_unacked", 3) == 2
    assert chan("rabbitmq_consumer_prefetch", 3) == 7
    assert chan("rabbitmq_channel_messages_delivered_total", 4) == 1
    assert chan("rabbitmq_channel_messages_redelivered_total", 4) == 1 and auto_got == [True]
    assert chan("rabbitmq_channel_consumers", 4) == 1
    assert all(set(lab) == {"channel"} for lab, _ in per["rabbitmq_channel_messages_published_total"])
    det = families(node, "/metrics/detailed", family=["connection_churn_metrics", "channel_queue_metrics"])
    assert value(det, "rabbitmq_detailed_connections_opened_total") >= 1
    assert value(det, "rabbitmq_detailed_channel_get_total", channel=f"{prefix}(2)") == 1
    assert "rabbitmq_detailed_channel_messages_published_total" not in det  # channel_exchange_metrics not asked

    mid = fams
    conn.close()
    poll(node, lambda f: value(f, "rabbitmq_connections_closed_total")
         - value(mid, "rabbitmq_connections_closed_total") >= 1
         and value(f, "rabbitmq_channels_closed_total") - value(mid, "rabbitmq_channels_closed_total") >= 4,
         path="/metrics")


@pytest.mark.timeout(150)
def test_quorum_queue_on_a_three_node_cluster(tmp_path, pki, uniq):
    """Each node reports a quorum queue as RabbitMQ's do: depth on its leader only, the Raft
    families and rabbitmq_queue_info (membership leader / follower) on every replica; commit
    indexes rise on all three after publishes."""
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("starts its own Warren cluster")
    from helpers.cluster import WarrenCluster
    names = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]
    c = WarrenCluster(str(tmp_path / "cluster"), pki, size=3).start()
    conn = None
    try:
        c.wait_formed()
        q = uniq("cluster-qq")
        conn = pika_connect(c.nodes[0])
        ch = conn.channel()
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
        before = {n.name: value(poll(n, lambda f: value(f, "rabbitmq_raft_log_commit_index", queue=q) is not None),
                                "rabbitmq_raft_log_commit_index", queue=q) for n in c.nodes}
        ch.confirm_delivery()
        for _ in range(4):
            ch.basic_publish("", q, b"replicated")
        mgmt = f"http://{c.nodes[0].host}:{c.nodes[0].mgmt_port}/api/queues/%2F/{q}"
        leader = None

        def led():
            nonlocal leader
            leader = requests.get(mgmt, auth=("guest", "guest"), timeout=5).json().get("leader")
            return leader in names
        assert wait_for(led, timeout=20)
        for n in c.nodes:
            role = "leader" if n.name == leader else "follower"
            fams = poll(n, lambda f: value(f, "rabbitmq_queue_info", queue=q, membership=role) == 1
                        and value(f, "rabbitmq_raft_log_commit_index", queue=q) >= before[n.name] + 4)
            info = [lab for lab, _ in fams["rabbitmq_queue_info"] if lab["queue"] == q]
            assert info == [{"vhost": "/", "queue": q, "queue_type": "rabbit_quorum_queue", "membership": role}]
            assert value(fams, "rabbitmq_raft_term_total", queue=q) >= 1
            if role == "leader":
                assert value(fams, "rabbitmq_queue_messages", queue=q) == 4
            else:
                assert value(fams, "rabbitmq_queue_messages", queue=q) is None  # depth: leader only
        agg = families(c.nodes[0], "/metrics")
        assert value(agg, "rabbitmq_connections_opened_total") >= 1
        assert value(agg, "rabbitmq_channels") >= 1
    finally:
        if conn is not None and conn.is_open:
            conn.close()
        c.stop()
