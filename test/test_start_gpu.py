"""docker/start-gpu.sh and docker/write-sbsa-manifest.sh against fake JetPack 6 host trees and fake images.

Each layout builds, in a temporary folder, a host tree (the native libraries where JetPack puts them, as empty
files behind the same symlink chains: libcublas.so -> libcublas.so.12 -> libcublas.so.12.6.1.4) and an image tree
(the SBSA builds), writes the image's manifest with the real generator, and runs the real script with
`--dry-run`: the mounts it prints must be exactly the native/SBSA pairs, read-only, nothing extra.
"""
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "start-gpu.sh"
GENERATOR = ROOT / "docker" / "write-sbsa-manifest.sh"

CUDNN9 = ["libcudnn", "libcudnn_adv", "libcudnn_cnn", "libcudnn_engines_precompiled",
          "libcudnn_engines_runtime_compiled", "libcudnn_graph", "libcudnn_heuristic", "libcudnn_ops"]
CUDNN8 = ["libcudnn", "libcudnn_adv_infer", "libcudnn_adv_train", "libcudnn_cnn_infer", "libcudnn_cnn_train",
          "libcudnn_ops_infer", "libcudnn_ops_train"]


def _cuda(cublas, cufft):
    return {"libcublas": cublas, "libcublasLt": cublas, "libcufft": cufft, "libcufftw": cufft}


# Three JetPack 6 hosts, each with an image whose SBSA libraries have other versions.
LAYOUTS = {
    # JetPack 6.2.2 (L4T 36.5): the reference container's versions (FACTS.md).
    "jp6.2-cudnn9": dict(
        host_cuda=_cuda("12.6.1.4", "11.2.6.59"), host_cudnn={n: "9.3.0" for n in CUDNN9},
        image_cuda=_cuda("12.6.4.1", "11.3.0.4"), image_cudnn={n: "9.5.1" for n in CUDNN9},
        cuda_dir="cuda-12.6", usrmerge=True),
    # JetPack 6.0 (L4T 36.3): CUDA 12.2 and cuDNN 8 with its infer/train split.
    "jp6.0-cudnn8": dict(
        host_cuda=_cuda("12.2.5.6", "11.0.8.103"), host_cudnn={n: "8.9.4" for n in CUDNN8},
        image_cuda=_cuda("12.2.5.1", "11.0.8.91"), image_cudnn={n: "8.9.7.29" for n in CUDNN8},
        cuda_dir="cuda-12.2", usrmerge=False),
    # JetPack 6.1 (L4T 36.4.0) host, image built with CUDA 12.8 / cuDNN 9.8, plus pip nvidia-* wheel libraries.
    "jp6.1-cuda12.8-image": dict(
        host_cuda=_cuda("12.6.1.4", "11.2.6.59"), host_cudnn={n: "9.3.0" for n in CUDNN9},
        image_cuda=_cuda("12.8.4.1", "11.3.3.83"), image_cudnn={n: "9.8.0.87" for n in CUDNN9},
        wheel_libs={"cublas": {"libcublas": "12", "libcublasLt": "12"}, "cufft": {"libcufft": "11"}},
        cuda_dir="cuda-12.6", usrmerge=True),
}


def make_lib(folder: Path, name: str, version: str) -> Path:
    """lib<name>.so.<version> (empty) with the .so.<major> and .so links of a real install; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    real = folder / f"{name}.so.{version}"
    real.write_bytes(b"")
    major = version.split(".")[0]
    if major != version:
        (folder / f"{name}.so.{major}").symlink_to(real.name)
    (folder / f"{name}.so").symlink_to(f"{name}.so.{major}")
    return real


def make_distractors(folder: Path) -> None:
    """Libraries of the same folders that must never be paired."""
    make_lib(folder, "libcudart", "12.6.77")
    make_lib(folder, "libnvblas", "12.6.1.4")
    make_lib(folder, "libcusparse", "12.5.4.2")
    for static in ("libcublas_static.a", "libcublasLt_static.a", "libcufft_static_nocallback.a",
                   "libcudnn_adv_static_v9.a"):
        (folder / static).write_bytes(b"")


def build_host(root: Path, layout: dict) -> dict:
    """Host tree under root; returns {name: resolved native file}."""
    cuda_lib = root / "usr/local" / layout["cuda_dir"] / "targets/aarch64-linux/lib"
    (root / "usr/local/cuda").parent.mkdir(parents=True, exist_ok=True)
    (root / "usr/local/cuda").symlink_to(layout["cuda_dir"])  # /usr/local/cuda -> cuda-12.x, like JetPack
    if layout["usrmerge"]:
        distro_lib = root / "usr/lib/aarch64-linux-gnu"
        distro_lib.mkdir(parents=True)
        (root / "lib").symlink_to("usr/lib")
    else:
        distro_lib = root / "lib/aarch64-linux-gnu"
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n")
    native = {}
    for name, version in layout["host_cuda"].items():
        native[name] = make_lib(cuda_lib, name, version).resolve()
    for name, version in layout["host_cudnn"].items():
        native[name] = make_lib(distro_lib, name, version).resolve()
    make_distractors(cuda_lib)
    return native


def build_image(root: Path, layout: dict) -> tuple:
    """Image tree under root; returns (folders to scan, {path: name} of each SBSA library)."""
    sbsa = root / "usr/local/cuda/targets/sbsa-linux/lib"
    distro = root / "usr/lib/aarch64-linux-gnu"
    expected = {}
    for name, version in layout["image_cuda"].items():
        expected[make_lib(sbsa, name, version)] = name
    for name, version in layout["image_cudnn"].items():
        expected[make_lib(distro, name, version)] = name
    make_distractors(sbsa)
    folders = [sbsa, distro]
    for package, libs in layout.get("wheel_libs", {}).items():
        folder = root / "usr/local/lib/python3.10/dist-packages/nvidia" / package / "lib"
        folder.mkdir(parents=True)
        for name, major in libs.items():
            real = folder / f"{name}.so.{major}"  # pip wheels ship the soname itself as the file
            real.write_bytes(b"")
            expected[real] = name
        folders.append(folder)
    return folders, expected


def write_manifest(out: Path, folders) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", str(GENERATOR), str(out), *map(str, folders)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result


def run_script(host_root: Path, manifest: Path, *args, env=None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "ROS_DOMAIN_ID", "CHATTERBOX_IMAGE")}
    base["JETSON_HOST_ROOT"] = str(host_root)
    base.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--manifest", str(manifest), "--image", "x", *args],
                          env=base, capture_output=True, text=True, timeout=60)


def argv_of(result) -> list:
    return shlex.split(result.stdout)


def native_mounts(argv) -> list:
    return [argv[i + 1] for i, a in enumerate(argv[:-1])
            if a == "-v" and argv[i + 1].endswith(":ro") and "params.yaml" not in argv[i + 1]]


@pytest.mark.parametrize("layout_name", sorted(LAYOUTS))
def test_layout_pairs_every_library_and_nothing_else(tmp_path, layout_name):
    layout = LAYOUTS[layout_name]
    native = build_host(tmp_path / "host", layout)
    folders, sbsa = build_image(tmp_path / "image", layout)
    manifest = tmp_path / "sbsa-manifest.tsv"
    write_manifest(manifest, folders)

    lines = [line.split("\t") for line in manifest.read_text().splitlines() if not line.startswith("#")]
    assert {Path(path): name for name, _, path in lines} == sbsa  # the generator lists exactly the SBSA files
    for name, soname, path in lines:
        assert re.fullmatch(re.escape(name) + r"\.so\.\d+", soname), (name, soname)

    result = run_script(tmp_path / "host", manifest)
    assert result.returncode == 0, result.stderr
    mounts = native_mounts(argv_of(result))
    expected = {f"{native[name]}:{path}:ro" for path, name in sbsa.items()}
    assert set(mounts) == expected
    assert len(mounts) == len(expected)  # nothing twice
    for mount in mounts:  # native sources only: the host tree's aarch64 files, resolved through the symlinks
        source = mount.split(":")[0]
        assert "/host/" in source and "sbsa" not in source and not Path(source).is_symlink()
    for name in set(sbsa.values()):
        assert name in result.stderr


def test_reference_jetpack_622_mounts(tmp_path):
    """The pairs the reference container typed in by hand (FACTS.md), found without a version in the script."""
    layout = LAYOUTS["jp6.2-cudnn9"]
    build_host(tmp_path / "host", layout)
    manifest = tmp_path / "m.tsv"
    rows = ["# ros2_chatterbox SBSA manifest v1"]
    for name, version in layout["image_cuda"].items():
        rows.append(f"{name}\t{name}.so.{version.split('.')[0]}\t/usr/local/cuda/targets/sbsa-linux/lib/{name}.so.{version}")
    for name in CUDNN9:
        rows.append(f"{name}\t{name}.so.9\t/usr/lib/aarch64-linux-gnu/{name}.so.9.5.1")
    manifest.write_text("\n".join(rows) + "\n")

    result = run_script(tmp_path / "host", manifest)
    assert result.returncode == 0, result.stderr
    host = tmp_path / "host"
    cuda = f"{host}/usr/local/cuda-12.6/targets/aarch64-linux/lib"
    expected = {
        f"{cuda}/libcublas.so.12.6.1.4:/usr/local/cuda/targets/sbsa-linux/lib/libcublas.so.12.6.4.1:ro",
        f"{cuda}/libcublasLt.so.12.6.1.4:/usr/local/cuda/targets/sbsa-linux/lib/libcublasLt.so.12.6.4.1:ro",
        f"{cuda}/libcufft.so.11.2.6.59:/usr/local/cuda/targets/sbsa-linux/lib/libcufft.so.11.3.0.4:ro",
        f"{cuda}/libcufftw.so.11.2.6.59:/usr/local/cuda/targets/sbsa-linux/lib/libcufftw.so.11.3.0.4:ro",
    } | {f"{host}/usr/lib/aarch64-linux-gnu/{n}.so.9.3.0:/usr/lib/aarch64-linux-gnu/{n}.so.9.5.1:ro" for n in CUDNN9}
    assert set(native_mounts(argv_of(result))) == expected
    assert len(expected) == 12


def test_cublas_is_not_cublaslt(tmp_path):
    """libcublasLt must never stand in for libcublas (or the reverse)."""
    layout = dict(LAYOUTS["jp6.2-cudnn9"], host_cuda={"libcublasLt": "12.6.1.4"}, host_cudnn={},
                  image_cudnn={})
    native = build_host(tmp_path / "host", layout)
    folders, sbsa = build_image(tmp_path / "image", dict(layout, image_cuda={"libcublas": "12.6.4.1",
                                                                              "libcublasLt": "12.6.4.1"}))
    manifest = tmp_path / "m.tsv"
    write_manifest(manifest, folders)

    result = run_script(tmp_path / "host", manifest)
    assert result.returncode == 3
    assert result.stdout == ""  # no command printed when a pair is missing
    assert re.search(r"libcublas: no native libcublas\.so\.12 under", result.stderr)
    assert "libcublasLt: no native" not in result.stderr

    result = run_script(tmp_path / "host", manifest, "--allow-missing")
    assert result.returncode == 0, result.stderr
    mounts = native_mounts(argv_of(result))
    lt_target = next(p for p, n in sbsa.items() if n == "libcublasLt")
    assert mounts == [f"{native['libcublasLt']}:{lt_target}:ro"]


def test_missing_cudnn_sublibrary_is_named_with_the_fix(tmp_path):
    layout = LAYOUTS["jp6.2-cudnn9"]
    build_host(tmp_path / "host", layout)
    for link in (tmp_path / "host/usr/lib/aarch64-linux-gnu").glob("libcudnn_graph.so*"):
        link.unlink()
    folders, _ = build_image(tmp_path / "image", layout)
    manifest = tmp_path / "m.tsv"
    write_manifest(manifest, folders)

    result = run_script(tmp_path / "host", manifest)
    assert result.returncode == 3
    assert "missing native libraries (1)" in result.stderr
    assert "libcudnn_graph: no native libcudnn_graph.so.9" in result.stderr
    assert "sudo apt install nvidia-cudnn" in result.stderr
    assert "--allow-missing" in result.stderr


def test_cudnn_major_mismatch_is_explained(tmp_path):
    """A cuDNN 8 host (JetPack 6.0) with an image built for cuDNN 9: every cuDNN library reported, none mounted."""
    host_layout = LAYOUTS["jp6.0-cudnn8"]
    build_host(tmp_path / "host", host_layout)
    folders, _ = build_image(tmp_path / "image", dict(host_layout, image_cudnn={n: "9.5.1" for n in CUDNN9}))
    manifest = tmp_path / "m.tsv"
    write_manifest(manifest, folders)

    result = run_script(tmp_path / "host", manifest)
    assert result.returncode == 3
    assert "libcudnn: the image needs libcudnn.so.9 but the host has only: libcudnn.so.8" in result.stderr
    assert "rebuild docker/Dockerfile.jetson" in result.stderr
    for name in CUDNN9[1:]:  # the cuDNN 9 split has no cuDNN 8 counterpart at all
        assert f"{name}: no native {name}.so.9" in result.stderr
    assert f"missing native libraries ({len(CUDNN9)})" in result.stderr  # cuBLAS/cuFFT pair fine


def test_manifest_problems(tmp_path):
    host = tmp_path / "host"
    build_host(host, LAYOUTS["jp6.2-cudnn9"])
    result = run_script(host, tmp_path / "absent.tsv")
    assert result.returncode == 4 and "cannot read manifest" in result.stderr
    bogus = tmp_path / "bogus.tsv"
    bogus.write_text("libcublas\tlibcublas.so.12\t/x\n")
    result = run_script(host, bogus)
    assert result.returncode == 4 and "header" in result.stderr
    empty = tmp_path / "empty.tsv"
    empty.write_text("# ros2_chatterbox SBSA manifest v1\n")
    result = run_script(host, empty)
    assert result.returncode == 0, result.stderr
    assert native_mounts(argv_of(result)) == []
    assert "nothing to mount" in result.stderr


@pytest.fixture
def ready(tmp_path):
    build_host(tmp_path / "host", LAYOUTS["jp6.2-cudnn9"])
    folders, _ = build_image(tmp_path / "image", LAYOUTS["jp6.2-cudnn9"])
    manifest = tmp_path / "m.tsv"
    write_manifest(manifest, folders)
    return tmp_path / "host", manifest


def test_default_command(ready):
    argv = argv_of(run_script(*ready))
    assert argv[:2] == ["docker", "run"]
    text = " ".join(argv)
    assert "--runtime nvidia" in text
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING" not in text  # the fast path's CUDA graphs need the caching allocator
    assert "--network host --ipc host" in text
    assert "-v ros2-chatterbox-voices:/voices" in text and "-v ros2-chatterbox-models:/models" in text
    assert "--device /dev/snd" not in text and "-e HF_TOKEN" not in text
    image_at = argv.index("x")
    assert argv[image_at + 1:image_at + 5] == ["ros2", "run", "ros2_chatterbox", "tts_node"]
    assert "--autostart" in argv[image_at:]
    assert argv[-4:] == ["-p", "http.host:=127.0.0.1", "-p", "http.port:=8004"]


def test_options(ready, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("/**:\n  ros__parameters:\n    http.api_key: k\n")
    voices = tmp_path / "my voices"
    result = run_script(*ready, "--sound", "--caching-allocator", "--port", "9000", "--network", "bridge",
                        "--voices", str(voices), "--models", "/srv/models", "--name", "tts", "--params", str(params),
                        "--http-host", "0.0.0.0", "--", "--memory", "6g")
    assert result.returncode == 0, result.stderr
    argv = argv_of(result)
    text = " ".join(argv)
    assert "--device /dev/snd --group-add audio" in text
    assert "PYTORCH_NO_CUDA_MEMORY_CACHING" not in text
    assert "--network bridge -p 9000:9000" in text
    assert "-e CHATTERBOX_HTTP_PORT=9000" in text
    assert f"{voices}:/voices" in argv  # a path with a space survives quoting
    assert "/srv/models:/models" in argv
    assert f"{params}:/etc/ros2_chatterbox/params.yaml:ro" in argv
    assert argv[argv.index("--name") + 1] == "tts"
    assert argv[argv.index("x") - 2:argv.index("x")] == ["--memory", "6g"]
    assert argv[-4:] == ["-p", "http.host:=0.0.0.0", "-p", "http.port:=9000"]


def test_doctor_mode(ready):
    result = run_script(*ready, "--doctor", "--detach")
    assert result.returncode == 0, result.stderr
    argv = argv_of(result)
    assert argv[-2:] == ["x", "ros2-chatterbox-doctor"]
    assert argv[argv.index("--name") + 1] == "ros2-chatterbox-doctor"
    assert "--detach" not in argv
    assert len(native_mounts(argv)) == 12  # the doctor checks the libraries the node would use


def test_hf_token_never_printed(ready, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("hf_fromfile123\n")
    result = run_script(*ready, "--hf-token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    assert "hf_fromfile123" not in result.stdout + result.stderr
    assert "-e HF_TOKEN " in result.stdout
    result = run_script(*ready, env={"HF_TOKEN": "hf_fromenv456", "ROS_DOMAIN_ID": "42"})
    assert "hf_fromenv456" not in result.stdout + result.stderr
    assert "-e HF_TOKEN " in result.stdout and "-e ROS_DOMAIN_ID " in result.stdout
    assert "hf_" not in SCRIPT.read_text()


def test_compose_override(ready, tmp_path):
    out = tmp_path / "compose.native-libs.yaml"
    result = run_script(*ready, "--compose-override", str(out))
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(out.read_text())
    assert sorted(data["services"]["ros2-chatterbox"]["volumes"]) == sorted(native_mounts(argv_of(result)))
    assert len(data["services"]["ros2-chatterbox"]["volumes"]) == 12


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unknown option"), (["--port", "http"], "must be a number"), (["--image"], "needs a value"),
    (["--hf-token-file", "/nonexistent/token"], "cannot read --hf-token-file"),
])
def test_usage_errors(ready, args, message):
    result = run_script(*ready, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_help():
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--dry-run" in result.stdout


def test_no_version_numbers_in_scripts():
    for script in (SCRIPT, GENERATOR):
        code = "\n".join(line for line in script.read_text().splitlines() if not line.lstrip().startswith("#"))
        code = code.replace("127.0.0.1", "").replace("0.0.0.0", "")  # addresses, not versions
        assert not re.search(r"\.so\.\d", code), script
        assert not re.search(r"\b\d+\.\d+\.\d+", code), script


def test_compose_and_systemd_start_chatterbox_first():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    tts = compose["services"]["ros2-chatterbox"]
    assert tts["runtime"] == "nvidia" and "healthcheck" in tts
    assert not any("PYTORCH_NO_CUDA_MEMORY_CACHING" in str(e) for e in tts["environment"])
    assert compose["services"]["whisper"]["depends_on"]["ros2-chatterbox"]["condition"] == "service_healthy"
    unit = (ROOT / "docker" / "ros2-chatterbox.service").read_text()
    for needle in ("Before=", "Restart=on-failure", "ExecStartPost=", "State.Health.Status", "WantedBy="):
        assert needle in unit, needle
