"""Symmetric per-channel integer quantization (INT8, INT4) and INT4 packing.

Symmetric (no zero point) because factors and residual activations are centred on zero, and because a
zero point would add a correction term to every integer GEMM. One scale per channel (row) because the
rows of A and B differ in magnitude by the singular values they carry. INT4 values live in int8
tensors while computing (no INT4 GEMM on CPU or in torch._int_mm) and are packed two per byte only
in storage.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (8, 4)


def check_bits(bits: int) -> None:
    """Raises ValueError for a bit width that has no implementation."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"INT{bits} quantization is not implemented: supported bits are {SUPPORTED_BITS}")


def qmax(bits: int) -> int:
    """Largest integer of the symmetric range [-qmax, qmax] (-2^(bits-1) is never used)."""
    check_bits(bits)
    return 2 ** (bits - 1) - 1


def _scale_shape(t: torch.Tensor, dim: int) -> list[int]:
    shape = [1] * t.ndim
    shape[dim] = t.shape[dim]
    return shape


def quantize_per_channel(
    t: torch.Tensor, bits: int = 8, dim: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize `t` with one scale per index along `dim`.

    scale = max|t| over the other dims / qmax, q = round(t / scale), clamped to [-qmax, qmax]
    (qmax = 127 for INT8, 7 for INT4). A channel that is all zero gets scale 0 and q = 0, so
    `dequantize` returns exact zeros.

    Args:
        t: a float tensor with at least one dim; computed in float32.
        bits: 8 or 4.
        dim: the channel dim (0 = one scale per row).

    Returns:
        (q, scale): q is int8 with t's shape (INT4 values unpacked), scale is float32 of shape
        (t.shape[dim],). |dequantize(q, scale, dim) - t| <= scale / 2 elementwise.

    Raises:
        ValueError: `bits` is not supported.
    """
    top = qmax(bits)
    t = t.float()
    dim = dim % t.ndim
    other = [d for d in range(t.ndim) if d != dim]
    amax = t.abs().amax(dim=other) if other else t.abs()
    scale = amax / top
    safe = torch.where(scale > 0, scale, torch.ones_like(scale)).reshape(_scale_shape(t, dim))
    q = torch.round(t / safe).clamp_(-top, top).to(torch.int8)
    return q, scale


def quantize_static(t: torch.Tensor, inv_scale: torch.Tensor | float, bits: int = 8) -> torch.Tensor:
    """int8 round(t * inv_scale), saturated to [-qmax, qmax]: for a scale fixed at calibration, values
    beyond its range clip to the largest integer instead of wrapping around.

    `inv_scale` is 1 / scale, a scalar or a tensor that broadcasts against `t` (the int path folds the
    smoothing scales into it, so that one multiply does both).
    """
    top = qmax(bits)
    return torch.round(t.float() * inv_scale).clamp_(-top, top).to(torch.int8)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """float32 values of `q` given the per-channel `scale` along `dim` (inverse of quantize_per_channel)."""
    return q.float() * scale.reshape(_scale_shape(q, dim % q.ndim))


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """INT4 values (int8 in [-8, 7]) packed two per byte along the last dim: element 2j in the low
    nibble, 2j+1 in the high one (two's complement). An odd last dim is padded with a zero.

    Returns:
        uint8 of shape (..., ceil(n / 2)); `unpack_int4(packed, n)` gives `q` back exactly.

    Raises:
        ValueError: q is not int8 or holds values outside [-8, 7].
    """
    if q.dtype != torch.int8:
        raise ValueError(f"pack_int4 takes int8 values, got {q.dtype}")
    if q.numel() and (q.min() < -8 or q.max() > 7):
        raise ValueError("pack_int4: values outside the INT4 range [-8, 7]")
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    nibbles = q.to(torch.int16) & 0xF
    return (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """int8 values of an INT4 tensor packed by `pack_int4`, trimmed to `n` along the last dim."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_int4 takes uint8, got {packed.dtype}")
    if not 2 * packed.shape[-1] - 1 <= n <= 2 * packed.shape[-1]:
        raise ValueError(f"a packed last dim of {packed.shape[-1]} cannot hold {n} INT4 values")
    b = packed.to(torch.int16)
    both = torch.stack([b & 0xF, b >> 4], dim=-1).flatten(-2)[..., :n]
    return torch.where(both >= 8, both - 16, both).to(torch.int8)
