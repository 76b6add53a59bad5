"""Deltas (theta_k - theta_0, the proto-skillpacks): files stamped with their backbone, adding one to a
model, and how far one moved the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from .core.artifacts import ArtifactRef, tmp_path_for
from .core.distributed import is_main_process
from .core.errors import ArtifactError


def add_delta_gathered(model: torch.nn.Module, delta: dict[str, torch.Tensor]) -> None:
    """theta <- theta + Delta in place; under ZeRO-3 (weights partitioned at load) one weight at a time,
    gathered, changed on rank 0 and partitioned again."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    zero3 = is_deepspeed_zero3_enabled()
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied weights are listed once
            if name not in delta:
                continue
            if not zero3:
                p.add_(delta[name].to(p.dtype))
                continue
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                if is_main_process():
                    p.add_(delta[name].to(p.dtype))


def delta_stats(delta: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> dict:
    """How far training moved the weights: ||Delta|| / ||theta_0|| and the share of entries changed."""
    d2 = sum(float(t.double().pow(2).sum()) for t in delta.values())
    b2 = sum(float(t.double().pow(2).sum()) for t in base.values())
    changed = sum(int((t != 0).sum()) for t in delta.values())
    total = sum(t.numel() for t in delta.values())
    return {"relative_weight_change": (d2 / b2) ** 0.5 if b2 else 0.0, "changed_fraction": changed / total}


def save_delta(path: Path, delta: dict[str, torch.Tensor], backbone_fingerprint: str, domain: Optional[str]) -> None:
    from safetensors.torch import save_file

    meta = {"skillweave": json.dumps({"kind": "delta", "backbone_fingerprint": backbone_fingerprint, "domain": domain})}
    with tmp_path_for(path) as tmp:
        save_file(delta, str(tmp), metadata=meta)


def load_delta(path: Path, backbone_fingerprint: Optional[str] = None) -> dict[str, torch.Tensor]:
    """A delta file; with `backbone_fingerprint`, refuses one made for another backbone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            header = json.loads((f.metadata() or {}).get("skillweave", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{path}: unreadable delta file ({e}); delete {path.parent} and rerun the stage that made it") from None
    if backbone_fingerprint and header.get("backbone_fingerprint") != backbone_fingerprint:
        raise ArtifactError(
            f"{path} is a delta of backbone {header.get('backbone_fingerprint')}, not of this backbone "
            f"({backbone_fingerprint}): rerun the dpo stage for this model"
        )
    return tensors


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the tensors a model holds (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def add_delta(model: torch.nn.Module, delta: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` with `delta` added to its parameters in place (theta_0 + Delta)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in delta:
                p.add_(delta[name].to(p.dtype))
    return model


def previous_delta(inputs: dict[str, ArtifactRef], backbone_fingerprint: str) -> Optional[dict[str, torch.Tensor]]:
    """Delta_{r-1} of the previous online round's dpo artifact (input `policy`), or None at round 0."""
    if "policy" not in inputs:
        return None
    return load_delta(inputs["policy"].file("delta"), backbone_fingerprint=backbone_fingerprint)
