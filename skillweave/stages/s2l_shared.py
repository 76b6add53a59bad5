"""One LoRA on every skill's S2L data together: S2L's shared adapter, and LoRA Soups' data-mixing baseline.

S2L claims one adapter per skill beats one adapter shared by all skills (interference); LoRA Soups
compares CAT with a LoRA trained on the mixed data of the skills it composes. Both are this stage: the
kept examples of each skill in `skills` (the train.jsonl of its s2l artifact, the inputs without any
skill text) trained into one adapter with the s2l settings, for `s2l.steps` x the number of skills
steps, so that each skill's examples are seen as often as by its own adapter. Run alone, it trains the
per-skill s2l artifacts it reads first.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict
from typing import Optional

from ..config import S2LTraining
from ..core.artifacts import ArtifactRef, read_jsonl
from ..core.engine import Context, Pulls, Stage, register_stage
from ..core.errors import ConfigError
from ..lora_io import adapter_tensors, peft_config, save_adapter
from ..skill import SKILLS
from ..skill_eval import adapter_needs
from ..training import checkpoint_progress, load_for_training, resolved_precision, train_sft, training_precision


def the_skills(ctx: Context) -> list[str]:
    skills = list(ctx.cfg.skills)
    if len(skills) < 2 or len(set(skills)) != len(skills):
        raise ConfigError(f"stage=s2l_shared trains one adapter on two or more distinct skills: skills=[a,b], got skills={skills}")
    for name in skills:
        SKILLS.get(name, "skills")
    return skills


def plan(ctx: Context, domain: Optional[str]):
    skills = the_skills(ctx)
    if ctx.cfg.s2l.training != S2LTraining.sft:
        raise ConfigError(
            f"stage=s2l_shared trains by SFT on the skills' kept examples; s2l.training={ctx.cfg.s2l.training} "
            "has no shared form here: set s2l.training=sft"
        )
    needs = adapter_needs(ctx, skills)
    config = {"skills": skills, "s2l": {k: v for k, v in asdict(ctx.cfg.s2l).items() if k != "precision"},
              "lora": asdict(ctx.cfg.lora), "model": ctx.base_fingerprint}
    precision = resolved_precision(ctx.cfg.s2l.precision)
    if precision != "bfloat16":  # as s2l's keys: without it, bf16 autocast
        config["precision"] = precision
    return config, needs


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    s, skills = ctx.cfg.s2l, the_skills(ctx)
    rows = [r for name in skills for r in read_jsonl(inputs[f"s2l_{name}"].file("train"))]
    random.Random(s.seed).shuffle(rows)  # the trainer shuffles too; this only fixes what a seed means
    ckpt_dir = ref.path / "checkpoints"
    steps = s.steps * len(skills)
    precision = training_precision(s.precision, "s2l.precision")
    model, quantization, precision = load_for_training(ctx.model_dir, s.qlora, precision)
    trainer, metrics = train_sft(ctx.cfg, model, ctx.model_dir, rows, ckpt_dir, f"s2l-shared-{ref.key}", precision=precision,
                                 learning_rate=s.learning_rate, max_steps=steps, per_device_batch_size=s.per_device_batch_size,
                                 max_length=s.max_length, peft_config=peft_config(ctx.cfg.lora))
    stamp = {"kind": "s2l_shared", "backbone_fingerprint": ctx.base_fingerprint, "skills": skills,
             "lora": asdict(ctx.cfg.lora), "s2l": asdict(s)}
    if not save_adapter(trainer, ref.file("adapter"), stamp):
        return metrics
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter_tensors(ref.file("adapter")).values())
    per_skill = {name: len(read_jsonl(inputs[f"s2l_{name}"].file("train"))) for name in skills}
    return {**metrics, "examples_per_skill": per_skill, "steps": steps, "quantization": quantization, "adapter_bytes": adapter_bytes}


register_stage(Stage(
    "s2l_shared", per_domain=False, plan=plan, run=run, outputs={"adapter": "adapter"}, pulls=Pulls.everything,
    label=lambda ctx: "+".join(ctx.cfg.skills) or "none",
    check=lambda ctx, domain: training_precision(ctx.cfg.s2l.precision, "s2l.precision"),
    progress=checkpoint_progress,
))
