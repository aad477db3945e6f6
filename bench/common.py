"""What the benchmarks share: the repository on sys.path, quiet and offline model libraries, the speech-token
constants (imported from the package, never redefined), stand-ins for packages a GPU machine may lack, the versions
of what ran, random full-size checkpoints, and the environment of each node-path configuration (bench_node.py).

The scripts in bench/ import this module as `common` (a script's folder is first on sys.path); they never import
each other (test/test_architecture.py checks that no import circle exists anywhere in the repository).
"""
from __future__ import annotations

import gc
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")       # upstream's per-token progress bar
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# the package's speech-token constants (none of these modules imports torch)
from ros2_chatterbox.engines.chatterbox.s3gen_stream import (  # noqa: E402
    FRAMES_PER_TOKEN, SAMPLE_RATE as SR, SAMPLES_PER_FRAME, SILENCE_TOKEN as SILENCE)
from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import STOP_SPEECH as STOP  # noqa: E402
from ros2_chatterbox.engines.chatterbox.tokens import SPEECH_VOCAB as S3_CODES  # noqa: E402

__all__ = ["REPO", "SR", "SILENCE", "STOP", "S3_CODES", "TOKENS_PER_S", "CONFIG_ENV", "install_stubs", "versions",
           "build_full_checkpoint", "process_device_mb"]

TOKENS_PER_S = SR // (SAMPLES_PER_FRAME * FRAMES_PER_TOKEN)  # 25 speech tokens per second of audio
# environment per node-path configuration (bench_node.py; set by the parent before that process starts)
CONFIG_ENV = {
    "fast": {},
    "jetson": {"CHATTERBOX_JETSON_PATCHES": "on", "HF_HOME": "/tmp/models", "PYTHONUNBUFFERED": "1"},
    "jetson-nocache": {"CHATTERBOX_JETSON_PATCHES": "on", "HF_HOME": "/tmp/models", "PYTHONUNBUFFERED": "1",
                       "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
}


def _identity_decorator(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


def install_stubs() -> List[str]:
    """Minimal stand-ins for packages the GPU machine lacks and the benchmark does not exercise."""
    stubbed = []
    try:
        import perth  # noqa: F401
    except Exception:
        class _NoWatermark:
            def apply_watermark(self, wav, sample_rate=None, **_):
                return wav

            def get_watermark(self, wav, sample_rate=None, **_):
                return 0.0
        perth = types.ModuleType("perth")
        perth.PerthImplicitWatermarker = _NoWatermark
        perth.DummyWatermarker = _NoWatermark
        sys.modules["perth"] = perth
        stubbed.append("perth (watermark is off in the benchmark anyway)")
    try:
        import numba  # noqa: F401
    except Exception:
        import numpy as np
        numba = types.ModuleType("numba")
        for name in ("jit", "njit", "vectorize", "guvectorize", "stencil", "generated_jit", "cfunc"):
            setattr(numba, name, _identity_decorator)
        numba.prange = range
        for t in ("uint8", "uint32", "int32", "int64", "float32", "float64", "complex64", "complex128", "boolean"):
            setattr(numba, t, getattr(np, t, object))
        numba.__version__ = "0.0-stub"
        sys.modules["numba"] = numba
        stubbed.append("numba (librosa imports it; mel filters, STFT, resampling do not use it)")
    return stubbed


def versions() -> Dict[str, Any]:
    import importlib.metadata as md
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("torch", "transformers", "chatterbox-tts", "numpy", "safetensors", "triton", "librosa",
                "diffusers"):
        try:
            out[pkg] = md.version(pkg)
        except Exception:
            out[pkg] = None
    import torch
    out["torch_cuda"] = torch.version.cuda
    out["cpu_threads"] = torch.get_num_threads()
    try:
        out["loadavg"] = os.getloadavg()
    except OSError:
        pass
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = p.name
        out["gpu_mem_gib"] = round(p.total_memory / 2**30, 1)
        out["gpu_sms"] = p.multi_processor_count
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            out["nvidia_smi"] = q.stdout.strip()
        except Exception:
            pass
        out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    try:
        out["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip() or None
    except Exception:
        pass
    return out


def build_full_checkpoint(folder: Path, seed: int = 0, model: str = "turbo") -> Dict[str, Any]:
    """Random-init real Turbo (or Nano) modules, saved in the hub snapshot's layout (no conds.pt: the voice is
    conditioned)."""
    import torch
    from chatterbox.models.s3gen import S3Gen
    from chatterbox.models.voice_encoder import VoiceEncoder
    from safetensors.torch import save_file
    from ros2_chatterbox.engines.chatterbox import models, tiny_checkpoint as tiny_turbo

    spec = models.model_spec(model)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    params = {}
    for name, make in (("ve.safetensors", VoiceEncoder), (spec.t3_file, lambda: models.build_t3(spec)),
                       ("s3gen_meanflow.safetensors", lambda: S3Gen(meanflow=True))):
        module = make()
        params[name] = int(sum(p.numel() for p in module.parameters()))
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(folder / name))
        del module
        gc.collect()
    tiny_turbo.write_tokenizer(folder)
    (folder / "conds.pt").unlink(missing_ok=True)
    return {"seconds": round(time.perf_counter() - t0, 2), "params": params}


def process_device_mb():
    """Device memory nvidia-smi counts for this process (context included), or None."""
    try:
        q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=20).stdout
    except Exception:
        return None
    for line in q.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            return float(parts[1])  # MiB, as every *_mb figure here
    return None
