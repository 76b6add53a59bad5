"""Eval configurations of the trained baselines: the same preference pairs, trained another way.

  multitask  theta_0 + Delta_mt of stage dpo_multitask (one full-DPO monolith on every domain's pairs)
             on every domain; bytes = one model
  lora       the backbone + the K per-domain LoRA adapters of stage lora, all loaded; oracle routing:
             each domain's documents go through its own adapter (the others inactive); bytes = the
             backbone's + every adapter's tensors, as held (details: each adapter's bytes)
"""

from __future__ import annotations

from ..models import load_model, load_tokenizer
from ..pipeline import Context, Need
from .dpo import DELTA, load_delta
from .eval import CONFIGURATIONS, Configuration, Scorer, add_delta, param_bytes, per_domain
from .lora import ADAPTER, load_lora


def _multitask(ctx: Context, refs: dict, score: Scorer) -> dict:
    delta = load_delta(refs["dpo_multitask"].path / DELTA, backbone_fingerprint=ctx.base_fingerprint)
    model, tok = add_delta(load_model(ctx.model_dir), delta), load_tokenizer(ctx.model_dir)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def _lora(ctx: Context, refs: dict, score: Scorer) -> dict:
    from peft import get_peft_model_state_dict

    model, tok = load_model(ctx.model_dir), load_tokenizer(ctx.model_dir)
    for d in ctx.cfg.domains:
        model = load_lora(model, refs[f"lora_{d}"].path / ADAPTER, ctx.base_fingerprint, adapter_name=d)
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


CONFIGURATIONS.register("multitask")(
    Configuration(needs=lambda ctx: {"dpo_multitask": Need(ctx, "dpo_multitask")}, run=_multitask)
)
CONFIGURATIONS.register("lora")(Configuration(needs=lambda ctx: per_domain(ctx, "lora"), run=_lora))
