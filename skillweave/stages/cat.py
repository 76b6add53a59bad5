"""LoRA Soups CAT (arXiv 2410.13025): skillpacks trained alone, composed with learned weights.

The S2L skillpacks (LoRA adapters) of `skills` are attached together beside the frozen backbone as
W + sum_k alpha_k A_k B_k (skillweave.composition: one alpha per skillpack and module, the paper's
per-layer weights, or with `cat.weights=per_skillpack` one per skillpack) and only the alphas are trained, from `cat.alpha_init` (1: the plain sum), on
`cat.examples` examples of the composed task `task` (a skill whose checks need the others at once): its
train inputs without any skill text and its reference answers, the loss on the answer tokens. The
artifact is the composition (its alphas and the identity of every part, refused on another backbone
or with a changed part). Run alone, the stage trains the skillpacks it composes first.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Optional

import torch

from ..composition import attach_composition, from_peft_adapter, save_composition, train_alphas
from ..config import CATWeights
from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Pulls, Stage, register_stage
from ..core.errors import ConfigError
from ..models import chat_prompt, load_model, load_tokenizer
from ..skill import SKILLS, Skill, skill_prompt
from ..skill_eval import adapter_needs


def _task(ctx: Context) -> Skill:
    if not ctx.cfg.task:
        raise ConfigError(f"stage=cat needs task=<composed skill>; shipped skills: {', '.join(SKILLS.names())}")
    return SKILLS.get(ctx.cfg.task, "task")


def plan(ctx: Context, domain: Optional[str]):
    task, skills = _task(ctx), list(ctx.cfg.skills)
    if len(skills) < 2 or len(set(skills)) != len(skills):
        raise ConfigError(f"stage=cat composes two or more distinct skills: skills=[a,b], got skills={skills}")
    for name in skills:
        SKILLS.get(name, "skills")
    needs = adapter_needs(ctx, skills)
    return {"cat": asdict(ctx.cfg.cat), "task": task.name, "task_files": [f.name for f in task.files],
            "model": ctx.base_fingerprint}, needs


def training_batches(task: Skill, tok, examples: int, seed: int, batch_size: int, max_length: int) -> list[dict]:
    """The composed task's train inputs (no skill text) with its reference answers; labels only on the answer."""
    rows = []
    for t in task.tasks(examples, seed, "train"):
        prompt = chat_prompt(tok, skill_prompt(task, t, with_skill_text=False))
        answer = task.reference(t) + (tok.eos_token or "")
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        ids = (p + a)[:max_length]
        rows.append((ids, ([-100] * len(p) + a)[:max_length]))
    batches = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i : i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        batches.append({
            "input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chunk]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chunk]),
            "labels": torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in chunk]),
        })
    return batches


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    c, task = ctx.cfg.cat, _task(ctx)
    model, tok = load_model(ctx.model_dir), load_tokenizer(ctx.model_dir)
    parts = [from_peft_adapter(inputs[f"s2l_{name}"].file("adapter"), name=name) for name in ctx.cfg.skills]
    composition = attach_composition(model, parts, alpha_init=c.alpha_init, expected_fingerprint=ctx.base_fingerprint,
                                     per_module=c.weights == CATWeights.per_module)
    batches = training_batches(task, tok, c.examples, c.seed, c.batch_size, c.max_length)
    metrics = train_alphas(model, composition, batches, c.steps, c.learning_rate, seed=c.seed)
    alphas = torch.stack(list(composition.alphas().values()))  # modules x skills
    mean = {name: round(float(alphas[:, k].mean()), 4) for k, name in enumerate(ctx.cfg.skills)}
    save_composition(ref.file("composition"), composition, meta={"task": task.name, "skills": list(ctx.cfg.skills),
                                                                  "cat": asdict(c), "metrics": metrics})
    return {"task": task.name, "skills": list(ctx.cfg.skills), "examples": c.examples, "mean_alpha": mean,
            **{k: v for k, v in metrics.items() if k != "curve"}, "loss_curve": metrics.get("curve")}


register_stage(Stage(
    "cat", per_domain=False, plan=plan, run=run, outputs={"composition": "composition.safetensors"},
    pulls=Pulls.everything, label=lambda ctx: ctx.cfg.task or "none",
))
