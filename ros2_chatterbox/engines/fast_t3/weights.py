"""The T3 parameters a decode step reads, bound once (no copy): `Weights`, with a fingerprint that notices a moved
or cast model, and the storage orders the GEMVs may prefer. Also what FastT3 supports (`supported`) and two helpers
the engine uses (`cast_cond`, `release_text_head`).
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch

ROLES = ("attn_w", "proj_w", "fc_w", "mproj_w")  # the four matrices of a block, as _Layer names them


def supported(t3) -> Tuple[bool, str]:
    """(True, "") when `t3` is a Turbo T3 (GPT-2 backbone) that FastT3 reproduces exactly; else (False, reason)."""
    try:
        hp, cfg = t3.hp, t3.cfg
        if not getattr(t3, "is_gpt", False):
            return False, "backbone is not GPT-2 (only Chatterbox Turbo is supported)"
        if hp.input_pos_emb is not None:
            return False, f"input_pos_emb={hp.input_pos_emb!r} (Turbo has none)"
        if getattr(hp, "use_perceiver_resampler", False):
            return False, "perceiver resampler (Turbo has none)"
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
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


class Weights:
    """T3's parameters as a decode step reads them (views of the model's own tensors) and its shape."""

    def __init__(self, t3):
        self.t3 = t3
        cfg = t3.cfg
        self.n_layer, self.n_embd = int(cfg.n_layer), int(cfg.hidden_size)
        self.n_head = int(cfg.num_attention_heads)
        self.head_dim = self.n_embd // self.n_head
        self.eps = float(cfg.layer_norm_epsilon)
        self.vocab = int(t3.speech_head.out_features)
        self.max_positions = int(t3.tfmr.wpe.weight.shape[0])
        self.bind()

    def bind(self) -> None:
        t3 = self.t3
        self.layers = [_Layer(b) for b in t3.tfmr.h]
        self.wpe_w = t3.tfmr.wpe.weight
        self.lnf_w, self.lnf_b = t3.tfmr.ln_f.weight, t3.tfmr.ln_f.bias
        self.speech_emb_w = t3.speech_emb.weight
        self.head_wt = t3.speech_head.weight.t()
        self.head_b = t3.speech_head.bias
        self.dtype, self.device = self.head_b.dtype, self.head_b.device
        self.fingerprint = self.current_fingerprint()

    def current_fingerprint(self) -> Tuple:
        t3 = self.t3
        ps = [t3.speech_head.weight, t3.speech_emb.weight, t3.tfmr.wpe.weight, t3.tfmr.h[0].attn.c_attn.weight,
              t3.tfmr.h[-1].mlp.c_proj.weight, t3.tfmr.ln_f.weight]
        return tuple((p.data_ptr(), p.dtype, p.device) for p in ps)

    def changed(self) -> bool:
        return self.current_fingerprint() != self.fingerprint

    def step_bytes(self) -> int:
        """Bytes of parameters one decode step reads: every block, ln_f, the speech head, and one row each of the
        speech embedding and the position table."""
        n = sum(p.numel() * p.element_size() for L in self.layers for p in (getattr(L, s) for s in _Layer.__slots__))
        n += sum(p.numel() * p.element_size() for p in (self.lnf_w, self.lnf_b, self.head_wt, self.head_b))
        return int(n + (self.speech_emb_w[0].numel() + self.wpe_w[0].numel()) * self.head_b.element_size())

    def kv_bytes_per_position(self) -> int:
        return 2 * self.n_layer * self.n_embd * self.head_b.element_size()

    def flip(self, role: str) -> None:
        """Store `role`'s matrix in every block in the other row-major order, seen through a transposed view: shape
        and values unchanged (upstream's Conv1D works with either)."""
        with torch.inference_mode(False), torch.no_grad():
            for L in self.layers:
                p = getattr(L, role)
                p.data = p.data.t().contiguous().t() if p.is_contiguous() else p.data.contiguous()
        self.fingerprint = self.current_fingerprint()

    def set_out_in_layout(self) -> None:
        """Every block matrix stored (out, in) row-major (the Triton kernels read whole weight rows)."""
        with torch.inference_mode(False), torch.no_grad():
            for L in self.layers:
                for role in ROLES:
                    p = getattr(L, role)
                    if not p.t().is_contiguous():
                        p.data = p.data.t().contiguous().t()
        self.fingerprint = self.current_fingerprint()
