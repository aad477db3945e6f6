"""Each test run gets a ROS domain of its own (test/conftest.py): two runs at once never share one; a domain the
caller sets explicitly is kept."""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# imports conftest as a test run does, prints the domain it got, and holds it until its stdin closes
CLAIM = "import os, sys, conftest; print(os.environ['ROS_DOMAIN_ID'], flush=True); sys.stdin.read()"


def _start(env_overrides):
    env = {k: v for k, v in os.environ.items() if k not in ("ROS_DOMAIN_ID", "CBX_TEST_DOMAIN_ID")}
    env.update(env_overrides)
    return subprocess.Popen(["timeout", "-s", "KILL", "60", sys.executable, "-c", CLAIM], cwd=str(HERE), env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _claim_all(overrides_list):
    procs = [_start(o) for o in overrides_list]
    try:
        return [p.stdout.readline().strip() for p in procs]
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(30)


def test_two_runs_at_once_get_different_domains():
    first, second = _claim_all([{}, {}])
    assert first and second and first != second
    assert all(0 <= int(d) <= 101 for d in (first, second))


def test_an_explicit_domain_is_kept():
    assert _claim_all([{"ROS_DOMAIN_ID": "7"}, {"CBX_TEST_DOMAIN_ID": "9", "ROS_DOMAIN_ID": "7"}]) == ["7", "9"]
