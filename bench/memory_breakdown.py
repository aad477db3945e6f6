#!/usr/bin/env python3
"""Where the node's memory goes, stage by stage: host RSS (libraries, heap, other anonymous memory, what malloc has
handed out) and device memory (PyTorch reserved and allocated, this process in nvidia-smi: the CUDA context included)
after each step of configure, after the first cloned voice and after mixed utterances; then the engine's footprint
(weights per module and dtype, KV cache, graph pool, workspace) and every CPU tensor still alive.

One configuration per process, through `SpeechCore` as the node runs it (random full-size weights, a cloned voice):

    python bench/memory_breakdown.py --ckpt DIR --config jetson --out FILE.json [--model nano] [--set key=value]
    python bench/memory_breakdown.py --tiny --out FILE.json          # CPU smoke run

`--set` changes a parameter (e.g. `--set fast_path=false`, `--set memory.budget_mb=3000`); `--env K=V` sets an
environment variable before torch is imported; `--tracemalloc` adds Python's own allocations by file (slower).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from common import CONFIG_ENV, STOP, build_full_checkpoint, install_stubs, process_device_mb, versions

TEXT = ("The battery is at forty percent, so I will finish cleaning the kitchen first and then go back to the "
        "charging station before I start on the living room.")


def parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except ValueError:
        return v


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="jetson", choices=sorted(CONFIG_ENV))
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--model", default="turbo")
    ap.add_argument("--mixed", type=int, default=10)
    ap.add_argument("--mixed-seconds", type=float, default=0.0,
                    help="stop the mixed utterances after this many seconds (0: no limit; the count done is recorded)")
    ap.add_argument("--params", type=Path, default=None,
                    help="a ROS parameters file under the bench's own values (default with --config jetson*: "
                         "docker/params.yaml, the container's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--try", dest="tries", action="append", default=[],
                    choices=["no-cudnn-sdpa", "torch-kernels", "torch-sampler", "no-cudnn", "no-graphs"],
                    help="experiments (bench only): captured decode without cuDNN attention; PyTorch kernels instead "
                         "of Triton; the PyTorch sampler instead of the Triton one; cuDNN off; no CUDA graphs")
    args = ap.parse_args(argv)
    for k, v in CONFIG_ENV[args.config].items():
        os.environ.setdefault(k, v)
    for kv in args.env:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    if args.tracemalloc:
        import tracemalloc
        tracemalloc.start(1)
    stages: List[Dict[str, Any]] = []
    doc: Dict[str, Any] = {"config": args.config, "model": args.model, "set": args.set, "env": args.env,
                           "command": "python " + " ".join(sys.argv), "stages": stages, "errors": []}
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ros2_chatterbox.engines.chatterbox import footprint

    state = {"device": "cpu"}

    def stage(name: str) -> None:
        row: Dict[str, Any] = {"stage": name, **footprint.host(), "malloc_in_use_mb": footprint.malloc_in_use_mb()}
        if "torch" in sys.modules and state["device"].startswith("cuda"):
            import torch
            row["reserved_mb"] = round(torch.cuda.memory_reserved() / 2**20, 1)
            row["allocated_mb"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            row["process_device_mb"] = process_device_mb()
            if row["process_device_mb"] is not None:
                row["rss_plus_device_mb"] = round(row["rss_mb"] + row["process_device_mb"], 1)
        stages.append(row)
        print(json.dumps(row), flush=True)

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")

    stage("python")
    doc["stubs"] = install_stubs()
    import numpy as np
    import torch
    stage("import torch")
    device = "cpu" if args.tiny else "cuda"
    state["device"] = device
    if device == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device)
        stage("CUDA initialised")
        x = torch.randn(64, 64, device=device, dtype=torch.float16)
        (x @ x).sum().item()
        stage("first cuBLAS matmul")
        torch.nn.functional.conv1d(x[None], x[:, :, None]).sum().item()
        stage("first cuDNN conv")
        del x
    import chatterbox.tts_turbo  # noqa: F401
    stage("import chatterbox.tts_turbo")
    doc["tries"] = args.tries
    if "no-cudnn" in args.tries:
        torch.backends.cudnn.enabled = False
    if "no-cudnn-sdpa" in args.tries:
        from ros2_chatterbox.engines.fast_t3 import graphs, step
        real_backends = step.sdpa_backends
        graphs.sdpa_backends = lambda cudnn: real_backends(False)  # graphs.record looks it up in its own module
    if {"torch-kernels", "torch-sampler", "no-graphs"} & set(args.tries):
        from ros2_chatterbox.engines.fast_t3 import generator
        real_init = generator.FastT3.__init__

        def init(self, *a, **kw):
            if "torch-kernels" in args.tries:
                kw["kernels"] = "torch"
            if "torch-sampler" in args.tries:
                kw["sampler"] = "torch"
            if "no-graphs" in args.tries:
                kw["cuda_graphs"] = False
            real_init(self, *a, **kw)
        generator.FastT3.__init__ = init
    doc["versions"] = versions()

    from ros2_chatterbox import settings as cfgmod
    from ros2_chatterbox.core import SpeechCore
    from ros2_chatterbox.engines.chatterbox import engine as engmod, fast_path, gpu_memory, memory_warmup, models
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny

    work = Path(tempfile.mkdtemp(prefix="cbx-mem-"))
    ckpt = args.ckpt or work / "ckpt"
    spec = models.model_spec(args.model)
    if not (ckpt / spec.t3_file).exists():
        if args.tiny:
            tiny.build_tiny_checkpoint(ckpt, with_conds=False, model=args.model)
        else:
            build_full_checkpoint(ckpt, model=args.model)
    voices = work / "voices"
    voices.mkdir()
    tiny.write_reference_wav(voices / "alice.wav", seconds=16.0)

    # a stage after each step of configure
    def wrap(owner, name: str, label: str):
        real = getattr(owner, name)

        def wrapped(*a, **kw):
            out = real(*a, **kw)
            stage(label)
            return out
        setattr(owner, name, wrapped)
    wrap(engmod, "load_model", "weights loaded (models.load_local)")
    wrap(engmod.ChatterboxTurboEngine, "_warm_up", "watermarker warmed up")
    wrap(fast_path, "select", "fast path selected (self-checks, graphs)")
    wrap(engmod.ChatterboxTurboEngine, "_release_unused", "unused parts released")
    wrap(memory_warmup, "take", "working memory taken")

    values = cfgmod.defaults()
    params = args.params or (Path(__file__).resolve().parents[1] / "docker" / "params.yaml"
                             if args.config.startswith("jetson") else None)
    if params is not None:
        from ros2_chatterbox.params_file import read_params_file
        values.update(read_params_file(str(params)))
        doc["params"] = str(params)
    values.update({"engine": "chatterbox_turbo", "model": args.model, "model_dir": str(ckpt),
                   "voices_dir": str(voices), "device": device, "dtype": "float16" if device == "cuda" else "float32",
                   "default_voice": "alice", "audio.sentence_pause_ms": 0,
                   "jetson_patches": "on" if args.config.startswith("jetson") else "off"})
    for kv in args.set:
        k, _, v = kv.partition("=")
        values[k] = parse_value(v)
    core = SpeechCore(cfgmod.Settings.from_values(values))
    t0 = time.monotonic()
    try:
        core.load()
    except Exception as exc:
        doc["configure"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        save()
        print(json.dumps(doc["configure"]), flush=True)
        return 0
    engine = core.engine
    doc["configure"] = {"ok": engine.name == "chatterbox_turbo", "seconds": round(time.monotonic() - t0, 2),
                        "engine": engine.name, "memory": engine.info().memory.as_dict()}
    stage("configured")
    save()
    if engine.name != "chatterbox_turbo":
        doc["errors"].append(f"fell back: {core.fallback_reason}")
        save()
        return 1

    with torch.no_grad():
        engine._model.t3.speech_head.bias[STOP] = -1e4   # exact lengths (random weights never stop on their own)
    n = {"tokens": 50}
    engine.max_tokens_for = lambda text: n["tokens"]

    def speak(tokens: int, text: str = TEXT) -> float:
        n["tokens"] = tokens
        job = core.submit(text)
        result = job.wait(600)
        if not result.success:
            raise RuntimeError(result.message)
        return time.monotonic() - job.created

    try:
        speak(50)
        stage("first cloned voice spoken")
        cap = engine.memory.plan.max_speech_tokens if engine.memory.plan else 400
        rng = np.random.default_rng(0)
        words = TEXT.split()
        seconds, tokens = [], []
        a0 = gpu_memory.allocator_stats(engine.device)
        if device == "cuda":  # peak over the mixed utterances alone (the warm-up's worst case is the peak so far)
            doc["max_allocated_before_mixed_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            torch.cuda.reset_peak_memory_stats()
        t_mixed = time.monotonic()
        for _ in range(args.mixed):
            if args.mixed_seconds and time.monotonic() - t_mixed > args.mixed_seconds:
                break
            toks = min(int(rng.choice([10, 25, 75, 150, 250, 400, 600, cap])), cap)
            seconds.append(speak(toks, " ".join(words[:int(rng.integers(1, len(words) + 1))])))
            tokens.append(toks)
        a1 = gpu_memory.allocator_stats(engine.device)
        stage(f"after {len(seconds)} mixed utterances")
        doc["mixed"] = {"utterances": len(seconds), "speech_tokens": sum(tokens), "longest_tokens": max(tokens, default=0),
                        "seconds_median": round(statistics.median(seconds), 3) if seconds else None,
                        "wall_s": round(time.monotonic() - t_mixed, 1),
                        "device_allocs": a1["num_device_alloc"] - a0["num_device_alloc"],
                        "reserved_before_mb": round(a0["reserved_bytes"] / 2**20, 1),
                        "reserved_after_mb": round(a1["reserved_bytes"] / 2**20, 1),
                        "peak_allocated_mb": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                              if device == "cuda" else None)}
    except Exception as exc:  # noqa: BLE001
        doc["errors"].append(f"{type(exc).__name__}: {exc}")

    doc["footprint"] = footprint.footprint(engine._model, engine.device, engine.fast)
    doc["memory_status"] = engine.info().memory.as_dict()
    doc["speed"] = {"t3_decode_ms_per_token": engine.fast.stats.get("decode_ms_per_token") if engine.fast else None,
                    "last_first_chunk_s": engine.last_first_chunk_s, "fast_path": engine.info().fast_path.as_dict()}
    if device == "cuda":
        doc["max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        segs = torch.cuda.memory_snapshot()
        by_pool: Dict[str, Dict[str, float]] = {}
        for s in segs:
            key = str(tuple(s.get("segment_pool_id", (0, 0))))
            d = by_pool.setdefault(key, {"segments": 0, "mb": 0.0, "active_mb": 0.0})
            d["segments"] += 1
            d["mb"] += s["total_size"] / 2**20
            d["active_mb"] += s.get("active_size", 0) / 2**20
        doc["segments_by_pool"] = {k: {kk: round(vv, 1) for kk, vv in v.items()} for k, v in by_pool.items()}
        doc["largest_segments_mb"] = sorted((round(s["total_size"] / 2**20, 1) for s in segs), reverse=True)[:20]
    # every CPU tensor still alive (what the host heap holds that is a tensor)
    gc.collect()
    cpu = []
    for obj in gc.get_objects():
        try:
            if torch.is_tensor(obj) and obj.device.type == "cpu" and obj.untyped_storage().nbytes() >= 1 << 16:
                cpu.append((obj.untyped_storage().nbytes(), list(obj.shape), str(obj.dtype)))
        except Exception:  # noqa: BLE001
            pass
    cpu.sort(reverse=True)
    doc["cpu_tensors"] = {"count": len(cpu), "mb": round(sum(c[0] for c in cpu) / 2**20, 1),
                          "largest": [(round(b / 2**20, 2), s, d) for b, s, d in cpu[:25]]}
    if args.tracemalloc:
        import tracemalloc
        snap = tracemalloc.take_snapshot()
        top = snap.statistics("filename")[:30]
        doc["tracemalloc_top"] = [(str(s.traceback[0].filename), round(s.size / 2**20, 1)) for s in top]
        doc["tracemalloc_total_mb"] = round(sum(s.size for s in snap.statistics("filename")) / 2**20, 1)
    # where the host's biggest anonymous mappings are
    maps = []
    try:
        name, rng_ = "", ""
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if not head.endswith(":"):
                    parts = line.split(None, 5)
                    rng_, name = parts[0], (parts[5].strip() if len(parts) == 6 else "")
                elif head == "Rss:" and not name.startswith("/"):
                    maps.append((int(line.split()[1]) // 1024, name or "anon", rng_))
    except OSError:
        pass
    maps.sort(reverse=True)
    doc["largest_anon_mappings_mb"] = maps[:15]
    save()
    print(json.dumps({k: doc[k] for k in ("footprint", "cpu_tensors")}, indent=1, default=str), flush=True)
    core.unload()
    return 0 if not doc["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
