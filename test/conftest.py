"""Shared test set-up, before rclpy is imported anywhere: the ROS variables of this test run (ros_environment.py),
whatever the user's shell holds. Every process the tests start inherits them: discovery on this machine only, a ROS
domain of this run's own (locked until the run ends, so two runs at once never see each other's nodes), a DDS RMW
installed here, this checkout's package first on AMENT_PREFIX_PATH. The pytest header says what was chosen.
"""
import os

import ros_environment

_NOTES = ros_environment.set_up(os.environ)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_report_header(config):
    return _NOTES
