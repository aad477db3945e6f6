#!/usr/bin/env python3
"""Side-by-side speed benchmark: upstream `ChatterboxTurboTTS.generate` vs the project's fast T3 path (FastT3).

Both run in the same process on the same weights: random, full size, in the real checkpoint layout (the real
VoiceEncoder / T3 / S3Gen classes, random init, saved as safetensors and loaded through upstream `from_local`),
the same voice conditioning (upstream `prepare_conditionals` on a synthetic 16 s reference) and exact token counts
(the stop token's bias is set to -1e4, so every request yields exactly the asked number of speech tokens:
50 = 2 s and 250 = 10 s of audio at 25 tokens/s). Sampling uses upstream's defaults (temperature 0.8, top-k 1000,
top-p 0.95, repetition penalty 1.2). The watermark is off for both (resemble-perth is not needed to measure).

Per configuration (implementation, T3 dtype, CUDA graphs on/off, FastT3's kernels and sampler) and length it
reports: T3 ms per speech token, time to the first audio chunk (upstream: the whole utterance; fast path: 25 tokens
streamed, then S3Gen on them), end-to-end time (text -> 24 kHz waveform on the host), real-time factor, peak GPU
memory; plus load time, conditioning time, the fast path's set-up time (voice prefix + graph capture), greedy-token
equality with upstream at full size, seed reproducibility, the captured decode step's replay time per attention
length (greedy and sampled: the sampler's cost inside the step; the bytes the step reads and the bandwidth that
achieves), the sampler alone (PyTorch ops and the Triton kernel, captured), a kernel profile of one step, and a
projection onto Jetson Orin (the memory-bandwidth floor of T3 per token and per second of audio from the bytes a
step reads).

    python bench/bench_turbo.py --out DIR                       # GPU, full size (see bench/README.md)
    python bench/bench_turbo.py --tiny --out DIR                # CPU smoke run with the tiny checkpoint (<60 s)
    python bench/bench_turbo.py --full --device cpu --lengths 24 --out DIR   # full size on CPU, a few tokens

Writes DIR/bench.json (updated after every configuration) and DIR/bench.md.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from common import (CONFIG_ENV, REPO, S3_CODES, SILENCE, SR, STOP, build_full_checkpoint, install_stubs,
                    versions)

SAMPLING = dict(temperature=0.8, top_k=1000, top_p=0.95, repetition_penalty=1.2)
TEXTS = {
    # ~2 s and ~10 s of speech; with EOS suppressed the token count is exact anyway
    "short": "Hi there, how can I help you?",
    "long": ("The battery is at forty percent, so I will finish cleaning the kitchen first and then go back to "
             "the charging station before I start on the living room."),
}


# ------------------------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------------------------
def load_model(folder: Path, device: str, tiny: bool, model: str = "turbo"):
    """Turbo through upstream's from_local, Nano through models.load_local (the engine's two paths)."""
    import contextlib
    from chatterbox.tts_turbo import ChatterboxTurboTTS
    from ros2_chatterbox.engines.chatterbox import models, tiny_checkpoint as tiny_turbo
    spec = models.model_spec(model)
    arch = tiny_turbo.read_arch(folder) if tiny else None
    with tiny_turbo.tiny_patches(arch) if tiny else contextlib.nullcontext():
        if spec.name == "turbo":
            return ChatterboxTurboTTS.from_local(folder, device)
        m = models.load_local(folder, device, spec, arch["t3"] if arch else None)
    m.s3gen.tokenizer = m.s3gen.tokenizer.load().to(device)  # resident again: upstream's prepare_conditionals runs it
    return m


# ------------------------------------------------------------------------------------------------------------------
# measurement helpers
# ------------------------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, out: Path):
        import torch
        self.torch = torch
        self.args = args
        self.out = out
        self.device = args.device
        self.cuda = self.device.startswith("cuda")
        self.doc: Dict[str, Any] = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                                    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                                        timespec="seconds"),
                                    "mode": "tiny" if args.tiny else "full", "model": args.model,
                                    "device": self.device, "rows": [],
                                    "equality": [], "micro": [], "sampler_alone": [], "profile": [], "errors": [],
                                    "notes": []}

    def save(self) -> None:
        path = self.out / "bench.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        tmp.replace(path)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self, model=None) -> None:
        """Start a peak-memory window. Memory still allocated from earlier configurations of this process
        (beyond the model, its conditioning and what the first configuration started with: cuBLAS workspaces)
        is subtracted from the peak, so each configuration reads as if it ran alone."""
        self.garbage = 0
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats()
            if model is not None:
                extra = self.torch.cuda.memory_allocated() - resident_bytes(model)
                if getattr(self, "extra0", None) is None:
                    self.extra0 = extra
                self.garbage = max(0, extra - self.extra0)

    def peak_gib(self) -> Optional[float]:
        if self.cuda:
            return round((self.torch.cuda.max_memory_allocated() - self.garbage) / 2**30, 3)
        try:
            import resource
            return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # host RSS, GiB
        except Exception:
            return None

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def set_t3_dtype(model, dtype, t3_state, cond0) -> None:
    """T3 in `dtype` from the pristine fp32 weights (text head restored if a fast config released it);
    conditioning cast to match (upstream needs it for fp16)."""
    import torch
    from ros2_chatterbox.engines.fast_t3 import cast_cond
    t3 = model.t3
    if getattr(t3, "text_head", None) is None:
        t3.text_head = torch.nn.Linear(t3.cfg.hidden_size, t3.hp.text_tokens_dict_size, bias=False,
                                       device=t3.speech_head.weight.device)
    with torch.no_grad():
        for p in t3.parameters():  # undo FastT3's storage-order choice: upstream runs as shipped
            if not p.is_contiguous():
                p.data = p.data.contiguous()
    t3.to(dtype=torch.float32)
    t3.load_state_dict(t3_state, strict=True)
    t3.to(dtype=dtype)
    model.conds.t3 = cast_cond(cond0, dtype)


def resident_bytes(model) -> int:
    """Bytes of the model's parameters and buffers on the device (what stays allocated between requests)."""
    import torch
    seen, n = set(), 0
    for m in (model.t3, model.s3gen, model.ve):
        for t in list(m.parameters()) + list(m.buffers()):
            if t.device.type == "cuda" and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                n += t.numel() * t.element_size()
    for t in list(vars(model.conds.t3).values()) + list(model.conds.gen.values()):
        if torch.is_tensor(t) and t.device.type == "cuda" and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            n += t.numel() * t.element_size()
    return n


class UpstreamT3Timer:
    """Instance-level wrapper of t3.inference_turbo: forces max_gen_len (exact token counts) and times T3."""

    def __init__(self, bench: Bench, t3):
        self.bench, self.t3 = bench, t3
        self.fn = type(t3).inference_turbo
        self.n_tokens = 1
        self.last_s = None
        self.last_n = None

    def __call__(self, *a, **kw):
        kw["max_gen_len"] = self.n_tokens - 1
        self.bench.sync()
        t0 = time.perf_counter()
        r = self.fn(self.t3, *a, **kw)
        self.bench.sync()
        self.last_s = time.perf_counter() - t0
        self.last_n = int(r.shape[-1])
        return r

    def __enter__(self):
        self.t3.inference_turbo = self
        return self

    def __exit__(self, *exc):
        del self.t3.inference_turbo


def tokenize(model, text: str):
    from chatterbox.tts_turbo import punc_norm
    return model.tokenizer(punc_norm(text), return_tensors="pt", padding=True,
                           truncation=True).input_ids.to(model.device)


def speech_to_wav(model, tokens):
    """What upstream generate() does after T3 (without the watermark)."""
    import torch
    tokens = tokens.reshape(-1)
    tokens = tokens[tokens < S3_CODES]
    silence = torch.full((3,), SILENCE, dtype=torch.long, device=tokens.device)
    wav, _ = model.s3gen.inference(speech_tokens=torch.cat([tokens, silence]), ref_dict=model.conds.gen,
                                   n_cfm_timesteps=2)
    return wav.squeeze(0).detach().cpu().numpy()


# ------------------------------------------------------------------------------------------------------------------
def run_upstream(b: Bench, model, dtype_name: str, lengths: List[int]) -> None:
    torch = b.torch
    with UpstreamT3Timer(b, model.t3) as timer:
        for n in lengths:
            text = TEXTS["short"] if n <= 100 else TEXTS["long"]
            reps = b.args.reps if n <= 100 else b.args.reps_long
            timer.n_tokens = n
            b.reset_peak(model)
            runs = []
            for r in range(reps + 1):
                torch.manual_seed(1000 + r)
                b.sync()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    wav = model.generate(text, **SAMPLING)
                b.sync()
                e2e = time.perf_counter() - t0
                if timer.last_n != n:
                    raise RuntimeError(f"upstream made {timer.last_n} tokens, wanted {n}")
                if r > 0:  # the first run warms up
                    runs.append({"e2e_s": e2e, "t3_s": timer.last_s, "audio_s": wav.shape[-1] / SR})
            row = summarise(runs, impl="upstream", dtype=dtype_name, graphs=None, tokens=n)
            row["first_audio_s"] = row["e2e_s"]  # no streaming upstream
            row["peak_gib"] = b.peak_gib()
            row["garbage_gib"] = round(b.garbage / 2**30, 3)
            add_row(b, row)


def summarise(runs: List[Dict[str, float]], **fields) -> Dict[str, Any]:
    row = dict(fields)
    n = fields["tokens"]
    e2e = median([r["e2e_s"] for r in runs])
    t3 = median([r["t3_s"] for r in runs])
    row.update(e2e_s=round(e2e, 4), e2e_all=[round(r["e2e_s"], 4) for r in runs], t3_s=round(t3, 4),
               ms_per_token=round(1000 * t3 / n, 3), s3gen_s=round(e2e - t3, 4),
               audio_s=round(runs[0]["audio_s"], 3), rtf=round(e2e / runs[0]["audio_s"], 4), reps=len(runs))
    return row


def variant(r: Dict[str, Any]) -> str:
    """CUDA graphs on/off (- for upstream), + which FastT3 parts run as Triton kernels (GEMVs, sampler)."""
    g = {None: "-", True: "on", False: "off"}[r.get("graphs")]
    if r.get("kernels") == "triton":
        g += " + triton kernels"
    if r.get("sampler") == "triton":
        g += " + triton sampler"
    if r.get("attention") == "triton":
        g += " + triton attention"
    return g


def add_row(b: Bench, row: Dict[str, Any]) -> None:
    b.doc["rows"].append(row)
    b.save()
    g = variant(row)
    fa = row.get("first_audio_s")
    print(f"  {row['impl']:8s} {row['dtype']:4s} graphs {g:36s} {row['tokens']:4d} tok: T3 {row['ms_per_token']:8.3f} "
          f"ms/tok  decode {row.get('decode_ms_per_token')}  first audio {fa if fa is None else round(fa, 3)} s  "
          f"e2e {row['e2e_s']:.3f} s  RTF {row['rtf']:.3f}  peak {row.get('peak_gib')} GiB", flush=True)


def run_fast(b: Bench, model, dtype_name: str, dtype, lengths: List[int], graphs: bool, sampler: str,
             greedy_ref: Dict[int, List[int]], kernels: str = "torch", attention: str = "auto") -> None:
    torch = b.torch
    from ros2_chatterbox.engines.fast_t3 import FastT3, release_text_head
    from ros2_chatterbox.settings import GenerationSettings
    cond = model.conds.t3
    released = release_text_head(model.t3) if b.args.release_text_head else 0
    b.reset_peak(model)
    t0 = time.perf_counter()
    fast = FastT3(model.t3, dtype=dtype, cuda_graphs=graphs, check_every=b.args.check_every, kernels=kernels,
                  sampler=sampler, attention=attention)
    max_text = max(int(tokenize(model, t).shape[1]) for t in TEXTS.values())
    fast.warmup(cond, text_len=max_text, max_new_tokens=max(lengths) - 1,
                settings=(SAMPLING, "greedy") if graphs else ())
    b.sync()
    setup_s = time.perf_counter() - t0
    info = fast.info()
    label = dict(impl="fast", dtype=dtype_name, graphs=fast.use_graphs, sampler=info["sampler"],
                 kernels=info["kernels"], attention=info.get("attention"), sampler_asked=sampler,
                 kernels_asked=kernels, attention_asked=attention,
                 kernel_check=info["kernel_check"])
    if graphs and not fast.use_graphs:
        b.doc["errors"].append({"config": f"fast {dtype_name} graphs", "error": info["graph_failures"]})
    settings = GenerationSettings(**SAMPLING)
    try:
        for n in lengths:
            text = TEXTS["short"] if n <= 100 else TEXTS["long"]
            reps = b.args.reps if n <= 100 else b.args.reps_long
            runs, decode = [], []
            for r in range(reps + 1):
                g = torch.Generator(device=fast.device).manual_seed(1000 + r)
                b.sync()
                t0 = time.perf_counter()
                tokens = fast.generate(cond, tokenize(model, text), settings, generator=g, max_new_tokens=n - 1)
                b.sync()
                t1 = time.perf_counter()
                with torch.inference_mode():
                    wav = speech_to_wav(model, tokens)
                t2 = time.perf_counter()
                if tokens.shape[-1] != n:
                    raise RuntimeError(f"fast path made {tokens.shape[-1]} tokens, wanted {n}")
                if r > 0:
                    runs.append({"e2e_s": t2 - t0, "t3_s": t1 - t0, "audio_s": wav.shape[-1] / SR})
                    decode.append(fast.stats.get("decode_ms_per_token"))
            row = summarise(runs, tokens=n, **label)
            if median(decode) is not None:
                row["decode_ms_per_token"] = round(median(decode), 3)
            # first audio: stream until `first` tokens exist, then S3Gen (flow + HiFT) on them. (Upstream's
            # flow_inference(finalize=False) breaks with meanflow noise; the engine's streaming decoder does the same
            # work per chunk: flow over prompt + tokens so far, vocoder over the new frames.)
            first = min(b.args.first_chunk, n)
            fa, ft = [], []
            for r in range(reps + 1):
                g = torch.Generator(device=fast.device).manual_seed(2000 + r)
                b.sync()
                t0 = time.perf_counter()
                got, parts = 0, []
                stream = fast.stream_tokens(cond, tokenize(model, text), settings, generator=g,
                                            max_new_tokens=n - 1, first_chunk=first)
                for chunk in stream:
                    parts.append(chunk)
                    got += int(chunk.shape[0])
                    if got >= first:
                        break
                stream.close()
                toks = torch.cat(parts)[:first]
                t_tok = time.perf_counter()
                with torch.inference_mode():
                    toks = toks[toks < S3_CODES]
                    mel = model.s3gen.flow_inference(toks, ref_dict=model.conds.gen, n_cfm_timesteps=2,
                                                     finalize=True)
                    wav, _ = model.s3gen.hift_inference(mel)
                    wav = wav.cpu()
                t_end = time.perf_counter()
                if r > 0:
                    fa.append(t_end - t0)
                    ft.append(t_tok - t0)
            row.update(first_audio_s=round(median(fa), 4), first_chunk_tokens=first,
                       first_chunk_t3_s=round(median(ft), 4), setup_s=round(setup_s, 3),
                       capture_s=round(fast.graphs.capture_s, 3), graphs_captured=info["graphs"],
                       kv_mb=info["kv_mb"], voice_mb=info["voice_mb"], check_every=fast.check_every,
                       text_head_released_mb=round(released / 2**20, 1), layouts=fast.stats.get("layouts"))
            row["peak_gib"] = b.peak_gib()
            row["garbage_gib"] = round(b.garbage / 2**30, 3)
            try:  # what one decode step must read, for the Orin projection (write_markdown)
                row.update(weight_bytes_per_step=fast.weights.step_bytes(),
                           kv_bytes_per_position=fast.weights.kv_bytes_per_position(),
                           prefill_len=fast.stats.get("prefill_len"))
            except Exception as exc:  # noqa: BLE001 - a bench row is worth more than this figure
                row["step_bytes_error"] = f"{type(exc).__name__}: {exc}"[:300]
            add_row(b, row)
        # greedy equality with upstream (same dtype, same weights) and seed reproducibility
        greedy = GenerationSettings(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0)
        for n, ref in greedy_ref.items():
            got = fast.generate(cond, tokenize(model, TEXTS["long"]), greedy, max_new_tokens=n - 1)[0].tolist()
            match = next((i for i, (x, y) in enumerate(zip(ref, got)) if x != y), min(len(ref), len(got)))
            eq = {"dtype": dtype_name, "graphs": fast.use_graphs, "kernels": fast.kernels, "sampler": fast.sampler,
                  "tokens": n, "equal": ref == got, "first_mismatch": None if ref == got else match}
            n_rep = max(lengths)
            runs = [fast.generate(cond, tokenize(model, TEXTS["long"]), settings,
                                  generator=torch.Generator(device=fast.device).manual_seed(7),
                                  max_new_tokens=n_rep - 1)[0].tolist() for _ in range(2)]
            eq["sampling_reproducible"] = runs[0] == runs[1]
            eq["sampling_distinct_tokens"] = len(set(runs[0]))
            b.doc["equality"].append(eq)
            print(f"  greedy equality {dtype_name} graphs {variant(eq)}: {eq}", flush=True)
            b.save()
        if fast.use_graphs and b.cuda:
            micro(b, fast, dtype_name)
    finally:
        del fast
        b.free()


MICRO_STEPS = 50      # replays timed per captured graph
SAMPLER_CALLS = 20    # sampler calls captured in one graph (the sampler alone)
ORIN = (("orin_nano", "Orin Nano", 68e9), ("orin_nano_super", "Orin Nano Super", 102e9))  # memory bandwidth, B/s
TOKENS_PER_AUDIO_S = 25


def micro(b: Bench, fast, dtype_name: str) -> None:
    """Replay time of the captured decode step per attention length (greedy vs sampling), with the bytes the step
    reads and the bandwidth that makes; the sampler alone; and a kernel profile."""
    torch = b.torch
    tag = dict(model=b.args.model, dtype=dtype_name, kernels=fast.kernels, sampler=fast.sampler,
               attention=fast.attention)
    st, rows = fast.state, []
    for (n, greedy), graph in sorted(fast.graphs.graphs.items()):
        pos = max(0, n - 64)
        with torch.inference_mode():
            st.pos.fill_(pos)
            st.step.fill_(1)
            for _ in range(5):
                graph.replay()
            st.pos.fill_(pos)
            st.step.fill_(1)
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(MICRO_STEPS):
                graph.replay()
            e1.record()
            torch.cuda.synchronize()
        ms = e0.elapsed_time(e1) / MICRO_STEPS
        row = {**tag, "attn_len": n, "greedy": bool(greedy), "pos": pos, "ms_per_step": round(ms, 4)}
        try:  # what the bucketed step reads (parameters + KV of n positions), what position pos + 1 needs
            row["bytes_per_step"] = int(fast.step_bytes(n))
            row["needed_bytes"] = int(fast.step_bytes(pos + 1))
            row["gb_per_s"] = round(row["bytes_per_step"] / (ms * 1e-3) / 1e9, 1)
        except Exception as exc:  # noqa: BLE001 - a measurement that fails is recorded, never fatal
            row["bytes_error"] = f"{type(exc).__name__}: {exc}"[:300]
            b.doc["errors"].append({"config": f"micro {dtype_name} {n} bytes", "error": row["bytes_error"]})
        rows.append(row)
        b.doc["micro"].append(row)
    try:  # the sampler's cost inside the captured step: sampled minus greedy, same attention length
        pairs: Dict[int, Dict[bool, Dict[str, Any]]] = {}
        for r in rows:
            pairs.setdefault(r["attn_len"], {})[r["greedy"]] = r
        for pair in pairs.values():
            if True in pair and False in pair:
                us = round(1000 * (pair[False]["ms_per_step"] - pair[True]["ms_per_step"]), 2)
                pair[False]["sampling_us"] = pair[True]["sampling_us"] = us
    except Exception as exc:  # noqa: BLE001
        b.doc["errors"].append({"config": f"micro {dtype_name} sampling_us", "error": f"{type(exc).__name__}: {exc}"})
    b.save()
    sampler_alone(b, fast, dtype_name)
    try:
        from torch.profiler import ProfilerActivity, profile
        key = max(k for k in fast.graphs.graphs if not k[1])
        graph = fast.graphs.graphs[key]
        with torch.inference_mode():
            st.pos.fill_(max(0, key[0] - 64))
            st.step.fill_(1)
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    graph.replay()
                torch.cuda.synchronize()
        prows = []
        for e in prof.key_averages():
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = getattr(e, "self_cuda_time_total", 0)
            if t and e.count:
                prows.append({"kernel": e.key[:90], "per_step": e.count / 5, "us_per_step": round(t / 5, 2)})
        prows.sort(key=lambda r: -r["us_per_step"])
        b.doc["profile"].append({**tag, "attn_len": key[0],
                                 "kernels_per_step": sum(r["per_step"] for r in prows),
                                 "gpu_us_per_step": round(sum(r["us_per_step"] for r in prows), 1),
                                 "top": prows[:14]})
    except Exception as exc:
        b.doc["profile"].append({"dtype": dtype_name, "error": f"{type(exc).__name__}: {exc}"})
    b.save()


def sampler_alone(b: Bench, fast, dtype_name: str) -> None:
    """The sampler on its own, SAMPLER_CALLS calls captured in one CUDA graph (graphs.record) on fixed logits (1,
    vocab) in the model dtype, upstream's sampling defaults: the PyTorch ops as decode_step runs them
    (sampling.process + sampling.draw + DecodeState.update) and, where Triton is available, the fused kernel
    (sample_kernel.sample_step). Its own DecodeState (16 positions: the sampler reads no keys/values), so the
    engine's buffers are not touched. One entry per implementation in doc["sampler_alone"]: sampler_us per call."""
    torch = b.torch
    tag = dict(model=b.args.model, dtype=dtype_name, kernels=fast.kernels, config_sampler=fast.sampler,
               calls=SAMPLER_CALLS)

    def failed(names: Tuple[str, ...], exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {exc}"[:400]
        b.doc["sampler_alone"] += [{**tag, "sampler": name, "error": msg} for name in names]
        b.doc["errors"].append({"config": f"sampler alone {dtype_name} {'/'.join(names)}", "error": msg})
        b.save()

    try:
        from ros2_chatterbox.engines.fast_t3 import graphs as fgraphs, sampling
        from ros2_chatterbox.engines.fast_t3.state import DecodeState
        from ros2_chatterbox.settings import GenerationSettings
        w = fast.weights
        st = DecodeState(w.n_layer, w.n_head, w.head_dim, w.vocab, 16, 4096, fast.check_every, fast.device, w.dtype)
        g = torch.Generator(device=fast.device).manual_seed(0)
        with torch.inference_mode():
            logits = (3 * torch.randn(1, w.vocab, generator=g, device=fast.device)).to(w.dtype)
            st.set_sampling(GenerationSettings(**SAMPLING))
            st.fill_noise(g)
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal
        failed(("torch", "triton"), exc)
        return
    impls = {"torch": lambda: st.update(sampling.draw(sampling.process(logits, st.seen, st.params),
                                                      st.noise_row()))}
    try:
        from ros2_chatterbox.engines.fast_t3 import sample_kernel
        if sample_kernel.available() and fast.device.type == "cuda":
            impls["triton"] = lambda: sample_kernel.sample_step(logits, st.params, st.seen, st.noise, st.out, st.tok,
                                                                st.pos, st.step, False)
        else:
            b.doc["sampler_alone"].append({**tag, "sampler": "triton", "skipped": "Triton not available"})
    except Exception as exc:  # noqa: BLE001
        failed(("triton",), exc)
    for name, fn in impls.items():
        graph = None
        try:
            with torch.inference_mode():
                graph = fgraphs.record(fn, fast.device, st.reset, reps=SAMPLER_CALLS)
                # 10 replays per run: at most 10 x SAMPLER_CALLS steps, within the 4096 tokens of `out`
                ms = fgraphs.time_replay(graph, fast.device, 10, st.reset)
            b.doc["sampler_alone"].append({**tag, "sampler": name,
                                           "sampler_us": round(1000 * ms / SAMPLER_CALLS, 2)})
            b.save()
        except Exception as exc:  # noqa: BLE001
            try:  # let a failed capture finish before the next measurement (as GraphCache.capture does)
                torch.cuda.synchronize(fast.device)
            except Exception:  # noqa: BLE001 - the measurement's own error is the one to record
                pass
            failed((name,), exc)
        finally:
            del graph


def orin_projection(d: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The memory-bandwidth floor of T3 on Jetson Orin, per fast-path row (model, dtype, tokens): a decode step reads
    every parameter once plus the keys/values of the positions it attends to; over an utterance of `tokens` after
    a prefill of P positions the steps attend to P + tokens / 2 positions on average. bytes per token / bandwidth =
    ms per token at best; x 25 tokens per second of audio = seconds of T3 per second of audio."""
    out, seen = [], set()
    for r in d.get("rows", []):
        if r.get("impl") != "fast" or r.get("weight_bytes_per_step") is None or r.get("prefill_len") is None:
            continue
        key = (d.get("model"), r["dtype"], r["tokens"])
        if key in seen:
            continue
        seen.add(key)
        attn = r["prefill_len"] + r["tokens"] / 2
        kv = r["kv_bytes_per_position"] * attn
        total = r["weight_bytes_per_step"] + kv
        e = {"model": d.get("model"), "dtype": r["dtype"], "tokens": r["tokens"], "prefill_len": r["prefill_len"],
             "attn_len_mean": round(attn, 1), "weight_mb": round(r["weight_bytes_per_step"] / 1e6, 1),
             "kv_mb": round(kv / 1e6, 1), "mb_per_token": round(total / 1e6, 1)}
        for k, _, bw in ORIN:
            ms = 1000 * total / bw
            e[f"{k}_ms_per_token"] = round(ms, 3)
            e[f"{k}_t3_s_per_audio_s"] = round(ms * TOKENS_PER_AUDIO_S / 1000, 4)
        out.append(e)
    return out


def upstream_greedy(b: Bench, model, n: int) -> List[int]:
    torch = b.torch
    with torch.inference_mode():
        return model.t3.inference_turbo(model.conds.t3, tokenize(model, TEXTS["long"]), temperature=1.0, top_k=1,
                                        top_p=1.0, repetition_penalty=1.0, max_gen_len=n - 1)[0].tolist()


# ------------------------------------------------------------------------------------------------------------------
def write_markdown(b: Bench) -> None:
    d = b.doc
    v = d.get("versions", {})
    card = v.get("gpu") or f"CPU ({platform.processor() or platform.machine()}, {v.get('cpu_threads')} threads)"
    title = "Chatterbox-Nano" if d.get("model") == "nano" else "Chatterbox Turbo"
    lines = [f"# {title} speed: upstream vs FastT3 ({d['mode']} weights, {card})", "",
             f"- date (UTC): {d['date_utc']}", f"- device: {d['device']}; card: {v.get('nvidia_smi') or card}",
             f"- software: python {v.get('python')}, torch {v.get('torch')} (CUDA {v.get('torch_cuda')}), "
             f"transformers {v.get('transformers')}, chatterbox-tts {v.get('chatterbox-tts')}, numpy "
             f"{v.get('numpy')}, triton {v.get('triton')}", f"- command: `{d['command']}`",
             f"- weights: random, real checkpoint layout, loaded with "
             f"{'models.load_local (from_local with a GPT-2 small T3)' if d.get('model') == 'nano' else '`from_local`'}"
             f" in {d.get('load_s')} s; "
             f"conditioning (16 s reference, {d.get('prompt_tokens')} prompt tokens): "
             f"{d.get('cond_cold_s')} s cold, {d.get('cond_warm_s')} s warm",
             "- stop token suppressed: exact token counts; sampling: upstream defaults (0.8 / 1000 / 0.95 / 1.2); "
             "watermark off for both", ""]
    if d.get("stubs"):
        lines.append(f"- stubbed modules: {', '.join(d['stubs'])}")
        lines.append("")
    lines += ["T3 ms/token: T3 time (tokenizer + prefill + all tokens) / tokens; decode: GPU time per token after the "
              "first (fast path). Speed-up: end-to-end vs upstream with the same T3 dtype.", "",
              "| impl | T3 dtype | CUDA graphs | tokens | T3 ms/token | decode ms/token | first audio | end-to-end | "
              "RTF | peak mem | speed-up e2e |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["dtype"], r["tokens"]): r for r in d["rows"] if r["impl"] == "upstream"}
    base32 = {r["tokens"]: r for r in d["rows"] if r["impl"] == "upstream" and r["dtype"] == "fp32"}
    for r in d["rows"]:
        g = variant(r)
        ref = base.get((r["dtype"], r["tokens"])) or base32.get(r["tokens"])
        sp = f"{ref['e2e_s'] / r['e2e_s']:.1f}x" if ref and r["impl"] != "upstream" else ""
        mem = f"{r['peak_gib']:.2f} GiB" if r.get("peak_gib") is not None else "-"
        fa = f"{r['first_audio_s'] * 1000:.0f} ms" if r.get("first_audio_s") is not None else "-"
        dec = f"{r['decode_ms_per_token']:.3f}" if r.get("decode_ms_per_token") is not None else "-"
        lines.append(f"| {r['impl']} | {r['dtype']} | {g} | {r['tokens']} | {r['ms_per_token']:.2f} | {dec} | {fa} | "
                     f"{r['e2e_s']:.3f} s | {r['rtf']:.3f} | {mem} | {sp} |")
    if not b.cuda:
        lines += ["", "peak mem on CPU = the process's peak resident set (host RAM)."]
    else:
        lines += ["", "peak mem: torch.cuda.max_memory_allocated during the configuration's runs, weights included, "
                      "minus memory left allocated by earlier configurations of the same process."]
        rel = [r for r in d["rows"] if r.get("text_head_released_mb")]
        if rel:
            lines.append(f"Fast-path rows free T3's unused text head first ({rel[0]['text_head_released_mb']} MB).")
    if d["equality"]:
        lines += ["", "## Greedy tokens vs upstream (same weights, same dtype), seed reproducibility", "",
                  "| T3 dtype | graphs | tokens | equal | first mismatch | same seed -> same tokens |",
                  "|---|---|---|---|---|---|"]
        for e in d["equality"]:
            lines.append(f"| {e['dtype']} | {variant(e)} | {e['tokens']} | {e['equal']} | {e['first_mismatch']} | "
                         f"{e.get('sampling_reproducible')} |")
    lines += micro_markdown(d)
    for p in d["profile"]:
        if "top" not in p:
            continue
        lines += ["", f"Kernel profile, {p['dtype']}, kernels {p.get('kernels')}, sampler {p.get('sampler')}, "
                      f"attention length {p['attn_len']}: {p['kernels_per_step']:.0f} kernels and "
                      f"{p['gpu_us_per_step']} us of GPU time per step. Top kernels (us per step, launches per step):",
                  ""]
        for t in p["top"][:8]:
            lines.append(f"- {t['us_per_step']} us, {t['per_step']:.0f}x: `{t['kernel']}`")
    lines += orin_markdown(d)
    lines += node_markdown(d)
    if d["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in d["errors"]]
    if d["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in d["notes"]]
    (b.out / "bench.md").write_text("\n".join(lines) + "\n")


def _fmt(x, spec: str = "") -> str:
    return "-" if x is None else format(x, spec)


def micro_markdown(d: Dict[str, Any]) -> List[str]:
    """The captured step per attention length: greedy and sampled replay time, the sampler's share, the sampler
    alone, the bytes read and the bandwidth achieved."""
    if not d.get("micro"):
        return []
    alone: Dict[Any, Dict[str, str]] = {}
    for a in d.get("sampler_alone", []):
        cell = _fmt(a.get("sampler_us")) if "sampler_us" in a else ("n/a" if "skipped" in a else "error")
        alone.setdefault((a["dtype"], a.get("kernels"), a.get("config_sampler")), {})[a["sampler"]] = cell
    cells: Dict[Any, Dict[bool, Dict[str, Any]]] = {}
    for m in d["micro"]:
        key = (m.get("model", d.get("model")), m["dtype"], m.get("kernels") or "torch", m.get("sampler") or "torch",
               m["attn_len"])
        cells.setdefault(key, {})[m["greedy"]] = m
    lines = ["", "## Captured decode step (one token), replay time by attention length", "",
             f"Mean of {MICRO_STEPS} replays from position attention length - 64. sampling us/step: sampled minus "
             f"greedy (the sampler inside the step). Sampler alone: {SAMPLER_CALLS} calls in one CUDA graph on fixed "
             "logits, upstream's defaults (PyTorch ops / Triton kernel). MB read: parameters + keys/values of the "
             "whole bucket (what the step reads); needed: of the positions up to the one decoded; GB/s: MB read / "
             "step time (greedy / sampled). MB = 10^6 bytes, GB = 10^9.", "",
             "| model | T3 dtype | kernels | sampler | attention length | greedy ms/step | sampled ms/step | "
             "sampling us/step | sampler alone us (torch / triton) | MB read per step | needed MB | achieved GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (model, dt, k, smp, n), c in cells.items():
        g, sm = c.get(True, {}), c.get(False, {})
        any_ = g or sm
        a = alone.get((dt, k, smp), {})
        mb = any_.get("bytes_per_step")
        need = any_.get("needed_bytes")
        su = sm.get("sampling_us", g.get("sampling_us"))
        lines.append(f"| {model} | {dt} | {k} | {smp} | {n} | {_fmt(g.get('ms_per_step'))} | "
                     f"{_fmt(sm.get('ms_per_step'))} | {_fmt(su)} | {a.get('torch', '-')} / {a.get('triton', '-')} | "
                     f"{_fmt(mb and mb / 1e6, '.1f')} | {_fmt(need and need / 1e6, '.1f')} | "
                     f"{_fmt(g.get('gb_per_s'))} / {_fmt(sm.get('gb_per_s'))} |")
    return lines


def orin_markdown(d: Dict[str, Any]) -> List[str]:
    """The Orin projection (orin_projection) as a table."""
    proj = d.get("orin_projection")
    if proj is None:
        try:
            proj = orin_projection(d)
        except Exception as exc:  # noqa: BLE001 - the document must still be written
            return ["", "## Orin projection", "", f"not computed: {type(exc).__name__}: {exc}"]
    if not proj:
        return []
    names = " / ".join(f"{label} ({bw / 1e9:.0f} GB/s)" for _, label, bw in ORIN)
    lines = ["", "## Orin projection (memory-bandwidth floor of T3)", "",
             "A decode step reads every T3 parameter once plus the keys/values of the positions it attends to; at "
             "best it takes bytes / bandwidth. Attention length: the prefill (voice prompt + text + start token) + "
             f"tokens / 2, the mean over the utterance. Floor ms per token and seconds of T3 per second of audio "
             f"({TOKENS_PER_AUDIO_S} tokens per second of audio), {names}. A floor: real kernels reach a fraction of "
             f"the nominal bandwidth{' (the achieved GB/s above)' if d.get('micro') else ''}, and the rest of the "
             "pipeline (S3Gen) comes on top. MB = 10^6 bytes.", "",
             "| model | T3 dtype | tokens | attention length (mean) | weights MB | KV MB | MB per token | "
             + " | ".join(f"{label} ms/token | {label} T3 s per audio s" for _, label, _ in ORIN) + " |",
             "|---|---|---|---|---|---|---|" + "---|---|" * len(ORIN)]
    for e in proj:
        lines.append(f"| {e['model']} | {e['dtype']} | {e['tokens']} | {e['attn_len_mean']} | {e['weight_mb']} | "
                     f"{e['kv_mb']} | {e['mb_per_token']} | "
                     + " | ".join(f"{e[k + '_ms_per_token']} | {e[k + '_t3_s_per_audio_s']}" for k, _, _ in ORIN)
                     + " |")
    return lines


def run_node_rows(b: "Bench", ckpt: Path, args) -> None:
    """bench_node.py per configuration, each in a fresh process with that configuration's environment."""
    b.doc["node"] = {}
    for name in [c for c in args.node.split(",") if c]:
        path = b.out / f"node-{name}.json"
        cmd = [sys.executable, str(REPO / "bench" / "bench_node.py"), "--ckpt", str(ckpt), "--config", name,
               "--out", str(path), "--device", args.device] + (["--tiny"] if args.tiny else []) + \
            shlex.split(args.node_args)
        env = {**os.environ, **CONFIG_ENV[name]}
        print(f"node path, {name}: {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, text=True)
        try:
            b.doc["node"][name] = json.loads(path.read_text())
        except Exception as exc:
            b.doc["node"][name] = {"errors": [f"no result ({type(exc).__name__}: {exc}); exit {proc.returncode}"]}
        b.doc["node"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        b.save()


def node_markdown(d: Dict[str, Any]) -> List[str]:
    """The node-path rows (bench_node.py), one column per configuration."""
    node = d.get("node") or {}
    if not node:
        return []
    names = list(node)
    lines = ["", "## The node's path (SpeechCore + ChatterboxTurboEngine, warm voice, one process per column)", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def cell(n, *keys, fmt="{}"):
        v = node[n]
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        return fmt.format(v) if v is not None else "-"

    rows = [
        ("configure", lambda n: ("ok, " + cell(n, "configure", "seconds") + " s") if node[n].get("configure", {})
         .get("ok") else "REFUSED: " + str(node[n].get("configure", {}).get("error", node[n].get("errors")))[:300]),
        ("fast path", lambda n: cell(n, "configure", "info", "fast_path", "reason")),
        ("memory plan / warm-up s", lambda n: cell(n, "configure", "info", "memory", "state") + " / " +
         cell(n, "configure", "info", "memory", "warm_s")),
        ("first audio through SpeechCore, median (max) s", lambda n: cell(n, "utterance", "first_audio_s_median") +
         " (" + cell(n, "utterance", "first_audio_s_max") + ")"),
        ("engine's first part, median s", lambda n: cell(n, "utterance", "engine_first_chunk_s_median")),
        ("10 s utterance end to end, median s", lambda n: cell(n, "utterance", "end_to_end_s_median")),
        ("RTF", lambda n: cell(n, "utterance", "rtf")),
        ("T3 decode ms/token", lambda n: cell(n, "utterance", "t3_decode_ms_per_token")),
        ("S3Gen s per call (first chunk)", lambda n: cell(n, "s3gen_first_chunk_s")),
        ("CPU s per audio s (10 s utterances)", lambda n: cell(n, "utterance", "cpu_s_per_audio_s")),
        ("CPU s per audio s (mixed)", lambda n: cell(n, "mixed", "cpu_s_per_audio_s")),
        ("device allocations per warm utterance", lambda n: cell(n, "utterance", "device_allocs_per_utterance")),
        ("block allocations per warm 10 s utterance", lambda n: cell(n, "utterance",
                                                                      "block_allocations_per_utterance_median")),
        ("mixed lengths: utterances / device allocations", lambda n: cell(n, "mixed", "utterances") + " / " +
         cell(n, "mixed", "device_allocs_total")),
        ("reserved MiB: configure / first / last / max", lambda n: " / ".join(
            cell(n, "mixed", k) for k in ("reserved_at_configure_mb", "reserved_mb_first", "reserved_mb_last",
                                          "reserved_mb_max"))),
        ("host RSS MiB (of it: CUDA runtime + libraries before the model)", lambda n: cell(
            n, "memory_after", "rss_mb") + " (" + cell(n, "rss_cuda_runtime_mb") + ")"),
        ("host RSS MiB: anonymous / shared libraries", lambda n: cell(n, "memory_after", "rss", "anon_mb") + " / " +
         cell(n, "memory_after", "rss", "files_mb")),
        ("device MiB (this process, nvidia-smi)", lambda n: cell(n, "memory_after", "process_device_mb")),
        ("RSS + device MiB", lambda n: cell(n, "memory_after", "rss_plus_process_device_mb")),
        ("peak allocated MiB", lambda n: cell(n, "memory_after", "max_allocated_mb")),
        ("host launch calls / graph launches / GPU kernels per audio s", lambda n: " / ".join(
            cell(n, "launches", k) for k in ("host_launch_calls_per_audio_s", "graph_launches_per_audio_s",
                                             "gpu_kernels_per_audio_s"))),
        ("host sync", lambda n: cell(n, "memory_after", "host_sync")),
    ]
    for label, fn in rows:
        lines.append(f"| {label} | " + " | ".join(str(fn(n)).replace("|", "/") for n in names) + " |")
    return lines


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", choices=("turbo", "nano"), default="turbo", help="which T3 (default turbo)")
    ap.add_argument("--tiny", action="store_true", help="tiny random checkpoint on CPU (smoke test)")
    ap.add_argument("--full", action="store_true", help="full-size random weights (default unless --tiny)")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available, cpu for --tiny)")
    ap.add_argument("--ckpt", type=Path, default=None, help="checkpoint folder (built there if missing)")
    ap.add_argument("--lengths", default=None, help="speech tokens per utterance (default 50,250; tiny 20,60)")
    ap.add_argument("--dtypes", default=None, help="T3 dtypes (default fp32,fp16,bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--graphs", default=None, help="off,on (default both on CUDA, off on CPU)")
    ap.add_argument("--kernels", default="auto", help="with CUDA graphs: torch,triton,auto (FastT3 kernels=; a list "
                    "runs each)")
    ap.add_argument("--sampler", default="auto", help="with CUDA graphs: torch,triton,auto (FastT3 sampler=; a list "
                    "runs each)")
    ap.add_argument("--attention", default="auto", help="with CUDA graphs: sdpa,triton,auto (FastT3 attention=; a "
                    "list runs each)")
    ap.add_argument("--kernels-fp32", default=None, help="--kernels for fp32 only")
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--upstream-dtypes", default=None, help="time upstream only for these (greedy references: all)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--reps-long", type=int, default=None)
    ap.add_argument("--first-chunk", type=int, default=25, help="tokens before the first audio (25 = 1 s)")
    ap.add_argument("--check-every", type=int, default=8)
    ap.add_argument("--equality-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--node", default="", help="also run bench_node.py (the node path through SpeechCore) for these "
                    "configurations, each in its own process: fast,jetson,jetson-nocache")
    ap.add_argument("--node-only", action="store_true", help="only the --node rows")
    ap.add_argument("--node-args", default="", help="extra arguments for bench_node.py (e.g. '--mixed 100')")
    ap.add_argument("--release-text-head", action="store_true",
                    help="fast configs: free T3's text head (unused by Turbo inference, ~100 MB fp16)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stubs = install_stubs()
    import numpy as np
    import torch
    if args.threads is None and args.tiny:
        args.threads = 1  # tiny matrices: one thread is fastest and does not fight a busy machine
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device is None:
        args.device = "cpu" if args.tiny else ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    lengths = [int(x) for x in (args.lengths or ("20,60" if args.tiny else "50,250")).split(",")]
    dtypes = (args.dtypes or ("fp32,fp16,bf16" if cuda else "fp32")).split(",")
    graph_modes = [g == "on" for g in (args.graphs or ("off,on" if cuda else "off")).split(",")]
    args.reps = args.reps if args.reps is not None else (5 if cuda else (1 if args.tiny else 2))
    args.reps_long = args.reps_long if args.reps_long is not None else (3 if cuda else (1 if args.tiny else 2))
    eq_tokens = args.equality_tokens or (max(lengths) if cuda or args.tiny else min(lengths))
    DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

    t_main = time.perf_counter()
    b = Bench(args, out)
    b.doc["versions"] = versions()
    b.doc["stubs"] = stubs
    b.doc["config"] = {"lengths": lengths, "dtypes": dtypes, "graphs": graph_modes, "kernels": args.kernels,
                       "kernels_fp32": args.kernels_fp32, "sampler": args.sampler,
                       "reps": args.reps, "reps_long": args.reps_long, "first_chunk": args.first_chunk,
                       "check_every": args.check_every, "sampling": SAMPLING}
    print(f"versions: {json.dumps(b.doc['versions'])}\nstubs: {stubs}", flush=True)
    b.save()

    # checkpoint (built here: random init of the real classes, real file layout)
    tmp = None
    ckpt = args.ckpt
    if ckpt is None:
        tmp = tempfile.TemporaryDirectory(prefix="cbx-bench-")
        ckpt = Path(tmp.name) / "ckpt"
    from ros2_chatterbox.engines.chatterbox import models
    if not (ckpt / models.model_spec(args.model).t3_file).exists():
        t0 = time.perf_counter()
        if args.tiny:
            from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny_turbo
            facts = tiny_turbo.build_tiny_checkpoint(ckpt, with_conds=False, model=args.model)
        else:
            facts = build_full_checkpoint(ckpt, model=args.model)
        b.doc["build"] = {"seconds": round(time.perf_counter() - t0, 2), **{k: v for k, v in facts.items()
                                                                            if k != "folder"}}
        print(f"checkpoint built: {b.doc['build']}", flush=True)

    if args.node:  # before this process touches the GPU: each child measures its own memory
        run_node_rows(b, ckpt, args)
        if args.node_only:
            b.doc["total_s"] = round(time.perf_counter() - t_main, 1)
            b.save()
            write_markdown(b)
            print((out / "bench.md").read_text(), flush=True)
            return 0

    t0 = time.perf_counter()
    model = load_model(ckpt, args.device, args.tiny, args.model)
    b.sync()
    b.doc["load_s"] = round(time.perf_counter() - t0, 2)
    model.watermarker = types.SimpleNamespace(apply_watermark=lambda wav, sample_rate=None: wav)
    norm = model.norm_loudness
    model.norm_loudness = lambda wav, sr, *a, **k: np.asarray(norm(wav, sr, *a, **k), dtype=np.float32)  # numpy 2

    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny_turbo
    ref_dir = tempfile.TemporaryDirectory(prefix="cbx-ref-")
    ref_wav = Path(ref_dir.name) / "reference.wav"
    tiny_turbo.write_reference_wav(ref_wav, seconds=16.0)
    times = []
    for _ in range(2):
        b.sync()
        t0 = time.perf_counter()
        model.prepare_conditionals(str(ref_wav))
        b.sync()
        times.append(time.perf_counter() - t0)
    b.doc["cond_cold_s"], b.doc["cond_warm_s"] = round(times[0], 3), round(times[1], 3)
    b.doc["prompt_tokens"] = int(model.conds.t3.cond_prompt_speech_tokens.shape[-1])
    print(f"load {b.doc['load_s']} s, conditioning {times[0]:.2f} s cold / {times[1]:.2f} s warm, "
          f"{b.doc['prompt_tokens']} prompt tokens", flush=True)
    b.save()

    with torch.no_grad():
        model.t3.speech_head.bias[STOP] = -1e4   # exact token counts (fp16-safe)
    t3_state = {k: v.detach().to("cpu", copy=True) for k, v in model.t3.state_dict().items()}
    cond0 = model.conds.t3
    for name in dtypes:
        dtype = DT[name]
        try:
            set_t3_dtype(model, dtype, t3_state, cond0)
            b.free()
            greedy_ref = {}
            if not args.no_upstream:
                if args.upstream_dtypes is None or name in args.upstream_dtypes.split(","):
                    run_upstream(b, model, name, lengths)
                greedy_ref[eq_tokens] = upstream_greedy(b, model, eq_tokens)
        except Exception as exc:
            traceback.print_exc()
            b.doc["errors"].append({"config": f"upstream {name}", "error": f"{type(exc).__name__}: {exc}"})
            b.save()
        variants = []
        for g in graph_modes:
            kerns = args.kernels.split(",")
            if g and args.kernels_fp32 and name == "fp32":
                kerns = args.kernels_fp32.split(",")
            for k in (kerns if g else ["torch"]):  # without graphs FastT3 runs PyTorch ops only
                for smp in (args.sampler.split(",") if g else ["torch"]):
                    for att in (args.attention.split(",") if g else ["sdpa"]):
                        variants.append((g, smp, k, att))
        for graphs, smp, kern, att in variants:
            try:
                set_t3_dtype(model, dtype, t3_state, cond0)
                run_fast(b, model, name, dtype, lengths, graphs, smp, greedy_ref, kern, att)
            except Exception as exc:
                traceback.print_exc()
                b.doc["errors"].append({"config": f"fast {name} graphs={graphs} kernels={kern} sampler={smp} "
                                                  f"attention={att}",
                                        "error": f"{type(exc).__name__}: {exc}"})
                b.save()
                b.free()
    try:
        b.doc["orin_projection"] = orin_projection(b.doc)
    except Exception as exc:  # noqa: BLE001 - recorded, never fatal
        b.doc["orin_projection"] = []
        b.doc["notes"].append(f"Orin projection not computed: {type(exc).__name__}: {exc}")
    b.doc["total_s"] = round(time.perf_counter() - t_main, 1)
    b.save()
    write_markdown(b)
    print((out / "bench.md").read_text(), flush=True)
    ref_dir.cleanup()
    if tmp is not None:
        tmp.cleanup()
    return 1 if not b.doc["rows"] else 0


if __name__ == "__main__":
    sys.exit(main())
