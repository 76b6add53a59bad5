"""Stage 1c: full-parameter DPO per domain (trl), reference = the backbone (online rounds: see below).

Online DPO (`dpo.rounds` > 1): round r > 0 trains on pairs sampled by theta_0 + Delta_{r-1}, starts
from that policy and takes it as the reference (our choice, the usual one for iterative/online DPO:
the KL anchor is the policy that produced the pairs, so each round is a beta-regularised step from
it instead of being pulled back to theta_0 ever harder). The delta saved is still theta_r - theta_0.

The artifact is the proto-skillpack Delta_k = theta_k - theta_0 as safetensors, stamped with the
backbone's fingerprint. Trainer checkpoints live in the (partial) artifact directory until the delta
is written, so a killed (or preempted and requeued) run resumes from its last checkpoint.

Multi-GPU: `dpo.deepspeed=zero2|zero3|<path.json>` under `accelerate launch` (slurm/README.md). All
ranks train; rank 0 alone writes the delta, from fp32 weights (DeepSpeed's master copy, not the
bf16 or partitioned module).

The trainer set-up (skillweave/training.py) also trains the baselines of stages dpo_multitask and lora.
"""

from __future__ import annotations

import shutil
from typing import Optional

from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Need, Pulls, Stage, register_stage
from ..deltas import previous_delta
from ..training import check_precision, checkpoint_progress, dpo_settings, load_pairs, train_dpo, write_delta


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    config, inputs = {"dpo": dpo_settings(cfg.dpo), "model": ctx.base_fingerprint}, {"pairs": Need(ctx, "filter", domain)}
    if ctx.dpo_round > 0:  # online DPO: start from (and refer to) the previous round's policy
        config["round"] = ctx.dpo_round
        inputs["policy"] = Need(ctx.at_round(ctx.dpo_round - 1), "dpo", domain)
    return config, inputs


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    cfg = ctx.for_domain(domain)
    ckpt_dir = ref.path / "checkpoints"
    pairs = load_pairs(inputs["pairs"], ckpt_dir)
    trainer, metrics = train_dpo(
        cfg, ctx.model_dir, pairs, ckpt_dir, run_name=f"dpo-{domain}-{ref.key}",
        initial_delta=previous_delta(inputs, ctx.base_fingerprint),  # None at round 0
    )
    stats = write_delta(ctx, trainer, ref.file("delta"), domain, scratch=ckpt_dir / "final")
    if stats is None:  # not rank 0: rank 0 writes the delta and the manifest
        return metrics
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {**metrics, **stats}


register_stage(Stage(
    "dpo", per_domain=True, plan=plan, run=run, outputs={"delta": "delta.safetensors"},
    distributed=True, rounds=True, pulls=Pulls.earlier_rounds, check=check_precision, progress=checkpoint_progress,
))
