"""Audio formats and tempo: every file decodes (PyAV and, where it can, libsndfile) at the right rate and length."""
from __future__ import annotations

import io
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ros2_chatterbox import encoding  # noqa: E402

pytestmark = pytest.mark.timeout(60)

SR = 22050


def sine(freq: float = 440.0, seconds: float = 2.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(samples: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1.0 / sr)[np.argmax(spectrum)])


def chunked(samples: np.ndarray, size: int = 2205):
    for start in range(0, len(samples), size):
        yield samples[start:start + size]


# codec padding: MP3 and AAC add up to ~2 frames of priming/padding when no gapless header is written
TOLERANCE_S = {"mp3": 0.12, "aac": 0.15, "opus": 0.03, "flac": 0.01, "wav": 0.01, "pcm": 0.01}


@pytest.mark.parametrize("fmt", encoding.FORMATS)
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "whole"])
def test_format_decodes_at_rate_and_duration(fmt, streaming):
    x = sine()
    enc = encoding.Encoder(fmt, SR, streaming=streaming)
    parts = [enc.feed(c) for c in chunked(x)]
    parts.append(enc.finish())
    data = b"".join(parts)
    if streaming and fmt not in ("flac",):
        assert sum(1 for p in parts[:-1] if p) >= len(parts) // 2, "bytes should come out while feeding"
    y, rate = encoding.decode(data, fmt, SR)
    assert rate == encoding.output_rate(fmt, SR)
    assert rate == (48000 if fmt == "opus" else SR)
    assert abs(len(y) / rate - 2.0) <= TOLERANCE_S[fmt]
    assert abs(dominant_hz(y, rate) - 440.0) < 5.0
    assert enc.content_type == encoding.CONTENT_TYPES[fmt]


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_libsndfile_opens_complete_files(fmt):
    import soundfile as sf
    data = encoding.encode(sine(), SR, fmt)
    y, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == encoding.output_rate(fmt, SR)
    assert abs(len(y) / rate - 2.0) <= TOLERANCE_S[fmt]


def test_streamed_wav_has_unknown_length_header_that_decoders_accept():
    import soundfile as sf
    enc = encoding.Encoder("wav", SR, streaming=True)
    data = b"".join([enc.feed(c) for c in chunked(sine())] + [enc.finish()])
    assert data[:4] == b"RIFF" and struct.unpack("<I", data[4:8])[0] == 0xFFFFFFFF
    y, rate = sf.read(io.BytesIO(data))
    assert rate == SR and len(y) == int(2.0 * SR)


def test_complete_wav_has_exact_sizes():
    data = encoding.encode(sine(seconds=1.0), SR, "wav")
    assert struct.unpack("<I", data[40:44])[0] == 2 * SR
    assert struct.unpack("<I", data[4:8])[0] == len(data) - 8


def test_pcm_is_raw_s16le():
    x = np.array([0.0, 0.5, -0.5, 1.0], dtype=np.float32)
    data = encoding.encode(x, SR, "pcm")
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -16384, 32767]


def test_aac_is_adts():
    data = encoding.encode(sine(seconds=0.5), SR, "aac")
    assert data[0] == 0xFF and (data[1] & 0xF6) == 0xF0  # ADTS sync word, layer 0


def test_opus_is_ogg():
    assert encoding.encode(sine(seconds=0.5), SR, "opus")[:4] == b"OggS"


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_tempo_changes_duration_not_pitch(speed):
    x = sine(freq=440.0, seconds=2.0)
    y = encoding.apply_speed(x, SR, speed)
    assert abs(len(y) / SR - 2.0 / speed) < 0.05 * (2.0 / speed) + 0.03
    assert abs(dominant_hz(y, SR) - 440.0) < 5.0


@pytest.mark.parametrize("fmt", ["mp3", "wav", "opus"])
def test_encoder_speed_streaming(fmt):
    enc = encoding.Encoder(fmt, SR, speed=2.0)
    data = b"".join([enc.feed(c) for c in chunked(sine())] + [enc.finish()])
    y, rate = encoding.decode(data, fmt, SR)
    assert abs(len(y) / rate - 1.0) <= 0.05 + TOLERANCE_S[fmt]
    assert abs(dominant_hz(y, rate) - 440.0) < 5.0
    assert abs(enc.duration - 1.0) < 0.05


def test_rejects_unknown_format_and_speed():
    with pytest.raises(encoding.EncodingError):
        encoding.Encoder("ogg", SR)
    for bad in (0.2, 4.5, float("nan"), "fast"):
        with pytest.raises(encoding.EncodingError):
            encoding.check_speed(bad)


def test_empty_audio_still_makes_a_valid_file():
    for fmt in ("wav", "mp3", "flac"):
        enc = encoding.Encoder(fmt, SR)
        data = enc.finish()
        assert data, fmt
    y, rate = encoding.decode(encoding.encode(np.zeros(0, np.float32), SR, "wav"))
    assert rate == SR and y.size == 0


def test_abandoned_encoder_closes_quietly():
    enc = encoding.Encoder("mp3", SR)
    enc.feed(sine(seconds=0.3))
    enc.close()
    assert enc.finish() == b""
