"""`FastT3`: Chatterbox Turbo's T3 decode loop (upstream `T3.inference_turbo`) on a static cache, in CUDA graphs,
sampling on the device. Upstream re-enters HuggingFace's GPT2Model every token, grows its cache by concatenation,
runs the processors as ~20 kernels and syncs every token (12-18 ms per token on an H100); here a request is

    prefill (the voice prefix's keys/values reused, the text prefilled) and the first token  -> `_start`
    then `decode_step` (step.py) per token: a graph replay per step, a look at the stop token every
    `check_every` tokens, one chunk behind the GPU                                             -> `_run`

Equivalence with upstream (test/test_turbo_fast.py, bench/bench_turbo.py): greedy tokens equal in fp32 (fp16/bf16
rounding ties can differ between any two implementations); sampling draws from upstream's distribution (the same
processors in the same order: sampling.py) with argmax(p / E), E ~ Exp(1) from the caller's generator, so the same
seed and `check_every` give the same tokens; the first stop token after the first token ends generation and is
dropped; at most `max_new_tokens` after the first. Batch size 1, the Turbo configuration (`supported`).
FastT3 never changes the model's parameter values; it may cast t3 to `dtype` and store block matrices transposed.

    fast = FastT3(model.t3)                     # device/dtype of t3; CUDA graphs on CUDA; Triton where it wins
    tokens = fast.generate(cond, text_tokens, GenerationSettings(), generator=g)     # (1, n) LongTensor
    for chunk in fast.stream_tokens(cond, text_tokens, settings, generator=g, first_chunk=25): ...
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from . import loop, sampling, tuning
from .graphs import GraphCache
from .self_check import self_check
from .state import DecodeState
from .step import decode_step
from .voice_prefix import VoicePrefixCache
from .weights import Weights, supported

log = logging.getLogger(__name__)


@dataclass
class TestHooks:
    """Test-only switches; the engine never sets them. masked_eager: without graphs, run the graphs' step (bucketed
    attention length, masked) eagerly. kernels / sampler / attention: use these without checking them."""
    __test__ = False  # not a pytest test class
    masked_eager: bool = False
    kernels: Optional[str] = None
    sampler: Optional[str] = None
    attention: Optional[str] = None


class FastT3:
    """t3: upstream T3 in the Turbo configuration (parameters used in place). device/dtype: default t3's; another dtype
    casts t3 in place. cuda_graphs: capture the step (CUDA). check_every: tokens between looks at the stop token, also
    the noise block (part of what a seed reproduces). bucket: attention-length granularity of the graphs.
    lookahead_tokens: tokens queued ahead of the host's check (CUDA). max_voices: voice prefixes kept (LRU).
    prefix_cache: reuse voice prefixes. kernels / sampler: "auto" (Triton where it agrees and wins), "torch", "triton";
    attention: "auto", "sdpa", "triton" (attention.py).
    One generation at a time (a lock); after moving or casting t3 create a new FastT3 (a cast is noticed)."""

    supported = staticmethod(supported)

    def __init__(self, t3, device=None, dtype: Optional[torch.dtype] = None, cuda_graphs: bool = True,
                 check_every: int = 8, bucket: int = 256, max_voices: int = 8, prefix_cache: bool = True,
                 tune_layouts: bool = True, kernels: str = "auto", sampler: str = "auto", attention: str = "auto",
                 lookahead_tokens: int = 8, hooks: Optional[TestHooks] = None):
        ok, why = supported(t3)
        if not ok:
            raise ValueError(f"FastT3 cannot run this T3: {why}")
        for name, value, plain in (("kernels", kernels, "torch"), ("sampler", sampler, "torch"),
                                   ("attention", attention, "sdpa")):
            if value not in ("auto", plain, "triton"):
                raise ValueError(f"{name} must be 'auto', '{plain}' or 'triton', not {value!r}")
        p = t3.speech_head.weight
        self.device = torch.device(device) if device is not None else p.device
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if p.device != self.device:
            raise ValueError(f"t3 is on {p.device}, FastT3 was asked for {self.device}: move t3 first")
        if dtype is not None and dtype != p.dtype:
            t3.to(dtype=dtype)
        self.t3, self.weights = t3, Weights(t3)
        self.check_every, self.lookahead_tokens = max(1, int(check_every)), max(1, int(lookahead_tokens))
        self.bucket, self.prefix_cache, self.tune_layouts = max(16, int(bucket)), bool(prefix_cache), bool(tune_layouts)
        self.kernels_pref, self.sampler_pref, self.attention_pref = kernels, sampler, attention
        self.hooks = hooks or TestHooks()
        self.graphs = GraphCache(self.device, cuda_graphs)
        on_cpu = "torch" if not self.graphs.enabled else None  # None: chosen at the first request (tuning.py)
        self.kernels = self.hooks.kernels or on_cpu
        self.sampler = self.hooks.sampler or on_cpu
        self.attention = self.hooks.attention or (on_cpu and "sdpa")
        self.voices = VoicePrefixCache(max_voices)
        self.start_token, self.stop_token = int(t3.hp.start_speech_token), int(t3.hp.stop_speech_token)
        self.stats: Dict[str, Any] = {}
        self._lock = threading.RLock()
        self.state: Optional[DecodeState] = None
        self._ensure_state(0, 0)

    # -- shape and buffers -------------------------------------------------------------------------------------------
    dtype = property(lambda self: self.weights.dtype)
    use_graphs = property(lambda self: self.graphs.enabled)
    capacity = property(lambda self: self.state.capacity)
    kv = property(lambda self: self.state.kv)
    vocab = property(lambda self: self.weights.vocab)

    @property
    def max_voices(self) -> int:
        return self.voices.max_voices

    @max_voices.setter
    def max_voices(self, n: int) -> None:
        self.voices.max_voices = max(1, int(n))

    def bucket_len(self, n: int) -> int:
        return min(self.capacity, -(-n // self.bucket) * self.bucket)

    def step_bytes(self, attn_len: int) -> int:
        """Bytes one decode step must read at attention length `attn_len`: the parameters, and the keys and values
        of `attn_len` positions (bench/bench_turbo.py sets this against the measured time per token)."""
        return self.weights.step_bytes() + attn_len * self.weights.kv_bytes_per_position()

    def _ensure_state(self, positions: int, tokens: int, force: bool = False) -> None:
        st, w = self.state, self.weights
        if st is not None and not force and st.fits(positions, tokens):
            return
        positions = DecodeState.sized(max(positions, st.capacity if st else 0), self.bucket, w.max_positions)
        tokens = max(tokens, st.token_capacity if st else 0, 1001)
        self.graphs.clear()  # they point at the old buffers
        self.state = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.state = DecodeState(w.n_layer, w.n_head, w.head_dim, w.vocab, positions, tokens, self.check_every,
                                 self.device, w.dtype)

    def check_weights(self) -> None:
        if not self.weights.changed():
            return
        if self.t3.speech_head.weight.device != self.device:
            raise RuntimeError("t3 was moved to another device; create a new FastT3")
        log.info("FastT3: t3's parameters changed (cast); rebuilding")
        self.graphs.clear()
        self.voices.clear()
        self.weights.bind()
        self._ensure_state(0, 0, force=True)

    # -- voices, checks ----------------------------------------------------------------------------------------------
    def voice_prefix(self, t3_cond):
        return self.voices.get(self.weights, t3_cond)

    def forget_voice(self, t3_cond) -> None:
        with self._lock:
            self.voices.forget(t3_cond)

    def clear(self) -> None:
        """Drop voice prefixes and graphs (buffers stay)."""
        with self._lock:
            self.voices.clear()
            self.graphs.clear()

    def self_check(self, t3_cond, text_tokens, n_tokens: int = 64, tie_tol: Optional[float] = None) -> Dict[str, Any]:
        with self._lock:
            return self_check(self, t3_cond, text_tokens, n_tokens, tie_tol)

    # -- graphs ------------------------------------------------------------------------------------------------------
    def prepare(self, n_min: int, n_max: int, tokens: int, greedy: bool) -> None:
        """Buffers for attention lengths up to n_max and `tokens` tokens, the kernel choice and the graphs."""
        self._ensure_state(n_max, tokens)
        if None in (self.kernels, self.sampler, self.attention):
            self.stats["kernels"] = tuning.pick_kernels(self)
            self.graphs.clear()
        if (self.device.type == "cuda" and self.tune_layouts and self.kernels != "triton"
                and "layouts" not in self.stats):
            self.stats["layouts"] = tuning.tune_layouts(self)
            self.graphs.clear()
        self._ensure_graphs(n_min, n_max, greedy)

    def _ensure_graphs(self, n_min: int, n_max: int, greedy: bool) -> None:
        buckets = sorted({self.bucket_len(n) for n in range(self.bucket_len(max(1, n_min)), n_max + self.bucket,
                                                           self.bucket)})
        while self.graphs.enabled:
            missing = [n for n in buckets if (n, greedy) not in self.graphs]
            if not missing:
                return
            try:
                for n in missing:
                    self.graphs.capture((n, greedy), self._step_fn(n, greedy), self.state.reset)
            except Exception as exc:  # noqa: BLE001 - the fallback rule
                self._capture_failed(f"{'greedy' if greedy else 'sampled'}: {type(exc).__name__}: {exc}"[:600])

    def _capture_failed(self, msg: str) -> None:
        """The one fallback rule: a failed capture with Triton parts captures again with PyTorch ops; a failed
        capture with PyTorch ops runs eagerly. Each failure is logged and kept in info()['graph_failures']."""
        self.graphs.failures.append(msg)
        if "triton" in (self.kernels, self.sampler, self.attention):
            log.warning("FastT3: CUDA graph capture with Triton kernels failed (%s); PyTorch ops", msg)
            self.kernels, self.sampler, self.attention = "torch", "torch", "sdpa"
            self.stats.setdefault("kernels", {})["capture_error"] = msg[:300]
            self.graphs.clear()
        else:
            log.warning("FastT3: CUDA graph capture failed (%s); running eager", msg)
            self.graphs.disable()

    def _step_fn(self, n: int, greedy: bool):
        w, st, choice = self.weights, self.state, self.choice()
        return lambda: decode_step(w, st, n, greedy, True, *choice)

    def choice(self) -> Tuple[str, str, str]:
        """(kernels, sampler, attention) a step runs with now (PyTorch's until chosen)."""
        return self.kernels or "torch", self.sampler or "torch", self.attention or "sdpa"

    def warmup(self, t3_cond=None, text_len: int = 64, max_new_tokens: int = 1000,
               settings: Tuple[Any, ...] = (None, "greedy"), all_buckets: bool = False) -> Dict[str, Any]:
        """Buffers for `text_len` text tokens and `max_new_tokens`, the kernel choice and the graphs for each of
        `settings` (None = the defaults, "greedy"), with `t3_cond` that voice's prefix. all_buckets: every
        attention-length bucket from the first, not only those a 376-position prefix reaches. Optional: all of it
        happens on the first request otherwise (the engine's memory plan calls it at configure)."""
        t0 = time.perf_counter()
        with self._lock:
            self.check_weights()
            lc = self.voice_prefix(t3_cond).length if t3_cond is not None else 376
            n_max = lc + text_len + 1 + max_new_tokens
            for s in settings:
                greedy = s == "greedy" or sampling.is_greedy(sampling.coerce(s))
                self.prepare(1 if all_buckets else lc + 2, n_max, max_new_tokens + 1, greedy)
        return {"seconds": time.perf_counter() - t0, "graphs": len(self.graphs), "use_graphs": self.use_graphs,
                "capacity": self.capacity}

    # -- generation --------------------------------------------------------------------------------------------------
    def generate(self, t3_cond, text_tokens, settings: Any = None, generator: Optional[torch.Generator] = None,
                 max_new_tokens: int = 1000, **overrides: Any) -> torch.Tensor:
        """Speech tokens (1, n) on the device, as upstream `T3.inference_turbo` returns them (stop token removed)."""
        chunks = list(self.stream_tokens(t3_cond, text_tokens, settings, generator, max_new_tokens, **overrides))
        return torch.cat(chunks).view(1, -1) if chunks else torch.zeros(1, 0, dtype=torch.long, device=self.device)

    def stream_tokens(self, t3_cond, text_tokens, settings: Any = None, generator: Optional[torch.Generator] = None,
                      max_new_tokens: int = 1000, first_chunk: Optional[int] = None,
                      **overrides: Any) -> Iterator[torch.Tensor]:
        """1-D LongTensor chunks of speech tokens on the device, every `check_every` tokens (and at `first_chunk`),
        the stop token and what was decoded after it removed. settings: GenerationSettings, a dict or None."""
        s = sampling.coerce(settings, **overrides)
        sampling.check(s)
        text_tokens = text_tokens.view(1, -1) if text_tokens.dim() == 1 else text_tokens
        if text_tokens.shape[0] != 1:
            raise ValueError("FastT3 supports batch size 1 only")
        with self._lock:
            yield from loop.run(self, t3_cond, text_tokens.to(self.device), s, generator,
                                max(0, int(max_new_tokens)), first_chunk)

    def info(self) -> Dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "cuda_graphs": self.use_graphs, "graphs": len(self.graphs),
                "graph_failures": list(self.graphs.failures), "capacity": self.capacity, "sampler": self.sampler,
                "attention": self.attention,
                "kernels": self.kernels, "kernel_check": self.stats.get("kernels"), "voices": len(self.voices),
                "check_every": self.check_every, "kv_mb": round(self.state.kv_bytes / 2**20, 1),
                "voice_mb": round(self.voices.nbytes / 2**20, 1),
                "weight_mb_per_token": round(self.weights.step_bytes() / 2**20, 1)}
