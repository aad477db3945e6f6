"""S3Gen's flow in half precision: which parts stay float32 and why, the cast at load, and the tolerance check.

The flow (conformer encoder + meanflow decoder, 114.7 M parameters) is cast to float16 at load when the parameter
`s3gen_dtype` says so (`auto`: on CUDA when T3 runs in float16). CosyVoice, where S3Gen comes from, runs its flow in
float16 the same way. A few of its parts stay float32 (`FLOW_FP32`, each with its reason); the boundary casts live in
`StreamDecoder.flow_mel` (s3gen_stream.py): the token embedding's output is cast to the encoder's dtype, the
estimator's inputs to the estimator's, and the mel comes back as float32.

HiFT (the vocoder, 20.8 M parameters, 79 MiB in float32) stays float32. `.half()` alone fails: its STFT window is a
plain float32 attribute and the engine builds its sine source in float32 (a float16 phase sum would drift within a
fraction of a second). With casts around the STFT, iSTFT and f0 predictor (bench/s3gen_precision.py --hift-half) it
measured SNR 57 dB and log-mel L1 0.005 against float32 on random full-size weights, for 40 MiB saved; those casts
would have to live in StreamDecoder.vocode, so it is not done. The S3 tokenizer, the speaker encoder (CAMPPlus) and
the voice encoder stay float32 too: they only turn a reference recording into a voice's conditioning.

`compare()` is the tolerance check, shared by test/test_s3gen_precision.py (tiny checkpoint, CPU) and
bench/s3gen_precision.py (full size, GPU): the same speech tokens, the same voice conditioning and the same noise
through a float32 model and a half model, through the engine's own decoder; it reports the waveform SNR and the
log-mel L1 distance (flow output, and the mel of the final audio). `TOLERANCE` is what a half model must meet.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

S3GEN_DTYPES = ("auto", "float32", "float16")

# Parts of `s3gen.flow` that stay float32 (path under the flow, why). Everything else of the flow is cast.
FLOW_FP32: Tuple[Tuple[str, str], ...] = (
    ("input_embedding", "S3Gen.dtype is the dtype of the flow's first parameter (this table): upstream's embed_ref "
                        "casts a reference recording to it, and its mel extractor and CAMPPlus need float32; a "
                        "table lookup is exact in either dtype (3.4 M parameters, 6.4 MiB more than in float16)"),
    ("spk_embed_affine_layer", "the speaker x-vector is normalised and projected in float32, so the whole voice "
                               "conditioning stays float32 up to the estimator's input (15 k parameters)"),
)

# Positional-encoding tables the encoder keeps as plain attributes (not buffers, so Module.to() does not cast them);
# upstream re-casts them to the input's dtype on the first call, i.e. allocates then. Cast at load instead.
_PE_HOLDERS = ("encoder.embed.pos_enc", "encoder.up_embed.pos_enc")


@dataclass(frozen=True)
class Tolerance:
    """What a half-precision S3Gen must meet against float32 on the same input (see compare()).

    The limits come from hearing, not from the measurement: a mean log-mel difference of 0.05 (natural log of the
    magnitude) is 0.43 dB, under the ~1 dB a listener can tell apart in loudness; an error 30 dB below the signal is
    masked by it. Measured (H200, torch 2.11, random full-size weights, 3 voices x 25/100/300 tokens,
    bench/results/gpu-h200-2026-12-03-s3gen-precision): SNR >= 71.2 dB, log-mel L1 <= 0.00084, flow log-mel L1 <=
    0.0016: 40-60x inside every limit. Random weights are not the trained ones: trained activations can be larger,
    and a small f0 difference shifts HiFT's sine phase over a long utterance (SNR falls, the mel does not), so the
    mel limits are the ones that speak for the ear; run the bench on the real checkpoint (--ckpt) where it exists.
    """
    snr_db: float = 30.0          # waveform SNR, dB: the difference at least 30 dB (1000x in power) below the signal
    mel_l1: float = 0.05          # mean |log-mel difference| of the final audio (S3Gen's mel, ln magnitude): 0.43 dB
    flow_mel_l1: float = 0.05     # the same on the flow's output mel, before the vocoder

    def check(self, result: Dict[str, Any]) -> Sequence[str]:
        """The limits `result` (from compare) misses, as sentences; empty when it meets all."""
        missed = []
        if not result["snr_db"] >= self.snr_db:
            missed.append(f"waveform SNR {result['snr_db']:.1f} dB < {self.snr_db:g} dB")
        if not result["mel_l1"] <= self.mel_l1:
            missed.append(f"log-mel L1 {result['mel_l1']:.4f} > {self.mel_l1:g}")
        if not result["flow_mel_l1"] <= self.flow_mel_l1:
            missed.append(f"flow log-mel L1 {result['flow_mel_l1']:.4f} > {self.flow_mel_l1:g}")
        return missed


TOLERANCE = Tolerance()


# ----------------------------------------------------------------------------------------------------- the setting
def resolve_s3gen_dtype(spec: str, device: str, t3_dtype: Any):
    """'auto' (float16 on CUDA when T3 is float16, else float32), 'float32' or 'float16' -> the flow's torch dtype."""
    import torch
    s = (spec or "auto").strip().lower()
    if s == "auto":
        return torch.float16 if device.startswith("cuda") and t3_dtype == torch.float16 else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if s not in table:
        from ...engine import EngineLoadError
        raise EngineLoadError(f"s3gen_dtype '{spec}' is not valid: use {', '.join(S3GEN_DTYPES)}")
    return table[s]


def _submodule(root, path: str):
    for name in path.split("."):
        root = getattr(root, name)
    return root


def cast_flow(s3gen, dtype, keep: Sequence[str] = tuple(p for p, _ in FLOW_FP32)) -> None:
    """Cast S3Gen's flow to `dtype` in place, except the submodules named in `keep` (float32), and its positional
    tables. Call outside inference_mode (parameters made there could never be updated). HiFT, the S3 tokenizer and
    the speaker encoder are not touched."""
    import torch
    flow = s3gen.flow
    kept = [_submodule(flow, p) for p in keep]
    with torch.no_grad():
        flow.to(dtype=dtype)
        for module in kept:
            module.to(dtype=torch.float32)
        for path in _PE_HOLDERS:
            holder = _submodule(flow, path)
            if getattr(holder, "pe", None) is not None:
                holder.pe = holder.pe.to(dtype=dtype)
    if dtype != torch.float32 and s3gen.dtype != torch.float32:  # embed_ref reads it (see FLOW_FP32)
        raise RuntimeError(f"S3Gen.dtype became {s3gen.dtype}: the flow's first parameter must stay float32")


def flow_dtype(s3gen):
    """The dtype the flow computes in (its encoder's; float32 when not cast)."""
    return next(s3gen.flow.encoder.parameters()).dtype


# --------------------------------------------------------------------------------------------------- the measures
def waveform_snr_db(ref, test) -> float:
    """10 log10(|ref|^2 / |ref - test|^2) over the common length (inf when equal)."""
    import numpy as np
    n = min(len(ref), len(test))
    ref, test = np.asarray(ref[:n], np.float64), np.asarray(test[:n], np.float64)
    err = float(np.sum((ref - test) ** 2))
    sig = float(np.sum(ref ** 2))
    if err == 0.0:
        return math.inf
    return 10.0 * math.log10(max(sig, 1e-30) / err)


def log_mel(audio, sample_rate: int = 24_000):
    """S3Gen's own log-mel (chatterbox.models.s3gen.utils.mel: 80 bins, natural log of magnitude) of float32 audio,
    as a (80, frames) float64 array."""
    import numpy as np
    import torch
    from chatterbox.models.s3gen.utils.mel import mel_spectrogram
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
    return mel_spectrogram(x, sampling_rate=sample_rate)[0].double().numpy()


def log_mel_l1(ref, test) -> float:
    """Mean absolute difference of two log-mel arrays (80, frames) over their common frames."""
    import numpy as np
    n = min(ref.shape[-1], test.shape[-1])
    return float(np.mean(np.abs(np.asarray(ref)[..., :n] - np.asarray(test)[..., :n])))


# --------------------------------------------------------------------------------------------------- the comparison
def decode(model, ref: Dict[str, Any], tokens, seed: int, config=None) -> Dict[str, Any]:
    """One piece through the engine's decoder in a single final step, without watermark: {"mel" (flow output,
    float32 numpy, (80, frames)), "audio" (float32 numpy), "seconds"}."""
    import threading
    import torch
    from .s3gen_stream import DecoderConfig, StreamDecoder
    device = model.s3gen.device
    dec = StreamDecoder(model, ref, seed, watermark=False, lock=threading.Lock(), config=config or DecoderConfig())
    tokens = torch.as_tensor(tokens).to(device).long().reshape(-1)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    mels = []
    flow_mel = dec.flow_mel

    def keep_mel(*args, **kwargs):  # the flow's output inside step(), kept for the comparison
        mels.append(flow_mel(*args, **kwargs))
        return mels[-1]

    dec.flow_mel = keep_mel
    sync()
    t0 = time.perf_counter()
    audio = dec.step(tokens, final=True)
    sync()
    seconds = time.perf_counter() - t0
    return {"mel": mels[-1][0].float().cpu().numpy(), "audio": audio, "seconds": seconds}


def compare(model_fp32, model_half, ref: Dict[str, Any], tokens, seed: int = 1,
            tolerance: Optional[Tolerance] = TOLERANCE, config=None) -> Dict[str, Any]:
    """The same tokens, voice conditioning `ref` (as embed_ref returns it, float32) and noise seed through both
    models' S3Gen (flow + HiFT, the engine's StreamDecoder): waveform SNR (dB), log-mel L1 of the final audio
    (`mel_l1`) and of the flow's output (`flow_mel_l1`), the largest flow mel difference, the lengths, both decode
    times, the half model's flow dtype, and against `tolerance` `ok` / `missed`."""
    import numpy as np
    a = decode(model_fp32, ref, tokens, seed, config)
    b = decode(model_half, ref, tokens, seed, config)
    n = min(a["mel"].shape[-1], b["mel"].shape[-1])
    flow_diff = np.abs(a["mel"][:, :n].astype(np.float64) - b["mel"][:, :n])
    out: Dict[str, Any] = {
        "tokens": int(np.asarray(tokens).size),
        "audio_s": round(len(a["audio"]) / 24_000, 3),
        "same_length": len(a["audio"]) == len(b["audio"]),
        "snr_db": round(waveform_snr_db(a["audio"], b["audio"]), 2),
        "mel_l1": round(log_mel_l1(log_mel(a["audio"]), log_mel(b["audio"])), 5),
        "flow_mel_l1": round(float(flow_diff.mean()), 5),
        "flow_mel_max_abs": round(float(flow_diff.max()), 4),
        "finite": bool(np.isfinite(b["audio"]).all() and np.isfinite(b["mel"]).all()),
        "rms_fp32": round(float(np.sqrt(np.mean(np.square(a["audio"], dtype=np.float64)))), 5),
        "decode_s_fp32": round(a["seconds"], 4),
        "decode_s_half": round(b["seconds"], 4),
        "half_dtype": str(flow_dtype(model_half.s3gen)).replace("torch.", ""),
    }
    if not out["finite"]:
        out["snr_db"], out["mel_l1"] = -math.inf, math.inf
    if tolerance is not None:
        missed = list(tolerance.check(out)) + ([] if out["same_length"] else ["audio lengths differ"])
        out["ok"], out["missed"] = not missed, missed
    return out


def tolerance_dict(tolerance: Tolerance = TOLERANCE) -> Dict[str, float]:
    return asdict(tolerance)
