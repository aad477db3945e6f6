"""The S3 tokenizer is not kept in memory: the loader leaves it out, and conditioning a new voice reads it from
s3gen_meanflow.safetensors onto the CPU, runs it and drops it (engines/chatterbox/s3_tokenizer.py).

On the tiny checkpoint, through the engine's real loader, compared with upstream's from_local, which keeps it.
"""
import os
import weakref

import numpy as np
import pytest

from turbo_fixtures import (copy_checkpoint, joined, require_chatterbox, speak, tiny_ckpt, turbo_config,  # noqa: F401
                            turbo_engine, voice_dir, write_voice)

from ros2_chatterbox.engine import EngineError, EngineLoadError

pytestmark = pytest.mark.timeout(300)

S3GEN_FILE = "s3gen_meanflow.safetensors"


@pytest.fixture(scope="module")
def upstream(tiny_ckpt):
    """Upstream's ChatterboxTurboTTS.from_local on the tiny checkpoint: the S3 tokenizer resident, as upstream keeps
    it."""
    import chatterbox.tts_turbo as tts_turbo
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint
    with tiny_checkpoint.tiny_patches(tiny_checkpoint.read_arch(tiny_ckpt)):
        return tts_turbo.ChatterboxTurboTTS.from_local(tiny_ckpt, "cpu")


@pytest.fixture
def loads(monkeypatch):
    """Weak references to each tokenizer read on demand (what the engine let go of must be gone)."""
    from ros2_chatterbox.engines.chatterbox import s3_tokenizer
    seen = []
    real = s3_tokenizer.OnDemandS3Tokenizer.load

    def load(self):
        tokenizer = real(self)
        seen.append(weakref.ref(tokenizer))
        return tokenizer
    monkeypatch.setattr(s3_tokenizer.OnDemandS3Tokenizer, "load", load)
    return seen


def upstream_conditioning(model, wav_path):
    """What upstream's resident tokenizer gives for a reference: S3Gen's dict from upstream's own embed_ref and T3's
    prompt tokens from its tokenizer, on the same normalised recording as the engine's compute_conds."""
    import librosa
    import torch
    from ros2_chatterbox.engines.chatterbox import voice_cache
    wav = voice_cache.load_reference(str(wav_path))
    wav = np.asarray(model.norm_loudness(wav, 24_000), dtype=np.float32)
    ref_16k = librosa.resample(wav, orig_sr=24_000, target_sr=16_000).astype(np.float32)
    with torch.inference_mode():
        gen = model.s3gen.embed_ref(wav[:voice_cache.DEC_COND_SAMPLES], 24_000, device=model.device)
        tokens, _ = model.s3gen.tokenizer.forward([ref_16k[:voice_cache.ENC_COND_SAMPLES]],
                                                  max_len=model.t3.hp.speech_cond_prompt_len)
    return gen, torch.atleast_2d(tokens)


def assert_same_tensor(got, ref, what):
    import torch
    assert (got.dtype, got.device, tuple(got.shape)) == (ref.dtype, ref.device, tuple(ref.shape)), what
    assert torch.equal(got, ref), f"{what} differs from upstream's"


def test_configured_model_holds_no_s3_tokenizer(turbo_engine, upstream, tiny_ckpt):
    """After configure S3Gen has no S3 tokenizer tensor at all, only the place it is read from; everything else of
    S3Gen is there (test_chatterbox_engine compares it with from_local), and S3Gen still knows its device."""
    import torch
    from ros2_chatterbox.engines.chatterbox.s3_tokenizer import OnDemandS3Tokenizer
    s3gen = turbo_engine._model.s3gen
    assert isinstance(s3gen.tokenizer, OnDemandS3Tokenizer) and s3gen.tokenizer.path == tiny_ckpt / S3GEN_FILE
    assert not [k for k in s3gen.state_dict() if k.startswith("tokenizer.")]
    held = sum(t.numel() for t in list(s3gen.tokenizer.parameters()) + list(s3gen.tokenizer.buffers()))
    assert held == 0
    theirs = sum(p.numel() for p in upstream.s3gen.parameters())
    resident = sum(p.numel() for p in upstream.s3gen.tokenizer.parameters())
    assert resident > 0 and sum(p.numel() for p in s3gen.parameters()) == theirs - resident
    assert s3gen.device == torch.device("cpu")
    with pytest.raises(RuntimeError, match="not kept in memory.*" + S3GEN_FILE):
        s3gen.tokenizer(torch.zeros(1, 16_000))


@pytest.mark.parametrize("seconds", [5.6, 16.0])  # a short voice; one longer than both prompts (10 s and 15 s)
def test_conditioning_equals_the_resident_tokenizer(turbo_engine, upstream, tmp_path, loads, seconds):
    """A new voice conditioned with the tokenizer read on demand gives exactly what upstream's resident tokenizer
    gives: S3Gen's prompt tokens, their length, prompt mel and speaker embedding; T3's prompt tokens. The tokens land
    on the model's device, and the tokenizer is gone afterwards (one read per conditioning)."""
    from ros2_chatterbox.engines.chatterbox.voice_cache import compute_conds
    wav_path = write_voice(tmp_path / "bob.wav", seconds=seconds, f0=110.0, seed=7)
    ref_gen, ref_tokens = upstream_conditioning(upstream, wav_path)
    conds = compute_conds(turbo_engine._model, str(wav_path))
    assert len(loads) == 1 and loads[0]() is None  # read once, and gone again
    assert set(conds.gen) == set(ref_gen)
    for key, ref in ref_gen.items():
        if ref is None:
            assert conds.gen[key] is None, key
        else:
            assert_same_tensor(conds.gen[key], ref, key)
    assert_same_tensor(conds.t3.cond_prompt_speech_tokens, ref_tokens, "T3's prompt tokens")
    assert ref_tokens.shape[1] == min(375, int(seconds * 25))  # the 375-token prompt, or the whole recording

    # the same function on upstream's model uses its resident tokenizer, and gives the same again
    mine_on_upstream = compute_conds(upstream, str(wav_path))
    assert len(loads) == 1
    for key, ref in conds.gen.items():
        if ref is not None:
            assert_same_tensor(mine_on_upstream.gen[key], ref, key)
    assert_same_tensor(mine_on_upstream.t3.speaker_emb, conds.t3.speaker_emb, "voice-encoder embedding")


def test_a_new_voice_speaks_and_the_tokenizer_does_not_stay(turbo_engine, voice_dir, tmp_path, loads):
    """Through the engine: a new voice is conditioned (the tokenizer read once), cached, and spoken; speaking it
    again reads nothing; afterwards S3Gen still holds no tokenizer tensor."""
    from ros2_chatterbox.engines.chatterbox.s3_tokenizer import OnDemandS3Tokenizer
    voice = str(write_voice(tmp_path / "carol.wav", seconds=6.0, f0=180.0, seed=3))
    assert joined(speak(turbo_engine, "A new voice.", voice=voice, seed=1)).size > 0
    assert joined(speak(turbo_engine, "The same voice.", voice=voice, seed=2)).size > 0
    assert len(loads) == 1 and loads[0]() is None
    assert isinstance(turbo_engine._model.s3gen.tokenizer, OnDemandS3Tokenizer)
    assert not [k for k in turbo_engine._model.s3gen.state_dict() if k.startswith("tokenizer.")]


def without_tokenizer(src, dst):
    """A copy of S3Gen's file without the tokenizer's tensors."""
    from safetensors.torch import save_file
    from ros2_chatterbox.engines.chatterbox import weights
    save_file({k: v for k, v in weights.read_safetensors(src, skip=("tokenizer.",))}, str(dst))


@pytest.mark.parametrize("damage", ["no tokenizer", "truncated"])
def test_damaged_tokenizer_part_fails_the_voice_not_the_node(tiny_ckpt, voice_dir, tmp_path, damage):
    """S3Gen's file damaged after configure (the tokenizer's tensors gone, or the file cut short): conditioning a new
    voice fails with an EngineError naming the file; the node keeps speaking with the built-in voice and the voices
    already cached; once the file is whole again, new voices work. Configure on such a file fails, naming it."""
    from ros2_chatterbox.engines import create_engine
    folder = copy_checkpoint(tiny_ckpt, tmp_path / "ckpt", skip=(S3GEN_FILE,))
    good = (tiny_ckpt / S3GEN_FILE).read_bytes()
    path = folder / S3GEN_FILE
    path.write_bytes(good)
    engine = create_engine("chatterbox_turbo", turbo_config(folder, fast_path=False))
    engine.load()
    try:
        alice = str(voice_dir / "alice.wav")
        engine.prepare_voice(alice)  # cached while the file is whole
        bad = tmp_path / "bad.safetensors"
        if damage == "no tokenizer":
            without_tokenizer(path, bad)
        else:
            bad.write_bytes(good[:-1000])  # cut short
        os.replace(bad, path)
        new_voice = str(write_voice(tmp_path / "dave.wav", seconds=6.0, f0=100.0, seed=4))
        with pytest.raises(EngineError) as err:
            engine.prepare_voice(new_voice)
        assert str(path) in str(err.value) and "S3 tokenizer" in str(err.value)
        assert "Fetch the checkpoint again" in str(err.value)
        assert engine.loaded
        assert joined(speak(engine, "Still here.", seed=1)).size > 0  # built-in voice
        assert joined(speak(engine, "Still here.", voice=alice, seed=1)).size > 0  # cached voice

        second = create_engine("chatterbox_turbo", turbo_config(folder, fast_path=False))
        with pytest.raises(EngineLoadError) as err:
            second.load()
        assert S3GEN_FILE in str(err.value) and not second.loaded

        path.write_bytes(good)
        assert joined(speak(engine, "Whole again.", voice=new_voice, seed=1)).size > 0
    finally:
        engine.unload()


def test_a_truncated_file_names_itself_even_where_only_skipped_tensors_are_cut(tmp_path):
    """The reader refuses a file shorter than its header says before reading anything, even when only tensors it
    was asked to skip lie past the end."""
    import torch
    from safetensors.torch import save_file
    from ros2_chatterbox.engines.chatterbox import weights
    path = tmp_path / S3GEN_FILE
    save_file({"a.weight": torch.ones(4), "tokenizer.w": torch.ones(1000)}, str(path))  # tokenizer.* last
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=f"{S3GEN_FILE} is incomplete"):
        list(weights.read_safetensors(path, skip=("tokenizer.",)))
