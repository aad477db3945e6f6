"""A fast speech-token generator for Chatterbox Turbo's T3, equivalent to upstream `T3.inference_turbo`.

Upstream's loop (chatterbox 0.1.6/0.1.7, `T3.inference_turbo`) re-enters HuggingFace's GPT2Model every token,
grows a DynamicCache by concatenation, runs the logits processors as ~20 separate kernels and syncs the GPU every
token (`torch.all(next == stop)`, `torch.multinomial`): 12-18 ms per speech token on an H100 here, host-bound.
`FastT3` runs the same model, on the same parameters (no copy):

* a static KV cache (one tensor for all 24 layers) written in place at a device-side position;
* the voice prefix (speaker embedding + prompt speech tokens, up to 376 positions) prefilled once per voice and its
  keys/values reused for every request of that voice (LRU of `max_voices`, keyed by the T3Cond object);
* one decode step (embedding + position, 24 GPT-2 blocks, ln_f, speech head, sampling, state update) captured as a
  CUDA graph per attention-length bucket (plain eager on CPU or where capture fails);
* on CUDA, `kernels="auto"` checks fused Triton kernels (kernels.py: layer norm + matrix-vector product +
  bias + GELU + residual in one kernel, 4 per layer) against the PyTorch ops on the real weights and keeps them if
  they agree and run faster; `compile=True` instead fuses the PyTorch glue ops with torch.compile;
* sampling on the device with upstream's semantics and order (temperature -> top-k -> top-p -> repetition penalty
  -> softmax -> draw); the draw is argmax(p / E) with E ~ Exp(1) noise from the caller's generator, which samples
  exactly from p and needs no host round trip; the stop token is looked for every `check_every` tokens, one chunk
  behind the GPU (the next chunk is already queued), and what was decoded past it is dropped.

Measured (bench/results/, H100, fp16, cached voice, upstream's sampling defaults): 0.96-0.97 ms per decoded token
(upstream 12-18 ms), greedy tokens identical to upstream's over 250 tokens in fp32 at full size.

Equivalence with upstream (what `test/test_turbo_fast.py` and `bench/bench_turbo.py` check):

* greedy (top_k=1, or top_p=0): the same tokens as `t3.inference_turbo(..., top_k=1)`, for fp32 (fp16/bf16 ties
  and rounding can differ between any two implementations, upstream's own runs included);
* sampling: the same seed (generator state) and `check_every` give the same tokens run to run (fp32/fp16; in bf16
  the captured step's cuDNN attention was seen to break this, see bench/results/SUMMARY.md); the distribution is
  upstream's (same processors, same order, including upstream's first step, whose repetition penalty applies to
  the start-of-speech token only, and the later ones, which penalise the generated tokens only);
* first token from the prefill, then at most `max_new_tokens` more (upstream's `max_gen_len`, default 1000); the
  first stop token after the first token ends generation and is dropped; a stop token as the very first token does
  not stop (as upstream); nothing else is filtered (tokens >= 6561 other than that are left, as upstream).

Only batch size 1 and the Turbo configuration (GPT-2 backbone, no learned input position embeddings, no perceiver)
are supported; `FastT3.supported(t3)` says why not otherwise. The module never changes upstream code or the values
of the model's parameters. It does change, in place: the dtype of `t3` when `FastT3(t3, dtype=...)` asks for
another one (upstream's `inference_turbo` then needs the T3Cond cast the same way: `cast_cond(cond, dtype)`), and
on CUDA the storage order of the block weights (a transposed view of the same values; upstream's Conv1D works with
either). `release_text_head(t3)` frees T3's text head, which Turbo inference never uses (~100 MB in fp16).

    fast = FastT3(model.t3)                     # device/dtype of t3; CUDA graphs on CUDA; kernels="auto"
    fast.warmup(model.conds.t3)                 # optional: prefix, kernel choice, graph capture (~3 s on an H100)
    tokens = fast.generate(model.conds.t3, text_tokens, settings, generator=g)      # (1, n) LongTensor
    for chunk in fast.stream_tokens(model.conds.t3, text_tokens, settings, generator=g, first_chunk=25):
        ...                                     # 1-D LongTensors on the device, stop token removed
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from .graphs import GraphsMixin
from .sampling import SamplingSettings, draw, process, process_topk
from .self_check import SelfCheckMixin
from .step import StepMixin, _glue, _Layer, _sdpa_backends
from .voice_prefix import VoicePrefixMixin, _VoicePrefix

log = logging.getLogger(__name__)


class FastT3(StepMixin, GraphsMixin, VoicePrefixMixin, SelfCheckMixin):
    """Static-cache, CUDA-graph, device-sampling generator for Chatterbox Turbo's T3 (see the module docstring).

    t3:           upstream `chatterbox.models.t3.T3` in the Turbo configuration (its parameters are used in place).
    device/dtype: default: t3's. A dtype other than t3's casts t3 in place (fp16/bf16 for CUDA; fp32 on CPU).
    cuda_graphs:  capture the decode step as CUDA graphs (CUDA only; falls back to eager if capture fails).
    compile:      additionally torch.compile the per-layer glue ops before capture (CUDA; experimental).
    check_every:  decode this many tokens between looks at the stop token (the only host syncs); also the size of
                  the sampling-noise block, so it is part of what a seed reproduces.
    bucket:       attention length granularity of the captured graphs (positions).
    lookahead_tokens: tokens queued on the GPU ahead of the host's stop-token check (CUDA; at least one chunk):
                  more lets T3 run while the caller decodes audio, at the cost of up to this many tokens decoded
                  past the stop token and discarded.
    max_voices:   voice prefixes kept (LRU); each is n_layer*2*n_embd*len*itemsize bytes (~37 MB fp16 for 375).
    prefix_cache: reuse the voice prefix's keys/values (False = prefill [cond, text, start] in one pass as upstream).

    One generation at a time per instance (an internal lock serialises callers). Not thread-safe to mutate t3 while
    it runs; after moving or casting t3, create a new FastT3 (a changed weight is detected and the graphs rebuilt).
    """

    def __init__(self, t3, device=None, dtype: Optional[torch.dtype] = None, cuda_graphs: bool = True,
                 compile: bool = False, check_every: int = 8, bucket: int = 256, max_voices: int = 8,
                 prefix_cache: bool = True, tune_layouts: bool = True, kernels: str = "auto",
                 lookahead_tokens: int = 8):
        ok, why = self.supported(t3)
        if not ok:
            raise ValueError(f"FastT3 cannot run this T3: {why}")
        self.t3 = t3
        p = t3.speech_head.weight
        self.device = torch.device(device) if device is not None else p.device
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if p.device != self.device:
            raise ValueError(f"t3 is on {p.device}, FastT3 was asked for {self.device}: move t3 first")
        if dtype is not None and dtype != p.dtype:
            t3.to(dtype=dtype)
        self.dtype = t3.speech_head.weight.dtype
        self.use_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.use_compile = bool(compile) and self.device.type == "cuda"
        self.check_every = max(1, int(check_every))
        self.lookahead_tokens = max(1, int(lookahead_tokens))
        self.bucket = max(16, int(bucket))
        self.max_voices = max(1, int(max_voices))
        self.prefix_cache = bool(prefix_cache)
        self.tune_layouts = bool(tune_layouts)
        if kernels not in ("auto", "torch", "triton"):
            raise ValueError(f"kernels must be 'auto', 'torch' or 'triton', not {kernels!r}")
        self.kernels_pref = kernels
        self._kernels: Optional[str] = None if self.use_graphs else "torch"
        self.hp = t3.hp
        self.start_token = int(t3.hp.start_speech_token)
        self.stop_token = int(t3.hp.stop_speech_token)
        cfg = t3.cfg
        self.n_layer = int(cfg.n_layer)
        self.n_embd = int(cfg.hidden_size)
        self.n_head = int(cfg.num_attention_heads)
        self.head_dim = self.n_embd // self.n_head
        self.eps = float(cfg.layer_norm_epsilon)
        self.vocab = int(t3.speech_head.out_features)
        self.max_positions = int(t3.tfmr.wpe.weight.shape[0])
        self._lock = threading.RLock()
        self._voices: "OrderedDict[int, _VoicePrefix]" = OrderedDict()
        self._graphs: Dict[Tuple[int, bool], Any] = {}
        self._graph_failures: List[str] = []
        self._pool = None
        self._glue_fn: Callable = _glue
        self._masked_eager = False
        self._sampler = "sort"
        self.stats: Dict[str, Any] = {}
        self._bind_weights()
        self._alloc(0, 0)

    # -- set-up ----------------------------------------------------------------------------------------------------
    @staticmethod
    def supported(t3) -> Tuple[bool, str]:
        """(True, "") when `t3` is a Turbo T3 this class reproduces exactly; else (False, reason)."""
        try:
            hp = t3.hp
            if not getattr(t3, "is_gpt", False):
                return False, "backbone is not GPT-2 (only Chatterbox Turbo is supported)"
            if hp.input_pos_emb is not None:
                return False, f"input_pos_emb={hp.input_pos_emb!r} (Turbo has none)"
            if getattr(hp, "use_perceiver_resampler", False):
                return False, "perceiver resampler (Turbo has none)"
            cfg = t3.cfg
            if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn",
                                                                                   False):
                return False, "non-default GPT-2 attention scaling"
            if not getattr(cfg, "scale_attn_weights", True):
                return False, "unscaled GPT-2 attention"
            if getattr(cfg, "activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
                return False, f"activation {cfg.activation_function!r}"
            if getattr(cfg, "add_cross_attention", False):
                return False, "cross attention"
            if t3.speech_head.bias is None:
                return False, "speech head without bias"
            return True, ""
        except AttributeError as exc:
            return False, f"not a chatterbox T3 ({exc})"

    def _bind_weights(self) -> None:
        t3 = self.t3
        self.layers = [_Layer(b) for b in t3.tfmr.h]
        self.wpe_w = t3.tfmr.wpe.weight
        self.lnf_w, self.lnf_b = t3.tfmr.ln_f.weight, t3.tfmr.ln_f.bias
        self.speech_emb_w = t3.speech_emb.weight
        self.head_wt = t3.speech_head.weight.t()
        self.head_b = t3.speech_head.bias
        self._weights_fp = self._weight_fingerprint()

    def _weight_fingerprint(self) -> Tuple:
        t3 = self.t3
        ps = [t3.speech_head.weight, t3.speech_emb.weight, t3.tfmr.wpe.weight, t3.tfmr.h[0].attn.c_attn.weight,
              t3.tfmr.h[-1].mlp.c_proj.weight, t3.tfmr.ln_f.weight]
        return tuple((p.data_ptr(), p.dtype, p.device) for p in ps)

    def _check_weights(self) -> None:
        if self._weight_fingerprint() != self._weights_fp:
            log.info("FastT3: t3's parameters changed (moved or cast); rebuilding")
            self.dtype = self.t3.speech_head.weight.dtype
            if self.t3.speech_head.weight.device != self.device:
                raise RuntimeError("t3 was moved to another device; create a new FastT3")
            self._graphs.clear()
            self._voices.clear()
            self._bind_weights()
            self._alloc(0, 0, force=True)

    # -- the maths -----------------------------------------------------------------------------------------------
    # -- sampling (sampling.py) on this instance's device-side settings ---------------------------------------------
    def _process(self, logits):
        return process(logits, self.seen, self.s_temp, self.s_kidx, self.s_topp, self.s_topp_on, self.s_pen)

    def _process_topk(self, logits, k: int):
        return process_topk(logits, k, self.seen, self.s_temp, self.s_topp, self.s_topp_on, self.s_pen)

    def _sample(self, logits, noise_row, mode: str = "sort"):
        """A draw from softmax(processed logits) (sampling.draw)."""
        return draw(self._process(logits) if mode == "sort" else self._process_topk(logits, int(mode[4:])), noise_row)

    def _mode(self, s: SamplingSettings) -> str:
        """Graph flavour for these settings: 'greedy', 'sort' (exact), or 'topk<k>' (if sort failed to capture)."""
        if s.greedy:
            return "greedy"
        if self._sampler == "topk":
            return f"topk{min(s.top_k, self.vocab) if s.top_k > 0 else self.vocab}"
        return "sort"

    # -- voices (voice_prefix.py: voice_prefix, forget_voice) --------------------------------------------------------
    def clear(self) -> None:
        """Drop voice prefixes and graphs (buffers stay)."""
        with self._lock:
            self._voices.clear()
            self._graphs.clear()

    # -- graphs ------------------------------------------------------------------------------------------------------
    def warmup(self, t3_cond=None, text_len: int = 64, max_new_tokens: int = 1000,
               settings: Tuple[Any, ...] = (None, "greedy"), all_buckets: bool = False) -> Dict[str, Any]:
        """Allocate buffers for `text_len` text tokens and `max_new_tokens`, capture the graphs for each of
        `settings` (None = upstream's defaults, "greedy" = top_k 1) and, with `t3_cond`, prefill that voice.
        all_buckets: capture every attention-length bucket from the first (any voice prefix, however short), not
        only those a 376-position prefix reaches. Returns timings. Optional: everything happens lazily on the first
        request otherwise (the engine's memory plan calls it at configure)."""
        t0 = time.perf_counter()
        with self._lock:
            self._check_weights()
            lc = 376
            if t3_cond is not None:
                lc = self.voice_prefix(t3_cond).length
            n_max = lc + text_len + 1 + max_new_tokens
            self._alloc(n_max, max_new_tokens + 1)
            self._pick_kernels()
            self._tune_layouts()
            for s in settings:
                s = SamplingSettings(1.0, 1, 1.0, 1.0) if s == "greedy" else SamplingSettings.coerce(s)
                self._ensure_graphs(1 if all_buckets else lc + 2, n_max, s)
        return {"seconds": time.perf_counter() - t0, "graphs": len(self._graphs), "use_graphs": self.use_graphs,
                "capacity": self.capacity}

    # -- generation --------------------------------------------------------------------------------------------------
    def generate(self, t3_cond, text_tokens, settings: Any = None, generator: Optional[torch.Generator] = None,
                 max_new_tokens: int = 1000, on_tokens: Optional[Callable[[torch.Tensor], None]] = None,
                 **overrides: Any) -> torch.Tensor:
        """Speech tokens for `text_tokens` (1, T) in the voice `t3_cond`: a (1, n) LongTensor on the device, as
        upstream `T3.inference_turbo` returns (stop token removed). `on_tokens(chunk)` gets each new 1-D chunk."""
        chunks = []
        for chunk in self.stream_tokens(t3_cond, text_tokens, settings, generator, max_new_tokens, **overrides):
            chunks.append(chunk)
            if on_tokens is not None:
                on_tokens(chunk)
        if not chunks:
            return torch.zeros(1, 0, dtype=torch.long, device=self.device)
        return torch.cat(chunks).view(1, -1)

    def stream_tokens(self, t3_cond, text_tokens, settings: Any = None, generator: Optional[torch.Generator] = None,
                      max_new_tokens: int = 1000, first_chunk: Optional[int] = None,
                      **overrides: Any) -> Iterator[torch.Tensor]:
        """Yield the speech tokens as 1-D LongTensor chunks on the device, every `check_every` tokens (and once at
        `first_chunk` tokens if given), the stop token and anything decoded after it removed."""
        s = SamplingSettings.coerce(settings, **overrides)
        s.check()
        if text_tokens.dim() == 1:
            text_tokens = text_tokens.view(1, -1)
        if text_tokens.shape[0] != 1:
            raise ValueError("FastT3 supports batch size 1 only")
        max_new_tokens = max(0, int(max_new_tokens))
        with self._lock:
            yield from self._run(t3_cond, text_tokens.to(self.device), s, generator, max_new_tokens, first_chunk)

    def _run(self, t3_cond, text_tokens, s: SamplingSettings, generator, max_new: int,
             first_chunk: Optional[int]) -> Iterator[torch.Tensor]:
        # inference_mode is entered per block, never across a yield (it would leak into the caller's code)
        t_start = time.perf_counter()
        greedy = s.greedy
        total = 1 + max_new
        with torch.inference_mode():
            P = self._start(t3_cond, text_tokens, s, generator, total)
        mode = self._mode(s)
        cuda = self.device.type == "cuda"
        ev0 = None
        if cuda:
            ev0 = torch.cuda.Event(enable_timing=True, blocking=True)
            ev0.record()
        N = self.check_every
        checks = set(range(N, total, N))
        if first_chunk:
            checks.add(int(first_chunk))
        checks.add(total)
        ends = sorted(c for c in checks if 1 <= c <= total)
        # On CUDA the next chunk is queued before the host looks at the current one (one chunk ahead), so the GPU
        # never waits for the host's stop-token check; what runs past the stop token is discarded.
        # (lookahead_tokens / check_every chunks ahead: while the caller decodes audio, whose kernel launches keep
        # the CPU busy, the GPU goes on with T3 behind them instead of idling)
        lookahead = max(1, -(-self.lookahead_tokens // N)) if cuda else 0
        state = {"i": 1}
        marks: List[Any] = []                       # per queued chunk: (end, event after its last step)

        def enqueue(end: int) -> None:
            i = state["i"]
            n_needed = P + end - 1
            graph = self._graphs.get((self._bucket_len(n_needed), mode)) if self.use_graphs else None
            for j in range(i, end):
                if not greedy and j % N == 0:
                    self._fill_noise(generator)
                if graph is not None:
                    graph.replay()
                elif self._masked_eager:  # the graphs' bucketed, masked step, run eagerly (tests)
                    self._decode_step(self._bucket_len(n_needed), mode, True, None, self._kernels or "torch")
                else:
                    self._decode_step(P + j, mode, False)
            lo = 0 if i == 1 else i
            ev = None
            if cuda:
                self.out_host[lo:end].copy_(self.out[lo:end], non_blocking=True)
                ev = torch.cuda.Event(enable_timing=True, blocking=True)  # the host sleeps while it waits
                ev.record()
            state["i"] = end
            marks.append((end, ev))

        emitted = 0
        last_ev = None
        queued = 0
        for k, end in enumerate(ends):
            with torch.inference_mode(), _sdpa_backends(cudnn=False):
                while queued < len(ends) and queued <= k + lookahead:
                    enqueue(ends[queued])
                    queued += 1
                _, ev = marks[k]
                if ev is not None:
                    ev.synchronize()                # the only host wait: every N tokens, one chunk behind
                    host = self.out_host[emitted:end]
                    last_ev = ev
                else:
                    host = self.out[emitted:end]
                lo = 1 if emitted == 0 else 0       # a stop token as the very first token does not stop
                hits = (host[lo:] == self.stop_token).nonzero()
                stop_at = emitted + lo + int(hits[0, 0]) if hits.numel() else None
                cut = stop_at if stop_at is not None else end
                if stop_at is None and end == total and int(host[-1]) == self.stop_token:
                    cut = end - 1                   # upstream drops a final stop token (only possible at index 0)
                chunk = self.out[emitted:cut].clone() if cut > emitted else None
                decoded = end
            if chunk is not None:
                if emitted == 0:
                    self.stats["first_chunk_s"] = time.perf_counter() - t_start
                emitted = cut
                yield chunk
            if stop_at is not None:
                break
        self.stats.update(tokens=emitted, steps=state["i"], prefill_len=P, mode=mode,
                          seconds=time.perf_counter() - t_start, graphs=self.use_graphs)
        if ev0 is not None and last_ev is not None and decoded > 1:
            # GPU time from the first token to the last checked one, per decoded token (prefill excluded)
            self.stats["decode_ms_per_token"] = ev0.elapsed_time(last_ev) / (decoded - 1)

    def _start(self, t3_cond, text_tokens, s: SamplingSettings, generator, total: int) -> int:
        """Prefill and the first token; leaves the state ready for step 1. Returns the prefill length."""
        self._check_weights()
        greedy = s.greedy
        T = int(text_tokens.shape[1])
        if self.prefix_cache:
            voice = self.voice_prefix(t3_cond)
            Lc = voice.length
        else:
            voice = None
            Lc = int(self._cond_embeds(t3_cond).shape[0])
        P = Lc + T + 1                           # prefill length: cond + text + start-of-speech
        n_max = P + total - 1                    # attention length of the last step
        if n_max > self.max_positions:
            raise ValueError(f"{n_max} positions exceed GPT-2's {self.max_positions}")
        self._alloc(n_max, total)
        self._pick_kernels()
        self._tune_layouts()
        self._ensure_graphs(P + 1, n_max, s)
        self._set_settings(s)
        self.seen.zero_()
        t3 = self.t3
        start = torch.full((1, 1), self.start_token, dtype=torch.long, device=self.device)
        text_emb = t3.text_emb(text_tokens)[0].to(self.dtype)
        speech_emb = t3.speech_emb(start)[0].to(self.dtype)
        with _sdpa_backends(cudnn=False):
            if voice is not None:
                self.kv[:, :, :, :Lc].copy_(voice.kv)
                h = self._prefill(torch.cat([text_emb, speech_emb]), self.kv, Lc)
            else:
                cond = self._cond_embeds(t3_cond)
                h = self._prefill(torch.cat([cond, text_emb, speech_emb]), self.kv, 0)
        logits = self._head(h)
        # first token: upstream passes the start-of-speech token as input_ids, so only it is penalised
        mode = self._mode(s)
        if greedy:
            t0 = torch.argmax(logits, dim=-1)
        else:
            self._fill_noise(generator)
            self.seen.index_fill_(1, start.view(1), True)
            t0 = self._sample(logits, self.noise[0:1], mode)
            self.seen.zero_()
        self.out[0:1].copy_(t0)
        self.tok.copy_(t0)
        self.seen.index_fill_(1, t0, True)
        self.pos.fill_(P)
        self.step.fill_(1)
        return P

    # -- checks (self_check.py: self_check) and state ------------------------------------------------------------------
    def info(self) -> Dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "cuda_graphs": self.use_graphs, "compile": self.use_compile, "graphs": len(self._graphs),
                "graph_failures": list(self._graph_failures), "capacity": self.capacity, "sampler": self._sampler,
                "kernels": self._kernels, "kernel_check": self.stats.get("kernels"),
                "voices": len(self._voices), "check_every": self.check_every,
                "kv_mb": round(self.kv.numel() * self.kv.element_size() / 2**20, 1),
                "voice_mb": round(sum(v.kv.numel() * v.kv.element_size() for v in self._voices.values()) / 2**20, 1)}
