"""What `make setup` installs into the venv prefix is current and runs from any shell.

- Every file the package installs (launch files, config, voices, Python modules) equals its source: the set-up
  reinstalls whenever one changes, so `ros2 launch ros2_chatterbox ...` never runs a stale copy.
- The installed executables start with the interpreter they were built for, so `ros2 run` / `ros2 launch` work
  without the venv on PATH.
- `make run` says which ROS domain the node is on, as the line a second terminal pastes, and passes ARGS to the node
  as ROS arguments (`make run ARGS="-p http.port:=8077"`).

Skips where the package was not installed into this interpreter's prefix (a colcon workspace on a ROS machine).
"""
import filecmp
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ros_helpers import ARTIFACTS, free_port, ros_env, wait_for_text, write_params
from waiting import wait_until

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


def _health(port: int) -> int:
    import httpx
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code
    except httpx.HTTPError:
        return 0


def test_make_run_shows_the_domain_and_passes_ros_arguments(tmp_path):
    port = free_port()
    params = write_params(tmp_path / "params.yaml", {"audio.realtime": False})
    env = ros_env()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"make-run-{os.getpid()}.log"
    # -o setup: the venv is this run's, set up already; ARGS as a user types them
    cmd = ["timeout", "-s", "KILL", "300", "make", "--no-print-directory", "-o", "setup", "run", f"VENV={PREFIX}",
           f"PARAMS={params}", f"ARGS=-p http.port:={port} -r __ns:=/make_run"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        paste = f"export ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
        assert wait_for_text(log_path.read_text, proc, paste, 60), log_path.read_text()[-3000:]
        wait_until(lambda: _health(port) == 200 or proc.poll() is not None, 240, 0.5)
        out = log_path.read_text()
        assert _health(port) == 200, f"the node's HTTP server never answered on ARGS' port {port}:\n{out[-3000:]}"
        # the paste line comes before anything the node prints
        assert out.index(paste) < out.index("tts_node"), out[:2000]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as in the terminal
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
