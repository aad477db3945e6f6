#!/usr/bin/env python3
"""S3Gen's streaming decoder in CUDA graphs against the eager decoder: time and launches per call by bucket, audio
difference, memory. The engine-free half of issue 18's rows (bench_node.py gives the rows through SpeechCore).

Loads the checkpoint through the engine's loader (`checkpoint.load_model`, T3 in float16 as on CUDA) with S3Gen's
flow in float32 and in float16 (`--flows`), takes the longest voice the memory plan allows (a 10 s reference: 250
prompt tokens, memory_warmup.worst_case_voice), captures `S3GenGraphs` for the default plan (speech_tokens.max
1000, stream 25 -> 200) and decodes the same pieces (25, 80, 250, 750 speech tokens, streamed on the engine's
schedule) through `StreamDecoder` with and without the graphs:

* per decode step: GPU-synchronised wall time, with/without graphs, by flow bucket and vocoder window
* waveform SNR of the graphs' audio against the eager decoder's, per piece (same seed, same noise)
* same seed twice through the graphs: the same audio
* host launch calls and GPU kernels per step (torch.profiler), with/without graphs
* the graphs' pool, their static buffers, capture time, process RSS + device memory

    python bench/s3gen_graphs.py --ckpt /tmp/ckpt --out $OUT/s3gen_graphs.json       # GPU, full-size weights
    python bench/s3gen_graphs.py --tiny --out /tmp/s3g.json                          # CPU smoke run (no capture)
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

from common import build_full_checkpoint, install_stubs, process_device_mb, versions

PIECES = (25, 80, 250, 750)
HOST_LAUNCH = {"cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuLaunchKernelEx", "cudaLaunchKernelExC",
               "cudaMemcpyAsync", "cudaMemsetAsync"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--flows", default="float16,float32", help="S3Gen flow dtypes to run")
    ap.add_argument("--pieces", default=",".join(map(str, PIECES)))
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    doc: Dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "stubs": install_stubs(), "runs": {}}
    import numpy as np
    import torch
    from ros2_chatterbox.engines.chatterbox import checkpoint, gpu_memory, memory_plan, models
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny
    from ros2_chatterbox.engines.chatterbox.memory_warmup import worst_case_voice
    from ros2_chatterbox.engines.chatterbox.s3gen_graphs import S3GenGraphs, snr_db
    from ros2_chatterbox.engines.chatterbox.s3gen_stream import DecoderConfig, StreamDecoder
    doc["versions"] = versions()
    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda:0" if cuda else "cpu"
    if cuda:
        doc["card"] = torch.cuda.get_device_name(0)
    ckpt = args.ckpt or Path(tempfile.mkdtemp(prefix="cbx-s3g-")) / "ckpt"
    if not (ckpt / "t3_turbo_v1.safetensors").exists():
        tiny.build_tiny_checkpoint(ckpt, with_conds=False) if args.tiny else build_full_checkpoint(ckpt)
    pieces = [int(x) for x in args.pieces.split(",") if x.strip()]
    config = DecoderConfig(speech_cap=1000)
    plan = memory_plan.make_plan(250, n_layer=24, n_head=16, head_dim=64, dtype_bytes=2, max_positions=8196)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")

    for flow_dtype in [x for x in args.flows.split(",") if x]:
        run: Dict[str, Any] = {"flow_dtype": flow_dtype}
        doc["runs"][flow_dtype] = run
        dt = {"float16": torch.float16, "float32": torch.float32}[flow_dtype]
        model, _ = checkpoint.load_model(ckpt, device, torch.float16 if cuda else torch.float32, "bench",
                                         models.MODELS["turbo"], s3gen_dtype=dt if cuda else torch.float32)
        ref = worst_case_voice(model, torch.device(device))
        graphs = S3GenGraphs.for_plan(model, plan, config)
        run["buckets"] = {"flow_tokens": graphs.flow_sizes, "vocoder_frames": graphs.window_sizes}
        sync()
        mem0 = torch.cuda.memory_reserved() if cuda else 0
        if cuda:
            try:
                graphs.capture()
                run["capture_s"] = round(graphs.capture_s, 2)
            except Exception as exc:  # noqa: BLE001 - the failure is the result
                run["capture_error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
                print("capture failed:", run["capture_error"], flush=True)
                save()
                return 1
            sync()
            run["memory"] = {"graph_reserved_mb": round((torch.cuda.memory_reserved() - mem0) / 2 ** 20, 1),
                             "static_buffers_mb": round(graphs.buffer_bytes() / 2 ** 20, 1),
                             "rss_mb": round(gpu_memory.rss_bytes() / 2 ** 20, 1),
                             "process_device_mb": process_device_mb()}
            print(json.dumps({"capture_s": run["capture_s"], **run["memory"]}), flush=True)
        steps: List[Dict[str, Any]] = []

        def decode(tokens, use_graphs, seed=7, record=None):
            dec = StreamDecoder(model, ref, seed, False, threading.RLock(), config, graphs if use_graphs else None)
            points = memory_plan.decode_points(len(tokens), 25, 200)[:-1]
            parts = []
            for i, p in enumerate(points + [len(tokens)]):
                final = i == len(points)
                sync()
                t = time.perf_counter()
                parts.append(dec.step(tokens if final else tokens[:p], final=final))
                sync()
                if record is not None:
                    record.append({"tokens": int(p), "final": final, "s": time.perf_counter() - t})
            return np.concatenate(parts)

        quality, timing = [], {}
        for n in pieces:
            g = torch.Generator(device=device).manual_seed(1000 + n)
            tokens = torch.randint(0, 6561, (n,), device=device, generator=g)
            eager, first = decode(tokens, False), decode(tokens, True)
            again = decode(tokens, True)
            q = {"tokens": n, "audio_s": round(len(eager) / 24000, 2), "snr_db": round(snr_db(eager, first), 2),
                 "max_abs_diff": float(np.abs(eager - first).max()), "same_seed_same_audio": bool(
                     np.array_equal(first, again)), "same_length": len(eager) == len(first)}
            quality.append(q)
            print(json.dumps(q), flush=True)
            for label, use in (("eager", False), ("graphs", True)):
                rec: List[Dict[str, Any]] = []
                walls = []
                for _ in range(args.reps):
                    w = time.perf_counter()
                    decode(tokens, use, record=rec)
                    walls.append(time.perf_counter() - w)
                per_step: Dict[str, List[float]] = {}
                for r in rec:
                    per_step.setdefault(("final " if r["final"] else "") + str(r["tokens"]), []).append(r["s"])
                timing.setdefault(str(n), {})[label] = {
                    "piece_s_median": round(statistics.median(walls), 4),
                    "step_ms_median": {k: round(1000 * statistics.median(v), 2) for k, v in per_step.items()}}
            print(json.dumps({str(n): timing[str(n)]}), flush=True)
            save()
        run["quality"], run["timing"] = quality, timing
        run["counts"] = dict(graphs.counts)

        # launches per step: the first chunk (25 tokens) and a later one, with and without graphs
        if cuda:
            from torch.profiler import ProfilerActivity, profile
            launches = {}
            g = torch.Generator(device=device).manual_seed(5)
            tokens = torch.randint(0, 6561, (250,), device=device, generator=g)
            for label, use in (("eager", False), ("graphs", True)):
                decode(tokens, use)
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    decode(tokens, use)
                events = prof.key_averages()
                host = sum(e.count for e in events if e.key in HOST_LAUNCH)
                kernels = sum(e.count for e in events if str(getattr(e, "device_type", "")).endswith("CUDA"))
                launches[label] = {"piece_tokens": 250, "audio_s": 10.0, "host_launch_calls": host,
                                   "graph_launches": sum(e.count for e in events if e.key == "cudaGraphLaunch"),
                                   "gpu_kernels": kernels,
                                   "host_launch_calls_per_audio_s": round(host / 10.0, 1),
                                   "top_host_ops": sorted(((e.key, e.count) for e in events if e.count > 20
                                                           and not e.key.startswith("cuda")),
                                                          key=lambda kv: -kv[1])[:15]}
            run["launches_10s_piece"] = launches
            print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "top_host_ops"}
                              for k, v in launches.items()}), flush=True)
        save()
        del graphs, model
        if cuda:
            torch.cuda.empty_cache()
    save()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
