"""LoRA Soups' comparison (arXiv 2410.13025): on a task that needs two skills at once, how should their
skillpacks be combined?

Rows, scored on the held-out tasks of the composed task `task` (pass rate by its checks, greedy, the
task alone unless said):
  base, base_in_context  the backbone without / with the task's SKILL.md in context
  single_<skill>         the backbone + one skill's S2L LoRA
  uniform                the plain sum of the skills' LoRAs (every alpha = 1; CAT before training)
  peft_linear            PEFT `add_weighted_adapter(combination_type="linear")`, weights 1 (one rank-r adapter:
                         the sums of the scaled factors, cross terms included, as PEFT defines it)
  peft_cat               the same with "cat" (factors concatenated: exactly the plain sum, a cross-check of uniform)
  peft_ties              the same with "ties" (`skill_eval.ties_density` of each factor's entries kept)
  mixed                  one LoRA trained on both skills' kept examples together (data mixing; stage s2l_shared)
  cat                    the skills' LoRAs with the weights stage cat learned on the composed task
Paired on the same tasks with base and with cat; bytes are what each row holds.
Run alone it trains every skillpack and the composition it scores first.
"""

from __future__ import annotations

from typing import Optional

from ..composition import attach_composition, from_peft_adapter, load_composition
from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Need, Pulls, Stage, register_stage
from ..core.errors import ConfigError
from ..deltas import param_bytes
from ..eval_tasks import EVAL_TASKS, task_digest
from ..lora_io import load_lora
from ..models import load_model
from ..skill import SKILLS, eval_task_name
from ..skill_eval import Row, adapter_nbytes, adapter_needs, backbone, check_backend, run_rows, settings_key

PEFT_COMBINATIONS = ("linear", "cat", "ties")


def _check(ctx: Context) -> tuple[str, list[str]]:
    if not ctx.cfg.task:
        raise ConfigError(f"stage=cat_eval needs task=<composed skill>; shipped skills: {', '.join(SKILLS.names())}")
    task, skills = SKILLS.get(ctx.cfg.task, "task").name, list(ctx.cfg.skills)
    if len(skills) < 2 or len(set(skills)) != len(skills) or task in skills:
        raise ConfigError(f"stage=cat_eval composes two or more distinct skills other than task={task}: skills=[a,b], got {skills}")
    for name in skills:
        SKILLS.get(name, "skills")
    for with_text in (False, True):
        if eval_task_name(task, with_text) not in EVAL_TASKS:
            raise ConfigError(f"task: {task} has no lm-eval task {eval_task_name(task, with_text)}: its folder's "
                              "__init__.py calls register_skill_eval_tasks (as skills/dated_commits does)")
    return task, skills


def plan(ctx: Context, domain: Optional[str]):
    task, skills = _check(ctx)
    needs = adapter_needs(ctx, skills)
    needs |= {"mixed": Need(ctx, "s2l_shared"), "cat": Need(ctx, "cat")}
    return {"skill_eval": settings_key(ctx), "task": task, "skills": skills,
            "task_files": task_digest([eval_task_name(task, t) for t in (False, True)]), "model": ctx.base_fingerprint}, needs



def _adapter(ctx: Context, name: str):
    def build(inputs):
        model = load_lora(load_model(ctx.model_dir), inputs[name].file("adapter"), ctx.base_fingerprint)
        return model, param_bytes(model), {"adapter_bytes": adapter_nbytes(inputs[name].file("adapter"))}

    return build


def _peft_merge(ctx: Context, skills: list[str], combination: str):
    def build(inputs):
        from peft import get_peft_model_state_dict

        model = load_model(ctx.model_dir)
        for name in skills:
            model = load_lora(model, inputs[f"s2l_{name}"].file("adapter"), ctx.base_fingerprint, adapter_name=name)
        density = {"density": ctx.cfg.skill_eval.ties_density} if combination == "ties" else {}
        model.add_weighted_adapter(skills, [1.0] * len(skills), "merged", combination_type=combination, **density)
        model.set_adapter("merged")
        for name in skills:
            model.delete_adapter(name)
        merged = sum(t.numel() * t.element_size() for t in get_peft_model_state_dict(model, adapter_name="merged").values())
        return model.eval(), param_bytes(model), {"adapter_bytes": merged}

    return build


def _composed(ctx: Context, skills: list[str], learned: bool):
    def build(inputs):
        model = load_model(ctx.model_dir)
        nbytes = param_bytes(model) + sum(adapter_nbytes(inputs[f"s2l_{s}"].file("adapter")) for s in skills)
        parts = [from_peft_adapter(inputs[f"s2l_{s}"].file("adapter"), name=s) for s in skills]
        details = {}
        if learned:
            composition, _ = load_composition(inputs["cat"].file("composition"), parts, ctx.base_fingerprint)
            alphas = composition.alphas()
            attach_composition(model, parts, alphas, expected_fingerprint=ctx.base_fingerprint)
            nbytes += sum(a.numel() * a.element_size() for a in alphas.values())
            details["mean_alpha"] = {s: round(sum(float(a[k]) for a in alphas.values()) / len(alphas), 4)
                                     for k, s in enumerate(skills)}
        else:
            attach_composition(model, parts, 1.0, expected_fingerprint=ctx.base_fingerprint)
        return model, nbytes, details

    return build


def rows(ctx: Context, skills: list[str]) -> list[Row]:
    adapters = tuple(f"s2l_{s}" for s in skills)
    return [
        Row("base", (), backbone(ctx)),
        Row("base_in_context", (), backbone(ctx), with_skill_text=True),
        *(Row(f"single_{s}", (f"s2l_{s}",), _adapter(ctx, f"s2l_{s}")) for s in skills),
        Row("uniform", adapters, _composed(ctx, skills, learned=False)),
        *(Row(f"peft_{c}", adapters, _peft_merge(ctx, skills, c),
              settings={"density": ctx.cfg.skill_eval.ties_density} if c == "ties" else {}) for c in PEFT_COMBINATIONS),
        Row("mixed", ("mixed",), _adapter(ctx, "mixed")),
        Row("cat", (*adapters, "cat"), _composed(ctx, skills, learned=True)),
    ]


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    task, skills = _check(ctx)
    report = run_rows(ctx, ref, rows(ctx, skills), [task], inputs, references=("base", "cat"),
                      title=f"CAT: {' + '.join(skills)} on {task}")
    return {r["name"]: round(r["average"], 4) for r in report["configurations"]}


register_stage(Stage(
    "cat_eval", per_domain=False, plan=plan, run=run, outputs={"results": "results.json", "table": "results.md"},
    pulls=Pulls.everything, check=check_backend, label=lambda ctx: ctx.cfg.task or "none",
))
