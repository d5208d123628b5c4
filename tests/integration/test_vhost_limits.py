"""Vhost metadata, vhost limits and runtime parameters (the management-plugin issue).

- Vhost limits (RabbitMQ's "vhost-limits" parameter): GET /api/vhost-limits[/{vhost}],
  PUT / DELETE /api/vhost-limits/{vhost}/{max-connections|max-queues}, enforced by the AMQP
  adapter: connection.open over max-connections is closed with 530 NOT_ALLOWED, a queue.declare
  that would create one queue too many fails with 406 PRECONDITION_FAILED (texts RabbitMQ's).
- Vhost metadata (description, tags, default_queue_type) kept, shown by GET /api/vhosts and
  exported / imported with the definitions, with the parameters and global parameters.
- A vhost's default queue type applies to queues declared there without x-queue-type (RabbitMQ
  4's behaviour; 3.10 ignores it, so those checks run against Warren only).
- Everything goes through the metadata log: a 3-node cluster test checks that every node
  knows the limits and metadata, enforces the queue and connection limits cluster-wide (a node
  asks the others for their connections at connection.open), and that they survive restarts.

The API, enforcement and restart checks pass against RabbitMQ 3.10.8 too (WARREN_TEST_RABBITMQ=1).
"""
import json

import pytest
import requests

import conftest
from helpers import passwords
from helpers.clients import pika_channel_error, pika_connect, pika_connection_error, wait_for

pytestmark = pytest.mark.timeout(120)

GUEST = ("guest", "guest")
DEFS = passwords.definitions(
    users=[passwords.user("guest", "guest", tags="administrator"), passwords.user("mgr", "mgr-pw", tags="management")],
    vhosts=("/",), permissions=[passwords.permission("guest", "/")])


class Api:
    def __init__(self, broker):
        self.base = f"http://{broker.host}:{broker.mgmt_port}/api"
        self.session = requests.Session()

    def call(self, method, path, auth=GUEST, **kw):
        return self.session.request(method, self.base + path, auth=auth, timeout=10, **kw)

    def ok(self, path, auth=GUEST):
        r = self.call("GET", path, auth=auth)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def put(self, path, body, status=None):
        r = self.call("PUT", path, json=body)
        if status is not None:
            assert r.status_code == status, (path, r.status_code, r.text)
        return r


@pytest.fixture(scope="module")
def mb(module_broker):
    if conftest.EXTERNAL:
        pytest.skip("needs a broker with this module's users")
    return module_broker(definitions=DEFS)


@pytest.fixture
def api(mb):
    a = Api(mb)
    yield a
    a.session.close()


@pytest.fixture
def vhost(api, uniq):
    """A fresh vhost guest may use, deleted afterwards."""
    v = uniq("v")
    api.put(f"/vhosts/{v}", {}, status=201)
    yield v
    api.call("DELETE", f"/vhosts/{v}")


def limits_of(api, v):
    return api.ok(f"/vhost-limits/{v}")


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------

def test_vhost_limits_api(api, vhost):
    assert limits_of(api, vhost) == []
    api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 2}, status=204)
    api.put(f"/vhost-limits/{vhost}/max-connections", {"value": -1}, status=204)
    assert limits_of(api, vhost) == [{"vhost": vhost, "value": {"max-connections": -1, "max-queues": 2}}]
    assert {"vhost": vhost, "value": {"max-connections": -1, "max-queues": 2}} in api.ok("/vhost-limits")
    # RabbitMQ's validation
    r = api.put(f"/vhost-limits/{vhost}/max-foo", {"value": 2}, status=400)
    assert r.json() == {"error": "bad_request",
                        "reason": "Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,2}] in limits\n"}
    r = api.put(f"/vhost-limits/{vhost}/max-queues", {"value": "x"}, status=400)
    assert r.json()["reason"] == "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n"
    r = api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 1.5}, status=400)
    assert r.json()["reason"] == "Validation failed\n\nmax-queues should be a number, actually was 1.5\n"
    r = api.put(f"/vhost-limits/{vhost}/max-queues", {}, status=400)
    assert r.json() == {"error": "bad_request", "reason": "[{key_missing,value}]"}
    r = api.put("/vhost-limits/no-such-vhost/max-queues", {"value": 1}, status=404)
    assert r.json() == {"error": "not_found", "reason": "vhost_not_found"}
    assert api.call("GET", "/vhost-limits/no-such-vhost").status_code == 404
    # delete one, then the other: RabbitMQ keeps an empty value
    assert api.call("DELETE", f"/vhost-limits/{vhost}/max-queues").status_code == 204
    assert limits_of(api, vhost) == [{"vhost": vhost, "value": {"max-connections": -1}}]
    assert api.call("DELETE", f"/vhost-limits/{vhost}/max-connections").status_code == 204
    assert api.call("DELETE", f"/vhost-limits/{vhost}/max-connections").status_code == 204
    assert limits_of(api, vhost) == []
    assert {"vhost": vhost, "value": []} in api.ok("/vhost-limits")
    # administrators only for writes
    r = api.call("PUT", f"/vhost-limits/{vhost}/max-queues", json={"value": 1}, auth=("mgr", "mgr-pw"))
    assert r.status_code == 401


def test_vhost_metadata(api, uniq):
    v = uniq("v")
    api.put(f"/vhosts/{v}", {"description": "first", "tags": "a,b"}, status=201)
    try:
        got = api.ok(f"/vhosts/{v}")
        assert got["description"] == "first" and got["tags"] == ["a", "b"]
        assert got["metadata"] == {"description": "first", "tags": ["a", "b"]}
        assert got["default_queue_type"] == "undefined"
        # a PUT of an existing vhost replaces its description and tags (204)
        api.put(f"/vhosts/{v}", {"description": "second", "tags": ["c"]}, status=204)
        got = next(x for x in api.ok("/vhosts") if x["name"] == v)
        assert (got["description"], got["tags"]) == ("second", ["c"])
        api.put(f"/vhosts/{v}", {}, status=204)
        assert api.ok(f"/vhosts/{v}")["metadata"] == {"description": "", "tags": []}
    finally:
        api.call("DELETE", f"/vhosts/{v}")


def test_default_queue_type_shown_and_exported(api, uniq):
    """RabbitMQ 4: default_queue_type is kept, shown and exported (3.10 shows "undefined")."""
    if conftest.RABBITMQ_MODE:
        pytest.skip("RabbitMQ 4 behaviour (3.10 accepts default_queue_type but shows undefined)")
    v = uniq("v")
    api.put(f"/vhosts/{v}", {"description": "d", "tags": "t", "default_queue_type": "quorum"}, status=201)
    try:
        got = api.ok(f"/vhosts/{v}")
        assert got["default_queue_type"] == "quorum"
        assert got["metadata"] == {"description": "d", "tags": ["t"], "default_queue_type": "quorum"}
        exported = next(x for x in api.ok("/definitions")["vhosts"] if x["name"] == v)
        assert exported == {"name": v, "description": "d", "tags": ["t"], "default_queue_type": "quorum",
                            "metadata": {"description": "d", "tags": ["t"], "default_queue_type": "quorum"}}
        r = api.put(f"/vhosts/{v}", {"default_queue_type": "nonsense"}, status=400)
        assert r.json()["error"] == "bad_request"
    finally:
        api.call("DELETE", f"/vhosts/{v}")


# ---------------------------------------------------------------------------
# Enforcement
# ---------------------------------------------------------------------------

def test_queue_limit(api, mb, vhost, uniq):
    api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 1}, status=204)
    conn = pika_connect(mb, vhost=vhost)
    try:
        ch = conn.channel()
        ch.queue_declare("q1")
        ch.queue_declare("q1")  # a redeclare creates nothing: allowed
        code, text = pika_channel_error(lambda: ch.queue_declare("q2"))
        assert (code, text) == (406, f"PRECONDITION_FAILED - cannot declare queue 'q2': queue limit in vhost "
                                     f"'{vhost}' (1) is reached")
        # the management API's declare is refused the same way
        r = api.put(f"/queues/{vhost}/q3", {"durable": True}, status=400)
        assert r.json() == {"error": "bad_request",
                            "reason": f"cannot declare queue 'q3': queue limit in vhost '{vhost}' (1) is reached"}
        # raised: one more fits
        api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 2}, status=204)
        ch = conn.channel()
        ch.queue_declare("q2")
        code, _ = pika_channel_error(lambda: ch.queue_declare("", exclusive=True))
        assert code == 406
        # cleared: no limit
        assert api.call("DELETE", f"/vhost-limits/{vhost}/max-queues").status_code == 204
        ch = conn.channel()
        for i in range(3):
            ch.queue_declare(f"more{i}")
        # zero: no queue at all
        api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 0}, status=204)
        code, text = pika_channel_error(lambda: conn.channel().queue_declare("q9"))
        assert code == 406 and "(0) is reached" in text
    finally:
        if conn.is_open:
            conn.close()


def test_connection_limit(api, mb, vhost):
    api.put(f"/vhost-limits/{vhost}/max-connections", {"value": 1}, status=204)
    first = pika_connect(mb, vhost=vhost)
    try:
        import pika
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
            pika_connect(mb, vhost=vhost)
        assert ("(530) \"NOT_ALLOWED - access to vhost '%s' refused for user 'guest': connection limit (1) is "
                "reached\"" % vhost) in str(info.value)
        # other vhosts are not affected
        pika_connect(mb).close()
    finally:
        first.close()
    # the closed connection no longer counts
    assert wait_for(lambda: _connects(mb, vhost), timeout=10)
    # zero: none; -1: no limit
    api.put(f"/vhost-limits/{vhost}/max-connections", {"value": 0}, status=204)
    assert not _connects(mb, vhost)
    api.put(f"/vhost-limits/{vhost}/max-connections", {"value": -1}, status=204)
    conns = [pika_connect(mb, vhost=vhost) for _ in range(3)]
    for c in conns:
        c.close()


def _connects(mb, vhost):
    import pika
    try:
        pika_connect(mb, vhost=vhost).close()
        return True
    except pika.exceptions.AMQPConnectionError:
        return False


def test_default_queue_type_quorum(api, mb, uniq):
    """RabbitMQ 4: a queue declared without x-queue-type in a vhost whose default type is quorum
    is a quorum queue, unless it cannot be one (transient, exclusive, auto-delete: classic).
    Redeclaring it without x-queue-type is equivalent; with x-queue-type classic it is not."""
    if conftest.RABBITMQ_MODE:
        pytest.skip("RabbitMQ 4 behaviour (3.10 ignores the vhost's default queue type)")
    v = uniq("v")
    api.put(f"/vhosts/{v}", {"default_queue_type": "quorum"}, status=201)
    conn = pika_connect(mb, vhost=v)
    try:
        ch = conn.channel()
        ch.queue_declare("qq", durable=True)
        info = api.ok(f"/queues/{v}/qq")
        assert info["type"] == "quorum" and info["arguments"] == {"x-queue-type": "quorum"}
        ch.queue_declare("qq", durable=True)
        code, text = pika_channel_error(lambda: ch.queue_declare("qq", durable=True,
                                                                 arguments={"x-queue-type": "classic"}))
        assert code == 406 and "inequivalent arg 'x-queue-type'" in text
        ch = conn.channel()
        ch.queue_declare("transient", durable=False)
        assert api.ok(f"/queues/{v}/transient")["type"] == "classic"
        ch.queue_declare("explicit", durable=True, arguments={"x-queue-type": "classic"})
        assert api.ok(f"/queues/{v}/explicit")["type"] == "classic"
        # the management API's declare follows the same default
        api.put(f"/queues/{v}/via-api", {"durable": True}, status=201)
        assert api.ok(f"/queues/{v}/via-api")["type"] == "quorum"
    finally:
        conn.close()
        api.call("DELETE", f"/vhosts/{v}")


def test_parameters_api(api, vhost, uniq):
    """/api/parameters shows the vhost-limits parameter (and sets it); components the broker does
    not have are refused; /api/global-parameters keeps any global parameter."""
    path = f"/parameters/vhost-limits/{vhost}/limits"
    assert api.put(path, {"value": {"max-queues": 3}}).status_code in (201, 204)
    expected = {"value": {"max-queues": 3}, "vhost": vhost, "component": "vhost-limits", "name": "limits"}
    assert api.ok(path) == expected
    assert expected in api.ok("/parameters") and expected in api.ok("/parameters/vhost-limits")
    assert api.ok(f"/parameters/vhost-limits/{vhost}") == [expected]
    assert limits_of(api, vhost) == [{"vhost": vhost, "value": {"max-queues": 3}}]
    r = api.put(f"/parameters/vhost-limits/{vhost}/limits", {"value": {"max-queues": "x"}}, status=400)
    # (RabbitMQ 3.10.8 HTML-escapes the term here: &lt;&lt;"x"&gt;&gt;)
    assert r.json()["reason"].startswith("Validation failed\n\nmax-queues should be a number, actually was ")
    r = api.put(f"/parameters/federation-upstream/{vhost}/up", {"value": {"uri": "amqp://"}}, status=400)
    assert r.json() == {"error": "bad_request",
                        "reason": "Validation failed\n\ncomponent federation-upstream not found\n"}
    assert api.call("DELETE", path).status_code == 204
    assert api.call("GET", path).status_code == 404
    assert limits_of(api, vhost) == []
    g = uniq("g").replace(".", "_")
    api.put(f"/global-parameters/{g}", {"value": {"a": 1}}, status=201)
    assert api.ok(f"/global-parameters/{g}") == {"value": {"a": 1}, "name": g}
    assert {"name": g, "value": {"a": 1}} in api.ok("/global-parameters")
    assert {"name": g, "value": {"a": 1}} in api.ok("/definitions")["global_parameters"]
    assert api.call("DELETE", f"/global-parameters/{g}").status_code == 204
    assert api.call("DELETE", f"/global-parameters/{g}").status_code == 404
    assert api.call("GET", f"/global-parameters/{g}").status_code == 404


# ---------------------------------------------------------------------------
# Definitions and restarts
# ---------------------------------------------------------------------------

def test_definitions_carry_parameters(api, vhost):
    api.put(f"/vhost-limits/{vhost}/max-queues", {"value": 5}, status=204)
    d = api.ok("/definitions")
    assert {"value": {"max-queues": 5}, "vhost": vhost, "component": "vhost-limits", "name": "limits"} in d["parameters"]
    # an import sets them (and keeps a component Warren does not act on)
    doc = {"parameters": [{"value": {"max-connections": 3}, "vhost": vhost, "component": "vhost-limits",
                           "name": "limits"}]}
    r = api.call("POST", "/definitions", json=doc)
    assert r.status_code == 204, r.text
    assert limits_of(api, vhost) == [{"vhost": vhost, "value": {"max-connections": 3}}]
    bad = {"parameters": [{"value": {"max-queues": "many"}, "vhost": vhost, "component": "vhost-limits",
                           "name": "limits"}]}
    r = api.call("POST", "/definitions", json=bad)
    assert r.status_code == 400
    assert limits_of(api, vhost) == [{"vhost": vhost, "value": {"max-connections": 3}}]


def test_limits_and_metadata_survive_a_restart(fresh_broker, uniq):
    b = fresh_broker(definitions=DEFS)
    a = Api(b)
    try:
        v = uniq("v")
        a.put(f"/vhosts/{v}", {"description": "kept", "tags": "x,y"}, status=201)
        a.put(f"/vhost-limits/{v}/max-queues", {"value": 4}, status=204)
        b.restart()
        assert a.ok(f"/vhost-limits/{v}") == [{"vhost": v, "value": {"max-queues": 4}}]
        got = a.ok(f"/vhosts/{v}")
        assert (got["description"], got["tags"]) == ("kept", ["x", "y"])
        # deleting the vhost takes its limits along, also across a restart
        assert a.call("DELETE", f"/vhosts/{v}").status_code == 204
        a.put(f"/vhosts/{v}", {}, status=201)
        assert a.ok(f"/vhost-limits/{v}") == []
        assert a.ok(f"/vhosts/{v}")["description"] == ""
        b.restart()
        assert a.ok(f"/vhost-limits/{v}") == []
    finally:
        a.session.close()


def test_default_vhost_description(fresh_broker):
    """A broker that creates the default vhost itself gives it RabbitMQ's description."""
    b = fresh_broker()
    a = Api(b)
    try:
        assert a.ok("/vhosts/%2F")["description"] == "Default virtual host"
    finally:
        a.session.close()


# ---------------------------------------------------------------------------
# A cluster
# ---------------------------------------------------------------------------

CLUSTER_NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]


@pytest.mark.timeout(180)
def test_cluster_limits_and_metadata(tmp_path, pki, uniq):
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("starts its own Warren cluster")
    from helpers.cluster import WarrenCluster
    c = WarrenCluster(str(tmp_path / "cluster"), pki, size=3).start()
    apis = []
    try:
        c.wait_formed()
        apis = [Api(n) for n in c.nodes]
        a1, a2, a3 = apis
        v = uniq("v")
        a1.put(f"/vhosts/{v}", {"description": "clustered", "tags": "t", "default_queue_type": "quorum"}, status=201)
        a1.put(f"/vhost-limits/{v}/max-queues", {"value": 2}, status=204)
        for a in apis:
            assert wait_for(lambda: a.ok(f"/vhost-limits/{v}") == [{"vhost": v, "value": {"max-queues": 2}}], 10)
            got = a.ok(f"/vhosts/{v}")
            assert (got["description"], got["default_queue_type"]) == ("clustered", "quorum")
        # queues count cluster-wide: one declared through node 2, one through node 3, then full
        conns = [pika_connect(n, vhost=v) for n in c.nodes]
        try:
            conns[1].channel().queue_declare("a", durable=True)
            conns[2].channel().queue_declare("b", durable=True)
            code, text = pika_channel_error(lambda: conns[0].channel().queue_declare("c", durable=True))
            assert code == 406 and f"queue limit in vhost '{v}' (2) is reached" in text
            # the default type made them quorum queues, with members chosen as for explicit ones
            assert a1.ok(f"/queues/{v}/a")["type"] == "quorum"
        finally:
            for conn in conns:
                if conn.is_open:
                    conn.close()
        # connections count cluster-wide too: one on node 1, one on node 2, so node 3 refuses a third
        a1.put(f"/vhost-limits/{v}/max-connections", {"value": 2}, status=204)
        for a in apis:
            assert wait_for(lambda: a.ok(f"/vhost-limits/{v}")[0]["value"].get("max-connections") == 2, 10)
        import pika
        held = [pika_connect(c.nodes[0], vhost=v), pika_connect(c.nodes[1], vhost=v)]
        try:
            with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
                pika_connect(c.nodes[2], vhost=v)
            assert f"connection limit (2) is reached" in str(info.value)
            held.pop().close()
            assert wait_for(lambda: _connects(c.nodes[2], v), timeout=10)
        finally:
            for conn in held:
                conn.close()
        # a node that restarts recovers the limits and the metadata
        c.nodes[2].restart()
        c.wait_status(c.nodes[2], lambda st: st.get("formed") is True, timeout=40, what="node 3 back")
        assert wait_for(lambda: _safe_ok(a3, f"/vhost-limits/{v}") == [
            {"vhost": v, "value": {"max-connections": 2, "max-queues": 2}}], 20)
        assert a3.ok(f"/vhosts/{v}")["description"] == "clustered"
        d1, d3 = a1.ok("/definitions"), a3.ok("/definitions")
        for key in ("vhosts", "parameters", "global_parameters"):
            assert sorted(map(json.dumps, d1[key])) == sorted(map(json.dumps, d3[key])), key
    finally:
        for a in apis:
            a.session.close()
        c.stop()


def _safe_ok(api, path):
    try:
        r = api.call("GET", path)
        return r.json() if r.status_code == 200 else None
    except requests.RequestException:
        return None


# ---------------------------------------------------------------------------
# warrenctl (rabbitmqctl's set_vhost_limits / clear_vhost_limits)
# ---------------------------------------------------------------------------

def test_warrenctl_vhost_limits(fresh_broker):
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("warrenctl drives a Warren node")
    from test_cli import Solo, ok
    solo = Solo(fresh_broker)
    a = Api(solo.broker)
    try:
        out = ok(solo.ctl("set_vhost_limits", "-p", "/", '{"max-queues": 1, "max-connections": 5}')).stdout
        assert 'Setting vhost limits to "{"max-queues": 1, "max-connections": 5}" for vhost "/" ...' in out
        assert a.ok("/vhost-limits/%2F") == [{"vhost": "/", "value": {"max-queues": 1, "max-connections": 5}}]
        conn = pika_connect(solo.broker)
        try:
            conn.channel().queue_declare("only")
            code, _ = pika_channel_error(lambda: conn.channel().queue_declare("second"))
            assert code == 406
        finally:
            conn.close()
        r = solo.ctl("set_vhost_limits", '{"max-queues": "x"}')
        assert r.returncode != 0 and "max-queues should be a number" in r.stderr
        r = solo.ctl("set_vhost_limits", "-p", "nope", '{"max-queues": 1}')
        assert r.returncode != 0 and "does not exist" in r.stderr
        ok(solo.ctl("clear_vhost_limits", "-p", "/"))
        assert a.ok("/vhost-limits") == []
        ok(solo.ctl("clear_vhost_limits"))  # nothing to clear: still fine
    finally:
        a.session.close()
