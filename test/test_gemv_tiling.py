"""The fused matrix-vector kernel's tiling for any GPT-2 width (Nano: 768/3072, Turbo: 1024/4096, others), checked
on the CPU by replaying the kernel's tile loop with numpy; on a CUDA machine with Triton, the kernel itself against
the PyTorch ops (skipped here)."""
import numpy as np
import pytest

from optional import optional_import, requires

pytestmark = requires("torch")
torch = optional_import("torch")
if torch is not None:
    from ros2_chatterbox.engines.fast_t3 import kernels as tk

GPT2_WIDTHS = (768, 1024, 1280, 1600)  # small (Nano), medium (Turbo), large, xl
ODD = (1, 5, 48, 96, 100, 257, 1000, 6563)


def replay(x, w, b, t: "tk.Tiling"):
    """The kernel's loop in numpy: programs of block_n rows, K walked in block_k tiles, masked past N and K."""
    N, K = w.shape
    y = np.zeros(N, np.float64)
    for pid in range(t.programs):
        rows = pid * t.block_n + np.arange(t.block_n)
        rmask = rows < N
        acc = np.zeros((t.block_n, t.block_k))
        for k0 in range(0, K, t.block_k):
            ks = k0 + np.arange(t.block_k)
            kmask = ks < K
            assert kmask.all() or not t.even_k  # an even tiling never needs a column mask
            xk = np.where(kmask, x[np.minimum(ks, K - 1)], 0.0)
            wt = np.where(rmask[:, None] & kmask[None, :], w[np.minimum(rows, N - 1)][:, np.minimum(ks, K - 1)], 0.0)
            acc += wt * xk[None, :]
        y[rows[rmask]] = acc.sum(1)[rmask] + b[rows[rmask]]
    return y


@pytest.mark.parametrize("K", [*GPT2_WIDTHS, *(4 * d for d in GPT2_WIDTHS), *ODD])
def test_tiling_covers_any_width(K):
    for N in (1, 3, 768, 2304, 6563):
        t = tk.tiling(N, K)
        assert t.block_k & (t.block_k - 1) == 0 and tk.MIN_BLOCK_K <= t.block_k <= tk.MAX_BLOCK_K
        assert t.block_n & (t.block_n - 1) == 0 and t.programs * t.block_n >= N > (t.programs - 1) * t.block_n
        tiles = -(-K // t.block_k)
        assert tiles * t.block_k >= K > (tiles - 1) * t.block_k
        assert t.even_k == (K % t.block_k == 0)
        assert t.kp & (t.kp - 1) == 0 and K <= t.kp < 2 * K or K == t.kp == 1


@pytest.mark.parametrize("K", [768, 3072, 1024, 4096, 1280])
def test_gpt2_widths_need_no_column_masks(K):
    """The hot path of real models runs unmasked tiles of at least 256 columns."""
    t = tk.tiling(3 * K, K)
    assert t.even_k and t.block_k >= 256


@pytest.mark.parametrize("N,K", [(2304, 768), (768, 3072), (6563, 768), (7, 96), (5, 48), (3, 1600), (9, 1000)])
def test_replayed_tiles_compute_the_product(N, K):
    rng = np.random.default_rng(K)
    x, w, b = rng.standard_normal(K), rng.standard_normal((N, K)), rng.standard_normal(N)
    np.testing.assert_allclose(replay(x, w, b, tk.tiling(N, K)), w @ x + b, rtol=1e-9, atol=1e-9)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        tk.tiling(0, 768)
    with pytest.raises(ValueError):
        tk.gemv(torch.zeros(1, 767), torch.zeros(8, 768), torch.zeros(8))


@pytest.mark.skipif(torch is None or not (torch.cuda.is_available() and tk.available()), reason="needs CUDA and Triton")
@pytest.mark.parametrize("dtype_name", ["float16", "float32"])
def test_kernel_equals_torch_ops_on_gpu(dtype_name):
    dtype = getattr(torch, dtype_name)
    shapes = [s for d in (768, 1024, 96) for s in tk.step_shapes(d)] + [(77, 1600, True, True, True)]
    for row in tk.check(shapes, dtype):
        assert row["rel_err"] <= (1e-4 if dtype == torch.float32 else 3e-2), row
