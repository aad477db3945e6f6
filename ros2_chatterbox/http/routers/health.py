"""Liveness (/health, /health/live: 200 while the server runs) and readiness (/health/ready: 200 only when the
configured engine serves; 503 on the fallback engine or before it is loaded). Container health checks and
start-up gating use readiness. An engine serving without its fast path is `degraded`, with `fast_path_warning`.
The body is the `Health` model of the core's typed status (core.CoreStatus)."""
from typing import Any, Dict

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ...core import SpeechCore
from ..deps import get_core
from ..schemas import Health

router = APIRouter(tags=["health"])


def health_body(core: SpeechCore) -> Dict[str, Any]:
    st = core.status()
    warning = st.engine.fast_path_warning  # the engine runs without its fast path: never silent
    status = "unavailable" if not st.accepting else ("degraded" if st.using_fallback or warning else "ok")
    return Health(status=status, ready=st.ready, accepting=st.accepting, engine=core.engine_name,
                  using_fallback=st.using_fallback, queue_depth=st.queue_depth, queue_max=st.queue_max,
                  speaking=st.speaking, device=st.engine.device, model=st.engine.model, fast_path_warning=warning,
                  last_error=st.last_error, last_latency_s=st.last_latency_s,
                  last_first_audio_s=st.last_first_audio_s).model_dump()


@router.get("/health", response_model=Health,
            summary="Liveness: always 200 while the server runs; `ready` says whether the configured engine serves")
def health(core: SpeechCore = Depends(get_core)) -> Dict[str, Any]:
    return health_body(core)


@router.get("/health/live", response_model=Health, include_in_schema=False)
def health_live(core: SpeechCore = Depends(get_core)) -> Dict[str, Any]:
    return health_body(core)


@router.get("/health/ready", response_model=Health,
            summary="Readiness: 200 when the configured engine (not the fallback) serves, 503 otherwise",
            responses={503: {"model": Health, "description": "Not ready (not loaded, or on the fallback engine)"}})
def health_ready(core: SpeechCore = Depends(get_core)):
    body = health_body(core)
    if not body["ready"]:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return body
