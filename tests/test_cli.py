"""`python -m skillweave` answers bad input with one line naming the valid choices."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "skillweave", *args, f"hydra.run.dir={cwd}/run"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    "args, line",
    [
        (["model=hf_dir", "model.path=/no/such/model"], "skillweave: error: model.path=/no/such/model does not exist"),
        (["domains=[math,poetry]"], "skillweave: error: domains=['poetry'] not found in conf/domain/; valid: code, dialogue, instructions, math"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, line):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert line in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("manifest.json"))
