"""The skillpack data model and its file format: what a skillpack is and how it lies on disk.

A skillpack holds a domain's residual R_k = Delta_k - Delta_shared, compressed: per linear layer of the
decoder blocks, integer SVD factors A (out x r) and B (r x in) with per-row scales and, when smoothed,
the channel-wise scales s, so that R ~ A B diag(s)^-1 (METHOD.md stage 2: smoothing, truncated SVD,
rank-wise rotation folded into A and B, INT8 or INT4). Small 1-D residuals (RMSNorm weights) are kept
dense in fp16. The input embedding's residual, when kept (`embedding_rank`), is factored the same way,
E_res ~ A B with A vocab x r: its rows are looked up by token id, and with tied weights the same
factors add to the logits. The calibration statistics that chose s travel with it, and so do the
static activation scales of the integer path when it has them (act_scale "tensor").

This module holds only the dataclasses (`QuantizedFactors`, `Skillpack`), the module-name constants
and the safetensors format (versions 2 and 3), so that reading or writing a skillpack needs neither
the compression (compress.py) nor the inference modules (kernels.py, attach.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from skillweave.core.artifacts import tmp_path_for
from skillweave.core.errors import SkillpackError
from skillweave.zip.quant import dequantize, unpack_int4
from skillweave.zip.smoothing import ChannelStats

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
    redo = f"delete {path.parent} and re-run the zip stage (python -m skillweave stage=zip ...)"  # else it is "complete"
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
