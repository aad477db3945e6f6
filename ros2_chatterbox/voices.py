"""The voice library: reference recordings in one folder, addressed by safe names only.

A voice name is a file stem such as `alice` (`alice.wav` is accepted too). Names can never address files outside
the folder: anything but letters, digits, `_`, `-` and inner dots is refused before the filesystem is touched.
"""
from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .engine import VoiceError

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")
MAX_NAME = 64
MIN_REFERENCE_S = 5.0   # Chatterbox asserts a prompt longer than 5 s
MAX_REFERENCE_S = 60.0
SILENCE_DBFS = -50.0

# OpenAI's voice names: clients send them by default; they mean "the default voice" here.
OPENAI_VOICES = frozenset({"alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage",
                           "shimmer", "verse", "marin", "cedar"})


def clean_name(name: str) -> str:
    """The canonical voice name (suffix removed) or VoiceError. Does not check existence."""
    if not isinstance(name, str):
        raise VoiceError("voice must be a string")
    stem = name.strip()
    for suffix in AUDIO_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    if not stem or len(stem) > MAX_NAME or not _NAME.match(stem):
        raise VoiceError(f"invalid voice name {name[:80]!r}: use letters, digits, '_' and '-' only "
                         f"(at most {MAX_NAME} characters)")
    return stem


def check_reference(data: bytes) -> float:
    """Decode a reference recording and check it can condition a voice; returns its duration in seconds."""
    import soundfile as sf
    try:
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "not usable audio"
        raise VoiceError(f"not a readable audio file ({type(exc).__name__}); upload WAV, FLAC or OGG") from exc
    if sr <= 0 or audio.size == 0:
        raise VoiceError("the audio file is empty")
    mono = audio.mean(axis=1)
    dur = len(mono) / float(sr)
    if dur <= MIN_REFERENCE_S:
        raise VoiceError(f"reference is {dur:.1f} s long; a voice needs more than {MIN_REFERENCE_S:.0f} s "
                         f"of clear speech")
    if dur > MAX_REFERENCE_S:
        raise VoiceError(f"reference is {dur:.0f} s long; keep it under {MAX_REFERENCE_S:.0f} s")
    if not np.isfinite(mono).all():
        raise VoiceError("reference contains invalid samples")
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2)))
    if rms <= 0 or 20 * np.log10(rms) < SILENCE_DBFS:
        raise VoiceError("reference is silent; record clear speech")
    return dur


class VoiceLibrary:
    def __init__(self, folder: str):
        self.folder = Path(folder).resolve()
        self._lock = threading.Lock()

    def _files(self) -> Dict[str, Path]:
        found: Dict[str, Path] = {}
        if not self.folder.is_dir():
            return found
        for p in sorted(self.folder.iterdir()):
            if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not p.is_symlink():
                try:
                    found.setdefault(clean_name(p.name), p)
                except VoiceError:
                    continue  # a file whose name we would refuse is not a voice
        return found

    def names(self) -> List[str]:
        return sorted(self._files())

    def path(self, name: str) -> Path:
        """The recording of a voice, or VoiceError naming the voices that exist."""
        stem = clean_name(name)
        p = self._files().get(stem)
        if p is None:
            have = ", ".join(self.names()) or "none"
            raise VoiceError(f"unknown voice '{stem}' (available: {have})")
        real = p.resolve()
        if real.parent != self.folder:
            raise VoiceError(f"voice '{stem}' is outside the voices folder")
        return real

    def add(self, name: str, data: bytes, overwrite: bool = False) -> Path:
        """Store a validated upload as <name>.wav (re-encoded, so the file is always plain WAV)."""
        import soundfile as sf
        stem = clean_name(name)
        check_reference(data)
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            existing = self._files().get(stem)
            if existing is not None and not overwrite:
                raise VoiceError(f"voice '{stem}' already exists; delete it first or choose another name")
            target = self.folder / f"{stem}.wav"
            tmp = self.folder / f".{stem}.upload.wav"
            sf.write(str(tmp), audio.mean(axis=1), sr, subtype="PCM_16")
            os.replace(tmp, target)
            if existing is not None and existing != target:
                existing.unlink(missing_ok=True)
        return target

    def delete(self, name: str) -> None:
        with self._lock:
            self.path(name).unlink()

    def describe(self) -> List[Dict[str, object]]:
        out = []
        for name, p in self._files().items():
            try:
                st = p.stat()
                out.append({"name": name, "file": p.name, "bytes": st.st_size})
            except OSError:
                continue
        return out


def resolve_request_voice(library: Optional[VoiceLibrary], voice: object, default_voice: str) -> Optional[str]:
    """Map a request's voice to a library voice name, or None for the engine's built-in voice.

    '' and OpenAI names mean the default voice; {"id": name} is OpenAI's custom-voice form.
    """
    if isinstance(voice, dict):
        voice = voice.get("id", "")
    if voice is None:
        voice = ""
    if not isinstance(voice, str):
        raise VoiceError("voice must be a string or {\"id\": name}")
    name = voice.strip()
    if not name or name.lower() in OPENAI_VOICES or name.lower() == "default":
        name = default_voice
    if not name:
        return None
    stem = clean_name(name)
    if library is None:
        raise VoiceError(f"unknown voice '{stem}' (no voices folder)")
    library.path(stem)  # raises when missing
    return stem
