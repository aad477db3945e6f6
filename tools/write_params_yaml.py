"""Write config/params.yaml from the settings table (ros2_chatterbox/settings.py), every parameter commented.

Run after adding a setting: .venv/bin/python tools/write_params_yaml.py  (test_settings checks they agree).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ros2_chatterbox.params_file import render_params_yaml  # noqa: E402

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "config" / "params.yaml"
    out.write_text(render_params_yaml())
    print("wrote", out)
