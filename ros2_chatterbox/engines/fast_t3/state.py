"""`DecodeState`: everything one decode step reads and writes, as static device tensors (a CUDA graph replays on
fixed addresses): the KV cache of every layer in one tensor, the current token, position and step, the tokens
decoded so far, the seen-token mask of the repetition penalty, the sampling noise and the sampling parameters.

The step itself (step.py: `decode_step`) only calls `write_kv` and `update`; the generator (generator.py) calls
`start`, `set_sampling` and `fill_noise` between steps.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from . import sampling


class DecodeState:
    """Static buffers for `positions` cache positions and `tokens` output tokens.

    kv:     (n_layer, 2, n_head, positions, head_dim), keys then values, written at `pos`
    out:    (tokens,) the decoded tokens, out[0] from the prefill; out_host its pinned host mirror (CUDA)
    tok, pos, step: (1,) the last token, its position, its index in `out`
    seen:   (1, vocab) bool, the tokens the repetition penalty applies to
    noise:  (noise_rows, vocab) Exp(1) noise; step `i` draws with row i % noise_rows (sampling.draw)
    params: (1, sampling.N_PARAMS) the sampling settings (sampling.param_row)
    """

    def __init__(self, n_layer: int, n_head: int, head_dim: int, vocab: int, positions: int, tokens: int,
                 noise_rows: int, device, dtype):
        dev = torch.device(device)
        self.device, self.vocab = dev, int(vocab)
        self.capacity, self.token_capacity = int(positions), int(tokens)
        with torch.inference_mode():
            self.kv = torch.zeros(n_layer, 2, n_head, positions, head_dim, device=dev, dtype=dtype)
            self.out = torch.zeros(tokens, dtype=torch.long, device=dev)
            self.out_host = torch.zeros(tokens, dtype=torch.long, pin_memory=True) if dev.type == "cuda" else None
            self.tok = torch.zeros(1, dtype=torch.long, device=dev)
            self.pos = torch.zeros(1, dtype=torch.long, device=dev)
            self.step = torch.zeros(1, dtype=torch.long, device=dev)
            self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=dev)
            self.noise = torch.ones(noise_rows, vocab, dtype=torch.float32, device=dev)
            self.params = sampling.params_tensor(sampling.coerce(), vocab, dev)
            self.arange = torch.arange(positions, device=dev)

    @staticmethod
    def sized(positions: int, bucket: int, max_positions: int) -> int:
        """Cache positions to allocate for `positions`: whole buckets, at most the model's positions."""
        return min(int(math.ceil(max(positions, bucket) / bucket) * bucket), max_positions)

    def fits(self, positions: int, tokens: int) -> bool:
        return positions <= self.capacity and tokens <= self.token_capacity

    @property
    def kv_bytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()

    # -- between steps (the generator) -------------------------------------------------------------------------------
    def reset(self) -> None:
        self.pos.zero_()
        self.step.zero_()
        self.tok.zero_()

    def set_sampling(self, settings=None) -> None:
        """The parameter row of `settings` (None: the defaults; a dict of GenerationSettings fields)."""
        self.params.copy_(sampling.params_tensor(sampling.coerce(settings), self.vocab, self.device))

    def fill_noise(self, generator: Optional[torch.Generator]) -> None:
        """Fresh Exp(1) noise for the next noise_rows steps, from `generator` (on any device)."""
        if generator is not None and torch.device(generator.device).type != self.device.type:
            e = torch.empty(self.noise.shape, dtype=torch.float32, device=generator.device)
            e.exponential_(generator=generator)
            self.noise.copy_(e, non_blocking=False)
        else:
            self.noise.exponential_(generator=generator)
        self.noise.clamp_(min=torch.finfo(torch.float32).tiny)

    def start(self, first: torch.Tensor, position: int) -> None:
        """The prefill's token `first` (1,) at `position`: out[0], and step 1 comes next."""
        self.out[0:1].copy_(first)
        self.tok.copy_(first)
        self.seen.zero_()
        self.seen.index_fill_(1, first, True)
        self.pos.fill_(position)
        self.step.fill_(1)

    # -- inside a step (step.decode_step) -----------------------------------------------------------------------------
    def write_kv(self, layer: int, kv_new: torch.Tensor) -> torch.Tensor:
        """Store this position's keys and values (2, n_head, 1, head_dim) in `layer`; returns that layer's cache."""
        kv_l = self.kv[layer]
        kv_l.index_copy_(2, self.pos, kv_new)
        return kv_l

    def noise_row(self) -> torch.Tensor:
        return self.noise.index_select(0, torch.remainder(self.step, self.noise.shape[0]))

    def update(self, tok: torch.Tensor) -> None:
        """The step's token: out[step] = tok, marked seen; pos and step advance."""
        self.out.index_copy_(0, self.step, tok)
        self.tok.copy_(tok)
        self.seen.index_fill_(1, tok, True)
        self.pos.add_(1)
        self.step.add_(1)
