"""launch_testing: tts.launch.py reports a failed configure or activate once, with the node's reason, and never
retries it; the node stays up in the state the failure left it in and can be driven on by hand.

Two nodes from one launch: /port_taken (its HTTP port is held by the test: activate fails) and /no_model (a
Chatterbox model folder that does not exist: configure fails).
"""
import socket
import tempfile
import unittest
from pathlib import Path

import pytest

from ros_helpers import ROOT, RosClient, write_params
from ros_tools import LAUNCH_MISSING

if not LAUNCH_MISSING:
    import launch
    import launch_testing.actions
    from launch.launch_description_sources import PythonLaunchDescriptionSource

needs_launch = unittest.skipIf(bool(LAUNCH_MISSING), LAUNCH_MISSING)
post_shutdown_test = (lambda cls: cls) if LAUNCH_MISSING else launch_testing.post_shutdown_test()
ACTIVATE_FAILED = "activate failed: HTTP server on 127.0.0.1:"
CONFIGURE_FAILED = "configure failed:"


def _include(namespace: str, params: Path):
    return launch.actions.IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(ROOT / "launch" / "tts.launch.py")),
        launch_arguments={"params_file": str(params), "namespace": namespace}.items())


@pytest.mark.launch_test
def generate_test_description():
    folder = Path(tempfile.mkdtemp(prefix="cbx_launch_fail_"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port_taken = write_params(folder / "port_taken.yaml", {"http.enabled": True, "http.port": taken.getsockname()[1],
                                                           "audio.realtime": False})
    no_model = write_params(folder / "no_model.yaml", {"engine": "chatterbox_turbo", "fallback_engine": "",
                                                       "model_dir": str(folder / "missing-model"),
                                                       "http.enabled": False})
    return (launch.LaunchDescription([_include("port_taken", port_taken), _include("no_model", no_model),
                                      launch_testing.actions.ReadyToTest()]),
            {"taken": taken})


@needs_launch
class TestFailuresAreReportedOnce(unittest.TestCase):
    def test_failed_activate_stays_inactive_until_fixed(self, proc_output, taken):
        client = RosClient("launch_fail_activate")
        try:
            proc_output.assertWaitFor(ACTIVATE_FAILED, timeout=180)
            self.assertEqual(client.get_state("/port_taken/tts_node"), "inactive")
            taken.close()  # the cause goes away: activating by hand now works, launch did not retry meanwhile
            self.assertTrue(client.change_state("activate", node="/port_taken/tts_node"))
            self.assertTrue(client.speak("The port is free now.", ns="/port_taken").success)
        finally:
            client.close()

    def test_failed_configure_stays_unconfigured(self, proc_output):
        client = RosClient("launch_fail_configure")
        try:
            proc_output.assertWaitFor("missing-model", timeout=180)
            self.assertEqual(client.get_state("/no_model/tts_node"), "unconfigured")
            answer = client.speak("Anyone there?", ns="/no_model")
            self.assertFalse(answer.success)
            self.assertIn("not active", answer.message)
        finally:
            client.close()


@post_shutdown_test
@needs_launch
class TestAfterShutdown(unittest.TestCase):
    def test_each_failure_reported_once(self, proc_output):
        text = "".join(io.text.decode(errors="replace") for io in proc_output)
        self.assertEqual(text.count(ACTIVATE_FAILED), 1, text[-4000:])
        self.assertEqual(text.count(CONFIGURE_FAILED), 1, text[-4000:])
        self.assertEqual(text.count("active: ready to speak"), 1, text[-4000:])  # the activate by hand

    def test_node_exit_codes(self, proc_info):
        for p in proc_info:  # the unconfigured /no_model node too: Ctrl-C ends a node in every state
            self.assertEqual(p.returncode, 0, f"{p.process_name} exited with code {p.returncode}")
