"""The speech core without ROS: faults, cancellation, idle unload, exactly-once answers (fake and Piper engines)."""
import threading
import time

import numpy as np
import pytest

from ros2_chatterbox import config as cfgmod
from ros2_chatterbox.core import RequestError, SpeechCore
from ros2_chatterbox.engine import Engine, GenerationSettings
from ros2_chatterbox.speech_queue import CANCELLED, ENGINE_ERROR, INVALID, QUEUE_FULL, JobListener

SR = 16000


class FakeEngine(Engine):
    """Yields 0.1 s parts; `plan` maps text to a behaviour: "explode" raises mid-utterance, "memhog" raises CUDA OOM."""
    name = "fake"
    can_clone = True

    def __init__(self, config):
        super().__init__(config)
        self.sample_rate = SR
        self._loaded = False
        self.loads = 0
        self.freed = 0
        self.part_delay = 0.0

    def load(self):
        self._loaded = True
        self.loads += 1

    def unload(self):
        self._loaded = False

    @property
    def loaded(self):
        return self._loaded

    def free_memory(self):
        self.freed += 1

    def synthesize(self, text, voice_path, settings, cancel):
        for i in range(max(1, len(text) // 10)):
            if "explode" in text and i == 2:
                raise RuntimeError("kaboom inside the engine")
            if "memhog" in text and i == 1:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            time.sleep(self.part_delay)
            yield np.full(SR // 10, 0.1, dtype=np.float32)


@pytest.fixture
def core(monkeypatch, tmp_path):
    engine = FakeEngine({})
    monkeypatch.setattr("ros2_chatterbox.core.create_engine", lambda name, config: engine)
    values = cfgmod.defaults()
    values.update({"voices_dir": str(tmp_path), "queue.max_size": 4, "audio.sentence_pause_ms": 0})
    c = SpeechCore(values)
    c.load()
    c.fake = engine
    yield c
    c.unload()


class Collect(JobListener):
    def __init__(self):
        self.samples = 0
        self.results = []

    def on_audio(self, job, samples):
        self.samples += len(samples)

    def on_done(self, job, result):
        self.results.append(result)


def test_engine_exception_fails_that_request_and_next_succeeds(core):
    bad = core.submit("this text will explode in the middle of it").wait(10)
    assert not bad.success and bad.kind == ENGINE_ERROR and "kaboom" in bad.message
    assert core.status()["last_error"]
    assert core.submit("a fine sentence after the failure").wait(10).success


def test_out_of_memory_frees_caches_and_recovers(core):
    r = core.submit("this one is a memhog and runs out of memory").wait(10)
    assert not r.success and "out of memory" in r.message and core.fake.freed == 1
    assert core.submit("recovered and speaking again").wait(10).success


def test_each_request_answered_exactly_once_under_concurrency(core):
    core.fake.part_delay = 0.002
    listeners, outcomes = [], []
    lock = threading.Lock()

    def client(i):
        lst = Collect()
        try:
            job = core.submit(f"request number {i} speaks", listener=lst)
            res = job.wait(30)
            with lock:
                outcomes.append(res.kind)
        except RequestError as exc:
            with lock:
                outcomes.append(exc.kind)
        listeners.append(lst)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 50
    assert set(outcomes) <= {"ok", QUEUE_FULL}
    assert all(len(lst.results) <= 1 for lst in listeners)
    assert outcomes.count("ok") == sum(len(lst.results) for lst in listeners)
    assert core.submit("still alive after the burst").wait(10).success


def test_stop_cancels_current_within_one_chunk_and_clears_queue(core):
    core.config["audio.chunk_ms"] = 100
    core.fake.part_delay = 0.05
    lst = Collect()
    running = core.submit("x" * 400, listener=lst)  # 4 s of audio
    waiting = core.submit("queued behind it")
    while lst.samples == 0:
        time.sleep(0.01)
    n = core.stop("operator pressed stop")
    before = lst.samples
    r = running.wait(5)
    assert r.kind == CANCELLED and "operator pressed stop" in r.message
    assert lst.samples - before <= SR // 10  # at most one more chunk after the stop
    assert waiting.wait(5).kind == CANCELLED and n == 2


def test_interrupt_option_replaces_current_speech(core):
    core.fake.part_delay = 0.05
    long = core.submit("y" * 400)
    time.sleep(0.2)
    urgent = core.submit("urgent words", interrupt=True)
    assert long.wait(5).kind == CANCELLED
    assert urgent.wait(5).success


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"), ("   \t\n", "empty"), ("\x00\x01\x02", "empty"), ("!!! ...", "nothing to pronounce"),
    ("a" * 100_000, "limit"), (None, "string"), (12, "string")])
def test_hostile_text_is_refused_with_a_reason(core, text, fragment):
    with pytest.raises(RequestError) as info:
        core.submit(text)
    assert info.value.kind == INVALID and fragment in info.value.message


@pytest.mark.parametrize("voice", ["../secret", "/etc/passwd", "a/b", "..", "x" * 200, "nobody", "voice\x00"])
def test_hostile_voice_names_are_refused(core, voice):
    with pytest.raises(RequestError) as info:
        core.submit("hello there", voice=voice)
    assert info.value.kind == INVALID and "voice" in info.value.message


@pytest.mark.parametrize("overrides", [{"temperature": float("nan")}, {"top_p": float("inf")}, {"top_k": 0},
                                       {"seed": -1}, {"bogus": 1}, {"watermark": "yes"}])
def test_bad_generation_overrides_are_refused(core, overrides):
    with pytest.raises(RequestError) as info:
        core.submit("hello there", overrides=overrides)
    assert info.value.kind == INVALID


def test_control_characters_are_removed_not_spoken(core):
    job = core.submit("Hello\x07 there\x1b[31m friend")
    assert "\x07" not in job.text and "\x1b" not in job.text
    assert job.wait(10).success


def test_idle_unload_frees_the_model_and_reloads_on_demand(core):
    assert core.submit("warm up the model").wait(10).success
    core.config["idle_unload_s"] = 0.5
    deadline = time.monotonic() + 10
    while core.fake.loaded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not core.fake.loaded and core.status()["unloaded_for_idle"]
    assert core.submit("wake up and speak").wait(10).success
    assert core.fake.loads == 2 and not core.status()["unloaded_for_idle"]


def test_unload_answers_in_flight_requests_as_cancelled(core):
    core.fake.part_delay = 0.05
    jobs = [core.submit("z" * 300) for _ in range(3)]
    time.sleep(0.2)
    t0 = time.monotonic()
    core.unload("cleanup during synthesis")
    assert time.monotonic() - t0 < 5
    assert all(j.wait(5).kind == CANCELLED for j in jobs)
    with pytest.raises(RequestError):
        core.submit("after unload")


def test_queue_full_is_reported(core):
    core.fake.part_delay = 0.05
    core.submit("w" * 300)
    time.sleep(0.1)
    for _ in range(4):
        core.submit("waiting in line")
    with pytest.raises(RequestError) as info:
        core.submit("one too many")
    assert info.value.kind == QUEUE_FULL
    core.stop()


def test_generation_settings_from_config_and_overrides():
    s = GenerationSettings.from_values(cfgmod.defaults())
    assert s.top_k == 1000 and s.watermark is True
    t = s.with_overrides({"temperature": 1, "seed": 7})
    assert t.temperature == 1.0 and isinstance(t.temperature, float) and t.seed == 7


def test_parts_of_one_piece_join_without_a_dip(core):
    """Only a piece's outer edges are faded; the joins between its streamed parts are left untouched."""
    class Keep(JobListener):
        def __init__(self):
            self.parts = []

        def on_audio(self, job, samples):
            self.parts.append(samples.copy())

    keep = Keep()
    assert core.submit("one piece of text in several parts", listener=keep).wait(10).success  # 3 parts of 0.1 s
    x = np.concatenate(keep.parts)
    edge = int(SR * 0.005)
    assert x[0] == 0.0 and x[-1] == 0.0
    assert np.allclose(x[edge:-edge], 0.1)
