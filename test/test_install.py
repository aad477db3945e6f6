"""What `make setup` installs into the venv prefix is current and runs from any shell.

- Every file the package installs (launch files, config, voices, Python modules) equals its source: the set-up
  reinstalls whenever one changes, so `ros2 launch ros2_chatterbox ...` never runs a stale copy.
- The installed executables start with the interpreter they were built for, so `ros2 run` / `ros2 launch` work
  without the venv on PATH.

Skips where the package was not installed into this interpreter's prefix (a colcon workspace on a ROS machine).
"""
import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = Path(sys.prefix)
SHARE = PREFIX / "share" / "ros2_chatterbox"
LIB = PREFIX / "lib" / "ros2_chatterbox"
SITE = next(iter(PREFIX.glob("lib/python3*/site-packages/ros2_chatterbox")), None)
pytestmark = pytest.mark.skipif(not (SHARE.is_dir() and LIB.is_dir() and SITE is not None),
                                reason=f"ros2_chatterbox is not installed into {PREFIX} (make setup does that on "
                                       "pip-only machines; a ROS workspace installs it with colcon)")


def _sources(folder: str, installed: Path):
    for src in sorted((ROOT / folder).rglob("*")):
        if src.is_file() and "__pycache__" not in src.parts and src.suffix != ".pyc":
            yield src, installed / src.relative_to(ROOT / folder)


@pytest.mark.parametrize("folder", ["launch", "config", "voices"])
def test_installed_share_is_current(folder):
    stale = [str(src.relative_to(ROOT)) for src, dst in _sources(folder, SHARE / folder)
             if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False)]
    assert not stale, f"installed copies differ from the source, run `make setup`: {stale}"


def test_installed_python_modules_are_current():
    stale = [str(src.relative_to(ROOT)) for src, dst in _sources("ros2_chatterbox", SITE)
             if not dst.is_file() or not filecmp.cmp(src, dst, shallow=False)]
    assert not stale, f"installed copies differ from the source, run `make setup`: {stale}"


# tts_node: a parameter file that does not exist ends it right after its imports (in rclpy.init), before any node
# starts; doctor: --help
RUNS = {"tts_node": (["--ros-args", "--params-file", "/nonexistent/params.yaml"], "Couldn't parse params file"),
        "doctor": (["--help"], "usage:")}


@pytest.mark.parametrize("exe", sorted(RUNS))
def test_executables_run_with_their_interpreter_from_any_shell(exe, tmp_path):
    path = LIB / exe
    first = path.read_text().splitlines()[0]
    assert first == f"#!{PREFIX / 'bin' / 'python'}", first
    # a bare shell: no venv on PATH, no PYTHONPATH, started outside the source tree
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "ROS_DOMAIN_ID": os.environ["ROS_DOMAIN_ID"], "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    args, expect = RUNS[exe]
    r = subprocess.run(["timeout", "-s", "KILL", "120", str(path)] + args, cwd=str(tmp_path), env=env,
                       capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert expect in out and "No module named" not in out, out[-2000:]
