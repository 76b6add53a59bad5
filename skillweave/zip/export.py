"""Export a skillpack (or an uncompressed residual) as a standard PEFT LoRA adapter directory.

PEFT's LoRA adds (lora_alpha / r) * lora_B @ lora_A to a linear's weight, so a skillpack maps onto it
with lora_B = A (out x r), lora_A = B diag(s)^-1 (r x in) and lora_alpha = r. Servers that load PEFT
adapters (vLLM, LoRAX, peft itself) expect one rank per adapter, so every layer is zero-padded to the
largest layer rank: zero rows and columns add nothing to the product. The exported factors are the
skillpack's dequantized integers, so the adapter computes the skillpack's fp path exactly.

What LoRA cannot hold: the dense 1-D residuals (norm weights). They are listed in the return value
and in the adapter's README so nobody mistakes the adapter for the whole skillpack.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from skillweave.zip.skillpack import Skillpack
from skillweave.zip.svd import low_rank_factors

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def skillpack_lora_factors(sp: Skillpack) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (lora_B = A, lora_A = B diag(s)^-1), float32, from the skillpack's integers."""
    return {name: (f.a(), f.b()) for name, f in sp.factors.items()}


def residual_lora_factors(
    residual: dict[str, torch.Tensor], linear_names: set[str], rank: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (lora_B, lora_A) of the uncompressed residual's rank-`rank` truncated SVD (fp32,
    no smoothing or quantization): the reference a skillpack is judged against, servable as is."""
    factors = {}
    for name in sorted(linear_names):
        w = residual[f"{name}.weight"]
        if torch.count_nonzero(w):
            a, b, _ = low_rank_factors(w, rank)
            factors[name] = (a, b)
    return factors


def export_peft_lora(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    out_dir: str | os.PathLike,
    base_model_name_or_path: str,
    *,
    not_exported: list[str] = (),
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `factors` as a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).

    Args:
        factors: module name (as in the base model's named_modules) -> (lora_B out x r, lora_A r x in).
        out_dir: created if missing.
        base_model_name_or_path: recorded in adapter_config.json, where servers look for the base.
        not_exported: parameter names the adapter leaves out (e.g. a skillpack's dense residuals);
            written to the adapter's README.md.
        dtype: of the stored factors (float16 halves the size; float32 reproduces the fp path).

    Returns:
        out_dir as a Path; `peft.PeftModel.from_pretrained(base, out_dir)` loads it.

    Raises:
        ValueError: no factors, or a pair whose ranks disagree.
    """
    from peft import LoraConfig

    if not factors:
        raise ValueError("nothing to export: the skillpack has no factored layers")
    for name, (lora_b, lora_a) in factors.items():
        if lora_b.shape[1] != lora_a.shape[0]:
            raise ValueError(f"{name}: lora_B is {tuple(lora_b.shape)}, lora_A is {tuple(lora_a.shape)}")
    r = max(lora_a.shape[0] for _, lora_a in factors.values())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (lora_b, lora_a) in factors.items():
        pad = r - lora_a.shape[0]
        tensors[f"base_model.model.{name}.lora_A.weight"] = torch.nn.functional.pad(lora_a, (0, 0, 0, pad))
        tensors[f"base_model.model.{name}.lora_B.weight"] = torch.nn.functional.pad(lora_b, (0, pad))
    tensors = {k: t.to(dtype).contiguous() for k, t in tensors.items()}
    # Exact module names: a suffix such as "q_proj" would also put a LoRA on layers the skillpack skips.
    config = LoraConfig(
        r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(factors), bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
    )
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    lines = [f"LoRA export of a skillweave skillpack: rank {r}, {len(factors)} layers, base {base_model_name_or_path}."]
    if not_exported:
        lines.append("Not in this adapter (LoRA cannot hold them): " + ", ".join(sorted(not_exported)))
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return out_dir


def export_skillpack(sp: Skillpack, out_dir: str | os.PathLike, base_model_name_or_path: str, **kwargs) -> list[str]:
    """`export_peft_lora` of a skillpack's factors; returns the dense residual names left out."""
    left_out = sorted(sp.dense)
    export_peft_lora(skillpack_lora_factors(sp), out_dir, base_model_name_or_path, not_exported=left_out, **kwargs)
    return left_out
