"""Optional dependencies skip per test, never at import.

launch_testing's pytest plugin imports every module of the folder while collecting: a module-level skip (or an
ImportError/OSError at import) in any of them would drop the whole folder. Modules import what they can with
optional_import() and mark their tests with requires().
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional

import pytest

_REASONS: Dict[str, str] = {}


def optional_import(name: str) -> Optional[ModuleType]:
    """The module, or None when it cannot be imported here (missing package or system library)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing shared library (PortAudio)
        _REASONS[name] = f"{name} cannot be imported here ({type(exc).__name__}: {exc})"
        return None


def requires(*names: str, hint: str = "") -> pytest.MarkDecorator:
    """skipif mark for tests that need every module in `names`; the reason says which failed and why."""
    reasons = [_REASONS[n] for n in names if optional_import(n) is None]
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons) + (f" ({hint})" if reasons and hint else ""))
