"""SkillWeave with oracle routing: the merged backbone, each domain's skillpack attached in place for
that domain's prompts (integer GEMMs when `eval.integer_path`), detached after."""

from __future__ import annotations

from ..core.configurations import Configuration, Scorer, register_configuration
from ..core.engine import Context, Need, per_domain_needs
from ..deltas import param_bytes
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
