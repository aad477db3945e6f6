"""Custom endpoints: POST /tts with the generation settings, GET /api/model-info."""
import math
from typing import Any, Dict, Type

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel

from ... import encoding
from ...core import SpeechCore
from ...settings import HttpSettings
from .. import streaming
from ..deps import get_core, get_settings
from ..errors import documented
from ..schemas import AUDIO_CONTENT, GENERATION_KEYS


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


def router(TTSRequest: Type[BaseModel], max_input: int, started: int) -> APIRouter:
    api = APIRouter(tags=["custom"])

    @api.post("/tts", summary="Text to speech with generation settings", response_class=Response,
              responses={200: {"content": AUDIO_CONTENT, "description": "The audio file (complete, or streamed "
                                                                        "with stream=true)"},
                         **documented(400, 401, 413, 500, 503)})
    async def tts(body: TTSRequest, request: Request,  # type: ignore[valid-type]
                  core: SpeechCore = Depends(get_core), settings: HttpSettings = Depends(get_settings)):
        fmt = body.format
        overrides = {k: getattr(body, k) for k in GENERATION_KEYS if getattr(body, k) is not None}
        job, listener = await streaming.start_job(core, settings, body.text, body.voice, overrides, fmt, body.speed,
                                                  streaming=body.stream)
        first = await streaming.first_item(core, request, job, listener)
        headers = streaming.audio_headers(listener, job, fmt)
        headers["Content-Disposition"] = f'attachment; filename="speech.{encoding.EXTENSIONS[fmt]}"'
        if body.stream:
            return StreamingResponse(streaming.audio_stream(core, job, listener, first),
                                     media_type=listener.encoder.content_type, headers=headers)
        return await streaming.file_response(core, request, job, listener, first, headers)

    @api.get("/api/model-info", responses=documented(401), summary="Engine, device, queue and counters")
    def model_info(core: SpeechCore = Depends(get_core),
                   settings: HttpSettings = Depends(get_settings)) -> Dict[str, Any]:
        info = _jsonable(core.status().as_dict())
        info.update({"formats": list(encoding.FORMATS), "max_input_chars": max_input,
                     "auth_required": bool(settings.api_key), "http_started": started})
        return info

    return api
