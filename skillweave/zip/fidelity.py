"""How much of a residual's effect a skillpack keeps: next-token KL against the uncompressed residual.

Per layer, compress_residual already records the relative error of the reconstructed residual
(meta["layer_rel_error"]); this measures the whole model. Both are on held-out prompts, never the
calibration ones. `skillpack_fidelity` (what the zip stage reports) measures the skillpack's fp path
and its integer path, the served one, which alone uses static activation scales (act_scale tensor).
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from skillweave.zip.attach import attach_skillpack, detach_skillpack, tied_head
from skillweave.zip.format import Skillpack


def _log_probs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    return [F.log_softmax(model(**b).logits.float(), dim=-1) for b in batches]


def _kl(p_log: list[torch.Tensor], q_log: list[torch.Tensor]) -> float:
    """Mean over tokens of KL(p || q)."""
    total, tokens = 0.0, 0
    for p, q in zip(p_log, q_log):
        kl = (p.exp() * (p - q)).sum(-1)
        total, tokens = total + kl.sum().item(), tokens + kl.numel()
    return total / tokens


def _add_linear(m: nn.Module, args: tuple, out: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return out + F.linear(args[0], r.to(out.device, out.dtype))


def _add_lookup(m: nn.Module, args: tuple, out: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return out + F.embedding(args[0], r.to(out.device, out.dtype))


def _submodule(model: nn.Module, name: str, key: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"residual {key}: this model has no module {name}") from None


def _parameter(model: nn.Module, key: str) -> nn.Parameter:
    try:
        return model.get_parameter(key)
    except AttributeError:
        raise ValueError(f"residual {key}: this model has no such parameter") from None


def _residual_hooks(model: nn.Module, residual: dict[str, torch.Tensor]) -> tuple[list, list[str]]:
    """Forward hooks adding each 2-D residual to its module's output (an nn.Linear's, an nn.Embedding's
    and, tied, the output head's with the embedding's), and the other keys, to add in place.

    Nothing is hooked unless every key checks out.

    Raises:
        ValueError: a 2-D residual of a module that is neither, or of no module of `model`.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = tied_head(model, embedding) if isinstance(embedding, nn.Embedding) else None
    adds, dense = [], []
    for key, r in residual.items():
        name = key.removesuffix(".weight")
        if r.ndim != 2:
            dense.append(key)
        elif tied is not None and name == tied[0]:
            continue  # the tied head's residual is the embedding's, added through the head below
        elif isinstance(module := _submodule(model, name, key), nn.Linear):
            adds.append((module, _add_linear, r))
        elif isinstance(module, nn.Embedding):
            adds.append((module, _add_lookup, r))
            if tied is not None and module is embedding:
                adds.append((tied[1], _add_linear, r))
        else:
            raise ValueError(f"residual {key} is 2-D but {name} is a {type(module).__name__}, not a linear or embedding")
    hooks = [m.register_forward_hook(functools.partial(fn, r=r)) for m, fn, r in adds]
    return hooks, dense


def _reference_log_probs(
    model: nn.Module, residual: dict[str, torch.Tensor], batches: list[dict[str, torch.Tensor]]
) -> list[torch.Tensor]:
    """Log-probs of the backbone plus the whole residual; the model is restored bit-exactly after,
    also when a key is refused."""
    hooks, originals = [], {}
    try:
        hooks, dense = _residual_hooks(model, residual)
        params = {key: _parameter(model, key) for key in dense}  # every key checked before any changes
        for key, p in params.items():
            originals[key] = p.detach().clone()
            p.add_(residual[key].to(p.device, p.dtype))
        return _log_probs(model, batches)
    finally:
        for h in hooks:
            h.remove()
        for key, original in originals.items():
            model.get_parameter(key).copy_(original)


def _skillpack_log_probs(
    model: nn.Module, sp: Skillpack, batches: list[dict[str, torch.Tensor]], int_mm: bool
) -> list[torch.Tensor]:
    attach_skillpack(model, sp, int_mm=int_mm)
    try:
        return _log_probs(model, batches)
    finally:
        detach_skillpack(model)


@torch.no_grad()
def next_token_kl(
    model: nn.Module,
    residual: dict[str, torch.Tensor],
    sp: Skillpack,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    int_mm: bool = True,
) -> dict[str, float]:
    """KL of next-token distributions: uncompressed residual vs skillpack, and vs the backbone alone.

    The reference is the backbone plus the whole residual, what the skillpack stands for, so
    kl_skillpack also counts what the skillpack leaves out (e.g. the embedding's residual at
    embedding_rank 0). Linears and embeddings get theirs through forward hooks, 1-D ones in place, so
    the backbone is never copied and is restored bit-exactly afterwards.

    Args:
        model: the backbone the skillpack was made for, no skillpack attached.
        residual: the uncompressed residual (parameter name -> tensor); a tied head's entry, if any,
            must be the embedding's and is not added twice.
        sp: the skillpack of that residual.
        batches: held-out keyword inputs for model(**batch) (unpadded: padding would count as tokens).
        int_mm: run the skillpack's integer path (what is served; static activation scales if `sp`
            has them) rather than its fp path.

    Returns:
        {"kl_skillpack": KL(reference || skillpack), "kl_backbone": KL(reference || backbone)}: the
        second is the scale, what dropping the skillpack altogether would cost.

    Raises:
        ValueError: a residual's key names no module or parameter of `model`, or a 2-D residual belongs
            to neither an nn.Linear nor an nn.Embedding.
    """
    batches = list(batches)
    backbone = _log_probs(model, batches)
    reference = _reference_log_probs(model, residual, batches)
    compressed = _skillpack_log_probs(model, sp, batches, int_mm)
    return {"kl_skillpack": _kl(reference, compressed), "kl_backbone": _kl(reference, backbone)}


@torch.no_grad()
def skillpack_fidelity(
    model: nn.Module,
    residual: dict[str, torch.Tensor],
    sp: Skillpack,
    batches: Iterable[dict[str, torch.Tensor]],
) -> dict[str, float]:
    """`next_token_kl` of both of the skillpack's paths, sharing the reference and the backbone's pass.

    Returns:
        {"kl_skillpack": the integer path's (the served one: per-token or static activation scales,
        as `sp` has them), "kl_skillpack_fp": the fp factors' (what SVD + weight quantization lose),
        "kl_backbone": the scale}.

    Raises:
        ValueError: as `next_token_kl`.
    """
    batches = list(batches)
    backbone = _log_probs(model, batches)
    reference = _reference_log_probs(model, residual, batches)
    return {
        "kl_skillpack": _kl(reference, _skillpack_log_probs(model, sp, batches, int_mm=True)),
        "kl_skillpack_fp": _kl(reference, _skillpack_log_probs(model, sp, batches, int_mm=False)),
        "kl_backbone": _kl(reference, backbone),
    }
