"""What handlers receive through FastAPI's dependency injection: the speech core and the current HTTP settings."""
from fastapi import Request

from ..core import SpeechCore
from ..settings import HttpSettings


def get_core(request: Request) -> SpeechCore:
    return request.app.state.core


def get_settings(request: Request) -> HttpSettings:
    """The HTTP settings now (run-time parameter changes apply to the next request)."""
    return request.app.state.settings()
