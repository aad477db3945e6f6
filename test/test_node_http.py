"""The HTTP server inside the node: opened on activate, closed on deactivate, a taken port fails activate clearly,
and HTTP and ROS requests share one queue under load."""
import concurrent.futures
import socket
import threading
import time

import httpx
import pytest

from ros_helpers import NodeProcess, RosClient, free_port

pytestmark = pytest.mark.timeout(300)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def client():
    c = RosClient("node_http")
    yield c
    c.close()


def test_deactivate_closes_the_port_and_activate_opens_it(client):
    port = free_port()
    proc = NodeProcess({"http.port": port, "audio.realtime": False}, name="http_lc", namespace="/hl")
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200
        h = health.json()  # liveness and readiness, lifecycle, engine, device, queue, last error, latency
        assert h["ready"] and h["accepting"] and h["engine"] == "piper" and h["device"] == "cpu"
        assert {"queue_depth", "last_error", "last_latency_s"} <= set(h)
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=10).status_code == 200
        assert client.change_state("deactivate", "/hl/tts_node")
        assert not port_open(port)
        assert client.change_state("activate", "/hl/tts_node")
        r = httpx.post(f"http://127.0.0.1:{port}/v1/audio/speech", timeout=60,
                       json={"model": "x", "input": "Back online.", "voice": "alloy", "response_format": "wav"})
        assert r.status_code == 200 and r.content[:4] == b"RIFF"
    finally:
        proc.stop()


def test_taken_port_fails_activate_with_a_readable_reason(client):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    proc = NodeProcess({"http.port": port}, autostart=False, name="http_taken", namespace="/ht")
    try:
        assert client.wait_until(lambda: client.try_state("/ht/tts_node") == "unconfigured", 60)
        assert client.change_state("configure", "/ht/tts_node")
        assert not client.change_state("activate", "/ht/tts_node")
        assert client.get_state("/ht/tts_node") == "inactive"
        assert proc.wait_for_log("activate failed: HTTP server", 5) and str(port) in proc.output()
        blocker.close()
        assert client.change_state("activate", "/ht/tts_node")  # once the port is free, it works
        assert client.speak("The port is free now.", ns="/ht").success
    finally:
        blocker.close()
        proc.stop()



def test_fifty_http_and_ros_requests_share_the_queue(client):
    """50 concurrent HTTP requests plus ROS service calls: each answered (audio, or 503 queue full), node alive."""
    port = free_port()
    proc = NodeProcess({"http.port": port, "audio.realtime": False, "queue.max_size": 30}, name="http_load",
                       namespace="/hload")
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        url = f"http://127.0.0.1:{port}/v1/audio/speech"
        ros_results = []
        ros_threads = [threading.Thread(target=lambda i=i: ros_results.append(
            client.speak(f"Ros request {i}.", ns="/hload", timeout=240))) for i in range(5)]

        def http_call(i):
            r = httpx.post(url, timeout=240, json={"model": "x", "input": f"Http request number {i}.",
                                                   "voice": "alloy", "response_format": "wav"})
            return r.status_code, r.headers.get("retry-after"), len(r.content)

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            futures = [pool.submit(http_call, i) for i in range(50)]
            for t in ros_threads:
                t.start()
            codes = [f.result(timeout=280) for f in futures]
        for t in ros_threads:
            t.join(240)
        ok = [c for c in codes if c[0] == 200]
        full = [c for c in codes if c[0] == 503]
        assert len(ok) + len(full) == 50, codes
        assert all(c[1] for c in full), "503 without Retry-After"
        assert all(c[2] > 1000 for c in ok)
        assert len(ros_results) == 5 and all(r.success or "full" in r.message for r in ros_results)
        print(f"HTTP: {len(ok)} spoken, {len(full)} refused with 503 (queue full); ROS: "
              f"{sum(r.success for r in ros_results)}/5 spoken")
        r = httpx.post(url, timeout=60, json={"model": "x", "input": "Alive.", "voice": "alloy",
                                              "response_format": "wav"})
        assert r.status_code == 200
        assert client.speak("Still alive over ROS too.", ns="/hload").success
    finally:
        proc.stop()


def test_lan_bind_without_a_key_fails_activate_and_env_keys_work(client, tmp_path):
    """Issue 11: http.host beyond loopback without a key used to serve with a warning; now activate fails with the
    reason (nothing listens), and a key from CHATTERBOX_API_KEY_FILE protects the API without appearing in the
    process's arguments."""
    port = free_port()
    proc = NodeProcess({"http.host": "0.0.0.0", "http.port": port}, autostart=False, name="http_lan", namespace="/hn",
                       env={"CHATTERBOX_API_KEY": "", "CHATTERBOX_API_KEY_FILE": ""})
    try:
        assert client.wait_until(lambda: client.try_state("/hn/tts_node") == "unconfigured", 60)
        assert client.change_state("configure", "/hn/tts_node")
        assert not client.change_state("activate", "/hn/tts_node")
        assert proc.wait_for_log("allow_unauthenticated_lan", 5), proc.output()
        assert not port_open(port) and proc.alive()
    finally:
        proc.stop()
    key_file = tmp_path / "key"
    key_file.write_text("node-secret\n")
    port = free_port()
    proc = NodeProcess({"http.port": port, "audio.realtime": False}, name="http_key", namespace="/hk",
                       env={"CHATTERBOX_API_KEY_FILE": str(key_file)})
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        with open(f"/proc/{proc.proc.pid}/cmdline", "rb") as f:
            assert b"node-secret" not in f.read()
        models = f"http://127.0.0.1:{port}/v1/models"
        assert httpx.get(models, timeout=10).status_code == 401
        assert httpx.get(models, headers={"Authorization": "Bearer node-secret"}, timeout=10).status_code == 200
    finally:
        proc.stop()
