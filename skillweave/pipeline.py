"""Plan and run stages over the artifact store.

A stage's artifact key is computed from config alone (its settings + its inputs' keys, down to the
backbone's fingerprint), so any stage can be run by itself: it finds its inputs among earlier
artifacts or stops naming the command that produces them.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
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
ORDER = ("generate", "filter", "dpo", "merge", "zip", "eval")


@dataclass
class Context:
    """The run's config plus a way to compose the same run for another domain."""

    cfg: SkillweaveConfig
    overrides: tuple[str, ...] = ()
    """The user's overrides, without stage= and domain=: replayed for every domain."""
    composer: Optional[Callable[[list[str]], SkillweaveConfig]] = None
    _domains: dict[str, SkillweaveConfig] = field(default_factory=dict)

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
            write_manifest(ref, metrics, started)
    log.info("%s done in %.0f s", ref, time.time() - started)
    return ref


def run_all(ctx: Context) -> dict[str, ArtifactRef]:
    """Every stage for every domain in `domains`, per-domain stages first, fan-in stages after."""
    done: dict[str, ArtifactRef] = {}
    for domain in ctx.cfg.domains:
        for stage in ("generate", "filter", "dpo"):
            done[f"{stage}/{domain}"] = execute(ctx, stage, domain)
    done["merge"] = execute(ctx, "merge")
    for domain in ctx.cfg.domains:
        done[f"zip/{domain}"] = execute(ctx, "zip", domain)
    from .stages.eval import eval_needs  # the baselines' own inputs (other merges, LoRA, multi-task DPO...)

    for name, need in eval_needs(ctx).items():
        if need.ref not in done.values():
            done[f"eval-input/{name}"] = need.produce()
    done["eval"] = execute(ctx, "eval")
    return done
