"""SkillWeave with oracle routing: the merged backbone, each domain's skillpack attached in place for
that domain's prompts (integer GEMMs when `eval.integer_path`), detached after.

  skillweave           every domain's eval subset; with eval.backend=vllm and eval.integer_path=false
                       served by vLLM on the skillpacks' fp path (the backbone with each one folded in,
                       or plus it as a LoRA adapter: eval.vllm_adapters)
  skillweave_intcheck  the same skillpacks on the integer path, scored by HF on the first
                       `eval.integer_check_docs` documents of each domain's subset: paired with the
                       skillweave row (eval.compare_to), what the integer path changes on those documents
"""

from __future__ import annotations

from ..core.configurations import (
    Configuration,
    Scorer,
    eval_limits,
    eval_tasks,
    register_configuration,
    served_adapters,
)
from ..core.engine import Context, Need, per_domain_needs
from ..deltas import param_bytes
from ..eval_tasks import task_digest
from ..evaluation import eval_prompts, evaluate
from ..models import load_model, load_tokenizer, model_fingerprint
from ..zip import load_skillpack, skillpack_attached, skillpack_nbytes


def _backbone_and_skillpacks(ctx: Context, refs: dict) -> tuple:
    """The merged backbone, its tokenizer and fingerprint, each domain's skillpack (checked against that
    fingerprint), and the bytes the backbone and all of them hold."""
    path = refs["merge"].file("backbone")
    model, tok, fp = load_model(path), load_tokenizer(path), model_fingerprint(path)
    packs = {d: load_skillpack(refs[f"zip_{d}"].file("skillpack"), expected_fingerprint=fp) for d in ctx.cfg.domains}
    return model, tok, fp, packs, param_bytes(model) + sum(skillpack_nbytes(sp) for sp in packs.values())


def _skillweave(ctx: Context, refs: dict, score: Scorer) -> dict:
    model, tok, fp, packs, nbytes = _backbone_and_skillpacks(ctx, refs)
    scores = {}
    for d, skillpack in packs.items():
        with skillpack_attached(model, skillpack, expected_fingerprint=fp, int_mm=ctx.cfg.eval.integer_path):
            scores[d] = score(model, tok, d)
    return {"bytes": nbytes, "scores": scores}


register_configuration("skillweave", Configuration(
    needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "zip"), run=_skillweave,
    settings=served_adapters,
))


def _intcheck(ctx: Context, refs: dict, score: Scorer) -> dict:
    ev, tasks, limits = ctx.cfg.eval, eval_tasks(ctx), eval_limits(ctx)
    model, tok, fp, packs, nbytes = _backbone_and_skillpacks(ctx, refs)
    scores, samples = {}, {}
    for d, skillpack in packs.items():
        docs = [i for i, _ in eval_prompts(tasks[d], limit=limits[d])][: ev.integer_check_docs]

        def compute(d: str = d, skillpack=skillpack, docs: list = docs) -> dict:
            with skillpack_attached(model, skillpack, expected_fingerprint=fp, int_mm=True):
                return evaluate(model, tok, [tasks[d]], limit=None, doc_ids={tasks[d]: docs},
                                max_gen_toks=ev.max_gen_toks, batch_size=ev.batch_size,
                                compiled_decode=ctx.cfg.model.compiled_decode)[tasks[d]]

        # one resumable cell per domain, as the Scorer's
        r = score.cached(d, {"task": tasks[d], "docs": docs, "task_files": task_digest([tasks[d]])}, compute)
        scores[d] = {k: r[k] for k in ("score", "stderr", "n", "metric")}
        samples[d] = r["samples"]
    return {"bytes": nbytes, "scores": scores, "samples": samples}


register_configuration("skillweave_intcheck", Configuration(
    needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "zip"), run=_intcheck,
    settings=lambda ctx: {"integer_check_docs": ctx.cfg.eval.integer_check_docs},
))
