"""Sampling for T3, as pure functions of device tensors: the logits processors in upstream `inference_turbo`'s order
(temperature -> top-k -> top-p -> min-p -> repetition penalty) and the draw argmax(p / E), E ~ Exp(1), which samples
exactly from p without a host round trip. No host sync anywhere: every function here can be captured in a CUDA
graph. On CUDA, sample_kernel.py is the same processing and draw fused in one Triton kernel (the tests hold the two
equal); here is the PyTorch reference, which the CPU and the upstream loop (engines/chatterbox/tokens.py) use.

The sampling options are `settings.GenerationSettings` fields, and nothing else names them: `param_row` turns one
settings object into the row of a (1, N_PARAMS) float32 tensor, so one captured graph serves every setting. A new
option is a row in the settings table (settings.py), a slot here and its step in `process` (and the kernel).
min_p (HF's MinPLogitsWarper: drop tokens whose probability is below min_p x the top token's) is not in upstream
Turbo; it sits where transformers' own warpers put it, after top-p, and is off at 0.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, List

import torch

from ...settings import GenerationSettings

NEG_INF = float("-inf")

# slots of the parameter row (one float32 each)
TEMP, TOPK, TOPP_CUT, TOPP_ON, MINP, PENALTY = range(6)
N_PARAMS = 6


def coerce(settings: Any = None, **overrides: Any) -> GenerationSettings:
    """GenerationSettings from None (the defaults), a GenerationSettings, or a dict of its fields; `overrides`
    (None values ignored) replace fields."""
    if settings is None:
        s = GenerationSettings()
    elif isinstance(settings, GenerationSettings):
        s = settings
    elif isinstance(settings, dict):
        s = GenerationSettings(**settings)
    else:
        raise TypeError(f"sampling settings must be GenerationSettings, a dict or None, not {type(settings).__name__}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(s, **changes) if changes else s


def is_greedy(s: GenerationSettings) -> bool:
    """True when the processors leave one token (top_k == 1, or top_p == 0): the draw is an argmax."""
    return int(s.top_k) == 1 or float(s.top_p) <= 0.0


def check(s: GenerationSettings) -> None:
    """ValueError for settings no processor accepts."""
    if not (s.repetition_penalty > 0 and math.isfinite(s.repetition_penalty)):
        raise ValueError(f"repetition_penalty must be > 0, got {s.repetition_penalty}")
    if not (0.0 <= s.top_p <= 1.0):
        raise ValueError(f"top_p must be within [0, 1], got {s.top_p}")
    if not (0.0 <= s.min_p <= 1.0):
        raise ValueError(f"min_p must be within [0, 1], got {s.min_p}")
    if not math.isfinite(s.temperature):
        raise ValueError(f"temperature must be finite, got {s.temperature}")


def param_row(s: GenerationSettings, vocab: int) -> List[float]:
    """The N_PARAMS values `process` reads, for a vocabulary of `vocab`: each processor that is off becomes a
    no-op (temperature 1, k = vocab, top-p off, min_p 0, penalty 1). 1 - top_p is taken in double precision, as
    transformers' TopPLogitsWarper compares with it."""
    temp = float(s.temperature) if (s.temperature > 0 and s.temperature != 1.0) else 1.0
    k = min(max(int(s.top_k), 1), vocab) if s.top_k > 0 else vocab
    row = [0.0] * N_PARAMS
    row[TEMP], row[TOPK], row[TOPP_CUT] = temp, float(k), 1.0 - float(s.top_p)
    row[TOPP_ON] = 1.0 if s.top_p < 1.0 else 0.0
    row[MINP], row[PENALTY] = float(s.min_p), float(s.repetition_penalty)
    return row


def params_tensor(s: GenerationSettings, vocab: int, device=None) -> torch.Tensor:
    return torch.tensor([param_row(s, vocab)], dtype=torch.float32, device=device)


def process(logits: torch.Tensor, seen: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The processors on float32 scores (1, V), as transformers computes them: temperature, top-k (the k-th largest
    value; ties stay), top-p (ascending sort, cumulative softmax <= 1 - top_p dropped, the largest always kept),
    min-p, repetition penalty over the tokens marked in `seen` (bool (1, V)). `params`: (1, N_PARAMS)."""
    V = logits.shape[-1]
    p = lambda i: params[:, i:i + 1]  # noqa: E731
    scores = logits.float() / p(TEMP)
    srt, idx = torch.sort(scores, dim=-1)                       # ascending, as TopPLogitsWarper sorts
    thr = srt.gather(1, (V - p(TOPK)).long())                   # TopKLogitsWarper: the k-th largest value
    scores = scores.masked_fill(scores < thr, NEG_INF)
    srt = srt.masked_fill(srt < thr, NEG_INF)                   # = the sorted top-k-filtered scores
    cum = srt.softmax(dim=-1).cumsum(dim=-1)
    drop = (cum <= p(TOPP_CUT)) & (p(TOPP_ON) > 0)
    drop[:, -1] = False                                         # min_tokens_to_keep=1: the largest stays
    scores = scores.masked_fill(drop.scatter(1, idx, drop), NEG_INF)
    probs = scores.softmax(dim=-1)                              # MinPLogitsWarper (the top token always stays)
    scores = scores.masked_fill(probs < p(MINP) * probs.amax(dim=-1, keepdim=True), NEG_INF)
    return penalise(scores, seen, p(PENALTY))


def penalise(scores: torch.Tensor, seen: torch.Tensor, pen: torch.Tensor) -> torch.Tensor:
    """RepetitionPenaltyLogitsProcessor on the tokens marked in `seen`."""
    return torch.where(seen, torch.where(scores < 0, scores * pen, scores / pen), scores)


def draw(processed: torch.Tensor, noise_row: torch.Tensor) -> torch.Tensor:
    """A draw from softmax(processed): argmax(p / E), E ~ Exp(1) (exact, and no host round trip). (1,) long."""
    return torch.argmax(processed.softmax(dim=-1) / noise_row, dim=-1)
