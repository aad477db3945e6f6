"""The doctor's look at the CUDA stack: the troubleshooting table (`diagnose`: cause and fix for an error), the CUDA
libraries this process loaded (native, SBSA, or native mounted over SBSA: `library_report`), and tiny cuBLAS, cuDNN,
cuFFT and CUDA-graph calls compared with the CPU (`gpu_checks`). Pure helpers are unit-tested without torch.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Set, Tuple

# Library families that NVIDIA's generic ARM (SBSA) images carry and that fail on Orin.
_CUDA_LIB_RE = re.compile(
    r"/(lib(?:cublasLt|cublas|cufftw|cufft|cudnn(?:_[a-z_]+)?|cudart|nvrtc|nvJitLink|cusparse(?:Lt)?|cusolver|"
    r"curand|nccl|cuda)\.so[.\d]*)$")

# (pattern in the error text, cause, fix): the troubleshooting table. First match wins.
TROUBLESHOOTING: List[Tuple[str, str, str]] = [
    ("CUBLAS_STATUS_ALLOC_FAILED",
     "the SBSA (server ARM) cuBLAS from the image runs on an Orin",
     "start the container with docker/start-gpu.sh: it mounts the host's native libcublas and libcublasLt over "
     "the image's SBSA copies"),
    ("CUBLAS_STATUS_NOT_INITIALIZED",
     "cuBLAS could not initialise: an SBSA cuBLAS on Jetson, or no GPU memory left",
     "mount the native cuBLAS with docker/start-gpu.sh; if it persists, free GPU memory (see out of memory)"),
    ("unable to find an engine",
     "the SBSA cuDNN from the image runs on an Orin",
     "start the container with docker/start-gpu.sh: it mounts the host's native cuDNN libraries (libcudnn and "
     "every libcudnn_* sub-library) over the image's"),
    ("CUFFT_INTERNAL_ERROR",
     "an SBSA cuFFT, or a transform size that Orin's cuFFT rejects (not a power of two)",
     "mount the native cuFFT with docker/start-gpu.sh and enable the Jetson patches (parameter jetson_patches: "
     "on, or CHATTERBOX_JETSON_PATCHES=on): they compute those FFT sizes on the CPU"),
    ("out of memory",
     "the GPU (on Jetson: the shared system memory) has no room, or it is fragmented",
     "start this node before other GPU services (docker/ros2-chatterbox.service or compose depends_on), use "
     "dtype float16, and close desktop/browser processes (the engine takes its working memory at configure)"),
    ("NvMapMemAllocInternalTagged",
     "the Jetson memory allocator could not find room (unified memory exhausted or fragmented)",
     "start this node before other GPU services, use dtype float16, close desktop/browser processes"),
    ("PYTORCH_NO_CUDA_MEMORY_CACHING",
     "PyTorch's caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING is set, to any value): CUDA graphs cannot "
     "be captured, so the engine refuses its fast path (without it speech is ~18x slower)",
     "unset PYTORCH_NO_CUDA_MEMORY_CACHING (remove it from the container environment / compose file); the engine "
     "allocates its working memory at configure, so Jetson no longer needs it"),
    ("previous error during capture",
     "CUDA graph capture failed: PyTorch's caching allocator is off (PYTORCH_NO_CUDA_MEMORY_CACHING) or the "
     "driver cannot capture",
     "unset PYTORCH_NO_CUDA_MEMORY_CACHING; if it persists, report the doctor's output"),
    ("cannot open shared object file",
     "a CUDA library is missing in this environment",
     "on Jetson run the image with docker/start-gpu.sh (it checks every library it mounts); elsewhere install "
     "the CUDA build of torch that matches the driver"),
    ("no CUDA-capable device",
     "the container does not see the GPU",
     "run the container with --runtime nvidia (Jetson) or --gpus all (x86_64), e.g. through docker/start-gpu.sh"),
    ("Found no NVIDIA driver",
     "the container does not see the GPU",
     "run the container with --runtime nvidia (Jetson) or --gpus all (x86_64), e.g. through docker/start-gpu.sh"),
]



def diagnose(message: str) -> Tuple[str, str]:
    """(cause, fix) for an error message; a generic answer when no row of the table matches."""
    low = message.lower()
    for pattern, cause, fix in TROUBLESHOOTING:
        if pattern.lower() in low:
            return cause, fix
    return ("unrecognised failure",
            "run the doctor inside the container started by docker/start-gpu.sh and see docs/jetson.md")


def parse_maps(text: str) -> List[str]:
    """Paths of CUDA libraries mapped into a process, from the text of /proc/<pid>/maps (unique, in order)."""
    seen: Dict[str, None] = {}
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6:
            path = parts[5].strip()
            if path.endswith(" (deleted)"):
                path = path[: -len(" (deleted)")]
            if _CUDA_LIB_RE.search(path):
                seen.setdefault(path, None)
    return list(seen)


def parse_mountinfo(text: str) -> Set[str]:
    """Mount points listed in /proc/self/mountinfo (a bind-mounted file appears as its own mount point)."""
    points = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 4:
            points.add(parts[4].replace("\\040", " "))
    return points


def read_manifest(path: str) -> Dict[str, Dict[str, str]]:
    """SBSA manifest (``name<TAB>soname<TAB>path`` per line, ``#`` comments) keyed by path; {} if unreadable."""
    entries: Dict[str, Dict[str, str]] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return entries
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) >= 3:
            entries[fields[2]] = {"name": fields[0], "soname": fields[1], "path": fields[2]}
    return entries


def classify_library(path: str, manifest_paths: Iterable[str], mount_points: Set[str],
                     jetson: bool) -> Tuple[str, str]:
    """(kind, note) for a loaded library: ``native``, ``sbsa`` or ``native-mounted`` (native mounted over SBSA)."""
    manifest_paths = set(manifest_paths)
    if path in mount_points:
        return "native-mounted", "host library mounted over the image's copy"
    if "sbsa-linux" in path or path in manifest_paths:
        return "sbsa", "SBSA (server ARM) build: fails on Jetson Orin"
    if jetson and re.search(r"/(site|dist)-packages/nvidia/", path):
        return "sbsa", "CUDA library from a pip nvidia-* wheel: an SBSA build, fails on Jetson Orin"
    return "native", ""


def read_text(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return ""


def _check(name: str, fn: Any, library_error: str) -> Dict[str, Any]:
    """Run one tiny call; on failure, diagnose its message, else (a wrong result, say) blame its library."""
    try:
        detail = fn()
        return {"name": name, "ok": True, "detail": detail or ""}
    except Exception as exc:  # every failure is reported with its fix, never raised
        message = f"{type(exc).__name__}: {exc}".strip()
        cause, fix = diagnose(message)
        if cause == "unrecognised failure":
            cause, fix = diagnose(library_error)
        return {"name": name, "ok": False, "error": message.splitlines()[0][:400], "cause": cause, "fix": fix}


def gpu_checks(torch: Any) -> List[Dict[str, Any]]:
    """Tiny calls into each CUDA library Chatterbox uses; each compared with the CPU result."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)

    def close(gpu: Any, cpu: Any, tol: float = 1e-3) -> str:
        torch.cuda.synchronize()
        # abs() of the difference in the CPU result's dtype: complex spectra compare magnitude of the error.
        err = (gpu.detach().cpu().to(cpu.dtype) - cpu).abs().max().item()
        scale = max(cpu.abs().max().item(), 1.0)
        if err > tol * scale:
            raise RuntimeError(f"wrong result: max error {err:.3g} (scale {scale:.3g})")
        return f"max error {err:.2g}"

    def cublas() -> str:
        a = torch.randn(64, 96, generator=gen)
        b = torch.randn(96, 48, generator=gen)
        return close(a.to(dev) @ b.to(dev), a @ b)

    def cublaslt() -> str:
        # Linear with bias in fp16 goes through cuBLASLt (the epilogue path T3 uses).
        x = torch.randn(8, 64, generator=gen)
        w = torch.randn(32, 64, generator=gen)
        bias = torch.randn(32, generator=gen)
        out = torch.nn.functional.linear(x.to(dev).half(), w.to(dev).half(), bias.to(dev).half())
        return close(out, torch.nn.functional.linear(x, w, bias), tol=2e-2)

    def cudnn() -> str:
        if not torch.backends.cudnn.is_available():
            raise RuntimeError("cuDNN is not available to torch (cannot open shared object file libcudnn)")
        x = torch.randn(1, 4, 129, generator=gen)
        w = torch.randn(8, 4, 5, generator=gen)
        out = torch.nn.functional.conv1d(x.to(dev), w.to(dev), padding=2)
        return close(out, torch.nn.functional.conv1d(x, w, padding=2)) + f", cuDNN {torch.backends.cudnn.version()}"

    def cufft_pow2() -> str:
        x = torch.randn(2, 512, generator=gen)
        return close(torch.fft.rfft(x.to(dev)), torch.fft.rfft(x))

    def cufft_odd() -> str:
        x = torch.randn(2, 401, generator=gen)
        return close(torch.fft.rfft(x.to(dev)), torch.fft.rfft(x))

    def cufft_stft() -> str:
        # The S3 tokenizer's transform: n_fft=400, hop 160 (not a power of two).
        x = torch.randn(1, 16000, generator=gen)
        window = torch.hann_window(400)
        gpu = torch.stft(x.to(dev), 400, 160, window=window.to(dev), return_complex=True)
        return close(gpu, torch.stft(x, 400, 160, window=window, return_complex=True))

    def graph_capture() -> str:
        # What the fast path does: capture a step as a CUDA graph (needs the caching allocator's private pools).
        a = torch.randn(64, 64, generator=gen)
        x = torch.randn(1, 64, generator=gen)
        a_d, x_d = a.to(dev), x.to(dev)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            torch.relu(x_d @ a_d)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = torch.relu(x_d @ a_d)
        graph.replay()
        return close(y, torch.relu(x @ a))

    blas, dnn, fft = "CUBLAS_STATUS_ALLOC_FAILED", "unable to find an engine", "CUFFT_INTERNAL_ERROR"
    return [
        _check("cuBLAS matmul (fp32)", cublas, blas),
        _check("cuBLASLt linear+bias (fp16)", cublaslt, blas),
        _check("cuDNN conv1d", cudnn, dnn),
        _check("cuFFT rfft, n=512", cufft_pow2, fft),
        _check("cuFFT rfft, n=401 (odd)", cufft_odd, fft),
        _check("cuFFT stft, n_fft=400", cufft_stft, fft),
        _check("CUDA graph capture (the fast path)", graph_capture, "previous error during capture"),
    ]


def library_report(manifest_path: str, jetson: bool) -> List[Dict[str, str]]:
    manifest = read_manifest(manifest_path)
    mounts = parse_mountinfo(read_text("/proc/self/mountinfo"))
    libs = []
    for path in parse_maps(read_text("/proc/self/maps")):
        kind, note = classify_library(path, manifest, mounts, jetson)
        libs.append({"path": path, "kind": kind, "note": note})
    return libs
