"""The Chatterbox Turbo engine on a tiny random checkpoint in the real file layout, loaded by the engine's real loader
(which loads exactly what upstream's from_local loads).

No ROS here: loading and its failures, voices and their cache, seeds, tags, streaming, cancel, unload, and the
equivalence of the engine's re-implemented steps with upstream's code.
"""
import gc
import json
import math
import os
import socket
import threading
import weakref
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from turbo_fixtures import (copy_checkpoint, joined, long_generation, require_chatterbox, speak, tiny_ckpt,  # noqa: F401
                            turbo_config, turbo_engine, voice_dir, write_voice)

from ros2_chatterbox.engine import EngineError, EngineLoadError, GenerationSettings, VoiceError
from ros2_chatterbox.engines import create_engine
from ros2_chatterbox.status import CoreStatus

pytestmark = pytest.mark.timeout(300)

# what /api/model-info and /diagnostics have always shown of the engine (CoreStatus.as_dict / flat)
INFO_KEYS = {"engine", "sample_rate", "loaded", "can_clone", "device", "dtype", "model_dir", "model_source",
             "rss_mb", "voice_cache_voices", "voice_cache_mb", "voice_cache_max_voices", "voice_cache_max_mb",
             "voice_cache_hits", "voice_cache_misses", "voice_cache_evictions", "fast_path", "fast_path_active",
             "fast_path_state", "fast_path_warning", "jetson_patches", "jetson_patches_active", "builtin_voice",
             "tiny_checkpoint", "memory", "memory_state", "rss_plus_device_mb", "device_allocs_since_configure"}


class CountdownEvent(threading.Event):
    """An Event that reads as set once it has been looked at `n` times (a cancel arriving mid-generation)."""

    def __init__(self, n):
        super().__init__()
        self.n, self.looks = n, 0

    def is_set(self):
        self.looks += 1
        return self.looks >= self.n or super().is_set()


# ---------------------------------------------------------------------------------------------------- loading
def test_loads_what_upstream_from_local_loads(turbo_engine, tiny_ckpt):
    """The engine's loader (models.load_local: no random init, weights read once onto the device) ends with every
    parameter and buffer, persistent or not, equal to upstream's ChatterboxTurboTTS.from_local on the same folder."""
    import torch
    import chatterbox.tts_turbo as tts_turbo
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint
    with tiny_checkpoint.tiny_patches(tiny_checkpoint.read_arch(tiny_ckpt)):
        upstream = tts_turbo.ChatterboxTurboTTS.from_local(tiny_ckpt, "cpu")
    ours = turbo_engine._model
    # not loaded: T3's text head (only training reads it) and the S3 tokenizer, which only conditioning a new voice
    # runs, read from the same file for that (test_s3_tokenizer_on_demand compares it and its results with these)
    released = {"ve": (), "t3": ("text_head.",), "s3gen": ("tokenizer.",)}
    for part in ("ve", "t3", "s3gen"):
        theirs = {**dict(getattr(upstream, part).named_parameters()), **dict(getattr(upstream, part).named_buffers())}
        mine = {**dict(getattr(ours, part).named_parameters()), **dict(getattr(ours, part).named_buffers())}
        theirs = {k: v for k, v in theirs.items() if not k.startswith(released[part])}
        mine = {k: v for k, v in mine.items() if not k.startswith(released[part])}
        assert sorted(mine) == sorted(theirs), (part, set(mine) ^ set(theirs))
        for name, ref in theirs.items():
            got = mine[name]
            assert (got.dtype, got.device, tuple(got.shape)) == (ref.dtype, ref.device, tuple(ref.shape)), name
            assert torch.equal(got, ref), f"{part}.{name} differs from from_local's"


def test_engine_loads_the_tiny_architecture(turbo_engine, tiny_ckpt):
    model = turbo_engine._model
    assert type(model).__name__ == "ChatterboxTurboTTS"
    assert model.t3.cfg.n_layer == 2  # the tiny architecture recorded in tiny_arch.json
    info = turbo_engine.info()
    assert info.loaded and info.can_clone and info.sample_rate == 24000
    assert info.device == "cpu" and info.dtype == "float32" and info.tiny_checkpoint
    assert info.builtin_voice and info.model_dir == str(tiny_ckpt) and info.rss_mb > 0
    shown = CoreStatus(engine=info).as_dict()
    assert INFO_KEYS <= set(shown), INFO_KEYS - set(shown)
    json.dumps(shown)  # every status surface can serialise it


def test_create_engine_by_name(tiny_ckpt):
    engine = create_engine("chatterbox_turbo", turbo_config(tiny_ckpt))
    assert engine.name == "chatterbox_turbo" and engine.can_clone and not engine.loaded


@pytest.mark.parametrize("missing", ["t3_turbo_v1.safetensors", "vocab.json"])
def test_missing_file_names_the_file_and_the_fix(tiny_ckpt, tmp_path, missing):
    folder = copy_checkpoint(tiny_ckpt, tmp_path / "ckpt", skip=(missing,))
    engine = create_engine("chatterbox_turbo", turbo_config(folder))
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    assert missing in str(err.value) and "download" in str(err.value) and "model_dir" in str(err.value)
    assert not engine.loaded


def test_model_dir_that_does_not_exist(tmp_path):
    require_chatterbox()
    engine = create_engine("chatterbox_turbo", turbo_config(tmp_path / "nowhere"))
    with pytest.raises(EngineLoadError, match="does not exist"):
        engine.load()


@pytest.mark.parametrize("name, damage", [
    ("s3gen_meanflow.safetensors", "truncate"),
    ("ve.safetensors", "garbage"),
    ("vocab.json", "garbage"),
    ("conds.pt", "garbage"),
])
def test_corrupt_file_is_named(tiny_ckpt, tmp_path, name, damage):
    folder = copy_checkpoint(tiny_ckpt, tmp_path / "ckpt", skip=(name,))
    data = (tiny_ckpt / name).read_bytes()
    (folder / name).write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage{" * 50)
    engine = create_engine("chatterbox_turbo", turbo_config(folder))
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    assert name in str(err.value) and ("damaged" in str(err.value) or "incomplete" in str(err.value))


def test_weights_of_another_architecture_are_named(tiny_ckpt, tmp_path):
    """A file that reads fine but holds other weights fails in from_local; the message still names it."""
    folder = copy_checkpoint(tiny_ckpt, tmp_path / "ckpt", skip=("ve.safetensors",))
    import os
    os.symlink(tiny_ckpt / "s3gen_meanflow.safetensors", folder / "ve.safetensors")
    from ros2_chatterbox import jetson_patches
    engine = create_engine("chatterbox_turbo", turbo_config(folder, jetson_patches="on"))
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    assert "ve.safetensors" in str(err.value) and "architecture" in str(err.value)
    assert not jetson_patches.is_applied()  # a failed configure leaves the process as it found it


def test_offline_hub_without_cache_fails_fast(tmp_path, monkeypatch):
    """Offline and not cached: configure fails at once, without trying the network (no hub_timeout_s wait)."""
    require_chatterbox()
    from ros2_chatterbox.engines.chatterbox import checkpoint

    def no_network(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set, yet the hub was contacted")

    monkeypatch.setattr(checkpoint, "_fetch_in_child", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    engine = create_engine("chatterbox_turbo", turbo_config("", hub_cache_dir=str(tmp_path / "hub")))
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    assert "ResembleAI/chatterbox-turbo" in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    assert "download" in str(err.value)


def test_unreachable_hub_fails_within_the_timeout(tmp_path, monkeypatch):
    """A hub that accepts connections and never answers: configure fails on hub_timeout_s (1 s here), and says so."""
    require_chatterbox()
    from huggingface_hub import constants
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    engine = create_engine("chatterbox_turbo", turbo_config("", hub_cache_dir=str(tmp_path / "hub"),
                                                            hub_timeout_s=1.0))
    saved_timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    try:
        with pytest.raises(EngineLoadError, match=r"did not answer within 1 s \(hub_timeout_s\)") as err:
            engine.load()
        assert "model_dir" in str(err.value)
        # nothing of the failed attempt outlives it: no download process, no thread; nothing changed process-wide
        assert fetch_children() == []
        assert not [th.name for th in threading.enumerate() if th.name.startswith("hub-")]
        assert constants.HF_HUB_DOWNLOAD_TIMEOUT == saved_timeout
        # a retried configure starts one fresh attempt (not "already downloading") and fails the same way
        with pytest.raises(EngineLoadError, match="did not answer"):
            engine.load()
        assert fetch_children() == []
    finally:
        server.close()


def fetch_children():
    """PIDs of this process's children that run the hub download code."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmd = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"snapshot_download" in cmd:
            found.append(int(stat.parent.name))
    return found


def test_cached_hub_snapshot_loads_offline(tiny_ckpt, tmp_path, monkeypatch):
    """model_dir empty: a snapshot already in the hub cache loads without network (local_files_only first)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "someone/tiny-turbo"
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-turbo" / "snapshots" / ("0" * 40)
    copy_checkpoint(tiny_ckpt, snap)
    (cache / "models--someone--tiny-turbo" / "refs").mkdir()
    (cache / "models--someone--tiny-turbo" / "refs" / "main").write_text("0" * 40)
    engine = create_engine("chatterbox_turbo", turbo_config("", hub_repo=repo, hub_cache_dir=str(cache),
                                                            fast_path=False))
    engine.load()
    try:
        assert engine.info().model_source == f"hub:{repo}"
        assert joined(speak(engine, "Hello.", seed=3)).size > 0
    finally:
        engine.unload()


# ---------------------------------------------------------------------------------------------------- speaking
def test_speaks_with_the_builtin_voice(turbo_engine):
    audio = joined(speak(turbo_engine, "Hello there, robot.", seed=1))
    assert audio.dtype == np.float32 and audio.ndim == 1 and audio.size > 0
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    assert audio.size % 480 == 0  # whole 20 ms mel frames
    assert turbo_engine.last_tokens > 0


def test_speaks_with_a_cloned_voice(turbo_engine, voice_dir):
    voice = str(voice_dir / "alice.wav")
    turbo_engine.prepare_voice(voice)
    before = turbo_engine.info().voice_cache.hits
    audio = joined(speak(turbo_engine, "Hello there, robot.", voice=voice, seed=1))
    assert audio.size > 0 and np.isfinite(audio).all()
    assert turbo_engine.info().voice_cache.hits == before + 1  # conditioning was computed once
    builtin = joined(speak(turbo_engine, "Hello there, robot.", seed=1))
    assert not (builtin.size == audio.size and np.allclose(builtin, audio))


def test_same_seed_same_audio_different_seed_different_audio(turbo_engine):
    a = joined(speak(turbo_engine, "Testing one two three.", seed=7))
    b = joined(speak(turbo_engine, "Testing one two three.", seed=7))
    c = joined(speak(turbo_engine, "Testing one two three.", seed=8))
    assert np.array_equal(a, b)
    assert not (a.size == c.size and np.array_equal(a, c))


def test_seed_zero_is_random(turbo_engine):
    runs = [joined(speak(turbo_engine, "Testing.", seed=0)) for _ in range(2)]
    assert not (runs[0].size == runs[1].size and np.array_equal(runs[0], runs[1]))


def test_settings_change_the_output(turbo_engine):
    a = joined(speak(turbo_engine, "Testing one two three.", seed=7))
    b = joined(speak(turbo_engine, "Testing one two three.", seed=7, temperature=0.3, top_k=5))
    c = joined(speak(turbo_engine, "Testing one two three.", seed=7, watermark=False))
    assert not (a.size == b.size and np.array_equal(a, b))
    assert a.size == c.size and not np.array_equal(a, c)  # same tokens, no watermark


def test_tags_are_single_tokenizer_tokens(turbo_engine):
    tok = turbo_engine._model.tokenizer
    for tag in ("[laugh]", "[sigh]", "[clear throat]"):
        ids = turbo_engine.tokenize(f"Well {tag} okay.")[0].tolist()
        tag_id = tok.convert_tokens_to_ids(tag)
        assert tag_id in ids and tok.convert_ids_to_tokens([tag_id]) == [tag]
    assert joined(speak(turbo_engine, "Ha [laugh] that is funny [chuckle].", seed=2)).size > 0


# ---------------------------------------------------------------------------------------------------- voices
def test_bad_references_are_rejected_with_reasons(turbo_engine, tmp_path):
    import soundfile as sf
    short = write_voice(tmp_path / "short.wav", seconds=3.0)
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(24000 * 6, dtype=np.float32), 24000)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 100)
    cases = {short: "longer than|more than", silent: "silent", garbage: "readable",
             tmp_path / "missing.wav": "cannot be read"}
    for path, reason in cases.items():
        with pytest.raises(VoiceError, match=reason):
            turbo_engine.prepare_voice(str(path))
        with pytest.raises(VoiceError):
            speak(turbo_engine, "Hello.", voice=str(path))
    assert not any(str(p) in turbo_engine.cached_voices() for p in cases)


def test_cache_is_bounded_by_count_lru_and_refreshes_on_change(turbo_engine, tmp_path):
    engine = turbo_engine
    saved = engine.settings
    paths = [write_voice(tmp_path / f"v{i}.wav", f0=120.0 + 15 * i, seed=i) for i in range(3)]
    try:
        engine.settings = replace(saved, voice_cache_max_voices=2)
        engine.free_memory()
        engine.prepare_voice(str(paths[0]))
        engine.prepare_voice(str(paths[1]))
        engine.prepare_voice(str(paths[0]))          # v0 is now the most recently used
        engine.prepare_voice(str(paths[2]))          # evicts v1, the least recently used
        cached = engine.cached_voices()
        assert cached == [str(paths[0].resolve()), str(paths[2].resolve())]
        old = engine._voice_conds(str(paths[0]))
        assert engine._voice_conds(str(paths[0])) is old           # a hit
        write_voice(paths[0], f0=200.0, seed=9, seconds=5.8)        # the recording changes
        new = engine._voice_conds(str(paths[0]))
        assert new is not old
        assert not np.array_equal(new.t3.speaker_emb.float().numpy(), old.t3.speaker_emb.float().numpy())
        assert engine.info().voice_cache.voices == 2
    finally:
        engine.settings = saved
        engine.free_memory()


def test_cache_is_bounded_by_memory(turbo_engine, tmp_path):
    engine = turbo_engine
    saved = engine.settings
    paths = [write_voice(tmp_path / f"m{i}.wav", f0=130.0 + 20 * i, seed=10 + i) for i in range(2)]
    try:
        engine.free_memory()
        engine.prepare_voice(str(paths[0]))
        one_voice_mb = engine.info().voice_cache.mb
        assert one_voice_mb > 0
        engine.settings = replace(saved, voice_cache_max_mb=one_voice_mb * 1.5)  # room for one voice, not two
        evictions = engine.info().voice_cache.evictions
        engine.prepare_voice(str(paths[1]))
        cache = engine.info().voice_cache
        assert engine.cached_voices() == [str(paths[1].resolve())]
        assert cache.evictions == evictions + 1 and cache.mb <= one_voice_mb * 1.5
        # a voice larger than the whole cache: used, not kept
        engine.settings = replace(saved, voice_cache_max_mb=one_voice_mb / 10)
        assert joined(speak(engine, "Hi.", voice=str(paths[0]), seed=1)).size > 0
        assert engine.cached_voices() == []
    finally:
        engine.settings = saved
        engine.free_memory()


def test_free_memory_keeps_the_builtin_voice(turbo_engine, voice_dir):
    turbo_engine.prepare_voice(str(voice_dir / "alice.wav"))
    turbo_engine.free_memory()
    assert turbo_engine.cached_voices() == [] and turbo_engine.loaded
    assert joined(speak(turbo_engine, "Still here.", seed=4)).size > 0


# ---------------------------------------------------------------------------------------------------- streaming
def test_streams_a_long_piece_in_parts_that_join_seamlessly(turbo_engine):
    engine = turbo_engine
    with long_generation(engine, max_tokens=60):
        engine.stream_first_tokens = 0
        whole = speak(engine, "A long piece of text.", seed=11, watermark=False)
        assert len(whole) == 1 and engine.last_tokens == 60
        engine.stream_first_tokens, engine.stream_max_tokens = 12, 16
        parts = speak(engine, "A long piece of text.", seed=11, watermark=False)
        first_chunk_s = engine.last_first_chunk_s
    assert len(parts) >= 3, [len(p) for p in parts]
    a, b = joined(whole), joined(parts)
    assert a.size == b.size and a.size >= 60 * 2 * 480  # no sample dropped or repeated at the joins
    rel = np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(a ** 2))
    assert rel < 0.05, rel                          # the joins are cross-faded, not cut
    assert first_chunk_s is not None and first_chunk_s >= 0


def test_streaming_with_watermark_matches_whole_signal_watermark(turbo_engine):
    """_WatermarkStream gives (nearly) what watermarking the whole signal at once gives, without seams."""
    from ros2_chatterbox.engines.chatterbox.s3gen_stream import WatermarkStream as _WatermarkStream
    wm = turbo_engine._model.watermarker
    rng = np.random.default_rng(0)
    t = np.arange(24000 * 3) / 24000
    x = (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 2 * t)) +
         0.02 * rng.standard_normal(t.size)).astype(np.float32)
    whole = np.asarray(wm.apply_watermark(x, sample_rate=24000), dtype=np.float32)[: x.size]
    stream = _WatermarkStream(lambda s: wm.apply_watermark(s, sample_rate=24000), 24000)
    out, pos = [], 0
    for size in (9000, 4000, 20000, 15000, 24000):
        out.append(stream.push(x[pos:pos + size], final=False))
        pos += size
    out.append(stream.push(x[pos:], final=True))
    got = np.concatenate(out)
    assert got.size == x.size
    rel = np.sqrt(np.mean((got - whole) ** 2)) / np.sqrt(np.mean(whole ** 2))
    assert rel < 0.05, rel


def test_cancel_stops_promptly(turbo_engine):
    engine = turbo_engine
    cancel = threading.Event()
    cancel.set()
    assert speak(engine, "Never spoken.", cancel=cancel, seed=1) == []
    with long_generation(engine, max_tokens=200):
        engine.stream_first_tokens, engine.stream_max_tokens = 10, 10
        cancel = threading.Event()
        gen = engine.synthesize("A long piece.", None, GenerationSettings(seed=5, watermark=False), cancel)
        first = next(gen)
        assert first.size > 0
        cancel.set()
        assert list(gen) == []      # the generator ends with nothing more after the cancel
        assert engine.last_chunks == 1  # no decode ran after it: only the one that made the first part
        # cancel noticed between T3 steps (every token, or every few with the fast path): set from the 5th look on
        cancel = CountdownEvent(5)
        engine.stream_first_tokens = 0
        parts = list(engine.synthesize("A long piece.", None, GenerationSettings(seed=5), cancel))
        assert parts == [] and engine.last_tokens == 0 and cancel.looks <= 6
    assert joined(speak(engine, "Fine again.", seed=2)).size > 0  # the engine is usable after a cancel


# ---------------------------------------------------------------------------------------------------- fidelity
def test_steps_equal_upstream(turbo_engine):
    """T3 sampling, the flow and the vocoder give upstream's exact numbers for the same random draws."""
    import torch
    from ros2_chatterbox.engines.chatterbox.s3gen_stream import StreamDecoder as _StreamDecoder
    from ros2_chatterbox.engines.chatterbox.tokens import TokenSampler as _TokenSampler
    engine = turbo_engine
    model, conds = engine._model, engine._builtin
    text_tokens = engine.tokenize("Hello there [laugh], testing.")
    torch.manual_seed(123)
    with torch.inference_mode():
        upstream = model.t3.inference_turbo(t3_cond=conds.t3, text_tokens=text_tokens)
    sampler = _TokenSampler(engine._lock, model, conds.t3, text_tokens, GenerationSettings(), 1, 1001)
    sampler.generator = torch.Generator().manual_seed(123)
    sampler.run(until=1001, cancel=threading.Event())
    mine = torch.cat(sampler.tokens, dim=1)
    if int(mine[0, -1]) == model.t3.hp.stop_speech_token:
        mine = mine[:, :-1]
    assert torch.equal(upstream, mine)

    tokens = upstream[upstream < 6561]
    n, prompt = tokens.numel(), conds.gen["prompt_feat"].shape[1]
    decoder = _StreamDecoder(model, conds.gen, 7, False, engine._lock, engine.decoder_config)
    torch.manual_seed(11)
    noise = torch.randn(1, 80, 2 * n)
    torch.manual_seed(12)
    z = torch.randn(1, 80, prompt + 2 * n)
    z[..., prompt:] = noise
    ref = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in conds.gen.items()}
    with torch.inference_mode():
        torch.manual_seed(12)
        up_mel, _ = model.s3gen.flow.inference(token=tokens[None], token_len=torch.tensor([n]), finalize=True,
                                               noised_mels=noise, n_timesteps=2, meanflow=True, **ref)
    assert torch.equal(up_mel, decoder.flow_mel(tokens, True, z=z))

    torch.manual_seed(21)
    with torch.inference_mode():
        up_wav, _ = model.s3gen.mel2wav.inference(speech_feat=up_mel, cache_source=torch.zeros(1, 1, 0))
    torch.manual_seed(21)
    harmonics = model.s3gen.mel2wav.m_source.l_sin_gen.harmonic_num + 1
    phase = torch.tensor(-math.pi) + torch.rand(1, harmonics, 1) * (torch.tensor(math.pi) - torch.tensor(-math.pi))
    phase[:, 0, :] = 0
    decoder.phase_vec = phase
    wav, _ = decoder.vocode(up_mel, 0, noise=torch.randn(1, harmonics, up_mel.shape[-1] * 480))
    assert np.array_equal(up_wav[0].numpy(), wav)


def test_first_token_is_kept_even_when_it_is_the_stop_token(turbo_engine):
    """Upstream's inference_turbo appends the first sampled token without looking for the stop token; so does the
    reference loop. Greedy on the tiny checkpoint makes stop the first token (its stop bias is raised)."""
    import torch
    from ros2_chatterbox.engines.chatterbox.tokens import TokenSampler
    engine = turbo_engine
    model, conds = engine._model, engine._builtin
    stop = int(model.t3.hp.stop_speech_token)
    text_tokens = engine.tokenize("Hello there.")
    greedy = GenerationSettings(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0)
    with torch.inference_mode():
        upstream = model.t3.inference_turbo(t3_cond=conds.t3, text_tokens=text_tokens, temperature=1.0, top_k=1,
                                            top_p=1.0, repetition_penalty=1.0, max_gen_len=20)
    sampler = TokenSampler(engine._lock, model, conds.t3, text_tokens, greedy, 1, 21)
    sampler.run(until=21, cancel=threading.Event())
    mine = torch.cat(sampler.tokens, dim=1)
    assert int(mine[0, 0]) == stop and mine.shape[1] >= 2  # the first stop did not end the piece
    if int(mine[0, -1]) == stop:
        mine = mine[:, :-1]  # upstream drops a final stop token
    assert torch.equal(upstream, mine)
    assert sampler.valid().numel() == int((mine < 6561).sum())  # no stop token reaches the decoder


def test_load_time_self_check_compares_many_tokens(turbo_engine):
    """The greedy check at load compares SELF_CHECK_TOKENS tokens with upstream (stop held down for it), not the
    single token the tiny checkpoint's greedy stop would allow."""
    from ros2_chatterbox.engines.chatterbox.fast_path import SELF_CHECK_TOKENS
    fp = turbo_engine.info().fast_path
    assert fp.active and not fp.fallback
    assert f"{SELF_CHECK_TOKENS} tokens equal" in fp.reason
    assert SELF_CHECK_TOKENS >= 32
    stop = int(turbo_engine._model.t3.hp.stop_speech_token)
    assert float(turbo_engine._model.t3.speech_head.bias[stop]) > 0  # the check restored the stop bias


def test_fast_path_state_is_reported(turbo_engine):
    """Asked for (the default) and equal to upstream here: reported active, with the check it passed, no warning."""
    info = turbo_engine.info()
    fp = info.fast_path
    assert fp.requested is True and fp.active is True and fp.fallback is False, fp
    assert fp.reason.startswith("active (greedy check: ") and "seeded sampling reproducible" in fp.reason, fp
    assert fp.warning == "" and info.fast_path_warning == ""
    shown = CoreStatus(engine=info).flat()  # what /diagnostics and /api/model-info show
    assert shown["fast_path_active"] is True and shown["fast_path_warning"] == ""
    assert shown["fast_path_state"] == fp.reason


def test_a_fast_path_fallback_is_loud(tiny_ckpt, monkeypatch):
    """A fast path that fails its check falls back to the reference loop with a warning in the configure log and a
    fallback flag + warning text in info() (which /diagnostics, /health/ready and the doctor show)."""
    import logging
    from ros2_chatterbox.engines.fast_t3 import FastT3
    monkeypatch.setattr(FastT3, "self_check", lambda self, *a, **k: {"ok": False, "n": 64, "match": 3})

    class Records(logging.Handler):  # on the warning's own logger: whatever other tests did to propagation
        def __init__(self):
            super().__init__(logging.WARNING)
            self.records = []

        def emit(self, record):
            self.records.append(record)

    logger = logging.getLogger("ros2_chatterbox.engines.chatterbox.fast_path")
    seen = Records()
    monkeypatch.setattr(logger, "disabled", False)  # another test's logging.config.dictConfig may have disabled it
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.WARNING)
    engine = create_engine("chatterbox_turbo", turbo_config(tiny_ckpt))
    try:
        engine.load()
        fp = engine.info().fast_path
        assert fp.requested and not fp.active and fp.fallback
        assert "equality check" in fp.warning and "reference loop" in fp.warning
        assert any("fast path" in r.getMessage() and r.levelno == logging.WARNING for r in seen.records)
        assert joined(speak(engine, "Still speaking.", seed=3)).size > 0  # the reference loop speaks
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
        engine.unload()


def test_working_memory_is_planned_and_taken_at_configure(tiny_ckpt):
    """The memory plan sizes everything for the longest allowed piece (text.chunk_chars) and configure takes it with
    one worst-case pass (on CUDA; switched on here for the CPU): the engine then speaks as before."""
    engine = create_engine("chatterbox_turbo", turbo_config(tiny_ckpt), max_piece_chars=60)
    engine.WARM_ON_CPU = True
    engine.load()
    try:
        mem = engine.info().memory
        assert mem.state == "taken at configure" and mem.warm_s > 0, mem
        plan = mem.plan
        assert plan["chunk_chars"] == 60 and plan["max_speech_tokens"] == 150 + 6 * 60
        assert engine.fast.capacity >= plan["kv_positions"] - plan["bucket"] + 1  # the fast path's cache is sized
        assert mem.rss_mb > 0 and mem.rss_plus_device_mb >= mem.rss_mb
        assert joined(speak(engine, "Still speaking after the warm-up.", seed=5)).size > 0
        assert set(engine.info().memory.last_piece) == {"device_allocs", "block_allocations", "reserved_bytes"}
    finally:
        engine.unload()
    assert engine.info().memory.state == "not loaded"


def test_allocator_off_with_the_fast_path_is_refused(monkeypatch):
    """PYTORCH_NO_CUDA_MEMORY_CACHING (any value) turns torch's caching allocator off; CUDA graphs cannot be captured
    then. On CUDA with the fast path asked for, configure refuses with the reason and both ways out."""
    from ros2_chatterbox.engines.chatterbox.device import check_allocator
    monkeypatch.setenv("PYTORCH_NO_CUDA_MEMORY_CACHING", "1")
    with pytest.raises(EngineLoadError) as err:
        check_allocator("cuda:0", True)
    assert "Unset the variable" in str(err.value) and "fast_path to false" in str(err.value)
    check_allocator("cuda:0", False)   # the slow loop on purpose
    check_allocator("cpu", True)       # no CUDA, no graphs
    monkeypatch.delenv("PYTORCH_NO_CUDA_MEMORY_CACHING")
    check_allocator("cuda:0", True)


# ---------------------------------------------------------------------------------------------------- bf16, no conds.pt, jetson, unload
def test_bfloat16_without_builtin_voice_then_unload(tiny_ckpt, voice_dir, tmp_path):
    """Another load: T3 in bfloat16 with its conditioning cast, reference loop, Jetson patches on, a checkpoint
    without conds.pt; then unload frees the model."""
    import torch
    from ros2_chatterbox import jetson_patches
    folder = copy_checkpoint(tiny_ckpt, tmp_path / "noconds", skip=("conds.pt",))
    engine = create_engine("chatterbox_turbo", turbo_config(folder, dtype="bfloat16", fast_path=False,
                                                            jetson_patches="on"))
    try:
        engine.load()
        info = engine.info()
        assert info.dtype == "bfloat16" and not info.builtin_voice and not info.fast_path.active
        assert info.jetson_patches_active and jetson_patches.is_applied()
        assert engine._model.t3.speech_head.weight.dtype == torch.bfloat16
        assert engine._model.s3gen.mel2wav.conv_pre.weight.dtype == torch.float32  # HiFT stays fp32
        with pytest.raises(VoiceError, match="no built-in voice"):
            speak(engine, "Hello.")
        voice = str(voice_dir / "alice.wav")
        audio = joined(speak(engine, "Hello there.", voice=voice, seed=3))
        assert audio.size > 0 and np.isfinite(audio).all()
        assert engine._voice_conds(voice).t3.speaker_emb.dtype == torch.bfloat16
        model_ref = weakref.ref(engine._model)
    finally:
        engine.unload()
    assert not jetson_patches.is_applied()
    gc.collect()
    assert model_ref() is None, "the model is still referenced after unload"
    assert not engine.loaded and engine.cached_voices() == []
    assert engine.info().loaded is False
    with pytest.raises(EngineError):
        speak(engine, "Hello.")
