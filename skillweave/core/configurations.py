"""The eval configurations' plug point: what one row of the comparison reads, and how it scores.

A configuration is a plugin (skillweave/eval_configs/): it declares the artifacts it reads as
`Need`s and gets their artifacts and a `Scorer` that runs the domain's lm-eval task on a model. The
eval stage runs the chosen ones, each row its own artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .artifacts import ArtifactRef
from .engine import Context, Need
from .registry import Registry


@dataclass(frozen=True)
class Scorer:
    """How a configuration scores a model. Called as `score(model, tokenizer, domain)`: that domain's eval
    task -> {"score", "stderr", "n", "metric"} (one resumable cell of the row). With `details=f`, f() is
    called once the cell is scored (what the model recorded while it answered: Twin-Merging's router
    weights) and its JSON result is kept in the cell and returned as the result's "details", also where
    the cell is reused: a row put together from cells of several runs loses nothing. A configuration that scores
    otherwise (the routed row's per-skillpack groups) calls `evaluation.evaluate` itself, with
    `engine_for(model)` as its engine (what serves `model` under `eval.backend`; None: HF decodes it), inside
    `cached(unit, config, compute)`: `compute()`'s JSON result kept as a resumable cell of the row, keyed by
    the unit's name and `config` (what it scores: documents, tasks), so a killed row resumes after its
    last finished unit."""

    score: Callable[[object, object, str, Callable[[], dict] | None], dict]
    engine_for: Callable[[object], object] = lambda model: None
    cached: Callable[[str, dict, Callable[[], dict]], dict] = lambda unit, config, compute: compute()

    def __call__(self, model, tokenizer, domain: str, details: Callable[[], dict] | None = None) -> dict:
        return self.score(model, tokenizer, domain, details)


@dataclass(frozen=True)
class Configuration:
    needs: Callable[[Context], dict[str, Need]]
    """The artifacts this configuration reads, by name; stage=all produces them first."""
    run: Callable[[Context, dict[str, ArtifactRef], Scorer], dict]
    """-> {"bytes": int, "scores": {domain: {"score", "stderr", "n", "metric"}}, optional "details": {...}}
    (details, e.g. a router's accuracy and confusion matrix, are kept in results.json under the row) and
    optional "samples": {domain: per-doc rows}, for a configuration that scores without the Scorer."""
    settings: Callable[[Context], dict] = lambda ctx: {}
    """What else its result depends on (settings or files read besides its inputs), hashed into its row's key."""


CONFIGURATIONS: Registry[Configuration] = Registry("eval configuration")


def register_configuration(name: str, configuration: Configuration) -> Configuration:
    return CONFIGURATIONS.register(name)(configuration)


def eval_needs(ctx: Context) -> dict[str, Need]:
    """Everything the configurations in `eval.configurations` read (shared inputs once)."""
    needs: dict[str, Need] = {}
    for name in ctx.cfg.eval.configurations:
        needs |= CONFIGURATIONS.get(name, "eval.configurations").needs(ctx)
    return needs


def eval_tasks(ctx: Context) -> dict[str, str]:
    """{domain: its lm-eval task} for every domain of the run."""
    return {d: ctx.for_domain(d).domain.eval_task for d in ctx.cfg.domains}


def eval_limits(ctx: Context) -> dict[str, int | None]:
    """{domain: documents scored on its task}: its `domain.eval_limit`, else `eval.limit` (None: all)."""
    return {d: ctx.for_domain(d).domain.eval_limit or ctx.cfg.eval.limit for d in ctx.cfg.domains}


def limits_key(ctx: Context) -> dict:
    """What an eval row's key adds for per-domain limits: nothing unless a domain sets one (keys made before
    `domain.eval_limit` existed stay)."""
    if all(ctx.for_domain(d).domain.eval_limit is None for d in ctx.cfg.domains):
        return {}
    return {"limits": eval_limits(ctx)}


def served_adapters(ctx: Context) -> dict:
    """What the key of a row that serves an adapter (a skillpack on its fp path, a PEFT LoRA) adds under
    `eval.backend=vllm`: how the engine serves it (`eval.vllm_adapters`: folded in or a LoRA request)."""
    ev = ctx.cfg.eval
    return {"vllm_adapters": str(ev.vllm_adapters)} if ev.backend == "vllm" else {}
