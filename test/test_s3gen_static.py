"""S3Gen's flow at static shapes (engines/chatterbox/s3gen_static.py), the groundwork for its CUDA graphs: the
bucket choice, and the padded, masked flow giving the frames of the streaming decoder's own flow whatever the padding
(streamed and final steps, several lengths, two voices), where upstream's encoder on padded input does not.

On the tiny random checkpoint, on the CPU, in float32.
"""
import threading

import pytest

from turbo_fixtures import require_chatterbox, tiny_ckpt, tiny_model_and_voices  # noqa: F401

pytestmark = pytest.mark.timeout(600)


def test_buckets_cover_the_plan_and_the_smallest_that_holds_is_chosen():
    from ros2_chatterbox.engines.chatterbox.s3gen_static import FLOW_BUCKET_TOKENS, bucket_for, flow_buckets
    buckets = flow_buckets(375 + 1000 + 3)  # a 15 s prompt, speech_tokens.max 1000, the final silence
    assert buckets[0] == FLOW_BUCKET_TOKENS and buckets[-1] == 1408 and buckets[-1] - 1378 < 2 * FLOW_BUCKET_TOKENS
    assert buckets[:8] == list(range(64, 513, 64)) and all(b - a == 128 for a, b in zip(buckets[7:], buckets[8:]))
    assert [bucket_for(n, buckets) for n in (1, 64, 65, 400, 513, 1378)] == [64, 64, 128, 448, 640, 1408]
    with pytest.raises(ValueError, match="exceed the largest bucket"):
        bucket_for(1409, buckets)
    with pytest.raises(ValueError):
        flow_buckets(0)


@pytest.fixture(scope="module")
def decoders(tiny_ckpt, tmp_path_factory):
    require_chatterbox()
    from ros2_chatterbox.engines.chatterbox.s3gen_stream import DecoderConfig, StreamDecoder
    model, refs = tiny_model_and_voices(tiny_ckpt, tmp_path_factory.mktemp("static_voices"),
                                        ((110.0, 1, 5.6), (210.0, 2, 5.6)))
    return [StreamDecoder(model, ref, 7, False, threading.Lock(), DecoderConfig(speech_cap=300)) for ref in refs]


@pytest.mark.parametrize("n_tokens,final", [(25, False), (80, False), (120, True)])
def test_padded_flow_gives_the_decoders_frames_whatever_the_padding(decoders, n_tokens, final):
    import torch
    from ros2_chatterbox.engines.chatterbox.s3gen_static import bucket_for, flow_buckets, padded_flow_mel
    from ros2_chatterbox.engines.chatterbox.s3gen_stream import SILENCE_TOKEN
    g = torch.Generator().manual_seed(n_tokens)
    tokens = torch.randint(0, 6561, (n_tokens,), generator=g)
    if final:
        tokens = torch.cat([tokens, torch.full((3,), SILENCE_TOKEN)])
    for dec in decoders:
        want = dec.flow_mel(tokens, finalize=final)
        n = int(dec.ref["prompt_token"].shape[-1]) + len(tokens)
        bucket = bucket_for(n, flow_buckets(n + 200))
        for pad_to in sorted({n, n + 1, bucket + 64}):
            got = padded_flow_mel(dec, tokens, final, pad_to)
            assert got.shape == want.shape
            assert float((got - want).abs().max()) < 1e-4, (pad_to, float((got - want).abs().max()))


def test_upstreams_encoder_on_padded_input_is_not_exact_and_the_masked_one_is(decoders):
    """Why masked_encode exists: upstream's forward lets the padding into the last real frames."""
    import torch
    import torch.nn.functional as F
    from chatterbox.models.s3gen.utils.mask import make_pad_mask
    from ros2_chatterbox.engines.chatterbox.s3gen_static import masked_encode
    dec = decoders[0]
    flow = dec.s3gen.flow
    token = torch.cat([dec.ref["prompt_token"].reshape(1, -1).long(), torch.randint(0, 6561, (1, 40))], dim=1)
    n = token.shape[1]
    lens = torch.tensor([n])
    with torch.inference_mode():
        exact, _ = flow.encoder(flow.input_embedding(token), lens)
        padded = flow.input_embedding(F.pad(token, (0, 16))) * (~make_pad_mask(lens, n + 16)).unsqueeze(-1).float()
        upstream, _ = flow.encoder(padded, lens)
        masked, _ = masked_encode(flow.encoder, padded, lens)
    assert float((upstream[:, :2 * n] - exact).abs().max()) > 1e-2
    assert float((masked[:, :2 * n] - exact).abs().max()) < 1e-4
    assert float(masked[:, 2 * n:].abs().max()) == 0.0


def test_one_static_flow_serves_every_voice_and_step(decoders):
    """The same buffers, loaded step after step with another voice (prompt length, noise) and another length, give
    each decoder's own frames: nothing of an earlier step stays behind."""
    import torch
    from ros2_chatterbox.engines.chatterbox.s3gen_static import StaticFlow, valid_frames
    g = torch.Generator().manual_seed(3)
    flow = decoders[0].s3gen.flow
    static = StaticFlow(flow, 320, decoders[0].config.cfm_steps, "cpu")
    for dec, n, final in ((decoders[0], 120, False), (decoders[1], 40, True), (decoders[0], 30, False)):
        tokens = torch.randint(0, 6561, (n,), generator=g)
        want = dec.flow_mel(tokens, finalize=final)
        with torch.inference_mode():
            spks, prompt_token, prompt_feat = dec.flow_inputs()
            token = torch.cat([prompt_token, tokens[None]], dim=1)
            n_valid = valid_frames(flow, token.shape[1], final)
            static.load(spks, prompt_feat, token, n_valid, dec.z)
            static.run()
        got = static.frames(prompt_feat.shape[1], n_valid)
        assert got.shape == want.shape and float((got - want).abs().max()) < 1e-4
    with pytest.raises(ValueError, match="do not fit a bucket of 320"):
        static.load(spks, prompt_feat, torch.zeros(1, 321, dtype=torch.long), 10, dec.z)
