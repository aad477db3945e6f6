"""The engine's memory plan (engines/chatterbox/memory_plan.py): the bounds for the longest allowed piece, on CPU."""
import pytest

from optional import make_setup
from ros2_chatterbox.engines.chatterbox import memory_plan as mp

TURBO = dict(n_layer=24, n_head=16, head_dim=64, dtype_bytes=2, max_positions=8196)


def test_decode_points_follow_the_streaming_schedule():
    assert mp.decode_points(1000, 25, 200) == [25, 75, 175, 375, 575, 775, 975, 1000]
    assert mp.decode_points(60, 25, 200) == [25, 60]
    assert mp.decode_points(300, 0, 200) == [300]  # streaming off: one decode


def test_text_token_bound_holds_for_hostile_text(tmp_path):
    """Every character can be 4 UTF-8 bytes, one byte-level BPE token each; punc_norm adds at most a full stop."""
    pytest.importorskip("chatterbox.tts_turbo", reason=f"needs chatterbox-tts: run `{make_setup('setup')}`")
    from chatterbox.tts_turbo import punc_norm
    from transformers import AutoTokenizer
    from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import write_tokenizer
    write_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for text in ("\U0001F600" * 20, "a" * 20, "\u2026" * 20, "", "x[laugh]" * 3, "\u00e9t\u00e9 " * 5):
        n = len(tok(punc_norm(text)).input_ids)
        assert n <= mp.max_text_tokens(len(text)), (text, n)
    assert mp.max_text_tokens(1) == mp.EMPTY_TEXT_CHARS


def test_plan_for_the_default_piece_length():
    plan = mp.make_plan(250, **TURBO)
    assert plan.max_speech_tokens == 1000 and plan.max_text_tokens == 1001
    need = mp.PREFIX_POSITIONS + plan.max_text_tokens + 1 + plan.max_speech_tokens
    assert plan.kv_positions >= need and plan.kv_positions % 256 == 0 and plan.kv_positions - need < 256
    assert plan.buckets[0] == 256 and plan.buckets[-1] == plan.kv_positions and len(plan.buckets) == 10
    assert plan.kv_bytes == 24 * 2 * 16 * plan.kv_positions * 64 * 2
    assert plan.flow_tokens_max == 250 + 1000 + 3
    assert plan.vocoder_frames_max == 2 * (200 + 3) + 8 + 4
    d = plan.as_dict()
    assert d["kv_mb"] == round(plan.kv_bytes / 2 ** 20, 1) and d["buckets"] == list(plan.buckets)


def test_without_the_piece_length_the_caps_bound_the_plan():
    """SpeechCore's text.chunk_chars is not an engine setting: without it, the tokenizer's limit bounds the text and
    speech_tokens.max the speech (the knob for S3Gen's worst case)."""
    plan = mp.make_plan(None, speech_max=600, **TURBO)
    assert plan.chunk_chars is None and plan.max_text_tokens == 1024 and plan.max_speech_tokens == 600
    assert plan.flow_tokens_max == 250 + 600 + 3
    assert plan.kv_positions == 2048  # 376 + 1024 + 1 + 600 = 2001, rounded up to the bucket
    assert mp.make_plan(60, speech_base=100, speech_per_char=2.0, **TURBO).max_speech_tokens == 100 + 2 * 60


def test_shorter_pieces_plan_less_and_impossible_ones_are_refused():
    small = mp.make_plan(40, **TURBO)
    assert small.max_speech_tokens == 150 + 6 * 40 and small.kv_positions < mp.make_plan(250, **TURBO).kv_positions
    with pytest.raises(ValueError, match="speech_tokens.max"):
        mp.make_plan(250, **{**TURBO, "max_positions": 1024})


def test_rss_breakdown_splits_anonymous_and_file_memory():
    """The bench's view of host RSS (item 7): anonymous vs shared-library pages, largest files first."""
    from ros2_chatterbox.engines.chatterbox import gpu_memory
    rss = gpu_memory.rss_breakdown()
    assert rss["anon_mb"] > 0 and rss["files_mb"] > 0
    sizes = [mb for _name, mb in rss["largest_files_mb"]]
    assert sizes == sorted(sizes, reverse=True)
    total = gpu_memory.rss_bytes() / 2 ** 20
    assert abs(rss["anon_mb"] + rss["files_mb"] - total) < 0.2 * total
    assert gpu_memory.allocator_stats("cpu")["num_device_alloc"] == 0 and gpu_memory.blocking_sync("cpu") == "n/a"
