#!/usr/bin/env python3
"""The ROS 2 command line's release sources, pinned: take them from a local copy or download them, and refuse any
package whose files differ from its pin.

The command line (ros2cli and its verbs) and launch system (launch, launch_ros, launch_testing, ros2launch, ...)
are not on PyPI. requirements/ros2-cli-<distro>.txt pins, per package, its ros2-gbp release repository, release
tag, commit and the sha256 of its file tree (`tree_hash`: the package as `git archive` of the tag gives it, with
its test/ and doc/ folders left out; GitHub's archive bytes are not reproducible, the files are). tools/ros2_tools.sh
installs what `fetch` leaves in DEST.

  ros2_cli_sources.py fetch --pins FILE --dest DIR [--src PATH] [--distro D]
      PATH: a .tar.gz or a folder in the ../shared/ros2-cli/ layout (ros2_cli_<distro>_src.tar.gz in it, or the
      package folders themselves); without it, https://github.com/ros2-gbp/<repo>/archive/<commit>.tar.gz
      (ROS2_CLI_URL replaces https://github.com/ros2-gbp, e.g. a file:// mirror).
      Exit 0: DEST/<package>/ holds every pinned package, verified. 1: refused (a package differs from its pin or
      is missing; DEST emptied). 3: unavailable (the download failed; the reason is the one line printed).
  ros2_cli_sources.py pin SOURCES.tar.gz
      Prints the pins for a tarball whose SOURCES.txt lists `repo tag commit` per package (to update the pins).
"""
import argparse
import hashlib
import io
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Dict, List, NamedTuple, Optional

DROPPED = ("test", "doc")  # top-level folders of a package that are not installed and not pinned
DEFAULT_URL = "https://github.com/ros2-gbp"
DOWNLOAD_TIMEOUT_S = 30  # per connection attempt and per read: an unreachable host fails within it
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024
UNAVAILABLE = 3


class Pin(NamedTuple):
    package: str
    repo: str
    tag: str
    commit: str
    tree_sha256: str


class Refused(Exception):
    """The sources are not the pinned ones (or not usable at all): never install them."""


class Unavailable(Exception):
    """No sources could be had (download failed)."""


def read_pins(path: Path) -> List[Pin]:
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5 or fields[2].split("/")[2:3] != [fields[0]]:
            raise Refused(f"{path}:{number}: expected `package repo release/<distro>/<package>/<version> commit "
                          f"tree-sha256`, got {line!r}")
        pins.append(Pin(*fields))
    if not pins:
        raise Refused(f"{path} pins no package")
    return pins


def _package_files(folder: Path) -> List[PurePosixPath]:
    """Every file of a package, relative and in byte order; test/ and doc/ left out; links refused."""
    files = []
    for path in folder.rglob("*"):
        rel = PurePosixPath(path.relative_to(folder).as_posix())
        if rel.parts[0] in DROPPED:
            continue
        if path.is_symlink():
            raise Refused(f"{folder.name}: {rel} is a link (a release tree holds only files)")
        if path.is_file():
            files.append(rel)
    return sorted(files, key=lambda p: str(p).encode())


def tree_hash(folder: Path) -> str:
    """sha256 over the package's files in byte order of their relative paths: for each, the path, NUL, the size
    in decimal, NUL, the contents. Independent of timestamps, owners, modes and archive format."""
    digest = hashlib.sha256()
    for rel in _package_files(folder):
        data = (folder / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def unpack(archive: bytes, dest: Path) -> Path:
    """Unpack a .tar.gz holding regular files and folders only (no links, no absolute or `..` paths); returns
    its single top folder when it has one (GitHub's `<repo>-<commit>/`), else dest."""
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise Refused(f"archive member {member.name!r} points outside the archive")
                target = dest.joinpath(*name.parts) if name.parts else dest
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    assert source is not None
                    target.write_bytes(source.read())
                    if member.mode & 0o111:
                        target.chmod(0o755)
                elif member.type != tarfile.XGLTYPE and member.type != tarfile.XHDTYPE:
                    raise Refused(f"archive member {member.name!r} is not a file or folder")
    except (tarfile.TarError, OSError, EOFError) as error:
        raise Refused(f"not a readable .tar.gz: {error}") from error
    entries = [p for p in dest.iterdir() if p.name != "pax_global_header"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else dest


def _copy_package(src: Path, dest: Path) -> None:
    for rel in _package_files(src):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)


def _local_root(src: Path, distro: str, scratch: Path) -> Path:
    """The folder that holds the package folders, from a .tar.gz, a folder with the distro's tarball, or the
    package folders themselves."""
    if src.is_dir():
        tarball = src / f"ros2_cli_{distro}_src.tar.gz"
        if not tarball.is_file():
            return src
        src = tarball
    if not src.is_file():
        raise Refused(f"ROS2_CLI_SRC={src}: no such file or folder")
    return unpack(src.read_bytes(), scratch)


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            data = response.read(MAX_ARCHIVE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise Unavailable(f"the download of {url} failed: {reason}") from error
    if len(data) > MAX_ARCHIVE_BYTES:
        raise Refused(f"{url} is larger than {MAX_ARCHIVE_BYTES} bytes")
    return data


def fetch(pins: List[Pin], dest: Path, src: Optional[Path] = None, distro: str = "",
          base_url: str = DEFAULT_URL) -> str:
    """Fill dest/<package>/ with every pinned package, each verified against its tree hash; returns where the
    sources came from. Raises Refused (dest emptied) or Unavailable."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory(prefix="ros2-cli-src-") as scratch:
            root = _local_root(src, distro, Path(scratch)) if src is not None else None
            for pin in pins:
                if root is not None:
                    package = root / pin.package
                    if not package.is_dir():
                        raise Refused(f"{src} holds no {pin.package}/ (neither ros2_cli_{distro}_src.tar.gz nor the "
                                      f"package folders of requirements/ros2-cli-{distro}.txt)")
                else:
                    unpacked = Path(scratch) / pin.package
                    unpacked.mkdir()
                    package = unpack(_download(f"{base_url}/{pin.repo}/archive/{pin.commit}.tar.gz"), unpacked)
                _copy_package(package, dest / pin.package)
                found = tree_hash(dest / pin.package)
                if found != pin.tree_sha256:
                    raise Refused(f"{pin.package}: its files differ from its pinned release (tag {pin.tag}, commit "
                                  f"{pin.commit[:12]}): tree sha256 {found[:16]}..., pinned "
                                  f"{pin.tree_sha256[:16]}...")
    except (Refused, Unavailable):
        shutil.rmtree(dest)
        dest.mkdir()
        raise
    return str(src) if src is not None else f"{base_url}/<repo>/archive/<commit>.tar.gz"


def pins_for(tarball: Path) -> List[Pin]:
    with tempfile.TemporaryDirectory(prefix="ros2-cli-pin-") as scratch:
        root = unpack(tarball.read_bytes(), Path(scratch))
        sources: Dict[str, tuple] = {}
        for line in (root / "SOURCES.txt").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                repo, tag, commit = line.split()
                sources[tag.split("/")[2]] = (repo.split("/")[-1], tag, commit)
        return [Pin(name, repo, tag, commit, tree_hash(root / name)) for name, (repo, tag, commit) in sources.items()]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("fetch", help="the pinned sources into --dest, verified")
    get.add_argument("--pins", type=Path, required=True)
    get.add_argument("--dest", type=Path, required=True)
    get.add_argument("--src", type=Path, help="a local copy (folder or .tar.gz); default: download")
    get.add_argument("--distro", default="", help="picks ros2_cli_<distro>_src.tar.gz in a --src folder")
    pin = verbs.add_parser("pin", help="print the pins for a sources tarball with SOURCES.txt")
    pin.add_argument("tarball", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.verb == "pin":
            for p in pins_for(args.tarball):
                print(" ".join(p))
            return 0
        pins = read_pins(args.pins)
        origin = fetch(pins, args.dest, args.src, args.distro, os.environ.get("ROS2_CLI_URL") or DEFAULT_URL)
    except Refused as error:
        print(f"[setup] refused the ROS 2 command line sources: {error}", file=sys.stderr)
        return 1
    except Unavailable as error:
        print(error)
        return UNAVAILABLE
    print(f"[setup] {len(pins)} ROS 2 command line packages from {origin}, each equal to its pin in {args.pins.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
