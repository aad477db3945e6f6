"""What a module of the package logged, read in a test.

The handler sits on the module's own logger, not on the root: launch_testing's pytest plugin (loaded in the test
process) turns off propagation for every logger created after it (launch.logging.LaunchLogger), so pytest's caplog
would miss them. The node's own process does not import launch.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, List, Tuple


@contextlib.contextmanager
def captured_logs(name: str) -> Iterator[List[Tuple[str, str]]]:
    """(level, message) of each record logged to the logger `name` while the block runs; level in
    debug/info/warning/error/critical."""
    collected: List[Tuple[str, str]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append((record.levelname.lower(), record.getMessage()))

    logger = logging.getLogger(name)
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield collected
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
