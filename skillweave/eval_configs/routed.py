"""Eval configurations served by the learned router (stage `route`) instead of oracle domain labels.

  skillweave_routed  the merged backbone + the skillpacks; each eval doc of every domain goes to the
                     skillpack the router picks (top-1) from its prompt. Docs are grouped per chosen
                     skillpack, each group is evaluated by lm-eval with that skillpack attached (the
                     paper's serving: requests of several domains in a batch grouped per skillpack),
                     and the per-doc scores are put back together per true domain: score = mean,
                     stderr = sample std / sqrt(n), lm-eval's stderr of a mean.
                     Bytes: backbone + all K skillpacks + router. Details: router accuracy and confusion
                     matrix (rows = true domain, columns = routed) on the eval prompts, and each doc's
                     routed skillpack and score.
  twin_merging       Twin-Merging (Lu et al. 2024; skillweave/router.py says what is faithful): the
                     merged backbone as shared knowledge, each domain's exclusive knowledge
                     Delta_k - Delta_shared as rank-`zip.rank` fp16 SVD factors (the `twin` compressor),
                     mixed per input by the router's softmax weights (set at each prefill, kept for the
                     decode steps).
                     Bytes: backbone + K fp16 factor sets + router. Details: the routing weights used,
                     averaged per true domain, and how often their top-1 is the true domain.
The router reads the eval prompts as lm-eval's doc_to_text, wrapped in the chat template, on the same
seeded subset (`eval.limit`, or the domain's `domain.eval_limit`) every other configuration is scored on.
"""

from __future__ import annotations

import math
import statistics

import torch

from ..core.compressors import COMPRESSORS, CompressContext
from ..core.configurations import (
    Configuration,
    Scorer,
    eval_limits,
    eval_tasks,
    register_configuration,
    served_adapters,
)
from ..core.engine import Context, Need, per_domain_needs
from ..core.errors import ConfigError
from ..deltas import load_delta, param_bytes
from ..eval_tasks import task_digest
from ..evaluation import eval_prompts, evaluate
from ..models import load_model, load_tokenizer, model_fingerprint
from ..router import Router, TwinMerging, confusion_matrix, load_router, prompt_features, router_nbytes, stack_exclusive
from ..zip import block_linear_names, load_skillpack, skillpack_attached, skillpack_nbytes


def _router_for(ctx: Context, refs: dict, fingerprint: str) -> Router:
    """The route artifact's router; it must read this backbone and know the run's domains, in order."""
    router = load_router(refs["route"].file("router"), expected_fingerprint=fingerprint)
    if list(router.domains) != list(ctx.cfg.domains):
        raise ConfigError(f"the router routes to {router.domains}, the run's domains are {list(ctx.cfg.domains)}")
    return router


def _tasks(ctx: Context) -> dict[str, str]:
    tasks = eval_tasks(ctx)
    if len(set(tasks.values())) != len(tasks):
        raise ConfigError(f"routed evaluation needs one eval task per domain, got {tasks}")
    return tasks


def mean_with_stderr(scores: list[float]) -> tuple[float, float]:
    """(mean, sample std / sqrt(n)) as lm-eval reports a mean metric; stderr is nan for one score.

    >>> mean_with_stderr([1.0, 0.0])
    (0.5, 0.5)
    """
    n = len(scores)
    if n == 0:
        raise ValueError("no scores to average")
    return sum(scores) / n, statistics.stdev(scores) / math.sqrt(n) if n > 1 else math.nan


def _skillweave_routed(ctx: Context, refs: dict, score: Scorer) -> dict:

    ev, domains, tasks = ctx.cfg.eval, list(ctx.cfg.domains), _tasks(ctx)
    path = refs["merge"].file("backbone")
    model, tok = load_model(path), load_tokenizer(path)
    fp = model_fingerprint(path)
    router = _router_for(ctx, refs, fp)
    skillpacks = {d: load_skillpack(refs[f"zip_{d}"].file("skillpack"), expected_fingerprint=fp) for d in domains}

    # Route every eval doc from its prompt on the bare backbone (the features the router learned).
    limits = eval_limits(ctx)
    docs = {d: eval_prompts(tasks[d], limit=limits[d]) for d in domains}
    rc = ctx.cfg.router
    routed: dict[str, list[int]] = {}
    for d in domains:
        features = prompt_features(model, tok, [text for _, text in docs[d]], batch_size=rc.batch_size, max_length=rc.max_length)
        routed[d] = router.predict(features).tolist()

    per_doc: dict[str, dict[int, dict]] = {d: {} for d in domains}
    served_by: dict[str, set[str]] = {}
    metric: dict[str, str] = {}
    task_domain = {t: d for d, t in tasks.items()}
    for k, target in enumerate(domains):
        group = {tasks[d]: [i for (i, _), r in zip(docs[d], routed[d]) if r == k] for d in domains}
        group = {t: ids for t, ids in group.items() if ids}
        if not group:
            continue

        def compute(target: str = target, group: dict = group) -> dict:
            with skillpack_attached(model, skillpacks[target], expected_fingerprint=fp, int_mm=ev.integer_path):
                engine = score.engine_for(model)
                res = evaluate(
                    None if engine else model, tok, list(group), limit=None, max_gen_toks=ev.max_gen_toks,
                    batch_size=ev.batch_size, doc_ids=group, compiled_decode=ctx.cfg.model.compiled_decode,
                    engine=engine,
                )
            return {"served_by": engine.label if engine else "hf",
                    "tasks": {t: {"metric": r["metric"], "samples": r["samples"]} for t, r in res.items()}}

        # Each group is a resumable cell of the row: a killed routed eval resumes after its last finished group.
        unit = {"skillpack": target, "docs": group, "task_files": task_digest(list(group))}
        out = score.cached(f"to-{target}", unit, compute)
        for task, r in out["tasks"].items():
            served_by.setdefault(task_domain[task], set()).add(out["served_by"])
            metric[task_domain[task]] = r["metric"]
            per_doc[task_domain[task]].update({row["doc_id"]: {**row, "routed_to": target} for row in r["samples"]})

    scores = {}
    for d in domains:
        values = [per_doc[d][i]["score"] for i, _ in docs[d]]  # every doc was scored once, by its routed skillpack
        mean, stderr = mean_with_stderr(values)
        scores[d] = {"score": mean, "stderr": stderr, "n": len(values), "metric": metric[d]}
    labels = [k for k, d in enumerate(domains) for _ in docs[d]]
    predicted = [r for d in domains for r in routed[d]]
    details = {
        "router_accuracy": sum(t == p for t, p in zip(labels, predicted)) / len(labels),
        "confusion": {"domains": domains, "matrix": confusion_matrix(labels, predicted, len(domains))},
    }
    if ctx.cfg.eval.backend == "vllm":  # what decoded each domain's docs (its groups')
        details["served_by"] = {d: ", ".join(sorted(names)) for d, names in sorted(served_by.items())}
    nbytes = param_bytes(model) + sum(skillpack_nbytes(sp) for sp in skillpacks.values()) + router_nbytes(router)
    # Every answer is kept, as for the other configurations, with the skillpack it was routed to.
    samples = {d: [per_doc[d][i] for i, _ in docs[d]] for d in domains}
    return {"bytes": nbytes, "scores": scores, "details": details, "samples": samples}


def _twin_merging(ctx: Context, refs: dict, score: Scorer) -> dict:

    domains = list(ctx.cfg.domains)
    path = refs["merge"].file("backbone")
    model, tok = load_model(path), load_tokenizer(path)
    router = _router_for(ctx, refs, model_fingerprint(path))
    shared = load_delta(refs["merge"].file("shared_delta"), backbone_fingerprint=ctx.base_fingerprint)
    names = sorted(block_linear_names(model))

    def residuals():  # one domain's residual in memory at a time
        for d in domains:
            delta = load_delta(refs[f"dpo_{d}"].file("delta"), backbone_fingerprint=ctx.base_fingerprint)
            yield {f"{n}.weight": delta[f"{n}.weight"] - shared[f"{n}.weight"] for n in names}

    compressor, cctx = COMPRESSORS.get("twin", "compressor"), CompressContext(frozenset(names), zip=ctx.cfg.zip)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small SVDs: threads only add OpenMP overhead (as in the zip stage)
    try:
        exclusive = [compressor.compress(residual, cctx) for residual in residuals()]
    finally:
        torch.set_num_threads(threads)
    twin = TwinMerging(domains, stack_exclusive([c.factors() for c in exclusive]), router)  # LowRank: factors()
    twin.attach(model)

    def routing(k: int) -> dict:  # the router's weights on one domain's prompts, kept in its cell
        w = torch.cat(twin.history) if twin.history else torch.zeros(0, len(domains))
        return {"mean_weights": [round(x, 4) for x in w.mean(0).tolist()] if len(w) else None,
                "top1_accuracy": float((w.argmax(-1) == k).float().mean()) if len(w) else None}

    scores, routed = {}, {}
    try:
        for k, d in enumerate(domains):
            twin.history.clear()
            scores[d] = score(model, tok, d, details=lambda k=k: routing(k))
            # A cell scored before its weights were kept has none (null, as where the router never ran).
            routed[d] = scores[d].pop("details", None) or {"mean_weights": None, "top1_accuracy": None}
    finally:
        twin.detach()
    details = {
        "domains": domains,
        "mean_weights": {d: r["mean_weights"] for d, r in routed.items()},
        "top1_accuracy": {d: r["top1_accuracy"] for d, r in routed.items()},
    }
    nbytes = param_bytes(model) + sum(c.nbytes() for c in exclusive) + router_nbytes(router)
    return {"bytes": nbytes, "scores": scores, "details": details}


def _route(ctx: Context) -> dict[str, Need]:
    return {"route": Need(ctx, "route")}


register_configuration("skillweave_routed", Configuration(
        needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "zip") | _route(ctx),
        run=_skillweave_routed,
        settings=lambda ctx: {"router_max_length": ctx.cfg.router.max_length} | served_adapters(ctx),
    )
)
register_configuration("twin_merging", Configuration(
        needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain_needs(ctx, "dpo") | _route(ctx),
        run=_twin_merging,
        settings=lambda ctx: {"rank": ctx.cfg.zip.rank, "router_max_length": ctx.cfg.router.max_length},
    )
)
