"""SkillZip as a compressor: `skillweave.zip.compress_residual` with the context's `zip` settings.

The zip stage makes the served skillpacks (with the fidelity check and the domain's own calibration
prompts); this is the same compression behind the common interface, so SkillZip is measured by the same
contract as the baselines. Smoothing and static activation scales (zip.act_scale=tensor) read the
context's `Calibration`; block linears are factored, the embedding at `zip.embedding_rank`, 1-D tensors
kept in fp16.

Error bound 0.1: the truncation error at rank 16 of a delta with most of its energy in 4 directions (the
noise beyond them) plus INT8 rounding of the factors; measured 0.068 on the contract test's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.compressors import CompressContext, Compressor, register_compressor
from ..core.errors import ConfigError
from ..zip import EMBEDDING, HEAD, Skillpack, calibrate_act_scales, compress_residual, skillpack_nbytes
from ..zip.smoothing import collect_channel_stats


@dataclass
class SkillZipped:
    skillpack: Skillpack
    """Made for no backbone in particular (empty domain and fingerprint): not for attaching."""

    def reconstruct(self) -> dict[str, torch.Tensor]:
        """The dequantized factors' A B diag(s)^-1 (the fp path) and the dense fp16 residuals, float32."""
        sp = self.skillpack
        out = {f"{name}.weight": f.a() @ f.b() for name, f in sp.factors.items()}
        if sp.tied_embeddings and EMBEDDING in sp.factors:
            out[f"{HEAD}.weight"] = out[f"{EMBEDDING}.weight"]
        return out | {key: t.float() for key, t in sp.dense.items()}

    def nbytes(self) -> int:
        return skillpack_nbytes(self.skillpack)


def compress(residual: dict[str, torch.Tensor], ctx: CompressContext) -> SkillZipped:
    """Raises ConfigError: smoothing or static activation scales without a calibration."""
    z, cal = ctx.zip, ctx.calibration
    if cal is None and (z.smoothing != "none" or z.act_scale == "tensor"):
        raise ConfigError(
            f"skillzip with zip.smoothing={z.smoothing} and zip.act_scale={z.act_scale} calibrates on texts: "
            "give a Calibration, or zip.smoothing=none and zip.act_scale=token"
        )
    names = sorted(ctx.linear_names)
    stats = collect_channel_stats(cal.model, cal.batches, names) if z.smoothing != "none" else None
    sp = compress_residual(
        residual, set(names), z.rank, z.bits, domain="", backbone_fingerprint="",
        smoothing=z.smoothing, alpha=z.alpha, rotation=z.rotation, energy=z.energy, calibration=stats,
        seed=z.seed, embedding_rank=z.embedding_rank, tied_embeddings=ctx.tied_embeddings,
    )
    if z.act_scale == "tensor":
        calibrate_act_scales(cal.model, sp, cal.batches, z.act_percentile)
    return SkillZipped(sp)


register_compressor("skillzip", Compressor(compress=compress, rel_error_bound=0.1))
