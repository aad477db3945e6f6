"""The web page in a real browser: Debian's headless Chromium driven by selenium (no downloads: the system
chromedriver is used, never Selenium Manager). The page loads, speaks a sentence, and ends with a playable audio
element; a screenshot is saved to test-artifacts/web_page.png."""
from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

import pytest

from http_fixtures import http_core, http_server, serving  # noqa: F401
from optional import optional_import, requires

pytestmark = pytest.mark.timeout(120)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
NO_BROWSER = "" if (CHROMIUM and CHROMEDRIVER) else (
    "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver; "
    ".ci/run installs them)")
pytestmark = [pytestmark, pytest.mark.skipif(bool(NO_BROWSER), reason=NO_BROWSER),
              requires("selenium.webdriver", hint="make setup-test")]
webdriver = optional_import("selenium.webdriver")
if webdriver is not None:
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

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


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def wait(driver, condition, timeout=30):
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def speak(driver, text: str) -> None:
    box = driver.find_element(By.ID, "text")
    box.clear()
    box.send_keys(text)
    driver.find_element(By.ID, "speak").click()
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") in ("done", "error"))
    message = driver.find_element(By.ID, "message").text
    assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", message
    wait(driver, lambda d: d.execute_script(PLAYABLE_JS))


def test_page_speaks_and_plays(browser, http_server):
    browser.get(http_server.url + "/")
    wait(browser, lambda d: d.find_element(By.ID, "ready").text == "ready")
    assert browser.find_element(By.ID, "engine").text.startswith("piper")
    assert browser.find_element(By.ID, "device").text.startswith("cpu")
    assert "/" in browser.find_element(By.ID, "queue").text
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#voice option")) >= 2)  # default + alice
    speak(browser, "Hello from the robot's web page.")
    duration = browser.execute_script("return document.getElementById('player').duration")
    assert 1.0 < duration < 10.0
    link = browser.find_element(By.ID, "download")
    assert link.is_displayed() and link.get_attribute("href").startswith("blob:")
    assert link.get_attribute("download") == "speech.mp3"
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "web_page.png"))
    # every format the page offers plays in the browser
    for fmt in ("wav", "opus", "aac", "flac"):
        browser.find_element(By.CSS_SELECTOR, f"#format option[value='{fmt}']").click()
        speak(browser, f"Now in {fmt}.")
        assert browser.find_element(By.ID, "download").get_attribute("download") == f"speech.{fmt}"


def test_page_with_api_key_asks_for_it(browser, http_core):
    with serving(http_core, http__api_key="page-key") as server:
        browser.get(server.url + "/")
        browser.execute_script("localStorage.clear()")
        browser.get(server.url + "/")
        wait(browser, lambda d: d.find_element(By.ID, "key-panel").is_displayed())
        browser.find_element(By.ID, "api-key").send_keys("page-key")
        browser.find_element(By.ID, "save-key").click()
        wait(browser, lambda d: d.find_element(By.ID, "engine").text.startswith("piper"))
        speak(browser, "The key works.")
        browser.execute_script("localStorage.clear()")
