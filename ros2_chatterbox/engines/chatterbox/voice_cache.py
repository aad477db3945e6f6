"""Voices: a reference recording's conditioning (upstream's prepare_conditionals, validated first) and one bounded
LRU cache of them, bounded by count and by bytes, keyed by the resolved path and refreshed when the file's mtime or
size changes. The cache lock is never held during model work.
"""
from __future__ import annotations

import io
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from ...engine import VoiceError
from ...status import VoiceCacheStatus
from ...voices import MIN_REFERENCE_S, check_reference
from .s3gen_stream import SAMPLE_RATE

DEC_COND_SAMPLES = 10 * SAMPLE_RATE   # ChatterboxTurboTTS.DEC_COND_LEN
ENC_COND_SAMPLES = 15 * 16_000        # ChatterboxTurboTTS.ENC_COND_LEN (16 kHz)


def tensor_bytes(obj: Any, seen: Optional[set] = None) -> int:
    """Bytes held by the tensors inside a Conditionals / T3Cond / dict / list (each storage counted once)."""
    import torch
    seen = set() if seen is None else seen
    if torch.is_tensor(obj):
        key = (obj.device.type, obj.untyped_storage().data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(tensor_bytes(v, seen) for v in vars(obj).values())
    return 0



@dataclass
class CacheEntry:
    conds: Any
    stamp: Tuple[int, int]
    nbytes: int
    seconds: float



class VoiceCache:
    """Conditionings by reference path. `limits()` gives (max_voices, max_bytes) at each store (settings may change);
    `on_evict(conds)` is told about each conditioning that leaves (the fast path drops its voice prefix)."""

    def __init__(self, limits: Callable[[], Tuple[int, float]], on_evict: Callable[[Any], None]):
        self._limits = limits
        self._on_evict = on_evict
        self._lock = threading.Lock()
        self._entries: "OrderedDict[str, CacheEntry]" = OrderedDict()
        self.stats = {"hits": 0, "misses": 0, "evictions": 0, "refreshes": 0, "uncached": 0}

    def get(self, voice_path: str, compute: Callable[[str], Any]):
        """The conditioning of `voice_path`: cached, or `compute(resolved_path)` (outside the cache lock)."""
        key = os.path.realpath(voice_path)
        stamp = self._stamp(key, voice_path)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.stamp == stamp:
                self._entries.move_to_end(key)
                self.stats["hits"] += 1
                return entry.conds
            if entry is not None:  # the file changed since it was conditioned
                self.stats["refreshes"] += 1
                del self._entries[key]
                self._on_evict(entry.conds)
            self.stats["misses"] += 1
        t0 = time.monotonic()
        conds = compute(key)
        entry = CacheEntry(conds, stamp, tensor_bytes(conds), time.monotonic() - t0)
        with self._lock:
            self._store(key, entry)
        return conds

    @staticmethod
    def _stamp(key: str, shown: str) -> Tuple[int, int]:
        try:
            st = os.stat(key)
        except OSError as exc:
            raise VoiceError(f"voice file '{shown}' cannot be read: {exc.strerror or exc}") from None
        return (st.st_mtime_ns, st.st_size)

    def _store(self, key: str, entry: CacheEntry) -> None:
        max_voices, max_bytes = self._limits()
        if entry.nbytes > max_bytes:
            self.stats["uncached"] += 1  # used for this request, not kept
            self._evict(max_voices, max_bytes)
            return
        self._entries[key] = entry
        self._evict(max_voices, max_bytes)

    def _evict(self, max_voices: int, max_bytes: float) -> None:
        while self._entries and (len(self._entries) > max_voices or
                                 sum(e.nbytes for e in self._entries.values()) > max_bytes):
            _key, old = self._entries.popitem(last=False)
            self.stats["evictions"] += 1
            self._on_evict(old.conds)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def paths(self) -> List[str]:
        """Resolved paths of the cached voices, least recently used first."""
        with self._lock:
            return list(self._entries)

    def size(self) -> Tuple[int, int]:
        """(voices, bytes)."""
        with self._lock:
            return len(self._entries), sum(e.nbytes for e in self._entries.values())

    def status(self, max_voices: int, max_mb: float) -> VoiceCacheStatus:
        voices, nbytes = self.size()
        return VoiceCacheStatus(voices=voices, mb=round(nbytes / 2 ** 20, 3), max_voices=max_voices, max_mb=max_mb,
                                hits=self.stats["hits"], misses=self.stats["misses"],
                                evictions=self.stats["evictions"])


# ------------------------------------------------------------------------------------------------ conditioning
def prepare_t3_cond(model, conds):
    """Cast T3's conditioning to T3's dtype and device and embed the prompt tokens once (upstream does it lazily).
    `conds.t3` is replaced by the cast copy."""
    from ..fast_t3.weights import cast_cond
    t3 = model.t3
    cond = conds.t3 = cast_cond(conds.t3, t3.speech_head.weight.dtype, t3.device)
    if cond.cond_prompt_speech_tokens is not None and cond.cond_prompt_speech_emb is None:
        cond.cond_prompt_speech_emb = t3.speech_emb(cond.cond_prompt_speech_tokens)
    return conds


def placeholder_t3_cond(model):
    """A zero speaker and prompt conditioning for T3, prepared: for the load-time checks of a checkpoint that has no
    built-in voice."""
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts_turbo import Conditionals
    with torch.inference_mode():
        cond = T3Cond(speaker_emb=torch.zeros(1, 256), cond_prompt_speech_tokens=torch.zeros(1, 8, dtype=torch.long),
                      emotion_adv=0.5 * torch.ones(1, 1, 1))
        return prepare_t3_cond(model, Conditionals(cond, {})).t3


def load_reference(path: str) -> np.ndarray:
    """The reference at 24 kHz, float32 mono, or VoiceError saying why it cannot be used."""
    import librosa
    import soundfile as sf
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise VoiceError(f"voice file '{path}' cannot be read: {exc.strerror or exc}") from None
    check_reference(data)  # readable, longer than 5 s, not silent (raises VoiceError with the reason)
    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    wav = audio.mean(axis=1)
    if sr != SAMPLE_RATE:
        wav = librosa.resample(wav, orig_sr=sr, target_sr=SAMPLE_RATE)  # librosa.load's default (soxr_hq)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if len(wav) / SAMPLE_RATE <= MIN_REFERENCE_S:
        raise VoiceError(f"reference is {len(wav) / SAMPLE_RATE:.1f} s long; a voice needs more than "
                         f"{MIN_REFERENCE_S:.0f} s of clear speech")
    return wav


def compute_conds(model, path: str):
    """Upstream's prepare_conditionals, under inference_mode, with the reference validated first. The S3 tokenizer
    (S3Gen's prompt tokens and T3's) is read from the checkpoint for this call and dropped after it (s3_tokenizer.py);
    EngineError naming the file when it cannot be."""
    import librosa
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts_turbo import Conditionals
    from .s3_tokenizer import speech_prompts
    wav = load_reference(path)
    wav = np.asarray(model.norm_loudness(wav, SAMPLE_RATE), dtype=np.float32)  # float64 under numpy 2
    ref_16k = librosa.resample(wav, orig_sr=SAMPLE_RATE, target_sr=16_000).astype(np.float32)
    with torch.inference_mode():
        gen, tokens = speech_prompts(model.s3gen, wav[:DEC_COND_SAMPLES], ref_16k[:ENC_COND_SAMPLES], model.device,
                                     model.t3.hp.speech_cond_prompt_len)
        ve = torch.from_numpy(model.ve.embeds_from_wavs([ref_16k], sample_rate=16_000))
        ve = ve.mean(axis=0, keepdim=True).to(model.device)
        t3_cond = T3Cond(speaker_emb=ve, cond_prompt_speech_tokens=tokens,
                         emotion_adv=0.5 * torch.ones(1, 1, 1)).to(device=model.device)
        conds = prepare_t3_cond(model, Conditionals(t3_cond, gen))
    if conds.t3.cond_prompt_speech_tokens.numel() == 0:
        raise VoiceError("the reference produced no speech tokens; record clear speech")
    return conds

