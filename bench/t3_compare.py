#!/usr/bin/env python3
"""Chatterbox Turbo's T3 against Chatterbox-Nano's, token for token, in one process: random full-size T3s of both
(upstream's T3 class, built as the engine builds them: engines/chatterbox/models.py), one voice prompt (375 tokens),
FastT3 decoding the same text with upstream's sampling defaults and the stop token suppressed, the two models
alternating run by run. On a shared machine whose load changes from minute to minute (this 2-core development box),
alternating exposes both to the same load, so the ratio means something where separate bench_turbo.py runs do not.

    python bench/t3_compare.py --out DIR [--tokens 24] [--reps 5] [--device cpu] [--threads 2]

Writes DIR/t3_compare.json and DIR/t3_compare.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from common import S3_CODES, STOP

TEXT = "Hi there, how can I help you?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from ros2_chatterbox.engines.chatterbox import models
    from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import write_tokenizer
    from ros2_chatterbox.engines.fast_t3 import FastT3, release_text_head
    from ros2_chatterbox.settings import GenerationSettings
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tok").mkdir(exist_ok=True)
    write_tokenizer(args.out / "tok")
    text = AutoTokenizer.from_pretrained(args.out / "tok")(TEXT, return_tensors="pt").input_ids.to(args.device)
    g = torch.Generator().manual_seed(0)
    spk = torch.randn(1, 256, generator=g)
    prompt = torch.randint(0, S3_CODES, (1, 375), generator=g)
    cond = T3Cond(speaker_emb=spk / spk.norm(), cond_prompt_speech_tokens=prompt,
                  emotion_adv=0.5 * torch.ones(1, 1, 1)).to(device=args.device)
    fast, info = {}, {}
    for name in ("turbo", "nano"):
        torch.manual_seed(0)
        t3 = models.build_t3(models.MODELS[name])
        del t3.tfmr.wte
        t3.to(args.device).eval()
        with torch.no_grad():
            t3.speech_head.bias[STOP] = -1e4  # exact token counts
        released = release_text_head(t3)
        fast[name] = FastT3(t3)
        in_use = sum(p.numel() for p in t3.parameters())
        info[name] = {"t3_params_in_use": in_use, "t3_mb_in_use": round(in_use * 4 / 2**20, 1),
                      "text_head_released_mb": round(released / 2**20, 1), "runs_ms_per_token": []}
    settings = GenerationSettings()  # upstream's sampling defaults (0.8 / 1000 / 0.95 / 1.2, min_p off)
    for name in ("turbo", "nano"):  # warm-up (voice prefix)
        fast[name].generate(cond, text, settings, generator=torch.Generator(device=args.device).manual_seed(1),
                            max_new_tokens=4)
    for rep in range(args.reps):
        for name in ("turbo", "nano") if rep % 2 == 0 else ("nano", "turbo"):
            gen = torch.Generator(device=args.device).manual_seed(100 + rep)
            t0 = time.perf_counter()
            out = fast[name].generate(cond, text, settings, generator=gen, max_new_tokens=args.tokens - 1)
            dt = time.perf_counter() - t0
            assert out.shape[-1] == args.tokens, out.shape
            info[name]["runs_ms_per_token"].append(round(1000 * dt / args.tokens, 2))
            print(f"{name}: {1000 * dt / args.tokens:.1f} ms/token", flush=True)
    for name in info:
        info[name]["median_ms_per_token"] = statistics.median(info[name]["runs_ms_per_token"])
        info[name]["best_ms_per_token"] = min(info[name]["runs_ms_per_token"])
    ratio = info["nano"]["median_ms_per_token"] / info["turbo"]["median_ms_per_token"]
    ratio_best = info["nano"]["best_ms_per_token"] / info["turbo"]["best_ms_per_token"]
    doc = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python " + " ".join(sys.argv), "device": args.device,
           "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "loadavg": list(os.getloadavg()), "torch": torch.__version__, "tokens": args.tokens, "reps": args.reps,
           "models": info, "nano_over_turbo": round(ratio, 3),
           "nano_over_turbo_best": round(ratio_best, 3)}
    (args.out / "t3_compare.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# T3 decode, Turbo vs Nano, alternating runs ({doc['date_utc']})", "",
             f"- device {args.device} ({doc['cpu']}, {doc['threads']} threads, load average at the end "
             f"{', '.join(f'{x:.1f}' for x in doc['loadavg'])}); torch {doc['torch']}; command: `{doc['command']}`",
             f"- FastT3 (fp32, eager on CPU), {args.tokens} tokens incl. prefill after a cached 375-token voice "
             f"prompt, upstream's sampling defaults, {args.reps} runs per model, alternating", "",
             "| model | T3 parameters in use | ms per token (median) | best | runs |", "|---|---|---|---|---|"]
    for name in ("turbo", "nano"):
        m = info[name]
        lines.append(f"| {name} | {m['t3_params_in_use'] / 1e6:.0f} M | {m['median_ms_per_token']} | "
                     f"{m['best_ms_per_token']} | "
                     f"{', '.join(str(x) for x in m['runs_ms_per_token'])} |")
    lines += ["", f"Nano / Turbo: {ratio:.2f} (medians), {ratio_best:.2f} (best runs)"]
    (args.out / "t3_compare.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
