"""The one list of engines: name -> (module, class). Add an engine here (and its module under engines/); the
`engine` and `fallback_engine` parameters take their choices from this table, and `create_engine` loads from it.

Plain data, no imports: the settings table reads it without importing any engine (or torch).
"""
from typing import Dict, Tuple

REGISTRY: Dict[str, Tuple[str, str]] = {
    "chatterbox_turbo": ("ros2_chatterbox.engines.chatterbox.engine", "ChatterboxTurboEngine"),
    "piper": ("ros2_chatterbox.engines.piper", "PiperEngine"),
}
ENGINES: Tuple[str, ...] = tuple(REGISTRY)
