"""Shared pieces of the Chatterbox Turbo tests: a tiny random checkpoint in the real file layout, built once per
test session, reference recordings, and an engine loaded from it through the engine's real loader.

Import the fixtures into a test module (`from turbo_fixtures import tiny_ckpt, turbo_engine`) so pytest sees them.
Everything is skipped with the reason when chatterbox-tts is not installed.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optional import make_setup  # noqa: E402
from ros2_chatterbox.settings import EngineSettings  # noqa: E402


def require_chatterbox() -> None:
    pytest.importorskip("torch", reason=f"needs torch: run `{make_setup('setup')}`")
    pytest.importorskip("chatterbox.tts_turbo", reason=f"needs chatterbox-tts: run `{make_setup('setup')}`")


def turbo_config(model_dir: Path, **overrides: Any) -> EngineSettings:
    """Default engine settings on `model_dir` (CPU, float32); `overrides` by EngineSettings field name."""
    return replace(EngineSettings(), **{"model_dir": str(model_dir), "device": "cpu", "dtype": "float32",
                                        "jetson_patches": "off", **overrides})


def write_voice(path: Path, seconds: float = 5.6, f0: float = 140.0, seed: int = 0, sr: int = 24_000) -> Path:
    """A speech-like synthetic reference recording (passes the > 5 s and not-silent checks)."""
    from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import write_reference_wav
    return write_reference_wav(path, seconds=seconds, sr=sr, f0=f0, seed=seed)


def copy_checkpoint(src: Path, dst: Path, skip: tuple = (), link_big: bool = True) -> Path:
    """A copy of a checkpoint folder (large weight files symlinked), leaving out the names in `skip`."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.name in skip:
            continue
        if link_big and p.suffix == ".safetensors":
            os.symlink(p, dst / p.name)
        else:
            shutil.copy2(p, dst / p.name)
    return dst


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny random Chatterbox Turbo checkpoint (with conds.pt), built once per session."""
    require_chatterbox()
    import torch
    # One intra-op thread: on this 2-core machine shared with other work, torch's OpenMP threads spin against each
    # other and the tiny model runs ~20x slower with 2 threads than with 1.
    torch.set_num_threads(1)
    from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import build_tiny_checkpoint
    folder = tmp_path_factory.mktemp("tiny_turbo")
    build_tiny_checkpoint(folder, seed=0, with_conds=True)
    return folder


@pytest.fixture(scope="session")
def voice_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("turbo_voices")
    write_voice(folder / "alice.wav", f0=140.0, seed=1)
    return folder


@pytest.fixture(scope="session")
def turbo_engine(tiny_ckpt):
    """A ChatterboxTurboEngine loaded from the tiny checkpoint through the engine's real loader (shared: tests that
    change its state restore it)."""
    from ros2_chatterbox.engines.chatterbox.engine import ChatterboxTurboEngine
    engine = ChatterboxTurboEngine(turbo_config(tiny_ckpt))
    engine.load()
    yield engine
    engine.unload()


def speak(engine, text: str, voice: Optional[str] = None, cancel=None, **settings: Any) -> list:
    """All parts `engine.synthesize` yields for one piece."""
    import threading
    from ros2_chatterbox.engine import GenerationSettings
    return list(engine.synthesize(text, voice, GenerationSettings(**settings), cancel or threading.Event()))


def joined(parts) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@contextlib.contextmanager
def long_generation(engine, max_tokens):
    """Random weights stop after a few tokens; suppress the stop token and cap the piece instead."""
    import torch
    bias = engine._model.t3.speech_head.bias
    stop = int(engine._model.t3.hp.stop_speech_token)
    saved = (engine.max_tokens_for, engine.stream_first_tokens, engine.stream_max_tokens)
    with torch.no_grad():
        bias[stop] -= 40.0
    engine.max_tokens_for = lambda text: max_tokens
    try:
        yield
    finally:
        with torch.no_grad():
            bias[stop] += 40.0
        engine.max_tokens_for, engine.stream_first_tokens, engine.stream_max_tokens = saved
        engine.__dict__.pop("max_tokens_for", None)  # the method again


def tiny_model_and_voices(ckpt: Path, folder: Path, voices) -> tuple:
    """The tiny checkpoint through the engine's loader on the CPU in float32, and S3Gen's conditioning (`.gen`) of a
    synthetic reference recording per (f0, seed, seconds) in `voices`."""
    import torch
    from ros2_chatterbox.engines.chatterbox import checkpoint, models
    from ros2_chatterbox.engines.chatterbox.voice_cache import compute_conds
    model, _ = checkpoint.load_model(ckpt, "cpu", torch.float32, "test", models.MODELS["turbo"])
    refs = [compute_conds(model, str(write_voice(folder / f"v{seed}.wav", seconds=seconds, f0=f0, seed=seed))).gen
            for f0, seed, seconds in voices]
    return model, refs
