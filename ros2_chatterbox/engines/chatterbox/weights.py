"""Reading a safetensors checkpoint into a module: one tensor at a time, with plain reads (no file mapping), straight
onto its device and dtype, taken as the module's tensors; modules built without random init for that. The engine's
loader (models.load_local) and the S3 tokenizer read on demand (s3_tokenizer.py) use it. Nothing here imports torch
at import time.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

# One lock for whatever changes process-wide state while a module is built (no_random_init here, the GPT-2 config
# table in models.gpt2_configs): one lock, so no two threads can take two of them in opposite orders.
LOCK = threading.RLock()


@contextlib.contextmanager
def no_random_init() -> Iterator[None]:
    """While active, modules are built without random initialisation (transformers' `no_init_weights`, pinned
    transformers 5.x; it also silences torch.nn.init): for modules whose every parameter is loaded right after.
    Process-wide while active, so under the module's lock."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            no_init_weights = contextlib.nullcontext
    with LOCK, no_init_weights():
        yield


def load_weights(module, path: Path, device: str, dtype: Any = None, ignore: Tuple[str, ...] = (),
                 prefix: str = "") -> None:
    """`module.load_state_dict(file, strict=True)`, read one tensor at a time (`read_safetensors`) onto `device`, each
    in the module's own dtype (floating tensors in `dtype` when given), and taken as the module's tensors (assign):
    memory holds the weights once, plus one tensor in flight. Tensors whose names start with an `ignore` prefix are
    not read. With a `prefix`, only the tensors under it are read, as `module`'s without it (one submodule's part
    of a file)."""
    import torch
    own = module.state_dict()
    target = torch.device(device)
    state = {}
    for key, t in read_safetensors(path, skip=ignore, only=(prefix,) if prefix else ()):
        key = key[len(prefix):]
        mine = own.get(key)
        want = dtype if (dtype is not None and t.is_floating_point()) else (mine.dtype if mine is not None
                                                                             else t.dtype)
        state[key] = t.to(device=target, dtype=want)
        del t
    module.load_state_dict(state, strict=True, assign=True)


_ST_DTYPES = ("F64:float64 F32:float32 F16:float16 BF16:bfloat16 I64:int64 I32:int32 I16:int16 I8:int8 U8:uint8 "
              "BOOL:bool").split()


def read_safetensors(path: Path, skip: Tuple[str, ...] = (), only: Tuple[str, ...] = ()) -> Iterator[Tuple[str, Any]]:
    """(name, CPU tensor) for each tensor of a safetensors file, in file order, read with plain reads into fresh
    memory; names starting with a `skip` prefix are left out, and with `only`, every name not starting with one of
    its prefixes. Unlike safetensors' own loaders this maps no part of the file: the process holds only the tensors
    it keeps, and replacing the file later cannot change (or crash) a loaded model. A file shorter than its header
    says is refused before anything is read (also when the missing part is one that is skipped)."""
    import torch
    dtypes = {code: getattr(torch, name) for code, name in (d.split(":") for d in _ST_DTYPES)}
    path = Path(path)
    with open(path, "rb") as f:
        header, base = _read_header(f)
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        end = base + max((int(v["data_offsets"][1]) for _k, v in entries), default=0)
        size = os.fstat(f.fileno()).st_size
        if size < end:
            raise ValueError(f"{path.name} is incomplete ({size} bytes; its header describes {end})")
        for name, entry in entries:
            if name.startswith(skip) or (only and not name.startswith(only)):
                continue
            if entry.get("dtype") not in dtypes:
                raise ValueError(f"{path.name}: tensor {name} has dtype {entry.get('dtype')}, which this loader "
                                 f"does not read")
            begin, end = (int(x) for x in entry["data_offsets"])
            buf = torch.empty(end - begin, dtype=torch.uint8)
            f.seek(base + begin)
            if end > begin and f.readinto(memoryview(buf.numpy())) != end - begin:
                raise ValueError(f"{path.name} is incomplete (tensor {name} ends past the end of the file)")
            yield name, buf.view(dtypes[entry["dtype"]]).reshape([int(d) for d in entry["shape"]])


def _read_header(f) -> Tuple[Dict[str, Any], int]:
    """A safetensors file's JSON header and the offset where tensor data begins."""
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError("not a safetensors file (shorter than its header length)")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
        raise ValueError(f"header of {n} bytes")
    return json.loads(f.read(n)), 8 + n


def safetensors_header(path: Path) -> Dict[str, Any]:
    """A safetensors file's JSON header: {name: {"dtype", "shape", "data_offsets"}} (no tensor data read)."""
    with open(path, "rb") as f:
        header, _ = _read_header(f)
    return header
