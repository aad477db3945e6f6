"""The Chatterbox Turbo / Nano checkpoint (models.py: only the T3 file differs): which files it has, checking them
one by one (a missing or damaged file, or the other model's T3 file, fails with its name and what to do), explaining
loader errors, and finding the folder (model_dir, or a hub snapshot: from the cache offline, else downloaded with
timeouts).
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ...engine import EngineLoadError
from ...settings import EngineSettings
from . import models, tiny_checkpoint
from .device import release

HUB_REPO_DEFAULT = "ResembleAI/chatterbox-turbo"
REQUIRED_FILES: Dict[str, str] = {
    "ve.safetensors": "voice encoder weights",
    "t3_turbo_v1.safetensors": "T3 speech-token model weights",
    "s3gen_meanflow.safetensors": "S3Gen decoder and vocoder weights",
    "vocab.json": "tokenizer vocabulary",
    "merges.txt": "tokenizer merges",
    "tokenizer_config.json": "tokenizer configuration",
}
# the module whose weights a state-dict error is about -> the file that holds them ("T3": the model's T3 file)
_STATE_DICT_FILES = (("VoiceEncoder", "ve.safetensors"), ("T3", "t3_turbo_v1.safetensors"),
                     ("S3Gen", "s3gen_meanflow.safetensors"), ("S3Token2Wav", "s3gen_meanflow.safetensors"))
_TURBO = models.MODELS["turbo"]


def required_files(spec: models.ModelSpec = _TURBO) -> Dict[str, str]:
    """REQUIRED_FILES with `spec`'s T3 file."""
    return {(spec.t3_file if name == _TURBO.t3_file else name): what for name, what in REQUIRED_FILES.items()}


def hub_patterns(spec: models.ModelSpec = _TURBO):
    return sorted(set(required_files(spec)) | {"*.json", "conds.pt"})


def resolve_repo(hub_repo: str, spec: models.ModelSpec) -> str:
    """The repository to fetch: the model's own when hub_repo is empty or names either official repository (so
    that `model: nano` alone is enough), else hub_repo as given (a mirror)."""
    hub_repo = (hub_repo or "").strip()
    if not hub_repo or hub_repo in {m.hub_repo for m in models.MODELS.values()}:
        return spec.hub_repo
    return hub_repo


def fetch_hint(repo: str = HUB_REPO_DEFAULT) -> str:
    return (f"fetch the weights once on a machine with internet: `huggingface-cli download {repo} --local-dir "
            f"<folder>` (huggingface_hub >= 1.0: `hf download {repo} --local-dir <folder>`), copy <folder> to this "
            f"machine and set the parameter model_dir to it")


# ------------------------------------------------------------------------------------------------ checkpoint files
def check_checkpoint(folder: Path, repo: str = HUB_REPO_DEFAULT, spec: models.ModelSpec = _TURBO) -> None:
    """Raise EngineLoadError naming each missing file, or the first damaged one, of a checkpoint folder of `spec`'s
    model, or naming the other model's T3 file when the folder holds that one instead (and the parameter to change)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EngineLoadError(f"model_dir '{folder}' does not exist or is not a folder; {fetch_hint(repo)}")
    from .tiny_checkpoint import ARCH_FILE
    wrong = models.wrong_model_message(folder, spec, tiny=(folder / ARCH_FILE).is_file())
    if wrong:
        raise EngineLoadError(wrong)
    required = required_files(spec)
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        what = ", ".join(f"{name} ({required[name]})" for name in missing)
        raise EngineLoadError(f"the {spec.title} checkpoint in '{folder}' is missing {what}; {fetch_hint(repo)}")

    def damaged(name: str, exc: BaseException) -> EngineLoadError:
        return EngineLoadError(f"{name} in '{folder}' is damaged or incomplete ({type(exc).__name__}: "
                               f"{str(exc)[:200]}); delete it and fetch it again: {fetch_hint(repo)}")

    from safetensors import safe_open
    for name in ("ve.safetensors", spec.t3_file, "s3gen_meanflow.safetensors"):
        path = folder / name
        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
            if not keys:
                raise ValueError("the file holds no tensors")
            # the header checks offsets against the file size; also make sure the data is really there
            size = path.stat().st_size
            if size < 1024:
                raise ValueError(f"only {size} bytes")
        except Exception as exc:  # noqa: BLE001 - any reader failure means "damaged"
            raise damaged(name, exc) from exc
    for name in ("vocab.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or (name == "vocab.json" and not data):
                raise ValueError("not a JSON object with entries")
        except Exception as exc:  # noqa: BLE001
            raise damaged(name, exc) from exc
    try:
        text = (folder / "merges.txt").read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError("the file is empty")
    except Exception as exc:  # noqa: BLE001
        raise damaged("merges.txt", exc) from exc
    conds = folder / "conds.pt"
    if conds.exists():
        try:
            import torch
            data = torch.load(str(conds), map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or "t3" not in data or "gen" not in data:
                raise ValueError("not a saved Conditionals (keys t3, gen)")
        except Exception as exc:  # noqa: BLE001
            raise damaged("conds.pt", exc) from exc


def explain_load_error(exc: BaseException, folder: Path, repo: str,
                       spec: models.ModelSpec = _TURBO) -> EngineLoadError:
    """Turn an exception from the loader into a message that names the file involved."""
    msg = str(exc)
    for cls_name, filename in _STATE_DICT_FILES:
        if f"state_dict for {cls_name}" in msg or f"state_dict for Tiny{cls_name}" in msg:
            filename = spec.t3_file if cls_name == "T3" else filename
            first = msg.splitlines()[0] if msg else type(exc).__name__
            return EngineLoadError(
                f"{filename} in '{folder}' does not match the {spec.title} architecture ({first[:300]}); is this "
                f"the {spec.hub_repo} checkpoint (parameter model: {spec.name})? {fetch_hint(repo)}")
    if "tokenizer" in msg.lower() or type(exc).__name__ in ("OSError", "EnvironmentError"):
        return EngineLoadError(f"the tokenizer files in '{folder}' could not be loaded ({type(exc).__name__}: "
                               f"{msg[:300]}); {fetch_hint(repo)}")
    return EngineLoadError(f"{spec.title} could not load from '{folder}': {type(exc).__name__}: {msg[:400]}")


def load_model(folder: Path, device: str, dtype: Any, repo: str, spec: models.ModelSpec,
               s3gen_dtype: Any = None) -> Tuple[Any, bool]:
    """(model, tiny): a checked folder loaded by models.load_local (a tiny checkpoint with its patches), T3 in
    `dtype`, S3Gen's flow in `s3gen_dtype` (None: float32; s3gen_precision.resolve_s3gen_dtype). Every failure is an EngineLoadError naming the file or the fix, raised after whatever the loader had put
    on the GPU went back."""
    import torch
    try:
        arch = tiny_checkpoint.read_arch(folder)
    except Exception as exc:  # noqa: BLE001
        raise EngineLoadError(f"{tiny_checkpoint.ARCH_FILE} in '{folder}' is damaged: {exc}") from exc
    if arch is not None and tiny_checkpoint.arch_spec(arch) is not spec:
        raise EngineLoadError(f"the tiny checkpoint in '{folder}' is laid out as {tiny_checkpoint.arch_spec(arch).name}"
                              f", not {spec.name}: set the parameter model to '{tiny_checkpoint.arch_spec(arch).name}'")
    try:
        with tiny_checkpoint.tiny_patches(arch) if arch is not None else contextlib.nullcontext():
            model = models.load_local(folder, device, spec, arch["t3"] if arch is not None else None, t3_dtype=dtype)
        if dtype != torch.float32:
            # T3 (most weights, all per-token time) in half precision. VoiceEncoder, S3Tokenizer, CAMPPlus and HiFT
            # break under .half() (FACTS.md), so they stay float32. Cast outside inference_mode: parameters made
            # there become inference tensors that nothing may update later.
            with torch.no_grad():
                model.t3.to(dtype=dtype)
        if s3gen_dtype is not None and s3gen_dtype != torch.float32:
            # S3Gen's flow in half precision, within s3gen_precision.TOLERANCE of float32 (its FLOW_FP32 parts stay)
            from .s3gen_precision import cast_flow
            cast_flow(model.s3gen, s3gen_dtype)
    except Exception as exc:  # noqa: BLE001
        model = None
        release(device)
        if "out of memory" in str(exc).lower():
            raise EngineLoadError(f"out of memory while loading {spec.title} on {device}: {exc}; free GPU memory "
                                  f"(start this node first) or use dtype float16") from exc
        raise explain_load_error(exc, folder, repo, spec) from exc
    return model, arch is not None



# ------------------------------------------------------------------------------------------------ finding the folder
def locate_checkpoint(settings: EngineSettings, repo: str, spec: models.ModelSpec = _TURBO):
    """(folder, source): model_dir when set, else a complete hub snapshot of `repo`."""
    model_dir = settings.model_dir.strip()
    if model_dir:
        return Path(model_dir).expanduser(), "model_dir"
    return download(repo, settings.hub_timeout_s, settings.hub_cache_dir.strip() or None, spec), f"hub:{repo}"


def download(repo: str, timeout: float, cache_dir: Optional[str], spec: models.ModelSpec = _TURBO) -> Path:
    """A complete hub snapshot: from the cache when there is one (offline), else downloaded with timeouts."""
    try:
        import huggingface_hub
        from huggingface_hub import constants as hf_constants
    except ImportError as exc:
        raise EngineLoadError(f"huggingface_hub is not installed, so hub_repo cannot be fetched; set model_dir "
                              f"instead ({fetch_hint(repo)})") from exc
    token = os.environ.get("HF_TOKEN") or None
    kwargs = dict(repo_id=repo, cache_dir=cache_dir, token=token, allow_patterns=hub_patterns(spec))
    where = cache_dir or hf_constants.HF_HUB_CACHE
    try:  # 1. a snapshot already in the cache loads without any network access
        path = Path(huggingface_hub.snapshot_download(local_files_only=True, **kwargs))
        if all((path / name).is_file() for name in required_files(spec)):
            return path
    except Exception:  # noqa: BLE001 - not cached (or incomplete): go on to the network
        pass
    if hf_constants.HF_HUB_OFFLINE or str(os.environ.get("HF_HUB_OFFLINE", "")).lower() in ("1", "true", "yes"):
        raise EngineLoadError(f"'{repo}' is not in the hub cache ({where}) and HF_HUB_OFFLINE is set, so it "
                              f"cannot be downloaded; {fetch_hint(repo)}")
    return _fetch_in_child(repo, kwargs, timeout, where, hf_constants.ENDPOINT)


# The network part runs in a child process, not in threads: a thread stuck in a read cannot be stopped, so it would
# outlive a failed configure (and a retried configure would start a second download beside it), and the per-read
# timeout would have to be set process-wide (huggingface_hub reads HF_HUB_DOWNLOAD_TIMEOUT from its constants). The
# child gets the timeout in its own environment, reports one JSON line per phase, and is killed when configure gives
# up; one download per process at a time.
_FETCH_CHILD = r"""
import json, sys
a = json.loads(sys.argv[1])
def say(**kw):
    print(json.dumps(kw), flush=True)
try:
    import huggingface_hub
    huggingface_hub.HfApi(endpoint=a["endpoint"]).model_info(a["repo_id"], timeout=a["timeout"])
    say(phase="probe")
    say(phase="done", path=huggingface_hub.snapshot_download(repo_id=a["repo_id"], cache_dir=a["cache_dir"],
        allow_patterns=a["allow_patterns"], etag_timeout=a["timeout"], endpoint=a["endpoint"]))
except BaseException as exc:
    say(phase="error", kind=type(exc).__name__, message=str(exc)[:500])
"""
_FETCH_LOCK = threading.Lock()
STARTUP_GRACE_S = 10.0   # the child's interpreter start and huggingface_hub import, before its own timeout runs


def _fetch_in_child(repo: str, kwargs: Dict[str, Any], timeout: float, where: str, endpoint: str) -> Path:
    """Probe the hub (fail within ~timeout) and download the snapshot in a child process; fail when no byte arrives
    for max(3 * timeout, 60) s. The child never outlives this call."""
    import queue
    import subprocess
    import sys
    if not _FETCH_LOCK.acquire(blocking=False):
        raise EngineLoadError(f"another configure in this process is already downloading from the hub; wait for it "
                              f"to finish, or {fetch_hint(repo)}")
    repo_cache = Path(where) / ("models--" + repo.replace("/", "--"))
    args = {"repo_id": repo, "cache_dir": kwargs.get("cache_dir"), "allow_patterns": kwargs.get("allow_patterns"),
            "timeout": timeout, "endpoint": endpoint}
    env = dict(os.environ, HF_HUB_DOWNLOAD_TIMEOUT=str(max(int(timeout), 1)), HF_HUB_OFFLINE="0",
               HF_HUB_DISABLE_PROGRESS_BARS="1")
    proc = None
    lines: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()
    reader = None
    try:
        proc = subprocess.Popen([sys.executable, "-c", _FETCH_CHILD, json.dumps(args)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)

        def read() -> None:  # ends when the child's stdout closes (it exits or is killed)
            for line in proc.stdout:
                try:
                    lines.put(json.loads(line))
                except ValueError:
                    pass
            lines.put(None)

        reader = threading.Thread(target=read, name="hub-fetch-reader", daemon=True)
        reader.start()
        try:
            msg = lines.get(timeout=timeout + STARTUP_GRACE_S)
        except queue.Empty:
            msg = {"phase": "timeout"}
        if msg is None or msg.get("phase") == "timeout":
            raise EngineLoadError(f"the Hugging Face hub did not answer within {timeout:.0f} s (hub_timeout_s) "
                                  f"while looking up '{repo}'; check the network, or {fetch_hint(repo)}")
        if msg.get("phase") == "error":
            _raise_probe_error(repo, msg, timeout)
        stall_limit = max(3.0 * timeout, 60.0)
        last_size, last_change = -1, time.monotonic()
        while True:
            try:
                msg = lines.get(timeout=1.0)
            except queue.Empty:
                size = _tree_bytes(repo_cache)
                if size != last_size:
                    last_size, last_change = size, time.monotonic()
                elif time.monotonic() - last_change > stall_limit:
                    raise EngineLoadError(f"downloading '{repo}' into {where} stalled for {stall_limit:.0f} s; "
                                          f"check the network, or {fetch_hint(repo)}")
                continue
            if msg is None:
                raise EngineLoadError(f"downloading '{repo}' failed (the download process ended without a result); "
                                      f"{fetch_hint(repo)}")
            if msg.get("phase") == "done":
                return Path(msg["path"])
            if msg.get("phase") == "error":
                raise EngineLoadError(f"downloading '{repo}' failed ({msg.get('kind')}: {msg.get('message', '')[:300]}"
                                      f"); {fetch_hint(repo)}")
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if reader is not None:
            reader.join(5.0)
        _FETCH_LOCK.release()


def _raise_probe_error(repo: str, msg: Dict[str, Any], timeout: float) -> None:
    kind, text = str(msg.get("kind")), str(msg.get("message", ""))
    if "Timeout" in kind or "timed out" in text:
        raise EngineLoadError(f"the Hugging Face hub did not answer within {timeout:.0f} s (hub_timeout_s) while "
                              f"looking up '{repo}' ({kind}); check the network, or {fetch_hint(repo)}")
    denied = kind in ("RepositoryNotFoundError", "GatedRepoError") or \
        (kind == "HfHubHTTPError" and any(code in text for code in ("401", "403")))
    if denied:
        raise EngineLoadError(f"hub repository '{repo}' was not found or needs access: set HF_TOKEN to a token that "
                              f"can read it ({kind}: {text[:200]})")
    raise EngineLoadError(f"could not reach the Hugging Face hub for '{repo}' ({kind}: {text[:200]}); "
                          f"{fetch_hint(repo)}")


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
