"""OpenAI-compatible speech: POST /v1/audio/speech (bytes as they are synthesized, one complete file for wav and
flac, or server-sent events) and GET /v1/models."""
from typing import Any, Dict, Type

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from ...core import RequestError, SpeechCore
from ...settings import HttpSettings
from .. import streaming
from ..deps import get_core, get_settings
from ..errors import documented, request_error
from ..schemas import AUDIO_CONTENT, SSE_EVENT_SCHEMA, LanguageList, ModelList

MODEL_IDS = ("chatterbox", "chatterbox-turbo", "chatterbox-nano", "tts-1", "tts-1-hd",
             "gpt-4o-mini-tts")  # all accepted, all the same engine (parameter `model` chooses turbo or nano)

SPEECH_DESCRIPTION = (
    "mp3, opus, aac and pcm stream (chunked) as sentences are synthesized; flac comes as one complete file. "
    "**wav** comes as one complete file with `Content-Length` and exact header sizes (what Python's `wave`, "
    "libsndfile and editors expect), unless the request names `stream_format`. With `\"stream_format\": "
    "\"audio\"` WAV streams too: its length is unknown when the header is sent, so the header's RIFF/data sizes "
    "are open-ended (0xFFFFFFFF); FFmpeg, libsndfile and browsers play it, but tools that trust the header "
    "(Python's `wave`) report a wrong duration. "
    "To play while it is synthesized ask for `pcm` (raw S16LE mono at `X-Sample-Rate`); to save a file ask for "
    "`wav` without `stream_format` (or use `POST /tts`). `\"stream_format\": \"sse\"` sends server-sent events "
    "(base64 audio of `response_format`).")


def streams(fmt: str, fields_set) -> bool:
    """Whether the answer streams: flac never (its encoder writes it whole), wav (whose header holds its sizes)
    only when the client asked for a stream by naming `stream_format`, every other format always."""
    return fmt != "flac" and (fmt != "wav" or "stream_format" in fields_set)


def router(SpeechRequest: Type[BaseModel], started: int) -> APIRouter:
    """The routes, with the request model whose limits follow the parameters."""
    api = APIRouter(tags=["openai"])

    @api.post("/v1/audio/speech", summary="Text to speech (OpenAI-compatible)", description=SPEECH_DESCRIPTION,
              response_class=Response,
              responses={200: {"content": {**AUDIO_CONTENT, "text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                               "description": "Audio bytes, streamed as they are synthesized (chunked); flac, and "
                                              "wav unless stream_format is given, as one complete file; "
                                              "server-sent events with stream_format=sse."},
                         **documented(400, 401, 413, 500, 503)})
    async def speech(body: SpeechRequest, request: Request,  # type: ignore[valid-type]
                     core: SpeechCore = Depends(get_core), settings: HttpSettings = Depends(get_settings)):
        fmt = body.response_format
        streamed = streams(fmt, body.model_fields_set)
        overrides = {"language": body.language} if body.language is not None else None
        job, listener = await streaming.start_job(core, settings, body.input, body.voice, overrides, fmt, body.speed,
                                                  streaming=streamed)
        first = await streaming.first_item(core, request, job, listener)
        headers = streaming.audio_headers(listener, job, fmt)
        if body.stream_format == "sse":
            headers.pop("Content-Disposition")
            return StreamingResponse(streaming.sse_stream(core, job, listener, first, body.input),
                                     media_type="text/event-stream", headers=headers)
        if not streamed:
            return await streaming.file_response(core, request, job, listener, first, headers)
        return StreamingResponse(streaming.audio_stream(core, job, listener, first),
                                 media_type=listener.encoder.content_type, headers=headers)

    @api.get("/v1/models", response_model=ModelList, responses=documented(401))
    def models() -> Dict[str, Any]:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": started,
                                            "owned_by": "ros2_chatterbox"} for m in MODEL_IDS]}

    @api.get("/v1/audio/languages", response_model=LanguageList, responses=documented(401, 503),
             summary="The languages the loaded model speaks (the `language` of speech requests)")
    def languages(core: SpeechCore = Depends(get_core)) -> Dict[str, Any]:
        try:
            found = core.list_languages()
        except RequestError as exc:
            raise request_error(core, exc) from None
        return {"object": "list", "data": [{"id": lang.code, "name": lang.name, "object": "language"}
                                           for lang in found],
                "default_language": core.default_language, "model": core.model_id}

    return api
