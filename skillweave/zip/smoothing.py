"""SkillZip's double smoothing: channel-wise smoothing of the activations, rank-wise rotation of the
factors, and the calibration statistics the first one needs.

Channel-wise (before the SVD): x W^T = (x diag(s)^-1) (W diag(s))^T for any s > 0, so dividing the
activations' input channels by s and multiplying the residual's columns by s leaves the product
unchanged while moving outlier channels out of the INT8 activations and into the weights. It also
changes which rank-r approximation is best: the SVD of W diag(s) weighs each input column by how
large its activations are, as ASVD does.

Rank-wise (after the SVD): A B = (A Q)(Q^T B) for any orthogonal Q. A = U S^1/2 has orthogonal
columns of squared norm sigma_j; with a Hadamard Q (all entries +-1/sqrt(r)) every column of A Q has
squared norm mean(sigma), so one INT8 range fits all rank channels. Q is folded into the stored
factors and never needed at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from skillweave.core.registry import Registry

SmoothingFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
RotationFn = Callable[[int, int], torch.Tensor]

SMOOTHINGS: Registry[SmoothingFn] = Registry("zip smoothing")
ROTATIONS: Registry[RotationFn] = Registry("zip rotation")

# A channel that calibration never saw active (or a weight column of zeros) would get s = 0 or inf;
# its statistic is floored at this share of the layer's largest one.
_FLOOR = 1e-5


def _floored(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    return t.clamp(min=max(t.max().item(), 1e-30) * _FLOOR)


def _normalised(s: torch.Tensor) -> torch.Tensor:
    """s / geometric mean(s): the product is unchanged by any positive factor; this one keeps both
    x/s and W s near their original magnitudes."""
    return (s / s.log().mean().exp()).float()


@SMOOTHINGS.register("smoothquant")
def smoothquant_scales(act_absmean: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's form s_i = a_i^alpha / w_i^(1 - alpha) (Xiao et al. 2023), with a_i the mean |x_i|
    over calibration tokens and w_i = max |W[:, i]|: alpha = 0.5 balances the two ranges."""
    return _normalised(_floored(act_absmean) ** alpha / _floored(weight_absmax) ** (1.0 - alpha))


@SMOOTHINGS.register("power")
def power_scales(act_absmean: torch.Tensor, weight_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_i = a_i^alpha, ignoring the weights: the aggressive form. alpha = 1 flattens every input
    channel of x/s to the same mean magnitude and hands all of the activations' spread to W."""
    del weight_absmax  # same signature as the other smoothings
    return _normalised(_floored(act_absmean) ** alpha)


def smoothing_scales(
    method: str, act_absmean: torch.Tensor, weight: torch.Tensor, alpha: float
) -> torch.Tensor | None:
    """Channel-wise scales s (in,) for a residual `weight` (out x in), or None for method "none".

    Args:
        method: "none" or a name in SMOOTHINGS ("smoothquant", "power").
        act_absmean: mean |x_i| per input channel over the calibration tokens (`ChannelStats.absmean`).
        weight: the residual the scales will multiply column-wise.
        alpha: migration strength in [0, 1]; 0 means s = 1 for "power".

    Raises:
        KeyError: unknown method (with the valid names). ValueError: alpha or the shapes are wrong.
    """
    if method == "none":
        return None
    fn = SMOOTHINGS.get(method)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    if act_absmean.shape != weight.shape[1:]:
        raise ValueError(
            f"calibration statistics of {tuple(act_absmean.shape)} do not fit a weight of {tuple(weight.shape)}"
        )
    return fn(act_absmean.float(), weight.float().abs().amax(dim=0), alpha)


def hadamard(n: int) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix of size n (a power of two): entries +-1/sqrt(n)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"a Sylvester Hadamard matrix needs a power-of-two size, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / n**0.5).float()


@ROTATIONS.register("hadamard")
def hadamard_rotation(rank: int, seed: int) -> torch.Tensor:
    """Block-diagonal Hadamard over the binary decomposition of `rank` (one block when it is a power
    of two, as the fixed-rank configs are): energy is exactly even within each block. An energy-
    threshold rank such as 24 gets blocks 16 + 8. `seed` is unused: the rotation is deterministic."""
    del seed
    blocks = [hadamard(1 << b) for b in reversed(range(rank.bit_length())) if rank >> b & 1]
    return torch.block_diag(*blocks)


@ROTATIONS.register("random")
def random_rotation(rank: int, seed: int) -> torch.Tensor:
    """A random orthogonal matrix (QR of a seeded Gaussian, signs fixed so it is Haar-distributed):
    spreads energy evenly only in expectation, the baseline the Hadamard is compared with."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(rank, rank, generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def rotation_matrix(method: str, rank: int, seed: int = 0) -> torch.Tensor | None:
    """The orthogonal r x r matrix Q of `method`, or None for "none".

    Raises:
        KeyError: unknown method, with the valid names.
    """
    if method == "none":
        return None
    return ROTATIONS.get(method)(rank, seed)


@dataclass
class ChannelStats:
    """Per input channel statistics of a linear layer's activations over the calibration tokens."""

    absmean: torch.Tensor
    """float32 (in,): mean |x_i|, the input of the channel-wise smoothing."""
    absmax: torch.Tensor
    """float32 (in,): max |x_i|."""
    tokens: int


class _Accumulator:
    def __init__(self) -> None:
        self.abssum: torch.Tensor | None = None
        self.absmax: torch.Tensor | None = None
        self.tokens = 0

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()
        if self.abssum is None:
            self.abssum, self.absmax = x.sum(0), x.amax(0)
        else:
            self.abssum += x.sum(0)
            torch.maximum(self.absmax, x.amax(0), out=self.absmax)
        self.tokens += x.shape[0]


@torch.no_grad()
def collect_channel_stats(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], linear_names: Iterable[str]
) -> dict[str, ChannelStats]:
    """Activation statistics of each named nn.Linear's input, gathered with forward hooks.

    Args:
        model: the backbone the skillpack will run on (the merged one), in eval mode.
        batches: keyword inputs for model(**batch), e.g. {"input_ids": ..., "attention_mask": ...}.
            Padding tokens count as tokens: pass unpadded batches (one sequence each) to avoid them.
        linear_names: module names to hook.

    Returns:
        module name -> ChannelStats (on CPU).

    Raises:
        ValueError: no batch was given, so there are no statistics.
    """
    accumulators = {name: _Accumulator() for name in linear_names}
    hooks = [model.get_submodule(n).register_forward_hook(acc) for n, acc in accumulators.items()]
    try:
        for batch in batches:
            model(**batch)
    finally:
        for h in hooks:
            h.remove()
    stats = {}
    for name, acc in accumulators.items():
        if acc.abssum is None:
            raise ValueError(f"calibration saw no activations for {name}: give it at least one prompt")
        stats[name] = ChannelStats((acc.abssum / acc.tokens).cpu(), acc.absmax.cpu(), acc.tokens)
    return stats
