"""ROS parameter files: read one into `Settings` (the HTTP program, tests, tools) and write config/params.yaml from
the settings table (tools/write_params_yaml.py; test_settings checks the file is in sync)."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

import yaml

from .settings import CONFIGURE, RUNTIME, SETTINGS, SETTINGS_BY_NAME, START, Setting, Settings, check, defaults, \
    describe


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def read_params_file(path: Optional[str], node_name: str = "tts_node") -> Dict[str, Any]:
    """Read a ROS parameter file (`<node>: ros__parameters: ...`) into validated flat values (defaults filled in);
    names that are not settings are ignored, as the node ignores undeclared parameters."""
    values = defaults()
    if not path:
        return values
    data = yaml.safe_load(Path(path).read_text()) or {}
    params: Dict[str, Any] = {}
    for key in ("/**", "**", node_name, f"/{node_name}"):
        section = data.get(key) if isinstance(data, dict) else None
        if isinstance(section, dict) and isinstance(section.get("ros__parameters"), dict):
            params.update(_flatten(section["ros__parameters"]))
    for name, value in params.items():
        if name in SETTINGS_BY_NAME:
            values[name] = check(name, value)
    return values


def load_params_file(path: Optional[str], node_name: str = "tts_node") -> Settings:
    """`read_params_file` as a `Settings`."""
    return Settings.from_values(read_params_file(path, node_name))


_STAGE_NOTE = {START: " (start: parameter file only)", CONFIGURE: " (configure)", RUNTIME: ""}


def render_params_yaml(settings: Iterable[Setting] = SETTINGS) -> str:
    """config/params.yaml: every parameter with its owner, description, range and stage."""
    lines = ["# Parameters of the ros2_chatterbox tts_node (ROS 2 parameter file), generated from",
             "# ros2_chatterbox/settings.py by tools/write_params_yaml.py.",
             "# `make run PARAMS=my.yaml` or `--ros-args --params-file my.yaml`. `/**` applies them to the node in",
             "# any namespace and under any name.",
             "# [core], [engine], ...: the component that reads the parameter (its settings class in settings.py:",
             "#   CoreSettings, EngineSettings, GenerationSettings, RosSettings, PlaybackSettings, HttpSettings).",
             "# (configure): read at configure. Set them while the node is unconfigured (`ros2 param set`), or",
             "#   deactivate + cleanup, set, then configure; while configured or active a change is refused.",
             "# (start): read when the node starts: set them in this file.",
             "# Others apply at once: `ros2 param set /tts_node <name> <value>`.",
             "/**:", "  ros__parameters:"]
    groups: Dict[str, List[Setting]] = {}
    for s in settings:
        head, _, tail = s.name.partition(".")
        groups.setdefault(head if tail else "", []).append(s)

    def emit(s: Setting, indent: int, key: str) -> None:
        rng = f" [{s.min:g} .. {s.max:g}]" if s.min is not None and s.max is not None else ""
        for line in textwrap.wrap(describe(s) + rng + _STAGE_NOTE[s.stage], 100 - indent - 2):
            lines.append(" " * indent + "# " + line)
        v = s.default
        val = ("true" if v else "false") if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else repr(v))
        lines.append(" " * indent + f"{key}: {val}")

    for s in groups.pop("", []):
        emit(s, 4, s.name)
    for head, items in groups.items():
        lines.append(f"    {head}:")
        for s in items:
            emit(s, 6, s.name.partition(".")[2])
    return "\n".join(lines) + "\n"
