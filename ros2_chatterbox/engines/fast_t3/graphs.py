"""`GraphCache`: FastT3's captured decode steps, one per (attention-length bucket, greedy), in one memory pool, and
the one way they are captured (warm-up on a side stream, then record). What happens when a capture fails is one
rule, in FastT3 (generator.py: `_capture_failed`): Triton parts -> PyTorch ops -> eager.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Tuple

import torch

from .step import sdpa_backends

_SIDE_STREAMS: Dict[Any, Any] = {}

Key = Tuple[int, bool]  # (attention length, greedy)


def side_stream(device):
    """One capture stream per device for the whole process. cuBLAS keeps a workspace (32 MiB on Hopper) for every
    stream it ever ran on, for the life of the process: a fresh stream per load would leak it on every reload."""
    key = torch.device(device)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(key)
    return _SIDE_STREAMS[key]


def record(fn: Callable[[], None], device, reset: Callable[[], None] = lambda: None, pool=None, reps: int = 1,
           warmup: int = 2):
    """A CUDA graph of `reps` calls of `fn`, after `warmup` eager calls on the side stream (`reset` before each
    call and after the capture: the state fn mutates). Captured with cuDNN attention allowed."""
    stream = side_stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), sdpa_backends(cudnn=True):
        for _ in range(warmup):
            reset()
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    reset()
    graph = torch.cuda.CUDAGraph()
    with sdpa_backends(cudnn=True), torch.cuda.graph(graph, pool=pool, stream=stream):
        for _ in range(reps):
            fn()
    torch.cuda.synchronize(device)
    reset()
    return graph


def time_replay(graph, device, reps: int, before: Callable[[], None] = lambda: None, tries: int = 3) -> float:
    """Best GPU ms of one replay of `graph`, over `tries` runs of `reps` replays (`before` each run)."""
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(tries):
        before()
        e0.record()
        for _ in range(reps):
            graph.replay()
        e1.record()
        e1.synchronize()
        best = min(best, e0.elapsed_time(e1) / reps)
    return best


class GraphCache:
    """Captured decode steps keyed by (attention length, greedy). `enabled` False: everything runs eagerly."""

    def __init__(self, device, enabled: bool):
        self.device = torch.device(device)
        self.enabled = bool(enabled) and self.device.type == "cuda"
        self.graphs: Dict[Key, Any] = {}
        self.failures: List[str] = []
        self.pool = None
        self.capture_s = 0.0

    def __len__(self) -> int:
        return len(self.graphs)

    def __contains__(self, key: Key) -> bool:
        return key in self.graphs

    def get(self, key: Key):
        return self.graphs.get(key) if self.enabled else None

    def clear(self) -> None:
        self.graphs.clear()

    def disable(self) -> None:
        self.enabled = False
        self.graphs.clear()

    def capture(self, key: Key, step: Callable[[], None], reset: Callable[[], None]) -> None:
        """Record `step` (one decode step) for `key` into this cache's pool; raises what the capture raised."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                self.graphs[key] = record(step, self.device, reset, pool=self.pool)
        except Exception:
            try:
                torch.cuda.synchronize(self.device)
            except Exception:  # noqa: BLE001 - the capture's own error is the one to report
                pass
            raise
        self.capture_s += time.perf_counter() - t0
