"""Reliability through ROS: stop, interrupt, deactivate during speech, load of mixed service and topic requests."""
import threading
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from audio_checks import assert_silent_after, now_s
from ros_helpers import NodeProcess, RosClient, utterances

pytestmark = pytest.mark.timeout(300)

# long enough (~20 s) that a stop, an interrupt or a deactivate always lands while it speaks, however loaded the
# machine; every test here cuts it short
LONG = ("This is a long announcement for the stop test. It keeps going for a while. "
        "There are several sentences in it. Each one takes a moment to speak. And then some more words follow. "
        "The robot is still talking. It has a lot to say today. Nobody has asked it to stop yet. "
        "So it carries on with another sentence. And one more after that, to be sure.")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def node_pid(proc: NodeProcess) -> int:
    import subprocess
    out = subprocess.run(["pgrep", "-P", str(proc.proc.pid)], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else proc.proc.pid


@pytest.fixture(scope="module")
def client():
    c = RosClient("reliability")
    c.subscribe_outputs("/rel")
    c.diagnostics = []
    c._subs.append(c.node.create_subscription(DiagnosticArray, "/diagnostics",
                                              lambda m: c.diagnostics.extend(m.status), 50))
    yield c
    c.close()


@pytest.fixture(scope="module")
def node(client):
    proc = NodeProcess({"http.enabled": False, "audio.realtime": True, "queue.max_size": 60}, name="reliability",
                       namespace="/rel")
    assert proc.wait_for_log("active: ready to speak", 90), proc.output()
    yield proc
    proc.stop()


def queue_depth(client, node_name: str) -> int:
    """The node's queue depth from its latest /diagnostics message (-1 before the first one)."""
    for status in reversed(client.diagnostics):
        if status.name.startswith(f"{node_name}:"):
            values = {kv.key: kv.value for kv in status.values}
            return int(values.get("queue_depth", -1))
    return -1


def test_stop_service_silences_within_one_chunk_and_cancels_queue(node, client):
    results = {}
    client.settle()
    n0 = len(client.audio)
    t1 = threading.Thread(target=lambda: results.setdefault("long", client.speak(LONG, ns="/rel")))
    t1.start()
    assert client.wait_until(lambda: len(client.audio) > n0 + 5, 30)
    t2 = threading.Thread(target=lambda: results.setdefault("queued", client.speak("Queued behind.", ns="/rel")))
    t2.start()
    assert client.wait_until(lambda: queue_depth(client, "tts_node") == 1, 30), "the second request never queued"
    res = client.call(Trigger, "/rel/tts/stop", Trigger.Request())
    stopped_at = now_s(client)
    assert res.success and "2 request(s) cancelled" in res.message, res.message
    t1.join(10)
    t2.join(10)
    assert not results["long"].success and "cancelled" in results["long"].message
    assert not results["queued"].success and "cancelled" in results["queued"].message
    assert_silent_after(client, n0, stopped_at, "/rel")
    assert client.wait_until(lambda: client.speaking[-1] is False, 10)



def test_interrupt_request_replaces_current_speech(node, client):
    results = {}
    client.settle()
    n0 = len(client.audio)
    t1 = threading.Thread(target=lambda: results.setdefault("long", client.speak(LONG, ns="/rel")))
    t1.start()
    assert client.wait_until(lambda: len(client.audio) > n0 + 5, 30)
    urgent = client.speak("Urgent!", interrupt=True, ns="/rel")
    t1.join(10)
    assert urgent.success
    assert not results["long"].success and "interrupted" in results["long"].message
    assert_silent_after(client, n0, None, "/rel")  # silent by the time the urgent words start


def test_deactivate_during_speech_answers_in_flight_and_never_hangs(client):
    proc = NodeProcess({"http.enabled": False, "audio.realtime": True}, name="deact", namespace="/deact")
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        client.subscribe_outputs("/deact")
        results = []
        n0 = len(client.audio)
        threads = [threading.Thread(target=lambda: results.append(client.speak(LONG, ns="/deact")))
                   for _ in range(3)]
        for t in threads:
            t.start()
        assert client.wait_until(lambda: len(client.audio) > n0 + 5, 30), "the first request never spoke"
        assert client.change_state("deactivate", "/deact/tts_node", timeout=20)
        for t in threads:
            t.join(10)
        # requests that reached the node were cancelled; one that arrived after deactivate is refused
        assert len(results) == 3 and all(not r.success for r in results)
        assert all("cancel" in r.message or "not active" in r.message for r in results), \
            [r.message for r in results]
        assert sum("cancel" in r.message for r in results) >= 1
        assert client.change_state("cleanup", "/deact/tts_node", timeout=20)
        assert client.get_state("/deact/tts_node") == "unconfigured"
    finally:
        proc.stop()


def answered(service_client, request, timeout: float) -> bool:
    """Call until one answer comes back (a request sent before discovery completes can be lost), within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fut = service_client.call_async(request)
        done = threading.Event()
        fut.add_done_callback(lambda _: done.set())
        if done.wait(min(2.0, max(0.0, deadline - time.monotonic()))):
            return True
    return False


def test_fifty_mixed_ros_requests_all_answered(client):
    """25 service calls and 25 topic messages at once: every service call answered, every message spoken."""
    proc = NodeProcess({"http.enabled": False, "audio.realtime": False, "queue.max_size": 60}, name="load",
                       namespace="/load")
    c = RosClient("load")
    c.subscribe_outputs("/load")
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        pid = node_pid(proc)
        assert c.speak("Warm up.", ns="/load").success
        rss0 = rss_kb(pid)
        pub = c.node.create_publisher(String, "/load/tts/text",
                                      QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE))
        assert c.wait_until(lambda: pub.get_subscription_count() > 0, 10)
        c.settle()
        c.audio.clear()
        answers = []
        lock = threading.Lock()
        # one client per caller, created and discovered up front (as separate robot nodes would be): a reply to
        # a client whose response reader is not yet matched is a DDS discovery race, not the node's doing
        from ros2_chatterbox.srv import Speak
        clients = [c.node.create_client(Speak, "/load/speak") for _ in range(25)]
        assert all(cl.wait_for_service(timeout_sec=10) for cl in clients)
        for cl in clients:  # one answered round trip each: its response reader is matched
            assert answered(cl, Speak.Request(text=""), 30), "a client never got an answer to its warm-up call"

        def call(i):
            fut = clients[i].call_async(Speak.Request(text=f"Service request {i}."))
            done = threading.Event()
            fut.add_done_callback(lambda _: done.set())
            done.wait(180)
            with lock:
                answers.append(fut.result() if fut.done() else None)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(25)]
        for t in threads:
            t.start()
        for i in range(25):
            pub.publish(String(data=f"Topic message {i}."))
        for t in threads:
            t.join(240)
        sr = c.audio_info[-1].sample_rate
        assert len(answers) == 25 and None not in answers, "a service call got no answer"
        assert all(a.success for a in answers), [a.message for a in answers if not a.success]
        assert c.wait_until(lambda: len(utterances(c.audio, sr)) >= 50, 120), len(utterances(c.audio, sr))
        rss1 = rss_kb(pid)
        assert c.speak("Still serving after the load.", ns="/load").success
        print(f"node RSS before {rss0 / 1024:.0f} MiB, after 50 requests {rss1 / 1024:.0f} MiB")
        assert rss1 < rss0 + 150 * 1024
    finally:
        c.close()
        proc.stop()
