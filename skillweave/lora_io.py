"""PEFT LoRA adapters as skillweave reads them: the config of `lora.*`, the stamped adapter directory,
its dense delta, loading it on its backbone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .core.errors import ArtifactError

STAMP = "skillweave.json"


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def peft_config(settings):
    """The `peft.LoraConfig` of `lora.*` (`settings`: a config.LoRAConfig; not imported here, which would
    tie this reader of adapter files to the config module and close an import cycle through engines)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT adapter directory, as stored."""
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / ADAPTER_WEIGHTS))


def lora_scale(adapter_dir: Path) -> float:
    """The factor PEFT puts on every lora_B @ lora_A of the adapter: lora_alpha / r (rsLoRA: / sqrt(r)).

    Raises:
        ArtifactError: an adapter one scale does not describe (per-layer ranks or alphas, DoRA, fan_in_fan_out).
    """
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora") or config.get("fan_in_fan_out"):
        raise ArtifactError(f"{adapter_dir}: per-layer rank/alpha, DoRA and fan_in_fan_out adapters are not supported here")
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def lora_dense_delta(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The dense weight update of a LoRA adapter: {"<module>.weight": (alpha / r) B A} (fp32).

    Names are the backbone's parameter names, so `add_delta(backbone, lora_dense_delta(dir))` is the
    adapted model with the adapter merged in.

    Raises:
        ValueError: an adapter this does not read (per-layer ranks or alphas, DoRA, fan_in_fan_out).
    """
    scale = lora_scale(adapter_dir)
    tensors = adapter_tensors(adapter_dir)
    delta = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removesuffix(".lora_A.weight")
            b = tensors[f"{module}.lora_B.weight"]
            delta[f"{module.removeprefix('base_model.model.')}.weight"] = scale * (b.float() @ a.float())
    return delta


def load_lora(model: torch.nn.Module, adapter_dir: Path, backbone_fingerprint: str, adapter_name: str = "default"):
    """`model` (the backbone, or a PeftModel of it holding other adapters) with the adapter in
    `adapter_dir` loaded as `adapter_name`, in eval mode; returns the PeftModel.

    Raises:
        ValueError: not a skillweave LoRA adapter directory, or an adapter of another backbone.
    """
    from peft import PeftModel

    try:
        stamp = json.loads((adapter_dir / STAMP).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{adapter_dir}: not a skillweave LoRA adapter ({e}); delete its artifact directory and rerun the lora stage") from None
    if stamp.get("backbone_fingerprint") != backbone_fingerprint:
        raise ArtifactError(
            f"{adapter_dir} is a LoRA adapter of backbone {stamp.get('backbone_fingerprint')}, not of this backbone "
            f"({backbone_fingerprint}): rerun the lora stage for this model"
        )
    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name)
    else:
        model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name)
    return model.eval()


def save_adapter(trainer, out: Path, stamp: dict) -> bool:
    """The trained adapter as a PEFT directory at `out`, stamped (`STAMP`) with the backbone it belongs to;
    written to a temporary sibling and renamed, so a killed job never leaves one that looks complete.
    Collective under DeepSpeed (every rank calls it); returns True on the rank that wrote it (rank 0)."""
    import os
    import shutil

    from .core.artifacts import atomic_write_json

    tmp = out.with_name(f".{out.name}.tmp")
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # gathers a partitioned adapter under DeepSpeed; rank 0 writes
    if not main:
        return False
    atomic_write_json(tmp / STAMP, stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return True
