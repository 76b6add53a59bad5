"""SkillWeave with oracle routing: the merged backbone, each domain's skillpack attached in place for
that domain's prompts (integer GEMMs when `eval.integer_path`), detached after.

  skillweave           every domain's eval subset; with eval.backend=vllm and eval.integer_path=false
                       served by vLLM as the backbone plus each skillpack as a LoRA adapter (its fp path)
  skillweave_intcheck  the same skillpacks on the integer path, scored by HF on the first
                       `eval.integer_check_docs` documents of each domain's subset: paired with the
                       skillweave row (eval.compare_to), what the integer path changes on those documents
"""

from __future__ import annotations

from ..core.configurations import Configuration, Scorer, eval_limits, eval_tasks, register_configuration
from ..core.engine import Context, Need, per_domain_needs
from ..deltas import param_bytes
from ..evaluation import eval_prompts, evaluate
from ..models import load_model, load_tokenizer, model_fingerprint
from ..zip import attach_skillpack, detach_skillpack, load_skillpack, skillpack_nbytes


def _skillweave(ctx: Context, refs: dict, score: Scorer) -> dict:
    path = refs["merge"].file("backbone")
    model, tok = load_model(path), load_tokenizer(path)
    fp = model_fingerprint(path)
    total, scores = param_bytes(model), {}
    for d in ctx.cfg.domains:
        skillpack = load_skillpack(refs[f"zip_{d}"].file("skillpack"), expected_fingerprint=fp)
        total += skillpack_nbytes(skillpack)
        attach_skillpack(model, skillpack, expected_fingerprint=fp, int_mm=ctx.cfg.eval.integer_path)
        try:
            scores[d] = score(model, tok, d)
        finally:
            detach_skillpack(model)
    return {"bytes": total, "scores": scores}


register_configuration("skillweave", Configuration(
    needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "zip"), run=_skillweave,
))


def _intcheck(ctx: Context, refs: dict, score: Scorer) -> dict:
    ev, tasks, limits = ctx.cfg.eval, eval_tasks(ctx), eval_limits(ctx)
    path = refs["merge"].file("backbone")
    model, tok = load_model(path), load_tokenizer(path)
    fp = model_fingerprint(path)
    total, scores, samples = param_bytes(model), {}, {}
    for d in ctx.cfg.domains:
        skillpack = load_skillpack(refs[f"zip_{d}"].file("skillpack"), expected_fingerprint=fp)
        total += skillpack_nbytes(skillpack)
        docs = [i for i, _ in eval_prompts(tasks[d], limit=limits[d])][: ev.integer_check_docs]
        attach_skillpack(model, skillpack, expected_fingerprint=fp, int_mm=True)
        try:
            r = evaluate(model, tok, [tasks[d]], limit=None, doc_ids={tasks[d]: docs}, max_gen_toks=ev.max_gen_toks,
                         batch_size=ev.batch_size, compiled_decode=ctx.cfg.model.compiled_decode)[tasks[d]]
        finally:
            detach_skillpack(model)
        scores[d] = {k: r[k] for k in ("score", "stderr", "n", "metric")}
        samples[d] = r["samples"]
    return {"bytes": total, "scores": scores, "samples": samples}


register_configuration("skillweave_intcheck", Configuration(
    needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "zip"), run=_intcheck,
    settings=lambda ctx: {"integer_check_docs": ctx.cfg.eval.integer_check_docs},
))
