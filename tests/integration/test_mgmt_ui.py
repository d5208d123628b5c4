"""The management plugin's browser UI (mgmt/www/, served by mgmt/ui.c at /), driven in a real
headless Chromium (Debian's chromium + chromium-driver, via Selenium) against a 3-node cluster:
log in (a wrong password first), see the three running nodes, declare a quorum queue from the UI
and see its leader and online members in the queue list, publish a message from the queue page
and get it back, remove and re-add a member, declare an exchange, bind and publish through it,
purge, add and delete a policy, see a client's connection and consumer, export and import
definitions, add and edit a user, open a node's page from the overview (its figures, quorum
queues and listeners as the API gives them), log out - with no JavaScript errors in the console. A second
test checks how the files are served (no browser needed).

Screenshots of each step go to tests/artifacts/mgmt_ui/ (or $WARREN_TEST_ARTIFACTS/mgmt_ui/);
the path and each step's duration are printed. Skipped only when Chromium / chromedriver /
Selenium are not installed (scripts/deps.sh installs them for `make test`).
"""
import json
import os
import shutil
import socket
import time
from urllib.parse import quote

import pytest
import requests

import conftest
from helpers.clients import pika_connect, wait_for

CLUSTER_NAMES = ["warren1@127.0.0.1", "warren2@127.0.0.1", "warren3@127.0.0.1"]
ARTIFACTS = os.path.join(os.environ.get("WARREN_TEST_ARTIFACTS") or os.path.join(conftest.REPO_ROOT, "tests", "artifacts"),
                         "mgmt_ui")


def _fmt_bytes(b):
    """app.js's fmtBytes."""
    units, i = ["B", "KiB", "MiB", "GiB", "TiB"], 0
    while b >= 1024 and i < len(units) - 1:
        b /= 1024
        i += 1
    return (f"{b:.1f}" if i else str(b)) + " " + units[i]


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    try:
        from selenium import webdriver  # noqa: F401
    except ImportError:
        pytest.skip("Selenium is not installed (scripts/deps.sh installs it with pip)")
    if not chromium or not driver:
        pytest.skip("Chromium / chromedriver are not installed and scripts/deps.sh could not install "
                    "Debian's chromium and chromium-driver packages")
    return chromium, driver


def _start_chromium(chromium, driver, downloads):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--disable-extensions", "--no-first-run",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option("prefs", {"download.default_directory": downloads,
                                           "download.prompt_for_download": False})
    # An explicit driver path: Selenium Manager never looks for (or downloads) one.
    return webdriver.Chrome(options=opts, service=Service(executable_path=driver))


@pytest.mark.timeout(150)
def test_ui_on_a_three_node_cluster(tmp_path, pki, uniq, request):
    if conftest.EXTERNAL or conftest.RABBITMQ_MODE:
        pytest.skip("starts its own Warren cluster")
    chromium, driver_path = _browser_or_skip()
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import Select, WebDriverWait
    from helpers.cluster import WarrenCluster

    os.makedirs(ARTIFACTS, exist_ok=True)
    for old in os.listdir(ARTIFACTS):  # this run's screenshots only
        if old.endswith(".png"):
            os.remove(os.path.join(ARTIFACTS, old))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(f"\ntest_mgmt_ui: screenshots in {ARTIFACTS}")
    print(f"test_mgmt_ui: screenshots in {ARTIFACTS}")

    c = WarrenCluster(str(tmp_path / "cluster"), pki, size=3).start()
    browser = None
    step = "start"
    timings = [(step, time.monotonic())]
    try:
        downloads = str(tmp_path / "downloads")
        os.makedirs(downloads)
        browser = _start_chromium(chromium, driver_path, downloads)
        node = c.nodes[0]
        base = f"http://{node.host}:{node.mgmt_port}"

        def shot(name):
            path = os.path.join(ARTIFACTS, f"{name}.png")
            browser.save_screenshot(path)
            return path

        def wait(cond, timeout=20):
            return WebDriverWait(browser, timeout, poll_frequency=0.2).until(cond)

        def clear_flash():
            browser.execute_script("document.getElementById('flash').replaceChildren()")

        def flash_text():
            return " | ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, "#flash .msg"))

        c.wait_formed()

        # The page and its assets need no credentials, carry content types and ETags (304).
        step = "static assets"
        timings.append((step, time.monotonic()))
        r = requests.get(base + "/", timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.headers
        js = requests.get(base + "/app.js", timeout=5)
        assert js.status_code == 200 and "javascript" in js.headers["content-type"]
        assert requests.get(base + "/app.js", headers={"If-None-Match": js.headers["etag"]}, timeout=5).status_code == 304
        assert requests.get(base + "/api/overview", timeout=5).status_code == 401

        # Log in (a wrong password first: the API's reason is shown).
        step = "login"
        timings.append((step, time.monotonic()))
        browser.get(base + "/")
        wait(EC.visibility_of_element_located((By.ID, "login-user"))).send_keys("guest")
        browser.find_element(By.ID, "login-pass").send_keys("wrong")
        browser.find_element(By.ID, "login-submit").click()
        wait(lambda d: "Login failed" in d.find_element(By.ID, "login-error").text)
        browser.find_element(By.ID, "login-pass").clear()
        browser.find_element(By.ID, "login-pass").send_keys("guest")
        browser.find_element(By.ID, "login-submit").click()

        # Overview: the cluster and its three running nodes.
        step = "overview"
        timings.append((step, time.monotonic()))
        wait(lambda d: d.find_elements(By.ID, "nodes-summary")
             and d.find_element(By.ID, "nodes-summary").text == "3 of 3 nodes running", timeout=30)
        def node_rows(d):
            try:
                return [(r.get_attribute("data-name"), r.get_attribute("data-running"))
                        for r in d.find_elements(By.CSS_SELECTOR, "#nodes-table tr.node-row")]
            except StaleElementReferenceException:
                return None
        assert wait(node_rows) == [(n, "true") for n in CLUSTER_NAMES]
        assert "cluster itest" in browser.find_element(By.ID, "ov-sub").text
        shot("01-overview")

        # Declare a quorum queue from the queues page.
        step = "declare quorum queue"
        timings.append((step, time.monotonic()))
        qname = uniq("ui-qq")
        browser.find_element(By.CSS_SELECTOR, '#nav a[data-nav="queues"]').click()
        wait(EC.visibility_of_element_located((By.ID, "q-name"))).send_keys(qname)
        Select(browser.find_element(By.ID, "q-type")).select_by_value("quorum")
        browser.find_element(By.ID, "q-submit").click()
        wait(lambda d: f"Queue {qname} declared." in flash_text())

        # The list shows it with its leader and three online members (the UI polls every 5 s;
        # the filter narrows the list to it).
        step = "queue list"
        timings.append((step, time.monotonic()))
        browser.find_element(By.CSS_SELECTOR, "#queues-list input.filter").send_keys(qname)

        def listed(d):
            try:
                for row in d.find_elements(By.CSS_SELECTOR, "#queues-list tbody tr"):
                    if row.get_attribute("data-name") != qname:
                        continue
                    leader = row.find_element(By.CSS_SELECTOR, ".q-leader").text
                    members = [b.text for b in row.find_elements(By.CSS_SELECTOR, ".q-members .badge.ok")]
                    return leader in CLUSTER_NAMES and sorted(members) == CLUSTER_NAMES and "quorum" in row.text
            except StaleElementReferenceException:
                pass
            return False
        wait(listed, timeout=25)
        shot("02-queues")
        api = requests.get(f"{base}/api/queues/%2F/{qname}", auth=("guest", "guest"), timeout=5).json()
        assert api["type"] == "quorum" and sorted(api["members"]) == CLUSTER_NAMES

        # Queue page: publish a message, then get it back (acked, so the queue is empty again).
        step = "publish"
        timings.append((step, time.monotonic()))
        def click_link(d):
            try:
                d.find_element(By.CSS_SELECTOR, f'#queues-list tr[data-name="{qname}"] a.queue-link').click()
                return True
            except StaleElementReferenceException:
                return False
        wait(click_link)
        wait(lambda d: d.find_elements(By.ID, "queue-name") and d.find_element(By.ID, "queue-name").text == qname)
        wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#queue-members tr.member-row")) == 3)
        payload = "hello from the browser UI"
        browser.find_element(By.ID, "pub-payload").send_keys(payload)
        browser.find_element(By.ID, "pub-submit").click()
        wait(lambda d: "Message published." in flash_text())
        assert wait_for(lambda: requests.get(f"{base}/api/queues/%2F/{qname}", auth=("guest", "guest"),
                                             timeout=5).json().get("messages") == 1, 10)

        step = "get"

        timings.append((step, time.monotonic()))
        Select(browser.find_element(By.ID, "get-ackmode")).select_by_value("ack_requeue_false")
        browser.find_element(By.ID, "get-submit").click()
        got = wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#get-results pre.msg-payload"))
        assert got[0].text == payload
        shot("04-queue-get")
        browser.execute_script("window.scrollTo(0, 0)")
        shot("03-queue-page")
        assert wait_for(lambda: requests.get(f"{base}/api/queues/%2F/{qname}", auth=("guest", "guest"),
                                             timeout=5).json().get("messages") == 0, 10)

        # Quorum membership from the queue page (when the node has RabbitMQ 4's replicas
        # endpoints): remove a follower, then add it back.
        step = "members"
        timings.append((step, time.monotonic()))

        def members(d):
            try:
                return {r.get_attribute("data-node"): r.text for r in d.find_elements(By.CSS_SELECTOR, "#queue-members tr.member-row")}
            except StaleElementReferenceException:
                return None

        def click_remove(node_name):
            def go(d):
                try:
                    d.find_element(By.CSS_SELECTOR, f'#queue-members tr[data-node="{node_name}"] button.member-remove').click()
                    return True
                except StaleElementReferenceException:
                    return False
            return go
        if browser.find_elements(By.CSS_SELECTOR, "#queue-members button.member-remove"):
            follower = sorted(n for n, text in wait(members).items() if "follower" in text)[0]
            clear_flash()
            wait(click_remove(follower))
            wait(EC.alert_is_present()).accept()
            wait(lambda d: f"Removing member {follower}" in flash_text())
            wait(lambda d: (m := members(d)) is not None and sorted(m) == sorted(set(CLUSTER_NAMES) - {follower}), timeout=30)
            Select(wait(EC.element_to_be_clickable((By.ID, "member-node")))).select_by_value(follower)
            clear_flash()
            wait(EC.element_to_be_clickable((By.ID, "member-add"))).click()
            wait(lambda d: f"Adding {follower} as a member" in flash_text())
            wait(lambda d: (m := members(d)) is not None and sorted(m) == CLUSTER_NAMES
                 and all("online" in t for t in m.values()), timeout=30)
            shot("05-queue-members")

        # An exchange declared from the UI, bound to the queue from its page, and a message
        # published there is routed to the queue; the queue page purges it (a confirm dialog).
        step = "exchange"
        timings.append((step, time.monotonic()))
        xname = uniq("ui-x")
        browser.get(f"{base}/#/exchanges")
        wait(EC.visibility_of_element_located((By.ID, "x-name"))).send_keys(xname)
        Select(browser.find_element(By.ID, "x-type")).select_by_value("fanout")
        clear_flash()
        browser.find_element(By.ID, "x-submit").click()
        wait(lambda d: f"Exchange {xname} declared." in flash_text())
        browser.get(f"{base}/#/exchange/%2F/{xname}")
        wait(EC.visibility_of_element_located((By.ID, "xb-dest"))).send_keys(qname)
        clear_flash()
        browser.find_element(By.ID, "xb-submit").click()
        wait(lambda d: "Binding added." in flash_text())
        wait(lambda d: qname in d.find_element(By.ID, "main").text)
        browser.find_element(By.ID, "pub-payload").send_keys("via the exchange")
        clear_flash()
        browser.find_element(By.ID, "pub-submit").click()
        wait(lambda d: "Message published." in flash_text())
        assert wait_for(lambda: requests.get(f"{base}/api/queues/%2F/{qname}", auth=("guest", "guest"),
                                             timeout=5).json().get("messages") == 1, 10)
        step = "purge"
        timings.append((step, time.monotonic()))
        browser.get(f"{base}/#/queue/%2F/{qname}")
        wait(EC.element_to_be_clickable((By.ID, "purge-btn"))).click()
        wait(EC.alert_is_present()).accept()
        wait(lambda d: "Queue purged." in flash_text())
        assert wait_for(lambda: requests.get(f"{base}/api/queues/%2F/{qname}", auth=("guest", "guest"),
                                             timeout=5).json().get("messages") == 0, 10)

        # A policy added from the admin pages is listed, then deleted.
        step = "policy"
        timings.append((step, time.monotonic()))
        pname = uniq("ui-pol")
        browser.get(f"{base}/#/admin/policies")
        wait(EC.visibility_of_element_located((By.ID, "pol-name"))).send_keys(pname)
        browser.find_element(By.ID, "pol-pattern").send_keys("^ui-nothing$")
        browser.find_element(By.CSS_SELECTOR, "#pol-def .arg-key").send_keys("max-length")
        browser.find_element(By.CSS_SELECTOR, "#pol-def .arg-value").send_keys("10")
        Select(browser.find_element(By.CSS_SELECTOR, "#pol-def .arg-type")).select_by_value("Number")
        clear_flash()
        browser.find_element(By.ID, "pol-submit").click()
        wait(lambda d: f"Policy {pname} saved." in flash_text())
        def policy_rows(d):  # (the list re-renders every 5 s: stale rows are looked up again)
            try:
                return [(r, r.text) for r in d.find_elements(By.CSS_SELECTOR, "#policies-list tbody tr")
                        if r.get_attribute("data-name") == pname]
            except StaleElementReferenceException:
                return None

        def click_delete(d):
            try:
                rows = policy_rows(d)
                if rows:
                    rows[0][0].find_element(By.XPATH, ".//button[text()='Delete']").click()
                    return True
            except StaleElementReferenceException:
                pass
            return False
        assert '"max-length":10' in wait(policy_rows)[0][1]
        shot("07-policies")
        wait(click_delete)
        wait(EC.alert_is_present()).accept()
        wait(lambda d: policy_rows(d) == [])

        # A client's connection and its consumer show up (when the node lists them; otherwise the
        # pages explain that they are not available).
        step = "connections"
        timings.append((step, time.monotonic()))
        amqp = pika_connect(node, client_properties={"connection_name": "ui-test-client"})
        try:
            ch = amqp.channel()
            ch.basic_consume(qname, lambda *a: None, consumer_tag="ui-test-consumer")
            browser.get(f"{base}/#/connections")
            wait(lambda d: d.find_elements(By.ID, "connections-list") or d.find_elements(By.ID, "no-endpoint"))
            if browser.find_elements(By.ID, "connections-list"):
                wait(lambda d: "guest" in d.find_element(By.ID, "connections-list").text)
            shot("06-connections")
            browser.get(f"{base}/#/channels")
            wait(lambda d: d.find_elements(By.ID, "channels-list") or d.find_elements(By.ID, "no-endpoint"))
            browser.get(f"{base}/#/queue/%2F/{qname}")
            wait(lambda d: "ui-test-consumer" in d.find_element(By.ID, "queue-consumers").text
                 or "does not list consumer" in d.find_element(By.ID, "queue-consumers").text)
        finally:
            amqp.close()

        # Definitions: the export downloads a JSON file with the queue; an uploaded file is imported
        # (or, on a node without POST /api/definitions, the page says so).
        step = "definitions"
        timings.append((step, time.monotonic()))
        browser.get(f"{base}/#/definitions")
        clear_flash()
        wait(EC.element_to_be_clickable((By.ID, "export-btn"))).click()
        wait(lambda d: "Definitions exported." in flash_text())
        exported = wait(lambda d: [f for f in os.listdir(downloads) if f.endswith(".json")], timeout=10)
        with open(os.path.join(downloads, exported[0])) as f:
            defs = json.load(f)
        assert qname in [q["name"] for q in defs["queues"]]
        imported_q = uniq("ui-imported")
        upload = tmp_path / "import.json"
        upload.write_text(json.dumps({"queues": [{"name": imported_q, "vhost": "/", "durable": True,
                                                  "auto_delete": False, "arguments": {}}]}))
        browser.find_element(By.ID, "import-file").send_keys(str(upload))
        clear_flash()
        browser.find_element(By.ID, "import-btn").click()
        outcome = wait(lambda d: ("imported" if "Definitions imported." in flash_text() else
                                  "unsupported" if "cannot import definitions" in flash_text() else None))
        if outcome == "imported":
            assert wait_for(lambda: requests.get(f"{base}/api/queues/%2F/{imported_q}", auth=("guest", "guest"),
                                                 timeout=5).status_code == 200, 10)
        shot("08-definitions")

        # A user added from the admin pages logs in; edited without a new password (tags only), it
        # keeps its password.
        step = "users"
        timings.append((step, time.monotonic()))
        uname = uniq("ui-user")
        browser.get(f"{base}/#/admin/users")
        wait(EC.visibility_of_element_located((By.ID, "u-name"))).send_keys(uname)
        browser.find_element(By.ID, "u-pass").send_keys("ui-pw")
        browser.find_element(By.ID, "u-tags").send_keys("monitoring")
        clear_flash()
        browser.find_element(By.ID, "u-submit").click()
        wait(lambda d: f"User {uname} saved." in flash_text())
        who = lambda: requests.get(f"{base}/api/whoami", auth=(uname, "ui-pw"), timeout=5)
        assert wait_for(lambda: who().status_code == 200, 10) and who().json()["tags"] == ["monitoring"]
        browser.find_element(By.CSS_SELECTOR, "#users-list input.filter").send_keys(uname)

        def edit_user(d):
            try:
                d.find_element(By.CSS_SELECTOR, f'#users-list tr[data-name="{uname}"] button.link').click()
                return d.find_element(By.ID, "u-name").get_attribute("value") == uname
            except (StaleElementReferenceException, NoSuchElementException):
                return False
        wait(edit_user)
        assert browser.find_element(By.ID, "u-tags").get_attribute("value") == "monitoring"
        browser.find_element(By.ID, "u-tags").clear()
        browser.find_element(By.ID, "u-tags").send_keys("management")
        clear_flash()
        browser.find_element(By.ID, "u-submit").click()
        wait(lambda d: f"User {uname} saved." in flash_text())
        assert wait_for(lambda: who().status_code == 200 and who().json()["tags"] == ["management"], 10)
        requests.delete(f"{base}/api/users/{uname}", auth=("guest", "guest"), timeout=5)

        # A node's page (#/nodes/<name>), reached from the overview's node link: its figures are
        # GET /api/nodes/<name>'s, its quorum queues those the API lists it in (leader / member).
        step = "node page"
        timings.append((step, time.monotonic()))
        nq = uniq("node-qq")
        auth = ("guest", "guest")
        assert requests.put(f"{base}/api/queues/%2F/{nq}", auth=auth, timeout=10,
                            json={"durable": True, "arguments": {"x-queue-type": "quorum"}}).status_code in (201, 204)
        assert wait_for(lambda: requests.get(f"{base}/api/queues/%2F/{nq}", auth=auth, timeout=5).json().get("leader"), 20)
        target = CLUSTER_NAMES[1]
        browser.get(f"{base}/#/")

        def click_node(d):
            try:
                d.find_element(By.CSS_SELECTOR, f'#nodes-table tr[data-name="{target}"] a.node-link').click()
                return True
            except (NoSuchElementException, StaleElementReferenceException):
                return False
        wait(click_node, timeout=30)
        wait(lambda d: d.find_elements(By.ID, "node-name") and d.find_element(By.ID, "node-name").text == target)
        assert browser.current_url.endswith("#/nodes/" + quote(target, safe=""))
        n = requests.get(f"{base}/api/nodes/{target}", auth=auth, timeout=10).json()

        def cell(table, key):
            def get(d):
                try:
                    return d.find_element(By.CSS_SELECTOR, f'#{table} tr[data-key="{key}"] td').text
                except (NoSuchElementException, StaleElementReferenceException):
                    return None
            return get

        def shows(table, key, *parts):
            wait(lambda d: (cell(table, key)(d) or "") and all(p in cell(table, key)(d) for p in parts))
            return cell(table, key)(browser)
        assert shows("node-details", "Running") == "yes"
        assert shows("node-details", "Uptime") not in ("", "–")
        shows("node-details", "Processors", str(n["processors"]))
        shows("node-details", "OS process", f"pid {n['os_pid']}")
        shows("node-details", "Alarms", "none")
        shows("node-resources", "Memory", f"/ {_fmt_bytes(n['mem_limit'])}")
        shows("node-resources", "Disk free", f"limit {_fmt_bytes(n['disk_free_limit'])}")
        shows("node-resources", "File descriptors", f"/ {n['fd_total']:,}")
        assert "running" in browser.find_element(By.ID, "node-state").text
        queues = requests.get(f"{base}/api/queues", auth=auth, timeout=10).json()
        member_of = [q["name"] for q in queues if q.get("type") == "quorum" and target in (q.get("members") or [])]
        leads = [q["name"] for q in queues if q.get("type") == "quorum" and q.get("leader") == target]
        assert nq in member_of
        role = "leader" if nq in leads else "follower"
        wait(lambda d: any(r.get_attribute("data-name") == nq and r.get_attribute("data-role") == role
                           for r in d.find_elements(By.CSS_SELECTOR, "#node-queues tr.node-queue-row")))
        wait(lambda d: d.find_element(By.ID, "node-queues-summary").text.startswith(
            f"Leader of {len(leads)}, member of {len(member_of)} quorum queue"))
        # the overview lists every member's listeners: the other node's AMQP port shows
        target_port = next(nd.port for nd, nm in zip(c.nodes, CLUSTER_NAMES) if nm == target)
        wait(lambda d: any(r.get_attribute("data-protocol") == "amqp" and str(target_port) in r.text
                           for r in d.find_elements(By.CSS_SELECTOR, "#node-listeners tr.listener-row")))
        assert browser.find_elements(By.ID, "chart-node")
        clear_flash()
        browser.set_window_size(1400, 1500)  # the whole page in the screenshots
        shot("09-node")
        # this node's page lists its listeners (the AMQP port the tests connect to)
        browser.get(f"{base}/#/nodes/{quote(CLUSTER_NAMES[0], safe='')}")
        wait(lambda d: d.find_elements(By.ID, "node-name") and d.find_element(By.ID, "node-name").text == CLUSTER_NAMES[0])
        wait(lambda d: any(r.get_attribute("data-protocol") == "amqp" and r.text.endswith(str(node.port))
                           for r in d.find_elements(By.CSS_SELECTOR, "#node-listeners tr.listener-row")))
        shot("10-node-self")
        browser.set_window_size(1400, 1000)
        requests.delete(f"{base}/api/queues/%2F/{nq}", auth=auth, timeout=10)

        # The other pages render without errors; then log out.
        step = "other pages"
        timings.append((step, time.monotonic()))
        for page, marker in (("admin/vhosts", "vhosts-list"), ("admin/permissions", "permissions-list")):
            browser.get(f"{base}/#/{page}")
            wait(EC.presence_of_element_located((By.ID, marker)))
        browser.find_element(By.ID, "logout").click()
        wait(EC.visibility_of_element_located((By.ID, "login-user")))

        step = "console"

        timings.append((step, time.monotonic()))
        errors = [e for e in browser.get_log("browser")
                  if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
        assert not errors, errors
    except Exception:
        if browser is not None:
            try:
                path = os.path.join(ARTIFACTS, "failure.png")
                browser.save_screenshot(path)
                print(f"test_mgmt_ui: failed at step '{step}'; screenshot {path}")
            except Exception:
                pass
        raise
    finally:
        if browser is not None:
            browser.quit()
        c.stop()
        timings.append(("end", time.monotonic()))
        spent = ", ".join(f"{a} {b - t:.1f}s" for (a, t), (_, b) in zip(timings, timings[1:]))
        print(f"test_mgmt_ui: steps: {spent}")
        if reporter:
            reporter.write_line(f"test_mgmt_ui: steps: {spent}")


def test_ui_files_are_served_without_credentials(broker):
    """The UI's files (no browser needed): content types, ETag revalidation, HEAD, the
    index.html fallback for the UI's own paths, 404 / 405 elsewhere, /api untouched."""
    if broker.mgmt_port is None or conftest.RABBITMQ_MODE or conftest.EXTERNAL:
        pytest.skip("Warren's own UI")
    base = f"http://{broker.host}:{broker.mgmt_port}"
    index = requests.get(base + "/", timeout=5)
    assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="/app.js"></script>' in index.text
    assert "default-src 'self'" in index.headers["content-security-policy"]
    assert index.headers["x-content-type-options"] == "nosniff"
    for path, ctype in (("/index.html", "text/html"), ("/app.js", "text/javascript"),
                        ("/app.css", "text/css"), ("/favicon.svg", "image/svg+xml")):
        r = requests.get(base + path, timeout=5)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), (path, r.headers)
        etag = r.headers["etag"]
        assert etag.startswith('"') and etag.endswith('"')
        again = requests.get(base + path, headers={"If-None-Match": f'"x", {etag}'}, timeout=5)
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert requests.get(base + path, headers={"If-None-Match": '"other"'}, timeout=5).status_code == 200
        head = requests.head(base + path, timeout=5)
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(r.content)
    # If-None-Match given twice is one list (raw HTTP: requests merges headers itself)
    etag = requests.get(base + "/app.css", timeout=5).headers["etag"]
    with socket.create_connection((broker.host, broker.mgmt_port), timeout=5) as s:
        s.sendall(f'GET /app.css HTTP/1.1\r\nHost: x\r\nIf-None-Match: "x"\r\nIf-None-Match: {etag}\r\n'
                  "Connection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 304 "), answer[:200]
    # the UI's own (bookmarked) paths get the page; files that do not exist do not
    for path in ("/queues", "/admin/users?x=1"):
        assert requests.get(base + path, timeout=5).text == index.text, path
    assert requests.get(base + "/nope.js", timeout=5).status_code == 404
    assert requests.post(base + "/", timeout=5).status_code == 405
    # the API keeps its own authentication and 404s
    assert requests.get(base + "/api/overview", timeout=5).status_code == 401
    assert requests.get(base + "/api/no-such-thing", timeout=5).status_code == 404
    assert requests.get(base + "/api/overview", auth=("guest", "guest"), timeout=5).status_code == 200
