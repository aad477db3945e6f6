"""The HTTP API against a live server (piper engine, in-process uvicorn thread on a free loopback port)."""
from __future__ import annotations

import collections
import socket
import threading
from pathlib import Path

import httpx
import pytest

from http_fixtures import (REFERENCE_VOICE, http_core, http_server, http_settings, make_core, reference_wav,  # noqa: F401
                           serving, voices_folder)
from log_capture import captured_logs
from waiting import wait_until
from ros2_chatterbox import encoding
from ros2_chatterbox.http.server import HttpServer
from ros2_chatterbox.speech_queue import JobListener

pytestmark = pytest.mark.timeout(60)

LONG_TEXT = " ".join(f"This is sentence number {i} of a long text that keeps the engine busy." for i in range(25))


@pytest.fixture()
def client(http_server):
    with httpx.Client(base_url=http_server.url, timeout=30) as c:
        yield c


def assert_error(response: httpx.Response, status: int, param=None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def counters(core):
    return collections.Counter(core.status().counters)


# -- plain endpoints -------------------------------------------------------------------------------------------------
def test_health_and_readiness(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["ready"] is True and body["engine"] == "piper"
    assert client.get("/health/ready").status_code == 200


def test_models_and_voices(client):
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and {m["id"] for m in models["data"]} >= {"tts-1", "chatterbox-turbo"}
    assert all(m["object"] == "model" and "created" in m and "owned_by" in m for m in models["data"])
    voices = client.get("/v1/audio/voices").json()
    assert [v["id"] for v in voices["data"]] == [REFERENCE_VOICE]
    assert "alloy" in voices["openai_aliases"]
    assert client.get("/get_predefined_voices").json() == [{"display_name": REFERENCE_VOICE,
                                                            "filename": f"{REFERENCE_VOICE}.wav"}]


def test_languages(client):
    """GET /v1/audio/languages: what the loaded model speaks; /tts takes `language` as a generation setting."""
    body = client.get("/v1/audio/languages").json()
    assert body == {"object": "list", "data": [{"id": "en", "name": "English", "object": "language"}],
                    "default_language": "en", "model": "piper"}
    assert client.post("/tts", json={"text": "Hi.", "language": "en-US"}).status_code == 200
    err = assert_error(client.post("/tts", json={"text": "Hallo.", "language": "de"}), 400, "language")
    assert err["message"] == "language 'de' is not supported by model 'piper'; supported: en"
    assert client.get("/api/model-info").json()["languages"] == ["en"]


def test_model_info(client):
    info = client.get("/api/model-info").json()
    assert info["engine"] == "piper" and info["device"] == "cpu" and info["sample_rate"] == 22050
    assert "queue_depth" in info and "queue_max" in info and info["formats"] == list(encoding.FORMATS)


def test_page_docs_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="speak"' in page.text
    assert "http" not in page.text.split("<footer")[0].replace("http.api_key", "")  # no CDN links
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/style.css").status_code == 200
    assert_error(client.get("/static/../http/app.py"), 404)
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/v1/audio/speech" in schema["paths"]
    assert "422" not in schema["paths"]["/v1/audio/speech"]["post"]["responses"]


# -- speech --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("voice", ["alloy", "", REFERENCE_VOICE, f"{REFERENCE_VOICE}.wav", {"id": REFERENCE_VOICE},
                                   "default"])
def test_speech_voice_forms(client, voice):
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi there.", "voice": voice,
                                              "response_format": "wav"})
    assert r.status_code == 200, r.text
    y, rate = encoding.decode(r.content)
    assert rate == 22050 and len(y) / rate > 0.3


def test_speech_pcm_and_headers(client):
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hello there.", "voice": "alloy",
                                              "response_format": "pcm"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "audio/pcm" and r.headers["x-sample-rate"] == "22050"
    assert r.headers.get("transfer-encoding") == "chunked"
    assert len(r.content) % 2 == 0 and len(r.content) / 2 / 22050 > 0.4


def test_speed_changes_duration(client):
    def duration(speed):
        r = client.post("/v1/audio/speech", json={"model": "m", "input": "One two three four five six.",
                                                  "voice": "alloy", "response_format": "pcm", "speed": speed})
        assert r.status_code == 200, r.text
        return len(r.content) / 2 / 22050
    normal, fast = duration(1.0), duration(2.0)
    assert 0.4 < fast / normal < 0.6


def test_unknown_fields_are_ignored(client):
    r = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Hi.", "voice": "alloy",
                                              "response_format": "wav", "instructions": "cheerful",
                                              "something_new": {"a": 1}})
    assert r.status_code == 200


def test_tts_custom_endpoint(client):
    r = client.post("/tts", json={"text": "Hello from the custom endpoint.", "format": "flac", "temperature": 0.5,
                                  "top_p": 0.9, "top_k": 50, "repetition_penalty": 1.3, "seed": 7,
                                  "watermark": False, "speed": 1.25})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/flac" and int(r.headers["content-length"]) == len(r.content)
    assert "attachment" in r.headers["content-disposition"]
    y, rate = encoding.decode(r.content)
    assert rate == 22050
    assert abs(len(y) / rate - float(r.headers["x-audio-duration"])) < 0.05
    streamed = client.post("/tts", json={"text": "Streamed.", "format": "mp3", "stream": True})
    assert streamed.status_code == 200 and streamed.headers.get("transfer-encoding") == "chunked"
    assert_error(client.post("/tts", json={"text": "x", "temperature": 9}), 400, "temperature")
    assert_error(client.post("/tts", json={"text": "x", "top_k": 0}), 400, "top_k")
    assert_error(client.post("/tts", json={"text": "x", "bogus": 1}), 400, "bogus")


# -- errors --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,param", [
    ({"model": "tts-1", "input": "", "voice": "alloy"}, "input"),
    ({"model": "tts-1", "input": "   ", "voice": "alloy"}, "input"),
    ({"model": "tts-1", "input": "!!! ???", "voice": "alloy"}, "input"),
    ({"model": "tts-1", "input": "a" * 4097, "voice": "alloy"}, "input"),
    ({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "ogg"}, "response_format"),
    ({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 4.01}, "speed"),
    ({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": 0.2}, "speed"),
    ({"model": "tts-1", "input": "hi", "voice": "alloy", "speed": "fast"}, "speed"),
    ({"model": "tts-1", "input": "hi", "voice": "alloy", "stream_format": "ws"}, "stream_format"),
    ({"model": "tts-1", "voice": "alloy"}, "input"),
    ({"model": "tts-1", "input": 42, "voice": "alloy"}, "input"),
    ({"model": "tts-1", "input": "hi", "voice": "nobody"}, "voice"),
    ({"model": "tts-1", "input": "hi", "voice": 12}, "voice"),
])
def test_speech_rejects_bad_requests(client, body, param):
    err = assert_error(client.post("/v1/audio/speech", json=body), 400, param)
    assert err["type"] == "invalid_request_error"


@pytest.mark.parametrize("voice", ["../../etc/passwd", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd", "..", ".",
                                   "alice/../../x", "C:\\Windows\\win.ini", "alice\x00.wav", {"id": "../alice"},
                                   "~root", "a" * 300])
def test_voice_path_tricks_are_refused(client, voice):
    assert_error(client.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": voice}), 400,
                 "voice")


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"[]", b"null", b'{"input": "hi"', "\"text\"".encode()])
def test_bad_json(client, raw):
    err = assert_error(client.post("/v1/audio/speech", content=raw, headers={"content-type": "application/json"}),
                       400)
    assert err["type"] == "invalid_request_error"


def test_not_found_and_method_errors(client):
    assert_error(client.get("/v1/nothing"), 404)
    assert_error(client.get("/v1/audio/speech"), 405)


def test_body_too_large(client):
    err = assert_error(client.post("/v1/audio/speech", content=b"{" + b" " * (2 << 20) + b"}",
                                   headers={"content-type": "application/json"}), 413)
    assert err["code"] == "request_too_large"

    def chunked():  # no Content-Length: the limit is enforced while the body arrives
        yield b'{"input": "'
        for _ in range(200):
            yield b"a" * 8192
        yield b'"}'
    assert_error(client.post("/v1/audio/speech", content=chunked(), headers={"content-type": "application/json"}),
                 413)


# -- voices ----------------------------------------------------------------------------------------------------------
def test_voice_upload_list_delete(client, http_core):
    wav = reference_wav(6.0)
    r = client.post("/v1/audio/voices", files={"file": ("My Voice (2).wav", wav, "audio/wav")})
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "My_Voice_2" and r.json()["duration"] == pytest.approx(6.0, abs=0.01)
    r = client.post("/v1/audio/voices", files={"file": ("x.wav", wav, "audio/wav")}, data={"name": "bob"})
    assert r.status_code == 201
    assert_error(client.post("/v1/audio/voices", files={"file": ("x.wav", wav, "audio/wav")},
                             data={"name": "bob"}), 409, "name")
    assert client.post("/v1/audio/voices", files={"file": ("x.wav", wav, "audio/wav")},
                       data={"name": "bob", "overwrite": "true"}).status_code == 201
    names = [v["id"] for v in client.get("/v1/audio/voices").json()["data"]]
    assert {"My_Voice_2", "bob", REFERENCE_VOICE} <= set(names)
    # the uploaded voice is usable by name
    assert client.post("/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "bob.wav",
                                                 "response_format": "wav"}).status_code == 200
    assert client.delete("/v1/audio/voices/bob").json() == {"id": "bob", "object": "voice.deleted", "deleted": True}
    assert client.delete("/v1/audio/voices/My_Voice_2.wav").status_code == 200
    assert_error(client.delete("/v1/audio/voices/bob"), 404)
    assert sorted(p.name for p in voices_folder(http_core).iterdir()) == [f"{REFERENCE_VOICE}.wav"]


def test_voice_upload_with_a_language(client, http_core):
    """The form field `language` is the voice's: listed with it, spoken when a request names none (refused here, as
    Piper speaks en only, naming the codes), replaced by an overwrite, deleted with the voice."""
    wav = reference_wav(6.0)
    r = client.post("/v1/audio/voices", files={"file": ("x.wav", wav, "audio/wav")},
                    data={"name": "amelie", "language": "fr-FR"})
    assert r.status_code == 201 and r.json()["language"] == "fr", r.text
    listed = {v["id"]: v["language"] for v in client.get("/v1/audio/voices").json()["data"]}
    assert listed == {"amelie": "fr", REFERENCE_VOICE: ""}, listed
    err = assert_error(client.post("/v1/audio/speech", json={"model": "m", "input": "Bonjour.", "voice": "amelie"}),
                       400, "language")
    assert "language 'fr' is not supported by model 'piper'; supported: en" in err["message"], err
    assert client.post("/tts", json={"text": "Hi.", "voice": "amelie", "language": "en"}).status_code == 200
    err = assert_error(client.post("/v1/audio/voices", files={"file": ("x.wav", wav, "audio/wav")},
                                   data={"name": "zed", "language": "klingon"}), 400, "language")
    assert "supported: ar, da" in err["message"], err
    r = client.post("/v1/audio/voices", files={"file": ("x.wav", wav, "audio/wav")},
                    data={"name": "amelie", "overwrite": "true"})
    assert r.status_code == 201 and r.json()["language"] == "", r.text
    assert client.post("/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "amelie",
                                                 "response_format": "wav"}).status_code == 200
    assert client.delete("/v1/audio/voices/amelie").status_code == 200
    assert sorted(p.name for p in voices_folder(http_core).iterdir()) == [f"{REFERENCE_VOICE}.wav"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "a b", "x/y", ".hidden"])
def test_voice_upload_rejects_bad_names(client, http_core, name):
    r = client.post("/v1/audio/voices", files={"file": ("x.wav", reference_wav(), "audio/wav")},
                    data={"name": name})
    assert_error(r, 400, "name")
    assert sorted(p.name for p in voices_folder(http_core).iterdir()) == [f"{REFERENCE_VOICE}.wav"]
    assert not any(p.name == "passwd" for p in voices_folder(http_core).parent.rglob("passwd"))


def test_voice_upload_filename_tricks_are_sanitized(client, http_core):
    r = client.post("/v1/audio/voices", files={"file": ("../../evil.wav", reference_wav(), "audio/wav")})
    assert r.status_code == 201 and r.json()["id"] == "evil"
    assert (voices_folder(http_core) / "evil.wav").is_file()
    assert client.delete("/v1/audio/voices/evil").status_code == 200


@pytest.mark.parametrize("path", ["/v1/audio/voices/..%2F..%2Fetc%2Fpasswd", "/v1/audio/voices/%2Fetc%2Fpasswd",
                                  "/v1/audio/voices/..", "/v1/audio/voices/a%00b"])
def test_voice_delete_path_tricks(client, http_core, path):
    r = client.delete(path)
    assert 400 <= r.status_code < 500
    assert_error(r, r.status_code)
    assert (voices_folder(http_core) / f"{REFERENCE_VOICE}.wav").is_file()


@pytest.mark.parametrize("payload,code", [
    (b"not audio at all", "invalid_audio"),
    (None, "invalid_audio"),  # too short: 2 s
    (b"\x00" * 1000, "invalid_audio"),
])
def test_voice_upload_validates_audio(client, payload, code):
    data = payload if payload is not None else reference_wav(2.0)
    err = assert_error(client.post("/v1/audio/voices", files={"file": ("v.wav", data, "audio/wav")},
                                   data={"name": "v"}), 400, "file")
    assert err["code"] == code


def test_voice_upload_size_limit(http_core):
    with serving(http_core, http__max_upload_mb=0.1) as server:
        big = reference_wav(10.0, 16000)  # ~320 kB > 0.1 MiB
        r = httpx.post(f"{server.url}/v1/audio/voices", files={"file": ("big.wav", big, "audio/wav")},
                       data={"name": "big"}, timeout=10)
        assert_error(r, 413)
        assert "big" not in [v.name for v in http_core.list_voices()]


def test_default_voice_cannot_be_deleted(tmp_path):
    core = make_core(tmp_path / "voices", default_voice=REFERENCE_VOICE)
    try:
        with serving(core) as server:
            assert_error(httpx.delete(f"{server.url}/v1/audio/voices/{REFERENCE_VOICE}", timeout=10), 409)
    finally:
        core.unload()


# -- access ------------------------------------------------------------------------------------------------------------
def test_api_key(http_core):
    with serving(http_core, http__api_key="s3cret-key") as server:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                            {"Authorization": "Basic s3cret-key"}, {"Authorization": "Bearer s3cret-key-and-more"}):
                err = assert_error(c.get("/v1/models", headers=headers), 401)
                assert err["type"] == "authentication_error"
            r = c.post("/v1/audio/speech", content=b"{bad", headers={"Authorization": "Bearer nope",
                                                                     "Content-Type": "application/json"})
            assert_error(r, 401)  # the key is checked before the body is read
            assert r.headers["www-authenticate"] == "Bearer"
            ok = {"Authorization": "Bearer s3cret-key"}
            assert c.get("/v1/models", headers=ok).status_code == 200
            assert c.post("/v1/audio/speech", headers=ok, json={"model": "m", "input": "Hi.", "voice": "alloy",
                                                                "response_format": "wav"}).status_code == 200
            # public: liveness, the page and its assets (the page asks for the key), the docs
            for path in ("/health", "/health/ready", "/", "/static/app.js", "/docs", "/openapi.json"):
                assert c.get(path).status_code == 200, path
            assert c.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
            assert_error(c.get("/api/model-info"), 401)
            assert_error(c.get("/get_predefined_voices"), 401)


# -- queue: full, disconnects ------------------------------------------------------------------------------------------
class BlockingListener(JobListener):
    """Holds the worker on the first chunk until released: the queue behind it stays put."""

    def __init__(self):
        self.started = threading.Event()
        self.release = threading.Event()

    def on_audio(self, job, samples):
        self.started.set()
        self.release.wait(20)


@pytest.fixture()
def small_queue(tmp_path):
    core = make_core(tmp_path / "voices", queue__max_size=1)
    try:
        with serving(core) as server:
            yield core, server
    finally:
        core.unload()


def test_queue_full_answers_503_with_retry_after(small_queue):
    core, server = small_queue
    blocker = BlockingListener()
    running = core.submit("Hold the worker.", listener=blocker)
    assert blocker.started.wait(10)
    waiting = core.submit("Wait in line.")
    try:
        r = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alloy"},
                       timeout=10)
        err = assert_error(r, 503)
        assert err["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
    finally:
        blocker.release.set()
        core.cancel_all("test over")
    assert running.wait(10) is not None and waiting.wait(10) is not None


def test_client_gone_while_queued_cancels_its_job(small_queue):
    core, server = small_queue
    blocker = BlockingListener()
    core.submit("Hold the worker.", listener=blocker)
    assert blocker.started.wait(10)
    before = counters(core)["cancelled"]
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alloy"},
                       timeout=httpx.Timeout(10, read=0.5))
        assert wait_until(lambda: core.status().queue_depth == 0, 5), "the abandoned request should leave the queue"
        assert counters(core)["cancelled"] == before + 1
    finally:
        blocker.release.set()
        core.cancel_all("test over")


def test_client_disconnect_mid_stream_cancels_the_job(client, http_core):
    before_cancelled, before_ok = counters(http_core)["cancelled"], counters(http_core)["ok"]
    with client.stream("POST", "/v1/audio/speech", json={"model": "m", "input": LONG_TEXT, "voice": "alloy",
                                                         "response_format": "pcm"}) as r:
        assert r.status_code == 200
        first = next(r.iter_raw())
        assert first
    # leaving the block closes the connection long before 25 sentences are synthesized
    assert wait_until(lambda: counters(http_core)["cancelled"] == before_cancelled + 1, 10)
    assert counters(http_core)["ok"] == before_ok
    assert wait_until(lambda: not http_core.status().speaking, 5)


def test_engine_not_loaded_is_503(tmp_path):
    core = make_core(tmp_path / "voices")
    server = HttpServer(core, http_settings(core), port=0)
    server.start()
    try:
        core.unload()
        r = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alloy"},
                       timeout=10)
        assert_error(r, 503)
        assert httpx.get(f"{server.url}/health").json()["ready"] is False
        assert httpx.get(f"{server.url}/health/ready").status_code == 503
    finally:
        server.stop()


# -- the server object -----------------------------------------------------------------------------------------------
def health(port: int):
    """GET /health's JSON, or None while nothing answers within 2 s."""
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_server_start_stop_releases_port(http_core):
    server = HttpServer(http_core, http_settings(http_core), port=0)
    server.start()
    port = server.port
    assert server.running and port_open(port)
    assert server.url == f"http://127.0.0.1:{port}"
    assert server.stop(timeout=5)
    assert not port_open(port)
    again = HttpServer(http_core, http_settings(http_core), port=port)  # the same port binds again at once
    again.start()
    try:
        assert httpx.get(f"{again.url}/health", timeout=5).status_code == 200
    finally:
        again.stop()
    assert not port_open(port)


def test_port_in_use_is_a_readable_error(http_server, http_core):
    other = HttpServer(http_core, http_settings(http_core), port=http_server.port)
    with pytest.raises(OSError, match="already in use"):
        other.start()
    assert httpx.get(f"{http_server.url}/health", timeout=5).status_code == 200


def test_stop_during_a_stream_ends_it_and_cancels_the_job(http_core):
    server = HttpServer(http_core, http_settings(http_core), port=0)
    server.start()
    before = counters(http_core)["cancelled"]
    with httpx.Client(timeout=10) as c:
        with c.stream("POST", f"{server.url}/v1/audio/speech",
                      json={"model": "m", "input": LONG_TEXT, "voice": "alloy", "response_format": "pcm"}) as r:
            next(r.iter_raw())
            assert server.stop(timeout=5)  # False if the server thread did not end
    assert wait_until(lambda: counters(http_core)["cancelled"] == before + 1, 10)
    assert not port_open(server.port)


def test_non_loopback_bind_without_key_refuses_to_start(http_core):
    """Attack 5: 0.0.0.0 without a key used to serve with a warning; now it refuses before binding, unless the user
    opts out explicitly (then it warns)."""
    server = HttpServer(http_core, http_settings(http_core, http__host="0.0.0.0"), port=0)
    with pytest.raises(RuntimeError, match="allow_unauthenticated_lan"):
        server.start()
    assert server._sock is None  # refused before binding: nothing listens
    opted_out = HttpServer(http_core, http_settings(http_core, http__host="0.0.0.0",
                                                    http__allow_unauthenticated_lan=True), port=0)
    opted_out.port = -1  # stop before binding 0.0.0.0 for real: the warning comes first
    with captured_logs("ros2_chatterbox.http.server") as logged, pytest.raises((OSError, OverflowError)):
        opted_out.start()
    assert any(level == "warning" and "WITHOUT an API key" in msg for level, msg in logged), logged


@pytest.mark.timeout(180)
def test_runs_without_ros_as_a_program(tmp_path):
    """`python -m ros2_chatterbox.http --params FILE --port P` serves, and SIGINT stops it cleanly."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:  # a free port (tiny race: the kernel rarely hands it out again this fast)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    voices = tmp_path / "voices"
    voices.mkdir()
    params = tmp_path / "params.yaml"
    params.write_text(f"tts_node:\n  ros__parameters:\n    engine: piper\n    voices_dir: '{voices}'\n"
                      f"    http:\n      port: 1\n")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "ros2_chatterbox.http", "--params", str(params),
                             "--host", "127.0.0.1", "--port", str(port)], cwd=str(root), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the port is bound before the engine loads (a taken port fails at once) and answers once it has loaded
        assert wait_until(lambda: proc.poll() is not None or health(port) is not None, 90), "server did not start"
        assert proc.poll() is None
        assert health(port)["engine"] == "piper"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/audio/speech", timeout=30,
                       json={"model": "m", "input": "Hello.", "voice": "alloy", "response_format": "wav"})
        assert r.status_code == 200 and encoding.decode(r.content)[0].size > 0
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert "Traceback" not in out
        assert not port_open(port)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


def test_program_reports_a_taken_port(http_server):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-m", "ros2_chatterbox.http", "--port", str(http_server.port)],
                         cwd=str(root), capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "already in use" in out.stderr and "Traceback" not in out.stderr


def _healthcheck(port: int):
    import os
    import subprocess
    import sys
    script = Path(__file__).resolve().parent.parent / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env={**os.environ, "CHATTERBOX_HTTP_PORT": str(port)},
                          capture_output=True, text=True, timeout=30)


def test_container_healthcheck_is_readiness(http_server, http_core, monkeypatch):
    assert _healthcheck(http_server.port).returncode == 0
    # serving on the fallback engine: alive, but not ready, so GPU services that wait on it do not start yet
    monkeypatch.setattr(http_core, "fallback_reason", "engine 'chatterbox_turbo' could not load: no weights")
    assert httpx.get(f"{http_server.url}/health").status_code == 200
    assert httpx.get(f"{http_server.url}/health/ready").status_code == 503
    out = _healthcheck(http_server.port)
    assert out.returncode == 1 and "fallback" in out.stderr
