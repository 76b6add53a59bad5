"""scripts/device_check.sh and its Python part, on this CPU: the checks a lent GPU runs in one call
must work before the lease (no GPU here: `--device cpu` runs the same code on the CPU)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from skillweave.models import native_bf16

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_the_shell_script_parses_and_the_wheel_list_pins_every_version():
    subprocess.run(["bash", "-n", str(SCRIPTS / "device_check.sh")], check=True)
    subprocess.run(["bash", "-n", str(SCRIPTS / "device_wheels.sh")], check=True)
    specs = [line for line in (SCRIPTS / "device_wheels.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert specs and all(s.count("==") == 1 for s in specs)
    assert {s.split("==")[0] for s in specs} >= {"transformers", "trl", "datasets", "hydra-core", "omegaconf"}


@pytest.mark.skipif(not native_bf16(), reason="no bf16 units here: dpo.precision=bfloat16 is refused")
def test_device_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check", SCRIPTS / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--device", "cpu", "--out", str(tmp_path)])
    assert (tmp_path / "device_check.json").is_file()
    dpo = result["dpo_stage"]
    for precision in ("float32", "bfloat16"):
        assert dpo[precision]["precision_recorded"] == precision and dpo[precision]["steps"] == 2
        assert dpo[precision]["delta_dtypes"] == ["float32"]
    assert 0 < dpo["relative_diff_bf16_vs_fp32"] < 0.1  # measured 0.015-0.016
    (cpu,) = result["skillpack_int_vs_fp"].values()
    # the int path's three INT8 roundings: ~1% per layer (tests/test_zip.py allows 3%), measured 0.99% / 0.81%
    assert cpu["kernels"] == ["int_mm"] and cpu["max_layer_rel_error"] < 0.03 and cpu["logits_change_rel_error"] < 0.03
