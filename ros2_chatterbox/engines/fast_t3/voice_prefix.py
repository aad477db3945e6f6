"""FastT3's voice prefixes: the speaker embedding and prompt speech tokens of a voice (up to 376 positions),
prefilled once per conditioning object and their keys/values reused for every request of that voice, so a request
prefills only its text. An LRU of `max_voices` entries, keyed by the T3Cond object and checked against a fingerprint
of its tensors (a changed or replaced conditioning is prefilled again).

`VoicePrefixCache` belongs to a `FastT3` (generator.py).
"""
from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from typing import Tuple

import torch

from .step import cond_embeds, prefill, sdpa_backends
from .weights import Weights


class _VoicePrefix:
    __slots__ = ("ref", "fingerprint", "kv", "length", "seconds")

    def __init__(self, ref, fingerprint, kv, length, seconds):
        self.ref, self.fingerprint, self.kv, self.length, self.seconds = ref, fingerprint, kv, length, seconds


def _tensor_fp(t) -> Tuple:
    if not torch.is_tensor(t):
        return (repr(t),)
    try:
        version = t._version
    except Exception:  # inference tensors keep no version counter
        version = -1
    return (t.data_ptr(), tuple(t.shape), str(t.dtype), version)


def _cond_fingerprint(c) -> Tuple:
    parts = [_tensor_fp(getattr(c, "speaker_emb", None)), _tensor_fp(getattr(c, "clap_emb", None)),
             _tensor_fp(getattr(c, "cond_prompt_speech_tokens", None)), _tensor_fp(getattr(c, "emotion_adv", None))]
    if getattr(c, "cond_prompt_speech_tokens", None) is None:
        parts.append(_tensor_fp(getattr(c, "cond_prompt_speech_emb", None)))
    return tuple(parts)


class VoicePrefixCache:
    """Prefilled voice prefixes, least recently used dropped beyond `max_voices`."""

    def __init__(self, max_voices: int):
        self.max_voices = max(1, int(max_voices))
        self._voices: "OrderedDict[int, _VoicePrefix]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._voices)

    @property
    def nbytes(self) -> int:
        return sum(v.kv.numel() * v.kv.element_size() for v in self._voices.values())

    def clear(self) -> None:
        self._voices.clear()

    def forget(self, t3_cond) -> None:
        self._voices.pop(id(t3_cond), None)

    def get(self, w: Weights, t3_cond) -> _VoicePrefix:
        """The voice's prefilled keys/values (computed once per conditioning object, LRU-cached)."""
        key = id(t3_cond)
        fp = _cond_fingerprint(t3_cond)
        entry = self._voices.get(key)
        if entry is not None and entry.ref() is t3_cond and entry.fingerprint == fp:
            self._voices.move_to_end(key)
            return entry
        t0 = time.perf_counter()
        with torch.inference_mode(), sdpa_backends(cudnn=False):
            emb = cond_embeds(w, t3_cond)
            Lc = emb.shape[0]
            kv = torch.empty(w.n_layer, 2, w.n_head, Lc, w.head_dim, device=w.device, dtype=w.dtype)
            prefill(w, emb, kv, 0)
        if w.device.type == "cuda":
            torch.cuda.synchronize(w.device)
        try:
            ref = weakref.ref(t3_cond)
        except TypeError:
            ref = (lambda obj: (lambda: obj))(t3_cond)
        entry = _VoicePrefix(ref, fp, kv, Lc, time.perf_counter() - t0)
        self._voices[key] = entry
        while len(self._voices) > self.max_voices:
            self._voices.popitem(last=False)
        return entry
