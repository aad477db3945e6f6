"""FastT3: a static-cache, CUDA-graph, device-sampling speech-token generator for Chatterbox Turbo's T3, in
gpt-fast's shape (weights, a decode state, a step function, a graph cache, a plain loop).

    generator.py     FastT3: set-up, the graphs' preparation and their one fallback rule, stream_tokens/generate
    loop.py          one request: prefill and first token, then the decode loop (plain functions)
    step.py          one GPT-2 block's math, forward_logits, decode_step, prefill
    state.py         DecodeState: KV cache, token/position/step, seen-token mask, noise, sampling parameters
    weights.py       the parameters a step reads (no copy), their storage order, what FastT3 supports
    sampling.py      the processors and the draw as pure functions (PyTorch; the reference)
    sample_kernel.py the processors, the draw and the state update in one Triton kernel (CUDA)
    kernels.py       fused Triton matrix-vector kernels (CUDA; the QKV one also writes the KV cache)
    attention.py     the decode step's attention as a split-K Triton kernel (CUDA)
    graphs.py        GraphCache: one way to capture a step, per attention-length bucket
    tuning.py        once per instance on CUDA: storage orders; Triton or PyTorch GEMVs, sampler and attention
                     (each checked against PyTorch, the GEMVs and attention also timed)
    voice_prefix.py  the voice prefixes: prefilled once per voice, their keys/values LRU-cached
    self_check.py    the load-time self-check against upstream's greedy tokens (stop token held down)
"""
from .generator import FastT3, TestHooks
from .weights import cast_cond, release_text_head

__all__ = ["FastT3", "TestHooks", "cast_cond", "release_text_head"]
