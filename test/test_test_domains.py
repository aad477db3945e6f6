"""Each test run gets a ROS domain of its own and the ROS variables it needs (test/conftest.py,
ros_environment.py), whatever the user's shell holds: two runs at once never share a domain; a domain the caller
sets is kept unless another run holds it or a process on this machine uses it (the user's robot, say); a shell's
ROS_LOCALHOST_ONLY, discovery range, static peers, unknown RMW and other workspace do not reach the tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import ros_environment

HERE = Path(__file__).resolve().parent
# imports conftest as a test run does, prints what it chose, and holds its domain until its stdin closes
CLAIM = ("import json, os, sys, conftest; print(json.dumps({'env': dict(os.environ), 'notes': conftest._NOTES}), "
         "flush=True); sys.stdin.read()")
USER_VARS = ("ROS_DOMAIN_ID", "CBX_TEST_DOMAIN_ID", "ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS", "RMW_IMPLEMENTATION",
             "ROS_AUTOMATIC_DISCOVERY_RANGE")


def _start(env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in USER_VARS}
    env.update(env_overrides)
    return subprocess.Popen(["timeout", "-s", "KILL", "60", sys.executable, "-c", CLAIM], cwd=str(HERE), env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _claim_all(overrides_list):
    """What each of several test runs started at once chose: {'env': ..., 'notes': [...]} per run."""
    procs = [_start(o) for o in overrides_list]
    try:
        return [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(30)


def _domains(overrides_list):
    return [run["env"]["ROS_DOMAIN_ID"] for run in _claim_all(overrides_list)]


def test_two_runs_at_once_get_different_domains():
    first, second = _domains([{}, {}])
    assert first != second
    assert all(0 <= int(d) <= 101 for d in (first, second))


def test_an_explicit_domain_is_kept():
    assert _domains([{"ROS_DOMAIN_ID": "7"}, {"CBX_TEST_DOMAIN_ID": "9", "ROS_DOMAIN_ID": "7"}]) == ["7", "9"]


def test_a_shell_domain_held_by_another_run_is_not_shared():
    held, _ = ros_environment.claim_domain({})  # free, and now held by this run (no participant in it)
    run, = _claim_all([{"ROS_DOMAIN_ID": held}])
    assert run["env"]["ROS_DOMAIN_ID"] != held
    assert f"ROS_DOMAIN_ID={held} from your shell is held by another test run" in run["notes"][0], run["notes"]


def test_a_shell_domain_in_use_on_this_machine_is_not_joined(tmp_path):
    """The user's robot (or `make run`) in the domain their shell exports: the tests' nodes would answer its calls,
    and it theirs."""
    domain, _ = ros_environment.claim_domain({})  # free, and held by this run: no other run starts nodes in it
    robot = subprocess.Popen(
        ["timeout", "-s", "KILL", "120", sys.executable, "-c",
         "import rclpy, sys; rclpy.init(); node = rclpy.create_node('robot'); print('up', flush=True); "
         "sys.stdin.read()"],
        env={**os.environ, "ROS_DOMAIN_ID": domain}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert robot.stdout.readline().strip() == "up"
        assert ros_environment.participants_on(int(domain))
        run, = _claim_all([{"ROS_DOMAIN_ID": domain}])
    finally:
        robot.stdin.close()
        robot.wait(60)
    assert run["env"]["ROS_DOMAIN_ID"] != domain
    assert f"ROS_DOMAIN_ID={domain} from your shell is in use on this machine" in run["notes"][0], run["notes"]


def test_a_users_ros_variables_do_not_reach_the_tests(tmp_path):
    other_workspace = str(tmp_path / "other_ws" / "install")
    run, = _claim_all([{"ROS_LOCALHOST_ONLY": "1", "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                        "ROS_STATIC_PEERS": "192.168.1.20", "RMW_IMPLEMENTATION": "rmw_zenoh_cpp",
                        "AMENT_PREFIX_PATH": other_workspace}])
    env = run["env"]
    assert "ROS_LOCALHOST_ONLY" not in env and "ROS_STATIC_PEERS" not in env
    assert env["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    assert "RMW_IMPLEMENTATION" not in env  # the default RMW: zenoh would need a router running
    paths = env["AMENT_PREFIX_PATH"].split(os.pathsep)
    assert paths[-1] == other_workspace and paths[0] != other_workspace
    assert any(n.startswith("ROS_LOCALHOST_ONLY from your shell is not used") for n in run["notes"]), run["notes"]


def test_an_installed_dds_rmw_from_the_shell_is_kept():
    run, = _claim_all([{"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}])
    assert run["env"]["RMW_IMPLEMENTATION"] == "rmw_fastrtps_cpp", run["notes"]
