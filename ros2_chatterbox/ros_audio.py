"""The ROS audio sink: a job's chunks -> AudioDataStamped on tts/audio, `tts/speaking`, optional local playback.

`RosAudioOut` owns the node's audio outputs for one configure..cleanup span (publishers, the sound device, the
pacing settings); `RosAudioOut.sink()` makes the listener of one job. The node and the `say` action both use it,
so neither imports the other.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

import rclpy
from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from std_msgs.msg import Bool

from . import audio
from .settings import RosSettings
from .speech_queue import Job, JobListener, JobResult

log = logging.getLogger(__name__)


class RosAudioOut:
    """Publishers of tts/audio, tts/audio_info and tts/speaking, and the player (playback.enabled) if any.

    Used from the speech worker thread (sinks), the executor (stop) and lifecycle transitions; `settings` is
    replaced whole when a run-time parameter changes."""

    def __init__(self, clock: Any, audio_pub: Any, info_pub: Any, speaking_pub: Any, settings: RosSettings,
                 player: Any = None):
        self.clock = clock
        self.audio_pub = audio_pub
        self.info_pub = info_pub
        self.speaking_pub = speaking_pub
        self.settings = settings
        self.player = player
        self._speaking_lock = threading.Lock()
        self._speaking: Optional[bool] = None

    def publish_info(self, sample_rate: int) -> None:
        self.info_pub.publish(AudioInfo(channels=1, sample_rate=int(sample_rate), sample_format=audio.SAMPLE_FORMAT,
                                        bitrate=int(sample_rate) * 16, coding_format="wave"))

    def set_speaking(self, value: bool, force: bool = False) -> None:
        """Publish tts/speaking when it changes (or always with force: after activate)."""
        with self._speaking_lock:
            if self._speaking == value and not force:
                return
            self._speaking = value
            try:
                self.speaking_pub.publish(Bool(data=value))
            except Exception as exc:  # noqa: BLE001 - never let a status topic fail a request; say why
                log.warning(f"tts/speaking not published: {type(exc).__name__}: {exc}")

    def silence(self) -> None:
        """Stop sound already handed to the sound device (tts/stop, deactivate)."""
        if self.player is not None:
            self.player.stop()

    def close(self) -> None:
        if self.player is not None:
            self.player.stop()
            self.player.close()
            self.player = None

    def sink(self, sample_rate: int, feedback: Optional[Callable[[Job], None]] = None) -> "RosAudioSink":
        return RosAudioSink(self, sample_rate, feedback)


class RosAudioSink(JobListener):
    """Publishes one job's audio on tts/audio as stamped chunks, paced at playback speed with audio.realtime
    (then stop and cancel silence within audio.realtime_lead_s plus one chunk); tts/speaking is true from the
    job's start (or, with playback, from its first sound) until it is answered, whatever the outcome."""

    def __init__(self, out: RosAudioOut, sample_rate: int, feedback: Optional[Callable[[Job], None]] = None):
        self.out = out
        self.sample_rate = sample_rate
        self.feedback = feedback
        self.stamp0 = None
        self.t0 = 0.0
        self.sent_s = 0.0
        self.spoke = False

    def _speaking(self) -> None:
        self.spoke = True
        self.out.set_speaking(True)

    def on_start(self, job: Job) -> None:
        if self.out.player is None:  # with playback, "speaking" starts with the sound itself (first chunk)
            self._speaking()

    def on_audio(self, job: Job, samples) -> None:
        out = self.out
        settings = out.settings
        player = out.player
        if self.stamp0 is None:
            self.stamp0 = out.clock.now()
            self.t0 = time.monotonic()
            if player is not None:
                player.set_sample_rate(self.sample_rate)
                self._speaking()
        if player is None and settings.audio_realtime:
            due = self.t0 + self.sent_s - settings.audio_realtime_lead_s
            delay = due - time.monotonic()
            if delay > 0 and job.cancel_event.wait(delay):
                return  # cancelled while waiting: the worker notices before the next chunk
        msg = AudioDataStamped()
        stamp = self.stamp0 + rclpy.duration.Duration(nanoseconds=int(self.sent_s * 1e9))
        msg.header.stamp = stamp.to_msg()
        msg.header.frame_id = settings.frame_id
        msg.audio = AudioData(data=audio.to_pcm16(samples))
        out.audio_pub.publish(msg)
        self.sent_s += len(samples) / float(self.sample_rate)
        if self.feedback is not None:
            self.feedback(job)
        if player is not None:  # the sound device paces publishing (about 0.25 s ahead of the speaker)
            player.play(samples, cancel=job.cancel_event)

    def on_done(self, job: Job, result: JobResult) -> None:
        out = self.out
        try:
            if job.started is not None and self.spoke:
                player = out.player
                if player is not None:
                    if result.success:
                        player.drain(cancel=job.cancel_event)  # speaking stays true until the sound has played
                    else:
                        player.stop()
                elif out.settings.audio_realtime and result.success:
                    # let the last paced chunk finish playing before speaking goes false
                    remaining = self.t0 + self.sent_s - time.monotonic()
                    if remaining > 0:
                        job.cancel_event.wait(min(remaining, 5.0))
        finally:
            if self.spoke:
                out.set_speaking(False)
