"""Stage specs, the run context, and planning/executing one stage over the artifact store.

A stage's artifact key is computed from config alone (its settings + its inputs' keys, down to the
backbone's fingerprint), so any stage can be run by itself: it finds its inputs among earlier
artifacts or stops naming the command that produces them. Everything about a stage that other code
needs (per domain or not, multi-process, repeated by online rounds, its output files, what it may
produce when run alone) is declared once, in its `Stage`.
"""

from __future__ import annotations

import errno
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..config import SkillweaveConfig
from .artifacts import (
    CONFIG,
    MANIFEST,
    ArtifactError,
    ArtifactRef,
    MissingArtifactError,
    artifact_lock,
    atomic_write_json,
    make_ref,
    run_clock,
    write_manifest,
)
from .distributed import is_main_process, main_process_decides, process_rank
from .memory import release_memory
from .registry import Registry

log = logging.getLogger("skillweave")

PlanFn = Callable[["Context", Optional[str]], tuple[dict, Mapping[str, "Need"]]]
"""(ctx, domain) -> (the settings its key hashes, its inputs by name)."""
RunFn = Callable[["Context", Optional[str], ArtifactRef, dict[str, ArtifactRef]], dict]
"""(ctx, domain, its artifact, its inputs' artifacts) -> the metrics its manifest records."""


class Pulls(StrEnum):
    """What a stage run alone (`python -m skillweave stage=<name>`) produces of its missing inputs."""

    nothing = "nothing"
    """A missing input stops the run with the command that makes it."""
    earlier_rounds = "earlier_rounds"
    """At online round r > 0, every input of a later round than 0 is produced (online DPO is the dpo
    stage: stage=dpo runs every round); round 0's inputs must exist."""
    everything = "everything"
    """Every missing input is produced first (dev: one command per sweep point trains what it scores)."""


@dataclass(frozen=True)
class Stage:
    """One pipeline step: `plan` names its settings and inputs, `run` fills its artifact directory."""

    name: str
    per_domain: bool
    plan: PlanFn
    run: RunFn
    outputs: Mapping[str, str] = field(default_factory=dict)
    """Output name -> path inside the artifact directory; consumers read `ref.file(name)`."""
    distributed: bool = False
    """Runs as one multi-process job (accelerate, torchrun, srun); the others refuse WORLD_SIZE > 1."""
    rounds: bool = False
    """Repeated by online DPO (`dpo.rounds`): its manifest records the round."""
    pulls: Pulls = Pulls.nothing
    """What it produces of its missing inputs when run alone."""
    label: Optional[Callable[["Context"], str]] = None
    """The artifact's label when not per domain (default `all`): e.g. the skill an s2l artifact is of."""
    check: Optional[Callable[["Context", Optional[str]], None]] = None
    """Checks of what it will read that need the plugins (rule names, a prompt source's arguments), run
    at start-up for every artifact that is going to be made, never for one that is complete."""
    progress: Optional[Callable[["Context", Optional[str], ArtifactRef, dict[str, ArtifactRef]], str]] = None
    """What an unfinished artifact holds so far, in words, for `dry_run` (generate: the batches written; the
    training stages: the step of their last complete checkpoint; eval: the rows and cells scored, which other
    processes may have made before its own directory exists), or "" for nothing. Reads files only."""
    partial_inputs: bool = False
    """`run` also makes the parts of its artifact that some of its inputs suffice for, given only those
    (eval: the rows whose inputs exist), and returns before finishing. Where another job is making an input
    it pulls, `execute` calls it so first instead of waiting, then waits for that input and calls it again
    with every input (one process only; a multi-process launch waits in order)."""


STAGES: Registry[Stage] = Registry("stage")


def register_stage(stage: Stage) -> Stage:
    return STAGES.register(stage.name)(stage)


@dataclass
class Context:
    """The run's config plus a way to compose the same run for another domain."""

    cfg: SkillweaveConfig
    overrides: tuple[str, ...] = ()
    """The user's overrides, without stage= and domain=: replayed for every domain."""
    composer: Optional[Callable[[list[str]], SkillweaveConfig]] = None
    _domains: dict[str, SkillweaveConfig] = field(default_factory=dict)
    _rounds: dict[int, "Context"] = field(default_factory=dict)
    _plans: dict[tuple[str, Optional[str]], tuple[ArtifactRef, dict[str, "Need"]]] = field(default_factory=dict)

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
        from ..models import resolve_model_dir

        return resolve_model_dir(self.cfg.model.path)

    @cached_property
    def base_fingerprint(self) -> str:
        from ..models import model_fingerprint

        return model_fingerprint(self.model_dir)

    def variant(self, *overrides: str) -> "Context":
        """The same run with more overrides (e.g. `merge=dare_ties`): for inputs made under other settings."""
        if self.composer is None:
            raise RuntimeError("this context cannot compose variants")
        extra = (*self.overrides, *overrides)
        cfg = self.composer([*extra, f"domain={self.cfg.domain.name}"])
        return self._sharing_backbone(Context(cfg=cfg, overrides=extra, composer=self.composer))

    def command(self, stage: str, domain: Optional[str]) -> str:
        parts = ["python -m skillweave", f"stage={stage}"]
        if domain:
            parts.append(f"domain={domain}")
        return " ".join(parts + list(self.overrides))

    @property
    def dpo_round(self) -> int:
        """The online-DPO round the per-domain round stages plan: the last of `dpo.rounds`."""
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
            self._rounds[r] = self._sharing_backbone(Context(cfg=cfg, overrides=overrides, composer=self.composer))
        return self._rounds[r]

    def _sharing_backbone(self, other: "Context") -> "Context":
        """`other` reuses what is already computed about the backbone, when it is the same one."""
        if other.cfg.model.path == self.cfg.model.path:
            for name in ("model_dir", "base_fingerprint"):
                if name in self.__dict__:
                    other.__dict__[name] = self.__dict__[name]
        return other


@dataclass(frozen=True)
class Need:
    """An input named by how to make it: `stage` for `domain` under `ctx` (possibly a variant or an earlier round)."""

    ctx: Context
    stage: str
    domain: Optional[str] = None

    @property
    def ref(self) -> ArtifactRef:
        return ref_for(self.ctx, self.stage, self.domain)

    @property
    def round(self) -> int:
        return self.ctx.dpo_round


def plan(ctx: Context, stage: str, domain: Optional[str] = None) -> tuple[ArtifactRef, dict[str, Need]]:
    """The artifact a stage would write for `domain`, and what it reads (memoised per context)."""
    st = STAGES.get(stage, "stage")
    domain = domain if st.per_domain else None
    if (stage, domain) not in ctx._plans:
        config, needs = st.plan(ctx, domain)
        inputs = {name: need.ref for name, need in needs.items()}
        label = domain or (st.label(ctx) if st.label else "all")
        ref = make_ref(ctx.root, stage, label, config, inputs, ctx.command(stage, domain), st.outputs)
        ctx._plans[(stage, domain)] = (ref, dict(needs))
    return ctx._plans[(stage, domain)]


def ref_for(ctx: Context, stage: str, domain: Optional[str] = None) -> ArtifactRef:
    return plan(ctx, stage, domain)[0]


def per_domain_needs(ctx: Context, stage: str, prefix: Optional[str] = None) -> dict[str, Need]:
    """`{"<prefix>_<domain>": Need}` of `stage` for every domain of the run (prefix: the stage's name)."""
    return {f"{prefix or stage}_{d}": Need(ctx, stage, d) for d in ctx.cfg.domains}


def never(need: Need) -> bool:
    return False


def always(need: Need) -> bool:
    return True


def pull_policy(stage: Stage) -> Callable[[Need], bool]:
    """Which missing inputs `stage` run alone produces (`Stage.pulls`)."""
    if stage.pulls == Pulls.everything:
        return always
    if stage.pulls == Pulls.earlier_rounds:
        return lambda need: need.round > 0 or need.stage == stage.name
    return never


class ArtifactBusy(Exception):
    """Another job holds the lock of the artifact `execute(..., wait=False)` was asked to make."""

    def __init__(self, ref: ArtifactRef) -> None:
        super().__init__(f"{ref} is being made by another job")
        self.ref = ref


def execute(
    ctx: Context,
    stage: str,
    domain: Optional[str] = None,
    pull: Callable[[Need], bool] = never,
    made: Optional[dict[str, ArtifactRef]] = None,
    visited: Optional[dict[Path, ArtifactRef]] = None,
    report_reused: bool = False,
    wait: bool = True,
) -> ArtifactRef:
    """Run one stage unless its artifact is complete; a partial directory is resumed by the stage.

    Args:
        pull: which inputs to execute first (recursively, with the same policy: a complete one is
            reused, a missing one made); any other missing input stops the run with the command that
            makes it.
        made: records every input executed on the way, as `<stage>-input/<name>`.
        report_reused: execute (and record) the pulled inputs that are complete too, as a stage run
            alone reports every artifact it stands on; otherwise they are read silently.
        visited: the artifacts this command already executed (shared by every call of one command), so
            each is executed, and reported, once.
        wait: where another job is making this artifact, wait for it (and reuse it); False raises
            ArtifactBusy at once instead, so that the caller can do other work first (one process only:
            ranks of a multi-process launch must take the same branch, and only rank 0 locks).
            A stage with `partial_inputs` does not wait for a pulled input another job is making: it runs on
            the others first (`_partial_pass`), then waits for that one.
    Raises:
        MissingArtifactError: a missing input that `pull` does not produce.
        ArtifactBusy: `wait=False` and another job holds the artifact's lock.
    """
    st = STAGES.get(stage, "stage")
    domain = domain if st.per_domain else None
    ref, needs = plan(ctx, stage, domain)
    visited = {} if visited is None else visited
    visited[ref.path] = ref
    if main_process_decides(ref.complete):
        log.info("%s is complete: nothing to do (delete the directory to redo it)", ref)
        return ref
    if st.check:
        st.check(ctx, domain)
    defer = st.partial_inputs and process_rank()[1] == 1
    busy: dict[Path, tuple[str, Need]] = {}  # pulled inputs another job is making (partial_inputs only)
    for name, need in needs.items():
        inp = need.ref
        if pull(need) and (report_reused or not inp.complete):
            if inp.path not in visited:
                try:
                    produced = execute(need.ctx, need.stage, need.domain, pull, made, visited, report_reused,
                                       wait=not defer)
                except ArtifactBusy:
                    busy[inp.path] = (name, need)
                    continue
                if made is not None:
                    made[f"{stage}-input/{name}"] = produced
        elif not pull(need) and not inp.complete:
            dom = None if inp.label == "all" else inp.label
            raise MissingArtifactError(
                f"stage {stage} needs the {inp.stage} artifact for "
                f"{'domain ' + inp.label if dom else 'all domains'} ({inp.path}), which is missing: "
                f"run `{inp.command or ctx.command(inp.stage, dom)}` first (or stage=all)"
            )
    if busy:
        ready = {n: need.ref for n, need in needs.items() if need.ref.path not in busy}
        if _partial_pass(ctx, st, domain, ref, ready, [str(need.ref) for _, need in busy.values()], wait):
            log.info("%s was completed by another job", ref)
            return ref
        for name, need in busy.values():  # now wait for each (and make it, where the other job stopped)
            produced = execute(need.ctx, need.stage, need.domain, pull, made, visited, report_reused)
            if made is not None:
                made[f"{stage}-input/{name}"] = produced
    for inp in {need.ref.path: need.ref for need in needs.values()}.values():
        verify_input(inp)
    main = is_main_process()
    # Under a multi-process launch only rank 0 locks and writes; the other ranks follow its decisions
    # (core/distributed.py says why waiting on the lock would deadlock them).
    with artifact_lock(ref, wait=wait) if main else nullcontext(True) as held:
        if not held:
            raise ArtifactBusy(ref)
        if main_process_decides(ref.complete):  # another job produced it while we waited for the lock
            log.info("%s was completed by another job", ref)
            return ref
        log.info("running %s -> %s", stage + (f"[{domain}]" if domain else ""), ref.path)
        if main:
            _write_config(stage, ref)
        so_far = ""
        with run_clock(ref) if main else nullcontext(time.time()) as started:
            try:
                metrics = st.run(ctx, domain, ref, {name: need.ref for name, need in needs.items()})
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                raise ArtifactError(
                    f"{ref}: {e.strerror} while writing {e.filename or ref.path}: free space in {ctx.root} and "
                    f"run `{ref.command}` again (the partial artifact resumes)"
                ) from None
            if main:
                if st.rounds:
                    metrics = {"round": ctx.dpo_round, **metrics}
                manifest = write_manifest(ref, metrics, started)
                if manifest["runs"] > 1:
                    so_far = f" ({manifest['seconds_all_runs']:.0f} s in its {manifest['runs']} runs)"
    release_memory()  # what the stage freed, before the next stage of this process runs
    log.info("%s done in %.0f s%s", ref, time.time() - started, so_far)
    return ref


def _write_config(stage: str, ref: ArtifactRef) -> None:
    atomic_write_json(ref.path / CONFIG, {"stage": stage, "label": ref.label, "config": ref.config,
                                          "inputs": ref.inputs, "command": ref.command})


def _partial_pass(ctx: Context, st: Stage, domain: Optional[str], ref: ArtifactRef, ready: dict[str, ArtifactRef],
                  waiting: list[str], wait: bool) -> bool:
    """`st.run` on the inputs at hand while another job makes the others (`Stage.partial_inputs`), under the
    artifact's lock and a run clock of its own, so that the wait for the others is not counted as its time.
    Returns whether the artifact is complete already (another job made it).

    Raises:
        ArtifactBusy: `wait=False` and another job holds the artifact's lock."""
    for inp in {r.path: r for r in ready.values()}.values():
        verify_input(inp)
    with artifact_lock(ref, wait=wait) as held:
        if not held:
            raise ArtifactBusy(ref)
        if ref.complete:
            return True
        log.info("%s: making what its inputs at hand suffice for, while another job makes %s", ref, ", ".join(waiting))
        _write_config(st.name, ref)
        with run_clock(ref):
            st.run(ctx, domain, ref, ready)
    release_memory()
    return False


_VERIFIED: set[tuple[Path, int]] = set()


def verify_input(ref: ArtifactRef) -> None:
    """Check every file of an input artifact against its manifest's sha256 before a stage reads it (once
    per process and manifest), so a damaged delta or skillpack is never used silently.

    Raises:
        ArtifactError: a file differs from what its stage wrote; the message says how to redo it.
    """
    stamp = (ref.path, (ref.path / MANIFEST).stat().st_mtime_ns)
    if stamp in _VERIFIED:
        return
    problems = ref.problems(digests=True)
    if problems:
        raise ArtifactError(f"{ref}: damaged ({'; '.join(problems[:3])}): {ref.redo}")
    _VERIFIED.add(stamp)
