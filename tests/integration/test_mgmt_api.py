"""The management plugin's HTTP API (issue 7, first slice): RabbitMQ's paths, methods, status
codes and JSON field names, checked against what AMQP clients did on the same broker.

One broker per module (module_broker) with users of every kind:
  guest   administrator, permissions on / and v2
  mon     monitoring, no permissions
  mgr     management, permissions on v2 only
  notag   no tags, permissions on /

Checked against RabbitMQ 3.10.8 with rabbitmq_management (WARREN_TEST_RABBITMQ=1: conftest
enables the plugin). RabbitMQ's counters come from its stats database, refreshed every few
seconds, so counts are polled (wait_for) rather than read once. Tests of Warren's own limits
(431 / 413) run against Warren only.
"""
import base64
import socket

import pytest
import requests

import conftest
from helpers import passwords
from helpers.clients import pika_connect, wait_for

pytestmark = pytest.mark.timeout(120)

DEFS = passwords.definitions(
    users=[passwords.user("guest", "guest", tags="administrator"),
           passwords.user("mon", "mon-pw", tags="monitoring"),
           passwords.user("mgr", "mgr-pw", tags="management"),
           passwords.user("notag", "notag-pw")],
    vhosts=("/", "v2"),
    permissions=[passwords.permission("guest", "/"), passwords.permission("guest", "v2"),
                 passwords.permission("mgr", "v2"), passwords.permission("notag", "/")])

GUEST = ("guest", "guest")
NOT_FOUND = {"error": "Object Not Found", "reason": "Not Found"}
STATS_WAIT = 15.0  # RabbitMQ's stats database lags behind by its collection interval


@pytest.fixture(scope="module")
def mb(module_broker):
    if conftest.EXTERNAL:
        pytest.skip("needs a broker with this module's users")
    return module_broker(definitions=DEFS)


class Api:
    def __init__(self, broker):
        self.base = f"http://{broker.host}:{broker.mgmt_port}/api"
        self.session = requests.Session()

    def call(self, method, path, auth=GUEST, **kw):
        return self.session.request(method, self.base + path, auth=auth, timeout=10, **kw)

    def get(self, path, auth=GUEST, **kw):
        return self.call("GET", path, auth=auth, **kw)

    def ok(self, path, auth=GUEST):
        r = self.get(path, auth=auth)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()


@pytest.fixture
def api(mb):
    a = Api(mb)
    yield a
    a.session.close()


@pytest.fixture
def ch(mb):
    c = pika_connect(mb)
    yield c.channel()
    if c.is_open:
        c.close()


def node_name(api):
    return api.ok("/overview")["node"]


# ---------------------------------------------------------------------------
# Authentication and authorization
# ---------------------------------------------------------------------------

def test_no_credentials_is_401_with_basic_challenge(api):
    r = api.get("/overview", auth=None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Basic ")
    assert r.content == b""


def test_wrong_password_is_login_failed(api):
    r = api.get("/overview", auth=("guest", "wrong"))
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorized", "reason": "Login failed"}
    r = api.get("/overview", auth=("nobody", "x"))
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorized", "reason": "Login failed"}


def test_user_without_tags_is_not_management_user(api):
    r = api.get("/overview", auth=("notag", "notag-pw"))
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorised", "reason": "Not management user"}


def test_administrator_only_endpoints(api):
    for path in ("/users", "/users/guest", "/permissions", "/definitions", "/vhosts/v2"):
        for who in (("mgr", "mgr-pw"), ("mon", "mon-pw")):
            r = api.get(path, auth=who)
            assert r.status_code == 401, (path, who)
            assert r.json() == {"error": "not_authorised", "reason": "Not administrator user"}
        assert api.get(path).status_code == 200


def test_vhost_scoped_paths_need_permissions_there(api):
    denied = {"error": "not_authorised", "reason": "User not authorised to access virtual host"}
    for who in (("mgr", "mgr-pw"), ("mon", "mon-pw")):
        r = api.get("/queues/%2F", auth=who)
        assert r.status_code == 401
        assert r.json() == denied
    assert api.get("/queues/v2", auth=("mgr", "mgr-pw")).status_code == 200
    assert api.get("/exchanges/v2", auth=("mgr", "mgr-pw")).status_code == 200
    assert api.get("/bindings/v2", auth=("mgr", "mgr-pw")).status_code == 200


def test_listings_are_filtered_to_visible_vhosts(api, ch, uniq):
    q = uniq("q")
    ch.queue_declare(q)
    # the vhost list: a management user sees its vhosts, monitoring users and administrators all
    assert [v["name"] for v in api.ok("/vhosts", auth=("mgr", "mgr-pw"))] == ["v2"]
    assert sorted(v["name"] for v in api.ok("/vhosts", auth=("mon", "mon-pw"))) == ["/", "v2"]
    # object listings: administrators see all; other users (monitoring too, as RabbitMQ 3.10)
    # only the vhosts they have permissions on
    for listing in ("/queues", "/bindings"):
        for who in (("mgr", "mgr-pw"), ("mon", "mon-pw")):
            assert q not in [x.get("name", x.get("destination")) for x in api.ok(listing, auth=who)]
    assert q in [x["name"] for x in api.ok("/queues")]


def test_whoami(api):
    assert api.ok("/whoami") == {"name": "guest", "tags": ["administrator"]}
    me = api.ok("/whoami", auth=("mon", "mon-pw"))
    assert me["name"] == "mon" and me["tags"] == ["monitoring"]


# ---------------------------------------------------------------------------
# Read-only endpoints
# ---------------------------------------------------------------------------

def test_overview_fields(api, mb, ch, uniq):
    o = api.ok("/overview")
    for key in ("management_version", "rabbitmq_version", "product_name", "product_version",
                "cluster_name", "node", "object_totals", "queue_totals", "message_stats",
                "listeners", "exchange_types", "rates_mode"):
        assert key in o, key
    for key in ("connections", "channels", "exchanges", "queues", "consumers"):
        assert isinstance(o["object_totals"][key], int), key
    for key in ("messages", "messages_ready", "messages_unacknowledged"):
        # (RabbitMQ leaves them out until its stats database has a sample)
        assert isinstance(o["queue_totals"].get(key, 0), int), key
    amqp = [l for l in o["listeners"] if l["protocol"] == "amqp"]
    assert amqp and amqp[0]["port"] == mb.port
    assert {"direct", "fanout", "topic", "headers"} <= {t["name"] for t in o["exchange_types"]}
    # object and message totals follow what a client does
    q = uniq("q")
    ch.queue_declare(q)
    ch.confirm_delivery()
    before = o["message_stats"].get("publish", 0)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)

    def counted():
        now = api.ok("/overview")
        return (now["message_stats"].get("publish", 0) >= before + 3
                and now["object_totals"]["connections"] >= 1
                and now["queue_totals"].get("messages", 0) >= 3)
    assert wait_for(counted, STATS_WAIT), api.ok("/overview")


def test_vhosts(api):
    names = [v["name"] for v in api.ok("/vhosts")]
    assert "/" in names and "v2" in names
    v = api.ok("/vhosts/%2F")
    assert v["name"] == "/"
    assert api.get("/vhosts/nope").json() == NOT_FOUND
    assert api.get("/vhosts/nope").status_code == 404


def test_users_and_permissions(api):
    users = {u["name"]: u for u in api.ok("/users")}
    assert set(users) >= {"guest", "mon", "mgr", "notag"}
    g = users["guest"]
    assert g["tags"] == ["administrator"]
    assert g["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert base64.b64decode(g["password_hash"]) and len(base64.b64decode(g["password_hash"])) == 36
    assert api.ok("/users/mgr")["tags"] == ["management"]
    assert api.ok("/users/notag")["tags"] == []
    r = api.get("/users/nobody")
    assert r.status_code == 404 and r.json() == NOT_FOUND
    perms = api.ok("/permissions")
    assert {"user": "mgr", "vhost": "v2", "configure": ".*", "write": ".*", "read": ".*"} in perms
    assert not [p for p in perms if p["user"] == "mon"]


def test_queue_counts_follow_amqp_clients(api, ch, uniq):
    q = uniq("q")
    ch.queue_declare(q, durable=True, arguments={"x-max-length": 100})
    for i in range(3):
        ch.basic_publish("", q, b"body%d" % i)
    path = f"/queues/%2F/{q}"
    assert wait_for(lambda: api.ok(path).get("messages") == 3, STATS_WAIT), api.ok(path)
    info = api.ok(path)
    assert info["name"] == q and info["vhost"] == "/"
    assert info["type"] == "classic" and info["state"] == "running"
    assert info["durable"] is True and info["auto_delete"] is False and info["exclusive"] is False
    assert info["arguments"] == {"x-max-length": 100}
    assert info["messages_ready"] == 3 and info["messages_unacknowledged"] == 0
    assert info["consumers"] == 0
    assert info["node"] == node_name(api)
    assert info["policy"] is None
    # one delivered, not acked
    method, _, _ = ch.basic_get(q, auto_ack=False)
    assert method is not None
    assert wait_for(lambda: (api.ok(path)["messages_ready"], api.ok(path)["messages_unacknowledged"]) == (2, 1),
                    STATS_WAIT), api.ok(path)
    ch.basic_ack(method.delivery_tag)
    # a consumer is counted
    ch.basic_consume(q, lambda *a: None)
    assert wait_for(lambda: api.ok(path)["consumers"] == 1, STATS_WAIT), api.ok(path)
    listed = [x for x in api.ok("/queues/%2F") if x["name"] == q]
    assert len(listed) == 1 and listed[0]["type"] == "classic"


def test_quorum_queue_fields(api, ch, uniq):
    q = uniq("qq")
    ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    path = f"/queues/%2F/{q}"
    node = node_name(api)
    assert wait_for(lambda: api.ok(path).get("leader") == node and api.ok(path).get("messages") == 1,
                    STATS_WAIT), api.ok(path)
    info = api.ok(path)
    assert info["type"] == "quorum"
    assert info["members"] == [node] and info["online"] == [node]
    assert info["arguments"] == {"x-queue-type": "quorum"}
    assert info["node"] == node


def test_unknown_objects_are_404(api):
    for path in ("/queues/%2F/nope", "/queues/nope/x", "/queues/nope", "/exchanges/%2F/nope",
                 "/exchanges/nope", "/vhosts/nope", "/users/nope", "/nonexistent", "/aliveness-test/nope"):
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.json() == NOT_FOUND, path


def test_exchanges(api, ch, uniq):
    x = uniq("x")
    ch.exchange_declare(x, "topic", durable=True, arguments={"alternate-exchange": "amq.fanout"})
    names = [e["name"] for e in api.ok("/exchanges/%2F")]
    assert {"", "amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match", x} <= set(names)
    assert x in [e["name"] for e in api.ok("/exchanges")]
    e = api.ok(f"/exchanges/%2F/{x}")
    assert {k: e[k] for k in ("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments")} == {
        "name": x, "vhost": "/", "type": "topic", "durable": True, "auto_delete": False, "internal": False,
        "arguments": {"alternate-exchange": "amq.fanout"}}
    d = api.ok("/exchanges/%2F/amq.default")
    assert d["name"] == "" and d["type"] == "direct"


def test_bindings(api, ch, uniq):
    q, x = uniq("q"), uniq("x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "direct")
    ch.queue_bind(q, x, routing_key="rk")
    bindings = api.ok("/bindings/%2F")
    mine = [b for b in bindings if b["destination"] == q]
    by_source = {b["source"]: b for b in mine}
    assert set(by_source) == {"", x}
    b = by_source[x]
    assert {k: b[k] for k in ("source", "vhost", "destination", "destination_type", "routing_key", "arguments")} == {
        "source": x, "vhost": "/", "destination": q, "destination_type": "queue", "routing_key": "rk",
        "arguments": {}}
    assert b["properties_key"] == "rk"
    assert by_source[""]["routing_key"] == q
    assert any(b["destination"] == q for b in api.ok("/bindings"))


def test_definitions_export(api, ch, uniq):
    q, x = uniq("q"), uniq("x")
    ch.queue_declare(q, durable=True, arguments={"x-message-ttl": 60000})
    ch.exchange_declare(x, "fanout", durable=True)
    ch.queue_bind(q, x, routing_key="k")
    d = api.ok("/definitions")
    for key in ("rabbit_version", "rabbitmq_version", "users", "vhosts", "permissions", "policies",
                "queues", "exchanges", "bindings", "parameters", "global_parameters", "topic_permissions"):
        assert key in d, key
    users = {u["name"]: u for u in d["users"]}
    assert users["guest"]["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    assert users["guest"]["password_hash"] == api.ok("/users/guest")["password_hash"]
    assert users["guest"]["tags"] in (["administrator"], "administrator")
    assert {"name": "v2"} in [{"name": v["name"]} for v in d["vhosts"]]
    assert {"user": "mgr", "vhost": "v2", "configure": ".*", "write": ".*", "read": ".*"} in d["permissions"]
    assert {"name": q, "vhost": "/", "durable": True, "auto_delete": False,
            "arguments": {"x-message-ttl": 60000}} in d["queues"]
    assert {"name": x, "vhost": "/", "type": "fanout", "durable": True, "auto_delete": False,
            "internal": False, "arguments": {}} in d["exchanges"]
    assert {"source": x, "vhost": "/", "destination": q, "destination_type": "queue",
            "routing_key": "k", "arguments": {}} in d["bindings"]
    assert not [e for e in d["exchanges"] if e["name"] == "" or e["name"].startswith("amq.")]
    assert not [b for b in d["bindings"] if b["source"] == ""]


def test_health_and_aliveness(api):
    r = api.get("/health/checks/alarms")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = api.get("/aliveness-test/%2F")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


# ---------------------------------------------------------------------------
# Writes
# ---------------------------------------------------------------------------

def test_put_and_delete_queue(api, mb, ch, uniq):
    import pika
    q = uniq("q")
    path = f"/queues/%2F/{q}"
    r = api.call("PUT", path, json={"durable": True, "arguments": {"x-max-length": 5}})
    assert r.status_code == 201, r.text
    assert api.call("PUT", path, json={"durable": True, "arguments": {"x-max-length": 5}}).status_code == 204
    r = api.call("PUT", path, json={"durable": True})
    assert r.status_code == 400
    assert r.json()["error"] == "bad_request" and "inequivalent arg 'x-max-length'" in r.json()["reason"]
    # visible to AMQP clients, as declared
    ok = ch.queue_declare(q, passive=True).method
    assert ok.message_count == 0
    ch.basic_publish("", q, b"hello")
    assert wait_for(lambda: api.ok(path).get("messages") == 1, STATS_WAIT)
    info = api.ok(path)
    assert info["durable"] is True and info["arguments"] == {"x-max-length": 5}
    r = api.call("DELETE", path, params={"if-empty": "true"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert api.call("DELETE", path).status_code == 204
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        ch.queue_declare(q, passive=True)
    assert info.value.reply_code == 404
    r = api.call("DELETE", path)
    assert r.status_code == 404 and r.json() == NOT_FOUND


def test_put_quorum_queue(api, ch, uniq):
    q = uniq("qq")
    path = f"/queues/%2F/{q}"
    r = api.call("PUT", path, json={"durable": True, "arguments": {"x-queue-type": "quorum"}})
    assert r.status_code == 201, r.text
    assert api.ok(path)["type"] == "quorum"
    ch.confirm_delivery()
    ch.basic_publish("", q, b"x")
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    assert api.call("DELETE", path).status_code == 204


def test_put_and_delete_exchange(api, ch, uniq):
    x = uniq("x")
    path = f"/exchanges/%2F/{x}"
    r = api.call("PUT", path, json={"type": "headers", "durable": True})
    assert r.status_code == 201, r.text
    assert api.call("PUT", path, json={"type": "headers", "durable": True}).status_code == 204
    e = api.ok(path)
    assert e["type"] == "headers" and e["durable"] is True
    ch.exchange_declare(x, "headers", passive=True)
    r = api.call("PUT", path, json={"type": "fanout", "durable": True})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = api.call("PUT", f"/exchanges/%2F/{uniq('y')}", json={"type": "bogus"})
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    # defaults: a direct, non-durable exchange
    y = uniq("y")
    assert api.call("PUT", f"/exchanges/%2F/{y}", json={}).status_code == 201
    e = api.ok(f"/exchanges/%2F/{y}")
    assert e["type"] == "direct" and e["durable"] is False
    assert api.call("DELETE", f"/exchanges/%2F/{y}").status_code == 204
    assert api.call("DELETE", path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.call("DELETE", path).status_code == 404


def test_write_errors(api, uniq):
    r = api.call("PUT", f"/queues/%2F/{uniq('q')}", data="not json")
    assert r.status_code == 400 and r.json() == {"error": "bad_request", "reason": "not_json"}
    r = api.call("PUT", "/queues/%2F/amq.reserved", json={})
    assert r.status_code == 401 and r.json() == {"error": "not_authorised", "reason": "Access refused."}
    r = api.call("PUT", f"/queues/%2F/{uniq('q')}", json={}, auth=("mgr", "mgr-pw"))
    assert r.status_code == 401
    assert r.json() == {"error": "not_authorised", "reason": "User not authorised to access virtual host"}
    assert api.call("POST", "/queues/%2F/whatever").status_code == 405


def test_management_user_declares_in_its_vhost(api, uniq):
    q = uniq("q")
    auth = ("mgr", "mgr-pw")
    assert api.call("PUT", f"/queues/v2/{q}", json={}, auth=auth).status_code == 201
    assert q in [x["name"] for x in api.ok("/queues/v2", auth=auth)]
    assert api.call("DELETE", f"/queues/v2/{q}", auth=auth).status_code == 204


def test_put_and_delete_user(api, uniq):
    u = uniq("user")
    path = f"/users/{u}"
    assert api.call("PUT", path, json={"password": "pw1", "tags": "management"}).status_code == 201
    assert api.ok("/whoami", auth=(u, "pw1")) == {"name": u, "tags": ["management"]}
    assert api.call("PUT", path, json={"password": "pw2", "tags": ["monitoring", "policymaker"]}).status_code == 204
    assert api.get("/whoami", auth=(u, "pw1")).status_code == 401
    assert api.ok("/whoami", auth=(u, "pw2"))["tags"] == ["monitoring", "policymaker"]
    h = passwords.rabbit_sha256_hash("pw3")
    r = api.call("PUT", path, json={"password_hash": h, "hashing_algorithm": passwords.SHA256, "tags": "management"})
    assert r.status_code == 204
    assert api.ok(path)["password_hash"] == h
    assert api.ok("/whoami", auth=(u, "pw3"))["name"] == u
    # without password or hash: no password at all
    assert api.call("PUT", path, json={"tags": "management"}).status_code == 204
    assert api.ok(path)["password_hash"] == ""
    assert api.get("/whoami", auth=(u, "pw3")).status_code == 401
    r = api.call("PUT", path, json={"password": "x"}, auth=("mgr", "mgr-pw"))
    assert r.status_code == 401 and r.json()["reason"] == "Not administrator user"
    assert api.call("DELETE", path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.call("DELETE", path).status_code == 404


def test_put_and_delete_vhost(api, mb, uniq):
    v = uniq("vh")
    path = f"/vhosts/{v}"
    assert api.call("PUT", path).status_code == 201
    assert api.call("PUT", path).status_code == 204
    # its creator may use it at once
    assert api.ok(f"/permissions/{v}/guest") == {"user": "guest", "vhost": v, "configure": ".*",
                                                 "write": ".*", "read": ".*"}
    assert api.ok(path)["name"] == v
    c = pika_connect(mb, vhost=v)
    c.channel().queue_declare("in-new-vhost")
    c.close()
    assert [q["name"] for q in api.ok(f"/queues/{v}")] == ["in-new-vhost"]
    assert api.call("DELETE", path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.call("DELETE", path).status_code == 404


def test_put_and_delete_permissions(api, uniq):
    u = uniq("user")
    assert api.call("PUT", f"/users/{u}", json={"password": "pw", "tags": ""}).status_code == 201
    path = f"/permissions/v2/{u}"
    try:
        body = {"configure": "^a", "write": ".*", "read": ""}
        assert api.call("PUT", path, json=body).status_code == 201
        assert api.call("PUT", path, json=body).status_code == 204
        assert api.ok(path) == {"user": u, "vhost": "v2", "configure": "^a", "write": ".*", "read": ""}
        assert {"user": u, "vhost": "v2", "configure": "^a", "write": ".*", "read": ""} in api.ok(f"/users/{u}/permissions")
        assert u in [p["user"] for p in api.ok("/vhosts/v2/permissions")]
        r = api.call("PUT", path, json={"configure": "(", "write": ".*", "read": ".*"})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = api.call("PUT", path, json={"configure": ".*"})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = api.call("PUT", "/permissions/v2/nobody", json=body)
        assert r.status_code == 400 and r.json() == {"error": "bad_request", "reason": "vhost_or_user_not_found"}
        assert api.call("DELETE", path).status_code == 204
        assert api.get(path).status_code == 404
        assert api.call("DELETE", path).status_code == 404
    finally:
        api.call("DELETE", f"/users/{u}")


def test_policies(api, ch, uniq):
    name = uniq("pol")
    prefix = uniq("p")
    path = f"/policies/%2F/{name}"
    body = {"pattern": "^" + prefix.replace(".", "\\."), "definition": {"max-length": 2}, "priority": 3,
            "apply-to": "queues"}
    assert api.call("PUT", path, json=body).status_code == 201
    try:
        assert api.call("PUT", path, json=body).status_code == 204
        assert api.ok(path) == {"vhost": "/", "name": name, "pattern": body["pattern"], "apply-to": "queues",
                                "definition": {"max-length": 2}, "priority": 3}
        assert name in [p["name"] for p in api.ok("/policies")]
        assert name in [p["name"] for p in api.ok("/policies/%2F")]
        # it applies to queues AMQP clients declare
        q = prefix + ".q"
        ch.queue_declare(q)
        for i in range(5):
            ch.basic_publish("", q, b"x")
        qpath = f"/queues/%2F/{q}"
        assert wait_for(lambda: api.ok(qpath).get("policy") == name and api.ok(qpath).get("messages") == 2,
                        STATS_WAIT), api.ok(qpath)
        r = api.call("PUT", f"/policies/%2F/{uniq('bad')}", json={"pattern": ".", "definition": {}})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = api.call("PUT", f"/policies/v2/{uniq('pm')}", json=body, auth=("mgr", "mgr-pw"))
        assert r.status_code == 401 and r.json() == {"error": "not_authorised",
                                                     "reason": "User not authorised to access object"}
    finally:
        assert api.call("DELETE", path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.call("DELETE", path).status_code == 404


def test_nodes(api, mb):
    node = node_name(api)
    # (RabbitMQ fills a node's figures in after its first stats collection)
    assert wait_for(lambda: "mem_used" in api.ok("/nodes")[0], STATS_WAIT)
    nodes = api.ok("/nodes")
    assert [n["name"] for n in nodes] == [node]
    n = nodes[0]
    assert n["running"] is True and n["type"] == "disc" and n["partitions"] == []
    for key in ("mem_used", "mem_limit", "disk_free", "disk_free_limit", "fd_used", "fd_total", "uptime",
                "processors"):
        assert isinstance(n[key], int) and n[key] >= 0, key
    assert n["mem_used"] > 0 and n["mem_alarm"] is False and n["disk_free_alarm"] is False
    assert api.ok(f"/nodes/{node}")["name"] == node
    r = api.get("/nodes", auth=("mgr", "mgr-pw"))
    assert r.status_code == 401 and r.json() == {"error": "not_authorised", "reason": "Not monitor user"}
    assert api.get("/nodes", auth=("mon", "mon-pw")).status_code == 200
    if mb.flavour == "warren":  # (RabbitMQ 3.10.8 answers 500 here)
        assert api.get("/nodes/nope@nowhere").status_code == 404


def test_health_checks(api, mb):
    for path in ("/health/checks/local-alarms", "/health/checks/virtual-hosts",
                 "/health/checks/node-is-quorum-critical"):
        r = api.get(path)
        assert r.status_code == 200 and r.json()["status"] == "ok", path
    r = api.get(f"/health/checks/port-listener/{mb.port}")
    assert r.status_code == 200 and r.json() == {"status": "ok", "port": mb.port}
    r = api.get("/health/checks/port-listener/1")
    assert r.status_code == 503
    assert r.json()["status"] == "failed" and r.json()["missing"] == 1 and mb.port in r.json()["ports"]
    r = api.get("/health/checks/protocol-listener/amqp")
    assert r.status_code == 200 and r.json() == {"status": "ok", "protocol": "amqp"}
    r = api.get("/health/checks/protocol-listener/mqtt")
    assert r.status_code == 503 and r.json()["missing"] == "mqtt" and "amqp" in r.json()["protocols"]


def test_cluster_name_and_extensions(api):
    assert isinstance(api.ok("/cluster-name")["name"], str)
    assert isinstance(api.ok("/extensions"), list)


def test_queue_and_exchange_bindings(api, ch, uniq):
    q, x, x2 = uniq("q"), uniq("x"), uniq("x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "topic")
    ch.exchange_declare(x2, "fanout")
    ch.queue_bind(q, x, routing_key="a.*")
    ch.exchange_bind(destination=x2, source=x, routing_key="b.#")
    qb = api.ok(f"/queues/%2F/{q}/bindings")
    assert sorted((b["source"], b["routing_key"]) for b in qb) == sorted([("", q), (x, "a.*")])
    src = api.ok(f"/exchanges/%2F/{x}/bindings/source")
    assert sorted((b["destination"], b["destination_type"]) for b in src) == sorted([(q, "queue"), (x2, "exchange")])
    assert api.ok(f"/exchanges/%2F/{x}/bindings/destination") == []
    dst = api.ok(f"/exchanges/%2F/{x2}/bindings/destination")
    assert [(b["source"], b["routing_key"]) for b in dst] == [(x, "b.#")]
    # (RabbitMQ answers for objects that do not exist too)
    assert [b["source"] for b in api.ok("/queues/%2F/nope/bindings")] == [""]
    assert api.ok("/exchanges/%2F/nope/bindings/source") == []


def test_purge_queue_contents(api, ch, uniq):
    for args in ({}, {"x-queue-type": "quorum"}):
        q = uniq("q")
        ch.queue_declare(q, durable=True, arguments=args)
        ch.confirm_delivery()
        for _ in range(3):
            ch.basic_publish("", q, b"x")
        path = f"/queues/%2F/{q}"
        assert wait_for(lambda: api.ok(path).get("messages") == 3, STATS_WAIT), api.ok(path)
        assert api.call("DELETE", path + "/contents").status_code == 204
        assert ch.queue_declare(q, passive=True).method.message_count == 0
        assert wait_for(lambda: api.ok(path).get("messages") == 0, STATS_WAIT), api.ok(path)
    assert api.call("DELETE", "/queues/%2F/nope/contents").status_code == 404


def test_https_listener(fresh_broker, pki):
    port = conftest.free_port()
    b = fresh_broker(config={"management.ssl.port": port, "management.ssl.ip": "127.0.0.1",
                             "management.ssl.certfile": pki.certfile, "management.ssl.keyfile": pki.keyfile})
    url = f"https://localhost:{port}/api"
    r = requests.get(url + "/whoami", auth=GUEST, verify=pki.ca, timeout=10)
    assert r.status_code == 200 and r.json()["name"] == "guest"
    assert wait_for(lambda: any(l["protocol"] == "https" and l["port"] == port
                                for l in requests.get(url + "/overview", auth=GUEST, verify=pki.ca,
                                                      timeout=10).json()["listeners"]), STATS_WAIT)
    r = requests.get(url + "/whoami", verify=pki.ca, timeout=10)
    assert r.status_code == 401
    # plain HTTP goes on alongside
    assert requests.get(f"http://{b.host}:{b.mgmt_port}/api/whoami", auth=GUEST, timeout=10).status_code == 200


@pytest.mark.timeout(120)
def test_message_rates(api, ch, uniq):
    """publish_details.rate (node and queue) and messages_details.rate follow a steady publisher."""
    import time
    q = uniq("q")
    ch.queue_declare(q)
    path = f"/queues/%2F/{q}"

    def rates():
        o, qi = api.ok("/overview"), api.ok(path)
        return (o["message_stats"].get("publish_details", {}).get("rate", 0),
                qi.get("message_stats", {}).get("publish_details", {}).get("rate", 0),
                qi.get("messages_details", {}).get("rate", 0))
    deadline = time.monotonic() + 30
    seen = None
    while time.monotonic() < deadline:
        for _ in range(20):
            ch.basic_publish("", q, b"x")
        conn_sleep(ch, 0.1)  # about 200 messages per second
        r = rates()
        if all(x > 0 for x in r):
            seen = r
            break
    assert seen, rates()
    node_rate, queue_rate, depth_rate = seen
    assert 20 <= queue_rate <= 1000 and 20 <= node_rate and 20 <= depth_rate <= 1000, seen


@pytest.mark.timeout(120)
def test_exchange_and_vhost_message_stats(api, ch, uniq):
    """An exchange's message_stats count what was published to it (publish_in) and what it routed
    (publish_out), a vhost's what was published into it and delivered / acknowledged from its
    queues, each with a rate that follows a steady publisher."""
    import time
    x, q = uniq("x"), uniq("q")
    ch.exchange_declare(x, "direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    xpath = f"/exchanges/%2F/{x}"
    assert "message_stats" not in api.ok(xpath)  # no traffic yet: none, as RabbitMQ
    deadline = time.monotonic() + 30
    xs = vs = {}
    while time.monotonic() < deadline:
        for i in range(20):
            ch.basic_publish(x, "k" if i % 2 == 0 else "nowhere", b"x")
        conn_sleep(ch, 0.1)
        xs = api.ok(xpath).get("message_stats", {})
        vs = api.ok("/vhosts/%2F").get("message_stats", {})
        if xs.get("publish_in_details", {}).get("rate", 0) > 0 and vs.get("publish_details", {}).get("rate", 0) > 0:
            break
    assert xs.get("publish_in", 0) >= 20 and xs["publish_out"] * 2 == xs["publish_in"], xs
    assert 10 <= xs["publish_in_details"]["rate"] and xs["publish_out_details"]["rate"] > 0, xs
    assert vs.get("publish", 0) >= xs["publish_in"] and vs["publish_details"]["rate"] > 0, vs
    got = 0
    while True:
        m, _p, _b = ch.basic_get(q)
        if m is None:
            break
        ch.basic_ack(m.delivery_tag)
        got += 1
    vstats = lambda: api.ok("/vhosts/%2F")["message_stats"]
    done = lambda v: all(v.get(k, 0) >= got for k in ("get", "ack", "deliver_get"))
    assert wait_for(lambda: done(vstats()), STATS_WAIT), vstats()  # (RabbitMQ emits stats every 5 s)
    assert any(e["name"] == x and "message_stats" in e for e in api.ok("/exchanges/%2F"))


def conn_sleep(ch, seconds):
    ch.connection.sleep(seconds)


def test_sorting_columns_and_pagination(api, mb, uniq):
    c = pika_connect(mb, vhost="v2")
    try:
        ch = c.channel()
        stem = uniq("pg")
        names = [f"{stem}-{i}" for i in range(5)]
        for i, n in enumerate(names):
            ch.queue_declare(n)
            for _ in range(i):
                ch.basic_publish("", n, b"x")
        mine = lambda items: [q["name"] for q in items if q["name"].startswith(stem)]
        assert mine(api.ok("/queues/v2")) == names  # sorted by vhost and name by default
        assert mine(api.ok("/queues/v2?sort=name&sort_reverse=true")) == names[::-1]
        assert wait_for(lambda: mine(api.ok("/queues/v2?sort=messages&sort_reverse=true")) == names[::-1], STATS_WAIT)
        cols = api.ok("/queues/v2?columns=name,message_stats.publish")
        assert all(set(q) <= {"name", "message_stats"} for q in cols)
        page = api.ok(f"/queues/v2?page=2&page_size=2&name={stem}")
        assert {k: page[k] for k in ("filtered_count", "item_count", "page", "page_count", "page_size")} == {
            "filtered_count": 5, "item_count": 2, "page": 2, "page_count": 3, "page_size": 2}
        assert page["total_count"] >= 5
        assert [q["name"] for q in page["items"]] == names[2:4]
        page = api.ok(f"/queues/v2?page=1&name=^{stem}-[13]$&use_regex=true")
        assert [q["name"] for q in page["items"]] == [names[1], names[3]]
        r = api.get("/queues/v2?page=1&page_size=501")
        assert r.status_code == 400 and r.json()["error"] == "invalid_pagination_parameters"
        r = api.get("/queues/v2?page=0")
        assert r.status_code == 400 and r.json()["error"] == "invalid_pagination_parameters"
        r = api.get(f"/queues/v2?page=9&page_size=2&name={stem}")
        assert r.status_code == 400 and r.json()["error"] == "page_out_of_range"
        r = api.get("/queues/v2?page=x")
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        for n in names:
            ch.queue_delete(n)
    finally:
        c.close()


def test_publish_and_get(api, ch, uniq):
    for args in ({}, {"x-queue-type": "quorum"}):
        q = uniq("q")
        ch.queue_declare(q, durable=True, arguments=args)
        pub = f"/exchanges/%2F/amq.default/publish"
        props = {"delivery_mode": 2, "content_type": "text/plain", "headers": {"h": 1, "s": "v"}}
        r = api.call("POST", pub, json={"routing_key": q, "payload": "hello", "payload_encoding": "string",
                                          "properties": props})
        assert r.status_code == 200 and r.json() == {"routed": True}
        r = api.call("POST", pub, json={"routing_key": q, "payload": "/wAB", "payload_encoding": "base64",
                                          "properties": {}})
        assert r.json() == {"routed": True}
        r = api.call("POST", pub, json={"routing_key": uniq("nowhere"), "payload": "x", "payload_encoding": "string",
                                          "properties": {}})
        assert r.json() == {"routed": False}
        get = f"/queues/%2F/{q}/get"
        assert wait_for(lambda: ch.queue_declare(q, passive=True).method.message_count == 2, 10)
        r = api.call("POST", get, json={"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert [m["payload_bytes"] for m in got] == [5, 3]
        first = got[0]
        assert {k: first[k] for k in ("payload", "payload_encoding", "exchange", "routing_key", "redelivered",
                                     "message_count")} == {
            "payload": "hello", "payload_encoding": "string", "exchange": "", "routing_key": q,
            "redelivered": False, "message_count": 1}
        # (quorum queues add x-delivery-count; RabbitMQ 3.10 from the first delivery on)
        first["properties"]["headers"].pop("x-delivery-count", None)
        assert first["properties"] == props
        assert got[1]["payload_encoding"] == "base64" and got[1]["payload"] == "/wAB"
        # requeued: an AMQP client gets both, redelivered
        assert wait_for(lambda: ch.queue_declare(q, passive=True).method.message_count == 2, 10)
        method, properties, body = ch.basic_get(q, auto_ack=False)
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in properties.headers.items()
                   if k != "x-delivery-count"}
        assert body == b"hello" and method.redelivered and headers == {"h": 1, "s": "v"}
        ch.basic_nack(method.delivery_tag, requeue=True)
        r = api.call("POST", get, json={"count": 1, "ackmode": "ack_requeue_false", "encoding": "base64",
                                        "truncate": 2})
        # (a quorum queue returns a requeued message behind the others, a classic one to its place)
        assert (r.json()[0]["payload"], r.json()[0]["payload_bytes"]) in (("aGU=", 5), ("/wA=", 3))
        assert wait_for(lambda: ch.queue_declare(q, passive=True).method.message_count == 1, 10)
        r = api.call("POST", get, json={"count": 1})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        r = api.call("POST", pub, json={"routing_key": q})
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        ch.queue_delete(q)
    r = api.call("POST", "/exchanges/%2F/nope/publish", json={"routing_key": "k", "payload": "x",
                                                               "payload_encoding": "string", "properties": {}})
    assert r.status_code == 400 and r.json() == {"error": "bad_request",
                                                 "reason": "404 NOT_FOUND - no exchange 'nope' in vhost '/'"}
    r = api.call("POST", "/queues/%2F/nope/get", json={"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert r.status_code == 404 and r.json() == {"error": "not_found",
                                                 "reason": "NOT_FOUND - no queue 'nope' in vhost '/'"}


def test_bind_and_unbind(api, ch, uniq):
    from urllib.parse import quote
    q, x, x2 = uniq("q"), uniq("x"), uniq("x")
    ch.queue_declare(q)
    ch.exchange_declare(x, "topic")
    ch.exchange_declare(x2, "fanout")
    base = f"/bindings/%2F/e/{x}/q/{q}"
    r = api.call("POST", base, json={"routing_key": "a.#/b c", "arguments": {}})
    assert r.status_code == 201
    assert r.headers["location"] == f"{q}/a.%2523%252Fb%2Bc"
    r = api.call("POST", base, json={"routing_key": "k2", "arguments": {"x": 1}})
    assert r.status_code == 201 and r.headers["location"].startswith(f"{q}/k2~")
    listed = api.ok(base)
    assert sorted(b["routing_key"] for b in listed) == ["a.#/b c", "k2"]
    assert {b["routing_key"]: b["properties_key"] for b in listed}["a.#/b c"] == "a.%23%2Fb+c"
    # routes for AMQP clients
    ch.basic_publish(x, "a.#/b c", b"m")
    assert wait_for(lambda: ch.queue_declare(q, passive=True).method.message_count == 1, 10)
    one = api.ok(base + "/" + quote("a.%23%2Fb+c", safe=""))
    assert one["routing_key"] == "a.#/b c" and one["destination"] == q
    # delete by the location the POST gave, and by the single-encoded key
    assert api.call("DELETE", f"/bindings/%2F/e/{x}/q/" + r.headers["location"]).status_code == 204
    assert api.call("DELETE", base + "/" + quote("a.#/b c", safe="")).status_code == 204
    assert [b for b in api.ok(base)] == []
    assert api.call("DELETE", base + "/nope").status_code == 404
    # exchange to exchange, empty routing key
    r = api.call("POST", f"/bindings/%2F/e/{x}/e/{x2}", json={})
    assert r.status_code == 201 and r.headers["location"] == f"{x2}/~"
    assert [b["properties_key"] for b in api.ok(f"/bindings/%2F/e/{x}/e/{x2}")] == ["~"]
    assert api.call("DELETE", f"/bindings/%2F/e/{x}/e/{x2}/~").status_code == 204
    r = api.call("POST", f"/bindings/%2F/e/nope/q/{q}", json={"routing_key": "k"})
    assert r.status_code == 404 and r.json() == {"error": "not_found", "reason": "no exchange 'nope' in vhost '/'"}


# ---------------------------------------------------------------------------
# HTTP: keep-alive, pipelining, limits
# ---------------------------------------------------------------------------

def _raw(broker, data, timeout=3.0):
    with socket.create_connection((broker.host, broker.mgmt_port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        except socket.timeout:
            pass
    return out


def test_pipelined_requests_on_one_connection(mb):
    auth = base64.b64encode(b"guest:guest").decode()
    one = f"GET /api/whoami HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode()
    last = f"GET /api/vhosts/%2F HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Basic {auth}\r\n\r\n"
    out = _raw(mb, one * 3 + last.encode())
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert out.count(b'"name":"guest"') == 3


def test_request_size_limits(mb):
    if mb.flavour != "warren":
        pytest.skip("Warren's own limits")
    out = _raw(mb, b"GET /api/whoami HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    auth = base64.b64encode(b"guest:guest").decode()
    out = _raw(mb, f"PUT /api/queues/%2F/big HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
                   f"Content-Length: {2 * 1024 * 1024}\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 413 ")
    out = _raw(mb, b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")
    # the broker is still serving
    assert requests.get(f"http://{mb.host}:{mb.mgmt_port}/api/whoami", auth=GUEST, timeout=5).status_code == 200


def test_exported_definitions_boot_a_fresh_broker(api, ch, fresh_broker, uniq):
    """GET /api/definitions from one broker, used as load_definitions of another, reproduces
    its users, vhosts (with their metadata), permissions, parameters (vhost limits; Warren also
    keeps components it does not act on, and global parameters), queues, exchanges and
    bindings."""
    q, x, v = uniq("q"), uniq("x"), uniq("meta")
    ch.queue_declare(q, durable=True, arguments={"x-max-length": 7})
    ch.exchange_declare(x, "topic", durable=True)
    ch.queue_bind(q, x, routing_key="a.#")
    assert api.call("PUT", f"/vhosts/{v}", json={"description": "round trip", "tags": "a,b"}).status_code == 201
    assert api.call("PUT", f"/vhost-limits/{v}/max-queues", json={"value": 9}).status_code == 204
    assert api.call("PUT", f"/vhost-limits/{v}/max-connections", json={"value": 4}).status_code == 204
    if not conftest.RABBITMQ_MODE:  # (RabbitMQ needs the federation plugin for this component)
        kept = {"parameters": [{"value": {"uri": "amqp://elsewhere"}, "vhost": v, "component": "federation-upstream",
                                "name": "up"}],
                "global_parameters": [{"name": "my_setting", "value": {"k": [1, 2]}}]}
        assert api.call("POST", "/definitions", json=kept).status_code == 204
    exported = api.ok("/definitions")
    assert {"value": {"max-connections": 4, "max-queues": 9}, "vhost": v, "component": "vhost-limits",
            "name": "limits"} in exported["parameters"]
    other = fresh_broker(definitions=exported)
    api2 = Api(other)
    try:
        assert api2.ok(f"/vhost-limits/{v}") == [{"vhost": v, "value": {"max-connections": 4, "max-queues": 9}}]
        if not conftest.RABBITMQ_MODE:  # (3.10 exports vhosts by name only; 4.x with their metadata)
            meta = api2.ok(f"/vhosts/{v}")
            assert (meta["description"], meta["tags"]) == ("round trip", ["a", "b"])
        assert api2.ok(f"/queues/%2F/{q}")["arguments"] == {"x-max-length": 7}
        assert api2.ok(f"/exchanges/%2F/{x}")["type"] == "topic"
        assert [b for b in api2.ok("/bindings/%2F") if b["source"] == x and b["destination"] == q
                and b["routing_key"] == "a.#"]
        assert {u["name"] for u in api2.ok("/users")} >= {"guest", "mon", "mgr", "notag"}
        assert api2.ok("/whoami", auth=("mgr", "mgr-pw"))["tags"] == ["management"]
        assert "v2" in [v["name"] for v in api2.ok("/vhosts")]
        exported2 = api2.ok("/definitions")
        keys = ["users", "permissions", "queues", "exchanges", "bindings", "parameters"]
        if not conftest.RABBITMQ_MODE:  # (3.10 exports vhosts by name only; its cluster ids differ)
            keys += ["vhosts", "global_parameters"]
        for key in keys:
            assert sorted(map(repr, exported2[key])) == sorted(map(repr, exported[key])), key
    finally:
        api2.session.close()
        api.call("DELETE", f"/vhosts/{v}")


CLUSTER_NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]


def test_cluster_writes_go_through_the_metadata_log(tmp_path, pki, uniq):
    """On a 3-node Warren cluster: a change made through one node's API is answered once it
    applied there, and every node's API and AMQP clients then see it."""
    import pika
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("starts its own Warren cluster")
    from helpers.cluster import WarrenCluster
    c = WarrenCluster(str(tmp_path / "cluster"), pki, size=3).start()
    apis = []
    try:
        c.wait_formed()
        apis = [Api(n) for n in c.nodes]
        a1, a2, a3 = apis
        for i, a in enumerate(apis):
            o = a.ok("/overview")
            assert o["node"] == CLUSTER_NAMES[i] and o["cluster_name"] == "itest"
        # /api/nodes from any node: every member's own figures (each answers for itself)
        nodes = a2.ok("/nodes")
        assert sorted(n["name"] for n in nodes) == CLUSTER_NAMES
        for n in nodes:
            assert n["running"] is True
            assert n["mem_used"] > 0 and n["fd_used"] > 0 and n["uptime"] > 0 and n["disk_free"] > 0, n
        assert len({n["os_pid"] for n in nodes}) == 3
        one = a1.ok(f"/nodes/{CLUSTER_NAMES[2]}")
        assert one["os_pid"] == next(n["os_pid"] for n in nodes if n["name"] == CLUSTER_NAMES[2])
        # a classic queue declared through node 2 lives there; every node lists it
        q = uniq("q")
        path = f"/queues/%2F/{q}"
        assert a2.call("PUT", path, json={"durable": True}).status_code == 201
        assert a2.ok(path)["node"] == CLUSTER_NAMES[1]
        assert wait_for(lambda: all(a.get(path).status_code == 200 for a in (a1, a3)), 10)
        assert a1.ok(path)["node"] == CLUSTER_NAMES[1]
        assert a3.call("PUT", path, json={"durable": True}).status_code == 204
        assert a3.call("PUT", path, json={"durable": False}).status_code == 400
        conn = pika_connect(c.nodes[0])
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            for _ in range(2):
                ch.basic_publish("", q, b"m")
            assert wait_for(lambda: a2.ok(path).get("messages") == 2, 10), a2.ok(path)
            # a quorum queue declared through node 1 gets three members
            qq = uniq("qq")
            qpath = f"/queues/%2F/{qq}"
            r = a1.call("PUT", qpath, json={"durable": True, "arguments": {"x-queue-type": "quorum"}})
            assert r.status_code == 201, r.text
            # (node 3 applies the declare a moment after node 1 answered)
            seen = lambda: a3.get(qpath).json() if a3.get(qpath).status_code == 200 else {}
            assert wait_for(lambda: sorted(seen().get("online", [])) == CLUSTER_NAMES
                            and seen().get("leader") in CLUSTER_NAMES, 15), seen()
            assert sorted(a3.ok(qpath)["members"]) == CLUSTER_NAMES
            ch.basic_publish("", qq, b"x")
            assert wait_for(lambda: a1.ok(qpath).get("messages") == 1, 10), a1.ok(qpath)
            # deleted through node 3: gone everywhere, for AMQP clients too
            assert a3.call("DELETE", path).status_code == 204
            assert wait_for(lambda: all(a.get(path).status_code == 404 for a in apis), 10)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare(q, passive=True)
            assert info.value.reply_code == 404
            ch = conn.channel()
            # exchanges: declared through node 3, deleted through node 1
            x = uniq("x")
            assert a3.call("PUT", f"/exchanges/%2F/{x}", json={"type": "fanout"}).status_code == 201
            assert wait_for(lambda: a1.get(f"/exchanges/%2F/{x}").status_code == 200, 10)
            ch.exchange_declare(x, "fanout", passive=True)  # (node 1 has applied it)
            assert a1.call("DELETE", f"/exchanges/%2F/{x}").status_code == 204
            assert wait_for(lambda: all(a.get(f"/exchanges/%2F/{x}").status_code == 404 for a in apis), 10)
            # users, vhosts and permissions made through node 2 let a user in on node 3
            u, v = uniq("user"), uniq("vh")
            assert a2.call("PUT", f"/users/{u}", json={"password": "pw", "tags": "management"}).status_code == 201
            assert a2.call("PUT", f"/vhosts/{v}").status_code == 201
            perm = {"configure": ".*", "write": ".*", "read": ".*"}
            assert a2.call("PUT", f"/permissions/{v}/{u}", json=perm).status_code == 201
            assert wait_for(lambda: a3.get(f"/queues/{v}", auth=(u, "pw")).status_code == 200, 10)
            assert a3.call("PUT", f"/queues/{v}/{uniq('q')}", json={}, auth=(u, "pw")).status_code == 201
            assert a1.call("DELETE", f"/vhosts/{v}").status_code == 204
            assert a1.call("DELETE", f"/users/{u}").status_code == 204
            assert wait_for(lambda: a3.get("/whoami", auth=(u, "pw")).status_code == 401, 10)
        finally:
            if conn.is_open:
                conn.close()
    finally:
        for a in apis:
            a.session.close()
        c.stop()
