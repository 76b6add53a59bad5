"""Skillpacks: a domain's residual R_k = Delta_k - Delta_shared, compressed, stored, and attached.

A skillpack holds, per linear layer of the decoder blocks, integer SVD factors A (out x r) and
B (r x in) with per-row scales and, when smoothed, the channel-wise scales s, so that
R ~ A B diag(s)^-1 (METHOD.md stage 2: smoothing, truncated SVD, rank-wise rotation folded into A and
B, INT8 or INT4). Small 1-D residuals (RMSNorm weights) are kept dense in fp16. The input
embedding's residual, when kept (`embedding_rank`), is factored the same way, E_res ~ A B with A
vocab x r: its rows are looked up by token id, and with tied weights the same factors add to the
logits. The calibration statistics that chose s travel with it, and so do the static activation
scales of the integer path when it has them (act_scale "tensor").

At inference `attach_skillpack` wraps each nn.Linear in a `SkillpackLinear` (base output + low-rank
delta), the embedding in a `SkillpackEmbedding`, and adds the dense residuals into their parameters;
`detach_skillpack` undoes all of it bit-exactly. The backbone's weights are never copied, so
switching domains costs only the skillpack itself.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from skillweave.artifacts import tmp_path_for
from skillweave.zip.quant import (
    check_bits,
    dequantize,
    pack_int4,
    qmax,
    quantize_per_channel,
    quantize_static,
    unpack_int4,
)
from skillweave.zip.smoothing import ChannelStats, rotation_matrix, smoothing_scales
from skillweave.zip.svd import low_rank_factors

FORMAT_VERSION = 3
"""3 added static activation scales and the embedding's factors; version 2 files still load (they
have neither)."""
READABLE_VERSIONS = (2, 3)
HEADER_KEY = "skillweave"
BLOCK_PREFIX = "model.layers."
EMBEDDING = "model.embed_tokens"
HEAD = "lm_head"
"""Module names of the input embedding and the output head in the HF Llama-family layout."""
CALIBRATION_PREFIX = "calibration."
_FACTOR_PARTS = ("a_q", "a_scale", "b_q", "b_scale")
_OPTIONAL_PARTS = ("smooth", "x_scale", "h_scale")
_ATTACHMENT = "_skillweave_attachment"
_TINY = 1e-30  # floor of an activation scale: an all-zero input still gets finite integers (zeros)


class SkillpackError(ValueError):
    """A skillpack file that cannot be used: missing, corrupt, another format or another backbone."""


@dataclass
class QuantizedFactors:
    """R ~ A B diag(smooth)^-1 with A = dequantize(a_q, a_scale), B = dequantize(b_q, b_scale).

    Stored form: INT8 factors as int8; INT4 factors packed two per byte along their last dim (uint8).
    """

    a_q: torch.Tensor
    """int8 out x r, or uint8 out x ceil(r/2) (INT4)."""
    a_scale: torch.Tensor
    """float32, (out,): one scale per output channel."""
    b_q: torch.Tensor
    """int8 r x in, or uint8 r x ceil(in/2) (INT4)."""
    b_scale: torch.Tensor
    """float32, (r,): one scale per rank index."""
    in_features: int
    bits: int = 8
    smooth: torch.Tensor | None = None
    """float32 (in,): channel-wise smoothing scales s; None when not smoothed."""
    x_scale: torch.Tensor | None = None
    """float32 0-d: static scale of the smoothed input x diag(s)^-1, x_q = sat(round(x / s / x_scale));
    None: the int path scales each token at run time."""
    h_scale: torch.Tensor | None = None
    """float32 0-d: static scale, in units of the INT32 product x_q B_q^T, that truncates it to INT8."""

    @property
    def out_features(self) -> int:
        return self.a_scale.shape[0]

    @property
    def rank(self) -> int:
        return self.b_scale.shape[0]

    def a_int(self) -> torch.Tensor:
        """A's integers as int8 (out x r), unpacked for INT4."""
        return unpack_int4(self.a_q, self.rank) if self.bits == 4 else self.a_q

    def b_int(self) -> torch.Tensor:
        """B's integers as int8 (r x in), unpacked for INT4."""
        return unpack_int4(self.b_q, self.in_features) if self.bits == 4 else self.b_q

    def a(self) -> torch.Tensor:
        """A in float32."""
        return dequantize(self.a_int(), self.a_scale)

    def b(self) -> torch.Tensor:
        """B diag(s)^-1 in float32: the smoothing folded in, so that the delta is x b()^T a()^T."""
        b = dequantize(self.b_int(), self.b_scale)
        return b if self.smooth is None else b / self.smooth

    def stored(self) -> dict[str, torch.Tensor]:
        parts = {p: getattr(self, p) for p in _FACTOR_PARTS + _OPTIONAL_PARTS}
        return {p: t for p, t in parts.items() if t is not None}


@dataclass
class Skillpack:
    domain: str
    backbone_fingerprint: str
    """Fingerprint of the shared backbone theta_0 + Delta_shared the residual was taken against."""
    rank: int
    """Requested rank (the cap); a layer's actual rank is in its factors (`QuantizedFactors.rank`)."""
    bits: int
    factors: dict[str, QuantizedFactors]
    """By module name, e.g. "model.layers.0.self_attn.q_proj"; "model.embed_tokens" (vocab x hidden)
    and, untied, "lm_head" when the embedding's residual is kept."""
    dense: dict[str, torch.Tensor]
    """fp16 residuals of 1-D parameters (norm weights, biases), by parameter name."""
    meta: dict = field(default_factory=dict)
    """Free-form JSON: "layer_rel_error", "dropped", "skipped_zero", and whatever the zip stage adds
    (its resolved config, fidelity)."""
    smoothing: dict = field(default_factory=lambda: {"method": "none", "alpha": None})
    rotation: dict = field(default_factory=lambda: {"method": "none", "seed": None})
    energy: float | None = None
    """The energy threshold that chose each layer's rank, or None for a fixed rank."""
    calibration: dict[str, ChannelStats] = field(default_factory=dict)
    """The activation statistics smoothing was computed from, by module name (empty: none used)."""
    calibration_summary: dict = field(default_factory=dict)
    """JSON: "tokens", and "prompts" when the zip stage set it."""
    act_scale: dict = field(default_factory=lambda: {"method": "token", "percentile": None})
    """Activation scales of the int path: "token" (per token at run time) or "tensor" (static, stored in
    the factors by `calibrate_act_scales`, with the percentile that clipped them)."""
    tied_embeddings: bool = False
    """The model's output head shares the input embedding's weight, so the factors of EMBEDDING add to
    the logits as well as to the embedding's output."""


def block_linear_names(model: nn.Module) -> set[str]:
    """Names of the model's nn.Linear modules other than its output head (lm_head).

    For a decoder-only HF model these are the linears of the decoder blocks: the layers a skillpack
    compresses. Call it on the backbone before any skillpack is attached.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name for name, module in model.named_modules() if isinstance(module, nn.Linear) and module is not head
    }


def compress_factors(
    weight: torch.Tensor,
    rank: int,
    bits: int,
    *,
    smooth: torch.Tensor | None = None,
    rotation: str = "none",
    energy: float | None = None,
    seed: int = 0,
) -> QuantizedFactors:
    """One layer: W diag(s) ~ A B by truncated SVD, A <- A Q and B <- Q^T B, both quantized per row.

    Args:
        weight: the residual (out x in).
        rank, energy: see `low_rank_factors` (rank is the cap when energy is given).
        bits: 8 or 4 (INT4 is packed in the result).
        smooth: channel-wise scales s (in,) from `smoothing_scales`, or None.
        rotation: "none", "hadamard" or "random" (`rotation_matrix`).
    """
    w = weight.float() if smooth is None else weight.float() * smooth
    a, b, _ = low_rank_factors(w, rank, energy)
    q = rotation_matrix(rotation, a.shape[1], seed)
    if q is not None:
        a, b = a @ q, q.T @ b
    a_q, a_scale = quantize_per_channel(a, bits, dim=0)
    b_q, b_scale = quantize_per_channel(b, bits, dim=0)
    if bits == 4:
        a_q, b_q = pack_int4(a_q), pack_int4(b_q)
    return QuantizedFactors(a_q, a_scale, b_q, b_scale, weight.shape[1], bits, smooth)


def compress_residual(
    residual: dict[str, torch.Tensor],
    linear_names: set[str] | None,
    rank: int,
    bits: int,
    domain: str,
    backbone_fingerprint: str,
    *,
    smoothing: str = "none",
    alpha: float = 0.5,
    rotation: str = "none",
    energy: float | None = None,
    calibration: dict[str, ChannelStats] | None = None,
    seed: int = 0,
    embedding_rank: int = 0,
    tied_embeddings: bool = False,
) -> Skillpack:
    """Compress one domain's residual state dict into a skillpack.

    - `<linear>.weight` (2-D): `compress_factors`; the relative Frobenius error of the dequantized
      A B diag(s)^-1 against the residual goes to meta["layer_rel_error"][module].
    - `model.embed_tokens.weight` with embedding_rank > 0: `compress_factors` at that rank, without
      smoothing (a lookup has no activations to smooth) or energy; its error is in layer_rel_error
      too. `lm_head.weight` with embedding_rank > 0: with tied embeddings it is the same tensor and is
      covered by the embedding's factors; untied, it is factored the same way under "lm_head".
    - other 1-D (or 0-D) tensors: kept dense in fp16.
    - other 2-D tensors (embeddings and lm_head at embedding_rank 0): dropped; meta["dropped"][key] is
      the share of the whole residual's Frobenius norm they carried, so the caller can report it.
    - an all-zero tensor is skipped and listed in meta["skipped_zero"].

    Args:
        residual: parameter name -> residual tensor (HF state_dict names).
        linear_names: module names of the linears to factor (see `block_linear_names`); None takes
            every 2-D `*.weight` under "model.layers." (the HF Llama-family layout).
        rank, bits: SVD rank (the cap when `energy` is given) and integer width (8 or 4).
        domain, backbone_fingerprint: recorded in the skillpack, checked on load and attach.
        smoothing, alpha: channel-wise smoothing ("none", "smoothquant", "power"), see `smoothing_scales`.
        rotation: rank-wise rotation ("none", "hadamard", "random"); `seed` seeds "random".
        energy: per layer, the least rank keeping this share of the squared norm (capped at `rank`).
        calibration: ChannelStats per linear; needed by every smoothing but "none".
        embedding_rank: rank of the embedding's (and an untied lm_head's) factors; 0 drops them.
        tied_embeddings: the model's lm_head is its input embedding (`config.tie_word_embeddings`).

    Raises:
        ValueError: a named linear has no residual (or no calibration statistics when smoothing), a
            tensor is non-finite or has > 2 dims, fp16 overflows a dense residual, tied embeddings
            whose two residuals differ, or an option is invalid. KeyError: an unknown smoothing or
            rotation, naming the valid ones.
    """
    check_bits(bits)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if embedding_rank < 0:
        raise ValueError(f"embedding_rank must be >= 0 (0 drops the embedding's residual), got {embedding_rank}")
    embedding_key, head_key = f"{EMBEDDING}.weight", f"{HEAD}.weight"
    if (
        tied_embeddings
        and embedding_rank
        and {embedding_key, head_key} <= set(residual)
        and not torch.equal(residual[embedding_key], residual[head_key])
    ):
        raise ValueError(f"tied_embeddings, but the residuals of {embedding_key} and {head_key} differ")
    if linear_names is None:
        linear_names = {
            key.removesuffix(".weight")
            for key, t in residual.items()
            if t.ndim == 2 and key.startswith(BLOCK_PREFIX) and key.endswith(".weight")
        }
    missing = sorted(name for name in linear_names if f"{name}.weight" not in residual)
    if missing:
        raise ValueError(f"the residual has no weight for {len(missing)} linear(s): {', '.join(missing[:5])}")
    calibration = calibration or {}
    if smoothing != "none":
        uncalibrated = sorted(set(linear_names) - set(calibration))
        if uncalibrated:
            raise ValueError(
                f"smoothing={smoothing!r} needs calibration statistics; {len(uncalibrated)} linear(s) have "
                f"none: {', '.join(uncalibrated[:5])}"
            )
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
            stats = calibration.get(module)
            smooth = smoothing_scales(smoothing, stats.absmean, t, alpha) if smoothing != "none" else None
            f = compress_factors(t, rank, bits, smooth=smooth, rotation=rotation, energy=energy, seed=seed)
            rel_error[module] = torch.linalg.matrix_norm(t.float() - f.a() @ f.b()).item() / norm
            factors[module] = f
        elif embedding_rank and tied_embeddings and key == head_key:
            continue  # the embedding's factors stand for it
        elif embedding_rank and key in (embedding_key, head_key):
            f = compress_factors(t, embedding_rank, bits, rotation=rotation, seed=seed)
            rel_error[module] = torch.linalg.matrix_norm(t.float() - f.a() @ f.b()).item() / norm
            factors[module] = f
        elif t.ndim == 2:
            dropped[key] = norm / total_norm
        else:
            half = t.to(torch.float16, copy=True)
            if not torch.isfinite(half).all():
                raise ValueError(f"residual {key} overflows fp16 (max |r| = {t.abs().max().item():.3g})")
            dense[key] = half
    meta = {"layer_rel_error": rel_error, "dropped": dropped, "skipped_zero": skipped}
    used = {name: calibration[name] for name in factors if name in calibration}
    summary = {"tokens": max((s.tokens for s in used.values()), default=0)} if used else {}
    return Skillpack(
        domain,
        backbone_fingerprint,
        rank,
        bits,
        factors,
        dense,
        meta,
        smoothing={"method": smoothing, "alpha": alpha if smoothing != "none" else None},
        rotation={"method": rotation, "seed": seed if rotation == "random" else None},
        energy=energy,
        calibration=used,
        calibration_summary=summary,
        tied_embeddings=tied_embeddings,
    )


@torch.no_grad()
def calibrate_act_scales(
    model: nn.Module, sp: Skillpack, batches: Iterable[dict[str, torch.Tensor]], percentile: float
) -> None:
    """Static activation scales of the int path (act_scale "tensor"), set in `sp`'s factors in place.

    The calibration batches run with `sp` attached (fp path), so each layer sees the inputs it will be
    served. Per token t of a factored layer's smoothed input u = x diag(s)^-1: m_x[t] = max_i |u_t,i|
    and m_h[t] = max_j |u_t B_q^T|_j, B_q being the integers the first GEMM multiplies. Then
    x_scale = P(m_x) / 127 and h_scale = P(m_h) / (127 x_scale), the INT32 product then being about
    u B_q^T / x_scale; P is the `percentile` over the calibration tokens (below 100, the rare token
    above it saturates rather than coarsening every other token's step; see ZipConfig.act_percentile
    for why the zip stage takes 100). The embedding's factors get the scales
    of the output head's input when tied; an untied embedding has no GEMM and gets none.

    Args:
        model: the backbone `sp` was made for, nothing attached.
        sp: the skillpack; its factors' x_scale and h_scale and its act_scale are overwritten.
        batches: keyword inputs for model(**batch), as for `collect_channel_stats`.
        percentile: in (0, 100]; 100 takes the maximum.

    Raises:
        ValueError: percentile out of range, or no calibration batch.
    """
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"act_scale percentile must be in (0, 100], got {percentile}")
    top = qmax(8)
    attach_skillpack(model, sp)
    try:
        inputs = {}  # factor name -> the module whose input its first GEMM takes
        for name in sp.factors:
            module = model.get_submodule(name)
            if not isinstance(module, SkillpackEmbedding):
                inputs[name] = module
            elif sp.tied_embeddings:
                inputs[name] = model.get_output_embeddings()
        maxima: dict[str, tuple[list, list]] = {name: ([], []) for name in inputs}

        def hook(name: str, b_int: torch.Tensor, inv_smooth: torch.Tensor | None):
            def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
                u = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                if inv_smooth is not None:
                    u = u * inv_smooth
                maxima[name][0].append(u.abs().amax(-1))
                maxima[name][1].append((u @ b_int.T).abs().amax(-1))

            return record

        hooks = []
        for name, module in inputs.items():
            f = sp.factors[name]
            device = module.base.weight.device
            inv_smooth = None if f.smooth is None else (1.0 / f.smooth).to(device)
            hooks.append(module.register_forward_hook(hook(name, f.b_int().float().to(device), inv_smooth)))
        try:
            for batch in batches:
                model(**batch)
        finally:
            for h in hooks:
                h.remove()
    finally:
        detach_skillpack(model)
    if any(not m_x for m_x, _ in maxima.values()):
        raise ValueError("calibrate_act_scales saw no activations: give it at least one prompt")
    q = percentile / 100.0
    for name, (m_x, m_h) in maxima.items():
        x_scale = (torch.quantile(torch.cat(m_x).cpu(), q) / top).clamp(min=_TINY)
        h_scale = (torch.quantile(torch.cat(m_h).cpu(), q) / (top * x_scale)).clamp(min=_TINY)
        sp.factors[name].x_scale, sp.factors[name].h_scale = x_scale, h_scale
    sp.act_scale = {"method": "tensor", "percentile": percentile}


def _runtime_tensors(sp: Skillpack) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, f in sp.factors.items():
        for part, t in f.stored().items():
            tensors[f"{name}.{part}"] = t
    for key, t in sp.dense.items():
        tensors[f"dense.{key}"] = t
    return tensors


def _stored_tensors(sp: Skillpack) -> dict[str, torch.Tensor]:
    tensors = _runtime_tensors(sp)
    for name, stats in sp.calibration.items():
        tensors[f"{CALIBRATION_PREFIX}{name}.absmean"] = stats.absmean
        tensors[f"{CALIBRATION_PREFIX}{name}.absmax"] = stats.absmax
    return tensors


def skillpack_nbytes(sp: Skillpack) -> int:
    """Bytes of what inference loads: factors (the embedding's included), their scales, smoothing
    scales, static activation scales and dense residuals. The calibration statistics stored beside
    them (for audit and re-zipping) and the header are not counted: they never reach the accelerator."""
    return sum(t.nbytes for t in _runtime_tensors(sp).values())


def save_skillpack(sp: Skillpack, path: str | os.PathLike) -> None:
    """Write `sp` as one safetensors file; the JSON header carries everything but the tensors.

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
        "energy": sp.energy,
        "smoothing": sp.smoothing,
        "rotation": sp.rotation,
        "act_scale": sp.act_scale,
        "tied_embeddings": sp.tied_embeddings,
        "layers": {
            name: {"shape": [f.out_features, f.in_features], "rank": f.rank} for name, f in sp.factors.items()
        },
        "calibration": sp.calibration_summary,
        "meta": sp.meta,
    }
    tensors = {k: t.detach().cpu().contiguous() for k, t in _stored_tensors(sp).items()}
    with tmp_path_for(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER_KEY: json.dumps(header)})


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
    if version not in READABLE_VERSIONS:
        raise SkillpackError(
            f"skillpack {path} has format_version {version}; this skillweave reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: {redo}"
        )
    try:
        bits, layers, summary = header["bits"], header["layers"], header["calibration"]
        sp = Skillpack(
            domain=header["domain"],
            backbone_fingerprint=header["backbone_fingerprint"],
            rank=header["rank"],
            bits=bits,
            factors=_factors_from(tensors, layers, bits, path),
            dense={k.removeprefix("dense."): t for k, t in tensors.items() if k.startswith("dense.")},
            meta=header["meta"],
            smoothing=header["smoothing"],
            rotation=header["rotation"],
            energy=header["energy"],
            calibration=_calibration_from(tensors, summary.get("tokens", 0), path),
            calibration_summary=summary,
            # absent from version 2, which had neither
            act_scale=header.get("act_scale", {"method": "token", "percentile": None}),
            tied_embeddings=header.get("tied_embeddings", False),
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise SkillpackError(f"skillpack {path} has a corrupt header (missing or bad {e}); {redo}") from None
    check_fingerprint(sp, expected_fingerprint, source=str(path))
    return sp


def _calibration_from(tensors: dict[str, torch.Tensor], tokens: int, path: Path) -> dict[str, ChannelStats]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith(CALIBRATION_PREFIX):
            module, _, part = key.removeprefix(CALIBRATION_PREFIX).rpartition(".")
            parts.setdefault(module, {})[part] = t
    stats = {}
    for module, p in parts.items():
        if set(p) != {"absmean", "absmax"}:
            raise SkillpackError(f"skillpack {path}: calibration statistics of {module} are incomplete")
        stats[module] = ChannelStats(p["absmean"], p["absmax"], tokens)
    return stats


def _stored_shape(rows: int, cols: int, bits: int) -> tuple[tuple[int, int], torch.dtype]:
    return ((rows, (cols + 1) // 2), torch.uint8) if bits == 4 else ((rows, cols), torch.int8)


def _factors_from(
    tensors: dict[str, torch.Tensor], layers: dict, bits: int, path: Path
) -> dict[str, QuantizedFactors]:
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        if key.startswith(("dense.", CALIBRATION_PREFIX)):
            continue
        module, _, part = key.rpartition(".")
        if part not in _FACTOR_PARTS + _OPTIONAL_PARTS:
            raise SkillpackError(f"skillpack {path} holds an unknown tensor {key!r}")
        parts.setdefault(module, {})[part] = t
    if set(parts) != set(layers):
        odd = sorted(set(parts) ^ set(layers))
        raise SkillpackError(f"skillpack {path}: tensors and header disagree on layers {odd[:5]}")
    factors = {}
    for module, p in parts.items():
        if not set(_FACTOR_PARTS) <= set(p):
            raise SkillpackError(f"skillpack {path}: {module} lacks {sorted(set(_FACTOR_PARTS) - set(p))}")
        (out_features, in_features), rank = layers[module]["shape"], layers[module]["rank"]
        f = QuantizedFactors(**p, in_features=in_features, bits=bits)
        a_shape, dtype = _stored_shape(out_features, rank, bits)
        b_shape, _ = _stored_shape(rank, in_features, bits)
        consistent = (
            f.a_q.dtype == f.b_q.dtype == dtype
            and f.a_scale.dtype == f.b_scale.dtype == torch.float32
            and tuple(f.a_q.shape) == a_shape
            and tuple(f.b_q.shape) == b_shape
            and tuple(f.a_scale.shape) == (out_features,)
            and tuple(f.b_scale.shape) == (rank,)
            and (f.smooth is None or (f.smooth.dtype == torch.float32 and tuple(f.smooth.shape) == (in_features,)))
            and (f.x_scale is None) == (f.h_scale is None)
            and all(
                t is None or (t.dtype == torch.float32 and t.ndim == 0 and t.item() > 0) for t in (f.x_scale, f.h_scale)
            )
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
    """An nn.Linear plus its skillpack delta: forward(x) = base(x) + (x diag(s)^-1 B^T) A^T.

    `base` is the original module, held by reference: its weight is never copied or changed.
    Two paths compute the delta:
    - fp (default): A and B diag(s)^-1 dequantized once, at construction, in the base weight's dtype.
    - int_mm: the paper's integer path. x is divided by the smoothing scales s and quantized to int8;
      x_q B_q^T runs as an int8 x int8 -> int32 GEMM (torch._int_mm); that int32 result is truncated
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
        if int_mm:
            a_q, a_scale = quantize_per_channel(factors.a() * factors.b_scale, bits=8, dim=0)
            # _int_mm's second operands A_q^T and B_q^T, laid out once rather than on every call
            buffers.update(a_qt=_blas_operand(a_q.t()), b_qt=_blas_operand(factors.b_int().t()))
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

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    def extra_repr(self) -> str:
        return f"rank={self.rank}, int_mm={self.int_mm}, static={self.static}"

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
            return self._static_int_delta(x) if self.static else self._int_delta(x)
        if self.static:
            h = F.linear(torch.clamp(x, -self.x_bound, self.x_bound), self.b)
            return F.linear(torch.clamp(h, -self.h_bound, self.h_bound), self.a)
        return F.linear(F.linear(x, self.b), self.a)

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
        h = torch._int_mm(_blas_operand(x_q), self.b_qt)
        h_max = h.abs().amax(-1, keepdim=True).float()
        h_q = torch.round(h * (top / h_max.clamp_min(1.0))).to(torch.int8)
        y = torch._int_mm(_blas_operand(h_q), self.a_qt)
        return (y * (x_max * h_max) * self.out_scale).to(x.dtype).reshape(*x.shape[:-1], -1)

    def _static_int_delta(self, x: torch.Tensor) -> torch.Tensor:
        x_q = quantize_static(x.reshape(-1, x.shape[-1]), self.in_mul)
        h = torch._int_mm(_blas_operand(x_q), self.b_qt)
        y = torch._int_mm(_blas_operand(quantize_static(h, self.h_mul)), self.a_qt)
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


@dataclass
class _Attachment:
    """What `detach_skillpack` needs to restore the backbone bit-exactly."""

    domain: str
    modules: dict[str, nn.Module]
    """The original modules the attachment wrapped, by name."""
    dense_originals: dict[str, torch.Tensor]


def attached_domain(model: nn.Module) -> str | None:
    """The domain of the skillpack attached to `model`, or None."""
    attachment = getattr(model, _ATTACHMENT, None)
    return attachment.domain if attachment is not None else None


def tied_head(model: nn.Module, embedding: nn.Embedding) -> tuple[str, nn.Linear] | None:
    """The output head's name and module when its weight is `embedding`'s (tied), else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, nn.Linear) or head.weight is not embedding.weight:
        return None
    return next(name for name, m in model.named_modules() if m is head), head


def attach_skillpack(
    model: nn.Module, sp: Skillpack, *, expected_fingerprint: str | None = None, int_mm: bool = False
) -> None:
    """Apply skillpack `sp` to `model` in place; everything is checked before anything changes.

    Each factored nn.Linear is replaced by a SkillpackLinear wrapping it, a factored nn.Embedding by a
    SkillpackEmbedding and, when the output head shares its weight, the head by a SkillpackLinear of
    the same factors; each dense residual is added into its parameter, whose original value is kept
    for `detach_skillpack`.

    Raises:
        SkillpackError: a skillpack is already attached (detach it first), the fingerprint differs
            from `expected_fingerprint`, a name or shape in `sp` does not match the model, or the
            model's embeddings are tied and the skillpack's are not (or the other way round).
    """
    if attached_domain(model) is not None:
        raise SkillpackError(
            f"skillpack {attached_domain(model)!r} is already attached; detach_skillpack(model) before "
            f"attaching {sp.domain!r}"
        )
    source = f"{sp.domain!r}"
    check_fingerprint(sp, expected_fingerprint, source)
    modules: dict[str, nn.Module] = {}
    for name, f in sp.factors.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SkillpackError(
                f"skillpack {source} has factors for {name}, which this model lacks"
            ) from None
        if not isinstance(module, (nn.Linear, nn.Embedding)):
            raise SkillpackError(
                f"skillpack {source}: {name} is a {type(module).__name__}, not an nn.Linear or nn.Embedding"
            )
        shape = (f.out_features, f.in_features)
        if tuple(module.weight.shape) != shape:
            raise SkillpackError(
                f"skillpack {source}: factors of {name} make a {shape} delta, the layer is "
                f"{tuple(module.weight.shape)}"
            )
        modules[name] = module
    heads: dict[str, tuple[nn.Linear, QuantizedFactors]] = {}
    for name, module in modules.items():
        if not isinstance(module, nn.Embedding):
            continue
        tied = tied_head(model, module)
        if (tied is not None) != sp.tied_embeddings:
            made, has = ("tied", "does not share") if sp.tied_embeddings else ("untied", "shares")
            raise SkillpackError(
                f"skillpack {source} was made for {made} embeddings; this model's output head {has} {name}'s weight"
            )
        if tied is not None:
            if tied[0] in modules:
                raise SkillpackError(f"skillpack {source} has factors for both {name} and {tied[0]}, which are tied")
            heads[tied[0]] = (tied[1], sp.factors[name])
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

    wrappers: dict[str, nn.Module] = {
        name: SkillpackEmbedding(m, sp.factors[name])
        if isinstance(m, nn.Embedding)
        else SkillpackLinear(m, sp.factors[name], int_mm=int_mm)
        for name, m in modules.items()
    }
    for name, (head, f) in heads.items():
        wrappers[name] = SkillpackLinear(head, f, int_mm=int_mm)
        modules[name] = head
    dense_originals = {}
    with torch.no_grad():
        for key, p in params.items():
            dense_originals[key] = p.detach().clone()
            p.add_(sp.dense[key].to(p.device, p.dtype))
    for name, wrapper in wrappers.items():
        _set_submodule(model, name, wrapper)
    setattr(model, _ATTACHMENT, _Attachment(sp.domain, modules, dense_originals))


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def detach_skillpack(model: nn.Module) -> None:
    """Restore the backbone exactly as it was before `attach_skillpack` (same modules, same bits).

    Raises:
        SkillpackError: no skillpack is attached.
    """
    attachment = getattr(model, _ATTACHMENT, None)
    if attachment is None:
        raise SkillpackError("no skillpack is attached to this model")
    for name, module in attachment.modules.items():
        _set_submodule(model, name, module)
    with torch.no_grad():
        for key, original in attachment.dense_originals.items():
            model.get_parameter(key).copy_(original)
    delattr(model, _ATTACHMENT)
