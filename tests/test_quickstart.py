"""The README's demo: `python -m skillweave` on the embedded model (minutes; `make test-slow`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_runs_every_stage_on_the_embedded_model(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "skillweave", f"artifacts_root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=45 * 60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = tmp_path.glob("eval/all-*/results.json")
    rows = json.loads(results.read_text())["configurations"]
    assert [r["name"] for r in rows] == ["base", "dpo", "merged", "skillweave"]
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr
