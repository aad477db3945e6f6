"""bench/bench_turbo.py runs end to end on CPU with the tiny checkpoint and writes its JSON and table."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optional import requires

pytestmark = requires("torch", "chatterbox", hint="make setup")

REPO = Path(__file__).resolve().parents[1]


def test_bench_tiny_smoke(tmp_path):
    out = tmp_path / "bench"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_turbo.py"), "--tiny", "--out", str(out),
                           "--lengths", "12,30"], cwd=str(REPO), env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    assert doc["mode"] == "tiny" and doc["device"] == "cpu"
    assert not doc["errors"], doc["errors"]
    rows = {(r["impl"], r["tokens"]): r for r in doc["rows"]}
    assert set(rows) == {("upstream", 12), ("upstream", 30), ("fast", 12), ("fast", 30)}
    for r in rows.values():
        assert r["ms_per_token"] > 0 and r["e2e_s"] > 0 and r["rtf"] > 0 and r["first_audio_s"] > 0
        assert abs(r["audio_s"] - (r["tokens"] + 3) * 0.04) < 0.05  # exact token counts (+3 silence tokens)
    assert doc["load_s"] > 0 and doc["cond_cold_s"] > 0 and doc["prompt_tokens"] == 375
    eq = doc["equality"]
    assert eq and all(e["equal"] and e["sampling_reproducible"] for e in eq)
    md = (out / "bench.md").read_text()
    assert "| upstream | fp32 |" in md and "| fast | fp32 |" in md and doc["command"] in md


def test_s3gen_graphs_bench_tiny_smoke(tmp_path):
    """bench/s3gen_graphs.py on the CPU: the static decoder (no capture) against the eager one, per step."""
    out = tmp_path / "s3g.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "s3gen_graphs.py"), "--tiny", "--out", str(out),
                           "--pieces", "20,60", "--reps", "1", "--flows", "float32"], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"]["float32"]
    assert [q["tokens"] for q in run["quality"]] == [20, 60]
    assert all(q["same_length"] and q["same_seed_same_audio"] and q["snr_db"] >= 40 for q in run["quality"])
    assert set(run["timing"]["60"]) == {"eager", "graphs"} and run["counts"]["flow_static"] > 0
