"""Stage 3: lm-eval across domains for each configuration, with the bytes each one holds.

Configurations (the walking skeleton's; oracle routing: each domain's prompts go to its skillpack):
  base        the original backbone on every domain
  dpo         K per-domain DPO models (theta_0 + Delta_k), each on its own domain
  merged      the merged backbone theta_0 + Delta_shared alone
  skillweave  the merged backbone + the domain's SkillZip skillpack, attached and detached in place
  merged_<m>  the backbone merged by mergekit method m (task_arithmetic, ties, dare_ties) alone
  external    any other HF model directory (`eval.external_model`): a monolith to compare against
A configuration is a function registered in CONFIGURATIONS; `eval.configurations` picks them.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..artifacts import ArtifactRef, artifact_lock, atomic_write_json, atomic_write_text, make_ref, write_manifest
from ..evaluation import paired_difference
from ..models import load_model, load_tokenizer, model_fingerprint
from ..pipeline import STAGES, Context, Need, Stage
from ..registry import Registry
from .dpo import DELTA, load_delta
from .merge import BACKBONE
from .zip import SKILLPACK

Scorer = Callable[[torch.nn.Module, object, str], dict]
log = logging.getLogger("skillweave")


@dataclass(frozen=True)
class Configuration:
    needs: Callable[[Context], dict[str, Need]]
    """The artifacts this configuration reads, by name; stage=all produces them in this order."""
    run: Callable[[Context, dict[str, ArtifactRef], Scorer], dict]
    """-> {"bytes": int, "scores": {domain: {"score", "stderr", "n", "metric"}}, optional "details": {...}}
    (details, e.g. a router's accuracy and confusion matrix, are kept in results.json under the row) and
    optional "samples": {domain: per-doc rows}, for a configuration that scores without the Scorer."""
    settings: Callable[[Context], dict] = lambda ctx: {}
    """What else its result depends on (settings read besides its inputs), hashed into the eval's key."""


CONFIGURATIONS: Registry[Configuration] = Registry("eval configuration")


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the tensors a model holds (tied weights counted once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def _base(ctx: Context, refs: dict, score: Scorer) -> dict:
    model = load_model(ctx.model_dir)
    tok = load_tokenizer(ctx.model_dir)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def add_delta(model: torch.nn.Module, delta: dict[str, torch.Tensor]) -> torch.nn.Module:
    """`model` with `delta` added to its parameters in place (theta_0 + Delta)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in delta:
                p.add_(delta[name].to(p.dtype))
    return model


def _dpo(ctx: Context, refs: dict, score: Scorer) -> dict:
    tok = load_tokenizer(ctx.model_dir)
    scores, total = {}, 0
    for d in ctx.cfg.domains:
        model = add_delta(
            load_model(ctx.model_dir), load_delta(refs[f"dpo_{d}"].path / DELTA, backbone_fingerprint=ctx.base_fingerprint)
        )
        total += param_bytes(model)  # K separate models are held
        scores[d] = score(model, tok, d)
    return {"bytes": total, "scores": scores}


def _merged(ctx: Context, refs: dict, score: Scorer) -> dict:
    path = refs["merge"].path / BACKBONE
    model, tok = load_model(path), load_tokenizer(path)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def _merged_with(method: str) -> Configuration:
    """The backbone merged by `method` (conf/merge/<method>.yaml) alone, whatever `merge=` the run uses."""
    return Configuration(needs=lambda ctx: {f"merge_{method}": Need(ctx.variant(f"merge={method}"), "merge")},
                         run=lambda ctx, refs, score: _merged(ctx, {"merge": refs[f"merge_{method}"]}, score))


for _method in ("task_arithmetic", "ties", "dare_ties"):
    CONFIGURATIONS.register(f"merged_{_method}")(_merged_with(_method))


def _external(ctx: Context, refs: dict, score: Scorer) -> dict:
    """Any other HF model directory (`eval.external_model`), e.g. a larger monolith, on every domain."""
    from ..models import resolve_model_dir

    if not ctx.cfg.eval.external_model:
        raise ValueError("eval configuration `external` needs eval.external_model=<HF model directory>")
    path = resolve_model_dir(ctx.cfg.eval.external_model)
    model, tok = load_model(path), load_tokenizer(path)
    return {"bytes": param_bytes(model), "scores": {d: score(model, tok, d) for d in ctx.cfg.domains}}


def _skillweave(ctx: Context, refs: dict, score: Scorer) -> dict:
    from ..zip import attach_skillpack, detach_skillpack, load_skillpack, skillpack_nbytes

    path = refs["merge"].path / BACKBONE
    model, tok = load_model(path), load_tokenizer(path)
    fp = model_fingerprint(path)
    total, scores = param_bytes(model), {}
    for d in ctx.cfg.domains:
        skillpack = load_skillpack(refs[f"zip_{d}"].path / SKILLPACK, expected_fingerprint=fp)
        total += skillpack_nbytes(skillpack)
        attach_skillpack(model, skillpack, expected_fingerprint=fp, int_mm=ctx.cfg.eval.integer_path)
        try:
            scores[d] = score(model, tok, d)
        finally:
            detach_skillpack(model)
    return {"bytes": total, "scores": scores}


def per_domain(ctx: Context, stage: str) -> dict[str, Need]:
    """`{"<stage>_<domain>": Need}` for every domain of the run."""
    return {f"{stage}_{d}": Need(ctx, stage, d) for d in ctx.cfg.domains}


CONFIGURATIONS.register("base")(Configuration(needs=lambda ctx: {}, run=_base))
CONFIGURATIONS.register("dpo")(Configuration(needs=lambda ctx: per_domain(ctx, "dpo"), run=_dpo))
CONFIGURATIONS.register("merged")(Configuration(needs=lambda ctx: {"merge": Need(ctx, "merge")}, run=_merged))
CONFIGURATIONS.register("external")(Configuration(needs=lambda ctx: {}, run=_external))
CONFIGURATIONS.register("skillweave")(
    Configuration(needs=lambda ctx: {"merge": Need(ctx, "merge")} | per_domain(ctx, "zip"), run=_skillweave)
)


def eval_needs(ctx: Context) -> dict[str, Need]:
    """Everything the configurations in `eval.configurations` read (shared inputs once)."""
    needs: dict[str, Need] = {}
    for name in ctx.cfg.eval.configurations:
        needs |= CONFIGURATIONS.get(name).needs(ctx)
    return needs


def _tasks(ctx: Context) -> dict[str, str]:
    return {d: ctx.for_domain(d).domain.eval_task for d in ctx.cfg.domains}


def plan(ctx: Context, domain: Optional[str]):
    inputs = {name: need.ref for name, need in eval_needs(ctx).items()}
    config = {"eval": asdict(ctx.cfg.eval), "tasks": _tasks(ctx), "model": ctx.base_fingerprint, "task_files": task_digest()}
    settings = {name: CONFIGURATIONS.get(name).settings(ctx) for name in ctx.cfg.eval.configurations}
    config["settings"] = {name: s for name, s in settings.items() if s}
    if "external" in ctx.cfg.eval.configurations and ctx.cfg.eval.external_model:
        from ..models import resolve_model_dir

        config["external"] = model_fingerprint(resolve_model_dir(ctx.cfg.eval.external_model))
    return config, inputs


def task_digest() -> str:
    """A hash of the task definitions (skillweave/tasks), of skillweave/prompts.py (which makes the math
    sets) and of the rule sets their scores use (dialogue, math): changing a task's data or scoring gives
    a new eval artifact instead of reusing old numbers."""
    import hashlib

    from .. import prompts
    from ..evaluation import TASK_DIR
    from ..resources import resource_path

    files = sorted([*TASK_DIR.glob("*.yaml"), *TASK_DIR.glob("*.py")]) + [Path(prompts.__file__)]
    files += [resource_path("rules", f"{d}.yaml") for d in ("dialogue", "math")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


ROWS = "eval_rows"
"""Where each configuration's row lives as its own artifact (`<root>/eval_rows/<name>-<key>/`)."""


def row_ref(ctx: Context, name: str, inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    """The artifact of one configuration's row: keyed by what that row depends on (its own inputs and
    settings, the tasks and generation settings), not by the other configurations of the eval, so a
    comparison that adds a configuration reuses every row it already has (base is evaluated once)."""
    conf = CONFIGURATIONS.get(name)
    ev = ctx.cfg.eval
    config = {
        "configuration": name,
        "eval": {"limit": ev.limit, "max_gen_toks": ev.max_gen_toks, "batch_size": ev.batch_size, "integer_path": ev.integer_path},
        "tasks": _tasks(ctx),
        "model": ctx.base_fingerprint,
        "task_files": task_digest(),
        "settings": conf.settings(ctx),
    }
    if name == "external" and ev.external_model:
        from ..models import resolve_model_dir

        config["external"] = model_fingerprint(resolve_model_dir(ev.external_model))
    mine = {k: inputs[k] for k in conf.needs(ctx)}
    return make_ref(ctx.root, ROWS, name, config, mine)


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from ..evaluation import evaluate

    ev, tasks = ctx.cfg.eval, _tasks(ctx)
    (ref.path / "samples").mkdir(exist_ok=True)

    def scorer(row: ArtifactRef) -> Scorer:
        def score(model, tok, d: str) -> dict:
            res = evaluate(model, tok, [tasks[d]], limit=ev.limit, max_gen_toks=ev.max_gen_toks, batch_size=ev.batch_size)
            r = res[tasks[d]]
            # Every answer is kept: which ones a skillpack changed is as telling as the score.
            lines = "".join(json.dumps(row) + "\n" for row in r["samples"])
            atomic_write_text(row.path / "samples" / f"{d}.jsonl", lines)
            return {"score": r["score"], "stderr": r["stderr"], "n": r["n"], "metric": r["metric"]}

        return score

    rows = []
    for name in ev.configurations:
        # Each finished row is a complete artifact: a killed eval resumes at the first unfinished one,
        # and another eval with the same row (same inputs and settings) reads it instead of recomputing.
        row = row_ref(ctx, name, inputs)
        with artifact_lock(row):
            if not row.complete:
                started = time.time()
                (row.path / "samples").mkdir(exist_ok=True)
                out = CONFIGURATIONS.get(name).run(ctx, inputs, scorer(row))
                for d, answers in out.get("samples", {}).items():
                    atomic_write_text(row.path / "samples" / f"{d}.jsonl", "".join(json.dumps(a) + "\n" for a in answers))
                scores = {d: s["score"] for d, s in out["scores"].items()}
                result = {
                    "name": name,
                    "bytes": out["bytes"],
                    "scores": scores,
                    "stderr": {d: s["stderr"] for d, s in out["scores"].items()},
                    "n": {d: s["n"] for d, s in out["scores"].items()},
                    "average": sum(scores.values()) / len(scores),
                } | ({"details": out["details"]} if out.get("details") else {})
                atomic_write_json(row.path / "row.json", result)
                write_manifest(row, {"average": result["average"]}, started)
            else:
                log.info("eval row %s is complete: reused", row)
        rows.append(json.loads((row.path / "row.json").read_text()) | {"row": str(row)})
        for f in sorted((row.path / "samples").glob("*.jsonl")):
            shutil.copyfile(f, ref.path / "samples" / f"{name}-{f.name}")
    compare_with_base(rows, ref.path / "samples")
    base_bytes = next((r["bytes"] for r in rows if r["name"] == "base"), rows[0]["bytes"])
    for r in rows:
        r["relative_bytes"] = round(r["bytes"] / base_bytes, 4)
    # Over-budget configurations stay in the table, flagged and listed, never silently dropped.
    _, excluded = eval_baselines.apply_budget(rows, ev.budget_bytes)
    results = {
        "tasks": tasks,
        "limit": ev.limit,
        "max_gen_toks": ev.max_gen_toks,
        "budget_bytes": ev.budget_bytes,
        "excluded": excluded,
        "configurations": rows,
    }
    atomic_write_json(ref.path / "results.json", results)
    table = results_table(results) + vs_base_table(results) + eval_baselines.budget_note(ev.budget_bytes, excluded)
    atomic_write_text(ref.path / "results.md", table)
    from ..plots import domain_bars, frontier_plot

    frontier_plot(results, ref.path / "frontier.png")
    domain_bars(results, ref.path / "domains.png")
    log_results(ctx.cfg, results, ref)
    print(table)
    return {"configurations": len(rows)}


def _read_samples(path: Path) -> dict[int, dict]:
    if not path.is_file():
        return {}
    return {r["doc_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def compare_with_base(rows: list[dict], samples: Path) -> None:
    """Adds `vs_base[domain] = {delta, stderr, changed, n}` to every row with answers on base's docs.

    A paired comparison on the same documents (evaluation.paired_difference): `delta` is the mean
    per-document score difference from base, `stderr` its standard error, `changed` the share of
    answers that differ from base's. A gain "beyond the standard error" means delta > stderr; 2 x stderr is ~95%.
    """
    base = next((r for r in rows if r["name"] == "base"), None)
    if base is None:
        return
    for r in rows:
        if r is base:
            continue
        vs = {}
        for d in r["scores"]:
            mine, theirs = _read_samples(samples / f"{r['name']}-{d}.jsonl"), _read_samples(samples / f"base-{d}.jsonl")
            common = sorted(set(mine) & set(theirs))
            if not common:
                continue
            delta, stderr = paired_difference([theirs[i]["score"] for i in common], [mine[i]["score"] for i in common])
            changed = sum(mine[i]["response"] != theirs[i]["response"] for i in common) / len(common)
            vs[d] = {"delta": delta, "stderr": stderr, "changed": changed, "n": len(common)}
        if vs:
            r["vs_base"] = vs


def vs_base_table(results: dict) -> str:
    """Markdown: each configuration's paired difference from base per domain (delta ± stderr, changed answers)."""
    rows = [r for r in results["configurations"] if r.get("vs_base")]
    if not rows:
        return ""
    domains = list(results["tasks"])
    head = "\nPaired with base on the same documents: score difference in points ± its standard error (answers changed)\n\n"
    head += "| configuration | " + " | ".join(domains) + " |\n|" + "---|" * (len(domains) + 1) + "\n"
    lines = []
    for r in rows:
        cells = []
        for d in domains:
            v = r["vs_base"].get(d)
            cells.append("" if v is None else f"{100 * v['delta']:+.1f} ± {100 * v['stderr']:.1f} ({100 * v['changed']:.0f}%)")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def log_results(cfg, results: dict, ref: ArtifactRef) -> None:
    """The results table, per-configuration summary, plots and configs as one W&B run (job_type eval)."""
    from ..tracking import wandb_run

    config = {"eval": asdict(cfg.eval), "merge": asdict(cfg.merge), "zip": asdict(cfg.zip), "dpo": asdict(cfg.dpo),
              "model": cfg.model.path, "domains": list(cfg.domains), "artifact": str(ref)}
    with wandb_run(cfg, "eval", f"eval-{ref.key}", config) as run:
        if run is None:
            return
        import wandb

        domains = list(results["tasks"])
        columns = ["configuration", *domains, *(f"{d}_stderr" for d in domains), "average", "bytes", "relative_bytes", "within_budget"]
        rows = [
            [r["name"], *(r["scores"][d] for d in domains), *(r["stderr"][d] for d in domains),
             r["average"], r["bytes"], r["relative_bytes"], r["within_budget"]]
            for r in results["configurations"]
        ]
        run.log(
            {
                "results": wandb.Table(columns=columns, data=rows),
                "frontier": wandb.Image(str(ref.path / "frontier.png")),
                "domains": wandb.Image(str(ref.path / "domains.png")),
            }
        )
        for r in results["configurations"]:
            run.summary[f"{r['name']}/average"] = r["average"]
            run.summary[f"{r['name']}/bytes"] = r["bytes"]
            for key, value in (r.get("details") or {}).items():
                run.summary[f"{r['name']}/{key}"] = value
            for d, v in (r.get("vs_base") or {}).items():
                run.summary[f"{r['name']}/{d}/delta_vs_base"] = v["delta"]
                run.summary[f"{r['name']}/{d}/delta_vs_base_stderr"] = v["stderr"]
                run.summary[f"{r['name']}/{d}/changed_vs_base"] = v["changed"]


def results_table(results: dict) -> str:
    """Markdown: rows = configurations, columns = domains (score ± stderr), average, bytes."""
    domains = list(results["tasks"])
    head = "| configuration | " + " | ".join(f"{d} ({results['tasks'][d]})" for d in domains)
    head += " | average | MiB | rel. bytes |\n"
    head += "|" + "---|" * (len(domains) + 4) + "\n"
    lines = []
    for r in results["configurations"]:
        cells = []
        for d in domains:
            s, e = r["scores"][d], r["stderr"][d]
            cells.append(f"{100 * s:.1f} ± {100 * e:.1f}" if e is not None and not math.isnan(e) else f"{100 * s:.1f}")
        lines.append(
            f"| {r['name']} | " + " | ".join(cells) + f" | {100 * r['average']:.1f} | {r['bytes'] / 2**20:.1f} | {r['relative_bytes']:.2f} |"
        )
    return head + "\n".join(lines) + "\n"


STAGES.register("eval")(Stage("eval", per_domain=False, plan=plan, run=run))
from . import eval_baselines  # noqa: E402,F401
from . import eval_trained  # noqa: E402,F401
from . import eval_routed  # noqa: E402,F401
