"""The engine's memory plan: what the longest allowed piece of text can need, worked out from the settings alone.

At configure the engine takes this much working memory once (fast_t3's static KV cache and output buffers sized for
`kv_positions`, a CUDA graph for every attention-length bucket up to it, and one worst-case pass of the S3Gen
streaming decoder whose blocks PyTorch's caching allocator then keeps), so that no text of an allowed length makes a
new device allocation afterwards. This module is pure arithmetic (no torch): the bounds are unit-tested on CPU.

Bounds, for a piece of at most `chunk_chars` characters (SpeechCore splits every request at text.chunk_chars; when
the engine does not know it, text is bounded by the tokenizer's limit and speech by speech_tokens.max):

* text tokens: upstream's punc_norm never makes the text longer in UTF-8 bytes (its replacements shrink or keep
  the byte count) except for one added full stop, or its 41-character message for empty text; GPT-2's byte-level BPE
  makes at most one token per byte (added tokens such as [laugh] are fewer), and the tokenizer truncates at its
  model_max_length. So at most min(4 * chunk_chars + 1, tokenizer limit) and at least 41.
* speech tokens: the engine's per-piece cap, min(speech_tokens.max, speech_tokens.base + speech_tokens.per_char x
  characters) (`EngineSettings.max_tokens_for`): speech_tokens.max is the knob for S3Gen's worst case.
* T3 positions: voice prefix (speaker embedding + up to 375 prompt tokens = 376) + text tokens + start-of-speech +
  speech tokens, rounded up to the graph bucket and never past GPT-2's positions.
* S3Gen: the flow runs over prompt tokens (a 10 s reference: 250) + speech tokens + 3 silence tokens; the streaming
  schedule decodes at `decode_points`; the vocoder's largest window is the last chunk plus context (whole pieces
  when streaming is off).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from ...settings import EngineSettings
from .s3gen_stream import FRAMES_PER_TOKEN

_D = EngineSettings()  # the settings table's defaults

PREFIX_POSITIONS = 376       # speaker embedding + 375 prompt speech tokens (ChatterboxTurboTTS's longest prompt)
EMPTY_TEXT_CHARS = 41        # len("You need to add some text for me to talk.")
PROMPT_TOKENS_MAX = 250      # S3Gen prompt tokens of a 10 s reference (25 tokens/s)
FINAL_SILENCE_TOKENS = 3     # appended before the last decode (s3gen_stream)


def max_speech_tokens(chars: Optional[int], cap: int = _D.speech_tokens_max, base: int = _D.speech_tokens_base,
                      per_char: float = _D.speech_tokens_per_char) -> int:
    """The engine's speech-token cap for a piece of `chars` characters (None: any piece)."""
    if chars is None:
        return int(cap)
    return EngineSettings(speech_tokens_max=cap, speech_tokens_base=base,
                          speech_tokens_per_char=per_char).speech_token_cap(int(chars))


def max_text_tokens(chunk_chars: Optional[int], tokenizer_limit: int = 1024) -> int:
    """The most GPT-2 text tokens a piece of at most `chunk_chars` characters can become (see the module doc);
    None: the tokenizer's limit (it truncates there)."""
    if chunk_chars is None:
        return int(max(EMPTY_TEXT_CHARS, int(tokenizer_limit)))
    return int(max(EMPTY_TEXT_CHARS, min(4 * max(1, int(chunk_chars)) + 1, int(tokenizer_limit))))


def decode_points(cap: int, first: int, max_step: int) -> List[int]:
    """Token counts at which the streaming decoder runs for a piece that reaches `cap` tokens (as synthesize
    schedules it: after `first`, then chunks doubling up to `max_step`); the final decode runs at `cap`."""
    if first <= 0:
        return [cap]
    points, at, step = [], first, first
    while at < cap:
        points.append(at)
        step = min(step * 2, max(max_step, first))
        at += step
    return points + [cap]


@dataclass(frozen=True)
class MemoryPlan:
    chunk_chars: Optional[int]
    max_text_tokens: int
    max_speech_tokens: int
    kv_positions: int            # T3 static cache capacity (bucket-rounded)
    bucket: int
    buckets: Tuple[int, ...]     # attention lengths with a captured decode graph
    kv_bytes: int
    flow_tokens_max: int         # S3Gen flow input: prompt + speech + final silence
    vocoder_frames_max: int      # the largest mel window the vocoder sees
    decode_points: Tuple[int, ...]

    def as_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["buckets"] = list(self.buckets)
        out["decode_points"] = list(self.decode_points)
        out["kv_mb"] = round(self.kv_bytes / 2 ** 20, 1)
        return out


def make_plan(chunk_chars: Optional[int], *, n_layer: int, n_head: int, head_dim: int, dtype_bytes: int,
              max_positions: int, speech_max: int = _D.speech_tokens_max, speech_base: int = _D.speech_tokens_base,
              speech_per_char: float = _D.speech_tokens_per_char, bucket: int = 256, tokenizer_limit: int = 1024,
              stream_first: int = _D.stream_first_tokens, stream_max: int = _D.stream_max_tokens,
              crossfade_frames: int = 8, context_frames: int = 4) -> MemoryPlan:
    text = max_text_tokens(chunk_chars, tokenizer_limit)
    speech = max_speech_tokens(chunk_chars, speech_max, speech_base, speech_per_char)
    need = PREFIX_POSITIONS + text + 1 + speech
    kv_positions = min(int(max_positions), int(math.ceil(need / bucket) * bucket))
    if need > max_positions:
        raise ValueError(f"a piece ({chunk_chars or 'any'} characters, {speech} speech tokens) can need {need} T3 "
                         f"positions; the model has {max_positions}: lower speech_tokens.max or text.chunk_chars")
    buckets = tuple(range(bucket, kv_positions + 1, bucket))
    if not buckets or buckets[-1] != kv_positions:
        buckets = buckets + (kv_positions,)
    points = decode_points(speech, stream_first, stream_max)
    # the vocoder's largest window: the longest chunk between two decodes (+ final silence), plus the held-back
    # overlap and the left context (the whole piece when streaming is off)
    longest = max(b - a for a, b in zip([0] + points, points)) + FINAL_SILENCE_TOKENS
    vocoder = FRAMES_PER_TOKEN * longest + (crossfade_frames + context_frames if len(points) > 1 else 0)
    return MemoryPlan(
        chunk_chars=None if chunk_chars is None else int(chunk_chars), max_text_tokens=text, max_speech_tokens=speech,
        kv_positions=kv_positions, bucket=int(bucket), buckets=buckets,
        kv_bytes=int(n_layer) * 2 * int(n_head) * kv_positions * int(head_dim) * int(dtype_bytes),
        flow_tokens_max=PROMPT_TOKENS_MAX + speech + FINAL_SILENCE_TOKENS, vocoder_frames_max=int(vocoder),
        decode_points=tuple(points))


# ------------------------------------------------------------------------------- a budget (memory.budget_mb)
# Measured on an H200 (bench/results/gpu-h200-2026-12-03-memory, fp16 T3, fp32 flow): the worst case's working memory
# beyond what stays allocated was ~1,560 MiB for a flow input of 1,253 tokens; the flow's attention over 2 mel frames
# per token dominates, so it grows with the square of the flow input. An fp16 flow needs about half.
FLOW_WORKSPACE_MB_PER_TOKEN2 = 1560.0 / 1253 ** 2
WORKSPACE_BASE_MB = 64.0          # the prefill's and the vocoder's part, small beside the flow's
CUDA_CONTEXT_MB = 860.0           # device memory beyond PyTorch's reserved: context, cuBLAS, cuDNN (H200; less on Orin)
S3GEN_GRAPHS_MB = 1000.0          # what S3Gen's CUDA graphs (s3gen_graphs) add, host + device: +965 MiB measured
#                                   (H100, 2026-12-07, bench/results/gpu-2026-12-07-s3gen-graphs: pool 916, heap +546)
# (text.chunk_chars, speech_tokens.max) from the defaults down: 4 speech tokens per character is 2-3x normal speech,
# so a piece of that length is still spoken in full
LADDER: Tuple[Tuple[int, int], ...] = ((250, 1000), (200, 800), (160, 640), (120, 480), (90, 360), (60, 240))


def workspace_mb(plan: MemoryPlan, flow_bytes: int = 4) -> float:
    """The working memory a plan's worst case needs beyond the weights and the KV cache (MiB, estimated)."""
    return WORKSPACE_BASE_MB + FLOW_WORKSPACE_MB_PER_TOKEN2 * plan.flow_tokens_max ** 2 * flow_bytes / 4.0


@dataclass(frozen=True)
class BudgetChoice:
    chunk_chars: int
    speech_tokens_max: int
    max_voices: int
    predicted_mb: float
    budget_mb: float

    def describe(self) -> str:
        return (f"memory.budget_mb {self.budget_mb:.0f}: pieces of up to {self.chunk_chars} characters, "
                f"speech_tokens.max {self.speech_tokens_max}, {self.max_voices} cached voices "
                f"(predicted {self.predicted_mb:.0f} MiB)")


def fit_budget(budget_mb: float, fixed_mb: float, plan_for, chunk_chars: int, speech_max: int, max_voices: int,
               voice_mb: float, flow_bytes: int = 4) -> BudgetChoice:
    """The largest (chunk, speech cap, voices) within `budget_mb`: the configured values first, then LADDER's
    smaller steps, then fewer cached voices. `fixed_mb`: what the process holds already (host RSS, weights on the
    device, the CUDA context); `plan_for(chunk_chars, speech_max)` -> MemoryPlan; `voice_mb`: one cached voice.
    ValueError naming the smallest setting and what it would need when nothing fits."""
    steps = [(chunk_chars, speech_max)] + [(c, s) for c, s in LADDER if c < chunk_chars and s <= speech_max]
    voices = [max_voices] + [v for v in (4, 2, 1) if v < max_voices]
    last = None
    for v in voices:
        for chars, speech in steps:
            try:
                plan = plan_for(chars, speech)
            except ValueError:  # more T3 positions than the model has: a smaller step may fit
                continue
            need = fixed_mb + plan.kv_bytes / 2 ** 20 + workspace_mb(plan, flow_bytes) + v * voice_mb
            last = BudgetChoice(chars, speech, v, round(need, 1), float(budget_mb))
            if need <= budget_mb:
                return last
    if last is None:
        raise ValueError(f"no setting down to pieces of {steps[-1][0]} characters fits the model's positions")
    raise ValueError(f"memory.budget_mb {budget_mb:.0f} is too small: the model alone holds {fixed_mb:.0f} MiB and "
                     f"the smallest setting (pieces of {last.chunk_chars} characters, speech_tokens.max "
                     f"{last.speech_tokens_max}, 1 cached voice) needs {last.predicted_mb:.0f} MiB; raise the budget "
                     f"to at least {math.ceil(last.predicted_mb / 100) * 100:.0f}, or use model nano")
