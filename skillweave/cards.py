"""A filter artifact's dataset card: counts, pass rates per rule, lengths, contamination; as JSON,
Markdown and a W&B run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .config import SkillweaveConfig
from .pairs import can_be_chosen, length_stats, pair_report, summarize
from .tracking import wandb_mode, wandb_run


def contamination_summary(samples_dir: Path) -> dict:
    """What generate's contamination check (contamination.json in its artifact) dropped, per eval set."""
    path = samples_dir / "contamination.json"
    if not path.is_file():
        return {"checked": False}
    report = json.loads(path.read_text())
    return {
        "checked": True,
        "ngram": report.get("n"),
        "train_prompts": report.get("train_prompts"),
        "dropped": len(report.get("dropped", [])),
        "per_eval_set": {name: s.get("train_prompts_hit", 0) for name, s in sorted(report.get("per_eval_set", {}).items())},
    }


def dataset_card(
    domain: Optional[str],
    scored: list[dict],
    pairs: list[tuple[dict, dict]],
    before: list[tuple[dict, dict]],
    contamination: dict,
    settings: dict,
    max_example_chars: int = 300,
    *,
    report: Optional[dict] = None,
) -> dict:
    """The filter artifact's dataset card: counts, pass rates per rule, lengths, truncation,
    contamination, the settings that made it, and one example pair. `report` is
    `pair_report(scored, pairs, before)` when the caller already has it (computed here otherwise)."""
    if report is None:
        report = pair_report(scored, pairs, before)
    examples = [
        {
            "prompt": c["prompt"][:max_example_chars],
            "chosen": c["response"][:max_example_chars],
            "rejected": r["response"][:max_example_chars],
            "chosen_score": round(c["score"], 4),
            "rejected_score": round(r["score"], 4),
        }
        for c, r in pairs[:1]
    ]
    return {
        "domain": domain,
        "counts": {
            "prompts": report["prompts"],
            "samples": report["samples"],
            "passing_samples": sum(r["passed"] for r in scored),
            "choosable_samples": sum(can_be_chosen(r) for r in scored),
            "prompts_with_pairs": len({c["prompt_id"] for c, _ in pairs}),
            "pairs": report["pairs"],
            "pairs_before_length_balance": report["pairs_before_length_balance"],
            **{k: report[k] for k in ("reference_answers", "reference_answers_choosable") if k in report},
        },
        "pass_rate": report["pass_rate"],
        "pass_rate_per_rule": report["pass_rate_per_rule"],
        "truncated_fraction": report["truncated_fraction"],
        "lengths": {
            "unit": "characters",
            "samples": summarize([len(r["response"]) for r in scored]),
            "chosen": summarize([len(c["response"]) for c, _ in pairs]),
            "rejected": summarize([len(r["response"]) for _, r in pairs]),
            "after_length_balance": length_stats(pairs),
            "before_length_balance": length_stats(before),
        },
        "contamination": contamination,
        "settings": settings,
        "examples": examples,
    }


def card_markdown(card: dict) -> str:
    """The card as Markdown: what the pairs are, in tables."""
    counts, lengths, cont = card["counts"], card["lengths"], card["contamination"]
    lines = [
        f"# DPO pairs: {card['domain']}",
        "",
        f"{counts['pairs']} chosen/rejected pairs from {counts['samples']} samples of {counts['prompts']} prompts "
        f"(filter stage of skillweave; settings below).",
        "",
        "| count | value |",
        "|---|---:|",
        *(f"| {k.replace('_', ' ')} | {v} |" for k, v in counts.items()),
        f"| pass rate | {card['pass_rate']:.1%} |",
        f"| truncated samples | {card['truncated_fraction']:.1%} |",
        "",
        "## Pass rate per rule",
        "",
        "| rule | pass rate |",
        "|---|---:|",
        *(f"| {name} | {rate:.1%} |" for name, rate in card["pass_rate_per_rule"].items()),
        "",
        f"## Lengths ({lengths['unit']})",
        "",
        "| | n | mean | median | min | max |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| {name} | {s['n']} | {s['mean']} | {s['median']} | {s['min']} | {s['max']} |"
            for name, s in ((k, lengths[k]) for k in ("samples", "chosen", "rejected"))
        ),
        "",
        "| pairs | n | chosen/rejected (sums) | median pair ratio | chosen longer |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {label} | {s['pairs']} | {s['chosen_rejected_length_ratio']} | {s['median_pair_length_ratio']} "
            f"| {s['chosen_longer_fraction']} |"
            for label, s in (("before length balance", lengths["before_length_balance"]),
                             ("after length balance", lengths["after_length_balance"]))
        ),
        "",
        "## Contamination",
        "",
    ]
    if cont.get("checked"):
        lines += [
            f"Training prompts sharing a {cont['ngram']}-word n-gram with an eval set were dropped by generate: "
            f"{cont['dropped']} of {cont['train_prompts']}.",
            "",
            "| eval set | training prompts hit |",
            "|---|---:|",
            *(f"| {name} | {hits} |" for name, hits in cont["per_eval_set"].items()),
        ]
    else:
        lines.append("Not checked (domain.contamination_ngram is null, or generate wrote no contamination.json).")
    lines += ["", "## Settings", "", "```json", json.dumps(card["settings"], indent=2, sort_keys=True, default=str), "```"]
    for ex in card["examples"]:
        lines += [
            "",
            "## Example pair",
            "",
            f"**Prompt** ({ex['chosen_score']} vs {ex['rejected_score']}):",
            "",
            *(f"> {line}" for line in ex["prompt"].splitlines()),
            "",
            "**Chosen:**",
            "",
            *(f"> {line}" for line in ex["chosen"].splitlines()),
            "",
            "**Rejected:**",
            "",
            *(f"> {line}" for line in ex["rejected"].splitlines()),
        ]
    return "\n".join(lines) + "\n"


def _flatten(obj, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists are kept as values."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    flat: dict = {}
    for k, v in obj.items():
        flat.update(_flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    return flat


def log_card(card: dict, cfg: SkillweaveConfig, name: str) -> Optional[str]:
    """Log the card to W&B unless it is disabled (`wandb.mode`, or WANDB_MODE, which wins): one run,
    job_type "filter", in the project and group of `cfg.wandb` (skillweave.tracking), with the
    settings as its config, the card as a table (field, JSON value) plus a table of pass rates per
    rule, and the card's numbers as the run summary. Returns the run's directory, or None.
    """
    if wandb_mode(cfg) == "disabled":
        return None
    import wandb

    with wandb_run(cfg, job_type="filter", name=name, config=card["settings"]) as run:
        flat = _flatten({k: v for k, v in card.items() if k not in ("settings", "examples")})
        table = wandb.Table(columns=["field", "value"], data=[[k, json.dumps(v, default=str)] for k, v in flat.items()])
        rules = wandb.Table(columns=["rule", "pass_rate"], data=[[k, v] for k, v in card["pass_rate_per_rule"].items()])
        run.log({"dataset_card": table, "pass_rate_per_rule": rules})
        run.summary.update({k: v for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        return str(Path(run.dir).parent)
