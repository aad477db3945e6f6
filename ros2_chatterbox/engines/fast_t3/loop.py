"""One request of FastT3 (generator.py), as plain functions: `_start` (the voice prefix's keys/values copied in, the
text and start-of-speech token prefilled, the first token drawn as upstream draws it) and `run`, the decode loop:
queue `check_every` steps (graph replays, or eager steps) and the copy of their tokens to the host, look at the
previous chunk's tokens for the stop token while the GPU goes on, yield what comes before it.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Deque, Iterator, List, Optional, Tuple

import torch

from . import sampling
from .step import cond_embeds, decode_step, head, prefill, sdpa_backends


def chunk_ends(total: int, every: int, first: Optional[int]) -> List[int]:
    """Where the host looks at the tokens: every `every` tokens, at `first`, and at `total`."""
    ends = set(range(every, total, every)) | {total} | ({int(first)} if first else set())
    return sorted(e for e in ends if 1 <= e <= total)


def run(fast, t3_cond, text_tokens, s, generator, max_new: int, first_chunk: Optional[int]
        ) -> Iterator[torch.Tensor]:
    """FastT3.stream_tokens's loop (under its lock): the first token, then chunks of tokens up to the stop."""
    # inference_mode is entered per block, never across a yield (it would leak into the caller's code)
    t_start, total, greedy = time.perf_counter(), 1 + max_new, sampling.is_greedy(s)
    with torch.inference_mode():
        P = _start(fast, t3_cond, text_tokens, s, generator, total)
    cuda = fast.device.type == "cuda"
    ev0 = _event(cuda)
    ends = chunk_ends(total, fast.check_every, first_chunk)
    # on CUDA the next chunks are queued before the host looks at this one, so the GPU never waits for the
    # stop-token check (and goes on with T3 while the caller decodes audio); what runs past the stop is dropped
    ahead = -(-fast.lookahead_tokens // fast.check_every) if cuda else 0
    queue: Deque[Tuple[int, Any]] = deque()
    emitted, decoded, queued, last_ev = 0, 1, 0, None
    for k in range(len(ends)):
        with torch.inference_mode(), sdpa_backends(cudnn=False):
            while queued < len(ends) and queued <= k + ahead:
                queue.append(_enqueue(fast, decoded, ends[queued], P, greedy, generator))
                decoded, queued = ends[queued], queued + 1
            end, ev = queue.popleft()
            if ev is not None:
                ev.synchronize()                # the only host wait: every check_every tokens, one chunk behind
                last_ev = ev
            cut, stop = _cut(fast, emitted, end, total)
            chunk = fast.state.out[emitted:cut].clone() if cut > emitted else None
        if chunk is not None:
            if not emitted:
                fast.stats["first_chunk_s"] = time.perf_counter() - t_start
            emitted = cut
            yield chunk
        if stop:
            break
    fast.stats.update(tokens=emitted, steps=decoded, prefill_len=P, mode="greedy" if greedy else "sampled",
                      sampler=fast.sampler, seconds=time.perf_counter() - t_start, graphs=fast.use_graphs)
    if ev0 is not None and last_ev is not None and end > 1:
        # GPU time from the first token to the last checked one, per decoded token (prefill excluded)
        fast.stats["decode_ms_per_token"] = ev0.elapsed_time(last_ev) / (end - 1)


def _enqueue(fast, i: int, end: int, P: int, greedy: bool, generator) -> Tuple[int, Any]:
    """Queue steps i..end-1 (graph replays, or eager steps) and the copy of their tokens to the host."""
    st, w = fast.state, fast.weights
    n = fast.bucket_len(P + end - 1)
    graph = fast.graphs.get((n, greedy))
    for j in range(i, end):
        if not greedy and j % fast.check_every == 0:
            st.fill_noise(generator)
        if graph is not None:
            graph.replay()
        elif fast.hooks.masked_eager:
            decode_step(w, st, n, greedy, True, *fast.choice())
        else:
            decode_step(w, st, P + j, greedy, False)   # exact length, as upstream
    ev = None
    if st.out_host is not None:
        lo = 0 if i == 1 else i
        st.out_host[lo:end].copy_(st.out[lo:end], non_blocking=True)
        ev = _event(True)
    return end, ev


def _cut(fast, emitted: int, end: int, total: int) -> Tuple[int, bool]:
    """Where this chunk ends: before the first stop token after the first token (a stop token as the very first
    token does not stop, as upstream), else at `end` (and a final stop token is dropped, as upstream)."""
    st = fast.state
    host = (st.out_host if st.out_host is not None else st.out)[emitted:end]
    lo = 1 if emitted == 0 else 0
    hits = (host[lo:] == fast.stop_token).nonzero()
    if hits.numel():
        return emitted + lo + int(hits[0, 0]), True
    if end == total and int(host[-1]) == fast.stop_token:
        return end - 1, False
    return end, False


def _start(fast, t3_cond, text_tokens, s, generator, total: int) -> int:
    """Prefill and the first token; leaves the state ready for step 1. Returns the prefill length."""
    fast.check_weights()
    w, t3, greedy = fast.weights, fast.t3, sampling.is_greedy(s)
    voice = fast.voice_prefix(t3_cond) if fast.prefix_cache else None
    cond = None if voice is not None else cond_embeds(w, t3_cond)
    P = (voice.length if voice is not None else int(cond.shape[0])) + int(text_tokens.shape[1]) + 1
    if P + total - 1 > w.max_positions:
        raise ValueError(f"{P + total - 1} positions exceed GPT-2's {w.max_positions}")
    fast.prepare(P + 1, P + total - 1, total, greedy)
    st = fast.state
    st.set_sampling(s)
    start = torch.full((1, 1), fast.start_token, dtype=torch.long, device=fast.device)
    embeds = [t3.text_emb(text_tokens)[0].to(w.dtype), t3.speech_emb(start)[0].to(w.dtype)]
    with sdpa_backends(cudnn=False):
        if voice is not None:
            st.kv[:, :, :, :voice.length].copy_(voice.kv)
            h = prefill(w, torch.cat(embeds), st.kv, voice.length)
        else:
            h = prefill(w, torch.cat([cond] + embeds), st.kv, 0)
    logits = head(w, h)
    if greedy:
        first = torch.argmax(logits, dim=-1)
    else:  # upstream passes the start-of-speech token as input_ids: only it is penalised here
        st.fill_noise(generator)
        st.seen.zero_()
        st.seen.index_fill_(1, start.view(1), True)
        first = sampling.draw(sampling.process(logits, st.seen, st.params), st.noise[0:1])
    st.start(first, P)
    return P


def _event(cuda: bool):
    """A recorded CUDA event the host sleeps on while it waits (None on CPU)."""
    if not cuda:
        return None
    ev = torch.cuda.Event(enable_timing=True, blocking=True)
    ev.record()
    return ev
