"""Eval configurations of the delta-compression baselines, and the memory budget.

Each compresses every fine-tune's own delta Delta_k (not a residual on a merged backbone) with a
compressor of `core.compressors.COMPRESSORS` and serves the original backbone theta_0 plus the domain's
decompressed delta, oracle routing; the bytes are the backbone's plus the sum of the K compressed deltas,
counted from the tensors held (skillweave/compressors/ says what each method keeps and how faithful it is):
  bitdelta            theta_0 + BitDelta(Delta_k), scales distilled on the domain's calibration texts
                      (the same first `zip.calibration_prompts` prompts of its generate artifact as SkillZip)
  bitdelta_nodistill  the same without distillation: scales = mean|Delta| (BitDelta's init)
  delta_come          theta_0 + mixed-precision SVD of Delta_k (8/4-bit singular vectors, 1 bit/entry budget)
  compressed_<name>   theta_0 + any other registered compressor's reconstruction of Delta_k, uncalibrated
                      (compressed_skillzip: SkillZip on the whole fine-tune, no merge; compressed_twin)
"""

from __future__ import annotations

from ..core.compressors import COMPRESSORS, Calibration, CompressContext
from ..core.configurations import Configuration, Scorer, register_configuration
from ..core.engine import Context, per_domain_needs
from ..core.errors import DataError
from ..deltas import add_delta, load_delta, param_bytes
from ..models import load_model, load_tokenizer
from ..sampling import domain_texts
from ..zip import block_linear_names


def _per_domain(ctx: Context, refs: dict, score: Scorer, method: str, calibrated: bool = False) -> dict:
    """theta_0 + the compressor `method`'s reconstruction of Delta_d on each domain d; bytes = theta_0 + the
    sum of the compressed bytes. `calibrated`: on the domain's calibration texts."""
    compressor = COMPRESSORS.get(method, "compressor")
    tok = load_tokenizer(ctx.model_dir)
    total, scores = 0, {}
    for d in ctx.cfg.domains:
        model = load_model(ctx.model_dir)  # a fresh theta_0 per domain: adding a delta is not undone exactly
        total = total or param_bytes(model)  # the one backbone held
        delta = load_delta(refs[f"dpo_{d}"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
        calibration = _calibration(ctx, refs, d, model, tok, method) if calibrated else None
        compressed = compressor.compress(delta, CompressContext(frozenset(block_linear_names(model)), calibration=calibration))
        total += compressed.nbytes()
        scores[d] = score(add_delta(model, compressed.reconstruct()), tok, d)
    return {"bytes": total, "scores": scores}


def _calibration(ctx: Context, refs: dict, d: str, model, tok, method: str) -> Calibration:
    """The first `zip.calibration_prompts` texts of the domain's generate artifact, on theta_0."""
    texts = domain_texts(refs[f"generate_{d}"].file("samples"), tok, ctx.for_domain(d).zip.calibration_prompts)
    if not texts:
        raise DataError(f"{method} calibrates on texts; the generate artifact of {d} has none")
    return Calibration(model, [dict(tok(t, return_tensors="pt", add_special_tokens=False)) for t in texts])


register_configuration("bitdelta", Configuration(
    needs=lambda ctx: per_domain_needs(ctx, "dpo") | per_domain_needs(ctx, "generate"),
    run=lambda ctx, refs, score: _per_domain(ctx, refs, score, "bitdelta", calibrated=True),
    settings=lambda ctx: {
        "calibration_prompts": {d: ctx.for_domain(d).zip.calibration_prompts for d in ctx.cfg.domains},
        **COMPRESSORS.get("bitdelta", "compressor").settings,
    },
))
register_configuration("bitdelta_nodistill", Configuration(
    needs=lambda ctx: per_domain_needs(ctx, "dpo"), run=lambda ctx, refs, score: _per_domain(ctx, refs, score, "bitdelta"),
))
register_configuration("delta_come", Configuration(
    needs=lambda ctx: per_domain_needs(ctx, "dpo"), run=lambda ctx, refs, score: _per_domain(ctx, refs, score, "delta_come"),
))


def _compressed(name: str) -> Configuration:
    """theta_0 + the compressor `name`'s reconstruction of each Delta_k: a new compressor is a new baseline."""
    return Configuration(
        needs=lambda ctx: per_domain_needs(ctx, "dpo"),
        run=lambda ctx, refs, score: _per_domain(ctx, refs, score, name),
        settings=lambda ctx: dict(COMPRESSORS.get(name, "compressor").settings),
    )


for _name in COMPRESSORS.names():
    if _name not in ("bitdelta", "delta_come"):  # configured above, with their own names
        register_configuration(f"compressed_{_name}", _compressed(_name))
