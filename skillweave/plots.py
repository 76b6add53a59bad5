"""Figures of an eval stage's results.json: the score/bytes frontier and per-domain scores.

Drawn on matplotlib Figures without pyplot, so no display or GUI backend is needed on a cluster node;
each PNG is written to a temporary sibling and renamed, so a killed job never leaves a truncated figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from .core.artifacts import tmp_path_for


def _save(fig, path: Path) -> None:
    path = Path(path)
    with tmp_path_for(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def average_stderr(row: dict) -> float:
    """The standard error of a row's average over its domains, sqrt(sum of squared stderrs) / domains (each
    domain's documents are its own sample); a domain without a stderr counts as 0, and all without: nan.

    >>> average_stderr({"stderr": {"a": 0.03, "b": 0.04}})
    0.025
    """
    errs = [e for e in row["stderr"].values() if e is not None and not math.isnan(e)]
    return math.sqrt(sum(e * e for e in errs)) / len(row["stderr"]) if errs else math.nan


def documents(results: dict) -> dict[str, int]:
    """Per domain, the documents the eval scored: the most any row was scored on (a task smaller than
    eval.limit holds fewer than the limit says, and a row such as skillweave_intcheck scores a subset).

    >>> documents({"tasks": {"a": "t"}, "configurations": [{"n": {"a": 100}}, {"n": {"a": 120}}]})
    {'a': 120}
    """
    return {d: max((r.get("n") or {}).get(d, 0) for r in results["configurations"]) for d in results["tasks"]}


def on_a_subset(row: dict, full: dict[str, int]) -> int | None:
    """The most documents per domain `row` was scored on where it scored fewer than the eval in some domain
    (its average is then over other documents than the other rows': not comparable), else None."""
    n = row.get("n") or {}
    return max(n.values()) if any(n.get(d, k) < k for d, k in full.items()) else None


def _label(row: dict, full: dict[str, int]) -> str:
    sub = on_a_subset(row, full)
    return row["name"] if sub is None else f"{row['name']} (first {sub} docs: not comparable)"


def _title(results: dict, full: dict[str, int]) -> str:
    if any(full.values()):
        return "documents per task: " + ", ".join(f"{d} {k}" for d, k in full.items())
    return f"limit={results.get('limit')} per task"


def frontier_plot(results: dict, path: Path) -> None:
    """Average score (%) against bytes held (log x), one point per configuration (in the legend) with the
    average's standard error as its error bar, and the memory budget as a vertical line when
    results["budget_bytes"] is set: the better configurations sit up and to the left. A row scored on a
    subset of the documents is drawn hollow and says so in the legend."""
    rows = results["configurations"]
    full = documents(results)
    fig = Figure(figsize=(8, 4))
    ax = fig.subplots()
    colors = matplotlib.colormaps["tab20"].colors  # 20 distinct: the paper table has 12 rows
    for i, r in enumerate(rows):  # a legend, not labels at the points: most rows hold about the backbone's bytes
        over = r.get("within_budget") is False
        se = average_stderr(r)
        color = colors[i % len(colors)]
        ax.errorbar(r["bytes"], 100 * r["average"], yerr=None if math.isnan(se) else 100 * se, fmt="x" if over else "o",
                    capsize=3, zorder=3, color=color, mfc="none" if on_a_subset(r, full) else color,
                    label=_label(r, full) + (" (over budget)" if over else ""))
    budget = results.get("budget_bytes")
    if budget is not None:
        ax.axvline(budget, color="red", linestyle="--", label=f"budget {budget / 2**20:.0f} MiB")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("bytes held (log)")
    ax.set_ylabel("average score (%)")
    ax.set_title(f"score vs memory ({_title(results, full)})")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def domain_bars(results: dict, path: Path) -> None:
    """Grouped bars: per domain, one bar per configuration with its stderr as the error bar (none
    where lm-eval gave no stderr); a row scored on a subset of the documents is hatched and says so."""
    rows = results["configurations"]
    domains = list(results["tasks"])
    full = documents(results)
    width = 0.8 / len(rows)
    fig = Figure(figsize=(max(6, 1.5 * len(domains) * len(rows) / 3), 4))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(domains))]
        errs = [r["stderr"].get(d) for d in domains]
        errs = [100 * e if e is not None and not math.isnan(e) else 0.0 for e in errs]
        ax.bar(xs, [100 * r["scores"][d] for d in domains], width, yerr=errs, capsize=2, label=_label(r, full),
               hatch="//" if on_a_subset(r, full) else None)
    ax.set_xticks(range(len(domains)), [f"{d}\n({results['tasks'][d]})" for d in domains], fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_title(_title(results, full))
    ax.legend(fontsize=8, ncol=2)
    _save(fig, path)


def paired_bars(results: dict, reference: str, path: Path) -> bool:
    """Grouped bars: per domain, each configuration's paired score difference from `reference` (points, on
    the same documents) with two standard errors as the error bar, a bar clear of zero being a difference
    at ~95%. Far tighter than the per-domain bars' own stderrs, which ignore the pairing. False (nothing
    written) when no row was compared with `reference`."""
    key = f"vs_{reference}"
    rows = [r for r in results["configurations"] if r.get(key)]
    if not rows:
        return False
    domains = list(results["tasks"])
    width = 0.8 / len(rows)
    colors = matplotlib.colormaps["tab20"].colors
    fig = Figure(figsize=(max(6, 1.5 * len(domains) * len(rows) / 3), 4))
    ax = fig.subplots()
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(domains))]
        cells = [r[key].get(d) for d in domains]
        heights = [100 * c["delta"] if c else math.nan for c in cells]  # no bar where a domain was not compared
        errs = [200 * c["stderr"] if c and not math.isnan(c["stderr"]) else 0.0 for c in cells]
        ax.bar(xs, heights, width, yerr=errs, capsize=2, color=colors[i % len(colors)], label=r["name"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(domains)), [f"{d}\n({results['tasks'][d]})" for d in domains], fontsize=8)
    ax.set_ylabel(f"points vs {reference} (± 2 SE, paired)")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    _save(fig, path)
    return True
