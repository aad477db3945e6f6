"""Where the engine runs: the device and dtype a parameter names, the checks made before loading (the caching
allocator the fast path needs, the Jetson patches), and giving memory back (host heap, CUDA cache)."""
from __future__ import annotations

import gc
import logging
import os
from typing import Optional

from ...engine import EngineLoadError
from ...status import CudaStatus

log = logging.getLogger(__name__)

_LIBC_TRIM = None
_MB = 1024.0 * 1024.0


def resolve_device(spec: str) -> str:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> the torch device string; EngineLoadError names a bad or absent one."""
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


def resolve_dtype(spec: str, device: str):
    """'auto' (float16 on CUDA, float32 on CPU) or a dtype name -> the torch dtype of T3."""
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


def apply_jetson_patches(mode: str) -> bool:
    """Apply the Jetson patches as parameter jetson_patches says; True when this call applied them (then
    remove_jetson_patches() undoes them). A bad mode is a load error, never a half-loaded engine."""
    try:
        from ... import jetson_patches
    except ImportError:
        return False
    try:
        return bool(jetson_patches.apply(mode))
    except Exception as exc:  # noqa: BLE001
        raise EngineLoadError(f"jetson_patches='{mode}': {exc}") from exc


def remove_jetson_patches() -> None:
    try:
        from ... import jetson_patches
        jetson_patches.remove()
    except Exception:  # noqa: BLE001 - the process goes on as it can
        log.debug("removing the Jetson patches failed", exc_info=True)


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


def release(device: str) -> None:
    """Collect garbage and give the CUDA cache back (after an unload, a failed load or an out-of-memory error)."""
    gc.collect()
    if device.startswith("cuda"):
        import torch
        torch.cuda.empty_cache()


def cuda_status(device: str) -> Optional[CudaStatus]:
    """The CUDA device's name and its allocator's figures (None on the CPU or when torch cannot say)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch
        dev = torch.device(device)
        return CudaStatus(device_name=torch.cuda.get_device_name(dev),
                          allocated_mb=round(torch.cuda.memory_allocated(dev) / _MB, 1),
                          reserved_mb=round(torch.cuda.memory_reserved(dev) / _MB, 1),
                          peak_mb=round(torch.cuda.max_memory_allocated(dev) / _MB, 1))
    except Exception:  # noqa: BLE001 - status must never fail
        return None
