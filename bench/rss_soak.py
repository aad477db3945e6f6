#!/usr/bin/env python3
"""Host-memory soak: 200 utterances on the tiny Chatterbox Turbo checkpoint through SpeechCore, RSS every 10.

Checks issue 3's "no host-RAM growth over 200 utterances" and measures the time to the first audio chunk as the
node sees it (request accepted -> first `audio.chunk_ms` chunk handed to the listener). The tiny checkpoint is
random weights in the real file layout (see ros2_chatterbox/engines/chatterbox/tiny_checkpoint.py), built with a lower stop-token
bias so that pieces run long enough (tens of speech tokens) to stream in several decoded chunks.

    .venv/bin/python bench/rss_soak.py [--utterances 200] [--threads 1] [--out bench/results/rss_tiny_cpu.json]

Each sample records the raw RSS and the retained RSS (after gc and glibc malloc_trim: free heap pages handed back,
so what remains is memory the process really holds; raw samples swing by tens of MB with whatever the allocator keeps
at that moment). Writes the JSON result and prints a table. Exit status 1 when the retained RSS, fitted by least
squares over the samples from utterance 20 on (after warm-up), grows by more than --max-growth-mb, or when an
utterance fails.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = [
    "Hello there.",
    "The battery is low, please charge me soon.",
    "Hi [laugh] that is funny. How are you today?",
    "Robots speak with a clear voice. Testing one two three. The quick brown fox jumps over the lazy dog.",
    "Please step aside [sigh], I need to get through the door.",
    "One moment. I am looking for the kitchen, and then I will bring you a glass of water.",
]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def retained_rss_mb() -> float:
    """RSS after gc and glibc malloc_trim: what the process really holds (free heap pages handed back first)."""
    gc.collect()
    from ros2_chatterbox.engines.chatterbox.device import trim_host_memory
    trim_host_memory()
    return rss_mb()


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utterances", type=int, default=200)
    ap.add_argument("--every", type=int, default=10, help="record RSS every N utterances")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable on a busy 2-core host)")
    ap.add_argument("--eos-bias", type=float, default=2.5, help="stop-token bias of the tiny T3 (4.0 = default ckpt)")
    ap.add_argument("--ckpt", type=Path, default=None, help="use this tiny checkpoint instead of building one")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rss_tiny_cpu.json")
    ap.add_argument("--max-growth-mb", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    from ros2_chatterbox.settings import Settings, defaults
    from ros2_chatterbox.core import SpeechCore
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny_turbo
    from ros2_chatterbox.speech_queue import JobListener

    tmp = tempfile.TemporaryDirectory(prefix="rss_soak_")
    work = Path(tmp.name)
    t0 = time.perf_counter()
    ckpt = args.ckpt
    if ckpt is None:
        arch = copy.deepcopy(tiny_turbo.DEFAULT_ARCH)
        arch["eos_bias"] = args.eos_bias
        ckpt = work / "ckpt"
        tiny_turbo.build_tiny_checkpoint(ckpt, seed=0, with_conds=True, arch=arch)
    voices = work / "voices"
    voices.mkdir()
    tiny_turbo.write_reference_wav(voices / "alice.wav", seconds=6.0, f0=140.0, seed=1)
    tiny_turbo.write_reference_wav(voices / "bob.wav", seconds=7.0, f0=105.0, seed=2)
    build_s = time.perf_counter() - t0

    cfg = defaults()
    cfg.update({"engine": "chatterbox_turbo", "model_dir": str(ckpt), "voices_dir": str(voices), "device": "cpu",
                "dtype": "float32", "jetson_patches": "off", "queue.max_size": 4})
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s", stream=sys.stderr)
    core = SpeechCore(Settings.from_values(cfg))
    t0 = time.perf_counter()
    rss_before_load = rss_mb()
    core.load()
    load_s = time.perf_counter() - t0
    engine = core.engine
    print(f"checkpoint {ckpt} built in {build_s:.1f} s, loaded in {load_s:.1f} s; fast path: "
          f"{engine.info().fast_path.reason}", file=sys.stderr)

    class Collect(JobListener):
        def __init__(self):
            self.samples = 0
            self.parts = 0

        def on_audio(self, job, samples):
            self.samples += len(samples)
            self.parts += 1

    rng = random.Random(args.seed)
    voice_names = ["", "alice", "bob"]
    rows, ttfc, wall, audio_s, chunks = [], [], [], [], []
    failures = 0
    rss_start = rss_mb()
    soak_t0 = time.perf_counter()
    for i in range(1, args.utterances + 1):
        listener = Collect()
        job = core.submit(rng.choice(TEXTS), voice=rng.choice(voice_names), listener=listener)
        result = job.wait(timeout=300)
        if result is None or not result.success:
            failures += 1
            print(f"utterance {i} failed: {result and result.message}", file=sys.stderr)
        else:
            if job.first_audio is not None:
                ttfc.append(job.first_audio - job.created)
            wall.append(time.monotonic() - job.created)
            audio_s.append(result.duration)
            chunks.append(listener.parts)
        if i % args.every == 0:
            info = engine.info()
            raw = rss_mb()
            row = {"utterance": i, "rss_mb": round(raw, 1), "retained_rss_mb": round(retained_rss_mb(), 1),
                   "elapsed_s": round(time.perf_counter() - soak_t0, 1),
                   "voice_cache_voices": info.voice_cache.voices, "voice_cache_mb": info.voice_cache.mb}
            rows.append(row)
            print(f"{i:5d}  rss {row['rss_mb']:8.1f} MB  retained {row['retained_rss_mb']:8.1f} MB  "
                  f"elapsed {row['elapsed_s']:7.1f} s", file=sys.stderr)
    fast_state = engine.info().fast_path.reason
    gc.collect()
    rss_after_gc = rss_mb()
    core.unload("soak finished")
    gc.collect()
    rss_after_unload = rss_mb()

    base = next((r["rss_mb"] for r in rows if r["utterance"] >= 20), rows[0]["rss_mb"])
    steady = [r for r in rows if r["utterance"] >= 20] or rows
    span = steady[-1]["utterance"] - steady[0]["utterance"]
    raw_slope = _slope([r["utterance"] for r in steady], [r["rss_mb"] for r in steady])  # MB per utterance
    slope = _slope([r["utterance"] for r in steady], [r["retained_rss_mb"] for r in steady])
    growth = slope * span  # fitted over the retained RSS: the verdict
    result = {
        "what": "host RSS over utterances on the tiny Chatterbox Turbo checkpoint through SpeechCore (CPU)",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "command": "python bench/rss_soak.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "host": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                 "load_average_end": [round(x, 2) for x in os.getloadavg()]},
        "software": {"torch": torch.__version__, "numpy": np.__version__,
                     "chatterbox-tts": _version("chatterbox-tts"), "transformers": _version("transformers")},
        "settings": {"utterances": args.utterances, "torch_threads": args.threads, "eos_bias": args.eos_bias,
                     "voices": voice_names, "texts": len(TEXTS), "stream_first_tokens": engine.stream_first_tokens,
                     "fast_path": fast_state},
        "load_s": round(load_s, 2),
        "rss_mb": {"before_load": round(rss_before_load, 1), "after_load": round(rss_start, 1),
                   "at_utterance_20": base, "end": rows[-1]["rss_mb"],
                   "min_from_20": min(r["rss_mb"] for r in steady), "max_from_20": max(r["rss_mb"] for r in steady),
                   "fitted_growth_20_to_end": round(raw_slope * span, 1),
                   "retained_at_utterance_20": steady[0]["retained_rss_mb"],
                   "retained_end": rows[-1]["retained_rss_mb"],
                   "retained_min_from_20": min(r["retained_rss_mb"] for r in steady),
                   "retained_max_from_20": max(r["retained_rss_mb"] for r in steady),
                   "retained_fitted_slope_mb_per_100_utterances": round(slope * 100, 2),
                   "retained_fitted_growth_20_to_end": round(growth, 1),
                   "after_gc": round(rss_after_gc, 1), "after_unload": round(rss_after_unload, 1)},
        "rss_every": rows,
        "failures": failures,
        "time_to_first_chunk_ms": _summary([x * 1000 for x in ttfc]),
        "request_wall_ms": _summary([x * 1000 for x in wall]),
        "audio_s_per_utterance": _summary(audio_s),
        "chunks_per_utterance": _summary(chunks),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print("\n| utterance | RSS (MB) | retained RSS (MB) | elapsed (s) |\n|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['utterance']} | {r['rss_mb']:.1f} | {r['retained_rss_mb']:.1f} | {r['elapsed_s']:.1f} |")
    t = result["time_to_first_chunk_ms"]
    band = (min(r["rss_mb"] for r in steady), max(r["rss_mb"] for r in steady))
    kept = (min(r["retained_rss_mb"] for r in steady), max(r["retained_rss_mb"] for r in steady))
    print(f"\nfrom utterance 20 on: RSS {band[0]:.1f}-{band[1]:.1f} MB (fitted {raw_slope * span:+.1f} MB), retained "
          f"RSS {kept[0]:.1f}-{kept[1]:.1f} MB (fitted {growth:+.1f} MB, limit {args.max_growth_mb} MB); "
          f"after unload {rss_after_unload:.1f} MB")
    print(f"time to first chunk: median {t['median']:.0f} ms, p90 {t['p90']:.0f} ms (n={t['n']}); "
          f"failures {failures}; wrote {args.out}")
    tmp.cleanup()
    return 0 if failures == 0 and growth <= args.max_growth_mb else 1


def _slope(xs, ys) -> float:
    if len(xs) < 2:
        return 0.0
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def _summary(values):
    if not values:
        return {"n": 0, "median": None, "p90": None, "min": None, "max": None}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "p90": round(percentile(values, 0.9), 2), "min": round(min(values), 2), "max": round(max(values), 2)}


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:  # noqa: BLE001
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
