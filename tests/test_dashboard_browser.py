"""The one browser test: `lake dashboard` as a real subprocess on a free port, driven by a
real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, through Selenium).

It fails, never skips, when the browser is missing, unless ``LAKE_BROWSER_TESTS=0`` says to
skip it (docs/DASHBOARD.md: how to install the browser; .ci/run installs it).
Marked slow (Streamlit and Chromium take ~20 s to start): ``make test-slow`` runs it, and
so does CI. It saves a screenshot under its tmp_path on every run, and copies it to
docs/dashboard.png (the picture in docs/DASHBOARD.md) only when LAKE_UPDATE_SCREENSHOTS=1,
so an ordinary run leaves the checkout clean.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from dashboard_lakes import failing_lake

CHROMIUM = os.environ.get("LAKE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LAKE_CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOT = REPO / "docs" / "dashboard.png"  # rewritten only with LAKE_UPDATE_SCREENSHOTS=1
ERROR_RGB = "rgba(198, 40, 40, 1)"  # #c62828, COLOURS["error"] in loader/dashboard_app.py
# The flags that work on a headless Debian machine (no GPU, no sandbox as root, no network).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                  "--window-size=1400,1100"]

if os.environ.get("LAKE_BROWSER_TESTS") == "0":
    pytest.skip("LAKE_BROWSER_TESTS=0: the browser test is off", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`lake dashboard` serving a lake with a failing check; its URL."""
    root = failing_lake(tmp_path / "lake").root
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "loader.cli", "--root", str(root), "dashboard",
         "--port", str(port), "--refresh", "0"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("lake dashboard did not start: "
                                     + (tmp_path / "dashboard.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through Debian's chromedriver; a clear failure when missing
    (checked before the lake is built and the dashboard started)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not found: install the browser with "
                    "`apt-get install chromium chromium-driver` (docs/DASHBOARD.md), or set "
                    "LAKE_BROWSER_TESTS=0 to skip this test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.mark.slow  # ~25 s: a lake, Streamlit and Chromium start; CI runs it in make test-slow
def test_overview_in_a_real_browser_shows_every_table_and_the_error_colour(
        driver: Any, served: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(served)
    WebDriverWait(driver, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "div.lake-tile")) >= 2)
    tiles = {t.get_attribute("data-table"): t
             for t in driver.find_elements(By.CSS_SELECTOR, "div.lake-tile")}
    assert sorted(tiles) == ["events", "logs"]
    events = tiles["events"]
    assert events.get_attribute("data-status") == "error"
    assert events.value_of_css_property("border-left-color") == ERROR_RGB
    checks = events.find_element(By.CSS_SELECTOR, ".lake-checks")
    assert "failing checks: 2 error" in checks.text
    assert checks.value_of_css_property("color") == ERROR_RGB
    assert tiles["logs"].get_attribute("data-status") == "warn"
    time.sleep(1)  # let the fonts settle before the picture
    picture = tmp_path / "dashboard.png"
    assert driver.save_screenshot(str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("LAKE_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(picture, SCREENSHOT)
