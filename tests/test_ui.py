"""The dashboard end to end in headless Chromium: a real nats-server and node, `nex ui` in-process
on a free loopback port, Debian's chromium driven by Selenium through chromedriver.

The browser's calls block, so each step runs in a thread (``asyncio.to_thread``) while the
node and the dashboard go on in the test's event loop. Screenshots of every step are saved
under the test's tmp_path (the path is printed; ``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Callable

import pytest

from nex.api.models import DeployRequest, Trigger
from nex.client import NexClient
from nex.connection import ConnectOptions
from nex.ui import Dashboard

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 30  # generous: the machine is shared

GREETER_JS = """\
(subject, payload) => {
  const text = new TextDecoder().decode(payload);
  console.log("greeting " + text);
  return "hello " + text;
}
"""


def _browser_or_fail() -> Any:
    """Chromium, headless; a missing browser fails the test with the packages to install."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install the Debian packages chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; `make test` does it)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, read at the end
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1100", "--disable-extensions", "--no-first-run"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)


@pytest.fixture
async def browser():
    driver = await asyncio.to_thread(_browser_or_fail)
    yield driver
    await asyncio.to_thread(driver.quit)


@pytest.fixture
async def dashboard_url(nats_server, node):
    client = await NexClient.connect(ConnectOptions(servers=[nats_server.url]))
    dashboard = Dashboard([client], refresh_s=1.0)
    url = await dashboard.start("127.0.0.1", 0)
    yield url
    await dashboard.stop()
    await client.close()


class Page:
    """The dashboard as a user sees it, one blocking call per user step (run in a thread)."""

    def __init__(self, driver: Any, shots: Path) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.shots, self.By, self.ec = driver, shots, By, ec
        self.wait = WebDriverWait(driver, WAIT_S)
        self.count = 0

    def css(self, selector: str) -> Any:
        return self.wait.until(self.ec.presence_of_element_located((self.By.CSS_SELECTOR, selector)))

    def click(self, selector: str) -> None:
        """Click once the element can be clicked; a row redrawn by a live update meanwhile
        is looked up again (as a user would click again)."""
        from selenium.common.exceptions import StaleElementReferenceException

        def clicked(_: Any) -> bool:
            try:
                self.ec.element_to_be_clickable((self.By.CSS_SELECTOR, selector))(self.driver).click()
                return True
            except (StaleElementReferenceException, AttributeError):
                return False  # AttributeError: not clickable yet (the condition gave False)
        self.wait.until(clicked, message=f"could not click {selector} within {WAIT_S}s")

    def until(self, check: Callable[[], Any], what: str) -> Any:
        return self.wait.until(lambda _: check(), message=f"the page did not show {what} within {WAIT_S}s")

    def shoot(self, name: str) -> Path:
        self.count += 1
        path = self.shots / f"{self.count:02d}-{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def text(self, selector: str) -> str:
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", selector) or ""

    def exists(self, selector: str) -> bool:
        return bool(self.driver.find_elements(self.By.CSS_SELECTOR, selector))

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.until(lambda: self.text("#connection") == "live", "the live stream connected")

    def confirm_dialog_open(self) -> bool:
        return self.driver.execute_script("return document.getElementById('confirm-dialog').open")


async def step(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_deploy_watch_and_stop_a_function_through_the_page(browser, dashboard_url, node, nc, tmp_path):
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots of the dashboard test: {shots}")
    source = tmp_path / "greeter.js"
    source.write_text(GREETER_JS)
    page = Page(browser, shots)

    # The fleet: the node with its tags and resources.
    await step(page.open, dashboard_url)
    row = f'#nodes tr[data-node-id="{node.node_id}"]'
    await step(page.css, row)
    assert "test-node" in page.text(row) and "zone=a" in page.text(row)
    assert page.text(f"{row} .badge") == "running"
    await step(page.until, lambda: "GiB" in page.text(row) or "MiB" in page.text(row), "the node's memory")
    await step(page.shoot, "fleet")

    # Deploy: the form, then the confirmation that names what will happen.
    await step(page.click, "#deploy-open")
    await step(lambda: page.css("#deploy-file").send_keys(str(source)))
    await step(lambda: page.css("#deploy-trigger").send_keys("ui.e2e"))
    await step(page.shoot, "deploy-form")
    await step(page.click, "#deploy-next")
    await step(page.until, page.confirm_dialog_open, "the deploy confirmation")
    assert "greeter.js" in page.text("#confirm-message") and "ui.e2e" in page.text("#confirm-message")
    await step(page.shoot, "deploy-confirmation")
    await step(page.click, "#confirm-ok")
    await step(page.until, lambda: not page.confirm_dialog_open(), "the deploy done")
    running = 'tr[data-name="greeter"][data-state="running"]'
    await step(page.css, running)
    workload_id = browser.find_element(page.By.CSS_SELECTOR, running).get_attribute("data-workload-id")
    [deployed] = [w for w in await NexClient(nc).workloads() if w.id == workload_id]
    assert (deployed.type.value, [t.subject for t in deployed.triggers]) == ("javascript", ["ui.e2e"])

    # Calls move the rate; their log lines show in the tail.
    for i in range(3):
        assert (await nc.request("ui.e2e", f"e2e-{i}".encode(), timeout=10)).data == f"hello e2e-{i}".encode()
    rate = f'#rates tr[data-workload-id="{workload_id}"] .calls'
    await step(page.until, lambda: page.text(rate) == "3", "3 calls in the rates")
    await step(page.click, f'tr[data-workload-id="{workload_id}"] button.logs')
    await step(page.until, lambda: "greeting e2e-2" in page.text("#log-lines"), "the log lines")
    assert [line for line in page.text("#log-lines").splitlines()] == [f"greeting e2e-{i}" for i in range(3)]
    await nc.request("ui.e2e", b"live", timeout=10)
    await step(page.until, lambda: "greeting live" in page.text("#log-lines"), "a live log line")
    await step(page.until, lambda: page.exists('#events li[data-type="workload_started"]'), "the started event")
    await step(page.shoot, "logs-rates-events")

    # Stop: cancelling changes nothing; confirming stops it and the row goes.
    await step(page.click, f'tr[data-workload-id="{workload_id}"] button.stop')
    await step(page.until, page.confirm_dialog_open, "the stop confirmation")
    assert workload_id in page.text("#confirm-message")
    await step(page.click, "#confirm-cancel")
    assert (await NexClient(nc).workload_info(workload_id)).state.value == "running"
    await step(page.click, f'tr[data-workload-id="{workload_id}"] button.stop')
    await step(page.until, page.confirm_dialog_open, "the stop confirmation")
    await step(page.shoot, "stop-confirmation")
    await step(page.click, "#confirm-ok")
    await step(page.until, lambda: not page.exists(f'#workloads tr[data-workload-id="{workload_id}"]'),
               "the workload gone")
    await step(page.until, lambda: page.exists('#events li[data-type="workload_stopped"]'), "the stopped event")
    assert (await NexClient(nc).workload_info(workload_id)).state.value == "stopped"
    await step(page.shoot, "stopped")

    # Lame duck the node, behind its own confirmation.
    await step(page.click, f"{row} button.lameduck")
    await step(page.until, page.confirm_dialog_open, "the lame duck confirmation")
    await step(page.click, "#confirm-ok")
    await step(page.until, lambda: page.text(f"{row} .badge") == "lameduck", "the node in lame duck")
    await step(page.shoot, "lameduck")
    assert len(list(shots.glob("*.png"))) == 7
    # No script error, no request refused by the page's content security policy, nothing missing.
    console = await step(browser.get_log, "browser")
    assert [e["message"] for e in console if e["level"] == "SEVERE"] == []


async def test_deploy_a_native_service_and_read_both_its_log_streams(browser, dashboard_url, programs, tmp_path):
    page = Page(browser, tmp_path)
    print(f"\nscreenshots of the native service test: {tmp_path}")
    await step(page.open, dashboard_url)
    await step(page.click, "#deploy-open")
    await step(lambda: page.css("#deploy-file").send_keys(str(programs["ticker"])))
    await step(lambda: page.css("#deploy-name").send_keys("ticker-svc"))
    await step(lambda: page.css("#deploy-argv").send_keys("--mode 'fast lane'"))
    await step(page.click, "#deploy-next")
    await step(page.until, page.confirm_dialog_open, "the deploy confirmation")
    assert '"ticker-svc"' in page.text("#confirm-message")
    await step(page.click, "#confirm-ok")
    running = 'tr[data-name="ticker-svc"][data-state="running"]'
    await step(page.css, running)
    assert "native service" in page.text(running)
    await step(page.click, f"{running} button.logs")
    await step(page.until, lambda: "tick 3" in page.text("#log-lines"), "the ticks")
    stdout = browser.execute_script(
        "return [...document.querySelectorAll('#log-lines .stdout')].map(e => e.textContent.trim())")
    assert stdout[:3] == ["started - with 2 args", "arg --mode", "arg fast lane"]
    assert "a line on stderr" in page.text("#log-lines .stderr")
    await step(page.shoot, "native-logs")
    await step(page.click, f"{running} button.stop")
    await step(page.until, page.confirm_dialog_open, "the stop confirmation")
    await step(page.click, "#confirm-ok")
    await step(page.until, lambda: not page.exists('#workloads tr[data-name="ticker-svc"]'), "the service gone")
    await step(page.until, lambda: "stopping" in page.text("#log-lines"), "its last line")


async def test_a_failed_deploy_shows_the_error_in_the_dialog_and_deploys_nothing(
        browser, dashboard_url, nc, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a program")
    page = Page(browser, tmp_path)
    await step(page.open, dashboard_url)
    await step(page.click, "#deploy-open")
    await step(lambda: page.css("#deploy-file").send_keys(str(text)))
    await step(page.click, "#deploy-next")
    await step(page.until, page.confirm_dialog_open, "the deploy confirmation")
    await step(page.click, "#confirm-ok")
    await step(page.until, lambda: "cannot tell the workload type" in page.text("#confirm-error"), "the error")
    assert page.confirm_dialog_open()
    await step(page.shoot, "deploy-error")
    assert await NexClient(nc).workloads() == []


async def test_heartbeats_wait_behind_their_filter_and_functions_of_one_name_show_their_ids(
        browser, nats_server, nc, tmp_path):
    """A node's heartbeats would fill the Events panel: hidden until asked. Two copies of one
    function are told apart by their ids in the Functions panel."""
    from fleet_fixtures import NodeProcess

    source = tmp_path / "greeter.js"
    source.write_text(GREETER_JS)
    node = NodeProcess("beating", [nats_server.url], tmp_path / "node", nc, config={"heartbeat_s": 0.2})
    await node.start()
    try:
        client = await NexClient.connect(ConnectOptions(servers=[nats_server.url]))
        dashboard = Dashboard([client], refresh_s=1.0)
        url = await dashboard.start("127.0.0.1", 0)
        try:
            artifact = await client.upload_artifact(source)
            copies = [await client.deploy(node.node_id, DeployRequest(
                name="greeter", type="javascript", artifact=artifact, triggers=[Trigger(subject="ui.twins")]))
                for _ in range(2)]
            page = Page(browser, tmp_path)
            await step(page.open, url)
            for i in range(6):  # a queue group: both copies get calls
                await client.nc.request("ui.twins", f"t{i}".encode(), timeout=10)
            await step(page.until, lambda: int(page.text("#heartbeat-count") or 0) >= 3, "heartbeats received")
            await step(page.until, lambda: page.exists('#events li[data-type="workload_started"]'), "other events")
            assert not page.exists('#events li[data-type="heartbeat"]'), "heartbeats shown by default"

            await step(page.click, "#show-heartbeats")
            await step(page.until, lambda: page.exists('#events li[data-type="heartbeat"]'), "heartbeats on demand")
            await step(page.click, "#show-heartbeats")
            await step(page.until, lambda: not page.exists('#events li[data-type="heartbeat"]'), "hidden again")

            for copy in copies:
                await step(page.until, lambda copy=copy: page.exists(f'#rates tr[data-workload-id="{copy.id}"]'),
                           "both copies in the rates")
            shown = {page.text(f'#rates tr[data-workload-id="{c.id}"] td') for c in copies}
            assert shown == {f"greeter {c.id[:12]}" for c in copies}, shown
            await step(page.shoot, "twins-and-heartbeats")
        finally:
            await dashboard.stop()
            await client.close()
    finally:
        await node.stop()


def test_chromium_is_where_the_tests_look_for_it():
    """CI installs Debian's chromium and chromium-driver (Makefile UI_DEBS): say so plainly if not."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    assert not missing, f"{missing} not found: apt-get install -y chromium chromium-driver"
