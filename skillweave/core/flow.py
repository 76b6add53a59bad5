"""What a command runs: one stage, or `stage=all` (the stages in `pipeline`, for every domain).

Only the STAGES registry and the stages' declarations are read, never a stage module: the order of
`stage=all` is the `pipeline` setting, the online rounds are the stages marked `rounds`, and what a
stage reads is what its `plan` returns. The whole graph is planned before anything runs, so a typo
in any registry-backed name fails in seconds instead of after hours of training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .artifacts import ArtifactRef, manifest_seconds, runs_so_far
from .distributed import process_rank
from .engine import STAGES, ArtifactBusy, Context, always, execute, never, plan, pull_policy

log = logging.getLogger("skillweave")


Planned = tuple[ArtifactRef, Context, Optional[str]]
"""An artifact of the plan, with the context and domain it is planned for."""


def walk(ctx: Context, stage: str, domain: Optional[str] = None, seen: Optional[set] = None,
         order: Optional[dict[Path, Planned]] = None) -> set:
    """Plan `stage` and, recursively, everything it reads, and run the stages' checks of every artifact not
    yet made; returns the (context, stage, domain) visited. `order` collects the artifacts, each after
    what it reads.

    Raises whatever a plan or check raises: an unknown stage, merge method, eval configuration, rule...
    """
    seen = set() if seen is None else seen
    st = STAGES.get(stage, "stage")
    node = (id(ctx), stage, domain if st.per_domain else None)
    if node in seen:
        return seen
    seen.add(node)
    ref, needs = plan(ctx, stage, domain)
    if st.check and not ref.complete:
        st.check(ctx, domain if st.per_domain else None)
    for need in needs.values():
        walk(need.ctx, need.stage, need.domain, seen, order)
    if order is not None:
        order.setdefault(ref.path, (ref, ctx, domain if st.per_domain else None))
    return seen


def _domain_local(ctx: Context, stage: str, domain: str) -> bool:
    """True when `stage` for `domain` reads only per-domain artifacts (of any round), so a domain's job
    can make it before the fan-in (merge...) exists."""
    if not STAGES.get(stage, "pipeline").per_domain:
        return False
    return all(_domain_local(n.ctx, n.stage, n.domain or domain) for n in plan(ctx, stage, domain)[1].values())


def domain_stages(ctx: Context) -> list[str]:
    """The stages of `pipeline` that each domain's job runs on its own, in pipeline order."""
    first = ctx.cfg.domains[0]
    return [s for s in ctx.cfg.pipeline if _domain_local(ctx, s, first)]


def plan_all(ctx: Context, order: Optional[dict[Path, Planned]] = None) -> None:
    """Plan every artifact `stage=all` would make or read, without running anything."""
    seen: set = set()
    for r in range(ctx.dpo_round + 1):
        for domain in ctx.cfg.domains:
            for stage in ctx.cfg.pipeline:
                walk(ctx.at_round(r), stage, domain, seen, order)


def planned(ctx: Context) -> list[Planned]:
    """Every artifact the command reads or makes (`stage=all`, or the one stage and what it reads), each after
    its inputs: what `dry_run=true` reports. The stages' checks run on the way, as before a real run."""
    order: dict[Path, Planned] = {}
    if ctx.cfg.stage == "all":
        plan_all(ctx, order)
    else:
        walk(ctx, ctx.cfg.stage, ctx.cfg.domain.name, order=order)
    return list(order.values())


def plan_report(ctx: Context) -> str:
    """Where a run stands: each planned artifact complete (with the seconds of every run that made it, by its
    manifest), partial (a stopped run's directory, which the next run resumes, with the seconds its runs took
    so far; or work its stage says is held for it elsewhere: eval rows made by another process; with what it
    holds so far) or missing, and the totals."""
    lines, counts = [], {"complete": 0, "partial": 0, "missing": 0}
    seconds = {"complete": 0.0, "partial": 0.0, "missing": 0.0}
    for ref, at, domain in planned(ctx):
        notes = []
        if ref.complete:
            manifest = ref.manifest()
            state, took, runs = "complete", manifest_seconds(manifest), manifest.get("runs", 1)
        else:
            took, runs = runs_so_far(ref)
            progress = STAGES.get(ref.stage).progress
            if progress is not None:
                held = progress(at, domain, ref, {n: need.ref for n, need in plan(at, ref.stage, domain)[1].items()})
                notes += [held] if held else []
            state = "partial" if ref.path.exists() or notes else "missing"
        if runs > 1:
            notes.append(f"{runs} runs")
        seconds[state] += took
        counts[state] += 1
        when = f"{took:9.0f} s" if took else " " * 11
        said = f"  ({'; '.join(notes)})" if notes else ""
        lines.append(f"{state:9s} {when}  {ref.path.relative_to(ctx.root)}{said}")
    lines.append(f"{counts['complete']} complete ({seconds['complete']:.0f} s by their manifests), {counts['partial']} "
                 f"partial ({seconds['partial']:.0f} s so far), {counts['missing']} missing under {ctx.root}")
    return "\n".join(lines)


def _label(stage: str, domain: Optional[str], r: Optional[int] = None) -> str:
    return stage + (f"/{domain}" if domain else "") + (f"/round{r}" if r is not None else "")


def run_domain(
    ctx: Context, domain: str, stages: Optional[list[str]] = None, visited: Optional[dict] = None, wait: bool = True
) -> dict[str, ArtifactRef]:
    """One domain's part of `stage=all`: the domain-local stages, those marked `rounds` at every online
    round (round r samples with and trains from round r-1's policy). Complete rounds are reused, so a
    run stopped after round r resumes at round r + 1.

    Returns:
        {"<stage>/<domain>": artifact} for the last round, {"<stage>/<domain>/round<r>": artifact} for earlier ones.
    Raises:
        ArtifactBusy: `wait=False` and another job is making one of the domain's artifacts (those before it
            are made; a later call resumes there).
    """
    stages = domain_stages(ctx) if stages is None else stages
    done: dict[str, ArtifactRef] = {}
    for r in range(ctx.dpo_round + 1):
        last = r == ctx.dpo_round
        for stage in stages:
            if last or STAGES.get(stage).rounds:
                done[_label(stage, domain, None if last else r)] = execute(
                    ctx.at_round(r), stage, domain, visited=visited, wait=wait)
    return done


def run_fan_in(ctx: Context, visited: Optional[dict] = None) -> dict[str, ArtifactRef]:
    """The rest of `pipeline` after every domain's job (merge, zip of every domain, eval...), each stage
    producing first whatever else it reads (eval: other merges, LoRA, multi-task DPO, the router...).
    On a cluster this is the job after the per-domain array. As in run_all, a per-domain stage's domain
    that another job is making is put off until the stage's other domains are made (one process only)."""
    local = set(domain_stages(ctx))
    visited = {} if visited is None else visited
    done: dict[str, ArtifactRef] = {}

    def make(stage: str, domain: Optional[str], wait: bool) -> None:
        made: dict[str, ArtifactRef] = {}
        ref = execute(ctx, stage, domain, pull=always, made=made, visited=visited, wait=wait)
        done.update(made)
        done[_label(stage, domain)] = ref

    for stage in (s for s in ctx.cfg.pipeline if s not in local):
        if not STAGES.get(stage).per_domain:
            make(stage, None, wait=True)
            continue
        later = []
        for domain in ctx.cfg.domains:
            try:
                make(stage, domain, wait=process_rank()[1] > 1)
            except ArtifactBusy as e:
                log.info("%s: domain %s's turn comes after the stage's other domains", e, domain)
                later.append(domain)
        for domain in later:
            make(stage, domain, wait=True)
    return done


def run_all(ctx: Context) -> dict[str, ArtifactRef]:
    """Every stage of `pipeline` for every domain in `domains`: each domain's local stages first (every
    online round), then the fan-in stages. Plans everything before running anything.

    Two commands on one artifacts_root share the work: a domain whose next artifact another job is making
    is put off, and this one goes on with the other domains; then it waits its turn for the domains put off
    (and reuses what the other job made). Under a multi-process launch every domain waits its turn in order.
    """
    plan_all(ctx)
    done: dict[str, ArtifactRef] = {}
    stages, visited = domain_stages(ctx), {}
    later = []
    for domain in ctx.cfg.domains:
        try:
            done |= run_domain(ctx, domain, stages, visited, wait=process_rank()[1] > 1)
        except ArtifactBusy as e:
            log.info("%s: domain %s's turn comes after the other domains", e, domain)
            later.append(domain)
    for domain in later:
        done |= run_domain(ctx, domain, stages, visited)
    return done | run_fan_in(ctx, visited)


def run_stage(ctx: Context, stage: str, domain: Optional[str]) -> dict[str, ArtifactRef]:
    """What `python -m skillweave stage=<stage>` runs: the stage once (per-domain stages at the last online
    round), first producing whichever missing inputs its `pulls` allows (stage=dpo: every earlier online
    round; stage=dev: everything it scores). Plans the whole graph first.

    Raises:
        MissingArtifactError: an input the stage does not produce itself is missing.
    """
    st = STAGES.get(stage, "stage")
    walk(ctx, stage, domain)
    # Under a multi-process launch every rank runs this command: inputs are launched on their own.
    pull = pull_policy(st) if process_rank()[1] == 1 else never
    made: dict[str, ArtifactRef] = {}
    ref = execute(ctx, stage, domain, pull=pull, made=made, report_reused=True)
    return {str(r): r for r in [*made.values(), ref]}
