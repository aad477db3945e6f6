"""The speech core: the application's whole surface, shared by the ROS node and the HTTP app.

`SpeechCore` loads the engine (with a fallback) and the voice library, and offers every use case: submit a request,
cancel one request or all, list / add / delete voices (the same validation for every door), and status. Requests
become Jobs in one queue; its worker synthesizes them sentence by sentence and hands audio chunks to each job's
listener (the node publishes them, the HTTP app streams them). The doors hold only this object.
Nothing here imports rclpy, FastAPI or uvicorn, and nothing here knows about lifecycle states or HTTP statuses.
"""
from __future__ import annotations

import gc
import logging
import re
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from . import audio, text as text_mod
from .engine import Cancelled, Engine, EngineError, EngineLoadError, VoiceError
from .engines import create_engine
from .engines.chatterbox.languages import LANGUAGES, normalize_language, unsupported_message
from .settings import ConfigError, Settings
from .speech_queue import CANCELLED, ENGINE_ERROR, INVALID, OK, QUEUE_FULL, UNAVAILABLE, Job, JobListener, \
    JobResult, QueueFull, SpeechQueue
from .status import CoreStatus, EngineStatus
from .voices import AUDIO_SUFFIXES, OPENAI_VOICES, ReadOnlyVoice, VoiceLibrary, check_reference, clean_name, \
    open_library, resolve_request_voice

log = logging.getLogger(__name__)

# what the doors use: nothing below the core
__all__ = ["SpeechCore", "RequestError", "EngineLoadError", "VoiceInfo", "VoiceAdded", "LanguageInfo", "CoreStatus",
           "OPENAI_VOICES", "VOICE_EXISTS", "VOICE_IN_USE", "VOICE_NOT_FOUND"]

# RequestError kinds of voice management, beside the queue's (INVALID, QUEUE_FULL, UNAVAILABLE)
VOICE_EXISTS = "voice_exists"
VOICE_NOT_FOUND = "voice_not_found"
VOICE_IN_USE = "voice_in_use"
EMPTY_TEXT = text_mod.EMPTY_TEXT  # what every door says for empty or all-space text (HTTP's schema check too)
MAX_REFERENCE_BYTES = 64 << 20  # a reference recording read from a path (60 s of 48 kHz float stereo is 23 MiB)


class RequestError(Exception):
    """A request that cannot be accepted; `kind` tells each door how to answer (HTTP status, success=false)."""

    def __init__(self, kind: str, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    file: str
    bytes: int
    language: str = ""  # spoken when a request with this voice names none ('' = none)


@dataclass(frozen=True)
class LanguageInfo:
    code: str   # ISO 639-1, as requests name it
    name: str   # in English: "French"


@dataclass(frozen=True)
class VoiceAdded:
    name: str
    file: str
    duration: float
    can_clone: bool
    message: str
    language: str = ""


def is_out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_\-]+")


def voice_name_from_filename(filename: str) -> str:
    """A safe voice name from a file's name ('My voice (2).wav' -> 'My_voice_2'); '' when none."""
    stem = Path(filename.replace("\\", "/")).name
    for suffix in AUDIO_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return _UNSAFE_NAME.sub("_", stem).strip("_-")[:64]


class SpeechCore:
    """SpeechCore(settings). `settings`: a `settings.Settings` (`Settings.from_values` in tests).

    load() / unload(reason) / loaded; apply(settings) for parameter changes (run-time values apply to the next
    request, configure-time ones at the next load()); submit(...) -> Job; cancel(job) / cancel_all(reason);
    list_voices() / add_voice(...) / add_voice_file(...) / delete_voice(name); status(); sample_rate.
    """

    def __init__(self, settings: Settings):
        if not isinstance(settings, Settings):
            raise TypeError(f"SpeechCore takes a Settings, not {type(settings).__name__}")
        self._settings = settings
        self.engine: Optional[Engine] = None
        self.engine_name = ""
        self.fallback_reason = ""  # non-empty when the fallback engine serves instead of `engine`
        self._library: Optional[VoiceLibrary] = None
        self.queue: Optional[SpeechQueue] = None
        self.last_error = ""
        self.last_latency_s: Optional[float] = None
        self.last_first_audio_s: Optional[float] = None
        self._load_lock = threading.RLock()
        self.load_seconds = 0.0
        self.unloaded_for_idle = False

    # -- settings --------------------------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        return self._settings

    def apply(self, settings: Settings) -> None:
        """New settings (one reference swap: the worker reads whole objects, never a half-applied change)."""
        self._settings = settings

    # -- lifecycle -------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the engine (or the fallback) and the voices, and start the worker. Raises EngineLoadError."""
        cfg = self._settings.core
        self._library = open_library(cfg.voices_dir)
        t0 = time.monotonic()
        primary = cfg.engine
        try:
            self.engine = self._load_engine(primary)
            self.fallback_reason = ""
        except EngineLoadError as exc:
            fallback = cfg.fallback_engine
            if not fallback or fallback == primary:
                raise
            log.warning(f"engine '{primary}' could not load: {exc}; using fallback engine '{fallback}'")
            self.engine = self._load_engine(fallback)
            self.fallback_reason = f"engine '{primary}' could not load: {exc}"
        self.engine_name = self.engine.name
        self.load_seconds = time.monotonic() - t0
        self._check_voices()
        try:
            self.resolve_language("")
        except RequestError as exc:  # the `language` parameter names a language this model does not speak
            log.warning(f"parameter language: {exc.message}: requests that name no language will be refused")
        self.queue = SpeechQueue(self._run_job, max_size=cfg.queue_max_size, on_idle=self._on_idle)
        self.queue.start()

    def _load_engine(self, name: str) -> Engine:
        engine = create_engine(name, self._settings.engine, max_piece_chars=self._settings.core.text_chunk_chars)
        try:
            engine.load()
        except EngineLoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loader failure becomes a readable configure failure
            raise EngineLoadError(f"{type(exc).__name__}: {exc}") from exc
        return engine

    def _check_voices(self) -> None:
        """Warn about (and skip) reference files that cannot condition a voice."""
        if self._library is None or self.engine is None or not self.engine.can_clone:
            return
        for name in self._library.names():
            try:
                self.engine.prepare_voice(str(self._library.path(name)))
            except VoiceError as exc:
                log.warning(f"voice '{name}' skipped: {exc}")
            except Exception as exc:  # noqa: BLE001
                log.warning(f"voice '{name}' skipped: {type(exc).__name__}: {exc}")

    def unload(self, reason: str = "the node is shutting down") -> None:
        """Answer every pending request as cancelled, stop (and join) the worker, then release the model."""
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

    @property
    def sample_rate(self) -> int:
        """The engine's output rate (0 when not loaded)."""
        eng = self.engine
        return int(eng.sample_rate) if eng is not None else 0

    @property
    def can_clone(self) -> bool:
        eng = self.engine
        return bool(eng is not None and eng.can_clone)

    # -- requests --------------------------------------------------------------------------------------------
    def submit(self, text: Any, voice: Any = "", overrides: Optional[Dict[str, Any]] = None, source: str = "api",
               listener: Optional[JobListener] = None, interrupt: bool = False,
               chunk_ms: Optional[float] = None) -> Job:
        """Validate and enqueue. `overrides`: generation settings of this request, `language` among them ('' or
        None: the voice's language when it carries one, else the parameter's, else the model's default).
        `chunk_ms`: the duration of each chunk handed to the listener (None: as the engine yields). Raises
        RequestError (invalid, queue_full, unavailable); a language the loaded model does not speak is invalid (param
        "language"), and nothing is queued."""
        queue = self.queue
        engine = self.engine
        if queue is None or engine is None or not self.loaded:
            raise RequestError(UNAVAILABLE, "the speech engine is not loaded (node not configured/active)")
        settings = self._settings
        cfg = settings.core
        try:
            clean = text_mod.validate(text, cfg.text_max_chars)
        except text_mod.TextError as exc:
            raise RequestError(INVALID, str(exc), "input") from None
        try:
            voice_name = resolve_request_voice(self._library, voice, cfg.default_voice)
        except VoiceError as exc:
            raise RequestError(INVALID, str(exc), "voice") from None
        overrides = dict(overrides or {})
        language = self._request_language(overrides.pop("language", None), voice_name, engine)
        try:
            generation = replace(settings.generation.with_overrides(overrides), language=language)
        except ConfigError as exc:
            raise RequestError(INVALID, str(exc), "settings") from None
        interrupt = bool(interrupt) or cfg.queue_policy == "interrupt"
        job = Job(clean, voice_name, generation, source, listener, interrupt, chunk_ms,
                  cfg.audio_sentence_pause_ms)
        job.pieces = text_mod.split_sentences(clean, self._piece_chars(cfg.text_chunk_chars))
        try:
            queue.submit(job)
        except QueueFull as exc:
            raise RequestError(QUEUE_FULL, str(exc)) from None
        return job

    def resolve_language(self, requested: Any = "", engine: Optional[Engine] = None) -> str:
        """The code a request speaks in: `requested` ("FR", "fr-FR" -> "fr"), or when it is ''/None the `language`
        parameter's, or when that is '' the model's default. RequestError (invalid, param "language") naming the
        supported codes when the loaded model does not speak it; unavailable when no model is loaded."""
        engine = engine if engine is not None else self._engine()
        supported = tuple(engine.languages)
        if requested is not None and not isinstance(requested, str):
            raise RequestError(INVALID, f"language must be a string (an ISO 639-1 code), not {requested!r}",
                               "language")
        try:
            code = normalize_language(requested) or self._settings.generation.language or engine.default_language
        except ValueError:  # not one of the codes any model here speaks: the refusal names what this one speaks
            code = (requested or "").strip()
        if code not in supported:
            raise RequestError(INVALID, unsupported_message(code, supported, engine.model_id), "language")
        return code

    def _request_language(self, requested: Any, voice_name: Optional[str], engine: Engine) -> str:
        """resolve_language, with the voice's language between the request's and the parameter's: a request that
        names none speaks its voice's language (the default voice's too) when the voice carries one."""
        named = requested is not None and (not isinstance(requested, str) or requested.strip())
        voice_language = ""
        if not named and voice_name and self._library is not None:
            try:
                voice_language = self._library.language(voice_name)
            except VoiceError:  # deleted since it was resolved: the worker reports the missing voice
                voice_language = ""
        if not voice_language:
            return self.resolve_language(requested, engine)
        try:
            return self.resolve_language(voice_language, engine)
        except RequestError as exc:
            if exc.kind != INVALID:
                raise
            raise RequestError(INVALID, f"{exc.message} (voice '{voice_name}' speaks '{voice_language}'; name a "
                                        f"language in the request to use it with this model)", "language") from None

    def list_languages(self) -> List[LanguageInfo]:
        """What the loaded model speaks, its default first. RequestError (unavailable) when no model is loaded."""
        engine = self._engine()
        return [LanguageInfo(code, LANGUAGES.get(code, code)) for code in engine.languages]

    @property
    def default_language(self) -> str:
        """The code spoken when a request names none ('' when no model is loaded)."""
        engine = self.engine
        return (self._settings.generation.language or engine.default_language) if engine is not None else ""

    @property
    def model_id(self) -> str:
        """The loaded model as refusals name it (chatterbox-turbo, piper; '' when none)."""
        engine = self.engine
        return engine.model_id if engine is not None else ""

    def _piece_chars(self, chunk_chars: int) -> int:
        """The longest piece: text.chunk_chars, or less when the engine's memory budget chose shorter pieces."""
        engine = self.engine
        limit = getattr(engine, "max_piece_chars", None) if engine is not None else None
        return min(int(chunk_chars), int(limit)) if limit else int(chunk_chars)

    def cancel(self, job: Job, reason: str = "cancelled") -> None:
        """Cancel one request, waiting or running (a running one stops within one chunk)."""
        queue = self.queue
        if queue is not None:
            queue.cancel(job, reason)
        else:
            job.cancel(reason)

    def cancel_all(self, reason: str = "stopped") -> int:
        """Cancel the running request and every waiting one; returns how many."""
        queue = self.queue
        return queue.cancel_all(reason) if queue is not None else 0

    def wait_idle(self, timeout: float) -> bool:
        """Block until no request runs or waits (True), or `timeout` passes (False)."""
        queue = self.queue
        return queue.wait_idle(timeout) if queue is not None else True

    def _engine(self) -> Engine:
        """The loaded engine; RequestError (unavailable) when none is."""
        engine = self.engine
        if engine is None:
            raise RequestError(UNAVAILABLE, "the speech engine is not loaded (node not configured/active)")
        return engine

    # -- voices ----------------------------------------------------------------------------------------------
    def _voices(self) -> VoiceLibrary:
        lib = self._library
        if lib is None:
            raise RequestError(UNAVAILABLE, "the voice library is not loaded (node not configured)")
        return lib

    @property
    def default_voice(self) -> str:
        return self._settings.core.default_voice

    def list_voices(self) -> List[VoiceInfo]:
        return [VoiceInfo(v["name"], v["file"], v["bytes"], str(v.get("language", "")))
                for v in self._voices().describe()]

    def add_voice(self, name: str, data: bytes, overwrite: bool = False, filename: str = "",
                  language: str = "") -> VoiceAdded:
        """Store a reference recording as voice `name` (or a name made from `filename` when `name` is '').
        `language` ('' = none): what requests with this voice speak when they name no language. Any of the codes
        Chatterbox Multilingual speaks is accepted, also one the loaded model does not speak (the voice may serve a
        multilingual model later): requests that would speak it on this model are refused then, as any unsupported
        language. Overwriting a voice replaces its language too.
        Raises RequestError: invalid (name, audio or language; param 'name', 'file' or 'language'), voice_exists,
        unavailable."""
        lib = self._voices()
        if not isinstance(language, str):
            raise RequestError(INVALID, f"language must be a string (an ISO 639-1 code), not {language!r:.40}",
                               "language")
        try:
            language = normalize_language(language)
        except ValueError as exc:
            raise RequestError(INVALID, str(exc), "language") from None
        if name:
            try:
                stem = clean_name(name)
            except VoiceError as exc:
                raise RequestError(INVALID, str(exc), "name") from None
        else:
            stem = voice_name_from_filename(filename)
            if not stem:
                raise RequestError(INVALID, "give the voice a name", "name")
        try:
            duration = check_reference(data)
            existing = lib.find(stem)  # names are unique ignoring case (one file on macOS/Windows disks)
            if existing is not None and not overwrite:
                raise RequestError(VOICE_EXISTS, f"voice '{existing}' already exists; overwrite it or choose "
                                                 f"another name", "name")
            path = lib.add(stem, data, overwrite=overwrite, language=language)
        except VoiceError as exc:
            raise RequestError(INVALID, str(exc), "file") from None
        note = "" if self.can_clone else (f" (engine '{self.engine_name}' cannot clone voices: it is stored for "
                                          f"Chatterbox Turbo)")
        engine = self.engine
        if language and engine is not None and language not in tuple(engine.languages):
            note += (f" (language '{language}': model '{engine.model_id}' speaks {', '.join(engine.languages)}; "
                     f"requests with this voice must name one of those while it serves)")
        spoken = f", language {language}" if language else ""
        log.info(f"voice '{stem}' added ({duration:.1f} s{spoken})")
        return VoiceAdded(stem, path.name, round(duration, 3), self.can_clone, f"voice '{stem}' saved{note}",
                          language)

    def add_voice_file(self, name: str, path: str, overwrite: bool = False, language: str = "") -> VoiceAdded:
        """`add_voice` from a recording on this machine (the file is copied into the voices folder)."""
        p = Path(path).expanduser() if path else None
        if p is None or not p.is_file():
            raise RequestError(INVALID, f"no such file: '{path}' (give the path of a recording on the node's "
                                        f"machine)", "file")
        try:
            with p.open("rb") as f:
                data = f.read(MAX_REFERENCE_BYTES + 1)
        except OSError as exc:
            raise RequestError(INVALID, f"cannot read '{path}': {exc.strerror or exc}", "file") from None
        if len(data) > MAX_REFERENCE_BYTES:
            raise RequestError(INVALID, f"'{path}' is larger than {MAX_REFERENCE_BYTES >> 20} MiB", "file")
        return self.add_voice(name, data, overwrite, filename=p.name, language=language)

    def delete_voice(self, name: str) -> str:
        """Delete a voice; returns its name. Raises RequestError: invalid, voice_not_found, voice_in_use."""
        lib = self._voices()
        try:
            stem = clean_name(name)
        except VoiceError as exc:
            raise RequestError(INVALID, str(exc), "name") from None
        if stem not in lib.names():
            raise RequestError(VOICE_NOT_FOUND, f"unknown voice '{stem}'", "name")
        if stem == self.default_voice:
            raise RequestError(VOICE_IN_USE, f"voice '{stem}' is the default voice (parameter default_voice); "
                                             f"change that first", "name")
        try:
            lib.delete(stem)
        except ReadOnlyVoice as exc:
            raise RequestError(VOICE_IN_USE, str(exc), "name") from None
        except (VoiceError, OSError) as exc:
            raise RequestError(VOICE_NOT_FOUND, str(exc), "name") from None
        log.info(f"voice '{stem}' deleted")
        return stem

    # -- the worker's job ------------------------------------------------------------------------------------
    def _ensure_engine(self) -> Engine:
        with self._load_lock:
            if self.engine is None:
                raise EngineError("the engine is not loaded")
            if not self.engine.loaded:  # unloaded after idle_unload_s: load again on demand
                log.info("reloading the model after idle unload")
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
        voice_path = str(self._library.path(job.voice)) if (job.voice and self._library) else None
        note = ""
        if voice_path and not engine.can_clone:
            note = f" (engine '{engine.name}' cannot clone voices: spoke voice '{job.voice}' with its own voice)"
            voice_path = None
        produced = 0
        pause = audio.silence(sr, float(job.pause_ms))
        pending = np.zeros(0, dtype=np.float32)

        def emit(samples: np.ndarray, final: bool = False) -> None:
            """Send whole chunks of job.chunk_ms to the listener; keep the remainder for the next call."""
            nonlocal pending, produced
            pending = np.concatenate([pending, samples]) if pending.size else samples
            size = max(1, int(round(sr * job.chunk_ms / 1000.0)) if job.chunk_ms else len(pending))
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
                # only the piece's edges are faded (its parts join seamlessly): the fade-out needs the piece's
                # last samples, so only 2 x FADE_MS (a fade spans at most half its input) is held back, not a
                # whole part: the first audio leaves as soon as the engine yields it
                hold = 2 * max(1, int(sr * audio.FADE_MS / 1000.0))
                tail = np.zeros(0, dtype=np.float32)
                first = True
                for part in engine.synthesize(piece, voice_path, job.settings, job.cancel_event):
                    if job.cancelled:
                        raise Cancelled()
                    part = audio.to_float32(part)
                    if first and part.size:
                        part = audio.fade_in(part, sr)
                        first = False
                    tail = np.concatenate([tail, part]) if tail.size else part
                    if len(tail) > hold:
                        emit(tail[:-hold])
                        tail = tail[-hold:]
                if tail.size:
                    emit(audio.fade_out(tail, sr))
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
                log.error(self.last_error)
                return JobResult(False, ENGINE_ERROR, "out of memory during synthesis (caches freed, try again "
                                 "or use shorter text / dtype float16)", produced / float(sr), sr)
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error(f"synthesis failed for request {job.id}: {self.last_error}")
            return JobResult(False, ENGINE_ERROR, f"synthesis failed: {self.last_error}", produced / float(sr), sr)
        done = time.monotonic()
        self.last_latency_s = done - job.created
        if job.first_audio is not None:
            self.last_first_audio_s = job.first_audio - job.created
        duration = produced / float(sr)
        return JobResult(True, OK, f"spoke {duration:.2f} s of audio{note}", duration, sr)

    def _on_idle(self, idle_s: float) -> None:
        limit = self._settings.core.idle_unload_s
        if limit <= 0 or idle_s < limit:
            return
        with self._load_lock:
            if self.engine is not None and self.engine.loaded and not self.unloaded_for_idle:
                log.info(f"idle for {idle_s:.0f} s: unloading the model (reloads on the next request)")
                self.engine.unload()
                self.unloaded_for_idle = True
                gc.collect()

    # -- status ----------------------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Readiness: the configured engine (not the fallback) serves requests."""
        q = self.queue
        return bool(self.loaded and q is not None and q.running and not self.fallback_reason)

    def status(self) -> CoreStatus:
        """Everything a status page or diagnostics shows: engine status, queue, counters, voices, last error."""
        eng, q, lib, cfg = self.engine, self.queue, self._library, self._settings.core
        return CoreStatus(
            engine=eng.info() if eng is not None else EngineStatus(),
            accepting=bool(self.loaded and q is not None and q.running), ready=self.ready,
            requested_engine=cfg.engine, fallback_engine=cfg.fallback_engine,
            using_fallback=bool(self.fallback_reason), fallback_reason=self.fallback_reason,
            unloaded_for_idle=self.unloaded_for_idle, queue_depth=q.depth if q is not None else 0,
            queue_max=q.max_size if q is not None else cfg.queue_max_size,
            speaking=q is not None and q.current is not None, counters=dict(q.counters) if q is not None else {},
            last_error=self.last_error, last_latency_s=self.last_latency_s,
            last_first_audio_s=self.last_first_audio_s, load_seconds=round(self.load_seconds, 3),
            voices=tuple(lib.names()) if lib is not None else (), default_voice=cfg.default_voice)
