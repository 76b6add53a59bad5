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
import json
import math
import shutil
import statistics
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import yaml
from tqdm import tqdm

from ..artifacts import ArtifactRef, atomic_write_json, atomic_write_text
from ..config import FilterConfig, LengthBalance, PairStrategy, SkillweaveConfig
from ..pipeline import STAGES, Context, Stage, ref_for
from ..resources import resource_path
from ..rules.quality import GUARD_RULES
from ..tracking import wandb_mode, wandb_run
from .generate import SAMPLES

PAIRS = "pairs"


def rule_set_path(rules: str) -> Path:
    """`math` -> rules/math.yaml; anything with a slash or a .yaml suffix is a path."""
    if "/" in rules or rules.endswith((".yaml", ".yml")):
        return Path(rules).expanduser().resolve()
    return resource_path("rules", f"{rules}.yaml")


def plan(ctx: Context, domain: Optional[str]):
    cfg = ctx.for_domain(domain)
    if cfg.filter.strategy == PairStrategy.reference_vs_fail:
        check_references(cfg.domain.prompt_source.name, domain)
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
    rules_path = rule_set_path(cfg.domain.rules)
    rule_set = load_rule_set(domain, rules_path)
    samples = [json.loads(line) for line in (inputs["samples"].path / SAMPLES).open()]
    scored = []
    for row in tqdm(samples, desc=f"filter[{domain}]", unit="sample"):
        scored.append(score_sample(rule_set, row))
    atomic_write_text(ref.path / "scored.jsonl", "".join(json.dumps(r) + "\n" for r in scored))

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
        atomic_write_text(ref.path / "references.jsonl", "".join(json.dumps(r) + "\n" for r in references.values()))
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
        raise ValueError(
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
    tmp = ref.path / f".{PAIRS}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows).save_to_disk(str(tmp))
    shutil.rmtree(ref.path / PAIRS, ignore_errors=True)
    tmp.rename(ref.path / PAIRS)
    return report


def score_sample(rule_set, row: dict) -> dict:
    """A generated sample (prompt, response, meta, truncated) with its rule set's verdict added."""
    verdict = rule_set.score({"prompt": row["prompt"], "response": row["response"], "meta": {**row["meta"], "truncated": row["truncated"]}})
    return {**row, "passed": verdict["passed"], "score": verdict["score"], "rules": verdict["rules"]}


def check_references(source: str, domain: Optional[str]) -> None:
    """filter.strategy=reference_vs_fail needs a prompt source with reference answers."""
    from ..prompts import REFERENCE_ANSWERS

    if source not in REFERENCE_ANSWERS.names():
        raise ValueError(
            f"filter.strategy=reference_vs_fail: prompt source {source!r} of domain {domain} has no reference "
            f"answers (sources with them: {', '.join(REFERENCE_ANSWERS.names())}); use filter.strategy=all_pass_fail "
            "or best_vs_worst"
        )


def reference_rows(scored: list[dict], rule_set, source: str, domain: Optional[str]) -> dict[str, dict]:
    """prompt_id -> the source's reference answer to that prompt as a scored sample (sample -1), for
    every prompt in `scored` that has one. A reference that fails its rules is kept (and counted)
    but never chosen."""
    from ..prompts import REFERENCE_ANSWERS

    check_references(source, domain)
    answer = REFERENCE_ANSWERS.get(source)
    first: dict[str, dict] = {}
    for row in scored:
        first.setdefault(row["prompt_id"], row)
    references = {}
    for prompt_id, row in first.items():
        text = answer(row["prompt"])
        if text is not None:
            sample = {"prompt_id": prompt_id, "prompt": row["prompt"], "meta": row["meta"], "sample": -1,
                      "response": text, "truncated": False, "reference": True}
            references[prompt_id] = score_sample(rule_set, sample)
    return references


def can_be_chosen(row: dict) -> bool:
    """A scored sample may be a chosen answer: it passed, it is not truncated, and no quality guard
    (GUARD_RULES: not_truncated, is_english, is_coherent) failed in its rule verdicts. The guards are
    checked by name as well as through `passed`, so a guard failure disqualifies a sample however the
    rule set's verdicts are combined."""
    if not row["passed"] or row["truncated"]:
        return False
    return all(v.get("passed", True) for name, v in row.get("rules", {}).items() if name in GUARD_RULES)


def length_ratio(chosen: dict, rejected: dict) -> float:
    """len(chosen response) / len(rejected response), in characters (an empty response counts as 1)."""
    return max(len(chosen["response"]), 1) / max(len(rejected["response"]), 1)


def make_pairs(
    scored: list[dict], cfg: FilterConfig, references: Optional[dict[str, dict]] = None
) -> list[tuple[dict, dict]]:
    """(chosen, rejected) pairs per prompt under the configured strategy and length balance, deduplicated.

    Chosen answers are only samples that `can_be_chosen`; rejected ones are failing samples. A pair
    needs different texts and a score difference of at least `min_margin`; under
    `length_balance=ratio` also a length ratio within `max_length_ratio` (either way round).
    best_vs_worst takes one pair per prompt: the best chosen against the worst rejected, ties going to
    the rejected closest in length (`none`, `ratio`: the best such pair within bounds), or against the
    rejected closest in length whatever its score (`match`). all_pass_fail takes every pair, capped by
    `max_pairs_per_prompt` (`match`: the closest in length first). reference_vs_fail is all_pass_fail
    with `references[prompt_id]` (reference_rows) as the only chosen candidate.
    """
    if cfg.strategy not in (PairStrategy.best_vs_worst, PairStrategy.all_pass_fail, PairStrategy.reference_vs_fail):
        raise ValueError(f"filter.strategy={cfg.strategy} is not implemented; valid: {[s.value for s in PairStrategy]}")
    if cfg.strategy == PairStrategy.reference_vs_fail and references is None:
        raise ValueError("filter.strategy=reference_vs_fail needs the reference answers (reference_rows)")
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in scored:
        by_prompt[row["prompt_id"]].append(row)
    pairs = []
    for prompt_id, rows in by_prompt.items():
        if cfg.strategy == PairStrategy.reference_vs_fail:
            reference = references.get(prompt_id)
            passing = [reference] if reference is not None and can_be_chosen(reference) else []
        else:
            passing = sorted((r for r in rows if can_be_chosen(r)), key=lambda r: (-r["score"], r["sample"]))
        failing = sorted((r for r in rows if not r["passed"]), key=lambda r: (r["score"], r["sample"]))
        candidates = [(c, r) for c in passing for r in failing if _usable(c, r, cfg)]
        if not candidates:
            continue

        if cfg.strategy == PairStrategy.best_vs_worst:
            if cfg.length_balance == LengthBalance.match:
                candidates = [min(candidates, key=lambda p: (_best(p), _distance(p), _worst(p)))]
            else:
                # Among the equally worst, the one closest in length to the chosen: the pair then
                # differs in what the rules check, not in length (DPO's length bias).
                candidates = [min(candidates, key=lambda p: (_best(p), _worst(p)[0], _distance(p), _worst(p)))]
        elif cfg.length_balance == LengthBalance.match:
            candidates = sorted(candidates, key=_distance)  # stable: ties keep the score order
        kept, seen = [], set()
        for chosen, rejected in candidates:
            text_pair = (chosen["response"], rejected["response"])
            if text_pair not in seen:
                seen.add(text_pair)
                kept.append((chosen, rejected))
        pairs.extend(kept[: cfg.max_pairs_per_prompt])
    return pairs


def _best(pair: tuple[dict, dict]) -> tuple:
    """Sort key: the highest-scoring chosen first (then the earlier sample)."""
    return -pair[0]["score"], pair[0]["sample"]


def _worst(pair: tuple[dict, dict]) -> tuple:
    """Sort key: the lowest-scoring rejected first (then the earlier sample)."""
    return pair[1]["score"], pair[1]["sample"]


def _distance(pair: tuple[dict, dict]) -> float:
    """|log length ratio|: 2x longer and 2x shorter are equally far from a match."""
    return abs(math.log(length_ratio(*pair)))


def _usable(chosen: dict, rejected: dict, cfg: FilterConfig) -> bool:
    if chosen["response"] == rejected["response"] or chosen["score"] - rejected["score"] < cfg.min_margin:
        return False
    if cfg.length_balance == LengthBalance.ratio:
        ratio = length_ratio(chosen, rejected)
        return 1.0 / cfg.max_length_ratio <= ratio <= cfg.max_length_ratio
    return True


def length_stats(pairs: list[tuple[dict, dict]]) -> dict:
    """Chosen and rejected lengths (characters) of `pairs`: the ratio of their sums, the median
    per-pair ratio, and the share of pairs whose chosen is the longer one."""
    if not pairs:
        return {"pairs": 0, "chosen_rejected_length_ratio": None, "median_pair_length_ratio": None,
                "chosen_longer_fraction": None}
    chosen = sum(len(c["response"]) for c, _ in pairs)
    rejected = sum(len(r["response"]) for _, r in pairs)
    return {
        "pairs": len(pairs),
        "chosen_rejected_length_ratio": round(chosen / rejected, 3) if rejected else None,
        "median_pair_length_ratio": round(statistics.median(length_ratio(c, r) for c, r in pairs), 3),
        "chosen_longer_fraction": round(sum(len(c["response"]) > len(r["response"]) for c, r in pairs) / len(pairs), 4),
    }


def pair_report(
    scored: list[dict], pairs: list[tuple[dict, dict]], before: Optional[list[tuple[dict, dict]]] = None
) -> dict:
    """Counts, pass rates per rule, and the chosen/rejected length ratio (DPO's length bias) of `pairs`
    and of `before`, the pairs the same strategy makes without length balance (default: `pairs`)."""
    per_rule: dict[str, list[bool]] = defaultdict(list)
    for row in scored:
        for name, verdict in row["rules"].items():
            per_rule[name].append(bool(verdict["passed"]))
    after, unbalanced = length_stats(pairs), length_stats(pairs if before is None else before)
    return {
        "samples": len(scored),
        "prompts": len({r["prompt_id"] for r in scored}),
        "pass_rate": round(sum(r["passed"] for r in scored) / max(len(scored), 1), 4),
        "pass_rate_per_rule": {k: round(sum(v) / len(v), 4) for k, v in sorted(per_rule.items())},
        "truncated_fraction": round(sum(r["truncated"] for r in scored) / max(len(scored), 1), 4),
        "pairs": len(pairs),
        "chosen_rejected_length_ratio": after["chosen_rejected_length_ratio"],
        "median_pair_length_ratio": after["median_pair_length_ratio"],
        "pairs_before_length_balance": unbalanced["pairs"],
        "chosen_rejected_length_ratio_before": unbalanced["chosen_rejected_length_ratio"],
        "median_pair_length_ratio_before": unbalanced["median_pair_length_ratio"],
    }


# --------------------------------------------------------------------------------- dataset card


def _summary(values: list[int]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {"n": len(values), "mean": round(statistics.fmean(values), 1), "median": statistics.median(values),
            "min": min(values), "max": max(values)}


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
            "samples": _summary([len(r["response"]) for r in scored]),
            "chosen": _summary([len(c["response"]) for c, _ in pairs]),
            "rejected": _summary([len(r["response"]) for _, r in pairs]),
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


STAGES.register("filter")(Stage("filter", per_domain=True, plan=plan, run=run))
