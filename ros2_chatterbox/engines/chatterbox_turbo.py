"""Chatterbox Turbo (Resemble AI, PyPI `chatterbox-tts`): cloned voices, paralinguistic tags, 24 kHz.

Loading goes through upstream's own `ChatterboxTurboTTS.from_local` (a hub snapshot is fetched first when no
`model_dir` is given), after the folder has been checked file by file so that a missing or damaged file fails with
its name and what to do. Generation re-implements `ChatterboxTurboTTS.generate` step by step, because upstream's
method has no seed, no cancel, no streaming and runs outside `inference_mode`:

    punc_norm(text) -> GPT-2 tokenizer -> T3 sampling loop (upstream's logits processors, a private torch.Generator)
      -> S3Gen flow (conformer encoder + 2-step meanflow) on the tokens so far -> HiFT vocoder -> Perth watermark

Audio streams while T3 is still sampling: after `stream_first_tokens` speech tokens (25 = 1 s of audio) the tokens so
far are decoded, then again after chunks that double up to `stream_max_tokens`. Each decode re-runs the flow over all
tokens (its attention is not causal) with the same noise at the same positions, keeps the mel frames that have all
their look-ahead, vocodes them with a few frames of left context and a sine excitation whose phase continues from
the previous chunk, and cross-fades a held-back tail of `CROSSFADE_FRAMES` frames with the next chunk. The Perth
watermark is applied the same way (left context, held-back tail, cross-fade), so consecutive parts join without
clicks and without dropping or repeating samples.

Seeds: T3 sampling uses a generator seeded with the request's seed; S3Gen noise comes from generators seeded with the
seed and the absolute position, so the same seed, settings and text give identical audio (seed 0 = a fresh random
seed per piece). The process-wide torch RNG is never touched.

T3 sampling runs upstream's loop (`_TokenSampler`), or `turbo_fast.FastT3` when the parameter fast_path is on and
that path passes, at load, its greedy equality check against upstream and a same-seed reproducibility check
(`fast_path_state` in info() says which runs and why). On CUDA the vocoder runs with deterministic cuDNN: its
transposed convolutions otherwise differ run to run, which would break "same seed, same audio".

Voices: a reference recording's conditioning is computed once and kept in an LRU cache bounded by count and by
bytes, keyed by the resolved path and refreshed when the file's mtime or size changes. No voice = the checkpoint's
built-in voice (conds.pt).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from ..engine import Engine, EngineError, EngineLoadError, GenerationSettings, VoiceError

SAMPLE_RATE = 24_000          # S3GEN_SR
SAMPLES_PER_FRAME = 480       # one mel frame (50 Hz) of 24 kHz audio; HiFT upsamples 8*5*3*4
FRAMES_PER_TOKEN = 2          # 25 speech tokens per second
SPEECH_VOCAB = 6561           # valid S3 codes; 6561/6562 are T3's start/stop tokens
SILENCE_TOKEN = 4299          # chatterbox.models.s3gen.const.S3GEN_SIL
MAX_SPEECH_TOKENS = 1000      # upstream's cap per generate() (~40 s); Turbo is unstable past ~25-30 s anyway
DEC_COND_SAMPLES = 10 * SAMPLE_RATE   # ChatterboxTurboTTS.DEC_COND_LEN
ENC_COND_SAMPLES = 15 * 16_000        # ChatterboxTurboTTS.ENC_COND_LEN (16 kHz)
MIN_REFERENCE_S = 5.0                 # upstream asserts a prompt longer than 5 s

HUB_REPO_DEFAULT = "ResembleAI/chatterbox-turbo"
REQUIRED_FILES: Dict[str, str] = {
    "ve.safetensors": "voice encoder weights",
    "t3_turbo_v1.safetensors": "T3 speech-token model weights",
    "s3gen_meanflow.safetensors": "S3Gen decoder and vocoder weights",
    "vocab.json": "tokenizer vocabulary",
    "merges.txt": "tokenizer merges",
    "tokenizer_config.json": "tokenizer configuration",
}
OPTIONAL_FILES = ("added_tokens.json", "special_tokens_map.json", "conds.pt")
HUB_PATTERNS = sorted(set(REQUIRED_FILES) | {"*.json", "conds.pt"})
# the module whose weights a state-dict error is about -> the file that holds them
_STATE_DICT_FILES = (("VoiceEncoder", "ve.safetensors"), ("T3", "t3_turbo_v1.safetensors"),
                     ("S3Gen", "s3gen_meanflow.safetensors"), ("S3Token2Wav", "s3gen_meanflow.safetensors"))


def fetch_hint(repo: str = HUB_REPO_DEFAULT) -> str:
    return (f"fetch the weights once on a machine with internet: `huggingface-cli download {repo} --local-dir "
            f"<folder>` (huggingface_hub >= 1.0: `hf download {repo} --local-dir <folder>`), copy <folder> to this "
            f"machine and set the parameter model_dir to it")


# ------------------------------------------------------------------------------------------------ checkpoint files
def check_checkpoint(folder: Path, repo: str = HUB_REPO_DEFAULT) -> None:
    """Raise EngineLoadError naming each missing file, or the first damaged one, of a Turbo checkpoint folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineLoadError(f"model_dir '{folder}' does not exist or is not a folder; {fetch_hint(repo)}")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        what = ", ".join(f"{name} ({REQUIRED_FILES[name]})" for name in missing)
        raise EngineLoadError(f"the Chatterbox Turbo checkpoint in '{folder}' is missing {what}; {fetch_hint(repo)}")

    def damaged(name: str, exc: BaseException) -> EngineLoadError:
        return EngineLoadError(f"{name} in '{folder}' is damaged or incomplete ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); delete it and fetch it again: {fetch_hint(repo)}")

    from safetensors import safe_open
    for name in ("ve.safetensors", "t3_turbo_v1.safetensors", "s3gen_meanflow.safetensors"):
        path = folder / name
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            if not keys:
                raise ValueError("the file holds no tensors")
            # the header checks offsets against the file size; also make sure the data is really there
            size = path.stat().st_size
            if size < 1024:
                raise ValueError(f"only {size} bytes")
        except Exception as exc:  # noqa: BLE001 - any reader failure means "damaged"
            raise damaged(name, exc) from exc
    for name in ("vocab.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or (name == "vocab.json" and not data):
                raise ValueError("not a JSON object with entries")
        except Exception as exc:  # noqa: BLE001
            raise damaged(name, exc) from exc
    try:
        text = (folder / "merges.txt").read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
    except Exception as exc:  # noqa: BLE001
        raise damaged("merges.txt", exc) from exc
    conds = folder / "conds.pt"
    if conds.exists():
        try:
            import torch
            data = torch.load(str(conds), map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or "t3" not in data or "gen" not in data:
                raise ValueError("not a saved Conditionals (keys t3, gen)")
        except Exception as exc:  # noqa: BLE001
            raise damaged("conds.pt", exc) from exc


def _explain_load_error(exc: BaseException, folder: Path, repo: str) -> EngineLoadError:
    """Turn an exception from from_local into a message that names the file involved."""
    msg = str(exc)
    for cls_name, filename in _STATE_DICT_FILES:
        if f"state_dict for {cls_name}" in msg or f"state_dict for Tiny{cls_name}" in msg:
            first = msg.splitlines()[0] if msg else type(exc).__name__
            return EngineLoadError(
                f"{filename} in '{folder}' does not match the Chatterbox Turbo architecture ({first[:300]}); is this "
                f"the chatterbox-turbo checkpoint? {fetch_hint(repo)}")
    if "tokenizer" in msg.lower() or type(exc).__name__ in ("OSError", "EnvironmentError"):
        return EngineLoadError(f"the tokenizer files in '{folder}' could not be loaded ({type(exc).__name__}: "
                               f"{msg[:300]}); {fetch_hint(repo)}")
    return EngineLoadError(f"Chatterbox Turbo could not load from '{folder}': {type(exc).__name__}: {msg[:400]}")


# ------------------------------------------------------------------------------------------------ small helpers
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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


def _tensor_bytes(obj: Any, seen: Optional[set] = None) -> int:
    """Bytes held by the tensors inside a Conditionals / T3Cond / dict / list (each storage counted once)."""
    import torch
    seen = set() if seen is None else seen
    if torch.is_tensor(obj):
        key = (obj.device.type, obj.untyped_storage().data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return obj.untyped_storage().nbytes()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(_tensor_bytes(v, seen) for v in vars(obj).values())
    return 0


def _mix_seed(*parts: int) -> int:
    """A 63-bit seed derived from several integers (splitmix64 steps): different inputs, unrelated streams."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) & 0xFFFFFFFFFFFFFFFF
        x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 31
    return x & 0x7FFFFFFFFFFFFFFF


def _deterministic_cudnn():
    """cuDNN flags with deterministic=True (the others unchanged) for the block: same seed, same audio on CUDA."""
    import torch
    cudnn = torch.backends.cudnn
    if cudnn.deterministic or not torch.cuda.is_available():
        return contextlib.nullcontext()
    import inspect
    current = {}
    for name in inspect.signature(cudnn.flags).parameters:  # keep every other flag as it is (they vary by version)
        try:
            current[name] = getattr(cudnn, name)
        except Exception:  # noqa: BLE001 - a flag without a readable attribute keeps its default
            pass
    current["deterministic"] = True
    return cudnn.flags(**current)


def _crossfade(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """new[:len(old)] blended from `old` into `new` with complementary raised-cosine weights (sum 1)."""
    n = min(len(old), len(new))
    if n <= 0:
        return new
    fade_in = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
    out = new.copy()
    out[:n] = old[:n] * (1.0 - fade_in) + new[:n] * fade_in
    return out


class _WatermarkStream:
    """Applies a whole-signal watermarker to audio that arrives in parts, without seams.

    Each call watermarks the not yet emitted audio plus `left` samples of context before it and everything after
    it, emits all but the last `hold` samples, and cross-fades the start of what it emits with the version of the
    same samples that the previous call computed (then at the right edge of its window).
    """

    def __init__(self, apply, sample_rate: int, left_s: float = 0.25, hold_s: float = 0.1, fade_s: float = 0.01):
        self.apply = apply
        self.left = int(left_s * sample_rate)
        self.hold = int(hold_s * sample_rate)
        self.fade = int(fade_s * sample_rate)
        self.min_window = int(0.2 * sample_rate)  # Perth's STFT (2048 points at 32 kHz) needs some length
        self.buf = np.zeros(0, dtype=np.float32)   # raw audio from absolute sample `offset` on
        self.offset = 0
        self.done = 0                              # absolute samples emitted
        self.prev = np.zeros(0, dtype=np.float32)  # previous call's watermarked version of samples [done, ...)

    def _watermark(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        padded = np.concatenate([x, np.zeros(self.min_window - n, dtype=np.float32)]) if n < self.min_window else x
        y = np.asarray(self.apply(padded), dtype=np.float32).reshape(-1)
        if len(y) < n:  # resampling 24 -> 32 -> 24 kHz may lose a sample
            y = np.concatenate([y, padded[len(y):n]])
        return y[:n]

    def push(self, samples: np.ndarray, final: bool) -> np.ndarray:
        self.buf = np.concatenate([self.buf, samples.astype(np.float32, copy=False)])
        total = self.offset + len(self.buf)
        end = total if final else total - self.hold
        if end <= self.done or (not final and end - self.done < self.fade):
            return np.zeros(0, dtype=np.float32)
        start = max(self.offset, self.done - self.left)
        out = self._watermark(self.buf[start - self.offset:])
        seg = out[self.done - start:end - start]
        if self.prev.size:
            seg = _crossfade(self.prev[:self.fade], seg)
        self.prev = out[end - start:]
        self.done = end
        keep_from = max(self.offset, self.done - self.left)
        self.buf = self.buf[keep_from - self.offset:]
        self.offset = keep_from
        return seg


@dataclass
class _CacheEntry:
    conds: Any
    stamp: Tuple[int, int]
    nbytes: int
    seconds: float


# ------------------------------------------------------------------------------------------------ the engine
class ChatterboxTurboEngine(Engine):
    name = "chatterbox_turbo"
    can_clone = True

    # streaming schedule (speech tokens): first decode after this many, then chunks doubling up to the max;
    # stream_first_tokens <= 0 decodes each piece once, when T3 is done
    stream_first_tokens = 25
    stream_max_tokens = 200
    CROSSFADE_FRAMES = 8      # vocoder overlap between chunks (160 ms), as CosyVoice's streaming HiFT cache
    CONTEXT_FRAMES = 4        # extra mel frames of left context for the vocoder's convolutions
    NOISE_BLOCK_FRAMES = 50   # vocoder noise is drawn in blocks seeded by absolute position
    CFM_STEPS = 2             # upstream generate() uses n_cfm_timesteps=2 with the meanflow decoder

    def __init__(self, config: Dict[str, Any]):
        super().__init__(config)
        self.sample_rate = SAMPLE_RATE
        self._model = None
        self._builtin = None          # Conditionals of conds.pt, prepared (T3 dtype, prompt embedding)
        self._lock = threading.RLock()         # model work (T3 steps, decoding, conditioning)
        self._cache_lock = threading.Lock()    # the voice cache only: never held during model work
        self._cache: "OrderedDict[str, _CacheEntry]" = OrderedDict()
        self._cache_stats = {"hits": 0, "misses": 0, "evictions": 0, "refreshes": 0, "uncached": 0}
        self.device = ""
        self.dtype = ""
        self.model_dir = ""
        self.model_source = ""
        self.tiny = False
        self.load_seconds = 0.0
        self.jetson_active = False
        self._jetson_applied_by_us = False
        self.fast = None              # turbo_fast.FastT3 when the fast decode path is active
        self.fast_reason = "not loaded"
        self.last_tokens = 0          # speech tokens of the last piece (for tests and the bench)
        self.last_chunks = 0          # decode steps of the last piece
        self.last_first_chunk_s: Optional[float] = None

    # -- configuration -------------------------------------------------------------------------------------------
    def _cfg(self, key: str, default: Any) -> Any:
        value = self.config.get(key, default)
        return default if value is None else value

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
                import chatterbox.tts_turbo as tts_turbo
            except ImportError as exc:
                raise EngineLoadError(f"Chatterbox is not installed ({exc}); run `make setup` (installs "
                                      f"chatterbox-tts and its dependencies into .venv)") from exc
            except Exception as exc:  # noqa: BLE001 - e.g. perth without pkg_resources
                raise EngineLoadError(f"Chatterbox could not be imported: {type(exc).__name__}: {exc}") from exc
            threads = int(self._cfg("cpu_threads", 0) or 0)
            if threads > 0:
                torch.set_num_threads(threads)
            device = self.resolve_device(str(self._cfg("device", "auto")))
            dtype = self.resolve_dtype(str(self._cfg("dtype", "auto")), device)
            repo = str(self._cfg("hub_repo", HUB_REPO_DEFAULT)) or HUB_REPO_DEFAULT
            folder = self._locate_checkpoint(repo)
            check_checkpoint(folder, repo)
            from . import tiny_turbo
            try:
                arch = tiny_turbo.read_arch(folder)
            except Exception as exc:  # noqa: BLE001
                raise EngineLoadError(f"{tiny_turbo.ARCH_FILE} in '{folder}' is damaged: {exc}") from exc
            self._apply_jetson_patches()
            try:
                self._load_model(tts_turbo, tiny_turbo, folder, arch, device, dtype, repo)
            except BaseException:
                self._remove_jetson_patches()  # a failed configure leaves the process as it found it
                raise
            self.model_dir = str(folder)
            self.tiny = arch is not None
            self._warm_up()
            self._setup_fast_path()
            self.load_seconds = time.monotonic() - t0

    def _load_model(self, tts_turbo, tiny_turbo, folder: Path, arch, device: str, dtype, repo: str) -> None:
        patches = tiny_turbo.tiny_patches(arch) if arch is not None else contextlib.nullcontext()
        try:
            with patches:
                model = tts_turbo.ChatterboxTurboTTS.from_local(folder, device)
        except EngineLoadError:
            raise
        except Exception as exc:  # noqa: BLE001
            self._release_partial_load(device)
            if "out of memory" in str(exc).lower():
                raise EngineLoadError(f"out of memory while loading Chatterbox Turbo on {device}: {exc}; free "
                                      f"GPU memory (start this node first) or use dtype float16") from exc
            raise _explain_load_error(exc, folder, repo) from exc
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
        """After a failed load: whatever from_local had put on the GPU goes back before configure answers."""
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
        """Use turbo_fast.FastT3 for T3 sampling when asked for, supported, and equal to upstream on a greedy check."""
        self.fast = None
        if not bool(self._cfg("fast_path", True)):
            self.fast_reason = "off (parameter fast_path)"
            return
        try:
            from .turbo_fast import FastT3
        except Exception as exc:  # noqa: BLE001 - the reference loop always works
            self.fast_reason = f"unavailable ({type(exc).__name__}: {exc})"
            return
        try:
            model = self._model
            ok, why = FastT3.supported(model.t3)
            if not ok:
                self.fast_reason = f"unsupported: {why}"
                return
            fast = FastT3(model.t3, max_voices=int(self._cfg("voice_cache.max_voices", 8)))
            cond = self._builtin.t3 if self._builtin is not None else self._dummy_t3_cond()
            text = self.tokenize("The quick brown fox jumps over the lazy dog.")
            check = fast.self_check(cond, text, n_tokens=32)
            fast.clear()
            if not check.get("ok"):
                self.fast_reason = f"greedy equality check failed ({check}); using the reference loop"
                return
            if not self._fast_path_reproducible(fast, cond, text) or not self._speaks_reproducibly(fast):
                fast.clear()
                self.fast_reason = ("sampling with a fixed seed was not reproducible (the seed contract); using the "
                                    "reference loop")
                return
            fast.clear()
            self.fast = fast
            self.fast_reason = f"active (greedy check: {check.get('n')} tokens equal; seeded sampling reproducible)"
        except Exception as exc:  # noqa: BLE001
            self.fast = None
            self.fast_reason = f"failed to start ({type(exc).__name__}: {str(exc)[:200]}); using the reference loop"

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
            source = _FastTokenSource(self, fast, cond, text, GenerationSettings(seed=4321), 4321, 48, 8)
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
            cond = T3Cond(speaker_emb=torch.zeros(1, 256), cond_prompt_speech_tokens=torch.zeros(1, 8, dtype=torch.long),
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

    def _locate_checkpoint(self, repo: str) -> Path:
        model_dir = str(self._cfg("model_dir", "")).strip()
        if model_dir:
            self.model_source = "model_dir"
            return Path(model_dir).expanduser()
        self.model_source = f"hub:{repo}"
        return self._download(repo)

    def _download(self, repo: str) -> Path:
        """A complete hub snapshot: from the cache when there is one (offline), else downloaded with timeouts."""
        try:
            import huggingface_hub
            from huggingface_hub import constants as hf_constants
        except ImportError as exc:
            raise EngineLoadError(f"huggingface_hub is not installed, so hub_repo cannot be fetched; set model_dir "
                                  f"instead ({fetch_hint(repo)})") from exc
        timeout = float(self._cfg("hub_timeout_s", 30.0))
        cache_dir = str(self._cfg("hub_cache_dir", "")).strip() or None
        token = os.environ.get("HF_TOKEN") or None
        kwargs = dict(repo_id=repo, cache_dir=cache_dir, token=token, allow_patterns=HUB_PATTERNS)
        where = cache_dir or hf_constants.HF_HUB_CACHE
        try:  # 1. a snapshot already in the cache loads without any network access
            path = Path(huggingface_hub.snapshot_download(local_files_only=True, **kwargs))
            if all((path / name).is_file() for name in REQUIRED_FILES):
                return path
        except Exception:  # noqa: BLE001 - not cached (or incomplete): go on to the network
            pass
        if hf_constants.HF_HUB_OFFLINE or str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in ("1", "true", "yes"):
            raise EngineLoadError(f"'{repo}' is not in the hub cache ({where}) and HF_HUB_OFFLINE is set, so it "
                                  f"cannot be downloaded; {fetch_hint(repo)}")
        self._probe_hub(huggingface_hub, repo, token, timeout)
        return self._snapshot_with_watchdog(huggingface_hub, hf_constants, kwargs, repo, timeout, where)

    @staticmethod
    def _probe_hub(huggingface_hub, repo: str, token: Optional[str], timeout: float) -> None:
        """Fail within ~timeout when the hub is unreachable or the repository is not accessible."""
        result: Dict[str, Any] = {}

        def probe() -> None:
            try:
                huggingface_hub.HfApi().model_info(repo, token=token, timeout=timeout)
                result["ok"] = True
            except BaseException as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
        thread.start()
        thread.join(timeout + 2.0)
        if thread.is_alive():
            raise EngineLoadError(f"the Hugging Face hub did not answer within {timeout:.0f} s (hub_timeout_s) while "
                                  f"looking up '{repo}'; check the network, or {fetch_hint(repo)}")
        exc = result.get("error")
        if exc is not None:
            kind = type(exc).__name__
            denied = kind in ("RepositoryNotFoundError", "GatedRepoError") or \
                (kind == "HfHubHTTPError" and any(code in str(exc) for code in ("401", "403")))
            if denied:
                raise EngineLoadError(f"hub repository '{repo}' was not found or needs access: set HF_TOKEN to a "
                                      f"token that can read it ({kind}: {str(exc)[:200]})") from exc
            raise EngineLoadError(f"could not reach the Hugging Face hub for '{repo}' ({kind}: {str(exc)[:200]}); "
                                  f"{fetch_hint(repo)}") from exc

    @staticmethod
    def _snapshot_with_watchdog(huggingface_hub, hf_constants, kwargs: Dict[str, Any], repo: str, timeout: float,
                                where: str) -> Path:
        """snapshot_download in a thread; fail when no byte arrives for max(3 * timeout, 60) s."""
        result: Dict[str, Any] = {}
        repo_cache = Path(where) / ("models--" + repo.replace("/", "--"))

        def download() -> None:
            try:
                result["path"] = huggingface_hub.snapshot_download(etag_timeout=timeout, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported below
                result["error"] = exc

        def cache_bytes() -> int:
            total = 0
            for root, _dirs, files in os.walk(repo_cache):
                for f in files:
                    try:
                        total += os.stat(os.path.join(root, f)).st_size
                    except OSError:
                        pass
            return total

        saved_timeout = hf_constants.HF_HUB_DOWNLOAD_TIMEOUT
        hf_constants.HF_HUB_DOWNLOAD_TIMEOUT = max(int(timeout), 1)  # per-read timeout, read at request time
        try:
            thread = threading.Thread(target=download, name="hub-download", daemon=True)
            thread.start()
            stall_limit = max(3.0 * timeout, 60.0)
            last_size, last_change = -1, time.monotonic()
            while thread.is_alive():
                thread.join(1.0)
                size = cache_bytes()
                if size != last_size:
                    last_size, last_change = size, time.monotonic()
                elif time.monotonic() - last_change > stall_limit:
                    raise EngineLoadError(f"downloading '{repo}' into {where} stalled for {stall_limit:.0f} s; "
                                          f"check the network, or {fetch_hint(repo)}")
        finally:
            hf_constants.HF_HUB_DOWNLOAD_TIMEOUT = saved_timeout
        if "error" in result:
            exc = result["error"]
            raise EngineLoadError(f"downloading '{repo}' failed ({type(exc).__name__}: {str(exc)[:300]}); "
                                  f"{fetch_hint(repo)}") from exc
        return Path(result["path"])

    def _apply_jetson_patches(self) -> None:
        mode = str(self._cfg("jetson_patches", "auto"))
        try:
            from .. import jetson_patches
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
                from .. import jetson_patches
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
            with self._cache_lock:
                self._cache.clear()
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
        with self._cache_lock:
            self._cache.clear()
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
        mb = 1024.0 * 1024.0
        with self._cache_lock:
            cache_bytes = sum(e.nbytes for e in self._cache.values())
            n_voices = len(self._cache)
        out.update({
            "device": self.device or str(self._cfg("device", "auto")),
            "dtype": self.dtype or str(self._cfg("dtype", "auto")),
            "model": self.model_dir,
            "model_dir": self.model_dir,
            "model_source": self.model_source,
            "hub_repo": str(self._cfg("hub_repo", HUB_REPO_DEFAULT)),
            "tiny_checkpoint": self.tiny,
            "builtin_voice": self._builtin is not None,
            "load_seconds": round(self.load_seconds, 3),
            "rss_mb": round(_rss_bytes() / mb, 1),
            "voice_cache_voices": n_voices,
            "voice_cache_mb": round(cache_bytes / mb, 3),
            "voice_cache_max_voices": int(self._cfg("voice_cache.max_voices", 8)),
            "voice_cache_max_mb": float(self._cfg("voice_cache.max_mb", 1024.0)),
            "voice_cache_hits": self._cache_stats["hits"],
            "voice_cache_misses": self._cache_stats["misses"],
            "voice_cache_evictions": self._cache_stats["evictions"],
            "fast_path": bool(self._cfg("fast_path", True)),
            "fast_path_active": self.fast is not None,
            "fast_path_state": self.fast_reason,
            "jetson_patches": str(self._cfg("jetson_patches", "auto")),
            "jetson_patches_active": self.jetson_active,
            "stream_first_tokens": self.stream_first_tokens,
            "last_first_chunk_s": self.last_first_chunk_s,
        })
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

    @staticmethod
    def _prepare_t3_cond(model, conds):
        """Cast T3's conditioning to T3's dtype and embed the prompt tokens once (upstream does it lazily)."""
        import torch
        t3 = model.t3
        dtype = t3.speech_head.weight.dtype
        cond = conds.t3
        for key, value in list(vars(cond).items()):
            if torch.is_tensor(value):
                value = value.to(device=t3.device)
                if value.is_floating_point():
                    value = value.to(dtype=dtype)
                setattr(cond, key, value)
        if cond.cond_prompt_speech_tokens is not None and cond.cond_prompt_speech_emb is None:
            cond.cond_prompt_speech_emb = t3.speech_emb(cond.cond_prompt_speech_tokens)
        return conds

    def prepare_voice(self, voice_path: str) -> None:
        self._voice_conds(voice_path)

    def _voice_conds(self, voice_path: Optional[str]):
        """The conditioning for a voice file (cached), or the built-in voice for None."""
        self._require_model()
        if not voice_path:
            if self._builtin is None:
                raise VoiceError("this checkpoint has no built-in voice (no conds.pt); name a voice")
            return self._builtin
        key = os.path.realpath(voice_path)
        stamp = self._stamp(key, voice_path)
        with self._cache_lock:
            entry = self._cache.get(key)
            if entry is not None and entry.stamp == stamp:
                self._cache.move_to_end(key)
                self._cache_stats["hits"] += 1
                return entry.conds
            if entry is not None:  # the file changed since it was conditioned
                self._cache_stats["refreshes"] += 1
                del self._cache[key]
                self._forget_fast(entry.conds)
            self._cache_stats["misses"] += 1
        t0 = time.monotonic()
        with self._lock:
            conds = self._compute_conds(key)
        entry = _CacheEntry(conds, stamp, _tensor_bytes(conds), time.monotonic() - t0)
        with self._cache_lock:
            self._store(key, entry)
        return conds

    @staticmethod
    def _stamp(key: str, shown: str) -> Tuple[int, int]:
        try:
            st = os.stat(key)
        except OSError as exc:
            raise VoiceError(f"voice file '{shown}' cannot be read: {exc.strerror or exc}") from None
        return (st.st_mtime_ns, st.st_size)

    def _store(self, key: str, entry: _CacheEntry) -> None:
        max_voices = max(1, int(self._cfg("voice_cache.max_voices", 8)))
        max_bytes = float(self._cfg("voice_cache.max_mb", 1024.0)) * 1024 * 1024
        if entry.nbytes > max_bytes:
            self._cache_stats["uncached"] += 1  # used for this request, not kept
            self._evict(max_voices, max_bytes)
            return
        self._cache[key] = entry
        self._evict(max_voices, max_bytes)

    def _evict(self, max_voices: int, max_bytes: float) -> None:
        while self._cache and (len(self._cache) > max_voices or
                               sum(e.nbytes for e in self._cache.values()) > max_bytes):
            _key, old = self._cache.popitem(last=False)
            self._cache_stats["evictions"] += 1
            self._forget_fast(old.conds)

    def _forget_fast(self, conds) -> None:
        fast = self.fast
        if fast is not None:
            try:
                fast.forget_voice(conds.t3)
            except Exception:  # noqa: BLE001 - its own LRU bounds it anyway
                pass

    def cached_voices(self) -> List[str]:
        """Resolved paths of the cached voices, least recently used first."""
        with self._cache_lock:
            return list(self._cache)

    def _load_reference(self, path: str) -> np.ndarray:
        """The reference at 24 kHz, float32 mono, or VoiceError saying why it cannot be used."""
        import librosa
        import soundfile as sf
        from ..voices import check_reference
        import io
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise VoiceError(f"voice file '{path}' cannot be read: {exc.strerror or exc}") from None
        check_reference(data)  # readable, longer than 5 s, not silent (raises VoiceError with the reason)
        audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        wav = audio.mean(axis=1)
        if sr != SAMPLE_RATE:
            wav = librosa.resample(wav, orig_sr=sr, target_sr=SAMPLE_RATE)  # librosa.load's default (soxr_hq)
        wav = np.ascontiguousarray(wav, dtype=np.float32)
        if len(wav) / SAMPLE_RATE <= MIN_REFERENCE_S:
            raise VoiceError(f"reference is {len(wav) / SAMPLE_RATE:.1f} s long; a voice needs more than "
                             f"{MIN_REFERENCE_S:.0f} s of clear speech")
        return wav

    def _compute_conds(self, path: str):
        """Upstream's prepare_conditionals, under inference_mode, with the reference validated first."""
        import librosa
        import torch
        from chatterbox.models.t3.modules.cond_enc import T3Cond
        from chatterbox.tts_turbo import Conditionals
        model = self._require_model()
        wav = self._load_reference(path)
        wav = np.asarray(model.norm_loudness(wav, SAMPLE_RATE), dtype=np.float32)  # float64 under numpy 2
        ref_16k = librosa.resample(wav, orig_sr=SAMPLE_RATE, target_sr=16_000).astype(np.float32)
        with torch.inference_mode():
            gen = model.s3gen.embed_ref(wav[:DEC_COND_SAMPLES], SAMPLE_RATE, device=model.device)
            plen = model.t3.hp.speech_cond_prompt_len
            tokens, _ = model.s3gen.tokenizer.forward([ref_16k[:ENC_COND_SAMPLES]], max_len=plen)
            tokens = torch.atleast_2d(tokens).to(model.device)
            ve = torch.from_numpy(model.ve.embeds_from_wavs([ref_16k], sample_rate=16_000))
            ve = ve.mean(axis=0, keepdim=True).to(model.device)
            t3_cond = T3Cond(speaker_emb=ve, cond_prompt_speech_tokens=tokens,
                             emotion_adv=0.5 * torch.ones(1, 1, 1)).to(device=model.device)
            conds = self._prepare_t3_cond(model, Conditionals(t3_cond, gen))
        if conds.t3.cond_prompt_speech_tokens.numel() == 0:
            raise VoiceError("the reference produced no speech tokens; record clear speech")
        return conds

    # -- generation ----------------------------------------------------------------------------------------------
    def max_tokens_for(self, text: str) -> int:
        """Speech-token cap for one piece: upstream's 1000, tighter for short text so a model that never stops
        cannot babble for 40 s after 'Hi.' (~6 tokens per character is 3-4x normal speech)."""
        return int(min(MAX_SPEECH_TOKENS, 150 + 6 * len(text)))

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
        text_tokens = self.tokenize(text)
        cap = self.max_tokens_for(text)
        first = int(self.stream_first_tokens)
        fast = self.fast
        if fast is not None:
            tokens: Any = _FastTokenSource(self, fast, conds.t3, text_tokens, settings, seed, cap, first)
        else:
            tokens = _TokenSampler(self, model, conds.t3, text_tokens, settings, seed, cap)
        decoder = _StreamDecoder(self, model, conds.gen, seed, settings.watermark)
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
            self.fast_reason = f"disabled after an error ({type(exc).__name__}: {str(exc)[:200]})"
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
        if part.size:
            if self.last_first_chunk_s is None:
                self.last_first_chunk_s = time.monotonic() - t_start
            yield part


class _FastTokenSource:
    """The same interface as _TokenSampler, backed by turbo_fast.FastT3.stream_tokens."""

    def __init__(self, engine: ChatterboxTurboEngine, fast, t3_cond, text_tokens, settings: GenerationSettings,
                 seed: int, cap: int, first_chunk: int):
        import torch
        self.engine = engine
        self.cap = max(1, int(cap))
        generator = torch.Generator(device=fast.device).manual_seed(_mix_seed(seed, 1))
        self._it = fast.stream_tokens(t3_cond, text_tokens, settings, generator=generator,
                                      max_new_tokens=self.cap - 1, first_chunk=first_chunk if first_chunk > 0 else None)
        self._chunks: List[Any] = []
        self.count = 0
        self.done = False

    def run(self, until: int, cancel: threading.Event) -> None:
        until = min(until, self.cap)
        with self.engine._lock:
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


class _TokenSampler:
    """T3's Turbo sampling loop (upstream `T3.inference_turbo`), resumable so that audio can be decoded meanwhile.

    Same logits processors in the same order as upstream; sampling draws from a private generator.
    """

    def __init__(self, engine: ChatterboxTurboEngine, model, t3_cond, text_tokens, settings: GenerationSettings,
                 seed: int, cap: int):
        import torch
        from transformers.generation.logits_process import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor,
                                                            TemperatureLogitsWarper, TopKLogitsWarper,
                                                            TopPLogitsWarper)
        self.engine = engine
        self.t3 = model.t3
        self.cond = t3_cond
        self.text_tokens = text_tokens
        self.cap = max(1, int(cap))
        procs = LogitsProcessorList()
        if settings.temperature > 0 and settings.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(float(settings.temperature)))
        if settings.top_k > 0:
            procs.append(TopKLogitsWarper(int(settings.top_k)))
        if settings.top_p < 1.0:
            procs.append(TopPLogitsWarper(float(settings.top_p)))
        if settings.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty)))
        self.procs = procs
        self.generator = torch.Generator(device=self.t3.device).manual_seed(_mix_seed(seed, 1))
        self.stop = int(self.t3.hp.stop_speech_token)
        self.tokens: List[Any] = []     # (1, 1) tensors
        self.past = None
        self.current = None
        self.done = False

    @property
    def count(self) -> int:
        return len(self.tokens)

    def _sample(self, input_ids, logits):
        import torch
        processed = self.procs(input_ids, logits.float())
        if bool(torch.all(processed == -float("inf"))):
            return None
        probs = torch.softmax(processed, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=self.generator)

    def run(self, until: int, cancel: threading.Event) -> None:
        """Sample until `until` tokens exist, the stop token comes, the cap is reached or cancel is set."""
        import torch
        until = min(until, self.cap)
        with self.engine._lock, torch.inference_mode():
            t3 = self.t3
            if self.past is None and not self.done:
                start = t3.hp.start_speech_token * torch.ones_like(self.text_tokens[:, :1])
                embeds, _ = t3.prepare_input_embeds(t3_cond=self.cond, text_tokens=self.text_tokens,
                                                    speech_tokens=start, cfg_weight=0.0)
                out = t3.tfmr(inputs_embeds=embeds, use_cache=True)
                self.past = out.past_key_values
                logits = t3.speech_head(out[0][:, -1:])
                if not self._accept(self._sample(start, logits[:, -1, :])):
                    return
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


class _StreamDecoder:
    """Speech tokens -> 24 kHz audio, incrementally, with seamless joins (see the module docstring)."""

    def __init__(self, engine: ChatterboxTurboEngine, model, ref: Dict[str, Any], seed: int, watermark: bool):
        import torch
        self.engine = engine
        self.model = model
        self.s3gen = model.s3gen
        self.device = self.s3gen.device
        self.ref = ref
        self.seed = seed
        flow = self.s3gen.flow
        self.prompt_frames = int(ref["prompt_feat"].shape[1])
        bank_frames = self.prompt_frames + FRAMES_PER_TOKEN * (MAX_SPEECH_TOKENS + 3 + 2)
        g = torch.Generator(device=self.device).manual_seed(_mix_seed(seed, 2))
        # the flow's starting noise, one value per absolute frame position, fixed for the whole piece
        self.z = torch.randn(1, flow.output_size, bank_frames, generator=g, device=self.device,
                             dtype=torch.float32)
        sine = self.s3gen.mel2wav.m_source.l_sin_gen
        phase = (torch.rand(1, sine.harmonic_num + 1, 1, generator=g, device=self.device) * 2 - 1) * math.pi
        phase[:, 0, :] = 0
        self.phase_vec = phase
        self.trim_fade = self.s3gen.trim_fade.detach().float().cpu().numpy()
        self.emitted = 0                      # frames whose audio has been handed out
        self.tail = np.zeros(0, np.float32)  # audio of frames [emitted, tail_end) from the previous step
        self.src_phase: Optional[Any] = None  # sine phase (cycles) at the start of the next vocoder window
        self.src_phase_frame = 0
        self.wm = _WatermarkStream(self._watermark, SAMPLE_RATE) if watermark else None
        self.finished = False

    def _watermark(self, x: np.ndarray) -> np.ndarray:
        import torch
        # Perth runs its network with autograd on: outside inference_mode every call leaks ~6 MB of host RAM
        with torch.inference_mode():
            return self.model.watermarker.apply_watermark(x, sample_rate=SAMPLE_RATE)

    # the two model stages, usable on their own (tests compare them with upstream)
    def flow_mel(self, tokens, finalize: bool, z=None):
        """S3Gen's CausalMaskedDiffWithXvec.inference + meanflow Euler steps, for B=1 and this piece's noise."""
        import torch
        import torch.nn.functional as F
        from chatterbox.models.s3gen.utils.mask import make_pad_mask
        flow = self.s3gen.flow
        ref = self.ref
        with torch.inference_mode():
            emb = F.normalize(torch.atleast_2d(ref["embedding"]).to(self.device, torch.float32), dim=1)
            emb = flow.spk_embed_affine_layer(emb)
            prompt_token = torch.atleast_2d(ref["prompt_token"]).to(self.device).long()
            prompt_feat = torch.atleast_3d(ref["prompt_feat"]).to(self.device, torch.float32)
            tokens = torch.atleast_2d(tokens).to(self.device).long()
            token = torch.cat([prompt_token, tokens], dim=1)
            token_len = torch.tensor([token.shape[1]], device=self.device)
            mask = (~make_pad_mask(token_len)).unsqueeze(-1).to(emb)
            h, _ = flow.encoder(flow.input_embedding(token) * mask, token_len)
            if not finalize:
                h = h[:, :-flow.pre_lookahead_len * flow.token_mel_ratio]
            n_prompt = prompt_feat.shape[1]
            n_total = h.shape[1]
            h = flow.encoder_proj(h)
            cond = torch.zeros([1, n_total, flow.output_size], device=self.device, dtype=h.dtype)
            cond[:, :n_prompt] = prompt_feat
            cond = cond.transpose(1, 2)
            mel_mask = torch.ones(1, 1, n_total, device=self.device, dtype=h.dtype)
            x = (self.z if z is None else z)[:, :, :n_total]
            mu = h.transpose(1, 2).contiguous()
            est = flow.decoder.estimator
            dtype = est.dtype
            x, mu, mel_mask, emb_c, cond = (t.to(dtype) for t in (x, mu, mel_mask, emb, cond))
            t_span = torch.linspace(0, 1, self.engine.CFM_STEPS + 1, device=self.device, dtype=dtype)
            for t, r in zip(t_span[:-1], t_span[1:]):
                t, r = t[None], r[None]
                dxdt = est.forward(x, mask=mel_mask, mu=mu, t=t, spks=emb_c, cond=cond, r=r)
                x = x + (r - t) * dxdt
            return x.float()[:, :, n_prompt:]

    def vocode(self, mel, start_frame: int, phase0=None, phase_at_frame: Optional[int] = None,
               noise=None):
        """HiFT inference for mel frames [start_frame, start_frame + T) with a sine excitation whose phase starts
        at `phase0` (cycles per harmonic; None = 0 as upstream). Returns (audio, phase at `phase_at_frame`)."""
        import torch
        hift = self.s3gen.mel2wav
        src_mod = hift.m_source
        sine = src_mod.l_sin_gen
        with torch.inference_mode():
            mel = mel.to(self.device, torch.float32)
            f0 = hift.f0_predictor(mel)
            f0_up = hift.f0_upsamp(f0[:, None])  # (1, 1, samples)
            harmonics = torch.arange(1, sine.harmonic_num + 2, device=self.device, dtype=torch.float32)
            cycles = torch.cumsum(f0_up * harmonics.view(1, -1, 1) / sine.sampling_rate, dim=-1)
            if phase0 is not None:
                cycles = cycles + phase0.view(1, -1, 1)
            theta = 2 * np.pi * (cycles % 1)
            waves = sine.sine_amp * torch.sin(theta + self.phase_vec)
            uv = (f0_up > sine.voiced_threshold).float()
            noise_amp = uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3
            if noise is None:
                noise = self._noise(start_frame, waves.shape[-1])
            waves = waves * uv + noise_amp * noise
            src = src_mod.l_tanh(src_mod.l_linear(waves.transpose(1, 2))).transpose(1, 2)
            with _deterministic_cudnn():  # HiFT's transposed convolutions vary run to run on CUDA otherwise
                audio = hift.decode(x=mel, s=src)
            phase_out = None
            if phase_at_frame is not None:
                idx = (phase_at_frame - start_frame) * SAMPLES_PER_FRAME
                phase_out = cycles[0, :, idx - 1] % 1 if idx > 0 else (phase0 if phase0 is not None else None)
            return audio[0].float().cpu().numpy(), phase_out

    def _noise(self, start_frame: int, n_samples: int):
        """Vocoder noise for samples from `start_frame` on, identical for an absolute position in every step."""
        import torch
        sine = self.s3gen.mel2wav.m_source.l_sin_gen
        harmonics = sine.harmonic_num + 1
        block = self.engine.NOISE_BLOCK_FRAMES
        first = start_frame // block
        last = (start_frame * SAMPLES_PER_FRAME + n_samples - 1) // (block * SAMPLES_PER_FRAME)
        parts = []
        for b in range(first, last + 1):
            g = torch.Generator(device=self.device).manual_seed(_mix_seed(self.seed, 3, b))
            parts.append(torch.randn(1, harmonics, block * SAMPLES_PER_FRAME, generator=g, device=self.device))
        noise = torch.cat(parts, dim=-1)
        off = (start_frame - first * block) * SAMPLES_PER_FRAME
        return noise[:, :, off:off + n_samples]

    def step(self, tokens, final: bool) -> np.ndarray:
        """Decode the tokens so far; returns the audio that is ready (everything when final)."""
        import torch
        if self.finished:
            return np.zeros(0, np.float32)
        engine = self.engine
        overlap, context = engine.CROSSFADE_FRAMES, engine.CONTEXT_FRAMES
        n = int(tokens.shape[-1])
        if not final and n <= self.s3gen.flow.pre_lookahead_len + overlap // FRAMES_PER_TOKEN:
            return np.zeros(0, np.float32)
        if final:
            silence = torch.full((3,), SILENCE_TOKEN, dtype=torch.long, device=tokens.device)
            tokens = torch.cat([tokens.long(), silence])
        with engine._lock:
            mel = self.flow_mel(tokens, finalize=final)
            frames = int(mel.shape[-1])
            keep = frames if final else frames - overlap  # frames handed out after this step
            if keep <= self.emitted:
                return np.zeros(0, np.float32)
            start = max(0, self.emitted - context)
            phase0 = self.src_phase if (self.src_phase is not None and self.src_phase_frame == start) else None
            next_start = max(0, keep - context)
            audio, phase_next = self.vocode(mel[:, :, start:], start, phase0=phase0,
                                            phase_at_frame=None if final else next_start)
        audio = audio[(self.emitted - start) * SAMPLES_PER_FRAME:]  # from frame `emitted` on
        # upstream silences the first 20 ms and fades in over the next 20 ms ("spillover" from the reference)
        abs0 = self.emitted * SAMPLES_PER_FRAME
        if abs0 < len(self.trim_fade):
            k = min(len(self.trim_fade) - abs0, len(audio))
            audio = audio.copy()
            audio[:k] *= self.trim_fade[abs0:abs0 + k]
        if self.tail.size:
            audio = _crossfade(self.tail, audio)
        cut = (keep - self.emitted) * SAMPLES_PER_FRAME
        out, self.tail = audio[:cut], audio[cut:]
        self.emitted = keep
        self.src_phase, self.src_phase_frame = phase_next, next_start
        if final:
            self.finished = True
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self.wm is not None:
            out = self.wm.push(out, final)
        return out
