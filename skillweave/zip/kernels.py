"""The modules that compute a skillpack's delta at inference: `SkillpackLinear` and `SkillpackEmbedding`.

`SkillpackLinear` wraps an nn.Linear (base output + low-rank delta) with two paths, the fp one and the
integer one through `int8_mm` (torch._int_mm, whose shape and layout limits `_int_mm_accepts` and
`_blas_operand` encode, or the same integers from fp32 GEMMs where a CPU has no int8 dot-product
instructions); inside a graph compiled for CPU, at one row, both paths' products are reductions that
inductor fuses (`_as_reduction`). `SkillpackEmbedding` wraps the input embedding. They are separate from
attach.py, which decides where they go in a model, so that the numerics can be benchmarked and tested on a
bare layer.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.nn import functional as F

from skillweave.zip.format import QuantizedFactors
from skillweave.zip.quant import qmax, quantize_per_channel, quantize_static

_TINY = 1e-30  # floor of an activation scale: an all-zero input still gets finite integers (zeros)
_EXACT_K = 1024  # int8 products are at most 128^2 = 2^14 in size: 1024 of them sum to at most 2^24, exact in fp32
_REDUCTION_ROWS = 1
"""Up to this many rows, a graph compiled for CPU writes a skillpack's low-rank products as reductions
(`_as_reduction`). Measured on SmolLM2-135M, compiled decode beside the compiled backbone (AVX2 CPU,
bench/README.md): at 1 row the fp path went from 1.14x to 1.04-1.07x and the integer path from 1.18x to
1.11-1.12x (two runs, with the dispatch change of the same day); at 8 rows the reductions gained nothing
on the fp path and lost on the integer path (1.12x -> 1.17x)."""


def _blas_operand(t: torch.Tensor) -> torch.Tensor:
    """`t` itself if torch._int_mm reads its layout correctly, else a row-major copy.

    On CPU (torch 2.13) _int_mm hands an operand with a unit stride to oneDNN's BLAS-style gemm and
    takes the other stride as its leading dimension. A size-1 dim may carry any stride, e.g. a (1, K)
    token with strides (1, 1) or A_q.t() at rank 1: the leading dimension is then too small and the
    product is silently wrong. Row-major (ld >= cols) and column-major (ld >= rows) are read right.
    """
    rows, cols = t.shape
    if t.stride(1) == 1 and t.stride(0) >= cols:
        return t
    if t.stride(0) == 1 and t.stride(1) != 1 and t.stride(1) >= rows:
        return t
    return torch.empty((rows, cols), dtype=t.dtype, device=t.device).copy_(t)


def _int_mm_accepts(m: int, k: int, n: int, device: torch.device) -> bool:
    """Whether torch._int_mm computes an (m x k) @ (k x n) product on `device`.

    CPU takes every shape. CUDA (cuBLASLt) needs m > 16 and k, n multiples of 8, so batch-1 decoding
    there falls back to the fp path; other devices have no _int_mm.
    """
    if device.type == "cpu":
        return True
    return device.type == "cuda" and m > 16 and k % 8 == 0 and n % 8 == 0


@functools.cache
def int8_units(device_type: str) -> bool:
    """Whether torch._int_mm runs on int8 dot-product hardware here: a CUDA GPU, or a CPU with VNNI or AMX.

    On a CPU without them (AVX2 only) torch 2.13's _int_mm takes time linear in the rows: for a
    skillpack's products (m x 576-1536 by 576-1536 x 16, and m x 16 by 16 x 576-1536; 1 thread, a 2-core
    AMD EPYC, 2026-12-07, bench/int8_mm.py) 286-814 us at m = 32 against 33-87 us for `int8_mm`'s fp32
    GEMMs, 62-252 against 21-47 at m = 8, and 9-28 against 13-30 at m = 1 (0.6-1.5x). It made the integer
    path 1.77x the compiled backbone at batch 32 there (bench/README.md, decode.py). The probes are
    torch.cpu's own.
    """
    if device_type != "cpu":
        return device_type == "cuda"
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in ("_is_vnni_supported", "_is_amx_tile_supported"))


def _as_reduction(x: torch.Tensor) -> bool:
    """Whether x's products with the factors are written as a broadcast multiply and a sum: inside a graph
    torch.compile traces for CPU, at most `_REDUCTION_ROWS` rows. Inductor fuses such a product into its own
    C++ loops next to the quantize and dequantize, where a GEMM is a library call that, at one row, costs
    more than its arithmetic (two per layer: 422 calls a decode step on SmolLM2-135M). Eagerly the product
    would be materialised (rows x k x n), so eager code never takes this form."""
    return torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() // x.shape[-1] <= _REDUCTION_ROWS


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) without a bias; a reduction where `_as_reduction` says so."""
    if _as_reduction(x):
        return (x.unsqueeze(-1) * w.t()).sum(-2)
    return F.linear(x, w)


def int8_mm_operand(b: torch.Tensor, units: bool) -> torch.Tensor:
    """`b` (k x n, int8) as `int8_mm` reads it, made once for a weight: with int8 units (`int8_units`), b
    laid out for torch._int_mm (`_blas_operand`); without, in fp32 as (c, k / c, n), c = ceil(k / 1024)
    chunks of k, zero-padded to equal ones (zeros add nothing to a product)."""
    if units:
        return _blas_operand(b)
    k, n = b.shape
    chunks = -(-k // _EXACT_K)
    size = -(-k // chunks)
    return F.pad(b.float(), (0, 0, 0, chunks * size - k)).view(chunks, size, n)


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for an int8 (m x k) `a` and an `int8_mm_operand` `b`, as int32: exactly torch._int_mm's result.

    An int8 b goes to torch._int_mm. Fp32 chunks (a CPU without int8 units, where _int_mm is slow) are
    one batched fp32 GEMM: each product is at most 2^14 in size, so every partial sum of a chunk, in any
    order the BLAS adds them, is an integer of at most 2^24, which fp32 holds exactly; the chunks' sums
    are added in int32 as _int_mm adds. Where `_as_reduction` (one row, compiled for CPU), either operand
    is the same fp32 chunks written as a reduction, exact for the same reason in whatever order
    inductor's loops add. The operand's dtype, not a probe, picks the kernel, so that a compiled graph
    holds no call to `int8_units`.
    """
    reduce = _as_reduction(a)
    if not b.is_floating_point() and not reduce:
        return torch._int_mm(_blas_operand(a), b)
    bf = b if b.is_floating_point() else int8_mm_operand(b, units=False)
    chunks, size, _ = bf.shape
    af = a.float() if chunks == 1 else F.pad(a.float(), (0, chunks * size - a.shape[1]))
    if reduce:
        if chunks == 1:
            return (af.unsqueeze(-1) * bf[0]).sum(-2).to(torch.int32)
        return (af.view(-1, chunks, size, 1) * bf).sum(-2).to(torch.int32).sum(-2, dtype=torch.int32)
    if chunks == 1:
        return (af @ bf[0]).to(torch.int32)
    return torch.bmm(af.view(-1, chunks, size).transpose(0, 1), bf).to(torch.int32).sum(0, dtype=torch.int32)


class SkillpackLinear(nn.Module):
    """An nn.Linear plus its skillpack delta: forward(x) = base(x) + (x diag(s)^-1 B^T) A^T.

    `base` is the original module, held by reference: its weight is never copied or changed.
    Two paths compute the delta:
    - fp (default): A and B diag(s)^-1 dequantized once, at construction, in the base weight's dtype.
    - int_mm: the paper's integer path. x is divided by the smoothing scales s and quantized to int8;
      x_q B_q^T runs as an int8 x int8 -> int32 GEMM (`int8_mm`: torch._int_mm, or the same integers
      from fp32 GEMMs on a CPU without int8 dot-product instructions); that int32 result is truncated
      back to int8; a second int8 GEMM with A_q; one dequantize. The two activation scales are either
      per token, computed at run time (act_scale "token"), or the factors' static x_scale and h_scale
      from calibration (act_scale "tensor"), with values beyond them saturating. B's per-rank scales
      are folded into A (re-quantized to INT8 per output row, also for an INT4 skillpack: the stored
      form stays INT4) so that no scale sits on the inner dim. Three extra int8 roundings
      (activations, the truncated intermediate, folded A) make it match the fp path to about 1%
      (relative Frobenius error of the delta) with per-token scales. Where _int_mm does not take the
      shapes (see `_int_mm_accepts`) the fp path answers, clamped where static scales would saturate,
      so that a token's delta does not depend on how many tokens share its call.
    """

    def __init__(self, base: nn.Linear, factors: QuantizedFactors, *, int_mm: bool = False) -> None:
        super().__init__()
        self.base = base
        self.int_mm = int_mm
        self.static = int_mm and factors.x_scale is not None
        device, dtype = base.weight.device, base.weight.dtype
        # Derived from the skillpack on every attach, hence not part of the model's state_dict.
        buffers = {"a": factors.a().to(dtype), "b": factors.b().to(dtype)}
        # plain ints: a compiled graph checks every tensor the forward reads on every call (dynamo's guards),
        # and the integer path need not read a and b
        (self.out_features, self.rank), self.in_features = buffers["a"].shape, buffers["b"].shape[1]
        if int_mm:
            a_q, a_scale = quantize_per_channel(factors.a() * factors.b_scale, bits=8, dim=0)
            # int8_mm's second operands A_q^T and B_q^T, made once for the device the layer is built on
            units = int8_units(device.type)
            buffers.update(a_op=int8_mm_operand(a_q.t(), units), b_op=int8_mm_operand(factors.b_int().t(), units))
            smooth = torch.ones(()) if factors.smooth is None else factors.smooth
            top = qmax(8)
            if self.static:
                x_scale, h_scale = factors.x_scale, factors.h_scale
                buffers.update(
                    in_mul=1.0 / (smooth * x_scale),
                    h_mul=1.0 / h_scale,
                    out_scale=a_scale * x_scale * h_scale,
                    # the fp fallback's clamps: |x / s| <= 127 x_scale, |x_q B_q^T| <= 127 h_scale
                    x_bound=(top * x_scale * smooth).to(dtype),
                    h_bound=(top * h_scale * x_scale * factors.b_scale).to(dtype),
                )
            else:
                # the per-token scales are max / 127 for x and for h: 1 / 127^2 goes into A's scales
                buffers.update(out_scale=a_scale / top**2, inv_smooth=None if factors.smooth is None else 1.0 / smooth)
        for name, t in buffers.items():
            self.register_buffer(name, None if t is None else t.to(device), persistent=False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, int_mm={self.int_mm}, static={self.static}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The skillpack's contribution alone, (x B^T) A^T, by the path chosen at construction."""
        m = x.numel() // x.shape[-1]
        if (
            self.int_mm
            and _int_mm_accepts(m, self.in_features, self.rank, x.device)
            and _int_mm_accepts(m, self.rank, self.out_features, x.device)
        ):
            return self._static_int_delta(x) if self.static else self._int_delta(x)
        if self.static:
            h = _linear(torch.clamp(x, -self.x_bound, self.x_bound), self.b)
            return _linear(torch.clamp(h, -self.h_bound, self.h_bound), self.a)
        return _linear(_linear(x, self.b), self.a)

    def _int_delta(self, x: torch.Tensor) -> torch.Tensor:
        # Per-token symmetric INT8 written out rather than through quantize_per_channel, whose general
        # form takes twice the ops: at a few tokens each op costs more than the GEMMs (bench/README.md).
        # Every |value| <= max, so round(value * 127 / max) needs no clamp.
        top = float(qmax(8))
        x2 = x.reshape(-1, x.shape[-1])
        if self.inv_smooth is not None:
            x2 = x2 * self.inv_smooth
        x_max = x2.abs().amax(-1, keepdim=True).float()
        x_q = torch.round(x2 * (top / x_max.clamp_min(_TINY))).to(torch.int8)
        h = int8_mm(x_q, self.b_op)
        h_max = h.abs().amax(-1, keepdim=True).float()
        h_q = torch.round(h * (top / h_max.clamp_min(1.0))).to(torch.int8)
        y = int8_mm(h_q, self.a_op)
        return (y * (x_max * h_max) * self.out_scale).to(x.dtype).reshape(*x.shape[:-1], -1)

    def _static_int_delta(self, x: torch.Tensor) -> torch.Tensor:
        x_q = quantize_static(x.reshape(-1, x.shape[-1]), self.in_mul)
        h = int8_mm(x_q, self.b_op)
        y = int8_mm(quantize_static(h, self.h_mul), self.a_op)
        return (y * self.out_scale).to(x.dtype).reshape(*x.shape[:-1], -1)


class SkillpackEmbedding(nn.Module):
    """An nn.Embedding plus its skillpack delta: forward(ids) = base(ids) + A[ids] B.

    `base` is held by reference, as in SkillpackLinear. A (vocab x r) stays in integers and only the
    looked-up rows are dequantized, each by its own scale. A lookup has no activations to quantize, so
    there is no integer path here; with tied weights the output head's SkillpackLinear has one.
    """

    def __init__(self, base: nn.Embedding, factors: QuantizedFactors) -> None:
        super().__init__()
        self.base = base
        device = base.weight.device
        self.register_buffer("a_q", factors.a_int().to(device), persistent=False)
        self.register_buffer("a_scale", factors.a_scale.to(device), persistent=False)
        self.register_buffer("b", factors.b().to(device), persistent=False)

    @property
    def weight(self) -> nn.Parameter:
        """The backbone's embedding weight (what `model.get_input_embeddings().weight` callers want)."""
        return self.base.weight

    def extra_repr(self) -> str:
        return f"rank={self.b.shape[0]}"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.base(ids)
        rows = self.a_q[ids].float() * self.a_scale[ids].unsqueeze(-1)
        return out + (rows @ self.b).to(out.dtype)
