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
        (["domains=[math,poetry]"], "skillweave: error: domains=poetry: unknown domain (conf/domain/ and hydra.searchpath) 'poetry'. Valid: arith, code, dialogue, instructions, math"),
        (["stage=dpoo"], "skillweave: error: stage=dpoo: unknown stage 'dpoo'. Did you mean 'dpo'?"),
        (["eval.configurations=[base,skilweave]"], "skillweave: error: eval.configurations=skilweave: unknown eval configuration 'skilweave'. Did you mean 'skillweave'?"),
        # stage=all plans the whole graph first: the merge's typo fails before any domain trains
        (["merge.method=tie"], "skillweave: error: merge.method=tie: not supported. Did you mean 'ties'?"),
        (["zip.smoothing=smoothquant2"], "skillweave: error: zip.smoothing=smoothquant2: unknown zip smoothing 'smoothquant2'. Did you mean 'smoothquant'?"),
        (["domain.prompt_source.name=math_reasoning"], "skillweave: error: domain.prompt_source.name=math_reasoning: unknown prompt source 'math_reasoning'. Did you mean 'math_reasoning_gym'?"),
        (["domain.rules=mth"], "rules/mth.yaml: no rule set for domain 'math'"),
        # the run's own domain is composed with its domain_overrides (the others when the context composes them)
        (["domains=[math]", "+domain_overrides.math=['dpo.beta=-5']"], "skillweave: error: dpo.beta"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, line):
    proc = cli(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert line in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("manifest.json"))


@pytest.mark.parametrize(
    "error, one_line",
    [
        ("ConfigError('x.y=1: bad, set x.y=2')", True),  # a SkillweaveError: the user's to fix
        ("KeyError('boom')", False),  # anything else is a bug: its traceback is kept
        ("ValueError('boom')", False),
    ],
)
def test_only_skillweave_errors_are_one_line_others_keep_their_traceback(tmp_path, error, one_line):
    program = (
        "import sys; import skillweave.app as app; from skillweave.core.errors import ConfigError\n"
        f"def run(*args): raise {error}\n"
        "app.run = run; sys.argv = ['skillweave', 'stage=merge', 'hydra.run.dir=run']\n"
        "from skillweave.__main__ import main; main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 1
    if one_line:
        assert proc.stderr.strip().splitlines()[-1] == "skillweave: error: x.y=1: bad, set x.y=2"
        assert "Traceback" not in proc.stderr
    else:
        assert "Traceback" in proc.stderr and "boom" in proc.stderr


def test_help_lists_the_registered_stages_and_eval_configurations(tmp_path):
    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    from skillweave.core.configurations import CONFIGURATIONS
    from skillweave.core.engine import STAGES

    lines = proc.stdout.splitlines()
    stages = next(line for line in lines if line.startswith("stage: all (default: every stage of `pipeline`"))
    assert stages.split("`domains`), ", 1)[1].split(", ") == STAGES.names()
    configurations = next(line for line in lines if line.startswith("eval.configurations: any of "))
    assert configurations.removeprefix("eval.configurations: any of ").split(", ") == CONFIGURATIONS.names()
    assert "domain: arith, code, dialogue, instructions, math" in proc.stdout  # the config groups, as Hydra lists them
    assert "powered by Hydra" not in proc.stdout
