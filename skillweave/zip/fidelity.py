"""How much of a residual's effect a skillpack keeps: next-token KL against the uncompressed residual.

Per layer, compress_residual already records the relative error of the reconstructed residual
(meta["layer_rel_error"]); this measures the whole model. Both are on held-out prompts, never the
calibration ones.
"""

from __future__ import annotations

import functools
from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from skillweave.zip.skillpack import Skillpack, attach_skillpack, detach_skillpack, tied_head


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


def _residual_hooks(model: nn.Module, residual: dict[str, torch.Tensor]) -> tuple[list, list[str]]:
    """Forward hooks adding each 2-D residual to its module's output (an nn.Linear's, an nn.Embedding's
    and, tied, the output head's with the embedding's), and the other keys, to add in place.

    Raises:
        ValueError: a 2-D residual of a module that is neither.
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
        elif isinstance(module := model.get_submodule(name), nn.Linear):
            adds.append((module, _add_linear, r))
        elif isinstance(module, nn.Embedding):
            adds.append((module, _add_lookup, r))
            if tied is not None and module is embedding:
                adds.append((tied[1], _add_linear, r))
        else:
            raise ValueError(f"residual {key} is 2-D but {name} is a {type(module).__name__}, not a linear or embedding")
    hooks = [m.register_forward_hook(functools.partial(fn, r=r)) for m, fn, r in adds]
    return hooks, dense


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
        int_mm: run the skillpack's integer path (what is served) rather than its fp path.

    Returns:
        {"kl_skillpack": KL(reference || skillpack), "kl_backbone": KL(reference || backbone)}: the
        second is the scale, what dropping the skillpack altogether would cost.

    Raises:
        ValueError: a 2-D residual belongs to neither an nn.Linear nor an nn.Embedding.
    """
    batches = list(batches)
    backbone = _log_probs(model, batches)
    hooks, dense = _residual_hooks(model, residual)
    originals = {key: model.get_parameter(key).detach().clone() for key in dense}
    try:
        for key in dense:
            p = model.get_parameter(key)
            p.add_(residual[key].to(p.device, p.dtype))
        reference = _log_probs(model, batches)
    finally:
        for h in hooks:
            h.remove()
        for key, original in originals.items():
            model.get_parameter(key).copy_(original)
    attach_skillpack(model, sp, int_mm=int_mm)
    try:
        compressed = _log_probs(model, batches)
    finally:
        detach_skillpack(model)
    return {"kl_skillpack": _kl(reference, compressed), "kl_backbone": _kl(reference, backbone)}
