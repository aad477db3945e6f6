"""Old name of `settings` (the flat-dict API), kept only for bench scripts not yet switched to `settings`."""
from __future__ import annotations

from typing import Any, Dict, Optional

from .settings import (SETTINGS, SETTINGS_BY_NAME, ConfigError, Setting, check, defaults,  # noqa: F401
                       package_share, read_params_file)


def load_params_file(path: Optional[str], node_name: str = "tts_node") -> Dict[str, Any]:
    return read_params_file(path, node_name)
