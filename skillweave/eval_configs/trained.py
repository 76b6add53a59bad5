"""Eval configurations of the trained baselines: the same preference pairs, trained another way.

  multitask  theta_0 + Delta_mt of stage dpo_multitask (one full-DPO monolith on every domain's pairs)
             on every domain; bytes = one model
  lora       the backbone + the K per-domain LoRA adapters of stage lora, all loaded; oracle routing:
             each domain's documents go through its own adapter (the others inactive); bytes = the
             backbone's + every adapter's tensors, as held (details: each adapter's bytes)
"""

from __future__ import annotations

from ..core.configurations import Configuration, Scorer, register_configuration, served_adapters
from ..core.engine import Context, Need, per_domain_needs
from ..deltas import add_delta, load_delta, param_bytes
from ..lora_io import load_lora
from ..models import load_model, load_tokenizer


def _multitask(ctx: Context, refs: dict, score: Scorer) -> dict:
    delta = load_delta(refs["dpo_multitask"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
    model, tok = add_delta(load_model(ctx.model_dir), delta), load_tokenizer(ctx.model_dir)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def _lora(ctx: Context, refs: dict, score: Scorer) -> dict:
    from peft import get_peft_model_state_dict

    model, tok = load_model(ctx.model_dir), load_tokenizer(ctx.model_dir)
    for d in ctx.cfg.domains:
        model = load_lora(model, refs[f"lora_{d}"].file("adapter"), ctx.base_fingerprint, adapter_name=d)
    adapter_bytes = {
        d: sum(t.numel() * t.element_size() for t in get_peft_model_state_dict(model, adapter_name=d).values())
        for d in ctx.cfg.domains
    }
    scores = {}
    for d in ctx.cfg.domains:
        model.set_adapter(d)
        scores[d] = score(model, tok, d)
    # param_bytes of the PeftModel: the backbone and all K adapters, as held.
    return {"bytes": param_bytes(model), "scores": scores, "details": {"adapter_bytes": adapter_bytes}}


register_configuration("multitask", Configuration(needs=lambda ctx: {"dpo_multitask": Need(ctx, "dpo_multitask")}, run=_multitask)
)
register_configuration("lora", Configuration(needs=lambda ctx: per_domain_needs(ctx, "lora"), run=_lora,
                                             settings=served_adapters))
