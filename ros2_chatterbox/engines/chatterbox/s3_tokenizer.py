"""The S3 speech tokenizer, loaded only while a new voice is conditioned.

S3Gen holds the S3 tokenizer (`s3gen.tokenizer`, "speech_tokenizer_v2_25hz": 123.7 M parameters, ~495 MB in float32)
only to turn a reference recording into speech tokens: S3Gen's prompt (upstream's `embed_ref`) and T3's prompt.
Synthesis never runs it; the built-in voice (conds.pt) and every cached voice carry their tokens. On a Jetson the CPU
and the GPU share one RAM, so keeping it anywhere, device or host, costs the robot half a gigabyte for nothing.

So the loader (models.load_local) puts an `OnDemandS3Tokenizer` in its place: no weights, only where they are. A new
voice is conditioned (voice_cache.compute_conds) with `speech_prompts`, which reads the tokenizer's tensors from
s3gen_meanflow.safetensors onto the CPU in float32, runs it, and drops it (then trims the host heap). It runs on the
CPU so that conditioning allocates nothing on the device after configure: the engine's static memory plan holds the
device's working memory, and giving a device tokenizer back (emptying the CUDA cache) would free the plan too.

Cost, for each voice that is not cached yet: the file's tokenizer part is read (~495 MB at full size) and the
tokenizer runs twice on the CPU (the first 10 s and 15 s of the reference). Full size, a 16 s reference, 2 CPU
threads of a shared 2-core x86 VM (2026-12-03): read 0.5 s, runs 3.7 + 2.5 s, whole conditioning 8.8 s; host RSS
+720 MiB while it runs and back (+1 MiB) after it. Tiny checkpoint: 0.46 s.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import traceback
import weakref
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from ...engine import EngineError
from . import weights
from .device import trim_host_memory

log = logging.getLogger(__name__)

PREFIX = "tokenizer."  # the tokenizer's tensors in s3gen_meanflow.safetensors (S3Gen's state dict)
S3_SR = 16_000         # the tokenizer's sample rate (chatterbox.models.s3tokenizer.S3_SR)


class OnDemandS3Tokenizer(torch.nn.Module):
    """What `s3gen.tokenizer` is in a model from models.load_local: no weights, the class of the tokenizer the loader
    built (upstream's S3Tokenizer, or a tiny checkpoint's) and the file that holds its tensors. Calling it fails with
    a message saying where the tokenizer went; `speech_prompts` loads the real one."""

    def __init__(self, build: Callable[[], Any], path: Path):
        super().__init__()
        self.build = build
        self.path = Path(path)
        # upstream's S3Gen.device is `next(self.tokenizer.parameters()).device`: a zero-size buffer answers it, moves
        # with s3gen.to(device), holds no memory and is not part of the state dict
        self.register_buffer("device_marker", torch.empty(0), persistent=False)

    def extra_repr(self) -> str:
        return f"on demand from {self.path}"

    def parameters(self, recurse: bool = True) -> Iterator[Any]:
        yield self.device_marker

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"the S3 tokenizer is not kept in memory: it is read from {self.path} only while a voice "
                           f"is conditioned (ros2_chatterbox.engines.chatterbox.s3_tokenizer.speech_prompts)")

    def load(self):
        """The tokenizer, read from the file onto the CPU in float32; EngineError naming the file when it cannot be."""
        try:
            return load_s3_tokenizer(self.path, self.build)
        except Exception as exc:  # noqa: BLE001 - any damage: one message naming the file
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
        # raised outside the except block: the error keeps no frame that holds a partly loaded tokenizer
        raise EngineError(f"the S3 tokenizer in '{self.path}' cannot be read to condition a new voice ({reason}); "
                          f"the built-in voice and the voices already conditioned still speak. Fetch the checkpoint "
                          f"again (its s3gen_meanflow.safetensors is damaged)")


def load_s3_tokenizer(path: Path, build: Optional[Callable[[], Any]] = None):
    """The S3 tokenizer built by `build` (default: upstream's S3Tokenizer("speech_tokenizer_v2_25hz")) with the
    `tokenizer.*` tensors of S3Gen's file `path`, on the CPU, float32, in eval mode; strict: every tensor must be there
    with its shape. Read with the loader's own machinery (no random init, one tensor at a time, no file mapping)."""
    if build is None:
        from chatterbox.models.s3tokenizer import S3Tokenizer as build
    with weights.no_random_init():
        tokenizer = build()
    weights.load_weights(tokenizer, path, "cpu", dtype=torch.float32, prefix=PREFIX)
    return tokenizer.eval()


def check_in_file(tokenizer, path: Path) -> None:
    """ValueError naming the file unless each tensor of `tokenizer` is in S3Gen's file `path` under PREFIX with its
    shape (the header only; the loader refuses a file shorter than its header says). At configure, so that a file
    whose tokenizer part is missing fails there, as it did while the tokenizer was loaded with the rest."""
    header = weights.safetensors_header(path)
    wrong = []
    for name, t in tokenizer.state_dict().items():
        entry = header.get(PREFIX + name)
        if not isinstance(entry, dict):
            wrong.append(f"{PREFIX}{name} is missing")
        elif [int(d) for d in entry.get("shape", ())] != list(t.shape):
            wrong.append(f"{PREFIX}{name} is {entry.get('shape')}, not {list(t.shape)}")
    if wrong:
        more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
        raise ValueError(f"{Path(path).name} does not hold the S3 tokenizer this model needs "
                         f"({'; '.join(wrong[:3])}{more})")


@contextlib.contextmanager
def loaded(s3gen) -> Iterator[Any]:
    """The S3 tokenizer for the duration of the block. A model that keeps it (upstream's from_local) lends its own.
    Otherwise it is read from the file (EngineError naming the file when it cannot be), and what the block gets is a
    weak proxy: when the block ends the tokenizer is gone, whatever the block kept, and the heap is trimmed."""
    held = s3gen.tokenizer
    if not isinstance(held, OnDemandS3Tokenizer):
        yield held
        return
    tokenizer = held.load()
    gone = weakref.ref(tokenizer)
    try:
        yield weakref.proxy(tokenizer)
    except BaseException as exc:
        traceback.clear_frames(exc.__traceback__)  # frames that ran it (its `self`) would keep it alive
        raise
    finally:
        del tokenizer
        if gone() is not None:  # held in a reference cycle
            gc.collect()
        trim_host_memory()


def embed_reference(s3gen, ref_wav, ref_sr: int, device, tokenizer) -> Dict[str, Any]:
    """Upstream's S3Gen.embed_ref (chatterbox 0.1.7 s3gen.py), step by step, with `tokenizer` (anything called as
    `tokenizer(wav_16k) -> (tokens, lengths)`) instead of `s3gen.tokenizer`: S3Gen's reference dict (prompt_token,
    prompt_token_len, prompt_feat, prompt_feat_len, embedding), every tensor on `device`. The mel, the resamplers and
    the speaker encoder are s3gen's, as upstream's."""
    from chatterbox.models.s3gen.s3gen import S3GEN_SR, get_resampler
    if isinstance(ref_wav, np.ndarray):
        ref_wav = torch.from_numpy(ref_wav).float()
    if ref_wav.device != device:
        ref_wav = ref_wav.to(device)
    if len(ref_wav.shape) == 1:
        ref_wav = ref_wav.unsqueeze(0)  # (B, L)

    ref_wav_24 = ref_wav
    if ref_sr != S3GEN_SR:
        ref_wav_24 = get_resampler(ref_sr, S3GEN_SR, device)(ref_wav)
    ref_wav_24 = ref_wav_24.to(device=device, dtype=s3gen.dtype)
    ref_mels_24 = s3gen.mel_extractor(ref_wav_24).transpose(1, 2).to(dtype=s3gen.dtype)

    ref_wav_16 = ref_wav
    if ref_sr != S3_SR:
        ref_wav_16 = get_resampler(ref_sr, S3_SR, device)(ref_wav)
    ref_x_vector = s3gen.speaker_encoder.inference(ref_wav_16.to(dtype=s3gen.dtype))
    ref_speech_tokens, ref_speech_token_lens = tokenizer(ref_wav_16.float())

    if ref_mels_24.shape[1] != 2 * ref_speech_tokens.shape[1]:
        # upstream logs a warning here each time: "happens when the input is not padded to multiple of 40ms"
        ref_speech_tokens = ref_speech_tokens[:, :ref_mels_24.shape[1] // 2]
        ref_speech_token_lens[0] = ref_speech_tokens.shape[1]
    return dict(prompt_token=ref_speech_tokens.to(device), prompt_token_len=ref_speech_token_lens.to(device),
                prompt_feat=ref_mels_24, prompt_feat_len=None, embedding=ref_x_vector)


def speech_prompts(s3gen, wav_24k: np.ndarray, wav_16k: np.ndarray, device,
                   prompt_len: int) -> Tuple[Dict[str, Any], Any]:
    """(S3Gen's reference dict from `wav_24k`, T3's prompt tokens from `wav_16k`: at most `prompt_len`, (1, n), on
    `device`): the two things a voice's conditioning needs the S3 tokenizer for, with the tokenizer loaded for just
    this call (see `loaded`)."""
    from chatterbox.models.s3gen.s3gen import S3GEN_SR
    with loaded(s3gen) as tokenizer:
        gen = embed_reference(s3gen, wav_24k, S3GEN_SR, device, tokenizer)
        tokens, _ = tokenizer.forward([wav_16k], max_len=prompt_len)
        return gen, torch.atleast_2d(tokens).to(device)
