"""The engine interface: text piece + voice + settings in, float32 mono audio out. Knows nothing of ROS or HTTP.

Two engines implement it (ros2_chatterbox/engines/): Chatterbox Turbo (cloned voices) and Piper (the embedded
default voice that needs no download). The registry, `ros2_chatterbox.engines.create_engine`, picks one by name; this
module imports no engine.
"""
from __future__ import annotations

import abc
import threading
from typing import Iterator, Optional, Tuple

import numpy as np

from .settings import EngineSettings, GenerationSettings
from .status import EngineStatus


class EngineError(RuntimeError):
    """Synthesis failed inside the engine (the request fails, the node keeps serving)."""


class EngineLoadError(EngineError):
    """The engine could not load; the message says what is missing and what to do."""


class VoiceError(ValueError):
    """The caller named a voice that does not exist or cannot be used."""


class Cancelled(Exception):
    """The request was cancelled (stop, interrupt, deactivate, client gone)."""


class Engine(abc.ABC):
    """One speech engine. `synthesize` is called from the single worker thread only."""

    name = "engine"
    can_clone = False
    # what it speaks: ISO 639-1 codes (ros2_chatterbox/engines/chatterbox/languages.py names them) and the one spoken
    # when neither the request nor the `language` parameter names one. SpeechCore refuses other codes before
    # queueing, so synthesize() only ever gets one of these in `settings.language`.
    languages: Tuple[str, ...] = ("en",)
    default_language = "en"

    def __init__(self, settings: EngineSettings, max_piece_chars: Optional[int] = None):
        """`settings`: the engine's typed settings. `max_piece_chars`: the longest piece of text `synthesize` will
        get (SpeechCore passes text.chunk_chars; None: not known, the engine bounds text by its own limits)."""
        if not isinstance(settings, EngineSettings):
            raise TypeError(f"an engine takes EngineSettings, not {type(settings).__name__}")
        self.settings = settings
        self.max_piece_chars = None if max_piece_chars is None else int(max_piece_chars)
        self.sample_rate = 0

    @abc.abstractmethod
    def load(self) -> None:
        """Load the model; raise EngineLoadError with an actionable message."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Release the model and its (GPU) memory."""

    @property
    @abc.abstractmethod
    def loaded(self) -> bool:
        ...

    @abc.abstractmethod
    def synthesize(self, text: str, voice_path: Optional[str], settings: GenerationSettings,
                   cancel: threading.Event) -> Iterator[np.ndarray]:
        """Yield float32 mono audio for one piece of text, as it becomes ready (consecutive parts join
        seamlessly). voice_path None = the engine's built-in voice."""

    def prepare_voice(self, voice_path: str) -> None:
        """Validate (and cache) a reference recording; raise VoiceError when it is unusable."""

    @property
    def model_id(self) -> str:
        """The model refusals and the languages list name (chatterbox-turbo); the engine's name by default."""
        return self.name

    def info(self) -> EngineStatus:
        """The engine's status (engines fill in what they have: dataclasses.replace on this)."""
        return EngineStatus(engine=self.name, sample_rate=self.sample_rate, loaded=self.loaded,
                            can_clone=self.can_clone, languages=tuple(self.languages),
                            default_language=self.default_language)

    def free_memory(self) -> None:
        """Drop caches after an out-of-memory error (the model stays loaded)."""

