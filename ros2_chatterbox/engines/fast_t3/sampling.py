"""Sampling for FastT3, as pure functions of device tensors: upstream's logits processors in upstream's order
(temperature -> top-k -> top-p -> repetition penalty) and the draw argmax(p / E), E ~ Exp(1), which samples exactly
from p without a host round trip. No host sync anywhere: every function here can be captured in a CUDA graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict

import torch

from ...settings import GenerationSettings

NEG_INF = float("-inf")
_DEFAULT = GenerationSettings()


@dataclass(frozen=True)
class SamplingSettings:
    """Upstream `inference_turbo`'s sampling knobs. The defaults are the project's (settings.GenerationSettings, which
    are `ChatterboxTurboTTS.generate`'s): one set of sampling defaults in the whole project."""
    temperature: float = _DEFAULT.temperature
    top_k: int = _DEFAULT.top_k
    top_p: float = _DEFAULT.top_p
    repetition_penalty: float = _DEFAULT.repetition_penalty

    @classmethod
    def coerce(cls, settings: Any = None, **overrides: Any) -> "SamplingSettings":
        """From None, a dict, or any object with these attributes (e.g. settings.GenerationSettings)."""
        values: Dict[str, Any] = {}
        if isinstance(settings, dict):
            values.update({k: settings[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")
                           if k in settings})
        elif settings is not None:
            for k in ("temperature", "top_k", "top_p", "repetition_penalty"):
                if hasattr(settings, k):
                    values[k] = getattr(settings, k)
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        return cls(float(s.temperature), int(s.top_k), float(s.top_p), float(s.repetition_penalty))

    @property
    def greedy(self) -> bool:
        """True when upstream's processors leave one token (top_k == 1, or top_p == 0): the draw is an argmax."""
        return self.top_k == 1 or self.top_p <= 0.0

    def check(self) -> None:
        if self.repetition_penalty <= 0 or not math.isfinite(self.repetition_penalty):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not (0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be within [0, 1], got {self.top_p}")
        if not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be finite, got {self.temperature}")



def process(logits, seen, temp, kidx, topp, topp_on, pen):
    """Upstream's logits processors, in upstream's order, on float32 scores (1, V): temperature, top-k, top-p,
    repetition penalty (over `seen`). The settings are device tensors (see FastT3._set_settings), so one captured
    graph serves every setting. Device-only ops: no host sync, capturable."""
    l = logits.float() / temp
    srt, idx = torch.sort(l, dim=-1)                # ascending, as TopPLogitsWarper sorts
    thr = srt.gather(1, kidx)                      # TopKLogitsWarper: the k-th largest value (ties stay)
    l = l.masked_fill(l < thr, NEG_INF)
    srt = srt.masked_fill(srt < thr, NEG_INF)      # = the sorted top-k-filtered scores
    cum = srt.softmax(dim=-1).cumsum(dim=-1)
    rm = (cum <= topp) & topp_on                   # topp_on is False at the largest (min_tokens_to_keep=1)
    rm = rm.scatter(1, idx, rm)
    l = l.masked_fill(rm, NEG_INF)
    # RepetitionPenaltyLogitsProcessor: upstream appends it last
    return penalise(l, seen, pen)


def process_topk(logits, k: int, seen, temp, topp, topp_on, pen):
    """`process` with torch.topk(k) (k = the effective top_k, fixed per graph) instead of a full sort: the
    fallback where sort cannot be captured. Differs from upstream only when the k-th largest score has ties
    beyond k (upstream keeps them; their probability then misses the top-p sum)."""
    vocab = seen.shape[-1]
    l = logits.float() / temp
    vals, idx = torch.topk(l, k, dim=-1)             # descending
    l = l.masked_fill(l < vals[:, -1:], NEG_INF)
    srt, idx = vals.flip(-1), idx.flip(-1)
    cum = srt.softmax(dim=-1).cumsum(dim=-1)
    rm_s = (cum <= topp) & topp_on[:, vocab - k:]
    rm = torch.zeros_like(seen).scatter(1, idx, rm_s)
    l = l.masked_fill(rm, NEG_INF)
    return penalise(l, seen, pen)


def penalise(l, seen, pen):
    """RepetitionPenaltyLogitsProcessor on the tokens marked in `seen`."""
    return torch.where(seen, torch.where(l < 0, l * pen, l / pen), l)


def draw(processed, noise_row):
    """A draw from softmax(processed): argmax(p / E), E ~ Exp(1) (exact, and no host round trip)."""
    return torch.argmax(processed.softmax(dim=-1) / noise_row, dim=-1)
