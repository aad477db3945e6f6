"""One logging path: every module logs with the standard library under `ros2_chatterbox`; the node forwards those
records to its ROS logger (ros_logging.py), each at its own severity, printed once."""
from __future__ import annotations

import ast
import logging
import socket
from pathlib import Path

import pytest

from http_fixtures import http_core, serving  # noqa: F401
from ros2_chatterbox.ros_logging import PACKAGE_LOGGER, RosLogHandler, forward_to_ros

PKG = Path(__file__).resolve().parent.parent / "ros2_chatterbox"


class RecordingRosLogger:
    """What a node's ROS logger is asked to say, as (severity, message)."""

    def __init__(self):
        self.said = []

    def __getattr__(self, severity):
        if severity not in ("debug", "info", "warning", "error", "fatal"):
            raise AttributeError(severity)
        return lambda msg: self.said.append((severity, msg))


@pytest.fixture(autouse=True)
def propagating_module_loggers():
    """The package's module loggers as in the node's process: propagating to `ros2_chatterbox`. In this test process
    launch_testing's pytest plugin made every logger created after it a LaunchLogger that does not propagate."""
    for name in ("core", "speech_queue", "http.server", "http.errors", "engines.chatterbox.engine"):
        logging.getLogger(f"{PACKAGE_LOGGER}.{name}")
    loggers = [lg for name, lg in logging.Logger.manager.loggerDict.items()
               if name.startswith(PACKAGE_LOGGER + ".") and isinstance(lg, logging.Logger)]
    before = [lg.propagate for lg in loggers]
    for lg in loggers:
        lg.propagate = True
    yield
    for lg, propagate in zip(loggers, before):
        lg.propagate = propagate


@pytest.fixture
def ros_logger():
    ros = RecordingRosLogger()
    stop = forward_to_ros(ros)
    yield ros
    stop()


def test_each_level_reaches_the_ros_logger_at_its_severity(ros_logger):
    lib = logging.getLogger("ros2_chatterbox.core")
    lib.debug("d")
    lib.info("i")
    lib.warning("w %s", "arg")
    lib.error("e")
    lib.critical("c")
    assert ros_logger.said == [("debug", "d"), ("info", "i"), ("warning", "w arg"), ("error", "e"), ("fatal", "c")]


def test_an_exception_is_said_with_its_traceback(ros_logger):
    try:
        raise ValueError("broken")
    except ValueError:
        logging.getLogger("ros2_chatterbox.http.errors").exception("unexpected error")
    (severity, msg), = ros_logger.said
    assert severity == "error" and msg.startswith("unexpected error") and "ValueError: broken" in msg


def test_records_are_said_once_not_again_by_a_root_handler(ros_logger):
    seen_by_root = []

    class Root(logging.Handler):
        def emit(self, record):
            seen_by_root.append(record)

    root_handler = Root()
    logging.getLogger().addHandler(root_handler)  # as logging.basicConfig or a library would
    try:
        logging.getLogger("ros2_chatterbox.engines.chatterbox.engine").warning("the fast path is off")
    finally:
        logging.getLogger().removeHandler(root_handler)
    assert ros_logger.said == [("warning", "the fast path is off")]
    assert seen_by_root == []


def test_removing_the_handler_restores_the_package_logger():
    package = logging.getLogger(PACKAGE_LOGGER)
    before = (package.level, package.propagate, list(package.handlers))
    ros = RecordingRosLogger()
    stop = forward_to_ros(ros)
    assert any(isinstance(h, RosLogHandler) for h in package.handlers) and not package.propagate
    stop()
    stop()  # twice is harmless (destroy_node after a failed start)
    logging.getLogger("ros2_chatterbox.core").warning("after the node")
    assert ros.said == []
    assert (package.level, package.propagate, list(package.handlers)) == before


def test_a_real_ros_logger_says_each_severity_every_time(capfd):
    """rclpy refuses a call site whose severity changes between calls: the handler has one per severity."""
    rclpy_logging = pytest.importorskip("rclpy.logging")
    ros = rclpy_logging.get_logger("cbx_logging_test")
    ros.set_level(rclpy_logging.LoggingSeverity.DEBUG)
    stop = forward_to_ros(ros)
    try:
        lib = logging.getLogger("ros2_chatterbox.speech_queue")
        for _ in range(2):
            lib.debug("said at debug")
            lib.info("said at info")
            lib.warning("said at warning")
            lib.error("said at error")
            lib.critical("said at fatal")
    finally:
        stop()
    err = capfd.readouterr().err
    for tag, level in (("DEBUG", "debug"), ("INFO", "info"), ("WARN", "warning"), ("ERROR", "error"),
                       ("FATAL", "fatal")):
        lines = [line for line in err.splitlines() if f"said at {level}" in line]
        assert len(lines) == 2 and all(f"[{tag}]" in line and "[cbx_logging_test]" in line for line in lines), err


def test_uvicorn_warnings_take_the_same_path(http_core, ros_logger):
    """uvicorn's own logger (a malformed request) reaches the node's logger through the package logger."""
    with serving(http_core) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 400")
    assert [m for sev, m in ros_logger.said if sev == "warning"] == ["Invalid HTTP request received."]


def test_no_module_threads_a_log_callback():
    """`log = logging.getLogger(__name__)` in each module that logs; no `log=` parameters or LogFn aliases."""
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.arg) and node.arg in ("log", "logger"):
                offenders.append(f"{path.name}: parameter {node.arg}")
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "LogFn" for t in node.targets):
                offenders.append(f"{path.name}: LogFn")
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "getLogger" and node.args
                  and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith(PACKAGE_LOGGER)
                  and path.name != "ros_logging.py"):
                offenders.append(f"{path.name}: getLogger({node.args[0].value!r}) instead of __name__")
    assert offenders == []
