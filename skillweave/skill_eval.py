"""Configurations scored on skills' held-out tasks: the rows of the S2L and CAT comparisons.

A row is a model (the backbone, with adapters or a composition) scored on each skill's lm-eval task,
with or without the SKILL.md in the prompt: pass rate (every check passes) with its standard error,
each check's own rate, the prompt tokens per request (what the skill text costs) and the bytes held.
Every row is its own artifact (`<root>/skill_eval_rows/<name>-<key>/`, keyed by its inputs and
settings alone), so a killed comparison resumes at its first unscored cell (row and skill) and two comparisons share
the rows they have in common. The report pairs rows on the same tasks (reports.compare_with).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .core.artifacts import (
    ArtifactRef,
    artifact_lock,
    atomic_write_json,
    atomic_write_text,
    file_digest,
    make_ref,
    run_clock,
    write_jsonl,
    write_manifest,
)
from .core.engine import Context, Need
from .engines import ServedModels, resolve_backend
from .eval_tasks import task_digest
from .evaluation import evaluate
from .reports import compare_with, paired_table
from .skill import eval_task_name

log = logging.getLogger("skillweave")

ROWS = "skill_eval_rows"


@dataclass(frozen=True)
class Row:
    """One configuration: `build(inputs)` -> (model, bytes held, details), made once per row; `select(model,
    skill)` readies it for one skill (e.g. switches to that skill's adapter)."""

    name: str
    needs: tuple[str, ...]
    """The comparison's inputs this row reads (its key covers exactly these)."""
    build: Callable[[dict[str, ArtifactRef]], tuple[Any, int, dict]]
    with_skill_text: bool = False
    select: Callable[[Any, str], None] = lambda model, skill: None
    settings: dict = field(default_factory=dict)
    """What else its scores depend on (e.g. a merge's density), hashed into its key."""


def adapter_needs(ctx: Context, skills: Sequence[str]) -> dict[str, Need]:
    """Each skill's S2L adapter (stage s2l under `skill=<name>`), as the inputs `s2l_<name>`."""
    return {f"s2l_{name}": Need(ctx.variant(f"skill={name}"), "s2l") for name in skills}


def backbone(ctx: Context) -> Callable[[dict[str, ArtifactRef]], tuple[Any, int, dict]]:
    """A row's build for the backbone alone."""
    from .deltas import param_bytes
    from .models import load_model

    def build(inputs):
        model = load_model(ctx.model_dir)
        return model, param_bytes(model), {}

    return build


def served(ctx: Context) -> dict:
    """What serving through vLLM adds to a key (nothing under HF: keys made before the backend existed stay)."""
    if ctx.cfg.skill_eval.backend != "vllm":
        return {}
    return {"backend": "vllm", "vllm_adapters": str(ctx.cfg.eval.vllm_adapters)}


def settings_key(ctx: Context) -> dict:
    """`skill_eval` as a comparison's key holds it."""
    se = asdict(ctx.cfg.skill_eval)
    del se["backend"]
    return se | served(ctx)


def check_backend(ctx: Context, domain=None) -> None:
    """skill_eval.backend=vllm without a vLLM environment: one line before any model loads."""
    if ctx.cfg.skill_eval.backend == "vllm":
        resolve_backend("vllm", ctx.cfg.model.vllm_python, "skill_eval.backend")


def row_ref(ctx: Context, row: Row, skills: Sequence[str], inputs: dict[str, ArtifactRef]) -> ArtifactRef:
    tasks = {s: eval_task_name(s, row.with_skill_text) for s in skills}
    se = ctx.cfg.skill_eval
    config = {"configuration": row.name,
              "skill_eval": {"n": se.n, "max_gen_toks": se.max_gen_toks, "batch_size": se.batch_size} | served(ctx),
              "tasks": tasks, "task_files": task_digest(list(tasks.values())), "model": ctx.base_fingerprint,
              "settings": row.settings}
    return make_ref(ctx.root, ROWS, row.name, config, {k: inputs[k] for k in row.needs})


def finished_cell(out: ArtifactRef, skill: str) -> dict | None:
    """A cell an unfinished row already scored (a killed in-context row loses one skill, not four), or None.
    The cell file is written after its samples and names their sha256: samples that differ are not reused."""
    cell_file, samples = out.path / f"{skill}.cell.json", out.path / f"{skill}.jsonl"
    if not (cell_file.exists() and samples.exists()):
        return None
    cell = json.loads(cell_file.read_text())
    return cell if cell.pop("sha256") == file_digest(samples) else None


def score(model, tok, skill: str, with_skill_text: bool, ctx: Context, engines: ServedModels | None = None) -> dict:
    """The row's cell for one skill: pass rate, stderr, n, each check's rate, prompt tokens per request, samples,
    and what decoded them (`engines`: vLLM where it serves `model`, else HF)."""
    se = ctx.cfg.skill_eval
    task = eval_task_name(skill, with_skill_text)
    engine = engines.engine_for(model) if engines is not None else None
    r = evaluate(None if engine else model, tok, [task], limit=se.n, max_gen_toks=se.max_gen_toks,
                 batch_size=se.batch_size, compiled_decode=ctx.cfg.model.compiled_decode, engine=engine)[task]
    samples = r["samples"]
    tokens = [len(tok(s["prompt"], add_special_tokens=False)["input_ids"]) for s in samples]
    checks = {c: sum(s["also"][c] for s in samples) / len(samples) for c in samples[0].get("also", {})}
    return {"task": task, "score": r["score"], "stderr": r["stderr"], "n": r["n"], "checks": checks,
            "prompt_tokens": sum(tokens) / len(tokens), "served_by": engine.label if engine else "hf", "samples": samples}


def run_rows(ctx: Context, ref: ArtifactRef, rows: Sequence[Row], skills: Sequence[str], inputs: dict[str, ArtifactRef],
             references: Sequence[str], title: str) -> dict:
    """Score every row on every skill (reusing complete row artifacts), pair them with each of `references`,
    and write results.json, results.md and the samples into `ref`; returns the results."""
    from .models import load_tokenizer

    tok = load_tokenizer(ctx.model_dir)
    samples_dir = ref.path / "samples"
    samples_dir.mkdir(exist_ok=True)
    results = []
    for row in rows:
        out = row_ref(ctx, row, skills, inputs)
        with artifact_lock(out):
            if not out.complete:
                with run_clock(out) as started:
                    model, nbytes, details = row.build(inputs)
                    cells = {}
                    vllm = ctx.cfg.skill_eval.backend == "vllm"
                    with ServedModels(ctx, out.path) if vllm else nullcontext() as engines:
                        for skill in skills:
                            cells[skill] = finished_cell(out, skill)
                            if cells[skill] is not None:
                                log.info("%s on %s: %.3f, scored before: reused", row.name, skill,
                                         cells[skill]["score"])
                                continue
                            row.select(model, skill)
                            cell = score(model, tok, skill, row.with_skill_text, ctx, engines)
                            write_jsonl(out.path / f"{skill}.jsonl", cell.pop("samples"))
                            digest = file_digest(out.path / f"{skill}.jsonl")
                            atomic_write_json(out.path / f"{skill}.cell.json", cell | {"sha256": digest})
                            cells[skill] = cell
                            log.info("%s on %s: %.3f ± %.3f", row.name, skill, cell["score"], cell["stderr"])
                    del model
                    if vllm:  # what decoded each skill's answers
                        details = details | {"served_by": {s: c["served_by"] for s, c in cells.items()}}
                    result = {"name": row.name, "bytes": nbytes, "with_skill_text": row.with_skill_text,
                              "scores": {s: c["score"] for s, c in cells.items()},
                              "stderr": {s: c["stderr"] for s, c in cells.items()},
                              "n": {s: c["n"] for s, c in cells.items()},
                              "tasks": {s: c["task"] for s, c in cells.items()},
                              "checks": {s: c["checks"] for s, c in cells.items()},
                              "prompt_tokens": {s: c["prompt_tokens"] for s, c in cells.items()},
                              "average": sum(c["score"] for c in cells.values()) / len(cells),
                              "details": details}
                    atomic_write_json(out.path / "row.json", result)
                    write_manifest(out, {"average": result["average"]}, started)
            else:
                log.info("skill eval row %s is complete: reused", out)
        results.append(json.loads((out.path / "row.json").read_text()) | {"row": str(out)})
        for skill in skills:
            shutil.copyfile(out.path / f"{skill}.jsonl", samples_dir / f"{row.name}-{skill}.jsonl")
    for reference in references:
        compare_with(results, samples_dir, reference)
    base_bytes = next((r["bytes"] for r in results if r["name"] == "base"), results[0]["bytes"])
    for r in results:
        r["relative_bytes"] = round(r["bytes"] / base_bytes, 4)
    report = {"title": title, "tasks": {s: eval_task_name(s, False) for s in skills}, "n": ctx.cfg.skill_eval.n,
              "max_gen_toks": ctx.cfg.skill_eval.max_gen_toks, "references": list(references), "configurations": results}
    atomic_write_json(ref.file("results"), report)
    table = skill_table(report) + checks_table(report) + "".join(paired_table(report, r) for r in references)
    atomic_write_text(ref.file("table"), table)
    print(table)
    return report


def skill_table(report: dict) -> str:
    """Markdown: pass rate ± stderr per skill, prompt tokens per request, MiB held and relative bytes."""
    skills = list(report["tasks"])
    head = f"## {report['title']}\n\nPass rate (%) on {report['n']} held-out tasks per skill ± standard error; " \
           "prompt tokens per request in brackets\n\n"
    head += "| configuration | skill text | " + " | ".join(skills) + " | average | MiB | rel. bytes |\n"
    head += "|" + "---|" * (len(skills) + 5) + "\n"
    lines = []
    for r in report["configurations"]:
        cells = [f"{100 * r['scores'][s]:.1f} ± {100 * r['stderr'][s]:.1f} [{r['prompt_tokens'][s]:.0f}]" for s in skills]
        lines.append(f"| {r['name']} | {'yes' if r['with_skill_text'] else 'no'} | " + " | ".join(cells)
                     + f" | {100 * r['average']:.1f} | {r['bytes'] / 2**20:.2f} | {r['relative_bytes']:.3f} |")
    return head + "\n".join(lines) + "\n"


def checks_table(report: dict) -> str:
    """Markdown: each check's pass rate per configuration and skill. A pass needs every check, so where
    every row scores 0 these rates are what tells the rows apart (e.g. a commit header right, its date not)."""
    out = ""
    for s in report["tasks"]:
        checks = list(report["configurations"][0]["checks"][s])
        out += f"\n### {s}: each check's pass rate (%)\n\n| configuration | " + " | ".join(checks) + " |\n"
        out += "|" + "---|" * (len(checks) + 1) + "\n"
        for r in report["configurations"]:
            out += f"| {r['name']} | " + " | ".join(f"{100 * r['checks'][s][c]:.0f}" for c in checks) + " |\n"
    return out


def adapter_nbytes(adapter_dir: Path) -> int:
    from .lora_io import adapter_tensors

    return sum(t.numel() * t.element_size() for t in adapter_tensors(adapter_dir).values())
