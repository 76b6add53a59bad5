"""Stage 1b: rule verifiers score every sample; passing and failing answers become DPO pairs.

A truncated answer (cut by the token limit) is never chosen: the chat template would close it with
an end token and teach the model to stop mid-sentence.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import shutil
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from tqdm import tqdm

from ..artifacts import ArtifactRef, atomic_write_json, atomic_write_text
from ..config import FilterConfig, PairStrategy
from ..pipeline import STAGES, Context, Stage, ref_for
from ..resources import resource_path
from .generate import SAMPLES

PAIRS = "pairs"


def rule_set_path(rules: str) -> Path:
    """`math` -> rules/math.yaml; anything with a slash or a .yaml suffix is a path."""
    if "/" in rules or rules.endswith((".yaml", ".yml")):
        return Path(rules).expanduser().resolve()
    return resource_path("rules", f"{rules}.yaml")


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    path = rule_set_path(cfg.domain.rules)
    rules_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else str(path)
    return (
        {"rules": rules_digest, "filter": asdict(cfg.filter)},
        {"samples": ref_for(ctx, "generate", domain)},
    )


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from datasets import Dataset

    from ..rules import load_rule_set

    cfg = ctx.for_domain(domain)
    rule_set = load_rule_set(domain, rule_set_path(cfg.domain.rules))
    samples = [json.loads(line) for line in (inputs["samples"].path / SAMPLES).open()]
    scored = []
    for row in tqdm(samples, desc=f"filter[{domain}]", unit="sample"):
        verdict = rule_set.score(
            {"prompt": row["prompt"], "response": row["response"], "meta": {**row["meta"], "truncated": row["truncated"]}}
        )
        scored.append({**row, "passed": verdict["passed"], "score": verdict["score"], "rules": verdict["rules"]})
    atomic_write_text(ref.path / "scored.jsonl", "".join(json.dumps(r) + "\n" for r in scored))

    pairs = make_pairs(scored, cfg.filter)
    report = pair_report(scored, pairs)
    atomic_write_json(ref.path / "report.json", report)
    if len(pairs) < cfg.filter.min_pairs:
        raise ValueError(
            f"filter left {len(pairs)} pairs for domain {domain} (filter.min_pairs={cfg.filter.min_pairs}) from "
            f"{len(scored)} samples, {report['pass_rate']:.0%} passing: sample more prompts or answers "
            f"(domain.sampling.num_prompts, domain.sampling.samples_per_prompt) or check {rule_set_path(cfg.domain.rules)}"
        )
    rows = [
        {
            "prompt": [{"role": "user", "content": c["prompt"]}],
            "chosen": [{"role": "assistant", "content": c["response"]}],
            "rejected": [{"role": "assistant", "content": r["response"]}],
            "prompt_id": c["prompt_id"],
            "chosen_score": c["score"],
            "rejected_score": r["score"],
        }
        for c, r in pairs
    ]
    tmp = ref.path / f".{PAIRS}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows).save_to_disk(str(tmp))
    shutil.rmtree(ref.path / PAIRS, ignore_errors=True)
    tmp.rename(ref.path / PAIRS)
    return report


def make_pairs(scored: list[dict], cfg: FilterConfig) -> list[tuple[dict, dict]]:
    """(chosen, rejected) pairs per prompt under the configured strategy, deduplicated."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in scored:
        by_prompt[row["prompt_id"]].append(row)
    pairs = []
    for rows in by_prompt.values():
        passing = sorted((r for r in rows if r["passed"] and not r["truncated"]), key=lambda r: (-r["score"], r["sample"]))
        failing = sorted((r for r in rows if not r["passed"]), key=lambda r: (r["score"], r["sample"]))
        if cfg.strategy == PairStrategy.best_vs_worst:
            if not passing or not failing:
                continue
            chosen = passing[0]
            # Among the equally worst, the one closest in length to the chosen: the pair then
            # differs in what the rules check, not in length (DPO's length bias).
            worst = [r for r in failing if r["score"] == failing[0]["score"]]
            rejected = min(worst, key=lambda r: abs(len(r["response"]) - len(chosen["response"])))
            candidates = [(chosen, rejected)]
        elif cfg.strategy == PairStrategy.all_pass_fail:
            candidates = list(itertools.product(passing, failing))
        else:
            raise ValueError(f"filter.strategy={cfg.strategy} is not implemented; valid: {[s.value for s in PairStrategy]}")
        kept, seen = [], set()
        for chosen, rejected in candidates:
            key = (chosen["response"], rejected["response"])
            if chosen["response"] == rejected["response"] or key in seen:
                continue
            if chosen["score"] - rejected["score"] < cfg.min_margin:
                continue
            seen.add(key)
            kept.append((chosen, rejected))
        pairs.extend(kept[: cfg.max_pairs_per_prompt])
    return pairs


def pair_report(scored: list[dict], pairs: list[tuple[dict, dict]]) -> dict:
    """Counts, pass rates per rule, and the chosen/rejected length ratio (DPO's length bias)."""
    per_rule: dict[str, list[bool]] = defaultdict(list)
    for row in scored:
        for name, verdict in row["rules"].items():
            per_rule[name].append(bool(verdict["passed"]))
    chosen_len = sum(len(c["response"]) for c, _ in pairs)
    rejected_len = sum(len(r["response"]) for _, r in pairs)
    return {
        "samples": len(scored),
        "prompts": len({r["prompt_id"] for r in scored}),
        "pass_rate": round(sum(r["passed"] for r in scored) / max(len(scored), 1), 4),
        "pass_rate_per_rule": {k: round(sum(v) / len(v), 4) for k, v in sorted(per_rule.items())},
        "truncated_fraction": round(sum(r["truncated"] for r in scored) / max(len(scored), 1), 4),
        "pairs": len(pairs),
        "chosen_rejected_length_ratio": round(chosen_len / rejected_len, 3) if rejected_len else None,
    }


STAGES.register("filter")(Stage("filter", per_domain=True, plan=plan, run=run))
