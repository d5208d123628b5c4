"""Warren clusters for the integration tests: N warren-server processes on 127.0.0.1, and
warrenctl.

Each node is a conftest.BrokerProcess (so it is restartable on the same ports and data
directory, its log is kept, and leftovers are killed at exit) whose config adds the cluster
keys: node_name warren<i>@127.0.0.1, its own cluster.listener.port (a free port, so runs do not
collide with other tests), the shared cluster.cookie, and every node of the cluster under
cluster_formation.classic_config.nodes.<i>.

warrenctl is found next to $WARREN_BIN (or at $WARRENCTL_BIN). Every call has a timeout.
"""
import json
import os
import subprocess
import time

import conftest
from conftest import BrokerProcess, free_port

DEFAULT_COOKIE = "itest-cluster-cookie-7f3a"


def warrenctl_bin():
    explicit = os.environ.get("WARRENCTL_BIN")
    if explicit:
        return explicit
    server = os.environ.get("WARREN_BIN", os.path.join(conftest.REPO_ROOT, "build", "warren-server"))
    return os.path.join(os.path.dirname(os.path.abspath(server)), "warrenctl")


class WarrenCluster:
    """A set of nodes that share a cluster name and cookie.

    nodes[i] is node i+1 (warren<i+1>@127.0.0.1). Node objects carry .name and .cluster_port
    besides BrokerProcess's attributes. add_node() makes one more node whose config lists the
    given members plus itself (how a new node is added to a running cluster).
    """

    def __init__(self, workdir, pki, size=3, cookie=DEFAULT_COOKIE, extra_config=None):
        self.workdir = workdir
        self.pki = pki
        self.cookie = cookie
        self.extra_config = dict(extra_config or {})
        self.ctl_extra = []  # warrenctl options added to every call (e.g. --tls --cacert F)
        self.nodes = []
        ports = [free_port() for _ in range(size)]
        names = [f"warren{i + 1}@127.0.0.1" for i in range(size)]
        self.members = list(zip(names, ports))
        for i in range(size):
            self.nodes.append(self._make_node(i + 1, self.members))

    def _make_node(self, index, members, cookie=None):
        name, port = f"warren{index}@127.0.0.1", None
        for n, p in members:
            if n == name:
                port = p
        if port is None:
            port = free_port()
            members = members + [(name, port)]
        config = {
            "node_name": name,
            "cluster_name": "itest",
            "cluster.listener.ip": "127.0.0.1",
            "cluster.listener.port": port,
            "cluster.cookie": cookie or self.cookie,
        }
        for n, p in members:
            k = int(n[len("warren"):n.index("@")])
            config[f"cluster_formation.classic_config.nodes.{k}"] = f"{n}:{p}"
        config.update(self.extra_config)
        workdir = os.path.join(self.workdir, f"node{index}")
        os.makedirs(workdir, exist_ok=True)
        node = BrokerProcess(workdir, self.pki, config=config)
        node.name = name
        node.cluster_port = port
        return node

    def add_node(self, index, members=None, cookie=None):
        """A new node warren<index> listing `members` ((name, port) pairs, default: the
        running nodes) plus itself; not started."""
        if members is None:
            members = [(n.name, n.cluster_port) for n in self.nodes if n.running]
        node = self._make_node(index, members, cookie=cookie)
        self.nodes.append(node)
        return node

    def start(self):
        for node in self.nodes:
            node.start()
        return self

    def stop(self):
        """SIGTERM every node; each must exit cleanly (status 0, no sanitizer report)."""
        conftest._stop_all(self.nodes)

    # -- warrenctl --------------------------------------------------------------------------

    def ctl(self, node, *args, cookie=None, timeout=30):
        """Runs warrenctl against node's cluster port; returns the CompletedProcess."""
        command = [warrenctl_bin(), "--node", f"127.0.0.1:{node.cluster_port}",
                   "--cookie", cookie or self.cookie, *self.ctl_extra, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def status(self, node, timeout=15):
        """cluster_status --json of node as a dict; raises on failure."""
        result = self.ctl(node, "--json", "--timeout", str(timeout), "cluster_status", timeout=timeout + 5)
        if result.returncode != 0:
            raise AssertionError(f"warrenctl cluster_status on {node.name} exited with "
                                 f"{result.returncode}: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def await_startup(self, node, timeout=30):
        result = self.ctl(node, "--timeout", str(timeout), "await_startup", timeout=timeout + 5)
        if result.returncode != 0:
            raise AssertionError(f"{node.name} did not form the cluster: {result.stderr.strip()}\n"
                                 + node.log_tail())

    def wait_status(self, node, predicate, timeout=30, what="the expected cluster status"):
        """Polls node's status until predicate(status) holds; returns that status."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status(node, timeout=5)
                if predicate(last):
                    return last
            except (AssertionError, ValueError) as e:
                last = str(e)
            time.sleep(0.2)
        raise AssertionError(f"{node.name}: no {what} within {timeout} s; last status: {last}\n"
                             + node.log_tail())

    def wait_formed(self, timeout=40):
        """Waits until every node reports the cluster formed with all of its nodes running."""
        names = sorted(n.name for n in self.nodes)
        for node in self.nodes:
            self.wait_status(node, lambda st: st.get("formed") is True and running_names(st) == names,
                             timeout=timeout, what=f"a formed cluster of {len(names)}")
        return self


def running_names(status):
    return sorted(status.get("running_nodes", []))


def member_names(status):
    return sorted(n["name"] for n in status.get("nodes", []))
