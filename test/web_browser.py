"""Debian's headless Chromium driven by selenium, for the web page's tests and the browser-as-attacker tests (no
downloads: the system chromedriver is used, never Selenium Manager). Tests that use it carry NEEDS_BROWSER: without
chromium or selenium they skip with the command that installs it."""
from __future__ import annotations

import contextlib
import shutil
import tempfile

import pytest

from optional import optional_import, requires

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = "" if (CHROMIUM and CHROMEDRIVER) else (
    "needs Debian's chromium and chromium-driver (.ci/run installs them): run "
    "`apt-get install chromium chromium-driver`")
NEEDS_BROWSER = [pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER), requires("selenium.webdriver")]
webdriver = optional_import("selenium.webdriver")
if webdriver is not None:
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
else:  # the tests that would use them skip (NEEDS_BROWSER)
    Service = By = WebDriverWait = None

PLAYABLE_JS = ("const a = document.getElementById('player');"
               "return a.readyState >= 1 && isFinite(a.duration) && a.duration > 0 && !a.error;")


@contextlib.contextmanager
def chromium(*extra_flags: str):
    """Headless Chromium through the system chromedriver; its console messages are kept (get_log("browser"))."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1100,950", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={profile}", *extra_flags):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, timeout=30):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def speak(driver, text: str) -> None:
    """Type `text` on the page, press Speak, and wait until it is done and the audio element can play it."""
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "speak").click()
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    message = driver.find_element(By.ID, "message").text
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", message
    wait(driver, lambda d: d.execute_script(PLAYABLE_JS))
