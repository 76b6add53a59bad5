"""The compressors' plug point: a delta goes in, something that reconstructs it and counts its bytes comes out.

SkillZip and the baselines it is compared with (BitDelta, Delta-CoMe, Twin-Merging's exclusive factors)
are plugins (skillweave/compressors/), one module each, registered in `COMPRESSORS`. An eval configuration
looks one up by name, and one contract test (tests/test_compressors.py) checks every registered one, so
a new method is one new file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from ..config import ZipConfig
from .registry import Registry


@runtime_checkable
class Compressed(Protocol):
    """A compressed delta."""

    def reconstruct(self) -> dict[str, torch.Tensor]:
        """float32 approximations of the tensors it keeps, by parameter name, shaped as in the delta; a
        tensor it drops is absent (zero), as in the papers: each method says which it keeps."""
        ...

    def nbytes(self) -> int:
        """Bytes of the tensors served (shapes and other metadata are not counted)."""
        ...


@runtime_checkable
class LowRank(Protocol):
    """A compressed delta held as factors, which a server applies without forming the weights (Twin-Merging)."""

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Linear module name -> (A out x r, B r x in) as stored; its weight's delta is A.float() @ B.float()."""
        ...


@dataclass(frozen=True)
class Calibration:
    """Texts a compressor may fit on: BitDelta distils its scales against `model` + the exact delta,
    SkillZip smooths with the activation statistics of `model`'s linears."""

    model: nn.Module
    """The model the delta is added to (theta_0 for a fine-tune's delta, the merged backbone for a
    residual); read, never modified."""
    batches: list[dict[str, torch.Tensor]]
    """Tokenized texts of the delta's domain, model(**batch) inputs, one unpadded sequence each."""


@dataclass(frozen=True)
class CompressContext:
    """What a compressor reads besides the delta."""

    linear_names: frozenset[str]
    """Module names of the block linears (`skillweave.zip.block_linear_names`): every compressor keeps
    their weights; what else it keeps (1-D tensors, the embedding) is the method's own choice."""
    zip: ZipConfig = field(default_factory=lambda: ZipConfig(smoothing="none"))
    """The low-rank methods' settings: SkillZip takes all of them, Twin-Merging the rank."""
    tied_embeddings: bool = False
    """The model's output head is its input embedding (`config.tie_word_embeddings`)."""
    calibration: Calibration | None = None
    """None: the methods that can fit on texts do without (BitDelta keeps its initial scales)."""


@dataclass(frozen=True)
class Compressor:
    compress: Callable[[dict[str, torch.Tensor], CompressContext], Compressed]
    """(delta, context) -> the compressed delta; the delta is not modified."""
    rel_error_bound: float
    """The relative Frobenius error of `reconstruct()` over the block linears' weights that the method
    stays below, uncalibrated, on a delta whose energy lies in a few directions, as fine-tunes' deltas do
    (the contract test's: rank 4 plus 10% noise); its module says how it was measured. A calibrated
    compressor may trade weight error for output error (BitDelta's distilled scales)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Its own constants that change its result (e.g. BitDelta's distillation steps): an eval row that
    uses it hashes them into its key."""


COMPRESSORS: Registry[Compressor] = Registry("compressor")


def register_compressor(name: str, compressor: Compressor) -> Compressor:
    return COMPRESSORS.register(name)(compressor)
