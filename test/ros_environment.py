"""The ROS environment of the test run and of every process it starts, whatever the user's shell holds.

A shell set up for a robot holds ROS variables of its own: ROS_LOCALHOST_ONLY=1 (common on Humble machines; Jazzy's
rcl prints a deprecation warning for it into every command's output), the ROS_DOMAIN_ID where the user's nodes run
(`make run`'s 42, say), an RMW_IMPLEMENTATION this interpreter lacks, ROS_AUTOMATIC_DISCOVERY_RANGE or
ROS_STATIC_PEERS that reach other machines, an AMENT_PREFIX_PATH of another workspace. The tests set what they need:
- discovery on this machine only: ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, without ROS_LOCALHOST_ONLY and
  ROS_STATIC_PEERS;
- a ROS domain of this test run's own (claim_domain);
- RMW_IMPLEMENTATION: the user's when it is a DDS implementation installed here, else the default;
- AMENT_PREFIX_PATH: this interpreter's prefix (where the pip-only set-up installs the package) and the checkout's
  own prefixes (the test-only ROS 2 tools in build/) first, the user's other entries after them.
ROS_DISTRO is left as it is: nothing the tests run reads it but error messages.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
# Domains 0-101 are the portable range (ports below Linux's ephemeral range); the project's own processes use
# 42 (`make run`), so tests pick from the top of the range.
DOMAINS = range(101, 49, -1)
LOCK_DIR = os.path.join(tempfile.gettempdir(), "ros2_chatterbox-test-domains")
# RMW implementations the tests run on: DDS ones, which discover peers on loopback by themselves (rmw_zenoh_cpp,
# for one, needs a router running)
KNOWN_RMWS = ("rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp", "rmw_cyclonedds_cpp", "rmw_connextdds")
_locks: List[object] = []  # the open, locked domain files: held until the test run ends


def ament_prefix_path(current: str) -> str:
    """AMENT_PREFIX_PATH with this interpreter's prefix and the checkout's own prefixes first."""
    entries = [p for p in current.split(os.pathsep) if p]
    ours = [p for p in entries if Path(p).resolve().is_relative_to(ROOT)]
    if (Path(sys.prefix) / "share" / "ament_index").is_dir():
        ours.append(sys.prefix)
    first = list(dict.fromkeys(ours))
    return os.pathsep.join(first + [p for p in entries if p not in first])


def rmw_installed(name: str, prefixes: str) -> bool:
    return any((Path(p) / "share" / "ament_index" / "resource_index" / "rmw_typesupport" / name).exists()
               for p in prefixes.split(os.pathsep) if p)


def cleaned(environ: Mapping[str, str]) -> Tuple[Dict[str, str], List[str]]:
    """A copy of `environ` with the ROS variables the tests need (the domain aside); and a note for each variable
    of the caller's that was changed."""
    env = dict(environ)
    notes = []
    for name in ("ROS_LOCALHOST_ONLY", "ROS_STATIC_PEERS"):
        if env.pop(name, None) is not None:
            notes.append(f"{name} from your shell is not used (discovery stays on this machine)")
    if env.get("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST") != "LOCALHOST":
        notes.append(f"ROS_AUTOMATIC_DISCOVERY_RANGE={env['ROS_AUTOMATIC_DISCOVERY_RANGE']} from your shell is "
                     "not used: LOCALHOST")
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["AMENT_PREFIX_PATH"] = ament_prefix_path(env.get("AMENT_PREFIX_PATH", ""))
    rmw = env.get("RMW_IMPLEMENTATION")
    if rmw is not None and not (rmw in KNOWN_RMWS and rmw_installed(rmw, env["AMENT_PREFIX_PATH"])):
        del env["RMW_IMPLEMENTATION"]
        notes.append(f"RMW_IMPLEMENTATION={rmw} from your shell is not used ("
                     + ("not installed here" if rmw in KNOWN_RMWS else f"the tests run on {', '.join(KNOWN_RMWS)}")
                     + "): the default RMW")
    return env, notes


def participants_on(domain: int, indexes: int = 32) -> bool:
    """Whether a DDS participant on this machine uses `domain`: RTPS gives participant i of domain d the discovery
    unicast port 7400 + 250 d + 10 + 2 i, which Fast DDS (the default RMW) binds exclusively. (An RMW that picks
    ephemeral ports, as Cyclone DDS does by default, goes unseen.)"""
    base = 7400 + 250 * domain + 10
    for port in range(base, base + 2 * indexes, 2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return True
    return False


def _lock(domain: int) -> bool:
    """Lock `domain` for this test run (flock: released by the kernel even when the run is killed)."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    f = open(os.path.join(LOCK_DIR, f"{domain}.lock"), "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return False
    _locks.append(f)
    return True


def _domain(value: Optional[str]) -> Optional[int]:
    try:
        domain = int(value or "")
    except ValueError:
        return None
    return domain if 0 <= domain <= 232 else None


def claim_domain(environ: Mapping[str, str]) -> Tuple[str, str]:
    """This test run's ROS domain and how it was chosen.

    CBX_TEST_DOMAIN_ID, when set, is taken as it is. A ROS_DOMAIN_ID from the shell is taken when no other test run
    holds it and no process on this machine has a participant in it (it is often the domain of the user's own
    robot: the tests' nodes and theirs would answer each other's calls). Otherwise: the first domain of DOMAINS that
    no other test run holds and no participant on this machine uses."""
    explicit = environ.get("CBX_TEST_DOMAIN_ID", "")
    if explicit:
        if _domain(explicit) is None:
            raise RuntimeError(f"CBX_TEST_DOMAIN_ID={explicit!r} is not a ROS domain (0-232)")
        _lock(int(explicit))
        return explicit, "CBX_TEST_DOMAIN_ID"
    why = ""
    if environ.get("ROS_DOMAIN_ID"):
        user = _domain(environ["ROS_DOMAIN_ID"])
        if user is None:
            why = f"ROS_DOMAIN_ID={environ['ROS_DOMAIN_ID']!r} from your shell is not a ROS domain"
        elif participants_on(user):
            why = f"ROS_DOMAIN_ID={user} from your shell is in use on this machine"
        elif not _lock(user):
            why = f"ROS_DOMAIN_ID={user} from your shell is held by another test run"
        else:
            return str(user), "ROS_DOMAIN_ID from your shell"
    for domain in DOMAINS:
        if not participants_on(domain) and _lock(domain):
            return str(domain), (why + "; " if why else "") + "free, locked for this run (CBX_TEST_DOMAIN_ID=N picks one)"
    raise RuntimeError(f"every ROS domain in {DOMAINS} is locked by another test run ({LOCK_DIR}) or in use")


def set_up(environ=os.environ) -> List[str]:
    """Give `environ` (this process's environment: before rclpy is imported) the test run's ROS variables; the
    lines that say what was chosen or changed."""
    env, notes = cleaned(environ)
    domain, how = claim_domain(environ)
    env["ROS_DOMAIN_ID"] = domain
    for name in set(environ) - set(env):
        del environ[name]
    environ.update(env)
    return [f"ROS domain {domain} ({how}), discovery on this machine only"] + notes
