"""Stage 3a: the learned router, which picks a domain's skillpack from a prompt (skillweave/router.py).

Reads the merged backbone (the merge artifact) and each domain's training prompts (the distinct
prompts of its generate artifact, never its eval set); the features are the backbone's mean-pooled
last hidden states of each chat-templated prompt, the head a softmax regression over `domains` in
order. Writes router.safetensors, stamped with the merged backbone's fingerprint; its accuracy on the
eval prompts (held out by construction) is reported by the routed eval configurations.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from ..artifacts import ArtifactRef
from ..models import load_model, load_tokenizer, model_fingerprint
from ..pipeline import STAGES, Context, Stage, ref_for
from .generate import SAMPLES
from .merge import BACKBONE

ROUTER = "router.safetensors"


def plan(ctx: Context, domain: Optional[str]):
    inputs = {"merge": ref_for(ctx, "merge")} | {f"generate_{d}": ref_for(ctx, "generate", d) for d in ctx.cfg.domains}
    return {"router": asdict(ctx.cfg.router), "domains": list(ctx.cfg.domains)}, inputs


def training_prompts(samples_path: Path, limit: Optional[int] = None) -> list[str]:
    """The distinct prompts of a generate artifact, in order (the first `limit` of them when given)."""
    prompts, seen = [], set()
    with open(samples_path) as f:
        for line in f:
            row = json.loads(line)
            if row["prompt_id"] not in seen:
                seen.add(row["prompt_id"])
                prompts.append(row["prompt"])
                if limit is not None and len(prompts) == limit:
                    break
    return prompts


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from ..router import accuracy, confusion_matrix, prompt_features, save_router, train_router

    cfg, domains = ctx.cfg.router, list(ctx.cfg.domains)
    backbone = inputs["merge"].path / BACKBONE
    model, tok = load_model(backbone), load_tokenizer(backbone)
    prompts = {d: training_prompts(inputs[f"generate_{d}"].path / SAMPLES, cfg.max_prompts_per_domain) for d in domains}
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
    save_router(router, ref.path / ROUTER)
    return {
        "domains": domains,
        "prompts": {d: len(p) for d, p in prompts.items()},
        "train_accuracy": round(accuracy(router, features, labels), 4),
        "train_confusion": confusion_matrix(labels, router.predict(features), len(domains)),
        "final_loss": router.meta["final_loss"],
        "backbone_fingerprint": router.backbone_fingerprint,
    }


STAGES.register("route")(Stage("route", per_domain=False, plan=plan, run=run))
