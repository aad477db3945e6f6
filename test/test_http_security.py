"""The HTTP API as an attacker probes it (issue 11): a rebinding Host, cross-origin writes, JSON without a JSON content
type, decompression bombs, planted symlinks, case-colliding names, slow and many connections, an unauthenticated LAN
bind and keys on the command line. Pure functions and the ASGI middleware first (no server), then a live server.
The browser as the attacker is in test_http_browser_attacks.py."""
from __future__ import annotations

import asyncio
import io
import os
import resource
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest

from http_fixtures import (REFERENCE_VOICE, http_core, http_server, reference_wav, serving,  # noqa: F401
                           voices_folder)
from waiting import wait_until
from ros2_chatterbox.engine import VoiceError
from ros2_chatterbox.http import security
from ros2_chatterbox.http.security import SecurityMiddleware
from ros2_chatterbox.settings import HttpSettings, Settings
from ros2_chatterbox.voices import VoiceLibrary, check_reference

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parent.parent
EVIL = "http://evil.example"


# -- pure functions --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host,allowed", [
    ("localhost:8004", True), ("LOCALHOST:8004", True), ("127.0.0.1:8004", True), ("[::1]:8004", True),
    ("127.0.0.1", True), ("192.168.1.20:8004", True), ("localhost", True),
    ("evil.example:8004", False), ("evil.example", False), ("localhost.evil.example:8004", False),
    ("127.0.0.1.nip.io:8004", False), ("robot.local:8004", False), ("", False), (None, False),
    ("localhost:notaport", False), ("user@localhost:8004", False), ("[::1", False),
])
def test_host_allow_list(host, allowed):
    assert security.host_allowed(host) is allowed


def test_allowed_hosts_setting_adds_lan_names():
    extra = security.parse_allowed_hosts("robot.local, kiosk.lan:8080")
    assert security.host_allowed("robot.local:8004", extra)
    assert security.host_allowed("Robot.Local", extra)
    assert security.host_allowed("kiosk.lan:8080", extra)
    assert not security.host_allowed("kiosk.lan:9999", extra)
    assert not security.host_allowed("evil.example:8004", extra)
    with pytest.raises(security.SecurityError, match="allowed_hosts"):
        security.parse_allowed_hosts("robot.local:99999")


@pytest.mark.parametrize("origin,host,ok", [
    (None, "localhost:8004", True),
    ("http://localhost:8004", "localhost:8004", True),
    ("http://127.0.0.1:8004", "127.0.0.1:8004", True),
    ("http://[::1]:8004", "[::1]:8004", True),
    ("http://localhost:9000", "localhost:8004", False),      # another local web app
    ("http://127.0.0.1:8004", "localhost:8004", False),      # another origin, even if the same server
    ("http://evil.example:8004", "localhost:8004", False),
    ("null", "localhost:8004", False),                       # sandboxed frames, file: pages
    ("file://", "localhost:8004", False),
    ("http://localhost:8004/path", "localhost:8004", False),
])
def test_origin_policy(origin, host, ok):
    assert security.origin_allowed(origin, host) is ok


def test_api_key_sources(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    none = HttpSettings()
    assert security.resolve_api_key(none, {}) == ""
    assert security.resolve_api_key(HttpSettings(api_key="param"), {security.API_KEY_ENV: "env"}) == "param"
    assert security.resolve_api_key(HttpSettings(api_key_file=str(key_file)), {security.API_KEY_ENV: "env"}) == \
        "from-file"
    assert security.resolve_api_key(none, {security.API_KEY_ENV: "env"}) == "env"
    assert security.resolve_api_key(none, {security.API_KEY_FILE_ENV: str(key_file)}) == "from-file"
    with pytest.raises(security.SecurityError, match="cannot read"):
        security.resolve_api_key(HttpSettings(api_key_file=str(tmp_path / "missing")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(security.SecurityError, match="empty"):
        security.resolve_api_key(none, {security.API_KEY_FILE_ENV: str(tmp_path / "empty")})
    # the node's whole Settings, as read from a parameter file, work too
    assert security.resolve_api_key(Settings.from_values({"http.api_key": "whole"}), {}) == "whole"


def test_security_takes_typed_settings_only():
    """A flat dict of parameter values is refused: a misspelt key would silently mean 'no key'."""
    with pytest.raises(TypeError, match="HttpSettings"):
        security.resolve_api_key({"http.api_key": "flat"}, {})
    with pytest.raises(TypeError, match="HttpSettings"):
        SecurityMiddleware(AcceptAll(), {"http.max_concurrent_uploads": 2})


def test_key_on_command_line_is_detected(tmp_path):
    cmdline = tmp_path / "cmdline"
    cmdline.write_bytes(b"python\0-m\0ros2_chatterbox.http\0--api-key\0hunter2\0")
    assert security.key_on_command_line("hunter2", str(cmdline))
    assert not security.key_on_command_line("other", str(cmdline))
    assert not security.key_on_command_line("", str(cmdline))


def test_exposure_policy():
    none = HttpSettings()
    assert security.check_exposure("127.0.0.1", none, "") is None
    assert security.check_exposure("::1", none, "") is None
    assert security.check_exposure("0.0.0.0", none, "a-key") is None
    with pytest.raises(security.SecurityError, match="allow_unauthenticated_lan"):
        security.check_exposure("0.0.0.0", none, "")
    with pytest.raises(security.SecurityError):
        security.check_exposure("192.168.1.20", HttpSettings(allow_unauthenticated_lan=False), "")
    assert "WITHOUT" in security.check_exposure("0.0.0.0", HttpSettings(allow_unauthenticated_lan=True), "")


# -- the middleware on its own (a stand-in app that accepts anything) ------------------------------------------------
class AcceptAll:
    """An ASGI app that accepts every request, as FastAPI before 0.132 accepted JSON sent as text/plain."""

    def __init__(self):
        self.calls = 0
        self.release = None

    async def __call__(self, scope, receive, send):
        self.calls += 1
        if self.release is not None:
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def request(app, method="GET", path="/v1/audio/speech", headers=None):
    """(status, headers) of one request through `app`."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    hdrs = {"host": "localhost:8004", **(headers or {})}
    scope = {"type": "http", "method": method, "path": path, "server": ("127.0.0.1", 8004),
             "headers": [(k.lower().encode(), v.encode()) for k, v in hdrs.items()]}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], {k.decode(): v.decode() for k, v in sent[0]["headers"]}


JSON_POST = {"content-type": "application/json", "content-length": "20"}


@pytest.mark.parametrize("headers,status", [
    ({"host": "evil.example:8004"}, 400),
    ({"origin": EVIL}, 403),
    ({"origin": "null"}, 403),
    ({"origin": "http://localhost:9000"}, 403),
    ({"sec-fetch-site": "cross-site"}, 403),
    ({"sec-fetch-site": "same-site"}, 403),  # another port of localhost is the same site
    ({"content-type": "text/plain", "content-length": "20"}, 415),
    ({"content-type": "application/x-www-form-urlencoded", "content-length": "20"}, 415),
    ({"content-type": "", "transfer-encoding": "chunked"}, 415),
    ({"origin": "http://localhost:8004", "sec-fetch-site": "same-origin"}, 200),
    ({}, 200),
    ({"content-type": "application/json; charset=utf-8", "content-length": "20"}, 200),
])
def test_middleware_refuses_before_the_app(headers, status):
    app = AcceptAll()
    got, response_headers = request(SecurityMiddleware(app), "POST", headers={**JSON_POST, **headers})
    assert got == status
    assert app.calls == (1 if status == 200 else 0)
    assert response_headers["content-security-policy"] == security.CONTENT_SECURITY_POLICY  # refusals too


def test_middleware_reads_stay_open_to_any_origin_and_uploads_need_multipart():
    app = AcceptAll()
    mw = SecurityMiddleware(app)
    # a cross-origin read gets an answer the browser will not show the page (no CORS headers)
    assert request(mw, "GET", "/v1/audio/voices", {"origin": EVIL})[0] == 200
    assert request(mw, "GET", "/", {"host": "evil.example:8004"})[0] == 400
    form = {"content-type": "multipart/form-data; boundary=x", "content-length": "100"}
    assert request(mw, "POST", "/v1/audio/voices", form)[0] == 200
    assert request(mw, "POST", "/v1/audio/voices", {**form, "origin": EVIL})[0] == 403
    assert request(mw, "POST", "/v1/audio/voices", JSON_POST)[0] == 415
    assert request(mw, "DELETE", "/v1/audio/voices/alice", {"origin": EVIL})[0] == 403
    assert request(mw, "DELETE", "/v1/audio/voices/alice")[0] == 200


def test_middleware_bounds_concurrent_uploads():
    app = AcceptAll()
    mw = SecurityMiddleware(app, HttpSettings(max_concurrent_uploads=2))
    form = [(b"host", b"localhost:8004"), (b"content-type", b"multipart/form-data; boundary=x"),
            (b"content-length", b"100")]

    async def scenario():
        app.release = asyncio.Event()
        answers = []

        async def upload():
            sent = []

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                sent.append(message)
            await mw({"type": "http", "method": "POST", "path": "/v1/audio/voices", "headers": form}, receive, send)
            answers.append((sent[0]["status"], dict(sent[0]["headers"])))
        first = [asyncio.ensure_future(upload()) for _ in range(2)]
        while app.calls < 2:  # both uploads are inside the app
            await asyncio.sleep(0)
        await upload()  # a third one while two are in progress
        app.release.set()
        await asyncio.gather(*first)
        await upload()  # and one after they finished
        return answers
    answers = asyncio.run(scenario())
    assert [status for status, _ in answers] == [503, 200, 200, 200]
    assert answers[0][1][b"retry-after"] == b"2"


def test_openapi_documents_the_refusals():
    schema = {"paths": {"/v1/audio/speech": {"post": {"responses": {"200": {}}}},
                        "/v1/models": {"get": {"responses": {}}}}}
    security.document_responses(schema)
    assert {"400", "403", "415"} <= set(schema["paths"]["/v1/audio/speech"]["post"]["responses"])
    assert "403" not in schema["paths"]["/v1/models"]["get"]["responses"]


# -- uploads: decompression bombs, planted symlinks, case ------------------------------------------------------------
def flac(seconds: float, sample_rate: int = 16000, unknown_length: bool = False) -> bytes:
    """Silence as FLAC: hours fit in a few hundred kB. unknown_length zeroes the header's total-samples field."""
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * sample_rate), dtype=np.int16), sample_rate, format="FLAC")
    data = bytearray(buf.getvalue())
    if unknown_length:  # STREAMINFO: 36-bit total samples at bytes 21 (low nibble) .. 25
        data[21] &= 0xF0
        data[22:26] = b"\0\0\0\0"
    return bytes(data)


@pytest.mark.parametrize("unknown_length", [False, True], ids=["header-says-20min", "header-says-nothing"])
def test_decompression_bomb_is_refused_with_bounded_memory(unknown_length):
    """Attack 3: 20 min of silent FLAC (~60 kB) used to be decoded whole (77 MB of float32, twice) before the
    duration check. Now the header is read first, and decoding stops after 60 s when the header does not say."""
    bomb = flac(20 * 60, unknown_length=unknown_length)
    assert len(bomb) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(VoiceError, match="(long|longer)"):
            check_reference(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"decoding the bomb allocated {peak / 2**20:.0f} MiB"


def test_reference_checks_still_hold():
    assert check_reference(reference_wav(6.0)) == pytest.approx(6.0, abs=0.01)
    for data, message in ((flac(8.0), "silent"), (reference_wav(2.0), "5 s"), (b"RIFF nonsense", "readable"),
                          (flac(61.0), "long")):
        with pytest.raises(VoiceError, match=message):
            check_reference(data)


def test_upload_temp_file_never_follows_a_planted_symlink(tmp_path):
    """Attack 6: the temp file used to be `.NAME.upload.wav` in the voices folder, written through a symlink planted
    there (overwriting its target as the server's user). Now it is created exclusively under a random name."""
    folder = tmp_path / "voices"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (folder / ".bob.upload.wav").symlink_to(victim)   # the old predictable name
    (folder / "bob.wav").symlink_to(victim)           # and the final name
    lib = VoiceLibrary(str(folder))
    path = lib.add("bob", reference_wav(6.0))
    assert victim.read_text() == "precious"
    assert not path.is_symlink() and check_reference(path.read_bytes()) == pytest.approx(6.0, abs=0.01)
    assert sorted(p.name for p in folder.iterdir()) == [".bob.upload.wav", "bob.wav"]  # no temp file left


def test_temp_file_creation_is_exclusive_and_no_follow(tmp_path, monkeypatch):
    lib = VoiceLibrary(str(tmp_path))
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda path, flags, *a: opened.append((str(path), flags)) or
                        real_open(path, flags, *a))
    lib.add("carol", reference_wav(6.0))
    lib.add("dave", reference_wav(6.0))
    (first, flags), (second, _) = opened
    assert flags & os.O_EXCL and flags & os.O_CREAT and flags & os.O_NOFOLLOW
    assert first != second and "carol" not in first  # random, unpredictable names


def test_voice_names_are_unique_ignoring_case(tmp_path):
    lib = VoiceLibrary(str(tmp_path))
    lib.add("CaseVoice", reference_wav(6.0))
    with pytest.raises(VoiceError, match="CaseVoice' already exists"):
        lib.add("casevoice", reference_wav(7.0))
    assert lib.find("CASEVOICE") == "CaseVoice"
    lib.add("casevoice", reference_wav(7.0), overwrite=True)
    assert lib.names() == ["casevoice"]
    assert check_reference(lib.path("casevoice").read_bytes()) == pytest.approx(7.0, abs=0.01)


# -- a live server ----------------------------------------------------------------------------------------------------
def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.headers["content-security-policy"] == security.CONTENT_SECURITY_POLICY


def voice_files(core):
    return sorted(p.name for p in voices_folder(core).iterdir())


def test_rebinding_host_is_refused_before_any_handler(http_server, http_core):
    """Attack 1: any Host was served, so a page at evil.example rebound to 127.0.0.1 read and deleted voices."""
    url = http_server.url
    port = http_server.port
    evil = {"Host": f"evil.example:{port}"}
    for method, path in (("GET", "/"), ("GET", "/v1/audio/voices"), ("GET", "/api/model-info"),
                         ("DELETE", f"/v1/audio/voices/{REFERENCE_VOICE}")):
        assert_refused(httpx.request(method, url + path, headers=evil, timeout=10), 400, "host_not_allowed")
    r = httpx.post(url + "/v1/audio/speech", headers=evil, timeout=10,
                   json={"model": "m", "input": "Hello.", "voice": "alloy", "response_format": "wav"})
    assert_refused(r, 400, "host_not_allowed")
    assert f"{REFERENCE_VOICE}.wav" in voice_files(http_core)
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        assert httpx.get(url + "/v1/audio/voices", headers={"Host": host}, timeout=10).status_code == 200


def test_allowed_hosts_serves_a_lan_name(http_core):
    with serving(http_core, http__allowed_hosts="robot.local") as server:
        r = httpx.get(server.url + "/v1/models", headers={"Host": f"robot.local:{server.port}"}, timeout=10)
        assert r.status_code == 200
        assert httpx.get(server.url + "/v1/models", headers={"Host": "kiosk.local"}, timeout=10).status_code == 400
    with pytest.raises(RuntimeError, match="allowed_hosts"):
        with serving(http_core, http__allowed_hosts="robot.local:http"):
            pass


@pytest.mark.parametrize("origin", [EVIL, "null", "http://localhost:1"])
def test_cross_origin_writes_are_refused(http_server, http_core, origin):
    """Attack 2: a multipart upload from any other origin (no preflight needed) planted and overwrote voices."""
    before = (voices_folder(http_core) / f"{REFERENCE_VOICE}.wav").read_bytes()
    with httpx.Client(base_url=http_server.url, timeout=30, headers={"Origin": origin}) as c:
        assert_refused(c.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(6.0), "audio/wav")},
                              data={"name": "planted"}), 403, "cross_origin_refused")
        assert_refused(c.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(8.0), "audio/wav")},
                              data={"name": REFERENCE_VOICE, "overwrite": "true"}), 403, "cross_origin_refused")
        assert_refused(c.delete(f"/v1/audio/voices/{REFERENCE_VOICE}"), 403, "cross_origin_refused")
        assert_refused(c.post("/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alloy"}), 403,
                       "cross_origin_refused")
        assert_refused(c.post("/tts", json={"text": "Hi."}), 403, "cross_origin_refused")
    assert voice_files(http_core) == [f"{REFERENCE_VOICE}.wav"]
    assert (voices_folder(http_core) / f"{REFERENCE_VOICE}.wav").read_bytes() == before


def test_same_origin_and_originless_writes_pass(http_server, http_core):
    with httpx.Client(base_url=http_server.url, timeout=30) as c:
        own = {"Origin": http_server.url, "Sec-Fetch-Site": "same-origin"}
        r = c.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(6.0), "audio/wav")},
                   data={"name": "mine"}, headers=own)
        assert r.status_code == 201, r.text
        assert c.delete("/v1/audio/voices/mine", headers=own).status_code == 200
        assert c.post("/tts", json={"text": "Hi.", "format": "wav"}, headers=own).status_code == 200
        assert c.post("/tts", json={"text": "Hi.", "format": "wav"}).status_code == 200  # curl, SDKs


@pytest.mark.parametrize("path,body", [("/v1/audio/speech", '{"model": "m", "input": "Hi.", "voice": "alloy"}'),
                                       ("/tts", '{"text": "Hi."}')])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_endpoints_need_a_json_content_type(http_server, path, body, content_type):
    """Attack 4: FastAPI before 0.132 parsed JSON sent as text/plain, which a no-cors fetch may send."""
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(http_server.url + path, content=body.encode(), headers=headers, timeout=30)
    assert_refused(r, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/docs", "/v1/models", "/health", "/v1/nothing"])
def test_hardening_headers_on_every_response(http_server, path):
    """Attack 7: no CSP, nosniff or framing protection on the page (clickjacking of Speak/Delete)."""
    r = httpx.get(http_server.url + path, timeout=10)
    assert r.headers["content-security-policy"] == security.CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


def test_docs_are_packaged_with_no_third_party_script(http_server):
    """Attack 7: /docs loaded Swagger UI from a CDN (no integrity hash) on the origin that keeps the API key."""
    import re
    page = httpx.get(http_server.url + "/docs", timeout=10)
    assert page.status_code == 200
    scripts = re.findall(r"<script[^>]*src=\"([^\"]+)\"", page.text)
    links = re.findall(r"<link[^>]*href=\"([^\"]+)\"", page.text)
    assert scripts == ["/static/docs.js"] and all(h.startswith("/") for h in links)
    assert "<script>" not in page.text and "style=" not in page.text  # nothing inline: the CSP forbids it
    assert httpx.get(http_server.url + "/static/docs.js", timeout=10).status_code == 200


def test_decompression_bomb_upload_costs_no_memory(http_server, http_core):
    """Attack 3 through the API: 2 h of silent FLAC (~1 MB) used to cost ~900 MiB of server memory."""
    bomb = flac(2 * 3600)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux; the server runs in this process
    r = httpx.post(http_server.url + "/v1/audio/voices", files={"file": ("bomb.flac", bomb, "audio/flac")},
                   data={"name": "bomb"}, timeout=60)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert r.status_code == 400 and "7200 s" in r.json()["error"]["message"]
    assert grown < 200 * 1024, f"peak memory grew by {grown / 1024:.0f} MiB"
    assert voice_files(http_core) == [f"{REFERENCE_VOICE}.wav"]


def test_case_colliding_upload_is_a_conflict(http_server, http_core):
    with httpx.Client(base_url=http_server.url, timeout=30) as c:
        assert c.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(6.0), "audio/wav")},
                      data={"name": "CaseVoice"}).status_code == 201
        r = c.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(6.0), "audio/wav")},
                   data={"name": "casevoice"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "voice_exists"
        assert c.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(6.0), "audio/wav")},
                      data={"name": "casevoice", "overwrite": "true"}).status_code == 201
        assert [v["id"] for v in c.get("/v1/audio/voices").json()["data"]] == [REFERENCE_VOICE, "casevoice"]
        assert c.delete("/v1/audio/voices/casevoice").status_code == 200


def test_symlink_planted_in_the_voices_folder_is_not_followed(http_server, http_core, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = voices_folder(http_core) / ".eve.upload.wav"
    planted.symlink_to(victim)
    try:
        r = httpx.post(http_server.url + "/v1/audio/voices", data={"name": "eve"}, timeout=30,
                       files={"file": ("x.wav", reference_wav(6.0), "audio/wav")})
        assert r.status_code == 201, r.text
        assert victim.read_text() == "precious"
        assert httpx.delete(http_server.url + "/v1/audio/voices/eve", timeout=10).status_code == 200
    finally:
        planted.unlink()


# -- slow and many clients ---------------------------------------------------------------------------------------------
def closed_by_server(sock: socket.socket, deadline_s: float = 20.0) -> bool:
    """Whether the server closes the connection (reading returns EOF, possibly after an answer) in time."""
    sock.settimeout(deadline_s)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_half_sent_headers_are_dropped(http_core):
    """Attack 8: connections that sent half a request header stayed open indefinitely (100 after 65 s)."""
    with serving(http_core, http__header_timeout_s=0.5) as server:
        socks = []
        try:
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                socks.append(s)
            silent = socket.create_connection(("127.0.0.1", server.port), timeout=5)  # sends nothing at all
            socks.append(silent)
            assert all(closed_by_server(s) for s in socks)
        finally:
            for s in socks:
                s.close()
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200


def test_open_connections_are_capped(http_core):
    with serving(http_core, http__max_connections=4, http__header_timeout_s=60.0) as server:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
        try:
            extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            extra.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while True:
                part = extra.recv(4096)
                if not part:
                    break
                answer += part
            extra.close()
            assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
        finally:
            for s in idle:
                s.close()

        def health_ok():
            try:
                return httpx.get(server.url + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False
        assert wait_until(health_ok)


# -- keys: environment and files, never the command line ------------------------------------------------------------
def test_api_key_from_the_environment(http_core, monkeypatch, tmp_path):
    monkeypatch.setenv(security.API_KEY_ENV, "env-key")
    with serving(http_core) as server:
        assert httpx.get(server.url + "/v1/models", timeout=10).status_code == 401
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer env-key"},
                         timeout=10).status_code == 200
    monkeypatch.delenv(security.API_KEY_ENV)
    key_file = tmp_path / "key"
    key_file.write_text("file-key\n")
    with serving(http_core, http__api_key_file=str(key_file)) as server:
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer file-key"},
                         timeout=10).status_code == 200
    with pytest.raises(RuntimeError, match="cannot read the API key file"):
        with serving(http_core, http__api_key_file=str(tmp_path / "missing")):
            pass


def program(*args: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ros2_chatterbox.http", *args], cwd=str(ROOT),
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_program_takes_the_key_from_a_file_not_the_command_line(tmp_path):
    """The key given with --api-key was visible to every user in the process list."""
    refused = program("--api-key", "hunter2", "--port", "1")
    out, _ = refused.communicate(timeout=60)
    assert refused.returncode == 2 and "process list" in out and "Traceback" not in out

    key_file = tmp_path / "key"
    key_file.write_text("s3cret-from-file\n")
    voices = tmp_path / "voices"
    voices.mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(f"tts_node:\n  ros__parameters:\n    engine: piper\n    voices_dir: '{voices}'\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = program("--params", str(params), "--port", str(port), "--api-key-file", str(key_file))
    try:
        def up():
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None
        assert wait_until(up, 60) and proc.poll() is None
        assert b"s3cret-from-file" not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        models = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(models, timeout=5).status_code == 401
        assert httpx.get(models, headers={"Authorization": "Bearer s3cret-from-file"}, timeout=5).status_code == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_program_refuses_an_unauthenticated_lan_bind(tmp_path):
    proc = program("--host", "0.0.0.0", "--port", "1", env={security.API_KEY_ENV: ""})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "allow_unauthenticated_lan" in out and "Traceback" not in out


def test_headers_even_on_unexpected_errors():
    """install() puts the middleware outside the app's error handler: a 500 carries the headers too."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    app = FastAPI()

    @app.get("/boom")
    def boom():
        raise RuntimeError("bug")
    security.install(app, HttpSettings())
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost:8004") as c:
        r = c.get("/boom")
        assert r.status_code == 500
        assert r.headers["content-security-policy"] == security.CONTENT_SECURITY_POLICY
        assert c.get("/boom", headers={"Host": "evil.example"}).status_code == 400
