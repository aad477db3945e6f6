"""The engine interface: text piece + voice + settings in, float32 mono audio out. Knows nothing of ROS or HTTP.

Two engines implement it (ros2_chatterbox/engines/): Chatterbox Turbo (cloned voices) and Piper (the embedded
default voice that needs no download). The registry, `ros2_chatterbox.engines.create_engine`, picks one by name; this
module imports no engine.
"""
from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Iterator, Optional

import numpy as np

from .config import ConfigError, check


class EngineError(RuntimeError):
    """Synthesis failed inside the engine (the request fails, the node keeps serving)."""


class EngineLoadError(EngineError):
    """The engine could not load; the message says what is missing and what to do."""


class VoiceError(ValueError):
    """The caller named a voice that does not exist or cannot be used."""


class Cancelled(Exception):
    """The request was cancelled (stop, interrupt, deactivate, client gone)."""


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 1000
    repetition_penalty: float = 1.2
    seed: int = 0  # 0 = a fresh random seed per request
    watermark: bool = True

    @classmethod
    def from_config(cls, values: Dict[str, Any]) -> "GenerationSettings":
        return cls(**{f.name: values[f"generation.{f.name}"] for f in fields(cls)})

    def with_overrides(self, overrides: Optional[Dict[str, Any]]) -> "GenerationSettings":
        """A copy with per-request overrides, each validated against the parameter's range."""
        if not overrides:
            return self
        clean = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in {f.name for f in fields(self)}:
                raise ConfigError(f"unknown generation setting '{key}'")
            if isinstance(getattr(self, key), float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            clean[key] = check(f"generation.{key}", value)
        return replace(self, **clean)


class Engine(abc.ABC):
    """One speech engine. `synthesize` is called from the single worker thread only."""

    name = "engine"
    can_clone = False

    def __init__(self, config: Dict[str, Any]):
        self.config = config
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

    def info(self) -> Dict[str, Any]:
        return {"engine": self.name, "sample_rate": self.sample_rate, "loaded": self.loaded,
                "can_clone": self.can_clone}

    def free_memory(self) -> None:
        """Drop caches after an out-of-memory error (the model stays loaded)."""

