"""Users, vhosts, permissions and policies as replicated metadata (issue 5), driven by warrenctl.

A change made with warrenctl through one node of a three-node cluster (add_vhost, add_user,
set_permissions, change_password, delete_user, set_policy) takes effect on every node: pika logs
in on the others with the new user, a deleted user is refused everywhere with 403, a policy set
through one node limits a queue homed on another. A node killed while changes are made catches
up when it returns; a node cut off from the majority refuses changes with the 541 "metadata store
unavailable" error. A single node serves the same commands on its loopback control port.
Inter-node TLS (cluster.ssl keys): a cluster forms over TLS and serves queues across nodes; a
node with TLS cannot join a cluster without it.

Warren only (skipped with WARREN_TEST_EXTERNAL or WARREN_TEST_RABBITMQ). Every wait is bounded.
"""
import json
import os
import subprocess
import time

import amqp
import pika
import pytest

from conftest import EXTERNAL, RABBITMQ_MODE, _openssl, free_port
from helpers.clients import amqp_connect, pika_connect
from helpers.cluster import WarrenCluster, running_names, warrenctl_bin
from test_cluster import NAMES, make_cluster, wait_formed  # noqa: F401 (fixture)

pytestmark = [pytest.mark.skipif(bool(EXTERNAL or RABBITMQ_MODE), reason="starts its own Warren processes"),
              pytest.mark.timeout(180)]


def ok(result):
    assert result.returncode == 0, f"warrenctl exited {result.returncode}: {result.stderr}"
    return result


def eventually(action, timeout=10.0, retry_on=(Exception,)):
    """action() until it stops raising (bounded): another node applies a change a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except retry_on:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def use(node, user, password, vhost, queue):
    """Logs in as user on node and round-trips a message through queue (homed on node)."""
    conn = pika_connect(node, user=user, password=password, vhost=vhost)
    try:
        ch = conn.channel()
        ch.queue_declare(queue)
        ch.confirm_delivery()
        ch.basic_publish("", queue, b"hello")
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        assert body == b"hello", method
        ch.queue_delete(queue)
    finally:
        if conn.is_open:
            conn.close()


def login_refused(node, user, password, vhost="/"):
    """True when node refuses the login with 403 ACCESS_REFUSED."""
    try:
        conn = amqp_connect(node, user=user, password=password, vhost=vhost)
    except amqp.exceptions.AccessRefused as e:
        assert e.reply_code == 403
        return True
    conn.close()
    return False


def wait_true(check, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.1)


def users(c, node):
    return {u["user"]: u["tags"] for u in json.loads(ok(c.ctl(node, "--json", "list_users")).stdout)}


def test_users_vhosts_and_permissions_through_any_node(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    vhost, user = uniq("vh"), uniq("user")
    out = ok(c.ctl(n1, "add_vhost", vhost))
    assert f'Adding vhost "{vhost}"' in out.stdout
    ok(c.ctl(n1, "add_user", user, "pw1"))
    ok(c.ctl(n1, "set_user_tags", user, "monitoring", "management"))
    ok(c.ctl(n1, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"))
    # The others apply the same log: the new user works on nodes 2 and 3 at once or a moment later.
    for node in (n2, n3):
        eventually(lambda: use(node, user, "pw1", vhost, uniq("q")))
        assert users(c, node)[user] == ["monitoring", "management"]
        perms = json.loads(ok(c.ctl(node, "--json", "list_permissions", "-p", vhost)).stdout)
        assert perms == [{"user": user, "configure": ".*", "write": ".*", "read": ".*"}]
        assert vhost in [v["name"] for v in json.loads(ok(c.ctl(node, "--json", "list_vhosts")).stdout)]
    # Errors come from the node, on stderr, with a non-zero status.
    dup = c.ctl(n3, "add_user", user, "x")
    assert dup.returncode == 1
    assert f'User "{user}" already exists' in dup.stderr
    # A new password takes effect everywhere.
    ok(c.ctl(n2, "change_password", user, "pw2"))
    for node in c.nodes:
        wait_true(lambda: login_refused(node, user, "pw1", vhost), what=f"old password refused on {node.name}")
        eventually(lambda: use(node, user, "pw2", vhost, uniq("q")))
    # Deleted through node 3: refused on every node.
    ok(c.ctl(n3, "delete_user", user))
    for node in c.nodes:
        wait_true(lambda: login_refused(node, user, "pw2", vhost), what=f"deleted user refused on {node.name}")
        assert user not in users(c, node)
    # A deleted vhost is gone everywhere, with what was in it.
    ok(c.ctl(n2, "delete_vhost", vhost))
    for node in c.nodes:
        wait_true(lambda: vhost not in [v["name"] for v in
                                        json.loads(ok(c.ctl(node, "--json", "list_vhosts")).stdout)],
                  what=f"vhost deleted on {node.name}")


def test_policy_through_one_node_applies_on_the_queue_home(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, _n2, n3 = c.nodes
    q = uniq("plq")
    conn = pika_connect(n1)  # the queue's home is node 1
    try:
        ch = conn.channel()
        ch.queue_declare(q, durable=True)
        out = ok(c.ctl(n3, "set_policy", "--priority", "5", "--apply-to", "queues", "lim", f"^{q}$",
                       '{"max-length": 2}'))
        assert 'Setting policy "lim"' in out.stdout
        wait_true(lambda: [p["name"] for p in json.loads(ok(c.ctl(n1, "--json", "list_policies")).stdout)]
                  == ["lim"], what="the policy on node 1")
        pol = json.loads(ok(c.ctl(n1, "--json", "list_policies")).stdout)[0]
        assert pol["definition"] == {"max-length": 2} and pol["priority"] == 5 and pol["apply-to"] == "queues"
        ch.confirm_delivery()
        for i in range(5):
            ch.basic_publish("", q, f"m{i}".encode())
        assert ch.queue_declare(q, passive=True).method.message_count == 2
        ok(c.ctl(n3, "clear_policy", "lim"))
        missing = c.ctl(n3, "clear_policy", "lim")
        assert missing.returncode == 1 and "Parameter does not exist" in missing.stderr
        ch.queue_delete(q)
    finally:
        if conn.is_open:
            conn.close()


def test_killed_node_catches_up_on_users(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, _n2, n3 = c.nodes
    n3.kill9()
    vhost, user = uniq("vh"), uniq("late")
    ok(c.ctl(n1, "add_vhost", vhost))
    ok(c.ctl(n1, "add_user", user, "pw"))
    ok(c.ctl(n1, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"))
    n3.start()
    c.await_startup(n3)
    eventually(lambda: use(n3, user, "pw", vhost, uniq("q")), timeout=20)
    assert user in users(c, n3)


def test_minority_refuses_admin_changes(make_cluster, uniq):
    c = make_cluster()
    wait_formed(c, c.nodes, NAMES)
    n1, n2, n3 = c.nodes
    n1.stop()
    n2.stop()
    c.wait_status(n3, lambda s: s.get("metadata_leader") is None, timeout=30, what="status without a leader")
    started = time.monotonic()
    out = c.ctl(n3, "add_user", uniq("u"), "pw", timeout=30)
    assert time.monotonic() - started < 20
    assert out.returncode != 0
    assert "metadata store unavailable" in out.stderr
    # Reads are still served from the applied state.
    assert "guest" in users(c, n3)
    n1.start()


# ---- a single node ----------------------------------------------------------------------------

def test_single_node_admin_commands(fresh_broker, uniq):
    port = free_port()
    b = fresh_broker(config={"cluster.listener.port": port})
    cookie_file = os.path.join(b.data_dir, ".warren.cookie")
    assert os.stat(cookie_file).st_mode & 0o777 == 0o600

    def ctl(*args):
        return subprocess.run([warrenctl_bin(), "--node", f"127.0.0.1:{port}", "--cookie-file", cookie_file, *args],
                              capture_output=True, text=True, timeout=30)

    vhost, user = uniq("vh"), uniq("solo")
    ok(ctl("add_vhost", vhost))
    ok(ctl("add_user", user, "pw"))
    ok(ctl("set_permissions", "-p", vhost, user, "^amq\\.gen|^q", ".*", ".*"))
    use(b, user, "pw", vhost, uniq("q"))
    assert json.loads(ok(ctl("--json", "list_permissions", "-p", vhost)).stdout)[0]["configure"] == "^amq\\.gen|^q"
    assert user in [u["user"] for u in json.loads(ok(ctl("--json", "list_users")).stdout)]
    table = ok(ctl("list_users")).stdout
    assert table.startswith("Listing users ...\nuser\ttags\n")
    # A policy: limits a queue of that vhost at once.
    q = uniq("q")
    ok(ctl("set_policy", "-p", vhost, "--apply-to", "queues", "lim", f"^{q}$", '{"max-length": 1}'))
    conn = pika_connect(b, user=user, password="pw", vhost=vhost)
    ch = conn.channel()
    ch.queue_declare(q)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("", q, b"x")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    conn.close()
    # Errors: non-zero exit, the reason on stderr.
    bad = ctl("set_policy", "p", ".*", "not json")
    assert bad.returncode == 1 and "Invalid policy definition" in bad.stderr
    bad = ctl("set_permissions", "-p", "nope", user, ".*", ".*", ".*")
    assert bad.returncode == 1 and 'Virtual host "nope" does not exist' in bad.stderr
    assert ctl("add_user", user).returncode == 64  # usage
    assert ctl("clear_permissions", "-p", vhost, user).returncode == 0
    assert ctl("--json", "list_permissions", "-p", vhost).stdout.strip() == "[]"
    # Survives a restart (users, permissions, policies are stored).
    ok(ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*"))
    b.restart()
    assert [p["name"] for p in json.loads(ok(ctl("--json", "list_policies", "-p", vhost)).stdout)] == ["lim"]
    use(b, user, "pw", vhost, uniq("q"))
    ok(ctl("delete_user", user))
    assert login_refused(b, user, "pw", vhost)
    ok(ctl("delete_vhost", vhost))
    assert vhost not in [v["name"] for v in json.loads(ok(ctl("--json", "list_vhosts")).stdout)]
    wrong = subprocess.run([warrenctl_bin(), "--node", f"127.0.0.1:{port}", "--cookie", "wrong", "list_users"],
                           capture_output=True, text=True, timeout=30)
    assert wrong.returncode == 2


# ---- inter-node TLS ---------------------------------------------------------------------------

def node_pki(directory):
    """A CA and one certificate valid as TLS server and client (every node is both)."""
    os.makedirs(directory, exist_ok=True)
    ca, ca_key = os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key")
    cert, key = os.path.join(directory, "node.pem"), os.path.join(directory, "node.key")
    csr, ext = os.path.join(directory, "node.csr"), os.path.join(directory, "node.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Warren Cluster CA",
             "-keyout", ca_key, "-out", ca, "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=warren-node", "-keyout", key, "-out", csr,
             cwd=directory)
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
             "-extfile", ext, "-out", cert, cwd=directory)
    return ca, cert, key


def tls_config(ca, cert, key):
    return {"cluster.ssl": "true", "cluster.ssl_options.certfile": cert, "cluster.ssl_options.keyfile": key,
            "cluster.ssl_options.cacertfile": ca, "cluster.ssl_options.verify": "verify_peer",
            "cluster.ssl_options.fail_if_no_peer_cert": "true"}


def test_cluster_over_tls(tmp_path, pki, uniq):
    ca, cert, key = node_pki(str(tmp_path / "pki"))
    c = WarrenCluster(str(tmp_path / "tls"), pki, extra_config=tls_config(ca, cert, key))
    c.ctl_extra = ["--cacert", ca, "--cert", cert, "--key", key]
    try:
        c.start()
        wait_formed(c, c.nodes, NAMES)
        n1, n2, _ = c.nodes
        assert "inter-node connections use TLS" in n1.log_text()
        q = uniq("tlsq")
        conn1 = pika_connect(n1)
        conn1.channel().queue_declare(q, durable=True)  # homed on node 1
        conn1.close()
        conn2 = pika_connect(n2)
        try:
            ch = conn2.channel()
            eventually(lambda: ch.queue_declare(q, passive=True), retry_on=(pika.exceptions.ChannelClosedByBroker,))
            ch.confirm_delivery()
            ch.basic_publish("", q, b"over tls")
            deadline = time.monotonic() + 10
            body = None
            while body is None and time.monotonic() < deadline:
                _m, _p, body = ch.basic_get(q, auto_ack=True)
                if body is None:
                    time.sleep(0.05)
            assert body == b"over tls"
        finally:
            if conn2.is_open:
                conn2.close()
        # warrenctl without TLS cannot talk to a TLS cluster port.
        plain = subprocess.run([warrenctl_bin(), "--node", f"127.0.0.1:{n1.cluster_port}", "--cookie", c.cookie,
                                "--timeout", "3", "cluster_status"], capture_output=True, text=True, timeout=20)
        assert plain.returncode != 0
    finally:
        c.stop()


def test_tls_node_cannot_join_a_plain_cluster(tmp_path, pki):
    ca, cert, key = node_pki(str(tmp_path / "pki"))
    c = WarrenCluster(str(tmp_path / "mixed"), pki)
    odd = c.nodes[2]
    odd.extra_config.update(tls_config(ca, cert, key))
    odd._write_config()
    try:
        c.start()
        st = c.wait_status(c.nodes[0], lambda s: s.get("formed") and running_names(s) == sorted(NAMES[:2]),
                           timeout=40, what="a cluster of the two plain nodes")
        time.sleep(3)  # give the TLS node time to (fail to) join
        st = c.status(c.nodes[0])
        assert NAMES[2] not in running_names(st)
        assert NAMES[2] not in [n["name"] for n in st["nodes"]]
        odd_ctl = subprocess.run([warrenctl_bin(), "--node", f"127.0.0.1:{odd.cluster_port}", "--cookie", c.cookie,
                                  "--cacert", ca, "--cert", cert, "--key", key, "--json", "cluster_status"],
                                 capture_output=True, text=True, timeout=20)
        assert odd_ctl.returncode == 0, odd_ctl.stderr
        assert json.loads(odd_ctl.stdout)["formed"] is False
    finally:
        c.stop()
