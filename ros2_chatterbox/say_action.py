"""The `say` action: speak text with progress feedback; cancel stops its audio within one chunk.

Goals go through the same queue as the service, topic and HTTP requests (one voice, one order).
"""
from __future__ import annotations

import threading
from typing import Dict

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ros2_chatterbox.action import Say

from .core import RequestError
from .speech_queue import CANCELLED, Job


class SayActionServer:
    def __init__(self, node, callback_group):
        self.node = node
        self._jobs: Dict[bytes, Job] = {}
        self._lock = threading.Lock()
        self._server = ActionServer(
            node, Say, "say", execute_callback=self._execute, goal_callback=self._on_goal,
            cancel_callback=self._on_cancel, callback_group=callback_group,
            # a burst of goals waits in DDS history instead of overwriting each other (default depth 10)
            goal_service_qos_profile=QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE),
            result_service_qos_profile=QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))

    def _on_goal(self, goal_request) -> GoalResponse:
        return GoalResponse.ACCEPT  # invalid or inactive goals are aborted with a readable message

    def _on_cancel(self, goal_handle) -> CancelResponse:
        with self._lock:
            job = self._jobs.get(bytes(goal_handle.goal_id.uuid))
        if job is not None and self.node.core is not None and self.node.core.queue is not None:
            self.node.core.queue.cancel(job, "goal canceled")
        return CancelResponse.ACCEPT

    def _execute(self, goal_handle):
        from .tts_node import RosAudioSink
        goal = goal_handle.request
        result = Say.Result()

        def feedback(job: Job) -> None:
            fb = Say.Feedback()
            fb.progress = float(job.progress)
            fb.audio_seconds = float(job.audio_seconds)
            if job.pieces:
                fb.current_sentence = job.pieces[min(job.piece_index, len(job.pieces) - 1)]
            try:
                goal_handle.publish_feedback(fb)
            except Exception:  # noqa: BLE001 - goal already finished
                pass

        try:
            job = self.node.submit(goal.text, goal.voice, goal.interrupt, "ros-action",
                                   RosAudioSink(self.node, feedback=feedback))
        except RequestError as exc:
            result.success, result.message = False, exc.message
            goal_handle.abort()
            return result
        key = bytes(goal_handle.goal_id.uuid)
        with self._lock:
            self._jobs[key] = job
        if goal_handle.is_cancel_requested:  # canceled before the job existed
            self.node.core.queue.cancel(job, "goal canceled")
        try:
            res = job.wait()
        finally:
            with self._lock:
                self._jobs.pop(key, None)
        result.success, result.message, result.duration = res.success, res.message, float(res.duration)
        if res.kind == CANCELLED and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif res.success:
            fb = Say.Feedback(progress=1.0, audio_seconds=float(res.duration))
            goal_handle.publish_feedback(fb)
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    def destroy(self) -> None:
        self._server.destroy()
