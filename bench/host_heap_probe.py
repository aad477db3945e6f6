#!/usr/bin/env python3
"""Where the host heap grows on CUDA, op by op (issue 22, item 2): malloc in use (mallinfo2) and RSS after CUDA
initialisation, after the first call of each kind of op the engine uses, and after each of six CUDA graph captures of
a 72-kernel block. Run once as is (CUDA_MODULE_LOADING=LAZY, PyTorch's default) and once with
CUDA_MODULE_LOADING=EAGER: the difference says how much of the heap is the driver loading kernel images.

    python bench/host_heap_probe.py > lazy.json
    CUDA_MODULE_LOADING=EAGER python bench/host_heap_probe.py > eager.json
"""
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ros2_chatterbox.engines.chatterbox import footprint  # noqa: E402

rows = []


def rec(name: str) -> None:
    torch.cuda.synchronize()
    rows.append((name, footprint.malloc_in_use_mb(), footprint.host().get("rss_mb")))


rec("start")
torch.zeros(1, device="cuda")
rec("init")
x = torch.randn(256, 256, device="cuda", dtype=torch.float16)
w = torch.randn(256, 256, device="cuda", dtype=torch.float16)
(x @ w).sum().item()
rec("matmul fp16")
xf = x.float()
OPS = [
    ("matmul fp32", lambda: xf @ xf),
    ("softmax", lambda: torch.softmax(xf, -1)),
    ("sort", lambda: torch.sort(xf, -1)),
    ("topk", lambda: torch.topk(xf, 50)),
    ("cumsum", lambda: torch.cumsum(xf, -1)),
    ("layer_norm", lambda: F.layer_norm(x, (256,))),
    ("gelu", lambda: F.gelu(x, approximate="tanh")),
    ("conv1d", lambda: F.conv1d(xf[None], xf[:, :, None])),
    ("conv_transpose1d", lambda: F.conv_transpose1d(xf[None], xf[:, :, None])),
    ("multinomial", lambda: torch.multinomial(torch.softmax(xf, -1), 1)),
    ("sdpa", lambda: F.scaled_dot_product_attention(x[None, None], x[None, None], x[None, None])),
    ("stft", lambda: torch.stft(xf.flatten(), 64, return_complex=True, window=torch.hann_window(64, device="cuda"))),
    ("rfft", lambda: torch.fft.rfft(xf)),
    ("leaky_relu", lambda: F.leaky_relu(xf)),
    ("sin/exp", lambda: torch.sin(xf).exp()),
    ("interp", lambda: F.interpolate(xf[None], scale_factor=2)),
    ("randn gen", lambda: torch.randn(100, device="cuda", generator=torch.Generator(device="cuda"))),
    ("where/masked", lambda: torch.where(xf > 0, xf, -xf)),
    ("argmax", lambda: xf.argmax(-1)),
    ("pad reflect", lambda: F.pad(xf[None], (3, 3), mode="reflect")),
]
for name, op in OPS:
    op()
    rec(name)


def block(y):
    for _ in range(24):
        y = F.layer_norm(F.gelu(y @ w), (256,))
    return y


with torch.cuda.stream(torch.cuda.Stream()):  # warm up off the default stream, as capture requires
    block(x)
torch.cuda.synchronize()
graphs = []
for i in range(6):
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        block(x)
    graphs.append(g)
    rec(f"graph {i} captured (72 kernels)")
print(json.dumps({"env": os.environ.get("CUDA_MODULE_LOADING"), "torch": torch.__version__, "rows": rows}))
