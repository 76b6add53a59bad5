"""Scoring samples by a domain's rule set and pairing them into chosen/rejected (the filter stage;
the dev stage scores with the same rules)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional

from .config import FilterConfig, LengthBalance, PairStrategy
from .core.errors import ConfigError
from .resources import resource_path
from .rules.quality import GUARD_RULES


def rule_set_path(rules: str) -> Path:
    """`math` -> rules/math.yaml; anything with a slash or a .yaml suffix is a path."""
    if "/" in rules or rules.endswith((".yaml", ".yml")):
        return Path(rules).expanduser().resolve()
    return resource_path("rules", f"{rules}.yaml")


def score_sample(rule_set, row: dict) -> dict:
    """A generated sample (prompt, response, meta, truncated) with its rule set's verdict added."""
    verdict = rule_set.score({"prompt": row["prompt"], "response": row["response"], "meta": {**row["meta"], "truncated": row["truncated"]}})
    return {**row, "passed": verdict["passed"], "score": verdict["score"], "rules": verdict["rules"]}


def check_references(source: str, domain: Optional[str]) -> None:
    """filter.strategy=reference_vs_fail needs a prompt source with reference answers."""
    from .prompts import REFERENCE_ANSWERS

    if source not in REFERENCE_ANSWERS.names():
        raise ConfigError(
            f"filter.strategy=reference_vs_fail: prompt source {source!r} of domain {domain} has no reference "
            f"answers (sources with them: {', '.join(REFERENCE_ANSWERS.names())}); use filter.strategy=all_pass_fail "
            "or best_vs_worst"
        )


def reference_rows(scored: list[dict], rule_set, source: str, domain: Optional[str]) -> dict[str, dict]:
    """prompt_id -> the source's reference answer to that prompt as a scored sample (sample -1), for
    every prompt in `scored` that has one. A reference that fails its rules is kept (and counted)
    but never chosen."""
    from .prompts import REFERENCE_ANSWERS

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
        raise ConfigError(f"filter.strategy={cfg.strategy} is not implemented; valid: {[s.value for s in PairStrategy]}")
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


def summarize(values: list[int]) -> dict:
    if not values:
        return {"n": 0, "mean": None, "median": None, "min": None, "max": None}
    return {"n": len(values), "mean": round(statistics.fmean(values), 1), "median": statistics.median(values),
            "min": min(values), "max": max(values)}
