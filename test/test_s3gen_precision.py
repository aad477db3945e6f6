"""S3Gen's flow in float16 (parameter `s3gen_dtype`): the setting resolves as documented, the loader casts the flow
and keeps its float32 parts (s3gen_precision.FLOW_FP32) and everything else of S3Gen in float32, the half flow
decodes within s3gen_precision.TOLERANCE of float32 (same tokens, voice and noise; several voices and lengths),
and the engine loads and speaks with the setting.

On the tiny random checkpoint, on the CPU (torch runs float16 there, slowly; where a CPU build cannot, bfloat16
stands in for the mechanics). The full-size float16 numbers on a GPU come from bench/s3gen_precision.py
(bench/results/gpu-h200-2026-12-03-s3gen-precision).
"""
import numpy as np
import pytest

from turbo_fixtures import joined, require_chatterbox, speak, tiny_ckpt, turbo_config, write_voice  # noqa: F401

pytestmark = pytest.mark.timeout(600)


def cpu_half():
    """float16 where this torch build runs S3Gen's ops in it on the CPU, else bfloat16 (mechanics only)."""
    import torch
    try:
        x = torch.randn(1, 8, 16, dtype=torch.float16)
        torch.nn.functional.conv1d(x, torch.randn(8, 8, 3, dtype=torch.float16))
        torch.nn.functional.layer_norm(x, (16,))
        return torch.float16
    except RuntimeError:
        return torch.bfloat16


def load(folder, s3gen_dtype):
    import torch
    from ros2_chatterbox.engines.chatterbox import checkpoint, models
    model, tiny = checkpoint.load_model(folder, "cpu", torch.float32, "test", models.MODELS["turbo"],
                                        s3gen_dtype=s3gen_dtype)
    assert tiny
    return model


@pytest.fixture(scope="module")
def models_pair(tiny_ckpt):
    require_chatterbox()
    return load(tiny_ckpt, None), load(tiny_ckpt, cpu_half())


@pytest.fixture(scope="module")
def voices(models_pair, tmp_path_factory):
    """The engine's conditioning (voice_cache.compute_conds) of two synthetic voices of different pitch."""
    from ros2_chatterbox.engines.chatterbox.voice_cache import compute_conds
    folder = tmp_path_factory.mktemp("s3p_voices")
    return [compute_conds(models_pair[0], str(write_voice(folder / f"v{seed}.wav", f0=f0, seed=seed))).gen
            for f0, seed in ((105.0, 1), (220.0, 2))]


def test_the_setting_resolves_as_documented():
    require_chatterbox()
    import torch
    from ros2_chatterbox.engine import EngineLoadError
    from ros2_chatterbox.engines.chatterbox.s3gen_precision import resolve_s3gen_dtype
    from ros2_chatterbox.settings import SETTINGS, EngineSettings
    assert EngineSettings().s3gen_dtype == "auto"
    row = next(s for s in SETTINGS if s.name == "s3gen_dtype")
    assert row.group == "engine" and set(row.choices) == {"auto", "float32", "float16"}
    assert resolve_s3gen_dtype("auto", "cuda:0", torch.float16) == torch.float16
    assert resolve_s3gen_dtype("auto", "cuda:0", torch.float32) == torch.float32
    assert resolve_s3gen_dtype("auto", "cuda:0", torch.bfloat16) == torch.float32
    assert resolve_s3gen_dtype("auto", "cpu", torch.float32) == torch.float32
    assert resolve_s3gen_dtype("float16", "cpu", torch.float32) == torch.float16
    assert resolve_s3gen_dtype("float32", "cuda:0", torch.float16) == torch.float32
    with pytest.raises(EngineLoadError, match="s3gen_dtype 'int8' is not valid"):
        resolve_s3gen_dtype("int8", "cpu", torch.float32)


def test_only_the_flow_is_cast_and_its_float32_parts_stay(models_pair):
    import torch
    from ros2_chatterbox.engines.chatterbox.s3gen_precision import FLOW_FP32, flow_dtype
    full, half = models_pair
    dtype = flow_dtype(half.s3gen)
    assert dtype != torch.float32 and flow_dtype(full.s3gen) == torch.float32
    kept = tuple(path + "." for path, _ in FLOW_FP32)
    for name, p in half.s3gen.flow.named_parameters():
        assert p.dtype == (torch.float32 if name.startswith(kept) else dtype), name
    # upstream's embed_ref casts a reference to S3Gen.dtype: it must stay float32 (the voice path is float32)
    assert half.s3gen.dtype == torch.float32
    for part in (half.s3gen.mel2wav, half.s3gen.speaker_encoder, half.ve):
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    # the encoder's positional tables (plain attributes) are cast at load, not on the first request
    assert half.s3gen.flow.encoder.embed.pos_enc.pe.dtype == dtype
    size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    assert size(half.s3gen.flow) < 0.65 * size(full.s3gen.flow)


@pytest.mark.parametrize("tokens", [25, 100])
def test_half_flow_decodes_within_the_tolerance_of_float32(models_pair, voices, tokens):
    import torch
    from ros2_chatterbox.engines.chatterbox.s3gen_precision import TOLERANCE, compare
    full, half = models_pair
    speech = torch.randint(0, 6561, (tokens,), generator=torch.Generator().manual_seed(tokens))
    for ref in voices:
        r = compare(full, half, ref, speech, seed=5)
        assert r["finite"] and r["same_length"] and r["audio_s"] > tokens / 25, r
        assert r["rms_fp32"] > 1e-3, r  # there is a signal to compare
        assert r["ok"], f"{r['missed']} ({r}; tolerance {TOLERANCE})"


def test_compare_catches_a_model_that_is_not_exact(models_pair, voices):
    """The check is not vacuous: a flow whose output layer is perturbed by 5% misses the tolerance."""
    import copy
    import torch
    from ros2_chatterbox.engines.chatterbox.s3gen_precision import compare
    full, half = models_pair
    worse = copy.deepcopy(half)
    with torch.no_grad():
        proj = worse.s3gen.flow.decoder.estimator.final_proj
        proj.weight.mul_(1.05)
        proj.bias.add_(0.5)
    r = compare(full, worse, voices[0], torch.arange(100, 150))
    assert not r["ok"] and r["missed"], r


def test_engine_loads_and_speaks_with_s3gen_dtype_float16(tiny_ckpt, tmp_path):
    require_chatterbox()
    import torch
    if cpu_half() != torch.float16:
        pytest.skip("this torch build cannot run float16 convolutions on the CPU (bench/s3gen_precision.py on a "
                    "GPU covers the setting)")
    from ros2_chatterbox.engines.chatterbox.engine import ChatterboxTurboEngine
    from ros2_chatterbox.engines.chatterbox.s3gen_precision import flow_dtype
    engine = ChatterboxTurboEngine(turbo_config(tiny_ckpt, s3gen_dtype="float16"))
    engine.load()
    try:
        assert flow_dtype(engine._model.s3gen) == torch.float16, \
            "the engine does not pass s3gen_dtype to checkpoint.load_model"
        voice = write_voice(tmp_path / "carol.wav", f0=150.0, seed=4)
        for v in (None, str(voice)):  # the built-in voice and a cloned one
            audio = joined(speak(engine, "Hello there, this is a test.", v, seed=3))
            assert audio.dtype == np.float32 and audio.size > 0 and audio.size % 480 == 0  # whole mel frames
            assert np.isfinite(audio).all() and np.sqrt(np.mean(audio ** 2)) > 1e-3
    finally:
        engine.unload()
