"""Taking the memory plan's working memory at configure (the plan itself, pure arithmetic, is memory_plan.py), and
reporting it.

`take` sizes the plan for the loaded model and the longest piece SpeechCore sends, then, on CUDA, makes one
worst-case pass: the fast path's KV cache and buffers and a graph for every bucket, the longest text prefill, and the
longest piece through the S3Gen streaming decoder with a 10 s voice prompt. PyTorch's caching allocator keeps those
blocks, so no allowed text needs a new device allocation afterwards. Running out of memory here fails configure,
with the fix, instead of a request later.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ContextManager, Dict, Optional

import numpy as np

from ...engine import EngineLoadError
from ...settings import EngineSettings, GenerationSettings
from ...status import MemoryStatus
from . import footprint, gpu_memory, memory_plan
from .s3gen_stream import SAMPLE_RATE, DecoderConfig, StreamDecoder
from .tokens import SPEECH_VOCAB
from .voice_cache import DEC_COND_SAMPLES

log = logging.getLogger(__name__)

_MB = 1024.0 * 1024.0


@dataclass
class WorkingMemory:
    """What configure planned and took."""
    plan: Optional[memory_plan.MemoryPlan] = None
    state: str = "not loaded"
    warm_s: float = 0.0
    base: Dict[str, int] = field(default_factory=dict)  # allocator counters right after configure
    budget: Optional[memory_plan.BudgetChoice] = None   # what memory.budget_mb made configure choose


def plan_for(model, settings: EngineSettings, max_piece_chars: Optional[int], bucket: int,
             decoder: DecoderConfig) -> memory_plan.MemoryPlan:
    """The plan for this model (T3's shape, the tokenizer's limit) and settings; ValueError when a piece can need
    more T3 positions than the model has."""
    t3 = model.t3
    cfg = t3.cfg
    limit = getattr(model.tokenizer, "model_max_length", 1024) or 1024
    return memory_plan.make_plan(
        max_piece_chars, speech_max=int(settings.speech_tokens_max), speech_base=settings.speech_tokens_base,
        speech_per_char=settings.speech_tokens_per_char, n_layer=int(cfg.n_layer),
        n_head=int(cfg.num_attention_heads), head_dim=int(cfg.hidden_size) // int(cfg.num_attention_heads),
        dtype_bytes=int(t3.speech_head.weight.element_size()), max_positions=int(t3.tfmr.wpe.weight.shape[0]),
        bucket=bucket, tokenizer_limit=int(min(limit, 10 ** 6)), stream_first=int(settings.stream_first_tokens),
        stream_max=int(settings.stream_max_tokens), crossfade_frames=decoder.crossfade_frames,
        context_frames=decoder.context_frames)


def voice_mb(model, fast) -> float:
    """What one cached voice holds on the device (MiB): its conditioning, and its T3 prefix KV on the fast path."""
    cfg = model.t3.cfg
    prefix = (int(cfg.n_layer) * 2 * memory_plan.PREFIX_POSITIONS * int(cfg.hidden_size)
              * int(model.t3.speech_head.weight.element_size())) if fast is not None else 0
    return 1.0 + prefix / 2 ** 20


def fit_budget(model, settings: EngineSettings, max_piece_chars: Optional[int], *, device: str, fast, bucket: int,
               decoder: DecoderConfig) -> memory_plan.BudgetChoice:
    """memory.budget_mb's choice for this model, from what the process holds now (EngineLoadError: nothing fits)."""
    fixed = gpu_memory.rss_bytes() / _MB
    if device.startswith("cuda"):
        import torch
        fixed += torch.cuda.memory_allocated(torch.device(device)) / _MB + memory_plan.CUDA_CONTEXT_MB
        if settings.s3gen_graphs:  # captured after the plan is fitted: their measured cost is set aside for them
            fixed += memory_plan.S3GEN_GRAPHS_MB

    def plan(chars: int, speech: int) -> memory_plan.MemoryPlan:
        return plan_for(model, replace(settings, speech_tokens_max=speech), chars, bucket, decoder)
    flow_bytes = next(model.s3gen.flow.parameters()).element_size()
    try:
        return memory_plan.fit_budget(settings.memory_budget_mb, fixed, plan, int(max_piece_chars or 250),
                                      int(settings.speech_tokens_max), int(settings.voice_cache_max_voices),
                                      voice_mb(model, fast), flow_bytes)
    except ValueError as exc:
        raise EngineLoadError(str(exc)) from None


def take(model, settings: EngineSettings, max_piece_chars: Optional[int], *, device: str, fast, t3_cond,
         lock: ContextManager, decoder: DecoderConfig, warm: bool,
         decoder_graphs: Optional[Callable[[memory_plan.MemoryPlan], Any]] = None) -> WorkingMemory:
    """Plan (within memory.budget_mb when set: `WorkingMemory.budget` says what it chose, and the plan is sized for
    it), and when `warm` (on CUDA) take the plan's memory with one worst-case pass. `fast`: the FastT3 in use (None:
    the reference loop); `t3_cond()`: a prepared T3 conditioning for the longest prefill; `decoder_graphs(plan)`:
    S3Gen's graphs for this plan (s3gen_graphs.select, or None; called with None when there is no plan), made
    before the worst case so that it runs through them."""
    bucket = fast.bucket if fast is not None else 256
    budget = None
    if settings.memory_budget_mb > 0:
        budget = fit_budget(model, settings, max_piece_chars, device=device, fast=fast, bucket=bucket, decoder=decoder)
        log.info("Chatterbox Turbo: %s", budget.describe())
        settings = replace(settings, speech_tokens_max=budget.speech_tokens_max)
        max_piece_chars = budget.chunk_chars
    try:
        plan = plan_for(model, settings, max_piece_chars, bucket, decoder)
    except ValueError as exc:
        log.info("Chatterbox Turbo memory plan: %s", exc)
        if decoder_graphs is not None:
            decoder_graphs(None)
        return WorkingMemory(state=f"no plan: {exc}", budget=budget)
    graphs = decoder_graphs(plan) if decoder_graphs is not None else None
    if not warm:
        return WorkingMemory(plan, "planned (taken at configure on CUDA only)", budget=budget)
    t0 = time.monotonic()
    try:
        warm_worst_case(model, plan, device=device, fast=fast, t3_cond=t3_cond, lock=lock, decoder=decoder,
                        voices=budget.max_voices if budget else settings.voice_cache_max_voices, graphs=graphs)
    except Exception as exc:  # noqa: BLE001
        if "out of memory" in str(exc).lower():
            raise EngineLoadError(
                f"out of memory while taking the working memory for pieces of up to {plan.max_speech_tokens} "
                f"speech tokens ({exc}); set memory.budget_mb (or lower speech_tokens.max), or start this node "
                f"before other GPU services") from exc
        state = f"warm-up failed ({type(exc).__name__}: {str(exc)[:200]}); memory grows on demand"
        log.warning("Chatterbox Turbo: %s", state)
        return WorkingMemory(plan, state, time.monotonic() - t0, budget=budget)
    warm_s = time.monotonic() - t0
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize(torch.device(device))
    return WorkingMemory(plan, "taken at configure", warm_s, gpu_memory.allocator_stats(device), budget)


HEADROOM = 1.10   # the working-memory block: the measured need x this (best-fit splitting leaves small gaps)


def warm_worst_case(model, plan: memory_plan.MemoryPlan, *, device: str, fast, t3_cond, lock: ContextManager,
                    decoder: DecoderConfig, voices: int = 0, graphs=None) -> None:
    """The worst case, twice on CUDA. The first pass measures what it needs beyond what stays allocated (weights,
    KV cache); then the cache is emptied and that much is taken as ONE block, and the second pass (and every
    request after it) carves its tensors out of that block. One pass alone would leave a segment per size it ever
    saw (the streaming decoder's tensors grow chunk by chunk): ~1.5x the need, kept for good. The block also holds
    `voices` cached voices: they are carved from it later, and must not leave the worst case without room."""
    import torch
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()  # leftovers of the checks: the plan's memory is taken from a clean slate
    if fast is not None:
        fast.warmup(None, text_len=plan.max_text_tokens, max_new_tokens=plan.max_speech_tokens - 1,
                    settings=(None, "greedy"), all_buckets=True)
    ref = worst_case_voice(model, dev)
    g = torch.Generator(device=dev).manual_seed(2)
    tokens = torch.randint(0, SPEECH_VOCAB, (plan.max_speech_tokens,), device=dev, generator=g)
    if cuda:
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        _worst_pass(model, plan, dev, fast, t3_cond, lock, decoder, ref, tokens, graphs)
        need = torch.cuda.max_memory_allocated(dev) - base
        torch.cuda.empty_cache()
        block = torch.empty(int(need * HEADROOM + voices * voice_mb(model, fast) * _MB), dtype=torch.uint8,
                            device=dev)
        del block  # back to the cache as one free segment
    _worst_pass(model, plan, dev, fast, t3_cond, lock, decoder, ref, tokens, graphs)


def worst_case_voice(model, dev) -> Dict:
    """S3Gen's conditioning of the longest voice (a 10 s reference: 250 prompt tokens, 500 mel frames), made without
    the S3 tokenizer (random prompt tokens: the decoder's memory depends on the lengths, not on the values)."""
    import torch
    def tone(sr: int) -> np.ndarray:
        t = np.arange(DEC_COND_SAMPLES * sr // SAMPLE_RATE, dtype=np.float64) / sr
        return (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    s3 = model.s3gen
    with torch.inference_mode():
        w24 = torch.from_numpy(tone(SAMPLE_RATE))[None].to(dev)
        mels = s3.mel_extractor(w24).transpose(1, 2).to(dtype=s3.dtype)
        w16 = torch.from_numpy(tone(16_000))[None].to(dev)
        embedding = s3.speaker_encoder.inference(w16.to(dtype=next(s3.speaker_encoder.parameters()).dtype))
        n = memory_plan.PROMPT_TOKENS_MAX
        g = torch.Generator(device=dev).manual_seed(3)
        prompt = torch.randint(0, 6561, (1, n), device=dev, generator=g)
    return dict(prompt_token=prompt, prompt_token_len=torch.tensor([n], device=dev),
                prompt_feat=mels[:, :2 * n], prompt_feat_len=None, embedding=embedding)


def _worst_pass(model, plan, dev, fast, t3_cond, lock, decoder, ref, tokens, graphs=None) -> None:
    """The longest prefill, then the longest piece through the streaming decoder on the schedule requests use."""
    import torch
    if fast is not None:
        g = torch.Generator(device=dev).manual_seed(1)
        text = torch.randint(0, 256, (1, plan.max_text_tokens), generator=g, device=dev)
        fast.generate(t3_cond(), text, GenerationSettings(), generator=g, max_new_tokens=8)  # longest prefill
    stream = StreamDecoder(model, ref, 1, True, lock, decoder, graphs)  # watermarked, as requests are by default
    for at in plan.decode_points[:-1]:
        stream.step(tokens[:at], final=False)
    stream.step(tokens, final=True)


def status(memory: WorkingMemory, device: str, host_sync: str, last_piece: Dict[str, int], model=None,
           fast=None, graphs=None) -> MemoryStatus:
    """The plan, what configure took, and the allocator's work since (what the static plan is judged by: no device
    allocation after configure, flat reserved memory, few block allocations per piece). Never raises."""
    try:
        now = gpu_memory.allocator_stats(device)
        base = memory.base
        return MemoryStatus(
            state=memory.state, plan=memory.plan.as_dict() if memory.plan else None,
            warm_s=round(memory.warm_s, 3), host_sync=host_sync, **gpu_memory.memory_report(device),
            reserved_mb=round(now["reserved_bytes"] / _MB, 1),
            reserved_at_configure_mb=round(base["reserved_bytes"] / _MB, 1) if base else None,
            device_allocs_since_configure=now["num_device_alloc"] - base["num_device_alloc"] if base else None,
            last_piece=dict(last_piece), budget=memory.budget.describe() if memory.budget else "",
            footprint=footprint.footprint(model, device, fast, graphs) if model is not None else {})
    except Exception as exc:  # noqa: BLE001 - status must never fail
        return MemoryStatus(state=f"unknown ({type(exc).__name__}: {exc})")
