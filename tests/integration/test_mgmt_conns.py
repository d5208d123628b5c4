"""The management API's connections, channels and consumers (issue 7): /api/connections,
/api/connections/{name}[/channels], /api/vhosts/{vhost}/connections|channels, /api/channels,
/api/channels/{name}, /api/consumers[/{vhost}], and DELETE /api/connections/{name} (320
CONNECTION_FORCED with the X-Reason header's text); also definitions import (POST
/api/definitions[/{vhost}]) and quorum queue membership (RabbitMQ 4.x's
/api/queues/quorum/.../replicas/add|delete, .../replicas/on/{node}/grow|shrink).

One broker for the module with users of every kind:
  guest   administrator, permissions on / and v2
  mon     monitoring, no permissions
  mgr     management, permissions on v2 only

Checked against RabbitMQ 3.10.8 with rabbitmq_management (WARREN_TEST_RABBITMQ=1): its lists
come from its stats database, a few seconds behind, so they are polled (wait_for). The
cluster tests share one 3-node Warren cluster and run against Warren only (RabbitMQ 3.10 has
no replicas endpoints).
"""
import base64
import hashlib
import os
import time
import urllib.parse

import pika
import pytest
import requests

import conftest
from helpers import passwords
from helpers.clients import pika_connect, wait_for

pytestmark = pytest.mark.timeout(120)

DEFS = passwords.definitions(
    users=[passwords.user("guest", "guest", tags="administrator"),
           passwords.user("mon", "mon-pw", tags="monitoring"),
           passwords.user("mgr", "mgr-pw", tags="management")],
    vhosts=("/", "v2"),
    permissions=[passwords.permission("guest", "/"), passwords.permission("guest", "v2"),
                 passwords.permission("mgr", "v2")])

GUEST = ("guest", "guest")
MGR = ("mgr", "mgr-pw")
MON = ("mon", "mon-pw")
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
        return self.session.request(method, self.base + path, auth=auth, timeout=kw.pop("timeout", 15), **kw)

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


def q(name):
    return urllib.parse.quote(name, safe="")


def connect(broker, label, **kw):
    """A pika connection whose client properties name it (user_provided_name)."""
    return pika_connect(broker, client_properties={"connection_name": label}, **kw)


def find_conn(api, label, auth=GUEST, path="/connections"):
    """The connection object named label by its client, once the API lists it (else None)."""
    found = {}

    def look():
        for c in api.ok(path, auth=auth):
            if c.get("client_properties", {}).get("connection_name") == label:
                found["c"] = c
                return True
        return False
    wait_for(look, STATS_WAIT, step=0.2)
    return found.get("c")


def node_name(api):
    return api.ok("/overview")["node"]


def test_connection_fields(api, mb, uniq):
    label = uniq("conn")
    before_ms = int(time.time() * 1000)
    conn = connect(mb, label, heartbeat=30)
    try:
        conn.channel()
        c = find_conn(api, label)
        assert c is not None, api.ok("/connections")
        assert c["name"] == f"{c['peer_host']}:{c['peer_port']} -> {c['host']}:{c['port']}"
        assert c["peer_host"] == "127.0.0.1" and c["host"] == "127.0.0.1" and c["port"] == mb.port
        assert isinstance(c["peer_port"], int) and c["peer_port"] > 0
        assert c["user"] == "guest" and c["vhost"] == "/"
        assert c["node"] == node_name(api)
        assert c["protocol"] == "AMQP 0-9-1"
        assert c["ssl"] is False
        assert c["user_provided_name"] == label
        assert c["client_properties"]["product"] == "Pika Python Client Library"
        assert c["client_properties"]["capabilities"]["publisher_confirms"] is True
        assert c["timeout"] == 30
        assert c["frame_max"] == 131072 and c["channel_max"] == 2047
        assert before_ms - 5000 <= c["connected_at"] <= int(time.time() * 1000) + 5000
        assert c["auth_mechanism"] == "PLAIN" and c["type"] == "network"
        # counters and their rates appear with the connection's first stats
        assert wait_for(lambda: (find_conn(api, label) or {}).get("channels") == 1, STATS_WAIT)
        c = find_conn(api, label)
        assert c["state"] == "running"
        assert c["recv_oct"] > 0 and c["send_oct"] > 0
        assert isinstance(c["recv_oct_details"]["rate"], (int, float))
        assert isinstance(c["send_oct_details"]["rate"], (int, float))
        # by name, and in its vhost's list only
        one = api.ok(f"/connections/{q(c['name'])}")
        assert one["name"] == c["name"] and one["user_provided_name"] == label
        assert find_conn(api, label, path="/vhosts/%2F/connections") is not None
        assert all(x["vhost"] == "v2" for x in api.ok("/vhosts/v2/connections"))
    finally:
        conn.close()
    assert wait_for(lambda: api.get(f"/connections/{q(c['name'])}").status_code == 404, STATS_WAIT)


def test_channels_and_consumers(api, mb, uniq):
    label, queue, tag = uniq("conn"), uniq("q"), uniq("ctag")
    conn = connect(mb, label)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_qos(prefetch_count=5)
        ch.queue_declare(queue, exclusive=True)
        ch.basic_consume(queue, lambda *a: None, consumer_tag=tag)
        ch.basic_publish("", queue, b"m1")
        tx = conn.channel()
        tx.tx_select()
        conn.process_data_events(0.3)
        c = find_conn(api, label)
        assert c is not None
        name = c["name"]

        def channels():
            return [x for x in api.ok("/channels") if x["connection_details"]["name"] == name]
        # (RabbitMQ lists a channel's message_stats once it has some)
        assert wait_for(lambda: len(channels()) == 2 and "message_stats" in {x["number"]: x for x in channels()}[1],
                        STATS_WAIT)
        assert wait_for(lambda: {x["number"]: x for x in channels()}[1]["messages_unacknowledged"] == 1,
                        STATS_WAIT), channels()
        by_number = {x["number"]: x for x in channels()}
        first, second = by_number[1], by_number[2]
        assert first["name"] == f"{name} (1)" and second["name"] == f"{name} (2)"
        assert first["connection_details"] == {"name": name, "peer_host": c["peer_host"],
                                               "peer_port": c["peer_port"]}
        assert first["user"] == "guest" and first["vhost"] == "/" and first["node"] == c["node"]
        assert first["consumer_count"] == 1 and first["prefetch_count"] == 5
        assert first["global_prefetch_count"] == 0
        assert first["confirm"] is True and first["transactional"] is False
        assert first["messages_unconfirmed"] == 0
        assert first["message_stats"]["publish"] == 1
        assert isinstance(first["message_stats"]["publish_details"]["rate"], (int, float))
        assert first["message_stats"]["deliver"] == 1
        assert second["transactional"] is True and second["confirm"] is False
        assert second["consumer_count"] == 0
        # one channel by name; a connection's channels; a vhost's channels
        one = api.ok(f"/channels/{q(first['name'])}")
        assert one["number"] == 1 and one["connection_details"]["name"] == name
        assert sorted(x["number"] for x in api.ok(f"/connections/{q(name)}/channels")) == [1, 2]
        assert {x["name"] for x in api.ok("/vhosts/%2F/channels")} >= {first["name"], second["name"]}
        assert all(x["vhost"] == "v2" for x in api.ok("/vhosts/v2/channels"))
        # consumers, everywhere and by vhost
        mine = [x for x in api.ok("/consumers") if x["consumer_tag"] == tag]
        assert len(mine) == 1, api.ok("/consumers")
        k = mine[0]
        assert k["queue"] == {"name": queue, "vhost": "/"}
        assert k["channel_details"]["name"] == first["name"]
        assert k["channel_details"]["number"] == 1
        assert k["channel_details"]["connection_name"] == name
        assert k["channel_details"]["user"] == "guest"
        assert k["ack_required"] is True and k["exclusive"] is False and k["active"] is True
        assert k["prefetch_count"] == 5 and k["arguments"] == {}
        assert [x["consumer_tag"] for x in api.ok("/consumers/%2F") if x["consumer_tag"] == tag] == [tag]
        # and in its queue's consumer_details
        details = lambda: api.ok(f"/queues/%2F/{q(queue)}").get("consumer_details", [])
        assert wait_for(lambda: [x["consumer_tag"] for x in details()] == [tag], STATS_WAIT), details()
        assert details()[0]["channel_details"]["name"] == first["name"]
        assert all(x["queue"]["vhost"] == "v2" for x in api.ok("/consumers/v2"))
    finally:
        conn.close()
    assert wait_for(lambda: not [x for x in api.ok("/consumers") if x["consumer_tag"] == tag], STATS_WAIT)


def test_what_each_user_sees(api, mb, uniq):
    guest_label, mgr_label = uniq("guest"), uniq("mgr")
    gconn = connect(mb, guest_label)
    mconn = connect(mb, mgr_label, user="mgr", password="mgr-pw", vhost="v2")
    try:
        gconn.channel()
        mconn.channel()
        g = find_conn(api, guest_label)
        m = find_conn(api, mgr_label)
        assert g and m and m["vhost"] == "v2" and m["user"] == "mgr"
        # a management user sees its own connections and channels only
        assert find_conn(api, mgr_label, auth=MGR) is not None
        assert all(x["user"] == "mgr" for x in api.ok("/connections", auth=MGR))
        assert all(x["user"] == "mgr" for x in api.ok("/channels", auth=MGR))
        assert api.ok(f"/connections/{q(m['name'])}", auth=MGR)["user"] == "mgr"
        r = api.get(f"/connections/{q(g['name'])}", auth=MGR)
        assert r.status_code == 401
        # monitoring users see everyone's
        assert find_conn(api, guest_label, auth=MON) is not None
        assert find_conn(api, mgr_label, auth=MON) is not None
        # vhost-scoped lists need permissions there
        assert api.get("/vhosts/%2F/connections", auth=MGR).status_code == 401
        assert api.get("/vhosts/v2/connections", auth=MGR).status_code == 200
        assert api.ok("/consumers/%2F", auth=MGR) == []  # listed, but not what mgr may not see
        # only an administrator or the connection's user may close it
        r = api.call("DELETE", f"/connections/{q(g['name'])}", auth=MGR)
        assert r.status_code == 401
        assert gconn.is_open
        r = api.call("DELETE", f"/connections/{q(m['name'])}", auth=MGR, headers={"X-Reason": "mine"})
        assert r.status_code == 204
        assert force_closed(mconn) == (320, "CONNECTION_FORCED - mine")
    finally:
        for c in (gconn, mconn):
            if c.is_open:
                c.close()


def force_closed(conn):
    """Waits until the broker closes conn; returns (reply_code, reply_text)."""
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            conn.process_data_events(0.1)
    return info.value.reply_code, info.value.reply_text


def test_force_close_with_and_without_reason(api, mb, uniq):
    a_label, b_label = uniq("a"), uniq("b")
    a, b = connect(mb, a_label), connect(mb, b_label)
    try:
        ca, cb = find_conn(api, a_label), find_conn(api, b_label)
        assert ca and cb
        r = api.call("DELETE", f"/connections/{q(ca['name'])}", headers={"X-Reason": "maintenance window"})
        assert r.status_code == 204 and r.content == b""
        assert force_closed(a) == (320, "CONNECTION_FORCED - maintenance window")
        r = api.call("DELETE", f"/connections/{q(cb['name'])}")
        assert r.status_code == 204
        assert force_closed(b) == (320, "CONNECTION_FORCED - Closed via management plugin")
        assert wait_for(lambda: find_conn(api, a_label) is None, STATS_WAIT)
        assert api.call("DELETE", f"/connections/{q(ca['name'])}").status_code == 404
    finally:
        for c in (a, b):
            if c.is_open:
                c.close()


def test_unknown_objects_are_404(api):
    paths = ["/connections/no%20such", "/channels/no%20such (1)", "/vhosts/nope/connections",
             "/vhosts/nope/channels", "/consumers/nope"]
    if not conftest.RABBITMQ_MODE:  # RabbitMQ 3.10.8 crashes on it (500, function_clause)
        paths.append("/connections/no%20such/channels")
    for path in paths:
        r = api.get(path)
        assert r.status_code == 404, path
        assert r.json() == NOT_FOUND, path
    assert api.call("DELETE", "/connections/no%20such").status_code == 404
    assert api.call("PUT", "/connections/x", json={}).status_code == 405
    assert api.get("/connections", auth=None).status_code == 401



# ---------------------------------------------------------------------------
# Definitions import
# ---------------------------------------------------------------------------

def legacy_hash(password, algorithm):
    """rabbit_password_hashing_md5 / _sha512: base64(salt || H(salt || password))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.new(algorithm, salt + password.encode()).digest()).decode()


def import_document(vh, u):
    return {
        "users": [passwords.user(u, "pw256", tags="management"),
                  {"name": u + "-md5", "password_hash": legacy_hash("pw-md5", "md5"),
                   "hashing_algorithm": "rabbit_password_hashing_md5", "tags": ""},
                  {"name": u + "-512", "password_hash": legacy_hash("pw-512", "sha512"),
                   "hashing_algorithm": "rabbit_password_hashing_sha512", "tags": ["monitoring"]}],
        "vhosts": [{"name": vh}],
        "permissions": [passwords.permission(u, vh), passwords.permission(u + "-md5", vh, write="^$"),
                        passwords.permission(u + "-512", vh)],
        "topic_permissions": [{"user": u, "vhost": vh, "exchange": "x1", "write": "^a\\.", "read": ".*"}],
        "parameters": [{"component": "no-such-plugin-component", "vhost": vh, "name": "p", "value": {}}]
        if not conftest.RABBITMQ_MODE else [],
        "policies": [{"vhost": vh, "name": "ttl", "pattern": "^cq", "apply-to": "queues",
                      "definition": {"message-ttl": 60000}, "priority": 1}],
        "queues": [{"name": "cq", "vhost": vh, "durable": True, "auto_delete": False,
                    "arguments": {"x-max-length": 10}},
                   {"name": "qq", "vhost": vh, "durable": True, "auto_delete": False,
                    "arguments": {"x-queue-type": "quorum"}}],
        "exchanges": [{"name": "x1", "vhost": vh, "type": "topic", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}},
                      {"name": "x2", "vhost": vh, "type": "fanout", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "bindings": [{"source": "x1", "vhost": vh, "destination": "cq", "destination_type": "queue",
                      "routing_key": "a.#", "arguments": {}},
                     {"source": "x1", "vhost": vh, "destination": "x2", "destination_type": "exchange",
                      "routing_key": "b", "arguments": {}}],
    }


def section(doc, key, vh):
    """doc[key]'s items of vhost vh (or, for users, named like vh's users), comparable."""
    items = doc.get(key, [])
    if key == "users":
        items = [{k: v for k, v in x.items() if k != "limits"} for x in items if x["name"].startswith(vh)]
    elif key == "vhosts":
        items = [{"name": x["name"]} for x in items if x["name"] == vh]
    else:
        items = [x for x in items if x.get("vhost") == vh]
    return sorted(items, key=lambda x: repr(sorted(x.items())))


def test_definitions_import(api, mb, fresh_broker, uniq):
    vh, u = uniq("defs"), uniq("u")
    doc = import_document(vh, u)
    r = api.call("POST", "/definitions", json=doc)
    assert r.status_code == 204, r.text
    exported = api.ok("/definitions")
    assert [x["name"] for x in section(exported, "vhosts", vh)] == [vh]
    assert {x["name"] for x in section(exported, "queues", vh)} == {"cq", "qq"}
    qq = api.ok(f"/queues/{q(vh)}/qq")
    assert qq["type"] == "quorum"
    assert wait_for(lambda: api.ok(f"/queues/{q(vh)}/cq").get("policy") == "ttl", STATS_WAIT)
    assert {(b["source"], b["destination"]) for b in section(exported, "bindings", vh)} == {("x1", "cq"), ("x1", "x2")}
    assert [(t["user"], t["exchange"], t["write"]) for t in section(exported, "topic_permissions", vh)] == [(u, "x1", "^a\\.")]
    # every hashing algorithm logs in (AMQP and API)
    for user, pw in ((u, "pw256"), (u + "-md5", "pw-md5"), (u + "-512", "pw-512")):
        conn = pika_connect(mb, user=user, password=pw, vhost=vh)
        conn.close()
    assert api.ok("/whoami", auth=(u + "-512", "pw-512"))["name"] == u + "-512"
    # the same document again changes nothing; a conflicting queue keeps its definition
    assert api.call("POST", "/definitions", json=doc).status_code == 204
    doc["queues"][0]["arguments"] = {"x-max-length": 99}
    assert api.call("POST", "/definitions", json=doc).status_code == 204
    assert api.ok(f"/queues/{q(vh)}/cq")["arguments"] == {"x-max-length": 10}
    # export -> import into a fresh broker -> export: the same definitions
    fresh = fresh_broker()
    api2 = Api(fresh)
    try:
        r = api2.call("POST", "/definitions", json=exported)
        assert r.status_code == 204, r.text
        again = api2.ok("/definitions")
        for key in ("users", "vhosts", "permissions", "topic_permissions", "policies", "queues", "exchanges",
                    "bindings"):
            assert section(again, key, vh) == section(exported, key, vh), key
    finally:
        api2.session.close()


def test_definitions_of_one_vhost(api, uniq):
    vh, other = uniq("v"), uniq("w")
    for v in (vh, other):
        assert api.call("PUT", f"/vhosts/{q(v)}").status_code == 201
    assert api.call("PUT", f"/queues/{q(vh)}/dq", json={"durable": True}).status_code == 201
    one = api.ok(f"/definitions/{q(vh)}")
    assert [x["name"] for x in one["queues"]] == ["dq"]
    assert "vhost" not in one["queues"][0]
    assert "users" not in one and "vhosts" not in one
    # imported into another vhost, whatever the objects say
    one["queues"][0]["vhost"] = vh
    assert api.call("POST", f"/definitions/{q(other)}", json=one).status_code == 204
    assert api.ok(f"/queues/{q(other)}/dq")["durable"] is True
    r = api.get("/definitions/no-such-vhost")
    assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "vhost_not_found"})
    r = api.call("POST", "/definitions/no-such-vhost", json={"queues": []})
    assert (r.status_code, r.json()) == (404, {"error": "not_found", "reason": "vhost_not_found"})
    for v in (vh, other):
        assert api.call("DELETE", f"/vhosts/{q(v)}").status_code == 204


def test_definitions_import_errors(api, uniq):
    r = api.call("POST", "/definitions", data=b"", headers={"content-type": "application/json"})
    assert r.status_code == 204  # nothing to import
    for body in (b"{not json", b"[1, 2]"):
        r = api.call("POST", "/definitions", data=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        assert r.json()["error"] == "bad_request"
    bad = {"users": [{"name": uniq("u"), "password_hash": "x", "hashing_algorithm": "rot13"}]}
    r = api.call("POST", "/definitions", json=bad)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    assert api.get(f"/users/{q(bad['users'][0]['name'])}").status_code == 404
    r = api.call("POST", "/definitions", json={"vhosts": [{"name": "x"}]}, auth=MON)
    assert r.status_code == 401


# ---------------------------------------------------------------------------
# Topic permissions
# ---------------------------------------------------------------------------

def publish_refused(conn, exchange, key):
    """Publishes with confirms; returns None when accepted, else (code, text) of the channel error."""
    ch = conn.channel()
    ch.confirm_delivery()
    try:
        ch.basic_publish(exchange, key, b"m")
    except pika.exceptions.ChannelClosedByBroker as e:
        return e.reply_code, e.reply_text
    ch.close()
    return None


def test_topic_permissions(api, mb, uniq):
    u = uniq("tu")
    path = f"/topic-permissions/%2F/{q(u)}"
    assert api.call("PUT", f"/users/{q(u)}", json={"password": "pw", "tags": "management"}).status_code == 201
    assert api.call("PUT", f"/permissions/%2F/{q(u)}",
                    json={"configure": ".*", "write": ".*", "read": ".*"}).status_code == 201
    try:
        assert api.get(path).status_code == 404
        r = api.call("PUT", path, json={"exchange": "amq.topic", "write": "^a\\.", "read": ".*"})
        assert r.status_code == 201, r.text
        want = {"user": u, "vhost": "/", "exchange": "amq.topic", "write": "^a\\.", "read": ".*"}
        assert api.ok(path) == [want]
        assert want in api.ok("/topic-permissions")
        assert api.ok(f"/users/{q(u)}/topic-permissions") == [want]
        assert want in api.ok("/vhosts/%2F/topic-permissions")
        assert want in api.ok("/definitions")["topic_permissions"]
        x = uniq("tx")
        conn = pika_connect(mb, user=u, password="pw")
        try:
            conn.channel().exchange_declare(x, "topic")
            assert publish_refused(conn, "amq.topic", "a.b") is None
            assert publish_refused(conn, "amq.topic", "b.c") == (
                403, f"ACCESS_REFUSED - access to topic 'b.c' in exchange 'amq.topic' in vhost '/' "
                     f"refused for user '{u}'")
            assert publish_refused(conn, x, "b.c") is None  # no topic permission for that exchange
            # binding keys are checked against the read pattern
            r = api.call("PUT", path, json={"exchange": "amq.topic", "write": "^a\\.", "read": "^r\\."})
            assert r.status_code == 204
            bch = conn.channel()
            bq = bch.queue_declare("", exclusive=True).method.queue
            bch.queue_bind(bq, "amq.topic", "r.1")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                bch.queue_bind(bq, "amq.topic", "s.1")
            assert (info.value.reply_code, info.value.reply_text) == (
                403, f"ACCESS_REFUSED - access to topic 's.1' in exchange 'amq.topic' in vhost '/' "
                     f"refused for user '{u}'")
            # ... through the management API too
            aq = uniq("aq")
            assert api.call("PUT", f"/queues/%2F/{aq}", json={}, auth=(u, "pw")).status_code == 201
            bpath = f"/bindings/%2F/e/amq.topic/q/{aq}"
            assert api.call("POST", bpath, json={"routing_key": "r.2"}, auth=(u, "pw")).status_code == 201
            r = api.call("POST", bpath, json={"routing_key": "s.2"}, auth=(u, "pw"))
            assert (r.status_code, r.json()) == (401, {"error": "not_authorised", "reason": "Access refused."})
            assert [b["routing_key"] for b in api.ok(bpath)] == ["r.2"]
            api.call("DELETE", f"/queues/%2F/{aq}")
            # {username} in a pattern is the publishing user's name
            r = api.call("PUT", path, json={"exchange": x, "write": "^{username}\\.", "read": ".*"})
            assert r.status_code == 204  # (the user has one in the vhost already)
            assert publish_refused(conn, x, f"{u}.x") is None
            assert publish_refused(conn, x, "other.x")[0] == 403
            assert api.call("PUT", path, json={"exchange": x, "write": ".*", "read": ".*"}).status_code == 204
            assert publish_refused(conn, x, "other.x") is None
            assert len(api.ok(path)) == 2
            # DELETE clears the user's topic permissions in the vhost
            assert api.call("DELETE", path).status_code == 204
            assert api.get(path).status_code == 404
            assert api.call("DELETE", path).status_code == 404
            assert publish_refused(conn, "amq.topic", "b.c") is None
        finally:
            if conn.is_open:
                conn.close()
        # errors
        r = api.call("PUT", path, json={"write": ".*", "read": ".*"})
        assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "[{key_missing,exchange}]"})
        assert api.call("PUT", path, json={"exchange": "amq.topic", "write": "(", "read": ".*"}).status_code == 400
        r = api.call("PUT", f"/topic-permissions/%2F/{uniq('nobody')}",
                     json={"exchange": "amq.topic", "write": ".*", "read": ".*"})
        assert (r.status_code, r.json()) == (400, {"error": "bad_request", "reason": "vhost_or_user_not_found"})
        assert api.get("/vhosts/nope/topic-permissions").status_code == 404
        assert api.get("/topic-permissions", auth=MGR).status_code == 401
        assert api.get(f"/users/{uniq('nobody')}/topic-permissions").status_code == 404
    finally:
        api.call("DELETE", f"/users/{q(u)}")


def test_topic_permissions_survive_a_restart(fresh_broker, uniq):
    if conftest.RABBITMQ_MODE:
        pytest.skip("a broker restart takes RabbitMQ too long for this file's budget")
    b = fresh_broker()
    a = Api(b)
    try:
        r = a.call("PUT", "/topic-permissions/%2F/guest", json={"exchange": "amq.topic", "write": "^k$", "read": "r"})
        assert r.status_code == 201
        b.restart()
        assert a.ok("/topic-permissions/%2F/guest") == [{"user": "guest", "vhost": "/", "exchange": "amq.topic",
                                                          "write": "^k$", "read": "r"}]
        conn = pika_connect(b)
        try:
            assert publish_refused(conn, "amq.topic", "nope")[0] == 403
        finally:
            if conn.is_open:
                conn.close()
    finally:
        a.session.close()


# ---------------------------------------------------------------------------
# Clusters (Warren only)
# ---------------------------------------------------------------------------

CLUSTER_NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, pki):
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("starts its own Warren cluster")
    from helpers.cluster import WarrenCluster
    c = WarrenCluster(str(tmp_path_factory.mktemp("cluster")), pki, size=3).start()
    try:
        c.wait_formed()
        yield c
    finally:
        c.stop()


def test_cluster_lists_every_nodes_connections(cluster, uniq):
    """Any node's API lists the connections, channels and consumers of every node, and closes
    a connection held by another node."""
    apis = [Api(n) for n in cluster.nodes]
    conns = []
    try:
        labels = [uniq(f"n{i + 1}") for i in range(3)]
        queue, tag = uniq("q"), uniq("ctag")
        for i, node in enumerate(cluster.nodes):
            conns.append(connect(node, labels[i]))
        ch = conns[1].channel()
        ch.queue_declare(queue)
        ch.basic_consume(queue, lambda *a: None, consumer_tag=tag)
        for a in apis:
            listed = {x["client_properties"].get("connection_name"): x for x in a.ok("/connections")}
            assert set(labels) <= set(listed), listed.keys()
            for i, label in enumerate(labels):
                assert listed[label]["node"] == CLUSTER_NAMES[i]
            chans = [x for x in a.ok("/channels") if x["node"] == CLUSTER_NAMES[1]]
            assert [x["consumer_count"] for x in chans] == [1]
            assert [x["queue"]["name"] for x in a.ok("/consumers") if x["consumer_tag"] == tag] == [queue]
            assert [x["consumer_tag"] for x in a.ok(f"/queues/%2F/{q(queue)}")["consumer_details"]] == [tag]
        # the overview's totals count every node's connections and channels
        totals = apis[0].ok("/overview")["object_totals"]
        assert totals["connections"] >= 3 and totals["channels"] >= 1, totals
        name2 = listed[labels[1]]["name"]
        assert apis[0].ok(f"/connections/{q(name2)}")["node"] == CLUSTER_NAMES[1]
        assert [x["number"] for x in apis[2].ok(f"/connections/{q(name2)}/channels")] == [1]
        # node 1 closes node 2's connection
        r = apis[0].call("DELETE", f"/connections/{q(name2)}", headers={"X-Reason": "moved"})
        assert r.status_code == 204
        assert force_closed(conns[1]) == (320, "CONNECTION_FORCED - moved")
        assert wait_for(lambda: apis[2].get(f"/connections/{q(name2)}").status_code == 404, 10)
    finally:
        for conn in conns:
            if conn.is_open:
                conn.close()
        for a in apis:
            a.session.close()


def test_cluster_quorum_queue_membership(cluster, uniq):
    apis = [Api(n) for n in cluster.nodes]
    a1 = apis[0]
    try:
        qq = uniq("qq")
        path = f"/queues/%2F/{qq}"
        r = a1.call("PUT", path, json={"durable": True, "arguments": {"x-queue-type": "quorum",
                                                                      "x-quorum-initial-group-size": 2}})
        assert r.status_code == 201, r.text

        def members():
            r = a1.get(path)
            return sorted(r.json().get("members", [])) if r.status_code == 200 else []
        assert wait_for(lambda: len(members()) == 2, 15), members()
        outsider = next(n for n in CLUSTER_NAMES if n not in members())
        base = f"/queues/quorum/%2F/{qq}/replicas"
        r = a1.call("POST", base + "/add", json={"node": outsider})
        assert r.status_code == 204, r.text
        assert wait_for(lambda: members() == CLUSTER_NAMES, 15), members()
        r = apis[2].call("DELETE", base + "/delete", json={"node": outsider})
        assert r.status_code == 202, r.text
        assert wait_for(lambda: outsider not in members() and len(members()) == 2, 15), members()
        # shrink a follower off every queue, then grow it back onto this one
        assert wait_for(lambda: a1.ok(path).get("leader") in members(), 15)
        victim = next(n for n in members() if n != a1.ok(path)["leader"])
        r = apis[1].call("DELETE", f"/queues/quorum/replicas/on/{q(victim)}/shrink", timeout=30)
        assert r.status_code == 202, r.text
        assert wait_for(lambda: victim not in members(), 15), members()
        r = a1.call("POST", f"/queues/quorum/replicas/on/{q(victim)}/grow",
                    json={"strategy": "all", "queue_pattern": "^" + qq + "$", "vhost_pattern": ".*"})
        assert r.status_code == 204, r.text
        assert wait_for(lambda: victim in members(), 15), members()
        # the queue still works
        conn = pika_connect(cluster.nodes[2])
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.basic_publish("", qq, b"after")
            assert ch.basic_get(qq, auto_ack=True)[2] == b"after"
        finally:
            conn.close()
        # errors
        assert a1.call("POST", f"/queues/quorum/%2F/{uniq('nope')}/replicas/add",
                       json={"node": outsider}).status_code == 404
        assert a1.call("PUT", "/queues/%2F/" + qq + "-classic", json={}).status_code == 201
        assert a1.call("POST", f"/queues/quorum/%2F/{qq}-classic/replicas/add",
                       json={"node": outsider}).status_code == 400
        assert a1.call("POST", base + "/add", json={}).status_code == 400
        assert a1.call("POST", base + "/add", json={"node": "nobody@nowhere"}).status_code == 400
        assert a1.call("POST", "/queues/quorum/replicas/on/nobody@nowhere/grow", json={}).status_code == 400
        assert a1.call("POST", f"/queues/quorum/replicas/on/{q(victim)}/grow",
                       json={"strategy": "some"}).status_code == 400
        assert a1.call("GET", base + "/add").status_code == 405
    finally:
        for a in apis:
            a.session.close()


def test_cluster_definitions_import_goes_through_the_log(cluster, uniq):
    apis = [Api(n) for n in cluster.nodes]
    try:
        vh, u = uniq("cdefs"), uniq("cu")
        r = apis[1].call("POST", "/definitions", json=import_document(vh, u))
        assert r.status_code == 204, r.text
        for a in apis:
            assert wait_for(lambda: a.get(f"/queues/{q(vh)}/cq").status_code == 200, 10)
            assert wait_for(lambda: a.get(f"/exchanges/{q(vh)}/x2").status_code == 200, 10)
        qq = apis[2].ok(f"/queues/{q(vh)}/qq")
        assert qq["type"] == "quorum"
        assert wait_for(lambda: len(apis[2].ok(f"/queues/{q(vh)}/qq").get("members", [])) == 3, 15)
        conn = pika_connect(cluster.nodes[2], user=u, password="pw256", vhost=vh)
        try:
            # the imported topic permission (x1: write "^a\\.") holds on every node
            assert wait_for(lambda: apis[2].get(f"/topic-permissions/{q(vh)}/{q(u)}").status_code == 200, 10)
            assert publish_refused(conn, "x1", "a.1") is None
            assert publish_refused(conn, "x1", "b.1")[0] == 403
        finally:
            if conn.is_open:
                conn.close()
    finally:
        for a in apis:
            a.session.close()
