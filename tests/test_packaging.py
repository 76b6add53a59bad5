"""The top-level conf/, recipes/ and rules/ work from a built wheel, not only from the source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_configs_compose_from_an_installed_wheel(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path / "dist")],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("skillweave-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    probe = subprocess.run(
        [sys.executable, "-c", "from skillweave.resources import resource_root; print(resource_root())"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert Path(probe.stdout.strip()) == target / "skillweave" / "_resources"
    out = subprocess.run(
        [sys.executable, "-m", "skillweave", "recipe=tiny", "stage=dpo", f"hydra.run.dir={tmp_path}/run", "--cfg", "job"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "stage: dpo" in out.stdout and "max_steps: 2" in out.stdout  # the override + recipes/tiny
    assert (target / "skillweave" / "_resources" / "rules" / "math.yaml").is_file()
