"""Chatterbox Turbo (Resemble AI, PyPI `chatterbox-tts`): cloned voices, paralinguistic tags, 24 kHz; or
Chatterbox-Nano, the same with a GPT-2 small T3 (parameter `model: nano`, models.py).

Loading goes through models.load_local: upstream's `ChatterboxTurboTTS.from_local`, step by step, with the model's
T3 (GPT-2 medium for Turbo, GPT-2 small for Nano), no random init and the weights read once, straight onto the device
(a hub snapshot is fetched first when no `model_dir` is given), after the folder has been checked file by file
(checkpoint.py). Generation re-implements
`ChatterboxTurboTTS.generate` step by step, because upstream's method has no seed, no cancel, no streaming and runs
outside `inference_mode`:

    punc_norm(text) -> GPT-2 tokenizer -> T3 sampling (tokens.py: upstream's loop, or fast_t3.FastT3)
      -> S3Gen flow + HiFT vocoder on the tokens so far (s3gen_stream.py) -> Perth watermark

Audio streams while T3 is still sampling: after `stream_first_tokens` speech tokens (25 = 1 s of audio) the tokens so
far are decoded, then again after chunks that double up to `stream_max_tokens`.

Seeds: T3 sampling uses a generator seeded with the request's seed; S3Gen noise comes from generators seeded with the
seed and the absolute position, so the same seed, settings and text give identical audio (seed 0 = a fresh random
seed per piece). The process-wide torch RNG is never touched.

T3 sampling runs upstream's loop (`TokenSampler`), or `fast_t3.FastT3` when the parameter fast_path is on and that
path passes, at load, its greedy equality check against upstream and a same-seed reproducibility check
(`fast_path` in info() says which runs and why).

Voices (voice_cache.py): a reference recording's conditioning is computed once and kept in an LRU cache bounded by
count and by bytes. No voice = the checkpoint's built-in voice (conds.pt).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import numpy as np

from ...engine import Engine, EngineError, EngineLoadError, VoiceError
from ...settings import EngineSettings, GenerationSettings
from . import models
from .checkpoint import check_checkpoint, explain_load_error, locate_checkpoint, resolve_repo
from .s3gen_stream import SAMPLE_RATE, StreamDecoder
from .tokens import SPEECH_VOCAB, FastTokenSource, TokenSampler
from .voice_cache import DEC_COND_SAMPLES, VoiceCache, compute_conds, prepare_t3_cond
from . import gpu_memory, memory_plan

log = logging.getLogger(__name__)


_LIBC_TRIM = None


def trim_host_memory() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim). Decoding allocates large, differently sized
    buffers per piece; glibc keeps the freed ones in its arenas, so without this RSS swings by hundreds of MB
    between utterances although nothing leaks. No-op where glibc is absent."""
    global _LIBC_TRIM
    if _LIBC_TRIM is None:
        try:
            import ctypes
            _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC_TRIM = False
    if _LIBC_TRIM:
        _LIBC_TRIM(0)



# ------------------------------------------------------------------------------------------------ the engine
class ChatterboxTurboEngine(Engine):
    name = "chatterbox_turbo"
    can_clone = True

    CROSSFADE_FRAMES = 8      # vocoder overlap between chunks (160 ms), as CosyVoice's streaming HiFT cache
    CONTEXT_FRAMES = 4        # extra mel frames of left context for the vocoder's convolutions
    NOISE_BLOCK_FRAMES = 50   # vocoder noise is drawn in blocks seeded by absolute position
    LOOKAHEAD_TOKENS = 8      # fast path: T3 tokens queued ahead (48 measured: first audio +50 ms, e2e no better)
    SELF_CHECK_TOKENS = 64    # greedy tokens compared with upstream at load (stop held down for the check)
    CFM_STEPS = 2             # upstream generate() uses n_cfm_timesteps=2 with the meanflow decoder

    def __init__(self, settings: Union[EngineSettings, Mapping[str, Any]]):
        super().__init__(settings)
        # the longest piece SpeechCore sends (text.chunk_chars, a core setting) sizes the memory plan; only flat
        # values (tests, bench) can carry it, otherwise the plan bounds text by the tokenizer's limit
        self.text_chunk_chars = settings.get("text.chunk_chars") if isinstance(settings, Mapping) else None
        # streaming schedule (speech tokens): first decode after this many, then chunks doubling up to the max;
        # stream_first_tokens <= 0 decodes each piece once, when T3 is done
        self.stream_first_tokens = int(self.settings.stream_first_tokens)
        self.stream_max_tokens = int(self.settings.stream_max_tokens)
        self.speech_cap = int(self.settings.speech_tokens_max)
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
        self.jetson_active = False
        self._jetson_applied_by_us = False
        self.fast = None              # fast_t3.FastT3 when the fast decode path is active
        self.fast_reason = "not loaded"
        self.fast_fallback = False    # the fast path was asked for and is not running normally
        self.plan: Optional[memory_plan.MemoryPlan] = None
        self.memory_state = "not loaded"
        self.warm_seconds = 0.0
        self.sync_mode = "n/a"
        self._alloc_base: Dict[str, int] = {}   # allocator counters right after configure
        self.last_alloc: Dict[str, int] = {}    # allocator work of the last piece (deltas)
        self.last_tokens = 0          # speech tokens of the last piece (for tests and the bench)
        self.last_chunks = 0          # decode steps of the last piece
        self.last_first_chunk_s: Optional[float] = None

    # -- configuration -------------------------------------------------------------------------------------------
    @staticmethod
    def resolve_device(spec: str) -> str:
        import torch
        s = (spec or "auto").strip().lower()
        if s == "auto":
            return "cuda:0" if torch.cuda.is_available() else "cpu"
        if s == "cpu":
            return "cpu"
        if s == "cuda" or s.startswith("cuda:"):
            if not torch.cuda.is_available():
                raise EngineLoadError(f"device '{spec}' was requested but CUDA is not available to torch "
                                      f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'}); set "
                                      f"device to auto or cpu, or install a CUDA build of torch")
            try:
                index = 0 if s == "cuda" else int(s.split(":", 1)[1])
            except ValueError:
                raise EngineLoadError(f"device '{spec}' is not valid: use auto, cpu, cuda or cuda:N") from None
            count = torch.cuda.device_count()
            if not 0 <= index < count:
                raise EngineLoadError(f"device '{spec}' does not exist: this machine has {count} CUDA device(s)")
            return f"cuda:{index}"
        raise EngineLoadError(f"device '{spec}' is not valid: use auto, cpu, cuda or cuda:N")

    @staticmethod
    def resolve_dtype(spec: str, device: str):
        import torch
        s = (spec or "auto").strip().lower()
        if s == "auto":
            return torch.float16 if device.startswith("cuda") else torch.float32
        table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
        if s not in table:
            raise EngineLoadError(f"dtype '{spec}' is not valid: use auto, float16, bfloat16 or float32")
        dtype = table[s]
        if dtype is torch.bfloat16 and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            raise EngineLoadError(f"dtype bfloat16 is not supported on {device}; use float16")
        return dtype

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            t0 = time.monotonic()
            try:
                import torch  # noqa: F401
                import chatterbox.tts_turbo  # noqa: F401 - a missing or broken install fails here, with the fix
            except ImportError as exc:
                raise EngineLoadError(f"Chatterbox is not installed ({exc}); run `make setup` (installs "
                                      f"chatterbox-tts and its dependencies into .venv)") from exc
            except Exception as exc:  # noqa: BLE001 - e.g. perth without pkg_resources
                raise EngineLoadError(f"Chatterbox could not be imported: {type(exc).__name__}: {exc}") from exc
            threads = int(self.settings.cpu_threads)
            if threads > 0:
                torch.set_num_threads(threads)
            device = self.resolve_device(self.settings.device)
            self.check_allocator(device, self.settings.fast_path)
            self.sync_mode = gpu_memory.blocking_sync(device) if device.startswith("cuda") else "n/a"
            dtype = self.resolve_dtype(self.settings.dtype, device)
            try:
                spec = models.model_spec(self.settings.model)
            except ValueError as exc:
                raise EngineLoadError(f"parameter {exc}") from None
            self.spec = spec
            repo = resolve_repo(self.settings.hub_repo, spec)
            folder, self.model_source = locate_checkpoint(self.settings, repo, spec)
            check_checkpoint(folder, repo, spec)
            from . import tiny_checkpoint
            try:
                arch = tiny_checkpoint.read_arch(folder)
            except Exception as exc:  # noqa: BLE001
                raise EngineLoadError(f"{tiny_checkpoint.ARCH_FILE} in '{folder}' is damaged: {exc}") from exc
            self._apply_jetson_patches()
            try:
                self._load_model(tiny_checkpoint, folder, arch, device, dtype, repo, spec)
            except BaseException:
                self._remove_jetson_patches()  # a failed configure leaves the process as it found it
                raise
            self.model_dir = str(folder)
            self.tiny = arch is not None
            self._warm_up()
            self._setup_fast_path()
            self._release_unused()
            self._take_working_memory()
            self.load_seconds = time.monotonic() - t0

    def _load_model(self, tiny_checkpoint, folder: Path, arch, device: str, dtype, repo: str,
                    spec: models.ModelSpec) -> None:
        patches = tiny_checkpoint.tiny_patches(arch) if arch is not None else contextlib.nullcontext()
        try:
            if arch is not None and tiny_checkpoint.arch_spec(arch) is not spec:
                raise EngineLoadError(f"the tiny checkpoint in '{folder}' is laid out as "
                                      f"{tiny_checkpoint.arch_spec(arch).name}, not {spec.name}: set the parameter "
                                      f"model to '{tiny_checkpoint.arch_spec(arch).name}'")
            with patches:
                model = models.load_local(folder, device, spec, arch["t3"] if arch is not None else None,
                                          t3_dtype=dtype)
        except EngineLoadError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._release_partial_load(device)
            if "out of memory" in str(exc).lower():
                raise EngineLoadError(f"out of memory while loading {spec.title} on {device}: {exc}; free "
                                      f"GPU memory (start this node first) or use dtype float16") from exc
            raise explain_load_error(exc, folder, repo, spec) from exc
        try:
            self._finish_load(model, device, dtype)
        except Exception:
            self._model = None
            self._builtin = None
            del model
            self._release_partial_load(device)
            raise

    @staticmethod
    def _release_partial_load(device: str) -> None:
        """After a failed load: whatever the loader had put on the GPU goes back before configure answers."""
        gc.collect()
        if device.startswith("cuda"):
            import torch
            torch.cuda.empty_cache()

    def _warm_up(self) -> None:
        """The watermarker's first call costs ~1 s (resampler and network set-up): pay it at load, not in speech."""
        try:
            import torch
            noise = np.random.default_rng(0).standard_normal(SAMPLE_RATE // 2).astype(np.float32) * 0.01
            with torch.inference_mode():
                self._model.watermarker.apply_watermark(noise, sample_rate=SAMPLE_RATE)
        except Exception:  # noqa: BLE001 - a failing watermarker shows up on the first request instead
            pass

    def _setup_fast_path(self) -> None:
        """Use fast_t3.FastT3 for T3 sampling when asked for, supported, and equal to upstream on a greedy check.
        Anything short of that while the fast path was asked for is a fallback, and a fallback is loud: a warning
        in the configure log and `fast_path.fallback` / `fast_path_warning` in info() (diagnostics, health, doctor)."""
        self.fast = None
        if not self.settings.fast_path:
            self._fast_state("off (parameter fast_path)", fallback=False)
            return
        try:
            from ..fast_t3 import FastT3
        except Exception as exc:  # noqa: BLE001 - the reference loop always works
            self._fast_state(f"unavailable ({type(exc).__name__}: {exc}); using the reference loop")
            return
        try:
            model = self._model
            ok, why = FastT3.supported(model.t3)
            if not ok:
                self._fast_state(f"unsupported: {why}; using the reference loop")
                return
            fast = FastT3(model.t3, max_voices=self.settings.voice_cache_max_voices,
                          lookahead_tokens=self.LOOKAHEAD_TOKENS)
            cond = self._builtin.t3 if self._builtin is not None else self._dummy_t3_cond()
            text = self.tokenize("The quick brown fox jumps over the lazy dog.")
            check = fast.self_check(cond, text, n_tokens=self.SELF_CHECK_TOKENS)
            fast.clear()
            if not check.get("ok"):
                self._fast_state(f"greedy equality check against upstream failed ({check}); using the reference "
                                 f"loop")
                return
            if not self._fast_path_reproducible(fast, cond, text) or not self._speaks_reproducibly(fast):
                fast.clear()
                self._fast_state("sampling with a fixed seed was not reproducible (the seed contract); using the "
                                 "reference loop")
                return
            fast.clear()
            self.fast = fast
            agreed = (f"{check.get('n')} tokens equal" if "diverged_at" not in check else
                      f"{check['match']} tokens equal, then a rounding tie (margin {check['margin']})")
            if fast.device.type == "cuda" and not fast.use_graphs:
                failures = "; ".join(fast.info().get("graph_failures", []))[:400]
                self._fast_state(f"active WITHOUT CUDA graphs (capture failed: {failures or 'unknown'}): several "
                                 f"times slower than it should be")
                self.fast = fast
                return
            self._fast_state(f"active (greedy check: {agreed}; seeded sampling reproducible)", fallback=False)
        except Exception as exc:  # noqa: BLE001
            self.fast = None
            self._fast_state(f"failed to start ({type(exc).__name__}: {str(exc)[:200]}); using the reference loop")

    def _fast_state(self, reason: str, fallback: bool = True) -> None:
        """Record why the fast path runs or not; a fallback from it is a warning, never silent."""
        self.fast_reason = reason
        self.fast_fallback = fallback
        if fallback:
            log.warning("Chatterbox Turbo: the fast path was asked for but is not running normally: %s", reason)

    @staticmethod
    def check_allocator(device: str, fast_path: bool) -> None:
        """Refuse CUDA + fast path under PYTORCH_NO_CUDA_MEMORY_CACHING: torch turns its caching allocator off
        when the variable is set to anything, CUDA graphs cannot be captured without it, and the engine would
        otherwise run the reference loop, ~18x slower, without anyone asking for that."""
        if device.startswith("cuda") and fast_path and "PYTORCH_NO_CUDA_MEMORY_CACHING" in os.environ:
            raise EngineLoadError(
                "PYTORCH_NO_CUDA_MEMORY_CACHING is set, which turns off PyTorch's caching allocator; the fast path's "
                "CUDA graphs need it, and without them speech is ~18x slower. Unset the variable (the engine "
                "allocates its working memory at configure, so Jetson no longer needs it; remove it from your "
                "container/compose environment), or set the parameter fast_path to false to run the slow "
                "reference loop on purpose")

    def _release_unused(self) -> None:
        """What Turbo inference never uses goes before the working memory is taken: T3's text head (~100 MB in fp16;
        only training's loss reads it) and the CPU-side copies the loader left in glibc's arenas."""
        from ..fast_t3 import release_text_head
        with contextlib.suppress(Exception):
            release_text_head(self._model.t3)
        gc.collect()
        trim_host_memory()

    WARM_ON_CPU = False   # the configure-time warm-up runs on CUDA (tests switch it on for the CPU)

    def _take_working_memory(self) -> None:
        """The static memory plan (memory_plan.py): size everything for the longest allowed piece and take that
        memory now, at configure: the fast path's KV cache and buffers and a graph for every bucket, then one
        worst-case pass (longest text prefill; longest piece through S3Gen with a 10 s voice prompt) whose blocks
        the caching allocator keeps. Afterwards no allowed text needs a new device allocation. Running out of
        memory here fails configure, with the fix, instead of a request later."""
        model = self._model
        t3 = model.t3
        cfg = t3.cfg
        fast = self.fast
        chunk_chars = self.text_chunk_chars  # the longest piece (None: the tokenizer's limit bounds it)
        limit = getattr(model.tokenizer, "model_max_length", 1024) or 1024
        try:
            self.plan = memory_plan.make_plan(
                chunk_chars, speech_max=self.speech_cap, speech_base=self.settings.speech_tokens_base,
                speech_per_char=self.settings.speech_tokens_per_char, n_layer=int(cfg.n_layer),
                n_head=int(cfg.num_attention_heads),
                head_dim=int(cfg.hidden_size) // int(cfg.num_attention_heads),
                dtype_bytes=int(t3.speech_head.weight.element_size()), max_positions=int(t3.tfmr.wpe.weight.shape[0]),
                bucket=fast.bucket if fast is not None else 256, tokenizer_limit=int(min(limit, 10 ** 6)),
                stream_first=int(self.stream_first_tokens), stream_max=int(self.stream_max_tokens),
                crossfade_frames=self.CROSSFADE_FRAMES, context_frames=self.CONTEXT_FRAMES)
        except ValueError as exc:
            self.plan = None
            self.memory_state = f"no plan: {exc}"
            log.info("Chatterbox Turbo memory plan: %s", exc)
            return
        if not (self.device.startswith("cuda") or self.WARM_ON_CPU):
            self.memory_state = "planned (taken at configure on CUDA only)"
            return
        t0 = time.monotonic()
        try:
            self._warm_worst_case(self.plan)
        except Exception as exc:  # noqa: BLE001
            if "out of memory" in str(exc).lower():
                raise EngineLoadError(
                    f"out of memory while taking the working memory for pieces of up to {self.plan.max_speech_tokens} "
                    f"speech tokens ({exc}); lower speech_tokens.max, use dtype float16, or start this node before "
                    f"other GPU services") from exc
            self.memory_state = f"warm-up failed ({type(exc).__name__}: {str(exc)[:200]}); memory grows on demand"
            log.warning("Chatterbox Turbo: %s", self.memory_state)
            return
        finally:
            self.warm_seconds = time.monotonic() - t0
        if self.device.startswith("cuda"):
            import torch
            torch.cuda.synchronize(torch.device(self.device))
        self._alloc_base = gpu_memory.allocator_stats(self.device)
        self.memory_state = "taken at configure"

    def _warm_worst_case(self, plan: "memory_plan.MemoryPlan") -> None:
        import torch
        model = self._model
        dev = torch.device(self.device)
        fast = self.fast
        if dev.type == "cuda":
            torch.cuda.empty_cache()  # leftovers of the checks: the plan's memory is taken from a clean slate
        if fast is not None:
            fast.warmup(None, text_len=plan.max_text_tokens, max_new_tokens=plan.max_speech_tokens - 1,
                        settings=(None, "greedy"), all_buckets=True)
            cond = self._builtin.t3 if self._builtin is not None else self._dummy_t3_cond()
            g = torch.Generator(device=dev).manual_seed(1)
            text = torch.randint(0, 256, (1, plan.max_text_tokens), generator=g, device=dev)
            fast.generate(cond, text, GenerationSettings(), generator=g, max_new_tokens=8)  # longest prefill
        t = np.arange(DEC_COND_SAMPLES, dtype=np.float64) / SAMPLE_RATE
        wav = (0.3 * np.sin(2 * np.pi * 140 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        with torch.inference_mode():
            ref = model.s3gen.embed_ref(wav, SAMPLE_RATE, device=self.device)  # a 10 s voice: the longest prompt
            tokens = torch.randint(0, SPEECH_VOCAB, (plan.max_speech_tokens,), device=dev,
                                   generator=torch.Generator(device=dev).manual_seed(2))
        decoder = StreamDecoder(self, model, ref, 1, True)  # watermarked, as requests are by default
        for at in plan.decode_points[:-1]:
            decoder.step(tokens[:at], final=False)
        decoder.step(tokens, final=True)

    def memory_info(self) -> Dict[str, Any]:
        """The memory plan, what configure took, and the allocator's work since (what the static plan is judged by:
        no device allocation after configure, flat reserved memory, few block allocations per piece)."""
        out: Dict[str, Any] = {"state": self.memory_state, "plan": self.plan.as_dict() if self.plan else None,
                               "warm_s": round(self.warm_seconds, 3), "host_sync": self.sync_mode}
        out.update(gpu_memory.memory_report(self.device))
        now = gpu_memory.allocator_stats(self.device)
        mb = 1024.0 * 1024.0
        out["reserved_mb"] = round(now["reserved_bytes"] / mb, 1)
        if self._alloc_base:
            out["reserved_at_configure_mb"] = round(self._alloc_base["reserved_bytes"] / mb, 1)
            out["device_allocs_since_configure"] = now["num_device_alloc"] - self._alloc_base["num_device_alloc"]
        out["last_piece"] = dict(self.last_alloc)
        return out

    def _fast_path_reproducible(self, fast, cond, text) -> bool:
        """Same seed, same tokens: two sampled runs with other random draws in between (as decoding does)."""
        import torch
        dev = torch.device(fast.device)
        with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):  # leave global RNG as is
            return self._fast_runs_equal(fast, cond, text)

    def _speaks_reproducibly(self, fast) -> bool:
        """With the built-in voice: the same seed twice through synthesize (decoding interleaved) gives the same
        audio. (Without a built-in voice only the token-level check runs.)"""
        if self._builtin is None or not self.device.startswith("cuda"):
            return True  # on CPU the token-level check already compares the exact same sampling
        settings = GenerationSettings(seed=4321, watermark=False)
        saved = self.fast
        self.fast = fast
        try:
            for text in ("Hello there, this is a quick check.", "Hello there [laugh], robot."):
                runs = [np.concatenate(list(self.synthesize(text, None, settings, threading.Event())) or
                                       [np.zeros(0, np.float32)]) for _ in range(2)]
                if self.fast is not fast or runs[0].size != runs[1].size or not np.array_equal(runs[0], runs[1]):
                    return False
            return True
        finally:
            self.fast = saved

    def _fast_runs_equal(self, fast, cond, text) -> bool:
        import torch
        runs = []
        for run in range(2):
            source = FastTokenSource(self, fast, cond, text, GenerationSettings(seed=4321), 4321, 48, 8)
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

    def _dummy_t3_cond(self):
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts_turbo import Conditionals
        model = self._model
        with torch.inference_mode():
            cond = T3Cond(speaker_emb=torch.zeros(1, 256),
                          cond_prompt_speech_tokens=torch.zeros(1, 8, dtype=torch.long),
                          emotion_adv=0.5 * torch.ones(1, 1, 1))
            return self._prepare_t3_cond(model, Conditionals(cond, {})).t3

    def _finish_load(self, model, device: str, dtype) -> None:
        import torch
        if dtype != torch.float32:
            # T3 (most weights, all per-token time) in half precision. VoiceEncoder, S3Tokenizer, CAMPPlus and HiFT
            # break under .half() (FACTS.md), so S3Gen and the voice encoder stay float32. Cast outside
            # inference_mode: parameters made there become inference tensors that nothing may update later.
            with torch.no_grad():
                model.t3.to(dtype=dtype)
        with torch.inference_mode():
            builtin = None
            if model.conds is not None:
                builtin = self._prepare_t3_cond(model, model.conds)
        # model.conds stays the (prepared) built-in voice, so upstream's generate() still works on this model
        self._model = model
        self._builtin = builtin
        self.device = device
        self.dtype = str(dtype).replace("torch.", "")


    def _apply_jetson_patches(self) -> None:
        mode = self.settings.jetson_patches
        try:
            from ... import jetson_patches
        except ImportError:
            self.jetson_active = False
            return
        try:
            self.jetson_active = bool(jetson_patches.apply(mode))
        except Exception as exc:  # noqa: BLE001 - a bad mode must not hide behind a half-loaded engine
            raise EngineLoadError(f"jetson_patches='{mode}': {exc}") from exc
        self._jetson_applied_by_us = self.jetson_active

    def _remove_jetson_patches(self) -> None:
        if self._jetson_applied_by_us:
            try:
                from ... import jetson_patches
                jetson_patches.remove()
            except Exception:  # noqa: BLE001
                pass
            self._jetson_applied_by_us = False
            self.jetson_active = False

    def unload(self) -> None:
        with self._lock:
            was_cuda = self.device.startswith("cuda")
            self._model = None
            self._builtin = None
            self.fast = None
            self.fast_reason = "not loaded"
            self.fast_fallback = False
            self.plan = None
            self.memory_state = "not loaded"
            self._alloc_base = {}
            self._voices.clear()
            self._remove_jetson_patches()
            gc.collect()
            if was_cuda:
                import torch
                torch.cuda.empty_cache()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def free_memory(self) -> None:
        """After a CUDA out-of-memory error: drop cached voices (the built-in voice stays) and the allocator cache."""
        self._voices.clear()
        with self._lock:
            if self.fast is not None:
                self.fast.clear()
        gc.collect()
        with self._lock:
            if self.device.startswith("cuda"):
                import torch
                torch.cuda.empty_cache()

    # -- status --------------------------------------------------------------------------------------------------
    def info(self) -> Dict[str, Any]:
        out = super().info()
        spec = self.spec  # the loaded model; before loading, the configured one
        if self._model is None:
            spec = models.MODELS.get(self.settings.model, spec)
        mb = 1024.0 * 1024.0
        n_voices, cache_bytes = self._voices.size()
        out.update({
            "device": self.device or self.settings.device,
            "dtype": self.dtype or self.settings.dtype,
            "model": spec.model_id,
            "model_name": spec.title,
            "model_dir": self.model_dir,
            "model_source": self.model_source,
            "hub_repo": resolve_repo(self.settings.hub_repo, spec),
            "tiny_checkpoint": self.tiny,
            "builtin_voice": self._builtin is not None,
            "load_seconds": round(self.load_seconds, 3),
            "rss_mb": round(gpu_memory.rss_bytes() / mb, 1),
            "voice_cache_voices": n_voices,
            "voice_cache_mb": round(cache_bytes / mb, 3),
            "voice_cache_max_voices": self.settings.voice_cache_max_voices,
            "voice_cache_max_mb": self.settings.voice_cache_max_mb,
            "voice_cache_hits": self._voices.stats["hits"],
            "voice_cache_misses": self._voices.stats["misses"],
            "voice_cache_evictions": self._voices.stats["evictions"],
            "fast_path": {"requested": self.settings.fast_path, "active": self.fast is not None,
                          "cuda_graphs": bool(self.fast is not None and self.fast.use_graphs),
                          "fallback": self.fast_fallback, "reason": self.fast_reason},
            "fast_path_active": self.fast is not None,
            "fast_path_state": self.fast_reason,
            "fast_path_warning": self.fast_reason if self.fast_fallback else "",
            "jetson_patches": self.settings.jetson_patches,
            "jetson_patches_active": self.jetson_active,
            "stream_first_tokens": self.stream_first_tokens,
            "last_first_chunk_s": self.last_first_chunk_s,
        })
        try:  # the memory plan and allocator counters; flat copies of the headline figures for /diagnostics
            memory = self.memory_info()
            out.update({"memory": memory, "memory_state": memory["state"],
                        "rss_plus_device_mb": memory["rss_plus_device_mb"],
                        "device_allocs_since_configure": memory.get("device_allocs_since_configure")})
        except Exception as exc:  # noqa: BLE001 - status must never fail
            out["memory_state"] = f"unknown ({type(exc).__name__}: {exc})"
        if self.device.startswith("cuda"):
            try:
                import torch
                dev = torch.device(self.device)
                out.update({
                    "cuda_device_name": torch.cuda.get_device_name(dev),
                    "cuda_allocated_mb": round(torch.cuda.memory_allocated(dev) / mb, 1),
                    "cuda_reserved_mb": round(torch.cuda.memory_reserved(dev) / mb, 1),
                    "cuda_peak_mb": round(torch.cuda.max_memory_allocated(dev) / mb, 1),
                })
            except Exception:  # noqa: BLE001 - status must never fail
                pass
        return out

    # -- voices --------------------------------------------------------------------------------------------------
    def _require_model(self):
        model = self._model
        if model is None:
            raise EngineError("the Chatterbox Turbo engine is not loaded")
        return model

    _prepare_t3_cond = staticmethod(prepare_t3_cond)

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
        return (max(1, self.settings.voice_cache_max_voices),
                self.settings.voice_cache_max_mb * 1024 * 1024)

    def _forget_fast(self, conds) -> None:
        fast = self.fast
        if fast is not None:
            try:
                fast.forget_voice(conds.t3)
            except Exception:  # noqa: BLE001 - its own LRU bounds it anyway
                pass

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
        norm = punc_norm(text)
        return model.tokenizer(norm, return_tensors="pt", padding=True, truncation=True).input_ids.to(model.device)

    def synthesize(self, text: str, voice_path: Optional[str], settings: GenerationSettings,
                   cancel: threading.Event) -> Iterator[np.ndarray]:
        model = self._require_model()
        conds = self._voice_conds(voice_path)
        seed = int(settings.seed) or secrets.randbits(62) + 1
        t_start = time.monotonic()
        self.last_first_chunk_s = None
        self.last_chunks = 0
        self.last_tokens = 0
        alloc0 = gpu_memory.allocator_stats(self.device)
        text_tokens = self.tokenize(text)
        cap = self.max_tokens_for(text)
        first = int(self.stream_first_tokens)
        fast = self.fast
        if fast is not None:
            tokens: Any = FastTokenSource(self, fast, conds.t3, text_tokens, settings, seed, cap, first)
        else:
            tokens = TokenSampler(self, model, conds.t3, text_tokens, settings, seed, cap)
        decoder = StreamDecoder(self, model, conds.gen, seed, settings.watermark)
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
        except Exception as exc:  # noqa: BLE001
            if fast is None or decoder.emitted > 0 or "out of memory" in str(exc).lower():
                raise
            # the fast path failed before any audio left: switch it off and speak with the reference loop
            self.fast = None
            self._fast_state(f"disabled after an error ({type(exc).__name__}: {str(exc)[:200]}); using the "
                             f"reference loop")
            yield from self.synthesize(text, voice_path, settings, cancel)
            return
        finally:
            tokens.close()
        if cancel.is_set():
            return
        self.last_tokens = tokens.count
        part = decoder.step(tokens.valid(), final=True)
        self.last_chunks += 1
        del tokens, decoder
        trim_host_memory()
        alloc1 = gpu_memory.allocator_stats(self.device)
        self.last_alloc = {"device_allocs": alloc1["num_device_alloc"] - alloc0["num_device_alloc"],
                           "block_allocations": alloc1["block_allocations"] - alloc0["block_allocations"],
                           "reserved_bytes": alloc1["reserved_bytes"]}
        if part.size:
            if self.last_first_chunk_s is None:
                self.last_first_chunk_s = time.monotonic() - t_start
            yield part

