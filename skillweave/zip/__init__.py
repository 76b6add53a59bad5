"""SkillZip: per-domain residuals compressed into skillpacks (smoothing, SVD, rotation, INT8/INT4).

smoothing.py (calibration statistics, channel-wise smoothing, rank-wise rotation), svd.py (low-rank
factors, energy ranks), quant.py (per-channel and static integer quantization, INT4 packing),
format.py (the Skillpack data model and its file format), compress.py (compression of a residual,
static activation scales), kernels.py (SkillpackLinear and SkillpackEmbedding: the fp and integer
paths of the delta), attach.py (attaching a skillpack at inference and detaching it), fidelity.py
(next-token KL against the uncompressed residual), export.py (PEFT LoRA adapters), routing.py (a
mixed-domain batch served grouped per skillpack).
"""

from skillweave.core.errors import SkillpackError
from skillweave.zip.attach import (
    attach_skillpack,
    attached_domain,
    attached_skillpack,
    backbone_modules,
    detach_skillpack,
    skillpack_attached,
)
from skillweave.zip.compress import block_linear_names, calibrate_act_scales, compress_residual
from skillweave.zip.format import (
    EMBEDDING,
    HEAD,
    QuantizedFactors,
    Skillpack,
    load_skillpack,
    save_skillpack,
    skillpack_nbytes,
)
from skillweave.zip.kernels import SkillpackEmbedding, SkillpackLinear

__all__ = [
    "EMBEDDING",
    "HEAD",
    "QuantizedFactors",
    "Skillpack",
    "SkillpackError",
    "SkillpackEmbedding",
    "SkillpackLinear",
    "attach_skillpack",
    "attached_domain",
    "attached_skillpack",
    "backbone_modules",
    "block_linear_names",
    "calibrate_act_scales",
    "compress_residual",
    "detach_skillpack",
    "load_skillpack",
    "save_skillpack",
    "skillpack_attached",
    "skillpack_nbytes",
]
