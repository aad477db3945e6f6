"""User data stays out of the checkout (issue 21): with the default `voices_dir: ''`, voices uploaded over HTTP or
added over ROS land in the user's data folder ($XDG_DATA_HOME/ros2_chatterbox/voices), never in the git tree; the
package's shipped voices/ is read-only reference content that a user voice of the same name shadows. And each
parameter's description says which component reads it, as `ros2 param describe` shows it.

Every test points XDG_DATA_HOME at its own temporary folder, never the real home."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from http_fixtures import make_config, reference_wav, serving
from ros2_chatterbox import paths
from ros2_chatterbox.core import SpeechCore

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent
CHECKOUT_VOICES = ROOT / "voices"


def checkout_voices_state() -> str:
    """What git and the file system say about the checkout's voices/ folder (ignored and untracked files too)."""
    listing = "\n".join(sorted(p.name for p in CHECKOUT_VOICES.iterdir())) if CHECKOUT_VOICES.is_dir() else ""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return listing
    status = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "voices/"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    return listing + "\n--\n" + status.stdout


@pytest.fixture
def user_data(monkeypatch, tmp_path):
    """XDG_DATA_HOME of this test: the user's voices folder is <tmp>/data/ros2_chatterbox/voices."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    return tmp_path / "data" / "ros2_chatterbox" / "voices"


def default_core() -> SpeechCore:
    core = SpeechCore(make_config(Path("unused")).with_values({"voices_dir": ""}))  # the default: voices_dir ''
    core.load()
    return core


def upload(server, name: str, overwrite: bool = False) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/audio/voices", files={"file": (f"{name}.wav", reference_wav(), "audio/wav")},
                      data={"name": name, "overwrite": "true" if overwrite else "false"}, timeout=60)


def test_an_http_upload_lands_in_the_user_folder_not_the_checkout(user_data):
    before = checkout_voices_state()
    core = default_core()
    try:
        with serving(core) as server:
            r = upload(server, "alice")
            assert r.status_code == 201, r.text
            assert (user_data / "alice.wav").is_file()
            assert not (CHECKOUT_VOICES / "alice.wav").exists()
            assert checkout_voices_state() == before  # `git status voices/` unchanged: nothing new, not even ignored
            listed = httpx.get(f"{server.url}/v1/audio/voices", timeout=30).json()
            assert [v["id"] for v in listed["data"]] == ["alice"]
            r = httpx.post(f"{server.url}/v1/audio/speech", json={"model": "chatterbox", "input": "Hello.",
                                                                  "voice": "alice", "response_format": "wav"},
                           timeout=120)
            assert r.status_code == 200, r.text
            assert httpx.delete(f"{server.url}/v1/audio/voices/alice", timeout=30).status_code == 200
            assert not (user_data / "alice.wav").exists()
    finally:
        core.unload()
    assert checkout_voices_state() == before


def test_checkout_voices_folder_ignores_user_files():
    """The second guard: a recording copied into the checkout's voices/ is ignored by git; its README is tracked."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    user_files = ["voices/bob.wav", "voices/Bob.FLAC", "voices/x.mp3"]
    check = subprocess.run(["git", "check-ignore", *user_files], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.stdout.split() == user_files, check.stderr
    tracked = subprocess.run(["git", "ls-files", "voices/"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "voices/README.md" in tracked.stdout.split()
    assert subprocess.run(["git", "check-ignore", "-q", "voices/README.md"], cwd=ROOT, timeout=60).returncode == 1


def test_a_user_voice_shadows_a_shipped_one_which_stays_read_only(user_data, monkeypatch, tmp_path):
    """Precedence: the user's voice of a shipped voice's name is used (upload it with overwrite); the shipped file
    is never changed or deleted, and reappears when the user's voice is deleted."""
    share = tmp_path / "share"
    (share / "voices").mkdir(parents=True)
    shipped = share / "voices" / "carol.wav"
    shipped.write_bytes(reference_wav(seconds=7.0))
    original = shipped.read_bytes()
    monkeypatch.setattr(paths, "package_share", lambda: share)
    core = default_core()
    try:
        with serving(core) as server:
            def listed():
                return {v["id"]: v["bytes"] for v in httpx.get(f"{server.url}/v1/audio/voices", timeout=30)
                        .json()["data"]}
            assert listed() == {"carol": len(original)}
            r = httpx.delete(f"{server.url}/v1/audio/voices/carol", timeout=30)
            assert r.status_code == 409 and "ships with the package" in r.json()["error"]["message"], r.text
            r = upload(server, "Carol")
            assert r.status_code == 409 and "already exists" in r.json()["error"]["message"], r.text
            r = upload(server, "carol", overwrite=True)
            assert r.status_code == 201, r.text
            assert (user_data / "carol.wav").is_file() and shipped.read_bytes() == original
            assert listed() == {"carol": (user_data / "carol.wav").stat().st_size}
            assert httpx.delete(f"{server.url}/v1/audio/voices/carol", timeout=30).status_code == 200
            assert not (user_data / "carol.wav").exists() and shipped.read_bytes() == original
            assert listed() == {"carol": len(original)}
    finally:
        core.unload()


def test_an_explicit_voices_dir_is_the_whole_library(user_data, tmp_path):
    folder = tmp_path / "robot_voices"
    core = SpeechCore(make_config(folder))
    core.load()
    try:
        added = core.add_voice("dave", reference_wav())
        assert (folder / added.file).is_file() and not user_data.exists()
    finally:
        core.unload()


def test_voices_added_over_ros_land_in_the_user_folder_and_descriptions_name_their_owner(tmp_path):
    """The node from this checkout with the default voices_dir: voices/add stores into $XDG_DATA_HOME; the
    descriptors (what `ros2 param describe` prints) begin with the component that reads the parameter."""
    from rcl_interfaces.srv import DescribeParameters
    from ros_helpers import NodeProcess, RosClient
    from ros2_chatterbox.srv import AddVoice, ListVoices

    data = tmp_path / "data"
    ns, lc = "/uservoices", "/uservoices/tts_node"
    before = checkout_voices_state()
    client = RosClient("user_voices_test")
    proc = NodeProcess({"http.enabled": False, "audio.realtime": False}, autostart=False, name="uservoices",
                       namespace=ns, env={"XDG_DATA_HOME": str(data)})
    try:
        assert client.wait_until(lambda: client.try_state(lc) == "unconfigured", 60), proc.output()
        described = client.call(DescribeParameters, f"{lc}/describe_parameters", DescribeParameters.Request(
            names=["audio.sentence_pause_ms", "audio.chunk_ms", "voices_dir"])).descriptors
        text = {d.name: d.description for d in described}
        assert text["audio.sentence_pause_ms"].startswith("[core] Silence inserted between sentences (ms)."), text
        assert text["audio.chunk_ms"].startswith("[ros] Duration of each AudioDataStamped chunk"), text
        assert "ros2_chatterbox/voices" in text["voices_dir"], text
        assert client.change_state("configure", lc)
        rec = tmp_path / "erin.wav"
        rec.write_bytes(reference_wav())
        added = client.call(AddVoice, f"{ns}/voices/add", AddVoice.Request(name="", path=str(rec)))
        assert added.success and added.name == "erin", added.message
        assert (data / "ros2_chatterbox" / "voices" / "erin.wav").is_file()
        assert client.call(ListVoices, f"{ns}/voices/list", ListVoices.Request()).names == ["erin"]
        assert checkout_voices_state() == before
    finally:
        proc.stop()
        client.close()
