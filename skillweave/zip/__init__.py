"""SkillZip: per-domain residuals compressed into skillpacks (truncated SVD + INT8 factors).

svd.py (low-rank factors), quant.py (per-channel integer quantization), skillpack.py (the file
format, compression of a residual, and attaching a skillpack to a model at inference).
"""

from skillweave.zip.skillpack import (
    QuantizedFactors,
    Skillpack,
    SkillpackError,
    SkillpackLinear,
    attach_skillpack,
    attached_domain,
    block_linear_names,
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
    "SkillpackLinear",
    "attach_skillpack",
    "attached_domain",
    "block_linear_names",
    "compress_residual",
    "detach_skillpack",
    "load_skillpack",
    "save_skillpack",
    "skillpack_nbytes",
]
