"""The real ROS 2 command line (`ros2`) and launch system for the tests, wherever they come from.

`make test` runs pytest through tools/with_ros2_tools.sh: on a pip-only machine the tools are those `make ros2-tools`
(run by `make setup-test`) installed into the test-only prefix build/ros2-tools-<distro>/; on a ROS 2 machine they
are the installed ones. Where neither exists, each test that needs them skips with the reason and the command that
gets them (nothing skips at import: launch_testing's collector imports every module of the folder).

Commands are taken from the README's code blocks and run as written (through bash), so the README shows exactly
what the tests run; what they print is read past any warning lines (lifecycle_state).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import ros_environment
from optional import distro_arg
from ros_helpers import wait_for_text

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"


def get_the_tools() -> str:
    """The one command that gives this test run the ros2 command line and launch_testing."""
    built = [env.parent.name for env in sorted((ROOT / "build").glob("ros2-tools-*/env.sh"))
             if sys.prefix in re.split(r'[:"$]', env.read_text(errors="replace"))]  # its paths name this venv
    if built:  # installed for this interpreter, but this run was not started through the wrapper
        distro = built[0][len("ros2-tools-"):]
        return (f"run the tests through `tools/with_ros2_tools.sh --distro {distro} {sys.executable} -m pytest ...` "
                f"(as `make test` does): build/{built[0]}/ holds them")
    return f"run `make ros2-tools{distro_arg()}`"


def _launch_missing() -> str:
    missing = [m for m in ("launch", "launch_ros", "launch_testing") if importlib.util.find_spec(m) is None]
    if missing:
        return f"needs the ros2 command line and launch_testing ({', '.join(missing)} missing): {get_the_tools()}"
    if not hasattr(importlib.import_module("launch"), "LaunchDescription"):
        return ("the `launch` module found here is PyPI's unrelated package, not ROS 2 launch: run "
                f"`{sys.executable} -m pip uninstall -y launch`, then `make ros2-tools{distro_arg()}`")
    return ""


LAUNCH_MISSING = _launch_missing()
ROS2 = shutil.which("ros2")
ROS2_MISSING = "" if ROS2 else f"needs the ros2 command line and launch_testing: {get_the_tools()}"
LIFECYCLE_STATE = re.compile(r"^(unconfigured|inactive|active|finalized|configuring|cleaningup|shuttingdown|"
                             r"activating|deactivating|errorprocessing) \[\d+\]$")


def lifecycle_state(output: str) -> str:
    """The last `<state> [<id>]` line of `ros2 lifecycle get`'s output ('' when none), whatever else it printed:
    warnings of rcl or the RMW (Jazzy warns about ROS_LOCALHOST_ONLY in every command's output)."""
    found = [line.strip() for line in output.splitlines() if LIFECYCLE_STATE.match(line.strip())]
    return found[-1] if found else ""


def readme_commands(prefix: str = "ros2 ") -> List[str]:
    """Every line of the README's bash blocks that starts with `prefix` (`ros2 `, or `tools/say.py ` for the
    pip-only commands), without its trailing comment."""
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line.startswith(prefix):
                commands.append(line)
    return commands


def readme_command(start: str, contains: str = "") -> str:
    """The README's one command that starts with `start` and contains `contains` (or is exactly `start`)."""
    found = [c for c in readme_commands(start.split()[0] + " ") if c.startswith(start) and contains in c]
    if start in found:
        return start
    assert len(found) == 1, f"the README should show exactly one command starting {start!r} ({contains!r}): {found}"
    return found[0]


def tools_env() -> dict:
    """This run's environment (conftest.py set its ROS variables), cleaned again for use outside pytest."""
    env, _ = ros_environment.cleaned(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # launch's and the node's lines reach the log as they happen
    return env


def ros2(command: str, timeout: float = 90.0) -> subprocess.CompletedProcess:
    """Run a `ros2 ...` command line as a user types it, with a hard timeout."""
    return subprocess.run(["timeout", "-s", "KILL", str(int(timeout)), "bash", "-c", command], cwd=str(ROOT),
                          env=tools_env(), capture_output=True, text=True)


def ros2_ok(command: str, expect: str, timeout: float = 90.0) -> str:
    """Run a command; fail with its output unless it exits 0 and prints `expect`."""
    r = ros2(command, timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and expect in out, f"`{command}` exited {r.returncode}:\n{out[-3000:]}"
    return out


def wait_for_output(command: str, expect: str, timeout: float = 90.0, attempts_timeout: float = 30.0) -> str:
    """Run a read-only command until it prints `expect` (discovery on a loaded machine takes a while)."""
    end = time.monotonic() + timeout
    out = ""
    while time.monotonic() < end:
        r = ros2(command, attempts_timeout)
        out = r.stdout + r.stderr
        if expect in out:
            return out
        time.sleep(0.5)
    raise AssertionError(f"`{command}` never printed {expect!r} within {timeout} s; last output:\n{out[-3000:]}")


class Background:
    """A long-running command (`ros2 launch`, `ros2 topic echo`, ...) in its own process group, as in a terminal:
    interrupt() is Ctrl-C (SIGINT to the whole group); stop() ends whatever is left, by process group id."""

    def __init__(self, command: str, name: str):
        ARTIFACTS.mkdir(exist_ok=True)
        self.command = command
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}-{int(time.time() * 1000) % 10**8}.log"
        self._log = open(self.log_path, "w")
        # A terminal on stdin, as for a user: `ros2 launch` then knows that Ctrl-C reached its processes already
        # (without one it assumes a service manager and signals them a second time).
        self._tty, tty = pty.openpty()
        # bash -c with one command execs it: the group leader is the command itself
        self.proc = subprocess.Popen(["bash", "-c", command], cwd=str(ROOT), env=tools_env(), stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=tty, start_new_session=True)
        os.close(tty)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 120.0) -> bool:
        return wait_for_text(self.output, self.proc, text, timeout)

    def interrupt(self, timeout: float = 60.0) -> Optional[int]:
        """Ctrl-C; the exit code, or None when it did not end within `timeout` (stop() then kills it)."""
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Ctrl-C if still running, then SIGKILL to whatever is left of the process group."""
        if self.proc.poll() is None:
            self.interrupt(timeout=15)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)
        self._log.close()
        os.close(self._tty)
