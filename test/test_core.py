"""The speech core without ROS: faults, cancellation, idle unload, exactly-once answers, voice management."""
import io
import threading
import time

import numpy as np
import pytest

from ros2_chatterbox import settings as cfgmod
from ros2_chatterbox.core import VOICE_EXISTS, VOICE_IN_USE, VOICE_NOT_FOUND, RequestError, SpeechCore
from ros2_chatterbox.engine import Engine, GenerationSettings
from ros2_chatterbox.speech_queue import CANCELLED, ENGINE_ERROR, INVALID, QUEUE_FULL, UNAVAILABLE, JobListener

SR = 16000


class FakeEngine(Engine):
    """Yields 0.1 s parts, one per 10 characters. Text containing "explode" raises mid-utterance, "memhog" raises
    CUDA OOM, "hold" yields two parts and then blocks until the request is cancelled."""
    name = "fake"
    can_clone = True

    def __init__(self, config):
        super().__init__(config)
        self.sample_rate = SR
        self._loaded = False
        self.loads = 0
        self.freed = 0
        self.part_delay = 0.0  # simulated synthesis time per part (never used to synchronise a test)

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
            if "hold" in text and i == 2:  # two parts out (the core holds one back for its fade), then wait
                cancel.wait(30)
            elif self.part_delay:
                cancel.wait(self.part_delay)
            yield np.full(SR // 10, 0.1, dtype=np.float32)


@pytest.fixture
def core(monkeypatch, tmp_path):
    engine = FakeEngine(cfgmod.EngineSettings())
    monkeypatch.setattr("ros2_chatterbox.core.create_engine", lambda name, settings, max_piece_chars=None: engine)
    values = cfgmod.defaults()
    values.update({"voices_dir": str(tmp_path), "queue.max_size": 4, "audio.sentence_pause_ms": 0})
    c = SpeechCore(cfgmod.Settings.from_values(values))
    c.load()
    c.fake = engine
    yield c
    c.unload()


class Collect(JobListener):
    def __init__(self):
        self.samples = 0
        self.results = []
        self.audio = threading.Event()

    def on_audio(self, job, samples):
        self.samples += len(samples)
        self.audio.set()

    def on_done(self, job, result):
        self.results.append(result)


def test_engine_exception_fails_that_request_and_next_succeeds(core):
    bad = core.submit("this text will explode in the middle of it").wait(10)
    assert not bad.success and bad.kind == ENGINE_ERROR and "kaboom" in bad.message
    assert core.status().last_error
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


def test_cancel_all_stops_current_within_one_chunk_and_clears_queue(core):
    lst = Collect()
    running = core.submit("hold " + "x " * 200, listener=lst, chunk_ms=50)  # 4 s of audio, held after 0.1 s
    waiting = core.submit("queued behind it")
    assert lst.audio.wait(10)
    n = core.cancel_all("operator pressed stop")
    before = lst.samples
    r = running.wait(5)
    assert r.kind == CANCELLED and "operator pressed stop" in r.message
    assert lst.samples - before <= SR // 20  # at most one more chunk after the stop
    assert waiting.wait(5).kind == CANCELLED and n == 2


def test_cancel_one_request_leaves_the_others(core):
    lst = Collect()
    running = core.submit("hold " + "x " * 50, listener=lst)
    waiting = core.submit("waiting in line")
    after = core.submit("and another one")
    assert lst.audio.wait(10)
    core.cancel(waiting, "not needed")
    assert waiting.wait(5).kind == CANCELLED
    core.cancel(running, "goal canceled")
    assert running.wait(5).kind == CANCELLED and "goal canceled" in running.result.message
    assert after.wait(10).success


def test_chunk_size_is_chosen_per_request(core):
    class Sizes(JobListener):
        def __init__(self):
            self.sizes = []

        def on_audio(self, job, samples):
            self.sizes.append(len(samples))

    a, b = Sizes(), Sizes()
    assert core.submit("x" * 40, listener=a, chunk_ms=20).wait(10).success
    assert core.submit("x" * 40, listener=b, chunk_ms=200).wait(10).success
    assert set(a.sizes) == {SR // 50} and b.sizes[0] == SR // 5 and sum(a.sizes) == sum(b.sizes)


def test_interrupt_option_replaces_current_speech(core):
    lst = Collect()
    long = core.submit("hold " + "y " * 200, listener=lst)
    assert lst.audio.wait(10)
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
    core.apply(core.settings.with_values({"idle_unload_s": 0.5}))
    deadline = time.monotonic() + 10
    while core.fake.loaded and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not core.fake.loaded and core.status().unloaded_for_idle
    assert core.submit("wake up and speak").wait(10).success
    assert core.fake.loads == 2 and not core.status().unloaded_for_idle


def test_unload_answers_in_flight_requests_as_cancelled(core):
    lst = Collect()
    jobs = [core.submit("hold " + "z " * 150, listener=lst)] + [core.submit("z" * 300) for _ in range(2)]
    assert lst.audio.wait(10)
    core.unload("cleanup during synthesis")
    assert all(j.done and j.result.kind == CANCELLED for j in jobs)  # answered before unload returned
    with pytest.raises(RequestError):
        core.submit("after unload")


def test_queue_full_is_reported(core):
    lst = Collect()
    core.submit("hold " + "w " * 150, listener=lst)
    assert lst.audio.wait(10)  # the worker holds it: four more fit
    for _ in range(4):
        core.submit("waiting in line")
    with pytest.raises(RequestError) as info:
        core.submit("one too many")
    assert info.value.kind == QUEUE_FULL
    core.cancel_all()


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


def _reference_wav(seconds=6.0, sr=16000):
    import soundfile as sf
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), sr, format="WAV")
    return buf.getvalue()


def test_voices_list_add_delete_through_the_core(core, tmp_path):
    assert core.list_voices() == []
    added = core.add_voice("alice", _reference_wav())
    assert added.name == "alice" and added.file == "alice.wav" and added.duration == pytest.approx(6.0)
    assert [v.name for v in core.list_voices()] == ["alice"]
    assert core.submit("hello from alice", voice="alice").wait(10).success
    with pytest.raises(RequestError) as info:
        core.add_voice("alice", _reference_wav())
    assert info.value.kind == VOICE_EXISTS
    assert core.add_voice("alice", _reference_wav(7.0), overwrite=True).duration == pytest.approx(7.0)
    assert core.delete_voice("alice") == "alice" and core.list_voices() == []
    with pytest.raises(RequestError) as info:
        core.delete_voice("alice")
    assert info.value.kind == VOICE_NOT_FOUND


def test_add_voice_from_a_file_and_from_a_file_name(core, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    path = src / "My voice (2).wav"
    path.write_bytes(_reference_wav())
    assert core.add_voice_file("", str(path)).name == "My_voice_2"
    assert core.add_voice_file("bob", str(path)).name == "bob"
    with pytest.raises(RequestError) as info:
        core.add_voice_file("carl", str(tmp_path / "missing.wav"))
    assert info.value.kind == INVALID and info.value.param == "file"


@pytest.mark.parametrize("name, data, param", [
    ("../evil", None, "name"), ("a/b", None, "name"), ("ok", b"not audio at all", "file"), ("short", 1.0, "file")])
def test_bad_voice_uploads_are_refused_with_the_field_at_fault(core, name, data, param):
    if data is None:
        data = _reference_wav()
    elif isinstance(data, float):
        data = _reference_wav(seconds=data)
    with pytest.raises(RequestError) as info:
        core.add_voice(name, data)
    assert info.value.kind == INVALID and info.value.param == param
    assert core.list_voices() == []


def test_the_default_voice_cannot_be_deleted(core):
    core.add_voice("alice", _reference_wav())
    core.apply(core.settings.with_values({"default_voice": "alice"}))
    with pytest.raises(RequestError) as info:
        core.delete_voice("alice")
    assert info.value.kind == VOICE_IN_USE


def test_voices_are_unavailable_before_load():
    c = SpeechCore(cfgmod.Settings())
    with pytest.raises(RequestError) as info:
        c.list_voices()
    assert info.value.kind == UNAVAILABLE
    with pytest.raises(RequestError) as info:
        c.submit("hello")
    assert info.value.kind == UNAVAILABLE


def test_status_has_no_door_notions_and_readiness_means_the_configured_engine(core):
    st = core.status()
    assert "lifecycle_state" not in st.as_dict()
    assert st.ready and st.accepting and not st.using_fallback
    assert st.engine.engine == "fake" and st.queue_max == 4 and st.as_dict()["engine"] == "fake"
    core.fallback_reason = "engine 'chatterbox_turbo' could not load: no weights"
    st = core.status()
    assert st.accepting and not st.ready and st.using_fallback


def test_run_time_settings_apply_to_the_next_request(core):
    core.apply(core.settings.with_values({"text.max_chars": 10}))
    with pytest.raises(RequestError, match="limit is 10"):
        core.submit("this is longer than ten characters")


def test_a_language_the_model_does_not_speak_is_refused_before_queueing(core):
    """The engine speaks en (the interface's default): fr is refused naming what it speaks, and nothing is queued;
    en, a region tag of it, or none (the parameter's, else the model's default) reach the engine as "en"."""
    seen = []
    synthesize = core.fake.synthesize
    core.fake.synthesize = lambda text, voice, settings, cancel: (seen.append(settings.language),
                                                                  synthesize(text, voice, settings, cancel))[1]
    for language in ("fr", "fr-FR", "xx"):
        with pytest.raises(RequestError) as info:
            core.submit("bonjour tout le monde", overrides={"language": language})
        assert info.value.kind == INVALID and info.value.param == "language"
        assert "supported: en" in info.value.message and "'fake'" in info.value.message, info.value.message
    assert core.queue.depth == 0 and not core.queue.counters.get("submitted", 0), core.queue.counters
    for language in ("en", "EN-us", "", None):
        assert core.submit("hello there", overrides={"language": language}).wait(10).success
    assert core.submit("hello there").wait(10).success
    assert seen == ["en"] * 5
    assert [(lang.code, lang.name) for lang in core.list_languages()] == [("en", "English")]
    assert core.default_language == "en" and core.status().engine.languages == ("en",)
    core.apply(core.settings.with_values({"language": "de"}))  # a default the model lacks refuses too
    with pytest.raises(RequestError, match="language 'de' is not supported"):
        core.submit("hello there")


# -- a voice's language: a sidecar <name>.json beside its recording ---------------------------------------------------
def _library(tmp_path):
    from ros2_chatterbox.voices import VoiceLibrary
    folder = tmp_path / "lib"
    folder.mkdir(exist_ok=True)
    return VoiceLibrary(str(folder)), folder


def test_a_voice_language_follows_its_recording(tmp_path):
    """Written with the voice, listed, replaced (or removed) by an overwrite, deleted with the voice; a voice that
    replaces one whose name differs in case takes the place of its sidecar too."""
    import json
    lib, folder = _library(tmp_path)
    lib.add("alice", _reference_wav(), language="fr")
    assert json.loads((folder / "alice.json").read_text()) == {"language": "fr"}
    assert lib.language("alice") == "fr"
    assert [(v["name"], v["language"]) for v in lib.describe()] == [("alice", "fr")]
    lib.add("alice", _reference_wav(), overwrite=True, language="de")
    assert lib.language("alice") == "de"
    lib.add("alice", _reference_wav(), overwrite=True)  # an overwrite without a language: the voice has none
    assert lib.language("alice") == "" and not (folder / "alice.json").exists()
    lib.add("alice", _reference_wav(), overwrite=True, language="es")
    lib.add("Alice", _reference_wav(), overwrite=True, language="it")
    assert sorted(p.name for p in folder.iterdir()) == ["Alice.json", "Alice.wav"]
    assert lib.language("Alice") == "it"
    lib.delete("Alice")
    assert list(folder.iterdir()) == []
    lib.add("bob", _reference_wav())
    assert sorted(p.name for p in folder.iterdir()) == ["bob.wav"]  # no language, no sidecar


def test_a_sidecar_without_a_recording_is_no_voice_and_a_broken_one_is_ignored_with_one_warning(tmp_path):
    from log_capture import captured_logs
    from ros2_chatterbox.engine import VoiceError
    lib, folder = _library(tmp_path)
    (folder / "ghost.json").write_text('{"language": "fr"}')
    assert lib.names() == [] and lib.describe() == []
    outside = tmp_path / "outside.json"
    outside.write_text('{"language": "fr"}')
    broken = {"notjson": b"{language: fr", "alist": b'["fr"]', "number": b'{"language": 5}',
              "word": b'{"language": "French"}', "tricky": b'{"language": "../../etc"}',
              "binary": b"\xff\xfe\x00", "huge": b'{"language": "fr", "x": "' + b"y" * 5000 + b'"}'}
    for name, body in broken.items():
        lib.add(name, _reference_wav())
        (folder / f"{name}.json").write_bytes(body)
    lib.add("linked", _reference_wav())
    (folder / "linked.json").symlink_to(outside)  # never followed
    lib.add("adir", _reference_wav())
    (folder / "adir.json").mkdir()
    lib.add("fine", _reference_wav(), language="en")
    with captured_logs("ros2_chatterbox.voices") as logs:
        for _ in range(2):
            listed = {v["name"]: v["language"] for v in lib.describe()}
            assert listed == {**{name: "" for name in broken}, "linked": "", "adir": "", "fine": "en"}, listed
    warned = [m for level, m in logs if level == "warning"]
    assert len(warned) == len(broken) + 2, warned  # once per file, not at every listing
    with pytest.raises(VoiceError, match="is a folder"):
        lib.add("adir", _reference_wav(), overwrite=True, language="fr")
    assert all("ignoring its language file" in m for m in warned)
    lib.delete("linked")
    assert outside.exists() and not (folder / "linked.json").is_symlink()  # the link went, not its target


@pytest.mark.parametrize("name, language", [("../evil", "fr"), ("a/b", "fr"), ("ok", "../../x"), ("ok", "fr/.."),
                                            ("ok", "FR"), ("ok", "x" * 40), ("ok", 5)])
def test_voice_language_path_tricks_are_refused(tmp_path, name, language):
    from ros2_chatterbox.engine import VoiceError
    lib, folder = _library(tmp_path)
    with pytest.raises(VoiceError):
        lib.add(name, _reference_wav(), language=language)
    with pytest.raises(VoiceError):
        lib.language("../lib/ok")
    assert list(folder.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["lib"]


def test_a_shipped_voice_has_no_language_and_a_user_voice_shadowing_it_has_its_own(tmp_path):
    from ros2_chatterbox.voices import VoiceLibrary
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "carol.wav").write_bytes(_reference_wav())
    lib = VoiceLibrary(str(tmp_path / "user"), shipped=[str(shipped)])
    assert lib.language("carol") == ""
    lib.add("carol", _reference_wav(), overwrite=True, language="fr")
    assert lib.language("carol") == "fr" and not (shipped / "carol.json").exists()
    lib.delete("carol")
    assert lib.language("carol") == "" and lib.names() == ["carol"]


def test_add_voice_takes_any_multilingual_code_and_the_voice_language_comes_before_the_parameter(core, tmp_path):
    """Order: the request's language, the voice's, the parameter's, the model's. A voice in French on the English-only
    engine is stored (it may serve a multilingual model later), but a request with it that names no language is
    refused with the supported codes; naming en works. A voice in English wins over a parameter the model lacks."""
    seen = []
    synthesize = core.fake.synthesize
    core.fake.synthesize = lambda text, voice, settings, cancel: (seen.append(settings.language),
                                                                  synthesize(text, voice, settings, cancel))[1]
    added = core.add_voice("amelie", _reference_wav(), language="FR-fr")
    assert added.language == "fr" and "model 'fake' speaks en" in added.message, added.message
    assert [(v.name, v.language) for v in core.list_voices()] == [("amelie", "fr")]
    for language in (None, "", "  "):
        with pytest.raises(RequestError) as info:
            core.submit("bonjour", voice="amelie", overrides={"language": language})
        assert info.value.kind == INVALID and info.value.param == "language"
        assert "language 'fr' is not supported by model 'fake'; supported: en" in info.value.message
        assert "voice 'amelie'" in info.value.message
    assert core.queue.depth == 0
    assert core.submit("hello", voice="amelie", overrides={"language": "en"}).wait(10).success
    path = tmp_path / "src" / "recording.wav"  # outside the voices folder (tmp_path itself)
    path.parent.mkdir()
    path.write_bytes(_reference_wav())
    assert core.add_voice_file("edward", str(path), language="en").language == "en"
    core.apply(core.settings.with_values({"language": "de"}))  # the parameter names one the model lacks
    assert core.submit("hello from edward", voice="edward").wait(10).success  # the voice's en comes first
    with pytest.raises(RequestError, match="language 'de' is not supported"):
        core.submit("hello with the built-in voice")
    core.apply(core.settings.with_values({"language": "", "default_voice": "edward"}))
    assert core.submit("the default voice speaks its language").wait(10).success
    assert seen == ["en"] * 3


@pytest.mark.parametrize("language", ["xx", "french", "../fr", 7])
def test_add_voice_refuses_an_unknown_language_naming_the_codes(core, language):
    with pytest.raises(RequestError) as info:
        core.add_voice("alice", _reference_wav(), language=language)
    assert info.value.kind == INVALID and info.value.param == "language"
    if isinstance(language, str):
        assert "supported: ar, da, de" in info.value.message, info.value.message
    assert core.list_voices() == []
