"""ros2_chatterbox.jetson_patches on a CPU: routing rule, equal results, exact restore, modes.

Without CUDA, the routing branch is exercised by making `_is_cuda` answer True for CPU tensors: the wrapped call
then computes on the "compute device" (the CPU) and moves the result back, exactly as it would for a CUDA tensor.
"""
import importlib
import subprocess
import sys
import types

import pytest

from optional import optional_import, requires
from ros2_chatterbox import jetson_patches as jp

torch = optional_import("torch")
pytestmark = requires("torch", hint="make setup")


def _originals():
    return {
        "torch.stft": torch.stft, "torch.istft": torch.istft,
        "torch.functional.stft": torch.functional.stft, "torch.functional.istft": torch.functional.istft,
        "Tensor.stft": torch.Tensor.stft, "Tensor.istft": torch.Tensor.istft,
        "torch.fft.rfft": torch.fft.rfft, "torch.fft.irfft": torch.fft.irfft,
    }


ORIGINALS = _originals() if torch is not None else {}


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    monkeypatch.delenv(jp.ENV_VAR, raising=False)
    jp.remove()
    yield
    jp.remove()
    assert _originals() == ORIGINALS


@pytest.fixture
def routed_calls(monkeypatch):
    """Pretend every tensor is a CUDA tensor and record the FFT lengths that get routed to the CPU."""
    calls = []
    real_needs_cpu = jp._needs_cpu

    def spy(tensor, n):
        decision = real_needs_cpu(tensor, n)
        calls.append((n, decision))
        return decision

    monkeypatch.setattr(jp, "_is_cuda", lambda tensor: True)
    monkeypatch.setattr(jp, "_needs_cpu", spy)
    return calls


def test_module_imports_without_side_effects():
    code = ("import sys; import ros2_chatterbox.jetson_patches as jp; "
            "assert 'torch' not in sys.modules, 'torch imported at module import'; "
            "assert 'chatterbox' not in sys.modules; assert 'rclpy' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # and importing it (again) patched nothing in this process
    importlib.reload(jp)
    assert _originals() == ORIGINALS and not jp.is_applied()


@pytest.mark.parametrize("n,expected", [(1, True), (2, True), (16, True), (512, True), (1024, True),
                                        (0, False), (3, False), (400, False), (401, False), (1920, False)])
def test_power_of_two(n, expected):
    assert jp.is_power_of_two(n) is expected


def test_routing_rule_only_non_power_of_two_cuda():
    cpu = torch.zeros(4)
    assert not jp._needs_cpu(cpu, 400)  # CPU tensors: never
    fake_cuda = types.SimpleNamespace(is_cuda=True)
    assert jp._needs_cpu(fake_cuda, 400)
    assert jp._needs_cpu(fake_cuda, 401)
    assert not jp._needs_cpu(fake_cuda, 512)
    assert not jp._needs_cpu(fake_cuda, 16)
    assert not jp._needs_cpu(fake_cuda, None)


def _signals():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(2, 4000, generator=gen), torch.randn(3, 401, generator=gen)


def _compute_all(x, y):
    """Every patched entry point, at sizes Chatterbox uses (400, 1920: routed; 16, 512: kept)."""
    results = {}
    for n_fft, hop in ((400, 160), (1920, 480), (16, 4), (512, 128)):
        window = torch.hann_window(n_fft)
        spec = torch.stft(x, n_fft, hop, window=window, return_complex=True)
        results[f"stft{n_fft}"] = spec
        results[f"method_stft{n_fft}"] = x.stft(n_fft, hop_length=hop, window=window, return_complex=True)
        results[f"istft{n_fft}"] = torch.istft(spec, n_fft, hop, window=window, length=x.shape[-1])
        results[f"method_istft{n_fft}"] = spec.istft(n_fft, hop_length=hop, window=window, length=x.shape[-1])
        results[f"functional_stft{n_fft}"] = torch.functional.stft(x, n_fft=n_fft, hop_length=hop, window=window,
                                                                   return_complex=True)
    results["rfft_odd"] = torch.fft.rfft(y)
    results["rfft_n400"] = torch.fft.rfft(y, n=400)
    results["rfft_pow2"] = torch.fft.rfft(y, n=512)
    results["rfft_dim0"] = torch.fft.rfft(y, dim=0)
    results["irfft_default"] = torch.fft.irfft(torch.fft.rfft(y))  # length 2*(201-1) = 400: routed
    results["irfft_n401"] = torch.fft.irfft(torch.fft.rfft(y), n=401)
    results["irfft_pow2"] = torch.fft.irfft(torch.fft.rfft(y, n=512))
    results["rfft_kwargs"] = torch.fft.rfft(input=y, dim=-1)  # keyword-only calls find the tensor too
    results["irfft_kwargs"] = torch.fft.irfft(input=torch.fft.rfft(y), n=401)
    results["stft_kwargs"] = torch.stft(input=x, n_fft=400, hop_length=160, window=torch.hann_window(400),
                                        return_complex=True)
    return results


def test_patched_functions_return_the_same_results(routed_calls):
    x, y = _signals()
    expected = _compute_all(x, y)
    assert jp.apply("on") is True
    got = _compute_all(x, y)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].device == value.device, key
        torch.testing.assert_close(got[key], value, msg=key)
    routed = {n for n, decision in routed_calls if decision}
    kept = {n for n, decision in routed_calls if not decision}
    assert {400, 1920, 401}.issubset(routed)
    assert {16, 512}.issubset(kept)
    assert not routed & {16, 512}


def test_routing_moves_to_compute_device_and_back(monkeypatch):
    """The routed branch calls the original with tensors on _COMPUTE_DEVICE and returns on the input's device."""
    seen = []
    monkeypatch.setattr(jp, "_is_cuda", lambda tensor: True)
    original = torch.fft.rfft

    def recording(*args, **kwargs):
        seen.append([a.device.type for a in args if torch.is_tensor(a)])
        return original(*args, **kwargs)

    wrapped = jp._make_router(recording, lambda a, k: jp._signal_length(a, k, inverse=False))
    y = torch.randn(401)
    torch.testing.assert_close(wrapped(y), original(y))
    assert seen == [["cpu"]]
    # powers of two go straight through (the wrapper never touches the arguments)
    assert wrapped(torch.randn(512)).shape == (257,)


def test_cpu_tensors_untouched_without_cuda():
    """On a real CPU machine nothing is routed: the originals see the very same tensor objects."""
    seen = []
    original = torch.fft.rfft

    def recording(tensor, *args, **kwargs):
        seen.append(tensor)
        return original(tensor, *args, **kwargs)

    wrapped = jp._make_router(recording, lambda a, k: jp._signal_length(a, k, inverse=False))
    y = torch.randn(401)
    wrapped(y)
    assert seen[0] is y


def test_off_restores_exact_original_objects():
    assert jp.apply("on") is True
    assert torch.stft is not ORIGINALS["torch.stft"]
    assert torch.fft.rfft is not ORIGINALS["torch.fft.rfft"]
    assert torch.Tensor.stft is not ORIGINALS["Tensor.stft"]
    assert torch.stft.__wrapped__ is ORIGINALS["torch.stft"]
    assert len(jp._originals) == len(ORIGINALS)
    assert jp.apply("off") is False
    assert _originals() == ORIGINALS
    for name, fn in _originals().items():
        assert fn is ORIGINALS[name], name
    assert not jp.is_applied()


def test_apply_twice_is_idempotent():
    assert jp.apply("on") is True
    first = _originals()
    assert jp.apply("on") is True
    assert _originals() == first  # same wrapper objects, not wrappers of wrappers
    assert torch.stft.__wrapped__ is ORIGINALS["torch.stft"]
    jp.remove()
    jp.remove()
    assert _originals() == ORIGINALS


def test_context_manager_restores_previous_state():
    with jp.patched("on") as active:
        assert active and torch.stft is not ORIGINALS["torch.stft"]
    assert _originals() == ORIGINALS
    jp.apply("on")
    wrapped = torch.stft
    with jp.patched("off") as active:
        assert not active and torch.stft is ORIGINALS["torch.stft"]
    assert torch.stft is not ORIGINALS["torch.stft"] and jp.is_applied()
    assert torch.stft.__wrapped__ is wrapped.__wrapped__


def test_auto_is_off_on_this_machine():
    assert jp.is_jetson() is False
    assert jp.should_apply("auto") is False
    assert jp.apply("auto") is False
    assert _originals() == ORIGINALS


def test_is_jetson_detects_fake_trees(tmp_path):
    assert jp.is_jetson(str(tmp_path)) is False
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n")
    assert jp.is_jetson(str(tmp_path)) is True
    other = tmp_path / "dt"
    (other / "proc/device-tree").mkdir(parents=True)
    (other / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    assert jp.is_jetson(str(other)) is True
    pc = tmp_path / "pc"
    (pc / "proc/device-tree").mkdir(parents=True)
    (pc / "proc/device-tree/model").write_bytes(b"Raspberry Pi 5 Model B\x00")
    assert jp.is_jetson(str(pc)) is False


@pytest.mark.parametrize("env,mode,expected", [
    ("on", "off", True), ("1", "auto", True), ("true", "off", True),
    ("off", "on", False), ("0", "on", False), ("auto", "on", False),  # auto = not a Jetson here
    ("", "on", True), ("", "off", False),  # empty variable: the parameter decides
])
def test_env_var_overrides(monkeypatch, env, mode, expected):
    monkeypatch.setenv(jp.ENV_VAR, env)
    assert jp.should_apply(mode) is expected
    assert jp.apply(mode) is expected
    assert jp.is_applied() is expected


def test_env_auto_uses_platform(monkeypatch):
    monkeypatch.setenv(jp.ENV_VAR, "auto")
    monkeypatch.setattr(jp, "is_jetson", lambda root="/": True)
    assert jp.should_apply("off") is True


def test_invalid_modes_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="auto, on, off"):
        jp.should_apply("sometimes")
    monkeypatch.setenv(jp.ENV_VAR, "maybe")
    with pytest.raises(ValueError, match=jp.ENV_VAR):
        jp.apply("on")
    assert not jp.is_applied()
