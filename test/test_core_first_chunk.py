"""SpeechCore hands the first audio to the listener as soon as the engine yields its first part (it holds back only
the fade-out's few milliseconds, not a whole part), and the audio it hands out is the engine's, faded only at the
piece's outer edges."""
import threading

import numpy as np

from ros2_chatterbox import audio
from ros2_chatterbox import settings as cfgmod
from ros2_chatterbox.core import SpeechCore
from ros2_chatterbox.engine import Engine
from ros2_chatterbox.speech_queue import JobListener

SR = 24000


class TwoPartEngine(Engine):
    """Yields one 1 s part, then waits (bounded) until the listener has audio before yielding the second."""
    name = "two_part"

    def __init__(self, config):
        super().__init__(config)
        self.sample_rate = SR
        self.listener_has_audio = threading.Event()
        self.audio_before_second_part = None
        self.parts = [np.linspace(0.1, 0.2, SR, dtype=np.float32), np.linspace(0.2, 0.3, SR // 2, dtype=np.float32)]

    def load(self):
        pass

    def unload(self):
        pass

    @property
    def loaded(self):
        return True

    def synthesize(self, text, voice_path, settings, cancel):
        yield self.parts[0]
        self.audio_before_second_part = self.listener_has_audio.wait(20)
        yield self.parts[1]


class Collect(JobListener):
    def __init__(self, engine):
        self.engine = engine
        self.parts = []

    def on_audio(self, job, samples):
        self.parts.append(np.array(samples))
        self.engine.listener_has_audio.set()


def test_first_audio_leaves_before_the_engine_yields_its_second_part(monkeypatch, tmp_path):
    engine = TwoPartEngine(cfgmod.EngineSettings())
    monkeypatch.setattr("ros2_chatterbox.core.create_engine", lambda name, settings, max_piece_chars=None: engine)
    values = cfgmod.defaults()
    values.update({"voices_dir": str(tmp_path), "audio.sentence_pause_ms": 0})
    core = SpeechCore(cfgmod.Settings.from_values(values))
    core.load()
    try:
        listener = Collect(engine)
        result = core.submit("One piece only", listener=listener).wait(60)
        assert result.success, result.message
        assert engine.audio_before_second_part is True  # nothing waited for the second part
        got = np.concatenate(listener.parts)
        want = audio.fade_out(audio.fade_in(np.concatenate(engine.parts), SR), SR)
        assert got.shape == want.shape and np.allclose(got, want)  # no sample lost, added or faded inside
    finally:
        core.unload()
