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

from dataclasses import dataclass
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
    def _gemv_kernel(x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, lnw_ptr, lnb_ptr, kv_ptr, pos_ptr, N, eps, kv_stride,
                     K: tl.constexpr, KP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, LN: tl.constexpr, ACT: tl.constexpr, RES: tl.constexpr,
                     KV: tl.constexpr, HEAD_DIM: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        out_ty = y_ptr.dtype.element_ty
        if LN:  # statistics over the whole row: KP = next power of two >= K, the tail masked to 0
            offs = tl.arange(0, KP)
            omask = offs < K
            xv = tl.load(x_ptr + offs, mask=omask, other=0.0).to(tl.float32)
            mean = tl.sum(xv, axis=0) / K
            d = tl.where(omask, xv - mean, 0.0)
            rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=0) / K + eps)
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:  # BLOCK_K divides K: no column mask (the common case: 768, 1024, 3072, 4096)
                xk = tl.load(x_ptr + ks).to(tl.float32)
                if LN:
                    xk = (xk - mean) * rstd * tl.load(lnw_ptr + ks).to(tl.float32) \
                        + tl.load(lnb_ptr + ks).to(tl.float32)
                    xk = xk.to(out_ty).to(tl.float32)
                w = tl.load(w_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
            else:  # the last tile runs past K: masked loads, zeros contribute nothing
                kmask = ks < K
                xk = tl.load(x_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
                if LN:
                    xk = (xk - mean) * rstd * tl.load(lnw_ptr + ks, mask=kmask, other=0.0).to(tl.float32) \
                        + tl.load(lnb_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
                    xk = tl.where(kmask, xk.to(out_ty).to(tl.float32), 0.0)
                w = tl.load(w_ptr + rows[:, None] * K + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                            other=0.0).to(tl.float32)
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
        if KV:  # rows [K, 3K) are this position's keys then values: also into the cache (2, H, positions, HEAD_DIM)
            pos = tl.load(pos_ptr)
            r = rows - K                          # 0 .. 2K-1: (key or value, head, dim)
            part = r // K
            head = (r % K) // HEAD_DIM
            dim = r % HEAD_DIM
            dst = kv_ptr + part * (K // HEAD_DIM) * kv_stride + head * kv_stride + pos * HEAD_DIM + dim
            tl.store(dst, y.to(out_ty), mask=rmask & (rows >= K))


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


MAX_BLOCK_K = 512
MIN_BLOCK_K = 16  # narrower tiles than this buy nothing


@dataclass(frozen=True)
class Tiling:
    """How `gemv` tiles a (N, K) weight: programs of `block_n` rows, each walking K in `block_k` columns;
    `even_k` when block_k divides K (no column masks), `kp` the power of two the layer norm's row is padded to."""
    block_n: int
    block_k: int
    even_k: bool
    kp: int
    programs: int


def tiling(N: int, K: int) -> Tiling:
    """Any N >= 1, K >= 1. block_k: the largest power of two <= 512 that divides K if that is >= 128 (768 -> 256,
    1600 -> 64 is too narrow, so 512 with a masked tail), else K's next power of two within [16, 512], masked."""
    if N < 1 or K < 1:
        raise ValueError(f"gemv needs N, K >= 1, got N={N}, K={K}")
    divisor = min(K & -K, MAX_BLOCK_K)  # largest power of two dividing K, capped
    if divisor >= 128 or divisor == next_pow2(K):
        block_k = divisor
    else:
        block_k = min(next_pow2(K), MAX_BLOCK_K)
    block_k = max(block_k, MIN_BLOCK_K)
    block_n = 4 if N <= 1024 else 8
    return Tiling(block_n, block_k, K % block_k == 0, next_pow2(K), -(-N // block_n))


def gemv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, ln: Optional[Tuple] = None, act: bool = False,
         res: Optional[torch.Tensor] = None, block_n: Optional[int] = None, num_warps: int = 4,
         kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, block_k: Optional[int] = None) -> torch.Tensor:
    """x (1, K), w (N, K) contiguous, b (N,), ln = (weight, bias, eps) over K, res (1, N) -> (1, N) in x's dtype.
    Any N and K (GPT-2 small 768/3072, medium 1024/4096, ...). block_n / block_k / num_warps override the tiling's
    (tuning).
    kv = (cache, pos): the attention's fused QKV product (N = 3K): rows K..3K-1 (keys, values) are also written into
    `cache` (2, heads, positions, head_dim), contiguous, at the position in the device tensor `pos` (1,): the
    decode step's KV write without a kernel of its own."""
    N, K = w.shape
    if not w.is_contiguous() or x.numel() != K:
        raise ValueError(f"gemv: w must be contiguous (N, K) and x of K elements; got "
                         f"w {tuple(w.shape)} contiguous={w.is_contiguous()}, x {tuple(x.shape)}")
    t = tiling(N, K)
    if block_n is not None or block_k is not None:  # tuning (bench/kernel_check.py --cold); powers of two
        bn, bk = block_n or t.block_n, block_k or t.block_k
        t = Tiling(bn, bk, K % bk == 0, t.kp, -(-N // bn))
    y = torch.empty(1, N, dtype=x.dtype, device=x.device)
    lnw, lnb, eps = ln if ln is not None else (b, b, 0.0)
    cache, pos = kv if kv is not None else (y, y)
    head_dim, stride = 1, 0
    if kv is not None:
        if N != 3 * K or not cache.is_contiguous() or cache.dim() != 4 or cache.shape[0] != 2 \
                or cache.shape[1] * cache.shape[3] != K:
            raise ValueError(f"gemv kv: needs N = 3K and a contiguous (2, heads, positions, head_dim) cache of "
                             f"heads * head_dim = K; got N={N}, K={K}, cache {tuple(cache.shape)}")
        head_dim, stride = int(cache.shape[3]), int(cache.shape[2] * cache.shape[3])
    _gemv_kernel[(t.programs,)](
        x, w, b, res if res is not None else b, y, lnw, lnb, cache, pos, N, float(eps), stride,
        K=K, KP=t.kp, BLOCK_N=t.block_n, BLOCK_K=t.block_k, EVEN_K=t.even_k,
        LN=ln is not None, ACT=bool(act), RES=res is not None, KV=kv is not None, HEAD_DIM=head_dim,
        num_warps=num_warps)
    return y


# shapes of the decode step's products: (N, K, LN, ACT, RES) per GPT-2 width D (qkv, attention out, MLP up, MLP down,
# speech head)
def step_shapes(D: int, vocab: int = 6563):
    return [(3 * D, D, True, False, False), (D, D, False, False, True), (4 * D, D, True, True, False),
            (D, 4 * D, False, False, True), (vocab, D, True, False, False)]


def check(shapes, dtype=torch.float16, device="cuda", seed: int = 0):
    """`gemv` against the PyTorch ops FastT3 uses (layer_norm, addmm, gelu tanh, residual add) on random data:
    one dict per shape with the relative error (max |got - ref| / max |ref|) and whether the argmax agrees."""
    import torch.nn.functional as F
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for N, K, ln, act, res in shapes:
        r = lambda *s: torch.randn(*s, generator=g, device=device, dtype=torch.float32)  # noqa: E731
        x, w, b = r(1, K).to(dtype), (r(N, K) / K ** 0.5).to(dtype), (0.1 * r(N)).to(dtype)
        lnp = (1 + 0.1 * r(K)).to(dtype), (0.1 * r(K)).to(dtype), 1e-5
        rv = r(1, N).to(dtype)
        h = F.layer_norm(x, (K,), lnp[0], lnp[1], lnp[2]) if ln else x
        ref = torch.addmm(b, h, w.t())
        if act:
            ref = F.gelu(ref, approximate="tanh")
        if res:
            ref = ref + rv
        got = gemv(x, w, b, ln=lnp if ln else None, act=act, res=rv if res else None)
        err = float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-6))
        out.append({"N": N, "K": K, "ln": ln, "act": act, "res": res, "dtype": str(dtype).replace("torch.", ""),
                    "tiling": tiling(N, K).__dict__, "rel_err": err,
                    "same_argmax": bool(torch.equal(got.argmax(-1), ref.argmax(-1)))})
    return out
