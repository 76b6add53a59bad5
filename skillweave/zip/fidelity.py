"""How much of a residual's effect a skillpack keeps: next-token KL against the uncompressed residual.

Per layer, compress_residual already records the relative error of the reconstructed residual
(meta["layer_rel_error"]); this measures the whole model. Both are on held-out prompts, never the
calibration ones.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from skillweave.zip.skillpack import Skillpack, attach_skillpack, detach_skillpack


def _log_probs(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
    return [F.log_softmax(model(**b).logits.float(), dim=-1) for b in batches]


def _kl(p_log: list[torch.Tensor], q_log: list[torch.Tensor]) -> float:
    """Mean over tokens of KL(p || q)."""
    total, tokens = 0.0, 0
    for p, q in zip(p_log, q_log):
        kl = (p.exp() * (p - q)).sum(-1)
        total, tokens = total + kl.sum().item(), tokens + kl.numel()
    return total / tokens


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

    The reference adds every residual the skillpack covers (factored linears via forward hooks, dense
    ones in place), so the backbone is never copied and is restored bit-exactly afterwards.

    Args:
        model: the backbone the skillpack was made for, no skillpack attached.
        residual: the uncompressed residual (parameter name -> tensor).
        sp: the skillpack of that residual.
        batches: held-out keyword inputs for model(**batch) (unpadded: padding would count as tokens).
        int_mm: run the skillpack's integer path (what is served) rather than its fp path.

    Returns:
        {"kl_skillpack": KL(reference || skillpack), "kl_backbone": KL(reference || backbone)}: the
        second is the scale, what dropping the skillpack altogether would cost.
    """
    batches = list(batches)
    backbone = _log_probs(model, batches)
    hooks = [
        model.get_submodule(name).register_forward_hook(
            lambda m, args, out, r=residual[f"{name}.weight"]: out + F.linear(args[0], r.to(out.device, out.dtype))
        )
        for name in sp.factors
    ]
    originals = {key: model.get_parameter(key).detach().clone() for key in sp.dense}
    try:
        for key in sp.dense:
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
