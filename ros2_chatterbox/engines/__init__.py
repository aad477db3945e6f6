"""The engine registry: name -> engine class (the interface is ros2_chatterbox/engine.py).

    engines/piper.py         the embedded default voice (no download)
    engines/chatterbox/      Chatterbox Turbo: checkpoint, voice_cache, tokens, s3gen_stream, engine
    engines/fast_t3/         the fast T3 decode path (sampling, step, graphs, generator, kernels)

Engines are imported only when created, so that a missing optional dependency (torch, piper) fails that engine
alone, with a message saying what to install.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Union

from ..engine import Engine, EngineLoadError
from ..settings import EngineSettings

# name -> (module, class)
REGISTRY: Dict[str, tuple] = {
    "chatterbox_turbo": ("ros2_chatterbox.engines.chatterbox.engine", "ChatterboxTurboEngine"),
    "piper": ("ros2_chatterbox.engines.piper", "PiperEngine"),
}
ENGINES = tuple(REGISTRY)


def engine_class(name: str) -> type:
    if name not in REGISTRY:
        raise EngineLoadError(f"unknown engine '{name}' (choose one of: {', '.join(ENGINES)})")
    module, cls = REGISTRY[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise EngineLoadError(f"engine '{name}' cannot be imported ({exc}); install its dependencies "
                              f"(`make setup`, or see README 'Installation')") from exc


def create_engine(name: str, settings: Union[EngineSettings, Mapping[str, Any]]) -> Engine:
    """The engine `name` with its settings (see `Engine.__init__`)."""
    return engine_class(name)(settings)
