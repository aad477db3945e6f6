"""Chatterbox Multilingual's checkpoint (engines/chatterbox/multilingual.py): a tiny random checkpoint in the real file
layout loads through upstream's ChatterboxMultilingualTTS.from_local and through the lean load_multilingual to equal
parameters and buffers; the hub-free tokenizer gives upstream's token ids; the loaded object speaks; a Turbo folder
is named as such. Nothing here touches the network: sockets refuse to connect while loading."""
import socket
import time
from contextlib import contextmanager

import pytest

from optional import optional_import, requires

torch = optional_import("torch")
chatterbox = optional_import("chatterbox")

pytestmark = requires("torch", "chatterbox")


@contextmanager
def no_network(mp):
    """Sockets cannot connect; upstream's two downloads in MTLTokenizer (Cangjie5_TC.json from the hub, pkuseg's model
    from GitHub) are recorded and refused."""
    import chatterbox.models.tokenizers.tokenizer as tok
    calls = []

    def refuse_connect(self, *args, **kwargs):
        calls.append(("connect", args))
        raise OSError("network use in a test")

    def refuse_download(*args, **kwargs):
        calls.append(("hf_hub_download", kwargs.get("filename")))
        raise OSError("offline")

    def no_segmenter(self):
        calls.append(("pkuseg", None))
        self.segmenter = None

    mp.setattr(socket.socket, "connect", refuse_connect)
    mp.setattr(tok, "hf_hub_download", refuse_download)
    mp.setattr(tok.ChineseCangjieConverter, "_init_segmenter", no_segmenter)
    yield calls


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from ros2_chatterbox.engines.chatterbox import multilingual
    folder = tmp_path_factory.mktemp("multilingual")
    multilingual.build_tiny_multilingual(folder, seed=0)
    return folder


@pytest.fixture(scope="module")
def loaded(ckpt):
    """(upstream's from_local, load_multilingual, what upstream tried to download), both inside the tiny patches."""
    import chatterbox.mtl_tts as mtl
    from ros2_chatterbox.engines.chatterbox import multilingual
    arch = multilingual.read_multilingual_arch(ckpt)
    assert arch is not None and arch["model"] == "multilingual"
    with pytest.MonkeyPatch.context() as mp, no_network(mp) as calls:
        with multilingual.tiny_multilingual_patches(arch):
            upstream = mtl.ChatterboxMultilingualTTS.from_local(ckpt, "cpu")
        upstream_calls = list(calls)
        with multilingual.tiny_multilingual_patches(arch):
            ours = multilingual.load_multilingual(ckpt, "cpu")
        ours_calls = calls[len(upstream_calls):]
    return upstream, ours, upstream_calls, ours_calls


def test_loads_what_upstream_from_local_loads(loaded):
    upstream, ours, _, _ = loaded
    for part in ("ve", "t3", "s3gen"):
        theirs = {**dict(getattr(upstream, part).named_parameters()), **dict(getattr(upstream, part).named_buffers())}
        mine = {**dict(getattr(ours, part).named_parameters()), **dict(getattr(ours, part).named_buffers())}
        assert sorted(mine) == sorted(theirs), (part, set(mine) ^ set(theirs))
        for name, ref in theirs.items():
            got = mine[name]
            assert (got.dtype, got.device, tuple(got.shape)) == (ref.dtype, ref.device, tuple(ref.shape)), name
            assert torch.equal(got, ref), f"{part}.{name} differs from from_local's"
    assert ours.t3.hp.is_multilingual and ours.t3.hp.text_tokens_dict_size == 2454
    assert not ours.s3gen.meanflow
    assert torch.equal(ours.conds.t3.speaker_emb, upstream.conds.t3.speaker_emb)
    assert ours.conds.t3.emotion_adv is not None


def test_overrides_and_dtype_without_the_patches(ckpt, loaded):
    """t3_overrides and s3gen_class load the tiny checkpoint outside the patches; T3 comes in t3_dtype."""
    import chatterbox.mtl_tts as mtl
    from ros2_chatterbox.engines.chatterbox import multilingual
    upstream = loaded[0]
    arch = multilingual.read_multilingual_arch(ckpt)
    with multilingual.tiny_multilingual_patches(arch):
        tiny_s3gen = mtl.S3Gen
    model = multilingual.load_multilingual(ckpt, "cpu", t3_dtype=torch.bfloat16, t3_overrides=arch["t3"],
                                           s3gen_class=tiny_s3gen)
    mine = dict(model.t3.named_parameters())
    for name, ref in upstream.t3.named_parameters():
        assert mine[name].dtype == torch.bfloat16 and torch.equal(mine[name], ref.to(torch.bfloat16)), name
    theirs = upstream.s3gen.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.s3gen.state_dict().items())


def test_no_network_and_upstream_only_tries_the_cangjie_download(loaded):
    _, _, upstream_calls, ours_calls = loaded
    assert ours_calls == []
    # upstream's from_local itself tries exactly these: the Cangjie table from the hub, pkuseg's model (downloaded on
    # first use by spacy_pkuseg.pkuseg(), refused here), and nothing else
    assert upstream_calls == [("hf_hub_download", "Cangjie5_TC.json"), ("pkuseg", None)]


def test_patches_restore_upstream(loaded):
    import chatterbox.mtl_tts as mtl
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.modules import cond_enc, perceiver
    assert mtl.S3Gen is S3Gen
    assert cond_enc.Perceiver is perceiver.Perceiver
    assert llama_configs.LLAMA_CONFIGS["Llama_520M"] is llama_configs.LLAMA_520M_CONFIG_DICT


TEXTS = [("en", "Hello there, how are you today?"), ("fr", "Bonjour à tous, ça va très bien!"),
         ("ko", "안녕하세요, 반갑습니다."), ("ru", "Привет, как дела? Всё хорошо."),
         ("ja", "こんにちは、今日は良い天気ですね。カタカナ")]


@pytest.mark.parametrize("lang,text", TEXTS, ids=[t[0] for t in TEXTS])
def test_tokenizer_gives_upstreams_ids(loaded, lang, text):
    if lang == "ja" and optional_import("pykakasi") is None:
        pytest.skip("needs pykakasi: run `make setup-test`")
    from chatterbox.models.tokenizers.tokenizer import UNK, MTLTokenizer
    from chatterbox.mtl_tts import punc_norm
    upstream, ours, _, _ = loaded
    assert isinstance(ours.tokenizer, MTLTokenizer)
    theirs = upstream.tokenizer.text_to_tokens(punc_norm(text), language_id=lang)
    mine = ours.tokenizer.text_to_tokens(punc_norm(text), language_id=lang)
    assert mine.dtype == theirs.dtype and mine.tolist() == theirs.tolist()
    unk = ours.tokenizer.tokenizer.token_to_id(UNK)
    assert unk not in mine[0].tolist(), ours.tokenizer.decode(mine[0])  # the tiny vocabulary covers the text


def test_generates_with_the_loaded_object(loaded):
    _, ours, _, _ = loaded
    torch.manual_seed(0)
    start = time.perf_counter()
    wav = ours.generate("Bonjour à tous, ça va?", language_id="fr")
    seconds = time.perf_counter() - start
    assert wav.ndim == 2 and wav.shape[0] == 1
    assert 0 < wav.shape[1] < 24_000 * 10, wav.shape  # the tiny T3 stops after about as many tokens as text tokens
    assert torch.isfinite(wav).all()
    assert seconds < 60, seconds


def test_wrong_files_message_names_a_turbo_checkpoint(ckpt, tmp_path):
    from ros2_chatterbox.engines.chatterbox import multilingual, tiny_checkpoint
    turbo = tmp_path / "turbo"
    tiny_checkpoint.build_tiny_checkpoint(turbo, with_conds=False)
    message = multilingual.wrong_files_message(turbo)
    assert message is not None
    for part in ("t3_turbo_v1.safetensors", "Chatterbox Turbo", "t3_mtl23ls_v2.safetensors",
                 "set the parameter model to 'turbo'", "ResembleAI/chatterbox)"):
        assert part in message, (part, message)
    assert multilingual.wrong_files_message(ckpt) is None
    assert multilingual.wrong_files_message(tmp_path / "empty") is None
    assert multilingual.read_multilingual_arch(turbo) is None  # a Turbo tiny checkpoint is not a multilingual one
