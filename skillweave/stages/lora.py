"""Baseline: LoRA per domain (PEFT), trained by DPO on the same pairs as the per-domain full DPO.

The backbone stays frozen; a rank-`lora.rank` adapter on its block linears (`lora.target_modules`,
default every linear but the output head: the layers SkillZip compresses) is trained with trl's
DPOTrainer, reference = the backbone (the adapter disabled). Every training setting but the learning
rate is dpo's (beta, steps, batch, length, warm-up, seed), so the two differ only in what they train.
With online DPO (`dpo.rounds` > 1) it trains on every round's pairs together, offline, for the steps
of all rounds.

The artifact is `adapter/`, a PEFT adapter directory (`peft.PeftModel.from_pretrained(backbone,
dir)` loads it; the trainer also leaves the tokenizer there), with `skillweave.json` beside
adapter_config.json: the fingerprint of the backbone it belongs to, its domain and its settings.
`load_lora` refuses an adapter of another backbone. Multi-process launches train it as stage dpo does
(rank 0 writes the adapter).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from ..artifacts import ArtifactRef, atomic_write_json
from ..config import LoRAConfig
from ..pipeline import STAGES, Context, Stage
from .dpo import dpo_settings, load_pairs, pairs_of_every_round, train_dpo

ADAPTER = "adapter"
STAMP = "skillweave.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    # dpo.learning_rate is not used (lora.learning_rate is); with online rounds it trains every
    # round's pairs, for the steps of all rounds.
    settings = dpo_settings(cfg.dpo, drop=("learning_rate",))
    steps = cfg.dpo.max_steps * cfg.dpo.rounds
    config = {"dpo": settings | {"max_steps": steps}, "lora": asdict(cfg.lora), "model": ctx.base_fingerprint}
    rounds = pairs_of_every_round(ctx, domain)
    return config, {("pairs" + (f"_round{r}" if r else "")): ref for r, ref in enumerate(rounds)}


def peft_config(settings: LoRAConfig):
    """The `peft.LoraConfig` of `lora.*`."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules) if settings.target_modules else "all-linear",
        task_type="CAUSAL_LM",
    )


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from datasets import concatenate_datasets

    cfg = ctx.for_domain(domain)
    pairs = concatenate_datasets([load_pairs(inp.path) for _, inp in sorted(inputs.items())])
    ckpt_dir = ref.path / "checkpoints"
    trainer, metrics = train_dpo(
        cfg, ctx.model_dir, pairs, ckpt_dir, run_name=f"lora-{domain}-{ref.key}", learning_rate=cfg.lora.learning_rate,
        max_steps=ref.config["dpo"]["max_steps"], peft_config=peft_config(cfg.lora),
    )
    out, tmp = ref.path / ADAPTER, ref.path / f".{ADAPTER}.tmp"
    main = trainer.is_world_process_zero()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))  # collective under DeepSpeed (gathers the adapter); rank 0 writes
    if not main:  # rank 0 writes the adapter and the manifest
        return metrics
    stamp = {"kind": "lora", "backbone_fingerprint": ctx.base_fingerprint, "domain": domain, "lora": asdict(cfg.lora)}
    atomic_write_json(tmp / STAMP, stamp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # a killed job never leaves an adapter directory that looks complete
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    delta = lora_dense_delta(out)
    return {
        **metrics,
        "adapted_layers": len(delta),
        "adapter_bytes": sum(t.numel() * t.element_size() for t in adapter_tensors(out).values()),
        "delta_norm": sum(float(t.double().pow(2).sum()) for t in delta.values()) ** 0.5,
    }


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The tensors of a PEFT adapter directory, as stored."""
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / ADAPTER_WEIGHTS))


def lora_dense_delta(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The dense weight update of a LoRA adapter: {"<module>.weight": (alpha / r) B A} (fp32).

    Names are the backbone's parameter names, so `add_delta(backbone, lora_dense_delta(dir))` is the
    adapted model with the adapter merged in.

    Raises:
        ValueError: an adapter this does not read (per-layer ranks or alphas, DoRA, fan_in_fan_out).
    """
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_dora") or config.get("fan_in_fan_out"):
        raise ValueError(f"{adapter_dir}: per-layer rank/alpha, DoRA and fan_in_fan_out adapters are not supported here")
    r, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
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
        raise ValueError(f"{adapter_dir}: not a skillweave LoRA adapter ({e}); delete its artifact directory and rerun the lora stage") from None
    if stamp.get("backbone_fingerprint") != backbone_fingerprint:
        raise ValueError(
            f"{adapter_dir} is a LoRA adapter of backbone {stamp.get('backbone_fingerprint')}, not of this backbone "
            f"({backbone_fingerprint}): rerun the lora stage for this model"
        )
    if isinstance(model, PeftModel):
        model.load_adapter(str(adapter_dir), adapter_name=adapter_name)
    else:
        model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name)
    return model.eval()


STAGES.register("lora")(Stage("lora", per_domain=True, plan=plan, run=run))
