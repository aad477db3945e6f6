"""Text clean-up and sentence-aware splitting. Pure Python: no ROS, no torch.

Splitting keeps every character in order and never cuts a tag: joining the pieces with single spaces gives back the
normalized text (except inside a single word longer than the limit, which is cut without a space).
"""
from __future__ import annotations

import re
import unicodedata
from typing import List, Tuple

# Paralinguistic tags such as [laugh] are tokenizer tokens of Chatterbox Turbo: never split inside one.
_TAG = r"\[[^\[\]]{1,32}\]"
TAG_RE = re.compile(_TAG)  # also used by the Piper engine, which drops tags
_WORD_RE = re.compile(r"(?:" + _TAG + r"|\S)+")  # a tag may hold spaces: "[clear throat]" is one unit
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*(?=\s)")
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "sr.", "jr.", "vs.", "etc.", "e.g.", "i.e.",
                  "no.", "approx.", "fig.", "mt."}
_CLAUSE_END = re.compile(r"(?<=[,;:\u2014\u2013\uff0c\u3001])\s+")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")


class TextError(ValueError):
    """The caller's text cannot be spoken (empty, too long, nothing pronounceable)."""


# Every door says the same for "" and for text of only spaces (the HTTP schema's empty-string error included).
EMPTY_TEXT = "text is empty or only whitespace: there is nothing to speak"


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
        raise TextError(EMPTY_TEXT)
    if not any(ch.isalnum() for ch in re.sub(_TAG, "", clean)):
        raise TextError("text has nothing to pronounce (no letters or digits)")
    return clean


def _tag_spans(text: str) -> List[Tuple[int, int]]:
    return [m.span() for m in TAG_RE.finditer(text)]


def _inside(spans: List[Tuple[int, int]], pos: int) -> bool:
    """True when a cut at `pos` would fall strictly inside a tag."""
    return any(start < pos < end for start, end in spans)


def _words(text: str) -> List[str]:
    """Space-separated words, where a tag with spaces inside ('[clear throat]') stays part of one word."""
    return _WORD_RE.findall(text)


def _clauses(piece: str) -> List[str]:
    """Split after clause marks followed by a space (never inside a tag)."""
    spans = _tag_spans(piece)
    out, start = [], 0
    for m in _CLAUSE_END.finditer(piece):
        if _inside(spans, m.start()):
            continue
        out.append(piece[start:m.start()])
        start = m.end()
    out.append(piece[start:])
    return out


def _hard_split(word: str, max_chars: int) -> List[str]:
    """Cut a word longer than max_chars into pieces of at most max_chars, moving a cut that would fall inside a
    tag to the tag's start (a tag longer than max_chars becomes a piece of its own, longer than the limit)."""
    spans = _tag_spans(word)
    out = []
    while len(word) > max_chars:
        cut = max_chars
        for start, end in spans:
            if start < cut < end:
                cut = start if start > 0 else end
                break
        out.append(word[:cut])
        word = word[cut:]
        spans = [(s - cut, e - cut) for s, e in spans if e > cut]
    if word:
        out.append(word)
    return out


def _split_long(piece: str, max_chars: int) -> List[str]:
    """Split one over-long sentence at clause marks, then at spaces, then hard (never inside a tag)."""
    if len(piece) <= max_chars:
        return [piece]
    out: List[str] = []
    for part in _pack(_clauses(piece), max_chars):
        if len(part) <= max_chars:
            out.append(part)
            continue
        for word_run in _pack(_words(part), max_chars):
            if len(word_run) > max_chars:  # a single "word" longer than the limit
                out.extend(_hard_split(word_run, max_chars))
            else:
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
    """Sentence-aware pieces of at most max_chars; short sentences are kept apart (each streams sooner).

    Nothing is dropped or reordered: consecutive pieces are separated by one space in the normalized text, except
    where a single word longer than max_chars had to be cut (no space there). Tags are never cut.
    """
    text = normalize(text)
    if not text:
        return []
    pieces: List[str] = []
    start = 0
    sentences = []
    spans = _tag_spans(text)
    for m in _SENTENCE_END.finditer(text):
        if _inside(spans, m.end()) or _inside(spans, m.start()):
            continue  # punctuation inside a tag such as "[um. yes]"
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
