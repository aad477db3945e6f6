"""Reliability through ROS: stop, interrupt, deactivate during speech, load of mixed service and topic requests."""
import threading
import time

import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ros_helpers import NodeProcess, RosClient, utterances

pytestmark = pytest.mark.timeout(300)

LONG = ("This is a long announcement for the stop test. It keeps going for a while. "
        "There are several sentences in it. Each one takes a moment to speak. And then some more words follow.")


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
    yield c
    c.close()


@pytest.fixture(scope="module")
def node(client):
    proc = NodeProcess({"http.enabled": False, "audio.realtime": True, "queue.max_size": 60}, name="reliability",
                       namespace="/rel")
    assert proc.wait_for_log("active: ready to speak", 90), proc.output()
    yield proc
    proc.stop()


def test_stop_service_silences_within_one_chunk_and_cancels_queue(node, client):
    results = {}
    t1 = threading.Thread(target=lambda: results.setdefault("long", client.speak(LONG, ns="/rel")))
    t1.start()
    assert client.wait_until(lambda: len(client.audio) > 5, 30)
    t2 = threading.Thread(target=lambda: results.setdefault("queued", client.speak("Queued behind.", ns="/rel")))
    t2.start()
    time.sleep(0.3)
    res = client.call(Trigger, "/rel/tts/stop", Trigger.Request())
    t_stop = time.monotonic()
    n_at_stop = len(client.audio)
    assert res.success and "2 request(s) cancelled" in res.message, res.message
    t1.join(10)
    t2.join(10)
    assert not results["long"].success and "cancelled" in results["long"].message
    assert not results["queued"].success and "cancelled" in results["queued"].message
    time.sleep(0.5)
    assert len(client.audio) - n_at_stop <= 1, "audio kept flowing after the stop"
    assert client.speaking[-1] is False
    assert client.speak("After the stop I still speak.", ns="/rel").success



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


def test_deactivate_during_speech_answers_in_flight_and_never_hangs(client):
    proc = NodeProcess({"http.enabled": False, "audio.realtime": True}, name="deact", namespace="/deact")
    try:
        assert proc.wait_for_log("active: ready to speak", 90), proc.output()
        results = []
        threads = [threading.Thread(target=lambda: results.append(client.speak(LONG, ns="/deact")))
                   for _ in range(3)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        time.sleep(1.5)
        t0 = time.monotonic()
        assert client.change_state("deactivate", "/deact/tts_node", timeout=20)
        assert time.monotonic() - t0 < 5
        for t in threads:
            t.join(10)
        assert len(results) == 3 and all(not r.success and "cancel" in r.message for r in results)
        t0 = time.monotonic()
        assert client.change_state("cleanup", "/deact/tts_node", timeout=20)
        assert client.get_state("/deact/tts_node") == "unconfigured"
    finally:
        proc.stop()


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
        time.sleep(1.0)

        def call(i):
            fut = clients[i].call_async(Speak.Request(text=f"Service request {i}."))
            end = time.monotonic() + 180
            while not fut.done() and time.monotonic() < end:
                time.sleep(0.05)
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
