"""The speech core shared by the ROS node and the HTTP app: engine (with fallback), voices, one queue.

Requests become Jobs; the worker synthesizes them sentence by sentence, and hands audio chunks to each job's
listener (the node publishes them, the HTTP app streams them). Nothing here imports rclpy, FastAPI or uvicorn.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from . import audio, text as text_mod
from .settings import ConfigError, package_share
from .engine import Cancelled, Engine, EngineError, EngineLoadError, GenerationSettings, VoiceError, \
    create_engine
from .speech_queue import CANCELLED, ENGINE_ERROR, INVALID, OK, QUEUE_FULL, UNAVAILABLE, Job, JobListener, \
    JobResult, QueueFull, SpeechQueue
from .voices import VoiceLibrary, resolve_request_voice

log = logging.getLogger("ros2_chatterbox")


class RequestError(Exception):
    """A request that cannot be accepted; `kind` tells callers how to answer (4xx, 503, success=false)."""

    def __init__(self, kind: str, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


class SpeechCore:
    def __init__(self, config: Dict[str, Any], logger: Optional[Callable[[str, str], None]] = None):
        self.config = config  # flat settings (config.SETTINGS names); the node updates it on parameter changes
        self._log = logger or (lambda level, msg: getattr(log, level)(msg))
        self.engine: Optional[Engine] = None
        self.engine_name = ""
        self.fallback_reason = ""  # non-empty when the fallback engine serves instead of `engine`
        self.voices: Optional[VoiceLibrary] = None
        self.queue: Optional[SpeechQueue] = None
        self.last_error = ""
        self.last_latency_s: Optional[float] = None
        self.last_first_audio_s: Optional[float] = None
        self._load_lock = threading.RLock()
        self.load_seconds = 0.0
        self.unloaded_for_idle = False
        self.lifecycle_state = "standalone"  # the ROS node keeps this current; shown by /health

    # -- lifecycle -------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the engine (or the fallback) and the voices, and start the worker. Raises EngineLoadError."""
        cfg = self.config
        voices_dir = cfg["voices_dir"] or str(package_share() / "voices")
        self.voices = VoiceLibrary(voices_dir)
        t0 = time.monotonic()
        primary = cfg["engine"]
        try:
            self.engine = self._load_engine(primary)
            self.fallback_reason = ""
        except EngineLoadError as exc:
            fallback = cfg["fallback_engine"]
            if not fallback or fallback == primary:
                raise
            self._log("warning", f"engine '{primary}' could not load: {exc}; using fallback engine '{fallback}'")
            self.engine = self._load_engine(fallback)
            self.fallback_reason = f"engine '{primary}' could not load: {exc}"
        self.engine_name = self.engine.name
        self.load_seconds = time.monotonic() - t0
        self._check_voices()
        self.queue = SpeechQueue(self._run_job, max_size=int(cfg["queue.max_size"]), on_idle=self._on_idle)
        self.queue.start()

    def _load_engine(self, name: str) -> Engine:
        engine = create_engine(name, self.config)
        try:
            engine.load()
        except EngineLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes a readable configure failure
            raise EngineLoadError(f"{type(exc).__name__}: {exc}") from exc
        return engine

    def _check_voices(self) -> None:
        """Warn about (and skip) reference files that cannot condition a voice."""
        if self.voices is None or self.engine is None or not self.engine.can_clone:
            return
        for name in self.voices.names():
            try:
                self.engine.prepare_voice(str(self.voices.path(name)))
            except VoiceError as exc:
                self._log("warning", f"voice '{name}' skipped: {exc}")
            except Exception as exc:  # noqa: BLE001
                self._log("warning", f"voice '{name}' skipped: {type(exc).__name__}: {exc}")

    def unload(self, reason: str = "the node is shutting down") -> None:
        """Answer every pending request as cancelled, stop the worker and release the model."""
        with self._load_lock:
            if self.queue is not None:
                self.queue.shutdown(reason)
                self.queue = None
            if self.engine is not None:
                try:
                    self.engine.unload()
                finally:
                    self.engine = None
            gc.collect()

    @property
    def loaded(self) -> bool:
        return self.engine is not None and self.queue is not None

    # -- requests --------------------------------------------------------------------------------------------
    def submit(self, text: Any, voice: Any = "", overrides: Optional[Dict[str, Any]] = None, source: str = "api",
               listener: Optional[JobListener] = None, interrupt: bool = False) -> Job:
        """Validate and enqueue. Raises RequestError (invalid, queue_full, unavailable)."""
        if not self.loaded:
            raise RequestError(UNAVAILABLE, "the speech engine is not loaded (node not configured/active)")
        cfg = self.config
        try:
            clean = text_mod.validate(text, int(cfg["text.max_chars"]))
        except text_mod.TextError as exc:
            raise RequestError(INVALID, str(exc), "input") from None
        try:
            voice_name = resolve_request_voice(self.voices, voice, cfg["default_voice"])
        except VoiceError as exc:
            raise RequestError(INVALID, str(exc), "voice") from None
        try:
            settings = GenerationSettings.from_values(cfg).with_overrides(overrides)
        except ConfigError as exc:
            raise RequestError(INVALID, str(exc), "settings") from None
        interrupt = bool(interrupt) or cfg["queue.policy"] == "interrupt"
        job = Job(clean, voice_name, settings, source, listener, interrupt)
        job.pieces = text_mod.split_sentences(clean, int(cfg["text.chunk_chars"]))
        assert self.queue is not None
        try:
            self.queue.submit(job)
        except QueueFull as exc:
            raise RequestError(QUEUE_FULL, str(exc)) from None
        return job

    def stop(self, reason: str = "stopped") -> int:
        return self.queue.cancel_all(reason) if self.queue is not None else 0

    # -- the worker's job ------------------------------------------------------------------------------------
    def _ensure_engine(self) -> Engine:
        with self._load_lock:
            if self.engine is None:
                raise EngineError("the engine is not loaded")
            if not self.engine.loaded:  # unloaded after idle_unload_s: load again on demand
                self._log("info", "reloading the model after idle unload")
                self.engine.load()
                self.unloaded_for_idle = False
            return self.engine

    def _run_job(self, job: Job) -> JobResult:
        try:
            engine = self._ensure_engine()
        except Exception as exc:  # noqa: BLE001
            self.last_error = f"engine reload failed: {exc}"
            return JobResult(False, ENGINE_ERROR, self.last_error)
        sr = engine.sample_rate
        voice_path = str(self.voices.path(job.voice)) if (job.voice and self.voices) else None
        note = ""
        if voice_path and not engine.can_clone:
            note = f" (engine '{engine.name}' cannot clone voices: spoke voice '{job.voice}' with its own voice)"
            voice_path = None
        produced = 0
        pause = audio.silence(sr, float(self.config["audio.sentence_pause_ms"]))
        chunk_ms = float(self.config["audio.chunk_ms"])
        pending = np.zeros(0, dtype=np.float32)

        def emit(samples: np.ndarray, final: bool = False) -> None:
            """Send whole chunks of chunk_ms to the listener; keep the remainder for the next call."""
            nonlocal pending, produced
            pending = np.concatenate([pending, samples]) if pending.size else samples
            size = max(1, int(round(sr * chunk_ms / 1000.0)))
            while len(pending) >= size or (final and len(pending)):
                if job.cancelled:
                    raise Cancelled()
                part, pending = pending[:size], pending[size:]
                if job.first_audio is None:
                    job.first_audio = time.monotonic()
                job.listener.on_audio(job, part)
                produced += len(part)
                job.audio_seconds = produced / float(sr)

        try:
            job.listener.on_start(job)
            for index, piece in enumerate(job.pieces):
                job.piece_index = index
                if job.cancelled:
                    raise Cancelled()
                held: Optional[np.ndarray] = None  # one part held back so the piece's last part gets a fade-out
                first = True
                for part in engine.synthesize(piece, voice_path, job.settings, job.cancel_event):
                    if job.cancelled:
                        raise Cancelled()
                    part = audio.to_float32(part)
                    if first and part.size:  # only the piece's edges are faded: its parts join seamlessly
                        part = audio.fade_in(part, sr)
                        first = False
                    if held is not None:
                        emit(held)
                    held = part
                if held is not None:
                    emit(audio.fade_out(held, sr))
                if index < len(job.pieces) - 1 and pause.size:
                    emit(pause)
            job.piece_index = len(job.pieces)
            emit(np.zeros(0, dtype=np.float32), final=True)
        except VoiceError as exc:
            return JobResult(False, INVALID, f"voice '{job.voice}' cannot be used: {exc}", produced / float(sr), sr)
        except Cancelled:
            return JobResult(False, CANCELLED, f"cancelled: {job.cancel_reason or 'cancelled'}",
                             produced / float(sr), sr)
        except Exception as exc:  # noqa: BLE001 - engine failures fail this request only
            if job.cancelled:
                return JobResult(False, CANCELLED, f"cancelled: {job.cancel_reason}", produced / float(sr), sr)
            if is_out_of_memory(exc):
                try:
                    engine.free_memory()
                finally:
                    self.last_error = f"out of memory during synthesis; caches freed: {exc}"
                self._log("error", self.last_error)
                return JobResult(False, ENGINE_ERROR, "out of memory during synthesis (caches freed, try again "
                                 "or use shorter text / dtype float16)", produced / float(sr), sr)
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._log("error", f"synthesis failed for request {job.id}: {self.last_error}")
            return JobResult(False, ENGINE_ERROR, f"synthesis failed: {self.last_error}", produced / float(sr), sr)
        done = time.monotonic()
        self.last_latency_s = done - job.created
        if job.first_audio is not None:
            self.last_first_audio_s = job.first_audio - job.created
        duration = produced / float(sr)
        return JobResult(True, OK, f"spoke {duration:.2f} s of audio{note}", duration, sr)

    def _on_idle(self, idle_s: float) -> None:
        limit = float(self.config.get("idle_unload_s", 0.0) or 0.0)
        if limit <= 0 or idle_s < limit:
            return
        with self._load_lock:
            if self.engine is not None and self.engine.loaded and not self.unloaded_for_idle:
                self._log("info", f"idle for {idle_s:.0f} s: unloading the model (reloads on the next request)")
                self.engine.unload()
                self.unloaded_for_idle = True
                gc.collect()

    # -- status ----------------------------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        eng = self.engine
        info: Dict[str, Any] = eng.info() if eng is not None else {"engine": "", "loaded": False}
        q = self.queue
        current = q.current if q is not None else None
        info.update({
            "lifecycle_state": self.lifecycle_state,
            "requested_engine": self.config["engine"],
            "fallback_engine": self.config["fallback_engine"],
            "using_fallback": bool(self.fallback_reason),
            "fallback_reason": self.fallback_reason,
            "unloaded_for_idle": self.unloaded_for_idle,
            "queue_depth": q.depth if q is not None else 0,
            "queue_max": q.max_size if q is not None else int(self.config["queue.max_size"]),
            "speaking": current is not None,
            "counters": dict(q.counters) if q is not None else {},
            "last_error": self.last_error,
            "last_latency_s": self.last_latency_s,
            "last_first_audio_s": self.last_first_audio_s,
            "load_seconds": round(self.load_seconds, 3),
            "voices": self.voices.names() if self.voices is not None else [],
            "default_voice": self.config["default_voice"],
        })
        return info
