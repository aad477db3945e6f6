"""A sampling option end to end: `generation.min_p` (settings table -> HTTP request field / the node's parameter ->
the sampler), on the tiny Chatterbox Turbo checkpoint, on both decode loops (FastT3 and upstream's loop).

min_p = 1 keeps only the most likely speech token at every step, so with the same seed the audio must be the greedy
audio (top_k = 1), and differ from the default sampling's: what the test hears proves the value reached the sampler.
"""
import contextlib

import pytest

from http_fixtures import make_core, serving
from turbo_fixtures import long_generation, require_chatterbox, tiny_ckpt  # noqa: F401

pytestmark = pytest.mark.timeout(900)

TEXT = "The robot says hello."


@pytest.fixture(scope="module", params=[True, False], ids=["fast_path", "upstream_loop"])
def turbo_core(request, tiny_ckpt, tmp_path_factory):  # noqa: F811
    require_chatterbox()
    core = make_core(tmp_path_factory.mktemp("voices"), with_voice=False, engine="chatterbox_turbo",
                     model_dir=str(tiny_ckpt), device="cpu", fast_path=request.param,
                     **{"audio.sentence_pause_ms": 0})
    try:
        assert core.engine.name == "chatterbox_turbo"
        with long_generation(core.engine, max_tokens=40):  # random weights would stop after a token or two
            yield core
    finally:
        core.unload()


@contextlib.contextmanager
def tts(core, seed: int):
    """A function that asks `core`'s HTTP server (POST /tts) for TEXT with this seed and returns the WAV bytes."""
    import httpx
    with serving(core) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        def audio(**settings):
            r = client.post("/tts", json={"text": TEXT, "format": "wav", "seed": seed, "watermark": False,
                                          **settings})
            assert r.status_code == 200, r.text
            return r.content
        audio.client = client
        yield audio


def test_min_p_reaches_the_sampler_over_http(turbo_core):
    with tts(turbo_core, seed=5) as audio:
        greedy, sampled = audio(top_k=1), audio()
        assert greedy != sampled
        assert audio(min_p=1.0) == greedy
        assert audio(min_p=0.0) == sampled
        r = audio.client.post("/tts", json={"text": TEXT, "min_p": 1.5})
        assert r.status_code == 400 and "min_p" in r.text


def test_min_p_as_the_node_parameter(turbo_core):
    """A parameter change (what `ros2 param set /tts_node generation.min_p 1.0` hands the core) applies to the next
    request; the table gives the parameter its range."""
    from ros2_chatterbox.settings import SETTINGS_BY_NAME, ConfigError
    row = SETTINGS_BY_NAME["generation.min_p"]
    assert (row.default, row.min, row.max, row.stage) == (0.0, 0.0, 1.0, "runtime")
    before = turbo_core.settings
    with pytest.raises(ConfigError):
        before.with_values({"generation.min_p": 2.0})
    try:
        with tts(turbo_core, seed=9) as audio:
            greedy, sampled = audio(top_k=1), audio()
            turbo_core.apply(before.with_values({"generation.min_p": 1.0}))
            assert turbo_core.settings.generation.min_p == 1.0
            assert audio() == greedy != sampled
    finally:
        turbo_core.apply(before)
