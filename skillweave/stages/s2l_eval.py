"""S2L's comparison (arXiv 2606.16769): on each skill's held-out tasks, does its LoRA beat the skill text?

Rows, each scored on every skill in `skills` (pass rate by the skill's checks, greedy):
  base              the backbone, the task alone
  base_in_context   the backbone with the whole SKILL.md before the task (the in-context baseline)
  s2l               the backbone + that skill's S2L LoRA, the task alone (the paper's method)
  s2l_in_context    the same LoRA with the SKILL.md in context as well
  s2l_int8          each LoRA as an INT8 SkillZip skillpack (exact rank r, quantized), on the eval's path
  shared            one LoRA trained on every skill's kept examples together (stage s2l_shared), the task
                    alone: per-skill vs shared adapters is the paper's interference claim (with 2+ skills)
Paired on the same tasks with base, base_in_context and s2l; prompt tokens per request measure what the
skill text costs; bytes are what each row holds (s2l: the backbone and all the skills' adapters).
Run alone it trains every skillpack it scores first.
"""

from __future__ import annotations

from typing import Optional

from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Need, Pulls, Stage, register_stage
from ..core.errors import ConfigError
from ..deltas import param_bytes
from ..eval_tasks import EVAL_TASKS, task_digest
from ..lora_io import load_lora, lora_dense_delta
from ..models import load_model
from ..skill import SKILLS, eval_task_name
from ..skill_eval import Row, adapter_nbytes, adapter_needs, backbone, check_backend, run_rows, settings_key
from ..zip import (
    attach_skillpack,
    attached_domain,
    block_linear_names,
    compress_residual,
    detach_skillpack,
    skillpack_nbytes,
)


def the_skills(ctx: Context) -> list[str]:
    skills = list(ctx.cfg.skills)
    if not skills or len(set(skills)) != len(skills):
        raise ConfigError(f"stage=s2l_eval compares on distinct skills: skills=[a,b,...], got skills={skills}")
    for name in skills:
        SKILLS.get(name, "skills")
        for with_text in (False, True):
            if eval_task_name(name, with_text) not in EVAL_TASKS:
                raise ConfigError(
                    f"skills: {name} has no lm-eval task {eval_task_name(name, with_text)}: its folder's __init__.py "
                    "calls register_skill_eval_tasks (as skills/iso_dates does)"
                )
    return skills


def plan(ctx: Context, domain: Optional[str]):
    skills = the_skills(ctx)
    needs = adapter_needs(ctx, skills)
    if len(skills) > 1:
        needs["shared"] = Need(ctx, "s2l_shared")
    tasks = [eval_task_name(s, t) for s in skills for t in (False, True)]
    return {"skill_eval": settings_key(ctx), "skills": skills, "task_files": task_digest(tasks),
            "model": ctx.base_fingerprint}, needs



def _per_skill_adapters(ctx: Context, skills: list[str]):
    def build(inputs):
        model = load_model(ctx.model_dir)
        for name in skills:
            model = load_lora(model, inputs[f"s2l_{name}"].file("adapter"), ctx.base_fingerprint, adapter_name=name)
        details = {"adapter_bytes": {name: adapter_nbytes(inputs[f"s2l_{name}"].file("adapter")) for name in skills}}
        return model, param_bytes(model), details

    return build


def _shared(ctx: Context):
    def build(inputs):
        model = load_lora(load_model(ctx.model_dir), inputs["shared"].file("adapter"), ctx.base_fingerprint)
        return model, param_bytes(model), {"adapter_bytes": adapter_nbytes(inputs["shared"].file("adapter"))}

    return build


def _int8(ctx: Context, skills: list[str]) -> Row:
    """Each skill's LoRA as an INT8 SkillZip skillpack (its dense delta, exactly rank r, factored at rank r and
    quantized), served beside the backbone on the eval's path (`eval.integer_path`): the bytes comparable
    with SkillWeave's skillpacks."""
    packs = {}

    def build(inputs):
        model = load_model(ctx.model_dir)
        linears = block_linear_names(model)
        for name in skills:
            delta = lora_dense_delta(inputs[f"s2l_{name}"].file("adapter"))
            packs[name] = compress_residual(delta, linears, ctx.cfg.lora.rank, 8, name, ctx.base_fingerprint)
        sizes = {name: skillpack_nbytes(sp) for name, sp in packs.items()}
        errors = {name: max(sp.meta["layer_rel_error"].values()) for name, sp in packs.items()}
        return model, param_bytes(model) + sum(sizes.values()), {"skillpack_bytes": sizes, "max_layer_rel_error": errors}

    def select(model, skill: str) -> None:
        if attached_domain(model) is not None:
            detach_skillpack(model)
        attach_skillpack(model, packs[skill], expected_fingerprint=ctx.base_fingerprint, int_mm=ctx.cfg.eval.integer_path)

    return Row("s2l_int8", tuple(f"s2l_{name}" for name in skills), build, select=select,
               settings={"bits": 8, "rank": ctx.cfg.lora.rank, "integer_path": ctx.cfg.eval.integer_path})


def rows(ctx: Context, skills: list[str]) -> list[Row]:
    adapters = tuple(f"s2l_{name}" for name in skills)
    per_skill = _per_skill_adapters(ctx, skills)
    out = [
        Row("base", (), backbone(ctx)),
        Row("base_in_context", (), backbone(ctx), with_skill_text=True),
        Row("s2l", adapters, per_skill, select=lambda model, skill: model.set_adapter(skill)),
        Row("s2l_in_context", adapters, per_skill, with_skill_text=True, select=lambda model, skill: model.set_adapter(skill)),
        _int8(ctx, skills),
    ]
    if len(skills) > 1:
        out.append(Row("shared", ("shared",), _shared(ctx)))
    return out


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    skills = the_skills(ctx)
    report = run_rows(ctx, ref, rows(ctx, skills), skills, inputs, references=("base", "base_in_context", "s2l"),
                      title=f"S2L on {', '.join(skills)}")
    return {r["name"]: round(r["average"], 4) for r in report["configurations"]}


register_stage(Stage(
    "s2l_eval", per_domain=False, plan=plan, run=run, outputs={"results": "results.json", "table": "results.md"},
    pulls=Pulls.everything, check=check_backend, label=lambda ctx: "+".join(ctx.cfg.skills) or "none",
))
