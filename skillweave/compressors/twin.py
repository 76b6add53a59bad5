"""Twin-Merging's exclusive knowledge (Lu et al. 2024, arXiv 2406.15479): a domain's residual
R_k = Delta_k - Delta_shared of every block linear as truncated-SVD factors A_k B_k (rank `zip.rank`)
in fp16, which skillweave.router.TwinMerging mixes per input with the router's weights. 1-D residuals
(norm weights) and embeddings are not part of the exclusive knowledge, as BitDelta and Delta-CoMe drop them.

Error bound 0.1: the truncation error at rank 16 of a delta with most of its energy in 4 directions (the
noise beyond them), plus fp16 rounding (~1e-3); measured 0.068 on the contract test's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.compressors import CompressContext, Compressor, register_compressor
from ..zip.svd import low_rank_factors


@dataclass
class TwinFactors:
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]
    """Linear module name -> (A = U_r S_r^1/2, B = S_r^1/2 V_r^T), fp16."""

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self.pairs

    def reconstruct(self) -> dict[str, torch.Tensor]:
        """float32 A B per weight: the delta the hooks apply."""
        return {f"{name}.weight": a.float() @ b.float() for name, (a, b) in self.pairs.items()}

    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.pairs.values())


def compress(residual: dict[str, torch.Tensor], ctx: CompressContext) -> TwinFactors:
    """Rank-`ctx.zip.rank` factors (capped at min(out, in)) of each block linear's `<name>.weight`.

    Raises:
        ValueError: the residual lacks a linear's weight.
    """
    pairs = {}
    for name in sorted(ctx.linear_names):
        if f"{name}.weight" not in residual:
            raise ValueError(f"the residual has no {name}.weight")
        a, b, _ = low_rank_factors(residual[f"{name}.weight"], ctx.zip.rank)
        pairs[name] = (a.to(torch.float16), b.to(torch.float16))
    return TwinFactors(pairs)


register_compressor("twin", Compressor(compress=compress, rel_error_bound=0.1))
