"""The RabbitMQ tutorial patterns through librabbitmq (rabbitmq-c, Debian's C client).

The checks live in tests/integration/c/amqp_c_test.c, built by CMake as amqp_c_test into
$WARREN_CBIN (default build/). Each tutorial runs as its own pytest item, so a report
names the pattern that broke; the binary prints the reason, which the assertion shows.
The C program was validated against RabbitMQ 3.10.8.
"""
import os
import re
import subprocess

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CBIN_DIR = os.environ.get("WARREN_CBIN") or os.path.join(REPO_ROOT, "build")
BINARY = os.path.join(CBIN_DIR, "amqp_c_test")

# Must match ct_cases[] in amqp_c_test.c; test_case_list_matches_binary keeps them in step.
TUTORIALS = [
    "hello_world",
    "work_queues",
    "publish_subscribe",
    "routing",
    "topics",
    "rpc",
    "publisher_confirms",
    "channel_errors",
]

RUN_TIMEOUT = 90


def require_binary():
    if not os.access(BINARY, os.X_OK):
        pytest.skip(f"{BINARY} not built (CMake builds it when librabbitmq-dev is installed; "
                    "set WARREN_CBIN to its directory)")


def run_c_client(*args):
    try:
        proc = subprocess.run([BINARY, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        partial = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) \
            else (e.stdout or "")
        pytest.fail(f"amqp_c_test {' '.join(args)} still running after {RUN_TIMEOUT} s; "
                    f"output so far:\n{partial}")
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.timeout(RUN_TIMEOUT + 10)
@pytest.mark.parametrize("tutorial", TUTORIALS)
def test_tutorial_with_librabbitmq(broker, tutorial):
    require_binary()
    code, output = run_c_client(broker.host, str(broker.port), tutorial)
    assert code == 0 and re.search(r"^1 passed, 0 failed$", output, re.M), \
        f"amqp_c_test {tutorial} exited {code}:\n{output}"


def test_case_list_matches_binary():
    require_binary()
    code, output = run_c_client()   # no target: prints usage with the test names
    assert code == 2, output
    listed = re.search(r"^tests:(.*)$", output, re.M)
    assert listed, output
    assert listed.group(1).split() == TUTORIALS
