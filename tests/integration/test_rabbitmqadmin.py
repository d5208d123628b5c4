"""rabbitmqadmin (RabbitMQ's own command-line client of the management API) against a node.

The script is RabbitMQ's, not ours: it ships in the management plugin (priv/www/cli/
rabbitmqadmin; Debian's rabbitmq-server package also installs it as /usr/bin/rabbitmqadmin).
It is found, in order, at $WARREN_RABBITMQADMIN, inside an installed rabbitmq_management
plugin (a directory or an .ez archive), or on PATH; without it the module is skipped. It runs
with python3 against the node's management port, as an operator would: list, declare (classic
and quorum queues with arguments, exchanges, bindings), publish, get, delete, export the
definitions to a file and import that file into a fresh node.

Checked against RabbitMQ 3.10.8 with rabbitmq_management (WARREN_TEST_RABBITMQ=1).
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import conftest
from helpers.clients import pika_connect, wait_for

pytestmark = pytest.mark.timeout(120)

PLUGIN_DIRS = "/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins"


def _from_ez(tmpdir):
    for ez in sorted(glob.glob(os.path.join(PLUGIN_DIRS, "rabbitmq_management-*.ez"))):
        with zipfile.ZipFile(ez) as z:
            for name in z.namelist():
                if name.endswith("priv/www/cli/rabbitmqadmin"):
                    out = os.path.join(tmpdir, "rabbitmqadmin")
                    with open(out, "wb") as f:
                        f.write(z.read(name))
                    return out
    return None


def find_rabbitmqadmin(tmpdir):
    env = os.environ.get("WARREN_RABBITMQADMIN")
    if env:
        return env if os.path.isfile(env) else None
    hits = sorted(glob.glob(os.path.join(PLUGIN_DIRS, "rabbitmq_management-*", "priv", "www", "cli",
                                         "rabbitmqadmin")))
    if hits:
        return hits[-1]
    return _from_ez(tmpdir) or shutil.which("rabbitmqadmin")


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = find_rabbitmqadmin(str(tmp_path_factory.mktemp("rabbitmqadmin")))
    if not path:
        pytest.skip("rabbitmqadmin not found: set WARREN_RABBITMQADMIN, or install Debian's "
                    "rabbitmq-server (scripts/deps.sh bench), which ships it in the management "
                    "plugin's priv/www/cli and as /usr/bin/rabbitmqadmin")
    return path


@pytest.fixture(scope="module")
def node(module_broker):
    if conftest.EXTERNAL:
        pytest.skip("needs a broker whose management port the suite configured")
    return module_broker()


class Admin:
    def __init__(self, script, broker):
        self.script = script
        self.broker = broker

    def run(self, *args, vhost=None, check=True):
        cmd = [sys.executable, self.script, "-H", self.broker.host, "-P", str(self.broker.mgmt_port),
               "-u", "guest", "-p", "guest"]
        if vhost:
            cmd += ["-V", vhost]
        p = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=30)
        if check:
            assert p.returncode == 0, f"rabbitmqadmin {' '.join(args)}: {p.returncode}\n{p.stdout}{p.stderr}"
        return p

    def list(self, what, *columns, vhost=None):
        out = self.run("-f", "raw_json", "list", what, *columns, vhost=vhost).stdout
        return json.loads(out)


@pytest.fixture
def admin(script, node):
    return Admin(script, node)


def test_list(admin):
    names = {x["name"] for x in admin.list("exchanges", "name", "type")}
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"} <= names
    assert "/" in {v["name"] for v in admin.list("vhosts")}
    guest = [u for u in admin.list("users") if u["name"] == "guest"]
    assert guest and "administrator" in guest[0]["tags"]
    assert isinstance(admin.list("queues"), list)
    assert admin.list("nodes", "name", "running")[0]["running"] is True
    table = admin.run("list", "exchanges", "name", "type").stdout  # the default table format
    assert "amq.topic" in table and "topic" in table


def test_declare_classic_and_quorum_queues(admin, node, uniq):
    cq, qq = uniq("cq"), uniq("qq")
    assert "queue declared" in admin.run("declare", "queue", f"name={cq}", "durable=true",
                                         'arguments={"x-max-length": 7, "x-message-ttl": 60000}').stdout
    admin.run("declare", "queue", f"name={qq}", "durable=true", "queue_type=quorum",
              'arguments={"x-delivery-limit": 5}')
    queues = {q["name"]: q for q in admin.list("queues", "name", "type", "durable", "arguments")}
    assert queues[cq]["type"] == "classic" and queues[cq]["durable"] is True
    assert queues[cq]["arguments"] == {"x-max-length": 7, "x-message-ttl": 60000}
    assert queues[qq]["type"] == "quorum"
    assert queues[qq]["arguments"] == {"x-delivery-limit": 5, "x-queue-type": "quorum"}
    conn = pika_connect(node)  # AMQP clients see the same queues, with the same arguments
    ch = conn.channel()
    ch.queue_declare(cq, durable=True, arguments={"x-max-length": 7, "x-message-ttl": 60000})
    ch.queue_declare(qq, durable=True, arguments={"x-queue-type": "quorum", "x-delivery-limit": 5})
    conn.close()
    admin.run("delete", "queue", f"name={cq}")
    admin.run("delete", "queue", f"name={qq}")
    names = {q["name"] for q in admin.list("queues", "name")}
    assert cq not in names and qq not in names


def test_exchange_binding_publish_get_delete(admin, node, uniq):
    q, x = uniq("q"), uniq("x")
    admin.run("declare", "queue", f"name={q}")
    admin.run("declare", "exchange", f"name={x}", "type=topic", "durable=true")
    admin.run("declare", "binding", f"source={x}", f"destination={q}", "routing_key=a.*")
    xs = {e["name"]: e for e in admin.list("exchanges", "name", "type", "durable")}
    assert xs[x]["type"] == "topic" and xs[x]["durable"] is True
    bindings = [b for b in admin.list("bindings") if b["source"] == x]
    assert [(b["destination"], b["destination_type"], b["routing_key"]) for b in bindings] == [(q, "queue", "a.*")]

    out = admin.run("publish", f"exchange={x}", "routing_key=a.b", "payload=hello",
                    'properties={"content_type": "text/plain", "headers": {"h": 1}}').stdout
    assert "Message published" in out
    assert "Message published but NOT routed" in admin.run("publish", f"exchange={x}", "routing_key=b.c",
                                                           "payload=lost").stdout
    assert wait_for(lambda: admin.list("queues", "name", "messages") and
                    {r["name"]: r.get("messages") for r in admin.list("queues", "name", "messages")}.get(q) == 1,
                    timeout=15, step=0.5)
    got = json.loads(admin.run("-f", "raw_json", "get", f"queue={q}", "ackmode=ack_requeue_true").stdout)
    assert got[0]["payload"] == "hello" and got[0]["routing_key"] == "a.b"
    assert got[0]["properties"]["content_type"] == "text/plain"
    assert got[0]["properties"]["headers"] == {"h": 1}
    got = json.loads(admin.run("-f", "raw_json", "get", f"queue={q}", "ackmode=ack_requeue_false").stdout)
    assert got[0]["payload"] == "hello" and got[0]["redelivered"] is True

    conn = pika_connect(node)  # published by AMQP, fetched by rabbitmqadmin
    conn.channel().basic_publish(x, "a.z", b"from pika")
    conn.close()
    assert wait_for(lambda: json.loads(admin.run("-f", "raw_json", "get", f"queue={q}",
                                                 "ackmode=ack_requeue_false").stdout)[:1] != [], timeout=10)

    admin.run("delete", "binding", f"source={x}", f"destination={q}", "destination_type=queue",
              "properties_key=a.%2A")
    assert [b for b in admin.list("bindings") if b["source"] == x] == []
    admin.run("delete", "exchange", f"name={x}")
    admin.run("delete", "queue", f"name={q}")
    assert x not in {e["name"] for e in admin.list("exchanges", "name")}


def test_vhost_user_permission_policy(admin, uniq):
    vh, user, pol = uniq("vh"), uniq("user"), uniq("pol")
    admin.run("declare", "vhost", f"name={vh}")
    admin.run("declare", "user", f"name={user}", "password=pw", "tags=monitoring")
    admin.run("declare", "permission", f"vhost={vh}", f"user={user}", "configure=.*", "write=.*", "read=.*")
    admin.run("declare", "policy", f"name={pol}", "pattern=^lim", 'definition={"max-length": 5}',
              "apply-to=queues", vhost=vh)
    admin.run("declare", "queue", "name=lim1", vhost=vh)
    assert {"vhost": vh, "user": user} in [{"vhost": p["vhost"], "user": p["user"]}
                                          for p in admin.list("permissions")]
    pols = admin.list("policies", vhost=vh)
    assert [(p["name"], p["pattern"], p["definition"]) for p in pols if p["vhost"] == vh] == \
        [(pol, "^lim", {"max-length": 5})]
    assert [q["name"] for q in admin.list("queues", "name", vhost=vh)] == ["lim1"]
    admin.run("delete", "policy", f"name={pol}", vhost=vh)
    admin.run("delete", "user", f"name={user}")
    admin.run("delete", "vhost", f"name={vh}")
    assert vh not in {v["name"] for v in admin.list("vhosts")}


def test_export_and_import(admin, node, fresh_broker, uniq, tmp_path, script):
    cq, qq, x = uniq("cq"), uniq("qq"), uniq("x")
    admin.run("declare", "queue", f"name={cq}", "durable=true", 'arguments={"x-max-length": 3}')
    admin.run("declare", "queue", f"name={qq}", "durable=true", "queue_type=quorum")
    admin.run("declare", "exchange", f"name={x}", "type=fanout", "durable=true")
    admin.run("declare", "binding", f"source={x}", f"destination={cq}")
    path = str(tmp_path / "defs.json")
    assert "Exported definitions" in admin.run("export", path).stdout
    with open(path) as f:
        defs = json.load(f)
    queues = {q["name"]: q for q in defs["queues"]}
    assert queues[cq]["arguments"] == {"x-max-length": 3}
    assert queues[qq]["arguments"].get("x-queue-type") == "quorum"
    assert x in {e["name"] for e in defs["exchanges"]}
    assert (x, cq) in {(b["source"], b["destination"]) for b in defs["bindings"]}
    assert "guest" in {u["name"] for u in defs["users"]}

    fresh = Admin(script, fresh_broker())
    assert "Uploaded definitions" in fresh.run("import", path).stdout
    queues = {q["name"]: q for q in fresh.list("queues", "name", "type", "arguments")}
    assert queues[cq]["arguments"] == {"x-max-length": 3}
    assert queues[qq]["type"] == "quorum"
    assert x in {e["name"] for e in fresh.list("exchanges", "name")}
    assert (x, cq) in {(b["source"], b["destination"]) for b in fresh.list("bindings")}
