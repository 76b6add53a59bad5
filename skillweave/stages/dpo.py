"""Stage 1c: full-parameter DPO per domain (trl), reference = the backbone.

The artifact is the proto-skillpack Delta_k = theta_k - theta_0 as safetensors, stamped with the
backbone's fingerprint. Trainer checkpoints live in the (partial) artifact directory until the delta
is written, so a killed (or preempted and requeued) run resumes from its last checkpoint.

Multi-GPU: `dpo.deepspeed=zero2|zero3|<path.json>` under `accelerate launch` (slurm/README.md). All
ranks train; rank 0 alone writes the delta, from fp32 weights (DeepSpeed's master copy, not the
bf16 or partitioned module).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from ..artifacts import ArtifactRef, tmp_path_for
from ..config import DPOConfig as DPOSettings
from ..config import Precision
from ..models import load_model, load_state_dict, load_tokenizer
from ..pipeline import STAGES, Context, Stage, ref_for
from ..resources import resource_path
from ..tracking import wandb_env
from .filter import PAIRS

DELTA = "delta.safetensors"


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    # DeepSpeed is how the run is executed, not what it computes: a merge job composed without
    # dpo.deepspeed must find the same delta.
    settings = {k: v for k, v in asdict(cfg.dpo).items() if k != "deepspeed"}
    return {"dpo": settings, "model": ctx.base_fingerprint}, {"pairs": ref_for(ctx, "filter", domain)}


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from datasets import load_from_disk
    from transformers.trainer_utils import get_last_checkpoint
    from trl import DPOConfig, DPOTrainer

    cfg = ctx.for_domain(domain)
    d = cfg.dpo
    pairs = load_from_disk(str(inputs["pairs"].path / PAIRS)).select_columns(["prompt", "chosen", "rejected"])
    cuda = torch.cuda.is_available()
    if d.precision == Precision.bfloat16 and not cuda:
        raise ValueError("dpo.precision=bfloat16 needs a GPU (mixed precision); use dpo.precision=float32 on CPU")
    ckpt_dir = ref.path / "checkpoints"
    wandb = wandb_env(cfg)
    os.environ.update(wandb)  # read by wandb.init in the Trainer's callback (rank 0 only)
    # Made before the model: with ZeRO-3 the DPOConfig makes from_pretrained load the weights partitioned.
    args = DPOConfig(
        output_dir=str(ckpt_dir),
        learning_rate=d.learning_rate,
        beta=d.beta,
        max_steps=d.max_steps,
        per_device_train_batch_size=d.per_device_batch_size,
        gradient_accumulation_steps=d.gradient_accumulation_steps,
        max_length=d.max_length,
        warmup_steps=d.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
        gradient_checkpointing=d.gradient_checkpointing,
        bf16=d.precision == Precision.bfloat16,
        use_cpu=not cuda,
        save_steps=d.save_steps,
        save_total_limit=1,
        logging_steps=1,
        seed=d.seed,
        precompute_ref_log_probs=True,  # the frozen reference runs once over the pairs, not every step
        report_to="wandb" if wandb else "none",
        run_name=f"dpo-{domain}-{ref.key}",
        deepspeed=deepspeed_config(d),
    )
    model = load_model(ctx.model_dir, dtype=torch.float32)
    tok = load_tokenizer(ctx.model_dir)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=pairs, processing_class=tok)
    last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
    trainer.train(resume_from_checkpoint=last)

    logs = [r for r in trainer.state.log_history if "loss" in r]
    metrics = {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "processes": trainer.args.world_size,
        "deepspeed": d.deepspeed,
        "first_loss": logs[0]["loss"] if logs else None,
        "last_loss": logs[-1]["loss"] if logs else None,
        "last_reward_accuracy": logs[-1].get("rewards/accuracies") if logs else None,
    }
    trained = trained_state_dict(trainer, ckpt_dir / "final")
    if trained is None:  # not rank 0: rank 0 writes the delta and the manifest
        return metrics
    base = load_state_dict(ctx.model_dir)
    delta = {k: (trained[k].detach().float().cpu() - v).contiguous() for k, v in base.items()}
    save_delta(ref.path / DELTA, delta, backbone_fingerprint=ctx.base_fingerprint, domain=domain)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return {**metrics, **delta_stats(delta, base)}


def deepspeed_config(d: DPOSettings) -> Optional[str]:
    """The DeepSpeed JSON for `dpo.deepspeed`: a name in conf/deepspeed/ or a path; None without.

    Raises:
        ValueError: neither a known name nor an existing file, or deepspeed is not installed.
    """
    if d.deepspeed is None:
        return None
    named = resource_path("conf", "deepspeed", f"{d.deepspeed}.json")
    path = named if named.is_file() else Path(d.deepspeed)
    if not path.is_file():
        known = sorted(p.stem for p in resource_path("conf", "deepspeed").glob("*.json"))
        raise ValueError(f"dpo.deepspeed={d.deepspeed} is neither one of {known} (conf/deepspeed/) nor a JSON file")
    if importlib.util.find_spec("deepspeed") is None:
        raise ValueError("dpo.deepspeed needs the deepspeed package: pip install 'skillweave[cluster]'")
    return str(path.resolve())


def trained_state_dict(trainer, scratch: Path) -> Optional[dict[str, torch.Tensor]]:
    """The trained fp32 weights on rank 0, None on the other ranks (collective: every rank calls it).

    Under DeepSpeed the module holds bf16 copies (and, with ZeRO-3, only this rank's partition): the
    fp32 master weights are gathered from a DeepSpeed checkpoint written to `scratch`.
    """
    if trainer.is_deepspeed_enabled:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        trainer.model_wrapped.save_checkpoint(str(scratch))
        trainer.accelerator.wait_for_everyone()
        if not trainer.is_world_process_zero():
            return None
        return get_fp32_state_dict_from_zero_checkpoint(str(scratch))
    if not trainer.is_world_process_zero():
        return None
    return trainer.accelerator.unwrap_model(trainer.model).state_dict()


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
        raise ValueError(f"{path}: unreadable delta file ({e}); delete its artifact directory and rerun the dpo stage") from None
    if backbone_fingerprint and header.get("backbone_fingerprint") != backbone_fingerprint:
        raise ValueError(
            f"{path} is a delta of backbone {header.get('backbone_fingerprint')}, not of this backbone "
            f"({backbone_fingerprint}): rerun the dpo stage for this model"
        )
    return tensors


STAGES.register("dpo")(Stage("dpo", per_domain=True, plan=plan, run=run))
