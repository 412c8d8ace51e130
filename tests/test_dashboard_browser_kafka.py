"""The live dashboard in a real browser (headless Chromium, Debian's package, driven by
Selenium): a worker on the real broker gets skewed traffic against a published profile;
the page must show the alert and the reference-vs-serving histogram of the skewed
feature, without a script error. A screenshot is saved as a test artifact
(test-artifacts/dashboard.png)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest

from detectors.profile import build_profile
from streams.cli.profile import publish_profile
from streams.config import load_settings
from streams.tools.broker import free_port
from tests.conftest import ROOT, WorkerProcess
from tests.kafka_io import Collector, produce
from tests.test_skew import serving, training_frame

pytestmark = pytest.mark.kafka

ARTIFACTS = ROOT / "test-artifacts"


def browser() -> Any:
    """Headless Chromium from the system's packages (`make test` installs them)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    assert chromium and driver_path, "chromium and chromedriver are needed: run `make test`"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1600", "--disable-gpu"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


async def test_the_dashboard_shows_an_alert_and_its_histogram_in_a_browser(
        worker_factory: Callable[..., WorkerProcess]) -> None:
    port = free_port()
    w = worker_factory({"worker": {"web_port": port},
                        "skew": {"window_events": 400, "hop_events": 100,
                                 "run_length_events": 1_000_000}})
    settings = load_settings(w.config_path, w.servers)
    await publish_profile(settings, build_profile(training_frame().lazy(), "m", "v1",
                                                  created_at=time.time()))
    await asyncio.to_thread(w.wait_for_log, "reference profile for m v1", 60)
    key = "training_serving_skew:m:v1:amount"
    t0 = time.time() - 600
    async with Collector(w.servers, w.topics["alerts"]) as alerts:
        evs = serving(1000, t0, seed=1, shift=1.0) + serving(1000, t0 + 20, seed=2, shift=3.0)
        await produce(w.servers, w.topics["predictions"],
                      [evs[i:i + 100] for i in range(0, len(evs), 100)], key=b"m")
        await alerts.until(lambda r: any(a["dedup_key"] == key for a in r), what="skew")
    # later traffic closes the first windows: the page charts them over time
    await produce(w.servers, w.topics["predictions"],
                  [serving(100, t0 + 130, seed=3), serving(100, t0 + 260, seed=4)], key=b"m")
    ARTIFACTS.mkdir(exist_ok=True)

    def look() -> tuple[str, list[dict[str, Any]]]:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        driver = browser()
        try:
            driver.get(f"http://127.0.0.1:{port}/dashboard")
            WebDriverWait(driver, 30).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, "table.hist .bar.srv")))
            # the latency of the closed windows over time, pushed without a reload
            WebDriverWait(driver, 60).until(
                ec.presence_of_element_located((By.CSS_SELECTOR, "svg.spark polyline")))
            text = driver.find_element(By.TAG_NAME, "body").text
            driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
            return text, driver.get_log("browser")
        finally:
            driver.quit()

    text, log = await asyncio.to_thread(look)
    assert key in text and "% serving" in text and "% reference" in text
    assert "amount" in text and "m" in text
    assert not [e for e in log if e.get("level") == "SEVERE"], log
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
