"""FastT3 (ros2_chatterbox/engines/fast_t3/) against upstream `T3.inference_turbo`, on a tiny random T3 (CPU).

The tiny T3 is upstream's class at small widths (ros2_chatterbox.engines.chatterbox.tiny_checkpoint). Random weights at
their init scale barely look at the text, so the attention and MLP weights are scaled up: then different texts and voices
give different tokens and the comparison means something.
"""
import pytest

from optional import optional_import, requires

NEEDS = ("torch", "chatterbox", "transformers")
pytestmark = requires(*NEEDS, hint="make setup")
torch = optional_import("torch")
if all(optional_import(name) is not None for name in NEEDS):
    from ros2_chatterbox.engines.chatterbox import tiny_checkpoint as tiny_turbo
    from ros2_chatterbox.engines.fast_t3 import FastT3, TestHooks, sampling
    from ros2_chatterbox.settings import GenerationSettings

    GREEDY = GenerationSettings(temperature=1.0, top_k=1, top_p=1.0, repetition_penalty=1.0)
else:
    GREEDY = None  # the tests skip (pytestmark)

STOP = 6562
START = 6561
TEXTS = ["Hello world.", "The quick brown fox jumps over the lazy dog. Testing one two three.",
         "Hi there [laugh] how are you today?"]


def _tiny(tmp_path_factory, model):
    """A tiny T3 in `model`'s shape (turbo: GPT-2-medium-shaped, 64 wide; nano: GPT-2-small-shaped, 96 = 3 x 32
    wide like 768 = 3 x 256), built like the engine builds it (models.build_t3), with test voices and texts."""
    from transformers import AutoTokenizer
    from chatterbox.models.t3.modules.cond_enc import T3Cond
    from ros2_chatterbox.engines.chatterbox import models

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is fastest, and immune to a busy machine
    folder = tmp_path_factory.mktemp("tiny_tok")
    tiny_turbo.write_tokenizer(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    t3 = models.build_t3(models.model_spec(model), tiny_turbo.arch_for(model)["t3"])
    del t3.tfmr.wte  # as from_local does
    t3.eval()
    with torch.no_grad():
        for b in t3.tfmr.h:
            for w in (b.attn.c_attn.weight, b.attn.c_proj.weight, b.mlp.c_fc.weight, b.mlp.c_proj.weight):
                w.mul_(4.0)
        t3.speech_head.weight.mul_(3.0)
        t3.speech_head.bias[STOP] = -1e4  # random weights: no stop unless a test asks for one
    g = torch.Generator().manual_seed(7)

    def voice(n_prompt):
        spk = torch.randn(1, 256, generator=g)
        return T3Cond(speaker_emb=spk / spk.norm(),
                      cond_prompt_speech_tokens=torch.randint(0, 6561, (1, n_prompt), generator=g),
                      emotion_adv=0.5 * torch.ones(1, 1, 1))

    voices = [voice(150), voice(375)]
    texts = [tok(t, return_tensors="pt").input_ids for t in TEXTS]
    yield t3, voices, texts
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    yield from _tiny(tmp_path_factory, "turbo")


@pytest.fixture(scope="module")
def tiny_nano(tmp_path_factory):
    yield from _tiny(tmp_path_factory, "nano")


both_shapes = pytest.mark.parametrize("shape", ["tiny", "tiny_nano"])


def upstream(t3, cond, text, s=GREEDY, n=60):
    return t3.inference_turbo(cond, text, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                              repetition_penalty=s.repetition_penalty, max_gen_len=n)[0].tolist()


def set_stop_bias(t3, value):
    with torch.no_grad():
        t3.speech_head.bias[STOP] = value


@both_shapes
def test_greedy_tokens_equal_upstream(shape, request):
    t3, voices, texts = request.getfixturevalue(shape)
    fast = FastT3(t3)
    seen = set()
    for cond in voices:
        for text in texts:
            ref = upstream(t3, cond, text, n=60)
            got = fast.generate(cond, text, GREEDY, max_new_tokens=60)
            assert got.shape == (1, 61)
            assert got[0].tolist() == ref
            seen.add(tuple(ref))
    assert len(seen) == len(voices) * len(texts), "texts/voices should lead to different tokens"
    assert len(fast.voices) == 2  # each voice prefilled once, reused


def test_greedy_with_processors_and_without_prefix_cache(tiny):
    """top_k=1 with upstream's default temperature/top_p/penalty is greedy too; one-pass prefill agrees."""
    t3, voices, texts = tiny
    s = GenerationSettings(temperature=0.8, top_k=1, top_p=0.95, repetition_penalty=1.2)
    fast = FastT3(t3, prefix_cache=False)
    for text in texts[:2]:
        assert fast.generate(voices[1], text, s, max_new_tokens=40)[0].tolist() == upstream(t3, voices[1], text, s,
                                                                                             n=40)


@both_shapes
def test_bucketed_masked_step_equals_upstream(shape, request):
    """The step the CUDA graphs replay (bucketed attention length + additive mask), run eagerly."""
    t3, voices, texts = request.getfixturevalue(shape)
    fast = FastT3(t3, bucket=64, check_every=5, hooks=TestHooks(masked_eager=True))
    text = texts[1]
    assert fast.generate(voices[0], text, GREEDY, max_new_tokens=150)[0].tolist() == upstream(t3, voices[0], text,
                                                                                              n=150)
    # sampling in the graphs' step draws the eager step's tokens
    s = GenerationSettings()
    a = fast.generate(voices[0], text, s, generator=torch.Generator().manual_seed(3), max_new_tokens=60)
    b = FastT3(t3, bucket=64, check_every=5).generate(voices[0], text, s, generator=torch.Generator().manual_seed(3),
                                                      max_new_tokens=60)
    assert fast.stats["mode"] == "sampled"
    assert torch.equal(a, b)


@both_shapes
def test_triton_kernels_step_equals_upstream(shape, request):
    """The Triton decode kernels (CUDA graphs use them where they win: GEMVs with the KV write, decode attention),
    run by Triton's CPU interpreter; the Nano shape's width (96) takes the kernel's masked column tiles."""
    import importlib.util
    import os
    import sys
    if importlib.util.find_spec("triton") is None:
        pytest.skip(f"needs triton: run `{sys.executable} -m pip install triton`")
    if os.environ.get("TRITON_INTERPRET") != "1":  # set before Python starts: triton reads it at import
        pytest.skip("slow (~6 min): run with TRITON_INTERPRET=1 and triton installed to check the Triton kernels "
                    "on CPU")
    t3, voices, texts = request.getfixturevalue(shape)
    fast = FastT3(t3, bucket=64, check_every=16, hooks=TestHooks(masked_eager=True, kernels="triton",
                                                                  attention="triton"))
    try:
        fast.weights.set_out_in_layout()
        text = texts[0]
        assert fast.generate(voices[1], text, GREEDY, max_new_tokens=24)[0].tolist() == upstream(t3, voices[1], text,
                                                                                                 n=24)
    finally:
        with torch.no_grad():  # back to Conv1D's own storage order for the other tests
            for p in t3.parameters():
                p.data = p.data.contiguous()


def test_processors_match_upstream():
    """sampling.process == transformers' processors in upstream's order (min-p after top-p), for many settings."""
    from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                        RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    g = torch.Generator().manual_seed(1)
    V = 6563
    cases = [(0.8, 1000, 0.95, 0.0, 1.2), (1.0, 0, 1.0, 0.0, 1.0), (0.5, 50, 0.5, 0.0, 1.5), (1.3, 10000, 0.99, 0.0, 0.8),
             (0.0, 5, 0.0, 0.0, 1.2), (2.0, 3000, 1.0, 0.0, 2.0), (0.8, 1000, 0.95, 0.05, 1.2), (1.0, 0, 1.0, 0.3, 1.0),
             (1.5, 200, 0.9, 1.0, 1.3)]
    for temperature, top_k, top_p, min_p, pen in cases * 3:
        s = GenerationSettings(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=pen)
        logits = torch.randn(1, V, generator=g) * 3
        ids = torch.randint(0, V, (1, 30), generator=g)
        procs = LogitsProcessorList()
        if temperature > 0 and temperature != 1.0:
            procs.append(TemperatureLogitsWarper(temperature))
        if top_k > 0:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
        if min_p > 0:
            procs.append(MinPLogitsWarper(min_p))
        if pen != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(pen))
        ref = procs(ids, logits.clone())
        seen = torch.zeros(1, V, dtype=torch.bool)
        seen[0, ids[0]] = True
        got = sampling.process(logits.clone(), seen, sampling.params_tensor(s, V))
        assert torch.equal(torch.isinf(ref), torch.isinf(got)), s
        finite = torch.isfinite(ref)
        assert torch.equal(ref[finite], got[finite]), s


def test_draw_follows_the_processed_distribution():
    """The draw argmax(p / E), E ~ Exp(1), is a sample from p: 4,000 draws against torch.multinomial's, chi-square
    over the tokens both can draw (fixed seeds: the verdict is the same every run)."""
    from scipy.stats import chisquare
    g = torch.Generator().manual_seed(5)
    V, n = 6563, 4000
    logits = torch.randn(1, V, generator=g) * 3
    processed = sampling.process(logits, torch.zeros(1, V, dtype=torch.bool),
                                 sampling.params_tensor(GenerationSettings(), V))
    p = processed.softmax(-1)[0]
    noise = torch.empty(n, V).exponential_(generator=g)
    drawn = torch.stack([sampling.draw(processed, noise[i:i + 1]) for i in range(n)]).view(-1)
    assert bool((p[drawn] > 0).all())          # never a token the processors dropped
    kept = torch.nonzero(p > 0).view(-1)
    counts = torch.bincount(drawn, minlength=V)[kept].double()
    expected = p[kept].double() * n
    big = expected >= 5                          # chi-square needs >= 5 expected per cell: pool the rest
    obs = torch.cat([counts[big], counts[~big].sum().view(1)])
    exp = torch.cat([expected[big], expected[~big].sum().view(1)])
    assert chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 0.05


def test_sampling_same_seed_same_tokens(tiny):
    t3, voices, texts = tiny
    fast = FastT3(t3, check_every=8)
    s = GenerationSettings()  # upstream defaults: 0.8, 1000, 0.95, 1.2

    def run(seed, text=texts[0]):
        return fast.generate(voices[0], text, s, generator=torch.Generator().manual_seed(seed),
                             max_new_tokens=80)[0].tolist()

    a, b, c = run(11), run(11), run(12)
    assert a == b
    assert a != c
    # another request in between (other voice, other settings) does not disturb the next one
    fast.generate(voices[1], texts[2], GenerationSettings(temperature=1.2, top_k=50, top_p=0.8, repetition_penalty=1.0), generator=torch.Generator().manual_seed(1),
                  max_new_tokens=30)
    assert run(11) == a
    # a fresh instance gives the same tokens too
    assert FastT3(t3, check_every=8).generate(voices[0], texts[0], s, generator=torch.Generator().manual_seed(11),
                                              max_new_tokens=80)[0].tolist() == a
    # sampled tokens are spread, not stuck
    assert len(set(a)) > 40


def test_stop_token_mid_generation(tiny):
    """With a stop bias that makes upstream stop after a few dozen tokens, every check interval stops at the same
    place and drops the stop token."""
    t3, voices, texts = tiny
    cond, text = voices[0], texts[0]
    chosen = None
    try:
        for bias in (2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 6.0, 7.0, 8.0):
            set_stop_bias(t3, bias)
            ref = upstream(t3, cond, text, n=200)
            if 3 <= len(ref) < 150:
                chosen = (bias, ref)
                break
        assert chosen is not None, "no stop bias gives a mid-length utterance"
        bias, ref = chosen
        assert STOP not in ref[1:]
        for every in (1, 3, 8, 64):
            fast = FastT3(t3, check_every=every)
            assert fast.generate(cond, text, GREEDY, max_new_tokens=200)[0].tolist() == ref, every
            assert fast.stats["tokens"] == len(ref)
        # streaming: chunks concatenate to the same tokens; the first one arrives at first_chunk
        fast = FastT3(t3, check_every=4)
        chunks = [c.tolist() for c in fast.stream_tokens(cond, text, GREEDY, max_new_tokens=200, first_chunk=2)]
        assert sum(chunks, []) == ref
        assert len(chunks[0]) == min(2, len(ref))
        assert all(len(c) <= 4 for c in chunks)
    finally:
        set_stop_bias(t3, -1e4)


def test_stop_token_first_and_cap(tiny):
    """A stop token as the first token does not stop (upstream); the cap is upstream's 1 + max_gen_len."""
    t3, voices, texts = tiny
    cond, text = voices[1], texts[2]
    try:
        set_stop_bias(t3, 1e4)  # always the stop token
        ref = upstream(t3, cond, text, n=50)
        assert ref == [STOP]  # [stop, stop] -> the second stops, the last is dropped
        fast = FastT3(t3, check_every=8)
        assert fast.generate(cond, text, GREEDY, max_new_tokens=50)[0].tolist() == ref
        # max_gen_len=0: upstream returns the first token unless it is the stop token
        assert upstream(t3, cond, text, n=0) == []
        assert fast.generate(cond, text, GREEDY, max_new_tokens=0).shape == (1, 0)
    finally:
        set_stop_bias(t3, -1e4)
    fast = FastT3(t3, check_every=8)
    for n in (0, 1, 7, 8, 9, 33):
        assert fast.generate(cond, text, GREEDY, max_new_tokens=n)[0].tolist() == upstream(t3, cond, text, n=n)


def test_voice_cache_is_bounded_and_tracks_changes(tiny):
    t3, voices, texts = tiny
    fast = FastT3(t3, max_voices=1)
    a = fast.generate(voices[0], texts[0], GREEDY, max_new_tokens=10)
    fast.generate(voices[1], texts[0], GREEDY, max_new_tokens=10)
    assert len(fast.voices) == 1
    assert torch.equal(fast.generate(voices[0], texts[0], GREEDY, max_new_tokens=10), a)
    # a conditioning object whose tensors are replaced is prefilled again
    import copy
    cond = copy.copy(voices[0])
    fast.generate(cond, texts[0], GREEDY, max_new_tokens=5)
    cond.speaker_emb = voices[1].speaker_emb
    got = fast.generate(cond, texts[0], GREEDY, max_new_tokens=10)[0].tolist()
    assert got == upstream(t3, cond, texts[0], n=10)


def test_self_check_compares_many_tokens_and_catches_a_wrong_fast_path(tiny):
    """The load-time check compares n_tokens greedy tokens even where stop is the greedy choice (it holds the stop
    token down for the check and restores its bias exactly), and a fast path that computes anything else fails it."""
    t3, voices, texts = tiny
    fast = FastT3(t3)
    set_stop_bias(t3, 50.0)  # stop is the greedy first token, as on the tiny test checkpoint
    try:
        assert upstream(t3, voices[0], texts[1], n=40) == [STOP]  # all a plain greedy comparison would look at
        check = fast.self_check(voices[0], texts[1], n_tokens=40)
        assert check["ok"] and check["n"] == check["n_fast"] == check["match"] == 40, check
        assert float(t3.speech_head.bias[STOP]) == 50.0
        good_head = fast.weights.head_b
        bent = good_head.detach().clone()
        bent[123] += 3.0  # a fast path whose head is off for one token
        fast.weights.head_b = bent
        check = fast.self_check(voices[0], texts[1], n_tokens=40)
        assert not check["ok"] and check["match"] < 40 and check["margin"] > 0, check
        fast.weights.head_b = good_head
    finally:
        set_stop_bias(t3, -1e4)


def test_unsupported_configuration(tiny):
    t3, _, _ = tiny
    ok, _ = FastT3.supported(t3)
    assert ok
    import types
    fake = types.SimpleNamespace(hp=types.SimpleNamespace(input_pos_emb="learned"), is_gpt=False)
    ok, why = FastT3.supported(fake)
    assert not ok and why
    with pytest.raises(ValueError):
        FastT3(fake)


def test_decode_state_update_and_start():
    """DecodeState: start puts the prefill's token at out[0] (seen, step 1 next); update writes out[step], marks the
    token seen and advances pos and step; the noise row of step i is row i % noise_rows; settings become the row."""
    from ros2_chatterbox.engines.fast_t3.state import DecodeState
    st = DecodeState(n_layer=2, n_head=2, head_dim=4, vocab=50, positions=64, tokens=16, noise_rows=4,
                     device="cpu", dtype=torch.float32)
    with torch.inference_mode():
        st.fill_noise(torch.Generator().manual_seed(0))
        st.start(torch.tensor([7]), 30)
        assert (st.out[0].item(), st.tok.item(), st.pos.item(), st.step.item()) == (7, 7, 30, 1)
        assert st.seen[0].nonzero().view(-1).tolist() == [7]
        for tok in (3, 9, 3, 11, 5):
            assert torch.equal(st.noise_row(), st.noise[st.step.item() % 4].view(1, -1))
            st.update(torch.tensor([tok]))
        assert st.out[:6].tolist() == [7, 3, 9, 3, 11, 5] and (st.pos.item(), st.step.item()) == (35, 6)
        assert st.seen[0].nonzero().view(-1).tolist() == [3, 5, 7, 9, 11]
        st.set_sampling(GenerationSettings(temperature=0.5, top_k=100, top_p=0.9, min_p=0.1, repetition_penalty=1.3))
        assert torch.allclose(st.params, sampling.params_tensor(
            GenerationSettings(temperature=0.5, top_k=50, top_p=0.9, min_p=0.1, repetition_penalty=1.3), 50))
        assert st.params[0, sampling.TOPK].item() == 50           # k = min(top_k, vocab)
        st.reset()
        assert (st.pos.item(), st.step.item(), st.tok.item()) == (0, 0, 0)
    assert DecodeState.sized(300, 256, 8196) == 512 and DecodeState.sized(9000, 256, 8196) == 8196


def test_capture_fallback_rule(tiny):
    """The one fallback rule: a capture that fails with Triton parts is tried again with PyTorch ops; one that fails
    with PyTorch ops leaves the graphs off (eager). Both failures are kept, and the tokens stay upstream's."""
    t3, voices, texts = tiny
    fast = FastT3(t3, bucket=64, hooks=TestHooks(kernels="triton", sampler="triton"))
    tried = []

    def capture(key, step, reset):
        tried.append((key, fast.kernels, fast.sampler))
        raise RuntimeError("operation not permitted when stream is capturing")
    fast.graphs.enabled = True          # as on CUDA (the capture itself is what fails here)
    fast.graphs.capture = capture
    fast._ensure_graphs(1, 128, greedy=True)
    assert [t[1:] for t in tried] == [("triton", "triton"), ("torch", "torch")]
    assert not fast.use_graphs and len(fast.info()["graph_failures"]) == 2
    assert "operation not permitted" in fast.info()["graph_failures"][0]
    got = fast.generate(voices[0], texts[0], GREEDY, max_new_tokens=30)[0].tolist()
    assert got == upstream(t3, voices[0], texts[0], n=30)
