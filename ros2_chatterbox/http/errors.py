"""Errors as OpenAI shapes them: `{"error": {"message", "type", "param", "code"}}`, never a traceback.

400 for the caller's mistakes (FastAPI's own validation errors and bad JSON included), 401 for a missing or wrong
API key, 404/405/409/413 as usual, 503 with `Retry-After` when the queue is full or the engine is not loaded, 500
when synthesis fails.
"""
import json
import logging
import math
from typing import Any, Dict, List, Optional, Tuple, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core import EMPTY_TEXT, VOICE_EXISTS, VOICE_IN_USE, VOICE_NOT_FOUND, RequestError, SpeechCore
from ..speech_queue import CANCELLED, ENGINE_ERROR, INVALID, QUEUE_FULL, UNAVAILABLE, JobResult

log = logging.getLogger(__name__)

RESULT_STATUS = {INVALID: 400, QUEUE_FULL: 503, UNAVAILABLE: 503, CANCELLED: 503, ENGINE_ERROR: 500}
_STATUS_TYPES = {401: ("authentication_error", "invalid_api_key"), 404: ("invalid_request_error", "not_found"),
                 405: ("invalid_request_error", "method_not_allowed"),
                 413: ("invalid_request_error", "request_too_large")}


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


def documented(*statuses: int) -> Dict[Union[int, str], Dict[str, Any]]:
    """The `responses=` of a route: each status with the error model, for /openapi.json."""
    text = {400: "Invalid request (validation error, bad JSON, unknown voice, ...)", 401: "Missing or wrong API key",
            404: "Not found", 409: "Conflict", 413: "Body too large", 500: "Synthesis failed",
            503: "Queue full (see Retry-After) or engine not loaded"}
    return {s: {"model": ErrorResponse, "description": text.get(s, "Error")} for s in statuses}


def retry_after(core: SpeechCore) -> str:
    """Seconds until a queue slot is likely free: one utterance's latency, bounded to something sensible."""
    latency = core.last_latency_s or 2.0
    return str(int(min(60, max(1, math.ceil(latency)))))


_REQUEST_STATUS = {VOICE_EXISTS: 409, VOICE_IN_USE: 409, VOICE_NOT_FOUND: 404}


def request_error(core: SpeechCore, exc: RequestError, invalid_code: str = "invalid_value") -> ApiError:
    """A core RequestError as the HTTP answer."""
    if exc.kind == QUEUE_FULL:
        return ApiError(503, exc.message, "server_error", None, "queue_full", {"Retry-After": retry_after(core)})
    if exc.kind == UNAVAILABLE:
        return ApiError(503, exc.message, "server_error", None, "engine_unavailable", {"Retry-After": "5"})
    if exc.kind in _REQUEST_STATUS:
        return ApiError(_REQUEST_STATUS[exc.kind], exc.message, "invalid_request_error", exc.param, exc.kind)
    return ApiError(400, exc.message, "invalid_request_error", exc.param, invalid_code)


def result_error(core: SpeechCore, result: JobResult) -> ApiError:
    status = RESULT_STATUS.get(result.kind, 500)
    headers = {"Retry-After": retry_after(core)} if status == 503 and result.kind != CANCELLED else None
    type_ = "invalid_request_error" if status < 500 else "server_error"
    return ApiError(status, result.message, type_, None, result.kind, headers)


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
    if first.get("type") == "string_too_short" and param in ("input", "text"):
        return EMPTY_TEXT, param, "invalid_value"  # the words the core uses for text of only spaces
    text = f"{'.'.join(loc)}: {msg}" if loc else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return text, param, "invalid_value"


def install_error_handlers(app: FastAPI) -> None:
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
