"""memory.budget_mb: the plan arithmetic (pure, no torch) and configure fitting into a budget or refusing with what
would fit (tiny checkpoint, CPU: there the weights and the working memory are host RSS)."""
from __future__ import annotations

import pytest

from turbo_fixtures import joined, speak, tiny_ckpt, turbo_config  # noqa: F401 - tiny_ckpt is a fixture

from ros2_chatterbox.engine import EngineLoadError
from ros2_chatterbox.engines import create_engine
from ros2_chatterbox.engines.chatterbox import memory_plan


def plan(chars, speech):
    return memory_plan.make_plan(chars, n_layer=24, n_head=16, head_dim=64, dtype_bytes=2, max_positions=8196,
                                 speech_max=speech)


def test_plan_arithmetic_bounds_the_longest_piece():
    p = plan(250, 1000)
    assert p.max_text_tokens == 4 * 250 + 1 and p.max_speech_tokens == 1000
    assert p.kv_positions % p.bucket == 0 and p.kv_positions >= 376 + 1001 + 1 + 1000
    assert p.kv_bytes == 24 * 2 * 16 * p.kv_positions * 64 * 2
    assert p.flow_tokens_max == 250 + 1000 + 3 and p.decode_points[-1] == 1000
    small = plan(120, 480)
    assert small.kv_bytes < p.kv_bytes and small.flow_tokens_max == 250 + 480 + 3
    # the flow's attention dominates: the workspace grows with the square of its input; fp16 needs half
    assert memory_plan.workspace_mb(small) < memory_plan.workspace_mb(p) / 2
    assert memory_plan.workspace_mb(p, flow_bytes=2) < memory_plan.workspace_mb(p)


def test_budget_keeps_the_configured_values_when_they_fit():
    c = memory_plan.fit_budget(1e6, 1000.0, plan, 250, 1000, 8, 38.0)
    assert (c.chunk_chars, c.speech_tokens_max, c.max_voices) == (250, 1000, 8)
    assert "250 characters" in c.describe() and "speech_tokens.max 1000" in c.describe()


def test_budget_steps_down_to_what_fits_and_every_step_fits_its_text():
    full = memory_plan.fit_budget(1e6, 1000.0, plan, 250, 1000, 8, 38.0).predicted_mb
    c = memory_plan.fit_budget(full - 1, 1000.0, plan, 250, 1000, 8, 38.0)
    assert c.chunk_chars < 250 and c.predicted_mb <= full - 1
    for chars, speech in memory_plan.LADDER:
        assert speech >= 4 * chars   # 2-3x normal speech: a piece of that length is still spoken in full
    # only fewer voices fit: the smallest step first, then voices
    smallest = memory_plan.fit_budget(1e6, 1000.0, plan, 60, 240, 8, 38.0).predicted_mb
    c = memory_plan.fit_budget(smallest - 38.0 * 5, 1000.0, plan, 250, 1000, 8, 38.0)
    assert c.chunk_chars == 60 and c.max_voices < 8


def test_budget_too_small_says_what_would_fit():
    with pytest.raises(ValueError) as err:
        memory_plan.fit_budget(500, 1000.0, plan, 250, 1000, 8, 38.0)
    msg = str(err.value)
    assert "memory.budget_mb 500 is too small" in msg and "model alone holds 1000 MiB" in msg
    assert "raise the budget to at least" in msg and "model nano" in msg


def _rss_mb() -> float:
    from ros2_chatterbox.engines.chatterbox.gpu_memory import rss_bytes
    return rss_bytes() / 2 ** 20


def test_configure_fits_a_budget_and_says_what_it_chose(tiny_ckpt):
    """A budget just above what the process holds: configure picks shorter pieces and a lower speech cap, the status
    says so, and the engine still speaks."""
    budget = _rss_mb() + 900.0
    engine = create_engine("chatterbox_turbo", turbo_config(tiny_ckpt, memory_budget_mb=budget), max_piece_chars=250)
    engine.load()
    try:
        mem = engine.info().memory
        assert "memory.budget_mb" in mem.budget and engine.max_piece_chars < 250, mem.budget
        assert engine.settings.speech_tokens_max < 1000
        assert mem.plan["max_speech_tokens"] <= engine.settings.speech_tokens_max
        assert mem.footprint["weights"]["t3"]["mb"] > 0 and mem.footprint["host"]["rss_mb"] > 0
        assert joined(speak(engine, "Still speaking within the budget.", seed=3)).size > 0
    finally:
        engine.unload()


def test_configure_refuses_a_budget_that_nothing_fits(tiny_ckpt):
    engine = create_engine("chatterbox_turbo", turbo_config(tiny_ckpt, memory_budget_mb=50.0), max_piece_chars=250)
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    assert "memory.budget_mb 50 is too small" in str(err.value) and "raise the budget to at least" in str(err.value)
    assert not engine.loaded
