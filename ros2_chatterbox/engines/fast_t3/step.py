"""One GPT-2 block's math (the same ops as HF GPT2Block / Conv1D), prefill, the one-token decode step and the
static buffers it works in (KV cache for every layer in one tensor, token/position/step counters, sampling state).

`StepMixin` is a part of `FastT3` (generator.py): it expects the attributes FastT3.__init__ sets.
"""
from __future__ import annotations

import contextlib
import copy
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .sampling import NEG_INF, SamplingSettings


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


class StepMixin:
    """Buffers, prefill and the decode step of FastT3."""

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

    def _attend(self, q, kv_l, n: int, mask):
        k = kv_l[0:1, :, :n]
        v = kv_l[1:2, :, :n]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _forward_logits(self, n: int, masked: bool, glue: Optional[Callable] = None, kernels: str = "torch"):
        """Logits (1, V) for token `tok` at position `pos`; writes its keys/values at `pos`.

        n: attention length (positions [0, n)); with `masked` the positions > pos are masked (graph buckets),
        else n must be pos + 1 (eager, exact length as upstream). kernels: "torch" (PyTorch ops, `glue` fusing a
        block's tail with the next block's head) or "triton" (kernels.gemv; weights stored (out, in))."""
        D, H, Dh, eps = self.n_embd, self.n_head, self.head_dim, self.eps
        x = F.embedding(self.tok, self.speech_emb_w) + F.embedding(self.pos, self.wpe_w)
        mask = None
        if masked:  # additive, built once per step in the model dtype (a bool mask is converted in every call)
            mask = torch.zeros(1, 1, 1, n, dtype=self.dtype, device=self.device).masked_fill_(
                (self.arange[:n] > self.pos).view(1, 1, 1, n), NEG_INF)
        if kernels == "triton":
            from .kernels import gemv
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

