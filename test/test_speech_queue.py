"""The speech queue and audio chunking, without ROS or torch."""
import threading

import numpy as np
import pytest

from log_capture import captured_logs
from ros2_chatterbox import audio
from ros2_chatterbox.speech_queue import CANCELLED, ENGINE_ERROR, OK, Job, JobListener, JobResult, QueueFull, \
    SpeechQueue


def make_queue(work, max_size=4):
    q = SpeechQueue(work, max_size=max_size)
    q.start()
    return q


def test_jobs_run_in_order_and_each_is_answered_once():
    order = []
    answers = []

    class L(JobListener):
        def on_done(self, job, result):
            answers.append(job.id)

    q = make_queue(lambda job: (order.append(job.text), JobResult(True, OK, "ok"))[1], max_size=100)
    jobs = [q.submit(Job(str(i), listener=L())) for i in range(20)]
    assert all(j.wait(5).success for j in jobs)
    assert order == [str(i) for i in range(20)]
    assert sorted(answers) == sorted(j.id for j in jobs) and len(set(answers)) == 20
    q.shutdown()


def test_full_queue_refuses_with_reason():
    gate, started = threading.Event(), threading.Event()
    q = make_queue(lambda job: (started.set(), gate.wait(5), JobResult(True, OK, "ok"))[2], max_size=2)
    first = q.submit(Job("running"))
    assert started.wait(5)  # the worker took it, so two more fit
    q.submit(Job("a"))
    q.submit(Job("b"))
    with pytest.raises(QueueFull, match="full"):
        q.submit(Job("c"))
    gate.set()
    assert first.wait(5).success
    q.shutdown()


def test_cancel_all_answers_waiting_and_running_jobs():
    started = threading.Event()

    def work(job):
        started.set()
        job.cancel_event.wait(5)
        return JobResult(False, CANCELLED, "cancelled") if job.cancelled else JobResult(True, OK, "ok")

    q = make_queue(work)
    running = q.submit(Job("running"))
    assert started.wait(5)
    waiting = [q.submit(Job(f"w{i}")) for i in range(3)]
    assert q.cancel_all("stop") == 4
    assert running.wait(5).kind == CANCELLED
    assert all(j.wait(5).kind == CANCELLED for j in waiting)
    q.shutdown()


def test_interrupt_replaces_current_speech():
    started = threading.Event()

    def work(job):
        started.set()
        if job.text == "long":
            job.cancel_event.wait(5)
            return JobResult(False, CANCELLED, "cancelled")
        return JobResult(True, OK, "ok")

    q = make_queue(work)
    long = q.submit(Job("long"))
    assert started.wait(5)
    queued = q.submit(Job("queued"))
    urgent = q.submit(Job("urgent", interrupt=True))
    assert long.wait(5).kind == CANCELLED and queued.wait(5).kind == CANCELLED
    assert urgent.wait(5).success
    q.shutdown()


def test_worker_survives_a_failing_job():
    def work(job):
        if job.text == "boom":
            raise RuntimeError("engine exploded")
        return JobResult(True, OK, "ok")

    q = make_queue(work)
    bad = q.submit(Job("boom")).wait(5)
    assert bad.kind == ENGINE_ERROR and "engine exploded" in bad.message
    assert q.submit(Job("fine")).wait(5).success
    q.shutdown()


def test_shutdown_answers_pending_jobs_and_joins_the_worker():
    def work(job):
        job.cancel_event.wait(5)
        return JobResult(False, CANCELLED, "cancelled")

    q = make_queue(work)
    jobs = [q.submit(Job(str(i))) for i in range(3)]
    assert q.shutdown("bye")
    assert all(j.done and j.result.kind == CANCELLED for j in jobs)


def test_a_listener_failing_on_done_is_logged_and_the_job_still_ends():
    class Broken(JobListener):
        def on_done(self, job, result):
            raise ValueError("listener broke")

    q = SpeechQueue(lambda job: JobResult(True, OK, "ok"))
    q.start()
    with captured_logs("ros2_chatterbox.speech_queue") as logged:
        job = q.submit(Job("x", listener=Broken()))
        assert job.wait(5).success and job.done
        assert q.submit(Job("after")).wait(5).success  # the worker survived
        q.shutdown()
    assert any(level == "error" and "listener broke" in msg for level, msg in logged), logged


def test_cancelled_waiting_jobs_are_answered_outside_the_queue_lock():
    """A listener may look at the queue while it is answered (the node's status does): no deadlock."""
    started = threading.Event()
    seen = []

    class Peek(JobListener):
        def on_done(self, job, result):
            seen.append(q.depth)

    def work(job):
        started.set()
        job.cancel_event.wait(5)
        return JobResult(False, CANCELLED, "cancelled")

    q = make_queue(work)
    q.submit(Job("running"))
    assert started.wait(5)
    waiting = [q.submit(Job(f"w{i}", listener=Peek())) for i in range(2)]
    answered = threading.Thread(target=q.cancel_all, args=("stop",))
    answered.start()
    answered.join(10)
    assert not answered.is_alive() and seen == [0, 0] and all(j.done for j in waiting)
    q.shutdown()


def test_pcm16_round_trip_and_clipping():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, np.nan], dtype=np.float32)
    pcm = audio.to_pcm16(x)
    assert len(pcm) == 2 * len(x)
    y = audio.from_pcm16(pcm)
    assert np.allclose(y[:5], x[:5], atol=1e-4) and y[5] == pytest.approx(1.0, abs=1e-4) and y[6] == 0.0


def test_fade_in_and_out_touch_only_their_edge():
    sr = 24000
    x = np.ones(sr // 10, dtype=np.float32)
    a, b = audio.fade_in(x, sr), audio.fade_out(x, sr)
    assert a[0] == 0.0 and a[-1] == 1.0 and b[0] == 1.0 and b[-1] == 0.0
    both = audio.fade_out(a, sr)  # a piece's two edges: no click at either end, smooth ramps
    assert both[0] == 0.0 and both[-1] == 0.0 and both[len(both) // 2] == 1.0
    assert np.max(np.abs(np.diff(both))) < 0.02
