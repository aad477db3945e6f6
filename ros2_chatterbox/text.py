"""Text clean-up and sentence-aware splitting. Pure Python: no ROS, no torch.

Splitting keeps every word in order: joining the pieces with single spaces gives back the normalized text.
"""
from __future__ import annotations

import re
import unicodedata
from typing import List

# Paralinguistic tags such as [laugh] are tokenizer tokens of Chatterbox Turbo: never split inside one.
_TAG = r"\[[^\[\]]{1,32}\]"
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s)")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "sr.", "jr.", "vs.", "etc.", "e.g.", "i.e.",
                  "no.", "approx.", "fig.", "mt."}
_CLAUSE_END = re.compile(r"(?<=[,;:\u2014\u2013\uff0c\u3001])\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")


class TextError(ValueError):
    """The caller's text cannot be spoken (empty, too long, nothing pronounceable)."""


def normalize(text: str) -> str:
    """NFC, control characters removed, all whitespace runs collapsed to one space."""
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub(" ", text)
    return " ".join(text.split())


def validate(text: object, max_chars: int) -> str:
    """The normalized text, or TextError with a reason a user can act on."""
    if not isinstance(text, str):
        raise TextError("text must be a string")
    if len(text) > max_chars:
        raise TextError(f"text is {len(text)} characters; the limit is {max_chars} (parameter text.max_chars)")
    clean = normalize(text)
    if not clean:
        raise TextError("text is empty")
    if not any(ch.isalnum() for ch in re.sub(_TAG, "", clean)):
        raise TextError("text has nothing to pronounce (no letters or digits)")
    return clean


def _split_long(piece: str, max_chars: int) -> List[str]:
    """Split one over-long sentence at clause marks, then at spaces, then hard."""
    if len(piece) <= max_chars:
        return [piece]
    out: List[str] = []
    for part in _pack(_CLAUSE_END.split(piece), max_chars):
        if len(part) <= max_chars:
            out.append(part)
            continue
        for word_run in _pack(part.split(" "), max_chars):
            while len(word_run) > max_chars:  # a single "word" longer than the limit
                out.append(word_run[:max_chars])
                word_run = word_run[max_chars:]
            if word_run:
                out.append(word_run)
    return out


def _pack(parts: List[str], max_chars: int) -> List[str]:
    """Greedily join consecutive parts with spaces while they fit in max_chars."""
    out: List[str] = []
    cur = ""
    for p in parts:
        if not p:
            continue
        if cur and len(cur) + 1 + len(p) <= max_chars:
            cur = f"{cur} {p}"
        else:
            if cur:
                out.append(cur)
            cur = p
    if cur:
        out.append(cur)
    return out


def split_sentences(text: str, max_chars: int = 250) -> List[str]:
    """Sentence-aware pieces of at most max_chars; short sentences are kept apart (each streams sooner)."""
    text = normalize(text)
    if not text:
        return []
    pieces: List[str] = []
    start = 0
    sentences = []
    for m in _SENTENCE_END.finditer(text):
        last_word = text[:m.end()].rsplit(" ", 1)[-1].lower()
        if last_word in _ABBREVIATIONS:
            continue
        sentences.append(text[start:m.end()])
        start = m.end()
    sentences.append(text[start:])
    for sentence in sentences:
        sentence = sentence.strip()
        if sentence:
            pieces.extend(_split_long(sentence, max_chars))
    return pieces
