"""The paper table's questions, answered from its eval artifacts with paired standard errors.

    python experiments/paper_table/answers.py <eval artifact dir> [<eval artifact dir> ...] [--out DIR]
        [--manifests experiments/paper_table/manifests.json] [--variant LABEL=<eval artifact dir> ...]

Reads each eval's results.json and its per-document answers (samples/<row>-<domain>.jsonl); a column is
one (domain, task), so a second eval of the same artifacts on other tasks (HumanEval, the
default-difficulty math set) adds columns. Writes answers.md and answers.json to --out (default: this
folder) and prints the Markdown.

Every comparison is paired on the documents both rows answered. A share of the domain's own gain,
(row - base) / (dpo - base), gets a bootstrap standard error over documents (seeded); it is reported only
where the own gain (dpo - base) is beyond two standard errors, since a ratio to a gain that may be zero
says nothing. SkillZip retention is skillweave's share: dpo is the merged backbone plus the exact
residual, skillweave the same backbone plus the compressed one. Where skillweave is scored on the
skillpacks' fp path (served by vLLM), skillweave_intcheck - skillweave on its documents is what the
integer path changes. Agreement is the share of documents whose greedy response equals dpo's, character for
character: how much of each domain's own model a row reproduces, beyond what the score can resolve (two
answers that differ may score alike). A claim "holds" when its difference is
beyond two standard errors in the claimed direction, "fails" when beyond two in the other, and is
"unresolved" otherwise. With --manifests (what experiments/collect.py writes), a cost table: each
artifact's seconds by its manifest, and each stage's total. A --variant is an eval of the same rows under
other settings (rank-32 skillpacks, another seed): each of its rows that is another artifact than the
row of that name becomes `<row>@<LABEL>`, paired with that row and with base, with its share of the own gain.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from skillweave.evaluation import paired_difference

BOOTSTRAP = 2000
MERGES = ("merged_ties", "merged_task_arithmetic", "merged_dare_ties")
EQUAL_BYTES = ("bitdelta", "delta_come", "twin_merging")


@dataclass(frozen=True)
class Estimate:
    value: float
    stderr: float
    n: int

    def points(self) -> str:
        return f"{100 * self.value:+.1f} ± {100 * self.stderr:.1f}"

    def percent(self) -> str:
        return f"{100 * self.value:.0f}% ± {100 * self.stderr:.0f}%"


@dataclass
class Table:
    """Every row's per-document scores and responses by column ("domain (task)"), with the rows' results
    entries."""

    rows: dict[str, dict]
    scores: dict[str, dict[str, dict[int, float]]]
    columns: list[str]
    responses: dict[str, dict[str, dict[int, str]]] = field(default_factory=dict)

    def read(self, name: str, column: str, path: Path) -> None:
        """Adds a samples file's answers (one JSON line per document) as `name`'s on `column`."""
        answers = [json.loads(line) for line in path.read_text().splitlines()]
        self.scores.setdefault(name, {})[column] = {a["doc_id"]: float(a["score"]) for a in answers}
        self.responses.setdefault(name, {})[column] = {a["doc_id"]: a.get("response") for a in answers}


def load(eval_dirs: list[Path]) -> Table:
    table = Table({}, {}, [])
    for eval_dir in eval_dirs:
        results = json.loads((eval_dir / "results.json").read_text())
        for domain, task in results["tasks"].items():
            column = f"{domain} ({task})"
            if column in table.columns:  # the same cells scored again by a later eval
                continue
            table.columns.append(column)
            for r in results["configurations"]:
                table.rows.setdefault(r["name"], r)
                path = eval_dir / "samples" / f"{r['name']}-{domain}.jsonl"
                if path.is_file():
                    table.read(r["name"], column, path)
    return table


def add_variant(table: Table, eval_dir: Path, label: str) -> list[str]:
    """Adds the rows of `eval_dir` that are other artifacts than the table's rows of the same name (by
    results.json's `row`) as `<name>@<label>`, on the columns the table has; returns their names."""
    results = json.loads((eval_dir / "results.json").read_text())
    added = []
    for r in results["configurations"]:
        mine = table.rows.get(r["name"])
        if mine is not None and mine.get("row") is not None and mine.get("row") == r.get("row"):
            continue  # the same row, reused by the variant's eval
        name = f"{r['name']}@{label}"
        for domain, task in results["tasks"].items():
            path, column = eval_dir / "samples" / f"{r['name']}-{domain}.jsonl", f"{domain} ({task})"
            if column in table.columns and path.is_file():
                table.read(name, column, path)
        if name in table.scores:
            table.rows[name] = r
            added.append(name)
    return added


def _common(table: Table, column: str, names: tuple[str, ...]) -> list[int] | None:
    if any(column not in table.scores.get(n, {}) for n in names):
        return None
    ids = set.intersection(*(set(table.scores[n][column]) for n in names))
    return sorted(ids) or None


def paired(table: Table, row: str, reference: str, column: str) -> Estimate | None:
    """Mean per-document score of `row` minus `reference` on their common documents, ± its stderr."""
    ids = _common(table, column, (row, reference))
    if ids is None:
        return None
    delta, stderr = paired_difference([table.scores[reference][column][i] for i in ids],
                                      [table.scores[row][column][i] for i in ids])
    return Estimate(delta, stderr, len(ids))


def agreement(table: Table, row: str, reference: str, column: str) -> Estimate | None:
    """The share of common documents where `row`'s response equals `reference`'s, ± its binomial stderr;
    None where either has no responses there."""
    ids = _common(table, column, (row, reference))
    if ids is None or any(table.responses.get(n, {}).get(column) is None for n in (row, reference)):
        return None
    mine, theirs = table.responses[row][column], table.responses[reference][column]
    if any(mine[i] is None or theirs[i] is None for i in ids):
        return None
    p = sum(mine[i] == theirs[i] for i in ids) / len(ids)
    return Estimate(p, math.sqrt(p * (1 - p) / len(ids)), len(ids))


def share(table: Table, row: str, column: str, base: str = "base", full: str = "dpo") -> Estimate | None:
    """(row - base) / (full - base) on the documents all three answered, with a bootstrap stderr; None
    where a row is missing or the own gain (full - base) is not beyond two standard errors."""
    gain = paired(table, full, base, column)
    ids = _common(table, column, (row, base, full))
    if gain is None or ids is None or not gain.value > 2 * gain.stderr:
        return None
    s = {n: table.scores[n][column] for n in (row, base, full)}
    d_row = [s[row][i] - s[base][i] for i in ids]
    d_full = [s[full][i] - s[base][i] for i in ids]
    value = sum(d_row) / sum(d_full)
    rng, draws = random.Random(0), []
    for _ in range(BOOTSTRAP):
        pick = [rng.randrange(len(ids)) for _ in ids]
        denominator = sum(d_full[k] for k in pick)
        if denominator > 0:
            draws.append(sum(d_row[k] for k in pick) / denominator)
    mean = sum(draws) / len(draws)
    return Estimate(value, math.sqrt(sum((x - mean) ** 2 for x in draws) / (len(draws) - 1)), len(ids))


def average(estimates: list[Estimate | None]) -> Estimate | None:
    """The mean over columns of paired differences (columns are independent documents)."""
    if not estimates or any(e is None for e in estimates):
        return None
    k = len(estimates)
    return Estimate(sum(e.value for e in estimates) / k, math.sqrt(sum(e.stderr**2 for e in estimates)) / k,
                    sum(e.n for e in estimates))


def verdict(e: Estimate | None, direction: int = 1) -> str:
    """"holds" when the difference is beyond 2 stderr in `direction`, "fails" beyond 2 the other way."""
    if e is None:
        return "not measured"
    gap = direction * e.value
    return "holds" if gap > 2 * e.stderr else "fails" if -gap > 2 * e.stderr else "unresolved"


def _fmt(e: Estimate | None) -> str:
    return "-" if e is None else e.points()


def _grid(table: Table, title: str, cells: dict[str, list[Estimate | None]]) -> list[str]:
    """Points per column and their average; nothing when no row of it is in the eval."""
    cells = {name: es for name, es in cells.items() if any(e is not None for e in es)}
    if not cells:
        return []
    cols = table.columns + ["average"]
    out = [title, "", "| | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, estimates in cells.items():
        out.append(f"| {name} | " + " | ".join(_fmt(e) for e in [*estimates, average(estimates)]) + " |")
    return out + [""]


def _shares(table: Table, title: str, cells: dict[str, list[Estimate | None]], mean: bool = False) -> list[str]:
    """Shares per column, and their mean over columns where `mean` (not for ratios to each domain's own
    gain); nothing without rows."""
    cells = {name: es for name, es in cells.items() if any(e is not None for e in es)}
    if not cells:
        return []
    cols = table.columns + (["average"] if mean else [])
    out = [title, "", "| | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, estimates in cells.items():
        shown = [*estimates, average(estimates)] if mean else estimates
        out.append(f"| {name} | " + " | ".join("-" if e is None else e.percent() for e in shown) + " |")
    return out + [""]


def answers(table: Table, variants: tuple[str, ...] = ()) -> tuple[str, dict]:
    """The Markdown report and the numbers behind it; `variants` are add_variant's rows."""
    rows, cols = table.rows, table.columns
    present = [n for n in rows if n in table.scores and n not in variants]
    numbers: dict = {"columns": cols, "bytes": {n: rows[n]["bytes"] for n in [*present, *variants]}}

    def vs(row: str, ref: str) -> list[Estimate | None]:
        return [paired(table, row, ref, c) for c in cols]

    def shares(row: str) -> list[Estimate | None]:
        return [share(table, row, c) for c in cols]

    md = ["# The paper table's answers", "",
          "Points (score difference x 100) ± standard error, paired on the same documents; shares ± bootstrap "
          "standard error, '-' where the domain's own gain (dpo - base) is not beyond two standard errors or "
          "a row is missing. A claim holds when its difference is beyond two standard errors.", ""]
    gains = {"dpo": vs("dpo", "base")}
    md += _grid(table, "## Own gains: each domain's DPO model vs base", gains)

    merges = [m for m in MERGES if m in present]
    md += _grid(table, "## Interference: merged-only backbone vs the domain's own model (row - dpo)",
                {m: vs(m, "dpo") for m in merges})
    md += _shares(table, "Share of the own gain each merged-only backbone keeps, (merged - base) / (dpo - base)",
                  {m: shares(m) for m in merges})

    recovery = {"skillweave - dpo": vs("skillweave", "dpo")}
    recovery |= {f"skillweave - {m}": vs("skillweave", m) for m in merges}
    md += _grid(table, "## Recovery: skillweave (shared backbone + compressed skillpacks) vs dpo and vs the merges",
                recovery)
    retention = shares("skillweave")
    md += _shares(table, "SkillZip retention: skillweave's share of the own gain, (skillweave - base) / (dpo - base); "
                  "goal >= 95%", {"skillweave": retention})
    integer = {"skillweave_intcheck - skillweave": vs("skillweave_intcheck", "skillweave")}
    md += _grid(table, "The integer path (as deployed, decoded by HF) vs the fp path the skillweave row is scored on "
                "(served by vLLM), on the first documents of each domain", integer)
    agree = {n: [agreement(table, n, "dpo", c) for c in cols] for n in [*present, *variants] if n != "dpo"}
    md += _shares(table, "Agreement with the domains' own models: the share of documents whose greedy response "
                  "equals dpo's, character for character", agree, mean=True)
    def engines(n: str) -> set[str]:  # "vllm 0.32.0, folded" -> vllm; a row that does not say: none
        return {s.split()[0] for s in ((rows[n].get("details") or {}).get("served_by") or {}).values()}

    other = [n for n in agree if engines(n) and engines(n) != engines("dpo")]
    if other and engines("dpo"):
        md += [f"Decoded by another engine than dpo (its numerics differ too): {', '.join(other)}.", ""]
    md += ["| row | MiB | x base |", "|---|---|---|"]
    base_bytes = rows["base"]["bytes"] if "base" in rows else None
    for n in [*present, *variants]:
        ratio = f"{rows[n]['bytes'] / base_bytes:.2f}" if base_bytes else "-"
        md.append(f"| {n} | {rows[n]['bytes'] / 2**20:.1f} | {ratio} |")
    md.append("")

    equal = {f"skillweave - {b}": vs("skillweave", b) for b in EQUAL_BYTES if b in present}
    md += _grid(table, "## At (near) equal bytes: skillweave vs BitDelta, Delta-CoMe-style and Twin-Merging", equal)

    routed = {"skillweave_routed - skillweave": vs("skillweave_routed", "skillweave")}
    md += _grid(table, "## Routed vs oracle", routed)
    details = rows.get("skillweave_routed", {}).get("details") or {}
    if "confusion" in details:
        domains, matrix = details["confusion"]["domains"], details["confusion"]["matrix"]
        md += [f"Router accuracy on the eval prompts: {100 * details['router_accuracy']:.1f}% "
               "(rows: the prompt's domain, columns: the skillpack it was routed to)", "",
               "| | " + " | ".join(domains) + " |", "|" + "---|" * (len(domains) + 1)]
        md += [f"| {d} | " + " | ".join(map(str, line)) + " |" for d, line in zip(domains, matrix)] + [""]
        numbers["router"] = {"accuracy": details["router_accuracy"], "confusion": details["confusion"]}

    others = {f"{o} - skillweave": vs(o, "skillweave") for o in ("multitask", "lora") if o in present}
    md += _grid(table, "## Monolith and LoRA vs skillweave", others)

    changed = {f"{v} - {v.split('@')[0]}": vs(v, v.split("@")[0]) for v in variants}
    md += _grid(table, "## Variants: the same row under other settings, paired with it", changed)
    md += _grid(table, "Variants vs base", {f"{v} - base": vs(v, "base") for v in variants})
    md += _shares(table, "Variants' share of the own gain, (variant - base) / (dpo - base)",
                  {v: shares(v) for v in variants if not v.startswith("dpo@")})

    def claim(text: str, e: Estimate | None, direction: int = 1) -> tuple[str, Estimate | None, str]:
        return text, e, verdict(e, direction)

    ties = "merged_ties" if "merged_ties" in merges else (merges[0] if merges else None)
    merged = ties or "a merge"
    claims = [
        claim("DPO gains on each domain (dpo > base, average)", average(gains["dpo"])),
        claim(f"Merging loses specialisation ({merged} < dpo, average)",
              average(vs(ties, "dpo")) if ties else None, -1),
        claim(f"Skillweave recovers it (skillweave > {merged}, average)",
              average(vs("skillweave", ties)) if ties else None),
        claim("Skillweave loses to dpo (skillweave < dpo, average)", average(recovery["skillweave - dpo"]), -1),
        *(claim(f"Skillweave beats {b} at near-equal bytes (average)", average(vs("skillweave", b)))
          for b in EQUAL_BYTES if b in present),
        claim("Routing loses to the oracle (routed < skillweave, average)",
              average(routed["skillweave_routed - skillweave"]), -1),
        *(claim(f"Skillweave beats {o} (average)", average(vs("skillweave", o)))
          for o in ("multitask", "lora") if o in present),
    ]
    md += ["## Claims at this scale", "", "| claim | points | verdict |", "|---|---|---|"]
    md += [f"| {text} | {_fmt(e)} | {v} |" for text, e, v in claims] + [""]

    def dump(cells: dict[str, list[Estimate | None]]) -> dict:
        return {name: {c: (None if e is None else e.__dict__) for c, e in zip(cols, es)} for name, es in cells.items()}

    numbers |= {
        "own_gain": dump(gains), "interference": dump({m: vs(m, "dpo") for m in merges}),
        "kept_share": dump({m: shares(m) for m in merges}), "recovery": dump(recovery),
        "retention": dump({"skillweave": retention}), "integer_path": dump(integer), "agreement": dump(agree),
        "equal_bytes": dump(equal),
        "routed": dump(routed),
        "others": dump(others), "variants": dump(changed),
        "claims": [{"claim": t, "estimate": None if e is None else e.__dict__, "verdict": v} for t, e, v in claims],
    }
    return "\n".join(md), numbers


def cost(manifests: dict) -> str:
    """Markdown: seconds per artifact ("<stage>/<label>", as collect.py names them) and per stage, with the
    number of runs that made each (a manifest from before run clocks has its last run's seconds alone)."""
    lines = ["## Cost", "", "Seconds by each artifact's manifest, every run that made it (1 thread; eval rows include "
             "what they train, e.g. BitDelta's scale distillation). Runs `last`: a manifest written before the "
             "engine kept every run's time (2026-12-07), whose seconds are its last run's alone: an undercount where "
             "that run resumed a killed one.", "", "| artifact | seconds | runs |", "|---|---:|---:|"]
    totals: dict[str, float] = {}
    for name, m in sorted(manifests.items()):
        if m.get("seconds") is None:
            continue
        lines.append(f"| {name} | {m['seconds']:.0f} | {m.get('runs') or 'last'} |")
        stage = name.split("/", 1)[0]
        totals[stage] = totals.get(stage, 0.0) + m["seconds"]
    lines += ["", "| stage | seconds | hours |", "|---|---:|---:|"]
    lines += [f"| {stage} | {t:.0f} | {t / 3600:.1f} |" for stage, t in sorted(totals.items())]
    total = sum(totals.values())
    return "\n".join([*lines, f"| all | {total:.0f} | {total / 3600:.1f} |", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evals", nargs="+", type=Path, help="eval artifact directories (results.json + samples/)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--manifests", type=Path, help="collect.py's manifests.json: adds the cost table")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                        help="an eval of the same rows under other settings: its other rows as <row>@LABEL")
    args = parser.parse_args(argv)
    variants = []
    for v in args.variant:
        label, sep, path = v.partition("=")
        if not sep or not label or "@" in label:
            sys.exit(f"--variant {v}: write LABEL=<eval artifact dir>, e.g. rank32=artifacts/eval/all-<key>")
        variants.append((label, Path(path)))
    for d in [*args.evals, *(path for _, path in variants)]:
        if not (d / "results.json").is_file():
            sys.exit(f"{d}: no results.json; pass an eval artifact directory (artifacts/eval/all-<key>)")
    table = load(args.evals)
    if not table.scores:
        sys.exit(f"{', '.join(map(str, args.evals))}: no per-document answers (samples/<row>-<domain>.jsonl), which "
                 "every comparison here pairs: pass the eval artifact directory, not a collected experiment folder")
    added = tuple(name for label, path in variants for name in add_variant(table, path, label))
    md, numbers = answers(table, added)
    if args.manifests is not None:
        manifests = json.loads(args.manifests.read_text())
        md += "\n" + cost(manifests)
        numbers["seconds"] = {name: m.get("seconds") for name, m in manifests.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "answers.md").write_text(md)
    (args.out / "answers.json").write_text(json.dumps(numbers, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
