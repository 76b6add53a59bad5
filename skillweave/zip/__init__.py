"""SkillZip: per-domain residuals compressed into skillpacks (smoothing, SVD, rotation, INT8/INT4).

smoothing.py (calibration statistics, channel-wise smoothing, rank-wise rotation), svd.py (low-rank
factors, energy ranks), quant.py (per-channel and static integer quantization, INT4 packing),
skillpack.py (the file format, compression of a residual, static activation scales, attaching a
skillpack at inference), fidelity.py (next-token KL against the uncompressed residual), export.py
(PEFT LoRA adapters), routing.py (a mixed-domain batch served grouped per skillpack).
"""

from skillweave.zip.skillpack import (
    QuantizedFactors,
    Skillpack,
    SkillpackError,
    SkillpackEmbedding,
    SkillpackLinear,
    attach_skillpack,
    attached_domain,
    block_linear_names,
    calibrate_act_scales,
    compress_residual,
    detach_skillpack,
    load_skillpack,
    save_skillpack,
    skillpack_nbytes,
)

__all__ = [
    "QuantizedFactors",
    "Skillpack",
    "SkillpackError",
    "SkillpackEmbedding",
    "SkillpackLinear",
    "attach_skillpack",
    "attached_domain",
    "block_linear_names",
    "calibrate_act_scales",
    "compress_residual",
    "detach_skillpack",
    "load_skillpack",
    "save_skillpack",
    "skillpack_nbytes",
]
