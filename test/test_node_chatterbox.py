"""The node with engine chatterbox_turbo on a tiny checkpoint built at test time (the engine's real loader), over ROS."""
import shutil

import numpy as np
import pytest

from ros_helpers import NodeProcess, RosClient
from turbo_fixtures import require_chatterbox, tiny_ckpt, write_voice  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    d = tmp_path_factory.mktemp("node_voices")
    write_voice(d / "alice.wav", f0=180.0)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk" + bytes(range(256)) * 4)
    return d


@pytest.fixture(scope="module")
def client():
    require_chatterbox()
    c = RosClient("cbx_node")
    c.subscribe_outputs("/cbx")
    yield c
    c.close()


@pytest.fixture(scope="module")
def node(client, tiny_ckpt, voices):  # noqa: F811
    proc = NodeProcess({"engine": "chatterbox_turbo", "model_dir": str(tiny_ckpt), "voices_dir": str(voices),
                        "device": "cpu", "cpu_threads": 1, "http.enabled": False, "audio.realtime": False},
                       name="cbx", namespace="/cbx")
    assert proc.wait_for_log("active: ready to speak", 240), proc.output()
    yield proc
    proc.stop()


def test_speaks_with_the_builtin_voice(node, client):
    client.settle()
    client.audio.clear()
    res = client.speak("Hello from the tiny Chatterbox [laugh].", ns="/cbx", timeout=120)
    assert res.success, res.message
    assert res.sample_rate == 24000 and res.duration > 0
    assert client.wait_until(lambda: abs(client.audio_seconds(24000) - res.duration) < 1e-3, 10)
    assert client.audio_info[-1].sample_rate == 24000
    pcm = np.frombuffer(b"".join(bytes(m.audio.data) for m in client.audio), "<i2")
    assert np.abs(pcm).max() > 0


def test_speaks_with_a_cloned_voice(node, client):
    res = client.speak("Now in a cloned voice.", voice="alice", ns="/cbx", timeout=120)
    assert res.success, res.message
    res = client.speak("With the file suffix too.", voice="alice.wav", ns="/cbx", timeout=120)
    assert res.success, res.message


def test_corrupt_voice_file_is_skipped_with_a_warning(node, client):
    assert "voice 'corrupt' skipped" in node.output()
    res = client.speak("Use the broken voice.", voice="corrupt", ns="/cbx", timeout=60)
    assert not res.success and "corrupt" in res.message
    assert client.speak("Still fine.", ns="/cbx", timeout=120).success


def test_corrupt_model_dir_fails_configure_and_node_stays_up(client, tiny_ckpt, tmp_path):  # noqa: F811
    bad = tmp_path / "bad_model"
    shutil.copytree(tiny_ckpt, bad)
    (bad / "t3_turbo_v1.safetensors").write_bytes(b"this is not a safetensors file")
    proc = NodeProcess({"engine": "chatterbox_turbo", "model_dir": str(bad), "device": "cpu",
                        "http.enabled": False}, autostart=False, name="cbx_bad", namespace="/cbxbad")
    try:
        lc = "/cbxbad/tts_node"
        assert client.wait_until(lambda: client.try_state(lc) == "unconfigured", 60)
        assert not client.change_state("configure", lc, timeout=180)
        assert client.get_state(lc) == "unconfigured"
        assert "configure failed" in proc.output() and "t3_turbo_v1.safetensors" in proc.output()
        res = client.speak("Anyone there?", ns="/cbxbad")
        assert not res.success and "not active" in res.message
    finally:
        proc.stop()

