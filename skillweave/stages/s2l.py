"""S2L, Skill to LoRA (arXiv 2606.16769): a SKILL.md becomes a LoRA skillpack. Per skill:

1. Synthetic data, as the paper: a teacher (`s2l.teacher`, default the backbone) answers `s2l.inputs`
   inputs of the skill's train split with the whole SKILL.md in its context, `s2l.samples_per_input`
   answers each (sampled, `s2l.temperature`); the skill's checks keep the answers that follow it (a
   truncated answer never). examples.jsonl holds every answer with its verdicts; the manifest counts what
   was written, kept and why the rest was rejected (the first failing check). `s2l.teacher=reference`
   takes the skill's own reference answers instead (an oracle teacher, off-policy, not the paper's): the
   embedded 135M backbone passes none of 96 iso_dates answers even with the SKILL.md in its context.
2. Context distillation: a LoRA (`lora.*`, rank 16 by default) is trained on the frozen base with the
   inputs alone, without the skill text (train.jsonl), by SFT on the kept answers or (`s2l.training=dpo`)
   by DPO of a kept answer against a failing one of the same input. 4-bit QLoRA where bitsandbytes runs
   on a GPU (computing in bf16), plain LoRA elsewhere in `s2l.precision`; the manifest says which, and the dtype.

Our choices where the paper is silent: one teacher for both of the paper's writer models; the kept set
is every distinct passing answer (several per input when several pass); the adapter covers the block
linears (`lora.target_modules`), as the LoRA baseline's. The artifact `adapter/` is a PEFT directory
stamped with the backbone's fingerprint, loaded by `skillweave.lora_io.load_lora` and composed by CAT.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import asdict, replace
from typing import Optional

import torch

from ..config import S2LConfig, S2LTraining, SamplingConfig
from ..core.artifacts import ArtifactRef, write_jsonl
from ..core.engine import Context, Stage, register_stage
from ..core.errors import ConfigError, DataError
from ..lora_io import adapter_tensors, peft_config, save_adapter
from ..models import load_model, load_tokenizer, model_fingerprint, resolve_model_dir
from ..sampling import sample_batch
from ..skill import SKILLS, Skill, skill_prompt
from ..training import (
    checkpoint_progress,
    load_for_training,
    resolved_precision,
    train_dpo,
    train_sft,
    training_precision,
)


def the_skill(ctx: Context) -> Skill:
    """The skill `skill=` names; ConfigError (with the choices) when it is unset or unknown."""
    if not ctx.cfg.skill:
        raise ConfigError(f"stage=s2l needs skill=<name>; shipped: {', '.join(SKILLS.names())} (or a folder in skill_dirs)")
    return SKILLS.get(ctx.cfg.skill, "skill")


def _teacher_dir(ctx: Context):
    s = ctx.cfg.s2l
    return ctx.model_dir if s.teacher in ("backbone", "reference") else resolve_model_dir(s.teacher, "s2l.teacher")


def s2l_settings(s: S2LConfig) -> dict:
    """The s2l settings a key hashes; precision goes in resolved (see plan), not as set."""
    return {k: v for k, v in asdict(s).items() if k != "precision"}


def check_s2l_precision(ctx: Context, domain: Optional[str]) -> None:
    """Start-up check for an adapter about to be trained: s2l.precision=bfloat16 where bf16 is emulated."""
    training_precision(ctx.cfg.s2l.precision, "s2l.precision")


def plan(ctx: Context, domain: Optional[str]):
    skill = the_skill(ctx)
    digest = hashlib.sha256()
    for f in skill.files:  # the SKILL.md, its generator and checks: an edit gives a new skillpack
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    teacher = ctx.cfg.s2l.teacher
    if teacher not in ("backbone", "reference"):
        teacher = model_fingerprint(_teacher_dir(ctx))
    config = {"skill": skill.name, "skill_files": digest.hexdigest()[:16], "s2l": s2l_settings(ctx.cfg.s2l) | {"teacher": teacher},
              "lora": asdict(ctx.cfg.lora), "model": ctx.base_fingerprint}
    if ctx.cfg.s2l.training == S2LTraining.dpo:
        config["dpo"] = {"beta": ctx.cfg.dpo.beta, "max_length": ctx.cfg.dpo.max_length}
    precision = resolved_precision(ctx.cfg.s2l.precision)
    if precision != "bfloat16":  # an s2l key without it was trained in bf16 autocast (trl's default before the setting)
        config["precision"] = precision
    return config, {}


def write_examples(ctx: Context, skill: Skill, tasks: list[dict]) -> tuple[list[dict], list[dict]]:
    """The teacher's answers to `tasks`, with the SKILL.md in context, each with its verdicts; returns
    (every answer, the kept ones)."""
    s = ctx.cfg.s2l
    if s.teacher == "reference":
        written = [{**t, "response": skill.reference(t), "truncated": False, "sample": 0, "prompt_id": t["id"]} for t in tasks]
    else:
        written = _sampled(ctx, skill, tasks)
    by_id = {t["id"]: t for t in tasks}
    answers = []
    for row in written:
        verdict = skill.check(by_id[row["prompt_id"]], row["response"])
        failed = [name for name, r in verdict["rules"].items() if not r["passed"]]
        reason = "truncated" if row["truncated"] else (failed[0] if failed else None)
        answers.append({"input_id": row["prompt_id"], "input": by_id[row["prompt_id"]]["prompt"], "sample": row["sample"],
                        "response": row["response"], "truncated": row["truncated"], "passed": reason is None,
                        "rejected_by": reason, "rules": verdict["rules"]})
    seen, kept = set(), []
    for a in answers:
        if a["passed"] and (a["input_id"], a["response"]) not in seen:
            seen.add((a["input_id"], a["response"]))
            kept.append(a)
    return answers, kept


def _sampled(ctx: Context, skill: Skill, tasks: list[dict]) -> list[dict]:
    """The teacher model's sampled answers, with the SKILL.md in its context (sample_batch's rows)."""
    s = ctx.cfg.s2l
    teacher_dir = _teacher_dir(ctx)
    model = load_model(teacher_dir).to("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(teacher_dir)
    tok.padding_side = "left"
    sampling = SamplingConfig(num_prompts=s.inputs, samples_per_prompt=s.samples_per_input, temperature=s.temperature,
                              max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=s.seed)
    rows = []
    for i in range(0, len(tasks), s.batch_size):
        batch = [{**t, "prompt": skill_prompt(skill, t, with_skill_text=True)} for t in tasks[i : i + s.batch_size]]
        rows += sample_batch(model, tok, batch, sampling, seed=s.seed * 1_000_003 + i)
    return rows


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    s, skill = ctx.cfg.s2l, the_skill(ctx)
    tasks = skill.tasks(s.inputs, s.seed, "train")
    answers, kept = write_examples(ctx, skill, tasks)
    write_jsonl(ref.path / "examples.jsonl", answers)
    report = {"inputs": s.inputs, "written": len(answers), "kept": len(kept),
              "inputs_with_a_kept_answer": len({a["input_id"] for a in kept}),
              "rejected_by": dict(Counter(a["rejected_by"] for a in answers if not a["passed"]).most_common())}
    if not kept:
        raise DataError(
            f"s2l[{skill.name}]: none of the teacher's {len(answers)} answers passed the skill's checks "
            f"({report['rejected_by']}): raise s2l.inputs or s2l.samples_per_input, or use a stronger s2l.teacher"
        )
    # Context distillation: the student sees the input alone, never the skill text.
    by_id = {t["id"]: t for t in tasks}
    train_rows = [{"prompt": skill_prompt(skill, by_id[a["input_id"]], with_skill_text=False), "completion": a["response"]}
                  for a in kept]
    write_jsonl(ref.file("train"), train_rows)
    ckpt_dir = ref.path / "checkpoints"
    lora = peft_config(ctx.cfg.lora)
    if s.training == S2LTraining.sft:
        precision = training_precision(s.precision, "s2l.precision")
        model, quantization, precision = load_for_training(ctx.model_dir, s.qlora, precision)
        trainer, metrics = train_sft(ctx.cfg, model, ctx.model_dir, train_rows, ckpt_dir, f"s2l-{skill.name}-{ref.key}",
                                     learning_rate=s.learning_rate, max_steps=s.steps, precision=precision,
                                     per_device_batch_size=s.per_device_batch_size, max_length=s.max_length, peft_config=lora)
    else:  # trl's DPO set-up of the LoRA baseline: fp32 weights, computing in s2l.precision
        quantization = "none (plain LoRA)"
        cfg = replace(ctx.cfg, dpo=replace(ctx.cfg.dpo, precision=s.precision))
        trainer, metrics = train_dpo(cfg, ctx.model_dir, _pairs(skill, answers, kept, by_id), ckpt_dir,
                                     f"s2l-{skill.name}-{ref.key}", learning_rate=s.learning_rate, max_steps=s.steps,
                                     peft_config=lora)
    stamp = {"kind": "s2l", "backbone_fingerprint": ctx.base_fingerprint, "skill": skill.name, "lora": asdict(ctx.cfg.lora),
             "s2l": asdict(s)}
    if not save_adapter(trainer, ref.file("adapter"), stamp):
        return metrics
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    adapter_bytes = sum(t.numel() * t.element_size() for t in adapter_tensors(ref.file("adapter")).values())
    return {**report, **metrics, "training": str(s.training), "quantization": quantization, "adapter_bytes": adapter_bytes}


def _pairs(skill: Skill, answers: list[dict], kept: list[dict], by_id: dict):
    """DPO pairs: each kept answer against a failing answer of the same input (inputs with both only)."""
    from datasets import Dataset

    failing = {}
    for a in answers:
        if not a["passed"]:
            failing.setdefault(a["input_id"], a["response"])
    rows = [{"prompt": [{"role": "user", "content": skill_prompt(skill, by_id[a["input_id"]], with_skill_text=False)}],
             "chosen": [{"role": "assistant", "content": a["response"]}],
             "rejected": [{"role": "assistant", "content": failing[a["input_id"]]}]}
            for a in kept if a["input_id"] in failing]
    if not rows:
        raise DataError(f"s2l[{skill.name}].training=dpo: no input has both a kept and a failing answer; use s2l.training=sft")
    return Dataset.from_list(rows)


register_stage(Stage(
    "s2l", per_domain=False, plan=plan, run=run, outputs={"adapter": "adapter", "train": "train.jsonl"},
    label=lambda ctx: ctx.cfg.skill or "none", check=check_s2l_precision, progress=checkpoint_progress,
))
