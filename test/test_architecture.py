"""The house drawn from its imports: no circles, doors that reach only the core, floors that know no door.

Every `import` in ros2_chatterbox/ counts, also those inside functions (a lazy import is still a dependency)."""
import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PKG = Path(__file__).resolve().parent.parent / "ros2_chatterbox"
DOOR_PREFIXES = ("ros2_chatterbox.tts_node", "ros2_chatterbox.ros_audio", "ros2_chatterbox.ros_voices",
                 "ros2_chatterbox.say_action", "ros2_chatterbox.ros_logging", "ros2_chatterbox.http")
# what the doors may use besides each other: the core's surface, the settings (with their parameter files and the
# package's paths), the job types, and the pure helpers that turn samples into messages or bytes (audio, encoding),
# the playback device, the package version
DOOR_MAY_USE = {"ros2_chatterbox", "ros2_chatterbox.core", "ros2_chatterbox.settings", "ros2_chatterbox.speech_queue",
                "ros2_chatterbox.params_file", "ros2_chatterbox.paths",
                "ros2_chatterbox.audio", "ros2_chatterbox.encoding", "ros2_chatterbox.playback"}
FRAMEWORKS = ("rclpy", "fastapi", "starlette", "uvicorn", "pydantic")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> Dict[str, Set[str]]:
    """module -> every module it imports (package-internal names resolved, external ones as written)."""
    graph: Dict[str, Set[str]] = {}
    modules = {module_name(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from . import x` / `from .pkg import mod`: the names may be modules themselves
                subs = {f"{target}.{a.name}" for a in node.names} & modules
                found.update(subs or {target})
        graph[name] = {m for m in found if m != name}
    return graph


def internal(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    return {m: {d for d in deps if d in graph and d != "ros2_chatterbox"} for m, deps in graph.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    found, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                found.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_circles():
    assert cycles(internal(imports())) == []


@pytest.mark.parametrize("door", sorted(m for m in imports() if m.startswith(DOOR_PREFIXES)))
def test_doors_reach_only_the_core(door):
    deps = internal(imports())[door]
    past = {d for d in deps if not d.startswith(DOOR_PREFIXES) and d not in DOOR_MAY_USE}
    assert not past, f"{door} reaches past the core to {sorted(past)}"


def test_nothing_below_the_doors_imports_a_framework():
    graph = imports()
    below = {m: deps for m, deps in graph.items() if not m.startswith(DOOR_PREFIXES)}
    offenders = {m: sorted(d for d in deps if d.split(".")[0] in FRAMEWORKS) for m, deps in below.items()}
    assert {m: d for m, d in offenders.items() if d} == {}
