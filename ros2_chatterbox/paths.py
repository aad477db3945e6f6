"""Where things live: the source checkout or installed share folder, the user's data folder, the voices folders and
the package's parameter file. Nothing here imports another module of the package.

Voices: the package ships reference content in `voices/` (read-only: a checkout's tracked folder, or the installed
share folder); voices a user adds (uploads, `voices/add`) go to the user's data folder, never into the checkout.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def source_checkout() -> Optional[Path]:
    """The repository folder when running from a checkout (config/params.yaml beside the package), else None."""
    src = Path(__file__).resolve().parent.parent
    return src if (src / "config" / "params.yaml").exists() and (src / "package.xml").exists() else None


def package_share() -> Path:
    """Folder with config/, voices/, launch/: the source checkout, the installed ROS share folder, or (pip install)
    `<prefix>/share/ros2_chatterbox`."""
    src = source_checkout()
    if src is not None:
        return src
    try:  # installed by colcon / the venv set-up
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory("ros2_chatterbox"))
    except Exception:  # noqa: BLE001 - no ament index (pip install .): setup.py's data_files prefix
        import site
        import sys
        for prefix in (sys.prefix, site.getuserbase()):  # `pip install .` / `pip install --user .`
            share = Path(prefix) / "share" / "ros2_chatterbox"
            if (share / "config" / "params.yaml").exists():
                return share
        return Path(sys.prefix) / "share" / "ros2_chatterbox"


def user_data_dir() -> Path:
    """Per-user data folder (XDG): $XDG_DATA_HOME/ros2_chatterbox, default ~/.local/share/ros2_chatterbox."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ros2_chatterbox"


def default_voices_dir() -> Path:
    """Where added voices go when voices_dir is '': the user's data folder, from a checkout as for an installed
    package (a checkout holds only what the repository ships; an installed share folder is not writable by the
    user; uploads must survive reinstalls and fresh clones)."""
    return user_data_dir() / "voices"


def shipped_voices_dir() -> Path:
    """The package's own voices/ folder (checkout or installed share): read-only reference content."""
    return package_share() / "voices"


def default_params_file() -> Optional[Path]:
    """The package's parameter file (checkout or installed), or None when it cannot be found."""
    path = package_share() / "config" / "params.yaml"
    return path if path.exists() else None
