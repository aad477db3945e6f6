"""The engine's safetensors reader (weights.read_safetensors / load_weights): the same tensors as safetensors' own
loader, without mapping the file, skipping what is not wanted, and a clear error for a damaged file."""
import pytest

from optional import optional_import, requires

pytestmark = requires("torch", "safetensors.torch")
torch = optional_import("torch")
safetensors_torch = optional_import("safetensors.torch")
if torch is not None:
    from ros2_chatterbox.engines.chatterbox import weights


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(7, 5, generator=g),
        "a.bias": torch.randn(5, generator=g).half(),
        "b.weight": torch.randn(3, 4, generator=g).bfloat16(),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
        "bytes": torch.arange(10, dtype=torch.uint8),
    }


def test_reads_what_safetensors_reads(tmp_path):
    path = tmp_path / "w.safetensors"
    safetensors_torch.save_file(tensors(), str(path), metadata={"format": "pt"})
    theirs = safetensors_torch.load_file(str(path))
    mine = dict(weights.read_safetensors(path))
    assert sorted(mine) == sorted(theirs)
    for k, ref in theirs.items():
        assert mine[k].dtype == ref.dtype and mine[k].shape == ref.shape and torch.equal(mine[k], ref), k


def test_skips_prefixes_and_loads_into_a_module(tmp_path):
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    ref = {k: torch.randn_like(v) for k, v in module.state_dict().items()}
    path = tmp_path / "m.safetensors"
    safetensors_torch.save_file({**ref, "unused.weight": torch.ones(1000)}, str(path))
    assert "unused.weight" not in dict(weights.read_safetensors(path, skip=("unused.",)))
    weights.load_weights(module, path, "cpu", dtype=torch.float16, ignore=("unused.",))
    for k, v in module.state_dict().items():
        assert v.dtype == torch.float16 and torch.equal(v, ref[k].half()), k


def test_a_truncated_file_is_named(tmp_path):
    path = tmp_path / "s3gen_meanflow.safetensors"
    safetensors_torch.save_file(tensors(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8])
    with pytest.raises(ValueError, match="s3gen_meanflow.safetensors is incomplete"):
        list(weights.read_safetensors(path))
