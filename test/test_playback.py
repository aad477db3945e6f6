"""Local playback (ros2_chatterbox.playback) against ALSA devices that need no sound card.

The device tests run PortAudio in a child process whose HOME holds an `.asoundrc` defining `cbxtest`: ALSA's `file`
plugin over the `null` device, writing every sample played to a raw float32 file, so a test can check what really
went out (and when). `default` is pointed at it too. PortAudio reads the ALSA configuration when it initializes, hence
the child process with its own environment. Needs Debian's libportaudio2 and the `sounddevice` wheel; without them the
device tests skip with that reason (the no-PortAudio behaviour is tested here in-process either way).
"""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from alsa_sink import ASOUNDRC
from log_capture import captured_logs
from optional import make_setup
from ros2_chatterbox import playback

ROOT = Path(__file__).resolve().parents[1]
SR = 24000


# Runs in the child: one scenario, result as one JSON line on stdout.
CHILD = textwrap.dedent("""
    import json, os, sys, threading, time
    import numpy as np
    from ros2_chatterbox import playback as pb

    SR = 24000
    OUT = os.environ["CBX_TEST_OUT"]
    import logging
    logs = []
    class Collect(logging.Handler):
        def emit(self, record):
            logs.append([record.levelname.lower(), record.getMessage()])
    logging.getLogger("ros2_chatterbox").addHandler(Collect())
    logging.getLogger("ros2_chatterbox").setLevel(logging.DEBUG)
    res = {}

    def size():
        return os.path.getsize(OUT) // 4 if os.path.exists(OUT) else 0

    def tone(seconds, hz=440.0):
        t = np.arange(int(SR * seconds)) / SR
        return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)

    def wait_until(predicate, timeout=20.0):
        # poll, with a deadline: True once predicate() holds
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def spy_waits(p):
        # an Event set when the player next waits for the device (inside drain(), after it took its turn)
        waiting = threading.Event()
        real = p._wait
        def spy(*args):
            waiting.set()
            return real(*args)
        p._wait = spy
        return waiting

    def play_chunked(p, x, chunk=SR // 10):
        ok = True
        for i in range(0, len(x), chunk):
            ok = p.play(x[i:i + chunk]) and ok
        return ok

    scenario = sys.argv[1]
    if scenario == "probe":
        import sounddevice
        res["devices"] = pb.list_devices()
    elif scenario in ("plays", "default"):
        p = pb.Player("cbxtest" if scenario == "plays" else "", SR)
        res["opened"] = p.open()
        res["device_name"] = p.device_name
        x = tone(1.0 if scenario == "plays" else 0.3)
        res["played"] = play_chunked(p, x)
        res["playing_before_drain"] = p.playing
        res["drained"] = p.drain()
        res["playing_after_drain"] = p.playing
        got = np.fromfile(OUT, dtype=np.float32)
        res["frames"] = len(got)
        res["max_diff"] = float(np.abs(got - x).max()) if len(got) == len(x) else None
        p.close()
    elif scenario == "stop":
        p = pb.Player("cbxtest", SR)
        res["opened"] = p.open()
        x = tone(5.0)
        out = {}
        th = threading.Thread(target=lambda: out.update(ok=p.play(x)))
        t0 = time.monotonic()
        th.start()
        res["half_a_second_out"] = wait_until(lambda: size() >= SR // 2)
        res["playing_before_stop"] = p.playing
        p.stop()
        res["stopped_at"] = time.monotonic() - t0  # every write happened before stop() returned
        res["max_lead"] = p._max_lead
        res["block_s"] = pb.BLOCK_S
        th.join(20)
        res["play_returned"] = not th.is_alive()
        res["play_result"] = out.get("ok")
        res["playing_after_stop"] = p.playing
        res["frames_at_stop"] = size()
        res["drain_after_stop"] = p.drain()
        # the player works again after stop(): 0.2 s more reach the device, exactly, and nothing else (had the
        # stopped sound kept flowing, it would show up here too)
        res["played_again"] = p.play(tone(0.2))
        res["drained_again"] = p.drain()
        res["frames_again"] = size() - res["frames_at_stop"]
        # stop() during drain(): drain returns at once, False
        p.play(tone(1.0))
        waiting = spy_waits(p)
        d = {}
        th = threading.Thread(target=lambda: d.update(ok=p.drain()))
        th.start()
        res["drain_waiting"] = waiting.wait(20)
        p.stop()
        th.join(20)
        res["drain_returned"] = not th.is_alive()
        res["drain_interrupted"] = d.get("ok")
        p.close()
        res["play_after_close"] = p.play(tone(0.1))
    elif scenario == "cancel":
        # a job's cancel_event handed to play()/drain(): setting it silences the device, no stop() call needed
        p = pb.Player("cbxtest", SR)
        res["opened"] = p.open()
        for phase in ("play", "drain"):
            ev = threading.Event()
            out = {}
            if phase == "play":
                th = threading.Thread(target=lambda: out.update(ok=p.play(tone(5.0), cancel=ev)))
                th.start()
                base = size()
                ready = wait_until(lambda: size() >= base + SR // 4)  # a quarter of a second is out
            else:
                p.play(tone(1.0), cancel=ev)
                waiting = spy_waits(p)
                th = threading.Thread(target=lambda: out.update(ok=p.drain(cancel=ev)))
                th.start()
                ready = waiting.wait(20)  # drain() is waiting for the device
            ev.set()
            th.join(20)
            res[phase] = {"ready": ready, "ok": out.get("ok"), "returned": not th.is_alive(), "playing": p.playing,
                          "frames": size()}
        # 0.1 s more reach the device, exactly: nothing of the cancelled sound flowed after the cancel
        res["played_again"] = p.play(tone(0.1)) and p.drain()
        res["frames_again"] = size() - res["drain"]["frames"]
        p.close()
    elif scenario == "missing":
        p = pb.Player("no such speaker", SR)
        res["opened"] = p.open()
        res["play"] = p.play(tone(0.1))
        res["drain"] = p.drain()
        p.stop()
        p.close()
        q = pb.Player(57, SR)
        res["opened_index"] = q.open()
        # plugged in later (here: defined later): the next open() finds it
        with open(os.path.join(os.environ["HOME"], ".asoundrc"), "a") as f:
            f.write('pcm.lateplug { type null hint { show on description "late" } }\\n')
        r = pb.Player("lateplug", SR)
        res["opened_late"] = r.open()
        r.close()
    elif scenario == "busy":
        import sounddevice as sd
        def refuse(*a, **k):
            raise sd.PortAudioError("Error opening OutputStream: Device unavailable [PaErrorCode -9985]")
        sd.OutputStream = refuse
        p = pb.Player("cbxtest", SR)
        res["opened"] = p.open()
        res["play"] = p.play(tone(0.1))
    res["logs"] = logs
    print(json.dumps(res))
""")


def _run_child(tmp_path: Path, scenario: str) -> dict:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    out = tmp_path / "played.raw"
    (home / ".asoundrc").write_text(ASOUNDRC.format(out=out))
    env = dict(os.environ, HOME=str(home), CBX_TEST_OUT=str(out),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("ALSA_CONFIG_PATH", None)  # the system configuration, then our ~/.asoundrc
    proc = subprocess.run([sys.executable, "-c", CHILD, scenario], env=env, capture_output=True, text=True,
                          timeout=60, cwd=str(tmp_path))
    if proc.returncode != 0:
        raise AssertionError(f"child {scenario} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def portaudio(tmp_path_factory):
    """Skip the device tests, with the reason, when PortAudio cannot run here."""
    try:
        res = _run_child(tmp_path_factory.mktemp("probe"), "probe")
    except AssertionError as exc:
        text = str(exc)
        if "No module named 'sounddevice'" in text:
            pytest.skip(f"needs the 'sounddevice' package: run `{make_setup('setup')}`")
        if "PortAudio library not found" in text:
            pytest.skip("needs the PortAudio library: run `apt-get install libportaudio2`")
        raise
    names = [d["name"] for d in res["devices"]]
    assert "cbxtest" in names, f"PortAudio does not list the test device from ~/.asoundrc: {res}"
    return res


def _warnings(res):
    return [m for level, m in res["logs"] if level == "warning"]


def test_plays_to_the_device_at_real_time(portaudio, tmp_path):
    res = _run_child(tmp_path, "plays")
    assert res["opened"] and res["device_name"] == "cbxtest", res
    assert res["played"] and res["drained"], res
    assert res["frames"] == SR, f"1 s played, {res['frames']} frames reached the device"
    assert res["max_diff"] is not None and res["max_diff"] < 1e-6, "the device got other samples than played"
    # drain() returns once the sound has played (`playing` follows the device's clock): tts/speaking can go false
    # right after drain()
    assert res["playing_before_drain"] and not res["playing_after_drain"], res
    assert not _warnings(res), res["logs"]


def test_default_device(portaudio, tmp_path):
    res = _run_child(tmp_path, "default")
    assert res["opened"] and res["device_name"] == "default", res
    assert res["played"] and res["drained"], res
    assert res["frames"] == int(SR * 0.3) and res["max_diff"] < 1e-6, res


def test_stop_silences_at_once(portaudio, tmp_path):
    res = _run_child(tmp_path, "stop")
    assert res["opened"] and res["half_a_second_out"] and res["playing_before_stop"], res
    assert res["play_returned"] and res["play_result"] is False and not res["playing_after_stop"], res
    # what reached the device: what played before stop() plus at most the lead kept ahead of real time (and the one
    # block being written)
    most = (res["stopped_at"] + res["max_lead"] + res["block_s"]) * SR
    assert SR // 2 <= res["frames_at_stop"] <= most, (res["frames_at_stop"], most)
    assert res["drain_after_stop"] is True
    assert res["played_again"] and res["drained_again"], res
    assert res["frames_again"] == int(0.2 * SR), "audio kept flowing after stop()"
    assert res["drain_waiting"] and res["drain_returned"] and res["drain_interrupted"] is False, res
    assert res["play_after_close"] is False
    assert not _warnings(res), res["logs"]


def test_cancel_event_silences_at_once(portaudio, tmp_path):
    res = _run_child(tmp_path, "cancel")
    assert res["opened"], res
    for phase in ("play", "drain"):
        r = res[phase]
        assert r["ready"] and r["returned"] and r["ok"] is False and not r["playing"], (phase, r)
    assert res["drain"]["frames"] - res["play"]["frames"] <= SR, "the cancelled play() kept flowing"
    assert res["played_again"] is True
    assert res["frames_again"] == int(0.1 * SR), "audio kept flowing after the cancel during drain()"
    assert not _warnings(res), res["logs"]


def test_missing_device_warns(portaudio, tmp_path):
    res = _run_child(tmp_path, "missing")
    assert res["opened"] is False and res["play"] is False and res["drain"] is True, res
    assert res["opened_index"] is False, res
    assert res["opened_late"] is True, "a device that appears later is found by the next open()"
    warnings = _warnings(res)
    assert len(warnings) == 2, res["logs"]
    assert "'no such speaker'" in warnings[0] and "not found" in warnings[0], warnings[0]
    assert "cbxtest" in warnings[0], "the warning lists the devices there are"
    assert "57" in warnings[1], warnings[1]


def test_busy_device_warns(portaudio, tmp_path):
    res = _run_child(tmp_path, "busy")
    assert res["opened"] is False and res["play"] is False, res
    (warning,) = _warnings(res)
    assert "cbxtest" in warning and "Device unavailable" in warning and "busy" in warning, warning


# -- without PortAudio (in-process: these never load it) --------------------------------------------------------
@pytest.fixture
def logs():
    """What the player logged, as (level, message)."""
    with captured_logs("ros2_chatterbox.playback") as collected:
        yield collected


def test_no_sounddevice_package(monkeypatch, logs):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # `import sounddevice` raises ImportError
    p = playback.Player("speaker", SR)
    assert p.open() is False
    assert p.play(np.zeros(100, np.float32)) is False and p.drain() is True and not p.playing
    p.stop()
    p.close()
    assert len(logs) == 1 and logs[0][0] == "warning", logs
    assert "'speaker'" in logs[0][1] and "sounddevice" in logs[0][1] and "not installed" in logs[0][1], logs
    assert playback.list_devices() == []


def test_no_portaudio_library(monkeypatch, logs):
    def missing():
        raise OSError("PortAudio library not found")
    monkeypatch.setattr(playback, "_import_sounddevice", missing)
    assert playback.Player("", SR).open() is False
    assert len(logs) == 1 and "system default" in logs[0][1] and "libportaudio2" in logs[0][1], logs


# -- format fallback, with a stand-in for sounddevice -----------------------------------------------------------
class _FakeStream:
    def __init__(self, sd, **kw):
        self.kw, self.active, self.latency, self.frames = kw, False, 0.1, []
        sd.streams.append(self)

    def start(self):
        self.active = True

    def write(self, data):
        self.frames.append(np.array(data))
        return False

    def stop(self):
        self.active = False

    abort = stop

    def close(self):
        pass


def _fake_sd(rates, channels):
    """A device that only takes these rates and channel counts (default rate: the first)."""
    sd = types.SimpleNamespace(streams=[], PortAudioError=RuntimeError)
    sd.default = types.SimpleNamespace(device=[-1, 0])
    info = {"index": 0, "name": "USB speaker", "hostapi": 0, "max_output_channels": 2,
            "default_samplerate": float(rates[0])}
    sd.query_devices = lambda dev=None, kind=None: info if dev is not None else [info]
    sd.query_hostapis = lambda: [{"name": "ALSA"}]

    def check(device, samplerate, channels: int, dtype):
        if samplerate not in rates or channels not in allowed_channels:
            raise sd.PortAudioError("Invalid sample rate" if samplerate not in rates else "Invalid channel count")
    allowed_channels = channels
    sd.check_output_settings = check
    sd.OutputStream = lambda **kw: _FakeStream(sd, **kw)
    return sd


def test_resamples_and_upmixes_when_the_device_refuses_the_format(monkeypatch, logs):
    sd = _fake_sd([48000], [2])
    monkeypatch.setattr(playback, "_import_sounddevice", lambda: sd)
    p = playback.Player("", SR, latency=2.0)  # lead cap above the clip: no pacing waits in this test
    assert p.open() and p.device_rate == 48000, logs
    assert sd.streams[0].kw["samplerate"] == 48000 and sd.streams[0].kw["channels"] == 2
    assert any("resampled from 24000 Hz" in m for _, m in logs), logs
    x = np.sin(2 * np.pi * 300 * np.arange(SR // 2) / SR).astype(np.float32)
    for i in range(0, len(x), 2400):
        assert p.play(x[i:i + 2400])
    out = np.concatenate(sd.streams[0].frames)
    assert out.shape[1] == 2 and np.array_equal(out[:, 0], out[:, 1])
    assert abs(len(out) - 2 * len(x)) <= 2, len(out)
    ref = np.sin(2 * np.pi * 300 * np.arange(len(out)) / 48000)
    assert np.abs(out[:, 0] - ref).max() < 2e-3  # continuous across chunk boundaries
    # another engine (another rate) takes over: the player follows
    assert p.set_sample_rate(48000) and len(sd.streams) == 2 and p._resampler is None
    assert p.set_sample_rate(48000) and len(sd.streams) == 2  # unchanged: no reopen
    p.stop()
    p.close()
    assert not p.is_open and p.play(x) is False


def test_refused_format_warns(monkeypatch, logs):
    sd = _fake_sd([44100], [6])
    monkeypatch.setattr(playback, "_import_sounddevice", lambda: sd)
    assert playback.Player("0", SR).open() is False
    assert len(logs) == 1 and "24000 Hz" in logs[0][1] and "44100 Hz" in logs[0][1], logs
    assert not sd.streams


def test_linear_resampler_is_chunk_invariant():
    x = np.random.default_rng(1).standard_normal(10007).astype(np.float32)
    whole = playback.LinearResampler(24000, 44100)(x)
    r = playback.LinearResampler(24000, 44100)
    parts = np.concatenate([r(x[i:i + n]) for i, n in zip(range(0, 10007, 977), [977] * 11)])
    assert np.allclose(parts, whole, atol=1e-6) and abs(len(whole) - 10007 * 44100 / 24000) <= 1
