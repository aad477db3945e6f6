"""``ros2-chatterbox-doctor``: is this machine (or container) ready to run Chatterbox on its GPU?

Reports the platform (Jetson or not, L4T release), Python and torch, the CUDA libraries the process actually
loaded and whether any of them is an SBSA (server ARM) build, free GPU and system memory against what the model
needs, and runs tiny cuBLAS, cuDNN and cuFFT calls. Every failure comes with its likely cause and the fix.
Without CUDA (or without torch) it says so and exits 0; it exits 1 only when a GPU check failed.

    ros2-chatterbox-doctor            # or: python -m ros2_chatterbox.doctor / ros2 run ros2_chatterbox doctor
    ros2-chatterbox-doctor --json     # machine-readable
    ros2-chatterbox-doctor --url http://127.0.0.1:8004   # also ask the running node: fast path, memory plan

Imports neither rclpy nor chatterbox; torch is imported inside :func:`collect`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

GIB = 1024 ** 3
# Written into the Jetson image at build time by docker/write-sbsa-manifest.sh: name, soname, path per line.
DEFAULT_MANIFEST = "/usr/local/share/ros2_chatterbox/sbsa-manifest.tsv"

# Peak memory of the model (FACTS.md, measured on an H200 with full-size weights): T3 fp16 2.38 GiB, fp32 3.18
# GiB. The reference Jetson container reported needing ~5.5 GiB of contiguous unified memory (fp16).
NEEDS_GIB = {"float16": 2.4, "float32": 3.2}
JETSON_NEEDS_GIB = 5.5

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


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without torch)
# ---------------------------------------------------------------------------------------------------------------

def diagnose(message: str) -> Tuple[str, str]:
    """(cause, fix) for an error message; a generic answer when no row of the table matches."""
    low = message.lower()
    for pattern, cause, fix in TROUBLESHOOTING:
        if pattern.lower() in low:
            return cause, fix
    return ("unrecognised failure",
            "run the doctor inside the container started by docker/start-gpu.sh and see docs/jetson.md")


def parse_l4t_release(text: str) -> Optional[str]:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``36.4.3``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    return f"{match.group(1)}.{match.group(2).rstrip('.')}"


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


def _read(path: str) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return ""


def _meminfo() -> Dict[str, float]:
    info = {}
    for line in _read("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            info[key] = int(fields[0]) * 1024 / GIB
    return info


# ---------------------------------------------------------------------------------------------------------------
# Collection
# ---------------------------------------------------------------------------------------------------------------

def platform_report() -> Dict[str, Any]:
    from . import jetson_patches

    tegra = _read("/etc/nv_tegra_release")
    model = _read("/proc/device-tree/model") or _read("/sys/firmware/devicetree/base/model")
    release = parse_l4t_release(tegra) if tegra else None
    jetson = jetson_patches.is_jetson()
    return {
        "machine": platform.machine(),
        "system": platform.platform(),
        "jetson": jetson,
        "model": model or None,
        "l4t_release": release,
        "jetpack": ("6" if release.startswith("36.") else "5" if release.startswith("35.") else None)
        if release else None,
        "in_container": Path("/.dockerenv").exists() or Path("/run/.containerenv").exists(),
        "python": sys.version.split()[0],
        "python_executable": sys.executable,
        "env": {k: os.environ.get(k) for k in ("PYTORCH_NO_CUDA_MEMORY_CACHING", jetson_patches.ENV_VAR,
                                                "HF_HOME", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
                if os.environ.get(k) is not None},
    }


def memory_report(torch: Any, cuda: bool, jetson: bool) -> Dict[str, Any]:
    mem = _meminfo()
    report: Dict[str, Any] = {
        "system_total_gib": round(mem.get("MemTotal", 0.0), 2),
        "system_available_gib": round(mem.get("MemAvailable", 0.0), 2),
        "needs_gib": dict(NEEDS_GIB),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        report["gpu_free_gib"] = round(free / GIB, 2)
        report["gpu_total_gib"] = round(total / GIB, 2)
    # On Jetson the GPU shares system memory: what counts is available RAM, and it must hold one large block.
    if jetson:
        have = report["system_available_gib"]
        need = JETSON_NEEDS_GIB
        basis = "available unified memory (Jetson reference needed ~5.5 GiB contiguous in fp16)"
    elif cuda:
        have = report["gpu_free_gib"]
        need = NEEDS_GIB["float16"]
        basis = "free GPU memory"
    else:
        have = report["system_available_gib"]
        need = NEEDS_GIB["float32"]
        basis = "available system memory (CPU inference in float32)"
    report["verdict"] = {
        "basis": basis, "have_gib": have, "need_gib": need, "ok": have >= need,
        "fits": {dtype: have >= gib for dtype, gib in NEEDS_GIB.items()},
    }
    return report


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
    mounts = parse_mountinfo(_read("/proc/self/mountinfo"))
    libs = []
    for path in parse_maps(_read("/proc/self/maps")):
        kind, note = classify_library(path, manifest, mounts, jetson)
        libs.append({"path": path, "kind": kind, "note": note})
    return libs


def node_report(url: str, api_key: str = "", timeout: float = 5.0) -> Dict[str, Any]:
    """The running node's engine state from its HTTP API (/api/model-info): whether the fast path runs (and why not),
    the memory plan and what configure took. {'ok': False, 'error': ...} when the node cannot be asked."""
    import urllib.request
    request = urllib.request.Request(url.rstrip("/") + "/api/model-info")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - a URL the user gave
            info = json.loads(response.read().decode("utf-8"))
    except Exception as exc:  # unreachable, 401, not JSON: reported, never raised
        return {"ok": False, "url": url, "error": f"{type(exc).__name__}: {exc}"}
    fast = info.get("fast_path") if isinstance(info.get("fast_path"), dict) else {}
    memory = info.get("memory") if isinstance(info.get("memory"), dict) else {}
    return {"ok": True, "url": url, "engine": info.get("engine"), "device": info.get("device"),
            "fast_path": fast, "fast_path_warning": info.get("fast_path_warning") or "",
            "memory": {k: memory.get(k) for k in ("state", "reserved_mb", "device_allocs_since_configure",
                                                   "rss_plus_device_mb", "host_sync")}}


def collect(manifest_path: str = DEFAULT_MANIFEST, run_checks: bool = True, node_url: str = "",
            api_key: str = "") -> Dict[str, Any]:
    """Everything the doctor knows, as a JSON-serialisable dict."""
    from . import jetson_patches

    report: Dict[str, Any] = {"platform": platform_report(), "problems": []}
    if node_url:
        node = report["node"] = node_report(node_url, api_key)
        if node["ok"] and node["fast_path_warning"]:
            report["problems"].append({"name": "the node's fast path is not running normally",
                                       "error": node["fast_path_warning"][:400],
                                       "cause": "the engine fell back (see the error)",
                                       "fix": "fix the cause named there (often: unset PYTORCH_NO_CUDA_MEMORY_CACHING); "
                                              "the node's configure log has the same warning"})
        elif not node["ok"]:
            report["problems"].append({"name": f"node at {node_url}", "error": node["error"],
                                       "cause": "the node's HTTP API did not answer",
                                       "fix": "check that the node is active, the port, and the API key "
                                              "(--api-key or CHATTERBOX_API_KEY)"})
    jetson = report["platform"]["jetson"]
    try:
        report["jetson_patches_auto"] = jetson_patches.should_apply("auto")
    except ValueError as exc:
        report["jetson_patches_auto"] = None
        report["problems"].append({"name": jetson_patches.ENV_VAR, "error": str(exc), "cause": "invalid value",
                                   "fix": "set it to auto, on or off"})
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken CUDA build failing at import
        report["torch"] = {"installed": False, "error": f"{type(exc).__name__}: {exc}"}
        report["cuda"] = {"available": False, "reason": "torch is not importable"}
        report["memory"] = memory_report(None, False, jetson)
        report["libraries"] = []
        report["checks"] = []
        return report

    report["torch"] = {"installed": True, "version": torch.__version__,
                       "cuda_build": getattr(torch.version, "cuda", None)}
    cuda = False
    reason = ""
    try:
        cuda = bool(torch.cuda.is_available())
        if not cuda:
            reason = ("torch was built without CUDA" if not torch.version.cuda
                      else "torch has CUDA but sees no GPU")
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    report["cuda"] = {"available": cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        report["cuda"].update({"device": props.name, "capability": f"{props.major}.{props.minor}",
                               "device_count": torch.cuda.device_count(),
                               "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
                               else None})
    else:
        report["cuda"]["reason"] = reason
        if torch.version.cuda and (jetson or report["platform"]["in_container"]):
            cause, fix = diagnose("no CUDA-capable device")
            report["problems"].append({"name": "GPU not visible", "error": reason, "cause": cause, "fix": fix})

    report["checks"] = gpu_checks(torch) if (cuda and run_checks) else []
    report["memory"] = memory_report(torch, cuda, jetson)
    # After the checks, so that every library the calls touched is mapped.
    report["libraries"] = library_report(manifest_path, jetson)
    for lib in report["libraries"]:
        if lib["kind"] == "sbsa" and jetson:
            cause, fix = diagnose("CUBLAS_STATUS_ALLOC_FAILED" if "cublas" in lib["path"]
                                  else "unable to find an engine" if "cudnn" in lib["path"]
                                  else "CUFFT_INTERNAL_ERROR")
            report["problems"].append({"name": f"SBSA library loaded: {lib['path']}", "error": lib["note"],
                                       "cause": cause, "fix": fix})
    if cuda and "PYTORCH_NO_CUDA_MEMORY_CACHING" in os.environ:
        cause, fix = diagnose("PYTORCH_NO_CUDA_MEMORY_CACHING")
        report["problems"].append({"name": "fast path refused",
                                   "error": f"PYTORCH_NO_CUDA_MEMORY_CACHING="
                                            f"{os.environ['PYTORCH_NO_CUDA_MEMORY_CACHING']}",
                                   "cause": cause, "fix": fix})
    if not report["memory"]["verdict"]["ok"]:
        verdict = report["memory"]["verdict"]
        cause, fix = diagnose("out of memory")
        report["problems"].append({
            "name": "memory", "error": f"{verdict['have_gib']} GiB {verdict['basis']}, "
                                      f"model needs ~{verdict['need_gib']} GiB", "cause": cause, "fix": fix})
    return report


# ---------------------------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------------------------

def failed(report: Dict[str, Any]) -> bool:
    """True when a GPU check failed (the only case with a non-zero exit)."""
    return any(not c["ok"] for c in report.get("checks", []))


def render(report: Dict[str, Any]) -> str:
    p = report["platform"]
    lines = ["ros2_chatterbox doctor", ""]
    jetson = (f"yes ({p['model'] or 'model unknown'}, L4T {p['l4t_release'] or 'unknown'}"
              + (f", JetPack {p['jetpack']}" if p.get("jetpack") else "") + ")") if p["jetson"] else "no"
    lines += [f"Platform     {p['system']} ({p['machine']}){' in a container' if p['in_container'] else ''}",
              f"Jetson       {jetson}",
              f"Python       {p['python']} ({p['python_executable']})"]
    torch_info = report["torch"]
    if not torch_info["installed"]:
        lines.append(f"torch        not installed ({torch_info['error']})")
    else:
        lines.append(f"torch        {torch_info['version']} (CUDA build: {torch_info['cuda_build'] or 'none'})")
    cuda = report["cuda"]
    if cuda["available"]:
        lines.append(f"CUDA         {cuda['device']} (compute {cuda['capability']}, cuDNN {cuda.get('cudnn')})")
    else:
        lines.append(f"CUDA         not available: {cuda['reason']}. Chatterbox would run on the CPU "
                     "(slow: tens of seconds per sentence); no GPU checks to run.")
    auto = report.get("jetson_patches_auto")
    lines.append(f"Jetson patches (auto)  {'on' if auto else 'off' if auto is not None else 'invalid setting'}")
    for key, value in p["env"].items():
        lines.append(f"  {key}={value}")

    mem = report["memory"]
    lines += ["", "Memory"]
    lines.append(f"  system: {mem['system_available_gib']} GiB available of {mem['system_total_gib']} GiB")
    if "gpu_free_gib" in mem:
        lines.append(f"  GPU:    {mem['gpu_free_gib']} GiB free of {mem['gpu_total_gib']} GiB")
    v = mem["verdict"]
    lines.append(f"  model needs ~{NEEDS_GIB['float16']} GiB (float16) / ~{NEEDS_GIB['float32']} GiB (float32); "
                 f"{v['basis']}: {v['have_gib']} GiB -> {'OK' if v['ok'] else 'NOT ENOUGH'}")

    if cuda["available"]:
        lines += ["", "CUDA libraries loaded by this process"]
        if not report["libraries"]:
            lines.append("  (none found in /proc/self/maps)")
        for lib in report["libraries"]:
            lines.append(f"  [{lib['kind']}] {lib['path']}" + (f"  <- {lib['note']}" if lib["note"] else ""))
        lines += ["", "GPU checks"]
        for check in report["checks"]:
            if check["ok"]:
                lines.append(f"  ok    {check['name']} ({check['detail']})")
            else:
                lines += [f"  FAIL  {check['name']}: {check['error']}",
                          f"        cause: {check['cause']}", f"        fix:   {check['fix']}"]
    node = report.get("node")
    if node and node.get("ok"):
        fp = node.get("fast_path") or {}
        mem = node.get("memory") or {}
        lines += ["", f"Running node ({node['url']})",
                  f"  engine {node.get('engine')} on {node.get('device')}; fast path: "
                  f"{'active' if fp.get('active') else 'NOT active'} ({fp.get('reason', 'unknown')})",
                  f"  memory: {mem.get('state')}; reserved {mem.get('reserved_mb')} MiB; device allocations since "
                  f"configure {mem.get('device_allocs_since_configure')}; RSS + device {mem.get('rss_plus_device_mb')} "
                  f"MiB; host sync {mem.get('host_sync')}"]
    if report["problems"]:
        lines += ["", "Problems"]
        for prob in report["problems"]:
            lines += [f"  {prob['name']}: {prob['error']}", f"    cause: {prob['cause']}", f"    fix:   {prob['fix']}"]
    lines += ["", "Result: " + ("GPU checks FAILED (see fixes above)" if failed(report)
                                else "all GPU checks passed" if cuda["available"]
                                else "no CUDA on this machine: nothing to check (exit 0)")]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ros2-chatterbox-doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--manifest", default=os.environ.get("CHATTERBOX_SBSA_MANIFEST", DEFAULT_MANIFEST),
                        help="SBSA manifest of the image (default: %(default)s)")
    parser.add_argument("--no-checks", action="store_true", help="skip the tiny cuBLAS/cuDNN/cuFFT calls")
    parser.add_argument("--url", default="", help="also ask the running node's HTTP API (e.g. http://127.0.0.1:8004) "
                        "whether its fast path runs and what memory it took")
    parser.add_argument("--api-key", default=os.environ.get("CHATTERBOX_API_KEY", ""),
                        help="the node's http.api_key (default: $CHATTERBOX_API_KEY)")
    args = parser.parse_args(argv)
    report = collect(args.manifest, run_checks=not args.no_checks, node_url=args.url, api_key=args.api_key)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=str))
    else:
        print(render(report))
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
