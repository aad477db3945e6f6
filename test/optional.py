"""Optional dependencies skip per test, never at import; each skip reason names the one command that removes it.

launch_testing's pytest plugin imports every module of the folder while collecting: a module-level skip (or an
ImportError/OSError at import) in any of them would drop the whole folder. Modules import what they can with
optional_import() and mark their tests with requires(); they import shared helpers from helper modules (this one,
http_fixtures, web_browser, ...), never from each other (test_architecture.py checks both).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional

import pytest

# The set-up that installs each optional package (by its top-level module): the engine's in `make setup`, the test
# tools in `make setup-test`; a system library a package loads has its own command.
SET_UP_BY = {"torch": "setup", "chatterbox": "setup", "transformers": "setup", "safetensors": "setup",
             "librosa": "setup", "piper": "setup", "av": "setup", "sounddevice": "setup",
             "selenium": "setup-test", "schemathesis": "setup-test", "hypothesis": "setup-test",
             "openai": "setup-test", "httpx": "setup-test", "pykakasi": "setup-test", "spacy_pkuseg": "setup-test"}
SYSTEM_LIBRARY = {"sounddevice": "apt-get install libportaudio2"}
_REASONS: Dict[str, str] = {}


def distro_arg() -> str:
    """` ROS_DISTRO=<d>` for the pip-only set-up's .venv-<d>/ interpreters ('' for .venv/, Kilted): what a `make`
    command needs to act on the interpreter running the tests."""
    name = Path(sys.prefix).name
    return f" ROS_DISTRO={name[len('.venv-'):]}" if name.startswith(".venv-") else ""


def make_setup(target: str = "setup-test") -> str:
    """`make <target>` for the interpreter running the tests."""
    return f"make {target}{distro_arg()}"


def _command(name: str, exc: Exception, hint: str) -> str:
    top = name.split(".")[0]
    if isinstance(exc, OSError) and top in SYSTEM_LIBRARY:
        return SYSTEM_LIBRARY[top]
    if top in SET_UP_BY:
        return make_setup(SET_UP_BY[top])
    return hint or make_setup()


def optional_import(name: str, hint: str = "") -> Optional[ModuleType]:
    """The module, or None when it cannot be imported here (missing package or system library)."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError from a missing shared library (PortAudio)
        _REASONS[name] = f"needs {name} ({type(exc).__name__}: {exc}): run `{_command(name, exc, hint)}`"
        return None


def requires(*names: str, hint: str = "") -> pytest.MarkDecorator:
    """skipif mark for tests that need every module in `names`; the reason says which failed, why, and the command
    that installs it (`hint` for a module SET_UP_BY does not know)."""
    reasons = [_REASONS[n] for n in names if optional_import(n, hint) is None]
    return pytest.mark.skipif(bool(reasons), reason="; ".join(reasons))
