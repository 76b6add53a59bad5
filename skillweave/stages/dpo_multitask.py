"""Baseline: multi-task DPO, one monolith trained on every domain's pairs together.

Full-parameter DPO as in stage dpo (same settings, reference = the backbone) on the filter artifacts
of every domain in `domains` (of every online round, with `dpo.rounds` > 1: the pairs the per-domain
runs trained on, here offline), concatenated and shuffled (`dpo_multitask.shuffle_seed`). The
artifact is its delta theta_mt - theta_0 (`delta.safetensors`, the format of stage dpo), so the eval
serves theta_0 + Delta_mt on every domain: one model's bytes.

Fairness (`dpo_multitask.steps`, our choice; the paper does not say how its monolith was trained):
`sum` (default) trains the sum of the per-domain runs' steps (dpo.max_steps x dpo.rounds per domain):
with dpo's batch size, as many training examples (the compute) as the K per-domain models together;
`per_domain` trains the steps of one per-domain run. Each domain's dpo.max_steps is read from that
domain's composed config, so a per-domain override counts.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from typing import Optional

from ..config import MultitaskSteps
from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Stage, register_stage
from ..training import (
    check_precision,
    checkpoint_progress,
    dpo_settings,
    load_pairs,
    pairs_of_every_round,
    train_dpo,
    write_delta,
)


def total_steps(ctx: Context) -> int:
    """The multi-task run's optimizer steps under the `dpo_multitask.steps` rule."""
    rounds = ctx.cfg.dpo.rounds
    if ctx.cfg.dpo_multitask.steps == MultitaskSteps.sum:
        return sum(ctx.for_domain(d).dpo.max_steps * rounds for d in ctx.cfg.domains)
    return ctx.cfg.dpo.max_steps * rounds


def plan(ctx: Context, domain: Optional[str]):
    settings = dpo_settings(ctx.cfg.dpo)  # as for stage dpo; the rounds are in the inputs
    config = {
        "dpo": settings | {"max_steps": total_steps(ctx)},
        "dpo_multitask": asdict(ctx.cfg.dpo_multitask),
        "model": ctx.base_fingerprint,
    }
    inputs = {pairs_name(d, r): ref for d in ctx.cfg.domains for r, ref in enumerate(pairs_of_every_round(ctx, d))}
    return config, inputs


def pairs_name(domain: str, r: int) -> str:
    """The input name of `domain`'s filter artifact at online round `r`."""
    return f"pairs_{domain}" + (f"_round{r}" if r else "")


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from datasets import concatenate_datasets

    ckpt_dir = ref.path / "checkpoints"
    parts = {  # each domain's pairs, every online round's
        d: concatenate_datasets([load_pairs(inputs[pairs_name(d, r)], ckpt_dir) for r in range(ctx.cfg.dpo.rounds)])
        for d in ctx.cfg.domains
    }
    pairs = concatenate_datasets(list(parts.values())).shuffle(seed=ctx.cfg.dpo_multitask.shuffle_seed)
    trainer, metrics = train_dpo(
        ctx.cfg, ctx.model_dir, pairs, ckpt_dir, run_name=f"dpo_multitask-{ref.key}", max_steps=ref.config["dpo"]["max_steps"]
    )
    metrics["pairs_per_domain"] = {d: len(p) for d, p in parts.items()}
    stats = write_delta(ctx, trainer, ref.file("delta"), None, scratch=ckpt_dir / "final")
    if stats is None:  # not rank 0: rank 0 writes the delta and the manifest
        return metrics
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {**metrics, **stats}


register_stage(Stage(
    "dpo_multitask", per_domain=False, plan=plan, run=run, outputs={"delta": "delta.safetensors"}, distributed=True,
    check=check_precision, progress=checkpoint_progress,
))
