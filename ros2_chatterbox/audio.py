"""PCM conversion, chunking and click-free joins. numpy only: no ROS, no torch."""
from __future__ import annotations

from typing import Iterator

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


def fade_edges(samples: np.ndarray, sample_rate: int, ms: float = FADE_MS) -> np.ndarray:
    """Fade in and out, so consecutive pieces join without clicks."""
    return fade_out(fade_in(samples, sample_rate, ms), sample_rate, ms)


def silence(sample_rate: int, ms: float) -> np.ndarray:
    return np.zeros(int(sample_rate * ms / 1000.0), dtype=np.float32)


def chunks(samples: np.ndarray, sample_rate: int, chunk_ms: float) -> Iterator[np.ndarray]:
    """Consecutive chunks of chunk_ms (the last one shorter); concatenated they equal the input."""
    size = max(1, int(round(sample_rate * chunk_ms / 1000.0)))
    for start in range(0, len(samples), size):
        yield samples[start:start + size]


def duration_s(n_samples: int, sample_rate: int) -> float:
    return n_samples / float(sample_rate)


def rms_dbfs(samples: np.ndarray) -> float:
    a = to_float32(samples)
    if a.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")
