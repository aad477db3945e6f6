"""FastT3: a static-cache, CUDA-graph, device-sampling speech-token generator for Chatterbox Turbo's T3.

    sampling.py      upstream's logits processors and the draw, as pure functions of device tensors
    step.py          one GPT-2 block's math, prefill, the decode step, the static buffers (KV cache)
    graphs.py        capture per attention-length bucket, fallbacks, layout and kernel choice
    voice_prefix.py  the voice prefixes: prefilled once per voice, their keys/values LRU-cached
    self_check.py    the load-time self-check against upstream's greedy tokens (stop token held down)
    generator.py     FastT3 (step, graphs, voice_prefix and self_check are its mixins): set-up, stream_tokens /
                     generate, warm-up, info
    kernels.py       fused Triton matrix-vector kernels (CUDA)
"""
from .generator import FastT3
from .sampling import SamplingSettings
from .step import cast_cond, release_text_head

__all__ = ["FastT3", "SamplingSettings", "cast_cond", "release_text_head"]
