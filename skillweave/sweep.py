"""`skillweave-sweep <artifacts_root> [domain]` (or `python -m skillweave.sweep`): the dev-split table of a tuning sweep.

Every complete `stage=dev` artifact under the root (one per sweep point), best paired gain first:
the DPO settings, pairs, relative weight change, dev score before -> after, the paired gain ± its
standard error, pass rates, answers changed and truncation (skillweave/stages/dev.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional


def sweep_table(root: Path, domain: Optional[str] = None) -> str:
    """Markdown: every complete dev artifact under `root` (a sweep's points), best paired gain first."""
    rows = []
    for d in sorted((Path(root) / "dev").glob("*/manifest.json")):
        m = json.loads(d.read_text())
        if m["label"].endswith("-start") or (domain and m["label"] != domain):
            continue
        rows.append((m["label"], m["metrics"], d.parent.name))
    rows.sort(key=lambda r: -r[1]["delta"])
    head = ("| domain | lr | steps | beta | nll | rounds | pairs | weight change | dev score (start -> trained) | "
            "paired gain ± stderr | pass rate | changed | truncated | dev prompts | artifact |\n" + "|---" * 15 + "|\n")
    lines = [
        f"| {lab} | {m['dpo']['learning_rate']:g} | {m['dpo']['max_steps']} | {m['dpo']['beta']:g} | "
        f"{m['dpo'].get('nll_weight', 0.0):g} | {m['dpo']['rounds']} | "
        f"{m['pairs']} | {m['relative_weight_change']:.2e} | {m['score_start']:.3f} -> {m['score']:.3f} | "
        f"{100 * m['delta']:+.1f} ± {100 * m['delta_stderr']:.1f} | {m['pass_rate_start']:.0%} -> {m['pass_rate']:.0%} | "
        f"{m['changed']:.0%} | {m['truncated_start']:.0%} -> {m['truncated']:.0%} | {m['prompts']} | {name} |"
        for lab, m, name in rows
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or not Path(argv[0]).is_dir():
        sys.exit("usage: skillweave-sweep <artifacts_root> [domain]   (the root stage=dev wrote to)")
    print(sweep_table(Path(argv[0]), argv[1] if len(argv) == 2 else None), end="")


if __name__ == "__main__":
    main()
