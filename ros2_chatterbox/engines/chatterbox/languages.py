"""Chatterbox Multilingual's text preparation for its 23 languages, without a model hub.

A faithful copy of chatterbox-tts 0.1.7: `punc_norm` and `SUPPORTED_LANGUAGES` (mtl_tts.py), and
`MTLTokenizer.encode` up to its tokenizer call (models/tokenizers/tokenizer.py), so that the engine can run the
`tokenizers` library itself on `prepare_text(punc_norm(text), language, ...)`. Where upstream differs:
  - a package a language needs (pykakasi, spacy-pkuseg) missing raises LanguageSupportError; upstream logs a
    warning and feeds the model other text;
  - nothing is downloaded: Cangjie5_TC.json comes from the model's folder (upstream fetches it from the hub), and
    pkuseg's model from a folder (`spacy_pkuseg.pkuseg()` downloads it from GitHub on first use);
  - the optional steps left out (Hebrew diacritics, Russian stress marks) are listed by missing_optional().
Heavy packages are imported inside functions: this module imports with the standard library alone.
"""
from __future__ import annotations

import importlib.util
import json
import os
import threading
import unicodedata
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

LANGUAGES = {
    "ar": "Arabic", "da": "Danish", "de": "German", "el": "Greek", "en": "English", "es": "Spanish",
    "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "it": "Italian", "ja": "Japanese",
    "ko": "Korean", "ms": "Malay", "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese",
    "ru": "Russian", "sv": "Swedish", "sw": "Swahili", "tr": "Turkish", "zh": "Chinese",
}
ALIASES = {"nb": "no", "nn": "no", "iw": "he"}  # Bokmål, Nynorsk; Hebrew's old ISO 639-1 code
INSTALL = "pip install 'ros2_chatterbox[multilingual]'"
SPACE = "[SPACE]"
PKUSEG_MODEL_URL = "https://github.com/explosion/spacy-pkuseg/releases/download/v0.0.26/spacy_ontonotes.zip"
PKUSEG_MODEL_FILES = ("features.msgpack", "weights.npz")


class LanguageSupportError(RuntimeError):
    """A language's text preparation cannot run here: a package or data file is missing (the message says which)."""


def normalize_language(value: Optional[str]) -> str:
    """The supported code for `value` ("FR", " fr-FR ", "pt_BR", "zh-Hant", "nb"), or "" for None/blank (the
    caller's default). ValueError for anything else, naming the value and the supported codes."""
    text = "" if value is None else str(value).strip()
    if not text:
        return ""
    code = text.lower().replace("_", "-").split("-")[0]
    code = ALIASES.get(code, code)
    if code not in LANGUAGES:
        raise ValueError(f"unsupported language {value!r}; supported: {', '.join(LANGUAGES)}")
    return code


def unsupported_message(language: str, supported: Iterable[str], model: str = "") -> str:
    """The refusal callers give: "language 'xx' is not supported by model 'turbo'; supported: en"."""
    by = f" by model '{model}'" if model else ""
    return f"language '{language}' is not supported{by}; supported: {', '.join(supported)}"


def punc_norm(text: str) -> str:
    """Upstream's punctuation clean-up (mtl_tts.punc_norm), unchanged: capital first letter, single spaces, LLM
    punctuation replaced, a full stop added when the text ends without one."""
    if len(text) == 0:
        return "You need to add some text for me to talk."
    if text[0].islower():
        text = text[0].upper() + text[1:]
    text = " ".join(text.split())
    for old, new in (("...", ", "), ("…", ", "), (":", ","), (" - ", ", "), (";", ", "), ("—", "-"), ("–", "-"),
                     (" ,", ","), ("“", "\""), ("”", "\""), ("‘", "'"), ("’", "'")):
        text = text.replace(old, new)
    text = text.rstrip(" ")
    if not any(text.endswith(p) for p in (".", "!", "?", "-", ",", "、", "，", "。", "？", "！")):
        text += "."
    return text


def missing_optional(language: str) -> List[str]:
    """Upstream's optional steps for `language` that prepare_text leaves out here, each with why ([] if none): log
    them, so that a difference from upstream's model input is never silent."""
    code = normalize_language(language)
    if code == "he":
        # upstream calls Dicta() without the model path every dicta-onnx release (1.0.0-1.0.9) requires; the
        # TypeError is caught and the text goes on unchanged: upstream never adds diacritics either
        return ["Hebrew diacritics (dicta-onnx): left out, as upstream leaves them out in effect (its Dicta() call "
                "fails and it passes the text unchanged)"]
    if code == "ru" and importlib.util.find_spec("russian_text_stresser") is None:
        return ["Russian stress marks: the package russian_text_stresser is not installed (it is not on PyPI; "
                "upstream leaves the marks out too when it is missing)"]
    return []


def default_pkuseg_model() -> Path:
    """Where `spacy_pkuseg.pkuseg()` unzips its model after downloading it: $PKUSEG_HOME or ~/.pkuseg."""
    return Path(os.path.expanduser(os.environ.get("PKUSEG_HOME", "~/.pkuseg"))) / "spacy_ontonotes"


def load_language(language: str, cangjie_file: Optional[PathLike] = None,
                  pkuseg_model: Optional[PathLike] = None) -> List[str]:
    """Load what `language`'s step needs now (cached), rather than at the first request: LanguageSupportError if it
    cannot. Returns missing_optional(language)."""
    code = _code(language)
    with _LOCK:
        _converter(code, cangjie_file, pkuseg_model)
    return missing_optional(code)


def prepare_text(text: str, language: str, cangjie_file: Optional[PathLike] = None,
                 pkuseg_model: Optional[PathLike] = None) -> str:
    """The string upstream's MTLTokenizer.encode hands its tokenizer: lowercase, NFKD, the language's step,
    "[lang]" in front, spaces as [SPACE]. Chinese needs `cangjie_file` (the model's Cangjie5_TC.json) and pkuseg's
    model folder `pkuseg_model` (default: default_pkuseg_model())."""
    code = _code(language)
    text = unicodedata.normalize("NFKD", text.lower())
    with _LOCK:  # the converters are shared, and pkuseg's loader sets module globals
        step = _converter(code, cangjie_file, pkuseg_model)
        if step is not None:
            text = step(text)
    return f"[{code}]{text}".replace(" ", SPACE)


def clear_cache() -> None:
    """Drop the loaded converters (the Cangjie table and pkuseg's model take tens of MB)."""
    with _LOCK:
        _CACHE.clear()


# --- converters, loaded once: a few entries at most, under one lock -------------------------------------------
_LOCK = threading.RLock()
_CACHE: "OrderedDict[Tuple[Any, ...], Any]" = OrderedDict()
_CACHE_SIZE = 4


def _cached(key: Tuple[Any, ...], build: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = build()
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _code(language: str) -> str:
    code = normalize_language(language)
    if not code:
        raise ValueError(f"no language given; supported: {', '.join(LANGUAGES)}")
    return code


def _require(module: str, package: str, code: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise LanguageSupportError(f"{LANGUAGES[code]} text needs the Python package '{package}', which is not "
                                   f"installed: {INSTALL} (or pip install {package})") from exc


def _converter(code: str, cangjie_file: Optional[PathLike],
               pkuseg_model: Optional[PathLike]) -> Optional[Callable[[str], str]]:
    """The language's step, a function of the lowercased NFKD text (None: the language has none here)."""
    if code == "ja":
        kakasi = _cached(("kakasi",), lambda: _require("pykakasi", "pykakasi", "ja").kakasi())
        return lambda text: _hiragana(text, kakasi)
    if code == "zh":
        table = _cangjie_table(cangjie_file)
        segmenter = _segmenter(pkuseg_model)
        return lambda text: _chinese(text, segmenter, table)
    if code == "ko":
        return _korean
    if code == "ru" and not missing_optional("ru"):
        return _cached(("stresser",), _russian_stresser).stress_text
    return None


def _hiragana(text: str, kakasi: Any) -> str:
    """Upstream's hiragana_normalize: words with kanji become hiragana (a space before one starting with は or へ),
    everything else (katakana included) stays as written; then NFKD."""
    out = []
    for word in kakasi.convert(text):
        orig, hira = word["orig"], word["hira"]
        if any(19968 <= ord(c) <= 40959 for c in orig):  # upstream's is_kanji
            out.append(" " + hira if hira and hira[0] in ("は", "へ") else hira)
        else:
            out.append(orig)
    return unicodedata.normalize("NFKD", "".join(out))


def _korean(text: str) -> str:
    """Upstream's korean_normalize: Hangul syllables split into their jamo (initial, medial, optional final)."""
    out = []
    for char in text:
        if "\uac00" <= char <= "\ud7af":
            base = ord(char) - 0xAC00
            final = chr(0x11A7 + base % 28) if base % 28 > 0 else ""
            char = chr(0x1100 + base // (21 * 28)) + chr(0x1161 + (base % (21 * 28)) // 28) + final
        out.append(char)
    return "".join(out).strip()


def _chinese(text: str, segmenter: Any, table: Dict[str, str]) -> str:
    """Upstream's ChineseCangjieConverter: words separated by spaces, each letter ("Lo") with a Cangjie code as
    its code's tokens ("[cj_x]...[cj_.]"), the others as they are."""
    spaced = " ".join(segmenter.cut(text))
    return "".join(table.get(c, c) if unicodedata.category(c) == "Lo" else c for c in spaced)


def _cangjie_table(cangjie_file: Optional[PathLike]) -> Dict[str, str]:
    if cangjie_file is None or not Path(cangjie_file).is_file():
        raise LanguageSupportError(f"Chinese text needs Cangjie5_TC.json from the model's folder (got {cangjie_file})")
    path = Path(cangjie_file).resolve()
    stat = path.stat()
    return _cached(("cangjie", str(path), stat.st_mtime_ns, stat.st_size), lambda: _read_cangjie(path))


def _read_cangjie(path: Path) -> Dict[str, str]:
    """glyph -> its tokens, as upstream's _load_cangjie_mapping and _cangjie_encode: the file is a JSON list of
    "glyph<TAB>code[<TAB>...]"; a glyph's code gets its index among the glyphs sharing that code (0 left out)."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        pairs = [entry.split("\t")[:2] for entry in entries]
        word2cj = {word: code for word, code in pairs}  # the last line of a glyph wins, as upstream's dict
    except (ValueError, TypeError, AttributeError) as exc:
        raise LanguageSupportError(f"{path} is not a Cangjie5_TC.json (a list of 'glyph<TAB>code'): {exc}") from exc
    cj2word: Dict[str, List[str]] = {}
    for word, code in pairs:
        cj2word.setdefault(code, []).append(word)
    table = {}
    for word, code in word2cj.items():
        index = cj2word[code].index(word)
        full = code + (str(index) if index > 0 else "")
        table[word] = "".join(f"[cj_{c}]" for c in full) + "[cj_.]"
    return table


def _segmenter(pkuseg_model: Optional[PathLike]) -> Any:
    """pkuseg with its model read from a folder: given a folder instead of a model name, pkuseg downloads nothing."""
    spacy_pkuseg = _require("spacy_pkuseg", "spacy-pkuseg", "zh")
    folder = Path(pkuseg_model).expanduser() if pkuseg_model else default_pkuseg_model()
    missing = [name for name in PKUSEG_MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise LanguageSupportError(
            f"Chinese word segmentation needs pkuseg's spacy_ontonotes model in {folder} (missing: "
            f"{', '.join(missing)}); nothing is downloaded here: unzip {PKUSEG_MODEL_URL} into that folder")
    folder = folder.resolve()
    return _cached(("pkuseg", str(folder)), lambda: spacy_pkuseg.pkuseg(model_name=str(folder)))


def _russian_stresser() -> Any:
    try:
        from russian_text_stresser.text_stresser import RussianTextStresser
        return RussianTextStresser()
    except Exception as exc:  # noqa: BLE001 - a dictionary or spaCy model it loads may be missing
        raise LanguageSupportError(f"Russian stress marks: russian_text_stresser failed to load: {exc}") from exc
