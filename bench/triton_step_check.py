#!/usr/bin/env python3
"""FastT3's fused Triton pieces on a real GPU, without a model (seconds): the sampler (engines/fast_t3/
sample_kernel.py) against the PyTorch reference (sampling.py) token for token, and both timed in CUDA graphs; the
QKV matrix-vector kernel's key/value write into the cache (kernels.gemv(kv=...)) against index_copy_; the per-step
distribution of the kernel's draws against upstream's way of drawing (torch.multinomial), two-sample KS over --seeds.

    python bench/triton_step_check.py --out DIR [--vocab 6563] [--cases 300] [--seeds 4000]

Writes DIR/triton_step_check.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab", type=int, default=6563)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=4000, help="draws per setting for the distribution check")
    ap.add_argument("--device", default="cuda", help="cpu: with TRITON_INTERPRET=1, checks only (no timings)")
    args = ap.parse_args(argv)
    import torch
    from ros2_chatterbox.engines.fast_t3 import kernels, sample_kernel, sampling
    from ros2_chatterbox.engines.fast_t3.graphs import record, time_replay
    from ros2_chatterbox.engines.fast_t3.state import DecodeState
    from ros2_chatterbox.settings import GenerationSettings
    dev, V = torch.device(args.device), args.vocab
    doc = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu (Triton interpreter)", "torch": torch.__version__, "command": " ".join(sys.argv)}
    try:
        import triton
        doc["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001
        doc["triton"] = f"missing: {exc}"
    args.out.mkdir(parents=True, exist_ok=True)
    save = lambda: (args.out / "triton_step_check.json").write_text(json.dumps(doc, indent=1))  # noqa: E731
    # 4096 tokens: the timings below run 100+ steps on one state (the PyTorch update indexes `out` unchecked)
    st = DecodeState(1, 1, 64, V, 256, 4096, 8, dev, torch.float16)
    g = torch.Generator(device=dev).manual_seed(0)
    settings = [GenerationSettings(), GenerationSettings(min_p=0.05), GenerationSettings(temperature=1.3, top_k=50),
                GenerationSettings(top_k=10000, top_p=1.0), GenerationSettings(temperature=0.5, top_p=0.5)]
    # 1. the same tokens as the reference
    mismatch = {"float32": 0, "float16": 0}
    with torch.inference_mode():
        for i in range(args.cases):
            s = settings[i % len(settings)]
            dtype = torch.float32 if i % 2 == 0 else torch.float16
            logits = (3 * torch.randn(1, V, generator=g, device=dev)).to(dtype)
            st.set_sampling(s)
            st.reset()
            st.seen.zero_()
            st.seen[:, torch.randint(0, V, (40,), generator=g, device=dev)] = True
            st.noise.exponential_(generator=g)
            want = sampling.draw(sampling.process(logits, st.seen, st.params), st.noise_row())
            sample_step(logits, st, sample_kernel)
            if not torch.equal(st.tok, want):
                mismatch[str(dtype).replace("torch.", "")] += 1
    doc["sampler_equality"] = {"cases": args.cases, "mismatches": mismatch}
    save()
    # 2. time per call in a captured graph (20 calls per replay), defaults (0.8 / 1000 / 0.95 / 1.2)
    with torch.inference_mode():
        logits = (3 * torch.randn(1, V, generator=g, device=dev)).half()
        st.set_sampling(GenerationSettings())
        st.seen.zero_()
        st.seen[:, :200] = True

        def torch_sampler():
            st.update(sampling.draw(sampling.process(logits, st.seen, st.params), st.noise_row()))

        def triton_sampler():
            sample_step(logits, st, sample_kernel)

        def greedy_triton():
            sample_kernel.sample_step(logits, st.params, st.seen, st.noise, st.out, st.tok, st.pos, st.step, True)

        def warps(n):
            return lambda: sample_kernel.sample_step(logits, st.params, st.seen, st.noise, st.out, st.tok, st.pos,
                                                     st.step, False, num_warps=n)

        timings = {}
        impls = [("torch", torch_sampler), ("triton", triton_sampler), ("triton_greedy", greedy_triton)]
        impls += [(f"triton_{n}_warps", warps(n)) for n in (4, 8, 16, 32)]
        for name, fn in [] if dev.type != "cuda" else impls:
            try:
                graph = record(fn, dev, st.reset, reps=20, warmup=2)
                timings[name] = round(1000 * time_replay(graph, dev, 5, st.reset) / 20, 2)
                del graph
            except Exception as exc:  # noqa: BLE001
                timings[name] = f"{type(exc).__name__}: {exc}"[:300]
        doc["sampler_us_per_call"] = timings
    save()
    # 3. the QKV kernel writes this position's keys/values into the cache
    try:
        with torch.inference_mode():
            for D, H in ((1024, 16), (768, 12)):
                x = torch.randn(1, D, generator=g, device=dev).half()
                w = (torch.randn(3 * D, D, generator=g, device=dev) / D ** 0.5).half()
                b = (0.1 * torch.randn(3 * D, generator=g, device=dev)).half()
                cache = torch.zeros(2, H, 512, D // H, device=dev, dtype=torch.float16)
                pos = torch.tensor([137], device=dev)
                y = kernels.gemv(x, w, b, kv=(cache, pos))
                ref = torch.zeros_like(cache)
                ref.index_copy_(2, pos, y[:, D:].view(2, H, 1, D // H))
                doc.setdefault("kv_write", []).append({"D": D, "equal": bool(torch.equal(cache, ref))})
    except Exception as exc:  # noqa: BLE001
        doc["kv_write_error"] = f"{type(exc).__name__}: {exc}"[:300]
    save()
    # 4. the per-step distribution: --seeds kernel draws (each with its own Exp(1) noise) against as many draws of
    # upstream's way (the processors, then torch.multinomial of the softmax) from the same logits; two-sample KS
    # over the tokens ranked by probability
    with torch.inference_mode():
        for name, s in (("defaults", GenerationSettings()), ("min_p 0.05", GenerationSettings(min_p=0.05))):
            logits = (3 * torch.randn(1, V, generator=g, device=dev)).half()
            st.set_sampling(s)
            seen = torch.zeros(1, V, dtype=torch.bool, device=dev)
            seen[:, torch.randint(0, V, (40,), generator=g, device=dev)] = True
            probs = sampling.process(logits, seen, st.params).softmax(-1)[0]
            rank = torch.empty(V, dtype=torch.long, device=dev)
            rank[probs.argsort(descending=True)] = torch.arange(V, device=dev)
            ours = []
            for _ in range(args.seeds):
                st.reset()
                st.seen.copy_(seen)
                st.noise[0].exponential_(generator=g)
                sample_step(logits, st, sample_kernel)
                ours.append(st.tok.clone())
            ours = rank[torch.cat(ours)].cpu()
            theirs = rank[torch.multinomial(probs, args.seeds, replacement=True, generator=g)].cpu()
            d, p = ks_2samp(ours, theirs)
            doc.setdefault("distribution", []).append({"setting": name, "seeds": args.seeds, "ks_d": round(d, 4),
                                                       "ks_p": round(p, 4), "support": int((probs > 0).sum())})
    save()
    print(json.dumps(doc, indent=1))
    return 0


def ks_2samp(a, b):
    """Two-sample Kolmogorov-Smirnov statistic D and its asymptotic p-value (Stephens' correction; conservative for
    discrete data), for 1-D tensors of equal length n."""
    import math
    import torch
    n = a.numel()
    values = torch.cat([a, b]).unique()
    cdf_a = torch.searchsorted(a.sort().values, values, right=True).double() / n
    cdf_b = torch.searchsorted(b.sort().values, values, right=True).double() / n
    d = float((cdf_a - cdf_b).abs().max())
    en = math.sqrt(n / 2)
    lam = (en + 0.12 + 0.11 / en) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101)) if lam > 0 else 1.0
    return d, min(1.0, max(0.0, p))


def sample_step(logits, st, sample_kernel) -> None:
    sample_kernel.sample_step(logits, st.params, st.seen, st.noise, st.out, st.tok, st.pos, st.step, False)


if __name__ == "__main__":
    sys.exit(main())
