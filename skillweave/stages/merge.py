"""Stage 2a: the shared delta (mergekit) goes into the backbone; the residuals stay per domain.

Delta_shared = Merge(Delta_1..Delta_K), computed by mergekit on the task vectors with an all-zero
base (so base + result equals mergekit's full merge); the new backbone is theta_0 + Delta_shared,
saved as a plain HF directory. Residual R_k = Delta_k - Delta_shared is formed by the zip stage.
"""

from __future__ import annotations

from typing import Optional

from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Stage, per_domain_needs, register_stage
from ..deltas import delta_stats, load_delta, save_delta
from ..merging import key_settings, save_backbone, shared_delta
from ..models import load_state_dict


def plan(ctx: Context, domain: Optional[str]):
    inputs = per_domain_needs(ctx, "dpo")
    return {"merge": key_settings(ctx.cfg.merge, ctx.cfg.domains), "model": ctx.base_fingerprint, "domains": list(ctx.cfg.domains)}, inputs


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    deltas = {
        d: load_delta(inputs[f"dpo_{d}"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
        for d in ctx.cfg.domains
    }
    shared = shared_delta(deltas, ctx.cfg.merge)
    base = load_state_dict(ctx.model_dir)
    save_delta(ref.file("shared_delta"), shared, backbone_fingerprint=ctx.base_fingerprint, domain=None)
    fp = save_backbone(ctx.model_dir, {k: base[k] + shared[k] for k in base}, ref.file("backbone"))
    residual_share = {}
    for d, delta in deltas.items():
        r2 = sum(float((delta[k] - shared[k]).double().pow(2).sum()) for k in delta)
        d2 = sum(float(delta[k].double().pow(2).sum()) for k in delta)
        residual_share[d] = round((r2 / d2) ** 0.5, 4) if d2 else 0.0
    return {
        "method": ctx.cfg.merge.method,
        "backbone_fingerprint": fp,
        "shared": delta_stats(shared, base),
        "residual_over_delta": residual_share,
    }


register_stage(Stage(
    "merge", per_domain=False, plan=plan, run=run,
    outputs={"shared_delta": "shared_delta.safetensors", "backbone": "backbone"},
))
