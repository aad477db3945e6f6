"""Chatterbox Turbo (Resemble AI, PyPI `chatterbox-tts`): cloned voices, paralinguistic tags, 24 kHz; or
Chatterbox-Nano, the same with a GPT-2 small T3 (parameter `model: nano`, models.py).

load: the device and dtype (device.py), the checkpoint checked file by file and fetched from the hub when no
`model_dir` is given (checkpoint.py), the model read straight onto the device (models.load_local), the T3 decode
loop chosen by its self-checks (fast_path.py), the working memory for the longest piece taken (memory_warmup.py).

synthesize re-implements upstream's `ChatterboxTurboTTS.generate` step by step, because upstream's method has no
seed, no cancel, no streaming and runs outside `inference_mode`:

    punc_norm(text) -> GPT-2 tokenizer -> T3 sampling (tokens.py: upstream's loop, or fast_t3.FastT3)
      -> S3Gen flow + HiFT vocoder on the tokens so far (s3gen_stream.py) -> Perth watermark

Audio streams while T3 is still sampling: after `stream_first_tokens` speech tokens (25 = 1 s of audio) the tokens so
far are decoded, then again after chunks that double up to `stream_max_tokens`.

Seeds: T3 sampling uses a generator seeded with the request's seed; S3Gen noise comes from generators seeded with the
seed and the absolute position, so the same seed, settings and text give identical audio (seed 0 = a fresh random
seed per piece). The process-wide torch RNG is never touched.

Voices (voice_cache.py): a reference recording's conditioning is computed once and kept in an LRU cache bounded by
count and by bytes. No voice = the checkpoint's built-in voice (conds.pt).
"""
from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from dataclasses import replace
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ...engine import Engine, EngineError, EngineLoadError, VoiceError
from ...settings import EngineSettings, GenerationSettings
from ...status import EngineStatus, FastPathStatus
from . import fast_path, gpu_memory, memory_warmup, models, s3gen_graphs
from .checkpoint import check_checkpoint, load_model, locate_checkpoint, resolve_repo
from .device import (apply_jetson_patches, check_allocator, cuda_status, release, remove_jetson_patches,
                     resolve_device, resolve_dtype, trim_host_memory)
from .s3gen_precision import resolve_s3gen_dtype
from .s3gen_stream import SAMPLE_RATE, DecoderConfig, StreamDecoder
from .tokens import FastTokenSource, TokenSampler
from .voice_cache import VoiceCache, compute_conds, placeholder_t3_cond, prepare_t3_cond

log = logging.getLogger(__name__)


class ChatterboxTurboEngine(Engine):
    name = "chatterbox_turbo"
    can_clone = True
    WARM_ON_CPU = False   # the configure-time warm-up runs on CUDA (tests switch it on for the CPU)

    def __init__(self, settings: EngineSettings, max_piece_chars: Optional[int] = None):
        super().__init__(settings, max_piece_chars)  # max_piece_chars sizes the memory plan
        # streaming schedule (speech tokens): first decode after this many, then chunks doubling up to the max;
        # stream_first_tokens <= 0 decodes each piece once, when T3 is done
        self.stream_first_tokens = int(self.settings.stream_first_tokens)
        self.stream_max_tokens = int(self.settings.stream_max_tokens)
        self.decoder_config = DecoderConfig(speech_cap=int(self.settings.speech_tokens_max))
        self.sample_rate = SAMPLE_RATE
        self._model = None
        self._builtin = None          # Conditionals of conds.pt, prepared (T3 dtype, prompt embedding)
        self._lock = threading.RLock()         # model work (T3 steps, decoding, conditioning)
        self._voices = VoiceCache(self._voice_limits, self._forget_fast)  # its own lock, never held in model work
        self.device = ""
        self.dtype = ""
        self.model_dir = ""
        self.model_source = ""
        self.spec = models.MODELS[models.DEFAULT_MODEL]   # the model loaded (or to load)
        self.tiny = False
        self.load_seconds = 0.0
        self.jetson_active = False    # the Jetson patches are on, applied by this engine
        self.sync_mode = "n/a"
        self.fast = None              # fast_t3.FastT3 when the fast decode path is active
        self.fast_status = FastPathStatus(requested=self.settings.fast_path)
        self.graphs = None            # s3gen_graphs.S3GenGraphs when S3Gen runs in CUDA graphs
        self.graphs_status = FastPathStatus(requested=self.settings.s3gen_graphs)
        self.memory = memory_warmup.WorkingMemory()
        self.last_alloc: Dict[str, int] = {}    # allocator work of the last piece (deltas)
        self.last_tokens = 0          # speech tokens of the last piece (for tests and the bench)
        self.last_chunks = 0          # decode steps of the last piece
        self.last_first_chunk_s: Optional[float] = None

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            t0 = time.monotonic()
            try:
                import torch
                import chatterbox.tts_turbo  # noqa: F401 - a missing or broken install fails here, with the fix
            except ImportError as exc:
                raise EngineLoadError(f"Chatterbox is not installed ({exc}); run `make setup` (installs "
                                      f"chatterbox-tts and its dependencies into .venv)") from exc
            except Exception as exc:  # noqa: BLE001 - e.g. perth without pkg_resources
                raise EngineLoadError(f"Chatterbox could not be imported: {type(exc).__name__}: {exc}") from exc
            if int(self.settings.cpu_threads) > 0:
                torch.set_num_threads(int(self.settings.cpu_threads))
            device = resolve_device(self.settings.device)
            check_allocator(device, self.settings.fast_path)
            self.sync_mode = gpu_memory.blocking_sync(device) if device.startswith("cuda") else "n/a"
            dtype = resolve_dtype(self.settings.dtype, device)
            try:
                self.spec = spec = models.model_spec(self.settings.model)
            except ValueError as exc:
                raise EngineLoadError(f"parameter {exc}") from None
            repo = resolve_repo(self.settings.hub_repo, spec)
            folder, self.model_source = locate_checkpoint(self.settings, repo, spec)
            check_checkpoint(folder, repo, spec)
            self.jetson_active = apply_jetson_patches(self.settings.jetson_patches)
            try:
                model, self.tiny = load_model(folder, device, dtype, repo, spec, s3gen_dtype=resolve_s3gen_dtype(
                    self.settings.s3gen_dtype, device, dtype))
                with torch.inference_mode():  # the built-in voice, prepared (model.conds: upstream's generate works)
                    builtin = prepare_t3_cond(model, model.conds) if model.conds is not None else None
            except BaseException:
                model = None
                self._remove_jetson_patches()  # a failed configure leaves the process as it found it
                release(device)
                raise
            self._model, self._builtin, self.model_dir = model, builtin, str(folder)
            self.device, self.dtype = device, str(dtype).replace("torch.", "")
            try:
                self._warm_up()
                speak = self._speak if self._builtin is not None else None
                self.fast, self.fast_status = fast_path.select(
                    model, self.settings.fast_path, lock=self._lock, speak=speak, t3_cond=self._check_cond,
                    max_voices=self.settings.voice_cache_max_voices, text_tokens=self.tokenize)
                self._release_unused()
                self.memory = memory_warmup.take(
                    model, self.settings, self.max_piece_chars, device=device, fast=self.fast,
                    t3_cond=self._check_cond, lock=self._lock, decoder=self.decoder_config,
                    warm=device.startswith("cuda") or self.WARM_ON_CPU, decoder_graphs=self._capture_graphs)
                self._apply_budget(self.memory.budget)
            except BaseException:
                self.unload()  # a failed configure (e.g. memory.budget_mb too small) leaves nothing loaded
                raise
            self.load_seconds = time.monotonic() - t0

    def _capture_graphs(self, plan):
        """S3Gen's CUDA graphs for the memory plan (s3gen_graphs.select), checked with the built-in voice or the
        longest voice the plan allows."""
        def ref():
            return self._builtin.gen if self._builtin is not None else memory_warmup.worst_case_voice(
                self._model, self._model.s3gen.device)
        with self._lock:
            self.graphs, self.graphs_status = s3gen_graphs.select(
                self._model, plan, self.decoder_config, self.settings.s3gen_graphs, ref)
        return self.graphs

    def _apply_budget(self, choice) -> None:
        """What memory.budget_mb chose becomes the engine's limits: the speech-token cap, the cached voices and the
        longest piece (SpeechCore splits text at min(text.chunk_chars, max_piece_chars))."""
        if choice is None:
            return
        self.settings = replace(self.settings, speech_tokens_max=choice.speech_tokens_max,
                                voice_cache_max_voices=choice.max_voices)
        self.max_piece_chars = choice.chunk_chars
        if self.fast is not None:
            self.fast.max_voices = choice.max_voices

    def _warm_up(self) -> None:
        """The watermarker's first call costs ~1 s (resampler and network set-up): pay it at load, not in speech."""
        try:
            import torch
            noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2).astype(np.float32) * 0.01
            with torch.inference_mode():
                self._model.watermarker.apply_watermark(noise, sample_rate=SAMPLE_RATE)
        except Exception:  # noqa: BLE001 - a failing watermarker shows up on the first request instead
            log.debug("watermarker warm-up failed", exc_info=True)

    def _release_unused(self) -> None:
        """What Turbo inference never uses goes before the working memory is taken: T3's text head (~100 MB in fp16;
        only training's loss reads it) and the CPU-side copies the loader left in glibc's arenas."""
        from ..fast_t3 import release_text_head
        with contextlib.suppress(Exception):
            release_text_head(self._model.t3)
        release("cpu")
        trim_host_memory()

    def _check_cond(self):
        """A prepared T3 conditioning for the load-time checks and warm-up: the built-in voice's, or a placeholder."""
        return self._builtin.t3 if self._builtin is not None else placeholder_t3_cond(self._model)

    def _remove_jetson_patches(self) -> None:
        if self.jetson_active:
            remove_jetson_patches()
            self.jetson_active = False

    def unload(self) -> None:
        with self._lock:
            was = self.device
            self._model = self._builtin = self.fast = self.graphs = None
            self.fast_status = FastPathStatus(requested=self.settings.fast_path)
            self.graphs_status = FastPathStatus(requested=self.settings.s3gen_graphs)
            self.memory = memory_warmup.WorkingMemory()
            self._voices.clear()
            self._remove_jetson_patches()
            release(was)

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def free_memory(self) -> None:
        """After a CUDA out-of-memory error: drop cached voices (the built-in voice stays) and the allocator cache."""
        self._voices.clear()
        with self._lock:
            if self.fast is not None:
                self.fast.clear()
            release(self.device)

    # -- status --------------------------------------------------------------------------------------------------
    def _status_spec(self) -> models.ModelSpec:
        """The model loaded, or (not loaded) the one the `model` parameter will load."""
        return self.spec if self._model is not None else models.MODELS.get(self.settings.model, self.spec)

    @property
    def languages(self) -> Tuple[str, ...]:  # type: ignore[override]
        return self._status_spec().languages

    @property
    def default_language(self) -> str:  # type: ignore[override]
        return self._status_spec().languages[0]

    @property
    def model_id(self) -> str:
        return self._status_spec().model_id

    def info(self) -> EngineStatus:
        spec = self._status_spec()
        fast, s = self.fast, self.settings
        return replace(
            super().info(), device=self.device or s.device, dtype=self.dtype or s.dtype, model=spec.model_id,
            model_name=spec.title, model_dir=self.model_dir, model_source=self.model_source,
            hub_repo=resolve_repo(s.hub_repo, spec), tiny_checkpoint=self.tiny, builtin_voice=self._builtin is not None,
            load_seconds=round(self.load_seconds, 3), rss_mb=round(gpu_memory.rss_bytes() / 2 ** 20, 1),
            jetson_patches=s.jetson_patches, jetson_patches_active=self.jetson_active,
            stream_first_tokens=self.stream_first_tokens, last_first_chunk_s=self.last_first_chunk_s,
            voice_cache=self._voices.status(s.voice_cache_max_voices, s.voice_cache_max_mb),
            fast_path=replace(self.fast_status, requested=s.fast_path, active=fast is not None,
                              cuda_graphs=bool(fast is not None and fast.use_graphs)),
            s3gen_graphs=replace(self.graphs_status, requested=s.s3gen_graphs, active=self.graphs is not None),
            memory=memory_warmup.status(self.memory, self.device, self.sync_mode, self.last_alloc, self._model, fast,
                                        self.graphs),
            cuda=cuda_status(self.device))

    # -- voices --------------------------------------------------------------------------------------------------
    def _require_model(self):
        model = self._model
        if model is None:
            raise EngineError("the Chatterbox Turbo engine is not loaded")
        return model

    def prepare_voice(self, voice_path: str) -> None:
        self._voice_conds(voice_path)

    def _voice_conds(self, voice_path: Optional[str]):
        """The conditioning for a voice file (cached), or the built-in voice for None."""
        model = self._require_model()
        if not voice_path:
            if self._builtin is None:
                raise VoiceError("this checkpoint has no built-in voice (no conds.pt); name a voice")
            return self._builtin

        def compute(path: str):
            with self._lock:
                return compute_conds(model, path)
        return self._voices.get(voice_path, compute)

    def _voice_limits(self):
        return (max(1, self.settings.voice_cache_max_voices), self.settings.voice_cache_max_mb * 1024 * 1024)

    def _forget_fast(self, conds) -> None:
        fast = self.fast
        if fast is not None:
            try:
                fast.forget_voice(conds.t3)
            except Exception:  # noqa: BLE001 - its own LRU bounds it anyway
                log.debug("the fast path could not forget a voice", exc_info=True)

    def cached_voices(self) -> List[str]:
        """Resolved paths of the cached voices, least recently used first."""
        return self._voices.paths()

    # -- generation ----------------------------------------------------------------------------------------------
    def max_tokens_for(self, text: str) -> int:
        """Speech-token cap for one piece (speech_tokens.*): upstream's 1000, tighter for short text so a model that
        never stops cannot babble for 40 s after 'Hi.' (~6 tokens per character is 3-4x normal speech)."""
        return self.settings.max_tokens_for(text)

    def tokenize(self, text: str):
        """Upstream's text path: punc_norm, then the GPT-2 tokenizer (tags such as [laugh] are added tokens)."""
        from chatterbox.tts_turbo import punc_norm
        model = self._require_model()
        return model.tokenizer(punc_norm(text), return_tensors="pt", padding=True,
                               truncation=True).input_ids.to(model.device)

    def synthesize(self, text: str, voice_path: Optional[str], settings: GenerationSettings,
                   cancel: threading.Event) -> Iterator[np.ndarray]:
        conds = self._voice_conds(voice_path)
        seed = int(settings.seed) or secrets.randbits(62) + 1
        fast = self.fast
        spoke = False
        try:
            with contextlib.closing(self._stream(text, conds, settings, seed, cancel, fast)) as parts:
                for part in parts:
                    spoke = True
                    yield part
        except Exception as exc:  # noqa: BLE001
            if fast is None or spoke or "out of memory" in str(exc).lower():
                raise
            # the fast path failed before any audio left: switch it off and speak with the reference loop
            self.fast = None
            self.fast_status = fast_path.fell_back(f"disabled after an error ({type(exc).__name__}: "
                                                   f"{str(exc)[:200]}); using the reference loop")
            yield from self.synthesize(text, voice_path, settings, cancel)

    def _speak(self, fast, text: str, settings: GenerationSettings) -> np.ndarray:
        """One piece with the built-in voice on the decode loop `fast` (the load-time check of fast_path.py)."""
        parts = list(self._stream(text, self._builtin, settings, int(settings.seed), threading.Event(), fast))
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _stream(self, text: str, conds, settings: GenerationSettings, seed: int, cancel: threading.Event,
                fast) -> Iterator[np.ndarray]:
        """The streaming schedule: T3 samples up to the next decode point, S3Gen decodes the tokens so far and the
        ready audio leaves; the last decode runs when T3 stops (stop token or cap)."""
        model = self._require_model()
        t_start = time.monotonic()
        self.last_first_chunk_s, self.last_chunks, self.last_tokens = None, 0, 0
        alloc0 = gpu_memory.allocator_stats(self.device)
        text_tokens = self.tokenize(text)
        cap = self.max_tokens_for(text)
        first = int(self.stream_first_tokens)
        if fast is not None:
            tokens: Any = FastTokenSource(self._lock, fast, conds.t3, text_tokens, settings, seed, cap, first)
        else:
            tokens = TokenSampler(self._lock, model, conds.t3, text_tokens, settings, seed, cap)
        decoder = StreamDecoder(model, conds.gen, seed, settings.watermark, self._lock, self.decoder_config,
                                self.graphs)
        next_at = first if first > 0 else None
        step = first
        try:
            while not tokens.done and tokens.count < tokens.cap:
                if cancel.is_set():
                    return
                tokens.run(until=next_at if next_at is not None else tokens.cap, cancel=cancel)
                if cancel.is_set():
                    return
                if tokens.done or tokens.count >= tokens.cap:
                    break
                if next_at is not None and tokens.count >= next_at:
                    part = decoder.step(tokens.valid(), final=False)
                    self.last_chunks += 1
                    step = min(step * 2, max(int(self.stream_max_tokens), first))
                    next_at = tokens.count + step
                    if part.size:
                        if self.last_first_chunk_s is None:
                            self.last_first_chunk_s = time.monotonic() - t_start
                        yield part
        finally:
            tokens.close()
        if cancel.is_set():
            return
        self.last_tokens = tokens.count
        part = decoder.step(tokens.valid(), final=True)
        self.last_chunks += 1
        del tokens, decoder
        trim_host_memory()
        self.last_alloc = gpu_memory.allocator_delta(alloc0, gpu_memory.allocator_stats(self.device))
        if part.size:
            if self.last_first_chunk_s is None:
                self.last_first_chunk_s = time.monotonic() - t_start
            yield part
