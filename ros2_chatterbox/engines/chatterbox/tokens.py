"""Speech-token sources for one piece of text, resumable so that audio can be decoded while T3 samples:
`TokenSampler` (upstream's `T3.inference_turbo` loop with upstream's logits processors) and `FastTokenSource`
(the same interface over fast_t3.FastT3.stream_tokens). Both draw from a private generator seeded per request, and
hold `lock` (the engine's: one model, several threads) while they run the model.
"""
from __future__ import annotations

import threading
from typing import Any, ContextManager, List

from ...settings import GenerationSettings

SPEECH_VOCAB = 6561           # valid S3 codes; 6561/6562 are T3's start/stop tokens
MAX_SPEECH_TOKENS = 1000      # upstream's cap per generate() (~40 s); Turbo is unstable past ~25-30 s anyway


def mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from several integers (splitmix64 steps): different inputs, unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


class FastTokenSource:
    """The same interface as TokenSampler, backed by fast_t3.FastT3.stream_tokens."""

    def __init__(self, lock: ContextManager, fast, t3_cond, text_tokens, settings: GenerationSettings,
                 seed: int, cap: int, first_chunk: int):
        import torch
        self.lock = lock
        self.cap = max(1, int(cap))
        generator = torch.Generator(device=fast.device).manual_seed(mix_seed(seed, 1))
        self._it = fast.stream_tokens(t3_cond, text_tokens, settings, generator=generator,
                                      max_new_tokens=self.cap - 1, first_chunk=first_chunk if first_chunk > 0 else None)
        self._chunks: List[Any] = []
        self.count = 0
        self.done = False

    def run(self, until: int, cancel: threading.Event) -> None:
        until = min(until, self.cap)
        with self.lock:
            while not self.done and self.count < until:
                if cancel.is_set():
                    return
                try:
                    chunk = next(self._it)
                except StopIteration:
                    self.done = True
                    return
                self._chunks.append(chunk)
                self.count += int(chunk.numel())

    def valid(self):
        import torch
        if not self._chunks:
            return torch.zeros(0, dtype=torch.long)
        tokens = torch.cat(self._chunks)
        return tokens[tokens < SPEECH_VOCAB]

    def close(self) -> None:
        self._it.close()  # releases FastT3's lock when the piece ends early (cancel, error)


class TokenSampler:
    """T3's Turbo sampling loop (upstream `T3.inference_turbo`), resumable so that audio can be decoded meanwhile.

    Same logits processors in the same order as upstream; sampling draws from a private generator.
    """

    def __init__(self, lock: ContextManager, model, t3_cond, text_tokens, settings: GenerationSettings,
                 seed: int, cap: int):
        import torch
        from ..fast_t3 import sampling
        self.lock = lock
        self.t3 = model.t3
        self.cond = t3_cond
        self.text_tokens = text_tokens
        self.cap = max(1, int(cap))
        vocab = int(self.t3.speech_head.out_features)
        self.params = sampling.params_tensor(settings, vocab, self.t3.device)   # the processors' settings
        self.seen = torch.zeros(1, vocab, dtype=torch.bool, device=self.t3.device)  # what the penalty applies to
        self.generator = torch.Generator(device=self.t3.device).manual_seed(mix_seed(seed, 1))
        self.stop = int(self.t3.hp.stop_speech_token)
        self.tokens: List[Any] = []     # (1, 1) tensors
        self.past = None
        self.current = None
        self.done = False

    @property
    def count(self) -> int:
        return len(self.tokens)

    def _sample(self, input_ids, logits):
        """A draw from the processors' distribution (fast_t3.sampling.process: upstream's processors, in its order)
        with torch.multinomial, as upstream; the repetition penalty applies to `input_ids`."""
        import torch
        from ..fast_t3.sampling import process
        self.seen.zero_()
        self.seen[0, input_ids[0]] = True
        processed = process(logits, self.seen, self.params)
        if bool(torch.all(processed == -float("inf"))):
            return None
        probs = torch.softmax(processed, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator)

    def run(self, until: int, cancel: threading.Event) -> None:
        """Sample until `until` tokens exist, the stop token comes, the cap is reached or cancel is set."""
        import torch
        until = min(until, self.cap)
        with self.lock, torch.inference_mode():
            t3 = self.t3
            if self.past is None and not self.done:
                start = t3.hp.start_speech_token * torch.ones_like(self.text_tokens[:, :1])
                embeds, _ = t3.prepare_input_embeds(t3_cond=self.cond, text_tokens=self.text_tokens,
                                                    speech_tokens=start, cfg_weight=0.0)
                out = t3.tfmr(inputs_embeds=embeds, use_cache=True)
                self.past = out.past_key_values
                logits = t3.speech_head(out[0][:, -1:])
                first = self._sample(start, logits[:, -1, :])
                if first is None:
                    self._finish()
                    return
                # as upstream: the first token is kept without looking for the stop token (a stop token there
                # is fed back and sampling goes on; valid() leaves it out of the audio)
                self.tokens.append(first)
                self.current = first
            while not self.done and len(self.tokens) < until:
                if cancel.is_set():
                    return
                out = t3.tfmr(inputs_embeds=t3.speech_emb(self.current), past_key_values=self.past, use_cache=True)
                self.past = out.past_key_values
                logits = t3.speech_head(out[0])
                if not self._accept(self._sample(torch.cat(self.tokens, dim=1), logits[:, -1, :])):
                    return
            if len(self.tokens) >= self.cap:
                self._finish()

    def _accept(self, token) -> bool:
        """Record a sampled token; False (and done) when sampling found nothing or the stop token came."""
        if token is None:
            self._finish()
            return False
        self.tokens.append(token)
        self.current = token
        if int(token) == self.stop:
            self._finish()
            return False
        return True

    def _finish(self) -> None:
        self.done = True
        self.past = None  # free the KV cache now, not when the generator is collected

    def close(self) -> None:
        self.past = None

    def valid(self):
        """The speech tokens so far, without the stop token and anything outside the S3 codebook (1-D)."""
        import torch
        if not self.tokens:
            return torch.zeros(0, dtype=torch.long, device=self.t3.device)
        all_tokens = torch.cat(self.tokens, dim=1)[0]
        return all_tokens[all_tokens < SPEECH_VOCAB]

