"""The HTTP door to the speech core: OpenAI-compatible speech, custom endpoints, voice management and a web page.

`create_app(core, settings)` builds a FastAPI app over a loaded `SpeechCore`; `http_server.HttpServer` runs it in a
thread of the ROS node (or in the foreground without ROS). Requests become jobs in the core's one queue, next to the
ROS requests; audio chunks come back through a job listener and are encoded (`encoding.Encoder`) on the worker
thread, then streamed from the event loop. Nothing here imports rclpy.

Errors are OpenAI-shaped `{"error": {"message", "type", "param", "code"}}`: 400 for the caller's mistakes (FastAPI's
own validation errors and bad JSON included), 401 for a missing or wrong API key, 404/405/413 as usual, 503 with
`Retry-After` when the queue is full, 500 when synthesis fails. Never a traceback.
"""
# No `from __future__ import annotations`: FastAPI must resolve the request models built inside create_app().
import asyncio
import base64
import hmac
import json
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import encoding
from .settings import SETTINGS_BY_NAME
from .core import RequestError, SpeechCore
from .engine import VoiceError
from .speech_queue import CANCELLED, ENGINE_ERROR, INVALID, QUEUE_FULL, UNAVAILABLE, Job, JobListener, JobResult
from .voices import OPENAI_VOICES, check_reference, clean_name

log = logging.getLogger("ros2_chatterbox.http")

WEB_DIR = Path(__file__).resolve().parent / "web"
OPENAI_MAX_INPUT = 4096
MAX_JSON_BODY = 1 << 20           # 1 MiB: far above any valid request (4096 characters of text)
MULTIPART_OVERHEAD = 64 << 10     # boundaries and form fields around an uploaded file
MODEL_IDS = ("chatterbox-turbo", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")  # all accepted, all the same engine
PUBLIC_PATHS = frozenset({"/", "/health", "/health/live", "/health/ready", "/docs", "/docs/oauth2-redirect",
                          "/openapi.json", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
SPEECH_TOKENS_PER_S = 25  # Chatterbox's speech-token rate: the unit of `output_tokens` in usage
RESULT_STATUS = {INVALID: 400, QUEUE_FULL: 503, UNAVAILABLE: 503, CANCELLED: 503, ENGINE_ERROR: 500}


# -- errors -------------------------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a body grows past its limit; an HTTPException so FastAPI passes it through."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body is larger than {limit} bytes")


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
                   code: Optional[str] = None, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


_STATUS_TYPES = {401: ("authentication_error", "invalid_api_key"), 404: ("invalid_request_error", "not_found"),
                 405: ("invalid_request_error", "method_not_allowed"),
                 413: ("invalid_request_error", "request_too_large")}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def _errors(*statuses: int) -> Dict[Union[int, str], Dict[str, Any]]:
    text = {400: "Invalid request (validation error, bad JSON, unknown voice, ...)", 401: "Missing or wrong API key",
            404: "Not found", 409: "Conflict", 413: "Body too large", 500: "Synthesis failed",
            503: "Queue full (see Retry-After) or engine not loaded"}
    return {s: {"model": ErrorResponse, "description": text.get(s, "Error")} for s in statuses}


def _retry_after(core: SpeechCore) -> str:
    """Seconds until a queue slot is likely free: one utterance's latency, bounded to something sensible."""
    latency = core.last_latency_s or 2.0
    return str(int(min(60, max(1, math.ceil(latency)))))


def request_error(core: SpeechCore, exc: RequestError) -> ApiError:
    if exc.kind == QUEUE_FULL:
        return ApiError(503, exc.message, "server_error", None, "queue_full", {"Retry-After": _retry_after(core)})
    if exc.kind == UNAVAILABLE:
        return ApiError(503, exc.message, "server_error", None, "engine_unavailable", {"Retry-After": "5"})
    return ApiError(400, exc.message, "invalid_request_error", exc.param, "invalid_value")


def result_error(core: SpeechCore, result: JobResult) -> ApiError:
    status = RESULT_STATUS.get(result.kind, 500)
    headers = {"Retry-After": _retry_after(core)} if status == 503 and result.kind != CANCELLED else None
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, result.message, type_, None, result.kind, headers)


# -- request models -----------------------------------------------------------------------------------------------
class VoiceId(BaseModel):
    """OpenAI's custom-voice form: {"id": "<voice name>"}."""
    id: str = Field(..., max_length=200, description="A voice name from GET /v1/audio/voices")


def _gen_field(name: str, kind: Any, description: str):
    s = SETTINGS_BY_NAME[f"generation.{name}"]
    extra: Dict[str, Any] = {}
    if s.min is not None:
        extra["ge"] = s.min
    if s.max is not None:
        extra["le"] = s.max
    return (Optional[kind], Field(None, description=f"{description} Default: parameter generation.{name} "
                                                    f"({s.default}).", **extra))


def _models(max_input: int):
    """Request models whose limits follow the configuration (text.max_chars), so /openapi.json tells the truth."""
    Format = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

    class SpeechRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # unknown fields are ignored, as OpenAI does
        model: str = Field("chatterbox-turbo", max_length=200,
                           description="Any model id; every id uses this node's engine.")
        input: str = Field(..., min_length=1, max_length=max_input, description="Text to speak.")
        voice: Union[str, VoiceId] = Field(
            "", description="A voice name (with or without .wav), {\"id\": name}, or an OpenAI voice name "
                            "(alloy, ash, ...), which means the default voice.")
        instructions: Optional[str] = Field(None, max_length=OPENAI_MAX_INPUT,
                                            description="Accepted for compatibility; ignored.")
        response_format: Format = Field("mp3", description="mp3, opus (Ogg), aac (ADTS), flac, wav, or pcm "
                                                           "(raw 16-bit LE mono at X-Sample-Rate).")
        speed: StrictFloat = Field(1.0, ge=encoding.MIN_SPEED, le=encoding.MAX_SPEED,
                             description="Tempo 0.25-4.0 (pitch unchanged).")
        stream_format: Literal["audio", "sse"] = Field(
            "audio", description="audio: the file's bytes stream as they are synthesized; sse: server-sent "
                                 "events speech.audio.delta (base64 audio) then speech.audio.done.")

    fields = {
        "text": (str, Field(..., min_length=1, max_length=max_input, description="Text to speak.")),
        "voice": (Union[str, VoiceId], Field("", description="Voice name; '' = the default voice.")),
        "format": (Format, Field("wav", description="Audio format of the answer.")),
        "speed": (StrictFloat, Field(1.0, ge=encoding.MIN_SPEED, le=encoding.MAX_SPEED,
                               description="Tempo 0.25-4.0 (pitch unchanged).")),
        "temperature": _gen_field("temperature", StrictFloat, "Sampling temperature (Chatterbox)."),
        "top_p": _gen_field("top_p", StrictFloat, "Nucleus sampling threshold (Chatterbox)."),
        "top_k": _gen_field("top_k", StrictInt, "Top-k sampling (Chatterbox)."),
        "repetition_penalty": _gen_field("repetition_penalty", StrictFloat, "Repetition penalty (Chatterbox)."),
        "seed": _gen_field("seed", StrictInt, "Random seed; 0 = new seed per request."),
        "watermark": (Optional[StrictBool], Field(None, description="Perth watermark on Chatterbox output.")),
        "stream": (StrictBool, Field(False, description="Stream the bytes as they are synthesized (chunked) instead "
                                                  "of answering with the complete file.")),
    }
    from pydantic import create_model
    TTSRequest = create_model("TTSRequest", __config__=ConfigDict(extra="forbid"), **fields)
    return SpeechRequest, TTSRequest


GENERATION_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "watermark")


# -- response models (documented in /openapi.json) ----------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: str = "list"
    data: List[ModelCard]


class VoiceCard(BaseModel):
    id: str
    name: str
    object: str = "voice"
    file: str
    bytes: int


class VoiceList(BaseModel):
    object: str = "list"
    data: List[VoiceCard]
    default_voice: str
    openai_aliases: List[str]
    can_clone: bool


class PredefinedVoice(BaseModel):
    display_name: str
    filename: str


class VoiceUploaded(BaseModel):
    id: str
    object: str = "voice"
    name: str
    file: str
    duration: float
    can_clone: bool
    message: str


class VoiceDeleted(BaseModel):
    id: str
    object: str = "voice.deleted"
    deleted: bool


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    ready: bool
    engine: str
    using_fallback: bool
    queue_depth: int
    queue_max: int
    speaking: bool
    lifecycle_state: str = "standalone"
    device: str = ""
    last_error: str = ""
    last_latency_s: Optional[float] = None
    last_first_audio_s: Optional[float] = None


# One server-sent event (Open API before 3.2: `schema` of text/event-stream describes each event).
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"oneOf": [
                {"type": "object", "required": ["type", "audio"], "properties": {
                    "type": {"const": "speech.audio.delta"},
                    "audio": {"type": "string", "description": "base64 bytes of response_format"}}},
                {"type": "object", "required": ["type", "usage"], "properties": {
                    "type": {"const": "speech.audio.done"},
                    "usage": {"type": "object", "required": ["input_tokens", "output_tokens", "total_tokens"],
                              "properties": {"input_tokens": {"type": "integer"},
                                             "output_tokens": {"type": "integer"},
                                             "total_tokens": {"type": "integer"}}}}},
                {"type": "object", "required": ["type", "error"], "properties": {
                    "type": {"const": "error"}, "error": {"type": "object"}}},
            ]},
        },
    },
}
AUDIO_CONTENT = {ct: {"schema": {"type": "string", "format": "binary"}}
                 for ct in sorted(set(encoding.CONTENT_TYPES.values()))}


# -- streaming: job listener -> event loop --------------------------------------------------------------------------
class StreamListener(JobListener):
    """Encodes a job's chunks on the worker thread and hands the bytes to one request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fmt: str, sample_rate: int, speed: float,
                 streaming: bool):
        self.loop = loop
        self.items: "asyncio.Queue[Tuple[str, Any]]" = asyncio.Queue()
        self.encoder = encoding.Encoder(fmt, sample_rate, speed, streaming=streaming)
        self._lock = threading.Lock()

    def _put(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (server stopped): nobody is listening any more
            pass

    def on_audio(self, job: Job, samples) -> None:
        with self._lock:
            data = self.encoder.feed(samples)
        if data:
            self._put("data", data)

    def on_done(self, job: Job, result: JobResult) -> None:
        with self._lock:
            if result.success:
                try:
                    tail = self.encoder.finish()
                except Exception as exc:  # noqa: BLE001 - an encoder failure is this request's failure only
                    self._put("done", JobResult(False, ENGINE_ERROR, f"encoding failed: {exc}"))
                    return
                if tail:
                    self._put("data", tail)
            else:
                self.encoder.close()
        self._put("done", result)


# -- the app ------------------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Status values as JSON (engine info may hold paths, dtypes, devices)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return str(value)


def _validation_message(errors: List[Dict[str, Any]]) -> Tuple[str, Optional[str], str]:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return f"the body is not valid JSON ({detail})".replace(" ()", ""), None, "invalid_json"
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    # union members appear as extra loc parts ("str", "VoiceId"): keep the field name only
    param = loc[0] if loc else None
    msg = first.get("msg", "invalid request")
    if first.get("type") == "missing" and param is None:
        return "the request body is missing: send a JSON object", None, "missing_required_parameter"
    if first.get("type") == "missing":
        return f"missing required parameter: '{param}'", param, "missing_required_parameter"
    if first.get("type") == "extra_forbidden":
        return f"unknown parameter: '{param}'", param, "unknown_parameter"
    text = f"{'.'.join(loc)}: {msg}" if loc else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text, param, "invalid_value"


class _AccessMiddleware:
    """API key (constant-time compare) and request body limits, before any body is parsed."""

    def __init__(self, app, api_key: str, upload_limit: Callable[[], int]):
        self.app = app
        self.api_key = api_key.encode("utf-8")
        self.upload_limit = upload_limit

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key)
        return False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.api_key and scope.get("method") != "OPTIONS" and not (
                path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)) and not self._authorized(scope):
            resp = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                       "(parameter http.api_key)", "authentication_error", None, "invalid_api_key",
                                  {"WWW-Authenticate": "Bearer"})
            await resp(scope, receive, send)
            return
        limit = self.upload_limit() + MULTIPART_OVERHEAD if path == "/v1/audio/voices" else MAX_JSON_BODY
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    resp = error_response(413, f"request body is larger than {limit} bytes"
                                          + (" (parameter http.max_upload_mb)" if limit != MAX_JSON_BODY else ""),
                                          code="request_too_large")
                    await resp(scope, receive, send)
                    return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


def create_app(core: SpeechCore, settings: Optional[Dict[str, Any]] = None) -> FastAPI:
    """The FastAPI app over a loaded core. `settings` is the flat configuration (default: core.config)."""
    settings = settings if settings is not None else core.config
    api_key = str(settings.get("http.api_key", "") or "")
    max_input = min(OPENAI_MAX_INPUT, int(settings.get("text.max_chars", OPENAI_MAX_INPUT)))
    SpeechRequest, TTSRequest = _models(max_input)
    started = int(time.time())

    def upload_limit() -> int:
        return int(float(settings.get("http.max_upload_mb", 20.0)) * (1 << 20))

    app = FastAPI(
        title="ros2_chatterbox",
        version="1.0.0",
        description="Speech from the robot's TTS node: an OpenAI-compatible `POST /v1/audio/speech`, a custom "
                    "`POST /tts` with the generation settings, voice management, and a web page at `/`. Requests "
                    "share one queue with the ROS requests.",
        redoc_url=None,
    )
    app.state.core = core

    # -- error handlers: everything OpenAI-shaped ---------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        message, param, code = _validation_message(list(exc.errors()))
        return error_response(400, message, "invalid_request_error", param, code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        type_, code = _STATUS_TYPES.get(exc.status_code, ("invalid_request_error" if exc.status_code < 500
                                                          else "server_error", None))
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        return error_response(exc.status_code, message, type_, None, code, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}", "server_error", None, "internal_error")

    app.add_middleware(_AccessMiddleware, api_key=api_key, upload_limit=upload_limit)

    # -- helpers ------------------------------------------------------------------------------------------------
    def sample_rate() -> int:
        eng = core.engine
        if eng is None or not core.loaded:
            raise ApiError(503, "the speech engine is not loaded (node not configured/active)", "server_error",
                           None, "engine_unavailable", {"Retry-After": "5"})
        return int(eng.sample_rate)

    def submit(text: str, voice: Any, overrides: Optional[Dict[str, Any]], fmt: str, speed: float,
               streaming: bool) -> Tuple[Job, StreamListener]:
        rate = sample_rate()
        listener = StreamListener(asyncio.get_running_loop(), fmt, rate, speed, streaming)
        if isinstance(voice, VoiceId):
            voice = {"id": voice.id}
        try:
            job = core.submit(text, voice, overrides, source="http", listener=listener)
        except RequestError as exc:
            listener.encoder.close()
            raise request_error(core, exc) from None
        return job, listener

    def cancel(job: Job, reason: str) -> None:
        q = core.queue
        if q is not None and not job.done:
            q.cancel(job, reason)
        elif not job.done:
            job.cancel(reason)

    async def next_item(request: Request, job: Job, listener: StreamListener) -> Tuple[str, Any]:
        """The next item of a job, watching for the client going away while the job waits in the queue."""
        # One get() task across the polls: cancelling a get() on each timeout could drop an item.
        getter = asyncio.ensure_future(listener.items.get())
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=0.5)
                if done:
                    return getter.result()
                if await request.is_disconnected():
                    cancel(job, "HTTP client disconnected")
                    raise ApiError(499, "client disconnected", code="client_closed")
        finally:
            if not getter.done():
                getter.cancel()

    async def first_item(request: Request, job: Job, listener: StreamListener) -> Tuple[str, Any]:
        """Wait for the first bytes (or the end) before answering, so a failure before any audio gets a status."""
        try:
            kind, payload = await next_item(request, job, listener)
        except BaseException:
            cancel(job, "HTTP request aborted")
            raise
        if kind == "done" and not payload.success:
            raise result_error(core, payload)
        return kind, payload

    def audio_headers(listener: StreamListener, job: Job, fmt: str) -> Dict[str, str]:
        return {"X-Sample-Rate": str(listener.encoder.output_rate), "X-Channels": "1",
                "X-Request-Id": str(job.id), "Cache-Control": "no-store",
                "Content-Disposition": f'inline; filename="speech.{encoding.EXTENSIONS[fmt]}"'}

    async def batches(listener: StreamListener, first: Tuple[str, Any]):
        """(bytes, None) for the audio ready so far, joined into one write; finally (bytes, JobResult).

        Yields to the event loop between writes, so a client that went away is noticed (and its job cancelled)
        before the next burst of chunks, instead of after writing all of them to a dead socket.
        """
        item = first
        while True:
            parts = []
            result = None
            while True:
                kind, payload = item
                if kind == "data":
                    parts.append(payload)
                else:
                    result = payload
                    break
                try:
                    item = listener.items.get_nowait()
                except asyncio.QueueEmpty:
                    break
            yield parts, result
            if result is not None:
                return
            await asyncio.sleep(0)
            item = await listener.items.get()

    def audio_stream(job: Job, listener: StreamListener, first: Tuple[str, Any]):
        async def body():
            try:
                async for parts, result in batches(listener, first):
                    if parts:
                        yield b"".join(parts)
                    if result is not None and not result.success:
                        log.warning("request %s ended early: %s", job.id, result.message)
            finally:
                if not job.done:
                    cancel(job, "HTTP client disconnected")
        return body()

    def sse_stream(job: Job, listener: StreamListener, first: Tuple[str, Any], text: str):
        def event(obj: Dict[str, Any]) -> bytes:
            return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()

        async def body():
            try:
                async for parts, result in batches(listener, first):
                    for data in parts:  # one event per encoded chunk, however many were waiting
                        if data:
                            yield event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
                    if result is not None and result.success:
                        out_tokens = int(round(listener.encoder.duration * SPEECH_TOKENS_PER_S))
                        yield event({"type": "speech.audio.done", "usage": {
                            "input_tokens": len(text), "output_tokens": out_tokens,
                            "total_tokens": len(text) + out_tokens}})
                    elif result is not None:
                        err = result_error(core, result)
                        yield event({"type": "error", **error_body(err.message, err.type, None, err.code)})
            finally:
                if not job.done:
                    cancel(job, "HTTP client disconnected")
        return body()

    # -- OpenAI-compatible ----------------------------------------------------------------------------------------
    @app.post("/v1/audio/speech", tags=["openai"], summary="Text to speech (OpenAI-compatible)",
              response_class=Response,
              responses={200: {"content": {**AUDIO_CONTENT, "text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                               "description": "Audio bytes, streamed as they are synthesized (chunked), or "
                                              "server-sent events with stream_format=sse."},
                         **_errors(400, 401, 413, 500, 503)})
    async def speech(body: SpeechRequest, request: Request):  # type: ignore[valid-type]
        fmt = body.response_format
        job, listener = submit(body.input, body.voice, None, fmt, body.speed, streaming=True)
        first = await first_item(request, job, listener)
        headers = audio_headers(listener, job, fmt)
        if body.stream_format == "sse":
            headers.pop("Content-Disposition")
            return StreamingResponse(sse_stream(job, listener, first, body.input), media_type="text/event-stream",
                                     headers=headers)
        return StreamingResponse(audio_stream(job, listener, first), media_type=listener.encoder.content_type,
                                 headers=headers)

    @app.get("/v1/models", tags=["openai"], response_model=ModelList, responses=_errors(401))
    def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": started,
                                            "owned_by": "ros2_chatterbox"} for m in MODEL_IDS]}

    @app.get("/v1/audio/voices", tags=["voices"], response_model=VoiceList, responses=_errors(401, 503))
    def list_voices():
        lib = core.voices
        data = [{"id": v["name"], "name": v["name"], "object": "voice", "file": v["file"], "bytes": v["bytes"]}
                for v in (lib.describe() if lib is not None else [])]
        return {"object": "list", "data": data, "default_voice": str(core.config.get("default_voice", "")),
                "openai_aliases": sorted(OPENAI_VOICES),
                "can_clone": bool(core.engine is not None and core.engine.can_clone)}

    @app.post("/v1/audio/voices", tags=["voices"], status_code=201, response_model=VoiceUploaded,
              summary="Upload a reference recording (WAV, FLAC, OGG or MP3; 5-60 s of clear speech)",
              responses=_errors(400, 401, 409, 413, 503))
    def upload_voice(file: UploadFile = File(..., description="Reference recording"),
                     name: Optional[str] = Form(None, max_length=200,
                                                description="Voice name (default: from the file name)"),
                     overwrite: bool = Form(False, description="Replace a voice of the same name")):
        lib = core.voices
        if lib is None:
            raise ApiError(503, "the voice library is not loaded", "server_error", None, "engine_unavailable")
        if name:
            try:
                stem = clean_name(name)
            except VoiceError as exc:
                raise ApiError(400, str(exc), param="name", code="invalid_value") from None
        else:
            stem = sanitize_voice_name(file.filename or "")
            if not stem:
                raise ApiError(400, "give the voice a name (form field 'name')", param="name",
                               code="missing_required_parameter")
        limit = upload_limit()
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise ApiError(413, f"the upload is larger than {limit // (1 << 20)} MiB (parameter "
                                f"http.max_upload_mb)", code="request_too_large")
        try:
            duration = check_reference(data)
            if stem in lib.names() and not overwrite:
                raise ApiError(409, f"voice '{stem}' already exists; send overwrite=true or choose another name",
                               param="name", code="voice_exists")
            path = lib.add(stem, data, overwrite=overwrite)
        except VoiceError as exc:
            raise ApiError(400, str(exc), param="file", code="invalid_audio") from None
        can_clone = bool(core.engine is not None and core.engine.can_clone)
        note = "" if can_clone else (f" (engine '{core.engine_name}' cannot clone voices: it is stored for "
                                     f"Chatterbox Turbo)")
        return {"id": stem, "object": "voice", "name": stem, "file": path.name, "duration": round(duration, 3),
                "can_clone": can_clone, "message": f"voice '{stem}' saved{note}"}

    @app.delete("/v1/audio/voices/{name}", tags=["voices"], response_model=VoiceDeleted,
                responses=_errors(400, 401, 404, 409, 503))
    def delete_voice(name: str):
        lib = core.voices
        if lib is None:
            raise ApiError(503, "the voice library is not loaded", "server_error", None, "engine_unavailable")
        try:
            stem = clean_name(name)
        except VoiceError as exc:
            raise ApiError(400, str(exc), param="name", code="invalid_value") from None
        if stem not in lib.names():
            raise ApiError(404, f"unknown voice '{stem}'", param="name", code="voice_not_found")
        if stem == str(core.config.get("default_voice", "")):
            raise ApiError(409, f"voice '{stem}' is the default voice (parameter default_voice); change that "
                                f"first", param="name", code="voice_in_use")
        try:
            lib.delete(stem)
        except (VoiceError, OSError) as exc:
            raise ApiError(404, str(exc), param="name", code="voice_not_found") from None
        return {"id": stem, "object": "voice.deleted", "deleted": True}

    # -- custom ---------------------------------------------------------------------------------------------------
    @app.post("/tts", tags=["custom"], summary="Text to speech with generation settings", response_class=Response,
              responses={200: {"content": AUDIO_CONTENT, "description": "The audio file (complete, or streamed "
                                                                        "with stream=true)"},
                         **_errors(400, 401, 413, 500, 503)})
    async def tts(body: TTSRequest, request: Request):  # type: ignore[valid-type]
        fmt = body.format
        overrides = {k: getattr(body, k) for k in GENERATION_KEYS if getattr(body, k) is not None}
        job, listener = submit(body.text, body.voice, overrides, fmt, body.speed, streaming=body.stream)
        first = await first_item(request, job, listener)
        headers = audio_headers(listener, job, fmt)
        headers["Content-Disposition"] = f'attachment; filename="speech.{encoding.EXTENSIONS[fmt]}"'
        if body.stream:
            return StreamingResponse(audio_stream(job, listener, first), media_type=listener.encoder.content_type,
                                     headers=headers)
        parts = []
        item = first
        try:
            while True:
                kind, payload = item
                if kind == "data":
                    parts.append(payload)
                elif kind == "done":
                    if not payload.success:
                        raise result_error(core, payload)
                    break
                item = await next_item(request, job, listener)
        finally:
            if not job.done:
                cancel(job, "HTTP request aborted")
        headers["X-Audio-Duration"] = f"{listener.encoder.duration:.3f}"
        return Response(b"".join(parts), media_type=listener.encoder.content_type, headers=headers)

    @app.get("/get_predefined_voices", tags=["custom"], response_model=List[PredefinedVoice],
             responses=_errors(401))
    def predefined_voices():
        lib = core.voices
        return [{"display_name": v["name"], "filename": v["file"]} for v in (lib.describe() if lib else [])]

    @app.get("/api/model-info", tags=["custom"], responses=_errors(401),
             summary="Engine, device, queue and counters")
    def model_info():
        info = _jsonable(core.status())
        info.update({"formats": list(encoding.FORMATS), "max_input_chars": max_input,
                     "auth_required": bool(api_key), "http_started": started})
        return info

    @app.get("/health", tags=["health"], response_model=Health,
             summary="Liveness: always 200 while the server runs; `ready` says whether speech is accepted")
    def health():
        return health_body()

    def health_body() -> Dict[str, Any]:
        q = core.queue
        ready = bool(core.loaded and q is not None and q.running)
        fallback = bool(core.fallback_reason)
        return {"status": "unavailable" if not ready else ("degraded" if fallback else "ok"), "ready": ready,
                "engine": core.engine_name, "using_fallback": fallback,
                "queue_depth": q.depth if q is not None else 0,
                "queue_max": q.max_size if q is not None else int(core.config.get("queue.max_size", 0)),
                "speaking": q is not None and q.current is not None,
                "lifecycle_state": getattr(core, "lifecycle_state", "standalone"),
                "device": str(core.engine.info().get("device", "")) if core.engine is not None else "",
                "last_error": core.last_error, "last_latency_s": core.last_latency_s,
                "last_first_audio_s": core.last_first_audio_s}

    @app.get("/health/live", tags=["health"], response_model=Health, include_in_schema=False)
    def health_live():
        return health_body()

    @app.get("/health/ready", tags=["health"], response_model=Health,
             summary="Readiness: 200 when speech requests are accepted, 503 otherwise",
             responses={503: {"model": Health, "description": "Not ready (engine not loaded)"}})
    def health_ready():
        body = health_body()
        if not body["ready"]:
            return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
        return body

    # -- web page -------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        path = STATIC_FILES.get(name)
        if path is None:
            raise ApiError(404, f"no such file: {name}", code="not_found")
        return FileResponse(WEB_DIR / path[0], media_type=path[1], headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    def openapi() -> Dict[str, Any]:
        """FastAPI's schema with our error shape: 400 replaces its 422, and the bearer scheme is declared."""
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        for path, ops in schema.get("paths", {}).items():
            for op in ops.values():
                responses = op.get("responses", {})
                responses.pop("422", None)
                if api_key and path not in PUBLIC_PATHS:
                    op["security"] = [{"bearer": []}]
                    responses.setdefault("401", {"description": "Missing or wrong API key", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
        schemas = components.get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        if api_key:
            components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


STATIC_FILES = {"app.js": ("app.js", "text/javascript"), "style.css": ("style.css", "text/css")}
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")


def sanitize_voice_name(filename: str) -> str:
    """A safe voice name from an uploaded file's name ('My voice (2).wav' -> 'My_voice_2'); '' when none."""
    stem = Path(filename.replace("\\", "/")).name
    for suffix in (".wav", ".flac", ".mp3", ".ogg"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = _UNSAFE.sub("_", stem).strip("_-")[:64]
    return stem
