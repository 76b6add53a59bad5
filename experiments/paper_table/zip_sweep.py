"""SkillZip settings side by side on one domain's residual, by what each zip artifact's manifest measured.

    python experiments/paper_table/zip_sweep.py ~/.cache/skillweave/experiments/paper_table arith [--out FILE.json]

One row per complete zip/<domain>-<key> artifact under the root that measured fidelity (zip.fidelity_prompts
> 0): the settings it differs from the defaults by, its bytes, the per-layer relative errors of the
reconstructed residual and the next-token KL against the exact residual on held-out prompts, of the
integer path (served) and the fp path, with `kl_backbone` (the merged backbone alone: what the residual is
worth) as the scale: `kept` = 1 - kl_skillpack / kl_backbone. Rows are sorted by kl_skillpack. The
prompts are the domain's own samples, not eval documents: a proxy that chooses which settings to evaluate
(recipes' eval then measures the gain itself).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from skillweave.config import ZipConfig

DEFAULTS = asdict(ZipConfig())


def rows(root: Path, domain: str) -> list[dict]:
    out = []
    for path in sorted((root / "zip").glob(f"{domain}-*")):
        if not (path / "manifest.json").is_file():
            continue
        metrics = json.loads((path / "manifest.json").read_text())["metrics"]
        if "kl_skillpack" not in metrics:
            continue
        settings = json.loads((path / "config.json").read_text())["config"]["zip"]
        changed = {k: v for k, v in settings.items() if k in DEFAULTS and v != DEFAULTS[k] and k != "fidelity_prompts"}
        out.append({
            "artifact": path.name,
            "settings": changed,
            "fidelity_prompts": settings.get("fidelity_prompts"),
            "bytes": metrics["bytes"],
            "mean_layer_rel_error": metrics["mean_layer_rel_error"],
            "embedding_rel_error": metrics.get("embedding_rel_error"),
            "kl_skillpack": metrics["kl_skillpack"],
            "kl_skillpack_fp": metrics["kl_skillpack_fp"],
            "kl_backbone": metrics["kl_backbone"],
            "kept": 1 - metrics["kl_skillpack"] / metrics["kl_backbone"] if metrics["kl_backbone"] else None,
        })
    return sorted(out, key=lambda r: r["kl_skillpack"])


def table(found: list[dict]) -> str:
    head = ("| settings (vs defaults) | prompts | KiB | mean layer err | emb err | KL int | KL fp | KL backbone "
            "| kept |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in found:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(r["settings"].items())) or "defaults"
        emb = "-" if r["embedding_rel_error"] is None else f"{r['embedding_rel_error']:.3f}"
        kept = "-" if r["kept"] is None else f"{100 * r['kept']:.1f}%"
        lines.append(f"| {settings} | {r['fidelity_prompts']} | {r['bytes'] / 1024:,.0f} | "
                     f"{r['mean_layer_rel_error']:.3f} | {emb} | {r['kl_skillpack']:.5f} | "
                     f"{r['kl_skillpack_fp']:.5f} | {r['kl_backbone']:.5f} | {kept} |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="the artifacts root")
    parser.add_argument("domain")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    found = rows(args.root, args.domain)
    if not found:
        raise SystemExit(f"no complete zip/{args.domain}-* artifact with a fidelity measurement under {args.root} "
                         "(zip.fidelity_prompts > 0)")
    print(table(found))
    if args.out is not None:
        args.out.write_text(json.dumps(found, indent=1) + "\n")


if __name__ == "__main__":
    main()
