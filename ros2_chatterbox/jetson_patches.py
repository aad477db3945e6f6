"""The cuFFT workaround that Chatterbox needs on NVIDIA Jetson (Orin, JetPack 6): FFT routing, as explicit functions.

Nothing happens at import time: this module imports with the standard library only (torch is imported when a
function needs it, chatterbox never). The engine calls :func:`apply` with the ``jetson_patches`` parameter
(``auto`` | ``on`` | ``off``); the environment variable ``CHATTERBOX_JETSON_PATCHES`` overrides that parameter,
so a container can be switched without editing a parameter file.

FFT routing
    Orin's cuFFT fails on some non-power-of-two transform sizes (``CUFFT_INTERNAL_ERROR``), and the SBSA cuFFT
    that NVIDIA's generic ARM images carry fails on all of them. Chatterbox runs ``torch.stft`` with n_fft=400
    (S3 tokenizer) and 1920 (S3Gen mel), and ``torch.stft``/``torch.istft`` with n_fft=16 (HiFT vocoder).
    :func:`apply` wraps ``torch.stft``, ``torch.istft``, ``torch.fft.rfft``, ``torch.fft.irfft`` (and the
    ``Tensor.stft``/``Tensor.istft`` methods, and ``torch.functional.stft``/``istft`` where the functions are
    defined) so that a CUDA tensor whose FFT length is not a power of two is computed on the CPU and the result
    moved back to the tensor's device. Powers of two stay on the GPU, CPU tensors are never touched. The
    reference Jetson container moved *every* CUDA FFT to the CPU; the vocoder's 16-point transforms run on every
    utterance, so keeping them on the GPU saves two device round trips per chunk.

    Chatterbox looks these functions up as module attributes at call time (``torch.stft(...)``), which is why
    patching the attributes of ``torch`` and ``torch.fft`` is enough. Code that bound a function earlier
    (``from torch.fft import rfft``) keeps the original: such code is not patched, by design.

Half precision is not here: the engine casts T3 itself (``dtype`` parameter) and its conditioning with
``engines.fast_t3.cast_cond``; see ``engines/chatterbox/engine.py``.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

ENV_VAR = "CHATTERBOX_JETSON_PATCHES"
MODES = ("auto", "on", "off")
_MODE_ALIASES = {
    "auto": "auto", "": "auto",
    "on": "on", "1": "on", "true": "on", "yes": "on", "force": "on",
    "off": "off", "0": "off", "false": "off", "no": "off",
}

# The device a routed FFT is computed on. A module attribute so that tests (and unusual set-ups) can change it.
_COMPUTE_DEVICE = "cpu"

# (owner object, attribute name) -> the original function, for every attribute currently patched.
_originals: Dict[Tuple[Any, str], Callable] = {}


# ---------------------------------------------------------------------------------------------------------------
# Platform and mode
# ---------------------------------------------------------------------------------------------------------------

def is_jetson(root: str = "/") -> bool:
    """True on an NVIDIA Jetson (L4T), on the host or inside a container started with the NVIDIA runtime.

    Checks ``/etc/nv_tegra_release`` (L4T images and hosts), the device-tree model (hosts; Docker masks
    ``/sys/firmware`` in containers) and ``/dev/nvmap`` (the Tegra memory device the NVIDIA runtime passes in).
    ``root`` lets tests point at a fake tree.
    """
    base = Path(root)
    if (base / "etc/nv_tegra_release").is_file():
        return True
    for model in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            text = (base / model).read_bytes().decode("utf-8", "replace").lower()
        except OSError:
            continue
        if "jetson" in text or "tegra" in text or "orin" in text:
            return True
    return (base / "dev/nvmap").exists()


def normalize_mode(mode: Optional[str]) -> str:
    """Map a parameter or environment value to ``auto``, ``on`` or ``off``; ValueError for anything else."""
    key = "auto" if mode is None else str(mode).strip().lower()
    if key not in _MODE_ALIASES:
        raise ValueError(
            f"jetson_patches mode {mode!r} is not one of {', '.join(MODES)} (also accepted: true/false, 1/0)")
    return _MODE_ALIASES[key]


def effective_mode(mode: Optional[str] = "auto") -> str:
    """The mode after the ``CHATTERBOX_JETSON_PATCHES`` override (set and non-empty wins over ``mode``)."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        try:
            return normalize_mode(env)
        except ValueError as exc:
            raise ValueError(f"{ENV_VAR}={env!r}: {exc}") from None
    return normalize_mode(mode)


def should_apply(mode: Optional[str] = "auto") -> bool:
    """Whether the patches should be active: ``on`` yes, ``off`` no, ``auto`` on a Jetson only."""
    resolved = effective_mode(mode)
    if resolved == "auto":
        return is_jetson()
    return resolved == "on"


# ---------------------------------------------------------------------------------------------------------------
# FFT routing
# ---------------------------------------------------------------------------------------------------------------

def is_power_of_two(n: int) -> bool:
    return isinstance(n, int) and n > 0 and (n & (n - 1)) == 0


def _is_cuda(tensor: Any) -> bool:
    return bool(getattr(tensor, "is_cuda", False))


def _needs_cpu(tensor: Any, n: Optional[int]) -> bool:
    """The routing rule: a CUDA tensor with an FFT length that is not a power of two goes to the CPU.

    Tests replace ``_is_cuda`` (or this function) to run the routing branch with CPU tensors.
    """
    if n is None or not _is_cuda(tensor):
        return False
    try:
        n = int(n)
    except (TypeError, ValueError):
        return False
    return not is_power_of_two(n)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _stft_length(args: tuple, kwargs: dict) -> Optional[int]:
    # torch.stft(input, n_fft, ...), torch.istft(input, n_fft, ...), Tensor.stft(self, n_fft, ...)
    return _arg(args, kwargs, 1, "n_fft")


def _signal_length(args: tuple, kwargs: dict, inverse: bool) -> Optional[int]:
    # torch.fft.rfft(input, n=None, dim=-1, norm=None) / irfft(input, n=None, dim=-1, norm=None)
    n = _arg(args, kwargs, 1, "n")
    if n is not None:
        return n
    tensor, dim = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 2, "dim", -1)
    try:
        size = int(tensor.shape[dim])
    except (AttributeError, IndexError, TypeError):
        return None
    # irfft's transform length is its output length, 2 * (m - 1) for m input bins, not the input length.
    return 2 * (size - 1) if inverse else size


def _to_device(value: Any, device: Any) -> Any:
    if hasattr(value, "to") and hasattr(value, "is_cuda"):  # a tensor
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device) for v in value)
    return value


def _make_router(original: Callable, length_of: Callable[[tuple, dict], Optional[int]]) -> Callable:
    @functools.wraps(original)
    def routed(*args: Any, **kwargs: Any) -> Any:
        tensor = args[0] if args else kwargs.get("input")
        # ``out=`` would have to stay on the caller's device: leave such calls alone.
        if tensor is None or "out" in kwargs or not _needs_cpu(tensor, length_of(args, kwargs)):
            return original(*args, **kwargs)
        device = tensor.device
        result = original(*_to_device(args, _COMPUTE_DEVICE),
                          **{k: _to_device(v, _COMPUTE_DEVICE) for k, v in kwargs.items()})
        return _to_device(result, device)

    routed._jetson_fft_route = True  # type: ignore[attr-defined]
    return routed


def _patch_targets() -> List[Tuple[Any, str, Callable[[tuple, dict], Optional[int]]]]:
    import torch
    import torch.fft
    import torch.functional

    def rfft_len(a: tuple, k: dict) -> Optional[int]:
        return _signal_length(a, k, inverse=False)

    def irfft_len(a: tuple, k: dict) -> Optional[int]:
        return _signal_length(a, k, inverse=True)

    targets = [
        (torch, "stft", _stft_length),
        (torch, "istft", _stft_length),
        (torch.functional, "stft", _stft_length),
        (torch.functional, "istft", _stft_length),
        (torch.Tensor, "stft", _stft_length),
        (torch.Tensor, "istft", _stft_length),
        (torch.fft, "rfft", rfft_len),
        (torch.fft, "irfft", irfft_len),
    ]
    return [(owner, name, fn) for owner, name, fn in targets if hasattr(owner, name)]


def is_applied() -> bool:
    """True while the FFT routing is installed."""
    return bool(_originals)


def install_fft_routing() -> None:
    """Install the FFT routing unconditionally (idempotent). Prefer :func:`apply`."""
    if _originals:
        return
    for owner, name, length_of in _patch_targets():
        original = getattr(owner, name)
        if getattr(original, "_jetson_fft_route", False):  # installed by another copy of this module
            continue
        _originals[(owner, name)] = original
        setattr(owner, name, _make_router(original, length_of))


def remove() -> None:
    """Restore the exact original function objects (no-op when nothing is patched)."""
    while _originals:
        (owner, name), original = _originals.popitem()
        setattr(owner, name, original)


def apply(mode: Optional[str] = "auto") -> bool:
    """Bring the FFT routing into the state that ``mode`` (after the environment override) asks for.

    Returns True when the routing is active afterwards. ``apply("off")`` removes routing installed earlier, so
    the node can call ``apply(parameter)`` on every configure. Idempotent.
    """
    if should_apply(mode):
        install_fft_routing()
        return True
    remove()
    return False


@contextlib.contextmanager
def patched(mode: Optional[str] = "on") -> Iterator[bool]:
    """``with patched(): ...`` applies the routing for the block and restores the previous state afterwards."""
    was_applied = is_applied()
    active = apply(mode)
    try:
        yield active
    finally:
        if was_applied:
            install_fft_routing()
        else:
            remove()
