"""Fixtures for Warren's integration suite: how the tests find (or start) a broker.

The suite is the behavioural spec Warren must meet: every test asserts what RabbitMQ
really does, and was validated against RabbitMQ 3.10. Three ways to get a broker:

  default                 start Warren: $WARREN_BIN (default build/warren-server)
                          with --config <tmp>/warren.conf (rabbitmq.conf style).
  WARREN_TEST_EXTERNAL    host:port[:tlsport] of an already-running broker (e.g. a
                          real RabbitMQ). Tests that restart, kill or reconfigure the
                          broker are skipped; TLS tests need WARREN_TEST_EXTERNAL_CA
                          (the CA that signed the external broker's certificate).
  WARREN_TEST_RABBITMQ    "1" or the path of a rabbitmq-server script: start private
                          RabbitMQ nodes instead of Warren, with the same config
                          file. This is how the restart/kill/config tests were
                          validated against the reference implementation.

Fixtures:
  broker          session-scoped broker shared by most tests (never restarted).
  fresh_broker    factory for a private broker per test: fresh_broker(config={...},
                  definitions={...}) -> broker handle; stopped at test end. config
                  entries are appended to the config file as "key = value";
                  definitions (a dict) is written as JSON and named by
                  load_definitions.
  module_broker   the same factory, but the brokers live for the whole test module.
  pki             session-scoped CA + server certificate made with the openssl CLI.
  uniq            factory of names unique to the test: uniq("q") -> "q.<test>.<n>".
  conn, ch        a pika BlockingConnection to the session broker, and a channel on it.
  amqp_conn, amqp_ch   the same with py-amqp.

Broker handles expose .host .port .tls_port .mgmt_port (management API, HTTP; for an
external broker from WARREN_TEST_EXTERNAL_MGMT_PORT, else None) .prom_port (Prometheus
metrics; external: WARREN_TEST_EXTERNAL_PROM_PORT) .ca .data_dir .restart(kill9=False)
.stop() .kill9() .start() .send_signal(sig) .log_text(). The broker's stderr goes to
<tmp>/broker.log; its tail is attached to the report of any failing test that used it.
A Warren broker must exit with status 0 within 5 s of SIGTERM and leave no sanitizer
report in its log.

Every test runs under a SIGALRM deadline (default 60 s, @pytest.mark.timeout(N) to
change) because pytest-timeout is not installed.
"""
import atexit
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_TEST_TIMEOUT = 60
WARREN_START_TIMEOUT = 10.0
RABBITMQ_START_TIMEOUT = 90.0
LOG_TAIL_LINES = 60

EXTERNAL = os.environ.get("WARREN_TEST_EXTERNAL", "").strip()
RABBITMQ_MODE = os.environ.get("WARREN_TEST_RABBITMQ", "").strip()


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): per-test deadline enforced with SIGALRM")
    # A SIGTERM to pytest (e.g. from `timeout`) should still stop the brokers we started.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_on_sigterm)


def _terminate_on_sigterm(signum, frame):
    raise KeyboardInterrupt("SIGTERM")


def pytest_sessionfinish(session, exitstatus):
    _kill_leftover_brokers()


# ---------------------------------------------------------------------------
# Per-test deadline
# ---------------------------------------------------------------------------

class DeadlineExceeded(Exception):
    """Raised inside a test whose SIGALRM deadline expired."""


@pytest.fixture(autouse=True)
def _deadline(request):
    marker = request.node.get_closest_marker("timeout")
    seconds = int(marker.args[0]) if marker else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise DeadlineExceeded(f"test exceeded its {seconds} s deadline")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------
# Unique names (the session broker is shared, so tests must not collide)
# ---------------------------------------------------------------------------

_name_counter = itertools.count(1)
# Distinguishes runs, so leftovers of an interrupted run on an external broker never clash.
_run_token = os.urandom(2).hex()


@pytest.fixture
def uniq(request):
    stem = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:40]

    def make(prefix="q"):
        return f"{prefix}.{stem}.{_run_token}{next(_name_counter)}"
    return make


# ---------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------

class Pki:
    def __init__(self, directory):
        self.dir = directory
        self.ca = os.path.join(directory, "ca.pem")
        self.ca_key = os.path.join(directory, "ca.key")
        self.certfile = os.path.join(directory, "server.pem")
        self.keyfile = os.path.join(directory, "server.key")


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_pki(directory):
    """A throwaway CA and a server certificate for localhost/127.0.0.1 signed by it."""
    pki = Pki(directory)
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=digitalSignature,keyEncipherment\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", "/CN=Warren Test CA", "-keyout", pki.ca_key, "-out", pki.ca,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    csr = os.path.join(directory, "server.csr")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", pki.keyfile, "-out", csr, cwd=directory)
    _openssl("x509", "-req", "-in", csr, "-CA", pki.ca, "-CAkey", pki.ca_key,
             "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", pki.certfile,
             cwd=directory)
    # A RabbitMQ node may run as another user in some setups; keep files readable.
    for path in (pki.keyfile, pki.certfile, pki.ca):
        os.chmod(path, 0o644)
    return pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(str(tmp_path_factory.mktemp("pki")))


# ---------------------------------------------------------------------------
# Broker processes
# ---------------------------------------------------------------------------

_handed_out = set()


def free_port():
    """A port that is free now, below the kernel's ephemeral range (32768-60999 by default):
    a port the kernel picked with bind(0) can be taken by some outgoing connection's source
    port (e.g. cluster nodes dialing each other) before the broker binds it. Never the same
    port twice in one test session."""
    import random
    for _ in range(1000):
        port = random.randint(20000, 32000)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port in 20000-32000")


def port_accepts(host, port, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_all_brokers = []


def _kill_leftover_brokers():
    """Safety net: a teardown cut short (deadline, Ctrl-C) must not leave brokers behind."""
    for proc in _all_brokers:
        if proc.proc is not None:
            proc.kill9()


atexit.register(_kill_leftover_brokers)


class BrokerProcess:
    """One broker we start ourselves, restartable on the same ports and data dir.

    Warren and RabbitMQ are both driven by the same rabbitmq.conf-style file; the
    flavour only changes the command line and a few keys Warren does not need.
    """

    def __init__(self, workdir, pki, config=None, definitions=None, flavour="warren"):
        self.workdir = workdir
        self.flavour = flavour
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls_port = free_port()
        self.mgmt_port = free_port()  # the management API (HTTP), on 127.0.0.1
        self.prom_port = free_port()  # the Prometheus metrics (rabbitmq_prometheus's port)
        self.ca = pki.ca
        self.pki = pki
        self.data_dir = os.path.join(workdir, "data")
        self.log_path = os.path.join(workdir, "broker.log")
        self.config_path = os.path.join(workdir, "warren.conf")
        self.extra_config = dict(config or {})
        self.definitions_path = None
        if definitions is not None:
            self.definitions_path = os.path.join(workdir, "definitions.json")
            with open(self.definitions_path, "w") as f:
                json.dump(definitions, f, indent=2)
        self.proc = None
        self.term_sent = False
        self.exit_codes = []
        _all_brokers.append(self)
        os.makedirs(self.data_dir, exist_ok=True)
        self._write_config()

    # -- configuration ------------------------------------------------------

    def config_lines(self):
        lines = [
            f"listeners.tcp.default = {self.host}:{self.port}",
            f"listeners.ssl.default = {self.host}:{self.tls_port}",
            f"ssl_options.certfile = {self.pki.certfile}",
            f"ssl_options.keyfile = {self.pki.keyfile}",
            f"ssl_options.cacertfile = {self.pki.ca}",
        ]
        if self.flavour == "warren":
            lines.append(f"data_dir = {self.data_dir}")
        lines += [f"management.tcp.port = {self.mgmt_port}", f"management.tcp.ip = {self.host}"]
        lines += [f"prometheus.tcp.port = {self.prom_port}", f"prometheus.tcp.ip = {self.host}"]
        lines.append("log.console.level = info")
        if self.flavour == "rabbitmq":
            lines += ["log.console = true", "log.file = false"]
        if self.definitions_path:
            lines.append(f"load_definitions = {self.definitions_path}")
        for key, value in self.extra_config.items():
            lines.append(f"{key} = {value}")
        return lines

    def _write_config(self):
        with open(self.config_path, "w") as f:
            f.write("\n".join(self.config_lines()) + "\n")

    # -- process control ----------------------------------------------------

    def _command_and_env(self):
        env = dict(os.environ)
        if self.flavour == "warren":
            binary = os.environ.get("WARREN_BIN", os.path.join(REPO_ROOT, "build", "warren-server"))
            if not os.access(binary, os.X_OK):
                pytest.fail(f"broker binary {binary} not found or not executable "
                            "(build it, set WARREN_BIN, or use WARREN_TEST_EXTERNAL)")
            env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
            env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
            return [binary, "--config", self.config_path], env
        script = RABBITMQ_MODE if os.path.sep in RABBITMQ_MODE else "/usr/lib/rabbitmq/bin/rabbitmq-server"
        home = os.path.join(self.workdir, "home")
        os.makedirs(home, exist_ok=True)
        plugins = os.path.join(self.workdir, "enabled_plugins")
        with open(plugins, "w") as f:
            # the management API and metrics tests compare with these
            f.write("[rabbitmq_management,rabbitmq_prometheus].\n")
        if not hasattr(self, "dist_port"):
            self.dist_port = free_port()
        env.update({
            "HOME": home,
            "RABBITMQ_NODENAME": f"warrentest{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": self.data_dir,
            "RABBITMQ_LOG_BASE": os.path.join(self.workdir, "rmqlog"),
            "RABBITMQ_CONFIG_FILE": self.config_path,
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(self.workdir, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": plugins,
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.workdir, "rabbitmq-env.conf"),
        })
        subprocess.run(["epmd", "-daemon"], check=False, timeout=10)
        return [script], env

    def start(self):
        self.term_sent = False
        # Never mistake a previous incarnation's listener for this one's.
        deadline = time.monotonic() + 10
        while port_accepts(self.host, self.port, timeout=0.2):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} still accepts connections before start")
            time.sleep(0.05)
        command, env = self._command_and_env()
        with open(self.log_path, "ab") as log:
            log.write(f"==== starting {' '.join(command)} at {time.ctime()}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=env, cwd=self.workdir,
                                         start_new_session=True)
        limit = WARREN_START_TIMEOUT if self.flavour == "warren" else RABBITMQ_START_TIMEOUT
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise RuntimeError(f"broker exited with status {code} during startup\n"
                                   + self.log_tail())
            if port_accepts(self.host, self.port) and self._boot_finished():
                return self
            time.sleep(0.05)
        self._kill_group(signal.SIGKILL)
        raise RuntimeError(f"broker did not accept connections on port {self.port} within "
                           f"{limit:.0f} s\n" + self.log_tail())

    def _boot_finished(self):
        """RabbitMQ opens its listeners before it finishes booting (definitions are
        imported later, early connections may be dropped): wait for its own signal."""
        if self.flavour != "rabbitmq":
            return True
        text = self.log_text()
        last_start = text.rfind("==== starting ")
        return "Server startup complete" in text[last_start:]

    def _kill_group(self, sig):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._wait_group_gone(self.proc.pid)
        self.exit_codes.append(self.proc.returncode)
        self.proc = None

    @staticmethod
    def _wait_group_gone(pgid, timeout=30.0):
        """Until no process of the group is left: a dying broker may still hold its
        listening socket (and its data directory) for a moment after the leader exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return
            time.sleep(0.02)

    def stop(self, timeout=None):
        """SIGTERM and wait; returns the exit status. Raises if it does not exit in time."""
        if self.proc is None:
            return None
        if timeout is None:
            timeout = 5.0 if self.flavour == "warren" else 60.0
        if not self.term_sent:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(signal.SIGKILL)
            raise AssertionError(f"broker did not exit within {timeout:.0f} s of SIGTERM\n"
                                 + self.log_tail())
        if self.flavour == "rabbitmq":
            # The Erlang VM's helpers (erl_child_setup) share the process group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._wait_group_gone(self.proc.pid)
        self.exit_codes.append(code)
        self.proc = None
        return code

    def kill9(self):
        self._kill_group(signal.SIGKILL)

    def send_signal(self, sig):
        """Signal the broker without waiting (e.g. SIGTERM, then watch clients)."""
        self.term_sent = self.term_sent or sig == signal.SIGTERM
        self.proc.send_signal(sig)

    def restart(self, kill9=False):
        if kill9:
            self.kill9()
        else:
            self.stop()
        return self.start()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # -- logs ----------------------------------------------------------------

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines=LOG_TAIL_LINES):
        tail = self.log_text().splitlines()[-lines:]
        return f"---- last {len(tail)} lines of {self.log_path} ----\n" + "\n".join(tail)

    def sanitizer_reports(self):
        text = self.log_text()
        return [line for line in text.splitlines()
                if "ERROR: AddressSanitizer" in line or "ERROR: LeakSanitizer" in line
                or "runtime error:" in line]


class ExternalBroker:
    """A broker somebody else runs (WARREN_TEST_EXTERNAL=host:port[:tlsport])."""

    flavour = "external"

    def __init__(self, spec):
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise pytest.UsageError("WARREN_TEST_EXTERNAL must be host:port[:tlsport]")
        self.host = parts[0]
        self.port = int(parts[1])
        self.tls_port = int(parts[2]) if len(parts) == 3 else None
        self.ca = os.environ.get("WARREN_TEST_EXTERNAL_CA") or None
        self.data_dir = None
        self.log_path = None
        self.running = True
        mgmt = os.environ.get("WARREN_TEST_EXTERNAL_MGMT_PORT")
        self.mgmt_port = int(mgmt) if mgmt else None
        prom = os.environ.get("WARREN_TEST_EXTERNAL_PROM_PORT")
        self.prom_port = int(prom) if prom else None

    def restart(self, kill9=False):
        pytest.skip("cannot restart an external broker (WARREN_TEST_EXTERNAL is set)")

    def stop(self, timeout=None):
        pytest.skip("cannot stop an external broker (WARREN_TEST_EXTERNAL is set)")

    def kill9(self):
        pytest.skip("cannot kill an external broker (WARREN_TEST_EXTERNAL is set)")

    def send_signal(self, sig):
        pytest.skip("cannot signal an external broker (WARREN_TEST_EXTERNAL is set)")

    def log_text(self):
        return ""

    def log_tail(self, lines=LOG_TAIL_LINES):
        return ""


def _flavour():
    return "rabbitmq" if RABBITMQ_MODE else "warren"


def _check_clean_exit(broker, code):
    if broker.flavour != "warren":
        return
    reports = broker.sanitizer_reports()
    assert not reports, "sanitizer reports in broker log:\n" + "\n".join(reports[:20])
    assert code == 0, f"broker exited with status {code} after SIGTERM\n" + broker.log_tail()


def _stop_all(brokers):
    """SIGTERM each running broker and check it exited cleanly; whatever happens (a
    failed check, the test deadline firing), none is left running."""
    try:
        for proc in brokers:
            if proc.proc is not None and not proc.running:
                raise AssertionError(f"broker died during the test with status "
                                     f"{proc.proc.returncode}\n" + proc.log_tail())
            if proc.running:
                code = proc.stop()
                _check_clean_exit(proc, code)
    finally:
        for proc in brokers:
            if proc.proc is not None:
                proc.kill9()


@pytest.fixture(scope="session")
def broker(tmp_path_factory, pki):
    if EXTERNAL:
        yield ExternalBroker(EXTERNAL)
        return
    workdir = str(tmp_path_factory.mktemp("broker"))
    proc = BrokerProcess(workdir, pki, flavour=_flavour()).start()
    yield proc
    _stop_all([proc])


@pytest.fixture
def fresh_broker(tmp_path, pki, request):
    """Factory: fresh_broker(config=None, definitions=None) -> a private started broker.

    Skips the test when WARREN_TEST_EXTERNAL is set, since an external broker cannot be
    restarted or reconfigured from here.
    """
    started = []

    def make(config=None, definitions=None):
        if EXTERNAL:
            pytest.skip("needs a broker the suite can restart or reconfigure "
                        "(WARREN_TEST_EXTERNAL is set)")
        workdir = os.path.join(str(tmp_path), f"broker{len(started)}")
        os.makedirs(workdir)
        proc = BrokerProcess(workdir, pki, config=config, definitions=definitions,
                             flavour=_flavour())
        started.append(proc)
        request.node._warren_brokers = started
        return proc.start()

    yield make
    _stop_all(started)


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory, pki):
    """Factory for brokers shared by one test module (e.g. one definitions file for many
    permission tests); same signature as fresh_broker, stopped after the module."""
    started = []

    def make(config=None, definitions=None):
        if EXTERNAL:
            pytest.skip("needs a broker the suite can configure (WARREN_TEST_EXTERNAL is set)")
        workdir = str(tmp_path_factory.mktemp("module-broker"))
        proc = BrokerProcess(workdir, pki, config=config, definitions=definitions,
                             flavour=_flavour())
        started.append(proc)
        return proc.start()

    yield make
    _stop_all(started)


# ---------------------------------------------------------------------------
# Client connections to the session broker (closed at teardown if still open)
# ---------------------------------------------------------------------------

@pytest.fixture
def conn(broker):
    from helpers.clients import pika_connect
    connection = pika_connect(broker)
    yield connection
    if connection.is_open:
        connection.close()


@pytest.fixture
def ch(conn):
    return conn.channel()


@pytest.fixture
def amqp_conn(broker):
    from helpers.clients import amqp_connect
    connection = amqp_connect(broker)
    yield connection
    try:
        if connection.connected:
            connection.close()
    except Exception:
        pass   # the broker may already have closed it; nothing left to release


@pytest.fixture
def amqp_ch(amqp_conn):
    return amqp_conn.channel()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    brokers = list(getattr(item, "_warren_brokers", []))
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, BrokerProcess) and value not in brokers:
            brokers.append(value)
    for proc in brokers:
        report.sections.append((f"broker log ({proc.log_path})", proc.log_tail()))


