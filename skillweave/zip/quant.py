"""Symmetric per-channel integer quantization of SVD factors and activations.

Symmetric (no zero point) because factors and residual activations are centred on zero, and because a
zero point would add a correction term to every integer GEMM. One scale per channel (row) because the
rows of A and B differ in magnitude by the singular values they carry.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (8,)


def check_bits(bits: int) -> None:
    """Raises ValueError for a bit width that has no implementation yet."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(
            f"INT{bits} quantization is not implemented: supported bits are {SUPPORTED_BITS} "
            "(INT4 comes later, with packed storage and its kernels)"
        )


def _scale_shape(t: torch.Tensor, dim: int) -> list[int]:
    shape = [1] * t.ndim
    shape[dim] = t.shape[dim]
    return shape


def quantize_per_channel(
    t: torch.Tensor, bits: int = 8, dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `t` with one scale per index along `dim`.

    scale = max|t| over the other dims / (2^(bits-1) - 1), q = round(t / scale), clamped to
    [-(2^(bits-1) - 1), 2^(bits-1) - 1] (the range is symmetric: -128 is never used). A channel that
    is all zero gets scale 0 and q = 0, so `dequantize` returns exact zeros.

    Args:
        t: a float tensor with at least one dim; computed in float32.
        bits: integer width; only 8 for now.
        dim: the channel dim (0 = one scale per row).

    Returns:
        (q, scale): q is int8 with t's shape, scale is float32 of shape (t.shape[dim],).
        |dequantize(q, scale, dim) - t| <= scale / 2 elementwise.

    Raises:
        ValueError: `bits` is not supported.
    """
    check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    t = t.float()
    dim = dim % t.ndim
    other = [d for d in range(t.ndim) if d != dim]
    amax = t.abs().amax(dim=other) if other else t.abs()
    scale = amax / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).reshape(_scale_shape(t, dim))
    q = torch.round(t / safe).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """float32 values of `q` given the per-channel `scale` along `dim` (inverse of quantize_per_channel)."""
    return q.float() * scale.reshape(_scale_shape(q, dim % q.ndim))
