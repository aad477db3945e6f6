"""The house drawn from its imports: no circles anywhere in the repository, doors that reach only the core, floors
that know no door; test modules that share code through helper modules and import without their optional
dependencies (launch_testing's collector imports every module of the folder).

Every `import` counts, also those inside functions (a lazy import is still a dependency)."""
import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, FrozenSet, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "ros2_chatterbox"
TEST = ROOT / "test"
SKIP_DIRS = {"build", "install", "log", "node_modules", "__pycache__", "test-artifacts"}  # and dot folders (.venv/)
DOOR_PREFIXES = ("ros2_chatterbox.tts_node", "ros2_chatterbox.ros_audio", "ros2_chatterbox.ros_voices",
                 "ros2_chatterbox.ros_params", "ros2_chatterbox.ros_diagnostics", "ros2_chatterbox.ros_process",
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


def written_imports(path: Path, package: str, modules: FrozenSet[str]) -> Set[str]:
    """Every module `path` imports, as written (relative imports resolved against `package`)."""
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
    return found


def imports() -> Dict[str, Set[str]]:
    """module -> every module it imports (package-internal names resolved, external ones as written)."""
    graph: Dict[str, Set[str]] = {}
    modules = frozenset(module_name(p) for p in PKG.rglob("*.py"))
    for path in PKG.rglob("*.py"):
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {m for m in written_imports(path, package, modules) if m != name}
    return graph


def repo_files() -> List[Path]:
    """The repository's Python files outside the package: bench/, tools/, test/, launch/, docker/, setup.py, and the
    scripts/ without a suffix."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")
                         and Path(folder, d) != PKG)
        for f in sorted(files):
            path = Path(folder, f)
            if f.endswith(".py") or (path.parent.name == "scripts" and "python" in path.read_text().split("\n")[0]):
                found.append(path)
    return found


def repo_imports() -> Dict[str, Set[str]]:
    """Every Python file of the repository -> the package modules and repository files it imports: the package's
    modules by name, other files by path. A bare `import x` from a script resolves as running it does: x.py of the
    script's own folder (first on sys.path), else the one x.py elsewhere in the repository (a folder a script puts on
    sys.path, as bench/soak.py does with test/)."""
    graph = internal(imports())
    modules = frozenset(graph)
    files = repo_files()
    rel = {path: str(path.relative_to(ROOT)) for path in files}
    by_stem: Dict[str, List[Path]] = defaultdict(list)
    for path in files:
        by_stem[path.stem].append(path)
    for path in files:
        deps = set()
        for name in written_imports(path, "", modules):
            top = name.split(".")[0]
            if name in modules:
                deps.add(name)
            elif (path.parent / f"{top}.py") in rel:
                deps.add(rel[path.parent / f"{top}.py"])
            elif len(by_stem[top]) == 1:
                deps.add(rel[by_stem[top][0]])
        graph[rel[path]] = deps - {rel[path]}
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


def test_no_import_circles_anywhere_in_the_repository():
    graph = repo_imports()
    assert {"bench/bench_turbo.py", "tools/say.py", "test/conftest.py", "ros2_chatterbox.core"} <= set(graph)
    assert "bench/common.py" in graph["bench/bench_node.py"] and "test/ros_helpers.py" in graph["bench/soak.py"]
    assert cycles(graph) == []


def test_test_modules_import_helper_modules_never_each_other():
    """Shared test code lives in helper modules (optional.py, http_fixtures.py, ros_helpers.py, ...): a test module
    importing another runs that module's set-up and optional imports, and its tests' names join the importer's."""
    graph = repo_imports()
    offenders = {f: sorted(d for d in deps if d.startswith("test/test_"))
                 for f, deps in graph.items() if f.startswith("test/")}
    assert {f: d for f, d in offenders.items() if d} == {}


# Run in a fresh interpreter: makes `names` unimportable, as where they are not installed, then imports conftest and
# every module of test/ as launch_testing's collector does; prints each module that fails (or skips) at import.
IMPORT_ALL = """
import importlib, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` raises ModuleNotFoundError; importlib.util.find_spec(name) is None
import conftest
failed = []
for module in sys.argv[2].split(","):
    try:
        importlib.import_module(module)
    except BaseException as exc:  # a module-level pytest.skip() raises pytest's Skipped, a BaseException
        failed.append(f"{module}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""
MISSING = {
    # the venv `make run` builds: no test extras, and no ROS 2 command line or launch (test-only prefix)
    "make-run-venv": ("selenium", "schemathesis", "hypothesis", "openai", "launch", "launch_ros", "launch_testing",
                      "ros2cli"),
    # `colcon test` with package.xml's dependencies only: no engine packages, no test extras
    "package-xml-only": ("torch", "chatterbox", "transformers", "safetensors", "librosa", "numba", "perth", "piper",
                         "av", "sounddevice", "selenium", "schemathesis", "hypothesis", "openai"),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", sorted(MISSING))
def test_every_test_module_imports_without_its_optional_dependencies(where):
    modules = sorted(p.stem for p in TEST.glob("*.py") if p.stem != "conftest")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TEST)] + [os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", IMPORT_ALL, ",".join(MISSING[where]), ",".join(modules)], cwd=str(TEST),
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip() == "", f"test modules that fail at import without {MISSING[where]}:\n{r.stdout}"


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
