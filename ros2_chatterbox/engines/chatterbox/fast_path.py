"""Choosing T3's decode loop at load: fast_t3.FastT3 when the parameter fast_path asks for it, the model is supported
and three self-checks pass; otherwise upstream's reference loop (tokens.TokenSampler).

    1. greedy equality   SELF_CHECK_TOKENS greedy tokens equal upstream's own loop (stop held down for the check)
    2. same seed         two seeded sampling runs give the same tokens, with other random draws in between
    3. speaks the same   on CUDA, with the built-in voice: the same seed twice through the engine, the same audio

Anything short of the fast path while it was asked for is a fallback, and a fallback is loud: a warning in the
configure log and `FastPathStatus.fallback` / `.warning` in the engine's status (diagnostics, health, doctor).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any, Callable, ContextManager, Optional, Tuple

import numpy as np

from ...settings import GenerationSettings
from ...status import FastPathStatus
from .tokens import FastTokenSource

log = logging.getLogger(__name__)

LOOKAHEAD_TOKENS = 8      # T3 tokens queued ahead (48 measured: first audio +50 ms, end to end no better)
SELF_CHECK_TOKENS = 64    # greedy tokens compared with upstream at load
CHECK_TEXT = "The quick brown fox jumps over the lazy dog."
SPEAK_CHECK_TEXTS = ("Hello there, this is a quick check.", "Hello there [laugh], robot.")
CHECK_SEED = 4321

# speak(fast, text, settings) -> audio: one piece spoken with the built-in voice through the engine's streaming
Speak = Callable[[Any, str, GenerationSettings], np.ndarray]


def fell_back(reason: str) -> FastPathStatus:
    """The fast path was asked for and does not run normally: logged as a warning, never silent."""
    log.warning("Chatterbox Turbo: the fast path was asked for but is not running normally: %s", reason)
    return FastPathStatus(requested=True, fallback=True, reason=reason)


def select(model, requested: bool, *, lock: ContextManager, max_voices: int, t3_cond: Callable[[], Any],
           text_tokens: Callable[[str], Any], speak: Optional[Speak]) -> Tuple[Optional[Any], FastPathStatus]:
    """(FastT3 or None, its status) for a loaded model. `t3_cond()`: a prepared T3 conditioning for the checks;
    `text_tokens(text)`: the engine's tokenizer; `speak`: the third check (None: no built-in voice to speak with)."""
    if not requested:
        return None, FastPathStatus(reason="off (parameter fast_path)")
    try:
        from ..fast_t3 import FastT3
    except Exception as exc:  # noqa: BLE001 - the reference loop always works
        return None, fell_back(f"unavailable ({type(exc).__name__}: {exc}); using the reference loop")
    try:
        ok, why = FastT3.supported(model.t3)
        if not ok:
            return None, fell_back(f"unsupported: {why}; using the reference loop")
        fast = FastT3(model.t3, max_voices=max_voices, lookahead_tokens=LOOKAHEAD_TOKENS)
        cond, text = t3_cond(), text_tokens(CHECK_TEXT)
        check = fast.self_check(cond, text, n_tokens=SELF_CHECK_TOKENS)
        fast.clear()
        if not check.get("ok"):
            return None, fell_back(f"greedy equality check against upstream failed ({check}); using the reference "
                                   f"loop")
        reproducible = same_seed_same_tokens(fast, cond, text, lock) and speaks_the_same(fast, speak)
        fast.clear()
        if not reproducible:
            return None, fell_back("sampling with a fixed seed was not reproducible (the seed contract); using the "
                                   "reference loop")
        if fast.device.type == "cuda" and not fast.use_graphs:
            failures = "; ".join(fast.info().get("graph_failures", []))[:400]
            return fast, replace(fell_back(f"active WITHOUT CUDA graphs (capture failed: {failures or 'unknown'}): "
                                           f"several times slower than it should be"), active=True)
        agreed = (f"{check.get('n')} tokens equal" if "diverged_at" not in check else
                  f"{check['match']} tokens equal, then a rounding tie (margin {check['margin']})")
        return fast, FastPathStatus(requested=True, active=True, cuda_graphs=bool(fast.use_graphs),
                                    reason=f"active (greedy check: {agreed}; seeded sampling reproducible)")
    except Exception as exc:  # noqa: BLE001
        return None, fell_back(f"failed to start ({type(exc).__name__}: {str(exc)[:200]}); using the reference loop")


def same_seed_same_tokens(fast, cond, text, lock: ContextManager) -> bool:
    """Same seed, same tokens: two sampled runs with other random draws in between (as decoding does). The
    process-wide RNG is left as it was."""
    import torch
    dev = torch.device(fast.device)
    runs = []
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        for run in range(2):
            source = FastTokenSource(lock, fast, cond, text, GenerationSettings(seed=CHECK_SEED), CHECK_SEED, 48, 8)
            try:
                while not source.done and source.count < source.cap:
                    source.run(until=source.count + 8, cancel=threading.Event())
                    other = torch.Generator(device=fast.device).manual_seed(run + 7)
                    torch.randn(64, generator=other, device=fast.device)
                    torch.randn(64, device=fast.device)
            finally:
                source.close()
            runs.append(source.valid().tolist())
    return runs[0] == runs[1]


def speaks_the_same(fast, speak: Optional[Speak]) -> bool:
    """The same seed twice through the engine (decoding interleaved) gives the same audio. On the CPU the token
    check already compares the exact same sampling; without a built-in voice only the token check runs."""
    if speak is None or fast.device.type != "cuda":
        return True
    settings = GenerationSettings(seed=CHECK_SEED, watermark=False)
    for text in SPEAK_CHECK_TEXTS:
        first, second = speak(fast, text, settings), speak(fast, text, settings)
        if first.size != second.size or not np.array_equal(first, second):
            return False
    return True
