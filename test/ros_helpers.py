"""Start the node as its own process (the command `make run` uses) and talk to it with rclpy from the test.

Every process gets loopback-only discovery, this session's ROS_DOMAIN_ID (ros_environment.py, whatever the user's
shell holds), a hard timeout, and is stopped by PID.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

import ros_environment
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable  # the set-up's interpreter that runs the tests (.venv/, or .venv-jazzy/ for Jazzy)
ARTIFACTS = ROOT / "test-artifacts"


def wait_for_text(read, proc: subprocess.Popen, text: str, timeout: float) -> bool:
    """Poll a process's output (`read()`) with a deadline until `text` appears; give up early once it has ended."""
    wait_until(lambda: text in read() or proc.poll() is not None, timeout, 0.1)
    return text in read()


def ros_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This run's environment (conftest.py set its ROS variables), cleaned again for use outside pytest."""
    env, _ = ros_environment.cleaned(os.environ)
    env.setdefault("ROS_DOMAIN_ID", "42")
    env["PYTHONPATH"] = str(ROOT) + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    if extra:
        env.update(extra)
    return env


def write_params(path: Path, overrides: Dict[str, Any], node_name: str = "tts_node") -> Path:
    """A params file: config/params.yaml with overrides (flat dotted names)."""
    base = yaml.safe_load((ROOT / "config" / "params.yaml").read_text())
    params = base["/**"]["ros__parameters"]
    for name, value in overrides.items():
        d = params
        parts = name.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


class NodeProcess:
    """The node in its own process: `python -m ros2_chatterbox.tts_node [--autostart] --ros-args --params-file F`."""

    def __init__(self, params: Dict[str, Any], autostart: bool = True, timeout: float = 300.0,
                 extra_args: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None, name: str = "node",
                 namespace: str = ""):
        self.tmp = tempfile.TemporaryDirectory(prefix="cbx_node_")
        self.params_file = write_params(Path(self.tmp.name) / "params.yaml", params)
        ARTIFACTS.mkdir(exist_ok=True)
        self.log_path = ARTIFACTS / f"{name}-{os.getpid()}-{int(time.time() * 1000) % 10**8}.log"
        cmd = ["timeout", "-s", "KILL", str(int(timeout)), PY, "-m", "ros2_chatterbox.tts_node"]
        if autostart:
            cmd.append("--autostart")
        cmd += ["--ros-args", "--params-file", str(self.params_file)] + (extra_args or [])
        if namespace:
            cmd += ["-r", f"__ns:={namespace}"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=ros_env(env), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> bool:
        return wait_for_text(self.output, self.proc, text, timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGINT (clean shutdown), then SIGKILL of the whole process group by PID."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)
        self.log.close()
        self.tmp.cleanup()
        return self.proc.returncode


@functools.lru_cache(maxsize=None)
def _action_client_class():
    from rclpy.action import ActionClient

    class SafeActionClient(ActionClient):
        """rclpy Kilted's ActionClient registers itself with the node before its constructor sets `_lock`, which
        its get_num_entities takes: an executor collecting entities in that window dies with AttributeError (and
        with it every later callback of the test client). The lock exists from the start here; rclpy's constructor
        replaces it with another lock at its end. Jazzy's ActionClient has no such lock: harmless there."""

        def __init__(self, *args, **kwargs):
            self._lock = threading.Lock()
            super().__init__(*args, **kwargs)

    return SafeActionClient


class RosClient:
    """An rclpy node in the test process, spun by a background executor thread."""

    def __init__(self, name: str = "test_client"):
        import rclpy
        from rclpy.executors import MultiThreadedExecutor
        if not rclpy.ok():
            rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node(f"{name}_{os.getpid()}_{int(time.time() * 1000) % 100000}")
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.audio: List[Any] = []
        self.speaking: List[bool] = []
        self.audio_info: List[Any] = []
        self._subs = []

    def action_client(self, action_type, name: str):
        """An rclpy ActionClient on this node, safe to build while the executor spins (SafeActionClient)."""
        return _action_client_class()(self.node, action_type, name)

    def subscribe_outputs(self, ns: str = "") -> None:
        from audio_common_msgs.msg import AudioDataStamped, AudioInfo
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_msgs.msg import Bool
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self._subs += [
            self.node.create_subscription(AudioDataStamped, f"{ns}/tts/audio", self.audio.append,
                                          QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)),
            self.node.create_subscription(Bool, f"{ns}/tts/speaking", lambda m: self.speaking.append(m.data),
                                          latched),
            self.node.create_subscription(AudioInfo, f"{ns}/tts/audio_info", self.audio_info.append, latched),
        ]

    def call(self, srv_type, name: str, request, timeout: float = 60.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=min(timeout, 30.0)):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            end = time.monotonic() + timeout
            while not future.done() and time.monotonic() < end:
                time.sleep(0.02)
            if not future.done():
                raise TimeoutError(f"no answer from {name} within {timeout} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def speak(self, text: str, voice: str = "", interrupt: bool = False, timeout: float = 60.0, ns: str = ""):
        """Call {ns}/speak (ns like '/robot1')."""
        from ros2_chatterbox.srv import Speak
        return self.call(Speak, f"{ns}/speak", Speak.Request(text=text, voice=voice, interrupt=interrupt), timeout)

    def change_state(self, transition: str, node: str = "/tts_node", timeout: float = 120.0) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_UNCONFIGURED_SHUTDOWN}
        req = ChangeState.Request()
        req.transition.id = ids[transition]
        if transition == "shutdown":
            req.transition.label = "shutdown"
            req.transition.id = 0
        return self.call(ChangeState, f"{node}/change_state", req, timeout).success

    def get_state(self, node: str = "/tts_node", timeout: float = 30.0) -> str:
        from lifecycle_msgs.srv import GetState
        return self.call(GetState, f"{node}/get_state", GetState.Request(), timeout).current_state.label

    def try_state(self, node: str = "/tts_node") -> str:
        """The node's lifecycle state, or '' while it is not reachable yet."""
        try:
            return self.get_state(node, timeout=5)
        except TimeoutError:
            return ""

    def wait_until(self, predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
        return wait_until(predicate, timeout, interval)

    def settle(self, quiet: float = 0.4, timeout: float = 10.0) -> None:
        """Wait until no audio has arrived for `quiet` seconds (DDS delivers after a service answers)."""
        end = time.monotonic() + timeout
        n = -1
        while time.monotonic() < end:
            if len(self.audio) == n:
                return
            n = len(self.audio)
            time.sleep(quiet)

    def audio_seconds(self, sample_rate: int, msgs=None) -> float:
        msgs = self.audio if msgs is None else msgs
        return sum(len(m.audio.data) for m in msgs) / 2.0 / sample_rate

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stamp_s(msg) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def utterances(msgs, sample_rate: int, tol: float = 0.002) -> List[List[Any]]:
    """Group audio messages into utterances: within one, each stamp = previous stamp + previous duration."""
    groups: List[List[Any]] = []
    for m in msgs:
        if groups:
            prev = groups[-1][-1]
            expected = stamp_s(prev) + len(prev.audio.data) / 2.0 / sample_rate
            if abs(stamp_s(m) - expected) <= tol:
                groups[-1].append(m)
                continue
        groups.append([m])
    return groups
