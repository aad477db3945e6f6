#!/usr/bin/env python3
"""S3Gen's flow in float16 against float32: the tolerance check at full size, the memory it saves, the decode time.

Loads the same checkpoint twice through the engine's loader (`checkpoint.load_model`): S3Gen's flow in float32 and in
float16 (`s3gen_dtype`; T3 in float16 in both, as the engine runs on CUDA). For 3 voices (synthetic reference
recordings of different pitch) x 3 lengths (25, 100, 300 speech tokens: 1, 4, 12 s), the same tokens, conditioning
and noise go through both models' S3Gen (flow + HiFT, the engine's StreamDecoder, one final step) and
`s3gen_precision.compare` reports the waveform SNR and the log-mel L1 distance against `s3gen_precision.TOLERANCE`.
Then: the weights of S3Gen per part and dtype, the device memory each S3Gen holds, the peak extra device memory of
one decode, and the decode time per call (median of --reps).

    python bench/s3gen_precision.py --out FILE.json [--ckpt DIR] [--model nano]   # GPU, random full-size weights
    python bench/s3gen_precision.py --tiny --out FILE.json                          # CPU smoke run (tiny checkpoint)

`--hift-half` adds an experiment: HiFT's convolutions in float16 as well (its sine source stays float32), to show
what that would cost in accuracy. Random weights are not trained weights: these numbers bound the arithmetic
error of half precision on this architecture, not what a listener hears with the real model.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict

from common import build_full_checkpoint, install_stubs, versions

VOICES = ((100.0, 1), (160.0, 2), (230.0, 3))  # (f0 Hz, noise seed) of the synthetic reference recordings
LENGTHS = (25, 100, 300)
PARTS = (("flow", "flow"), ("hift", "mel2wav"), ("s3_tokenizer", "tokenizer"), ("speaker_encoder", "speaker_encoder"))


def weights_mb(s3gen) -> Dict[str, Dict[str, float]]:
    """{part: {dtype: MiB}} of S3Gen's parameters and buffers."""
    out: Dict[str, Dict[str, float]] = {}
    for name, attr in PARTS:
        sizes: Dict[str, float] = {}
        module = getattr(s3gen, attr)
        for t in list(module.parameters()) + list(module.buffers()):
            key = str(t.dtype).replace("torch.", "")
            sizes[key] = round(sizes.get(key, 0.0) + t.numel() * t.element_size() / 2 ** 20, 2)
        out[name] = sizes
    return out


def hift_half(model) -> None:
    """Experiment only: HiFT's f0 predictor and convolutions in float16 (inputs cast in, output cast out); the sine
    source (m_source, built in float32 by StreamDecoder.vocode) and the STFT/iSTFT (float32 window) stay float32."""
    import torch
    hift = model.s3gen.mel2wav
    with torch.no_grad():
        hift.half()
        hift.m_source.float()
    f0_forward, decode, stft, istft = hift.f0_predictor.forward, hift.decode, hift._stft, hift._istft
    hift._stft = lambda x: tuple(t.half() for t in stft(x.float()))
    hift._istft = lambda magnitude, phase: istft(magnitude.float(), phase.float())
    hift.f0_predictor.forward = lambda x: f0_forward(x.half()).float()
    hift.decode = lambda x, s: decode(x=x.half(), s=s.half()).float()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (built there when empty)")
    ap.add_argument("--model", default="turbo", choices=("turbo", "nano"))
    ap.add_argument("--tiny", action="store_true", help="tiny checkpoint on the CPU (smoke run)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--reps", type=int, default=5, help="decode calls timed per model and length")
    ap.add_argument("--hift-half", action="store_true", help="also try HiFT in float16 (experiment)")
    args = ap.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]

    doc: Dict[str, Any] = {"command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "stubs": install_stubs()}
    import torch
    from ros2_chatterbox.engines.chatterbox import checkpoint, models, s3gen_precision as sp
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny
    from ros2_chatterbox.engines.chatterbox.voice_cache import compute_conds
    doc["versions"] = versions()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda:0"
    cuda = device.startswith("cuda")
    if not cuda:
        torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="cbx-s3p-"))
    spec = models.model_spec(args.model)
    ckpt = args.ckpt or work / "ckpt"
    if not (ckpt / spec.t3_file).exists():
        if args.tiny:
            tiny.build_tiny_checkpoint(ckpt, with_conds=False, model=args.model)
        else:
            build_full_checkpoint(ckpt, model=args.model)
    t3_dtype = torch.float16 if cuda else torch.float32
    doc.update(device=device, model=args.model, tiny=bool(args.tiny), t3_dtype=str(t3_dtype),
               tolerance=sp.tolerance_dict(), flow_fp32=[p for p, _ in sp.FLOW_FP32])

    def load(s3gen_dtype):
        before = torch.cuda.memory_allocated() if cuda else 0
        model, _ = checkpoint.load_model(ckpt, device, t3_dtype, "bench", spec, s3gen_dtype=s3gen_dtype)
        if cuda:
            torch.cuda.synchronize()
        return model, (torch.cuda.memory_allocated() - before) / 2 ** 20 if cuda else None

    m32, dev32 = load(torch.float32)
    m16, dev16 = load(torch.float16)
    s3_32 = sum(t.numel() * t.element_size() for t in list(m32.s3gen.parameters()) + list(m32.s3gen.buffers()))
    s3_16 = sum(t.numel() * t.element_size() for t in list(m16.s3gen.parameters()) + list(m16.s3gen.buffers()))
    doc["memory"] = {
        "s3gen_weights_mb": {"float32": weights_mb(m32.s3gen), "float16_flow": weights_mb(m16.s3gen)},
        "s3gen_total_mb": {"float32": round(s3_32 / 2 ** 20, 1), "float16_flow": round(s3_16 / 2 ** 20, 1),
                           "saved": round((s3_32 - s3_16) / 2 ** 20, 1)},
        "model_device_mb": {"float32": dev32 and round(dev32, 1), "float16_flow": dev16 and round(dev16, 1)},
    }
    print(json.dumps(doc["memory"]["s3gen_total_mb"]), flush=True)

    refs = []
    for f0, seed in VOICES:
        wav = tiny.write_reference_wav(work / f"voice{seed}.wav", seconds=10.0, f0=f0, seed=seed)
        refs.append(((f0, seed), compute_conds(m32, str(wav)).gen))  # the engine's voice conditioning

    def tokens_for(n: int):
        return torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(1000 + n))

    # warm-up (cuDNN autotuning, first-call set-up) for every length and both models, not counted
    for n in lengths:
        sp.compare(m32, m16, refs[0][1], tokens_for(n), tolerance=None)

    rows = []
    for (f0, vseed), ref in refs:
        for n in lengths:
            r = sp.compare(m32, m16, ref, tokens_for(n), seed=vseed)
            r.update(voice_f0=f0, voice_seed=vseed)
            rows.append(r)
            print(json.dumps(r), flush=True)
    doc["comparisons"] = rows
    doc["all_ok"] = all(r["ok"] for r in rows)
    doc["worst"] = {"snr_db": min(r["snr_db"] for r in rows), "mel_l1": max(r["mel_l1"] for r in rows),
                    "flow_mel_l1": max(r["flow_mel_l1"] for r in rows)}

    # decode time and the peak extra device memory of one decode, per model and length
    timing = []
    for n in lengths:
        row: Dict[str, Any] = {"tokens": n}
        for label, model in (("float32", m32), ("float16_flow", m16)):
            times = []
            if cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            for _ in range(max(1, args.reps)):
                times.append(sp.decode(model, refs[0][1], tokens_for(n), seed=1)["seconds"])
            row[f"decode_s_{label}"] = round(statistics.median(times), 4)
            if cuda:
                row[f"decode_peak_extra_mb_{label}"] = round((torch.cuda.max_memory_allocated() - base) / 2 ** 20, 1)
        timing.append(row)
        print(json.dumps(row), flush=True)
    doc["timing"] = timing

    if args.hift_half:
        m16h, _ = load(torch.float16)
        try:
            hift_half(m16h)
            exp = []
            for (f0, vseed), ref in refs[:1]:
                for n in lengths:
                    r = sp.compare(m32, m16h, ref, tokens_for(n), seed=vseed)
                    exp.append(r)
                    print("hift-half", json.dumps(r), flush=True)
            doc["hift_half_experiment"] = exp
        except Exception as exc:  # noqa: BLE001 - the experiment's failure is its result
            doc["hift_half_experiment"] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            print("hift-half failed:", doc["hift_half_experiment"]["error"], flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"all within tolerance: {doc['all_ok']}; worst {doc['worst']}; wrote {args.out}")
    return 0 if doc["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
