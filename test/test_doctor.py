"""ros2_chatterbox.doctor: runs on this CPU machine (no CUDA), and its pure helpers (cuda_checks: the CUDA libraries,
the troubleshooting table, the GPU calls) parse real-looking inputs."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optional import make_setup
from ros2_chatterbox import cuda_checks, doctor

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "ros2_chatterbox.doctor", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_doctor_report():
    out = _run()
    print(out.stdout)
    assert "Traceback" not in out.stdout + out.stderr
    if _has_cuda():  # a GPU development machine: the checks ran and passed
        assert out.returncode == 0, out.stdout
        assert "all GPU checks passed" in out.stdout
        return
    assert out.returncode == 0, out.stderr
    assert "CUDA         not available" in out.stdout
    assert "no CUDA on this machine" in out.stdout
    assert "Jetson       no" in out.stdout


def test_doctor_json():
    out = _run("--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    print(json.dumps(report, indent=1)[:2000])
    if _has_cuda():
        assert report["cuda"]["available"] is True
        assert len(report["checks"]) == 6 and all(c["ok"] for c in report["checks"])
        assert any("libcublas" in lib["path"] for lib in report["libraries"])
        return
    assert report["cuda"]["available"] is False
    assert report["cuda"]["reason"]
    assert report["checks"] == []
    assert report["platform"]["jetson"] is False
    assert report["jetson_patches_auto"] is False
    assert report["memory"]["system_total_gib"] > 0
    assert report["libraries"] == []


def test_doctor_imports_without_rclpy_or_torch():
    code = ("import sys, ros2_chatterbox.doctor; "
            "assert 'rclpy' not in sys.modules and 'torch' not in sys.modules and 'chatterbox' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_doctor_without_torch(monkeypatch, capsys):
    """Without torch it says so plainly and exits 0."""
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    assert doctor.main([]) == 0
    text = capsys.readouterr().out
    assert "torch        not installed" in text
    assert "no CUDA on this machine" in text


def test_exit_code_1_only_when_a_gpu_check_fails():
    report = {"checks": [{"name": "x", "ok": True}]}
    assert not doctor.failed(report)
    report["checks"].append({"name": "y", "ok": False})
    assert doctor.failed(report)


@pytest.mark.parametrize("message,needle", [
    ("RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", "libcublas"),
    ("RuntimeError: GET was unable to find an engine to execute this computation", "cuDNN"),
    ("RuntimeError: cuFFT error: CUFFT_INTERNAL_ERROR", "jetson_patches"),
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB", "before other GPU services"),
    ("NvMapMemAllocInternalTagged: 1075072515 error 12", "before other GPU services"),
    ("RuntimeError: Found no NVIDIA driver on your system", "--runtime nvidia"),
])
def test_troubleshooting_table(message, needle):
    cause, fix = cuda_checks.diagnose(message)
    assert needle in fix or needle in cause
    assert "start-gpu.sh" in fix or "GPU services" in fix or "--runtime nvidia" in fix


@pytest.mark.parametrize("message", [
    "PYTORCH_NO_CUDA_MEMORY_CACHING=1",
    "RuntimeError: CUDA error: operation failed due to a previous error during capture",
])
def test_allocator_off_is_diagnosed_and_the_fix_is_to_unset_it(message):
    """The caching allocator off (the old Jetson advice) costs the fast path: the doctor says so and says unset it."""
    cause, fix = cuda_checks.diagnose(message)
    assert "caching allocator" in cause and "unset PYTORCH_NO_CUDA_MEMORY_CACHING" in fix
    for _pattern, _cause, other_fix in cuda_checks.TROUBLESHOOTING:  # no row advises setting it any more
        assert "keep PYTORCH_NO_CUDA_MEMORY_CACHING" not in other_fix


def test_parse_l4t_release():
    text = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 2025"
    assert doctor.parse_l4t_release(text) == "36.4.3"
    assert doctor.parse_l4t_release("# R35 (release), REVISION: 5.0, GCID: 1") == "35.5.0"
    assert doctor.parse_l4t_release("garbage") is None


MAPS = """\
ffff8000-ffff9000 r-xp 00000000 103:02 1234  /usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1
ffff9000-ffffa000 r--p 00001000 103:02 1234  /usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1
ffffa000-ffffb000 r-xp 00000000 103:02 1235  /usr/local/cuda/targets/sbsa-linux/lib/libcublas.so.12.6.4.1
ffffb000-ffffc000 r-xp 00000000 103:02 1236  /usr/lib/aarch64-linux-gnu/libcudnn_graph.so.9.5.1
ffffc000-ffffd000 r-xp 00000000 103:02 1237  /usr/local/lib/python3.10/dist-packages/nvidia/cufft/lib/libcufft.so.11
ffffd000-ffffe000 r-xp 00000000 103:02 1238  /usr/lib/aarch64-linux-gnu/libc.so.6
ffffe000-fffff000 r-xp 00000000 103:02 1239  /usr/local/lib/python3.10/dist-packages/torch/lib/libtorch_cuda.so
fffff000-fffff100 rw-p 00000000 00:00 0      [heap]
"""


def test_parse_maps_and_classify():
    paths = cuda_checks.parse_maps(MAPS)
    assert paths == [
        "/usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1",
        "/usr/local/cuda/targets/sbsa-linux/lib/libcublas.so.12.6.4.1",
        "/usr/lib/aarch64-linux-gnu/libcudnn_graph.so.9.5.1",
        "/usr/local/lib/python3.10/dist-packages/nvidia/cufft/lib/libcufft.so.11",
    ]
    manifest = {"/usr/lib/aarch64-linux-gnu/libcudnn_graph.so.9.5.1"}
    mounts = {"/usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1"}  # native mounted over it
    kinds = [cuda_checks.classify_library(p, manifest, mounts, jetson=True)[0] for p in paths]
    assert kinds == ["native-mounted", "sbsa", "sbsa", "sbsa"]
    # off Jetson, pip's nvidia wheels are the normal CUDA libraries
    assert cuda_checks.classify_library(paths[3], manifest, mounts, jetson=False)[0] == "native"


def test_parse_mountinfo_and_manifest(tmp_path):
    info = ("1093 1080 259:2 /usr/local/cuda-12.6/targets/aarch64-linux/lib/libcublasLt.so.12.6.1.4 "
            "/usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1 ro,relatime - ext4 /dev/root rw\n"
            "1080 1 0:50 / / rw,relatime - overlay overlay rw\n")
    assert cuda_checks.parse_mountinfo(info) == {"/usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1", "/"}
    manifest = tmp_path / "m.tsv"
    manifest.write_text("# header\nlibcublas\tlibcublas.so.12\t/x/libcublas.so.12.6.4.1\n\nbad line\n")
    assert cuda_checks.read_manifest(str(manifest)) == {
        "/x/libcublas.so.12.6.4.1": {"name": "libcublas", "soname": "libcublas.so.12",
                                     "path": "/x/libcublas.so.12.6.4.1"}}
    assert cuda_checks.read_manifest(str(tmp_path / "missing.tsv")) == {}


class _FakeCuda:
    """Just enough of torch.cuda for gpu_checks() to run on the CPU (the 'GPU' is the CPU; a 'captured graph' runs
    its code eagerly at capture)."""
    capture_error = None

    @staticmethod
    def synchronize():
        pass

    class Stream:
        def wait_stream(self, other):
            pass

    @staticmethod
    def current_stream():
        return _FakeCuda.Stream()

    @staticmethod
    def stream(s):
        return contextlib.nullcontext()

    class CUDAGraph:
        def replay(self):
            pass

    @staticmethod
    def graph(g):
        if _FakeCuda.capture_error:
            raise RuntimeError(_FakeCuda.capture_error)
        return contextlib.nullcontext()


def test_gpu_checks_catch_wrong_results_and_name_the_library(monkeypatch):
    torch = pytest.importorskip("torch", reason=f"needs torch: run `{make_setup('setup')}`")
    fake = type("T", (), {})()
    for attr in ("randn", "Generator", "nn", "fft", "stft", "hann_window", "backends", "relu"):
        setattr(fake, attr, getattr(torch, attr))
    fake.device = lambda name: torch.device("cpu")
    fake.cuda = _FakeCuda
    monkeypatch.setattr(torch.backends.cudnn, "is_available", lambda: True)
    checks = {c["name"]: c for c in cuda_checks.gpu_checks(fake)}
    assert all(c["ok"] for c in checks.values()), checks  # CPU against CPU: every result equal

    # Graph capture failing as it does with the caching allocator off: the fix is to unset the variable.
    monkeypatch.setattr(_FakeCuda, "capture_error", "CUDA error: operation failed due to a previous error during "
                                                    "capture")
    capture = {c["name"]: c for c in cuda_checks.gpu_checks(fake)}["CUDA graph capture (the fast path)"]
    assert not capture["ok"] and "unset PYTORCH_NO_CUDA_MEMORY_CACHING" in capture["fix"]
    monkeypatch.setattr(_FakeCuda, "capture_error", None)

    # A cuFFT that returns wrong spectra: each check calls the "GPU" first, then the CPU reference.
    real_rfft, calls = torch.fft.rfft, []

    def broken_rfft(x, *args, **kwargs):
        calls.append(1)
        result = real_rfft(x, *args, **kwargs)
        return result * (1 + 0.5j) if len(calls) % 2 else result

    fake.fft = type("F", (), {"rfft": staticmethod(broken_rfft)})
    checks = {c["name"]: c for c in cuda_checks.gpu_checks(fake)}
    bad = checks["cuFFT rfft, n=401 (odd)"]
    assert not bad["ok"] and "wrong result" in bad["error"]
    assert "cuFFT" in bad["cause"] and "start-gpu.sh" in bad["fix"]
    assert checks["cuBLAS matmul (fp32)"]["ok"]


def test_doctor_asks_the_running_node_and_reports_a_fast_path_fallback(capsys):
    """--url: the doctor reads the node's /api/model-info and reports its fast path (a fallback is a problem) and
    the memory configure took; a node that does not answer is named with what to check."""
    import http.server
    import threading

    from ros2_chatterbox.status import CoreStatus, EngineStatus, FastPathStatus, MemoryStatus
    why = "failed to start (RuntimeError: capture); using the reference loop"
    info = CoreStatus(engine=EngineStatus(  # what the node's /api/model-info answers
        engine="chatterbox_turbo", device="cuda:0", fast_path=FastPathStatus(requested=True, fallback=True, reason=why),
        memory=MemoryStatus(state="taken at configure", reserved_mb=5086.0, device_allocs_since_configure=0,
                            rss_plus_device_mb=9000.0, host_sync="blocking_sync"))).as_dict()
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps(info).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert doctor.main(["--no-checks", "--url", url, "--api-key", "k"]) == 0  # a problem, not a failed check
        text = capsys.readouterr().out
        assert "fast path: NOT active (failed to start" in text and "reserved 5086.0 MiB" in text
        assert "the node's fast path is not running normally" in text
        assert seen == [("/api/model-info", "Bearer k")]
        assert doctor.main(["--no-checks", "--json", "--url", url]) == 0
        node = json.loads(capsys.readouterr().out)["node"]
        assert node["fast_path"]["warning"] == why and node["memory"]["rss_plus_device_mb"] == 9000.0
        # --board: the running node's own figure against what an 8 GB Orin Nano leaves beside 2.5 GB of other work
        assert doctor.main(["--no-checks", "--url", url, "--board", "orin-nano-8gb"]) == 0
        text = capsys.readouterr().out
        assert "8192 MiB - OS ~1536 - other work 2560 = 4096 MiB for the node; it takes ~9000 MiB" in text
        assert "DOES NOT FIT (memory.budget_mb: 4000" in text and "board memory" in text
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    report = doctor.collect(run_checks=False, node_url=url)  # the server is gone now
    assert not report["node"]["ok"]
    assert any(p["name"] == f"node at {url}" and "API key" in p["fix"] for p in report["problems"])


def test_board_fit_from_the_bench_figures_and_what_to_set():
    """--board without a node: the bench's figure for the model against the board's memory after the OS and the
    robot's other work; a board that is too small names the budget that fits it; names and MiB both work."""
    assert doctor.board_mb("orin-nano-8gb") == 8192 and doctor.board_mb("16384") == 16384
    for bad in ("orin-nano-9gb", "-5"):
        with pytest.raises(ValueError, match="orin-nano-8gb|more than 0"):
            doctor.board_mb(bad)
    big = doctor.board_report(doctor.board_mb("agx-orin-64gb"), 2560, "nano")
    assert big["fits"] and big["node_mb"] == doctor.NODE_MB["nano"] and "bench figure for model nano" in big["basis"]
    small = doctor.board_report(4096, 2560, "turbo")
    assert not small["fits"] and small["left_mb"] == 0 and small["budget_hint_mb"] == 0
    report = doctor.collect(run_checks=False, board=8192, other_mb=6000, model="turbo")
    problem = next(p for p in report["problems"] if p["name"] == "board memory")
    assert "leaves 656 MiB" in problem["error"] and "memory.budget_mb: 600" in problem["fix"]
    out = _run("--no-checks", "--board", "toaster")
    assert out.returncode == 2 and "orin-nano-8gb" in out.stderr
