"""The node's process (tts_node.main): its own Ctrl-C / SIGTERM handling and its malloc arenas.

rclpy's signal handler would shut the ROS context down at the first Ctrl-C, before the node could release the model
(and log it). Instead the first SIGINT/SIGTERM ends the node's spin loop, the node releases everything while the
context is still valid, and only then does rclpy shut down. `docker stop` and systemd send SIGTERM.
"""
from __future__ import annotations

import signal
import sys

SIGNAL_CHECK_S = 0.25  # longest wait of the main thread before it looks at Ctrl-C / SIGTERM


def _interrupt(signum, frame):
    """The first SIGINT/SIGTERM ends spin(); any later one only says that the node is already stopping (a second
    Ctrl-C must not raise out of the release, e.g. from gc.collect() while the model is freed)."""
    already_stopping()
    raise KeyboardInterrupt


def _say_already_stopping(signum, frame):
    sys.stderr.write("[tts_node] already shutting down: releasing the model, please wait\n")


def stop_on_signals() -> None:
    """The first SIGINT/SIGTERM raises KeyboardInterrupt in the main thread (ending the spin loop)."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def already_stopping() -> None:
    """From now on SIGINT/SIGTERM only say that the node is stopping."""
    signal.signal(signal.SIGINT, _say_already_stopping)
    signal.signal(signal.SIGTERM, _say_already_stopping)


def ignore_signals() -> None:
    """Python puts the default handler back for finalization, where a late Ctrl-C would kill the process
    (exit -2); once the node has released everything, ignore it instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with the executor, HTTP and worker threads that
    fragments a long-running process's memory (RSS creeping up over days). A few arenas keep it flat."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do
