"""S3Gen streaming: speech tokens -> 24 kHz audio, incrementally, with seamless joins.

Each decode re-runs the flow (conformer encoder + meanflow steps) over all tokens so far (its attention is not causal)
with the same noise at the same positions, keeps the mel frames that have all their look-ahead, vocodes them with a
few frames of left context and a sine excitation whose phase continues from the previous chunk, and cross-fades a
held-back tail of `DecoderConfig.crossfade_frames` frames with the next chunk. The Perth watermark is applied the same
way (left context, held-back tail, cross-fade), so consecutive parts join without clicks and without dropping or
repeating samples. S3Gen noise comes from generators seeded with the request's seed and the absolute position. On CUDA the
vocoder runs with deterministic cuDNN: its transposed convolutions otherwise differ run to run.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, ContextManager, Dict, Optional

import numpy as np

from .tokens import MAX_SPEECH_TOKENS, mix_seed

SAMPLE_RATE = 24_000          # S3GEN_SR
SAMPLES_PER_FRAME = 480       # one mel frame (50 Hz) of 24 kHz audio; HiFT upsamples 8*5*3*4
FRAMES_PER_TOKEN = 2          # 25 speech tokens per second
SILENCE_TOKEN = 4299          # chatterbox.models.s3gen.const.S3GEN_SIL


@dataclass(frozen=True)
class DecoderConfig:
    """The streaming decoder's constants, and the longest piece it must hold noise for."""
    crossfade_frames: int = 8      # vocoder overlap between chunks (160 ms), as CosyVoice's streaming HiFT cache
    context_frames: int = 4        # extra mel frames of left context for the vocoder's convolutions
    noise_block_frames: int = 50   # vocoder noise is drawn in blocks seeded by absolute position
    cfm_steps: int = 2             # upstream generate() uses n_cfm_timesteps=2 with the meanflow decoder
    speech_cap: int = MAX_SPEECH_TOKENS  # the engine's speech_tokens.max


def deterministic_cudnn():
    """cuDNN flags with deterministic=True (the others unchanged) for the block: same seed, same audio on CUDA."""
    import torch
    cudnn = torch.backends.cudnn
    if cudnn.deterministic or not torch.cuda.is_available():
        return contextlib.nullcontext()
    import inspect
    current = {}
    for name in inspect.signature(cudnn.flags).parameters:  # keep every other flag as it is (they vary by version)
        try:
            current[name] = getattr(cudnn, name)
        except Exception:  # noqa: BLE001 - a flag without a readable attribute keeps its default
            pass
    current["deterministic"] = True
    return cudnn.flags(**current)


def crossfade(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """new[:len(old)] blended from `old` into `new` with complementary raised-cosine weights (sum 1)."""
    n = min(len(old), len(new))
    if n <= 0:
        return new
    fade_in = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
    out = new.copy()
    out[:n] = old[:n] * (1.0 - fade_in) + new[:n] * fade_in
    return out


class WatermarkStream:
    """Applies a whole-signal watermarker to audio that arrives in parts, without seams.

    Each call watermarks the not yet emitted audio plus `left` samples of context before it and everything after
    it, emits all but the last `hold` samples, and cross-fades the start of what it emits with the version of the
    same samples that the previous call computed (then at the right edge of its window).
    """

    def __init__(self, apply, sample_rate: int, left_s: float = 0.25, hold_s: float = 0.1, fade_s: float = 0.01):
        self.apply = apply
        self.left = int(left_s * sample_rate)
        self.hold = int(hold_s * sample_rate)
        self.fade = int(fade_s * sample_rate)
        self.min_window = int(0.2 * sample_rate)  # Perth's STFT (2048 points at 32 kHz) needs some length
        self.buf = np.zeros(0, dtype=np.float32)   # raw audio from absolute sample `offset` on
        self.offset = 0
        self.done = 0                              # absolute samples emitted
        self.prev = np.zeros(0, dtype=np.float32)  # previous call's watermarked version of samples [done, ...)

    def _watermark(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        padded = np.concatenate([x, np.zeros(self.min_window - n, dtype=np.float32)]) if n < self.min_window else x
        y = np.asarray(self.apply(padded), dtype=np.float32).reshape(-1)
        if len(y) < n:  # resampling 24 -> 32 -> 24 kHz may lose a sample
            y = np.concatenate([y, padded[len(y):n]])
        return y[:n]

    def push(self, samples: np.ndarray, final: bool) -> np.ndarray:
        self.buf = np.concatenate([self.buf, samples.astype(np.float32, copy=False)])
        total = self.offset + len(self.buf)
        end = total if final else total - self.hold
        if end <= self.done or (not final and end - self.done < self.fade):
            return np.zeros(0, dtype=np.float32)
        start = max(self.offset, self.done - self.left)
        out = self._watermark(self.buf[start - self.offset:])
        seg = out[self.done - start:end - start]
        if self.prev.size:
            seg = crossfade(self.prev[:self.fade], seg)
        self.prev = out[end - start:]
        self.done = end
        keep_from = max(self.offset, self.done - self.left)
        self.buf = self.buf[keep_from - self.offset:]
        self.offset = keep_from
        return seg



def meanflow(est, x, mel_mask, mu, spks, cond, steps: int):
    """S3Gen's meanflow decoder: `steps` Euler steps of the estimator from noise `x` (B, 80, T), in its dtype."""
    import torch
    dtype = est.dtype
    x, mu, mel_mask, spks, cond = (t.to(dtype) for t in (x, mu, mel_mask, spks, cond))
    t_span = torch.linspace(0, 1, steps + 1, device=x.device, dtype=dtype)
    for t, r in zip(t_span[:-1], t_span[1:]):
        t, r = t[None], r[None]
        x = x + (r - t) * est.forward(x, mask=mel_mask, mu=mu, t=t, spks=spks, cond=cond, r=r)
    return x


def place_stft_window(hift, device) -> None:
    """Upstream keeps HiFT's STFT window as a plain CPU attribute and copies it to the device in every STFT and
    iSTFT (a host-to-device copy per call, which a CUDA graph cannot hold): keep it on the device instead."""
    window = getattr(hift, "stft_window", None)
    if window is not None and window.device != device:
        hift.stft_window = window.to(device)


def sine_cycles(hift, mel):
    """HiFT's f0 for mel (1, 80, T), upsampled to samples (1, 1, T*480), and each harmonic's phase in cycles summed
    from the window's first sample (1, H, T*480): upstream's SineGen before its random start phase."""
    import torch
    sine = hift.m_source.l_sin_gen
    f0_up = hift.f0_upsamp(hift.f0_predictor(mel)[:, None])
    harmonics = torch.arange(1, sine.harmonic_num + 2, device=mel.device, dtype=torch.float32)
    return f0_up, torch.cumsum(f0_up * harmonics.view(1, -1, 1) / sine.sampling_rate, dim=-1)


def excitation(hift, cycles, f0_up, noise, phase_vec):
    """HiFT's source signal (1, 1, samples) from the phase in cycles, the piece's start phases and its noise:
    upstream's SineGen + SourceModuleHnNSF with the noise and the phases given instead of drawn."""
    import torch
    src_mod = hift.m_source
    sine = src_mod.l_sin_gen
    theta = 2 * np.pi * (cycles % 1)
    waves = sine.sine_amp * torch.sin(theta + phase_vec)
    uv = (f0_up > sine.voiced_threshold).float()
    noise_amp = uv * sine.noise_std + (1 - uv) * sine.sine_amp / 3
    waves = waves * uv + noise_amp * noise
    return src_mod.l_tanh(src_mod.l_linear(waves.transpose(1, 2))).transpose(1, 2)


class StreamDecoder:
    """Speech tokens -> 24 kHz audio, incrementally, with seamless joins (see the module docstring). `lock` is held
    around the model work (the engine's: one model, several threads)."""

    def __init__(self, model, ref: Dict[str, Any], seed: int, watermark: bool, lock: ContextManager,
                 config: DecoderConfig = DecoderConfig(), graphs=None):
        import torch
        self.lock = lock
        self.graphs = graphs                  # s3gen_graphs.S3GenGraphs: the flow and HiFT at static shapes, or None
        self._inputs = None                   # flow_inputs(), computed once
        self.config = config
        self.model = model
        self.s3gen = model.s3gen
        self.device = self.s3gen.device
        place_stft_window(self.s3gen.mel2wav, self.device)
        self.ref = ref
        self.seed = seed
        flow = self.s3gen.flow
        self.prompt_frames = int(ref["prompt_feat"].shape[1])
        cap = int(config.speech_cap)
        bank_frames = self.prompt_frames + FRAMES_PER_TOKEN * (max(cap, MAX_SPEECH_TOKENS) + 3 + 2)
        g = torch.Generator(device=self.device).manual_seed(mix_seed(seed, 2))
        # the flow's starting noise, one value per absolute frame position, fixed for the whole piece
        self.z = torch.randn(1, flow.output_size, bank_frames, generator=g, device=self.device,
                             dtype=torch.float32)
        sine = self.s3gen.mel2wav.m_source.l_sin_gen
        phase = (torch.rand(1, sine.harmonic_num + 1, 1, generator=g, device=self.device) * 2 - 1) * math.pi
        phase[:, 0, :] = 0
        self.phase_vec = phase
        self.trim_fade = self.s3gen.trim_fade.detach().float().cpu().numpy()
        self.emitted = 0                      # frames whose audio has been handed out
        self.tail = np.zeros(0, np.float32)  # audio of frames [emitted, tail_end) from the previous step
        self.src_phase: Optional[Any] = None  # sine phase (cycles) at the start of the next vocoder window
        self.src_phase_frame = 0
        self.wm = WatermarkStream(self._watermark, SAMPLE_RATE) if watermark else None
        self.finished = False

    def _watermark(self, x: np.ndarray) -> np.ndarray:
        import torch
        # Perth runs its network with autograd on: outside inference_mode every call leaks ~6 MB of host RAM
        with torch.inference_mode():
            return self.model.watermarker.apply_watermark(x, sample_rate=SAMPLE_RATE)

    def flow_inputs(self):
        """The voice's side of the flow: (speaker embedding through the flow's projection, prompt tokens (1, P),
        prompt mel (1, 2P, 80)) on the decoder's device."""
        import torch
        import torch.nn.functional as F
        if self._inputs is None:
            ref = self.ref
            emb = F.normalize(torch.atleast_2d(ref["embedding"]).to(self.device, torch.float32), dim=1)
            self._inputs = (self.s3gen.flow.spk_embed_affine_layer(emb),
                            torch.atleast_2d(ref["prompt_token"]).to(self.device).long(),
                            torch.atleast_3d(ref["prompt_feat"]).to(self.device, torch.float32))
        return self._inputs

    # the two model stages, usable on their own (tests compare them with upstream)
    def flow_mel(self, tokens, finalize: bool, z=None):
        """S3Gen's CausalMaskedDiffWithXvec.inference + meanflow Euler steps, for B=1 and this piece's noise."""
        import torch
        from chatterbox.models.s3gen.utils.mask import make_pad_mask
        flow = self.s3gen.flow
        with torch.inference_mode():
            emb, prompt_token, prompt_feat = self.flow_inputs()
            tokens = torch.atleast_2d(tokens).to(self.device).long()
            token = torch.cat([prompt_token, tokens], dim=1)
            token_len = torch.tensor([token.shape[1]], device=self.device)
            mask = (~make_pad_mask(token_len)).unsqueeze(-1).to(emb)
            x_in = flow.input_embedding(token) * mask  # float32 table (s3gen_precision.FLOW_FP32); encoder may be half
            h, _ = flow.encoder(x_in.to(flow.encoder_proj.weight.dtype), token_len)
            if not finalize:
                h = h[:, :-flow.pre_lookahead_len * flow.token_mel_ratio]
            n_prompt = prompt_feat.shape[1]
            n_total = h.shape[1]
            h = flow.encoder_proj(h)
            cond = torch.zeros([1, n_total, flow.output_size], device=self.device, dtype=h.dtype)
            cond[:, :n_prompt] = prompt_feat
            cond = cond.transpose(1, 2)
            mel_mask = torch.ones(1, 1, n_total, device=self.device, dtype=h.dtype)
            x = (self.z if z is None else z)[:, :, :n_total]
            mu = h.transpose(1, 2).contiguous()
            x = meanflow(flow.decoder.estimator, x, mel_mask, mu, emb, cond, self.config.cfm_steps)
            return x.float()[:, :, n_prompt:]

    def vocode(self, mel, start_frame: int, phase0=None, phase_at_frame: Optional[int] = None,
               noise=None):
        """HiFT inference for mel frames [start_frame, start_frame + T) with a sine excitation whose phase starts
        at `phase0` (cycles per harmonic; None = 0 as upstream). Returns (audio, phase at `phase_at_frame`)."""
        import torch
        hift = self.s3gen.mel2wav
        with torch.inference_mode():
            mel = mel.to(self.device, torch.float32)
            f0_up, cycles = sine_cycles(hift, mel)
            if phase0 is not None:
                cycles = cycles + phase0.view(1, -1, 1)
            if noise is None:
                noise = self._noise(start_frame, cycles.shape[-1])
            src = excitation(hift, cycles, f0_up, noise, self.phase_vec)
            with deterministic_cudnn():  # HiFT's transposed convolutions vary run to run on CUDA otherwise
                audio = hift.decode(x=mel, s=src)
            phase_out = None
            if phase_at_frame is not None:
                idx = (phase_at_frame - start_frame) * SAMPLES_PER_FRAME
                phase_out = cycles[0, :, idx - 1] % 1 if idx > 0 else (phase0 if phase0 is not None else None)
            return audio[0].float().cpu().numpy(), phase_out

    def _flow(self, tokens, final: bool):
        """flow_mel, replayed at the bucket's static shapes when graphs hold one for this length."""
        mel = self.graphs.flow_mel(self, tokens, final) if self.graphs is not None else None
        return self.flow_mel(tokens, finalize=final) if mel is None else mel

    def _vocode(self, mel, start: int, phase0, phase_at_frame: Optional[int], final: bool):
        """vocode of mel frames [start, end), at a static window when graphs hold one for it."""
        out = (self.graphs.vocode(self, mel, start, phase0, phase_at_frame, final) if self.graphs is not None
               else None)
        return self.vocode(mel[:, :, start:], start, phase0=phase0, phase_at_frame=phase_at_frame) if out is None \
            else out

    def _noise(self, start_frame: int, n_samples: int):
        """Vocoder noise for samples from `start_frame` on, identical for an absolute position in every step."""
        import torch
        sine = self.s3gen.mel2wav.m_source.l_sin_gen
        harmonics = sine.harmonic_num + 1
        block = self.config.noise_block_frames
        first = start_frame // block
        last = (start_frame * SAMPLES_PER_FRAME + n_samples - 1) // (block * SAMPLES_PER_FRAME)
        parts = []
        for b in range(first, last + 1):
            g = torch.Generator(device=self.device).manual_seed(mix_seed(self.seed, 3, b))
            parts.append(torch.randn(1, harmonics, block * SAMPLES_PER_FRAME, generator=g, device=self.device))
        noise = torch.cat(parts, dim=-1)
        off = (start_frame - first * block) * SAMPLES_PER_FRAME
        return noise[:, :, off:off + n_samples]

    def step(self, tokens, final: bool) -> np.ndarray:
        """Decode the tokens so far; returns the audio that is ready (everything when final)."""
        import torch
        if self.finished:
            return np.zeros(0, np.float32)
        overlap, context = self.config.crossfade_frames, self.config.context_frames
        n = int(tokens.shape[-1])
        if not final and n <= self.s3gen.flow.pre_lookahead_len + overlap // FRAMES_PER_TOKEN:
            return np.zeros(0, np.float32)
        if final:
            silence = torch.full((3,), SILENCE_TOKEN, dtype=torch.long, device=tokens.device)
            tokens = torch.cat([tokens.long(), silence])
        with self.lock:
            mel = self._flow(tokens, final)
            frames = int(mel.shape[-1])
            keep = frames if final else frames - overlap  # frames handed out after this step
            if keep <= self.emitted:
                return np.zeros(0, np.float32)
            start = max(0, self.emitted - context)
            phase0 = self.src_phase if (self.src_phase is not None and self.src_phase_frame == start) else None
            next_start = max(0, keep - context)
            audio, phase_next = self._vocode(mel, start, phase0, None if final else next_start, final)
        audio = audio[(self.emitted - start) * SAMPLES_PER_FRAME:]  # from frame `emitted` on
        # upstream silences the first 20 ms and fades in over the next 20 ms ("spillover" from the reference)
        abs0 = self.emitted * SAMPLES_PER_FRAME
        if abs0 < len(self.trim_fade):
            k = min(len(self.trim_fade) - abs0, len(audio))
            audio = audio.copy()
            audio[:k] *= self.trim_fade[abs0:abs0 + k]
        if self.tail.size:
            audio = crossfade(self.tail, audio)
        cut = (keep - self.emitted) * SAMPLES_PER_FRAME
        out, self.tail = audio[:cut], audio[cut:]
        self.emitted = keep
        self.src_phase, self.src_phase_frame = phase_next, next_start
        if final:
            self.finished = True
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self.wm is not None:
            out = self.wm.push(out, final)
        return out
