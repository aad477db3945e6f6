"""A tiny, randomly initialised Chatterbox Turbo checkpoint in the real file layout, for tests and CPU smoke runs.

Real weights (~3 GB) cannot be downloaded on machines without internet, yet the engine must be tested through
the real loader. `build_tiny_checkpoint(dir)` writes the same files as the hub snapshot of
`ResembleAI/chatterbox-turbo` (ve.safetensors, t3_turbo_v1.safetensors, s3gen_meanflow.safetensors, GPT-2 tokenizer
files, conds.pt) with the real module classes at small widths, plus `tiny_arch.json`, which records those widths.
With `model="nano"` the layout is Chatterbox-Nano's (`t3_nano_v1.safetensors`, a GPT-2-small-shaped T3: see models.py).

The loaders (upstream's `ChatterboxTurboTTS.from_local` and the engine's `models.load_local`) hard-code the GPT-2
config and the S3Gen sizes, so loading needs `tiny_patches(arch)`: while it is active, `LLAMA_CONFIGS["GPT2_medium"]`
(Nano: "GPT2_small") is the tiny config and `chatterbox.tts_turbo.S3Gen` builds the tiny S3Gen. Everything else
(strict state-dict loading, tokenizer, conds.pt, perth watermarker) runs as for a real checkpoint. The engine detects
`tiny_arch.json` and loads inside the patches.

The speech is noise, of course. Random weights never choose the stop token on their own, so its bias in the speech
head is raised (`eos_bias`) and generation ends after a few to a few dozen tokens.

    python -m ros2_chatterbox.engines.chatterbox.tiny_checkpoint DIR [--model turbo|nano] [--seed N] [--no-conds]
        [--voice-wav FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np

from . import models

ARCH_FILE = "tiny_arch.json"
ARCH_FORMAT = "ros2_chatterbox-tiny-turbo-1"
TEXT_VOCAB = models.TEXT_VOCAB      # ChatterboxTurboTTS.from_local hard-codes the text embedding size
SPEECH_VOCAB = models.SPEECH_VOCAB  # 6561 S3 codes + start + stop
STOP_SPEECH = 6562
PARALINGUISTIC_TAGS = ("[laugh]", "[chuckle]", "[cough]", "[sigh]", "[gasp]", "[groan]", "[sniff]", "[shush]",
                       "[clear throat]")
PROMPT_TOKENS = 150     # built-in voice: 6 s of prompt at 25 tokens/s

DEFAULT_ARCH: Dict[str, Any] = {
    "format": ARCH_FORMAT,
    # overrides of chatterbox's GPT2_MEDIUM_CONFIG (24 layers, 1024 wide)
    "t3": {"n_layer": 2, "n_embd": 64, "hidden_size": 64, "n_head": 2, "n_ctx": 2048, "n_positions": 2048},
    # S3Gen widths. Fixed by upstream code: mel dim 80, encoder width 512 (PreLookaheadLayer/Upsample1D), x-vector
    # 192, S3 tokenizer head dim 64 (rotary table), HiFT upsampling 8*5*3 with istft hop 4 (480 samples per frame).
    "s3gen": {
        "tokenizer": {"n_audio_state": 128, "n_audio_head": 2, "n_audio_layer": 1},
        "speaker_encoder": {"growth_rate": 8, "bn_size": 2, "init_channels": 32},
        "encoder": {"linear_units": 256, "num_blocks": 1},
        "decoder": {"channels": [32], "attention_head_dim": 16, "n_blocks": 1, "num_mid_blocks": 1, "num_heads": 2},
        "hift": {"base_channels": 64, "f0_cond_channels": 64},
    },
    "eos_bias": 4.0,
}
# Chatterbox-Nano's layout (t3_nano_v1.safetensors), GPT-2-small-shaped: a width that is not a power of two (768 =
# 3 x 256 there, 96 = 3 x 32 here), one head per 32 columns, more layers than the tiny Turbo
NANO_ARCH: Dict[str, Any] = dict(copy.deepcopy(DEFAULT_ARCH), model="nano", t3={
    "n_layer": 3, "n_embd": 96, "hidden_size": 96, "n_head": 3, "n_ctx": 2048, "n_positions": 2048})

_PATCH_LOCK = threading.RLock()


def arch_for(model: str = "turbo") -> Dict[str, Any]:
    """The default tiny architecture of a model ("turbo" or "nano")."""
    return copy.deepcopy(NANO_ARCH if models.model_spec(model).name == "nano" else DEFAULT_ARCH)


def arch_spec(arch: Optional[Dict[str, Any]]) -> "models.ModelSpec":
    """Which model a tiny architecture is laid out as (files written before Nano existed: Turbo)."""
    return models.model_spec((arch or {}).get("model", "turbo"))


def read_arch(model_dir: Path) -> Optional[Dict[str, Any]]:
    """The tiny architecture recorded in a checkpoint folder, or None for a real checkpoint."""
    path = Path(model_dir) / ARCH_FILE
    if not path.is_file():
        return None
    arch = json.loads(path.read_text())
    if not isinstance(arch, dict) or arch.get("format") != ARCH_FORMAT:
        raise ValueError(f"{path} is not a ros2_chatterbox tiny checkpoint description (format {ARCH_FORMAT})")
    return arch


def _tiny_s3gen_class(s3: Dict[str, Any]):
    """A subclass of upstream S3Gen (S3Token2Wav) that builds the same modules at the widths in `s3`."""
    import librosa
    import torch
    from chatterbox.models.s3gen import S3GEN_SR, S3Gen
    from chatterbox.models.s3gen.configs import CFM_PARAMS
    from chatterbox.models.s3gen.decoder import ConditionalDecoder
    from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
    from chatterbox.models.s3gen.flow import CausalMaskedDiffWithXvec
    from chatterbox.models.s3gen.flow_matching import CausalConditionalCFM
    from chatterbox.models.s3gen.hifigan import HiFTGenerator
    from chatterbox.models.s3gen.s3gen import mel_spectrogram
    from chatterbox.models.s3gen.transformer.upsample_encoder import UpsampleConformerEncoder
    from chatterbox.models.s3gen.xvector import CAMPPlus
    from chatterbox.models.s3tokenizer import S3Tokenizer
    from chatterbox.models.s3tokenizer.s3tokenizer import ModelConfig, S3TokenizerV2

    tok_cfg = dict(s3["tokenizer"])
    spk_cfg = dict(s3["speaker_encoder"])
    enc_cfg = dict(s3["encoder"])
    dec_cfg = dict(s3["decoder"])
    hift_cfg = dict(s3["hift"])

    class TinyS3Tokenizer(S3Tokenizer):
        def __init__(self):
            cfg = ModelConfig(n_mels=128, **tok_cfg)
            S3TokenizerV2.__init__(self, "speech_tokenizer_v2_25hz", cfg)
            self.n_fft = 400
            self.register_buffer("_mel_filters", torch.FloatTensor(
                librosa.filters.mel(sr=16_000, n_fft=self.n_fft, n_mels=cfg.n_mels)))
            self.register_buffer("window", torch.hann_window(self.n_fft))

    class TinyS3Gen(S3Gen):
        """Same classes and data flow as S3Gen(meanflow=True), smaller widths (see DEFAULT_ARCH)."""

        def __init__(self, meanflow: bool = True):
            torch.nn.Module.__init__(self)
            self.tokenizer = TinyS3Tokenizer()
            self.mel_extractor = mel_spectrogram
            self.speaker_encoder = CAMPPlus(memory_efficient=False, **spk_cfg)
            self.meanflow = meanflow
            encoder = UpsampleConformerEncoder(
                output_size=512, attention_heads=8, dropout_rate=0.1, positional_dropout_rate=0.1,
                attention_dropout_rate=0.1, normalize_before=True, input_layer="linear",
                pos_enc_layer_type="rel_pos_espnet", selfattention_layer_type="rel_selfattn", input_size=512,
                use_cnn_module=False, macaron_style=False, **enc_cfg)
            estimator = ConditionalDecoder(in_channels=320, out_channels=80, causal=True, dropout=0.0,
                                           act_fn="gelu", meanflow=meanflow, **dec_cfg)
            decoder = CausalConditionalCFM(spk_emb_dim=80, cfm_params=CFM_PARAMS, estimator=estimator)
            self.flow = CausalMaskedDiffWithXvec(encoder=encoder, decoder=decoder)
            self.resamplers = {}
            self.mel2wav = HiFTGenerator(
                sampling_rate=S3GEN_SR, base_channels=hift_cfg["base_channels"], upsample_rates=[8, 5, 3],
                upsample_kernel_sizes=[16, 11, 7], source_resblock_kernel_sizes=[7, 7, 11],
                source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                f0_predictor=ConvRNNF0Predictor(cond_channels=hift_cfg["f0_cond_channels"]))
            n_trim = S3GEN_SR // 50
            trim_fade = torch.zeros(2 * n_trim)
            trim_fade[n_trim:] = (torch.cos(torch.linspace(torch.pi, 0, n_trim)) + 1) / 2
            self.register_buffer("trim_fade", trim_fade, persistent=False)
            self.estimator_dtype = "fp32"

    return TinyS3Gen


@contextlib.contextmanager
def tiny_patches(arch: Optional[Dict[str, Any]] = None) -> Iterator[None]:
    """While active, `ChatterboxTurboTTS.from_local` / `models.load_local` (and `T3(hp)`, `S3Gen()`) build the tiny
    architecture: the model's GPT-2 config name (GPT2_medium, or GPT2_small for Nano) maps to the tiny config and
    `chatterbox.tts_turbo.S3Gen` is the tiny S3Gen. Restored on exit; one patch at a time per process.
    """
    import chatterbox.tts_turbo as tts_turbo

    arch = arch or DEFAULT_ARCH
    spec = arch_spec(arch)
    with _PATCH_LOCK, models.gpt2_configs({spec.gpt2_name: models.gpt2_config(spec, arch["t3"])}):
        saved_s3gen = tts_turbo.S3Gen
        tts_turbo.S3Gen = _tiny_s3gen_class(arch["s3gen"])
        try:
            yield
        finally:
            tts_turbo.S3Gen = saved_s3gen


def write_tokenizer(folder: Path) -> None:
    """GPT-2-format tokenizer files (vocab.json, merges.txt, added tokens for the paralinguistic tags)."""
    from tokenizers import ByteLevelBPETokenizer
    corpus = [
        "Hi there, Sarah here from MochaFone calling you back, have you got one minute?",
        "The quick brown fox jumps over the lazy dog. Hello world! How are you today?",
        "Robots speak with a clear voice. Testing one two three. The battery is low, please charge me.",
    ] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save_model(str(folder))  # vocab.json, merges.txt
    vocab = json.loads((folder / "vocab.json").read_text())
    added = {tag: len(vocab) + i for i, tag in enumerate(PARALINGUISTIC_TAGS)}
    eot = "<|endoftext|>"
    (folder / "added_tokens.json").write_text(json.dumps(added, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": eot, "eos_token": eot, "unk_token": eot}, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "add_prefix_space": False,
        "bos_token": eot, "eos_token": eot, "unk_token": eot,
        "added_tokens_decoder": {str(i): {"content": t, "special": False, "normalized": False, "lstrip": False,
                                          "rstrip": False, "single_word": False} for t, i in added.items()},
    }, indent=2))


def _save(module, path: Path) -> None:
    from safetensors.torch import save_file
    save_file({k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}, str(path))


def write_builtin_voice(path: Path, seed: int = 0) -> None:
    """A conds.pt with the exact structure upstream saves (Conditionals.save), filled with random values."""
    import torch
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from chatterbox.tts_turbo import Conditionals
    g = torch.Generator().manual_seed(seed + 1)
    n_tok = PROMPT_TOKENS // 2  # S3Gen prompt: 3 s at 25 tokens/s, 2 mel frames per token
    spk = torch.randn(1, 256, generator=g)
    t3 = T3Cond(speaker_emb=spk / spk.norm(), cond_prompt_speech_tokens=torch.randint(0, 6561, (1, PROMPT_TOKENS),
                                                                                    generator=g),
                emotion_adv=0.5 * torch.ones(1, 1, 1))
    gen = dict(prompt_token=torch.randint(0, 6561, (1, n_tok), generator=g), prompt_token_len=torch.tensor([n_tok]),
               prompt_feat=torch.randn(1, 2 * n_tok, 80, generator=g) - 5.0, prompt_feat_len=None,
               embedding=torch.randn(1, 192, generator=g))
    Conditionals(t3, gen).save(path)


def build_tiny_checkpoint(folder, seed: int = 0, with_conds: bool = True,
                          arch: Optional[Dict[str, Any]] = None, model: str = "turbo") -> Dict[str, Any]:
    """Write a tiny random checkpoint into `folder` in the layout of `model` (turbo: t3_turbo_v1.safetensors,
    nano: t3_nano_v1.safetensors, GPT-2-small-shaped; an `arch` says its own model); returns build facts."""
    import torch
    import chatterbox.tts_turbo as tts_turbo
    from chatterbox.models.t3 import T3
    from chatterbox.models.voice_encoder import VoiceEncoder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = copy.deepcopy(arch) if arch is not None else arch_for(model)
    arch["seed"] = seed
    spec = arch_spec(arch)
    t0 = time.perf_counter()
    with tiny_patches(arch):
        saved_rng = torch.random.get_rng_state()  # seed the build without changing the caller's RNG
        torch.manual_seed(seed)
        try:
            ve = VoiceEncoder()
            t3 = T3(models.t3_hp(spec))
            with torch.no_grad():
                t3.speech_head.bias[STOP_SPEECH] += float(arch.get("eos_bias", 0.0))
            s3 = tts_turbo.S3Gen(meanflow=True)
        finally:
            torch.random.set_rng_state(saved_rng)
    _save(ve, folder / "ve.safetensors")
    for other in models.MODELS.values():  # a folder holds one model's T3
        (folder / other.t3_file).unlink(missing_ok=True)
    _save(t3, folder / spec.t3_file)  # includes tfmr.wte, which from_local deletes, as upstream's does
    _save(s3, folder / "s3gen_meanflow.safetensors")
    write_tokenizer(folder)
    if with_conds:
        write_builtin_voice(folder / "conds.pt", seed)
    else:
        (folder / "conds.pt").unlink(missing_ok=True)
    (folder / ARCH_FILE).write_text(json.dumps(arch, indent=2) + "\n")
    n = lambda m: int(sum(p.numel() for p in m.parameters()))  # noqa: E731
    return {"folder": str(folder), "seconds": round(time.perf_counter() - t0, 3),
            "params": {"ve": n(ve), "t3": n(t3), "s3gen": n(s3)}}


def write_reference_wav(path, seconds: float = 6.0, sr: int = 24_000, f0: float = 140.0, seed: int = 0) -> Path:
    """A synthetic voice recording (harmonic tone with vibrato and breath noise) for voice-cloning tests."""
    import soundfile as sf
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 + 0.15 * f0 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 8)) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t) ** 2)
    x = 0.2 * x / np.abs(x).max() + 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    path = Path(path)
    sf.write(str(path), x.astype(np.float32), sr)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write a tiny random Chatterbox checkpoint (real file layout).")
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", choices=sorted(models.MODELS), default="turbo", help="file layout (default turbo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-conds", action="store_true", help="leave out conds.pt (no built-in voice)")
    ap.add_argument("--voice-wav", type=Path, default=None, help="also write a synthetic 6 s reference recording")
    args = ap.parse_args(argv)
    facts = build_tiny_checkpoint(args.folder, seed=args.seed, with_conds=not args.no_conds, model=args.model)
    if args.voice_wav is not None:
        write_reference_wav(args.voice_wav)
    print(json.dumps(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
