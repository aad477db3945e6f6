"""Waiting in tests: poll a condition with a deadline, the one loop every helper uses (never a bare sleep)."""
from __future__ import annotations

import time
from typing import Any, Callable


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Call `predicate` every `interval` seconds until it is true or `timeout` seconds have passed; its last
    answer (one more call at the deadline, so a condition that came true while sleeping still counts)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
