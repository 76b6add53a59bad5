"""Plan and run stages over the artifact store.

A stage's artifact key is computed from config alone (its settings + its inputs' keys, down to the
backbone's fingerprint), so any stage can be run by itself: it finds its inputs among earlier
artifacts or stops naming the command that produces them.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Callable, Optional

from .artifacts import (
    CONFIG,
    ArtifactRef,
    MissingArtifactError,
    artifact_lock,
    atomic_write_json,
    make_ref,
    write_manifest,
)
from .cluster import is_main_process, main_process_decides
from .config import SkillweaveConfig
from .registry import Registry

log = logging.getLogger("skillweave")

PlanFn = Callable[["Context", Optional[str]], tuple[dict, dict[str, ArtifactRef]]]
RunFn = Callable[["Context", Optional[str], ArtifactRef, dict[str, ArtifactRef]], dict]


@dataclass(frozen=True)
class Stage:
    """One pipeline step: `plan` names its settings and inputs, `run` fills its artifact directory."""

    name: str
    per_domain: bool
    plan: PlanFn
    run: RunFn


STAGES: Registry[Stage] = Registry("stage")


@dataclass
class Context:
    """The run's config plus a way to compose the same run for another domain."""

    cfg: SkillweaveConfig
    overrides: tuple[str, ...] = ()
    """The user's overrides, without stage= and domain=: replayed for every domain."""
    composer: Optional[Callable[[list[str]], SkillweaveConfig]] = None
    _domains: dict[str, SkillweaveConfig] = field(default_factory=dict)
    _rounds: dict[int, "Context"] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return Path(self.cfg.artifacts_root)

    def for_domain(self, domain: str) -> SkillweaveConfig:
        if domain == self.cfg.domain.name:
            return self.cfg
        if domain not in self._domains:
            if self.composer is None:
                raise RuntimeError("this context cannot compose other domains' configs")
            self._domains[domain] = self.composer([*self.overrides, f"domain={domain}"])
        return self._domains[domain]

    @cached_property
    def model_dir(self) -> Path:
        from .models import resolve_model_dir

        return resolve_model_dir(self.cfg.model.path)

    @cached_property
    def base_fingerprint(self) -> str:
        from .models import model_fingerprint

        return model_fingerprint(self.model_dir)

    def variant(self, *overrides: str) -> "Context":
        """The same run with more overrides (e.g. `merge=dare_ties`): for inputs made under other settings."""
        if self.composer is None:
            raise RuntimeError("this context cannot compose variants")
        extra = (*self.overrides, *overrides)
        cfg = self.composer([*extra, f"domain={self.cfg.domain.name}"])
        return Context(cfg=cfg, overrides=extra, composer=self.composer)

    def command(self, stage: str, domain: Optional[str]) -> str:
        parts = ["python -m skillweave", f"stage={stage}"]
        if domain:
            parts.append(f"domain={domain}")
        return " ".join(parts + list(self.overrides))

    @property
    def dpo_round(self) -> int:
        """The online-DPO round the per-domain stages (ROUND_STAGES) plan: the last of `dpo.rounds`."""
        return self.cfg.dpo.rounds - 1

    def at_round(self, r: int) -> "Context":
        """The same run planned at online-DPO round `r`: the run with `dpo.rounds=r+1`, whose last round it is.

        A round's artifact keys do not depend on how many rounds follow it, so round r of any run is the
        last round of `dpo.rounds=r+1`, and that is the command named when one of its artifacts is missing.
        """
        if r == self.dpo_round:
            return self
        if r < 0:
            raise ValueError(f"online DPO rounds count from 0, got {r}")
        if r not in self._rounds:
            kept = (o for o in self.overrides if o.lstrip("+~").split("=", 1)[0] != "dpo.rounds")
            overrides = (*kept, f"dpo.rounds={r + 1}")
            cfg = replace(self.cfg, dpo=replace(self.cfg.dpo, rounds=r + 1))
            earlier = Context(cfg=cfg, overrides=overrides, composer=self.composer)
            for name in ("model_dir", "base_fingerprint"):  # the same backbone: reuse what is already computed
                if name in self.__dict__:
                    earlier.__dict__[name] = self.__dict__[name]
            self._rounds[r] = earlier
        return self._rounds[r]


def plan(ctx: Context, stage: str, domain: Optional[str] = None) -> tuple[ArtifactRef, dict[str, ArtifactRef]]:
    """The artifact a stage would write for `domain`, and the artifacts it reads."""
    st = STAGES.get(stage)
    domain = domain if st.per_domain else None
    config, inputs = st.plan(ctx, domain)
    return make_ref(ctx.root, stage, domain or "all", config, inputs, ctx.command(stage, domain)), inputs


def ref_for(ctx: Context, stage: str, domain: Optional[str] = None) -> ArtifactRef:
    return plan(ctx, stage, domain)[0]


@dataclass(frozen=True)
class Need:
    """An input named by how to make it: `stage` for `domain` under `ctx` (possibly a variant)."""

    ctx: Context
    stage: str
    domain: Optional[str] = None

    @property
    def ref(self) -> ArtifactRef:
        return ref_for(self.ctx, self.stage, self.domain)

    def produce(self) -> ArtifactRef:
        return execute(self.ctx, self.stage, self.domain)


def execute(ctx: Context, stage: str, domain: Optional[str] = None) -> ArtifactRef:
    """Run one stage unless its artifact is complete; a partial directory is resumed by the stage."""
    st = STAGES.get(stage)
    domain = domain if st.per_domain else None
    ref, inputs = plan(ctx, stage, domain)
    if main_process_decides(ref.complete):
        log.info("%s is complete: nothing to do (delete the directory to redo it)", ref)
        return ref
    for name, inp in inputs.items():
        if not inp.complete:
            dom = None if inp.label == "all" else inp.label
            raise MissingArtifactError(
                f"stage {stage} needs the {inp.stage} artifact for "
                f"{'domain ' + inp.label if dom else 'all domains'} ({inp.path}), which is missing: "
                f"run `{inp.command or ctx.command(inp.stage, dom)}` first (or stage=all)"
            )
    main = is_main_process()
    # Under a multi-process launch only rank 0 locks and writes; the other ranks follow its decisions
    # (skillweave/cluster.py says why waiting on the lock would deadlock them).
    with artifact_lock(ref) if main else nullcontext():
        if main_process_decides(ref.complete):  # another job produced it while we waited for the lock
            log.info("%s was completed by another job", ref)
            return ref
        log.info("running %s -> %s", stage + (f"[{domain}]" if domain else ""), ref.path)
        started = time.time()
        if main:
            atomic_write_json(ref.path / CONFIG, {"stage": stage, "label": ref.label, "config": ref.config, "inputs": ref.inputs})
        metrics = st.run(ctx, domain, ref, inputs)
        if main:
            if stage in ROUND_STAGES:
                metrics = {"round": ctx.dpo_round, **metrics}
            write_manifest(ref, metrics, started)
    log.info("%s done in %.0f s", ref, time.time() - started)
    return ref


ROUND_STAGES = ("generate", "filter", "dpo")
"""The per-domain stages repeated by online DPO (`dpo.rounds`); their manifests record the round."""


def run_rounds(ctx: Context, domain: str, first: tuple[str, ...] = ROUND_STAGES) -> dict[str, ArtifactRef]:
    """One domain's online-DPO rounds: the stages `first` at round 0, then generate -> filter -> dpo at each
    later round (sampling with, and training from, the previous round's policy). Complete rounds are
    reused, so a run stopped after round r resumes at round r + 1.

    Returns:
        {"<stage>/<domain>": artifact} for the last round, {"<stage>/<domain>/round<r>": artifact} for earlier ones.
    """
    done: dict[str, ArtifactRef] = {}
    for r in range(ctx.dpo_round + 1):
        suffix = "" if r == ctx.dpo_round else f"/round{r}"
        for stage in first if r == 0 else ROUND_STAGES:
            done[f"{stage}/{domain}{suffix}"] = execute(ctx.at_round(r), stage, domain)
    return done


def run_stage(ctx: Context, stage: str, domain: Optional[str]) -> dict[str, ArtifactRef]:
    """What `python -m skillweave stage=<stage>` runs: the stage once (per-domain stages at the last online
    round), except stage=dpo with dpo.rounds > 1, which runs every round (online DPO is the dpo stage),
    and stage=dev, which runs every round's generate, filter and dpo it needs before scoring the dev split.

    Raises:
        ValueError: dpo.rounds > 1 under a multi-process launch (the rounds' filter stages are single-process).
        MissingArtifactError: an input of the first stage run is missing.
    """
    if stage == "dev":  # tuning: one command per sweep point trains (every round) what it scores
        ref_for(ctx, "dev", domain)  # a dev split that cannot be drawn fails before any training
        refs = run_rounds(ctx, domain)
        return {str(ref): ref for ref in [*refs.values(), execute(ctx, "dev", domain)]}
    if stage == "dpo" and ctx.dpo_round > 0:
        from .cluster import process_rank

        if process_rank()[1] > 1:
            raise ValueError(
                "stage=dpo with dpo.rounds > 1 also runs generate and filter, which a multi-process launch cannot: "
                "launch each round's stages on their own (round r is the last round of dpo.rounds=r+1)"
            )
        refs = run_rounds(ctx, domain, first=("dpo",))
        return {str(ref): ref for ref in refs.values()}
    ref = execute(ctx, stage, domain)
    return {str(ref): ref}


def run_all(ctx: Context) -> dict[str, ArtifactRef]:
    """Every stage for every domain in `domains`: per-domain stages first (every online-DPO round), then
    the fan-in stages."""
    done: dict[str, ArtifactRef] = {}
    for domain in ctx.cfg.domains:
        done |= run_rounds(ctx, domain)
    return done | run_fan_in(ctx, known=done)


def run_fan_in(ctx: Context, known: Optional[dict[str, ArtifactRef]] = None) -> dict[str, ArtifactRef]:
    """merge, zip (every domain), what the eval configurations read besides (other merges, LoRA, multi-task
    DPO, the router...), then eval. On a cluster this is the job after the per-domain array."""
    from .stages.eval import eval_needs

    done: dict[str, ArtifactRef] = {"merge": execute(ctx, "merge")}
    for domain in ctx.cfg.domains:
        done[f"zip/{domain}"] = execute(ctx, "zip", domain)
    seen = [*(known or {}).values(), *done.values()]
    for name, need in eval_needs(ctx).items():
        ref = need.ref
        if ref not in seen and not ref.complete:
            done[f"eval-input/{name}"] = need.produce()
    done["eval"] = execute(ctx, "eval")
    return done
