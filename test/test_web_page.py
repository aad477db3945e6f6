"""The web page in a real browser: Debian's headless Chromium driven by selenium (no downloads: the system
chromedriver is used, never Selenium Manager). The page loads, speaks a sentence, and ends with a playable audio
element; a screenshot is saved to test-artifacts/web_page.png."""
from __future__ import annotations

from pathlib import Path

import pytest

from web_browser import NEEDS_BROWSER, By, chromium, speak, wait
from http_fixtures import http_core, http_server, serving  # noqa: F401

pytestmark = [pytest.mark.timeout(120), *NEEDS_BROWSER]

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


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
