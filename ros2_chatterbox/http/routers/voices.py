"""Voice management: list, upload and delete reference recordings (the core validates, as for ROS)."""
from typing import Any, Dict, List, Optional

from fastapi import APIRouter, Depends, File, Form, UploadFile

from ...core import OPENAI_VOICES, RequestError, SpeechCore
from ...settings import HttpSettings
from ...speech_queue import INVALID
from ..deps import get_core, get_settings
from ..errors import ApiError, documented, request_error
from ..schemas import PredefinedVoice, VoiceDeleted, VoiceList, VoiceUploaded

router = APIRouter(tags=["voices"])


def upload_limit(settings: HttpSettings) -> int:
    return int(settings.max_upload_mb * (1 << 20))


def _voice_error(core: SpeechCore, exc: RequestError) -> ApiError:
    return request_error(core, exc, "invalid_audio" if exc.param == "file" else "invalid_value")


@router.get("/v1/audio/voices", response_model=VoiceList, responses=documented(401, 503))
def list_voices(core: SpeechCore = Depends(get_core)) -> Dict[str, Any]:
    try:
        voices = core.list_voices()
    except RequestError as exc:
        raise _voice_error(core, exc) from None
    return {"object": "list", "default_voice": core.default_voice, "openai_aliases": sorted(OPENAI_VOICES),
            "can_clone": core.can_clone,
            "data": [{"id": v.name, "name": v.name, "object": "voice", "file": v.file, "bytes": v.bytes,
                      "language": v.language} for v in voices]}


@router.post("/v1/audio/voices", status_code=201, response_model=VoiceUploaded,
             summary="Upload a reference recording (WAV, FLAC, OGG or MP3; 5-60 s of clear speech)",
             responses=documented(400, 401, 409, 413, 503))
def upload_voice(file: UploadFile = File(..., description="Reference recording"),
                 name: Optional[str] = Form(None, max_length=200,
                                            description="Voice name (default: from the file name)"),
                 overwrite: bool = Form(False, description="Replace a voice of the same name"),
                 language: Optional[str] = Form(None, max_length=35,
                                                description="ISO 639-1 code (fr) the voice speaks when a request "
                                                            "names no language; default: none"),
                 core: SpeechCore = Depends(get_core),
                 settings: HttpSettings = Depends(get_settings)) -> Dict[str, Any]:
    limit = upload_limit(settings)
    data = file.file.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"the upload is larger than {limit // (1 << 20)} MiB (parameter "
                            f"http.max_upload_mb)", code="request_too_large")
    try:
        added = core.add_voice(name or "", data, overwrite, filename=file.filename or "", language=language or "")
    except RequestError as exc:
        if exc.kind == INVALID and exc.param == "name" and not name:  # no name, and none in the file's name
            raise ApiError(400, "give the voice a name (form field 'name')", param="name",
                           code="missing_required_parameter") from None
        raise _voice_error(core, exc) from None
    return {"id": added.name, "object": "voice", "name": added.name, "file": added.file,
            "duration": added.duration, "can_clone": added.can_clone, "message": added.message,
            "language": added.language}


@router.delete("/v1/audio/voices/{name}", response_model=VoiceDeleted, responses=documented(400, 401, 404, 409, 503))
def delete_voice(name: str, core: SpeechCore = Depends(get_core)) -> Dict[str, Any]:
    try:
        stem = core.delete_voice(name)
    except RequestError as exc:
        raise _voice_error(core, exc) from None
    return {"id": stem, "object": "voice.deleted", "deleted": True}


@router.get("/get_predefined_voices", tags=["custom"], response_model=List[PredefinedVoice],
            responses=documented(401))
def predefined_voices(core: SpeechCore = Depends(get_core)) -> List[Dict[str, str]]:
    try:
        voices = core.list_voices()
    except RequestError:
        voices = []
    return [{"display_name": v.name, "filename": v.file} for v in voices]
