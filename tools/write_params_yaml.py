"""Write config/params.yaml from the settings table (ros2_chatterbox/config.py), every parameter commented.

Run after adding a setting: .venv/bin/python tools/write_params_yaml.py  (test_config checks they agree).
"""
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ros2_chatterbox.config import SETTINGS  # noqa: E402


def render() -> str:
    lines = ["# Parameters of the ros2_chatterbox tts_node (ROS 2 parameter file).",
             "# `make run PARAMS=my.yaml` or `--ros-args --params-file my.yaml`. `/**` applies them to the node in",
             "# any namespace and under any name. Parameters marked (configure) are",
             "# read on configure only: change them, then cleanup + configure. Others change at runtime with",
             "# `ros2 param set /tts_node <name> <value>`.",
             "/**:", "  ros__parameters:"]
    groups = {}
    for s in SETTINGS:
        head, _, tail = s.name.partition(".")
        groups.setdefault(head if tail else "", []).append(s)
    def emit(s, indent, key):
        note = " (configure)" if s.read_only else ""
        rng = f" [{s.min:g} .. {s.max:g}]" if s.min is not None else ""
        for line in textwrap.wrap(s.description + rng + note, 100 - indent - 2):
            lines.append(" " * indent + "# " + line)
        v = s.default
        val = ("true" if v else "false") if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else repr(v))
        lines.append(" " * indent + f"{key}: {val}")
    for s in groups.pop(""):
        emit(s, 4, s.name)
    for head, items in groups.items():
        lines.append(f"    {head}:")
        for s in items:
            emit(s, 6, s.name.partition(".")[2])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "config" / "params.yaml"
    out.write_text(render())
    print("wrote", out)
