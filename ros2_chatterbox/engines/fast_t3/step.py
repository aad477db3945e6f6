"""One decode step as a function of the weights and the state, in gpt-fast's shape: `forward_logits` (embedding +
position, every GPT-2 block, ln_f, speech head; keys/values written at the state's position), `decode_step`
(forward, sampling, state update: what a CUDA graph records), and `prefill` (a run of positions, for the voice
prefix and the text). The block math is the same ops as HF GPT2Block / Conv1D.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .sampling import NEG_INF, draw, process
from .state import DecodeState
from .weights import Weights, cast_cond


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


def sdpa_backends(cudnn: bool):
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


def forward_logits(w: Weights, st: DecodeState, n: int, masked: bool, kernels: str = "torch",
                   attention: str = "sdpa"):
    """Logits (1, V) for token `st.tok` at position `st.pos`; writes its keys/values at `pos`.

    n: attention length (positions [0, n)); with `masked` the positions > pos are masked (graph buckets), else n
    must be pos + 1 (eager, exact length as upstream). kernels: "torch" (PyTorch ops, a block's tail fused with the
    next block's head by `_glue`) or "triton" (kernels.gemv; weights stored (out, in)). attention: "sdpa"
    (scaled_dot_product_attention) or "triton" (attention.decode_attention: positions after pos left out)."""
    D, H, Dh, eps = w.n_embd, w.n_head, w.head_dim, w.eps
    x = F.embedding(st.tok, w.speech_emb_w) + F.embedding(st.pos, w.wpe_w)
    mask = None
    if masked and attention == "sdpa":  # additive, built once per step in the model dtype (a bool mask is
        mask = torch.zeros(1, 1, 1, n, dtype=w.dtype, device=x.device).masked_fill_(  # converted in every call)
            (st.arange[:n] > st.pos).view(1, 1, 1, n), NEG_INF)

    def attend(i, qkv, written: bool = False):
        kv_l = st.kv[i] if written else st.write_kv(i, qkv[:, D:].view(2, H, 1, Dh))
        if attention == "triton":
            from .attention import decode_attention
            return decode_attention(qkv[:, :D], kv_l, st.pos, n)
        q = qkv[:, :D].view(1, H, 1, Dh)
        return F.scaled_dot_product_attention(q, kv_l[0:1, :, :n], kv_l[1:2, :, :n], attn_mask=mask).reshape(1, D)

    if kernels == "triton":
        from .kernels import gemv
        for i, L in enumerate(w.layers):  # the QKV kernel also writes the keys/values into the cache
            a = attend(i, gemv(x, L.attn_w.t(), L.attn_b, ln=(L.ln1_w, L.ln1_b, eps), kv=(st.kv[i], st.pos)), True)
            x = gemv(a, L.proj_w.t(), L.proj_b, res=x)
            m = gemv(x, L.fc_w.t(), L.fc_b, ln=(L.ln2_w, L.ln2_b, eps), act=True)
            x = gemv(m, L.mproj_w.t(), L.mproj_b, res=x)
        return gemv(x, w.head_wt.t(), w.head_b, ln=(w.lnf_w, w.lnf_b, eps))
    L0 = w.layers[0]
    qkv = _pre(x, L0.ln1_w, L0.ln1_b, L0.attn_w, L0.attn_b, eps)
    for i, L in enumerate(w.layers):
        a = attend(i, qkv)
        if i + 1 < w.n_layer:
            N = w.layers[i + 1]
            nxt = (N.ln1_w, N.ln1_b, N.attn_w, N.attn_b)
        else:
            nxt = (w.lnf_w, w.lnf_b, w.head_wt, w.head_b)
        x, qkv = _glue(x, a, L.proj_w, L.proj_b, L.ln2_w, L.ln2_b, L.fc_w, L.fc_b, L.mproj_w, L.mproj_b, *nxt, eps)
    return qkv


def decode_step(w: Weights, st: DecodeState, n: int, greedy: bool, masked: bool, kernels: str = "torch",
                sampler: str = "torch", attention: str = "sdpa") -> None:
    """One token: forward at `pos` (attention length n), then the draw (argmax when greedy, else the sampling
    processors and the noise row of this step) and the state update (out[step], tok, seen, pos + 1, step + 1).
    sampler: "torch" (sampling.py) or "triton" (sample_kernel.py: processors, draw and update in one kernel)."""
    logits = forward_logits(w, st, n, masked, kernels, attention)
    if sampler == "triton":
        from .sample_kernel import sample_step
        sample_step(logits, st.params, st.seen, st.noise, st.out, st.tok, st.pos, st.step, greedy)
        return
    tok = torch.argmax(logits, dim=-1) if greedy else draw(process(logits, st.seen, st.params), st.noise_row())
    st.update(tok)


def prefill(w: Weights, embeds, kv, p0: int):
    """Run T positions [p0, p0+T) through the blocks, writing their keys/values into kv; returns the last
    position's hidden state before ln_f (1, D)."""
    D, H, Dh, eps = w.n_embd, w.n_head, w.head_dim, w.eps
    T = embeds.shape[0]
    x = embeds + w.wpe_w[p0:p0 + T]
    n = p0 + T
    mask = None
    if p0:
        ar = torch.arange(n, device=x.device)
        mask = (ar[None, :] <= (p0 + torch.arange(T, device=x.device))[:, None]).view(1, 1, T, n)
    for i, L in enumerate(w.layers):
        kv_l = kv[i]
        qkv = _pre(x, L.ln1_w, L.ln1_b, L.attn_w, L.attn_b, eps)
        q = qkv[:, :D].view(T, H, Dh).transpose(0, 1).unsqueeze(0)
        kv_l[:, :, p0:n].copy_(qkv[:, D:].view(T, 2, H, Dh).permute(1, 2, 0, 3))
        k, v = kv_l[0:1, :, :n], kv_l[1:2, :, :n]
        a = F.scaled_dot_product_attention(q, k, v, is_causal=mask is None, attn_mask=mask)
        x = _post(x, a.transpose(1, 2).reshape(T, D), L.proj_w, L.proj_b, L.ln2_w, L.ln2_b, L.fc_w, L.fc_b,
                  L.mproj_w, L.mproj_b, eps)
    return x[-1:]


def head(w: Weights, h):
    """ln_f + speech head: logits (1, V)."""
    h = F.layer_norm(h, (w.n_embd,), w.lnf_w, w.lnf_b, w.eps)
    return torch.addmm(w.head_b, h, w.head_wt)


def cond_embeds(w: Weights, t3_cond):
    """T3.prepare_conditioning on a copy cast to the weights' dtype (upstream mutates the cond; we don't)."""
    t3 = w.t3
    c = cast_cond(t3_cond, w.dtype, w.device)
    if c.cond_prompt_speech_tokens is not None and c.cond_prompt_speech_emb is None:
        c.cond_prompt_speech_emb = t3.speech_emb(c.cond_prompt_speech_tokens)
    emb = t3.cond_enc(c)
    if emb.shape[0] != 1:
        raise ValueError("FastT3 supports batch size 1 only")
    return emb[0]
