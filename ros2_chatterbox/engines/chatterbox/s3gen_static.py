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

HiFT at static shapes (`StaticVocoder`): a window of mel frames padded to a bucket (`vocoder_buckets`). Measured on
the tiny checkpoint (CPU, float32, 2026-12-07; 60- and 250-token utterances streamed at 25/75/175 tokens):
zero-padding a streamed step's window on the right changes the audio only in the last ~4 frames before each join,
which the cross-fade covers (SNR 76.7-79.7 dB against today's decoder, max |difference| 2e-4); padding the final
step on the right reaches the utterance's last frames (36.8-42.8 dB). So a streamed step pads on the right, and the
final step is widened on the LEFT with earlier real frames of the same piece (more left context than the 4 frames
today's decoder gives it; the right edge is exact), its sine phase re-anchored at the window's old start; a final
window that cannot reach back far enough (a piece shorter than the first chunk) runs at its exact length.

What a CUDA graph cannot hold, upstream does in two places, both host syncs that change nothing here: the
estimator's chunk-mask check (`.item()` on "a row with no valid frame", which a length mask never has) and
torch.istft's window-envelope check. `sync_free` swaps both for sync-free equivalents while the static parts run
(`overlap_add_istft` equals torch.istft within float rounding).
"""
from __future__ import annotations

import contextlib
import functools
from typing import List, Sequence

from .s3gen_stream import SAMPLES_PER_FRAME, deterministic_cudnn, excitation, meanflow, sine_cycles

FLOW_BUCKET_TOKENS = 64     # flow buckets, in tokens (prompt + speech + silence): every 64 up to 512,
FLOW_COARSE = (512, 128)    # then every 128 (at most 127 padded tokens: < 20 % of a call that long)
VOCODER_BUCKET_FRAMES = 16  # vocoder windows, in mel frames: every 16 up to 128,
VOCODER_COARSE = (128, 64)  # then every 64


def _buckets(max_n: int, step: int, coarse) -> List[int]:
    if max_n <= 0 or step <= 0:
        raise ValueError(f"buckets need a size > 0 and a step > 0 (got {max_n}, {step})")
    out = [step]
    while out[-1] < max_n:
        out.append(out[-1] + (step if out[-1] < coarse[0] else coarse[1]))
    return out


def flow_buckets(max_tokens: int, step: int = FLOW_BUCKET_TOKENS) -> List[int]:
    """Token counts the flow is padded to, up to the first that holds `max_tokens` (the longest prompt plus the
    plan's speech cap and the 3 silence tokens)."""
    return _buckets(max_tokens, step, FLOW_COARSE)


def vocoder_buckets(max_frames: int) -> List[int]:
    """Mel-frame windows the vocoder is padded to, up to the first that holds `max_frames`."""
    return _buckets(max_frames, VOCODER_BUCKET_FRAMES, VOCODER_COARSE)


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

    def __init__(self, flow, bucket: int, steps: int, device, share: "StaticFlow" = None):
        """`share`: a StaticFlow of a bucket at least this large whose buffers this one views (one set of inputs
        for every bucket)."""
        import torch
        self.flow, self.bucket, self.steps = flow, int(bucket), int(steps)
        frames = self.bucket * flow.token_mel_ratio
        if share is not None and share.bucket < self.bucket:
            raise ValueError(f"a bucket of {self.bucket} cannot view the buffers of one of {share.bucket}")
        if share is None:
            share = self
            self.token = torch.zeros(1, self.bucket, dtype=torch.long, device=device)
            self.token_len = torch.zeros(1, dtype=torch.long, device=device)
            self.n_valid = torch.zeros(1, dtype=torch.long, device=device)      # mel frames handed on
            self.spks = torch.zeros(1, flow.output_size, device=device)
            self.cond = torch.zeros(1, flow.output_size, frames, device=device)  # the prompt's mel, zeros after it
            self.z = torch.zeros(1, flow.output_size, frames, device=device)     # the piece's noise here
            self.frame_index = torch.arange(frames, device=device)
        self.token, self.token_len, self.n_valid = share.token[:, :self.bucket], share.token_len, share.n_valid
        self.spks, self.cond, self.z = share.spks, share.cond[:, :, :frames], share.z[:, :, :frames]
        self.frame_index = share.frame_index[:frames]
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


def step_inputs(decoder, tokens, finalize: bool):
    """A decode step's flow inputs from `decoder` (a StreamDecoder): (projected speaker embedding, prompt mel,
    prompt + speech tokens (1, n), the valid frames)."""
    import torch
    spks, prompt_token, prompt_feat = decoder.flow_inputs()
    token = torch.cat([prompt_token, torch.atleast_2d(tokens).to(decoder.device).long()], dim=1)
    return spks, prompt_feat, token, valid_frames(decoder.s3gen.flow, int(token.shape[1]), finalize)


def padded_flow_mel(decoder, tokens, finalize: bool, pad_to: int):
    """`decoder.flow_mel(tokens, finalize)` computed by a StaticFlow of `pad_to` tokens (prompt + `tokens`, padded).
    Returns the same frames (1, 80, n) as flow_mel."""
    import torch
    with torch.inference_mode():
        spks, prompt_feat, token, n_valid = step_inputs(decoder, tokens, finalize)
        static = StaticFlow(decoder.s3gen.flow, pad_to, decoder.config.cfm_steps, decoder.device)
        static.load(spks, prompt_feat, token, n_valid, decoder.z)
        with sync_free(decoder.s3gen):
            static.run()
        return static.frames(prompt_feat.shape[1], n_valid)


class StaticVocoder:
    """HiFT for a window of `frames` mel frames on static buffers, as `StreamDecoder.vocode` computes it: `load`
    copies a window in (shorter windows zero-padded on the right), `run` is the captured part, `audio` and
    `phase_out` hold the result. The sine phase is anchored at sample `phase_ref` of the window (the phase before it
    is `phase0`; 0 = the window's start, as vocode), and `phase_out` is the phase after sample `phase_at`."""

    def __init__(self, hift, frames: int, device, share: "StaticVocoder" = None):
        import torch
        self.hift, self.frames = hift, int(frames)
        n = self.frames * SAMPLES_PER_FRAME
        if share is not None and share.frames < self.frames:
            raise ValueError(f"a window of {self.frames} frames cannot view the buffers of one of {share.frames}")
        if share is None:
            share = self
            h = hift.m_source.l_sin_gen.harmonic_num + 1
            self.mel = torch.zeros(1, hift.conv_pre.in_channels, self.frames, device=device)
            self.noise = torch.zeros(1, h, n, device=device)
            self.phase0 = torch.zeros(h, device=device)
            self.phase_vec = torch.zeros(1, h, 1, device=device)
            self.phase_ref = torch.zeros(1, dtype=torch.long, device=device)
            self.phase_at = torch.zeros(1, dtype=torch.long, device=device)
        self.mel, self.noise = share.mel[:, :, :self.frames], share.noise[:, :, :n]
        self.phase0, self.phase_vec, self.phase_ref, self.phase_at = (share.phase0, share.phase_vec,
                                                                      share.phase_ref, share.phase_at)
        self.audio = self.phase_out = None

    def load(self, mel, noise, phase0, phase_vec, phase_ref: int = 0, phase_at: int = 0) -> None:
        """A window: mel (1, 80, T <= frames), the noise of its `frames` x 480 samples, the phase before sample
        `phase_ref` (None = 0), the piece's start phases (1, H, 1), the sample whose phase to hand on."""
        t = mel.shape[-1]
        if t > self.frames or noise.shape[-1] != self.noise.shape[-1]:
            raise ValueError(f"a window of {t} frames ({noise.shape[-1]} noise samples) does not fit {self.frames}")
        self.mel.zero_()
        self.mel[:, :, :t] = mel
        self.noise.copy_(noise)
        if phase0 is None:
            self.phase0.zero_()
        else:
            self.phase0.copy_(phase0)
        self.phase_vec.copy_(phase_vec)
        self.phase_ref.fill_(int(phase_ref))
        self.phase_at.fill_(int(phase_at))

    def run(self):
        import torch.nn.functional as F
        hift = self.hift
        f0_up, cycles = sine_cycles(hift, self.mel)
        before = F.pad(cycles, (1, 0)).index_select(-1, self.phase_ref)  # the summed phase before phase_ref
        cycles = cycles + (self.phase0.view(1, -1, 1) - before)
        src = excitation(hift, cycles, f0_up, self.noise, self.phase_vec)
        with deterministic_cudnn():
            self.audio = hift.decode(x=self.mel, s=src)[0]
        self.phase_out = cycles[0].index_select(-1, self.phase_at).view(-1) % 1
        return self.audio


def overlap_add_istft(hift, magnitude, phase):
    """HiFT's _istft (torch.istft, centred, Hann window) without torch.istft's host sync: inverse real FFT per
    frame, windowed overlap-add, divided by the summed squared window, the centre padding cut."""
    import torch
    import torch.nn.functional as F
    n_fft, hop = hift.istft_params["n_fft"], hift.istft_params["hop_len"]
    window = hift.stft_window.to(magnitude.device)
    magnitude = torch.clip(magnitude, max=1e2)
    spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
    frames = torch.fft.irfft(spec, n=n_fft, dim=1) * window.view(1, -1, 1)          # (B, n_fft, T)
    n_frames = frames.shape[-1]
    length = n_fft + hop * (n_frames - 1)
    fold = functools.partial(F.fold, output_size=(1, length), kernel_size=(1, n_fft), stride=(1, hop))
    y = fold(frames).view(frames.shape[0], length)
    envelope = fold((window * window).view(1, -1, 1).expand(1, n_fft, n_frames)).view(length)
    cut = slice(n_fft // 2, length - n_fft // 2)
    return y[:, cut] / envelope[cut]


@contextlib.contextmanager
def sync_free(s3gen):
    """Upstream's two host syncs swapped out for the block (see the module doc); the model lock is held by the
    caller (the swap is process-wide for the estimator's mask check)."""
    import chatterbox.models.s3gen.decoder as estimator_module
    original = estimator_module.add_optional_chunk_mask

    def chunk_mask(xs, masks, use_dynamic_chunk, use_dynamic_left_chunk, decoding_chunk_size, static_chunk_size,
                   *rest, **kw):
        if use_dynamic_chunk or static_chunk_size > 0:
            return original(xs, masks, use_dynamic_chunk, use_dynamic_left_chunk, decoding_chunk_size,
                            static_chunk_size, *rest, **kw)
        return masks  # full attention: upstream returns the masks as given, after checking no row is empty
    hift = s3gen.mel2wav
    estimator_module.add_optional_chunk_mask = chunk_mask
    hift._istft = functools.partial(overlap_add_istft, hift)
    try:
        yield
    finally:
        estimator_module.add_optional_chunk_mask = original
        hift.__dict__.pop("_istft", None)
