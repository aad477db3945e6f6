"""Engines by name: the table is engines/registry.py (the interface is ros2_chatterbox/engine.py).

    engines/piper.py         the embedded default voice (no download)
    engines/chatterbox/      Chatterbox Turbo: checkpoint, voice_cache, tokens, s3gen_stream, engine
    engines/fast_t3/         the fast T3 decode path (sampling, step, graphs, generator, kernels)

Engines are imported only when created, so that a missing optional dependency (torch, piper) fails that engine
alone, with a message saying what to install. This package imports the engine interface inside its functions only:
the settings table imports `engines.registry`, and so this package, while the interface imports the settings.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Optional

from .registry import ENGINES, REGISTRY

if TYPE_CHECKING:
    from ..engine import Engine
    from ..settings import EngineSettings

__all__ = ["ENGINES", "REGISTRY", "create_engine", "engine_class"]


def engine_class(name: str) -> type:
    from ..engine import EngineLoadError
    if name not in REGISTRY:
        raise EngineLoadError(f"unknown engine '{name}' (choose one of: {', '.join(ENGINES)})")
    module, cls = REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise EngineLoadError(f"engine '{name}' cannot be imported ({exc}); install its dependencies "
                              f"(`make setup`, or see README 'Installation')") from exc


def create_engine(name: str, settings: EngineSettings, max_piece_chars: Optional[int] = None) -> Engine:
    """The engine `name` with its settings and the longest piece of text it will get (see `Engine.__init__`)."""
    return engine_class(name)(settings, max_piece_chars)
