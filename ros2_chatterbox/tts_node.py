"""The ROS 2 door: a lifecycle node over the speech core.

configure = load the engine and voices; activate = serve (`speak` service, `tts/text`, `tts/stop`, `say` action,
HTTP); deactivate = stop serving (pending requests answered as cancelled); cleanup/shutdown/error = release the
model and GPU memory. Callbacks only validate and enqueue; the core's worker thread synthesizes.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from ros2_chatterbox.srv import Speak

from . import audio
from .settings import SETTINGS, SETTINGS_BY_NAME, ConfigError, check
from .core import RequestError, SpeechCore
from .engine import EngineLoadError
from .speech_queue import Job, JobListener, JobResult

REALTIME_LEAD_S = 0.25  # publish this far ahead of playback so players never starve


def _descriptor(s) -> ParameterDescriptor:
    desc = s.description
    if s.choices:
        desc += f" One of: {', '.join(repr(c) for c in s.choices)}."
    d = ParameterDescriptor(description=desc, read_only=s.read_only)
    if s.min is not None and s.max is not None and not isinstance(s.default, bool):
        if isinstance(s.default, int):
            d.integer_range = [IntegerRange(from_value=int(s.min), to_value=int(s.max), step=0)]
        elif isinstance(s.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(s.min), to_value=float(s.max), step=0.0)]
    return d


class RosAudioSink(JobListener):
    """Publishes one job's audio on tts/audio as stamped chunks, optionally paced at playback speed."""

    def __init__(self, node: "TtsNode", done_callback=None, feedback=None):
        self.node = node
        self.done_callback = done_callback
        self.feedback = feedback
        self.stamp0 = None
        self.t0 = 0.0
        self.sent_s = 0.0

    def on_start(self, job: Job) -> None:
        if self.node.player is None:  # with playback, "speaking" starts with the sound itself (first chunk)
            self.node._set_speaking(True)

    def on_audio(self, job: Job, samples) -> None:
        node = self.node
        sr = node.core.engine.sample_rate if node.core.engine else 0
        player = node.player
        if self.stamp0 is None:
            self.stamp0 = node.get_clock().now()
            self.t0 = time.monotonic()
            if player is not None:
                player.set_sample_rate(sr)
                node._set_speaking(True)
        if player is None and node.core.config["audio.realtime"]:
            due = self.t0 + self.sent_s - REALTIME_LEAD_S
            delay = due - time.monotonic()
            if delay > 0 and job.cancel_event.wait(delay):
                return  # cancelled while waiting: the worker notices before the next chunk
        msg = AudioDataStamped()
        stamp = self.stamp0 + rclpy.duration.Duration(nanoseconds=int(self.sent_s * 1e9))
        msg.header.stamp = stamp.to_msg()
        msg.header.frame_id = node.frame_id
        msg.audio = AudioData(data=audio.to_pcm16(samples))
        node.audio_pub.publish(msg)
        self.sent_s += len(samples) / float(sr)
        if self.feedback is not None:
            self.feedback(job)
        if player is not None:  # the sound device paces publishing (about 0.25 s ahead of the speaker)
            player.play(samples, cancel=job.cancel_event)

    def on_done(self, job: Job, result: JobResult) -> None:
        player = self.node.player
        if job.started is not None:
            if player is not None:
                if result.success:
                    player.drain(cancel=job.cancel_event)  # speaking stays true until the sound has played
                else:
                    player.stop()
            elif self.node.core.config["audio.realtime"] and result.success:
                # let the last paced chunk finish playing before speaking goes false
                remaining = self.t0 + self.sent_s - time.monotonic()
                if remaining > 0:
                    job.cancel_event.wait(min(remaining, 5.0))
            self.node._set_speaking(False)
        if self.done_callback is not None:
            self.done_callback(job, result)


class TtsNode(LifecycleNode):
    def __init__(self, node_name: str = "tts_node", **kwargs):
        super().__init__(node_name, **kwargs)
        for s in SETTINGS:
            self.declare_parameter(s.name, s.default, _descriptor(s))
        self.core: Optional[SpeechCore] = None
        self.frame_id = ""
        self.audio_pub = self.info_pub = self.speaking_pub = self.diag_pub = None
        self._http = None
        self.player = None  # playback on the host's sound device (playback.enabled)
        self._diag_timer = None
        self._speaking_lock = threading.Lock()
        self._speaking = None
        self._active = False
        self._blocking_group = ReentrantCallbackGroup()
        self._fast_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The request interfaces live as long as the node, so a request while inactive gets a clear answer
        # ("not active") instead of silence; activate/deactivate switch serving on and off.
        # deep enough that a burst of messages is queued, not overwritten (each one must be spoken)
        text_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        # Requests arriving in a burst must wait in DDS history, not overwrite each other (default depth is 10).
        burst_qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        self.create_service(Speak, "speak", self._on_speak, qos_profile=burst_qos,
                            callback_group=self._blocking_group)
        self.create_service(Trigger, "tts/stop", self._on_stop, callback_group=self._fast_group)
        self.create_subscription(String, "tts/text", self._on_text, text_qos, callback_group=self._fast_group)
        self._action_server = self._create_action_server()

    # -- parameters ------------------------------------------------------------------------------------------
    def _read_config(self) -> Dict[str, Any]:
        return {s.name: check(s.name, self.get_parameter(s.name).value) for s in SETTINGS}

    def _on_set_parameters(self, params) -> SetParametersResult:
        for p in params:
            if p.name not in SETTINGS_BY_NAME:
                continue
            try:
                check(p.name, p.value)
            except ConfigError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        if self.core is not None:
            for p in params:
                if p.name in SETTINGS_BY_NAME and not SETTINGS_BY_NAME[p.name].read_only:
                    self.core.config[p.name] = check(p.name, p.value)
        return SetParametersResult(successful=True)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = self._read_config()
        except ConfigError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self.frame_id = self.get_parameter("frame_id").value
        self.core = SpeechCore(config, logger=self._log)
        self.get_logger().info(f"loading engine '{config['engine']}'"
                               + (f" (fallback '{config['fallback_engine']}')" if config["fallback_engine"] else ""))
        try:
            self.core.load()
        except EngineLoadError as exc:
            self.get_logger().error(f"configure failed: engine '{config['engine']}' could not load: {exc}")
            self.core = None
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - any load failure is a FAILURE with a reason, never a crash
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self.core = None
            return TransitionCallbackReturn.FAILURE
        audio_qos = QoSProfile(
            depth=100, history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE if config["audio.reliable"] else ReliabilityPolicy.BEST_EFFORT)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.audio_pub = self.create_lifecycle_publisher(AudioDataStamped, "tts/audio", audio_qos)
        self.info_pub = self.create_lifecycle_publisher(AudioInfo, "tts/audio_info", latched)
        self.speaking_pub = self.create_lifecycle_publisher(Bool, "tts/speaking", latched)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics, callback_group=self._fast_group)
        st = self.core.status()
        note = f" -- FALLBACK: {self.core.fallback_reason}" if self.core.fallback_reason else ""
        self.get_logger().info(
            f"configured: engine {st.get('engine')} on {st.get('device', 'cpu')} ({st.get('dtype', '')}), "
            f"{st.get('sample_rate')} Hz, voices {st.get('voices')}, load {st.get('load_seconds')} s{note}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self.core is not None
        cfg = self.core.config
        if cfg["http.enabled"]:
            try:
                from .http_server import HttpServer
                self._http = HttpServer(self.core, cfg, log=self._log)
                self._http.start()
            except Exception as exc:  # noqa: BLE001 - port taken, missing deps: a readable FAILURE
                self._http = None
                self.get_logger().error(
                    f"activate failed: HTTP server on {cfg['http.host']}:{cfg['http.port']} could not start: {exc}")
                return TransitionCallbackReturn.FAILURE
        self._open_player()
        self._active = True
        self.core.lifecycle_state = "active"
        result = super().on_activate(state)
        self.info_pub.publish(AudioInfo(channels=1, sample_rate=int(self.core.engine.sample_rate),
                                        sample_format=audio.SAMPLE_FORMAT,
                                        bitrate=int(self.core.engine.sample_rate) * 16,
                                        coding_format="wave"))
        self._speaking = None
        self._set_speaking(False)
        url = f", HTTP {self._http.url}" if self._http is not None else ""
        self.get_logger().info(f"active: ready to speak (service {self.resolve_service_name('speak')}, "
                               f"topic {self.resolve_topic_name('tts/text')}{url})")
        return result

    def _open_player(self) -> None:
        cfg = self.core.config
        if not cfg["playback.enabled"]:
            return
        from .playback import Player
        player = Player(cfg["playback.device"], int(self.core.engine.sample_rate), log=self._log)
        if player.open():
            self.player = player
            self.get_logger().info(f"playback on sound device '{player.device_name}'")
        else:
            self.get_logger().warning("playback disabled: no usable sound device (see the warning above); "
                                      "speech is still published on tts/audio")

    def _create_action_server(self):
        from .say_action import SayActionServer
        return SayActionServer(self, self._blocking_group)

    def _stop_serving(self, reason: str) -> None:
        self._active = False
        if self.core is not None:
            self.core.lifecycle_state = "inactive"
        if self.player is not None:
            self.player.stop()
        if self.core is not None:
            n = self.core.stop(reason)
            if n:
                self.get_logger().info(f"{n} request(s) answered as cancelled: {reason}")
        if self.player is not None:
            self.player.close()
            self.player = None
        if self._http is not None:
            self._http.stop()
            self._http = None

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving("the node was deactivated")
        self._set_speaking(False)
        self.get_logger().info("inactive: not serving")
        return super().on_deactivate(state)

    def _release(self, reason: str) -> None:
        self._stop_serving(reason)
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        for pub in (self.audio_pub, self.info_pub, self.speaking_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub) if hasattr(self, "destroy_lifecycle_publisher") \
                    else self.destroy_publisher(pub)
        if self.diag_pub is not None:
            self.destroy_publisher(self.diag_pub)
        self.audio_pub = self.info_pub = self.speaking_pub = self.diag_pub = None
        if self.core is not None:
            self.core.unload(reason)
            self.core = None
            self.get_logger().info("model released")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release("the node was cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release("the node is shutting down")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing the model")
        self._release("the node hit an error")
        return TransitionCallbackReturn.SUCCESS

    # -- serving ---------------------------------------------------------------------------------------------
    def _log(self, level: str, msg: str) -> None:
        # one call site per severity: rclpy refuses a call site whose severity changes between calls
        logger = self.get_logger()
        if level == "error":
            logger.error(msg)
        elif level == "warning":
            logger.warning(msg)
        elif level == "debug":
            logger.debug(msg)
        else:
            logger.info(msg)

    def _set_speaking(self, value: bool) -> None:
        with self._speaking_lock:
            if self._speaking == value or self.speaking_pub is None:
                return
            self._speaking = value
            try:
                self.speaking_pub.publish(Bool(data=value))
            except Exception:  # noqa: BLE001 - publisher destroyed during shutdown
                pass

    def submit(self, text, voice, interrupt=False, source="ros", listener=None) -> Job:
        """Enqueue a ROS request (raises RequestError)."""
        if self.core is None or not self._active:
            state = self._state_label()
            raise RequestError("unavailable", f"the node is not active (state: {state}); activate it first "
                                              f"(or start it with --autostart)")
        return self.core.submit(text, voice, None, source, listener or RosAudioSink(self), interrupt)

    def _on_speak(self, request: Speak.Request, response: Speak.Response) -> Speak.Response:
        try:
            job = self.submit(request.text, request.voice, request.interrupt, "ros-service")
        except RequestError as exc:
            response.success, response.message = False, exc.message
            return response
        result = job.wait()
        response.success = result.success
        response.message = result.message
        response.duration = float(result.duration)
        response.sample_rate = int(result.sample_rate)
        return response

    def _on_text(self, msg: String) -> None:
        try:
            self.submit(msg.data, "", False, "ros-topic")
        except RequestError as exc:
            self.get_logger().warning(f"tts/text message not spoken: {exc.message}")

    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        n = self.core.stop("stopped by tts/stop") if (self.core is not None and self._active) else 0
        if self.player is not None:
            self.player.stop()  # silence at once, also audio already handed to the device
        response.success = True
        response.message = f"stopped; {n} request(s) cancelled"
        return response

    # -- visibility ------------------------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        if self.core is None or self.diag_pub is None:
            return
        st = self.core.status()
        level = DiagnosticStatus.OK
        message = "ready"
        if st.get("using_fallback"):
            level, message = DiagnosticStatus.WARN, f"using fallback engine: {st['fallback_reason']}"
        elif st.get("last_error"):
            level, message = DiagnosticStatus.WARN, f"last error: {st['last_error']}"
        values = {"lifecycle_state": self._state_label()}
        values.update({k: v for k, v in st.items() if not isinstance(v, (dict, list))})
        values["voices"] = ", ".join(st.get("voices", []))
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: speech", message=message,
                                  hardware_id=str(st.get("device", "")),
                                  values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
        arr = DiagnosticArray(status=[status])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(arr)

    def _state_label(self) -> str:
        try:
            return self._state_machine.current_state[1]
        except Exception:  # noqa: BLE001
            return "unknown"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _limit_malloc_arenas(n: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena; with the executor, HTTP and worker threads that
    fragments a long-running process's memory (RSS creeping up over days). A few arenas keep it flat."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-8, n)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def main(argv: Optional[List[str]] = None) -> int:
    _limit_malloc_arenas()
    argv = list(sys.argv if argv is None else argv)
    autostart = "--autostart" in argv
    argv = [a for a in argv if a != "--autostart"]
    # Our own SIGINT/SIGTERM handling: the model is released (and logged) while the ROS context is still valid,
    # then rclpy shuts down. `docker stop` and systemd send SIGTERM.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = TtsNode()
    autostart = autostart or bool(node.get_parameter("autostart").value)
    max_size = int(node.get_parameter("queue.max_size").value)
    # Each waiting `speak` call holds a thread until its audio is out; the queue bounds how many can wait,
    # so this many threads keep lifecycle, parameter and stop services responsive under a full queue.
    executor = MultiThreadedExecutor(num_threads=max_size + 8)
    executor.add_node(node)
    if autostart:
        def _autostart():
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: configure failed; the node stays unconfigured")
                return
            if node.trigger_activate() != TransitionCallbackReturn.SUCCESS:
                node.get_logger().error("autostart: activate failed; the node stays inactive")
        threading.Thread(target=_autostart, name="autostart", daemon=True).start()
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node.core is not None:
            node._release("the node is shutting down")
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
