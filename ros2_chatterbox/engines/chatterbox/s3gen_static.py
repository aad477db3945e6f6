"""S3Gen's flow at static shapes: the groundwork for capturing it as CUDA graphs ("First audio at the floor").

A CUDA graph replays fixed shapes, but each streamed decode runs the flow over a different number of tokens (the
voice's prompt plus the speech tokens so far, plus 3 silence tokens on the last step). So the tokens are padded to
a bucket (`flow_buckets`, `bucket_for`) and the padding is masked. Upstream's encoder does not mask between its
stages: its pre-lookahead convolution and its upsampling read the padded positions (after the embedding they are
not zero: the embedding adds a bias and positions), which changes the last real frames by up to ~10 (measured on the
tiny checkpoint). `masked_encode` runs the same submodules and zeroes the padding before each stage that looks
across positions. `StaticFlow` holds one bucket's static buffers (`load` copies a step's inputs in, the prompt's
length and the valid frames as masks; `run` is the part a CUDA graph would capture) and gives the frames
`StreamDecoder.flow_mel` gives, within float rounding (max |difference| ~2e-6 in float32 on the tiny checkpoint;
`test_s3gen_static.py`), whatever the padding and whatever voice or step was loaded before.

Not yet used by the decoder: capture and replay per bucket (in T3's memory pool), and HiFT at static shapes, come
with the GPU work of that issue. For HiFT, measured on the tiny checkpoint (CPU, float32, 2026-12-07; 60- and
250-token utterances streamed at 25/75/175 tokens): zero-padding each streamed step's vocoder window on the right to
a 16-frame bucket changes the audio only in the last ~4 frames before each join, which the cross-fade covers (SNR
76.7-79.7 dB against today's decoder, max |difference| 2e-4); padding the final step too reaches the utterance's last
frames (36.8-42.8 dB), so the final step keeps its exact length.
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


def valid_frames(flow, n_tokens: int, finalize: bool) -> int:
    """Mel frames of `n_tokens` flow tokens (prompt included) that a step hands on: all on the final step, else all
    but the pre-lookahead's, which still wait for their look-ahead (as flow_mel cuts them)."""
    return (n_tokens - (0 if finalize else flow.pre_lookahead_len)) * flow.token_mel_ratio


class StaticFlow:
    """The flow for one bucket of `bucket` tokens, on static buffers: `load` copies a step's inputs in (the prompt's
    length and the valid frames become masks, so one bucket serves every voice), `run` is the part a CUDA graph
    would capture (tensor ops only: no host sync, no shape that depends on the inputs), `frames` reads the result."""

    def __init__(self, flow, bucket: int, steps: int, device):
        import torch
        self.flow, self.bucket, self.steps = flow, int(bucket), int(steps)
        frames = self.bucket * flow.token_mel_ratio
        self.token = torch.zeros(1, self.bucket, dtype=torch.long, device=device)
        self.token_len = torch.zeros(1, dtype=torch.long, device=device)
        self.n_valid = torch.zeros(1, dtype=torch.long, device=device)      # mel frames handed on
        self.spks = torch.zeros(1, flow.output_size, device=device)
        self.cond = torch.zeros(1, flow.output_size, frames, device=device)  # the prompt's mel, zeros after it
        self.z = torch.zeros(1, flow.output_size, frames, device=device)     # the piece's noise at these positions
        self.frame_index = torch.arange(frames, device=device)
        self.out = None

    def load(self, spks, prompt_feat, token, n_valid: int, z) -> None:
        """One step's inputs: the projected speaker embedding (1, 80), the prompt's mel (1, 2P, 80), prompt + speech
        tokens (1, n), the frames to hand on, the piece's noise bank (1, 80, >= n frames; zeros past its end)."""
        n = token.shape[1]
        if n > self.bucket:
            raise ValueError(f"{n} flow tokens do not fit a bucket of {self.bucket}")
        self.token.zero_()
        self.token[:, :n] = token
        self.token_len.fill_(n)
        self.n_valid.fill_(n_valid)
        self.spks.copy_(spks)
        self.cond.zero_()
        self.cond[:, :, :prompt_feat.shape[1]] = prompt_feat.transpose(1, 2)
        self.z.zero_()
        k = min(self.z.shape[-1], z.shape[-1])
        self.z[:, :, :k] = z[:, :, :k]

    def run(self):
        """The captured part: token embedding, masked encoder, projection, meanflow steps -> self.out (1, 80, 2B)."""
        from .s3gen_stream import meanflow
        flow = self.flow
        mask = (self.frame_index[:self.bucket] < self.token_len).view(1, -1, 1).to(self.spks.dtype)
        x_in = flow.input_embedding(self.token) * mask
        h, _ = masked_encode(flow.encoder, x_in.to(flow.encoder_proj.weight.dtype), self.token_len)
        mel_mask = (self.frame_index < self.n_valid).view(1, 1, -1).to(h.dtype)
        h = flow.encoder_proj(h)
        mu = (h.transpose(1, 2) * mel_mask).contiguous()
        self.out = meanflow(flow.decoder.estimator, self.z, mel_mask, mu, self.spks, self.cond, self.steps)
        return self.out

    def frames(self, n_prompt: int, n_valid: int):
        return self.out.float()[:, :, n_prompt:n_valid]


def padded_flow_mel(decoder, tokens, finalize: bool, pad_to: int):
    """`decoder.flow_mel(tokens, finalize)` computed by a StaticFlow of `pad_to` tokens (prompt + `tokens`, padded).
    Returns the same frames (1, 80, n) as flow_mel."""
    import torch
    with torch.inference_mode():
        spks, prompt_token, prompt_feat = decoder.flow_inputs()
        token = torch.cat([prompt_token, torch.atleast_2d(tokens).to(decoder.device).long()], dim=1)
        flow = decoder.s3gen.flow
        n_valid = valid_frames(flow, token.shape[1], finalize)
        static = StaticFlow(flow, pad_to, decoder.config.cfm_steps, decoder.device)
        static.load(spks, prompt_feat, token, n_valid, decoder.z)
        static.run()
        return static.frames(prompt_feat.shape[1], n_valid)
