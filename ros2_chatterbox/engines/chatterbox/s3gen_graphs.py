"""S3Gen in CUDA graphs ("First audio at the floor"): the streaming decoder's flow and vocoder replayed at static
shapes instead of launched op by op from Python.

Each decode step of `StreamDecoder` runs the flow over the prompt and the speech tokens so far, then HiFT over a
window of new mel frames: ~1,800 kernel launches whatever the length, so a call costs the same for 25 or 184 tokens
(launch-bound). `S3GenGraphs` holds the static-shape versions (s3gen_static.py: `StaticFlow` per token bucket,
`StaticVocoder` per frame window, each bucket's buffers viewing one shared set) and, on CUDA, one graph per bucket,
captured at configure into a memory pool of their own. A step then costs a few small copies in, one replay per stage
and the copy of its audio out.

Why its own pool and not T3's: T3 captures lazily (a new attention bucket or sampling flavour mid-service, a recapture
after `FastT3.clear`), and a capture into a shared pool may place its persistent buffers in memory that these graphs
use as scratch at every replay. What the pool holds is reported (footprint's `graph_pool_mb` counts both).

Lengths no bucket holds (a prompt longer than the 10 s the plan allows, a window longer than the streaming schedule
makes) run eagerly, as before, and are counted. `select` captures, then checks the graphs against the eager decoder
(same audio within CHECK_SNR_DB, the same seed twice the same audio); anything short of that is a loud fallback, as
for T3's fast path: a warning in the configure log, `s3gen_graphs.fallback` in the engine's status (/health,
/diagnostics, the doctor), and the eager decoder.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ...status import FastPathStatus
from .device import trim_host_memory
from .s3gen_static import (StaticFlow, StaticVocoder, bucket_for, flow_buckets, step_inputs, sync_free,
                           vocoder_buckets)
from .s3gen_stream import SAMPLES_PER_FRAME, DecoderConfig, StreamDecoder, place_stft_window

log = logging.getLogger(__name__)

WINDOW_SLACK_FRAMES = 2 * (8 + 3)  # a streamed window past the plan's: T3 runs ahead of a decode point by up to
#                                    its look-ahead (8 tokens), and the flow's 3 look-ahead tokens wait a step
CHECK_TOKENS = 80        # the self-check's piece: decoded at 25 and 75 tokens, then finally
CHECK_SNR_DB = 30.0      # graphs vs the eager decoder; broken graphs give noise (~0 dB); measured values in bench/
CHECK_SEED = 4321


class S3GenGraphs:
    """The streaming decoder's flow and vocoder at static shapes, for flows of up to `max_flow_tokens` tokens and
    vocoder windows of up to `max_window` frames; `capture()` (CUDA) records a graph per bucket, without it the
    static parts run eagerly (what the CPU tests check)."""

    def __init__(self, s3gen, max_flow_tokens: int, max_window: int, steps: int):
        import torch
        self.s3gen, self.device = s3gen, torch.device(s3gen.device)
        place_stft_window(s3gen.mel2wav, self.device)
        self.flow_sizes = flow_buckets(max_flow_tokens)
        self.window_sizes = vocoder_buckets(max_window)
        with torch.inference_mode():
            big = StaticFlow(s3gen.flow, self.flow_sizes[-1], steps, self.device)
            self.flows = {b: StaticFlow(s3gen.flow, b, steps, self.device, share=big) for b in self.flow_sizes}
            big_v = StaticVocoder(s3gen.mel2wav, self.window_sizes[-1], self.device)
            self.vocoders = {f: StaticVocoder(s3gen.mel2wav, f, self.device, share=big_v) for f in self.window_sizes}
        self.graphs: Dict[Tuple[str, int], Any] = {}
        self.counts = {"flow_replays": 0, "flow_static": 0, "flow_eager": 0,
                       "vocoder_replays": 0, "vocoder_static": 0, "vocoder_eager": 0}
        self.capture_s = 0.0
        self.pool = None        # the graphs' memory pool (footprint reports its size)
        self._keep: list = []   # tables the graphs read that upstream may replace on a longer eager input

    @classmethod
    def for_plan(cls, model, plan, config: DecoderConfig) -> "S3GenGraphs":
        return cls(model.s3gen, plan.flow_tokens_max, plan.vocoder_frames_max + WINDOW_SLACK_FRAMES, config.cfm_steps)

    def buffer_bytes(self) -> int:
        """The static inputs (one shared set for the flow, one for the vocoder), outside the pool."""
        import torch
        seen, total = set(), 0
        for part in (self.flows[self.flow_sizes[-1]], self.vocoders[self.window_sizes[-1]]):
            for name, t in vars(part).items():
                if name in ("out", "audio", "phase_out"):  # results: in the pool
                    continue
                if torch.is_tensor(t) and t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    total += t.untyped_storage().nbytes()
        return total

    def describe(self) -> str:
        return (f"{len(self.flow_sizes)} flow buckets ({self.flow_sizes[0]}-{self.flow_sizes[-1]} tokens), "
                f"{len(self.window_sizes)} vocoder windows ({self.window_sizes[0]}-{self.window_sizes[-1]} frames)")

    # -- capture ---------------------------------------------------------------------------------------------------
    def _parts(self):
        """Largest first: the pool grows once, smaller graphs reuse its scratch."""
        for b in reversed(self.flow_sizes):
            yield ("flow", b), self.flows[b]
        for f in reversed(self.window_sizes):
            yield ("vocoder", f), self.vocoders[f]

    def capture(self) -> None:
        """One graph per bucket (CUDA). Each part runs once on the capture stream first (cuDNN and cuBLAS set-up,
        upstream's positional tables grown to the largest bucket), then is recorded. Raises on failure."""
        import torch
        from ..fast_t3.graphs import side_stream
        t0 = time.perf_counter()
        pool = self.pool = torch.cuda.graph_pool_handle()
        stream = side_stream(self.device)
        graphs = {}
        with torch.inference_mode(), sync_free(self.s3gen):
            for key, part in self._parts():
                if key[0] == "flow":
                    part.token_len.fill_(part.bucket)
                    part.n_valid.fill_(part.bucket * self.s3gen.flow.token_mel_ratio)
                stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(stream):
                    part.run()
                torch.cuda.current_stream(self.device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=stream):
                    part.run()
                graphs[key] = graph
            torch.cuda.synchronize(self.device)
        # upstream grows a positional table by replacing it; the graphs read the one they were captured with
        self._keep = [m.pe for m in self.s3gen.flow.modules() if isinstance(getattr(m, "pe", None), torch.Tensor)]
        self.graphs = graphs
        self.capture_s = time.perf_counter() - t0

    def _run(self, key, part) -> None:
        graph = self.graphs.get(key)
        kind = key[0]
        if graph is not None:
            graph.replay()
            self.counts[f"{kind}_replays"] += 1
        else:
            with sync_free(self.s3gen):
                part.run()
            self.counts[f"{kind}_static"] += 1

    # -- the decoder's two stages ----------------------------------------------------------------------------------
    def flow_mel(self, decoder: StreamDecoder, tokens, finalize: bool):
        """decoder.flow_mel(tokens, finalize) at the bucket's shapes; None when no bucket holds the tokens."""
        import torch
        with torch.inference_mode():
            spks, prompt_feat, token, n_valid = step_inputs(decoder, tokens, finalize)
            n = int(token.shape[1])
            if n > self.flow_sizes[-1]:
                self.counts["flow_eager"] += 1
                return None
            bucket = bucket_for(n, self.flow_sizes)
            part = self.flows[bucket]
            part.load(spks, prompt_feat, token, n_valid, decoder.z)
            self._run(("flow", bucket), part)
            return part.frames(prompt_feat.shape[1], n_valid)

    def vocode(self, decoder: StreamDecoder, mel, start: int, phase0, phase_at_frame: Optional[int], final: bool):
        """decoder.vocode(mel[:, :, start:], start, phase0, phase_at_frame) in a static window: a streamed step's
        window padded on the right, the final step's widened on the left (s3gen_static's module doc). None when
        no window holds it."""
        import torch
        t = int(mel.shape[-1]) - start
        frames = next((f for f in self.window_sizes if f >= t), None)
        ext = (frames - t) if (frames is not None and final) else 0
        if frames is None or start - ext < 0:
            self.counts["vocoder_eager"] += 1
            return None
        first = start - ext
        part = self.vocoders[frames]
        idx = 0 if phase_at_frame is None else (phase_at_frame - first) * SAMPLES_PER_FRAME
        with torch.inference_mode():
            noise = decoder._noise(first, frames * SAMPLES_PER_FRAME)
            part.load(mel[:, :, first:].to(torch.float32), noise, phase0, decoder.phase_vec,
                      phase_ref=ext * SAMPLES_PER_FRAME, phase_at=max(0, idx - 1))
            self._run(("vocoder", frames), part)
            a = ext * SAMPLES_PER_FRAME
            audio = part.audio[a:a + t * SAMPLES_PER_FRAME].float().cpu().numpy()
            phase_out = None
            if phase_at_frame is not None:
                phase_out = part.phase_out.clone() if idx > 0 else phase0
        return audio, phase_out


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    n = min(len(ref), len(got))
    err = float(np.sum((ref[:n].astype(np.float64) - got[:n]) ** 2)) + 1e-20
    return 10.0 * float(np.log10((float(np.sum(ref[:n].astype(np.float64) ** 2)) + 1e-20) / err))


def decode(model, ref, tokens, config: DecoderConfig, graphs: Optional[S3GenGraphs], seed: int = CHECK_SEED,
           points=(25, 75)) -> np.ndarray:
    """A piece of speech tokens through the streaming decoder (streamed at `points`, then finally), no watermark."""
    dec = StreamDecoder(model, ref, seed, False, threading.RLock(), config, graphs=graphs)
    parts = [dec.step(tokens[:p], final=False) for p in points if p < len(tokens)]
    parts.append(dec.step(tokens, final=True))
    return np.concatenate(parts)


def on_cuda(model) -> bool:
    import torch
    return torch.device(model.s3gen.device).type == "cuda"


def fell_back(reason: str) -> FastPathStatus:
    log.warning("Chatterbox: S3Gen's CUDA graphs were asked for but do not run: %s", reason)
    return FastPathStatus(requested=True, fallback=True, reason=reason)


def select(model, plan, config: DecoderConfig, requested: bool, ref) -> Tuple[Optional[S3GenGraphs], FastPathStatus]:
    """(captured S3GenGraphs or None, their status) for a loaded model on CUDA and the memory plan (None: there is
    none); `ref()`: a voice's S3Gen conditioning for the self-check. The model lock is held by the caller."""
    import torch
    if not requested:
        return None, FastPathStatus(reason="off (parameter s3gen_graphs)")
    if not on_cuda(model):
        return None, FastPathStatus(requested=True, reason="off: CUDA only (the CPU decodes eagerly)")
    if plan is None:
        return None, fell_back("no memory plan to size the buckets by (see memory_state); decoding eagerly")
    graphs = None
    try:
        graphs = S3GenGraphs.for_plan(model, plan, config)
        graphs.capture()
        g = torch.Generator(device=model.s3gen.device).manual_seed(CHECK_SEED)
        tokens = torch.randint(0, 6561, (CHECK_TOKENS,), device=model.s3gen.device, generator=g)
        voice = ref()
        eager = decode(model, voice, tokens, config, None)
        first, second = decode(model, voice, tokens, config, graphs), decode(model, voice, tokens, config, graphs)
        snr = snr_db(eager, first)
        if first.shape != eager.shape or not np.isfinite(snr) or snr < CHECK_SNR_DB:
            why = (f"the captured decoder's audio differs from the eager decoder's (SNR {snr:.1f} dB < "
                   f"{CHECK_SNR_DB:.0f}); decoding eagerly")
        elif not np.array_equal(first, second):
            why = "the same seed twice gave different audio through the graphs; decoding eagerly"
        else:
            return graphs, FastPathStatus(
                requested=True, active=True, cuda_graphs=True,
                reason=f"active ({graphs.describe()}, captured in {graphs.capture_s:.1f} s; against the eager decoder "
                       f"SNR {snr:.1f} dB, the same seed the same audio)")
    except Exception as exc:  # noqa: BLE001 - the eager decoder always works
        why = f"capture failed ({type(exc).__name__}: {str(exc)[:300]}); decoding eagerly"
    del graphs  # what a partial capture holds (its pool, the graph executables on the host) goes back
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize(model.s3gen.device)
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001
            pass
    trim_host_memory()
    return None, fell_back(why)
