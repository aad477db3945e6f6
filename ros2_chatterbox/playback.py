"""Local playback on the host's sound device through PortAudio (the `sounddevice` package). No ROS, no torch.

`Player` is optional by design: when `sounddevice` or the PortAudio library is missing, or the device is absent, busy
or refuses the format, `open()` logs one clear warning and returns False; nothing here raises into the caller.

Threading: one thread plays (`play`, then `drain`); any other thread may call `stop()` or `close()` at any time.
`play()` writes in short blocks and returns within about one block (~20 ms) after `stop()`, or after the
optional `cancel` event given to `play()`/`drain()` is set (a job's cancel_event: it then silences the device too).
Sound devices pace the writes; virtual devices without a clock (ALSA's null or file plugins) would swallow audio
instantly, so the player also keeps what it has written at most `latency + 50 ms` ahead of the wall clock:
`play()`/`drain()` take as long as the sound does on any device, which `tts/speaking` and feedback rely on.

Device names: '' (system default), an index (int or digits), or a case-insensitive name substring as shown by
`list_devices()` / `python -m ros2_chatterbox.playback`.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List, Optional, Union

import numpy as np

BLOCK_S = 0.02       # largest single write: bounds how long stop() waits for the playing thread
LATENCY_S = 0.25     # device buffer asked for: what is queued ahead of the speaker (stop() drops it at once)
PACING_SLACK_S = 0.05

log = logging.getLogger(__name__)

# PortAudio lists devices once, when it initializes; a device plugged in later is found by re-initializing, which is
# only safe while no stream is open in this process.
_streams_lock = threading.Lock()
_streams_open = 0


def _count_stream(delta: int) -> None:
    global _streams_open
    with _streams_lock:
        _streams_open += delta


def _rescan(sd) -> bool:
    """Re-read the device list (sounddevice's documented way: _terminate() + _initialize()) when no stream is open."""
    with _streams_lock:
        if _streams_open:
            return False
        try:
            sd._terminate()  # noqa: SLF001
            sd._initialize()  # noqa: SLF001
            return True
        except Exception:  # noqa: BLE001
            return False


def _import_sounddevice():
    """The sounddevice module, imported on first use (importing it loads PortAudio and scans the devices).

    Raises ImportError when the package is missing and OSError when the PortAudio library is (Debian: libportaudio2).
    """
    import sounddevice  # noqa: PLC0415 - optional dependency, loaded only when playback is enabled
    return sounddevice


def _unavailable_reason(exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"the Python package 'sounddevice' is not installed ({exc}); pip install sounddevice"
    return f"the PortAudio library cannot be loaded ({exc}); install it (Debian/Ubuntu: apt-get install libportaudio2)"


def list_devices() -> List[Dict[str, Any]]:
    """Output devices as dicts (index, name, hostapi, channels, default_samplerate, default); [] when unavailable."""
    try:
        sd = _import_sounddevice()
        default_out = sd.default.device[1]
        hostapis = sd.query_hostapis()
        return [{"index": i, "name": d["name"], "hostapi": hostapis[d["hostapi"]]["name"],
                 "channels": int(d["max_output_channels"]), "default_samplerate": float(d["default_samplerate"]),
                 "default": i == default_out}
                for i, d in enumerate(sd.query_devices()) if d["max_output_channels"] > 0]
    except Exception as exc:  # noqa: BLE001 - never raise: listing is informational
        reason = _unavailable_reason(exc) if isinstance(exc, (ImportError, OSError)) else str(exc)
        log.warning(f"cannot list sound devices: {reason}")
        return []


def _describe(devices: List[Dict[str, Any]]) -> str:
    if not devices:
        return "no output devices found"
    return "output devices: " + "; ".join(
        f"[{d['index']}] '{d['name']}'" + (" (default)" if d["default"] else "") for d in devices)


class LinearResampler:
    """Streaming linear-interpolation resampler for mono float32 chunks (continuous across chunk boundaries)."""

    def __init__(self, src_rate: int, dst_rate: int):
        self.step = float(src_rate) / float(dst_rate)  # input samples per output sample
        self._pos = 0.0   # next output position, in input samples relative to the next chunk's first sample
        self._prev: Optional[np.float32] = None  # last input sample of the previous chunk (position -1)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return x
        if self._prev is None:
            xs, offset = x, 0
        else:
            xs, offset = np.concatenate(([self._prev], x)).astype(np.float32), 1
        last = len(x) - 1
        n = int(np.floor((last - self._pos) / self.step)) + 1 if self._pos <= last else 0
        t = self._pos + self.step * np.arange(n)
        y = np.interp(t + offset, np.arange(len(xs)), xs).astype(np.float32)
        self._pos = (self._pos + self.step * n) - len(x)
        self._prev = x[-1]
        return y


class Player:
    """Plays mono float32 audio at `sample_rate` on one output device. See the module docstring for threading."""

    def __init__(self, device: Union[str, int, None] = "", sample_rate: int = 24000, latency: float = LATENCY_S):
        self.device = device
        self.sample_rate = int(sample_rate)
        self.latency = float(latency)
        self._io = threading.Lock()            # every call into the PortAudio stream
        self._state = threading.Condition()    # fields below; notified by stop()
        self._stream = None
        self._gen = 0                          # bumped by stop(): plays and drains started before it give up
        self._end = 0.0                        # monotonic time when all written audio will have been played
        self._writing = False
        self._max_lead = self.latency + PACING_SLACK_S
        self._resampler: Optional[LinearResampler] = None
        self._channels = 1
        self.device_name = ""
        self.device_rate = self.sample_rate

    # -- set-up ----------------------------------------------------------------------------------------------
    def _warn(self, reason: str) -> bool:
        label = "system default" if self.device in ("", None) else repr(self.device)
        log.warning(f"local playback disabled: sound device {label}: {reason}")
        return False

    def _resolve(self, sd) -> int:
        dev = self.device
        if isinstance(dev, str):
            dev = dev.strip()
            if dev.lstrip("-").isdigit():
                dev = int(dev)
        if dev in ("", None):
            idx = sd.default.device[1]
            if idx is None or idx < 0:
                raise ValueError("there is no default output device")
            return int(idx)
        info = sd.query_devices(dev, "output")  # ValueError: no match, several matches, or not an output
        return int(info["index"])

    def open(self) -> bool:
        """Open the output stream; False (after one warning naming the device and the reason) when unavailable."""
        with self._io:
            if self._stream is not None:
                return True
            try:
                sd = _import_sounddevice()
            except Exception as exc:  # noqa: BLE001 - ImportError, OSError (PortAudio missing), anything else
                return self._warn(_unavailable_reason(exc))
            try:
                try:
                    idx = self._resolve(sd)
                except Exception:  # noqa: BLE001 - perhaps plugged in after PortAudio started: look again
                    if not _rescan(sd):
                        raise
                    idx = self._resolve(sd)
                info = sd.query_devices(idx, "output")
            except Exception as exc:  # noqa: BLE001
                return self._warn(f"not found ({exc}); {_describe(list_devices())}")
            name = f"[{idx}] '{info['name']}'"
            rate, channels = self._pick_format(sd, idx, info)
            if rate is None:
                return self._warn(f"{name} accepts neither {self.sample_rate} Hz nor its default rate "
                                  f"{info['default_samplerate']:.0f} Hz in mono or stereo float32")
            try:
                stream = sd.OutputStream(device=idx, samplerate=rate, channels=channels, dtype="float32",
                                         latency=self.latency)
            except Exception as exc:  # noqa: BLE001 - busy, vanished, format refused
                return self._warn(f"{name} cannot be opened ({exc}); it may be busy (used by another program)")
            self._stream = stream
            _count_stream(+1)
            self._channels = channels
            self.device_rate = rate
            self.device_name = str(info["name"])
            self._resampler = LinearResampler(self.sample_rate, rate) if rate != self.sample_rate else None
            self._max_lead = max(self.latency, float(stream.latency or 0.0)) + PACING_SLACK_S
        with self._state:
            self._end = 0.0
        note = "" if rate == self.sample_rate else f", resampled from {self.sample_rate} Hz"
        log.info(f"local playback on {name} at {rate} Hz, {channels} channel(s){note}")
        return True

    def _pick_format(self, sd, idx: int, info) -> tuple:
        rates = [self.sample_rate]
        if int(info["default_samplerate"]) != self.sample_rate:
            rates.append(int(info["default_samplerate"]))
        for rate in rates:
            for channels in (1, 2):
                try:
                    sd.check_output_settings(device=idx, samplerate=rate, channels=channels, dtype="float32")
                    return rate, channels
                except Exception:  # noqa: BLE001 - try the next format
                    continue
        return None, None

    # -- playing ---------------------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._stream is not None

    @property
    def playing(self) -> bool:
        """True while a play() is writing or written audio has not finished playing."""
        with self._state:
            return self._stream is not None and (self._writing or time.monotonic() < self._end)

    def _prepare(self, samples) -> np.ndarray:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(x)):
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        x = np.clip(x, -1.0, 1.0)
        if self._resampler is not None:
            x = self._resampler(x)
        if self._channels > 1:
            x = np.repeat(x[:, None], self._channels, axis=1)
        return np.ascontiguousarray(x)

    def _wait(self, gen: int, seconds: float, cancel: Optional[threading.Event]) -> bool:
        """Sleep up to `seconds`; True (early) when stop() is called or `cancel` is set."""
        deadline = time.monotonic() + seconds
        with self._state:
            while True:
                if gen != self._gen or (cancel is not None and cancel.is_set()):
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state.wait(min(left, BLOCK_S) if cancel is not None else left)

    def _cancelled(self, gen: int, cancel: Optional[threading.Event]) -> bool:
        """stop() came, or `cancel` is set (then silence the device now, as stop() would)."""
        if cancel is not None and cancel.is_set():
            self.stop()
            return True
        with self._state:
            return gen != self._gen

    def play(self, samples, cancel: Optional[threading.Event] = None) -> bool:
        """Write mono float32 samples at `sample_rate`, blocking at the pace of the device.

        True when all of it was written; False when stop() or close() came first, the player is not open, or
        `cancel` (e.g. a job's cancel_event) was set: that silences the device at once, as stop() does."""
        with self._state:
            if self._stream is None:
                return False
            gen = self._gen
            self._writing = True
        try:
            x = self._prepare(samples)
            block = max(1, int(self.device_rate * BLOCK_S))
            for pos in range(0, len(x), block):
                if self._cancelled(gen, cancel):
                    return False
                part = x[pos:pos + block]
                with self._io:
                    if gen != self._gen or self._stream is None:
                        return False
                    try:
                        if not self._stream.active:
                            self._stream.start()
                        self._stream.write(part)  # underflow (the device ran dry) is reported, not raised
                    except Exception as exc:  # noqa: BLE001 - device vanished mid-stream
                        self._fail(exc)
                        return False
                with self._state:
                    now = time.monotonic()
                    self._end = max(self._end, now) + len(part) / float(self.device_rate)
                    lead = self._end - now - self._max_lead
                if lead > 0:  # device without a clock: keep to real time
                    self._wait(gen, lead, cancel)
            return not self._cancelled(gen, cancel)
        finally:
            with self._state:
                self._writing = False

    def drain(self, timeout: Optional[float] = None, cancel: Optional[threading.Event] = None) -> bool:
        """Wait until what was written has been played, then stop the stream (the next play() restarts it).

        False when stop() came first, `cancel` was set (silenced at once), or `timeout` seconds passed."""
        with self._state:
            if self._stream is None:
                return True
            gen = self._gen
            wait = self._end - time.monotonic()
        if timeout is not None and wait > timeout:
            self._wait(gen, timeout, cancel)
            self._cancelled(gen, cancel)
            return False
        if wait > 0 and self._wait(gen, wait, cancel):
            self._cancelled(gen, cancel)
            return False
        with self._io:
            if gen != self._gen or self._stream is None:
                return False
            try:
                if self._stream.active:
                    self._stream.stop()  # plays out the little the device may still hold, then stops
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
                return False
        return True

    def stop(self) -> None:
        """Silence at once: interrupt play()/drain() in other threads and drop the audio buffered in the device."""
        with self._state:
            self._gen += 1
            self._end = 0.0
            self._state.notify_all()
        with self._io:
            if self._stream is not None:
                try:
                    self._stream.abort()
                except Exception as exc:  # noqa: BLE001
                    log.warning(f"local playback: stopping the sound device failed: {exc}")

    def close(self) -> None:
        self.stop()
        with self._io:
            stream, self._stream = self._stream, None
            if stream is not None:
                _count_stream(-1)
                try:
                    stream.close()
                except Exception:  # noqa: BLE001
                    pass

    def set_sample_rate(self, sample_rate: int) -> bool:
        """Follow the engine's rate (e.g. after a fallback engine took over): reopens when it changed."""
        if int(sample_rate) == self.sample_rate and self.is_open:
            return True
        self.close()
        self.sample_rate = int(sample_rate)
        self.device_rate = self.sample_rate
        return self.open()

    def _fail(self, exc: BaseException) -> None:
        """Device error while playing (called holding _io): warn once, close, leave the player unopened."""
        log.warning(f"local playback stopped: sound device '{self.device_name}' failed ({exc}); "
                             f"open() it again to retry")
        stream, self._stream = self._stream, None
        if stream is not None:
            _count_stream(-1)
        with self._state:
            self._gen += 1
            self._end = 0.0
            self._state.notify_all()
        try:
            stream.abort()
            stream.close()
        except Exception:  # noqa: BLE001
            pass


def main(argv: Optional[List[str]] = None) -> int:
    """List output devices; with --test DEVICE play a short tone on it ('' = default)."""
    import argparse  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m ros2_chatterbox.playback", description=main.__doc__)
    ap.add_argument("--test", metavar="DEVICE", help="play a 1 s 440 Hz tone on DEVICE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for d in list_devices():
        print(f"[{d['index']}] {d['name']} ({d['hostapi']}, {d['channels']} ch, {d['default_samplerate']:.0f} Hz)"
              + (" default" if d["default"] else ""))
    if args.test is None:
        return 0
    player = Player(args.test, 24000)
    if not player.open():
        return 1
    t = np.arange(24000) / 24000.0
    player.play((0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    player.drain()
    player.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
