"""Configure's load step: time and peak host memory of upstream's `ChatterboxTurboTTS.from_local` against the engine's
loader (`models.load_local`: no random init, the weights read once, straight onto the device), on random full-size
weights in the real checkpoint layout; and that both give equal parameters and buffers.

Each loader runs in a fresh process (peak RSS is per process), `--repeats` times, alternating. On a Jetson host and
GPU share one RAM, so the host peak during configure is memory the robot must have free.

    python bench/load_memory.py --ckpt /tmp/cbx-full --out bench/results/cpu-load-2026-12-01 [--model nano]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import build_full_checkpoint, install_stubs


def child(loader: str, ckpt: Path, device: str, model: str) -> None:
    """One load in this process; prints one JSON line."""
    install_stubs()
    import torch  # noqa: F401 - imported before the clock starts, as the node has it imported at configure
    import chatterbox.tts_turbo as tts_turbo
    from ros2_chatterbox.engines.chatterbox import gpu_memory, models
    spec = models.model_spec(model)
    rss0 = gpu_memory.rss_bytes()
    t0 = time.perf_counter()
    if loader == "from_local":
        m = tts_turbo.ChatterboxTurboTTS.from_local(ckpt, device) if spec.name == "turbo" else None
        if m is None:
            raise SystemExit("upstream 0.1.7's from_local has no Nano")
    else:
        m = models.load_local(ckpt, device, spec)
    seconds = time.perf_counter() - t0
    weights = sum(t.numel() * t.element_size() for part in (m.ve, m.t3, m.s3gen)
                  for t in list(part.parameters()) + list(part.buffers()))
    print(json.dumps({"loader": loader, "seconds": round(seconds, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      "rss_before_mb": round(rss0 / 2**20), "rss_after_mb": round(gpu_memory.rss_bytes() / 2**20),
                      "weights_mb": round(weights / 2**20)}), flush=True)


def compare(ckpt: Path, device: str) -> dict:
    """Both loaders in one process: every parameter and buffer equal (dtype, shape, values)."""
    install_stubs()
    import torch
    import chatterbox.tts_turbo as tts_turbo
    from ros2_chatterbox.engines.chatterbox import models
    a = tts_turbo.ChatterboxTurboTTS.from_local(ckpt, device)
    b = models.load_local(ckpt, device, models.model_spec("turbo"))
    checked, different = 0, []
    for part in ("ve", "t3", "s3gen"):
        ta = {**dict(getattr(a, part).named_parameters()), **dict(getattr(a, part).named_buffers())}
        tb = {**dict(getattr(b, part).named_parameters()), **dict(getattr(b, part).named_buffers())}
        if sorted(ta) != sorted(tb):
            different.append(f"{part}: names {sorted(set(ta) ^ set(tb))[:5]}")
        for k in ta.keys() & tb.keys():
            checked += 1
            if ta[k].dtype != tb[k].dtype or not torch.equal(ta[k], tb[k]):
                different.append(f"{part}.{k}")
    return {"tensors_compared": checked, "different": different[:20], "equal": not different}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", type=Path, default=Path("/tmp/cbx-full"), help="full-size checkpoint (built if absent)")
    ap.add_argument("--out", type=Path, required=False)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="turbo", choices=("turbo", "nano"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", choices=("from_local", "load_local"))
    ap.add_argument("--compare", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.ckpt, args.device, args.model)
        return 0
    if args.compare:
        print(json.dumps(compare(args.ckpt, args.device)), flush=True)
        return 0
    if not (args.ckpt / "s3gen_meanflow.safetensors").exists():
        install_stubs()
        build_full_checkpoint(args.ckpt, model=args.model)
    loaders = ["load_local"] if args.model == "nano" else ["from_local", "load_local"]
    runs = []
    me = [sys.executable, str(Path(__file__).resolve()), "--ckpt", str(args.ckpt), "--device", args.device,
          "--model", args.model]
    for _ in range(args.repeats):
        for loader in loaders:
            out = subprocess.run(me + ["--child", loader], capture_output=True, text=True, timeout=1800, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpu_count": os.cpu_count(),
              "device": args.device, "model": args.model, "command": " ".join(["python"] + sys.argv),
              "runs": runs}
    if args.model == "turbo":
        out = subprocess.run(me + ["--compare"], capture_output=True, text=True, timeout=1800, check=True)
        result["equality"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(result["equality"], flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"load_{args.model}.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
