"""Skillpacks: a domain's residual R_k = Delta_k - Delta_shared, compressed, stored, and attached.

A skillpack holds, per linear layer of the decoder blocks, INT8 SVD factors A (out x r) and B (r x in)
with per-row scales, so that R ~ A B; small 1-D residuals (RMSNorm weights) are kept dense in fp16.
This is the walking skeleton of SkillZip (METHOD.md, stage 2): channel-wise smoothing, the rank-wise
rotation, static activation scales and INT4 come later and slot in around `low_rank_factors` and
`SkillpackLinear` without changing the file format's tensor names.

At inference `attach_skillpack` wraps each nn.Linear in a `SkillpackLinear` (base output + low-rank
delta) and adds the dense residuals into their parameters; `detach_skillpack` undoes both bit-exactly.
The backbone's weights are never copied, so switching domains costs only the skillpack itself.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from skillweave.zip.quant import check_bits, dequantize, quantize_per_channel
from skillweave.zip.svd import low_rank_factors

FORMAT_VERSION = 1
HEADER_KEY = "skillweave"
BLOCK_PREFIX = "model.layers."
_FACTOR_PARTS = ("a_q", "a_scale", "b_q", "b_scale")
_ATTACHMENT = "_skillweave_attachment"


class SkillpackError(ValueError):
    """A skillpack file that cannot be used: missing, corrupt, another format or another backbone."""


@dataclass
class QuantizedFactors:
    """R ~ dequantize(a_q, a_scale) @ dequantize(b_q, b_scale); scales are per row of each factor."""

    a_q: torch.Tensor
    """int8, out x r."""
    a_scale: torch.Tensor
    """float32, (out,): one scale per output channel."""
    b_q: torch.Tensor
    """int8, r x in."""
    b_scale: torch.Tensor
    """float32, (r,): one scale per rank index."""


@dataclass
class Skillpack:
    domain: str
    backbone_fingerprint: str
    """Fingerprint of the shared backbone theta_0 + Delta_shared the residual was taken against."""
    rank: int
    """Requested rank; a layer's actual rank is min(rank, out, in) (its a_q.shape[1])."""
    bits: int
    factors: dict[str, QuantizedFactors]
    """By module name, e.g. "model.layers.0.self_attn.q_proj"."""
    dense: dict[str, torch.Tensor]
    """fp16 residuals of 1-D parameters (norm weights, biases), by parameter name."""
    meta: dict = field(default_factory=dict)
    """Free-form JSON: "layer_rel_error", "dropped", "skipped_zero", and whatever the zip stage adds
    (its resolved config)."""


def block_linear_names(model: nn.Module) -> set[str]:
    """Names of the model's nn.Linear modules other than its output head (lm_head).

    For a decoder-only HF model these are the linears of the decoder blocks: the layers a skillpack
    compresses. Call it on the backbone before any skillpack is attached.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not head
    }


def compress_residual(
    residual: dict[str, torch.Tensor],
    linear_names: set[str] | None,
    rank: int,
    bits: int,
    domain: str,
    backbone_fingerprint: str,
) -> Skillpack:
    """Compress one domain's residual state dict into a skillpack.

    - `<linear>.weight` (2-D): truncated SVD at `rank`, then A and B quantized per row; the relative
      Frobenius error of the dequantized product goes to meta["layer_rel_error"][module].
    - other 1-D (or 0-D) tensors: kept dense in fp16.
    - other 2-D tensors (embeddings, lm_head): dropped; meta["dropped"][key] is the share of the whole
      residual's Frobenius norm they carried, so the caller can report what was lost.
    - an all-zero tensor is skipped and listed in meta["skipped_zero"].

    Args:
        residual: parameter name -> residual tensor (HF state_dict names).
        linear_names: module names of the linears to factor (see `block_linear_names`); None takes
            every 2-D `*.weight` under "model.layers." (the HF Llama-family layout).
        rank, bits: SVD rank and integer width (8 only, for now).
        domain, backbone_fingerprint: recorded in the skillpack, checked on load and attach.

    Raises:
        ValueError: a named linear has no residual, a tensor is non-finite or has > 2 dims, fp16
            overflows a dense residual, or rank/bits are invalid.
    """
    check_bits(bits)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if linear_names is None:
        linear_names = {
            key.removesuffix(".weight")
            for key, t in residual.items()
            if t.ndim == 2 and key.startswith(BLOCK_PREFIX) and key.endswith(".weight")
        }
    missing = sorted(name for name in linear_names if f"{name}.weight" not in residual)
    if missing:
        raise ValueError(f"the residual has no weight for {len(missing)} linear(s): {', '.join(missing[:5])}")
    total_norm = math.sqrt(sum(t.float().pow(2).sum().item() for t in residual.values()))

    factors: dict[str, QuantizedFactors] = {}
    dense: dict[str, torch.Tensor] = {}
    rel_error: dict[str, float] = {}
    dropped: dict[str, float] = {}
    skipped: list[str] = []
    for key, t in sorted(residual.items()):
        if t.ndim > 2:
            raise ValueError(
                f"residual {key} has {t.ndim} dims; skillzip handles 2-D linears and 1-D vectors"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"residual {key} has non-finite values: the fine-tune or merge diverged")
        norm = torch.linalg.vector_norm(t.float()).item()
        if norm == 0.0:
            skipped.append(key)
            continue
        module = key.removesuffix(".weight")
        if t.ndim == 2 and key.endswith(".weight") and module in linear_names:
            a, b, _ = low_rank_factors(t, rank)
            a_q, a_scale = quantize_per_channel(a, bits, dim=0)
            b_q, b_scale = quantize_per_channel(b, bits, dim=0)
            approx = dequantize(a_q, a_scale) @ dequantize(b_q, b_scale)
            rel_error[module] = torch.linalg.matrix_norm(t.float() - approx).item() / norm
            factors[module] = QuantizedFactors(a_q, a_scale, b_q, b_scale)
        elif t.ndim == 2:
            dropped[key] = norm / total_norm
        else:
            half = t.to(torch.float16, copy=True)
            if not torch.isfinite(half).all():
                raise ValueError(f"residual {key} overflows fp16 (max |r| = {t.abs().max().item():.3g})")
            dense[key] = half
    meta = {"layer_rel_error": rel_error, "dropped": dropped, "skipped_zero": skipped}
    return Skillpack(domain, backbone_fingerprint, rank, bits, factors, dense, meta)


def _stored_tensors(sp: Skillpack) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, f in sp.factors.items():
        for part in _FACTOR_PARTS:
            tensors[f"{name}.{part}"] = getattr(f, part)
    for key, t in sp.dense.items():
        tensors[f"dense.{key}"] = t
    return tensors


def skillpack_nbytes(sp: Skillpack) -> int:
    """Bytes of all tensors the skillpack stores (factors, scales, dense residuals); no header."""
    return sum(t.nbytes for t in _stored_tensors(sp).values())


def save_skillpack(sp: Skillpack, path: str | os.PathLike) -> None:
    """Write `sp` as one safetensors file; the header carries everything but the tensors.

    Written to a temp file in the same directory and renamed, so a killed job never leaves a file
    that looks complete.
    """
    path = Path(path)
    header = {
        "format_version": FORMAT_VERSION,
        "domain": sp.domain,
        "backbone_fingerprint": sp.backbone_fingerprint,
        "rank": sp.rank,
        "bits": sp.bits,
        "meta": sp.meta,
    }
    tensors = {k: t.detach().cpu().contiguous() for k, t in _stored_tensors(sp).items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={HEADER_KEY: json.dumps(header)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_skillpack(path: str | os.PathLike, expected_fingerprint: str | None = None) -> Skillpack:
    """Read a skillpack written by `save_skillpack`.

    Args:
        path: the .safetensors file.
        expected_fingerprint: when given, the backbone fingerprint the skillpack must carry.

    Raises:
        SkillpackError: the file is missing, truncated or corrupt, is not a skillpack, has another
            format_version, its tensors are inconsistent, or it belongs to another backbone.
    """
    path = Path(path)
    redo = "re-run the zip stage (python -m skillweave stage=zip ...)"
    if not path.is_file():
        raise SkillpackError(f"skillpack {path} does not exist; {redo}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise SkillpackError(f"truncated or corrupt safetensors file {path} ({e}); {redo}") from None
    if raw is None:
        raise SkillpackError(f"{path} is a safetensors file but not a skillpack (no {HEADER_KEY!r} header)")
    try:
        header = json.loads(raw)
        version = header["format_version"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SkillpackError(f"skillpack {path} has a corrupt header ({e!r}); {redo}") from None
    if version != FORMAT_VERSION:
        raise SkillpackError(
            f"skillpack {path} has format_version {version}; this skillweave reads version "
            f"{FORMAT_VERSION}: {redo}"
        )
    sp = Skillpack(
        domain=header["domain"],
        backbone_fingerprint=header["backbone_fingerprint"],
        rank=header["rank"],
        bits=header["bits"],
        factors=_factors_from(tensors, path),
        dense={k.removeprefix("dense."): t for k, t in tensors.items() if k.startswith("dense.")},
        meta=header["meta"],
    )
    check_fingerprint(sp, expected_fingerprint, source=str(path))
    return sp


def _factors_from(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, QuantizedFactors]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith("dense."):
            continue
        module, _, part = key.rpartition(".")
        if part not in _FACTOR_PARTS:
            raise SkillpackError(f"skillpack {path} holds an unknown tensor {key!r}")
        parts.setdefault(module, {})[part] = t
    factors = {}
    for module, p in parts.items():
        if set(p) != set(_FACTOR_PARTS):
            raise SkillpackError(f"skillpack {path}: {module} lacks {sorted(set(_FACTOR_PARTS) - set(p))}")
        f = QuantizedFactors(**p)
        consistent = (
            f.a_q.dtype == f.b_q.dtype == torch.int8
            and f.a_scale.dtype == f.b_scale.dtype == torch.float32
            and f.a_q.ndim == f.b_q.ndim == 2
            and f.a_q.shape[1] == f.b_q.shape[0]
            and f.a_scale.shape == f.a_q.shape[:1]
            and f.b_scale.shape == f.b_q.shape[:1]
        )
        if not consistent:
            raise SkillpackError(
                f"skillpack {path}: the factors of {module} have inconsistent shapes or dtypes"
            )
        factors[module] = f
    return factors


def check_fingerprint(sp: Skillpack, expected: str | None, source: str) -> None:
    """Raises SkillpackError when `expected` is given and is not the skillpack's backbone."""
    if expected is not None and sp.backbone_fingerprint != expected:
        raise SkillpackError(
            f"skillpack {source} was made for backbone {sp.backbone_fingerprint}, this model is {expected}; "
            "zip a skillpack for this backbone (python -m skillweave stage=zip ...)"
        )


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


class SkillpackLinear(nn.Module):
    """An nn.Linear plus its skillpack delta: forward(x) = base(x) + (x B^T) A^T.

    `base` is the original module, held by reference: its weight is never copied or changed.
    Two paths compute the delta:
    - fp (default): A and B dequantized once, at construction, in the base weight's dtype.
    - int_mm: the paper's integer path. x is quantized per token to int8; x_q B_q^T runs as an
      int8 x int8 -> int32 GEMM (torch._int_mm); that int32 result is truncated back to int8 with a
      per-token scale; a second int8 GEMM with A_q; one dequantize by per-token x per-output scales.
      B's per-rank scales are folded into A (re-quantized per output row) so that no scale sits on
      the inner dim. Three extra int8 roundings (activations, the truncated intermediate, folded A)
      make it match the fp path to about 1% (relative Frobenius error of the delta). Where _int_mm
      does not take the shapes (see `_int_mm_accepts`) the fp path answers.
    """

    def __init__(self, base: nn.Linear, factors: QuantizedFactors, *, int_mm: bool = False) -> None:
        super().__init__()
        self.base = base
        self.int_mm = int_mm
        weight = base.weight
        a = dequantize(factors.a_q, factors.a_scale)
        b = dequantize(factors.b_q, factors.b_scale)
        # Derived from the skillpack on every attach, hence not part of the model's state_dict.
        self.register_buffer("a", a.to(weight.device, weight.dtype), persistent=False)
        self.register_buffer("b", b.to(weight.device, weight.dtype), persistent=False)
        if int_mm:
            a_q, a_scale = quantize_per_channel(a * factors.b_scale, bits=8, dim=0)
            self.register_buffer("a_q", a_q.to(weight.device), persistent=False)
            self.register_buffer("a_scale", a_scale.to(weight.device), persistent=False)
            self.register_buffer("b_q", factors.b_q.to(weight.device), persistent=False)

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    def extra_repr(self) -> str:
        return f"rank={self.rank}, int_mm={self.int_mm}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The skillpack's contribution alone, (x B^T) A^T, by the path chosen at construction."""
        m = x.numel() // x.shape[-1]
        (out_features, rank), in_features = self.a.shape, self.b.shape[1]
        if (
            self.int_mm
            and _int_mm_accepts(m, in_features, rank, x.device)
            and _int_mm_accepts(m, rank, out_features, x.device)
        ):
            return self._int_delta(x)
        return F.linear(F.linear(x, self.b), self.a)

    def _int_delta(self, x: torch.Tensor) -> torch.Tensor:
        x_q, x_scale = quantize_per_channel(x.reshape(-1, x.shape[-1]), bits=8, dim=0)
        h = torch._int_mm(_blas_operand(x_q), _blas_operand(self.b_q.t()))
        h_q, h_scale = quantize_per_channel(h, bits=8, dim=0)
        y = torch._int_mm(_blas_operand(h_q), _blas_operand(self.a_q.t()))
        y = y.float() * (x_scale * h_scale)[:, None] * self.a_scale
        return y.to(x.dtype).reshape(*x.shape[:-1], -1)


@dataclass
class _Attachment:
    """What `detach_skillpack` needs to restore the backbone bit-exactly."""

    domain: str
    linears: dict[str, nn.Linear]
    dense_originals: dict[str, torch.Tensor]


def attached_domain(model: nn.Module) -> str | None:
    """The domain of the skillpack attached to `model`, or None."""
    attachment = getattr(model, _ATTACHMENT, None)
    return attachment.domain if attachment is not None else None


def attach_skillpack(
    model: nn.Module, sp: Skillpack, *, expected_fingerprint: str | None = None, int_mm: bool = False
) -> None:
    """Apply skillpack `sp` to `model` in place; everything is checked before anything changes.

    Each factored nn.Linear is replaced by a SkillpackLinear wrapping it; each dense residual is added
    into its parameter, whose original value is kept for `detach_skillpack`.

    Raises:
        SkillpackError: a skillpack is already attached (detach it first), the fingerprint differs
            from `expected_fingerprint`, or a name or shape in `sp` does not match the model.
    """
    if attached_domain(model) is not None:
        raise SkillpackError(
            f"skillpack {attached_domain(model)!r} is already attached; detach_skillpack(model) before "
            f"attaching {sp.domain!r}"
        )
    source = f"{sp.domain!r}"
    check_fingerprint(sp, expected_fingerprint, source)
    linears: dict[str, nn.Linear] = {}
    for name, f in sp.factors.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SkillpackError(
                f"skillpack {source} has factors for {name}, which this model lacks"
            ) from None
        if not isinstance(module, nn.Linear):
            raise SkillpackError(f"skillpack {source}: {name} is a {type(module).__name__}, not an nn.Linear")
        shape = (f.a_q.shape[0], f.b_q.shape[1])
        if tuple(module.weight.shape) != shape:
            raise SkillpackError(
                f"skillpack {source}: factors of {name} make a {shape} delta, the layer is "
                f"{tuple(module.weight.shape)}"
            )
        linears[name] = module
    params: dict[str, nn.Parameter] = {}
    for key, r in sp.dense.items():
        try:
            params[key] = model.get_parameter(key)
        except AttributeError:
            raise SkillpackError(
                f"skillpack {source} has a dense residual for {key}, which this model lacks"
            ) from None
        if params[key].shape != r.shape:
            raise SkillpackError(
                f"skillpack {source}: dense residual {key} is {tuple(r.shape)}, the parameter is "
                f"{tuple(params[key].shape)}"
            )

    dense_originals = {}
    with torch.no_grad():
        for key, p in params.items():
            dense_originals[key] = p.detach().clone()
            p.add_(sp.dense[key].to(p.device, p.dtype))
    for name, module in linears.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, SkillpackLinear(module, sp.factors[name], int_mm=int_mm))
    setattr(model, _ATTACHMENT, _Attachment(sp.domain, linears, dense_originals))


def detach_skillpack(model: nn.Module) -> None:
    """Restore the backbone exactly as it was before `attach_skillpack` (same modules, same bits).

    Raises:
        SkillpackError: no skillpack is attached.
    """
    attachment = getattr(model, _ATTACHMENT, None)
    if attachment is None:
        raise SkillpackError("no skillpack is attached to this model")
    for name, module in attachment.linears.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)
    with torch.no_grad():
        for key, original in attachment.dense_originals.items():
            model.get_parameter(key).copy_(original)
    delattr(model, _ATTACHMENT)
