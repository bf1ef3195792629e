"""The example scripts run as their docstrings show (with the smallest settings)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_hf_trainer_example_runs(tmp_path):
    pytest.importorskip("trl")
    cmd = [sys.executable, str(ROOT / "examples" / "hf_trainer_slm.py"), "--steps", "2", "--ref-steps", "4",
           "--scale", "0.01", "--workdir", str(tmp_path / "x")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "x" / "results.json").read_text())
    assert set(r) == {"offline", "online", "sft"}
    assert abs(r["offline"]["selected_fraction"] - 0.6) < 0.01 and abs(r["sft"]["selected_fraction"] - 0.5) < 0.05
