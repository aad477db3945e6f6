"""Triton kernels for FastT3's decode step (CUDA): one fused kernel per GPT-2 matrix-vector product.

    y = act(LN(x) @ W^T + b) + r        (LN, act = gelu_new and the residual r are optional)

with W stored (out, in) row-major, so that each program reads whole, contiguous weight rows. cuBLAS needs ~4-6 us
per single-row product on an H100 whatever its size (2-8 MB: 0.4-1.8 TB/s), and the layer norms, bias adds, GELU
and residual adds around it are ~6 more kernels per layer; this kernel folds them into 4 per layer. Rounding
follows upstream's op order (the layer norm's output, the product, the GELU are rounded to the model dtype where
PyTorch rounds them). FastT3 uses these only after checking them against the PyTorch ops on the real weights
(`FastT3(kernels=...)`); nothing here is needed on CPU.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

try:  # Triton ships with CUDA builds of PyTorch; absent on CPU-only installs
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, lnw_ptr, lnb_ptr, N, eps,
                     K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     LN: tl.constexpr, ACT: tl.constexpr, RES: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        out_ty = y_ptr.dtype.element_ty
        if LN:
            offs = tl.arange(0, K)
            xv = tl.load(x_ptr + offs).to(tl.float32)
            mean = tl.sum(xv, axis=0) / K
            d = xv - mean
            rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / K + eps)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            xk = tl.load(x_ptr + ks).to(tl.float32)
            if LN:
                xk = (xk - mean) * rstd * tl.load(lnw_ptr + ks).to(tl.float32) + tl.load(lnb_ptr + ks).to(tl.float32)
                xk = xk.to(out_ty).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
            acc += w * xk[None, :]
        y = tl.sum(acc, axis=1) + tl.load(b_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        if ACT:  # gelu_new: 0.5 y (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3)))
            y = y.to(out_ty).to(tl.float32)
            z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
            t = 2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0
            y = 0.5 * y * (1.0 + t)
        if RES:
            y = y.to(out_ty).to(tl.float32) + tl.load(r_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        tl.store(y_ptr + rows, y.to(out_ty), mask=rmask)


def _blocks(N: int, K: int) -> Tuple[int, int]:
    block_k = min(K, 512)
    block_n = 4 if N <= 1024 else 8
    return block_n, block_k


def gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ln: Optional[Tuple] = None, act: bool = False,
         res: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x (1, K), w (N, K) contiguous, b (N,), ln = (weight, bias, eps) over K, res (1, N) -> (1, N) in x's dtype.
    K must be a power of two (GPT-2: 1024 and 4096)."""
    N, K = w.shape
    if not w.is_contiguous() or x.numel() != K or K & (K - 1):
        raise ValueError(f"gemv: w must be contiguous (N, K) with K a power of two, x of K elements; got "
                         f"w {tuple(w.shape)} contiguous={w.is_contiguous()}, x {tuple(x.shape)}")
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    block_n, block_k = _blocks(N, K)
    lnw, lnb, eps = ln if ln is not None else (b, b, 0.0)
    _gemv_kernel[(triton.cdiv(N, block_n),)](
        x, w, b, res if res is not None else b, y, lnw, lnb, N, float(eps),
        K=K, BLOCK_N=block_n, BLOCK_K=block_k, LN=ln is not None, ACT=bool(act), RES=res is not None,
        num_warps=4)
    return y
