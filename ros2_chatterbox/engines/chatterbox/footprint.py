"""Where the engine's memory is: weights per module and dtype, the fast path's KV cache and buffers, the CUDA graph
pool, the rest of PyTorch's cache (S3Gen's workspace), and the host side (libraries, heap, other anonymous memory).

On a Jetson the CPU and the GPU share one RAM, so host RSS + device memory is what the node costs the robot; this is
the breakdown of that sum that /api/model-info (`engine.memory.footprint`), /diagnostics and bench/memory_breakdown.py
show. Pure reading: never allocates on the device, never raises.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Tuple

_MB = 1024.0 * 1024.0

# The modules of a loaded ChatterboxTurboTTS, by what they do. The S3 tokenizer and the speaker encoder only turn a
# reference recording into a voice's conditioning; synthesis needs T3, the flow and HiFT.
PARTS: Tuple[Tuple[str, str], ...] = (
    ("t3", "t3"),
    ("s3gen_flow", "s3gen.flow"),
    ("hift_vocoder", "s3gen.mel2wav"),
    ("s3_tokenizer", "s3gen.tokenizer"),
    ("speaker_encoder", "s3gen.speaker_encoder"),
    ("voice_encoder", "ve"),
)


def _get(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _tensors(module) -> Iterable[Any]:
    yield from module.parameters()
    yield from module.buffers()


def weights(model) -> Dict[str, Dict[str, Any]]:
    """{part: {"mb", "params_m", "where": {"cuda:0 float16": mb, ...}}} for each module of PARTS that is loaded,
    each storage counted once (in the first part that holds it)."""
    seen = set()
    out: Dict[str, Dict[str, Any]] = {}
    for name, path in PARTS:
        module = _get(model, path)
        if module is None or not hasattr(module, "parameters"):
            continue
        where: Dict[str, float] = {}
        total, params = 0, 0
        for t in _tensors(module):
            key = (str(t.device), t.untyped_storage().data_ptr())
            if key in seen:
                continue
            seen.add(key)
            n = t.untyped_storage().nbytes()
            label = f"{t.device} {str(t.dtype).replace('torch.', '')}"
            where[label] = where.get(label, 0.0) + n / _MB
            total += n
            params += t.numel() if t.is_floating_point() else 0
        out[name] = {"mb": round(total / _MB, 1), "params_m": round(params / 1e6, 2),
                     "where": {k: round(v, 1) for k, v in sorted(where.items())}}
    return out


def host() -> Dict[str, float]:
    """Host RSS split by kind (MiB, from /proc/self/smaps): shared libraries and other files, the brk heap, and
    other anonymous memory (glibc's mmap'd chunks and arenas, CPU tensors, Python's arenas, thread stacks)."""
    files = heap = anon = 0
    name = ""
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if not head.endswith(":"):
                    parts = line.split(None, 5)
                    name = parts[5].strip() if len(parts) == 6 else ""
                elif head == "Rss:":
                    kb = int(line.split()[1])
                    if name == "[heap]":
                        heap += kb
                    elif name.startswith("/") and not name.startswith("/dev/"):
                        files += kb
                    else:
                        anon += kb
    except (OSError, ValueError, IndexError):
        return {}
    return {"rss_mb": round((files + heap + anon) / 1024, 1), "libraries_mb": round(files / 1024, 1),
            "heap_mb": round(heap / 1024, 1), "other_anon_mb": round(anon / 1024, 1)}


def malloc_in_use_mb() -> Optional[float]:
    """Bytes glibc's malloc has handed out and not got back (all arenas, mmap'd chunks included), or None."""
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        return round((info.uordblks + info.hblkhd) / _MB, 1)
    except (OSError, AttributeError):
        return None


def device(device_name: str, fast=None, graphs=None) -> Dict[str, Any]:
    """PyTorch's share of the device (MiB): reserved, allocated, the CUDA graph pools (T3's and S3Gen's together in
    graph_pool_mb, S3Gen's also alone), the fast path's KV cache and buffers; empty off CUDA."""
    if not device_name.startswith("cuda"):
        return {}
    try:
        import torch
        dev = torch.device(device_name)
        out: Dict[str, Any] = {"reserved_mb": round(torch.cuda.memory_reserved(dev) / _MB, 1),
                               "allocated_mb": round(torch.cuda.memory_allocated(dev) / _MB, 1)}
        pools = {"t3": getattr(getattr(fast, "graphs", None), "pool", None), "s3gen": getattr(graphs, "pool", None)}
        pool_bytes = {name: 0 for name in pools}
        if any(p is not None for p in pools.values()):
            for seg in torch.cuda.memory_snapshot():
                for name, p in pools.items():
                    if p is not None and tuple(seg.get("segment_pool_id", (0, 0))) == tuple(p):
                        pool_bytes[name] += int(seg.get("total_size", 0))
        out["graph_pool_mb"] = round(sum(pool_bytes.values()) / _MB, 1)
        if graphs is not None:
            out["s3gen_graph_pool_mb"] = round(pool_bytes["s3gen"] / _MB, 1)
            out["s3gen_graph_buffers_mb"] = round(graphs.buffer_bytes() / _MB, 1)
        if fast is not None and getattr(fast, "state", None) is not None:
            buffers = sum(t.untyped_storage().nbytes() for t in vars(fast.state).values()
                          if torch.is_tensor(t) and t.device.type == "cuda")
            out["kv_cache_mb"] = round(fast.kv.untyped_storage().nbytes() / _MB, 1)
            out["fast_path_buffers_mb"] = round(buffers / _MB, 1)
        return out
    except Exception:  # noqa: BLE001 - status must never fail
        return {}


def footprint(model, device_name: str, fast=None, graphs=None) -> Dict[str, Any]:
    """The whole breakdown: weights per part, the device side (with what the cache holds beyond weights and the fast
    path: S3Gen's and the prefill's workspace) and the host side."""
    out: Dict[str, Any] = {}
    try:
        w = weights(model) if model is not None else {}
    except Exception:  # noqa: BLE001
        w = {}
    out["weights"] = w
    out["weights_mb"] = round(sum(p["mb"] for p in w.values()), 1)
    dev = device(device_name, fast, graphs)
    if dev:
        on_device = sum(mb for p in w.values() for where, mb in p["where"].items() if where.startswith("cuda"))
        fixed = (on_device + dev.get("fast_path_buffers_mb", 0.0) + dev.get("graph_pool_mb", 0.0)
                 + dev.get("s3gen_graph_buffers_mb", 0.0))
        dev["workspace_mb"] = round(max(0.0, dev["reserved_mb"] - fixed), 1)
    out["device"] = dev
    out["host"] = host()
    out["pid"] = os.getpid()
    return out
