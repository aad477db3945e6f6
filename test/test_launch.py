"""launch_testing: tts.launch.py configures, then activates the node exactly once; a walk through the transitions
(deactivate, activate, cleanup, configure); the node's exit code after launch has shut it down (the shape of
ros2/demos lifecycle_py's test). The shutdown transition and Ctrl-C in each state: test_ros2_cli.py.

Runs where ROS 2 launch exists (`make ros2-tools` installs it on pip-only machines, `make setup-test` runs that; ROS 2
installations have it); elsewhere each test skips with the reason and that command.
"""
from pathlib import Path
import tempfile
import unittest

import pytest

from ros_helpers import ROOT, RosClient, write_params
from ros_tools import LAUNCH_MISSING

if not LAUNCH_MISSING:
    import launch
    import launch_testing.actions
    import launch_testing.asserts
    from launch.launch_description_sources import PythonLaunchDescriptionSource

needs_launch = unittest.skipIf(bool(LAUNCH_MISSING), LAUNCH_MISSING)
post_shutdown_test = (lambda cls: cls) if LAUNCH_MISSING else launch_testing.post_shutdown_test()
READY = "active: ready to speak"


@pytest.mark.launch_test
def generate_test_description():
    params = write_params(Path(tempfile.mkdtemp(prefix="cbx_launch_")) / "params.yaml",
                          {"http.enabled": False, "audio.realtime": False})
    tts = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch" / "tts.launch.py")),
        launch_arguments={"params_file": str(params)}.items())
    return launch.LaunchDescription([tts, launch_testing.actions.ReadyToTest()])


@needs_launch
class TestLifecycleWalk(unittest.TestCase):
    def test_every_transition(self, proc_output):
        client = RosClient("launch_walk")
        try:
            proc_output.assertWaitFor(READY, timeout=180)
            self.assertEqual(client.get_state(), "active")
            self.assertTrue(client.speak("Launched and active.").success)

            self.assertTrue(client.change_state("deactivate"))
            self.assertEqual(client.get_state(), "inactive")
            answer = client.speak("Not now.")
            self.assertFalse(answer.success)
            self.assertIn("not active", answer.message)
            # activate succeeds only from inactive: launch has not re-activated the node behind our back
            self.assertTrue(client.change_state("activate"))
            self.assertTrue(client.speak("Active again.").success)

            self.assertTrue(client.change_state("deactivate"))
            self.assertTrue(client.change_state("cleanup"))
            self.assertEqual(client.get_state(), "unconfigured")
            self.assertTrue(client.change_state("configure"))
            # the launch file activates once, at start-up: a later configure leaves the node inactive
            self.assertEqual(client.get_state(), "inactive")
            self.assertTrue(client.change_state("activate"))
            self.assertTrue(client.speak("Configured again.").success)
            # the shutdown transition and Ctrl-C in every state: test_ros2_cli.py (through `ros2 launch`)
        finally:
            client.close()


@post_shutdown_test
@needs_launch
class TestAfterShutdown(unittest.TestCase):
    def test_node_exit_code(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info)

    def test_activated_once_per_request(self, proc_output):
        text = "".join(io.text.decode(errors="replace") for io in proc_output)
        # once by the launch file, twice by the walk: never by the launch file again after a deactivate/configure
        self.assertEqual(text.count(READY), 3, text[-4000:])
        self.assertNotIn("Traceback", text)
