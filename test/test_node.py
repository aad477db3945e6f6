"""The node as a robot uses it: its own process, driven by rclpy clients over DDS (embedded Piper voice)."""
import time

import numpy as np
import pytest

from ros_helpers import NodeProcess, RosClient, stamp_s, utterances

pytestmark = pytest.mark.timeout(300)

FAST = {"http.enabled": False, "audio.realtime": False}


@pytest.fixture(scope="module")
def client():
    c = RosClient("node_test")
    c.subscribe_outputs()
    yield c
    c.close()


@pytest.fixture(scope="module")
def node(client):
    """One autostarted node (as `make run` starts it), shared by the tests of this module."""
    proc = NodeProcess(FAST, autostart=True, name="node")
    assert proc.wait_for_log("active: ready to speak", 90), proc.output()
    yield proc
    rc = proc.stop()
    assert rc == 0, f"node exited with {rc}\n{proc.output()[-3000:]}"


def test_speak_publishes_audio_matching_duration(node, client):
    assert client.wait_until(lambda: client.audio_info, 10), "no tts/audio_info (TRANSIENT_LOCAL)"
    info = client.audio_info[-1]
    assert (info.channels, info.sample_format, info.coding_format) == (1, "S16LE", "wave")
    client.settle()
    client.audio.clear()
    t0 = time.monotonic()
    res = client.speak("Hello! I am the robot, and I can speak.")
    latency = time.monotonic() - t0
    assert res.success, res.message
    assert res.sample_rate == info.sample_rate
    assert 1.0 < res.duration < 10.0
    assert client.wait_until(lambda: abs(client.audio_seconds(info.sample_rate) - res.duration) < 1e-3, 5), \
        (client.audio_seconds(info.sample_rate), res.duration)
    # header stamps advance by each chunk's duration, chunks are 100 ms (parameter audio.chunk_ms)
    groups = utterances(client.audio, info.sample_rate)
    assert len(groups) == 1
    sizes = [len(m.audio.data) // 2 for m in client.audio]
    assert all(s == round(info.sample_rate * 0.1) for s in sizes[:-1])
    pcm = np.frombuffer(b"".join(bytes(m.audio.data) for m in client.audio), "<i2").astype(np.float32)
    assert np.sqrt(np.mean(pcm ** 2)) > 300, "audio is (nearly) silent"
    print(f"/speak one sentence: {latency:.2f} s for {res.duration:.2f} s of audio")


def test_speaking_flag_follows_utterance(node, client):
    client.speaking.clear()
    res = client.speak("Speaking flag test.")
    assert res.success
    assert client.wait_until(lambda: client.speaking[-2:] == [True, False], 5), client.speaking


def test_text_topic_spoken_in_order(node, client):
    from std_msgs.msg import String
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    pub = client.node.create_publisher(String, "/tts/text", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    assert client.wait_until(lambda: pub.get_subscription_count() > 0, 10)
    # Discovery is not symmetric: this publisher can see the node's subscription before the node has matched this
    # publisher, and a message sent in between is lost (VOLATILE; "Hi." was, once, under load). A probe the node
    # speaks proves the match.
    client.settle()
    client.audio.clear()

    def probe_heard():
        pub.publish(String(data="Ready."))
        return client.wait_until(lambda: len(client.audio) > 0, 10)
    assert client.wait_until(probe_heard, 60, 0), "the node never heard this publisher"
    assert client.wait_until(lambda: client.speaking and client.speaking[-1] is False, 30), client.speaking
    sr = client.audio_info[-1].sample_rate
    client.settle(quiet=1.0)
    client.audio.clear()
    texts = ["Hi.", "This second message is a good deal longer than the first and the third one.", "Okay then."]
    for t in texts:
        pub.publish(String(data=t))
    def three():
        return len(utterances(client.audio, sr)) == 3 and client.speaking and client.speaking[-1] is False
    assert client.wait_until(three, 60), [(len(g), stamp_s(g[0])) for g in utterances(client.audio, sr)]
    durations = [sum(len(m.audio.data) for m in g) / 2 / sr for g in utterances(client.audio, sr)]
    assert durations[1] > 2 * durations[0] and durations[1] > 2 * durations[2], durations
    client.node.destroy_publisher(pub)


@pytest.mark.parametrize("text, reason", [("", "empty"), ("   \n\t ", "empty"), ("?!... ", "nothing to pronounce")])
def test_empty_text_is_a_clear_failure(node, client, text, reason):
    res = client.speak(text)
    assert not res.success and reason in res.message
    assert client.speak("Still here.").success


def test_unknown_voice_and_path_tricks_fail_clearly(node, client):
    for voice in ["nobody", "../../etc/passwd", "/etc/passwd", "..", "a/b"]:
        res = client.speak("Hello.", voice=voice)
        assert not res.success and "voice" in res.message, (voice, res.message)
    assert client.speak("Still serving.").success


def test_language_on_speak_and_the_languages_list(node, client):
    """The embedded Piper voice speaks en: speak with language fr is refused naming en; en and '' (the default,
    what existing callers send) speak; languages/list says so."""
    from ros2_chatterbox.srv import ListLanguages, Speak
    res = client.call(Speak, "/speak", Speak.Request(text="Bonjour.", language="fr"))
    assert not res.success and "'fr' is not supported" in res.message and "supported: en" in res.message, res.message
    assert client.call(Speak, "/speak", Speak.Request(text="Hello.", language="en-GB")).success
    assert client.speak("Hello.").success
    langs = client.call(ListLanguages, "/languages/list", ListLanguages.Request())
    assert langs.success, langs.message
    assert (list(langs.codes), list(langs.names), langs.default_language, langs.model) == \
        (["en"], ["English"], "en", "piper")


def test_lifecycle_walk_and_inactive_requests(client):
    """configure, activate, deactivate, cleanup, configure, activate, shutdown, with /speak checked at each."""
    ns, lc = "/lifecycle", "/lifecycle/tts_node"  # a namespace of its own: the shared node also runs
    proc = NodeProcess(FAST, autostart=False, name="lifecycle", namespace=ns)
    try:
        assert client.wait_until(lambda: client.try_state(lc) == "unconfigured", 60), proc.output()
        res = client.speak("Not yet.", ns=ns)
        assert not res.success and "not active" in res.message
        assert client.change_state("configure", lc), proc.output()
        assert client.get_state(lc) == "inactive"
        res = client.speak("Still inactive.", ns=ns)
        assert not res.success and "not active" in res.message and "inactive" in res.message
        assert client.change_state("activate", lc)
        assert client.speak("Now I am active.", ns=ns).success
        assert client.change_state("deactivate", lc)
        assert not client.speak("Deactivated.", ns=ns).success
        assert client.change_state("cleanup", lc)
        assert client.get_state(lc) == "unconfigured"
        assert "model released" in proc.output()
        assert client.change_state("configure", lc)
        assert client.change_state("activate", lc)
        assert client.speak("Back again.", ns=ns).success
        assert client.change_state("shutdown", lc)
        assert client.get_state(lc) == "finalized"
    finally:
        proc.stop()



def test_configure_fails_cleanly_without_fallback(client):
    proc = NodeProcess({**FAST, "engine": "chatterbox_turbo", "model_dir": "/nonexistent/model"},
                       autostart=False, name="badmodel", namespace="/bad")
    try:
        assert client.wait_until(lambda: client.try_state("/bad/tts_node") == "unconfigured", 60)
        assert not client.change_state("configure", "/bad/tts_node")
        assert client.get_state("/bad/tts_node") == "unconfigured"
        assert "configure failed" in proc.output() and "/nonexistent/model" in proc.output()
        assert proc.alive()
    finally:
        proc.stop()


def test_fallback_engine_serves_and_says_so(client):
    """...in its diagnostics, and in its log: the core's warning (a library's stdlib logger) is the node's, printed
    once and published on /rosout under the node's name."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    diags, rosout = [], []
    sub = client.node.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    rosout_sub = client.node.create_subscription(Log, "/rosout", rosout.append, QoSProfile(
        depth=1000, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    proc = NodeProcess({**FAST, "engine": "chatterbox_turbo", "model_dir": "/nonexistent/model",
                        "fallback_engine": "piper"}, autostart=True, name="fallback", namespace="/fb")
    warning = "using fallback engine 'piper'"
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        assert "FALLBACK" in proc.output()
        said = [line for line in proc.output().splitlines() if warning in line]
        assert len(said) == 1 and said[0].startswith("[WARN]") and "[fb.tts_node]:" in said[0], proc.output()
        assert client.speak("Speaking on the fallback engine.", ns="/fb").success
        assert client.wait_until(lambda: any("fallback" in s.message for d in diags for s in d.status), 10)
        assert client.wait_until(lambda: any(warning in m.msg for m in rosout), 10), [m.msg for m in rosout]
        published = [m for m in rosout if warning in m.msg]
        assert len(published) == 1 and published[0].name == "fb.tts_node" and published[0].level == Log.WARN
    finally:
        client.node.destroy_subscription(sub)
        client.node.destroy_subscription(rosout_sub)
        proc.stop()
