"""What the speech service reports about itself, as typed, read-only records (no torch, no ROS, no HTTP).

    CoreStatus          SpeechCore.status(): readiness, queue, counters, voices, last error; `.engine` below
      EngineStatus      Engine.info(): engine, device, model, load time, voice cache; Chatterbox adds:
        FastPathStatus    whether the fast T3 decode path runs, and why (`.warning`: why not, when asked for); the
                          same record tells whether S3Gen runs in CUDA graphs (`s3gen_graphs`)
        MemoryStatus      the memory plan, what configure took, the allocator's work since
        CudaStatus        the CUDA device and its allocator figures

The doors read these fields and properties (never key strings). Two views for those that need text:
`as_dict()` (nested, JSON-ready: /api/model-info) and `CoreStatus.flat()` (one level of scalars: /diagnostics).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

_SCALARS = (str, int, float, bool, type(None))


class _Record:
    """as_dict() / from_dict() for the records below."""

    EXTRA: Tuple[str, ...] = ()   # properties shown beside the fields

    def as_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _Record):
                value = value.as_dict()
            elif isinstance(value, (dict, list, tuple)):
                value = list(value) if isinstance(value, tuple) else type(value)(value)
            out[f.name] = value
        out.update({name: getattr(self, name) for name in self.EXTRA})
        return out

    @classmethod
    def from_dict(cls, values: Any):
        """From as_dict()'s output (e.g. a node's /api/model-info section); unknown names are ignored, missing ones
        keep their defaults, and a value that is not a mapping gives the defaults."""
        values = values if isinstance(values, dict) else {}
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})  # type: ignore[arg-type]


@dataclass(frozen=True)
class FastPathStatus(_Record):
    """A fast path (T3's decode loop, parameter fast_path; S3Gen's CUDA graphs, parameter s3gen_graphs): asked
    for, running, with CUDA graphs, or fallen back."""
    requested: bool = False
    active: bool = False
    cuda_graphs: bool = False
    fallback: bool = False      # asked for and not running normally (a warning, never silent)
    reason: str = "not loaded"  # why it runs or not, in words

    EXTRA = ("warning",)

    @property
    def warning(self) -> str:
        """Why the engine runs without its fast path although it was asked for ('' = it runs normally)."""
        return self.reason if self.fallback else ""


@dataclass(frozen=True)
class MemoryStatus(_Record):
    """The engine's memory plan and what configure took (engines/chatterbox/memory_plan.py)."""
    state: str = "not loaded"
    plan: Optional[Dict[str, Any]] = None
    warm_s: float = 0.0
    host_sync: str = "n/a"
    rss_mb: float = 0.0
    device_used_mb: float = 0.0
    rss_plus_device_mb: float = 0.0
    reserved_mb: float = 0.0
    reserved_at_configure_mb: Optional[float] = None
    device_allocs_since_configure: Optional[int] = None
    last_piece: Dict[str, int] = field(default_factory=dict)
    budget: str = ""            # what memory.budget_mb made configure choose ('' = no budget)
    footprint: Dict[str, Any] = field(default_factory=dict)  # where the memory is (engines/chatterbox/footprint.py)


@dataclass(frozen=True)
class CudaStatus(_Record):
    device_name: str = ""
    allocated_mb: float = 0.0
    reserved_mb: float = 0.0
    peak_mb: float = 0.0


@dataclass(frozen=True)
class VoiceCacheStatus(_Record):
    voices: int = 0
    mb: float = 0.0
    max_voices: int = 0
    max_mb: float = 0.0
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class EngineStatus(_Record):
    """One engine's state. Fields an engine does not have keep their defaults (sections: None)."""
    engine: str = ""            # the engine's name (chatterbox_turbo, piper)
    sample_rate: int = 0
    loaded: bool = False
    can_clone: bool = False
    device: str = ""
    dtype: str = ""
    model: str = ""             # the model id (chatterbox-turbo, chatterbox-nano) or file
    model_name: str = ""
    model_dir: str = ""
    model_source: str = ""
    hub_repo: str = ""
    voice: str = ""             # the one voice of an engine that cannot clone
    languages: Tuple[str, ...] = ()  # ISO 639-1 codes the engine speaks
    default_language: str = ""  # spoken when neither the request nor the `language` parameter names one
    tiny_checkpoint: bool = False
    builtin_voice: bool = False
    load_seconds: float = 0.0
    rss_mb: Optional[float] = None
    jetson_patches: str = ""
    jetson_patches_active: bool = False
    stream_first_tokens: Optional[int] = None
    last_first_chunk_s: Optional[float] = None
    voice_cache: Optional[VoiceCacheStatus] = None
    fast_path: Optional[FastPathStatus] = None
    s3gen_graphs: Optional[FastPathStatus] = None
    memory: Optional[MemoryStatus] = None
    cuda: Optional[CudaStatus] = None

    @property
    def fast_path_warning(self) -> str:
        """Why the engine runs without a fast path it was asked for, T3's or S3Gen's graphs ('' = fast, or an engine
        without one)."""
        return "; ".join(f"{label}{p.warning}" for label, p in (("", self.fast_path), ("S3Gen: ", self.s3gen_graphs))
                         if p is not None and p.warning)


@dataclass(frozen=True)
class CoreStatus(_Record):
    """SpeechCore.status(): what a status page or diagnostics shows."""
    engine: EngineStatus = field(default_factory=EngineStatus)
    accepting: bool = False     # speech requests are accepted (also on the fallback engine)
    ready: bool = False         # the configured engine (not the fallback) serves
    requested_engine: str = ""
    fallback_engine: str = ""
    using_fallback: bool = False
    fallback_reason: str = ""
    unloaded_for_idle: bool = False
    queue_depth: int = 0
    queue_max: int = 0
    speaking: bool = False
    counters: Dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    last_latency_s: Optional[float] = None
    last_first_audio_s: Optional[float] = None
    load_seconds: float = 0.0   # the core's load: the engine's (or the fallback's after it) and the voices
    voices: Tuple[str, ...] = ()
    default_voice: str = ""

    def as_dict(self) -> Dict[str, Any]:
        """/api/model-info's JSON: the engine's values at the top (beside the core's, which win: load_seconds),
        sections as objects, and each section's scalars also flat, as flat() names them."""
        out = self.engine.as_dict()
        out.update({k: v for k, v in self.flat().items() if k not in out})
        core = super().as_dict()
        del core["engine"]
        out.update(core)
        return out

    def flat(self) -> Dict[str, Any]:
        """One level of scalars (/diagnostics): the engine's and the core's values, and each engine section's as
        `<section>_<name>` (fast_path_active, fast_path_warning, memory_state, voice_cache_hits, cuda_peak_mb),
        plus the names these values had before the sections existed (fast_path_state, rss_plus_device_mb,
        device_allocs_since_configure)."""
        out: Dict[str, Any] = {}
        for name, value in self.engine.as_dict().items():
            if isinstance(value, dict):
                out.update({f"{name}_{k}": v for k, v in value.items()
                            if isinstance(v, _SCALARS) and f"{name}_{k}" not in _OBJECTS})
            elif value is not None or name not in _SECTIONS:
                out[name] = value
        footprint = self.engine.memory.footprint if self.engine.memory is not None else {}
        for part, w in (footprint.get("weights") or {}).items():   # where the memory is, in MiB
            out[f"memory_weights_{part}_mb"] = w.get("mb")
        for side in ("device", "host"):
            out.update({f"memory_{side}_{k}": v for k, v in (footprint.get(side) or {}).items()
                        if isinstance(v, _SCALARS)})
        for old, new in _OLD_NAMES.items():
            if new in out:
                out[old] = out[new]
        out.update({k: v for k, v in super().as_dict().items() if isinstance(v, _SCALARS)})
        return out


_SECTIONS = ("voice_cache", "fast_path", "s3gen_graphs", "memory", "cuda")
_OBJECTS = ("memory_plan",)  # None or an object: /api/model-info shows it under memory
_OLD_NAMES = {"fast_path_state": "fast_path_reason", "rss_plus_device_mb": "memory_rss_plus_device_mb",
              "device_allocs_since_configure": "memory_device_allocs_since_configure"}
