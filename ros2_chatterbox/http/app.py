"""create_app(core, settings): the FastAPI app over a loaded SpeechCore, assembled from the routers.

Requests become jobs in the core's one queue, next to the ROS requests. Handlers reach the core and the HTTP
settings through dependencies (deps.py); blocking work runs in plain `def` handlers or the thread pool.
"""
import time
from typing import Any, Callable, Dict, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .. import __version__
from ..core import SpeechCore
from ..settings import HttpSettings
from . import security
from .access import AccessMiddleware, is_public
from .errors import install_error_handlers
from .routers import custom, health, openai, voices, web
from .schemas import request_models

SettingsSource = Union[HttpSettings, Callable[[], HttpSettings]]


def create_app(core: SpeechCore, settings: SettingsSource) -> FastAPI:
    """`settings`: the HTTP settings, or a callable returning the current ones (the node's run-time parameters).
    The API key and the text limit are read once, here."""
    current: Callable[[], HttpSettings] = settings if callable(settings) else (lambda: settings)
    first = current()
    started = int(time.time())
    SpeechRequest, TTSRequest = request_models(first.max_input_chars)
    app = FastAPI(
        title="ros2_chatterbox",
        version=__version__,
        description="Speech from the robot's TTS node: an OpenAI-compatible `POST /v1/audio/speech`, a custom "
                    "`POST /tts` with the generation settings, voice management, and a web page at `/`. Requests "
                    "share one queue with the ROS requests.",
        redoc_url=None,
        docs_url=None,  # /docs is the packaged page (routers/web.py): Swagger UI would load a CDN script here
    )
    app.state.core = core
    app.state.settings = current
    install_error_handlers(app)
    _install_middleware(app, first.api_key, current)
    app.include_router(openai.router(SpeechRequest, started))
    app.include_router(voices.router)
    app.include_router(custom.router(TTSRequest, first.max_input_chars, started))
    app.include_router(health.router)
    app.include_router(web.router)
    app.openapi = lambda: _openapi(app, bool(first.api_key))  # type: ignore[method-assign]
    return app


def _install_middleware(app: FastAPI, api_key: str, current: Callable[[], HttpSettings]) -> None:
    """Every middleware, in one place. Starlette runs the one added last first: security (Host, Origin) before
    access (API key, body limits)."""
    app.add_middleware(AccessMiddleware, api_key=api_key,
                       upload_limit=lambda: voices.upload_limit(current()))
    security.install(app, current)


def _openapi(app: FastAPI, auth: bool) -> Dict[str, Any]:
    """FastAPI's schema with our error shape: 400 replaces its 422, and the bearer scheme is declared."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.get("responses", {})
            responses.pop("422", None)
            if auth and not is_public(path):
                op["security"] = [{"bearer": []}]
                responses.setdefault("401", {"description": "Missing or wrong API key", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
    security.document_responses(schema)
    schemas = components.get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if auth:
        components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    app.openapi_schema = schema
    return schema
