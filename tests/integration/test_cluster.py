"""Clustering (issue 5): three warren-server processes on 127.0.0.1 form one cluster.

Checked through warrenctl (the cluster port, cookie-authenticated) and AMQP: the cluster
forms from configuration alone, a node killed with SIGKILL rejoins when restarted, a node with
the wrong cookie is never let in, a stopped node can be forgotten and a new node added, and
every node still serves AMQP. Metadata replication through AMQP is tested with meta.c.

Warren only: these tests start their own processes (skipped with WARREN_TEST_EXTERNAL or
WARREN_TEST_RABBITMQ). Every wait is bounded.
"""
import os
import subprocess
import time

import pytest

from conftest import EXTERNAL, RABBITMQ_MODE, free_port
from helpers.cluster import WarrenCluster, member_names, running_names, warrenctl_bin
from helpers.clients import pika_connect

pytestmark = pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE),
                                reason="starts its own Warren processes")

NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]


@pytest.fixture
def make_cluster(tmp_path, pki):
    if not os.access(warrenctl_bin(), os.X_OK):
        pytest.fail(f"warrenctl not found at {warrenctl_bin()} (build it, or set WARRENCTL_BIN)")
    clusters = []

    def make(size=3, **kwargs):
        c = WarrenCluster(str(tmp_path / f"cluster{len(clusters)}"), pki, size=size, **kwargs)
        clusters.append(c)
        return c.start()

    yield make
    for c in clusters:
        c.stop()


def formed_with(names):
    def check(st):
        return (st.get("formed") is True and running_names(st) == sorted(names)
                and member_names(st) == sorted(names) and st.get("metadata_leader") in names)
    return check


def wait_formed(cluster, nodes, names, timeout=40):
    statuses = [cluster.wait_status(n, formed_with(names), timeout=timeout,
                                    what=f"cluster of {len(names)} running members") for n in nodes]
    leaders = {st["metadata_leader"] for st in statuses}
    # Right after a change the nodes may briefly disagree; they converge on one leader.
    if len(leaders) != 1:
        statuses = [cluster.wait_status(n, lambda st: st.get("metadata_leader") == statuses[0]["metadata_leader"],
                                        timeout=timeout) for n in nodes]
    return statuses


@pytest.mark.timeout(120)
def test_cluster_forms_and_reports_status(make_cluster):
    c = make_cluster()
    for node in c.nodes:
        c.await_startup(node)
    statuses = wait_formed(c, c.nodes, NAMES)
    for node, st in zip(c.nodes, statuses):
        assert st["node"] == node.name
        assert st["state"] == "member"
        assert st["cluster_name"] == "itest"
        assert all(n["role"] == "voter" and n["running"] for n in st["nodes"])
        assert sum(1 for n in st["nodes"] if n["leader"]) == 1
    # The table form names every member and the leader.
    out = c.ctl(c.nodes[1], "cluster_status")
    assert out.returncode == 0, out.stderr
    assert "Cluster status of node warren2@127.0.0.1" in out.stdout
    assert f"Metadata leader: {statuses[0]['metadata_leader']}" in out.stdout
    for name in NAMES:
        assert name in out.stdout
    # Formation is logged.
    assert any("founds cluster 'itest'" in n.log_text() for n in c.nodes)


@pytest.mark.timeout(120)
def test_killed_node_rejoins(make_cluster):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    victim = c.nodes[1]
    victim.kill9()
    st = c.wait_status(c.nodes[0], lambda s: running_names(s) == sorted([NAMES[0], NAMES[2]])
                       and s.get("metadata_leader") in (NAMES[0], NAMES[2]),
                       timeout=30, what="status with warren2 down and a leader among the others")
    assert member_names(st) == sorted(NAMES)  # still a member, just not running
    assert {n["name"]: n["running"] for n in st["nodes"]}[NAMES[1]] is False
    victim.start()
    c.await_startup(victim)
    wait_formed(c, c.nodes, NAMES)
    assert "rejoining the cluster with stored metadata state" in victim.log_text()


@pytest.mark.timeout(120)
def test_majority_lost_no_leader(make_cluster):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    c.nodes[0].stop()
    c.nodes[1].stop()
    st = c.wait_status(c.nodes[2], lambda s: s.get("metadata_leader") is None and not s.get("formed"),
                       timeout=30, what="status without a leader")
    assert running_names(st) == [NAMES[2]]
    c.nodes[0].start()
    c.await_startup(c.nodes[2])
    st = c.status(c.nodes[2])
    assert st["metadata_leader"] in (NAMES[0], NAMES[2])


@pytest.mark.timeout(120)
def test_wrong_cookie_is_refused(make_cluster):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    # warrenctl with the wrong cookie: a clear error and exit status 2.
    out = c.ctl(c.nodes[0], "cluster_status", cookie="not-the-cookie")
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "cookie" in out.stderr
    # A node that lists the cluster but has another cookie never gets in.
    intruder = c.add_node(4, cookie="not-the-cookie")
    intruder.start()
    time.sleep(3)
    for node in c.nodes[:3]:
        st = c.status(node)
        assert "warren4@127.0.0.1" not in member_names(st)
        assert "warren4@127.0.0.1" not in running_names(st)
    assert any("failed cookie authentication" in n.log_text() for n in c.nodes)
    own = c.ctl(intruder, "--json", "cluster_status", cookie="not-the-cookie")
    assert own.returncode == 0, own.stderr
    assert '"formed":false' in own.stdout


@pytest.mark.timeout(150)
def test_forget_stopped_node_and_add_new_one(make_cluster):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    # A running node cannot be forgotten.
    out = c.ctl(c.nodes[0], "forget_cluster_node", NAMES[2])
    assert out.returncode == 1
    assert "must be stopped" in out.stderr
    # Stopped, it can (asked on any node: forwarded to the leader).
    c.nodes[2].stop()
    out = c.ctl(c.nodes[1], "forget_cluster_node", NAMES[2])
    assert out.returncode == 0, out.stderr
    wait_formed(c, c.nodes[:2], NAMES[:2])
    out = c.ctl(c.nodes[0], "forget_cluster_node", "nobody@nowhere")
    assert out.returncode == 1 and "not a member" in out.stderr
    # A new node whose config lists the cluster and itself joins.
    newcomer = c.add_node(4, members=[(n.name, n.cluster_port) for n in c.nodes[:2]])
    newcomer.start()
    c.await_startup(newcomer)
    names = NAMES[:2] + ["warren4@127.0.0.1"]
    wait_formed(c, [c.nodes[0], c.nodes[1], newcomer], names)
    # The forgotten node, started again with its old data, stays out.
    c.nodes[2].start()
    st = c.wait_status(c.nodes[2], lambda s: s.get("state") == "removed", timeout=30,
                       what="'removed' state on the forgotten node")
    assert not st["formed"]
    assert "is no longer a member of the cluster" in c.nodes[2].log_text()
    st = c.status(c.nodes[0])
    assert NAMES[2] not in member_names(st)
    assert member_names(st) == sorted(names)


@pytest.mark.timeout(120)
def test_amqp_works_on_every_node(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    for node in c.nodes:
        conn = pika_connect(node)
        try:
            ch = conn.channel()
            q = uniq("q")
            ch.queue_declare(q, durable=False, auto_delete=False)
            ch.basic_publish("", q, b"hello " + node.name.encode())
            deadline = time.monotonic() + 10
            got = None
            while got is None and time.monotonic() < deadline:
                method, _props, body = ch.basic_get(q, auto_ack=True)
                got = body if method else None
                if got is None:
                    time.sleep(0.05)
            assert got == b"hello " + node.name.encode()
            ch.queue_delete(q)
        finally:
            conn.close()


def test_warrenctl_usage_errors(tmp_path):
    binary = warrenctl_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"warrenctl not found at {binary}")
    env = {k: v for k, v in os.environ.items() if k != "WARREN_COOKIE"}
    r = subprocess.run([binary, "cluster_status"], capture_output=True, text=True, timeout=10, env=env)
    assert r.returncode == 64 and "cookie" in r.stderr
    r = subprocess.run([binary, "--cookie", "x", "frobnicate"], capture_output=True, text=True, timeout=10, env=env)
    assert r.returncode == 64
    # Nobody listening: a clear error, status 1.
    port = free_port()
    r = subprocess.run([binary, "--node", f"127.0.0.1:{port}", "--cookie", "x", "cluster_status"],
                       capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode == 1 and "cannot connect" in r.stderr
    cookie_file = tmp_path / "cookie"
    cookie_file.write_text("secret\n")
    r = subprocess.run([binary, "--node", f"127.0.0.1:{port}", "--cookie-file", str(cookie_file),
                        "--timeout", "1", "await_startup"], capture_output=True, text=True, timeout=20, env=env)
    assert r.returncode == 1 and "did not finish starting" in r.stderr
