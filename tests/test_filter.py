"""Pair construction: which samples become chosen and rejected, case by case."""

from __future__ import annotations

import pytest

from skillweave.config import FilterConfig, PairStrategy
from skillweave.stages.filter import make_pairs, pair_report


def s(prompt: str, i: int, passed: bool, score: float, response: str, truncated: bool = False) -> dict:
    return {"prompt_id": prompt, "sample": i, "passed": passed, "score": score, "response": response,
            "truncated": truncated, "rules": {"r": {"passed": passed}}}


SAMPLES = [
    s("p", 0, True, 1.0, "right, short"),
    s("p", 1, True, 1.0, "right but truncated ...", truncated=True),
    s("p", 2, False, 0.0, "wrong and a great deal longer than the chosen one"),
    s("p", 3, False, 0.0, "wrong, short"),
    s("p", 4, False, 0.5, "half right"),
    s("q", 0, False, 0.0, "all wrong"),  # no passing sample: no pair
    s("q", 1, False, 0.2, "all wrong too"),
    s("r", 0, True, 1.0, "same"),  # identical texts never form a pair
    s("r", 1, False, 0.0, "same"),
]


def pairs_of(cfg: FilterConfig) -> list[tuple[str, str]]:
    return [(c["response"], r["response"]) for c, r in make_pairs(SAMPLES, cfg)]


@pytest.mark.parametrize(
    "cfg, expected",
    [
        # best vs worst: the truncated pass is never chosen; among the two worst (score 0) the one
        # closest in length to the chosen is rejected
        (FilterConfig(), [("right, short", "wrong, short")]),
        # a margin above every pair's score difference leaves nothing
        (FilterConfig(min_margin=1.01), []),
        # all pass x fail, capped per prompt; the truncated pass still never chosen
        (
            FilterConfig(strategy=PairStrategy.all_pass_fail, max_pairs_per_prompt=3),
            [
                ("right, short", "wrong and a great deal longer than the chosen one"),
                ("right, short", "wrong, short"),
                ("right, short", "half right"),
            ],
        ),
        # the margin filter drops the half-right rejected (difference 0.5)
        (
            FilterConfig(strategy=PairStrategy.all_pass_fail, max_pairs_per_prompt=5, min_margin=0.6),
            [("right, short", "wrong and a great deal longer than the chosen one"), ("right, short", "wrong, short")],
        ),
    ],
)
def test_make_pairs(cfg, expected):
    assert pairs_of(cfg) == expected


def test_report_counts_rules_and_length_ratio():
    pairs = make_pairs(SAMPLES, FilterConfig())
    report = pair_report(SAMPLES, pairs)
    assert report["samples"] == 9 and report["prompts"] == 3 and report["pairs"] == 1
    assert report["pass_rate"] == round(3 / 9, 4)
    assert report["pass_rate_per_rule"] == {"r": round(3 / 9, 4)}
    assert report["chosen_rejected_length_ratio"] == 1.0  # "right, short" vs "wrong, short"
