"""FastT3's load-time self-check: greedy tokens of upstream `T3.inference_turbo` against this path's, with the stop
token held down so that every checkpoint compares the full length; in half precision a divergence is accepted only
where upstream's own best two logits tie within rounding.

`FastT3.self_check` (generator.py) runs `self_check` under its lock.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

import torch

from ...settings import GenerationSettings
from .weights import cast_cond

GREEDY = GenerationSettings(temperature=1.0, top_k=1, top_p=1.0, min_p=0.0, repetition_penalty=1.0)


STOP_HOLD = -1.0e4   # the stop token's bias while the self-check runs (far below any logit, in any dtype)


@contextlib.contextmanager
def stop_held_down(t3, stop: int):
    """The stop token's bias set to STOP_HOLD in place (so every step reads it, captured graphs included), the
    exact old value restored on exit."""
    bias = t3.speech_head.bias
    with torch.inference_mode(False), torch.no_grad():
        saved = bias[stop].clone()
        bias[stop] = STOP_HOLD
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            bias[stop] = saved


def self_check(fast, t3_cond, text_tokens, n_tokens: int = 64, tie_tol: Optional[float] = None) -> Dict[str, Any]:
    """Greedy tokens of upstream `t3.inference_turbo` vs `fast`'s, `n_tokens` of each.

    The stop token is held down for the check's length (its bias set to `STOP_HOLD`, restored after), so every
    checkpoint compares `n_tokens` tokens: the tiny test checkpoint, whose raised stop bias makes stop the greedy
    choice, would otherwise compare one. In float32 every token must match. In half precision two correct
    implementations can pick different tokens where the best two logits tie within rounding; a divergence is
    accepted only there: upstream's own logits at that step (its HF forward over the common prefix) must put the two
    tokens within `tie_tol` x max|logit| (default 2e-2 for fp16/bf16).
    Returns {'ok', 'n', 'n_fast', 'match', and at a divergence 'diverged_at', 'margin'}."""
    n_tokens = max(2, int(n_tokens))
    dtype, t3 = fast.weights.dtype, fast.t3
    tol = tie_tol if tie_tol is not None else (0.0 if dtype == torch.float32 else 2e-2)
    with stop_held_down(t3, fast.stop_token):
        cond = cast_cond(t3_cond, dtype, fast.device)
        text_tokens = text_tokens.to(fast.device)
        with torch.inference_mode():
            ref = t3.inference_turbo(cond, text_tokens, temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0,
                                     max_gen_len=n_tokens - 1)
        got = fast.generate(t3_cond, text_tokens, GREEDY, max_new_tokens=n_tokens - 1)
        ref_l, got_l = ref[0].tolist(), got[0].tolist()
        match = 0
        for a, b in zip(ref_l, got_l):
            if a != b:
                break
            match += 1
        out: Dict[str, Any] = {"ok": ref_l == got_l and len(ref_l) == n_tokens, "n": len(ref_l),
                               "n_fast": len(got_l), "match": match}
        if not out["ok"] and match < min(len(ref_l), len(got_l)):
            margin = _upstream_margin(t3, fast.start_token, cond, text_tokens, ref_l[:match], ref_l[match],
                                      got_l[match])
            out.update(diverged_at=match, margin=round(margin, 6), ok=tol > 0 and margin <= tol)
    return out


def _upstream_margin(t3, start_token: int, cond, text_tokens, prefix: List[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| / max|logit| of upstream's own forward pass after `prefix` (its first step's input is
    the start-of-speech token, as in inference_turbo)."""
    with torch.inference_mode():
        speech = torch.tensor([[start_token] + list(prefix)], dtype=torch.long, device=text_tokens.device)
        embeds, _ = t3.prepare_input_embeds(t3_cond=cond, text_tokens=text_tokens, speech_tokens=speech,
                                            cfg_weight=0.0)
        hidden = t3.tfmr(inputs_embeds=embeds)[0]
        logits = t3.speech_head(hidden[:, -1]).float()[0]
        return float((logits[a] - logits[b]).abs() / logits.abs().max().clamp_min(1e-6))
