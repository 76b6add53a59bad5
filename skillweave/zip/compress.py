"""Compressing a domain's residual into a skillpack, and the static activation scales of its integer path.

`compress_residual` turns a residual state dict into a `Skillpack` (per layer `compress_factors`:
channel-wise smoothing, truncated SVD, rank-wise rotation, INT8 or INT4); `calibrate_act_scales`
then fills in the static activation scales (act_scale "tensor") from calibration prompts run with the
skillpack attached. This is the zip stage's offline work, apart from what inference loads.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from skillweave.zip.attach import attach_skillpack, detach_skillpack
from skillweave.zip.format import BLOCK_PREFIX, EMBEDDING, HEAD, QuantizedFactors, Skillpack
from skillweave.zip.kernels import _TINY, SkillpackEmbedding
from skillweave.zip.quant import check_bits, pack_int4, qmax, quantize_per_channel
from skillweave.zip.smoothing import ChannelStats, rotation_matrix, smoothing_scales
from skillweave.zip.svd import low_rank_factors


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
