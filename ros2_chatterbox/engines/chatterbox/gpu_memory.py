"""What the engine reports and sets about the GPU beside the model: allocator counters, memory as a Jetson counts it
(host RSS + device memory: one RAM on an Orin), and the host thread's way of waiting for the GPU.

* `allocator_stats(device)`: PyTorch's caching-allocator counters that the static memory plan is judged by
  (`num_device_alloc`: cudaMalloc calls; `allocation.all.allocated`: block allocations served; reserved bytes).
* `blocking_sync(device)`: sets the primary context's scheduling flag to CU_CTX_SCHED_BLOCKING_SYNC through the
  driver API, so a thread waiting for the GPU (an event, a device-to-host copy) sleeps instead of spinning a CPU
  core. The CUDA default ("auto") spins while the process has fewer active contexts than cores, i.e. always on a
  robot: CPU time = wall time for the whole synthesis.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any, Dict

CU_CTX_SCHED_MASK = 0x07
CU_CTX_SCHED_BLOCKING_SYNC = 0x04
_SCHED_NAMES = {0: "auto", 1: "spin", 2: "yield", 4: "blocking_sync"}


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def rss_breakdown(top: int = 8) -> Dict[str, Any]:
    """Where host RSS sits (from /proc/self/smaps): anonymous memory (heap, tensors on the CPU, allocator arenas)
    vs file-backed mappings (shared libraries: the CUDA libraries' code and fatbins), and the largest files."""
    anon, files = 0, {}
    name = ""
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if not head.endswith(":"):  # a mapping line: address perms offset dev inode [path]
                    parts = line.split(None, 5)
                    name = parts[5].strip() if len(parts) == 6 else ""
                elif head == "Rss:":
                    kb = int(line.split()[1])
                    if name.startswith("/") and not name.startswith("/dev/"):
                        files[name] = files.get(name, 0) + kb
                    else:
                        anon += kb
    except (OSError, ValueError, IndexError):
        return {}
    largest = sorted(files.items(), key=lambda kv: -kv[1])[:top]
    return {"anon_mb": round(anon / 1024, 1), "files_mb": round(sum(files.values()) / 1024, 1),
            "largest_files_mb": [(os.path.basename(n), round(kb / 1024, 1)) for n, kb in largest]}


def allocator_stats(device: str) -> Dict[str, int]:
    """Counters of PyTorch's CUDA caching allocator (zeros off CUDA)."""
    if not device.startswith("cuda"):
        return {"num_device_alloc": 0, "num_device_free": 0, "block_allocations": 0, "reserved_bytes": 0,
                "allocated_bytes": 0}
    import torch
    s = torch.cuda.memory_stats(torch.device(device))
    return {"num_device_alloc": int(s.get("num_device_alloc", 0)),
            "num_device_free": int(s.get("num_device_free", 0)),
            "block_allocations": int(s.get("allocation.all.allocated", 0)),
            "reserved_bytes": int(s.get("reserved_bytes.all.current", 0)),
            "allocated_bytes": int(s.get("allocated_bytes.all.current", 0))}


def allocator_delta(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    """The allocator's work between two allocator_stats() readings (and the bytes reserved after)."""
    return {"device_allocs": after["num_device_alloc"] - before["num_device_alloc"],
            "block_allocations": after["block_allocations"] - before["block_allocations"],
            "reserved_bytes": after["reserved_bytes"]}


def device_used_bytes(device: str) -> int:
    """Device memory in use by every process on this GPU (total - free: the CUDA context included); 0 off CUDA. On a
    Jetson (unified memory) that is all RAM in use: there RSS + torch's reserved bytes is this process's share."""
    if not device.startswith("cuda"):
        return 0
    import torch
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return int(total - free)


def _driver():
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if cuda.cuInit(0) != 0:
        return None
    return cuda


def sync_mode(device: str) -> str:
    """The primary context's scheduling flag ("auto", "spin", "yield", "blocking_sync", or why unknown)."""
    cuda = _driver()
    if cuda is None or not device.startswith("cuda"):
        return "n/a"
    dev = ctypes.c_int()
    flags, active = ctypes.c_uint(), ctypes.c_int()
    ordinal = int(device.split(":", 1)[1]) if ":" in device else 0
    if cuda.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return "unknown"
    if cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) != 0:
        return "unknown"
    return _SCHED_NAMES.get(flags.value & CU_CTX_SCHED_MASK, hex(flags.value))


def blocking_sync(device: str) -> str:
    """Make host waits on `device` block (sleep) instead of spin; returns the mode now in force."""
    cuda = _driver()
    if cuda is None or not device.startswith("cuda"):
        return "n/a"
    dev = ctypes.c_int()
    ordinal = int(device.split(":", 1)[1]) if ":" in device else 0
    if cuda.cuDeviceGet(ctypes.byref(dev), ordinal) != 0:
        return "unknown"
    flags, active = ctypes.c_uint(), ctypes.c_int()
    cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active))
    new = (flags.value & ~CU_CTX_SCHED_MASK) | CU_CTX_SCHED_BLOCKING_SYNC
    setter = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    setter(dev, ctypes.c_uint(new))
    return sync_mode(device)


def memory_report(device: str) -> Dict[str, Any]:
    """RSS, device memory in use and their sum (MB): the budget on a Jetson, where both share one RAM."""
    mb = 1024.0 * 1024.0
    rss = rss_bytes()
    dev = device_used_bytes(device)
    return {"rss_mb": round(rss / mb, 1), "device_used_mb": round(dev / mb, 1),
            "rss_plus_device_mb": round((rss + dev) / mb, 1)}
