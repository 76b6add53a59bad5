"""Stage 1b: rule verifiers score every sample; passing and failing answers become DPO pairs.

A truncated answer (cut by the token limit) is never chosen: the chat template would close it with
an end token and teach the model to stop mid-sentence; nor is one that fails a quality guard
(rules/quality.py: not English, a repetition loop), which format-only checkers would let through.
`filter.length_balance` matches chosen and rejected on length against DPO's length bias.
`filter.strategy=reference_vs_fail` takes the prompt source's reference answers as chosen instead of
the backbone's passing samples (off-policy), scored by the same rules first.

Writes scored.jsonl (every sample with its verdicts), report.json, the pairs (a datasets folder) and a
dataset card, card.md + card.json (counts, pass rates per rule, lengths, truncation, contamination,
settings), which is also logged to W&B unless W&B is disabled (skillweave/tracking.py).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import asdict, replace
from typing import Optional

import yaml
from tqdm import tqdm

from ..cards import card_markdown, contamination_summary, dataset_card, log_card
from ..config import LengthBalance, PairStrategy
from ..core.artifacts import ArtifactRef, atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from ..core.engine import Context, Need, Stage, register_stage
from ..core.errors import DataError
from ..pairs import (
    can_be_chosen,
    check_references,
    make_pairs,
    pair_report,
    reference_rows,
    rule_set_path,
    score_sample,
)
from ..rules import load_rule_set


def check(ctx: Context, domain: Optional[str]) -> None:
    """The whole rule set (file, rule names, kwargs) and, for reference_vs_fail, the source's references."""
    cfg = ctx.for_domain(domain)
    load_rule_set(domain, rule_set_path(cfg.domain.rules))
    if cfg.filter.strategy == PairStrategy.reference_vs_fail:
        check_references(cfg.domain.prompt_source.name, domain)


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    path = rule_set_path(cfg.domain.rules)
    rules_digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else str(path)
    return (
        {"rules": rules_digest, "filter": asdict(cfg.filter)},
        {"samples": Need(ctx, "generate", domain)},
    )


def run(ctx: Context, domain: Optional[str], ref: ArtifactRef, inputs: dict) -> dict:
    from datasets import Dataset

    cfg = ctx.for_domain(domain)
    rules_path = rule_set_path(cfg.domain.rules)
    rule_set = load_rule_set(domain, rules_path)
    samples = read_jsonl(inputs["samples"].file("samples"))
    scored = []
    for row in tqdm(samples, desc=f"filter[{domain}]", unit="sample"):
        scored.append(score_sample(rule_set, row))
    write_jsonl(ref.file("scored"), scored)

    references = None
    if cfg.filter.strategy == PairStrategy.reference_vs_fail:
        references = reference_rows(scored, rule_set, cfg.domain.prompt_source.name, domain)
    pairs = make_pairs(scored, cfg.filter, references)
    before = pairs
    if cfg.filter.length_balance != LengthBalance.none:
        before = make_pairs(scored, replace(cfg.filter, length_balance=LengthBalance.none), references)
    report = pair_report(scored, pairs, before)
    if references is not None:
        report["reference_answers"] = len(references)
        report["reference_answers_choosable"] = sum(map(can_be_chosen, references.values()))
        write_jsonl(ref.path / "references.jsonl", references.values())
    atomic_write_json(ref.path / "report.json", report)
    settings = {
        "filter": asdict(cfg.filter),
        "rules": {"path": str(rules_path), "sha256": hashlib.sha256(rules_path.read_bytes()).hexdigest(),
                  "rules": yaml.safe_load(rules_path.read_text(encoding="utf-8"))["rules"]},
        "model": {"name": cfg.model.name, "path": cfg.model.path},
        "prompt_source": asdict(cfg.domain.prompt_source),
        "sampling": asdict(cfg.domain.sampling),
        "samples_artifact": str(inputs["samples"]),
        "filter_artifact": str(ref),
    }
    card = dataset_card(
        domain, scored, pairs, before, contamination_summary(inputs["samples"].path), settings, report=report
    )
    atomic_write_json(ref.path / "card.json", card)
    atomic_write_text(ref.path / "card.md", card_markdown(card))
    run_dir = log_card(card, cfg, f"filter-{domain}")
    if run_dir:
        report = {**report, "wandb_run_dir": run_dir}
    if len(pairs) < cfg.filter.min_pairs:
        raise DataError(
            f"filter left {len(pairs)} pairs for domain {domain} (filter.min_pairs={cfg.filter.min_pairs}) from "
            f"{len(scored)} samples, {report['pass_rate']:.0%} passing: sample more prompts or answers "
            f"(domain.sampling.num_prompts, domain.sampling.samples_per_prompt) or check {rules_path}"
            + (f", or loosen filter.length_balance={cfg.filter.length_balance}" if len(before) > len(pairs) else "")
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
    out = ref.file("pairs")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows).save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return report


# --------------------------------------------------------------------------------- dataset card


register_stage(Stage(
    "filter", per_domain=True, plan=plan, run=run, outputs={"pairs": "pairs", "scored": "scored.jsonl"}, rounds=True,
    check=check,
))
