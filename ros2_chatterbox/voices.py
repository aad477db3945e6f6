"""The voice library: reference recordings in one folder, addressed by safe names only.

A voice name is a file stem such as `alice` (`alice.wav` is accepted too). Names can never address files outside
the folder: anything but letters, digits, `_`, `-` and inner dots is refused before the filesystem is touched.
Names are unique case-insensitively (`Alice` and `alice` would be one file on macOS or Windows file systems).

Folders: added voices go to one writable folder; the package's shipped voices/ folder may sit beneath it, read-only
(`open_library`): a voice added under a shipped voice's name takes precedence over it, and shipped voices are never
modified or deleted. From a checkout that keeps uploads out of the git tree.

A voice may carry a language (the code requests speak in when they name none): a sidecar `<name>.json` next to
`<name>.wav` holding {"language": "fr"}. It follows its recording: written or removed when the voice is added or
overwritten, deleted with it; a sidecar without a recording is not a voice, and one that cannot be read (not JSON,
not a code, a symlink, too large) is ignored with a warning: the voice is listed without a language.

Uploads are untrusted: their length is read from the header and refused before decoding, decoding stops after
MAX_REFERENCE_S whatever the header says (a 1 MB FLAC of silence can hold hours), few decode at once, and the
temporary file is created exclusively under a random name, never through a symlink planted in the folder.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from .engine import VoiceError
from .paths import default_voices_dir, shipped_voices_dir

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")
MAX_NAME = 64
MIN_REFERENCE_S = 5.0   # Chatterbox asserts a prompt longer than 5 s
MAX_REFERENCE_S = 60.0
SILENCE_DBFS = -50.0
MAX_SAMPLE_RATE = 192000
MAX_CHANNELS = 16
SIDECAR_SUFFIX = ".json"
MAX_SIDECAR_BYTES = 4096
_LANGUAGE = re.compile(r"^[a-z]{2,3}$")  # what a sidecar may hold: a code as the core normalizes it ("fr")
DECODE_BLOCK = 1 << 16    # frames decoded at a time; only the mono mix is kept
MAX_CONCURRENT_DECODES = 2
_decoding = threading.BoundedSemaphore(MAX_CONCURRENT_DECODES)
log = logging.getLogger(__name__)

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


def load_reference(data: bytes) -> Tuple[np.ndarray, int]:
    """Decode a reference recording to mono float32 with bounded memory and check that it can condition a voice.

    The header's length is checked before decoding; decoding stops past MAX_REFERENCE_S whatever the header says,
    and at most MAX_CONCURRENT_DECODES recordings decode at once (others wait). Returns (mono, sample_rate).
    """
    import soundfile as sf
    with _decoding:
        try:
            f = sf.SoundFile(io.BytesIO(data))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "not usable audio"
            raise VoiceError(f"not a readable audio file ({type(exc).__name__}); upload WAV, FLAC or OGG") from exc
        with f:
            sr, channels = int(f.samplerate), int(f.channels)
            if not 0 < sr <= MAX_SAMPLE_RATE or not 0 < channels <= MAX_CHANNELS:
                raise VoiceError(f"unsupported audio: {sr} Hz, {channels} channels (at most {MAX_SAMPLE_RATE} Hz "
                                 f"and {MAX_CHANNELS} channels)")
            limit = int(MAX_REFERENCE_S * sr)
            known = 0 < f.frames < (1 << 62)  # libsndfile reports 2**63-1 when the header does not say
            if known and f.frames > limit:
                raise VoiceError(f"reference is {f.frames / sr:.0f} s long; keep it under {MAX_REFERENCE_S:.0f} s")
            parts: List[np.ndarray] = []
            got = 0
            while got <= limit:
                try:
                    block = f.read(min(DECODE_BLOCK, limit + 1 - got), dtype="float32", always_2d=True)
                except Exception as exc:  # noqa: BLE001 - a stream of unknown length ends with a failed seek
                    if known or not got:
                        raise VoiceError(f"not a readable audio file ({type(exc).__name__})") from exc
                    break
                if not len(block):
                    break
                parts.append(block.mean(axis=1))
                got += len(block)
    mono = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    dur = len(mono) / float(sr)
    if mono.size == 0:
        raise VoiceError("the audio file is empty")
    if len(mono) > limit:
        raise VoiceError(f"reference is longer than {MAX_REFERENCE_S:.0f} s; keep it under "
                         f"{MAX_REFERENCE_S:.0f} s")
    if dur <= MIN_REFERENCE_S:
        raise VoiceError(f"reference is {dur:.1f} s long; a voice needs more than {MIN_REFERENCE_S:.0f} s "
                         f"of clear speech")
    if not np.isfinite(mono).all():
        raise VoiceError("reference contains invalid samples")
    rms = float(np.sqrt(np.mean(mono.astype(np.float64) ** 2)))
    if rms <= 0 or 20 * np.log10(rms) < SILENCE_DBFS:
        raise VoiceError("reference is silent; record clear speech")
    return mono, sr


def check_reference(data: bytes) -> float:
    """Check that a reference recording can condition a voice (see load_reference); returns its duration (s)."""
    mono, sr = load_reference(data)
    return len(mono) / float(sr)


class ReadOnlyVoice(VoiceError):
    """The voice is one of the package's shipped voices: it cannot be deleted."""


class VoiceLibrary:
    """VoiceLibrary(folder, shipped=()): the voices of `folder` (where added voices are stored) and of the read-only
    `shipped` folders; a voice of `folder` shadows a shipped voice of the same name (ignoring case)."""

    def __init__(self, folder: str, shipped: Iterable[str] = ()):
        self.folder = Path(folder).resolve()
        self.shipped = tuple(p for p in (Path(s).resolve() for s in shipped) if p != self.folder)
        self._lock = threading.Lock()
        self._warned: set = set()  # sidecars already reported as unreadable (path, mtime, size): warn once each

    def _files(self) -> Dict[str, Path]:
        found: Dict[str, Path] = {}
        for folder in (self.folder, *self.shipped):
            shadowed = {n.casefold() for n in found}  # names of the folders before this one
            if not folder.is_dir():
                continue
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file() and not p.is_symlink():
                    try:
                        name = clean_name(p.name)
                    except VoiceError:
                        continue  # a file whose name we would refuse is not a voice
                    if name.casefold() not in shadowed:
                        found.setdefault(name, p)
        return found

    def names(self) -> List[str]:
        return sorted(self._files())

    def find(self, name: str) -> Optional[str]:
        """The existing voice whose name equals `name` ignoring case, or None."""
        folded = clean_name(name).casefold()
        return next((n for n in self._files() if n.casefold() == folded), None)

    def path(self, name: str) -> Path:
        """The recording of a voice, or VoiceError naming the voices that exist."""
        stem = clean_name(name)
        p = self._files().get(stem)
        if p is None:
            have = ", ".join(self.names()) or "none"
            raise VoiceError(f"unknown voice '{stem}' (available: {have})")
        real = p.resolve()
        if real.parent not in (self.folder, *self.shipped):
            raise VoiceError(f"voice '{stem}' is outside the voices folder")
        return real

    def add(self, name: str, data: bytes, overwrite: bool = False, language: str = "") -> Path:
        """Store a validated upload as <name>.wav (re-encoded, so the file is always plain WAV), with `language`
        ('' = none; a normalized code such as "fr", else VoiceError) in the sidecar <name>.json.

        A voice whose name differs only in case is the same voice: refused, or replaced with overwrite=True, its
        language with it (overwriting without a language leaves the voice without one). A shipped voice is not
        replaced but shadowed: the new files go to the writable folder.
        """
        import soundfile as sf
        stem = clean_name(name)
        if not isinstance(language, str) or (language and not _LANGUAGE.match(language)):
            raise VoiceError(f"invalid voice language {str(language)[:40]!r}: an ISO 639-1 code such as 'fr'")
        mono, sr = load_reference(data)
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            files = self._files()
            existing = next((p for n, p in files.items() if n.casefold() == stem.casefold()), None)
            if existing is not None and not overwrite:
                raise VoiceError(f"voice '{clean_name(existing.name)}' already exists; delete it first or choose "
                                 f"another name")
            target = self.folder / f"{stem}.wav"
            sidecar = self._sidecar(target)
            if sidecar.is_dir() and not sidecar.is_symlink():
                raise VoiceError(f"'{sidecar.name}' in the voices folder is a folder, where voice '{stem}' keeps its "
                                 f"language: remove or rename it")
            tmp = self._write_temp(lambda f: sf.write(f, mono, sr, format="WAV", subtype="PCM_16"))
            side_tmp: Optional[Path] = None
            try:
                if language:
                    body = json.dumps({"language": language}).encode()
                    side_tmp = self._write_temp(lambda f: f.write(body))
                if existing is not None and existing.parent == self.folder and existing.name != target.name:
                    existing.unlink(missing_ok=True)  # first: on a case-insensitive disk it is the target
                    self._sidecar(existing).unlink(missing_ok=True)
                # the old language goes before the new recording lands: never a new voice with a stale language
                sidecar.unlink(missing_ok=True)
                os.replace(tmp, target)  # replaces a planted symlink itself, never its target
                if side_tmp is not None:
                    os.replace(side_tmp, sidecar)
            except BaseException:
                tmp.unlink(missing_ok=True)
                if side_tmp is not None:
                    side_tmp.unlink(missing_ok=True)
                raise
        return target

    @staticmethod
    def _sidecar(recording: Path) -> Path:
        """Where a recording's language is kept: <name>.json beside it (also for alice.FLAC or v1.2.wav)."""
        return recording.with_name(clean_name(recording.name) + SIDECAR_SUFFIX)

    def language(self, name: str) -> str:
        """The language of a voice ('' = none, also for an unreadable sidecar, with a warning); VoiceError when
        the voice does not exist."""
        return self._read_language(self.path(name))

    def _read_language(self, recording: Path) -> str:
        sidecar = self._sidecar(recording)
        try:
            st = os.lstat(sidecar)
        except OSError:
            return ""  # no sidecar: no language
        key = (str(sidecar), st.st_mtime_ns, st.st_size)
        try:
            if not os.path.isfile(sidecar) or os.path.islink(sidecar):
                raise ValueError("not a plain file")
            if st.st_size > MAX_SIDECAR_BYTES:
                raise ValueError(f"larger than {MAX_SIDECAR_BYTES} bytes")
            flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))  # a FIFO swapped in after the check must not block the listing
            with os.fdopen(os.open(sidecar, flags), "rb") as f:
                doc = json.loads(f.read(MAX_SIDECAR_BYTES + 1).decode("utf-8"))
            language = doc.get("language", "") if isinstance(doc, dict) else None
            if not isinstance(language, str) or (language and not _LANGUAGE.match(language)):
                raise ValueError(f"'language' must be a code such as \"fr\", not {language!r:.40}")
            return language
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if key not in self._warned:
                self._warned.add(key)
                log.warning(f"voice '{clean_name(recording.name)}': ignoring its language file {sidecar.name} "
                            f"({type(exc).__name__}: {exc}); the voice has no language")
            return ""

    def _write_temp(self, write) -> Path:
        """A new file in the folder, created exclusively under a random name without following symlinks."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        tmp = self.folder / f".upload-{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # readable like the other voices; set on the open file, not a path
                write(f)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def delete(self, name: str) -> None:
        """Delete an added voice (a shipped voice it shadowed reappears); ReadOnlyVoice for a shipped voice."""
        with self._lock:
            p = self.path(name)
            if p.parent != self.folder:
                raise ReadOnlyVoice(f"voice '{clean_name(name)}' ships with the package ({p.parent}, read-only) and "
                                    f"cannot be deleted; add a voice of that name with overwrite to replace it")
            p.unlink()
            try:
                self._sidecar(p).unlink(missing_ok=True)
            except OSError as exc:  # the voice is gone; a language file left behind is not listed without it
                log.warning(f"voice '{clean_name(p.name)}' deleted, but not its language file: {exc}")

    def describe(self) -> List[Dict[str, object]]:
        """Each voice's name, file, size and language ('' = none)."""
        out = []
        for name, p in self._files().items():
            try:
                st = p.stat()
            except OSError:
                continue
            out.append({"name": name, "file": p.name, "bytes": st.st_size, "language": self._read_language(p)})
        return out


def open_library(voices_dir: str) -> VoiceLibrary:
    """The library of the parameter voices_dir: that folder alone, or for '' the user's voices folder (where added
    voices go; paths.default_voices_dir) over the package's shipped voices/ (read-only)."""
    if voices_dir:
        return VoiceLibrary(voices_dir)
    return VoiceLibrary(str(default_voices_dir()), shipped=[str(shipped_voices_dir())])


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
