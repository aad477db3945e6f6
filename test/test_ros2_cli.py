"""The README's ROS 2 commands, run as written with the real `ros2` command line against a node started by the
README's `ros2 launch` command: service calls, topic pub/echo, the say action with feedback, stop, lifecycle,
parameters, the launch arguments (params_file, namespace, autostart, log_level) and Ctrl-C.

The one placeholder, `/path/to/params.yaml`, becomes this test's parameter file (HTTP off: no port clashes with
other test runs). The stop test lengthens the README's goal text, so that the stop always lands while it speaks.
The ros2 daemon that these commands use (as they do for a user) is stopped at the end.
"""
from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest

from http_fixtures import reference_wav
from ros_helpers import write_params
from ros_tools import (LAUNCH_MISSING, ROS2_MISSING, Background, lifecycle_state, readme_command,
                       readme_commands, ros2, ros2_ok, wait_for_output)

pytestmark = [pytest.mark.timeout(400),
              pytest.mark.skipif(bool(ROS2_MISSING or LAUNCH_MISSING), reason=ROS2_MISSING or LAUNCH_MISSING)]
PLACEHOLDER = "/path/to/params.yaml"
LAUNCH = "ros2 launch ros2_chatterbox tts.launch.py"


def readme_launch(*args: str) -> str:
    """The README's launch command with exactly these arguments."""
    found = [c for c in readme_commands() if c.startswith(LAUNCH) and sorted(c.split()[4:]) == sorted(args)]
    assert len(found) == 1, f"the README should show `{LAUNCH} {' '.join(args)}` once"
    return found[0]


def transition(name: str, node: str = "/tts_node") -> str:
    """The README's `ros2 lifecycle set` line ("deactivate  # or: configure, activate, cleanup, shutdown")."""
    command = readme_command("ros2 lifecycle set /tts_node deactivate")
    return command.replace("/tts_node", node).rsplit(" ", 1)[0] + f" {name}"


def state(node: str = "/tts_node") -> str:
    """`ros2 lifecycle get`'s answer ("active [3]"), past any warning lines the command prints."""
    return lifecycle_state(ros2_ok(readme_command("ros2 lifecycle get").replace("/tts_node", node), "["))


def ended_cleanly(launched: Background) -> bool:
    """Ctrl-C: launch and the node end, the node on its own (launch did not have to escalate to SIGTERM/SIGKILL)."""
    code = launched.interrupt(timeout=60)
    out = launched.output()
    return code == 0 and "process has finished cleanly" in out and "escalating" not in out


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="cbx_cli_") as name:
        (Path(name) / "voices").mkdir()
        yield Path(name)


@pytest.fixture(scope="module")
def params_file(folder):
    return str(write_params(folder / "params.yaml", {"http.enabled": False, "voices_dir": str(folder / "voices")}))


@pytest.fixture(scope="module")
def daemon():
    ros2_ok("ros2 daemon start", "daemon")
    yield
    ros2("ros2 daemon stop", timeout=60)


@pytest.fixture(scope="module")
def node(daemon, params_file):
    """`ros2 launch ros2_chatterbox tts.launch.py params_file:=...`: /tts_node, configured and activated."""
    launched = Background(readme_launch(f"params_file:={PLACEHOLDER}").replace(PLACEHOLDER, params_file), "cli-launch")
    try:
        wait_for_output(readme_command("ros2 lifecycle get"), "active [3]", timeout=240)
        yield launched
    finally:
        launched.stop()


def test_speak_service(node):
    out = ros2_ok(readme_command("ros2 service call /speak", "Hello"), "success=True")
    assert "sample_rate=22050" in out


def test_speak_service_interrupt(node):
    ros2_ok(readme_command("ros2 service call /speak", "interrupt: true"), "success=True")


def test_topic_pub_is_spoken_and_echo_shows_speaking(node):
    echo = Background(readme_command("ros2 topic echo /tts/speaking"), "cli-echo")
    try:
        assert echo.wait_for("data: false", timeout=60), echo.output()  # latched: the current state at once
        ros2_ok(readme_command("ros2 topic pub --once"), "publishing #1")
        assert echo.wait_for("data: true", timeout=60), echo.output()
    finally:
        echo.stop()


def test_say_action_with_feedback(node):
    out = ros2_ok(readme_command("ros2 action send_goal --feedback /say"), "Goal finished with status: SUCCEEDED",
                  timeout=120)
    assert "Feedback:" in out and "audio_seconds:" in out, out
    assert "success: true" in out, out


def test_stop_ends_a_running_goal(node):
    # the README's goal speaks ~4 s: under load, `ros2 service call` can take that long to start and find the
    # service, so the goal is made long enough (~40 s) that the stop always arrives while it speaks
    command = readme_command("ros2 action send_goal --feedback /say")
    more = " ".join(f"Sentence number {i} of the story keeps the robot talking." for i in range(12))
    assert "Cancel me any time." in command
    goal = Background(command.replace("Cancel me any time.", "Cancel me any time. " + more), "cli-goal")
    try:
        assert goal.wait_for("Feedback:", timeout=60), goal.output()
        ros2_ok(readme_command("ros2 service call /tts/stop"), "success=True")
        assert goal.wait_for("Goal finished with status:", timeout=60), goal.output()
        assert "Goal finished with status: CANCELED" in goal.output(), goal.output()
    finally:
        goal.stop()


def test_add_and_list_voices(node, folder):
    recording = folder / "alice.wav"
    recording.write_bytes(reference_wav())
    out = ros2_ok(readme_command("ros2 service call /voices/add").replace("/home/robot/alice.wav", str(recording)),
                  "success=True")
    assert "name='alice'" in out, out
    ros2_ok(readme_command("ros2 service call /voices/list"), "names=['alice']")


def test_lifecycle_get_and_set(node):
    assert state() == "active [3]"
    ros2_ok(transition("deactivate"), "Transitioning successful")
    try:
        assert state() == "inactive [2]"
        out = ros2_ok(readme_command("ros2 service call /speak", "Hello"), "success=False")
        assert "not active" in out
    finally:
        ros2_ok(transition("activate"), "Transitioning successful")
    assert state() == "active [3]"


def test_param_describe_get_set_runtime(node):
    out = ros2_ok(readme_command("ros2 param describe"), "Description:")
    assert "Min value: 0.05" in out and "Max value: 2.0" in out, out
    ros2_ok(readme_command("ros2 param set", "generation.temperature"), "Set parameter successful")
    ros2_ok(readme_command("ros2 param get", "generation.temperature"), "Double value is: 0.6")


def test_param_describe_names_the_component_that_reads_it(node):
    """`audio.sentence_pause_ms` is the core's, `audio.chunk_ms` the ROS door's: the description says so."""
    out = ros2_ok("ros2 param describe /tts_node audio.sentence_pause_ms audio.chunk_ms", "Description:")
    assert "Description: [core] Silence inserted between sentences (ms)." in out, out
    assert "Description: [ros] Duration of each AudioDataStamped chunk on tts/audio (ms)." in out, out


def test_configure_time_parameter_refused_while_active_with_the_transitions_to_use(node):
    r = ros2(readme_command("ros2 param set", "queue.max_size"))
    out = r.stdout + r.stderr
    assert "Setting parameter failed" in out and "cleanup" in out and "configure" in out, out


def test_configure_time_parameter_set_while_unconfigured_applies_on_configure(node):
    ros2_ok(readme_command("ros2 lifecycle set /tts_node deactivate && "), "Transitioning successful")
    try:
        assert state() == "unconfigured [1]"
        ros2_ok(readme_command("ros2 param set", "queue.max_size"), "Set parameter successful")
    finally:
        ros2_ok(readme_command("ros2 lifecycle set /tts_node configure && "), "Transitioning successful")
    assert state() == "active [3]"
    ros2_ok(readme_command("ros2 param get", "queue.max_size"), "Integer value is: 8")
    ros2_ok(readme_command("ros2 service call /speak", "Hello"), "success=True")


def test_launch_with_namespace_and_log_level_then_ctrl_c(daemon, params_file):
    launched = Background(readme_launch(f"params_file:={PLACEHOLDER}", "namespace:=robot1", "log_level:=warn")
                          .replace(PLACEHOLDER, params_file), "cli-launch-ns")
    try:
        wait_for_output(readme_command("ros2 lifecycle get").replace("/tts_node", "/robot1/tts_node"), "active [3]",
                        timeout=240)
        ros2_ok(readme_command("ros2 service call /speak", "Hello").replace("/speak", "/robot1/speak"), "success=True")
        assert "loading engine" not in launched.output()  # info lines are below log_level warn
        assert ended_cleanly(launched), launched.output()[-3000:]
    finally:
        launched.stop()


def test_launch_without_autostart_then_ctrl_c_while_inactive(daemon, params_file):
    launched = Background(readme_launch(f"params_file:={PLACEHOLDER}", "namespace:=robot2", "autostart:=false")
                          .replace(PLACEHOLDER, params_file), "cli-launch-manual")
    try:
        node = "/robot2/tts_node"
        wait_for_output(readme_command("ros2 lifecycle get").replace("/tts_node", node), "unconfigured [1]",
                        timeout=240)
        ros2_ok(transition("configure", node), "Transitioning successful")
        assert state(node) == "inactive [2]"  # nobody activates it: autostart:=false leaves that to you
        assert ended_cleanly(launched), launched.output()[-3000:]
    finally:
        launched.stop()


def test_launch_reports_a_failed_activate_once_and_leaves_the_node_inactive(daemon, tmp_path):
    """The first round's bug: a failed activate re-fired the activation 224 times in 8 s, and Ctrl-C hung."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        params = write_params(tmp_path / "port_taken.yaml", {"http.enabled": True, "http.port": taken.getsockname()[1]})
        launched = Background(readme_launch(f"params_file:={PLACEHOLDER}", "namespace:=robot1", "log_level:=warn")
                              .replace(PLACEHOLDER, str(params)), "cli-launch-activate-fails")
        try:
            assert launched.wait_for("tts_node: activate failed", timeout=240), launched.output()[-3000:]
            wait_for_output(readme_command("ros2 lifecycle get").replace("/tts_node", "/robot1/tts_node"),
                            "inactive [2]", timeout=120)  # the daemon learns of the new node within a while
            ros2_ok(readme_command("ros2 service call /speak", "Hello").replace("/speak", "/robot1/speak"),
                    "success=False")  # a round trip through the node after the failure: no retry meanwhile
            out = launched.output()
            assert out.count("tts_node: activate failed") == 1 and out.count("activate failed: HTTP server") == 1, out
            assert ended_cleanly(launched), launched.output()[-3000:]
        finally:
            launched.stop()


def test_shutdown_transition_then_ctrl_c(node):
    """Last in this module: it ends the shared node."""
    ros2_ok(transition("shutdown"), "Transitioning successful")
    assert state() == "finalized [4]"
    assert ended_cleanly(node), node.output()[-3000:]
