"""The README's pip-only commands (`tools/say.py ...`, the line under each `ros2 ...` line), run as written against
one node process: what a user reads on stdout and stderr, and the exit status.

The commands run with this test run's interpreter (`.venv/` or `.venv-jazzy/`) in this run's ROS domain; the
README's recording `/home/robot/alice.wav` becomes a test recording. The stop and Ctrl-C tests lengthen the
README's goal so that they always land while it speaks. The node is shut down by the last test.
"""
from __future__ import annotations

import os
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from http_fixtures import reference_wav
from ros_helpers import NodeProcess, wait_for_text
from ros_tools import Background, readme_command, ros2, wait_for_output
from ros2_chatterbox.text import EMPTY_TEXT

pytestmark = pytest.mark.timeout(400)
ROOT = Path(__file__).resolve().parent.parent
SAY = f"{sys.executable} tools/say.py"
LONGER = " ".join(f"Sentence number {i} of the story keeps the robot talking." for i in range(12))


def say_line(start: str, contains: str = "") -> str:
    """The README's `tools/say.py` line, run by this test run's interpreter."""
    return readme_command(start, contains).replace("tools/say.py", SAY)


def say(command: str, timeout: float = 120.0):
    r = ros2(command, timeout)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    return r


def error(r) -> str:
    """The last stderr line: the reason the command gives."""
    return r.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("say_cli")


@pytest.fixture(scope="module")
def node(folder):
    """/tts_node, autostarted as `make run` starts it (HTTP off: no port clashes), real-time audio."""
    proc = NodeProcess({"http.enabled": False, "voices_dir": str(folder)}, autostart=True, name="say-cli")
    try:
        assert proc.wait_for_log("active: ready to speak", 120), proc.output()
        yield proc
    finally:
        proc.stop()


def test_domain_line_says_when_it_is_make_runs_default(monkeypatch):
    """Without exported variables the CLI uses `make run`'s domain and says so (not run: that is domain 42)."""
    module = runpy.run_path(str(ROOT / "tools" / "say.py"))
    monkeypatch.delenv("ROS_DOMAIN_ID", raising=False)
    monkeypatch.delenv("ROS_AUTOMATIC_DISCOVERY_RANGE", raising=False)
    assert module["ros_environment"]() == (
        "[say] ROS_DOMAIN_ID=42 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (ROS_DOMAIN_ID and "
        "ROS_AUTOMATIC_DISCOVERY_RANGE not exported: `make run`'s default)")
    assert os.environ["ROS_DOMAIN_ID"] == "42"
    monkeypatch.setenv("ROS_DOMAIN_ID", "7")
    assert module["ros_environment"]() == "[say] ROS_DOMAIN_ID=7 ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"


def test_no_node_names_the_domain_and_how_to_start_it():
    """As written (`tools/say.py`, whatever python3 is), in this run's domain, where no such node runs."""
    r = say("tools/say.py lifecycle get --ns /nobody_here --wait 1", timeout=60)
    assert r.returncode == 2, r.stderr
    domain = os.environ["ROS_DOMAIN_ID"]
    assert r.stderr.splitlines()[0] == f"[say] ROS_DOMAIN_ID={domain} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"
    assert error(r).startswith(f"[say] service /nobody_here/tts_node/get_state not found within 1 s in "
                               f"ROS_DOMAIN_ID={domain} "), r.stderr
    assert "Start it with `make run`" in error(r) and "--ns" in error(r)
    assert r.stdout == ""


def test_speak_prints_the_domain_and_one_result(node):
    r = say(say_line("tools/say.py speak", "Hello"))
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [f"[say] ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} "
                                     "ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST"]
    spoke = re.fullmatch(r"spoke (\d+\.\d\d) s of audio; 22050 Hz, answered after \d+\.\d\d s\n", r.stdout)
    assert spoke and 1.0 < float(spoke[1]) < 10.0, r.stdout


def test_quick_start_form_and_interrupt(node):
    quick = readme_command(".venv/bin/python tools/say.py").replace(".venv/bin/python", sys.executable)
    r = say(quick)
    assert r.returncode == 0 and r.stdout.startswith("spoke "), r.stdout + r.stderr
    r = say(say_line("tools/say.py speak --interrupt"))
    assert r.returncode == 0 and r.stdout.startswith("spoke "), r.stdout + r.stderr


def test_languages_and_a_language_the_model_lacks(node):
    r = say(say_line("tools/say.py languages"))
    assert (r.returncode, r.stdout) == (0, "en  English  (default)\nmodel: piper\n"), r.stdout + r.stderr
    r = say(f"{SAY} speak --language fr Bonjour.")
    assert r.returncode == 1, r.stdout + r.stderr
    assert error(r) == "[say] not spoken: language 'fr' is not supported by model 'piper'; supported: en", r.stderr


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_and_blank_text_fail_with_one_message(node, text):
    r = say(f"{SAY} speak {shlex.quote(text)}")
    assert r.returncode == 1
    assert error(r) == f"[say] not spoken: {EMPTY_TEXT}"
    assert r.stdout == ""  # no "0.00 s of audio at 0 Hz"


def test_topic_is_spoken_and_speaking_shows_it(node):
    watch = Background(say_line("tools/say.py speaking"), "say-speaking")
    try:
        assert watch.wait_for("speaking: false", timeout=60), watch.output()  # latched: the current state at once
        seen = len(watch.output())
        r = say(say_line("tools/say.py topic"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("published on /tts/text"), r.stdout
        assert wait_for_text(lambda: watch.output()[seen:], watch.proc, "speaking: true", 60), watch.output()
        assert watch.interrupt(timeout=30) == 0, watch.output()  # Ctrl-C is how watching ends
    finally:
        watch.stop()


def test_say_action_prints_feedback_then_the_result(node):
    r = say(say_line("tools/say.py say"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"feedback: +0% +0\.00 s  A long story\.", lines[0]), lines
    assert any(re.fullmatch(r"feedback: +\d+% +\d+\.\d\d s  It has many sentences\.", line) for line in lines)
    assert any(line.endswith("  Cancel me any time.") for line in lines), lines
    assert re.fullmatch(r"result: spoke \d+\.\d\d s of audio", lines[-1]), lines


def test_stop_ends_a_running_goal(node):
    goal = Background(say_line("tools/say.py say").replace("Cancel me any time.", "Cancel me any time. " + LONGER),
                      "say-goal")
    try:
        assert goal.wait_for("feedback:", timeout=60), goal.output()
        r = say(say_line("tools/say.py stop"))
        assert (r.returncode, r.stdout) == (0, "stopped; 1 request(s) cancelled\n"), r.stdout + r.stderr
        assert goal.proc.wait(60) == 1, goal.output()
        assert goal.output().rstrip().endswith("[say] cancelled: stopped by tts/stop (goal CANCELED)"), goal.output()
    finally:
        goal.stop()


def test_ctrl_c_cancels_the_goal(node):
    goal = Background(say_line("tools/say.py say").replace("Cancel me any time.", "Cancel me any time. " + LONGER),
                      "say-ctrl-c")
    try:
        assert goal.wait_for("feedback:", timeout=60), goal.output()
        assert goal.interrupt(timeout=30) == 130, goal.output()
        assert goal.output().rstrip().endswith("[say] Ctrl-C: goal cancelled"), goal.output()
    finally:
        goal.stop()
    wait_for_output(f"{SAY} speaking --once", "speaking: false", timeout=60)  # the node stopped speaking


def test_voices_add_list_delete(node, tmp_path):
    recording = tmp_path / "alice.wav"  # outside the node's voices folder
    recording.write_bytes(reference_wav())
    add = say_line("tools/say.py voices add").replace("/home/robot/alice.wav", str(recording))
    r = say(add)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("voice 'alice' saved") and r.stdout.endswith("; 6.0 s recording\n"), r.stdout
    r = say(say_line("tools/say.py voices list"))
    assert r.returncode == 0 and "alice" in r.stdout.splitlines(), r.stdout
    r = say(add)
    assert r.returncode == 1 and error(r).startswith("[say] voice not added: voice 'alice' already exists"), r.stderr
    relative = os.path.relpath(recording, ROOT)  # the node reads the path: the CLI makes it absolute
    r = say(f"{SAY} voices add --overwrite --name alice --language FR {shlex.quote(relative)}")
    assert r.returncode == 0, r.stderr
    assert "alice  [fr]" in say(say_line("tools/say.py voices list")).stdout.splitlines()  # the voice's language
    r = say(f"{SAY} voices delete alice")
    assert (r.returncode, r.stdout) == (0, "voice 'alice' deleted\n"), r.stdout + r.stderr
    assert "alice" not in say(say_line("tools/say.py voices list")).stdout.splitlines()
    r = say(f"{SAY} voices delete alice")
    assert r.returncode == 1 and error(r) == "[say] voice not deleted: unknown voice 'alice'", r.stderr


def test_param_describe_set_get(node):
    r = say(say_line("tools/say.py param describe"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "generation.temperature (double)" and "range: 0.05 to 2.0" in r.stdout
    r = say(say_line("tools/say.py param set", "generation.temperature"))
    assert (r.returncode, r.stdout) == (0, "generation.temperature = 0.6\n"), r.stdout + r.stderr
    r = say(say_line("tools/say.py param get", "generation.temperature"))
    assert (r.returncode, r.stdout) == (0, "generation.temperature = 0.6 (double)\n"), r.stdout + r.stderr
    r = say(f"{SAY} param set generation.temperature 1")  # an integer for a double parameter: 1.0
    assert (r.returncode, r.stdout) == (0, "generation.temperature = 1.0\n"), r.stdout + r.stderr
    r = say(f"{SAY} param set generation.temperature hot")
    assert r.returncode == 2 and error(r) == "[say] generation.temperature takes a double value, not 'hot'"
    r = say(f"{SAY} param get no.such.parameter")
    assert r.returncode == 1 and error(r) == "[say] /tts_node has no parameter 'no.such.parameter'"


def test_lifecycle_and_a_configure_time_parameter(node):
    r = say(say_line("tools/say.py lifecycle get"))
    assert (r.returncode, r.stdout) == (0, "active\n"), r.stdout + r.stderr
    r = say(f"{SAY} lifecycle set activate")
    assert r.returncode == 1
    assert error(r) == "[say] activate is not possible from state 'active'; possible: deactivate, shutdown"
    r = say(say_line("tools/say.py lifecycle set deactivate"))
    assert (r.returncode, r.stdout) == (0, "deactivate: done; state: inactive\n"), r.stdout + r.stderr
    r = say(say_line("tools/say.py speak", "Hello"))
    assert r.returncode == 1 and error(r).startswith("[say] not spoken: ") and "not active" in error(r), r.stderr
    assert say(f"{SAY} lifecycle set activate").returncode == 0

    r = say(say_line("tools/say.py param set", "queue.max_size"))
    assert r.returncode == 1 and "deactivate" in error(r) and "cleanup" in error(r), r.stderr
    r = say(say_line("tools/say.py lifecycle set deactivate && "))
    assert r.returncode == 0 and r.stdout.endswith("cleanup: done; state: unconfigured\n"), r.stdout + r.stderr
    r = say(say_line("tools/say.py param set", "queue.max_size"))
    assert (r.returncode, r.stdout) == (0, "queue.max_size = 8\n"), r.stdout + r.stderr
    r = say(say_line("tools/say.py lifecycle set configure && "))
    assert r.returncode == 0 and r.stdout.endswith("activate: done; state: active\n"), r.stdout + r.stderr
    r = say(say_line("tools/say.py param get", "queue.max_size"))
    assert (r.returncode, r.stdout) == (0, "queue.max_size = 8 (integer)\n"), r.stdout + r.stderr


def test_shutdown_finalizes_the_node(node):
    """Last: the node is finalized afterwards."""
    r = say(f"{SAY} lifecycle set shutdown")
    assert (r.returncode, r.stdout) == (0, "shutdown: done; state: finalized\n"), r.stdout + r.stderr
    r = say(f"{SAY} lifecycle set activate")
    assert r.returncode == 1 and error(r) == "[say] activate is not possible from state 'finalized'; possible: none"
