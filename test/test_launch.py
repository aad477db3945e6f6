"""launch_testing: tts.launch.py brings the node to `active` and /speak answers.

Runs where ROS 2 launch is installed (a robot, the container); skipped on pip-only machines, where `launch`,
`launch_ros` and `launch_testing` cannot be installed (not on PyPI).
"""
import importlib.util
import os
import unittest

import pytest

MISSING = [m for m in ("launch", "launch_ros", "launch_testing") if importlib.util.find_spec(m) is None]
if MISSING or not hasattr(importlib.import_module("launch"), "LaunchDescription"):
    pytest.skip(f"ROS 2 launch is not installed here ({', '.join(MISSING) or 'PyPI launch is unrelated'}); "
                f"this test runs where ROS 2 is installed from apt", allow_module_level=True)

import launch  # noqa: E402
import launch_testing.actions  # noqa: E402
import rclpy  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.launch_test
def generate_test_description():
    params = os.path.join(HERE, "launch_params.yaml")
    with open(params, "w") as f:
        f.write("/**:\n  ros__parameters:\n    http.enabled: false\n    audio.realtime: false\n")
    tts = launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(os.path.join(HERE, "..", "launch", "tts.launch.py")),
        launch_arguments={"params_file": params}.items())
    return launch.LaunchDescription([tts, launch_testing.actions.ReadyToTest()])


class TestLaunchSpeaks(unittest.TestCase):
    def test_node_becomes_active_and_speaks(self, proc_output):
        from lifecycle_msgs.srv import GetState
        from ros2_chatterbox.srv import Speak
        rclpy.init()
        node = rclpy.create_node("launch_test_client")
        try:
            proc_output.assertWaitFor("active: ready to speak", timeout=120)
            state = node.create_client(GetState, "/tts_node/get_state")
            self.assertTrue(state.wait_for_service(timeout_sec=10))
            fut = state.call_async(GetState.Request())
            rclpy.spin_until_future_complete(node, fut, timeout_sec=10)
            self.assertEqual(fut.result().current_state.label, "active")
            speak = node.create_client(Speak, "/speak")
            self.assertTrue(speak.wait_for_service(timeout_sec=10))
            fut = speak.call_async(Speak.Request(text="Hello from the launch test."))
            rclpy.spin_until_future_complete(node, fut, timeout_sec=60)
            self.assertTrue(fut.result().success, fut.result().message)
        finally:
            node.destroy_node()
            rclpy.shutdown()
