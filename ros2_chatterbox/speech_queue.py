"""A bounded speech queue worked by one thread. Each job is answered exactly once: success or an explicit error.

Pure Python (no ROS, no torch): the work done per job is a callable handed in by the core.
"""
from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

# Result kinds: what a caller (ROS response, HTTP status) needs to tell failures apart.
OK = "ok"
CANCELLED = "cancelled"
INVALID = "invalid"
QUEUE_FULL = "queue_full"
UNAVAILABLE = "unavailable"
ENGINE_ERROR = "engine_error"


@dataclass(frozen=True)
class JobResult:
    success: bool
    kind: str
    message: str
    duration: float = 0.0
    sample_rate: int = 0


class JobListener:
    """Receives a job's audio on the worker thread. Override what you need; exceptions fail the job."""

    def on_start(self, job: "Job") -> None:
        pass

    def on_audio(self, job: "Job", samples: np.ndarray) -> None:
        pass

    def on_done(self, job: "Job", result: JobResult) -> None:
        pass


class QueueFull(Exception):
    pass


_ids = itertools.count(1)


class Job:
    """One utterance request. `wait()` blocks until it is answered; `cancel()` stops it within one chunk."""

    def __init__(self, text: str, voice: Optional[str] = None, settings: Any = None, source: str = "api",
                 listener: Optional[JobListener] = None, interrupt: bool = False,
                 chunk_ms: Optional[float] = None, pause_ms: float = 0.0):
        self.id = next(_ids)
        self.text = text
        self.voice = voice
        self.settings = settings
        self.source = source
        self.listener = listener or JobListener()
        self.interrupt = interrupt
        self.chunk_ms = chunk_ms  # duration of each chunk handed to the listener (None: as the engine yields)
        self.pause_ms = pause_ms  # silence between sentences
        self.created = time.monotonic()
        self.started: Optional[float] = None
        self.first_audio: Optional[float] = None
        self.cancel_event = threading.Event()
        self.cancel_reason = ""
        # progress, for feedback and status pages
        self.pieces: List[str] = []
        self.piece_index = 0
        self.audio_seconds = 0.0
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.result: Optional[JobResult] = None

    def cancel(self, reason: str = "cancelled") -> None:
        if not self.cancel_event.is_set():
            self.cancel_reason = reason
            self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self, result: JobResult) -> bool:
        """Answer the job; only the first answer counts. Returns False when it was already answered.
        The job is done (wait() returns) even when the listener's on_done raises; the exception propagates."""
        with self._lock:
            if self.result is not None:
                return False
            self.result = result
        try:
            self.listener.on_done(self, result)
        finally:
            self._done.set()
        return True

    def wait(self, timeout: Optional[float] = None) -> Optional[JobResult]:
        self._done.wait(timeout)
        return self.result

    @property
    def progress(self) -> float:
        if not self.pieces:
            return 0.0
        return min(1.0, self.piece_index / len(self.pieces))


class SpeechQueue:
    """FIFO of jobs with a bound; one worker thread runs `run_job(job) -> JobResult`.

    What would otherwise be swallowed (a listener failing in on_done, an idle callback failing) is logged."""

    def __init__(self, run_job: Callable[[Job], JobResult], max_size: int = 16,
                 on_idle: Optional[Callable[[float], None]] = None):
        self._run_job = run_job
        self.max_size = max_size
        self._on_idle = on_idle
        self._jobs: Deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._current: Optional[Job] = None
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self._idle_since = time.monotonic()
        self.counters: Dict[str, int] = collections.Counter()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._work, name="speech-worker", daemon=True)
        self._thread.start()

    def shutdown(self, reason: str = "node is shutting down", timeout: float = 10.0) -> bool:
        """Stop the worker; every waiting or running job is answered as cancelled. Returns True once the worker
        has ended (False: it did not end within `timeout`, logged)."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self.cancel_all(reason)
        thread = self._thread
        ended = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            ended = not thread.is_alive()
            if not ended:
                log.error(f"the speech worker did not end within {timeout:.0f} s")
        self._thread = None
        return ended

    # -- requests --------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        with self._cond:
            if not self._running:
                raise QueueFull("the speech queue is not running")
            interrupted: List[Job] = []
            if job.interrupt:
                _, interrupted = self._take_all_locked(f"interrupted by request {job.id}")
            if len(self._jobs) >= self.max_size:
                self.counters[QUEUE_FULL] += 1
                raise QueueFull(f"the speech queue is full ({self.max_size} waiting); try again shortly")
            self._jobs.append(job)
            self.counters["submitted"] += 1
            self._cond.notify_all()
        self._answer_cancelled(interrupted, f"interrupted by request {job.id}")
        return job

    def cancel_all(self, reason: str = "stopped") -> int:
        """Cancel the current job and every waiting one; returns how many were affected."""
        with self._cond:
            running, waiting = self._take_all_locked(reason)
        self._answer_cancelled(waiting, reason)
        return running + len(waiting)

    def _take_all_locked(self, reason: str) -> Tuple[int, List[Job]]:
        """Cancel the running job and take every waiting one out of the line (answered outside the lock)."""
        waiting = list(self._jobs)
        self._jobs.clear()
        running = 0
        if self._current is not None and not self._current.done:
            self._current.cancel(reason)
            running = 1
        for job in waiting:
            job.cancel(reason)
            self.counters[CANCELLED] += 1
        return running, waiting

    def _answer_cancelled(self, jobs: List[Job], reason: str) -> None:
        for job in jobs:
            self._finish(job, JobResult(False, CANCELLED, f"cancelled: {reason}"))

    def _finish(self, job: Job, result: JobResult) -> None:
        try:
            job.finish(result)
        except Exception as exc:  # noqa: BLE001 - a listener failing must not kill the worker or a cancel
            log.error(f"request {job.id}: its listener failed on done: {type(exc).__name__}: {exc}")

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Cancel one job, waiting or running."""
        with self._cond:
            waiting = job in self._jobs
            if waiting:
                self._jobs.remove(job)
                self.counters[CANCELLED] += 1
        job.cancel(reason)
        if waiting:
            self._answer_cancelled([job], reason)

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._jobs)

    @property
    def current(self) -> Optional[Job]:
        return self._current

    @property
    def running(self) -> bool:
        return self._running

    def wait_idle(self, timeout: float) -> bool:
        """Block until no job runs or waits (True), or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._current is not None or self._jobs:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- worker ----------------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while self._running and not self._jobs:
                    self._cond.wait(timeout=1.0)
                    if self._on_idle is not None and not self._jobs and self._running:
                        idle = time.monotonic() - self._idle_since
                        self._cond.release()
                        try:
                            self._on_idle(idle)
                        except Exception as exc:  # noqa: BLE001 - idle work failing must not end the worker
                            log.error(f"idle callback failed: {type(exc).__name__}: {exc}")
                        finally:
                            self._cond.acquire()
                if not self._running:
                    return
                job = self._jobs.popleft()
                self._current = job
            try:
                if job.cancelled:
                    result = JobResult(False, CANCELLED, f"cancelled: {job.cancel_reason}")
                else:
                    job.started = time.monotonic()
                    result = self._run_job(job)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything a job does
                result = JobResult(False, ENGINE_ERROR, f"synthesis failed: {type(exc).__name__}: {exc}")
            self._finish(job, result)
            with self._cond:
                self.counters[result.kind] += 1
                self._current = None
                self._idle_since = time.monotonic()
                self._cond.notify_all()  # wait_idle()
