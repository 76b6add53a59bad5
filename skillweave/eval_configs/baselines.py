"""Eval configurations of the delta-compression baselines, and the memory budget.

Each compresses every fine-tune's own delta Delta_k (not a residual on a merged backbone) and serves
the original backbone theta_0 plus the domain's decompressed delta, oracle routing; the bytes are the
backbone's plus the sum of the K compressed deltas, counted from the tensors held
(skillweave/baselines.py says what each method keeps and how faithful it is):
  bitdelta            theta_0 + BitDelta(Delta_k), scales distilled on the domain's calibration texts
                      (the same first `zip.calibration_prompts` prompts of its generate artifact as SkillZip)
  bitdelta_nodistill  the same without distillation: scales = mean|Delta| (BitDelta's init)
  delta_come          theta_0 + mixed-precision SVD of Delta_k (8/4-bit singular vectors, 1 bit/entry budget)
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from ..baselines import (
    bitdelta_compress,
    bitdelta_nbytes,
    bitdelta_reconstruct,
    delta_come_compress,
    delta_come_nbytes,
    delta_come_reconstruct,
    distill_bitdelta_scales,
)
from ..core.configurations import Configuration, Scorer, register_configuration
from ..core.engine import Context, per_domain_needs
from ..core.errors import DataError
from ..deltas import add_delta, load_delta, param_bytes
from ..models import load_model, load_tokenizer
from ..sampling import domain_texts
from ..zip import block_linear_names

DISTILL_STEPS = 100
"""Adam steps on the scales; the paper runs 200 on 800 samples, ours are a handful of texts."""
DISTILL_LR = 5e-2
"""Relative to each scale's init (see distill_bitdelta_scales): the paper's 1e-4 on scales of ~1e-4 to
1e-3 is a relative step of the same order; the lowest-loss scales are kept, so a large step is safe."""


def _per_domain(ctx: Context, refs: dict, score: Scorer, compress: Callable[..., tuple[dict, int]]) -> dict:
    """theta_0 + compress(Delta_d) on each domain d; bytes = theta_0 + the sum of compressed bytes.

    `compress(ctx, refs, d, base_model, delta) -> (approximate delta, bytes held)`.
    """
    tok = load_tokenizer(ctx.model_dir)
    total, scores = 0, {}
    for d in ctx.cfg.domains:
        model = load_model(ctx.model_dir)  # a fresh theta_0 per domain: adding a delta is not undone exactly
        total = total or param_bytes(model)  # the one backbone held
        delta = load_delta(refs[f"dpo_{d}"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
        approx, nbytes = compress(ctx, refs, d, model, delta)
        total += nbytes
        scores[d] = score(add_delta(model, approx), tok, d)
    return {"bytes": total, "scores": scores}


def _bitdelta(ctx: Context, refs: dict, d: str, model: torch.nn.Module, delta: dict, distill: bool) -> tuple[dict, int]:
    compressed = bitdelta_compress(delta, block_linear_names(model))
    if distill:
        tok = load_tokenizer(ctx.model_dir)
        texts = domain_texts(refs[f"generate_{d}"].file("samples"), tok, ctx.for_domain(d).zip.calibration_prompts)
        if not texts:
            raise DataError(f"bitdelta distills on calibration texts; the generate artifact of {d} has none")
        batches = [dict(tok(t, return_tensors="pt", add_special_tokens=False)) for t in texts]
        teacher = add_delta(load_model(ctx.model_dir), delta)
        compressed["scales"], _ = distill_bitdelta_scales(
            model, teacher, compressed["signs"], compressed["scales"], batches, DISTILL_STEPS, DISTILL_LR
        )
    return bitdelta_reconstruct(compressed), bitdelta_nbytes(compressed)


def _delta_come(ctx: Context, refs: dict, d: str, model: torch.nn.Module, delta: dict) -> tuple[dict, int]:
    compressed = delta_come_compress(delta, block_linear_names(model))
    return delta_come_reconstruct(compressed), delta_come_nbytes(compressed)


register_configuration("bitdelta", Configuration(
        needs=lambda ctx: per_domain_needs(ctx, "dpo") | per_domain_needs(ctx, "generate"),
        run=lambda ctx, refs, score: _per_domain(ctx, refs, score, partial(_bitdelta, distill=True)),
        settings=lambda ctx: {
            "calibration_prompts": {d: ctx.for_domain(d).zip.calibration_prompts for d in ctx.cfg.domains},
            "distill_steps": DISTILL_STEPS,
            "distill_lr": DISTILL_LR,
        },
    )
)
register_configuration("bitdelta_nodistill", Configuration(needs=lambda ctx: per_domain_needs(ctx, "dpo"), run=lambda ctx, refs, score: _per_domain(ctx, refs, score, partial(_bitdelta, distill=False)))
)
register_configuration("delta_come", Configuration(needs=lambda ctx: per_domain_needs(ctx, "dpo"), run=lambda ctx, refs, score: _per_domain(ctx, refs, score, _delta_come))
)


