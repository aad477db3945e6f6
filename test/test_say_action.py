"""The `say` action from an rclpy action client in this (separate) process: feedback, cancel, order, interrupt."""
import threading
import time

import pytest
from action_msgs.msg import GoalStatus

from ros2_chatterbox.action import Say
from ros_helpers import NodeProcess, RosClient, utterances
from std_srvs.srv import Trigger
from audio_checks import assert_silent_after, now_s

pytestmark = pytest.mark.timeout(240)

STORY = ("Once upon a time a robot learned to speak. It practised every morning. "
         "Its friends listened carefully. Then it told them a very long story about the sea.")


@pytest.fixture(scope="module")
def client():
    c = RosClient("say_test")
    c.subscribe_outputs("/act")
    yield c
    c.close()


@pytest.fixture(scope="module")
def node(client):
    proc = NodeProcess({"http.enabled": False, "audio.realtime": True}, name="say", namespace="/act")
    assert proc.wait_for_log("active: ready to speak", 90), proc.output()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def action(client, node):
    ac = client.action_client(Say, "/act/say")
    assert ac.wait_for_server(timeout_sec=20)
    return ac


def wait(future, timeout=60.0):
    end = time.monotonic() + timeout
    while not future.done() and time.monotonic() < end:
        time.sleep(0.02)
    assert future.done(), "no answer"
    return future.result()


def send(action, text, interrupt=False, feedback=None):
    handle = wait(action.send_goal_async(Say.Goal(text=text, interrupt=interrupt), feedback_callback=feedback))
    assert handle.accepted
    return handle


def test_feedback_arrives_during_a_multi_sentence_goal(action, client):
    feedback = []
    handle = send(action, STORY, feedback=lambda m: feedback.append(m.feedback))
    # feedback and result travel on separate channels, and rclpy's client drops the feedback callback once the
    # result has arrived: the final feedback (sent before the result) is awaited before the result is asked for
    # (the server keeps a goal's result for its result_timeout, 15 min by default)
    assert client.wait_until(lambda: feedback and feedback[-1].progress == pytest.approx(1.0), 90), \
        [f.progress for f in feedback]
    result = wait(handle.get_result_async(), 30)
    assert result.status == GoalStatus.STATUS_SUCCEEDED and result.result.success
    assert len(feedback) >= 4
    progress = [f.progress for f in feedback]
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    assert 0 < progress[len(progress) // 2] < 1
    assert {f.current_sentence for f in feedback} >= {"It practised every morning."}
    assert feedback[-1].audio_seconds == pytest.approx(result.result.duration, abs=0.01)


def test_cancel_stops_the_audio_stream(action, client):
    client.settle()
    n0 = len(client.audio)
    handle = send(action, STORY)
    assert client.wait_until(lambda: len(client.audio) > n0 + 5, 30)
    wait(handle.cancel_goal_async(), 10)
    canceled_at = now_s(client)
    result = wait(handle.get_result_async(), 20)
    assert result.status == GoalStatus.STATUS_CANCELED and not result.result.success
    assert 0 < result.result.duration < 10, result.result.message
    assert_silent_after(client, n0, canceled_at, "/act")


def test_stop_service_ends_a_running_goal_as_canceled(action, client):
    client.settle()
    n0 = len(client.audio)
    handle = send(action, STORY)
    assert client.wait_until(lambda: len(client.audio) > n0 + 5, 30)
    assert client.call(Trigger, "/act/tts/stop", Trigger.Request()).success
    result = wait(handle.get_result_async(), 20)
    assert result.status == GoalStatus.STATUS_CANCELED, result.result.message
    assert "stopped by tts/stop" in result.result.message


def test_queued_goals_run_in_order(action, client):
    sr = client.audio_info[-1].sample_rate
    client.settle()
    client.audio.clear()
    texts = ["One.", "This is the second goal and it is clearly the longest of the three goals.", "Three."]
    handles = [send(action, t) for t in texts]
    results = [wait(h.get_result_async(), 90) for h in handles]
    assert all(r.status == GoalStatus.STATUS_SUCCEEDED for r in results)
    client.settle()
    durations = [sum(len(m.audio.data) for m in g) / 2 / sr for g in utterances(client.audio, sr)]
    assert len(durations) == 3 and durations[1] > 2 * max(durations[0], durations[2]), durations
    assert [round(r.result.duration, 2) for r in results] == [round(d, 2) for d in durations]


def test_interrupt_goal_replaces_current_speech(action, client):
    client.settle()
    n0 = len(client.audio)
    first = send(action, STORY)
    assert client.wait_until(lambda: len(client.audio) > n0 + 5, 30)
    urgent = send(action, "Excuse me!", interrupt=True)
    r1 = wait(first.get_result_async(), 20)
    r2 = wait(urgent.get_result_async(), 30)
    assert r1.status == GoalStatus.STATUS_CANCELED and "interrupted" in r1.result.message
    assert r2.status == GoalStatus.STATUS_SUCCEEDED


def test_invalid_goal_is_aborted_with_a_reason(action):
    r = wait(send(action, "   ").get_result_async(), 10)
    assert r.status == GoalStatus.STATUS_ABORTED and "empty" in r.result.message
    handle = wait(action.send_goal_async(Say.Goal(text="Bonjour.", language="fr")))
    r = wait(handle.get_result_async(), 10)
    assert r.status == GoalStatus.STATUS_ABORTED and "supported: en" in r.result.message, r.result.message
