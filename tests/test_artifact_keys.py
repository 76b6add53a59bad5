"""Refactors must not re-key artifacts: the planned keys of the tiny pipeline's stages are pinned.

tests/data/artifact_keys.json holds the keys planned before the layered redesign (commit 2c492e7) for
every stage but eval (whose rows re-keyed once when its task digest grew to cover every file that
scores a task); tests/data/eval_row_keys.json those of the eval rows since 2026-12-08 (the math verifier's bound on a
number's size re-keyed them; only the math tasks' cells re-score). The backbone's
fingerprint is fixed, so the keys depend on settings alone, not on the tiny model's weights (which can
differ between CPUs).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from test_pipeline import short_prompts  # noqa: F401  (registers the test prompt source and rule)

from compose import compose_config, hydra_context
from skillweave.app import context
from skillweave.core.compose import replayable
from skillweave.core.engine import Context, ref_for

PINNED = json.loads((Path(__file__).parent / "data" / "artifact_keys.json").read_text())


@contextmanager
def tiny_context(tmp_path, extra: list[str]) -> Iterator[Context]:
    rules = tmp_path / "test_rules.yaml"
    rules.write_text("rules:\n  - name: not_truncated\n  - name: test_even_word_count\n")
    ov = ["recipe=tiny", "model=hf_dir", f"model.path={tmp_path}", f"artifacts_root={tmp_path / 'a'}",
          f"domain.rules={rules}", "domain.prompt_source.name=test_short_prompts", *extra]
    with hydra_context():
        ctx = context(compose_config(ov), replayable(ov), compose_config)
        ctx.__dict__["base_fingerprint"] = "0" * 16
        ctx.__dict__["model_dir"] = tmp_path
        yield ctx


def planned_keys(tmp_path, extra: list[str]) -> dict[str, str]:
    with tiny_context(tmp_path, extra) as ctx:
        keys = {f"{s}/{d}": ref_for(ctx, s, d).key for d in ctx.cfg.domains for s in ("generate", "filter", "dpo", "zip", "lora", "dev")}
        return keys | {s: ref_for(ctx, s).key for s in ("merge", "route", "dpo_multitask")}


@pytest.mark.parametrize("name, extra", [("default", []), ("rounds2", ["dpo.rounds=2"]), ("dare_ties", ["merge=dare_ties"])])
def test_planned_keys_are_those_of_before_the_redesign(tmp_path, name, extra):
    assert planned_keys(tmp_path, extra) == PINNED[name]


def test_eval_row_keys_are_pinned(tmp_path):
    """An eval row's key holds the bytes of skillweave/evaluation.py and of its tasks' files (eval_tasks.
    task_digest): an edit there re-scores every row of every eval, hours for the paper table (one did, on
    2026-12-07, by a one-line change). Where such a change is meant, put the new keys in
    tests/data/eval_row_keys.json; how answers are decoded belongs in eval_lms.py or decoding.py."""
    from skillweave.core.configurations import eval_needs
    from skillweave.stages.eval import row_ref

    with tiny_context(tmp_path, ["eval.configurations=[base,dpo,merged,skillweave,twin_merging]"]) as ctx:
        inputs = {name: need.ref for name, need in eval_needs(ctx).items()}
        keys = {name: row_ref(ctx, name, inputs).key for name in ctx.cfg.eval.configurations}
    assert keys == json.loads((Path(__file__).parent / "data" / "eval_row_keys.json").read_text())
