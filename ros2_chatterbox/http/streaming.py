"""From a job's chunks to HTTP bytes: a listener encodes on the speech worker thread and hands the bytes to the
request's event loop; the routers answer with the whole file, a byte stream, or server-sent events."""
import asyncio
import base64
import json
import logging
import threading
from typing import Any, AsyncIterator, Dict, Optional, Tuple

from fastapi import Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from .. import encoding
from ..core import RequestError, SpeechCore
from ..settings import HttpSettings
from ..speech_queue import ENGINE_ERROR, Job, JobListener, JobResult
from .errors import ApiError, error_body, request_error, result_error
from .schemas import voice_value

log = logging.getLogger(__name__)

SPEECH_TOKENS_PER_S = 25  # Chatterbox's speech-token rate: the unit of `output_tokens` in usage
DISCONNECT_POLL_S = 0.5   # how often a request waiting in the queue checks that its client is still there
Item = Tuple[str, Any]    # ("data", bytes) or ("done", JobResult)


class StreamListener(JobListener):
    """Encodes a job's chunks on the worker thread and hands the bytes to one request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, items: "asyncio.Queue[Item]", encoder: encoding.Encoder):
        self.loop = loop
        self.items = items
        self.encoder = encoder
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


def _submit(core: SpeechCore, settings: HttpSettings, loop: asyncio.AbstractEventLoop, items: "asyncio.Queue[Item]",
            text: str, voice: Any, overrides: Optional[Dict[str, Any]], fmt: str, speed: float,
            streaming: bool) -> Tuple[Job, StreamListener]:
    """Blocking part of a request (encoder set-up, validation, the voices folder): runs in the thread pool."""
    rate = core.sample_rate
    if not core.loaded or not rate:
        raise ApiError(503, "the speech engine is not loaded (node not configured/active)", "server_error",
                       None, "engine_unavailable", {"Retry-After": "5"})
    listener = StreamListener(loop, items, encoding.Encoder(fmt, rate, speed, streaming=streaming))
    try:
        job = core.submit(text, voice_value(voice), overrides, source="http", listener=listener,
                          chunk_ms=settings.chunk_ms)
    except RequestError as exc:
        listener.encoder.close()
        raise request_error(core, exc) from None
    return job, listener


async def start_job(core: SpeechCore, settings: HttpSettings, text: str, voice: Any,
                    overrides: Optional[Dict[str, Any]], fmt: str, speed: float,
                    streaming: bool) -> Tuple[Job, StreamListener]:
    items: "asyncio.Queue[Item]" = asyncio.Queue()
    return await run_in_threadpool(_submit, core, settings, asyncio.get_running_loop(), items, text, voice,
                                   overrides, fmt, speed, streaming)


def cancel(core: SpeechCore, job: Job, reason: str) -> None:
    if not job.done:
        core.cancel(job, reason)


async def next_item(core: SpeechCore, request: Request, job: Job, listener: StreamListener) -> Item:
    """The next item of a job, watching for the client going away while the job waits in the queue."""
    # One get() task across the polls: cancelling a get() on each timeout could drop an item.
    getter = asyncio.ensure_future(listener.items.get())
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if done:
                return getter.result()
            if await request.is_disconnected():
                cancel(core, job, "HTTP client disconnected")
                raise ApiError(499, "client disconnected", code="client_closed")
    finally:
        if not getter.done():
            getter.cancel()


async def first_item(core: SpeechCore, request: Request, job: Job, listener: StreamListener) -> Item:
    """Wait for the first bytes (or the end) before answering, so a failure before any audio gets a status."""
    try:
        kind, payload = await next_item(core, request, job, listener)
    except BaseException:
        cancel(core, job, "HTTP request aborted")
        raise
    if kind == "done" and not payload.success:
        raise result_error(core, payload)
    return kind, payload


def audio_headers(listener: StreamListener, job: Job, fmt: str) -> Dict[str, str]:
    return {"X-Sample-Rate": str(listener.encoder.output_rate), "X-Channels": "1",
            "X-Request-Id": str(job.id), "Cache-Control": "no-store",
            "Content-Disposition": f'inline; filename="speech.{encoding.EXTENSIONS[fmt]}"'}


async def _batches(listener: StreamListener, first: Item):
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


async def audio_stream(core: SpeechCore, job: Job, listener: StreamListener, first: Item) -> AsyncIterator[bytes]:
    try:
        async for parts, result in _batches(listener, first):
            if parts:
                yield b"".join(parts)
            if result is not None and not result.success:
                log.warning("request %s ended early: %s", job.id, result.message)
    finally:
        cancel(core, job, "HTTP client disconnected")


async def sse_stream(core: SpeechCore, job: Job, listener: StreamListener, first: Item,
                     text: str) -> AsyncIterator[bytes]:
    def event(obj: Dict[str, Any]) -> bytes:
        return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n".encode()

    try:
        async for parts, result in _batches(listener, first):
            for data in parts:  # one event per encoded chunk (http.chunk_ms of audio), however many were waiting
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
        cancel(core, job, "HTTP client disconnected")


async def whole_file(core: SpeechCore, request: Request, job: Job, listener: StreamListener, first: Item) -> bytes:
    """All the audio of a job, or the job's error as an ApiError."""
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
            item = await next_item(core, request, job, listener)
    finally:
        cancel(core, job, "HTTP request aborted")
    return b"".join(parts)


async def file_response(core: SpeechCore, request: Request, job: Job, listener: StreamListener, first: Item,
                        headers: Dict[str, str]) -> Response:
    """The complete file (exact header sizes, Content-Length), with its duration in X-Audio-Duration."""
    data = await whole_file(core, request, job, listener, first)
    return Response(data, media_type=listener.encoder.content_type,
                    headers={**headers, "X-Audio-Duration": f"{listener.encoder.duration:.3f}"})
