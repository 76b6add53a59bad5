"""Export a skillpack (or an uncompressed residual) as a standard PEFT LoRA adapter directory.

PEFT's LoRA adds (lora_alpha / r) * lora_B @ lora_A to a linear's weight, so a skillpack maps onto it
with lora_B = A (out x r), lora_A = B diag(s)^-1 (r x in) and lora_alpha = r. Servers that load PEFT
adapters (vLLM, LoRAX, peft itself) expect one rank per adapter, so every layer is zero-padded to the
largest layer rank: zero rows and columns add nothing to the product. The exported factors are the
skillpack's dequantized integers, so the adapter computes the skillpack's fp path exactly.

The embedding's factors (E_res ~ A B) become PEFT's embedding LoRA, lora_embedding_A = A^T and
lora_embedding_B = B^T, and with tied weights also a linear LoRA on lm_head (PEFT adapts the two
modules separately, so the tie has to be spelled out: exact in the forward pass, but merging both
into a model that still ties the weights would add the residual twice). An untied lm_head has its own
factors, a linear LoRA like the blocks'. Servers that take LoRA only on the blocks' linears can be
given an adapter without the embedding and lm_head, tied or not (`export_skillpack(..., embedding=False)`).

What LoRA cannot hold: the dense 1-D residuals (norm weights). They are listed in the return value
and in the adapter's README so nobody mistakes the adapter for the whole skillpack.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from skillweave.zip.format import EMBEDDING, HEAD, Skillpack
from skillweave.zip.svd import low_rank_factors

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def skillpack_lora_factors(sp: Skillpack) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Linear module name -> (lora_B = A, lora_A = B diag(s)^-1), float32, from the skillpack's
    integers; the embedding's factors stand for a tied lm_head's too."""
    factors = {name: (f.a(), f.b()) for name, f in sp.factors.items() if name != EMBEDDING}
    if EMBEDDING in sp.factors and sp.tied_embeddings:
        factors[HEAD] = (sp.factors[EMBEDDING].a(), sp.factors[EMBEDDING].b())
    return factors


def lora_rank(sp: Skillpack) -> int:
    """The rank of `export_skillpack`'s adapter: its largest layer's (the others are zero-padded to it)."""
    return max(f.rank for f in sp.factors.values())


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


def _pad_rank(t: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """`t` zero-padded to size r along its rank dim (0 or 1): zeros add nothing to the product."""
    pad = r - t.shape[dim]
    return torch.nn.functional.pad(t, (0, pad) if dim == 1 else (0, 0, 0, pad))


def export_peft_lora(
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    out_dir: str | os.PathLike,
    base_model_name_or_path: str,
    *,
    embeddings: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    not_exported: list[str] = (),
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write `factors` as a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).

    Args:
        factors: module name (as in the base model's named_modules) -> (lora_B out x r, lora_A r x in).
        out_dir: created if missing.
        base_model_name_or_path: recorded in adapter_config.json, where servers look for the base.
        embeddings: nn.Embedding module name -> (A vocab x r, B r x dim), the residual being A B.
        not_exported: parameter names the adapter leaves out (e.g. a skillpack's dense residuals);
            written to the adapter's README.md.
        dtype: of the stored factors (float16 halves the size; float32 reproduces the fp path).

    Returns:
        out_dir as a Path; `peft.PeftModel.from_pretrained(base, out_dir)` loads it.

    Raises:
        ValueError: no factors at all, or a pair whose ranks disagree.
    """
    from peft import LoraConfig

    embeddings = embeddings or {}
    if not factors and not embeddings:
        raise ValueError("nothing to export: the skillpack has no factored layers")
    for name, (out_factor, in_factor) in {**factors, **embeddings}.items():
        if out_factor.shape[1] != in_factor.shape[0]:
            raise ValueError(f"{name}: the factors are {tuple(out_factor.shape)} and {tuple(in_factor.shape)}")
    r = max(in_factor.shape[0] for _, in_factor in {**factors, **embeddings}.values())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (lora_b, lora_a) in factors.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = _pad_rank(lora_a, r, dim=0)
        tensors[f"base_model.model.{name}.lora_B.weight"] = _pad_rank(lora_b, r, dim=1)
    for name, (a, b) in embeddings.items():
        tensors[f"base_model.model.{name}.lora_embedding_A"] = _pad_rank(a, r, dim=1).T
        tensors[f"base_model.model.{name}.lora_embedding_B"] = _pad_rank(b, r, dim=0).T
    tensors = {k: t.to(dtype).contiguous() for k, t in tensors.items()}
    # Exact module names: a suffix such as "q_proj" would also put a LoRA on layers the skillpack skips.
    config = LoraConfig(
        r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted({**factors, **embeddings}), bias="none",
        task_type="CAUSAL_LM", base_model_name_or_path=base_model_name_or_path,
    )
    config.save_pretrained(str(out_dir))
    save_file(tensors, str(out_dir / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    lines = [
        f"LoRA export of a skillweave skillpack: rank {r}, {len(factors) + len(embeddings)} layers, "
        f"base {base_model_name_or_path}."
    ]
    if not_exported:
        lines.append("Not in this adapter: " + ", ".join(sorted(not_exported)))
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return out_dir


def export_skillpack(
    sp: Skillpack, out_dir: str | os.PathLike, base_model_name_or_path: str, *, embedding: bool = True, **kwargs
) -> list[str]:
    """`export_peft_lora` of a skillpack's factors; returns the parameter names left out, sorted: the
    dense residuals and, with embedding=False (a blocks-only adapter, for servers that take LoRA only
    on the blocks' linears), the embedding's and lm_head's, tied or untied."""
    factors = skillpack_lora_factors(sp)
    embeddings = {EMBEDDING: (sp.factors[EMBEDDING].a(), sp.factors[EMBEDDING].b())} if EMBEDDING in sp.factors else {}
    left_out = list(sp.dense)
    if not embedding:
        if embeddings:
            left_out.append(f"{EMBEDDING}.weight")
            embeddings = {}
        if factors.pop(HEAD, None) is not None:  # the tied head's (the embedding's factors) or its own
            left_out.append(f"{HEAD}.weight")
    left_out.sort()
    out = export_peft_lora(factors, out_dir, base_model_name_or_path, embeddings=embeddings, not_exported=left_out, **kwargs)
    if embeddings and sp.tied_embeddings:
        with open(out / "README.md", "a") as f:
            f.write(
                f"Tied embeddings: {EMBEDDING} and {HEAD} carry one residual as two LoRAs, exact in the forward pass; "
                "merging them into a model that still ties the two weights would add it twice (untie first: "
                "peft issue 2777).\n"
            )
    return left_out
