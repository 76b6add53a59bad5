"""Copy an eval (or s2l_eval, cat_eval) artifact's report into an experiment folder, with the manifests of
everything it read.

    python experiments/collect.py artifacts/eval/all-<key> experiments/<name> [artifacts/dev/<label>-<key> ...]

Writes results.json, results.md, frontier.png, domains.png, paired_<row>.png and manifests.json ({"<stage>/<label>":
{"metrics", "seconds"}} over the eval's rows and inputs, their inputs, and so on down to generate,
and over any further artifact directories named, e.g. the dev artifacts a setting was chosen on).
A first artifact that is not an eval (a run stopped at the dev split) gives manifests.json only.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from skillweave.reports import lineage


def collect(eval_dir: Path, out: Path, extra: tuple[Path, ...] = ()) -> None:
    root = eval_dir.parent.parent
    is_eval = (eval_dir / "results.json").is_file()
    results = json.loads((eval_dir / "results.json").read_text()) if is_eval else {"configurations": []}
    rows = [root / r["row"] for r in results["configurations"] if "row" in r]
    manifests = lineage(root, [eval_dir, *rows, *extra])
    out.mkdir(parents=True, exist_ok=True)
    paired = [p.name for p in sorted(eval_dir.glob("paired_*.png"))]
    for name in ("results.json", "results.md", "frontier.png", "domains.png", *paired) if is_eval else ():
        if (eval_dir / name).is_file():  # an s2l_eval or cat_eval report has no plots
            shutil.copy2(eval_dir / name, out / name)
    (out / "manifests.json").write_text(json.dumps(manifests, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit("usage: python experiments/collect.py <eval (or dev) artifact dir> <experiment dir> [artifact dir ...]")
    collect(Path(sys.argv[1]), Path(sys.argv[2]), tuple(Path(p) for p in sys.argv[3:]))
