#!/usr/bin/env python3
"""End-to-end check of the Chatterbox engine on a CUDA GPU (tiny checkpoint): fp16/bf16/fp32 with the fast path,
built-in and cloned voices, seed reproducibility, time to first chunk through the speech core, cleanup frees CUDA
memory. Writes <out>/engine_check.json. Runs on the lent GPU machine (see bench/README.md for the wheels):

    python bench/gpu_engine_check.py --out $OUT
"""
import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO as ROOT, install_stubs, versions


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    stubbed = install_stubs()
    import numpy as np
    import torch

    from ros2_chatterbox.settings import Settings, defaults
    from ros2_chatterbox.core import SpeechCore
    from ros2_chatterbox.engine import GenerationSettings
    from ros2_chatterbox.engines.chatterbox.engine import ChatterboxTurboEngine
    from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import build_tiny_checkpoint, write_reference_wav
    from ros2_chatterbox.speech_queue import JobListener

    report = {"card": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "versions": versions(),
              "stubbed": stubbed, "command": "python bench/gpu_engine_check.py --out $OUT", "runs": []}
    tmp = Path(tempfile.mkdtemp(prefix="cbx_gpu_"))
    ckpt = tmp / "tiny"
    build_tiny_checkpoint(ckpt)
    voices = tmp / "voices"
    voices.mkdir()
    write_reference_wav(voices / "alice.wav", seconds=6.0, f0=180.0)
    for dtype in ("float16", "bfloat16", "float32"):
        run = {"dtype": dtype}
        try:
            cfg = defaults()
            cfg.update({"engine": "chatterbox_turbo", "model_dir": str(ckpt), "device": "cuda", "dtype": dtype,
                        "voices_dir": str(voices), "generation.watermark": False, "jetson_patches": "off"})
            eng = ChatterboxTurboEngine(Settings.from_values(cfg).engine)
            t0 = time.perf_counter()
            eng.load()
            run["load_s"] = round(time.perf_counter() - t0, 3)
            st = GenerationSettings(seed=7, watermark=False)
            cancel = threading.Event()
            a = np.concatenate(list(eng.synthesize("Hello from the GPU [laugh].", None, st, cancel)))
            b = np.concatenate(list(eng.synthesize("Hello from the GPU [laugh].", None, st, cancel)))
            c = np.concatenate(list(eng.synthesize("A cloned voice speaks.", str(voices / "alice.wav"), st, cancel)))
            run.update({"builtin_samples": int(a.size), "seed_reproducible": bool(a.size == b.size and
                                                                                 np.array_equal(a, b)),
                        "cloned_samples": int(c.size), "finite": bool(np.isfinite(a).all() and np.isfinite(c).all())})
            info = eng.info().as_dict()
            run["info"] = {k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None), dict))}
            eng.unload()
            torch.cuda.synchronize()
            run["cuda_allocated_after_unload_mib"] = round(torch.cuda.memory_allocated() / 2**20, 1)
            run["ok"] = True
        except Exception as exc:  # noqa: BLE001 - report and go on with the next dtype
            import traceback
            run["ok"] = False
            run["error"] = f"{type(exc).__name__}: {exc}"
            run["traceback"] = traceback.format_exc()[-3000:]
        report["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k != "traceback"}, indent=1), flush=True)

    # time to first chunk through the core (the node's path), fp16 + fast path
    cfg = defaults()
    cfg.update({"engine": "chatterbox_turbo", "model_dir": str(ckpt), "device": "cuda", "dtype": "float16",
                "voices_dir": str(voices), "generation.watermark": False, "jetson_patches": "off"})
    core = SpeechCore(Settings.from_values(cfg))
    core.load()

    class First(JobListener):
        def on_audio(self, job, samples):
            pass

    firsts, totals = [], []
    for i in range(6):
        job = core.submit("The robot answers quickly. Then it says a second sentence.", listener=First())
        r = job.wait(120)
        if r.success:
            firsts.append(job.first_audio - job.created)
            totals.append(time.monotonic() - job.created)
    report["core_fp16"] = {"first_chunk_s_median": float(np.median(firsts[1:])) if len(firsts) > 1 else None,
                           "end_to_end_s_median": float(np.median(totals[1:])) if len(totals) > 1 else None,
                           "status": {k: v for k, v in core.status().flat().items() if isinstance(v, (str, int, float,
                                                                                                bool))}}
    core.unload()
    print(json.dumps(report["core_fp16"], indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine_check.json").write_text(json.dumps(report, indent=2))
    return 0 if all(r.get("ok") for r in report["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
