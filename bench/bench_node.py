#!/usr/bin/env python3
"""The node's path, measured: requests through `SpeechCore` (queue, worker, engine, listener) with
`ChatterboxTurboEngine`, as the ROS node and the HTTP server run it. One configuration per process (the CUDA
allocator reads its environment once), normally started by `bench_turbo.py --node ...`:

    python bench/bench_node.py --ckpt DIR --config fast --out FILE.json            # GPU, full-size checkpoint
    python bench/bench_node.py --tiny --config fast --out FILE.json                # CPU smoke run

Configurations: `fast` (the defaults), `jetson` (the Jetson container as it ships: docker/params.yaml, jetson
patches on as on an Orin, the container's environment), `jetson-nocache` (the reference container's old
PYTORCH_NO_CUDA_MEMORY_CACHING=1 on top: the engine must refuse it, loudly). Random full-size weights never choose
the stop token on their own account, so the stop bias is held down and each request's speech-token count is set
(`max_tokens_for`): exact lengths, 25 tokens per second of audio.

Per configuration: configure time and what it took (memory plan, warm-up), first audio where a user sees it
(request -> first chunk handed to the listener, warm voice), end to end for ~10 s of audio, T3 ms/token, S3Gen
seconds per call by chunk size, process CPU seconds per second of audio, device allocations (cudaMalloc) and
allocator block allocations per warm utterance, reserved memory over N utterances of mixed length, host RSS +
device memory, kernel launches per second of audio (one utterance under the profiler).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

from common import CONFIG_ENV, STOP, build_full_checkpoint, install_stubs, process_device_mb, versions
from ros2_chatterbox.speech_queue import JobListener

TEXT = ("The battery is at forty percent, so I will finish cleaning the kitchen first and then go back to the "
        "charging station before I start on the living room.")


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Listener(JobListener):
    def __init__(self):
        self.first = None
        self.samples = 0
        self.done = threading.Event()

    def on_start(self, job):
        pass

    def on_audio(self, job, samples):
        if self.first is None:
            self.first = time.monotonic()
        self.samples += len(samples)

    def on_done(self, job, result):
        self.done.set()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--config", default="fast", choices=sorted(CONFIG_ENV))
    ap.add_argument("--ckpt", type=Path, default=None)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--mixed", type=int, default=100, help="utterances of mixed length for the memory rows")
    ap.add_argument("--long-tokens", type=int, default=250, help="speech tokens of the timed utterance (10 s)")
    ap.add_argument("--longer-tokens", type=int, default=750, help="speech tokens of the longer one (30 s; 0: skip)")
    ap.add_argument("--s3gen-graphs", default="on", choices=("on", "off"), help="parameter s3gen_graphs")
    args = ap.parse_args(argv)
    for k, v in CONFIG_ENV[args.config].items():
        os.environ.setdefault(k, v)

    stubs = install_stubs()
    import numpy as np
    import torch
    from ros2_chatterbox import settings as cfgmod
    from ros2_chatterbox.core import SpeechCore
    from ros2_chatterbox.engines.chatterbox import gpu_memory, s3gen_stream
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny

    device = args.device or ("cpu" if args.tiny else "cuda")
    cuda = device.startswith("cuda")
    doc: Dict[str, Any] = {"config": args.config, "env": CONFIG_ENV[args.config], "device": device,
                           "dtype": args.dtype if cuda else "float32", "stubs": stubs, "versions": versions(),
                           "command": "python " + " ".join(sys.argv), "errors": []}

    def save():
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")

    work = Path(tempfile.mkdtemp(prefix="cbx-node-"))
    ckpt = args.ckpt or work / "ckpt"
    if not (ckpt / "t3_turbo_v1.safetensors").exists():
        if args.tiny:
            tiny.build_tiny_checkpoint(ckpt, with_conds=False)
        else:
            build_full_checkpoint(ckpt)
    voices = work / "voices"
    voices.mkdir()
    tiny.write_reference_wav(voices / "alice.wav", seconds=16.0)

    if cuda:  # what the CUDA runtime and its libraries alone hold in host RAM (before the model)
        x = torch.randn(64, 64, device=device)
        torch.nn.functional.conv1d(x[None], x[:, :, None])
        (x @ x).sum().item()
        doc["rss_cuda_runtime_mb"] = round(gpu_memory.rss_bytes() / 2**20, 1)
        own = process_device_mb()
        doc["device_cuda_runtime_mb"] = own

    values = cfgmod.defaults()
    values.update({"engine": "chatterbox_turbo", "model_dir": str(ckpt), "voices_dir": str(voices),
                   "device": device, "dtype": doc["dtype"], "default_voice": "alice",
                   "generation.watermark": False, "audio.sentence_pause_ms": 0,
                   "jetson_patches": "on" if args.config.startswith("jetson") else "off",
                   "queue.max_size": 4, "s3gen_graphs": args.s3gen_graphs == "on"})
    doc["s3gen_graphs"] = args.s3gen_graphs
    core = SpeechCore(cfgmod.Settings.from_values(values))
    t0 = time.monotonic()
    try:
        core.load()
    except Exception as exc:  # the refused combination lands here, with its reason
        doc["configure"] = {"ok": False, "seconds": round(time.monotonic() - t0, 2),
                            "error": f"{type(exc).__name__}: {exc}"}
        save()
        print(json.dumps(doc["configure"], indent=1), flush=True)
        return 0
    engine = core.engine
    doc["configure"] = {"ok": True, "seconds": round(time.monotonic() - t0, 2), "info": engine.info().as_dict()}
    print(f"configured in {doc['configure']['seconds']} s: fast path {engine.info().fast_path}", flush=True)
    save()
    if engine.name != "chatterbox_turbo":
        doc["errors"].append(f"fell back to {engine.name}: {core.fallback_reason}")
        save()
        return 1

    t3 = engine._model.t3
    with torch.no_grad():
        t3.speech_head.bias[STOP] = -1e4       # exact lengths: set per request below
    n_tokens = {"n": args.long_tokens}
    engine.max_tokens_for = lambda text: n_tokens["n"]

    # S3Gen time per call, by the number of new tokens it decodes
    s3_calls: List[Dict[str, Any]] = []
    real_step = s3gen_stream.StreamDecoder.step

    def timed_step(self, tokens, final):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = real_step(self, tokens, final)
        if cuda:
            torch.cuda.synchronize()
        s3_calls.append({"tokens": int(tokens.shape[-1]), "final": bool(final), "s": time.perf_counter() - t})
        return out
    s3gen_stream.StreamDecoder.step = timed_step

    def speak(tokens: int, text: str = TEXT) -> Dict[str, Any]:
        n_tokens["n"] = tokens
        lst = Listener()
        a0 = gpu_memory.allocator_stats(device)
        c0, w0 = cpu_seconds(), time.monotonic()
        job = core.submit(text, listener=lst)
        result = job.wait(600)
        w1, c1 = time.monotonic(), cpu_seconds()
        a1 = gpu_memory.allocator_stats(device)
        if not result.success:
            raise RuntimeError(result.message)
        audio_s = lst.samples / engine.sample_rate
        return {"tokens": tokens, "audio_s": round(audio_s, 3),
                "first_audio_s": (lst.first - job.created) if lst.first else None,
                "end_to_end_s": w1 - job.created, "cpu_s": c1 - c0, "wall_s": w1 - w0,
                "device_allocs": a1["num_device_alloc"] - a0["num_device_alloc"],
                "block_allocations": a1["block_allocations"] - a0["block_allocations"],
                "reserved_mb": round(a1["reserved_bytes"] / 2**20, 1),
                "engine_first_chunk_s": engine.last_first_chunk_s,
                "decode_ms_per_token": (engine.fast.stats.get("decode_ms_per_token") if engine.fast else None)}

    try:
        speak(50)  # the voice's conditioning and prefix: "warm voice" from here on
        speak(args.long_tokens)
        runs = [speak(args.long_tokens) for _ in range(args.reps)]
        first = [r["first_audio_s"] for r in runs]
        e2e = [r["end_to_end_s"] for r in runs]
        doc["utterance"] = {
            "speech_tokens": args.long_tokens, "audio_s": runs[0]["audio_s"], "reps": len(runs),
            "first_audio_s_median": round(statistics.median(first), 4), "first_audio_s_max": round(max(first), 4),
            "engine_first_chunk_s_median": round(statistics.median(r["engine_first_chunk_s"] for r in runs), 4),
            "end_to_end_s_median": round(statistics.median(e2e), 4),
            "rtf": round(statistics.median(e2e) / runs[0]["audio_s"], 4),
            "t3_decode_ms_per_token": (round(statistics.median(r["decode_ms_per_token"] for r in runs), 4)
                                       if runs[0]["decode_ms_per_token"] is not None else None),
            "cpu_s_per_audio_s": round(sum(r["cpu_s"] for r in runs) / sum(r["audio_s"] for r in runs), 4),
            "device_allocs_per_utterance": [r["device_allocs"] for r in runs],
            "block_allocations_per_utterance_median": statistics.median(r["block_allocations"] for r in runs),
        }
        if args.longer_tokens > 0:
            longer = [speak(args.longer_tokens) for _ in range(3)]
            doc["longer_utterance"] = {
                "speech_tokens": args.longer_tokens, "audio_s": longer[0]["audio_s"],
                "end_to_end_s": [round(r["end_to_end_s"], 4) for r in longer],
                "end_to_end_s_median": round(statistics.median(r["end_to_end_s"] for r in longer), 4),
                "first_audio_s_median": round(statistics.median(r["first_audio_s"] for r in longer), 4),
                "cpu_s_per_audio_s": round(sum(r["cpu_s"] for r in longer) / sum(r["audio_s"] for r in longer), 4)}
        graphs = getattr(engine, "graphs", None)
        doc["s3gen_graph_counts"] = dict(graphs.counts) if graphs is not None else None
        print(json.dumps({k: doc.get(k) for k in ("utterance", "longer_utterance", "s3gen_graph_counts")},
                         indent=1), flush=True)
        save()

        # S3Gen by call size (warm, the timed utterances only)
        sizes: Dict[str, List[float]] = {}
        for c in s3_calls[-len(runs) * 12:]:
            sizes.setdefault("final" if c["final"] else str(c["tokens"]), []).append(c["s"])
        doc["s3gen_s_per_call"] = {k: round(statistics.median(v), 4) for k, v in sorted(sizes.items())}
        first_calls = [c["s"] for c in s3_calls if not c["final"] and c["tokens"] == engine.stream_first_tokens]
        doc["s3gen_first_chunk_s"] = round(statistics.median(first_calls), 4) if first_calls else None

        # memory over mixed lengths (allowed texts: up to text.chunk_chars characters, up to the speech cap)
        rng = np.random.default_rng(0)
        words = TEXT.split()
        reserved, blocks = [], []
        base = gpu_memory.allocator_stats(device)
        c0, audio_total = cpu_seconds(), 0.0
        cap = engine.memory.plan.max_speech_tokens if engine.memory.plan else 1000
        for i in range(args.mixed):
            toks = int(rng.choice([10, 25, 40, 75, 150, 250, 400, 600, 800, cap]))
            text = " ".join(words[:int(rng.integers(1, len(words) + 1))])
            r = speak(min(toks, cap), text)
            reserved.append(r["reserved_mb"])
            blocks.append(r["block_allocations"] / max(1, r["tokens"]))
            audio_total += r["audio_s"]
        end = gpu_memory.allocator_stats(device)
        doc["mixed"] = {
            "utterances": args.mixed, "audio_s": round(audio_total, 1),
            "device_allocs_total": end["num_device_alloc"] - base["num_device_alloc"],
            "device_allocs_since_configure": engine.info().memory.device_allocs_since_configure,
            "reserved_mb_first": reserved[0], "reserved_mb_last": reserved[-1], "reserved_mb_max": max(reserved),
            "reserved_at_configure_mb": engine.info().memory.reserved_at_configure_mb,
            "block_allocations_per_token_median": round(statistics.median(blocks), 2),
            "cpu_s_per_audio_s": round((cpu_seconds() - c0) / max(audio_total, 1e-9), 4),
        }
        doc["memory_after"] = {**gpu_memory.memory_report(device),
                               "reserved_mb": round(end["reserved_bytes"] / 2**20, 1),
                               "allocated_mb": round(end["allocated_bytes"] / 2**20, 1),
                               "host_sync": gpu_memory.sync_mode(device), "rss": gpu_memory.rss_breakdown()}
        if cuda:
            doc["memory_after"]["max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            own = process_device_mb()
            if own is not None:  # this process alone (nvidia-smi), the CUDA context included
                doc["memory_after"]["process_device_mb"] = own
                doc["memory_after"]["rss_plus_process_device_mb"] = round(doc["memory_after"]["rss_mb"] + own, 1)
        print(json.dumps({"mixed": doc["mixed"], "memory_after": doc["memory_after"]}, indent=1), flush=True)
        save()

        # kernel launches per second of audio: one 10 s utterance under the profiler
        if cuda:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                r = speak(args.long_tokens)
            host_launch = {"cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuLaunchKernelEx",
                           "cudaLaunchKernelExC"}
            events = prof.key_averages()
            launches = sum(e.count for e in events if e.key in host_launch)
            graph_launches = sum(e.count for e in events if e.key == "cudaGraphLaunch")
            kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                          and str(e.device_type).endswith("CUDA"))
            doc["launches"] = {"audio_s": r["audio_s"],
                               "host_launch_calls_per_audio_s": round(launches / r["audio_s"], 1),
                               "graph_launches_per_audio_s": round(graph_launches / r["audio_s"], 1),
                               "gpu_kernels_per_audio_s": round(kernels / r["audio_s"], 1)}
            print(json.dumps(doc["launches"]), flush=True)
        save()
    except Exception as exc:
        traceback.print_exc()
        doc["errors"].append(f"{type(exc).__name__}: {exc}")
        save()
    finally:
        s3gen_stream.StreamDecoder.step = real_step
        core.unload()
    return 0 if not doc["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
