"""Containers never publish an unauthenticated API (issue 11, attack 5): the images' command binds 0.0.0.0, so the
entry point generates a key once (printed once, kept in the /models volume, mode 600) unless one is given, and the
node refuses a LAN bind without a key. The entry point's functions run here with bash, without Docker."""
from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from ros2_chatterbox.http import security
from ros2_chatterbox.http.server import HttpServer
from ros2_chatterbox.params_file import load_params_file
from ros2_chatterbox.settings import HttpSettings

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
DOCKERFILES = sorted(p for p in (ROOT / "docker").glob("Dockerfile.*") if p.suffix != ".dockerignore")
IMAGE_CMD = ["ros2", "run", "ros2_chatterbox", "tts_node", "--autostart", "--ros-args",
             "--params-file", "/etc/ros2_chatterbox/params.yaml", "-p", "http.host:=0.0.0.0"]


def ensure_api_key(args, store: Path, **env):
    """Run the entry point's ensure_api_key; (CHATTERBOX_API_KEY_FILE it exports or '', stderr)."""
    script = f'source "{ENTRYPOINT}" && ensure_api_key "$@" && printf %s "${{CHATTERBOX_API_KEY_FILE:-}}"'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CHATTERBOX_API_KEY")}
    out = subprocess.run(["bash", "-c", script, "entrypoint", *args], capture_output=True, text=True, timeout=30,
                         env={**clean, "CHATTERBOX_API_KEY_STORE": str(store), **env})
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr


def test_images_still_bind_beyond_loopback():
    """The reason for the key: each image's command publishes the API on every interface of the container."""
    for dockerfile in DOCKERFILES:
        assert "http.host:=0.0.0.0" in dockerfile.read_text(), dockerfile.name


def test_generated_key_is_printed_once_and_kept_private(tmp_path):
    store = tmp_path / "models" / "ros2_chatterbox_api_key"
    exported, said = ensure_api_key(IMAGE_CMD, store)
    assert exported == str(store)
    key = store.read_text().strip()
    assert len(key) >= 32 and re.fullmatch(r"[A-Za-z0-9_=-]+", key)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert f"Bearer {key}" in said
    again, said_again = ensure_api_key(IMAGE_CMD, store)
    assert again == str(store) and store.read_text().strip() == key and said_again == ""  # printed once
    assert security.resolve_api_key(HttpSettings(), {security.API_KEY_FILE_ENV: exported}) == key


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_commands_need_no_generated_key(tmp_path, host):
    store = tmp_path / "key"
    assert ensure_api_key([*IMAGE_CMD, "-p", f"http.host:={host}"], store) == ("", "")
    assert not store.exists()


def test_a_given_key_or_an_explicit_opt_out_generates_nothing(tmp_path):
    store = tmp_path / "key"
    assert ensure_api_key(IMAGE_CMD, store, CHATTERBOX_API_KEY="mine")[0] == ""
    assert ensure_api_key(IMAGE_CMD, store, CHATTERBOX_API_KEY_FILE="/run/secrets/key")[0] == "/run/secrets/key"
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    http:\n      allow_unauthenticated_lan: true\n")
    cmd = [a if a != "/etc/ros2_chatterbox/params.yaml" else str(params) for a in IMAGE_CMD]
    assert ensure_api_key(cmd, store)[0] == ""
    assert not store.exists()


def test_container_defaults_refuse_an_open_lan_bind(tmp_path, monkeypatch):
    """docker/params.yaml with the images' http.host and no key: the node's HTTP server does not start."""
    settings = load_params_file(str(ROOT / "docker" / "params.yaml")).http
    assert settings.api_key == "" and settings.allow_unauthenticated_lan is False
    server = HttpServer(core=None, settings=settings, host="0.0.0.0", port=0)  # the images' -p http.host:=0.0.0.0
    monkeypatch.delenv(security.API_KEY_ENV, raising=False)
    monkeypatch.delenv(security.API_KEY_FILE_ENV, raising=False)
    with pytest.raises(RuntimeError, match="without an API key"):
        server.bind()
    key_file = tmp_path / "key"
    key_file.write_text("generated\n")
    monkeypatch.setenv(security.API_KEY_FILE_ENV, str(key_file))  # what the entry point hands over
    assert server._checked_api_key() == "generated"
