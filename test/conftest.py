"""Shared test set-up: one ROS domain per test session, loopback-only discovery, artifacts folder."""
import os
import random

# Before rclpy is imported anywhere: this session's traffic stays on this machine, in its own domain.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A domain of its own per pytest process, so parallel runs on one machine never hear each other.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("CBX_TEST_DOMAIN_ID") or str(random.Random(os.getpid()).randint(100, 200))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
