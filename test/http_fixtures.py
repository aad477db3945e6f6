"""Shared pieces of the HTTP tests: a piper-backed SpeechCore and an HttpServer on a free loopback port.

Import the fixtures into a test module (`from http_fixtures import http_core, http_server`) so pytest sees them.
Everything binds 127.0.0.1 with port 0 (the kernel picks a free port).
"""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ros2_chatterbox.core import SpeechCore  # noqa: E402
from ros2_chatterbox.http.server import HttpServer  # noqa: E402
from ros2_chatterbox.settings import HttpSettings, Settings, defaults  # noqa: E402

REFERENCE_VOICE = "alice"


def reference_wav(seconds: float = 6.0, sample_rate: int = 16000) -> bytes:
    """A speech-like reference recording (a gliding, amplitude-modulated tone) that passes check_reference."""
    import soundfile as sf
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    signal = (0.3 * envelope * (np.sin(phase) + 0.3 * np.sin(3 * phase))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, signal, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def voices_folder(core: SpeechCore) -> Path:
    """The folder the core keeps its voices in (the test's voices_dir)."""
    return Path(core.settings.core.voices_dir)


def make_config(voices_dir: Path, **overrides: Any) -> Settings:
    cfg = defaults()
    cfg["engine"] = "piper"
    cfg["voices_dir"] = str(voices_dir)
    cfg["audio.sentence_pause_ms"] = 60
    for key, value in overrides.items():
        cfg[key.replace("__", ".")] = value
    return Settings.from_values(cfg)


def make_core(voices_dir: Path, with_voice: bool = True, **overrides: Any) -> SpeechCore:
    voices_dir.mkdir(parents=True, exist_ok=True)
    if with_voice and not (voices_dir / f"{REFERENCE_VOICE}.wav").exists():
        (voices_dir / f"{REFERENCE_VOICE}.wav").write_bytes(reference_wav())
    core = SpeechCore(make_config(voices_dir, **overrides))
    core.load()
    return core


def http_settings(core: SpeechCore, **settings: Any) -> HttpSettings:
    """The core's HTTP settings with overrides (`http__api_key="k"` sets http.api_key)."""
    return core.settings.with_values({key.replace("__", "."): value for key, value in settings.items()}).http


@contextlib.contextmanager
def serving(core: SpeechCore, **settings: Any) -> Iterator[HttpServer]:
    """An HttpServer over `core` on a free loopback port; `settings` override the core's HTTP settings."""
    server = HttpServer(core, http_settings(core, **settings), host="127.0.0.1", port=0)
    server.start(timeout=15.0)
    try:
        yield server
    finally:
        server.stop(timeout=5.0)


@pytest.fixture(scope="module")
def http_core(tmp_path_factory) -> Iterator[SpeechCore]:
    core = make_core(tmp_path_factory.mktemp("voices"))
    try:
        yield core
    finally:
        core.unload()


@pytest.fixture(scope="module")
def http_server(http_core) -> Iterator[HttpServer]:
    with serving(http_core) as server:
        yield server
