"""One decode step's sampling as a single Triton kernel (CUDA): sampling.py's `process` and `draw` fused, plus the
decode state's update, in one program with no sort and no host sync (capturable in a CUDA graph).

    t = argmax(softmax(process(logits, seen, params)) / noise[step % N])     (argmax(logits) when greedy)
    out[step] = t; tok[0] = t; seen[0, t] = True; pos += 1; step += 1

sampling.py is the reference (the CPU path runs it; the tests hold the two equal): the same processors in the same
order on float32 scores, the same parameter row (sampling.param_row), the same draw. The whole vocabulary sits in
registers (BLOCK = next power of two >= V lanes, the tail at -inf); each processor runs only when its parameter
turns it on (runtime `if` on the loaded scalars). Where transformers sorts, this bisects over an order-preserving
int32 key of the float32 bits (a float's bits, the lower 31 flipped when negative: key order is float order):

    top-k    the k-th largest key: bisection on [key(-inf), max key + 1) keeping count(key >= lo) >= k, done early
             once count == k; keys < lo drop. Ties with the k-th value stay, as TopKLogitsWarper keeps them.
    top-p    T = the largest key <= max key with mass(key < T) <= 1 - top_p, the mass being the softmax of the top-k
             scores; keys < T drop, so the largest always stays. One int64 sum a bisection step: the mass in units of
             2^-40 (an exact integer sum, the same in any order) above a count; done once [lo, hi) holds <= 1 key.
    min-p    probabilities below min_p x the largest drop.
    penalty  seen scores: x * pen when x < 0, else x / pen.

Softmaxes as torch's: m = max, e = exp(x - m), p = e / sum(e) in float32 (divisions rounded to nearest). The cost is
the chain of block reductions: ~35 at the defaults (top-k 1000, top-p 0.95, penalty 1.2 on V = 6563: ~20 top-k and
~10 top-p bisection steps), 1 when greedy: 44 us on an H100 (bench/results/gpu-2026-12-08-decode-floor). Counting
four thresholds a step in one packed int64 sum (~8 top-k steps instead of ~20) measured slower there (49 us): a 64-bit
block sum costs about two 32-bit ones, so fewer steps did not pay.

Where it can differ from sampling.py (top-p only). Ties: transformers sorts, and drops those of the ascending order
whose cumulative sum is <= 1 - top_p, so within a group of exactly equal values at the boundary it drops the members
the sort put first and keeps the rest; here a group drops whole or not at all (whole when the mass up to and
including the group is <= 1 - top_p), so the kernel keeps the whole group where the reference keeps a part (which
part is the sort's choice). Rounding: the reference's float32 cumulative sum and this exact sum of the float32
probabilities can fall on either side of 1 - top_p when they are within float32 rounding of it. (top_p == 0 keeps
every token equal to the largest here, the one the sort puts last there; the engine runs it greedy: is_greedy.)
Top-k, min-p, the penalty and the draw follow the reference's ops one for one (float32 exp and sums may still round
differently by an ulp, which matters only between values that close).
"""
from __future__ import annotations

import torch

from .kernels import available, tl, triton  # noqa: F401 - triton and tl are None without Triton
from .sampling import MINP, N_PARAMS, PENALTY, TEMP, TOPK, TOPP_CUT, TOPP_ON


if triton is not None:
    _TEMP, _TOPK, _TOPP_CUT, _TOPP_ON, _MINP, _PENALTY = (tl.constexpr(i) for i in (TEMP, TOPK, TOPP_CUT, TOPP_ON,
                                                                                   MINP, PENALTY))

    @triton.jit
    def _sample_kernel(logits_ptr, params_ptr, seen_ptr, noise_ptr, out_ptr, tok_ptr, pos_ptr, step_ptr, V, N, T,
                       BLOCK: tl.constexpr, GREEDY: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        valid = offs < V
        neg_inf = float("-inf")
        step = tl.load(step_ptr)  # the state is read here, before the reductions' barriers, and written at the end
        pos = tl.load(pos_ptr)
        x = tl.load(logits_ptr + offs, mask=valid, other=neg_inf).to(tl.float32)
        if GREEDY:
            t = tl.argmax(x, axis=0, tie_break_left=True)
        else:
            temp = tl.load(params_ptr + _TEMP)
            if temp != 1.0:
                x = tl.math.div_rn(x, temp)
            x = tl.where(x == 0.0, 0.0, x)  # -0.0 -> +0.0: one key per value
            bits = x.to(tl.int32, bitcast=True)  # the key: float order is signed int order
            key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
            m = tl.max(x, axis=0)  # top-k, top-p and min-p never drop the largest: m holds until the penalty
            mbits = m.to(tl.int32, bitcast=True)
            kmax = tl.where(mbits < 0, mbits ^ 0x7FFFFFFF, mbits)
            kmin = tl.full([], -2139095041, tl.int64)  # key(-inf): no lane below it (bounds: int64 scalars)
            k = tl.load(params_ptr + _TOPK).to(tl.int32)
            if k < V:  # top-k: lo = the k-th largest key (count(key >= lo) >= k > count(key >= hi))
                lo = kmin
                hi = kmax.to(tl.int64) + 1
                while lo + 1 < hi:
                    mid = (lo + hi) >> 1  # int64: no overflow
                    c = tl.sum((key >= mid.to(tl.int32)).to(tl.int32), axis=0)
                    ge = c >= k
                    lo = tl.where(ge, mid, lo)
                    hi = tl.where(c == k, mid + 1, tl.where(ge, hi, mid))  # exactly k at or above mid: done
                x = tl.where(key >= lo.to(tl.int32), x, neg_inf)
                kmin = lo
            if tl.load(params_ptr + _TOPP_ON) != 0.0:  # top-p: keys < lo drop
                e = tl.exp(x - m)
                p = tl.math.div_rn(e, tl.sum(e, axis=0))
                # one int64 sum: the mass in units of 2^-40 (exact, in any order) above the count (16 bits: V <= 32768)
                w = ((p * 1099511627776.0).to(tl.int64) << 16) + 1
                cut = (tl.load(params_ptr + _TOPP_CUT) * 1099511627776.0).to(tl.int64)
                lo = kmin  # mass(key < lo) <= cut < mass(key < hi); hi = kmax + 1: the largest stays
                hi = kmax.to(tl.int64) + 1
                n_lo = tl.full([], -BLOCK, tl.int64)  # count(key < lo): unknown until lo moves
                n_hi = tl.full([], BLOCK, tl.int64)  # count(key < hi)
                while (lo + 1 < hi) & (n_hi - n_lo > 1):  # one key or none within [lo, hi): keys < lo are the drop
                    mid = (lo + hi) >> 1
                    acc = tl.sum(tl.where(key < mid.to(tl.int32), w, 0), axis=0)
                    ok = (acc >> 16) <= cut
                    n = acc & 0xFFFF
                    lo = tl.where(ok, mid, lo)
                    hi = tl.where(ok, hi, mid)
                    n_lo = tl.where(ok, n, n_lo)
                    n_hi = tl.where(ok, n_hi, n)
                x = tl.where(key < lo.to(tl.int32), neg_inf, x)
            minp = tl.load(params_ptr + _MINP)
            if minp > 0.0:  # min-p: the largest probability is exp(0) / sum = 1 / sum
                e = tl.exp(x - m)
                s = tl.sum(e, axis=0)
                p = tl.math.div_rn(e, s)
                pmax = tl.math.div_rn(tl.full([], 1.0, tl.float32), s)
                x = tl.where(p < minp * pmax, neg_inf, x)
            pen = tl.load(params_ptr + _PENALTY)
            if pen != 1.0:  # repetition penalty on the seen tokens
                hit = tl.load(seen_ptr + offs, mask=valid, other=0) != 0
                penalised = tl.where(x < 0.0, x * pen, tl.math.div_rn(x, pen))
                x = tl.where(hit, penalised, x)
                m = tl.max(x, axis=0)
            e = tl.exp(x - m)
            p = tl.math.div_rn(e, tl.sum(e, axis=0))
            row = step % N
            noise = tl.load(noise_ptr + row * V + offs, mask=valid, other=1.0)
            t = tl.argmax(tl.math.div_rn(p, noise), axis=0, tie_break_left=True)
        # the state update, after t is known
        t = t.to(tl.int64)
        tl.store(out_ptr + step, t, mask=step < T)
        tl.store(tok_ptr, t)
        tl.store(seen_ptr + t, tl.full([], 1, tl.int1))
        tl.store(pos_ptr, pos + 1)
        tl.store(step_ptr, step + 1)


def block_for(vocab: int) -> int:
    """Lanes of the one program: the next power of two >= vocab."""
    return 1 << max(0, int(vocab) - 1).bit_length()


def warps_for(block: int) -> int:
    """16 warps for 8192 lanes (16 a thread, no spills on sm_90), fewer for smaller vocabularies."""
    return max(4, min(16, block // 512))


def sample_step(logits: torch.Tensor, params: torch.Tensor, seen: torch.Tensor, noise: torch.Tensor, out: torch.Tensor,
                tok: torch.Tensor, pos: torch.Tensor, step: torch.Tensor, greedy: bool, num_warps: int = 0) -> None:
    """One step, in place: out[step] = tok[0] = t, seen[0, t] = True, pos += 1, step += 1; t drawn from
    softmax(sampling.process(logits, seen, params)) with noise row step % N (argmax(logits) when `greedy`).
    logits (1, V) fp16/bf16/fp32, params (1, N_PARAMS) fp32, seen (1, V) bool, noise (N, V) fp32 Exp(1) > 0,
    out (T,) int64 (a step >= T is not stored there), tok/pos/step (1,) int64; all contiguous, on one device.
    Shapes and dtypes only are checked (no host sync). num_warps: 0 = warps_for (bench/triton_step_check.py sweeps it)."""
    if triton is None:
        raise RuntimeError("sample_step needs Triton")
    V = logits.shape[-1]
    problems = [name for name, ok in (
        ("logits (1, V) contiguous, V <= 32768", logits.numel() == V <= 32768 and logits.is_contiguous()),
        ("params (1, N_PARAMS) float32", params.numel() == N_PARAMS and params.dtype == torch.float32),
        ("seen (1, V) bool contiguous", seen.numel() == V and seen.dtype == torch.bool and seen.is_contiguous()),
        ("noise (N, V) float32 contiguous", noise.dim() == 2 and noise.shape[1] == V and noise.shape[0] >= 1
         and noise.dtype == torch.float32 and noise.is_contiguous()),
        ("out (T,) int64 contiguous", out.dim() == 1 and out.dtype == torch.int64 and out.is_contiguous()),
        ("tok, pos, step (1,) int64", all(s.numel() == 1 and s.dtype == torch.int64 for s in (tok, pos, step))),
    ) if not ok]
    if problems:
        raise ValueError(f"sample_step: expected {'; '.join(problems)}")
    block = block_for(V)
    _sample_kernel[(1,)](logits, params, seen, noise, out, tok, pos, step, V, noise.shape[0], out.numel(),
                         BLOCK=block, GREEDY=bool(greedy), num_warps=int(num_warps) or warps_for(block))
