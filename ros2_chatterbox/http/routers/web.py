"""The web page: type text, pick a voice, play and download (static files from ros2_chatterbox/web/)."""
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..errors import ApiError

WEB_DIR = Path(__file__).resolve().parent.parent.parent / "web"
STATIC_FILES = {"app.js": ("app.js", "text/javascript"), "style.css": ("style.css", "text/css"),
                "docs.js": ("docs.js", "text/javascript")}

router = APIRouter(include_in_schema=False)


@router.get("/")
def index():
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/static/{name}")
def static(name: str):
    path = STATIC_FILES.get(name)
    if path is None:
        raise ApiError(404, f"no such file: {name}", code="not_found")
    return FileResponse(WEB_DIR / path[0], media_type=path[1], headers={"Cache-Control": "no-cache"})


@router.get("/docs")
def docs():
    """The API reference, rendered from /openapi.json by a packaged script (no CDN, no third-party script)."""
    return FileResponse(WEB_DIR / "docs.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/favicon.ico")
def favicon():
    return Response(status_code=204)
