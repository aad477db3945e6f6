"""CUDA graphs for FastT3's decode step: capture per attention-length bucket and sampling flavour, the fallbacks
when capture fails, and the once-per-instance choices made by timing captured graphs (weight storage order,
Triton or PyTorch kernels).

`GraphsMixin` is a part of `FastT3` (generator.py).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Dict

import torch

from .sampling import SamplingSettings
from .step import _glue, _sdpa_backends

log = logging.getLogger(__name__)

_SIDE_STREAMS: Dict[Any, Any] = {}


def side_stream(device):
    """One capture stream per device for the whole process. cuBLAS keeps a workspace (32 MiB on Hopper) for every
    stream it ever ran on, for the life of the process: a fresh stream per load would leak it on every reload."""
    key = torch.device(device)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(key)
    return _SIDE_STREAMS[key]




class GraphsMixin:
    """Graph capture, buckets, layouts and kernel choice of FastT3."""

    def _bucket_len(self, n: int) -> int:
        return min(self.capacity, int(math.ceil(n / self.bucket) * self.bucket))

    def _reset_state(self) -> None:
        self.pos.zero_()
        self.step.zero_()
        self.tok.zero_()

    # -- weight layout ----------------------------------------------------------------------------------------------
    def _time_addmm(self, b, x, w, reps: int = 20) -> float:
        """GPU time (ms) of one addmm(b, x, w), from a captured graph of `reps` calls (launch gaps excluded)."""
        stream = side_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                torch.addmm(b, x, w)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                torch.addmm(b, x, w)
        graph.replay()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            e0.record()
            graph.replay()
            e1.record()
            e1.synchronize()
            best = min(best, e0.elapsed_time(e1) / reps)
        del graph
        return best

    def _tune_layouts(self) -> None:
        """CUDA: for each GPT-2 weight role, keep the storage order whose single-row addmm (the decode GEMV) runs
        faster on this GPU: Conv1D's (in, out) row-major, or (out, in) row-major seen through a transposed view.
        The parameters keep their shape and values (upstream's Conv1D works with either); done once per instance."""
        if (self.device.type != "cuda" or self.stats.get("layouts") is not None or not self.tune_layouts
                or self._kernels == "triton"):
            return
        roles = {"attn": ("attn_w", "attn_b"), "proj": ("proj_w", "proj_b"), "fc": ("fc_w", "fc_b"),
                 "mproj": ("mproj_w", "mproj_b")}
        chosen = {}
        try:
            with torch.inference_mode():
                for role, (wn, bn) in roles.items():
                    w, b = getattr(self.layers[0], wn), getattr(self.layers[0], bn)
                    x = torch.randn(1, w.shape[0], device=self.device, dtype=self.dtype)
                    alt = w.detach().t().contiguous().t() if w.is_contiguous() else w.detach().contiguous()
                    t_cur, t_alt = self._time_addmm(b, x, w), self._time_addmm(b, x, alt)
                    del alt
                    flip = t_alt < 0.9 * t_cur
                    chosen[role] = {"us_cur": round(1000 * t_cur, 2), "us_alt": round(1000 * t_alt, 2),
                                    "flipped": flip, "row_major_in_out": w.is_contiguous() != flip}
            # parameters must stay normal tensors (not inference tensors): later in-place loads must work
            with torch.inference_mode(False), torch.no_grad():
                for role, (wn, _) in roles.items():
                    if not chosen[role]["flipped"]:
                        continue
                    for L in self.layers:
                        p = getattr(L, wn)
                        p.data = p.data.t().contiguous().t() if p.is_contiguous() else p.data.contiguous()
            torch.cuda.synchronize(self.device)
        except Exception as exc:  # timing is an optimisation only
            chosen["error"] = f"{type(exc).__name__}: {exc}"
        self.stats["layouts"] = chosen
        self._graphs.clear()
        self._weights_fp = self._weight_fingerprint()

    def _set_out_in_layout(self) -> None:
        """Store every block weight as (out, in) row-major, seen through a transposed view (shape and values
        unchanged; upstream's Conv1D works either way). The Triton kernels read whole weight rows."""
        with torch.inference_mode(False), torch.no_grad():
            for L in self.layers:
                for wn in ("attn_w", "proj_w", "fc_w", "mproj_w"):
                    p = getattr(L, wn)
                    if not p.t().is_contiguous():
                        p.data = p.data.t().contiguous().t()
        self._graphs.clear()
        self._weights_fp = self._weight_fingerprint()

    def _time_graph(self, n: int, kernels: str, reps: int = 20) -> float:
        """GPU ms of one greedy decode step with these kernels (captured, replayed)."""
        stream = side_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), _sdpa_backends(cudnn=True):
            for _ in range(2):
                self._reset_state()
                self._decode_step(n, "greedy", True, None, kernels)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with _sdpa_backends(cudnn=True), torch.cuda.graph(graph, stream=stream):
            self._decode_step(n, "greedy", True, None, kernels)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            self.pos.fill_(n // 2)
            self.step.fill_(1)
            e0.record()
            for _ in range(reps):
                graph.replay()
            e1.record()
            e1.synchronize()
            best = min(best, e0.elapsed_time(e1) / reps)
        del graph
        self._reset_state()
        return best

    def _pick_kernels(self) -> None:
        """Choose the decode step's kernels once (CUDA graphs only): the Triton kernels if they are available,
        agree with the PyTorch ops on the real weights (same state, one step) and, for 'auto', run faster."""
        if self._kernels is not None:
            return
        choice, info = "torch", {}
        try:
            from . import kernels as tk
            if self.kernels_pref != "torch" and self.device.type == "cuda" and tk.available():
                self._set_out_in_layout()
                n = self._bucket_len(min(self.capacity, 2 * self.bucket))
                with torch.inference_mode():
                    self._reset_state()
                    self.tok.fill_(self.start_token)
                    self.pos.fill_(n // 2)
                    ref = self._forward_logits(n, True, None, "torch").float()
                    self.pos.fill_(n // 2)
                    got = self._forward_logits(n, True, None, "triton").float()
                    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
                    same_top = bool(torch.equal(got.argmax(-1), ref.argmax(-1)))
                    info.update(rel_err=err, same_argmax=same_top)
                    tol = 1e-4 if self.dtype == torch.float32 else 3e-2
                    if err <= tol and math.isfinite(err):
                        if self.kernels_pref == "triton":
                            choice = "triton"
                        else:
                            t_torch, t_triton = self._time_graph(n, "torch"), self._time_graph(n, "triton")
                            info.update(step_ms_torch=round(t_torch, 4), step_ms_triton=round(t_triton, 4))
                            choice = "triton" if t_triton < 0.97 * t_torch else "torch"
                    else:
                        info["rejected"] = f"relative error {err:.2e} > {tol:.0e}"
                    self._reset_state()
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # an optimisation only: PyTorch ops always work
            info["error"] = f"{type(exc).__name__}: {exc}"[:400]
            choice = "torch"
        info["chosen"] = choice
        self._kernels = choice
        self.stats["kernels"] = info
        self._graphs.clear()

    def _capture(self, n: int, mode: str):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        kernels = self._kernels or "torch"
        glue = self._glue_fn
        if self.use_compile and glue is _glue and kernels == "torch":
            glue = torch.compile(_glue, dynamic=False, fullgraph=True)
            self._glue_fn = glue
        stream = side_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), _sdpa_backends(cudnn=True):
            for _ in range(2):
                self._reset_state()
                self._decode_step(n, mode, True, glue, kernels)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._reset_state()
        graph = torch.cuda.CUDAGraph()
        with _sdpa_backends(cudnn=True), torch.cuda.graph(graph, pool=self._pool, stream=stream):
            self._decode_step(n, mode, True, glue, kernels)
        torch.cuda.synchronize(self.device)
        self._reset_state()
        return graph

    def _ensure_graphs(self, n_min: int, n_max: int, s: SamplingSettings) -> None:
        """Capture the graphs for attention lengths n_min..n_max (their buckets) and these settings' flavour.
        On failure: without compile; for sampling, with top-k instead of sort; then eager. Each failure is logged
        and kept in `info()['graph_failures']`."""
        if not self.use_graphs:
            return
        lengths = sorted({self._bucket_len(b) for b in range(self._bucket_len(max(1, n_min)),
                                                             n_max + self.bucket, self.bucket)})
        for n in lengths:
            while self.use_graphs and (n, self._mode(s)) not in self._graphs:
                mode = self._mode(s)
                t0 = time.perf_counter()
                try:
                    with torch.inference_mode():
                        self._graphs[(n, mode)] = self._capture(n, mode)
                    self.stats["capture_s"] = self.stats.get("capture_s", 0.0) + time.perf_counter() - t0
                except Exception as exc:
                    msg = f"{mode}{' compiled' if self.use_compile else ''}: {type(exc).__name__}: {exc}"
                    self._graph_failures.append(msg[:600])
                    self._graphs = {k: g for k, g in self._graphs.items() if k[1] != mode}
                    try:
                        torch.cuda.synchronize(self.device)
                    except Exception:
                        pass
                    if self._kernels == "triton":
                        log.warning("FastT3: CUDA graph capture with Triton kernels failed (%s); PyTorch ops", msg)
                        self._kernels = "torch"
                        self.stats.setdefault("kernels", {})["capture_error"] = msg[:300]
                        self._graphs.clear()
                    elif self.use_compile:
                        log.warning("FastT3: compiled CUDA graph capture failed (%s); without compile", msg)
                        self.use_compile = False
                        self._glue_fn = _glue
                        self._graphs.clear()
                    elif mode == "sort":
                        log.warning("FastT3: CUDA graph capture failed (%s); sampling with top-k", msg)
                        self._sampler = "topk"
                    else:
                        log.warning("FastT3: CUDA graph capture failed (%s); running eager", msg)
                        self.use_graphs = False
                        self._graphs.clear()
                        return
                    return self._ensure_graphs(n_min, n_max, s)  # again, from the first length

