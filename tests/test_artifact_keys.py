"""Refactors must not re-key artifacts: the planned keys of the tiny pipeline's stages are pinned.

tests/data/artifact_keys.json holds the keys planned before the layered redesign (commit 2c492e7) for
every stage but eval (whose rows re-keyed once when its task digest grew to cover every file that
scores a task). The backbone's fingerprint is fixed, so the keys depend on settings alone, not on the
tiny model's weights (which can differ between CPUs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_pipeline import short_prompts  # noqa: F401  (registers the test prompt source and rule)

from compose import compose_config, hydra_context
from skillweave.app import context
from skillweave.core.compose import replayable
from skillweave.core.engine import ref_for

PINNED = json.loads((Path(__file__).parent / "data" / "artifact_keys.json").read_text())


def planned_keys(tmp_path, extra: list[str]) -> dict[str, str]:
    rules = tmp_path / "test_rules.yaml"
    rules.write_text("rules:\n  - name: not_truncated\n  - name: test_even_word_count\n")
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tmp_path}", f"artifacts_root={tmp_path / 'a'}",
          f"domain.rules={rules}", "domain.prompt_source.name=test_short_prompts", *extra]
    with hydra_context():
        ctx = context(compose_config(ov), replayable(ov), compose_config)
        ctx.__dict__["base_fingerprint"] = "0" * 16
        ctx.__dict__["model_dir"] = tmp_path
        keys = {f"{s}/{d}": ref_for(ctx, s, d).key for d in ctx.cfg.domains for s in ("generate", "filter", "dpo", "zip", "lora", "dev")}
        return keys | {s: ref_for(ctx, s).key for s in ("merge", "route", "dpo_multitask")}


@pytest.mark.parametrize("name, extra", [("default", []), ("rounds2", ["dpo.rounds=2"]), ("dare_ties", ["merge=dare_ties"])])
def test_planned_keys_are_those_of_before_the_redesign(tmp_path, name, extra):
    assert planned_keys(tmp_path, extra) == PINNED[name]
