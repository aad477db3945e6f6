"""Chatterbox Multilingual (23 languages, hub repository ResembleAI/chatterbox) with the pinned chatterbox-tts 0.1.7:
its checkpoint, a lean loader, and a tiny random checkpoint in its real file layout.

The checkpoint: ve.pt and s3gen.pt (torch.save state dicts), t3_mtl23ls_v2.safetensors (T3 on a 30-layer 1024-wide
Llama, "Llama_520M", with a perceiver resampler, emotion input and a 2,454-token grapheme vocabulary), the tokenizer
grapheme_mtl_merged_expanded_v1.json, Cangjie5_TC.json (Chinese) and conds.pt (built-in voice). `load_multilingual`
does what upstream's `ChatterboxMultilingualTTS.from_local` does, with upstream's classes, as lean as models.load_local
and with no network (upstream's MTLTokenizer fetches Cangjie5_TC.json from the hub and pkuseg's model from GitHub).
Heavy packages are imported inside functions.
"""
from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from . import languages, models
from .weights import load_weights, no_random_init

TEXT_VOCAB = 2454        # T3Config.multilingual(): upstream tells the multilingual model by this size
BACKBONE = "Llama_520M"  # the LLAMA_CONFIGS name T3Config.multilingual() builds T3 from
ARCH_FORMAT = "ros2_chatterbox-tiny-multilingual-1"


@dataclass(frozen=True)
class MultilingualSpec:
    """What models.ModelSpec says of Turbo/Nano, for Chatterbox Multilingual (ModelSpec is GPT-2 specific)."""
    name: str
    title: str
    model_id: str
    hub_repo: str
    t3_file: str
    ve_file: str
    s3gen_file: str
    tokenizer_file: str
    cangjie_file: str
    conds_file: str
    backbone: str
    languages: Tuple[str, ...]

    @property
    def files(self) -> Tuple[str, ...]:
        """The hub files from_pretrained fetches (conds.pt is optional)."""
        return (self.ve_file, self.t3_file, self.s3gen_file, self.tokenizer_file, self.cangjie_file, self.conds_file)


MULTILINGUAL = MultilingualSpec(
    "multilingual", "Chatterbox Multilingual", "chatterbox-multilingual", "ResembleAI/chatterbox",
    "t3_mtl23ls_v2.safetensors", "ve.pt", "s3gen.pt", "grapheme_mtl_merged_expanded_v1.json", "Cangjie5_TC.json",
    "conds.pt", BACKBONE, tuple(languages.LANGUAGES))


# ------------------------------------------------------------------------------------------------------- loading
@contextlib.contextmanager
def llama_backbone(overrides: Optional[Mapping[str, Any]] = None) -> Iterator[None]:
    """While active, LLAMA_CONFIGS["Llama_520M"] is upstream's config with `overrides` (under models' lock), and when
    that changes the width, T3's perceiver resampler (1024 wide in upstream's code) is built at the new width."""
    from chatterbox.models.t3 import llama_configs
    from chatterbox.models.t3.modules import cond_enc
    if not overrides:
        yield
        return
    cfg = dict(llama_configs.LLAMA_520M_CONFIG_DICT, **overrides)
    width = int(cfg["hidden_size"])
    with models.gpt2_configs({BACKBONE: cfg}):
        saved = cond_enc.Perceiver
        if width != 1024:
            cond_enc.Perceiver = lambda: saved(pre_attention_query_size=width, embedding_dim=width)
        try:
            yield
        finally:
            cond_enc.Perceiver = saved


def load_pt_weights(module, path: Path, device: str, dtype: Any = None) -> None:
    """`module.load_state_dict(torch.load(path), strict=True)` for a torch.save state dict, lean: the file mapped
    (mmap, weights_only), each tensor copied once onto `device` in the module's dtype (floating ones in `dtype`) and
    taken as the module's (assign). No mapping is kept: a file replaced later cannot change the module."""
    import torch
    own = module.state_dict()
    target = torch.device(device)
    try:
        mapped = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch.save file cannot be mapped
        mapped = torch.load(path, map_location="cpu", weights_only=True)
    state = {}
    for key in list(mapped):  # popped: each mapped tensor is released once copied
        t = mapped.pop(key)
        want = dtype if (dtype is not None and t.is_floating_point()) else own.get(key, t).dtype
        state[key] = t.to(device=target, dtype=want, copy=True)
    module.load_state_dict(state, strict=True, assign=True)


def load_multilingual(folder, device: str, t3_dtype: Any = None, t3_overrides: Optional[Mapping[str, Any]] = None,
                      s3gen_class: Any = None):
    """A ChatterboxMultilingualTTS from a checkpoint folder: upstream's from_local (0.1.7 mtl_tts.py) step by step
    with upstream's classes, every parameter and buffer equal to from_local's (test_multilingual_load checks it). But
    T3 and S3Gen are built without random init, their weights read one tensor at a time straight onto `device` (T3
    in `t3_dtype`) and taken as the parameters (load_weights, load_pt_weights), and the tokenizer is a
    LocalMTLTokenizer (no hub). `t3_overrides` change the Llama config, `s3gen_class` replaces upstream's S3Gen."""
    import chatterbox.mtl_tts as mtl
    folder, spec = Path(folder), MULTILINGUAL
    map_location = "cpu" if device in ("cpu", "mps") else None  # as upstream
    ve = mtl.VoiceEncoder()  # 1.4 M parameters: built and loaded as upstream does, from the mapped file
    load_pt_weights(ve, folder / spec.ve_file, "cpu")
    ve.to(device).eval()
    with no_random_init(), llama_backbone(t3_overrides):
        t3 = mtl.T3(mtl.T3Config.multilingual())
    load_weights(t3, folder / spec.t3_file, device, dtype=t3_dtype)
    t3.to(device).eval()  # buffers that are not in the file (rotary tables)
    with no_random_init():
        s3gen = (s3gen_class or mtl.S3Gen)()  # meanflow=False: 10 flow steps
    load_pt_weights(s3gen, folder / spec.s3gen_file, device)
    s3gen.to(device).eval()
    conds = None
    if (folder / spec.conds_file).exists():
        conds = mtl.Conditionals.load(folder / spec.conds_file, map_location=map_location).to(device)
    return mtl.ChatterboxMultilingualTTS(t3, s3gen, ve, local_tokenizer(folder), device, conds=conds)


_TOKENIZER_CLASS: Dict[str, Any] = {}


def local_tokenizer(folder):
    """A LocalMTLTokenizer for a checkpoint folder: upstream's MTLTokenizer (text_to_tokens, decode, the SOT/EOT check)
    whose __init__ reads only the folder and whose encode tokenizes languages.prepare_text's string (the Cangjie table
    from the folder): no hub, no pkuseg download; a missing package raises LanguageSupportError, not a warning."""
    if "cls" not in _TOKENIZER_CLASS:
        from chatterbox.models.tokenizers.tokenizer import SPACE, MTLTokenizer
        from tokenizers import Tokenizer

        class LocalMTLTokenizer(MTLTokenizer):
            def __init__(self, vocab_file_path, cangjie_file=None):  # noqa: D107 - no super().__init__: no hub
                self.tokenizer = Tokenizer.from_file(str(vocab_file_path))
                self.cangjie_file = cangjie_file
                self.check_vocabset_sot_eot()

            def encode(self, txt, language_id=None, lowercase=True, nfkd_normalize=True):
                if not language_id:  # upstream's steps when no language is given
                    txt = self.preprocess_text(txt, lowercase=lowercase, nfkd_normalize=nfkd_normalize)
                    txt = txt.replace(" ", SPACE)
                elif lowercase and nfkd_normalize:
                    txt = languages.prepare_text(txt, language_id, cangjie_file=self.cangjie_file)
                else:
                    raise ValueError("LocalMTLTokenizer prepares a language's text only with lowercase and NFKD")
                return self.tokenizer.encode(txt).ids

        _TOKENIZER_CLASS["cls"] = LocalMTLTokenizer
    folder = Path(folder)
    return _TOKENIZER_CLASS["cls"](folder / MULTILINGUAL.tokenizer_file, folder / MULTILINGUAL.cangjie_file)


def wrong_files_message(folder) -> Optional[str]:
    """Why `folder` cannot be loaded as Chatterbox Multilingual when it holds a Turbo or Nano checkpoint instead (as
    models.wrong_model_message words it); None when the multilingual T3 file is there or no known T3 file is."""
    folder, spec = Path(folder), MULTILINGUAL
    others = [s for s in models.MODELS.values() if (folder / s.t3_file).is_file()]
    if (folder / spec.t3_file).is_file() or not others:
        return None
    other = others[0]
    return (f"model_dir '{folder}' holds {other.t3_file} ({other.title}) but not {spec.t3_file}, which model "
            f"'{spec.name}' needs: set the parameter model to '{other.name}' to run {other.title}, or point "
            f"model_dir to a {spec.title} checkpoint ({spec.hub_repo})")


# ------------------------------------------------------------------------------------------------ tiny checkpoint
# Llama: upstream's alignment analyser (multilingual models only) reads heads (9, 2), (12, 15), (13, 11): 14 layers
# and 16 heads at least. The text vocabulary stays 2,454: T3Config.is_multilingual is that test.
DEFAULT_ARCH: Dict[str, Any] = {
    "format": ARCH_FORMAT, "model": "multilingual",
    "t3": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 14, "num_attention_heads": 16,
           "num_key_value_heads": 16, "head_dim": 4},
    "s3gen": None,  # None: tiny_checkpoint.DEFAULT_ARCH's S3Gen widths (written out by build_tiny_multilingual)
    "eos_bias": 12.0,  # see _steer: random weights never stop, and upstream's generate runs up to 1000 tokens
}


def read_multilingual_arch(folder) -> Optional[Dict[str, Any]]:
    """The tiny architecture recorded in a checkpoint folder (tiny_arch.json), or None for a real checkpoint."""
    path = Path(folder) / "tiny_arch.json"
    arch = json.loads(path.read_text()) if path.is_file() else None
    return arch if isinstance(arch, dict) and arch.get("format") == ARCH_FORMAT else None


@contextlib.contextmanager
def tiny_multilingual_patches(arch: Optional[Mapping[str, Any]] = None) -> Iterator[None]:
    """While active, upstream's from_local and load_multilingual build the tiny modules of `arch`: the Llama_520M
    config (and the perceiver) at the tiny widths, `chatterbox.mtl_tts.S3Gen` the tiny S3Gen. Restored on exit."""
    import chatterbox.mtl_tts as mtl
    from . import tiny_checkpoint
    arch = arch or DEFAULT_ARCH
    base = tiny_checkpoint._tiny_s3gen_class(arch.get("s3gen") or tiny_checkpoint.DEFAULT_ARCH["s3gen"])

    class TinyMultilingualS3Gen(base):  # tiny_checkpoint's tiny S3Gen; upstream's S3Gen() has no meanflow
        def __init__(self, meanflow: bool = False):
            super().__init__(meanflow)

    with llama_backbone(arch["t3"]):
        saved = mtl.S3Gen
        mtl.S3Gen = TinyMultilingualS3Gen
        try:
            yield
        finally:
            mtl.S3Gen = saved


def _steer(t3, bias: float) -> None:
    """Make the random T3 end speech soon. Upstream's alignment analyser masks the stop token until the heads it
    watches attend near the text's end: those heads attend to the latest text position they may (query from channel
    k, a constant at speech positions; key from channel k-1, a ramp over text positions). Then the stop token's logit
    is raised by `bias` (start and unused ids lowered) through channel k, dominant after the final RMSNorm (the Llama
    speech head has no bias). No layer writes either channel."""
    import torch
    from chatterbox.models.t3.inference.alignment_stream_analyzer import LLAMA_ALIGNED_HEADS
    k, width, hd = t3.dim - 1, t3.dim, t3.cfg.head_dim
    with torch.no_grad():
        t3.speech_emb.weight[:, k] = 4.0 * width ** 0.5
        t3.speech_emb.weight[:, k - 1] = 0.0
        t3.speech_pos_emb.emb.weight[:, k - 1:] = 0.0
        t3.text_emb.weight[:, k - 1:] = 0.0
        t3.text_pos_emb.emb.weight[:, k] = 0.0
        t3.text_pos_emb.emb.weight[:, k - 1] = 0.1 * torch.arange(t3.text_pos_emb.emb.weight.shape[0])
        for layer in t3.tfmr.layers:
            layer.self_attn.o_proj.weight[k - 1:, :] = 0.0
            layer.mlp.down_proj.weight[k - 1:, :] = 0.0
        for layer_idx, head in LLAMA_ALIGNED_HEADS:  # the rotary pair with the slowest turn: dims 1 and hd/2 + 1
            attn = t3.tfmr.layers[layer_idx].self_attn
            rows = slice(head * hd, (head + 1) * hd)
            attn.q_proj.weight[rows, :] = 0.0
            attn.k_proj.weight[rows, :] = 0.0
            attn.q_proj.weight[head * hd + 1, k] = 1.0
            attn.k_proj.weight[head * hd + 1, k - 1] = 8.0
        t3.speech_head.weight[:, k - 1:] = 0.0
        t3.speech_head.weight[t3.hp.stop_speech_token, k] = bias / width ** 0.5
        t3.speech_head.weight[t3.hp.start_speech_token, k] = -bias / width ** 0.5  # the trained model never
        t3.speech_head.weight[t3.hp.stop_speech_token + 1:, k] = -bias / width ** 0.5  # picks them; S3Gen can't


def _letters() -> str:
    """The tiny tokenizer's characters: what prepare_text gives for the test languages (lowercase, NFKD)."""
    spans = ("az09\u0300\u0308\u030a\u030c\u0327\u0328\u3041\u3096\u3099\u309a\u30a1\u30fc\u1100\u1112\u1161\u1175"
             "\u11a8\u11c2\u0430\u044f\u0621\u064a\u0904\u094d\u05d0\u05ea\u03b1\u03c9")  # first, last of each range
    chars = "".join(chr(c) for lo, hi in zip(spans[::2], spans[1::2]) for c in range(ord(lo), ord(hi) + 1))
    return chars + ".,!?'\"-()\u3001\u3002\uff0c\uff1f\uff01"


CANGJIE = ("\u65e5\ta", "\u6708\tb", "\u660e\tab", "\u4e2d\tl", "\u6587\tyk", "\u4f60\tonf",
           "\u597d\tvnd", "\u66f0\ta")  # the last shares its code: its tokens carry index 1


def write_tiny_tokenizer(path: Path) -> int:
    """A `tokenizers` JSON in the grapheme tokenizer's form: upstream's special tokens ([STOP] = 0 and [START] = 255,
    T3's stop/start text ids), the language tags, [cj_x] tokens and single characters; returns its size."""
    from chatterbox.models.tokenizers.tokenizer import SOT, SPECIAL_TOKENS
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    special = [t for t in SPECIAL_TOKENS if t != SOT]  # [STOP] first: id 0
    tags = [f"[{code}]" for code in languages.LANGUAGES]
    tags += [f"[cj_{c}]" for c in "abcdefghijklmnopqrstuvwxyz.0123456789"]
    ids = [i for i in range(TEXT_VOCAB) if i != 255]
    vocab = dict(zip(dict.fromkeys(special + list(_letters()) + tags), ids), **{SOT: 255})
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="[UNK]"))
    tok.add_special_tokens(special + [SOT] + tags)
    tok.save(str(path))
    return len(vocab)


def build_tiny_multilingual(folder, seed: int = 0, arch: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write a tiny random Chatterbox Multilingual checkpoint into `folder`, in the real file layout and formats
    (ve.pt, t3_mtl23ls_v2.safetensors, s3gen.pt, the tokenizer JSON, Cangjie5_TC.json, conds.pt) and tiny_arch.json;
    load it inside tiny_multilingual_patches(read_multilingual_arch(folder)). Returns build facts."""
    import torch
    import chatterbox.mtl_tts as mtl
    from safetensors.torch import save_file
    from . import tiny_checkpoint
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = copy.deepcopy(dict(arch or DEFAULT_ARCH))
    arch["s3gen"], arch["seed"] = arch.get("s3gen") or copy.deepcopy(tiny_checkpoint.DEFAULT_ARCH["s3gen"]), seed
    with tiny_multilingual_patches(arch), torch.random.fork_rng(devices=[]):  # the caller's RNG is left as it was
        torch.manual_seed(seed)
        ve = mtl.VoiceEncoder()
        t3 = mtl.T3(mtl.T3Config.multilingual())
        _steer(t3, float(arch.get("eos_bias", 0.0)))
        s3gen = mtl.S3Gen()
    spec = MULTILINGUAL
    for other in models.MODELS.values():  # a folder holds one model's T3
        (folder / other.t3_file).unlink(missing_ok=True)
    torch.save(ve.state_dict(), folder / spec.ve_file)
    save_file({k: v.detach().clone().contiguous() for k, v in t3.state_dict().items()}, str(folder / spec.t3_file))
    torch.save(s3gen.state_dict(), folder / spec.s3gen_file)
    size = write_tiny_tokenizer(folder / spec.tokenizer_file)
    (folder / spec.cangjie_file).write_text(json.dumps(list(CANGJIE), ensure_ascii=False))
    tiny_checkpoint.write_builtin_voice(folder / spec.conds_file, seed)  # upstream's Conditionals format
    (folder / "tiny_arch.json").write_text(json.dumps(arch, indent=2) + "\n")
    n = lambda m: int(sum(p.numel() for p in m.parameters()))  # noqa: E731
    return {"folder": str(folder), "tokens": size, "params": {"ve": n(ve), "t3": n(t3), "s3gen": n(s3gen)}}
