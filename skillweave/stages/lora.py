"""Baseline: LoRA per domain (PEFT), trained by DPO on the same pairs as the per-domain full DPO.

The backbone stays frozen; a rank-`lora.rank` adapter on its block linears (`lora.target_modules`,
default every linear but the output head: the layers SkillZip compresses) is trained with trl's
DPOTrainer, reference = the backbone (the adapter disabled). Every training setting but the learning
rate is dpo's (beta, steps, batch, length, warm-up, seed), so the two differ only in what they train.
With online DPO (`dpo.rounds` > 1) it trains on every round's pairs together, offline, for the steps
of all rounds.

The artifact is `adapter/`, a PEFT adapter directory (`peft.PeftModel.from_pretrained(backbone,
dir)` loads it; the trainer also leaves the tokenizer there), with `skillweave.json` beside
adapter_config.json: the fingerprint of the backbone it belongs to, its domain and its settings.
`load_lora` refuses an adapter of another backbone. Multi-process launches train it as stage dpo does
(rank 0 writes the adapter).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from typing import Optional

from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Stage, register_stage
from ..lora_io import adapter_tensors, lora_dense_delta, peft_config, save_adapter
from ..training import (
    check_precision,
    checkpoint_progress,
    dpo_settings,
    load_pairs,
    pairs_of_every_round,
    train_dpo,
)


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    # dpo.learning_rate is not used (lora.learning_rate is); with online rounds it trains every
    # round's pairs, for the steps of all rounds.
    settings = dpo_settings(cfg.dpo, drop=("learning_rate",))
    steps = cfg.dpo.max_steps * cfg.dpo.rounds
    config = {"dpo": settings | {"max_steps": steps}, "lora": asdict(cfg.lora), "model": ctx.base_fingerprint}
    rounds = pairs_of_every_round(ctx, domain)
    return config, {("pairs" + (f"_round{r}" if r else "")): ref for r, ref in enumerate(rounds)}


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from datasets import concatenate_datasets

    cfg = ctx.for_domain(domain)
    ckpt_dir = ref.path / "checkpoints"
    pairs = concatenate_datasets([load_pairs(inp, ckpt_dir) for _, inp in sorted(inputs.items())])
    trainer, metrics = train_dpo(
        cfg, ctx.model_dir, pairs, ckpt_dir, run_name=f"lora-{domain}-{ref.key}", learning_rate=cfg.lora.learning_rate,
        max_steps=ref.config["dpo"]["max_steps"], peft_config=peft_config(cfg.lora),
    )
    out = ref.file("adapter")
    stamp = {"kind": "lora", "backbone_fingerprint": ctx.base_fingerprint, "domain": domain, "lora": asdict(cfg.lora)}
    if not save_adapter(trainer, out, stamp):  # not rank 0: rank 0 writes the adapter and the manifest
        return metrics
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    delta = lora_dense_delta(out)
    return {
        **metrics,
        "adapted_layers": len(delta),
        "adapter_bytes": sum(t.numel() * t.element_size() for t in adapter_tensors(out).values()),
        "delta_norm": sum(float(t.double().pow(2).sum()) for t in delta.values()) ** 0.5,
    }


register_stage(Stage(
    "lora", per_domain=True, plan=plan, run=run, outputs={"adapter": "adapter"}, distributed=True, check=check_precision,
    progress=checkpoint_progress,
))
