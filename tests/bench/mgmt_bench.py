#!/usr/bin/env python3
"""mgmt_bench.py - the measuring half of tests/bench/mgmt_bench.sh (issue 7's management
benchmark); the shell script starts and stops the nodes.

  defs N OUT                  a definitions file: N durable classic queues bench.q.NNNNN in "/",
                              the guest administrator (sha256 hash) and its permissions
  wait PORT N TIMEOUT         until GET /api/queues?page=1&page_size=1 reports N queues
  measure PORT PID REQS IDLE SETTLE OUT
                              after SETTLE s: the node's CPU time (utime+stime from
                              /proc/PID/stat) over IDLE s of idleness, then the latency of
                              REQS requests of the full /api/queues and REQS of
                              ?page=1&page_size=100 (one keep-alive connection, body read in
                              full; the full list stops early past its time budget) -> JSON
  report WARREN RABBIT MD     prints the figures and ratios, rewrites the "Management
                              (issue 7)" section of the markdown file MD
"""
import json
import math
import os
import sys
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
from helpers import passwords  # noqa: E402

FULL_BUDGET_S = float(os.environ.get("MGMT_BENCH_BUDGET", "200"))
AUTH = ("guest", "guest")


def cmd_defs(n, out):
    doc = passwords.definitions(users=[passwords.user("guest", "guest", tags="administrator")],
                                permissions=[passwords.permission("guest", "/")])
    doc["queues"] = [{"name": f"bench.q.{i:05d}", "vhost": "/", "durable": True, "auto_delete": False,
                      "arguments": {}} for i in range(int(n))]
    with open(out, "w") as f:
        json.dump(doc, f)


def queue_total(port):
    r = requests.get(f"http://127.0.0.1:{port}/api/queues", params={"page": 1, "page_size": 1}, auth=AUTH,
                     timeout=60)
    r.raise_for_status()
    return r.json()["total_count"]


def cmd_wait(port, n, timeout):
    deadline = time.monotonic() + float(timeout)
    last = None
    while time.monotonic() < deadline:
        try:
            last = queue_total(port)
            if last >= int(n):
                return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(1)
    sys.exit(f"mgmt_bench: {n} queues not listed on port {port} within {timeout} s (last: {last})")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def percentile(samples, p):
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def timed_get(session, url):
    """(seconds, body size, reconnects, failed) of one GET. A connection the server closes
    under us is retried once on a new one; a second failure is recorded as a failed request
    whose time is the time until the server gave up (a lower bound)."""
    for attempt in (0, 1):
        t0 = time.perf_counter()
        try:
            r = session.get(url, auth=AUTH, timeout=600)
            body = r.content
            r.raise_for_status()
            return time.perf_counter() - t0, len(body), attempt, False
        except requests.RequestException as e:
            took = time.perf_counter() - t0
            print(f"  {url}: failed after {took:.1f} s: {e}", file=sys.stderr, flush=True)
    return took, 0, 1, True


def latencies(session, url, reqs, budget):
    out, size, retries, failed, start = [], 0, 0, 0, time.monotonic()
    for _ in range(reqs):
        took, n, retried, bad = timed_get(session, url)
        out.append(took)
        size, retries, failed = max(size, n), retries + retried, failed + bad
        print(f"  {url}: {took * 1000:.0f} ms", file=sys.stderr, flush=True)
        if time.monotonic() - start > budget:
            break
    return {"n": len(out), "p50_ms": percentile(out, 50) * 1000, "p99_ms": percentile(out, 99) * 1000,
            "max_ms": max(out) * 1000, "bytes": size, "reconnects": retries, "failed": failed}


def cmd_measure(port, pid, reqs, idle, settle, out):
    time.sleep(float(settle))
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(float(idle))
    c1, t1 = cpu_seconds(pid), time.monotonic()
    result = {"idle_s": t1 - t0, "idle_cpu_s": c1 - c0, "idle_cpu_pct": 100 * (c1 - c0) / (t1 - t0)}
    base = f"http://127.0.0.1:{port}/api/queues"
    with requests.Session() as s:
        result["queues"] = queue_total(port)
        c0 = cpu_seconds(pid)
        result["full"] = latencies(s, base, int(reqs), FULL_BUDGET_S)
        result["full"]["cpu_ms_per_req"] = 1000 * (cpu_seconds(pid) - c0) / result["full"]["n"]
        c0 = cpu_seconds(pid)
        result["page"] = latencies(s, base + "?page=1&page_size=100", int(reqs), FULL_BUDGET_S)
        result["page"]["cpu_ms_per_req"] = 1000 * (cpu_seconds(pid) - c0) / result["page"]["n"]
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


BEGIN = "<!-- mgmt_bench.sh: begin (this section is rewritten by tests/bench/mgmt_bench.sh) -->"
END = "<!-- mgmt_bench.sh: end -->"
HEADING = "## Management (issue 7)"


def ratio(a, b):
    return f"{a / b:.1f}x" if b > 0 else "n/a"


def rows(w, r):
    def line(label, key, sub, fmt="{:.1f}"):
        a, b = w[key][sub], r[key][sub]
        return f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio(b, a)} |"
    return [
        "| | Warren | RabbitMQ 3.10.8 | RabbitMQ / Warren |",
        "|---|---:|---:|---:|",
        line("GET /api/queues, all queues: p50 ms", "full", "p50_ms"),
        line("GET /api/queues, all queues: p99 ms", "full", "p99_ms"),
        line("GET /api/queues, all queues: node CPU ms per request", "full", "cpu_ms_per_req"),
        line("GET /api/queues?page=1&page_size=100: p50 ms", "page", "p50_ms"),
        line("GET /api/queues?page=1&page_size=100: p99 ms", "page", "p99_ms"),
        line("GET /api/queues?page=1&page_size=100: node CPU ms per request", "page", "cpu_ms_per_req"),
        f"| idle node CPU, % of one core (over {w['idle_s']:.0f} s) | {w['idle_cpu_pct']:.2f} | "
        f"{r['idle_cpu_pct']:.2f} | {ratio(r['idle_cpu_pct'], w['idle_cpu_pct'])} |",
        f"| response size, all queues (bytes) | {w['full']['bytes']} | {r['full']['bytes']} | |",
        f"| requests measured (all / page) | {w['full']['n']} / {w['page']['n']} | "
        f"{r['full']['n']} / {r['page']['n']} | |",
        f"| requests that failed (all / page) | {w['full']['failed']} / {w['page']['failed']} | "
        f"{r['full']['failed']} / {r['page']['failed']} | |",
    ]


def targets(w, r):
    checks = [("whole-list p99", w["full"]["p99_ms"], r["full"]["p99_ms"]),
              ("page p99", w["page"]["p99_ms"], r["page"]["p99_ms"]),
              ("idle CPU", w["idle_cpu_pct"], r["idle_cpu_pct"])]
    return "; ".join(f"{name} {'met' if ours * 5 <= theirs else 'missed'} ({ratio(theirs, ours)})"
                     for name, ours, theirs in checks)


def section(w, r):
    md = [HEADING, "", BEGIN, "",
          f"{w['queues']} idle durable classic queues on one node, loaded from a definitions file "
          "(`load_definitions`) on both sides; measured in the same run, Warren first. Written by "
          "`tests/bench/mgmt_bench.sh` (`make bench-mgmt`), which replaces only this section.", ""]
    md += rows(w, r)
    md += ["", "Issue 7's targets, Warren at most a fifth of RabbitMQ's: " + targets(w, r) + "."]
    md += ["", "### Method", "",
           "- One node each: Warren (`build/warren-server`, RelWithDebInfo) with its management API, and "
           "RabbitMQ 3.10.8 from Debian with `rabbitmq_management` (`tests/bench/rabbitmq.sh`, "
           "`RABBITMQ_BENCH_PLUGINS`), default settings otherwise (RabbitMQ's statistics every 5 s).",
           "- Idle CPU: after the queues are listed and the node has settled (`MGMT_BENCH_SETTLE`, 15 s), "
           "utime+stime of the node process (`/proc/PID/stat`; RabbitMQ: beam.smp) over "
           "`MGMT_BENCH_IDLE` (60) s with no client. Nothing else runs on the node, so this is what its "
           "statistics cost: RabbitMQ's queue processes emit stats and its management database "
           "aggregates them; Warren samples its counters once every 5 s for the rates.",
           "- Latency: `MGMT_BENCH_REQUESTS` (50) sequential GETs on one keep-alive connection "
           "(python requests, body read in full) of the whole list, then as many of the first page "
           "of 100. p99 is the nearest-rank percentile (with 50 samples or fewer, the slowest). Each "
           "series stops early past `MGMT_BENCH_BUDGET` (200 s), so a slow side has fewer samples. "
           "A request the server drops is retried once; a second failure counts as a failed request "
           "timed until the drop. RabbitMQ's HTTP idle, inactivity and request timeouts are raised to "
           "600 s (`management.tcp.*_timeout`; at cowboy's 60 s it drops the whole-list request). CPU "
           "per request is the node's CPU time over the series divided by its requests.",
           "- Caveat: the machine has 2 cores shared with other work (builds, tests), so absolute "
           "times are noisy; both sides run in the same conditions, one after the other.",
           "", END]
    return md


def replace_section(text, md):
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if l.strip() == HEADING), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + "\n".join(md) + "\n"
    stop = next((i + 1 for i in range(start, len(lines)) if lines[i].strip() == END), None)
    if stop is None:
        stop = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[:start] + md + lines[stop:])


def cmd_report(wfile, rfile, mdfile):
    with open(wfile) as f:
        w = json.load(f)
    with open(rfile) as f:
        r = json.load(f)
    print("\n".join(rows(w, r)))
    print("targets: " + targets(w, r))
    text = open(mdfile).read() if os.path.exists(mdfile) else "# Warren performance\n"
    with open(mdfile, "w") as f:
        f.write(replace_section(text, section(w, r)))
    print(f"Management section written to {mdfile}")


if __name__ == "__main__":
    cmds = {"defs": cmd_defs, "wait": cmd_wait, "measure": cmd_measure, "report": cmd_report}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
