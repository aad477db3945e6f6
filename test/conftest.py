"""Shared test set-up: loopback-only discovery, a ROS domain of this test run's own, artifacts folder.

The domain: the caller's ROS_DOMAIN_ID when one is set explicitly (CBX_TEST_DOMAIN_ID, else ROS_DOMAIN_ID);
otherwise the first domain of DOMAINS whose lock file this process can lock. The lock (flock) is held until the
test run ends and released by the kernel even when the run is killed, so two test runs at once on one machine
never share a domain and never see each other's nodes.
"""
import fcntl
import os
import tempfile

# Domains 0-101 are the portable range (ports below Linux's ephemeral range); the project's own processes use
# 42 (`make run`), so tests pick from the top of the range.
DOMAINS = range(101, 49, -1)
LOCK_DIR = os.path.join(tempfile.gettempdir(), "ros2_chatterbox-test-domains")
_domain_lock = None  # the open, locked file: kept for the whole test run


def _claim_free_domain() -> str:
    global _domain_lock
    os.makedirs(LOCK_DIR, exist_ok=True)
    for domain in DOMAINS:
        f = open(os.path.join(LOCK_DIR, f"{domain}.lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _domain_lock = f
        return str(domain)
    raise RuntimeError(f"every ROS domain in {DOMAINS} is locked by another test run ({LOCK_DIR})")


# Before rclpy is imported anywhere: this run's traffic stays on this machine, in its own domain; every process
# the tests start inherits both.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_DOMAIN_ID"] = (os.environ.get("CBX_TEST_DOMAIN_ID") or os.environ.get("ROS_DOMAIN_ID")
                               or _claim_free_domain())
os.environ.setdefault("HF_HUB_OFFLINE", "1")
