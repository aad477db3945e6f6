"""PCM conversion, silence and click-free edges. numpy only: no ROS, no torch."""
from __future__ import annotations

import numpy as np

SAMPLE_FORMAT = "S16LE"
FADE_MS = 5.0  # edge ramp on every synthesized piece: joins never click


def to_float32(samples) -> np.ndarray:
    """Mono float32 in [-1, 1] from any array-like (torch tensors are converted by the engine)."""
    a = np.asarray(samples, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(a)):
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(a, -1.0, 1.0)


def to_pcm16(samples: np.ndarray) -> bytes:
    """Signed 16-bit little-endian PCM bytes."""
    a = to_float32(samples)
    return (a * 32767.0).round().astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def _ramp(samples: np.ndarray, sample_rate: int, ms: float) -> np.ndarray:
    n = min(int(sample_rate * ms / 1000.0), len(samples) // 2)
    return (0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))).astype(np.float32) if n > 1 else np.ones(0, np.float32)


def fade_in(samples: np.ndarray, sample_rate: int, ms: float = FADE_MS) -> np.ndarray:
    """Short raised-cosine fade at the start (a copy)."""
    a = to_float32(samples).copy()
    ramp = _ramp(a, sample_rate, ms)
    a[:len(ramp)] *= ramp
    return a


def fade_out(samples: np.ndarray, sample_rate: int, ms: float = FADE_MS) -> np.ndarray:
    """Short raised-cosine fade at the end (a copy)."""
    a = to_float32(samples).copy()
    ramp = _ramp(a, sample_rate, ms)
    if len(ramp):
        a[-len(ramp):] *= ramp[::-1]
    return a


def silence(sample_rate: int, ms: float) -> np.ndarray:
    return np.zeros(int(sample_rate * ms / 1000.0), dtype=np.float32)
