"""Stage 3a: the learned router, which picks a domain's skillpack from a prompt (skillweave/router.py).

Reads the merged backbone (the merge artifact) and each domain's training prompts (the distinct
prompts of its generate artifact, never its eval set); the features are the backbone's mean-pooled
last hidden states of each chat-templated prompt, the head a softmax regression over `domains` in
order. Writes router.safetensors, stamped with the merged backbone's fingerprint; its accuracy on the
eval prompts (held out by construction) is reported by the routed eval configurations.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Optional

import torch

from ..core.artifacts import ArtifactRef
from ..core.engine import Context, Need, Stage, per_domain_needs, register_stage
from ..models import load_model, load_tokenizer, model_fingerprint
from ..sampling import training_prompts


def plan(ctx: Context, domain: Optional[str]):
    inputs = {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "generate")
    return {"router": asdict(ctx.cfg.router), "domains": list(ctx.cfg.domains)}, inputs


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from ..router import accuracy, confusion_matrix, prompt_features, save_router, train_router

    cfg, domains = ctx.cfg.router, list(ctx.cfg.domains)
    backbone = inputs["merge"].file("backbone")
    model, tok = load_model(backbone), load_tokenizer(backbone)
    prompts = {d: training_prompts(inputs[f"generate_{d}"].file("samples"), cfg.max_prompts_per_domain) for d in domains}
    features = torch.cat(
        [prompt_features(model, tok, prompts[d], batch_size=cfg.batch_size, max_length=cfg.max_length) for d in domains]
    )
    labels = torch.tensor([k for k, d in enumerate(domains) for _ in prompts[d]], dtype=torch.long)
    router = train_router(
        features,
        labels,
        domains,
        model_fingerprint(backbone),
        steps=cfg.steps,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
    )
    router.meta["config"] = asdict(cfg)
    save_router(router, ref.file("router"))
    return {
        "domains": domains,
        "prompts": {d: len(p) for d, p in prompts.items()},
        "train_accuracy": round(accuracy(router, features, labels), 4),
        "train_confusion": confusion_matrix(labels, router.predict(features), len(domains)),
        "final_loss": router.meta["final_loss"],
        "backbone_fingerprint": router.backbone_fingerprint,
    }


register_stage(Stage("route", per_domain=False, plan=plan, run=run, outputs={"router": "router.safetensors"}))
