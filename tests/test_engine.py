"""The engine on a stage defined here (docs/adding_a_stage.md's example): declared outputs, planning
from config alone, a missing input named with its command, pulls, and one execution per artifact."""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

import pytest
from test_pipeline import overrides, run_overrides

from compose import compose_config, hydra_context
from skillweave.app import context
from skillweave.core.artifacts import ArtifactRef, atomic_write_json, read_jsonl
from skillweave.core.compose import replayable
from skillweave.core.engine import STAGES, Context, Need, Pulls, Stage, execute, ref_for
from skillweave.core.errors import MissingArtifactError
from skillweave.core.flow import run_stage


def plan(ctx: Context, domain: Optional[str]):
    return {"stats": {"version": 1}}, {"samples": Need(ctx, "generate", domain)}


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict[str, ArtifactRef]) -> dict:
    rows = read_jsonl(inputs["samples"].file("samples"))
    stats = {"samples": len(rows), "truncated": sum(r["truncated"] for r in rows)}
    atomic_write_json(ref.file("stats"), stats)
    return stats


@pytest.fixture
def prompt_stats(monkeypatch):
    stage = Stage("prompt_stats", per_domain=True, plan=plan, run=run, outputs={"stats": "stats.json"})
    monkeypatch.setitem(STAGES._items, "prompt_stats", stage)
    return stage


def ctx_for(ov: list[str]) -> Context:
    return context(compose_config(ov), replayable(ov), compose_config)


def test_a_new_stage_plans_runs_and_is_reused(tmp_path, tiny_model_dir, prompt_stats):
    ov = overrides(tmp_path, tiny_model_dir)
    with hydra_context():
        ctx = ctx_for(ov)
        with pytest.raises(MissingArtifactError, match=r"run `python -m skillweave stage=generate domain=math .*` first"):
            execute(ctx, "prompt_stats", "math")  # pulls nothing: its input is named with the command
        ref = ref_for(ctx, "prompt_stats", "math")
        assert ref.inputs == {"samples": ref_for(ctx, "generate", "math").key}  # keyed by its input's key
    run_overrides([*ov, "stage=generate"])
    with hydra_context():
        ctx = ctx_for(ov)
        done = execute(ctx, "prompt_stats", "math")
        assert done == ref and done.complete
        rows = read_jsonl(ref_for(ctx, "generate", "math").file("samples"))
        assert done.manifest()["metrics"] == {"samples": len(rows), "truncated": sum(r["truncated"] for r in rows)}
        assert sorted(p.name for p in done.path.iterdir() if not p.name.startswith(".")) == [
            "config.json", "manifest.json", "stats.json"]
        mtime = (done.path / "manifest.json").stat().st_mtime_ns
        assert execute(ctx, "prompt_stats", "math") == ref  # complete: reused, not redone
        assert (done.path / "manifest.json").stat().st_mtime_ns == mtime


def test_a_stage_that_pulls_everything_makes_its_inputs_once(tmp_path, tiny_model_dir, prompt_stats, monkeypatch, caplog):
    monkeypatch.setitem(STAGES._items, "prompt_stats", replace(prompt_stats, pulls=Pulls.everything))
    ov = overrides(tmp_path, tiny_model_dir)
    with hydra_context(), caplog.at_level("INFO", logger="skillweave"):
        refs = run_stage(ctx_for(ov), "prompt_stats", "math")
    assert [ref.stage for ref in refs.values()] == ["generate", "prompt_stats"]
    assert sum(line.startswith("running ") for line in caplog.messages) == 2
