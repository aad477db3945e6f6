"""S3Gen's flow at static shapes: the groundwork for capturing it as CUDA graphs ("First audio at the floor").

A CUDA graph replays fixed shapes, but each streamed decode runs the flow over a different number of tokens (the
voice's prompt plus the speech tokens so far, plus 3 silence tokens on the last step). So the tokens are padded to
a bucket (`flow_buckets`, `bucket_for`) and the padding is masked. Upstream's encoder does not mask between its
stages: its pre-lookahead convolution and its upsampling read the padded positions (after the embedding they are
not zero: the embedding adds a bias and positions), which changes the last real frames by up to ~10 (measured on the
tiny checkpoint). `masked_encode` runs the same submodules and zeroes the padding before each stage that looks
across positions, and `padded_flow_mel` gives the frames `StreamDecoder.flow_mel` gives, within float rounding
(max |difference| ~2e-6 in float32 on the tiny checkpoint; `test_s3gen_static.py`), whatever the padding.

Not yet used by the decoder: capture and replay per bucket come with the GPU work of that issue (where the prompt's
length and the valid frames, slices here, become masks so that one graph serves every voice).
"""
from __future__ import annotations

import math
from typing import List, Sequence

FLOW_BUCKET_TOKENS = 64  # bucket step, in tokens (prompt + speech + silence): at most 63 padded tokens per call


def flow_buckets(max_tokens: int, step: int = FLOW_BUCKET_TOKENS) -> List[int]:
    """Token counts the flow is padded to, up to the first bucket that holds `max_tokens` (the longest prompt plus
    the plan's speech cap and the 3 silence tokens)."""
    if max_tokens <= 0 or step <= 0:
        raise ValueError(f"flow buckets need max_tokens > 0 and step > 0 (got {max_tokens}, {step})")
    return list(range(step, math.ceil(max_tokens / step) * step + 1, step))


def bucket_for(n_tokens: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `n_tokens` (ValueError past the largest: the plan did not allow it)."""
    for b in buckets:
        if b >= n_tokens:
            return b
    raise ValueError(f"{n_tokens} flow tokens exceed the largest bucket ({buckets[-1] if buckets else 0})")


def masked_encode(encoder, xs, xs_lens):
    """upstream UpsampleConformerEncoder.forward (full attention, static_chunk_size 0) on padded input, with the
    padding zeroed before the pre-lookahead convolution, the upsampling and the upsampled conformer, and on the
    output. Returns (B, 2T, D) and the upsampled mask (B, 1, 2T)."""
    from chatterbox.models.s3gen.utils.mask import make_pad_mask
    masks = ~make_pad_mask(xs_lens, xs.size(1)).unsqueeze(1)
    xs, pos_emb, masks = encoder.embed(xs, masks)
    keep = masks.transpose(1, 2).to(xs.dtype)
    xs = encoder.pre_lookahead_layer(xs * keep) * keep
    xs = encoder.forward_layers(xs, masks, pos_emb, masks) * keep
    xs, xs_lens = encoder.up_layer(xs.transpose(1, 2).contiguous(), xs_lens)
    xs = xs.transpose(1, 2).contiguous()
    masks = ~make_pad_mask(xs_lens, xs.size(1)).unsqueeze(1)
    xs, pos_emb, masks = encoder.up_embed(xs, masks)
    keep = masks.transpose(1, 2).to(xs.dtype)
    xs = encoder.forward_up_layers(xs * keep, masks, pos_emb, masks)
    if encoder.normalize_before:
        xs = encoder.after_norm(xs)
    return xs * keep, masks


def padded_flow_mel(decoder, tokens, finalize: bool, pad_to: int):
    """`decoder.flow_mel(tokens, finalize)` computed at the static length `pad_to` tokens (prompt + `tokens`,
    padded): every tensor the flow sees has a shape that depends on `pad_to` alone. Returns the same frames
    (1, 80, n) as flow_mel."""
    import torch
    import torch.nn.functional as F
    from chatterbox.models.s3gen.utils.mask import make_pad_mask

    from .s3gen_stream import meanflow
    flow = decoder.s3gen.flow
    with torch.inference_mode():
        emb, prompt_token, prompt_feat = decoder.flow_inputs()
        token = torch.cat([prompt_token, torch.atleast_2d(tokens).to(decoder.device).long()], dim=1)
        n = token.shape[1]
        if n > pad_to:
            raise ValueError(f"{n} flow tokens do not fit a bucket of {pad_to}")
        token_len = torch.tensor([n], device=decoder.device)
        mask = (~make_pad_mask(token_len, pad_to)).unsqueeze(-1).to(emb)
        x_in = flow.input_embedding(F.pad(token, (0, pad_to - n))) * mask
        h, _ = masked_encode(flow.encoder, x_in.to(flow.encoder_proj.weight.dtype), token_len)
        n_valid = (n - (0 if finalize else flow.pre_lookahead_len)) * flow.token_mel_ratio
        n_prompt, n_total = prompt_feat.shape[1], h.shape[1]
        h = flow.encoder_proj(h)
        cond = torch.zeros([1, n_total, flow.output_size], device=decoder.device, dtype=h.dtype)
        cond[:, :n_prompt] = prompt_feat
        mel_mask = torch.zeros(1, 1, n_total, device=decoder.device, dtype=h.dtype)
        mel_mask[..., :n_valid] = 1
        mu = (h.transpose(1, 2) * mel_mask).contiguous()
        z = decoder.z[:, :, :n_total]  # the piece's noise bank ends past the plan's longest piece; padding: zeros
        z = F.pad(z, (0, n_total - z.shape[-1]))
        x = meanflow(flow.decoder.estimator, z, mel_mask, mu, emb, cond.transpose(1, 2), decoder.config.cfm_steps)
        return x.float()[:, :, n_prompt:n_valid]
