"""Request and response models of the HTTP API; the request limits follow the parameters, so /openapi.json tells
the truth."""
# No `from __future__ import annotations`: FastAPI must resolve the request models built in request_models().
from dataclasses import fields as dataclass_fields
from typing import Any, Dict, List, Literal, Optional, Tuple, Type, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, create_model

from .. import encoding
from ..settings import GenerationSettings, setting_for

OPENAI_MAX_INSTRUCTIONS = 4096
# /tts takes every generation setting as an optional field, built from the settings table: a new sampling option
# (a row in settings.py and a GenerationSettings field) appears here, with its range and description, by itself
GENERATION_KEYS = tuple(f.name for f in dataclass_fields(GenerationSettings))
_STRICT = {bool: StrictBool, int: StrictInt, float: StrictFloat, str: StrictStr}
MAX_LANGUAGE_CHARS = 35  # the longest BCP 47 tag worth reading ("zh-Hant-TW" and longer); the core checks the code
LANGUAGE_DESCRIPTION = ("Language to speak: an ISO 639-1 code (en, fr, ...; 'fr-FR' means fr). Default: parameter "
                        "language, else the model's default. GET /v1/audio/languages lists what the model speaks; "
                        "another code is refused (400) with that list.")
Format = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceId(BaseModel):
    """OpenAI's custom-voice form: {"id": "<voice name>"}."""
    id: str = Field(..., max_length=200, description="A voice name from GET /v1/audio/voices")


VoiceOrName = Union[str, VoiceId]


def _gen_field(name: str) -> Tuple[Any, Any]:
    s = setting_for(GenerationSettings.GROUP, name)
    extra: Dict[str, Any] = {}
    if s.min is not None:
        extra["ge"] = s.min
    if s.max is not None:
        extra["le"] = s.max
    if isinstance(s.default, str):
        extra["max_length"] = MAX_LANGUAGE_CHARS if name == "language" else 200
    description = LANGUAGE_DESCRIPTION if name == "language" else \
        f"{s.description} Default: parameter {s.name} ({s.default})."
    return (Optional[_STRICT[type(s.default)]], Field(None, description=description, **extra))


def request_models(max_input: int) -> Tuple[Type[BaseModel], Type[BaseModel]]:
    """(SpeechRequest, TTSRequest) whose text limit is `max_input` characters (parameter http.max_input_chars)."""

    class SpeechRequest(BaseModel):
        model_config = ConfigDict(extra="ignore")  # unknown fields are ignored, as OpenAI does
        model: str = Field("chatterbox-turbo", max_length=200,
                           description="Any model id; every id uses this node's engine.")
        input: str = Field(..., min_length=1, max_length=max_input, description="Text to speak.")
        voice: VoiceOrName = Field(
            "", description="A voice name (with or without .wav), {\"id\": name}, or an OpenAI voice name "
                            "(alloy, ash, ...), which means the default voice.")
        instructions: Optional[str] = Field(None, max_length=OPENAI_MAX_INSTRUCTIONS,
                                            description="Accepted for compatibility; ignored.")
        response_format: Format = Field("mp3", description="mp3, opus (Ogg), aac (ADTS), flac, wav, or pcm "
                                                           "(raw 16-bit LE mono at X-Sample-Rate).")
        speed: StrictFloat = Field(1.0, ge=encoding.MIN_SPEED, le=encoding.MAX_SPEED,
                                   description="Tempo 0.25-4.0 (pitch unchanged).")
        language: Optional[str] = Field(None, max_length=MAX_LANGUAGE_CHARS, description=LANGUAGE_DESCRIPTION +
                                        " Not an OpenAI field: the openai SDK sends it with "
                                        "extra_body={\"language\": \"fr\"}.")
        stream_format: Literal["audio", "sse"] = Field(
            "audio", description="audio: the file's bytes stream as they are synthesized (naming it makes wav "
                                 "stream too, with open-ended header sizes; without it wav is one complete file); "
                                 "sse: server-sent events speech.audio.delta (base64 audio) then "
                                 "speech.audio.done.")

    fields = {
        "text": (str, Field(..., min_length=1, max_length=max_input, description="Text to speak.")),
        "voice": (VoiceOrName, Field("", description="Voice name; '' = the default voice.")),
        "format": (Format, Field("wav", description="Audio format of the answer.")),
        "speed": (StrictFloat, Field(1.0, ge=encoding.MIN_SPEED, le=encoding.MAX_SPEED,
                                     description="Tempo 0.25-4.0 (pitch unchanged).")),
        **{name: _gen_field(name) for name in GENERATION_KEYS},
        "stream": (StrictBool, Field(False, description="Stream the bytes as they are synthesized (chunked) instead "
                                                        "of answering with the complete file.")),
    }
    TTSRequest = create_model("TTSRequest", __config__=ConfigDict(extra="forbid"), **fields)
    return SpeechRequest, TTSRequest


def voice_value(voice: Any) -> Any:
    """A request's voice as the core takes it (a name, or OpenAI's {"id": name})."""
    return {"id": voice.id} if isinstance(voice, VoiceId) else voice


# -- responses (documented in /openapi.json) ----------------------------------------------------------------------
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
    language: str = Field("", description="Spoken when a request with this voice names no language ('' = none: "
                                          "the `language` parameter's, else the model's default)")


class VoiceList(BaseModel):
    object: str = "list"
    data: List[VoiceCard]
    default_voice: str
    openai_aliases: List[str]
    can_clone: bool


class LanguageCard(BaseModel):
    id: str = Field(..., description="ISO 639-1 code, the `language` of speech requests")
    name: str = Field(..., description="The language's English name")
    object: str = "language"


class LanguageList(BaseModel):
    object: str = "list"
    data: List[LanguageCard]
    default_language: str = Field(..., description="Spoken when a request names no language")
    model: str = Field(..., description="The model serving (chatterbox-turbo, chatterbox-nano, piper)")


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
    language: str = Field("", description="The voice's language ('' = none)")


class VoiceDeleted(BaseModel):
    id: str
    object: str = "voice.deleted"
    deleted: bool


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    ready: bool = Field(..., description="The configured engine (not the fallback) serves requests.")
    accepting: bool = Field(..., description="Speech requests are accepted (also on the fallback engine).")
    engine: str
    using_fallback: bool
    queue_depth: int
    queue_max: int
    speaking: bool
    device: str = ""
    model: str = Field("", description="The Chatterbox model serving (chatterbox-turbo or chatterbox-nano).")
    fast_path_warning: str = Field("", description="Why the engine runs without its fast path ('' = fast).")
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
