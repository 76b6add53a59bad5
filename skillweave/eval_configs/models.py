"""Configurations that serve one whole model per domain: the backbone, the per-domain DPO models, a
merged backbone, an external model."""

from __future__ import annotations

from ..core.configurations import Configuration, Scorer, register_configuration
from ..core.engine import Context, Need, per_domain_needs
from ..core.errors import ConfigError
from ..deltas import add_delta, load_delta, param_bytes
from ..models import load_model, load_tokenizer, model_fingerprint, resolve_model_dir
from ..resources import resource_path


def _base(ctx: Context, refs: dict, score: Scorer) -> dict:
    model = load_model(ctx.model_dir)
    tok = load_tokenizer(ctx.model_dir)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def _dpo(ctx: Context, refs: dict, score: Scorer) -> dict:
    tok = load_tokenizer(ctx.model_dir)
    scores, total = {}, 0
    for d in ctx.cfg.domains:
        delta = load_delta(refs[f"dpo_{d}"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
        model = add_delta(load_model(ctx.model_dir), delta)
        total += param_bytes(model)  # K separate models are held
        scores[d] = score(model, tok, d)
    return {"bytes": total, "scores": scores}


def _merged(ctx: Context, refs: dict, score: Scorer) -> dict:
    path = refs["merge"].file("backbone")
    model, tok = load_model(path), load_tokenizer(path)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def _merged_with(method: str) -> Configuration:
    """The backbone merged by conf/merge/<method>.yaml alone, whatever `merge=` the run uses."""
    return Configuration(needs=lambda ctx: {f"merge_{method}": Need(ctx.variant(f"merge={method}"), "merge")},
                         run=lambda ctx, refs, score: _merged(ctx, {"merge": refs[f"merge_{method}"]}, score))


def _external_dir(ctx: Context):
    if not ctx.cfg.eval.external_model:
        raise ConfigError("eval configuration `external` needs eval.external_model=<HF model directory>")
    return resolve_model_dir(ctx.cfg.eval.external_model, "eval.external_model")


def _external(ctx: Context, refs: dict, score: Scorer) -> dict:
    """Any other HF model directory (`eval.external_model`), e.g. a larger monolith, on every domain."""
    path = _external_dir(ctx)
    model, tok = load_model(path), load_tokenizer(path)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


register_configuration("base", Configuration(needs=lambda ctx: {}, run=_base))
register_configuration("dpo", Configuration(needs=lambda ctx: per_domain_needs(ctx, "dpo"), run=_dpo))
register_configuration("merged", Configuration(needs=lambda ctx: {"merge": Need(ctx, "merge")}, run=_merged))
# Its row is keyed by the external model's weights: a planned run with a bad path fails at start-up.
register_configuration("external", Configuration(
    needs=lambda ctx: {}, run=_external, settings=lambda ctx: {"external": model_fingerprint(_external_dir(ctx))},
))
for _yaml in sorted(resource_path("conf", "merge").glob("*.yaml")):  # a new merge YAML is a new configuration
    register_configuration(f"merged_{_yaml.stem}", _merged_with(_yaml.stem))
