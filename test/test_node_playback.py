"""The node plays on the host's sound device (an ALSA file sink here): speaking follows the sound, stop silences it,
a missing device is a warning, never a crash."""
import threading

import pytest
from std_srvs.srv import Trigger

from alsa_sink import ASOUNDRC
from optional import requires
from ros_helpers import NodeProcess, RosClient

pytestmark = [pytest.mark.timeout(240), requires("sounddevice")]


@pytest.fixture(scope="module")
def client():
    c = RosClient("playback")
    c.subscribe_outputs("/pb")
    yield c
    c.close()


@pytest.fixture(scope="module")
def sink(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    out = home / "played.raw"
    (home / ".asoundrc").write_text(ASOUNDRC.format(out=out))
    return home, out


@pytest.fixture(scope="module")
def node(client, sink):
    home, _ = sink
    proc = NodeProcess({"http.enabled": False, "playback.enabled": True, "playback.device": "cbxtest"},
                       env={"HOME": str(home)}, name="playback", namespace="/pb")
    assert proc.wait_for_log("active: ready to speak", 90), proc.output()
    if "playback disabled" in proc.output():
        pytest.skip(f"PortAudio cannot open the test sink here: {proc.output()[-500:]}")
    yield proc
    proc.stop()


def played_seconds(out, sr):
    size = out.stat().st_size if out.exists() else 0
    return size / 4.0 / sr  # the player writes float32 mono


def test_plays_what_it_speaks_and_speaking_follows_the_sound(node, client, sink):
    _, out = sink
    before = played_seconds(out, 22050)
    client.speaking.clear()
    res = client.speak("Playing on the robot's own speaker.", ns="/pb")
    assert res.success, res.message
    # the answer comes once the sound has played: all of it is in the sink already
    played = played_seconds(out, res.sample_rate) - before
    assert played == pytest.approx(res.duration, rel=0.05, abs=0.05), (played, res.duration)
    assert client.wait_until(lambda: client.speaking[-2:] == [True, False], 5), client.speaking


def test_stop_silences_playback_at_once(node, client, sink):
    _, out = sink
    result = {}
    text = "A long sentence for the stop test that keeps the speaker busy for several seconds. " * 3
    start = played_seconds(out, 22050)
    t = threading.Thread(target=lambda: result.setdefault("r", client.speak(text, ns="/pb", timeout=120)))
    t.start()
    assert client.wait_until(lambda: played_seconds(out, 22050) > start + 0.5, 30), "nothing played"
    assert client.call(Trigger, "/pb/tts/stop", Trigger.Request()).success
    at_stop = played_seconds(out, 22050)
    t.join(20)
    assert not result["r"].success and "cancel" in result["r"].message
    assert client.wait_until(lambda: client.speaking[-1] is False, 5)
    # the device plays in order: had the stopped sound kept playing, it would sit before the next utterance's
    after = client.speak("Next.", ns="/pb")
    assert after.success
    extra = played_seconds(out, 22050) - at_stop - after.duration
    assert extra <= 0.1, f"sound kept playing after stop: {extra:.2f} s more"


def test_missing_device_is_a_warning_not_a_crash(client, sink):
    home, _ = sink
    proc = NodeProcess({"http.enabled": False, "audio.realtime": False, "playback.enabled": True,
                        "playback.device": "no-such-speaker"}, env={"HOME": str(home)}, name="pb_missing",
                       namespace="/pbm")
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        assert "no-such-speaker" in proc.output() and "playback disabled" in proc.output()
        assert client.speak("Published even without a speaker.", ns="/pbm").success
    finally:
        proc.stop()
