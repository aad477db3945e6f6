"""The ROS 2 door: a lifecycle node over the speech core.

configure = read the parameters, load the engine and voices; activate = serve (`speak`, `tts/text`, `tts/stop`,
`say`, HTTP; the `voices/*` and `languages/list` services of ros_voices.py answer once configured); deactivate = stop serving (pending
requests answered as cancelled); cleanup/shutdown/error = release the model and GPU memory. Callbacks only
validate and enqueue; the core's worker thread synthesizes.

Everything that exists only between configure and cleanup (the core, the audio outputs, the diagnostics timer, the
HTTP server) lives in one `_Resources` object, reached only through `_use()`: a callback either gets the whole
object, kept alive until it is done with it, or None. Release takes it away first, answers and joins the work in
flight, waits for callbacks still using it, and only then destroys publishers and the model.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from ros2_chatterbox.srv import Speak

from .core import EngineLoadError, RequestError, SpeechCore
from .ros_audio import RosAudioOut
from .ros_diagnostics import DIAGNOSTICS_PERIOD_S, speech_diagnostics
from .ros_logging import forward_to_ros
from .ros_params import changed_settings, declare_parameters, read_settings
from .ros_process import SIGNAL_CHECK_S, already_stopping, ignore_signals, limit_malloc_arenas, stop_on_signals
from .ros_voices import VoiceServices
from .say_action import SayActionServer
from .settings import ConfigError, Settings
from .speech_queue import UNAVAILABLE, Job

RELEASE_WAIT_S = 10.0  # how long release waits for callbacks still using the resources (each is bounded)


@dataclass
class _Resources:
    """What exists between configure and cleanup."""
    core: SpeechCore
    out: RosAudioOut
    diag_pub: Any
    diag_timer: Any
    http: Any = None  # HttpServer while active with http.enabled


def _logged(fn):
    """Service, subscription and timer callbacks never raise into the executor (rclpy's MultiThreadedExecutor
    re-raises them out of spin(), which would end the node): an unexpected exception is logged, and a service
    answers it as a failure."""
    @functools.wraps(fn)
    def run(self, request=None, response=None):
        try:
            return fn(self, request, response) if response is not None else fn(self, request)
        except Exception as exc:  # noqa: BLE001 - see above
            self.get_logger().error(f"{fn.__name__} failed: {type(exc).__name__}: {exc}")
            if response is not None:
                if hasattr(response, "success"):
                    response.success = False
                if hasattr(response, "message"):
                    response.message = f"internal error: {type(exc).__name__}: {exc}"
            return response
    return run


def _serialized(fn):
    """One transition at a time: they come from the lifecycle services (executor threads) and from main() at exit."""
    @functools.wraps(fn)
    def run(self, *args):
        with self._transition_lock:
            return fn(self, *args)
    return run


class TtsNode(LifecycleNode):
    def __init__(self, node_name: str = "tts_node", **kwargs):
        super().__init__(node_name, **kwargs)
        self._stop_forwarding_logs = forward_to_ros(self.get_logger())  # the package's log records, as this node's
        declare_parameters(self)  # one per setting (ros_params.py); raises on a bad value in the parameter file
        # start-time settings (QoS depths, autostart) are read once, here; the rest again at each configure
        self._settings = read_settings(self, lenient=True)
        self._state_cond = threading.Condition()
        self._transition_lock = threading.RLock()  # see _serialized
        self._res: Optional[_Resources] = None
        self._active = False
        self._users = 0  # callbacks currently holding the resources (see _use)
        self._blocking_group = ReentrantCallbackGroup()
        self._fast_group = MutuallyExclusiveCallbackGroup()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The request interfaces live as long as the node, so a request while inactive gets a clear answer
        # ("not active") instead of silence; activate/deactivate switch serving on and off.
        ros = self._settings.ros
        text_qos = QoSProfile(depth=ros.text_depth, reliability=ReliabilityPolicy.RELIABLE)
        request_qos = QoSProfile(depth=ros.request_depth, reliability=ReliabilityPolicy.RELIABLE)
        self.create_service(Speak, "speak", self._on_speak, qos_profile=request_qos,
                            callback_group=self._blocking_group)
        self.create_service(Trigger, "tts/stop", self._on_stop, callback_group=self._fast_group)
        self.create_subscription(String, "tts/text", self._on_text, text_qos, callback_group=self._fast_group)
        self._action_server = SayActionServer(self, self._blocking_group, self._submit_goal, self._cancel_job,
                                              ros.request_depth)
        self._voice_services = VoiceServices(self, self._configured_core, self._state_label,
                                             self._fast_group, self._blocking_group)

    # -- state: one accessor ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _use(self, active_only: bool = True) -> Iterator[Optional[_Resources]]:
        """The resources, held until the block ends (release waits for it), or None when there are none (or,
        with active_only, when the node is not active)."""
        with self._state_cond:
            res = self._res
            if res is None or (active_only and not self._active):
                res = None
            else:
                self._users += 1
        try:
            yield res
        finally:
            if res is not None:
                with self._state_cond:
                    self._users -= 1
                    self._state_cond.notify_all()

    @contextlib.contextmanager
    def _configured_core(self) -> Iterator[Optional[SpeechCore]]:
        with self._use(active_only=False) as res:
            yield res.core if res is not None else None

    def _state_label(self) -> str:
        try:
            return self._state_machine.current_state[1]
        except Exception:  # noqa: BLE001 - the state machine is gone while the node is destroyed
            return "unknown"

    def _not_serving(self) -> RequestError:
        return RequestError(UNAVAILABLE, f"the node is not active (state: {self._state_label()}); activate it "
                                         f"first (or start it with --autostart)")

    # -- parameters ------------------------------------------------------------------------------------------
    def _on_set_parameters(self, params) -> SetParametersResult:
        """Validate; refuse configure-time changes unless unconfigured (ros_params.py); hand run-time changes to
        their owners."""
        try:
            new = changed_settings(params, self._settings, self._state_label)
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        with self._use(active_only=False) as res:
            if res is not None and new.generation.language != self._settings.generation.language:
                try:  # a default language the loaded model does not speak would refuse every request
                    res.core.resolve_language(new.generation.language)
                except RequestError as exc:
                    return SetParametersResult(successful=False, reason=f"language: {exc.message}")
            self._settings = new
            if res is not None:
                res.core.apply(new)
                res.out.settings = new.ros
        return SetParametersResult(successful=True)

    # -- lifecycle -------------------------------------------------------------------------------------------
    @_serialized
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            settings = self._settings = read_settings(self)
        except ConfigError as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        core = SpeechCore(settings)
        engine = settings.core.engine
        fallback = settings.core.fallback_engine
        self.get_logger().info(f"loading engine '{engine}'" + (f" (fallback '{fallback}')" if fallback else ""))
        try:
            core.load()
        except EngineLoadError as exc:
            self.get_logger().error(f"configure failed: engine '{engine}' could not load: {exc}")
            core.unload("configure failed")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - any load failure is a FAILURE with a reason, never a crash
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            core.unload("configure failed")
            return TransitionCallbackReturn.FAILURE
        ros = settings.ros
        audio_qos = QoSProfile(
            depth=ros.audio_depth, history=HistoryPolicy.KEEP_LAST,
            reliability=ReliabilityPolicy.RELIABLE if ros.audio_reliable else ReliabilityPolicy.BEST_EFFORT)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        out = RosAudioOut(self.get_clock(), self.create_lifecycle_publisher(AudioDataStamped, "tts/audio", audio_qos),
                          self.create_lifecycle_publisher(AudioInfo, "tts/audio_info", latched),
                          self.create_lifecycle_publisher(Bool, "tts/speaking", latched), ros)
        diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        timer = self.create_timer(DIAGNOSTICS_PERIOD_S, self._publish_diagnostics, callback_group=self._fast_group)
        with self._state_cond:
            self._res = _Resources(core, out, diag_pub, timer)
        st = core.status()
        note = f" -- FALLBACK: {core.fallback_reason}" if core.fallback_reason else ""
        self.get_logger().info(
            f"configured: engine {st.engine.engine} on {st.engine.device or 'cpu'} ({st.engine.dtype}), "
            f"{st.engine.sample_rate} Hz, voices {list(st.voices)}, load {st.load_seconds} s{note}")
        return TransitionCallbackReturn.SUCCESS

    @_serialized
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        res = self._res
        if res is None:
            self.get_logger().error("activate failed: the node holds no model (configure first)")
            return TransitionCallbackReturn.FAILURE
        settings = self._settings
        if settings.http.enabled:
            try:
                from .http.server import HttpServer
                res.http = HttpServer(res.core, lambda: self._settings.http)
                res.http.start()
            except Exception as exc:  # noqa: BLE001 - port taken, missing deps: a readable FAILURE
                res.http = None
                self.get_logger().error(f"activate failed: HTTP server on {settings.http.host}:"
                                        f"{settings.http.port} could not start: {exc}")
                return TransitionCallbackReturn.FAILURE
        res.out.player = self._open_player(settings, res.core.sample_rate)
        result = super().on_activate(state)
        res.out.publish_info(res.core.sample_rate)
        res.out.set_speaking(False, force=True)
        with self._state_cond:
            self._active = True
        url = f", HTTP {res.http.url}" if res.http is not None else ""
        self.get_logger().info(f"active: ready to speak (service {self.resolve_service_name('speak')}, "
                               f"topic {self.resolve_topic_name('tts/text')}{url})")
        return result

    def _open_player(self, settings: Settings, sample_rate: int):
        if not settings.playback.enabled:
            return None
        from .playback import Player
        player = Player(settings.playback.device, sample_rate)
        if player.open():
            self.get_logger().info(f"playback on sound device '{player.device_name}'")
            return player
        self.get_logger().warning("playback disabled: no usable sound device (see the warning above); "
                                  "speech is still published on tts/audio")
        return None

    def _stop_serving(self, reason: str) -> None:
        """Refuse new requests, answer every pending one as cancelled and wait until the worker is idle, then
        close the sound device and the HTTP server."""
        with self._state_cond:
            self._active = False
        res = self._res
        if res is None:
            return
        res.out.silence()
        n = res.core.cancel_all(reason)
        if n:
            self.get_logger().info(f"{n} request(s) answered as cancelled: {reason}")
        if not res.core.wait_idle(RELEASE_WAIT_S):
            self.get_logger().error("the speech worker did not become idle in time")
        res.out.close()
        if res.http is not None:
            res.http.stop()
            res.http = None
        res.out.set_speaking(False)

    @_serialized
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_serving("the node was deactivated")
        self.get_logger().info("inactive: not serving")
        return super().on_deactivate(state)

    @_serialized
    def release(self, reason: str) -> None:
        """Stop serving and free everything configure made; safe to call in any state, more than once."""
        self._stop_serving(reason)
        with self._state_cond:
            res, self._res = self._res, None
            if res is None:
                return
            # callbacks that got the resources before they were taken away finish first (each is bounded:
            # their requests were just answered)
            if not self._state_cond.wait_for(lambda: self._users == 0, RELEASE_WAIT_S):
                self.get_logger().error(f"{self._users} callback(s) still running after {RELEASE_WAIT_S:.0f} s; "
                                        f"releasing anyway")
        res.core.unload(reason)  # joins the worker: nothing publishes after this
        self.destroy_timer(res.diag_timer)
        for pub in (res.out.audio_pub, res.out.info_pub, res.out.speaking_pub):
            self.destroy_lifecycle_publisher(pub)
        self.destroy_publisher(res.diag_pub)
        self.get_logger().info("model released")

    @_serialized
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release("the node was cleaned up")
        return TransitionCallbackReturn.SUCCESS

    @_serialized
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release("the node is shutting down")
        return TransitionCallbackReturn.SUCCESS

    @_serialized
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing the model")
        self.release("the node hit an error")
        return TransitionCallbackReturn.SUCCESS

    def destroy_node(self) -> None:
        self._stop_forwarding_logs()
        super().destroy_node()

    # -- serving ---------------------------------------------------------------------------------------------
    def _submit(self, res: Optional[_Resources], text: Any, voice: Any, interrupt: bool, source: str,
                feedback=None, language: str = "") -> Job:
        """`language` '' = the parameter's (else the model's default); the core refuses one the model lacks."""
        if res is None:
            raise self._not_serving()
        sink = res.out.sink(res.core.sample_rate, feedback)
        overrides = {"language": language} if language else None
        return res.core.submit(text, voice, overrides, source, sink, interrupt, self._settings.ros.audio_chunk_ms)

    def _submit_goal(self, text: str, voice: str, interrupt: bool, source: str, feedback, language: str = "") -> Job:
        with self._use() as res:
            return self._submit(res, text, voice, interrupt, source, feedback, language)

    def _cancel_job(self, job: Job, reason: str) -> None:
        with self._use(active_only=False) as res:
            if res is not None:
                res.core.cancel(job, reason)
            else:
                job.cancel(reason)

    @_logged
    def _on_speak(self, request: Speak.Request, response: Speak.Response) -> Speak.Response:
        with self._use() as res:
            try:
                job = self._submit(res, request.text, request.voice, request.interrupt, "ros-service",
                                   language=request.language)
            except RequestError as exc:
                response.success, response.message = False, exc.message
                return response
        result = job.wait()  # outside _use: release answers it, it does not wait for it
        response.success = result.success
        response.message = result.message
        response.duration = float(result.duration)
        response.sample_rate = int(result.sample_rate)
        return response

    @_logged
    def _on_text(self, msg: String) -> None:
        with self._use() as res:
            try:
                self._submit(res, msg.data, "", False, "ros-topic")
            except RequestError as exc:
                self.get_logger().warning(f"tts/text message not spoken: {exc.message}")

    @_logged
    def _on_stop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._use() as res:
            n = 0
            if res is not None:
                n = res.core.cancel_all("stopped by tts/stop")
                res.out.silence()  # silence at once, also audio already handed to the device
        response.success = True
        response.message = f"stopped; {n} request(s) cancelled"
        return response

    # -- visibility ------------------------------------------------------------------------------------------
    @_logged
    def _publish_diagnostics(self, _=None) -> None:
        with self._use(active_only=False) as res:
            if res is None:
                return
            arr = DiagnosticArray(status=[speech_diagnostics(res.core.status(), self.get_name(), self._state_label())])
            arr.header.stamp = self.get_clock().now().to_msg()
            res.diag_pub.publish(arr)


def main(argv: Optional[List[str]] = None) -> int:
    limit_malloc_arenas()
    argv = list(sys.argv if argv is None else argv)
    autostart = "--autostart" in argv
    argv = [a for a in argv if a != "--autostart"]
    # Our own SIGINT/SIGTERM handling (ros_process.py): the model is released (and logged) while the ROS context is
    # still valid, then rclpy shuts down. `docker stop` and systemd send SIGTERM.
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stop_on_signals()
    try:
        node = TtsNode()
    except ParameterException as exc:  # a value out of its range or of the wrong type in the parameter file
        sys.stderr.write(f"[tts_node] invalid parameter: {exc}\n")
        rclpy.try_shutdown()
        return 2
    autostart = autostart or node._settings.ros.autostart
    # Each waiting `speak` call holds a thread until its audio is out; the queue bounds how many can wait,
    # so this many threads keep lifecycle, parameter and stop services responsive under a full queue.
    executor = MultiThreadedExecutor(num_threads=node._settings.core.queue_max_size + 8)
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
        # spin in short waits: Python runs a signal handler only between waits, and while unconfigured or finalized
        # nothing else (no timer, no request) would wake the executor, so Ctrl-C would go unanswered
        while rclpy.ok():
            executor.spin_once(timeout_sec=SIGNAL_CHECK_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        already_stopping()  # also when spin() ended for another reason
        node.release("the node is shutting down")
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.try_shutdown()
        ignore_signals()  # the node has released everything: a late Ctrl-C must not kill finalization (exit -2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
