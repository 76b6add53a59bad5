"""lm-eval's entry points for the dated_commits skill's held-out tasks (the YAMLs beside this file name them)."""

from __future__ import annotations

from typing import Any

from skillweave.skill import load_eval_docs, score_eval_doc


def load_docs(**metadata: Any):
    return load_eval_docs("dated_commits", **metadata)


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    return score_eval_doc("dated_commits", doc, results)
