"""The browser as the attacker (issue 11), in Debian's headless Chromium: a DNS-rebinding page, cross-origin and
`Origin: null` uploads from a page on another loopback port, and a page that frames the robot's page for
clickjacking. Also: the robot's own page and /docs run under the Content-Security-Policy without a violation."""
from __future__ import annotations

import http.server
import threading

import pytest

from http_fixtures import REFERENCE_VOICE, http_core, reference_wav, serving, voices_folder  # noqa: F401
from web_browser import NEEDS_BROWSER, By, chromium, speak, wait

pytestmark = [pytest.mark.timeout(120), *NEEDS_BROWSER]

UPLOAD_JS = """
async function plant(target, name, overwrite) {
  const wav = await (await fetch("/voice.wav")).blob();
  const form = new FormData();
  form.append("file", wav, "x.wav");
  form.append("name", name);
  if (overwrite) form.append("overwrite", "true");
  try { await fetch(target + "/v1/audio/voices", {method: "POST", mode: "no-cors", body: form}); }
  catch (e) { /* refused or blocked: the page cannot tell, the robot's voice folder can */ }
}
"""


def attacker_pages(victim: str):
    """The pages of a site on another origin, as the attacker serves them."""
    plant_page = ("<!doctype html><script>" + UPLOAD_JS + "Promise.all([plant('%s', 'planted', false), "
                  "plant('%s', '%s', true)]).then(() => { document.title = 'sent'; });</script>"
                  % (victim, victim, REFERENCE_VOICE))
    null_frame = ("<!doctype html><script>" + UPLOAD_JS + "plant('%s', 'planted_null', false).then(() => "
                  "parent.postMessage('sent', '*'));</script>" % victim)
    return {
        "/voice.wav": ("audio/wav", reference_wav(6.0)),
        "/upload.html": ("text/html", plant_page.encode()),
        # a sandboxed frame has an opaque origin: its requests say `Origin: null`
        "/null.html": ("text/html", b"<!doctype html><script>addEventListener('message', (e) => { document.title = "
                                    b"e.data; });</script><iframe sandbox='allow-scripts' src='/null-frame.html'>"
                                    b"</iframe>"),
        "/null-frame.html": ("text/html", null_frame.encode()),
        "/frame.html": ("text/html", ("<!doctype html><iframe id='victim' width='900' height='700' src='%s/' "
                                      "onload=\"document.title = 'framed'\"></iframe>" % victim).encode()),
    }


class AttackerSite:
    """A web site on another loopback port (another origin), served from a thread."""

    def __init__(self, pages):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                page = pages.get(self.path)
                if page is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", page[0])
                self.send_header("Content-Length", str(len(page[1])))
                self.send_header("Access-Control-Allow-Origin", "*")  # its own sandboxed frame may read it
                self.end_headers()
                self.wfile.write(page[1])

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def victim(http_core):
    with serving(http_core) as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    # evil.example resolves to 127.0.0.1, as the attacker's DNS answers after rebinding
    with chromium("--host-resolver-rules=MAP evil.example 127.0.0.1") as driver:
        yield driver


def voice_files(core):
    return sorted(p.name for p in voices_folder(core).iterdir())


def async_fetch(driver, url: str, method: str) -> str:
    """Run fetch() in the current page's origin; 'status body' or 'blocked <error>'."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: arguments[1]}).then(async (r) => done(r.status + ' ' + await r.text()))"
        ".catch((e) => done('blocked ' + e));", url, method)


def test_rebinding_page_cannot_read_or_delete_voices(browser, victim, http_core):
    """Attack 1: a page at evil.example:PORT, rebound to 127.0.0.1, read the voice list and deleted a voice."""
    evil = f"http://evil.example:{victim.port}"
    browser.get(evil + "/")
    assert browser.find_elements(By.ID, "speak") == []  # the robot's page is not served under the evil name
    # the attacker's script runs in the evil.example origin: same-origin for the browser, so nothing blocks it
    listing = async_fetch(browser, evil + "/v1/audio/voices", "GET")
    assert listing.startswith("400 ") and REFERENCE_VOICE not in listing
    assert async_fetch(browser, evil + "/api/model-info", "GET").startswith("400 ")
    assert async_fetch(browser, f"{evil}/v1/audio/voices/{REFERENCE_VOICE}", "DELETE").startswith("400 ")
    assert f"{REFERENCE_VOICE}.wav" in voice_files(http_core)


@pytest.mark.parametrize("page,title", [("/upload.html", "sent"), ("/null.html", "sent")],
                         ids=["foreign-origin", "origin-null"])
def test_cross_origin_page_cannot_plant_or_overwrite_voices(browser, victim, http_core, page, title):
    """Attack 2: a no-cors multipart upload (no preflight) from any other origin planted and overwrote voices."""
    before = (voices_folder(http_core) / f"{REFERENCE_VOICE}.wav").read_bytes()
    with AttackerSite(attacker_pages(victim.url)) as site:
        browser.get(site.url + page)
        wait(browser, lambda d: d.title == title)
    assert voice_files(http_core) == [f"{REFERENCE_VOICE}.wav"]
    assert (voices_folder(http_core) / f"{REFERENCE_VOICE}.wav").read_bytes() == before


def test_robot_page_cannot_be_framed(browser, victim):
    """Attack 7: the page could be framed by any site (clickjacking of Speak and Delete)."""
    with AttackerSite(attacker_pages(victim.url)) as site:
        browser.get(site.url + "/frame.html")
        wait(browser, lambda d: d.title == "framed")
        browser.switch_to.frame(browser.find_element(By.ID, "victim"))
        try:
            assert browser.find_elements(By.ID, "speak") == []
        finally:
            browser.switch_to.default_content()
    refused = [m["message"] for m in browser.get_log("browser")]
    assert any("frame-ancestors" in m or "X-Frame-Options" in m for m in refused), refused


def test_own_page_and_docs_work_under_the_csp(browser, victim):
    browser.get_log("browser")  # drop earlier messages
    browser.get(victim.url + "/")
    wait(browser, lambda d: d.find_element(By.ID, "ready").text == "ready")
    speak(browser, "Still speaking under a strict policy.")
    browser.get(victim.url + "/docs")
    wait(browser, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done")
    sections = [e.text.split("\n")[0] for e in browser.find_elements(By.CSS_SELECTOR, "#operations section h2")]
    assert "POST /v1/audio/speech" in sections and "DELETE /v1/audio/voices/{name}" in sections
    violations = [m["message"] for m in browser.get_log("browser") if "Content Security Policy" in m["message"]]
    assert violations == []
