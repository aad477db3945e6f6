"""Slow clients deny no one (issue 23): a trivial slowloris (a few hundred half-sent requests, stalled) used to get
everyone else a 503 until the header timeout closed them, renewable every 10 s. Now connections are cheap and many
(http.max_connections), and what each may hold is bounded instead (header size, header time, body size)."""
from __future__ import annotations

import resource
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from http_fixtures import http_core, serving  # noqa: F401
from ros2_chatterbox import encoding
from ros2_chatterbox.http.server import MAX_HEADER_BYTES
from ros2_chatterbox.settings import HttpSettings

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
SLOW_CLIENTS = 200
# Long enough that the stalled sockets are certainly still open while the test's own requests run on a loaded
# machine; the timeout itself is tested in test_http_security.py.
HEADER_TIMEOUT_S = 120.0

HALF_SENT = (
    b"GET /health HT",                                                          # half a request line
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/ht",                    # half a header
    b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n",  # no blank line
)


def still_open(sock: socket.socket) -> bool:
    """True when the server has neither answered nor closed the connection (nothing to read yet)."""
    sock.setblocking(False)
    try:
        sock.recv(1)  # an answer, or b"" when closed
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)


def test_half_sent_requests_deny_no_one(http_core):
    """With 200 stalled half-sent requests open, /health, the web page and a speech request are all served, and the
    stalled connections are still held (not refused)."""
    assert HttpSettings().max_connections > 2 * SLOW_CLIENTS  # the shipped cap, not one set for the test
    with serving(http_core, http__header_timeout_s=HEADER_TIMEOUT_S) as server:
        stalled = []
        try:
            for i in range(SLOW_CLIENTS):
                s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                s.sendall(HALF_SENT[i % len(HALF_SENT)])
                stalled.append(s)
            # Connections are accepted in the order they were made: these come after all the stalled ones.
            with httpx.Client(base_url=server.url, timeout=60) as client:
                health = client.get("/health")
                assert health.status_code == 200, health.text
                page = client.get("/")
                assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
                speech = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "Still here.",
                                                               "voice": "alloy", "response_format": "wav"})
                assert speech.status_code == 200, speech.text
                audio, rate = encoding.decode(speech.content)
                assert len(audio) / rate > 0.3
            assert all(still_open(s) for s in stalled), "a stalled connection was answered or closed"
        finally:
            for s in stalled:
                s.close()


def test_an_endless_header_is_refused_not_buffered(http_core):
    """Memory per connection is bounded: a header past MAX_HEADER_BYTES is answered 400 and the connection ends,
    well before the header timeout."""
    with serving(http_core, http__header_timeout_s=HEADER_TIMEOUT_S) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: ")
            answer = b""
            try:
                for _ in range(2 * MAX_HEADER_BYTES // 4096 + 1):
                    s.sendall(b"a" * 4096)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while we were still sending: refused
            s.settimeout(30)
            try:
                while True:
                    part = s.recv(4096)
                    if not part:
                        break
                    answer += part
            except ConnectionResetError:
                pass
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200


CAP_CHILD = textwrap.dedent("""
    import logging, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), int(sys.argv[3])))  # as a service manager would
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    from ros2_chatterbox.http.server import connection_cap
    print("cap", connection_cap(int(sys.argv[1])), "soft", resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)
""")


def run_cap_child(wanted: int, soft: int, hard: int) -> subprocess.CompletedProcess:
    """connection_cap(wanted) in a process started with the open-file limits (soft, hard)."""
    return subprocess.run([sys.executable, "-c", CAP_CHILD, str(wanted), str(soft), str(hard)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=60)


def test_the_open_file_limit_is_raised_to_fit_the_connections():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 6000:
        pytest.skip(f"the hard open-file limit here ({hard}) is below what this test raises to")
    r = run_cap_child(4096, 1024, 6000)  # a desktop's usual soft limit
    cap, soft = r.stdout.split()[1::2]
    assert int(cap) == 4096 and 4096 < int(soft) <= 6000, r.stdout + r.stderr
    assert "WARNING" not in r.stderr, r.stderr


def test_a_low_hard_limit_lowers_the_cap_and_says_so():
    r = run_cap_child(4096, 512, 512)
    cap, soft = r.stdout.split()[1::2]
    assert 2 <= int(cap) < 512 and int(soft) == 512, r.stdout + r.stderr
    assert f"at most {cap} open connections instead of 4096" in r.stderr and "ulimit -n" in r.stderr, r.stderr
