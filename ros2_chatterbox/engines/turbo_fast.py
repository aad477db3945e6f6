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
* on CUDA, `kernels="auto"` checks fused Triton kernels (turbo_fast_kernels.py: layer norm + matrix-vector product +
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

import contextlib
import copy
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSettings:
    """Upstream `inference_turbo`'s sampling knobs (defaults are `ChatterboxTurboTTS.generate`'s)."""
    temperature: float = 0.8
    top_k: int = 1000
    top_p: float = 0.95
    repetition_penalty: float = 1.2

    @classmethod
    def coerce(cls, settings: Any = None, **overrides: Any) -> "SamplingSettings":
        """From None, a dict, or any object with these attributes (e.g. engine.GenerationSettings)."""
        values: Dict[str, Any] = {}
        if isinstance(settings, dict):
            values.update({k: settings[k] for k in ("temperature", "top_k", "top_p", "repetition_penalty")
                           if k in settings})
        elif settings is not None:
            for k in ("temperature", "top_k", "top_p", "repetition_penalty"):
                if hasattr(settings, k):
                    values[k] = getattr(settings, k)
        values.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**values)
        return cls(float(s.temperature), int(s.top_k), float(s.top_p), float(s.repetition_penalty))

    @property
    def greedy(self) -> bool:
        """True when upstream's processors leave one token (top_k == 1, or top_p == 0): the draw is an argmax."""
        return self.top_k == 1 or self.top_p <= 0.0

    def check(self) -> None:
        if self.repetition_penalty <= 0 or not math.isfinite(self.repetition_penalty):
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not (0.0 <= self.top_p <= 1.0):
            raise ValueError(f"top_p must be within [0, 1], got {self.top_p}")
        if not math.isfinite(self.temperature):
            raise ValueError(f"temperature must be finite, got {self.temperature}")


def cast_cond(cond, dtype: torch.dtype, device=None):
    """A shallow copy of a T3Cond with its floating-point tensors cast to `dtype` (and moved to `device`)."""
    c = copy.copy(cond)
    for key, value in list(vars(c).items()):
        if torch.is_tensor(value):
            value = value.to(device=device) if device is not None else value
            if value.is_floating_point():
                value = value.to(dtype=dtype)
            setattr(c, key, value)
    return c


# --------------------------------------------------------------------------------------------------------------
# the math of one GPT-2 block, split where the attention goes (the same ops as HF GPT2Block / Conv1D)
# --------------------------------------------------------------------------------------------------------------
def _pre(x, ln_w, ln_b, w, b, eps: float):
    """ln_1 + c_attn (Conv1D = addmm(bias, x, W))."""
    h = F.layer_norm(x, (x.shape[-1],), ln_w, ln_b, eps)
    return torch.addmm(b, h, w)


def _post(x, a, pw, pb, l2w, l2b, fw, fb, mw, mb, eps: float):
    """c_proj + residual, ln_2, MLP (gelu_new) + residual."""
    x = torch.addmm(pb, a, pw) + x
    h = F.layer_norm(x, (x.shape[-1],), l2w, l2b, eps)
    m = F.gelu(torch.addmm(fb, h, fw), approximate="tanh")  # gelu_new, in one kernel
    return x + torch.addmm(mb, m, mw)


def _glue(x, a, pw, pb, l2w, l2b, fw, fb, mw, mb, nlw, nlb, nw, nb, eps: float):
    """`_post` of this block, then the next block's `_pre` (or ln_f + speech head after the last block)."""
    x = _post(x, a, pw, pb, l2w, l2b, fw, fb, mw, mb, eps)
    h = F.layer_norm(x, (x.shape[-1],), nlw, nlb, eps)
    return x, torch.addmm(nb, h, nw)


def _sdpa_backends(cudnn: bool):
    """A context that limits scaled_dot_product_attention's backends on CUDA. Eager and prefill attention use
    flash / memory-efficient / math (deterministic forward kernels, so the same seed gives the same tokens); the
    captured decode step keeps cuDNN too (its fastest kernel for a masked single query on Hopper)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception:  # torch < 2.3
        return contextlib.nullcontext()
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if cudnn and hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends.insert(0, SDPBackend.CUDNN_ATTENTION)
    try:
        return sdpa_kernel(backends)
    except Exception:
        return contextlib.nullcontext()


_SIDE_STREAMS: Dict[Any, Any] = {}


def side_stream(device):
    """One capture stream per device for the whole process. cuBLAS keeps a workspace (32 MiB on Hopper) for every
    stream it ever ran on, for the life of the process: a fresh stream per load would leak it on every reload."""
    key = torch.device(device)
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(key)
    return _SIDE_STREAMS[key]


def release_text_head(t3) -> int:
    """Free T3's text head (50276 x 1024, ~100 MB in fp16): Turbo inference never uses it (upstream's
    `inference_turbo` and `generate` neither; only training's `T3.forward`/`loss` do). Returns the bytes freed."""
    head = getattr(t3, "text_head", None)
    if head is None:
        return 0
    n = sum(p.numel() * p.element_size() for p in head.parameters())
    t3.text_head = None
    return int(n)


class _Layer:
    __slots__ = ("ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b", "ln2_w", "ln2_b", "fc_w", "fc_b",
                 "mproj_w", "mproj_b")

    def __init__(self, blk):
        self.ln1_w, self.ln1_b = blk.ln_1.weight, blk.ln_1.bias
        self.attn_w, self.attn_b = blk.attn.c_attn.weight, blk.attn.c_attn.bias
        self.proj_w, self.proj_b = blk.attn.c_proj.weight, blk.attn.c_proj.bias
        self.ln2_w, self.ln2_b = blk.ln_2.weight, blk.ln_2.bias
        self.fc_w, self.fc_b = blk.mlp.c_fc.weight, blk.mlp.c_fc.bias
        self.mproj_w, self.mproj_b = blk.mlp.c_proj.weight, blk.mlp.c_proj.bias


class _VoicePrefix:
    __slots__ = ("ref", "fingerprint", "kv", "length", "seconds")

    def __init__(self, ref, fingerprint, kv, length, seconds):
        self.ref, self.fingerprint, self.kv, self.length, self.seconds = ref, fingerprint, kv, length, seconds


def _tensor_fp(t) -> Tuple:
    if not torch.is_tensor(t):
        return (repr(t),)
    try:
        version = t._version
    except Exception:  # inference tensors keep no version counter
        version = -1
    return (t.data_ptr(), tuple(t.shape), str(t.dtype), version)


# --------------------------------------------------------------------------------------------------------------
class FastT3:
    """Static-cache, CUDA-graph, device-sampling generator for Chatterbox Turbo's T3 (see the module docstring).

    t3:           upstream `chatterbox.models.t3.T3` in the Turbo configuration (its parameters are used in place).
    device/dtype: default: t3's. A dtype other than t3's casts t3 in place (fp16/bf16 for CUDA; fp32 on CPU).
    cuda_graphs:  capture the decode step as CUDA graphs (CUDA only; falls back to eager if capture fails).
    compile:      additionally torch.compile the per-layer glue ops before capture (CUDA; experimental).
    check_every:  decode this many tokens between looks at the stop token (the only host syncs); also the size of
                  the sampling-noise block, so it is part of what a seed reproduces.
    bucket:       attention length granularity of the captured graphs (positions).
    max_voices:   voice prefixes kept (LRU); each is n_layer*2*n_embd*len*itemsize bytes (~37 MB fp16 for 375).
    prefix_cache: reuse the voice prefix's keys/values (False = prefill [cond, text, start] in one pass as upstream).

    One generation at a time per instance (an internal lock serialises callers). Not thread-safe to mutate t3 while
    it runs; after moving or casting t3, create a new FastT3 (a changed weight is detected and the graphs rebuilt).
    """

    def __init__(self, t3, device=None, dtype: Optional[torch.dtype] = None, cuda_graphs: bool = True,
                 compile: bool = False, check_every: int = 8, bucket: int = 256, max_voices: int = 8,
                 prefix_cache: bool = True, tune_layouts: bool = True, kernels: str = "auto"):
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
            logger.info("FastT3: t3's parameters changed (moved or cast); rebuilding")
            self.dtype = self.t3.speech_head.weight.dtype
            if self.t3.speech_head.weight.device != self.device:
                raise RuntimeError("t3 was moved to another device; create a new FastT3")
            self._graphs.clear()
            self._voices.clear()
            self._bind_weights()
            self._alloc(0, 0, force=True)

    def _alloc(self, positions: int, tokens: int, force: bool = False) -> bool:
        """Make the static buffers hold `positions` cache positions and `tokens` output tokens; True if reallocated
        (graphs are then dropped: they point at the old buffers)."""
        cur_pos = getattr(self, "capacity", -1)
        cur_tok = getattr(self, "token_capacity", -1)
        if not force and positions <= cur_pos and tokens <= cur_tok:
            return False
        positions = max(positions, cur_pos, self.bucket)
        positions = int(math.ceil(positions / self.bucket) * self.bucket)
        positions = min(positions, self.max_positions)
        tokens = max(tokens, cur_tok, 1001)
        dev, V = self.device, self.vocab
        self._graphs.clear()
        self.kv = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        with torch.inference_mode():
            self.kv = torch.zeros(self.n_layer, 2, self.n_head, positions, self.head_dim, device=dev,
                                  dtype=self.dtype)
            self.capacity = positions
            self.token_capacity = tokens
            self.out = torch.zeros(tokens, dtype=torch.long, device=dev)
            self.out_host = (torch.zeros(tokens, dtype=torch.long, pin_memory=True) if dev.type == "cuda"
                             else None)
            self.tok = torch.zeros(1, dtype=torch.long, device=dev)
            self.pos = torch.zeros(1, dtype=torch.long, device=dev)
            self.step = torch.zeros(1, dtype=torch.long, device=dev)
            self.seen = torch.zeros(1, V, dtype=torch.bool, device=dev)
            self.noise = torch.ones(self.check_every, V, dtype=torch.float32, device=dev)
            self.arange = torch.arange(positions, device=dev)
            # sampling settings, as device tensors so that one graph serves every setting
            self.s_temp = torch.ones(1, 1, dtype=torch.float32, device=dev)
            self.s_kidx = torch.zeros(1, 1, dtype=torch.long, device=dev)
            self.s_topp = torch.zeros(1, 1, dtype=torch.float32, device=dev)
            self.s_topp_on = torch.zeros(1, V, dtype=torch.bool, device=dev)
            self.s_pen = torch.ones(1, 1, dtype=torch.float32, device=dev)
        return True

    def _set_settings(self, s: SamplingSettings) -> None:
        V = self.vocab
        temp = s.temperature if (s.temperature > 0 and s.temperature != 1.0) else 1.0
        k = min(max(s.top_k, 1), V) if s.top_k > 0 else V
        self.s_temp.fill_(temp)
        self.s_kidx.fill_(V - k)                       # ascending sort: the k-th largest sits at V - k
        self.s_topp.fill_(1.0 - s.top_p)
        self.s_topp_on.fill_(s.top_p < 1.0)
        self.s_topp_on[:, -1] = False                  # min_tokens_to_keep=1: the largest always stays
        self.s_pen.fill_(s.repetition_penalty)

    def _fill_noise(self, generator: Optional[torch.Generator]) -> None:
        if generator is not None and torch.device(generator.device).type != self.device.type:
            e = torch.empty(self.noise.shape, dtype=torch.float32, device=generator.device)
            e.exponential_(generator=generator)
            self.noise.copy_(e, non_blocking=False)
        else:
            self.noise.exponential_(generator=generator)
        self.noise.clamp_(min=torch.finfo(torch.float32).tiny)

    # -- the maths -----------------------------------------------------------------------------------------------
    def _process(self, logits):
        """Upstream's logits processors, in upstream's order, on float32 scores (1, V): temperature, top-k, top-p,
        repetition penalty (over `self.seen`). Device-only ops: no host sync, capturable."""
        l = logits.float() / self.s_temp
        srt, idx = torch.sort(l, dim=-1)                # ascending, as TopPLogitsWarper sorts
        thr = srt.gather(1, self.s_kidx)               # TopKLogitsWarper: the k-th largest value (ties stay)
        l = l.masked_fill(l < thr, NEG_INF)
        srt = srt.masked_fill(srt < thr, NEG_INF)      # = the sorted top-k-filtered scores
        cum = srt.softmax(dim=-1).cumsum(dim=-1)
        rm = (cum <= self.s_topp) & self.s_topp_on     # s_topp_on is False at the largest (min_tokens_to_keep=1)
        rm = rm.scatter(1, idx, rm)
        l = l.masked_fill(rm, NEG_INF)
        # RepetitionPenaltyLogitsProcessor: upstream appends it last
        return torch.where(self.seen, torch.where(l < 0, l * self.s_pen, l / self.s_pen), l)

    def _process_topk(self, logits, k: int):
        """`_process` with torch.topk(k) (k = the effective top_k, fixed per graph) instead of a full sort: the
        fallback where sort cannot be captured. Differs from upstream only when the k-th largest score has ties
        beyond k (upstream keeps them; their probability then misses the top-p sum)."""
        l = logits.float() / self.s_temp
        vals, idx = torch.topk(l, k, dim=-1)             # descending
        l = l.masked_fill(l < vals[:, -1:], NEG_INF)
        srt, idx = vals.flip(-1), idx.flip(-1)
        cum = srt.softmax(dim=-1).cumsum(dim=-1)
        rm_s = (cum <= self.s_topp) & self.s_topp_on[:, self.vocab - k:]
        rm = torch.zeros_like(self.seen).scatter(1, idx, rm_s)
        l = l.masked_fill(rm, NEG_INF)
        return torch.where(self.seen, torch.where(l < 0, l * self.s_pen, l / self.s_pen), l)

    def _sample(self, logits, noise_row, mode: str = "sort"):
        """A draw from softmax(processed logits): argmax(p / E), E ~ Exp(1) (exact, and no host round trip)."""
        l = self._process(logits) if mode == "sort" else self._process_topk(logits, int(mode[4:]))
        return torch.argmax(l.softmax(dim=-1) / noise_row, dim=-1)

    def _mode(self, s: SamplingSettings) -> str:
        """Graph flavour for these settings: 'greedy', 'sort' (exact), or 'topk<k>' (if sort failed to capture)."""
        if s.greedy:
            return "greedy"
        if self._sampler == "topk":
            return f"topk{min(s.top_k, self.vocab) if s.top_k > 0 else self.vocab}"
        return "sort"

    def _attend(self, q, kv_l, n: int, mask):
        k = kv_l[0:1, :, :n]
        v = kv_l[1:2, :, :n]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _forward_logits(self, n: int, masked: bool, glue: Optional[Callable] = None, kernels: str = "torch"):
        """Logits (1, V) for token `tok` at position `pos`; writes its keys/values at `pos`.

        n: attention length (positions [0, n)); with `masked` the positions > pos are masked (graph buckets),
        else n must be pos + 1 (eager, exact length as upstream). kernels: "torch" (PyTorch ops, `glue` fusing a
        block's tail with the next block's head) or "triton" (turbo_fast_kernels.gemv; weights stored (out, in))."""
        D, H, Dh, eps = self.n_embd, self.n_head, self.head_dim, self.eps
        x = F.embedding(self.tok, self.speech_emb_w) + F.embedding(self.pos, self.wpe_w)
        mask = None
        if masked:  # additive, built once per step in the model dtype (a bool mask is converted in every call)
            mask = torch.zeros(1, 1, 1, n, dtype=self.dtype, device=self.device).masked_fill_(
                (self.arange[:n] > self.pos).view(1, 1, 1, n), NEG_INF)
        if kernels == "triton":
            from .turbo_fast_kernels import gemv
            for i, L in enumerate(self.layers):
                qkv = gemv(x, L.attn_w.t(), L.attn_b, ln=(L.ln1_w, L.ln1_b, eps))
                kv_l = self.kv[i]
                kv_l.index_copy_(2, self.pos, qkv[:, D:].view(2, H, 1, Dh))
                a = self._attend(qkv[:, :D].view(1, H, 1, Dh), kv_l, n, mask).reshape(1, D)
                x = gemv(a, L.proj_w.t(), L.proj_b, res=x)
                m = gemv(x, L.fc_w.t(), L.fc_b, ln=(L.ln2_w, L.ln2_b, eps), act=True)
                x = gemv(m, L.mproj_w.t(), L.mproj_b, res=x)
            return gemv(x, self.head_wt.t(), self.head_b, ln=(self.lnf_w, self.lnf_b, eps))
        glue = glue or _glue
        L0 = self.layers[0]
        qkv = _pre(x, L0.ln1_w, L0.ln1_b, L0.attn_w, L0.attn_b, eps)
        last = self.n_layer - 1
        for i, L in enumerate(self.layers):
            kv_l = self.kv[i]
            kv_l.index_copy_(2, self.pos, qkv[:, D:].view(2, H, 1, Dh))
            a = self._attend(qkv[:, :D].view(1, H, 1, Dh), kv_l, n, mask).reshape(1, D)
            if i < last:
                N = self.layers[i + 1]
                nxt = (N.ln1_w, N.ln1_b, N.attn_w, N.attn_b)
            else:
                nxt = (self.lnf_w, self.lnf_b, self.head_wt, self.head_b)
            x, qkv = glue(x, a, L.proj_w, L.proj_b, L.ln2_w, L.ln2_b, L.fc_w, L.fc_b, L.mproj_w, L.mproj_b,
                          *nxt, eps)
        return qkv

    def _decode_step(self, n: int, mode: str, masked: bool, glue: Optional[Callable] = None,
                     kernels: str = "torch") -> None:
        """One token: reads tok/pos/step/seen/noise, writes kv[pos], out[step], tok, seen; pos += 1, step += 1."""
        logits = self._forward_logits(n, masked, glue, kernels)
        if mode == "greedy":
            tok = torch.argmax(logits, dim=-1)
        else:
            row = self.noise.index_select(0, torch.remainder(self.step, self.check_every))
            tok = self._sample(logits, row, mode)
        self.out.index_copy_(0, self.step, tok)
        self.tok.copy_(tok)
        self.seen.index_fill_(1, tok, True)
        self.pos.add_(1)
        self.step.add_(1)

    def _prefill(self, embeds, kv, p0: int):
        """Run T positions [p0, p0+T) through the blocks, writing their keys/values into kv; returns the last
        position's hidden state before ln_f (1, D)."""
        D, H, Dh, eps = self.n_embd, self.n_head, self.head_dim, self.eps
        T = embeds.shape[0]
        x = embeds + self.wpe_w[p0:p0 + T]
        n = p0 + T
        if p0 == 0:
            mask = None
        else:
            ar = torch.arange(n, device=self.device)
            mask = (ar[None, :] <= (p0 + torch.arange(T, device=self.device))[:, None]).view(1, 1, T, n)
        for i, L in enumerate(self.layers):
            kv_l = kv[i]
            qkv = _pre(x, L.ln1_w, L.ln1_b, L.attn_w, L.attn_b, eps)
            q = qkv[:, :D].view(T, H, Dh).transpose(0, 1).unsqueeze(0)
            kv_l[:, :, p0:n].copy_(qkv[:, D:].view(T, 2, H, Dh).permute(1, 2, 0, 3))
            k, v = kv_l[0:1, :, :n], kv_l[1:2, :, :n]
            if mask is None:
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            a = a.transpose(1, 2).reshape(T, D)
            x = _post(x, a, L.proj_w, L.proj_b, L.ln2_w, L.ln2_b, L.fc_w, L.fc_b, L.mproj_w, L.mproj_b, eps)
        return x[-1:]

    def _head(self, h):
        h = F.layer_norm(h, (self.n_embd,), self.lnf_w, self.lnf_b, self.eps)
        return torch.addmm(self.head_b, h, self.head_wt)

    def _cond_embeds(self, t3_cond):
        """T3.prepare_conditioning on a copy cast to our dtype (upstream mutates the cond; we don't)."""
        t3 = self.t3
        c = cast_cond(t3_cond, self.dtype, self.device)
        if c.cond_prompt_speech_tokens is not None and c.cond_prompt_speech_emb is None:
            c.cond_prompt_speech_emb = t3.speech_emb(c.cond_prompt_speech_tokens)
        emb = t3.cond_enc(c)
        if emb.shape[0] != 1:
            raise ValueError("FastT3 supports batch size 1 only")
        return emb[0]

    # -- voices -----------------------------------------------------------------------------------------------------
    @staticmethod
    def _cond_fingerprint(c) -> Tuple:
        parts = [_tensor_fp(getattr(c, "speaker_emb", None)), _tensor_fp(getattr(c, "clap_emb", None)),
                 _tensor_fp(getattr(c, "cond_prompt_speech_tokens", None)),
                 _tensor_fp(getattr(c, "emotion_adv", None))]
        if getattr(c, "cond_prompt_speech_tokens", None) is None:
            parts.append(_tensor_fp(getattr(c, "cond_prompt_speech_emb", None)))
        return tuple(parts)

    def voice_prefix(self, t3_cond) -> _VoicePrefix:
        """The voice's prefilled keys/values (computed once per conditioning object, LRU-cached)."""
        key = id(t3_cond)
        fp = self._cond_fingerprint(t3_cond)
        entry = self._voices.get(key)
        if entry is not None and entry.ref() is t3_cond and entry.fingerprint == fp:
            self._voices.move_to_end(key)
            return entry
        t0 = time.perf_counter()
        with torch.inference_mode(), _sdpa_backends(cudnn=False):
            emb = self._cond_embeds(t3_cond)
            Lc = emb.shape[0]
            kv = torch.empty(self.n_layer, 2, self.n_head, Lc, self.head_dim, device=self.device, dtype=self.dtype)
            self._prefill(emb, kv, 0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        try:
            ref = weakref.ref(t3_cond)
        except TypeError:
            ref = (lambda obj: (lambda: obj))(t3_cond)
        entry = _VoicePrefix(ref, fp, kv, Lc, time.perf_counter() - t0)
        self._voices[key] = entry
        while len(self._voices) > self.max_voices:
            self._voices.popitem(last=False)
        return entry

    def forget_voice(self, t3_cond) -> None:
        with self._lock:
            self._voices.pop(id(t3_cond), None)

    def clear(self) -> None:
        """Drop voice prefixes and graphs (buffers stay)."""
        with self._lock:
            self._voices.clear()
            self._graphs.clear()

    # -- graphs ------------------------------------------------------------------------------------------------------
    def _bucket_len(self, n: int) -> int:
        return min(self.capacity, int(math.ceil(n / self.bucket) * self.bucket))

    def _reset_state(self) -> None:
        self.pos.zero_()
        self.step.zero_()
        self.tok.zero_()

    # -- weight layout ----------------------------------------------------------------------------------------------
    def _time_addmm(self, b, x, w, reps: int = 20) -> float:
        """GPU time (ms) of one addmm(b, x, w), from a captured graph of `reps` calls (launch gaps excluded)."""
        stream = side_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                torch.addmm(b, x, w)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(reps):
                torch.addmm(b, x, w)
        graph.replay()
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            e0.record()
            graph.replay()
            e1.record()
            e1.synchronize()
            best = min(best, e0.elapsed_time(e1) / reps)
        del graph
        return best

    def _tune_layouts(self) -> None:
        """CUDA: for each GPT-2 weight role, keep the storage order whose single-row addmm (the decode GEMV) runs
        faster on this GPU: Conv1D's (in, out) row-major, or (out, in) row-major seen through a transposed view.
        The parameters keep their shape and values (upstream's Conv1D works with either); done once per instance."""
        if (self.device.type != "cuda" or self.stats.get("layouts") is not None or not self.tune_layouts
                or self._kernels == "triton"):
            return
        roles = {"attn": ("attn_w", "attn_b"), "proj": ("proj_w", "proj_b"), "fc": ("fc_w", "fc_b"),
                 "mproj": ("mproj_w", "mproj_b")}
        chosen = {}
        try:
            with torch.inference_mode():
                for role, (wn, bn) in roles.items():
                    w, b = getattr(self.layers[0], wn), getattr(self.layers[0], bn)
                    x = torch.randn(1, w.shape[0], device=self.device, dtype=self.dtype)
                    alt = w.detach().t().contiguous().t() if w.is_contiguous() else w.detach().contiguous()
                    t_cur, t_alt = self._time_addmm(b, x, w), self._time_addmm(b, x, alt)
                    del alt
                    flip = t_alt < 0.9 * t_cur
                    chosen[role] = {"us_cur": round(1000 * t_cur, 2), "us_alt": round(1000 * t_alt, 2),
                                    "flipped": flip, "row_major_in_out": w.is_contiguous() != flip}
            # parameters must stay normal tensors (not inference tensors): later in-place loads must work
            with torch.inference_mode(False), torch.no_grad():
                for role, (wn, _) in roles.items():
                    if not chosen[role]["flipped"]:
                        continue
                    for L in self.layers:
                        p = getattr(L, wn)
                        p.data = p.data.t().contiguous().t() if p.is_contiguous() else p.data.contiguous()
            torch.cuda.synchronize(self.device)
        except Exception as exc:  # timing is an optimisation only
            chosen["error"] = f"{type(exc).__name__}: {exc}"
        self.stats["layouts"] = chosen
        self._graphs.clear()
        self._weights_fp = self._weight_fingerprint()

    def _set_out_in_layout(self) -> None:
        """Store every block weight as (out, in) row-major, seen through a transposed view (shape and values
        unchanged; upstream's Conv1D works either way). The Triton kernels read whole weight rows."""
        with torch.inference_mode(False), torch.no_grad():
            for L in self.layers:
                for wn in ("attn_w", "proj_w", "fc_w", "mproj_w"):
                    p = getattr(L, wn)
                    if not p.t().is_contiguous():
                        p.data = p.data.t().contiguous().t()
        self._graphs.clear()
        self._weights_fp = self._weight_fingerprint()

    def _time_graph(self, n: int, kernels: str, reps: int = 20) -> float:
        """GPU ms of one greedy decode step with these kernels (captured, replayed)."""
        stream = side_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), _sdpa_backends(cudnn=True):
            for _ in range(2):
                self._reset_state()
                self._decode_step(n, "greedy", True, None, kernels)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with _sdpa_backends(cudnn=True), torch.cuda.graph(graph, stream=stream):
            self._decode_step(n, "greedy", True, None, kernels)
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        best = float("inf")
        for _ in range(3):
            self.pos.fill_(n // 2)
            self.step.fill_(1)
            e0.record()
            for _ in range(reps):
                graph.replay()
            e1.record()
            e1.synchronize()
            best = min(best, e0.elapsed_time(e1) / reps)
        del graph
        self._reset_state()
        return best

    def _pick_kernels(self) -> None:
        """Choose the decode step's kernels once (CUDA graphs only): the Triton kernels if they are available,
        agree with the PyTorch ops on the real weights (same state, one step) and, for 'auto', run faster."""
        if self._kernels is not None:
            return
        choice, info = "torch", {}
        try:
            from . import turbo_fast_kernels as tk
            if self.kernels_pref != "torch" and self.device.type == "cuda" and tk.available():
                self._set_out_in_layout()
                n = self._bucket_len(min(self.capacity, 2 * self.bucket))
                with torch.inference_mode():
                    self._reset_state()
                    self.tok.fill_(self.start_token)
                    self.pos.fill_(n // 2)
                    ref = self._forward_logits(n, True, None, "torch").float()
                    self.pos.fill_(n // 2)
                    got = self._forward_logits(n, True, None, "triton").float()
                    err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
                    same_top = bool(torch.equal(got.argmax(-1), ref.argmax(-1)))
                    info.update(rel_err=err, same_argmax=same_top)
                    tol = 1e-4 if self.dtype == torch.float32 else 3e-2
                    if err <= tol and math.isfinite(err):
                        if self.kernels_pref == "triton":
                            choice = "triton"
                        else:
                            t_torch, t_triton = self._time_graph(n, "torch"), self._time_graph(n, "triton")
                            info.update(step_ms_torch=round(t_torch, 4), step_ms_triton=round(t_triton, 4))
                            choice = "triton" if t_triton < 0.97 * t_torch else "torch"
                    else:
                        info["rejected"] = f"relative error {err:.2e} > {tol:.0e}"
                    self._reset_state()
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # an optimisation only: PyTorch ops always work
            info["error"] = f"{type(exc).__name__}: {exc}"[:400]
            choice = "torch"
        info["chosen"] = choice
        self._kernels = choice
        self.stats["kernels"] = info
        self._graphs.clear()

    def _capture(self, n: int, mode: str):
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        kernels = self._kernels or "torch"
        glue = self._glue_fn
        if self.use_compile and glue is _glue and kernels == "torch":
            glue = torch.compile(_glue, dynamic=False, fullgraph=True)
            self._glue_fn = glue
        stream = side_stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), _sdpa_backends(cudnn=True):
            for _ in range(2):
                self._reset_state()
                self._decode_step(n, mode, True, glue, kernels)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self._reset_state()
        graph = torch.cuda.CUDAGraph()
        with _sdpa_backends(cudnn=True), torch.cuda.graph(graph, pool=self._pool, stream=stream):
            self._decode_step(n, mode, True, glue, kernels)
        torch.cuda.synchronize(self.device)
        self._reset_state()
        return graph

    def _ensure_graphs(self, n_min: int, n_max: int, s: SamplingSettings) -> None:
        """Capture the graphs for attention lengths n_min..n_max (their buckets) and these settings' flavour.
        On failure: without compile; for sampling, with top-k instead of sort; then eager. Each failure is logged
        and kept in `info()['graph_failures']`."""
        if not self.use_graphs:
            return
        lengths = sorted({self._bucket_len(b) for b in range(self._bucket_len(max(1, n_min)),
                                                             n_max + self.bucket, self.bucket)})
        for n in lengths:
            while self.use_graphs and (n, self._mode(s)) not in self._graphs:
                mode = self._mode(s)
                t0 = time.perf_counter()
                try:
                    with torch.inference_mode():
                        self._graphs[(n, mode)] = self._capture(n, mode)
                    self.stats["capture_s"] = self.stats.get("capture_s", 0.0) + time.perf_counter() - t0
                except Exception as exc:
                    msg = f"{mode}{' compiled' if self.use_compile else ''}: {type(exc).__name__}: {exc}"
                    self._graph_failures.append(msg[:600])
                    self._graphs = {k: g for k, g in self._graphs.items() if k[1] != mode}
                    try:
                        torch.cuda.synchronize(self.device)
                    except Exception:
                        pass
                    if self._kernels == "triton":
                        logger.warning("FastT3: CUDA graph capture with Triton kernels failed (%s); PyTorch ops", msg)
                        self._kernels = "torch"
                        self.stats.setdefault("kernels", {})["capture_error"] = msg[:300]
                        self._graphs.clear()
                    elif self.use_compile:
                        logger.warning("FastT3: compiled CUDA graph capture failed (%s); without compile", msg)
                        self.use_compile = False
                        self._glue_fn = _glue
                        self._graphs.clear()
                    elif mode == "sort":
                        logger.warning("FastT3: CUDA graph capture failed (%s); sampling with top-k", msg)
                        self._sampler = "topk"
                    else:
                        logger.warning("FastT3: CUDA graph capture failed (%s); running eager", msg)
                        self.use_graphs = False
                        self._graphs.clear()
                        return
                    return self._ensure_graphs(n_min, n_max, s)  # again, from the first length

    def warmup(self, t3_cond=None, text_len: int = 64, max_new_tokens: int = 1000,
               settings: Tuple[Any, ...] = (None, "greedy")) -> Dict[str, Any]:
        """Allocate buffers for `text_len` text tokens and `max_new_tokens`, capture the graphs for each of
        `settings` (None = upstream's defaults, "greedy" = top_k 1) and, with `t3_cond`, prefill that voice.
        Returns timings. Optional: everything happens lazily on the first request otherwise."""
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
                self._ensure_graphs(lc + 2, n_max, s)
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
            ev0 = torch.cuda.Event(enable_timing=True)
            ev0.record()
        N = self.check_every
        checks = set(range(N, total, N))
        if first_chunk:
            checks.add(int(first_chunk))
        checks.add(total)
        ends = sorted(c for c in checks if 1 <= c <= total)
        # On CUDA the next chunk is queued before the host looks at the current one (one chunk ahead), so the GPU
        # never waits for the host's stop-token check; what runs past the stop token is discarded.
        lookahead = 1 if cuda else 0
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
                ev = torch.cuda.Event(enable_timing=True)
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

    # -- checks ----------------------------------------------------------------------------------------------------
    def self_check(self, t3_cond, text_tokens, n_tokens: int = 48) -> Dict[str, Any]:
        """Greedy tokens of upstream `t3.inference_turbo` vs this path (at most n_tokens); {'ok', 'n', 'match'}."""
        with self._lock, torch.inference_mode():
            cond = cast_cond(t3_cond, self.dtype, self.device)
            ref = self.t3.inference_turbo(cond, text_tokens.to(self.device), temperature=1.0, top_k=1, top_p=1.0,
                                          repetition_penalty=1.0, max_gen_len=max(0, n_tokens - 1))
        got = self.generate(t3_cond, text_tokens, SamplingSettings(1.0, 1, 1.0, 1.0), max_new_tokens=n_tokens - 1)
        ref_l, got_l = ref[0].tolist(), got[0].tolist()
        match = 0
        for a, b in zip(ref_l, got_l):
            if a != b:
                break
            match += 1
        return {"ok": ref_l == got_l, "n": len(ref_l), "n_fast": len(got_l), "match": match}

    def info(self) -> Dict[str, Any]:
        return {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                "cuda_graphs": self.use_graphs, "compile": self.use_compile, "graphs": len(self._graphs),
                "graph_failures": list(self._graph_failures), "capacity": self.capacity, "sampler": self._sampler,
                "kernels": self._kernels, "kernel_check": self.stats.get("kernels"),
                "voices": len(self._voices), "check_every": self.check_every,
                "kv_mb": round(self.kv.numel() * self.kv.element_size() / 2**20, 1),
                "voice_mb": round(sum(v.kv.numel() * v.kv.element_size() for v in self._voices.values()) / 2**20, 1)}
