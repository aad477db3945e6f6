"""Audio file formats for HTTP answers: wav, pcm, flac, mp3, opus (Ogg), aac (ADTS), and pitch-preserving tempo.

Everything runs in-process: PyAV (FFmpeg's libraries, bundled in its wheels: libmp3lame, libopus, the native AAC
and FLAC encoders, the `atempo` filter) so no ffmpeg program is needed at run time; WAV and raw PCM are written
directly. No ROS, no FastAPI, no torch.

`Encoder` is fed float32 mono chunks as they are synthesized and returns the bytes that are ready, so an HTTP
answer can stream. Streamed WAV carries "unknown length" sizes (0xFFFFFFFF), which FFmpeg, libsndfile and browsers
accept (Python's `wave` takes them at their word: ~27 hours); a complete file (`streaming=False`, or `encode()`)
has exact sizes, an MP3 Xing/LAME header and a FLAC STREAMINFO with the sample count. FLAC is always written
whole: its header can only be completed at the end, and libsndfile refuses FLAC without a sample count.
"""
from __future__ import annotations

import io
import struct
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

import numpy as np

from .audio import to_float32, to_pcm16

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
CONTENT_TYPES: Dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",   # Opus in an Ogg container (RFC 7845): what browsers and FFmpeg open as .opus/.ogg
    "aac": "audio/aac",    # ADTS: streamable, opened by FFmpeg, browsers and phones without an MP4 wrapper
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",    # raw signed 16-bit little-endian mono at the engine's rate (X-Sample-Rate header)
}
EXTENSIONS: Dict[str, str] = {"mp3": "mp3", "opus": "opus", "aac": "aac", "flac": "flac", "wav": "wav",
                              "pcm": "pcm"}
MIN_SPEED = 0.25
MAX_SPEED = 4.0
OPUS_RATE = 48000  # every Opus decoder outputs 48 kHz; resampling once here keeps the Ogg header honest

# (container, codec, bit rate): bit rates sized for mono speech
_AV_FORMATS: Dict[str, Tuple[str, str, int]] = {
    "mp3": ("mp3", "libmp3lame", 64000),
    "opus": ("ogg", "libopus", 32000),
    "aac": ("adts", "aac", 64000),
    "flac": ("flac", "flac", 0),
}
_CHUNK = 4096  # samples per AVFrame handed to FFmpeg


class EncodingError(ValueError):
    """Unknown format or speed out of range (the caller's mistake)."""


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise EncodingError(f"unknown format {str(fmt)[:40]!r}: use one of {', '.join(FORMATS)}")
    return fmt


def check_speed(speed: float) -> float:
    try:
        value = float(speed)
    except (TypeError, ValueError):
        raise EncodingError("speed must be a number") from None
    if not (MIN_SPEED <= value <= MAX_SPEED):
        raise EncodingError(f"speed {speed} is out of range: use {MIN_SPEED} to {MAX_SPEED}")
    return value


def output_rate(fmt: str, sample_rate: int) -> int:
    """The sample rate a decoder reports for a file of this format made from audio at `sample_rate`."""
    return OPUS_RATE if fmt == "opus" else int(sample_rate)


def _tempo_factors(speed: float) -> List[float]:
    """atempo steps within 0.5-2.0 (the range every FFmpeg version accepts, and the best-sounding one)."""
    factors: List[float] = []
    s = speed
    while s < 0.5:
        factors.append(0.5)
        s /= 0.5
    while s > 2.0:
        factors.append(2.0)
        s /= 2.0
    factors.append(s)
    return factors


def _frame(samples: np.ndarray, sample_rate: int, pts: int):
    import av
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
                                       format="flt", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = pts
    frame.time_base = Fraction(1, sample_rate)
    return frame


class Tempo:
    """Changes tempo, not pitch (FFmpeg's WSOLA `atempo` filter), chunk by chunk."""

    def __init__(self, sample_rate: int, speed: float):
        import av.filter
        self.sample_rate = int(sample_rate)
        self.speed = check_speed(speed)
        self._pts = 0
        self._graph = av.filter.Graph()
        src = self._graph.add_abuffer(format="flt", sample_rate=self.sample_rate, layout="mono",
                                      time_base=Fraction(1, self.sample_rate))
        nodes = [src] + [self._graph.add("atempo", f"{f:.6f}") for f in _tempo_factors(self.speed)]
        nodes.append(self._graph.add("abuffersink"))
        for a, b in zip(nodes, nodes[1:]):
            a.link_to(b)
        self._graph.configure()
        self._closed = False

    def _drain(self) -> np.ndarray:
        import av
        out = []
        while True:
            try:
                frame = self._graph.pull()
            except (av.error.BlockingIOError, BlockingIOError, EOFError, av.error.EOFError):
                break
            out.append(frame.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def process(self, samples: np.ndarray) -> np.ndarray:
        a = to_float32(samples)
        if a.size == 0 or self._closed:
            return np.zeros(0, dtype=np.float32)
        parts = []
        for start in range(0, a.size, _CHUNK):
            piece = a[start:start + _CHUNK]
            self._graph.push(_frame(piece, self.sample_rate, self._pts))
            self._pts += piece.size
            parts.append(self._drain())
        return np.concatenate(parts)

    def flush(self) -> np.ndarray:
        if self._closed:
            return np.zeros(0, dtype=np.float32)
        self._closed = True
        self._graph.push(None)
        return self._drain()


def apply_speed(samples: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """The whole signal at another tempo, same pitch."""
    if check_speed(speed) == 1.0:
        return to_float32(samples)
    t = Tempo(sample_rate, speed)
    return np.concatenate([t.process(samples), t.flush()])


def wav_header(sample_rate: int, n_samples: Optional[int] = None) -> bytes:
    """44-byte PCM16 mono WAV header; n_samples None writes the 'unknown length' sizes used for streaming."""
    if n_samples is None:
        riff_size, data_size = 0xFFFFFFFF, 0xFFFFFFFF - 36
    else:
        data_size = 2 * n_samples
        riff_size = 36 + data_size
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data_size))


class _Sink:
    """A write-only (non-seekable) file for PyAV: muxed bytes are taken out as soon as they are written."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data) -> int:
        self._buf += bytes(data)
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out


class Encoder:
    """Float32 mono chunks in, encoded bytes out as they become ready.

    `feed(samples)` returns the bytes ready so far (possibly b''); `finish()` returns the rest. Concatenated, the
    returned bytes are one file of `fmt`. With streaming=False everything is returned by `finish()` as one complete
    file with exact header fields.
    """

    def __init__(self, fmt: str, sample_rate: int, speed: float = 1.0, streaming: bool = True):
        self.format = check_format(fmt)
        self.sample_rate = int(sample_rate)
        self.speed = check_speed(speed)
        self.streaming = streaming and fmt != "flac"
        self.content_type = CONTENT_TYPES[fmt]
        self.output_rate = output_rate(fmt, self.sample_rate)
        self.samples_in = 0    # at the engine's rate, before tempo
        self.samples_out = 0   # after tempo, at the engine's rate
        self._tempo = Tempo(self.sample_rate, self.speed) if self.speed != 1.0 else None
        self._finished = False
        self._header_sent = False
        self._pending: List[bytes] = []  # raw formats when not streaming
        self._container = None
        if fmt in _AV_FORMATS:
            self._open_av()

    # -- PyAV formats ----------------------------------------------------------------------------------------
    def _open_av(self) -> None:
        import av
        container_fmt, codec, bit_rate = _AV_FORMATS[self.format]
        self._file = _Sink() if self.streaming else io.BytesIO()
        options = {"page_duration": "100000"} if container_fmt == "ogg" else {}  # Ogg pages every 100 ms
        self._container = av.open(self._file, mode="w", format=container_fmt, options=options)
        self._stream = self._container.add_stream(codec, rate=self.output_rate)
        self._stream.layout = "mono"
        if bit_rate:
            self._stream.bit_rate = bit_rate
        ctx = self._stream.codec_context
        target_fmt = ctx.format.name if ctx.format is not None else "s16"
        self._resampler = av.AudioResampler(format=target_fmt, layout="mono", rate=self.output_rate)
        self._pts = 0

    def _encode_av(self, samples: Optional[np.ndarray]) -> None:
        frames = []
        if samples is None:
            frames.extend(self._resampler.resample(None))
        else:
            for start in range(0, samples.size, _CHUNK):
                piece = samples[start:start + _CHUNK]
                frames.extend(self._resampler.resample(_frame(piece, self.sample_rate, self._pts)))
                self._pts += piece.size
        for frame in frames:
            frame.pts = None  # the encoder numbers its own frames after re-chunking to its frame size
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        if samples is None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)

    def _take_av(self) -> bytes:
        return self._file.take() if self.streaming else b""

    # -- public ----------------------------------------------------------------------------------------------
    def feed(self, samples: np.ndarray) -> bytes:
        if self._finished:
            raise RuntimeError("encoder already finished")
        a = to_float32(samples)
        self.samples_in += a.size
        if self._tempo is not None:
            a = self._tempo.process(a)
        return self._push(a)

    def _push(self, a: np.ndarray) -> bytes:
        self.samples_out += a.size
        if self._container is not None:
            if a.size:
                self._encode_av(a)
            return self._take_av()
        data = to_pcm16(a) if a.size else b""
        if not self.streaming:
            self._pending.append(data)
            return b""
        if self.format == "wav" and not self._header_sent:
            self._header_sent = True
            data = wav_header(self.sample_rate) + data
        return data

    def finish(self) -> bytes:
        if self._finished:
            return b""
        tail = b""
        if self._tempo is not None:
            tail = self._push(self._tempo.flush())
        self._finished = True
        if self._container is not None:
            if self.samples_out == 0:  # no audio at all: a few ms of silence, so decoders still get a valid file
                self._encode_av(np.zeros(max(1, self.sample_rate // 100), dtype=np.float32))
            self._encode_av(None)
            self._container.close()
            if self.streaming:
                return tail + self._file.take()
            return self._file.getvalue()
        if not self.streaming:
            body = b"".join(self._pending)
            self._pending = []
            return (wav_header(self.sample_rate, len(body) // 2) + body) if self.format == "wav" else body
        if self.format == "wav" and not self._header_sent:  # no audio at all: still a valid (empty) file
            self._header_sent = True
            tail = wav_header(self.sample_rate) + tail
        return tail

    def close(self) -> None:
        """Release FFmpeg resources without producing output (an abandoned stream)."""
        if not self._finished:
            self._finished = True
            if self._container is not None:
                try:
                    self._container.close()
                except Exception:  # noqa: BLE001 - nothing useful to do with a failure while abandoning
                    pass

    @property
    def duration(self) -> float:
        """Seconds of audio encoded so far (after the tempo change)."""
        return self.samples_out / float(self.sample_rate)


def encode(samples: np.ndarray, sample_rate: int, fmt: str, speed: float = 1.0) -> bytes:
    """One complete file of `fmt` from a whole signal."""
    enc = Encoder(fmt, sample_rate, speed, streaming=False)
    enc.feed(samples)
    return enc.finish()


def decode(data: bytes, fmt: Optional[str] = None, sample_rate: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """Float32 mono samples and the sample rate of an encoded file (for tests and voice checks).

    Raw `pcm` has no header: pass fmt='pcm' and the sample rate.
    """
    if fmt == "pcm":
        if not sample_rate:
            raise ValueError("raw pcm needs sample_rate")
        return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float32) / 32767.0, sample_rate
    import av
    parts = []
    rate = 0
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        resampler = None
        for frame in container.decode(stream):
            if resampler is None:
                rate = frame.sample_rate
                resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(-1))
        if resampler is not None:
            for out in resampler.resample(None):
                parts.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, dtype=np.float32)
    return samples, rate
