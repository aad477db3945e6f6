"""Choices FastT3 makes once per instance on CUDA, by checking and timing captured code on the real weights: the
storage order of each block matrix (`tune_layouts`), and the decode step's kernels and sampler (`pick_kernels`:
the fused Triton kernels where they agree with the PyTorch ops and, for "auto", run faster).
Each choice is an optimisation only: on any error the PyTorch ops stay.
"""
from __future__ import annotations

import math
from typing import Any, Dict

import torch

from .graphs import record, time_replay
from .step import decode_step, forward_logits
from .weights import ROLES

BIAS = {"attn_w": "attn_b", "proj_w": "proj_b", "fc_w": "fc_b", "mproj_w": "mproj_b"}


def _addmm_ms(b, x, w, device, reps: int = 20) -> float:
    """GPU ms of one addmm(b, x, w): a graph of `reps` calls, its replay time divided by them."""
    graph = record(lambda: torch.addmm(b, x, w), device, reps=reps, warmup=3)
    graph.replay()
    return time_replay(graph, device, 1) / reps


def tune_layouts(fast) -> Dict[str, Any]:
    """For each block matrix role, keep the storage order whose single-row addmm (the decode GEMV) runs faster on
    this GPU: Conv1D's (in, out) row-major, or (out, in) row-major seen through a transposed view."""
    w, chosen = fast.weights, {}
    try:
        with torch.inference_mode():
            for role in ROLES:
                p, b = getattr(w.layers[0], role), getattr(w.layers[0], BIAS[role])
                x = torch.randn(1, p.shape[0], device=fast.device, dtype=w.dtype)
                alt = p.detach().t().contiguous().t() if p.is_contiguous() else p.detach().contiguous()
                t_cur, t_alt = _addmm_ms(b, x, p, fast.device), _addmm_ms(b, x, alt, fast.device)
                del alt
                chosen[role] = {"us_cur": round(1000 * t_cur, 2), "us_alt": round(1000 * t_alt, 2),
                                "flipped": t_alt < 0.9 * t_cur, "row_major_in_out": p.is_contiguous()}
        for role in ROLES:  # parameters stay normal tensors (not inference tensors): later loads must work
            if chosen[role]["flipped"]:
                w.flip(role)
                chosen[role]["row_major_in_out"] = not chosen[role]["row_major_in_out"]
        torch.cuda.synchronize(fast.device)
    except Exception as exc:  # noqa: BLE001 - timing is an optimisation only
        chosen["error"] = f"{type(exc).__name__}: {exc}"
    return chosen


def _step_ms(fast, n: int, kernels: str, sampler: str, attention: str = "sdpa") -> float:
    """GPU ms of one sampled decode step with these kernels (captured, replayed)."""
    st, w = fast.state, fast.weights

    def at_middle():
        st.pos.fill_(n // 2)
        st.step.fill_(1)
    graph = record(lambda: decode_step(w, st, n, False, True, kernels, sampler, attention), fast.device, st.reset)
    ms = time_replay(graph, fast.device, 20, at_middle)
    del graph
    st.reset()
    return ms


def _rel_err(got, ref) -> float:
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def _tolerance(fast) -> float:
    return 1e-4 if fast.weights.dtype == torch.float32 else 3e-2


def _pick_attention(fast, n: int, kernels: str, sampler: str, info: Dict[str, Any]) -> str:
    """Triton's decode attention where the step's logits agree with SDPA's and, for "auto", the step runs faster."""
    st, w = fast.state, fast.weights
    try:
        st.reset()
        st.tok.fill_(fast.start_token)
        st.pos.fill_(n // 2)
        ref = forward_logits(w, st, n, True, kernels, "sdpa").float()
        st.pos.fill_(n // 2)
        got = forward_logits(w, st, n, True, kernels, "triton").float()
        err = _rel_err(got, ref)
        info["attention_rel_err"] = err
        if not (err <= _tolerance(fast) and math.isfinite(err)):
            info["attention_rejected"] = f"relative error {err:.2e}"
            return "sdpa"
        if fast.attention_pref == "triton":
            return "triton"
        t_sdpa = _step_ms(fast, n, kernels, sampler, "sdpa")
        t_triton = _step_ms(fast, n, kernels, sampler, "triton")
        info.update(step_ms_sdpa=round(t_sdpa, 4), step_ms_triton_attention=round(t_triton, 4))
        return "triton" if t_triton < 0.97 * t_sdpa else "sdpa"
    except Exception as exc:  # noqa: BLE001 - an optimisation only: SDPA always works
        info["attention_error"] = f"{type(exc).__name__}: {exc}"[:400]
        return "sdpa"
    finally:
        st.reset()


def _sampler_agrees(fast) -> bool:
    """The Triton sampler draws the PyTorch sampler's tokens from the same logits, noise and settings."""
    from .sample_kernel import sample_step
    from .sampling import draw, process
    st = fast.state
    g = torch.Generator(device=fast.device).manual_seed(0)
    for _ in range(4):
        logits = 3 * torch.randn(1, st.vocab, generator=g, device=fast.device)  # float32: no ties to split
        st.reset()
        st.seen.zero_()
        st.seen[:, :64] = True
        st.noise.exponential_(generator=g)
        want = draw(process(logits, st.seen, st.params), st.noise_row())
        sample_step(logits, st.params, st.seen, st.noise, st.out, st.tok, st.pos, st.step, False)
        if not torch.equal(st.tok, want):
            return False
    return True


def pick_kernels(fast) -> Dict[str, Any]:
    """The Triton GEMV kernels if they agree with the PyTorch ops on the real weights (same state, one step) and, for
    "auto", run faster; the Triton sampler where it draws the PyTorch sampler's tokens; then Triton's attention
    likewise (_pick_attention). Sets fast.kernels, fast.sampler and fast.attention; returns what was measured."""
    info: Dict[str, Any] = {}
    kernels, sampler, attention = "torch", "torch", "sdpa"
    st, w = fast.state, fast.weights
    try:
        from . import kernels as tk
        from . import sample_kernel as sk
        with torch.inference_mode():
            if fast.sampler_pref != "torch" and sk.available():
                st.set_sampling()  # upstream's defaults
                sampler = "triton" if _sampler_agrees(fast) else "torch"
                info["sampler_agrees"] = sampler == "triton"
            if fast.kernels_pref != "torch" and tk.available():
                w.set_out_in_layout()
                n = fast.bucket_len(min(st.capacity, 2 * fast.bucket))
                st.reset()
                st.tok.fill_(fast.start_token)
                st.pos.fill_(n // 2)
                ref = forward_logits(w, st, n, True, "torch").float()
                st.pos.fill_(n // 2)
                got = forward_logits(w, st, n, True, "triton").float()
                err = _rel_err(got, ref)
                info.update(rel_err=err, same_argmax=bool(torch.equal(got.argmax(-1), ref.argmax(-1))))
                tol = _tolerance(fast)
                if not (err <= tol and math.isfinite(err)):
                    info["rejected"] = f"relative error {err:.2e} > {tol:.0e}"
                elif fast.kernels_pref == "triton":
                    kernels = "triton"
                else:
                    t_torch, t_triton = _step_ms(fast, n, "torch", sampler), _step_ms(fast, n, "triton", sampler)
                    info.update(step_ms_torch=round(t_torch, 4), step_ms_triton=round(t_triton, 4))
                    kernels = "triton" if t_triton < 0.97 * t_torch else "torch"
            st.reset()
        torch.cuda.synchronize(fast.device)
    except Exception as exc:  # noqa: BLE001 - an optimisation only: PyTorch ops always work
        info["error"] = f"{type(exc).__name__}: {exc}"[:400]
        kernels, sampler = "torch", "torch"
    if fast.attention_pref != "sdpa" and fast.device.type == "cuda":
        from . import attention as ta
        if ta.available():
            with torch.inference_mode():
                attention = _pick_attention(fast, fast.bucket_len(min(st.capacity, 2 * fast.bucket)), kernels,
                                            sampler, info)
    info.update(chosen=kernels, sampler=sampler, attention=attention)
    fast.kernels, fast.sampler, fast.attention = kernels, sampler, attention
    return info
