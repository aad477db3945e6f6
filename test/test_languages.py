"""Chatterbox Multilingual's text preparation (engines/chatterbox/languages.py): the 23 codes, language tags, and the
string handed to the tokenizer for each script family, against upstream's own code where chatterbox-tts is here.

Upstream's files are read without importing the chatterbox package (its __init__ loads every model class, ~10 s):
punc_norm and SUPPORTED_LANGUAGES are compiled out of mtl_tts.py, the tokenizer module is loaded from its file. No
model hub: Cangjie5_TC.json and pkuseg's model are tiny ones written here in the real formats.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import json
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optional import make_setup, optional_import, requires  # noqa: E402
from ros2_chatterbox.engines.chatterbox import languages as L  # noqa: E402

pytestmark = pytest.mark.timeout(60)

EXTRA_HINT = "pip install pykakasi==2.3.0 spacy-pkuseg==1.0.2"  # the multilingual extra
needs_pykakasi = requires("pykakasi", hint=EXTRA_HINT)
needs_pkuseg = requires("spacy_pkuseg", hint=EXTRA_HINT)
pykakasi = optional_import("pykakasi", EXTRA_HINT)
spacy_pkuseg = optional_import("spacy_pkuseg", EXTRA_HINT)

CODES = "ar da de el en es fi fr he hi it ja ko ms nl no pl pt ru sv sw tr zh".split()
# A tiny Cangjie5_TC.json: 日 and 曰 share the code "a" (曰 gets index 1); 北 is listed twice (the last line wins,
# its index counts the first); a third field is ignored.
CANGJIE = ["我\thqi", "日\ta", "曰\ta", "北\tlp", "北\tlmp\textra", "中\tl"]


def _upstream_file(*parts: str):
    """A file of the installed chatterbox package, found without importing it; None when absent."""
    spec = importlib.util.find_spec("chatterbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    return path if path.is_file() else None


UPSTREAM_MTL = _upstream_file("mtl_tts.py")
UPSTREAM_TOKENIZER = _upstream_file("models", "tokenizers", "tokenizer.py")
UPSTREAM_MISSING = f"needs chatterbox-tts: run `{make_setup('setup')}`"
needs_upstream = pytest.mark.skipif(UPSTREAM_MTL is None, reason=UPSTREAM_MISSING)
_tokenizer_file = pytest.mark.skipif(UPSTREAM_TOKENIZER is None, reason=UPSTREAM_MISSING)
_tokenizer_imports = requires("torch", "tokenizers", "huggingface_hub")


def needs_upstream_tokenizer(test):
    """Upstream's tokenizer module: its file, and what it imports."""
    return _tokenizer_file(_tokenizer_imports(test))


@functools.lru_cache(maxsize=None)
def upstream_mtl() -> dict:
    """punc_norm and SUPPORTED_LANGUAGES compiled from upstream's mtl_tts.py alone."""
    tree = ast.parse(UPSTREAM_MTL.read_text(encoding="utf-8"))
    keep = [node for node in tree.body
            if (isinstance(node, ast.FunctionDef) and node.name == "punc_norm")
            or (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SUPPORTED_LANGUAGES"
                                                     for t in node.targets))]
    namespace: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(UPSTREAM_MTL), "exec"), namespace)
    return namespace


@functools.lru_cache(maxsize=None)
def upstream_tokenizer() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("upstream_mtl_tokenizer", UPSTREAM_TOKENIZER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Capture:
    """Stands in for upstream's tokenizers.Tokenizer: keeps the string MTLTokenizer.encode hands it."""

    def __init__(self):
        self.texts = []

    def encode(self, text):
        self.texts.append(text)
        return types.SimpleNamespace(ids=[])


def upstream_input(text: str, language: str, cangjie_converter=None) -> str:
    """What upstream's generate() feeds its tokenizer for `text`: punc_norm, then MTLTokenizer.encode."""
    module = upstream_tokenizer()
    tokenizer = module.MTLTokenizer.__new__(module.MTLTokenizer)
    tokenizer.tokenizer = _Capture()
    tokenizer.cangjie_converter = cangjie_converter
    tokenizer.encode(upstream_mtl()["punc_norm"](text), language_id=language)
    return tokenizer.tokenizer.texts[0]


@pytest.fixture(autouse=True)
def fresh_cache():
    L.clear_cache()
    yield
    L.clear_cache()


@pytest.fixture
def cangjie_file(tmp_path):
    path = tmp_path / "Cangjie5_TC.json"
    path.write_text(json.dumps(CANGJIE, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def pkuseg_model(tmp_path):
    """A tiny model in pkuseg's format (features.msgpack, weights.npz): every letter starts a word, then pkuseg's
    bundled dictionary joins known words (北京)."""
    import numpy as np
    import srsly  # spacy-pkuseg's own dependency
    folder = tmp_path / "spacy_ontonotes"
    folder.mkdir()
    srsly.write_msgpack(folder / "features.msgpack",
                        {"unigram": [], "bigram": [], "feature_to_idx": {"x": 0}, "tag_to_idx": {"B": 0, "I": 1}})
    weights = np.zeros(2 * (1 + 2))
    weights[0] = 1.0  # feature 0, tag B
    np.savez(folder / "weights.npz", sizes=np.array([2, 1]), w=weights)
    return folder


def test_the_23_languages_in_upstreams_order():
    assert list(L.LANGUAGES) == CODES
    assert L.LANGUAGES["no"] == "Norwegian" and L.LANGUAGES["zh"] == "Chinese"


@needs_upstream
def test_the_languages_are_upstreams():
    assert L.LANGUAGES == upstream_mtl()["SUPPORTED_LANGUAGES"]


@pytest.mark.parametrize("value, code", [
    ("fr", "fr"), ("FR", "fr"), (" fr-FR ", "fr"), ("pt_BR", "pt"), ("zh-Hant", "zh"), ("ZH_hans_CN", "zh"),
    ("nb", "no"), ("nn-NO", "no"), ("iw", "he"), ("En-Us", "en"), ("", ""), ("   ", ""), (None, ""),
])
def test_normalize_language(value, code):
    assert L.normalize_language(value) == code


@pytest.mark.parametrize("value", ["xx", "english", "-", "f r", "zz-FR", "fra", "_en"])
def test_normalize_language_refuses_with_the_codes(value):
    with pytest.raises(ValueError) as info:
        L.normalize_language(value)
    assert repr(value) in str(info.value) and ", ".join(CODES) in str(info.value)


def test_unsupported_message():
    assert L.unsupported_message("xx", ["en"], "turbo") == "language 'xx' is not supported by model 'turbo'; " \
                                                            "supported: en"
    assert L.unsupported_message("xx", ["en", "fr"]) == "language 'xx' is not supported; supported: en, fr"


PUNCTUATION = ["", "hello there", "  two   spaces  ", "wait... what…", "a: b; c - d", "“quoted” ‘single’",
               "em—dash en–dash", "already!", "你好", "你好。", "trailing ,", "x ,y"]


def test_punc_norm():
    assert L.punc_norm("hello there") == "Hello there."
    assert L.punc_norm("wait... what: yes; no") == "Wait,  what, yes,  no."
    assert L.punc_norm("“Hi” — she said") == "\"Hi\" - she said."
    assert L.punc_norm("你好") == "你好." and L.punc_norm("你好。") == "你好。"


@needs_upstream
@pytest.mark.parametrize("text", PUNCTUATION)
def test_punc_norm_is_upstreams(text):
    assert L.punc_norm(text) == upstream_mtl()["punc_norm"](text)


@pytest.mark.parametrize("language, text, prepared", [
    ("fr", "Ça a été", "[fr]c\u0327a[SPACE]a[SPACE]e\u0301te\u0301"),                  # Latin: accents split (NFKD)
    ("de", "Größe Übung", "[de]gro\u0308\u00dfe[SPACE]u\u0308bung"),
    ("es", "¿Qué año?", "[es]\u00bfque\u0301[SPACE]an\u0303o?"),
    ("en", "Hello  World", "[en]hello[SPACE][SPACE]world"),
    ("ar", "آمين مرحبا", "[ar]\u0627\u0653\u0645\u064a\u0646[SPACE]\u0645\u0631\u062d\u0628\u0627"),  # Arabic
    ("hi", "ज़िंदगी", "[hi]\u091c\u093c\u093f\u0902\u0926\u0917\u0940"),               # Devanagari: nukta split
    ("ko", "안녕 세상", "[ko]\u110b\u1161\u11ab\u1102\u1167\u11bc[SPACE]\u1109\u1166\u1109\u1161\u11bc"),  # jamo
    ("el", "Καλημέρα", "[el]\u03ba\u03b1\u03bb\u03b7\u03bc\u03b5\u0301\u03c1\u03b1"),
])
def test_prepare_text(language, text, prepared):
    assert L.prepare_text(text, language) == prepared
    assert L.missing_optional(language) == []


def test_prepare_text_takes_language_tags():
    assert L.prepare_text("Olá", "pt_BR") == "[pt]ola\u0301"
    with pytest.raises(ValueError, match="no language given"):
        L.prepare_text("hi", "")


def test_russian_without_its_stress_step_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "russian_text_stresser", None)
    assert L.prepare_text("Мой мир", "ru") == "[ru]\u043c\u043e\u0438\u0306[SPACE]\u043c\u0438\u0440"  # й: и + ̆
    [skipped] = L.load_language("ru")
    assert "Russian stress" in skipped and "russian_text_stresser" in skipped


def test_hebrew_without_diacritics_says_so():
    assert L.prepare_text("שלום עולם", "he") == "[he]\u05e9\u05dc\u05d5\u05dd[SPACE]\u05e2\u05d5\u05dc\u05dd"
    [skipped] = L.missing_optional("iw")
    assert "Hebrew diacritics" in skipped and "dicta-onnx" in skipped


@needs_pykakasi
def test_japanese_kanji_to_hiragana():
    # 赤い -> あかい; 花 -> はな, a word starting with は: upstream puts a space before it; katakana stays
    assert L.prepare_text("赤い花とカタカナ", "ja") == "[ja]あかい[SPACE]はなとカタカナ"
    assert L.prepare_text("日本語です", "ja") == "[ja]にほんこ\u3099て\u3099す"  # ご, で: NFKD splits the voicing


@needs_pkuseg
def test_chinese_words_and_cangjie_codes(cangjie_file, pkuseg_model):
    prepared = L.prepare_text("我爱北京。", "zh", cangjie_file=cangjie_file, pkuseg_model=pkuseg_model)
    # 爱 and 京 have no code in the tiny table: they stay; 北's last line (lmp) wins; 。 is no letter ("Po")
    assert prepared == "[zh][cj_h][cj_q][cj_i][cj_.][SPACE]爱[SPACE][cj_l][cj_m][cj_p][cj_.]京[SPACE]。"
    assert L.prepare_text("日曰", "zh", cangjie_file, pkuseg_model) == "[zh][cj_a][cj_.][SPACE][cj_a][cj_1][cj_.]"


def test_chinese_needs_the_cangjie_file(tmp_path):
    for missing in (None, tmp_path / "Cangjie5_TC.json"):
        with pytest.raises(L.LanguageSupportError, match="Cangjie5_TC.json"):
            L.prepare_text("中文", "zh", cangjie_file=missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(["中 without a tab"]), encoding="utf-8")
    with pytest.raises(L.LanguageSupportError, match="is not a Cangjie5_TC.json"):
        L.prepare_text("中文", "zh", cangjie_file=bad)


@needs_pkuseg
def test_pkuseg_model_is_never_downloaded(cangjie_file, tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("pkuseg tried to download its model")
    monkeypatch.setattr(spacy_pkuseg, "download_model", no_download)
    monkeypatch.setenv("PKUSEG_HOME", str(tmp_path / "home"))
    assert L.default_pkuseg_model() == tmp_path / "home" / "spacy_ontonotes"
    with pytest.raises(L.LanguageSupportError) as info:
        L.load_language("zh", cangjie_file=cangjie_file)
    assert str(tmp_path / "home" / "spacy_ontonotes") in str(info.value) and L.PKUSEG_MODEL_URL in str(info.value)


@pytest.mark.parametrize("module, package, language, text", [
    ("pykakasi", "pykakasi", "ja", "日本"), ("spacy_pkuseg", "spacy-pkuseg", "zh", "中文"),
])
def test_a_missing_required_package_names_itself(module, package, language, text, cangjie_file, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(L.LanguageSupportError) as info:
        L.prepare_text(text, language, cangjie_file=cangjie_file)
    message = str(info.value)
    assert f"'{package}'" in message and L.INSTALL in message and L.LANGUAGES[language] in message


@needs_pykakasi
def test_converters_are_cached_bounded_and_shared_by_threads(tmp_path):
    results = []
    threads = [threading.Thread(target=lambda: results.append(L.prepare_text("赤い花", "ja"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["[ja]あかい[SPACE]はな"] * 8
    assert len(L._CACHE) == 1  # one kakasi for all
    for i in range(6):
        path = tmp_path / f"cangjie{i}.json"
        path.write_text(json.dumps(CANGJIE), encoding="utf-8")
        L._cangjie_table(path)
    assert len(L._CACHE) == L._CACHE_SIZE


def test_imports_without_heavy_packages():
    blocked = ["torch", "numpy", "tokenizers", "pykakasi", "spacy_pkuseg", "rclpy", "fastapi", "chatterbox"]
    code = ("import sys\n"
            f"for name in {blocked!r}:\n    sys.modules[name] = None\n"
            "from ros2_chatterbox.engines.chatterbox import languages as L\n"
            "assert L.prepare_text('Hi there', 'en') == '[en]hi[SPACE]there'\n")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


UPSTREAM_SAMPLES = [
    ("en", "Hello there: it's “fine”... isn't it?"), ("fr", "Ça a été l'été — très chaud"),
    ("de", "Größe; Übung"), ("es", "¿Qué año es?"), ("ru", "Мой мир, ёлка"), ("ar", "آمين مرحبا"),
    ("hi", "ज़िंदगी नमस्ते"), ("ko", "안녕하세요 세상"), ("he", "שלום עולם"), ("el", "Καλημέρα κόσμε"),
    ("tr", "İstanbul'a gidiyorum"), ("pl", "Zażółć gęślą jaźń"), ("sw", "Habari ya dunia"),
]


@needs_upstream_tokenizer
@pytest.mark.parametrize("language, text", UPSTREAM_SAMPLES)
def test_matches_upstream(language, text):
    assert L.prepare_text(L.punc_norm(text), language) == upstream_input(text, language)


@needs_upstream_tokenizer
@needs_pykakasi
@pytest.mark.parametrize("text", ["赤い花とカタカナ", "日本語で話します。", "私は東京へ行きました", "ひらがなだけ"])
def test_japanese_matches_upstream(text):
    assert L.prepare_text(L.punc_norm(text), "ja") == upstream_input(text, "ja")


@needs_upstream_tokenizer
@needs_pkuseg
@pytest.mark.parametrize("text", ["我爱北京。", "日曰中文，北京！", "Hello 中国"])
def test_chinese_matches_upstream(text, cangjie_file, pkuseg_model, tmp_path, monkeypatch):
    module = upstream_tokenizer()
    # upstream's own loader on our file (it would fetch the file from the hub), its pkuseg on our tiny model
    monkeypatch.setattr(module, "hf_hub_download", lambda repo_id, filename, cache_dir: str(cangjie_file))
    converter = module.ChineseCangjieConverter.__new__(module.ChineseCangjieConverter)
    converter.word2cj, converter.cj2word = {}, {}
    converter._load_cangjie_mapping(tmp_path)
    assert converter.word2cj, "upstream could not read the tiny Cangjie file"
    converter.segmenter = spacy_pkuseg.pkuseg(model_name=str(pkuseg_model))
    ours = L.prepare_text(L.punc_norm(text), "zh", cangjie_file=cangjie_file, pkuseg_model=pkuseg_model)
    assert ours == upstream_input(text, "zh", converter)
