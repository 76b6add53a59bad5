"""The eval's reports: paired comparisons with base, Markdown tables, the memory budget, W&B."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from .core.artifacts import ArtifactRef, manifest_seconds
from .evaluation import paired_difference


def _read_samples(path: Path) -> dict[int, dict]:
    if not path.is_file():
        return {}
    return {r["doc_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def compare_with(rows: list[dict], samples: Path, reference: str = "base") -> None:
    """Adds `vs_<reference>[domain] = {delta, stderr, changed, n}` to every other row with answers on the
    reference row's docs (samples/<name>-<domain>.jsonl).

    A paired comparison on the same documents (evaluation.paired_difference): `delta` is the mean
    per-document score difference, row minus reference, `stderr` its standard error, `changed` the share
    of answers that differ. A gain "beyond the standard error" means delta > stderr; 2 x stderr is ~95%.
    """
    ref = next((r for r in rows if r["name"] == reference), None)
    if ref is None:
        return
    for r in rows:
        if r is ref:
            continue
        vs = {}
        for d in r["scores"]:
            mine = _read_samples(samples / f"{r['name']}-{d}.jsonl")
            theirs = _read_samples(samples / f"{reference}-{d}.jsonl")
            common = sorted(set(mine) & set(theirs))
            if not common:
                continue
            delta, stderr = paired_difference([theirs[i]["score"] for i in common], [mine[i]["score"] for i in common])
            changed = sum(mine[i]["response"] != theirs[i]["response"] for i in common) / len(common)
            vs[d] = {"delta": delta, "stderr": stderr, "changed": changed, "n": len(common)}
        if vs:
            r[f"vs_{reference}"] = vs


def paired_table(results: dict, reference: str = "base") -> str:
    """Markdown: each configuration's paired difference from `reference` per domain (delta ± stderr,
    answers changed); "" when no row was compared with it."""
    key = f"vs_{reference}"
    rows = [r for r in results["configurations"] if r.get(key)]
    if not rows:
        return ""
    domains = list(results["tasks"])
    head = (f"\nPaired with {reference} on the same documents: score difference in points (row minus {reference}) "
            "± its standard error (answers changed)\n\n")
    head += "| configuration | " + " | ".join(domains) + " |\n|" + "---|" * (len(domains) + 1) + "\n"
    lines = []
    for r in rows:
        cells = []
        for d in domains:
            v = r[key].get(d)
            cells.append("" if v is None else f"{100 * v['delta']:+.1f} ± {100 * v['stderr']:.1f} ({100 * v['changed']:.0f}%)")
        lines.append(f"| {r['name']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def lineage(root: Path, starts: list[Path], keys: tuple[str, ...] = ()) -> dict[str, dict]:
    """{"<stage>/<label>": {"metrics", "seconds", "runs"}} (seconds of every run that made it; runs None where
    the manifest predates run clocks and has the last run's alone) of the artifacts `starts` (directories
    under `root`) and the complete artifacts with these `keys`, and of everything they read, down to
    generate: what a comparison cost and what each stage recorded on the way (a second artifact of one stage
    and label, e.g. another merge method, gets its key appended)."""
    by_key = {p.name.rsplit("-", 1)[1]: p for p in root.glob("*/*-*") if (p / "manifest.json").is_file()}
    manifests, todo, seen = {}, [*starts, *(by_key[k] for k in keys if k in by_key)], set()
    while todo:
        path = todo.pop()
        if path in seen or not (path / "manifest.json").is_file():
            continue
        seen.add(path)
        manifest = json.loads((path / "manifest.json").read_text())
        config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else manifest
        name = f"{config['stage']}/{config['label']}"
        if name in manifests:
            name += f"/{path.name.rsplit('-', 1)[1]}"
        manifests[name] = {"metrics": manifest.get("metrics"), "seconds": manifest_seconds(manifest),
                           "runs": manifest.get("runs")}
        todo += [by_key[k] for k in config["inputs"].values() if k in by_key]
    return dict(sorted(manifests.items()))


def log_results(cfg, results: dict, ref: ArtifactRef) -> None:
    """The results table, per-configuration summary, plots, configs and the lineage (every artifact behind the
    comparison: its seconds and metrics) as one W&B run (job_type eval)."""
    from .tracking import wandb_run

    config = {"eval": asdict(cfg.eval), "merge": asdict(cfg.merge), "zip": asdict(cfg.zip), "dpo": asdict(cfg.dpo),
              "model": cfg.model.path, "domains": list(cfg.domains), "artifact": str(ref)}
    with wandb_run(cfg, "eval", f"eval-{ref.key}", config) as run:
        if run is None:
            return
        import wandb

        domains = list(results["tasks"])
        rows_read = [ref.root / r["row"] for r in results["configurations"] if "row" in r]
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
                **{p.stem: wandb.Image(str(p)) for p in sorted(ref.path.glob("paired_*.png"))},
                "lineage": wandb.Table(columns=["artifact", "seconds", "metrics"], data=[
                    [name, m["seconds"], json.dumps(m["metrics"], sort_keys=True, default=str)]
                    for name, m in lineage(ref.root, rows_read, tuple(ref.inputs.values())).items()]),
            }
        )
        for r in results["configurations"]:
            run.summary[f"{r['name']}/average"] = r["average"]
            run.summary[f"{r['name']}/bytes"] = r["bytes"]
            for key, value in (r.get("details") or {}).items():
                run.summary[f"{r['name']}/{key}"] = value
            for key in (k for k in r if k.startswith("vs_")):  # one per eval.compare_to row
                for d, v in r[key].items():
                    run.summary[f"{r['name']}/{d}/delta_{key}"] = v["delta"]
                    run.summary[f"{r['name']}/{d}/delta_{key}_stderr"] = v["stderr"]
                    run.summary[f"{r['name']}/{d}/changed_{key}"] = v["changed"]


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


def apply_budget(rows: list[dict], budget_bytes: Optional[int]) -> tuple[list[dict], list[dict]]:
    """Marks each result row `within_budget` (bytes <= budget_bytes; all rows when there is no budget).

    A configuration's bytes are known for sure only once it has been built, so every configuration is
    evaluated and the ones over budget are reported as excluded rather than silently dropped.

    Returns:
        (kept, excluded): the rows within budget, and {"name", "bytes"} of each row over it.
    """
    for r in rows:
        r["within_budget"] = budget_bytes is None or r["bytes"] <= budget_bytes
    kept = [r for r in rows if r["within_budget"]]
    excluded = [{"name": r["name"], "bytes": r["bytes"]} for r in rows if not r["within_budget"]]
    return kept, excluded


def budget_note(budget_bytes: Optional[int], excluded: list[dict]) -> str:
    """The line results.md gets under its table: the budget and what exceeded it ("" without a budget)."""
    if budget_bytes is None:
        return ""
    over = ", ".join(f"{e['name']} ({e['bytes'] / 2**20:.1f} MiB)" for e in excluded) or "none"
    return f"\nMemory budget {budget_bytes / 2**20:.1f} MiB; excluded (over budget): {over}\n"
