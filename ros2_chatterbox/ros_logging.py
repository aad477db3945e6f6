"""The package's log records, said by the node: one path from any module to the console and /rosout.

Every module logs with the standard library (`log = logging.getLogger(__name__)`, all under `ros2_chatterbox`) and
knows nothing of ROS. The node installs one `RosLogHandler` on the `ros2_chatterbox` logger while it exists: each
record goes to the node's ROS logger at the matching severity, so a library's warning reads as the node's, with its
name, in the console and on /rosout. The package logger stops propagating meanwhile (printed once, never again by a
root handler) and passes every level: the ROS logger's level (`--ros-args --log-level ...`) decides what is shown.
Without ROS (`python -m ros2_chatterbox.http`, tests), records take the standard library's usual path.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

PACKAGE_LOGGER = "ros2_chatterbox"


class RosLogHandler(logging.Handler):
    """Forwards stdlib records to a ROS logger (rclpy's `node.get_logger()`): debug, info, warning, error, fatal."""

    def __init__(self, ros_logger: Any):
        super().__init__(logging.DEBUG)
        self.ros_logger = ros_logger
        self.setFormatter(logging.Formatter("%(message)s"))  # ROS adds the severity, time and node name

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            ros = self.ros_logger
            # one call site per severity: rclpy refuses a call site whose severity changes between calls
            if record.levelno >= logging.CRITICAL:
                ros.fatal(msg)
            elif record.levelno >= logging.ERROR:
                ros.error(msg)
            elif record.levelno >= logging.WARNING:
                ros.warning(msg)
            elif record.levelno >= logging.INFO:
                ros.info(msg)
            else:
                ros.debug(msg)
        except Exception:  # noqa: BLE001 - logging never raises into the code that logs
            self.handleError(record)


def forward_to_ros(ros_logger: Any) -> Callable[[], None]:
    """Send the package's records to `ros_logger` until the returned function is called (it restores the package
    logger as it was)."""
    package = logging.getLogger(PACKAGE_LOGGER)
    handler = RosLogHandler(ros_logger)
    level, propagate = package.level, package.propagate
    package.addHandler(handler)
    package.setLevel(logging.DEBUG)
    package.propagate = False

    def remove() -> None:
        if handler in package.handlers:
            package.removeHandler(handler)
            package.setLevel(level)
            package.propagate = propagate

    return remove
