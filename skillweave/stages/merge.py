"""Stage 2a: the shared delta (mergekit) goes into the backbone; the residuals stay per domain.

Delta_shared = Merge(Delta_1..Delta_K), computed by mergekit on the task vectors with an all-zero
base (so base + result equals mergekit's full merge); the new backbone is theta_0 + Delta_shared,
saved as a plain HF directory. Residual R_k = Delta_k - Delta_shared is formed by the zip stage.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from ..artifacts import ArtifactRef, atomic_write_json
from ..config import MergeConfig
from ..models import FINGERPRINT_FILE, fingerprint, load_model, load_state_dict, load_tokenizer
from ..pipeline import STAGES, Context, Stage, ref_for
from .dpo import DELTA, delta_stats, load_delta, save_delta

SHARED = "shared_delta.safetensors"
BACKBONE = "backbone"
METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


def plan(ctx: Context, domain: Optional[str]):
    inputs = {f"dpo_{d}": ref_for(ctx, "dpo", d) for d in ctx.cfg.domains}
    return {"merge": asdict(ctx.cfg.merge), "model": ctx.base_fingerprint, "domains": list(ctx.cfg.domains)}, inputs


def shared_delta(deltas: dict[str, dict[str, torch.Tensor]], cfg: MergeConfig) -> dict[str, torch.Tensor]:
    """mergekit's merge of the task vectors `deltas` (domain -> delta), relative to a zero base."""
    from mergekit.merge_methods import merge_state_dicts

    if cfg.method not in METHODS:
        raise ValueError(f"merge.method={cfg.method!r} is not supported; valid: {', '.join(METHODS)}")
    params = {"weight": cfg.weight, "lambda": cfg.lambda_}
    if cfg.method != "task_arithmetic":
        params |= {"density": cfg.density}
    if cfg.method in ("ties", "dare_ties", "task_arithmetic"):
        params |= {"normalize": cfg.normalize}
    first = next(iter(deltas.values()))
    zero = {k: torch.zeros_like(v) for k, v in first.items()}
    torch.manual_seed(cfg.seed)  # DARE's random drop
    with torch.no_grad():
        merged = merge_state_dicts({"__base__": zero, **deltas}, cfg.method, parameters=params, base="__base__")
    return {k: v.float().contiguous() for k, v in merged.items()}


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    deltas = {
        d: load_delta(inputs[f"dpo_{d}"].path / DELTA, backbone_fingerprint=ctx.base_fingerprint)
        for d in ctx.cfg.domains
    }
    shared = shared_delta(deltas, ctx.cfg.merge)
    base = load_state_dict(ctx.model_dir)
    save_delta(ref.path / SHARED, shared, backbone_fingerprint=ctx.base_fingerprint, domain=None)
    fp = save_backbone(ctx.model_dir, {k: base[k] + shared[k] for k in base}, ref.path / BACKBONE)
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


def save_backbone(template_dir: Path, state_dict: dict[str, torch.Tensor], out: Path) -> str:
    """A HF model directory with `state_dict` as weights (config and tokenizer from `template_dir`)."""
    import shutil

    model = load_model(template_dir)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if unexpected or any(not k.startswith("lm_head") for k in missing):
        raise ValueError(f"backbone weights do not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    load_tokenizer(template_dir).save_pretrained(tmp)
    fp = fingerprint(model.state_dict())
    atomic_write_json(tmp / FINGERPRINT_FILE, {"fingerprint": fp})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return fp


STAGES.register("merge")(Stage("merge", per_domain=False, plan=plan, run=run))
