"""``ros2-chatterbox-doctor``: is this machine (or container) ready to run Chatterbox on its GPU?

Reports the platform (Jetson or not, L4T release), Python and torch, the CUDA libraries the process actually
loaded and whether any of them is an SBSA (server ARM) build, free GPU and system memory against what the model
needs, and runs tiny cuBLAS, cuDNN and cuFFT calls. Every failure comes with its likely cause and the fix.
Without CUDA (or without torch) it says so and exits 0; it exits 1 only when a GPU check failed.

    ros2-chatterbox-doctor            # or: python -m ros2_chatterbox.doctor / ros2 run ros2_chatterbox doctor
    ros2-chatterbox-doctor --json     # machine-readable
    ros2-chatterbox-doctor --url http://127.0.0.1:8004   # also ask the running node: fast path, memory plan
    ros2-chatterbox-doctor --board orin-nano-8gb --other-mb 2560   # does the node fit beside 2.5 GB of other work

The CUDA checks and the troubleshooting table are cuda_checks.py. Imports neither rclpy nor chatterbox; torch is
imported inside :func:`collect`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .cuda_checks import diagnose, gpu_checks, library_report, read_text
from .status import FastPathStatus, MemoryStatus

GIB = 1024 ** 3
# Written into the Jetson image at build time by docker/write-sbsa-manifest.sh: name, soname, path per line.
DEFAULT_MANIFEST = "/usr/local/share/ros2_chatterbox/sbsa-manifest.tsv"

# Peak memory of the model (FACTS.md, measured on an H200 with full-size weights): T3 fp16 2.38 GiB, fp32 3.18
# GiB. The reference Jetson container reported needing ~5.5 GiB of contiguous unified memory (fp16).
NEEDS_GIB = {"float16": 2.4, "float32": 3.2}
JETSON_NEEDS_GIB = 5.5

# The whole node (host RSS + device memory, MiB) with the container's parameters after 20 mixed utterances, per
# model. Turbo: bench/memory_breakdown.py on an H200 (bench/results/gpu-h200-2026-12-03-memory/README.md), 7,240,
# plus what S3Gen's CUDA graphs (s3gen_graphs, on by default) added on an H100 (+965,
# bench/results/gpu-2026-12-07-s3gen-graphs/README.md). Nano: Turbo's figure less the 430 MiB Nano saved in the
# earlier run that measured both (an estimate until it is measured again). A running node's own figure (--url) is
# used instead when given.
S3GEN_GRAPHS_MB = 965
NODE_MB = {"turbo": 7240 + S3GEN_GRAPHS_MB, "nano": 6810 + S3GEN_GRAPHS_MB}
# A board's memory (MiB) that the node may not count on: the OS and desktop-less JetPack services.
BOARD_OS_MB = 1536
BOARDS_MB = {"orin-nano-4gb": 4096, "orin-nano-8gb": 8192, "orin-nx-8gb": 8192, "orin-nx-16gb": 16384,
             "agx-orin-32gb": 32768, "agx-orin-64gb": 65536}


# ---------------------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested without torch; the CUDA ones are in cuda_checks.py)
# ---------------------------------------------------------------------------------------------------------------
def parse_l4t_release(text: str) -> Optional[str]:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``36.4.3``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not match:
        return None
    return f"{match.group(1)}.{match.group(2).rstrip('.')}"


def _meminfo() -> Dict[str, float]:
    info = {}
    for line in read_text("/proc/meminfo").splitlines():
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

    tegra = read_text("/etc/nv_tegra_release")
    model = read_text("/proc/device-tree/model") or read_text("/sys/firmware/devicetree/base/model")
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


def board_mb(value: str) -> int:
    """`orin-nano-8gb` (BOARDS_MB) or a number of MiB -> MiB (ValueError naming the boards)."""
    name = value.strip().lower()
    if name in BOARDS_MB:
        return BOARDS_MB[name]
    try:
        mb = int(float(name))
    except ValueError:
        raise ValueError(f"board '{value}': give its memory in MiB or one of {', '.join(BOARDS_MB)}") from None
    if mb <= 0:
        raise ValueError(f"board '{value}': its memory must be more than 0 MiB")
    return mb


def board_report(board: int, other_mb: float, model: str = "turbo", node_mb: Optional[float] = None,
                 os_mb: float = BOARD_OS_MB) -> Dict[str, Any]:
    """Whether the node fits a board of `board` MiB beside `other_mb` of the robot's other work: what is left for the
    node against what it takes (`node_mb`: a running node's RSS + device memory; else the bench's NODE_MB)."""
    left = board - os_mb - other_mb
    need = node_mb if node_mb else NODE_MB.get(model, NODE_MB["turbo"])
    basis = "the running node's RSS + device memory" if node_mb else f"bench figure for model {model} (NODE_MB)"
    return {"board_mb": board, "os_mb": os_mb, "other_mb": other_mb, "left_mb": round(left), "node_mb": round(need),
            "basis": basis, "model": model, "fits": need <= left, "budget_hint_mb": max(0, int(left // 100 * 100))}


def node_report(url: str, api_key: str = "", timeout: float = 5.0) -> Dict[str, Any]:
    """The running node's engine state from its HTTP API (/api/model-info), as status records: whether the fast path
    runs (and why not: `fast_path.warning`), what configure took (`memory`). {'ok': False, 'error': ...} when the
    node cannot be asked."""
    import urllib.request
    request = urllib.request.Request(url.rstrip("/") + "/api/model-info")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - a URL the user gave
            info = json.loads(response.read().decode("utf-8"))
    except Exception as exc:  # unreachable, 401, not JSON: reported, never raised
        return {"ok": False, "url": url, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "url": url, "engine": info.get("engine"), "device": info.get("device"),
            "fast_path": FastPathStatus.from_dict(info.get("fast_path")),
            "memory": MemoryStatus.from_dict(info.get("memory"))}


def collect(manifest_path: str = DEFAULT_MANIFEST, run_checks: bool = True, node_url: str = "",
            api_key: str = "", board: Optional[int] = None, other_mb: float = 2560, model: str = "turbo"
            ) -> Dict[str, Any]:
    """Everything the doctor knows, as a dict (JSON with `default=_as_json`: the node's status records). `board`
    (MiB): also whether the node fits such a board beside `other_mb` of other work."""
    from . import jetson_patches

    report: Dict[str, Any] = {"platform": platform_report(), "problems": []}
    if node_url:
        node = report["node"] = node_report(node_url, api_key)
        if node["ok"] and node["fast_path"].warning:
            report["problems"].append({"name": "the node's fast path is not running normally",
                                       "error": node["fast_path"].warning[:400],
                                       "cause": "the engine fell back (see the error)",
                                       "fix": "fix the cause named there (often: unset PYTORCH_NO_CUDA_MEMORY_CACHING); "
                                              "the node's configure log has the same warning"})
        elif not node["ok"]:
            report["problems"].append({"name": f"node at {node_url}", "error": node["error"],
                                       "cause": "the node's HTTP API did not answer",
                                       "fix": "check that the node is active, the port, and the API key "
                                              "(--api-key or CHATTERBOX_API_KEY)"})
    if board:
        node = report.get("node") or {}
        running = node.get("memory").rss_plus_device_mb if node.get("ok") else None
        fit = report["board"] = board_report(board, other_mb, model, running)
        if not fit["fits"]:
            report["problems"].append({
                "name": "board memory", "error": f"the node takes ~{fit['node_mb']} MiB ({fit['basis']}); a "
                f"board of {board} MiB leaves {fit['left_mb']} MiB after the OS (~{fit['os_mb']:.0f}) and "
                f"{fit['other_mb']:.0f} MiB of other work",
                "cause": "the node does not fit beside the robot's other work on this board",
                "fix": f"set memory.budget_mb: {fit['budget_hint_mb']} (configure then fits into it or refuses naming "
                       f"what would fit), s3gen_graphs: false (~{S3GEN_GRAPHS_MB} MiB less, first audio slower), "
                       "model nano, a lower text.chunk_chars / speech_tokens.max, or less other work"})
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
    fit = report.get("board")
    if fit:
        lines += ["", "Board",
                  f"  {fit['board_mb']} MiB - OS ~{fit['os_mb']:.0f} - other work {fit['other_mb']:.0f} = "
                  f"{fit['left_mb']} MiB for the node; it takes ~{fit['node_mb']} MiB ({fit['basis']}) -> "
                  + ("FITS" if fit["fits"] else f"DOES NOT FIT (memory.budget_mb: {fit['budget_hint_mb']} makes "
                                                 "configure fit into it or say what would)")]
    node = report.get("node")
    if node and node.get("ok"):
        fp, mem = node["fast_path"], node["memory"]
        lines += ["", f"Running node ({node['url']})",
                  f"  engine {node.get('engine')} on {node.get('device')}; fast path: "
                  f"{'active' if fp.active else 'NOT active'} ({fp.reason})",
                  f"  memory: {mem.state}; reserved {mem.reserved_mb} MiB; device allocations since configure "
                  f"{mem.device_allocs_since_configure}; RSS + device {mem.rss_plus_device_mb} MiB; host sync "
                  f"{mem.host_sync}"]
    if report["problems"]:
        lines += ["", "Problems"]
        for prob in report["problems"]:
            lines += [f"  {prob['name']}: {prob['error']}", f"    cause: {prob['cause']}", f"    fix:   {prob['fix']}"]
    lines += ["", "Result: " + ("GPU checks FAILED (see fixes above)" if failed(report)
                                else "all GPU checks passed" if cuda["available"]
                                else "no CUDA on this machine: nothing to check (exit 0)")]
    return "\n".join(lines)


def _as_json(value: Any) -> Any:
    """The report's status records (the node's fast path and memory) as objects; anything else as text."""
    return value.as_dict() if hasattr(value, "as_dict") else str(value)


def _board_arg(value: str) -> int:
    try:
        return board_mb(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    parser.add_argument("--board", type=_board_arg, default=None, metavar="MIB|NAME",
                        help="also say whether the node fits a board of this memory (MiB, or one of "
                             f"{', '.join(BOARDS_MB)}) beside --other-mb of other work")
    parser.add_argument("--other-mb", type=float, default=2560,
                        help="memory the robot's other nodes take on that board (default: %(default)s)")
    parser.add_argument("--model", choices=sorted(NODE_MB), default="turbo",
                        help="the model whose bench figure --board uses without --url (default: %(default)s)")
    args = parser.parse_args(argv)
    report = collect(args.manifest, run_checks=not args.no_checks, node_url=args.url, api_key=args.api_key,
                     board=args.board, other_mb=args.other_mb, model=args.model)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True, default=_as_json))
    else:
        print(render(report))
    return 1 if failed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
