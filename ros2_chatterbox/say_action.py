"""The `say` action: speak text with progress feedback; cancel stops its audio within one chunk.

Goals go through the same queue as the service, topic and HTTP requests (one voice, one order). The node hands
in how to submit and cancel a request, so this module does not import the node. A goal whose request was
cancelled, by the client or by `tts/stop`, ends CANCELED; a goal that could not speak ends ABORTED.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Dict, Optional

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ros2_chatterbox.action import Say

from .core import RequestError
from .speech_queue import CANCELLED, Job

# submit(text, voice, interrupt, source, feedback, language) -> Job (raises RequestError); cancel(job, reason)
SubmitFn = Callable[[str, str, bool, str, Optional[Callable[[Job], None]], str], Job]
CancelFn = Callable[[Job, str], None]

log = logging.getLogger(__name__)


def _end_canceled(goal_handle: ServerGoalHandle) -> None:
    """End an executing goal as CANCELED. A goal can only become canceled from CANCELING, which a client's cancel
    request enters; for a server-side stop (tts/stop, deactivate) the server enters it itself, as rclpy does when
    a client's cancel request is accepted."""
    if not goal_handle.is_cancel_requested:
        goal_handle._update_state(_rclpy.GoalEvent.CANCEL_GOAL)  # no public API for a server-initiated cancel
    goal_handle.canceled()


class SayActionServer:
    def __init__(self, node: Any, callback_group: Any, submit: SubmitFn, cancel: CancelFn, qos_depth: int):
        self._submit = submit
        self._cancel = cancel
        self._jobs: Dict[bytes, Job] = {}
        self._lock = threading.Lock()
        qos = QoSProfile(depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE)
        self._server = ActionServer(
            node, Say, "say", execute_callback=self._execute, goal_callback=self._on_goal,
            cancel_callback=self._on_cancel, callback_group=callback_group,
            # a burst of goals waits in DDS history instead of overwriting each other (default depth 10)
            goal_service_qos_profile=qos, result_service_qos_profile=qos)

    def _on_goal(self, goal_request) -> GoalResponse:
        return GoalResponse.ACCEPT  # invalid or inactive goals are aborted with a readable message

    def _on_cancel(self, goal_handle) -> CancelResponse:
        with self._lock:
            job = self._jobs.get(bytes(goal_handle.goal_id.uuid))
        if job is not None:
            self._cancel(job, "goal canceled")
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle):
        goal = goal_handle.request
        result = Say.Result()

        def feedback(job: Job) -> None:
            fb = Say.Feedback()
            fb.progress = float(job.progress)
            fb.audio_seconds = float(job.audio_seconds)
            if job.pieces:
                fb.current_sentence = job.pieces[min(job.piece_index, len(job.pieces) - 1)]
            self._publish_feedback(goal_handle, fb)

        try:
            job = self._submit(goal.text, goal.voice, goal.interrupt, "ros-action", feedback, goal.language)
        except RequestError as exc:
            result.success, result.message = False, exc.message
            goal_handle.abort()
            return result
        key = bytes(goal_handle.goal_id.uuid)
        with self._lock:
            self._jobs[key] = job
        if goal_handle.is_cancel_requested:  # canceled before the job existed
            self._cancel(job, "goal canceled")
        try:
            res = job.wait()
        finally:
            with self._lock:
                self._jobs.pop(key, None)
        result.success, result.message, result.duration = res.success, res.message, float(res.duration)
        if res.kind == CANCELLED:
            _end_canceled(goal_handle)
        elif res.success:
            self._publish_feedback(goal_handle, Say.Feedback(progress=1.0, audio_seconds=float(res.duration)))
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def _publish_feedback(self, goal_handle, fb) -> None:
        try:
            goal_handle.publish_feedback(fb)
        except Exception as exc:  # noqa: BLE001 - the goal ended meanwhile (node shutting down)
            log.debug(f"say feedback not published: {type(exc).__name__}: {exc}")

    def destroy(self) -> None:
        self._server.destroy()
