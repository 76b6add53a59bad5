"""Stage 2b: SkillZip, the residual R_k = Delta_k - Delta_shared compressed into a skillpack.

Per linear layer of the decoder blocks (skillweave/zip/): channel-wise smoothing from the domain's
calibration activations on the merged backbone, truncated SVD at `zip.rank` (or `zip.energy`), a
rank-wise rotation, INT8 or INT4 factors with per-channel scales; the input embedding's residual
(and lm_head's) at `zip.embedding_rank`; with `zip.act_scale=tensor`, static activation scales for
the integer path, calibrated with the skillpack attached. The calibration prompts are the domain's
own (its generate artifact, prompt + sampled answer); the next prompts of that artifact are held out
for the fidelity KL, of the served integer path (kl_skillpack, the only one that uses static
activation scales) and of the fp factors (kl_skillpack_fp). The skillpack is stamped with the merged backbone's
fingerprint: it only makes sense on top of that backbone.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Optional

import torch

from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Need, Stage, register_stage
from ..core.errors import DataError
from ..deltas import load_delta
from ..models import load_model, load_tokenizer, model_fingerprint
from ..sampling import domain_texts
from ..zip.smoothing import ROTATIONS, SMOOTHINGS


def _calibrates(z) -> bool:
    return z.smoothing != "none" or z.act_scale == "tensor"


def _needs_prompts(cfg) -> bool:
    return _calibrates(cfg.zip) or cfg.zip.fidelity_prompts > 0


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    if cfg.zip.smoothing != "none":
        SMOOTHINGS.get(cfg.zip.smoothing, "zip.smoothing")
    if cfg.zip.rotation != "none":
        ROTATIONS.get(cfg.zip.rotation, "zip.rotation")
    inputs = {"merge": Need(ctx, "merge"), "dpo": Need(ctx, "dpo", domain)}
    if _needs_prompts(cfg):
        inputs["generate"] = Need(ctx, "generate", domain)
    return {"zip": asdict(cfg.zip)}, inputs


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..zip import (
        EMBEDDING,
        block_linear_names,
        calibrate_act_scales,
        compress_residual,
        save_skillpack,
        skillpack_nbytes,
    )
    from ..zip.fidelity import skillpack_fidelity
    from ..zip.smoothing import collect_channel_stats

    cfg = ctx.for_domain(domain).zip
    shared = load_delta(inputs["merge"].file("shared_delta"), backbone_fingerprint=ctx.base_fingerprint)
    delta = load_delta(inputs["dpo"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
    residual = {k: delta[k] - shared[k] for k in delta}
    backbone_dir = inputs["merge"].file("backbone")
    with torch.device("meta"):  # module names only: no weights allocated
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(backbone_dir))
    names = sorted(block_linear_names(skeleton))
    tied = bool(getattr(skeleton.config, "tie_word_embeddings", False))

    model = stats = None
    calib: list[dict] = []
    held_out: list[dict] = []
    n_calib = cfg.calibration_prompts if _calibrates(cfg) else 0
    if _needs_prompts(ctx.for_domain(domain)):
        model, tok = load_model(backbone_dir), load_tokenizer(backbone_dir)
        texts = domain_texts(inputs["generate"].file("samples"), tok, n_calib + cfg.fidelity_prompts)
        if n_calib and not texts:
            raise DataError(
                f"zip.smoothing={cfg.smoothing} and zip.act_scale={cfg.act_scale} need calibration prompts; "
                f"the generate artifact of {domain} has none"
            )
        # Calibration comes first; held-out prompts are what is left (none on a tiny smoke run).
        encode = lambda t: dict(tok(t, return_tensors="pt", add_special_tokens=False))  # noqa: E731
        calib = [encode(t) for t in texts[:n_calib]]
        held_out = [encode(t) for t in texts[n_calib:]]
        if calib and cfg.smoothing != "none":
            stats = collect_channel_stats(model, calib, names)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one small SVD per layer: threads only add OpenMP overhead (see tests)
    try:
        skillpack = compress_residual(
            residual,
            linear_names=set(names),
            rank=cfg.rank,
            bits=cfg.bits,
            domain=domain,
            backbone_fingerprint=model_fingerprint(backbone_dir),
            smoothing=cfg.smoothing,
            alpha=cfg.alpha,
            rotation=cfg.rotation,
            energy=cfg.energy,
            calibration=stats,
            seed=cfg.seed,
            embedding_rank=cfg.embedding_rank,
            tied_embeddings=tied,
        )
    finally:
        torch.set_num_threads(threads)
    if cfg.act_scale == "tensor":
        calibrate_act_scales(model, skillpack, calib, cfg.act_percentile)
    if calib:
        skillpack.calibration_summary["prompts"] = len(calib)
    fidelity = skillpack_fidelity(model, residual, skillpack, held_out) if held_out else {}
    skillpack.meta.update(config=asdict(cfg), fidelity=fidelity)
    save_skillpack(skillpack, ref.file("skillpack"))
    rel_error = skillpack.meta["layer_rel_error"]
    errors = [rel_error[name] for name in names if name in rel_error]
    dense_fp16 = sum(2 * t.numel() for t in residual.values())
    nbytes = skillpack_nbytes(skillpack)
    ranks = [skillpack.factors[name].rank for name in names if name in skillpack.factors]
    return {
        "bytes": nbytes,
        "dense_fp16_bytes": dense_fp16,
        "compression": round(dense_fp16 / nbytes, 2) if nbytes else None,
        "layers": len(errors),
        "mean_rank": round(sum(ranks) / len(ranks), 1) if ranks else None,
        "mean_layer_rel_error": round(sum(errors) / len(errors), 4) if errors else None,
        "max_layer_rel_error": round(max(errors), 4) if errors else None,
        "embedding_rel_error": round(rel_error[EMBEDDING], 4) if EMBEDDING in rel_error else None,
        "calibration_tokens": skillpack.calibration_summary.get("tokens", 0),
        **{k: round(v, 6) for k, v in fidelity.items()},
        "dropped": skillpack.meta["dropped"],
    }


register_stage(Stage("zip", per_domain=True, plan=plan, run=run, outputs={"skillpack": "skillpack.safetensors"}))
