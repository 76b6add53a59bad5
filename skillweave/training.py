"""The DPO trainer set-up (trl) shared by the dpo, dpo_multitask and lora stages, and writing the delta
it trained from rank 0 (fp32 master weights under DeepSpeed).

Precision (`dpo.precision`): bfloat16 is the Trainer's `bf16=True`, which accelerate turns into
`torch.autocast(bfloat16)` around the model's forward (on CPU too, with `use_cpu`) and fp32 outputs; the
parameters, gradients and AdamW state stay fp32, so theta - theta_0 is an fp32 difference of fp32 weights.
Under DeepSpeed, its bf16 engine holds bf16 module weights and fp32 master weights, which the delta is read from.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from .config import DPOConfig as DPOSettings
from .config import Precision, SkillweaveConfig
from .core.artifacts import ArtifactRef
from .core.engine import Context, Need
from .core.errors import ConfigError, DataError
from .deltas import add_delta_gathered, delta_stats, save_delta
from .models import load_model, load_state_dict, load_tokenizer, native_bf16
from .resources import resource_path
from .tracking import close_wandb, scoped_env, wandb_env


def dpo_settings(d: DPOSettings, drop: tuple[str, ...] = ()) -> dict:
    """The dpo settings a training artifact's key hashes. DeepSpeed and the checkpoint interval are how a
    run executes, not what it computes (a merge job composed without dpo.deepspeed must find the same
    delta; a long run given dpo.save_steps to survive a stop must find the artifacts it made before):
    save_steps is hashed as its default, so keys made when it counted stay. How many rounds follow does
    not change a round; nll_weight is left out at 0 so plain-DPO artifacts made before it existed keep
    their keys; precision is the dtype `auto` resolves to (as generate's dtype). A dpo.deepspeed that
    names no config fails here, when the stage is planned."""
    deepspeed_config(d)
    settings = {k: v for k, v in asdict(d).items() if k not in ("deepspeed", "rounds", *drop)}
    if "save_steps" in settings:
        settings["save_steps"] = SAVE_STEPS_KEYED
    if not d.nll_weight:
        settings.pop("nll_weight", None)
    settings["precision"] = resolved_precision(d.precision)
    return settings


SAVE_STEPS_KEYED = 50
"""What every key holds for dpo.save_steps: its default when it was still hashed."""


def resolved_precision(setting: Precision) -> str:
    """`dpo.precision` as the dtype it names, what training artifacts are keyed by: `auto` is bfloat16 where
    the hardware has bf16 units, float32 elsewhere."""
    if setting == Precision.auto:
        return "bfloat16" if native_bf16() else "float32"
    return str(setting)


def training_precision(setting: Precision, name: str = "dpo.precision") -> str:
    """`setting` (the option `name`) as the dtype training computes in on this machine.

    Raises:
        ConfigError: bfloat16 on hardware without bf16 units, where it is emulated and slower than fp32.
    """
    precision = resolved_precision(setting)
    if precision == "bfloat16" and not native_bf16():
        raise ConfigError(
            f"{name}=bfloat16 needs bf16 units (a GPU with bf16, or a CPU with AVX512-BF16 or AMX) and this "
            f"machine has none (bf16 would be emulated, slower than fp32): use {name}=auto (bf16 where native) "
            "or float32"
        )
    return precision


def check_precision(ctx: Context, domain: Optional[str]) -> None:
    """The start-up check of the training stages (dpo, lora, dpo_multitask, s2l), run for an artifact about
    to be trained, never for a complete one: a bf16 delta trained on a GPU is still read on a CPU without
    bf16 units. `skillweave-cluster` runs it on the submitting machine: use dpo.precision=auto there."""
    training_precision((ctx.for_domain(domain) if domain else ctx.cfg).dpo.precision)


def load_pairs(filter_ref: ArtifactRef, scratch: Path):
    """The chosen/rejected pairs of a filter artifact, as the conversational dataset DPOTrainer reads.

    Read from a copy in `scratch` (the training's own partial directory, removed when it finishes):
    datasets writes cache files beside a dataset it transforms, which must not land in the finished
    filter artifact, and every rank of a multi-process launch must find them on the shared filesystem.
    """
    import os
    import shutil

    from datasets import load_from_disk

    copy = scratch / "pairs" / filter_ref.key
    if not copy.is_dir():
        tmp = copy.with_name(f".{copy.name}.tmp{os.getpid()}")
        shutil.copytree(filter_ref.file("pairs"), tmp)
        try:
            os.replace(tmp, copy)
        except OSError:  # another rank's copy is already in place
            shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(copy)).select_columns(["prompt", "chosen", "rejected"])


def pairs_of_every_round(ctx: Context, domain: str) -> list[ArtifactRef]:
    """The filter artifacts the per-domain DPO of `domain` trains on, round 0 first (one without online
    rounds): the baselines dpo_multitask and lora train on all of them together, the same pairs."""
    return [Need(ctx.at_round(r), "filter", domain) for r in range(ctx.dpo_round + 1)]


def train_dpo(
    cfg: SkillweaveConfig,
    model_dir: Path,
    pairs,
    ckpt_dir: Path,
    run_name: str,
    *,
    learning_rate: Optional[float] = None,
    max_steps: Optional[int] = None,
    peft_config=None,
    initial_delta: Optional[dict[str, torch.Tensor]] = None,
    callbacks: Sequence = (),
):
    """DPO of the model in `model_dir` on `pairs` with `cfg.dpo`'s settings, reference = that model.

    One trainer set-up for the dpo, dpo_multitask and lora stages. Checkpoints go to `ckpt_dir`
    every `dpo.save_steps`; a run killed after one resumes from the last.

    Args:
        learning_rate, max_steps: instead of dpo.learning_rate, dpo.max_steps.
        peft_config: a `peft.PeftConfig`: train that adapter on the frozen model (the reference is
            then the model with the adapter disabled) instead of every weight.
        initial_delta: start from (and refer to) the model plus this delta (online DPO round r > 0).
        callbacks: `transformers.TrainerCallback`s added to the trainer's (bench/dpo_step.py times steps).
    Returns:
        (the trainer after training, metrics: pairs, steps, processes, deepspeed, precision, first and
        last loss, last reward accuracy).
    Raises:
        ConfigError: dpo.precision=bfloat16 without bf16 units; a dpo.deepspeed that is not found.
    """
    from trl import DPOConfig, DPOTrainer

    d = cfg.dpo
    if len(pairs) == 0:
        raise DataError("DPO has no pairs to train on: the filter artifacts it reads are empty; sample more (domain.sampling.*)")
    cuda = torch.cuda.is_available()
    precision = training_precision(d.precision)
    wandb = wandb_env(cfg)
    with scoped_env(wandb):  # read by wandb.init in the Trainer's callback (rank 0 only)
        # Made before the model: with ZeRO-3 the DPOConfig makes from_pretrained load the weights partitioned.
        args = DPOConfig(
            output_dir=str(ckpt_dir),
            learning_rate=d.learning_rate if learning_rate is None else learning_rate,
            beta=d.beta,
            # RPO: the DPO loss plus nll_weight x the chosen answers' mean token NLL
            **({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, d.nll_weight]} if d.nll_weight else {}),
            max_steps=d.max_steps if max_steps is None else max_steps,
            per_device_train_batch_size=d.per_device_batch_size,
            gradient_accumulation_steps=d.gradient_accumulation_steps,
            max_length=d.max_length,
            warmup_steps=d.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of total steps
            gradient_checkpointing=d.gradient_checkpointing,
            bf16=precision == "bfloat16",  # autocast over fp32 weights (module docstring)
            use_cpu=not cuda,
            save_steps=d.save_steps,
            save_total_limit=1,
            logging_steps=1,
            seed=d.seed,
            precompute_ref_log_probs=True,  # the frozen reference runs once over the pairs, not every step
            report_to="wandb" if wandb else "none",
            run_name=run_name,
            deepspeed=deepspeed_config(d),
        )
        model = load_model(model_dir, dtype=torch.float32)
        bf16_attention(model, precision)
        if initial_delta is not None:
            # Before the trainer exists: trl computes the reference log-probs from this model at construction.
            add_delta_gathered(model, initial_delta)
        tok = load_tokenizer(model_dir)
        trainer = DPOTrainer(
            model=model, ref_model=None, args=args, train_dataset=pairs, processing_class=tok, peft_config=peft_config,
            callbacks=list(callbacks),
        )
        last = last_complete_checkpoint(ckpt_dir)
        trainer.train(resume_from_checkpoint=str(last) if last else None)
        if wandb:
            close_wandb()  # the callback's run ends with the training, not at process exit

    logs = [r for r in trainer.state.log_history if "loss" in r]
    metrics = {
        "pairs": len(pairs),
        "steps": trainer.state.global_step,
        "processes": trainer.args.world_size,
        "deepspeed": d.deepspeed,
        "precision": precision,
        "first_loss": logs[0]["loss"] if logs else None,
        "last_loss": logs[-1]["loss"] if logs else None,
        "last_reward_accuracy": logs[-1].get("rewards/accuracies") if logs else None,
    }
    return trainer, metrics


def write_delta(ctx: Context, trainer, path: Path, domain: Optional[str], scratch: Path) -> Optional[dict]:
    """Saves theta - theta_0 of the trained model to `path` on rank 0 (collective: every rank calls it).

    Returns:
        delta_stats of the delta on rank 0, None on the other ranks.
    """
    trained = trained_state_dict(trainer, scratch)
    if trained is None:
        return None
    base = load_state_dict(ctx.model_dir)
    delta = {k: (trained[k].detach().float().cpu() - v).contiguous() for k, v in base.items()}
    save_delta(path, delta, backbone_fingerprint=ctx.base_fingerprint, domain=domain)
    return delta_stats(delta, base)


def bf16_attention(model, precision: str) -> None:
    """Eager attention for bf16 training on a CPU. torch 2.13's SDPA kernel for CPU gains nothing from
    bf16 (its backward is slower than in fp32), while eager attention's matmuls run on the bf16 units:
    0.9x the bf16 step on SmolLM2-135M, 384-token pairs (bench/README.md). fp32 keeps SDPA (eager is
    slower there), and GPUs keep their fused kernels."""
    if precision == "bfloat16" and not torch.cuda.is_available():
        model.set_attn_implementation("eager")


def deepspeed_config(d: DPOSettings) -> Optional[str]:
    """The DeepSpeed JSON for `dpo.deepspeed`: a name in conf/deepspeed/ or a path; None without.

    Raises:
        ConfigError: neither a known name nor an existing file, or deepspeed is not installed.
    """
    if d.deepspeed is None:
        return None
    named = resource_path("conf", "deepspeed", f"{d.deepspeed}.json")
    path = named if named.is_file() else Path(d.deepspeed)
    if not path.is_file():
        known = sorted(p.stem for p in resource_path("conf", "deepspeed").glob("*.json"))
        raise ConfigError(f"dpo.deepspeed={d.deepspeed} is neither one of {known} (conf/deepspeed/) nor a JSON file")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("dpo.deepspeed needs the deepspeed package: pip install 'skillweave[cluster]'")
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


def checkpoint_is_complete(path: Path) -> bool:
    """A trainer checkpoint that was written to the end: its trainer_state.json, which the Trainer writes
    last, parses and names the checkpoint's own step, no write was left half done (a hidden temporary
    file), and every safetensors file is as long as its header says."""
    import json
    import struct

    try:
        state = json.loads((path / "trainer_state.json").read_text())
        if state.get("global_step") != int(path.name.rsplit("-", 1)[1]):
            return False
        if any(p.name.startswith(".") for p in path.rglob("*")):
            return False
        for weights in path.rglob("*.safetensors"):
            with open(weights, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            if weights.stat().st_size != 8 + n + end:
                return False
    except (OSError, ValueError, KeyError, IndexError, struct.error):
        return False
    return True


def checkpoint_progress(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> str:
    """A training stage's `progress` for dry_run: the step of the latest complete checkpoint in the partial
    artifact's checkpoints/, which a rerun resumes from. Reads only: the checkpoint a running job is
    writing is not complete yet, and nothing is deleted (last_complete_checkpoint deletes, when resuming)."""
    steps = [int(p.name.rsplit("-", 1)[1]) for p in (ref.path / "checkpoints").glob("checkpoint-*")
             if p.name.rsplit("-", 1)[1].isdigit() and checkpoint_is_complete(p)]
    return f"checkpointed at step {max(steps)}" if steps else ""


def last_complete_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The latest complete checkpoint in `ckpt_dir` (None without one); incomplete ones (a run killed while
    saving, a full disk) are deleted, so a rerun resumes from the one before instead of failing forever."""
    import logging
    import shutil

    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for path in reversed(found):
        if checkpoint_is_complete(path):
            return path
        logging.getLogger("skillweave").warning("%s was not written to the end: deleted, resuming from the one before", path)
        shutil.rmtree(path, ignore_errors=True)
    return None


def load_for_training(model_dir: Path, qlora: bool, precision: str):
    """The model an adapter is trained on, and how: 4-bit (QLoRA) where asked and bitsandbytes runs on a
    GPU, else the fp32 weights (CPU: plain LoRA).

    Returns:
        (model, "4-bit QLoRA" | "none (plain LoRA)", the dtype it trains in: bfloat16 for QLoRA, whose
        layers compute in bf16 (bnb_4bit_compute_dtype) whatever dpo.precision says, else `precision`).
    """
    if qlora and torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None:
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=quant)
        return prepare_model_for_kbit_training(model), "4-bit QLoRA", "bfloat16"
    return load_model(model_dir, dtype=torch.float32), "none (plain LoRA)", precision


def train_sft(
    cfg: SkillweaveConfig,
    model,
    model_dir: Path,
    rows: list[dict],
    ckpt_dir: Path,
    run_name: str,
    *,
    learning_rate: float,
    max_steps: int,
    per_device_batch_size: int,
    max_length: int,
    peft_config,
    precision: str,
):
    """Supervised fine-tuning of an adapter on `rows` ({"prompt", "completion"}; the loss covers the
    completion only), checkpointed every `dpo.save_steps` and resumed from the last complete checkpoint.
    `precision` (float32 | bfloat16, as `training_precision` resolves it) is set explicitly: trl's SFTConfig
    would otherwise default to bf16 autocast, on CPUs without bf16 units too.

    Returns:
        (the trainer after training, metrics: examples, steps, precision, first and last loss).
    Raises:
        DataError: no rows.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise DataError("SFT has no examples to train on")
    data = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}], "completion": [{"role": "assistant", "content": r["completion"]}]}
        for r in rows
    ])
    cuda = torch.cuda.is_available()
    bf16_attention(model, precision)
    args = SFTConfig(
        output_dir=str(ckpt_dir), learning_rate=learning_rate, max_steps=max_steps,
        per_device_train_batch_size=per_device_batch_size, max_length=max_length, use_cpu=not cuda,
        bf16=precision == "bfloat16",
        save_steps=cfg.dpo.save_steps, save_total_limit=1, logging_steps=1, seed=cfg.dpo.seed, report_to="none",
        run_name=run_name, gradient_checkpointing=False,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=load_tokenizer(model_dir),
                         peft_config=peft_config)
    last = last_complete_checkpoint(ckpt_dir)
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    logs = [r for r in trainer.state.log_history if "loss" in r]
    return trainer, {
        "examples": len(rows),
        "steps": trainer.state.global_step,
        "precision": precision,
        "first_loss": logs[0]["loss"] if logs else None,
        "last_loss": logs[-1]["loss"] if logs else None,
    }
