"""Stage 3: lm-eval across domains for each eval configuration, with the bytes each one holds.

The configurations are plugins (skillweave/eval_configs/, listed there); this stage only runs the
ones `eval.configurations` names. Each configuration's row is its own artifact
(`<root>/eval_rows/<name>-<key>/`, keyed by what that row reads), and so is each of its scores on one
domain (`<root>/eval_cells/<name>-<domain>-<key>/`, keyed by that domain's task and limit): a killed eval
resumes at its first unscored domain, another comparison reuses every row it shares, and one that
changes a domain's task (a second eval on HumanEval) re-scores only that domain. A configuration that
scores by itself keeps its units as cells too (`Scorer.cached`: the routed row's per-skillpack groups,
the integer-path check's domains). Every row is paired with each row of `eval.compare_to` (base by
default) on the documents they share; results.json, results.md, the frontier and per-domain plots and a
W&B run are written from the rows.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import nullcontext
from dataclasses import asdict
from typing import Optional

from ..core.artifacts import (
    ArtifactRef,
    artifact_lock,
    atomic_write_json,
    atomic_write_text,
    make_ref,
    run_clock,
    write_jsonl,
    write_manifest,
)
from ..core.configurations import CONFIGURATIONS, Scorer, eval_limits, eval_needs, eval_tasks, limits_key
from ..core.engine import Context, Stage, register_stage
from ..engines import ServedModels, resolve_backend
from ..eval_tasks import task_digest
from ..evaluation import evaluate
from ..plots import domain_bars, frontier_plot, paired_bars
from ..reports import (
    apply_budget,
    budget_note,
    compare_with,
    log_results,
    paired_table,
    results_table,
)

log = logging.getLogger("skillweave")


def plan(ctx: Context, domain: Optional[str]):
    ev = asdict(ctx.cfg.eval)
    if ctx.cfg.eval.backend != "vllm":
        del ev["vllm_adapters"]  # HF serves every row: nothing it changes (keys made before it existed stay)
    config = {"eval": ev, "tasks": eval_tasks(ctx), "model": ctx.base_fingerprint,
              "task_files": task_digest(list(eval_tasks(ctx).values()))} | limits_key(ctx)
    settings = {name: CONFIGURATIONS.get(name).settings(ctx) for name in ctx.cfg.eval.configurations}
    config["settings"] = {name: s for name, s in settings.items() if s}
    return config, eval_needs(ctx)


ROWS = "eval_rows"
"""Where each configuration's row lives as its own artifact (`<root>/eval_rows/<name>-<key>/`)."""


def _decoding(ev) -> dict:
    """The eval settings that change an answer, as every row, cell and unit key holds them."""
    return ({"max_gen_toks": ev.max_gen_toks, "batch_size": ev.batch_size, "integer_path": ev.integer_path}
            | ({"backend": "vllm"} if ev.backend == "vllm" else {}))


def row_ref(ctx: Context, name: str, inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    """The artifact of one configuration's row: keyed by what that row depends on (its own inputs and
    settings, the tasks and generation settings), not by the other configurations of the eval, so a
    comparison that adds a configuration reuses every row it already has (base is evaluated once)."""
    conf = CONFIGURATIONS.get(name)
    config = {
        "configuration": name,
        "eval": {"limit": ctx.cfg.eval.limit} | _decoding(ctx.cfg.eval),
        "tasks": eval_tasks(ctx),
        "model": ctx.base_fingerprint,
        "task_files": task_digest(list(eval_tasks(ctx).values())),
        "settings": conf.settings(ctx),
    } | limits_key(ctx)
    mine = {k: inputs[k] for k in conf.needs(ctx)}
    return make_ref(ctx.root, ROWS, name, config, mine)


CELLS = "eval_cells"
"""Where one configuration's score on one domain lives (`<root>/eval_cells/<name>-<domain>-<key>/`), and
each unit a configuration scores by itself (`<root>/eval_cells/<name>-<unit>-<key>/`)."""
CELL_OUTPUTS = {"samples": "samples.jsonl", "score": "score.json"}


def _cell(ctx: Context, name: str, inputs: dict[str, ArtifactRef], label: str, what: dict,
          outputs: dict[str, str]) -> ArtifactRef:
    """A cell of configuration `name`'s row: keyed by `what` it scores, the generation settings and the
    row's own inputs and settings."""
    conf = CONFIGURATIONS.get(name)
    config = {"configuration": name, **what, "eval": _decoding(ctx.cfg.eval), "model": ctx.base_fingerprint,
              "settings": conf.settings(ctx)}
    return make_ref(ctx.root, CELLS, f"{name}-{label}", config, {k: inputs[k] for k in conf.needs(ctx)},
                    outputs=outputs)


def cell_ref(ctx: Context, name: str, inputs: dict[str, ArtifactRef], domain: str) -> ArtifactRef:
    """The artifact of one configuration's score on one domain, keyed by that domain's task and limit alone
    (with the row's own inputs and settings): a killed row resumes at its first unscored domain, and an
    eval that changes one domain's task (a second eval on HumanEval for code) re-scores that domain only."""
    task = eval_tasks(ctx)[domain]
    what = {"domain": domain, "task": task, "task_files": task_digest([task]), "limit": eval_limits(ctx)[domain]}
    return _cell(ctx, name, inputs, domain, what, CELL_OUTPUTS)


def unit_ref(ctx: Context, name: str, inputs: dict[str, ArtifactRef], unit: str, config: dict) -> ArtifactRef:
    """The artifact of one unit a configuration scores by itself (`Scorer.cached`: a routed group), keyed by
    what the unit says it scores (`config`)."""
    return _cell(ctx, name, inputs, unit, {"unit": unit, "scores": config}, {"result": "result.json"})


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    ev, tasks, limits = ctx.cfg.eval, eval_tasks(ctx), eval_limits(ctx)
    (ref.path / "samples").mkdir(exist_ok=True)

    def scorer(name: str, row: ArtifactRef, served: ServedModels | None, served_by: dict) -> Scorer:
        def score(model, tok, d: str, details=None) -> dict:
            cell = cell_ref(ctx, name, inputs, d)
            with artifact_lock(cell):
                if cell.complete:
                    log.info("eval cell %s is complete: reused", cell)
                else:
                    with run_clock(cell) as started:
                        engine = served.engine_for(model) if served is not None else None
                        res = evaluate(None if engine else model, tok, [tasks[d]], limit=limits[d],
                                       max_gen_toks=ev.max_gen_toks, batch_size=ev.batch_size,
                                       compiled_decode=ctx.cfg.model.compiled_decode, engine=engine)
                        r = res[tasks[d]]
                        # Every answer is kept: which ones a skillpack changed is as telling as the score.
                        write_jsonl(cell.file("samples"), r["samples"])
                        atomic_write_json(cell.file("score"), {
                            "score": r["score"], "stderr": r["stderr"], "n": r["n"], "metric": r["metric"],
                            "served_by": engine.label if engine is not None else "hf",
                            **({"details": details()} if details is not None else {})})
                        write_manifest(cell, {"score": r["score"]}, started)
            shutil.copyfile(cell.file("samples"), row.path / "samples" / f"{d}.jsonl")
            result = json.loads(cell.file("score").read_text())
            served_by[d] = result.pop("served_by")
            return result

        def cached(unit: str, config: dict, compute) -> dict:
            cell = unit_ref(ctx, name, inputs, unit, config)
            with artifact_lock(cell):
                if cell.complete:
                    log.info("eval cell %s is complete: reused", cell)
                else:
                    with run_clock(cell) as started:
                        atomic_write_json(cell.file("result"), compute())
                        write_manifest(cell, {}, started)
            return json.loads(cell.file("result").read_text())

        return Scorer(score, lambda model: served.engine_for(model) if served is not None else None, cached)

    def make_row(name: str, row: ArtifactRef) -> None:
        """Scores configuration `name` into its row artifact (the caller holds the row's lock)."""
        with run_clock(row) as started:
            (row.path / "samples").mkdir(exist_ok=True)
            served_by: dict[str, str] = {}
            with (ServedModels(ctx, row.path) if ev.backend == "vllm" else nullcontext()) as served:
                out = CONFIGURATIONS.get(name).run(ctx, inputs, scorer(name, row, served, served_by))
            if ev.backend == "vllm":
                out["details"] = {"served_by": served_by, **out.get("details", {})}  # a row's own wins
            for d, answers in out.get("samples", {}).items():
                write_jsonl(row.path / "samples" / f"{d}.jsonl", answers)
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

    # Each finished row is a complete artifact: a killed eval resumes at the first unfinished one, and
    # another eval with the same row (same inputs and settings) reads it instead of recomputing. A row that
    # another job is making (a second eval beside this one, another task of a sweep) is left to it: this
    # eval makes its other rows first and then waits its turn for that one, which it then reuses. Where
    # another job is making an input (the multitask DPO), the engine calls this with the others first
    # (`partial_inputs`): the rows they suffice for are made, and the rest waits for the second call.
    ready = [name for name in ev.configurations if CONFIGURATIONS.get(name).needs(ctx).keys() <= inputs.keys()]
    refs = {name: row_ref(ctx, name, inputs) for name in ready}
    busy = []
    for name, row in refs.items():
        with artifact_lock(row, wait=False) as held:
            if not held:
                log.info("eval row %s is being made by another job: its turn comes after the other rows", row)
                busy.append(name)
            elif not row.complete:
                make_row(name, row)
            else:
                log.info("eval row %s is complete: reused", row)
    if len(ready) < len(ev.configurations):
        log.info("eval rows %s wait for inputs another job is making",
                 ", ".join(n for n in ev.configurations if n not in refs))
        return {}
    for name in busy:
        with artifact_lock(refs[name]):
            if not refs[name].complete:  # the other job stopped before finishing it
                make_row(name, refs[name])
    rows = []
    for name, row in refs.items():
        rows.append(json.loads((row.path / "row.json").read_text()) | {"row": str(row)})
        for f in sorted((row.path / "samples").glob("*.jsonl")):
            shutil.copyfile(f, ref.path / "samples" / f"{name}-{f.name}")
    for reference in ev.compare_to:
        compare_with(rows, ref.path / "samples", reference)
    base_bytes = next((r["bytes"] for r in rows if r["name"] == "base"), rows[0]["bytes"])
    for r in rows:
        r["relative_bytes"] = round(r["bytes"] / base_bytes, 4)
    # Over-budget configurations stay in the table, flagged and listed, never silently dropped.
    _, excluded = apply_budget(rows, ev.budget_bytes)
    results = {
        "tasks": tasks,
        "limit": ev.limit,
        "limits": limits,
        "max_gen_toks": ev.max_gen_toks,
        "budget_bytes": ev.budget_bytes,
        "excluded": excluded,
        "configurations": rows,
    }
    atomic_write_json(ref.file("results"), results)
    table = results_table(results) + "".join(paired_table(results, r) for r in ev.compare_to)
    table += budget_note(ev.budget_bytes, excluded)
    atomic_write_text(ref.file("table"), table)
    frontier_plot(results, ref.path / "frontier.png")
    domain_bars(results, ref.path / "domains.png")
    for reference in ev.compare_to:
        paired_bars(results, reference, ref.path / f"paired_{reference}.png")
    log_results(ctx.cfg, results, ref)
    print(table)
    return {"configurations": len(rows)}


def check(ctx: Context, domain: Optional[str]) -> None:
    if ctx.cfg.eval.backend == "vllm":
        resolve_backend("vllm", ctx.cfg.model.vllm_python, "eval.backend")  # absent: one line before any model loads


def progress(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> str:
    """The rows complete, and for each unfinished one the domains it has scored (its complete cells); ""
    when none. Rows and cells are artifacts of their own: another process may have made them already.
    (A configuration's own units, `Scorer.cached`, are keyed by what they score, known only once it runs.)"""
    done, partial = 0, []
    for name in ctx.cfg.eval.configurations:
        if row_ref(ctx, name, inputs).complete:
            done += 1
            continue
        cells = [d for d in ctx.cfg.domains if cell_ref(ctx, name, inputs, d).complete]
        if cells:
            partial.append(f"{name}: {', '.join(cells)}")
    if not done and not partial:
        return ""
    return f"{done} of {len(ctx.cfg.eval.configurations)} rows complete" + "".join(f"; {p}" for p in partial)


register_stage(Stage(
    "eval", per_domain=False, plan=plan, run=run, outputs={"results": "results.json", "table": "results.md"},
    check=check, progress=progress, partial_inputs=True,
))
