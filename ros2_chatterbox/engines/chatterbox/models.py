"""Which Chatterbox model the engine loads (`model: turbo | nano`) and how Chatterbox-Nano is built with the pinned
chatterbox-tts 0.1.7, which has no Nano configuration.

Chatterbox-Nano (Resemble AI, July 2026) is Turbo's architecture with a GPT-2 small T3 (12 layers, 768 wide, 12 heads,
110M parameters by Resemble's count) instead of GPT-2 medium (24 layers, 1024 wide): the same speech-token vocabulary
(6563), 375-token voice prompt, GPT-2 tokenizer with the paralinguistic tags, voice encoder, meanflow S3Gen and
built-in voice file.
Only the T3 weights differ: `t3_nano_v1.safetensors` in the hub repository `ResembleAI/chatterbox-nano` instead of
`t3_turbo_v1.safetensors` in `ResembleAI/chatterbox-turbo`.

Upstream selects Nano with `ChatterboxTurboTTS.from_local(dir, device, nano=True)` only after 0.1.7. Here:

* both models load through `load_local`, which does what upstream's `from_local` does, step by step, with upstream's
  classes (VoiceEncoder, T3, S3Gen(meanflow=True), AutoTokenizer, Conditionals, ChatterboxTurboTTS), T3 built from
  the model's GPT-2 configuration (`build_t3`) and read from its file, and the weights read once, straight onto the
  device (see `load_local`);

`T3(hp)` looks its backbone configuration up by name in chatterbox's `LLAMA_CONFIGS` (0.1.7 knows "GPT2_medium" and
"Llama_520M"). `gpt2_configs` makes a name known for the duration of a `with` block, under a process-wide lock, and
then restores the table exactly (a name that was not there is removed again, an entry a later release has under
that name is put back): nothing of upstream is changed at import time or outside the block.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from ...settings import SETTINGS_BY_NAME
from . import weights
from .weights import load_weights, no_random_init

TEXT_VOCAB = 50276      # GPT-2 tokenizer plus the paralinguistic tags (upstream's text embedding size)
SPEECH_VOCAB = 6563     # 6561 S3 codes + start + stop


@dataclass(frozen=True)
class ModelSpec:
    name: str               # the `model` parameter's value
    title: str              # for people: "Chatterbox Turbo"
    model_id: str           # what status surfaces and the OpenAI API show
    hub_repo: str
    t3_file: str
    gpt2_name: str          # the LLAMA_CONFIGS name T3 is built from
    gpt2: Mapping[str, Any]  # changes to upstream's GPT2_MEDIUM_CONFIG
    languages: Tuple[str, ...] = ("en",)  # what the model speaks (ISO 639-1), its default first

    @property
    def width(self) -> int:
        return int(self.gpt2.get("n_embd", 1024))


MODELS: Dict[str, ModelSpec] = {
    "turbo": ModelSpec("turbo", "Chatterbox Turbo", "chatterbox-turbo", "ResembleAI/chatterbox-turbo",
                       "t3_turbo_v1.safetensors", "GPT2_medium", {}),
    "nano": ModelSpec("nano", "Chatterbox-Nano", "chatterbox-nano", "ResembleAI/chatterbox-nano",
                      "t3_nano_v1.safetensors", "GPT2_small",
                      # upstream's GPT2_small (resemble-ai/chatterbox 5de7a54): GPT-2 small, Turbo's context length
                      {"n_layer": 12, "n_embd": 768, "hidden_size": 768, "n_head": 12, "n_ctx": 8196,
                       "n_positions": 8196, "vocab_size": 50276, "activation_function": "gelu_new"}),
}
DEFAULT_MODEL = SETTINGS_BY_NAME["model"].default  # "turbo": the parameter's default, from the settings table

_LOCK = weights.LOCK  # shared with no_random_init (see weights.LOCK)


def model_spec(name: Any) -> ModelSpec:
    """The spec for a `model` parameter value (case and surrounding blanks ignored); ValueError naming the choices."""
    key = str(name if name is not None else "").strip().lower() or DEFAULT_MODEL
    if key.startswith("chatterbox-"):
        key = key[len("chatterbox-"):]
    spec = MODELS.get(key)
    if spec is None:
        raise ValueError(f"model must be one of {', '.join(MODELS)}, not {name!r}")
    return spec


def gpt2_config(spec: ModelSpec, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The GPT-2 configuration dict of `spec`'s T3: upstream's GPT2_MEDIUM_CONFIG with the model's changes, then
    `overrides` (tiny checkpoints)."""
    from chatterbox.models.t3 import llama_configs
    cfg = dict(llama_configs.GPT2_MEDIUM_CONFIG)
    cfg.update(spec.gpt2)
    cfg.update(overrides or {})
    return cfg


@contextlib.contextmanager
def gpt2_configs(configs: Mapping[str, Mapping[str, Any]]) -> Iterator[None]:
    """While active, chatterbox's LLAMA_CONFIGS maps each name in `configs` to that dict (T3(hp) reads it at
    construction); on exit the table is exactly as before. One block at a time per process (re-entrant)."""
    from chatterbox.models.t3 import llama_configs
    table = llama_configs.LLAMA_CONFIGS
    missing = object()
    with _LOCK:
        saved = {name: table.get(name, missing) for name in configs}
        try:
            for name, cfg in configs.items():
                table[name] = dict(cfg)
            yield
        finally:
            for name, old in saved.items():
                if old is missing:
                    table.pop(name, None)
                else:
                    table[name] = old


def t3_hp(spec: ModelSpec):
    """T3 hyper-parameters exactly as upstream's ChatterboxTurboTTS.from_local sets them (0.1.6/0.1.7), with the
    backbone named by `spec`."""
    from chatterbox.models.t3.modules.t3_config import T3Config
    hp = T3Config(text_tokens_dict_size=TEXT_VOCAB)
    hp.llama_config_name = spec.gpt2_name
    hp.speech_tokens_dict_size = SPEECH_VOCAB
    hp.input_pos_emb = None
    hp.speech_cond_prompt_len = 375
    hp.use_perceiver_resampler = False
    hp.emotion_adv = False
    return hp


def build_t3(spec: ModelSpec, overrides: Optional[Mapping[str, Any]] = None):
    """Upstream's T3 (random init) with `spec`'s backbone (and tiny `overrides`)."""
    from chatterbox.models.t3 import T3
    with gpt2_configs({spec.gpt2_name: gpt2_config(spec, overrides)}):
        return T3(t3_hp(spec))


def load_local(folder, device: str, spec: ModelSpec, t3_overrides: Optional[Mapping[str, Any]] = None,
               t3_dtype: Any = None):
    """A ChatterboxTurboTTS from a checkpoint folder holding `spec.t3_file`: upstream's from_local (chatterbox 0.1.7
    tts_turbo.py), step by step, with upstream's classes, and T3 built by `build_t3`. Every parameter and buffer ends
    equal to what from_local gives (test_chatterbox_engine checks it); three steps differ, to make configure fast and
    lean on a robot, where host and GPU share one RAM (bench/load_memory.py):

    * T3 and S3Gen are built without random init (`no_random_init`): a strict load overwrites every parameter (that
      init is about half of a CPU load);
    * their weights are read one tensor at a time, straight onto `device` and (T3) in `t3_dtype`, and taken as the
      parameters (`load_weights`): no second copy of the weights exists at any moment (from_local holds the random
      module, the whole file and, at `.to(device)`, the device copy at once: a 6.0 GiB host peak for Turbo on a CPU);
    * T3's text embedding (`tfmr.wte`, which from_local loads and then deletes) is not read at all;
    * the S3 tokenizer (`s3gen.tokenizer`, 123.7 M parameters) is not loaded: an `s3_tokenizer.OnDemandS3Tokenizer`
      stands in its place, and conditioning a new voice reads it from s3gen_meanflow.safetensors for just that
      (s3_tokenizer.py). Its tensors are checked to be in the file, so a damaged file still fails here.
    """
    import torch
    import chatterbox.tts_turbo as tts_turbo
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    from . import s3_tokenizer

    folder = Path(folder)
    map_location = torch.device("cpu") if device in ("cpu", "mps") else None
    ve = tts_turbo.VoiceEncoder()  # 1.4 M parameters: loaded as upstream does
    ve.load_state_dict(load_file(folder / "ve.safetensors"))
    ve.to(device).eval()

    with no_random_init():
        t3 = build_t3(spec, t3_overrides)
    del t3.tfmr.wte  # only training reads it (from_local deletes it after loading)
    load_weights(t3, folder / spec.t3_file, device, dtype=t3_dtype, ignore=("tfmr.wte.",))
    t3.to(device).eval()  # buffers that are not in the file

    with no_random_init():
        s3gen = tts_turbo.S3Gen(meanflow=True)
    s3gen_file = folder / "s3gen_meanflow.safetensors"
    built = s3gen.tokenizer  # uninitialised (no_random_init): it only tells its class and tensor shapes
    s3gen.tokenizer = s3_tokenizer.OnDemandS3Tokenizer(type(built), s3gen_file)
    load_weights(s3gen, s3gen_file, device, ignore=(s3_tokenizer.PREFIX,))
    s3_tokenizer.check_in_file(built, s3gen_file)
    del built
    s3gen.to(device).eval()

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    conds = None
    if (folder / "conds.pt").exists():
        conds = tts_turbo.Conditionals.load(folder / "conds.pt", map_location=map_location).to(device)
    return tts_turbo.ChatterboxTurboTTS(t3, s3gen, ve, tokenizer, device, conds=conds)


# ------------------------------------------------------------------------------------------------ which T3 is there
def safetensors_shape(path: Path, key: str) -> Optional[Tuple[int, ...]]:
    """The shape of one tensor from a safetensors file's header (no tensor data read); None when absent."""
    entry = weights.safetensors_header(path).get(key)
    return tuple(int(d) for d in entry["shape"]) if isinstance(entry, dict) else None


def wrong_model_message(folder: Path, spec: ModelSpec, tiny: bool = False) -> Optional[str]:
    """Why `folder` cannot be loaded as `spec`, when it holds another model's T3 instead: names the file found and
    the parameter to change. None when the folder holds `spec.t3_file` (or no T3 file at all: the caller reports the
    missing file). For real checkpoints the T3 width in the file's header is checked too."""
    folder = Path(folder)
    path = folder / spec.t3_file
    if not path.is_file():
        others = [s for s in MODELS.values() if s is not spec and (folder / s.t3_file).is_file()]
        if not others:
            return None
        other = others[0]
        return (f"model_dir '{folder}' holds {other.t3_file} ({other.title}) but not {spec.t3_file}, which model "
                f"'{spec.name}' needs: set the parameter model to '{other.name}' to run {other.title}, or point "
                f"model_dir to a {spec.title} checkpoint ({spec.hub_repo})")
    if tiny:
        return None
    try:
        shape = safetensors_shape(path, "speech_emb.weight")
    except Exception:  # noqa: BLE001 - the file check reports damaged files
        return None
    if shape is None or len(shape) != 2 or shape[1] == spec.width:
        return None
    other = next((s for s in MODELS.values() if s.width == shape[1]), None)
    what = f"{other.title}'s" if other is not None else "an unknown"
    hint = (f"set the parameter model to '{other.name}'" if other is not None and other.t3_file == spec.t3_file
            else f"rename it to {other.t3_file} and set the parameter model to '{other.name}'" if other is not None
            else "fetch the file again")
    return (f"{spec.t3_file} in '{folder}' holds {what} T3 ({shape[1]} wide; {spec.title} is {spec.width} wide): "
            f"{hint}, or point model_dir to a {spec.title} checkpoint ({spec.hub_repo})")
