"""Chatterbox-Nano (parameter `model: nano`): a tiny checkpoint in Nano's layout (t3_nano_v1.safetensors, a
GPT-2-small-shaped T3) loads through the real loading path and speaks, through the engine and through the node
(ROS service, HTTP status surfaces); a folder holding the other model's T3 file fails with the file's name and the
parameter to change. FastT3's equality on the Nano-shaped T3 is in test_turbo_fast.py."""
import threading

import httpx
import numpy as np
import pytest

from ros_helpers import NodeProcess, RosClient, free_port
from turbo_fixtures import (copy_checkpoint, joined, require_chatterbox, speak, tiny_ckpt,  # noqa: F401
                            turbo_config)

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def nano_ckpt(tmp_path_factory):
    require_chatterbox()
    import torch
    torch.set_num_threads(1)
    from ros2_chatterbox.engines.chatterbox.tiny_checkpoint import build_tiny_checkpoint
    folder = tmp_path_factory.mktemp("tiny_nano")
    build_tiny_checkpoint(folder, seed=0, with_conds=True, model="nano")
    return folder


@pytest.fixture(scope="module")
def nano_engine(nano_ckpt):
    from ros2_chatterbox.engines import create_engine
    engine = create_engine("chatterbox_turbo", turbo_config(nano_ckpt, model="nano"))
    engine.load()
    yield engine
    engine.unload()


def test_nano_checkpoint_has_nanos_files(nano_ckpt):
    names = {p.name for p in nano_ckpt.iterdir()}
    assert "t3_nano_v1.safetensors" in names and "t3_turbo_v1.safetensors" not in names
    assert {"ve.safetensors", "s3gen_meanflow.safetensors", "vocab.json", "merges.txt", "conds.pt"} <= names


def test_nano_loads_a_gpt2_small_shaped_t3_and_speaks(nano_engine):
    from chatterbox.models.t3 import llama_configs
    t3 = nano_engine._model.t3
    assert (t3.cfg.n_layer, t3.cfg.n_embd, t3.cfg.n_head) == (3, 96, 3)   # the tiny Nano layout
    assert "GPT2_small" not in llama_configs.LLAMA_CONFIGS                 # upstream's table left as it was
    info = nano_engine.info()
    assert info.model == "chatterbox-nano" and info.model_name == "Chatterbox-Nano"
    assert info.hub_repo == "ResembleAI/chatterbox-nano"
    assert info.fast_path.active, info.fast_path.reason
    audio = joined(speak(nano_engine, "Hello from the tiny Nano [laugh].", seed=5))
    assert audio.size > 0 and np.abs(audio).max() > 0
    again = joined(speak(nano_engine, "Hello from the tiny Nano [laugh].", seed=5))
    assert np.array_equal(audio, again)


def test_turbo_parameter_on_a_nano_folder_names_the_file_and_the_parameter(nano_ckpt):
    from ros2_chatterbox.engine import EngineLoadError
    from ros2_chatterbox.engines import create_engine
    engine = create_engine("chatterbox_turbo", turbo_config(nano_ckpt))  # model defaults to turbo
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    msg = str(err.value)
    assert "t3_nano_v1.safetensors" in msg and "t3_turbo_v1.safetensors" in msg
    assert "set the parameter model to 'nano'" in msg
    assert not engine.loaded


def test_nano_parameter_on_a_turbo_folder_names_the_file_and_the_parameter(tiny_ckpt):  # noqa: F811
    from ros2_chatterbox.engine import EngineLoadError
    from ros2_chatterbox.engines import create_engine
    engine = create_engine("chatterbox_turbo", turbo_config(tiny_ckpt, model="nano"))
    with pytest.raises(EngineLoadError) as err:
        engine.load()
    msg = str(err.value)
    assert "t3_turbo_v1.safetensors" in msg and "set the parameter model to 'turbo'" in msg
    assert "ResembleAI/chatterbox-nano" in msg


def test_renamed_t3_file_of_the_other_width_is_named(tmp_path):
    """A real (not tiny) folder whose t3_turbo_v1.safetensors holds a 768-wide T3 (Nano's, renamed)."""
    import torch
    from safetensors.torch import save_file
    from ros2_chatterbox.engines.chatterbox import models
    save_file({"speech_emb.weight": torch.zeros(6563, 768, dtype=torch.int8)},
              str(tmp_path / "t3_turbo_v1.safetensors"))
    msg = models.wrong_model_message(tmp_path, models.MODELS["turbo"])
    assert "Chatterbox-Nano's T3 (768 wide" in msg and "rename it to t3_nano_v1.safetensors" in msg
    assert "set the parameter model to 'nano'" in msg
    assert models.wrong_model_message(tmp_path, models.MODELS["turbo"], tiny=True) is None


def test_model_parameter_values_and_hub_repository():
    from ros2_chatterbox.settings import SETTINGS
    from ros2_chatterbox.engines.chatterbox import models
    from ros2_chatterbox.engines.chatterbox.checkpoint import resolve_repo
    setting = next(s for s in SETTINGS if s.name == "model")
    assert setting.default == "turbo" and setting.choices == ("turbo", "nano") and setting.stage == "configure"
    assert models.model_spec(" Nano ").name == "nano" and models.model_spec("chatterbox-turbo").name == "turbo"
    with pytest.raises(ValueError, match="turbo, nano"):
        models.model_spec("large")
    nano = models.MODELS["nano"]
    assert resolve_repo("ResembleAI/chatterbox-turbo", nano) == "ResembleAI/chatterbox-nano"  # the default follows
    assert resolve_repo("", nano) == "ResembleAI/chatterbox-nano"
    assert resolve_repo("me/my-mirror", nano) == "me/my-mirror"


def test_unknown_model_fails_configure_clearly(nano_ckpt):
    from ros2_chatterbox.engine import EngineLoadError
    from ros2_chatterbox.engines import create_engine
    with pytest.raises(EngineLoadError, match="model must be one of turbo, nano, not 'large'"):
        create_engine("chatterbox_turbo", turbo_config(nano_ckpt, model="large")).load()


def test_model_nano_alone_fetches_nanos_repository_from_the_cache(nano_ckpt, tmp_path, monkeypatch):
    """model: nano, no model_dir, hub_repo left at its default: ResembleAI/chatterbox-nano, from the hub cache."""
    from ros2_chatterbox.engines import create_engine
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_dir = tmp_path / "hub" / "models--ResembleAI--chatterbox-nano"
    copy_checkpoint(nano_ckpt, repo_dir / "snapshots" / ("0" * 40))
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0" * 40)
    engine = create_engine("chatterbox_turbo", turbo_config("", model="nano", hub_cache_dir=str(tmp_path / "hub"),
                                                            fast_path=False))
    engine.load()
    try:
        assert engine.info().model_source == "hub:ResembleAI/chatterbox-nano"
        assert joined(speak(engine, "Hello.", seed=3)).size > 0
    finally:
        engine.unload()


# ------------------------------------------------------------------------------------------------ through the node
def test_node_speaks_with_nano_and_names_the_model(nano_ckpt):
    from diagnostic_msgs.msg import DiagnosticArray
    require_chatterbox()
    client = RosClient("nano_node")
    client.subscribe_outputs("/nano")
    port = free_port()
    got_model = threading.Event()

    def on_diag(msg):
        for st in msg.status:
            values = {kv.key: kv.value for kv in st.values}
            if values.get("model") == "chatterbox-nano":
                got_model.set()

    sub = client.node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    proc = NodeProcess({"engine": "chatterbox_turbo", "model": "nano", "model_dir": str(nano_ckpt),
                        "device": "cpu", "cpu_threads": 1, "http.port": port, "audio.realtime": False},
                       name="nano", namespace="/nano")
    try:
        assert proc.wait_for_log("active: ready to speak", 240), proc.output()
        res = client.speak("Hello from Nano over ROS.", ns="/nano", timeout=120)
        assert res.success, res.message
        assert res.sample_rate == 24000 and res.duration > 0
        assert client.wait_until(lambda: abs(client.audio_seconds(24000) - res.duration) < 1e-3, 10)
        base = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{base}/health/ready", timeout=10)
        assert ready.status_code == 200 and ready.json()["model"] == "chatterbox-nano"
        info = httpx.get(f"{base}/api/model-info", timeout=10).json()
        assert info["model"] == "chatterbox-nano" and info["hub_repo"] == "ResembleAI/chatterbox-nano"
        ids = [m["id"] for m in httpx.get(f"{base}/v1/models", timeout=10).json()["data"]]
        assert {"chatterbox", "chatterbox-turbo", "chatterbox-nano"} <= set(ids)
        r = httpx.post(f"{base}/v1/audio/speech", timeout=120, json={
            "model": "chatterbox-nano", "input": "And over HTTP.", "voice": "alloy", "response_format": "wav"})
        assert r.status_code == 200 and r.content[:4] == b"RIFF"
        assert got_model.wait(30), "no /diagnostics status named the model"
    finally:
        client.node.destroy_subscription(sub)
        proc.stop()
        client.close()
