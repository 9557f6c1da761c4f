"""The status page in a real headless browser: Debian's Chromium driven by Selenium through
chromium-driver, against a real agent on a firmware-sim site and a real Mosquitto.

The browser runs in threads (Selenium blocks); the agent, its page server and the devices run
in the test's event loop, as in ``vpp edge run``. Screenshots go to build/test-artifacts/.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from edge.config import StatusPageSection, TariffSection
from edge.status_page.auth import write_password_hash
from edge.status_page.server import StatusPageServer
from firmware_sim.fleet import Fleet
from protocols.clock import SimClock

from ..agent_harness import (
    SPEED,
    T0,
    Site,
    agent_running,
    dispatch_payload,
    make_config,
    record_truth,
    record_writes,
)

# e2e: the xdist group of the wall-clock-bound system tests, so Chromium never competes with them
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# no internet on a test machine: without these Chromium stalls on refused connections
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
INSTALLER_PASSWORD = "the installer's password"
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

# What the page shows against the devices' ground truth: powers in kW with two decimals
# (+-5 W of rounding) plus 1 W of register resolution; SoC as a whole percent.
POWER_TOLERANCE_W = 6.0
SOC_TOLERANCE_PCT = 0.6
# The mode change: the last dispatch's validity (1 wall s at SPEED) + one page refresh (1 s)
# + a poll and a fetch; the display alone: one refresh plus its fetch.
MODE_CHANGE_LIMIT_S = 5.0
DISPLAY_LIMIT_S = 2.5

READ_PAGE = """
const flows = {};
for (const li of document.querySelectorAll('[data-flow]')) {
  const soc = li.querySelector('[data-field="soc"]');
  flows[li.dataset.flow] = {
    text: li.querySelector('[data-field="power"]').textContent,
    direction: li.querySelector('[data-field="direction"]').textContent,
    soc: soc ? soc.textContent : null,
  };
}
const mode = document.querySelector('[data-field="mode"]');
return {
  flows: flows,
  measured: document.querySelector('[data-field="measured"]').dataset.ts,
  mode: mode.dataset.mode,
  title: mode.textContent,
  reason: document.querySelector('[data-field="reason"]').textContent,
};
"""


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the session, with a fresh profile."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not found: run packaging/setup-dev.sh (it installs "
            "Debian's chromium and chromium-driver)",
            pytrace=False,
        )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    try:
        driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start: {exc.msg}", pytrace=False)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.asynccontextmanager
async def site_with_page(tmp_path: Path, mqtt_url: str) -> AsyncIterator[tuple[Site, str]]:
    """A firmware-sim site, its agent and the agent's status page on a free port."""
    clock = SimClock(speed=SPEED, start=T0)
    fleet = Fleet(1, seed=11, clock=clock, latency_s=0.0, tick_s=0.025)
    truth = record_truth(fleet)
    await fleet.start()
    writes = record_writes(fleet)
    config = make_config(fleet, mqtt_url, tmp_path)
    write_password_hash(tmp_path / "installer-pw", INSTALLER_PASSWORD)
    page_section = StatusPageSection(
        installer_password_file=tmp_path / "installer-pw",
        enabled=True,
        host="127.0.0.1",
        port=0,
        refresh_s=1.0,
        tariff=TariffSection(import_per_kwh=0.32, export_per_kwh=0.07, currency="EUR"),
    )
    config = config.model_copy(update={"status_page": page_section})
    async with agent_running(clock, fleet, config, writes, truth, mqtt_url) as site:
        page = StatusPageServer(site.agent)
        await page.start()
        try:
            yield site, page.url + "/"
        finally:
            await page.stop()


async def in_browser(fn: Any, *args: Any) -> Any:
    """Selenium blocks: run it in a thread so the agent and its page keep serving."""
    return await asyncio.to_thread(fn, *args)


async def read_page(driver: webdriver.Chrome) -> dict[str, Any]:
    return await in_browser(driver.execute_script, READ_PAGE)


async def wait_page(driver: webdriver.Chrome, predicate: Any, wall_s: float, what: str) -> Any:
    deadline = time.monotonic() + wall_s
    while time.monotonic() < deadline:
        shown = await read_page(driver)
        if predicate(shown):
            return shown
        await asyncio.sleep(0.05)
    raise AssertionError(f"the page did not show {what} within {wall_s} s: {shown}")


async def wait_text(element: Any, text: str) -> str:
    """Until ``element`` shows ``text``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = await in_browser(lambda: element.text)
        if text in shown:
            return shown
        await asyncio.sleep(0.05)
    raise AssertionError(f"the element never showed {text!r}: {shown!r}")


def shown_w(flow: dict[str, str], negative: str) -> float:
    """The watts a flow's text says, signed as the system signs it ("to the grid": -)."""
    kw = float(flow["text"].split()[0])
    return -1000 * kw if flow["direction"] == negative else 1000 * kw


def truth_near(site: Site, ts: float) -> list[dict[str, float]]:
    """The devices' ground truth over the 3 s of clock time before the measurement (the
    agent polls the four devices one after the other within a cycle)."""
    return [s for s in site.truth if ts - 3.0 <= s["time"] <= ts + 0.01]


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    """A full-page PNG of what the browser shows now, in build/test-artifacts/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    width = driver.execute_script("return document.documentElement.clientWidth")
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")
    return path


async def test_the_page_shows_the_devices_ground_truth_and_fits_a_phone(
    tmp_path, mosquitto, browser
):
    async with site_with_page(tmp_path, mosquitto.url) as (site, url):
        await site.wait_for(lambda: site.agent.state is not None, 60, "a first cycle")
        await in_browser(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})
        await in_browser(browser.get, url)
        # the values on screen against the devices at the moment the page says they were read
        checked = 0
        last = None
        while checked < 6:
            shown = await wait_page(
                browser,
                lambda s, last=last: s["measured"] and s["measured"] != last,
                10,
                "new values",
            )
            last = shown["measured"]
            ts = datetime.fromisoformat(shown["measured"]).timestamp()
            truth = truth_near(site, ts)
            flows = shown["flows"]
            assert set(flows) == {"pv", "battery", "heat_pump", "house", "grid"}
            for key, signed in (
                ("pv_w", shown_w(flows["pv"], "")),
                ("battery_w", shown_w(flows["battery"], "charging")),
                ("heat_pump_w", shown_w(flows["heat_pump"], "")),
                ("grid_w", shown_w(flows["grid"], "to the grid")),
            ):
                near = min(abs(s[key] - signed) for s in truth)
                assert near <= POWER_TOLERANCE_W, (key, signed, [s[key] for s in truth])
            soc = float(flows["battery"]["soc"].split()[0])
            assert min(abs(s["soc_pct"] - soc) for s in truth) <= SOC_TOLERANCE_PCT
            checked += 1

        # everything the page loaded came from the gateway
        origin = url.rstrip("/")
        loaded = await in_browser(
            browser.execute_script,
            "return performance.getEntriesByType('resource').map((e) => e.name);",
        )
        assert loaded, "the page loaded no resources"
        assert all(name.startswith(origin + "/") for name in loaded), loaded

        # the installer's form: a wrong password is refused, the right one shows the log
        field = await in_browser(browser.find_element, "id", "installer-password")
        await in_browser(field.send_keys, "not the password")
        button = await in_browser(browser.find_element, "css selector", 'button[value="logs"]')
        await in_browser(button.click)
        output = await in_browser(browser.find_element, "id", "installer-output")
        await wait_text(output, "wrong installer password")
        await in_browser(field.clear)
        await in_browser(field.send_keys, INSTALLER_PASSWORD)
        await in_browser(button.click)
        # the log holds the refusal, with its site
        await wait_text(output, f"site={site.site_id} wrong installer password from 127.0.0.1")

        # the chart, once a few minutes of history are stored
        await site.wait_for(
            lambda: site.agent.store is not None and len(site.agent.store.power_minutes(0)) >= 3,
            600,
            "three stored minutes",
        )
        await in_browser(browser.get, url)
        chart = await in_browser(
            browser.execute_script,
            """
            const svg = document.querySelector('[data-field="chart"] svg');
            const box = svg.getBoundingClientRect();
            const paths = Array.from(svg.querySelectorAll('path.series'));
            return {width: box.width, height: box.height,
                    series: paths.map((p) => [p.dataset.series, p.getTotalLength()])};
            """,
        )
        assert chart["width"] > 600
        assert chart["height"] > 200
        assert {name for name, _ in chart["series"]} == {
            "pv",
            "house",
            "grid",
            "battery",
            "heat_pump",
        }
        # a few minutes of a day are a few pixels wide: drawn, not yet long
        assert all(length > 0 for _, length in chart["series"]), chart["series"]
        await in_browser(screenshot, browser, "status-page-desktop.png")
        # the last hour's chart shows the same minutes as lines across
        await in_browser(browser.get, url + "api/history.svg?hours=1")
        lengths = await in_browser(
            browser.execute_script,
            "return Array.from(document.querySelectorAll('path.series'),"
            " (p) => p.getTotalLength());",
        )
        assert len(lengths) == 5
        assert min(lengths) > 10, lengths  # 3 minutes of 60 across ~440 units: ~15

        # a phone: 390 px wide, nothing scrolls sideways
        await in_browser(browser.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride", PHONE)
        await in_browser(browser.get, url)
        sizes = await in_browser(
            browser.execute_script,
            "return [window.innerWidth, document.documentElement.scrollWidth,"
            " document.body.scrollWidth];",
        )
        assert sizes[0] == 390
        assert max(sizes[1:]) <= 390, sizes
        path = await in_browser(screenshot, browser, "status-page-390px.png")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        await in_browser(browser.execute_cdp_cmd, "Emulation.clearDeviceMetricsOverride", {})


async def test_a_lost_broker_shows_as_local_fallback_within_seconds(tmp_path, broker, browser):
    async with site_with_page(tmp_path, broker.url) as (site, url):
        await site.wait_for(lambda: site.agent.state is not None, 60, "a first cycle")
        await in_browser(browser.get, url)

        async def cloud() -> None:
            """The cloud's partition worker: a fresh dispatch every 0.5 wall s, valid 20
            clock s (1 wall s at 20x)."""
            seq = 0
            while True:
                seq += 1
                payload = dispatch_payload(site, seq, target_w=0.0, valid_s=20.0)
                await in_browser(site.observer.publish, site.topic("dispatch"), payload)
                await asyncio.sleep(0.5)

        dispatcher = asyncio.create_task(cloud())
        try:
            shown = await wait_page(browser, lambda s: s["mode"] == "cloud", 20, "cloud mode")
        finally:
            dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dispatcher
        assert shown["title"] == "Cloud dispatch"
        assert shown["reason"].startswith("The cloud asked the house to draw nothing")

        stopped = time.monotonic()
        broker.stop()
        agent_changed: list[float] = []

        async def watch_agent() -> None:
            state = site.agent
            await site.wait_for(
                lambda: state.state is not None and state.state.mode.value == "fallback",
                600,
                "the agent in local fallback",
            )
            agent_changed.append(time.monotonic())

        watcher = asyncio.create_task(watch_agent())
        shown = await wait_page(browser, lambda s: s["mode"] == "fallback", 15, "local fallback")
        on_page = time.monotonic()
        await watcher
        total_s, display_s = on_page - stopped, on_page - agent_changed[0]
        print(
            f"mode change: broker stopped -> page shows local fallback in {total_s:.2f} s "
            f"(agent switched after {agent_changed[0] - stopped:.2f} s, the page "
            f"{display_s:.2f} s later)"
        )
        assert shown["title"] == "Local fallback"
        assert shown["reason"].startswith("No contact with the cloud since ")
        assert total_s < MODE_CHANGE_LIMIT_S
        assert display_s < DISPLAY_LIMIT_S
        await in_browser(screenshot, browser, "status-page-fallback.png")
