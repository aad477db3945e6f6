"""The decode step's attention in Triton (CUDA): one query per head against the cache, split along the positions
(flash-decoding) so that every SM reads a share of the keys and values, then one small kernel combines the splits.

    a[h] = softmax(q[h] . K[h, :pos+1]^T * scale) V[h, :pos+1]        (positions after `pos` are left out)

`pos` is read on the device, so one captured graph serves every position of its attention-length bucket `n` (the
grid covers n positions; blocks wholly after `pos` write empty partials). Scores, softmax and sums are float32; the
output is rounded to the cache's dtype, as scaled_dot_product_attention rounds its output. FastT3 uses it only where
it agrees with the PyTorch step and makes the captured step faster (tuning.py).
"""
from __future__ import annotations

import math

import torch

from .kernels import available, next_pow2, tl, triton  # noqa: F401 - triton and tl are None without Triton

BLOCK_N = 64  # positions per split


if triton is not None:
    @triton.jit
    def _split_kernel(q_ptr, kv_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr, part_stride, head_stride, n_splits, scale,
                      HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
        h = tl.program_id(0)
        s = tl.program_id(1)
        pos = tl.load(pos_ptr)
        rows = s * BLOCK + tl.arange(0, BLOCK)
        dims = tl.arange(0, HEAD_DIM)
        live = rows <= pos
        q = tl.load(q_ptr + h * HEAD_DIM + dims).to(tl.float32)
        base = kv_ptr + h * head_stride + rows[:, None] * HEAD_DIM + dims[None, :]
        k = tl.load(base, mask=live[:, None], other=0.0).to(tl.float32)
        x = tl.where(live, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
        m = tl.max(x, axis=0)
        p = tl.where(live, tl.exp(x - m), 0.0)
        v = tl.load(base + part_stride, mask=live[:, None], other=0.0).to(tl.float32)
        out = h * n_splits + s
        tl.store(m_ptr + out, m)
        tl.store(l_ptr + out, tl.sum(p, axis=0))
        tl.store(acc_ptr + out * HEAD_DIM + dims, tl.sum(p[:, None] * v, axis=0))

    @triton.jit
    def _combine_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, n_splits, HEAD_DIM: tl.constexpr, SPLITS: tl.constexpr):
        h = tl.program_id(0)
        s = tl.arange(0, SPLITS)
        ok = s < n_splits
        m = tl.load(m_ptr + h * n_splits + s, mask=ok, other=float("-inf"))
        big = tl.max(m, axis=0)
        wgt = tl.where(ok & (m > float("-inf")), tl.exp(m - big), 0.0)
        denom = tl.sum(wgt * tl.load(l_ptr + h * n_splits + s, mask=ok, other=0.0), axis=0)
        dims = tl.arange(0, HEAD_DIM)
        acc = tl.load(acc_ptr + (h * n_splits + s)[:, None] * HEAD_DIM + dims[None, :], mask=ok[:, None], other=0.0)
        o = tl.sum(wgt[:, None] * acc, axis=0) / denom
        tl.store(o_ptr + h * HEAD_DIM + dims, o.to(o_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, cache: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
    """q (heads * head_dim) values of this position, cache (2, heads, positions, head_dim) contiguous with this
    position's keys/values already written, pos (1,) on the device, n the attention length covered (>= pos + 1):
    the attention output (1, heads * head_dim) in the cache's dtype."""
    if triton is None:
        raise RuntimeError("Triton is not available")
    _, H, P, Dh = cache.shape
    if not cache.is_contiguous() or q.numel() != H * Dh or n > P or Dh != next_pow2(Dh):
        raise ValueError(f"decode_attention: cache {tuple(cache.shape)} contiguous={cache.is_contiguous()}, "
                         f"q of {q.numel()} values, n={n}: needs a contiguous cache, q of heads * head_dim values, "
                         "n <= positions and a power-of-two head_dim")
    splits = -(-n // BLOCK_N)
    m = torch.empty(H, splits, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    acc = torch.empty(H, splits, Dh, dtype=torch.float32, device=q.device)
    out = torch.empty(1, H * Dh, dtype=cache.dtype, device=q.device)
    _split_kernel[(H, splits)](q, cache, pos, m, l, acc, H * P * Dh, P * Dh, splits, 1.0 / math.sqrt(Dh),
                               HEAD_DIM=Dh, BLOCK=BLOCK_N, num_warps=4)
    _combine_kernel[(H,)](m, l, acc, out, splits, HEAD_DIM=Dh, SPLITS=next_pow2(splits), num_warps=4)
    return out
