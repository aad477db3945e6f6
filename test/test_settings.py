"""The settings table: one default per value, typed frozen objects per component, params.yaml generated from it."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from ros2_chatterbox import params_file as pf
from ros2_chatterbox import paths
from ros2_chatterbox import settings as st

ROOT = Path(__file__).resolve().parent.parent


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_params_yaml_is_generated_from_the_table():
    assert (ROOT / "config" / "params.yaml").read_text() == pf.render_params_yaml(), \
        "run tools/write_params_yaml.py after changing ros2_chatterbox/settings.py"


def test_params_yaml_lists_every_setting_with_its_default():
    data = yaml.safe_load((ROOT / "config" / "params.yaml").read_text())
    assert _flat(data["/**"]["ros__parameters"]) == st.defaults()
    assert "frame_id" in st.defaults()


def test_each_component_gets_its_defaults_from_the_table():
    s = st.Settings()
    for setting in st.SETTINGS:
        assert getattr(getattr(s, setting.group), setting.attr) == setting.default, setting.name
    assert s.values() == st.defaults()


def test_components_are_frozen():
    s = st.Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.http.port = 1  # type: ignore[misc]


def test_with_values_validates_and_keeps_unchanged_components():
    s = st.Settings()
    t = s.with_values({"generation.temperature": 0.5, "http.chunk_ms": 40})
    assert t.generation.temperature == 0.5 and t.http.chunk_ms == 40
    assert t.engine is s.engine and t.core is s.core and t.ros is s.ros
    assert s.generation.temperature == 0.8  # the old object is untouched
    with pytest.raises(st.ConfigError, match="above its maximum"):
        s.with_values({"generation.temperature": 9.0})
    with pytest.raises(st.ConfigError, match="unknown setting"):
        s.with_values({"no.such": 1})


def test_http_and_ros_chunking_are_separate_settings():
    s = st.Settings().with_values({"audio.chunk_ms": 20})
    assert s.ros.audio_chunk_ms == 20 and s.http.chunk_ms == st.SETTINGS_BY_NAME["http.chunk_ms"].default


def test_check_coerces_and_refuses():
    assert st.check("hub_timeout_s", 5) == 5.0
    for name, bad in (("queue.max_size", True), ("queue.max_size", 1.5), ("audio.realtime", 1),
                      ("queue.policy", "loud"), ("hub_timeout_s", float("nan"))):
        with pytest.raises(st.ConfigError):
            st.check(name, bad)


def test_generation_overrides_are_range_checked():
    g = st.GenerationSettings()
    assert g.with_overrides({"temperature": 1, "seed": None}).temperature == 1.0
    with pytest.raises(st.ConfigError):
        g.with_overrides({"top_p": 2.0})
    with pytest.raises(st.ConfigError, match="unknown generation setting"):
        g.with_overrides({"loudness": 1})


def test_engine_settings_from_parameter_values_and_token_cap():
    e = st.Settings.from_values({"voice_cache.max_voices": 3, "speech_tokens.max": 400}).engine
    assert e.voice_cache_max_voices == 3
    assert st.EngineSettings.from_values({"voice_cache.max_voices": 3, "speech_tokens.max": 400, "http.port": 1}) == e
    assert e.max_tokens_for("hi") == 150 + 12
    assert e.max_tokens_for("x" * 1000) == 400


def test_read_params_file_merges_sections(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("/**:\n  ros__parameters:\n    queue: {max_size: 3}\n    http: {port: 9000}\n"
                 "tts_node:\n  ros__parameters:\n    http: {port: 9001}\n    not_a_setting: 1\n")
    s = pf.load_params_file(str(p))
    assert s.core.queue_max_size == 3 and s.http.port == 9001
    p.write_text("/**:\n  ros__parameters:\n    queue: {max_size: 0}\n")
    with pytest.raises(st.ConfigError, match="below its minimum"):
        pf.load_params_file(str(p))


def test_stages():
    by = st.SETTINGS_BY_NAME
    assert by["autostart"].read_only and by["autostart"].stage == st.START
    assert by["queue.max_size"].stage == st.CONFIGURE and not by["queue.max_size"].read_only
    assert by["generation.temperature"].stage == st.RUNTIME


def test_user_places_follow_xdg(monkeypatch, tmp_path):
    """Added voices go to the user's data folder, from a checkout as for an installed package; the checkout's
    voices/ is the package's shipped, read-only folder."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert paths.user_data_dir() == tmp_path / "ros2_chatterbox"
    assert paths.source_checkout() == ROOT
    assert paths.default_voices_dir() == tmp_path / "ros2_chatterbox" / "voices"
    assert paths.shipped_voices_dir() == ROOT / "voices"
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    assert paths.default_voices_dir() == tmp_path / "ros2_chatterbox" / "voices"


def test_a_pip_install_finds_its_installed_parameter_file(monkeypatch, tmp_path):
    """`pip install .` puts config/params.yaml under <prefix>/share/ros2_chatterbox (setup.py data_files)."""
    import sys
    share = tmp_path / "share" / "ros2_chatterbox" / "config"
    share.mkdir(parents=True)
    (share / "params.yaml").write_text(pf.render_params_yaml())
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    monkeypatch.setitem(sys.modules, "ament_index_python.packages", None)  # no ROS on this host
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert paths.default_params_file() == share / "params.yaml"
    assert pf.load_params_file(str(paths.default_params_file())) == st.Settings()


def test_each_description_names_the_component_that_reads_it():
    """A setting's name does not always say its owner (audio.sentence_pause_ms is the core's, audio.chunk_ms the ROS
    door's, autostart has no prefix): its descriptor and params.yaml say it."""
    by = st.SETTINGS_BY_NAME
    assert st.describe(by["audio.sentence_pause_ms"]).startswith("[core] Silence inserted between sentences")
    assert st.describe(by["audio.chunk_ms"]).startswith("[ros] ")
    assert st.describe(by["autostart"]).startswith("[ros] ")
    text = (ROOT / "config" / "params.yaml").read_text()
    assert "      # [core] Silence inserted between sentences (ms). [0 .. 2000]\n      sentence_pause_ms: 120" in text
    for s in st.SETTINGS:
        assert f"[{s.group}] " in text, s.name


def test_engines_are_listed_once():
    """The engine parameters' choices are the registry's names: a new engine is one row in engines/registry.py."""
    from ros2_chatterbox.engines import REGISTRY, create_engine  # noqa: F401 - the registry's package imports
    assert st.SETTINGS_BY_NAME["engine"].choices == tuple(REGISTRY)
    assert st.SETTINGS_BY_NAME["fallback_engine"].choices == ("",) + tuple(REGISTRY)


def test_settings_import_no_engine(tmp_path):
    """Reading the settings imports no engine module (nor torch): a fresh interpreter shows it."""
    import subprocess
    import sys
    code = ("import sys; import ros2_chatterbox.settings as s, ros2_chatterbox.params_file; "
            "print(sorted(m for m in sys.modules if m.startswith('ros2_chatterbox.engines') or m == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['ros2_chatterbox.engines', 'ros2_chatterbox.engines.registry']"


def test_language_is_a_generation_setting_spelled_one_way():
    """`language` (CONTRACT.md's parameter name) belongs to the generation settings: 'FR' and 'fr-FR' are fr, ''
    is the model's default, an unknown code is refused naming the codes; a request may override it."""
    assert st.SETTINGS_BY_NAME["language"].group == "generation" and st.GenerationSettings().language == ""
    assert st.check("language", "FR") == "fr" and st.check("language", " fr-FR ") == "fr"
    assert st.check("language", "") == ""
    assert st.Settings().with_values({"language": "pt_BR"}).generation.language == "pt"
    with pytest.raises(st.ConfigError, match="supported: ar, da, de"):
        st.check("language", "klingon")
    with pytest.raises(st.ConfigError):
        st.check("language", 3)
    assert st.GenerationSettings().with_overrides({"language": "DE"}).language == "de"
    assert st.setting_for("generation", "language").name == "language"
    assert st.setting_for("generation", "top_p").name == "generation.top_p"
