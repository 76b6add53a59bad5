"""Stage 2b: SkillZip, the residual R_k = Delta_k - Delta_shared compressed into a skillpack.

Per linear layer of the decoder blocks: truncated SVD at `zip.rank`, both factors INT8 with
per-channel scales (skillweave/zip/). The skillpack is stamped with the merged backbone's
fingerprint: it only makes sense on top of that backbone.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Optional

import torch

from ..artifacts import ArtifactRef
from ..models import linear_module_names, model_fingerprint
from ..pipeline import STAGES, Context, Stage, ref_for
from .dpo import DELTA, load_delta
from .merge import BACKBONE, SHARED

SKILLPACK = "skillpack.safetensors"


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    return {"zip": asdict(cfg.zip)}, {"merge": ref_for(ctx, "merge"), "dpo": ref_for(ctx, "dpo", domain)}


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..zip import compress_residual, save_skillpack, skillpack_nbytes

    cfg = ctx.for_domain(domain).zip
    if cfg.method != "svd_int8":
        raise ValueError(f"zip.method={cfg.method!r} is not implemented; valid: svd_int8")
    shared = load_delta(inputs["merge"].path / SHARED, backbone_fingerprint=ctx.base_fingerprint)
    delta = load_delta(inputs["dpo"].path / DELTA, backbone_fingerprint=ctx.base_fingerprint)
    residual = {k: delta[k] - shared[k] for k in delta}
    backbone_dir = inputs["merge"].path / BACKBONE
    with torch.device("meta"):  # module names only: no weights allocated
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(backbone_dir))
    skillpack = compress_residual(
        residual,
        linear_names=set(linear_module_names(skeleton)),
        rank=cfg.rank,
        bits=cfg.bits,
        domain=domain,
        backbone_fingerprint=model_fingerprint(backbone_dir),
    )
    save_skillpack(skillpack, ref.path / SKILLPACK)
    errors = list(skillpack.meta.get("layer_rel_error", {}).values())
    dense_fp16 = sum(2 * t.numel() for t in residual.values())
    nbytes = skillpack_nbytes(skillpack)
    return {
        "bytes": nbytes,
        "dense_fp16_bytes": dense_fp16,
        "compression": round(dense_fp16 / nbytes, 2) if nbytes else None,
        "layers": len(skillpack.factors),
        "mean_layer_rel_error": round(sum(errors) / len(errors), 4) if errors else None,
        "max_layer_rel_error": round(max(errors), 4) if errors else None,
        "dropped": skillpack.meta.get("dropped", {}),
    }


STAGES.register("zip")(Stage("zip", per_domain=True, plan=plan, run=run))
