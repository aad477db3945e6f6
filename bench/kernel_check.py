#!/usr/bin/env python3
"""The fused matrix-vector kernel (FastT3's Triton path) on a CUDA GPU, for GPT-2 small (Chatterbox-Nano: 768 wide)
and medium (Turbo: 1024 wide) and odd widths: equality with the PyTorch ops it replaces, and the time of one call
per decode-step shape (Triton vs the PyTorch ops; a few row-block sizes), each timed as 100 calls captured in a CUDA
graph (how FastT3 runs them).

    python bench/kernel_check.py --out DIR [--cold]   # DIR/kernels.json, DIR/kernels.md

--cold also times each shape with its weights read from memory, not from L2 (calls cycle through copies of the
weight that together exceed any L2, as the decode step reads 24 layers' weights once each), over a sweep of
block_n x block_k x num_warps: what the kernel's tiling should be at the bandwidth limit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def graph_us(fn, calls: int = 100, reps: int = 5) -> float:
    """Microseconds per call of `fn`, `calls` of them captured in one CUDA graph, best of `reps` replays."""
    import torch
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    best = float("inf")
    for _ in range(reps):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        g.replay()
        e1.record()
        torch.cuda.synchronize()
        best = min(best, e0.elapsed_time(e1) * 1000 / calls)
    return best


def timings(D: int, dtype):
    import torch
    import torch.nn.functional as F
    from ros2_chatterbox.engines.fast_t3 import kernels as tk
    rows = []
    for N, K, ln, act, res in tk.step_shapes(D):
        x = torch.randn(1, K, device="cuda", dtype=dtype)
        w = (torch.randn(N, K, device="cuda", dtype=dtype) / K ** 0.5).contiguous()
        wt = w.t()  # the PyTorch path's Conv1D layout (in, out)
        b = torch.randn(N, device="cuda", dtype=dtype)
        lnp = (torch.ones(K, device="cuda", dtype=dtype), torch.zeros(K, device="cuda", dtype=dtype), 1e-5)
        r = torch.randn(1, N, device="cuda", dtype=dtype)

        def torch_ops():
            h = F.layer_norm(x, (K,), lnp[0], lnp[1], lnp[2]) if ln else x
            y = torch.addmm(b, h, wt)
            if act:
                y = F.gelu(y, approximate="tanh")
            return y + r if res else y

        row = {"D": D, "N": N, "K": K, "ln": ln, "act": act, "res": res, "tiling": tk.tiling(N, K).__dict__,
               "mb": round(N * K * w.element_size() / 2**20, 2), "torch_us": round(graph_us(torch_ops), 2)}
        for bn in (2, 4, 8, 16):
            row[f"triton_bn{bn}_us"] = round(graph_us(lambda: tk.gemv(x, w, b, ln=lnp if ln else None, act=act,
                                                                      res=r if res else None, block_n=bn)), 2)
        row["triton_us"] = row[f"triton_bn{tk.tiling(N, K).block_n}_us"]
        row["triton_tb_s"] = round(N * K * w.element_size() / (row["triton_us"] * 1e-6) / 1e12, 2)
        rows.append(row)
    return rows


COLD_MB = 512  # weight copies per shape: more than any GPU's L2


def cold_sweep(D: int, dtype):
    """Per step shape: microseconds per call with cold weights (cycling through copies), for each tiling."""
    import torch
    from ros2_chatterbox.engines.fast_t3 import kernels as tk
    rows = []
    for N, K, ln, act, res in tk.step_shapes(D):
        size = N * K * torch.finfo(dtype).bits // 8
        copies = max(2, (COLD_MB << 20) // size)
        ws = [(torch.randn(N, K, device="cuda", dtype=dtype) / K ** 0.5).contiguous() for _ in range(copies)]
        x, b = torch.randn(1, K, device="cuda", dtype=dtype), torch.randn(N, device="cuda", dtype=dtype)
        lnp = (torch.ones(K, device="cuda", dtype=dtype), torch.zeros(K, device="cuda", dtype=dtype), 1e-5)
        r = torch.randn(1, N, device="cuda", dtype=dtype)
        row = {"D": D, "N": N, "K": K, "mb": round(size / 2**20, 2), "copies": copies,
               "default": tk.tiling(N, K).__dict__, "configs": []}
        for bn in (4, 8, 16):
            for bk in sorted({tk.tiling(N, K).block_k, 256, 512, 1024} - {0}):
                for nw in (4, 8):
                    def calls(bn=bn, bk=bk, nw=nw):
                        for w in ws:
                            tk.gemv(x, w, b, ln=lnp if ln else None, act=act, res=r if res else None,
                                    block_n=bn, block_k=bk, num_warps=nw)
                    try:
                        us = graph_us(calls, calls=1) / copies
                        row["configs"].append({"block_n": bn, "block_k": bk, "num_warps": nw, "us": round(us, 2),
                                               "tb_s": round(size / (us * 1e-6) / 1e12, 2)})
                    except Exception as exc:  # noqa: BLE001 - a tiling Triton refuses is a result too
                        row["configs"].append({"block_n": bn, "block_k": bk, "num_warps": nw,
                                               "error": f"{type(exc).__name__}: {exc}"[:200]})
        ok = [c for c in row["configs"] if "us" in c]
        row["best"] = min(ok, key=lambda c: c["us"]) if ok else None
        row["default_us"] = next((c["us"] for c in ok if c["block_n"] == row["default"]["block_n"]
                                  and c["block_k"] == row["default"]["block_k"] and c["num_warps"] == 4), None)
        rows.append(row)
        del ws
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cold", action="store_true", help="also the cold-weights tiling sweep")
    args = ap.parse_args(argv)
    import torch
    from ros2_chatterbox.engines.fast_t3 import kernels as tk
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": "python " + " ".join(sys.argv), "gpu": torch.cuda.get_device_name(0),
           "torch": torch.__version__, "triton": getattr(__import__("triton"), "__version__", None)}
    shapes = [s for d in (768, 1024, 96) for s in tk.step_shapes(d)] + [(77, 1600, True, True, True),
                                                                       (5, 1000, False, False, True)]
    doc["equality"] = []
    for dtype, tol in ((torch.float16, 3e-2), (torch.bfloat16, 6e-2), (torch.float32, 1e-4)):
        for row in tk.check(shapes, dtype):
            row["ok"] = row["rel_err"] <= tol
            doc["equality"].append(row)
    doc["all_equal"] = all(r["ok"] for r in doc["equality"])
    doc["timings"] = [t for d in (768, 1024) for t in timings(d, torch.float16)]
    (args.out / "kernels.json").write_text(json.dumps(doc, indent=1) + "\n")
    if args.cold:
        doc["cold"] = [t for d in (768, 1024) for t in cold_sweep(d, torch.float16)]
        (args.out / "kernels.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# Fused matrix-vector kernel on {doc['gpu']} ({doc['date_utc']})", "",
             f"- command: `{doc['command']}`; torch {doc['torch']}, triton {doc['triton']}",
             f"- equality with the PyTorch ops (fp16 <= 3e-2, bf16 <= 6e-2, fp32 <= 1e-4 relative): "
             f"{sum(r['ok'] for r in doc['equality'])}/{len(doc['equality'])} shapes; worst "
             f"{max(r['rel_err'] for r in doc['equality']):.2e}", "",
             "fp16, one call, us (100 calls in a CUDA graph):", "",
             "| width | N x K | MB | PyTorch ops | Triton | block_n 2 / 4 / 8 / 16 | TB/s |",
             "|---|---|---|---|---|---|---|"]
    for t in doc["timings"]:
        lines.append(f"| {t['D']} | {t['N']} x {t['K']} | {t['mb']} | {t['torch_us']} | {t['triton_us']} | "
                     f"{t['triton_bn2_us']} / {t['triton_bn4_us']} / {t['triton_bn8_us']} / {t['triton_bn16_us']} | "
                     f"{t['triton_tb_s']} |")
    if doc.get("cold"):
        lines += ["", "fp16, weights cold (read from memory: calls cycle through copies beyond L2), us per call:", "",
                  "| width | N x K | MB | default tiling | us | best (block_n, block_k, warps) | us | TB/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in doc["cold"]:
            d, best = t["default"], t["best"] or {}
            lines.append(f"| {t['D']} | {t['N']} x {t['K']} | {t['mb']} | {d['block_n']}, {d['block_k']}, 4 | "
                         f"{t['default_us']} | {best.get('block_n')}, {best.get('block_k')}, {best.get('num_warps')} | "
                         f"{best.get('us')} | {best.get('tb_s')} |")
    (args.out / "kernels.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0 if doc["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
